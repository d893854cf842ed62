//! INT4: asymmetric group-wise 4-bit weights. Owns the nibble packing (`Nibbles`; the view,
//! owned matrix and dequantization are `crate::grouped`'s, shared with INT3), and the
//! quantizers, references and kernels INT3 reuses with its own packing.
//!
//! A matrix is N output rows of K inputs (y = W x). `K % 64 == 0`; the group size g is a
//! multiple of 32 dividing K.
//! - codes: N*K/2 bytes, row r at `[r*K/2, (r+1)*K/2)`. Each block of 64 inputs
//!   `[64b, 64b+64)` is 32 bytes, byte j = `q[64b+j] | q[64b+32+j] << 4`: low nibbles hold
//!   inputs 0..32 of the block, high nibbles inputs 32..64, so one 256-bit load plus a
//!   mask and a shift gives two vectors of 32 consecutive codes.
//! - scales, mins: N*K/g f16 each, row-major (group index fastest).
//! - w = scale * q + min, q in 0..=15. Bits per weight: 4 + 32/g.

pub(crate) mod gptq;
pub(crate) mod kernel;
pub(crate) mod quant;
mod reference;

pub use gptq::{quantize_gptq, GptqFactor};
pub use kernel::{matmul, matmul_many_with_panels, matmul_scalar, matmul_with_panels, panels_read_for, Int4Panels};
#[cfg(test)]
pub(crate) use kernel::matmul_with;
pub use quant::{quantize, quantize_minmax, quantize_with_error};
pub use reference::{matmul_ref, matmul_ref_q8};

pub use crate::grouped::{dequantize, dequantize_row};

use crate::grouped::{GroupedMatrix, GroupedOwned, Layout};

/// The INT4 packing of a 64-input block (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nibbles;

impl Layout for Nibbles {
    const NAME: &'static str = "int4";
    const MATMUL: &'static str = "int4 matmul";
    const QMAX: u8 = 15;
    const BLOCK_BYTES: usize = 32;
    const CENTER: f32 = crate::act::CODE_CENTER;

    fn pack_block(q: &[u8], out: &mut [u8]) {
        for j in 0..32 {
            out[j] = q[j] | (q[32 + j] << 4);
        }
    }

    #[inline]
    fn code(block: &[u8], j: usize) -> u8 {
        if j < 32 {
            block[j] & 0x0F
        } else {
            block[j - 32] >> 4
        }
    }
}

/// An INT4 matrix with its parameters on 8-bit grids (`crate::params8`): 4.25 + 32/K bits
/// per weight at g = 64.
pub type Int4Quantized = crate::params8::Stored<Nibbles>;

/// `quantize` with the parameters on 8-bit grids.
pub fn quantize_p8(w: &[f32], n: usize, k: usize, g: usize, importance: Option<&[f32]>) -> Int4Quantized {
    crate::params8::quantize::<Nibbles>(w, n, k, g, importance, crate::fit::Search::Clip).0
}

/// `quantize_gptq` with the parameters on 8-bit grids.
pub fn quantize_gptq_p8(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor) -> Int4Quantized {
    crate::params8::quantize_gptq::<Nibbles>(w, n, k, g, factor)
}

/// A borrowed INT4 matrix (for example slices of an mmapped file).
pub type Int4Matrix<'a> = GroupedMatrix<'a, Nibbles>;
/// An INT4 matrix owning its storage.
pub type Int4Owned = GroupedOwned<Nibbles>;

/// Packs one row's K codes (each 0..=15) into K/2 bytes of the layout above.
#[cfg(test)]
pub(crate) fn pack_row(q: &[u8], out: &mut [u8]) {
    crate::grouped::pack_row::<Nibbles>(q, out)
}
