//! Fetching a repo's model files into the Hugging Face cache: choose the files a model needs
//! (config, tokenizer, the safetensors shards the index names; or one GGUF file), skip what
//! the cache already holds, download the rest resuming partial files, verify each against the
//! size and hash the Hub publishes, then link the snapshot. Offline, it only looks.

use crate::client::{Hub, RepoFile};
use crate::error::{HubError, Result};
use crate::hf_cache::HfCache;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

const INDEX: &str = "model.safetensors.index.json";

pub struct FetchRequest<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    /// One file to convert instead of the safetensors weights (a GGUF in a GGUF repo).
    pub file: Option<&'a str>,
    /// Besides the weights, the files the model needs (those the repo has are fetched): what
    /// the converter reads.
    pub side_files: &'a [&'a str],
    pub offline: bool,
    /// Attempts after a network failure within this run, each resuming where the last stopped.
    pub retries: usize,
}

pub enum FetchEvent<'a> {
    /// The files to fetch at `commit`, with sizes (the total to show).
    Plan { commit: &'a str, files: &'a [(String, u64)] },
    /// Bytes of `file` on disk so far; `cached` when nothing had to be downloaded.
    Progress { file: &'a str, done: u64, cached: bool },
    /// A network failure that will be retried.
    Retrying { file: &'a str, error: &'a HubError },
    Verifying { file: &'a str },
}

pub struct Snapshot {
    pub commit: String,
    /// What to convert: the snapshot directory, or the chosen file in it.
    pub model_path: PathBuf,
    pub license: Option<String>,
}

pub fn fetch(hub: &Hub, cache: &HfCache, req: &FetchRequest, on: &mut dyn FnMut(FetchEvent)) -> Result<Snapshot> {
    if req.offline {
        return fetch_offline(cache, req);
    }
    let info = hub.info(req.repo, req.revision)?;
    let find = |name: &str| info.files.iter().find(|f| f.name == name);
    let get = |file: &RepoFile, on: &mut dyn FnMut(FetchEvent)| get_file(hub, cache, req, &info.commit, file, on);
    let snapshot = cache.snapshot(req.repo, &info.commit);

    let mut chosen: Vec<&RepoFile> = Vec::new();
    let model_path = match req.file {
        Some(name) => {
            let file = find(name).ok_or_else(|| HubError::EntryNotFound { repo: req.repo.into(), file: name.into() })?;
            chosen.push(file);
            snapshot.join(name)
        }
        None => {
            chosen.extend(req.side_files.iter().filter_map(|n| find(n)));
            if find("config.json").is_none() {
                return Err(no_weights(req.repo, &info.files, "has no config.json"));
            }
            let shards = match find(INDEX) {
                Some(index) => {
                    let path = get(index, &mut |_| {})?;
                    chosen.push(index);
                    index_shards(&path)?
                }
                None if find("model.safetensors").is_some() => vec!["model.safetensors".to_string()],
                None => info
                    .files
                    .iter()
                    .filter(|f| f.name.ends_with(".safetensors") && !f.name.contains('/') && !f.name.starts_with("consolidated"))
                    .map(|f| f.name.clone())
                    .collect(),
            };
            if shards.is_empty() {
                return Err(no_weights(req.repo, &info.files, "has no safetensors weights"));
            }
            for shard in &shards {
                check_relative(shard)?; // before anything else: the index is the repo's to write
                let file = find(shard).ok_or_else(|| HubError::EntryNotFound { repo: req.repo.into(), file: shard.clone() })?;
                chosen.push(file);
            }
            snapshot.clone()
        }
    };
    let plan: Vec<(String, u64)> = chosen.iter().map(|f| (f.name.clone(), f.size.unwrap_or(0))).collect();
    on(FetchEvent::Plan { commit: &info.commit, files: &plan });
    for file in chosen {
        get(file, on)?;
    }
    cache.write_ref(req.repo, req.revision, &info.commit)?;
    Ok(Snapshot { commit: info.commit, model_path, license: info.license })
}

/// One file into the cache: reuse its blob if there, else download (resuming), verify, link.
fn get_file(hub: &Hub, cache: &HfCache, req: &FetchRequest, commit: &str, file: &RepoFile, on: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf> {
    check_relative(&file.name)?;
    let etag = file.etag().ok_or_else(|| HubError::Invalid(format!("{}: the Hub gave no hash for `{}`", req.repo, file.name)))?;
    if etag.contains(['/', '\\']) || etag.contains("..") {
        return Err(HubError::UnsafePath(etag.to_string()));
    }
    let blob = cache.blob(req.repo, etag);
    let size_ok = |p: &Path| std::fs::metadata(p).is_ok_and(|m| file.size.is_none_or(|s| s == m.len()));
    if size_ok(&blob) {
        on(FetchEvent::Progress { file: &file.name, done: file.size.unwrap_or(0), cached: true });
    } else {
        let part = blob.with_file_name(format!("{etag}.incomplete"));
        let parent = part.parent().expect("blobs dir");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let mut attempt = 0;
        loop {
            let mut report = |done| on(FetchEvent::Progress { file: &file.name, done, cached: false });
            match hub.download(req.repo, commit, file, &part, &mut report) {
                Ok(()) => break,
                Err(e @ HubError::Network { .. }) if attempt < req.retries => {
                    on(FetchEvent::Retrying { file: &file.name, error: &e });
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500 << attempt.min(5)));
                }
                Err(e) => return Err(e),
            }
        }
        on(FetchEvent::Verifying { file: &file.name });
        if let Err(e) = verify(file, &part) {
            let _ = std::fs::remove_file(&part); // a bad file must not be resumed
            return Err(e);
        }
        std::fs::rename(&part, &blob).map_err(|e| HubError::io(&blob, e))?;
    }
    cache.link(req.repo, commit, &file.name, etag)
}

/// The downloaded bytes against the size and hash the Hub published: sha256 for LFS files, the
/// git blob sha1 for the rest.
fn verify(file: &RepoFile, path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(|e| HubError::io(path, e))?.len();
    if let Some(size) = file.size.filter(|&s| s != len) {
        return Err(HubError::Integrity { file: file.name.clone(), msg: format!("{len} bytes where the Hub lists {size}") });
    }
    let (expected, got) = match (&file.sha256, &file.blob_id) {
        (Some(sha), _) => (sha.clone(), hash_file::<Sha256>(path, &[])?),
        (None, Some(oid)) => (oid.clone(), hash_file::<sha1::Sha1>(path, format!("blob {len}\0").as_bytes())?),
        (None, None) => return Ok(()),
    };
    if !expected.eq_ignore_ascii_case(&got) {
        return Err(HubError::Integrity {
            file: file.name.clone(),
            msg: format!("content hash {got} does not match the Hub's {expected}; the download was removed, run again"),
        });
    }
    Ok(())
}

fn hash_file<D: Digest>(path: &Path, prefix: &[u8]) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut hasher = D::new();
    hasher.update(prefix);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The shard files a `model.safetensors.index.json` routes tensors to.
fn index_shards(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| HubError::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| HubError::Invalid(format!("{}: invalid JSON: {e}", path.display())))?;
    let map = json["weight_map"].as_object().ok_or_else(|| HubError::Invalid(format!("{}: no weight_map", path.display())))?;
    let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// A Hub file name must be a plain relative path: no `..`, no root, no backslashes.
fn check_relative(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && !name.contains('\\')
        && Path::new(name).components().all(|c| matches!(c, Component::Normal(_)));
    if plain { Ok(()) } else { Err(HubError::UnsafePath(name.to_string())) }
}

fn no_weights(repo: &str, files: &[RepoFile], why: &str) -> HubError {
    let ggufs: Vec<&str> = files.iter().filter(|f| f.name.ends_with(".gguf")).map(|f| f.name.as_str()).collect();
    match ggufs.is_empty() {
        true => HubError::Invalid(format!("`{repo}` {why}: not a transformers model repo")),
        false => HubError::Invalid(format!("`{repo}` {why}; it holds GGUF files: pick one with --file ({})", ggufs.join(", "))),
    }
}

fn fetch_offline(cache: &HfCache, req: &FetchRequest) -> Result<Snapshot> {
    let missing = || {
        HubError::Offline(format!(
            "`{}` at `{}` is not in the Hugging Face cache ({}); pull it once without --offline",
            req.repo,
            req.revision,
            cache.root().display()
        ))
    };
    let commit = cache.commit_of(req.repo, req.revision).ok_or_else(missing)?;
    let dir = cache.snapshot(req.repo, &commit);
    let model_path = match req.file {
        Some(name) => dir.join(name),
        None => {
            // The shards the index names, or (unsharded) any safetensors file.
            let weights_present = match dir.join(INDEX).is_file() {
                true => index_shards(&dir.join(INDEX))?.iter().all(|s| dir.join(s).is_file()),
                false => std::fs::read_dir(&dir)
                    .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".safetensors")))
                    .unwrap_or(false),
            };
            if !(dir.join("config.json").is_file() && weights_present) {
                return Err(missing());
            }
            dir.clone()
        }
    };
    if !model_path.exists() {
        return Err(missing());
    }
    Ok(Snapshot { commit, model_path, license: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_file_names_must_stay_inside_the_snapshot() {
        for bad in ["../x.safetensors", "/etc/passwd", "a/../../b", "a\\..\\b", ""] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
        for good in ["model.safetensors", "sub/dir/file.json", ".gitattributes"] {
            assert!(check_relative(good).is_ok(), "{good}");
        }
    }
}
