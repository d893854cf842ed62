//! A quantized matrix whose group scales training may move (`convert::tune`): W = (Q ⊙ m) R
//! with Q the matrix as stored (dequantized, in its rotated basis, (n, k/g, g)), m one
//! trainable factor per group (n, k/g, 1), starting at 1, and R the stored rotation, applied
//! to the inputs as inference applies it (x ↦ R x: signs, then a Walsh-Hadamard transform
//! per block, as a small matmul shared by every block).

use super::fused::cpu_f32s;
use crate::ModelError;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var};
use rayon::prelude::*;
use squish_quant::rotate::Rotation;
use std::sync::Arc;

pub(crate) struct Tuned {
    /// Q's values, (n, k/g, g) row-major.
    q: Arc<Vec<f32>>,
    pub m: Var,
    signs: Tensor,
    /// H_b / √b (symmetric), b x b.
    hadamard: Tensor,
    block: usize,
    n: usize,
    k: usize,
    g: usize,
}

impl Tuned {
    /// `w_rot`: the stored matrix dequantized (n x k, rotated), groups of `g` inputs.
    pub fn new(w_rot: Vec<f32>, n: usize, k: usize, g: usize, rotation: &Rotation, device: &Device) -> Result<Self, ModelError> {
        let b = rotation.block();
        // The transform of the unit vectors: R's block with every sign +1 is H_b / √b.
        let plain = Rotation::from_sign_bits(&vec![0u8; b.div_ceil(8)], b, b).map_err(candle_core::Error::wrap)?;
        let mut h: Vec<f32> = (0..b * b).map(|i| if i / b == i % b { 1.0 } else { 0.0 }).collect();
        plain.apply(&mut h);
        Ok(Self {
            q: Arc::new(w_rot),
            m: Var::ones((n, k / g, 1), candle_core::DType::F32, device)?,
            signs: Tensor::from_slice(rotation.signs(), k, device)?,
            hadamard: Tensor::from_vec(h, (b, b), device)?,
            block: b,
            n,
            k,
            g,
        })
    }

    /// Rows `ids` of W (an embedding lookup), (ids, k), differentiable in m: the stored rows
    /// times their factors, rotated back (Rᵀ r = D H r / √b).
    pub fn rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let t = ids.dim(0)?;
        let rows: Vec<f32> = ids.to_vec1::<u32>()?.iter().flat_map(|&i| &self.q[i as usize * self.k..(i as usize + 1) * self.k]).copied().collect();
        let factors = self.m.as_tensor().index_select(ids, 0)?; // (t, k/g, 1)
        let stored = Tensor::from_vec(rows, (t, self.k / self.g, self.g), ids.device())?.broadcast_mul(&factors)?;
        stored.reshape((t * self.k / self.block, self.block))?.matmul(&self.hadamard)?.reshape((t, self.k))?.broadcast_mul(&self.signs)
    }

    /// x (t, k) -> x Wᵀ (t, n), differentiable in m.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        let rotated = x.broadcast_mul(&self.signs)?.reshape((t * self.k / self.block, self.block))?.matmul(&self.hadamard)?.reshape((t, self.k))?;
        let w = self.m.as_tensor().apply_op1(GroupScaled { q: self.q.clone(), g: self.g })?;
        rotated.matmul(&w.reshape((self.n, self.k))?.t()?)
    }
}

/// m (n, k/g, 1) -> Q ⊙ m (n, k/g, g), each group of Q times its factor; the backward sums
/// each group of dW ⊙ Q: one pass each, where candle's broadcast multiply and its backward
/// ran generic broadcast loops over every weight, twice, and a reduction.
struct GroupScaled {
    q: Arc<Vec<f32>>,
    g: usize,
}

/// Groups per parallel task.
const GROUPS: usize = 256;

impl CustomOp1 for GroupScaled {
    fn name(&self) -> &'static str {
        "group-scaled"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let m = cpu_f32s(storage, layout)?;
        let (n, groups, _) = layout.shape().dims3()?;
        let mut w = vec![0f32; self.q.len()];
        w.par_chunks_mut(self.g * GROUPS).zip(self.q.par_chunks(self.g * GROUPS)).zip(m.par_chunks(GROUPS)).for_each(|((w, q), m)| {
            for ((w, q), &m) in w.chunks_exact_mut(self.g).zip(q.chunks_exact(self.g)).zip(m) {
                w.iter_mut().zip(q).for_each(|(w, &q)| *w = q * m);
            }
        });
        Ok((CpuStorage::F32(w), Shape::from((n, groups, self.g))))
    }

    fn bwd(&self, m: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dw = grad.contiguous()?;
        let (storage, layout) = dw.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else { candle_core::bail!("group scale: CPU only") };
        let dw = cpu_f32s(storage, layout)?;
        let dm: Vec<f32> = dw
            .par_chunks(self.g * GROUPS)
            .zip(self.q.par_chunks(self.g * GROUPS))
            .flat_map_iter(|(dw, q)| dw.chunks_exact(self.g).zip(q.chunks_exact(self.g)).map(|(dw, q)| dw.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()).collect::<Vec<_>>())
            .collect();
        Tensor::from_vec(dm, m.shape(), m.device()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every factor at 1 the product is the stored matrix's on rotated inputs, as
    /// inference computes it (rotate x, multiply by the rotated rows), and a lookup gives the
    /// stored rows rotated back.
    #[test]
    fn untrained_product_is_the_rotated_one() {
        let (n, k, g, t) = (5, 192, 64, 3);
        let r = Rotation::random(k, 11);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..t * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0).collect();
        let tuned = Tuned::new(w.clone(), n, k, g, &r, &Device::Cpu).unwrap();
        let got = tuned.forward(&Tensor::from_vec(x.clone(), (t, k), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ids = Tensor::new(&[4u32, 0, 2], &Device::Cpu).unwrap();
        let rows = tuned.rows(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, id) in [4usize, 0, 2].into_iter().enumerate() {
            let mut e = w[id * k..(id + 1) * k].to_vec();
            r.apply_inverse(&mut e);
            assert!(rows[i * k..(i + 1) * k].iter().zip(&e).all(|(a, b)| (a - b).abs() < 1e-5), "row {id}");
        }
        let mut xr = x;
        r.apply(&mut xr);
        for i in 0..t {
            for j in 0..n {
                let want: f32 = (0..k).map(|c| xr[i * k + c] * w[j * k + c]).sum();
                assert!((got[i * n + j] - want).abs() < 1e-3, "{i},{j}: {} vs {want}", got[i * n + j]);
            }
        }
    }

    /// The group-scaled product and its factor gradient match candle's broadcast multiply.
    #[test]
    fn group_scaling_matches_broadcast_multiply() {
        let (n, groups, g) = (3, 4, 32);
        let q: Vec<f32> = (0..n * groups * g).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let m = Var::from_vec((0..n * groups).map(|i| 0.5 + i as f32 / 10.0).collect::<Vec<_>>(), (n, groups, 1), &Device::Cpu).unwrap();
        let up: Vec<f32> = (0..n * groups * g).map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0).collect();
        let up = Tensor::from_vec(up, (n, groups, g), &Device::Cpu).unwrap();
        let loss = |w: Tensor| (w * &up).unwrap().sum_all().unwrap();
        let fused = m.as_tensor().apply_op1(GroupScaled { q: Arc::new(q.clone()), g }).unwrap();
        let plain = Tensor::from_vec(q, (n, groups, g), &Device::Cpu).unwrap().broadcast_mul(m.as_tensor()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&fused, &plain), 0.0);
        let (gf, gp) = (loss(fused).backward().unwrap(), loss(plain).backward().unwrap());
        let (gf, gp) = (gf.get(m.as_tensor()).unwrap(), gp.get(m.as_tensor()).unwrap());
        assert!(diff(gf, gp) < 1e-4, "factor gradients differ by {}", diff(gf, gp));
    }
}
