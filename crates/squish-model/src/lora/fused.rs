//! The training forward's heavy ops as candle custom ops with their own backward: candle's
//! autograd would keep every intermediate of the composed ops (softmax alone keeps four
//! batch·heads·seq² tensors per layer; the loss four batch·seq·vocab ones), and compute
//! gradients for the frozen base weights nobody needs. These keep only their inputs and
//! recompute the rest in the backward pass. f32 uses squish's vectorized softmax; f64 (for
//! gradient checks) candle's. The base matrices' products are `FrozenWeight`'s.

use super::frozen::FrozenWeight;
use crate::ModelError;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor, D};

pub(super) fn tensor_of(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("custom op: input not contiguous".into()))?;
    match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu),
        _ => candle_core::bail!("custom op: f32 or f64 only"),
    }
}

/// A custom op's contiguous f32 input, borrowed.
pub(crate) fn cpu_f32s<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("custom op: contiguous f32 input only"),
    }
}

pub(super) fn storage_of(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        _ => CpuStorage::F32(flat.to_vec1()?),
    };
    Ok((storage, t.shape().clone()))
}

/// Softmax over the last dimension; `causal` treats it as square attention (see
/// `squish_backend::softmax_rows`).
fn softmax(t: &Tensor, causal: bool) -> candle_core::Result<Tensor> {
    let cols = t.dim(D::Minus1)?;
    if t.dtype() == DType::F32 {
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        squish_backend::softmax_rows(&mut v, cols, causal);
        return Tensor::from_vec(v, t.shape(), t.device());
    }
    let t = match causal {
        true => {
            let mask: Vec<f64> = (0..cols * cols).map(|ij| if ij % cols > ij / cols { -1e30 } else { 0.0 }).collect();
            t.broadcast_add(&Tensor::from_vec(mask, (cols, cols), t.device())?)?
        }
        false => t.clone(),
    };
    candle_nn::ops::softmax(&t, D::Minus1)
}

/// x (n, in) · Wᵀ for a frozen W (out, in): the backward gives x's gradient, dY · W, only.
pub(super) fn frozen_matmul(x: &Tensor, w: &FrozenWeight) -> Result<Tensor, ModelError> {
    Ok(x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?)
}

struct FrozenMatmul {
    w: FrozenWeight,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        storage_of(&self.w.forward(&tensor_of(storage, layout)?)?)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.w.input_grad(&grad_res.detach())?))
    }
}

/// Causal attention: q, k, v (batch, heads, seq, hd), keys already repeated per query head ->
/// (batch, heads, seq, hd). The probabilities are recomputed in the backward pass.
pub(super) fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor, ModelError> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, CausalAttention { scale })?)
}

struct CausalAttention {
    scale: f64,
}

impl CausalAttention {
    fn probs(&self, q: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        softmax(&(q.matmul(&k.t()?)? * self.scale)?, true)
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
        storage_of(&self.probs(&q, &k)?.matmul(&v)?)
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (q.detach(), k.detach(), v.detach(), g.detach());
        let p = self.probs(&q, &k)?; // (batch, heads, seq, seq)
        let dv = p.t()?.matmul(&g)?;
        let dp = g.matmul(&v.t()?)?;
        // Softmax's backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)).
        let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
        let dq = (ds.matmul(&k)? * self.scale)?;
        let dk = (ds.t()?.matmul(&q)? * self.scale)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The mean cross-entropy of rows h (n, hidden) through the head W (vocab, hidden) against
/// `targets`, without keeping the (n, vocab) logits: rows go through in chunks, and again in
/// the backward pass.
pub(super) fn head_loss(h: &Tensor, w: &FrozenWeight, targets: Vec<u32>) -> Result<Tensor, ModelError> {
    Ok(h.contiguous()?.apply_op1(HeadLoss { w: w.clone(), targets })?)
}

struct HeadLoss {
    w: FrozenWeight,
    targets: Vec<u32>,
}

const LOSS_CHUNK: usize = 128;

impl HeadLoss {
    /// Softmax probabilities of rows `start..start + len`.
    fn probs(&self, h: &Tensor, start: usize, len: usize) -> candle_core::Result<Tensor> {
        softmax(&self.w.forward(&h.narrow(0, start, len)?)?, false)
    }
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = tensor_of(storage, layout)?;
        let n = h.dim(0)?;
        let mut total = 0f64;
        for start in (0..n).step_by(LOSS_CHUNK) {
            let len = LOSS_CHUNK.min(n - start);
            let p = self.probs(&h, start, len)?.to_dtype(DType::F64)?;
            for (row, &t) in self.targets[start..start + len].iter().enumerate() {
                let pt = p.get(row)?.get(t as usize)?.to_scalar::<f64>()?;
                total -= pt.max(1e-30).ln();
            }
        }
        let loss = Tensor::new(total / n.max(1) as f64, &Device::Cpu)?.to_dtype(h.dtype())?;
        storage_of(&loss)
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let h = h.detach();
        let n = h.dim(0)?;
        let g = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()? / n.max(1) as f64;
        let mut parts = Vec::new();
        for start in (0..n).step_by(LOSS_CHUNK) {
            let len = LOSS_CHUNK.min(n - start);
            let p = self.probs(&h, start, len)?;
            // d loss / d logits = softmax − one-hot(target), per row.
            let idx = Tensor::from_vec(self.targets[start..start + len].to_vec(), (len, 1), &Device::Cpu)?;
            let ones = Tensor::ones((len, 1), p.dtype(), &Device::Cpu)?;
            let d = p.scatter_add(&idx, &ones.neg()?, 1)?;
            parts.push((self.w.input_grad(&d)? * g)?);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
}
