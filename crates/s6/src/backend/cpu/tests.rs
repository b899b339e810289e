//! Every CPU kernel against the f64 reference on fresh random inputs, with odd sizes (channels not
//! a multiple of the SIMD width, state sizes other than 16, sequences shorter than the kernel).

use super::*;
use crate::backend::{reference as r, ScanDims};
use crate::testutil::{assert_close, Rand};

/// Runs a test body with the portable kernels, then with the AVX2 ones when the CPU has them.
fn both_paths(f: impl Fn(&str)) {
    super::simd::PORTABLE_FOR_TESTS.with(|p| p.set(true));
    f("portable");
    super::simd::PORTABLE_FOR_TESTS.with(|p| p.set(false));
    f(if super::simd::has_avx2_fma() { "avx2" } else { "portable" });
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn linear_matches_reference_small_and_large_rows() {
    let mut rng = Rand::new(1);
    for &(rows, k, n, ld_extra, bias) in &[
        (1, 37, 29, 0, true),
        (3, 64, 130, 5, false),
        (8, 19, 7, 1, true),
        (33, 70, 45, 3, true),
        (100, 128, 256, 0, false),
    ] {
        let ld = k + ld_extra;
        let x = rng.vec(rows * ld + 3, 1.0);
        let w = rng.vec(n * k, 1.0);
        let b = rng.vec(n, 1.0);
        let mut out = vec![0.0; rows * n];
        let view = View { buf: &x, offset: 3, ld };
        Cpu.linear(view, rows, k, &w, n, bias.then_some(&b), &mut out).unwrap();
        let xc: Vec<f64> = (0..rows).flat_map(|i| f64s(&x[3 + i * ld..][..k])).collect();
        let want = r::linear(&xc, rows, k, &f64s(&w), n, bias.then(|| f64s(&b)).as_deref());
        assert_close(&out, &want, 1e-5, &format!("linear rows={rows} k={k} n={n}"));
    }
}

#[test]
fn linear_small_rows_every_row_count_and_odd_shapes() {
    // The decode kernel's paths: 1..=8 rows (one tile, or sweeps of 3 + 3 + 2), k not a multiple
    // of the 8-float chunk, n not a multiple of the 4-row block, serial and parallel sizes.
    both_paths(|path| {
        let mut rng = Rand::new(11);
        for rows in 1..=8 {
            for &(k, n) in &[(37, 5), (45, 13), (8, 4), (771, 13), (130, 301)] {
                let ld = k + 3;
                let x = rng.vec(rows * ld, 1.0);
                let w = rng.vec(n * k, 1.0);
                let b = rng.vec(n, 1.0);
                for bias in [false, true] {
                    let mut out = vec![f32::NAN; rows * n];
                    Cpu.linear(View::cols(&x, 1, ld), rows, k, &w, n, bias.then_some(&b), &mut out).unwrap();
                    let xc: Vec<f64> = (0..rows).flat_map(|i| f64s(&x[1 + i * ld..][..k])).collect();
                    let want = r::linear(&xc, rows, k, &f64s(&w), n, bias.then(|| f64s(&b)).as_deref());
                    assert_close(&out, &want, 1e-5, &format!("{path}: linear rows={rows} k={k} n={n} bias={bias}"));
                }
            }
        }
    });
}

#[test]
fn add_rmsnorm_matches_reference() {
    let mut rng = Rand::new(2);
    // A few rows (on the calling thread) and many (parallel).
    for (rows, dim) in [(7, 45), (30, 701)] {
        let res = rng.vec(rows * dim, 3.0);
        let delta = rng.vec(rows * dim, 1.0);
        let w = rng.vec(dim, 1.0);
        for with_delta in [false, true] {
            let mut got_res = res.clone();
            let mut out = vec![0.0; rows * dim];
            Cpu.add_rmsnorm(&mut got_res, with_delta.then_some(&delta), &w, 1e-5, rows, dim, &mut out).unwrap();
            let (want_res, want) =
                r::add_rmsnorm(&f64s(&res), with_delta.then(|| f64s(&delta)).as_deref(), &f64s(&w), 1e-5, dim);
            assert_close(&got_res, &want_res, 1e-6, "residual");
            assert_close(&out, &want, 1e-5, "rmsnorm");
            // Into a separate residual: the same values, the input left as it was.
            let (mut sum, mut out_into) = (vec![f32::NAN; rows * dim + 3], vec![0.0; rows * dim]);
            let delta_arg = with_delta.then_some(&delta);
            Cpu.add_rmsnorm_into(&res, delta_arg, &w, 1e-5, rows, dim, &mut sum, &mut out_into).unwrap();
            assert_eq!((&sum[..rows * dim], &out_into), (&got_res[..], &out));
        }
    }
}

#[test]
fn conv1d_silu_matches_reference_with_state() {
    both_paths(|path| {
        let mut rng = Rand::new(3);
        for &(batch, seqlen, ch, k, bias) in &[
            (2, 11, 13, 4, true),
            (1, 1, 21, 4, false),
            (3, 2, 9, 4, true),
            (2, 6, 40, 3, false),
            (1, 5, 8, 2, true),
            (1, 4, 5, 1, true),
            // Above the serial threshold: one parallel task per row.
            (2, 20, 1000, 4, true),
        ] {
            let ld = 2 * ch + 1;
            let x = rng.vec(batch * seqlen * ld + ch, 1.0);
            let w = rng.vec(ch * k, 1.0);
            let b = rng.vec(ch, 1.0);
            let state0 = rng.vec(batch * (k - 1) * ch, 1.0);
            let mut state = state0.clone();
            let mut out = vec![0.0; batch * seqlen * ch];
            let view = View { buf: &x, offset: ch, ld };
            Cpu.conv1d_silu(view, batch, seqlen, ch, k, &w, bias.then_some(&b), &mut state, &mut out).unwrap();
            let xc: Vec<f64> = (0..batch * seqlen).flat_map(|i| f64s(&x[ch + i * ld..][..ch])).collect();
            let (want, want_state) =
                r::conv1d_silu(&xc, batch, seqlen, ch, k, &f64s(&w), bias.then(|| f64s(&b)).as_deref(), &f64s(&state0));
            let what = format!("{path}: conv b={batch} l={seqlen} ch={ch} k={k}");
            assert_close(&out, &want, 1e-5, &what);
            assert_close(&state, &want_state, 0.0, &what);
        }
    });
}

#[test]
fn selective_scan_matches_reference() {
    both_paths(|path| {
        let mut rng = Rand::new(4);
        // Groups of 16 channels full and partial; state sizes on the stack (<= 16) and not (20, 24),
        // multiples of 8 (register transposes) and not; decode steps (seqlen 1) of several sequences.
        for &(batch, seqlen, d, n) in &[
            (2, 33, 19, 16),
            (1, 1, 8, 16),
            (3, 7, 24, 4),
            (1, 50, 5, 8),
            (2, 9, 130, 1),
            (3, 1, 48, 16),
            (2, 12, 40, 24),
            (1, 10, 33, 20),
        ] {
            // Mamba's gated scan with per-row B and C, then the ablations' forms: no gate, and B
            // and/or C one row broadcast to every step (ld = 0).
            for (gate, bcast_b, bcast_c) in
                [(true, false, false), (false, false, false), (true, true, true), (false, false, true)]
            {
                let rows = batch * seqlen;
                let u = rng.vec(rows * d, 1.0);
                // Raw Δ spanning both softplus branches.
                let delta: Vec<f32> = rng.vec(rows * d, 4.0);
                let bias = rng.vec(d, 1.0);
                let a: Vec<f32> = rng.vec(d * n, 1.0).iter().map(|v| -(v.abs() * 8.0 + 0.1)).collect();
                // B and C interleaved in one wider matrix, as x_proj produces them.
                let ld = 3 + 2 * n;
                let bc = rng.vec(rows * ld, 1.0);
                let dskip = rng.vec(d, 1.0);
                let zld = 2 * d;
                let z = rng.vec(rows * zld, 2.0);
                let state0 = rng.vec(batch * d * n, 1.0);
                let mut state = state0.clone();
                let mut y = vec![0.0; rows * d];
                let args = ScanArgs {
                    dims: ScanDims { batch, seqlen, d_inner: d, d_state: n },
                    u: &u,
                    delta: &delta,
                    delta_bias: &bias,
                    a: &a,
                    b: View { buf: &bc, offset: 3, ld: if bcast_b { 0 } else { ld } },
                    c: View { buf: &bc, offset: 3 + n, ld: if bcast_c { 0 } else { ld } },
                    d: &dskip,
                    z: gate.then_some(View { buf: &z, offset: d, ld: zld }),
                };
                Cpu.selective_scan(&args, &mut state, &mut y).unwrap();
                let col = |buf: &[f32], off: usize, ld: usize, w: usize| -> Vec<f64> {
                    (0..rows).flat_map(|i| f64s(&buf[off + i * ld..][..w])).collect()
                };
                let (want, want_state) = r::selective_scan(
                    batch,
                    seqlen,
                    d,
                    n,
                    &f64s(&u),
                    &f64s(&delta),
                    &f64s(&bias),
                    &f64s(&a),
                    &col(&bc, 3, if bcast_b { 0 } else { ld }, n),
                    &col(&bc, 3 + n, if bcast_c { 0 } else { ld }, n),
                    &f64s(&dskip),
                    gate.then(|| col(&z, d, zld, d)).as_deref(),
                    &f64s(&state0),
                );
                let what =
                    format!("{path}: scan b={batch} l={seqlen} d={d} n={n} gate={gate} bcast {bcast_b} {bcast_c}");
                assert_close(&y, &want, 2e-5, &what);
                assert_close(&state, &want_state, 2e-5, &what);
            }
        }
    });
}

#[test]
fn scan_in_chunks_equals_one_pass() {
    // Carrying the state across calls is what prefill-then-decode and chunked prefill rely on;
    // decode steps (seqlen 1) must give bit-identical results to a longer call.
    both_paths(|_| {
        let mut rng = Rand::new(5);
        let (seqlen, d, n) = (20, 16, 16);
        let u = rng.vec(seqlen * d, 1.0);
        let delta = rng.vec(seqlen * d, 1.0);
        let bias = rng.vec(d, 1.0);
        let a: Vec<f32> = rng.vec(d * n, 1.0).iter().map(|v| -(v.abs() + 0.5)).collect();
        let bc = rng.vec(seqlen * 2 * n, 1.0);
        let dskip = rng.vec(d, 1.0);
        let z = rng.vec(seqlen * d, 1.0);
        let run = |t0: usize, t1: usize, state: &mut Vec<f32>| -> Vec<f32> {
            let l = t1 - t0;
            let args = ScanArgs {
                dims: ScanDims { batch: 1, seqlen: l, d_inner: d, d_state: n },
                u: &u[t0 * d..t1 * d].to_vec(),
                delta: &delta[t0 * d..t1 * d].to_vec(),
                delta_bias: &bias,
                a: &a,
                b: View { buf: &bc, offset: t0 * 2 * n, ld: 2 * n },
                c: View { buf: &bc, offset: t0 * 2 * n + n, ld: 2 * n },
                d: &dskip,
                z: Some(View { buf: &z, offset: t0 * d, ld: d }),
            };
            let mut y = vec![0.0; l * d];
            Cpu.selective_scan(&args, state, &mut y).unwrap();
            y
        };
        let mut s_full = vec![0.0; d * n];
        let full = run(0, seqlen, &mut s_full);
        let mut s = vec![0.0; d * n];
        let mut parts = run(0, 7, &mut s);
        for t in 7..seqlen {
            parts.extend(run(t, t + 1, &mut s));
        }
        assert_eq!(full, parts);
        assert_eq!(s_full, s);
    });
}

#[test]
fn sum_rows_matches_reference_and_accumulates() {
    let mut rng = Rand::new(6);
    for &(rows, n, ld, off) in &[(1, 1, 1, 0), (37, 8, 8, 0), (20, 5, 11, 3), (300, 16, 40, 7), (0, 4, 4, 0)] {
        let src = rng.vec(off + rows * ld + 2, 1.0);
        let contiguous: Vec<f64> = (0..rows).flat_map(|r| f64s(&src[off + r * ld..][..n])).collect();
        let want = r::sum_rows(&contiguous, rows, n);
        let init = rng.vec(n, 1.0);
        let mut dst = init.clone();
        Cpu.sum_rows(View { buf: &src, offset: off, ld }, rows, n, &mut dst).unwrap();
        let want_acc: Vec<f64> = want.iter().zip(&init).map(|(w, i)| w + *i as f64).collect();
        assert_close(&dst, &want_acc, 1e-5, &format!("sum_rows rows={rows} n={n} ld={ld}"));
    }
    // A broadcast view (ld = 0): the row counted `rows` times.
    let src = vec![1.0, 2.0, 3.0];
    let mut dst = vec![0.0; 3];
    Cpu.sum_rows(View::broadcast(&src), 4, 3, &mut dst).unwrap();
    assert_eq!(dst, [4.0, 8.0, 12.0]);
    assert!(Cpu.sum_rows(View::full(&src, 3), 2, 3, &mut dst).is_err(), "short source");
    assert!(Cpu.sum_rows(View::full(&src, 3), 1, 3, &mut vec![0.0; 4]).is_err(), "wrong destination length");
}

#[test]
fn errors_instead_of_out_of_bounds() {
    let x = vec![0.0; 10];
    let w = vec![0.0; 4];
    let mut out = vec![0.0; 4];
    let e = Cpu.linear(View::full(&x, 4), 4, 4, &w, 1, None, &mut out).unwrap_err();
    assert!(e.to_string().contains("linear x"), "{e}");
    let table = vec![0.0; 20];
    let e = Cpu.embedding(&table, &[0, 5], 4, &mut vec![0.0; 8]).unwrap_err();
    assert!(e.to_string().contains("token id 5"), "{e}");
}
