//! The x86-64 kernels: AVX2+FMA+F16C, and for INT4 also AVX-VNNI and AVX512-VNNI variants.
//! Every function here is `unsafe`: callers hold the `Isa` variant whose features the
//! function is compiled for (they were detected) and pass slices that fit the shapes.

// Tiles index their [row][token] accumulator arrays by both loop variables.
#![allow(clippy::needless_range_loop)]

pub(crate) mod act;
pub(crate) mod int2;
pub(crate) mod int3;
pub(crate) mod int4;
pub(crate) mod int4_gemm;
pub(crate) mod int4_panels;
pub(crate) mod int8;
pub(crate) mod int8_panels;

use core::arch::x86_64::*;

/// Sum of the 8 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
