// Backward kernels (training) of the fused selective scan, from a zero initial state (the conv's
// backward is in conv.cu). Semantics: the CPU backend (crates/s6/src/backend/cpu/backward.rs).
//
// Selective scan, d_state 9 ..= 16: s6_scan_bwd_n16p (described where it is defined below; the
// same three phases without warp shuffles in the time loops). Other d_state:
// Selective scan (s6_scan_bwd_nX): a block of 128 threads owns CPB = 128 / SPLIT channels of one
// sequence; each channel's N states are split over SPLIT consecutive lanes of a warp, NPT states
// per lane, in registers. The sequence is cut into chunks of T steps.
//   1. Forward over the chunks but the last: the state at the start of chunk k is written to the
//      scratch ckpt[b][d][k][N] (the state at the start of the last chunk stays in registers).
//   2. The chunks in reverse: the chunk's inputs are staged in shared memory (softplus, its
//      derivative, g = dy * silu(z) and the gate's derivative computed once per element), its
//      states recomputed from its checkpoint into shared memory (T + 1 states per lane, each lane
//      only reads its own), then the steps walked backward carrying dL/dh in registers:
//        dhs = dh + g C_t,  dB_t += dhs Δ u,  dC_t += g h_t,  du += dhs Δ B_t,
//        q = dhs h_{t-1} exp(ΔA),  dA += q Δ,  dΔ += q A + dhs B_t u,  dh = dhs exp(ΔA).
//      Per-channel sums over states go through warp shuffles over the channel's SPLIT lanes;
//      per-state sums over channels (dB_t, dC_t) through shuffles over the warp's channels, then
//      shared memory over the block's 4 warps, and are written as per-block partials
//      pbc[blk][row][2N]; du, dΔ, dz go through shared memory to coalesced rows.
//   3. s6_scan_bwd_reduce_bc sums the partials over the channel blocks in order into dB / dC;
//      s6_scan_bwd_reduce_params adds the per-sequence dA, dD, dΔbias partials (pparam[b]) over
//      the batch in order to the accumulated gradients. No atomics: deterministic results.

__device__ __forceinline__ float s6b_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Which outputs are written in bf16 (`bf16_out`, bits): dΔ (S6B_DDELTA_BF16; read by dt_proj's
// backward products) and dz (S6B_DZ_BF16; read by in_proj's, as a part of dxz), each rounded to
// bf16 at the same index of its pointer read as bf16 (the buffer held in bf16 alone, cuda/bf16.rs).
// One pointer per output and a flag word rather than two pointers: n16p's registers (128, a 4-byte
// spill) took a second dΔ pointer badly (12 bytes).
#define S6B_DDELTA_BF16 1u
#define S6B_DZ_BF16 2u
// Not an output: the checkpoints of every chunk, the last's included, were written by
// s6_scan_n16_ckpt8 (scan.cu) before the launch, so s6_scan_bwd_n16r8 skips its first pass
// (2.32 -> 2.17 ms at B = 16, D = 1536, L = 2048 and +2.8% training tokens/s at 130M, run 79).
// Only n16r8: n16p, given them, took longer (0.909 -> 0.986 ms at B = 4, D = 2048), so it
// compiles the path out and keeps its spill at 4 bytes.
#define S6B_CKPT_GIVEN 4u
__device__ __forceinline__ void s6b_put(float* __restrict__ out, unsigned int bf16, unsigned long long i, float v) {
    if (bf16)
        reinterpret_cast<unsigned short*>(out)[i] = s6_f32_to_bf16(v);
    else
        out[i] = v;
}

// The scan backward kernels' parameters (and their bodies'), and the arguments that pass them on.
#define S6_SCAN_BWD_PARAMS                                                                                          \
    const float *__restrict__ u, const float *__restrict__ delta, const float *__restrict__ delta_bias,             \
        const float *__restrict__ a, const float *__restrict__ bm, unsigned int ldb, const float *__restrict__ cm,  \
        unsigned int ldc, const float *__restrict__ dskip, const float *__restrict__ z, unsigned int ldz,           \
        const float *__restrict__ dy, float *__restrict__ du, float *__restrict__ ddelta, unsigned int bf16_out,    \
        float *__restrict__ dz, unsigned int lddz, float *__restrict__ ckpt, float *__restrict__ pbc,               \
        float *__restrict__ pparam, unsigned int seqlen, unsigned int dim, unsigned int n
#define S6_SCAN_BWD_ARGS                                                                                         \
    u, delta, delta_bias, a, bm, ldb, cm, ldc, dskip, z, ldz, dy, du, ddelta, bf16_out, dz, lddz, ckpt, pbc, pparam, \
        seqlen, dim, n

template <int NPT, int SPLIT, int T>
__device__ __forceinline__ void s6_scan_bwd_body(S6_SCAN_BWD_PARAMS) {
    constexpr int NT = 128;
    constexpr int CPB = NT / SPLIT;
    constexpr int NMAX = NPT * SPLIT;
    constexpr int NW = NT / 32;
    __shared__ float s_h[T + 1][NPT][NT];
    __shared__ float s_u[T][CPB];
    __shared__ float s_dt[T][CPB];
    __shared__ float s_sp[T][CPB];
    __shared__ float s_g[T][CPB];
    __shared__ float s_gz[T][CPB];
    __shared__ float s_du[T][CPB];
    __shared__ float s_ddt[T][CPB];
    __shared__ float s_dz[T][CPB];
    __shared__ float s_b[T][NMAX];
    __shared__ float s_c[T][NMAX];
    __shared__ float s_wb[T][NW][NMAX];
    __shared__ float s_wc[T][NW][NMAX];

    const int tid = threadIdx.x;
    const int ch = tid / SPLIT, part = tid % SPLIT;
    const int lane = tid % 32, warp = tid / 32;
    const unsigned int b = blockIdx.y;
    const unsigned int d0 = blockIdx.x * CPB;
    const unsigned int d = d0 + ch;
    const bool active = d < dim;
    const unsigned long long rows = (unsigned long long)gridDim.y * seqlen;
    const unsigned long long row0 = (unsigned long long)b * seqlen;
    const unsigned int nck = (seqlen + T - 1) / T;
    const unsigned long long ck0 = ((unsigned long long)b * dim + d) * nck;  // this channel's checkpoints

    float h[NPT], dh[NPT], av[NPT], a2[NPT], da[NPT];
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int s = part * NPT + i;
        const bool ok = active && s < (int)n;
        av[i] = ok ? a[(unsigned long long)d * n + s] : 0.0f;
        a2[i] = av[i] * 1.4426950408889634f;
        h[i] = 0.0f;
        dh[i] = 0.0f;
        da[i] = 0.0f;
    }
    const float dsk = active ? dskip[d] : 0.0f;

    // 1. Forward over the full chunks 0 .. nck-2: checkpoints.
    for (unsigned int k = 0; k + 1 < nck; k++) {
        const unsigned int t0 = k * T;
        __syncthreads();  // shared memory free again
        for (int idx = tid; idx < T * CPB; idx += NT) {
            const int t = idx / CPB, c = idx % CPB;
            const unsigned int dd = d0 + c;
            float uv = 0.0f, dtv = 0.0f;
            if (dd < dim) {
                const unsigned long long r = row0 + t0 + t;
                uv = u[r * dim + dd];
                dtv = s6_softplus(delta[r * dim + dd] + delta_bias[dd]);
            }
            s_u[t][c] = uv;
            s_dt[t][c] = dtv;
        }
        for (int idx = tid; idx < T * NMAX; idx += NT) {
            const int t = idx / NMAX, s = idx % NMAX;
            const unsigned long long r = row0 + t0 + t;
            s_b[t][s] = s < (int)n ? bm[r * ldb + s] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < NPT; i++) {
            const int s = part * NPT + i;
            if (active && s < (int)n) ckpt[(ck0 + k) * n + s] = h[i];
        }
#pragma unroll 4
        for (int t = 0; t < T; t++) {
            const float dt = s_dt[t][ch];
            const float dx = dt * s_u[t][ch];
#pragma unroll
            for (int i = 0; i < NPT; i++) h[i] = fmaf(s6_ex2_ftz(dt * a2[i]), h[i], dx * s_b[t][part * NPT + i]);
        }
    }

    // 2. The chunks in reverse.
    float dd_acc = 0.0f, dbias_acc = 0.0f;
    for (int k = (int)nck - 1; k >= 0; k--) {
        const unsigned int t0 = (unsigned int)k * T;
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        __syncthreads();  // the previous chunk's store phase is done with shared memory
        for (int idx = tid; idx < tl * CPB; idx += NT) {
            const int t = idx / CPB, c = idx % CPB;
            const unsigned int dd = d0 + c;
            float uv = 0.0f, dtv = 0.0f, spv = 0.0f, gv = 0.0f, gzv = 0.0f;
            if (dd < dim) {
                const unsigned long long r = row0 + t0 + t;
                uv = u[r * dim + dd];
                const float v = delta[r * dim + dd] + delta_bias[dd];
                dtv = s6_softplus(v);
                spv = v > 20.0f ? 1.0f : s6b_sigmoid(v);
                const float g = dy[r * dim + dd];
                if (z != nullptr) {
                    const float zz = z[r * ldz + dd];
                    const float sg = s6b_sigmoid(zz);
                    gv = g * zz * sg;
                    gzv = g * sg * fmaf(zz, 1.0f - sg, 1.0f);
                } else {
                    gv = g;
                }
            }
            s_u[t][c] = uv;
            s_dt[t][c] = dtv;
            s_sp[t][c] = spv;
            s_g[t][c] = gv;
            s_gz[t][c] = gzv;
        }
        for (int idx = tid; idx < tl * NMAX; idx += NT) {
            const int t = idx / NMAX, s = idx % NMAX;
            const unsigned long long r = row0 + t0 + t;
            s_b[t][s] = s < (int)n ? bm[r * ldb + s] : 0.0f;
            s_c[t][s] = s < (int)n ? cm[r * ldc + s] : 0.0f;
        }
        // The chunk's start state: in registers for the last chunk, else its checkpoint.
#pragma unroll
        for (int i = 0; i < NPT; i++) {
            const int s = part * NPT + i;
            float v = h[i];
            if (k + 1 < (int)nck) v = (active && s < (int)n) ? ckpt[(ck0 + k) * n + s] : 0.0f;
            s_h[0][i][tid] = v;
        }
        __syncthreads();

        // Recompute the chunk's states (each lane writes and later reads only its own slots).
        {
            float hh[NPT];
#pragma unroll
            for (int i = 0; i < NPT; i++) hh[i] = s_h[0][i][tid];
#pragma unroll 4
            for (int t = 0; t < tl; t++) {
                const float dt = s_dt[t][ch];
                const float dx = dt * s_u[t][ch];
#pragma unroll
                for (int i = 0; i < NPT; i++) {
                    hh[i] = fmaf(s6_ex2_ftz(dt * a2[i]), hh[i], dx * s_b[t][part * NPT + i]);
                    s_h[t + 1][i][tid] = hh[i];
                }
            }
        }

        // Walk the chunk backward.
        // Unrolled: the reductions of consecutive steps do not depend on each other, only dh does.
#pragma unroll 4
        for (int t = tl - 1; t >= 0; t--) {
            const float dt = s_dt[t][ch];
            const float x = s_u[t][ch];
            const float g = s_g[t][ch];
            const float dtx = dt * x;
            float pdu = 0.0f, pdt = 0.0f, pout = 0.0f;
            float pb[NPT], pc[NPT];
#pragma unroll
            for (int i = 0; i < NPT; i++) {
                const int s = part * NPT + i;
                const float bs = s_b[t][s], cs = s_c[t][s];
                const float hc = s_h[t + 1][i][tid], hp = s_h[t][i][tid];
                const float dhs = fmaf(g, cs, dh[i]);
                pc[i] = g * hc;
                pb[i] = dhs * dtx;
                pout = fmaf(cs, hc, pout);
                pdu = fmaf(dhs * dt, bs, pdu);
                const float dec = s6_ex2_ftz(dt * a2[i]);
                const float q = dhs * hp * dec;
                da[i] = fmaf(q, dt, da[i]);
                pdt = fmaf(q, av[i], fmaf(dhs * bs, x, pdt));
                dh[i] = dhs * dec;
            }
            // Over the channel's lanes: du, dΔ and C·h.
#pragma unroll
            for (int off = 1; off < SPLIT; off <<= 1) {
                pdu += __shfl_xor_sync(0xffffffffu, pdu, off);
                pdt += __shfl_xor_sync(0xffffffffu, pdt, off);
                pout += __shfl_xor_sync(0xffffffffu, pout, off);
            }
            // Over the warp's channels: dB_t, dC_t.
#pragma unroll
            for (int off = SPLIT; off < 32; off <<= 1) {
#pragma unroll
                for (int i = 0; i < NPT; i++) {
                    pb[i] += __shfl_xor_sync(0xffffffffu, pb[i], off);
                    pc[i] += __shfl_xor_sync(0xffffffffu, pc[i], off);
                }
            }
            if (lane < SPLIT) {
#pragma unroll
                for (int i = 0; i < NPT; i++) {
                    s_wb[t][warp][part * NPT + i] = pb[i];
                    s_wc[t][warp][part * NPT + i] = pc[i];
                }
            }
            if (part == 0) {
                const float ddt = pdt * s_sp[t][ch];
                s_du[t][ch] = fmaf(g, dsk, pdu);
                s_ddt[t][ch] = ddt;
                s_dz[t][ch] = fmaf(dsk, x, pout) * s_gz[t][ch];
                dd_acc = fmaf(g, x, dd_acc);
                dbias_acc += ddt;
            }
        }
        __syncthreads();

        // Store the chunk's du, dΔ, dz and the block's dB / dC partials.
        for (int idx = tid; idx < tl * CPB; idx += NT) {
            const int t = idx / CPB, c = idx % CPB;
            const unsigned int dd = d0 + c;
            if (dd < dim) {
                const unsigned long long r = row0 + t0 + t;
                du[r * dim + dd] = s_du[t][c];
                s6b_put(ddelta, bf16_out & S6B_DDELTA_BF16, r * dim + dd, s_ddt[t][c]);
                if (dz != nullptr) s6b_put(dz, bf16_out & S6B_DZ_BF16, r * lddz + dd, s_dz[t][c]);
            }
        }
        const int w2 = 2 * (int)n;
        for (int idx = tid; idx < tl * w2; idx += NT) {
            const int t = idx / w2, j = idx % w2;
            float sum = 0.0f;
            if (j < (int)n) {
#pragma unroll
                for (int w = 0; w < NW; w++) sum += s_wb[t][w][j];
            } else {
#pragma unroll
                for (int w = 0; w < NW; w++) sum += s_wc[t][w][j - (int)n];
            }
            pbc[((unsigned long long)blockIdx.x * rows + row0 + t0 + t) * w2 + j] = sum;
        }
    }

    // 3. This sequence's parameter-gradient partials: pparam[b] = [dA (dim × n), dD (dim), dΔbias (dim)].
    float* pp = pparam + (unsigned long long)b * dim * (n + 2);
#pragma unroll
    for (int i = 0; i < NPT; i++) {
        const int s = part * NPT + i;
        if (active && s < (int)n) pp[(unsigned long long)d * n + s] = da[i];
    }
    if (active && part == 0) {
        pp[(unsigned long long)dim * n + d] = dd_acc;
        pp[(unsigned long long)dim * n + dim + d] = dbias_acc;
    }
}

#define S6_SCAN_BWD_KERNEL(NAME, NPT, SPLIT, T)                                       \
    extern "C" __global__ void __launch_bounds__(128) NAME(S6_SCAN_BWD_PARAMS) {      \
        S6_PDL_ENTRY();                                                               \
        s6_scan_bwd_body<NPT, SPLIT, T>(S6_SCAN_BWD_ARGS);                            \
    }

// (states per lane, lanes per channel, chunk length): N_MAX = NPT * SPLIT, 128 / SPLIT channels per
// block; T keeps the static shared memory under 48 KB.
S6_SCAN_BWD_KERNEL(s6_scan_bwd_n4, 1, 4, 16)
S6_SCAN_BWD_KERNEL(s6_scan_bwd_n8, 1, 8, 16)
S6_SCAN_BWD_KERNEL(s6_scan_bwd_n32, 2, 16, 16)
S6_SCAN_BWD_KERNEL(s6_scan_bwd_n64, 4, 16, 8)

// d_state 9 ..= 16: s6_scan_bwd_n16_body<T, REGS> (kernels s6_scan_bwd_n16p and s6_scan_bwd_n16r8),
// the structure of sessions 2-9's forward kernel. 8 lanes per channel, 2 states per lane, 16
// channels per block, chunks of T steps. No warp shuffles in the time loops: every per-step partial
// sum goes through shared memory and is reduced once per chunk.
//   - The forward pass (checkpoints) runs in spans of 4 chunks staged in the then unused s_pp
//     region; it and the reverse pass load the next span's / chunk's raw inputs (and, in reverse,
//     its checkpoint) into registers before running the current one, hiding their latency.
//   - A step's per-channel inputs are staged as one float4 (Δ, u, g, Δu), a lane's B and C as one
//     float4 (B_2p, B_2p+1, C_2p, C_2p+1).
//   - The recompute keeps h_t and exp(ΔA) per lane: in registers with REGS (the chunk's loops
//     unrolled whole, so every index is a constant; a partial chunk masks the steps past its end),
//     else in s_pp, where the reverse step reads them and writes its partials in their place. The
//     reverse step reads them instead of a third exp, and gets q = dhs exp(ΔA) h_{t-1} as the
//     carried dL/dh_{t-1} times h_{t-1} (the previous step's state, or the chunk's start state).
//   - Each reverse step writes its lane's dB_t, dC_t partials over its 2 states to s_pp, and
//     Σ_s dhs B, Σ_s q A, Σ_s C h to s_p2 / s_p1; after the chunk, du, dΔ, dz are summed over each
//     channel's 8 lanes and dB_t, dC_t over the block's 16 channels (float4 loads; the per-block
//     partials pbc, as in the other kernels).
//   - softplus is the forward's (s6_softplus_fast, prelude.cu): the recompute does the forward's
//     operations on the same values, so its states are the forward's to the bit (where the
//     forward ran without segments); the sigmoids use the fast intrinsics (__expf, __fdividef).
//   - Shared memory bounds it (run 57's profile of the shared-state kernel: "Mem Busy" 82%, every
//     state-step's (h_t, exp(ΔA)) stored and read back); registers, the other limit, decide
//     between the two: n16p (T = 12, states in shared memory) runs 4 blocks of 128 threads per SM
//     (116 registers), n16r8 (T = 8, states in registers) 3 (168) (cuda/backward.rs chooses).
// Whether n16p's recompute and reverse walk load a step's shared-memory operands one step ahead
// (1, the default) or at the step (0); the host defines it from `S6_SCAN_BWD_AHEAD` for
// measurements.
#ifndef S6_SCAN_BWD_AHEAD
#define S6_SCAN_BWD_AHEAD 1
#endif
__device__ __forceinline__ float s6b_fast_sigmoid(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }
// A chunk's raw inputs for one thread of s6_scan_bwd_n16_body: its E elements idx = tid + e · NT,
// (step t = idx / CPB of the chunk, column c = idx % CPB) of u, Δ, dy and z (channel d0 + c) and
// of B and C (state c), from the chunk's first row `row`; zero past the chunk's tl steps, the
// channels and the states. I is the index type: int where every index fits (half the address
// arithmetic), else unsigned long long.
template <typename I, int E, int NT, int T, int CPB, int NMAX>
__device__ __forceinline__ void s6b_load_chunk(const float* __restrict__ u, const float* __restrict__ delta,
                                               const float* __restrict__ dy, const float* __restrict__ z,
                                               unsigned int ldz, const float* __restrict__ bm, unsigned int ldb,
                                               const float* __restrict__ cm, unsigned int ldc, I row, I d0,
                                               unsigned int dim, unsigned int n, int tl, int tid, float (&ru)[E],
                                               float (&rdl)[E], float (&rg)[E], float (&rz)[E], float (&rb)[E],
                                               float (&rcc)[E]) {
#pragma unroll
    for (int e = 0; e < E; e++) {
        const int idx = tid + e * NT;
        const int t = idx / CPB, c = idx % CPB;
        const I dd = d0 + c, r = row + t;
        const bool okc = idx < T * CPB && t < tl && dd < (I)dim;
        const bool oks = idx < T * NMAX && t < tl && c < (int)n;
        const I o = r * (I)dim + dd;
        ru[e] = okc ? u[o] : 0.0f;
        rdl[e] = okc ? delta[o] : 0.0f;
        rg[e] = okc ? dy[o] : 0.0f;
        rz[e] = okc && z != nullptr ? z[r * (I)ldz + dd] : 0.0f;
        rb[e] = oks ? bm[r * (I)ldb + c] : 0.0f;
        rcc[e] = oks ? cm[r * (I)ldc + c] : 0.0f;
    }
}
// D = A B + D for one warp: mma.m16n8k8 with tf32 A (16 x 8) and B (8 x 8), f32 D (16 x 8), in the
// PTX ISA's fragments (g = lane / 4, q = lane % 4): a = (A[g][q], A[g+8][q], A[g][q+4],
// A[g+8][q+4]), b = (B[q][g], B[q+4][g]), d = (D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1]).
// The operands are fp32 bit patterns whose low 13 bits the tensor cores ignore (truncation to tf32).
__device__ __forceinline__ void s6b_mma_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#ifdef S6_EMULATE
    s6emu_mma_m16n8k8_tf32(d, a, b);
#else
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The sums of four values over each quad of a warp's lanes (lanes that differ in bits 0-1 only),
// on the tensor cores instead of the shared-memory pipe: returned to the quad's first lane as
// (Σ v0, Σ v1, Σ v2, Σ v3) (the other lanes get zeros). Every lane of the warp calls it
// (mma.sync). The values go in as A (v0 at column q of row g, v1 at column q + 4, v2 and v3 the
// same in row g + 8) against B's two 0/1 columns: column 0 sums A's columns 0-3, column 1 its
// columns 4-7. Each value is split into its first 11 significant bits and the rest (two
// products into one accumulator; the tensor cores truncate each operand to those 11 bits), so a
// sum is off by at most ~2^-20 of the values' magnitudes, where tf32 alone would be 2^-10.
__device__ __forceinline__ float4 s6b_quad_sum4(float v0, float v1, float v2, float v3) {
    const unsigned int g = (threadIdx.x & 31) >> 2, one = 0x3f800000u;
    const unsigned int b[2] = {g == 0 ? one : 0u, g == 1 ? one : 0u};
    const float v[4] = {v0, v2, v1, v3};  // a0, a1, a2, a3: d then comes out as (Σ v0, Σ v1, Σ v2, Σ v3)
    unsigned int hi[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        hi[i] = __float_as_uint(v[i]) & 0xffffe000u;
        lo[i] = __float_as_uint(v[i] - __uint_as_float(hi[i]));
    }
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    s6b_mma_tf32(d, hi, b);
    s6b_mma_tf32(d, lo, b);
    return make_float4(d[0], d[1], d[2], d[3]);
}

// MMA: the lanes of a warp hold 4 channels x 8 parts with the channel in the lane's low 2 bits (a
// quad: one part of 4 channels), and each reverse step sums its dB_t, dC_t partials over the
// warp's 4 channels with s6b_quad_sum4; the quad's first lane stores the sums, so the
// shared-memory partials and the chunk end's reads over them are a quarter of n16r8's / n16p's.
// The sums go to s_pp[t][warp * 32 + part]: without REGS that is the (h_t, exp(ΔA)) slot of a
// lane of the same warp, which that lane read before it took part in the step's mma.sync (its
// dC partial depends on it), and which no later step reads.
template <int T, bool REGS, bool MMA = false>
__device__ __forceinline__ void s6_scan_bwd_n16_body(S6_SCAN_BWD_PARAMS) {
    constexpr int NT = 128, SPLIT = 8, CPB = 16, NMAX = 16;
    // Unrolled whole with the states in registers; else by 6 and 4 (full unrolling or longer
    // spans spill at 128 registers and cost ~35%, measured on the H200 in session 6).
    constexpr int UNROLL_RECOMPUTE = REGS ? T : 6, UNROLL_REVERSE = REGS ? T : 4;
    constexpr int FT = 4 * T;  // forward staging: FT steps of u, Δ, B in the s_pp region
    constexpr int EF = FT * CPB / NT;
    static_assert(EF * NT == FT * CPB, "FT * CPB must be a multiple of NT");
    static_assert(3 * FT * CPB <= 4 * T * NT, "the forward staging must fit s_pp");
    constexpr int E = (T * CPB + NT - 1) / NT;  // T * NMAX == T * CPB elements staged per array
    // (h_t, exp(ΔA)) of the lane's 2 states without REGS; its dB_t, dC_t partials (with MMA the
    // warps' sums over their 4 channels, [t][warp * 32 + part]).
    __shared__ float4 s_pp[T][NT];
    __shared__ float2 s_p2[T][NT];  // (Σ dhs B, Σ q A) over the lane's states
    __shared__ float s_p1[T][NT];   // Σ C h over the lane's states
    __shared__ float4 s_dug[T][CPB];  // (Δ, u, g, Δu)
    __shared__ float s_sp[T][CPB];
    __shared__ float s_gz[T][CPB];
    __shared__ float4 s_bc[T][NMAX / 2];  // (B_2p, B_2p+1, C_2p, C_2p+1)

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int ch = MMA ? warp * 4 + (lane & 3) : tid / SPLIT, part = MMA ? lane >> 2 : tid % SPLIT;
    const unsigned int b = blockIdx.y;
    const unsigned int d0 = blockIdx.x * CPB;
    const unsigned int d = d0 + ch;
    const bool active = d < dim;
    const unsigned long long rows = (unsigned long long)gridDim.y * seqlen;
    const unsigned long long row0 = (unsigned long long)b * seqlen;
    const unsigned int nck = (seqlen + T - 1) / T;
    const unsigned long long ck0 = ((unsigned long long)b * dim + d) * nck;
    // The channel this thread reduces and stores in the store phase (T * CPB rows of CPB channels).
    const int rc = tid % CPB;
    const unsigned int rd = d0 + rc;
    const float rdsk = rd < dim ? dskip[rd] : 0.0f;
    const float rbias = rd < dim ? delta_bias[rd] : 0.0f;
    const bool ck_given = REGS && (bf16_out & S6B_CKPT_GIVEN) != 0;

    float h[2], dh[2], av[2], a2[2], da[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int s = part * 2 + i;
        const bool ok = active && s < (int)n;
        av[i] = ok ? a[(unsigned long long)d * n + s] : 0.0f;
        a2[i] = av[i] * 1.4426950408889634f;
        h[i] = 0.0f;
        dh[i] = 0.0f;
        da[i] = 0.0f;
    }

    float ru[E], rdl[E], rz[E], rg[E], rb[E], rcc[E], rck[2];
    // Whether every element index of u, Δ, dy, z, B and C fits in 32 bits (all but huge
    // batches): a chunk's loads then take their offsets as ints, about half the address
    // arithmetic of 64-bit ones (the loads were ~90 of a chunk's ~600 instructions per thread).
    const unsigned int widest = max(max(dim, ldz), max(ldb, ldc));
#ifdef S6_SCAN_BWD_WIDE_ONLY  // the emulation's second build (scripts/emulate/run.sh): the 64-bit path
    (void)widest;
    const bool narrow = false;
#else
    const bool narrow = rows * widest < 0x7fffffffull;
#endif
    auto load = [&](unsigned int k) {
        const unsigned int t0 = k * T;
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        if (narrow) {
            s6b_load_chunk<int, E, NT, T, CPB, NMAX>(u, delta, dy, z, ldz, bm, ldb, cm, ldc, (int)(row0 + t0),
                                                      (int)d0, dim, n, tl, tid, ru, rdl, rg, rz, rb, rcc);
        } else {
            s6b_load_chunk<unsigned long long, E, NT, T, CPB, NMAX>(u, delta, dy, z, ldz, bm, ldb, cm, ldc, row0 + t0,
                                                                     d0, dim, n, tl, tid, ru, rdl, rg, rz, rb, rcc);
        }
        if (k + 1 < nck || ck_given) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int s = part * 2 + i;
                rck[i] = active && s < (int)n ? ckpt[(ck0 + k) * n + s] : 0.0f;
            }
        }
    };

    // 1. Forward over the steps of the chunks 0 .. nck-2 (checkpoints), in spans of FT steps
    //    staged in the (still unused) s_pp region; the last chunk's inputs are loaded meanwhile.
    load(nck - 1);
    {
        float* f_u = reinterpret_cast<float*>(s_pp);
        float* f_dt = f_u + FT * CPB;
        float* f_b = f_dt + FT * CPB;
        float fu[EF], fd[EF], fb[EF];
        const unsigned int nf = ck_given ? 0 : (nck - 1) * T;
        auto loadf = [&](unsigned int f0) {
#pragma unroll
            for (int e = 0; e < EF; e++) {
                const int idx = tid + e * NT;
                const int t = idx / CPB, c = idx % CPB;
                const unsigned int dd = d0 + c;
                const unsigned long long r = row0 + f0 + t;
                const bool in = f0 + t < nf;
                fu[e] = in && dd < dim ? u[r * dim + dd] : 0.0f;
                fd[e] = in && dd < dim ? delta[r * dim + dd] : 0.0f;
                fb[e] = in && c < (int)n ? bm[r * ldb + c] : 0.0f;
            }
        };
        if (nf > 0) loadf(0);
        for (unsigned int f0 = 0; f0 < nf; f0 += FT) {
            const int nk = (nf - f0 < (unsigned int)FT ? (int)(nf - f0) : FT) / T;
            __syncthreads();
#pragma unroll
            for (int e = 0; e < EF; e++) {
                const int idx = tid + e * NT;
                f_u[idx] = fu[e];
                f_dt[idx] = d0 + (idx % CPB) < dim ? s6_softplus_fast(fd[e] + rbias) : 0.0f;
                f_b[idx] = fb[e];
            }
            __syncthreads();
            if (f0 + FT < nf) loadf(f0 + FT);
            for (int kk = 0; kk < nk; kk++) {
                const unsigned int k = f0 / T + kk;
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int s = part * 2 + i;
                    if (active && s < (int)n) ckpt[(ck0 + k) * n + s] = h[i];
                }
#pragma unroll 4
                for (int tt = 0; tt < T; tt++) {
                    const int t = kk * T + tt;
                    const float dt = f_dt[t * CPB + ch];
                    const float dx = dt * f_u[t * CPB + ch];
                    const float2 bb = reinterpret_cast<const float2*>(f_b)[t * (NMAX / 2) + part];
                    h[0] = fmaf(s6_ex2_ftz(dt * a2[0]), h[0], dx * bb.x);
                    h[1] = fmaf(s6_ex2_ftz(dt * a2[1]), h[1], dx * bb.y);
                }
            }
        }
    }

    // 2. The chunks in reverse.
    float dd_acc = 0.0f, dbias_acc = 0.0f;
    const int w2 = 2 * (int)n;
    for (int k = (int)nck - 1; k >= 0; k--) {
        const unsigned int t0 = (unsigned int)k * T;
        const int tl = seqlen - t0 < (unsigned int)T ? (int)(seqlen - t0) : T;
        __syncthreads();  // the previous chunk's store phase is done with shared memory
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int idx = tid + e * NT;
            if (idx < T * CPB) {
                const int t = idx / CPB, c = idx % CPB;
                float dtv = 0.0f, spv = 0.0f, gv = 0.0f, gzv = 0.0f;
                if (d0 + c < dim) {
                    const float v = rdl[e] + rbias;
                    dtv = s6_softplus_fast(v);
                    spv = v > 20.0f ? 1.0f : s6b_fast_sigmoid(v);
                    if (z != nullptr) {
                        const float zz = rz[e];
                        const float sg = s6b_fast_sigmoid(zz);
                        gv = rg[e] * zz * sg;
                        gzv = rg[e] * sg * fmaf(zz, 1.0f - sg, 1.0f);
                    } else {
                        gv = rg[e];
                    }
                }
                s_dug[t][c] = make_float4(dtv, ru[e], gv, dtv * ru[e]);
                s_sp[t][c] = spv;
                s_gz[t][c] = gzv;
                float* bc = reinterpret_cast<float*>(&s_bc[t][c >> 1]);
                bc[c & 1] = rb[e];
                bc[2 + (c & 1)] = rcc[e];
            }
        }
        float hh0 = h[0], hh1 = h[1];
        if (k + 1 < (int)nck || ck_given) {
            hh0 = rck[0];
            hh1 = rck[1];
        }
        __syncthreads();
        if (k > 0) load((unsigned int)k - 1);

        // The chunk's recompute and reverse walk (`nt` is a literal T at the first call site, so a
        // full chunk has no masks; NVRTC rejects generic lambdas in device code, so the
        // full-chunk specialization comes from inlining, not from a template).
        auto walk = [&](const int nt) {
            float hs[REGS ? T : 1][2], es[REGS ? T : 1][2];
            const float hp0[2] = {hh0, hh1};  // the state before the chunk: step 0's h_{t-1}
            // One recompute step from its shared-memory operands: (Δ, u, g, Δu), the lane's B and C.
            auto fstep = [&](const int t, const float4 v, const float4 bc) {
                const float e0 = s6_ex2_ftz(v.x * a2[0]), e1 = s6_ex2_ftz(v.x * a2[1]);
                hh0 = fmaf(e0, hh0, v.w * bc.x);
                hh1 = fmaf(e1, hh1, v.w * bc.y);
                if constexpr (REGS) {
                    hs[t][0] = hh0;
                    hs[t][1] = hh1;
                    es[t][0] = e0;
                    es[t][1] = e1;
                } else {
                    s_pp[t][tid] = make_float4(hh0, hh1, e0, e1);  // each lane only reads its own
                }
            };
            if constexpr (!REGS && S6_SCAN_BWD_AHEAD) {
                // As the reverse walk below: step t + 1's operands loaded during step t, the last
                // step peeled.
                float4 vn = s_dug[0][ch], bcn = s_bc[0][part];
#pragma unroll UNROLL_RECOMPUTE
                for (int t = 0; t + 1 < nt; t++) {
                    const float4 v = vn, bc = bcn;
                    vn = s_dug[t + 1][ch];
                    bcn = s_bc[t + 1][part];
                    fstep(t, v, bc);
                }
                fstep(nt - 1, vn, bcn);
            } else {
#pragma unroll UNROLL_RECOMPUTE
                for (int t = 0; t < (REGS ? T : nt); t++) {
                    if (!REGS || t < nt) fstep(t, s_dug[t][ch], s_bc[t][part]);
                }
            }
            // One reverse step from its shared-memory operands: (Δ, u, g, Δu), the lane's B and C,
            // and without REGS its (h_t, exp(ΔA)) and h_{t-1} (`hpv`: the next step's (h, exp(ΔA)),
            // unused at t = 0).
            auto rstep = [&](const int t, const float4 v, const float4 bc, const float4 hd, const float4 hpv) {
                const float dt = v.x, g = v.z, dtx = v.w;
                const float bs[2] = {bc.x, bc.y}, cs[2] = {bc.z, bc.w};
                float hc[2], dec[2], hp[2];
                if constexpr (REGS) {
                    hc[0] = hs[t][0];
                    hc[1] = hs[t][1];
                    dec[0] = es[t][0];
                    dec[1] = es[t][1];
                    hp[0] = t > 0 ? hs[t > 0 ? t - 1 : 0][0] : hp0[0];
                    hp[1] = t > 0 ? hs[t > 0 ? t - 1 : 0][1] : hp0[1];
                } else {
                    hc[0] = hd.x;
                    hc[1] = hd.y;
                    dec[0] = hd.z;
                    dec[1] = hd.w;
                    hp[0] = t > 0 ? hpv.x : hp0[0];
                    hp[1] = t > 0 ? hpv.y : hp0[1];
                }
                float pb[2], pc[2], pout = 0.0f, pbs = 0.0f, pqa = 0.0f;
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const float dhs = fmaf(g, cs[i], dh[i]);
                    pb[i] = dhs * dtx;
                    pc[i] = g * hc[i];
                    pout = fmaf(cs[i], hc[i], pout);
                    pbs = fmaf(dhs, bs[i], pbs);
                    dh[i] = dhs * dec[i];
                    // q = dhs exp(ΔA) h_{t-1}: the carried dL/dh_{t-1} times the state before the
                    // step, one product (it was dhs (h_t - Δu B): three, the state's last term
                    // recomputed), exactly 0 from h_{t-1} = 0.
                    const float q = dh[i] * hp[i];
                    da[i] = fmaf(q, dt, da[i]);
                    pqa = fmaf(q, av[i], pqa);
                }
                if constexpr (MMA) {
                    const float4 sum = s6b_quad_sum4(pb[0], pb[1], pc[0], pc[1]);
                    if ((lane & 3) == 0) s_pp[t][warp * 32 + part] = sum;
                } else {
                    s_pp[t][tid] = make_float4(pb[0], pb[1], pc[0], pc[1]);
                }
                s_p2[t][tid] = make_float2(pbs, pqa);
                s_p1[t][tid] = pout;
            };
            if constexpr (!REGS && S6_SCAN_BWD_AHEAD) {
                // Step t - 1's operands loaded during step t, before its stores (ptxas kept every
                // load after the previous step's stores: a shared-memory round trip per step on
                // the critical path). The last step (t = 0) is peeled: it loads nothing.
                float4 vn = s_dug[nt - 1][ch], bcn = s_bc[nt - 1][part], hdn = s_pp[nt - 1][tid];
#pragma unroll UNROLL_REVERSE
                for (int t = nt - 1; t > 0; t--) {
                    const float4 v = vn, bc = bcn, hd = hdn;
                    vn = s_dug[t - 1][ch];
                    bcn = s_bc[t - 1][part];
                    hdn = s_pp[t - 1][tid];
                    rstep(t, v, bc, hd, hdn);
                }
                rstep(0, vn, bcn, hdn, hdn);
            } else {
#pragma unroll UNROLL_REVERSE
                for (int t = (REGS ? T : nt) - 1; t >= 0; t--) {
                    if (!REGS || t < nt) {
                        const float4 hd = REGS ? float4{} : s_pp[t][tid];
                        const float4 hpv = REGS || t == 0 ? float4{} : s_pp[t > 0 ? t - 1 : 0][tid];
                        rstep(t, s_dug[t][ch], s_bc[t][part], hd, hpv);
                    }
                }
            }
        };
        if (tl == T) {
            walk(T);
        } else {
            walk(tl);
        }
        __syncthreads();

        // du, dΔ, dz: sums over each channel's 8 lanes (the lane order rotated against bank conflicts).
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int idx = tid + e * NT;
            if (idx < tl * CPB) {
                const int t = idx / CPB, c = idx % CPB;
                float sbs = 0.0f, sqa = 0.0f, sout = 0.0f;
#pragma unroll
                for (int p = 0; p < SPLIT; p++) {
                    // With MMA lane (c, p) is thread (c / 4) * 32 + p * 4 + c % 4; the parts are
                    // rotated by c / 4 (and for s_p1 by t's parity) so that a warp's loads of
                    // one p hit distinct banks.
                    const int j = c >> 2;
                    const float2 v = MMA ? s_p2[t][j * 32 + ((p + j) & 7) * 4 + (c & 3)]
                                         : s_p2[t][c * SPLIT + ((p + c + (c >> 3)) & 7)];
                    sbs += v.x;
                    sqa += v.y;
                    sout += MMA ? s_p1[t][j * 32 + ((p + j + 4 * (t & 1)) & 7) * 4 + (c & 3)]
                                : s_p1[t][c * SPLIT + ((p + (c >> 2) + 4 * (t & 1)) & 7)];
                }
                const float4 v = s_dug[t][c];
                const float dt = v.x, x = v.y, g = v.z;
                const float ddt = fmaf(x, sbs, sqa) * s_sp[t][c];
                if (rd < dim) {
                    const unsigned long long r = row0 + t0 + t;
                    du[r * dim + rd] = fmaf(dt, sbs, g * rdsk);
                    s6b_put(ddelta, bf16_out & S6B_DDELTA_BF16, r * dim + rd, ddt);
                    if (dz != nullptr) s6b_put(dz, bf16_out & S6B_DZ_BF16, r * lddz + rd, fmaf(rdsk, x, sout) * s_gz[t][c]);
                }
                dd_acc = fmaf(g, x, dd_acc);
                dbias_acc += ddt;
            }
        }
        // dB_t, dC_t: sums over the block's channels; a thread sums the float4 partials (dB, dC of
        // 2 states) of one lane position over the 16 channels (with MMA over the 4 warps' sums).
        if (tid < tl * SPLIT) {
            const int t = tid / SPLIT, p = tid % SPLIT;
            constexpr int STRIDE = MMA ? 32 : SPLIT;  // between the partials summed: warps or channels
            float4 s0 = s_pp[t][p], s1 = s_pp[t][STRIDE + p];
#pragma unroll
            for (int c = 2; c < (MMA ? NT / 32 : CPB); c += 2) {
                const float4 v0 = s_pp[t][c * STRIDE + p], v1 = s_pp[t][(c + 1) * STRIDE + p];
                s0.x += v0.x;
                s0.y += v0.y;
                s0.z += v0.z;
                s0.w += v0.w;
                s1.x += v1.x;
                s1.y += v1.y;
                s1.z += v1.z;
                s1.w += v1.w;
            }
            float* out = pbc + ((unsigned long long)blockIdx.x * rows + row0 + t0 + t) * w2;
            const int s = 2 * p;
            if (s < (int)n) {
                out[s] = s0.x + s1.x;
                out[n + s] = s0.z + s1.z;
            }
            if (s + 1 < (int)n) {
                out[s + 1] = s0.y + s1.y;
                out[n + s + 1] = s0.w + s1.w;
            }
        }
    }

    // 3. This sequence's parameter-gradient partials: pparam[b] = [dA (dim × n), dD (dim), dΔbias (dim)].
    float* pp = pparam + (unsigned long long)b * dim * (n + 2);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int s = part * 2 + i;
        if (active && s < (int)n) pp[(unsigned long long)d * n + s] = da[i];
    }
    __syncthreads();
    float* s_red = &s_p1[0][0];
    s_red[tid] = dd_acc;
    s_red[NT + tid] = dbias_acc;
    __syncthreads();
    if (tid < CPB && rd < dim) {
        float sd = 0.0f, sb = 0.0f;
#pragma unroll
        for (int j = 0; j < NT / CPB; j++) {
            sd += s_red[tid + j * CPB];
            sb += s_red[NT + tid + j * CPB];
        }
        pp[(unsigned long long)dim * n + rd] = sd;
        pp[(unsigned long long)dim * n + dim + rd] = sb;
    }
}

#define S6_SCAN_BWD_N16(NAME, T, REGS, MIN_BLOCKS, MMA)                                  \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS) NAME(S6_SCAN_BWD_PARAMS) { \
        S6_PDL_ENTRY();                                                                      \
        s6_scan_bwd_n16_body<T, REGS, MMA>(S6_SCAN_BWD_ARGS);                                \
    }
// Measured against the states in registers with chunks of 8 at 3 blocks per SM (n16r8, 2.37 ms at
// B = 16, D = 1536, L = 2048 on an H100, session 14): chunks of 12 at 3 blocks per SM 2.83 ms
// (spills), chunks of 8 at 4 blocks 2.62 ms (68 bytes spilled), chunks of 6 at 4 blocks 2.99 ms.
S6_SCAN_BWD_N16(s6_scan_bwd_n16p, 12, false, 4, false)
S6_SCAN_BWD_N16(s6_scan_bwd_n16r8, 8, true, 3, false)
// n16r8 with its dB_t, dC_t partials summed over each warp's channels on the tensor cores
// (s6b_quad_sum4; session 26, `S6_SCAN_BWD=n16m8` until measured).
S6_SCAN_BWD_N16(s6_scan_bwd_n16m8, 8, true, 3, true)
// n16p with the same tensor-core sums (`S6_SCAN_BWD=n16pm` until measured).
S6_SCAN_BWD_N16(s6_scan_bwd_n16pm, 12, false, 4, true)

// dB / dC: sum of the per-block partials pbc[blk][row][2n] over the blocks, in order; written to
// db[row * ldb + s] and dc[row * ldc + s] (offsets applied by the caller).
extern "C" __global__ void s6_scan_bwd_reduce_bc(const float* __restrict__ pbc, unsigned int nblk, unsigned int rows,
                                                 unsigned int n, float* db, unsigned int ldb, float* dc,
                                                 unsigned int ldc) {
    S6_PDL_ENTRY();
    const unsigned long long w2 = 2ull * n;
    const unsigned long long total = (unsigned long long)rows * w2;
    const unsigned long long stride = total;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long row = i / w2;
        const unsigned int j = (unsigned int)(i % w2);
        float sum = 0.0f;
        for (unsigned int blk = 0; blk < nblk; blk++) sum += pbc[blk * stride + i];
        if (j < n) {
            db[row * ldb + j] = sum;
        } else {
            dc[row * ldc + (j - n)] = sum;
        }
    }
}

// dA += Σ_b pparam[b][0 .. dim*n], dD += Σ_b pparam[b][dim*n ..][.. dim], dΔbias += the rest.
extern "C" __global__ void s6_scan_bwd_reduce_params(const float* __restrict__ pparam, unsigned int batch,
                                                     unsigned int dim, unsigned int n, float* __restrict__ da,
                                                     float* __restrict__ dd, float* __restrict__ ddelta_bias) {
    S6_PDL_ENTRY();
    const unsigned long long an = (unsigned long long)dim * n;
    const unsigned long long per = an + 2ull * dim;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < per; i += (unsigned long long)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (unsigned int b = 0; b < batch; b++) sum += pparam[b * per + i];
        if (i < an) {
            da[i] += sum;
        } else if (i < an + dim) {
            dd[i - an] += sum;
        } else {
            ddelta_bias[i - an - dim] += sum;
        }
    }
}
