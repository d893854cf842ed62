//! The one decoder: a Llama-style pre-norm transformer that covers Llama 2/3, Mistral, Qwen2
//! (q/k/v biases), Qwen3 (per-head q/k RMS norms) and SmolLM2, all driven by `ModelConfig`
//! and by which tensors the files contain. It computes in f32.

use crate::config::{ModelConfig, RopeScaling};
use crate::kv_cache::KvCache;
use crate::weights::Weights;
use crate::ModelError;
use candle_core::{Device, Module, Tensor};
use candle_nn::Linear;
use squish_backend::{causal_attention, rms_norm, Rope};

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Decoder {
    cfg: ModelConfig,
    embed: Tensor, // (vocab, hidden)
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl Decoder {
    /// Builds the decoder from its weights. `max_pos` bounds the positions RoPE is computed for.
    pub fn load(cfg: &ModelConfig, w: &Weights, max_pos: usize, device: &Device) -> Result<Self, ModelError> {
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (q_out, kv_out) = (cfg.heads * hd, cfg.kv_heads * hd);
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear, ModelError> {
            let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
            let bias = w.maybe(&format!("{name}.bias"), &[out])?;
            Ok(Linear::new(weight, bias))
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn: Attention {
                    q: linear(&format!("{p}.self_attn.q_proj"), q_out, h)?,
                    k: linear(&format!("{p}.self_attn.k_proj"), kv_out, h)?,
                    v: linear(&format!("{p}.self_attn.v_proj"), kv_out, h)?,
                    o: linear(&format!("{p}.self_attn.o_proj"), h, q_out)?,
                    q_norm: w.maybe(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                    k_norm: w.maybe(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                },
                mlp_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: linear(&format!("{p}.mlp.gate_proj"), cfg.intermediate, h)?,
                up: linear(&format!("{p}.mlp.up_proj"), cfg.intermediate, h)?,
                down: linear(&format!("{p}.mlp.down_proj"), h, cfg.intermediate)?,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[cfg.vocab, h])?;
        let lm_head = match w.maybe("lm_head.weight", &[cfg.vocab, h])? {
            Some(head) if !cfg.tie_embeddings => Linear::new(head, None),
            _ => Linear::new(embed.clone(), None),
        };
        let mut cfg = cfg.clone();
        if cfg.rope_scaling == RopeScaling::None {
            if let Some(f) = w.maybe("rope_freqs.weight", &[hd / 2])? {
                cfg.rope_scaling = RopeScaling::FreqFactors(f.to_vec1()?);
            }
        }
        let rope = Rope::new(&cfg.rope_inv_freq(), max_pos, device)?;
        let norm = w.get("model.norm.weight", &[h])?;
        Ok(Self { cfg, embed, layers, norm, lm_head, rope, device: device.clone() })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for one sequence of at most `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        Ok(KvCache::new(self.cfg.layers, self.cfg.kv_heads, self.cfg.head_dim, capacity, &self.device)?)
    }

    /// Runs `tokens` after the ones already in `cache` and returns the final hidden states.
    /// -> (1, tokens.len(), hidden)
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let start = cache.len();
        if start + tokens.len() > cache.capacity() {
            return Err(ModelError::PromptTooLong { prompt: start + tokens.len(), ctx: cache.capacity() });
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(0)?; // (1, t, hidden)
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let a = self.attention(&layer.attn, &rms_norm(&x, &layer.attn_norm, self.eps())?, cache, i, start)?;
            x = (residual + a)?;
            let n = rms_norm(&x, &layer.mlp_norm, self.eps())?;
            let mlp = layer.down.forward(&(layer.gate.forward(&n)?.silu()? * layer.up.forward(&n)?)?)?;
            x = (x + mlp)?;
        }
        cache.commit(tokens);
        Ok(rms_norm(&x, &self.norm, self.eps())?)
    }

    /// hidden: (1, t, hidden) -> logits (1, t, vocab)
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// Logits of the last position only, as a plain vector of vocab entries.
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Vec<f32>, ModelError> {
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?;
        Ok(self.logits(&last)?.flatten_all()?.to_vec1()?)
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_eps as f32
    }

    /// x: (1, t, hidden) -> (1, t, hidden)
    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        start: usize,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = x.dims3()?;
        let hd = self.cfg.head_dim;
        // (1, t, heads * hd) -> (1, heads, t, hd)
        let split = |y: Tensor, heads: usize, norm: &Option<Tensor>| -> Result<Tensor, ModelError> {
            let mut y = y.reshape((b, t, heads, hd))?;
            if let Some(w) = norm {
                y = rms_norm(&y, w, self.eps())?;
            }
            Ok(self.rope.apply(&y.transpose(1, 2)?, start)?)
        };
        let q = split(a.q.forward(x)?, self.cfg.heads, &a.q_norm)?;
        let k = split(a.k.forward(x)?, self.cfg.kv_heads, &a.k_norm)?;
        let v = a.v.forward(x)?.reshape((b, t, self.cfg.kv_heads, hd))?.transpose(1, 2)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let out = causal_attention(&q, &k, &v, start)?; // (1, t, heads * hd)
        Ok(a.o.forward(&out)?)
    }
}
