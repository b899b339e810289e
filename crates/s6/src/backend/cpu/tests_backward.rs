//! Backward kernels, three ways: (a) every CPU backward against the f64 reference backward on
//! fresh random inputs with odd sizes (channels not a multiple of the SIMD width, sequences that
//! cross the scan's checkpoint chunks, views with offsets and row strides); (b) every f64 reference
//! backward against central finite differences of the f64 reference *forward* (this is what proves
//! the math); (c) accumulation semantics: accumulated gradients double when called twice, written
//! ones are overwritten. Plus cross-entropy with ignored targets, AdamW against PyTorch's formula,
//! and errors instead of out-of-bounds access.

use super::backward::{self, scan_chunk, SCAN_CHUNK};
use super::Cpu;
use crate::backend::{reference as r, AdamW, Backend, ScanArgs, ScanDims, ScanGrads, Strided, View, ViewMut};
use crate::testutil::{assert_close, Rand};
use crate::Error;

pub(super) fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Columns `off..off + w` of `rows` rows at stride `ld`, contiguous, in f64.
pub(super) fn cols(buf: &[f32], off: usize, ld: usize, rows: usize, w: usize) -> Vec<f64> {
    (0..rows).flat_map(|i| f64s(&buf[off + i * ld..][..w])).collect()
}

fn wdot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Asserts that `after` equals `before` everywhere outside the `rows × w` view at (`off`, `ld`).
pub(super) fn assert_outside_unchanged(
    after: &[f32],
    before: &[f32],
    off: usize,
    ld: usize,
    rows: usize,
    w: usize,
    what: &str,
) {
    for (i, (a, b)) in after.iter().zip(before).enumerate() {
        let inside = i >= off && (i - off) / ld < rows && (i - off) % ld < w;
        if !inside {
            assert_eq!(a.to_bits(), b.to_bits(), "{what}: element {i} outside the view was written");
        }
    }
}

/// Central differences of `loss` at every coordinate of every tensor of `params`, against `grads`:
/// `|fd − grad| <= tol · max(1, max|grad|)` per tensor.
pub(super) fn check_fd(
    what: &str,
    names: &[&str],
    params: &[Vec<f64>],
    grads: &[&[f64]],
    loss: impl Fn(&[Vec<f64>]) -> f64,
    tol: f64,
) {
    const H: f64 = 1e-6;
    assert_eq!(params.len(), grads.len());
    let mut p = params.to_vec();
    for (ti, g) in grads.iter().enumerate() {
        assert_eq!(p[ti].len(), g.len(), "{what}: {} length", names[ti]);
        let scale = g.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for i in 0..g.len() {
            let x0 = p[ti][i];
            p[ti][i] = x0 + H;
            let lp = loss(&p);
            p[ti][i] = x0 - H;
            let lm = loss(&p);
            p[ti][i] = x0;
            let fd = (lp - lm) / (2.0 * H);
            let err = (fd - g[i]).abs();
            assert!(
                err <= tol * scale,
                "{what}: ∂/∂{}[{i}]: analytic {}, finite differences {fd} (err {err:.3e}, tol {:.3e})",
                names[ti],
                g[i],
                tol * scale
            );
        }
    }
}

const FD_TOL: f64 = 1e-6;

// ----------------------------------------------------------------------------------------------
// linear

#[test]
fn linear_backward_matches_reference() {
    let mut rng = Rand::new(101);
    // (rows, k, n, x offset, x ld extra, dx offset, dx ld extra, with dx, with db)
    for &(rows, k, n, xo, xe, dxo, dxe, with_dx, with_db) in &[
        (1, 37, 29, 3, 0, 0, 0, true, true),
        (3, 64, 130, 0, 5, 2, 3, true, false),
        (9, 19, 7, 1, 1, 5, 0, true, true),
        (33, 70, 45, 2, 3, 0, 7, false, true),
        (130, 16, 9, 0, 0, 1, 1, true, true),
        (0, 5, 3, 0, 0, 0, 0, true, true),
    ] {
        let what = format!("linear_backward rows={rows} k={k} n={n}");
        let (xld, dxld) = (k + xe, k + dxe);
        let x = rng.vec(xo + rows * xld + 2, 1.0);
        let w = rng.vec(n * k, 1.0);
        let dy = rng.vec(rows * n, 1.0);
        let dx0 = rng.vec(dxo + rows * dxld + 3, 9.0);
        let mut dx = dx0.clone();
        let mut dw = vec![0.0; n * k];
        let mut db = vec![0.0; n];
        Cpu.linear_backward(
            View { buf: &x, offset: xo, ld: xld },
            rows,
            k,
            &w,
            n,
            &dy,
            with_dx.then_some(ViewMut { buf: &mut dx, offset: dxo, ld: dxld }),
            &mut dw,
            with_db.then_some(&mut db),
        )
        .unwrap();
        let (want_dx, want_dw, want_db) =
            r::linear_backward(&cols(&x, xo, xld, rows, k), rows, k, &f64s(&w), n, &f64s(&dy));
        if with_dx {
            let got: Vec<f32> = cols(&dx, dxo, dxld, rows, k).iter().map(|&v| v as f32).collect();
            assert_close(&got, &want_dx, 1e-5, &format!("{what}: dx"));
            assert_outside_unchanged(&dx, &dx0, dxo, dxld, rows, k, &what);
            // linear_backward_add_dx: the same gradient added to dx0's values in the view.
            let mut dx_add = dx0.clone();
            let (mut dw2, mut db2) = (vec![0.0; n * k], vec![0.0; n]);
            let dxv = ViewMut { buf: &mut dx_add, offset: dxo, ld: dxld };
            let xv = View { buf: &x, offset: xo, ld: xld };
            Cpu.linear_backward_add_dx(xv, rows, k, &w, n, &dy, dxv, &mut dw2, with_db.then_some(&mut db2)).unwrap();
            let before = cols(&dx0, dxo, dxld, rows, k);
            let want_sum: Vec<f64> = want_dx.iter().zip(&before).map(|(a, b)| a + b).collect();
            let got: Vec<f32> = cols(&dx_add, dxo, dxld, rows, k).iter().map(|&v| v as f32).collect();
            assert_close(&got, &want_sum, 1e-5, &format!("{what}: dx added"));
            assert_outside_unchanged(&dx_add, &dx0, dxo, dxld, rows, k, &what);
            assert_close(&dw2, &want_dw, 1e-5, &format!("{what}: dw (dx added)"));
        } else {
            assert_eq!(dx, dx0, "{what}: dx written although not requested");
        }
        assert_close(&dw, &want_dw, 1e-5, &format!("{what}: dw"));
        if with_db {
            assert_close(&db, &want_db, 1e-5, &format!("{what}: db"));
        } else {
            assert!(db.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn linear_backward_reference_matches_finite_differences() {
    let mut rng = Rand::new(102);
    let (rows, k, n) = (4, 5, 3);
    let params = vec![f64s(&rng.vec(rows * k, 1.0)), f64s(&rng.vec(n * k, 1.0)), f64s(&rng.vec(n, 1.0))];
    let wts = f64s(&rng.vec(rows * n, 1.0));
    let (dx, dw, db) = r::linear_backward(&params[0], rows, k, &params[1], n, &wts);
    let loss = |p: &[Vec<f64>]| wdot(&wts, &r::linear(&p[0], rows, k, &p[1], n, Some(&p[2])));
    check_fd("linear", &["x", "w", "bias"], &params, &[&dx, &dw, &db], loss, FD_TOL);
}

#[test]
fn linear_backward_accumulates() {
    let mut rng = Rand::new(103);
    let (rows, k, n, dxo, dxld) = (20, 11, 13, 1, 12);
    let x = rng.vec(rows * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    let dy = rng.vec(rows * n, 1.0);
    let mut dx = vec![0.0; dxo + rows * dxld];
    let (mut dw, mut db) = (vec![0.0; n * k], vec![0.0; n]);
    let call = |dx: &mut Vec<f32>, dw: &mut Vec<f32>, db: &mut Vec<f32>| {
        let dxv = ViewMut { buf: dx, offset: dxo, ld: dxld };
        Cpu.linear_backward(View::full(&x, k), rows, k, &w, n, &dy, Some(dxv), dw, Some(db)).unwrap();
    };
    call(&mut dx, &mut dw, &mut db);
    let (dx1, dw1, db1) = (dx.clone(), dw.clone(), db.clone());
    for i in 0..rows {
        dx[dxo + i * dxld..][..k].fill(f32::NAN);
    }
    call(&mut dx, &mut dw, &mut db);
    assert_eq!(dx, dx1, "dx is written, not accumulated");
    assert_close(&dw, &f64s(&dw1).iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "dw doubles");
    assert_close(&db, &f64s(&db1).iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "db doubles");
}

// ----------------------------------------------------------------------------------------------
// rmsnorm

#[test]
fn rmsnorm_backward_matches_reference() {
    let mut rng = Rand::new(201);
    for &(rows, dim) in &[(7, 45), (130, 8), (1, 1), (3, 100)] {
        let x = rng.vec(rows * dim, 3.0);
        let w = rng.vec(dim, 1.0);
        let dy = rng.vec(rows * dim, 1.0);
        let (mut dres, mut dw) = (vec![0.0; rows * dim], vec![0.0; dim]);
        Cpu.rmsnorm_backward(&x, &w, 1e-5, rows, dim, &dy, &mut dres, &mut dw).unwrap();
        let (want_dx, want_dw) = r::rmsnorm_backward(&f64s(&x), &f64s(&w), 1e-5, dim, &f64s(&dy));
        let what = format!("rmsnorm_backward rows={rows} dim={dim}");
        assert_close(&dres, &want_dx, 1e-5, &format!("{what}: dresidual"));
        assert_close(&dw, &want_dw, 1e-5, &format!("{what}: dweight"));
    }
}

#[test]
fn rmsnorm_backward_reference_matches_finite_differences() {
    let mut rng = Rand::new(202);
    for &(rows, dim) in &[(3, 7), (2, 1)] {
        let params = vec![f64s(&rng.vec(rows * dim, 2.0)), f64s(&rng.vec(dim, 1.0))];
        let wts = f64s(&rng.vec(rows * dim, 1.0));
        let (dx, dw) = r::rmsnorm_backward(&params[0], &params[1], 1e-5, dim, &wts);
        let loss = |p: &[Vec<f64>]| wdot(&wts, &r::add_rmsnorm(&p[0], None, &p[1], 1e-5, dim).1);
        check_fd(&format!("rmsnorm dim={dim}"), &["x", "weight"], &params, &[&dx, &dw], loss, FD_TOL);
    }
}

#[test]
fn rmsnorm_backward_accumulates() {
    let mut rng = Rand::new(203);
    let (rows, dim) = (70, 19);
    let x = rng.vec(rows * dim, 1.0);
    let w = rng.vec(dim, 1.0);
    let dy = rng.vec(rows * dim, 1.0);
    let (mut dres, mut dw) = (vec![0.0; rows * dim], vec![0.0; dim]);
    Cpu.rmsnorm_backward(&x, &w, 1e-5, rows, dim, &dy, &mut dres, &mut dw).unwrap();
    let (dres1, dw1) = (f64s(&dres), f64s(&dw));
    Cpu.rmsnorm_backward(&x, &w, 1e-5, rows, dim, &dy, &mut dres, &mut dw).unwrap();
    assert_close(&dres, &dres1.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "dresidual doubles");
    assert_close(&dw, &dw1.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "dweight doubles");
}

// ----------------------------------------------------------------------------------------------
// conv1d + SiLU

#[test]
fn conv1d_silu_backward_matches_reference() {
    let mut rng = Rand::new(301);
    for &(batch, seqlen, ch, k, bias) in &[
        (2, 11, 13, 4, true),
        (1, 1, 21, 4, false),
        (3, 7, 9, 3, true),
        (2, 130, 40, 4, true),
        (1, 5, 70, 2, false),
        (1, 4, 5, 1, true),
        (2, 2, 33, 4, true),
    ] {
        let what = format!("conv_backward b={batch} l={seqlen} ch={ch} k={k}");
        let rows = batch * seqlen;
        let (xo, xld, dxo, dxld) = (ch, 2 * ch + 1, 3, ch + 2);
        let x = rng.vec(xo + rows * xld, 1.0);
        let w = rng.vec(ch * k, 1.0);
        let b = rng.vec(ch, 1.0);
        let dout = rng.vec(rows * ch, 1.0);
        let dx0 = rng.vec(dxo + rows * dxld + 1, 9.0);
        let mut dx = dx0.clone();
        let (mut dw, mut db) = (vec![0.0; ch * k], vec![0.0; ch]);
        Cpu.conv1d_silu_backward(
            View { buf: &x, offset: xo, ld: xld },
            batch,
            seqlen,
            ch,
            k,
            &w,
            bias.then_some(&b),
            &dout,
            ViewMut { buf: &mut dx, offset: dxo, ld: dxld },
            &mut dw,
            Some(&mut db),
        )
        .unwrap();
        let (want_dx, want_dw, want_db) = r::conv1d_silu_backward(
            &cols(&x, xo, xld, rows, ch),
            batch,
            seqlen,
            ch,
            k,
            &f64s(&w),
            bias.then(|| f64s(&b)).as_deref(),
            &f64s(&dout),
        );
        let got_dx: Vec<f32> = cols(&dx, dxo, dxld, rows, ch).iter().map(|&v| v as f32).collect();
        assert_close(&got_dx, &want_dx, 1e-5, &format!("{what}: dx"));
        assert_outside_unchanged(&dx, &dx0, dxo, dxld, rows, ch, &what);
        assert_close(&dw, &want_dw, 1e-5, &format!("{what}: dweight"));
        assert_close(&db, &want_db, 1e-5, &format!("{what}: dbias"));
    }
}

#[test]
fn conv1d_silu_backward_reference_matches_finite_differences() {
    let mut rng = Rand::new(302);
    for &(batch, seqlen, ch, k) in &[(2, 6, 3, 4), (1, 2, 2, 4), (1, 5, 2, 1), (2, 4, 3, 2)] {
        let rows = batch * seqlen;
        let params = vec![f64s(&rng.vec(rows * ch, 2.0)), f64s(&rng.vec(ch * k, 1.0)), f64s(&rng.vec(ch, 1.0))];
        let wts = f64s(&rng.vec(rows * ch, 1.0));
        let (dx, dw, db) =
            r::conv1d_silu_backward(&params[0], batch, seqlen, ch, k, &params[1], Some(&params[2]), &wts);
        let state = vec![0.0; batch * (k - 1) * ch];
        let loss =
            |p: &[Vec<f64>]| wdot(&wts, &r::conv1d_silu(&p[0], batch, seqlen, ch, k, &p[1], Some(&p[2]), &state).0);
        let what = format!("conv b={batch} l={seqlen} ch={ch} k={k}");
        check_fd(&what, &["x", "weight", "bias"], &params, &[&dx, &dw, &db], loss, FD_TOL);
    }
}

#[test]
fn conv1d_silu_backward_accumulates() {
    let mut rng = Rand::new(303);
    let (batch, seqlen, ch, k) = (2, 9, 37, 4);
    let rows = batch * seqlen;
    let x = rng.vec(rows * ch, 1.0);
    let w = rng.vec(ch * k, 1.0);
    let b = rng.vec(ch, 1.0);
    let dout = rng.vec(rows * ch, 1.0);
    let mut dx = vec![0.0; rows * ch];
    let (mut dw, mut db) = (vec![0.0; ch * k], vec![0.0; ch]);
    let call = |dx: &mut Vec<f32>, dw: &mut Vec<f32>, db: &mut Vec<f32>| {
        let dxv = ViewMut::full(dx, ch);
        Cpu.conv1d_silu_backward(View::full(&x, ch), batch, seqlen, ch, k, &w, Some(&b), &dout, dxv, dw, Some(db))
            .unwrap();
    };
    call(&mut dx, &mut dw, &mut db);
    let (dx1, dw1, db1) = (dx.clone(), f64s(&dw), f64s(&db));
    dx.fill(f32::NAN);
    call(&mut dx, &mut dw, &mut db);
    assert_eq!(dx, dx1, "dx is written, not accumulated");
    assert_close(&dw, &dw1.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "dweight doubles");
    assert_close(&db, &db1.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, "dbias doubles");
}

// ----------------------------------------------------------------------------------------------
// selective scan

/// Random inputs of one scan, laid out as the model does: B and C interleaved in one wider matrix
/// (after 3 other columns), z in the second half of a wider matrix.
struct ScanCase {
    dims: ScanDims,
    u: Vec<f32>,
    delta: Vec<f32>,
    bias: Vec<f32>,
    a: Vec<f32>,
    bc: Vec<f32>,
    bc_ld: usize,
    /// Row strides of the B and C views: `bc_ld`, or 0 (one row broadcast to every step).
    b_ld: usize,
    c_ld: usize,
    dskip: Vec<f32>,
    z: Vec<f32>,
    /// Whether the scan is gated (`z` given).
    gate: bool,
    dy: Vec<f32>,
}

const BC_OFF: usize = 3;

impl ScanCase {
    fn new(rng: &mut Rand, batch: usize, seqlen: usize, d: usize, n: usize) -> Self {
        let rows = batch * seqlen;
        let mut delta = rng.vec(rows * d, 4.0);
        // A few raw Δ far on both sides, to cover softplus's linear branch (> 20) and tiny Δ.
        for (i, v) in delta.iter_mut().enumerate() {
            if i % 23 == 5 {
                *v = 25.0;
            } else if i % 31 == 7 {
                *v = -25.0;
            }
        }
        let bc_ld = BC_OFF + 2 * n + 2;
        ScanCase {
            dims: ScanDims { batch, seqlen, d_inner: d, d_state: n },
            u: rng.vec(rows * d, 1.0),
            delta,
            bias: rng.vec(d, 1.0),
            a: rng.vec(d * n, 1.0).iter().map(|v| -(v.abs() * 4.0 + 0.05)).collect(),
            bc: rng.vec(rows * bc_ld, 1.0),
            bc_ld,
            b_ld: bc_ld,
            c_ld: bc_ld,
            dskip: rng.vec(d, 1.0),
            z: rng.vec(rows * 2 * d, 2.0),
            gate: true,
            dy: rng.vec(rows * d, 1.0),
        }
    }
    /// The ablations' variants of the same case: no gate, and `B`/`C` broadcast from one row.
    fn ablated(mut self, gate: bool, bcast_b: bool, bcast_c: bool) -> Self {
        self.gate = gate;
        self.b_ld = if bcast_b { 0 } else { self.bc_ld };
        self.c_ld = if bcast_c { 0 } else { self.bc_ld };
        self
    }
    fn rows(&self) -> usize {
        self.dims.batch * self.dims.seqlen
    }
    fn args(&self) -> ScanArgs<'_, Vec<f32>> {
        let (d, n) = (self.dims.d_inner, self.dims.d_state);
        ScanArgs {
            dims: self.dims,
            u: &self.u,
            delta: &self.delta,
            delta_bias: &self.bias,
            a: &self.a,
            b: View { buf: &self.bc, offset: BC_OFF, ld: self.b_ld },
            c: View { buf: &self.bc, offset: BC_OFF + n, ld: self.c_ld },
            d: &self.dskip,
            z: self.gate.then_some(View { buf: &self.z, offset: d, ld: 2 * d }),
        }
    }
    /// Contiguous f64 inputs `[u, delta, bias, A, B, C, D, z]` (broadcast rows repeated; `z`
    /// empty without a gate).
    fn inputs(&self) -> Vec<Vec<f64>> {
        let (rows, d, n) = (self.rows(), self.dims.d_inner, self.dims.d_state);
        vec![
            f64s(&self.u),
            f64s(&self.delta),
            f64s(&self.bias),
            f64s(&self.a),
            cols(&self.bc, BC_OFF, self.b_ld, rows, n),
            cols(&self.bc, BC_OFF + n, self.c_ld, rows, n),
            f64s(&self.dskip),
            if self.gate { cols(&self.z, d, 2 * d, rows, d) } else { Vec::new() },
        ]
    }
}

/// `z` of [`ScanCase::inputs`]: `None` (no gate) when empty.
fn gate_of(z: &[f64]) -> Option<&[f64]> {
    (!z.is_empty()).then_some(z)
}

fn scan_ref_backward(dims: ScanDims, p: &[Vec<f64>], dy: &[f64]) -> r::ScanGradsRef {
    let ScanDims { batch, seqlen, d_inner, d_state } = dims;
    r::selective_scan_backward(
        batch,
        seqlen,
        d_inner,
        d_state,
        &p[0],
        &p[1],
        &p[2],
        &p[3],
        &p[4],
        &p[5],
        &p[6],
        gate_of(&p[7]),
        dy,
    )
}

/// Gradient buffers of one scan backward; `dB`/`dC` and `dz` are views into wider matrices.
struct ScanOut {
    du: Vec<f32>,
    ddelta: Vec<f32>,
    dbc: Vec<f32>,
    dz: Vec<f32>,
    da: Vec<f32>,
    dd: Vec<f32>,
    ddb: Vec<f32>,
}

const DBC_OFF: usize = 2;

impl ScanOut {
    fn dbc_ld(n: usize) -> usize {
        2 * n + 5
    }
    /// Written outputs full of garbage, accumulated ones zero.
    fn new(rng: &mut Rand, dims: ScanDims) -> Self {
        let (rows, d, n) = (dims.batch * dims.seqlen, dims.d_inner, dims.d_state);
        ScanOut {
            du: rng.vec(rows * d, 9.0),
            ddelta: rng.vec(rows * d, 9.0),
            dbc: rng.vec(DBC_OFF + rows * Self::dbc_ld(n) + 1, 9.0),
            dz: rng.vec(rows * 2 * d, 9.0),
            da: vec![0.0; d * n],
            dd: vec![0.0; d],
            ddb: vec![0.0; d],
        }
    }
    fn run(&mut self, case: &ScanCase, groups: Option<usize>, fma: bool) -> crate::Result<()> {
        let (d, n) = (case.dims.d_inner, case.dims.d_state);
        let ld = Self::dbc_ld(n);
        let grads = ScanGrads {
            du: &mut self.du,
            ddelta: &mut self.ddelta,
            dbc: &mut self.dbc,
            db: Strided { offset: DBC_OFF, ld },
            dc: Strided { offset: DBC_OFF + n, ld },
            dz: case.gate.then_some(ViewMut { buf: &mut self.dz, offset: d, ld: 2 * d }),
            da: &mut self.da,
            dd: &mut self.dd,
            ddelta_bias: &mut self.ddb,
        };
        backward::selective_scan_backward_with(&case.args(), &case.dy, grads, groups, fma)
    }
}

#[test]
fn selective_scan_backward_matches_reference() {
    let mut rng = Rand::new(401);
    for &(batch, seqlen, d, n) in &[
        (2, 130, 19, 16),
        (1, 1, 8, 16),
        (3, 7, 13, 4),
        (1, SCAN_CHUNK, 5, 1),
        (2, 2 * SCAN_CHUNK + 1, 21, 4),
        // Larger states take shorter chunks: several chunks, and one plus a step.
        (2, 3 * scan_chunk(64) + 5, 11, 64),
        (1, scan_chunk(40) + 1, 8, 40),
        (1, 130, 130, 1),
        (3, 65, 3, 16),
    ] {
        // The gated scan with per-row B, C (Mamba), then the ablations' forms: no gate, and B and/or
        // C broadcast from one row (ld = 0).
        for (gate, bb, bcc) in [(true, false, false), (false, false, false), (true, true, false), (false, true, true)] {
            let case = ScanCase::new(&mut rng, batch, seqlen, d, n).ablated(gate, bb, bcc);
            let rows = case.rows();
            let want = scan_ref_backward(case.dims, &case.inputs(), &f64s(&case.dy));
            for (groups, fma) in [(None, true), (Some(1), true), (Some(3), true), (Some(2), false)] {
                let what = format!(
                "scan_backward b={batch} l={seqlen} d={d} n={n} gate={gate} bcast B {bb} C {bcc} groups={groups:?} fma={fma}"
            );
                let mut out = ScanOut::new(&mut rng, case.dims);
                let (dbc0, dz0) = (out.dbc.clone(), out.dz.clone());
                out.run(&case, groups, fma).unwrap();
                let ld = ScanOut::dbc_ld(n);
                let f32s = |v: Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
                const TOL: f64 = 1e-4;
                assert_close(&out.du, &want.du, TOL, &format!("{what}: du"));
                assert_close(&out.ddelta, &want.ddelta, TOL, &format!("{what}: ddelta"));
                assert_close(&f32s(cols(&out.dbc, DBC_OFF, ld, rows, n)), &want.db, TOL, &format!("{what}: dB"));
                assert_close(&f32s(cols(&out.dbc, DBC_OFF + n, ld, rows, n)), &want.dc, TOL, &format!("{what}: dC"));
                if gate {
                    assert_close(&f32s(cols(&out.dz, d, 2 * d, rows, d)), &want.dz, TOL, &format!("{what}: dz"));
                }
                assert_close(&out.da, &want.da, TOL, &format!("{what}: dA"));
                assert_close(&out.dd, &want.dd, TOL, &format!("{what}: dD"));
                assert_close(&out.ddb, &want.ddelta_bias, TOL, &format!("{what}: ddelta_bias"));
                assert_outside_unchanged(&out.dbc, &dbc0, DBC_OFF, ld, rows, 2 * n, &what);
                if gate {
                    assert_outside_unchanged(&out.dz, &dz0, d, 2 * d, rows, d, &what);
                } else {
                    assert_eq!(out.dz, dz0, "{what}: dz written without a gate");
                }
            }
        }
    }
}

#[test]
fn selective_scan_backward_parameter_gradients_are_deterministic() {
    // Tasks of different sequences share channels; their ∂A, ∂D, ∂(Δ bias) once raced (lost
    // updates that showed as a flaky gradient-accumulation test). Same inputs, same bits.
    let mut rng = Rand::new(403);
    let case = ScanCase::new(&mut rng, 4, 64, 64, 16);
    let mut first: Option<ScanOut> = None;
    for _ in 0..20 {
        let mut out = ScanOut::new(&mut Rand::new(404), case.dims);
        out.run(&case, None, true).unwrap();
        match &first {
            None => first = Some(out),
            Some(f) => {
                assert_eq!(out.da, f.da, "dA");
                assert_eq!(out.dd, f.dd, "dD");
                assert_eq!(out.ddb, f.ddb, "ddelta_bias");
            }
        }
    }
}

#[test]
fn selective_scan_backward_through_backend_trait() {
    let mut rng = Rand::new(402);
    let case = ScanCase::new(&mut rng, 2, 70, 11, 16);
    let (rows, d, n) = (case.rows(), 11, 16);
    let want = scan_ref_backward(case.dims, &case.inputs(), &f64s(&case.dy));
    let mut out = ScanOut::new(&mut rng, case.dims);
    let grads = ScanGrads {
        du: &mut out.du,
        ddelta: &mut out.ddelta,
        dbc: &mut out.dbc,
        db: Strided { offset: DBC_OFF, ld: ScanOut::dbc_ld(n) },
        dc: Strided { offset: DBC_OFF + n, ld: ScanOut::dbc_ld(n) },
        dz: Some(ViewMut { buf: &mut out.dz, offset: d, ld: 2 * d }),
        da: &mut out.da,
        dd: &mut out.dd,
        ddelta_bias: &mut out.ddb,
    };
    Cpu.selective_scan_backward(&case.args(), &case.dy, grads).unwrap();
    assert_close(&out.du, &want.du, 1e-4, "du");
    assert_close(&out.da, &want.da, 1e-4, "dA");
    let dc: Vec<f32> = cols(&out.dbc, DBC_OFF + n, ScanOut::dbc_ld(n), rows, n).iter().map(|&v| v as f32).collect();
    assert_close(&dc, &want.dc, 1e-4, "dC");
}

#[test]
fn selective_scan_backward_reference_matches_finite_differences() {
    let mut rng = Rand::new(403);
    for &(batch, seqlen, d, n, gate) in
        &[(2, 9, 5, 4, true), (1, 20, 3, 16, true), (1, 3, 2, 1, true), (2, 9, 5, 4, false), (1, 12, 3, 3, false)]
    {
        let case = ScanCase::new(&mut rng, batch, seqlen, d, n).ablated(gate, false, false);
        let params = case.inputs();
        let wts = f64s(&case.dy);
        let g = scan_ref_backward(case.dims, &params, &wts);
        let state = vec![0.0; batch * d * n];
        let loss = |p: &[Vec<f64>]| {
            let z = gate_of(&p[7]);
            let y =
                r::selective_scan(batch, seqlen, d, n, &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], z, &state).0;
            wdot(&wts, &y)
        };
        check_fd(
            &format!("scan b={batch} l={seqlen} d={d} n={n} gate={gate}"),
            &["u", "delta", "delta_bias", "A", "B", "C", "D", "z"],
            &params,
            &[&g.du, &g.ddelta, &g.ddelta_bias, &g.da, &g.db, &g.dc, &g.dd, &g.dz],
            loss,
            FD_TOL,
        );
    }
}

#[test]
fn selective_scan_backward_accumulates() {
    let mut rng = Rand::new(404);
    let case = ScanCase::new(&mut rng, 2, 100, 10, 4);
    let mut out = ScanOut::new(&mut rng, case.dims);
    out.run(&case, None, true).unwrap();
    let first = (out.du.clone(), out.ddelta.clone(), out.dbc.clone(), out.dz.clone());
    let (da1, dd1, ddb1) = (f64s(&out.da), f64s(&out.dd), f64s(&out.ddb));
    out.du.fill(f32::NAN);
    out.ddelta.fill(f32::NAN);
    let ld = ScanOut::dbc_ld(4);
    for r in 0..case.rows() {
        out.dbc[DBC_OFF + r * ld..][..8].fill(f32::NAN);
        out.dz[r * 20 + 10..][..10].fill(f32::NAN);
    }
    out.run(&case, None, true).unwrap();
    assert_eq!(first, (out.du.clone(), out.ddelta.clone(), out.dbc.clone(), out.dz.clone()), "written outputs");
    let double = |v: &[f64]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
    assert_close(&out.da, &double(&da1), 1e-6, "dA doubles");
    assert_close(&out.dd, &double(&dd1), 1e-6, "dD doubles");
    assert_close(&out.ddb, &double(&ddb1), 1e-6, "ddelta_bias doubles");
}

// ----------------------------------------------------------------------------------------------
// embedding

#[test]
fn embedding_backward_adds_duplicates_and_accumulates() {
    let mut rng = Rand::new(501);
    for &(n_ids, vocab, dim) in &[(7, 7, 5), (1000, 50, 33), (3, 200, 1)] {
        let mut ids: Vec<u32> = (0..n_ids).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        ids[0] = ids[n_ids - 1]; // at least one duplicate
        let dout = rng.vec(n_ids * dim, 1.0);
        // A table with a partial trailing row: only whole rows are rows of the vocabulary.
        let mut dtable = vec![0.0; vocab * dim + dim / 2];
        Cpu.embedding_backward(&ids, dim, &dout, &mut dtable).unwrap();
        let want = r::embedding_backward(&ids, dim, &f64s(&dout), vocab);
        let what = format!("embedding_backward ids={n_ids} vocab={vocab} dim={dim}");
        assert_close(&dtable[..vocab * dim], &want, 1e-6, &what);
        assert!(dtable[vocab * dim..].iter().all(|&v| v == 0.0));
        Cpu.embedding_backward(&ids, dim, &dout, &mut dtable).unwrap();
        let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
        assert_close(&dtable[..vocab * dim], &twice, 1e-6, &format!("{what}: doubles"));
    }
    let e = Cpu.embedding_backward(&[0, 4], 2, &vec![0.0; 4], &mut vec![0.0; 8]).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)) && e.to_string().contains("token id 4"), "{e}");
}

// ----------------------------------------------------------------------------------------------
// cross-entropy

#[test]
fn cross_entropy_matches_reference_with_ignored_targets() {
    let mut rng = Rand::new(601);
    for &(rows, vocab, spread, shift) in
        &[(6, 37, 10.0, 0.0), (5, 1000, 3.0, 1000.0), (1, 1, 1.0, 0.0), (4, 9, 80.0, -500.0)]
    {
        let logits: Vec<f32> = rng.vec(rows * vocab, spread).iter().map(|v| v + shift).collect();
        let targets: Vec<u32> =
            (0..rows).map(|i| if i % 3 == 1 { u32::MAX } else { (rng.next_u64() % vocab as u64) as u32 }).collect();
        let scale = 0.25;
        let mut dl = rng.vec(rows * vocab, 9.0);
        let (loss, count) = Cpu.cross_entropy(&logits, rows, vocab, &targets, scale, &mut dl).unwrap();
        let (want_loss, want_count) = r::cross_entropy_loss(&f64s(&logits), vocab, &targets);
        let what = format!("cross_entropy rows={rows} vocab={vocab} shift={shift}");
        assert_eq!(count, want_count, "{what}: count");
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0), "{what}: loss {loss}, want {want_loss}");
        let want: Vec<f64> =
            r::cross_entropy_grad(&f64s(&logits), vocab, &targets).iter().map(|g| g * scale as f64).collect();
        assert_close(&dl, &want, 1e-6, &format!("{what}: dlogits"));
        for (row, &t) in dl.chunks(vocab).zip(&targets) {
            if t == u32::MAX {
                assert!(row.iter().all(|&v| v == 0.0), "{what}: ignored row has a gradient");
            }
        }
    }
    // All rows ignored.
    let mut dl = vec![1.0; 6];
    assert_eq!(Cpu.cross_entropy(&vec![0.0; 6], 2, 3, &[u32::MAX; 2], 1.0, &mut dl).unwrap(), (0.0, 0));
    assert_eq!(dl, [0.0; 6]);
}

#[test]
fn cross_entropy_reference_gradient_matches_finite_differences() {
    let mut rng = Rand::new(602);
    let (rows, vocab) = (4, 11);
    let targets = [3, u32::MAX, 0, 10];
    let params = vec![f64s(&rng.vec(rows * vocab, 5.0))];
    let g = r::cross_entropy_grad(&params[0], vocab, &targets);
    let loss = |p: &[Vec<f64>]| r::cross_entropy_loss(&p[0], vocab, &targets).0;
    check_fd("cross_entropy", &["logits"], &params, &[&g], loss, FD_TOL);
}

#[test]
fn cross_entropy_rejects_target_outside_vocab() {
    let mut dl = vec![0.0; 6];
    let e = Cpu.cross_entropy(&vec![0.0; 6], 2, 3, &[1, 3], 1.0, &mut dl).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)) && e.to_string().contains("target token 3"), "{e}");
    let e = Cpu.cross_entropy(&vec![0.0; 6], 2, 3, &[1], 1.0, &mut dl).unwrap_err();
    assert!(matches!(e, Error::Backend(_)), "{e}");
}

// ----------------------------------------------------------------------------------------------
// AdamW

#[test]
fn adamw_matches_pytorch_two_steps() {
    // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) on
    // p = [1, -2, 0.5] with gradients 0.5·[0.4, -2, 0] then 0.5·[-0.2, 1, 3]; the values below
    // follow PyTorch's update (p *= 1 - lr·wd; m, v; p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)),
    // evaluated in f64.
    let mut p = vec![1.0f32, -2.0, 0.5];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let mut hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1, grad_scale: 0.5 };
    Cpu.adamw_step(&mut p, &vec![0.4, -2.0, 0.0], &mut m, &mut v, &hp).unwrap();
    assert_close(&p, &[0.899000005, -1.898000001, 0.4995], 1e-6, "step 1 p");
    assert_close(&m, &[0.02, -0.1, 0.0], 1e-6, "step 1 m");
    assert_close(&v, &[4e-5, 1e-3, 0.0], 1e-6, "step 1 v");
    hp.step = 2;
    Cpu.adamw_step(&mut p, &vec![-0.2, 1.0, 3.0], &mut m, &mut v, &hp).unwrap();
    assert_close(&p, &[0.8714673027136758, -1.869468297369903, 0.4245868183447053], 1e-6, "step 2 p");
    assert_close(&m, &[0.008, -0.04, 0.15], 1e-6, "step 2 m");
    assert_close(&v, &[4.996e-5, 1.249e-3, 2.25e-3], 1e-6, "step 2 v");
}

#[test]
fn adamw_matches_reference_on_random_tensors() {
    let mut rng = Rand::new(701);
    let n = 40_000; // several parallel chunks
    let p0 = rng.vec(n, 1.0);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    let (mut pr, mut mr, mut vr) = (f64s(&p0), vec![0.0; n], vec![0.0; n]);
    for step in 1..=3 {
        let g = rng.vec(n, 2.0);
        let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step, grad_scale: 0.7 };
        Cpu.adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap();
        r::adamw_step(&mut pr, &f64s(&g), &mut mr, &mut vr, 1e-2, (0.9, 0.95), 1e-8, 0.1, step, 0.7);
    }
    assert_close(&p, &pr, 1e-6, "adamw p");
    assert_close(&m, &mr, 1e-6, "adamw m");
    assert_close(&v, &vr, 1e-6, "adamw v");
}

#[test]
fn adamw_step_many_equals_per_tensor_steps() {
    let mut rng = Rand::new(702);
    let sizes = [1usize, 0, 17, 40_003, 255];
    let hps: Vec<AdamW> = (0..sizes.len())
        .map(|i| AdamW {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: if i % 2 == 0 { 0.1 } else { 0.0 },
            step: 4,
            grad_scale: 0.6,
        })
        .collect();
    let p0: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 1.0)).collect();
    let g: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 2.0)).collect();
    let m0: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 0.1)).collect();
    let v0: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 0.01).iter().map(|x| x.abs()).collect()).collect();
    let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
    for i in 0..sizes.len() {
        Cpu.adamw_step(&mut p1[i], &g[i], &mut m1[i], &mut v1[i], &hps[i]).unwrap();
    }
    let (mut p2, mut m2, mut v2) = (p0.clone(), m0.clone(), v0.clone());
    let grefs: Vec<&Vec<f32>> = g.iter().collect();
    Cpu.adamw_step_many(p2.iter_mut().collect(), &grefs, &mut m2, &mut v2, &hps).unwrap();
    assert_eq!((p1, m1, v1), (p2, m2, v2));
    // Checked before anything is updated: a bad last tensor leaves the first unchanged.
    let mut p3 = p0.clone();
    let mut bad = m0.clone();
    bad[4].push(0.0);
    let e = Cpu.adamw_step_many(p3.iter_mut().collect(), &grefs, &mut bad, &mut v0.clone(), &hps).unwrap_err();
    assert!(matches!(e, Error::Backend(_)) && e.to_string().contains("tensor 4"), "{e}");
    assert_eq!(p3, p0);
    let e = Cpu.adamw_step_many(p3.iter_mut().collect(), &grefs[..4], &mut m0.clone(), &mut v0.clone(), &hps);
    assert!(e.is_err());
    let step0: Vec<AdamW> = hps.iter().map(|h| AdamW { step: 0, ..*h }).collect();
    let e = Cpu.adamw_step_many(p3.iter_mut().collect(), &grefs, &mut m0.clone(), &mut v0.clone(), &step0);
    assert!(e.is_err());
}

#[test]
fn sum_squares_many_and_each_equal_per_tensor_sums() {
    let mut rng = Rand::new(703);
    let bufs: Vec<Vec<f32>> = [3usize, 0, 70_001, 65_536, 1].iter().map(|&n| rng.vec(n, 3.0)).collect();
    let refs: Vec<&Vec<f32>> = bufs.iter().collect();
    let each: Vec<f64> = bufs.iter().map(|b| Cpu.sum_squares(b).unwrap()).collect();
    assert_eq!(Cpu.sum_squares_each(&refs).unwrap(), each);
    let mut total = 0.0;
    for s in &each {
        total += s;
    }
    assert_eq!(Cpu.sum_squares_many(&refs).unwrap().to_bits(), total.to_bits());
    assert_eq!(Cpu.sum_squares_many(&[]).unwrap(), 0.0);
    let want: f64 = bufs.iter().flatten().map(|&v| v as f64 * v as f64).sum();
    assert!((total - want).abs() <= 1e-12 * want);
}

#[test]
fn neg_exp_equals_host_exp() {
    let mut rng = Rand::new(704);
    let src: Vec<f32> = rng.vec(1001, 6.0);
    let mut dst = vec![0.0; 1001];
    Cpu.neg_exp(&src, &mut dst).unwrap();
    let want: Vec<f32> = src.iter().map(|v| -v.exp()).collect();
    assert_eq!(
        dst.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert!(Cpu.neg_exp(&src, &mut vec![0.0; 3]).is_err());
}

// ----------------------------------------------------------------------------------------------
// errors

#[test]
fn backward_ops_error_instead_of_out_of_bounds() {
    let is_backend = |e: Error, what: &str| {
        assert!(matches!(e, Error::Backend(_)) && e.to_string().contains(what), "{what}: {e}");
    };
    let (x, w, dy) = (vec![0.0; 12], vec![0.0; 6], vec![0.0; 8]);
    let e = Cpu.linear_backward(View::full(&x, 3), 4, 3, &w, 2, &dy, None, &mut vec![0.0; 5], None).unwrap_err();
    is_backend(e, "linear_backward dw");
    let mut dx = vec![0.0; 11];
    let dxv = Some(ViewMut::full(&mut dx, 3));
    let e = Cpu.linear_backward(View::full(&x, 3), 4, 3, &w, 2, &dy, dxv, &mut vec![0.0; 6], None).unwrap_err();
    is_backend(e, "linear_backward dx");

    let e = Cpu.rmsnorm_backward(&x, &w, 1e-5, 2, 6, &x, &mut vec![0.0; 12], &mut vec![0.0; 5]).unwrap_err();
    is_backend(e, "rmsnorm_backward dweight");

    let mut dx = vec![0.0; 11];
    let e = Cpu
        .conv1d_silu_backward(
            View::full(&x, 3),
            1,
            4,
            3,
            2,
            &w,
            None,
            &x,
            ViewMut::full(&mut dx, 3),
            &mut vec![0.0; 6],
            None,
        )
        .unwrap_err();
    is_backend(e, "conv_backward dx");

    let mut rng = Rand::new(801);
    let case = ScanCase::new(&mut rng, 1, 5, 3, 2);
    let mut out = ScanOut::new(&mut rng, case.dims);
    out.dbc.truncate(DBC_OFF + 4 * ScanOut::dbc_ld(2) + 2 * 2 - 1); // the last row's dC is cut short
    is_backend(out.run(&case, None, true).unwrap_err(), "scan_backward dC");
    // A gated scan without dz (and an ungated one with dz) is a caller bug.
    let mut out = ScanOut::new(&mut rng, case.dims);
    let ld = ScanOut::dbc_ld(2);
    let grads = ScanGrads {
        du: &mut out.du,
        ddelta: &mut out.ddelta,
        dbc: &mut out.dbc,
        db: Strided { offset: DBC_OFF, ld },
        dc: Strided { offset: DBC_OFF + 2, ld },
        dz: None,
        da: &mut out.da,
        dd: &mut out.dd,
        ddelta_bias: &mut out.ddb,
    };
    is_backend(Cpu.selective_scan_backward(&case.args(), &case.dy, grads).unwrap_err(), "z and dz");
    let mut out = ScanOut::new(&mut rng, case.dims);
    out.da.pop();
    is_backend(out.run(&case, None, true).unwrap_err(), "scan_backward dA");

    is_backend(
        Cpu.embedding_backward(&[0, 1], 4, &vec![0.0; 7], &mut vec![0.0; 8]).unwrap_err(),
        "embedding_backward dout",
    );
    is_backend(
        Cpu.cross_entropy(&vec![0.0; 6], 2, 3, &[0, 1], 1.0, &mut vec![0.0; 5]).unwrap_err(),
        "cross_entropy dlogits",
    );
    let hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1, grad_scale: 1.0 };
    let e = Cpu.adamw_step(&mut vec![0.0; 3], &vec![0.0; 2], &mut vec![0.0; 3], &mut vec![0.0; 3], &hp).unwrap_err();
    is_backend(e, "adamw_step");
    let hp0 = AdamW { step: 0, ..hp };
    let e = Cpu.adamw_step(&mut vec![0.0; 3], &vec![0.0; 3], &mut vec![0.0; 3], &mut vec![0.0; 3], &hp0).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
}
