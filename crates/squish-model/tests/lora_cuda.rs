//! LoRA training on a CUDA GPU against the CPU, on the committed tiny models, dense and
//! converted to INT4 (whose packed matrices stay packed on the GPU): one batch's loss and every
//! adapter gradient, then the same AdamW run on both devices.
//!
//! Skipped (passing, with a note on stderr) where the binary has no CUDA or the machine no GPU:
//! CI runs none of it; benchmarks/gpu/run.sh runs this test binary on a GPU machine.
//!
//! Reference: the CPU in f64, where the frozen products are exact. The GPU keeps the base in
//! bf16 (8 bits of mantissa) and rounds activations to bf16 for the base's products, so its
//! gradients may differ by a few percent (relative L2 per tensor); a wrong or missing term
//! would be off by the size of the gradient itself.

mod cuda_common;

use candle_core::{DType, Device, Tensor};
use cuda_common::{converted, gpu, tiny};
use squish_model::convert::Scheme;
use squish_model::lora::data::Example;
use squish_model::lora::trainer::{make_batch, Trainer};
use squish_model::lora::{Adapter, AdapterConfig, LoraPair, Target, TrainModel};
use squish_model::Source;
use std::collections::HashMap;

const GRAD_TOLERANCE: f64 = 0.08;
const LOSS_TOLERANCE: f64 = 0.01;

/// Rank 4 on four targets, B random too so that both factors get gradients.
fn adapter(source: &Source) -> Adapter {
    let config = AdapterConfig { rank: 4, alpha: 8.0, targets: vec![Target::Q, Target::V, Target::O, Target::Down], rslora: false, base: "tiny".into() };
    let mut a = Adapter::init(&source.config, config, 7, &Device::Cpu).unwrap();
    for p in a.pairs.values_mut() {
        let b = Tensor::randn(0f32, 0.2, p.b.dims(), &Device::Cpu).unwrap();
        *p = LoraPair { a: p.a.clone(), b };
    }
    a
}

/// Two right-padded rows of different lengths, the first two positions of each unscored.
fn rows() -> Vec<Example> {
    [(0..23).map(|i| (i * 37 + 5) % 300).collect::<Vec<u32>>(), (40..56).collect()]
        .into_iter()
        .map(|tokens: Vec<u32>| Example { scored: (0..tokens.len()).map(|i| i > 1).collect(), tokens, line: 1 })
        .collect()
}

/// The batch's loss and the gradient of every adapter tensor, as f64 values on the host.
fn loss_and_grads(source: &Source, adapter: &Adapter, dtype: DType, device: &Device) -> (f64, HashMap<String, Vec<f64>>) {
    let model = TrainModel::new(source, adapter, 64, dtype, device).unwrap();
    let batch = make_batch(&rows().iter().collect::<Vec<_>>(), device).unwrap();
    let loss = model.loss(&batch).unwrap();
    let grads = model.backward(&loss).unwrap();
    assert_eq!(grads.len(), model.vars().len(), "every adapter tensor gets a gradient on {device:?}");
    let host = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    (loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), grads.iter().map(|(k, g)| (k.clone(), host(g))).collect())
}

#[test]
fn gpu_loss_and_gradients_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for (label, path) in [("llama", tiny("llama")), ("qwen2", tiny("qwen2")), ("qwen3", tiny("qwen3")), ("qwen2 int4", converted("qwen2", Scheme::Int4))] {
        let source = Source::open(&path).unwrap();
        let adapter = adapter(&source);
        let (cpu_loss, cpu) = loss_and_grads(&source, &adapter, DType::F64, &Device::Cpu);
        let (gpu_loss, on_gpu) = loss_and_grads(&source, &adapter, DType::F32, &gpu);
        let loss_err = (gpu_loss - cpu_loss).abs() / cpu_loss;
        let mut worst = (0f64, String::new());
        for (name, g) in &cpu {
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            let diff = g.iter().zip(&on_gpu[name]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
            if diff / norm > worst.0 {
                worst = (diff / norm, name.clone());
            }
        }
        eprintln!("{label}: loss cpu {cpu_loss:.6} cuda {gpu_loss:.6} (relative {loss_err:.2e}); worst gradient {:.2e} relative ({})", worst.0, worst.1);
        assert!(loss_err < LOSS_TOLERANCE, "{label}: loss cpu {cpu_loss} cuda {gpu_loss}");
        assert!(worst.0 < GRAD_TOLERANCE, "{label}: {} off by {} relative", worst.1, worst.0);
    }
}

/// Twenty AdamW steps on one batch from the same adapter: the loss falls on both devices, and
/// the GPU's run ends within a tenth of the CPU's loss.
#[test]
fn gpu_training_follows_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for (label, path) in [("qwen2", tiny("qwen2")), ("llama int4", converted("llama", Scheme::Int4))] {
        let source = Source::open(&path).unwrap();
        let adapter = adapter(&source);
        let run = |device: &Device| -> Vec<f32> {
            let model = TrainModel::new(&source, &adapter, 64, DType::F32, device).unwrap();
            let mut trainer = Trainer::new(model, 5e-3, 2, 1).unwrap();
            let batch = make_batch(&rows().iter().collect::<Vec<_>>(), device).unwrap();
            (0..20).map(|_| trainer.step(&batch).unwrap()).collect()
        };
        let (cpu, on_gpu) = (run(&Device::Cpu), run(&gpu));
        let (first, last) = (on_gpu[0], on_gpu[19]);
        eprintln!("{label}: loss over 20 steps, cpu {:.4} -> {:.4}, cuda {first:.4} -> {last:.4}", cpu[0], cpu[19]);
        assert!(cpu[19] < 0.9 * cpu[0], "{label}: the CPU's loss did not fall: {cpu:?}");
        assert!(last < 0.9 * first, "{label}: the GPU's loss did not fall: {on_gpu:?}");
        assert!((last - cpu[19]).abs() / cpu[19] < 0.1, "{label}: after 20 steps cuda {last} against cpu {}", cpu[19]);
    }
}
