//! A randomized Hadamard rotation of a matrix's input dimension (incoherence processing):
//! R = blockdiag(H_b, ..., H_b) · D / √b, with D a diagonal of random ±1 signs, H_b the
//! b x b Walsh-Hadamard matrix and b a power of two dividing K. R is orthogonal, so
//! W x = (W Rᵀ)(R x): a converter quantizes W Rᵀ (each row w mapped to R w) and the matmul
//! maps each token's x to R x first. A row's outliers are spread over b inputs, so 3-bit
//! groups (and the int8 activation blocks) fit it better. O(K log b) per vector. Knows
//! nothing of files: the signs are stored as bits (`sign_bits`), so a reader never depends
//! on the generator that drew them.

use crate::error::ShapeError;
use std::ops::{Add, Mul, Sub};

/// The largest block used: beyond it the spread gains little and the transform's
/// working set leaves L1.
pub const MAX_BLOCK: usize = 512;

/// A rotation of vectors of length k.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    /// ±1 per input.
    signs: Vec<f32>,
    block: usize,
}

/// The block for width k: the largest power of two dividing k, at most MAX_BLOCK (64 for
/// k = 576 = 9·64, 512 for 1536 = 3·512). 1 (no mixing) for odd k.
pub fn block_for(k: usize) -> usize {
    if k == 0 {
        return 1;
    }
    (1usize << k.trailing_zeros()).min(MAX_BLOCK)
}

impl Rotation {
    /// Signs drawn from `seed` (splitmix64), block `block_for(k)`.
    pub fn random(k: usize, seed: u64) -> Self {
        let mut s = seed;
        let signs = (0..k)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                if (z ^ (z >> 31)) >> 63 == 1 { -1.0 } else { 1.0 }
            })
            .collect();
        Self { signs, block: block_for(k) }
    }

    /// From stored sign bits (bit i%8 of byte i/8 set: input i's sign is -1) for width `k`
    /// and a block size, as `sign_bits` and `block` wrote them.
    pub fn from_sign_bits(bits: &[u8], k: usize, block: usize) -> Result<Self, ShapeError> {
        if bits.len() != k.div_ceil(8) {
            return Err(ShapeError::new(format!("rotation: {} sign bytes for k = {k}, expected {}", bits.len(), k.div_ceil(8))));
        }
        if block == 0 || !block.is_power_of_two() || k % block != 0 || block > MAX_BLOCK {
            return Err(ShapeError::new(format!(
                "rotation: block {block} must be a power of two dividing k = {k}, at most {MAX_BLOCK}"
            )));
        }
        let signs = (0..k).map(|i| if bits[i / 8] >> (i % 8) & 1 == 1 { -1.0 } else { 1.0 }).collect();
        Ok(Self { signs, block })
    }

    /// The signs as bits (see `from_sign_bits`), k/8 bytes rounded up.
    pub fn sign_bits(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.signs.len().div_ceil(8)];
        for (i, &s) in self.signs.iter().enumerate() {
            if s < 0.0 {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        bits
    }

    pub fn k(&self) -> usize {
        self.signs.len()
    }
    /// D's diagonal: ±1 per input.
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }
    pub fn block(&self) -> usize {
        self.block
    }

    /// Every k-vector of `x` (rows of a t x k matrix) to R x. Panics unless k divides its length.
    pub fn apply<T: Num>(&self, x: &mut [T]) {
        let k = self.k();
        assert!(k > 0 && x.len() % k == 0, "rotation: {} values is not a whole number of rows of {k}", x.len());
        let scale = 1.0 / (self.block as f64).sqrt();
        for row in x.chunks_exact_mut(k) {
            // D and 1/√b in one pass, then the unnormalized transform.
            for (v, &s) in row.iter_mut().zip(&self.signs) {
                *v = *v * T::from_f64(s as f64 * scale);
            }
            row.chunks_exact_mut(self.block).for_each(walsh_hadamard);
        }
    }

    /// Every k-vector of `x` to Rᵀ x, undoing `apply` (an embedding lookup of a rotated row).
    pub fn apply_inverse<T: Num>(&self, x: &mut [T]) {
        let k = self.k();
        assert!(k > 0 && x.len() % k == 0, "rotation: {} values is not a whole number of rows of {k}", x.len());
        let scale = 1.0 / (self.block as f64).sqrt();
        for row in x.chunks_exact_mut(k) {
            row.chunks_exact_mut(self.block).for_each(walsh_hadamard);
            for (v, &s) in row.iter_mut().zip(&self.signs) {
                *v = *v * T::from_f64(s as f64 * scale);
            }
        }
    }

    /// The Hessian of rotated inputs from that of the originals: H ↦ R H Rᵀ (h symmetric,
    /// k x k row-major). Rotating every row gives H Rᵀ; rotating every row of its transpose
    /// gives R H Rᵀ, itself symmetric.
    pub fn rotate_symmetric(&self, h: &mut [f64]) {
        let k = self.k();
        assert_eq!(h.len(), k * k, "rotation: hessian length");
        self.apply(h);
        for i in 0..k {
            for j in i + 1..k {
                h.swap(i * k + j, j * k + i);
            }
        }
        self.apply(h);
    }
}

/// What the transform computes in: f32 at run time, f64 for Hessians.
pub trait Num: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    fn from_f64(v: f64) -> Self;
}
impl Num for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Num for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// The unnormalized fast Walsh-Hadamard transform of x (length a power of two), in place.
/// The first three butterfly stages run unrolled per 8 values: the plain loop's runs of 1,
/// 2 and 4 are too short to vectorize and took most of the time.
fn walsh_hadamard<T: Num>(x: &mut [T]) {
    let mut h = 1;
    if x.len() >= 8 {
        for c in x.chunks_exact_mut(8) {
            let (b0, b1, b2, b3) = (c[0] + c[1], c[0] - c[1], c[2] + c[3], c[2] - c[3]);
            let (b4, b5, b6, b7) = (c[4] + c[5], c[4] - c[5], c[6] + c[7], c[6] - c[7]);
            let (d0, d1, d2, d3) = (b0 + b2, b1 + b3, b0 - b2, b1 - b3);
            let (d4, d5, d6, d7) = (b4 + b6, b5 + b7, b4 - b6, b5 - b7);
            (c[0], c[1], c[2], c[3]) = (d0 + d4, d1 + d5, d2 + d6, d3 + d7);
            (c[4], c[5], c[6], c[7]) = (d0 - d4, d1 - d5, d2 - d6, d3 - d7);
        }
        h = 8;
    }
    while h < x.len() {
        for pair in x.chunks_exact_mut(2 * h) {
            let (a, b) = pair.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                (*u, *v) = (*u + *v, *u - *v);
            }
        }
        h *= 2;
    }
}
