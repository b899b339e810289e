// The fused single-token Mamba mixer step (decoding, seqlen = 1; crates/s6/src/backend/cuda/
// mixer_step.rs), after the conv (conv.cu's forward, without its state update) and x_proj:
//
//   s6_mixer_step_scan: per (sequence, channel), S6_MS_G lanes: dt = dt_proj[c, :] · δ (written
//     without its bias, as the op-by-op path does; or, with dt_given, read from delta_out, where
//     a product for the whole batch wrote it), Δ = softplus(dt + bias), the conv window
//     shifted by one with x appended, h = exp(Δ·A) h + Δ·B·u over d_state,
//     y = (C·h + D·u) · silu(z).
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

// grid (ceil(di / S6_MS_CPB), batch), block S6_MS_THREADS, dynamic shared memory width floats
// (the sequence's xdbl row). Before the PDL wait, with `prefetch`, the first sequence's blocks
// prefetch their channels' rows of dt_proj and A into L2 (s6_prefetch_l2): every sequence reads
// them, and no kernel writes them.
extern "C" __global__ void __launch_bounds__(S6_MS_THREADS)
    s6_mixer_step_scan(const float* __restrict__ xz, unsigned int ldxz, const float* __restrict__ u,
                       const float* __restrict__ xdbl, unsigned int width, unsigned int r,
                       const float* __restrict__ dt_proj, const float* __restrict__ dt_bias,
                       const float* __restrict__ a, const float* __restrict__ dskip, float* __restrict__ conv_state,
                       unsigned int k, float* __restrict__ ssm_state, float* __restrict__ delta_out,
                       float* __restrict__ y, unsigned int di, unsigned int n, unsigned int dt_given,
                       unsigned int prefetch) {
    S6_PDL_LAUNCH();
    if (prefetch && blockIdx.y == 0 && threadIdx.x < 32) {
        const unsigned long long c0 = (unsigned long long)blockIdx.x * S6_MS_CPB;
        const unsigned long long nc = c0 + S6_MS_CPB < di ? S6_MS_CPB : di - c0;
        if (!dt_given) s6_prefetch_l2(dt_proj + c0 * r, nc * r * sizeof(float));
        s6_prefetch_l2(a + c0 * n, nc * n * sizeof(float));
    }
    S6_PDL_WAIT();
    extern __shared__ float s6_ms_x[];
    const unsigned int b = blockIdx.y;
    for (unsigned int i = threadIdx.x; i < width; i += blockDim.x) {
        s6_ms_x[i] = xdbl[(unsigned long long)b * width + i];
    }
    __syncthreads();
    const unsigned int part = threadIdx.x % S6_MS_G;
    const unsigned int c = blockIdx.x * S6_MS_CPB + threadIdx.x / S6_MS_G;
    // Inactive channels (c >= di) still take part in the shuffles, with zeros.
    const bool active = c < di;
    const unsigned long long bc = (unsigned long long)b * di + c;

    // Every global load that does not depend on dt first, so that their latencies overlap.
    float dt = 0.0f, bias_c = 0.0f, uv = 0.0f, d_c = 0.0f, zc = 0.0f;
    if (active) {
        bias_c = dt_bias[c];
        uv = u[bc];
        d_c = dskip[c];
        zc = xz[(unsigned long long)b * ldxz + di + c];
        if (dt_given) {
            // Every lane reads it: the shuffle sum below must see it on one lane only.
            dt = part == 0 ? delta_out[bc] : 0.0f;
        } else {
            const float* wr = dt_proj + (unsigned long long)c * r;
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
        const float* ac = a + (unsigned long long)c * n;
        float* h = ssm_state + bc * n;
        const float* bm = s6_ms_x + r;
        const float* cm = s6_ms_x + r + n;
        for (unsigned int s = part; s < n; s += S6_MS_G) {
            const float hv = fmaf(expf(dl * ac[s]), h[s], du * bm[s]);
            h[s] = hv;
            acc = fmaf(cm[s], hv, acc);
        }
        if (part == 0 && k > 1) {
            // The window moves by one step: slot j takes slot j + 1, the last slot takes x.
            float* st = conv_state + (unsigned long long)b * (k - 1) * di + c;
            for (unsigned int j = 0; j + 2 < k; j++) st[(unsigned long long)j * di] = st[(unsigned long long)(j + 1) * di];
            st[(unsigned long long)(k - 2) * di] = xz[(unsigned long long)b * ldxz + c];
        }
    }
#pragma unroll
    for (int off = S6_MS_G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (active && part == 0) {
        y[bc] = (acc + d_c * uv) * s6_silu(zc);
    }
}

