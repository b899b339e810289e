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

#define S6_GEMV_WARPS 8

// The end of both kernels: warp shuffles reduce every lane's R x NC partial sums, the group's
// warps meet in shared memory, and the group's first warp writes (plus bias) the columns below n.
template <int R, int NC>
__device__ __forceinline__ void s6_gemv_store(float (&acc)[NC][R], float (*part)[NC * R], unsigned int warp,
                                              unsigned int lane, unsigned int s, unsigned int split,
                                              unsigned long long j0, const float* __restrict__ bias,
                                              float* __restrict__ out, unsigned int n) {
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
            if (bias != nullptr) v += bias[j];
            out[(unsigned long long)r * n + j] = v;
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

template <int R, int NC>
__device__ __forceinline__ void s6_gemv_impl(const float* __restrict__ x, unsigned int ld,
                                             const float* __restrict__ w, const float* __restrict__ bias,
                                             float* __restrict__ out, unsigned int n, unsigned int k,
                                             unsigned int split, unsigned int vec) {
    __shared__ float part[S6_GEMV_WARPS][NC * R];
    const unsigned int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned int s;
    const float* wr[NC];
    const unsigned long long j0 = s6_gemv_rows<float, NC>(w, n, k, split, warp, s, wr);
    float acc[NC][R] = {};

    const unsigned int t = s * 32 + lane, stride = split * 32;
    if (vec) {
        const unsigned int k4 = k >> 2;
#pragma unroll 4
        for (unsigned int i = t; i < k4; i += stride) {
            float4 wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(reinterpret_cast<const float4*>(wr[c]) + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 xv = __ldg(reinterpret_cast<const float4*>(x + (unsigned long long)r * ld) + i);
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    acc[c][r] = fmaf(wv[c].x, xv.x, acc[c][r]);
                    acc[c][r] = fmaf(wv[c].y, xv.y, acc[c][r]);
                    acc[c][r] = fmaf(wv[c].z, xv.z, acc[c][r]);
                    acc[c][r] = fmaf(wv[c].w, xv.w, acc[c][r]);
                }
            }
        }
    } else {
#pragma unroll 4
        for (unsigned int i = t; i < k; i += stride) {
            float wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(wr[c] + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float xv = __ldg(x + (unsigned long long)r * ld + i);
#pragma unroll
                for (int c = 0; c < NC; ++c) acc[c][r] = fmaf(wv[c], xv, acc[c][r]);
            }
        }
    }

    s6_gemv_store<R, NC>(acc, part, warp, lane, s, split, j0, bias, out, n);
}

// One entry point per row count R (1..8); NC = 1 column per group up to 4 rows, 2 above (halves
// the x reads per weight byte, which otherwise load the L1 as hard as the weights load DRAM).
// Block: S6_GEMV_WARPS * 32 threads; grid: ceil(n / (NC * S6_GEMV_WARPS / split)) blocks.
#define S6_GEMV_ENTRY(R, NC)                                                                                    \
    extern "C" __global__ void __launch_bounds__(S6_GEMV_WARPS * 32)                                           \
        s6_gemv_r##R(const float* __restrict__ x, unsigned int ld, const float* __restrict__ w,                \
                     const float* __restrict__ bias, float* __restrict__ out, unsigned int n, unsigned int k,  \
                     unsigned int split, unsigned int vec) {                                                   \
        S6_PDL_ENTRY();    \
        s6_gemv_impl<R, NC>(x, ld, w, bias, out, n, k, split, vec);                                            \
    }

S6_GEMV_ENTRY(1, 1)
S6_GEMV_ENTRY(2, 1)
S6_GEMV_ENTRY(3, 1)
S6_GEMV_ENTRY(4, 1)
S6_GEMV_ENTRY(5, 2)
S6_GEMV_ENTRY(6, 2)
S6_GEMV_ENTRY(7, 2)
S6_GEMV_ENTRY(8, 2)

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

template <int R, int NC>
__device__ __forceinline__ void s6_gemv_bf16_impl(const float* __restrict__ x, unsigned int ld,
                                                  const unsigned short* __restrict__ w,
                                                  const float* __restrict__ bias, float* __restrict__ out,
                                                  unsigned int n, unsigned int k, unsigned int split,
                                                  unsigned int vec) {
    __shared__ float part[S6_GEMV_WARPS][NC * R];
    const unsigned int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned int s;
    const unsigned short* wr[NC];
    const unsigned long long j0 = s6_gemv_rows<unsigned short, NC>(w, n, k, split, warp, s, wr);
    float acc[NC][R] = {};

    const unsigned int t = s * 32 + lane, stride = split * 32;
    if (vec == 2) {
        const unsigned int k8 = k >> 3;
#pragma unroll 2
        for (unsigned int i = t; i < k8; i += stride) {
            uint4 wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(reinterpret_cast<const uint4*>(wr[c]) + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4* xr = reinterpret_cast<const float4*>(x + (unsigned long long)r * ld) + 2 * i;
                const float4 xa = __ldg(xr), xb = __ldg(xr + 1);
                const float x0 = s6_rbf16(xa.x), x1 = s6_rbf16(xa.y), x2 = s6_rbf16(xa.z), x3 = s6_rbf16(xa.w),
                            x4 = s6_rbf16(xb.x), x5 = s6_rbf16(xb.y), x6 = s6_rbf16(xb.z), x7 = s6_rbf16(xb.w);
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    float a = acc[c][r];
                    a = fmaf(s6_bf16_lo(wv[c].x), x0, a);
                    a = fmaf(s6_bf16_hi(wv[c].x), x1, a);
                    a = fmaf(s6_bf16_lo(wv[c].y), x2, a);
                    a = fmaf(s6_bf16_hi(wv[c].y), x3, a);
                    a = fmaf(s6_bf16_lo(wv[c].z), x4, a);
                    a = fmaf(s6_bf16_hi(wv[c].z), x5, a);
                    a = fmaf(s6_bf16_lo(wv[c].w), x6, a);
                    a = fmaf(s6_bf16_hi(wv[c].w), x7, a);
                    acc[c][r] = a;
                }
            }
        }
    } else if (vec == 1) {
        const unsigned int k4 = k >> 2;
#pragma unroll 4
        for (unsigned int i = t; i < k4; i += stride) {
            uint2 wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = __ldg(reinterpret_cast<const uint2*>(wr[c]) + i);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 xv = __ldg(reinterpret_cast<const float4*>(x + (unsigned long long)r * ld) + i);
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
#pragma unroll 4
        for (unsigned int i = t; i < k; i += stride) {
            float wv[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) wv[c] = s6_bf16_to_f32(__ldg(wr[c] + i));
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float xv = s6_rbf16(__ldg(x + (unsigned long long)r * ld + i));
#pragma unroll
                for (int c = 0; c < NC; ++c) acc[c][r] = fmaf(wv[c], xv, acc[c][r]);
            }
        }
    }
    s6_gemv_store<R, NC>(acc, part, warp, lane, s, split, j0, bias, out, n);
}

#define S6_GEMV_BF16_ENTRY(R, NC)                                                                               \
    extern "C" __global__ void __launch_bounds__(S6_GEMV_WARPS * 32)                                           \
        s6_gemv_bf16_r##R(const float* __restrict__ x, unsigned int ld, const unsigned short* __restrict__ w,  \
                          const float* __restrict__ bias, float* __restrict__ out, unsigned int n,             \
                          unsigned int k, unsigned int split, unsigned int vec) {                              \
        S6_PDL_ENTRY();    \
        s6_gemv_bf16_impl<R, NC>(x, ld, w, bias, out, n, k, split, vec);                                       \
    }

S6_GEMV_BF16_ENTRY(1, 1)
S6_GEMV_BF16_ENTRY(2, 1)
S6_GEMV_BF16_ENTRY(3, 1)
S6_GEMV_BF16_ENTRY(4, 1)
S6_GEMV_BF16_ENTRY(5, 2)
S6_GEMV_BF16_ENTRY(6, 2)
S6_GEMV_BF16_ENTRY(7, 2)
S6_GEMV_BF16_ENTRY(8, 2)
