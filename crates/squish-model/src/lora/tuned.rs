//! A quantized matrix whose group scales training may move (`convert::tune`): W = (Q ⊙ m) R
//! with Q the matrix as stored (dequantized, in its rotated basis, (n, k/g, g)), m one
//! trainable factor per group (n, k/g, 1), starting at 1, and R the stored rotation, applied
//! to the inputs as inference applies it (x ↦ R x: signs, then a Walsh-Hadamard transform
//! per block, as a small matmul shared by every block).

use crate::ModelError;
use candle_core::{Device, Tensor, Var};
use squish_quant::rotate::Rotation;

pub(crate) struct Tuned {
    q: Tensor,
    pub m: Var,
    signs: Tensor,
    /// H_b / √b (symmetric), b x b.
    hadamard: Tensor,
    block: usize,
    n: usize,
    k: usize,
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
            q: Tensor::from_vec(w_rot, (n, k / g, g), device)?,
            m: Var::ones((n, k / g, 1), candle_core::DType::F32, device)?,
            signs: Tensor::from_slice(rotation.signs(), k, device)?,
            hadamard: Tensor::from_vec(h, (b, b), device)?,
            block: b,
            n,
            k,
        })
    }

    /// Rows `ids` of W (an embedding lookup), (ids, k), differentiable in m: the stored rows
    /// times their factors, rotated back (Rᵀ r = D H r / √b).
    pub fn rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let t = ids.dim(0)?;
        let stored = self.q.index_select(ids, 0)?.broadcast_mul(&self.m.as_tensor().index_select(ids, 0)?)?;
        stored.reshape((t * self.k / self.block, self.block))?.matmul(&self.hadamard)?.reshape((t, self.k))?.broadcast_mul(&self.signs)
    }

    /// x (t, k) -> x Wᵀ (t, n), differentiable in m.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        let rotated = x.broadcast_mul(&self.signs)?.reshape((t * self.k / self.block, self.block))?.matmul(&self.hadamard)?.reshape((t, self.k))?;
        let w = self.q.broadcast_mul(self.m.as_tensor())?.reshape((self.n, self.k))?;
        rotated.matmul(&w.t()?)
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
}
