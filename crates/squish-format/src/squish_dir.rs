//! A squish model directory: `squish.json` plus what a Hugging Face directory holds (config,
//! tokenizer files, safetensors shards), with quantized weights stored as the exact bytes the
//! kernels read. Opening checks the manifest's version and every shard's size (cheap);
//! `verify` recomputes the checksums.

use crate::hf_dir::HfDir;
use crate::manifest::{Manifest, FORMAT_VERSION, INCOMPLETE_MARKER, MANIFEST_FILE, OLDEST_READABLE_VERSION};
use crate::writer::sha256_file;
use crate::{FormatError, Result};
use std::path::Path;

pub struct SquishDir {
    hf: HfDir,
    manifest: Manifest,
}

impl SquishDir {
    pub fn is_squish_dir(dir: &Path) -> bool {
        dir.join(MANIFEST_FILE).is_file() || dir.join(INCOMPLETE_MARKER).exists()
    }

    pub fn open(dir: &Path) -> Result<Self> {
        if dir.join(INCOMPLETE_MARKER).exists() {
            return Err(FormatError::invalid(
                dir,
                "incomplete conversion (interrupted or failed): delete it and run `squish convert` again",
            ));
        }
        let manifest = read_manifest(dir)?;
        for shard in &manifest.shards {
            let path = dir.join(&shard.file);
            let len = std::fs::metadata(&path).map_err(|e| FormatError::io(&path, e))?.len();
            if len != shard.bytes {
                return Err(FormatError::invalid(
                    &path,
                    format!("{len} bytes but squish.json says {}: truncated or modified", shard.bytes),
                ));
            }
        }
        Ok(Self { hf: HfDir::open(dir)?, manifest })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn hf(&self) -> &HfDir {
        &self.hf
    }

    /// Recomputes every shard's sha256: (file, matches the manifest).
    pub fn verify(&self) -> Result<Vec<(String, bool)>> {
        self.manifest
            .shards
            .iter()
            .map(|s| Ok((s.file.clone(), sha256_file(&self.hf.root().join(&s.file))? == s.sha256)))
            .collect()
    }
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| FormatError::invalid(&path, format!("invalid JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some("squish") {
        return Err(FormatError::invalid(&path, "not a squish manifest (no \"format\": \"squish\")"));
    }
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if !(u64::from(OLDEST_READABLE_VERSION)..=u64::from(FORMAT_VERSION)).contains(&version) {
        return Err(FormatError::invalid(
            &path,
            format!(
                "format version {version}; this squish reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION} (convert the model again, or update squish)"
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| FormatError::invalid(&path, format!("invalid manifest: {e}")))
}

/// Rewrites the manifest in place, atomically (used by `eval` for the quality block).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let text = serde_json::to_string_pretty(manifest).map_err(|e| FormatError::invalid(&path, e))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| FormatError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| FormatError::io(&path, e))
}
