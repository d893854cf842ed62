//! Softmax over rows of a plain f32 buffer with the vectorized exp of `activation`: the
//! training pass's attention (batch · heads · seq² values per layer) and vocabulary-wide loss
//! spent a quarter of their time in libm's exp through candle's elementwise op.

use crate::activation::exp;

/// Softmax of each row of `x` (rows of `cols` values), in place. With `causal`, row r of
/// each block of `cols` consecutive rows (a square attention matrix) keeps columns 0..=r and
/// gets zeros after.
pub fn softmax_rows(x: &mut [f32], cols: usize, causal: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { softmax_avx512(x, cols, causal) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { softmax_avx2(x, cols, causal) };
        }
    }
    softmax_body(x, cols, causal)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(x: &mut [f32], cols: usize, causal: bool) {
    softmax_body(x, cols, causal)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32], cols: usize, causal: bool) {
    softmax_body(x, cols, causal)
}

#[inline(always)]
fn softmax_body(x: &mut [f32], cols: usize, causal: bool) {
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        let keep = if causal { r % cols + 1 } else { cols };
        let (live, masked) = row.split_at_mut(keep);
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for v in live.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|v| *v *= inv);
        masked.iter_mut().for_each(|v| *v = 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_textbook_softmax() {
        let cols = 5;
        let x: Vec<f32> = (0..cols * cols).map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0).collect();
        for causal in [false, true] {
            let mut ours = x.clone();
            softmax_rows(&mut ours, cols, causal);
            for (r, row) in x.chunks(cols).enumerate() {
                let keep = if causal { r + 1 } else { cols };
                let max = row[..keep].iter().cloned().fold(f32::MIN, f32::max);
                let sum: f64 = row[..keep].iter().map(|&v| ((v - max) as f64).exp()).sum();
                for (c, &v) in row.iter().enumerate() {
                    let want = if c < keep { ((v - max) as f64).exp() / sum } else { 0.0 };
                    assert!((ours[r * cols + c] as f64 - want).abs() < 1e-6, "causal {causal} row {r} col {c}");
                }
            }
        }
    }
}
