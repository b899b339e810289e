// Causal depthwise conv1d + SiLU: the forward (any seqlen, decoding included) and its backward from
// a zero initial state. Semantics: the Backend trait (crates/s6/src/backend/mod.rs) and the CPU
// backend (backend/cpu/conv.rs, backend/cpu/backward.rs). Compiled after elementwise.cu (s6_silu).
//
// x: element (row, c) at x[row * ldx + c] (the column offset applied by the caller), rows = tokens,
// batch * seqlen of them; weight [ch, k]; state [batch, k-1, ch] = the inputs before t = 0.
//
// Both directions are bound by memory traffic. A thread owns VEC consecutive channels of one
// sequence over several consecutive time steps (VEC = 4: float4 loads and stores, when the
// launcher found every row, the weight and the bias 16-byte aligned; else VEC = 1) and keeps the
// inputs of its steps in registers, so that each input comes from DRAM once (the few rows shared
// with the next thread's steps come from L2) and each thread has many independent loads in
// flight. The kernel size k = 4 (Mamba) is a compile-time constant (K = 4: fully unrolled
// register windows); K = 0 is the path for any other k, which reads every tap from memory (L1)
// instead of a register window.

#define S6_CONV_R 8  // time steps per forward thread, and per tile of a backward thread's walk

// VEC consecutive floats at p: one 16-byte access for VEC = 4 (p 16-byte aligned), else one float.
template <int VEC>
__device__ __forceinline__ void s6c_load(const float* __restrict__ p, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        const float4 q = __ldg(reinterpret_cast<const float4*>(p));
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = __ldg(p + i);
    }
}

// VEC consecutive bf16 values at p, widened: one 8-byte access for VEC = 4 (p 8-byte aligned). For
// an input held in bf16 alone (cuda/bf16.rs).
template <int VEC>
__device__ __forceinline__ void s6c_load(const unsigned short* __restrict__ p, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
        v[0] = s6_bf16_lo(q.x);
        v[1] = s6_bf16_hi(q.x);
        v[2] = s6_bf16_lo(q.y);
        v[3] = s6_bf16_hi(q.y);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = s6_bf16_to_f32(__ldg(p + i));
    }
}

template <int VEC>
__device__ __forceinline__ void s6c_store(float* __restrict__ p, const float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) p[i] = v[i];
    }
}

// VEC floats rounded to bf16 at p: one 8-byte store for VEC = 4 (p 8-byte aligned).
template <int VEC>
__device__ __forceinline__ void s6c_store16(unsigned short* __restrict__ p, const float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        *reinterpret_cast<uint2*>(p) = make_uint2(s6_bf16_pack2(v[0], v[1]), s6_bf16_pack2(v[2], v[3]));
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) p[i] = s6_f32_to_bf16(v[i]);
    }
}

// The backward's dx at element i of dx: f32, or with dx_bf16 rounded to bf16 at the same index of
// dx read as bf16 (dx part of a buffer held in bf16 alone: in_proj's backward products read it so,
// cuda/bf16.rs).
template <int VEC>
__device__ __forceinline__ void s6c_store_dx(float* __restrict__ dx, unsigned int dx_bf16, unsigned long long i,
                                             const float (&v)[VEC]) {
    if (dx_bf16)
        s6c_store16<VEC>(reinterpret_cast<unsigned short*>(dx) + i, v);
    else
        s6c_store<VEC>(dx + i, v);
}

template <int VEC>
__device__ __forceinline__ void s6c_zero(float (&v)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; i++) v[i] = 0.0f;
}

// wr[j][v] = w[(c + v) * K + j], b0[v] = bias[c + v] (0 without a bias). The thread's VEC·K
// weights are contiguous: K float4 loads for VEC = 4 (w and bias 16-byte aligned) instead of 4K
// scalar loads that each touch 32 lines per warp.
template <int VEC, int K>
__device__ __forceinline__ void s6c_params(const float* __restrict__ w, const float* __restrict__ bias,
                                           unsigned int c, float (&wr)[K][VEC], float (&b0)[VEC]) {
    float flat[VEC * K];
#pragma unroll
    for (int q = 0; q < K; q++) {
        float v4[VEC];
        s6c_load<VEC>(w + (unsigned long long)c * K + q * VEC, v4);
#pragma unroll
        for (int v = 0; v < VEC; v++) flat[q * VEC + v] = v4[v];
    }
#pragma unroll
    for (int j = 0; j < K; j++) {
#pragma unroll
        for (int v = 0; v < VEC; v++) wr[j][v] = flat[v * K + j];
    }
    if (bias != nullptr) {
        s6c_load<VEC>(bias + c, b0);
    } else {
        s6c_zero<VEC>(b0);
    }
}

// The thread's weights and bias: wr and b0 as s6c_params for K > 0; for K = 0 (any k, whose path
// reads w per tap) only b0, from the bias or zero.
template <int VEC, int K>
__device__ __forceinline__ void s6c_thread_params(const float* __restrict__ w, const float* __restrict__ bias,
                                                  unsigned int c, float (&wr)[K > 0 ? K : 1][VEC], float (&b0)[VEC]) {
    if constexpr (K > 0) {
        s6c_params<VEC, K>(w, bias, c, wr, b0);
    } else if (bias != nullptr) {
        s6c_load<VEC>(bias + c, b0);
    } else {
        s6c_zero<VEC>(b0);
    }
}

// The conv input at step t of the sequence whose first row is seq_row (t may be negative or past
// the end): x inside the sequence; before it the state's rows (st points at the sequence's
// [k-1, ch] state at channel c), or zeros without a state (st == nullptr: the backward's zero
// initial state); zeros past the end, where the value only feeds outputs that are not kept.
template <int VEC, typename TX = float>
__device__ __forceinline__ void s6c_input(const TX* __restrict__ x, unsigned int ldx, unsigned long long seq_row,
                                          const float* __restrict__ st, unsigned int ch, unsigned int k, long long t,
                                          unsigned int seqlen, float (&v)[VEC]) {
    if (t >= 0 && t < (long long)seqlen) {
        s6c_load<VEC>(x + (seq_row + (unsigned long long)t) * ldx, v);
    } else if (t < 0 && st != nullptr) {
        s6c_load<VEC>(st + (unsigned long long)(t + (long long)(k - 1)) * ch, v);
    } else {
        s6c_zero<VEC>(v);
    }
}

// ----- forward -----
// Grid: x over groups of 128 threads × VEC channels, y over tiles of S6_CONV_R steps of a sequence,
// z over the sequences (y and z stride past 65,535), so no thread's steps cross a sequence boundary.
// A thread loads the R + k - 1 input rows its R outputs read once (K = 4) and writes R outputs.
// R: steps per thread (S6_CONV_R; 1 for the decoding entries, whose one step would leave the
// other R - 1 outputs' arithmetic unused). W16: also write each output rounded to bf16 into out16
// (same layout: the bf16 copy that x_proj reads instead of casting u; cuda/bf16.rs), or only there
// when out is null (u held in bf16 alone). TX: x's type (bf16 bits where x is held in bf16 alone).
template <int VEC, int K, int R, bool W16, typename TX = float>
__device__ __forceinline__ void s6_conv_fwd(const TX* __restrict__ x, unsigned int ldx, const float* __restrict__ w,
                                            const float* __restrict__ bias, const float* __restrict__ state,
                                            float* __restrict__ out, unsigned short* __restrict__ out16,
                                            unsigned int batch, unsigned int seqlen, unsigned int ch,
                                            unsigned int k_any) {
    const unsigned int k = K > 0 ? K : k_any;
    const unsigned int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (c >= ch) return;
    // wr[j][v]: tap j of channel c + v (K = 4 only; the K = 0 path reads w per tap).
    float b0[VEC], wr[K > 0 ? K : 1][VEC];
    s6c_thread_params<VEC, K>(w, bias, c, wr, b0);
    for (unsigned int b = blockIdx.z; b < batch; b += gridDim.z) {
        const unsigned long long seq_row = (unsigned long long)b * seqlen;
        const float* st = state != nullptr ? state + (unsigned long long)b * (k - 1) * ch + c : nullptr;
        for (unsigned int t0 = blockIdx.y * R; t0 < seqlen; t0 += gridDim.y * R) {
            const unsigned long long o_at = (seq_row + t0) * ch + c;
            float* o = out + o_at;
            // A uniform branch: out is null for every thread or none.
            const bool w32 = !W16 || out != nullptr;
            if constexpr (K > 0) {
                // win[m] = input step t0 - (K-1) + m: every load issued before the first use.
                float win[R + K - 1][VEC];
#pragma unroll
                for (int m = 0; m < R + K - 1; m++) {
                    s6c_input<VEC, TX>(x + c, ldx, seq_row, st, ch, K, (long long)t0 + m - (K - 1), seqlen, win[m]);
                }
#pragma unroll
                for (int i = 0; i < R; i++) {
                    float acc[VEC];
#pragma unroll
                    for (int v = 0; v < VEC; v++) {
                        // Tap j reads step t0 + i + j - (K-1), ascending j from the bias (as the CPU).
                        float s = b0[v];
#pragma unroll
                        for (int j = 0; j < K; j++) s = fmaf(wr[j][v], win[i + j][v], s);
                        acc[v] = s6_silu(s);
                    }
                    if (t0 + i < seqlen) {
                        if (w32) s6c_store<VEC>(o + (unsigned long long)i * ch, acc);
                        if constexpr (W16) s6c_store16<VEC>(out16 + o_at + (unsigned long long)i * ch, acc);
                    }
                }
            } else {
                for (unsigned int i = 0; i < R && t0 + i < seqlen; i++) {
                    float acc[VEC];
#pragma unroll
                    for (int v = 0; v < VEC; v++) acc[v] = b0[v];
                    for (unsigned int j = 0; j < k; j++) {
                        float in[VEC];
                        s6c_input<VEC, TX>(x + c, ldx, seq_row, st, ch, k, (long long)t0 + i + j - (k - 1), seqlen, in);
#pragma unroll
                        for (int v = 0; v < VEC; v++) acc[v] = fmaf(w[(c + v) * k + j], in[v], acc[v]);
                    }
#pragma unroll
                    for (int v = 0; v < VEC; v++) acc[v] = s6_silu(acc[v]);
                    if (w32) s6c_store<VEC>(o + (unsigned long long)i * ch, acc);
                    if constexpr (W16) s6c_store16<VEC>(out16 + o_at + (unsigned long long)i * ch, acc);
                }
            }
        }
    }
}

#define S6_CONV_FWD(name, VEC, K, R)                                                                               \
    extern "C" __global__ void __launch_bounds__(128)                                                              \
        name(const float* __restrict__ x, unsigned int ldx, const float* __restrict__ w,                           \
             const float* __restrict__ bias, const float* __restrict__ state, float* __restrict__ out,             \
             unsigned int batch, unsigned int seqlen, unsigned int ch, unsigned int k) {                           \
        S6_PDL_ENTRY();                                                                                            \
        s6_conv_fwd<VEC, K, R, false>(x, ldx, w, bias, state, out, nullptr, batch, seqlen, ch, k);                 \
    }
S6_CONV_FWD(s6_conv_fwd_k4_vec4, 4, 4, S6_CONV_R)
S6_CONV_FWD(s6_conv_fwd_k4_vec1, 1, 4, S6_CONV_R)
S6_CONV_FWD(s6_conv_fwd_vec4, 4, 0, S6_CONV_R)
S6_CONV_FWD(s6_conv_fwd_vec1, 1, 0, S6_CONV_R)
// Decoding (seqlen 1): one step per thread.
S6_CONV_FWD(s6_conv_step_k4_vec4, 4, 4, 1)
S6_CONV_FWD(s6_conv_step_k4_vec1, 1, 4, 1)

// The same with the bf16 copy of the output (k = 4, float4: the shapes of Mamba's products).
#define S6_CONV_FWD_B16(name, R)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                              \
        name(const float* __restrict__ x, unsigned int ldx, const float* __restrict__ w,                           \
             const float* __restrict__ bias, const float* __restrict__ state, float* __restrict__ out,             \
             unsigned short* __restrict__ out16, unsigned int batch, unsigned int seqlen, unsigned int ch,         \
             unsigned int k) {                                                                                     \
        S6_PDL_ENTRY();                                                                                            \
        s6_conv_fwd<4, 4, R, true>(x, ldx, w, bias, state, out, out16, batch, seqlen, ch, k);                      \
    }
S6_CONV_FWD_B16(s6_conv_fwd_k4_vec4_b16, S6_CONV_R)
S6_CONV_FWD_B16(s6_conv_step_k4_vec4_b16, 1)
// Prefill with x (in_proj's output) held in bf16 alone: x read as bf16, u written in bf16 (and in
// f32 unless out is null).
extern "C" __global__ void __launch_bounds__(128)
    s6_conv_fwd_k4_vec4_x16(const unsigned short* __restrict__ x, unsigned int ldx, const float* __restrict__ w,
                            const float* __restrict__ bias, const float* __restrict__ state, float* __restrict__ out,
                            unsigned short* __restrict__ out16, unsigned int batch, unsigned int seqlen,
                            unsigned int ch, unsigned int k) {
    S6_PDL_ENTRY();
    s6_conv_fwd<4, 4, S6_CONV_R, true, unsigned short>(x, ldx, w, bias, state, out, out16, batch, seqlen, ch, k);
}

// ----- backward (zero initial state) -----
// dout contiguous [rows, ch]; dx written at dx[row * lddx + c] (in bf16 with dx_bf16:
// s6c_store_dx); dweight and dbias accumulated.
//   pre[t]  = bias + Σ_j w[j] x[t + j - (k-1)]      (x = 0 before t = 0)
//   dpre[t] = dout[t] · silu'(pre[t])              (0 past the sequence end)
//   dx[t]   = Σ_j w[j] dpre[t + (k-1) - j]
//   dw[j]   = Σ_t dpre[t] x[t + j - (k-1)],  dbias = Σ_t dpre[t]
// Block (32, S6_CONV_BWD_BY): x over 32 × VEC channels, y over segments of S6_CONV_BWD_SEG steps;
// grid x over channel blocks, y over the sequence's blocks of segments, z over the sequences (y and
// z stride past 65,535). A thread walks its segment in tiles of S6_CONV_R steps, carrying the inputs
// and dpre rows the next tile shares in registers, so every x and dout row is loaded once (plus
// 3(k-1) halo rows per segment), and sums its dw/dbias terms in registers. The block then adds its
// segments' sums in shared memory, in order, into one partial per (sequence, block of segments):
// part[p][j][c], j = k for dbias; s6_conv_bwd_dw_reduce adds the partials in order. No atomics:
// the results are the same on every run.

#define S6_CONV_BWD_BY 4                 // segments per block (threadIdx.y)
#define S6_CONV_BWD_SEG (8 * S6_CONV_R)  // steps per segment: a multiple of S6_CONV_R

__device__ __forceinline__ float s6c_dsilu(float dout, float pre) {
    const float s = 1.0f / (1.0f + expf(-pre));
    return dout * s * fmaf(pre, 1.0f - s, 1.0f);
}

// Adds acc over the block's threadIdx.y in order and writes the sum to *dst (threads of row y = 0
// that own channels). Every thread of the block calls it (it synchronizes the block).
template <int VEC>
__device__ __forceinline__ void s6c_block_sum(float* red, const float (&acc)[VEC], float* __restrict__ dst,
                                              bool owner) {
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    __syncthreads();  // the previous call's readers are done with red
#pragma unroll
    for (int v = 0; v < VEC; v++) red[(ty * 32 + tx) * VEC + v] = acc[v];
    __syncthreads();
    if (ty == 0 && owner) {
        float s[VEC];
#pragma unroll
        for (int v = 0; v < VEC; v++) s[v] = red[tx * VEC + v];
        for (unsigned int y = 1; y < blockDim.y; y++) {
#pragma unroll
            for (int v = 0; v < VEC; v++) s[v] += red[(y * 32 + tx) * VEC + v];
        }
        s6c_store<VEC>(dst, s);
    }
}

// dpre of one step from its dout and the K inputs its taps read (K = 4 path).
template <int VEC, int K>
__device__ __forceinline__ void s6c_dpre_window(const float (&wr)[K][VEC], const float (&b0)[VEC],
                                                const float (*xs)[VEC], float (&g)[VEC]) {
#pragma unroll
    for (int v = 0; v < VEC; v++) {
        float pre = b0[v];
#pragma unroll
        for (int j = 0; j < K; j++) pre = fmaf(wr[j][v], xs[j][v], pre);
        g[v] = s6c_dsilu(g[v], pre);
    }
}

// dpre at step t (any k; 0 past the end): recomputes the pre-activation from memory.
template <int VEC>
__device__ __forceinline__ void s6c_dpre_at(const float* __restrict__ x, unsigned int ldx,
                                            const float* __restrict__ w, const float (&b0)[VEC],
                                            const float* __restrict__ dout, unsigned long long seq_row,
                                            unsigned int seqlen, unsigned int ch, unsigned int k, unsigned int c,
                                            long long t, float (&g)[VEC]) {
    if (t >= (long long)seqlen) {
        s6c_zero<VEC>(g);
        return;
    }
    float pre[VEC];
#pragma unroll
    for (int v = 0; v < VEC; v++) pre[v] = b0[v];
    for (unsigned int j = 0; j < k; j++) {
        float in[VEC];
        s6c_input<VEC>(x + c, ldx, seq_row, nullptr, ch, k, t + j - (long long)(k - 1), seqlen, in);
#pragma unroll
        for (int v = 0; v < VEC; v++) pre[v] = fmaf(w[(c + v) * k + j], in[v], pre[v]);
    }
    s6c_load<VEC>(dout + (seq_row + (unsigned long long)t) * ch + c, g);
#pragma unroll
    for (int v = 0; v < VEC; v++) g[v] = s6c_dsilu(g[v], pre[v]);
}

template <int VEC, int K>
__device__ __forceinline__ void s6_conv_bwd(const float* __restrict__ x, unsigned int ldx, const float* __restrict__ w,
                                            const float* __restrict__ bias, const float* __restrict__ dout,
                                            float* __restrict__ dx, unsigned int lddx, unsigned int dx_bf16,
                                            float* __restrict__ part,
                                            unsigned int batch, unsigned int seqlen, unsigned int ch,
                                            unsigned int k_any, unsigned int nsb) {
    constexpr int R = S6_CONV_R;
    __shared__ float red[S6_CONV_BWD_BY * 32 * VEC];
    const unsigned int k = K > 0 ? K : k_any;
    const unsigned int c = (blockIdx.x * 32 + threadIdx.x) * VEC;
    const bool owner = c < ch;  // no early return: every thread takes part in s6c_block_sum
    float b0[VEC], wr[K > 0 ? K : 1][VEC];
    if (!owner) {
        s6c_zero<VEC>(b0);  // (wr unused)
    } else {
        s6c_thread_params<VEC, K>(w, bias, c, wr, b0);
    }
    for (unsigned int b = blockIdx.z; b < batch; b += gridDim.z) {
        const unsigned long long seq_row = (unsigned long long)b * seqlen;
        for (unsigned int sb = blockIdx.y; sb < nsb; sb += gridDim.y) {
            const unsigned long long s0l = ((unsigned long long)sb * blockDim.y + threadIdx.y) * S6_CONV_BWD_SEG;
            const unsigned int s0 = s0l < seqlen ? (unsigned int)s0l : seqlen;
            const unsigned int s1 = seqlen - s0 > S6_CONV_BWD_SEG ? s0 + S6_CONV_BWD_SEG : seqlen;
            const bool walks = owner && s0 < s1;
            float* p = part + ((unsigned long long)b * nsb + sb) * (k + 1) * ch + c;
            if constexpr (K > 0) {
                // dw[j] (j < K) and dbias (j = K) terms of this thread's steps.
                float dw[K + 1][VEC];
#pragma unroll
                for (int j = 0; j <= K; j++) s6c_zero<VEC>(dw[j]);
                if (walks) {
                    // xw[m] = x at step t0 - (K-1) + m, dp[m] = dpre at step t0 + m, for the tile at t0.
                    // Before the first tile: the 2(K-1) x rows and K-1 dpre rows it shares with the
                    // (absent) previous tile.
                    float xw[R + 2 * K - 2][VEC], dp[R + K - 1][VEC];
#pragma unroll
                    for (int m = 0; m < 2 * K - 2; m++) {
                        s6c_input<VEC>(x + c, ldx, seq_row, nullptr, ch, K, (long long)s0 - (K - 1) + m, seqlen,
                                       xw[m]);
                    }
#pragma unroll
                    for (int m = 0; m < K - 1; m++) {
                        if (s0 + m < seqlen) {
                            s6c_load<VEC>(dout + (seq_row + s0 + m) * ch + c, dp[m]);
                        } else {
                            s6c_zero<VEC>(dp[m]);
                        }
                    }
#pragma unroll
                    for (int m = 0; m < K - 1; m++) s6c_dpre_window<VEC, K>(wr, b0, &xw[m], dp[m]);
                    for (unsigned int t0 = s0; t0 < s1; t0 += R) {
                        // The tile's new rows: steps t0 + K-1 .. t0 + R + K-2 of x and dout, all
                        // loads issued before the first use.
#pragma unroll
                        for (int i = 0; i < R; i++) {
                            const long long t = (long long)t0 + (K - 1) + i;
                            s6c_input<VEC>(x + c, ldx, seq_row, nullptr, ch, K, t, seqlen, xw[2 * K - 2 + i]);
                            if (t < (long long)seqlen) {
                                s6c_load<VEC>(dout + (seq_row + (unsigned long long)t) * ch + c, dp[K - 1 + i]);
                            } else {
                                s6c_zero<VEC>(dp[K - 1 + i]);
                            }
                        }
#pragma unroll
                        for (int i = 0; i < R; i++) s6c_dpre_window<VEC, K>(wr, b0, &xw[K - 1 + i], dp[K - 1 + i]);
#pragma unroll
                        for (int i = 0; i < R; i++) {
                            float g[VEC];
#pragma unroll
                            for (int v = 0; v < VEC; v++) {
                                float s = 0.0f;
#pragma unroll
                                for (int j = 0; j < K; j++) s = fmaf(wr[j][v], dp[i + (K - 1) - j][v], s);
                                g[v] = s;
                            }
                            if (t0 + i < seqlen) s6c_store_dx<VEC>(dx, dx_bf16, (seq_row + t0 + i) * lddx + c, g);
                            // Steps past the end have dpre = 0 and add nothing; a segment that
                            // ends before the sequence does holds whole tiles.
#pragma unroll
                            for (int v = 0; v < VEC; v++) {
#pragma unroll
                                for (int j = 0; j < K; j++) dw[j][v] = fmaf(dp[i][v], xw[i + j][v], dw[j][v]);
                                dw[K][v] += dp[i][v];
                            }
                        }
                        // The next tile (t0 + R) shares the last 2(K-1) x rows and K-1 dpre rows.
#pragma unroll
                        for (int m = 0; m < 2 * K - 2; m++) {
#pragma unroll
                            for (int v = 0; v < VEC; v++) xw[m][v] = xw[m + R][v];
                        }
#pragma unroll
                        for (int m = 0; m < K - 1; m++) {
#pragma unroll
                            for (int v = 0; v < VEC; v++) dp[m][v] = dp[m + R][v];
                        }
                    }
                }
#pragma unroll
                for (int j = 0; j <= K; j++) s6c_block_sum<VEC>(red, dw[j], p + (unsigned long long)j * ch, owner);
            } else {
                // Any k: every dpre recomputed from memory (O(k²) loads per step, from L1).
                if (walks) {
                    for (unsigned int t = s0; t < s1; t++) {
                        float g[VEC];
                        s6c_zero<VEC>(g);
                        for (unsigned int j = 0; j < k; j++) {
                            float d[VEC];
                            s6c_dpre_at<VEC>(x, ldx, w, b0, dout, seq_row, seqlen, ch, k, c,
                                             (long long)t + (k - 1) - j, d);
#pragma unroll
                            for (int v = 0; v < VEC; v++) g[v] = fmaf(w[(c + v) * k + j], d[v], g[v]);
                        }
                        s6c_store_dx<VEC>(dx, dx_bf16, (seq_row + t) * lddx + c, g);
                    }
                }
                for (unsigned int j = 0; j <= k; j++) {
                    float acc[VEC];
                    s6c_zero<VEC>(acc);
                    if (walks) {
                        for (unsigned int t = s0; t < s1; t++) {
                            float d[VEC], in[VEC];
                            s6c_dpre_at<VEC>(x, ldx, w, b0, dout, seq_row, seqlen, ch, k, c, t, d);
                            if (j < k) {
                                s6c_input<VEC>(x + c, ldx, seq_row, nullptr, ch, k, (long long)t + j - (k - 1), seqlen,
                                               in);
                            } else {
#pragma unroll
                                for (int v = 0; v < VEC; v++) in[v] = 1.0f;
                            }
#pragma unroll
                            for (int v = 0; v < VEC; v++) acc[v] = fmaf(d[v], in[v], acc[v]);
                        }
                    }
                    s6c_block_sum<VEC>(red, acc, p + (unsigned long long)j * ch, owner);
                }
            }
        }
    }
}

#define S6_CONV_BWD(name, VEC, K)                                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * S6_CONV_BWD_BY)                                              \
        name(const float* __restrict__ x, unsigned int ldx, const float* __restrict__ w,                           \
             const float* __restrict__ bias, const float* __restrict__ dout, float* __restrict__ dx,               \
             unsigned int lddx, unsigned int dx_bf16, float* __restrict__ part, unsigned int batch,                \
             unsigned int seqlen, unsigned int ch, unsigned int k, unsigned int nsb) {                             \
        S6_PDL_ENTRY();                                                                                            \
        s6_conv_bwd<VEC, K>(x, ldx, w, bias, dout, dx, lddx, dx_bf16, part, batch, seqlen, ch, k, nsb);            \
    }
S6_CONV_BWD(s6_conv_bwd_k4_vec4, 4, 4)
S6_CONV_BWD(s6_conv_bwd_k4_vec1, 1, 4)
S6_CONV_BWD(s6_conv_bwd_vec4, 4, 0)
S6_CONV_BWD(s6_conv_bwd_vec1, 1, 0)

// dweight[c][j] += Σ_p part[p][j][c] (j < k); dbias[c] += Σ_p part[p][k][c] when dbias is given.
// Block (32, 8): x over the sums, y over the partials (y, y + 8, ...), then the 8 in order in
// shared memory: a fixed order, so the same result on every run.
extern "C" __global__ void __launch_bounds__(256)
    s6_conv_bwd_dw_reduce(const float* __restrict__ part, unsigned int np, unsigned int ch, unsigned int k,
                          float* __restrict__ dw, float* __restrict__ dbias) {
    S6_PDL_ENTRY();
    __shared__ float red[8][32];
    const unsigned long long per = (unsigned long long)ch * (k + 1);
    const unsigned long long i = (unsigned long long)blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (i < per) {
        for (unsigned int q = threadIdx.y; q < np; q += 8) s += part[q * per + i];
    }
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || i >= per) return;
    float sum = red[0][threadIdx.x];
#pragma unroll
    for (int y = 1; y < 8; y++) sum += red[y][threadIdx.x];
    const unsigned int j = (unsigned int)(i / ch), c = (unsigned int)(i % ch);
    if (j < k) {
        dw[(unsigned long long)c * k + j] += sum;
    } else if (dbias != nullptr) {
        dbias[c] += sum;
    }
}
