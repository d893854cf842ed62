//! LoRA: low-rank adapters over a frozen base model, in Hugging Face PEFT's on-disk layout.
//! `adapter` reads, checks and writes adapters; `data` turns JSONL into token rows with loss
//! masks; `train_model` is the differentiable decoder they are trained in; `trainer` runs
//! AdamW over them with checkpoints; `apply` adds adapters to the decoder at inference;
//! `merge` folds one into its base.

pub mod adapter;
pub mod data;
pub mod merge;
mod apply;
pub(crate) mod frozen;
#[cfg(test)]
mod frozen_tests;
mod fused;
pub(crate) mod train_layer;
pub(crate) mod train_model;
pub(crate) mod tuned;
pub mod trainer;

pub use adapter::{Adapter, AdapterConfig, LoraPair, Target};
pub use apply::Deltas;
pub(crate) use apply::add_deltas;
pub(crate) use fused::cpu_f32s;
pub use train_model::TrainModel;
/// The training dtype (f32; f64 for gradient checks).
pub use candle_core::DType;
