//! A LoRA adapter: for chosen linear layers W (out, in), factors A (rank, in) and B (out, rank)
//! so that the layer computes W x + scale · B A x. Stored as PEFT does
//! (`adapter_config.json`, `adapter_model.safetensors` with
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so `peft` loads
//! squish's adapters and squish loads PEFT's. Everything is checked against the model's
//! config at load: the first tensor that does not fit is named.

use crate::{ModelConfig, ModelError};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A linear layer of a decoder layer that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// PEFT's `target_modules` name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The module's path inside `model.layers.{i}`.
    pub fn module(self) -> String {
        let block = if matches!(self, Target::Gate | Target::Up | Target::Down) { "mlp" } else { "self_attn" };
        format!("{block}.{}", self.name())
    }

    /// (out, in) of this layer's weight in a model of `cfg`.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, q, kv) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        match self {
            Target::Q => (q, h),
            Target::K | Target::V => (kv, h),
            Target::O => (h, q),
            Target::Gate | Target::Up => (cfg.intermediate, h),
            Target::Down => (h, cfg.intermediate),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Target>,
    /// rsLoRA: scale alpha / sqrt(rank) instead of alpha / rank.
    pub rslora: bool,
    /// What it was trained on (PEFT's `base_model_name_or_path`), for the record.
    pub base: String,
}

impl AdapterConfig {
    pub fn scale(&self) -> f64 {
        match self.rslora {
            true => self.alpha / (self.rank as f64).sqrt(),
            false => self.alpha / self.rank as f64,
        }
    }
}

/// One adapted layer's factors: a (rank, in), b (out, rank).
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub pairs: BTreeMap<(usize, Target), LoraPair>,
}

fn key(layer: usize, target: Target, ab: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{ab}.weight", target.module())
}

impl Adapter {
    /// A fresh adapter as PEFT initialises one: A uniform in ±1/sqrt(in) (Kaiming with a = √5),
    /// B zero, so training starts from the base model's outputs.
    pub fn init(cfg: &ModelConfig, config: AdapterConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        let mut rng = SplitMix(seed);
        let mut pairs = BTreeMap::new();
        for layer in 0..cfg.layers {
            for &t in &config.targets {
                let (out, inp) = t.shape(cfg);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.rank * inp).map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Tensor::from_vec(a, (config.rank, inp), device)?;
                let b = Tensor::zeros((out, config.rank), DType::F32, device)?;
                pairs.insert((layer, t), LoraPair { a, b });
            }
        }
        Ok(Self { config, pairs })
    }

    /// Reads a PEFT adapter directory and checks it fits a model of `cfg`.
    pub fn load(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        let bad = |file: &str, why: String| ModelError::unsupported(&dir.join(file), why);
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| bad(CONFIG_FILE, format!("cannot read the adapter config ({e}); an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(CONFIG_FILE, format!("not JSON: {e}")))?;
        let config = parse_config(&v).map_err(|why| bad(CONFIG_FILE, why))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            let why = match dir.join("adapter_model.bin").is_file() {
                true => "only adapter_model.bin (pickle) is there: save it with safetensors (PEFT's default) to use it here".to_string(),
                false => "missing".to_string(),
            };
            return Err(bad(WEIGHTS_FILE, why));
        }
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| bad(WEIGHTS_FILE, e.to_string()))?;
        let pairs = check_tensors(tensors, &config, cfg).map_err(|why| bad(WEIGHTS_FILE, why))?;
        Ok(Self { config, pairs })
    }

    /// Writes the adapter in PEFT's layout, each file whole or not at all.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = HashMap::new();
        for (&(layer, t), p) in &self.pairs {
            tensors.insert(key(layer, t, "A"), p.a.to_dtype(DType::F32)?);
            tensors.insert(key(layer, t, "B"), p.b.to_dtype(DType::F32)?);
        }
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join(WEIGHTS_FILE)).map_err(|e| ModelError::io(dir, e))?;
        let c = &self.config;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": c.base,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": 0.0,
            "target_modules": c.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": c.rslora,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let text = serde_json::to_string_pretty(&config).expect("a JSON value serializes");
        let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text + "\n").map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(CONFIG_FILE)).map_err(|e| ModelError::io(dir, e))
    }
}

fn parse_config(v: &Value) -> Result<AdapterConfig, String> {
    let peft_type = v["peft_type"].as_str().unwrap_or("");
    if peft_type != "LORA" {
        return Err(format!("peft_type is {peft_type:?}; squish reads LORA adapters"));
    }
    for (flag, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (GPT-2 style Conv1D) weights")] {
        if v[flag].as_bool() == Some(true) {
            return Err(format!("{what} is not supported"));
        }
    }
    for (field, what) in [("modules_to_save", "modules_to_save (fully trained extra modules)"), ("rank_pattern", "per-layer ranks (rank_pattern)"), ("alpha_pattern", "per-layer alphas (alpha_pattern)")] {
        let used = match &v[field] {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if used {
            return Err(format!("{what} is not supported"));
        }
    }
    let rank = v["r"].as_u64().filter(|&r| r > 0).ok_or("`r` must be a positive integer")? as usize;
    let alpha = v["lora_alpha"].as_f64().ok_or("`lora_alpha` must be a number")?;
    let names: Vec<String> = match &v["target_modules"] {
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        Value::String(s) => return Err(format!("target_modules is the pattern {s:?}; squish needs a list of module names")),
        _ => return Err("target_modules is missing".into()),
    };
    let mut targets = Vec::new();
    for n in &names {
        let t = Target::parse(n).ok_or_else(|| format!("target module {n:?} is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"))?;
        targets.push(t);
    }
    targets.sort();
    targets.dedup();
    let rslora = v["use_rslora"].as_bool().unwrap_or(false);
    let base = v["base_model_name_or_path"].as_str().unwrap_or("").to_string();
    Ok(AdapterConfig { rank, alpha, targets, rslora, base })
}

/// Pairs every lora_A with its lora_B, each shaped for the model; the first misfit is named.
fn check_tensors(mut tensors: HashMap<String, Tensor>, c: &AdapterConfig, cfg: &ModelConfig) -> Result<BTreeMap<(usize, Target), LoraPair>, String> {
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let mut pairs = BTreeMap::new();
    for name in &names {
        let Some((layer, target, ab)) = parse_key(name) else {
            return Err(format!("tensor `{name}` is not a LoRA factor of a decoder layer's linear layer"));
        };
        if layer >= cfg.layers {
            return Err(format!("tensor `{name}`: the model has {} layers", cfg.layers));
        }
        if !c.targets.contains(&target) {
            return Err(format!("tensor `{name}`: {} is not in target_modules", target.name()));
        }
        if ab == "B" {
            continue;
        }
        let (out, inp) = target.shape(cfg);
        let a = tensors.remove(name).expect("listed");
        let b_name = key(layer, target, "B");
        let b = tensors.remove(&b_name).ok_or_else(|| format!("tensor `{b_name}` is missing (its lora_A is there)"))?;
        for (n, t, want) in [(name.as_str(), &a, [c.rank, inp]), (b_name.as_str(), &b, [out, c.rank])] {
            if t.dims() != want {
                return Err(format!("tensor `{n}` has shape {:?}; this model's {} needs {want:?}", t.dims(), target.name()));
            }
        }
        pairs.insert((layer, target), LoraPair { a: a.to_dtype(DType::F32).map_err(|e| e.to_string())?, b: b.to_dtype(DType::F32).map_err(|e| e.to_string())? });
    }
    if let Some(orphan) = tensors.keys().find(|k| parse_key(k).is_some_and(|(l, t, _)| !pairs.contains_key(&(l, t)))) {
        return Err(format!("tensor `{orphan}` has no lora_A beside it"));
    }
    if pairs.is_empty() {
        return Err("no LoRA tensors".into());
    }
    Ok(pairs)
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` -> (3, Q, "A"); PEFT
/// also writes the adapter's name (`lora_A.default.weight`) in some versions.
fn parse_key(name: &str) -> Option<(usize, Target, &str)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let ab = match rest {
        "lora_A.weight" | "lora_A.default.weight" => "A",
        "lora_B.weight" | "lora_B.default.weight" => "B",
        _ => return None,
    };
    let target = Target::parse(module)?;
    (format!("{block}.{module}") == target.module()).then_some(())?;
    Some((layer.parse().ok()?, target, ab))
}

/// A small seeded generator (SplitMix64): adapters and data order are reproducible from a seed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
