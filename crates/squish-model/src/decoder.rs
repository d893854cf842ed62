//! The one decoder: a Llama-style pre-norm transformer that covers Llama 2/3, Mistral, Qwen2
//! (q/k/v biases), Qwen3 (per-head q/k RMS norms) and SmolLM2, all driven by `ModelConfig`
//! and by which tensors the files contain. It computes in f32.

use crate::config::{ModelConfig, RopeScaling};
use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::projections::Projections;
use crate::lora::{add_deltas, Adapter, Deltas, Target};
use crate::weights::Weights;
use crate::ModelError;
use candle_core::{Device, Tensor};
use squish_backend::{add_rms_norm, attention_from_caches, causal_attention, decode_attention, prefill_attention, CacheSlot, causal_attention_many, rms_norm, rms_norm_pieces, silu_mul, Rope};

/// A point in the forward pass whose activations feed linear layers: calibration observes
/// them to learn which input channels matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tap {
    /// Input of q/k/v (after the attention norm).
    AttnIn(usize),
    /// Input of o_proj.
    AttnOut(usize),
    /// Input of gate/up (after the MLP norm).
    MlpIn(usize),
    /// Input of down_proj.
    MlpMid(usize),
    /// Input of the LM head: the final hidden states that `forward` returns.
    Head,
}

impl Tap {
    /// The tap feeding the linear layer whose weight is `name` (HF naming).
    pub fn of_weight(name: &str) -> Option<Self> {
        if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            return Some(Self::Head);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (i, part) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        match part {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => Some(Self::AttnIn(i)),
            "self_attn.o_proj.weight" => Some(Self::AttnOut(i)),
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => Some(Self::MlpIn(i)),
            "mlp.down_proj.weight" => Some(Self::MlpMid(i)),
            _ => None,
        }
    }
}

/// Receives activations during a forward pass; x: (1, t, features).
pub trait Observer {
    fn observe(&mut self, tap: Tap, x: &Tensor) -> Result<(), ModelError>;
}

struct NoObserver;

impl Observer for NoObserver {
    fn observe(&mut self, _: Tap, _: &Tensor) -> Result<(), ModelError> {
        Ok(())
    }
}

/// One tensor the decoder reads: 2-D matrices (linear weights, embeddings) or 1-D vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Every tensor the decoder of `cfg` reads, in a stable order: the layers in order, then the
/// final norm, embeddings and head (whose calibration statistics come after the last layer's);
/// `has` says which optional ones (biases, q/k norms, untied head, rope frequencies) the
/// source holds.
pub fn tensor_plan(cfg: &ModelConfig, has: &dyn Fn(&str) -> bool) -> Vec<TensorSpec> {
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let (q_out, kv_out) = (cfg.heads * hd, cfg.kv_heads * hd);
    let mut plan = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, optional: bool| {
        if !optional || has(&name) {
            plan.push(TensorSpec { name, shape });
        }
    };
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![h], false);
        for (proj, out) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
            add(format!("{p}.self_attn.{proj}.weight"), vec![out, h], false);
            add(format!("{p}.self_attn.{proj}.bias"), vec![out], true);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, q_out], false);
        add(format!("{p}.self_attn.o_proj.bias"), vec![h], true);
        add(format!("{p}.self_attn.q_norm.weight"), vec![hd], true);
        add(format!("{p}.self_attn.k_norm.weight"), vec![hd], true);
        add(format!("{p}.post_attention_layernorm.weight"), vec![h], false);
        add(format!("{p}.mlp.gate_proj.weight"), vec![cfg.intermediate, h], false);
        add(format!("{p}.mlp.up_proj.weight"), vec![cfg.intermediate, h], false);
        add(format!("{p}.mlp.down_proj.weight"), vec![h, cfg.intermediate], false);
    }
    add("model.norm.weight".into(), vec![h], false);
    add("model.embed_tokens.weight".into(), vec![cfg.vocab, h], false);
    if !cfg.tie_embeddings {
        add("lm_head.weight".into(), vec![cfg.vocab, h], true);
    }
    add("rope_freqs.weight".into(), vec![hd / 2], true);
    plan
}

struct Attention {
    /// q, k, v
    qkv: Projections<3>,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

pub(crate) struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    mlp_norm: Tensor,
    gate_up: Projections<2>,
    down: Linear,
}

impl Layer {
    /// Decoder layer `i`'s weights.
    pub(crate) fn load(cfg: &ModelConfig, w: &Weights, i: usize) -> Result<Self, ModelError> {
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (q_out, kv_out) = (cfg.heads * hd, cfg.kv_heads * hd);
        let linear = |name: &str, out: usize, inp: usize| w.linear(name, out, inp);
        let p = format!("model.layers.{i}");
        let qkv = [
            linear(&format!("{p}.self_attn.q_proj"), q_out, h)?,
            linear(&format!("{p}.self_attn.k_proj"), kv_out, h)?,
            linear(&format!("{p}.self_attn.v_proj"), kv_out, h)?,
        ];
        let gate_up = [linear(&format!("{p}.mlp.gate_proj"), cfg.intermediate, h)?, linear(&format!("{p}.mlp.up_proj"), cfg.intermediate, h)?];
        Ok(Layer {
            attn_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
            attn: Attention {
                qkv: Projections::new(qkv, w.device())?,
                o: linear(&format!("{p}.self_attn.o_proj"), h, q_out)?,
                q_norm: w.maybe(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                k_norm: w.maybe(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
            },
            mlp_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate_up: Projections::new(gate_up, w.device())?,
            down: linear(&format!("{p}.mlp.down_proj"), h, cfg.intermediate)?,
        })
    }

    /// Replaces the weight of the matrix `part` (`self_attn.q_proj.weight`, ...) by a dense
    /// one of the same shape, keeping its bias: calibration runs a layer with the weights its
    /// earlier matrices were quantized to. False for a name that is not one of its matrices
    /// (or one stacked on a GPU; calibration runs on the CPU).
    pub(crate) fn replace_weight(&mut self, part: &str, w: Tensor) -> bool {
        let slot = match part {
            "self_attn.q_proj.weight" => self.attn.qkv.part_mut(0),
            "self_attn.k_proj.weight" => self.attn.qkv.part_mut(1),
            "self_attn.v_proj.weight" => self.attn.qkv.part_mut(2),
            "self_attn.o_proj.weight" => Some(&mut self.attn.o),
            "mlp.gate_proj.weight" => self.gate_up.part_mut(0),
            "mlp.up_proj.weight" => self.gate_up.part_mut(1),
            "mlp.down_proj.weight" => Some(&mut self.down),
            _ => None,
        };
        let Some(slot) = slot else { return false };
        let placeholder = Linear::new(crate::linear::Weight::Dense(Tensor::zeros((0, 0), candle_core::DType::F32, &Device::Cpu).expect("empty")), None);
        let (_, bias) = std::mem::replace(slot, placeholder).into_parts();
        *slot = Linear::new(crate::linear::Weight::Dense(w), bias);
        true
    }
}

pub struct Decoder {
    cfg: ModelConfig,
    embed: Linear, // (vocab, hidden)
    layers: Vec<Layer>,
    norm: Tensor,
    /// None when tied to the embeddings.
    lm_head: Option<Linear>,
    rope: Rope,
    device: Device,
    /// LoRA adapters by name; a step picks one (or none) by index.
    adapters: Vec<(String, Deltas)>,
    /// The adapter `forward` uses (`squish run --lora`).
    default_adapter: Option<usize>,
}

impl Decoder {
    /// Builds the decoder from its weights. `max_pos` bounds the positions RoPE is computed for.
    pub fn load(cfg: &ModelConfig, w: &Weights, max_pos: usize, device: &Device) -> Result<Self, ModelError> {
        let mut decoder = Self::load_without_layers(cfg, w, max_pos, device, true)?;
        decoder.layers = (0..cfg.layers).map(|i| Layer::load(cfg, w, i)).collect::<Result<_, _>>()?;
        Ok(decoder)
    }

    /// The final norm and RoPE, and the embeddings and head when `embeddings`: layers are then
    /// run one at a time through [`Decoder::stage_attn_in`] and the stages after it
    /// (layer-by-layer calibration, which embeds by itself and needs no head).
    pub(crate) fn load_without_layers(
        cfg: &ModelConfig,
        w: &Weights,
        max_pos: usize,
        device: &Device,
        embeddings: bool,
    ) -> Result<Self, ModelError> {
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let embed = match embeddings {
            true => w.linear("model.embed_tokens", cfg.vocab, h)?,
            false => Linear::new(crate::linear::Weight::Dense(Tensor::zeros((0, h), candle_core::DType::F32, device)?), None),
        };
        let lm_head = match embeddings && w.has("lm_head.weight") && !cfg.tie_embeddings {
            true => Some(w.linear("lm_head", cfg.vocab, h)?),
            false => None,
        };
        let mut cfg = cfg.clone();
        if cfg.rope_scaling == RopeScaling::None {
            if let Some(f) = w.maybe("rope_freqs.weight", &[hd / 2])? {
                cfg.rope_scaling = RopeScaling::FreqFactors(f.to_vec1()?);
            }
        }
        let rope = Rope::new(&cfg.rope_inv_freq(), max_pos, device)?;
        let norm = w.get("model.norm.weight", &[h])?;
        Ok(Self { cfg, embed, layers: Vec::new(), norm, lm_head, rope, device: device.clone(), adapters: Vec::new(), default_adapter: None })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Adds a LoRA adapter (already checked against this model's config) under `name`;
    /// returns the index steps select it by.
    pub fn add_adapter(&mut self, name: &str, adapter: &Adapter) -> Result<usize, ModelError> {
        if self.adapter_index(name).is_some() {
            return Err(ModelError::Adapter(format!("two adapters named `{name}`")));
        }
        self.adapters.push((name.to_string(), Deltas::new(adapter, &self.device)?));
        Ok(self.adapters.len() - 1)
    }

    pub fn adapter_index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|(n, _)| n == name)
    }

    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The adapter `forward` and `forward_observed` apply.
    pub fn set_default_adapter(&mut self, index: Option<usize>) {
        self.default_adapter = index;
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for one sequence of at most `capacity` tokens, stored as `dtype` (f32 or f16)
    /// on the CPU; on GPUs always in the compute dtype (bf16), which attention reads as is.
    pub fn new_cache(&self, capacity: usize, dtype: candle_core::DType) -> Result<KvCache, ModelError> {
        let dtype = if self.device.is_cpu() { dtype } else { squish_backend::compute_dtype(&self.device) };
        Ok(KvCache::new(self.cfg.layers, self.cfg.kv_heads, self.cfg.head_dim, capacity, dtype, &self.device)?)
    }

    /// Runs `tokens` after the ones already in `cache` and returns the final hidden states.
    /// -> (1, tokens.len(), hidden)
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor, ModelError> {
        self.forward_batch(&mut [Step { tokens, cache, adapter: self.default_adapter }])
    }

    /// `forward`, showing the inputs of every linear layer to `obs`.
    pub fn forward_observed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        obs: &mut dyn Observer,
    ) -> Result<Tensor, ModelError> {
        self.run(&mut [Step { tokens, cache, adapter: self.default_adapter }], obs)
    }

    /// Runs several sequences' new tokens as one forward: the linear layers see every row at
    /// once (one pass over the weights for the whole batch); attention runs per sequence over
    /// its own cache. squish's kernels compute each row exactly as they would alone (see
    /// `squish_quant::int4::matmul_with_panels`), so a sequence's numbers do not depend on
    /// its batch. -> (1, total tokens, hidden), rows in step order.
    pub fn forward_batch(&self, steps: &mut [Step<'_>]) -> Result<Tensor, ModelError> {
        self.run(steps, &mut NoObserver)
    }

    fn run(&self, steps: &mut [Step<'_>], obs: &mut dyn Observer) -> Result<Tensor, ModelError> {
        let mut ids = Vec::new();
        for s in steps.iter() {
            if s.cache.len() + s.tokens.len() > s.cache.capacity() {
                return Err(ModelError::PromptTooLong { prompt: s.cache.len() + s.tokens.len(), ctx: s.cache.capacity() });
            }
            ids.extend_from_slice(s.tokens);
        }
        let mut x = self.embed_rows(&ids)?;
        // Each layer ends with its residual add fused with the norm after it: the next layer's
        // attention norm, or the final norm (one launch instead of two on a GPU).
        let first_norm = self.layers.first().map_or(&self.norm, |l| &l.attn_norm);
        let mut n = rms_norm(&x, first_norm, self.eps())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.attn_norm);
            (x, n) = self.layer_forward(layer, i, (x, n), next_norm, steps, obs)?;
        }
        for s in steps.iter_mut() {
            s.cache.commit(s.tokens);
        }
        Ok(n)
    }

    /// ids -> (1, t, hidden)
    pub(crate) fn embed_rows(&self, ids: &[u32]) -> Result<Tensor, ModelError> {
        Ok(self.embed.rows(ids, &self.device)?.unsqueeze(0)?)
    }

    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(rms_norm(x, &self.norm, self.eps())?)
    }

    /// Decoder layer `i` (which names its taps; its keys and values go to slot i of each
    /// step's cache): x (1, t, hidden) and its attention-normed n -> the layer's output and
    /// that output normed by `next_norm`.
    fn layer_forward(
        &self,
        layer: &Layer,
        i: usize,
        (x, n): (Tensor, Tensor),
        next_norm: &Tensor,
        steps: &mut [Step<'_>],
        obs: &mut dyn Observer,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let segments: Vec<(usize, Option<usize>)> = steps.iter().map(|s| (s.tokens.len(), s.adapter)).collect();
        let proj = |t: Target, lin: &Linear, x: &Tensor| add_deltas(&self.adapters, &segments, i, t, x, lin.forward(x)?);
        obs.observe(Tap::AttnIn(i), &n)?;
        let a = &layer.attn;
        // On a GPU, Qwen2's q/k/v bias is added by the attention kernels as they read the rows.
        let ([q, k, v], bias) = a.qkv.forward_deferring_bias(&n)?;
        let delta = |t: Target, y: Tensor| add_deltas(&self.adapters, &segments, i, t, &n, y);
        let qkv = (delta(Target::Q, q)?, delta(Target::K, k)?, delta(Target::V, v)?);
        let att = self.attention(a, qkv, bias.as_ref(), steps, i)?;
        obs.observe(Tap::AttnOut(i), &att)?;
        let (x, n) = add_rms_norm(&x, &proj(Target::O, &a.o, &att)?, &layer.mlp_norm, self.eps())?;
        obs.observe(Tap::MlpIn(i), &n)?;
        let [gate, up] = layer.gate_up.forward(&n)?;
        let mid = silu_mul(&add_deltas(&self.adapters, &segments, i, Target::Gate, &n, gate)?, &add_deltas(&self.adapters, &segments, i, Target::Up, &n, up)?)?;
        obs.observe(Tap::MlpMid(i), &mid)?;
        Ok(add_rms_norm(&x, &proj(Target::Down, &layer.down, &mid)?, next_norm, self.eps())?)
    }

    /// `layer_forward` (no adapters, no observer) in the pieces between its taps, for
    /// calibration that quantizes a layer's matrices in turn. x (1, t, hidden) -> the q/k/v
    /// input n (1, t, hidden).
    pub(crate) fn stage_attn_in(&self, layer: &Layer, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(rms_norm(x, &layer.attn_norm, self.eps())?)
    }

    /// n (1, t, hidden) -> the o_proj input (1, t, heads * head_dim).
    pub(crate) fn stage_attn_out(&self, layer: &Layer, cache_slot: usize, n: &Tensor, steps: &mut [Step<'_>]) -> Result<Tensor, ModelError> {
        let a = &layer.attn;
        let [q, k, v] = a.qkv.forward(n)?;
        self.attention(a, (q, k, v), None, steps, cache_slot)
    }

    /// x and the o_proj input -> x after attention (1, t, hidden) and the gate/up input.
    pub(crate) fn stage_mlp_in(&self, layer: &Layer, x: &Tensor, att: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        Ok(add_rms_norm(x, &layer.attn.o.forward(att)?, &layer.mlp_norm, self.eps())?)
    }

    /// The gate/up input -> the down_proj input (1, t, intermediate).
    pub(crate) fn stage_mlp_mid(&self, layer: &Layer, n: &Tensor) -> Result<Tensor, ModelError> {
        let [gate, up] = layer.gate_up.forward(n)?;
        Ok(silu_mul(&gate, &up)?)
    }

    /// x after attention and the down_proj input -> the layer's output (1, t, hidden).
    pub(crate) fn stage_out(&self, layer: &Layer, x: &Tensor, mid: &Tensor) -> Result<Tensor, ModelError> {
        Ok((x + layer.down.forward(mid)?)?)
    }

    /// hidden: (1, t, hidden) -> logits (1, t, vocab), f32 on every device
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.lm_head.as_ref().unwrap_or(&self.embed).forward(hidden)?.to_dtype(candle_core::DType::F32)?)
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

    /// Logits of chosen rows of `hidden` (1, t, hidden), one plain vector per row.
    pub fn logits_at(&self, hidden: &Tensor, rows: &[usize]) -> Result<Vec<Vec<f32>>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.logits(&pick_rows(hidden, rows)?)?.squeeze(0)?.to_vec2()?)
    }

    /// The highest-logit token of each chosen row of `hidden` (1, t, hidden): greedy decoding.
    /// On a GPU the argmax runs there and only the ids come back, not a vocabulary of logits
    /// per row; among equal logits the CPU takes the lowest id, a GPU any of them.
    pub fn greedy_at(&self, hidden: &Tensor, rows: &[usize]) -> Result<Vec<u32>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.logits(&pick_rows(hidden, rows)?)?;
        if hidden.device().is_cpu() {
            // Scanned where they lie: a copy per row was a serial pass over 8 x 49k logits.
            let vocab = logits.dim(candle_core::D::Minus1)?;
            return Ok(squish_backend::with_f32(&logits, |l| l.chunks_exact(vocab).map(crate::argmax).collect())?);
        }
        Ok(logits.squeeze(0)?.argmax(candle_core::D::Minus1)?.to_vec1()?)
    }

    /// q, k, v projections of every step's rows, in order (1, t, heads * head_dim), and their
    /// stacked bias where the projection left it to attention (`forward_deferring_bias`) ->
    /// attention output before o_proj (1, t, heads * head_dim)
    fn attention(
        &self,
        a: &Attention,
        (mut q_all, mut k_all, mut v_all): (Tensor, Tensor, Tensor),
        mut bias: Option<&Tensor>,
        steps: &mut [Step<'_>],
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        if bias.is_some() && (a.q_norm.is_some() || a.k_norm.is_some()) {
            // The bias goes before the per-head norms, which the kernels do not apply.
            (q_all, k_all, v_all) = add_bias(bias.take(), (q_all, k_all, v_all))?;
        }
        if let Some(out) = self.decode_attention_cpu(a, [&q_all, &k_all, &v_all], steps, layer)? {
            return Ok(out);
        }
        if !self.device.is_cpu() {
            let (q_gpu, k_gpu) = self.qk_normed(a, &q_all, &k_all)?;
            let qkv = [&q_gpu, &k_gpu, &v_all];
            if let Some(out) = self.decode_attention_gpu(qkv, bias, steps, layer)? {
                return Ok(out);
            }
            if let Some(out) = self.prompt_attention_gpu(qkv, bias, steps, layer)? {
                return Ok(out);
            }
        }
        let (q_all, k_all, v_all) = add_bias(bias, (q_all, k_all, v_all))?;
        let hd = self.cfg.head_dim;
        // (1, t, heads * hd) -> (1, heads, t, hd), rotated for positions start..
        let split = |y: Tensor, heads: usize, norm: &Option<Tensor>, start: usize| -> Result<Tensor, ModelError> {
            let t = y.dim(1)?;
            let mut y = y.reshape((1, t, heads, hd))?;
            if let Some(w) = norm {
                y = rms_norm(&y, w, self.eps())?;
            }
            Ok(self.rope.apply(&y.transpose(1, 2)?, start)?)
        };
        let steps_len = steps.len();
        let mut qkv = Vec::with_capacity(steps_len);
        let mut row = 0;
        for s in steps.iter_mut() {
            let (t, start) = (s.tokens.len(), s.cache.len());
            let part = |y: &Tensor| y.narrow(1, row, t); // a view; the whole tensor for one step
            let q = split(part(&q_all)?, self.cfg.heads, &a.q_norm, start)?;
            let k = split(part(&k_all)?, self.cfg.kv_heads, &a.k_norm, start)?;
            let v = part(&v_all)?.reshape((1, t, self.cfg.kv_heads, hd))?.transpose(1, 2)?;
            let (k, v) = s.cache.append(layer, &k, &v)?;
            if steps_len == 1 {
                return Ok(causal_attention(&q, &k, &v, start)?); // (1, t, heads * hd)
            }
            qkv.push((q, k, v, start));
            row += t;
        }
        let items: Vec<_> = qkv.iter().map(|(q, k, v, start)| (q, k, v, *start)).collect();
        let outs = causal_attention_many(&items)?; // (1, t, heads * hd) each
        Ok(Tensor::cat(&outs, 1)?)
    }
}

impl Decoder {
    /// `attention` for decode on the CPU (every step a few tokens): norms, rotations and the
    /// cache writes on plain rows, then every sequence's attention in one parallel region.
    /// The tensor path's dozen candle ops per sequence and layer, run while the other
    /// threads idle, cost a batched step more than its attention did. None (nothing
    /// written) where it does not apply.
    fn decode_attention_cpu(&self, a: &Attention, qkv: [&Tensor; 3], steps: &mut [Step<'_>], layer: usize) -> Result<Option<Tensor>, ModelError> {
        if !self.device.is_cpu() || qkv[0].dtype() != candle_core::DType::F32 || steps.iter().any(|s| s.tokens.len() > 4) {
            return Ok(None);
        }
        let (heads, kv_heads, hd) = (self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim);
        let rows = |x: &Tensor| x.flatten_all().and_then(|x| x.to_vec1::<f32>());
        let (mut q, mut k, v) = (rows(qkv[0])?, rows(qkv[1])?, rows(qkv[2])?);
        let norm = |w: &Option<Tensor>| w.as_ref().map(|w| w.to_vec1::<f32>()).transpose();
        let (q_norm, k_norm) = (norm(&a.q_norm)?, norm(&a.k_norm)?);
        let (qw, kw) = (heads * hd, kv_heads * hd);
        let mut row = 0;
        for s in steps.iter_mut() {
            let (t, start) = (s.tokens.len(), s.cache.len());
            for i in 0..t {
                let (qr, kr) = (&mut q[(row + i) * qw..][..qw], &mut k[(row + i) * kw..][..kw]);
                if let Some(w) = &q_norm {
                    rms_norm_pieces(qr, w, self.eps());
                }
                if let Some(w) = &k_norm {
                    rms_norm_pieces(kr, w, self.eps());
                }
                // Host tables exist on every CPU device.
                let rotated = self.rope.rotate_row(qr, start + i) && self.rope.rotate_row(kr, start + i);
                debug_assert!(rotated);
            }
            s.cache.write_rows(layer, &k[row * kw..(row + t) * kw], &v[row * kw..(row + t) * kw])?;
            row += t;
        }
        let caches: Vec<_> = steps
            .iter()
            .map(|s| {
                let (kc, vc) = s.cache.layer(layer);
                (kc, vc, s.cache.len(), s.tokens.len())
            })
            .collect();
        Ok(match attention_from_caches(&q, heads, hd, &caches)? {
            Some(out) => Some(Tensor::from_vec(out, (1, row, qw), &self.device)?),
            None => None, // the tensor path then stores the same rows again
        })
    }

    /// q and k rows with Qwen3's per-head RMS norms applied (as `attention`'s generic path
    /// applies them, before RoPE), for the GPU kernels, which rotate but do not normalise.
    fn qk_normed(&self, a: &Attention, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let hd = self.cfg.head_dim;
        let norm = |y: &Tensor, w: &Option<Tensor>| -> Result<Tensor, ModelError> {
            let Some(w) = w else { return Ok(y.clone()) };
            let (_, t, width) = y.dims3()?;
            Ok(rms_norm(&y.reshape((1, t, width / hd, hd))?, w, self.eps())?.reshape((1, t, width))?)
        };
        Ok((norm(q, &a.q_norm)?, norm(k, &a.k_norm)?))
    }

    /// `attention` for decode steps of one token per sequence on a GPU: RoPE, the cache writes
    /// and every sequence's attention in one kernel launch (`squish_backend::decode_attention`).
    /// None (nothing written) where it does not apply.
    fn decode_attention_gpu(&self, qkv: [&Tensor; 3], bias: Option<&Tensor>, steps: &mut [Step<'_>], layer: usize) -> Result<Option<Tensor>, ModelError> {
        if steps.iter().any(|s| s.tokens.len() != 1) {
            return Ok(None);
        }
        let slots: Vec<CacheSlot> = steps
            .iter()
            .map(|s| {
                let (keys, values) = s.cache.layer(layer);
                CacheSlot { keys, values, pos: s.cache.len() }
            })
            .collect();
        Ok(decode_attention(qkv[0], qkv[1], qkv[2], bias, &slots, self.rope.tables(), self.head_dims())?)
    }

    /// `attention` for prompts, prompt chunks and mixed batches on a GPU: per sequence, RoPE,
    /// the cache writes and causal attention in two launches that never materialise the
    /// score matrix (`squish_backend::prefill_attention`). None (nothing written) where it
    /// does not apply.
    fn prompt_attention_gpu(&self, qkv: [&Tensor; 3], bias: Option<&Tensor>, steps: &mut [Step<'_>], layer: usize) -> Result<Option<Tensor>, ModelError> {
        let mut outs = Vec::with_capacity(steps.len());
        let mut row = 0;
        for s in steps.iter().filter(|s| !s.tokens.is_empty()) {
            let t = s.tokens.len();
            let (keys, values) = s.cache.layer(layer);
            let slot = CacheSlot { keys, values, pos: s.cache.len() };
            let [q, k, v] = qkv.map(|y| y.narrow(1, row, t));
            match prefill_attention(&q?, &k?, &v?, bias, &slot, self.rope.tables(), self.head_dims())? {
                Some(out) => outs.push(out),
                None if outs.is_empty() => return Ok(None),
                // The kernel's conditions are the model's and the device's, the same for every
                // sequence (run() checked each cache's room), so this is a bug, not bad input.
                None => return Err(candle_core::Error::Msg("prompt attention took one sequence of a batch but not the next".into()).into()),
            }
            row += t;
        }
        Ok(match outs.len() {
            0 => None, // no step has tokens: the generic path's empty result
            1 => Some(outs.remove(0)),
            _ => Some(Tensor::cat(&outs, 1)?),
        })
    }

    /// (heads, kv heads, head size)
    fn head_dims(&self) -> (usize, usize, usize) {
        (self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim)
    }
}

/// q, k and v with their pieces of a stacked bias added (as they come where nothing deferred
/// it).
fn add_bias(bias: Option<&Tensor>, (q, k, v): (Tensor, Tensor, Tensor)) -> Result<(Tensor, Tensor, Tensor), ModelError> {
    let Some(b) = bias else { return Ok((q, k, v)) };
    let (qw, kw) = (q.dim(2)?, k.dim(2)?);
    Ok((q.broadcast_add(&b.narrow(0, 0, qw)?)?, k.broadcast_add(&b.narrow(0, qw, kw)?)?, v.broadcast_add(&b.narrow(0, qw + kw, kw)?)?))
}

/// Rows `rows` of `hidden` (1, t, hidden) as (1, rows, hidden).
fn pick_rows(hidden: &Tensor, rows: &[usize]) -> Result<Tensor, ModelError> {
    let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), hidden.device())?;
    Ok(hidden.index_select(&idx, 1)?)
}

/// One sequence's share of a batched forward: new tokens to run after those its cache holds.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// The LoRA adapter (`Decoder::add_adapter`'s index) this sequence runs with, if any.
    pub adapter: Option<usize>,
}
