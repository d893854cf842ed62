//! The decoder again, differentiable, for LoRA training: the base weights frozen (dense
//! tensors, or a squish INT8/INT4/INT3 base kept quantized: `frozen`), the adapters as candle
//! `Var`s, and ops candle's autograd knows (matmul, softmax, exp, ...) or custom ones with
//! their own backward (`fused`), so gradients flow through the base into the adapters of
//! every earlier layer. Same maths as `Decoder` (tests compare their logits), none of its
//! inference machinery (KV cache, fused attention), which has no backward. Each layer runs checkpointed (`train_layer`); batches are
//! right-padded, and causal attention never lets a real token see a pad.

use super::adapter::{Adapter, AdapterConfig, LoraPair, Target};
use super::frozen::FrozenWeight;
use super::fused::{frozen_matmul, head_loss};
use super::train_layer::{Frozen, SideGrads, TrainLayer};
use crate::{ModelConfig, ModelError, RopeScaling, Source};
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
            Ok(Frozen { w: FrozenWeight::new(weight, dtype)?, b: b.map(|b| b.to_dtype(dtype)).transpose()? })
        };
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, ModelError> { Ok(w.get(name, shape)?.to_dtype(dtype)?) };
        let maybe = |name: &str, shape: &[usize]| -> Result<Option<Tensor>, ModelError> {
            w.maybe(name, shape)?.map(|t| t.to_dtype(dtype).map_err(ModelError::from)).transpose()
        };
        if cfg.rope_scaling == RopeScaling::None {
            if let Some(f) = w.maybe("rope_freqs.weight", &[hd / 2])? {
                cfg.rope_scaling = RopeScaling::FreqFactors(f.to_vec1()?);
            }
        }
        let inv: Vec<f32> = cfg.rope_inv_freq();
        let angles: Vec<f32> = (0..max_pos).flat_map(|p| (0..hd).map(move |j| (p, j))).map(|(p, j)| p as f32 * inv[j % (hd / 2)]).collect();
        let angles = Tensor::from_vec(angles, (max_pos, hd), device)?;
        let (cos, sin) = (angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?);
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
                lora.insert(t, (Var::from_tensor(&pair.a.to_dtype(dtype)?)?, Var::from_tensor(&pair.b.to_dtype(dtype)?)?));
            }
            layers.push(Arc::new(TrainLayer {
                attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                q_norm: maybe(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                k_norm: maybe(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                linears,
                lora,
                scale: adapter.config.scale(),
                heads: cfg.heads,
                kv_heads: cfg.kv_heads,
                head_dim: hd,
                eps: cfg.rms_eps,
                cos: cos.clone(),
                sin: sin.clone(),
            }));
        }
        let embed = frozen("model.embed_tokens", cfg.vocab, h)?.w;
        let head = match w.has("lm_head.weight") && !cfg.tie_embeddings {
            true => Some(frozen("lm_head", cfg.vocab, h)?.w),
            false => None,
        };
        let norm = get("model.norm.weight", &[h])?;
        Ok(Self { cfg, embed, head, norm, layers, config: adapter.config.clone(), side: Default::default() })
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

    /// The adapter as trained so far (f32, detached from the graph).
    pub fn adapter(&self) -> Result<Adapter, ModelError> {
        let mut pairs = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (&t, (a, b)) in &l.lora {
                let f = |v: &Var| v.as_tensor().detach().to_dtype(DType::F32);
                pairs.insert((i, t), LoraPair { a: f(a)?, b: f(b)? });
            }
        }
        Ok(Adapter { config: self.config.clone(), pairs })
    }

    /// tokens (batch, seq) -> final hidden states after the last norm, (batch, seq, hidden)
    pub fn hidden(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq) = tokens.dims2()?;
        let x = self.embed.rows(&tokens.flatten_all()?, self.norm.dtype())?.reshape((bsz, seq, self.cfg.hidden))?;
        // A variable, so that the first checkpointed layer is part of the graph too.
        let mut x = Var::from_tensor(&x)?.as_tensor().clone();
        for layer in &self.layers {
            x = layer.checkpointed(&x, &self.side)?;
        }
        TrainLayer::rms_norm(&x, &self.norm, self.cfg.rms_eps)
    }

    /// tokens (batch, seq) -> logits (batch, seq, vocab)
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq) = tokens.dims2()?;
        let h = self.hidden(tokens)?.reshape((bsz * seq, self.cfg.hidden))?;
        Ok(frozen_matmul(&h, self.head.as_ref().unwrap_or(&self.embed))?.reshape((bsz, seq, self.cfg.vocab))?)
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
