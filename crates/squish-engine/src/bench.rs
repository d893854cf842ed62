//! Speed measurements in the manner of llama.cpp's `llama-bench`: prefill of `p` tokens on
//! an empty cache, and decode of `n` tokens one at a time from an empty cache (greedy, never
//! stopping early), each timed alone.

use squish_model::{argmax, Model, ModelError};
use std::time::Instant;

/// Seconds to prefill `p` tokens, and seconds to decode `n` tokens from an empty cache.
#[derive(Debug, Clone, Copy)]
pub struct BenchRun {
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// One prefill + decode run. Prompt tokens are a fixed pseudo-random sequence (the content
/// does not change the work), so runs are comparable across models with the same vocab.
pub fn bench_run(model: &Model, p: usize, n: usize) -> Result<BenchRun, ModelError> {
    squish_backend::on_compute_pool(|| {
        let vocab = model.decoder.config().vocab as u64;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let prompt: Vec<u32> = (0..p.max(1))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % vocab) as u32
            })
            .collect();
        if prompt.len().max(n + 1) > model.context_size() {
            return Err(ModelError::PromptTooLong { prompt: prompt.len().max(n + 1), ctx: model.context_size() });
        }
        let mut cache = model.new_cache()?;
        let t0 = Instant::now();
        model.decoder.last_logits(&model.decoder.forward(&prompt, &mut cache)?)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        cache.truncate(0);
        let t1 = Instant::now();
        let mut logits = model.decoder.last_logits(&model.decoder.forward(&prompt[..1], &mut cache)?)?;
        for _ in 0..n {
            let token = argmax(&logits);
            logits = model.decoder.last_logits(&model.decoder.forward(&[token], &mut cache)?)?;
        }
        Ok(BenchRun { prefill_s, decode_s: t1.elapsed().as_secs_f64() })
    })
}
