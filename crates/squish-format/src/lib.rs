//! Model files on disk: finding out what a path holds (a Hugging Face directory or a GGUF
//! file), opening it, validating it cheaply, and handing out tensors and metadata.
//! It must not interpret architectures or run anything: that is squish-model's job.

mod error;
mod gguf;
mod hf_dir;

pub use error::FormatError;
pub use gguf::{GgufFile, GgufValue};
pub use hf_dir::HfDir;

use std::path::Path;

pub type Result<T> = std::result::Result<T, FormatError>;

/// A model as found on disk.
pub enum ModelFiles {
    HfDir(HfDir),
    Gguf(GgufFile),
}

impl ModelFiles {
    /// Opens `path`: a directory with `config.json` and safetensors, or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            return Ok(Self::HfDir(HfDir::open(path)?));
        }
        if gguf::has_gguf_magic(path)? {
            return Ok(Self::Gguf(GgufFile::open(path)?));
        }
        Err(FormatError::invalid(
            path,
            "not a model: expected a directory with config.json and *.safetensors, or a GGUF file",
        ))
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::HfDir(d) => d.root(),
            Self::Gguf(g) => g.path(),
        }
    }
}
