// Training kernels of the CUDA backend: column sums (bias / broadcast-parameter gradients),
// RMSNorm backward, embedding backward, softmax cross-entropy, sum of squares, fused AdamW, and
// the attention-baseline ops (RoPE, causal attention forward/backward, SwiGLU).
// Layouts as in the Backend trait (crates/s6/src/backend/mod.rs): row-major, rows are tokens;
// views are passed as a pointer already advanced by the view's offset plus its row stride `ld`.

#define S6_NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float s6_sigmoid_t(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float s6_warp_sum_f(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float s6_warp_max_f(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ double s6_warp_sum_d(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sum of a double over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ double s6_block_sum_d(double v, double* scratch /* [33] */) {
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    v = s6_warp_sum_d(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double w = lane < nwarps ? scratch[lane] : 0.0;
        w = s6_warp_sum_d(w);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    return scratch[32];
}

// Max of a float over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float s6_block_max_f(float v, float* scratch /* [33] */) {
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    v = s6_warp_max_f(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? scratch[lane] : S6_NEG_INF;
        w = s6_warp_max_f(w);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    return scratch[32];
}

// Column sums in two passes, deterministic (fixed chunks, fixed order; f64 sums):
// s6_col_sums_part: part[chunk, j] = sum over rows r of the chunk (chunk_rows rows from
// chunk * chunk_rows) of src[r * ld + j] (ld = 0: the same row every time). Grid (ceil(n / 32),
// chunks), block (32, 8): threadIdx.x picks the column, threadIdx.y strides over the chunk's rows.
extern "C" __global__ void s6_col_sums_part(const float* __restrict__ src, unsigned int ld, unsigned int rows,
                                            unsigned int n, unsigned int chunk_rows, double* __restrict__ part) {
    S6_PDL_ENTRY();
    __shared__ double acc[8][33];
    const unsigned int j = blockIdx.x * 32 + threadIdx.x;
    const unsigned int r0 = blockIdx.y * chunk_rows;
    const unsigned int r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    double s = 0.0;
    if (j < n) {
        for (unsigned int r = r0 + threadIdx.y; r < r1; r += 8) s += (double)src[(unsigned long long)r * ld + j];
    }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        double t = 0.0;
        for (int y = 0; y < 8; y++) t += acc[y][threadIdx.x];
        part[(unsigned long long)blockIdx.y * n + j] = t;
    }
}

// dst[j] += sum over chunks c of part[c, j], in a fixed order (deterministic): thread row y of a
// (32, 16) block sums chunks y, y + 16, ... (independent loads, in flight together), then row 0
// adds the 16 partial sums in order. Grid ceil(n / 32). (One thread per column summing every
// chunk in turn took 35 µs for a norm weight's 768 columns at 130M: 3 blocks, a chain of
// dependent loads; run 76.)
extern "C" __global__ void __launch_bounds__(512) s6_col_sums_finish(const double* __restrict__ part, unsigned int chunks,
                                                                     unsigned int n, float* __restrict__ dst) {
    S6_PDL_ENTRY();
    __shared__ double acc[16][33];
    const unsigned int j = blockIdx.x * 32 + threadIdx.x;
    double t = 0.0;
    if (j < n) {
#pragma unroll 4
        for (unsigned int c = threadIdx.y; c < chunks; c += 16) t += part[(unsigned long long)c * n + j];
    }
    acc[threadIdx.y][threadIdx.x] = t;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        double s = 0.0;
#pragma unroll
        for (int y = 0; y < 16; y++) s += acc[y][threadIdx.x];
        dst[j] += (float)s;
    }
}

// RMSNorm backward: r = rsqrt(mean(x²) + eps), dres += r·(g·w) − x·r³·mean((g·w)·x) and
// part[chunk, i] = Σ over the chunk's rows of g_i·x_i·r (f64; s6_col_sums_finish then adds the
// chunks in order into dweight). One block of S6_NORM_WARPS warps per chunk of chunk_rows rows,
// in batches of S6_NORM_WARPS rows: first each warp reduces one row (ss, dot in f64, shuffles),
// then each thread walks its own columns down the batch, so that the dweight terms of a column
// are summed by one thread in row order (deterministic) and no [rows, dim] scratch is needed. The
// second walk re-reads the batch's x and dy just read by the first, from L1/L2, not DRAM.
// acc: dim doubles of dynamic shared memory when use_shared, else the block's own part row
// (dims too large for shared memory); each column is touched only by the thread that owns it.
// dres16, when not null, gets the new dres rounded to bf16 (a copy at the same indices, for the
// next block's out_proj backward products: cuda/bf16.rs activation copies).
#define S6_NORM_WARPS 8

__device__ __forceinline__ bool s6_aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

extern "C" __global__ void __launch_bounds__(32 * S6_NORM_WARPS)
    s6_rmsnorm_bwd(const float* __restrict__ x_all, const float* __restrict__ w, const float* __restrict__ dy_all,
                   float* __restrict__ dres_all, unsigned short* __restrict__ dres16, double* __restrict__ part,
                   unsigned int rows, unsigned int dim, unsigned int chunk_rows, float eps, unsigned int use_shared) {
    S6_PDL_ENTRY();
    S6_DYNAMIC_SHARED(double, acc_shared);
    __shared__ float row_r[S6_NORM_WARPS], row_coef[S6_NORM_WARPS];
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned int r0 = blockIdx.x * chunk_rows;
    const unsigned int r1 = min(r0 + chunk_rows, rows);
    double* acc = use_shared ? acc_shared : part + (unsigned long long)blockIdx.x * dim;
    // float4 accesses when every row starts 16-byte aligned (dim % 4 == 0 and aligned bases).
    const bool vec = dim % 4 == 0 && s6_aligned16(x_all) && s6_aligned16(dy_all) && s6_aligned16(dres_all) &&
                     s6_aligned16(w);
    // A thread owns columns 4·q .. 4·q + 3 (vec) or column q, for q = threadIdx.x + k·blockDim.x.
    const unsigned int groups = vec ? dim / 4 : dim;
    for (unsigned int q = threadIdx.x; q < groups; q += blockDim.x) {
        if (vec) {
            for (int c = 0; c < 4; c++) acc[4 * q + c] = 0.0;
        } else {
            acc[q] = 0.0;
        }
    }
    for (unsigned int b0 = r0; b0 < r1; b0 += S6_NORM_WARPS) {
        const unsigned int row = b0 + warp;
        if (row < r1) {
            const unsigned long long base = (unsigned long long)row * dim;
            double ss = 0.0, dot = 0.0;
            if (vec) {
                const float4* x4 = (const float4*)(x_all + base);
                const float4* dy4 = (const float4*)(dy_all + base);
                const float4* w4 = (const float4*)w;
#pragma unroll 4
                for (unsigned int q = lane; q < groups; q += 32) {
                    const float4 xv = x4[q], gv = dy4[q], wv = w4[q];
                    ss += (double)xv.x * (double)xv.x + (double)xv.y * (double)xv.y;
                    ss += (double)xv.z * (double)xv.z + (double)xv.w * (double)xv.w;
                    dot += (double)(gv.x * wv.x) * (double)xv.x + (double)(gv.y * wv.y) * (double)xv.y;
                    dot += (double)(gv.z * wv.z) * (double)xv.z + (double)(gv.w * wv.w) * (double)xv.w;
                }
            } else {
                const float* x = x_all + base;
                const float* dy = dy_all + base;
#pragma unroll 4
                for (unsigned int i = lane; i < dim; i += 32) {
                    const float xi = x[i];
                    ss += (double)xi * (double)xi;
                    dot += (double)(dy[i] * w[i]) * (double)xi;
                }
            }
            ss = s6_warp_sum_d(ss);
            dot = s6_warp_sum_d(dot);
            if (lane == 0) {
                const double r = 1.0 / sqrt(ss / (double)dim + (double)eps);
                const double mean = dot / (double)dim;
                row_r[warp] = (float)r;
                row_coef[warp] = (float)(r * r * r * mean);
            }
        }
        __syncthreads();
        const unsigned int nb = min((unsigned int)S6_NORM_WARPS, r1 - b0);
        const unsigned long long base0 = (unsigned long long)b0 * dim;
        for (unsigned int q = threadIdx.x; q < groups; q += blockDim.x) {
            if (vec) {
                const float4 wv = ((const float4*)w)[q];
                double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
                for (unsigned int k = 0; k < nb; k++) {
                    const unsigned long long at = (base0 + (unsigned long long)k * dim) / 4 + q;
                    const float rf = row_r[k], coef = row_coef[k];
                    const float4 xv = ((const float4*)x_all)[at], gv = ((const float4*)dy_all)[at];
                    float4 dv = ((float4*)dres_all)[at];
                    dv.x += rf * (gv.x * wv.x) - xv.x * coef;
                    dv.y += rf * (gv.y * wv.y) - xv.y * coef;
                    dv.z += rf * (gv.z * wv.z) - xv.z * coef;
                    dv.w += rf * (gv.w * wv.w) - xv.w * coef;
                    ((float4*)dres_all)[at] = dv;
                    if (dres16 != nullptr)
                        reinterpret_cast<uint2*>(dres16)[at] =
                            make_uint2(s6_bf16_pack2(dv.x, dv.y), s6_bf16_pack2(dv.z, dv.w));
                    a0 += (double)(gv.x * xv.x * rf);
                    a1 += (double)(gv.y * xv.y * rf);
                    a2 += (double)(gv.z * xv.z * rf);
                    a3 += (double)(gv.w * xv.w * rf);
                }
                acc[4 * q] += a0;
                acc[4 * q + 1] += a1;
                acc[4 * q + 2] += a2;
                acc[4 * q + 3] += a3;
            } else {
                const float wi = w[q];
                double a = 0.0;
                for (unsigned int k = 0; k < nb; k++) {
                    const unsigned long long at = base0 + (unsigned long long)k * dim + q;
                    const float rf = row_r[k], coef = row_coef[k];
                    const float xi = x_all[at], g = dy_all[at];
                    const float dv = dres_all[at] + (rf * (g * wi) - xi * coef);
                    dres_all[at] = dv;
                    if (dres16 != nullptr) dres16[at] = s6_f32_to_bf16(dv);
                    a += (double)(g * xi * rf);
                }
                acc[q] += a;
            }
        }
        __syncthreads();  // row_r / row_coef are rewritten by the next batch
    }
    if (use_shared) {
        __syncthreads();  // in the vec layout a column's owner is not the thread that copies it
        for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x)
            part[(unsigned long long)blockIdx.x * dim + i] = acc_shared[i];
    }
}

// dtable[ids[i], c] += dout[i, c], without atomics so that training is reproducible bit for bit:
// the host groups the rows by id (`order[seg[k] .. seg[k + 1]]` are the rows of id `uid[k]`, in
// input order), and one thread adds a column's rows of one id in that order, as the CPU backend
// does. Segments beyond the grid's height are taken in strides of it.
extern "C" __global__ void s6_embedding_bwd(const unsigned int* __restrict__ seg, const unsigned int* __restrict__ uid,
                                            const unsigned int* __restrict__ order, const float* __restrict__ dout,
                                            float* __restrict__ dtable, unsigned int nseg, unsigned int dim) {
    S6_PDL_ENTRY();
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    for (unsigned int k = blockIdx.y; k < nseg; k += gridDim.y) {
        float* row = dtable + (unsigned long long)uid[k] * dim + c;
        float acc = *row;
        for (unsigned int j = seg[k]; j < seg[k + 1]; j++) acc += dout[(unsigned long long)order[j] * dim + c];
        *row = acc;
    }
}

// One element of a running (max, sum of exp(v − max)); -inf values add nothing.
__device__ __forceinline__ void s6_lse_add(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else if (v > S6_NEG_INF) {
        s += expf(v - m);
    }
}

__device__ __forceinline__ void s6_lse_add4(float& m, float& s, float4 v) {
    s6_lse_add(m, s, v.x);
    s6_lse_add(m, s, v.y);
    s6_lse_add(m, s, v.z);
    s6_lse_add(m, s, v.w);
}

// scale·(softmax − onehot) of element i with value v (f = scale / Σ exp).
__device__ __forceinline__ float s6_ce_grad(float v, unsigned int i, float m, float f, unsigned int t, float scale) {
    float g = expf(v - m) * f;
    if (i == t) g -= scale;
    return g;
}

// Float4 groups a thread has in flight at once in the cross-entropy passes (memory-level
// parallelism: the row is streamed from DRAM).
#define S6_CE_UNROLL 4

// Stores of the cross-entropy's gradient: f32, or rounded to bf16 (round to nearest even).
__device__ __forceinline__ void s6_ce_put(float* d, unsigned int i, float g) { d[i] = g; }
__device__ __forceinline__ void s6_ce_put(unsigned short* d, unsigned int i, float g) { d[i] = s6_f32_to_bf16(g); }
__device__ __forceinline__ void s6_ce_put4(float* d, unsigned int g, float4 v) { reinterpret_cast<float4*>(d)[g] = v; }
__device__ __forceinline__ void s6_ce_put4(unsigned short* d, unsigned int g, float4 v) {
    reinterpret_cast<uint2*>(d)[g] = make_uint2(s6_bf16_pack2(v.x, v.y), s6_bf16_pack2(v.z, v.w));
}

// Softmax cross-entropy, one block per row (block size a multiple of 32, at most 1024). Writes
// dlogits = scale·(softmax − onehot) (a zero row when the target is 0xffffffff) and the row's
// loss logsumexp(x) − x[t] (0 when ignored) into losses[row].
// Memory-bound: the row is read as float4 where x and dlogits rows have the same offset mod 16
// bytes (a scalar head up to the first aligned element, float4 groups, a scalar tail; all scalar
// otherwise). Pass 1 keeps a running max and sum of exponentials per thread (combined over the
// block, the sum in f64); pass 2 writes the gradient. cache_row != 0: pass 1 also keeps the row in
// dynamic shared memory (vocab + 3 floats, element i at i + the row's float offset mod 4, so that
// the groups stay 16-byte aligned) and pass 2 reads it from there: DRAM is read once. Otherwise
// pass 2 reads the row again from global memory. TD: dlogits' type: float, or bf16 bits where
// the gradient is held in bf16 alone (s6_cross_entropy_d16: the head's backward products read
// bf16 inputs, which they would otherwise cast from the f32 values, rounded the same way).
template <typename TD>
__device__ __forceinline__ void s6_cross_entropy_impl(const float* __restrict__ logits,
                                                      const unsigned int* __restrict__ targets, TD* __restrict__ dlogits,
                                                      double* __restrict__ losses, unsigned int vocab, float scale,
                                                      unsigned int cache_row) {
    S6_PDL_ENTRY();
    S6_DYNAMIC_SHARED(float4, row_cache4);
    float* row_cache = (float*)row_cache4;
    __shared__ float fscratch[33];
    __shared__ double dscratch[33];
    const unsigned long long base = (unsigned long long)blockIdx.x * vocab;
    const float* x = logits + base;
    TD* d = dlogits + base;
    const unsigned int t = targets[blockIdx.x];
    const unsigned int tid = threadIdx.x, bs = blockDim.x;
    const unsigned int mis = (unsigned int)(((unsigned long long)x / 4) & 3);
    // Groups of 4 need x's and d's rows at the same element offset mod 4 (16 bytes of x; 16 or 8 of d).
    const bool vec = mis == (unsigned int)(((unsigned long long)d / sizeof(TD)) & 3);
    // Row split: [0, head) scalar, [head, tail) float4 groups, [tail, vocab) scalar.
    const unsigned int head = vec ? min((4 - mis) & 3, vocab) : vocab;
    const unsigned int groups = vec ? (vocab - head) / 4 : 0;
    const unsigned int tail = head + 4 * groups;
    const float4* x4 = (const float4*)(x + head);
    TD* dh = d + head;  // group g: elements dh[4g .. 4g + 4), stored by s6_ce_put4
    float4* c4 = (float4*)(row_cache + head + mis);
    if (t == 0xffffffffu) {
        const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (unsigned int i = tid; i < head; i += bs) s6_ce_put(d, i, 0.0f);
        for (unsigned int g = tid; g < groups; g += bs) s6_ce_put4(dh, g, z);
        for (unsigned int i = tail + tid; i < vocab; i += bs) s6_ce_put(d, i, 0.0f);
        if (tid == 0) losses[blockIdx.x] = 0.0;
        return;
    }
    float mt = S6_NEG_INF, st = 0.0f;
    for (unsigned int i = tid; i < head; i += bs) {
        const float v = x[i];
        if (cache_row) row_cache[i + mis] = v;
        s6_lse_add(mt, st, v);
    }
    unsigned int g = tid;
    for (; g + (S6_CE_UNROLL - 1) * bs < groups; g += S6_CE_UNROLL * bs) {
        float4 v[S6_CE_UNROLL];
#pragma unroll
        for (int u = 0; u < S6_CE_UNROLL; u++) v[u] = x4[g + u * bs];
#pragma unroll
        for (int u = 0; u < S6_CE_UNROLL; u++) {
            if (cache_row) c4[g + u * bs] = v[u];
            s6_lse_add4(mt, st, v[u]);
        }
    }
    for (; g < groups; g += bs) {
        const float4 v = x4[g];
        if (cache_row) c4[g] = v;
        s6_lse_add4(mt, st, v);
    }
    for (unsigned int i = tail + tid; i < vocab; i += bs) {
        const float v = x[i];
        if (cache_row) row_cache[i + mis] = v;
        s6_lse_add(mt, st, v);
    }
    // The block reductions' barriers also make the cached row visible to every thread.
    const float m = s6_block_max_f(mt, fscratch);
    double s = mt == S6_NEG_INF ? 0.0 : (double)st * (double)expf(mt - m);
    s = s6_block_sum_d(s, dscratch);
    const float f = (float)((double)scale / s);
    // Pass 2 from the cache (shared) or the row again (global).
    const float* src = cache_row ? row_cache + mis : x;
    const float4* src4 = cache_row ? (const float4*)c4 : x4;
    for (unsigned int i = tid; i < head; i += bs) s6_ce_put(d, i, s6_ce_grad(src[i], i, m, f, t, scale));
    g = tid;
    for (; g + (S6_CE_UNROLL - 1) * bs < groups; g += S6_CE_UNROLL * bs) {
        float4 v[S6_CE_UNROLL];
#pragma unroll
        for (int u = 0; u < S6_CE_UNROLL; u++) v[u] = src4[g + u * bs];
#pragma unroll
        for (int u = 0; u < S6_CE_UNROLL; u++) {
            const unsigned int i = head + 4 * (g + u * bs);
            s6_ce_put4(dh, g + u * bs,
                       make_float4(s6_ce_grad(v[u].x, i, m, f, t, scale), s6_ce_grad(v[u].y, i + 1, m, f, t, scale),
                                   s6_ce_grad(v[u].z, i + 2, m, f, t, scale), s6_ce_grad(v[u].w, i + 3, m, f, t, scale)));
        }
    }
    for (; g < groups; g += bs) {
        const float4 v = src4[g];
        const unsigned int i = head + 4 * g;
        s6_ce_put4(dh, g,
                   make_float4(s6_ce_grad(v.x, i, m, f, t, scale), s6_ce_grad(v.y, i + 1, m, f, t, scale),
                               s6_ce_grad(v.z, i + 2, m, f, t, scale), s6_ce_grad(v.w, i + 3, m, f, t, scale)));
    }
    for (unsigned int i = tail + tid; i < vocab; i += bs) s6_ce_put(d, i, s6_ce_grad(src[i], i, m, f, t, scale));
    if (tid == 0) losses[blockIdx.x] = (double)m + log(s) - (double)x[t];
}

extern "C" __global__ void __launch_bounds__(1024)
    s6_cross_entropy(const float* __restrict__ logits, const unsigned int* __restrict__ targets,
                     float* __restrict__ dlogits, double* __restrict__ losses, unsigned int vocab, float scale,
                     unsigned int cache_row) {
    s6_cross_entropy_impl<float>(logits, targets, dlogits, losses, vocab, scale, cache_row);
}
extern "C" __global__ void __launch_bounds__(1024)
    s6_cross_entropy_d16(const float* __restrict__ logits, const unsigned int* __restrict__ targets,
                         unsigned short* __restrict__ dlogits, double* __restrict__ losses, unsigned int vocab,
                         float scale, unsigned int cache_row) {
    s6_cross_entropy_impl<unsigned short>(logits, targets, dlogits, losses, vocab, scale, cache_row);
}


// Sum of v[0..n) by one block of up to 1024 threads (f64, fixed order); every thread gets it.
__device__ __forceinline__ double s6_sum_f64_block(const double* __restrict__ v, unsigned int n,
                                                   double* scratch /* [33] */) {
    double s = 0.0;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    return s6_block_sum_d(s, scratch);
}

// out[0] = sum of v[0..n) (one block of up to 1024 threads, f64, fixed order).
extern "C" __global__ void s6_sum_f64(const double* __restrict__ v, unsigned int n, double* __restrict__ out) {
    S6_PDL_ENTRY();
    __shared__ double scratch[33];
    const double s = s6_sum_f64_block(v, n, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// Sum of squares (f64) of block `b` of `nb` blocks' grid-stride share of x[0..n); every thread
// gets it (s6_sum_squares_many).
__device__ __forceinline__ double s6_sum_squares_block(const float* __restrict__ x, unsigned long long n,
                                                       unsigned int b, unsigned int nb, double* scratch) {
    double s = 0.0;
    unsigned long long i = (unsigned long long)b * blockDim.x + threadIdx.x;
    for (; i < n; i += (unsigned long long)nb * blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
    }
    return s6_block_sum_d(s, scratch);
}

// Multi-tensor tables: row t of `tab` holds `width` u64 fields, field S6_MT_FIRST the first
// global block of tensor t and S6_MT_BLOCKS its block count (blocks are numbered tensor after
// tensor). The tensor of block b: the last t with first <= b (tensors of no blocks share their
// first block with the next one, so the last such t is the one that owns b).
#define S6_MT_FIRST 2
#define S6_MT_BLOCKS 3

__device__ __forceinline__ unsigned int s6_mt_tensor(const unsigned long long* __restrict__ tab, unsigned int width,
                                                     unsigned int tensors, unsigned long long b) {
    unsigned int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        const unsigned int mid = lo + (hi - lo + 1) / 2;
        if (tab[(unsigned long long)mid * width + S6_MT_FIRST] <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Sum of squares of many tensors: tab rows (width 4) = {x pointer, n, first block, blocks}, the
// blocks of tensor t grid-striding over it (256 threads each).
// partial[b] = the partial sum of block b: partial[first .. first + blocks) of tensor t equal
// that tensor's partial sums.
extern "C" __global__ void s6_sum_squares_many(const unsigned long long* __restrict__ tab, unsigned int tensors,
                                               double* __restrict__ partial) {
    S6_PDL_ENTRY();
    __shared__ double scratch[33];
    const unsigned int t = s6_mt_tensor(tab, 4, tensors, blockIdx.x);
    const unsigned long long* row = tab + (unsigned long long)t * 4;
    const float* x = (const float*)row[0];
    const unsigned int b = (unsigned int)(blockIdx.x - row[S6_MT_FIRST]);
    const double s = s6_sum_squares_block(x, row[1], b, (unsigned int)row[S6_MT_BLOCKS], scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// totals[t] = sum of tensor t's partials (one block of 1024 threads per tensor, as s6_sum_f64
// adds one tensor's partials; tab as in s6_sum_squares_many).
extern "C" __global__ void s6_sum_f64_many(const double* __restrict__ partial,
                                           const unsigned long long* __restrict__ tab,
                                           double* __restrict__ totals) {
    S6_PDL_ENTRY();
    __shared__ double scratch[33];
    const unsigned long long* row = tab + (unsigned long long)blockIdx.x * 4;
    const double s = s6_sum_f64_block(partial + row[S6_MT_FIRST], (unsigned int)row[S6_MT_BLOCKS], scratch);
    if (threadIdx.x == 0) totals[blockIdx.x] = s;
}

// out[0] = ((0 + v[0]) + v[1]) + ... + v[n-1], one thread: the order a host loop adds them in.
extern "C" __global__ void s6_sum_in_order(const double* __restrict__ v, unsigned int n, double* __restrict__ out) {
    S6_PDL_ENTRY();
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (unsigned int i = 0; i < n; i++) s += v[i];
    out[0] = s;
}

// dst = -exp(src), in f64 and rounded once: the correctly rounded -expf (the host's f32 exp
// gives the same value but in rare halfway cases).
extern "C" __global__ void s6_neg_exp(const float* __restrict__ src, float* __restrict__ dst, unsigned long long n) {
    S6_PDL_WAIT();  // writes A, a weight of the decoding step: no early trigger (prelude.cu)
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (unsigned long long)gridDim.x * blockDim.x) dst[i] = -(float)exp((double)src[i]);
}

// dst += x * y with the product rounded first (no FMA contraction): the CPU's bits.
extern "C" __global__ void s6_add_product(float* __restrict__ dst, const float* __restrict__ x,
                                          const float* __restrict__ y, unsigned long long n) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (unsigned long long)gridDim.x * blockDim.x) dst[i] = __fadd_rn(dst[i], __fmul_rn(x[i], y[i]));
}

// One AdamW element (PyTorch semantics), the one body of s6_adamw and s6_adamw_many.
__device__ __forceinline__ void s6_adamw_elem(float* __restrict__ p, const float* __restrict__ grad,
                                              float* __restrict__ m, float* __restrict__ v, unsigned long long i,
                                              float b1, float b2, float eps, float gs, float step_size,
                                              float bc2_sqrt, float decay) {
    // Explicitly rounded operations, no contraction into FMAs: the same f32 operations in the same
    // order as the CPU backend, so every caller (one tensor, many tensors) and the CPU agree bit
    // for bit, whatever the compiler would fuse.
    const float c1 = __fsub_rn(1.0f, b1), c2 = __fsub_rn(1.0f, b2);
    const float g = __fmul_rn(grad[i], gs);
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(c1, g));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(c2, __fmul_rn(g, g)));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(step_size, __fdiv_rn(mi, denom)));
}

// One AdamW step (PyTorch semantics; the scalars are precomputed on the host as the CPU does).
extern "C" __global__ void s6_adamw(float* __restrict__ p, const float* __restrict__ grad, float* __restrict__ m,
                                    float* __restrict__ v, unsigned long long n, float b1, float b2, float eps,
                                    float gs, float step_size, float bc2_sqrt, float decay) {
    S6_PDL_WAIT();  // writes weights: no early trigger (prelude.cu)
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
        s6_adamw_elem(p, grad, m, v, i, b1, b2, eps, gs, step_size, bc2_sqrt, decay);
}

// AdamW over many tensors in one launch. tab rows (width S6_ADAMW_W) = {n, unused, first block,
// blocks, param, grad, m, v pointers, then the bits of b1, b2, eps, gs, step_size, bc2_sqrt,
// decay as f32}; each tensor's blocks stride over it (256 threads each). Elementwise, so the
// values are those of s6_adamw whatever the grid.
#define S6_ADAMW_W 15
extern "C" __global__ void s6_adamw_many(const unsigned long long* __restrict__ tab, unsigned int tensors) {
    S6_PDL_WAIT();  // writes weights: no early trigger (prelude.cu)
    const unsigned int t = s6_mt_tensor(tab, S6_ADAMW_W, tensors, blockIdx.x);
    const unsigned long long* row = tab + (unsigned long long)t * S6_ADAMW_W;
    const unsigned long long n = row[0];
    const unsigned long long nb = row[S6_MT_BLOCKS];
    float* p = (float*)row[4];
    const float* g = (const float*)row[5];
    float* m = (float*)row[6];
    float* v = (float*)row[7];
    const float b1 = __uint_as_float((unsigned int)row[8]), b2 = __uint_as_float((unsigned int)row[9]);
    const float eps = __uint_as_float((unsigned int)row[10]), gs = __uint_as_float((unsigned int)row[11]);
    const float step_size = __uint_as_float((unsigned int)row[12]);
    const float bc2_sqrt = __uint_as_float((unsigned int)row[13]), decay = __uint_as_float((unsigned int)row[14]);
    unsigned long long i = (blockIdx.x - row[S6_MT_FIRST]) * blockDim.x + threadIdx.x;
    for (; i < n; i += nb * blockDim.x) s6_adamw_elem(p, g, m, v, i, b1, b2, eps, gs, step_size, bc2_sqrt, decay);
}

// RoPE in place (HF Llama rotate_half). x: [rows, n_head * head_dim] with row stride ld. One
// thread per (row, head, i < head_dim / 2). The angle is the f32 product p · inv_freq[i]; its sine
// and cosine are evaluated in f64. sign = -1: the inverse rotation (backward).
extern "C" __global__ void s6_rope(float* __restrict__ x, unsigned int ld, const float* __restrict__ inv_freq,
                                   unsigned int rows, unsigned int seqlen, unsigned int n_head,
                                   unsigned int head_dim, unsigned int pos0, float sign) {
    S6_PDL_ENTRY();
    const unsigned int half = head_dim / 2;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long total = (unsigned long long)rows * n_head * half;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int f = (unsigned int)(i % half);
        const unsigned long long rh = i / half;
        const unsigned int h = (unsigned int)(rh % n_head);
        const unsigned int r = (unsigned int)(rh / n_head);
        const float p = (float)(pos0 + r % seqlen);
        const float ang = p * inv_freq[f];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        const float c = (float)cd, s = (float)(sign * sd);
        float* xh = x + (unsigned long long)r * ld + (unsigned long long)h * head_dim;
        const float a = xh[f], b = xh[f + half];
        xh[f] = a * c - b * s;
        xh[f + half] = b * c + a * s;
    }
}

// out = silu(gate) · up; gate, up with row strides, out contiguous.
extern "C" __global__ void s6_swiglu(const float* __restrict__ g, unsigned int ldg, const float* __restrict__ u,
                                     unsigned int ldu, float* __restrict__ out, unsigned int rows, unsigned int cols) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long total = (unsigned long long)rows * cols;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = i / cols, c = i % cols;
        const float x = g[r * ldg + c];
        out[i] = x * s6_sigmoid_t(x) * u[r * ldu + c];
    }
}

// dgate = dout·up·σ(g)·(1 + g·(1 − σ(g))), dup = dout·silu(g); all with their own row strides.
extern "C" __global__ void s6_swiglu_bwd(const float* __restrict__ g, unsigned int ldg, const float* __restrict__ u,
                                         unsigned int ldu, const float* __restrict__ dout, float* __restrict__ dg,
                                         unsigned int lddg, float* __restrict__ du, unsigned int lddu,
                                         unsigned int rows, unsigned int cols) {
    S6_PDL_ENTRY();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long total = (unsigned long long)rows * cols;
    for (; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = i / cols, c = i % cols;
        const float x = g[r * ldg + c], s = s6_sigmoid_t(x), d = dout[i];
        dg[r * lddg + c] = d * u[r * ldu + c] * s * (1.0f + x * (1.0f - s));
        du[r * lddu + c] = d * x * s;
    }
}

// ---------------------------------------------------------------------------------------------
// Causal attention. One warp per (batch, head, position); 4 warps per block; head_dim <= 128
// (each lane holds up to 4 columns: lane, lane + 32, lane + 64, lane + 96). Keys (or queries, in
// the dk/dv kernel) are visited in chunks of 32, one per lane, with an online softmax. Memory is
// linear in seqlen; no seqlen × seqlen matrix exists.
// Index of warp w: t = w % L, bh = w / L, h = bh % H, b = bh / H. lse/delta: [B, H, L].

#define S6_ATT_WARPS 4
#define S6_ATT_MAXD 128

extern "C" __global__ void __launch_bounds__(32 * S6_ATT_WARPS)
    s6_attn_fwd(const float* __restrict__ q, unsigned int ldq, const float* __restrict__ k, unsigned int ldk,
                const float* __restrict__ v, unsigned int ldv, float* __restrict__ out, float* __restrict__ lse,
                unsigned int B, unsigned int L, unsigned int H, unsigned int D, float scale) {
    S6_PDL_ENTRY();
    __shared__ float qs[S6_ATT_WARPS][S6_ATT_MAXD];
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned long long gw = (unsigned long long)blockIdx.x * S6_ATT_WARPS + warp;
    if (gw >= (unsigned long long)B * H * L) return;  // whole warps leave; no block barriers below
    const unsigned int t = (unsigned int)(gw % L);
    const unsigned int bh = (unsigned int)(gw / L);
    const unsigned int h = bh % H, b = bh / H;
    const unsigned long long row = (unsigned long long)b * L + t;
    const unsigned long long seq0 = (unsigned long long)b * L;
    for (unsigned int c = lane; c < D; c += 32) qs[warp][c] = q[row * ldq + (unsigned long long)h * D + c] * scale;
    __syncwarp();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float m = S6_NEG_INF, l = 0.0f;
    for (unsigned int s0 = 0; s0 <= t; s0 += 32) {
        const unsigned int s = s0 + lane;
        float sc = S6_NEG_INF;
        if (s <= t) {
            const float* kr = k + (seq0 + s) * ldk + (unsigned long long)h * D;
            float dot = 0.0f;
            for (unsigned int c = 0; c < D; c++) dot = fmaf(qs[warp][c], kr[c], dot);
            sc = dot;
        }
        const float mnew = fmaxf(m, s6_warp_max_f(sc));  // finite: key s0 <= t is valid
        const float p = s <= t ? expf(sc - mnew) : 0.0f;
        const float corr = expf(m - mnew);               // 0 on the first chunk
        l = l * corr + s6_warp_sum_f(p);
        for (int e = 0; e < 4; e++) acc[e] *= corr;
        const unsigned int nk = min(32u, t - s0 + 1);
        for (unsigned int j = 0; j < nk; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
            const float* vr = v + (seq0 + s0 + j) * ldv + (unsigned long long)h * D;
            for (int e = 0; e < 4; e++) {
                const unsigned int c = lane + 32 * e;
                if (c < D) acc[e] = fmaf(pj, vr[c], acc[e]);
            }
        }
        m = mnew;
    }
    const float inv = 1.0f / l;
    const unsigned long long W = (unsigned long long)H * D;
    for (int e = 0; e < 4; e++) {
        const unsigned int c = lane + 32 * e;
        if (c < D) out[row * W + (unsigned long long)h * D + c] = acc[e] * inv;
    }
    if (lane == 0) lse[gw] = m + logf(l);
}

// delta[b, h, t] = dout[row, head h] · out[row, head h] (both contiguous [rows, H * D]).
extern "C" __global__ void __launch_bounds__(32 * S6_ATT_WARPS)
    s6_attn_bwd_delta(const float* __restrict__ out, const float* __restrict__ dout, float* __restrict__ delta,
                      unsigned int B, unsigned int L, unsigned int H, unsigned int D) {
    S6_PDL_ENTRY();
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned long long gw = (unsigned long long)blockIdx.x * S6_ATT_WARPS + warp;
    if (gw >= (unsigned long long)B * H * L) return;
    const unsigned int t = (unsigned int)(gw % L);
    const unsigned int bh = (unsigned int)(gw / L);
    const unsigned int h = bh % H, b = bh / H;
    const unsigned long long at = ((unsigned long long)b * L + t) * H * D + (unsigned long long)h * D;
    float s = 0.0f;
    for (unsigned int c = lane; c < D; c += 32) s = fmaf(out[at + c], dout[at + c], s);
    s = s6_warp_sum_f(s);
    if (lane == 0) delta[gw] = s;
}

// dq[t] = scale · Σ_{s ≤ t} p_ts (dout_t·v_s − delta_t) k_s, p_ts = exp(scale·q_t·k_s − lse_t).
extern "C" __global__ void __launch_bounds__(32 * S6_ATT_WARPS)
    s6_attn_bwd_dq(const float* __restrict__ q, unsigned int ldq, const float* __restrict__ k, unsigned int ldk,
                   const float* __restrict__ v, unsigned int ldv, const float* __restrict__ dout,
                   const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq,
                   unsigned int lddq, unsigned int B, unsigned int L, unsigned int H, unsigned int D, float scale) {
    S6_PDL_ENTRY();
    __shared__ float qs[S6_ATT_WARPS][S6_ATT_MAXD];
    __shared__ float ds_[S6_ATT_WARPS][S6_ATT_MAXD];
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned long long gw = (unsigned long long)blockIdx.x * S6_ATT_WARPS + warp;
    if (gw >= (unsigned long long)B * H * L) return;
    const unsigned int t = (unsigned int)(gw % L);
    const unsigned int bh = (unsigned int)(gw / L);
    const unsigned int h = bh % H, b = bh / H;
    const unsigned long long row = (unsigned long long)b * L + t;
    const unsigned long long seq0 = (unsigned long long)b * L;
    const unsigned long long W = (unsigned long long)H * D;
    for (unsigned int c = lane; c < D; c += 32) {
        qs[warp][c] = q[row * ldq + (unsigned long long)h * D + c] * scale;
        ds_[warp][c] = dout[row * W + (unsigned long long)h * D + c];
    }
    __syncwarp();
    const float lt = lse[gw], dt = delta[gw];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int s0 = 0; s0 <= t; s0 += 32) {
        const unsigned int s = s0 + lane;
        float g = 0.0f;
        if (s <= t) {
            const float* kr = k + (seq0 + s) * ldk + (unsigned long long)h * D;
            const float* vr = v + (seq0 + s) * ldv + (unsigned long long)h * D;
            float qk = 0.0f, dv = 0.0f;
            for (unsigned int c = 0; c < D; c++) {
                qk = fmaf(qs[warp][c], kr[c], qk);
                dv = fmaf(ds_[warp][c], vr[c], dv);
            }
            g = expf(qk - lt) * (dv - dt);
        }
        const unsigned int nk = min(32u, t - s0 + 1);
        for (unsigned int j = 0; j < nk; j++) {
            const float gj = __shfl_sync(0xffffffffu, g, j);
            const float* kr = k + (seq0 + s0 + j) * ldk + (unsigned long long)h * D;
            for (int e = 0; e < 4; e++) {
                const unsigned int c = lane + 32 * e;
                if (c < D) acc[e] = fmaf(gj, kr[c], acc[e]);
            }
        }
    }
    for (int e = 0; e < 4; e++) {
        const unsigned int c = lane + 32 * e;
        if (c < D) dq[row * lddq + (unsigned long long)h * D + c] = acc[e] * scale;
    }
}

// For key s: dv[s] = Σ_{t ≥ s} p_ts dout_t, dk[s] = scale · Σ_{t ≥ s} p_ts (dout_t·v_s − delta_t) q_t.
extern "C" __global__ void __launch_bounds__(32 * S6_ATT_WARPS)
    s6_attn_bwd_dkv(const float* __restrict__ q, unsigned int ldq, const float* __restrict__ k, unsigned int ldk,
                    const float* __restrict__ v, unsigned int ldv, const float* __restrict__ dout,
                    const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dk,
                    unsigned int lddk, float* __restrict__ dv, unsigned int lddv, unsigned int B, unsigned int L,
                    unsigned int H, unsigned int D, float scale) {
    S6_PDL_ENTRY();
    __shared__ float ks[S6_ATT_WARPS][S6_ATT_MAXD];
    __shared__ float vs[S6_ATT_WARPS][S6_ATT_MAXD];
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned long long gw = (unsigned long long)blockIdx.x * S6_ATT_WARPS + warp;
    if (gw >= (unsigned long long)B * H * L) return;
    const unsigned int s = (unsigned int)(gw % L);
    const unsigned int bh = (unsigned int)(gw / L);
    const unsigned int h = bh % H, b = bh / H;
    const unsigned long long row = (unsigned long long)b * L + s;
    const unsigned long long seq0 = (unsigned long long)b * L;
    const unsigned long long lse0 = (unsigned long long)bh * L;
    const unsigned long long W = (unsigned long long)H * D;
    for (unsigned int c = lane; c < D; c += 32) {
        ks[warp][c] = k[row * ldk + (unsigned long long)h * D + c] * scale;
        vs[warp][c] = v[row * ldv + (unsigned long long)h * D + c];
    }
    __syncwarp();
    float ak[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float av[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int t0 = s; t0 < L; t0 += 32) {
        const unsigned int t = t0 + lane;
        float p = 0.0f, g = 0.0f;
        if (t < L) {
            const float* qr = q + (seq0 + t) * ldq + (unsigned long long)h * D;
            const float* dr = dout + (seq0 + t) * W + (unsigned long long)h * D;
            float qk = 0.0f, dvv = 0.0f;
            for (unsigned int c = 0; c < D; c++) {
                qk = fmaf(qr[c], ks[warp][c], qk);
                dvv = fmaf(dr[c], vs[warp][c], dvv);
            }
            p = expf(qk - lse[lse0 + t]);
            g = p * (dvv - delta[lse0 + t]);
        }
        const unsigned int nq = min(32u, L - t0);
        for (unsigned int j = 0; j < nq; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
            const float gj = __shfl_sync(0xffffffffu, g, j);
            const float* qr = q + (seq0 + t0 + j) * ldq + (unsigned long long)h * D;
            const float* dr = dout + (seq0 + t0 + j) * W + (unsigned long long)h * D;
            for (int e = 0; e < 4; e++) {
                const unsigned int c = lane + 32 * e;
                if (c < D) {
                    av[e] = fmaf(pj, dr[c], av[e]);
                    ak[e] = fmaf(gj, qr[c], ak[e]);
                }
            }
        }
    }
    for (int e = 0; e < 4; e++) {
        const unsigned int c = lane + 32 * e;
        if (c < D) {
            dk[row * lddk + (unsigned long long)h * D + c] = ak[e] * scale;
            dv[row * lddv + (unsigned long long)h * D + c] = av[e];
        }
    }
}
