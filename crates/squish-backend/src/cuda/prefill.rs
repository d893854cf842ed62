//! Prompt attention on a CUDA GPU (src/cuda/prefill.cu): RoPE and the cache write for a
//! prompt's (or a prompt chunk's) new tokens, then causal attention over the cache on the
//! tensor cores with an online softmax, so memory stays linear in the prompt's length.

use super::CacheSlot;
use crate::Result;
use candle_core::{DType, Tensor};

/// q (1, t, heads*d), k and v (1, t, kv_heads*d): one sequence's t new tokens before RoPE and
/// before `bias` (q's, k's and v's, as for `decode_attention`), at the t positions from
/// `slot.pos` on; cos/sin (max_pos, d/2) the RoPE tables. Rotates and stores the keys and
/// values there, then attends causally over every position up to each token's own.
/// Returns (1, t, heads*d). None (nothing written) where the kernel does not apply: not a CUDA
/// build or device, not bf16, a head size over 128 or not a multiple of 16, a bias of another
/// length, or a cache too short for the new tokens.
pub fn prefill_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    slot: &CacheSlot<'_>,
    (cos, sin): (&Tensor, &Tensor),
    (heads, kv_heads, d): (usize, usize, usize),
) -> Result<Option<Tensor>> {
    let t = q.dim(1)?;
    let fits = q.device().is_cuda()
        && q.dtype() == DType::BF16
        && d % 16 == 0
        && d <= 128
        && kv_heads > 0
        && heads % kv_heads == 0
        && t > 0
        && super::bias_fits(bias, (heads + 2 * kv_heads) * d)
        && [slot.keys, slot.values].iter().all(|c| c.dtype() == DType::BF16 && c.is_contiguous() && c.dims() == [1, kv_heads, c.dim(2).unwrap_or(0), d])
        && slot.pos + t <= slot.keys.dim(2)?
        && slot.pos + t <= cos.dim(0)?;
    if !fits {
        return Ok(None);
    }
    imp::launch(q, k, v, bias, slot, (cos, sin), (heads, kv_heads, d))
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::CacheSlot;
    use candle_core::Tensor;

    pub(super) fn launch(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: Option<&Tensor>,
        _: &CacheSlot<'_>,
        _: (&Tensor, &Tensor),
        _: (usize, usize, usize),
    ) -> crate::Result<Option<Tensor>> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::super::{bf16_view, device_address, rows_of};
    use super::CacheSlot;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{DType, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/prefill.ptx"));
    const MODULE: &str = "squish_prefill";
    /// prefill.cu's BQ (queries per block) and PF_WARPS.
    const BQ: usize = 64;
    const WARPS: u32 = 4;

    pub(super) fn launch(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        slot: &CacheSlot<'_>,
        (cos, sin): (&Tensor, &Tensor),
        (heads, kv_heads, d): (usize, usize, usize),
    ) -> crate::Result<Option<Tensor>> {
        let t = q.dim(1)?;
        let (Some((q, q_stride)), Some((k, k_stride)), Some((v, v_stride))) =
            (rows_of(q, t, heads * d)?, rows_of(k, t, kv_heads * d)?, rows_of(v, t, kv_heads * d)?)
        else {
            return Ok(None);
        };
        let cap = slot.keys.dim(2)?;
        // SAFETY: the attention launch writes every element: one block per 64 queries and head,
        // each of its lanes half a row of d values.
        let out = unsafe { Tensor::empty((1, t, heads * d), DType::BF16, q.device()) }?;
        {
            let guards: Vec<_> = [&q, &k, &v, cos, sin, &out, slot.keys, slot.values].iter().map(|t| t.storage_and_layout()).collect();
            let view = |i: usize| bf16_view(&guards[i].0, guards[i].1);
            let dev = match &*guards[0].0 {
                Storage::Cuda(c) => c.device.clone(),
                _ => return Ok(None),
            };
            let (qs, ks, vs, cs, ss, os, kc, vc) = (view(0)?, view(1)?, view(2)?, view(3)?, view(4)?, view(5)?, view(6)?, view(7)?);
            let (heads_i, kv_i, d_i, cap_i, start_i, t_i) = (heads as i32, kv_heads as i32, d as i32, cap as i32, slot.pos as i32, t as i32);
            // q's, k's and v's bias addresses (0: none).
            let stream = dev.cuda_stream();
            let bias_guard = bias.map(|b| b.storage_and_layout());
            let bias_at = bias_guard.as_ref().map(|(st, l)| device_address(st, l, &stream)).transpose()?;
            let at = |values: usize| bias_at.as_ref().map_or(0, |(p, _)| p + 2 * values as u64);
            let (qb, kb, vb) = (at(0), at(heads * d), at((heads + kv_heads) * d));

            let store = dev.get_or_load_custom_func("prefill_store_kv", MODULE, PTX)?;
            let cfg = LaunchConfig { grid_dim: (t as u32, kv_heads as u32, 1), block_dim: ((d / 2) as u32, 1, 1), shared_mem_bytes: 0 };
            let mut b = store.builder();
            b.arg(&ks).arg(&vs).arg(&kb).arg(&vb).arg(&cs).arg(&ss).arg(&kc).arg(&vc).arg(&k_stride).arg(&v_stride).arg(&d_i).arg(&cap_i).arg(&start_i);
            // SAFETY: k and v hold t rows at their strides; the caches hold kv_heads x cap x d
            // values and pos + t <= cap (checked by the caller); the tables have pos + t rows.
            unsafe { b.launch(cfg) }.w()?;

            let attend = dev.get_or_load_custom_func("prefill_attention_bf16", MODULE, PTX)?;
            let scale = 1.0f32 / (d as f32).sqrt();
            let cfg = LaunchConfig { grid_dim: (t.div_ceil(BQ) as u32, heads as u32, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
            let mut b = attend.builder();
            b.arg(&qs).arg(&qb).arg(&cs).arg(&ss).arg(&kc).arg(&vc).arg(&os).arg(&q_stride);
            b.arg(&heads_i).arg(&kv_i).arg(&d_i).arg(&cap_i).arg(&start_i).arg(&t_i).arg(&scale);
            // SAFETY: as above; the store ran before on the same stream, and out holds t x
            // heads x d values.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(Some(out))
    }
}
