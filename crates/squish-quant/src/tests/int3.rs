//! INT3: the bit-plane packing as specified, the quantizers (search over plain rounding,
//! GPTQ over diagonal weighting), and the kernels against the scalar references on every
//! path this CPU runs, odd shapes included.

use super::kernels::{abs_dots, act_quant_bound, int4_gemm, isas, shapes};
use super::util::{on_pool, rel_rms, Rng};
use crate::isa::{available, Isa};
use crate::{f16, int3, int4, Int3Matrix, Int3Owned};
use int3::Int3Quantized;

/// A code pattern that fills every value 0..=7 at every position class.
fn pattern(r: usize, c: usize) -> u8 {
    ((c * 5 + r * 3 + c / 7) % 8) as u8
}

#[test]
fn int3_packing_matches_the_spec_and_round_trips() {
    let (n, k, g) = (3, 192, 64);
    let rb = k * 3 / 8;
    let mut codes = vec![0u8; n * rb];
    for r in 0..n {
        let row: Vec<u8> = (0..k).map(|c| pattern(r, c)).collect();
        int3::pack_row(&row, &mut codes[r * rb..(r + 1) * rb]);
    }
    for r in 0..n {
        for b in 0..k / 64 {
            let blk = &codes[r * rb + b * 24..r * rb + b * 24 + 24];
            let q = |j: usize| pattern(r, 64 * b + j);
            for (j, &byte) in blk[..16].iter().enumerate() {
                let want = (q(j) & 3) | (q(16 + j) & 3) << 2 | (q(32 + j) & 3) << 4 | (q(48 + j) & 3) << 6;
                assert_eq!(byte, want, "row {r} block {b} low byte {j}");
            }
            for j in 0..8 {
                for i in 0..8 {
                    assert_eq!(blk[16 + j] >> i & 1, q(8 * i + j) >> 2, "row {r} block {b} high byte {j} bit {i}");
                }
            }
        }
    }
    let ng = k / g;
    let scales: Vec<f16> = (0..n * ng).map(|i| f16::from_f32(1.0 + (i % ng) as f32)).collect();
    let mins = vec![f16::from_f32(-0.5); n * ng];
    let w = Int3Matrix::new(&codes, &scales, &mins, n, k, g).expect("valid view");
    let dq = int3::dequantize(&w);
    for r in 0..n {
        let mut row = vec![0.0; k];
        int3::dequantize_row(&w, r, &mut row);
        for c in 0..k {
            assert_eq!(w.code(r, c), pattern(r, c), "unpacked code ({r}, {c})");
            assert_eq!(dq[r * k + c], (1.0 + (c / g) as f32) * pattern(r, c) as f32 - 0.5);
            assert_eq!(row[c], dq[r * k + c]);
        }
    }
    assert_eq!(Int3Matrix::bits_per_weight(64), 3.5);
    assert_eq!(w.bytes(), n * rb + 4 * n * ng);
}

#[test]
fn int3_views_check_their_shapes() {
    let z = f16::ZERO;
    let (codes, s) = (vec![0u8; 2 * 48], vec![z; 4]);
    assert!(Int3Matrix::new(&codes, &s, &s, 2, 128, 64).is_ok());
    let e = Int3Matrix::new(&codes[..95], &s, &s, 2, 128, 64).unwrap_err().to_string();
    assert!(e.contains("int3 codes"), "{e}");
    assert!(Int3Matrix::new(&codes, &s[..3], &s, 2, 128, 64).unwrap_err().to_string().contains("scales"));
    assert!(Int3Matrix::new(&codes, &s, &s, 2, 96, 32).is_err(), "k not a multiple of 64");
    assert!(Int3Owned::from_parts(vec![0; 10], vec![z; 4], vec![z; 4], 2, 128, 64).is_err());
}

/// The stored form (8-bit parameter codes on per-row grids) expands back to exactly the f16
/// scales and mins the codes were chosen for; the grids cost little over f16 parameters.
#[test]
fn int3_stored_parameters_expand_to_the_quantized_ones() {
    let (n, k, g) = (37, 576, 64);
    let mut rng = Rng::new(5);
    // Rows of very different magnitudes, and a zero row.
    let w: Vec<f32> = (0..n * k).map(|i| rng.gauss() * 0.01 * (1 + i / k % 7) as f32 * if i / k == 3 { 0.0 } else { 1.0 }).collect();
    let (q, err) = int3::quantize_with_error(&w, n, k, g, None);
    let want = q.clone();
    let (codes, s8, m8, steps) = q.into_stored();
    assert_eq!((codes.len(), s8.len(), m8.len(), steps.len()), (n * k * 3 / 8, n * k / g, n * k / g, 2 * n));
    let (scales, mins) = int3::expand_params(&s8, &m8, &steps).unwrap();
    assert_eq!(scales, want.matrix().scales());
    assert_eq!(mins, want.matrix().mins());
    let back = Int3Matrix::new(&codes, &scales, &mins, n, k, g).unwrap();
    assert_eq!(int3::dequantize(&back), int3::dequantize(&want.view()));
    // Against f16 parameters (the first pass): at most a few percent more error.
    let (first, err16) = crate::int4::quant::quantize_grouped::<int3::Planes>(&w, n, k, g, None, crate::fit::Search::Clip, None);
    assert!(err <= 1.03 * err16, "grid {err} vs f16 {err16}");
    assert!(first.scales().len() == scales.len());
    assert!(int3::expand_params(&s8[1..], &m8, &steps).is_err());
    // INT4 on the same grids (`int4p8`, what the int3 recipe keeps its sensitive matrices in).
    let (q4, q4_16) = (int4::quantize_p8(&w, n, k, g, None), int4::quantize(&w, n, k, g, None));
    let want4 = q4.clone();
    let (_, s8, m8, steps) = q4.into_stored();
    let (scales, mins) = int3::expand_params(&s8, &m8, &steps).unwrap();
    assert_eq!((&scales[..], &mins[..]), (want4.matrix().scales(), want4.matrix().mins()));
    let (e8, e16) = (rel_rms(&w, &int4::dequantize(&want4.view())), rel_rms(&w, &int4::dequantize(&q4_16.view())));
    assert!(e8 <= 1.02 * e16, "int4 on 8-bit grids {e8} vs f16 parameters {e16}");
}

#[test]
fn int3_search_beats_plain_rounding_and_stays_within_its_bound() {
    let (n, k) = (64, 576);
    let w = Rng::new(3).gauss_vec(n * k, 0.05);
    let h: Vec<f32> = (0..k).map(|c| 0.1 + (c % 13) as f32).collect();
    for g in [32, 64, 96] {
        let (q, searched) = int3::quantize_with_error(&w, n, k, g, Some(&h));
        let (_, plain) = int3::quantize_minmax(&w, n, k, g, Some(&h));
        assert!(searched < 0.85 * plain, "g{g}: search {searched} vs min/max {plain}");
        // Gaussian weights at 3 bits: 0.15-0.18 relative RMS (INT4's is about half).
        let e = rel_rms(&w, &int3::dequantize(&q.view()));
        let e4 = rel_rms(&w, &int4::dequantize(&int4::quantize(&w, n, k, g, None).view()));
        assert!(e < 0.19 && e > 1.6 * e4, "g{g}: int3 rel RMS {e}, int4 {e4}");
        assert!(q.matrix().codes().len() == n * k * 3 / 8);
    }
    // Row-parallel quantization gives the same bits on any thread count.
    let one = on_pool(1, || int3::quantize_with_error(&w, n, k, 64, None));
    assert_eq!(one, on_pool(2, || int3::quantize_with_error(&w, n, k, 64, None)));
}

/// On correlated inputs, INT3 GPTQ's output error is below the diagonal-weighted search's
/// (by 6% on these).
#[test]
fn int3_gptq_lowers_the_output_error() {
    let (n, k, g, t) = (16, 128, 64, 512);
    let mut rng = Rng::new(11);
    let w = rng.gauss_vec(n * k, 0.3);
    let x: Vec<f32> = (0..t)
        .flat_map(|_| {
            let common = rng.gauss() * 2.0;
            (0..k).map(|_| common + rng.gauss()).collect::<Vec<_>>()
        })
        .collect();
    let mut h = vec![0f64; k * k];
    for row in x.chunks(k) {
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] += (row[i] * row[j]) as f64 / t as f64;
            }
        }
    }
    let out_err = |q: &Int3Quantized| -> f64 {
        let deq = int3::dequantize(&q.view());
        let mut e = 0.0;
        for xr in x.chunks(k) {
            for r in 0..n {
                let d: f64 = (0..k).map(|c| ((w[r * k + c] - deq[r * k + c]) * xr[c]) as f64).sum();
                e += d * d;
            }
        }
        e
    };
    let diag: Vec<f32> = (0..k).map(|i| h[i * k + i] as f32).collect();
    let weighted = int3::quantize(&w, n, k, g, Some(&diag));
    let gptq = int3::quantize_gptq(&w, n, k, g, &int3::GptqFactor::new(h, k));
    let (a, b) = (out_err(&gptq), out_err(&weighted));
    assert!(a < 0.96 * b, "gptq {a} vs diagonal-weighted rounding {b}");
}

fn int3_case(n: usize, k: usize, g: usize, t: usize, seed: u64) -> (Int3Owned, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w = rng.gauss_vec(n * k, 0.05);
    let mut x = rng.gauss_vec(t * k, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i % k % 97 == 13 {
            *v *= 20.0;
        }
    }
    (int3::quantize(&w, n, k, g, None).matrix().clone(), x)
}

#[test]
fn int3_kernels_match_the_references() {
    let mut worst_rel = 0.0f64;
    let extra = [(5, 192, 96, 3), (9, 576, 96, 1), (33, 1536, 96, 9), (2, 320, 64, 5)];
    for (case, (n, k, g, t)) in shapes().chain(extra).enumerate() {
        let (q, x) = int3_case(n, k, g, t, 200 + case as u64);
        let w = q.view();
        let (mut exact, mut q8) = (vec![0.0; t * n], vec![0.0; t * n]);
        int3::matmul_ref(&w, &x, t, &mut exact);
        int3::matmul_ref_q8(&w, &x, t, &mut q8);
        let scale = abs_dots(&int3::dequantize(&w), &x, n, k, t);
        let bound = act_quant_bound(&w, &x, t);
        for isa in isas() {
            let mut out = vec![f32::NAN; t * n];
            int3::matmul_with(isa, &w, &x, t, &mut out);
            for i in 0..t * n {
                let (y, yq, ye) = (out[i] as f64, q8[i] as f64, exact[i] as f64);
                let tol = 1e-4 * scale[i] + 1e-30;
                assert!((y - yq).abs() <= tol, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs q8 ref {yq}");
                assert!((y - ye).abs() <= bound[i] * 1.001 + tol, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs exact {ye}");
                worst_rel = worst_rel.max((y - yq).abs() / scale[i].max(1e-30));
            }
        }
    }
    eprintln!("int3 kernels ({:?}): worst |Δ| vs q8 ref {worst_rel:.2e} of Σ|wx|", isas());
}

/// The x86 paths give the same bits; a token's result does not depend on the thread count,
/// nor on its batch: calls under 16 tokens run the tile kernel (any batch = alone), calls of
/// 16+ on AVX512-VNNI the prefill GEMM (any batch of 16+ = the same bits, which differ
/// from the tile kernel's in the last bits, as for INT4).
#[test]
fn int3_results_do_not_depend_on_path_batching_or_threads() {
    let (n, k, g, t) = (1000, 576, 64, 77);
    let (q, x) = int3_case(n, k, g, t, 7);
    let paths: Vec<Isa> = available().into_iter().filter(|&i| i != Isa::Scalar).collect();
    let run = |isa: Isa, x: &[f32], t: usize| {
        let mut o = vec![0.0; t * n];
        int3::matmul_with(isa, &q.view(), x, t, &mut o);
        o
    };
    let mut first: Option<Vec<f32>> = None;
    for isa in paths {
        let batch = on_pool(2, || run(isa, &x, t));
        assert_eq!(batch, on_pool(1, || run(isa, &x, t)), "{isa:?}: thread count changed the result");
        let small = on_pool(2, || run(isa, &x[..7 * k], 7));
        for tok in [0, 3, 6] {
            let single = on_pool(2, || run(isa, &x[tok * k..(tok + 1) * k], 1));
            assert_eq!(&small[tok * n..(tok + 1) * n], &single[..], "{isa:?}: token {tok} of 7");
        }
        // The last 20 tokens as a batch of their own.
        let tail = on_pool(2, || run(isa, &x[57 * k..], 20));
        assert_eq!(&batch[57 * n..], &tail[..], "{isa:?}: tokens 57.. in another batch");
        if !int4_gemm(isa, t) {
            let single = on_pool(2, || run(isa, &x[63 * k..64 * k], 1));
            assert_eq!(&batch[63 * n..64 * n], &single[..], "{isa:?}: token 63 alone");
            match &first {
                Some(f) => assert!(f.iter().zip(&batch).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} differs"),
                None => first = Some(batch),
            }
        }
    }
}

#[test]
#[should_panic(expected = "int3 matmul: x has")]
fn int3_matmul_checks_x() {
    let q = int3::quantize(&[0.5; 128], 2, 64, 32, None);
    int3::matmul(&q.view(), &[0.0; 65], 1, &mut [0.0; 2]);
}

/// 8-bit group parameters rescaled by factors: ones change nothing; a factor moves the
/// group's scale and min by it, within half a step of their (possibly widened) grids.
#[test]
fn params8_rescale_moves_scales_and_mins_by_their_factors() {
    use crate::params8;
    let (n, ng) = (2, 6);
    let steps: Vec<f16> = [0.002f32, 0.001, 0.003, 0.002].iter().map(|&v| f16::from_f32(v)).collect();
    let s8: Vec<u8> = (0..n * ng).map(|i| (31 * i % 200 + 30) as u8).collect();
    let m8: Vec<i8> = (0..n * ng).map(|i| (23 * i % 200) as i8 - 100).collect();
    let (mut s, mut m, mut st) = (s8.clone(), m8.clone(), steps.clone());
    params8::rescale(&mut s, &mut m, &mut st, &vec![1.0; n * ng]);
    assert_eq!((s, m, st), (s8.clone(), m8.clone(), steps.clone()));
    let factors: Vec<f32> = (0..n * ng).map(|i| [0.9, 1.1, 1.7][i % 3]).collect();
    let (mut s, mut m, mut st) = (s8.clone(), m8.clone(), steps.clone());
    params8::rescale(&mut s, &mut m, &mut st, &factors);
    for r in 0..n {
        for j in 0..ng {
            let i = r * ng + j;
            for (got, want, step) in [
                (st[2 * r].to_f32() * s[i] as f32, steps[2 * r].to_f32() * s8[i] as f32 * factors[i], st[2 * r].to_f32()),
                (st[2 * r + 1].to_f32() * m[i] as f32, steps[2 * r + 1].to_f32() * m8[i] as f32 * factors[i], st[2 * r + 1].to_f32()),
            ] {
                assert!((got - want).abs() <= 0.5 * step + 1e-3 * want.abs(), "row {r} group {j}: {got} vs {want}");
            }
        }
    }
}
