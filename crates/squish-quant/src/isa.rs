//! Which kernel family a call runs: AVX2+FMA+F16C when the CPU has them (checked at run
//! time, so one binary serves every x86-64), else the portable scalar code.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    /// Only constructed by `detect` after the CPU reported avx2, fma and f16c: the x86
    /// kernels' `unsafe` calls rely on it.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

/// The best kernel family this CPU runs. `is_x86_feature_detected!` caches its answer, so
/// calling this per matmul costs a few loads.
pub(crate) fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return Isa::Avx2;
    }
    Isa::Scalar
}
