//! A Hugging Face model directory: `config.json`, tokenizer files, and the weights in one or
//! more `*.safetensors` shards (listed by `model.safetensors.index.json` when sharded), mmapped.

use crate::error::candle_msg;
use crate::{FormatError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct HfDir {
    root: PathBuf,
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    /// tensor name -> index into `shards`
    routing: HashMap<String, usize>,
}

impl HfDir {
    pub fn open(root: &Path) -> Result<Self> {
        let config = root.join("config.json");
        if !config.is_file() {
            return Err(FormatError::invalid(root, "no config.json: not a Hugging Face model directory"));
        }
        let mut shards = Vec::new();
        let mut routing = HashMap::new();
        for path in shard_paths(root)? {
            // SAFETY: the file is mapped read-only; squish never writes model files in place, and
            // a file changed under a running process is outside what any mmap-based loader can guard.
            let st = unsafe { MmapedSafetensors::new(&path) }
                .map_err(|e| FormatError::invalid(&path, format!("not a valid safetensors file ({})", candle_msg(&e))))?;
            for (name, _) in st.tensors() {
                routing.insert(name, shards.len());
            }
            shards.push((path, st));
        }
        Ok(Self { root: root.to_path_buf(), shards, routing })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The text of a file in the directory, or None when it is absent.
    pub fn read_optional(&self, name: &str) -> Result<Option<String>> {
        let path = self.root.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FormatError::io(&path, e)),
        }
    }

    /// A file that must be present, parsed as JSON.
    pub fn read_json(&self, name: &str) -> Result<serde_json::Value> {
        let path = self.root.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| FormatError::invalid(&path, format!("invalid JSON: {e}")))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.routing.keys().map(String::as_str)
    }

    /// The stored bytes of a tensor, borrowed from the mmap, with its dtype and shape.
    pub fn raw(&self, name: &str) -> Result<(&[u8], safetensors::Dtype, Vec<usize>)> {
        let Some(&idx) = self.routing.get(name) else {
            return Err(FormatError::MissingTensor { path: self.root.clone(), name: name.into() });
        };
        let (path, st) = &self.shards[idx];
        let view = st.get(name).map_err(|e| FormatError::invalid(path, format!("tensor `{name}`: {}", candle_msg(&e))))?;
        Ok((view.data(), view.dtype(), view.shape().to_vec()))
    }

    /// Loads a floating-point tensor (f32, f16 or bf16 on disk) as `dtype` on `device`.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(&idx) = self.routing.get(name) else {
            return Err(FormatError::MissingTensor { path: self.root.clone(), name: name.into() });
        };
        let (path, st) = &self.shards[idx];
        let t = st.load(name, device).map_err(|e| FormatError::invalid(path, format!("tensor `{name}`: {}", candle_msg(&e))))?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(FormatError::invalid(
                path,
                format!("tensor `{name}` has dtype {:?}; expected f32, f16 or bf16", t.dtype()),
            ));
        }
        t.to_dtype(dtype).map_err(|e| FormatError::invalid(path, format!("tensor `{name}`: {}", candle_msg(&e))))
    }
}

/// The shard files: from the index when there is one, else every `*.safetensors` in the dir.
fn shard_paths(root: &Path) -> Result<Vec<PathBuf>> {
    let index = root.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| FormatError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| FormatError::invalid(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| FormatError::invalid(&index, "no `weight_map` object"))?;
        let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        let mut paths = Vec::new();
        for f in files {
            if f.contains("..") || f.starts_with('/') {
                return Err(FormatError::invalid(&index, format!("shard name `{f}` points outside the directory")));
            }
            let p = root.join(&f);
            if !p.is_file() {
                return Err(FormatError::invalid(&p, "shard listed in model.safetensors.index.json is missing"));
            }
            paths.push(p);
        }
        return Ok(paths);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| FormatError::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(FormatError::invalid(root, "no *.safetensors weights in the directory"));
    }
    Ok(paths)
}
