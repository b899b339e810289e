// Element-wise and row-wise kernels of the CUDA backend: embedding lookup, row gather, bias
// broadcast, add, fused residual add + RMSNorm, the conv state update (the conv itself: conv.cu).
// Layouts as in the Backend trait (crates/s6/src/backend/mod.rs): row-major, rows are tokens.

__device__ __forceinline__ float s6_silu(float x) { return x / (1.0f + expf(-x)); }

// out[i, :] = table[ids[i], :]
extern "C" __global__ void s6_embedding(const float* __restrict__ table, const unsigned int* __restrict__ ids,
                                        float* __restrict__ out, unsigned int rows, unsigned int dim) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)rows * dim;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned int r = (unsigned int)(i / dim), c = (unsigned int)(i % dim);
        out[i] = table[(unsigned long long)ids[r] * dim + c];
    }
}

// out[i, :] = src[rows[i], :]  (same kernel shape as the embedding, separate name for clarity)
extern "C" __global__ void s6_gather_rows(const float* __restrict__ src, const unsigned int* __restrict__ rows_idx,
                                          float* __restrict__ out, unsigned int rows, unsigned int dim) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)rows * dim;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned int r = (unsigned int)(i / dim), c = (unsigned int)(i % dim);
        out[i] = src[(unsigned long long)rows_idx[r] * dim + c];
    }
}

// out[r, j] = bias[j] for a [rows, n] matrix (the GEMM then accumulates onto it).
extern "C" __global__ void s6_fill_bias(float* __restrict__ out, const float* __restrict__ bias, unsigned int rows,
                                        unsigned int n) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)rows * n;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) out[i] = bias[i % n];
}

// dst += src
extern "C" __global__ void s6_add_assign(float* __restrict__ dst, const float* __restrict__ src, unsigned long long n) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (unsigned long long)gridDim.x * blockDim.x) dst[i] += src[i];
}

// The sums over a block of every thread's v[r], r < R (blockDim.x a multiple of 32, at most 1024),
// returned to every thread in v: warp shuffles, then the warps' sums by the first warp, each r on
// its own. `partial`: R x 32 floats of shared memory, free again on return. The order is fixed by
// the thread count, so that kernels that sum the same row with the same count get the same bits
// (s6_add_rmsnorm and gemv.cu's NORM).
template <int R>
__device__ __forceinline__ void s6_block_sum_rows(float (&v)[R], float (*partial)[32]) {
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        for (int off = 16; off > 0; off >>= 1) v[r] += __shfl_xor_sync(0xffffffffu, v[r], off);
        if (lane == 0) partial[r][warp] = v[r];
    }
    __syncthreads();
    if (warp == 0) {
        const unsigned int nwarps = (blockDim.x + 31) / 32;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float t = lane < nwarps ? partial[r][lane] : 0.0f;
            for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
            if (lane == 0) partial[r][0] = t;
        }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) v[r] = partial[r][0];
    __syncthreads();
}

// One block per row of RMSNORM_THREADS threads (cuda/mod.rs: the GEMV's block size, so that
// gemv.cu's NORM prologue sums a row in the same order): residual += delta (when given), then
// out = residual * rsqrt(mean(residual^2) + eps) * w; s6_add_rmsnorm_b16 also writes out rounded
// to bf16 into out16 (the input of a bf16 product, which then needs no cast: cuda/bf16.rs), or
// only there when out is null (an activation held in bf16 alone).
// res_out: where the sum goes; null for residual itself. Training keeps every block's input
// residual for its backward: with the sum written to a new buffer the old one needs no copy.
// Elements per thread held in registers between the two passes (below).
#define S6_NORM_HOLD 8
template <bool W16>
__device__ __forceinline__ void s6_add_rmsnorm_impl(float* __restrict__ residual, float* __restrict__ res_out,
                                                    const float* __restrict__ delta,
                                                    const float* __restrict__ w, float* __restrict__ out,
                                                    unsigned short* __restrict__ out16, unsigned int dim, float eps) {
    S6_PDL_ENTRY();
    __shared__ float partial[1][32];
    const unsigned long long base = (unsigned long long)blockIdx.x * dim;
    const float* r = residual + base;
    float* dst = (res_out != nullptr ? res_out : residual) + base;
    const bool store = delta != nullptr || res_out != nullptr;
    float ss[1] = {0.0f};
    // A thread's first S6_NORM_HOLD elements (i = threadIdx.x + k · blockDim.x) are loaded together
    // and held in registers for the second pass, so that it needs no second round of loads (at
    // 1.4B, 2048 = 8 · 256: the whole row). The sum runs over them in the same order as the loop
    // after it, so the bits are those of summing element by element (the fused decoding block's
    // norm repeats them, gemv.cu).
    // Their weights are loaded with them.
    float held[S6_NORM_HOLD], held_w[S6_NORM_HOLD];
#pragma unroll
    for (int k = 0; k < S6_NORM_HOLD; k++) {
        const unsigned int i = threadIdx.x + k * blockDim.x;
        float v = 0.0f, wv = 0.0f;
        if (i < dim) {
            v = delta != nullptr ? r[i] + delta[base + i] : r[i];
            wv = w[i];
        }
        held[k] = v;
        held_w[k] = wv;
    }
#pragma unroll
    for (int k = 0; k < S6_NORM_HOLD; k++) {
        if (threadIdx.x + k * blockDim.x < dim) ss[0] = fmaf(held[k], held[k], ss[0]);
    }
    // Longer rows: the rest loaded in the loop (loads only, unrolled, so that they are in flight
    // together), and again in the second pass.
#pragma unroll 4
    for (unsigned int i = threadIdx.x + S6_NORM_HOLD * blockDim.x; i < dim; i += blockDim.x) {
        const float v = delta != nullptr ? r[i] + delta[base + i] : r[i];
        ss[0] = fmaf(v, v, ss[0]);
    }
    s6_block_sum_rows<1>(ss, partial);
    const float inv = rsqrtf(ss[0] / (float)dim + eps);
    auto put = [&](unsigned int i, float v, float wv) {
        if (store) dst[i] = v;
        const float o = v * inv * wv;
        if (!W16 || out != nullptr) out[base + i] = o;
        if constexpr (W16) out16[base + i] = s6_f32_to_bf16(o);
    };
#pragma unroll
    for (int k = 0; k < S6_NORM_HOLD; k++) {
        const unsigned int i = threadIdx.x + k * blockDim.x;
        if (i < dim) put(i, held[k], held_w[k]);
    }
    for (unsigned int i = threadIdx.x + S6_NORM_HOLD * blockDim.x; i < dim; i += blockDim.x) {
        float v = r[i];
        if (delta != nullptr) v += delta[base + i];
        put(i, v, w[i]);
    }
}

extern "C" __global__ void s6_add_rmsnorm(float* __restrict__ residual, float* __restrict__ res_out,
                                          const float* __restrict__ delta, const float* __restrict__ w,
                                          float* __restrict__ out, unsigned int dim, float eps) {
    s6_add_rmsnorm_impl<false>(residual, res_out, delta, w, out, nullptr, dim, eps);
}
extern "C" __global__ void s6_add_rmsnorm_b16(float* __restrict__ residual, float* __restrict__ res_out,
                                              const float* __restrict__ delta, const float* __restrict__ w,
                                              float* __restrict__ out, unsigned short* __restrict__ out16,
                                              unsigned int dim, float eps) {
    s6_add_rmsnorm_impl<true>(residual, res_out, delta, w, out, out16, dim, eps);
}

// The same for many rows (cuda/mod.rs: from NORM_WARP_MIN_ROWS rows, dim a multiple of 4 and at
// most 128 * S6_NORM_WARP_V4, 16-byte aligned rows): one warp per row, S6_NORM_WARP_ROWS rows per
// block, the row held in registers as float4s, so that all of a lane's loads are in flight at once
// and the sum needs shuffles only, no shared memory or block barrier. A lane sums its float4s in
// order, then the warp in a fixed tree: the same bits on every run, not those of the block-per-row
// kernel. (Written for decoding, where it was slower: it serves prefill and training.)
#define S6_NORM_WARP_V4 16
#define S6_NORM_WARP_ROWS 8
// TD: delta's type (bf16 bits where the block output is held in bf16 alone: cuda/bf16.rs).
template <bool W16, typename TD = float>
__device__ __forceinline__ void s6_add_rmsnorm_warp_impl(float* __restrict__ residual, float* __restrict__ res_out,
                                                         const TD* __restrict__ delta,
                                                         const float* __restrict__ w, float* __restrict__ out,
                                                         unsigned short* __restrict__ out16, unsigned int rows,
                                                         unsigned int dim, float eps) {
    S6_PDL_ENTRY();
    const unsigned int lane = threadIdx.x % 32;
    const unsigned long long row = (unsigned long long)blockIdx.x * S6_NORM_WARP_ROWS + threadIdx.x / 32;
    if (row >= rows) return;
    const unsigned int nv = dim / 4;
    const unsigned long long base = row * dim;
    const float4* r4 = reinterpret_cast<const float4*>(residual + base);
    float4* dst4 = reinterpret_cast<float4*>((res_out != nullptr ? res_out : residual) + base);
    const bool store = delta != nullptr || res_out != nullptr;
    const TD* d4 = delta != nullptr ? delta + base : nullptr;
    float4 v[S6_NORM_WARP_V4];
#pragma unroll
    for (int j = 0; j < S6_NORM_WARP_V4; j++) {
        const unsigned int q = lane + 32 * j;
        if (q < nv) v[j] = r4[q];
    }
    if (d4 != nullptr) {
#pragma unroll
        for (int j = 0; j < S6_NORM_WARP_V4; j++) {
            const unsigned int q = lane + 32 * j;
            if (q < nv) {
                float4 e;
                if constexpr (sizeof(TD) == 4) {
                    e = __ldg(reinterpret_cast<const float4*>(d4) + q);
                } else {
                    const uint2 h = __ldg(reinterpret_cast<const uint2*>(d4) + q);
                    e = make_float4(s6_bf16_lo(h.x), s6_bf16_hi(h.x), s6_bf16_lo(h.y), s6_bf16_hi(h.y));
                }
                v[j] = make_float4(v[j].x + e.x, v[j].y + e.y, v[j].z + e.z, v[j].w + e.w);
            }
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < S6_NORM_WARP_V4; j++) {
        if (lane + 32 * j < nv) {
            ss = fmaf(v[j].x, v[j].x, ss);
            ss = fmaf(v[j].y, v[j].y, ss);
            ss = fmaf(v[j].z, v[j].z, ss);
            ss = fmaf(v[j].w, v[j].w, ss);
        }
    }
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float inv = rsqrtf(ss / (float)dim + eps);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4* o4 = reinterpret_cast<float4*>(out + base);
#pragma unroll
    for (int j = 0; j < S6_NORM_WARP_V4; j++) {
        const unsigned int q = lane + 32 * j;
        if (q < nv) {
            if (store) dst4[q] = v[j];
            const float4 g = __ldg(w4 + q);
            const float4 o = make_float4(v[j].x * inv * g.x, v[j].y * inv * g.y, v[j].z * inv * g.z, v[j].w * inv * g.w);
            if (!W16 || out != nullptr) o4[q] = o;
            if constexpr (W16) {
                reinterpret_cast<uint2*>(out16 + base)[q] = make_uint2(s6_bf16_pack2(o.x, o.y), s6_bf16_pack2(o.z, o.w));
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * S6_NORM_WARP_ROWS)
    s6_add_rmsnorm_warp(float* __restrict__ residual, float* __restrict__ res_out, const float* __restrict__ delta,
                        const float* __restrict__ w, float* __restrict__ out, unsigned int rows, unsigned int dim,
                        float eps) {
    s6_add_rmsnorm_warp_impl<false>(residual, res_out, delta, w, out, nullptr, rows, dim, eps);
}
extern "C" __global__ void __launch_bounds__(32 * S6_NORM_WARP_ROWS)
    s6_add_rmsnorm_warp_b16(float* __restrict__ residual, float* __restrict__ res_out, const float* __restrict__ delta,
                            const float* __restrict__ w, float* __restrict__ out, unsigned short* __restrict__ out16,
                            unsigned int rows, unsigned int dim, float eps) {
    s6_add_rmsnorm_warp_impl<true>(residual, res_out, delta, w, out, out16, rows, dim, eps);
}
// delta (the previous block's output) held in bf16 alone.
extern "C" __global__ void __launch_bounds__(32 * S6_NORM_WARP_ROWS)
    s6_add_rmsnorm_warp_d16(float* __restrict__ residual, float* __restrict__ res_out,
                            const unsigned short* __restrict__ delta, const float* __restrict__ w,
                            float* __restrict__ out, unsigned short* __restrict__ out16, unsigned int rows,
                            unsigned int dim, float eps) {
    s6_add_rmsnorm_warp_impl<true, unsigned short>(residual, res_out, delta, w, out, out16, rows, dim, eps);
}

// The conv state after the call: the last k-1 inputs (state then x). One thread per (batch,
// channel), ascending j, so that an in-place update never reads a slot it already wrote. TX: x's
// type (float, or bf16 bits where x is held in bf16 alone: cuda/bf16.rs).
template <typename TX>
__device__ __forceinline__ void s6_conv_state_update_impl(const TX* __restrict__ x, unsigned int ldx, float* state,
                                                          unsigned int batch, unsigned int seqlen, unsigned int ch,
                                                          unsigned int k) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)batch * ch) return;
    const unsigned int c = (unsigned int)(i % ch), b = (unsigned int)(i / ch);
    for (unsigned int j = 0; j + 1 < k; j++) {
        // New slot j holds input step seqlen - (k-1) + j.
        long long tt = (long long)seqlen - (long long)(k - 1) + j;
        float v;
        if (tt < 0) {
            v = state[((unsigned long long)b * (k - 1) + (unsigned long long)(tt + (k - 1))) * ch + c];
        } else {
            v = s6_widen(x[((unsigned long long)b * seqlen + tt) * ldx + c]);
        }
        state[((unsigned long long)b * (k - 1) + j) * ch + c] = v;
    }
}
extern "C" __global__ void s6_conv_state_update(const float* __restrict__ x, unsigned int ldx, float* state,
                                                unsigned int batch, unsigned int seqlen, unsigned int ch,
                                                unsigned int k) {
    s6_conv_state_update_impl<float>(x, ldx, state, batch, seqlen, ch, k);
}
extern "C" __global__ void s6_conv_state_update_x16(const unsigned short* __restrict__ x, unsigned int ldx,
                                                    float* state, unsigned int batch, unsigned int seqlen,
                                                    unsigned int ch, unsigned int k) {
    s6_conv_state_update_impl<unsigned short>(x, ldx, state, batch, seqlen, ch, k);
}
