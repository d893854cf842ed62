//! Causal grouped-query attention on the CPU for decode, straight from the KV cache's
//! memory: scores only for the keys each query may see (no mask), softmax with the
//! vectorized exp, one task per (query, head) on the compute pool. It replaces candle ops
//! that copied the cache for every token (decode of SmolLM2 INT4: ~194 -> ~218 tokens/s);
//! for prefill, candle's batched matmuls are faster (measured), so it is not used there.
//! Keys and values may be stored as f32 or f16 (`Rows`); the arithmetic is f32 either way.

use crate::activation::exp;
use crate::Result;
use candle_core::{CpuStorage, Storage, Tensor};
use half::f16;
use rayon::prelude::*;
use squish_quant::team;

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
    let guards: Vec<_> = items.iter().map(|(q, k, v, _)| (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout())).collect();
    let mut views = Vec::with_capacity(items.len());
    for ((q, k, _, start), ((qst, ql), (kst, kl), (vst, vl))) in items.iter().zip(&guards) {
        let (_, heads, q_len, d) = q.dims4()?;
        let kv_len = k.dim(2)?;
        let Storage::Cpu(qs) = &**qst else {
            return Ok(None);
        };
        let (Ok(qs), true) = (qs.as_slice::<f32>(), ql.is_contiguous()) else {
            return Ok(None);
        };
        let kv = (&**kst, &**vst);
        let Some(view) = View::new(&qs[ql.start_offset()..], (q_len * d, d), kv, (kl, vl), heads, q_len, kv_len, d, *start) else {
            return Ok(None);
        };
        views.push(view);
    }
    let rows: usize = views.iter().map(|v| v.q_len).sum();
    let Some(((q, ..), v)) = items.first().zip(views.first()) else {
        return Ok(Some(Vec::new()));
    };
    let mut out = vec![0f32; rows * v.heads * v.d];
    attend_views(&views, &mut out);
    let all = Tensor::from_vec(out, (1, rows, v.heads * v.d), q.device())?;
    let mut row = 0;
    let tensors = views.iter().map(|v| {
        row += v.q_len;
        all.narrow(1, row - v.q_len, v.q_len)
    });
    Ok(Some(tensors.collect::<candle_core::Result<Vec<_>>>()?))
}

/// Decode attention for a batch straight from caches that already hold the new keys and
/// values: `q` is every sequence's new rows, token-major (t, heads * d), already rotated;
/// `caches` holds per sequence its layer's key and value tensors (1, kv_heads, capacity, d),
/// its first position and its row count in `q`. -> (t, heads * d), None unless every cache
/// is an f32 or f16 CPU tensor with unit stride in d.
pub fn attention_from_caches(q: &[f32], heads: usize, d: usize, caches: &[(&Tensor, &Tensor, usize, usize)]) -> Result<Option<Vec<f32>>> {
    let guards: Vec<_> = caches.iter().map(|(k, v, ..)| (k.storage_and_layout(), v.storage_and_layout())).collect();
    let mut views = Vec::with_capacity(caches.len());
    let mut row = 0;
    for ((_, _, start, t), ((kst, kl), (vst, vl))) in caches.iter().zip(&guards) {
        let qs = &q[row * heads * d..(row + t) * heads * d];
        let Some(view) = View::new(qs, (d, heads * d), (&**kst, &**vst), (kl, vl), heads, *t, start + t, d, *start) else {
            return Ok(None);
        };
        views.push(view);
        row += t;
    }
    let mut out = vec![0f32; row * heads * d];
    attend_views(&views, &mut out);
    Ok(Some(out))
}

/// Runs every view's attention as one parallel region: one task per (sequence, query, kv
/// head); the query heads sharing that kv head are contiguous in the output and read the
/// keys and values once between them. Into `out`: the views' (q_len, heads, d) one after
/// another.
fn attend_views(views: &[View], out: &mut [f32]) {
    let mut tasks = Vec::new();
    let mut rest = out;
    for (n, v) in views.iter().enumerate() {
        let (mine, after) = rest.split_at_mut(v.q_len * v.heads * v.d);
        let group = v.heads / v.kv_heads;
        tasks.extend(mine.chunks_mut(group * v.d).enumerate().map(|(idx, o)| (n, idx, o)));
        rest = after;
    }
    team::for_each_mut(&mut tasks, |(n, idx, o)| {
        let (v, idx) = (&views[*n], *idx);
        let group = v.heads / v.kv_heads;
        let (i, kvh) = (idx / v.kv_heads, idx % v.kv_heads);
        let base = kvh * v.head_stride;
        let seen = (v.start + i + 1).min(v.kv_len);
        let q = (0..group)
            .map(|g| {
                let at = (kvh * group + g) * v.q_head_stride + i * v.q_row_stride;
                &v.qs[at..at + v.d]
            })
            .collect();
        let scale = 1.0 / (v.d as f32).sqrt();
        SCORES.with_borrow_mut(|scores| match (v.ks, v.vs) {
            (Rows::F32(k), Rows::F32(vs)) => attend(&Group { q, k: &k[base..], v: &vs[base..], stride: v.pos_stride, seen, scale }, scores, o),
            (Rows::F16(k), Rows::F16(vs)) => attend(&Group { q, k: &k[base..], v: &vs[base..], stride: v.pos_stride, seen, scale }, scores, o),
            _ => unreachable!("View::new pairs keys and values of one dtype"),
        });
    });
}

thread_local! {
    /// Each thread's scratch for one task's attention scores.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A cache tensor's storage as stored.
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// From `offset` on; None for other storage.
    fn of(storage: &'a Storage, offset: usize) -> Option<Self> {
        match storage {
            Storage::Cpu(CpuStorage::F32(x)) => Some(Rows::F32(&x[offset..])),
            Storage::Cpu(CpuStorage::F16(x)) => Some(Rows::F16(&x[offset..])),
            _ => None,
        }
    }
}

/// What keys and values may be stored as: each value read as f32.
trait Elem: Copy + Sync {
    fn f32(self) -> f32;
    /// 16 values from `p` as f32 lanes. SAFETY: avx512f present, 16 values readable at p.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> core::arch::x86_64::__m512;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> core::arch::x86_64::__m512 {
        core::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> core::arch::x86_64::__m512 {
        use core::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

/// One sequence's inputs as slices of the tensors' storage.
struct View<'a> {
    qs: &'a [f32],
    /// Where query head h of row i starts in `qs`: h * q_head_stride + i * q_row_stride.
    q_head_stride: usize,
    q_row_stride: usize,
    ks: Rows<'a>,
    vs: Rows<'a>,
    head_stride: usize,
    pos_stride: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    start: usize,
}

impl<'a> View<'a> {
    /// None unless keys and values are f32 or f16 CPU storage (both the same) with unit
    /// stride in d and equal layouts. `q_strides` = (per head, per row).
    #[allow(clippy::too_many_arguments)]
    fn new(
        qs: &'a [f32],
        q_strides: (usize, usize),
        (kst, vst): (&'a Storage, &'a Storage),
        (kl, vl): (&candle_core::Layout, &candle_core::Layout),
        heads: usize,
        q_len: usize,
        kv_len: usize,
        d: usize,
        start: usize,
    ) -> Option<Self> {
        let (ks, vs) = (Rows::of(kst, kl.start_offset())?, Rows::of(vst, vl.start_offset())?);
        if kl.stride()[3] != 1 || kl.stride() != vl.stride() || kl.dims()[3] != d || kst.dtype() != vst.dtype() {
            return None;
        }
        Some(View {
            qs,
            q_head_stride: q_strides.0,
            q_row_stride: q_strides.1,
            ks,
            vs,
            head_stride: kl.stride()[1],
            pos_stride: kl.stride()[2],
            heads,
            kv_heads: kl.dims()[1],
            q_len,
            kv_len,
            d,
            start,
        })
    }
}

/// One task's inputs: the query heads sharing a kv head (each d long), and that head's keys
/// and values (`stride` apart) of which the first `seen` count.
struct Group<'a, E> {
    q: Vec<&'a [f32]>,
    k: &'a [E],
    v: &'a [E],
    stride: usize,
    seen: usize,
    scale: f32,
}

/// o_g = softmax(q_g·K / sqrt(d)) V for each query head g of `job`, into `o` (group x d).
/// Each head's arithmetic is the same as alone (same dot, same order over keys); only the
/// key and value reads are shared.
fn attend<E: Elem>(job: &Group<E>, scores: &mut Vec<f32>, o: &mut [f32]) {
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
unsafe fn attend_avx512<E: Elem>(job: &Group<E>, scores: &mut Vec<f32>, o: &mut [f32]) {
    match o.len() / job.q.len() {
        64 => attend_zmm::<4, E>(job, scores, o),
        128 => attend_zmm::<8, E>(job, scores, o),
        _ => attend_body(job, scores, o),
    }
}

/// `attend_body` for head dims of C x 16 in zmm registers: each score is C FMAs and one
/// horizontal add, each output row C accumulators kept in registers over all keys, and the
/// exponentials 16 at a time. Auto-vectorized, the scores' reductions and the scalar exp
/// (its float-to-int cast) made decode attention a quarter of a batched step.
/// A batched step reads the caches from memory once, so each key and value row is widened
/// once for all the heads sharing it, and the value rows are prefetched while the scores
/// are computed (together a third off attention at 160 keys, more on longer contexts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_zmm<const C: usize, E: Elem>(job: &Group<E>, scores: &mut Vec<f32>, o: &mut [f32]) {
    use core::arch::x86_64::*;
    let Group { q: qs, k, v, stride, seen, scale } = job;
    let (stride, seen) = (*stride, *seen);
    scores.clear();
    scores.resize(qs.len() * seen, 0.0); // [g][j]
    let group = qs.len();
    let dot = |qg: &[f32], kj: *const E| {
        let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qg.as_ptr()), E::load16(kj));
        for c in 1..C {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg.as_ptr().add(16 * c)), E::load16(kj.add(16 * c)), acc);
        }
        acc
    };
    // Sixteen keys at a time, widened once for all heads: their lane sums come out of one
    // transpose-and-add per head.
    let mut vmax = vec![_mm512_set1_ps(f32::NEG_INFINITY); group];
    let blocks = seen / 16;
    for b in 0..blocks {
        prefetch_rows::<C, E>(v.as_ptr().add(16 * b * stride), stride, 16);
        let keys: [[__m512; C]; 16] = core::array::from_fn(|i| core::array::from_fn(|c| E::load16(k.as_ptr().add((16 * b + i) * stride + 16 * c))));
        for (g, qg) in qs.iter().enumerate() {
            let acc: [__m512; 16] = core::array::from_fn(|i| {
                let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qg.as_ptr()), keys[i][0]);
                for c in 1..C {
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg.as_ptr().add(16 * c)), keys[i][c], acc);
                }
                acc
            });
            let s = _mm512_mul_ps(sum_lanes16(&acc), _mm512_set1_ps(*scale));
            _mm512_storeu_ps(scores.as_mut_ptr().add(g * seen + 16 * b), s);
            vmax[g] = _mm512_max_ps(vmax[g], s);
        }
    }
    prefetch_rows::<C, E>(v.as_ptr().add(16 * blocks * stride), stride, seen - 16 * blocks);
    let mut totals = vec![0f32; group];
    for (g, qg) in qs.iter().enumerate() {
        let row = &mut scores[g * seen..(g + 1) * seen];
        let mut max = _mm512_reduce_max_ps(vmax[g]);
        for (j, s) in row.iter_mut().enumerate().skip(16 * blocks) {
            *s = _mm512_reduce_add_ps(dot(qg, k.as_ptr().add(j * stride))) * scale;
            max = max.max(*s);
        }
        let mut sum = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact_mut(16);
        for ch in &mut chunks {
            let e = exp_zmm(_mm512_sub_ps(_mm512_loadu_ps(ch.as_ptr()), _mm512_set1_ps(max)));
            _mm512_storeu_ps(ch.as_mut_ptr(), e);
            sum = _mm512_add_ps(sum, e);
        }
        totals[g] = _mm512_reduce_add_ps(sum);
        for x in chunks.into_remainder() {
            *x = crate::activation::exp(*x - max);
            totals[g] += *x;
        }
    }
    // Heads per pass: their accumulators (H x C) and one value row fit the 32 registers.
    let per_pass = (16 / C).max(1);
    for g0 in (0..group).step_by(per_pass) {
        let heads = per_pass.min(group - g0);
        let (p, og, t) = (&scores[g0 * seen..], o.as_mut_ptr().add(g0 * 16 * C), &totals[g0..]);
        match heads {
            1 => weigh_values::<C, 1, E>(p, seen, v, stride, t, og),
            2 => weigh_values::<C, 2, E>(p, seen, v, stride, t, og),
            3 => weigh_values::<C, 3, E>(p, seen, v, stride, t, og),
            _ => weigh_values::<C, 4, E>(p, seen, v, stride, t, og),
        }
    }
}

/// o_h = Σ_j p[h][j] v_j / total_h for H consecutive heads: each value row is loaded and
/// widened once for all of them, and the H x C accumulator chains are independent (one
/// head alone waits on its C chains' FMA latency). Per head, the same FMAs in the same
/// order as alone. `p` holds the heads' rows `seen` apart; `o` H x (16 C) floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weigh_values<const C: usize, const H: usize, E: Elem>(p: &[f32], seen: usize, v: &[E], stride: usize, totals: &[f32], o: *mut f32) {
    use core::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; H];
    for j in 0..seen {
        let vj = v.as_ptr().add(j * stride);
        let row: [__m512; C] = core::array::from_fn(|c| E::load16(vj.add(16 * c)));
        for h in 0..H {
            let w = _mm512_set1_ps(*p.get_unchecked(h * seen + j));
            for c in 0..C {
                acc[h][c] = _mm512_fmadd_ps(w, row[c], acc[h][c]);
            }
        }
    }
    for h in 0..H {
        let inv = _mm512_set1_ps(1.0 / totals[h]);
        for c in 0..C {
            _mm512_storeu_ps(o.add(16 * (h * C + c)), _mm512_mul_ps(acc[h][c], inv));
        }
    }
}

/// Asks for `n` rows of 16 C values `stride` apart into the cache ahead of their use.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_rows<const C: usize, E: Elem>(first: *const E, stride: usize, n: usize) {
    use core::arch::x86_64::*;
    let bytes = 16 * C * std::mem::size_of::<E>();
    for j in 0..n {
        let row = first.add(j * stride).cast::<i8>();
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(row.add(line));
        }
    }
}

/// The sums of 16 vectors' lanes, as one vector (lane i = the sum of v[i]): pairs are
/// interleaved and added within 128-bit lanes, then the 128-bit lanes across vectors, in
/// about three operations per vector where a horizontal add takes about eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_lanes16(v: &[core::arch::x86_64::__m512; 16]) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::*;
    // w[i], per 128-bit lane: v[2i]'s partial sums at 0 and 2, v[2i+1]'s at 1 and 3.
    let w: [__m512; 8] = core::array::from_fn(|i| _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1])));
    // u[i], per 128-bit lane: the sums of v[4i..4i+4] over that lane.
    let u: [__m512; 4] = core::array::from_fn(|i| {
        let (a, b) = (_mm512_castps_pd(w[2 * i]), _mm512_castps_pd(w[2 * i + 1]));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)))
    });
    // Add the four 128-bit lanes: (0 + 1, 2 + 3) per pair of u, then across the pairs.
    let fold = |a: __m512, b: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    };
    fold(fold(u[0], u[1]), fold(u[2], u[3]))
}

/// `activation::exp` on 16 lanes: the same range reduction and polynomial, 2^n applied with
/// `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_zmm(x: core::arch::x86_64::__m512) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<E: Elem>(job: &Group<E>, scores: &mut Vec<f32>, o: &mut [f32]) {
    attend_body(job, scores, o)
}

#[inline(always)]
fn attend_body<E: Elem>(job: &Group<E>, scores: &mut Vec<f32>, o: &mut [f32]) {
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
                *oe += p * ve.f32();
            }
        }
    }
    for (g, og) in o.chunks_exact_mut(d).enumerate() {
        let inv = 1.0 / sum[g];
        og.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Dot product in 16 independent lanes, so it vectorizes without reassociation flags.
#[inline(always)]
fn dot<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y.f32()).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l].f32();
        }
    }
    tree_sum(acc) + tail
}

/// Sum of 16 lanes by halving (8 + 8, 4 + 4, ...): four vector adds, where a left-to-right
/// sum is 16 dependent scalar adds, which made the dot products of decode attention
/// latency-bound.
#[inline(always)]
pub(crate) fn tree_sum(mut acc: [f32; 16]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Prefill's softmax, in place on raw scores q·kᵀ: rows are (query head, position) with
/// `q_len` positions per head, position i seeing keys 0..=start+i. Scales, masks (masked
/// entries become 0) and normalises each row; the vectorized exp skips the masked part.
pub fn causal_softmax_in_place(scores: &mut [f32], q_len: usize, kv_len: usize, start: usize, scale: f32) {
    scores.par_chunks_mut(kv_len).enumerate().for_each(|(r, row)| {
        let seen = (start + r % q_len + 1).min(kv_len);
        crate::softmax::softmax_row(row, seen, scale);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Pseudo-random values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// Every path (zmm for head dims 64 and 128, their value passes over 1-4 heads, the
    /// generic body otherwise) against attention in f64, with keys and values read from a
    /// cache-like tensor wider than the keys in use, stored as f32 and as f16 (the reference
    /// then reads the f16-rounded values).
    #[test]
    fn decode_attention_matches_f64_reference() {
        let dev = Device::Cpu;
        for dtype in [candle_core::DType::F32, candle_core::DType::F16] {
        let stored = |x: Vec<f32>| -> Vec<f32> { if dtype == candle_core::DType::F16 { x.into_iter().map(|v| f16::from_f32(v).to_f32()).collect() } else { x } };
        for (heads, kv_heads, d) in [(9, 3, 64), (14, 2, 64), (4, 4, 128), (8, 2, 128), (6, 2, 48)] {
            for (q_len, start) in [(1, 0), (1, 37), (5, 12)] {
                let (kv_len, cap) = (start + q_len, start + q_len + 9);
                let q = Tensor::from_vec(values(heads * q_len * d, 1), (1, heads, q_len, d), &dev).unwrap();
                let cache = |seed| Tensor::from_vec(values(kv_heads * cap * d, seed), (1, kv_heads, cap, d), &dev).unwrap().to_dtype(dtype).unwrap();
                let (kc, vc) = (cache(2), cache(3));
                let (k, v) = (kc.narrow(2, 0, kv_len).unwrap(), vc.narrow(2, 0, kv_len).unwrap());
                let got = causal_attention_cpu(&q, &k, &v, start).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let (qv, kv, vv) = (values(heads * q_len * d, 1), stored(values(kv_heads * cap * d, 2)), stored(values(kv_heads * cap * d, 3)));
                let group = heads / kv_heads;
                for h in 0..heads {
                    for i in 0..q_len {
                        let kvh = h / group;
                        let seen = start + i + 1;
                        let qrow = &qv[(h * q_len + i) * d..][..d];
                        let at = |m: &[f32], j: usize, e: usize| m[(kvh * cap + j) * d + e] as f64;
                        let s: Vec<f64> = (0..seen)
                            .map(|j| (0..d).map(|e| qrow[e] as f64 * at(&kv, j, e)).sum::<f64>() / (d as f64).sqrt())
                            .collect();
                        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                        let total: f64 = w.iter().sum();
                        for e in 0..d {
                            let want = (0..seen).map(|j| w[j] * at(&vv, j, e)).sum::<f64>() / total;
                            let have = got[(i * heads + h) * d + e] as f64;
                            assert!((have - want).abs() < 2e-5, "{dtype:?} heads {heads} d {d} q_len {q_len} start {start}: {have} vs {want}");
                        }
                    }
                }
            }
        }
        }
    }
}
