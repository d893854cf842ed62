//! The training forward's heavy ops as candle custom ops with their own backward: candle's
//! autograd would keep every intermediate of the composed ops (softmax alone keeps four
//! batch·heads·seq² tensors per layer; the loss four batch·seq·vocab ones), and compute
//! gradients for the frozen base weights nobody needs. These keep only their inputs and
//! recompute the rest in the backward pass. Each op's forward is candle code on its input
//! (`TensorOp1`), so the same code runs on the CPU and on a CUDA device. On the CPU, f32
//! uses squish's vectorized softmax; f64 (for gradient checks) and CUDA candle's. The base
//! matrices' products are `FrozenWeight`'s.

use super::frozen::FrozenWeight;
use crate::ModelError;
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D};

fn tensor_of(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
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

fn storage_of(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        _ => CpuStorage::F32(flat.to_vec1()?),
    };
    Ok((storage, t.shape().clone()))
}

/// A custom op's CUDA input as a tensor of its own (a copy on the device: candle lends the
/// storage only by reference).
fn cuda_tensor_of(storage: &CudaStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("custom op: input not contiguous".into()))?;
    let whole = Tensor::from_storage(Storage::Cuda(storage.try_clone(layout)?), end, BackpropOp::none(), false);
    whole.narrow(0, start, end - start)?.reshape(layout.shape())
}

/// A tensor on a CUDA device as a custom op's result (a copy of its values from offset 0).
fn cuda_storage_of(t: &Tensor) -> candle_core::Result<(CudaStorage, Shape)> {
    let t = match t.is_contiguous() && t.layout().start_offset() == 0 {
        true => t.clone(),
        false => t.affine(1.0, 0.0)?, // a fresh contiguous buffer
    };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => Ok((s.try_clone(layout)?, t.shape().clone())),
        _ => candle_core::bail!("custom op: a CUDA input gave a result on another device"),
    }
}

/// A one-input op whose forward is candle code on the detached input, so it runs wherever
/// candle does; `backward` gets the input and the result's gradient.
pub(super) trait TensorOp1: Send + Sync + 'static {
    const NAME: &'static str;
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    fn backward(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>>;
}

/// `op` applied to `x` (made contiguous) as a node of candle's graph.
pub(super) fn apply<T: TensorOp1>(x: &Tensor, op: T) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Op1(op))
}

struct Op1<T>(T);

impl<T: TensorOp1> CustomOp1 for Op1<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        storage_of(&self.0.forward(&tensor_of(storage, layout)?)?)
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        cuda_storage_of(&self.0.forward(&cuda_tensor_of(storage, layout)?)?)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.0.backward(&x.detach(), &grad.detach())
    }
}

/// The (cols, cols) additive causal mask: 0 on and below the diagonal, -1e30 above.
fn causal_mask(cols: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..cols * cols).map(|ij| if ij % cols > ij / cols { -1e30 } else { 0.0 }).collect();
    Tensor::from_vec(mask, (cols, cols), device)?.to_dtype(dtype)
}

/// Softmax over the last dimension; `causal` treats it as square attention (see
/// `squish_backend::softmax_rows`).
fn softmax(t: &Tensor, causal: bool) -> candle_core::Result<Tensor> {
    let cols = t.dim(D::Minus1)?;
    if t.dtype() == DType::F32 && t.device().is_cpu() {
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        squish_backend::softmax_rows(&mut v, cols, causal);
        return Tensor::from_vec(v, t.shape(), t.device());
    }
    let t = match causal {
        true => t.broadcast_add(&causal_mask(cols, t.dtype(), t.device())?)?,
        false => t.contiguous()?,
    };
    candle_nn::ops::softmax_last_dim(&t)
}

/// x (n, in) · Wᵀ for a frozen W (out, in): the backward gives x's gradient, dY · W, only.
pub(super) fn frozen_matmul(x: &Tensor, w: &FrozenWeight) -> Result<Tensor, ModelError> {
    Ok(apply(x, FrozenMatmul { w: w.clone() })?)
}

struct FrozenMatmul {
    w: FrozenWeight,
}

impl TensorOp1 for FrozenMatmul {
    const NAME: &'static str = "frozen-matmul";

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.w.forward(x)
    }

    fn backward(&self, _x: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.w.input_grad(grad)?))
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

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        self.probs(q, k)?.matmul(v)
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        storage_of(&self.forward(&tensor_of(s1, l1)?, &tensor_of(s2, l2)?, &tensor_of(s3, l3)?)?)
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, s3: &CudaStorage, l3: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        cuda_storage_of(&self.forward(&cuda_tensor_of(s1, l1)?, &cuda_tensor_of(s2, l2)?, &cuda_tensor_of(s3, l3)?)?)
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
    Ok(apply(h, HeadLoss { w: w.clone(), targets })?)
}

struct HeadLoss {
    w: FrozenWeight,
    targets: Vec<u32>,
}

impl HeadLoss {
    /// (first row, rows) of each chunk of n: 128 rows (25 MB of logits on SmolLM2) on the
    /// CPU, where they stay in cache longer; 1024 on a GPU, which wants fewer, larger launches.
    fn chunks(n: usize, device: &Device) -> impl Iterator<Item = (usize, usize)> {
        let size = if device.is_cpu() { 128 } else { 1024 };
        (0..n).step_by(size).map(move |start| (start, size.min(n - start)))
    }

    /// The chunk's logits and its targets as a (len, 1) index tensor.
    fn logits(&self, h: &Tensor, (start, len): (usize, usize)) -> candle_core::Result<(Tensor, Tensor)> {
        let idx = Tensor::from_slice(&self.targets[start..start + len], (len, 1), h.device())?;
        Ok((self.w.forward(&h.narrow(0, start, len)?)?, idx))
    }
}

impl TensorOp1 for HeadLoss {
    const NAME: &'static str = "head-cross-entropy";

    /// −Σ log p[target] / n through `softmax` (the backward's, squish's own on the CPU), as a
    /// scalar in h's dtype.
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let n = h.dim(0)?;
        let mut total = Tensor::zeros((), h.dtype(), h.device())?;
        for chunk in Self::chunks(n, h.device()) {
            let (logits, idx) = self.logits(h, chunk)?;
            let picked = softmax(&logits, false)?.gather(&idx, 1)?.clamp(1e-30, 1.0)?;
            total = (total - picked.log()?.sum_all()?)?;
        }
        total / n.max(1) as f64
    }

    fn backward(&self, h: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = h.dim(0)?;
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()? / n.max(1) as f64;
        let mut parts = Vec::new();
        for chunk in Self::chunks(n, h.device()) {
            let (logits, idx) = self.logits(h, chunk)?;
            let p = softmax(&logits, false)?;
            // d loss / d logits = softmax − one-hot(target), per row.
            let minus_one = Tensor::ones((chunk.1, 1), p.dtype(), p.device())?.neg()?;
            parts.push((self.w.input_grad(&p.scatter_add(&idx, &minus_one, 1)?)? * g)?);
        }
        match parts.is_empty() {
            true => Ok(Some(h.zeros_like()?)),
            false => Ok(Some(Tensor::cat(&parts, 0)?)),
        }
    }
}
