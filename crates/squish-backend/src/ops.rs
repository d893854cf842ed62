//! The decoder's ops that are more than one candle call: RMS norm, rotary embeddings, and
//! causal grouped-query attention.

use crate::Result;
use candle_core::{DType, Device, Tensor};

/// x: (..., dim), weight: (dim)
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)?);
    }
    // candle's CPU op sums each row's squares one at a time (a 576-long dependency chain)
    // and divides every element: two norms per layer took 3% of a batched decode step.
    let out = with_f32(weight, |w| {
        with_f32(x, |xs| {
            let mut out = vec![0f32; xs.len()];
            let mut rows: Vec<(&[f32], &mut [f32])> = xs.chunks_exact(w.len()).zip(out.chunks_mut(w.len())).collect();
            // Rows in parallel only for prompts: a decode step's few rows cost less than a split.
            if rows.len() > 32 {
                squish_quant::team::for_each_mut(&mut rows, |(x, y)| rms_norm_row(x, w, eps, y));
            } else {
                rows.iter_mut().for_each(|(x, y)| rms_norm_row(x, w, eps, y));
            }
            out
        })
    })??;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

/// x + y and rms_norm(x + y, weight): the residual add and the norm after it (one launch on
/// a GPU, `cuda::fused`). -> (sum, normed)
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    if let Some(both) = crate::cuda::fused::add_rms_norm(x, y, weight, eps)? {
        return Ok(both);
    }
    let sum = (x + y)?;
    let normed = rms_norm(&sum, weight, eps)?;
    Ok((sum, normed))
}

/// y = x / rms(x) · w for one row, the squares summed in sixteen lanes so the loop vectorizes.
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
        *y = x * inv * w;
    }
}

/// 1 / sqrt(mean(x²) + eps)
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    let sum = crate::attention_cpu::tree_sum(acc) + rest.iter().map(|v| v * v).sum::<f32>();
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

/// Calls `f` with `x`'s values in place where it is a contiguous f32 CPU tensor, else with a
/// copy: the decode step's many small ops read their inputs without copying them.
pub fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(all) = cpu.as_slice::<f32>() {
                return Ok(f(&all[a..b]));
            }
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?))
}

/// Rotary position embeddings in the Hugging Face (rotate-half) layout, precomputed for every
/// position up to the context size.
pub struct Rope {
    cos: Tensor, // (max_pos, head_dim / 2)
    sin: Tensor,
    /// The same tables as plain arrays on CPU devices, for rotating rows in place.
    host: Option<(Vec<f32>, Vec<f32>)>,
    half: usize,
}

impl Rope {
    /// `inv_freq` has head_dim / 2 entries (already scaled for rope-scaling schemes).
    pub fn new(inv_freq: &[f32], max_pos: usize, device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let inv = Tensor::from_slice(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, max_pos as u32, device)?.to_dtype(DType::F32)?.reshape((max_pos, 1))?;
        let freqs = pos.broadcast_mul(&inv)?; // (max_pos, half)
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let host = match device.is_cpu() {
            true => Some((cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?)),
            false => None,
        };
        let dtype = crate::compute_dtype(device);
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        Ok(Self { cos, sin, host, half })
    }

    /// The cos and sin tables, (max_pos, head_dim / 2) each, in the device's compute dtype.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// x: (batch, heads, seq, head_dim), positions start..start+seq
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }

    /// Rotates one token's heads in place (`row`: heads x head_dim, at position `pos`), with
    /// the arithmetic of `apply`. False, leaving `row` alone, where the tables are not on
    /// the host (GPU devices).
    pub fn rotate_row(&self, row: &mut [f32], pos: usize) -> bool {
        let Some((cos, sin)) = &self.host else { return false };
        let half = self.half;
        let (cos, sin) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        for head in row.chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = a * sin[i] + b * cos[i];
            }
        }
        true
    }
}

/// RMS-normalises each `w.len()`-long piece of `row` in place and scales it by `w` (the
/// per-head q/k norms of Qwen3), as `rms_norm` does.
pub fn rms_norm_pieces(row: &mut [f32], w: &[f32], eps: f32) {
    for piece in row.chunks_exact_mut(w.len()) {
        let inv = inv_rms(piece, eps);
        piece.iter_mut().zip(w).for_each(|(x, w)| *x = *x * inv * w);
    }
}

/// Causal attention for queries at positions `start..start+q_len` over keys `0..kv_len`
/// (kv_len = start + q_len), with grouped-query heads: query heads are grouped by the kv head
/// they share, so keys and values are never copied per query head.
///
/// q: (1, heads, q_len, d), k and v: (1, kv_heads, kv_len, d) -> (1, q_len, heads * d)
/// `causal_attention` for several sequences; decode batches (every q_len <= 4) run as one
/// parallel region on the CPU.
/// items: (q, k, v, start) as for `causal_attention` -> one (1, q_len, heads * d) each
pub fn causal_attention_many(items: &[(&Tensor, &Tensor, &Tensor, usize)]) -> Result<Vec<Tensor>> {
    let mut decode = true;
    for (q, ..) in items {
        decode &= q.dim(2)? <= 4;
    }
    if decode && items.len() > 1 {
        if let Some(out) = crate::attention_cpu::causal_attention_cpu_many(items)? {
            return Ok(out);
        }
    }
    items.iter().map(|&(q, k, v, start)| causal_attention(q, k, v, start)).collect()
}

pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> Result<Tensor> {
    // Decode: a few queries over the cache in place. Prefill: batched matmuls do better.
    if q.dim(2)? <= 4 {
        if let Some(out) = crate::attention_cpu::causal_attention_cpu(q, k, v, start)? {
            return Ok(out);
        }
    }
    let (b, heads, q_len, d) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    let group = heads / kv_heads;
    // (b, kv_heads, group * q_len, d): rows are (query head in group, position)
    let q = q.reshape((b, kv_heads, group * q_len, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let raw = q.matmul(&k.t()?)?; // (b, kv_heads, group * q_len, kv_len)
    let probs = if raw.device().is_cpu() {
        let mut s = raw.flatten_all()?.to_vec1::<f32>()?;
        crate::attention_cpu::causal_softmax_in_place(&mut s, q_len, kv_len, start, scale as f32);
        Tensor::from_vec(s, raw.shape(), raw.device())?
    } else {
        // Scores and softmax in f32 whatever the compute dtype (bf16 keeps 8 bits of mantissa).
        let scores = (raw.to_dtype(DType::F32)? * scale)?;
        let scores = if q_len > 1 {
            let mask = causal_mask(q_len, kv_len, start, q.device())?; // (q_len, kv_len)
            scores.reshape((b, kv_heads, group, q_len, kv_len))?.broadcast_add(&mask)?.reshape((
                b,
                kv_heads,
                group * q_len,
                kv_len,
            ))?
        } else {
            scores
        };
        candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?
    };
    let out = probs.matmul(v)?; // (b, kv_heads, group * q_len, d)
    let out = out.reshape((b, heads, q_len, d))?.transpose(1, 2)?; // (b, q_len, heads, d)
    Ok(out.reshape((b, q_len, heads * d))?)
}

/// 0 where query i (at absolute position start + i) may see key j, -inf elsewhere.
fn causal_mask(q_len: usize, kv_len: usize, start: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| (0..kv_len).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(mask, (q_len, kv_len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU norm against an f64 reference, and each row's bits the same whether it is
    /// normalised alone or among a prompt's rows (which run in parallel).
    #[test]
    fn rms_norm_matches_f64_and_is_per_row() {
        let (rows, dim) = (40, 576);
        let x: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1 + i % 5) as f32).collect();
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
        let eps = 1e-5;
        let wt = Tensor::from_vec(w.clone(), dim, &Device::Cpu).unwrap();
        let all = rms_norm(&Tensor::from_vec(x.clone(), (1, rows, dim), &Device::Cpu).unwrap(), &wt, eps).unwrap();
        let all = all.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..rows {
            let row = &x[r * dim..(r + 1) * dim];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            for i in 0..dim {
                let want = row[i] as f64 / (ms + eps as f64).sqrt() * w[i] as f64;
                assert!((all[r * dim + i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "row {r} col {i}");
            }
            let alone = rms_norm(&Tensor::from_vec(row.to_vec(), (1, 1, dim), &Device::Cpu).unwrap(), &wt, eps).unwrap();
            assert_eq!(alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(), all[r * dim..(r + 1) * dim]);
        }
    }
}
