//! Dense f32 matrices at decode: y = W x for a few tokens, W (N x K, row-major) streamed once
//! per call at memory speed, rows split over the decode team. candle's matmul (the gemm crate)
//! takes one token through a general path: a SmolLM2 loaded in f32 decoded at 25 tokens/s on
//! this project's 2-core machine against llama.cpp F32's 53.
//!
//! Each (row, token) sum is the same whatever the call's other rows and tokens: 16 lane sums
//! over the K/16 full chunks in order, added pairwise, then the tail in order.

use crate::isa::{detect, Isa};
use crate::matmul::{check_io, run_many, Part};

/// The most tokens a call serves (decode steps and small batches); more run as several passes
/// over W, where a GEMM that reuses each weight across tokens does better.
pub const MAX_TOKENS: usize = 4;
/// Rows per inner step: 4 rows x 4 tokens of 16-lane sums are 16 of AVX-512's 32 registers.
const ROWS: usize = 4;
const LANES: usize = 16;

/// out (t x n) = x (t x k) · Wᵀ, W (n x k) row-major. Panics unless the lengths fit.
pub fn matmul(w: &[f32], n: usize, k: usize, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_many(&mut [(w, n, out)], k, x, t);
}

/// `matmul` for several matrices reading the same x (a layer's q, k and v; its gate and up):
/// one parallel region for all. parts: (W, n, out) each.
pub fn matmul_many(parts: &mut [(&[f32], usize, &mut [f32])], k: usize, x: &[f32], t: usize) {
    let isa = detect();
    let tasks: Vec<_> = parts
        .iter()
        .map(|(w, n, out)| {
            check_io("dense matmul", *n, k, x, t, out);
            assert_eq!(w.len(), n * k, "dense matmul: W has {} values, N*K = {n}*{k}", w.len());
            let w: &[f32] = w;
            move |r0: usize, t0: usize, outs: &mut [&mut [f32]]| task(isa, w, k, &x[t0 * k..], r0, outs)
        })
        .collect();
    let parts: Vec<Part> = parts
        .iter_mut()
        .zip(&tasks)
        .map(|((_, n, out), task)| Part { n: *n, k, row_bytes: 4 * k, t, out, align: 8, task })
        .collect();
    run_many(parts);
}

/// Rows r0 .. r0 + outs[i].len() for tokens t0 + i (x starts at token t0), MAX_TOKENS at a time.
fn task(isa: Isa, w: &[f32], k: usize, x: &[f32], r0: usize, outs: &mut [&mut [f32]]) {
    for (c, chunk) in outs.chunks_mut(MAX_TOKENS).enumerate() {
        let x = &x[c * MAX_TOKENS * k..];
        match isa {
            // SAFETY: detect() reports avx512 (with avx2 and fma) or avx2 and fma only where
            // the CPU has them.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { rows_avx512(w, k, x, r0, chunk) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni => unsafe { rows_avx2(w, k, x, r0, chunk) },
            _ => rows(w, k, x, r0, chunk),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512(w: &[f32], k: usize, x: &[f32], r0: usize, outs: &mut [&mut [f32]]) {
    rows(w, k, x, r0, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(w: &[f32], k: usize, x: &[f32], r0: usize, outs: &mut [&mut [f32]]) {
    rows(w, k, x, r0, outs)
}

/// Up to MAX_TOKENS tokens (one per `outs` entry): compiled into each ISA's function, whose
/// vectors its lane arrays become.
#[inline(always)]
fn rows(w: &[f32], k: usize, x: &[f32], r0: usize, outs: &mut [&mut [f32]]) {
    match outs.len() {
        1 => pass::<1>(w, k, x, r0, outs),
        2 => pass::<2>(w, k, x, r0, outs),
        3 => pass::<3>(w, k, x, r0, outs),
        _ => pass::<4>(w, k, x, r0, outs),
    }
}

#[inline(always)]
fn pass<const T: usize>(w: &[f32], k: usize, x: &[f32], r0: usize, outs: &mut [&mut [f32]]) {
    let rows = outs[0].len();
    let xs: [&[f32]; T] = std::array::from_fn(|i| &x[i * k..(i + 1) * k]);
    let full = k / LANES * LANES;
    for r in (0..rows).step_by(ROWS) {
        let nr = (rows - r).min(ROWS);
        // A short last group repeats its last row (computed, not stored).
        let wr: [&[f32]; ROWS] = std::array::from_fn(|i| {
            let row = r0 + r + i.min(nr - 1);
            &w[row * k..(row + 1) * k]
        });
        let mut acc = [[[0f32; LANES]; ROWS]; T];
        let first = (r0 + r) * k;
        for c in (0..full).step_by(LANES) {
            // Each row's stream, PREFETCH values on: into the rows after it near a row's end.
            for i in 0..ROWS {
                prefetch(w, first + i * k + c + PREFETCH);
            }
            for (i, wrow) in wr.iter().enumerate() {
                let wv: &[f32; LANES] = wrow[c..c + LANES].try_into().expect("a full chunk");
                for (a, xrow) in acc.iter_mut().zip(&xs) {
                    let xv: &[f32; LANES] = xrow[c..c + LANES].try_into().expect("a full chunk");
                    for j in 0..LANES {
                        a[i][j] += wv[j] * xv[j];
                    }
                }
            }
        }
        for (tok, out) in outs.iter_mut().enumerate() {
            for i in 0..nr {
                let mut s = pairwise(acc[tok][i]);
                for c in full..k {
                    s += wr[i][c] * xs[tok][c];
                }
                out[r + i] = s;
            }
        }
    }
}

/// How far ahead of the sums each row's loads are requested (values). On the 2-core VM a
/// 113 MB matrix streamed at 20.0-20.5 GB/s with it and 19.4 without: a small gain, near the
/// VM's noise.
const PREFETCH: usize = 256;

/// Asks for the cache line of w[at], where w has one (x86-64; elsewhere the hardware's
/// prefetcher alone).
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn prefetch(w: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < w.len() {
        // SAFETY: a prefetch of an address inside w; it reads nothing.
        unsafe { std::arch::x86_64::_mm_prefetch(w.as_ptr().add(at) as *const i8, std::arch::x86_64::_MM_HINT_T0) };
    }
}

/// The 16 lane sums added in halves: 8 + 8, 4 + 4, 2 + 2, 1 + 1.
#[inline(always)]
fn pairwise(mut v: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            v[j] += v[j + width];
        }
        width /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 2003.0 - 0.5).collect()
    }

    /// Against f64 sums, at widths with and without a tail, row counts that leave a short last
    /// group, 1 to 6 tokens; and each (row, token) the same bits alone as in a batch.
    #[test]
    fn matches_f64_and_is_the_same_alone_or_batched() {
        for (n, k) in [(37, 576), (8, 100), (130, 1536), (5, 7)] {
            let w = values(n * k, n + k);
            for t in 1..=6 {
                let x = values(t * k, t);
                let mut out = vec![0f32; t * n];
                matmul(&w, n, k, &x, t, &mut out);
                for tok in 0..t {
                    for r in 0..n {
                        let want: f64 = (0..k).map(|c| w[r * k + c] as f64 * x[tok * k + c] as f64).sum();
                        let got = out[tok * n + r] as f64;
                        assert!((got - want).abs() <= 1e-5 * (k as f64).sqrt(), "{n}x{k} t{t}: row {r} token {tok}: {got} vs {want}");
                    }
                    let mut alone = vec![0f32; n];
                    matmul(&w, n, k, &x[tok * k..(tok + 1) * k], 1, &mut alone);
                    assert_eq!(alone, out[tok * n..(tok + 1) * n], "{n}x{k} t{t}: token {tok} alone");
                }
                // The same matrix twice and a third in one region: each output as `matmul`'s.
                let other = values(3 * k, 9);
                let (mut a, mut b, mut c) = (vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * 3]);
                matmul_many(&mut [(&w, n, &mut a), (&other, 3, &mut c), (&w, n, &mut b)], k, &x, t);
                assert_eq!((&a, &b), (&out, &out), "{n}x{k} t{t}: matmul_many");
                let mut want = vec![0f32; t * 3];
                matmul(&other, 3, k, &x, t, &mut want);
                assert_eq!(c, want, "{n}x{k} t{t}: matmul_many's third");
            }
        }
    }
}
