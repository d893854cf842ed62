//! AVX2 activation quantization: `act::quantize_token_scalar`'s codes and scales, bit for
//! bit (same max, same f32 scale and inverse, same ties-to-even rounding); the group sums
//! and residuals may differ from the scalar ones in the last bits (summation order).

use crate::act::{block_scale, TokenOut};
use core::arch::x86_64::*;

/// SAFETY: avx2 present; `x.len() == out.q.len() == k` with k % 32 == 0,
/// `out.d.len() == k/32`, `out.sx.len() == out.rc.len() == k/g`, g % 32 == 0.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_token(x: &[f32], g: usize, out: TokenOut) {
    let TokenOut { q, d, sx, rc, center } = out;
    let bpg = g / 32;
    let nb = x.len() / 32;
    assert!(q.len() == x.len() && d.len() == nb && sx.len() == nb / bpg && rc.len() == nb / bpg);
    sx.fill(0.0);
    rc.fill(0.0);
    let sign = _mm256_set1_ps(-0.0);
    // packs_epi32 then packs_epi16 interleave 128-bit lanes; this puts the dwords back.
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let p = x.as_ptr().add(b * 32);
        let v0 = _mm256_loadu_ps(p);
        let v1 = _mm256_loadu_ps(p.add(8));
        let v2 = _mm256_loadu_ps(p.add(16));
        let v3 = _mm256_loadu_ps(p.add(24));
        let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
        let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3));
        let m = _mm256_max_ps(m01, m23);
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let (db, id) = block_scale(_mm_cvtss_f32(m));
        d[b] = db;
        let (idv, dv) = (_mm256_set1_ps(id), _mm256_set1_ps(db));
        let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv));
        let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv));
        let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv));
        let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
        let lo = _mm256_packs_epi32(i0, i1);
        let hi = _mm256_packs_epi32(i2, i3);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
        _mm256_storeu_si256(q.as_mut_ptr().add(b * 32).cast(), bytes);
        let s = _mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3));
        let r01 = _mm256_add_ps(residual(v0, i0, dv), residual(v1, i1, dv));
        let res = _mm256_add_ps(r01, _mm256_add_ps(residual(v2, i2, dv), residual(v3, i3, dv)));
        sx[b / bpg] += super::hsum(s);
        rc[b / bpg] += center * super::hsum(res);
    }
}

/// x - d·q̂ (the scalar version's `xv - db * r`: a multiply, then a subtract).
#[inline(always)]
unsafe fn residual(x: __m256, q: __m256i, d: __m256) -> __m256 {
    _mm256_sub_ps(x, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)))
}
