//! Softmax over rows of a plain f32 buffer with the vectorized exp of `activation`: the
//! training pass's attention (batch · heads · seq² values per layer) and vocabulary-wide loss
//! spent a quarter of their time in libm's exp through candle's elementwise op.

use crate::activation::exp;

/// Softmax of each row of `x` (rows of `cols` values), in place. With `causal`, row r of
/// each block of `cols` consecutive rows (a square attention matrix) keeps columns 0..=r and
/// gets zeros after.
pub fn softmax_rows(x: &mut [f32], cols: usize, causal: bool) {
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        softmax_row(row, if causal { r % cols + 1 } else { cols }, 1.0);
    }
}

/// Softmax of `row[..keep] · scale` in place, zeros after it (masked positions).
pub(crate) fn softmax_row(row: &mut [f32], keep: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { softmax_row_avx512(row, keep, scale) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { softmax_row_avx2(row, keep, scale) };
        }
    }
    softmax_row_body(row, keep, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(row: &mut [f32], keep: usize, scale: f32) {
    softmax_row_body(row, keep, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32], keep: usize, scale: f32) {
    softmax_row_body(row, keep, scale)
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32], keep: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(keep);
    let max = lanes(live, f32::NEG_INFINITY, |m, x| if x > m { x } else { m }) * scale;
    for x in live.iter_mut() {
        *x = exp(*x * scale - max);
    }
    let inv = 1.0 / lanes(live, 0.0, |a, x| a + x);
    live.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
}

/// A reduction in 16 independent lanes (then across them), so it vectorizes: a single
/// running float accumulator cannot be reordered by the compiler.
#[inline(always)]
fn lanes(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for c in chunks {
        for l in 0..16 {
            acc[l] = f(acc[l], c[l]);
        }
    }
    acc.iter().fold(rest, |a, &x| f(a, x))
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
