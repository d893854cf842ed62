//! The INT2 matmul entry: INT4's (activations quantized to int8 per 32 inputs, centred on
//! 64, the output split over threads) on INT4's x86 tile kernels and prefill GEMM with
//! INT2's unpacker (`x86::int2`: two table shuffles per 64 inputs), or the portable scalar
//! task. The x86 unpacker yields each 32-input half's even inputs then its odd ones, so
//! those paths first permute every token's inputs the same way (per 32 inputs: the 16
//! even ones, then the 16 odd ones; block scales and group sums do not change). The scalar
//! path reads the codes in input order. On aarch64 the scalar path runs (no NEON INT2
//! kernel yet).

use super::Int2Matrix;
use crate::int4::kernel::{matmul_grouped, scalar_task};
use crate::isa::{detect, Isa};
use crate::matmul::check_io;
#[cfg(target_arch = "x86_64")]
use {super::Pairs, crate::act::ActQ8, crate::grouped::GroupedMatrix, std::cell::Cell};

/// out[tok*N + r] ≈ Σ_c W[r, c] · x[tok*K + c] for x of t tokens (t x K) and out t x N,
/// both row-major (see `matmul_ref_q8`).
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`, or if `w` has no table.
pub fn matmul(w: &Int2Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(detect(), w, x, t, out);
}

/// `matmul` on the portable scalar path whatever the CPU.
///
/// Panics as `matmul` does.
pub fn matmul_scalar(w: &Int2Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(Isa::Scalar, w, x, t, out);
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static PERMUTED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `matmul` on a chosen kernel family (tests run each one the CPU has).
pub(crate) fn matmul_with(isa: Isa, w: &Int2Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    check_io("int2 matmul", w.n(), w.k(), x, t, out);
    assert_eq!(w.table().len(), 32, "int2 matmul: a matrix without its table");
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let mut xp = PERMUTED.with(Cell::take);
        xp.clear();
        xp.reserve(x.len());
        for b in x.chunks_exact(32) {
            xp.extend(b.iter().step_by(2));
            xp.extend(b.iter().skip(1).step_by(2));
        }
        matmul_grouped(isa, w, &xp, t, out, run_task);
        PERMUTED.with(|c| c.set(xp));
        return;
    }
    matmul_grouped(isa, w, x, t, out, |_, w, a, r0, t0, outs| scalar_task(w, a, r0, t0, outs));
}

#[cfg(target_arch = "x86_64")]
fn run_task(isa: Isa, w: &GroupedMatrix<Pairs>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    match isa {
        // SAFETY: each x86 variant means the CPU has the features its kernel is compiled
        // for (see `isa`); the kernels assert the bounds they rely on.
        Isa::Avx2 => unsafe { crate::x86::int4::task_avx2(w, a, r0, t0, outs) },
        Isa::AvxVnni => unsafe { crate::x86::int4::task_avxvnni(w, a, r0, t0, outs) },
        Isa::Avx512Vnni if a.t >= crate::x86::int4_gemm::GEMM_MIN_T => unsafe { crate::x86::int4_gemm::task(w, a, r0, t0, outs) },
        Isa::Avx512Vnni => unsafe { crate::x86::int4::task_avx512vnni(w, a, r0, t0, outs) },
        Isa::Scalar => unreachable!("int2's scalar path reads unpermuted inputs"),
    }
}
