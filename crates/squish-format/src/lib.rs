//! Model files on disk: finding out what a path holds (a Hugging Face directory or a GGUF
//! file), opening it, validating it cheaply, and handing out tensors and metadata.
//! It must not interpret architectures or run anything: that is squish-model's job.

mod error;
mod gguf;
mod hf_dir;
mod manifest;
mod mapped;
mod squish_dir;
mod writer;

pub use error::FormatError;
pub use gguf::{GgufFile, GgufValue};
pub use hf_dir::HfDir;
pub use manifest::{
    CalibrationInfo, Manifest, ShardEntry, SourceInfo, TensorEntry, FORMAT_VERSION, INCOMPLETE_MARKER, MANIFEST_FILE,
    OLDEST_READABLE_VERSION,
};
pub use mapped::Mapped;
pub use safetensors::Dtype as StDtype;
pub use squish_dir::{read_manifest, write_manifest, SquishDir};
pub use writer::{plan_shards, sha256_file, PlannedTensor, ShardWriter, StoredDtype};

use std::path::Path;

pub type Result<T> = std::result::Result<T, FormatError>;

/// A model as found on disk.
pub enum ModelFiles {
    HfDir(HfDir),
    Squish(SquishDir),
    Gguf(GgufFile),
}

impl ModelFiles {
    /// Opens `path`: a directory with `config.json` and safetensors, or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            if SquishDir::is_squish_dir(path) {
                return Ok(Self::Squish(SquishDir::open(path)?));
            }
            return Ok(Self::HfDir(HfDir::open(path)?));
        }
        if gguf::has_gguf_magic(path)? {
            return Ok(Self::Gguf(GgufFile::open(path)?));
        }
        Err(FormatError::invalid(
            path,
            "not a model: expected a squish or Hugging Face model directory, or a GGUF file",
        ))
    }

    /// The Hugging Face-style directory behind a directory source.
    pub fn hf_dir(&self) -> Option<&HfDir> {
        match self {
            Self::HfDir(d) => Some(d),
            Self::Squish(s) => Some(s.hf()),
            Self::Gguf(_) => None,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::HfDir(d) => d.root(),
            Self::Squish(s) => s.hf().root(),
            Self::Gguf(g) => g.path(),
        }
    }
}
