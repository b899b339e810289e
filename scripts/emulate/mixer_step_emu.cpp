// CPU emulation of the decoding scan step kernels (kernels/mixer_step.cu), against an f64
// reference of one step of the selective SSM: dt = dt_proj[c] · δ_b, Δ = softplus(dt + bias),
// h = exp(ΔA) h + Δ B u, y = (C·h + D·u) silu(z), the conv window moved by one slot with x
// appended. Two steps carried per case (the states written by the first are read by the second).
// - s6_mixer_step_scan_n16 (large batches, dt given by a product for the batch): shapes with a
//   partial block of channels, dt_rank not a multiple of 16, d_conv 2 to 5.
// - s6_mixer_step_xscan_b1_v{1,2} (one sequence, x_proj fused in over clusters of blocks, every
//   block at once): xdbl = x_proj · u with bf16 weights and u rounded to bf16, against the f64
//   product of the same bf16 values; d_inner giving 1 or 2 clusters, uneven and empty slices,
//   rows past the weights loaded early, d_state 16 and not, both vector widths.
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/elementwise.cu"
#include "../../crates/s6/src/backend/cuda/kernels/gemv.cu"
#include "../../crates/s6/src/backend/cuda/kernels/mixer_step.cu"
#include "scan_ref.h"

static int failures = 0;
static void expect(bool ok, const char* what, unsigned batch, unsigned di, unsigned r, unsigned k, double err) {
    if (!ok) failures++;
    std::printf("%-4s %s b%u di%u r%u k%u (err %.2e)\n", ok ? "ok" : "FAIL", what, batch, di, r, k, err);
}

// One step of the f64 reference for `batch` sequences: dt (without its bias) and y out, the conv
// window and the state carried in conv_ref and ssm_ref. xdbl rows [δ (r) | B (n) | C (n)].
static void ref_step(unsigned batch, unsigned di, unsigned r, unsigned n, unsigned k, const std::vector<float>& dtw,
                     const std::vector<float>& bias, const std::vector<float>& a, const std::vector<float>& dskip,
                     const std::vector<float>& xz, const std::vector<float>& u, const std::vector<double>& xdbl,
                     std::vector<double>& conv_ref, std::vector<double>& ssm_ref, std::vector<double>& dt_ref,
                     std::vector<double>& y_ref) {
    const unsigned width = r + 2 * n, ldxz = 2 * di;
    dt_ref.assign((size_t)batch * di, 0.0);
    y_ref.assign((size_t)batch * di, 0.0);
    std::vector<double> conv_next = conv_ref;
    for (unsigned b = 0; b < batch; b++)
        for (unsigned c = 0; c < di; c++) {
            double dt = 0;
            for (unsigned j = 0; j < r; j++) dt += (double)dtw[(size_t)c * r + j] * xdbl[(size_t)b * width + j];
            dt_ref[(size_t)b * di + c] = dt;
            const double v = dt + bias[c];
            const double dl = v > 20 ? v : std::log1p(std::exp(v));
            const double uv = u[(size_t)b * di + c];
            double acc = 0;
            for (unsigned s = 0; s < n; s++) {
                double& h = ssm_ref[((size_t)b * di + c) * n + s];
                h = std::exp(dl * a[(size_t)c * n + s]) * h + dl * xdbl[(size_t)b * width + r + s] * uv;
                acc += xdbl[(size_t)b * width + r + n + s] * h;
            }
            const double z = xz[(size_t)b * ldxz + di + c];
            y_ref[(size_t)b * di + c] = (acc + dskip[c] * uv) * (z / (1 + std::exp(-z)));
            for (unsigned j = 0; j + 1 < k - 1; j++)
                conv_next[((size_t)b * (k - 1) + j) * di + c] = conv_ref[((size_t)b * (k - 1) + j + 1) * di + c];
            conv_next[((size_t)b * (k - 1) + k - 2) * di + c] = xz[(size_t)b * ldxz + c];
        }
    conv_ref = conv_next;
}

static void run_case(unsigned batch, unsigned di, unsigned r, unsigned k) {
    const unsigned n = 16, width = r + 2 * n, ldxz = 2 * di;
    auto dtw = rand_vec((size_t)di * r, -0.3f, 0.3f);
    auto bias = rand_vec(di, -3.0f, -1.0f);
    auto a = rand_vec((size_t)di * n, -2.0f, -0.1f);
    auto dskip = rand_vec(di, 0.5f, 1.5f);
    auto conv = rand_vec((size_t)batch * (k - 1) * di, -1.0f, 1.0f);
    auto ssm = rand_vec((size_t)batch * di * n, -1.0f, 1.0f);
    std::vector<double> conv_ref = D(conv), ssm_ref = D(ssm);
    for (int step = 0; step < 2; step++) {
        auto xz = rand_vec((size_t)batch * ldxz, -2.0f, 2.0f);
        auto u = rand_vec((size_t)batch * di, -2.0f, 2.0f);
        auto xdbl = rand_vec((size_t)batch * width, -1.0f, 1.0f);
        // The reference step.
        std::vector<double> dt_ref, y_ref;
        ref_step(batch, di, r, n, k, dtw, bias, a, dskip, xz, u, D(xdbl), conv_ref, ssm_ref, dt_ref, y_ref);
        // The kernel.
        std::vector<float> y((size_t)batch * di, 7.0f), delta((size_t)batch * di, 7.0f);
        const unsigned cblocks = (di + S6_MSW_CPB - 1) / S6_MSW_CPB;
        for (size_t i = 0; i < delta.size(); i++) delta[i] = (float)dt_ref[i];
        s6emu_launch({cblocks, batch, 1}, S6_MSW_THREADS, [&] {
            s6_mixer_step_scan_n16(xz.data(), ldxz, u.data(), xdbl.data(), width, r, bias.data(), a.data(),
                                   dskip.data(), conv.data(), k, ssm.data(), delta.data(), y.data(), di);
        });
        const char* name = "n16";
        char what[160];
        const double tol = 1e-5;
        double e = rel_diff(delta.data(), dt_ref);
        std::snprintf(what, sizeof what, "%s step %d: dt (without its bias)", name, step);
        expect(e <= tol, what, batch, di, r, k, e);
        e = rel_diff(y.data(), y_ref);
        std::snprintf(what, sizeof what, "%s step %d: y", name, step);
        expect(e <= tol, what, batch, di, r, k, e);
        e = rel_diff(ssm.data(), ssm_ref);
        std::snprintf(what, sizeof what, "%s step %d: ssm state", name, step);
        expect(e <= tol, what, batch, di, r, k, e);
        e = rel_diff(conv.data(), conv_ref);
        std::snprintf(what, sizeof what, "%s step %d: conv window (moved exactly)", name, step);
        expect(e == 0, what, batch, di, r, k, e);
    }
}

// One sequence through s6_mixer_step_xscan_b1_v<VJ>: x_proj (bf16 weights) fused in.
template <int VJ>
static void run_xscan_case(unsigned di, unsigned r, unsigned n, unsigned k) {
    const unsigned width = r + 2 * n, ldxz = 2 * di;
    auto dtw = rand_vec((size_t)di * r, -0.3f, 0.3f);
    auto bias = rand_vec(di, -3.0f, -1.0f);
    auto a = rand_vec((size_t)di * n, -2.0f, -0.1f);
    auto dskip = rand_vec(di, 0.5f, 1.5f);
    auto conv = rand_vec((size_t)(k - 1) * di, -1.0f, 1.0f);
    auto ssm = rand_vec((size_t)di * n, -1.0f, 1.0f);
    // x_proj's weights as bf16 bits, scaled so that B, C and δ stay near 1.
    const auto wf = rand_vec((size_t)width * di, -2.0f / std::sqrt((float)di), 2.0f / std::sqrt((float)di));
    std::vector<unsigned short> wx(wf.size());
    for (size_t i = 0; i < wf.size(); i++) wx[i] = s6_f32_to_bf16(wf[i]);
    std::vector<double> conv_ref = D(conv), ssm_ref = D(ssm);
    const unsigned scan_blocks = (di + S6_MS_CPB - 1) / S6_MS_CPB;
    const unsigned grid = (scan_blocks + S6_XS_CLUSTER - 1) / S6_XS_CLUSTER * S6_XS_CLUSTER;
    const unsigned per = ((di + S6_XS_CLUSTER - 1) / S6_XS_CLUSTER + 7) / 8 * 8;
    for (int step = 0; step < 2; step++) {
        auto xz = rand_vec(ldxz, -2.0f, 2.0f);
        auto u = rand_vec(di, -2.0f, 2.0f);
        // The reference: x_proj on the bf16 values in f64, then the step.
        std::vector<double> xdbl_ref(width, 0.0);
        for (unsigned w = 0; w < width; w++)
            for (unsigned i = 0; i < di; i++)
                xdbl_ref[w] += (double)s6_bf16_to_f32(wx[(size_t)w * di + i]) * s6_bf16_to_f32(s6_f32_to_bf16(u[i]));
        std::vector<double> dt_ref, y_ref;
        ref_step(1, di, r, n, k, dtw, bias, a, dskip, xz, u, xdbl_ref, conv_ref, ssm_ref, dt_ref, y_ref);
        // The kernel.
        std::vector<float> y(di, 7.0f), delta(di, 7.0f), xdbl(width, 7.0f);
        s6emu_launch_cluster({grid, 1, 1}, S6_MS_THREADS, 4 * (2 * width + per), S6_XS_CLUSTER, [&] {
            auto f = VJ == 1 ? s6_mixer_step_xscan_b1_v1 : VJ == 2 ? s6_mixer_step_xscan_b1_v2 : s6_mixer_step_xscan_b1_v4;
            f(xz.data(), ldxz, u.data(), nullptr, width, r, dtw.data(), bias.data(), a.data(), dskip.data(),
              conv.data(), k, ssm.data(), delta.data(), y.data(), di, n, 0, 0, nullptr, 0, nullptr, 0, 0, wx.data(),
              xdbl.data());
        });
        char what[160];
        const double tol = 1e-5;
        const auto check = [&](const char* part, double e, double limit) {
            std::snprintf(what, sizeof what, "xscan v%d n%u step %d: %s", VJ, n, step, part);
            expect(e <= limit, what, 1, di, r, k, e);
        };
        check("xdbl (x_proj over the cluster)", rel_diff(xdbl.data(), xdbl_ref), tol);
        check("dt (without its bias)", rel_diff(delta.data(), dt_ref), tol);
        check("y", rel_diff(y.data(), y_ref), tol);
        check("ssm state", rel_diff(ssm.data(), ssm_ref), tol);
        check("conv window (moved exactly)", rel_diff(conv.data(), conv_ref), 0.0);
    }
}

int main() {
    struct Shape { unsigned batch, di, r, k; };
    const Shape shapes[] = {
        {5, 100, 48, 4},  // 130M's dt_rank, a partial block of channels
        {19, 64, 128, 4}, // 1.4B's dt_rank
        {3, 64, 13, 3},
        {4, 64, 13, 2},
        {6, 130, 160, 5},
    };
    for (const Shape& s : shapes) run_case(s.batch, s.di, s.r, s.k);
    // One cluster; two with an uneven and an empty slice (130M's dt_rank); rows past the weights
    // loaded early (width 132: 17 rows for some warps); d_state 8; two vectors per lane and row,
    // with and without a second vector in the slice.
    run_xscan_case<1>(128, 8, 16, 4);
    run_xscan_case<1>(264, 48, 16, 4);
    run_xscan_case<1>(256, 100, 16, 3);
    run_xscan_case<1>(192, 20, 8, 2);
    run_xscan_case<2>(128, 8, 16, 4);
    run_xscan_case<2>(2056, 16, 16, 4);
    if (failures) {
        std::printf("%d FAILED\n", failures);
        return 1;
    }
    std::printf("all passed\n");
    return 0;
}
