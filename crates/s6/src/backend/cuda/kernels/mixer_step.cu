// The fused single-token Mamba mixer step (decoding, seqlen = 1; crates/s6/src/backend/cuda/
// mixer_step.rs), after the conv (conv.cu's forward, without its state update) and x_proj:
//
//   s6_mixer_step_scan: per (sequence, channel), S6_MS_G lanes: dt = dt_proj[c, :] · δ (written
//     without its bias, as the op-by-op path does; or, with dt_given, read from delta_out, where
//     a product for the whole batch wrote it), Δ = softplus(dt + bias), the conv window
//     shifted by one with x appended, h = exp(Δ·A) h + Δ·B·u over d_state,
//     y = (C·h + D·u) · silu(z). Two entries of one body: s6_mixer_step_scan_b1 for one sequence
//     (its weights loaded before the PDL wait, below) and s6_mixer_step_scan for more.
//
// Semantics as s6_conv_state_update (elementwise.cu) and the scan (scan.cu), whose helpers s6_silu
// and s6_softplus this file uses (the sources are compiled together). Layouts: xz [batch, ldxz]
// with x at column 0 and z at column di; conv state [batch, k - 1, di]; ssm state [batch, di, n];
// xdbl [batch, width] = [δ (r) | B (n) | C (n)].

// S6_MS_G lanes per channel (2 of 16 states each), S6_MS_CPB channels per block. (A 2-lane twin
// for large batches, session 7, measured slower on an H100 in session 8: 130M at 16 and 128
// sequences 20,105 and 90,751 tok/s against 22,021 and 97,845; 1.4B at 128, 20,517 against
// 21,189. Removed.)
#define S6_MS_G 8
#define S6_MS_THREADS 256
#define S6_MS_CPB (S6_MS_THREADS / S6_MS_G)

// With EARLY (the batch-1 entry), registers for the weights a lane loads before the PDL wait
// (weights only: prelude.cu): its dt_proj row entries i = part + S6_MS_G * q for q < S6_MS_RPRE
// (dt_rank up to 128; the rest, if any, after the wait) and its A entries s = part + S6_MS_G * q
// (d_state up to MAX_D_STATE = 64); the recurrent state is then read right after the wait, all
// at once. Measured on an H100 (session 9): 7.5 → 5.6 µs per call alone at 130M batch 1, 10.5
// → 6.1 µs at 1.4B; but the registers (32 → 80) are held by blocks resident ahead of their turn,
// and at batch 8 (384 blocks, every SM's register file) that slowed decoding, so larger batches
// use the plain loops.
#define S6_MS_RPRE 16
#define S6_MS_SPRE 8

// x_proj fused into the batch-1 scan step over a thread-block cluster (s6_mixer_step_xscan_b1,
// Hopper and newer). xdbl = x_proj · u needs every channel's u, and every block of the scan step
// needs all of xdbl (δ for its channels' dt, B and C): as separate kernels that is a GEMV and a
// kernel boundary per layer, paid in latency at batch 1. Here the grid is cut into clusters of
// S6_XS_CLUSTER blocks; block j of a cluster sums x_proj over its slice j of d_inner (bf16
// weights, u rounded to bf16, fp32 sums: the GEMV's products), writes the width partial sums to
// its shared memory, and after a cluster barrier every block adds the cluster's partials, in rank
// order, from the others' shared memory (distributed shared memory): each cluster computes the
// whole x_proj (the weights come from L2 after the first cluster), and its blocks go on to the
// scan step of their own channels. Deterministic; the sums' order differs from the GEMV's, so
// xdbl differs from the unfused step's in the last bits.
#define S6_XS_CLUSTER 8
// 16-byte weight vectors per lane loaded before the PDL wait (the rest after it).
#define S6_XS_PRE 12
// The rest in rounds of S6_XS_BATCH vectors per lane (whole rows), loads first.
#define S6_XS_BATCH 4

// A block's part of x_proj: columns [k0, k0 + len) of d_inner (len a multiple of 8 but maybe
// the last's, empty for ranks past d_inner), nvec = len / 8 weight vectors per row; this warp's
// rows are w = warp + warps · i for i < rows. Lane l takes vectors l + 32 j of each row, j < VJ
// (VJ ≥ nvec / 32, a template parameter so that the loops' indices are constants).
struct S6XsSlice {
    unsigned int k0, len, nvec, rows;
};
__device__ __forceinline__ S6XsSlice s6_xs_slice(unsigned int di, unsigned int width) {
    S6XsSlice s;
    const unsigned int per = ((di + S6_XS_CLUSTER - 1) / S6_XS_CLUSTER + 7) / 8 * 8;
    s.k0 = min(di, s6_cluster_rank<S6_XS_CLUSTER>() * per);
    s.len = min(per, di - s.k0);
    s.nvec = s.len / 8;
    const unsigned int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    s.rows = width > warp ? (width - warp + nwarps - 1) / nwarps : 0;
    return s;
}
// Rows of weights per warp loaded before the PDL wait: S6_XS_PRE vectors per lane.
template <int VJ>
struct S6XsPre {
    static constexpr int ROWS = S6_XS_PRE / VJ > 0 ? S6_XS_PRE / VJ : 1;
    uint4 w[ROWS][VJ];
};
// This warp's row i of the slice, as 16-byte vectors.
__device__ __forceinline__ const uint4* s6_xs_row_ptr(const S6XsSlice& xs, const unsigned short* __restrict__ wx,
                                                     unsigned int di, unsigned int i) {
    const unsigned int w = threadIdx.x / 32 + (blockDim.x / 32) * i;
    return reinterpret_cast<const uint4*>(wx + (unsigned long long)w * di + xs.k0);
}
// Row i's VJ weight vectors of this lane (zeros past the rows or the slice).
template <int VJ>
__device__ __forceinline__ void s6_xs_load_row(const S6XsSlice& xs, const unsigned short* __restrict__ wx,
                                               unsigned int di, unsigned int i, uint4 (&wv)[VJ]) {
    const uint4* row = s6_xs_row_ptr(xs, wx, di, i);
#pragma unroll
    for (int j = 0; j < VJ; ++j) {
        const unsigned int v = threadIdx.x % 32 + 32 * j;
        wv[j] = i < xs.rows && v < xs.nvec ? __ldg(row + v) : make_uint4(0u, 0u, 0u, 0u);
    }
}
// Weights only, before the PDL wait (prelude.cu): the first rows into registers, the rest's
// 128-byte lines into L2.
template <int VJ>
__device__ __forceinline__ void s6_xs_preload(const S6XsSlice& xs, const unsigned short* __restrict__ wx,
                                              unsigned int di, S6XsPre<VJ>& pre) {
#pragma unroll
    for (int i = 0; i < S6XsPre<VJ>::ROWS; ++i) s6_xs_load_row<VJ>(xs, wx, di, i, pre.w[i]);
#if defined(__CUDA_ARCH__) && !defined(S6_EMULATE)
    for (unsigned int i = S6XsPre<VJ>::ROWS; i < xs.rows; ++i) {
        const uint4* row = s6_xs_row_ptr(xs, wx, di, i);
#pragma unroll
        for (int j = 0; j < VJ; ++j) {
            const unsigned int v = threadIdx.x % 32 + 32 * j;
            if (v < xs.nvec && v % 8 == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + v));
        }
    }
#endif
}
// Row i's sum over the slice (u's slice su, rounded to bf16) into partial[w] (warp-uniform i).
template <int VJ>
__device__ __forceinline__ void s6_xs_row(const S6XsSlice& xs, unsigned int i, const uint4 (&wv)[VJ],
                                          const float* su, float* partial) {
    float cur = 0.0f;
#pragma unroll
    for (int j = 0; j < VJ; ++j) {
        const unsigned int v = threadIdx.x % 32 + 32 * j;
        if (v < xs.nvec) cur = s6_fma_bf16x8(wv[j], su + 8 * v, cur);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) cur += __shfl_xor_sync(0xffffffffu, cur, off);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32 + (blockDim.x / 32) * i] = cur;
}
// x_proj for one sequence into `x` (shared memory, width floats) of every block of the cluster;
// block 0 of the grid also writes it to xdbl_out. Dynamic shared memory: x [width], partial
// [width], u's slice [len]. Called by every thread of every block (cluster barriers); leaves a
// cluster barrier arrived, which the kernel's end waits for.
template <int VJ>
__device__ __forceinline__ void s6_xs_xproj(const S6XsSlice& xs, const unsigned short* __restrict__ wx,
                                            const float* __restrict__ u, unsigned int di, unsigned int width,
                                            const S6XsPre<VJ>& pre, float* x, float* __restrict__ xdbl_out) {
    float* partial = x + width;
    float* su = partial + width;
    for (unsigned int i = threadIdx.x; i < xs.len; i += blockDim.x) su[i] = s6_rbf16(u[xs.k0 + i]);
    __syncthreads();
    constexpr int PR = S6XsPre<VJ>::ROWS;
#pragma unroll
    for (int i = 0; i < PR; ++i)
        if ((unsigned int)i < xs.rows) s6_xs_row<VJ>(xs, i, pre.w[i], su, partial);
    constexpr int RB = S6_XS_BATCH / VJ > 0 ? S6_XS_BATCH / VJ : 1;
    for (unsigned int i0 = PR; i0 < xs.rows; i0 += RB) {
        uint4 wv[RB][VJ];
#pragma unroll
        for (int q = 0; q < RB; ++q) s6_xs_load_row<VJ>(xs, wx, di, i0 + q, wv[q]);
#pragma unroll
        for (int q = 0; q < RB; ++q)
            if (i0 + q < xs.rows) s6_xs_row<VJ>(xs, i0 + q, wv[q], su, partial);
    }
    // Every block's partials written (the arrive releases them, the wait acquires the others').
    __syncthreads();
    s6_cluster_arrive<S6_XS_CLUSTER>();
    s6_cluster_wait();
    for (unsigned int w = threadIdx.x; w < width; w += blockDim.x) {
        const float sum = s6_cluster_sum<S6_XS_CLUSTER>(partial, w);
        x[w] = sum;
        if (blockIdx.x == 0 && blockIdx.y == 0) xdbl_out[w] = sum;
    }
    // Done with the other blocks' shared memory.
    s6_cluster_arrive<S6_XS_CLUSTER>();
}

// The next kernels' weights into L2 (`next`, `next_bytes`: out_proj's, for one sequence; `next2`:
// the next block's in_proj, where both fit the L2 easily): each block's first warp prefetches its
// share of a range in 16 KB pieces. At batch 1 the scan step reads little from DRAM while it runs,
// and out_proj after it streams its whole weight matrix (at 1.4B 16.8 MB, a third of an H100's
// L2): prefetched, that stream overlaps this kernel instead of following it.
// `next_mode` 1 issues it before the PDL wait (while earlier kernels may still run: weights only,
// prelude.cu), 2 once the step's own loads are issued (ptxas spilled the batch-1 entry's
// registers with it right after the wait).
__device__ __forceinline__ void s6_ms_prefetch_range(const unsigned char* __restrict__ p, unsigned long long bytes) {
    if (threadIdx.x >= 32 || bytes == 0) return;
    s6_prefetch_l2_share(p, bytes, (unsigned long long)blockIdx.y * gridDim.x + blockIdx.x,
                         (unsigned long long)gridDim.x * gridDim.y);
}
__device__ __forceinline__ void s6_ms_prefetch_next(const unsigned char* __restrict__ next, unsigned long long next_bytes,
                                                    const unsigned char* __restrict__ next2,
                                                    unsigned long long next2_bytes) {
    s6_ms_prefetch_range(next, next_bytes);
    s6_ms_prefetch_range(next2, next2_bytes);
}

// grid (ceil(di / S6_MS_CPB), batch), block S6_MS_THREADS, dynamic shared memory width floats
// (the sequence's xdbl row). Before the PDL wait, with `prefetch`, the first sequence's blocks
// prefetch their channels' rows of dt_proj and A into L2 (s6_prefetch_l2). Each lane sums in the
// same order in both variants, so the results do not depend on what was loaded early. With XS
// (s6_mixer_step_xscan_b1, one sequence) the block's cluster computes the xdbl row (s6_xs_xproj,
// x_proj's weights wx) and block 0 writes it to xdbl_out, instead of reading it from xdbl.
template <bool EARLY, bool XS = false, int VJ = 1>
__device__ __forceinline__ void s6_mixer_step_scan_impl(
    const float* __restrict__ xz, unsigned int ldxz, const float* __restrict__ u, const float* __restrict__ xdbl,
    unsigned int width, unsigned int r, const float* __restrict__ dt_proj, const float* __restrict__ dt_bias,
    const float* __restrict__ a, const float* __restrict__ dskip, float* __restrict__ conv_state, unsigned int k,
    float* __restrict__ ssm_state, float* __restrict__ delta_out, float* __restrict__ y, unsigned int di,
    unsigned int n, unsigned int dt_given, unsigned int prefetch, const unsigned char* __restrict__ next,
    unsigned long long next_bytes, const unsigned char* __restrict__ next2, unsigned long long next2_bytes,
    unsigned int next_mode, const unsigned short* __restrict__ wx = nullptr,
    float* __restrict__ xdbl_out = nullptr) {
    S6_PDL_LAUNCH();
    if (next_mode == 1) s6_ms_prefetch_next(next, next_bytes, next2, next2_bytes);
    // (A cluster's grid may have blocks past the channels: they prefetch nothing.)
    if (prefetch && blockIdx.y == 0 && threadIdx.x < 32 && blockIdx.x * S6_MS_CPB < di) {
        const unsigned long long c0 = (unsigned long long)blockIdx.x * S6_MS_CPB;
        const unsigned long long nc = c0 + S6_MS_CPB < di ? S6_MS_CPB : di - c0;
        if (!dt_given) s6_prefetch_l2(dt_proj + c0 * r, nc * r * sizeof(float));
        s6_prefetch_l2(a + c0 * n, nc * n * sizeof(float));
    }
    const unsigned int b = blockIdx.y;
    const unsigned int part = threadIdx.x % S6_MS_G;
    const unsigned int c = blockIdx.x * S6_MS_CPB + threadIdx.x / S6_MS_G;
    // Inactive channels (c >= di) still take part in the shuffles, with zeros.
    const bool active = c < di;
    const unsigned long long bc = (unsigned long long)b * di + c;
    const float* wr = dt_proj + (unsigned long long)c * r;
    const float* ac = a + (unsigned long long)c * n;
    float* h = ssm_state + bc * n;

    // EARLY: the weights before the wait.
    float wdt[EARLY ? S6_MS_RPRE : 1], av[EARLY ? S6_MS_SPRE : 1];
    if constexpr (EARLY) {
#pragma unroll
        for (int q = 0; q < S6_MS_RPRE; ++q) {
            const unsigned int i = part + S6_MS_G * q;
            wdt[q] = active && !dt_given && i < r ? __ldg(wr + i) : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < S6_MS_SPRE; ++q) {
            const unsigned int st = part + S6_MS_G * q;
            av[q] = active && st < n ? __ldg(ac + st) : 0.0f;
        }
    }
    float bias_c = 0.0f, d_c = 0.0f;
    if (active) {
        bias_c = __ldg(dt_bias + c);
        d_c = __ldg(dskip + c);
    }
    // XS: this block's x_proj weights (its slice of d_inner), the first S6_XS_PRE vectors per lane.
    S6XsSlice xs;
    S6XsPre<VJ> xpre;
    if constexpr (XS) {
        xs = s6_xs_slice(di, width);
        s6_xs_preload<VJ>(xs, wx, di, xpre);
    }
    S6_PDL_WAIT();

    // Everything the step reads that does not depend on dt, issued together: the previous
    // kernels' outputs (u, z, x, xdbl), with EARLY the state, and the conv window.
    S6_DYNAMIC_SHARED(float, s6_ms_x);
    float uv = 0.0f, zc = 0.0f, hv[EARLY ? S6_MS_SPRE : 1];
    if constexpr (EARLY) {
#pragma unroll
        for (int q = 0; q < S6_MS_SPRE; ++q) {
            const unsigned int st = part + S6_MS_G * q;
            hv[q] = active && st < n ? h[st] : 0.0f;
        }
    }
    if (active) {
        uv = u[bc];
        zc = xz[(unsigned long long)b * ldxz + di + c];
        if (part == 0 && k > 1) {
            // The window moves by one step: slot j takes slot j + 1, the last slot takes x.
            float* sw = conv_state + (unsigned long long)b * (k - 1) * di + c;
            for (unsigned int j = 0; j + 2 < k; j++) sw[(unsigned long long)j * di] = sw[(unsigned long long)(j + 1) * di];
            sw[(unsigned long long)(k - 2) * di] = xz[(unsigned long long)b * ldxz + c];
        }
    }
    if constexpr (XS) {
        // x_proj over the cluster: this block's partial sums, then every block adds the cluster's.
        s6_xs_xproj<VJ>(xs, wx, u, di, width, xpre, s6_ms_x, xdbl_out);
    } else {
        for (unsigned int i = threadIdx.x; i < width; i += blockDim.x) {
            s6_ms_x[i] = xdbl[(unsigned long long)b * width + i];
        }
    }
    __syncthreads();
    if (next_mode == 2) s6_ms_prefetch_next(next, next_bytes, next2, next2_bytes);

    float dt = 0.0f;
    if (active) {
        if (dt_given) {
            // Every lane reads it: the shuffle sum below must see it on one lane only.
            dt = part == 0 ? delta_out[bc] : 0.0f;
        } else if constexpr (EARLY) {
#pragma unroll
            for (int q = 0; q < S6_MS_RPRE; ++q) {
                const unsigned int i = part + S6_MS_G * q;
                if (i < r) dt = fmaf(s6_ms_x[i], wdt[q], dt);
            }
            for (unsigned int i = part + S6_MS_G * S6_MS_RPRE; i < r; i += S6_MS_G) dt = fmaf(s6_ms_x[i], __ldg(wr + i), dt);
        } else {
#pragma unroll 4
            for (unsigned int i = part; i < r; i += S6_MS_G) dt = fmaf(s6_ms_x[i], __ldg(wr + i), dt);
        }
    }
#pragma unroll
    for (int off = S6_MS_G / 2; off > 0; off >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, off);

    float acc = 0.0f;
    if (active) {
        if (part == 0 && !dt_given) delta_out[bc] = dt;
        const float dl = s6_softplus(dt + bias_c);
        const float du = dl * uv;
        const float* bm = s6_ms_x + r;
        const float* cm = s6_ms_x + r + n;
        if constexpr (EARLY) {
#pragma unroll
            for (int q = 0; q < S6_MS_SPRE; ++q) {
                const unsigned int st = part + S6_MS_G * q;
                if (st < n) {
                    const float hn = fmaf(expf(dl * av[q]), hv[q], du * bm[st]);
                    h[st] = hn;
                    acc = fmaf(cm[st], hn, acc);
                }
            }
        } else {
            for (unsigned int st = part; st < n; st += S6_MS_G) {
                const float hn = fmaf(expf(dl * ac[st]), h[st], du * bm[st]);
                h[st] = hn;
                acc = fmaf(cm[st], hn, acc);
            }
        }
    }
#pragma unroll
    for (int off = S6_MS_G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (active && part == 0) {
        y[bc] = (acc + d_c * uv) * s6_silu(zc);
    }
    // XS: no block leaves while another may still read its partial sums (shared memory).
    if constexpr (XS) s6_cluster_wait();
}

#define S6_MS_PARAMS                                                                                          \
    const float *__restrict__ xz, unsigned int ldxz, const float *__restrict__ u, const float *__restrict__ xdbl, \
        unsigned int width, unsigned int r, const float *__restrict__ dt_proj, const float *__restrict__ dt_bias, \
        const float *__restrict__ a, const float *__restrict__ dskip, float *__restrict__ conv_state,            \
        unsigned int k, float *__restrict__ ssm_state, float *__restrict__ delta_out, float *__restrict__ y,     \
        unsigned int di, unsigned int n, unsigned int dt_given, unsigned int prefetch,                          \
        const unsigned char *__restrict__ next, unsigned long long next_bytes,                                   \
        const unsigned char *__restrict__ next2, unsigned long long next2_bytes, unsigned int next_mode
#define S6_MS_ARGS                                                                                              \
    xz, ldxz, u, xdbl, width, r, dt_proj, dt_bias, a, dskip, conv_state, k, ssm_state, delta_out, y, di, n, dt_given, \
        prefetch, next, next_bytes, next2, next2_bytes, next_mode

extern "C" __global__ void __launch_bounds__(S6_MS_THREADS) s6_mixer_step_scan(S6_MS_PARAMS) {
    s6_mixer_step_scan_impl<false>(S6_MS_ARGS);
}
extern "C" __global__ void __launch_bounds__(S6_MS_THREADS) s6_mixer_step_scan_b1(S6_MS_PARAMS) {
    s6_mixer_step_scan_impl<true>(S6_MS_ARGS);
}
// x_proj fused in over a cluster (above): one sequence, bf16 x_proj weights wx [width, di], di a
// multiple of 8; the xdbl row goes to xdbl_out (written by block 0), `xdbl` is not read. grid (a multiple of S6_XS_CLUSTER blocks,
// at least ceil(di / S6_MS_CPB)), block S6_MS_THREADS, dynamic shared memory (2 width + the
// slice) floats. Entries by VJ, the weight vectors per lane and row: _v1 for d_inner up to 2,048,
// _v2 to 4,096, _v4 to 8,192 (the host picks). Compute capability 9.0 and newer (the host
// checks); a trap before that.
#if defined(S6_EMULATE) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define S6_XS_ENTRY(VJ)                                                                          \
    extern "C" __global__ void __launch_bounds__(S6_MS_THREADS) __cluster_dims__(S6_XS_CLUSTER, 1, 1) \
        s6_mixer_step_xscan_b1_v##VJ(S6_MS_PARAMS, const unsigned short* __restrict__ wx,           \
                                     float* __restrict__ xdbl_out) {                                \
        s6_mixer_step_scan_impl<true, true, VJ>(S6_MS_ARGS, wx, xdbl_out);                          \
    }
#else
#define S6_XS_ENTRY(VJ)                                                                                      \
    extern "C" __global__ void s6_mixer_step_xscan_b1_v##VJ(S6_MS_PARAMS, const unsigned short* __restrict__ wx, \
                                                            float* __restrict__ xdbl_out) {                      \
        __trap();                                                                                          \
    }
#endif
S6_XS_ENTRY(1)
S6_XS_ENTRY(2)
S6_XS_ENTRY(4)

// Large batches (dt given: a product for the whole batch wrote δ · dt_projᵀ into `delta`) with
// d_state = 16: s6_mixer_step_scan_n16. At 1.4B, batch 128 on an H100 the kernel above took 67 µs
// per layer (Nsight Compute, session 10) for ~70 MB of state and activations, a third of the
// bandwidth: its loads came in three dependent rounds (xdbl into shared memory and a block
// barrier, then δ and a shuffle, then the state), each a DRAM round trip, over 16 waves of
// blocks. Here 4 lanes per channel hold 4 states each (one 16-byte load and store of the state
// per lane), B and C are read straight from the xdbl row (L1 hits after the first channel), and
// every load of the step is issued right after the wait; no shared memory, no block barrier.
// The conv window moves by one step as above, lane p taking slots p, p + 4, ...: all of a
// channel's reads happen before a __syncwarp and its writes after. Same operations per element
// as s6_mixer_step_scan; y sums each lane's 4 states, then the 4 lanes (another order: the
// results differ from that kernel's in the last bits).
#define S6_MSW_LANES 4
#define S6_MSW_THREADS 256
#define S6_MSW_CPB (S6_MSW_THREADS / S6_MSW_LANES)
// Conv-window slots per lane: k - 1 ≤ 4 * S6_MSW_SLOTS (d_conv up to 17; MAX_D_CONV is 16).
#define S6_MSW_SLOTS 4

// One (sequence, channel) lane's operands of the d_state-16 step that depend on neither dt nor
// the weights: its 4 states, u, z, B and C (4 each, from the xdbl row), the conv window slots it
// moves.
struct S6MswIn {
    float4 hv;
    float uv, zc, bv[4], cv[4], win[S6_MSW_SLOTS];
};
// Issues those loads, every one at once. bc = b · di + c; sw: the channel's window in the conv
// state, [k - 1] slots di apart.
__device__ __forceinline__ void s6_msw_load(S6MswIn& in, bool active, const float* __restrict__ xz, unsigned int ldxz,
                                            const float* __restrict__ u, const float* __restrict__ xdbl,
                                            unsigned int width, unsigned int r, const float* sw, unsigned int k,
                                            const float* __restrict__ ssm_state, unsigned long long bc,
                                            unsigned int b, unsigned int c, unsigned int part, unsigned int di) {
    in.hv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    in.uv = 0.0f;
    in.zc = 0.0f;
    if (active) {
        in.hv = reinterpret_cast<const float4*>(ssm_state + bc * 16)[part];
        in.uv = u[bc];
        in.zc = xz[(unsigned long long)b * ldxz + di + c];
        const float* row = xdbl + (unsigned long long)b * width + r + part * 4;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            in.bv[s] = row[s];
            in.cv[s] = row[16 + s];
        }
#pragma unroll
        for (int q = 0; q < S6_MSW_SLOTS; ++q) {
            // Slot j takes slot j + 1; the last slot (k - 2) takes x.
            const unsigned int j = part + S6_MSW_LANES * q;
            in.win[q] = j + 2 < k ? sw[(unsigned long long)(j + 1) * di]
                                  : (j + 2 == k ? xz[(unsigned long long)b * ldxz + c] : 0.0f);
        }
    }
}
// The rest of the step from Δ = softplus(dt + bias): the state update, y over the channel's 4
// lanes (every lane of the warp takes part in the shuffles), the window moved, y written.
template <bool W16>
__device__ __forceinline__ void s6_msw_finish(S6MswIn& in, bool active, float dl, float4 av, float d_c, float* sw,
                                              unsigned int k, float* __restrict__ ssm_state, float* __restrict__ y,
                                              unsigned short* __restrict__ y16, unsigned long long bc,
                                              unsigned int part, unsigned int di) {
    float acc = 0.0f;
    if (active) {
        const float du = dl * in.uv;
        float4 hv = in.hv;
        hv.x = fmaf(expf(dl * av.x), hv.x, du * in.bv[0]);
        acc = fmaf(in.cv[0], hv.x, acc);
        hv.y = fmaf(expf(dl * av.y), hv.y, du * in.bv[1]);
        acc = fmaf(in.cv[1], hv.y, acc);
        hv.z = fmaf(expf(dl * av.z), hv.z, du * in.bv[2]);
        acc = fmaf(in.cv[2], hv.z, acc);
        hv.w = fmaf(expf(dl * av.w), hv.w, du * in.bv[3]);
        acc = fmaf(in.cv[3], hv.w, acc);
        reinterpret_cast<float4*>(ssm_state + bc * 16)[part] = hv;
    }
#pragma unroll
    for (int off = S6_MSW_LANES / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    // Every lane of the channel has read the window before any lane writes it.
    __syncwarp();
    if (active) {
#pragma unroll
        for (int q = 0; q < S6_MSW_SLOTS; ++q) {
            const unsigned int j = part + S6_MSW_LANES * q;
            if (j + 1 < k) sw[(unsigned long long)j * di] = in.win[q];
        }
        if (part == 0) {
            const float yv = (acc + d_c * in.uv) * s6_silu(in.zc);
            y[bc] = yv;
            if constexpr (W16) y16[bc] = s6_f32_to_bf16(yv);
        }
    }
}

// A channel's weights of the step, loaded before the PDL wait (prelude.cu): the lane's 4 entries
// of A, the dt bias and D (zeros for an inactive channel).
struct S6MswWeights {
    float4 av;
    float bias, d;
};
__device__ __forceinline__ S6MswWeights s6_msw_weights(bool active, const float* __restrict__ a,
                                                      const float* __restrict__ dt_bias,
                                                      const float* __restrict__ dskip, unsigned int c,
                                                      unsigned int part) {
    S6MswWeights w{make_float4(0.0f, 0.0f, 0.0f, 0.0f), 0.0f, 0.0f};
    if (active) {
        w.av = __ldg(reinterpret_cast<const float4*>(a + (unsigned long long)c * 16) + part);
        w.bias = __ldg(dt_bias + c);
        w.d = __ldg(dskip + c);
    }
    return w;
}

// grid (ceil(di / S6_MSW_CPB), batch), block S6_MSW_THREADS, no shared memory. With W16 y is also
// written rounded to bf16 into y16 (out_proj's input under bf16 products, then not cast again).
template <bool W16>
__device__ __forceinline__ void s6_mixer_step_scan_n16_impl(
    const float* __restrict__ xz, unsigned int ldxz, const float* __restrict__ u, const float* __restrict__ xdbl,
    unsigned int width, unsigned int r, const float* __restrict__ dt_bias, const float* __restrict__ a,
    const float* __restrict__ dskip, float* __restrict__ conv_state, unsigned int k, float* __restrict__ ssm_state,
    const float* __restrict__ delta, float* __restrict__ y, unsigned short* __restrict__ y16, unsigned int di) {
    S6_PDL_LAUNCH();
    const unsigned int b = blockIdx.y;
    const unsigned int part = threadIdx.x % S6_MSW_LANES;
    const unsigned int c = blockIdx.x * S6_MSW_CPB + threadIdx.x / S6_MSW_LANES;
    const bool active = c < di;

    const S6MswWeights wt = s6_msw_weights(active, a, dt_bias, dskip, c, part);
    S6_PDL_WAIT();

    // Every load of the step at once.
    const unsigned long long bc = (unsigned long long)b * di + c;
    float* sw = conv_state + (unsigned long long)b * (k - 1) * di + c;
    const float dt = active ? delta[bc] : 0.0f;
    S6MswIn in;
    s6_msw_load(in, active, xz, ldxz, u, xdbl, width, r, sw, k, ssm_state, bc, b, c, part, di);
    const float dl = active ? s6_softplus(dt + wt.bias) : 0.0f;
    s6_msw_finish<W16>(in, active, dl, wt.av, wt.d, sw, k, ssm_state, y, y16, bc, part, di);
}

#define S6_MSW_PARAMS                                                                                          \
    const float *__restrict__ xz, unsigned int ldxz, const float *__restrict__ u, const float *__restrict__ xdbl, \
        unsigned int width, unsigned int r, const float *__restrict__ dt_bias, const float *__restrict__ a,       \
        const float *__restrict__ dskip, float *__restrict__ conv_state, unsigned int k,                         \
        float *__restrict__ ssm_state, const float *__restrict__ delta, float *__restrict__ y
extern "C" __global__ void __launch_bounds__(S6_MSW_THREADS) s6_mixer_step_scan_n16(S6_MSW_PARAMS, unsigned int di) {
    s6_mixer_step_scan_n16_impl<false>(xz, ldxz, u, xdbl, width, r, dt_bias, a, dskip, conv_state, k, ssm_state, delta,
                                       y, nullptr, di);
}
extern "C" __global__ void __launch_bounds__(S6_MSW_THREADS)
    s6_mixer_step_scan_n16_b16(S6_MSW_PARAMS, unsigned short* __restrict__ y16, unsigned int di) {
    s6_mixer_step_scan_n16_impl<true>(xz, ldxz, u, xdbl, width, r, dt_bias, a, dskip, conv_state, k, ssm_state, delta,
                                      y, y16, di);
}
