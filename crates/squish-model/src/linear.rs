//! A linear layer whose weight is dense (a candle tensor, any device) or quantized (packed
//! codes and scales used in place from the model file's mmap by squish-quant's kernels, CPU;
//! INT4 and INT8 uploaded as they are stored for squish-backend's GPU kernels).
//! The same type serves token embeddings: a lookup dequantizes only the rows it needs.

use crate::ModelError;
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;
use squish_backend::{compute_dtype, QuantMatrix};
use squish_format::Mapped;
use squish_quant::int4::Int4Panels;
use squish_quant::int8::Int8Panels;
use squish_quant::rotate::Rotation;
use squish_quant::{f16, int2, int3, int4, int8};
use std::sync::OnceLock;

/// A grouped matrix's f16 scales and mins: in place in the file, or expanded at load from
/// their stored 8-bit form (`squish_quant::params8`; 1/32 of the codes' size at g = 64).
pub enum GroupParams {
    Mapped { scales: Mapped, mins: Mapped },
    Expanded { scales: Vec<f16>, mins: Vec<f16> },
}

impl GroupParams {
    fn get(&self) -> Result<(&[f16], &[f16]), ModelError> {
        Ok(match self {
            GroupParams::Mapped { scales, mins } => (scales.as_f16()?, mins.as_f16()?),
            GroupParams::Expanded { scales, mins } => (scales, mins),
        })
    }
}

pub enum Weight {
    Dense(Tensor),
    /// `panels`: the same matrix laid out for the CPU's panel kernel, made by the first call
    /// that reads it (None where the CPU has none; see `squish_quant::int4::Int4Panels`).
    Int4 { codes: Mapped, params: GroupParams, n: usize, k: usize, group: usize, panels: OnceLock<Option<Int4Panels>> },
    Int3 { codes: Mapped, params: GroupParams, n: usize, k: usize, group: usize },
    /// `table`: the matrix's codebook (`squish_quant::int2`).
    Int2 { codes: Mapped, params: GroupParams, table: [u8; 32], n: usize, k: usize, group: usize },
    /// `panels`: the integer kernel's layout (`squish_quant::int8::Int8Panels`), made by the
    /// first product (None where the CPU has no AVX512-VNNI).
    Int8 { codes: Mapped, scales: Mapped, n: usize, k: usize, group: usize, panels: OnceLock<Option<Int8Panels>> },
    /// A quantized matrix on a GPU, packed as stored; `host` (the mapped original) serves
    /// embedding lookups.
    /// None for matrices stacked on the GPU (`Linear::stack`), which are never embeddings.
    Gpu { host: Option<Box<Weight>>, device: QuantMatrix },
}

/// A borrowed view of a quantized weight, for squish-quant's kernels.
#[derive(Clone, Copy)]
enum View<'a> {
    Int4(int4::Int4Matrix<'a>, Option<&'a Int4Panels>),
    Int3(int3::Int3Matrix<'a>),
    Int2(int2::Int2Matrix<'a>),
    Int8(int8::Int8Matrix<'a>, Option<&'a Int8Panels>),
}

impl Weight {
    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Weight::Dense(w) => (w.dims()[0], w.dims()[1]),
            Weight::Int4 { n, k, .. } | Weight::Int3 { n, k, .. } | Weight::Int2 { n, k, .. } | Weight::Int8 { n, k, .. } => {
                (*n, *k)
            }
            Weight::Gpu { device, .. } => device.shape(),
        }
    }

    /// `with_panels`: with the panel layout, made now if not yet (a copy of the codes, so
    /// only for calls that read it: INT4's decode steps, INT8's products).
    fn view(&self, with_panels: bool) -> Result<View<'_>, ModelError> {
        Ok(match self {
            Weight::Int4 { codes, params, n, k, group, panels } => {
                let (scales, mins) = params.get()?;
                let m = int4::Int4Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?;
                let p = match with_panels {
                    true => panels.get_or_init(|| Int4Panels::new(&m)).as_ref(),
                    false => None,
                };
                View::Int4(m, p)
            }
            Weight::Int3 { codes, params, n, k, group } => {
                let (scales, mins) = params.get()?;
                View::Int3(int3::Int3Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?)
            }
            Weight::Int2 { codes, params, table, n, k, group } => {
                let (scales, mins) = params.get()?;
                View::Int2(int2::matrix(codes.bytes(), scales, mins, table, *n, *k, *group).map_err(quant_err)?)
            }
            Weight::Int8 { codes, scales, n, k, group, panels } => {
                let m = int8::Int8Matrix::new(codes.as_i8(), scales.as_f16()?, *n, *k, *group).map_err(quant_err)?;
                let p = match with_panels {
                    // The panels replace the mapped codes for products: their pages go back.
                    true => panels.get_or_init(|| Int8Panels::new(&m).inspect(|_| codes.release())).as_ref(),
                    false => None,
                };
                View::Int8(m, p)
            }
            Weight::Gpu { host: Some(host), .. } => return host.view(false),
            Weight::Gpu { host: None, .. } => return Err(quant_err("a matrix stacked on the GPU has no host copy")),
            Weight::Dense(_) => return Err(quant_err("a dense weight has no quantized view")),
        })
    }

    /// x (t, in) -> out (t, out) through squish-quant's kernels (quantized weights only).
    pub(crate) fn quantized_matmul(&self, x: &[f32], t: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let with_panels = matches!(self, Weight::Int8 { .. }) || int4::panels_read_for(t);
        match self.view(with_panels)? {
            View::Int4(m, panels) => int4::matmul_with_panels(&m, panels, x, t, out),
            View::Int3(m) => int3::matmul(&m, x, t, out),
            View::Int2(m) => int2::matmul(&m, x, t, out),
            View::Int8(m, panels) => int8::matmul_with_panels(&m, panels, x, t, out),
        }
        Ok(())
    }

    /// Rows r0 .. r0 + out.len() / in, dequantized into `out` (quantized weights only), in
    /// parallel on the current rayon pool.
    pub(crate) fn dequantize_rows(&self, r0: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let (n, k) = self.shape();
        if out.len() % k != 0 || r0 + out.len() / k > n {
            return Err(quant_err(format!("rows {r0}.. ({} values) outside a {n} x {k} matrix", out.len())));
        }
        let view = self.view(false)?;
        out.par_chunks_mut(k).enumerate().for_each(|(i, row)| match view {
            View::Int4(m, _) => int4::dequantize_row(&m, r0 + i, row),
            View::Int3(m) => int3::dequantize_row(&m, r0 + i, row),
            View::Int2(m) => int2::dequantize_row(&m, r0 + i, row),
            View::Int8(m, _) => int8::dequantize_row(&m, r0 + i, row),
        });
        Ok(())
    }

    /// Rows of the weight as an embedding lookup: ids (t) -> (t, in), f32 for quantized weights.
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor, ModelError> {
        let (n, k) = self.shape();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(ModelError::Tokenizer(format!("token id {bad} is outside the vocabulary of {n}")));
        }
        if let Weight::Dense(w) = self {
            return Ok(w.index_select(&Tensor::new(ids, w.device())?, 0)?);
        }
        let mut out = vec![0f32; ids.len() * k];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(k)) {
            self.dequantize_rows(id as usize, row)?;
        }
        Ok(Tensor::from_vec(out, (ids.len(), k), device)?.to_dtype(compute_dtype(device))?)
    }
}

pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// Set when the quantized weight is stored rotated on its input dimension (INT3, INT2): inputs
    /// are rotated the same way before the matmul, looked-up rows rotated back.
    rotation: Option<Rotation>,
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Self {
        Self { weight, bias, rotation: None }
    }

    /// A quantized weight stored rotated by `rotation` (of width `in`).
    pub fn rotated(weight: Weight, bias: Option<Tensor>, rotation: Rotation) -> Self {
        Self { weight, bias, rotation: Some(rotation) }
    }

    pub fn rotation(&self) -> Option<&Rotation> {
        self.rotation.as_ref()
    }

    /// The weight and the bias, apart (the training model keeps them so).
    pub fn into_parts(self) -> (Weight, Option<Tensor>) {
        (self.weight, self.bias)
    }

    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        self.weight.shape()
    }

    /// The layer for a GPU: INT8, INT4, INT3 and INT2 matrices uploaded packed as stored,
    /// with the rotation of a rotated one (its products rotate their inputs on the GPU; the
    /// Linear keeps it too, for embedding lookups from the host copy).
    pub fn to_device(self, device: &Device) -> Result<Linear, ModelError> {
        let Linear { weight, bias, rotation } = self;
        if device.is_cpu() || matches!(weight, Weight::Dense(_) | Weight::Gpu { .. }) {
            return Ok(Linear { weight, bias, rotation });
        }
        let packed = match weight.view(false)? {
            View::Int4(m, _) => QuantMatrix::int4(m.codes(), m.scales(), m.mins(), m.n(), m.k(), m.g(), device)?,
            View::Int8(m, _) => QuantMatrix::int8(m.codes(), m.scales(), m.n(), m.k(), m.g(), device)?,
            View::Int3(m) => QuantMatrix::int3(m.codes(), m.scales(), m.mins(), m.n(), m.k(), m.g(), device)?,
            View::Int2(m) => {
                let table: &[u8; 32] = m.table().try_into().map_err(|_| quant_err("an INT2 codebook that is not 32 bytes"))?;
                QuantMatrix::int2(m.codes(), m.scales(), m.mins(), table, m.n(), m.k(), m.g(), device)?
            }
        };
        let packed = match &rotation {
            Some(r) => packed.rotated(r.signs(), r.block())?,
            None => packed,
        };
        Ok(Linear { weight: Weight::Gpu { host: Some(Box::new(weight)), device: packed }, bias, rotation })
    }

    /// Layers reading the same input (q, k and v; gate and up) stacked on their outputs into
    /// one, so a GPU runs one product and one bias add for all: dense weights of one dtype, or
    /// packed GPU matrices of one kind, group size and rotation. A layer without a bias gets
    /// zeros where the others have one. None where the layers do not stack (CPU-packed,
    /// different widths or rotations).
    pub fn stack(parts: &[Linear]) -> Result<Option<Linear>, ModelError> {
        let Some(first) = parts.first() else { return Ok(None) };
        if parts.iter().any(|l| l.rotation != first.rotation || l.shape().1 != first.shape().1) {
            return Ok(None);
        }
        let dense: Option<Vec<&Tensor>> = parts.iter().map(|l| if let Weight::Dense(w) = &l.weight { Some(w) } else { None }).collect();
        let packed: Option<Vec<&QuantMatrix>> =
            parts.iter().map(|l| if let Weight::Gpu { device, .. } = &l.weight { Some(device) } else { None }).collect();
        let weight = match (dense, packed) {
            (Some(ws), _) if first.rotation.is_none() && ws.iter().all(|w| w.dtype() == ws[0].dtype()) => Weight::Dense(Tensor::cat(&ws, 0)?),
            (_, Some(ms)) => match QuantMatrix::stack(&ms)? {
                Some(m) => Weight::Gpu { host: None, device: m },
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let bias = match parts.iter().find_map(|l| l.bias.as_ref()) {
            Some(b) => {
                let each = parts.iter().map(|l| match &l.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(l.shape().0, b.dtype(), b.device()),
                });
                Some(Tensor::cat(&each.collect::<candle_core::Result<Vec<_>>>()?, 0)?)
            }
            None => None,
        };
        Ok(Some(Linear { weight, bias, rotation: first.rotation.clone() }))
    }

    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// x Wᵀ without the bias, on a GPU (None elsewhere): for callers that add the bias in a
    /// kernel of their own.
    pub(crate) fn product_on_gpu(&self, x: &Tensor) -> Result<Option<Tensor>, ModelError> {
        Ok(match &self.weight {
            Weight::Gpu { device, .. } => Some(device.matmul(x)?),
            Weight::Dense(w) if !x.device().is_cpu() => Some(candle_nn::Linear::new(w.clone(), None).forward(x)?),
            _ => None,
        })
    }

    /// x: (batch, seq, in) -> (batch, seq, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = match &self.weight {
            Weight::Dense(w) => match dense_decode(&[self], x)? {
                Some(mut y) => return Ok(y.remove(0)),
                None => candle_nn::Linear::new(w.clone(), None).forward(x)?,
            },
            // Rotates x first where the matrix is stored rotated.
            Weight::Gpu { device, .. } => device.matmul(x)?,
            _ => {
                let (n, k) = self.shape();
                let t = x.elem_count() / k;
                let mut out = vec![0f32; t * n];
                match &self.rotation {
                    Some(r) => {
                        let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
                        r.apply(&mut xs);
                        self.weight.quantized_matmul(&xs, t, &mut out)?;
                    }
                    None => squish_backend::with_f32(x, |xs| self.weight.quantized_matmul(xs, t, &mut out))??,
                }
                return self.output_from(out, x);
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `forward` of several layers reading the same input (q, k and v; gate and up): INT4
    /// layers with the CPU's panel layout run as one matmul call (one activation
    /// quantization, one parallel region); anything else one `forward` each. The results
    /// are the same either way.
    pub fn forward_many(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let k = x.dim(x.rank() - 1)?;
        let t = x.elem_count() / k;
        let plain = layers.iter().all(|l| l.rotation.is_none());
        if layers.len() > 1 && plain {
            if let Some(outs) = dense_decode(layers, x)? {
                return Ok(outs);
            }
        }
        let fused = match layers.len() > 1 && plain && int4::panels_read_for(t) {
            true => layers
                .iter()
                .map(|l| match &l.weight {
                    Weight::Int4 { .. } => match l.weight.view(true) {
                        Ok(View::Int4(m, Some(p))) => Some(Ok((m, p))),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    },
                    _ => None,
                })
                .collect::<Option<Result<Vec<_>, _>>>()
                .transpose()?,
            false => None,
        };
        let Some(matrices) = fused else {
            return layers.iter().map(|l| l.forward(x)).collect();
        };
        let mut outs: Vec<Vec<f32>> = matrices.iter().map(|(m, _)| vec![0f32; t * m.n()]).collect();
        let mut parts: Vec<_> = matrices.iter().zip(&mut outs).map(|((m, p), out)| (m, Some(*p), out.as_mut_slice())).collect();
        squish_backend::with_f32(x, |xs| int4::matmul_many_with_panels(&mut parts, xs, t))?;
        outs.into_iter().zip(layers).map(|(out, l)| l.output_from(out, x)).collect()
    }

    /// This layer's output from its product's values for input x: shaped as x with its last
    /// dimension the layer's outputs, the bias added.
    fn output_from(&self, out: Vec<f32>, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has dims") = self.shape().0;
        let y = Tensor::from_vec(out, dims, x.device())?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Rows of the weight as an embedding lookup: ids (t) -> (t, in)
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor, ModelError> {
        let rows = self.weight.rows(ids, device)?;
        let Some(r) = &self.rotation else { return Ok(rows) };
        // In f32 on the host, then back in the device's compute dtype (bf16 on a GPU).
        let mut v = rows.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        r.apply_inverse(&mut v);
        Ok(Tensor::from_vec(v, rows.shape(), device)?.to_dtype(rows.dtype())?)
    }
}

/// x Wᵀ + b of layers reading the same x, for a few tokens on the CPU in f32, in one parallel
/// region (`squish_quant::dense`: each W streamed once at memory speed, where candle's matmul
/// ran a decode step at half of it). None unless every layer is a dense f32 matrix.
fn dense_decode(layers: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>, ModelError> {
    let k = x.dim(x.rank() - 1)?;
    let t = x.elem_count() / k.max(1);
    let ws: Option<Vec<&Tensor>> = layers
        .iter()
        .map(|l| match &l.weight {
            Weight::Dense(w) if w.dtype() == candle_core::DType::F32 && w.is_contiguous() && w.dims2().ok().map(|d| d.1) == Some(k) => Some(w),
            _ => None,
        })
        .collect();
    let fits = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && (1..=squish_quant::dense::MAX_TOKENS).contains(&t);
    let Some(ws) = ws.filter(|_| fits) else { return Ok(None) };
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; t * w.dim(0).unwrap_or(0)]).collect();
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(st, layout)| match (&**st, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(c), Some((a, b))) => Ok(&c.as_slice::<f32>()?[a..b]),
            _ => Err(quant_err("a dense weight that is not contiguous f32 on the CPU")),
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let mut parts: Vec<(&[f32], usize, &mut [f32])> =
        slices.iter().zip(&mut outs).map(|(w, out)| (*w, w.len() / k, out.as_mut_slice())).collect();
    squish_backend::with_f32(x, |xs| squish_quant::dense::matmul_many(&mut parts, k, xs, t))?;
    drop(parts);
    outs.into_iter().zip(layers).map(|(out, l)| l.output_from(out, x)).collect::<Result<Vec<_>, _>>().map(Some)
}

fn quant_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported { path: "<quantized weight>".into(), msg: e.to_string() }
}
