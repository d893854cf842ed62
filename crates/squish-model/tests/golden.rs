//! Golden logits: tiny random models of every supported architecture, made and scored by
//! Hugging Face transformers (tests/fixtures/make_tiny_models.py); squish's one decoder must
//! reproduce every position's logits and the KV-cached greedy continuation.
//!
//! Tolerance: max |logit difference| <= 1e-4 (measured: under 1e-5) (f32 compute on both sides; the weights are the
//! same f32 values, or the same f16/bf16 values upcast exactly).

use candle_core::Device;
use serde_json::Value;
use squish_model::{argmax, Model};
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> (Model, Value) {
    let dir = PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/fixtures/tiny").join(name);
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    (Model::load(&dir, &Device::Cpu, None).unwrap(), reference)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(name: &str) {
    let (model, r) = fixture(name);
    let tokens: Vec<u32> = r["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();

    // Every position's logits from one forward pass.
    let mut cache = model.new_cache().unwrap();
    let hidden = model.decoder.forward(&tokens, &mut cache).unwrap();
    let logits = model.decoder.logits(&hidden).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    for (pos, (ours, theirs)) in logits.iter().zip(r["logits"].as_array().unwrap()).enumerate() {
        let d = max_abs_diff(ours, &floats(theirs));
        assert!(d <= TOLERANCE, "{name}: position {pos}: max |diff| {d}");
    }

    // Greedy continuation, one token at a time through the KV cache.
    let mut last = logits.last().unwrap().clone();
    let mut greedy = Vec::new();
    for (step, expected_logits) in r["greedy_logits"].as_array().unwrap().iter().enumerate() {
        let d = max_abs_diff(&last, &floats(expected_logits));
        assert!(d <= TOLERANCE, "{name}: greedy step {step}: max |diff| {d}");
        let t = argmax(&last);
        greedy.push(t);
        let h = model.decoder.forward(&[t], &mut cache).unwrap();
        last = model.decoder.last_logits(&h).unwrap();
    }
    let expected: Vec<u32> = r["greedy"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    assert_eq!(greedy, expected, "{name}: greedy tokens");
}

#[test]
fn llama() {
    check("llama");
}

#[test]
fn llama3_rope_scaling_tied_bf16() {
    check("llama3");
}

#[test]
fn mistral_f16() {
    check("mistral");
}

#[test]
fn qwen2_qkv_bias() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3");
}

#[test]
fn sharded_safetensors() {
    check("sharded");
}
