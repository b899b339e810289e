// Just enough of CUDA to run s6's kernels on the CPU, for checking their logic (indexing,
// predicates, barriers, the order of phases) where no GPU is at hand: a block's threads are
// std::threads meeting at a std::barrier for __syncthreads, __shared__ variables are function
// statics (one block runs at a time, except in s6emu_launch_concurrent, whose kernels must keep
// their shared memory dynamic: S6_DYNAMIC_SHARED is per block there), and the SFU's approximate
// functions are the libm ones.
// Warp shuffles (xor, broadcast), __syncwarp and the tf32 mma.m16n8k8 are emulated with a barrier
// per warp; other warp-level operations are not.
// Kernels with a grid-wide barrier (layer_step.cu's s6_grid_sync: atomics on global memory and a
// spin on a volatile load) run with s6emu_launch_concurrent: every thread of every block at once;
// kernels of thread-block clusters (a cluster barrier, distributed shared memory) with
// s6emu_launch_cluster, the same with clusters.
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
#include <atomic>
#include <optional>

#define S6_EMULATE 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __shared__ static
// Dynamic shared memory: a pointer to the block's buffer (s6emu_dynamic_shared below): with
// s6emu_launch and s6emu_launch_serial one static 256 KiB for every block (more than any launch of
// s6's asks for; one block runs at a time), with s6emu_launch_concurrent a buffer of each block's.
#define S6_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(s6emu_dynamic_shared())
// The grid barrier's pause between polls (layer_step.cu defines it only for the GPU).
#define S6_SPIN_PAUSE() std::this_thread::yield()
#define __align__(n) __attribute__((aligned(n)))

struct s6emu_dim3 { unsigned int x = 0, y = 0, z = 0; };
inline thread_local s6emu_dim3 threadIdx, blockIdx;
inline s6emu_dim3 gridDim, blockDim;
// One lane's operands of an emulated mma (its A and B fragment registers).
struct s6emu_mma_frag { unsigned int a[4], b[2]; };
// What a block's threads share: its barrier (null in a serial launch), a barrier and 32 exchange
// slots per warp (for the shuffles) and 32 operand slots per warp (for the mma), its dynamic
// shared memory. Every thread of a launch points s6emu_block at its block's.
struct s6emu_block_state {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<unsigned long long> warp_slots;
    std::vector<s6emu_mma_frag> mma_slots;
    unsigned char* dynamic_shared = nullptr;
    // A block with threads `threads` (bar and warps only with `barriers`: not for serial launches).
    s6emu_block_state(unsigned int threads, bool barriers, unsigned char* shared) : dynamic_shared(shared) {
        if (barriers) {
            bar = std::make_unique<std::barrier<>>(threads);
            for (unsigned int w = 0; w * 32 < threads; w++)
                warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w * 32)));
            warp_slots.assign(threads, 0);
            mma_slots.assign((threads + 31) / 32 * 32, s6emu_mma_frag{});
        }
    }
};
inline thread_local s6emu_block_state* s6emu_block = nullptr;
// The 256 KiB that s6emu_launch and s6emu_launch_serial give every block as dynamic shared memory.
alignas(16) inline unsigned char s6emu_static_shared[256 << 10];
inline void* s6emu_dynamic_shared() {
    if (!s6emu_block || !s6emu_block->dynamic_shared) {
        std::fprintf(stderr, "dynamic shared memory outside a launch\n");
        std::abort();
    }
    return s6emu_block->dynamic_shared;
}
inline void __syncthreads() {
    if (!s6emu_block || !s6emu_block->bar) {
        std::fprintf(stderr, "__syncthreads in a kernel launched serially\n");
        std::abort();
    }
    s6emu_block->bar->arrive_and_wait();
}
// Warp shuffles (xor and broadcast), for kernels launched by s6emu_launch or
// s6emu_launch_concurrent whose warps' 32 lanes all take part.
// Each lane posts v, the warp meets at its own barrier, reads the value of lane `from(lane)`,
// and meets again before the slots are reused.
template <typename T, typename From>
T s6emu_warp_exchange(T v, From from) {
    static_assert(sizeof(T) <= sizeof(unsigned long long));
    if (!s6emu_block || s6emu_block->warps.empty()) {
        std::fprintf(stderr, "warp shuffles need s6emu_launch\n");
        std::abort();
    }
    auto& slots = s6emu_block->warp_slots;
    const unsigned t = threadIdx.x, w = t / 32;
    std::memcpy(&slots[t], &v, sizeof(T));
    s6emu_block->warps[w]->arrive_and_wait();
    T out;
    std::memcpy(&out, &slots[w * 32 + (from(t % 32) & 31u)], sizeof(T));
    s6emu_block->warps[w]->arrive_and_wait();
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
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with D = C in place, in the PTX ISA's
// fragments (g = lane / 4, q = lane % 4): a = (A[g][q], A[g+8][q], A[g][q+4], A[g+8][q+4]),
// b = (B[q][g], B[q+4][g]), d = (D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1]). The operands'
// low 13 bits are ignored, as by the tensor cores; the products are summed in double and rounded
// once (the hardware's fp32 accumulation may round differently in the last bits).
inline void s6emu_mma_m16n8k8_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    if (!s6emu_block || s6emu_block->warps.empty()) {
        std::fprintf(stderr, "mma needs s6emu_launch\n");
        std::abort();
    }
    const unsigned t = threadIdx.x, w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    s6emu_mma_frag* const warp = &s6emu_block->mma_slots[w * 32];
    warp[lane] = s6emu_mma_frag{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
    s6emu_block->warps[w]->arrive_and_wait();
    auto val = [](unsigned int bits) {
        float f;
        bits &= 0xffffe000u;
        std::memcpy(&f, &bits, 4);
        return (double)f;
    };
    // A[r][k] and B[k][c] from the lanes holding them.
    auto A = [&](unsigned r, unsigned k) {
        const unsigned src = (r % 8) * 4 + k % 4, i = (r >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0);
        return val(warp[src].a[i]);
    };
    auto B = [&](unsigned k, unsigned c) { return val(warp[c * 4 + k % 4].b[k >= 4 ? 1 : 0]); };
    float out[4];
    for (int i = 0; i < 4; i++) {
        const unsigned r = g + (i >= 2 ? 8 : 0), c = 2 * q + (i & 1);
        double s = d[i];
        for (unsigned k = 0; k < 8; k++) s += A(r, k) * B(k, c);
        out[i] = (float)s;
    }
    s6emu_block->warps[w]->arrive_and_wait();
    for (int i = 0; i < 4; i++) d[i] = out[i];
}
inline void __syncwarp(unsigned = 0xffffffffu) {
    if (s6emu_block && !s6emu_block->warps.empty()) s6emu_block->warps[threadIdx.x / 32]->arrive_and_wait();
}

struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
template <typename T>
T __ldg(const T* p) { return *p; }
// Loads from L2 (never a stale L1 line): plain loads here.
template <typename T>
T __ldcg(const T* p) { return *p; }
// Device-scope atomics and fences on global memory, for the grid barrier (layer_step.cu). Other
// threads read the barrier's words with volatile loads: a race in C++ terms, but on x86 the
// aligned 4-byte loads see the atomics' stores, which is all the spin needs.
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v, std::memory_order_seq_cst);
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).exchange(v, std::memory_order_seq_cst);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned int) {}
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
    s6emu_block_state block(threads, false, s6emu_static_shared);
    s6emu_block_state* const outer = s6emu_block;
    s6emu_block = &block;
    for (unsigned int z = 0; z < grid.z; z++)
        for (unsigned int y = 0; y < grid.y; y++)
            for (unsigned int x = 0; x < grid.x; x++)
                for (unsigned int t = 0; t < threads; t++) {
                    threadIdx = {t, 0, 0};
                    blockIdx = {x, y, z};
                    kernel();
                }
    s6emu_block = outer;
}

// Runs kernel() over a grid of blocks of block.x × block.y threads (threadIdx.x the faster), one
// block at a time. Warp-level operations need one-dimensional blocks (the warp helpers above index
// lanes by threadIdx.x).
inline void s6emu_launch_2d(s6emu_dim3 grid, s6emu_dim3 block_dim, const std::function<void()>& kernel) {
    const unsigned int threads = block_dim.x * block_dim.y;
    gridDim = grid;
    blockDim = {block_dim.x, block_dim.y, 1};
    for (unsigned int z = 0; z < grid.z; z++)
        for (unsigned int y = 0; y < grid.y; y++)
            for (unsigned int x = 0; x < grid.x; x++) {
                s6emu_block_state block(threads, true, s6emu_static_shared);
                std::vector<std::thread> ts;
                for (unsigned int t = 0; t < threads; t++)
                    ts.emplace_back([&, t] {
                        s6emu_block = &block;
                        threadIdx = {t % block_dim.x, t / block_dim.x, 0};
                        blockIdx = {x, y, z};
                        kernel();
                    });
                for (auto& t : ts) t.join();
            }
}

// The same with one-dimensional blocks of `threads` threads.
inline void s6emu_launch(s6emu_dim3 grid, unsigned int threads, const std::function<void()>& kernel) {
    s6emu_launch_2d(grid, {threads, 1, 1}, kernel);
}

// Runs kernel() over a grid of blocks of `threads` threads, every thread of every block at once
// (grid.x * grid.y * grid.z * threads std::threads: for small grids), each block with its own
// barriers and `dynamic_shared_bytes` of dynamic shared memory (an allocation of its own, rounded
// up to 16 bytes, so that a sanitizer sees accesses past it; filled with 0xff bytes, NaN as floats,
// so that a read of an element never written shows). For kernels whose blocks wait for each other
// (a grid barrier); their __shared__ statics would be shared by all blocks.
// Thread-block clusters (s6emu_launch_cluster): clusters of `size` consecutive blocks along x,
// a barrier each over all their threads, every block's dynamic shared memory by linear block
// index (distributed shared memory).
struct s6emu_cluster_state {
    unsigned int size = 0;
    std::vector<std::unique_ptr<std::barrier<>>> bars;
    std::vector<unsigned char*> shared;
};
inline s6emu_cluster_state s6emu_clusters;
inline thread_local std::optional<std::barrier<>::arrival_token> s6emu_cluster_token;
inline unsigned int s6emu_block_linear() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }
inline void s6emu_cluster_check(unsigned int size) {
    if (s6emu_clusters.size != size) {
        std::fprintf(stderr, "a kernel of clusters of %u blocks launched without s6emu_launch_cluster(%u)\n", size, size);
        std::abort();
    }
}
inline unsigned int s6emu_cluster_rank(unsigned int size) {
    s6emu_cluster_check(size);
    return blockIdx.x % size;
}
inline void s6emu_cluster_arrive(unsigned int size) {
    s6emu_cluster_check(size);
    if (s6emu_cluster_token) {
        std::fprintf(stderr, "cluster barrier arrived at twice without a wait\n");
        std::abort();
    }
    s6emu_cluster_token.emplace(s6emu_clusters.bars[s6emu_block_linear() / size]->arrive());
}
inline void s6emu_cluster_wait() {
    if (!s6emu_cluster_token) {
        std::fprintf(stderr, "cluster barrier waited for without an arrive\n");
        std::abort();
    }
    s6emu_clusters.bars[s6emu_block_linear() / s6emu_clusters.size]->wait(std::move(*s6emu_cluster_token));
    s6emu_cluster_token.reset();
}
// The address of *p (in this block's dynamic shared memory) in block `rank` of this cluster.
template <typename T>
T* s6emu_cluster_map(T* p, unsigned int rank, unsigned int size) {
    s6emu_cluster_check(size);
    const unsigned int self = s6emu_block_linear();
    if (rank >= size) {
        std::fprintf(stderr, "cluster rank %u of a cluster of %u\n", rank, size);
        std::abort();
    }
    const size_t off = reinterpret_cast<const unsigned char*>(p) - s6emu_clusters.shared[self];
    return reinterpret_cast<T*>(s6emu_clusters.shared[self - self % size + rank] + off);
}

inline void s6emu_launch_concurrent(s6emu_dim3 grid, unsigned int threads, size_t dynamic_shared_bytes,
                                    const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    const size_t nblocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<std::vector<float4>> shared(nblocks);
    std::vector<std::unique_ptr<s6emu_block_state>> blocks;
    s6emu_clusters.shared.clear();
    for (size_t b = 0; b < nblocks; b++) {
        shared[b].resize(std::max<size_t>((dynamic_shared_bytes + 15) / 16, 1));
        std::memset(shared[b].data(), 0xff, shared[b].size() * sizeof(float4));
        blocks.push_back(std::make_unique<s6emu_block_state>(threads, true,
                                                             reinterpret_cast<unsigned char*>(shared[b].data())));
        s6emu_clusters.shared.push_back(reinterpret_cast<unsigned char*>(shared[b].data()));
    }
    std::vector<std::thread> ts;
    size_t b = 0;
    for (unsigned int z = 0; z < grid.z; z++)
        for (unsigned int y = 0; y < grid.y; y++)
            for (unsigned int x = 0; x < grid.x; x++, b++)
                for (unsigned int t = 0; t < threads; t++)
                    ts.emplace_back([&, x, y, z, t, block = blocks[b].get()] {
                        s6emu_block = block;
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        kernel();
                    });
    for (auto& t : ts) t.join();
}

// s6emu_launch_concurrent for a kernel of clusters of `cluster` blocks along x (grid.x a multiple
// of it): the cluster barrier and distributed shared memory above.
inline void s6emu_launch_cluster(s6emu_dim3 grid, unsigned int threads, size_t dynamic_shared_bytes,
                                 unsigned int cluster, const std::function<void()>& kernel) {
    if (cluster == 0 || grid.x % cluster != 0) {
        std::fprintf(stderr, "grid.x %u is not a multiple of the cluster size %u\n", grid.x, cluster);
        std::abort();
    }
    s6emu_clusters.size = cluster;
    s6emu_clusters.bars.clear();
    const size_t nclusters = (size_t)grid.x / cluster * grid.y * grid.z;
    for (size_t c = 0; c < nclusters; c++)
        s6emu_clusters.bars.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)cluster * threads));
    s6emu_launch_concurrent(grid, threads, dynamic_shared_bytes, kernel);
    s6emu_clusters.size = 0;
}
