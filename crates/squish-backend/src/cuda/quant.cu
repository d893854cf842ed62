// squish's quantized matrices on NVIDIA GPUs, read in their packed file layout
// (docs/FORMAT.md; squish_quant::int4 and ::int8 own the CPU side of the same bytes).
//
// INT4: row r's codes are bytes [r*K/2, (r+1)*K/2); each 64-input block is 32 bytes, byte j
// holding input j in its low nibble and input 32+j in its high one. `params` interleaves each
// group's f16 scale and min: w = scale * q + min.
// INT8: row-major i8 codes, one f16 scale per group: w = scale * q.
//
// Decode (a few rows of x) runs the GEMV kernels: one warp per output row, each lane reading 8
// code bytes at a time, so a warp's loads are contiguous and every weight byte is read once per
// launch for up to ROWS rows of x. Batches of up to MMA_T rows run int4_mma_bf16 or
// int8_mma_bf16 on the tensor cores (mma_tile.cuh), dequantizing each 64-input block in shared
// memory; larger ones (prompts) dequantize the matrix to bf16 and use cuBLAS.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

#include "common.cuh"

#define ROWS 8
#define WARPS 4
#define UNROLL 4

// y[t0 + i][row] for i < rows (rows <= ROWS); x: (T, K) bf16, y: (T, N) bf16.
extern "C" __global__ void int4_gemv_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x,
                                          __nv_bfloat16* y, int n, int k, int g, int t0, int rows) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const uint8_t* rc = codes + (size_t)row * (k / 2);
    const __half2* rp = params + (size_t)row * (k / g);
    float acc[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; i++) acc[i] = 0.f;
    // Each lane takes 8 bytes inside one 32-byte block: 8 low-nibble inputs and 8 high ones.
    // UNROLL stretches' codes are loaded before any is used, so a warp has that many loads in
    // flight: with one at a time, each warp waited out every load's latency in turn.
    const int row_bytes = k / 2;
    for (int base = lane * 8; base < row_bytes; base += 256 * UNROLL) {
        uint2 raws[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int off = base + u * 256;
            raws[u] = off < row_bytes ? *reinterpret_cast<const uint2*>(rc + off) : make_uint2(0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int off = base + u * 256;
            if (off >= row_bytes) break;
            uint2 raw = raws[u];
            int block = off / 32, j = off % 32;
            int lo = block * 64 + j, hi = lo + 32;
            float2 pl = __half22float2(rp[lo / g]);
            float2 ph = __half22float2(rp[hi / g]);
            float ql[8], qh[8];
            const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                ql[i] = (float)(b[i] & 15);
                qh[i] = (float)(b[i] >> 4);
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                if (r < rows) {
                    const __nv_bfloat16* xr = x + (size_t)(t0 + r) * k;
                    float xl[8], xh[8];
                    load8(xr + lo, xl);
                    load8(xr + hi, xh);
                    float dl = 0.f, sl = 0.f, dh = 0.f, sh = 0.f;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        dl += xl[i] * ql[i];
                        sl += xl[i];
                        dh += xh[i] * qh[i];
                        sh += xh[i];
                    }
                    acc[r] += pl.x * dl + pl.y * sl + ph.x * dh + ph.y * sh;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (r < rows) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(size_t)(t0 + r) * n + row] = __float2bfloat16(s);
        }
    }
}

extern "C" __global__ void int8_gemv_bf16(const int8_t* codes, const __half* scales, const __nv_bfloat16* x,
                                          __nv_bfloat16* y, int n, int k, int g, int t0, int rows) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= n) return;
    const int8_t* rc = codes + (size_t)row * k;
    const __half* rs = scales + (size_t)row * (k / g);
    float acc[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; i++) acc[i] = 0.f;
    for (int base = lane * 8; base < k; base += 256 * UNROLL) {
        uint2 raws[UNROLL];  // loads in flight, as in int4_gemv_bf16
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int off = base + u * 256;
            raws[u] = off < k ? *reinterpret_cast<const uint2*>(rc + off) : make_uint2(0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int off = base + u * 256;
            if (off >= k) break;
            uint2 raw = raws[u];
            const int8_t* b = reinterpret_cast<const int8_t*>(&raw);
            float s = __half2float(rs[off / g]);
            float q[8];
#pragma unroll
            for (int i = 0; i < 8; i++) q[i] = (float)b[i];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                if (r < rows) {
                    float xv[8];
                    load8(x + (size_t)(t0 + r) * k + off, xv);
                    float d = 0.f;
#pragma unroll
                    for (int i = 0; i < 8; i++) d += xv[i] * q[i];
                    acc[r] += s * d;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (r < rows) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(size_t)(t0 + r) * n + row] = __float2bfloat16(s);
        }
    }
}

// The whole matrix as bf16 (N, K). Block x is a row, block y a 2048-input stretch of it: each
// thread turns 8 code bytes (or 8 INT8 codes) into 16-byte stores, so writes are coalesced and
// no thread divides by anything but the group size.
extern "C" __global__ void int4_dequant_bf16(const uint8_t* codes, const __half2* params, __nv_bfloat16* w,
                                             int n, int k, int g) {
    size_t row = blockIdx.x;
    int off = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (row >= (size_t)n || off >= k / 2) return;
    uint2 raw = *reinterpret_cast<const uint2*>(codes + row * (k / 2) + off);
    int lo = (off / 32) * 64 + off % 32, hi = lo + 32;
    float2 pl = __half22float2(params[row * (k / g) + lo / g]);
    float2 ph = __half22float2(params[row * (k / g) + hi / g]);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
    __align__(16) __nv_bfloat16 vl[8];
    __align__(16) __nv_bfloat16 vh[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        vl[i] = __float2bfloat16(pl.x * (float)(b[i] & 15) + pl.y);
        vh[i] = __float2bfloat16(ph.x * (float)(b[i] >> 4) + ph.y);
    }
    *reinterpret_cast<uint4*>(w + row * k + lo) = *reinterpret_cast<const uint4*>(vl);
    *reinterpret_cast<uint4*>(w + row * k + hi) = *reinterpret_cast<const uint4*>(vh);
}

extern "C" __global__ void int8_dequant_bf16(const int8_t* codes, const __half* scales, __nv_bfloat16* w,
                                             int n, int k, int g) {
    size_t row = blockIdx.x;
    int col = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (row >= (size_t)n || col >= k) return;
    uint2 raw = *reinterpret_cast<const uint2*>(codes + row * k + col);
    const int8_t* b = reinterpret_cast<const int8_t*>(&raw);
    float s = __half2float(scales[row * (k / g) + col / g]);
    __align__(16) __nv_bfloat16 v[8];
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = __float2bfloat16(s * (float)b[i]);
    *reinterpret_cast<uint4*>(w + row * k + col) = *reinterpret_cast<const uint4*>(v);
}

// Batches of 9 to MMA_T rows: the tensor-core kernel of mma_tile.cuh, with the 64 x 64 slice
// of W dequantized as int4_dequant_bf16 / int8_dequant_bf16 write it.
#include "mma_tile.cuh"

// Thread `half` of a row stages 16 code bytes (half a 32-byte block): inputs j (low nibbles)
// and 32 + j (high), j in its half.
struct Int4Slice {
    static constexpr bool TABLE = false;
    static constexpr int BYTES = 32;
    __device__ static __forceinline__ void stage(const uint8_t* codes, const void* params_v, const uint8_t*, int k, int g, size_t row,
                                                 int k0, int half, __nv_bfloat16* ws_row) {
        const __half2* params = static_cast<const __half2*>(params_v);
        const int groups = k / g;
        __align__(16) __nv_bfloat16 lo[16];
        __align__(16) __nv_bfloat16 hi[16];
        uint4 raw = *reinterpret_cast<const uint4*>(codes + row * (k / 2) + k0 / 2 + half * 16);
        float2 pl = __half22float2(params[row * groups + k0 / g]);
        float2 ph = __half22float2(params[row * groups + (k0 + 32) / g]);
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            lo[i] = __float2bfloat16(pl.x * (float)(b[i] & 15) + pl.y);
            hi[i] = __float2bfloat16(ph.x * (float)(b[i] >> 4) + ph.y);
        }
        uint4* wl = reinterpret_cast<uint4*>(ws_row + half * 16);
        uint4* wh = reinterpret_cast<uint4*>(ws_row + 32 + half * 16);
        wl[0] = reinterpret_cast<const uint4*>(lo)[0];
        wl[1] = reinterpret_cast<const uint4*>(lo)[1];
        wh[0] = reinterpret_cast<const uint4*>(hi)[0];
        wh[1] = reinterpret_cast<const uint4*>(hi)[1];
    }
};

// Thread `half` of a row stages inputs 32 * half .. + 32: 32 code bytes, one scale each 32.
struct Int8Slice {
    static constexpr bool TABLE = false;
    static constexpr int BYTES = 64;
    __device__ static __forceinline__ void stage(const uint8_t* codes, const void* params_v, const uint8_t*, int k, int g, size_t row,
                                                 int k0, int half, __nv_bfloat16* ws_row) {
        const __half* scales = static_cast<const __half*>(params_v);
        const int c0 = k0 + 32 * half;
        const float s = __half2float(scales[row * (k / g) + c0 / g]);
        __align__(16) int8_t q[32];
        reinterpret_cast<uint4*>(q)[0] = *reinterpret_cast<const uint4*>(codes + row * k + c0);
        reinterpret_cast<uint4*>(q)[1] = *reinterpret_cast<const uint4*>(codes + row * k + c0 + 16);
        __align__(16) __nv_bfloat16 v[32];
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = __float2bfloat16(s * (float)q[i]);
#pragma unroll
        for (int i = 0; i < 4; i++) reinterpret_cast<uint4*>(ws_row + 32 * half)[i] = reinterpret_cast<const uint4*>(v)[i];
    }
};

extern "C" __global__ void int4_mma_bf16(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, float* part,
                                         int n, int k, int g, int t, int splits) {
    grouped_mma<Int4Slice>(codes, params, x, y, part, n, k, g, t, splits);
}
extern "C" __global__ void int8_mma_bf16(const int8_t* codes, const __half* scales, const __nv_bfloat16* x, __nv_bfloat16* y, float* part,
                                         int n, int k, int g, int t, int splits) {
    grouped_mma<Int8Slice>(reinterpret_cast<const uint8_t*>(codes), scales, x, y, part, n, k, g, t, splits);
}
