//! INT8: symmetric group-wise 8-bit weights. Owns the layout (the borrowed view that
//! validates it, the owned result of quantizing) and dequantization.
//!
//! A matrix is N output rows of K inputs (y = W x). `K % 32 == 0`; the group size g is a
//! multiple of 32 dividing K.
//! - codes: N*K i8, row-major, each in -127..=127.
//! - scales: N*K/g f16, row-major (group index fastest).
//! - w = scale * q. Bits per weight: 8 + 16/g.

mod kernel;
mod quant;
mod reference;
#[cfg(target_arch = "x86_64")]
pub(crate) mod residual;

pub use kernel::{matmul, matmul_scalar, matmul_with_panels, Int8Panels};
#[cfg(test)]
pub(crate) use kernel::matmul_with;
pub use quant::{quantize, quantize_absmax, quantize_with_error};
pub use reference::matmul_ref;

use crate::error::{checked_len, ShapeError};
use half::f16;

/// A borrowed INT8 matrix (for example slices of an mmapped file). Only `new` builds one,
/// so every view's slices fit its shape; the kernels rely on that.
#[derive(Clone, Copy, Debug)]
pub struct Int8Matrix<'a> {
    codes: &'a [i8],
    scales: &'a [f16],
    n: usize,
    k: usize,
    g: usize,
}

impl<'a> Int8Matrix<'a> {
    /// Checks the slices against the shape: `k` a positive multiple of 32, `g` a positive
    /// multiple of 32 dividing `k`, `codes.len() == n*k`, `scales.len() == n*k/g`.
    pub fn new(codes: &'a [i8], scales: &'a [f16], n: usize, k: usize, g: usize) -> Result<Self, ShapeError> {
        check_shape(k, g)?;
        let want_codes = checked_len(n, k, "int8 codes")?;
        let want_groups = checked_len(n, k / g, "int8 groups")?;
        if codes.len() != want_codes {
            return Err(ShapeError::new(format!(
                "int8 codes: {} values, expected n*k = {n}*{k} = {want_codes}",
                codes.len()
            )));
        }
        if scales.len() != want_groups {
            return Err(ShapeError::new(format!(
                "int8 scales: {} values, expected n*k/g = {n}*{k}/{g} = {want_groups}",
                scales.len()
            )));
        }
        Ok(Self { codes, scales, n, k, g })
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
    pub fn codes(&self) -> &'a [i8] {
        self.codes
    }
    pub fn scales(&self) -> &'a [f16] {
        self.scales
    }
    /// Bytes a matmul reads: codes and scales.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * self.scales.len()
    }
    /// Storage cost of the scheme at group size `g`.
    pub fn bits_per_weight(g: usize) -> f64 {
        8.0 + 16.0 / g as f64
    }
}

pub(crate) fn check_shape(k: usize, g: usize) -> Result<(), ShapeError> {
    if k == 0 || k % 32 != 0 {
        return Err(ShapeError::new(format!("int8: k = {k} must be a positive multiple of 32")));
    }
    if g == 0 || g % 32 != 0 || k % g != 0 {
        return Err(ShapeError::new(format!(
            "int8: group size g = {g} must be a positive multiple of 32 dividing k = {k}"
        )));
    }
    Ok(())
}

/// A quantized matrix owning its storage (what the quantizer returns and a converter
/// writes). Its parts always fit its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Owned {
    codes: Vec<i8>,
    scales: Vec<f16>,
    n: usize,
    k: usize,
    g: usize,
}

impl Int8Owned {
    /// Takes ownership of parts, with `Int8Matrix::new`'s checks.
    pub fn from_parts(codes: Vec<i8>, scales: Vec<f16>, n: usize, k: usize, g: usize) -> Result<Self, ShapeError> {
        Int8Matrix::new(&codes, &scales, n, k, g)?;
        Ok(Self { codes, scales, n, k, g })
    }

    pub fn view(&self) -> Int8Matrix<'_> {
        let Self { n, k, g, .. } = *self;
        Int8Matrix { codes: &self.codes, scales: &self.scales, n, k, g }
    }

    pub fn codes(&self) -> &[i8] {
        &self.codes
    }
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }
    pub fn into_parts(self) -> (Vec<i8>, Vec<f16>) {
        (self.codes, self.scales)
    }
}

/// The dequantized weight; every path uses this exact f32 expression.
#[inline(always)]
pub(crate) fn dequant(scale: f32, q: i8) -> f32 {
    scale * q as f32
}

/// Row `r` of `w` as f32 into `out` (length k); for example an embedding lookup.
///
/// Panics if `r >= w.n()` or `out.len() != w.k()`.
pub fn dequantize_row(w: &Int8Matrix, r: usize, out: &mut [f32]) {
    assert!(r < w.n, "int8 dequantize_row: row {r} of {}", w.n);
    assert_eq!(out.len(), w.k, "int8 dequantize_row: out length");
    let ng = w.k / w.g;
    let codes = &w.codes[r * w.k..(r + 1) * w.k];
    for ((og, cg), s) in out.chunks_exact_mut(w.g).zip(codes.chunks_exact(w.g)).zip(&w.scales[r * ng..]) {
        let s = s.to_f32();
        for (o, &q) in og.iter_mut().zip(cg) {
            *o = dequant(s, q);
        }
    }
}

/// The whole matrix as f32, n x k row-major: the scalar definition of the layout.
pub fn dequantize(w: &Int8Matrix) -> Vec<f32> {
    let mut out = vec![0.0; w.n * w.k];
    for (r, row) in out.chunks_exact_mut(w.k).enumerate() {
        dequantize_row(w, r, row);
    }
    out
}
