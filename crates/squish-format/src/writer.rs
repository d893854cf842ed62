//! Writes safetensors shards one tensor at a time, so a conversion holds only the tensor it
//! is working on. The header is written first from a plan of every tensor's dtype and shape;
//! each tensor's bytes must then arrive in plan order. The sha256 of the whole file is
//! computed on the way.

use crate::manifest::ShardEntry;
use crate::{FormatError, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The safetensors dtypes squish writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    U8,
    I8,
    F16,
    BF16,
    F32,
}

impl StoredDtype {
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F32 => "F32",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    pub fn new(name: impl Into<String>, dtype: StoredDtype, shape: &[usize]) -> Self {
        Self { name: name.into(), dtype, shape: shape.to_vec() }
    }

    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Splits a plan into shards of at most `max_bytes` each (a tensor larger than that gets a
/// shard of its own).
pub fn plan_shards(tensors: Vec<PlannedTensor>, max_bytes: usize) -> Vec<Vec<PlannedTensor>> {
    let mut shards: Vec<Vec<PlannedTensor>> = vec![Vec::new()];
    let mut size = 0;
    for t in tensors {
        let last = shards.last_mut().expect("never empty");
        if !last.is_empty() && size + t.bytes() > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += t.bytes();
        shards.last_mut().expect("never empty").push(t);
    }
    shards
}

pub struct ShardWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    plan: Vec<PlannedTensor>,
    next: usize,
    bytes: u64,
}

impl ShardWriter {
    pub fn create(path: &Path, plan: Vec<PlannedTensor>) -> Result<Self> {
        Self::with_format(path, plan, "squish")
    }

    /// A shard whose metadata says `format` ("pt" for files transformers must accept as its own).
    pub fn with_format(path: &Path, plan: Vec<PlannedTensor>, format: &str) -> Result<Self> {
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), format.into());
        header.insert("__metadata__".into(), meta.into());
        let mut offset = 0usize;
        for t in &plan {
            let end = offset + t.bytes();
            header.insert(
                t.name.clone(),
                serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
            );
            offset = end;
        }
        let mut text = serde_json::Value::Object(header).to_string();
        // Pad so the data starts 8-byte aligned: kernels read f16/f32 arrays in place.
        while (8 + text.len()) % 8 != 0 {
            text.push(' ');
        }
        let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
        let mut w = Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            plan,
            next: 0,
            bytes: 0,
        };
        w.put(&(text.len() as u64).to_le_bytes())?;
        w.put(text.as_bytes())?;
        Ok(w)
    }

    /// Appends the next tensor of the plan.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(t) = self.plan.get(self.next) else {
            return Err(FormatError::invalid(&self.path, format!("tensor `{name}` is not in the shard's plan")));
        };
        if t.name != name || t.bytes() != data.len() {
            return Err(FormatError::invalid(
                &self.path,
                format!("expected tensor `{}` of {} bytes next, got `{name}` of {}", t.name, t.bytes(), data.len()),
            ));
        }
        self.next += 1;
        self.put(data)
    }

    pub fn is_complete(&self) -> bool {
        self.next == self.plan.len()
    }

    /// Flushes and syncs the file; returns its manifest entry.
    pub fn finish(mut self) -> Result<ShardEntry> {
        if !self.is_complete() {
            return Err(FormatError::invalid(&self.path, "shard finished before all its tensors were written"));
        }
        self.out.flush().map_err(|e| FormatError::io(&self.path, e))?;
        self.out.get_ref().sync_all().map_err(|e| FormatError::io(&self.path, e))?;
        let file = self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(ShardEntry { file, bytes: self.bytes, sha256: hex(&self.hasher.finalize()) })
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.out.write_all(data).map_err(|e| FormatError::io(&self.path, e))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| FormatError::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}
