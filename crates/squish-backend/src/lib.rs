//! The compute device and the few LLM ops a decoder needs, over candle. Every device variant
//! always exists; a device this binary was not built for is a clear error at open time, so
//! callers carry no `cfg`. Knows nothing of model files or architectures.

mod activation;
mod attention_cpu;
mod cuda;
mod device;
mod ops;
mod softmax;

pub use candle_core::{DType, Device, Tensor};
pub use device::{built_with, compute_dtype, describe, devices, free_memory, gpu_memory, configure_threads, on_compute_pool, open_device, DeviceRequest};
pub use activation::silu_mul;
pub use cuda::{decode_attention, prefill_attention, CacheSlot, QuantMatrix};
pub use attention_cpu::attention_from_caches;
pub use ops::{add_rms_norm, causal_attention, causal_attention_many, rms_norm, rms_norm_pieces, with_f32, Rope};
pub use softmax::softmax_rows;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("this squish was built without {0} support (rebuild with `--features {0}`)")]
    NotBuilt(&'static str),
    #[error("invalid device `{0}`: expected auto, cpu, cuda, cuda:N, metal or metal:N")]
    BadDevice(String),
    #[error("cannot open {what}: {source}")]
    Open { what: String, source: candle_core::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, BackendError>;
