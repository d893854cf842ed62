//! The one error type of squish-format: every variant names the file it is about.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("{}: tensor `{name}` not found", path.display())]
    MissingTensor { path: PathBuf, name: String },
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub fn invalid(path: &Path, msg: impl std::fmt::Display) -> Self {
        Self::Invalid { path: path.to_path_buf(), msg: msg.to_string() }
    }
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is
/// set: errors here are one line naming the file.
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_msg(inner),
        e => e.to_string(),
    }
}
