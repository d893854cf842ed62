//! The one error type of squish-hub: each message says what failed and what to do about it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("repository `{repo}` not found on {endpoint}{}", if *authenticated { "" } else { " (if it is private, set HF_TOKEN to a token that can read it)" })]
    RepoNotFound { repo: String, endpoint: String, authenticated: bool },
    #[error("`{repo}` is gated: accept its license at {endpoint}/{repo} and set HF_TOKEN to a token of that account")]
    Gated { repo: String, endpoint: String },
    #[error("the token in HF_TOKEN has no access to `{repo}`: accept its license at {endpoint}/{repo} with the token's account")]
    Forbidden { repo: String, endpoint: String },
    #[error("revision `{revision}` not found in `{repo}`")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{file}` not found in `{repo}`")]
    EntryNotFound { repo: String, file: String },
    #[error("{url}: HTTP {status}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("{url}: {msg} (run the same command again: finished files are kept and a partial one resumes)")]
    Network { url: String, msg: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file}: {msg}")]
    Integrity { file: String, msg: String },
    #[error("offline: {0}")]
    Offline(String),
    #[error("refusing file name `{0}` from the Hub: not a plain relative path")]
    UnsafePath(String),
    #[error("{0}")]
    Invalid(String),
}

impl HubError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, HubError>;
