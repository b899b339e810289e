// Token sampling on the device (Backend::sample in crates/s6/src/backend/mod.rs): one block of
// S6_SAMPLE_THREADS threads per sequence, semantics of the host Sampler (generate/sampler.rs):
// repetition penalty, temperature (0 = argmax, ties to the lowest id), top-k, top-p, min-p, then
// a seeded draw.
//
// Every filter keeps a prefix of the tokens ordered by (weight descending, id ascending), so
// their composition keeps the shortest of the prefixes: its length L is found with binary
// searches over the weights' bit patterns (non-negative floats order like their bits), and the
// kept set is "weight above a threshold, plus the lowest-id ties at the threshold". Sums are in
// double, per thread in a fixed order then over a fixed tree: the same inputs give the same
// result on every run.

#define S6_SAMPLE_THREADS 1024
#define S6_FULL_MASK 0xffffffffu

// Repetition-penalised logit of token i (seen_row null: no penalty).
__device__ __forceinline__ float s6_pen_logit(const float* row, const unsigned int* seen_row, float rp,
                                              unsigned int i) {
    float x = row[i];
    if (seen_row != 0 && seen_row[i] != 0u) x = x > 0.0f ? x / rp : x * rp;
    return x;
}

// Unnormalised probability with the most likely token at exactly 1 (NaN: 0).
__device__ __forceinline__ float s6_weight(float x, float mx, float inv_t) {
    if (x != x) return 0.0f;
    if (mx == __uint_as_float(0x7f800000u)) return x == mx ? 1.0f : 0.0f;
    return expf((x - mx) * inv_t);
}

__device__ __forceinline__ unsigned long long s6_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// A uniform double in [0, 1) from (seed, counter): counter-based, no state besides the counter.
__device__ __forceinline__ double s6_uniform(unsigned long long seed, unsigned long long counter) {
    unsigned long long z = s6_mix64(seed + 0x9e3779b97f4a7c15ull * (counter + 1ull));
    z = s6_mix64(z ^ 0xd1b54a32d192ed03ull);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

// Block-wide sums. Every thread gets the result; `sh` holds 32 values, reused between calls.
__device__ double s6_block_sum_d(double v, double* sh) {
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned int nw = (blockDim.x + 31u) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(S6_FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double s = lane < nw ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(S6_FULL_MASK, s, o);
        if (lane == 0) sh[0] = s;
    }
    __syncthreads();
    return sh[0];
}

__device__ unsigned int s6_block_sum_u(unsigned int v, unsigned int* sh) {
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned int nw = (blockDim.x + 31u) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(S6_FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        unsigned int s = lane < nw ? sh[lane] : 0u;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(S6_FULL_MASK, s, o);
        if (lane == 0) sh[0] = s;
    }
    __syncthreads();
    return sh[0];
}

// Exclusive prefix sums over the threads of the block, in thread order.
__device__ double s6_block_excl_d(double v, double* sh) {
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned int nw = (blockDim.x + 31u) >> 5;
    double x = v;
    for (int o = 1; o < 32; o <<= 1) {
        double y = __shfl_up_sync(S6_FULL_MASK, x, o);
        if (lane >= (unsigned int)o) x += y;
    }
    double excl = __shfl_up_sync(S6_FULL_MASK, x, 1);
    if (lane == 0) excl = 0.0;
    __syncthreads();
    if (lane == 31u) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        double s = lane < nw ? sh[lane] : 0.0;
        for (int o = 1; o < 32; o <<= 1) {
            double y = __shfl_up_sync(S6_FULL_MASK, s, o);
            if (lane >= (unsigned int)o) s += y;
        }
        sh[lane] = s;
    }
    __syncthreads();
    return (warp > 0 ? sh[warp - 1] : 0.0) + excl;
}

__device__ unsigned int s6_block_excl_u(unsigned int v, unsigned int* sh) {
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned int nw = (blockDim.x + 31u) >> 5;
    unsigned int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned int y = __shfl_up_sync(S6_FULL_MASK, x, o);
        if (lane >= (unsigned int)o) x += y;
    }
    unsigned int excl = x - v;
    __syncthreads();
    if (lane == 31u) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        unsigned int s = lane < nw ? sh[lane] : 0u;
        for (int o = 1; o < 32; o <<= 1) {
            unsigned int y = __shfl_up_sync(S6_FULL_MASK, s, o);
            if (lane >= (unsigned int)o) s += y;
        }
        sh[lane] = s;
    }
    __syncthreads();
    return (warp > 0 ? sh[warp - 1] : 0u) + excl;
}

struct S6Row {
    const float* logits;
    const unsigned int* seen;
    float rp, mx, inv_t;
    unsigned int vocab;
};

__device__ __forceinline__ float s6_row_weight(const S6Row& r, unsigned int i) {
    return s6_weight(s6_pen_logit(r.logits, r.seen, r.rp, i), r.mx, r.inv_t);
}

// Tokens with weight bits >= tau: their count.
__device__ unsigned int s6_count_at(const S6Row& r, unsigned int tau, unsigned int* shu) {
    unsigned int c = 0;
    for (unsigned int i = threadIdx.x; i < r.vocab; i += blockDim.x) c += __float_as_uint(s6_row_weight(r, i)) >= tau;
    return s6_block_sum_u(c, shu);
}

// Tokens with weight bits >= tau: their total weight.
__device__ double s6_mass_at(const S6Row& r, unsigned int tau, double* shd) {
    double m = 0.0;
    for (unsigned int i = threadIdx.x; i < r.vocab; i += blockDim.x) {
        float w = s6_row_weight(r, i);
        if (__float_as_uint(w) >= tau) m += (double)w;
    }
    return s6_block_sum_d(m, shd);
}

// Weights lie in [0, 1]: bit patterns in [0, 0x3f800000].
#define S6_TAU_END 0x3f800001u

// The largest tau with count_at(tau) >= n (1 <= n <= vocab): the weight of the n-th token.
__device__ unsigned int s6_rank_threshold(const S6Row& r, unsigned int n, unsigned int* shu) {
    unsigned int lo = 0u, hi = S6_TAU_END;
    while (hi - lo > 1u) {
        unsigned int mid = lo + (hi - lo) / 2u;
        if (s6_count_at(r, mid, shu) >= n) lo = mid; else hi = mid;
    }
    return lo;
}

// The largest tau with mass_at(tau) >= target (target <= total mass).
__device__ unsigned int s6_mass_threshold(const S6Row& r, double target, double* shd) {
    unsigned int lo = 0u, hi = S6_TAU_END;
    while (hi - lo > 1u) {
        unsigned int mid = lo + (hi - lo) / 2u;
        if (s6_mass_at(r, mid, shd) >= target) lo = mid; else hi = mid;
    }
    return lo;
}

// Mass of the first n tokens of the order (weight desc, id asc).
__device__ double s6_prefix_mass(const S6Row& r, unsigned int n, unsigned int* shu, double* shd) {
    unsigned int tau = s6_rank_threshold(r, n, shu);
    unsigned int above = s6_count_at(r, tau + 1u, shu);
    double above_mass = s6_mass_at(r, tau + 1u, shd);
    return above_mass + (double)(n - above) * (double)__uint_as_float(tau);
}

// One block per row of `logits` ([rows, vocab]); writes out[row]. See the file comment.
// seen: [rows, vocab] 0/1, or null when rep_penalty == 1. draws: [rows], incremented.
extern "C" __global__ void __launch_bounds__(S6_SAMPLE_THREADS)
s6_sample(const float* __restrict__ logits, unsigned int vocab, float temperature, unsigned int top_k, float top_p,
          float min_p, float rep_penalty, unsigned long long seed, unsigned int* seen, unsigned int* draws,
          unsigned int* out) {
    S6_PDL_ENTRY();
    __shared__ double shd[32];
    __shared__ unsigned int shu[32];
    __shared__ float sh_val[32];
    __shared__ unsigned int sh_idx[32];
    __shared__ unsigned int sh_pick;
    const unsigned int row = blockIdx.x;
    const unsigned int tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const unsigned int nw = (blockDim.x + 31u) >> 5;
    S6Row r;
    r.logits = logits + (unsigned long long)row * vocab;
    r.seen = seen != 0 ? seen + (unsigned long long)row * vocab : 0;
    r.rp = rep_penalty;
    r.vocab = vocab;

    // Argmax of the penalised logits, ties to the lowest id; NaN never wins.
    float best = __uint_as_float(0xff800000u);
    unsigned int bi = 0xffffffffu;
    for (unsigned int i = tid; i < vocab; i += blockDim.x) {
        float x = s6_pen_logit(r.logits, r.seen, r.rp, i);
        if (x > best || (x == best && i < bi)) {
            best = x;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_down_sync(S6_FULL_MASK, best, o);
        unsigned int oi = __shfl_down_sync(S6_FULL_MASK, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        sh_val[warp] = best;
        sh_idx[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? sh_val[lane] : __uint_as_float(0xff800000u);
        bi = lane < nw ? sh_idx[lane] : 0xffffffffu;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_down_sync(S6_FULL_MASK, best, o);
            unsigned int oi = __shfl_down_sync(S6_FULL_MASK, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            sh_val[0] = best;
            sh_idx[0] = bi;
        }
    }
    __syncthreads();
    const float mx = sh_val[0];
    const unsigned int imax = sh_idx[0] < vocab ? sh_idx[0] : 0u;
    unsigned int picked = imax;

    if (temperature > 0.0f && mx != __uint_as_float(0xff800000u) && sh_idx[0] < vocab) {
        r.mx = mx;
        r.inv_t = 1.0f / temperature;
        // Length of the kept prefix; vocab = no filter.
        unsigned int keep = vocab;
        bool filtered_k = false;
        double kept_mass = 0.0;
        if (top_k > 0u && top_k < vocab) {
            keep = top_k;
            filtered_k = true;
        }
        if (top_p < 1.0f) {
            double total = filtered_k ? s6_prefix_mass(r, keep, shu, shd) : s6_mass_at(r, 0u, shd);
            double target = (double)top_p * total;
            unsigned int tau = s6_mass_threshold(r, target, shd);
            unsigned int above = s6_count_at(r, tau + 1u, shu);
            double above_mass = s6_mass_at(r, tau + 1u, shd);
            unsigned int at = s6_count_at(r, tau, shu) - above;
            double w = (double)__uint_as_float(tau);
            unsigned int need = at;
            if (w > 0.0) {
                double q = ceil((target - above_mass) / w);
                need = q < 1.0 ? 1u : (q >= (double)at ? at : (unsigned int)q);
            }
            unsigned int p_len = above + need;
            if (p_len < 1u) p_len = 1u;
            if (p_len < keep) keep = p_len;
        }
        if (min_p > 0.0f) {
            unsigned int m_len = s6_count_at(r, __float_as_uint(min_p), shu);
            if (m_len < 1u) m_len = 1u;
            if (m_len < keep) keep = m_len;
        }

        // The kept set: weight bits above tau_keep, plus the `ties` lowest ids at tau_keep.
        unsigned int tau_keep = 0u, ties = vocab;
        if (keep < vocab) {
            tau_keep = s6_rank_threshold(r, keep, shu);
            ties = keep - s6_count_at(r, tau_keep + 1u, shu);
        }
        // Contiguous chunks per thread: id order for the tie ranks and the draw.
        const unsigned int chunk = (vocab + blockDim.x - 1u) / blockDim.x;
        const unsigned int c0 = min(vocab, tid * chunk), c1 = min(vocab, c0 + chunk);
        unsigned int my_ties = 0;
        if (keep < vocab) {
            for (unsigned int i = c0; i < c1; ++i) my_ties += __float_as_uint(s6_row_weight(r, i)) == tau_keep;
        }
        const unsigned int tie0 = s6_block_excl_u(my_ties, shu);
        double my_mass = 0.0;
        {
            unsigned int t = tie0;
            for (unsigned int i = c0; i < c1; ++i) {
                float w = s6_row_weight(r, i);
                unsigned int b = __float_as_uint(w);
                bool kept = keep >= vocab || b > tau_keep || (b == tau_keep && t++ < ties);
                if (kept) my_mass += (double)w;
            }
        }
        const double mass0 = s6_block_excl_d(my_mass, shd);
        kept_mass = s6_block_sum_d(my_mass, shd);
        const double u = s6_uniform(seed + (unsigned long long)row, (unsigned long long)draws[row]);
        const double target = u * kept_mass;
        if (tid == 0) sh_pick = 0xffffffffu;
        __syncthreads();
        if (my_mass > 0.0 && mass0 <= target && target < mass0 + my_mass) {
            double cum = mass0;
            unsigned int t = tie0, last = 0xffffffffu, found = 0xffffffffu;
            for (unsigned int i = c0; i < c1; ++i) {
                float w = s6_row_weight(r, i);
                unsigned int b = __float_as_uint(w);
                bool kept = keep >= vocab || b > tau_keep || (b == tau_keep && t++ < ties);
                if (kept && w > 0.0f) {
                    cum += (double)w;
                    last = i;
                    if (cum > target) {
                        found = i;
                        break;
                    }
                }
            }
            atomicMin(&sh_pick, found != 0xffffffffu ? found : last);
        }
        __syncthreads();
        if (sh_pick != 0xffffffffu) picked = sh_pick;
    }
    __syncthreads();
    if (tid == 0) {
        out[row] = picked;
        draws[row] += 1u;
        if (seen != 0) seen[(unsigned long long)row * vocab + picked] = 1u;
    }
}
