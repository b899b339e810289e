// bf16 products on the tensor cores for the shapes cuBLAS serves worst: few output columns or a
// short inner dimension at a few hundred rows (decoding's x_proj and dt_proj at large batches;
// the launcher is in cuda/mma.rs). out[rows, n] = x[rows, k] · W[n, k]ᵀ (+ out when `accumulate`):
// x fp32 (row stride ldx), rounded to bf16 as it is loaded (round to nearest even, the value the
// cast kernel would write), W the weight's bf16 copy [n, k], fp32 accumulation, fp32 out (row
// stride ldo). The cast of x and cuBLAS's split-K reduction launch disappear.
//
// A warp computes a tile of 32 rows × 32 columns (2 × 4 mma.sync.m16n8k16 tiles) over `spw`
// consecutive k-steps of 16, in rounds of up to S6_MMA_SPW steps whose fragments it loads at once
// straight from global memory (L2; no shared memory for the operands: per k-step a row of x is 64
// contiguous bytes and a row of W 32, whole sectors), so that it waits for one round trip per
// round, not one per step: the products are small and their time is latency. A block's 8 warps
// are 8 / wk tiles side by side in n, each with wk warps over consecutive ranges of k, whose sums
// are added in shared memory in warp order. Grid x runs over groups of column tiles, y over row
// tiles, z over splits of k (wk · spw steps each). With one split the tile is written to out;
// with several, split s writes its partial tile to part[s] ([rows, n] each) and s6_mma_split_sum
// adds the splits in order: the result is the same on every run. Needs k % 16 == 0, ldx even, x
// 8-byte and W 4-byte aligned, wk in {1, 2, 4, 8} (the launcher checks).

#define S6_MMA_WARPS 8
#define S6_MMA_SPW 4  // k-steps per round of loads

// Two floats rounded to bf16 and packed as one register of an mma fragment (the lower index in
// the lower half).
__device__ __forceinline__ unsigned int s6m_pack(float2 v) {
    return s6_bf16_pack2(v.x, v.y);
}

// d += a · b for one 16 × 8 tile (a: 16 × 16 row-major bf16, b: 16 × 8 column-major bf16).
__device__ __forceinline__ void s6m_mma(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

extern "C" __global__ void __launch_bounds__(32 * S6_MMA_WARPS)
    s6_mma_bf16(const float* __restrict__ x, unsigned int ldx, const unsigned short* __restrict__ w,
                float* __restrict__ out, unsigned int ldo, float* __restrict__ part, unsigned int rows,
                unsigned int n, unsigned int k, unsigned int wk, unsigned int spw, unsigned int accumulate) {
    S6_PDL_ENTRY();
    __shared__ float s_acc[S6_MMA_WARPS][32][32];  // [warp][accumulator][lane]
    const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Fragment coordinates (PTX ISA, mma.m16n8k16): g the row of A / column of B, t the pair of k.
    const unsigned int g = lane >> 2, t = lane & 3;
    // This warp's tile (of the block's S6_MMA_WARPS / wk) and its part of the block's k range.
    const unsigned int tile = warp / wk, kpart = warp % wk;
    const unsigned int m0 = blockIdx.y * 32, n0 = (blockIdx.x * (S6_MMA_WARPS / wk) + tile) * 32;
    const unsigned int s_begin = (blockIdx.z * wk + kpart) * spw;
    const unsigned int s_end = min(s_begin + spw, k / 16);

    // The lane's rows of x (m0 + 16 mt + g + 8 h) and of W (n0 + 8 nt + g), at its k pair 2t;
    // rows past the end read the last row (valid memory) and are never stored.
    const float* xr[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const unsigned int r = min(m0 + 16 * mt + g + 8 * h, rows - 1);
            xr[mt][h] = x + (unsigned long long)r * ldx + 2 * t;
        }
    }
    const unsigned short* wr[4];
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        const unsigned int c = min(n0 + 8 * nt + g, n - 1);
        wr[nt] = w + (unsigned long long)c * k + 2 * t;
    }

    float acc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] = 0.0f;
        }
    }
    for (unsigned int s0 = s_begin; s0 < s_end; s0 += S6_MMA_SPW) {
        // Every load of up to S6_MMA_SPW steps first, then their products.
        float2 xa[S6_MMA_SPW][2][4];
        unsigned int b[S6_MMA_SPW][4][2];
#pragma unroll
        for (int q = 0; q < S6_MMA_SPW; q++) {
            if (s0 + q < s_end) {
                const unsigned int kk = 16 * (s0 + q);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    // a0: row g, k 2t..2t+1; a1: row g+8; a2: row g, k +8; a3: row g+8, k +8.
                    xa[q][mt][0] = *reinterpret_cast<const float2*>(xr[mt][0] + kk);
                    xa[q][mt][1] = *reinterpret_cast<const float2*>(xr[mt][1] + kk);
                    xa[q][mt][2] = *reinterpret_cast<const float2*>(xr[mt][0] + kk + 8);
                    xa[q][mt][3] = *reinterpret_cast<const float2*>(xr[mt][1] + kk + 8);
                }
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    // b0: k 2t..2t+1 of column g; b1: k +8.
                    b[q][nt][0] = __ldg(reinterpret_cast<const unsigned int*>(wr[nt] + kk));
                    b[q][nt][1] = __ldg(reinterpret_cast<const unsigned int*>(wr[nt] + kk + 8));
                }
            }
        }
#pragma unroll
        for (int q = 0; q < S6_MMA_SPW; q++) {
            if (s0 + q < s_end) {
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const unsigned int a[4] = {s6m_pack(xa[q][mt][0]), s6m_pack(xa[q][mt][1]),
                                               s6m_pack(xa[q][mt][2]), s6m_pack(xa[q][mt][3])};
#pragma unroll
                    for (int nt = 0; nt < 4; nt++) s6m_mma(acc[mt][nt], a, b[q][nt]);
                }
            }
        }
    }

    // The sums of a tile's wk warps, added in warp order: thread (kpart, lane) of the tile adds
    // accumulators kpart · 32/wk .. of that lane. Accumulator j = 16 mt + 4 nt + e: e = 0, 1 row g,
    // columns 2t, 2t+1; e = 2, 3 row g+8.
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s_acc[warp][16 * mt + 4 * nt + e][lane] = acc[mt][nt][e];
        }
    }
    __syncthreads();
    const bool split = gridDim.z > 1;
    float* dst = split ? part + (unsigned long long)blockIdx.z * rows * n : out;
    const unsigned int ld = split ? n : ldo;
    const unsigned int per = 32 / wk, w0 = tile * wk;
    for (unsigned int jj = 0; jj < per; jj++) {
        const unsigned int j = kpart * per + jj;
        float v = s_acc[w0][j][lane];
        for (unsigned int q = 1; q < wk; q++) v += s_acc[w0 + q][j][lane];
        const unsigned int mt = j / 16, nt = (j / 4) % 4, e = j % 4;
        const unsigned int r = m0 + 16 * mt + g + 8 * (e / 2);
        const unsigned int c = n0 + 8 * nt + 2 * t + e % 2;
        if (r < rows && c < n) {
            float* p = dst + (unsigned long long)r * ld + c;
            *p = !split && accumulate ? *p + v : v;
        }
    }
}

// out[r, c] (+)= Σ_s part[s][r, c], the splits added in order.
extern "C" __global__ void s6_mma_split_sum(const float* __restrict__ part, unsigned int splits, unsigned int rows,
                                            unsigned int n, float* __restrict__ out, unsigned int ldo,
                                            unsigned int accumulate) {
    S6_PDL_ENTRY();
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long total = (unsigned long long)rows * n;
    if (i >= total) return;
    // Loads eight at a time (independent), added in split order.
    float s = 0.0f;
    unsigned int j = 0;
    for (; j + 8 <= splits; j += 8) {
        float v[8];
#pragma unroll
        for (int q = 0; q < 8; q++) v[q] = part[(j + q) * total + i];
#pragma unroll
        for (int q = 0; q < 8; q++) s += v[q];
    }
    for (; j < splits; j++) s += part[j * total + i];
    float* p = out + (i / n) * ldo + i % n;
    *p = accumulate ? *p + s : s;
}
