// Entry points for check.py: each runs one of squish's CUDA kernels (included as they are) on
// the CPU through emu.h, with the launch shapes the Rust host code uses. One translation unit
// per .cu file (build with -DKERNEL_FILE=...), since the files reuse macro names.
#include "emu.h"
#include KERNEL_FILE

extern "C" {
#if defined(EMU_ATTENTION)
void emu_decode_attention(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* bias, const __nv_bfloat16* cos_t,
                          const __nv_bfloat16* sin_t, __nv_bfloat16* out, float* part, const Caches* c, int rows, int s0, int qst,
                          int kst, int vst, int heads, int kv_heads, int d, int cap, float scale, int splits, int span) {
    emu::launch({(unsigned)rows, (unsigned)kv_heads, (unsigned)splits}, {32 * WARPS}, [&] {
        decode_attention_bf16(q, k, v, bias, cos_t, sin_t, out, part, *c, s0, qst, kst, vst, heads, kv_heads, d, cap, scale, splits, span);
    });
    if (splits > 1)
        emu::launch({(unsigned)rows, (unsigned)heads, 1}, {(unsigned)d}, [&] { decode_attention_merge(part, out, s0, heads, kv_heads, d, splits); });
}
#elif defined(EMU_PREFILL)
// bias: the joint q|k|v bias, or null (the host passes its three pieces).
void emu_prefill_attention(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* bias,
                           const __nv_bfloat16* cos_t, const __nv_bfloat16* sin_t, __nv_bfloat16* kc, __nv_bfloat16* vc,
                           __nv_bfloat16* out, int qst, int kst, int vst, int heads, int kv_heads, int d, int cap, int start, int t) {
    const __nv_bfloat16* kb = bias ? bias + heads * d : nullptr;
    const __nv_bfloat16* vb = bias ? bias + (heads + kv_heads) * d : nullptr;
    emu::launch({(unsigned)t, (unsigned)kv_heads, 1}, {(unsigned)(d / 2)},
                [&] { prefill_store_kv(k, v, kb, vb, cos_t, sin_t, kc, vc, kst, vst, d, cap, start); });
    emu::launch({(unsigned)((t + BQ - 1) / BQ), (unsigned)heads, 1}, {32 * PF_WARPS}, [&] {
        prefill_attention_bf16(q, bias, cos_t, sin_t, kc, vc, out, qst, heads, kv_heads, d, cap, start, t, 1.f / std::sqrt((float)d));
    });
}
#elif defined(EMU_LOWBIT)
// bits: 3 or 2; codes then (INT2) the codebook, as the host uploads them.
void emu_lowbit_gemv(int bits, const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k, int g,
                     int t) {
    for (int t0 = 0; t0 < t; t0 += LB_ROWS) {
        int rows = t - t0 < LB_ROWS ? t - t0 : LB_ROWS;
        emu::launch({(unsigned)((n + LB_WARPS - 1) / LB_WARPS)}, {32 * LB_WARPS}, [&] {
            if (bits == 3) int3_gemv_bf16(codes, params, x, y, n, k, g, t0, rows);
            else int2_gemv_bf16(codes, params, x, y, n, k, g, t0, rows);
        });
    }
}
void emu_lowbit_dequant(int bits, const uint8_t* codes, const __half2* params, __nv_bfloat16* w, int n, int k, int g) {
    emu::launch({(unsigned)n, (unsigned)((k / 8 + 255) / 256)}, {256}, [&] {
        if (bits == 3) int3_dequant_bf16(codes, params, w, n, k, g);
        else int2_dequant_bf16(codes, params, w, n, k, g);
    });
}
void emu_lowbit_mma(int bits, const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k, int g,
                    int t, int splits) {
    std::vector<float> part(splits > 1 ? (size_t)splits * t * n : 1);
    emu::launch({(unsigned)((n + MMA_N - 1) / MMA_N), (unsigned)splits}, {MMA_N / 16 * 32}, [&] {
        if (bits == 3) int3_mma_bf16(codes, params, x, y, part.data(), n, k, g, t, splits);
        else int2_mma_bf16(codes, params, x, y, part.data(), n, k, g, t, splits);
    });
    if (splits > 1) emu::launch({(unsigned)((t * n + 255) / 256)}, {256}, [&] { mma_reduce(part.data(), y, n, t, splits); });
}
void emu_rotate(const __nv_bfloat16* x, const float* signs, __nv_bfloat16* out, int t, int k, int hb, float scale) {
    emu::launch({(unsigned)t, (unsigned)(k / hb)}, {(unsigned)(hb / 2)}, [&] { rotate_bf16(x, signs, out, k, hb, scale); });
}
#elif defined(EMU_FUSED)
void emu_silu_mul(const __nv_bfloat16* gate, const __nv_bfloat16* up, __nv_bfloat16* out, int rows, int width, int gst, int ust) {
    emu::launch({(unsigned)((rows * width + THREADS - 1) / THREADS)}, {THREADS}, [&] { silu_mul_bf16(gate, up, out, rows, width, gst, ust); });
}
void emu_add_rms_norm(const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w, __nv_bfloat16* out, int rows, int width, float eps) {
    emu::launch({(unsigned)rows}, {THREADS}, [&] { add_rms_norm_bf16(x, y, w, out, rows, width, eps); });
}
#elif defined(EMU_QUANT)
void emu_int4_gemv(const uint8_t* codes, const __half2* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k, int g, int t) {
    for (int t0 = 0; t0 < t; t0 += ROWS) {
        int rows = t - t0 < ROWS ? t - t0 : ROWS;
        emu::launch({(unsigned)((n + WARPS - 1) / WARPS)}, {32 * WARPS}, [&] { int4_gemv_bf16(codes, params, x, y, n, k, g, t0, rows); });
    }
}
void emu_int8_gemv(const int8_t* codes, const __half* scales, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k, int g, int t) {
    for (int t0 = 0; t0 < t; t0 += ROWS) {
        int rows = t - t0 < ROWS ? t - t0 : ROWS;
        emu::launch({(unsigned)((n + WARPS - 1) / WARPS)}, {32 * WARPS}, [&] { int8_gemv_bf16(codes, scales, x, y, n, k, g, t0, rows); });
    }
}
// bits: 4 or 8 (codes i8, params the scales).
void emu_mma(int bits, const uint8_t* codes, const void* params, const __nv_bfloat16* x, __nv_bfloat16* y, int n, int k, int g, int t,
             int splits) {
    std::vector<float> part(splits > 1 ? (size_t)splits * t * n : 1);
    emu::launch({(unsigned)((n + MMA_N - 1) / MMA_N), (unsigned)splits}, {MMA_N / 16 * 32}, [&] {
        if (bits == 4) int4_mma_bf16(codes, (const __half2*)params, x, y, part.data(), n, k, g, t, splits);
        else int8_mma_bf16((const int8_t*)codes, (const __half*)params, x, y, part.data(), n, k, g, t, splits);
    });
    if (splits > 1) emu::launch({(unsigned)((t * n + 255) / 256)}, {256}, [&] { mma_reduce(part.data(), y, n, t, splits); });
}
#endif
}
