// Decode attention for a batch of sequences on NVIDIA GPUs, one launch per layer: each block
// takes one sequence's kv head (and, split-K, one stretch of its positions), rotates (RoPE,
// rotate-half) the group's query heads, and attends over its positions with an online softmax
// (f32), warps splitting the positions and merging at the end. The block whose stretch holds
// the new position first rotates and stores the new key and value there. Never materialises a
// score matrix, so a batch's sequences of different lengths cost one launch together.
//
// A batch of few sequences would give a few blocks a long serial walk each (four blocks of a
// 132-SM GPU for one Qwen2.5-7B sequence), so small batches split the positions into `splits`
// stretches of `span`: each block then writes its softmax partial (max, sum, unnormalised
// output) to `part`, and decode_attention_merge combines them. With splits == 1 the block
// writes the output itself.
//
// Caches are (kv_heads, capacity, d) bf16 per sequence, addressed through `Caches`, which travels
// by value in the kernel's parameters (no copy to the device per step).

#include <cuda_bf16.h>
#include <math.h>

#include "common.cuh"

#define MAX_SEQS 32
#define MAX_GROUP 8
#define MAX_D 128
#define WARPS 8

struct Caches {
    unsigned long long k[MAX_SEQS];
    unsigned long long v[MAX_SEQS];
    int pos[MAX_SEQS];
};

// Where block (s, h, z)'s partial for query head g of its group starts in `part`: its max, its
// sum of exponentials, then d unnormalised outputs.
__device__ __forceinline__ size_t part_at(int s, int h, int z, int g, int kv_heads, int splits, int group, int d) {
    return ((((size_t)s * kv_heads + h) * splits + z) * group + g) * (size_t)(d + 2);
}

// q: rows of heads*d values qst apart, knew/vnew: rows of kv_heads*d values kst and vst apart
// (three views of one stacked q/k/v product, or three tensors); bias: the stacked product's
// q|k|v bias, added here (null: none); out: (rows, heads*d).
// row = s0 + blockIdx.x.
// cos/sin: (max_pos, d/2). scale = 1/sqrt(d). Block z (blockIdx.z) of `splits` attends over
// positions [z*span, (z+1)*span) that are <= pos; with splits > 1 it writes `part`, not `out`.
extern "C" __global__ void decode_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* knew, const __nv_bfloat16* vnew,
                                                 const __nv_bfloat16* bias,
                                                 const __nv_bfloat16* cos_t, const __nv_bfloat16* sin_t, __nv_bfloat16* out,
                                                 float* part, Caches c, int s0, int qst, int kst, int vst, int heads,
                                                 int kv_heads, int d, int cap, float scale, int splits, int span) {
    const int s = blockIdx.x, h = blockIdx.y, z = blockIdx.z, row = s0 + s;
    const int group = heads / kv_heads, half = d / 2, pos = c.pos[s];
    __nv_bfloat16* kc = reinterpret_cast<__nv_bfloat16*>(c.k[s]) + (size_t)h * cap * d;
    __nv_bfloat16* vc = reinterpret_cast<__nv_bfloat16*>(c.v[s]) + (size_t)h * cap * d;
    __shared__ float qs[MAX_GROUP][MAX_D];
    __shared__ float part_m[WARPS][MAX_GROUP], part_l[WARPS][MAX_GROUP];
    __shared__ float part_acc[WARPS][MAX_GROUP][MAX_D];

    const int first = z * span, last = min(pos, first + span - 1);  // positions first..=last
    const bool owns_pos = pos / span == z;

    // 1. RoPE on the group's queries, and on the new key, stored with the value at pos by the
    // block whose stretch holds pos (no other block reads it).
    const __nv_bfloat16* cr = cos_t + (size_t)pos * half;
    const __nv_bfloat16* sr = sin_t + (size_t)pos * half;
    const __nv_bfloat16* kr = knew + (size_t)row * kst + (size_t)h * d;
    const __nv_bfloat16* vr = vnew + (size_t)row * vst + (size_t)h * d;
    const __nv_bfloat16* kb = bias ? bias + (size_t)(heads + h) * d : nullptr;
    const __nv_bfloat16* vb = bias ? bias + (size_t)(heads + kv_heads + h) * d : nullptr;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float co = __bfloat162float(cr[i]), si = __bfloat162float(sr[i]);
        if (owns_pos) {
            float a = biased(kr, kb, i), b = biased(kr, kb, i + half);
            kc[(size_t)pos * d + i] = __float2bfloat16(a * co - b * si);
            kc[(size_t)pos * d + i + half] = __float2bfloat16(a * si + b * co);
            vc[(size_t)pos * d + i] = __float2bfloat16(biased(vr, vb, i));
            vc[(size_t)pos * d + i + half] = __float2bfloat16(biased(vr, vb, i + half));
        }
        for (int g = 0; g < group; g++) {
            const __nv_bfloat16* qr = q + (size_t)row * qst + (size_t)(h * group + g) * d;
            const __nv_bfloat16* qb = bias ? bias + (size_t)(h * group + g) * d : nullptr;
            float x = biased(qr, qb, i), y = biased(qr, qb, i + half);
            // Rounded to bf16 as the generic path's rotated queries are.
            qs[g][i] = __bfloat162float(__float2bfloat16(x * co - y * si)) * scale;
            qs[g][i + half] = __bfloat162float(__float2bfloat16(x * si + y * co)) * scale;
        }
    }
    __syncthreads();

    // 2. Online softmax over this warp's positions; lane holds elements lane*per .. +per.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, per = d / 32;
    float m[MAX_GROUP], l[MAX_GROUP], acc[MAX_GROUP][MAX_D / 32];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < MAX_D / 32; e++) acc[g][e] = 0.f;
    }
    for (int j = first + warp; j <= last; j += WARPS) {
        float kv[MAX_D / 32], vv[MAX_D / 32];
#pragma unroll
        for (int e = 0; e < MAX_D / 32; e++) {
            if (e < per) {
                kv[e] = __bfloat162float(kc[(size_t)j * d + lane * per + e]);
                vv[e] = __bfloat162float(vc[(size_t)j * d + lane * per + e]);
            }
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) {
            if (g < group) {
                float dot = 0.f;
#pragma unroll
                for (int e = 0; e < MAX_D / 32; e++)
                    if (e < per) dot += qs[g][lane * per + e] * kv[e];
                dot = warp_sum(dot);
                float mn = fmaxf(m[g], dot);
                float corr = __expf(m[g] - mn), p = __expf(dot - mn);
                l[g] = l[g] * corr + p;
#pragma unroll
                for (int e = 0; e < MAX_D / 32; e++)
                    if (e < per) acc[g][e] = acc[g][e] * corr + p * vv[e];
                m[g] = mn;
            }
        }
    }
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        if (g < group) {
            if (lane == 0) {
                part_m[warp][g] = m[g];
                part_l[warp][g] = l[g];
            }
#pragma unroll
            for (int e = 0; e < MAX_D / 32; e++)
                if (e < per) part_acc[warp][g][lane * per + e] = acc[g][e];
        }
    }
    __syncthreads();

    // 3. Merge the warps' partial softmaxes: the output, or this block's partial (a block of
    // a short sequence's empty stretch writes max -inf and zeros, which the merge skips).
    for (int idx = threadIdx.x; idx < group * d; idx += blockDim.x) {
        int g = idx / d, e = idx % d;
        float mx = -INFINITY;
        for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, part_m[w][g]);
        float num = 0.f, den = 0.f;
        for (int w = 0; w < WARPS; w++) {
            if (part_m[w][g] == -INFINITY) continue;  // a warp that saw no position
            float f = __expf(part_m[w][g] - mx);
            num += part_acc[w][g][e] * f;
            den += part_l[w][g] * f;
        }
        if (splits == 1) {
            out[(size_t)row * heads * d + (size_t)(h * group + g) * d + e] = __float2bfloat16(num / den);
        } else {
            float* p = part + part_at(s, h, z, g, kv_heads, splits, group, d);
            if (e == 0) {
                p[0] = mx;
                p[1] = den;
            }
            p[2 + e] = num;
        }
    }
}

// Combines decode_attention_bf16's `splits` partials of each query head: block (s, query
// head), thread e one output element. Stretch 0 always holds position 0, so the max is finite.
extern "C" __global__ void decode_attention_merge(const float* part, __nv_bfloat16* out, int s0, int heads, int kv_heads,
                                                  int d, int splits) {
    const int s = blockIdx.x, hq = blockIdx.y, e = threadIdx.x;
    if (e >= d) return;
    const int group = heads / kv_heads, h = hq / group, g = hq % group;
    float mx = -INFINITY;
    for (int z = 0; z < splits; z++) mx = fmaxf(mx, part[part_at(s, h, z, g, kv_heads, splits, group, d)]);
    float num = 0.f, den = 0.f;
    for (int z = 0; z < splits; z++) {
        const float* p = part + part_at(s, h, z, g, kv_heads, splits, group, d);
        if (p[0] == -INFINITY) continue;
        float f = __expf(p[0] - mx);
        num += p[2 + e] * f;
        den += p[1] * f;
    }
    out[(size_t)(s0 + s) * heads * d + (size_t)hq * d + e] = __float2bfloat16(num / den);
}
