//! The CUDA backend's training ops against the CPU backend (random inputs, odd sizes, offsets and
//! row strides in views, the "accumulated" outputs pre-filled so that `+=` is checked), whole-model
//! gradients on the GPU against the CPU (Mamba, an ablation, the Transformer baseline) and against
//! PyTorch autograd directly (the fixtures' `expected_grads.safetensors`), the multi-tensor
//! optimizer ops against their per-tensor forms (bitwise), and a 200-step training run from the
//! same init and data on both. Compiled only with the `cuda`
//! feature; each test prints "skipped: no CUDA device" and passes when no GPU is present.
#![cfg(feature = "cuda")]

mod common;

use common::{gpu, Rng};

use s6::backend::cpu::Cpu;
use s6::backend::cuda::{Cuda, CudaBuf};
use s6::backend::{AdamW, AttnDims, Backend, View, ViewMut};
use s6::config::{Ablation, InitConfig, MambaConfig};
use s6::formats::tensors::TensorFile;
use s6::model::init::init_params;
use s6::model::{LanguageModel, Mamba, Transformer, TransformerConfig};
use s6::train::optim::{adamw_update, global_norm, AdamState, OptimConfig, Schedule};

/// fp32 tolerances of the official kernels' tests.
const RTOL: f32 = 6e-4;
const ATOL: f32 = 2e-3;

/// `|got − want| ≤ atol·unit + rtol·|want|` elementwise, `unit` = 1 or (for long sums) the
/// largest `|want|`. Reports the worst element.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], relative_to_max: bool) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let unit = if relative_to_max { want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30) } else { 1.0 };
    let mut worst = (0.0f32, usize::MAX);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w}): not written or overflowed");
        let excess = (g - w).abs() - (ATOL * unit + RTOL * w.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    if worst.1 != usize::MAX {
        let i = worst.1;
        panic!(
            "{what}: element {i}: got {} want {} (beyond rtol {RTOL} / atol {ATOL}{})",
            got[i],
            want[i],
            if relative_to_max { format!(" × max {unit:.3e}") } else { String::new() }
        );
    }
}

fn up(g: &Cuda, v: &[f32]) -> CudaBuf {
    g.from_vec(v.to_vec()).unwrap()
}

fn down(g: &Cuda, b: &CudaBuf) -> Vec<f32> {
    g.to_vec(b).unwrap()
}

#[test]
fn linear_backward_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(11);
    for &(rows, k, n, with_dx, with_db) in &[
        (37usize, 45usize, 29usize, true, true),
        (130, 64, 257, true, false),
        (5, 3, 7, false, true),
        (1, 1, 1, true, true),
    ] {
        // x: columns 3.. of a [rows, k + 7] matrix; dx: columns 2.. of a [rows, k + 5] matrix.
        let (ldx, offx, lddx, offdx) = (k + 7, 3, k + 5, 2);
        let x = r.vec(rows * ldx, -1.0, 1.0);
        let w = r.vec(n * k, -0.5, 0.5);
        let dy = r.vec(rows * n, -1.0, 1.0);
        let dw0 = r.vec(n * k, -1.0, 1.0);
        let db0 = r.vec(n, -1.0, 1.0);
        let dx0 = r.vec(rows * lddx, -1.0, 1.0);

        let (mut dw, mut db, mut dx) = (dw0.clone(), db0.clone(), dx0.clone());
        Cpu.linear_backward(
            View::cols(&x, offx, ldx),
            rows,
            k,
            &w,
            n,
            &dy,
            with_dx.then(|| ViewMut::cols(&mut dx, offdx, lddx)),
            &mut dw,
            with_db.then_some(&mut db),
        )
        .unwrap();

        let (xg, wg, dyg) = (up(&g, &x), up(&g, &w), up(&g, &dy));
        let (mut dwg, mut dbg, mut dxg) = (up(&g, &dw0), up(&g, &db0), up(&g, &dx0));
        g.linear_backward(
            View::cols(&xg, offx, ldx),
            rows,
            k,
            &wg,
            n,
            &dyg,
            with_dx.then(|| ViewMut::cols(&mut dxg, offdx, lddx)),
            &mut dwg,
            with_db.then_some(&mut dbg),
        )
        .unwrap();
        let tag = format!("linear_backward rows {rows} k {k} n {n}");
        // dx: written into the view only; the columns outside it keep their values.
        check(&format!("{tag} dx"), &down(&g, &dxg), &dx, false);
        check(&format!("{tag} dw (+=)"), &down(&g, &dwg), &dw, true);
        check(&format!("{tag} db (+=)"), &down(&g, &dbg), &db, true);
        if with_dx {
            // linear_backward_add_dx: dx accumulated into the view (beta = 1), as on the CPU.
            let (mut dx_add, mut dw_add) = (dx0.clone(), dw0.clone());
            let xv = View::cols(&x, offx, ldx);
            let dxv = ViewMut::cols(&mut dx_add, offdx, lddx);
            Cpu.linear_backward_add_dx(xv, rows, k, &w, n, &dy, dxv, &mut dw_add, None).unwrap();
            let (mut dxg_add, mut dwg_add) = (up(&g, &dx0), up(&g, &dw0));
            let dxv = ViewMut::cols(&mut dxg_add, offdx, lddx);
            g.linear_backward_add_dx(View::cols(&xg, offx, ldx), rows, k, &wg, n, &dyg, dxv, &mut dwg_add, None)
                .unwrap();
            check(&format!("{tag} dx (added)"), &down(&g, &dxg_add), &dx_add, true);
            check(&format!("{tag} dw (dx added)"), &down(&g, &dwg_add), &dw_add, true);
        }
    }
}

/// `Compute::Bf16` `linear_backward` against f64 sums of the bf16-rounded inputs: `dx = dy·W`
/// (through its view), `dW += dyᵀ·x` onto non-zero values; `db` stays an fp32 sum of the
/// unrounded `dy`. The bigger cases must also differ from fp32 (the mode really rounds).
#[test]
fn bf16_linear_backward_matches_rounded_reference() {
    use s6::backend::{bf16_round, Compute};
    let Some(g) = gpu() else { return };
    g.set_compute(Compute::Bf16).unwrap();
    let mut r = Rng(41);
    let bf = |v: &[f32]| v.iter().map(|&a| bf16_round(a) as f64).collect::<Vec<f64>>();
    for &(rows, k, n, with_dx, with_db) in &[
        (37usize, 45usize, 29usize, true, true),
        (130, 64, 257, true, false),
        (300, 96, 40, true, true),
        (5, 3, 7, false, true),
        (1, 1, 1, true, true),
    ] {
        let (ldx, offx, lddx, offdx) = (k + 7, 3, k + 5, 2);
        let x = r.vec(rows * ldx, -1.0, 1.0);
        let w = r.vec(n * k, -0.5, 0.5);
        let dy = r.vec(rows * n, -1.0, 1.0);
        let dw0 = r.vec(n * k, -1.0, 1.0);
        let db0 = r.vec(n, -1.0, 1.0);
        let dx0 = r.vec(rows * lddx, -1.0, 1.0);
        let (xr, wr, dyr) = (bf(&x), bf(&w), bf(&dy));

        // f64 references (dx outside its view keeps dx0; dw and db accumulate).
        let mut dx_want = dx0.clone();
        let mut dw_want = vec![0.0f32; n * k];
        let mut db_want = vec![0.0f32; n];
        for rr in 0..rows {
            for c in 0..k {
                let s: f64 = (0..n).map(|j| dyr[rr * n + j] * wr[j * k + c]).sum();
                dx_want[rr * lddx + offdx + c] = s as f32;
            }
        }
        for j in 0..n {
            for c in 0..k {
                let s: f64 = (0..rows).map(|rr| dyr[rr * n + j] * xr[rr * ldx + offx + c]).sum();
                dw_want[j * k + c] = (dw0[j * k + c] as f64 + s) as f32;
            }
            db_want[j] = (db0[j] as f64 + (0..rows).map(|rr| dy[rr * n + j] as f64).sum::<f64>()) as f32;
        }

        let (xg, wg, dyg) = (up(&g, &x), up(&g, &w), up(&g, &dy));
        let (mut dwg, mut dbg, mut dxg) = (up(&g, &dw0), up(&g, &db0), up(&g, &dx0));
        g.linear_backward(
            View::cols(&xg, offx, ldx),
            rows,
            k,
            &wg,
            n,
            &dyg,
            with_dx.then(|| ViewMut::cols(&mut dxg, offdx, lddx)),
            &mut dwg,
            with_db.then_some(&mut dbg),
        )
        .unwrap();
        let tag = format!("bf16 linear_backward rows {rows} k {k} n {n}");
        let rel = |what: &str, got: &[f32], want: &[f32]| {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            got.iter()
                .zip(want)
                .enumerate()
                .map(|(i, (a, b))| {
                    assert!(a.is_finite(), "{tag} {what}: element {i} is {a}");
                    (a - b).abs()
                })
                .fold(0f32, f32::max)
                / scale
        };
        if with_dx {
            let e = rel("dx", &down(&g, &dxg), &dx_want);
            assert!(e < 1e-5, "{tag}: dx error {e:.2e} against the rounded-input reference");
            // linear_backward_add_dx: the same gradient added to dx0 inside the view.
            let mut dxg_add = up(&g, &dx0);
            let mut dw_scratch = up(&g, &dw0);
            let dxv = ViewMut::cols(&mut dxg_add, offdx, lddx);
            g.linear_backward_add_dx(View::cols(&xg, offx, ldx), rows, k, &wg, n, &dyg, dxv, &mut dw_scratch, None)
                .unwrap();
            let mut add_want = dx0.clone();
            for rr in 0..rows {
                for c in 0..k {
                    let i = rr * lddx + offdx + c;
                    add_want[i] = (dx0[i] as f64 + (dx_want[i] as f64)) as f32;
                }
            }
            let e = rel("dx added", &down(&g, &dxg_add), &add_want);
            assert!(e < 1e-5, "{tag}: added dx error {e:.2e} against the rounded-input reference");
        } else {
            assert_eq!(down(&g, &dxg), dx0, "{tag}: dx written though not asked for");
        }
        let dw_got = down(&g, &dwg);
        let e = rel("dw", &dw_got, &dw_want);
        assert!(e < 1e-5, "{tag}: dw error {e:.2e} against the rounded-input reference");
        if with_db {
            check(&format!("{tag} db (+=, fp32)"), &down(&g, &dbg), &db_want, true);
        }
        if rows * k * n > 10_000 {
            // The fp32 gradient of the same inputs is measurably different.
            let mut dw_f32 = dw0.clone();
            Cpu.linear_backward(View::cols(&x, offx, ldx), rows, k, &w, n, &dy, None, &mut dw_f32, None).unwrap();
            let dw_delta: Vec<f32> = dw_f32.iter().zip(&dw0).map(|(a, b)| a - b).collect();
            let got_delta: Vec<f32> = dw_got.iter().zip(&dw0).map(|(a, b)| a - b).collect();
            let e = rel("dw vs fp32", &got_delta, &dw_delta);
            assert!(e > 1e-4, "{tag}: dw only {e:.2e} from fp32: not rounded to bf16?");
        }
    }
}

#[test]
fn rmsnorm_backward_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(12);
    // s6_rmsnorm_bwd: blocks of 64 rows in batches of 8 (150 rows: a partial chunk and batch),
    // float4 path when dim % 4 == 0 (scalar for 45, 1501, 6143, 1), dweight accumulators in shared
    // memory up to dim 6144 and in global memory beyond (6150, 8192), and over 131,072 rows
    // chunks longer than 64 rows.
    let cases = [
        (19usize, 45usize),
        (7, 1500),
        (3, 1),
        (150, 768),
        (150, 1501),
        (33, 6143),
        (21, 6150),
        (70, 8192),
        (140_001, 3),
    ];
    for &(rows, dim) in &cases {
        let x = r.vec(rows * dim, -2.0, 2.0);
        let w = r.vec(dim, 0.5, 1.5);
        let dy = r.vec(rows * dim, -1.0, 1.0);
        let dr0 = r.vec(rows * dim, -1.0, 1.0);
        let dw0 = r.vec(dim, -1.0, 1.0);
        let (mut dr, mut dw) = (dr0.clone(), dw0.clone());
        Cpu.rmsnorm_backward(&x, &w, 1e-5, rows, dim, &dy, &mut dr, &mut dw).unwrap();
        let (mut drg, mut dwg) = (up(&g, &dr0), up(&g, &dw0));
        g.rmsnorm_backward(&up(&g, &x), &up(&g, &w), 1e-5, rows, dim, &up(&g, &dy), &mut drg, &mut dwg).unwrap();
        check(&format!("rmsnorm_backward {rows}×{dim} dresidual (+=)"), &down(&g, &drg), &dr, false);
        let dwg = down(&g, &dwg);
        check(&format!("rmsnorm_backward {rows}×{dim} dweight (+=)"), &dwg, &dw, true);
        // The dweight sums have a fixed order: the same bits every run.
        let mut dwg2 = up(&g, &dw0);
        g.rmsnorm_backward(&up(&g, &x), &up(&g, &w), 1e-5, rows, dim, &up(&g, &dy), &mut up(&g, &dr0), &mut dwg2)
            .unwrap();
        let same = down(&g, &dwg2).iter().zip(&dwg).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "rmsnorm_backward {rows}×{dim}: dweight differs between two runs");
    }
}

#[test]
fn embedding_backward_matches_cpu_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(13);
    // Rows of one id are added in input order, as on the CPU: the same bits, every run. Many
    // duplicates (300 ids over 53 rows); a row wider than a block (300); more distinct ids than
    // the grid's height (70,000 of 70,001, taken in strides of 65,535).
    for &(vocab, dim, rows) in &[(53usize, 37usize, 300usize), (11, 300, 64), (70_001, 3, 70_000)] {
        let ids: Vec<u32> = if rows == 70_000 {
            (0..rows as u32).rev().collect()
        } else {
            (0..rows).map(|_| r.below(vocab) as u32).collect()
        };
        let dout = r.vec(ids.len() * dim, -1.0, 1.0);
        let t0 = r.vec(vocab * dim, -1.0, 1.0);
        let mut want = t0.clone();
        Cpu.embedding_backward(&ids, dim, &dout, &mut want).unwrap();
        for run in 0..2 {
            let mut tg = up(&g, &t0);
            g.embedding_backward(&ids, dim, &up(&g, &dout), &mut tg).unwrap();
            let got = down(&g, &tg);
            let diff = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                diff.is_none(),
                "embedding_backward {vocab}x{dim}, run {run}: element {diff:?} differs from the CPU's"
            );
        }
    }
    let dout = r.vec(37, -1.0, 1.0);
    let mut tg = up(&g, &vec![0.0; 53 * 37]);
    // An id outside the table is an error, not a write out of bounds.
    let err = g.embedding_backward(&[53], 37, &up(&g, &dout), &mut tg).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn cross_entropy_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(14);
    // s6_cross_entropy: rows kept in shared memory up to ~58K floats on an H100 (50277, 50280) and
    // read twice beyond (70001, 131072); float4 groups with a scalar head and tail where rows
    // start unaligned (odd vocabularies, 1002: every other row), all float4 for 50280 and 131072.
    let cases = [
        (23usize, 1001usize, 4.0f32),
        (5, 50277, 10.0),
        (9, 3, 1.0),
        (4, 7, 80.0),
        (11, 1002, 4.0),
        (6, 50280, 10.0),
        (5, 70001, 10.0),
        (4, 131072, 10.0),
    ];
    for &(rows, vocab, spread) in &cases {
        let logits = r.vec(rows * vocab, -spread, spread);
        let mut targets: Vec<u32> = (0..rows).map(|_| r.below(vocab) as u32).collect();
        targets[rows / 2] = u32::MAX; // ignored
        let scale = 0.37;
        let mut want = vec![0.0; rows * vocab];
        let (ls, lc) = Cpu.cross_entropy(&logits, rows, vocab, &targets, scale, &mut want).unwrap();
        let mut dg = g.from_vec(vec![f32::NAN; rows * vocab]).unwrap();
        let (gs, gc) = g.cross_entropy(&up(&g, &logits), rows, vocab, &targets, scale, &mut dg).unwrap();
        assert_eq!(gc, lc, "cross_entropy count");
        assert!((gs - ls).abs() <= 1e-5 * ls.abs().max(1.0), "cross_entropy {rows}×{vocab}: loss sum {gs} vs CPU {ls}");
        let got = down(&g, &dg);
        check(&format!("cross_entropy {rows}×{vocab} dlogits"), &got, &want, false);
        let ignored = &got[(rows / 2) * vocab..][..vocab];
        assert!(ignored.iter().all(|&v| v == 0.0), "cross_entropy: the ignored row's gradient is not zero");
    }
    // All rows ignored: zero loss, zero count, zero gradient.
    let logits = r.vec(2 * 10, -1.0, 1.0);
    let mut dg = g.from_vec(vec![f32::NAN; 20]).unwrap();
    let (s, c) = g.cross_entropy(&up(&g, &logits), 2, 10, &[u32::MAX, u32::MAX], 1.0, &mut dg).unwrap();
    assert_eq!((s, c), (0.0, 0));
    assert!(down(&g, &dg).iter().all(|&v| v == 0.0));
    // A target outside the vocabulary is an error.
    assert!(g.cross_entropy(&up(&g, &logits), 2, 10, &[10, 0], 1.0, &mut dg).is_err());
}

/// The head's gradient held in bf16 alone (the model's hint on `dlogits`):
/// `s6_cross_entropy_d16` writes the f32 kernel's values rounded (a download widens them), the
/// loss is the same, and the head's bf16 backward products, reading that copy instead of casting
/// the f32 values, give the same bits.
#[test]
fn bf16_held_cross_entropy_gradient_feeds_the_head_backward_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let storage_before = s6::backend::cuda::bf16_storage_enabled();
    // The copies at their default (an earlier test in this process may have forced them).
    s6::backend::cuda::reset_act_bf16();
    let mut r = Rng(41);
    g.set_compute(s6::backend::Compute::Bf16).unwrap();
    for &(rows, vocab, k) in &[(37usize, 1003usize, 64usize), (8, 50280, 96), (5, 6, 8)] {
        let logits = r.vec(rows * vocab, -8.0, 8.0);
        let mut targets: Vec<u32> = (0..rows).map(|_| r.below(vocab) as u32).collect();
        targets[rows / 2] = u32::MAX;
        let (x, w) = (r.vec(rows * k, -1.0, 1.0), r.vec(vocab * k, -1.0, 1.0));
        let dw0 = r.vec(vocab * k, -1.0, 1.0);
        let run = |held: bool| {
            s6::backend::cuda::set_bf16_storage(held);
            let mut d = g.zeros(rows * vocab).unwrap();
            if held {
                g.allow_bf16_storage(&mut d);
            }
            let loss = g.cross_entropy(&up(&g, &logits), rows, vocab, &targets, 0.5, &mut d).unwrap();
            let (mut dx, mut dw) = (g.zeros(rows * k).unwrap(), up(&g, &dw0));
            let xg = up(&g, &x);
            g.linear_backward(
                View::full(&xg, k),
                rows,
                k,
                &up(&g, &w),
                vocab,
                &d,
                Some(ViewMut::full(&mut dx, k)),
                &mut dw,
                None,
            )
            .unwrap();
            (loss, down(&g, &dx), down(&g, &dw), down(&g, &d))
        };
        let f32_run = run(false);
        let held = run(true);
        s6::backend::cuda::set_bf16_storage(storage_before);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let what = format!("{rows}×{vocab}, k {k}");
        assert_eq!(held.0 .0.to_bits(), f32_run.0 .0.to_bits(), "{what}: loss");
        let rounded: Vec<f32> = f32_run.3.iter().map(|&v| s6::backend::bf16_round(v)).collect();
        assert_eq!(bits(&held.3), bits(&rounded), "{what}: the held gradient is not the f32 one rounded");
        assert!(
            f32_run.3.iter().any(|&v| v != s6::backend::bf16_round(v)),
            "{what}: the f32 gradient was already in bf16"
        );
        assert_eq!(bits(&held.1), bits(&f32_run.1), "{what}: dx");
        assert_eq!(bits(&held.2), bits(&f32_run.2), "{what}: dW");
    }
    g.set_compute(s6::backend::Compute::F32).unwrap();
}

#[test]
fn sum_squares_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(15);
    for &n in &[1usize, 255, 257, 300_001, 3_000_017] {
        let v = r.vec(n, -3.0, 3.0);
        let want = Cpu.sum_squares(&v).unwrap();
        let got = g.sum_squares(&up(&g, &v)).unwrap();
        assert!((got - want).abs() <= 1e-10 * want.abs(), "sum_squares n {n}: {got} vs CPU {want}");
    }
    assert_eq!(g.sum_squares(&g.zeros(0).unwrap()).unwrap(), 0.0);
}

#[test]
fn adamw_step_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(16);
    let n = 100_003;
    let (p0, gr) = (r.vec(n, -1.0, 1.0), r.vec(n, -2.0, 2.0));
    let (m0, v0) = (r.vec(n, -0.1, 0.1), r.vec(n, 0.0, 0.01));
    let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 7, grad_scale: 0.5 };
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    Cpu.adamw_step(&mut p, &gr, &mut m, &mut v, &hp).unwrap();
    let (mut pg, mut mg, mut vg) = (up(&g, &p0), up(&g, &m0), up(&g, &v0));
    g.adamw_step(&mut pg, &up(&g, &gr), &mut mg, &mut vg, &hp).unwrap();
    check("adamw param", &down(&g, &pg), &p, false);
    check("adamw m", &down(&g, &mg), &m, false);
    check("adamw v", &down(&g, &vg), &v, false);
    // Two more steps agree too (state carried on the device).
    for step in 8..10 {
        let hp = AdamW { step, ..hp };
        Cpu.adamw_step(&mut p, &gr, &mut m, &mut v, &hp).unwrap();
        g.adamw_step(&mut pg, &up(&g, &gr), &mut mg, &mut vg, &hp).unwrap();
    }
    check("adamw param after 3 steps", &down(&g, &pg), &p, false);
    assert!(g.adamw_step(&mut pg, &up(&g, &gr), &mut mg, &mut vg, &AdamW { step: 0, ..hp }).is_err());
}

/// Sizes that cross the kernels' block boundaries (256 threads), the sum-of-squares block cap
/// (1024 blocks) and the multi-tensor AdamW's per-tensor block cap (2048 blocks), with empty ones.
const ODD_SIZES: &[usize] = &[1, 0, 255, 257, 3, 300_001, 0, 600_001, 31, 3_000_017];

#[test]
fn sum_squares_many_matches_per_tensor_and_f64() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(31);
    // The odd sizes, then many small tensors (more tensors than the reduction has threads).
    let sizes: Vec<usize> = ODD_SIZES.iter().copied().chain((0..1500).map(|i| 1 + i % 97)).collect();
    let host: Vec<Vec<f32>> = sizes.iter().map(|&n| r.vec(n, -3.0, 3.0)).collect();
    let bufs: Vec<CudaBuf> = host.iter().map(|v| up(&g, v)).collect();
    let refs: Vec<&CudaBuf> = bufs.iter().collect();
    let per: Vec<f64> = refs.iter().map(|b| g.sum_squares(b).unwrap()).collect();
    let each = g.sum_squares_each(&refs).unwrap();
    assert_eq!(each.len(), per.len());
    for (i, (e, p)) in each.iter().zip(&per).enumerate() {
        assert_eq!(e.to_bits(), p.to_bits(), "sum_squares_each tensor {i} (n {}): {e} vs sum_squares {p}", sizes[i]);
    }
    let mut in_order = 0.0f64;
    for p in &per {
        in_order += p;
    }
    let many = g.sum_squares_many(&refs).unwrap();
    assert_eq!(
        many.to_bits(),
        in_order.to_bits(),
        "sum_squares_many {many} vs per-tensor sums added in order {in_order}"
    );
    let want: f64 = host.iter().flatten().map(|&v| v as f64 * v as f64).sum();
    // Per-block f64 partials summed in another order than the host's: f64 rounding apart.
    assert!((many - want).abs() <= 1e-10 * want, "sum_squares_many {many} vs f64 host {want}");
    assert_eq!(global_norm(&g, &refs).unwrap().to_bits(), in_order.sqrt().to_bits());
    // The same on a second call (deterministic), on a subset, and on nothing.
    assert_eq!(g.sum_squares_many(&refs).unwrap().to_bits(), many.to_bits());
    assert_eq!(g.sum_squares_many(&refs[2..3]).unwrap().to_bits(), per[2].to_bits());
    assert_eq!(g.sum_squares_many(&[]).unwrap(), 0.0);
    assert!(g.sum_squares_each(&[]).unwrap().is_empty());
    let zeros = [g.zeros(0).unwrap(), g.zeros(0).unwrap()];
    assert_eq!(g.sum_squares_many(&[&zeros[0], &zeros[1]]).unwrap(), 0.0);
}

#[test]
fn neg_exp_matches_host() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(32);
    for &n in &[1usize, 255, 257, 100_003] {
        // A_log = ln(1..=16) at init, and beyond it after training.
        let src = r.vec(n, -9.0, 5.0);
        let mut dst = up(&g, &vec![f32::NAN; n]);
        g.neg_exp(&up(&g, &src), &mut dst).unwrap();
        let got = down(&g, &dst);
        let mut exact = 0usize;
        for (i, (a, s)) in got.iter().zip(&src).enumerate() {
            let w = -s.exp();
            let ulps = (a.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(ulps <= 1, "neg_exp n {n} element {i}: -exp({s}) = {a} on the GPU, {w} on the host");
            exact += (ulps == 0) as usize;
        }
        // The device's exp is correctly rounded, the host's expf nearly: rare 1-ulp differences.
        assert!(exact * 100 >= n * 99, "neg_exp n {n}: only {exact} values bitwise equal to the host's");
    }
    let mut empty = g.zeros(0).unwrap();
    g.neg_exp(&g.zeros(0).unwrap(), &mut empty).unwrap();
    assert!(g.neg_exp(&up(&g, &[1.0, 2.0]), &mut g.zeros(3).unwrap()).is_err());
}

#[test]
fn add_product_equals_cpu_bitwise() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(34);
    for &n in &[1usize, 255, 257, 100_003] {
        let (d0, x, y) = (r.vec(n, -3.0, 3.0), r.vec(n, -3.0, 3.0), r.vec(n, -20.0, 0.0));
        let mut want = d0.clone();
        Cpu.add_product(&mut want, &x, &y).unwrap();
        let mut got = up(&g, &d0);
        g.add_product(&mut got, &up(&g, &x), &up(&g, &y)).unwrap();
        let got = down(&g, &got);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "add_product n {n}: the GPU differs from the CPU");
    }
    assert!(g.add_product(&mut g.zeros(3).unwrap(), &up(&g, &[1.0, 2.0]), &g.zeros(3).unwrap()).is_err());
}

#[test]
fn adamw_step_many_equals_per_tensor_bitwise() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(33);
    let n = ODD_SIZES.len();
    let p0: Vec<Vec<f32>> = ODD_SIZES.iter().map(|&k| r.vec(k, -1.0, 1.0)).collect();
    let m0: Vec<Vec<f32>> = ODD_SIZES.iter().map(|&k| r.vec(k, -0.1, 0.1)).collect();
    let v0: Vec<Vec<f32>> = ODD_SIZES.iter().map(|&k| r.vec(k, 0.0, 0.01)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3).map(|_| ODD_SIZES.iter().map(|&k| r.vec(k, -2.0, 2.0)).collect()).collect();
    let ups = |vs: &[Vec<f32>]| -> Vec<CudaBuf> { vs.iter().map(|v| up(&g, v)).collect() };
    let (mut p1, mut m1, mut v1) = (ups(&p0), ups(&m0), ups(&v0));
    let (mut p2, mut m2, mut v2) = (ups(&p0), ups(&m0), ups(&v0));
    let (mut pc, mut mc, mut vc) = (p0.clone(), m0.clone(), v0.clone());
    for (s, gr) in grads.iter().enumerate() {
        let step = 5 + s as u64;
        // Mixed weight decay, and per-tensor scalars that differ beyond it.
        let hps: Vec<AdamW> = (0..n)
            .map(|i| AdamW {
                lr: 3e-3 * (1.0 + i as f32 / 7.0),
                beta1: 0.9,
                beta2: if i % 3 == 0 { 0.999 } else { 0.95 },
                eps: 1e-8,
                weight_decay: if i % 2 == 0 { 0.1 } else { 0.0 },
                step,
                grad_scale: 0.5 + 0.1 * s as f32,
            })
            .collect();
        let gbufs = ups(gr);
        let grefs: Vec<&CudaBuf> = gbufs.iter().collect();
        for i in 0..n {
            g.adamw_step(&mut p1[i], grefs[i], &mut m1[i], &mut v1[i], &hps[i]).unwrap();
            Cpu.adamw_step(&mut pc[i], &gr[i], &mut mc[i], &mut vc[i], &hps[i]).unwrap();
        }
        g.adamw_step_many(p2.iter_mut().collect(), &grefs, &mut m2, &mut v2, &hps).unwrap();
    }
    let bits = |v: Vec<f32>| -> Vec<u32> { v.into_iter().map(f32::to_bits).collect() };
    for i in 0..n {
        for (what, a, b) in [("param", &p1[i], &p2[i]), ("m", &m1[i], &m2[i]), ("v", &v1[i], &v2[i])] {
            let (a, b) = (down(&g, a), down(&g, b));
            assert!(
                bits(a) == bits(b),
                "adamw_step_many {what} of tensor {i} (n {}) differs from adamw_step",
                ODD_SIZES[i]
            );
        }
        check(&format!("adamw_step_many param {i}"), &down(&g, &p2[i]), &pc[i], false);
    }
    // Errors before any update: a mismatched tensor, lists of different lengths, step 0.
    let before: Vec<Vec<f32>> = p2.iter().map(|b| down(&g, b)).collect();
    let gbufs = ups(&grads[0]);
    let grefs: Vec<&CudaBuf> = gbufs.iter().collect();
    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 9, grad_scale: 1.0 };
    let mut bad_v = ups(&v0);
    bad_v[n - 1] = g.zeros(2).unwrap();
    let e = g.adamw_step_many(p2.iter_mut().collect(), &grefs, &mut m2, &mut bad_v, &vec![hp; n]).unwrap_err();
    assert!(e.to_string().contains(&format!("tensor {}", n - 1)), "{e}");
    assert!(g.adamw_step_many(p2.iter_mut().collect(), &grefs[1..], &mut m2, &mut v2, &vec![hp; n]).is_err());
    let step0 = vec![AdamW { step: 0, ..hp }; n];
    assert!(g.adamw_step_many(p2.iter_mut().collect(), &grefs, &mut m2, &mut v2, &step0).is_err());
    for (i, b) in p2.iter().enumerate() {
        assert!(bits(down(&g, b)) == bits(before[i].clone()), "tensor {i} changed by a failed adamw_step_many");
    }
    g.adamw_step_many(Vec::new(), &[], &mut [], &mut [], &[]).unwrap();
}

#[test]
fn sum_rows_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(17);
    for &(rows, n, ld, off) in &[(1000usize, 16usize, 40usize, 5usize), (77, 33, 0, 3), (4099, 300, 300, 0)] {
        let src = r.vec(off + rows.max(1) * ld.max(n) + n, -1.0, 1.0);
        let d0 = r.vec(n, -1.0, 1.0);
        let mut want = d0.clone();
        Cpu.sum_rows(View { buf: &src, offset: off, ld }, rows, n, &mut want).unwrap();
        let mut dg = up(&g, &d0);
        let sg = up(&g, &src);
        g.sum_rows(View { buf: &sg, offset: off, ld }, rows, n, &mut dg).unwrap();
        check(&format!("sum_rows {rows}×{n} ld {ld} (+=)"), &down(&g, &dg), &want, true);
    }
}

#[test]
fn rope_and_backward_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(18);
    for &(batch, seqlen, n_head, head_dim, pos0) in
        &[(2usize, 13usize, 3usize, 8usize, 0usize), (1, 300, 2, 128, 5), (3, 7, 1, 6, 1000)]
    {
        let dims = AttnDims { batch, seqlen, n_head, head_dim };
        let (rows, w) = (dims.rows(), dims.width());
        let (ld, off) = (3 * w + 4, w + 1); // e.g. k inside a fused qkv buffer
        let x0 = r.vec(rows * ld + off, -2.0, 2.0);
        for inverse in [false, true] {
            let mut want = x0.clone();
            let mut xg = up(&g, &x0);
            if inverse {
                Cpu.rope_backward(ViewMut::cols(&mut want, off, ld), dims, pos0, 10000.0).unwrap();
                g.rope_backward(ViewMut::cols(&mut xg, off, ld), dims, pos0, 10000.0).unwrap();
            } else {
                Cpu.rope(ViewMut::cols(&mut want, off, ld), dims, pos0, 10000.0).unwrap();
                g.rope(ViewMut::cols(&mut xg, off, ld), dims, pos0, 10000.0).unwrap();
            }
            check(
                &format!("rope{} {dims:?} pos0 {pos0}", if inverse { "_backward" } else { "" }),
                &down(&g, &xg),
                &want,
                false,
            );
        }
    }
}

#[test]
fn swiglu_and_backward_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(19);
    let (rows, cols) = (37, 91);
    // gate and up: the two halves of a fused [rows, 2·cols + 3] buffer.
    let ld = 2 * cols + 3;
    let gu = r.vec(rows * ld, -4.0, 4.0);
    let dout = r.vec(rows * cols, -1.0, 1.0);
    let mut want = vec![0.0; rows * cols];
    Cpu.swiglu(View::cols(&gu, 0, ld), View::cols(&gu, cols + 1, ld), rows, cols, &mut want).unwrap();
    let gug = up(&g, &gu);
    let mut out = g.from_vec(vec![f32::NAN; rows * cols]).unwrap();
    g.swiglu(View::cols(&gug, 0, ld), View::cols(&gug, cols + 1, ld), rows, cols, &mut out).unwrap();
    check("swiglu", &down(&g, &out), &want, false);

    // dgate, dup: two column ranges of one buffer, the rest must be left alone.
    let d0 = r.vec(rows * ld, -1.0, 1.0);
    let mut dg_cpu = d0.clone();
    let mut du_cpu = d0.clone();
    Cpu.swiglu_backward(
        View::cols(&gu, 0, ld),
        View::cols(&gu, cols + 1, ld),
        rows,
        cols,
        &dout,
        ViewMut::cols(&mut dg_cpu, 1, ld),
        ViewMut::cols(&mut du_cpu, cols + 2, ld),
    )
    .unwrap();
    let (mut dgg, mut dug) = (up(&g, &d0), up(&g, &d0));
    g.swiglu_backward(
        View::cols(&gug, 0, ld),
        View::cols(&gug, cols + 1, ld),
        rows,
        cols,
        &up(&g, &dout),
        ViewMut::cols(&mut dgg, 1, ld),
        ViewMut::cols(&mut dug, cols + 2, ld),
    )
    .unwrap();
    check("swiglu_backward dgate (view)", &down(&g, &dgg), &dg_cpu, false);
    check("swiglu_backward dup (view)", &down(&g, &dug), &du_cpu, false);
}

/// q, k, v as column ranges of one fused `[rows, 3·width + 5]` buffer (offset 2), as the
/// Transformer's qkv projection lays them out.
fn check_attention(g: &Cuda, r: &mut Rng, dims: AttnDims) {
    let (rows, w) = (dims.rows(), dims.width());
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    let ld = 3 * w + 5;
    let qkv = r.vec(rows * ld + 2, -2.0, 2.0);
    let (qo, ko, vo) = (2, 2 + w, 2 + 2 * w);
    let mut out = vec![0.0; rows * w];
    let mut lse = vec![0.0; rows * dims.n_head];
    Cpu.attention(
        dims,
        scale,
        View::cols(&qkv, qo, ld),
        View::cols(&qkv, ko, ld),
        View::cols(&qkv, vo, ld),
        &mut out,
        &mut lse,
    )
    .unwrap();
    let qg = up(g, &qkv);
    let mut outg = g.from_vec(vec![f32::NAN; rows * w]).unwrap();
    let mut lseg = g.from_vec(vec![f32::NAN; rows * dims.n_head]).unwrap();
    g.attention(
        dims,
        scale,
        View::cols(&qg, qo, ld),
        View::cols(&qg, ko, ld),
        View::cols(&qg, vo, ld),
        &mut outg,
        &mut lseg,
    )
    .unwrap();
    check(&format!("attention {dims:?} out"), &down(g, &outg), &out, false);
    check(&format!("attention {dims:?} lse"), &down(g, &lseg), &lse, false);

    // Backward: dq, dk, dv written into column ranges of one fused gradient buffer.
    let dout = r.vec(rows * w, -1.0, 1.0);
    let d0 = r.vec(rows * ld + 2, -1.0, 1.0);
    let (mut dq, mut dk, mut dv) = (d0.clone(), d0.clone(), d0.clone());
    Cpu.attention_backward(
        dims,
        scale,
        View::cols(&qkv, qo, ld),
        View::cols(&qkv, ko, ld),
        View::cols(&qkv, vo, ld),
        &out,
        &lse,
        &dout,
        ViewMut::cols(&mut dq, qo, ld),
        ViewMut::cols(&mut dk, ko, ld),
        ViewMut::cols(&mut dv, vo, ld),
    )
    .unwrap();
    let (mut dqg, mut dkg, mut dvg) = (up(g, &d0), up(g, &d0), up(g, &d0));
    g.attention_backward(
        dims,
        scale,
        View::cols(&qg, qo, ld),
        View::cols(&qg, ko, ld),
        View::cols(&qg, vo, ld),
        &up(g, &out),
        &up(g, &lse),
        &up(g, &dout),
        ViewMut::cols(&mut dqg, qo, ld),
        ViewMut::cols(&mut dkg, ko, ld),
        ViewMut::cols(&mut dvg, vo, ld),
    )
    .unwrap();
    check(&format!("attention_backward {dims:?} dq"), &down(g, &dqg), &dq, true);
    check(&format!("attention_backward {dims:?} dk"), &down(g, &dkg), &dk, true);
    check(&format!("attention_backward {dims:?} dv"), &down(g, &dvg), &dv, true);
}

#[test]
fn attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(20);
    for &(batch, seqlen, n_head, head_dim) in &[
        (2usize, 77usize, 3usize, 40usize),
        (1, 33, 2, 128),
        (3, 1, 2, 16),
        (1, 300, 1, 64),
        (2, 65, 4, 7),
        (1, 5, 1, 1),
    ] {
        check_attention(&g, &mut r, AttnDims { batch, seqlen, n_head, head_dim });
    }
    // head_dim over the kernels' maximum: an error naming it.
    let dims = AttnDims { batch: 1, seqlen: 2, n_head: 1, head_dim: 130 };
    let x = g.zeros(2 * 130).unwrap();
    let (mut o, mut l) = (g.zeros(2 * 130).unwrap(), g.zeros(2).unwrap());
    let err = g
        .attention(dims, 1.0, View::full(&x, 130), View::full(&x, 130), View::full(&x, 130), &mut o, &mut l)
        .unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
}

// ----- whole models -----

fn mamba_on<B: Backend>(be: B, cfg: &MambaConfig, seed: u64) -> Mamba<B> {
    let params = init_params(cfg, &InitConfig::default(), seed);
    let mut it = params.into_iter();
    Mamba::from_params(be, cfg.clone(), |_| Ok(it.next().map(|p| p.1).unwrap_or_default())).unwrap()
}

fn batch(r: &mut Rng, vocab: usize, batch: usize, seqlen: usize) -> (Vec<u32>, Vec<u32>) {
    let ids: Vec<u32> = (0..batch * seqlen).map(|_| r.below(vocab) as u32).collect();
    let mut targets: Vec<u32> = (0..batch * seqlen).map(|_| r.below(vocab) as u32).collect();
    targets[3] = u32::MAX;
    (ids, targets)
}

/// Loss and every gradient of `loss_and_grads` on the GPU against the CPU; gradients are
/// accumulated onto non-zero buffers (a second call), as micro-batches do.
fn compare_grads<MC: LanguageModel<Cpu>, MG: LanguageModel<Cuda>>(
    what: &str,
    cpu: &MC,
    gpu_model: &MG,
    ids: &[u32],
    targets: &[u32],
    b: usize,
    l: usize,
) {
    let g = gpu_model.backend();
    let mut gc = cpu.zero_grads().unwrap();
    let mut gg = gpu_model.zero_grads().unwrap();
    for _ in 0..2 {
        let (lc, nc) = cpu.loss_and_grads(ids, targets, b, l, 0.5, &mut gc).unwrap();
        let (lg, ng) = gpu_model.loss_and_grads(ids, targets, b, l, 0.5, &mut gg).unwrap();
        assert_eq!(nc, ng, "{what}: counted targets");
        assert!((lc - lg).abs() <= 1e-5 * lc.abs(), "{what}: loss GPU {lg} vs CPU {lc}");
    }
    let specs = cpu.param_specs();
    for ((spec, c), gb) in specs.iter().zip(gc.params()).zip(gg.params()) {
        let want = c.clone();
        let got = g.to_vec(gb).unwrap();
        let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut worst = (0.0f32, 0usize);
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(a.is_finite(), "{what}: {} element {i} is {a}", spec.name);
            let e = (a - w).abs();
            if e > worst.0 {
                worst = (e, i);
            }
        }
        assert!(
            worst.0 <= 1e-3 * max + 1e-7,
            "{what}: gradient of {}: element {} GPU {} vs CPU {} (max |grad| {max:.3e}, error {:.3e} > 1e-3 of it)",
            spec.name,
            worst.1,
            got[worst.1],
            want[worst.1],
            worst.0
        );
    }
}

/// HF's causal-LM loss targets: position t predicts token t+1; the last position has none.
fn shifted_targets(ids: &[u32], batch: usize, seqlen: usize) -> Vec<u32> {
    let mut t = vec![u32::MAX; ids.len()];
    for b in 0..batch {
        for i in 0..seqlen - 1 {
            t[b * seqlen + i] = ids[b * seqlen + i + 1];
        }
    }
    t
}

/// `tests/gradients.rs` on the GPU in fp32: the whole model's loss and gradients against PyTorch
/// autograd (HF `MambaForCausalLM(input_ids, labels=input_ids).loss.backward()`, the fixture's
/// `expected_grads.safetensors`), directly rather than through the CPU backend. Loss within 1e-4;
/// every gradient within 1e-3 of its largest magnitude.
fn check_fixture_grads(g: &Cuda, name: &str) {
    let dir = common::fixture(name);
    let model = Mamba::load(g.clone(), &dir).unwrap();
    let exp = TensorFile::open(&dir.join("expected_grads.safetensors")).unwrap();
    let (ids, shape) = exp.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (batch, seqlen) = (shape[0], shape[1]);
    let targets = shifted_targets(&ids, batch, seqlen);
    let mut grads = model.zero_grads().unwrap();
    let (loss, count) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut grads).unwrap();
    assert_eq!(count, batch * (seqlen - 1), "{name}: counted targets");
    let want_loss = exp.f32("loss").unwrap().0[0] as f64;
    assert!((loss - want_loss).abs() <= 1e-4, "{name}: GPU loss {loss} vs PyTorch {want_loss}");
    let params = grads.params();
    assert!(!params.is_empty());
    for (spec, buf) in params {
        let got = g.to_vec(buf).unwrap();
        let (want, wshape) = exp.f32(&format!("grad.{}", spec.name)).unwrap();
        assert_eq!(wshape, spec.shape, "{name}: shape of the gradient of {}", spec.name);
        assert_eq!(got.len(), want.len(), "{name}: {}", spec.name);
        let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let mut worst = (0.0f32, 0usize);
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(a.is_finite(), "{name}: gradient of {} element {i} is {a}", spec.name);
            let e = (a - w).abs();
            if e > worst.0 {
                worst = (e, i);
            }
        }
        assert!(
            worst.0 <= 1e-3 * max,
            "{name}: gradient of {}: element {} GPU {} vs PyTorch {} (error {:.3e} > 1e-3 of max |grad| {max:.3e})",
            spec.name,
            worst.1,
            got[worst.1],
            want[worst.1],
            worst.0
        );
    }
}

#[test]
fn gradients_match_pytorch_fixtures() {
    let Some(g) = gpu() else { return };
    // Tied embeddings; untied with biases and a width-3 conv; dt_rank "auto", width-2 conv, d_state 4.
    for name in ["mamba-tiny", "mamba-odd", "mamba-rank-auto"] {
        check_fixture_grads(&g, name);
    }
}

fn small_mamba(ablation: Ablation) -> MambaConfig {
    let mut cfg = MambaConfig::new(24, 2, 37);
    cfg.d_state = 16;
    cfg.d_inner = 48;
    cfg.ablation = ablation;
    cfg
}

#[test]
fn mamba_loss_and_grads_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(21);
    let no_gate = Ablation { gate: false, ..Ablation::MAMBA };
    for (name, ab) in [("mamba", Ablation::MAMBA), ("no gate", no_gate), ("lti", Ablation::LTI)] {
        let cfg = small_mamba(ab);
        let (b, l) = (3, 45);
        let (ids, targets) = batch(&mut r, cfg.vocab_size, b, l);
        let cpu = mamba_on(Cpu, &cfg, 5);
        let gm = mamba_on(g.clone(), &cfg, 5);
        compare_grads(&format!("Mamba ({name})"), &cpu, &gm, &ids, &targets, b, l);
    }
}

/// Loss and gradients of `loss_and_grads` under `Compute::Bf16` against `F32` on the same GPU
/// model: close within bf16 tolerances (loss within 3e-2 relative; every gradient within
/// 5e-2 × its max |grad| + 3e-2 × |grad|), and not equal (the products really are bf16).
fn compare_bf16_grads<M: LanguageModel<Cuda>>(what: &str, model: &M, ids: &[u32], targets: &[u32], b: usize, l: usize) {
    use s6::backend::Compute;
    let g = model.backend();
    let run = |compute| {
        g.set_compute(compute).unwrap();
        let mut grads = model.zero_grads().unwrap();
        let (loss, _) = model.loss_and_grads(ids, targets, b, l, 0.5, &mut grads).unwrap();
        (loss, grads.params().iter().map(|p| g.to_vec(p).unwrap()).collect::<Vec<_>>())
    };
    let (lf, gf) = run(Compute::F32);
    let (lb, gb) = run(Compute::Bf16);
    let (lf2, _) = run(Compute::F32);
    assert_eq!(lf, lf2, "{what}: F32 after Bf16 gives another loss");
    assert!((lf - lb).abs() <= 3e-2 * lf.abs(), "{what}: loss bf16 {lb} vs f32 {lf}");
    let mut max_rel_diff = 0f32;
    for ((spec, f), bb) in model.param_specs().iter().zip(&gf).zip(&gb) {
        let max = f.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in bb.iter().zip(f).enumerate() {
            assert!(x.is_finite(), "{what}: {} element {i} is {x}", spec.name);
            let e = (x - y).abs();
            assert!(
                e <= 5e-2 * max + 3e-2 * y.abs() + 1e-7,
                "{what}: gradient of {} element {i}: bf16 {x} vs f32 {y} (max |grad| {max:.3e})",
                spec.name
            );
            max_rel_diff = max_rel_diff.max(e / max.max(1e-30));
        }
    }
    println!("{what}: loss f32 {lf} bf16 {lb}; largest gradient difference relative to its max {max_rel_diff:.2e}");
    assert!(max_rel_diff > 1e-5, "{what}: bf16 gradients equal the fp32 ones: the mode did not switch");
}

#[test]
fn bf16_mamba_loss_and_grads_close_to_f32() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(42);
    let cfg = small_mamba(Ablation::MAMBA);
    let (b, l) = (3, 45);
    let (ids, targets) = batch(&mut r, cfg.vocab_size, b, l);
    compare_bf16_grads("Mamba", &mamba_on(g.clone(), &cfg, 5), &ids, &targets, b, l);
    let cfg = TransformerConfig::new(32, 2, 4, 37);
    let (ids, targets) = batch(&mut r, cfg.vocab_size, 2, 41);
    compare_bf16_grads("Transformer", &Transformer::init(g, cfg, 9).unwrap(), &ids, &targets, 2, 41);
}

#[test]
fn transformer_loss_and_grads_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(22);
    let cfg = TransformerConfig::new(32, 2, 4, 37);
    let (b, l) = (2, 41);
    let (ids, targets) = batch(&mut r, cfg.vocab_size, b, l);
    let cpu = Transformer::init(Cpu, cfg.clone(), 9).unwrap();
    let gm = Transformer::init(g.clone(), cfg, 9).unwrap();
    compare_grads("Transformer", &cpu, &gm, &ids, &targets, b, l);
}

/// The generic training step (as `tasks::train` does it): gradients, global norm, clipping,
/// AdamW, derived tensors. Returns the loss curve.
fn train_curve<B: Backend, M: LanguageModel<B>>(
    model: &mut M,
    steps: u64,
    data: &[(Vec<u32>, Vec<u32>)],
    b: usize,
    l: usize,
) -> Vec<f64> {
    let be = model.backend().clone();
    let specs = model.param_specs();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let sizes: Vec<usize> = specs.iter().map(|s| s.shape.iter().product()).collect();
    let mut adam = AdamState::zeros(&be, &sizes).unwrap();
    let optim =
        OptimConfig { lr: 3e-3, min_lr: 3e-4, warmup_steps: 20, schedule: Schedule::Cosine, ..OptimConfig::default() };
    let mut curve = Vec::new();
    for step in 1..=steps {
        let (ids, targets) = &data[(step as usize - 1) % data.len()];
        let mut grads = model.zero_grads().unwrap();
        let (loss, _) = model.loss_and_grads(ids, targets, b, l, 1.0, &mut grads).unwrap();
        let refs = grads.params();
        let norm = global_norm(&be, &refs).unwrap();
        let scale = optim.clip_scale(norm);
        let lr = optim.lr_at(step, steps);
        adamw_update(&be, &optim, lr, step, scale, &names, model.params_mut(), &refs, &mut adam).unwrap();
        model.refresh_derived().unwrap();
        curve.push(loss);
    }
    curve
}

#[test]
fn training_200_steps_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cfg = small_mamba(Ablation::MAMBA);
    let (b, l) = (4, 32);
    // A learnable stream: each target is a fixed function of the current and previous token.
    let mut r = Rng(23);
    let data: Vec<(Vec<u32>, Vec<u32>)> = (0..16)
        .map(|_| {
            let ids: Vec<u32> = (0..b * l).map(|_| r.below(cfg.vocab_size) as u32).collect();
            let targets = (0..b * l)
                .map(|i| {
                    let prev = if i % l == 0 { 0 } else { ids[i - 1] };
                    (ids[i] * 7 + prev) % cfg.vocab_size as u32
                })
                .collect();
            (ids, targets)
        })
        .collect();
    let mut cpu = mamba_on(Cpu, &cfg, 7);
    let mut gm = mamba_on(g.clone(), &cfg, 7);
    let cc = train_curve(&mut cpu, 200, &data, b, l);
    let gc = train_curve(&mut gm, 200, &data, b, l);
    assert!(cc[199] < cc[0] - 0.1, "the CPU run did not learn: {} -> {}", cc[0], cc[199]);
    for (step, (c, gv)) in cc.iter().zip(&gc).enumerate() {
        assert!((c - gv).abs() <= 1e-3, "step {}: GPU loss {gv} vs CPU {c} (curves diverge)", step + 1);
    }
    // The trained parameters round-trip through to_vec/from_vec (checkpoints) unchanged.
    for (pc, pg) in LanguageModel::params(&cpu).iter().zip(LanguageModel::params(&gm)) {
        let back = g.to_vec(&g.from_vec(g.to_vec(pg).unwrap()).unwrap()).unwrap();
        assert_eq!(back, g.to_vec(pg).unwrap());
        assert_eq!(back.len(), pc.len());
    }
}

/// 120 training steps under `Compute::Bf16` (weights updated by AdamW every step, so their bf16
/// copies are re-cast every step) learn as the fp32 run does: a stale copy would freeze the
/// products' weights and stop the loss from falling.
#[test]
fn bf16_training_follows_f32() {
    use s6::backend::Compute;
    let Some(gf) = gpu() else { return };
    let Some(gb) = gpu() else { return };
    gb.set_compute(Compute::Bf16).unwrap();
    let cfg = small_mamba(Ablation::MAMBA);
    let (b, l) = (4, 32);
    let mut r = Rng(43);
    let data: Vec<(Vec<u32>, Vec<u32>)> = (0..16)
        .map(|_| {
            let ids: Vec<u32> = (0..b * l).map(|_| r.below(cfg.vocab_size) as u32).collect();
            let targets = (0..b * l)
                .map(|i| {
                    let prev = if i % l == 0 { 0 } else { ids[i - 1] };
                    (ids[i] * 7 + prev) % cfg.vocab_size as u32
                })
                .collect();
            (ids, targets)
        })
        .collect();
    let steps = 120;
    let fc = train_curve(&mut mamba_on(gf, &cfg, 7), steps, &data, b, l);
    let bc = train_curve(&mut mamba_on(gb, &cfg, 7), steps, &data, b, l);
    let tail = |c: &[f64]| c[c.len() - 20..].iter().sum::<f64>() / 20.0;
    let (tf, tb) = (tail(&fc), tail(&bc));
    println!("loss: f32 {:.4} -> {tf:.4}, bf16 {:.4} -> {tb:.4}", fc[0], bc[0]);
    assert!((fc[0] - bc[0]).abs() <= 1e-2 * fc[0], "first loss: bf16 {} vs f32 {}", bc[0], fc[0]);
    assert!(tf < fc[0] - 0.1, "the f32 run did not learn: {} -> {tf}", fc[0]);
    assert!(tb < bc[0] - 0.1, "the bf16 run did not learn: {} -> {tb}", bc[0]);
    assert!((tf - tb).abs() <= 5e-2 * tf, "last 20 steps' mean loss: bf16 {tb} vs f32 {tf}");
}

#[test]
fn peak_memory_is_reported() {
    let Some(g) = gpu() else { return };
    g.reset_peak_memory();
    let big = g.zeros(1 << 24).unwrap();
    g.synchronize().unwrap();
    let peak = g.peak_memory();
    drop(big);
    if let Some(p) = peak {
        assert!(p >= 4 << 24, "peak memory {p} below the 64 MB just allocated");
    } else {
        println!("the driver does not report the pool's peak");
    }
}

/// `S6_BF16_STORAGE_TRAIN=1`: the norm's and the scan's outputs, dΔ, dxz and the head's
/// gradient held in bf16 alone, read by the bf16 products as the casts they
/// replace would have given them: no bit of the loss or of any gradient changes. Nor does what
/// the backward recomputes: `Recompute::None` (which keeps the norm's output, u and Δ) gives
/// `Light`'s bits. At d_state 16 (the vector scan kernels) and 64 (the first structure's, whose y
/// is held in bf16 alone since session 22).
#[test]
fn bf16_storage_changes_no_bit_of_training() {
    for d_state in [16, 64] {
        bf16_storage_changes_no_bit_of_training_at(d_state);
    }
}

fn bf16_storage_changes_no_bit_of_training_at(d_state: usize) {
    use s6::backend::Compute;
    use s6::model::Recompute;
    let Some(g) = gpu() else { return };
    let storage_train_before = s6::backend::cuda::bf16_storage_train_enabled();
    // The copies at their default (an earlier test in this process may have forced them).
    s6::backend::cuda::reset_act_bf16();
    g.set_compute(Compute::Bf16).unwrap();
    let mut cfg = MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    cfg.d_state = d_state;
    let mut model = mamba_on(g.clone(), &cfg, 5);
    let (b, l) = (2, 640);
    let (ids, targets) = batch(&mut Rng(10), cfg.vocab_size, b, l);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut light = None;
    for recompute in [Recompute::Light, Recompute::Full, Recompute::None] {
        model.recompute = recompute;
        let run = |storage: bool| {
            s6::backend::cuda::set_bf16_storage_train(storage);
            let mut grads = model.zero_grads().unwrap();
            let (loss, _) = model.loss_and_grads(&ids, &targets, b, l, 1.0, &mut grads).unwrap();
            let values: Vec<(String, Vec<u32>)> =
                grads.params().iter().map(|(spec, p)| (spec.name.clone(), bits(&g.to_vec(p).unwrap()))).collect();
            (loss.to_bits(), values)
        };
        let off = run(false);
        let on = run(true);
        s6::backend::cuda::set_bf16_storage_train(storage_train_before);
        assert_eq!(off.0, on.0, "d_state {d_state}, {recompute:?}: the loss changed with bf16 storage");
        for ((name, a), (_, c)) in off.1.iter().zip(&on.1) {
            assert!(a == c, "d_state {d_state}, {recompute:?}: gradient {name} changed with bf16 storage");
        }
        match (recompute, &light) {
            (Recompute::Light, _) => light = Some(on),
            (Recompute::None, Some(want)) => {
                assert_eq!(want.0, on.0, "Recompute::None: the loss differs from Light's");
                for ((name, a), (_, c)) in want.1.iter().zip(&on.1) {
                    assert!(a == c, "Recompute::None: gradient {name} differs from Light's");
                }
            }
            _ => {}
        }
    }
    g.set_compute(Compute::F32).unwrap();
}

/// The scan backward in slices of the batch (its scratch budget forced to one byte, so every
/// sequence is a launch of its own), with bf16 storage and bf16 products as training runs by
/// default (dΔ and dz written in bf16 alone, at offsets of 2-byte elements): the loss and every
/// gradient the same bits as in one launch, except A_log's, D's and dt_proj's bias, whose sums
/// over the sequences run slice by slice (within 1e-5 of their largest value).
#[test]
fn scan_backward_slices_change_only_the_parameter_sums() {
    use s6::backend::Compute;
    let Some(g) = gpu() else { return };
    s6::backend::cuda::reset_act_bf16();
    g.set_compute(Compute::Bf16).unwrap();
    let mut cfg = MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let model = mamba_on(g.clone(), &cfg, 6);
    let (b, l) = (3, 200);
    let (ids, targets) = batch(&mut Rng(11), cfg.vocab_size, b, l);
    let run = |budget: usize| {
        s6::backend::cuda::set_scan_bwd_scratch_budget(budget);
        let mut grads = model.zero_grads().unwrap();
        let (loss, _) = model.loss_and_grads(&ids, &targets, b, l, 1.0, &mut grads).unwrap();
        let values: Vec<(String, Vec<f32>)> =
            grads.params().iter().map(|(spec, p)| (spec.name.clone(), g.to_vec(p).unwrap())).collect();
        (loss, values)
    };
    let whole = run(0);
    let sliced = run(1);
    s6::backend::cuda::set_scan_bwd_scratch_budget(0);
    g.set_compute(Compute::F32).unwrap();
    assert_eq!(whole.0.to_bits(), sliced.0.to_bits(), "the loss changed with the scan backward in slices");
    for ((name, a), (_, c)) in whole.1.iter().zip(&sliced.1) {
        if ["A_log", "mixer.D", "dt_proj.bias"].iter().any(|p| name.ends_with(p)) {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = a.iter().zip(c).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(err <= 1e-5 * scale, "{name}: sliced differs by {err:e} (max {scale:e})");
        } else {
            assert!(a.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed with the slices");
        }
    }
}

/// bf16 activation copies by default (`S6_ACT_BF16` unset): off while `loss_and_grads` keeps
/// activations for the backward (`Backend::set_keeping_activations`), so training takes the memory
/// it took without them; forced on they cost memory and change no bit of the loss or gradients.
#[test]
fn bf16_activation_copies_stay_off_in_training_by_default() {
    use s6::backend::Compute;
    let Some(g) = gpu() else { return };
    if std::env::var_os("S6_ACT_BF16").is_some() {
        println!("skipped: S6_ACT_BF16 is set, so the default is not under test");
        return;
    }
    g.set_compute(Compute::Bf16).unwrap();
    let mut cfg = MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let model = mamba_on(g.clone(), &cfg, 3);
    let (b, l) = (4, 512);
    let (ids, targets) = batch(&mut Rng(9), cfg.vocab_size, b, l);
    let run = || {
        let mut grads = model.zero_grads().unwrap();
        g.synchronize().unwrap();
        g.reset_peak_memory();
        let (loss, _) = model.loss_and_grads(&ids, &targets, b, l, 1.0, &mut grads).unwrap();
        g.synchronize().unwrap();
        let peak = g.peak_memory();
        let values: Vec<(String, Vec<f32>)> =
            grads.params().iter().map(|(spec, p)| (spec.name.clone(), g.to_vec(p).unwrap())).collect();
        (loss.to_bits(), values, peak)
    };
    let by_default = run();
    // A second run: training is reproducible bit for bit (the embedding's backward adds each id's
    // rows in input order, no atomics).
    let again = run();
    s6::backend::cuda::set_act_bf16(true);
    let forced = run();
    s6::backend::cuda::reset_act_bf16();
    g.set_compute(Compute::F32).unwrap();
    assert_eq!(by_default.0, again.0, "the loss changed from one run to the next");
    assert_eq!(by_default.0, forced.0, "the loss changed with the copies forced on");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (((name, d), (_, a)), (_, f)) in by_default.1.iter().zip(&again.1).zip(&forced.1) {
        assert!(bits(d) == bits(a), "gradient {name} changed from one run to the next");
        assert!(bits(d) == bits(f), "gradient {name} changed with the copies forced on");
    }
    match (by_default.2, forced.2) {
        (Some(off), Some(on)) => {
            assert!(on > off, "peak memory {on} with the copies forced on, not above {off} by default")
        }
        _ => println!("the driver does not report the pool's peak"),
    }
}
