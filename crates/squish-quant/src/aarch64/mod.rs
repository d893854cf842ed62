//! The aarch64 kernels: INT4 on NEON integer dots (`sdot` where the CPU has dotprod, else
//! `smull` + `sadalp`), INT8 on NEON f32 FMAs. Every function here is `unsafe`: callers hold the `Isa` variant
//! whose features the function is compiled for (they were detected) and pass slices that
//! fit the shapes.

pub(crate) mod int4;
pub(crate) mod int8;
