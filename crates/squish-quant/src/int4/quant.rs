//! The INT4 quantizer: per group, a clipping search for the (scale, min) that minimises the
//! importance-weighted squared error. Each candidate range gives codes, their weighted
//! least-squares (scale, min) is rounded to the f16 values that would be stored, and the
//! winner's codes are recomputed for exactly those values (see `fit_group`). The search is
//! written for any code width: INT3 (`crate::int3`) runs the same one with codes 0..=7.

use super::{Int4Owned, Nibbles};
use crate::grouped::{check_shape, dequant, pack_row, GroupedOwned, Layout};
use crate::act::ROUND_MAGIC;
use crate::fit::{weights_or_ones, Params, Search};
use half::f16;
use rayon::prelude::*;

/// Fractions of the range cut off at the bottom and at the top; every pair is a candidate
/// (25, from plain min/max to 14% off each end, symmetric and not).
const SHRINK: [f32; 5] = [0.0, 0.02, 0.05, 0.09, 0.14];
/// Least-squares refits from the winning candidate's codes.
const REFINE: usize = 2;

/// Quantizes `w` (n x k row-major, finite, |w| < 65504) to INT4 with group size `g`.
/// `importance[c]` (length k, finite, >= 0) weights input channel c in the error, e.g. the
/// mean squared calibration activation; `None` weighs all alike. Rows run in parallel on
/// the current rayon pool.
///
/// Panics if the shape breaks `Int4Matrix::new`'s rules or a length does not match.
pub fn quantize(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> Int4Owned {
    quantize_with_error(w, n, k, g, importance).0
}

/// `quantize`, also returning the weighted squared error Σ h_c (w - ŵ)² of what it stored
/// (summed in f64 over the whole matrix).
pub fn quantize_with_error(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
) -> (Int4Owned, f64) {
    quantize_grouped::<Nibbles>(w, n, k, g, importance, Search::Clip, None)
}

/// Plain min/max rounding (scale = range/15, min = min, f16-rounded, codes recomputed):
/// the baseline the search is measured against. Same arguments, panics and error as
/// `quantize_with_error`.
pub fn quantize_minmax(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
) -> (Int4Owned, f64) {
    quantize_grouped::<Nibbles>(w, n, k, g, importance, Search::MinMax, None)
}

/// The quantizer of any grouped layout (INT4, INT3): `quantize_with_error`'s contract, with
/// each row's parameters on the 8-bit grids `grids[row]` (ds, dm) when given, else f16.
pub(crate) fn quantize_grouped<L: Layout>(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
    search: Search,
    grids: Option<&[[f32; 2]]>,
) -> (GroupedOwned<L>, f64) {
    if let Err(e) = check_shape::<L>(k, g) {
        panic!("{} quantize: {e}", L::NAME);
    }
    assert_eq!(w.len(), n * k, "{} quantize: w has {} values, n*k = {}", L::NAME, w.len(), n * k);
    let h = weights_or_ones(importance, k);
    let ng = k / g;
    let rb = crate::grouped::row_bytes::<L>(k);
    let mut codes = vec![0u8; n * rb];
    let mut scales = vec![f16::ZERO; n * ng];
    let mut mins = vec![f16::ZERO; n * ng];
    let mut errs = vec![0.0f64; n];

    let rows = codes.par_chunks_mut(rb).zip(scales.par_chunks_mut(ng));
    let rows = rows.zip(mins.par_chunks_mut(ng)).zip(w.par_chunks(k)).zip(errs.par_iter_mut()).enumerate();
    rows.for_each_init(
        || vec![0u8; k],
        |q, (r, ((((codes, scales), mins), w), err))| {
            *err = 0.0;
            let params = grids.map_or(Params::F16, |gr| Params::Grid { ds: gr[r][0], dm: gr[r][1] });
            for gi in 0..ng {
                let span = gi * g..(gi + 1) * g;
                let fit = fit_group(&w[span.clone()], &h[span.clone()], search, L::QMAX, params, &mut q[span]);
                (scales[gi], mins[gi]) = (fit.scale, fit.min);
                *err += fit.err;
            }
            pack_row::<L>(q, codes);
        },
    );
    // Summed in row order so the result does not depend on how rayon split the rows.
    let err = errs.iter().sum();
    (GroupedOwned::from_fitting_parts(codes, scales, mins, n, k, g), err)
}

pub(crate) struct Fit {
    pub(crate) scale: f16,
    pub(crate) min: f16,
    pub(crate) err: f64,
}

/// Chooses one group's stored (scale, min) for codes 0..=`qmax`, writes its codes into `q`,
/// and returns the weighted error measured with exactly the stored values.
///
/// Each candidate costs one pass: its codes give the weighted least-squares (scale, min),
/// rounded to f16, whose error for those same codes follows from the pass's sums. That
/// error bounds the error once codes are recomputed for the rounded values (nearest codes
/// only lower it), so candidates are compared by it; the final pass recomputes the codes.
pub(crate) fn fit_group(w: &[f32], h: &[f32], search: Search, qmax: u8, params: Params, q: &mut [u8]) -> Fit {
    let qm = qmax as f32;
    let ones;
    let h = if h.iter().sum::<f32>() > 0.0 {
        h
    } else {
        // All-zero importance says nothing about this group: weigh it uniformly.
        ones = vec![1.0; w.len()];
        &ones
    };
    let (lo, hi) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let range = hi - lo;

    // Plain min/max rounding, measured exactly: the search only ever improves on it.
    let mut best = Candidate::rounded(w, h, range / qm, lo, qm, params);
    if search == Search::Clip && range > 0.0 {
        for &a in &SHRINK {
            for &b in &SHRINK {
                let c = Candidate::fitted(w, h, (range * (1.0 - a - b)) / qm, lo + a * range, qm, params);
                if c.err < best.err {
                    best = c;
                }
            }
        }
        // Refit from the winner's own codes.
        for _ in 0..REFINE {
            let c = Candidate::fitted(w, h, best.scale.to_f32(), best.min.to_f32(), qm, params);
            if c.err >= best.err {
                break;
            }
            best = c;
        }
    }
    let (s, m) = (best.scale.to_f32(), best.min.to_f32());
    let inv = inverse(s);
    let mut err = 0.0f64;
    for ((qv, &wv), &hv) in q.iter_mut().zip(w).zip(h) {
        *qv = code(wv, m, inv, qm) as u8;
        let e = (wv - dequant(s, m, *qv)) as f64;
        err += hv as f64 * e * e;
    }
    Fit { scale: best.scale, min: best.min, err }
}

/// A (scale, min) rounded to f16 and its error (exact, or a bound: see `fit_group`).
struct Candidate {
    scale: f16,
    min: f16,
    err: f64,
}

impl Candidate {
    /// (s, m) rounded, with the exact error of codes recomputed for the rounded values.
    fn rounded(w: &[f32], h: &[f32], s: f32, m: f32, qm: f32, params: Params) -> Self {
        let (scale, min) = params.round(s.max(0.0), m);
        let (sf, mf) = (scale.to_f32(), min.to_f32());
        let inv = inverse(sf);
        let mut acc = [0.0f32; 8];
        for (wc, hc) in w.chunks_exact(8).zip(h.chunks_exact(8)) {
            for l in 0..8 {
                let e = wc[l] - (sf * code(wc[l], mf, inv, qm) + mf);
                acc[l] += hc[l] * e * e;
            }
        }
        Self::new(scale, min, acc.iter().map(|&v| v as f64).sum())
    }

    /// The codes of (s, m), their weighted least-squares (scale, min) rounded to f16, and
    /// the error of those codes under the rounded values (from the pass's sums).
    fn fitted(w: &[f32], h: &[f32], s: f32, m: f32, qm: f32, params: Params) -> Self {
        let inv = inverse(s);
        let mut a = [[0.0f32; 8]; 6];
        for (wc, hc) in w.chunks_exact(8).zip(h.chunks_exact(8)) {
            for l in 0..8 {
                let (x, hv) = (wc[l], hc[l]);
                let q = code(x, m, inv, qm);
                let (hq, hx) = (hv * q, hv * x);
                a[0][l] += hv;
                a[1][l] += hq;
                a[2][l] += hq * q;
                a[3][l] += hx;
                a[4][l] += hq * x;
                a[5][l] += hx * x;
            }
        }
        let [s0, s1, s2, sw, sqw, sww] = a.map(|v| v.iter().map(|&x| x as f64).sum::<f64>());
        let det = s0 * s2 - s1 * s1;
        let (mut fs, mut fm) = (s as f64, m as f64);
        if det > 1e-9 * s0 * s2 {
            let (ls, lm) = ((s0 * sqw - s1 * sw) / det, (s2 * sw - s1 * sqw) / det);
            if ls > 0.0 && ls.is_finite() && lm.is_finite() {
                (fs, fm) = (ls, lm);
            }
        }
        let (scale, min) = params.round(fs as f32, fm as f32);
        let (s, m) = (scale.to_f32() as f64, min.to_f32() as f64);
        // Σh(w - s q - m)² expanded over the sums.
        let err = sww - 2.0 * s * sqw - 2.0 * m * sw + s * s * s2 + 2.0 * s * m * s1 + m * m * s0;
        Self::new(scale, min, err.max(0.0))
    }

    fn new(scale: f16, min: f16, err: f64) -> Self {
        // A NaN error (overflowing f16) must never win.
        Self { scale, min, err: if err.is_nan() { f64::INFINITY } else { err } }
    }
}

/// 1/s, or 0 for a zero scale (every code then rounds to 0: w ≈ min).
#[inline(always)]
pub(crate) fn inverse(s: f32) -> f32 {
    if s > 0.0 {
        1.0 / s
    } else {
        0.0
    }
}

/// The nearest code (0..=`qm`, as f32) of `w` for (min `m`, 1/scale `inv`). All f32 (ties
/// round to even by the magic-number trick, the selects become min/max), so the passes
/// vectorize; an f32 -> int cast here would not.
#[inline(always)]
pub(crate) fn code(w: f32, m: f32, inv: f32, qm: f32) -> f32 {
    let x = ((w - m) * inv + ROUND_MAGIC) - ROUND_MAGIC;
    let x = if x < 0.0 { 0.0 } else { x };
    if x > qm {
        qm
    } else {
        x
    }
}
