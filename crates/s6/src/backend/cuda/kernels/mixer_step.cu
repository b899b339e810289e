// The fused single-token Mamba mixer step (decoding, seqlen = 1), two kernels between in_proj and
// out_proj (crates/s6/src/backend/cuda/mixer_step.rs):
//
//   s6_mixer_step_xproj: u = silu(conv1d(conv_state, x) + bias) for every channel of one
//     sequence (each block recomputes it into shared memory: d_inner * d_conv FMAs, cheap), then
//     one warp per output column of x_proj: xdbl = x_proj · u. Block x = 0 writes u. The conv
//     state is only read here (every block reads it); s6_mixer_step_scan updates it.
//   s6_mixer_step_scan: per (sequence, channel), S6_MS_G lanes: dt = dt_proj[c, :] · δ (written
//     without its bias, as the op-by-op path does), Δ = softplus(dt + bias), the conv window
//     shifted by one with x appended, h = exp(Δ·A) h + Δ·B·u over d_state,
//     y = (C·h + D·u) · silu(z).
//
// Semantics as s6_conv1d_silu + s6_conv_state_update (elementwise.cu) and the scan (scan.cu),
// whose helpers s6_silu and s6_softplus this file uses (the sources are compiled together).
// Layouts: xz [batch, ldxz] with x at column 0 and z at column di; conv state
// [batch, k - 1, di]; ssm state [batch, di, n]; xdbl [batch, width] = [δ (r) | B (n) | C (n)].

#define S6_MS_WARPS 16
#define S6_MS_G 8
#define S6_MS_CPB 32

// grid (ceil(width / S6_MS_WARPS), batch), block 32 * S6_MS_WARPS, dynamic shared memory di floats.
extern "C" __global__ void s6_mixer_step_xproj(const float* __restrict__ xz, unsigned int ldxz,
                                               const float* __restrict__ conv_w,
                                               const float* __restrict__ conv_b,
                                               const float* __restrict__ conv_state, unsigned int k,
                                               const float* __restrict__ x_proj, unsigned int width,
                                               float* __restrict__ u_out, float* __restrict__ xdbl,
                                               unsigned int di) {
    extern __shared__ __align__(16) float s6_ms_u[];
    const unsigned int b = blockIdx.y;
    const float* x = xz + (unsigned long long)b * ldxz;
    const float* st = conv_state + (unsigned long long)b * (k - 1) * di;
    // Latency-bound (a few channels per thread, every load from L2): with Mamba's k = 4 all of a
    // channel's loads are independent and issued together.
#pragma unroll 2
    for (unsigned int c = threadIdx.x; c < di; c += blockDim.x) {
        // Same order as s6_conv1d_silu: bias, then taps from the oldest input to x.
        float s = conv_b != nullptr ? conv_b[c] : 0.0f;
        const float* wc = conv_w + (unsigned long long)c * k;
        if (k == 4) {
            const float w0 = wc[0], w1 = wc[1], w2 = wc[2], w3 = wc[3];
            const float s0 = st[c], s1 = st[(unsigned long long)di + c], s2 = st[2ull * di + c], xc = x[c];
            s = fmaf(w0, s0, s);
            s = fmaf(w1, s1, s);
            s = fmaf(w2, s2, s);
            s = fmaf(w3, xc, s);
        } else {
            for (unsigned int j = 0; j + 1 < k; j++) s = fmaf(wc[j], st[(unsigned long long)j * di + c], s);
            s = fmaf(wc[k - 1], x[c], s);
        }
        const float v = s6_silu(s);
        s6_ms_u[c] = v;
        if (blockIdx.x == 0) u_out[(unsigned long long)b * di + c] = v;
    }
    __syncthreads();
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned int o = blockIdx.x * S6_MS_WARPS + warp;
    if (o >= width) return;  // whole warps leave: the shuffles below stay full-warp
    const float* w = x_proj + (unsigned long long)o * di;
    float acc = 0.0f;
    if ((di & 3u) == 0) {
        // Rows start 16-byte aligned (allocations are 256-byte aligned, di a multiple of 4).
        const float4* w4 = reinterpret_cast<const float4*>(w);
        const float4* u4 = reinterpret_cast<const float4*>(s6_ms_u);
#pragma unroll 4
        for (unsigned int i = lane; i < di / 4; i += 32) {
            const float4 a = __ldg(w4 + i), v = u4[i];
            acc = fmaf(a.x, v.x, acc);
            acc = fmaf(a.y, v.y, acc);
            acc = fmaf(a.z, v.z, acc);
            acc = fmaf(a.w, v.w, acc);
        }
    } else {
        for (unsigned int c = lane; c < di; c += 32) acc = fmaf(w[c], s6_ms_u[c], acc);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) xdbl[(unsigned long long)b * width + o] = acc;
}

// grid (ceil(di / S6_MS_CPB), batch), block S6_MS_CPB * S6_MS_G, dynamic shared memory width
// floats (the sequence's xdbl row).
extern "C" __global__ void s6_mixer_step_scan(const float* __restrict__ xz, unsigned int ldxz,
                                              const float* __restrict__ u, const float* __restrict__ xdbl,
                                              unsigned int width, unsigned int r,
                                              const float* __restrict__ dt_proj,
                                              const float* __restrict__ dt_bias, const float* __restrict__ a,
                                              const float* __restrict__ dskip, float* __restrict__ conv_state,
                                              unsigned int k, float* __restrict__ ssm_state,
                                              float* __restrict__ delta_out, float* __restrict__ y,
                                              unsigned int di, unsigned int n) {
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
        const float* wr = dt_proj + (unsigned long long)c * r;
#pragma unroll 4
        for (unsigned int i = part; i < r; i += S6_MS_G) dt = fmaf(s6_ms_x[i], __ldg(wr + i), dt);
    }
#pragma unroll
    for (int off = S6_MS_G / 2; off > 0; off >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, off);

    float acc = 0.0f;
    if (active) {
        if (part == 0) delta_out[bc] = dt;
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
