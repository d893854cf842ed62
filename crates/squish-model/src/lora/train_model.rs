//! The decoder again, differentiable, for LoRA training: the base weights frozen (dense
//! tensors, or a squish INT8/INT4/INT3 base kept quantized: `frozen`), the adapters as candle
//! `Var`s, and ops candle's autograd knows (matmul, softmax, exp, ...) or custom ones with
//! their own backward (`fused`), so gradients flow through the base into the adapters of
//! every earlier layer. Same maths as `Decoder` (tests compare their logits), none of its
//! inference machinery (KV cache, fused attention), which has no backward. For LoRA each layer runs checkpointed (`train_layer`); batches are
//! right-padded, and causal attention never lets a real token see a pad.

use super::adapter::{Adapter, AdapterConfig, LoraPair, Target};
use super::frozen::FrozenWeight;
use super::fused::{frozen_matmul, head_loss};
use super::train_layer::{Frozen, SideGrads, TrainLayer};
use crate::{ModelConfig, ModelError, RopeScaling, Source, Weights};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct TrainModel {
    cfg: ModelConfig,
    embed: FrozenWeight, // (vocab, hidden)
    head: Option<FrozenWeight>,
    norm: Tensor,
    layers: Vec<Arc<TrainLayer>>,
    config: AdapterConfig,
    side: SideGrads,
    /// Tuned embeddings (`convert::tune`), which the tied head then reads too.
    embed_tuned: Option<super::tuned::Tuned>,
    /// Layers run as checkpointed ops (LoRA training: one layer's activations in memory);
    /// off, autograd keeps every layer's (tuning a small model: one forward pass less).
    checkpoint: bool,
}

/// One training batch: token rows, and which positions are scored against which next token.
pub struct Batch {
    /// (batch, seq), right-padded.
    pub tokens: Tensor,
    /// Flat indices (row * seq + position) of the positions whose next token is a target.
    pub positions: Tensor,
    /// The target token of each of those positions.
    pub targets: Tensor,
}

/// The rotate-half RoPE tables (cos, sin), (max_pos, head_dim) each in `dtype`; `cfg` takes
/// llama.cpp's `rope_freqs` factors from `w` when the weights carry them.
pub(crate) fn rope_tables(cfg: &mut ModelConfig, w: &Weights, max_pos: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
    let hd = cfg.head_dim;
    if cfg.rope_scaling == RopeScaling::None {
        if let Some(f) = w.maybe("rope_freqs.weight", &[hd / 2])? {
            cfg.rope_scaling = RopeScaling::FreqFactors(f.to_vec1()?);
        }
    }
    let inv: Vec<f32> = cfg.rope_inv_freq();
    let angles: Vec<f32> = (0..max_pos).flat_map(|p| (0..hd).map(move |j| (p, j))).map(|(p, j)| p as f32 * inv[j % (hd / 2)]).collect();
    let angles = Tensor::from_vec(angles, (max_pos, hd), device)?;
    Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
}

impl TrainModel {
    /// The base model of `source` (frozen, in `dtype`) with `adapter` as its trainable part.
    pub fn new(source: &Source, adapter: &Adapter, max_pos: usize, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let mut cfg = source.config.clone();
        let w = source.weights(device);
        let frozen = |prefix: &str, out: usize, inp: usize| -> Result<Frozen, ModelError> {
            let linear = w.linear(prefix, out, inp)?;
            if linear.rotation().is_some() {
                // The frozen ops would have to rotate inputs and gradients as inference does.
                return Err(ModelError::Adapter(format!(
                    "{prefix} is stored rotated (an INT3 model): train over the source model or an INT4/INT8 conversion, then run the adapter on this one"
                )));
            }
            let (weight, b) = linear.into_parts();
            Ok(Frozen { w: FrozenWeight::new(weight, dtype)?, b: b.map(|b| b.to_dtype(dtype)).transpose()?, tuned: None })
        };
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, ModelError> { Ok(w.get(name, shape)?.to_dtype(dtype)?) };
        let maybe = |name: &str, shape: &[usize]| -> Result<Option<Tensor>, ModelError> {
            w.maybe(name, shape)?.map(|t| t.to_dtype(dtype).map_err(ModelError::from)).transpose()
        };
        let rope = rope_tables(&mut cfg, &w, max_pos, dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let mut linears = BTreeMap::new();
            for t in Target::ALL {
                let (out, inp) = t.shape(&cfg);
                linears.insert(t, frozen(&format!("{p}.{}", t.module()), out, inp)?);
            }
            let mut lora = BTreeMap::new();
            for (&(_, t), pair) in adapter.pairs.range((i, Target::Q)..=(i, Target::Down)) {
                let var = |f: &Tensor| Var::from_tensor(&f.to_device(device)?.to_dtype(dtype)?);
                lora.insert(t, (var(&pair.a)?, var(&pair.b)?));
            }
            let norms = [get(&format!("{p}.input_layernorm.weight"), &[h])?, get(&format!("{p}.post_attention_layernorm.weight"), &[h])?];
            let qk_norms = [maybe(&format!("{p}.self_attn.q_norm.weight"), &[hd])?, maybe(&format!("{p}.self_attn.k_norm.weight"), &[hd])?];
            let mut layer = TrainLayer::new(&cfg, norms, qk_norms, linears, &rope);
            (layer.lora, layer.scale) = (lora, adapter.config.scale());
            layers.push(Arc::new(layer));
        }
        let embed = frozen("model.embed_tokens", cfg.vocab, h)?.w;
        let head = match w.has("lm_head.weight") && !cfg.tie_embeddings {
            true => Some(frozen("lm_head", cfg.vocab, h)?.w),
            false => None,
        };
        let norm = get("model.norm.weight", &[h])?;
        Ok(Self { cfg, embed, head, norm, layers, config: adapter.config.clone(), side: Default::default(), embed_tuned: None, checkpoint: true })
    }

    /// A model for tuning a converted one (`convert::tune`): dense f32 embeddings (and head,
    /// when untied), or `embed_tuned` whose group factors are tuned (the tied head reads them
    /// too), the final norm (a `Var`'s tensor when it is tuned), layers built by the caller.
    /// No adapters; layers not checkpointed.
    pub(crate) fn for_tuning(
        cfg: ModelConfig,
        embed: Tensor,
        embed_tuned: Option<super::tuned::Tuned>,
        head: Option<Tensor>,
        norm: Tensor,
        layers: Vec<TrainLayer>,
    ) -> Self {
        let config = AdapterConfig { rank: 0, alpha: 0.0, targets: Vec::new(), rslora: false, base: String::new() };
        let layers = layers.into_iter().map(Arc::new).collect();
        let (embed, head) = (FrozenWeight::Dense(embed), head.map(FrozenWeight::Dense));
        Self { cfg, embed, head, norm, layers, config, side: Default::default(), embed_tuned, checkpoint: false }
    }

    /// The tuned embeddings' factors, if they are tuned.
    pub(crate) fn embed_factors(&self) -> Option<&Var> {
        self.embed_tuned.as_ref().map(|t| &t.m)
    }

    pub(crate) fn layers(&self) -> &[Arc<TrainLayer>] {
        &self.layers
    }

    /// Backpropagates `loss`: the gradients of every layer's trainable tensors (adapters,
    /// tuned factors, `extra`) and of `outside` (tensors read outside the layers), by id.
    pub(crate) fn backward_all(&self, loss: &Tensor, outside: &[&Var]) -> Result<HashMap<candle_core::TensorId, Tensor>, ModelError> {
        self.side.lock().expect("side gradients").clear();
        let store = loss.backward()?;
        let mut grads: HashMap<_, _> = self.side.lock().expect("side gradients").drain().collect();
        let inside = self.layers.iter().flat_map(|l| l.trainables());
        for v in inside.chain(outside.iter().copied()) {
            if let Some(g) = store.get(v.as_tensor()) {
                grads.insert(v.as_tensor().id(), g.clone());
            }
        }
        Ok(grads)
    }

    /// (quantized, all): how many of the base's matrices stay quantized, of how many.
    pub fn quantized_matrices(&self) -> (usize, usize) {
        let mut all: Vec<&FrozenWeight> = self.layers.iter().flat_map(|l| l.linears.values().map(|f| &f.w)).collect();
        all.extend(self.head.iter().chain([&self.embed]));
        (all.iter().filter(|w| matches!(w, FrozenWeight::Quantized(_))).count(), all.len())
    }

    /// The trainable tensors with their PEFT names, in a fixed order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (t, (a, b)) in &l.lora {
                let name = format!("base_model.model.model.layers.{i}.{}", t.module());
                out.push((format!("{name}.lora_A.weight"), a.clone()));
                out.push((format!("{name}.lora_B.weight"), b.clone()));
            }
        }
        out
    }

    /// The adapter as trained so far (f32 on the CPU, detached from the graph).
    pub fn adapter(&self) -> Result<Adapter, ModelError> {
        let mut pairs = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (&t, (a, b)) in &l.lora {
                let f = |v: &Var| v.as_tensor().detach().to_dtype(DType::F32)?.to_device(&Device::Cpu);
                pairs.insert((i, t), LoraPair { a: f(a)?, b: f(b)? });
            }
        }
        Ok(Adapter { config: self.config.clone(), pairs })
    }

    /// tokens (batch, seq) -> final hidden states after the last norm, (batch, seq, hidden)
    pub fn hidden(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq) = tokens.dims2()?;
        let ids = tokens.flatten_all()?;
        let x = match &self.embed_tuned {
            Some(t) => t.rows(&ids)?,
            None => self.embed.rows(&ids, self.norm.dtype())?,
        };
        let x = x.reshape((bsz, seq, self.cfg.hidden))?;
        // A variable, so that the first checkpointed layer is part of the graph too (tuned
        // embeddings are in it already).
        let mut x = match self.embed_tuned {
            Some(_) => x,
            None => Var::from_tensor(&x)?.as_tensor().clone(),
        };
        for layer in &self.layers {
            x = match self.checkpoint {
                true => layer.checkpointed(&x, &self.side)?,
                false => layer.forward(&x)?,
            };
        }
        TrainLayer::rms_norm(&x, &self.norm, self.cfg.rms_eps)
    }

    /// tokens (batch, seq) -> logits (batch, seq, vocab)
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq) = tokens.dims2()?;
        let h = self.hidden(tokens)?.reshape((bsz * seq, self.cfg.hidden))?;
        let logits = match (&self.head, &self.embed_tuned) {
            (None, Some(t)) => t.forward(&h)?,
            (head, _) => frozen_matmul(&h, head.as_ref().unwrap_or(&self.embed))?,
        };
        Ok(logits.reshape((bsz, seq, self.cfg.vocab))?)
    }

    /// The mean cross-entropy of the batch's targets (the head runs on scored rows only).
    pub fn loss(&self, batch: &Batch) -> Result<Tensor, ModelError> {
        let (bsz, seq) = batch.tokens.dims2()?;
        let h = self.hidden(&batch.tokens)?.reshape((bsz * seq, self.cfg.hidden))?;
        let rows = h.index_select(&batch.positions, 0)?;
        head_loss(&rows, self.head.as_ref().unwrap_or(&self.embed), batch.targets.to_vec1()?)
    }

    /// Backpropagates `loss`: the gradient of every adapter tensor, by PEFT name.
    pub fn backward(&self, loss: &Tensor) -> Result<HashMap<String, Tensor>, ModelError> {
        self.side.lock().expect("side gradients").clear();
        let _ = loss.backward()?;
        let mut side = self.side.lock().expect("side gradients");
        Ok(self.vars().into_iter().filter_map(|(name, v)| side.remove(&v.as_tensor().id()).map(|g| (name, g))).collect())
    }
}
