//! SwiGLU's gate: silu(gate) * up, fused, with a vectorized exp on the CPU. The libm exp per
//! element was 7% of a prefill; this one is a range-reduced degree-6 polynomial (relative
//! error about 2e-7) that the compiler turns into AVX2/AVX-512 code.

use crate::Result;
use candle_core::{Device, Tensor};

/// silu(gate) * up, elementwise; both (..., features), same shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !matches!(gate.device(), Device::Cpu) {
        if let Some(out) = crate::cuda::fused::silu_mul(gate, up)? {
            return Ok(out);
        }
        return Ok((gate.silu()? * up)?);
    }
    let shape = gate.shape().clone();
    let out = crate::with_f32(gate, |g| {
        crate::with_f32(up, |u| {
            let mut out = vec![0f32; g.len()];
            // A batched decode step's 8 x 1536 exponentials are worth a split in two; one
            // token's are not.
            let piece = if g.len() >= 8192 { g.len().div_ceil(128) * 64 } else { g.len().max(1) };
            let mut parts: Vec<_> = g.chunks(piece).zip(u.chunks(piece)).zip(out.chunks_mut(piece)).collect();
            squish_quant::team::for_each_mut(&mut parts, |((g, u), o)| silu_mul_slices(g, u, o));
            out
        })
    })??;
    Ok(Tensor::from_vec(out, shape, gate.device())?)
}

pub fn silu_mul_slices(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { silu_mul_avx512(gate, up, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { silu_mul_avx2(gate, up, out) };
        }
    }
    silu_mul_body(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_body(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_body(gate, up, out)
}

#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// e^x for f32, branch-free so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // n as an integer from the low bits of `shifted` (a float-to-int cast, saturating in
    // Rust, kept the loops over this from vectorizing).
    let i = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO; // |r| <= ln2 / 2
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((i + 127) << 23) as u32) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range_that_matters() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.001_7;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn silu_mul_matches_the_definition_on_every_path() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 37.0).collect();
        let u: Vec<f32> = (0..1000).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut fast = vec![0f32; 1000];
        let mut plain = vec![0f32; 1000];
        silu_mul_slices(&g, &u, &mut fast);
        silu_mul_body(&g, &u, &mut plain);
        for i in 0..1000 {
            let want = g[i] as f64 / (1.0 + (-g[i] as f64).exp()) * u[i] as f64;
            assert!((fast[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{i}: {} vs {want}", fast[i]);
            assert!((plain[i] - fast[i]).abs() <= 1e-6 * (1.0 + fast[i].abs()));
        }
    }
}
