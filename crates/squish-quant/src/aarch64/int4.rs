//! aarch64 INT4 x int8 kernel for one task of the matmul (a range of rows for a range of
//! tokens). Per (row, token) it runs exactly the float operations of the scalar path
//! (`int4::kernel::scalar_dot`), in the same order, and only forms each 32-input block's
//! integer dot with NEON: `sdot` (dotprod) or `smull` + `sadalp` (plain NEON), the same
//! exact i32 sums. So its results are bit-identical to the scalar path's, whatever the
//! batch or thread count.
//!
//! Codes are 0..=15, so they are valid i8 and the signed dots apply directly:
//! |Σ| <= 32 · 15 · 127 = 60960, far from overflowing an i32 lane (or the i16 products of
//! `smull`, at most 15 · 127 = 1905, paired by `sadalp` into i32).

use crate::act::ActQ8;
use crate::int4::Int4Matrix;
use core::arch::aarch64::*;

/// The integer dots of one 64-input block: codes (32 packed bytes: low nibbles inputs
/// 0..32, high nibbles 32..64) against 64 int8 activations.
pub(crate) trait Dot {
    /// (Σ over inputs 0..32, Σ over inputs 32..64) of code · activation.
    unsafe fn dot64(codes: *const u8, x: *const i8) -> (i32, i32);
}

/// `sdot` (FEAT_DotProd, ARMv8.2+: Cortex-A76+, Neoverse N1+, Apple M1+).
pub(crate) struct DotProd;
/// `smull`/`smull2` + `sadalp`: baseline ARMv8 NEON.
pub(crate) struct Neon;

/// The two 16-byte halves of 32 packed code bytes as (low nibbles, high nibbles) x 2.
#[inline(always)]
unsafe fn unpack(codes: *const u8) -> [int8x16_t; 4] {
    let mask = vdupq_n_u8(0x0F);
    let (v0, v1) = (vld1q_u8(codes), vld1q_u8(codes.add(16)));
    [
        vreinterpretq_s8_u8(vandq_u8(v0, mask)),
        vreinterpretq_s8_u8(vandq_u8(v1, mask)),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0)),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(v1)),
    ]
}

/// acc += 4-wide dots of a and b (`sdot`).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes only these registers; the enclosing function is
    // compiled with (and only called after detecting) dotprod.
    core::arch::asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

impl Dot for DotProd {
    #[inline(always)]
    unsafe fn dot64(codes: *const u8, x: *const i8) -> (i32, i32) {
        let [l0, l1, h0, h1] = unpack(codes);
        let z = vdupq_n_s32(0);
        let lo = sdot(sdot(z, l0, vld1q_s8(x)), l1, vld1q_s8(x.add(16)));
        let hi = sdot(sdot(z, h0, vld1q_s8(x.add(32))), h1, vld1q_s8(x.add(48)));
        (vaddvq_s32(lo), vaddvq_s32(hi))
    }
}

/// acc += pairwise sums of a · b (16 products).
#[inline(always)]
unsafe fn mul_pairs(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    vpadalq_s16(acc, vmull_high_s8(a, b))
}

impl Dot for Neon {
    #[inline(always)]
    unsafe fn dot64(codes: *const u8, x: *const i8) -> (i32, i32) {
        let [l0, l1, h0, h1] = unpack(codes);
        let z = vdupq_n_s32(0);
        let lo = mul_pairs(mul_pairs(z, l0, vld1q_s8(x)), l1, vld1q_s8(x.add(16)));
        let hi = mul_pairs(mul_pairs(z, h0, vld1q_s8(x.add(32))), h1, vld1q_s8(x.add(48)));
        (vaddvq_s32(lo), vaddvq_s32(hi))
    }
}

/// `task` on `sdot`. SAFETY: neon and dotprod present; see `task`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn task_dotprod(w: &Int4Matrix, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<DotProd>(w, a, r0, t0, outs)
}

/// `task` on `smull` + `sadalp`. SAFETY: neon present; see `task`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn task_neon(w: &Int4Matrix, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    task::<Neon>(w, a, r0, t0, outs)
}

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`).
///
/// SAFETY: inlined into an entry above whose features `D` needs. The asserts check every
/// bound the pointer arithmetic relies on (with `Int4Matrix::new`'s guarantee that its
/// slices fit n, k, g).
#[inline(always)]
unsafe fn task<D: Dot>(w: &Int4Matrix, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let rows = outs.first().map_or(0, |o| o.len());
    let (k, g) = (w.k(), w.g());
    let (ng, nb, bpg) = (k / g, k / 32, g / 32);
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 + rows <= w.n() && t0 + outs.len() <= a.t && a.k == k && a.g == g);
    assert!(a.q.len() == a.t * k && a.dtok.len() == a.t * nb);
    assert!(a.sxtok.len() == a.t * ng && a.rctok.len() == a.t * ng);
    assert!(k % 64 == 0 && g % 32 == 0 && k % g == 0);
    // Per (row, token): the block sums of one 64-input block at a time, then the scalar
    // path's float operations in its order.
    // The block sums of one (row, token): on the stack for K up to 16384, else on the heap.
    let (mut stack, mut heap) = ([0i32; STACK_BLOCKS], Vec::new());
    let isums: &mut [i32] = if nb <= STACK_BLOCKS {
        &mut stack[..nb]
    } else {
        heap.resize(nb, 0);
        &mut heap
    };
    for (i, out) in outs.iter_mut().enumerate() {
        let tok = t0 + i;
        let q = a.q.as_ptr().add(tok * k);
        let d = &a.dtok[tok * nb..(tok + 1) * nb];
        let (sx, rc) = (&a.sxtok[tok * ng..(tok + 1) * ng], &a.rctok[tok * ng..(tok + 1) * ng]);
        for (j, y) in out.iter_mut().enumerate() {
            let r = r0 + j;
            let codes = w.codes().as_ptr().add(r * k / 2);
            for b2 in 0..nb / 2 {
                let (lo, hi) = D::dot64(codes.add(b2 * 32), q.add(b2 * 64));
                isums[2 * b2] = lo;
                isums[2 * b2 + 1] = hi;
            }
            let (scales, mins) = (&w.scales()[r * ng..(r + 1) * ng], &w.mins()[r * ng..(r + 1) * ng]);
            let mut acc_y = 0.0f32;
            for grp in 0..ng {
                let mut acc = 0.0f32;
                for blk in grp * bpg..(grp + 1) * bpg {
                    acc += isums[blk] as f32 * d[blk];
                }
                acc_y += (acc + rc[grp]) * scales[grp].to_f32() + mins[grp].to_f32() * sx[grp];
            }
            *y = acc_y;
        }
    }
}

/// 32-input blocks whose sums fit on the stack (2 KB: K up to 16384).
const STACK_BLOCKS: usize = 512;
