//! A whole INT4 matrix laid out once in the prefill GEMM's panel order (`x86::int4_gemm`),
//! for AVX512-VNNI: 16 rows side by side per 32-bit lane, so one `vpdpbusd` with a
//! token's 4 activations broadcast adds 4 products to each of 16 rows. Stored with the
//! nibbles still packed (the same bytes as the row-major codes), it costs no memory beyond
//! the file's and no repack per call; every call, from one token to a whole prompt, runs
//! the GEMM tile's arithmetic on it. So a token's result has the same bits in a call of
//! any size, and small batches get the GEMM's efficiency (exact integer block dots for 16
//! rows at once) instead of the decode kernel's per-row work.
//!
//! AMX-INT8 tiles were tried for 2-15 tokens (2026-11-28, Emerald Rapids VM) and not kept:
//! the activations' per-32-input scales need one `tdpbsud` (K = 32) and one `tilestored`
//! per block, then this kernel's float work on the stored dots. Measured there, in TSC
//! cycles per instruction on 8-row tiles: `tdpbsud` 16, `tileloadd` 10-14, `tilestored`
//! 14-19. Pipelined three stages deep, the same bits came out at 1.0x this kernel's speed
//! for 8 tokens and 1.2x for 15; block by block, without the pipeline, 1.3-2.5x slower.

use super::int4_gemm::MAGIC;
use crate::act::ActQ8;
use crate::int4::Int4Matrix;
use core::arch::x86_64::*;

/// Rows per panel.
pub(crate) const PANEL: usize = 16;
/// Tokens per tile.
pub(super) const TT: usize = 8;
/// Calls of fewer tokens run on the panels; larger ones run the prefill GEMM, which
/// repacks each task's rows. Measured on SmolLM2's 30 layers plus head at 2 threads
/// (2026-11-28): the panels took 12.9 ms for 16 tokens where the GEMM took 25.4, 26.5
/// against 38.7 for 32, and the same for 64. So a 16-stream decode step (the GEMM's
/// threshold was 16) ran at 415 tokens/s, slower than 8 streams; on the panels at 725.
pub(crate) const PANELS_BELOW_T: usize = 64;
/// Software prefetch distance in blocks (512 bytes of lines each: 64 inputs here, 32 in
/// the INT8 panels).
pub(super) const AHEAD: usize = 4;

/// One 512-bit line of a panel: a 32-bit lane per row.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

/// The panel layout of one matrix.
pub struct Panels {
    /// Per panel, per 64-input block, per quad j: lane r = row r's dword j of that block's
    /// 32 packed bytes (inputs 4j.. in the low nibbles, 32 + 4j.. in the high ones).
    codes: Vec<Line>,
    /// Per panel, per group: 16 rows' scales and mins as f32 (zero past the last row).
    sf: Vec<f32>,
    mf: Vec<f32>,
    n: usize,
    k: usize,
    g: usize,
}

impl Panels {
    /// Lays `w` out in panels (a copy of its codes, plus f32 scales and mins).
    pub fn new(w: &Int4Matrix) -> Self {
        let (n, k, g) = (w.n(), w.k(), w.g());
        let (hk, ng, nb2) = (k / 2, k / g, k / 64);
        let np = n.div_ceil(PANEL);
        let mut codes = vec![Line([0; 64]); np * nb2 * 8];
        let mut sf = vec![0.0f32; np * ng * PANEL];
        let mut mf = vec![0.0f32; np * ng * PANEL];
        let (src, scales, mins) = (w.codes(), w.scales(), w.mins());
        for r in 0..n {
            let (p, l) = (r / PANEL, r % PANEL);
            let row = &src[r * hk..(r + 1) * hk];
            for b in 0..nb2 {
                for j in 0..8 {
                    let line = &mut codes[(p * nb2 + b) * 8 + j].0;
                    line[4 * l..4 * l + 4].copy_from_slice(&row[b * 32 + 4 * j..b * 32 + 4 * j + 4]);
                }
            }
            for grp in 0..ng {
                sf[(p * ng + grp) * PANEL + l] = scales[r * ng + grp].to_f32();
                mf[(p * ng + grp) * PANEL + l] = mins[r * ng + grp].to_f32();
            }
        }
        Self { codes, sf, mf, n, k, g }
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

    /// Bytes held (codes, scales, mins).
    pub fn bytes(&self) -> usize {
        self.codes.len() * 64 + (self.sf.len() + self.mf.len()) * 4
    }
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`; r0 and
/// the row count are multiples of `PANEL`, or the count reaches the last row).
///
/// SAFETY: avx2, fma, avx512f, avx512bw, avx512vl and avx512vnni present. The asserts
/// check every bound the pointer arithmetic relies on.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn task(w: &Panels, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let (rows, toks) = (outs[0].len(), outs.len());
    let (k, g) = (w.k, w.g);
    let (ng, nb) = (k / g, k / 32);
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 % PANEL == 0 && (rows % PANEL == 0 || r0 + rows == w.n));
    assert!(r0 + rows <= w.n && t0 + toks <= a.t && a.k == k && a.g == g);
    assert!(a.tp >= a.t && a.q.len() == a.t * k && a.d.len() == nb * a.tp);
    assert!(a.sx.len() == ng * a.tp && a.rc.len() == ng * a.tp);
    let np = rows.div_ceil(PANEL);
    let p0 = r0 / PANEL;
    assert!((p0 + np) * (nb / 2) * 8 <= w.codes.len() && (p0 + np) * ng * PANEL <= w.sf.len());
    let c = Ctx {
        k,
        nb,
        ng,
        bpg: g / 32,
        tp: a.tp,
        q: a.q.as_ptr(),
        d: a.d.as_ptr(),
        sx: a.sx.as_ptr(),
        rc: a.rc.as_ptr(),
    };
    for p in 0..np {
        let valid = (rows - p * PANEL).min(PANEL);
        let codes = w.codes.as_ptr().add((p0 + p) * (nb / 2) * 8).cast::<__m512i>();
        let (sf, mf) = (w.sf.as_ptr().add((p0 + p) * ng * PANEL), w.mf.as_ptr().add((p0 + p) * ng * PANEL));
        let mut t = 0;
        while t < toks {
            let tw = (toks - t).min(TT);
            let o = &mut outs[t..t + tw];
            let at = Tile { codes, sf, mf, valid, tok: t0 + t, col: p * PANEL };
            match tw {
                8 => tile::<8>(&c, &at, o),
                7 => tile::<7>(&c, &at, o),
                6 => tile::<6>(&c, &at, o),
                5 => tile::<5>(&c, &at, o),
                4 => tile::<4>(&c, &at, o),
                3 => tile::<3>(&c, &at, o),
                2 => tile::<2>(&c, &at, o),
                _ => tile::<1>(&c, &at, o),
            }
            t += tw;
        }
    }
}

struct Ctx {
    k: usize,
    nb: usize,
    ng: usize,
    bpg: usize,
    tp: usize,
    q: *const i8,
    d: *const f32,
    sx: *const f32,
    rc: *const f32,
}

/// One panel for tokens tok..: its lines, scales, mins, valid rows, and where its rows sit
/// in the task's output rows.
struct Tile {
    codes: *const __m512i,
    sf: *const f32,
    mf: *const f32,
    valid: usize,
    tok: usize,
    col: usize,
}

/// `int4_gemm::tile`'s arithmetic per (row, token): blocks in order, each adding its exact
/// integer dot (as f32) times scale · activation scale with one FMA; then the group terms
/// min · Σx and scale · centred residual, two FMAs per group in order; then their sum.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile<const T: usize>(c: &Ctx, at: &Tile, outs: &mut [&mut [f32]]) {
    let (k, tp) = (c.k, c.tp);
    let q = c.q.add(at.tok * k);
    let magic = _mm512_set1_ps(MAGIC);
    let magic_i = _mm512_castps_si512(magic);
    let zero = _mm512_setzero_si512();
    let mask = _mm512_set1_epi8(0x0F);
    let mut tot = [_mm512_setzero_ps(); T];
    for b64 in 0..c.nb / 2 {
        // The lines AHEAD blocks on (into the next panel past the last block): the hardware
        // prefetcher alone left a batched step waiting on memory at half the bandwidth.
        for j in 0..8 {
            _mm_prefetch::<_MM_HINT_T0>(at.codes.wrapping_add((b64 + AHEAD) * 8 + j).cast());
        }
        let (lo_blk, hi_blk) = (2 * b64, 2 * b64 + 1);
        // Each token's activations of the low block; the high block's are 32 bytes on.
        let rows: [*const i8; T] = core::array::from_fn(|t| q.add(t * k + lo_blk * 32));
        // Integer sums are exact in any order: with few tokens, odd quads go to a second
        // accumulator so the dependency chains halve.
        let (mut acc_lo, mut acc_hi) = ([[magic_i; T], [zero; T]], [[magic_i; T], [zero; T]]);
        for j in 0..8 {
            let raw = _mm512_load_si512(at.codes.add(b64 * 8 + j));
            let lo = _mm512_and_si512(raw, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask);
            let a = if T <= 2 { j % 2 } else { 0 };
            for t in 0..T {
                acc_lo[a][t] = dpbusd_broadcast(acc_lo[a][t], lo, rows[t], 4 * j);
                acc_hi[a][t] = dpbusd_broadcast_32(acc_hi[a][t], hi, rows[t], 4 * j);
            }
        }
        // Blocks in order, as the GEMM tile: the low-nibble block, then the high one.
        add_block::<T>(c, at, lo_blk, &acc_lo, &mut tot);
        add_block::<T>(c, at, hi_blk, &acc_hi, &mut tot);
    }
    let m: __mmask16 = if at.valid == PANEL { 0xFFFF } else { (1u16 << at.valid) - 1 };
    for t in 0..T {
        let mut e = _mm512_setzero_ps();
        for grp in 0..c.ng {
            let (s, mn) = (_mm512_loadu_ps(at.sf.add(grp * PANEL)), _mm512_loadu_ps(at.mf.add(grp * PANEL)));
            e = _mm512_fmadd_ps(mn, _mm512_set1_ps(*c.sx.add(grp * tp + at.tok + t)), e);
            e = _mm512_fmadd_ps(s, _mm512_set1_ps(*c.rc.add(grp * tp + at.tok + t)), e);
        }
        let y = _mm512_add_ps(tot[t], e);
        _mm512_mask_storeu_ps(outs[t].as_mut_ptr().add(at.col), m, y);
    }
}

/// `$name(acc, w, x, off)` = acc + (u8 lanes of `w`) · (the 4 int8 at x + off + $disp, in
/// every lane), the activations read by the instruction itself (an embedded broadcast).
/// Written with intrinsics, LLVM hoisted the 8 tokens' broadcasts out of the quad loop and,
/// short of registers, spilled them: a 64-byte store and reload per multiply. `x + off`
/// addressing spares a chain of address computations per multiply.
macro_rules! dpbusd_broadcast {
    ($name:ident, $disp:literal) => {
        #[target_feature(enable = "avx512f,avx512vnni")]
        #[inline]
        pub(super) unsafe fn $name(acc: __m512i, w: __m512i, x: *const i8, off: usize) -> __m512i {
            let mut acc = acc;
            core::arch::asm!(
                concat!("vpdpbusd {acc}, {w}, dword ptr [{x} + {off} + ", $disp, "]{{1to16}}"),
                acc = inout(zmm_reg) acc,
                w = in(zmm_reg) w,
                x = in(reg) x,
                off = in(reg) off,
                options(pure, readonly, nostack, preserves_flags)
            );
            acc
        }
    };
}
// The low block's activations, and the high block's 32 bytes on (the INT8 panels
// (`x86::int8_panels`) use the first).
dpbusd_broadcast!(dpbusd_broadcast, 0);
dpbusd_broadcast!(dpbusd_broadcast_32, 32);

/// tot[t] += f32(block `blk`'s exact integer dot) · (scale · activation scale), the block's
/// dot being the two accumulators' sum less `MAGIC`.
#[inline(always)]
unsafe fn add_block<const T: usize>(c: &Ctx, at: &Tile, blk: usize, acc: &[[__m512i; T]; 2], tot: &mut [__m512; T]) {
    let magic = _mm512_set1_ps(MAGIC);
    let s = _mm512_loadu_ps(at.sf.add((blk / c.bpg) * PANEL));
    for t in 0..T {
        let sum = _mm512_add_epi32(acc[0][t], acc[1][t]);
        let d = _mm512_set1_ps(*c.d.add(blk * c.tp + at.tok + t));
        let f = _mm512_sub_ps(_mm512_castsi512_ps(sum), magic);
        tot[t] = _mm512_fmadd_ps(f, _mm512_mul_ps(s, d), tot[t]);
    }
}
