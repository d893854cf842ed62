//! Activation statistics for activation-aware quantization: the model runs over calibration
//! text and, for every linear layer's input x, records E[x xᵀ] (the layer's Hessian for a
//! squared output error). Its diagonal weights each weight's rounding error by how strongly
//! its input channel fires; the whole matrix drives GPTQ's error feedback.

use crate::{Model, ModelError, Observer, Tap};
use candle_core::Tensor;
use std::collections::HashMap;

/// Windows of this many tokens, each on a fresh cache: the context calibration sees is the
/// one perplexity is measured with.
const WINDOW: usize = 512;

#[derive(Default)]
pub struct ActivationStats {
    /// Σ x xᵀ per tap, features x features row-major.
    grams: HashMap<Tap, Vec<f64>>,
    rows: HashMap<Tap, usize>,
    pub tokens: usize,
}

impl ActivationStats {
    /// E[x xᵀ] at `tap` (features x features).
    pub fn hessian(&self, tap: Tap) -> Option<Vec<f64>> {
        let n = *self.rows.get(&tap)? as f64;
        Some(self.grams.get(&tap)?.iter().map(|s| s / n).collect())
    }

    /// E[x²] per input channel at `tap`, as importance weights.
    pub fn importance(&self, tap: Tap) -> Option<Vec<f32>> {
        let gram = self.grams.get(&tap)?;
        let n = *self.rows.get(&tap)? as f64;
        let k = (gram.len() as f64).sqrt() as usize;
        Some((0..k).map(|i| (gram[i * k + i] / n) as f32).collect())
    }
}

impl Observer for ActivationStats {
    fn observe(&mut self, tap: Tap, x: &Tensor) -> Result<(), ModelError> {
        let features = x.dim(candle_core::D::Minus1)?;
        let x = x.reshape(((), features))?; // (t, features)
        let gram = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let sums = self.grams.entry(tap).or_insert_with(|| vec![0.0; features * features]);
        for (s, g) in sums.iter_mut().zip(gram) {
            *s += f64::from(g);
        }
        *self.rows.entry(tap).or_default() += x.dim(0)?;
        Ok(())
    }
}

/// Runs `model` over up to `max_tokens` tokens of `text`; `progress(done, total)` per window.
pub fn collect(
    model: &Model,
    text: &str,
    max_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ActivationStats, ModelError> {
    let tokens = model.tokenizer.encode(text, false)?;
    let total = tokens.len().min(max_tokens);
    if total < 16 {
        return Err(ModelError::Tokenizer(format!("calibration text has {} tokens; at least 16 are needed", tokens.len())));
    }
    let window = WINDOW.min(model.context_size());
    let mut stats = ActivationStats::default();
    let mut cache = model.new_cache()?;
    for chunk in tokens[..total].chunks(window) {
        cache.truncate(0);
        let mut input = Vec::with_capacity(chunk.len() + 1);
        if let Some(bos) = model.tokenizer.bos().filter(|_| model.tokenizer.adds_bos()) {
            input.push(bos);
        }
        input.extend_from_slice(chunk);
        let hidden = model.decoder.forward_observed(&input, &mut cache, &mut stats)?;
        stats.observe(Tap::Head, &hidden)?;
        stats.tokens += input.len();
        progress(stats.tokens, total);
    }
    Ok(stats)
}
