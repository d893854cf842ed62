//! INT4 with GPTQ error feedback (Frantar et al., 2022): columns are quantized left to
//! right and each column's rounding error, scaled through the inverse Hessian of the layer's
//! calibration inputs (H = E[x xᵀ]), is pushed onto the columns not yet quantized, so the
//! layer's output error, not the weight error, is what gets minimised. Group scale and min
//! are chosen (by the same clipping search as `quantize`, weighted by diag H) when the
//! group's first column is reached, from the weights as the feedback has left them.
//! Written for any grouped layout: INT3 (`crate::int3`) runs the same feedback.

use super::quant::{code, fit_group, inverse};
use super::{Int4Owned, Nibbles};
use crate::grouped::{check_shape, dequant, pack_row, row_bytes, GroupedOwned, Layout};
use crate::fit::{Params, Search};
use half::f16;
use rayon::prelude::*;

/// Dampening added to H's diagonal, as a fraction of its mean: keeps the Cholesky factor
/// well conditioned when some input channels barely vary.
const DAMP: f64 = 0.01;

/// Rows quantized together: each column step streams one row of U for all of them, so U is
/// read n / BLOCK times instead of n times (for a 7B down_proj, 4096 reads of 0.5 GB made the
/// loop memory-bound), and the block's columns sit contiguously for the update.
const BLOCK: usize = 32;

/// What GPTQ needs of a layer input's Hessian, computed once and shared by every matrix that
/// reads that input (q, k and v; gate and up).
pub struct GptqFactor {
    k: usize,
    /// Upper-triangular U with H⁻¹ = UᵀU (H dampened), k x k row-major, in the f32 the
    /// error feedback computes in.
    u: Vec<f32>,
    diag: Vec<f32>,
}

impl GptqFactor {
    /// From `hessian` (k x k row-major, the mean of x xᵀ over calibration inputs), whose
    /// memory it works in: a 7B model's down_proj input is 11008² f64, about 1 GB.
    pub fn new(hessian: Vec<f64>, k: usize) -> Self {
        assert_eq!(hessian.len(), k * k, "int4 GptqFactor: hessian length");
        let diag = (0..k).map(|i| hessian[i * k + i].max(0.0) as f32).collect();
        let u = inverse_cholesky_upper(hessian, k).iter().map(|&x| x as f32).collect();
        Self { k, u, diag }
    }

    /// H's diagonal (the mean of x² per input channel).
    pub fn diagonal(&self) -> &[f32] {
        &self.diag
    }

    /// U, upper-triangular with H⁻¹ = UᵀU (H dampened), k x k row-major: for error feedback
    /// and corrections written elsewhere (INT2's pairs, sequential calibration).
    pub fn upper(&self) -> &[f32] {
        &self.u
    }
}

/// Quantizes `w` (n x k row-major) with groups of `g`, given the factor of its input's
/// Hessian. Blocks of rows run in parallel.
///
/// Panics on shapes `quantize` refuses or a factor of another width.
pub fn quantize_gptq(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor) -> Int4Owned {
    gptq_grouped::<Nibbles>(w, n, k, g, factor, None)
}

/// `quantize_gptq` for any grouped layout (INT4, INT3), with each row's parameters on the
/// 8-bit grids `grids[row]` (ds, dm) when given, else f16.
pub(crate) fn gptq_grouped<L: Layout>(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    factor: &GptqFactor,
    grids: Option<&[[f32; 2]]>,
) -> GroupedOwned<L> {
    let name = L::NAME;
    if let Err(e) = check_shape::<L>(k, g) {
        panic!("{name} quantize_gptq: {e}");
    }
    assert_eq!(w.len(), n * k, "{name} quantize_gptq: w length");
    assert_eq!(factor.k, k, "{name} quantize_gptq: factor width");
    let ng = k / g;
    let rb = row_bytes::<L>(k);
    let mut codes = vec![0u8; n * rb];
    let mut scales = vec![f16::ZERO; n * ng];
    let mut mins = vec![f16::ZERO; n * ng];
    let blocks = codes.par_chunks_mut(BLOCK * rb).zip(scales.par_chunks_mut(BLOCK * ng)).zip(mins.par_chunks_mut(BLOCK * ng));
    blocks.zip(w.par_chunks(BLOCK * k)).enumerate().for_each(|(b, (((codes, scales), mins), w))| {
        let rows = w.len() / k;
        let params: Vec<Params> = (b * BLOCK..b * BLOCK + rows)
            .map(|r| grids.map_or(Params::F16, |gr| Params::Grid { ds: gr[r][0], dm: gr[r][1] }))
            .collect();
        quantize_block::<L>(w, k, g, factor, &params, codes, scales, mins);
    });
    GroupedOwned::from_fitting_parts(codes, scales, mins, n, k, g)
}

/// Up to BLOCK rows, column by column: each row's group fit, code and rounding error, then the
/// error pushed onto the later columns of every row through U's row i. Per element the same
/// operations in the same order as one row at a time.
#[allow(clippy::too_many_arguments)]
fn quantize_block<L: Layout>(
    w: &[f32],
    k: usize,
    g: usize,
    f: &GptqFactor,
    params: &[Params],
    codes: &mut [u8],
    scales: &mut [f16],
    mins: &mut [f16],
) {
    let rows = w.len() / k;
    let ng = k / g;
    // cols[j * rows + r] = row r's column j: a column's update is one contiguous run.
    let mut cols = vec![0f32; k * rows];
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            cols[j * rows + r] = x;
        }
    }
    let mut q = vec![0u8; rows * k];
    let (mut s, mut m, mut inv) = (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows]);
    let mut err = vec![0f32; rows];
    let mut group = vec![0f32; g];
    for i in 0..k {
        if i % g == 0 {
            let gi = i / g;
            for r in 0..rows {
                group.iter_mut().enumerate().for_each(|(c, x)| *x = cols[(i + c) * rows + r]);
                let fit = fit_group(&group, &f.diag[i..i + g], Search::Clip, L::QMAX, params[r], &mut q[r * k + i..r * k + i + g]);
                (scales[r * ng + gi], mins[r * ng + gi]) = (fit.scale, fit.min);
                (s[r], m[r]) = (fit.scale.to_f32(), fit.min.to_f32());
                inv[r] = inverse(s[r]);
            }
        }
        let uii = f.u[i * k + i];
        for r in 0..rows {
            let x = cols[i * rows + r];
            let c = code(x, m[r], inv[r], L::QMAX as f32) as u8;
            q[r * k + i] = c;
            err[r] = (x - dequant(s[r], m[r], c)) / uii;
        }
        let ui = &f.u[i * k + i + 1..(i + 1) * k];
        for (col, &uij) in cols[(i + 1) * rows..].chunks_exact_mut(rows).zip(ui) {
            for (x, &e) in col.iter_mut().zip(&err) {
                *x -= e * uij;
            }
        }
    }
    for (qr, out) in q.chunks_exact(k).zip(codes.chunks_exact_mut(row_bytes::<L>(k))) {
        pack_row::<L>(qr, out);
    }
}

/// The upper U with H⁻¹ = UᵀU, H dampened; k x k row-major, in H's memory. With J the order
/// reversal, J H J = L Lᵀ gives H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is upper: one
/// Cholesky and one triangular inverse (about k³/2 flops, every inner loop a contiguous dot
/// product, both parallel) instead of inverting H and factoring the inverse. Peak memory:
/// H's buffer and one more k x k.
fn inverse_cholesky_upper(mut a: Vec<f64>, k: usize) -> Vec<f64> {
    let mean = (0..k).map(|i| a[i * k + i]).sum::<f64>() / k as f64;
    let damp = DAMP * mean.max(1e-12);
    a.reverse(); // J A J: element (i, j) moves to (k-1-i, k-1-j)
    for i in 0..k {
        let d = &mut a[i * k + i];
        // A channel that never fired carries no information: make it independent.
        if *d <= 0.0 {
            *d = 1.0;
        }
        *d += damp;
    }
    cholesky_lower_in_place(&mut a, k);
    let mt = inverse_lower_transposed(&a, k);
    // U[i][j] = M[k-1-i][k-1-j] = Mᵀ[k-1-j][k-1-i], written over L.
    for i in 0..k {
        for j in 0..k {
            a[i * k + j] = if j < i { 0.0 } else { mt[(k - 1 - j) * k + (k - 1 - i)] };
        }
    }
    a
}

/// Columns handled together by the factorizations: each pass over a matrix row then serves
/// this many columns from cache, where one column at a time streamed the whole triangle from
/// memory per column (1.8 TB of reads for an 11008-wide Hessian).
const PANEL: usize = 64;

/// Overwrites A's lower triangle with L, A = L Lᵀ (A symmetric positive definite); the upper
/// triangle is left as it was. Blocked, right-looking: factor a diagonal block, solve the
/// panel below it (rows in parallel), subtract the panel's outer product from the trailing
/// lower triangle (rows in parallel, from a contiguous copy of the panel).
fn cholesky_lower_in_place(a: &mut [f64], k: usize) {
    let mut j0 = 0;
    while j0 < k {
        let j1 = (j0 + PANEL).min(k);
        let w = j1 - j0;
        for j in j0..j1 {
            let rj = &a[j * k..(j + 1) * k];
            let d = (rj[j] - dot(&rj[j0..j], &rj[j0..j])).max(1e-12).sqrt();
            a[j * k + j] = d;
            for i in j + 1..j1 {
                let (top, bottom) = a.split_at_mut(i * k);
                let (rj, ri) = (&top[j * k..(j + 1) * k], &mut bottom[..k]);
                ri[j] = (ri[j] - dot(&ri[j0..j], &rj[j0..j])) / d;
            }
        }
        let diag: Vec<f64> = (j0..j1).flat_map(|i| a[i * k + j0..i * k + j1].to_vec()).collect();
        let (_, below) = a.split_at_mut(j1 * k);
        below.par_chunks_mut(k).for_each(|row| {
            for j in 0..w {
                row[j0 + j] = (row[j0 + j] - dot(&row[j0..j0 + j], &diag[j * w..j * w + j])) / diag[j * w + j];
            }
        });
        let panel: Vec<f64> = below.chunks_exact(k).flat_map(|row| row[j0..j1].to_vec()).collect();
        below.par_chunks_mut(k).enumerate().for_each(|(ii, row)| {
            let pi = &panel[ii * w..(ii + 1) * w];
            for (jj, pj) in panel.chunks_exact(w).take(ii + 1).enumerate() {
                row[j1 + jj] -= dot(pi, pj);
            }
        });
        j0 = j1;
    }
}

/// (L⁻¹)ᵀ for the lower-triangular L in `l`'s lower triangle, by forward substitution
/// (M[i][c] = (δ_ic - Σ_c≤j<i L[i][j] M[j][c]) / L[i][i]) for PANEL columns at once: each row
/// of L is read once per block of columns. Blocks run in parallel; column c of M is stored as
/// row c of the result.
fn inverse_lower_transposed(l: &[f64], k: usize) -> Vec<f64> {
    let mut mt = vec![0f64; k * k];
    mt.par_chunks_mut(PANEL * k).enumerate().for_each(|(block, out)| {
        let (c0, w) = (block * PANEL, out.len() / k);
        // cols[i * w + b] = M[i][c0 + b]; zero above the diagonal, so the sums may run from c0.
        let mut cols = vec![0f64; k * w];
        let mut acc = vec![0f64; w];
        for i in c0..k {
            acc.iter_mut().for_each(|x| *x = 0.0);
            for j in c0..i {
                let lij = l[i * k + j];
                for (x, &m) in acc.iter_mut().zip(&cols[j * w..(j + 1) * w]) {
                    *x += lij * m;
                }
            }
            for b in 0..w.min(i + 1 - c0) {
                let delta = if i == c0 + b { 1.0 } else { 0.0 };
                cols[i * w + b] = (delta - acc[b]) / l[i * k + i];
            }
        }
        for (b, row) in out.chunks_exact_mut(k).enumerate() {
            for (i, x) in row.iter_mut().enumerate().skip(c0 + b) {
                *x = cols[i * w + b];
            }
        }
    });
    mt
}

/// Σ a·b with eight running sums, which the compiler can keep in vector registers (one
/// running sum is a chain of dependent adds, several times slower on the k³ loops above).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn factor_inverts_the_dampened_hessian() {
        // Wider than two panels, with a ragged last one: every blocked path runs.
        let k = 2 * PANEL + 21;
        let mut seed = 1;
        let x: Vec<f64> = (0..k * 3 * k).map(|_| lcg(&mut seed) as f64).collect();
        let mut h = vec![0f64; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += row[i] * row[j];
                }
            }
        }
        let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        let mut hd = h.clone();
        (0..k).for_each(|i| hd[i * k + i] += DAMP * mean);
        let u = inverse_cholesky_upper(h, k);
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "upper");
            }
        }
        // UᵀU is the inverse of H as dampened.
        let mut utu = vec![0f64; k * k];
        for r in 0..k {
            for i in 0..k {
                for m in 0..k {
                    utu[i * k + m] += u[r * k + i] * u[r * k + m];
                }
            }
        }
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|m| utu[i * k + m] * hd[m * k + j]).sum();
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
        let gptq = quantize_gptq(&w, n, k, g, &GptqFactor::new(h.clone(), k));
        let (a, b) = (out_err(&gptq), out_err(&weighted));
        assert!(a < 0.95 * b, "gptq {a} vs diagonal-weighted rounding {b}");
    }
}
