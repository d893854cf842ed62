//! AVX2 INT8 x f32 kernel for one task of the matmul (a range of rows for a range of
//! tokens), in tiles of 4 rows x 1 token (decode) or 1 row x 8 tokens (prefill). Each
//! 8-weight slice is dequantized once (i8 -> i32 -> f32, times the group scale: exactly
//! `dequantize`'s value) and FMA'd into the tile's token accumulators. Every (row, token)
//! sums in the same order whatever the tile, so results do not depend on batch size or
//! thread count.

use super::hsum;
use crate::int8::Int8Matrix;
use core::arch::x86_64::*;

/// Rows ahead whose codes decode tiles prefetch (two 4-row tiles, ~4.6 KB at K = 576):
/// one core's hardware prefetch alone left much of the bandwidth unused.
const PREFETCH: usize = 8;

/// Shapes and base pointers shared by a task's tiles.
struct Ctx {
    k: usize,
    g: usize,
    ng: usize,
    codes: *const i8,
    scales: *const u16,
    x: *const f32,
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`).
///
/// SAFETY: avx2, fma and f16c present. The asserts check every bound the pointer
/// arithmetic relies on (with `Int8Matrix::new`'s guarantee that its slices fit n, k, g).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn task(w: &Int8Matrix, x: &[f32], r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let (rows, toks) = (outs[0].len(), outs.len());
    let (k, g) = (w.k(), w.g());
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 + rows <= w.n() && (t0 + toks) * k <= x.len());
    let c = Ctx {
        k,
        g,
        ng: k / g,
        codes: w.codes().as_ptr(),
        // f16 is a transparent u16.
        scales: w.scales().as_ptr().cast(),
        x: x.as_ptr(),
    };
    if toks == 1 {
        let mut r = 0;
        while r + 4 <= rows {
            put::<4, 1>(&c, r0, t0, outs, r, 0);
            r += 4;
        }
        match rows - r {
            3 => put_cold::<3, 1>(&c, r0, t0, outs, r, 0),
            2 => put_cold::<2, 1>(&c, r0, t0, outs, r, 0),
            1 => put_cold::<1, 1>(&c, r0, t0, outs, r, 0),
            _ => {}
        }
    } else {
        // Tokens outer: 8 tokens' activations stay in L1 while the task's weight rows
        // (in L2) stream past.
        let mut t = 0;
        while t + 8 <= toks {
            for r in 0..rows {
                put::<1, 8>(&c, r0, t0, outs, r, t);
            }
            t += 8;
        }
        for r in 0..rows {
            match toks - t {
                7 => put_cold::<1, 7>(&c, r0, t0, outs, r, t),
                6 => put_cold::<1, 6>(&c, r0, t0, outs, r, t),
                5 => put_cold::<1, 5>(&c, r0, t0, outs, r, t),
                4 => put_cold::<1, 4>(&c, r0, t0, outs, r, t),
                3 => put_cold::<1, 3>(&c, r0, t0, outs, r, t),
                2 => put_cold::<1, 2>(&c, r0, t0, outs, r, t),
                1 => put_cold::<1, 1>(&c, r0, t0, outs, r, t),
                _ => {}
            }
        }
    }
}

/// Computes the tile at (r0 + ro, t0 + to) and stores it into `outs`.
#[inline(always)]
unsafe fn put<const R: usize, const T: usize>(
    c: &Ctx,
    r0: usize,
    t0: usize,
    outs: &mut [&mut [f32]],
    ro: usize,
    to: usize,
) {
    let y = tile::<R, T>(c, r0 + ro, t0 + to);
    for (t, out) in outs[to..to + T].iter_mut().enumerate() {
        for r in 0..R {
            out[ro + r] = y[r][t];
        }
    }
}

/// `put` for the edge tiles, kept out of line so only the two main tiles are inlined.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn put_cold<const R: usize, const T: usize>(
    c: &Ctx,
    r0: usize,
    t0: usize,
    outs: &mut [&mut [f32]],
    ro: usize,
    to: usize,
) {
    put::<R, T>(c, r0, t0, outs, ro, to);
}

/// Rows r0..r0+R, tokens t0..t0+T, as [row][token].
#[inline(always)]
unsafe fn tile<const R: usize, const T: usize>(c: &Ctx, r0: usize, t0: usize) -> [[f32; T]; R] {
    let (k, g) = (c.k, c.g);
    let codes = c.codes.add(r0 * k);
    let scales = c.scales.add(r0 * c.ng);
    let x = c.x.add(t0 * k);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for grp in 0..c.ng {
        let mut s = [_mm256_setzero_ps(); R];
        for r in 0..R {
            s[r] = _mm256_cvtph_ps(_mm_set1_epi16(*scales.add(r * c.ng + grp) as i16));
        }
        if T == 1 {
            // Each 64-byte line of the rows PREFETCH ahead, once, as its group comes up.
            let mut line = (grp * g).next_multiple_of(64);
            while line < (grp + 1) * g {
                for r in 0..R {
                    // Prefetching past the matrix is harmless (no fault, no effect).
                    _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add((r + PREFETCH) * k + line).cast());
                }
                line += 64;
            }
        }
        for i in (grp * g..(grp + 1) * g).step_by(8) {
            let mut wv = [_mm256_setzero_ps(); R];
            for r in 0..R {
                let q = _mm_loadl_epi64(codes.add(r * k + i).cast());
                wv[r] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s[r]);
            }
            for t in 0..T {
                let xv = _mm256_loadu_ps(x.add(t * k + i));
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
    }
    let mut res = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    res
}
