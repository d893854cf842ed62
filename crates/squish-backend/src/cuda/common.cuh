// Small device helpers the kernel files share (each .cu is its own PTX module).
#pragma once
#include <cuda_bf16.h>

// The sum of v over the warp's 32 lanes, in every lane.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// 8 consecutive bf16 values (16-byte aligned) as floats.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* out) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// row[i] plus bias[i] as candle's bf16 add stores it (the sum rounded to bf16), as a float;
// row[i] where there is no bias (null): q/k/v biases (Qwen2) folded into the attention kernels.
__device__ __forceinline__ float biased(const __nv_bfloat16* row, const __nv_bfloat16* bias, int i) {
    const float v = __bfloat162float(row[i]);
    return bias ? __bfloat162float(__float2bfloat16(v + __bfloat162float(bias[i]))) : v;
}
