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
    Ok(causal_attention_cpu_many(&[(q, k, v, start)])?.and_then(|mut o| o.pop()))
}

/// `causal_attention_cpu` for several sequences (a decode batch) in one parallel region:
/// one task per (sequence, query, kv head), so the pool forks once per layer, not once per
/// sequence. None unless every input qualifies.
pub fn causal_attention_cpu_many(items: &[(&Tensor, &Tensor, &Tensor, usize)]) -> Result<Option<Vec<Tensor>>> {
    let guards: Vec<_> =
        items.iter().map(|(q, k, v, _)| (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout())).collect();
    let mut views = Vec::with_capacity(items.len());
    for ((q, k, _, start), ((qst, ql), (kst, kl), (vst, vl))) in items.iter().zip(&guards) {
        let (_, heads, q_len, d) = q.dims4()?;
        let (_, kv_heads, kv_len, _) = k.dims4()?;
        let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&**qst, &**kst, &**vst) else {
            return Ok(None);
        };
        let (Ok(qs), Ok(ks), Ok(vs)) = (qs.as_slice::<f32>(), ks.as_slice::<f32>(), vs.as_slice::<f32>()) else {
            return Ok(None);
        };
        if !ql.is_contiguous() || kl.stride()[3] != 1 || vl.stride()[3] != 1 || kl.stride() != vl.stride() {
            return Ok(None);
        }
        views.push(View {
            qs: &qs[ql.start_offset()..],
            ks: &ks[kl.start_offset()..],
            vs: &vs[vl.start_offset()..],
            head_stride: kl.stride()[1],
            pos_stride: kl.stride()[2],
            heads,
            kv_heads,
            q_len,
            kv_len,
            d,
            start: *start,
        });
    }
    let mut outs: Vec<Vec<f32>> = views.iter().map(|v| vec![0f32; v.q_len * v.heads * v.d]).collect(); // (q_len, heads, d)
    // One task per (sequence, query, kv head): the query heads sharing that kv head are
    // contiguous in the output and read the keys and values once between them.
    let mut tasks = Vec::new();
    for (n, (out, v)) in outs.iter_mut().zip(&views).enumerate() {
        let group = v.heads / v.kv_heads;
        tasks.extend(out.chunks_mut(group * v.d).enumerate().map(|(idx, o)| (n, idx, o)));
    }
    tasks.into_par_iter().for_each_init(Vec::new, |scores, (n, idx, o)| {
        let v = &views[n];
        let group = v.heads / v.kv_heads;
        let (i, kvh) = (idx / v.kv_heads, idx % v.kv_heads);
        let base = kvh * v.head_stride;
        let seen = (v.start + i + 1).min(v.kv_len);
        let q = (0..group)
            .map(|g| {
                let h = kvh * group + g;
                &v.qs[(h * v.q_len + i) * v.d..(h * v.q_len + i + 1) * v.d]
            })
            .collect();
        let job = Group { q, k: &v.ks[base..], v: &v.vs[base..], stride: v.pos_stride, seen, scale: 1.0 / (v.d as f32).sqrt() };
        attend(&job, scores, o);
    });
    let tensors = outs
        .into_iter()
        .zip(items)
        .zip(&views)
        .map(|((out, (q, ..)), v)| Tensor::from_vec(out, (1, v.q_len, v.heads * v.d), q.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(tensors))
}

/// One sequence's inputs as slices of the tensors' storage.
struct View<'a> {
    qs: &'a [f32],
    ks: &'a [f32],
    vs: &'a [f32],
    head_stride: usize,
    pos_stride: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    start: usize,
}

/// One task's inputs: the query heads sharing a kv head (each d long), and that head's keys
/// and values (`stride` apart) of which the first `seen` count.
struct Group<'a> {
    q: Vec<&'a [f32]>,
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    seen: usize,
    scale: f32,
}

/// o_g = softmax(q_g·K / sqrt(d)) V for each query head g of `job`, into `o` (group x d).
/// Each head's arithmetic is the same as alone (same dot, same order over keys); only the
/// key and value reads are shared.
fn attend(job: &Group, scores: &mut Vec<f32>, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { attend_avx512(job, scores, o) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { attend_avx2(job, scores, o) };
        }
    }
    attend_body(job, scores, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(job: &Group, scores: &mut Vec<f32>, o: &mut [f32]) {
    attend_body(job, scores, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(job: &Group, scores: &mut Vec<f32>, o: &mut [f32]) {
    attend_body(job, scores, o)
}

#[inline(always)]
fn attend_body(job: &Group, scores: &mut Vec<f32>, o: &mut [f32]) {
    let Group { q: qs, k, v, stride, seen, scale } = job;
    let (stride, seen, scale, group) = (*stride, *seen, *scale, qs.len());
    let d = o.len() / group;
    scores.clear();
    scores.resize(group * seen, 0.0); // [g][j]
    let mut max = vec![f32::NEG_INFINITY; group];
    for j in 0..seen {
        let kj = &k[j * stride..j * stride + d];
        for (g, qg) in qs.iter().enumerate() {
            let s = dot(qg, kj) * scale;
            max[g] = max[g].max(s);
            scores[g * seen + j] = s;
        }
    }
    let mut sum = vec![0.0f32; group];
    for g in 0..group {
        for s in scores[g * seen..(g + 1) * seen].iter_mut() {
            *s = exp(*s - max[g]);
            sum[g] += *s;
        }
    }
    o.fill(0.0);
    for j in 0..seen {
        let vj = &v[j * stride..j * stride + d];
        for (g, og) in o.chunks_exact_mut(d).enumerate() {
            let p = scores[g * seen + j];
            for (oe, &ve) in og.iter_mut().zip(vj) {
                *oe += p * ve;
            }
        }
    }
    for (g, og) in o.chunks_exact_mut(d).enumerate() {
        let inv = 1.0 / sum[g];
        og.iter_mut().for_each(|x| *x *= inv);
    }
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
