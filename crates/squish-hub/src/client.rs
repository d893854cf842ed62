//! The Hub's HTTP protocol, as much of it as a pull needs: a repo's file list at a revision
//! (`/api/models/<repo>/revision/<rev>?blobs=true`: commit, sizes, LFS sha256) and one file's
//! bytes (`/<repo>/resolve/<commit>/<file>`, which redirects LFS files to a CDN), resumed with
//! a Range request. Status codes and the Hub's `X-Error-Code` become errors that say what to do.

use crate::error::{HubError, Result};
use crate::hf_cache::hf_home;
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

pub struct Hub {
    endpoint: String,
    token: Option<String>,
    /// Follows no redirects by itself: [`Hub::get`] follows them, sending the token only to
    /// the Hub's own origin (LFS files redirect to a CDN with a signed URL; small files and
    /// renamed repos redirect within the Hub).
    agent: ureq::Agent,
}

#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub id: String,
    pub commit: String,
    pub files: Vec<RepoFile>,
    pub gated: bool,
    pub license: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RepoFile {
    pub name: String,
    pub size: Option<u64>,
    /// The git blob sha1 (for LFS files, of the pointer).
    pub blob_id: Option<String>,
    /// For LFS files: the sha256 of the content.
    pub sha256: Option<String>,
}

impl RepoFile {
    /// The name of its blob in the Hugging Face cache.
    pub fn etag(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.blob_id.as_deref())
    }
}

impl Hub {
    /// `HF_ENDPOINT` (a mirror) or huggingface.co; the token from `HF_TOKEN`, else the file
    /// `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        Self::new(endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT), token_from_env())
    }

    pub fn new(endpoint: &str, token: Option<String>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .redirects(0)
            .user_agent(concat!("squish/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(true)
            .build();
        Self { endpoint: endpoint.trim_end_matches('/').to_string(), token, agent }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The repo's files at `revision` (a branch, tag or commit), with sizes and hashes.
    pub fn info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode(revision));
        let (response, _) = self.get(&url, None, &Target { repo, revision, file: None })?;
        let raw: RawInfo = serde_json::from_reader(response.into_reader())
            .map_err(|e| HubError::Invalid(format!("{url}: not the Hub's model info ({e})")))?;
        let files = raw
            .siblings
            .into_iter()
            .map(|s| RepoFile {
                size: s.size.or(s.lfs.as_ref().map(|l| l.size)),
                sha256: s.lfs.map(|l| l.sha256),
                blob_id: s.blob_id,
                name: s.rfilename,
            })
            .collect();
        let gated = !matches!(raw.gated, None | Some(serde_json::Value::Bool(false)));
        let license = raw.card_data.and_then(|c| c.get("license").and_then(|l| l.as_str().map(String::from)));
        Ok(RepoInfo { id: raw.id.unwrap_or_else(|| repo.to_string()), commit: raw.sha, files, gated, license })
    }

    /// Downloads `file` at `commit` into `part`, appending to what `part` already holds, and
    /// reports the bytes it holds as they grow. Returns when the server has sent everything.
    pub fn download(&self, repo: &str, commit: &str, file: &RepoFile, part: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if file.size.is_some_and(|size| have >= size) {
            if Some(have) == file.size {
                return Ok(());
            }
            have = 0; // longer than the file: not a prefix of it
        }
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, encode_path(&file.name));
        let range = (have > 0).then(|| format!("bytes={have}-"));
        let target = Target { repo, revision: commit, file: Some(&file.name) };
        let (response, from) = self.get(&url, range.as_deref(), &target)?;
        let resumed = response.status() == 206 && content_range_start(&response) == Some(have);
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(part)
            .map_err(|e| HubError::io(part, e))?;
        let mut done = if resumed { have } else { 0 };
        progress(done);
        let mut body = response.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let of = file.size.map(|s| format!(" of {s}")).unwrap_or_default();
                    return Err(HubError::Network { url: from, msg: format!("connection lost after {done}{of} bytes ({e})") });
                }
            };
            out.write_all(&buf[..n]).map_err(|e| HubError::io(part, e))?;
            done += n as u64;
            progress(done);
        }
        out.sync_all().map_err(|e| HubError::io(part, e))?;
        match file.size {
            Some(size) if done < size => {
                Err(HubError::Network { url: from, msg: format!("the server closed the connection after {done} of {size} bytes") })
            }
            _ => Ok(()),
        }
    }

    /// GETs `url`, following up to ten redirects; returns the final answer and its URL.
    fn get(&self, url: &str, range: Option<&str>, target: &Target) -> Result<(ureq::Response, String)> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut request = self.agent.get(&url);
            if let Some(range) = range {
                request = request.set("Range", range);
            }
            let response = self.call(request, &url, target)?;
            if !(300..400).contains(&response.status()) {
                return Ok((response, url));
            }
            let location = response.header("location").ok_or_else(|| HubError::Invalid(format!("{url}: redirect without a Location")))?;
            url = join_url(&url, location);
        }
        Err(HubError::Invalid(format!("{url}: more than ten redirects")))
    }

    /// Sends a request, with the token when it goes to the Hub's own origin, mapping failures
    /// to what they mean.
    fn call(&self, request: ureq::Request, url: &str, target: &Target) -> Result<ureq::Response> {
        let own_origin = url.starts_with(&format!("{}/", self.endpoint));
        let request = match (&self.token, own_origin) {
            (Some(token), true) => request.set("Authorization", &format!("Bearer {token}")),
            _ => request,
        };
        match request.call() {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => Err(self.status_error(status, response, url, target)),
            Err(ureq::Error::Transport(t)) => Err(HubError::Network { url: url.to_string(), msg: t.to_string() }),
        }
    }

    fn status_error(&self, status: u16, response: ureq::Response, url: &str, target: &Target) -> HubError {
        let (repo, endpoint, file) = (target.repo.to_string(), self.endpoint.clone(), target.file);
        let code = response.header("x-error-code").unwrap_or_default().to_string();
        match (code.as_str(), status) {
            ("GatedRepo", 403) | ("", 403) => HubError::Forbidden { repo, endpoint },
            ("GatedRepo", _) => HubError::Gated { repo, endpoint },
            ("RepoNotFound", _) | ("", 401) => HubError::RepoNotFound { repo, endpoint, authenticated: self.token.is_some() },
            ("RevisionNotFound", _) => HubError::RevisionNotFound { repo, revision: target.revision.to_string() },
            ("EntryNotFound", _) => HubError::EntryNotFound { repo, file: file.unwrap_or_default().to_string() },
            ("", 404) if file.is_none() => HubError::RepoNotFound { repo, endpoint, authenticated: self.token.is_some() },
            ("", 404) => HubError::EntryNotFound { repo, file: file.unwrap_or_default().to_string() },
            _ => {
                let mut body = String::new();
                let _ = response.into_reader().take(300).read_to_string(&mut body);
                HubError::Http { url: url.to_string(), status, body: body.trim().replace('\n', " ") }
            }
        }
    }
}

/// What a request is for, to name in its errors.
struct Target<'a> {
    repo: &'a str,
    revision: &'a str,
    file: Option<&'a str>,
}

fn token_from_env() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    let path = std::env::var_os("HF_TOKEN_PATH").map(Into::into).unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[derive(Deserialize)]
struct RawInfo {
    id: Option<String>,
    sha: String,
    #[serde(default)]
    siblings: Vec<RawSibling>,
    gated: Option<serde_json::Value>,
    #[serde(rename = "cardData")]
    card_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: String,
    size: u64,
}

fn content_range_start(response: &ureq::Response) -> Option<u64> {
    let value = response.header("content-range")?;
    value.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

/// An absolute URL for a redirect's Location, which may be relative to the request.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let origin_end = base.find("://").map(|i| i + 3).and_then(|s| base[s..].find('/').map(|i| s + i)).unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

/// Percent-encodes one URL segment (revisions like `refs/pr/1` included).
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_and_joined() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("onnx/model q.onnx"), "onnx/model%20q.onnx");
        assert_eq!(join_url("http://h:1/a/b?c", "/x/y"), "http://h:1/x/y");
        assert_eq!(join_url("http://h:1/a", "https://cdn/z"), "https://cdn/z");
    }
}
