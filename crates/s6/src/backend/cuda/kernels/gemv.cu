// Small-batch matrix-vector product for `linear` with few rows (decoding):
//   out[r, j] = sum_i x[r, i] * w[j, i] (+ bias[j]),  r < R (1..8), j < n
// w is [n, k] row-major (PyTorch layout); x has row stride ld. Memory-bound on w, so every weight
// element is read exactly once, with coalesced 16-byte loads when `vec` is set (k % 4 == 0, x and
// w 16-byte aligned, ld % 4 == 0; the host checks), 4-byte loads otherwise.
//
// Work split: a block of S6_GEMV_WARPS warps is cut into groups of `split` warps (split divides
// S6_GEMV_WARPS); each group owns NC consecutive columns j and its warps interleave over k. Every
// lane accumulates R x NC partial dot products in registers, the warp reduces them with shuffles,
// and the group's partials meet in shared memory. x (R x k floats) is read through the read-only
// cache: each group reads it once per NC columns. The host picks `split` so that the grid fills the
// device even for small n. Plain fp32 FMA accumulation.
//
// Two fusions for the decoding step of a Mamba block (`Backend::block_step`, cuda/mixer_step.rs),
// each giving bit for bit what the separate kernels give:
// - NORM (the `s6_gemv*_norm_r*` entries, for in_proj): x is the residual stream and every block
//   first computes each row's RMSNorm scale itself, with s6_add_rmsnorm's reduction (same thread
//   count, same order), then multiplies x by the scale and the norm weight as it loads it. Its
//   epilogue also runs the causal conv1d + SiLU for the columns j < conv_ch (the x half of xz):
//   the conv is depthwise, so the thread that owns column j has all it needs (the conv state is
//   read, not updated: the scan kernel moves the window, as in the unfused step).
// - accumulate (out_proj): out += product, the residual add of s6_add_rmsnorm (residual + delta).

#define S6_GEMV_WARPS 8

// Where a product goes: out[r, j] (+ bias[j]; added to out when accumulate), and, for the columns
// j < conv_ch, u[r, j] = silu(conv1d of the window conv_state[r, :, j] then out[r, j]), with the
// weights cw [conv_ch, kconv] and bias cb (nullable), as conv.cu's forward computes it.
struct S6GemvOut {
    const float* bias;
    float* out;
    unsigned int n;
    unsigned int accumulate;
    const float* cw;
    const float* cb;
    const float* conv_state;
    float* u;
    unsigned int conv_ch;
    unsigned int kconv;
};

// x as the kernels read it: row r at x + r * ld; with NORM, each value times the row's RMSNorm
// scale (shared memory) and the norm weight nw, in s6_add_rmsnorm's order (x * scale * w).
struct S6GemvIn {
    const float* x;
    unsigned int ld;
    const float* nw;
    const float* scale;
};

template <bool NORM>
__device__ __forceinline__ float4 s6_gemv_x4(const S6GemvIn& in, int r, unsigned int q) {
    float4 v = __ldg(reinterpret_cast<const float4*>(in.x + (unsigned long long)r * in.ld) + q);
    if constexpr (NORM) {
        const float4 g = __ldg(reinterpret_cast<const float4*>(in.nw) + q);
        const float sc = in.scale[r];
        v.x = v.x * sc * g.x;
        v.y = v.y * sc * g.y;
        v.z = v.z * sc * g.z;
        v.w = v.w * sc * g.w;
    }
    return v;
}

template <bool NORM>
__device__ __forceinline__ float s6_gemv_x1(const S6GemvIn& in, int r, unsigned int i) {
    float v = __ldg(in.x + (unsigned long long)r * in.ld + i);
    if constexpr (NORM) v = v * in.scale[r] * __ldg(in.nw + i);
    return v;
}

// NORM's prologue: scale[r] = rsqrt(mean(x[r]^2) + eps) for the R rows, each summed exactly as
// s6_add_rmsnorm sums a row (its launcher uses the same S6_GEMV_WARPS * 32 threads): the R rows in
// one pass and one block reduction, each row in the order s6_block_sum_rows<1> gives it there.
template <int R>
__device__ __forceinline__ void s6_gemv_norm_scales(const float* __restrict__ x, unsigned int ld, unsigned int k,
                                                    float eps, float* scale) {
    __shared__ float partial[R][32];
    float ss[R] = {};
#pragma unroll 4
    for (unsigned int i = threadIdx.x; i < k; i += blockDim.x)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float v = x[(unsigned long long)r * ld + i];
            ss[r] = fmaf(v, v, ss[r]);
        }
    s6_block_sum_rows<R>(ss, partial);
    if (threadIdx.x == 0)
#pragma unroll
        for (int r = 0; r < R; ++r) scale[r] = rsqrtf(ss[r] / (float)k + eps);
    __syncthreads();
}

// The PDL wait, then, with NORM, the R rows' RMSNorm scales into `scale` (shared memory): x is
// the previous kernel's output, so both come after the wait. Every thread of the block calls it.
template <int R, bool NORM>
__device__ __forceinline__ S6GemvIn s6_gemv_begin(S6GemvIn in, unsigned int k, float eps, float* scale) {
    S6_PDL_WAIT();
    if constexpr (NORM) {
        s6_gemv_norm_scales<R>(in.x, in.ld, k, eps, scale);
        in.scale = scale;
    }
    return in;
}

// Batch 1 (R = 1, the latency-bound case): the main loops of the 16-byte paths load a batch of
// S6_GEMV_BATCH vectors per weight row (indices i0, i0 + stride, ... below `count`; zeros past it,
// never used) before their FMAs, and the first batch is issued before the PDL wait, as are the
// conv epilogue's weights. The weights are constants during a kernel's lifetime and no kernel
// that may still be running writes them (prelude.cu), so those loads overlap the previous
// kernel. Larger batches keep the plain loops: measured on an H100 (session 9, runs 30-31) the
// early loads made 8 rows slower (130M 12,504 → 11,571 tok/s: every register held across the
// wait is held by blocks resident ahead of their turn), and a batch of 8 vectors doubled the
// registers (32 → 60) and slowed the 1.4B products alone (in_proj 23 → 28 µs); at batch 1 a
// batch of 1 was best for 1.4B (536 against 509 tok/s for the loop without early loads) and
// within 4% of the best for 130M. `S6_GEMV_BATCH` may be defined by the host for measurements
// (the environment variable of the same name).
#ifndef S6_GEMV_BATCH
#define S6_GEMV_BATCH 1
#endif
template <int R>
constexpr bool s6_gemv_early_loads = R == 1;

template <typename V, int U, int NC, typename W>
__device__ __forceinline__ void s6_gemv_load_batch(const W* const (&wr)[NC], unsigned int i0, unsigned int stride,
                                                   unsigned int count, V (&wv)[U][NC]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const unsigned int i = i0 + u * stride;
#pragma unroll
        for (int c = 0; c < NC; ++c) wv[u][c] = i < count ? __ldg(reinterpret_cast<const V*>(wr[c]) + i) : V{};
    }
}

// The one-row main loop of a 16-byte path (s6_gemv_early_loads): the first batch of weight vectors
// before the PDL wait (s6_gemv_begin), then batch after batch, `fma(in, i, vectors)` for every
// index i = t, t + stride, ... below `count`, in that order.
template <typename V, int R, int NC, bool NORM, typename W, typename Fma>
__device__ __forceinline__ void s6_gemv_early(const W* const (&wr)[NC], unsigned int t, unsigned int stride,
                                              unsigned int count, S6GemvIn& in, unsigned int k, float eps,
                                              float* scale, Fma fma) {
    constexpr int U = S6_GEMV_BATCH;
    V wv[U][NC];
    s6_gemv_load_batch<V, U, NC>(wr, t, stride, count, wv);
    in = s6_gemv_begin<R, NORM>(in, k, eps, scale);
    for (unsigned int i0 = t; i0 < count; i0 += U * stride) {
        if (i0 != t) s6_gemv_load_batch<V, U, NC>(wr, i0, stride, count, wv);
#pragma unroll
        for (int b = 0; b < U; ++b) {
            if (i0 + b * stride >= count) break;
            fma(in, i0 + b * stride, wv[b]);
        }
    }
}

// The main loop of a 16-byte path: at one row s6_gemv_early's, else the plain loop (one vector per
// weight row per step, unrolled UNROLL times) after the wait; `fma(in, i, vectors)` for every
// index i = t, t + stride, ... below `count`, in that order either way.
template <typename V, int R, int NC, bool NORM, int UNROLL, typename W, typename Fma>
__device__ __forceinline__ void s6_gemv_main(const W* const (&wr)[NC], unsigned int t, unsigned int stride,
                                             unsigned int count, S6GemvIn& in, unsigned int k, float eps,
                                             float* scale, Fma fma) {
    if constexpr (s6_gemv_early_loads<R>) {
        s6_gemv_early<V, R, NC, NORM>(wr, t, stride, count, in, k, eps, scale, fma);
    } else {
        in = s6_gemv_begin<R, NORM>(in, k, eps, scale);
#pragma unroll UNROLL
        for (unsigned int i = t; i < count; i += stride) {
            V wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(reinterpret_cast<const V*>(wr[c]) + i);
            fma(in, i, wv);
        }
    }
}

// The conv epilogue's weights (cw row and bias of the thread's column), loaded before the PDL
// wait by the threads that will run it (see s6_gemv_store), for kernels of up to
// S6_GEMV_CONV_PRE taps; longer kernels load them in the epilogue.
#define S6_GEMV_CONV_PRE 4
struct S6ConvPre {
    float w[S6_GEMV_CONV_PRE];
    float b;
};

// The causal conv's newest output of one channel before its SiLU: from the bias, tap t of the
// window (its k - 1 slots, then this step's x) in ascending t, as conv.cu. With the taps' weights
// and the window's slots in registers (k ≤ S6_GEMV_CONV_PRE) ...
__device__ __forceinline__ float s6_conv_newest(const float (&w)[S6_GEMV_CONV_PRE], float bias,
                                                const float (&win)[S6_GEMV_CONV_PRE], float x, unsigned int k) {
    float a = bias;
#pragma unroll
    for (unsigned int t = 0; t < S6_GEMV_CONV_PRE; ++t) {
        if (t + 1 < k) a = fmaf(w[t], win[t], a);
        else if (t + 1 == k) a = fmaf(w[t], x, a);
    }
    return a;
}

// ... or read where they are: the weights wj[0..k), the slots at st + t · stride.
__device__ __forceinline__ float s6_conv_newest(const float* wj, float bias, const float* st, unsigned long long stride,
                                                float x, unsigned int k) {
    float a = bias;
    for (unsigned int t = 0; t + 1 < k; ++t) a = fmaf(wj[t], st[t * stride], a);
    return fmaf(wj[k - 1], x, a);
}

template <int R, int NC>
__device__ __forceinline__ S6ConvPre s6_gemv_conv_preload(const S6GemvOut& o, unsigned long long j0, unsigned int s,
                                                          unsigned int lane) {
    S6ConvPre p{};
    if (s6_gemv_early_loads<R> && s == 0 && lane < NC * R && o.kconv <= S6_GEMV_CONV_PRE) {
        const unsigned long long j = j0 + lane / R;
        if (j < o.n && j < o.conv_ch) {
#pragma unroll
            for (unsigned int t = 0; t < S6_GEMV_CONV_PRE; ++t)
                if (t < o.kconv) p.w[t] = __ldg(o.cw + j * o.kconv + t);
            p.b = o.cb != nullptr ? __ldg(o.cb + j) : 0.0f;
        }
    }
    return p;
}

// Before S6_PDL_WAIT: the block's weight rows (the columns its warp groups own, a contiguous range
// of w) are prefetched into L2 by warp 0, so that the weight stream, the bulk of a small-batch
// product's traffic, starts while the previous kernel (a latency-bound scan step, another
// product's tail) still runs. Off when `prefetch` is 0.
template <typename W, int NC>
__device__ __forceinline__ void s6_gemv_prefetch_l2(const W* w, unsigned int n, unsigned int k, unsigned int split,
                                                    unsigned int prefetch) {
    if (!prefetch || threadIdx.x >= 32) return;
    const unsigned long long cols = (unsigned long long)(S6_GEMV_WARPS / split) * NC;
    const unsigned long long j0 = (unsigned long long)blockIdx.x * cols;
    if (j0 >= n) return;
    const unsigned long long j1 = j0 + cols < n ? j0 + cols : n;
    s6_prefetch_l2(w + j0 * k, (j1 - j0) * k * sizeof(W));
}

// The end of both kernels: warp shuffles reduce every lane's R x NC partial sums, the group's
// warps meet in shared memory, and the group's first warp writes the columns below n (S6GemvOut).
template <int R, int NC>
__device__ __forceinline__ void s6_gemv_store(float (&acc)[NC][R], float (*part)[NC * R], unsigned int warp,
                                              unsigned int lane, unsigned int s, unsigned int split,
                                              unsigned long long j0, const S6GemvOut& o, const S6ConvPre& pre) {
    const unsigned int n = o.n;
    // Warp reduction: every lane ends with the warp's sums.
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[c][r];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[c][r] = v;
        }
    if (lane == 0) {
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int r = 0; r < R; ++r) part[warp][c * R + r] = acc[c][r];
    }
    __syncthreads();
    // The group's first warp sums its warps' partials: lane l < NC*R handles (c, r) = (l / R, l % R).
    if (s == 0 && lane < NC * R) {
        const unsigned int c = lane / R, r = lane % R;
        const unsigned long long j = j0 + c;
        if (j < n) {
            float v = 0.0f;
            for (unsigned int q = 0; q < split; ++q) v += part[warp + q][lane];
            if (o.bias != nullptr) v += o.bias[j];
            float* dst = o.out + (unsigned long long)r * n + j;
            if (o.accumulate) v = *dst + v;
            *dst = v;
            if (j < o.conv_ch) {
                // Tap t of the window: the state's slots, then this step's x (ascending t from
                // the bias, as conv.cu).
                const unsigned int kc = o.kconv, ch = o.conv_ch;
                const float* st = o.conv_state + (unsigned long long)r * (kc - 1) * ch + j;
                float a;
                if (s6_gemv_early_loads<R> && kc <= S6_GEMV_CONV_PRE) {
                    // The state's slots first, all in flight together, then the same FMAs.
                    float sv[S6_GEMV_CONV_PRE] = {};
#pragma unroll
                    for (unsigned int t = 0; t + 1 < S6_GEMV_CONV_PRE; ++t)
                        if (t + 1 < kc) sv[t] = st[(unsigned long long)t * ch];
                    a = s6_conv_newest(pre.w, pre.b, sv, v, kc);
                } else {
                    a = s6_conv_newest(o.cw + j * kc, o.cb != nullptr ? o.cb[j] : 0.0f, st, ch, v, kc);
                }
                o.u[(unsigned long long)r * ch + j] = s6_silu(a);
            }
        }
    }
}

// The start of both kernels: the warp's rank `s` in its group of `split` warps, the group's first
// column (returned) and its NC weight rows `wr` (columns past n read the last row: valid memory,
// never written).
template <typename W, int NC>
__device__ __forceinline__ unsigned long long s6_gemv_rows(const W* w, unsigned int n, unsigned int k,
                                                            unsigned int split, unsigned int warp, unsigned int& s,
                                                            const W* (&wr)[NC]) {
    const unsigned int groups = S6_GEMV_WARPS / split;
    s = warp % split;
    const unsigned long long j0 = ((unsigned long long)blockIdx.x * groups + warp / split) * NC;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        unsigned long long j = j0 + c;
        if (j >= n) j = n - 1;
        wr[c] = w + j * k;
    }
    return j0;
}

// One 16-byte step of the f32 kernel: 4 weights of each of the NC rows times x[r, 4i .. 4i+3].
template <int R, int NC, bool NORM>
__device__ __forceinline__ void s6_gemv_fma4(const S6GemvIn& in, unsigned int i, const float4 (&wv)[NC],
                                             float (&acc)[NC][R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float4 xv = s6_gemv_x4<NORM>(in, r, i);
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            acc[c][r] = fmaf(wv[c].x, xv.x, acc[c][r]);
            acc[c][r] = fmaf(wv[c].y, xv.y, acc[c][r]);
            acc[c][r] = fmaf(wv[c].z, xv.z, acc[c][r]);
            acc[c][r] = fmaf(wv[c].w, xv.w, acc[c][r]);
        }
    }
}

template <int R, int NC, bool NORM>
__device__ __forceinline__ void s6_gemv_impl(S6GemvIn in, const float* __restrict__ w, const S6GemvOut& o,
                                             unsigned int k, unsigned int split, unsigned int vec, float eps) {
    __shared__ float part[S6_GEMV_WARPS][NC * R];
    __shared__ float scale[R];
    const unsigned int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned int s;
    const float* wr[NC];
    const unsigned long long j0 = s6_gemv_rows<float, NC>(w, o.n, k, split, warp, s, wr);
    const S6ConvPre pre = s6_gemv_conv_preload<R, NC>(o, j0, s, lane);
    float acc[NC][R] = {};

    const unsigned int t = s * 32 + lane, stride = split * 32;
    if (vec) {
        const unsigned int k4 = k >> 2;
        s6_gemv_main<float4, R, NC, NORM, 4>(wr, t, stride, k4, in, k, eps, scale,
                                             [&](const S6GemvIn& x, unsigned int i, const float4(&wv)[NC]) {
                                                 s6_gemv_fma4<R, NC, NORM>(x, i, wv, acc);
                                             });
    } else {
        in = s6_gemv_begin<R, NORM>(in, k, eps, scale);
#pragma unroll 4
        for (unsigned int i = t; i < k; i += stride) {
            float wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(wr[c] + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float xv = s6_gemv_x1<NORM>(in, r, i);
#pragma unroll
                for (int c = 0; c < NC; ++c) acc[c][r] = fmaf(wv[c], xv, acc[c][r]);
            }
        }
    }

    s6_gemv_store<R, NC>(acc, part, warp, lane, s, split, j0, o, pre);
}

// The entry points' arguments, shared by the f32 and bf16 kernels (W: the weight element type).
#define S6_GEMV_PLAIN_PARAMS(W)                                                                             \
    const float *__restrict__ x, unsigned int ld, const W *__restrict__ w, const float *__restrict__ bias,   \
        float *__restrict__ out, unsigned int n, unsigned int k, unsigned int split, unsigned int vec,       \
        unsigned int prefetch, unsigned int accumulate
#define S6_GEMV_NORM_PARAMS(W)                                                                              \
    const float *__restrict__ x, unsigned int ld, const W *__restrict__ w, const float *__restrict__ bias,   \
        float *__restrict__ out, unsigned int n, unsigned int k, unsigned int split, unsigned int vec,       \
        unsigned int prefetch, const float *__restrict__ nw, float eps, const float *__restrict__ cw,         \
        const float *__restrict__ cb, const float *__restrict__ conv_state, float *__restrict__ u,            \
        unsigned int conv_ch, unsigned int kconv

// One pair of entry points per row count R (1..8): plain (`out = x·Wᵀ + bias`, or `out +=` with
// accumulate) and NORM with the conv epilogue. NC = 2 columns per group (each x value loaded
// and rounded once for two weight rows: halves the x reads per weight byte, which otherwise load
// the L1 as hard as the weights load DRAM). For one row S6_GEMV_NC1 and for 2 to 4 rows
// S6_GEMV_NC24, both 2 by default, defined by the host (which sizes the grid with the same value)
// from the `S6_GEMV_NC1` / `S6_GEMV_NC24` environment variables for measurements (1, 2 or 4).
// Measured on an H100, bf16 decoding: one row, 1 → 2 columns took 130M from 2,575 to 2,880 tok/s
// and 1.4B from 534 to 619 (session 9); 2 and 4 rows, 1 → 2 columns took 130M from 4,101 / 6,795
// to 4,780 / 7,877 tok/s and 1.4B from 805 / 1,242 to 1,045 / 1,842 (session 10; 4 columns: 4,624
// / 7,458 and 1,057 / 1,790). Block:
// S6_GEMV_WARPS * 32 threads; grid: ceil(n / (NC * S6_GEMV_WARPS / split)) blocks.
#ifndef S6_GEMV_NC1
#define S6_GEMV_NC1 2
#endif
#ifndef S6_GEMV_NC24
#define S6_GEMV_NC24 2
#endif
#define S6_GEMV_ENTRIES(PREFIX, IMPL, W, R, NC)                                                             \
    extern "C" __global__ void __launch_bounds__(S6_GEMV_WARPS * 32) PREFIX##_r##R(S6_GEMV_PLAIN_PARAMS(W)) { \
        S6_PDL_LAUNCH();                                                                                    \
        s6_gemv_prefetch_l2<W, NC>(w, n, k, split, prefetch);                                               \
        const S6GemvIn in{x, ld, nullptr, nullptr};                                                         \
        const S6GemvOut o{bias, out, n, accumulate, nullptr, nullptr, nullptr, nullptr, 0, 0};              \
        IMPL<R, NC, false>(in, w, o, k, split, vec, 0.0f);                                                  \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(S6_GEMV_WARPS * 32)                                        \
        PREFIX##_norm_r##R(S6_GEMV_NORM_PARAMS(W)) {                                                        \
        S6_PDL_LAUNCH();                                                                                    \
        s6_gemv_prefetch_l2<W, NC>(w, n, k, split, prefetch);                                               \
        const S6GemvIn in{x, ld, nw, nullptr};                                                              \
        const S6GemvOut o{bias, out, n, 0, cw, cb, conv_state, u, conv_ch, kconv};                          \
        IMPL<R, NC, true>(in, w, o, k, split, vec, eps);                                                    \
    }

S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 1, S6_GEMV_NC1)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 2, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 3, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 4, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 5, 2)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 6, 2)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 7, 2)
S6_GEMV_ENTRIES(s6_gemv, s6_gemv_impl, float, 8, 2)

// The bf16 variant for `Compute::Bf16`: w is bf16 (bit patterns: the weight's cached bf16 copy),
// x stays f32 in memory and is rounded to bf16 in registers (exactly what the cast kernel would
// store, so the result equals a product of bf16 inputs, without a cast launch per product), fp32
// accumulation, fp32 output: half the weight bytes of the f32 kernel. `vec`: 2 = 16-byte weight
// loads (8 values; k % 8 == 0), 1 = 8-byte weight loads (4 values; k % 4 == 0), both with float4
// loads of x (x 16-byte aligned, ld % 4 == 0); 0 = scalar loads. Same work split and grid as the
// f32 kernel.
// One instruction (cvt.rn.bf16.f32, sm_80 and later): the rounding is per x value and weight
// column group, so with 5-8 rows the bit-twiddling version made the kernel compute-bound. Round to
// nearest even like s6_f32_to_bf16 for every non-NaN value.
__device__ __forceinline__ float s6_rbf16(float v) {
#if __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return s6_bf16_to_f32(h);
#else
    return s6_bf16_to_f32(s6_f32_to_bf16(v));
#endif
}

// acc plus the 8 products of one 16-byte weight vector (8 bf16) with x[0..7] (bf16 values as
// floats), added in index order. Also layer_step.cu's.
__device__ __forceinline__ float s6_fma_bf16x8(const uint4 w, const float* x, float acc) {
    acc = fmaf(s6_bf16_lo(w.x), x[0], acc);
    acc = fmaf(s6_bf16_hi(w.x), x[1], acc);
    acc = fmaf(s6_bf16_lo(w.y), x[2], acc);
    acc = fmaf(s6_bf16_hi(w.y), x[3], acc);
    acc = fmaf(s6_bf16_lo(w.z), x[4], acc);
    acc = fmaf(s6_bf16_hi(w.z), x[5], acc);
    acc = fmaf(s6_bf16_lo(w.w), x[6], acc);
    acc = fmaf(s6_bf16_hi(w.w), x[7], acc);
    return acc;
}

// One 16-byte step of the bf16 kernel: 8 weights of each of the NC rows times x[r, 8i .. 8i+7]
// rounded to bf16.
template <int R, int NC, bool NORM>
__device__ __forceinline__ void s6_gemv_bf16_fma8(const S6GemvIn& in, unsigned int i, const uint4 (&wv)[NC],
                                                  float (&acc)[NC][R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float4 xa = s6_gemv_x4<NORM>(in, r, 2 * i), xb = s6_gemv_x4<NORM>(in, r, 2 * i + 1);
        const float xs[8] = {s6_rbf16(xa.x), s6_rbf16(xa.y), s6_rbf16(xa.z), s6_rbf16(xa.w),
                             s6_rbf16(xb.x), s6_rbf16(xb.y), s6_rbf16(xb.z), s6_rbf16(xb.w)};
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[c][r] = s6_fma_bf16x8(wv[c], xs, acc[c][r]);
    }
}

template <int R, int NC, bool NORM>
__device__ __forceinline__ void s6_gemv_bf16_impl(S6GemvIn in, const unsigned short* __restrict__ w,
                                                  const S6GemvOut& o, unsigned int k, unsigned int split,
                                                  unsigned int vec, float eps) {
    __shared__ float part[S6_GEMV_WARPS][NC * R];
    __shared__ float scale[R];
    const unsigned int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned int s;
    const unsigned short* wr[NC];
    const unsigned long long j0 = s6_gemv_rows<unsigned short, NC>(w, o.n, k, split, warp, s, wr);
    const S6ConvPre pre = s6_gemv_conv_preload<R, NC>(o, j0, s, lane);
    float acc[NC][R] = {};

    const unsigned int t = s * 32 + lane, stride = split * 32;
    if (vec == 2) {
        const unsigned int k8 = k >> 3;
        s6_gemv_main<uint4, R, NC, NORM, 2>(wr, t, stride, k8, in, k, eps, scale,
                                            [&](const S6GemvIn& x, unsigned int i, const uint4(&wv)[NC]) {
                                                s6_gemv_bf16_fma8<R, NC, NORM>(x, i, wv, acc);
                                            });
    } else if (vec == 1) {
        in = s6_gemv_begin<R, NORM>(in, k, eps, scale);
        const unsigned int k4 = k >> 2;
#pragma unroll 4
        for (unsigned int i = t; i < k4; i += stride) {
            uint2 wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(reinterpret_cast<const uint2*>(wr[c]) + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 xv = s6_gemv_x4<NORM>(in, r, i);
                const float x0 = s6_rbf16(xv.x), x1 = s6_rbf16(xv.y), x2 = s6_rbf16(xv.z), x3 = s6_rbf16(xv.w);
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    float a = acc[c][r];
                    a = fmaf(s6_bf16_lo(wv[c].x), x0, a);
                    a = fmaf(s6_bf16_hi(wv[c].x), x1, a);
                    a = fmaf(s6_bf16_lo(wv[c].y), x2, a);
                    a = fmaf(s6_bf16_hi(wv[c].y), x3, a);
                    acc[c][r] = a;
                }
            }
        }
    } else {
        in = s6_gemv_begin<R, NORM>(in, k, eps, scale);
#pragma unroll 4
        for (unsigned int i = t; i < k; i += stride) {
            float wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = s6_bf16_to_f32(__ldg(wr[c] + i));
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float xv = s6_rbf16(s6_gemv_x1<NORM>(in, r, i));
#pragma unroll
                for (int c = 0; c < NC; ++c) acc[c][r] = fmaf(wv[c], xv, acc[c][r]);
            }
        }
    }
    s6_gemv_store<R, NC>(acc, part, warp, lane, s, split, j0, o, pre);
}

S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 1, S6_GEMV_NC1)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 2, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 3, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 4, S6_GEMV_NC24)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 5, 2)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 6, 2)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 7, 2)
S6_GEMV_ENTRIES(s6_gemv_bf16, s6_gemv_bf16_impl, unsigned short, 8, 2)
