// A CPU stand-in for the CUDA features squish's kernels use, so their indexing and arithmetic
// can be checked where no GPU is (tests/cuda-emulation/check.py). Each block runs alone; its
// threads are fibers on one OS thread, switched at barriers (__syncthreads, __syncwarp, warp
// shuffles), so a kernel's shared memory can be plain statics. What it does not model: memory
// ordering between blocks, divergent warps, timing, and the rounding of real tensor cores (an
// MMA here sums in f32 in k order).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct float2 {
    float x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- bf16 and f16 ----
struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 v) {
    uint32_t u = (uint32_t)v.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
struct __half {
    _Float16 v;
};
struct __half2 {
    __half x, y;
};
inline float __half2float(__half h) { return (float)h.v; }
inline float2 __half22float2(__half2 h) { return {(float)h.x.v, (float)h.y.v}; }

inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::fmaxf;
using std::min;

// ---- threads as fibers ----
namespace emu {
constexpr size_t STACK = 64 * 1024;
struct Fiber {
    ucontext_t ctx;
    dim3 thread;
    bool done = false;
};
struct Barrier {
    int need = 0, arrived = 0;
    unsigned generation = 0;
};
struct Block {
    dim3 grid, block, index;
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    int current = 0;
    Barrier all;
    std::vector<Barrier> warps;
    std::vector<float> lanes;  // one slot per thread, for shuffles
    std::function<void()> body;
};
inline Block*& block() {
    static Block* b = nullptr;
    return b;
}
inline void yield() {
    Block* b = block();
    swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
}
inline void wait(Barrier& bar) {
    unsigned gen = bar.generation;
    if (++bar.arrived == bar.need) {
        bar.arrived = 0;
        bar.generation++;
        return;
    }
    while (bar.generation == gen) yield();
}
inline int flat() {
    const Fiber& f = block()->fibers[block()->current];
    const dim3& d = block()->block;
    return f.thread.x + d.x * (f.thread.y + d.y * f.thread.z);
}
inline void entry() {
    Block* b = block();
    b->body();
    b->fibers[b->current].done = true;
    swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
}
// Runs `body` for every thread of every block of the grid, one block at a time.
inline void launch(dim3 grid, dim3 threads, std::function<void()> body) {
    const int n = threads.x * threads.y * threads.z;
    std::unique_ptr<char[]> stacks(new char[STACK * n]);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                Block b;
                b.grid = grid;
                b.block = threads;
                b.index = {bx, by, bz};
                b.fibers.resize(n);
                b.all.need = n;
                b.warps.resize((n + 31) / 32);
                for (int w = 0; w < (int)b.warps.size(); w++) b.warps[w].need = std::min(32, n - 32 * w);
                b.lanes.resize(n);
                b.body = body;
                block() = &b;
                for (int i = 0; i < n; i++) {
                    Fiber& f = b.fibers[i];
                    f.thread = {i % threads.x, (i / threads.x) % threads.y, i / (threads.x * threads.y)};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = stacks.get() + STACK * i;
                    f.ctx.uc_stack.ss_size = STACK;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, entry, 0);
                }
                for (bool busy = true; busy;) {
                    busy = false;
                    for (int i = 0; i < n; i++) {
                        if (b.fibers[i].done) continue;
                        busy = true;
                        b.current = i;
                        swapcontext(&b.scheduler, &b.fibers[i].ctx);
                    }
                }
                block() = nullptr;
            }
}
}  // namespace emu

#define threadIdx (dim3{emu::block()->fibers[emu::block()->current].thread})
#define blockIdx (emu::block()->index)
#define blockDim (emu::block()->block)
#define gridDim (emu::block()->grid)

inline void __syncthreads() { emu::wait(emu::block()->all); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::block()->warps[emu::flat() / 32]); }
inline float __shfl_xor_sync(unsigned, float v, int mask) {
    emu::Block* b = emu::block();
    int me = emu::flat();
    b->lanes[me] = v;
    __syncwarp();
    float other = b->lanes[(me & ~31) | ((me & 31) ^ mask)];
    __syncwarp();
    return other;
}

// ---- WMMA: every lane holds the whole 16 x 16 tile (the warp's lanes agree) ----
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    float v[16][16];
};
template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const __nv_bfloat16* p, unsigned ld) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.v[r][c] = __bfloat162float(std::is_same<Layout, row_major>::value ? p[r * ld + c] : p[c * ld + r]);
    __syncwarp();
}
template <typename F>
inline void fill_fragment(F& f, float x) {
    for (auto& row : f.v)
        for (float& e : row) e = x;
}
template <typename A, typename B, typename C>
inline void mma_sync(C& d, const A& a, const B& b, const C& c) {
    C out;
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 16; col++) {
            float s = c.v[r][col];
            for (int k = 0; k < 16; k++) s += a.v[r][k] * b.v[k][col];
            out.v[r][col] = s;
        }
    d = out;
}
template <typename F>
inline void store_matrix_sync(float* p, const F& f, unsigned ld, layout_t layout) {
    __syncwarp();
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) (layout == mem_row_major ? p[r * ld + c] : p[c * ld + r]) = f.v[r][c];
    __syncwarp();
}
}  // namespace wmma
}  // namespace nvcuda
