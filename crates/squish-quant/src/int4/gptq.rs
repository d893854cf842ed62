//! INT4 with GPTQ error feedback (Frantar et al., 2022): columns are quantized left to
//! right and each column's rounding error, scaled through the inverse Hessian of the layer's
//! calibration inputs (H = E[x xᵀ]), is pushed onto the columns not yet quantized, so the
//! layer's output error, not the weight error, is what gets minimised. Group scale and min
//! are chosen (by the same clipping search as `quantize`, weighted by diag H) when the
//! group's first column is reached, from the weights as the feedback has left them.

use super::quant::{code, fit_group, inverse};
use super::{check_shape, dequant, pack_row, Int4Owned};
use crate::fit::Search;
use half::f16;
use rayon::prelude::*;

/// Dampening added to H's diagonal, as a fraction of its mean: keeps the Cholesky factor
/// well conditioned when some input channels barely vary.
const DAMP: f64 = 0.01;

/// Quantizes `w` (n x k row-major) with groups of `g`, given `hessian` (k x k row-major,
/// the mean of x xᵀ over calibration inputs). Rows run in parallel.
///
/// Panics on shapes `quantize` refuses or a hessian of the wrong size.
pub fn quantize_gptq(w: &[f32], n: usize, k: usize, g: usize, hessian: &[f64]) -> Int4Owned {
    if let Err(e) = check_shape(k, g) {
        panic!("int4 quantize_gptq: {e}");
    }
    assert_eq!(w.len(), n * k, "int4 quantize_gptq: w length");
    assert_eq!(hessian.len(), k * k, "int4 quantize_gptq: hessian length");
    let u = inverse_cholesky_upper(hessian, k);
    let diag: Vec<f32> = (0..k).map(|i| hessian[i * k + i].max(0.0) as f32).collect();
    let ng = k / g;
    let mut codes = vec![0u8; n * k / 2];
    let mut scales = vec![f16::ZERO; n * ng];
    let mut mins = vec![f16::ZERO; n * ng];
    let rows = codes.par_chunks_mut(k / 2).zip(scales.par_chunks_mut(ng)).zip(mins.par_chunks_mut(ng));
    rows.zip(w.par_chunks(k)).for_each_init(
        || (vec![0f32; k], vec![0u8; k]),
        |(row, q), (((codes, scales), mins), w)| {
            row.copy_from_slice(w);
            let (mut s, mut m, mut inv) = (0f32, 0f32, 0f32);
            for i in 0..k {
                if i % g == 0 {
                    let gi = i / g;
                    let fit = fit_group(&row[i..i + g], &diag[i..i + g], Search::Clip, &mut q[i..i + g]);
                    (scales[gi], mins[gi]) = (fit.scale, fit.min);
                    (s, m) = (fit.scale.to_f32(), fit.min.to_f32());
                    inv = inverse(s);
                }
                q[i] = code(row[i], m, inv) as u8;
                let err = (row[i] - dequant(s, m, q[i])) / u[i * k + i] as f32;
                let ui = &u[i * k + i + 1..(i + 1) * k];
                for (x, &uij) in row[i + 1..].iter_mut().zip(ui) {
                    *x -= err * uij as f32;
                }
            }
            pack_row(q, codes);
        },
    );
    Int4Owned { codes, scales, mins, n, k, g }
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), H dampened; k x k row-major.
fn inverse_cholesky_upper(h: &[f64], k: usize) -> Vec<f64> {
    let mut a = h.to_vec();
    let mean = (0..k).map(|i| a[i * k + i]).sum::<f64>() / k as f64;
    let damp = DAMP * mean.max(1e-12);
    for i in 0..k {
        // A channel that never fired carries no information: make it independent.
        if a[i * k + i] <= 0.0 {
            a[i * k + i] = 1.0;
        }
        a[i * k + i] += damp;
    }
    let l = cholesky_lower(&a, k);
    let hinv = inverse_from_cholesky(&l, k);
    // U = Lᵀ of H⁻¹'s lower factor.
    let l2 = cholesky_lower(&hinv, k);
    let mut u = vec![0f64; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = l2[j * k + i];
        }
    }
    u
}

/// Lower-triangular L with A = L Lᵀ (A symmetric positive definite).
fn cholesky_lower(a: &[f64], k: usize) -> Vec<f64> {
    let mut l = vec![0f64; k * k];
    for j in 0..k {
        let d = a[j * k + j] - l[j * k..j * k + j].iter().map(|x| x * x).sum::<f64>();
        let d = d.max(1e-12).sqrt();
        l[j * k + j] = d;
        let (done, rest) = l.split_at_mut((j + 1) * k);
        let lj = &done[j * k..j * k + j];
        rest.par_chunks_mut(k).enumerate().for_each(|(off, li)| {
            let i = j + 1 + off;
            let dot: f64 = li[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            li[j] = (a[i * k + j] - dot) / d;
        });
    }
    l
}

/// A⁻¹ from A's lower Cholesky factor: solve L Lᵀ X = I column by column.
fn inverse_from_cholesky(l: &[f64], k: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..k)
        .into_par_iter()
        .map(|c| {
            let mut y = vec![0f64; k];
            for i in c..k {
                let s: f64 = (c..i).map(|j| l[i * k + j] * y[j]).sum();
                y[i] = (if i == c { 1.0 } else { 0.0 } - s) / l[i * k + i];
            }
            let mut x = vec![0f64; k];
            for i in (0..k).rev() {
                let s: f64 = (i + 1..k).map(|j| l[j * k + i] * x[j]).sum();
                x[i] = (y[i] - s) / l[i * k + i];
            }
            x
        })
        .collect();
    let mut inv = vec![0f64; k * k];
    for (c, col) in cols.iter().enumerate() {
        for (r, v) in col.iter().enumerate() {
            inv[r * k + c] = *v;
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn cholesky_inverse_is_an_inverse() {
        let k = 6;
        let mut seed = 1;
        let x: Vec<f64> = (0..k * 20).map(|_| lcg(&mut seed) as f64).collect();
        let mut h = vec![0f64; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += row[i] * row[j];
                }
            }
        }
        let inv = inverse_from_cholesky(&cholesky_lower(&h, k), k);
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|m| h[i * k + m] * inv[m * k + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{i},{j}: {v}");
            }
        }
    }

    /// On correlated inputs, GPTQ's output error is below plain rounding's.
    #[test]
    fn lowers_the_output_error_on_correlated_inputs() {
        let (n, k, g, t) = (16, 128, 64, 512);
        let mut seed = 7;
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        // Inputs with a shared component so channels correlate.
        let x: Vec<f32> = (0..t)
            .flat_map(|_| {
                let common = lcg(&mut seed) * 3.0;
                (0..k).map(|_| common + lcg(&mut seed)).collect::<Vec<_>>()
            })
            .collect();
        let mut h = vec![0f64; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += (row[i] * row[j]) as f64 / t as f64;
                }
            }
        }
        let out_err = |q: &Int4Owned| -> f64 {
            let deq = super::super::dequantize(&q.view());
            let mut e = 0.0;
            for xr in x.chunks(k) {
                for r in 0..n {
                    let exact: f32 = (0..k).map(|c| w[r * k + c] * xr[c]).sum();
                    let approx: f32 = (0..k).map(|c| deq[r * k + c] * xr[c]).sum();
                    e += ((exact - approx) as f64).powi(2);
                }
            }
            e
        };
        // The fair baseline: the same search, weighted by the same diagonal.
        let diag: Vec<f32> = (0..k).map(|i| h[i * k + i] as f32).collect();
        let weighted = super::super::quantize(&w, n, k, g, Some(&diag));
        let gptq = quantize_gptq(&w, n, k, g, &h);
        let (a, b) = (out_err(&gptq), out_err(&weighted));
        assert!(a < 0.95 * b, "gptq {a} vs diagonal-weighted rounding {b}");
    }
}
