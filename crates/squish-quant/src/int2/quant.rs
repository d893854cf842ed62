//! INT2's quantizer: learns a matrix's 16-entry codebook and chooses every group's scale
//! and every pair's entry.
//!
//! 1. Each group's weights are normalized by their RMS σ; a weighted k-means (Lloyd, from
//!    a 4 x 4 grid of a Gaussian's 4-level quantizer) over the normalized pairs, each
//!    coordinate's squared error weighed by its input channel's importance h (the
//!    diagonal of the calibration inputs' Hessian; data-free: all ones) times σ², learns
//!    the codebook's shape.
//! 2. Rounds: the codebook becomes integers in -64..=63 (its largest |value| at 63), each
//!    group's scale is searched on its row's 8-bit grid around σ / (that stretch) with
//!    every pair at its nearest entry (h-weighted); then each entry is refit to the pairs
//!    it holds (the h·s²-weighted least squares value). The round with the least weighted
//!    error is kept.
//! 3. With a GPTQ factor (`quantize_gptq`): the codebook and row grids from 1-2 (h = H's
//!    diagonal), then GPTQ's error feedback over column pairs: at a group's first column
//!    its scale is searched on the weights as the feedback has left them; each pair's entry
//!    minimises (d_a / U_aa)² + (d_b' / U_bb)², d_b' the odd column's error after the even
//!    column's feedback (exactly GPTQ's order, the two choices made jointly), and both
//!    columns' errors are pushed onto the later columns.

use super::{min_of, pack_row, scale_of, Int2Quantized, Pairs, OFFSET};
use crate::fit::weights_or_ones;
use crate::grouped::{check_shape, dequant};
use crate::int4::GptqFactor;
use half::f16;
use rayon::prelude::*;

const ENTRIES: usize = 16;
/// Lloyd iterations of the first codebook.
const KMEANS_ITERS: usize = 16;
/// Pairs the k-means sees at most (an even stride through the matrix past this).
const KMEANS_POINTS: usize = 1 << 19;
/// Rounds of scale search and codebook refit (`quantize`).
pub(crate) const ROUNDS: usize = 4;
/// A row's grid reaches this far past its largest ideal scale (the search goes up to it).
const HEADROOM: f32 = 1.3;
/// Scale candidates around a group's ideal, as factors.
const CANDIDATES: [f32; 9] = [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.18, 1.26];
/// A Gaussian's 4-level Lloyd-Max quantizer, the grid the k-means starts from.
const LLOYD4: [f32; 4] = [-1.510, -0.4528, 0.4528, 1.510];
/// Rows of GPTQ quantized together (see `int4::gptq`).
const BLOCK: usize = 32;

/// A codebook as f32 entries (first, second value).
type Book = [[f32; 2]; ENTRIES];

/// Quantizes `w` (n x k row-major) to INT2 with groups of `g`, each input channel's errors
/// weighted by `importance` (None: data-free, all alike).
///
/// Panics if k is not a positive multiple of 64, g a multiple of 32 dividing k, `w.len()
/// != n*k`, or `importance` has another length or a negative weight.
pub fn quantize(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> Int2Quantized {
    quantize_with_error(w, n, k, g, importance, ROUNDS).0
}

/// `quantize` with `rounds` rounds, also returning each round's weighted squared error
/// Σ h (w - ŵ)² (the kept result is the least).
pub fn quantize_with_error(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>, rounds: usize) -> (Int2Quantized, Vec<f64>) {
    let (q, errors, _) = fit(w, n, k, g, importance, rounds);
    (q, errors)
}

/// `quantize_with_error`, also returning the kept table's stretch α (table units per unit
/// of group RMS: a group's ideal scale is its RMS / α).
fn fit(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>, rounds: usize) -> (Int2Quantized, Vec<f64>, f32) {
    if let Err(e) = check_shape::<Pairs>(k, g) {
        panic!("int2 quantize: {e}");
    }
    assert_eq!(w.len(), n * k, "int2 quantize: w length");
    let h = weights_or_ones(importance, k);
    let sigma = group_rms(w, g);
    let mut book = kmeans(w, k, g, &h, &sigma, KMEANS_ITERS).0;
    let mut best: Option<(Int2Quantized, f64, f32)> = None;
    let mut errors = Vec::new();
    for _ in 0..rounds.max(1) {
        let (table, alpha) = integer_table(&book);
        let (q, err) = assign(w, n, k, g, &h, &sigma, &table, alpha);
        errors.push(err);
        book = refit(w, k, g, &h, &q, alpha, &book);
        if best.as_ref().is_none_or(|(_, e, _)| err < *e) {
            best = Some((q, err, alpha));
        }
    }
    let (q, _, alpha) = best.expect("one round at least");
    (q, errors, alpha)
}

/// INT2 with GPTQ error feedback over column pairs (see the module doc); the codebook and
/// row grids from `quantize`'s first two steps with H's diagonal as the importance.
///
/// Panics on shapes `quantize` refuses or a factor of another width.
pub fn quantize_gptq(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor) -> Int2Quantized {
    quantize_gptq_passes(w, n, k, g, factor, GPTQ_PASSES)
}

/// GPTQ passes: after each but the last, the codebook is refit to the values the feedback
/// actually quantized (each weighted by 1/U_ii², GPTQ's own error weight) and the matrix
/// is quantized again from the original weights.
pub const GPTQ_PASSES: usize = 2;

/// `quantize_gptq` with `passes` passes (at least one).
pub fn quantize_gptq_passes(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor, passes: usize) -> Int2Quantized {
    let u = factor.upper();
    assert_eq!(factor.diagonal().len(), k, "int2 quantize_gptq: factor width");
    let h = factor.diagonal();
    let (first, _, mut alpha) = fit(w, n, k, g, Some(h), ROUNDS);
    let sigma = group_rms(w, g);
    let ng = k / g;
    let mut table = first.table;
    let mut out = None;
    for pass in 0..passes.max(1) {
        let steps: Vec<f16> = sigma.chunks_exact(ng).map(|s| row_step(s, alpha)).collect();
        let (mut codes, mut s8) = (vec![0u8; n * k / 4], vec![0u8; n * ng]);
        let sums = codes
            .par_chunks_mut(BLOCK * k / 4)
            .zip(s8.par_chunks_mut(BLOCK * ng))
            .zip(w.par_chunks(BLOCK * k))
            .enumerate()
            .map(|(b, ((codes, s8), w))| {
                let rows = w.len() / k;
                let ds: Vec<f32> = steps[b * BLOCK..b * BLOCK + rows].iter().map(|d| d.to_f32()).collect();
                let sig = &sigma[b * BLOCK * ng..(b * BLOCK + rows) * ng];
                gptq_block(w, k, g, h, u, &table, alpha, &ds, sig, codes, s8)
            })
            .reduce(|| [[0f64; 4]; ENTRIES], add_sums);
        if pass + 1 < passes {
            let mut book = table_book(&table);
            for (e, s) in sums.iter().enumerate() {
                if s[1] > 0.0 {
                    book[e][0] = (s[0] / s[1]) as f32;
                }
                if s[3] > 0.0 {
                    book[e][1] = (s[2] / s[3]) as f32;
                }
            }
            // Back to centred units for `integer_table`.
            let centred: Book = core::array::from_fn(|e| [book[e][0] - OFFSET, book[e][1] - OFFSET]);
            let (t, stretch) = integer_table(&centred);
            (table, alpha) = (t, alpha * stretch);
        }
        out = Some(finish(codes, s8, steps, table, n, k, g));
    }
    out.expect("one pass at least")
}

fn add_sums(mut a: [[f64; 4]; ENTRIES], b: [[f64; 4]; ENTRIES]) -> [[f64; 4]; ENTRIES] {
    for (x, y) in a.iter_mut().zip(&b) {
        for i in 0..4 {
            x[i] += y[i];
        }
    }
    a
}

/// The per-group RMS of w (n x k), n x k/g.
fn group_rms(w: &[f32], g: usize) -> Vec<f32> {
    w.chunks_exact(g).map(|grp| (grp.iter().map(|x| x * x).sum::<f32>() / g as f32).sqrt()).collect()
}

/// Weighted k-means of the normalized pairs; also returns each iteration's objective.
pub(crate) fn kmeans(w: &[f32], k: usize, g: usize, h: &[f32], sigma: &[f32], iters: usize) -> (Book, Vec<f64>) {
    let pairs = w.len() / 2;
    let stride = pairs.div_ceil(KMEANS_POINTS).max(1);
    // (u_a, u_b, weight_a, weight_b) per sampled pair.
    let pts: Vec<[f32; 4]> = (0..pairs)
        .step_by(stride)
        .filter_map(|p| {
            let (i, c) = (2 * p, (2 * p) % k);
            let s = sigma[i / g];
            (s > 0.0).then(|| [w[i] / s, w[i + 1] / s, h[c] * s * s, h[c + 1] * s * s])
        })
        .collect();
    let mut book: Book = core::array::from_fn(|e| [LLOYD4[e / 4], LLOYD4[e % 4]]);
    let mut objective = Vec::new();
    for _ in 0..iters {
        let (sums, obj) = pts
            .par_chunks(4096)
            .map(|chunk| {
                let mut acc = [[0f64; 4]; ENTRIES];
                let mut obj = 0f64;
                for p in chunk {
                    let (e, err) = nearest(&book, p[0], p[1], p[2], p[3], 1.0, 0.0);
                    obj += err as f64;
                    acc[e][0] += (p[2] * p[0]) as f64;
                    acc[e][1] += p[2] as f64;
                    acc[e][2] += (p[3] * p[1]) as f64;
                    acc[e][3] += p[3] as f64;
                }
                (acc, obj)
            })
            .reduce(
                || ([[0f64; 4]; ENTRIES], 0.0),
                |(mut a, oa), (b, ob)| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        for i in 0..4 {
                            x[i] += y[i];
                        }
                    }
                    (a, oa + ob)
                },
            );
        objective.push(obj);
        for (e, s) in sums.iter().enumerate() {
            if s[1] > 0.0 {
                book[e][0] = (s[0] / s[1]) as f32;
            }
            if s[3] > 0.0 {
                book[e][1] = (s[2] / s[3]) as f32;
            }
        }
    }
    (book, objective)
}

/// `kmeans` on `w`'s group RMS (for the tests): the codebook and each iteration's objective.
#[cfg(test)]
pub(crate) fn kmeans_for_test(w: &[f32], k: usize, g: usize, h: &[f32], iters: usize) -> (Book, Vec<f64>) {
    kmeans(w, k, g, h, &group_rms(w, g), iters)
}

/// The entry nearest (xa, xb) under weights (ha, hb), entries at scale `s` and offset
/// `m` (v · s + m), and its weighted squared error.
#[inline(always)]
fn nearest(book: &Book, xa: f32, xb: f32, ha: f32, hb: f32, s: f32, m: f32) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (e, v) in book.iter().enumerate() {
        let (da, db) = (xa - (v[0] * s + m), xb - (v[1] * s + m));
        let err = ha * da * da + hb * db * db;
        if err < best.1 {
            best = (e, err);
        }
    }
    best
}

/// The codebook as integer values v in 0..=127 (entries · α + 64, α putting the largest
/// |entry| at 63), and α.
fn integer_table(book: &Book) -> ([u8; 32], f32) {
    let amax = book.iter().flatten().fold(0f32, |a, v| a.max(v.abs()));
    let alpha = if amax > 0.0 { 63.0 / amax } else { 1.0 };
    let mut table = [0u8; 32];
    for (e, v) in book.iter().enumerate() {
        table[e] = ((v[0] * alpha).round().clamp(-64.0, 63.0) + OFFSET) as u8;
        table[16 + e] = ((v[1] * alpha).round().clamp(-64.0, 63.0) + OFFSET) as u8;
    }
    (table, alpha)
}

/// The table's entries as f32 values v (the dequantization is scale · v + min).
fn table_book(table: &[u8; 32]) -> Book {
    core::array::from_fn(|e| [table[e] as f32, table[16 + e] as f32])
}

/// Group `x` (g weights of channels with importance `h`) at its best scale code among the
/// candidates around `ideal` on step `ds`: fills `pairs` (g/2 entries) and returns
/// (s8, weighted error).
fn fit_group(x: &[f32], h: &[f32], book: &Book, ideal: f32, ds: f32, pairs: &mut [u8]) -> (u8, f32) {
    let mut best = (0u8, f32::INFINITY);
    let mut last = u32::MAX;
    for f in CANDIDATES {
        let c = if ds > 0.0 { (ideal * f / ds).round().clamp(0.0, 255.0) as u32 } else { 0 };
        if c == last {
            continue;
        }
        last = c;
        let s = scale_of(ds, c as u8);
        let (sf, mf) = (s.to_f32(), min_of(s).to_f32());
        let mut err = 0f32;
        for i in 0..x.len() / 2 {
            err += nearest(book, x[2 * i], x[2 * i + 1], h[2 * i], h[2 * i + 1], sf, mf).1;
            if err >= best.1 {
                break;
            }
        }
        if err < best.1 {
            best = (c as u8, err);
        }
    }
    let s = scale_of(ds, best.0);
    let (sf, mf) = (s.to_f32(), min_of(s).to_f32());
    for (i, p) in pairs.iter_mut().enumerate() {
        *p = nearest(book, x[2 * i], x[2 * i + 1], h[2 * i], h[2 * i + 1], sf, mf).0 as u8;
    }
    best
}

/// A row's step: its largest ideal scale (σ/α) times the headroom over 255, as f16.
fn row_step(sigma: &[f32], alpha: f32) -> f16 {
    let smax = sigma.iter().fold(0f32, |a, &s| a.max(s));
    f16::from_f32(smax / alpha * HEADROOM / 255.0)
}

/// Every group's scale and every pair's entry for a fixed table: the quantized matrix and
/// its weighted error.
#[allow(clippy::too_many_arguments)]
fn assign(w: &[f32], n: usize, k: usize, g: usize, h: &[f32], sigma: &[f32], table: &[u8; 32], alpha: f32) -> (Int2Quantized, f64) {
    let ng = k / g;
    let book = table_book(table);
    let steps: Vec<f16> = sigma.chunks_exact(ng).map(|s| row_step(s, alpha)).collect();
    let mut codes = vec![0u8; n * k / 4];
    let mut s8 = vec![0u8; n * ng];
    let err: f64 = codes
        .par_chunks_mut(k / 4)
        .zip(s8.par_chunks_mut(ng))
        .enumerate()
        .map(|(r, (codes, s8))| {
            let ds = steps[r].to_f32();
            let mut pairs = vec![0u8; k / 2];
            let mut err = 0f64;
            for grp in 0..ng {
                let span = grp * g..(grp + 1) * g;
                let x = &w[r * k + span.start..r * k + span.end];
                let (c, e) = fit_group(x, &h[span.clone()], &book, sigma[r * ng + grp] / alpha, ds, &mut pairs[span.start / 2..span.end / 2]);
                s8[grp] = c;
                err += e as f64;
            }
            pack_row(&pairs, codes);
            err
        })
        .sum();
    (finish(codes, s8, steps, *table, n, k, g), err)
}

/// Each entry refit to the pairs it holds: per coordinate Σ h·s·(w - m) / Σ h·s², in
/// units of the float codebook (v - 64) / α. Entries holding nothing stay.
fn refit(w: &[f32], k: usize, g: usize, h: &[f32], q: &Int2Quantized, alpha: f32, old: &Book) -> Book {
    let ng = k / g;
    let sums = (0..q.n)
        .into_par_iter()
        .map(|r| {
            let mut acc = [[0f64; 4]; ENTRIES];
            let mut pairs = vec![0u8; k / 2];
            super::unpack_row(&q.codes[r * k / 4..(r + 1) * k / 4], &mut pairs);
            for (p, &e) in pairs.iter().enumerate() {
                let c = 2 * p;
                let s = q.scales[r * ng + c / g].to_f32() as f64;
                let (wa, wb) = (w[r * k + c] as f64, w[r * k + c + 1] as f64);
                let e = e as usize;
                // (w - min) / s = v, so the least squares v is Σ h s (w + 64 s) / Σ h s².
                acc[e][0] += h[c] as f64 * s * (wa + OFFSET as f64 * s);
                acc[e][1] += h[c] as f64 * s * s;
                acc[e][2] += h[c + 1] as f64 * s * (wb + OFFSET as f64 * s);
                acc[e][3] += h[c + 1] as f64 * s * s;
            }
            acc
        })
        .reduce(
            || [[0f64; 4]; ENTRIES],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    for i in 0..4 {
                        x[i] += y[i];
                    }
                }
                a
            },
        );
    let mut book = *old;
    for (e, s) in sums.iter().enumerate() {
        if s[1] > 0.0 {
            book[e][0] = ((s[0] / s[1]) as f32 - OFFSET) / alpha;
        }
        if s[3] > 0.0 {
            book[e][1] = ((s[2] / s[3]) as f32 - OFFSET) / alpha;
        }
    }
    book
}

/// Up to BLOCK rows with GPTQ's feedback (see the module doc); `ds` their steps, `sigma`
/// their groups' RMS (the scale search's centre).
#[allow(clippy::too_many_arguments)]
fn gptq_block(
    w: &[f32],
    k: usize,
    g: usize,
    h: &[f32],
    u: &[f32],
    table: &[u8; 32],
    alpha: f32,
    ds: &[f32],
    sigma: &[f32],
    codes: &mut [u8],
    s8: &mut [u8],
) -> [[f64; 4]; ENTRIES] {
    let rows = w.len() / k;
    let ng = k / g;
    let book = table_book(table);
    // Per entry, the least-squares sums of the values quantized to it (see `refit`), in
    // table units, each weighted by GPTQ's error weight 1/U_ii².
    let mut sums = [[0f64; 4]; ENTRIES];
    let mut cols = vec![0f32; k * rows];
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            cols[j * rows + r] = x;
        }
    }
    let mut pairs = vec![0u8; rows * k / 2];
    let (mut s, mut m) = (vec![0f32; rows], vec![0f32; rows]);
    let (mut ea, mut eb) = (vec![0f32; rows], vec![0f32; rows]);
    let mut group = vec![0f32; g];
    let mut scratch = vec![0u8; g / 2];
    for i in (0..k).step_by(2) {
        if i % g == 0 {
            let gi = i / g;
            for r in 0..rows {
                group.iter_mut().enumerate().for_each(|(c, x)| *x = cols[(i + c) * rows + r]);
                let rms = (group.iter().map(|x| x * x).sum::<f32>() / g as f32).sqrt().max(sigma[r * ng + gi] * 0.5);
                let (c, _) = fit_group(&group, &h[i..i + g], &book, rms / alpha, ds[r], &mut scratch);
                s8[r * ng + gi] = c;
                let sc = scale_of(ds[r], c);
                (s[r], m[r]) = (sc.to_f32(), min_of(sc).to_f32());
            }
        }
        let (uaa, uab, ubb) = (u[i * k + i], u[i * k + i + 1], u[(i + 1) * k + i + 1]);
        let ratio = uab / uaa;
        for r in 0..rows {
            let (xa, xb) = (cols[i * rows + r], cols[(i + 1) * rows + r]);
            let mut best = (0usize, f32::INFINITY, 0f32, 0f32);
            for (e, v) in book.iter().enumerate() {
                let da = xa - dequant(s[r], m[r], v[0] as u8);
                let xb2 = xb - da * ratio;
                let db = xb2 - dequant(s[r], m[r], v[1] as u8);
                let loss = (da / uaa) * (da / uaa) + (db / ubb) * (db / ubb);
                if loss < best.1 {
                    best = (e, loss, da, db);
                }
            }
            pairs[r * k / 2 + i / 2] = best.0 as u8;
            let (wa, wb) = ((1.0 / (uaa * uaa)) as f64, (1.0 / (ubb * ubb)) as f64);
            let (sr, xb2) = (s[r] as f64, (xb - best.2 * ratio) as f64);
            let acc = &mut sums[best.0];
            acc[0] += wa * sr * (xa as f64 + OFFSET as f64 * sr);
            acc[1] += wa * sr * sr;
            acc[2] += wb * sr * (xb2 + OFFSET as f64 * sr);
            acc[3] += wb * sr * sr;
            ea[r] = best.2 / uaa;
            eb[r] = best.3 / ubb;
        }
        // Column i + 1 got column i's feedback in the choice above; later columns get both.
        let (ua, ub) = (&u[i * k + i + 2..(i + 1) * k], &u[(i + 1) * k + i + 2..(i + 2) * k]);
        for ((col, &a), &b) in cols[(i + 2) * rows..].chunks_exact_mut(rows).zip(ua).zip(ub) {
            for ((x, &e1), &e2) in col.iter_mut().zip(&ea).zip(&eb) {
                *x -= e1 * a + e2 * b;
            }
        }
    }
    for (pr, out) in pairs.chunks_exact(k / 2).zip(codes.chunks_exact_mut(k / 4)) {
        pack_row(pr, out);
    }
    sums
}

/// The quantized matrix from its stored parts (expanding the parameters).
fn finish(codes: Vec<u8>, s8: Vec<u8>, steps: Vec<f16>, table: [u8; 32], n: usize, k: usize, g: usize) -> Int2Quantized {
    let (scales, mins) = super::expand_params(&s8, &steps).expect("the quantizer's parts fit");
    Int2Quantized { codes, s8, steps, table, scales, mins, n, k, g }
}
