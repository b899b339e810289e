// The scan forward kernels (kernels/scan.cu). d_state 16 (every block shape, f32 / bf16
// activations / f32 with a bf16 copy of y or y in bf16 alone / bf16 u, Δ, z and y with f32 B and C
// (x16), with and without segments and gate) run on the CPU
// through cuda_emu.h, against an f64 reference of the selective scan on random inputs: odd
// d_inner, sequence lengths not a multiple of the chunk, strided B, C and z, a state carried in
// and out, a slowly decaying state that crosses segments. Other d_state (3 to 64): the first
// structure's kernels with y in f32, with its bf16 rounding, and in bf16 alone. Run:
// scripts/emulate/run.sh
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/scan.cu"

#include "scan_ref.h"

static float bf16_round(float f) { return s6_bf16_to_f32(s6_f32_to_bf16(f)); }

struct Shape {
    const char* name;
    unsigned int cpb;
    void (*f32)(S6_SCAN_VEC_PARAMS(float, float), S6_SCAN_SEG_PARAMS, unsigned int, unsigned int, unsigned int);
    void (*b16)(S6_SCAN_VEC_PARAMS(float, float), unsigned short*, S6_SCAN_SEG_PARAMS, unsigned int, unsigned int,
                unsigned int);
    void (*bf16)(S6_SCAN_VEC_PARAMS(unsigned short, unsigned short), S6_SCAN_SEG_PARAMS, unsigned int, unsigned int,
                 unsigned int);
    void (*x16)(S6_SCAN_VEC_PARAMS(unsigned short, float), S6_SCAN_SEG_PARAMS, unsigned int, unsigned int,
                unsigned int);
    void (*seg_f32)(S6_SCAN_VEC_PARAMS(float, float), S6_SCAN_SEG_PARAMS, unsigned int, unsigned int, unsigned int);
    void (*seg_bf16)(S6_SCAN_VEC_PARAMS(unsigned short, unsigned short), S6_SCAN_SEG_PARAMS, unsigned int,
                     unsigned int, unsigned int);
    void (*seg_x16)(S6_SCAN_VEC_PARAMS(unsigned short, float), S6_SCAN_SEG_PARAMS, unsigned int, unsigned int,
                    unsigned int);
};
#define SHAPE(S, CPB)                                                                                        \
    Shape {                                                                                                  \
        #S, CPB, s6_scan_n16_##S, s6_scan_n16_##S##_b16, s6_scan_n16_bf16_##S, s6_scan_n16_x16_##S,           \
            s6_scan_n16_seg_##S, s6_scan_n16_seg_bf16_##S, s6_scan_n16_seg_x16_##S                            \
    }

// F32Only16: the f32 entry with a bf16 copy of y and y null (y in bf16 alone); X16: u, Δ, z in
// bf16 (z a strided view of a bf16 xz, as in_proj's output held in bf16 alone), B and C f32.
enum class Io { F32, F32Copy, F32Only16, Bf16, X16 };

static int failures = 0;

// One case: prints its worst error relative to the tolerance (at most 1 passes) and counts a
// failure.
static void run_case(const Shape& k, Io io, unsigned batch, unsigned seqlen, unsigned dim, bool gate, unsigned segs,
                     bool slow) {
    const unsigned N = 16, xw = 3 + 2 * N, rows = batch * seqlen;
    auto in = slow ? scan_inputs(rows, dim, N, xw, -5, -2, -2, -2, -2, 0.5)
                   : scan_inputs(rows, dim, N, xw, -3, 1, -2, 0.5, -1, 3);
    auto &u = in.u, &delta = in.delta, &bias = in.bias, &a = in.a, &xdbl = in.xdbl, &dsk = in.dsk, &xz = in.xz;
    auto state = rand_vec((size_t)batch * dim * N, -1, 1);
    if (io == Io::Bf16) {
        for (auto* v : {&u, &delta, &xdbl, &xz})
            for (auto& x : *v) x = bf16_round(x);
    }
    if (io == Io::X16) {
        for (auto* v : {&u, &delta, &xz})
            for (auto& x : *v) x = bf16_round(x);
    }
    // f64 reference.
    std::vector<double> want, want_state(state.begin(), state.end());
    scan_ref(batch, seqlen, dim, D(u), D(delta), D(bias), D(a), D(xdbl), xw, D(dsk), gate ? D(xz) : std::vector<double>{},
             want_state, want);
    // The kernels, launched as cuda/mod.rs does.
    unsigned len = seqlen, count = 1;
    if (segs > 1) {
        len = std::min(seqlen, ((seqlen + segs - 1) / segs + 63) / 64 * 64);
        count = (seqlen + len - 1) / len;
    }
    std::vector<float> seg_buf((size_t)batch * dim * (count ? count - 1 : 0) * 17 + 1);
    float* seg_h = seg_buf.data();
    float* seg_sum = seg_h + (size_t)batch * dim * (count - 1) * N;
    std::vector<float> st = state, y((size_t)rows * dim, 7.0f);
    std::vector<unsigned short> y16((size_t)rows * dim, 0);
    const float* zp = gate ? xz.data() + dim : nullptr;
    const unsigned ldz = gate ? 2 * dim : 0;
    s6emu_dim3 grid{(dim + k.cpb - 1) / k.cpb, batch, 1};
    auto to16 = [](const std::vector<float>& v) {
        std::vector<unsigned short> o(v.size());
        for (size_t i = 0; i < v.size(); i++) o[i] = s6_f32_to_bf16(v[i]);
        return o;
    };
    if (io == Io::X16) {
        // As cuda/scan_bf16.rs `selective_scan_x16`: B and C columns of the f32 xdbl, z the second
        // half of the bf16 xz (row stride 2 * dim), y written in bf16 alone.
        auto u16 = to16(u), d16 = to16(delta), xz16 = to16(xz);
        std::vector<unsigned short> yb((size_t)rows * dim, 0);
        const unsigned short* z16p = gate ? xz16.data() + dim : nullptr;
        if (count > 1) {
            grid.z = count - 1;
            s6emu_launch(grid, 4 * k.cpb, [&] {
                k.seg_x16(u16.data(), d16.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                          dsk.data(), z16p, ldz, st.data(), yb.data(), seg_h, seg_sum, len, seqlen, dim, N);
            });
        }
        grid.z = count;
        s6emu_launch(grid, 4 * k.cpb, [&] {
            k.x16(u16.data(), d16.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                  dsk.data(), z16p, ldz, st.data(), yb.data(), seg_h, seg_sum, len, seqlen, dim, N);
        });
        for (size_t i = 0; i < y.size(); i++) y[i] = s6_bf16_to_f32(yb[i]);
    } else if (io == Io::Bf16) {
        // The bf16 entry reads B, C and z as separate dense tensors (scan_bf16.rs).
        std::vector<float> bmat((size_t)rows * N), cmat((size_t)rows * N), zmat((size_t)rows * dim);
        for (size_t r = 0; r < rows; r++) {
            for (unsigned n = 0; n < N; n++) {
                bmat[r * N + n] = xdbl[r * xw + 3 + n];
                cmat[r * N + n] = xdbl[r * xw + 3 + N + n];
            }
            for (unsigned d = 0; d < dim; d++) zmat[r * dim + d] = xz[r * 2 * dim + dim + d];
        }
        auto u16 = to16(u), d16 = to16(delta), b16 = to16(bmat), c16 = to16(cmat), z16 = to16(zmat);
        std::vector<unsigned short> yb((size_t)rows * dim, 0);
        const unsigned short* z16p = gate ? z16.data() : nullptr;
        if (count > 1) {
            grid.z = count - 1;
            s6emu_launch(grid, 4 * k.cpb, [&] {
                k.seg_bf16(u16.data(), d16.data(), bias.data(), a.data(), b16.data(), N, c16.data(), N, dsk.data(),
                           z16p, dim, st.data(), yb.data(), seg_h, seg_sum, len, seqlen, dim, N);
            });
        }
        grid.z = count;
        s6emu_launch(grid, 4 * k.cpb, [&] {
            k.bf16(u16.data(), d16.data(), bias.data(), a.data(), b16.data(), N, c16.data(), N, dsk.data(), z16p,
                   dim, st.data(), yb.data(), seg_h, seg_sum, len, seqlen, dim, N);
        });
        for (size_t i = 0; i < y.size(); i++) y[i] = s6_bf16_to_f32(yb[i]);
    } else {
        if (count > 1) {
            grid.z = count - 1;
            s6emu_launch(grid, 4 * k.cpb, [&] {
                k.seg_f32(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                          dsk.data(), zp, ldz, st.data(), y.data(), seg_h, seg_sum, len, seqlen, dim, N);
            });
        }
        grid.z = count;
        s6emu_launch(grid, 4 * k.cpb, [&] {
            if (io == Io::F32Copy || io == Io::F32Only16)
                k.b16(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                      dsk.data(), zp, ldz, st.data(), io == Io::F32Copy ? y.data() : nullptr, y16.data(), seg_h,
                      seg_sum, len, seqlen, dim, N);
            else
                k.f32(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                      dsk.data(), zp, ldz, st.data(), y.data(), seg_h, seg_sum, len, seqlen, dim, N);
        });
    }
    if (io == Io::F32Only16) {
        // Nothing but y16 written: y keeps its fill; the values checked are y16's.
        for (size_t i = 0; i < y.size(); i++) {
            if (y[i] != 7.0f) failures++, std::printf("FAIL f32 y written at %zu under y16 alone\n", i);
            y[i] = s6_bf16_to_f32(y16[i]);
        }
    }
    // fp32: far tighter than the official tolerances (rtol 6e-4 / atol 2e-3), since the emulated
    // exp is libm's; bf16 (y rounded to bf16): 1e-2.
    const bool y_bf16 = io == Io::Bf16 || io == Io::X16 || io == Io::F32Only16;
    const double rtol = y_bf16 ? 1e-2 : 5e-5, atol = y_bf16 ? 1e-2 : 5e-5;
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < y.size(); i++) {
        const double e = std::abs(y[i] - want[i]) / (atol + rtol * std::abs(want[i]));
        if (!(e <= worst)) worst = e, at = i;
        if (io == Io::F32Copy && y16[i] != s6_f32_to_bf16(y[i])) worst = 1e9, at = i;
    }
    double worst_state = 0;
    for (size_t i = 0; i < st.size(); i++) {
        const double e = std::abs(st[i] - want_state[i]) / (5e-5 + 5e-5 * std::abs(want_state[i]));
        worst_state = std::max(worst_state, e);
    }
    const bool ok = worst <= 1 && worst_state <= 1;
    if (!ok) failures++;
    std::printf("%-4s %-9s %-6s b%u l%-5u d%-4u gate %d segments %u (asked %u) slow %d: y %.3f (at %zu: %g vs %g), state %.3f\n",
                ok ? "ok" : "FAIL", k.name,
                io == Io::F32         ? "f32"
                : io == Io::Bf16      ? "bf16"
                : io == Io::X16       ? "x16"
                : io == Io::F32Only16 ? "f32>16"
                                      : "f32+cp",
                batch, seqlen,
                dim, gate, count, segs, slow, worst, at, y[at], want[at], worst_state);
}

// The first structure's kernels (other d_state: s6_scan_n4 … s6_scan_n64, one per N range) with y
// in f32 and rounded to bf16 (y16), then from the same state with y null (y in bf16 alone): y and
// the state against the f64 reference, y16 the rounding of y bit for bit, the same bits without y.
using GenericScan = void (*)(const float*, const float*, const float*, const float*, const float*, unsigned int,
                             const float*, unsigned int, const float*, const float*, unsigned int, float*, float*,
                             unsigned short*, unsigned int, unsigned int, unsigned int);
static void generic_case(GenericScan kernel, unsigned N, unsigned batch, unsigned seqlen, unsigned dim, bool gate) {
    const unsigned xw = 3 + 2 * N + 1, rows = batch * seqlen;
    auto in = scan_inputs(rows, dim, N, xw, -3, 1, -2, 0.5, -1, 2);
    auto &u = in.u, &delta = in.delta, &bias = in.bias, &a = in.a, &xdbl = in.xdbl, &dsk = in.dsk, &xz = in.xz;
    auto state0 = rand_vec((size_t)batch * dim * N, -1, 1);
    std::vector<double> ref_state = D(state0), want;
    scan_ref(batch, seqlen, dim, D(u), D(delta), D(bias), D(a), D(xdbl), xw, D(dsk), gate ? D(xz) : std::vector<double>{},
             ref_state, want, N);
    const float* z = gate ? xz.data() + dim : nullptr;
    auto run = [&](std::vector<float>& state, float* y, std::vector<unsigned short>& y16) {
        s6emu_launch({(dim + 31) / 32, batch, 1}, 128, [&] {
            kernel(u.data(), delta.data(), bias.data(), a.data(), xdbl.data() + 3, xw, xdbl.data() + 3 + N, xw,
                   dsk.data(), z, 2 * dim, state.data(), y, y16.data(), seqlen, dim, N);
        });
    };
    std::vector<float> state = state0, y((size_t)rows * dim, 7.0f);
    std::vector<unsigned short> y16((size_t)rows * dim, 0);
    run(state, y.data(), y16);
    const double err = rel_diff(y.data(), want), serr = rel_diff(state.data(), ref_state);
    bool rounded = true;
    for (size_t i = 0; i < want.size(); i++) rounded = rounded && y16[i] == s6_f32_to_bf16(y[i]);
    std::vector<float> state2 = state0;
    std::vector<unsigned short> y16b((size_t)rows * dim, 0);
    run(state2, nullptr, y16b);
    const bool ok = err <= 1e-5 && serr <= 1e-5 && rounded && y16b == y16 && state2 == state;
    if (!ok) failures++;
    std::printf("%-4s generic N=%u b%u l%u d%u gate%d: y %.2e, state %.2e (of the largest), y16 the rounding of y: %d, "
                "the same without y: %d\n",
                ok ? "ok" : "FAIL", N, batch, seqlen, dim, gate, err, serr, rounded, y16b == y16);
}

int main() {
    generic_case(s6_scan_n4, 3, 2, 150, 45, true);
    generic_case(s6_scan_n8, 8, 1, 70, 33, false);
    generic_case(s6_scan_n32, 32, 2, 90, 40, true);
    generic_case(s6_scan_n64, 64, 2, 77, 37, true);
    generic_case(s6_scan_n64, 50, 1, 40, 32, false);
    const Shape shapes[] = {SHAPE(v4c32, 32), SHAPE(v4c16t64, 16)};
    for (const auto& k : shapes) {
        run_case(k, Io::F32, 2, 150, 100, true, 1, false);
        run_case(k, Io::F32, 1, 1000, 37, false, 1, true);
        run_case(k, Io::F32Copy, 3, 65, 48, true, 1, false);
        run_case(k, Io::Bf16, 2, 150, 100, true, 1, false);
        run_case(k, Io::Bf16, 1, 97, 20, false, 1, false);
        run_case(k, Io::F32, 2, 777, 33, true, 3, true);
        run_case(k, Io::F32, 1, 321, 20, false, 7, true);
        run_case(k, Io::Bf16, 1, 1100, 24, true, 2, true);
        run_case(k, Io::F32Copy, 1, 3, 40, true, 1, false);
        run_case(k, Io::F32Only16, 2, 150, 100, true, 1, false);
        run_case(k, Io::X16, 2, 150, 100, true, 1, false);
        run_case(k, Io::X16, 1, 97, 20, false, 1, false);
        run_case(k, Io::X16, 1, 1100, 24, true, 2, true);
    }
    std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures != 0;
}
