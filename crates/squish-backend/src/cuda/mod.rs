//! squish's own GPU kernels (CUDA C in this folder, compiled to PTX by build.rs with the `cuda`
//! feature): quantized matrices read in their packed layout, batched decode attention, and
//! fused elementwise steps of a decode step.
//! The types and functions exist in every build, so callers carry no `cfg`; without the
//! feature they report that CUDA is not built in, or decline (None).

mod attention;
pub(crate) mod fused;
mod quant;

pub use attention::{decode_attention, CacheSlot};
pub use quant::QuantMatrix;

/// The CPU half of squish's custom ops: their kernels run on CUDA devices only.
fn no_cpu<T>() -> candle_core::Result<T> {
    candle_core::bail!("squish's GPU kernels run on CUDA devices only")
}

/// The distance between rows of a rank-3 view (1, t, width) whose last dimension is dense: a
/// product, or one piece of a stacked product (q of q/k/v, gate of gate/up), read in place.
fn row_stride(t: &candle_core::Tensor) -> Option<usize> {
    match (t.dims(), t.stride()) {
        ([1, _, _], [_, s, 1]) => Some(*s),
        _ => None,
    }
}
