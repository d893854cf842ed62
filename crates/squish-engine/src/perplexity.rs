//! Perplexity over a text, scored the way llama.cpp's `llama-perplexity` scores it so the
//! numbers compare: consecutive non-overlapping windows of `ctx` tokens (BOS first where the
//! model uses one), each on a fresh cache, and only the second half of each window scored,
//! so every scored token sees at least ctx/2 tokens of context.

use squish_model::{Model, ModelError};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct PerplexityReport {
    pub ppl: f64,
    /// Standard error of the perplexity (from the spread of per-token log-likelihoods).
    pub ppl_stderr: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub ctx: usize,
    pub seconds: f64,
}

/// `max_windows` limits the work (llama.cpp's `--chunks`); `progress(done, total)` per window.
pub fn perplexity(
    model: &Model,
    text: &str,
    ctx: usize,
    max_windows: Option<usize>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<PerplexityReport, ModelError> {
    squish_backend::on_compute_pool(|| perplexity_here(model, text, ctx, max_windows, progress))
}

fn perplexity_here(
    model: &Model,
    text: &str,
    ctx: usize,
    max_windows: Option<usize>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<PerplexityReport, ModelError> {
    let start = Instant::now();
    if ctx < 8 || ctx > model.context_size() {
        return Err(ModelError::Tokenizer(format!(
            "--ctx {ctx}: must be between 8 and the model's context ({})",
            model.context_size()
        )));
    }
    let tokens = model.tokenizer.encode(text, false)?;
    let bos = model.tokenizer.bos().filter(|_| model.tokenizer.adds_bos());
    let available = tokens.len() / ctx;
    let windows = max_windows.map_or(available, |m| m.min(available));
    if windows == 0 {
        return Err(ModelError::Tokenizer(format!(
            "the text has {} tokens; perplexity needs at least one window of --ctx {ctx}",
            tokens.len()
        )));
    }
    let first = ctx / 2;
    let mut nlls = Vec::with_capacity(windows * (ctx - first - 1));
    let mut cache = model.new_cache()?;
    for w in 0..windows {
        let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        cache.truncate(0);
        let hidden = model.decoder.forward(&window, &mut cache)?; // (1, ctx, hidden)
        // Positions first..ctx-1 predict tokens first+1..ctx.
        let scored = hidden.narrow(1, first, ctx - first - 1)?;
        let logits = model.decoder.logits(&scored)?.squeeze(0)?.to_vec2::<f32>()?;
        for (row, &target) in logits.iter().zip(&window[first + 1..]) {
            nlls.push(log_sum_exp(row) - f64::from(row[target as usize]));
        }
        progress(w + 1, windows);
    }
    let n = nlls.len() as f64;
    let mean = nlls.iter().sum::<f64>() / n;
    let var = nlls.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let ppl = mean.exp();
    Ok(PerplexityReport {
        ppl,
        ppl_stderr: ppl * (var / n).sqrt(),
        mean_nll: mean,
        tokens_scored: nlls.len(),
        windows,
        ctx,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    f64::from(max) + sum.ln()
}
