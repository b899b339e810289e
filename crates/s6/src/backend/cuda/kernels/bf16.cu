// bf16 helpers for `Compute::Bf16` (fp32 storage, bf16 inputs of the matrix products). bf16 values
// are held as `unsigned short` bit patterns: the upper 16 bits of an f32. NVRTC gets no
// cuda_bf16.h here, so the conversions are done by hand.

// s6_f32_to_bf16, s6_bf16_to_f32, s6_bf16_lo and s6_bf16_hi are in prelude.cu (the scan, the conv
// and the norm read and write bf16 too).


// dst[r * cols + c] = bf16(src[r * ld + c]) for r < rows, c < cols: a strided f32 matrix into a
// contiguous bf16 one. Grid-stride loop over rows * cols.
extern "C" __global__ void s6_cast_bf16(const float* __restrict__ src, unsigned long long ld, unsigned long long rows,
                                        unsigned long long cols, unsigned short* __restrict__ dst) {
    // It may write a weight's bf16 copy, which the decoding kernels load before their PDL wait:
    // no early trigger (prelude.cu).
    S6_PDL_WAIT();
    const unsigned long long total = rows * cols;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (ld == cols) {
        for (; i < total; i += step) dst[i] = s6_f32_to_bf16(src[i]);
    } else {
        for (; i < total; i += step) {
            const unsigned long long r = i / cols, c = i - r * cols;
            dst[i] = s6_f32_to_bf16(src[r * ld + c]);
        }
    }
}

// dst[i] = float(src[i]) for i < n: an activation held only in bf16 (cuda/bf16.rs, `fresh`) cast
// back to f32 for a reader that needs f32.
extern "C" __global__ void s6_uncast_bf16(const unsigned short* __restrict__ src, unsigned long long n,
                                          float* __restrict__ dst) {
    S6_PDL_ENTRY();
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        dst[i] = s6_bf16_to_f32(src[i]);
}
