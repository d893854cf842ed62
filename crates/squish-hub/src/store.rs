//! squish's local model store: `$SQUISH_HOME/models/<org>--<name>/<scheme>/` holds one
//! converted model (a squish directory, written whole by `convert` and renamed into place),
//! and `<scheme>.pull.json` beside it records where it came from. Keyed by repo, so a catalog
//! name and its repo id are the same model.

use crate::catalog::{self, ModelRef};
use crate::error::{HubError, Result};
use crate::hf_cache::{user_dir, write_atomically};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The schemes a stored model may have, in the order a reference without `@scheme` prefers.
pub const SCHEMES: [&str; 7] = ["int4", "int8", "int3", "int2", "bf16", "f16", "f32"];

const MANIFEST: &str = "squish.json";

pub struct Store {
    root: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StoredModel {
    pub repo: String,
    pub scheme: String,
    pub dir: PathBuf,
    pub record: Option<PullRecord>,
}

impl StoredModel {
    /// The catalog name where the repo has one, else the repo id; with `@scheme`.
    pub fn reference(&self) -> String {
        let name = catalog::lookup(&self.repo).map_or(self.repo.as_str(), |e| e.name);
        format!("{name}@{}", self.scheme)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullRecord {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub scheme: String,
    /// The one file converted, for a GGUF repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub license: Option<String>,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `SQUISH_HOME`, else `$XDG_DATA_HOME/squish`, else `~/.local/share/squish`.
    pub fn from_env() -> Self {
        Self::new(user_dir("SQUISH_HOME", "XDG_DATA_HOME", ".local/share", "squish"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir_for(&self, repo: &str, scheme: &str) -> PathBuf {
        self.root.join("models").join(repo.replace('/', "--")).join(scheme)
    }

    fn record_path(dir: &Path) -> PathBuf {
        dir.with_extension("pull.json")
    }

    /// Every complete stored model, sorted by repo then scheme preference.
    pub fn list(&self) -> Result<Vec<StoredModel>> {
        let models = self.root.join("models");
        let entries = match std::fs::read_dir(&models) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io(&models, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(dir_name) = entry.file_name().to_str().map(String::from) else { continue };
            let Some((org, name)) = dir_name.split_once("--") else { continue };
            for scheme in SCHEMES {
                let dir = entry.path().join(scheme);
                if !dir.join(MANIFEST).is_file() {
                    continue;
                }
                let record = std::fs::read(Self::record_path(&dir)).ok().and_then(|b| serde_json::from_slice(&b).ok());
                out.push(StoredModel { repo: format!("{org}/{name}"), scheme: scheme.to_string(), dir, record });
            }
        }
        out.sort_by_key(|m| (m.repo.to_ascii_lowercase(), SCHEMES.iter().position(|s| *s == m.scheme)));
        Ok(out)
    }

    /// The stored conversions of a repo (all of them, or the one `@scheme` names).
    pub fn matching(&self, r: &ModelRef) -> Result<Vec<StoredModel>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|m| m.repo.eq_ignore_ascii_case(&r.repo) && r.scheme.as_ref().is_none_or(|s| *s == m.scheme))
            .collect())
    }

    /// The model a reference names: its `@scheme`, else the first of [`SCHEMES`] present.
    pub fn find(&self, r: &ModelRef) -> Result<Option<StoredModel>> {
        Ok(self.matching(r)?.into_iter().next())
    }

    pub fn save_record(&self, dir: &Path, record: &PullRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("plain JSON");
        write_atomically(&Self::record_path(dir), &json)
    }

    /// Deletes a stored model (record first: a model without one is still complete).
    pub fn remove(&self, model: &StoredModel) -> Result<()> {
        let record = Self::record_path(&model.dir);
        if record.exists() {
            std::fs::remove_file(&record).map_err(|e| HubError::io(&record, e))?;
        }
        std::fs::remove_dir_all(&model.dir).map_err(|e| HubError::io(&model.dir, e))?;
        if let Some(parent) = model.dir.parent() {
            let _ = std::fs::remove_dir(parent); // only succeeds once empty
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_complete_models_in_preference_order() {
        let root = std::env::temp_dir().join(format!("squish-store-{}", std::process::id()));
        let store = Store::new(root.clone());
        for scheme in ["int8", "int4"] {
            let dir = store.dir_for("org/m", scheme);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(MANIFEST), "{}").unwrap();
        }
        std::fs::create_dir_all(store.dir_for("org/m", "int2")).unwrap(); // no manifest: incomplete
        let r = catalog::parse("org/m").unwrap();
        let schemes: Vec<String> = store.matching(&r).unwrap().into_iter().map(|m| m.scheme).collect();
        assert_eq!(schemes, ["int4", "int8"]);
        let int8 = store.find(&catalog::parse("org/m@int8").unwrap()).unwrap().unwrap();
        assert_eq!(int8.reference(), "org/m@int8");
        store.remove(&int8).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }
}
