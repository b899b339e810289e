// The kernels of prefill's bf16 storage besides the scan's (session 17) run on the CPU through
// cuda_emu.h: the conv reading x held in bf16 alone (kernels/conv.cu: s6_conv_fwd_k4_vec4_x16, the
// state update s6_conv_state_update_x16), the RMSNorms writing their output in bf16 alone (a null
// f32 output) and reading the block output in bf16 (kernels/elementwise.cu:
// s6_add_rmsnorm_warp_d16), and the cast back (kernels/bf16.cu: s6_uncast_bf16). On values
// rounded to bf16 they must give the bits of the f32 kernels run on the same values widened, write
// no f32 output when given none, and the conv match an f64 reference. Run: scripts/emulate/run.sh
#include "cuda_emu.h"
#include "../../crates/s6/src/backend/cuda/kernels/prelude.cu"
#include "../../crates/s6/src/backend/cuda/kernels/elementwise.cu"
#include "../../crates/s6/src/backend/cuda/kernels/conv.cu"
#include "../../crates/s6/src/backend/cuda/kernels/bf16.cu"
#include "../../crates/s6/src/backend/cuda/kernels/train.cu"

#include "scan_ref.h"

static int failures = 0;

static void expect(bool ok, const char* what, unsigned batch, unsigned seqlen, unsigned ch) {
    if (!ok) failures++;
    std::printf("%-4s %s b%u l%u ch%u\n", ok ? "ok" : "FAIL", what, batch, seqlen, ch);
}

// One shape: x the first `ch` columns of a [rows, 2 ch] matrix (in_proj's xz), k = 4.
static void run_case(unsigned batch, unsigned seqlen, unsigned ch, bool with_state, bool with_bias) {
    const unsigned k = 4, ldx = 2 * ch, rows = batch * seqlen;
    auto xf = rand_vec((size_t)rows * ldx, -3, 3);
    std::vector<unsigned short> x16(xf.size());
    for (size_t i = 0; i < xf.size(); i++) {
        x16[i] = s6_f32_to_bf16(xf[i]);
        xf[i] = s6_bf16_to_f32(x16[i]);  // the f32 kernels get the same (rounded) values
    }
    auto w = rand_vec((size_t)ch * k, -1, 1);
    auto bias = rand_vec(ch, -0.5, 0.5);
    auto state0 = rand_vec((size_t)batch * (k - 1) * ch, -2, 2);
    const float* bp = with_bias ? bias.data() : nullptr;
    s6emu_dim3 grid{(ch / 4 + 127) / 128, (seqlen + S6_CONV_R - 1) / S6_CONV_R, batch};

    // f32 input, f32 + bf16 output (the existing kernel).
    std::vector<float> out_f(rows * ch, 7.0f);
    std::vector<unsigned short> out16_f(rows * ch, 0);
    std::vector<float> st_f = state0;
    s6emu_launch_serial(grid, 128, [&] {
        s6_conv_fwd_k4_vec4_b16(xf.data(), ldx, w.data(), bp, with_state ? st_f.data() : nullptr, out_f.data(),
                                out16_f.data(), batch, seqlen, ch, k);
    });
    // bf16 input, bf16 output alone.
    std::vector<unsigned short> out16_x(rows * ch, 0);
    std::vector<float> st_x = state0;
    s6emu_launch_serial(grid, 128, [&] {
        s6_conv_fwd_k4_vec4_x16(x16.data(), ldx, w.data(), bp, with_state ? st_x.data() : nullptr, nullptr,
                                out16_x.data(), batch, seqlen, ch, k);
    });
    expect(out16_x == out16_f, "conv x16: bf16 output equals the f32-input kernel's", batch, seqlen, ch);
    // And f32 written too when asked (out non-null), equal to the f32 kernel's.
    std::vector<float> out_x(rows * ch, 7.0f);
    s6emu_launch_serial(grid, 128, [&] {
        s6_conv_fwd_k4_vec4_x16(x16.data(), ldx, w.data(), bp, with_state ? st_x.data() : nullptr, out_x.data(),
                                out16_x.data(), batch, seqlen, ch, k);
    });
    expect(out_x == out_f, "conv x16: f32 output (when given) equals the f32-input kernel's", batch, seqlen, ch);
    // f64 reference of silu(bias + Σ_j w[c, j] x[t + j - 3]) with the state before t = 0.
    double worst = 0;
    for (unsigned b = 0; b < batch; b++)
        for (unsigned t = 0; t < seqlen; t++)
            for (unsigned c = 0; c < ch; c++) {
                double s = with_bias ? bias[c] : 0.0;
                for (unsigned j = 0; j < k; j++) {
                    const long long tt = (long long)t + j - (k - 1);
                    double v = 0;
                    if (tt >= 0)
                        v = xf[((size_t)b * seqlen + tt) * ldx + c];
                    else if (with_state)
                        v = state0[((size_t)b * (k - 1) + (tt + k - 1)) * ch + c];
                    s += (double)w[c * k + j] * v;
                }
                const double want = s / (1 + std::exp(-s));
                const double got = s6_bf16_to_f32(out16_x[((size_t)b * seqlen + t) * ch + c]);
                worst = std::max(worst, std::abs(got - want) / (1e-6 + std::abs(want)));
            }
    expect(worst < 1.0 / 128, "conv x16: within bf16 rounding of the f64 reference", batch, seqlen, ch);

    // The state update from bf16 x against the f32 one on the same values.
    if (with_state) {
        std::vector<float> su_f = state0, su_x = state0;
        s6emu_dim3 g1{(batch * ch + 255) / 256, 1, 1};
        s6emu_launch_serial(g1, 256, [&] { s6_conv_state_update(xf.data(), ldx, su_f.data(), batch, seqlen, ch, k); });
        s6emu_launch_serial(g1, 256, [&] { s6_conv_state_update_x16(x16.data(), ldx, su_x.data(), batch, seqlen, ch, k); });
        expect(su_x == su_f && su_f != state0, "conv state update x16 equals the f32 one", batch, seqlen, ch);
    }
}

// The block-per-row norm as it was before its elements were held in registers between the passes:
// element by element in both, the same order of sums (so the fused decoding block's norm, which
// repeats it, keeps its bits).
static __global__ void norm_block_elementwise_ref(float* residual, const float* delta, const float* w, float* out,
                                                  unsigned short* out16, unsigned int dim, float eps) {
    __shared__ float partial[1][32];
    const unsigned long long base = (unsigned long long)blockIdx.x * dim;
    float* r = residual + base;
    float ss[1] = {0.0f};
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = r[i] + delta[base + i];
        ss[0] = fmaf(v, v, ss[0]);
    }
    s6_block_sum_rows<1>(ss, partial);
    const float inv = rsqrtf(ss[0] / (float)dim + eps);
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = r[i] + delta[base + i];
        r[i] = v;
        const float o = v * inv * w[i];
        out[base + i] = o;
        out16[base + i] = s6_f32_to_bf16(o);
    }
}

// The block-per-row kernel against that reference, bit for bit, on any row length (the warp
// kernels take rows of at most 128 · S6_NORM_WARP_V4).
static void norm_block_case(unsigned rows, unsigned dim) {
    const float eps = 1e-5f;
    auto res0 = rand_vec((size_t)rows * dim, -2, 2);
    auto df = rand_vec((size_t)rows * dim, -1, 1);
    auto w = rand_vec(dim, 0.5, 1.5);
    std::vector<float> res_e = res0, out_e((size_t)rows * dim, 7.0f), res_r = res0, out_r((size_t)rows * dim, 7.0f);
    std::vector<unsigned short> o16_e((size_t)rows * dim, 0), o16_r((size_t)rows * dim, 0);
    s6emu_launch({rows, 1, 1}, 256, [&] {
        s6_add_rmsnorm_b16(res_e.data(), nullptr, df.data(), w.data(), out_e.data(), o16_e.data(), dim, eps);
    });
    s6emu_launch({rows, 1, 1}, 256, [&] {
        norm_block_elementwise_ref(res_r.data(), df.data(), w.data(), out_r.data(), o16_r.data(), dim, eps);
    });
    expect(res_e == res_r && out_e == out_r && o16_e == o16_r,
           "norm block (held in registers) has the element-by-element kernel's bits", rows, 1, dim);
}

// The add + RMSNorm kernels with bf16 storage: rows of `dim`, the block output `delta` rounded
// to bf16 (the d16 kernel reads the bits, the f32 kernels the widened values).
static void norm_case(unsigned rows, unsigned dim) {
    const float eps = 1e-5f;
    auto res0 = rand_vec((size_t)rows * dim, -2, 2);
    auto df = rand_vec((size_t)rows * dim, -1, 1);
    std::vector<unsigned short> d16(df.size());
    for (size_t i = 0; i < df.size(); i++) {
        d16[i] = s6_f32_to_bf16(df[i]);
        df[i] = s6_bf16_to_f32(d16[i]);
    }
    auto w = rand_vec(dim, 0.5, 1.5);
    const s6emu_dim3 warp_grid{(rows + S6_NORM_WARP_ROWS - 1) / S6_NORM_WARP_ROWS, 1, 1};
    const unsigned warp_threads = 32 * S6_NORM_WARP_ROWS;
    // The warp kernel, f32 delta, f32 and bf16 outputs: the reference bits.
    std::vector<float> res_a = res0, out_a((size_t)rows * dim, 7.0f);
    std::vector<unsigned short> o16_a((size_t)rows * dim, 0);
    s6emu_launch(warp_grid, warp_threads, [&] {
        s6_add_rmsnorm_warp_b16(res_a.data(), nullptr, df.data(), w.data(), out_a.data(), o16_a.data(), rows, dim, eps);
    });
    // The same with the output in bf16 alone.
    std::vector<float> res_b = res0;
    std::vector<unsigned short> o16_b((size_t)rows * dim, 0);
    s6emu_launch(warp_grid, warp_threads, [&] {
        s6_add_rmsnorm_warp_b16(res_b.data(), nullptr, df.data(), w.data(), nullptr, o16_b.data(), rows, dim, eps);
    });
    expect(res_b == res_a && o16_b == o16_a, "norm warp b16, output in bf16 alone", rows, 1, dim);
    // delta read as bf16, with and without the f32 output.
    std::vector<float> res_c = res0, out_c((size_t)rows * dim, 7.0f);
    std::vector<unsigned short> o16_c((size_t)rows * dim, 0);
    s6emu_launch(warp_grid, warp_threads, [&] {
        s6_add_rmsnorm_warp_d16(res_c.data(), nullptr, d16.data(), w.data(), out_c.data(), o16_c.data(), rows, dim, eps);
    });
    expect(res_c == res_a && out_c == out_a && o16_c == o16_a, "norm warp d16 equals the f32-delta kernel", rows, 1,
           dim);
    std::vector<float> res_d = res0;
    std::vector<unsigned short> o16_d((size_t)rows * dim, 0);
    s6emu_launch(warp_grid, warp_threads, [&] {
        s6_add_rmsnorm_warp_d16(res_d.data(), nullptr, d16.data(), w.data(), nullptr, o16_d.data(), rows, dim, eps);
    });
    expect(res_d == res_a && o16_d == o16_a, "norm warp d16, output in bf16 alone", rows, 1, dim);
    // The block-per-row kernel (fewer rows): output in bf16 alone against f32 + bf16.
    std::vector<float> res_e = res0, out_e((size_t)rows * dim, 7.0f), res_f = res0;
    std::vector<unsigned short> o16_e((size_t)rows * dim, 0), o16_f((size_t)rows * dim, 0);
    s6emu_launch({rows, 1, 1}, 256, [&] {
        s6_add_rmsnorm_b16(res_e.data(), nullptr, df.data(), w.data(), out_e.data(), o16_e.data(), dim, eps);
    });
    s6emu_launch({rows, 1, 1}, 256, [&] {
        s6_add_rmsnorm_b16(res_f.data(), nullptr, df.data(), w.data(), nullptr, o16_f.data(), dim, eps);
    });
    expect(res_f == res_e && o16_f == o16_e, "norm block b16, output in bf16 alone", rows, 1, dim);
    // The sum written to a separate residual (training keeps each block's input): the input left
    // as it was, the sum and the outputs those of the in-place kernels, warp and block, f32 and
    // bf16 deltas; with no delta the input copied.
    {
        std::vector<float> res_g = res0, sum_g((size_t)rows * dim, 7.0f), out_g((size_t)rows * dim, 7.0f);
        s6emu_launch(warp_grid, warp_threads, [&] {
            s6_add_rmsnorm_warp(res_g.data(), sum_g.data(), df.data(), w.data(), out_g.data(), rows, dim, eps);
        });
        std::vector<float> res_h = res0, sum_h((size_t)rows * dim, 7.0f);
        std::vector<unsigned short> o16_h((size_t)rows * dim, 0);
        s6emu_launch(warp_grid, warp_threads, [&] {
            s6_add_rmsnorm_warp_d16(res_h.data(), sum_h.data(), d16.data(), w.data(), nullptr, o16_h.data(), rows,
                                    dim, eps);
        });
        expect(res_g == res0 && sum_g == res_a && out_g == out_a && res_h == res0 && sum_h == res_a && o16_h == o16_a,
               "norm warp into a separate residual equals the in-place kernels", rows, 1, dim);
        std::vector<float> res_i = res0, sum_i((size_t)rows * dim, 7.0f), out_i((size_t)rows * dim, 7.0f);
        std::vector<unsigned short> o16_i((size_t)rows * dim, 0);
        s6emu_launch({rows, 1, 1}, 256, [&] {
            s6_add_rmsnorm_b16(res_i.data(), sum_i.data(), df.data(), w.data(), out_i.data(), o16_i.data(), dim, eps);
        });
        expect(res_i == res0 && sum_i == res_e && out_i == out_e && o16_i == o16_e,
               "norm block into a separate residual equals the in-place kernel", rows, 1, dim);
        std::vector<float> res_j = res0, sum_j((size_t)rows * dim, 7.0f), out_j((size_t)rows * dim, 7.0f);
        std::vector<float> res_k = res0, out_k((size_t)rows * dim, 7.0f);
        s6emu_launch(warp_grid, warp_threads, [&] {
            s6_add_rmsnorm_warp(res_j.data(), sum_j.data(), nullptr, w.data(), out_j.data(), rows, dim, eps);
        });
        s6emu_launch(warp_grid, warp_threads, [&] {
            s6_add_rmsnorm_warp(res_k.data(), nullptr, nullptr, w.data(), out_k.data(), rows, dim, eps);
        });
        expect(res_j == res0 && sum_j == res0 && res_k == res0 && out_j == out_k,
               "norm warp with no delta copies the residual into a separate one", rows, 1, dim);
    }
    // Against f64: out = (r + d) / rms(r + d) * w.
    double worst = 0;
    for (unsigned r = 0; r < rows; r++) {
        double ss = 0;
        for (unsigned c = 0; c < dim; c++) {
            const double v = (double)res0[(size_t)r * dim + c] + df[(size_t)r * dim + c];
            ss += v * v;
        }
        const double inv = 1 / std::sqrt(ss / dim + eps);
        for (unsigned c = 0; c < dim; c++) {
            const double v = (double)res0[(size_t)r * dim + c] + df[(size_t)r * dim + c];
            const double want = v * inv * w[c];
            worst = std::max(worst, std::abs(out_a[(size_t)r * dim + c] - want) / (1e-6 + std::abs(want)));
        }
    }
    expect(worst < 1e-5, "norm warp: within f32 rounding of the f64 reference", rows, 1, dim);
}

// The cross-entropy with its gradient held in bf16 alone (s6_cross_entropy_d16): the bits of the
// f32 kernel's gradient rounded, the same losses; rows of `vocab` (odd: rows at every offset mod
// 4, so the scalar head and tail run), one target ignored, the row cached in shared memory or
// not. The f32 kernel also against an f64 reference.
static void ce_case(unsigned rows, unsigned vocab, unsigned cache_row) {
    const float scale = 0.25f;
    auto logits = rand_vec((size_t)rows * vocab, -6, 6);
    std::vector<unsigned int> targets(rows);
    for (unsigned r = 0; r < rows; r++) targets[r] = (r * 7919u + 13u) % vocab;
    targets[rows / 2] = 0xffffffffu;
    std::vector<float> d32((size_t)rows * vocab, 7.0f);
    std::vector<unsigned short> d16((size_t)rows * vocab, 0x7fc0);
    std::vector<double> loss32(rows, -1.0), loss16(rows, -2.0);
    s6emu_launch({rows, 1, 1}, 128, [&] {
        s6_cross_entropy(logits.data(), targets.data(), d32.data(), loss32.data(), vocab, scale, cache_row);
    });
    s6emu_launch({rows, 1, 1}, 128, [&] {
        s6_cross_entropy_d16(logits.data(), targets.data(), d16.data(), loss16.data(), vocab, scale, cache_row);
    });
    bool same = loss16 == loss32;
    for (size_t i = 0; i < d32.size(); i++) same = same && d16[i] == s6_f32_to_bf16(d32[i]);
    expect(same, "cross-entropy d16: the f32 gradient rounded, the same losses", rows, cache_row, vocab);
    double worst = 0;
    for (unsigned r = 0; r < rows; r++) {
        const float* x = &logits[(size_t)r * vocab];
        double m = -1e300, z = 0;
        for (unsigned v = 0; v < vocab; v++) m = std::max(m, (double)x[v]);
        for (unsigned v = 0; v < vocab; v++) z += std::exp(x[v] - m);
        const bool ignored = targets[r] == 0xffffffffu;
        const double want_loss = ignored ? 0.0 : m + std::log(z) - x[targets[r]];
        worst = std::max(worst, std::abs(loss32[r] - want_loss));
        for (unsigned v = 0; v < vocab; v++) {
            double want = ignored ? 0.0 : scale * (std::exp(x[v] - m) / z - (v == targets[r] ? 1.0 : 0.0));
            worst = std::max(worst, std::abs(d32[(size_t)r * vocab + v] - want));
        }
    }
    expect(worst < 1e-5, "cross-entropy f32: within rounding of the f64 reference", rows, cache_row, vocab);
}

// The conv backward writing dx in bf16 alone (dx_bf16 = 1; dx the first ch columns of a
// [rows, 2 ch] matrix, as dxz's x half): the f32 kernel's dx rounded, bit for bit, nothing written
// outside dx's columns, and the weight partials as the f32 kernel's.
static void conv_bwd_case(unsigned batch, unsigned seqlen, unsigned ch, bool vec4) {
    const unsigned k = 4, ld = 2 * ch, rows = batch * seqlen, vec = vec4 ? 4 : 1;
    auto x = rand_vec((size_t)rows * ld, -3, 3);
    auto w = rand_vec((size_t)ch * k, -1, 1);
    auto bias = rand_vec(ch, -0.5, 0.5);
    auto dout = rand_vec((size_t)rows * ch, -1, 1);
    const unsigned seg = S6_CONV_BWD_BY * S6_CONV_BWD_SEG, nsb = (seqlen + seg - 1) / seg;
    const s6emu_dim3 grid{(ch / vec + 31) / 32, nsb, batch}, block{32, S6_CONV_BWD_BY, 1};
    auto kernel = vec4 ? s6_conv_bwd_k4_vec4 : s6_conv_bwd_k4_vec1;
    const size_t parts = (size_t)batch * nsb * (k + 1) * ch;
    std::vector<float> dx(rows * ld, 7.0f), part(parts, 0.0f), part16(parts, 0.0f);
    s6emu_launch_2d(grid, block, [&] {
        kernel(x.data(), ld, w.data(), bias.data(), dout.data(), dx.data(), ld, 0u, part.data(), batch, seqlen, ch,
               k, nsb);
    });
    std::vector<unsigned short> dx16(rows * ld, 0x7fc0);
    s6emu_launch_2d(grid, block, [&] {
        kernel(x.data(), ld, w.data(), bias.data(), dout.data(), reinterpret_cast<float*>(dx16.data()), ld, 1u,
               part16.data(), batch, seqlen, ch, k, nsb);
    });
    bool ok = part16 == part;
    for (size_t i = 0; i < dx.size(); i++) {
        const bool in_dx = i % ld < ch;
        ok = ok && dx16[i] == (in_dx ? s6_f32_to_bf16(dx[i]) : 0x7fc0) && (in_dx || dx[i] == 7.0f);
    }
    expect(ok, vec4 ? "conv backward (vec4): dx in bf16 alone is the f32 dx rounded"
                    : "conv backward (vec1): dx in bf16 alone is the f32 dx rounded",
           batch, seqlen, ch);
}

// The RMSNorm backward with the bf16 copy of its sum (dres16, training's residual gradient for
// the next out_proj backward): dres and the weight partials as without it, dres16 the new dres
// rounded, bit for bit (both the float4 and the scalar layout).
static void norm_bwd_case(unsigned rows, unsigned dim) {
    auto x = rand_vec((size_t)rows * dim, -2, 2);
    auto w = rand_vec(dim, 0.5, 1.5);
    auto dy = rand_vec((size_t)rows * dim, -1, 1);
    auto dres0 = rand_vec((size_t)rows * dim, -1, 1);
    const unsigned chunk_rows = 16, chunks = (rows + chunk_rows - 1) / chunk_rows;
    auto run = [&](unsigned short* d16, std::vector<float>& dres, std::vector<double>& part) {
        s6emu_launch({chunks, 1, 1}, 32 * S6_NORM_WARPS, [&] {
            s6_rmsnorm_bwd(x.data(), w.data(), dy.data(), dres.data(), d16, part.data(), rows, dim, chunk_rows, 1e-5f,
                           0u);
        });
    };
    std::vector<float> dres_a = dres0, dres_b = dres0;
    std::vector<double> part_a((size_t)chunks * dim), part_b((size_t)chunks * dim);
    std::vector<unsigned short> d16((size_t)rows * dim, 0x7fc0);
    run(nullptr, dres_a, part_a);
    run(d16.data(), dres_b, part_b);
    bool ok = dres_a == dres_b && part_a == part_b;
    for (size_t i = 0; i < d16.size(); i++) ok = ok && d16[i] == s6_f32_to_bf16(dres_b[i]);
    expect(ok, "rmsnorm backward: the bf16 copy of dres is dres rounded, the rest unchanged", 1, rows, dim);
}

int main() {
    ce_case(5, 1003, 1);
    ce_case(4, 1003, 0);
    ce_case(3, 4096, 1);
    norm_case(37, 768);
    norm_case(9, 2048);
    for (unsigned dim : {768u, 2048u, 2570u /* past the 8 · 256 held, a partial round */, 100u, 4096u})
        norm_block_case(7, dim);
    run_case(2, 37, 64, true, true);
    run_case(1, 3, 520, true, false);   // shorter than the kernel: the state's rows shift
    run_case(3, 8, 8, false, true);     // no state (zeros before t = 0)
    run_case(1, 1, 16, true, true);     // one step
    conv_bwd_case(2, 300, 64, true);    // several segment blocks, a partial last tile
    conv_bwd_case(1, 37, 132, true);
    conv_bwd_case(3, 9, 5, false);      // channels not a multiple of 4
    norm_bwd_case(40, 64);              // float4 layout
    norm_bwd_case(19, 37);              // scalar layout
    // s6_uncast_bf16: bf16 bits widened exactly.
    {
        auto v = rand_vec(1000, -1e4, 1e4);
        std::vector<unsigned short> h(v.size());
        for (size_t i = 0; i < v.size(); i++) h[i] = s6_f32_to_bf16(v[i]);
        std::vector<float> back(v.size(), 0.0f);
        s6emu_launch_serial({4, 1, 1}, 64, [&] { s6_uncast_bf16(h.data(), h.size(), back.data()); });
        bool ok = true;
        for (size_t i = 0; i < v.size(); i++) ok &= back[i] == s6_bf16_to_f32(h[i]);
        expect(ok, "uncast bf16 widens every value exactly", 1, 1000, 1);
    }
    std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures != 0;
}
