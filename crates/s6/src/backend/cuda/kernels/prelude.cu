// Included first in every kernel module. S6_PDL_ENTRY() opens every kernel: with programmatic
// dependent launch (Hopper and newer; crates/s6/src/backend/cuda/mod.rs, `launch!`) a kernel may
// be scheduled while the previous one in the stream is still running, hiding the launch latency
// that bounds small-batch decoding. It first lets the next kernel be scheduled too, then waits
// until the previous kernel has finished and its writes are visible: nothing of a kernel reads
// or writes global memory before that wait. Without the launch attribute both are no-ops.
// S6_PDL_LAUNCH() and S6_PDL_WAIT() are its two halves, for kernels that do something between
// them: an L2 prefetch of their weights (which cannot see stale data: every SM's writes reach L2,
// the device's point of coherence), and loads of their weights into registers (gemv.cu,
// mixer_step.cu), so that the weight stream overlaps the previous kernel.
//
// Those early loads read only weights, and they are safe because of one rule: a kernel that
// writes weights (the bf16 cast of a weight, the optimizer step) opens with S6_PDL_WAIT() alone,
// never letting its dependents start early. A dependent then starts only after every block of
// it has exited (the implicit trigger), its stores written through to L2, so every kernel after
// it (each starts no earlier than its predecessor) reads the new weights even before its wait.
// Activations and recurrent states are read only after the wait: with early triggers a chain of
// small kernels can all be resident at once, so "the kernel that wrote it ran long ago" is no
// guarantee.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define S6_PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;")
#define S6_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define S6_PDL_LAUNCH() \
    do {                \
    } while (0)
#define S6_PDL_WAIT() \
    do {              \
    } while (0)
#endif
// The launch's dynamic shared memory (shared_mem_bytes) as an array `name` of T (the CPU
// emulation, scripts/emulate/cuda_emu.h, defines it as a static buffer).
#ifndef S6_DYNAMIC_SHARED
#define S6_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
#define S6_PDL_ENTRY()   \
    do {                 \
        S6_PDL_LAUNCH(); \
        S6_PDL_WAIT();   \
    } while (0)

// Thread-block clusters (Hopper and newer; kernels declared with __cluster_dims__(SIZE, 1, 1)):
// this block's rank in its cluster, the cluster barrier in two halves (arrive with release
// semantics, wait with acquire), and the address of a shared variable in another block of the
// cluster (distributed shared memory). SIZE, the cluster's blocks, is for the CPU emulation
// (scripts/emulate/cuda_emu.h), which provides the S6_EMULATE versions.
template <unsigned int SIZE>
__device__ __forceinline__ unsigned int s6_cluster_rank() {
#ifdef S6_EMULATE
    return s6emu_cluster_rank(SIZE);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned int r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
#else
    return 0;
#endif
}
template <unsigned int SIZE>
__device__ __forceinline__ void s6_cluster_arrive() {
#ifdef S6_EMULATE
    s6emu_cluster_arrive(SIZE);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void s6_cluster_wait() {
#ifdef S6_EMULATE
    s6emu_cluster_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
template <unsigned int SIZE>
__device__ __forceinline__ const float* s6_cluster_map(const float* p, unsigned int rank) {
#ifdef S6_EMULATE
    return s6emu_cluster_map(p, rank, SIZE);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned long long q;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(q) : "l"(p), "r"(rank));
    return reinterpret_cast<const float*>(q);
#else
    return p;
#endif
}

// The sum over the cluster's blocks, in rank order, of element i of a shared array at p (the
// same dynamic shared memory offset in every block), after a cluster barrier that published them.
template <unsigned int SIZE>
__device__ __forceinline__ float s6_cluster_sum(const float* p, unsigned int i) {
    float s = 0.0f;
    for (unsigned int q = 0; q < SIZE; ++q) s += s6_cluster_map<SIZE>(p, q)[i];
    return s;
}

// A hint that bytes [p, p + bytes) will be read soon: prefetched into L2, 16 KB per instruction,
// by the calling warp's lanes (call it from one warp; the part of the range in whole aligned
// 16-byte units). For the window between S6_PDL_LAUNCH and S6_PDL_WAIT (see above).
__device__ __forceinline__ void s6_prefetch_l2(const void* p, unsigned long long bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned long long lo = ((unsigned long long)p + 15) & ~15ull;
    const unsigned long long hi = ((unsigned long long)p + bytes) & ~15ull;
    const unsigned long long chunk = 16384;
    for (unsigned long long q = lo + (threadIdx.x % 32) * chunk; q < hi; q += 32 * chunk) {
        const unsigned int len = (unsigned int)(hi - q < chunk ? hi - q : chunk);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(q), "r"(len) : "memory");
    }
#endif
}

// Share `part` of `parts` equal shares of [p, p + bytes) (each a whole number of 16 KB pieces,
// the last shares maybe short or empty), prefetched into L2 by the calling warp: the blocks of a
// grid or of a cluster prefetching one range between them.
__device__ __forceinline__ void s6_prefetch_l2_share(const void* p, unsigned long long bytes, unsigned long long part,
                                                     unsigned long long parts) {
    const unsigned long long per = ((bytes + parts - 1) / parts + 16383) & ~16383ull;
    const unsigned long long lo = part * per;
    if (lo < bytes) s6_prefetch_l2(reinterpret_cast<const unsigned char*>(p) + lo, min(per, bytes - lo));
}

// bf16 values are held as `unsigned short` bit patterns, the upper 16 bits of an f32 (NVRTC gets
// no cuda_bf16.h here). f32 -> bf16 rounds to nearest even (as `s6::backend::bf16_round` on the
// host); NaN stays a (quiet) NaN.
__device__ __forceinline__ unsigned short s6_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float s6_bf16_to_f32(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
// Two floats rounded to bf16 and packed into a 32-bit word (lo in the low half): s6_bf16_lo and
// s6_bf16_hi unpack it. Four values as a uint2 make one 8-byte store.
__device__ __forceinline__ unsigned int s6_bf16_pack2(float lo, float hi) {
    return (unsigned int)s6_f32_to_bf16(lo) | ((unsigned int)s6_f32_to_bf16(hi) << 16);
}
// The two bf16 of a 32-bit word (element 2i in the low half, 2i+1 in the high half) as floats.
__device__ __forceinline__ float s6_bf16_lo(unsigned int u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float s6_bf16_hi(unsigned int u) { return __uint_as_float(u & 0xffff0000u); }
// A float or bf16 bits as a float: the loads of kernels compiled for either storage.
__device__ __forceinline__ float s6_widen(float v) { return v; }
__device__ __forceinline__ float s6_widen(unsigned short h) { return s6_bf16_to_f32(h); }

// Math shared by the scan forward, its backward and the decode step.
__device__ __forceinline__ float s6_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// 2^x on the special-function unit alone (flushes subnormal results to zero: a state decaying
// below 1e-38 is zero either way at fp32 tolerances).
__device__ __forceinline__ float s6_ex2_ftz(float x) {
    float y;
#ifdef S6_EMULATE  // scripts/emulate: the kernels compiled for the CPU, for checking their logic
    y = exp2f(x);
#else
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
#endif
    return y;
}

// 1/x on the special-function unit (subnormals flushed to zero).
__device__ __forceinline__ float s6_rcp_ftz(float x) {
    float y;
#ifdef S6_EMULATE
    y = 1.0f / x;
#else
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
#endif
    return y;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) without branches: the exp on the SFU, and log1p(w)
// for w in [0, 1] as w·Q(w), Q of degree 8 fitted to log1p's relative error (session 13: at most
// 1.9e-7 in fp32 against log1p in f64, about 2 ulp; with the SFU exp's 2^-22, Δ within 5e-7 of
// the exact softplus), so that small Δ (1e-3 .. 1e-1 in trained models) keep their digits.
// libdevice's log1pf cost ~30 instructions and branches per element here.
__device__ __forceinline__ float s6_softplus_fast(float x) {
    const float w = s6_ex2_ftz(-fabsf(x) * 1.4426950408889634f);
    float q = 0.005232690833508968f;
    q = fmaf(q, w, -0.029505228623747826f);
    q = fmaf(q, w, 0.07822594791650772f);
    q = fmaf(q, w, -0.13663245737552643f);
    q = fmaf(q, w, 0.19106008112430573f);
    q = fmaf(q, w, -0.2484298199415207f);
    q = fmaf(q, w, 0.3331909775733948f);
    q = fmaf(q, w, -0.4999949336051941f);
    q = fmaf(q, w, 0.9999999403953552f);
    return fmaf(w, q, fmaxf(x, 0.0f));
}
