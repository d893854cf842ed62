//! `squish.json`: the manifest of a squish model directory. It names the format version, the
//! source model, the scheme of every tensor, the shards with their sizes and checksums, and
//! a quality block that `squish eval` fills. Documented in docs/FORMAT.md.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST_FILE: &str = "squish.json";
/// The newest version this build writes and reads. Bump on any change to the bytes a reader
/// expects. 2: a tensor may be stored rotated (`TensorEntry::rotation`); a directory with
/// none is written as version 1, which older readers still open.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads (every later one up to FORMAT_VERSION).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Present while a conversion is writing the directory; a directory holding it is refused.
pub const INCOMPLETE_MARKER: &str = ".squish-incomplete";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always "squish".
    pub format: String,
    pub version: u32,
    pub created_by: String,
    pub source: SourceInfo,
    /// The scheme asked for: int4, int8, f16, bf16, f32.
    pub scheme: String,
    pub group_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationInfo>,
    /// All weight bits (codes, scales, mins, dense tensors) over all parameters.
    pub bits_per_weight: f64,
    pub parameters: u64,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub shards: Vec<ShardEntry>,
    /// Written by `squish eval`; null until then.
    #[serde(default)]
    pub quality: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    /// The path as given to `convert`.
    pub path: String,
    /// "gguf" or "hf".
    pub kind: String,
    /// sha256 over the source's weight files (for several shards: of their hashes in order).
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationInfo {
    pub file: String,
    pub sha256: String,
    pub tokens: usize,
}

/// One logical tensor (a weight matrix may be stored as several safetensors entries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    /// int4, int8, or the dense dtype (f32, f16, bf16).
    pub scheme: String,
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    pub bits_per_weight: f64,
    /// Why this tensor's scheme differs from the one asked for, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Stored as W Rᵀ with R a randomized Hadamard rotation of the input dimension in blocks
    /// of this size (its signs in `<name>.signs`): inputs must be rotated by R first.
    /// Format version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}
