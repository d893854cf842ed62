//! Quantization maths on plain slices: one module per scheme (layout, quantizer, scalar
//! reference, SIMD kernels). Knows nothing of tensors, files or models.
//!
//! - [`int4`]: asymmetric 4-bit, group-wise (scale and min per group); its matmul quantizes
//!   activations to int8 per block of 32 and uses integer dot products.
//! - [`int8`]: symmetric 8-bit, group-wise (scale per group); its matmul keeps activations
//!   in f32.
//!
//! Kernels take borrowed views (`Int4Matrix`, `Int8Matrix`) of slices, such as an mmapped
//! file's, and run on the current rayon pool. AVX2+FMA+F16C is detected at run time; other
//! CPUs use a portable scalar path computing the same sums.

mod act;
mod error;
mod fit;
pub mod int4;
pub mod int8;
mod isa;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

pub use error::ShapeError;
pub use half::f16;
pub use int4::{Int4Matrix, Int4Owned};
pub use int8::{Int8Matrix, Int8Owned};
