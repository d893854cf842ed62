//! Speed measurements in the manner of llama.cpp's `llama-bench`: prefill of `p` tokens on
//! an empty cache, and decode of `n` tokens one at a time from an empty cache (greedy, never
//! stopping early), each timed alone.

use squish_model::{argmax, Model, ModelError, Step};
use std::time::Instant;

/// Seconds to prefill `p` tokens, and seconds to decode `n` tokens from an empty cache.
#[derive(Debug, Clone, Copy)]
pub struct BenchRun {
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// A fixed pseudo-random prompt of `p` tokens (the content does not change the work);
/// `seed` makes different sequences' prompts differ.
fn prompt_tokens(vocab: u64, p: usize, seed: u64) -> Vec<u32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..p.max(1))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect()
}

/// One prefill + decode run. Prompt tokens are a fixed pseudo-random sequence (the content
/// does not change the work), so runs are comparable across models with the same vocab.
pub fn bench_run(model: &Model, p: usize, n: usize) -> Result<BenchRun, ModelError> {
    squish_backend::on_compute_pool(|| {
        let prompt = prompt_tokens(model.decoder.config().vocab as u64, p, 0);
        if prompt.len().max(n + 1) > model.context_size() {
            return Err(ModelError::PromptTooLong { prompt: prompt.len().max(n + 1), ctx: model.context_size() });
        }
        let mut cache = model.new_cache()?;
        let t0 = Instant::now();
        model.decoder.last_logits(&model.decoder.forward(&prompt, &mut cache)?)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        cache.truncate(0);
        let t1 = Instant::now();
        // Greedy picks where the logits are (on a GPU, one id comes back, not a vocabulary of
        // logits), as bench_streams and serving's greedy requests take them.
        let mut token = model.decoder.greedy_at(&model.decoder.forward(&prompt[..1], &mut cache)?, &[0])?[0];
        for _ in 0..n {
            token = model.decoder.greedy_at(&model.decoder.forward(&[token], &mut cache)?, &[0])?[0];
        }
        Ok(BenchRun { prefill_s, decode_s: t1.elapsed().as_secs_f64() })
    })
}

/// Seconds for `streams` sequences, each after its own `p`-token prompt, to decode `n`
/// tokens each, every step one batched forward of all of them (as `squish serve` runs its
/// decodes). Prefill is not timed.
pub fn bench_streams(model: &Model, streams: usize, p: usize, n: usize) -> Result<f64, ModelError> {
    squish_backend::on_compute_pool(|| {
        let vocab = model.decoder.config().vocab as u64;
        if p.max(1) + n + 1 > model.context_size() {
            return Err(ModelError::PromptTooLong { prompt: p.max(1) + n + 1, ctx: model.context_size() });
        }
        let mut caches = (0..streams).map(|_| model.new_cache()).collect::<Result<Vec<_>, _>>()?;
        let mut next = Vec::with_capacity(streams);
        for (i, cache) in caches.iter_mut().enumerate() {
            let prompt = prompt_tokens(vocab, p, i as u64 + 1);
            next.push(argmax(&model.decoder.last_logits(&model.decoder.forward(&prompt, cache)?)?));
        }
        let t0 = Instant::now();
        for _ in 0..n {
            let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut steps: Vec<Step> =
                caches.iter_mut().zip(&tokens).map(|(cache, t)| Step { tokens: t, cache, adapter: None }).collect();
            let hidden = model.decoder.forward_batch(&mut steps)?;
            let rows: Vec<usize> = (0..streams).collect();
            next = model.decoder.greedy_at(&hidden, &rows)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    })
}
