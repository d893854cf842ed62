//! INT2: a 2-D vector codebook per matrix. The inputs of every row pair up (2i, 2i+1); each
//! pair's 4-bit code picks one of 16 entries (c0, c1) of the matrix's codebook, and
//! w = scale · (c - 64) with one scale per group of g inputs: 2 bits per weight for the
//! codes, 8 per group for the scale (an 8-bit code on a per-row f16 step), a 32-byte
//! codebook per matrix.
//!
//! The codebook's values are integers in 0..=127 (7 bits) so the tables hold u8 values
//! the integer dots of the grouped kernels take as they are: w = scale · v + min with
//! min = -64 · scale, i.e. INT4's arithmetic on "codes" 0..=127 (`crate::grouped`). The
//! activation residual correction centres them on 64.
//!
//! A matrix is N output rows of K inputs (y = W x). `K % 64 == 0`; g a multiple of 32
//! dividing K.
//! - codes: N * K/64 * 16 bytes, row r at `[r*K/4, (r+1)*K/4)`. Each block of 64 inputs
//!   `[64b, 64b+64)` is 16 bytes: byte p holds the code of pair p of inputs 0..32 of the
//!   block (inputs 2p, 2p+1) in its low nibble and of pair p of inputs 32..64 (inputs
//!   32+2p, 33+2p) in its high nibble.
//! - table: 32 bytes; `table[c]` is entry c's first value (the even input), `table[16+c]`
//!   its second (the odd input).
//! - scales, mins: N*K/g f16 each, what the kernels read; stored (`Int2Quantized`) as one
//!   u8 scale code s8 per group and one f16 step ds per row: scale = f16(ds · s8),
//!   min = f16(-64 · scale) (exact: a power of two).
//!
//! So one 128-bit load broadcast to both lanes, a mask, a shift and two byte shuffles
//! (`vpshufb`) of the table give a 64-input block as two vectors of 32 u8 values, each
//! half's even inputs in lanes 0..16 and odd inputs in lanes 16..32: the SIMD kernels
//! permute each token's activations the same way once per call (`kernel`).
//!
//! Quantizer (`quant`): Hessian-weighted k-means of the normalized pairs (data-free: every
//! input weighs the same), an integer codebook, per-group scale search on the row's grid;
//! with a GPTQ factor, error feedback over the column pairs (each pair's entry chosen
//! jointly, the feedback of both columns pushed onto the later ones).

mod kernel;
pub(crate) mod quant;

pub use crate::grouped::{dequantize, dequantize_row};
pub use crate::int4::{matmul_ref, matmul_ref_q8, GptqFactor};
pub use kernel::{matmul, matmul_scalar};
#[cfg(test)]
pub(crate) use kernel::matmul_with;
pub use quant::{quantize, quantize_gptq, quantize_gptq_passes, quantize_with_error, GPTQ_PASSES};

use crate::error::ShapeError;
use crate::grouped::{GroupedMatrix, Layout};
use half::f16;

/// The INT2 packing of a 64-input block (see the module doc). Its `code` is the position
/// in the table of an input's value: its pair's entry, plus 16 for an odd input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pairs;

impl Layout for Pairs {
    const NAME: &'static str = "int2";
    const MATMUL: &'static str = "int2 matmul";
    const QMAX: u8 = 127;
    const BLOCK_BYTES: usize = 16;
    const CENTER: f32 = 64.0;
    const TABLE: bool = true;

    /// `q`: each input's pair entry (0..16; an input pair's two inputs carry the same).
    fn pack_block(q: &[u8], out: &mut [u8]) {
        for p in 0..16 {
            out[p] = (q[2 * p] & 15) | (q[32 + 2 * p] & 15) << 4;
        }
    }

    #[inline]
    fn code(block: &[u8], j: usize) -> u8 {
        let (half, jj) = (j / 32, j % 32);
        (block[jj / 2] >> (4 * half) & 15) + 16 * (jj % 2) as u8
    }
}

/// A borrowed INT2 matrix (for example slices of an mmapped file), its table included.
pub type Int2Matrix<'a> = GroupedMatrix<'a, Pairs>;

/// The offset of the codebook's values: w = scale · (v - OFFSET).
pub const OFFSET: f32 = 64.0;

/// A view of INT2 parts: `GroupedMatrix::new`'s checks, and a 32-value table in 0..=127.
pub fn matrix<'a>(
    codes: &'a [u8],
    scales: &'a [f16],
    mins: &'a [f16],
    table: &'a [u8],
    n: usize,
    k: usize,
    g: usize,
) -> Result<Int2Matrix<'a>, ShapeError> {
    GroupedMatrix::new(codes, scales, mins, n, k, g)?.with_table(table)
}

/// Packs one row's pair entries (K/2 values, each 0..16) into K/4 bytes.
pub fn pack_row(pairs: &[u8], out: &mut [u8]) {
    for (pb, ob) in pairs.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        for p in 0..16 {
            ob[p] = (pb[p] & 15) | (pb[16 + p] & 15) << 4;
        }
    }
}

/// A row's pair entries (K/2 values) from its packed codes: `pack_row`'s inverse.
pub fn unpack_row(codes: &[u8], out: &mut [u8]) {
    for (ob, cb) in out.chunks_exact_mut(32).zip(codes.chunks_exact(16)) {
        for p in 0..16 {
            ob[p] = cb[p] & 15;
            ob[16 + p] = cb[p] >> 4;
        }
    }
}

/// The f16 scale the kernels read for stored scale code `s8` on step `ds`.
#[inline]
pub(crate) fn scale_of(ds: f32, s8: u8) -> f16 {
    f16::from_f32(ds * s8 as f32)
}

/// The min that goes with a scale: -64 · scale (exact in f16 barring overflow).
#[inline]
pub(crate) fn min_of(scale: f16) -> f16 {
    f16::from_f32(-OFFSET * scale.to_f32())
}

/// The f16 scales and mins of stored INT2 parameters: scale = f16(ds · s8), min =
/// f16(-64 · scale), row r's ds at `steps[r]`.
pub fn expand_params(s8: &[u8], steps: &[f16]) -> Result<(Vec<f16>, Vec<f16>), ShapeError> {
    let n = steps.len();
    if (n == 0 && !s8.is_empty()) || (n > 0 && s8.len() % n != 0) {
        return Err(ShapeError::new(format!(
            "int2 parameters: {} scale codes do not fit {} rows x (k/g) groups",
            s8.len(),
            steps.len()
        )));
    }
    let ng = s8.len() / n.max(1);
    let scales: Vec<f16> = s8.iter().enumerate().map(|(i, &s)| scale_of(steps[i / ng].to_f32(), s)).collect();
    let mins = scales.iter().map(|&s| min_of(s)).collect();
    Ok((scales, mins))
}

/// Multiplies every group's scale by its factor (one per group, row-major as `s8`) and
/// re-encodes them on their rows' grids: a row keeps its step unless a new scale outgrows it
/// (then the step becomes that scale / 255), and each scale code becomes the nearest.
///
/// Panics unless `factors` has one value per scale code and the codes fit `steps`' rows.
pub fn rescale(s8: &mut [u8], steps: &mut [f16], factors: &[f32]) {
    assert_eq!(s8.len(), factors.len(), "int2 rescale: one factor per group");
    let n = steps.len();
    assert!(n > 0 && s8.len() % n == 0, "int2 rescale: {} scale codes for {n} rows", s8.len());
    let ng = s8.len() / n;
    for ((codes, f), step) in s8.chunks_exact_mut(ng).zip(factors.chunks_exact(ng)).zip(steps.iter_mut()) {
        let scaled: Vec<f32> = codes.iter().zip(f).map(|(&c, &f)| scale_of(step.to_f32(), c).to_f32() * f.max(0.0)).collect();
        for (c, q) in codes.iter_mut().zip(crate::params8::regrid(&scaled, step, 255.0)) {
            *c = q.max(0.0) as u8;
        }
    }
}

/// An INT2 matrix as a model file stores it, with the f16 parameters the kernels read.
#[derive(Clone, Debug, PartialEq)]
pub struct Int2Quantized {
    pub(crate) codes: Vec<u8>,
    pub(crate) s8: Vec<u8>,
    pub(crate) steps: Vec<f16>,
    pub(crate) table: [u8; 32],
    pub(crate) scales: Vec<f16>,
    pub(crate) mins: Vec<f16>,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) g: usize,
}

impl Int2Quantized {
    pub fn view(&self) -> Int2Matrix<'_> {
        matrix(&self.codes, &self.scales, &self.mins, &self.table, self.n, self.k, self.g).expect("the quantizer's parts fit")
    }
    pub fn table(&self) -> &[u8; 32] {
        &self.table
    }
    /// The stored parts: codes, scale codes, per-row steps, table.
    pub fn into_stored(self) -> (Vec<u8>, Vec<u8>, Vec<f16>, [u8; 32]) {
        (self.codes, self.s8, self.steps, self.table)
    }
}
