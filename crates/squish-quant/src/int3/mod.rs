//! INT3: asymmetric group-wise 3-bit weights, w = scale · q + min with q in 0..=7 and an
//! f16 scale and min per group of g inputs: INT4's scheme (`crate::grouped`) at 3 bits, with
//! its quantizers (clipping search, GPTQ) and kernels run on a denser packing.
//!
//! A matrix is N output rows of K inputs (y = W x). `K % 64 == 0`; g a multiple of 32
//! dividing K. Bits per weight: 3 + 32/g (3.5 at g = 64, 3.33 at g = 96).
//! - codes: N * K/64 * 24 bytes, row r at `[r*3K/8, (r+1)*3K/8)`. Each block of 64 inputs
//!   `[64b, 64b+64)` is 24 bytes in two bit planes:
//!   - bytes 0..16, the low two bits: byte j = `q[j]&3 | (q[16+j]&3)<<2 | (q[32+j]&3)<<4 |
//!     (q[48+j]&3)<<6` (q indexed within the block);
//!   - bytes 16..24, the high bit: bit i of byte 16+j = `q[8i+j] >> 2`.
//!
//!   So a 128-bit broadcast and a variable shift per 64-bit lane give 32 consecutive
//!   low-bit pairs, and a 64-bit broadcast and a variable shift their high bits: a few
//!   shifts and masks per 64 weights, no lookups (see `x86::int3`).
//! - scales, mins: N*K/g f16 each, row-major (group index fastest): what the kernels read.
//!   Stored (`Int3Quantized`), they are 8-bit codes on per-row grids: scale = f16(ds · s8)
//!   with s8 in 0..=255, min = f16(dm · m8) with m8 in -127..=127, ds and dm one f16 pair
//!   per row, so a model file spends 3 + 16/g + 32/K bits per weight (3.31 at g = 64,
//!   K = 576). `expand_params` turns them back into the f16 values, bit for bit the ones
//!   the quantizer chose its codes for (`crate::params8`, shared with INT4's variant).

mod kernel;

pub use crate::grouped::{dequantize, dequantize_row};
pub use crate::params8::expand_params;
pub use crate::int4::{matmul_ref, matmul_ref_q8, GptqFactor};
pub use kernel::{matmul, matmul_scalar};
#[cfg(test)]
pub(crate) use kernel::matmul_with;

use crate::fit::Search;
use crate::grouped::{GroupedMatrix, GroupedOwned, Layout};
use crate::params8::{self, Stored};

/// The INT3 packing of a 64-input block (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes;

impl Layout for Planes {
    const NAME: &'static str = "int3";
    const MATMUL: &'static str = "int3 matmul";
    const QMAX: u8 = 7;
    const BLOCK_BYTES: usize = 24;
    const CENTER: f32 = 3.5;

    fn pack_block(q: &[u8], out: &mut [u8]) {
        for j in 0..16 {
            out[j] = (q[j] & 3) | (q[16 + j] & 3) << 2 | (q[32 + j] & 3) << 4 | (q[48 + j] & 3) << 6;
        }
        for j in 0..8 {
            out[16 + j] = (0..8).fold(0u8, |acc, i| acc | (q[8 * i + j] >> 2 & 1) << i);
        }
    }

    #[inline]
    fn code(block: &[u8], j: usize) -> u8 {
        let lo = block[j % 16] >> (2 * (j / 16)) & 3;
        let hi = block[16 + j % 8] >> (j / 8) & 1;
        lo | hi << 2
    }
}

/// A borrowed INT3 matrix (for example slices of an mmapped file).
pub type Int3Matrix<'a> = GroupedMatrix<'a, Planes>;
/// An INT3 matrix owning its storage.
pub type Int3Owned = GroupedOwned<Planes>;

/// Packs one row's K codes (each 0..=7) into 3K/8 bytes of the layout above.
pub fn pack_row(q: &[u8], out: &mut [u8]) {
    crate::grouped::pack_row::<Planes>(q, out)
}

/// An INT3 matrix as a model file stores it: the matrix and its rows' 8-bit parameter grids
/// (see `params8`).
pub type Int3Quantized = Stored<Planes>;

/// Quantizes `w` (n x k row-major) to INT3 with group size `g`: `int4::quantize`'s
/// clipping search with codes 0..=7 (same arguments, panics and parallelism), its
/// parameters on 8-bit grids (`params8`).
pub fn quantize(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> Int3Quantized {
    quantize_with_error(w, n, k, g, importance).0
}

/// `quantize`, also returning the weighted squared error Σ h_c (w - ŵ)² of what it stored.
pub fn quantize_with_error(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> (Int3Quantized, f64) {
    params8::quantize::<Planes>(w, n, k, g, importance, Search::Clip)
}

/// Plain min/max rounding: the baseline the search is measured against.
pub fn quantize_minmax(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> (Int3Quantized, f64) {
    params8::quantize::<Planes>(w, n, k, g, importance, Search::MinMax)
}

/// INT3 with GPTQ error feedback: `int4::quantize_gptq` with codes 0..=7, its parameters
/// on 8-bit grids.
pub fn quantize_gptq(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor) -> Int3Quantized {
    params8::quantize_gptq::<Planes>(w, n, k, g, factor)
}
