//! The CUDA backend against the CPU backend (every forward op, random inputs, odd sizes) and
//! against the HF fixtures (whole models, greedy decoding). Compiled only with the `cuda` feature;
//! each test prints "skipped: no CUDA device" and passes when no GPU (or driver) is present.
#![cfg(feature = "cuda")]

mod common;

use common::{fixture, gpu, id_rows, model_from, Rng};

use s6::backend::cpu::Cpu;
use s6::backend::cuda::Cuda;
use s6::backend::{Backend, ScanArgs, ScanDims, View};
use s6::formats::tensors::TensorFile;
use s6::generate::{generate_tokens, Flow, GenerateOptions, SamplingParams};
use s6::model::{Logits, Mamba};

/// fp32 tolerances of the official kernels' tests.
const RTOL: f32 = 6e-4;
const ATOL: f32 = 2e-3;

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (ATOL + RTOL * w.abs());
        assert!(!g.is_nan(), "{what}: NaN at {i}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(worst.0 <= 0.0, "{what}: element {i}: got {} want {} (beyond rtol {RTOL} / atol {ATOL})", got[i], want[i]);
}

fn up(g: &Cuda, v: &[f32]) -> s6::backend::cuda::CudaBuf {
    g.from_vec(v.to_vec()).unwrap()
}

/// A buffer on the GPU pre-filled with NaN, so that any element a kernel fails to write shows.
fn poisoned(g: &Cuda, n: usize) -> s6::backend::cuda::CudaBuf {
    g.from_vec(vec![f32::NAN; n]).unwrap()
}

#[test]
fn embedding_and_gather_rows() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(1);
    let (vocab, dim) = (301, 45);
    let table = r.vec(vocab * dim, -1.0, 1.0);
    let ids: Vec<u32> = (0..37).map(|i| (i * 97 % vocab) as u32).collect();
    let mut want = vec![0.0; ids.len() * dim];
    Cpu.embedding(&table, &ids, dim, &mut want).unwrap();
    let mut out = poisoned(&g, ids.len() * dim);
    g.embedding(&up(&g, &table), &ids, dim, &mut out).unwrap();
    assert_close("embedding", &g.to_vec(&out).unwrap(), &want);

    let rows = [36usize, 0, 17, 17];
    let mut want = vec![0.0; rows.len() * dim];
    Cpu.gather_rows(&table, &rows, dim, &mut want).unwrap();
    let mut out = poisoned(&g, rows.len() * dim);
    g.gather_rows(&up(&g, &table), &rows, dim, &mut out).unwrap();
    assert_close("gather_rows", &g.to_vec(&out).unwrap(), &want);
}

#[test]
fn linear_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(2);
    // (rows, k, n, ld, offset, bias)
    for &(rows, k, n, ld, off, bias) in &[
        (1, 768, 1536, 768, 0, false),
        (37, 45, 301, 45, 0, true),
        (130, 5, 135, 21, 0, false),
        (64, 16, 33, 60, 7, true),
    ] {
        let x = r.vec(rows * ld + off, -1.0, 1.0);
        let w = r.vec(n * k, -0.5, 0.5);
        let b = r.vec(n, -1.0, 1.0);
        let mut want = vec![0.0; rows * n];
        Cpu.linear(View { buf: &x, offset: off, ld }, rows, k, &w, n, bias.then_some(&b), &mut want).unwrap();
        let (xg, wg, bg) = (up(&g, &x), up(&g, &w), up(&g, &b));
        let mut out = poisoned(&g, rows * n);
        g.linear(View { buf: &xg, offset: off, ld }, rows, k, &wg, n, bias.then_some(&bg), &mut out).unwrap();
        assert_close(&format!("linear {rows}x{k}x{n}"), &g.to_vec(&out).unwrap(), &want);
    }
}

/// `linear` with 1..=8 rows (the matrix-vector kernel, `s6_gemv_r*`) and 9 (cuBLAS) against the
/// CPU, every element: k with and without the 16-byte path (k % 4, odd view offsets), n from one
/// column to a vocabulary, with and without bias. The output starts as NaN, so a column the
/// kernel skips shows.
#[test]
fn linear_small_rows_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(21);
    for &k in &[5usize, 768, 1536, 2049] {
        for &n in &[1usize, 33, 1536, 50280] {
            // The vocabulary-sized product only for one k, and fewer row counts: keeps it fast.
            if n == 50280 && k != 768 {
                continue;
            }
            let w = r.vec(n * k, -0.5, 0.5);
            let b = r.vec(n, -1.0, 1.0);
            let (wg, bg) = (up(&g, &w), up(&g, &b));
            let all: &[usize] = if n == 50280 { &[1, 3, 8] } else { &[1, 2, 3, 5, 8, 9] };
            for (case, &rows) in all.iter().enumerate() {
                // Alternate: aligned dense rows without bias / odd offset and padded ld with bias.
                for &(off, pad, bias) in &[(0usize, 0usize, case % 2 == 0), (3, 7, case % 2 == 1)] {
                    let ld = k + pad;
                    let x = r.vec(off + rows * ld, -1.0, 1.0);
                    let mut want = vec![0.0; rows * n];
                    Cpu.linear(View { buf: &x, offset: off, ld }, rows, k, &w, n, bias.then_some(&b), &mut want)
                        .unwrap();
                    let xg = up(&g, &x);
                    let mut out = poisoned(&g, rows * n);
                    g.linear(View { buf: &xg, offset: off, ld }, rows, k, &wg, n, bias.then_some(&bg), &mut out)
                        .unwrap();
                    let what = format!("linear rows {rows} k {k} n {n} offset {off} ld {ld} bias {bias}");
                    assert_close(&what, &g.to_vec(&out).unwrap(), &want);
                }
            }
        }
    }
}

/// `Compute::Tf32` really switches the products to TF32 (errors of a 10-bit mantissa, far above
/// fp32's) and stays within bf16-like tolerances; `Compute::F32` switches back.
#[test]
fn tf32_products_are_close_and_switchable() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(12);
    let (rows, k, n) = (256, 1024, 512);
    let x = r.vec(rows * k, -1.0, 1.0);
    let w = r.vec(n * k, -1.0, 1.0);
    let mut want = vec![0.0; rows * n];
    Cpu.linear(View::full(&x, k), rows, k, &w, n, None, &mut want).unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (xg, wg) = (up(&g, &x), up(&g, &w));
    let err = |compute| {
        g.set_compute(compute).unwrap();
        let mut out = poisoned(&g, rows * n);
        g.linear(View::full(&xg, k), rows, k, &wg, n, None, &mut out).unwrap();
        g.to_vec(&out).unwrap().iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
    };
    let tf32 = err(s6::backend::Compute::Tf32);
    let f32 = err(s6::backend::Compute::F32);
    println!("max error relative to the largest output: tf32 {tf32:.2e}, f32 {f32:.2e}");
    assert!(tf32 > 1e-5 && tf32 < 1e-2, "tf32 error {tf32}");
    assert!(f32 < 1e-5, "f32 error {f32}");
}

/// `linear` in f64 on the host from bf16-rounded `x` and `w` (what `Compute::Bf16` multiplies),
/// plus the unrounded bias.
#[allow(clippy::too_many_arguments)]
fn linear_bf16_reference(
    x: &[f32],
    off: usize,
    ld: usize,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    use s6::backend::bf16_round;
    let wr: Vec<f64> = w.iter().map(|&v| bf16_round(v) as f64).collect();
    let mut out = vec![0.0f32; rows * n];
    for r in 0..rows {
        let xr: Vec<f64> = x[off + r * ld..off + r * ld + k].iter().map(|&v| bf16_round(v) as f64).collect();
        for j in 0..n {
            let dot: f64 = xr.iter().zip(&wr[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
            out[r * n + j] = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}

/// Largest `|got − want|` relative to the largest `|want|`; NaN (an unwritten element) fails.
#[track_caller]
fn bf16_rel_err(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| {
            assert!(g.is_finite(), "{what}: element {i} is {g}");
            (g - w).abs()
        })
        .fold(0f32, f32::max)
        / scale
}

/// `Compute::Bf16` `linear`: the bf16 matrix-vector kernel (1..=8 rows, its 16-byte, 8-byte and
/// 2-byte paths: k % 8, k % 4, odd k) and cuBLAS GemmEx (9, 17, 300 rows), dense and strided x,
/// with and without bias, against an f64 product of the bf16-rounded inputs (fp32 accumulation
/// noise only), and far from the fp32 product (the mode really rounds); `F32` switches back.
#[test]
fn bf16_linear_matches_rounded_reference() {
    use s6::backend::Compute;
    let Some(g) = gpu() else { return };
    let mut r = Rng(31);
    let mut worst_bf16 = 0f32;
    for &k in &[5usize, 45, 36, 1024] {
        for &n in &[33usize, 301] {
            let w = r.vec(n * k, -0.5, 0.5);
            let b = r.vec(n, -1.0, 1.0);
            let (wg, bg) = (up(&g, &w), up(&g, &b));
            for (case, &rows) in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 17, 300].iter().enumerate() {
                for &(off, pad, bias) in &[(0usize, 0usize, case % 2 == 0), (3, 7, case % 2 == 1)] {
                    let ld = k + pad;
                    let x = r.vec(off + rows * ld, -1.0, 1.0);
                    let bias_h = bias.then_some(&b[..]);
                    let want = linear_bf16_reference(&x, off, ld, rows, k, &w, n, bias_h);
                    let mut want_f32 = vec![0.0; rows * n];
                    Cpu.linear(View { buf: &x, offset: off, ld }, rows, k, &w, n, bias.then_some(&b), &mut want_f32)
                        .unwrap();
                    let xg = up(&g, &x);
                    let what = format!("bf16 linear rows {rows} k {k} n {n} offset {off} ld {ld} bias {bias}");
                    let run = |compute| {
                        g.set_compute(compute).unwrap();
                        let mut out = poisoned(&g, rows * n);
                        g.linear(View { buf: &xg, offset: off, ld }, rows, k, &wg, n, bias.then_some(&bg), &mut out)
                            .unwrap();
                        g.to_vec(&out).unwrap()
                    };
                    let got = run(Compute::Bf16);
                    let err = bf16_rel_err(&what, &got, &want);
                    worst_bf16 = worst_bf16.max(err);
                    assert!(err < 1e-5, "{what}: error {err:.2e} against the rounded-input reference");
                    let vs_f32 = bf16_rel_err(&what, &got, &want_f32);
                    assert!(vs_f32 > 1e-4, "{what}: only {vs_f32:.2e} from the fp32 product: not rounded to bf16?");
                    let f32_err = bf16_rel_err(&what, &run(Compute::F32), &want_f32);
                    assert!(f32_err < 1e-5, "{what}: F32 after Bf16: error {f32_err:.2e}");
                }
            }
        }
    }
    println!("worst bf16 error relative to the largest output: {worst_bf16:.2e}");
}

/// `Compute::Bf16` `linear` for each shape `(rows, k, n)`, with dense and strided x (as x_proj's
/// output feeds dt_proj) and a bias every other case, through the path under test (`path(true)`)
/// and cuBLAS `GemmEx` (`path(false)`): both within 1e-5 of the largest output of the f64 product
/// of the bf16-rounded inputs, and the path's bits the same when it runs again. Returns how many
/// outputs differ in bits between the two paths.
fn check_bf16_product_path(
    g: &Cuda,
    r: &mut Rng,
    name: &str,
    shapes: &[(usize, usize, usize)],
    path: &dyn Fn(bool),
) -> usize {
    let mut differs = 0;
    for (case, &(rows, k, n)) in shapes.iter().enumerate() {
        let w = r.vec(n * k, -0.5, 0.5);
        let b = r.vec(n, -1.0, 1.0);
        let (wg, bg) = (up(g, &w), up(g, &b));
        // (offset, row stride, bias)
        for &(off, ld, bias) in &[(0usize, k, case % 2 == 0), (2, k + 6, case % 2 == 1)] {
            let x = r.vec(off + rows * ld, -1.0, 1.0);
            let want = linear_bf16_reference(&x, off, ld, rows, k, &w, n, bias.then_some(&b[..]));
            let xg = up(g, &x);
            let what = format!("{name} linear rows {rows} k {k} n {n} offset {off} ld {ld} bias {bias}");
            let run = |on| {
                path(on);
                let mut out = poisoned(g, rows * n);
                g.linear(View { buf: &xg, offset: off, ld }, rows, k, &wg, n, bias.then_some(&bg), &mut out).unwrap();
                g.to_vec(&out).unwrap()
            };
            let got = run(true);
            let again = run(true);
            let blas = run(false);
            let err = bf16_rel_err(&what, &got, &want);
            assert!(err < 1e-5, "{what}: error {err:.2e} against the rounded-input reference");
            let err_blas = bf16_rel_err(&what, &blas, &want);
            assert!(err_blas < 1e-5, "{what}: GemmEx path error {err_blas:.2e}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&again), "{what}: other bits when run again");
            differs += got.iter().zip(&blas).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        }
    }
    differs
}

/// `Compute::Bf16` `linear` through the tensor-core kernel (`s6_mma_bf16`: more rows than the
/// GEMV takes, few columns or a short k; with and without splits of k, unsplit for many rows,
/// rows and columns that do not fill a tile, dense and strided x, with and without bias) against
/// the f64 product of the bf16-rounded inputs, and against cuBLAS's path (`set_mma_max_rows(0)`,
/// the default), which it must not merely be (its sums are ordered differently).
#[test]
fn bf16_tensor_core_products_match_rounded_reference() {
    use s6::backend::cuda::set_mma_max_rows;
    use s6::backend::Compute;
    let Some(g) = gpu() else { return };
    let mut r = Rng(37);
    g.set_compute(Compute::Bf16).unwrap();
    let shapes = [
        (9usize, 16usize, 8usize),
        (16, 48, 1536),
        (31, 1536, 80),
        (33, 128, 4096),
        (100, 4096, 160),
        (128, 128, 300),
        (256, 64, 33),
        (200, 512, 250),
        (47, 2048, 7),
        (40, 256, 96),
        // Enough tiles not to split k: each warp walks all of it (2 rounds of loads; 1 step).
        (22000, 1024, 80),
        (2048, 48, 1024),
    ];
    let path = |on: bool| set_mma_max_rows(if on { usize::MAX } else { 0 });
    let differs = check_bf16_product_path(&g, &mut r, "tensor-core", &shapes, &path);
    g.set_compute(Compute::F32).unwrap();
    set_mma_max_rows(0);
    assert!(differs > 0, "the tensor-core path gave cuBLAS's bits everywhere: was it used?");
}

/// cuBLASLt with a tuned algorithm per shape (`set_lt`, `S6_LT=1`; cuda/lt.rs) for bf16 products of
/// 9–256 rows: the products of the rounded inputs within fp32 summation error, dense and strided x,
/// with and without a bias, the same bits when a tuned shape runs again.
#[test]
fn bf16_cublaslt_products_match_rounded_reference() {
    use s6::backend::cuda::set_lt;
    use s6::backend::Compute;
    let Some(g) = gpu() else { return };
    let mut r = Rng(41);
    g.set_compute(Compute::Bf16).unwrap();
    // Decoding's shapes (1.4B x_proj, dt_proj, out_proj; 130M in_proj) and odd ones.
    let shapes = [
        (128usize, 4096usize, 160usize),
        (128, 128, 4096),
        (64, 4096, 2048),
        (256, 768, 3072),
        (9, 48, 1536),
        (33, 100, 7),
    ];
    check_bf16_product_path(&g, &mut r, "cuBLASLt", &shapes, &|on| set_lt(on));
    set_lt(false);
    g.set_compute(Compute::F32).unwrap();
}

/// The weights' bf16 copies follow every write to the weights (add_assign, AdamW, fill_zero,
/// a copy into a view through `linear`'s own output path): the next product uses the new values,
/// for the matrix-vector kernel (1 row) and cuBLAS (20 rows).
#[test]
fn bf16_weight_copies_follow_weight_updates() {
    use s6::backend::{AdamW, Compute};
    let Some(g) = gpu() else { return };
    g.set_compute(Compute::Bf16).unwrap();
    let mut r = Rng(32);
    let (k, n) = (64, 40);
    let mut wg = up(&g, &r.vec(n * k, -0.5, 0.5));
    for &rows in &[1usize, 20] {
        let x = r.vec(rows * k, -1.0, 1.0);
        let xg = up(&g, &x);
        let check = |wg: &s6::backend::cuda::CudaBuf, step: &str| {
            let w = g.to_vec(wg).unwrap();
            let want = linear_bf16_reference(&x, 0, k, rows, k, &w, n, None);
            let mut out = poisoned(&g, rows * n);
            g.linear(View::full(&xg, k), rows, k, wg, n, None, &mut out).unwrap();
            let got = g.to_vec(&out).unwrap();
            if want.iter().all(|&v| v == 0.0) {
                assert!(got.iter().all(|&v| v == 0.0), "rows {rows}, after {step}: zero weights, nonzero output");
            } else {
                let err = bf16_rel_err(step, &got, &want);
                assert!(err < 1e-5, "rows {rows}, after {step}: error {err:.2e}: stale bf16 weight copy?");
            }
        };
        check(&wg, "upload");
        check(&wg, "a second use");
        g.add_assign(&mut wg, &up(&g, &r.vec(n * k, -0.5, 0.5))).unwrap();
        check(&wg, "add_assign");
        let grad = up(&g, &r.vec(n * k, -1.0, 1.0));
        let (mut m, mut v) = (g.zeros(n * k).unwrap(), g.zeros(n * k).unwrap());
        let hp = AdamW { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 1, grad_scale: 1.0 };
        g.adamw_step(&mut wg, &grad, &mut m, &mut v, &hp).unwrap();
        check(&wg, "adamw_step");
        g.fill_zero(&mut wg).unwrap();
        check(&wg, "fill_zero");
        // A weight written as the output of a product (through ptr_mut).
        let src = r.vec(n * k, -1.0, 1.0);
        let eye: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
        g.set_compute(Compute::F32).unwrap();
        g.linear(View::full(&up(&g, &src), k), n, k, &up(&g, &eye), k, None, &mut wg).unwrap();
        g.set_compute(Compute::Bf16).unwrap();
        check(&wg, "being a product's output");
    }
}

#[test]
fn add_rmsnorm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(3);
    // Below 1,024 rows the block-per-row kernel; from there the warp-per-row one (dim a multiple
    // of 4, at most 2048), else the block-per-row one again.
    let shapes = [
        (3, 45, true),
        (5, 768, false),
        (2, 2048, true),
        (1, 1, true),
        (4, 1500, true),
        (9, 2048, true),
        (37, 768, false),
        (1024, 2048, true),
        (1500, 768, false),
        (1031, 4, true),
        (1100, 1500, true),
        (1030, 2052, true),
        (1025, 46, true),
    ];
    for &(rows, dim, with_delta) in &shapes {
        let res = r.vec(rows * dim, -2.0, 2.0);
        let delta = r.vec(rows * dim, -2.0, 2.0);
        let w = r.vec(dim, 0.5, 1.5);
        let mut res_cpu = res.clone();
        let mut want = vec![0.0; rows * dim];
        Cpu.add_rmsnorm(&mut res_cpu, with_delta.then_some(&delta), &w, 1e-5, rows, dim, &mut want).unwrap();
        let mut rg = up(&g, &res);
        let dg = up(&g, &delta);
        let mut out = poisoned(&g, rows * dim);
        g.add_rmsnorm(&mut rg, with_delta.then_some(&dg), &up(&g, &w), 1e-5, rows, dim, &mut out).unwrap();
        assert_close("add_rmsnorm out", &g.to_vec(&out).unwrap(), &want);
        assert_close("add_rmsnorm residual", &g.to_vec(&rg).unwrap(), &res_cpu);
        // The sum into a separate residual (training): the same bits as in place, the input kept.
        let res_in = up(&g, &res);
        let mut sum = poisoned(&g, rows * dim);
        let mut out_into = poisoned(&g, rows * dim);
        let wg = up(&g, &w);
        g.add_rmsnorm_into(&res_in, with_delta.then_some(&dg), &wg, 1e-5, rows, dim, &mut sum, &mut out_into).unwrap();
        assert_eq!(g.to_vec(&out_into).unwrap(), g.to_vec(&out).unwrap(), "add_rmsnorm_into out, {rows}x{dim}");
        assert_eq!(g.to_vec(&sum).unwrap(), g.to_vec(&rg).unwrap(), "add_rmsnorm_into sum, {rows}x{dim}");
        assert_eq!(g.to_vec(&res_in).unwrap(), res, "add_rmsnorm_into changed its input, {rows}x{dim}");
    }
}

/// The conv forward's shapes: `(batch, seqlen, channels, kernel, bias, col, ld, fresh)`; x is
/// columns `col..col + channels` of a `[rows, ld]` matrix; `fresh`: a zero initial state (a new
/// sequence), else a random one (a continued sequence). The kernels take float4 accesses when
/// channels, ld and col are multiples of 4 (x's pointer 16-byte aligned), else floats; k = 4 is
/// compiled for, other k take the general path; each thread covers 8 steps of one sequence.
type ConvCase = (usize, usize, usize, usize, bool, usize, usize, bool);
const CONV_SHAPES: &[ConvCase] = &[
    // k = 4, float4: seqlen not a multiple of 8, one tile, exact tiles, a tile plus one step.
    (2, 37, 136, 4, true, 0, 272, false),
    (3, 8, 64, 4, false, 0, 128, true),
    (2, 16, 32, 4, true, 32, 64, false),
    (2, 17, 32, 4, true, 0, 64, true),
    // k = 4: seqlen < k and seqlen = 1 (decoding) with a state, float4 and float.
    (3, 2, 64, 4, true, 0, 128, false),
    (3, 3, 64, 4, false, 64, 128, false),
    (4, 1, 1536, 4, true, 0, 3072, false),
    (3, 1, 37, 4, true, 0, 74, false),
    (2, 1, 64, 4, false, 2, 136, false),
    // Decoding many sequences (cuda/conv.rs: float4 from 16 on), float4 and float.
    (40, 1, 1536, 4, true, 0, 3072, false),
    (20, 1, 37, 4, false, 0, 74, false),
    // k = 4, float: channels not a multiple of 4; x unaligned (col 2, ld a multiple of 4); ld
    // not a multiple of 4 (col 0, channels a multiple of 4).
    (2, 300, 130, 4, false, 0, 260, false),
    (2, 19, 64, 4, true, 2, 136, false),
    (3, 21, 32, 4, true, 0, 34, true),
    // More than one block of channels (128 threads × 4), the last one partial.
    (2, 45, 1028, 4, true, 0, 2056, false),
    (1, 70, 1540, 4, false, 0, 3080, true),
    // Other k (the general path), float4 and float, bias or not, fresh or not.
    (2, 37, 135, 3, false, 0, 270, false),
    (2, 23, 64, 3, true, 64, 128, true),
    (2, 1000, 96, 2, true, 0, 192, false),
    (3, 9, 20, 2, false, 1, 40, false),
    (2, 3, 40, 5, true, 0, 80, false),
    (3, 2, 12, 5, false, 0, 24, false),
    (2, 13, 44, 5, true, 0, 88, true),
    (1, 5, 7, 1, false, 0, 14, false),
    (2, 9, 16, 1, true, 0, 32, false),
    (3, 41, 33, 9, true, 0, 66, false),
    (2, 30, 8, 17, true, 0, 16, false),
];

#[test]
fn conv1d_silu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(4);
    for &(batch, seqlen, ch, k, bias, col, ld, fresh) in CONV_SHAPES {
        let rows = batch * seqlen;
        let x = r.vec(rows * ld, -2.0, 2.0);
        let w = r.vec(ch * k, -1.0, 1.0);
        let b = r.vec(ch, -1.0, 1.0);
        let state = if fresh { vec![0.0; batch * (k - 1) * ch] } else { r.vec(batch * (k - 1) * ch, -2.0, 2.0) };
        let mut st_cpu = state.clone();
        let mut want = vec![0.0; rows * ch];
        Cpu.conv1d_silu(View::cols(&x, col, ld), batch, seqlen, ch, k, &w, bias.then_some(&b), &mut st_cpu, &mut want)
            .unwrap();
        let xg = up(&g, &x);
        let bg = up(&g, &b);
        let mut sg = up(&g, &state);
        let mut out = poisoned(&g, rows * ch);
        g.conv1d_silu(
            View::cols(&xg, col, ld),
            batch,
            seqlen,
            ch,
            k,
            &up(&g, &w),
            bias.then_some(&bg),
            &mut sg,
            &mut out,
        )
        .unwrap();
        let what = format!("conv1d b{batch} l{seqlen} c{ch} k{k} bias {bias} cols {col}.. of {ld} fresh {fresh}");
        assert_close(&what, &g.to_vec(&out).unwrap(), &want);
        assert_close(&format!("{what} state"), &g.to_vec(&sg).unwrap(), &st_cpu);
    }
}

/// One scan on both backends from the same random inputs and initial state.
fn check_scan(g: &Cuda, r: &mut Rng, batch: usize, seqlen: usize, di: usize, n: usize) {
    check_scan_with(g, r, (batch, seqlen, di, n), true, false);
}

/// `gate`: with `z` (else `None`); `broadcast_bc`: `B` and `C` as one row for every step (`ld = 0`,
/// the non-selective ablations).
fn check_scan_with(g: &Cuda, r: &mut Rng, dims: (usize, usize, usize, usize), gate: bool, broadcast_bc: bool) {
    check_scan_decaying(g, r, dims, gate, broadcast_bc, false);
}

/// `slow`: small Δ and |A| (Δ 0.001–0.02, |A| 0.14–1.6), so that a state carries over hundreds
/// of steps (with the default ranges it is forgotten within tens).
fn check_scan_decaying(
    g: &Cuda,
    r: &mut Rng,
    (batch, seqlen, di, n): (usize, usize, usize, usize),
    gate: bool,
    broadcast_bc: bool,
    slow: bool,
) {
    let rows = batch * seqlen;
    let xw = 3 + 2 * n; // x_proj's output: [δ (rank 3), B, C]
    let u = r.vec(rows * di, -2.0, 2.0);
    let delta = if slow { r.vec(rows * di, -5.0, -2.0) } else { r.vec(rows * di, -3.0, 1.0) };
    let delta_bias = if slow { r.vec(di, -2.0, -2.0) } else { r.vec(di, -2.0, 0.5) };
    let a_log = if slow { r.vec(di * n, -2.0, 0.5) } else { r.vec(di * n, -1.0, 3.0) };
    let a: Vec<f32> = a_log.iter().map(|v| -v.exp()).collect();
    let xdbl = r.vec(rows * xw, -1.5, 1.5);
    let dskip = r.vec(di, -1.0, 1.0);
    let xz = r.vec(rows * 2 * di, -3.0, 3.0);
    let state = r.vec(batch * di * n, -1.0, 1.0);
    let dims = ScanDims { batch, seqlen, d_inner: di, d_state: n };
    let ldbc = if broadcast_bc { 0 } else { xw };
    let cpu_args = ScanArgs {
        dims,
        u: &u,
        delta: &delta,
        delta_bias: &delta_bias,
        a: &a,
        b: View::cols(&xdbl, 3, ldbc),
        c: View::cols(&xdbl, 3 + n, ldbc),
        d: &dskip,
        z: gate.then(|| View::cols(&xz, di, 2 * di)),
    };
    let mut st_cpu = state.clone();
    let mut want = vec![0.0; rows * di];
    Cpu.selective_scan(&cpu_args, &mut st_cpu, &mut want).unwrap();

    let (ug, dg, dbg, ag, xg, dsg, zg) =
        (up(g, &u), up(g, &delta), up(g, &delta_bias), up(g, &a), up(g, &xdbl), up(g, &dskip), up(g, &xz));
    let args = ScanArgs {
        dims,
        u: &ug,
        delta: &dg,
        delta_bias: &dbg,
        a: &ag,
        b: View::cols(&xg, 3, ldbc),
        c: View::cols(&xg, 3 + n, ldbc),
        d: &dsg,
        z: gate.then(|| View::cols(&zg, di, 2 * di)),
    };
    let mut sg = up(g, &state);
    let mut y = poisoned(g, rows * di);
    g.selective_scan(&args, &mut sg, &mut y).unwrap();
    let what = format!("scan b{batch} l{seqlen} d{di} n{n} gate {gate} broadcast B/C {broadcast_bc}");
    assert_close(&what, &g.to_vec(&y).unwrap(), &want);
    assert_close(&format!("{what} state"), &g.to_vec(&sg).unwrap(), &st_cpu);
}

#[test]
fn selective_scan_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(5);
    // L not a multiple of the chunk (64), D not a multiple of the block (32 channels), N = 16
    // and N ≠ 16 (every kernel instantiation: 4, 8, 16, 32, 64 states per channel).
    for &(batch, seqlen, di, n) in &[
        (2, 1, 1536, 16),
        (2, 37, 135, 8),
        (3, 100, 200, 16),
        (1, 1000, 37, 16),
        (2, 130, 96, 4),
        (1, 65, 50, 3),
        (2, 70, 64, 32),
        (1, 33, 40, 20),
        (1, 40, 33, 64),
        (1, 17, 33, 48),
    ] {
        check_scan(&g, &mut r, batch, seqlen, di, n);
    }
    // The ablations' forms: no gate, non-selective B and C (one row for every step), both.
    for (gate, broadcast) in [(false, false), (true, true), (false, true)] {
        check_scan_with(&g, &mut r, (2, 100, 96, 16), gate, broadcast);
        check_scan_with(&g, &mut r, (1, 40, 33, 8), gate, broadcast);
    }
}

#[test]
fn selective_scan_segments_match_cpu() {
    // Few channels: the d_state-16 scans cut the sequence into segments run side by side (the
    // rule's choice, 1 or 2 here, then 2, 3 and 7 forced), a state carrying across them (slow
    // decay), segment lengths not multiples of the chunks and a last segment shorter than the
    // others.
    let Some(g) = gpu() else { return };
    let mut r = Rng(11);
    for forced in [None, Some(2), Some(3), Some(7)] {
        s6::backend::cuda::set_scan_segments(forced);
        for &(dims, gate) in
            &[((2, 1000, 40, 16), true), ((1, 777, 33, 16), false), ((3, 321, 20, 16), true), ((1, 64, 17, 16), true)]
        {
            check_scan_decaying(&g, &mut r, dims, gate, false, true);
        }
        check_scan(&g, &mut r, 1, 900, 48, 16);
    }
    s6::backend::cuda::set_scan_segments(None);
}

#[test]
fn selective_scan_n16_matches_cpu() {
    // N = 16 runs its own kernels (the vector scan: 16 channels per block and chunks of 64 steps
    // while those blocks fit the device in one wave, 32 and 32 beyond; `S6_SCAN_N16` forces one);
    // N = 9..15 the general one.
    let Some(g) = gpu() else { return };
    let mut r = Rng(6);
    check_scan(&g, &mut r, 2, 150, 100, 16);
    check_scan(&g, &mut r, 1, 3, 1536, 16);
    check_scan(&g, &mut r, 1, 70, 40, 12);
    // 16,386 channels: 32 channels per block, d_inner not a multiple of them.
    check_scan(&g, &mut r, 2, 45, 8193, 16);
    // 131,202 channels: many blocks per multiprocessor, d_inner not a multiple of the block's
    // channels and L not a multiple of the chunk.
    check_scan(&g, &mut r, 2, 21, 65_601, 16);
}

/// bf16 activations (`Cuda::selective_scan_bf16`): against the CPU scan of the same bf16 values
/// (bf16 tolerances: y is rounded to bf16), and, when no `S6_SCAN_N16` forces a kernel, bit for
/// bit against the fp32 kernel on those values with its y rounded to bf16 (the two are one
/// template: same operations, same order).
#[test]
fn selective_scan_bf16_matches_cpu_and_the_fp32_kernel() {
    use s6::backend::bf16_round;
    use s6::backend::cuda::scan_bf16::ScanBf16Args;
    let Some(g) = gpu() else { return };
    let same_kernel = std::env::var_os("S6_SCAN_N16").is_none();
    let mut r = Rng(8);
    let n = 16;
    for &(batch, seqlen, di, gate) in &[
        (2, 150, 100, true),
        (1, 3, 1536, true),
        (3, 65, 48, false),
        (2, 45, 8193, true),
        (1, 1100, 24, true),
        (2, 21, 65_601, true),
    ] {
        let rows = batch * seqlen;
        let rounded = |v: Vec<f32>| v.into_iter().map(bf16_round).collect::<Vec<f32>>();
        let u = rounded(r.vec(rows * di, -2.0, 2.0));
        let delta = rounded(r.vec(rows * di, -3.0, 1.0));
        let z = rounded(r.vec(rows * di, -3.0, 3.0));
        let b = rounded(r.vec(rows * n, -1.5, 1.5));
        let c = rounded(r.vec(rows * n, -1.5, 1.5));
        let delta_bias = r.vec(di, -2.0, 0.5);
        let a: Vec<f32> = r.vec(di * n, -1.0, 3.0).iter().map(|v| -v.exp()).collect();
        let dskip = r.vec(di, -1.0, 1.0);
        let state = r.vec(batch * di * n, -1.0, 1.0);
        let dims = ScanDims { batch, seqlen, d_inner: di, d_state: n };
        let what = format!("bf16 scan b{batch} l{seqlen} d{di} gate {gate}");

        let cpu_args = ScanArgs {
            dims,
            u: &u,
            delta: &delta,
            delta_bias: &delta_bias,
            a: &a,
            b: View::full(&b, n),
            c: View::full(&c, n),
            d: &dskip,
            z: gate.then(|| View::full(&z, di)),
        };
        let (mut st_cpu, mut want) = (state.clone(), vec![0.0; rows * di]);
        Cpu.selective_scan(&cpu_args, &mut st_cpu, &mut want).unwrap();

        let (ub, db, zb) = (g.bf16_tensor(&u).unwrap(), g.bf16_tensor(&delta).unwrap(), g.bf16_tensor(&z).unwrap());
        let (bb, cb) = (g.bf16_tensor(&b).unwrap(), g.bf16_tensor(&c).unwrap());
        let (dbg, ag, dsg) = (up(&g, &delta_bias), up(&g, &a), up(&g, &dskip));
        let args = ScanBf16Args {
            dims,
            u: &ub,
            delta: &db,
            delta_bias: &dbg,
            a: &ag,
            b: &bb,
            c: &cb,
            d: &dsg,
            z: gate.then_some(&zb),
        };
        let mut sg = up(&g, &state);
        let mut y = g.bf16_tensor(&vec![7.0; rows * di]).unwrap();
        g.selective_scan_bf16(&args, &mut sg, &mut y).unwrap();
        let got = g.bf16_to_vec(&y).unwrap();
        for (i, (&gv, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (gv - w).abs() <= 5e-2 + 3e-2 * w.abs(),
                "{what}: y[{i}] = {gv}, CPU {w} (beyond the bf16 tolerances rtol 3e-2 / atol 5e-2)"
            );
        }
        let st = g.to_vec(&sg).unwrap();
        assert_close(&format!("{what} state"), &st, &st_cpu);

        if same_kernel {
            let (uf, df, zf, bf, cf) = (up(&g, &u), up(&g, &delta), up(&g, &z), up(&g, &b), up(&g, &c));
            let f32_args = ScanArgs {
                dims,
                u: &uf,
                delta: &df,
                delta_bias: &dbg,
                a: &ag,
                b: View::full(&bf, n),
                c: View::full(&cf, n),
                d: &dsg,
                z: gate.then(|| View::full(&zf, di)),
            };
            let mut sf = up(&g, &state);
            let mut yf = poisoned(&g, rows * di);
            g.selective_scan(&f32_args, &mut sf, &mut yf).unwrap();
            let yf: Vec<f32> = g.to_vec(&yf).unwrap().into_iter().map(bf16_round).collect();
            assert!(
                got.iter().zip(&yf).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: y differs from the fp32 kernel's, rounded"
            );
            assert!(
                g.to_vec(&sf).unwrap().iter().zip(&st).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: state differs from the fp32 kernel's"
            );
        }
    }
}

#[test]
fn clone_add_fill() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(7);
    let a = r.vec(1001, -1.0, 1.0);
    let b = r.vec(1001, -1.0, 1.0);
    let ga = up(&g, &a);
    let mut c = g.clone_buf(&ga).unwrap();
    g.add_assign(&mut c, &up(&g, &b)).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close("add_assign", &g.to_vec(&c).unwrap(), &want);
    assert_close("clone source untouched", &g.to_vec(&ga).unwrap(), &a);
    g.fill_zero(&mut c).unwrap();
    assert!(g.to_vec(&c).unwrap().iter().all(|&v| v == 0.0));
    assert_eq!(g.len(&c), 1001);
    let empty = g.zeros(0).unwrap();
    assert_eq!(g.len(&empty), 0);
    assert!(g.to_vec(&empty).unwrap().is_empty());
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn fixtures_logits_and_greedy_match_hf() {
    let Some(g) = gpu() else { return };
    for name in ["mamba-tiny", "mamba-odd", "mamba-bf16", "mamba-rank-auto", "mamba-sharded"] {
        let dir = fixture(name);
        let model = Mamba::load(g.clone(), &dir).unwrap();
        let exp = TensorFile::open(&dir.join("expected.safetensors")).unwrap();
        let ids = id_rows(&exp, "input_ids");
        let (want, _) = exp.f32("logits").unwrap();
        let (batch, seqlen) = (ids.len(), ids[0].len());
        let mut state = model.new_state(batch).unwrap();
        let logits = g.to_vec(&model.forward(&ids.concat(), batch, seqlen, &mut state, Logits::All).unwrap()).unwrap();
        let err = max_rel_err(&logits, &want);
        println!("{name}: logits vs HF, max error / max |logit| = {err:.2e}");
        assert!(err <= 1e-4, "{name}: GPU logits differ from HF by {err:.2e}");

        let prompts = id_rows(&exp, "greedy_prompt");
        let greedy = id_rows(&exp, "greedy");
        let opts = GenerateOptions {
            max_tokens: greedy[0].len(),
            sampling: SamplingParams { temperature: 0.0, ..Default::default() },
            ..Default::default()
        };
        let (out, _, _) = generate_tokens(&model, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap();
        assert_eq!(out, greedy, "{name}: GPU greedy continuation differs from HF");
    }
}

#[test]
fn greedy_decoding_equals_cpu() {
    let Some(g) = gpu() else { return };
    // A random model with the real d_inner / d_state of mamba-130m's blocks (fewer layers, small
    // vocabulary), prompts of different lengths (prefill in chunks, then steps), 40 new tokens.
    let mut cfg = s6::config::MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 11);
    let cpu_model = model_from(Cpu, &cfg, &params);
    let gpu_model = model_from(g.clone(), &cfg, &params);
    let prompts: Vec<Vec<u32>> = vec![(0..300).map(|i| (i * 7 % 512) as u32).collect(), vec![5, 9, 200], vec![77]];
    let opts = GenerateOptions {
        max_tokens: 40,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        ..Default::default()
    };
    let (want, _, _) = generate_tokens(&cpu_model, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap();
    let (got, _, _) = generate_tokens(&gpu_model, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap();
    assert_eq!(got, want, "GPU greedy decoding differs from CPU");
    // Prefill in chunks + steps equals the full forward on the GPU too.
    let ids: Vec<u32> = prompts[0][..64].to_vec();
    let mut st = gpu_model.new_state(1).unwrap();
    let full = g.to_vec(&gpu_model.forward(&ids, 1, 64, &mut st, Logits::All).unwrap()).unwrap();
    let mut st2 = gpu_model.new_state(1).unwrap();
    let _ = gpu_model.prefill(&ids[..50], 1, 50, &mut st2, 16).unwrap();
    for (t, &id) in ids.iter().enumerate().skip(50) {
        let l = g.to_vec(&gpu_model.step(&[id], &mut st2).unwrap()).unwrap();
        let err = max_rel_err(&l, &full[t * 512..(t + 1) * 512]);
        assert!(err <= 1e-4, "step {t}: differs from the full forward by {err:.2e}");
    }
}

/// Every `.cu` file compiles with NVRTC for the H200's architecture. Runs wherever NVRTC can be
/// loaded, GPU or not (set LD_LIBRARY_PATH to a CUDA toolkit's lib directory), so a kernel that
/// does not compile is caught before a GPU run; says "skipped" without NVRTC.
#[test]
fn kernels_compile_with_nvrtc() {
    match s6::backend::cuda::compile_all_kernels("sm_90") {
        Err(e) if e.to_string().contains("cannot be loaded") => println!("skipped: {e}"),
        r => r.unwrap(),
    }
}
