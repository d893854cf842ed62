//! INT2's codes as vectors for the shared tile kernel (`x86::int4`): a 64-input block's 16
//! bytes broadcast to both 128-bit lanes; the low nibbles (pairs of inputs 0..32) and the
//! high nibbles (pairs of inputs 32..64) each index the 32-byte table with one `vpshufb`,
//! whose low lane reads the entries' first values and high lane their second. So each half
//! comes out as its 16 even inputs then its 16 odd ones (the order `int2::kernel` permutes
//! the activations into): a load, two masks, a shift and two shuffles per 64 values.

use super::int4::Unpack;
use crate::int2::Pairs;
use core::arch::x86_64::*;

impl Unpack for Pairs {
    #[inline(always)]
    unsafe fn unpack(p: *const u8, table: __m256i) -> (__m256i, __m256i) {
        let mask = _mm256_set1_epi8(0x0F);
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let lo = _mm256_and_si256(v, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
        (_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi))
    }
}
