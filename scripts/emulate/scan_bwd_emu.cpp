// The d_state-16 scan backward (kernels/scan_backward.cu: s6_scan_bwd_n16p, n16r8 and their
// tensor-core variants n16pm and n16m8, and their two reduction kernels, launched as
// cuda/backward.rs does) run on the CPU through cuda_emu.h, against finite differences of the f64
// forward (scan_ref.h): for L = sum(dy * y) and each gradient G of an input X (u, Δ, z, B, C, A,
// D, the Δ bias), G . V against (L(X + eV) - L(X - eV)) / 2e for random directions V; the variants
// also output by output against the kernel each restructures. Zero initial state, as the backward
// assumes. Run: scripts/emulate/run.sh
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/scan.cu"
#include "../../crates/s6/src/backend/cuda/kernels/scan_backward.cu"
#include "scan_ref.h"

#include <functional>

static int failures = 0;

using BwdKernel = void (*)(const float*, const float*, const float*, const float*, const float*, unsigned int,
                          const float*, unsigned int, const float*, const float*, unsigned int, const float*, float*,
                          float*, unsigned int, float*, unsigned int, float*, float*, float*, unsigned int,
                          unsigned int, unsigned int);
struct Variant {
    const char* name;
    BwdKernel kernel;
    unsigned chunk;
    // A kernel of the same math whose outputs this one's must match up to rounding (n16m8: n16r8,
    // n16pm: n16p, whose dB/dC partials they sum on the tensor cores instead of in shared
    // memory), or null.
    BwdKernel same_as = nullptr;
};

static void run_case(const Variant& kv, unsigned batch, unsigned seqlen, unsigned dim, bool gate) {
    const unsigned N = 16, xw = 3 + 2 * N, rows = batch * seqlen;
    auto in = scan_inputs(rows, dim, N, xw, -4, 0, -2, 0.5, -2, 1);
    auto &u = in.u, &delta = in.delta, &bias = in.bias, &a = in.a, &xdbl = in.xdbl, &dsk = in.dsk, &xz = in.xz;
    auto dy = rand_vec((size_t)rows * dim, -1, 1);

    // The kernels.
    const unsigned split = 8, chunk = kv.chunk, cpb = 128 / split, nblk = (dim + cpb - 1) / cpb;
    const unsigned nck = (seqlen + chunk - 1) / chunk;
    std::vector<float> ckpt((size_t)batch * dim * nck * N), pbc((size_t)nblk * rows * 2 * N),
        pparam((size_t)batch * dim * (N + 2));
    std::vector<float> du((size_t)rows * dim, 7), ddelta((size_t)rows * dim, 7), dz((size_t)rows * 2 * dim, 0),
        dbc((size_t)rows * 2 * N, 7), da(dim * N, 0), dd(dim, 0), dbias(dim, 0);
    const float* zp = gate ? xz.data() + dim : nullptr;
    float* dzp = gate ? dz.data() + dim : nullptr;
    s6emu_launch({nblk, batch, 1}, 128, [&] {
        kv.kernel(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                         dsk.data(), zp, gate ? 2 * dim : 0, dy.data(), du.data(), ddelta.data(), 0u, dzp,
                         gate ? 2 * dim : 0, ckpt.data(), pbc.data(), pparam.data(), seqlen, dim, N);
    });
    if (kv.same_as) {
        // Every output against the kernel it restructures, on the same inputs: within a few fp32
        // roundings (the sums' order differs), the per-block dB/dC partials included.
        std::vector<float> ckpt2(ckpt.size()), pbc2(pbc.size()), pparam2(pparam.size()), du2(du.size(), 7),
            ddelta2(ddelta.size(), 7), dz2(dz.size(), 0);
        s6emu_launch({nblk, batch, 1}, 128, [&] {
            kv.same_as(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                       dsk.data(), zp, gate ? 2 * dim : 0, dy.data(), du2.data(), ddelta2.data(), 0u,
                       gate ? dz2.data() + dim : nullptr, gate ? 2 * dim : 0, ckpt2.data(), pbc2.data(),
                       pparam2.data(), seqlen, dim, N);
        });
        const double worst = std::max({rel_diff(du.data(), D(du2)), rel_diff(ddelta.data(), D(ddelta2)),
                                       rel_diff(dz.data(), D(dz2)), rel_diff(pbc.data(), D(pbc2)),
                                       rel_diff(pparam.data(), D(pparam2))});
        const bool ok = worst < 2e-6;
        if (!ok) failures++;
        std::printf("%-4s %-7s b%u l%-4u d%-3u gate %d every output against the kernel it restructures: %.2e\n",
                    ok ? "ok" : "FAIL", kv.name, batch, seqlen, dim, gate, worst);
    }
    // dΔ held in bf16 alone (bf16_out = 1), and with a gate dz too (3; dz a part of a [rows, 2 dim]
    // bf16 matrix, as the half of dxz it is): the f32 values rounded, bit for bit, every other
    // output as before, and nothing written outside dz's columns.
    for (unsigned flags : {1u, 3u}) {
        if (flags == 3 && !gate) continue;
        const bool dz16_on = flags & 2;
        std::vector<float> du2(du.size(), 7), dz2(dz.size(), 0), pbc2(pbc.size()), pparam2(pparam.size());
        std::vector<unsigned short> dd16(ddelta.size(), 0x7fc0), dz16(dz.size(), 0x7fc0);
        float* dzp2 = !gate ? nullptr : dz16_on ? reinterpret_cast<float*>(dz16.data() + dim) : dz2.data() + dim;
        s6emu_launch({nblk, batch, 1}, 128, [&] {
            kv.kernel(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                      dsk.data(), zp, gate ? 2 * dim : 0, dy.data(), du2.data(), reinterpret_cast<float*>(dd16.data()),
                      flags, dzp2, gate ? 2 * dim : 0, ckpt.data(), pbc2.data(), pparam2.data(), seqlen, dim, N);
        });
        bool same = du2 == du && pbc2 == pbc && pparam2 == pparam && (dz16_on || dz2 == dz);
        for (size_t i = 0; i < ddelta.size(); i++) same = same && dd16[i] == s6_f32_to_bf16(ddelta[i]);
        if (dz16_on) {
            for (size_t i = 0; i < dz.size(); i++) {
                const bool in_dz = i % (2 * dim) >= dim;
                same = same && dz16[i] == (in_dz ? s6_f32_to_bf16(dz[i]) : 0x7fc0);
            }
        }
        if (!same) failures++;
        std::printf("%-4s %-7s b%u l%-4u d%-3u gate %d %s in bf16 alone: the f32 values rounded, the rest unchanged\n",
                    same ? "ok" : "FAIL", kv.name, batch, seqlen, dim, gate, dz16_on ? "ddelta and dz" : "ddelta");
    }
    // The checkpoints given to n16r8 (S6B_CKPT_GIVEN): written by s6_scan_n16_ckpt8 (scan.cu, the
    // forward's recurrence), the backward without its own forward pass: every output the same
    // bits as above. (n16p ignores the flag.)
    if (chunk == 8) {
        std::vector<float> ckpt2(ckpt.size(), NAN), du2(du.size(), 7), ddelta2(ddelta.size(), 7), dz2(dz.size(), 0),
            pbc2(pbc.size()), pparam2(pparam.size());
        float* dzp2 = gate ? dz2.data() + dim : nullptr;
        s6emu_launch({(dim + 31) / 32, batch, 1}, 128, [&] {
            s6_scan_n16_ckpt8(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, ckpt2.data(), seqlen, dim);
        });
        s6emu_launch({nblk, batch, 1}, 128, [&] {
            kv.kernel(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                      dsk.data(), zp, gate ? 2 * dim : 0, dy.data(), du2.data(), ddelta2.data(), 4u, dzp2,
                      gate ? 2 * dim : 0, ckpt2.data(), pbc2.data(), pparam2.data(), seqlen, dim, N);
        });
        const bool same = du2 == du && ddelta2 == ddelta && dz2 == dz && pbc2 == pbc && pparam2 == pparam;
        if (!same) failures++;
        std::printf("%-4s %-7s b%u l%-4u d%-3u gate %d checkpoints from the forward's recurrence: the same bits\n",
                    same ? "ok" : "FAIL", kv.name, batch, seqlen, dim, gate);
    }
    const unsigned per = dim * (N + 2);
    s6emu_launch_serial({(per + 255) / 256, 1, 1}, 256, [&] {
        s6_scan_bwd_reduce_params(pparam.data(), batch, dim, N, da.data(), dd.data(), dbias.data());
    });
    s6emu_launch_serial({(rows * 2 * N + 255) / 256, 1, 1}, 256, [&] {
        s6_scan_bwd_reduce_bc(pbc.data(), nblk, rows, N, dbc.data(), 2 * N, dbc.data() + N, 2 * N);
    });

    // L(inputs) in f64.
    auto loss = [&](const std::vector<double>& U, const std::vector<double>& DL, const std::vector<double>& BI,
                    const std::vector<double>& A, const std::vector<double>& X, const std::vector<double>& DS,
                    const std::vector<double>& Z) {
        std::vector<double> st((size_t)batch * dim * N, 0.0), y;
        scan_ref(batch, seqlen, dim, U, DL, BI, A, X, xw, DS, gate ? Z : std::vector<double>{}, st, y);
        double l = 0;
        for (size_t i = 0; i < y.size(); i++) l += dy[i] * y[i];
        return l;
    };
    const auto U = D(u), DL = D(delta), BI = D(bias), A = D(a), X = D(xdbl), DS = D(dsk), Z = D(xz);
    // One input perturbed along V: which vector, and where its gradient is (index map).
    struct Check {
        const char* name;
        int which;  // 0 u, 1 delta, 2 bias, 3 A, 4 xdbl (B or C columns), 5 D, 6 xz (z columns)
        std::function<double(size_t)> grad;  // gradient at an index of that input, NaN where none
    };
    const std::vector<Check> checks = {
        {"du", 0, [&](size_t i) { return (double)du[i]; }},
        {"ddelta", 1, [&](size_t i) { return (double)ddelta[i]; }},
        {"ddelta_bias", 2, [&](size_t i) { return (double)dbias[i]; }},
        {"dA", 3, [&](size_t i) { return (double)da[i]; }},
        {"dB", 4, [&](size_t i) { size_t r = i / xw, c = i % xw; return c >= 3 && c < 3 + N ? (double)dbc[r * 2 * N + c - 3] : NAN; }},
        {"dC", 4, [&](size_t i) { size_t r = i / xw, c = i % xw; return c >= 3 + N && c < 3 + 2 * N ? (double)dbc[r * 2 * N + N + c - 3 - N] : NAN; }},
        {"dD", 5, [&](size_t i) { return (double)dd[i]; }},
        {"dz", 6, [&](size_t i) { size_t c = i % (2 * dim); return gate && c >= dim ? (double)dz[i] : NAN; }},
    };
    for (const auto& c : checks) {
        if (c.which == 6 && !gate) continue;
        for (int rep = 0; rep < 2; rep++) {
            std::vector<std::vector<double>> in = {U, DL, BI, A, X, DS, Z};
            auto& base = in[c.which];
            std::vector<double> v(base.size());
            double analytic = 0, scale = 0;
            std::uniform_real_distribution<double> dist(-1, 1);
            for (size_t i = 0; i < v.size(); i++) {
                const double g = c.grad(i);
                v[i] = std::isnan(g) ? 0 : dist(rng);
                if (!std::isnan(g)) analytic += g * v[i], scale += std::abs(g * v[i]);
            }
            const double eps = 1e-4;
            auto plus = in, minus = in;
            for (size_t i = 0; i < v.size(); i++) plus[c.which][i] += eps * v[i], minus[c.which][i] -= eps * v[i];
            const double numeric = (loss(plus[0], plus[1], plus[2], plus[3], plus[4], plus[5], plus[6]) -
                                    loss(minus[0], minus[1], minus[2], minus[3], minus[4], minus[5], minus[6])) /
                                   (2 * eps);
            const double err = std::abs(analytic - numeric) / (1e-4 * scale + 1e-6);
            const bool ok = err <= 1;
            if (!ok) failures++;
            std::printf("%-4s %-7s b%u l%-4u d%-3u gate %d %-12s G.V %.6g, finite differences %.6g (%.3f of the tolerance)\n",
                        ok ? "ok" : "FAIL", kv.name, batch, seqlen, dim, gate, c.name, analytic, numeric, err);
        }
    }
}

int main() {
    const Variant variants[] = {{"n16p", s6_scan_bwd_n16p, 12},
                                {"n16r8", s6_scan_bwd_n16r8, 8},
                                {"n16m8", s6_scan_bwd_n16m8, 8, s6_scan_bwd_n16r8},
                                {"n16pm", s6_scan_bwd_n16pm, 12, s6_scan_bwd_n16p}};
    for (const Variant& v : variants) {
        run_case(v, 2, 100, 40, true);
        run_case(v, 1, 257, 17, false);
        run_case(v, 3, 13, 33, true);
    }
    std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures != 0;
}
