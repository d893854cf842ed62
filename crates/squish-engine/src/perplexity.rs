//! Perplexity over a text, scored by default the way llama.cpp's `llama-perplexity` scores
//! it so the numbers compare: consecutive non-overlapping windows of `ctx` tokens (BOS first
//! where the model uses one), each on a fresh cache, and only the second half of each window
//! scored, so every scored token sees at least ctx/2 tokens of context. With a stride,
//! sliding windows instead (Hugging Face's recipe): windows of `ctx` tokens starting every
//! `stride` tokens, the first scoring all its tokens, each later one only its last `stride`,
//! so every token is scored once with at least ctx - stride tokens of context.

use squish_model::{argmax, Model, ModelError};
use std::time::Instant;

/// How far a model's next-token distributions are from a base model's on the same tokens.
#[derive(Debug, Clone)]
pub struct BaseComparison {
    pub base_ppl: f64,
    /// Mean KL(base || model) per scored token, in nats.
    pub kld_mean: f64,
    /// Share of scored positions where both models' most likely token is the same.
    pub top1_agreement: f64,
}

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
    pub base: Option<BaseComparison>,
}

/// `max_windows` limits the work (llama.cpp's `--chunks`); `stride` selects sliding windows
/// (see the module); `progress(done, total)` per window.
/// With `base`, the same windows also go through the base model (same tokenizer required)
/// and the report compares the two distributions.
pub fn perplexity(
    model: &Model,
    base: Option<&Model>,
    text: &str,
    ctx: usize,
    stride: Option<usize>,
    max_windows: Option<usize>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<PerplexityReport, ModelError> {
    if let Some(st) = stride.filter(|&st| st == 0 || st > ctx) {
        return Err(ModelError::Tokenizer(format!("--stride {st}: must be between 1 and --ctx ({ctx})")));
    }
    if let Some(b) = base {
        if b.decoder.config().vocab != model.decoder.config().vocab {
            return Err(ModelError::Tokenizer(format!(
                "the base model's vocabulary ({}) differs from the model's ({}): they cannot be compared",
                b.decoder.config().vocab,
                model.decoder.config().vocab
            )));
        }
    }
    squish_backend::on_compute_pool(|| perplexity_here(model, base, text, ctx, stride, max_windows, progress))
}

/// Logits of positions first..ctx-1 of `window`: (ctx - first - 1) rows of vocab.
fn scored_logits(model: &Model, window: &[u32], first: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut cache = model.new_cache()?;
    let hidden = model.decoder.forward(window, &mut cache)?; // (1, ctx, hidden)
    let scored = hidden.narrow(1, first, window.len() - first - 1)?;
    Ok(model.decoder.logits(&scored)?.squeeze(0)?.to_vec2::<f32>()?)
}

fn perplexity_here(
    model: &Model,
    base: Option<&Model>,
    text: &str,
    ctx: usize,
    stride: Option<usize>,
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
    // Each window: where it starts in the text and the first position whose prediction counts.
    let plan: Vec<(usize, usize)> = match stride {
        None => (0..tokens.len() / ctx).map(|w| (w * ctx, ctx / 2)).collect(),
        Some(st) if tokens.len() >= ctx => {
            let mut p = vec![(0, 0)];
            let mut begin = st;
            while begin + ctx <= tokens.len() {
                p.push((begin, ctx - st - 1));
                begin += st;
            }
            p
        }
        Some(_) => Vec::new(),
    };
    let windows = max_windows.map_or(plan.len(), |m| m.min(plan.len()));
    if windows == 0 {
        return Err(ModelError::Tokenizer(format!(
            "the text has {} tokens; perplexity needs at least one window of --ctx {ctx}",
            tokens.len()
        )));
    }
    let mut nlls = Vec::with_capacity(windows * ctx / 2);
    let (mut base_nll, mut kld, mut agree) = (0f64, 0f64, 0usize);
    for (w, &(begin, first)) in plan[..windows].iter().enumerate() {
        let mut window = tokens[begin..begin + ctx].to_vec();
        if let (Some(b), None) = (bos, stride) {
            window[0] = b;
        }
        // Positions first..ctx-1 predict tokens first+1..ctx.
        let logits = scored_logits(model, &window, first)?;
        for (row, &target) in logits.iter().zip(&window[first + 1..]) {
            nlls.push(log_sum_exp(row) - f64::from(row[target as usize]));
        }
        if let Some(b) = base {
            for ((q, p), &target) in logits.iter().zip(scored_logits(b, &window, first)?).zip(&window[first + 1..]) {
                let (lse_p, lse_q) = (log_sum_exp(&p), log_sum_exp(q));
                base_nll += lse_p - f64::from(p[target as usize]);
                kld += p
                    .iter()
                    .zip(q)
                    .map(|(&lp, &lq)| {
                        let log_p = f64::from(lp) - lse_p;
                        log_p.exp() * (log_p - (f64::from(lq) - lse_q))
                    })
                    .sum::<f64>();
                agree += usize::from(argmax(&p) == argmax(q));
            }
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
        base: base.map(|_| BaseComparison {
            base_ppl: (base_nll / n).exp(),
            kld_mean: kld / n,
            top1_agreement: agree as f64 / n,
        }),
    })
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    f64::from(max) + sum.ln()
}
