//! `FrozenWeight` over INT8, INT4 and INT3 matrices (the tiny random Qwen2's, converted)
//! against f64 products with the dequantized matrix: the input gradient and the f64 forward
//! exactly, the f32 forward (squish-quant's kernels) within what int8 activations cost.

use super::frozen::FrozenWeight;
use crate::convert::{convert, ConvertOptions, Scheme};
use crate::linear::Weight;
use crate::Source;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Gaussian-ish values from a fixed LCG (sum of uniforms), so failures reproduce.
fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut u = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n).map(|_| (0..4).map(|_| u()).sum::<f32>() * 1.7).collect()
}

/// a (m, k) · bᵀ where b is (n, k), in f64.
fn matmul_t(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|c| a[i * k + c] as f64 * b[j * k + c] as f64).sum();
        }
    }
    out
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|i| a[(i % rows) * cols + i / rows]).collect()
}

/// RMS of (got - want) over RMS of want.
fn rel_rms(got: &Tensor, want: &[f64]) -> f64 {
    let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(got.len(), want.len());
    let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    (err / want.iter().map(|w| w * w).sum::<f64>()).sqrt()
}

fn quantized(scheme: Scheme, name: &str, out: usize, inp: usize) -> (Weight, Vec<f32>) {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/qwen2");
    let dir = std::env::temp_dir().join(format!("squish-frozen-{}-{}", scheme.name(), std::process::id()));
    if !dir.join("squish.json").is_file() {
        let opts = ConvertOptions { scheme, group_size: None, embedding_scheme: Some(scheme), calib: None, calib_tokens: 0, tune_epochs: 0, force: true };
        convert(&tiny, &dir, &opts, &mut |_| {}).unwrap();
    }
    let source = Source::open(&dir).unwrap();
    let (w, _) = source.weights(&Device::Cpu).linear(name, out, inp).unwrap().into_parts();
    let stored = match &w {
        Weight::Int8 { .. } => Scheme::Int8,
        Weight::Int4 { .. } => Scheme::Int4,
        Weight::Int3 { .. } => Scheme::Int3,
        Weight::Int2 { .. } => Scheme::Int2,
        Weight::Dense(_) => panic!("{name} stayed dense under {scheme:?}"),
        Weight::Gpu { .. } => panic!("{name}: a CPU load made a GPU weight"),
    };
    // INT3 keeps the last layers' down_proj in INT4 (`plan::int3_keeps_int4`).
    assert!(stored == scheme || name.contains("down_proj"), "{name}: {stored:?} under {scheme:?}");
    let all: Vec<u32> = (0..out as u32).collect();
    let dense = w.rows(&all, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (w, dense)
}

#[test]
fn quantized_frozen_products_match_the_dequantized_matrix() {
    // lm_head (320 x 64) spans two panels, the second partial; down_proj has k = 128. INT8's
    // kernel keeps activations in f32, or on AVX512-VNNI rounds them to two int8 levels per
    // block of 32 (measured 1.9e-5 relative RMS here); INT4's and INT3's round them to one,
    // which costs about 0.5% (measured 5.2e-3 here; squish-quant's kernel tests hold it
    // under 6.5e-3 on Gaussian inputs).
    for (scheme, fwd_tol) in [(Scheme::Int8, 1e-4), (Scheme::Int4, 8e-3), (Scheme::Int3, 8e-3)] {
        for (name, n, k) in [("lm_head", 320, 64), ("model.layers.1.mlp.down_proj", 64, 128)] {
            let (w, dense) = quantized(scheme, name, n, k);
            let frozen = FrozenWeight::new(w, DType::F32).unwrap();
            let m = 40;
            let (x, dy) = (randn(m * k, 1), randn(m * n, 2));
            let want_y = matmul_t(&x, &dense, m, n, k);
            let want_dx = matmul_t(&dy, &transpose(&dense, n, k), m, k, n);
            let (xt, dyt) = (Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap(), Tensor::from_vec(dy, (m, n), &Device::Cpu).unwrap());

            // f32: the inference kernel forward; the panelled gradient exact but for f32 sums.
            let e = rel_rms(&frozen.forward(&xt).unwrap(), &want_y);
            eprintln!("{scheme:?} {name}: f32 forward rel RMS {e:.2e}");
            assert!(e < fwd_tol, "{scheme:?} {name}: f32 forward off by {e} relative RMS");
            let e = rel_rms(&frozen.input_grad(&dyt).unwrap(), &want_dx);
            assert!(e < 1e-6, "{scheme:?} {name}: f32 input gradient off by {e} relative RMS");

            // f64: both products exact.
            let (x64, dy64) = (xt.to_dtype(DType::F64).unwrap(), dyt.to_dtype(DType::F64).unwrap());
            let e = rel_rms(&frozen.forward(&x64).unwrap(), &want_y);
            assert!(e < 1e-12, "{scheme:?} {name}: f64 forward off by {e}");
            let e = rel_rms(&frozen.input_grad(&dy64).unwrap(), &want_dx);
            assert!(e < 1e-12, "{scheme:?} {name}: f64 input gradient off by {e}");
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("squish-frozen-{}-{}", scheme.name(), std::process::id())));
    }
}
