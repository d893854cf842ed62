// y (T, N) = x (T, K) . W^T for T <= MMA_T rows (a batched decode step) on the tensor cores,
// for any of squish's packed matrices (quant.cu: INT4, INT8; lowbit.cu: INT3, INT2): each block
// takes MMA_N rows of W (one 16-row slice per warp) and every row of x; per 64-input block it
// stages x's 64 columns and W's 64 x 64 slice, dequantized to bf16 by the layout's `stage` (as
// its dequantization kernel writes it), in shared memory, then multiplies 16 x 16 x 16 tiles
// with f32 accumulators. The packed codes are read once per launch, not once per row of x.
// A matrix of few row slices and long rows (down_proj: 56 slices of 18944 inputs on a 7B)
// would leave most SMs idle while each block walks its row, so blockIdx.y splits the inputs
// into `splits` stretches: each block then writes its f32 partial to `part` (splits, T, N) and
// mma_reduce sums them. With one stretch the block writes y itself.
//
// L::stage(codes, params, table, k, g, row, k0, half, ws_row): thread `half` (0 or 1) of a
// row writes its 32 of the row's 64 dequantized inputs k0..k0+64 to ws_row (which 32 is the
// layout's choice; the two halves cover the row). L::TABLE: the codebook follows the codes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

#define MMA_T 64
#define MMA_N 64
#define MMA_LD 72  // padded row (bf16 values): 144 bytes, so tile rows start on 16-byte bounds

template <typename L>
__device__ void grouped_mma(const uint8_t* codes, const void* params, const __nv_bfloat16* x, __nv_bfloat16* y, float* part, int n, int k,
                            int g, int t, int splits) {
    using namespace nvcuda;
    __shared__ __align__(32) __nv_bfloat16 xs[MMA_T * MMA_LD];
    __shared__ __align__(32) __nv_bfloat16 ws[MMA_N * MMA_LD];
    __shared__ __align__(32) float staged[MMA_N / 16][16 * 16];
    __shared__ uint8_t table[32];
    if (L::TABLE) {
        if (threadIdx.x < 32) table[threadIdx.x] = codes[(size_t)n * (k / 64) * L::BYTES + threadIdx.x];
        __syncthreads();
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n0 = blockIdx.x * MMA_N;
    const int tiles = (t + 15) / 16;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MMA_T / 16];
#pragma unroll
    for (int i = 0; i < MMA_T / 16; i++) wmma::fill_fragment(acc[i], 0.f);

    // This block's stretch of 64-input blocks: every stretch but the last has `per`.
    const int per = (k / 64 + splits - 1) / splits;
    const int k_begin = blockIdx.y * per * 64, k_end = min(k, k_begin + per * 64);
    for (int k0 = k_begin; k0 < k_end; k0 += 64) {
        // x's columns k0..k0+64 for rows 0..16*tiles (zeros past t): 8 values per thread-step.
        for (int c = threadIdx.x; c < tiles * 16 * 8; c += blockDim.x) {
            int r = c / 8, piece = c % 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < t) v = *reinterpret_cast<const uint4*>(x + (size_t)r * k + k0 + piece * 8);
            *reinterpret_cast<uint4*>(xs + r * MMA_LD + piece * 8) = v;
        }
        // W's 64 rows x 64 inputs: two threads a row (rows past n are zeros).
        {
            const int r = threadIdx.x / 2, half = threadIdx.x % 2, row = n0 + r;
            if (row < n) {
                L::stage(codes, params, table, k, g, (size_t)row, k0, half, ws + r * MMA_LD);
            } else {
#pragma unroll
                for (int i = 0; i < 4; i++) reinterpret_cast<uint4*>(ws + r * MMA_LD + 32 * half)[i] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        __syncthreads();
        // B (k x n) is W^T: element (kk, c) at ws[c * MMA_LD + kk], so column-major.
#pragma unroll
        for (int kk = 0; kk < 64; kk += 16) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
            wmma::load_matrix_sync(b, ws + warp * 16 * MMA_LD + kk, MMA_LD);
#pragma unroll
            for (int i = 0; i < MMA_T / 16; i++) {
                if (i < tiles) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                    wmma::load_matrix_sync(a, xs + i * 16 * MMA_LD + kk, MMA_LD);
                    wmma::mma_sync(acc[i], a, b, acc[i]);
                }
            }
        }
        __syncthreads();
    }
    // Each warp's 16 columns, one 16-row tile at a time, through its staging tile.
#pragma unroll
    for (int i = 0; i < MMA_T / 16; i++) {
        if (i < tiles) {
            wmma::store_matrix_sync(staged[warp], acc[i], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                int r = i * 16 + e / 16, col = n0 + warp * 16 + e % 16;
                if (r >= t || col >= n) continue;
                if (splits == 1) y[(size_t)r * n + col] = __float2bfloat16(staged[warp][e]);
                else part[((size_t)blockIdx.y * t + r) * n + col] = staged[warp][e];
            }
            __syncwarp();
        }
    }
}

// y (T, N) = the sum of grouped_mma's `splits` partials, in stretch order.
extern "C" __global__ void mma_reduce(const float* part, __nv_bfloat16* y, int n, int t, int splits) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)t * n) return;
    float sum = 0.f;
    for (int z = 0; z < splits; z++) sum += part[(size_t)z * t * n + i];
    y[i] = __float2bfloat16(sum);
}
