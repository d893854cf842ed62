//! A linear layer whose weight is dense (a candle tensor, any device) or quantized (packed
//! codes and scales used in place from the model file's mmap by squish-quant's kernels, CPU).
//! The same type serves token embeddings: a lookup dequantizes only the rows it needs.

use crate::ModelError;
use candle_core::{DType, Device, Module, Tensor};
use squish_format::Mapped;
use squish_quant::int4::Int4Panels;
use squish_quant::rotate::Rotation;
use squish_quant::{f16, int3, int4, int8};
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
    /// `panels`: the same matrix laid out for the CPU's panel kernel, made on first use
    /// (None where the CPU has none; see `squish_quant::int4::Int4Panels`).
    Int4 { codes: Mapped, params: GroupParams, n: usize, k: usize, group: usize, panels: OnceLock<Option<Int4Panels>> },
    Int3 { codes: Mapped, params: GroupParams, n: usize, k: usize, group: usize },
    Int8 { codes: Mapped, scales: Mapped, n: usize, k: usize, group: usize },
}

pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// A quantized weight stored as W Rᵀ: inputs are rotated by R before the matmul, and
    /// rows looked up are rotated back.
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

    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        match &self.weight {
            Weight::Dense(w) => (w.dims()[0], w.dims()[1]),
            Weight::Int4 { n, k, .. } | Weight::Int3 { n, k, .. } | Weight::Int8 { n, k, .. } => (*n, *k),
        }
    }

    /// x: (batch, seq, in) -> (batch, seq, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = match &self.weight {
            Weight::Dense(w) => candle_nn::Linear::new(w.clone(), None).forward(x)?,
            _ => {
                let (n, k) = self.shape();
                let dims = x.dims().to_vec();
                let t = x.elem_count() / k;
                let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
                if let Some(r) = &self.rotation {
                    r.apply(&mut xs);
                }
                let mut out = vec![0f32; t * n];
                self.quantized_matmul(&xs, t, &mut out)?;
                let mut out_dims = dims;
                *out_dims.last_mut().expect("x has dims") = n;
                Tensor::from_vec(out, out_dims, x.device())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn quantized_matmul(&self, x: &[f32], t: usize, out: &mut [f32]) -> Result<(), ModelError> {
        match &self.weight {
            Weight::Int4 { codes, params, n, k, group, panels } => {
                let (scales, mins) = params.get()?;
                let m = int4::Int4Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?;
                int4::matmul_with_panels(&m, panels.get_or_init(|| Int4Panels::new(&m)).as_ref(), x, t, out);
            }
            Weight::Int3 { codes, params, n, k, group } => {
                let (scales, mins) = params.get()?;
                let m = int3::Int3Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?;
                int3::matmul(&m, x, t, out);
            }
            Weight::Int8 { codes, scales, n, k, group } => {
                let m = int8::Int8Matrix::new(codes.as_i8(), scales.as_f16()?, *n, *k, *group).map_err(quant_err)?;
                int8::matmul(&m, x, t, out);
            }
            Weight::Dense(_) => unreachable!("dense weights use candle"),
        }
        Ok(())
    }

    /// Rows of the weight as an embedding lookup: ids (t) -> (t, in)
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor, ModelError> {
        let (n, k) = self.shape();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(ModelError::Tokenizer(format!("token id {bad} is outside the vocabulary of {n}")));
        }
        if let Weight::Dense(w) = &self.weight {
            return Ok(w.index_select(&Tensor::new(ids, w.device())?, 0)?);
        }
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            out.extend(self.dequantize_row(id as usize)?);
        }
        Ok(Tensor::from_vec(out, (ids.len(), k), device)?.to_dtype(DType::F32)?)
    }

    fn dequantize_row(&self, r: usize) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0f32; self.shape().1];
        match &self.weight {
            Weight::Int4 { codes, params, n, k, group, .. } => {
                let (scales, mins) = params.get()?;
                let m = int4::Int4Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?;
                int4::dequantize_row(&m, r, &mut out);
            }
            Weight::Int3 { codes, params, n, k, group } => {
                let (scales, mins) = params.get()?;
                let m = int3::Int3Matrix::new(codes.bytes(), scales, mins, *n, *k, *group).map_err(quant_err)?;
                int3::dequantize_row(&m, r, &mut out);
            }
            Weight::Int8 { codes, scales, n, k, group } => {
                let m = int8::Int8Matrix::new(codes.as_i8(), scales.as_f16()?, *n, *k, *group).map_err(quant_err)?;
                int8::dequantize_row(&m, r, &mut out);
            }
            Weight::Dense(_) => unreachable!("dense rows use index_select"),
        }
        if let Some(r) = &self.rotation {
            r.apply_inverse(&mut out);
        }
        Ok(out)
    }
}

fn quant_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported { path: "<quantized weight>".into(), msg: e.to_string() }
}
