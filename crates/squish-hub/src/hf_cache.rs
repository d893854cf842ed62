//! The Hugging Face cache, in the layout Python's `huggingface_hub` uses, so a model either
//! one downloaded is found by the other and never fetched twice:
//! `<root>/models--<org>--<name>/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/<revision>}`.
//! Blobs are named by content (sha256 for LFS files, the git blob sha1 otherwise); a download in
//! progress is `blobs/<etag>.incomplete`, which never looks like a finished file.

use crate::error::{HubError, Result};
use std::path::{Path, PathBuf};

pub struct HfCache {
    root: PathBuf,
}

impl HfCache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (as huggingface_hub).
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
            return Self::new(PathBuf::from(dir));
        }
        Self::new(hf_home().join("hub"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(format!("models--{}", repo.replace('/', "--")))
    }

    pub fn blob(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn snapshot(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// The commit a revision (branch, tag or commit hash) points to, from what is on disk.
    pub fn commit_of(&self, repo: &str, revision: &str) -> Option<String> {
        let by_ref = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok();
        match by_ref {
            Some(commit) => Some(commit.trim().to_string()),
            None if is_commit_hash(revision) && self.snapshot(repo, revision).is_dir() => Some(revision.to_string()),
            None => None,
        }
    }

    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(revision);
        write_atomically(&path, commit.as_bytes())
    }

    /// Points `snapshots/<commit>/<file>` at its blob (a relative symlink, as Python does).
    pub fn link(&self, repo: &str, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let link = self.snapshot(repo, commit).join(file);
        let parent = link.parent().expect("a file inside the snapshot");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let depth = file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        let _ = std::fs::remove_file(&link);
        symlink(&target, &link).map_err(|e| HubError::io(&link, e))?;
        Ok(link)
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    user_dir("HF_HOME", "XDG_CACHE_HOME", ".cache", "huggingface")
}

/// `$var`, else `$xdg_var/name`, else `~/under_home/name` (unset and empty alike), the XDG
/// convention every directory squish uses follows.
pub fn user_dir(var: &str, xdg_var: &str, under_home: &str, name: &str) -> PathBuf {
    let set = |v: &str| std::env::var_os(v).filter(|x| !x.is_empty()).map(PathBuf::from);
    set(var).unwrap_or_else(|| set(xdg_var).unwrap_or_else(|| home().join(under_home)).join(name))
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).unwrap_or_default())
}

pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes through a temporary sibling and a rename, so a reader sees the old file or the new.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().expect("a file path");
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

// Windows needs a privilege for symlinks; a copy of the blob is what huggingface_hub does too.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(link.parent().unwrap().join(target), link).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_links_resolve_to_their_blob() {
        let dir = std::env::temp_dir().join(format!("squish-hf-cache-{}", std::process::id()));
        let cache = HfCache::new(dir.clone());
        let blob = cache.blob("org/name", "abc");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, "data").unwrap();
        let link = cache.link("org/name", "c0ffee", "sub/dir/file.txt", "abc").unwrap();
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "data");
        cache.write_ref("org/name", "main", "c0ffee").unwrap();
        assert_eq!(cache.commit_of("org/name", "main").as_deref(), Some("c0ffee"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
