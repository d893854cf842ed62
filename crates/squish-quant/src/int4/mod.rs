//! INT4: asymmetric group-wise 4-bit weights. Owns the layout (the borrowed view that
//! validates it, the owned result of quantizing, packing and unpacking) and dequantization.
//!
//! A matrix is N output rows of K inputs (y = W x). `K % 64 == 0`; the group size g is a
//! multiple of 32 dividing K.
//! - codes: N*K/2 bytes, row r at `[r*K/2, (r+1)*K/2)`. Each block of 64 inputs
//!   `[64b, 64b+64)` is 32 bytes, byte j = `q[64b+j] | q[64b+32+j] << 4`: low nibbles hold
//!   inputs 0..32 of the block, high nibbles inputs 32..64, so one 256-bit load plus a
//!   mask and a shift gives two vectors of 32 consecutive codes.
//! - scales, mins: N*K/g f16 each, row-major (group index fastest).
//! - w = scale * q + min, q in 0..=15. Bits per weight: 4 + 32/g.

mod gptq;
mod kernel;
mod quant;
mod reference;

pub use gptq::{quantize_gptq, GptqFactor};
pub use kernel::{matmul, matmul_scalar, matmul_with_panels, Int4Panels};
#[cfg(test)]
pub(crate) use kernel::matmul_with;
pub use quant::{quantize, quantize_minmax, quantize_with_error};
pub use reference::{matmul_ref, matmul_ref_q8};

use crate::error::{checked_len, ShapeError};
use half::f16;

/// A borrowed INT4 matrix (for example slices of an mmapped file). Only `new` builds one,
/// so every view's slices fit its shape; the kernels rely on that.
#[derive(Clone, Copy, Debug)]
pub struct Int4Matrix<'a> {
    codes: &'a [u8],
    scales: &'a [f16],
    mins: &'a [f16],
    n: usize,
    k: usize,
    g: usize,
}

impl<'a> Int4Matrix<'a> {
    /// Checks the slices against the shape: `k` a positive multiple of 64, `g` a positive
    /// multiple of 32 dividing `k`, `codes.len() == n*k/2`, `scales.len() == mins.len() ==
    /// n*k/g`.
    pub fn new(
        codes: &'a [u8],
        scales: &'a [f16],
        mins: &'a [f16],
        n: usize,
        k: usize,
        g: usize,
    ) -> Result<Self, ShapeError> {
        check_shape(k, g)?;
        let want_codes = checked_len(n, k / 2, "int4 codes")?;
        let want_groups = checked_len(n, k / g, "int4 groups")?;
        if codes.len() != want_codes {
            return Err(ShapeError::new(format!(
                "int4 codes: {} bytes, expected n*k/2 = {n}*{k}/2 = {want_codes}",
                codes.len()
            )));
        }
        for (what, len) in [("scales", scales.len()), ("mins", mins.len())] {
            if len != want_groups {
                return Err(ShapeError::new(format!(
                    "int4 {what}: {len} values, expected n*k/g = {n}*{k}/{g} = {want_groups}"
                )));
            }
        }
        Ok(Self { codes, scales, mins, n, k, g })
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn g(&self) -> usize {
        self.g
    }
    pub fn codes(&self) -> &'a [u8] {
        self.codes
    }
    pub fn scales(&self) -> &'a [f16] {
        self.scales
    }
    pub fn mins(&self) -> &'a [f16] {
        self.mins
    }
    /// Bytes a matmul reads: codes, scales and mins.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }
    /// Storage cost of the scheme at group size `g`.
    pub fn bits_per_weight(g: usize) -> f64 {
        4.0 + 32.0 / g as f64
    }

    /// Code of input `c` in row `r` (the layout's definition, used by the references).
    #[inline]
    pub(crate) fn code(&self, r: usize, c: usize) -> u8 {
        let byte = self.codes[r * self.k / 2 + (c / 64) * 32 + c % 32];
        if c % 64 < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

pub(crate) fn check_shape(k: usize, g: usize) -> Result<(), ShapeError> {
    if k == 0 || k % 64 != 0 {
        return Err(ShapeError::new(format!("int4: k = {k} must be a positive multiple of 64")));
    }
    if g == 0 || g % 32 != 0 || k % g != 0 {
        return Err(ShapeError::new(format!(
            "int4: group size g = {g} must be a positive multiple of 32 dividing k = {k}"
        )));
    }
    Ok(())
}

/// A quantized matrix owning its storage (what the quantizer returns and a converter
/// writes). Its parts always fit its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Owned {
    codes: Vec<u8>,
    scales: Vec<f16>,
    mins: Vec<f16>,
    n: usize,
    k: usize,
    g: usize,
}

impl Int4Owned {
    /// Takes ownership of parts, with `Int4Matrix::new`'s checks.
    pub fn from_parts(
        codes: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        n: usize,
        k: usize,
        g: usize,
    ) -> Result<Self, ShapeError> {
        Int4Matrix::new(&codes, &scales, &mins, n, k, g)?;
        Ok(Self { codes, scales, mins, n, k, g })
    }

    pub fn view(&self) -> Int4Matrix<'_> {
        let Self { n, k, g, .. } = *self;
        Int4Matrix { codes: &self.codes, scales: &self.scales, mins: &self.mins, n, k, g }
    }

    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }
    pub fn mins(&self) -> &[f16] {
        &self.mins
    }
    pub fn into_parts(self) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        (self.codes, self.scales, self.mins)
    }
}

/// Packs one row's K codes (each 0..=15) into K/2 bytes of the layout above.
pub(crate) fn pack_row(q: &[u8], out: &mut [u8]) {
    for (qb, ob) in q.chunks_exact(64).zip(out.chunks_exact_mut(32)) {
        for j in 0..32 {
            ob[j] = qb[j] | (qb[32 + j] << 4);
        }
    }
}

/// The dequantized weight; every path (dequantize, references, the quantizer's error)
/// uses this exact f32 expression.
#[inline(always)]
pub(crate) fn dequant(scale: f32, min: f32, q: u8) -> f32 {
    scale * q as f32 + min
}

/// Row `r` of `w` as f32 into `out` (length k); for example an embedding lookup.
///
/// Panics if `r >= w.n()` or `out.len() != w.k()`.
pub fn dequantize_row(w: &Int4Matrix, r: usize, out: &mut [f32]) {
    assert!(r < w.n, "int4 dequantize_row: row {r} of {}", w.n);
    assert_eq!(out.len(), w.k, "int4 dequantize_row: out length");
    let ng = w.k / w.g;
    let codes = &w.codes[r * w.k / 2..(r + 1) * w.k / 2];
    for (b, (ob, cb)) in out.chunks_exact_mut(64).zip(codes.chunks_exact(32)).enumerate() {
        for j in 0..64 {
            let c = b * 64 + j;
            let gi = r * ng + c / w.g;
            let (s, m) = (w.scales[gi].to_f32(), w.mins[gi].to_f32());
            let q = if j < 32 { cb[j] & 0x0F } else { cb[j - 32] >> 4 };
            ob[j] = dequant(s, m, q);
        }
    }
}

/// The whole matrix as f32, n x k row-major: the scalar definition of the layout.
pub fn dequantize(w: &Int4Matrix) -> Vec<f32> {
    let mut out = vec![0.0; w.n * w.k];
    for (r, row) in out.chunks_exact_mut(w.k).enumerate() {
        dequantize_row(w, r, row);
    }
    out
}
