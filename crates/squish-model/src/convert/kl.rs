//! Tuning's loss as one op: the KL divergence of the student's next-token distribution from
//! the teacher's, straight from the student's logits, with its own backward (softmax − p).
//! Composed from candle's ops it took about twenty passes over the (tokens, vocab) logits
//! per step, each a fresh 100 MB tensor for a 512-token window of a 49k vocabulary; this
//! takes four forward (one writes) and two backward.

use crate::lora::cpu_f32s;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

/// The teacher's distribution over one window: probabilities (tokens, vocab) in f16 (3.2 GB
/// for SmolLM2 over 32k tokens) and Σ p log p, which the KL needs but no gradient does.
pub struct Teacher {
    probs: Arc<Vec<f16>>,
    neg_entropy: f64,
}

/// Rows at a time for the parallel loops: enough work per task to hide the hand-off.
const ROWS: usize = 8;

impl Teacher {
    /// From the teacher's logits (tokens x vocab, row-major).
    pub fn from_logits(logits: &[f32], vocab: usize) -> Self {
        let (probs, lse) = softmax_with_lse(logits, vocab);
        // Σ p log p with log p = z − lse.
        let neg_entropy = logits
            .par_chunks(vocab)
            .zip(probs.par_chunks(vocab))
            .zip(lse.par_iter())
            .map(|((z, p), &l)| z.iter().zip(p).map(|(&z, &p)| p as f64 * (z - l) as f64).sum::<f64>())
            .sum();
        let probs = probs.par_iter().map(|&p| f16::from_f32(p)).collect();
        Self { probs: Arc::new(probs), neg_entropy }
    }

    /// The mean over tokens of KL(teacher ‖ softmax(logits)), a scalar differentiable in
    /// `logits` (tokens, vocab).
    pub fn kl(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        logits.contiguous()?.apply_op1(Kl { probs: self.probs.clone(), neg_entropy: self.neg_entropy })
    }
}

struct Kl {
    probs: Arc<Vec<f16>>,
    neg_entropy: f64,
}

/// Softmax of each row, and each row's log Σ exp.
fn softmax_with_lse(z: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let mut q = z.to_vec();
    let lse = q
        .par_chunks_mut(cols * ROWS)
        .zip(z.par_chunks(cols * ROWS))
        .flat_map_iter(|(q, z)| {
            squish_backend::softmax_rows(q, cols, false);
            // The row's largest entry becomes 1 / Σ exp(z − max).
            z.chunks_exact(cols).zip(q.chunks_exact(cols)).map(|(z, q)| {
                let (i, max) = z.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                max - q[i].ln()
            }).collect::<Vec<_>>()
        })
        .collect();
    (q, lse)
}

impl CustomOp1 for Kl {
    fn name(&self) -> &'static str {
        "kl-from-teacher"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = cpu_f32s(storage, layout)?;
        let (t, vocab) = layout.shape().dims2()?;
        if z.len() != self.probs.len() {
            candle_core::bail!("kl: logits {t}x{vocab} against {} target values", self.probs.len());
        }
        let (_, lse) = softmax_with_lse(z, vocab);
        // KL = Σ p log p − Σ p (z − lse), summed over rows.
        let cross: f64 = z
            .par_chunks(vocab)
            .zip(self.probs.par_chunks(vocab))
            .zip(lse.par_iter())
            .map(|((z, p), &l)| z.iter().zip(p).map(|(&z, &p)| p.to_f32() as f64 * (z - l) as f64).sum::<f64>())
            .sum();
        let kl = ((self.neg_entropy - cross) / t.max(1) as f64).max(0.0);
        Ok((CpuStorage::F32(vec![kl as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (t, vocab) = logits.dims2()?;
        let g = grad.to_scalar::<f32>()? / t.max(1) as f32;
        let mut d = logits.flatten_all()?.to_vec1::<f32>()?;
        // d KL / d z = (softmax(z) − p) / t, per row.
        d.par_chunks_mut(vocab * ROWS).zip(self.probs.par_chunks(vocab * ROWS)).for_each(|(q, p)| {
            squish_backend::softmax_rows(q, vocab, false);
            q.iter_mut().zip(p).for_each(|(q, p)| *q = (*q - p.to_f32()) * g);
        });
        Ok(Some(Tensor::from_vec(d, (t, vocab), logits.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// Value and gradient match the KL composed from candle's ops (in f64, with the teacher's
    /// probabilities rounded to f16 as the op keeps them).
    #[test]
    fn matches_the_composed_kl() {
        let (t, vocab) = (5, 37);
        let wave = |seed: usize| -> Vec<f32> { (0..t * vocab).map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 6.0).collect() };
        let target = Teacher::from_logits(&wave(1), vocab);
        let z = Var::from_vec(wave(2), (t, vocab), &Device::Cpu).unwrap();
        let kl = target.kl(z.as_tensor()).unwrap();
        let grad = kl.backward().unwrap().get(z.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();

        let p: Vec<f64> = target.probs.iter().map(|p| p.to_f64()).collect();
        let p = Tensor::from_vec(p, (t, vocab), &Device::Cpu).unwrap();
        let z64 = Var::from_tensor(&z.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let log_q = candle_nn::ops::log_softmax(z64.as_tensor(), D::Minus1).unwrap();
        let log_p = p.log().unwrap();
        let want = ((&p * (log_p - &log_q).unwrap()).unwrap().sum_all().unwrap() / t as f64).unwrap();
        let want_grad = want.backward().unwrap().get(z64.as_tensor()).unwrap().clone();

        let (got, want) = (kl.to_scalar::<f32>().unwrap() as f64, want.to_scalar::<f64>().unwrap());
        assert!(want > 0.1 && (got - want).abs() < 5e-3 * want, "kl {got} vs {want}");
        let diff = (grad - want_grad).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-5, "gradient differs by {diff}");
    }
}
