//! One decoder layer of the training model, with its LoRA factors, run under gradient
//! checkpointing: the forward pass keeps only the layer's input; the backward pass runs the
//! layer again with autograd on and takes from that the input's gradient (returned to candle)
//! and the adapters' gradients (put in a side store, since candle sees the layer as one op).
//! Memory for activations drops from every layer's intermediates (about 250 MB per layer at
//! batch 4 x 512 tokens on SmolLM2) to one layer's.

use super::adapter::Target;
use super::frozen::FrozenWeight;
use super::fused::{apply, causal_attention, frozen_matmul, TensorOp1};
use super::tuned::Tuned;
use crate::{ModelConfig, ModelError};
use candle_core::{Tensor, TensorId, Var, D};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub(crate) struct Frozen {
    pub w: FrozenWeight, // (out, in)
    pub b: Option<Tensor>,
    /// Group scales being tuned (`convert::tune`): the product is then `Tuned`'s, not w's.
    pub tuned: Option<Tuned>,
}

pub(crate) struct TrainLayer {
    pub attn_norm: Tensor,
    pub mlp_norm: Tensor,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub linears: BTreeMap<Target, Frozen>,
    /// This layer's adapters: (A, B) per target.
    pub lora: BTreeMap<Target, (Var, Var)>,
    /// Other trainable tensors the layer reads (norm weights being tuned).
    pub extra: Vec<Var>,
    pub scale: f64,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    /// (max_pos, head_dim): each frequency twice, as rotate-half pairs them.
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Gradients of adapter tensors found while re-running layers in the backward pass.
pub(super) type SideGrads = Arc<Mutex<HashMap<TensorId, Tensor>>>;

impl TrainLayer {
    /// A layer of a model of `cfg` with its norms ([attention, MLP]; [q, k] where the model
    /// has them) and matrices, the RoPE tables (cos, sin), no adapters, nothing else trained.
    pub fn new(cfg: &ModelConfig, norms: [Tensor; 2], qk_norms: [Option<Tensor>; 2], linears: BTreeMap<Target, Frozen>, rope: &(Tensor, Tensor)) -> Self {
        let ([attn_norm, mlp_norm], [q_norm, k_norm]) = (norms, qk_norms);
        TrainLayer {
            attn_norm,
            mlp_norm,
            q_norm,
            k_norm,
            linears,
            lora: BTreeMap::new(),
            extra: Vec::new(),
            scale: 0.0,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_eps,
            cos: rope.0.clone(),
            sin: rope.1.clone(),
        }
    }

    /// x: (batch, seq, in) -> (batch, seq, out): W x + b + scale · B (A x).
    fn linear(&self, t: Target, x: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq, inp) = x.dims3()?;
        let f = &self.linears[&t];
        let x2 = x.reshape((bsz * seq, inp))?;
        let mut y = match &f.tuned {
            Some(tuned) => tuned.forward(&x2)?,
            None => frozen_matmul(&x2, &f.w)?,
        };
        if let Some(b) = &f.b {
            y = y.broadcast_add(b)?;
        }
        if let Some((a, b)) = self.lora.get(&t) {
            let low = x2.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
            y = (y + (low * self.scale)?)?;
        }
        Ok(y.reshape((bsz, seq, f.w.shape().0))?)
    }

    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, ModelError> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    }

    /// x: (batch, heads, seq, hd) rotated for positions 0..seq (rotate-half convention).
    fn rope(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (_, _, seq, hd) = x.dims4()?;
        let (cos, sin) = (self.cos.narrow(0, 0, seq)?, self.sin.narrow(0, 0, seq)?);
        let half = hd / 2;
        let rotated = Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }

    /// x: (batch, seq, hidden) -> attention output before o_proj, (batch, seq, heads * hd)
    fn attention(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (bsz, seq, _) = x.dims3()?;
        let (heads, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor, n: usize, norm: &Option<Tensor>| -> Result<Tensor, ModelError> {
            let mut y = y.reshape((bsz, seq, n, hd))?;
            if let Some(w) = norm {
                y = Self::rms_norm(&y, w, self.eps)?;
            }
            Ok(y.transpose(1, 2)?.contiguous()?) // (batch, n, seq, hd)
        };
        let q = self.rope(&split(self.linear(Target::Q, x)?, heads, &self.q_norm)?)?;
        let k = self.rope(&split(self.linear(Target::K, x)?, kv, &self.k_norm)?)?;
        let v = split(self.linear(Target::V, x)?, kv, &None)?;
        // Grouped-query attention: kv head j serves query heads j*g .. (j+1)*g.
        let repeat = |t: Tensor| -> Result<Tensor, ModelError> {
            Ok(t.unsqueeze(2)?.broadcast_as((bsz, kv, heads / kv, seq, hd))?.reshape((bsz, heads, seq, hd))?)
        };
        let out = causal_attention(&q, &repeat(k)?, &repeat(v)?)?; // (batch, heads, seq, hd)
        Ok(out.transpose(1, 2)?.reshape((bsz, seq, heads * hd))?)
    }

    /// The layer, differentiable: x (batch, seq, hidden) -> (batch, seq, hidden)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let a = self.attention(&Self::rms_norm(x, &self.attn_norm, self.eps)?)?;
        let x = (x + self.linear(Target::O, &a)?)?;
        let n = Self::rms_norm(&x, &self.mlp_norm, self.eps)?;
        let mid = (self.linear(Target::Gate, &n)?.silu()? * self.linear(Target::Up, &n)?)?;
        Ok((x + self.linear(Target::Down, &mid)?)?)
    }

    /// Every tensor of the layer that training moves: adapters, tuned group factors, `extra`.
    pub fn trainables(&self) -> impl Iterator<Item = &Var> {
        let lora = self.lora.values().flat_map(|(a, b)| [a, b]);
        lora.chain(self.linears.values().filter_map(|f| f.tuned.as_ref().map(|t| &t.m))).chain(&self.extra)
    }

    /// The layer as one checkpointed op on x (which must be tracked for its backward to run).
    pub fn checkpointed(self: &Arc<Self>, x: &Tensor, side: &SideGrads) -> Result<Tensor, ModelError> {
        Ok(apply(x, Checkpoint { layer: self.clone(), side: side.clone() })?)
    }
}

struct Checkpoint {
    layer: Arc<TrainLayer>,
    side: SideGrads,
}

impl TensorOp1 for Checkpoint {
    const NAME: &'static str = "checkpointed-layer";

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.layer.forward(x).map_err(candle_core::Error::wrap)?.detach())
    }

    fn backward(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xv = Var::from_tensor(x)?;
        let y = self.layer.forward(xv.as_tensor()).map_err(candle_core::Error::wrap)?;
        let grads = (y * grad)?.sum_all()?.backward()?;
        let mut side = self.side.lock().expect("side gradients");
        for v in self.layer.trainables() {
            if let Some(g) = grads.get(v.as_tensor()) {
                let sum = match side.remove(&v.as_tensor().id()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                side.insert(v.as_tensor().id(), sum);
            }
        }
        Ok(grads.get(xv.as_tensor()).cloned())
    }
}
