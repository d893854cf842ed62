//! Scalar references for the grouped matmuls (INT4, and INT3 through the same functions):
//! the exact product (dequantized W times x, summed in f64) and the activation-quantized
//! product the kernels compute, spelled out plainly.

use crate::act::ActQ8;
use crate::grouped::{dequantize_row, GroupedMatrix, Layout};
use crate::isa::Isa;
use crate::matmul::check_io;

/// out[tok*N + r] = Σ_c dequant(W)[r, c] · x[tok*K + c], in f64: the ground truth.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_ref<L: Layout>(w: &GroupedMatrix<L>, x: &[f32], t: usize, out: &mut [f32]) {
    let (n, k) = (w.n(), w.k());
    check_io(&format!("{} matmul_ref", L::NAME), n, k, x, t, out);
    let mut row = vec![0.0f32; k];
    for r in 0..n {
        dequantize_row(w, r, &mut row);
        for tok in 0..t {
            let xs = &x[tok * k..(tok + 1) * k];
            out[tok * n + r] = row.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    }
}

/// What the kernels compute, in f64 from the scalar activation quantizer: the sum over
/// groups of scale · (Σ_blocks d_blk · (integer dot of codes and int8 activations) +
/// c · Σ(x - x̂)) plus min · Σx, where x̂ = d_blk · (int8 code) and c the middle of the
/// code range (7.5 for INT4, 3.5 for INT3); the residual term centres the codes (see
/// `act::CODE_CENTER`). The kernels differ from it only by f32 rounding.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_ref_q8<L: Layout>(w: &GroupedMatrix<L>, x: &[f32], t: usize, out: &mut [f32]) {
    let (n, k, g) = (w.n(), w.k(), w.g());
    check_io(&format!("{} matmul_ref_q8", L::NAME), n, k, x, t, out);
    let mut a = ActQ8::default();
    a.quantize_centred(Isa::Scalar, x, t, k, g, L::CENTER);
    let ng = k / g;
    for r in 0..n {
        for tok in 0..t {
            let mut y = 0.0f64;
            for grp in 0..ng {
                let s = w.scales()[r * ng + grp].to_f32() as f64;
                let m = w.mins()[r * ng + grp].to_f32() as f64;
                let mut dot = 0.0f64;
                for blk in grp * g / 32..(grp + 1) * g / 32 {
                    let isum: i32 = (blk * 32..blk * 32 + 32)
                        .map(|c| w.code(r, c) as i32 * a.q[tok * k + c] as i32)
                        .sum();
                    dot += isum as f64 * a.scale(tok, blk) as f64;
                }
                y += s * (dot + a.centred_residual(tok, grp) as f64) + m * a.group_sum(tok, grp) as f64;
            }
            out[tok * n + r] = y as f32;
        }
    }
}
