//! The decoder's shape, read from a Hugging Face `config.json` or from GGUF metadata. One
//! struct describes every supported architecture; differences that the weights already show
//! (q/k/v biases, q/k norms, tied embeddings) are detected from the tensors at load.

use crate::ModelError;
use serde_json::Value;
use squish_format::GgufFile;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3 (SmolLM2 is llama)";

    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" | "smollm" | "smollm2" => Some(Self::Llama),
            "mistral" | "mistralforcausallm" => Some(Self::Mistral),
            "qwen2" | "qwen2forcausallm" => Some(Self::Qwen2),
            "qwen3" | "qwen3forcausallm" => Some(Self::Qwen3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    /// Llama 3.1/3.2: low frequencies stretched by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_pos: f64 },
    /// Per-frequency divisors stored in the file (llama.cpp's `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The longest context the model was trained for (capped by a sliding window if it has one).
    pub max_pos: usize,
    pub tie_embeddings: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

impl ModelConfig {
    /// From a Hugging Face `config.json` (transformers 4.x `rope_scaling` or 5.x `rope_parameters`).
    pub fn from_hf(json: &Value, path: &Path) -> Result<Self, ModelError> {
        let bad = |msg: String| ModelError::unsupported(path, msg);
        let usize_of = |key: &str| -> Result<usize, ModelError> {
            json.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| bad(format!("missing `{key}`")))
        };
        let arch_name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| json.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| bad("no `architectures` or `model_type`".into()))?;
        let arch = Arch::parse(arch_name)
            .ok_or_else(|| bad(format!("unknown architecture `{arch_name}` (supported: {})", Arch::SUPPORTED)))?;
        let hidden = usize_of("hidden_size")?;
        let heads = usize_of("num_attention_heads")?;
        let rope = json.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = json
            .get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let scaling = json.get("rope_scaling").filter(|v| v.is_object()).or(rope);
        let mut max_pos = usize_of("max_position_embeddings")?;
        let sliding = json.get("sliding_window").and_then(Value::as_u64).map(|v| v as usize);
        let sliding_on = json.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(arch == Arch::Mistral);
        if let (Some(w), true) = (sliding, sliding_on) {
            // Attention over a longer context would differ from the model's; stay exact.
            max_pos = max_pos.min(w);
        }
        Ok(Self {
            arch,
            hidden,
            intermediate: usize_of("intermediate_size")?,
            layers: usize_of("num_hidden_layers")?,
            heads,
            kv_heads: json.get("num_key_value_heads").and_then(Value::as_u64).map_or(heads, |v| v as usize),
            head_dim: json.get("head_dim").and_then(Value::as_u64).map_or(hidden / heads.max(1), |v| v as usize),
            vocab: usize_of("vocab_size")?,
            rms_eps: json.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling: hf_rope_scaling(scaling).map_err(bad)?,
            max_pos,
            tie_embeddings: json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos: json.get("bos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            eos: token_ids(json.get("eos_token_id")),
        })
    }

    /// From GGUF metadata (`general.architecture` and its `<arch>.*` keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let bad = |msg: String| ModelError::unsupported(g.path(), msg);
        let arch_name = g.meta_str("general.architecture").ok_or_else(|| bad("no general.architecture".into()))?;
        let arch = Arch::parse(arch_name)
            .ok_or_else(|| bad(format!("unknown architecture `{arch_name}` (supported: {})", Arch::SUPPORTED)))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| g.meta_u64(&key(k)).map(|v| v as usize).ok_or_else(|| bad(format!("missing `{}`", key(k))));
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = match g.meta_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g.meta_array("tokenizer.ggml.tokens").map(Vec::len).ok_or_else(|| bad("no vocabulary".into()))?,
        };
        let rope_scaling = match (g.meta_str(&key("rope.scaling.type")), g.meta_f64(&key("rope.scaling.factor"))) {
            (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
            (Some("none") | None, _) => RopeScaling::None,
            (Some(other), _) => return Err(bad(format!("unsupported rope scaling `{other}`"))),
        };
        let mut eos: Vec<u32> = ["eos_token_id", "eot_token_id", "eom_token_id"]
            .iter()
            .filter_map(|k| g.meta_u64(&format!("tokenizer.ggml.{k}")).map(|v| v as u32))
            .collect();
        eos.dedup();
        Ok(Self {
            arch,
            hidden,
            intermediate: need("feed_forward_length")?,
            layers: need("block_count")?,
            heads,
            kv_heads: g.meta_u64(&key("attention.head_count_kv")).map_or(heads, |v| v as usize),
            head_dim: g.meta_u64(&key("attention.key_length")).map_or(hidden / heads.max(1), |v| v as usize),
            vocab,
            rms_eps: g.meta_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: g.meta_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            max_pos: g.meta_u64(&key("context_length")).map_or(4096, |v| v as usize),
            tie_embeddings: !g.has_tensor("output.weight"),
            bos: g.meta_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos,
        })
    }

    /// The rotary inverse frequencies, head_dim / 2 of them, with the scaling scheme applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d)).collect();
        let scaled: Vec<f64> = match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::FreqFactors(div) => base.iter().zip(div).map(|(f, d)| f / *d as f64).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => {
                let low_wavelen = original_max_pos / low_freq_factor;
                let high_wavelen = original_max_pos / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_pos / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }
}

fn hf_rope_scaling(v: Option<&Value>) -> Result<RopeScaling, String> {
    let Some(v) = v else { return Ok(RopeScaling::None) };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("rope scaling `{kind}` lacks `{k}`"));
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_pos: num("original_max_position_embeddings")?,
        }),
        other => Err(format!("unsupported rope scaling `{other}` (supported: default, linear, llama3)")),
    }
}

/// A token id field that may be a number or a list of numbers.
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}
