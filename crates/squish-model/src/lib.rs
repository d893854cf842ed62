//! A runnable language model: its config, the one decoder, its tokenizer and chat template,
//! and the sampler. Loads from anything squish-format opens. Knows nothing of HTTP or CLIs.

mod chat_template;
mod config;
pub mod convert;
mod decoder;
mod error;
mod gguf_tokenizer;
mod kv_cache;
mod linear;
pub mod lora;
mod projections;
mod sampler;
mod tokenizer;
mod weights;

pub use chat_template::{civil_from_days, ChatTemplate, Message};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use decoder::{tensor_plan, Decoder, Observer, Step, Tap, TensorSpec};
pub use error::ModelError;
pub use kv_cache::KvCache;
pub use sampler::{argmax, Sampler, SamplingParams};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::Weights;

use candle_core::{DType, Device};
use squish_format::ModelFiles;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Context size when the user does not choose one: enough for long chats, small enough that
/// the KV cache of a 7B model fits in a laptop's memory.
pub const DEFAULT_CTX: usize = 4096;

pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
    ctx: usize,
    kv_dtype: DType,
}

/// A model's files with its config and tokenizer, before any weight is loaded.
pub struct Source {
    pub files: Arc<ModelFiles>,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
}

impl Source {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let files = Arc::new(ModelFiles::open(path)?);
        let (config, tokenizer) = match (files.as_ref(), files.hf_dir()) {
            (ModelFiles::Gguf(g), _) => {
                let config = ModelConfig::from_gguf(g)?;
                let tok = gguf_tokenizer::tokenizer_from_gguf(g, &config.eos)?;
                (config, tok)
            }
            (_, Some(dir)) => {
                let config = ModelConfig::from_hf(&dir.read_json("config.json")?, &dir.root().join("config.json"))?;
                let tok = Tokenizer::from_hf_dir(dir, &config.eos, config.bos)?;
                (config, tok)
            }
            (_, None) => unreachable!("every source but GGUF is a directory"),
        };
        Ok(Self { files, config, tokenizer })
    }

    /// The tensors under their Hugging Face names, loaded on `device`.
    pub fn weights<'a>(&'a self, device: &'a Device) -> weights::Weights<'a> {
        weights::Weights::new(&self.files, &self.config, device)
    }
}

impl Model {
    /// Loads a squish or Hugging Face directory or a GGUF file onto `device`. `ctx` is the
    /// context size (default: the model's own, at most DEFAULT_CTX).
    pub fn load(path: &Path, device: &Device, ctx: Option<usize>) -> Result<Self, ModelError> {
        let Source { files, config, tokenizer } = Source::open(path)?;
        let ctx = match ctx {
            Some(c) if c > config.max_pos => {
                return Err(ModelError::unsupported(
                    path,
                    format!("--ctx {c} exceeds the model's context of {} tokens", config.max_pos),
                ))
            }
            Some(c) => c.max(1),
            None => config.max_pos.min(DEFAULT_CTX),
        };
        if let Some(free) = squish_backend::free_memory(device) {
            let (weights, cache) = (device_bytes(&files, &config), cache_bytes(&config, ctx, squish_backend::compute_dtype(device)));
            if weights + cache > free {
                let gib = |b: usize| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
                return Err(ModelError::unsupported(
                    path,
                    format!(
                        "needs about {} on {} ({} of weights, {} for one {ctx}-token KV cache) but {} are free; use a smaller --ctx, a smaller scheme (squish convert --to int4) or another device",
                        gib(weights + cache), squish_backend::describe(device), gib(weights), gib(cache), gib(free)
                    ),
                ));
            }
        }
        let weights = weights::Weights::new(&files, &config, device);
        let decoder = Decoder::load(&config, &weights, ctx, device)?;
        Ok(Self { decoder, tokenizer, path: path.to_path_buf(), ctx, kv_dtype: DType::F32 })
    }

    /// The most tokens (prompt and output) one sequence may hold.
    pub fn context_size(&self) -> usize {
        self.ctx
    }

    pub fn new_cache(&self) -> Result<KvCache, ModelError> {
        self.decoder.new_cache(self.ctx, self.kv_dtype)
    }

    /// Bytes of one sequence's KV cache (`new_cache`): keys and values of every layer for the
    /// whole context, in the dtype the cache holds on this device.
    pub fn kv_cache_bytes(&self) -> usize {
        let device = self.decoder.device();
        let dtype = if device.is_cpu() { self.kv_dtype } else { squish_backend::compute_dtype(device) };
        cache_bytes(self.decoder.config(), self.ctx, dtype)
    }

    /// How many of `wanted` sequences' KV caches fit in the device's free memory now: all of
    /// them where free memory is not measured (the CPU).
    pub fn caches_that_fit(&self, wanted: usize) -> usize {
        match squish_backend::free_memory(self.decoder.device()) {
            Some(free) => caches_fitting(free, self.kv_cache_bytes(), wanted),
            None => wanted,
        }
    }

    /// What `new_cache` stores keys and values as: f32 (the default) or f16.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Makes `new_cache` store keys and values as `dtype`: f32 or f16 (half the memory and
    /// of what batched decode reads; each key and value rounded to f16).
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<(), ModelError> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(ModelError::unsupported(&self.path, format!("a {dtype:?} kv cache: f32 or f16 only")));
        }
        self.kv_dtype = dtype;
        Ok(())
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        self.tokenizer.template()
    }
}

/// Bytes of a KV cache of `ctx` tokens stored as `dtype`.
fn cache_bytes(cfg: &ModelConfig, ctx: usize, dtype: DType) -> usize {
    cfg.layers * 2 * cfg.kv_heads * cfg.head_dim * ctx * dtype.size_in_bytes()
}

/// How many caches of `each` bytes fit in `free`, at most `wanted`, after a margin for a
/// step's activations and the allocator's slack: a tenth of `free`, at least 1 GiB.
fn caches_fitting(free: usize, each: usize, wanted: usize) -> usize {
    let margin = (free / 10).max(1 << 30);
    (free.saturating_sub(margin) / each.max(1)).min(wanted)
}

/// About how many bytes a model's weights take on a GPU: quantized matrices as stored (their
/// group parameters as f16), everything else in bf16.
fn device_bytes(files: &Arc<ModelFiles>, config: &ModelConfig) -> usize {
    let manifest = match files.as_ref() {
        ModelFiles::Squish(s) => Some(s.manifest()),
        _ => None,
    };
    let w = weights::Weights::new(files, config, &Device::Cpu);
    tensor_plan(config, &|n| w.has(n))
        .iter()
        .map(|spec| {
            let elems: usize = spec.shape.iter().product();
            // Codes plus an f16 scale (and min) per group of 64, as uploaded.
            match manifest.and_then(|m| m.tensors.get(&spec.name)).map(|e| e.scheme.as_str()) {
                Some("int4" | "int4p8") => elems * 9 / 16,
                Some("int3") => elems * 7 / 16,
                Some("int2") => elems * 5 / 16,
                Some("int8") => elems * 33 / 32,
                _ => elems * 2,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::caches_fitting;

    /// Caches fill what is free past the margin (a tenth, at least 1 GiB), never more than
    /// wanted, and none fit when the margin takes everything.
    #[test]
    fn caches_fit_after_the_margin() {
        const GIB: usize = 1 << 30;
        assert_eq!(caches_fitting(100 * GIB, GIB, 8), 8);
        assert_eq!(caches_fitting(100 * GIB, 10 * GIB, 32), 9);
        assert_eq!(caches_fitting(3 * GIB, GIB / 2, 8), 4);
        assert_eq!(caches_fitting(GIB, 1, 8), 0);
    }
}
