// The fused decoding step of one Mamba block (kernels/layer_step.cu: s6_layer_step_b1 and
// s6_layer_step_b1_wide, one persistent grid whose blocks meet at grid barriers) runs on the CPU
// through cuda_emu.h, every block at once (s6emu_launch_concurrent), for 1 to 5 blocks and several
// shapes chosen to reach every loop's tail (the norm's residual values past S6_LS_DPRE per thread,
// in_proj rows past PRE1 vectors per lane, x_proj and out_proj rows past S6_LS_PRE, phase 3 in
// several rounds, conv widths past S6_LS_KPRE), 2 or 3 consecutive steps with the states carried.
// After every step each output and state is compared with an f64 reference of the layer step
// (its own chain of states) and the grid barrier must be left {0, generation + 3}. The same cases
// run the cluster kernels (s6_layer_step_cluster_b1_c8 / _c16 and their wide entries: one cluster
// of 8 or 16 blocks, s6emu_launch_cluster) with a few block sizes.
// Run: scripts/emulate/run.sh
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/elementwise.cu"
#include "../../crates/s6/src/backend/cuda/kernels/gemv.cu"
#include "../../crates/s6/src/backend/cuda/kernels/layer_step.cu"

#include "scan_ref.h"

static int failures = 0;

// Rounding to bf16 (8 significant bits, to nearest even) of a double, and the two bf16 values
// around it. A value whose distance to the midpoint of those two is within `rel` of itself is a
// near tie: f32 arithmetic (the kernel's) may round it either way.
struct Bf16Round {
    double value, other;
    bool near_tie;
};
static Bf16Round bf16_round64(double v, double rel = 1e-5) {
    if (v == 0.0 || !std::isfinite(v)) return {v, v, false};
    int e;
    std::frexp(std::fabs(v), &e);
    const double ulp = std::ldexp(1.0, e - 8), s = std::fabs(v) / ulp;  // s in [128, 256)
    const double lo = std::floor(s), r = std::nearbyint(s);           // ties to even
    const double other = r == lo ? lo + 1 : lo;
    const double sign = v < 0 ? -1.0 : 1.0;
    return {sign * r * ulp, sign * other * ulp, std::fabs(s - lo - 0.5) <= rel * s};
}
static double bf16r(double v) { return bf16_round64(v).value; }

// Weights in bf16: bit patterns, in storage of uint4 (16-byte aligned rows, read as uint4), and
// the same values as doubles for the reference.
struct Bf16Mat {
    std::vector<uint4> store;
    std::vector<double> val;
    const unsigned short* bits() const { return reinterpret_cast<const unsigned short*>(store.data()); }
};
static Bf16Mat bf16_mat(size_t rows, size_t cols, float bound) {
    auto f = rand_vec(rows * cols, -bound, bound);
    std::vector<unsigned short> h(f.size());
    Bf16Mat m;
    m.val.resize(f.size());
    for (size_t i = 0; i < f.size(); i++) {
        h[i] = s6_f32_to_bf16(f[i]);
        m.val[i] = s6_bf16_to_f32(h[i]);
    }
    m.store.resize((h.size() * 2 + 15) / 16);
    std::memcpy(m.store.data(), h.data(), h.size() * 2);
    return m;
}

struct Case {
    unsigned d, di, n, k, r;
    bool conv_bias, proj_bias, wide;
    unsigned blocks, steps;
    unsigned gen0;  // the barrier's generation word at the first launch (any value)
    // 0: the grid-barrier kernel (blocks blocks of S6_LS_THREADS); 8 or 16: the cluster kernel,
    // one cluster of that many blocks of `threads` threads (blocks unused).
    unsigned cluster = 0, threads = 0;
};

static double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

static void run_case(const Case& cs) {
    const unsigned d = cs.d, di = cs.di, n = cs.n, k = cs.k, r = cs.r, width = r + 2 * n;
    const float eps = 1e-5f;
    // Inputs (weights scaled so that every intermediate stays of order one).
    auto residual = rand_vec(d, -2, 2);
    auto norm_w = rand_vec(d, 0.5f, 1.5f);
    auto w_in = bf16_mat(2 * (size_t)di, d, std::sqrt(3.0f / d));
    auto b_in = rand_vec(2 * di, -0.5f, 0.5f);
    auto conv_w = rand_vec((size_t)di * k, -0.6f, 0.6f);
    auto conv_b = rand_vec(di, -0.5f, 0.5f);
    auto conv_state = rand_vec((size_t)(k - 1) * di, -1.5f, 1.5f);
    auto w_x = bf16_mat(width, di, std::sqrt(3.0f / di));
    auto dt_w = rand_vec((size_t)di * r, -std::sqrt(3.0f / r), std::sqrt(3.0f / r));
    auto dt_b = rand_vec(di, -3.0f, 1.0f);
    auto a = rand_vec((size_t)di * n, 0.0f, 2.7f);
    for (auto& x : a) x = -std::exp(x);
    auto dskip = rand_vec(di, 0.5f, 1.5f);
    auto ssm = rand_vec((size_t)di * n, -1, 1);
    auto w_out = bf16_mat(d, di, std::sqrt(3.0f / di));
    auto b_out = rand_vec(d, -0.5f, 0.5f);
    const float* b_in_p = cs.proj_bias ? b_in.data() : nullptr;
    const float* b_out_p = cs.proj_bias ? b_out.data() : nullptr;
    const float* conv_b_p = cs.conv_bias ? conv_b.data() : nullptr;

    // The reference's chain of states.
    std::vector<double> res_r = D(residual), cst_r = D(conv_state), ssm_r = D(ssm);
    unsigned int bar[2] = {0u, cs.gen0};
    const size_t shared_bytes = (std::max(std::max(d, di), width) + 32) * sizeof(float);

    for (unsigned step = 0; step < cs.steps; step++) {
        // Outputs start as NaN: an element the kernel never writes shows.
        std::vector<float> xz(2 * di, NAN), u(di, NAN), xdbl(width, NAN), delta(di, NAN), y(di, NAN);
        const unsigned gen_before = bar[1];
        auto launch = [&](auto kern) {
            kern(residual.data(), norm_w.data(), eps, w_in.bits(), b_in_p, conv_w.data(), conv_b_p,
                 conv_state.data(), w_x.bits(), dt_w.data(), dt_b.data(), a.data(), dskip.data(), ssm.data(),
                 w_out.bits(), b_out_p, xz.data(), u.data(), xdbl.data(), delta.data(), y.data(), bar, d, di, k, r, n);
        };
        if (cs.cluster == 0) {
            s6emu_launch_concurrent({cs.blocks, 1, 1}, S6_LS_THREADS, shared_bytes,
                                    [&] { launch(cs.wide ? s6_layer_step_b1_wide : s6_layer_step_b1); });
        } else {
            // The cluster kernel's shared memory (kernels/layer_step.cu): the normed row, the norm's
            // partials, u and y of the block's channels, x_proj's partial and xdbl, out_proj's partial.
            const unsigned C = ((di + cs.cluster - 1) / cs.cluster + 7) / 8 * 8;
            const size_t bytes = (std::max(d, 8u) + 32 + 2 * C + 2 * width + d) * sizeof(float);
            s6emu_launch_cluster({cs.cluster, 1, 1}, cs.threads, bytes, cs.cluster, [&] {
                if (cs.cluster == 8) launch(cs.wide ? s6_layer_step_cluster_b1_c8_wide : s6_layer_step_cluster_b1_c8);
                else launch(cs.wide ? s6_layer_step_cluster_b1_c16_wide : s6_layer_step_cluster_b1_c16);
            });
        }

        // ---- the f64 reference ----
        // Where the reference rounds a near tie to bf16 (rounding f64 and f32 values can differ
        // there; a one-ulp flip of a bf16 input moves a product by ~2^-8 of one term, far beyond
        // fp32 rounding), it takes the way the kernel went, which is a correct rounding of a value
        // within fp32 error of the exact one: for u and y (kernel outputs) when the kernel's value
        // is within the tolerance of the reference's; for the normed x (not an output) by which of
        // the two roundings of each near-tie element explains the kernel's xz (the difference of
        // the two is a column of w_in, nearly orthogonal to the others and far above fp32 noise).
        unsigned ties_taken = 0;
        double ss = 0;
        for (unsigned i = 0; i < d; i++) ss += res_r[i] * res_r[i];
        const double scale = 1.0 / std::sqrt(ss / d + (double)eps);
        std::vector<double> xn(d), xn_other(d);
        std::vector<unsigned> xn_ties;
        for (unsigned i = 0; i < d; i++) {
            const auto br = bf16_round64(res_r[i] * scale * norm_w[i]);
            xn[i] = br.value;
            xn_other[i] = br.other;
            if (br.near_tie) xn_ties.push_back(i);
        }
        std::vector<double> xz_r(2 * di);
        for (unsigned j = 0; j < 2 * di; j++) {
            double acc = cs.proj_bias ? b_in[j] : 0.0;
            for (unsigned i = 0; i < d; i++) acc += w_in.val[(size_t)j * d + i] * xn[i];
            xz_r[j] = acc;
        }
        for (int pass = 0; pass < 4 && !xn_ties.empty(); pass++) {
            bool flipped = false;
            for (unsigned i : xn_ties) {
                const double dv = xn_other[i] - xn[i];
                double num = 0, den = 0;
                for (unsigned j = 0; j < 2 * di; j++) {
                    const double v = w_in.val[(size_t)j * d + i] * dv;
                    num += v * ((double)xz[j] - xz_r[j]);
                    den += v * v;
                }
                if (den > 0 && num > 0.5 * den) {
                    for (unsigned j = 0; j < 2 * di; j++) xz_r[j] += w_in.val[(size_t)j * d + i] * dv;
                    std::swap(xn[i], xn_other[i]);
                    flipped = true;
                    ties_taken++;
                }
            }
            if (!flipped) break;
        }
        // Conv + SiLU on the x half, the window moved by one.
        std::vector<double> u_r(di);
        for (unsigned c = 0; c < di; c++) {
            double acc = cs.conv_bias ? conv_b[c] : 0.0;
            for (unsigned t = 0; t + 1 < k; t++) acc += conv_w[(size_t)c * k + t] * cst_r[(size_t)t * di + c];
            acc += conv_w[(size_t)c * k + k - 1] * xz_r[c];
            u_r[c] = acc / (1 + std::exp(-acc));
            for (unsigned t = 0; t + 2 < k; t++) cst_r[(size_t)t * di + c] = cst_r[(size_t)(t + 1) * di + c];
            if (k > 1) cst_r[(size_t)(k - 2) * di + c] = xz_r[c];
        }
        // bf16 of a kernel output's reference values, near ties taken from the kernel's.
        auto round_as_kernel = [&](const std::vector<double>& want, const std::vector<float>& got) {
            const double tol = 1e-5 * max_abs(want);
            std::vector<double> out(want.size());
            for (size_t i = 0; i < want.size(); i++) {
                out[i] = bf16r(want[i]);
                const double g = s6_rbf16(got[i]);
                if (g != out[i] && std::fabs(got[i] - want[i]) <= tol) {
                    out[i] = g;
                    ties_taken++;
                }
            }
            return out;
        };
        const auto ub = round_as_kernel(u_r, u);
        std::vector<double> xdbl_r(width);
        for (unsigned o = 0; o < width; o++) {
            double acc = 0;
            for (unsigned c = 0; c < di; c++) acc += w_x.val[(size_t)o * di + c] * ub[c];
            xdbl_r[o] = acc;
        }
        std::vector<double> delta_r(di), y_r(di);
        for (unsigned c = 0; c < di; c++) {
            double dt = 0;
            for (unsigned i = 0; i < r; i++) dt += dt_w[(size_t)c * r + i] * xdbl_r[i];
            delta_r[c] = dt;
            const double x = dt + dt_b[c];
            const double dl = x > 20 ? x : std::log1p(std::exp(x));
            double acc = 0;
            for (unsigned s = 0; s < n; s++) {
                double& h = ssm_r[(size_t)c * n + s];
                h = std::exp(dl * a[(size_t)c * n + s]) * h + dl * u_r[c] * xdbl_r[r + s];
                acc += xdbl_r[r + n + s] * h;
            }
            const double z = xz_r[di + c];
            y_r[c] = (acc + dskip[c] * u_r[c]) * (z / (1 + std::exp(-z)));
        }
        const auto yb = round_as_kernel(y_r, y);
        for (unsigned j = 0; j < d; j++) {
            double acc = cs.proj_bias ? b_out[j] : 0.0;
            for (unsigned c = 0; c < di; c++) acc += w_out.val[(size_t)j * di + c] * yb[c];
            res_r[j] += acc;
        }

        // ---- compare ----
        const double tol = 1e-5;
        struct { const char* name; const float* got; const std::vector<double>* want; } outs[] = {
            {"xz", xz.data(), &xz_r},         {"u", u.data(), &u_r},           {"xdbl", xdbl.data(), &xdbl_r},
            {"delta", delta.data(), &delta_r}, {"y", y.data(), &y_r},           {"conv", conv_state.data(), &cst_r},
            {"ssm", ssm.data(), &ssm_r},       {"res", residual.data(), &res_r},
        };
        // The grid-barrier kernel leaves its barrier {0, generation + 3}; the cluster kernel does
        // not touch it.
        bool ok = bar[0] == 0 && bar[1] == gen_before + (cs.cluster == 0 ? 3u : 0u);
        char line[512];
        int len = cs.cluster == 0
                      ? std::snprintf(line, sizeof line, "d%u di%u n%u k%u r%u %s%s%s blocks%u step%u:", d, di, n, k, r,
                                      cs.wide ? "wide" : "b1", cs.conv_bias ? " conv_b" : "",
                                      cs.proj_bias ? " proj_b" : "", cs.blocks, step)
                      : std::snprintf(line, sizeof line, "d%u di%u n%u k%u r%u cluster%u%s%s%s threads%u step%u:", d,
                                      di, n, k, r, cs.cluster, cs.wide ? " wide" : "", cs.conv_bias ? " conv_b" : "",
                                      cs.proj_bias ? " proj_b" : "", cs.threads, step);
        for (auto& o : outs) {
            const double e = rel_diff(o.got, *o.want);
            if (!(e <= tol)) ok = false;
            len += std::snprintf(line + len, sizeof line - len, " %s %.1e", o.name, e);
        }
        std::snprintf(line + len, sizeof line - len, " bar {%u, +%u} ties %u", bar[0], bar[1] - gen_before,
                      ties_taken);
        if (!ok) failures++;
        std::printf("%-4s %s\n", ok ? "ok" : "FAIL", line);
        std::fflush(stdout);
    }
}

int main() {
    const Case cases[] = {
        // d, di, n, k, r, conv bias, proj biases, wide, blocks, steps, generation
        {64, 136, 16, 4, 5, true, false, false, 3, 3, 0},
        {64, 136, 16, 4, 5, true, false, false, 1, 2, 0},
        {32, 48, 5, 3, 12, false, true, false, 3, 3, 0xfffffffeu},  // the generation wraps
        {32, 48, 5, 3, 12, false, true, false, 5, 2, 7},
        // k = 5 > S6_LS_KPRE: the conv without the preloaded taps.
        {64, 96, 16, 5, 7, true, true, false, 3, 3, 0},
        // k = 2 (one slot in the window), r = 130 > S6_LS_G * S6_LS_RPRE, n = 64 (S6_LS_G * S6_LS_SPRE).
        {48, 64, 64, 2, 130, true, true, false, 2, 2, 0},
        // d / 8 = 130 in_proj vectors per row: past the b1 entry's 32 * 4 preloaded (its tail
        // loop), within the wide entry's 32 * 8; in_proj and x_proj rows in several warp tasks.
        {1040, 264, 16, 4, 48, true, true, true, 3, 2, 0},
        {1040, 264, 16, 4, 48, true, false, false, 3, 2, 0},
        // di / 8 = 513 > 32 * S6_LS_PRE: x_proj's and out_proj's rows past the preloaded vectors;
        // phase 3 in ceil(4104 / 96) = 43 rounds.
        {16, 4104, 16, 4, 3, true, false, false, 3, 2, 0},
        // d = 2056 > 8 * 256: the norm's tail loop; d / 8 = 257 > 32 * 8 (the wide entry's PRE1).
        {2056, 64, 16, 4, 4, true, true, true, 2, 2, 0},
        // The cluster kernel: one cluster of 8 or 16 blocks, each owning a multiple of 8 channels
        // (the last ones fewer or none: di 48 over 8 blocks of 8, di 136 over 16 blocks of 16), in_proj
        // rows past the preloaded vectors (d 1040, d 2056), x_proj's and out_proj's rows past 32
        // vectors per lane (di 4104: 520 channels a block), phase 3 in several rounds, k = 2 and 5,
        // dt_rank past the preloaded entries (130), d_state 5 and 64.
        {64, 136, 16, 4, 5, true, false, false, 0, 3, 0, 16, 64},
        {64, 136, 16, 4, 5, true, true, false, 0, 2, 0, 8, 128},
        {32, 48, 5, 3, 12, false, true, false, 0, 3, 7, 8, 64},
        {64, 96, 16, 5, 7, true, true, false, 0, 2, 0, 8, 96},
        {48, 64, 64, 2, 130, true, true, false, 0, 2, 0, 8, 64},
        {1040, 264, 16, 4, 48, true, true, true, 0, 2, 0, 8, 128},
        {1040, 264, 16, 4, 48, true, false, false, 0, 2, 0, 16, 64},
        {16, 4104, 16, 4, 3, true, false, false, 0, 2, 0, 8, 64},
        {2056, 64, 16, 4, 4, true, true, true, 0, 2, 0, 16, 32},
        {768, 1536, 16, 4, 48, true, false, false, 0, 2, 0, 16, 64},  // mamba-130m's block
    };
    for (const auto& c : cases) run_case(c);
    std::printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
