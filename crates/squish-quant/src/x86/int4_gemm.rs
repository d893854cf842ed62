//! x86 INT4 x int8 prefill kernel (AVX512-VNNI, calls of `GEMM_MIN_T` tokens or more):
//! a register-blocked tile of 16 weight rows x 8 tokens.
//!
//! A task first repacks its rows (once per thread and row range of a call, cached) into
//! panels of 16 rows with the codes unpacked to bytes: for each 32-input block and each
//! quad j of 4 inputs, one 64-byte line holds the 4 codes of each of the 16 rows
//! (`[row][4]`), so lane i of a 512-bit `vpdpbusd` with the token's 4 int8 activations
//! broadcast (an embedded `{1to16}` load) adds row i's 4 products. Eight of them give
//! each row's exact integer block dot in one i32 lane (accumulated onto the bits of
//! `MAGIC`, so one subtract makes it an exact f32); one FMA per (16 rows, token, block)
//! then adds it times (group scale · activation block scale). Each code line is reused by
//! the 8 tokens, each activation quad by the 16 rows.
//!
//! Per (row, token) the float operations are: `tot = fma(f32(block dot), s · d, tot)` over
//! blocks in order from 0, then `extra = fma(min, Σx, extra); extra = fma(s, 7.5·Σ(x - x̂),
//! extra)` over groups in order from 0, and `y = tot + extra`. Every tile (8 tokens or the
//! 1-token edge) does exactly that, so within this path a token's result does not depend
//! on the batch or the thread count. It differs in the last bits from the 8-lane order of
//! `x86::int4` (decode and calls under `GEMM_MIN_T` tokens); both are within the same
//! tolerance of `matmul_ref_q8`.
//!
//! INT3 runs the same kernel: only the repack differs (its codes unpacked from the bit
//! planes by `Unpack`), and its activations' residuals are centred on 3.5.

use super::int4::Unpack;
use crate::act::ActQ8;
use crate::grouped::GroupedMatrix;
use crate::int4::Int4Matrix;
use core::arch::x86_64::*;
use std::cell::Cell;

/// Calls with at least this many tokens take this kernel (on AVX512-VNNI).
pub(crate) const GEMM_MIN_T: usize = 16;

/// Rows per panel: the 16 i32 lanes of a zmm.
const PANEL: usize = 16;
/// Tokens per tile.
const TT: usize = 8;
/// 1.5 · 2^23 (see `x86::int4::MAGIC`): |block dot| <= 32 · 127 · 127 < 2^22 (INT2's
/// table values are at most 127).
pub(crate) const MAGIC: f32 = 12_582_912.0;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A task's repacked rows, kept per thread: `key` = (call id, first row, rows).
#[derive(Default)]
struct Pack {
    key: Option<(u64, usize, usize)>,
    /// panels x (k/32) blocks x 8 quads lines.
    codes: Vec<Line>,
    /// panels x (k/g) groups x 16 rows: scales and mins as f32 (zero past the last row).
    sf: Vec<f32>,
    mf: Vec<f32>,
}

thread_local! {
    static PACK: Cell<Pack> = Cell::new(Pack::default());
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`).
///
/// SAFETY: avx2, fma, f16c, avx512f, avx512bw, avx512vnni present (the `Avx512Vnni` path;
/// `isa` checks avx512f/bw with it). The asserts check the bounds the pointer arithmetic
/// relies on (with `Int4Matrix::new`'s guarantee that its slices fit n, k, g).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn task<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let (rows, toks) = (outs[0].len(), outs.len());
    let (k, g) = (w.k(), w.g());
    let (ng, nb) = (k / g, k / 32);
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 + rows <= w.n() && t0 + toks <= a.t && a.k == k && a.g == g);
    assert!(a.tp >= a.t && a.q.len() == a.t * k && a.d.len() == nb * a.tp);
    assert!(a.sx.len() == ng * a.tp && a.rc.len() == ng * a.tp);
    if rows == 0 {
        return;
    }
    let np = rows.div_ceil(PANEL);
    let mut pack = PACK.with(Cell::take);
    let key = (a.call, r0, rows);
    if pack.key != Some(key) || pack.codes.len() != np * nb * 8 {
        match Int4Matrix::new(w.codes(), w.scales(), w.mins(), w.n(), k, g) {
            Ok(w4) if L::BLOCK_BYTES == 32 => repack(&w4, r0, rows, &mut pack),
            _ => repack_unpacked(w, r0, rows, &mut pack),
        }
        pack.key = Some(key);
    }
    let ctx = Ctx {
        k,
        nb,
        ng,
        bpg: g / 32,
        tp: a.tp,
        codes: pack.codes.as_ptr(),
        sf: pack.sf.as_ptr(),
        mf: pack.mf.as_ptr(),
        q: a.q.as_ptr(),
        d: a.d.as_ptr(),
        sx: a.sx.as_ptr(),
        rc: a.rc.as_ptr(),
    };
    let mut t = 0;
    while t + TT <= toks {
        for p in 0..np {
            tile::<TT>(&ctx, p, t0 + t, rows, &mut outs[t..t + TT]);
        }
        t += TT;
    }
    while t < toks {
        for p in 0..np {
            tile::<1>(&ctx, p, t0 + t, rows, &mut outs[t..t + 1]);
        }
        t += 1;
    }
    PACK.with(|c| c.set(pack));
}

struct Ctx {
    k: usize,
    nb: usize,
    ng: usize,
    bpg: usize,
    tp: usize,
    codes: *const Line,
    sf: *const f32,
    mf: *const f32,
    q: *const i8,
    d: *const f32,
    sx: *const f32,
    rc: *const f32,
}

/// Sizes `pack` for rows r0..r0+rows of `w` and fills its scales and mins (f32, zero past
/// the last row); the codes are left zero.
#[inline(always)]
fn pack_params<L: Unpack>(w: &GroupedMatrix<L>, r0: usize, rows: usize, pack: &mut Pack) {
    let (ng, nb) = (w.k() / w.g(), w.k() / 32);
    let np = rows.div_ceil(PANEL);
    pack.codes.clear();
    pack.codes.resize(np * nb * 8, Line([0; 64]));
    pack.sf.clear();
    pack.sf.resize(np * ng * PANEL, 0.0);
    pack.mf.clear();
    pack.mf.resize(np * ng * PANEL, 0.0);
    let (scales, mins) = (w.scales(), w.mins());
    for i in 0..rows {
        let (p, l) = (i / PANEL, i % PANEL);
        for grp in 0..ng {
            pack.sf[(p * ng + grp) * PANEL + l] = scales[(r0 + i) * ng + grp].to_f32();
            pack.mf[(p * ng + grp) * PANEL + l] = mins[(r0 + i) * ng + grp].to_f32();
        }
    }
}

/// Any layout's rows r0..r0+rows into `pack`, a row's 64-input block at a time: its codes
/// unpacked to two vectors of 32 bytes, whose dword j (inputs 4j..4j+4 of each half) goes to
/// line j of the half's block at the row's lane.
#[inline(always)]
unsafe fn repack_unpacked<L: Unpack>(w: &GroupedMatrix<L>, r0: usize, rows: usize, pack: &mut Pack) {
    pack_params(w, r0, rows, pack);
    let (rb, nb) = (w.row_bytes(), w.k() / 32);
    let codes = w.codes().as_ptr();
    let mut buf = [0u8; 64];
    let table = super::int4::table_vector(w);
    for i in 0..rows {
        let (p, l) = (i / PANEL, i % PANEL);
        for b64 in 0..nb / 2 {
            let (lo, hi) = L::unpack(codes.add((r0 + i) * rb + b64 * L::BLOCK_BYTES), table);
            _mm256_storeu_si256(buf.as_mut_ptr().cast(), lo);
            _mm256_storeu_si256(buf.as_mut_ptr().add(32).cast(), hi);
            for half in 0..2 {
                for j in 0..8 {
                    let line = &mut pack.codes[(p * nb + 2 * b64 + half) * 8 + j].0;
                    line[4 * l..4 * l + 4].copy_from_slice(&buf[32 * half + 4 * j..32 * half + 4 * j + 4]);
                }
            }
        }
    }
}

/// Rows r0..r0+rows of `w` into `pack` (codes as bytes, scales and mins as f32), zero
/// past the last row.
#[inline(always)]
unsafe fn repack(w: &Int4Matrix, r0: usize, rows: usize, pack: &mut Pack) {
    let (hk, nb) = (w.k() / 2, w.k() / 32);
    let np = rows.div_ceil(PANEL);
    pack_params(w, r0, rows, pack);
    let codes = w.codes().as_ptr();
    let mask = _mm512_set1_epi8(0x0F);
    let dst = pack.codes.as_mut_ptr();
    let vindex = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(hk as i32),
    );
    for p in 0..np {
        let valid = (rows - p * PANEL).min(PANEL);
        let m: __mmask16 = if valid == PANEL { 0xFFFF } else { (1u16 << valid) - 1 };
        let base = codes.add((r0 + p * PANEL) * hk);
        for b64 in 0..nb / 2 {
            for j in 0..8 {
                // Dword j of each row's 32-byte block b64: inputs 4j.. (low nibbles) and
                // 32 + 4j.. (high nibbles) of the 64-input block.
                let raw = _mm512_mask_i32gather_epi32::<1>(
                    _mm512_setzero_si512(),
                    m,
                    vindex,
                    base.add(b64 * 32 + 4 * j).cast(),
                );
                let lo = _mm512_and_si512(raw, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask);
                let blk = 2 * b64;
                _mm512_store_si512(dst.add((p * nb + blk) * 8 + j).cast(), lo);
                _mm512_store_si512(dst.add((p * nb + blk + 1) * 8 + j).cast(), hi);
            }
        }
    }
}

/// Panel `p` (task rows 16p..16p+16, clipped to `rows`) for tokens tok..tok+T into
/// `outs[0..T]`.
#[inline(always)]
unsafe fn tile<const T: usize>(c: &Ctx, p: usize, tok: usize, rows: usize, outs: &mut [&mut [f32]]) {
    let (k, nb, ng, bpg, tp) = (c.k, c.nb, c.ng, c.bpg, c.tp);
    // k % 64 == 0: blocks come in (low, high) nibble pairs, both repacked.
    let w = c.codes.add(p * nb * 8);
    let q = c.q.add(tok * k);
    let magic = _mm512_set1_ps(MAGIC);
    let magic_i = _mm512_castps_si512(magic);
    let mut tot = [_mm512_setzero_ps(); T];
    for grp in 0..ng {
        let s = _mm512_loadu_ps(c.sf.add((p * ng + grp) * PANEL));
        for blk in grp * bpg..(grp + 1) * bpg {
            let mut acc = [magic_i; T];
            for j in 0..8 {
                let cv = _mm512_load_si512(w.add(blk * 8 + j).cast());
                for t in 0..T {
                    let x = _mm512_set1_epi32(core::ptr::read_unaligned(q.add(t * k + blk * 32 + 4 * j).cast::<i32>()));
                    acc[t] = _mm512_dpbusd_epi32(acc[t], cv, x);
                }
            }
            for t in 0..T {
                let d = _mm512_set1_ps(*c.d.add(blk * tp + tok + t));
                let f = _mm512_sub_ps(_mm512_castsi512_ps(acc[t]), magic);
                tot[t] = _mm512_fmadd_ps(f, _mm512_mul_ps(s, d), tot[t]);
            }
        }
    }
    let valid = (rows - p * PANEL).min(PANEL);
    let m: __mmask16 = if valid == PANEL { 0xFFFF } else { (1u16 << valid) - 1 };
    for t in 0..T {
        let mut e = _mm512_setzero_ps();
        for grp in 0..ng {
            let (s, mn) = (_mm512_loadu_ps(c.sf.add((p * ng + grp) * PANEL)), _mm512_loadu_ps(c.mf.add((p * ng + grp) * PANEL)));
            e = _mm512_fmadd_ps(mn, _mm512_set1_ps(*c.sx.add(grp * tp + tok + t)), e);
            e = _mm512_fmadd_ps(s, _mm512_set1_ps(*c.rc.add(grp * tp + tok + t)), e);
        }
        let y = _mm512_add_ps(tot[t], e);
        _mm512_mask_storeu_ps(outs[t].as_mut_ptr().add(p * PANEL), m, y);
    }
}
