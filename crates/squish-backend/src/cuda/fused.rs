//! Two launches in one for a GPU decode step (src/cuda/fused.cu): SwiGLU's gate, and the
//! residual add with the RMS norm after it. Each declines (None) where it does not apply (not
//! a CUDA build or device, not bf16, layouts it does not read), and the caller runs candle's
//! ops instead.

use crate::Result;
use candle_core::{DType, Tensor};

/// silu(gate) * up for (1, t, width) bf16 views whose rows may lie apart (the halves of a
/// stacked gate/up product). -> (1, t, width), contiguous.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let fits = gate.device().is_cuda() && gate.dtype() == DType::BF16 && up.dtype() == DType::BF16 && gate.dims() == up.dims();
    if !fits || super::row_stride(gate).is_none() || super::row_stride(up).is_none() {
        return Ok(None);
    }
    Ok(Some(gate.apply_op2_no_bwd(up, &Fused::SiluMul)?))
}

/// x + y and rms_norm(x + y) · w for contiguous bf16 (..., width) tensors, in one launch.
/// -> (sum, normed), each shaped as x.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<Option<(Tensor, Tensor)>> {
    let width = x.dim(candle_core::D::Minus1)?;
    let fits = x.device().is_cuda()
        && [x, y, w].iter().all(|t| t.dtype() == DType::BF16 && t.is_contiguous())
        && x.dims() == y.dims()
        && w.dims() == [width];
    if !fits {
        return Ok(None);
    }
    let both = x.apply_op3_no_bwd(y, w, &Fused::AddRmsNorm { eps })?;
    Ok(Some((both.get(0)?, both.get(1)?)))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Fused {
    SiluMul,
    AddRmsNorm { eps: f32 },
}

impl candle_core::CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "squish-silu-mul"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::no_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gate: &candle_core::CudaStorage,
        lg: &candle_core::Layout,
        up: &candle_core::CudaStorage,
        lu: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        launch::silu_mul(gate, lg, up, lu)
    }
}

impl candle_core::CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "squish-add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::no_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &candle_core::Layout,
        y: &candle_core::CudaStorage,
        ly: &candle_core::Layout,
        w: &candle_core::CudaStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let Fused::AddRmsNorm { eps } = self else { candle_core::bail!("not an add and norm") };
        launch::add_rms_norm(*eps, (x, lx), (y, ly), (w, lw))
    }
}

#[cfg(feature = "cuda")]
mod launch {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use half::bf16;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const MODULE: &str = "squish_fused";
    /// fused.cu's THREADS.
    const THREADS: u32 = 256;

    /// A view's values from its first element on.
    fn from_start<'a>(s: &'a CudaStorage, l: &Layout) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, bf16>> {
        Ok(s.as_cuda_slice::<bf16>()?.slice(l.start_offset()..))
    }

    pub(super) fn silu_mul(gate: &CudaStorage, lg: &Layout, up: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
        let (&[1, rows, width], &[_, gst, 1], &[_, ust, 1]) = (lg.dims(), lg.stride(), lu.stride()) else {
            candle_core::bail!("silu_mul: (1, t, width) views with dense rows expected")
        };
        let dev = gate.device().clone();
        let out = unsafe { dev.alloc::<bf16>(rows * width)? };
        let f = dev.get_or_load_custom_func("silu_mul_bf16", MODULE, PTX)?;
        let (g, u) = (from_start(gate, lg)?, from_start(up, lu)?);
        let (rows_i, width_i, gst_i, ust_i) = (rows as i32, width as i32, gst as i32, ust as i32);
        let cfg = LaunchConfig { grid_dim: (((rows * width) as u32).div_ceil(THREADS), 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&out).arg(&rows_i).arg(&width_i).arg(&gst_i).arg(&ust_i);
        // SAFETY: gate and up hold `rows` rows of `width` values at their strides; out holds rows x width.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((1, rows, width))))
    }

    pub(super) fn add_rms_norm(
        eps: f32,
        (x, lx): (&CudaStorage, &Layout),
        (y, ly): (&CudaStorage, &Layout),
        (w, lw): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let width = *lx.dims().last().expect("x has dims");
        let rows = lx.shape().elem_count() / width;
        let dev = x.device().clone();
        let out = unsafe { dev.alloc::<bf16>(2 * rows * width)? };
        let f = dev.get_or_load_custom_func("add_rms_norm_bf16", MODULE, PTX)?;
        let (xs, ys, ws) = (from_start(x, lx)?, from_start(y, ly)?, from_start(w, lw)?);
        let (rows_i, width_i) = (rows as i32, width as i32);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = f.builder();
        b.arg(&xs).arg(&ys).arg(&ws).arg(&out).arg(&rows_i).arg(&width_i).arg(&eps);
        // SAFETY: x and y are contiguous rows x width, w has width values, out 2 x rows x width.
        unsafe { b.launch(cfg) }.w()?;
        let mut dims = vec![2];
        dims.extend_from_slice(lx.dims());
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    }
}
