//! squish's own GPU kernels (CUDA C in this folder, compiled to PTX by build.rs with the `cuda`
//! feature): quantized matrices read in their packed layout, batched decode attention, prompt
//! attention without a score matrix, and fused elementwise steps of a decode step.
//! The types and functions exist in every build, so callers carry no `cfg`; without the
//! feature they report that CUDA is not built in, or decline (None).

mod attention;
pub(crate) mod fused;
mod prefill;
mod quant;

pub use attention::{decode_attention, CacheSlot};
pub use prefill::prefill_attention;
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

/// A tensor's CUDA storage.
#[cfg(feature = "cuda")]
fn cuda_slice(st: &candle_core::Storage) -> candle_core::Result<&candle_core::CudaStorage> {
    match st {
        candle_core::Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("attention: a tensor is not on the GPU"),
    }
}

/// `t` as rows of `width` values in place, with the distance between rows: (1, rows, width)
/// with unit last stride (a stacked q/k/v product narrowed to one of them), or a contiguous
/// copy. None where the shape is not `rows` x `width`.
#[cfg(feature = "cuda")]
fn rows_of(t: &candle_core::Tensor, rows: usize, width: usize) -> candle_core::Result<Option<(candle_core::Tensor, i32)>> {
    if let Some(stride) = row_stride(t).filter(|_| t.dims()[1..] == [rows, width]) {
        return Ok(Some((t.clone(), stride as i32)));
    }
    let t = t.contiguous()?;
    Ok((t.elem_count() == rows * width).then_some((t, width as i32)))
}

/// Whether an optional bias is a contiguous bf16 vector of `len` values (the attention
/// kernels add q/k/v biases themselves).
fn bias_fits(bias: Option<&candle_core::Tensor>, len: usize) -> bool {
    bias.is_none_or(|b| b.dtype() == candle_core::DType::BF16 && b.is_contiguous() && b.dims() == [len])
}

/// A bf16 tensor's values from its first element on, from its (locked) storage and layout.
#[cfg(feature = "cuda")]
fn bf16_view<'a>(
    st: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, half::bf16>> {
    Ok(cuda_slice(st)?.as_cuda_slice::<half::bf16>()?.slice(layout.start_offset()..))
}

/// The device address of a bf16 tensor's first element, from its (locked) storage and layout,
/// for a kernel parameter passed as a number (a table of caches, a pointer that may be null),
/// and the guard that orders its use on `stream`.
#[cfg(feature = "cuda")]
fn device_address<'a>(
    st: &'a candle_core::Storage,
    layout: &candle_core::Layout,
    stream: &'a std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
) -> candle_core::Result<(u64, candle_core::cuda_backend::cudarc::driver::SyncOnDrop<'a>)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (ptr, sync) = cuda_slice(st)?.as_cuda_slice::<half::bf16>()?.device_ptr(stream);
    Ok((ptr + 2 * layout.start_offset() as u64, sync))
}
