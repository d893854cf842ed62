//! Quantization maths on plain slices: one module per scheme (layout, quantizer, scalar
//! reference, SIMD kernels). Knows nothing of tensors, files or models.
//!
//! - [`int4`]: asymmetric 4-bit, group-wise (f16 scale and min per group of g inputs).
//!   Its matmul quantizes each token's activations to int8 per block of 32 (absmax/127,
//!   f32 scale; llama.cpp's Q4_1 x Q8_1) and multiplies with integer dot products; exact
//!   per-group sums of x carry the min term, and a per-group residual term cancels most of
//!   the activation rounding error (`act::CODE_CENTER`).
//! - [`int3`]: INT4's scheme at 3 bits (codes 0..=7, a scale and min per group), packed
//!   in two bit planes (24 bytes per 64 inputs); the same quantizers (clipping search,
//!   GPTQ), the same tile kernel and prefill GEMM ([`grouped`] holds what the two share),
//!   activations centred on 3.5. Its group parameters are stored on 8-bit per-row grids
//!   ([`params8`], which INT4 can use too).
//! - [`int2`]: a 16-entry codebook of weight pairs per matrix (a 4-bit code per pair of
//!   inputs, an 8-bit scale per group): the grouped layouts' arithmetic on table values
//!   (`grouped::Layout::TABLE`), its blocks unpacked by two in-register table shuffles,
//!   its quantizer a weighted k-means, a scale search and GPTQ over column pairs.
//! - [`int8`]: symmetric 8-bit, group-wise (f16 scale per group); its matmul keeps
//!   activations in f32, or, on AVX512-VNNI with the matrix in panels
//!   (`int8::Int8Panels`), rounds them to two int8 levels per block of 32 (the second the
//!   first's rounding error) for integer dot products.
//! - [`rotate`]: a randomized Hadamard rotation of a matrix's input dimension, which a
//!   converter applies to the weights (and their Hessian) and a caller to each token's
//!   activations before any of the matmuls above: outliers spread, so low-bit groups fit.
//!
//! Each has a quantizer (clipping search, optional per-input-channel importance), a
//! dequantizer, an exact scalar reference matmul and the fast matmul. Kernels take borrowed
//! views ([`Int4Matrix`], [`Int8Matrix`]) of slices such as an mmapped file's, run on the
//! decode [`team`] (spinning helpers; rayon when another call holds it; calls too small
//! to split stay on the calling thread), and
//! allocate nothing per decode call once warm. The kernel family is chosen at run time
//! (best first: AVX512-VNNI, AVX-VNNI, AVX2+FMA+F16C on x86-64, NEON+dotprod then NEON
//! on aarch64 (INT4 only), else a portable scalar path computing the same sums;
//! [`kernel_isa`] names it, `SQUISH_ISA` caps it). A token's result does not
//! depend, bit for bit, on the thread count, nor on the batch it comes in, with one
//! exception: on AVX512-VNNI, INT4 calls of 16 tokens or more run a register-blocked
//! prefill kernel whose float summation order differs, so there a token's result is the
//! same in every batch of 16+ tokens and the same in every batch of fewer, but the two
//! differ in the last bits (both within the same tolerance of `int4::matmul_ref_q8`).
//! With `int4::Int4Panels` (what the model uses) every call computes the prefill kernel's
//! bits: under 64 tokens on the panels, from 64 on in the prefill kernel.

// `is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

mod act;
pub mod dense;
mod error;
mod fit;
pub mod grouped;
pub mod int2;
pub mod int3;
pub mod int4;
pub mod int8;
mod isa;
mod matmul;
mod panels;
pub mod params8;
pub mod rotate;
pub mod team;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "aarch64")]
mod aarch64;

#[cfg(test)]
mod tests;

pub use error::ShapeError;

pub use half::f16;
pub use isa::kernel_isa;
pub use int2::Int2Matrix;
pub use int3::{Int3Matrix, Int3Owned};
pub use int4::{Int4Matrix, Int4Owned};
pub use int8::{Int8Matrix, Int8Owned};
