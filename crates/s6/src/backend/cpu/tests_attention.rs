//! The attention-model kernels (RoPE, causal attention, SwiGLU), forward and backward: each CPU
//! kernel against its f64 reference on random odd sizes (head sizes not a multiple of the SIMD
//! width, sequences crossing the query and key blocks, q/k/v as views into a fused buffer), with
//! the portable and the AVX2 kernels; each f64 reference backward against central finite
//! differences of the reference forward; and errors instead of out-of-bounds access.

use super::attention::{BC, BR};
use super::tests_backward::{assert_outside_unchanged, check_fd, cols, f64s};
use super::Cpu;
use crate::backend::{reference as r, AttnDims, Backend, View, ViewMut};
use crate::testutil::{assert_close, Rand};

fn both_paths(f: impl Fn(&str)) {
    super::simd::PORTABLE_FOR_TESTS.with(|p| p.set(true));
    f("portable");
    super::simd::PORTABLE_FOR_TESTS.with(|p| p.set(false));
    f(if super::simd::has_avx2_fma() { "avx2" } else { "portable" });
}

fn dims(batch: usize, seqlen: usize, n_head: usize, head_dim: usize) -> AttnDims {
    AttnDims { batch, seqlen, n_head, head_dim }
}

const FD_TOL: f64 = 1e-6;

// ----------------------------------------------------------------------------------------------
// RoPE

#[test]
fn rope_matches_reference_in_a_view() {
    let mut rng = Rand::new(301);
    // (dims, pos0, view offset, extra row stride)
    for &(dm, pos0, off, extra) in &[
        (dims(1, 1, 1, 2), 0, 0, 0),
        (dims(2, 37, 3, 10), 0, 5, 7),
        (dims(3, 9, 2, 64), 1000, 0, 3),
        (dims(1, 300, 4, 6), 17, 2, 0),
    ] {
        let (rows, w) = (dm.rows(), dm.width());
        let ld = w + extra;
        let x0 = rng.vec(off + rows * ld + 3, 1.0);
        for inverse in [false, true] {
            both_paths(|path| {
                let what = format!("rope {dm:?} pos0 {pos0} inverse {inverse} ({path})");
                let mut x = x0.clone();
                let v = ViewMut { buf: &mut x, offset: off, ld };
                if inverse {
                    Cpu.rope_backward(v, dm, pos0, 10000.0).unwrap();
                } else {
                    Cpu.rope(v, dm, pos0, 10000.0).unwrap();
                }
                let want = r::rope(&cols(&x0, off, ld, rows, w), dm, pos0, 10000.0, inverse);
                let got: Vec<f32> = cols(&x, off, ld, rows, w).iter().map(|&v| v as f32).collect();
                // f32 angles (HF's) differ from the f64 ones by ~position · 6e-8 radians.
                let tol = 2e-6 + (pos0 + dm.seqlen) as f64 * 1.2e-7;
                assert_close(&got, &want, tol, &what);
                assert_outside_unchanged(&x, &x0, off, ld, rows, w, &what);
            });
        }
    }
}

#[test]
fn rope_backward_inverts_rope() {
    let mut rng = Rand::new(302);
    let dm = dims(2, 50, 3, 12);
    let x0 = rng.vec(dm.rows() * dm.width(), 1.0);
    let mut x = x0.clone();
    Cpu.rope(ViewMut::full(&mut x, dm.width()), dm, 3, 500.0).unwrap();
    assert!(x.iter().zip(&x0).any(|(a, b)| (a - b).abs() > 1e-3), "rope changed nothing");
    Cpu.rope_backward(ViewMut::full(&mut x, dm.width()), dm, 3, 500.0).unwrap();
    assert_close(&x, &f64s(&x0), 1e-6, "rope then its backward");
}

#[test]
fn rope_reference_backward_matches_finite_differences() {
    let mut rng = Rand::new(303);
    let dm = dims(2, 5, 2, 6);
    let x = f64s(&rng.vec(dm.rows() * dm.width(), 1.0));
    let wgt = f64s(&rng.vec(dm.rows() * dm.width(), 1.0));
    // L = Σ wgt · rope(x), so ∂L/∂x = rope_backward(wgt).
    let grad = r::rope(&wgt, dm, 7, 100.0, true);
    let loss = |p: &[Vec<f64>]| r::rope(&p[0], dm, 7, 100.0, false).iter().zip(&wgt).map(|(a, b)| a * b).sum();
    check_fd("rope", &["x"], &[x], &[&grad], loss, FD_TOL);
}

// ----------------------------------------------------------------------------------------------
// attention

/// q, k, v as column ranges of one fused `[rows, 3·width + pad]` buffer, like a fused qkv
/// projection's output.
struct Qkv {
    dims: AttnDims,
    buf: Vec<f32>,
    ld: usize,
}

impl Qkv {
    fn new(rng: &mut Rand, dims: AttnDims, scale: f32) -> Self {
        let ld = 3 * dims.width() + 5;
        Qkv { dims, buf: rng.vec(dims.rows() * ld + 2, scale), ld }
    }
    fn view(&self, i: usize) -> View<'_, Vec<f32>> {
        View { buf: &self.buf, offset: i * self.dims.width(), ld: self.ld }
    }
    fn f64(&self, i: usize) -> Vec<f64> {
        cols(&self.buf, i * self.dims.width(), self.ld, self.dims.rows(), self.dims.width())
    }
}

/// Sizes that cover: a single token; odd head sizes; sequences crossing query blocks ([`BR`])
/// and key blocks ([`BC`]) unevenly; head sizes above the SIMD width; several sequences.
fn attention_cases() -> Vec<(AttnDims, f32)> {
    vec![
        (dims(1, 1, 1, 4), 1.0),
        (dims(2, 37, 3, 10), 1.0),
        (dims(1, BC + BR + 7, 2, 8), 1.0),
        (dims(3, 70, 1, 33), 0.7),
        (dims(2, 2 * BC + 1, 2, 5), 1.0),
        // Large scores: the online softmax must rescale when a later block has a larger max.
        (dims(1, 150, 1, 16), 3.0),
    ]
}

#[test]
fn attention_matches_reference() {
    let mut rng = Rand::new(311);
    for (dm, amp) in attention_cases() {
        let qkv = Qkv::new(&mut rng, dm, amp);
        let scale = 1.0 / (dm.head_dim as f32).sqrt();
        let (want_out, want_lse) = r::attention(&qkv.f64(0), &qkv.f64(1), &qkv.f64(2), dm, scale as f64);
        both_paths(|path| {
            let what = format!("attention {dm:?} ({path})");
            let mut out = vec![f32::NAN; dm.rows() * dm.width()];
            let mut lse = vec![f32::NAN; dm.rows() * dm.n_head];
            Cpu.attention(dm, scale, qkv.view(0), qkv.view(1), qkv.view(2), &mut out, &mut lse).unwrap();
            assert_close(&out, &want_out, 2e-6, &format!("{what}: out"));
            assert_close(&lse, &want_lse, 2e-6, &format!("{what}: lse"));
        });
    }
}

#[test]
fn attention_backward_matches_reference() {
    let mut rng = Rand::new(312);
    for (dm, amp) in attention_cases() {
        let qkv = Qkv::new(&mut rng, dm, amp);
        let scale = 1.0 / (dm.head_dim as f32).sqrt();
        let (rows, w) = (dm.rows(), dm.width());
        let dout = rng.vec(rows * w, 1.0);
        let (want_dq, want_dk, want_dv) =
            r::attention_backward(&qkv.f64(0), &qkv.f64(1), &qkv.f64(2), &f64s(&dout), dm, scale as f64);
        let mut out = vec![0.0; rows * w];
        let mut lse = vec![0.0; rows * dm.n_head];
        Cpu.attention(dm, scale, qkv.view(0), qkv.view(1), qkv.view(2), &mut out, &mut lse).unwrap();
        both_paths(|path| {
            let what = format!("attention_backward {dm:?} ({path})");
            // Gradients into views with offsets and strides; stale values must be overwritten.
            let (off, ld) = (3, w + 2);
            let g0 = rng_fill(off + rows * ld + 1);
            let mut g = [g0.clone(), g0.clone(), g0.clone()];
            {
                let [dq, dk, dv] = &mut g;
                let vm = |b| ViewMut { buf: b, offset: off, ld };
                Cpu.attention_backward(
                    dm,
                    scale,
                    qkv.view(0),
                    qkv.view(1),
                    qkv.view(2),
                    &out,
                    &lse,
                    &dout,
                    vm(dq),
                    vm(dk),
                    vm(dv),
                )
                .unwrap();
            }
            for (i, want) in [&want_dq, &want_dk, &want_dv].into_iter().enumerate() {
                let got: Vec<f32> = cols(&g[i], off, ld, rows, w).iter().map(|&v| v as f32).collect();
                let name = ["q", "k", "v"][i];
                assert_close(&got, want, 1e-5, &format!("{what}: d{name}"));
                assert_outside_unchanged(&g[i], &g0, off, ld, rows, w, &format!("{what}: d{name}"));
            }
        });
    }
}

/// Deterministic junk (not zeros: written outputs must not rely on a zeroed destination).
fn rng_fill(n: usize) -> Vec<f32> {
    Rand::new(n as u64).vec(n, 9.0)
}

#[test]
fn attention_reference_backward_matches_finite_differences() {
    let mut rng = Rand::new(313);
    for dm in [dims(1, 6, 2, 3), dims(2, 4, 1, 4)] {
        let n = dm.rows() * dm.width();
        let (q, k, v) = (f64s(&rng.vec(n, 1.0)), f64s(&rng.vec(n, 1.0)), f64s(&rng.vec(n, 1.0)));
        let wgt = f64s(&rng.vec(n, 1.0));
        let scale = 0.6;
        let (dq, dk, dv) = r::attention_backward(&q, &k, &v, &wgt, dm, scale);
        let loss =
            |p: &[Vec<f64>]| r::attention(&p[0], &p[1], &p[2], dm, scale).0.iter().zip(&wgt).map(|(a, b)| a * b).sum();
        check_fd(&format!("attention {dm:?}"), &["q", "k", "v"], &[q, k, v], &[&dq, &dk, &dv], loss, FD_TOL);
    }
}

#[test]
fn attention_is_causal_and_per_sequence() {
    // Changing token t of sequence 0 changes no output before t, and nothing in sequence 1.
    let mut rng = Rand::new(314);
    let dm = dims(2, 90, 2, 8);
    let qkv = Qkv::new(&mut rng, dm, 1.0);
    let (rows, w) = (dm.rows(), dm.width());
    let run = |buf: &Vec<f32>| {
        let mut out = vec![0.0; rows * w];
        let mut lse = vec![0.0; rows * 2];
        let v = |i| View { buf, offset: i * w, ld: qkv.ld };
        Cpu.attention(dm, 0.3, v(0), v(1), v(2), &mut out, &mut lse).unwrap();
        out
    };
    let base = run(&qkv.buf);
    let t = 70;
    let mut changed = qkv.buf.clone();
    for c in w..3 * w {
        changed[t * qkv.ld + c] += 1.0;
    }
    let out = run(&changed);
    for r in 0..rows {
        let same = out[r * w..][..w] == base[r * w..][..w];
        assert_eq!(same, r < t || r >= dm.seqlen, "row {r}");
    }
}

// ----------------------------------------------------------------------------------------------
// SwiGLU

#[test]
fn swiglu_matches_reference() {
    let mut rng = Rand::new(321);
    for &(rows, c) in &[(1, 1), (3, 7), (17, 37), (130, 64), (5, 300)] {
        // gate and up as column ranges of one [rows, 2c + 3] buffer (a fused gate/up projection).
        let ld = 2 * c + 3;
        let gu = rng.vec(rows * ld, 6.0);
        let dout = rng.vec(rows * c, 1.0);
        let (g, u) = (cols(&gu, 0, ld, rows, c), cols(&gu, c, ld, rows, c));
        let want = r::swiglu(&g, &u);
        let (want_dg, want_du) = r::swiglu_backward(&g, &u, &f64s(&dout));
        both_paths(|path| {
            let what = format!("swiglu rows={rows} cols={c} ({path})");
            let mut out = vec![f32::NAN; rows * c];
            Cpu.swiglu(View { buf: &gu, offset: 0, ld }, View { buf: &gu, offset: c, ld }, rows, c, &mut out).unwrap();
            assert_close(&out, &want, 2e-6, &what);
            let dld = c + 1;
            let (dg0, du0) = (rng_fill(rows * dld), rng_fill(rows * dld + 1));
            let (mut dg, mut du) = (dg0.clone(), du0.clone());
            Cpu.swiglu_backward(
                View { buf: &gu, offset: 0, ld },
                View { buf: &gu, offset: c, ld },
                rows,
                c,
                &dout,
                ViewMut { buf: &mut dg, offset: 0, ld: dld },
                ViewMut { buf: &mut du, offset: 1, ld: dld },
            )
            .unwrap();
            let got_dg: Vec<f32> = cols(&dg, 0, dld, rows, c).iter().map(|&v| v as f32).collect();
            let got_du: Vec<f32> = cols(&du, 1, dld, rows, c).iter().map(|&v| v as f32).collect();
            assert_close(&got_dg, &want_dg, 2e-6, &format!("{what}: dgate"));
            assert_close(&got_du, &want_du, 2e-6, &format!("{what}: dup"));
            assert_outside_unchanged(&dg, &dg0, 0, dld, rows, c, &what);
            assert_outside_unchanged(&du, &du0, 1, dld, rows, c, &what);
        });
    }
}

#[test]
fn swiglu_reference_backward_matches_finite_differences() {
    let mut rng = Rand::new(322);
    let (g, u) = (f64s(&rng.vec(23, 4.0)), f64s(&rng.vec(23, 2.0)));
    let wgt = f64s(&rng.vec(23, 1.0));
    let (dg, du) = r::swiglu_backward(&g, &u, &wgt);
    let loss = |p: &[Vec<f64>]| r::swiglu(&p[0], &p[1]).iter().zip(&wgt).map(|(a, b)| a * b).sum();
    check_fd("swiglu", &["gate", "up"], &[g, u], &[&dg, &du], loss, FD_TOL);
}

// ----------------------------------------------------------------------------------------------
// errors

#[test]
fn attention_ops_error_instead_of_out_of_bounds() {
    let dm = dims(2, 5, 2, 4);
    let (rows, w) = (dm.rows(), dm.width());
    let full = vec![0.0f32; rows * w];
    let short = vec![0.0f32; rows * w - 1];
    let mut out = vec![0.0f32; rows * w];
    let mut lse = vec![0.0f32; rows * 2];
    let v = |b| View::full(b, w);
    assert!(Cpu.attention(dm, 1.0, v(&full), v(&short), v(&full), &mut out, &mut lse).is_err());
    let mut lse_short = vec![0.0f32; rows * 2 - 1];
    assert!(Cpu.attention(dm, 1.0, v(&full), v(&full), v(&full), &mut out, &mut lse_short).is_err());
    let narrow = View { buf: &full, offset: 0, ld: w - 1 };
    assert!(Cpu.attention(dm, 1.0, narrow, v(&full), v(&full), &mut out, &mut lse).is_err());
    let (mut a, mut b, mut c) = (full.clone(), full.clone(), short.clone());
    let r = Cpu.attention_backward(
        dm,
        1.0,
        v(&full),
        v(&full),
        v(&full),
        &full,
        &lse,
        &full,
        ViewMut::full(&mut a, w),
        ViewMut::full(&mut b, w),
        ViewMut::full(&mut c, w),
    );
    assert!(r.is_err());
    let mut x = full.clone();
    assert!(Cpu.rope(ViewMut::full(&mut x, w), dims(2, 5, 4, 2), 0, 1e4).is_ok());
    assert!(Cpu.rope(ViewMut::full(&mut x, w), dims(2, 5, 2, 5), 0, 1e4).is_err(), "odd head size");
    let mut y = short.clone();
    assert!(Cpu.rope(ViewMut::full(&mut y, w), dm, 0, 1e4).is_err());
    assert!(Cpu.swiglu(v(&full), v(&short), rows, w, &mut out).is_err());
}

/// Throughput of the attention kernels (`cargo test -p s6 --lib attention_kernel_timing --
/// --ignored --nocapture`).
#[test]
#[ignore]
fn attention_kernel_timing() {
    let mut rng = Rand::new(9);
    for &(dm, reps) in &[(dims(1, 4096, 4, 16), 3), (dims(1, 4096, 2, 64), 3), (dims(8, 256, 4, 16), 20)] {
        let n = dm.rows() * dm.width();
        let (q, k, v, g) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let mut out = vec![0.0; n];
        let mut lse = vec![0.0; dm.rows() * dm.n_head];
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let w = dm.width();
        let t = std::time::Instant::now();
        for _ in 0..reps {
            Cpu.attention(dm, 0.25, View::full(&q, w), View::full(&k, w), View::full(&v, w), &mut out, &mut lse)
                .unwrap();
        }
        let fwd = t.elapsed().as_secs_f64() / reps as f64;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let (a, b, c) = (ViewMut::full(&mut dq, w), ViewMut::full(&mut dk, w), ViewMut::full(&mut dv, w));
            Cpu.attention_backward(
                dm,
                0.25,
                View::full(&q, w),
                View::full(&k, w),
                View::full(&v, w),
                &out,
                &lse,
                &g,
                a,
                b,
                c,
            )
            .unwrap();
        }
        let bwd = t.elapsed().as_secs_f64() / reps as f64;
        // Causal: half of the L² scores; forward 2 matmuls, backward (as computed here) 7.
        let fl = (dm.batch * dm.n_head) as f64 * (dm.seqlen * dm.seqlen) as f64 / 2.0 * dm.head_dim as f64 * 2.0;
        eprintln!(
            "{dm:?}: forward {:.1} ms ({:.1} GFLOP/s), backward {:.1} ms ({:.1} GFLOP/s)",
            fwd * 1e3,
            2.0 * fl / fwd / 1e9,
            bwd * 1e3,
            7.0 * fl / bwd / 1e9
        );
    }
}
