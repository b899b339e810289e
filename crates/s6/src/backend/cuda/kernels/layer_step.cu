// One Mamba block's whole decoding step for one sequence in one kernel (crates/s6/src/backend/
// cuda/layer_step.rs): what `Backend::block_step` otherwise runs as four dependent kernels
// (gemv.cu's in_proj with the norm and the conv, x_proj, mixer_step.cu's scan step, out_proj with
// the residual add). At batch 1 those are latency chains that move little data (130M: 7.6 MB of
// weights per block, 2.5 µs of bandwidth, against ~13 µs per block measured on an H100), and most
// of each kernel's time is its start and its drain. Here the four phases run in one persistent
// grid (at most one block per SM, all resident: the host checks the occupancy) and meet at grid
// barriers instead of kernel boundaries, and every phase loads its weights (and the states it
// reads) before the barrier ahead of it, so that they arrive while the grid waits.
//
//   phase 1: RMSNorm (every block computes the row's scale itself), in_proj → xz, and for the x
//            half the causal conv1d + SiLU → u, the conv window moved by one step
//   phase 2: x_proj → xdbl = [δ | B | C]
//   phase 3: per channel: dt = dt_proj[c] · δ (→ delta, without its bias), Δ = softplus(dt + bias),
//            h = exp(Δ·A) h + Δ·B·u, y = (C·h + D·u) · silu(z)
//   phase 4: residual += out_proj(y) (+ bias)
//
// Weights are the bf16 copies (bit patterns); every product's input is rounded to bf16 as the bf16
// GEMV rounds it (s6_rbf16, gemv.cu); fp32 accumulation and fp32 states: the four kernels'
// operations, summed in another order (equal to theirs within fp32 rounding, not bit for bit).
// Data one block writes and another reads within the kernel (xz, u, xdbl, y, the residual) is
// read with __ldcg (from L2: never a stale L1 line); weights with __ldg. Layouts as block_step:
// xz [2·di] (x, then z), conv state [k - 1, di], ssm state [di, n], xdbl [r + 2n].

#define S6_LS_WARPS 8
#define S6_LS_THREADS (S6_LS_WARPS * 32)
// Weight vectors (16 bytes: 8 bf16) per lane and row that x_proj and out_proj load before their
// barrier (rows up to 32 · 8 · 16 = 4096 long; longer rows load the rest in the loop).
#define S6_LS_PRE 16
// Residual values per thread held in registers for the norm (d up to 8 · S6_LS_THREADS).
#define S6_LS_DPRE 8
// Phase 3: lanes per channel, states per lane (d_state up to 64, MAX_D_STATE), dt_proj entries
// per lane loaded early (dt_rank up to 128; the rest in the loop). Conv taps are loaded early up
// to gemv.cu's S6_GEMV_CONV_PRE.
#define S6_LS_G 8
#define S6_LS_SPRE 8
#define S6_LS_RPRE 16

#ifndef S6_SPIN_PAUSE
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
#define S6_SPIN_PAUSE() __nanosleep(32)
#else
#define S6_SPIN_PAUSE() \
    do {                 \
    } while (0)
#endif
#endif

// A barrier over the whole grid. bar[0] counts the blocks in; bar[1] is the generation, which the
// last block in bumps (after resetting the count) and the others wait for. Every block's writes
// before it are visible to every block after it (fences around the arrival, as cooperative
// groups' grid sync). bar starts as {0, anything} and is left {0, generation + 1}, so one pair
// serves every launch on a stream. Every block of the grid must be resident.
__device__ __forceinline__ void s6_grid_sync(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* gen = bar + 1;
        const unsigned int seen = *gen;
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*gen == seen) S6_SPIN_PAUSE();
        }
        __threadfence();
    }
    __syncthreads();
}

// NC consecutive rows of a bf16 matrix [rows, 8 · k8] as one warp reads them: lane `lane` takes
// the vectors i = lane + 32 q; `pre` holds the first PRE of them per row (s6_ls_rows_load, issued
// before a barrier). Rows past the matrix read its last row (valid memory; never stored).
template <int NC, int PRE>
struct S6LsRows {
    const uint4* row[NC];
    uint4 pre[NC][PRE];
};

template <int NC, int PRE>
__device__ __forceinline__ void s6_ls_rows_load(S6LsRows<NC, PRE>& w, const unsigned short* m, unsigned int rows,
                                                unsigned int k8, unsigned int j0, unsigned int lane) {
    // A warp without a task (j0 past the rows) loads nothing.
    const unsigned int k8l = j0 < rows ? k8 : 0;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        const unsigned int j = j0 + c < rows ? j0 + c : rows - 1;
        w.row[c] = reinterpret_cast<const uint4*>(m) + (unsigned long long)j * k8;
#pragma unroll
        for (int q = 0; q < PRE; ++q) {
            const unsigned int i = lane + 32 * q;
            w.pre[c][q] = i < k8l ? __ldg(w.row[c] + i) : make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// acc[c] = row c · x for the NC rows (x: 8 · k8 bf16 values as floats, in shared memory), summed
// per lane in index order, then over the warp: every lane returns the sums.
template <int NC, int PRE>
__device__ __forceinline__ void s6_ls_rows_dot(const S6LsRows<NC, PRE>& w, unsigned int k8, unsigned int lane,
                                               const float* x, float (&acc)[NC]) {
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
#pragma unroll
    for (int q = 0; q < PRE; ++q) {
        const unsigned int i = lane + 32 * q;
        if (i < k8) {
#pragma unroll
            for (int c = 0; c < NC; ++c) acc[c] = s6_fma_bf16x8(w.pre[c][q], x + 8 * i, acc[c]);
        }
    }
    for (unsigned int i = lane + 32 * PRE; i < k8; i += 32) {
        uint4 v[NC];
#pragma unroll
        for (int c = 0; c < NC; ++c) v[c] = __ldg(w.row[c] + i);
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[c] = s6_fma_bf16x8(v[c], x + 8 * i, acc[c]);
    }
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], off);
}

// A product whose rows are split into warp tasks of NC rows, task t on global warp t mod nwarps:
// the first task's rows were loaded into w before the barrier, later tasks load theirs here.
// epi(j0, acc) runs on every lane with the sums of rows j0 .. j0 + NC - 1.
template <int NC, int PRE, typename Epi>
__device__ __forceinline__ void s6_ls_product(S6LsRows<NC, PRE>& w, const unsigned short* m, unsigned int rows,
                                              unsigned int k8, unsigned int gw, unsigned int nwarps,
                                              unsigned int lane, const float* x, Epi epi) {
    for (unsigned int t = gw; NC * t < rows; t += nwarps) {
        if (t != gw) s6_ls_rows_load<NC, PRE>(w, m, rows, k8, NC * t, lane);
        float acc[NC];
        s6_ls_rows_dot<NC, PRE>(w, k8, lane, x, acc);
        epi(NC * t, acc);
    }
}

// xs[i] = bf16(src[i]) for i < len (src written by other blocks of this kernel), then a block
// barrier.
__device__ __forceinline__ void s6_ls_stage_rounded(float* xs, const float* src, unsigned int len) {
    for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) xs[i] = s6_rbf16(__ldcg(src + i));
    __syncthreads();
}

// Phase 3's values of one channel, loaded before the barrier ahead of it (weights, the recurrent
// state, u and z: constant or written before that barrier).
struct S6LsChan {
    float wdt[S6_LS_RPRE], av[S6_LS_SPRE], hv[S6_LS_SPRE];
    float bias, dskip, u, z;
};

__device__ __forceinline__ void s6_ls_chan_load(S6LsChan& ch, unsigned int c, unsigned int part, const float* dt_w,
                                                const float* dt_b, const float* a, const float* dskip,
                                                const float* ssm, const float* u, const float* xz, unsigned int di,
                                                unsigned int r, unsigned int n) {
    const bool active = c < di;
    const float* wr = dt_w + (unsigned long long)c * r;
#pragma unroll
    for (int q = 0; q < S6_LS_RPRE; ++q) {
        const unsigned int i = part + S6_LS_G * q;
        ch.wdt[q] = active && i < r ? __ldg(wr + i) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < S6_LS_SPRE; ++q) {
        const unsigned int s = part + S6_LS_G * q;
        ch.av[q] = active && s < n ? __ldg(a + (unsigned long long)c * n + s) : 0.0f;
        ch.hv[q] = active && s < n ? ssm[(unsigned long long)c * n + s] : 0.0f;
    }
    ch.bias = active ? __ldg(dt_b + c) : 0.0f;
    ch.dskip = active ? __ldg(dskip + c) : 0.0f;
    ch.u = active ? __ldcg(u + c) : 0.0f;
    ch.z = active ? __ldcg(xz + di + c) : 0.0f;
}

// The causal conv's output for channel j and its new input x, its weights and window read where
// they are (gemv.cu's s6_conv_newest), then the window [k - 1, di] moves by one step: slot s takes
// slot s + 1, the last slot takes x.
__device__ __forceinline__ float s6_ls_conv_step(const float* conv_w, const float* conv_b, float* conv_state,
                                                 unsigned int j, unsigned int di, float x, unsigned int k) {
    float* sw = conv_state + j;
    const float bias = conv_b != nullptr ? __ldg(conv_b + j) : 0.0f;
    const float out = s6_conv_newest(conv_w + (unsigned long long)j * k, bias, sw, di, x, k);
    for (unsigned int t = 0; t + 2 < k; ++t) sw[(unsigned long long)t * di] = sw[(unsigned long long)(t + 1) * di];
    if (k > 1) sw[(unsigned long long)(k - 2) * di] = x;
    return out;
}

// Phase 3 for one channel c (its S6_LS_G lanes, `part` this lane; every lane of the warp calls it,
// inactive channels with zeros): dt = dt_proj[c] · δ (written to delta[c], without its bias),
// Δ = softplus(dt + bias), h = exp(Δ·A) h + Δ·B·u (written to the state), and C·h + D·u, returned
// to every lane of the channel; x is the xdbl row [δ | B | C] in shared memory.
__device__ __forceinline__ float s6_ls_channel_step(const S6LsChan& ch, unsigned int c, unsigned int part, bool active,
                                                    const float* x, const float* dt_w, float* ssm, float* delta,
                                                    unsigned int r, unsigned int n) {
    float dt = 0.0f;
    if (active) {
#pragma unroll
        for (int q = 0; q < S6_LS_RPRE; ++q) {
            const unsigned int i = part + S6_LS_G * q;
            if (i < r) dt = fmaf(x[i], ch.wdt[q], dt);
        }
        for (unsigned int i = part + S6_LS_G * S6_LS_RPRE; i < r; i += S6_LS_G)
            dt = fmaf(x[i], __ldg(dt_w + (unsigned long long)c * r + i), dt);
    }
#pragma unroll
    for (int off = S6_LS_G / 2; off > 0; off >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, off);
    float acc = 0.0f;
    if (active) {
        if (part == 0) delta[c] = dt;
        const float dl = s6_softplus(dt + ch.bias);
        const float du = dl * ch.u;
        const float* bm = x + r;
        const float* cm = x + r + n;
        float* h = ssm + (unsigned long long)c * n;
#pragma unroll
        for (int q = 0; q < S6_LS_SPRE; ++q) {
            const unsigned int s = part + S6_LS_G * q;
            if (s < n) {
                const float hn = fmaf(expf(dl * ch.av[q]), ch.hv[q], du * bm[s]);
                h[s] = hn;
                acc = fmaf(cm[s], hn, acc);
            }
        }
    }
#pragma unroll
    for (int off = S6_LS_G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    return acc + ch.dskip * ch.u;
}

#define S6_LS_PARAMS                                                                                             \
    float *__restrict__ residual, const float *__restrict__ norm_w, float eps,                                  \
        const unsigned short *__restrict__ w_in, const float *__restrict__ b_in, const float *__restrict__ conv_w, \
        const float *__restrict__ conv_b, float *__restrict__ conv_state, const unsigned short *__restrict__ w_x,  \
        const float *__restrict__ dt_w, const float *__restrict__ dt_b, const float *__restrict__ a,             \
        const float *__restrict__ dskip, float *__restrict__ ssm, const unsigned short *__restrict__ w_out,       \
        const float *__restrict__ b_out, float *__restrict__ xz, float *__restrict__ u, float *__restrict__ xdbl, \
        float *__restrict__ delta, float *__restrict__ y, unsigned int *__restrict__ bar, unsigned int d,         \
        unsigned int di, unsigned int k, unsigned int r, unsigned int n
#define S6_LS_ARGS                                                                                             \
    residual, norm_w, eps, w_in, b_in, conv_w, conv_b, conv_state, w_x, dt_w, dt_b, a, dskip, ssm, w_out, b_out, \
        xz, u, xdbl, delta, y, bar, d, di, k, r, n

// grid: at most one block per SM (every block resident), block S6_LS_THREADS, dynamic shared
// memory max(d, di, r + 2n) + 32 floats; d % 8 == 0, di % 8 == 0, weights 16-byte aligned. In_proj's
// warp tasks are NC1 rows with PRE1 vectors per row loaded early (the two entries below).
template <int NC1, int PRE1>
__device__ __forceinline__ void s6_layer_step_b1_impl(S6_LS_PARAMS) {
    S6_PDL_LAUNCH();
    // Dynamic shared memory: the staged vector (max(d, di, width) floats), then the norm's 32
    // partial sums (all of it dynamic, so that the CPU emulation gives each block its own).
    S6_DYNAMIC_SHARED(float, s6_ls_x);
    const unsigned int width = r + 2 * n, iw = 2 * di, k8d = d / 8, k8i = di / 8;
    float(*partial)[32] = reinterpret_cast<float(*)[32]>(s6_ls_x + max(max(d, di), width));
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned int nb = gridDim.x;
    // Warps numbered across blocks first, so that a product's rows spread over every SM.
    const unsigned int gw = warp * nb + blockIdx.x, nwarps = nb * S6_LS_WARPS;

    // ---- phase 1: RMSNorm, in_proj, conv + SiLU ----
    // Before the wait: the first task's in_proj rows, the norm weight, and the conv weights of
    // the first task's x columns (lane c < NC1 owns column NC1 · gw + c).
    S6LsRows<NC1, PRE1> w1;
    s6_ls_rows_load<NC1, PRE1>(w1, w_in, iw, k8d, NC1 * gw, lane);
    float nwv[S6_LS_DPRE];
#pragma unroll
    for (int q = 0; q < S6_LS_DPRE; ++q) {
        const unsigned int i = threadIdx.x + S6_LS_THREADS * q;
        nwv[q] = i < d ? __ldg(norm_w + i) : 0.0f;
    }
    const unsigned int jc = NC1 * gw + lane;
    const bool conv_pre = lane < NC1 && jc < di && k <= S6_GEMV_CONV_PRE;
    float cwv[S6_GEMV_CONV_PRE] = {}, cbv = 0.0f, win[S6_GEMV_CONV_PRE] = {};
    if (conv_pre) {
#pragma unroll
        for (unsigned int t = 0; t < S6_GEMV_CONV_PRE; ++t)
            if (t < k) cwv[t] = __ldg(conv_w + (unsigned long long)jc * k + t);
        cbv = conv_b != nullptr ? __ldg(conv_b + jc) : 0.0f;
    }
    S6_PDL_WAIT();
    // After it: the residual row and the first task's conv windows, together.
    float rv[S6_LS_DPRE], ss[1] = {0.0f};
#pragma unroll
    for (int q = 0; q < S6_LS_DPRE; ++q) {
        const unsigned int i = threadIdx.x + S6_LS_THREADS * q;
        rv[q] = i < d ? __ldcg(residual + i) : 0.0f;
    }
    if (conv_pre) {
#pragma unroll
        for (unsigned int t = 0; t + 1 < S6_GEMV_CONV_PRE; ++t)
            if (t + 1 < k) win[t] = conv_state[(unsigned long long)t * di + jc];
    }
#pragma unroll
    for (int q = 0; q < S6_LS_DPRE; ++q) ss[0] = fmaf(rv[q], rv[q], ss[0]);
    for (unsigned int i = threadIdx.x + S6_LS_THREADS * S6_LS_DPRE; i < d; i += S6_LS_THREADS) {
        const float v = __ldcg(residual + i);
        ss[0] = fmaf(v, v, ss[0]);
    }
    s6_block_sum_rows<1>(ss, partial);
    const float scale = rsqrtf(ss[0] / (float)d + eps);
#pragma unroll
    for (int q = 0; q < S6_LS_DPRE; ++q) {
        const unsigned int i = threadIdx.x + S6_LS_THREADS * q;
        if (i < d) s6_ls_x[i] = s6_rbf16(rv[q] * scale * nwv[q]);
    }
    for (unsigned int i = threadIdx.x + S6_LS_THREADS * S6_LS_DPRE; i < d; i += S6_LS_THREADS)
        s6_ls_x[i] = s6_rbf16(__ldcg(residual + i) * scale * __ldg(norm_w + i));
    __syncthreads();
    s6_ls_product<NC1, PRE1>(w1, w_in, iw, k8d, gw, nwarps, lane, s6_ls_x, [&](unsigned int j0, float(&acc)[NC1]) {
        const unsigned int j = j0 + lane;
        if (lane >= NC1 || j >= iw) return;
        float v = acc[0];
#pragma unroll
        for (int c = 1; c < NC1; ++c)
            if (lane == (unsigned int)c) v = acc[c];
        if (b_in != nullptr) v += __ldg(b_in + j);
        xz[j] = v;
        if (j >= di) return;
        // The conv's output (gemv.cu), then the window moves by one: slot s takes slot s + 1, the
        // last slot takes x.
        float acv;
        if (j0 == NC1 * gw && conv_pre) {
            float* sw = conv_state + j;
            acv = s6_conv_newest(cwv, cbv, win, v, k);
#pragma unroll
            for (unsigned int t = 0; t + 2 < S6_GEMV_CONV_PRE; ++t)
                if (t + 2 < k) sw[(unsigned long long)t * di] = win[t + 1];
            if (k > 1) sw[(unsigned long long)(k - 2) * di] = v;
        } else {
            acv = s6_ls_conv_step(conv_w, conv_b, conv_state, j, di, v, k);
        }
        u[j] = s6_silu(acv);
    });

    // ---- phase 2: x_proj, one row per warp task ----
    S6LsRows<1, S6_LS_PRE> w2;
    s6_ls_rows_load<1, S6_LS_PRE>(w2, w_x, width, k8i, gw, lane);
    s6_grid_sync(bar);
    s6_ls_stage_rounded(s6_ls_x, u, di);
    s6_ls_product<1, S6_LS_PRE>(w2, w_x, width, k8i, gw, nwarps, lane, s6_ls_x,
                                [&](unsigned int j, float(&acc)[1]) {
                                    if (lane == 0) xdbl[j] = acc[0];
                                });

    // ---- phase 3: dt_proj, softplus, the state update and the gate, S6_LS_G lanes per channel
    // (channels spread over the blocks first) ----
    const unsigned int part = threadIdx.x % S6_LS_G, slot = threadIdx.x / S6_LS_G;
    const unsigned int per_round = (S6_LS_THREADS / S6_LS_G) * nb;
    S6LsChan ch;
    s6_ls_chan_load(ch, slot * nb + blockIdx.x, part, dt_w, dt_b, a, dskip, ssm, u, xz, di, r, n);
    s6_grid_sync(bar);
    for (unsigned int i = threadIdx.x; i < width; i += S6_LS_THREADS) s6_ls_x[i] = __ldcg(xdbl + i);
    __syncthreads();
    // Every thread runs the same rounds (the shuffles need whole warps); inactive channels add zeros.
    for (unsigned int base = 0; base < di; base += per_round) {
        const unsigned int c = base + slot * nb + blockIdx.x;
        const bool active = c < di;
        if (base != 0) s6_ls_chan_load(ch, c, part, dt_w, dt_b, a, dskip, ssm, u, xz, di, r, n);
        const float v = s6_ls_channel_step(ch, c, part, active, s6_ls_x, dt_w, ssm, delta, r, n);
        if (active && part == 0) y[c] = v * s6_silu(ch.z);
    }

    // ---- phase 4: residual += out_proj(y) (+ bias), one row per warp task ----
    S6LsRows<1, S6_LS_PRE> w4;
    s6_ls_rows_load<1, S6_LS_PRE>(w4, w_out, d, k8i, gw, lane);
    s6_grid_sync(bar);
    s6_ls_stage_rounded(s6_ls_x, y, di);
    s6_ls_product<1, S6_LS_PRE>(w4, w_out, d, k8i, gw, nwarps, lane, s6_ls_x, [&](unsigned int j, float(&acc)[1]) {
        if (lane != 0) return;
        float v = acc[0];
        if (b_out != nullptr) v += __ldg(b_out + j);
        residual[j] = __ldcg(residual + j) + v;
    });
}

// d up to 1024 (in_proj rows of up to 128 vectors): 4 rows per warp task, all loaded early
// (mamba-130m's 2 · 1536 rows in one round of 132 · 8 warps); wider models: 2 rows of up to 256
// vectors loaded early.
// At most 128 registers (two blocks fit an SM): the next kernel's block, started early by PDL,
// finds room beside this one and loads its weights while this one runs.
extern "C" __global__ void __launch_bounds__(S6_LS_THREADS, 2) s6_layer_step_b1(S6_LS_PARAMS) {
    s6_layer_step_b1_impl<4, 4>(S6_LS_ARGS);
}
extern "C" __global__ void __launch_bounds__(S6_LS_THREADS, 2) s6_layer_step_b1_wide(S6_LS_PARAMS) {
    s6_layer_step_b1_impl<2, 8>(S6_LS_ARGS);
}

// ---- The same step in one thread-block cluster (s6_layer_step_cluster_b1_c8 / _c16) ----------
//
// The grid barriers above cost about what the kernel boundaries they replace cost (run 70). Here
// the grid is one cluster of CL blocks (Hopper and newer) and the layer's three grid-wide
// dependencies meet at cluster barriers, with distributed shared memory for the exchanges:
// block ρ owns the channels [c0, c0 + cn) of d_inner (cn a multiple of 8; the last blocks may own
// fewer or none) and
//   phase 1: normalizes the whole residual row itself, computes in_proj's x and z rows of its
//            channels, their conv + SiLU (u) and the conv windows;
//   phase 2: x_proj's partial sums over its channels (every row), then — cluster barrier — the
//            whole xdbl row, adding the CL blocks' partials in rank order;
//   phase 3: dt_proj, softplus, the state update and the gate of its channels (y);
//   phase 4: out_proj's partial sums over its channels (every output), then — cluster barrier —
//            block ρ adds, in rank order, the partials of outputs [ρ·dp, (ρ+1)·dp) and the
//            residual (and bias) and writes the residual there.
// Each block reads only its channels' in_proj rows and its channels' columns of x_proj and
// out_proj: the layer's weights are read once, by CL SMs (before the PDL wait each block
// prefetches its share into L2 and loads its first in_proj rows). Whether CL SMs stream them fast
// enough is what this kernel is for (scripts/gpu/cluster_probe.cu measures the parts). Products
// and rounding as the kernel above; the sums over channels are split over the blocks, so the
// results equal the four kernels' within fp32 rounding, not bit for bit.
//
// Dynamic shared memory (floats): the normed row [max(d, 8)], the norm's partials [32], u [C] and
// y [C] of the block's channels (rounded to bf16 for the products), x_proj's partial
// [width] and the xdbl row [width], out_proj's partial [d]; C = the channels per block. Any block
// size that is a multiple of 32 (the emulation runs small ones).

// The channels per block of a cluster of `cl` blocks: ⌈di / cl⌉ rounded up to a multiple of 8.
__device__ __forceinline__ unsigned int s6_lc_per_block(unsigned int di, unsigned int cl) {
    return ((di + cl - 1) / cl + 7) / 8 * 8;
}

// Range i of the block's prefetches into L2 by warp i % warps: the whole range, or with `parts`
// > 1 share `part` of it (s6_prefetch_l2_share).
__device__ __forceinline__ void s6_lc_prefetch(unsigned int i, const void* p, unsigned long long bytes,
                                               unsigned int part = 0, unsigned int parts = 1) {
    if (bytes > 0 && threadIdx.x / 32 == i % (blockDim.x / 32)) s6_prefetch_l2_share(p, bytes, part, parts);
}

template <unsigned int CL, int NC1, int PRE1>
__device__ __forceinline__ void s6_layer_step_cluster_impl(S6_LS_PARAMS) {
    S6_PDL_LAUNCH();
    (void)bar;
    const unsigned int rank = s6_cluster_rank<CL>();
    const unsigned int width = r + 2 * n, k8d = d / 8;
    const unsigned int C = s6_lc_per_block(di, CL);
    const unsigned int c0 = min(di, rank * C), cn = min(C, di - c0);
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    S6_DYNAMIC_SHARED(float, s6_lc_x);
    float* xs = s6_lc_x;                                   // the normed row
    float(*partial)[32] = reinterpret_cast<float(*)[32]>(xs + max(d, 8u));
    float* uown = xs + max(d, 8u) + 32;
    float* yown = uown + C;
    float* px = yown + C;     // x_proj's partial sums over this block's channels
    float* xd = px + width;   // the xdbl row
    float* po = xd + width;   // out_proj's partial sums over this block's channels

    // ---- before the wait: weights only ----
    // This block's in_proj rows (x and z of its channels), dt_proj and A rows, and a share of
    // x_proj and out_proj (whose columns it reads are strided over the whole matrix) into L2.
    s6_lc_prefetch(0, w_in + (unsigned long long)c0 * d, 2ull * cn * d);
    s6_lc_prefetch(1, w_in + (unsigned long long)(di + c0) * d, 2ull * cn * d);
    s6_lc_prefetch(2, w_x, 2ull * width * di, rank, CL);
    s6_lc_prefetch(3, w_out, 2ull * d * di, rank, CL);
    s6_lc_prefetch(4, dt_w + (unsigned long long)c0 * r, 4ull * cn * r);
    s6_lc_prefetch(5, a + (unsigned long long)c0 * n, 4ull * cn * n);
    // In_proj's warp tasks: NC1 consecutive rows of the block's 2·cn (x rows, then z rows; cn is
    // a multiple of 8, so a task never straddles the two), task t on warp t mod nwarps. Own row
    // j is in_proj row c0 + j (x) or di + c0 + j - cn (z).
    const unsigned int ntasks = 2 * cn / NC1;
    auto task_row = [&](unsigned int t, unsigned int& g0, unsigned int& end) {
        const unsigned int j0 = NC1 * t;
        g0 = j0 < cn ? c0 + j0 : di + c0 + (j0 - cn);
        end = j0 < cn ? c0 + cn : di + c0 + cn;
    };
    S6LsRows<NC1, PRE1> w1;
    if (warp < ntasks) {
        unsigned int g0, end;
        task_row(warp, g0, end);
        s6_ls_rows_load<NC1, PRE1>(w1, w_in, end, k8d, g0, lane);
    }
    S6_PDL_WAIT();

    // ---- phase 1: RMSNorm (the whole row, in every block), in_proj rows, conv + SiLU ----
    float ss[1] = {0.0f};
    for (unsigned int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = __ldcg(residual + i);
        ss[0] = fmaf(v, v, ss[0]);
    }
    s6_block_sum_rows<1>(ss, partial);
    const float scale = rsqrtf(ss[0] / (float)d + eps);
    for (unsigned int i = threadIdx.x; i < d; i += blockDim.x)
        xs[i] = s6_rbf16(__ldcg(residual + i) * scale * __ldg(norm_w + i));
    __syncthreads();
    for (unsigned int t = warp; t < ntasks; t += nwarps) {
        unsigned int g0, end;
        task_row(t, g0, end);
        if (t != warp) s6_ls_rows_load<NC1, PRE1>(w1, w_in, end, k8d, g0, lane);
        float acc[NC1];
        s6_ls_rows_dot<NC1, PRE1>(w1, k8d, lane, xs, acc);
        if (lane >= (unsigned int)NC1) continue;
        float v = acc[0];
#pragma unroll
        for (int c = 1; c < NC1; ++c)
            if (lane == (unsigned int)c) v = acc[c];
        const unsigned int g = g0 + lane, j = NC1 * t + lane;
        if (b_in != nullptr) v += __ldg(b_in + g);
        xz[g] = v;
        if (j >= cn) continue;  // a z row
        const float uv = s6_silu(s6_ls_conv_step(conv_w, conv_b, conv_state, g, di, v, k));
        u[g] = uv;
        uown[j] = s6_rbf16(uv);
    }
    __syncthreads();

    // ---- phase 2: x_proj over the block's channels, then over the cluster ----
    const unsigned int nv = cn / 8;  // 16-byte weight vectors per row in the block's columns
    for (unsigned int w = warp; w < width; w += nwarps) {
        const uint4* row = reinterpret_cast<const uint4*>(w_x + (unsigned long long)w * di + c0);
        float acc = 0.0f;
        for (unsigned int v = lane; v < nv; v += 32) acc = s6_fma_bf16x8(__ldg(row + v), uown + 8 * v, acc);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0) px[w] = acc;
    }
    __syncthreads();
    s6_cluster_arrive<CL>();
    s6_cluster_wait();
    for (unsigned int w = threadIdx.x; w < width; w += blockDim.x) {
        xd[w] = s6_cluster_sum<CL>(px, w);
        if (rank == 0) xdbl[w] = xd[w];
    }
    __syncthreads();

    // ---- phase 3: dt_proj, softplus, the state update and the gate of the block's channels ----
    const unsigned int part = threadIdx.x % S6_LS_G, slot = threadIdx.x / S6_LS_G;
    const unsigned int per_round = blockDim.x / S6_LS_G;
    // Every thread runs the same rounds (the shuffles need whole warps); inactive channels add zeros.
    for (unsigned int base = 0; base < cn; base += per_round) {
        const unsigned int jl = base + slot, c = c0 + jl;
        const bool active = jl < cn;
        S6LsChan ch;
        s6_ls_chan_load(ch, active ? c : di, part, dt_w, dt_b, a, dskip, ssm, u, xz, di, r, n);
        const float v = s6_ls_channel_step(ch, c, part, active, xd, dt_w, ssm, delta, r, n);
        if (active && part == 0) {
            const float yv = v * s6_silu(ch.z);
            y[c] = yv;
            yown[jl] = s6_rbf16(yv);
        }
    }
    __syncthreads();

    // ---- phase 4: out_proj over the block's channels, then over the cluster, + residual ----
    // Four lanes per output row (8 rows per warp and pass, two passes' loads at once): lane
    // quarter q takes the vectors q, q + 4, ... of the row's nv.
    {
        const unsigned int q4 = lane % 4, rows_per_pass = 8 * nwarps;
        for (unsigned int j0 = warp * 8 + lane / 4; j0 < d; j0 += 2 * rows_per_pass) {
            const unsigned int j1 = j0 + rows_per_pass;
            const uint4* r0 = reinterpret_cast<const uint4*>(w_out + (unsigned long long)j0 * di + c0);
            const uint4* r1 = reinterpret_cast<const uint4*>(w_out + (unsigned long long)min(j1, d - 1) * di + c0);
            float a0 = 0.0f, a1 = 0.0f;
            for (unsigned int v = q4; v < nv; v += 4) {
                const uint4 v0 = __ldg(r0 + v), v1 = __ldg(r1 + v);
                a0 = s6_fma_bf16x8(v0, yown + 8 * v, a0);
                a1 = s6_fma_bf16x8(v1, yown + 8 * v, a1);
            }
            a0 += __shfl_xor_sync(0xffffffffu, a0, 1);
            a0 += __shfl_xor_sync(0xffffffffu, a0, 2);
            a1 += __shfl_xor_sync(0xffffffffu, a1, 1);
            a1 += __shfl_xor_sync(0xffffffffu, a1, 2);
            if (q4 == 0) {
                po[j0] = a0;
                if (j1 < d) po[j1] = a1;
            }
        }
    }
    __syncthreads();
    s6_cluster_arrive<CL>();
    s6_cluster_wait();
    const unsigned int dp = (d + CL - 1) / CL;
    for (unsigned int j = rank * dp + threadIdx.x; j < min(d, (rank + 1) * dp); j += blockDim.x) {
        float s = s6_cluster_sum<CL>(po, j);
        if (b_out != nullptr) s += __ldg(b_out + j);
        residual[j] = __ldcg(residual + j) + s;
    }
    // No block leaves while another may still read its partials.
    s6_cluster_arrive<CL>();
    s6_cluster_wait();
}

// grid: one cluster (CL blocks), block a multiple of 32 threads (the host launches 512), dynamic
// shared memory as above; d % 8 == 0, di % 8 == 0, d_state ≤ 64, weights 16-byte aligned. In_proj
// tasks of 4 rows with their first 4 vectors per lane loaded before the wait for d up to 1,024,
// else 2 rows of 8. Compute capability 9.0 and newer (the host checks; a trap before that); the
// 16-block entry needs the non-portable cluster size allowed (the host sets it).
#if defined(S6_EMULATE) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define S6_LC_ENTRY(NAME, CL, NC1, PRE1)                                                              \
    extern "C" __global__ void __launch_bounds__(512, 1) __cluster_dims__(CL, 1, 1) NAME(S6_LS_PARAMS) { \
        s6_layer_step_cluster_impl<CL, NC1, PRE1>(S6_LS_ARGS);                                        \
    }
#else
#define S6_LC_ENTRY(NAME, CL, NC1, PRE1) \
    extern "C" __global__ void NAME(S6_LS_PARAMS) { __trap(); }
#endif
S6_LC_ENTRY(s6_layer_step_cluster_b1_c8, 8, 4, 4)
S6_LC_ENTRY(s6_layer_step_cluster_b1_c16, 16, 4, 4)
S6_LC_ENTRY(s6_layer_step_cluster_b1_c8_wide, 8, 2, 8)
S6_LC_ENTRY(s6_layer_step_cluster_b1_c16_wide, 16, 2, 8)
