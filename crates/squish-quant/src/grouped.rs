//! What INT4 and INT3 share: asymmetric group-wise codes, w = scale · q + min with an f16
//! scale and min per group of g inputs (g a multiple of 32 dividing K, K a multiple of 64),
//! differing only in the code width and how one 64-input block's codes are packed (a
//! [`Layout`]). Owns the generic borrowed view ([`GroupedMatrix`]), the owned result
//! ([`GroupedOwned`]), dequantization and packing. Knows nothing of kernels.

use crate::error::{checked_len, ShapeError};
use half::f16;
use std::marker::PhantomData;

/// How a scheme packs the codes of one 64-input block.
pub trait Layout: Copy + Send + Sync + 'static {
    /// "int4", "int3": for messages.
    const NAME: &'static str;
    /// "int4 matmul", ...: the matmul's panic messages.
    const MATMUL: &'static str;
    /// The largest code (2^bits - 1).
    const QMAX: u8;
    /// Bytes of one 64-input block (64 · bits / 8).
    const BLOCK_BYTES: usize;
    /// The middle of the code range, QMAX / 2: the activation residual correction centres
    /// the codes on it (see `act::CODE_CENTER`).
    const CENTER: f32;

    /// Packs 64 codes (each 0..=QMAX) into `out` (BLOCK_BYTES).
    fn pack_block(q: &[u8], out: &mut [u8]);

    /// Code `j` (0..64) of a packed block: the layout's definition. For a layout with a
    /// table (`TABLE`), the position in the matrix's table of input j's value.
    fn code(block: &[u8], j: usize) -> u8;

    /// Whether codes index a per-matrix table of 32 values (INT2's codebook, see
    /// `crate::int2`) instead of being the values themselves.
    const TABLE: bool = false;
}

/// A borrowed grouped matrix (for example slices of an mmapped file). Only `new` builds
/// one, so every view's slices fit its shape; the kernels rely on that.
#[derive(Debug)]
pub struct GroupedMatrix<'a, L> {
    codes: &'a [u8],
    scales: &'a [f16],
    mins: &'a [f16],
    n: usize,
    k: usize,
    g: usize,
    /// The layout's value table (32 bytes) where it has one (`Layout::TABLE`), else empty.
    table: &'a [u8],
    _layout: PhantomData<L>,
}

impl<L> Clone for GroupedMatrix<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L> Copy for GroupedMatrix<'_, L> {}

impl<'a, L: Layout> GroupedMatrix<'a, L> {
    /// Checks the slices against the shape: `k` a positive multiple of 64, `g` a positive
    /// multiple of 32 dividing `k`, `codes.len() == n * k/64 * BLOCK_BYTES`,
    /// `scales.len() == mins.len() == n*k/g`.
    pub fn new(
        codes: &'a [u8],
        scales: &'a [f16],
        mins: &'a [f16],
        n: usize,
        k: usize,
        g: usize,
    ) -> Result<Self, ShapeError> {
        check_shape::<L>(k, g)?;
        let name = L::NAME;
        let want_codes = checked_len(n, row_bytes::<L>(k), &format!("{name} codes"))?;
        let want_groups = checked_len(n, k / g, &format!("{name} groups"))?;
        if codes.len() != want_codes {
            return Err(ShapeError::new(format!(
                "{name} codes: {} bytes, expected n * k/64 * {} = {n}*{}*{} = {want_codes}",
                codes.len(),
                L::BLOCK_BYTES,
                k / 64,
                L::BLOCK_BYTES
            )));
        }
        for (what, len) in [("scales", scales.len()), ("mins", mins.len())] {
            if len != want_groups {
                return Err(ShapeError::new(format!(
                    "{name} {what}: {len} values, expected n*k/g = {n}*{k}/{g} = {want_groups}"
                )));
            }
        }
        Ok(Self { codes, scales, mins, n, k, g, table: &[], _layout: PhantomData })
    }

    /// The same matrix with its value table (layouts with `TABLE` only): 32 values, each
    /// at most QMAX.
    pub fn with_table(self, table: &'a [u8]) -> Result<Self, ShapeError> {
        let name = L::NAME;
        if !L::TABLE {
            return Err(ShapeError::new(format!("{name}: this layout has no value table")));
        }
        if table.len() != 32 || table.iter().any(|&v| v > L::QMAX) {
            return Err(ShapeError::new(format!("{name} table: {} values, expected 32 in 0..={}", table.len(), L::QMAX)));
        }
        Ok(Self { table, ..self })
    }

    /// The value table (empty for layouts without one).
    pub fn table(&self) -> &'a [u8] {
        self.table
    }

    /// The value of code `j` of the packed block `block` (through the table if any).
    #[inline]
    pub(crate) fn value(&self, block: &[u8], j: usize) -> u8 {
        let c = L::code(block, j);
        if L::TABLE {
            self.table[c as usize]
        } else {
            c
        }
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
    /// The same slices under another layout type with the same packing (a kernel variant's
    /// unpacker). Panics if the block sizes differ.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn relabel<M: Layout>(&self) -> GroupedMatrix<'a, M> {
        assert_eq!(L::BLOCK_BYTES, M::BLOCK_BYTES, "relabel to another packing");
        let Self { codes, scales, mins, n, k, g, table, .. } = *self;
        GroupedMatrix { codes, scales, mins, n, k, g, table, _layout: PhantomData }
    }

    /// Bytes of one row's codes.
    pub fn row_bytes(&self) -> usize {
        row_bytes::<L>(self.k)
    }
    /// Bytes a matmul reads: codes, scales and mins.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }
    /// Storage cost of the scheme at group size `g`: code bits plus 32 bits of scale and
    /// min per group.
    pub fn bits_per_weight(g: usize) -> f64 {
        (L::BLOCK_BYTES * 8) as f64 / 64.0 + 32.0 / g as f64
    }

    /// Code of input `c` in row `r` (the layout's definition, used by the references).
    #[inline]
    pub(crate) fn code(&self, r: usize, c: usize) -> u8 {
        let start = r * self.row_bytes() + (c / 64) * L::BLOCK_BYTES;
        self.value(&self.codes[start..start + L::BLOCK_BYTES], c % 64)
    }
}

/// Bytes of a row of `k` inputs (k a multiple of 64).
pub(crate) fn row_bytes<L: Layout>(k: usize) -> usize {
    k / 64 * L::BLOCK_BYTES
}

pub(crate) fn check_shape<L: Layout>(k: usize, g: usize) -> Result<(), ShapeError> {
    let name = L::NAME;
    if k == 0 || k % 64 != 0 {
        return Err(ShapeError::new(format!("{name}: k = {k} must be a positive multiple of 64")));
    }
    if g == 0 || g % 32 != 0 || k % g != 0 {
        return Err(ShapeError::new(format!(
            "{name}: group size g = {g} must be a positive multiple of 32 dividing k = {k}"
        )));
    }
    Ok(())
}

/// A quantized matrix owning its storage (what the quantizer returns and a converter
/// writes). Its parts always fit its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupedOwned<L> {
    codes: Vec<u8>,
    scales: Vec<f16>,
    mins: Vec<f16>,
    n: usize,
    k: usize,
    g: usize,
    _layout: PhantomData<L>,
}

impl<L: Layout> GroupedOwned<L> {
    /// Takes ownership of parts, with `GroupedMatrix::new`'s checks.
    pub fn from_parts(
        codes: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        n: usize,
        k: usize,
        g: usize,
    ) -> Result<Self, ShapeError> {
        GroupedMatrix::<L>::new(&codes, &scales, &mins, n, k, g)?;
        Ok(Self { codes, scales, mins, n, k, g, _layout: PhantomData })
    }

    /// Parts the quantizers built to fit the shape (checked in debug builds).
    pub(crate) fn from_fitting_parts(codes: Vec<u8>, scales: Vec<f16>, mins: Vec<f16>, n: usize, k: usize, g: usize) -> Self {
        debug_assert!(GroupedMatrix::<L>::new(&codes, &scales, &mins, n, k, g).is_ok());
        Self { codes, scales, mins, n, k, g, _layout: PhantomData }
    }

    pub fn view(&self) -> GroupedMatrix<'_, L> {
        let Self { n, k, g, .. } = *self;
        GroupedMatrix { codes: &self.codes, scales: &self.scales, mins: &self.mins, n, k, g, table: &[], _layout: PhantomData }
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

/// Packs one row's K codes (each 0..=QMAX) into the layout's K/64 blocks.
pub(crate) fn pack_row<L: Layout>(q: &[u8], out: &mut [u8]) {
    for (qb, ob) in q.chunks_exact(64).zip(out.chunks_exact_mut(L::BLOCK_BYTES)) {
        L::pack_block(qb, ob);
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
pub fn dequantize_row<L: Layout>(w: &GroupedMatrix<L>, r: usize, out: &mut [f32]) {
    assert!(r < w.n, "{} dequantize_row: row {r} of {}", L::NAME, w.n);
    assert_eq!(out.len(), w.k, "{} dequantize_row: out length", L::NAME);
    let ng = w.k / w.g;
    let rb = w.row_bytes();
    let codes = &w.codes[r * rb..(r + 1) * rb];
    for (b, (ob, cb)) in out.chunks_exact_mut(64).zip(codes.chunks_exact(L::BLOCK_BYTES)).enumerate() {
        for (j, o) in ob.iter_mut().enumerate() {
            let gi = r * ng + (b * 64 + j) / w.g;
            *o = dequant(w.scales[gi].to_f32(), w.mins[gi].to_f32(), w.value(cb, j));
        }
    }
}

/// The whole matrix as f32, n x k row-major: the scalar definition of the layout.
pub fn dequantize<L: Layout>(w: &GroupedMatrix<L>) -> Vec<f32> {
    let mut out = vec![0.0; w.n * w.k];
    for (r, row) in out.chunks_exact_mut(w.k).enumerate() {
        dequantize_row(w, r, row);
    }
    out
}
