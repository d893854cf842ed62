//! The INT4 matmul entry: quantizes the activations, splits the output over threads, and
//! runs each task on an x86 kernel (AVX512-VNNI, AVX-VNNI or AVX2: the same integer sums,
//! the same results) or the portable scalar one (the same sums). On AVX512-VNNI, calls of
//! `GEMM_MIN_T` (16) tokens or more take the prefill kernel `x86::int4_gemm` instead (the
//! same integer sums, another float summation order), and with `Int4Panels` calls under
//! 64 tokens run the GEMM's arithmetic on the panels. On aarch64 it runs `aarch64::int4`
//! (NEON integer dots, the scalar path's float operations: bit-identical to it).

use super::Int4Matrix;
use crate::act::{with_scratch, ActQ8};
use crate::grouped::{GroupedMatrix, Layout};
use crate::isa::{detect, Isa};
use crate::matmul::{check_io, run};

/// out[tok*N + r] ≈ Σ_c W[r, c] · x[tok*K + c] for x of t tokens (t x K) and out t x N,
/// both row-major. Activations are quantized to int8 per block of 32 (see
/// `matmul_ref_q8`); runs on the current rayon pool.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul(w: &Int4Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(detect(), w, x, t, out);
}

/// `matmul` on the portable scalar path whatever the CPU (the fallback, for comparison).
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`.
pub fn matmul_scalar(w: &Int4Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_with(Isa::Scalar, w, x, t, out);
}

/// `matmul` on a chosen kernel family (tests run each one the CPU has).
pub(crate) fn matmul_with(isa: Isa, w: &Int4Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_grouped(isa, w, x, t, out, run_task);
}

/// One task of a grouped matmul on a kernel family: rows r0.. for tokens t0.. (see
/// `matmul::run`).
pub(crate) type Task<L> = fn(Isa, &GroupedMatrix<L>, &ActQ8, usize, usize, &mut [&mut [f32]]);

/// The matmul entry of any grouped layout (INT4, INT3): checks, quantizes the activations
/// (centred for the layout's codes), and runs `task` over `matmul::run`'s partition.
pub(crate) fn matmul_grouped<L: Layout>(
    isa: Isa,
    w: &GroupedMatrix<L>,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    task: Task<L>,
) {
    check_io(L::MATMUL, w.n(), w.k(), x, t, out);
    if t == 0 || w.n() == 0 {
        return;
    }
    with_scratch(|a| {
        a.quantize_centred(isa, x, t, w.k(), w.g(), L::CENTER);
        let a = &*a;
        run(w.n(), w.k(), w.bytes() / w.n().max(1), t, out, |r0, t0, outs| task(isa, w, a, r0, t0, outs));
    });
}

/// One task of `matmul::run`: rows r0.. for tokens t0.. (see there).
fn run_task(isa: Isa, w: &Int4Matrix, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    match isa {
        // SAFETY: each x86 variant means the CPU has the features its kernel is compiled
        // for (see `isa`); the kernels assert the bounds they rely on.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { crate::x86::int4::task_avx2(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { crate::x86::int4::task_avxvnni(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if a.t >= crate::x86::int4_gemm::GEMM_MIN_T => unsafe { crate::x86::int4_gemm::task(w, a, r0, t0, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { crate::x86::int4::task_avx512vnni(w, a, r0, t0, outs) },
        // SAFETY: as above: `Neon` and `DotProd` exist only after neon (and dotprod) were
        // detected; the kernel asserts its bounds.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { crate::aarch64::int4::task_neon(w, a, r0, t0, outs) },
        #[cfg(target_arch = "aarch64")]
        Isa::DotProd => unsafe { crate::aarch64::int4::task_dotprod(w, a, r0, t0, outs) },
        Isa::Scalar => scalar_task(w, a, r0, t0, outs),
    }
}

/// A task on the portable path, for any grouped layout.
pub(crate) fn scalar_task<L: Layout>(w: &GroupedMatrix<L>, a: &ActQ8, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    for (i, out) in outs.iter_mut().enumerate() {
        for (j, y) in out.iter_mut().enumerate() {
            *y = scalar_dot(w, a, r0 + j, t0 + i);
        }
    }
}

/// One (row, token) output: per group, scale · (Σ_blocks d · (integer dot) + centred
/// residual) + min · Σx.
fn scalar_dot<L: Layout>(w: &GroupedMatrix<L>, a: &ActQ8, r: usize, tok: usize) -> f32 {
    let (k, g) = (w.k(), w.g());
    let (ng, nb, bpg) = (k / g, k / 32, g / 32);
    let rb = w.row_bytes();
    let codes = &w.codes()[r * rb..(r + 1) * rb];
    let (scales, mins) = (&w.scales()[r * ng..(r + 1) * ng], &w.mins()[r * ng..(r + 1) * ng]);
    let q = &a.q[tok * k..(tok + 1) * k];
    let d = &a.dtok[tok * nb..(tok + 1) * nb];
    let mut y = 0.0f32;
    for grp in 0..ng {
        let mut acc = 0.0f32;
        for blk in grp * bpg..(grp + 1) * bpg {
            let bytes = &codes[(blk / 2) * L::BLOCK_BYTES..(blk / 2 + 1) * L::BLOCK_BYTES];
            let j0 = (blk & 1) * 32;
            let qa = &q[blk * 32..blk * 32 + 32];
            let isum: i32 = qa.iter().enumerate().map(|(j, &v)| w.value(bytes, j0 + j) as i32 * v as i32).sum();
            acc += isum as f32 * d[blk];
        }
        y += (acc + a.centred_residual(tok, grp)) * scales[grp].to_f32() + mins[grp].to_f32() * a.group_sum(tok, grp);
    }
    y
}

crate::panels::panels_handle!(
    /// An INT4 matrix laid out for the CPU's panel kernel (AVX512-VNNI; see
    /// `x86::int4_panels`): built once, then `matmul_with_panels` runs every call, one token
    /// or a prompt, with the prefill GEMM's arithmetic and no per-call repack. None on CPUs
    /// without it (or with `SQUISH_ISA` capping below it): use `matmul` on the matrix.
    Int4Panels,
    Int4Matrix,
    int4_panels
);

/// Whether `matmul_with_panels` reads its panels for a call of `t` tokens: only below 64
/// (larger calls run the prefill GEMM on the matrix itself), and only on x86-64. A caller
/// can put off making panels (a copy of the matrix) until a call reads them.
pub fn panels_read_for(t: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return t < crate::x86::int4_panels::PANELS_BELOW_T;
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = t;
        false
    }
}

/// `matmul`, taking `panels` (the same matrix laid out by `Int4Panels::new`) for calls of
/// fewer than 64 tokens: they then compute exactly what the prefill GEMM computes for
/// larger calls, at the GEMM's efficiency, so every token's result is the same whatever
/// the call's size. Without panels this is `matmul`.
///
/// Panics if `x.len() != t*K` or `out.len() != t*N`, or if `panels` is not `w`'s shape.
pub fn matmul_with_panels(w: &Int4Matrix, panels: Option<&Int4Panels>, x: &[f32], t: usize, out: &mut [f32]) {
    matmul_many_with_panels(&mut [(w, panels, out)], x, t);
}

/// `matmul_with_panels` for several matrices reading the same input (q, k and v; gate and
/// up), each with its output: where all have panels (and the same K and group size) the
/// activations are quantized once and every matrix runs in one parallel region; otherwise
/// one call each. The results are the same either way.
///
/// Panics as `matmul_with_panels` does, for any part.
pub fn matmul_many_with_panels(parts: &mut [(&Int4Matrix, Option<&Int4Panels>, &mut [f32])], x: &[f32], t: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, g) = parts.first().map_or((0, 0), |(w, ..)| (w.k(), w.g()));
        let fused = panels_read_for(t)
            && parts.iter().all(|(w, p, _)| p.is_some() && w.k() == k && w.g() == g);
        if fused && t > 0 {
            for (w, p, out) in parts.iter() {
                let p = &p.as_ref().expect("checked above").inner;
                assert!(p.n() == w.n() && p.k() == w.k() && p.g() == w.g(), "int4 panels of another shape");
                check_io("int4 matmul", p.n(), p.k(), x, t, out);
            }
            with_scratch(|a| {
                a.quantize(Isa::Avx512Vnni, x, t, k, g);
                let a = &*a;
                let tasks: Vec<_> = parts
                    .iter()
                    .map(|(_, p, _)| {
                        let p = &p.as_ref().expect("checked above").inner;
                        // SAFETY: panels exist only where `detect` found AVX512-VNNI (`new`).
                        move |r0, t0, outs: &mut [&mut [f32]]| unsafe { crate::x86::int4_panels::task(p, a, r0, t0, outs) }
                    })
                    .collect();
                let align = crate::x86::int4_panels::PANEL;
                let jobs = parts.iter_mut().zip(&tasks).map(|((w, _, out), task)| crate::matmul::Part {
                    n: w.n(),
                    k,
                    row_bytes: k / 2,
                    t,
                    out: &mut **out,
                    align,
                    task,
                });
                crate::matmul::run_many(jobs.collect());
            });
            return;
        }
    }
    match parts {
        [(w, _, out)] => matmul(w, x, t, out),
        _ => parts.iter_mut().for_each(|(w, p, out)| matmul_many_with_panels(&mut [(*w, *p, &mut **out)], x, t)),
    }
}
