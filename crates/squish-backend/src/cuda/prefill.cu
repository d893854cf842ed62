// Prompt (prefill) attention for one sequence on NVIDIA GPUs, flash-attention style: the
// scores live a tile at a time in shared memory and an online softmax folds each tile into the
// output, so no (heads x prompt x context) score matrix is ever written.
//
// Two launches per layer and sequence:
// - prefill_store_kv rotates (RoPE, rotate-half) the prompt's new keys and stores them, with
//   the values, in the cache at positions start..start+t;
// - prefill_attention_bf16 then attends: block (query block, query head) takes BQ queries (16
//   per warp), rotates them, and walks the cache BK keys at a time up to its last query's
//   position: S = Q K^T and O += P V on the tensor cores (bf16 in, f32 sums), the causal mask
//   and the softmax in f32 in between.
//
// Caches are (kv_heads, capacity, d) bf16, as for decode attention.

#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "common.cuh"

using namespace nvcuda;

#define BQ 64                  // queries per block
#define BK 32                  // keys per step; BQ = 2 BK, so the Q staging area holds the K and V tiles later
#define PF_WARPS (BQ / 16)     // a warp per 16 queries
#define PF_MAX_D 128
#define TILE_LD (PF_MAX_D + 8)  // padded bf16 row of the q/k/v tiles (272 bytes: tile rows on 32-byte bounds)
#define S_LD (BK + 4)           // f32 score row
#define P_LD (BK + 8)           // bf16 probability row

// Block (i, h): new token i's kv head h. knew/vnew: rows of kv_heads*d values kst and vst apart;
// kbias/vbias: their biases (kv_heads*d each), added here, or null.
extern "C" __global__ void prefill_store_kv(const __nv_bfloat16* knew, const __nv_bfloat16* vnew, const __nv_bfloat16* kbias,
                                            const __nv_bfloat16* vbias, const __nv_bfloat16* cos_t, const __nv_bfloat16* sin_t,
                                            __nv_bfloat16* kc, __nv_bfloat16* vc, int kst, int vst, int d, int cap, int start) {
    const int i = blockIdx.x, h = blockIdx.y, pos = start + i, half = d / 2;
    const __nv_bfloat16* kr = knew + (size_t)i * kst + (size_t)h * d;
    const __nv_bfloat16* vr = vnew + (size_t)i * vst + (size_t)h * d;
    const __nv_bfloat16* kb = kbias ? kbias + (size_t)h * d : nullptr;
    const __nv_bfloat16* vb = vbias ? vbias + (size_t)h * d : nullptr;
    __nv_bfloat16* kd = kc + ((size_t)h * cap + pos) * d;
    __nv_bfloat16* vd = vc + ((size_t)h * cap + pos) * d;
    for (int e = threadIdx.x; e < half; e += blockDim.x) {
        float co = __bfloat162float(cos_t[(size_t)pos * half + e]), si = __bfloat162float(sin_t[(size_t)pos * half + e]);
        float a = biased(kr, kb, e), b = biased(kr, kb, e + half);
        kd[e] = __float2bfloat16(a * co - b * si);
        kd[e + half] = __float2bfloat16(a * si + b * co);
        vd[e] = __float2bfloat16(biased(vr, vb, e));
        vd[e + half] = __float2bfloat16(biased(vr, vb, e + half));
    }
}

// q: t rows of heads*d values qst apart (before RoPE), for positions start..start+t, and their
// bias (heads*d, added here) or null; the cache
// holds keys and values for positions 0..start+t. out: (t, heads*d). scale = 1/sqrt(d).
// d a multiple of 16, at most PF_MAX_D.
extern "C" __global__ void prefill_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* qbias, const __nv_bfloat16* cos_t,
                                                  const __nv_bfloat16* sin_t,
                                                  const __nv_bfloat16* kc, const __nv_bfloat16* vc, __nv_bfloat16* out, int qst,
                                                  int heads, int kv_heads, int d, int cap, int start, int t, float scale) {
    const int hq = blockIdx.y, h = hq / (heads / kv_heads), i0 = blockIdx.x * BQ, rows = min(BQ, t - i0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = d / 2, steps = d / 16;
    // Rotated queries first; once they are in fragments, the K tile (first BK rows) and V tile.
    __shared__ __align__(32) __nv_bfloat16 tiles[BQ * TILE_LD];
    __shared__ __align__(32) float scores[PF_WARPS][16 * S_LD];
    __shared__ __align__(32) __nv_bfloat16 probs[PF_WARPS][16 * P_LD];
    __nv_bfloat16* ktile = tiles;
    __nv_bfloat16* vtile = tiles + BK * TILE_LD;

    // 1. The block's queries, rotated and rounded to bf16 (as the generic path's are); rows past
    // the prompt are zeros, computed and never written.
    for (int idx = threadIdx.x; idx < BQ * half; idx += blockDim.x) {
        const int r = idx / half, e = idx % half;
        float x = 0.f, y = 0.f, co = 1.f, si = 0.f;
        if (r < rows) {
            const int pos = start + i0 + r;
            const __nv_bfloat16* qr = q + (size_t)(i0 + r) * qst + (size_t)hq * d;
            const __nv_bfloat16* qb = qbias ? qbias + (size_t)hq * d : nullptr;
            x = biased(qr, qb, e);
            y = biased(qr, qb, e + half);
            co = __bfloat162float(cos_t[(size_t)pos * half + e]);
            si = __bfloat162float(sin_t[(size_t)pos * half + e]);
        }
        tiles[r * TILE_LD + e] = __float2bfloat16(x * co - y * si);
        tiles[r * TILE_LD + e + half] = __float2bfloat16(x * si + y * co);
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qf[PF_MAX_D / 16];
#pragma unroll
    for (int kk = 0; kk < PF_MAX_D / 16; kk++)
        if (kk < steps) wmma::load_matrix_sync(qf[kk], tiles + warp * 16 * TILE_LD + kk * 16, TILE_LD);

    // 2. Each lane owns half of one query row: softmax columns (lane % 2) * 16.. of each score
    // tile, and output columns (lane % 2) * 8.. of each 16-wide output tile.
    const int r = lane / 2, side = lane % 2, qpos = start + i0 + warp * 16 + r;
    float m = -INFINITY, l = 0.f, o[PF_MAX_D / 16][8];
#pragma unroll
    for (int c = 0; c < PF_MAX_D / 16; c++)
#pragma unroll
        for (int e = 0; e < 8; e++) o[c][e] = 0.f;
    const int last = start + i0 + rows - 1;  // the block's last query's position
    float* sw = scores[warp];
    __nv_bfloat16* pw = probs[warp];
    for (int j0 = 0; j0 <= last; j0 += BK) {
        __syncthreads();  // every warp is done with the previous tiles (and the queries)
        const __nv_bfloat16* kbase = kc + ((size_t)h * cap + j0) * d;
        const __nv_bfloat16* vbase = vc + ((size_t)h * cap + j0) * d;
        for (int idx = threadIdx.x; idx < BK * d / 8; idx += blockDim.x) {
            const int j = idx / (d / 8), e = idx % (d / 8) * 8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);  // keys past the last query: zeros, masked
            if (j0 + j <= last) {
                kv = *reinterpret_cast<const uint4*>(kbase + (size_t)j * d + e);
                vv = *reinterpret_cast<const uint4*>(vbase + (size_t)j * d + e);
            }
            *reinterpret_cast<uint4*>(ktile + j * TILE_LD + e) = kv;
            *reinterpret_cast<uint4*>(vtile + j * TILE_LD + e) = vv;
        }
        __syncthreads();

        // S (16 x BK) = Q K^T; K^T is column-major in the K tile.
#pragma unroll
        for (int nt = 0; nt < BK / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
            wmma::fill_fragment(s, 0.f);
#pragma unroll
            for (int kk = 0; kk < PF_MAX_D / 16; kk++) {
                if (kk < steps) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kf;
                    wmma::load_matrix_sync(kf, ktile + nt * 16 * TILE_LD + kk * 16, TILE_LD);
                    wmma::mma_sync(s, qf[kk], kf, s);
                }
            }
            wmma::store_matrix_sync(sw + nt * 16, s, S_LD, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile: the two lanes of a row share their max and sum.
        float sv[16], mx = -INFINITY;
#pragma unroll
        for (int e = 0; e < 16; e++) {
            const int key = j0 + side * 16 + e;
            sv[e] = key <= qpos ? sw[r * S_LD + side * 16 + e] * scale : -INFINITY;
            mx = fmaxf(mx, sv[e]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float mn = fmaxf(m, mx);  // finite: key 0 is in every row's first tile
        const float corr = __expf(m - mn);
        float sum = 0.f;
#pragma unroll
        for (int e = 0; e < 16; e++) {
            const float p = __expf(sv[e] - mn);
            sum += p;
            pw[r * P_LD + side * 16 + e] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * corr + sum;
        m = mn;
#pragma unroll
        for (int c = 0; c < PF_MAX_D / 16; c++)
#pragma unroll
            for (int e = 0; e < 8; e++) o[c][e] *= corr;
        __syncwarp();

        // O (16 x d) += P V, one 16-wide output tile at a time through the score buffer.
#pragma unroll
        for (int c = 0; c < PF_MAX_D / 16; c++) {
            if (c < steps) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                wmma::fill_fragment(acc, 0.f);
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pf;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vf;
                    wmma::load_matrix_sync(pf, pw + kk * 16, P_LD);
                    wmma::load_matrix_sync(vf, vtile + kk * 16 * TILE_LD + c * 16, TILE_LD);
                    wmma::mma_sync(acc, pf, vf, acc);
                }
                wmma::store_matrix_sync(sw, acc, 16, wmma::mem_row_major);
                __syncwarp();
#pragma unroll
                for (int e = 0; e < 8; e++) o[c][e] += sw[r * 16 + side * 8 + e];
                __syncwarp();
            }
        }
    }

    // 3. This lane's half row, normalised.
    const int row = warp * 16 + r;
    if (row < rows) {
        __nv_bfloat16* orow = out + (size_t)(i0 + row) * heads * d + (size_t)hq * d;
        const float inv = 1.f / l;
#pragma unroll
        for (int c = 0; c < PF_MAX_D / 16; c++)
            if (c < steps)
#pragma unroll
                for (int e = 0; e < 8; e++) orow[c * 16 + side * 8 + e] = __float2bfloat16(o[c][e] * inv);
    }
}
