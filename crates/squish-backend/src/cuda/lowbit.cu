// squish's INT3 and INT2 matrices on NVIDIA GPUs, read in their packed file layout
// (squish_quant::int3 and ::int2 own the CPU side of the same bytes), and the randomized
// Hadamard rotation that inputs of rotated matrices take first (squish_quant::rotate).
//
// Both are grouped: w = scale * q + min per group of g inputs (`params` interleaves each
// group's f16 scale and min, as for INT4). A 64-input block is 24 bytes (INT3: two bit planes)
// or 16 (INT2: a 4-bit codebook entry per input pair, the 32-byte codebook after the last row's
// codes). Each kernel thread decodes 8 consecutive inputs of one block: 8 threads a block.
//
// Decode (up to LB_ROWS rows of x) runs the GEMV: one warp per output row, four blocks per
// warp step, so a warp's loads are contiguous. Batches of up to MMA_T rows run the tensor-core
// kernel (mma_tile.cuh); prompts dequantize to bf16 and use cuBLAS.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"

#define LB_ROWS 8
#define LB_WARPS 4
#define LB_UNROLL 2
#define LB_MAX_BLOCK 512  // squish_quant::rotate::MAX_BLOCK

// INT3: bytes 0..16 hold inputs j, 16+j, 32+j, 48+j's low two bits (2 bits each, in that
// order); bit i of byte 16+j holds input 8i+j's high bit. Inputs 8c..8c+8: low bits from bytes
// 8(c%2).. shifted by 2(c/2), high bits from bytes 16..24, bit c.
struct Int3 {
    static constexpr int BYTES = 24;
    static constexpr bool TABLE = false;
    struct Raw {
        uint2 lo, hi;
    };
    __device__ static __forceinline__ Raw load(const uint8_t* blk, int c) {
        return {*reinterpret_cast<const uint2*>(blk + 8 * (c & 1)), *reinterpret_cast<const uint2*>(blk + 16)};
    }
    __device__ static __forceinline__ void decode(const Raw& r, int c, const uint8_t*, float* q) {
        const uint8_t* l = reinterpret_cast<const uint8_t*>(&r.lo);
        const uint8_t* h = reinterpret_cast<const uint8_t*>(&r.hi);
        const int shift = 2 * (c >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) q[i] = (float)(((l[i] >> shift) & 3) | (((h[i] >> c) & 1) << 2));
    }
};

// INT2: byte p holds the codebook entry of inputs (2p, 2p+1) in its low nibble and of
// (32+2p, 33+2p) in its high one; an input's value is table[entry + 16 * (input odd)].
// Inputs 8c..8c+8: bytes 4(c%4)..+4, nibble c/4.
struct Int2 {
    static constexpr int BYTES = 16;
    static constexpr bool TABLE = true;
    struct Raw {
        uint32_t w;
    };
    __device__ static __forceinline__ Raw load(const uint8_t* blk, int c) { return {*reinterpret_cast<const uint32_t*>(blk + 4 * (c & 3))}; }
    __device__ static __forceinline__ void decode(const Raw& r, int c, const uint8_t* table, float* q) {
        const int shift = 4 * (c >> 2);
#pragma unroll
        for (int i = 0; i < 8; i++) q[i] = (float)table[((r.w >> (8 * (i >> 1) + shift)) & 15) + 16 * (i & 1)];
    }
};

// The codebook (INT2) in shared memory; every thread of the block calls it.
template <typename L>
__device__ __forceinline__ void load_table(const uint8_t* codes, int n, int k, uint8_t* table) {
    if (L::TABLE) {
        if (threadIdx.x < 32) table[threadIdx.x] = codes[(size_t)n * (k / 64) * L::BYTES + threadIdx.x];
        __syncthreads();
    }
}

// y[t0 + i][row] for i < rows (rows <= LB_ROWS); x: (T, K) bf16, y: (T, N) bf16.
template <typename L>
__device__ void grouped_gemv(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k,
                             int g, int t0, int rows) {
    __shared__ uint8_t table[32];
    load_table<L>(codes, n, k, table);
    const int row = blockIdx.x * LB_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const int blocks = k / 64, c = lane & 7;
    const uint8_t* rc = codes + (size_t)row * blocks * L::BYTES;
    const __half2* rp = params + (size_t)row * (k / g);
    float acc[LB_ROWS];
#pragma unroll
    for (int r = 0; r < LB_ROWS; r++) acc[r] = 0.f;
    // Lanes 8b'..8b'+8 take block b'; LB_UNROLL steps' codes load before any is used.
    for (int b0 = lane >> 3; b0 < blocks; b0 += 4 * LB_UNROLL) {
        typename L::Raw raws[LB_UNROLL];
#pragma unroll
        for (int u = 0; u < LB_UNROLL; u++) {
            const int b = b0 + 4 * u;
            if (b < blocks) raws[u] = L::load(rc + (size_t)b * L::BYTES, c);
        }
#pragma unroll
        for (int u = 0; u < LB_UNROLL; u++) {
            const int b = b0 + 4 * u;
            if (b >= blocks) break;
            float q[8];
            L::decode(raws[u], c, table, q);
            const int in0 = b * 64 + 8 * c;
            const float2 p = __half22float2(rp[in0 / g]);
#pragma unroll
            for (int r = 0; r < LB_ROWS; r++) {
                if (r < rows) {
                    float xv[8];
                    load8(x + (size_t)(t0 + r) * k + in0, xv);
                    float dot = 0.f, sum = 0.f;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        dot += xv[i] * q[i];
                        sum += xv[i];
                    }
                    acc[r] += p.x * dot + p.y * sum;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < LB_ROWS; r++) {
        if (r < rows) {
            const float s = warp_sum(acc[r]);
            if (lane == 0) y[(size_t)(t0 + r) * n + row] = __float2bfloat16(s);
        }
    }
}

// The whole matrix as bf16 (N, K): block x a row, each thread 8 inputs (one 16-byte store).
template <typename L>
__device__ void grouped_dequant(const uint8_t* codes, const __half2* params, __nv_bfloat16* w, int n, int k, int g) {
    __shared__ uint8_t table[32];
    load_table<L>(codes, n, k, table);
    const size_t row = blockIdx.x;
    const int chunk = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= (size_t)n || chunk >= k / 8) return;
    const int b = chunk / 8, c = chunk % 8, in0 = b * 64 + 8 * c;
    float q[8];
    L::decode(L::load(codes + (row * (k / 64) + b) * L::BYTES, c), c, table, q);
    const float2 p = __half22float2(params[row * (k / g) + in0 / g]);
    __align__(16) __nv_bfloat16 v[8];
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = __float2bfloat16(p.x * q[i] + p.y);
    *reinterpret_cast<uint4*>(w + row * k + in0) = *reinterpret_cast<const uint4*>(v);
}

extern "C" __global__ void int3_gemv_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n,
                                          int k, int g, int t0, int rows) {
    grouped_gemv<Int3>(codes, params, x, y, n, k, g, t0, rows);
}
extern "C" __global__ void int2_gemv_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n,
                                          int k, int g, int t0, int rows) {
    grouped_gemv<Int2>(codes, params, x, y, n, k, g, t0, rows);
}
extern "C" __global__ void int3_dequant_bf16(const uint8_t* codes, const __half2* params, __nv_bfloat16* w, int n, int k, int g) {
    grouped_dequant<Int3>(codes, params, w, n, k, g);
}
extern "C" __global__ void int2_dequant_bf16(const uint8_t* codes, const __half2* params, __nv_bfloat16* w, int n, int k, int g) {
    grouped_dequant<Int2>(codes, params, w, n, k, g);
}

// x (T, K) -> R x per row: block (row, j) takes inputs [j*hb, (j+1)*hb) with hb/2 threads: the
// signs and 1/sqrt(hb) (`scale`, rounded to f32 as the CPU rounds it), then the unnormalised
// Walsh-Hadamard butterflies in f32, in squish_quant::rotate's order of additions.
extern "C" __global__ void rotate_bf16(const __nv_bfloat16* x, const float* signs, __nv_bfloat16* out, int k, int hb, float scale) {
    __shared__ float v[LB_MAX_BLOCK];
    const size_t row = blockIdx.x;
    const int j0 = blockIdx.y * hb, tid = threadIdx.x, half = hb / 2;
    for (int e = tid; e < hb; e += half) v[e] = __bfloat162float(x[row * k + j0 + e]) * (signs[j0 + e] * scale);
    __syncthreads();
    for (int h = 1; h < hb; h *= 2) {
        const int i = (tid / h) * 2 * h + tid % h;
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
        __syncthreads();
    }
    for (int e = tid; e < hb; e += half) out[row * k + j0 + e] = __float2bfloat16(v[e]);
}

// Batches of 9 to MMA_T rows: the tensor-core kernel of mma_tile.cuh, each thread staging 32
// inputs (four 8-input chunks of the block) as grouped_dequant writes them.
#include "mma_tile.cuh"

template <typename L>
struct Slice {
    static constexpr bool TABLE = L::TABLE;
    static constexpr int BYTES = L::BYTES;
    __device__ static __forceinline__ void stage(const uint8_t* codes, const void* params_v, const uint8_t* table, int k, int g, size_t row,
                                                 int k0, int half, __nv_bfloat16* ws_row) {
        const __half2* params = static_cast<const __half2*>(params_v);
        const uint8_t* blk = codes + (row * (k / 64) + k0 / 64) * L::BYTES;
        const float2 p = __half22float2(params[row * (k / g) + (k0 + 32 * half) / g]);  // g >= 32: one group
#pragma unroll
        for (int c = 4 * half; c < 4 * half + 4; c++) {
            float q[8];
            L::decode(L::load(blk, c), c, table, q);
            __align__(16) __nv_bfloat16 v[8];
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __float2bfloat16(p.x * q[i] + p.y);
            *reinterpret_cast<uint4*>(ws_row + 8 * c) = *reinterpret_cast<const uint4*>(v);
        }
    }
};

extern "C" __global__ void int3_mma_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, float* part,
                                         int n, int k, int g, int t, int splits) {
    grouped_mma<Slice<Int3>>(codes, params, x, y, part, n, k, g, t, splits);
}
extern "C" __global__ void int2_mma_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, float* part,
                                         int n, int k, int g, int t, int splits) {
    grouped_mma<Slice<Int2>>(codes, params, x, y, part, n, k, g, t, splits);
}
