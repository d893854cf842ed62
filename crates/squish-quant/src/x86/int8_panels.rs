//! INT8 on AVX512-VNNI with integer dots: a matrix laid out once in panels of 16 rows, one
//! 64-byte line per (32-input block, quad of 4 inputs) holding each row's 4 codes in its
//! 32-bit lane, offset to unsigned (q + 128), so one `vpdpbusd` with a token's 4 int8
//! activations broadcast adds 4 products to each of 16 rows, and 8 of them give each row's
//! exact block dot. The activations come in two int8 levels (`int8::residual`): each line
//! meets both, so a block costs 16 `vpdpbusd` per token for 16 rows.
//!
//! Per (row, token): `tot = fma(f32(dot of q), s · d, tot); tot = fma(f32(dot of q2), s ·
//! d2, tot)` over blocks in order from 0 (s the row's group scale, d and d2 the token's
//! block scales). Every tile, of 1 to 8 tokens, does exactly that, so a token's result has
//! the same bits in a call of any size, from one decode step to a whole prompt.

use super::int4_gemm::MAGIC;
pub(crate) use super::int4_panels::PANEL;
use super::int4_panels::{Line, AHEAD, TT};
use crate::act::ActQ8;
use crate::int8::residual::Residual;
use crate::int8::Int8Matrix;
use core::arch::x86_64::*;

/// The panel layout of one matrix.
pub struct Panels {
    /// Per panel, per 32-input block, per quad j: lane r = row r's codes 4j..4j+4 of that
    /// block, each + 128 (zero past the last row).
    codes: Vec<Line>,
    /// Per panel, per group: 16 rows' scales as f32 (zero past the last row).
    sf: Vec<f32>,
    n: usize,
    k: usize,
    g: usize,
}

impl Panels {
    /// Lays `w` out in panels (a copy of its codes, plus f32 scales).
    pub fn new(w: &Int8Matrix) -> Self {
        let (n, k, g) = (w.n(), w.k(), w.g());
        let (nb, ng) = (k / 32, k / g);
        let np = n.div_ceil(PANEL);
        let mut codes = vec![Line([0; 64]); np * nb * 8];
        let mut sf = vec![0.0f32; np * ng * PANEL];
        let (src, scales) = (w.codes(), w.scales());
        for r in 0..n {
            let (p, l) = (r / PANEL, r % PANEL);
            let row = &src[r * k..(r + 1) * k];
            for b in 0..nb {
                for j in 0..8 {
                    let line = &mut codes[(p * nb + b) * 8 + j].0;
                    for (dst, &q) in line[4 * l..4 * l + 4].iter_mut().zip(&row[b * 32 + 4 * j..b * 32 + 4 * j + 4]) {
                        *dst = (q as u8) ^ 0x80;
                    }
                }
            }
            for grp in 0..ng {
                sf[(p * ng + grp) * PANEL + l] = scales[r * ng + grp].to_f32();
            }
        }
        Self { codes, sf, n, k, g }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn g(&self) -> usize {
        self.g
    }

    /// Bytes held (codes, scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() * 64 + self.sf.len() * 4
    }
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`; r0 and
/// the row count are multiples of `PANEL`, or the count reaches the last row). `r` is the
/// second level of `a`.
///
/// SAFETY: avx2, fma, avx512f, avx512bw, avx512vl and avx512vnni present. The asserts
/// check every bound the pointer arithmetic relies on.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn task(w: &Panels, a: &ActQ8, r: &Residual, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let (rows, toks) = (outs[0].len(), outs.len());
    let (k, g) = (w.k, w.g);
    let (nb, ng) = (k / 32, k / g);
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 % PANEL == 0 && (rows % PANEL == 0 || r0 + rows == w.n));
    assert!(r0 + rows <= w.n && t0 + toks <= a.t && a.k == k);
    assert!(a.tp >= a.t && a.q.len() == a.t * k && a.d.len() == nb * a.tp);
    assert!(r.q2.len() == a.q.len() && [r.d2.len(), r.init.len(), r.init2.len()] == [nb * a.tp; 3]);
    let (np, p0) = (rows.div_ceil(PANEL), r0 / PANEL);
    assert!((p0 + np) * nb * 8 <= w.codes.len() && (p0 + np) * ng * PANEL <= w.sf.len());
    let c = Ctx {
        k,
        nb,
        bpg: g / 32,
        tp: a.tp,
        q: [a.q.as_ptr(), r.q2.as_ptr()],
        d: [a.d.as_ptr(), r.d2.as_ptr()],
        init: [r.init.as_ptr(), r.init2.as_ptr()],
    };
    for p in 0..np {
        let at = Tile {
            codes: w.codes.as_ptr().add((p0 + p) * nb * 8).cast::<__m512i>(),
            sf: w.sf.as_ptr().add((p0 + p) * ng * PANEL),
            valid: (rows - p * PANEL).min(PANEL),
            col: p * PANEL,
        };
        let mut t = 0;
        while t < toks {
            let tw = (toks - t).min(TT);
            let o = &mut outs[t..t + tw];
            match tw {
                8 => tile::<8>(&c, &at, t0 + t, o),
                7 => tile::<7>(&c, &at, t0 + t, o),
                6 => tile::<6>(&c, &at, t0 + t, o),
                5 => tile::<5>(&c, &at, t0 + t, o),
                4 => tile::<4>(&c, &at, t0 + t, o),
                3 => tile::<3>(&c, &at, t0 + t, o),
                2 => tile::<2>(&c, &at, t0 + t, o),
                _ => tile::<1>(&c, &at, t0 + t, o),
            }
            t += tw;
        }
    }
}

/// Shapes, and per activation level its codes, scales and accumulator starts.
struct Ctx {
    k: usize,
    nb: usize,
    bpg: usize,
    tp: usize,
    q: [*const i8; 2],
    d: [*const f32; 2],
    init: [*const i32; 2],
}

/// One panel: its lines and scales, its valid rows, where its rows sit in the task's output.
struct Tile {
    codes: *const __m512i,
    sf: *const f32,
    valid: usize,
    col: usize,
}

/// One panel for tokens tok..tok + T.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile<const T: usize>(c: &Ctx, at: &Tile, tok: usize, outs: &mut [&mut [f32]]) {
    let (k, tp) = (c.k, c.tp);
    let magic = _mm512_set1_ps(MAGIC);
    let mut tot = [_mm512_setzero_ps(); T];
    for b in 0..c.nb {
        for j in 0..8 {
            _mm_prefetch::<_MM_HINT_T0>(at.codes.wrapping_add((b + AHEAD) * 8 + j).cast());
        }
        // Each level's codes of this block, per token.
        let rows: [[*const i8; T]; 2] = core::array::from_fn(|l| core::array::from_fn(|t| c.q[l].add((tok + t) * k + b * 32)));
        let mut acc: [[__m512i; T]; 2] = core::array::from_fn(|l| core::array::from_fn(|t| _mm512_set1_epi32(*c.init[l].add(b * tp + tok + t))));
        for j in 0..8 {
            let wv = _mm512_load_si512(at.codes.add(b * 8 + j));
            for l in 0..2 {
                for t in 0..T {
                    acc[l][t] = super::int4_panels::dpbusd_broadcast(acc[l][t], wv, rows[l][t], 4 * j);
                }
            }
        }
        let s = _mm512_loadu_ps(at.sf.add((b / c.bpg) * PANEL));
        for t in 0..T {
            for l in 0..2 {
                let d = _mm512_set1_ps(*c.d[l].add(b * tp + tok + t));
                let f = _mm512_sub_ps(_mm512_castsi512_ps(acc[l][t]), magic);
                tot[t] = _mm512_fmadd_ps(f, _mm512_mul_ps(s, d), tot[t]);
            }
        }
    }
    let m: __mmask16 = if at.valid == PANEL { 0xFFFF } else { (1u16 << at.valid) - 1 };
    for t in 0..T {
        _mm512_mask_storeu_ps(outs[t].as_mut_ptr().add(at.col), m, tot[t]);
    }
}
