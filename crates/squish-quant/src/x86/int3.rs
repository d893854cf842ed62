//! INT3's bit planes as vectors for the shared tile kernel (`x86::int4`): per 64-input
//! block, the low-bit plane (16 bytes) is broadcast to both 128-bit lanes and shifted per
//! 64-bit lane by 0/2 (inputs 0..32) or 4/6 (inputs 32..64); the high-bit plane (8 bytes)
//! is broadcast to every 64-bit lane and shifted by the lane's plane index; masks and one
//! shift put the high bit at bit 2. Ten shifts, masks and ORs per 64 codes; `PlanesGfni`
//! does the same with four GFNI affine transforms and two ORs.

use super::int4::Unpack;
use crate::grouped::Layout;
use crate::int3::Planes;
use core::arch::x86_64::*;

impl Unpack for Planes {
    #[inline(always)]
    unsafe fn unpack(p: *const u8, _table: __m256i) -> (__m256i, __m256i) {
        let (three, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
        let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let hi = _mm256_set1_epi64x(core::ptr::read_unaligned(p.add(16).cast::<i64>()));
        let lo_a = _mm256_and_si256(_mm256_srlv_epi64(lo, _mm256_setr_epi64x(0, 0, 2, 2)), three);
        let lo_b = _mm256_and_si256(_mm256_srlv_epi64(lo, _mm256_setr_epi64x(4, 4, 6, 6)), three);
        let hi_a = _mm256_and_si256(_mm256_srlv_epi64(hi, _mm256_setr_epi64x(0, 1, 2, 3)), one);
        let hi_b = _mm256_and_si256(_mm256_srlv_epi64(hi, _mm256_setr_epi64x(4, 5, 6, 7)), one);
        // The high bits are 0 or 1 per byte: a 16-bit shift by 2 cannot carry across bytes.
        let a = _mm256_or_si256(lo_a, _mm256_slli_epi16::<2>(hi_a));
        let b = _mm256_or_si256(lo_b, _mm256_slli_epi16::<2>(hi_b));
        (a, b)
    }
}

/// The same unpacking with GFNI: one affine bit-matrix transform per 64-bit lane (each lane
/// its own 8x8 matrix) does a shift and a mask at once, so 64 codes take four transforms and
/// two ORs. The kernels take it where the CPU has GFNI (`int3::kernel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanesGfni;

impl Layout for PlanesGfni {
    const NAME: &'static str = Planes::NAME;
    const MATMUL: &'static str = Planes::MATMUL;
    const QMAX: u8 = Planes::QMAX;
    const BLOCK_BYTES: usize = Planes::BLOCK_BYTES;
    const CENTER: f32 = Planes::CENTER;

    fn pack_block(q: &[u8], out: &mut [u8]) {
        Planes::pack_block(q, out)
    }

    fn code(block: &[u8], j: usize) -> u8 {
        Planes::code(block, j)
    }
}

/// The affine matrix (as `gf2p8affine`'s qword) whose output bit `i` is input bit
/// `from[i]` (None: 0).
const fn bit_matrix(from: [Option<u32>; 8]) -> i64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < 8 {
        if let Some(s) = from[i] {
            m |= (1u64 << s) << (8 * (7 - i));
        }
        i += 1;
    }
    m as i64
}

/// Low-plane pair (bits s, s+1) to bits 0, 1.
const fn pair(s: u32) -> i64 {
    bit_matrix([Some(s), Some(s + 1), None, None, None, None, None, None])
}

/// High-plane bit s to bit 2.
const fn high(s: u32) -> i64 {
    bit_matrix([None, None, Some(s), None, None, None, None, None])
}

impl Unpack for PlanesGfni {
    #[inline(always)]
    unsafe fn unpack(p: *const u8, _table: __m256i) -> (__m256i, __m256i) {
        let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let hi = _mm256_set1_epi64x(core::ptr::read_unaligned(p.add(16).cast::<i64>()));
        let m = |a: i64, b: i64, c: i64, d: i64| _mm256_setr_epi64x(a, b, c, d);
        let lo_a = _mm256_gf2p8affine_epi64_epi8::<0>(lo, m(pair(0), pair(0), pair(2), pair(2)));
        let lo_b = _mm256_gf2p8affine_epi64_epi8::<0>(lo, m(pair(4), pair(4), pair(6), pair(6)));
        let hi_a = _mm256_gf2p8affine_epi64_epi8::<0>(hi, m(high(0), high(1), high(2), high(3)));
        let hi_b = _mm256_gf2p8affine_epi64_epi8::<0>(hi, m(high(4), high(5), high(6), high(7)));
        (_mm256_or_si256(lo_a, hi_a), _mm256_or_si256(lo_b, hi_b))
    }
}
