//! The INT8 matmul entry: splits the output over threads and runs each task on the AVX2
//! kernel, the aarch64 NEON one or the portable scalar one. Activations stay f32; weights
//! are dequantized exactly as `dequantize` does (scale · q) and multiplied in.
//!
//! On AVX512-VNNI, a matrix laid out once in panels (`Int8Panels`) runs every call on
//! integer dots instead (`x86::int8_panels`): activations quantized to two int8 levels per
//! block of 32 (`int8::residual`), exact block dots scaled in f32.

use super::{dequant, Int8Matrix};
use crate::isa::{detect, Isa};
use crate::matmul::{check_io, run};

/// out[tok*N + r] = Σ_c W[r, c] · x[tok*K + c] (f32 sums) for x of t tokens (t x K) and out
/// t x N, both row-major; runs on the current rayon pool.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul(w: &Int8Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(detect(), w, x, t, out);
}

/// `matmul` on the portable scalar path whatever the CPU (the fallback, for comparison).
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_scalar(w: &Int8Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(Isa::Scalar, w, x, t, out);
}

/// `matmul` on a chosen kernel family (tests run each one the CPU has).
pub(crate) fn matmul_with(isa: Isa, w: &Int8Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    check_io("int8 matmul", w.n(), w.k(), x, t, out);
    run(w.n(), w.k(), w.bytes() / w.n().max(1), t, out, |r0, t0, outs| run_task(isa, w, x, r0, t0, outs));
}

/// One task of `matmul::run`: rows r0.. for tokens t0.. (see there).
fn run_task(isa: Isa, w: &Int8Matrix, x: &[f32], r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    match isa {
        // SAFETY: the x86 variants mean the CPU has avx2/fma/f16c (the VNNI ones run the
        // AVX2 kernel: it has no integer dots); the kernel asserts the bounds it relies on.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe { crate::x86::int8::task(w, x, r0, t0, outs) },
        // SAFETY: `Neon` and `DotProd` exist only after neon was detected; the kernel
        // asserts the bounds it relies on.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::DotProd => unsafe { crate::aarch64::int8::task(w, x, r0, t0, outs) },
        Isa::Scalar => scalar_task(w, x, r0, t0, outs),
    }
}

/// The portable task.
fn scalar_task(w: &Int8Matrix, x: &[f32], r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    for (i, out) in outs.iter_mut().enumerate() {
        for (j, y) in out.iter_mut().enumerate() {
            *y = scalar_dot(w, x, r0 + j, t0 + i);
        }
    }
}

/// One (row, token) output: Σ_c dequant(W)[r, c] · x[tok, c] in f32.
fn scalar_dot(w: &Int8Matrix, x: &[f32], r: usize, tok: usize) -> f32 {
    let (k, g) = (w.k(), w.g());
    let ng = k / g;
    let codes = &w.codes()[r * k..(r + 1) * k];
    let scales = &w.scales()[r * ng..(r + 1) * ng];
    let xs = &x[tok * k..(tok + 1) * k];
    let mut y = 0.0f32;
    for ((cg, xg), s) in codes.chunks_exact(g).zip(xs.chunks_exact(g)).zip(scales) {
        let s = s.to_f32();
        y += cg.iter().zip(xg).map(|(&q, &xv)| dequant(s, q) * xv).sum::<f32>();
    }
    y
}

crate::panels::panels_handle!(
    /// An INT8 matrix laid out for the CPU's integer kernel (AVX512-VNNI; see
    /// `x86::int8_panels`): built once (a copy of the codes), then `matmul_with_panels` runs
    /// every call on it. None on CPUs without AVX512-VNNI (or with `SQUISH_ISA` capping below
    /// it): use `matmul` on the matrix.
    Int8Panels,
    Int8Matrix,
    int8_panels
);

/// `matmul` on `panels` (the same matrix laid out by `Int8Panels::new`) where given: the
/// activations are quantized to two int8 levels per block of 32 (`int8::residual`) and
/// every product is an exact integer block dot times (weight scale · activation scale), the
/// same bits for a token in a call of any size. Without panels this is `matmul`.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`, or if `panels` is not `w`'s shape.
pub fn matmul_with_panels(w: &Int8Matrix, panels: Option<&Int8Panels>, x: &[f32], t: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = panels {
        let p = &p.inner;
        assert!(p.n() == w.n() && p.k() == w.k() && p.g() == w.g(), "int8 panels of another shape");
        check_io("int8 matmul", p.n(), p.k(), x, t, out);
        if t == 0 || p.n() == 0 {
            return;
        }
        crate::act::with_scratch(|a| {
            a.quantize(Isa::Avx512Vnni, x, t, p.k(), p.g());
            with_residual(|r| {
                r.quantize(a, x);
                let (a, r) = (&*a, &*r);
                // SAFETY: panels exist only where `detect` found AVX512-VNNI (`new`).
                let task = |r0, t0, outs: &mut [&mut [f32]]| unsafe { crate::x86::int8_panels::task(p, a, r, r0, t0, outs) };
                crate::matmul::run_aligned(p.n(), p.k(), p.k(), t, out, crate::x86::int8_panels::PANEL, task);
            });
        });
        return;
    }
    let _ = panels;
    matmul(w, x, t, out);
}

/// Runs `f` with this thread's reusable second activation level (as `act::with_scratch`).
#[cfg(target_arch = "x86_64")]
fn with_residual<R>(f: impl FnOnce(&mut super::residual::Residual) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::Cell<super::residual::Residual> = Default::default();
    }
    crate::act::with_reused(&SCRATCH, f)
}
