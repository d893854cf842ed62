//! The INT3 matmul entry: `int4`'s (activations quantized to int8 per 32 inputs, centred on
//! 3.5, the output split over threads) with tasks on the shared x86 tile kernel
//! instantiated for INT3's bit planes (AVX512-VNNI, AVX-VNNI or AVX2 dots: the same integer
//! sums; with GFNI, the bit planes unpacked by affine transforms) or the portable scalar
//! one. On AVX512-VNNI, calls of 16 tokens or more run INT4's
//! prefill GEMM (`x86::int4_gemm`, rows repacked from the bit planes; another float
//! summation order, as for INT4). No panel copy for decode. On aarch64 the scalar path runs
//! (no NEON INT3 kernel yet).

use super::{Int3Matrix, Planes};
use crate::act::ActQ8;
use crate::grouped::GroupedMatrix;
use crate::int4::kernel::{matmul_grouped, scalar_task};
use crate::isa::{detect, Isa};
#[cfg(target_arch = "x86_64")]
use crate::x86::int3::PlanesGfni;

/// Whether the CPU has GFNI (decided once): the VNNI paths then unpack the bit planes with
/// affine bit-matrix transforms (`x86::int3::PlanesGfni`), half the instructions of shifts
/// and masks, the same codes. `SQUISH_INT3_GFNI=0` turns it off (for comparisons).
#[cfg(target_arch = "x86_64")]
fn gfni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("gfni") && std::env::var("SQUISH_INT3_GFNI").map_or(true, |v| v != "0"))
}

/// out[tok*N + r] ≈ Σ_c W[r, c] · x[tok*K + c] for x of t tokens (t x K) and out t x N,
/// both row-major (see `matmul_ref_q8`); runs on the current rayon pool.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul(w: &Int3Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(detect(), w, x, t, out);
}

/// `matmul` on the portable scalar path whatever the CPU.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_scalar(w: &Int3Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(Isa::Scalar, w, x, t, out);
}

/// `matmul` on a chosen kernel family (tests run each one the CPU has).
pub(crate) fn matmul_with(isa: Isa, w: &Int3Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_grouped(isa, w, x, t, out, run_task);
}

fn run_task(isa: Isa, w: &GroupedMatrix<Planes>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    match isa {
        // SAFETY: each x86 variant means the CPU has the features its kernel is compiled
        // for (see `isa`); the kernels assert the bounds they rely on.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { crate::x86::int4::task_avx2(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni if gfni() => unsafe { crate::x86::int4::task_avxvnni_gfni(&w.relabel::<PlanesGfni>(), a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { crate::x86::int4::task_avxvnni(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if a.t >= crate::x86::int4_gemm::GEMM_MIN_T => unsafe { crate::x86::int4_gemm::task(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if gfni() => unsafe { crate::x86::int4::task_avx512vnni_gfni(&w.relabel::<PlanesGfni>(), a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { crate::x86::int4::task_avx512vnni(w, a, r0, t0, outs) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::DotProd => scalar_task(w, a, r0, t0, outs),
        Isa::Scalar => scalar_task(w, a, r0, t0, outs),
    }
}
