// The fused selective scan forward (Mamba's S6 layer):
//   dt = softplus(delta + delta_bias), h_t = exp(dt*A) h_{t-1} + dt*B_t*u_t,
//   y_t = (C_t . h_t + D*u_t) * silu(z_t)          (gate optional: y_t = C_t . h_t + D*u_t)
//
// Two structures follow. N = 16 runs the second, the vector kernels (s6_scan_n16_<shape>: the
// block shape, chosen by the number of channels on the host, cuda/mod.rs `scan_n16`; session
// 10, 1.48x the kernel of sessions 2-9 on an H100: docs/BENCHMARKS.md). Other N use the first
// structure. scripts/emulate runs the second on the CPU against an f64 reference.
//
// First structure — work split: a block owns CPB channels of one sequence; each channel's N states are split over
// SPLIT consecutive lanes of a warp, NPT = N_MAX / SPLIT states per lane, held in registers for the
// whole sequence. The sequence is walked in chunks of T steps: the block stages u, softplus(dt),
// silu(z) (coalesced rows of CPB channels) and B_t, C_t (shared by all channels of the sequence)
// in shared memory, then every lane runs the recurrence over the chunk; the SPLIT partial dot
// products C_t . h_t are summed with warp shuffles, and y goes through shared memory back to
// global memory in coalesced rows. exp(dt*A) is computed on the fly as exp2(dt * A*log2(e)).
// Only y and the final state are written; any L works, the state is carried across chunks and,
// through `state`, across calls.

template <int NPT, int SPLIT, int CPB, int T>
__device__ __forceinline__ void s6_scan_body(const float* __restrict__ u, const float* __restrict__ delta,
                                             const float* __restrict__ delta_bias, const float* __restrict__ a,
                                             const float* __restrict__ bm, unsigned int ldb,
                                             const float* __restrict__ cm, unsigned int ldc,
                                             const float* __restrict__ dskip, const float* __restrict__ z,
                                             unsigned int ldz, float* __restrict__ state, float* __restrict__ y,
                                             unsigned short* __restrict__ y16, unsigned int seqlen,
                                             unsigned int dim, unsigned int n) {
    constexpr int NMAX = NPT * SPLIT;
    __shared__ float s_u[T][CPB];
    __shared__ float s_dt[T][CPB];
    __shared__ float s_z[T][CPB];
    __shared__ float s_y[T][CPB];
    __shared__ float s_b[T][NMAX];
    __shared__ float s_c[T][NMAX];

    const int tid = threadIdx.x;
    const int ch = tid / SPLIT, part = tid % SPLIT;
    const unsigned int b = blockIdx.y;
    const unsigned int d0 = blockIdx.x * CPB;
    const unsigned int d = d0 + ch;
    const bool active = d < dim;
    const unsigned long long row0 = (unsigned long long)b * seqlen;

    float h[NPT], a2[NPT];
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int s = part * NPT + i;
        const bool ok = active && s < (int)n;
        h[i] = ok ? state[((unsigned long long)b * dim + d) * n + s] : 0.0f;
        // exp(dt*A) = exp2(dt * A*log2(e)); unused slots (s >= n) read B = C = 0 and stay 0.
        a2[i] = ok ? a[(unsigned long long)d * n + s] * 1.4426950408889634f : 0.0f;
    }
    const float dsk = active ? dskip[d] : 0.0f;

    for (unsigned int t0 = 0; t0 < seqlen; t0 += T) {
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        __syncthreads();  // the previous chunk's s_y was stored
        for (int idx = tid; idx < tl * CPB; idx += CPB * SPLIT) {
            const int t = idx / CPB, c = idx % CPB;
            const unsigned int dd = d0 + c;
            float uv = 0.0f, dtv = 0.0f, zv = 1.0f;
            if (dd < dim) {
                const unsigned long long r = row0 + t0 + t;
                uv = u[r * dim + dd];
                dtv = s6_softplus(delta[r * dim + dd] + delta_bias[dd]);
                if (z != nullptr) {
                    const float zz = z[r * ldz + dd];
                    zv = zz / (1.0f + expf(-zz));
                }
            }
            s_u[t][c] = uv;
            s_dt[t][c] = dtv;
            s_z[t][c] = zv;
        }
        for (int idx = tid; idx < tl * NMAX; idx += CPB * SPLIT) {
            const int t = idx / NMAX, s = idx % NMAX;
            const unsigned long long r = row0 + t0 + t;
            s_b[t][s] = s < (int)n ? bm[r * ldb + s] : 0.0f;
            s_c[t][s] = s < (int)n ? cm[r * ldc + s] : 0.0f;
        }
        __syncthreads();
        for (int t = 0; t < tl; t++) {
            const float dt = s_dt[t][ch];
            const float x = s_u[t][ch];
            const float dx = dt * x;
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < NPT; i++) {
                const int s = part * NPT + i;
                h[i] = fmaf(exp2f(dt * a2[i]), h[i], dx * s_b[t][s]);
                acc = fmaf(h[i], s_c[t][s], acc);
            }
#pragma unroll
            for (int off = 1; off < SPLIT; off <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (part == 0) s_y[t][ch] = fmaf(dsk, x, acc) * s_z[t][ch];
        }
        __syncthreads();
        for (int idx = tid; idx < tl * CPB; idx += CPB * SPLIT) {
            const int t = idx / CPB, c = idx % CPB;
            const unsigned int dd = d0 + c;
            if (dd < dim) {
                const unsigned long long i = (row0 + t0 + t) * dim + dd;
                if (y != nullptr) y[i] = s_y[t][c];
                if (y16 != nullptr) y16[i] = s6_f32_to_bf16(s_y[t][c]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int s = part * NPT + i;
        if (active && s < (int)n) state[((unsigned long long)b * dim + d) * n + s] = h[i];
    }
}

#define S6_SCAN_KERNEL(NAME, NPT, SPLIT, CPB, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(CPB * SPLIT)                                                        \
        NAME(const float* __restrict__ u, const float* __restrict__ delta, const float* __restrict__ delta_bias,    \
             const float* __restrict__ a, const float* __restrict__ bm, unsigned int ldb,                            \
             const float* __restrict__ cm, unsigned int ldc, const float* __restrict__ dskip,                        \
             const float* __restrict__ z, unsigned int ldz, float* __restrict__ state, float* __restrict__ y,        \
             unsigned short* __restrict__ y16, unsigned int seqlen, unsigned int dim, unsigned int n) {              \
        S6_PDL_ENTRY();                                                                                              \
        s6_scan_body<NPT, SPLIT, CPB, T>(u, delta, delta_bias, a, bm, ldb, cm, ldc, dskip, z, ldz, state, y, y16,    \
                                         seqlen, dim, n);                                                            \
    }

// General N: 4 lanes per channel, 32 channels (128 threads) per block; N_MAX = 4 * NPT. y16
// (may be null): y also written rounded to bf16 (out_proj's input under bf16 products, bf16.rs);
// y may be null where it is held in bf16 alone (training keeps it per layer: at d_state 64 and
// 130M's shape, batch 16 × 2048, f32 y took 2.4 GB more than d_state 16's bf16 one, run 87).
S6_SCAN_KERNEL(s6_scan_n4, 1, 4, 32, 64)
S6_SCAN_KERNEL(s6_scan_n8, 2, 4, 32, 64)
S6_SCAN_KERNEL(s6_scan_n16, 4, 4, 32, 64)
S6_SCAN_KERNEL(s6_scan_n32, 8, 4, 32, 32)
S6_SCAN_KERNEL(s6_scan_n64, 16, 4, 32, 16)

// Second structure, N = 16 only (session 10): 4 states per lane as one float4 (4 lanes per
// channel), the step's inputs read from shared memory as vectors: (Δ, Δ·u) as one float2 per
// channel, B_t and C_t as float4 per lane; per state and step that leaves the exp's multiply and
// the SFU exp, Δu·B, the state FMA and the output FMA. The per-(t, channel) work is cheaper too:
// softplus's exp and silu's exp and reciprocal on the SFU, log1p as a polynomial accurate to ~2 ulp
// (s6_softplus_fast, prelude.cu: Δ is typically 1e-3..1e-1, where an approximate log would lose
// digits), the channel's bias and D loaded once. No warp shuffles in the time loop: each lane
// writes its partial dot product C_t . h_t to shared memory, and a channel's SPLIT partials are
// summed when the chunk's y is stored. The global loads are software-pipelined: the raw inputs of
// chunk k+1 are loaded into registers before chunk k's recurrence runs, and moved (with softplus
// and silu applied) into shared memory after it. The activations (u, Δ, z, B, C in, y out) are TI:
// f32 for the model, or bf16 (`unsigned short` bit patterns, for Cuda::selective_scan_bf16: bf16 in
// and out, fp32 state and arithmetic, as the official kernel's bf16 path). S6Io converts them;
// values stay in their stored type until used, so that the pipelined loads have no consumer before
// the next chunk (a conversion right after a load would stall the warp there, undoing the
// pipelining).
// Whether the recurrence loads a step's shared-memory operands one step ahead (1, the default) or
// at the step (0); the host defines it from `S6_SCAN_AHEAD` for measurements (cuda/mod.rs).
#ifndef S6_SCAN_AHEAD
#define S6_SCAN_AHEAD 1
#endif

template <typename T>
struct S6Io;
template <>
struct S6Io<float> {
    __device__ static float f(float v) { return v; }
    __device__ static float of(float v) { return v; }
};
template <>
struct S6Io<unsigned short> {
    __device__ static float f(unsigned short v) { return s6_bf16_to_f32(v); }
    __device__ static unsigned short of(float v) { return s6_f32_to_bf16(v); }
};

// Segments (session 13): where a scan's blocks do not cover the device once (a few long
// sequences), the sequence can be cut into gridDim.z segments of seg_len steps, run side by side
// (cuda/mod.rs `scan_segment_count`; with a block or more per SM they measured slower).
// A first launch with LOCAL (s6_scan_n16_seg_*, segments 0..S-2) runs each segment's recurrence
// from a zero state and writes its final state and the sum of its Δ (seg_h, seg_sum: one entry
// of 16 + 1 floats per (channel, segment)); the main launch then starts segment s from
//   h_s = exp(A·ΣΔ_{s-1}) h_{s-1} + hlocal_{s-1}   (h_0 = the state passed in),
// folded over the segments before it (16 exps per segment and channel), and only the last
// segment writes the final state. The linear recurrence makes this exact up to rounding: the
// product of a segment's exp(Δ_t A) is exp(A ΣΔ_t). One segment (gridDim.z = 1, seg_len =
// seqlen, null seg_h) is the plain scan.
// CK > 0 (with LOCAL, one segment: s6_scan_n16_ckpt8): instead of seg_h / seg_sum, the state at
// the start of every CK-step chunk is written to ckpt[(b, channel, chunk)][16], the layout of the
// d_state-16 scan backward's checkpoints (scan_backward.cu, chunks of CK steps), which then skips
// its own forward pass (S6B_CKPT_GIVEN). The same operations on the same values as that pass: the
// same states, bit for bit.
template <typename TI, typename TB, int CPB, int T, bool W16, bool LOCAL, int CK = 0>
__device__ __forceinline__ void s6_scan_n16_vec_body(const TI* __restrict__ u, const TI* __restrict__ delta,
                                                     const float* __restrict__ delta_bias,
                                                     const float* __restrict__ a, const TB* __restrict__ bm,
                                                     unsigned int ldb, const TB* __restrict__ cm, unsigned int ldc,
                                                     const float* __restrict__ dskip, const TI* __restrict__ z,
                                                     unsigned int ldz, float* __restrict__ state, TI* __restrict__ y,
                                                     unsigned short* __restrict__ y16, float* __restrict__ seg_h,
                                                     float* __restrict__ seg_sum, unsigned int seg_len,
                                                     unsigned int seqlen_total, unsigned int dim,
                                                     float* __restrict__ ckpt = nullptr) {
    static_assert(CK == 0 || LOCAL, "checkpoints from the output-free recurrence only");
    constexpr int N = 16, NPT = 4;
    constexpr int SPLIT = N / NPT;
    constexpr int NT = CPB * SPLIT;
    // A thread stages and stores the (t, channel) elements of one channel, sc = tid % CPB, at
    // steps tid / CPB + SPLIT·e of the chunk: its addresses are one base and a stride.
    constexpr int E1 = T / SPLIT;
    constexpr int E2 = T * N / NT;
    static_assert(T % SPLIT == 0, "whole (t, channel) rounds");
    static_assert((T * N) % NT == 0, "B and C of a chunk in whole rounds of the block's threads");
    // One row more than a chunk: the recurrence reads step t + 1's operands during step t
    // (S6_SCAN_AHEAD), also at t = T - 1, where the extra row's value is not used.
    __shared__ float2 s_dx[T + 1][CPB];  // (Δ, Δ·u)
    __shared__ __align__(16) float s_b[T + 1][N];
    __shared__ __align__(16) float s_c[LOCAL ? 1 : T + 1][N];
    __shared__ __align__(16) float s_part[LOCAL ? 1 : T][CPB][SPLIT];

    const int tid = threadIdx.x;
    const int ch = tid / SPLIT, part = tid % SPLIT;
    const unsigned int b = blockIdx.y;
    const unsigned int d0 = blockIdx.x * CPB;
    const bool active = d0 + ch < dim;
    // This block's segment: steps [t_first, t_first + seqlen) of the sequence.
    const unsigned int seg = blockIdx.z, nseg = LOCAL ? gridDim.z + 1 : gridDim.z;
    const unsigned int t_first = seg * seg_len;
    const unsigned int seqlen = min(seg_len, seqlen_total - t_first);
    const unsigned long long row0 = (unsigned long long)b * seqlen_total + t_first;
    // The channel this thread stages and stores, and its first step in a chunk.
    const int sc = tid % CPB, st = tid / CPB;
    const unsigned int sd = d0 + sc;
    const bool s_active = sd < dim;
    const float bias_s = s_active ? delta_bias[sd] : 0.0f;
    const float dsk_s = s_active ? dskip[sd] : 0.0f;
    const unsigned int stride = SPLIT * dim, stride_z = SPLIT * ldz;

    float h[NPT], a2[NPT];
    float* hp = state + ((unsigned long long)b * dim + d0 + ch) * N + part * NPT;
    {
        float4 hv, av;
        if (active) {
            hv = *reinterpret_cast<const float4*>(hp);
            av = *reinterpret_cast<const float4*>(a + (unsigned long long)(d0 + ch) * N + part * NPT);
        }
        const float hs[NPT] = {hv.x, hv.y, hv.z, hv.w}, as[NPT] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int i = 0; i < NPT; i++) {
            h[i] = active && !LOCAL ? hs[i] : 0.0f;
            a2[i] = active ? as[i] * 1.4426950408889634f : 0.0f;
        }
    }
    // Where this channel's segment entries are: (channel, segment) rows of 16 states / one sum.
    const unsigned long long seg_row = ((unsigned long long)b * dim + d0 + ch) * (nseg - 1);
    // CK: this channel's first checkpoint row (ceil(seqlen / CK) per channel).
    const unsigned long long ck_row = ((unsigned long long)b * dim + d0 + ch) * ((seqlen_total + CK - 1) / (CK ? CK : 1));
    if (!LOCAL && active) {
        for (unsigned int j = 0; j < seg; j++) {
            const float sum = seg_sum[seg_row + j];
            const float4 hl = *reinterpret_cast<const float4*>(seg_h + (seg_row + j) * N + part * NPT);
            const float hls[NPT] = {hl.x, hl.y, hl.z, hl.w};
#pragma unroll
            for (int i = 0; i < NPT; i++) h[i] = fmaf(s6_ex2_ftz(sum * a2[i]), h[i], hls[i]);
        }
    }
    float dt_sum = 0.0f;  // LOCAL: the segment's ΣΔ

    TI pu[E1], pd[E1], pz[E1];
    TB pb[E2], pc[E2];
    float ru[E1], rg[E1];  // u and silu(z) of this thread's elements, for the store after the chunk
    // A thread's (t, channel) elements of a chunk are SPLIT rows apart, its B and C elements NT / N
    // rows apart. In a full chunk (every chunk but a sequence's last) the loads and stores are
    // unmasked and their pointers stepped, one 64-bit add each; computing each address and mask
    // costs ~6 instructions per access (session 15, H200: -11% at B=4 D=2048 with 16 elements per
    // thread, -9% at B=16 D=1536 with 8); a partial chunk takes the masked path. (With 4 elements
    // per thread, the 64-channel shape since dropped, it saved less than its registers cost.)
    static_assert(NT % N == 0, "B and C rows whole per thread");
    static_assert(E1 >= 8, "the stepped loads were measured to pay from 8 elements per thread");
    // Step t + 1's operands loaded during step t (measured in session 16 on an H100, bf16, L =
    // 2048: 0.190 → 0.163 ms at B=4 D=2048, 0.444 → 0.409 at B=16 D=1536).
    constexpr bool AHEAD = S6_SCAN_AHEAD != 0;
    if constexpr (!LOCAL) {
#pragma unroll
        for (int e = 0; e < E1; e++) pz[e] = TI(0);  // stays 0 without a gate (unused then)
    }
    auto load = [&](unsigned int t0) {
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        const unsigned long long r = row0 + t0 + st;
        const TI* up = u + r * dim + sd;
        const TI* dp = delta + r * dim + sd;
        const TI* zp = z + r * ldz + sd;
        if (tl == T && s_active) {
#pragma unroll
            for (int e = 0; e < E1; e++) {
                pu[e] = *up;
                pd[e] = *dp;
                up += stride;
                dp += stride;
                if (!LOCAL && z != nullptr) {
                    pz[e] = *zp;
                    zp += stride_z;
                }
            }
        } else {
#pragma unroll
            for (int e = 0; e < E1; e++) {
                const bool ok = s_active && st + SPLIT * e < tl;
                pu[e] = ok ? up[e * stride] : TI(0);
                pd[e] = ok ? dp[e * stride] : TI(0);
                if (!LOCAL) pz[e] = ok && z != nullptr ? zp[e * stride_z] : TI(0);
            }
        }
        if (tl == T) {
            constexpr int BROWS = NT / N;  // rows between a thread's B (and C) elements
            const TB* bp = bm + (row0 + t0 + tid / N) * ldb + tid % N;
            const TB* cp = cm + (row0 + t0 + tid / N) * ldc + tid % N;
            const unsigned long long bstep = (unsigned long long)BROWS * ldb, cstep = (unsigned long long)BROWS * ldc;
#pragma unroll
            for (int e = 0; e < E2; e++) {
                pb[e] = *bp;
                bp += bstep;
                if (!LOCAL) {
                    pc[e] = *cp;
                    cp += cstep;
                }
            }
        } else {
            const TB* bp = bm + (row0 + t0) * ldb;
            const TB* cp = cm + (row0 + t0) * ldc;
#pragma unroll
            for (int e = 0; e < E2; e++) {
                const int idx = tid + e * NT;
                const int t = idx / N, s = idx % N;
                const bool ok = t < tl;
                pb[e] = ok ? bp[t * ldb + s] : TB(0);
                if (!LOCAL) pc[e] = ok ? cp[t * ldc + s] : TB(0);
            }
        }
    };

    load(0);
    for (unsigned int t0 = 0; t0 < seqlen; t0 += T) {
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        __syncthreads();  // the previous chunk's store phase is done with shared memory
#pragma unroll
        for (int e = 0; e < E1; e++) {
            const float uv = S6Io<TI>::f(pu[e]);
            const float dt = s6_softplus_fast(S6Io<TI>::f(pd[e]) + bias_s);
            s_dx[st + SPLIT * e][sc] = make_float2(dt, dt * uv);
            if constexpr (!LOCAL) {
                const float zv = S6Io<TI>::f(pz[e]);
                ru[e] = uv;
                rg[e] = z != nullptr ? zv * s6_rcp_ftz(1.0f + s6_ex2_ftz(-zv * 1.4426950408889634f)) : 1.0f;
            }
        }
#pragma unroll
        for (int e = 0; e < E2; e++) {
            const int idx = tid + e * NT;
            const int t = idx / N, s = idx % N;
            s_b[t][s] = S6Io<TB>::f(pb[e]);
            if constexpr (!LOCAL) s_c[t][s] = S6Io<TB>::f(pc[e]);
        }
        __syncthreads();
        if (t0 + T < seqlen) load(t0 + T);
        // A step's operands from shared memory: (Δ, Δu) of the channel, the lane's 4 of B and C.
        auto step_dx = [&](int t) { return s_dx[t][ch]; };
        auto step_b = [&](int t) { return *reinterpret_cast<const float4*>(&s_b[t][part * NPT]); };
        auto step_c = [&](int t) { return *reinterpret_cast<const float4*>(&s_c[LOCAL ? 0 : t][part * NPT]); };
        // AHEAD: step t + 1's operands are loaded during step t, so the loads' latency
        // overlaps a step's arithmetic; without it ptxas reuses the registers and every step waits
        // for its own loads (the SASS of session 16: LDS, then the step, then the next LDS).
        float2 dxn = step_dx(0);
        float4 bvn = step_b(0), cvn = LOCAL ? float4{} : step_c(0);
        if constexpr (LOCAL) {
#pragma unroll 4
            for (int t = 0; t < tl; t++) {
                if constexpr (CK > 0) {
                    if ((t0 + t) % CK == 0 && active)
                        *reinterpret_cast<float4*>(ckpt + (ck_row + (t0 + t) / CK) * N + part * NPT) =
                            make_float4(h[0], h[1], h[2], h[3]);
                }
                float2 dx = dxn;
                float4 bv = bvn;
                if constexpr (AHEAD) {
                    dxn = step_dx(t + 1);
                    bvn = step_b(t + 1);
                } else {
                    dx = step_dx(t);
                    bv = step_b(t);
                }
                const float bs[NPT] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int i = 0; i < NPT; i++) h[i] = fmaf(s6_ex2_ftz(dx.x * a2[i]), h[i], dx.y * bs[i]);
                dt_sum += dx.x;
            }
        } else {
#pragma unroll 4
            for (int t = 0; t < tl; t++) {
                float2 dx = dxn;
                float4 bv = bvn, cv = cvn;
                if constexpr (AHEAD) {
                    dxn = step_dx(t + 1);
                    bvn = step_b(t + 1);
                    cvn = step_c(t + 1);
                } else {
                    dx = step_dx(t);
                    bv = step_b(t);
                    cv = step_c(t);
                }
                const float bs[NPT] = {bv.x, bv.y, bv.z, bv.w}, cs[NPT] = {cv.x, cv.y, cv.z, cv.w};
                float acc = 0.0f;
#pragma unroll
                for (int i = 0; i < NPT; i++) {
                    h[i] = fmaf(s6_ex2_ftz(dx.x * a2[i]), h[i], dx.y * bs[i]);
                    acc = fmaf(h[i], cs[i], acc);
                }
                s_part[t][ch][part] = acc;
            }
            __syncthreads();
            const unsigned long long r = row0 + t0 + st;
            TI* yp = y + r * dim + sd;
            unsigned short* y16p = y16 + r * dim + sd;
            auto y_of = [&](int e) {
                const float4 p = *reinterpret_cast<const float4*>(&s_part[st + SPLIT * e][sc][0]);
                const float acc = ((p.x + p.y) + p.z) + p.w;
                return fmaf(dsk_s, ru[e], acc) * rg[e];
            };
            // With W16, y may be null: y held in bf16 alone (cuda/bf16.rs; uniform over the grid).
            const bool w32 = !W16 || y != nullptr;
            if (tl == T && s_active) {  // as the loads: pointers stepped, no masks
#pragma unroll
                for (int e = 0; e < E1; e++) {
                    const float yv = y_of(e);
                    if (w32) *yp = S6Io<TI>::of(yv);
                    yp += stride;
                    if constexpr (W16) {
                        *y16p = s6_f32_to_bf16(yv);
                        y16p += stride;
                    }
                }
            } else {
#pragma unroll
                for (int e = 0; e < E1; e++) {
                    if (s_active && st + SPLIT * e < tl) {
                        const float yv = y_of(e);
                        if (w32) yp[e * stride] = S6Io<TI>::of(yv);
                        if constexpr (W16) y16p[e * stride] = s6_f32_to_bf16(yv);
                    }
                }
            }
        }
    }
    // (With CK the checkpoints were written in the loop.)
    if (LOCAL && CK == 0) {
        if (active) {
            *reinterpret_cast<float4*>(seg_h + (seg_row + seg) * N + part * NPT) = make_float4(h[0], h[1], h[2], h[3]);
            if (part == 0) seg_sum[seg_row + seg] = dt_sum;
        }
    } else if (active && seg + 1 == nseg) {
        *reinterpret_cast<float4*>(hp) = make_float4(h[0], h[1], h[2], h[3]);
    }
}

// Entries: grid (ceil(dim / CPB), batch, segments), block 4 * CPB threads. NAME takes TI
// activations; the f32 NAME_b16 also writes y rounded to bf16 into y16 (the input of a bf16
// product: cuda/bf16.rs); s6_scan_n16_seg_* are the LOCAL launches for segments 0..S-2 (grid z =
// S - 1), which write only seg_h and seg_sum.
#define S6_SCAN_VEC_PARAMS(TI, TB)                                                                              \
    const TI *__restrict__ u, const TI *__restrict__ delta, const float *__restrict__ delta_bias,               \
        const float *__restrict__ a, const TB *__restrict__ bm, unsigned int ldb, const TB *__restrict__ cm,     \
        unsigned int ldc, const float *__restrict__ dskip, const TI *__restrict__ z, unsigned int ldz,            \
        float *__restrict__ state, TI *__restrict__ y
#define S6_SCAN_SEG_PARAMS float *__restrict__ seg_h, float *__restrict__ seg_sum, unsigned int seg_len
#define S6_SCAN_KERNEL_VEC(NAME, TI, TB, CPB, T, LOCAL, MINB)                                                      \
    extern "C" __global__ void __launch_bounds__(CPB * 4, MINB) NAME(                                              \
        S6_SCAN_VEC_PARAMS(TI, TB), S6_SCAN_SEG_PARAMS, unsigned int seqlen, unsigned int dim, unsigned int n) {   \
        S6_PDL_ENTRY();                                                                                            \
        s6_scan_n16_vec_body<TI, TB, CPB, T, false, LOCAL>(u, delta, delta_bias, a, bm, ldb, cm, ldc, dskip, z,    \
                                                           ldz, state, y, nullptr, seg_h, seg_sum, seg_len, seqlen, \
                                                           dim);                                                    \
    }
#define S6_SCAN_KERNEL_VEC_B16(NAME, CPB, T, MINB)                                                                 \
    extern "C" __global__ void __launch_bounds__(CPB * 4, MINB) NAME(                                              \
        S6_SCAN_VEC_PARAMS(float, float), unsigned short* __restrict__ y16, S6_SCAN_SEG_PARAMS,                    \
        unsigned int seqlen, unsigned int dim, unsigned int n) {                                                   \
        S6_PDL_ENTRY();                                                                                            \
        s6_scan_n16_vec_body<float, float, CPB, T, true, false>(u, delta, delta_bias, a, bm, ldb, cm, ldc, dskip,  \
                                                                z, ldz, state, y, y16, seg_h, seg_sum, seg_len,    \
                                                                seqlen, dim);                                      \
    }
// The seven entries of one block shape (cuda/mod.rs, ScanN16): f32; f32 with a bf16 copy of y (or,
// y null, y in bf16 alone); bf16 activations; u, Δ, z and y in bf16 with f32 B and C (x16: the
// model's prefill with activations held in bf16 alone, B and C columns of x_proj's f32 output);
// and the segments' first launches for f32, bf16 and x16. MINB is __launch_bounds__' minimum of
// blocks per SM (0 would give none, which is not the same as 1 to ptxas: session 15 saw 64
// registers against 88 for a 256-thread shape).
#define S6_SCAN_N16_SHAPE(SUFFIX, CPB, T, MINB)                                                          \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_##SUFFIX, float, float, CPB, T, false, MINB)                          \
    S6_SCAN_KERNEL_VEC_B16(s6_scan_n16_##SUFFIX##_b16, CPB, T, MINB)                                     \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_bf16_##SUFFIX, unsigned short, unsigned short, CPB, T, false, MINB)   \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_x16_##SUFFIX, unsigned short, float, CPB, T, false, MINB)             \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_seg_##SUFFIX, float, float, CPB, T, true, MINB)                       \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_seg_bf16_##SUFFIX, unsigned short, unsigned short, CPB, T, true, MINB) \
    S6_SCAN_KERNEL_VEC(s6_scan_n16_seg_x16_##SUFFIX, unsigned short, float, CPB, T, true, MINB)

// The two kept of the variants measured side by side on an H100 (docs/BENCHMARKS.md, session 10,
// before session 14's cheaper stage; ms at L = 2048 for B·D = 4·2048 / 16·1536 / 128·4096
// channels): 32 channels per block, chunks of 32 steps (0.303 / 0.583 / 10.4), and 16 channels per
// block, chunks of 64 (0.270 / 0.801 / 16.5). Measured and dropped: 16 per block with chunks of 32
// (0.296 / - / 12.1), the time loop unrolled 8 (0.296), 2 states per lane (0.389 / - / 13.4); the
// kernel they replaced (8 lanes of 2 states, scalar shared-memory reads, pipe8x): 0.400 / 0.803 /
// 15.4. Also dropped: 64 channels per block with chunks of 16 (sessions 13-15, the default from
// 131,072 channels), slower than 32 per block everywhere once the recurrence loaded its operands
// a step ahead (session 16: 8.44 against 7.87 ms at 524,288 channels).
S6_SCAN_N16_SHAPE(v4c32, 32, 32, 4)
S6_SCAN_N16_SHAPE(v4c16t64, 16, 64, 1)

// The scan backward's checkpoints (f32 activations, one segment, zero initial state) for its
// chunks of CK steps: 8, s6_scan_bwd_n16r8's (see S6B_CKPT_GIVEN there). Grid (ceil(dim / 32), batch),
// 128 threads; the backward's ckpt [batch, dim, ceil(seqlen / CK), 16].
#define S6_SCAN_N16_CKPT(NAME, CK)                                                                            \
    extern "C" __global__ void __launch_bounds__(128, 4)                                                      \
        NAME(const float* __restrict__ u, const float* __restrict__ delta, const float* __restrict__ delta_bias, \
             const float* __restrict__ a, const float* __restrict__ bm, unsigned int ldb,                     \
             float* __restrict__ ckpt, unsigned int seqlen, unsigned int dim) {                               \
        S6_PDL_ENTRY();                                                                                       \
        /* D and the state in: read by the body, unused without an output and from a zero state (valid \
           memory of the sizes it reads: the Δ bias, the checkpoints) */                                     \
        s6_scan_n16_vec_body<float, float, 32, 32, false, true, CK>(u, delta, delta_bias, a, bm, ldb, nullptr, 0,  \
                                                                    delta_bias, nullptr, 0, ckpt, nullptr,     \
                                                                    nullptr, nullptr, nullptr, seqlen, seqlen,  \
                                                                    dim, ckpt);                                \
    }
S6_SCAN_N16_CKPT(s6_scan_n16_ckpt8, 8)
