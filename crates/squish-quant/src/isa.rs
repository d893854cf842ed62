//! Which kernel family a call runs, checked at run time so one binary serves every x86-64.
//! Best first:
//! - `Avx512Vnni`: avx512vnni + avx512vl + avx512f/bw (+ avx2/fma/f16c): the INT4 kernel's integer dots
//!   are one `vpdpbusd` on 256-bit vectors (EVEX: 32 vector registers). Ice Lake and later
//!   Xeons, Zen 4+.
//! - `AvxVnni`: avxvnni (+ avx2/fma/f16c): the same dot, VEX-encoded. Alder Lake and later
//!   client cores, Sierra Forest.
//! - `Avx2`: avx2/fma/f16c: `maddubs` + `madd` (Haswell+, Zen 1-3).
//! - `Scalar`: portable code computing the same sums.
//!
//! On aarch64, best first: `DotProd` (NEON + dotprod: `sdot`), `Neon` (`smull` +
//! `sadalp`), `Scalar`. Both NEON paths differ from `Scalar` only in how the INT4 kernel
//! forms its integer block sums, and run the scalar float operations in the scalar order:
//! bit-identical results. Both run the same NEON INT8 kernel (f32 FMAs, its own summation
//! order); the activation quantizer runs the scalar code there.
//!
//! The VNNI paths differ from `Avx2` only in the INT4 kernel, and give its exact integer
//! sums (so bit-identical results); INT8 and the activation quantizer run the AVX2 code.
//! The exceptions: `Avx512Vnni` runs INT4 calls of 16+ tokens on `x86::int4_gemm` (512-bit
//! dots in tiles of 16 rows x 8 tokens, another float summation order), and INT8 calls
//! given panels on `x86::int8_panels` (integer dots on two int8 activation levels).
//! `SQUISH_ISA` (scalar, avx2, avxvnni, avx512vnni; on aarch64 scalar, neon, dotprod), read once, caps the choice at that
//! path: for comparisons and for testing a CPU's fallbacks.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Scalar,
    /// Only constructed after the CPU reported avx2, fma and f16c (as for every x86
    /// variant below, which add their own features): the x86 kernels' `unsafe` calls rely
    /// on it.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// avx2/fma/f16c + avxvnni.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// avx2/fma/f16c + avx512vnni + avx512vl + avx512f + avx512bw.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// aarch64 NEON (always present on aarch64, checked anyway): the INT4 kernel's integer
    /// dots are `smull` + `sadalp`.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// NEON + dotprod: the INT4 kernel's integer dots are `sdot`.
    #[cfg(target_arch = "aarch64")]
    DotProd,
}

impl Isa {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => "avxvnni",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512vnni",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
            #[cfg(target_arch = "aarch64")]
            Isa::DotProd => "dotprod",
        }
    }
}

/// Every kernel family this CPU runs, worst (scalar) first, ignoring `SQUISH_ISA`.
pub(crate) fn available() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        v.push(Isa::Avx2);
        if is_x86_feature_detected!("avxvnni") {
            v.push(Isa::AvxVnni);
        }
        if is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
        {
            v.push(Isa::Avx512Vnni);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Isa::Neon);
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push(Isa::DotProd);
        }
    }
    v
}

/// The best kernel family this CPU runs, capped by `SQUISH_ISA` if set; decided once.
pub(crate) fn detect() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        let all = available();
        // A path named in SQUISH_ISA caps the choice even if this CPU lacks it; an unknown
        // name is ignored.
        let cap = std::env::var("SQUISH_ISA").ok().and_then(|c| {
            #[cfg(target_arch = "x86_64")]
            let names = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];
            #[cfg(target_arch = "aarch64")]
            let names = [Isa::Scalar, Isa::Neon, Isa::DotProd];
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
            let names = [Isa::Scalar];
            names.into_iter().find(|i| i.name() == c.trim())
        });
        *all.iter().rev().find(|&&i| cap.is_none_or(|c| i <= c)).expect("scalar is always available")
    })
}

/// The name of the path `detect` chose ("avx512vnni", "avxvnni", "avx2", "dotprod", "neon"
/// or "scalar").
pub fn kernel_isa() -> &'static str {
    detect().name()
}
