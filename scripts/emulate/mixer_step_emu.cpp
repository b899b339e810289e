// CPU emulation of the large-batch decoding scan step at d_state 16 (kernels/mixer_step.cu):
// s6_mixer_step_scan_n16 (dt given by a product for the batch), against an f64 reference of one
// step of the selective SSM: dt = dt_proj[c] · δ_b, Δ = softplus(dt + bias), h = exp(ΔA) h + Δ B u,
// y = (C·h + D·u) silu(z), the conv window moved by one slot with x appended. Two steps carried
// per case (the states written by the first are read by the second); shapes with a partial block
// of channels, dt_rank not a multiple of 16, d_conv 2 to 5.
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/elementwise.cu"
#include "../../crates/s6/src/backend/cuda/kernels/mixer_step.cu"
#include "scan_ref.h"

static int failures = 0;
static void expect(bool ok, const char* what, unsigned batch, unsigned di, unsigned r, unsigned k, double err) {
    if (!ok) failures++;
    std::printf("%-4s %s b%u di%u r%u k%u (err %.2e)\n", ok ? "ok" : "FAIL", what, batch, di, r, k, err);
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
        std::vector<double> dt_ref((size_t)batch * di), y_ref((size_t)batch * di);
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
    if (failures) {
        std::printf("%d FAILED\n", failures);
        return 1;
    }
    std::printf("all passed\n");
    return 0;
}
