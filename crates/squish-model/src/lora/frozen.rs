//! A frozen base matrix W (out, in) of the training model and the two products training
//! needs: y = x Wᵀ and the input's gradient dx = dy W (W itself gets none). Dense bases are
//! tensors in the training dtype (on a GPU in bf16, x rounded to it for the product). A squish
//! INT8/INT4/INT3 base stays quantized, in place in the mmap: its forward runs the kernels
//! inference runs (so training sees what `run` computes), and its backward dequantizes
//! PANEL_ROWS rows at a time, never the whole matrix (a 7B INT4 base would be 28 GB in f32).
//! On a GPU an INT4/INT8 base stays packed in device memory; both products run in bf16
//! through its kernels and cuBLAS.

use crate::linear::Weight;
use crate::ModelError;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Rows of W dequantized at once in the backward pass: 256 x 576 f32 (590 KB) on SmolLM2,
/// 11 MB for a 7B's down projection; large enough to keep the matmul efficient.
const PANEL_ROWS: usize = 256;

#[derive(Clone)]
pub(crate) enum FrozenWeight {
    Dense(Tensor),
    Quantized(Arc<Weight>),
}

impl FrozenWeight {
    /// A dense weight in `dtype` (on a GPU: as loaded, in bf16), or the quantized one as it is.
    pub fn new(weight: Weight, dtype: DType) -> Result<Self, ModelError> {
        Ok(match weight {
            Weight::Dense(w) if !w.device().is_cpu() => FrozenWeight::Dense(w),
            Weight::Dense(w) => FrozenWeight::Dense(w.to_dtype(dtype)?),
            q => FrozenWeight::Quantized(Arc::new(q)),
        })
    }

    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        match self {
            FrozenWeight::Dense(w) => (w.dims()[0], w.dims()[1]),
            FrozenWeight::Quantized(q) => q.shape(),
        }
    }

    /// Embedding lookup: ids -> (ids, in) in `dtype`; a quantized W dequantizes only those rows.
    pub fn rows(&self, ids: &Tensor, dtype: DType) -> Result<Tensor, ModelError> {
        Ok(match self {
            FrozenWeight::Dense(w) => w.index_select(ids, 0)?.to_dtype(dtype)?,
            FrozenWeight::Quantized(q) => q.rows(&ids.to_vec1()?, ids.device())?.to_dtype(dtype)?,
        })
    }

    /// x (m, in) -> x Wᵀ (m, out). A quantized W in f32 runs squish-quant's kernel (INT4 and
    /// INT3 quantize x to int8 per block of 32); in f64, for gradient checks, it is the exact
    /// product with the dequantized W: the function whose gradient `input_grad` gives.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let q = match self {
            FrozenWeight::Dense(w) => return x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(x.dtype()),
            FrozenWeight::Quantized(q) => q,
        };
        match &**q {
            Weight::Gpu { device, .. } => device.matmul(x).map_err(candle_core::Error::wrap)?.to_dtype(x.dtype()),
            _ if x.dtype() == DType::F32 => {
                let (m, n) = (x.dim(0)?, q.shape().0);
                let mut out = vec![0f32; m * n];
                q.quantized_matmul(&x.flatten_all()?.to_vec1()?, m, &mut out).map_err(candle_core::Error::wrap)?;
                Tensor::from_vec(out, (m, n), x.device())
            }
            _ => {
                let parts = row_panels(q, x.dtype()).map(|p| x.matmul(&p?.1.t()?)).collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            }
        }
    }

    /// dy (m, out) -> dy W (m, in): a quantized W is summed panel by panel.
    pub fn input_grad(&self, dy: &Tensor) -> candle_core::Result<Tensor> {
        let q = match self {
            FrozenWeight::Dense(w) => return dy.to_dtype(w.dtype())?.matmul(w)?.to_dtype(dy.dtype()),
            FrozenWeight::Quantized(q) => q,
        };
        if let Weight::Gpu { device, .. } = &**q {
            // The whole matrix in bf16 for one cuBLAS product: a GPU has the memory to spare.
            let w = device.dequantize().map_err(candle_core::Error::wrap)?;
            return dy.to_dtype(w.dtype())?.matmul(&w)?.to_dtype(dy.dtype());
        }
        let mut dx: Option<Tensor> = None;
        for panel in row_panels(q, dy.dtype()) {
            let (r0, w) = panel?;
            let part = dy.narrow(1, r0, w.dim(0)?)?.contiguous()?.matmul(&w)?;
            dx = Some(match dx {
                Some(sum) => (sum + part)?,
                None => part,
            });
        }
        dx.ok_or_else(|| candle_core::Error::Msg("frozen matmul: a matrix without rows".into()))
    }
}

/// W's rows in panels of PANEL_ROWS, each dequantized when reached: (first row, panel in dtype).
fn row_panels(q: &Weight, dtype: DType) -> impl Iterator<Item = candle_core::Result<(usize, Tensor)>> + '_ {
    let (n, k) = q.shape();
    (0..n).step_by(PANEL_ROWS).map(move |r0| {
        let rows = PANEL_ROWS.min(n - r0);
        let mut buf = vec![0f32; rows * k];
        q.dequantize_rows(r0, &mut buf).map_err(candle_core::Error::wrap)?;
        Ok((r0, Tensor::from_vec(buf, (rows, k), &Device::Cpu)?.to_dtype(dtype)?))
    })
}
