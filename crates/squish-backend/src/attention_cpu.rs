//! Causal grouped-query attention on the CPU for decode, straight from the KV cache's
//! memory: scores only for the keys each query may see (no mask), softmax with the
//! vectorized exp, one task per (query, head) on the compute pool. It replaces candle ops
//! that copied the cache for every token (decode of SmolLM2 INT4: ~194 -> ~218 tokens/s);
//! for prefill, candle's batched matmuls are faster (measured), so it is not used there.

use crate::activation::exp;
use crate::Result;
use candle_core::{Storage, Tensor};
use rayon::prelude::*;

/// Same contract as `ops::causal_attention`; None when an input is not an f32 CPU tensor
/// laid out as this expects (the caller then takes the generic path).
/// q: (1, heads, q_len, d) contiguous; k, v: (1, kv_heads, kv_len, d) with unit stride in d.
pub fn causal_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> Result<Option<Tensor>> {
    let (_, heads, q_len, d) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    let (q_store, q_layout) = q.storage_and_layout();
    let (k_store, k_layout) = k.storage_and_layout();
    let (v_store, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*q_store, &*k_store, &*v_store) else {
        return Ok(None);
    };
    let (Ok(qs), Ok(ks), Ok(vs)) = (qs.as_slice::<f32>(), ks.as_slice::<f32>(), vs.as_slice::<f32>()) else {
        return Ok(None);
    };
    if !q_layout.is_contiguous() || k_layout.stride()[3] != 1 || v_layout.stride()[3] != 1 || k_layout.stride() != v_layout.stride() {
        return Ok(None);
    }
    let qs = &qs[q_layout.start_offset()..];
    let (ks, vs) = (&ks[k_layout.start_offset()..], &vs[v_layout.start_offset()..]);
    let (head_stride, pos_stride) = (k_layout.stride()[1], k_layout.stride()[2]);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; q_len * heads * d]; // (q_len, heads, d)
    out.par_chunks_mut(d).enumerate().for_each_init(
        || Vec::with_capacity(kv_len),
        |scores, (idx, o)| {
            let (i, h) = (idx / heads, idx % heads);
            let qv = &qs[(h * q_len + i) * d..(h * q_len + i + 1) * d];
            let base = (h / group) * head_stride;
            let seen = (start + i + 1).min(kv_len);
            attend(qv, &ks[base..], &vs[base..], pos_stride, seen, scale, scores, o);
        },
    );
    Ok(Some(Tensor::from_vec(out, (1, q_len, heads * d), q.device())?))
}

/// One query over `seen` keys: o = softmax(q·K / sqrt(d)) V.
#[allow(clippy::too_many_arguments)]
fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, seen: usize, scale: f32, scores: &mut Vec<f32>, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { attend_avx512(q, k, v, stride, seen, scale, scores, o) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { attend_avx2(q, k, v, stride, seen, scale, scores, o) };
        }
    }
    attend_body(q, k, v, stride, seen, scale, scores, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx512(q: &[f32], k: &[f32], v: &[f32], s: usize, n: usize, sc: f32, buf: &mut Vec<f32>, o: &mut [f32]) {
    attend_body(q, k, v, s, n, sc, buf, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(q: &[f32], k: &[f32], v: &[f32], s: usize, n: usize, sc: f32, buf: &mut Vec<f32>, o: &mut [f32]) {
    attend_body(q, k, v, s, n, sc, buf, o)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_body(q: &[f32], k: &[f32], v: &[f32], stride: usize, seen: usize, scale: f32, scores: &mut Vec<f32>, o: &mut [f32]) {
    let d = q.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..seen {
        let kj = &k[j * stride..j * stride + d];
        let s = dot(q, kj) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = exp(*s - max);
        sum += *s;
    }
    o.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let vj = &v[j * stride..j * stride + d];
        for (oe, &ve) in o.iter_mut().zip(vj) {
            *oe += p * ve;
        }
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|x| *x *= inv);
}

/// A reduction in 16 independent lanes (then across them), so it vectorizes: a single
/// running float accumulator cannot be reordered by the compiler.
#[inline(always)]
fn lanes(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for c in chunks {
        for l in 0..16 {
            acc[l] = f(acc[l], c[l]);
        }
    }
    acc.iter().fold(rest, |a, &x| f(a, x))
}

/// Dot product in 16 independent lanes, so it vectorizes without reassociation flags.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Prefill's softmax, in place on raw scores q·kᵀ: rows are (query head, position) with
/// `q_len` positions per head, position i seeing keys 0..=start+i. Scales, masks (masked
/// entries become 0) and normalises each row; the vectorized exp skips the masked part.
pub fn causal_softmax_in_place(scores: &mut [f32], q_len: usize, kv_len: usize, start: usize, scale: f32) {
    scores.par_chunks_mut(kv_len).enumerate().for_each(|(r, row)| {
        let seen = (start + r % q_len + 1).min(kv_len);
        softmax_row(row, seen, scale);
    });
}

fn softmax_row(row: &mut [f32], seen: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { softmax_row_avx512(row, seen, scale) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { softmax_row_avx2(row, seen, scale) };
        }
    }
    softmax_row_body(row, seen, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(row: &mut [f32], seen: usize, scale: f32) {
    softmax_row_body(row, seen, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32], seen: usize, scale: f32) {
    softmax_row_body(row, seen, scale)
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32], seen: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(seen);
    let max = lanes(live, f32::NEG_INFINITY, |m, x| if x > m { x } else { m }) * scale;
    for x in live.iter_mut() {
        *x = exp(*x * scale - max);
    }
    let sum = lanes(live, 0.0, |a, x| a + x);
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
}
