//! Batched decode attention on a CUDA GPU (src/cuda/attention.cu): RoPE, the KV cache write and
//! attention for every sequence of a decode step in one launch per layer (per 32 sequences).

use crate::Result;
use candle_core::Tensor;

/// One sequence of a decode step: its layer's key and value caches, (1, kv_heads, capacity, d)
/// bf16 on the GPU, and the position of its one new token (= the tokens already cached).
pub struct CacheSlot<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub pos: usize,
}

/// q (1, S, heads*d), k and v (1, S, kv_heads*d): one new token per sequence, before RoPE and
/// before `bias` ((heads + 2 kv_heads) * d: q's, k's and v's, as a stacked q/k/v product has
/// it), which the kernel adds; cos/sin (max_pos, d/2) the RoPE tables. Rotates and stores each
/// sequence's key and value at its position, then attends. -> (1, S, heads*d). None (nothing
/// written) where the kernel does not apply: not a CUDA build or device, not bf16, a head size
/// over 128 or not a multiple of 32, more than 8 query heads per kv head, a bias of another
/// length.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    slots: &[CacheSlot<'_>],
    (cos, sin): (&Tensor, &Tensor),
    (heads, kv_heads, d): (usize, usize, usize),
) -> Result<Option<Tensor>> {
    let fits = q.device().is_cuda()
        && q.dtype() == candle_core::DType::BF16
        && d % 32 == 0
        && d <= 128
        && kv_heads > 0
        && heads % kv_heads == 0
        && heads / kv_heads <= 8
        && super::bias_fits(bias, (heads + 2 * kv_heads) * d)
        && slots.iter().all(|s| s.keys.dtype() == candle_core::DType::BF16 && s.keys.is_contiguous() && s.values.is_contiguous());
    if !fits || slots.is_empty() {
        return Ok(None);
    }
    imp::launch(q, k, v, bias, slots, (cos, sin), (heads, kv_heads, d))
}

/// Blocks a launch aims for: two per SM of an H100/H200 (132 SMs). Batches with fewer
/// (sequence, kv head) pairs split their positions to get there.
const TARGET_BLOCKS: usize = 264;
/// Fewest positions a split stretch takes: four per warp, so a block's set-up and its
/// partial's round trip stay small beside its attention.
const MIN_SPAN: usize = 32;

/// How many stretches of how many positions each block of a launch over `pairs` (sequence,
/// kv head) pairs takes, the longest sequence holding `keys` positions: (1, keys) where the
/// pairs fill the GPU or the sequences are short. Every stretch but the last is full.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn split(pairs: usize, keys: usize) -> (usize, usize) {
    let want = TARGET_BLOCKS.div_ceil(pairs.max(1)).min(keys / MIN_SPAN).max(1);
    let span = keys.div_ceil(want).max(1);
    (keys.div_ceil(span), span)
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
        _: &[CacheSlot<'_>],
        _: (&Tensor, &Tensor),
        _: (usize, usize, usize),
    ) -> crate::Result<Option<Tensor>> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::CacheSlot;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Storage, Tensor};
    use super::super::{bf16_view, device_address, rows_of};
    use super::split;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    /// attention.cu's MAX_SEQS and WARPS.
    const MAX_SEQS: usize = 32;
    const WARPS: u32 = 8;

    /// attention.cu's `Caches`, passed by value.
    #[repr(C)]
    struct Caches {
        k: [u64; MAX_SEQS],
        v: [u64; MAX_SEQS],
        pos: [i32; MAX_SEQS],
    }
    // SAFETY: plain data laid out as the kernel's struct.
    unsafe impl DeviceRepr for Caches {}

    pub(super) fn launch(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        slots: &[CacheSlot<'_>],
        (cos, sin): (&Tensor, &Tensor),
        (heads, kv_heads, d): (usize, usize, usize),
    ) -> crate::Result<Option<Tensor>> {
        let rows = slots.len();
        let (Some((q, q_stride)), Some((k, k_stride)), Some((v, v_stride))) =
            (rows_of(q, rows, heads * d)?, rows_of(k, rows, kv_heads * d)?, rows_of(v, rows, kv_heads * d)?)
        else {
            return Ok(None);
        };
        let cap = slots[0].keys.dim(2)?;
        if slots.iter().any(|s| s.keys.dim(2).ok() != Some(cap) || s.values.dim(2).ok() != Some(cap) || s.pos >= cap) {
            return Ok(None);
        }
        // SAFETY: every element is written below: by the attention launch (one block per
        // sequence and kv head writes its query heads' rows) or, where positions are split,
        // by the merge launch (one thread per sequence, head and element).
        let out = unsafe { Tensor::empty((1, rows, heads * d), candle_core::DType::BF16, q.device()) }?;
        {
            let guards: Vec<_> = [&q, &k, &v, cos, sin, &out].iter().map(|t| t.storage_and_layout()).collect();
            let caches: Vec<_> = slots.iter().map(|s| (s.keys.storage_and_layout(), s.values.storage_and_layout())).collect();
            let view = |i: usize| bf16_view(&guards[i].0, guards[i].1);
            let dev = match &*guards[0].0 {
                Storage::Cuda(c) => c.device.clone(),
                _ => return Ok(None),
            };
            let stream = dev.cuda_stream();
            let (qs, ks, vs, cs, ss, os) = (view(0)?, view(1)?, view(2)?, view(3)?, view(4)?, view(5)?);
            let bias_guard = bias.map(|b| b.storage_and_layout());
            let bias_at = bias_guard.as_ref().map(|(st, l)| device_address(st, l, &stream)).transpose()?;
            let bias_ptr = bias_at.as_ref().map_or(0, |(p, _)| *p); // 0: none
            let f = dev.get_or_load_custom_func("decode_attention_bf16", "squish_attention", PTX)?;
            let merge = dev.get_or_load_custom_func("decode_attention_merge", "squish_attention", PTX)?;
            let scale = 1.0f32 / (d as f32).sqrt();
            let (heads_i, kv_i, d_i, cap_i) = (heads as i32, kv_heads as i32, d as i32, cap as i32);
            for (chunk_no, chunk) in caches.chunks(MAX_SEQS).enumerate() {
                let mut table = Caches { k: [0; MAX_SEQS], v: [0; MAX_SEQS], pos: [0; MAX_SEQS] };
                let mut syncs = Vec::with_capacity(2 * chunk.len());
                for (i, ((kst, kl), (vst, vl))) in chunk.iter().enumerate() {
                    let (kp, ksync) = device_address(kst, kl, &stream)?;
                    let (vp, vsync) = device_address(vst, vl, &stream)?;
                    table.k[i] = kp;
                    table.v[i] = vp;
                    table.pos[i] = slots[chunk_no * MAX_SEQS + i].pos as i32;
                    syncs.push(ksync);
                    syncs.push(vsync);
                }
                let s0 = (chunk_no * MAX_SEQS) as i32;
                let keys = table.pos[..chunk.len()].iter().map(|&p| p as usize + 1).max().unwrap_or(1);
                let (splits, span) = split(chunk.len() * kv_heads, keys);
                // Each block's partial per query head: max, sum, d outputs (attention.cu's part_at).
                // With one stretch the kernel writes the output and never reads `part`.
                let part_len = if splits > 1 { chunk.len() * heads * splits * (d + 2) } else { 1 };
                let part = unsafe { dev.alloc::<f32>(part_len) }?;
                let (splits_i, span_i) = (splits as i32, span as i32);
                let cfg = LaunchConfig {
                    grid_dim: (chunk.len() as u32, kv_heads as u32, splits as u32),
                    block_dim: (32 * WARPS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = f.builder();
                b.arg(&qs).arg(&ks).arg(&vs).arg(&bias_ptr).arg(&cs).arg(&ss).arg(&os).arg(&part);
                b.arg(&table).arg(&s0).arg(&q_stride).arg(&k_stride).arg(&v_stride);
                b.arg(&heads_i).arg(&kv_i).arg(&d_i).arg(&cap_i).arg(&scale).arg(&splits_i).arg(&span_i);
                // SAFETY: the pointers in `table` address caches of `cap` positions of kv_heads x d
                // bf16 values, each pos < cap; `part` holds every block's partials; the other
                // buffers have the sizes checked above.
                unsafe { b.launch(cfg) }.w()?;
                if splits > 1 {
                    let cfg = LaunchConfig { grid_dim: (chunk.len() as u32, heads as u32, 1), block_dim: (d as u32, 1, 1), shared_mem_bytes: 0 };
                    let mut b = merge.builder();
                    b.arg(&part).arg(&os).arg(&s0).arg(&heads_i).arg(&kv_i).arg(&d_i).arg(&splits_i);
                    // SAFETY: `part` was filled by the launch before on the same stream; `out`
                    // has a row of heads x d for every sequence.
                    unsafe { b.launch(cfg) }.w()?;
                }
                drop(syncs);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    /// Stretches cover every position once, none empty for the longest sequence, and only
    /// batches that leave the GPU's blocks idle split.
    #[test]
    fn splits_cover_the_positions_and_fill_the_gpu() {
        assert_eq!(split(4, 600), (18, 34)); // one Qwen2.5-7B sequence: 4 kv heads
        assert_eq!(split(128, 600), (3, 200)); // 32 sequences x 4 kv heads
        assert_eq!(split(256, 600), (2, 300));
        assert_eq!(split(264, 600), (1, 600));
        assert_eq!(split(4, 20), (1, 20)); // short: one block's warps suffice
        assert_eq!(split(1, 1), (1, 1));
        for pairs in [1, 3, 4, 8, 100, 300] {
            for keys in [1, 31, 32, 33, 64, 100, 513, 4096] {
                let (splits, span) = split(pairs, keys);
                assert!(splits * span >= keys && (splits - 1) * span < keys, "{pairs} pairs, {keys} keys: {splits} x {span}");
                assert!(splits == 1 || span >= super::MIN_SPAN, "{pairs} pairs, {keys} keys: span {span}");
            }
        }
    }
}
