//! The matmul kernels against the scalar references on many shapes, on every path the CPU
//! runs (scalar, AVX2, AVX-VNNI, AVX512-VNNI; on aarch64 NEON, NEON+dotprod), and their
//! invariances: the result for a token does not depend on the batch it came in or on the
//! thread count.

use super::util::{on_pool, Rng};
use crate::act::ActQ8;
use crate::grouped::{GroupedMatrix, Layout};
use crate::isa::{available, Isa};
use crate::{int4, int8, Int4Matrix, Int8Matrix};

const NS: [usize; 4] = [1, 3, 17, 1000];
const KS: [usize; 4] = [64, 128, 576, 1536];
const GS: [usize; 3] = [32, 64, 128];
const TS: [usize; 4] = [1, 2, 7, 64];

/// The kernel paths this machine can run (scalar, then AVX2, AVX-VNNI, AVX512-VNNI as the
/// CPU has them; paths it lacks are skipped).
pub(super) fn isas() -> Vec<Isa> {
    available()
}

/// `matmul` on the path `isa` (the public `matmul` takes the detected one).
fn mm4(isa: Isa, w: &Int4Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    int4::matmul_with(isa, w, x, t, out)
}

fn mm8(isa: Isa, w: &Int8Matrix, x: &[f32], t: usize, out: &mut [f32]) {
    int8::matmul_with(isa, w, x, t, out)
}

/// Every shape of the grid, but the largest products only with few tokens (the f64
/// references are slow).
pub(super) fn shapes() -> impl Iterator<Item = (usize, usize, usize, usize)> {
    NS.into_iter().flat_map(|n| {
        KS.into_iter().flat_map(move |k| {
            GS.into_iter().filter(move |g| k % g == 0).flat_map(move |g| {
                TS.into_iter().filter(move |&t| n * k * t <= 20_000_000).map(move |t| (n, k, g, t))
            })
        })
    })
}

/// Σ_c |W[r,c] x[tok,c]| per output: the scale of its rounding error.
pub(super) fn abs_dots(wd: &[f32], x: &[f32], n: usize, k: usize, t: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * t];
    for tok in 0..t {
        for r in 0..n {
            let (wr, xr) = (&wd[r * k..(r + 1) * k], &x[tok * k..(tok + 1) * k]);
            out[tok * n + r] = wr.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        }
    }
    out
}

/// Data for one shape: random weights quantized (so scales and mins are realistic), and
/// activations with a few outlier channels like a real model's.
fn int4_case(n: usize, k: usize, g: usize, t: usize, seed: u64) -> (int4::Int4Owned, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w = rng.gauss_vec(n * k, 0.05);
    let mut x = rng.gauss_vec(t * k, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i % k % 97 == 13 {
            *v *= 20.0;
        }
    }
    (int4::quantize(&w, n, k, g, None), x)
}

/// Bound on |exact - activation-quantized| per output: each input is off by at most half
/// its block's scale, times |scale · (q - c)| (the min term uses exact sums, and the
/// residual term turns q into q - c, c the middle of the code range: 7.5 for INT4).
pub(super) fn act_quant_bound<L: Layout>(w: &GroupedMatrix<L>, x: &[f32], t: usize) -> Vec<f64> {
    let (n, k, g) = (w.n(), w.k(), w.g());
    let mut a = ActQ8::default();
    a.quantize_centred(Isa::Scalar, x, t, k, g, L::CENTER);
    let mut out = vec![0.0; n * t];
    for tok in 0..t {
        for r in 0..n {
            out[tok * n + r] = (0..k)
                .map(|c| {
                    let s = w.scales()[r * (k / g) + c / g].to_f32() as f64;
                    let q = w.code(r, c) as f64 - L::CENTER as f64;
                    (s * q).abs() * a.scale(tok, c / 32) as f64 * 0.5
                })
                .sum::<f64>();
        }
    }
    out
}

#[test]
fn int4_kernels_match_the_references() {
    let mut worst_rel = 0.0f64;
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for (case, (n, k, g, t)) in shapes().enumerate() {
        let (q, x) = int4_case(n, k, g, t, case as u64);
        let w = q.view();
        let (mut exact, mut q8) = (vec![0.0; t * n], vec![0.0; t * n]);
        int4::matmul_ref(&w, &x, t, &mut exact);
        int4::matmul_ref_q8(&w, &x, t, &mut q8);
        let scale = abs_dots(&int4::dequantize(&w), &x, n, k, t);
        let bound = act_quant_bound(&w, &x, t);
        for isa in isas() {
            let mut out = vec![f32::NAN; t * n];
            mm4(isa, &w, &x, t, &mut out);
            for i in 0..t * n {
                let (y, yq, ye) = (out[i] as f64, q8[i] as f64, exact[i] as f64);
                let tol = 1e-4 * scale[i] + 1e-30;
                assert!((y - yq).abs() <= tol, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs q8 ref {yq}");
                assert!(
                    (y - ye).abs() <= bound[i] * 1.001 + tol,
                    "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs exact {ye}, bound {}",
                    bound[i]
                );
                worst_rel = worst_rel.max((y - yq).abs() / scale[i].max(1e-30));
                err2 += (y - ye).powi(2);
                ref2 += ye.powi(2);
            }
        }
    }
    eprintln!(
        "int4 kernels ({:?}): worst |Δ| vs q8 ref {worst_rel:.2e} of Σ|wx|; vs exact rel RMS {:.2e}",
        isas(),
        (err2 / ref2).sqrt()
    );
}

#[test]
fn int8_kernels_match_the_reference() {
    let mut worst_rel = 0.0f64;
    for (case, (n, k, g, t)) in shapes().enumerate() {
        let mut rng = Rng::new(100 + case as u64);
        let wf = rng.gauss_vec(n * k, 0.05);
        let x = rng.gauss_vec(t * k, 1.0);
        let q = int8::quantize(&wf, n, k, g, None);
        let w = q.view();
        let mut exact = vec![0.0; t * n];
        int8::matmul_ref(&w, &x, t, &mut exact);
        let scale = abs_dots(&int8::dequantize(&w), &x, n, k, t);
        for isa in isas() {
            let mut out = vec![f32::NAN; t * n];
            mm8(isa, &w, &x, t, &mut out);
            for i in 0..t * n {
                let d = (out[i] as f64 - exact[i] as f64).abs();
                assert!(d <= 1e-4 * scale[i] + 1e-30, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {} vs {}", out[i], exact[i]);
                worst_rel = worst_rel.max(d / scale[i].max(1e-30));
            }
        }
    }
    eprintln!("int8 kernels: worst |Δ| vs exact {worst_rel:.2e} of Σ|wx|");
}

/// The INT8 panel kernel (AVX512-VNNI only; skipped elsewhere): every output within
/// float rounding of the exact sum (f64) over the two int8 activation levels, within 1e-3
/// of Σ|wx| of the f32 product (with 20x outlier channels), and a token's bits the same in
/// a call of any size and on any number of threads; on shapes with partial panels and
/// group sizes 32 to 128.
#[test]
#[cfg(target_arch = "x86_64")]
fn int8_panels_match_the_quantized_reference_for_any_batch() {
    if int8::Int8Panels::new(&int8::quantize(&[0.5; 64], 2, 32, 32, None).view()).is_none() {
        eprintln!("no AVX512-VNNI here: the INT8 panel kernel is not used");
        return;
    }
    let mut worst = (0.0f64, 0.0f64);
    for (n, k, g, seed) in [(1000, 576, 32, 1), (17, 1536, 128, 2), (35, 96, 32, 3), (576, 1536, 64, 4)] {
        let t = 40;
        let mut rng = Rng::new(300 + seed);
        let q = int8::quantize(&rng.gauss_vec(n * k, 0.05), n, k, g, None);
        let mut x = rng.gauss_vec(t * k, 1.0);
        x.iter_mut().step_by(37).for_each(|v| *v *= 20.0); // outlier channels
        let w = q.view();
        let p = int8::Int8Panels::new(&w).expect("AVX512-VNNI");
        let mut all = vec![0.0; t * n];
        on_pool(2, || int8::matmul_with_panels(&w, Some(&p), &x, t, &mut all));
        // References: f64 over the activation codes of both levels, and the f32 product.
        let mut a = ActQ8::default();
        a.quantize(Isa::Scalar, &x, t, k, g);
        let mut r = int8::residual::Residual::default();
        r.quantize(&a, &x);
        let mut exact = vec![0.0; t * n];
        int8::matmul_ref(&w, &x, t, &mut exact);
        let scale = abs_dots(&int8::dequantize(&w), &x, n, k, t);
        for tok in 0..t {
            for row in 0..n {
                let mut want = 0.0f64;
                for b in 0..k / 32 {
                    let dot = |codes: &[i8]| -> f64 {
                        (0..32).map(|j| w.codes()[row * k + 32 * b + j] as i64 * codes[tok * k + 32 * b + j] as i64).sum::<i64>() as f64
                    };
                    let s = w.scales()[row * (k / g) + 32 * b / g].to_f32() as f64;
                    want += s * (a.scale(tok, b) as f64 * dot(&a.q) + r.d2[b * a.tp + tok] as f64 * dot(&r.q2));
                }
                let (got, i) = (all[tok * n + row] as f64, tok * n + row);
                let (rounding, quantized) = ((got - want).abs() / scale[i], (got - exact[i] as f64).abs() / scale[i]);
                assert!(rounding <= 1e-5 && quantized <= 1e-3, "n{n} k{k} g{g} [{tok}, {row}]: {got} vs {want} (codes), {} (f32)", exact[i]);
                worst = (worst.0.max(rounding), worst.1.max(quantized));
            }
        }
        for (from, len) in [(0, 1), (5, 1), (39, 1), (3, 2), (8, 7), (16, 8), (1, 15), (20, 16)] {
            let mut o = vec![0.0; len * n];
            on_pool(2, || int8::matmul_with_panels(&w, Some(&p), &x[from * k..(from + len) * k], len, &mut o));
            assert_eq!(&all[from * n..(from + len) * n], &o[..], "n{n} k{k} g{g}: tokens {from}..+{len}");
        }
        let mut one = vec![0.0; n];
        on_pool(1, || int8::matmul_with_panels(&w, Some(&p), &x[..k], 1, &mut one));
        assert_eq!(&all[..n], &one[..], "n{n} k{k} g{g}: one thread");
    }
    eprintln!("int8 panels: worst |Δ| of Σ|wx|: {:.1e} vs the two-level int8 sum, {:.1e} vs the f32 product", worst.0, worst.1);
}

/// Whether `isa` runs calls of `t` tokens on the prefill kernel (`x86::int4_gemm`), whose
/// float summation order differs from the other kernels' in the last bits.
pub(super) fn int4_gemm(isa: Isa, t: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa == Isa::Avx512Vnni && t >= crate::x86::int4_gemm::GEMM_MIN_T;
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, t);
        false
    }
}

/// A token's output is bit-identical whatever the thread count and whatever batch it comes
/// in (here two token tiles, 64 + 13, against one token alone, or for the INT4 prefill
/// kernel, which only runs calls of 16 tokens or more, against the same token at another
/// place in another batch of 16): every (row, token) is summed in the same order by every
/// tile. (On AVX512-VNNI an INT4 token alone and in a batch of 16+ differ in the last bits.)
#[test]
fn results_do_not_depend_on_batching_or_threads() {
    let (n, k, g, t) = (1000, 576, 64, 77);
    let (q4, x) = int4_case(n, k, g, t, 7);
    let q8 = int8::quantize(&Rng::new(8).gauss_vec(n * k, 0.05), n, k, 32, None);
    for isa in isas() {
        let run4 = |x: &[f32], t: usize| {
            let mut o = vec![0.0; t * n];
            mm4(isa, &q4.view(), x, t, &mut o);
            o
        };
        let run8 = |x: &[f32], t: usize| {
            let mut o = vec![0.0; t * n];
            mm8(isa, &q8.view(), x, t, &mut o);
            o
        };
        for (run, gemm) in [(&run4 as &(dyn Fn(&[f32], usize) -> Vec<f32> + Sync), int4_gemm(isa, t)), (&run8, false)] {
            let batch = on_pool(2, || run(&x, t));
            assert_eq!(batch, on_pool(1, || run(&x, t)), "{isa:?}: thread count changed the result");
            if gemm {
                // Tokens 3.. and 0..3 in batches of 16 (the last one shorter is padded
                // with earlier tokens): every token at another position and tile.
                let order: Vec<usize> = (3..t).chain(0..3).collect();
                for chunk in order.chunks(16) {
                    let mut ids = chunk.to_vec();
                    ids.extend((0..16 - chunk.len()).map(|i| (i * 5) % t));
                    let xs: Vec<f32> = ids.iter().flat_map(|&i| x[i * k..(i + 1) * k].iter().copied()).collect();
                    let o = on_pool(2, || run(&xs, ids.len()));
                    for (j, &tok) in ids.iter().enumerate() {
                        assert_eq!(&batch[tok * n..(tok + 1) * n], &o[j * n..(j + 1) * n], "{isa:?}: token {tok}");
                    }
                }
                // Below 16 tokens: alone against a batch of 7.
                let small = on_pool(2, || run(&x[..7 * k], 7));
                for tok in 0..7 {
                    let single = on_pool(2, || run(&x[tok * k..(tok + 1) * k], 1));
                    assert_eq!(&small[tok * n..(tok + 1) * n], &single[..], "{isa:?}: token {tok} of 7");
                }
            } else {
                for tok in 0..t {
                    let single = on_pool(2, || run(&x[tok * k..(tok + 1) * k], 1));
                    assert_eq!(&batch[tok * n..(tok + 1) * n], &single[..], "{isa:?}: token {tok}");
                }
            }
        }
    }
}

/// The INT4 prefill kernel computes, per (row, token), exactly the float operations its
/// module documents: checked bit for bit against them spelled out in scalar code, with
/// row-panel and token-tile edges.
#[test]
fn int4_prefill_kernel_follows_its_summation_order() {
    let cases = [(1000, 576, 64, 77), (17, 1536, 128, 16), (3, 64, 32, 21), (40, 128, 64, 33), (33, 192, 64, 64)];
    for (case, (n, k, g, t)) in cases.into_iter().enumerate() {
        let Some(isa) = isas().into_iter().find(|&i| int4_gemm(i, t)) else { return };
        let (q, x) = int4_case(n, k, g, t, 70 + case as u64);
        let w = q.view();
        let mut out = vec![0.0f32; t * n];
        mm4(isa, &w, &x, t, &mut out);
        let mut a = ActQ8::default();
        a.quantize(isa, &x, t, k, g);
        let ng = k / g;
        for tok in 0..t {
            for r in 0..n {
                let (mut tot, mut extra) = (0.0f32, 0.0f32);
                for blk in 0..k / 32 {
                    let isum: i32 = (blk * 32..blk * 32 + 32).map(|c| w.code(r, c) as i32 * a.q[tok * k + c] as i32).sum();
                    let s = w.scales()[r * ng + blk * 32 / g].to_f32();
                    tot = (isum as f32).mul_add(s * a.scale(tok, blk), tot);
                }
                for grp in 0..ng {
                    let (s, m) = (w.scales()[r * ng + grp].to_f32(), w.mins()[r * ng + grp].to_f32());
                    extra = m.mul_add(a.group_sum(tok, grp), extra);
                    extra = s.mul_add(a.centred_residual(tok, grp), extra);
                }
                let want = tot + extra;
                assert_eq!(out[tok * n + r].to_bits(), want.to_bits(), "n{n} k{k} g{g} t{t}: row {r} token {tok}");
            }
        }
    }
}

/// The x86 paths (AVX2, AVX-VNNI, AVX512-VNNI) form the same integer sums and go through
/// the same float operations: bit-identical outputs, decode and prefill, edge tiles too;
/// except calls on the INT4 prefill kernel (AVX512-VNNI, 16+ tokens), whose order differs.
#[test]
fn int4_x86_paths_agree_bit_for_bit() {
    let paths: Vec<Isa> = available().into_iter().filter(|&i| i != Isa::Scalar).collect();
    let cases = [(1000, 576, 64, 77), (17, 1536, 128, 1), (3, 64, 32, 9), (576, 1536, 64, 8), (13, 128, 64, 2)];
    for (case, (n, k, g, t)) in cases.into_iter().enumerate() {
        let (q, x) = int4_case(n, k, g, t, 50 + case as u64);
        let bits = |isa: Isa| {
            let mut o = vec![0.0f32; t * n];
            mm4(isa, &q.view(), &x, t, &mut o);
            o.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let Some(&first) = paths.first() else { return };
        let want = bits(first);
        for &isa in paths[1..].iter().filter(|&&i| !int4_gemm(i, t)) {
            assert!(bits(isa) == want, "{isa:?} differs from {first:?} at n{n} k{k} g{g} t{t}");
        }
    }
}

/// The activation quantization's cost in accuracy, relative to the exact product: small
/// for Gaussian activations, larger with outlier channels (which coarsen their blocks).
/// Measured: 0.55% and 1.23% relative RMS (1.3% and 3.2% without the centred residual
/// term of `act::CODE_CENTER`).
#[test]
fn activation_quantization_error() {
    let (n, k, g, t) = (512, 1536, 64, 8);
    let (q, x_outliers) = int4_case(n, k, g, t, 9);
    let x_plain = Rng::new(10).gauss_vec(t * k, 1.0);
    for (x, bound) in [(&x_plain, 0.0065), (&x_outliers, 0.015)] {
        let (mut exact, mut out) = (vec![0.0; t * n], vec![0.0; t * n]);
        int4::matmul_ref(&q.view(), x, t, &mut exact);
        int4::matmul(&q.view(), x, t, &mut out);
        let e = super::util::rel_rms(&exact, &out);
        eprintln!("int4 matmul vs exact: rel RMS {e:.4} (bound {bound})");
        assert!(e < bound);
    }
}

#[test]
fn empty_products_are_fine() {
    let q = int4::quantize(&[], 0, 64, 32, None);
    int4::matmul(&q.view(), &[0.0; 64], 1, &mut []);
    let q = int4::quantize(&[0.5; 64], 1, 64, 32, None);
    int4::matmul(&q.view(), &[], 0, &mut []);
    let w = Int8Matrix::new(&[], &[], 0, 32, 32).expect("empty view");
    int8::matmul(&w, &[1.0; 64], 2, &mut []);
}

#[test]
#[should_panic(expected = "int4 matmul: x has")]
fn int4_matmul_checks_x() {
    let q = int4::quantize(&[0.5; 128], 2, 64, 32, None);
    int4::matmul(&q.view(), &[0.0; 65], 1, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "int8 matmul: out has")]
fn int8_matmul_checks_out() {
    let q = int8::quantize(&[0.5; 128], 2, 64, 32, None);
    int8::matmul(&q.view(), &[0.0; 64], 1, &mut [0.0; 3]);
}

/// The aarch64 INT4 paths (NEON, NEON + dotprod) form the scalar path's integer sums and
/// run its float operations in its order: bit-identical to it, decode and prefill.
#[test]
fn int4_neon_paths_match_scalar_bit_for_bit() {
    #[cfg(target_arch = "aarch64")]
    let paths: Vec<Isa> = available().into_iter().filter(|&i| matches!(i, Isa::Neon | Isa::DotProd)).collect();
    #[cfg(not(target_arch = "aarch64"))]
    let paths: Vec<Isa> = Vec::new();
    let cases = [(1000, 576, 64, 77), (17, 1536, 128, 1), (3, 64, 32, 9), (40, 128, 32, 8), (13, 192, 64, 2)];
    for (case, (n, k, g, t)) in cases.into_iter().enumerate() {
        let (q, x) = int4_case(n, k, g, t, 60 + case as u64);
        let bits = |isa: Isa| {
            let mut o = vec![0.0f32; t * n];
            mm4(isa, &q.view(), &x, t, &mut o);
            o.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let want = bits(Isa::Scalar);
        for &isa in &paths {
            assert!(bits(isa) == want, "{isa:?} differs from scalar at n{n} k{k} g{g} t{t}");
        }
    }
    eprintln!("int4 aarch64 paths checked against scalar: {paths:?}");
}

/// The panel layout (AVX512-VNNI only; skipped elsewhere): calls under 64 tokens give bit
/// for bit what the prefill GEMM gives for the same tokens in a larger call (so a token's
/// result is the same alone or in any batch), on shapes with partial panels and group
/// sizes 32 to 128.
#[test]
#[cfg(target_arch = "x86_64")]
fn int4_panels_equal_the_gemm_for_any_batch() {
    let (q, x) = int4_case(17, 576, 64, 40, 11);
    if int4::Int4Panels::new(&q.view()).is_none() {
        eprintln!("no AVX512-VNNI here: the panel kernel is not used");
        return;
    }
    for (n, k, g, seed) in [(1000, 576, 64, 1), (17, 1536, 128, 2), (35, 128, 32, 3), (576, 1536, 64, 4)] {
        let t = 40; // under PANELS_BELOW_T: every call below reads the panels
        let (q, x) = int4_case(n, k, g, t, seed);
        let w = q.view();
        let p = int4::Int4Panels::new(&w).expect("AVX512-VNNI");
        // The GEMM on all 40 tokens at once: the reference bits.
        let mut gemm = vec![0.0; t * n];
        on_pool(2, || mm4(Isa::Avx512Vnni, &w, &x, t, &mut gemm));
        for (from, len) in [(0, 40), (0, 1), (5, 1), (39, 1), (3, 2), (8, 7), (16, 8), (1, 15), (20, 16)] {
            let mut o = vec![0.0; len * n];
            on_pool(2, || int4::matmul_with_panels(&w, Some(&p), &x[from * k..(from + len) * k], len, &mut o));
            assert_eq!(&gemm[from * n..(from + len) * n], &o[..], "n{n} k{k} g{g}: tokens {from}..+{len}");
        }
        let mut one = vec![0.0; n];
        on_pool(1, || int4::matmul_with_panels(&w, Some(&p), &x[..k], 1, &mut one));
        assert_eq!(&gemm[..n], &one[..], "n{n} k{k} g{g}: one thread");
    }
    let _ = x;
}
