//! x86 INT4 x int8 kernel for one task of the matmul (a range of rows for a range of
//! tokens), in tiles of 8 rows x 1 token (decode) or 1 row x 8 tokens (prefill), compiled
//! once per integer dot of a 32-input block (see `Dot`): AVX2, AVX-VNNI, AVX512-VNNI
//! (on AVX512-VNNI only for calls under 16 tokens: larger ones run `x86::int4_gemm`).
//!
//! Per 32-input block, the dot of codes (u8) and activations (i8) gives 8 i32 partial
//! dots of 4 adjacent products each (`maddubs` + `madd`, or one `vpdpbusd`: the same
//! sums), converted and FMA'd with (activation block scale · group scale) into the
//! (row, token) accumulator; those products are computed a chunk of blocks ahead into a
//! stack buffer, so the inner loop only broadcasts them. Per group, `min · Σx` and
//! `scale · 7.5 · Σ(x - x̂)` (see `act::CODE_CENTER`) run across rows or tokens. Every
//! (row, token) goes through the same operations in the same order whatever the tile, so
//! results do not depend on batch size or thread count.
//!
//! The kernel is generic over the code packing (`Unpack`): INT4's nibbles here, INT3's
//! bit planes in `x86::int3`; everything but turning a 64-input block's bytes into two
//! vectors of 32 codes is shared.

use super::hsum;
use crate::act::ActQ8;
use crate::grouped::{GroupedMatrix, Layout};
use crate::int4::Nibbles;
use core::arch::x86_64::*;

/// A layout's codes as vectors.
pub(crate) trait Unpack: Layout {
    /// The 64 codes of the packed block at `p` (BLOCK_BYTES readable) as u8 lanes: inputs
    /// 0..32 and 32..64 (for a layout with a value table, their values, `table` holding it;
    /// such a layout may order the lanes of each half its own way, with its activations
    /// permuted to match). SAFETY: avx2 present (inlined into the kernels' entries).
    unsafe fn unpack(p: *const u8, table: __m256i) -> (__m256i, __m256i);
}

impl Unpack for Nibbles {
    #[inline(always)]
    unsafe fn unpack(p: *const u8, _table: __m256i) -> (__m256i, __m256i) {
        let mask = _mm256_set1_epi8(0x0F);
        let v = _mm256_loadu_si256(p.cast());
        (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask))
    }
}

/// Rows ahead whose codes, scales and mins decode tiles prefetch (two 8-row tiles, ~4.6 KB
/// at K = 576): one core's hardware prefetch alone left half the bandwidth unused.
const PREFETCH: usize = 16;

/// 32-input blocks whose scale products are computed at once (2 KB of stack).
const CHUNK: usize = 64;

/// Shapes and base pointers shared by a task's tiles (divisions done once).
pub(crate) struct Ctx {
    k: usize,
    /// Bytes of a row's codes.
    rb: usize,
    ng: usize,
    nb: usize,
    bpg: usize,
    tp: usize,
    codes: *const u8,
    scales: *const u16,
    mins: *const u16,
    q: *const i8,
    d: *const f32,
    sx: *const f32,
    rc: *const f32,
    /// The layout's value table (zero without one).
    table: __m256i,
}

/// The integer dot of one 32-input block, and the kernel instantiated for it.
pub(crate) trait Dot {
    /// Lane j (of 8) = Σ_{i<4} v[4j + i] · x[4j + i] as f32, v as u8 (at most 15 here) and
    /// x as i8: every implementation gives exactly these sums (|sum| <= 4 · 127 · 127, so
    /// exact in f32 too; INT2's table values are at most 127).
    unsafe fn dot(v: __m256i, x: __m256i) -> __m256;

    /// `put` for the edge tiles, kept out of line so only the two main tiles are inlined
    /// (compiled with the implementation's target features).
    unsafe fn put_cold<L: Unpack, const R: usize, const T: usize>(
        c: &Ctx,
        r0: usize,
        t0: usize,
        outs: &mut [&mut [f32]],
        ro: usize,
        to: usize,
    );
}

/// AVX2: `maddubs` (u8 x i8 pairs, the u8 at most 127: at most 2·127·127 per i16 lane, so
/// it never saturates)
/// then `madd` with ones.
pub(crate) struct Avx2;
/// AVX-VNNI: `vpdpbusd` (VEX), converted with `MAGIC`.
pub(crate) struct AvxVnni;
/// AVX512-VNNI + VL: `vpdpbusd` (EVEX, 256-bit), converted with `MAGIC`.
pub(crate) struct Avx512Vnni;

/// 1.5 · 2^23, whose f32 bits plus an integer |i| < 2^22 are the bits of MAGIC + i: the
/// VNNI dots accumulate into these bits and subtract MAGIC, an exact i32 -> f32 conversion
/// (the value `cvtdq2ps` gives) done by the dot and an add, where port 5 can take the add
/// (Golden Cove), leaving ports 0/1 to the dot and the FMA.
const MAGIC: f32 = 12_582_912.0;

impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(v: __m256i, x: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(v, x), _mm256_set1_epi16(1)))
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline(never)]
    unsafe fn put_cold<L: Unpack, const R: usize, const T: usize>(
        c: &Ctx,
        r0: usize,
        t0: usize,
        outs: &mut [&mut [f32]],
        ro: usize,
        to: usize,
    ) {
        put::<Self, L, R, T>(c, r0, t0, outs, ro, to);
    }
}

impl Dot for AvxVnni {
    #[inline(always)]
    unsafe fn dot(v: __m256i, x: __m256i) -> __m256 {
        let m = _mm256_set1_ps(MAGIC);
        _mm256_sub_ps(_mm256_castsi256_ps(_mm256_dpbusd_avx_epi32(_mm256_castps_si256(m), v, x)), m)
    }
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline(never)]
    unsafe fn put_cold<L: Unpack, const R: usize, const T: usize>(
        c: &Ctx,
        r0: usize,
        t0: usize,
        outs: &mut [&mut [f32]],
        ro: usize,
        to: usize,
    ) {
        put::<Self, L, R, T>(c, r0, t0, outs, ro, to);
    }
}

impl Dot for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(v: __m256i, x: __m256i) -> __m256 {
        let m = _mm256_set1_ps(MAGIC);
        _mm256_sub_ps(_mm256_castsi256_ps(_mm256_dpbusd_epi32(_mm256_castps_si256(m), v, x)), m)
    }
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    #[inline(never)]
    unsafe fn put_cold<L: Unpack, const R: usize, const T: usize>(
        c: &Ctx,
        r0: usize,
        t0: usize,
        outs: &mut [&mut [f32]],
        ro: usize,
        to: usize,
    ) {
        put::<Self, L, R, T>(c, r0, t0, outs, ro, to);
    }
}

/// `task` on the AVX2 dot. SAFETY: avx2, fma and f16c present; see `task`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn task_avx2<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<Avx2, L>(w, a, r0, t0, outs)
}

/// `task` on the AVX-VNNI dot. SAFETY: avx2, fma, f16c and avxvnni present; see `task`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) unsafe fn task_avxvnni<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<AvxVnni, L>(w, a, r0, t0, outs)
}

/// `task` on the AVX512-VNNI dot. SAFETY: avx2, fma, f16c, avx512vnni and avx512vl
/// present; see `task`.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub(crate) unsafe fn task_avx512vnni<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<Avx512Vnni, L>(w, a, r0, t0, outs)
}

/// `task` on the AVX-VNNI dot with GFNI (for layouts whose `Unpack` uses it). SAFETY: as
/// `task_avxvnni`, and gfni present.
#[target_feature(enable = "avx2,fma,f16c,avxvnni,gfni")]
pub(crate) unsafe fn task_avxvnni_gfni<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<AvxVnni, L>(w, a, r0, t0, outs)
}

/// `task` on the AVX512-VNNI dot with GFNI. SAFETY: as `task_avx512vnni`, and gfni present.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,gfni")]
pub(crate) unsafe fn task_avx512vnni_gfni<L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<Avx512Vnni, L>(w, a, r0, t0, outs)
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`).
///
/// SAFETY: inlined into an entry above whose features `D` needs. The asserts check every
/// bound the pointer arithmetic relies on (with `Int4Matrix::new`'s guarantee that its
/// slices fit n, k, g).
#[inline(always)]
unsafe fn task<D: Dot, L: Unpack>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let (rows, toks) = (outs[0].len(), outs.len());
    let (k, g) = (w.k(), w.g());
    let (ng, nb) = (k / g, k / 32);
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 + rows <= w.n() && t0 + toks <= a.t && a.k == k && a.g == g);
    assert!(a.tp == a.t.next_multiple_of(8));
    assert!(a.q.len() == a.t * k && a.d.len() == nb * a.tp);
    assert!(a.sx.len() == ng * a.tp && a.rc.len() == ng * a.tp);
    // Multi-token tiles read 8 tokens' block scales and group sums at once: from
    // t0 % 8 == 0 on, those reads stay below tp.
    assert!(toks == 1 || t0 % 8 == 0);
    let c = Ctx {
        k,
        rb: w.row_bytes(),
        ng,
        nb,
        bpg: g / 32,
        tp: a.tp,
        codes: w.codes().as_ptr(),
        // f16 is a transparent u16.
        scales: w.scales().as_ptr().cast(),
        mins: w.mins().as_ptr().cast(),
        q: a.q.as_ptr(),
        d: a.d.as_ptr(),
        sx: a.sx.as_ptr(),
        rc: a.rc.as_ptr(),
        table: table_vector(w),
    };
    if toks == 1 {
        let mut r = 0;
        while r + 8 <= rows {
            put::<D, L, 8, 1>(&c, r0, t0, outs, r, 0);
            r += 8;
        }
        match rows - r {
            7 => D::put_cold::<L, 7, 1>(&c, r0, t0, outs, r, 0),
            6 => D::put_cold::<L, 6, 1>(&c, r0, t0, outs, r, 0),
            5 => D::put_cold::<L, 5, 1>(&c, r0, t0, outs, r, 0),
            4 => D::put_cold::<L, 4, 1>(&c, r0, t0, outs, r, 0),
            3 => D::put_cold::<L, 3, 1>(&c, r0, t0, outs, r, 0),
            2 => D::put_cold::<L, 2, 1>(&c, r0, t0, outs, r, 0),
            1 => D::put_cold::<L, 1, 1>(&c, r0, t0, outs, r, 0),
            _ => {}
        }
    } else {
        // Tokens outer: 8 tokens' activations stay in L1 while the task's weight rows
        // (in L2) stream past.
        let mut t = 0;
        while t + 8 <= toks {
            for r in 0..rows {
                put::<D, L, 1, 8>(&c, r0, t0, outs, r, t);
            }
            t += 8;
        }
        for r in 0..rows {
            match toks - t {
                7 => D::put_cold::<L, 1, 7>(&c, r0, t0, outs, r, t),
                6 => D::put_cold::<L, 1, 6>(&c, r0, t0, outs, r, t),
                5 => D::put_cold::<L, 1, 5>(&c, r0, t0, outs, r, t),
                4 => D::put_cold::<L, 1, 4>(&c, r0, t0, outs, r, t),
                3 => D::put_cold::<L, 1, 3>(&c, r0, t0, outs, r, t),
                2 => D::put_cold::<L, 1, 2>(&c, r0, t0, outs, r, t),
                1 => D::put_cold::<L, 1, 1>(&c, r0, t0, outs, r, t),
                _ => {}
            }
        }
    }
}

/// A layout's value table as a vector (zero for layouts without one).
#[inline(always)]
pub(crate) unsafe fn table_vector<L: Layout>(w: &GroupedMatrix<L>) -> __m256i {
    match w.table() {
        t if t.len() == 32 => _mm256_loadu_si256(t.as_ptr().cast()),
        _ => _mm256_setzero_si256(),
    }
}

/// Computes the tile at (r0 + ro, t0 + to) and stores it into `outs`.
#[inline(always)]
unsafe fn put<D: Dot, L: Unpack, const R: usize, const T: usize>(
    c: &Ctx,
    r0: usize,
    t0: usize,
    outs: &mut [&mut [f32]],
    ro: usize,
    to: usize,
) {
    let y = tile::<D, L, R, T>(c, r0 + ro, t0 + to);
    if T == 1 {
        let col: [f32; R] = core::array::from_fn(|r| y[r][0]);
        outs[to][ro..ro + R].copy_from_slice(&col);
    } else {
        for (t, out) in outs[to..to + T].iter_mut().enumerate() {
            out[ro] = y[0][t];
        }
    }
}

/// Rows r0..r0+R, tokens t0..t0+T, as [row][token]; R <= 8 and T = 1, or R = 1, T <= 8.
#[inline(always)]
unsafe fn tile<D: Dot, L: Unpack, const R: usize, const T: usize>(c: &Ctx, r0: usize, t0: usize) -> [[f32; T]; R] {
    let (k, rb) = (c.k, c.rb);
    let codes = c.codes.add(r0 * rb);
    let q = c.q.add(t0 * k);

    if T == 1 {
        // The next tile's scales and mins: R*ng f16 each, contiguous.
        let (sc, mn) = (c.scales.wrapping_add((r0 + PREFETCH) * c.ng), c.mins.wrapping_add((r0 + PREFETCH) * c.ng));
        for i in (0..R * c.ng).step_by(32) {
            _mm_prefetch::<_MM_HINT_T0>(sc.wrapping_add(i).cast());
            _mm_prefetch::<_MM_HINT_T0>(mn.wrapping_add(i).cast());
        }
    }
    let mut tot = [[_mm256_setzero_ps(); T]; R];
    // Σ_groups (min · Σx + scale · centred residual), lane = row (T = 1) or token.
    let mut extra = _mm256_setzero_ps();
    // prod[b][lane]: activation scale · group scale of block b0 + b, lane = row (T = 1) or
    // token. Uninitialized (zeroing 2 KB per tile costs more than the tile's products):
    // only entries `products` wrote are read.
    let mut prod = core::mem::MaybeUninit::<[[f32; 8]; CHUNK]>::uninit();
    let prod = prod.as_mut_ptr().cast::<[f32; 8]>();
    // The group of the next block, and how many of its blocks are left.
    let (mut grp, mut left) = (0, c.bpg);
    let mut b0 = 0;
    while b0 < c.nb {
        // nb and CHUNK are even: chunks hold whole 64-input blocks.
        let cnt = CHUNK.min(c.nb - b0);
        products::<R, T>(c, r0, t0, prod, b0, cnt, &mut grp, &mut left, &mut extra);
        for b in (0..cnt).step_by(2) {
            let blk = b0 + b;
            for r in 0..R {
                if T == 1 && b % 4 == 0 {
                    // Prefetching past the matrix is harmless (no fault, no effect).
                    _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add((r + PREFETCH) * rb + blk / 2 * L::BLOCK_BYTES).cast());
                }
                let (lo, hi) = L::unpack(codes.add(r * rb + blk / 2 * L::BLOCK_BYTES), c.table);
                for t in 0..T {
                    let lane = if T == 1 { r } else { t };
                    let x = q.add(t * k + blk * 32);
                    let p = prod.add(b).cast::<f32>().add(lane);
                    dot_block::<D>(lo, x, p, &mut tot[r][t]);
                    dot_block::<D>(hi, x.add(32), p.add(8), &mut tot[r][t]);
                }
            }
        }
        b0 += cnt;
    }
    let mut m = [0.0f32; 8];
    _mm256_storeu_ps(m.as_mut_ptr(), extra);
    let mut res = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(tot[r][t]) + m[if T == 1 { r } else { t }];
        }
    }
    res
}

/// The f16 at `p[r * stride + i]` for rows r < R as f32 lanes (zero past R).
#[inline(always)]
unsafe fn gather_rows<const R: usize>(p: *const u16, stride: usize, i: usize) -> __m256 {
    let h = |r: usize| if r < R { *p.add(r * stride + i) as i16 } else { 0 };
    _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
}

/// Fills `prod[..cnt]` for blocks b0..b0+cnt: one f32 multiply per (block, row or token),
/// the same rounding whichever way the lanes run. `grp` is block b0's group and `left`
/// how many of its blocks remain; both are advanced past the chunk. Each group entered
/// adds min · Σx + scale · centred residual to `extra` (two FMAs, in the same order for
/// either lane layout).
///
/// SAFETY: `prod` is valid for `cnt <= CHUNK` writes of [f32; 8].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn products<const R: usize, const T: usize>(
    c: &Ctx,
    r0: usize,
    t0: usize,
    prod: *mut [f32; 8],
    b0: usize,
    cnt: usize,
    grp: &mut usize,
    left: &mut usize,
    extra: &mut __m256,
) {
    let bpg = c.bpg;
    let (scales, mins) = (c.scales.add(r0 * c.ng), c.mins.add(r0 * c.ng));
    let mut s = lanes_w::<R, T>(scales, c.ng, *grp);
    if *left == bpg {
        enter::<R, T>(c, mins, t0, *grp, s, extra);
    }
    for b in 0..cnt {
        if *left == 0 {
            (*grp, *left) = (*grp + 1, bpg);
            s = lanes_w::<R, T>(scales, c.ng, *grp);
            enter::<R, T>(c, mins, t0, *grp, s, extra);
        }
        _mm256_storeu_ps(prod.add(b).cast(), _mm256_mul_ps(s, lanes_x::<T>(c.d, c.tp, t0, b0 + b)));
        *left -= 1;
    }
}

/// Group `grp`'s `min · Σx + scale · centred residual`, added to `extra` (`s`: the scales).
#[inline(always)]
unsafe fn enter<const R: usize, const T: usize>(c: &Ctx, mins: *const u16, t0: usize, grp: usize, s: __m256, extra: &mut __m256) {
    *extra = _mm256_fmadd_ps(lanes_w::<R, T>(mins, c.ng, grp), lanes_x::<T>(c.sx, c.tp, t0, grp), *extra);
    *extra = _mm256_fmadd_ps(s, lanes_x::<T>(c.rc, c.tp, t0, grp), *extra);
}

/// A weight row's f16 value `i` as f32 lanes: R rows (T = 1, `p` the first row's, rows
/// `stride` apart), or one row's for all tokens.
#[inline(always)]
unsafe fn lanes_w<const R: usize, const T: usize>(p: *const u16, stride: usize, i: usize) -> __m256 {
    if T == 1 {
        gather_rows::<R>(p, stride, i)
    } else {
        _mm256_cvtph_ps(_mm_set1_epi16(*p.add(i) as i16))
    }
}

/// Activation value `i` (a block or group) of a transposed buffer (`i * tp + token`) as
/// lanes: token t0's for all lanes (T = 1), or tokens t0..t0+8.
#[inline(always)]
unsafe fn lanes_x<const T: usize>(p: *const f32, tp: usize, t0: usize, i: usize) -> __m256 {
    if T == 1 {
        _mm256_set1_ps(*p.add(i * tp + t0))
    } else {
        _mm256_loadu_ps(p.add(i * tp + t0))
    }
}

/// acc += f32(Σ quads of codes `v` (32 x u4) · the 32 int8 codes at `x`) · *scale.
#[inline(always)]
unsafe fn dot_block<D: Dot>(v: __m256i, x: *const i8, scale: *const f32, acc: &mut __m256) {
    let p = D::dot(v, _mm256_loadu_si256(x.cast()));
    *acc = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&*scale), *acc);
}
