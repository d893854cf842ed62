//! The scalar reference for the INT8 matmul: dequantized W times x, summed in f64.

use super::{dequantize_row, Int8Matrix};
use crate::matmul::check_io;

/// out[tok*N + r] = Σ_c dequant(W)[r, c] · x[tok*K + c], in f64: the ground truth.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_ref(w: &Int8Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    let (n, k) = (w.n(), w.k());
    check_io("int8 matmul_ref", n, k, x, t, out);
    let mut row = vec![0.0f32; k];
    for r in 0..n {
        dequantize_row(w, r, &mut row);
        for tok in 0..t {
            let xs = &x[tok * k..(tok + 1) * k];
            out[tok * n + r] = row.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    }
}
