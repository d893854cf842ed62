//! The batched forward against the one-sequence forward on the real model (SmolLM2-135M's GGUF,
//! computed in f32): several sequences in one forward give each the logits it gets alone, and
//! a prompt split between a cached prefix and a new suffix gives the logits of the whole
//! prompt at once, up to float rounding. (Quantized models round activations to int8, which
//! turns rounding differences of 1e-7 into logit differences of up to ~1: that is why the
//! engine keeps every request's computation fixed, see squish-engine's scheduler.)

use candle_core::Device;
use squish_model::{Model, Step};
use std::path::PathBuf;

fn smollm2() -> Model {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cache = std::env::var_os("SQUISH_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/squish"));
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
    Model::load(&path, &Device::Cpu, Some(256)).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn alone(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache().unwrap();
    let h = m.decoder.forward(tokens, &mut cache).unwrap();
    m.decoder.last_logits(&h).unwrap()
}

#[test]
fn batched_sequences_match_each_alone() {
    let m = smollm2();
    let prompts: Vec<Vec<u32>> = ["The capital of France is", "Once upon a time, in a land far away", "2 + 2 ="]
        .iter()
        .map(|p| m.tokenizer.encode(p, true).unwrap())
        .collect();
    // Prefill two prompts and decode one token of a third, all in one forward.
    let mut caches: Vec<_> = (0..3).map(|_| m.new_cache().unwrap()).collect();
    let head = &prompts[2][..prompts[2].len() - 1];
    m.decoder.forward(head, &mut caches[2]).unwrap();
    let last = [*prompts[2].last().unwrap()];
    let (c01, c2) = caches.split_at_mut(2);
    let (c0, c1) = c01.split_at_mut(1);
    let mut steps = [
        Step { tokens: &prompts[0], cache: &mut c0[0], adapter: None },
        Step { tokens: &prompts[1], cache: &mut c1[0], adapter: None },
        Step { tokens: &last, cache: &mut c2[0], adapter: None },
    ];
    let h = m.decoder.forward_batch(&mut steps).unwrap();
    let rows = [prompts[0].len() - 1, prompts[0].len() + prompts[1].len() - 1, h.dim(1).unwrap() - 1];
    let batched = m.decoder.logits_at(&h, &rows).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let d = max_diff(&batched[i], &alone(&m, p));
        // Dense f32 goes through candle's GEMM, whose blocking depends on the row count (last
        // bits); squish's own kernels are exact here (tests/server/test_concurrency.py, INT4).
        assert!(d < 1e-3, "sequence {i}: batched logits differ from alone by {d}");
    }
    assert_eq!(caches[0].len(), prompts[0].len());
    assert_eq!(caches[2].tokens(), &prompts[2][..]);
}

#[test]
fn cached_prefix_plus_suffix_matches_whole_prompt() {
    let m = smollm2();
    let p = m.tokenizer.encode("The quick brown fox jumps over the lazy dog because it", true).unwrap();
    let whole = alone(&m, &p);
    for split in [1, p.len() / 2, p.len() - 1] {
        let mut cache = m.new_cache().unwrap();
        m.decoder.forward(&p[..split], &mut cache).unwrap();
        let h = m.decoder.forward(&p[split..], &mut cache).unwrap();
        let d = max_diff(&m.decoder.last_logits(&h).unwrap(), &whole);
        assert!(d < 1e-3, "split at {split}: logits differ from the whole prompt's by {d}");
    }
}

