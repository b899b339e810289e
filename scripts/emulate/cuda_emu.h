// Just enough of CUDA to run s6's kernels on the CPU, for checking their logic (indexing,
// predicates, barriers, the order of phases) where no GPU is at hand: a block's threads are
// std::threads meeting at a std::barrier for __syncthreads, __shared__ variables are function
// statics (one block runs at a time), and the SFU's approximate functions are the libm ones.
// Warp shuffles (xor, broadcast) and __syncwarp are emulated with a barrier per warp; other warp-level operations are not.
// Not a timing tool.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>

#define S6_EMULATE 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
// Dynamic shared memory: a static 256 KiB (more than any launch of s6's asks for).
#define S6_DYNAMIC_SHARED(T, name) alignas(16) static T name[(256 << 10) / sizeof(T)]
#define __align__(n) __attribute__((aligned(n)))

struct s6emu_dim3 { unsigned int x = 0, y = 0, z = 0; };
inline thread_local s6emu_dim3 threadIdx, blockIdx;
inline s6emu_dim3 gridDim, blockDim;
inline std::barrier<>* s6emu_block_barrier = nullptr;
inline void __syncthreads() {
    if (!s6emu_block_barrier) {
        std::fprintf(stderr, "__syncthreads in a kernel launched serially\n");
        std::abort();
    }
    s6emu_block_barrier->arrive_and_wait();
}
// Warp shuffles (xor and broadcast), for kernels launched by s6emu_launch whose warps' 32 lanes
// all take part.
inline std::vector<std::barrier<>*> s6emu_warp_barriers;
inline std::vector<unsigned long long> s6emu_warp_slots;
// Each lane posts v, the warp meets at its own barrier, reads the value of lane `from(lane)`,
// and meets again before the slots are reused.
template <typename T, typename From>
T s6emu_warp_exchange(T v, From from) {
    static_assert(sizeof(T) <= sizeof(unsigned long long));
    if (s6emu_warp_barriers.empty()) {
        std::fprintf(stderr, "warp shuffles need s6emu_launch\n");
        std::abort();
    }
    const unsigned t = threadIdx.x, w = t / 32;
    std::memcpy(&s6emu_warp_slots[t], &v, sizeof(T));
    s6emu_warp_barriers[w]->arrive_and_wait();
    T out;
    std::memcpy(&out, &s6emu_warp_slots[w * 32 + (from(t % 32) & 31u)], sizeof(T));
    s6emu_warp_barriers[w]->arrive_and_wait();
    return out;
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    return s6emu_warp_exchange(v, [&](unsigned lane) { return lane ^ (unsigned)lane_mask; });
}
// Broadcast from lane `src`.
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
    return s6emu_warp_exchange(v, [&](unsigned) { return (unsigned)src; });
}
inline void __syncwarp(unsigned = 0xffffffffu) {
    if (!s6emu_warp_barriers.empty()) s6emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}

struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
template <typename T>
T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
using std::min;
using std::max;

// Runs kernel() for every thread of the grid one after another, on this thread: for kernels
// without __syncthreads (it aborts here), much faster than a thread per CUDA thread.
inline void s6emu_launch_serial(s6emu_dim3 grid, unsigned int threads, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    s6emu_block_barrier = nullptr;
    for (unsigned int z = 0; z < grid.z; z++)
        for (unsigned int y = 0; y < grid.y; y++)
            for (unsigned int x = 0; x < grid.x; x++)
                for (unsigned int t = 0; t < threads; t++) {
                    threadIdx = {t, 0, 0};
                    blockIdx = {x, y, z};
                    kernel();
                }
}

// Runs kernel() over a grid of blocks of `threads` threads, one block at a time.
inline void s6emu_launch(s6emu_dim3 grid, unsigned int threads, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    for (unsigned int z = 0; z < grid.z; z++)
        for (unsigned int y = 0; y < grid.y; y++)
            for (unsigned int x = 0; x < grid.x; x++) {
                std::barrier<> bar(threads);
                s6emu_block_barrier = &bar;
                std::vector<std::unique_ptr<std::barrier<>>> warps;
                for (unsigned int w = 0; w * 32 < threads; w++)
                    warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w * 32)));
                s6emu_warp_barriers.clear();
                for (auto& b : warps) s6emu_warp_barriers.push_back(b.get());
                s6emu_warp_slots.assign(threads, 0);
                std::vector<std::thread> ts;
                for (unsigned int t = 0; t < threads; t++)
                    ts.emplace_back([&, t] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        kernel();
                    });
                for (auto& t : ts) t.join();
                s6emu_warp_barriers.clear();
            }
}
