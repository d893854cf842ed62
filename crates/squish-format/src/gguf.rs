//! A GGUF file (v2/v3), parsed by candle's reader: metadata, tensor infos, and tensors
//! dequantized on demand. Opening checks that every tensor's bytes lie inside the file, so a
//! truncated download fails at once with the file's name rather than half-way through a load.

use crate::error::candle_msg;
use crate::{FormatError, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use gguf_file::Value as GgufValue;

pub struct GgufFile {
    path: PathBuf,
    file: std::fs::File,
    content: gguf_file::Content,
}

pub(crate) fn has_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| FormatError::invalid(path, format!("not a readable GGUF file ({})", candle_msg(&e))))?;
        let file_len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(FormatError::invalid(
                    path,
                    format!("tensor `{name}`: {elems} elements is not a whole number of {block}-element blocks"),
                ));
            }
            let end = content.tensor_data_offset + info.offset + (elems / block * info.ggml_dtype.type_size()) as u64;
            if end > file_len {
                return Err(FormatError::invalid(
                    path,
                    format!("truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"),
                ));
            }
        }
        Ok(Self { path: path.to_path_buf(), file, content })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.content.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    /// An integer of any width, as GGUF writers differ in which they use.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        use GgufValue::*;
        match self.metadata(key)? {
            U8(v) => Some(*v as u64),
            I8(v) => u64::try_from(*v).ok(),
            U16(v) => Some(*v as u64),
            I16(v) => u64::try_from(*v).ok(),
            U32(v) => Some(*v as u64),
            I32(v) => u64::try_from(*v).ok(),
            U64(v) => Some(*v),
            I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.metadata(key)? {
            GgufValue::F32(v) => Some(*v as f64),
            GgufValue::F64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key).and_then(|v| v.to_bool().ok())
    }

    pub fn meta_array(&self, key: &str) -> Option<&Vec<GgufValue>> {
        self.metadata(key).and_then(|v| v.to_vec().ok())
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// The tensor in its stored (possibly block-quantized) form.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(FormatError::MissingTensor { path: self.path.clone(), name: name.into() });
        }
        let mut reader = &self.file;
        self.content
            .tensor(&mut reader, name, device)
            .map_err(|e| FormatError::invalid(&self.path, format!("tensor `{name}`: {}", candle_msg(&e))))
    }

    /// The tensor dequantized to `dtype` on `device`.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, &Device::Cpu)?;
        let fail = |e: candle_core::Error| FormatError::invalid(&self.path, format!("tensor `{name}`: {}", candle_msg(&e)));
        q.dequantize(&Device::Cpu).and_then(|t| t.to_dtype(dtype)).and_then(|t| t.to_device(device)).map_err(fail)
    }
}
