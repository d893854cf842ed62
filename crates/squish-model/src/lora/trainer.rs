//! The training loop's state: AdamW over the adapter's tensors, the seeded order of batches,
//! and checkpoints that resume exactly where they stopped (adapter, optimizer moments,
//! position in the epoch). Printing and files' names are the caller's.

use super::adapter::SplitMix;
use super::data::Example;
use super::train_model::{Batch, TrainModel};
use crate::ModelError;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub seed: u64,
    pub lr: f64,
    pub batch: usize,
    /// (step, training loss) of every step.
    pub losses: Vec<(usize, f32)>,
    /// (epoch, evaluation loss) after each epoch.
    pub eval_losses: Vec<(usize, f32)>,
}

/// One Adam step of `var` with gradient `g` (the `step`th, from 1): its moments (first,
/// second) updated in place, the bias-corrected update times `lr` subtracted.
pub(crate) fn adam_update(var: &Var, g: &Tensor, (m, v): &mut (Tensor, Tensor), step: usize, lr: f64) -> candle_core::Result<()> {
    let (c1, c2) = (1.0 - BETA1.powi(step as i32), 1.0 - BETA2.powi(step as i32));
    *m = ((&*m * BETA1)? + (g * (1.0 - BETA1))?)?;
    *v = ((&*v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
    let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + EPS)?)?;
    var.set(&(var.as_tensor() - (update * lr)?)?)
}

pub struct Trainer {
    pub model: TrainModel,
    pub state: TrainState,
    /// AdamW's first and second moments, by tensor name.
    moments: HashMap<String, (Tensor, Tensor)>,
}

impl Trainer {
    pub fn new(model: TrainModel, lr: f64, batch: usize, seed: u64) -> Result<Self, ModelError> {
        let mut moments = HashMap::new();
        for (name, v) in model.vars() {
            let z = v.as_tensor().zeros_like()?;
            moments.insert(name, (z.clone(), z));
        }
        let state = TrainState { step: 0, epoch: 0, batch_in_epoch: 0, seed, lr, batch, losses: Vec::new(), eval_losses: Vec::new() };
        Ok(Self { model, state, moments })
    }

    /// The example indices of each batch of `epoch`: a seeded shuffle, then chunks.
    pub fn batches(&self, examples: usize, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..examples).collect();
        let mut rng = SplitMix(self.state.seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        order.chunks(self.state.batch.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// One AdamW step on a batch; returns its loss.
    pub fn step(&mut self, batch: &Batch) -> Result<f32, ModelError> {
        let loss = self.model.loss(batch)?;
        let grads = self.model.backward(&loss)?;
        self.state.step += 1;
        for (name, var) in self.model.vars() {
            let Some(g) = grads.get(&name) else { continue };
            let moments = self.moments.get_mut(&name).expect("a moment per var");
            adam_update(&var, g, moments, self.state.step, self.state.lr)?;
        }
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        self.state.losses.push((self.state.step, value));
        Ok(value)
    }

    /// The mean loss over every target token of `examples`, without training.
    pub fn eval_loss(&self, examples: &[Example], device: &Device) -> Result<f32, ModelError> {
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in examples.chunks(self.state.batch.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let batch = make_batch(&refs, device)?;
            let n = batch.targets.dim(0)?;
            sum += self.model.loss(&batch)?.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64 * n as f64;
            count += n;
        }
        Ok((sum / count.max(1) as f64) as f32)
    }

    /// Writes the adapter, the optimizer's moments and the state into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), ModelError> {
        self.model.adapter()?.save(dir)?;
        let mut tensors = HashMap::new();
        for (name, (m, v)) in &self.moments {
            tensors.insert(format!("{name}.exp_avg"), m.clone());
            tensors.insert(format!("{name}.exp_avg_sq"), v.clone());
        }
        candle_core::safetensors::save(&tensors, dir.join(OPTIMIZER_FILE))?;
        let text = serde_json::to_string_pretty(&self.state).expect("the state serializes");
        std::fs::write(dir.join(STATE_FILE), text).map_err(|e| ModelError::io(dir, e))
    }

    /// Continues from a checkpoint written by `save_checkpoint`: `model` must have been built
    /// with the checkpoint's adapter (`Adapter::load` of the same directory).
    pub fn resume(model: TrainModel, dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| ModelError::io(&dir.join(STATE_FILE), e))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| ModelError::unsupported(&dir.join(STATE_FILE), e))?;
        let mut saved = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), device)?;
        let mut moments = HashMap::new();
        for (name, v) in model.vars() {
            let mut take = |suffix: &str| {
                saved
                    .remove(&format!("{name}.{suffix}"))
                    .ok_or_else(|| ModelError::unsupported(&dir.join(OPTIMIZER_FILE), format!("no `{name}.{suffix}`: not a checkpoint of this adapter")))
                    .and_then(|t| Ok(t.to_dtype(v.dtype())?))
            };
            moments.insert(name.clone(), (take("exp_avg")?, take("exp_avg_sq")?));
        }
        Ok(Self { model, state, moments })
    }
}

/// Right-pads the rows to the longest and lists the scored positions.
pub fn make_batch(rows: &[&Example], device: &Device) -> Result<Batch, ModelError> {
    let seq = rows.iter().map(|e| e.tokens.len()).max().unwrap_or(1);
    let mut tokens = vec![0u32; rows.len() * seq];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (r, e) in rows.iter().enumerate() {
        tokens[r * seq..r * seq + e.tokens.len()].copy_from_slice(&e.tokens);
        for i in 1..e.tokens.len() {
            if e.scored[i] {
                positions.push((r * seq + i - 1) as u32);
                targets.push(e.tokens[i]);
            }
        }
    }
    let n = positions.len();
    Ok(Batch {
        tokens: Tensor::from_vec(tokens, (rows.len(), seq), device)?,
        positions: Tensor::from_vec(positions, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
    })
}
