//! INT2: the packing as specified, the views' checks, the stored parameters, the codebook
//! search (its error falls round by round, GPTQ beats diagonal weighting) and the kernels
//! against the scalar references on every path this CPU runs.

use super::kernels::{abs_dots, act_quant_bound, int4_gemm, isas, shapes};
use super::util::{on_pool, rel_rms, Rng};
use crate::isa::{available, Isa};
use crate::{f16, int2};

/// A table with distinct first and second values (first: 4e + 1, second: 120 - 7e).
fn table() -> [u8; 32] {
    core::array::from_fn(|i| if i < 16 { (4 * i + 1) as u8 } else { (120 - 7 * (i - 16)) as u8 })
}

fn pattern(r: usize, p: usize) -> u8 {
    ((p * 5 + r * 3 + p / 7) % 16) as u8
}

#[test]
fn int2_packing_matches_the_spec_and_round_trips() {
    let (n, k, g) = (3, 192, 64);
    let rb = k / 4;
    let mut codes = vec![0u8; n * rb];
    for r in 0..n {
        let pairs: Vec<u8> = (0..k / 2).map(|p| pattern(r, p)).collect();
        int2::pack_row(&pairs, &mut codes[r * rb..(r + 1) * rb]);
        let mut back = vec![0u8; k / 2];
        int2::unpack_row(&codes[r * rb..(r + 1) * rb], &mut back);
        assert_eq!(back, pairs, "row {r} round trip");
        for b in 0..k / 64 {
            for p in 0..16 {
                let byte = codes[r * rb + 16 * b + p];
                assert_eq!(byte & 15, pattern(r, 32 * b + p), "row {r} block {b} byte {p} low");
                assert_eq!(byte >> 4, pattern(r, 32 * b + 16 + p), "row {r} block {b} byte {p} high");
            }
        }
    }
    let ng = k / g;
    let t = table();
    let steps: Vec<f16> = (0..n).map(|r| f16::from_f32(0.001 * (r + 1) as f32)).collect();
    let s8: Vec<u8> = (0..n * ng).map(|i| (10 + 20 * i) as u8).collect();
    let (scales, mins) = int2::expand_params(&s8, &steps).expect("fits");
    let w = int2::matrix(&codes, &scales, &mins, &t, n, k, g).expect("valid view");
    let dq = int2::dequantize(&w);
    for r in 0..n {
        let mut row = vec![0.0; k];
        int2::dequantize_row(&w, r, &mut row);
        for c in 0..k {
            let e = pattern(r, c / 2) as usize;
            let v = if c % 2 == 0 { t[e] } else { t[16 + e] };
            assert_eq!(w.code(r, c), v, "value ({r}, {c})");
            let s = scales[r * ng + c / g];
            assert_eq!(s, f16::from_f32(steps[r].to_f32() * s8[r * ng + c / g] as f32));
            assert_eq!(mins[r * ng + c / g].to_f32(), -64.0 * s.to_f32());
            assert_eq!(dq[r * k + c], s.to_f32() * (v as f32 - 64.0));
            assert_eq!(row[c], dq[r * k + c]);
        }
    }
}

#[test]
fn int2_views_check_their_shapes_and_table() {
    let z = f16::ZERO;
    let (codes, s, t) = (vec![0u8; 2 * 32], vec![z; 4], table());
    assert!(int2::matrix(&codes, &s, &s, &t, 2, 128, 64).is_ok());
    assert!(int2::matrix(&codes[..63], &s, &s, &t, 2, 128, 64).unwrap_err().to_string().contains("int2 codes"));
    assert!(int2::matrix(&codes, &s, &s, &t[..31], 2, 128, 64).unwrap_err().to_string().contains("table"));
    let mut bad = t;
    bad[3] = 128;
    assert!(int2::matrix(&codes, &s, &s, &bad, 2, 128, 64).is_err(), "values above 127");
    assert!(int2::matrix(&codes, &s, &s, &t, 2, 96, 32).is_err(), "k not a multiple of 64");
    assert!(crate::Int3Matrix::new(&[0; 96], &s, &s, 2, 128, 64).unwrap().with_table(&t).is_err(), "int3 has no table");
}

/// The stored parts expand back to the matrix the quantizer returned, bit for bit.
#[test]
fn int2_stored_parts_expand_to_the_quantized_matrix() {
    let (n, k, g) = (37, 576, 64);
    let mut rng = Rng::new(5);
    let w: Vec<f32> = (0..n * k).map(|i| rng.gauss() * 0.01 * (1 + i / k % 7) as f32 * if i / k == 3 { 0.0 } else { 1.0 }).collect();
    let q = int2::quantize(&w, n, k, g, None);
    let want = int2::dequantize(&q.view());
    let (codes, s8, steps, t) = q.into_stored();
    assert_eq!((codes.len(), s8.len(), steps.len()), (n * k / 4, n * k / g, n));
    let (scales, mins) = int2::expand_params(&s8, &steps).expect("fits");
    let got = int2::dequantize(&int2::matrix(&codes, &scales, &mins, &t, n, k, g).expect("fits"));
    assert_eq!(got, want);
    assert!(got[3 * k..4 * k].iter().all(|&v| v == 0.0), "the zero row stays zero");
    let e = rel_rms(&w, &got);
    assert!(e < 0.40, "relative RMS error {e}");
}

/// The codebook search lowers the error monotonically on a fixed random matrix: the
/// k-means objective at every iteration, and the weighted error round by round.
#[test]
fn int2_codebook_search_lowers_the_error_monotonically() {
    let (n, k, g) = (64, 256, 64);
    let mut rng = Rng::new(11);
    // Heavy-ish tails and uneven channels, so the codebook has something to learn.
    let w: Vec<f32> = (0..n * k).map(|_| rng.gauss() * (0.5 + rng.uniform()).powi(2)).collect();
    let h: Vec<f32> = (0..k).map(|c| 0.2 + (c % 5) as f32).collect();
    let (_, objective) = int2::quant::kmeans_for_test(&w, k, g, &h, 12);
    for pair in objective.windows(2) {
        assert!(pair[1] <= pair[0] * (1.0 + 1e-9), "k-means objective rose: {objective:?}");
    }
    assert!(objective[objective.len() - 1] < 0.9 * objective[0], "{objective:?}");
    let (_, errors) = int2::quantize_with_error(&w, n, k, g, Some(&h), 5);
    for pair in errors.windows(2) {
        assert!(pair[1] <= pair[0] * 1.002, "round error rose: {errors:?}");
    }
    assert!(errors[errors.len() - 1] < errors[0], "{errors:?}");
}

/// On correlated inputs, GPTQ's output error is below the diagonal-weighted search's.
#[test]
fn int2_gptq_lowers_the_output_error() {
    let (n, k, g, t) = (32, 128, 64, 512);
    let mut rng = Rng::new(7);
    let w = rng.gauss_vec(n * k, 1.0);
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
    let out_err = |q: &int2::Int2Quantized| -> f64 {
        let deq = int2::dequantize(&q.view());
        let mut e = 0.0;
        for xr in x.chunks(k) {
            for r in 0..n {
                let d: f32 = (0..k).map(|c| (w[r * k + c] - deq[r * k + c]) * xr[c]).sum();
                e += (d as f64).powi(2);
            }
        }
        e
    };
    let diag: Vec<f32> = (0..k).map(|i| h[i * k + i] as f32).collect();
    let weighted = int2::quantize(&w, n, k, g, Some(&diag));
    let f = int2::GptqFactor::new(h, k);
    let one = int2::quantize_gptq_passes(&w, n, k, g, &f, 1);
    let gptq = int2::quantize_gptq(&w, n, k, g, &f);
    let (a, b, c) = (out_err(&gptq), out_err(&weighted), out_err(&one));
    eprintln!("int2 output error: diagonal-weighted {b:.1}, gptq one pass {c:.1}, {} passes {a:.1}", int2::GPTQ_PASSES);
    assert!(a < 0.8 * b, "gptq {a} vs diagonal-weighted {b}");
}

fn int2_case(n: usize, k: usize, g: usize, t: usize, seed: u64) -> (int2::Int2Quantized, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w = rng.gauss_vec(n * k, 0.05);
    let mut x = rng.gauss_vec(t * k, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i % k % 97 == 13 {
            *v *= 20.0;
        }
    }
    (int2::quantize(&w, n, k, g, None), x)
}

#[test]
fn int2_kernels_match_the_references() {
    let mut worst_rel = 0.0f64;
    let extra = [(5, 192, 96, 3), (9, 576, 96, 1), (33, 1536, 96, 9), (2, 320, 64, 5), (40, 576, 64, 17)];
    for (case, (n, k, g, t)) in shapes().chain(extra).enumerate() {
        let (q, x) = int2_case(n, k, g, t, 300 + case as u64);
        let w = q.view();
        let (mut exact, mut q8) = (vec![0.0; t * n], vec![0.0; t * n]);
        int2::matmul_ref(&w, &x, t, &mut exact);
        int2::matmul_ref_q8(&w, &x, t, &mut q8);
        let scale = abs_dots(&int2::dequantize(&w), &x, n, k, t);
        let bound = act_quant_bound(&w, &x, t);
        for isa in isas() {
            let mut out = vec![f32::NAN; t * n];
            int2::matmul_with(isa, &w, &x, t, &mut out);
            for i in 0..t * n {
                let (y, yq, ye) = (out[i] as f64, q8[i] as f64, exact[i] as f64);
                let tol = 1e-4 * scale[i] + 1e-30;
                assert!((y - yq).abs() <= tol, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs q8 ref {yq}");
                assert!((y - ye).abs() <= bound[i] * 1.001 + tol, "{isa:?} n{n} k{k} g{g} t{t} [{i}]: {y} vs exact {ye}");
                worst_rel = worst_rel.max((y - yq).abs() / scale[i].max(1e-30));
            }
        }
    }
    eprintln!("int2 kernels ({:?}): worst |Δ| vs q8 ref {worst_rel:.2e} of Σ|wx|", isas());
}

/// As for INT3: the x86 paths give the same bits, and a token's result depends neither on
/// the thread count nor on its batch (within the tile kernel, and within the prefill GEMM).
#[test]
fn int2_results_do_not_depend_on_path_batching_or_threads() {
    let (n, k, g, t) = (1000, 576, 64, 77);
    let (q, x) = int2_case(n, k, g, t, 7);
    let paths: Vec<Isa> = available().into_iter().filter(|&i| i != Isa::Scalar).collect();
    let run = |isa: Isa, x: &[f32], t: usize| {
        let mut o = vec![0.0; t * n];
        int2::matmul_with(isa, &q.view(), x, t, &mut o);
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
#[should_panic(expected = "int2 matmul: x has")]
fn int2_matmul_checks_x() {
    let q = int2::quantize(&[0.5; 128], 2, 64, 32, None);
    int2::matmul(&q.view(), &[0.0; 65], 1, &mut [0.0; 2]);
}

/// Rescaled group scales land on their rows' grids within half a step of scale x factor; a
/// row keeps its step unless a scale outgrows it, and factors of one change nothing.
#[test]
fn int2_rescale_moves_each_group_scale_by_its_factor() {
    let (n, ng) = (3, 9);
    let steps: Vec<f16> = (0..n).map(|r| f16::from_f32(0.001 * (r + 1) as f32)).collect();
    let s8: Vec<u8> = (0..n * ng).map(|i| (17 * i % 200 + 20) as u8).collect();
    let (mut same, mut same_steps) = (s8.clone(), steps.clone());
    int2::rescale(&mut same, &mut same_steps, &vec![1.0; n * ng]);
    assert_eq!((same, same_steps), (s8.clone(), steps.clone()));
    let factors: Vec<f32> = (0..n * ng).map(|i| if i == ng + 4 { 1.6 } else { 0.9 + 0.02 * (i % 10) as f32 }).collect();
    let (mut codes, mut new_steps) = (s8.clone(), steps.clone());
    int2::rescale(&mut codes, &mut new_steps, &factors);
    for r in 0..n {
        let (old, new) = (steps[r].to_f32(), new_steps[r].to_f32());
        let wanted: Vec<f32> = (0..ng).map(|j| (old * s8[r * ng + j] as f32) * factors[r * ng + j]).collect();
        let top = wanted.iter().cloned().fold(0f32, f32::max);
        if top <= 255.0 * old {
            assert_eq!(new, old, "row {r} keeps its step");
        } else {
            assert!(new * 255.0 >= top && new < old * 1.6, "row {r}: step {new} for {top}");
        }
        for j in 0..ng {
            let got = new * codes[r * ng + j] as f32;
            // Half a step, plus the f16 rounding of the scale the kernels read.
            assert!((got - wanted[j]).abs() <= 0.5 * new + 1e-3 * wanted[j], "row {r} group {j}: {got} vs {}", wanted[j]);
        }
    }
}
