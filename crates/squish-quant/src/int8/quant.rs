//! The INT8 quantizer: per group, a search over scales a little below absmax/127 (clipping
//! the largest weights), each refined by weighted least squares and judged after rounding
//! to the stored f16 scale (codes recomputed for it).

use super::{check_shape, dequant, Int8Owned};
use crate::act::ROUND_MAGIC;
use crate::fit::{weights_or_ones, Search};
use half::f16;
use rayon::prelude::*;

/// Fractions of absmax/127 tried as the starting scale.
const FACTORS: [f32; 9] = [1.0, 0.985, 0.97, 0.95, 0.93, 0.9, 0.87, 0.83, 0.78];

/// Quantizes `w` (n x k row-major, finite, |w| < 65504·127) to INT8 with group size `g`.
/// `importance[c]` (length k, finite, >= 0) weights input channel c in the error; `None`
/// weighs all alike. Rows run in parallel on the current rayon pool.
///
/// Panics if the shape breaks `Int8Matrix::new`'s rules or a length does not match.
pub fn quantize(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> Int8Owned {
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
) -> (Int8Owned, f64) {
    quantize_impl(w, n, k, g, importance, Search::Clip)
}

/// Plain absmax/127 scales (f16-rounded, codes recomputed): the baseline the search is
/// measured against. Same arguments, panics and error as `quantize_with_error`.
pub fn quantize_absmax(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
) -> (Int8Owned, f64) {
    quantize_impl(w, n, k, g, importance, Search::MinMax)
}

fn quantize_impl(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
    search: Search,
) -> (Int8Owned, f64) {
    if let Err(e) = check_shape(k, g) {
        panic!("int8 quantize: {e}");
    }
    assert_eq!(w.len(), n * k, "int8 quantize: w has {} values, n*k = {}", w.len(), n * k);
    let h = weights_or_ones(importance, k);
    let ng = k / g;
    let mut codes = vec![0i8; n * k];
    let mut scales = vec![f16::ZERO; n * ng];
    let mut errs = vec![0.0f64; n];
    let rows = codes.par_chunks_mut(k).zip(scales.par_chunks_mut(ng));
    rows.zip(w.par_chunks(k)).zip(errs.par_iter_mut()).for_each(|(((codes, scales), w), err)| {
        *err = 0.0;
        let groups = w.chunks_exact(g).zip(h.chunks_exact(g)).zip(codes.chunks_exact_mut(g));
        for (((w, h), q), scale) in groups.zip(scales.iter_mut()) {
            let (s, e) = fit_group(w, h, search, q);
            *scale = s;
            *err += e;
        }
    });
    // Summed in row order so the result does not depend on how rayon split the rows.
    let err = errs.iter().sum();
    (Int8Owned { codes, scales, n, k, g }, err)
}

/// Chooses one group's stored scale, writes its codes into `q`, and returns the scale with
/// the weighted error measured with exactly the stored values.
fn fit_group(w: &[f32], h: &[f32], search: Search, q: &mut [i8]) -> (f16, f64) {
    let ones;
    let h = if h.iter().sum::<f32>() > 0.0 {
        h
    } else {
        // All-zero importance says nothing about this group: weigh it uniformly.
        ones = vec![1.0; w.len()];
        &ones
    };
    let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (mut best, mut best_err) = rounded(w, h, amax / 127.0);
    if search == Search::Clip && amax > 0.0 {
        for &f in &FACTORS {
            let s = refit(w, h, amax * f / 127.0).unwrap_or(amax * f / 127.0);
            let (scale, err) = rounded(w, h, s);
            if err < best_err {
                (best, best_err) = (scale, err);
            }
        }
    }
    let s = best.to_f32();
    let inv = inverse(s);
    let mut err = 0.0f64;
    for ((qv, &wv), &hv) in q.iter_mut().zip(w).zip(h) {
        *qv = code(wv, inv) as i8;
        let e = (wv - dequant(s, *qv)) as f64;
        err += hv as f64 * e * e;
    }
    (best, err)
}

/// `s` rounded to f16, with the f32 weighted error of codes recomputed for it.
fn rounded(w: &[f32], h: &[f32], s: f32) -> (f16, f32) {
    let scale = f16::from_f32(s);
    let sf = scale.to_f32();
    let inv = inverse(sf);
    let mut acc = [0.0f32; 8];
    for (wc, hc) in w.chunks_exact(8).zip(h.chunks_exact(8)) {
        for l in 0..8 {
            let e = wc[l] - sf * code(wc[l], inv);
            acc[l] += hc[l] * e * e;
        }
    }
    let err = acc.iter().sum::<f32>();
    // A NaN error (overflowing f16) must never win.
    (scale, if err.is_nan() { f32::INFINITY } else { err })
}

/// 1/s, or 0 for a zero scale (every code is then 0).
#[inline(always)]
fn inverse(s: f32) -> f32 {
    if s > 0.0 {
        1.0 / s
    } else {
        0.0
    }
}

/// The nearest code (-127..=127, as f32) of `w` for 1/scale `inv`. All f32 (ties round
/// to even by the magic-number trick, the selects become min/max), so the passes
/// vectorize; an f32 -> int cast here would not.
#[inline(always)]
fn code(w: f32, inv: f32) -> f32 {
    let x = (w * inv + ROUND_MAGIC) - ROUND_MAGIC;
    let x = if x < -127.0 { -127.0 } else { x };
    if x > 127.0 {
        127.0
    } else {
        x
    }
}

/// Codes for scale `s`, then the weighted least-squares scale for those codes; None when
/// every code is 0.
fn refit(w: &[f32], h: &[f32], s: f32) -> Option<f32> {
    let inv = inverse(s);
    let mut a = [[0.0f32; 8]; 2];
    for (wc, hc) in w.chunks_exact(8).zip(h.chunks_exact(8)) {
        for l in 0..8 {
            let q = code(wc[l], inv);
            let hq = hc[l] * q;
            a[0][l] += hq * q;
            a[1][l] += hq * wc[l];
        }
    }
    let [s2, sqw] = a.map(|v| v.iter().map(|&x| x as f64).sum::<f64>());
    let scale = sqw / s2;
    (s2 > 0.0 && scale > 0.0 && scale.is_finite()).then_some(scale as f32)
}
