//! Tuning after quantization (`--to int2` with `--calib`): with every code fixed, the int2
//! matrices' group scales (one trainable factor per group) and the RMS norms' weights are
//! trained so that the quantized model's next-token distribution follows the unquantized
//! model's on the calibration windows (the KL divergence, AdamW, one step per window).
//! What it returns fits the stored layout: factors fold into the 8-bit scale codes
//! (`int2::rescale`), norms stay f32. The training model is the LoRA trainer's
//! (`lora::TrainModel`), dense f32 with every matrix as the conversion dequantized it.

use crate::decoder::Decoder;
use crate::lora::frozen::FrozenWeight;
use crate::lora::train_layer::{Frozen, TrainLayer};
use crate::lora::tuned::Tuned;
use crate::lora::train_model::rope_tables;
use crate::lora::trainer::adam_update;
use crate::lora::{Target, TrainModel};
use crate::{ModelError, Source};
use candle_core::{DType, Device, Tensor, Var};
use super::kl::Teacher;
use super::plan::{Storage, TensorChoice};
use half::f16;
use squish_quant::{int2, params8};
use squish_quant::rotate::Rotation;
use std::collections::HashMap;

/// AdamW's peak learning rate: a group factor moves at most about this much per step. It
/// rises over the first WARMUP steps (Adam's first steps move every tensor by about the
/// rate at once) and falls linearly to a tenth by the last.
const LR: f64 = 2e-3;
const WARMUP: usize = 8;

/// The most memory the teacher's kept probabilities (f16) may take (SmolLM2's 49k vocabulary
/// over 32k calibration tokens: 3.2 GB).
const TARGETS_BYTES: usize = 4 << 30;

/// The converted model as tuning starts from it.
#[derive(Default)]
pub struct Tunable {
    /// The other matrices as stored, dequantized into the model's basis: (weights, rows,
    /// columns).
    pub dense: HashMap<String, (Vec<f32>, usize, usize)>,
    /// The rotated matrices whose group scales are tuned (int2, and the int3 and int4p8
    /// ones of the int2 recipe): dequantized in their rotated basis, group size, rotation.
    pub tuned: HashMap<String, (Vec<f32>, usize, Rotation)>,
    /// The RMS norms' weights.
    pub norms: HashMap<String, Vec<f32>>,
}

impl Tunable {
    /// Takes in one tensor of the conversion: `data` as read, `dequantized` as stored.
    pub fn add(&mut self, choice: &TensorChoice, data: Vec<f32>, dequantized: Option<Vec<f32>>, rotation_seed: u64) {
        let (name, shape) = (choice.spec.name.clone(), &choice.spec.shape);
        if shape.len() == 1 && name.ends_with("norm.weight") {
            self.norms.insert(name, data);
            return;
        }
        if shape.len() != 2 {
            return;
        }
        let (n, k) = (shape[0], shape[1]);
        let mut w = dequantized.unwrap_or(data);
        match (&choice.storage, choice.rotation) {
            (Storage::Int2 { group } | Storage::Int3 { group } | Storage::Int4P8 { group }, Some(_)) => {
                let rotation = Rotation::random(k, rotation_seed);
                rotation.apply(&mut w);
                self.tuned.insert(name, (w, *group, rotation));
            }
            _ => {
                self.dense.insert(name, (w, n, k));
            }
        }
    }
}

/// What tuning changed.
pub struct Tuning {
    /// Per tuned matrix, one factor per group (row-major, as the scale codes).
    pub factors: HashMap<String, Vec<f32>>,
    /// New weights of every norm.
    pub norms: HashMap<String, Vec<f32>>,
    /// The mean KL divergence of each epoch's windows, before each step.
    pub kl: Vec<f32>,
}

impl Tuning {
    /// Applies what tuning changed to one tensor's stored parts (`TensorChoice::parts` order).
    pub fn apply(&self, choice: &TensorChoice, parts: &mut [Vec<u8>]) {
        let name = &choice.spec.name;
        let f16s = |b: &[u8]| -> Vec<f16> { b.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect() };
        let bytes = |v: &[f16]| -> Vec<u8> { v.iter().flat_map(|s| s.to_le_bytes()).collect() };
        match (self.factors.get(name), &choice.storage) {
            (Some(f), Storage::Int2 { .. }) => {
                // codes, scale codes, steps, table
                let mut steps = f16s(&parts[2]);
                int2::rescale(&mut parts[1], &mut steps, f);
                parts[2] = bytes(&steps);
            }
            (Some(f), Storage::Int3 { .. } | Storage::Int4P8 { .. }) => {
                // codes, scale codes, min codes, steps
                let mut steps = f16s(&parts[3]);
                let mut m8: Vec<i8> = parts[2].iter().map(|&b| b as i8).collect();
                params8::rescale(&mut parts[1], &mut m8, &mut steps, f);
                parts[2] = m8.iter().map(|&v| v as u8).collect();
                parts[3] = bytes(&steps);
            }
            _ => {}
        }
        if let Some(w) = self.norms.get(name) {
            parts[0] = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    }
}

/// Tunes `model` towards `src` over `windows` (token rows) for `epochs` passes;
/// `progress(done, total, kl)` after each step.
pub fn tune(src: &Source, windows: &[Vec<u32>], mut model: Tunable, epochs: usize, progress: &mut dyn FnMut(usize, usize, f32)) -> Result<Tuning, ModelError> {
    let cfg = src.config.clone();
    let cpu = Device::Cpu;
    let longest = windows.iter().map(Vec::len).max().unwrap_or(1);
    let teacher = Decoder::load(&cfg, &src.weights(&cpu), longest, &cpu)?;

    let missing = |name: &str| ModelError::unsupported(src.files.path(), format!("tuning: the model has no {name}"));
    let mut take = |name: &str| -> Result<Tensor, ModelError> {
        let (w, n, k) = model.dense.remove(name).ok_or_else(|| missing(name))?;
        Ok(Tensor::from_vec(w, (n, k), &cpu)?)
    };
    // q/k norms (Qwen3) stay as they are; the others are tuned.
    let mut qk = HashMap::new();
    model.norms.retain(|name, w| !(name.contains(".self_attn.") && qk.insert(name.clone(), std::mem::take(w)).is_none()));
    let mut norm_vars: Vec<(String, Var)> = Vec::new();
    let mut norm = |name: String, vars: &mut Vec<(String, Var)>| -> Result<Tensor, ModelError> {
        let w = model.norms.remove(&name).ok_or_else(|| missing(&name))?;
        let v = Var::from_tensor(&Tensor::from_vec(w, cfg.hidden, &cpu)?)?;
        let t = v.as_tensor().clone();
        vars.push((name, v));
        Ok(t)
    };
    let mut tuned_names: Vec<(String, usize, usize)> = Vec::new(); // (name, layer, target index)
    let rope = rope_tables(&mut cfg.clone(), &src.weights(&cpu), longest, DType::F32, &cpu)?;
    let mut layers = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        let mut linears = std::collections::BTreeMap::new();
        for (ti, t) in Target::ALL.into_iter().enumerate() {
            let name = format!("{p}.{}.weight", t.module());
            let frozen = match model.tuned.remove(&name) {
                Some((rotated, g, rotation)) => {
                    let (n, k) = t.shape(&cfg);
                    tuned_names.push((name, i, ti));
                    // w is not read: the product is the tuned matrix's.
                    let tuned = Tuned::new(rotated, n, k, g, &rotation, &cpu)?;
                    Frozen { w: FrozenWeight::Dense(Tensor::zeros((n, 0), DType::F32, &cpu)?), b: None, tuned: Some(tuned) }
                }
                None => Frozen { w: FrozenWeight::Dense(take(&name)?), b: None, tuned: None },
            };
            linears.insert(t, frozen);
        }
        let attn_norm = norm(format!("{p}.input_layernorm.weight"), &mut norm_vars)?;
        let mlp_norm = norm(format!("{p}.post_attention_layernorm.weight"), &mut norm_vars)?;
        let mut fixed = |part: &str| qk.remove(&format!("{p}.self_attn.{part}.weight")).map(|w| Tensor::from_vec(w, cfg.head_dim, &cpu)).transpose();
        let qk_norms = [fixed("q_norm")?, fixed("k_norm")?];
        let mut layer = TrainLayer::new(&cfg, [attn_norm, mlp_norm], qk_norms, linears, &rope);
        layer.extra = norm_vars[norm_vars.len() - 2..].iter().map(|(_, v)| v.clone()).collect();
        layers.push(layer);
    }
    let final_norm = norm("model.norm.weight".to_string(), &mut norm_vars)?;
    let embed_name = "model.embed_tokens.weight";
    let (embed, embed_tuned) = match model.tuned.remove(embed_name) {
        Some((rotated, g, rotation)) => (Tensor::zeros((cfg.vocab, 0), DType::F32, &cpu)?, Some(Tuned::new(rotated, cfg.vocab, cfg.hidden, g, &rotation, &cpu)?)),
        None => (take(embed_name)?, None),
    };
    // An untied head as stored (not tuned: its factors would need a second lookup path).
    let head = match (model.dense.remove("lm_head.weight"), model.tuned.remove("lm_head.weight")) {
        (Some((w, n, k)), _) => Some(Tensor::from_vec(w, (n, k), &cpu)?),
        (None, Some((mut w, _, rotation))) => {
            rotation.apply_inverse(&mut w);
            Some(Tensor::from_vec(w, (cfg.vocab, cfg.hidden), &cpu)?)
        }
        (None, None) => None,
    };
    let student = TrainModel::for_tuning(cfg.clone(), embed, embed_tuned, head, final_norm, layers);
    let layers = student.layers();
    let factor_of = |layer: usize, ti: usize| -> &Var {
        &layers[layer].linears[&Target::ALL[ti]].tuned.as_ref().expect("a tuned matrix").m
    };
    let mut vars: Vec<Var> = tuned_names.iter().map(|(_, l, ti)| factor_of(*l, *ti).clone()).collect();
    vars.extend(norm_vars.iter().map(|(_, v)| v.clone()));
    // Read outside the layers: the norms, and the embeddings when tuned.
    let mut outside: Vec<Var> = norm_vars.iter().map(|(_, v)| v.clone()).collect();
    if let Some(m) = student.embed_factors() {
        vars.push(m.clone());
        outside.push(m.clone());
    }
    let mut moments: Vec<(Tensor, Tensor)> = vars.iter().map(|v| v.as_tensor().zeros_like().map(|z| (z.clone(), z))).collect::<Result<_, _>>()?;

    let total = epochs * windows.len();
    // The teacher's distribution over every window, kept after the first pass where it fits
    // in TARGETS_BYTES (later passes then skip the teacher's forward); else recomputed each
    // pass.
    let kept_bytes = windows.iter().map(|w| w.len() * cfg.vocab * 2).sum::<usize>();
    let keep_targets = epochs > 1 && kept_bytes <= TARGETS_BYTES;
    let mut targets: Vec<Teacher> = Vec::new();
    let (mut step, mut kl) = (0usize, Vec::new());
    for _ in 0..epochs {
        let mut sum = 0f64;
        for (w, tokens) in windows.iter().enumerate() {
            let t = tokens.len();
            let fresh;
            let target = match targets.get(w) {
                Some(kept) => kept,
                None => {
                    let mut cache = teacher.new_cache(t, DType::F32)?;
                    let logits = teacher.logits(&teacher.forward(tokens, &mut cache)?)?.flatten_all()?.to_vec1::<f32>()?;
                    fresh = Teacher::from_logits(&logits, cfg.vocab);
                    match keep_targets {
                        true => {
                            targets.push(fresh);
                            &targets[w]
                        }
                        false => &fresh,
                    }
                }
            };
            let ids = Tensor::from_slice(tokens, (1, t), &cpu)?;
            let loss = target.kl(&student.logits(&ids)?.reshape((t, cfg.vocab))?)?;
            let value = loss.to_scalar::<f32>()?;
            sum += value as f64;
            let grads = student.backward_all(&loss, &outside.iter().collect::<Vec<_>>())?;
            step += 1;
            let lr = LR * (step as f64 / WARMUP as f64).min(1.0) * (1.0 - 0.9 * (step - 1) as f64 / total.max(1) as f64);
            for (v, moments) in vars.iter().zip(moments.iter_mut()) {
                let Some(g) = grads.get(&v.as_tensor().id()) else { continue };
                adam_update(v, g, moments, step, lr)?;
            }
            progress(step, total, value);
        }
        kl.push((sum / windows.len().max(1) as f64) as f32);
    }
    let mut factors = HashMap::new();
    for (name, l, ti) in &tuned_names {
        factors.insert(name.clone(), factor_of(*l, *ti).as_tensor().flatten_all()?.to_vec1()?);
    }
    if let Some(m) = student.embed_factors() {
        factors.insert(embed_name.to_string(), m.as_tensor().flatten_all()?.to_vec1()?);
    }
    let norms = norm_vars.into_iter().map(|(n, v)| Ok((n, v.as_tensor().to_vec1()?))).collect::<Result<_, ModelError>>()?;
    Ok(Tuning { factors, norms, kl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::plan::{choose, Scheme};
    use crate::tensor_plan;

    /// On a tiny model whose int2 matrices had their group scales moved (x0.8 or x1.25 per
    /// group, in the stored basis), tuning brings the output distribution back towards the
    /// source's: the KL divergence of the last pass is well under the first's.
    #[test]
    fn tuning_undoes_moved_group_scales() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
        let src = Source::open(&dir).unwrap();
        let w = src.weights(&Device::Cpu);
        let seed = 7;
        let mut model = Tunable::default();
        for spec in tensor_plan(&src.config, &|n| w.has(n)) {
            let data = w.get(&spec.name, &spec.shape).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut choice = choose(&spec, Scheme::Int2, 64);
            if spec.shape.len() == 2 {
                choice = choice.rotated();
            }
            let moved = matches!(choice.storage, Storage::Int2 { .. }).then(|| {
                let r = Rotation::random(spec.shape[1], seed);
                let mut x = data.clone();
                r.apply(&mut x);
                for (i, group) in x.chunks_exact_mut(64).enumerate() {
                    let f = if (i * 7 + 3) % 5 < 2 { 0.8 } else { 1.25 };
                    group.iter_mut().for_each(|v| *v *= f);
                }
                r.apply_inverse(&mut x);
                x
            });
            model.add(&choice, data, moved, seed);
        }
        let windows: Vec<Vec<u32>> = (0..4u32).map(|s| (0..64u32).map(|i| (i * 37 + s * 101 + i * i) % 320).collect()).collect();
        let tuned = tune(&src, &windows, model, 50, &mut |_, _, _| {}).unwrap();
        let (first, last) = (tuned.kl[0], *tuned.kl.last().unwrap());
        assert!(last < 0.5 * first, "KL {first} -> {last}: {:?}", tuned.kl);
        assert!(tuned.factors.contains_key("model.layers.1.mlp.down_proj.weight") && tuned.norms.contains_key("model.norm.weight"));
    }
}
