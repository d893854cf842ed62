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
//!
//! Sequential (what `--to int3` asks for): the layers advance piece by piece, between the
//! taps, and each piece runs with the weights the converter has already quantized, so a
//! matrix's statistics are those of the inputs it will see in the quantized model; the
//! unquantized model runs beside it, and the cross statistics E[x x̃ᵀ] give each tap a
//! correction T (`correction`) that the converter applies to W before GPTQ, so each
//! matrix also makes up for the error the matrices before it left in its inputs.

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
    /// Σ x xᵀ with x from the unquantized model on the left and from the partly quantized
    /// one on the right (`observe_pair`), features x features row-major.
    cross: HashMap<Tap, Vec<f64>>,
    /// Per tap, the k x k matrix T (of the rotated inputs) with which W T best maps the
    /// partly quantized model's inputs to what W gave on the unquantized model's (`correction`).
    corrections: HashMap<Tap, Arc<Vec<f32>>>,
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
            let k = diagonal.len();
            // D = C - H, rotated as H is (R C Rᵀ = rotate_symmetric of Cᵀ), before H is consumed.
            let d = self.cross.remove(&tap).filter(|_| tap != Tap::Head).map(|mut c| {
                c.iter_mut().for_each(|x| *x /= n);
                if let Some(r) = rotation {
                    for i in 0..k {
                        for j in i + 1..k {
                            c.swap(i * k + j, j * k + i);
                        }
                    }
                    r.rotate_symmetric(&mut c);
                }
                c.iter_mut().zip(&h).for_each(|(c, h)| *c -= h);
                c
            });
            let factor = Arc::new(GptqFactor::new(h, k));
            if let Some(d) = d {
                if let Ok(t) = correction(&d, &factor, k) {
                    self.corrections.insert(tap, Arc::new(t));
                }
            }
            self.factors.insert(tap, (block, factor));
            self.diagonals.insert(tap, diagonal);
        }
        let (made_for, factor) = &self.factors[&tap];
        assert_eq!(*made_for, block, "{tap:?}: GPTQ factors of one input asked for with two rotations");
        Some(factor.clone())
    }

    /// The input-error correction T at `tap` (made with its GPTQ factor), when the
    /// calibration ran the unquantized model beside the quantized one.
    pub fn correction(&self, tap: Tap) -> Option<Arc<Vec<f32>>> {
        self.corrections.get(&tap).cloned()
    }

    /// Observes `q` (the partly quantized model's activations at `tap`) as `observe` does,
    /// and Σ fp qᵀ against the unquantized model's `fp`.
    pub fn observe_pair(&mut self, tap: Tap, fp: &Tensor, q: &Tensor) -> Result<(), ModelError> {
        self.observe(tap, q)?;
        let features = q.dim(candle_core::D::Minus1)?;
        let (fp, q) = (fp.reshape(((), features))?, q.reshape(((), features))?);
        let cross = fp.t()?.matmul(&q)?.flatten_all()?.to_vec1::<f32>()?;
        let sums = self.cross.entry(tap).or_insert_with(|| vec![0.0; features * features]);
        for (s, g) in sums.iter_mut().zip(cross) {
            *s += f64::from(g);
        }
        Ok(())
    }

    fn keep_only(&mut self, keep: impl Fn(&Tap) -> bool) {
        self.cross.retain(|t, _| keep(t));
        self.corrections.retain(|t, _| keep(t));
        self.grams.retain(|t, _| keep(t));
        self.rows.retain(|t, _| keep(t));
        self.factors.retain(|t, _| keep(t));
        self.diagonals.retain(|t, _| keep(t));
    }
}

/// T = I + (C - H) H⁻¹ (H dampened as GPTQ dampens it; H⁻¹ = UᵀU from its factor), k x k row-major: ‖W x - W T x̃‖ is least for the
/// unquantized model's inputs x and the partly quantized one's x̃ (C = E[x x̃ᵀ], H = E[x̃ x̃ᵀ]),
/// so GPTQ on W T also makes up for the error the earlier matrices left in the inputs.
fn correction(d: &[f64], factor: &GptqFactor, k: usize) -> Result<Vec<f32>, ModelError> {
    let u = Tensor::from_slice(factor.upper(), (k, k), &Device::Cpu)?;
    let inv = u.t()?.matmul(&u)?;
    let d = Tensor::from_vec(d.iter().map(|&x| x as f32).collect::<Vec<_>>(), (k, k), &Device::Cpu)?;
    let mut t = d.matmul(&inv)?.flatten_all()?.to_vec1::<f32>()?;
    (0..k).for_each(|i| t[i * k + i] += 1.0);
    Ok(t)
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

/// Where a tap lies in the forward pass: its layer and its place within the layer (the
/// order the converter quantizes a layer's matrices in); the head's comes after the last
/// layer.
fn position(tap: Tap, layers: usize) -> (usize, u8) {
    match tap {
        Tap::AttnIn(i) => (i, 1),
        Tap::AttnOut(i) => (i, 2),
        Tap::MlpIn(i) => (i, 3),
        Tap::MlpMid(i) => (i, 4),
        Tap::Head => (layers, 1),
    }
}

/// One calibration window's activations at the current position (see `Calibration::at`).
struct Window {
    tokens: Vec<u32>,
    /// The current layer's input (the hidden states after the layers before it).
    x: Tensor,
    /// The input of the next matrices: the q/k/v input, then the o_proj input, the gate/up
    /// input, the down_proj input.
    act: Option<Tensor>,
    /// The hidden states after the current layer's attention (from the gate/up input on).
    x_mid: Option<Tensor>,
    /// The same three through the unquantized model, when the calibration corrects for
    /// input error (`Calibration::start`'s `correct`).
    fp: Option<(Tensor, Option<Tensor>, Option<Tensor>)>,
}

/// The calibration windows' way through the model, advanced on demand, piece by piece:
/// each matrix's statistics come from the model with every matrix before it already
/// quantized (GPTQ's sequential calibration), so its quantization also makes up for the
/// error of the earlier ones. The converter hands back each quantized matrix
/// (`set_quantized`) before it asks for a later tap.
pub struct Calibration<'a> {
    src: &'a Source,
    shell: Decoder,
    windows: Vec<Window>,
    /// (layer, piece): the taps up to this one have been observed (piece 0: none of the
    /// layer's yet; `position`).
    at: (usize, u8),
    /// The current layer, with the quantized weights set so far.
    layer: Option<Layer>,
    /// The current layer unquantized, when correcting for input error.
    fp_layer: Option<Layer>,
    correct: bool,
    ctx: usize,
    stats: ActivationStats,
    /// The dequantized weights of matrices already quantized, by name, waiting for their layer.
    quantized: HashMap<String, Tensor>,
    /// Tokens run through the model (a BOS per window included).
    pub tokens: usize,
}

impl<'a> Calibration<'a> {
    /// Tokenizes up to `max_tokens` tokens of `text` into windows and embeds them. With
    /// `correct`, the unquantized model runs beside the quantized one and each tap's
    /// statistics include the input-error correction (`ActivationStats::correction`).
    pub fn start(src: &'a Source, text: &str, max_tokens: usize, correct: bool) -> Result<Self, ModelError> {
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
            let x = embed.rows(&input, &Device::Cpu)?.unsqueeze(0)?;
            let fp = correct.then(|| (x.clone(), None, None));
            windows.push(Window { tokens: input, x, act: None, x_mid: None, fp });
        }
        let stats = ActivationStats::default();
        let quantized = HashMap::new();
        Ok(Self { src, shell, windows, at: (0, 0), layer: None, fp_layer: None, correct, ctx, stats, quantized, tokens: count })
    }

    /// The calibration windows' tokens (BOS first where the model adds one).
    pub fn windows(self) -> Vec<Vec<u32>> {
        self.windows.into_iter().map(|w| w.tokens).collect()
    }

    /// Records the weights the matrix `name` was quantized to (dequantized, in the model's
    /// own basis): the pieces of the forward pass still to come use them.
    pub fn set_quantized(&mut self, name: &str, w: Tensor) {
        self.quantized.insert(name.to_string(), w);
    }

    /// The statistics `tap` needs, running the model up to it first. Taps must be asked for
    /// in forward order: earlier layers' statistics are gone.
    pub fn stats_for(&mut self, tap: Tap) -> Result<&mut ActivationStats, ModelError> {
        let layers = self.src.config.layers;
        let target = position(tap, layers);
        assert!(target >= self.at || self.at.0 == target.0, "{tap:?}'s statistics asked for after layer {}'s", self.at.0);
        while self.at < target {
            self.advance()?;
        }
        Ok(&mut self.stats)
    }

    /// The current layer with every quantized weight handed back for it so far.
    fn current_layer(&mut self) -> Result<&Layer, ModelError> {
        let i = self.at.0;
        if self.layer.is_none() {
            self.layer = Some(Layer::load(&self.src.config, &self.src.weights(&Device::Cpu), i)?);
        }
        let layer = self.layer.as_mut().expect("just loaded");
        let prefix = format!("model.layers.{i}.");
        let mine: Vec<String> = self.quantized.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
        for name in mine {
            let w = self.quantized.remove(&name).expect("listed");
            layer.replace_weight(&name[prefix.len()..], w);
        }
        Ok(self.layer.as_ref().expect("just loaded"))
    }

    /// Runs the next piece of the forward pass and observes the tap it reaches.
    fn advance(&mut self) -> Result<(), ModelError> {
        let src = self.src;
        let cfg = &src.config;
        let (i, piece) = self.at;
        if i == cfg.layers {
            // After the last layer: the head's input.
            self.stats.keep_only(|t| *t == Tap::Head);
            for w in &self.windows {
                let normed = self.shell.final_norm(&w.x)?;
                self.stats.observe(Tap::Head, &normed)?;
            }
            self.at = (i, 1);
            return Ok(());
        }
        if piece == 0 {
            self.stats.keep_only(|t| layer_of(*t, cfg.layers) >= i);
        }
        self.current_layer()?;
        if self.correct && self.fp_layer.is_none() {
            self.fp_layer = Some(Layer::load(cfg, &src.weights(&Device::Cpu), i)?);
        }
        let (shell, layer, ctx) = (&self.shell, self.layer.as_ref().expect("loaded"), self.ctx);
        // One piece of one stream: (the tap reached and its activations, or None past the
        // layer's end); x, act, x_mid as in `Window`.
        let piece_of = |layer: &Layer, tokens: &[u32], x: &mut Tensor, act: &mut Option<Tensor>, x_mid: &mut Option<Tensor>| -> Result<Option<(Tap, Tensor)>, ModelError> {
            let (tap, out) = match piece {
                0 => (Tap::AttnIn(i), shell.stage_attn_in(layer, x)?),
                1 => {
                    let mut cache = crate::KvCache::new(1, cfg.kv_heads, cfg.head_dim, ctx, candle_core::DType::F32, &Device::Cpu)?;
                    let n = act.take().expect("the q/k/v input");
                    let step = crate::Step { tokens, cache: &mut cache, adapter: None };
                    (Tap::AttnOut(i), shell.stage_attn_out(layer, 0, &n, &mut [step])?)
                }
                2 => {
                    let (m, n) = shell.stage_mlp_in(layer, x, &act.take().expect("the o_proj input"))?;
                    *x_mid = Some(m);
                    (Tap::MlpIn(i), n)
                }
                3 => (Tap::MlpMid(i), shell.stage_mlp_mid(layer, &act.take().expect("the gate/up input"))?),
                _ => {
                    let mid = act.take().expect("the down_proj input");
                    *x = shell.stage_out(layer, &x_mid.take().expect("after attention"), &mid)?;
                    return Ok(None);
                }
            };
            *act = Some(out.clone());
            Ok(Some((tap, out)))
        };
        for w in &mut self.windows {
            let q = piece_of(layer, &w.tokens, &mut w.x, &mut w.act, &mut w.x_mid)?;
            let fp = match (&mut w.fp, &self.fp_layer) {
                (Some((x, act, x_mid)), Some(fl)) => piece_of(fl, &w.tokens, x, act, x_mid)?,
                _ => None,
            };
            match (q, fp) {
                (Some((tap, q)), Some((_, fp))) => self.stats.observe_pair(tap, &fp, &q)?,
                (Some((tap, q)), None) => self.stats.observe(tap, &q)?,
                _ => {}
            }
        }
        self.at = match piece {
            4 => {
                self.layer = None;
                self.fp_layer = None;
                (i + 1, 0)
            }
            p => (i, p + 1),
        };
        Ok(())
    }
}

/// The decoder layer a tap belongs to; the head's comes after the last layer.
fn layer_of(tap: Tap, layers: usize) -> usize {
    position(tap, layers).0
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
        let mut calib = Calibration::start(&src, &text, usize::MAX, false).unwrap();
        let mut taps: Vec<Tap> = (0..layers).flat_map(|i| [Tap::AttnIn(i), Tap::AttnOut(i), Tap::MlpIn(i), Tap::MlpMid(i)]).collect();
        taps.push(Tap::Head);
        for tap in taps {
            let got = calib.stats_for(tap).unwrap().hessian(tap).unwrap();
            assert_eq!(got, whole.hessian(tap).unwrap(), "{tap:?}");
        }
        assert!(calib.windows.len() > 1, "the text spans several windows");
    }

    /// Sequential calibration sees the weights handed back: with layer 0's o_proj
    /// "quantized" to zeros, the taps before it keep the whole-model statistics and the
    /// MLP's input changes.
    #[test]
    fn later_taps_see_the_quantized_weights_handed_back() {
        let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/fixtures/tiny/qwen3");
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(60);
        let (whole, _) = whole_model(&dir, &text);
        let src = Source::open(&dir).unwrap();
        let mut calib = Calibration::start(&src, &text, usize::MAX, true).unwrap();
        for tap in [Tap::AttnIn(0), Tap::AttnOut(0)] {
            assert_eq!(calib.stats_for(tap).unwrap().hessian(tap).unwrap(), whole.hessian(tap).unwrap(), "{tap:?}");
        }
        let (h, q_out) = (src.config.hidden, src.config.heads * src.config.head_dim);
        calib.set_quantized("model.layers.0.self_attn.o_proj.weight", Tensor::zeros((h, q_out), candle_core::DType::F32, &Device::Cpu).unwrap());
        let tap = Tap::MlpIn(0);
        assert_ne!(calib.stats_for(tap).unwrap().hessian(tap).unwrap(), whole.hessian(tap).unwrap());
        // Layer 0's input is the embeddings either way: nothing to correct.
        let stats = calib.stats_for(Tap::AttnIn(0)).unwrap();
        stats.gptq_factor(Tap::AttnIn(0), None).unwrap();
        let t = stats.correction(Tap::AttnIn(0)).unwrap();
        let k = h;
        assert!((0..k * k).all(|x| t[x] == if x / k == x % k { 1.0 } else { 0.0 }), "T = I");
    }

    /// The correction maps the perturbed inputs' output back toward the unperturbed one's:
    /// ‖W x - W T x̃‖ is far below ‖W x - W x̃‖.
    #[test]
    fn the_correction_undoes_most_of_an_input_error() {
        let (n, k, t) = (8, 32, 400);
        let mut seed = 9u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        // x̃ = A x + noise: a systematic distortion (what earlier quantized layers cause) and a little noise.
        let a: Vec<f32> = (0..k * k).map(|x| if x / k == x % k { 1.0 } else { 0.0 } + 0.1 * rnd()).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
        let xt: Vec<f32> = x.chunks(k).flat_map(|r| (0..k).map(|i| (0..k).map(|j| a[i * k + j] * r[j]).sum::<f32>() + 0.01 * rnd()).collect::<Vec<_>>()).collect();
        let mut stats = ActivationStats::default();
        let tensor = |v: &[f32]| Tensor::from_slice(v, (1, t, k), &Device::Cpu).unwrap();
        stats.observe_pair(Tap::AttnIn(3), &tensor(&x), &tensor(&xt)).unwrap();
        stats.gptq_factor(Tap::AttnIn(3), None).unwrap();
        let tm = stats.correction(Tap::AttnIn(3)).unwrap();
        let wt: Vec<f32> = (0..n * k).map(|x| (0..k).map(|m| w[x / k * k + m] * tm[m * k + x % k]).sum()).collect();
        let err = |v: &[f32]| -> f64 {
            let mut e = 0.0;
            for (xr, xtr) in x.chunks(k).zip(xt.chunks(k)) {
                for r in 0..n {
                    let exact: f32 = (0..k).map(|c| w[r * k + c] * xr[c]).sum();
                    let approx: f32 = (0..k).map(|c| v[r * k + c] * xtr[c]).sum();
                    e += ((exact - approx) as f64).powi(2);
                }
            }
            e
        };
        let (plain, corrected) = (err(&w), err(&wt));
        assert!(corrected < 0.2 * plain, "corrected {corrected} vs plain {plain}");
        // The same through a rotation: W Rᵀ T' with T' made for the rotated inputs, undone.
        let r = Rotation::random(k, 1);
        stats.observe_pair(Tap::AttnIn(4), &tensor(&x), &tensor(&xt)).unwrap();
        stats.gptq_factor(Tap::AttnIn(4), Some(&r)).unwrap();
        let tr = stats.correction(Tap::AttnIn(4)).unwrap();
        let mut wr = w.clone();
        r.apply(&mut wr);
        let mut wrt: Vec<f32> = (0..n * k).map(|x| (0..k).map(|m| wr[x / k * k + m] * tr[m * k + x % k]).sum()).collect();
        r.apply_inverse(&mut wrt);
        let rotated = err(&wrt);
        assert!((rotated - corrected).abs() < 1e-3 * plain, "rotated {rotated} vs {corrected}");
    }
}
