//! The decoder on a CUDA GPU against the same model on the CPU: the committed tiny models of
//! every architecture, dense and converted to INT4 and INT8, plus INT3 and INT2 (stored
//! rotated, with INT4 where the converter keeps sensitive matrices), all of whose packed
//! matrices run on squish-backend's GPU kernels.
//!
//! Skipped (passing, with a note on stderr) where the binary has no CUDA or the machine no GPU:
//! CI runs none of it; benchmarks/gpu/run.sh runs this test binary on a GPU machine.
//!
//! Tolerance: the GPU computes in bf16 (8 bits of mantissa) where the CPU computes in f32, so
//! every position's logits may differ by up to 4% of that position's largest |logit| (measured
//! on an H200: 1.7-2.0% dense), 10% for quantized models (see QUANTIZED_TOLERANCE), and the
//! greedy continuations must agree on their first token.

mod cuda_common;

use candle_core::Device;
use cuda_common::{converted, gpu, tiny};
use squish_model::convert::Scheme;
use squish_model::{argmax, Model};
use std::path::Path;

const TOLERANCE: f32 = 0.04;
/// Quantized models: the CPU's INT4/INT8 kernels also round activations to 8 bits (the GPU's
/// keep bf16), so the two sides differ by more than the compute dtype.
const QUANTIZED_TOLERANCE: f32 = 0.1;

/// Every position's logits of a fixed token sequence (and `greedy_at`'s pick of each, checked
/// against them), then 6 greedy tokens through the cache.
fn run(dir: &Path, device: &Device) -> (Vec<Vec<f32>>, Vec<u32>) {
    let model = Model::load(dir, device, Some(128)).unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 300).collect();
    let mut cache = model.new_cache().unwrap();
    let hidden = model.decoder.forward(&tokens, &mut cache).unwrap();
    let logits = model.decoder.logits(&hidden).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    // The argmax taken on the device picks a largest logit of every row (any of equal ones).
    let picked = model.decoder.greedy_at(&hidden, &(0..tokens.len()).collect::<Vec<_>>()).unwrap();
    for (pos, (row, &id)) in logits.iter().zip(&picked).enumerate() {
        assert_eq!(row[id as usize], row[argmax(row) as usize], "greedy_at on {device:?}, position {pos}");
    }
    let mut last = logits.last().unwrap().clone();
    let mut greedy = Vec::new();
    for _ in 0..6 {
        let t = argmax(&last);
        greedy.push(t);
        last = model.decoder.last_logits(&model.decoder.forward(&[t], &mut cache).unwrap()).unwrap();
    }
    (logits, greedy)
}

fn check(dir: &Path, label: &str, tolerance: f32) {
    let Some(gpu) = gpu() else { return };
    let (cpu_logits, cpu_greedy) = run(dir, &Device::Cpu);
    let (gpu_logits, gpu_greedy) = run(dir, &gpu);
    let mut worst = (0f32, 0);
    for (pos, (c, g)) in cpu_logits.iter().zip(&gpu_logits).enumerate() {
        let scale = c.iter().fold(1f32, |m, x| m.max(x.abs()));
        let d = c.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        if d > worst.0 {
            worst = (d, pos);
        }
    }
    eprintln!("{label}: worst relative logit difference {:.2e} (position {}); greedy cpu {cpu_greedy:?} cuda {gpu_greedy:?}", worst.0, worst.1);
    assert!(worst.0 <= tolerance, "{label}: position {}: max |diff| {} of the largest logit", worst.1, worst.0);
    assert_eq!(cpu_greedy[0], gpu_greedy[0], "{label}: first greedy token");
}

#[test]
fn dense_models_match_the_cpu() {
    for name in ["llama", "llama3", "mistral", "qwen2", "qwen3"] {
        check(&tiny(name), name, TOLERANCE);
    }
}

#[test]
fn int4_and_int8_models_match_the_cpu() {
    if gpu().is_none() {
        return;
    }
    for name in ["llama", "qwen2", "qwen3"] {
        for scheme in [Scheme::Int4, Scheme::Int8] {
            check(&converted(name, scheme), &format!("{name} {scheme:?}"), QUANTIZED_TOLERANCE);
        }
    }
}

#[test]
fn int3_and_int2_models_match_the_cpu() {
    if gpu().is_none() {
        return;
    }
    for name in ["llama", "qwen2"] {
        for scheme in [Scheme::Int3, Scheme::Int2] {
            check(&converted(name, scheme), &format!("{name} {scheme:?}"), QUANTIZED_TOLERANCE);
        }
    }
}
