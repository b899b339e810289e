// The f64 reference of the selective scan forward for the emulation harnesses (the semantics of
// the CPU backend, crates/s6/src/backend/cpu): dt = softplus(delta + bias),
// h_t = exp(dt A) h_{t-1} + dt B_t u_t, y_t = (C_t . h_t + D u_t) silu(z_t). B and C are columns
// 3 .. 3+N and 3+N .. 3+2N of xdbl (row stride xw; N = 16 unless given), z the second half of xz (row stride 2 dim;
// empty: no gate); state [batch][dim][16] is read and written.
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

static std::mt19937_64 rng(7);
static std::vector<float> rand_vec(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
// max |got - want| / max |want| over a tensor (infinite when any value is not finite).
static double rel_diff(const float* got, const std::vector<double>& want) {
    double md = 0, mw = 0;
    for (size_t i = 0; i < want.size(); i++) {
        if (!std::isfinite(got[i])) return INFINITY;
        md = std::max(md, std::fabs(got[i] - want[i]));
        mw = std::max(mw, std::fabs(want[i]));
    }
    return mw > 0 ? md / mw : md;
}
static std::vector<double> D(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Random inputs of a scan of `rows` positions, `dim` channels and N states: u, Δ (before its
// bias), the bias, A = -exp(A_log), xdbl rows of xw (B at column 3, C at 3 + N), D and xz (the gate
// in its second half); each range [lo, hi) as given.
struct ScanInputs {
    std::vector<float> u, delta, bias, a, xdbl, dsk, xz;
};
static ScanInputs scan_inputs(size_t rows, unsigned dim, unsigned N, unsigned xw, float delta_lo, float delta_hi,
                              float bias_lo, float bias_hi, float alog_lo, float alog_hi) {
    ScanInputs in;
    in.u = rand_vec(rows * dim, -2, 2);
    in.delta = rand_vec(rows * dim, delta_lo, delta_hi);
    in.bias = rand_vec(dim, bias_lo, bias_hi);
    auto a_log = rand_vec((size_t)dim * N, alog_lo, alog_hi);
    in.a.resize(a_log.size());
    for (size_t i = 0; i < a_log.size(); i++) in.a[i] = -std::exp(a_log[i]);
    in.xdbl = rand_vec(rows * xw, -1.5, 1.5);
    in.dsk = rand_vec(dim, -1, 1);
    in.xz = rand_vec(rows * 2 * dim, -3, 3);
    return in;
}

static void scan_ref(unsigned batch, unsigned seqlen, unsigned dim, const std::vector<double>& u,
                     const std::vector<double>& delta, const std::vector<double>& bias, const std::vector<double>& a,
                     const std::vector<double>& xdbl, unsigned xw, const std::vector<double>& dsk,
                     const std::vector<double>& xz, std::vector<double>& state, std::vector<double>& y,
                     unsigned N = 16) {
    const bool gate = !xz.empty();
    y.assign((size_t)batch * seqlen * dim, 0.0);
    for (unsigned b = 0; b < batch; b++)
        for (unsigned d = 0; d < dim; d++) {
            double* h = &state[((size_t)b * dim + d) * N];
            for (unsigned t = 0; t < seqlen; t++) {
                const size_t r = (size_t)b * seqlen + t;
                const double x = delta[r * dim + d] + bias[d];
                const double dt = x > 20 ? x : std::log1p(std::exp(x));
                const double uv = u[r * dim + d];
                double acc = 0;
                for (unsigned n = 0; n < N; n++) {
                    h[n] = std::exp(dt * a[d * N + n]) * h[n] + dt * xdbl[r * xw + 3 + n] * uv;
                    acc += xdbl[r * xw + 3 + N + n] * h[n];
                }
                const double g = gate ? xz[r * 2 * dim + dim + d] / (1 + std::exp(-xz[r * 2 * dim + dim + d])) : 1.0;
                y[r * dim + d] = (acc + dsk[d] * uv) * g;
            }
        }
}
