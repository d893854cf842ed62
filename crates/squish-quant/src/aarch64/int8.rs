//! aarch64 NEON INT8 x f32 kernel for one task of the matmul (a range of rows for a range
//! of tokens). Each 16-weight slice is dequantized (i8 -> i32 -> f32, times the group
//! scale: exactly `dequantize`'s value) and FMA'd into four 4-lane accumulators, summed at
//! the end in a fixed order. Every (row, token) goes through the same operations whatever
//! the task, so results do not depend on batch size or thread count (they differ from the
//! scalar path's sequential sum in the last bits).

use crate::int8::Int8Matrix;
use core::arch::aarch64::*;

/// Fills `outs[i][j]` with W x for row r0 + j and token t0 + i (see `matmul::run`).
///
/// SAFETY: neon present. The asserts check every bound the pointer arithmetic relies on
/// (with `Int8Matrix::new`'s guarantee that its slices fit n, k, g).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn task(w: &Int8Matrix, x: &[f32], r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let rows = outs.first().map_or(0, |o| o.len());
    let (k, g) = (w.k(), w.g());
    assert!(outs.iter().all(|o| o.len() == rows));
    assert!(r0 + rows <= w.n() && (t0 + outs.len()) * k <= x.len());
    assert!(g % 16 == 0 && k % g == 0);
    let ng = k / g;
    for (i, out) in outs.iter_mut().enumerate() {
        let xs = x.as_ptr().add((t0 + i) * k);
        for (j, y) in out.iter_mut().enumerate() {
            let r = r0 + j;
            *y = dot_row(w.codes().as_ptr().add(r * k), &w.scales()[r * ng..(r + 1) * ng], g, xs);
        }
    }
}

/// Σ_c scale(c) · code[c] · x[c] over one row (`scales.len() * g` inputs).
#[inline(always)]
unsafe fn dot_row(codes: *const i8, scales: &[half::f16], g: usize, x: *const f32) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (grp, s) in scales.iter().enumerate() {
        let s = vdupq_n_f32(s.to_f32());
        for i in (grp * g..(grp + 1) * g).step_by(16) {
            let q = vld1q_s8(codes.add(i));
            let (lo, hi) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
            let parts = [vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi)];
            for (p, (a, v)) in parts.into_iter().zip(acc.iter_mut()).enumerate() {
                let wv = vmulq_f32(vcvtq_f32_s32(a), s);
                *v = vfmaq_f32(*v, wv, vld1q_f32(x.add(i + 4 * p)));
            }
        }
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

