//! Activation statistics for activation-aware quantization: the model runs over calibration
//! text and, for every linear layer's input, records the mean square of each input channel.
//! Quantizers then weight each weight's rounding error by how strongly its input channel
//! fires, so the error that reaches the outputs is what gets minimised.

use crate::{Model, ModelError, Observer, Tap};
use candle_core::Tensor;
use std::collections::HashMap;

/// Windows of this many tokens, each on a fresh cache: the context calibration sees is the
/// one perplexity is measured with.
const WINDOW: usize = 512;

#[derive(Default)]
pub struct ActivationStats {
    sums: HashMap<Tap, Vec<f64>>,
    rows: HashMap<Tap, usize>,
    pub tokens: usize,
}

impl ActivationStats {
    /// Mean square per input channel at `tap`, as importance weights.
    pub fn importance(&self, tap: Tap) -> Option<Vec<f32>> {
        let sums = self.sums.get(&tap)?;
        let n = *self.rows.get(&tap)? as f64;
        Some(sums.iter().map(|s| (s / n) as f32).collect())
    }
}

impl Observer for ActivationStats {
    fn observe(&mut self, tap: Tap, x: &Tensor) -> Result<(), ModelError> {
        let dims = x.dims();
        let features = dims[dims.len() - 1];
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let sums = self.sums.entry(tap).or_insert_with(|| vec![0.0; features]);
        for row in values.chunks_exact(features) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += f64::from(v * v);
            }
        }
        *self.rows.entry(tap).or_default() += values.len() / features;
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
