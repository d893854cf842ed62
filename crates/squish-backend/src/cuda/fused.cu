// Kernels that each do the work of two candle launches in a decode step, whose time on a GPU
// goes more to launches than to arithmetic: SwiGLU's silu(gate) * up, and the residual add
// with the RMS norm that follows it. bf16 in and out, f32 inside.

#include <cuda_bf16.h>

#include "common.cuh"

#define THREADS 256

// out (rows, width) = silu(gate) * up; gate and up rows lie gst and ust values apart (views of
// one stacked gate/up product).
extern "C" __global__ void silu_mul_bf16(const __nv_bfloat16* gate, const __nv_bfloat16* up, __nv_bfloat16* out,
                                         int rows, int width, int gst, int ust) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * width) return;
    size_t r = i / width, c = i % width;
    float g = __bfloat162float(gate[r * gst + c]);
    float u = __bfloat162float(up[r * ust + c]);
    out[i] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
}

// One block per row of x, y (rows, width): out[0] = x + y rounded to bf16 (the residual stream
// as candle's add stores it), out[1] = that sum / rms(sum) * w. out: (2, rows, width).
extern "C" __global__ void add_rms_norm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                             __nv_bfloat16* out, int rows, int width, float eps) {
    const size_t row = blockIdx.x;
    const __nv_bfloat16* xr = x + row * width;
    const __nv_bfloat16* yr = y + row * width;
    __nv_bfloat16* sr = out + row * width;
    __nv_bfloat16* nr = out + ((size_t)rows + row) * width;
    __shared__ float partial[THREADS / 32];
    float squares = 0.f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        __nv_bfloat16 s = __float2bfloat16(__bfloat162float(xr[c]) + __bfloat162float(yr[c]));
        sr[c] = s;
        float v = __bfloat162float(s);
        squares += v * v;
    }
    squares = warp_sum(squares);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = squares;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < THREADS / 32; i++) total += partial[i];
    const float inv = rsqrtf(total / width + eps);
    // Each thread reads back only the sums it wrote.
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        nr[c] = __float2bfloat16(__bfloat162float(sr[c]) * inv * __bfloat162float(w[c]));
}
