//! Activation statistics for activation-aware quantization: the model runs over calibration
//! text and, for every linear layer's input x, records E[x xᵀ] (the layer's Hessian for a
//! squared output error). Its diagonal weights each weight's rounding error by how strongly
//! its input channel fires; the whole matrix drives GPTQ's error feedback.
//!
//! Layer by layer: the windows' hidden states move through the decoder together, one layer
//! loaded at a time, and a layer's statistics are dropped once the next layer is asked for.
//! Memory holds one layer in f32, its statistics, and the hidden states (tokens x hidden
//! f32), not the whole model: for a 7B model a few GB instead of 28 GB of f32 weights and
//! 44 GB of statistics. The numbers are the same as a whole-model pass (tested).

use crate::decoder::{Decoder, Layer};
use crate::{ModelError, Observer, Source, Tap, DEFAULT_CTX};
use candle_core::{Device, Tensor};
use squish_quant::int4::GptqFactor;
use squish_quant::rotate::Rotation;
use std::collections::HashMap;
use std::sync::Arc;

/// Windows of this many tokens, each on a fresh cache: the context calibration sees is the
/// one perplexity is measured with.
const WINDOW: usize = 512;

#[derive(Default)]
pub struct ActivationStats {
    /// Σ x xᵀ per tap, features x features row-major.
    grams: HashMap<Tap, Vec<f64>>,
    rows: HashMap<Tap, usize>,
    /// GPTQ's factor per tap, made on first use (from the tap's sums, which it consumes) and
    /// shared by the matrices reading that tap, with the input rotation it was made for
    /// (its block size; None: unrotated).
    factors: HashMap<Tap, (Option<usize>, Arc<GptqFactor>)>,
    /// E[x²] per channel of taps whose sums became a factor.
    diagonals: HashMap<Tap, Vec<f32>>,
}

impl ActivationStats {
    /// E[x xᵀ] at `tap` (features x features), until its factor is made.
    #[cfg(test)]
    fn hessian(&self, tap: Tap) -> Option<Vec<f64>> {
        let n = *self.rows.get(&tap)? as f64;
        Some(self.grams.get(&tap)?.iter().map(|s| s / n).collect())
    }

    /// E[x²] per input channel at `tap`, as importance weights.
    pub fn importance(&self, tap: Tap) -> Option<Vec<f32>> {
        if let Some(d) = self.diagonals.get(&tap) {
            return Some(d.clone());
        }
        let gram = self.grams.get(&tap)?;
        let n = *self.rows.get(&tap)? as f64;
        let k = (gram.len() as f64).sqrt() as usize;
        Some((0..k).map(|i| (gram[i * k + i] / n) as f32).collect())
    }

    /// GPTQ's factor of the Hessian at `tap`, of the inputs as `rotation` maps them
    /// (R H Rᵀ). Every matrix reading one tap must ask with the same rotation (the
    /// converter rotates by input width): the first call consumes the sums.
    pub fn gptq_factor(&mut self, tap: Tap, rotation: Option<&Rotation>) -> Option<Arc<GptqFactor>> {
        let block = rotation.map(Rotation::block);
        if !self.factors.contains_key(&tap) {
            // The sums become the mean in place and then the factor: no second k x k copy.
            let diagonal = self.importance(tap)?;
            let mut h = self.grams.remove(&tap)?;
            let n = self.rows[&tap] as f64;
            h.iter_mut().for_each(|x| *x /= n);
            if let Some(r) = rotation {
                r.rotate_symmetric(&mut h);
            }
            self.factors.insert(tap, (block, Arc::new(GptqFactor::new(h, diagonal.len()))));
            self.diagonals.insert(tap, diagonal);
        }
        let (made_for, factor) = &self.factors[&tap];
        assert_eq!(*made_for, block, "{tap:?}: GPTQ factors of one input asked for with two rotations");
        Some(factor.clone())
    }

    fn keep_only(&mut self, keep: impl Fn(&Tap) -> bool) {
        self.grams.retain(|t, _| keep(t));
        self.rows.retain(|t, _| keep(t));
        self.factors.retain(|t, _| keep(t));
        self.diagonals.retain(|t, _| keep(t));
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

/// The decoder layer a tap belongs to; the head's comes after the last layer.
fn layer_of(tap: Tap, layers: usize) -> usize {
    match tap {
        Tap::AttnIn(i) | Tap::AttnOut(i) | Tap::MlpIn(i) | Tap::MlpMid(i) => i,
        Tap::Head => layers,
    }
}

/// The calibration windows' way through the model, advanced on demand.
pub struct Calibration<'a> {
    src: &'a Source,
    shell: Decoder,
    /// Per window: its tokens and its hidden states after the layers run so far.
    windows: Vec<(Vec<u32>, Tensor)>,
    next_layer: usize,
    ctx: usize,
    stats: ActivationStats,
    /// Tokens run through the model (a BOS per window included).
    pub tokens: usize,
}

impl<'a> Calibration<'a> {
    /// Tokenizes up to `max_tokens` tokens of `text` into windows and embeds them.
    pub fn start(src: &'a Source, text: &str, max_tokens: usize) -> Result<Self, ModelError> {
        let tok = &src.tokenizer;
        let tokens = tok.encode(text, false)?;
        let total = tokens.len().min(max_tokens);
        if total < 16 {
            return Err(ModelError::Tokenizer(format!("calibration text has {} tokens; at least 16 are needed", tokens.len())));
        }
        let ctx = src.config.max_pos.min(DEFAULT_CTX);
        let weights = src.weights(&Device::Cpu);
        let shell = Decoder::load_without_layers(&src.config, &weights, ctx, &Device::Cpu, false)?;
        // Embedded here and dropped: the shell holds neither embeddings nor head.
        let embed = weights.linear("model.embed_tokens", src.config.vocab, src.config.hidden)?;
        let mut windows = Vec::new();
        let mut count = 0;
        for chunk in tokens[..total].chunks(WINDOW.min(ctx)) {
            let mut input = Vec::with_capacity(chunk.len() + 1);
            if let Some(bos) = tok.bos().filter(|_| tok.adds_bos()) {
                input.push(bos);
            }
            input.extend_from_slice(chunk);
            count += input.len();
            let hidden = embed.rows(&input, &Device::Cpu)?.unsqueeze(0)?;
            windows.push((input, hidden));
        }
        Ok(Self { src, shell, windows, next_layer: 0, ctx, stats: ActivationStats::default(), tokens: count })
    }

    /// The statistics `tap` needs, running the layers up to its own first. Taps must be asked
    /// for in layer order: earlier layers' statistics are gone.
    pub fn stats_for(&mut self, tap: Tap) -> Result<&mut ActivationStats, ModelError> {
        let cfg = &self.src.config;
        let target = layer_of(tap, cfg.layers);
        assert!(target + 1 >= self.next_layer, "layer {target}'s statistics asked for after layer {}'s", self.next_layer);
        while self.next_layer <= target.min(cfg.layers.saturating_sub(1)) && self.next_layer < cfg.layers {
            let i = self.next_layer;
            self.stats.keep_only(|t| layer_of(*t, cfg.layers) >= i);
            let layer = Layer::load(cfg, &self.src.weights(&Device::Cpu), i)?;
            for (tokens, hidden) in &mut self.windows {
                let mut cache = crate::KvCache::new(1, cfg.kv_heads, cfg.head_dim, self.ctx, &Device::Cpu)?;
                let step = crate::Step { tokens, cache: &mut cache, adapter: None };
                *hidden = self.shell.layer_forward(&layer, i, 0, hidden.clone(), &mut [step], &mut self.stats)?;
            }
            self.next_layer += 1;
        }
        if tap == Tap::Head && !self.stats.rows.contains_key(&Tap::Head) {
            self.stats.keep_only(|t| *t == Tap::Head);
            for (_, hidden) in &self.windows {
                let normed = self.shell.final_norm(hidden)?;
                self.stats.observe(Tap::Head, &normed)?;
            }
        }
        Ok(&mut self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    /// Whole-model statistics, the way a single forward pass per window sees them.
    fn whole_model(path: &std::path::Path, text: &str) -> (ActivationStats, usize) {
        let model = Model::load(path, &Device::Cpu, None).unwrap();
        let mut stats = ActivationStats::default();
        let tokens = model.tokenizer.encode(text, false).unwrap();
        let mut cache = model.new_cache().unwrap();
        for chunk in tokens.chunks(WINDOW.min(model.context_size())) {
            cache.truncate(0);
            let mut input: Vec<u32> = model.tokenizer.bos().filter(|_| model.tokenizer.adds_bos()).into_iter().collect();
            input.extend_from_slice(chunk);
            let hidden = model.decoder.forward_observed(&input, &mut cache, &mut stats).unwrap();
            stats.observe(Tap::Head, &hidden).unwrap();
        }
        (stats, model.decoder.config().layers)
    }

    #[test]
    fn layer_by_layer_statistics_equal_a_whole_model_pass() {
        let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/fixtures/tiny/qwen3");
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(60);
        let (whole, layers) = whole_model(&dir, &text);
        let src = Source::open(&dir).unwrap();
        let mut calib = Calibration::start(&src, &text, usize::MAX).unwrap();
        let mut taps: Vec<Tap> = (0..layers).flat_map(|i| [Tap::AttnIn(i), Tap::AttnOut(i), Tap::MlpIn(i), Tap::MlpMid(i)]).collect();
        taps.push(Tap::Head);
        for tap in taps {
            let got = calib.stats_for(tap).unwrap().hessian(tap).unwrap();
            assert_eq!(got, whole.hessian(tap).unwrap(), "{tap:?}");
        }
        assert!(calib.windows.len() > 1, "the text spans several windows");
    }
}
