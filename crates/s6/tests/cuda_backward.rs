//! The CUDA backward ops of the selective scan and of the causal conv1d + SiLU against the CPU
//! backend, on fresh random inputs over a grid of shapes (gated or not, broadcast B/C, every
//! kernel's N, lengths around the chunk sizes, odd channel counts, batch > 1). Compiled only with
//! the `cuda` feature; each test prints "skipped: no CUDA device" and passes without a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::{gpu, Rng};

use s6::backend::cpu::Cpu;
use s6::backend::cuda::{Cuda, CudaBuf};
use s6::backend::{Backend, ScanArgs, ScanDims, ScanGrads, Strided, View, ViewMut};

/// fp32 tolerances of the official kernels' tests; the absolute one is scaled by the largest
/// magnitude of the gradient compared (long reverse sums lose absolute precision).
const RTOL: f32 = 6e-4;
const ATOL: f32 = 2e-3;

/// Every element within `RTOL·|want| + ATOL·max|want|`; on failure, names the worst element
/// (index and, for matrices, row and column) and the gradient's scale.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], cols: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = (f32::NEG_INFINITY, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} (row {}, col {}) is {g} (want {w})", i / cols, i % cols);
        let excess = (g - w).abs() - (ATOL * scale + RTOL * w.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: worst element {i} (row {}, col {}): got {} want {} (diff {:e}; max |want| {scale}; rtol {RTOL}, atol {ATOL} × max)",
        i / cols,
        i % cols,
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}

fn up(g: &Cuda, v: &[f32]) -> CudaBuf {
    g.from_vec(v.to_vec()).unwrap()
}

/// `rows × cols` at `offset + r·ld` of a host buffer.
fn extract(buf: &[f32], offset: usize, ld: usize, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows).flat_map(|r| buf[offset + r * ld..][..cols].iter().copied()).collect()
}

#[derive(Clone, Copy, Debug)]
struct ScanCase {
    batch: usize,
    seqlen: usize,
    d_inner: usize,
    d_state: usize,
    gate: bool,
    /// `B` (and `C`) one row broadcast to every step (`ld = 0`).
    bcast_b: bool,
    bcast_c: bool,
}

/// One scan backward on the CPU and on the GPU from the same random inputs; compares every output.
/// Layout as in the model: `δ, B, C` columns of x_proj's output `[rows, 3 + 2N]` (B/C gradients
/// into the same columns of its gradient), `z` and `dz` the second half of `[rows, 2·d_inner]`.
fn check_scan_backward(g: &Cuda, r: &mut Rng, c: ScanCase) {
    let ScanCase { batch, seqlen, d_inner: di, d_state: n, gate, bcast_b, bcast_c } = c;
    let rows = batch * seqlen;
    let xw = 3 + 2 * n;
    let u = r.vec(rows * di, -2.0, 2.0);
    let delta = r.vec(rows * di, -3.0, 1.0);
    let delta_bias = r.vec(di, -2.0, 0.5);
    let a: Vec<f32> = r.vec(di * n, -1.0, 3.0).iter().map(|v| -v.exp()).collect();
    let xdbl = r.vec(rows * xw, -1.5, 1.5);
    let dskip = r.vec(di, -1.0, 1.0);
    let xz = r.vec(rows * 2 * di, -3.0, 3.0);
    let dy = r.vec(rows * di, -1.0, 1.0);
    // Accumulated gradients start from nonzero values (proves `+=`).
    let da0 = r.vec(di * n, -1.0, 1.0);
    let dd0 = r.vec(di, -1.0, 1.0);
    let dbias0 = r.vec(di, -1.0, 1.0);
    let dims = ScanDims { batch, seqlen, d_inner: di, d_state: n };
    let (ldb, ldc) = (if bcast_b { 0 } else { xw }, if bcast_c { 0 } else { xw });
    let (db_at, dc_at) = (Strided { offset: 3, ld: xw }, Strided { offset: 3 + n, ld: xw });
    let label = format!("{c:?}");

    // CPU reference.
    let cpu_args = ScanArgs {
        dims,
        u: &u,
        delta: &delta,
        delta_bias: &delta_bias,
        a: &a,
        b: View::cols(&xdbl, 3, ldb),
        c: View::cols(&xdbl, 3 + n, ldc),
        d: &dskip,
        z: gate.then(|| View::cols(&xz, di, 2 * di)),
    };
    let mut w_du = vec![0.0; rows * di];
    let mut w_ddelta = vec![0.0; rows * di];
    let mut w_dbc = vec![0.0; rows * xw];
    let mut w_dxz = vec![0.0; rows * 2 * di];
    let (mut w_da, mut w_dd, mut w_dbias) = (da0.clone(), dd0.clone(), dbias0.clone());
    Cpu.selective_scan_backward(
        &cpu_args,
        &dy,
        ScanGrads {
            du: &mut w_du,
            ddelta: &mut w_ddelta,
            dbc: &mut w_dbc,
            db: db_at,
            dc: dc_at,
            dz: if gate { Some(ViewMut::cols(&mut w_dxz, di, 2 * di)) } else { None },
            da: &mut w_da,
            dd: &mut w_dd,
            ddelta_bias: &mut w_dbias,
        },
    )
    .unwrap();

    // GPU, outputs poisoned with NaN so that any element not written shows.
    let (ug, dg, dbg, ag, xg, dsg, zg, dyg) =
        (up(g, &u), up(g, &delta), up(g, &delta_bias), up(g, &a), up(g, &xdbl), up(g, &dskip), up(g, &xz), up(g, &dy));
    let args = ScanArgs {
        dims,
        u: &ug,
        delta: &dg,
        delta_bias: &dbg,
        a: &ag,
        b: View::cols(&xg, 3, ldb),
        c: View::cols(&xg, 3 + n, ldc),
        d: &dsg,
        z: gate.then(|| View::cols(&zg, di, 2 * di)),
    };
    let nan = |len: usize| up(g, &vec![f32::NAN; len]);
    let (mut du, mut ddelta, mut dbc, mut dxz) = (nan(rows * di), nan(rows * di), nan(rows * xw), nan(rows * 2 * di));
    let (mut da, mut dd, mut dbias) = (up(g, &da0), up(g, &dd0), up(g, &dbias0));
    g.selective_scan_backward(
        &args,
        &dyg,
        ScanGrads {
            du: &mut du,
            ddelta: &mut ddelta,
            dbc: &mut dbc,
            db: db_at,
            dc: dc_at,
            dz: if gate { Some(ViewMut::cols(&mut dxz, di, 2 * di)) } else { None },
            da: &mut da,
            dd: &mut dd,
            ddelta_bias: &mut dbias,
        },
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));

    let get = |b: &CudaBuf| g.to_vec(b).unwrap();
    assert_close(&format!("du {label}"), &get(&du), &w_du, di);
    assert_close(&format!("ddelta {label}"), &get(&ddelta), &w_ddelta, di);
    let dbc_got = get(&dbc);
    for (name, at) in [("dB", db_at), ("dC", dc_at)] {
        assert_close(
            &format!("{name} {label}"),
            &extract(&dbc_got, at.offset, at.ld, rows, n),
            &extract(&w_dbc, at.offset, at.ld, rows, n),
            n,
        );
    }
    // The δ columns of x_proj's gradient are not the scan's: left untouched.
    assert!(extract(&dbc_got, 0, xw, rows, 3).iter().all(|v| v.is_nan()), "{label}: wrote outside dB/dC");
    let dxz_got = get(&dxz);
    if gate {
        assert_close(
            &format!("dz {label}"),
            &extract(&dxz_got, di, 2 * di, rows, di),
            &extract(&w_dxz, di, 2 * di, rows, di),
            di,
        );
    }
    assert!(extract(&dxz_got, 0, 2 * di, rows, di).iter().all(|v| v.is_nan()), "{label}: wrote outside dz");
    if !gate {
        assert!(dxz_got.iter().all(|v| v.is_nan()), "{label}: ungated scan wrote dz");
    }
    assert_close(&format!("dA (accumulated) {label}"), &get(&da), &w_da, n.max(1));
    assert_close(&format!("dD (accumulated) {label}"), &get(&dd), &w_dd, di);
    assert_close(&format!("ddelta_bias (accumulated) {label}"), &get(&dbias), &w_dbias, di);
}

#[test]
fn scan_backward_matches_cpu_grid() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(101);
    // (gate, broadcast B, broadcast C)
    let forms =
        [(true, false, false), (false, false, false), (true, true, false), (false, false, true), (true, true, true)];
    // N: every kernel (4, 8, 16, 32, 64) plus non-powers of two routed to them. L: 1, 7, a bit over
    // one chunk (16 steps; 8 for N > 32) and several chunks, with a partial last one.
    for n in [4, 5, 16, 64, 12, 8, 32, 1] {
        for seqlen in [1, 7, 17, 70] {
            for batch in [1, 3] {
                for &(gate, bcast_b, bcast_c) in &forms {
                    let c = ScanCase { batch, seqlen, d_inner: 37, d_state: n, gate, bcast_b, bcast_c };
                    check_scan_backward(&g, &mut r, c);
                }
            }
        }
    }
}

#[test]
fn scan_backward_matches_cpu_wide() {
    // Many channel blocks (d_inner not a multiple of any block), longer sequences.
    let Some(g) = gpu() else { return };
    let mut r = Rng(102);
    for &(batch, seqlen, di, n) in
        &[(2, 100, 300, 16), (3, 129, 130, 4), (2, 65, 77, 64), (1, 200, 1536, 16), (2, 33, 200, 33)]
    {
        for gate in [true, false] {
            check_scan_backward(
                &g,
                &mut r,
                ScanCase { batch, seqlen, d_inner: di, d_state: n, gate, bcast_b: false, bcast_c: false },
            );
        }
    }
}

#[test]
fn scan_backward_long_sequence() {
    // L = 5000: hundreds of chunks, checkpoints over the whole sequence.
    let Some(g) = gpu() else { return };
    let mut r = Rng(103);
    for &(batch, di, n) in &[(2, 64, 16), (1, 24, 64), (1, 40, 4)] {
        check_scan_backward(
            &g,
            &mut r,
            ScanCase { batch, seqlen: 5000, d_inner: di, d_state: n, gate: true, bcast_b: false, bcast_c: false },
        );
    }
}

#[test]
fn scan_backward_in_slices_matches_cpu() {
    // A scratch budget of one byte: every sequence in its own launch (pointers offset per slice,
    // the parameter gradients summed over the slices), broadcast B / C included.
    let Some(g) = gpu() else { return };
    s6::backend::cuda::set_scan_bwd_scratch_budget(1);
    let mut r = Rng(104);
    for &(batch, seqlen, di, n, bcast) in &[
        (3, 70, 37, 16, false),
        (5, 17, 300, 16, true),
        (3, 129, 130, 4, false),
        (4, 33, 77, 64, true),
        (2, 100, 64, 32, false),
    ] {
        for gate in [true, false] {
            let c = ScanCase { batch, seqlen, d_inner: di, d_state: n, gate, bcast_b: bcast, bcast_c: false };
            check_scan_backward(&g, &mut r, c);
        }
    }
    s6::backend::cuda::set_scan_bwd_scratch_budget(0);
}

#[test]
fn scan_backward_rejects_d_state_over_max() {
    let Some(g) = gpu() else { return };
    let n = s6::backend::cuda::MAX_D_STATE + 1;
    let (rows, di) = (2, 3);
    let z = |len: usize| g.zeros(len).unwrap();
    let (u, dl, bias, a, bc, d, dy) =
        (z(rows * di), z(rows * di), z(di), z(di * n), z(rows * 2 * n), z(di), z(rows * di));
    let args = ScanArgs {
        dims: ScanDims { batch: 1, seqlen: rows, d_inner: di, d_state: n },
        u: &u,
        delta: &dl,
        delta_bias: &bias,
        a: &a,
        b: View::cols(&bc, 0, 2 * n),
        c: View::cols(&bc, n, 2 * n),
        d: &d,
        z: None,
    };
    let (mut du, mut ddl, mut dbc, mut da, mut dd, mut db) =
        (z(rows * di), z(rows * di), z(rows * 2 * n), z(di * n), z(di), z(di));
    let grads = ScanGrads {
        du: &mut du,
        ddelta: &mut ddl,
        dbc: &mut dbc,
        db: Strided { offset: 0, ld: 2 * n },
        dc: Strided { offset: n, ld: 2 * n },
        dz: None,
        da: &mut da,
        dd: &mut dd,
        ddelta_bias: &mut db,
    };
    let e = g.selective_scan_backward(&args, &dy, grads).unwrap_err();
    assert!(e.to_string().contains("d_state"), "{e}");
}

/// One conv backward on the CPU and on the GPU; `x` and `dx` are columns `off..off + channels` of
/// `[rows, ld]` matrices (as `x` in in_proj's output and its gradient).
fn check_conv_backward(
    g: &Cuda,
    r: &mut Rng,
    (batch, seqlen, ch, k): (usize, usize, usize, usize),
    bias: bool,
    off: usize,
    ld: usize,
) {
    let rows = batch * seqlen;
    let x = r.vec(rows * ld, -2.0, 2.0);
    let w = r.vec(ch * k, -0.7, 0.7);
    let b = r.vec(ch, -0.5, 0.5);
    let dout = r.vec(rows * ch, -1.0, 1.0);
    let dw0 = r.vec(ch * k, -1.0, 1.0);
    let db0 = r.vec(ch, -1.0, 1.0);
    let label = format!("conv batch {batch} L {seqlen} ch {ch} k {k} bias {bias} cols {off}.. of {ld}");

    let mut w_dx = vec![f32::NAN; rows * ld];
    let (mut w_dw, mut w_db) = (dw0.clone(), db0.clone());
    Cpu.conv1d_silu_backward(
        View::cols(&x, off, ld),
        batch,
        seqlen,
        ch,
        k,
        &w,
        bias.then_some(&b),
        &dout,
        ViewMut::cols(&mut w_dx, off, ld),
        &mut w_dw,
        if bias { Some(&mut w_db) } else { None },
    )
    .unwrap();

    let (xg, wg, bg, gg) = (up(g, &x), up(g, &w), up(g, &b), up(g, &dout));
    let mut dx = up(g, &vec![f32::NAN; rows * ld]);
    let (mut dw, mut db) = (up(g, &dw0), up(g, &db0));
    g.conv1d_silu_backward(
        View::cols(&xg, off, ld),
        batch,
        seqlen,
        ch,
        k,
        &wg,
        bias.then_some(&bg),
        &gg,
        ViewMut::cols(&mut dx, off, ld),
        &mut dw,
        if bias { Some(&mut db) } else { None },
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let dx_got = g.to_vec(&dx).unwrap();
    assert_close(&format!("dx {label}"), &extract(&dx_got, off, ld, rows, ch), &extract(&w_dx, off, ld, rows, ch), ch);
    let outside: Vec<f32> = (0..rows)
        .flat_map(|r| (0..ld).filter(|c| *c < off || *c >= off + ch).map(move |c| r * ld + c))
        .map(|i| dx_got[i])
        .collect();
    assert!(outside.iter().all(|v| v.is_nan()), "{label}: wrote outside dx's columns");
    assert_close(&format!("dweight (accumulated) {label}"), &g.to_vec(&dw).unwrap(), &w_dw, k);
    let db_got = g.to_vec(&db).unwrap();
    if bias {
        assert_close(&format!("dbias (accumulated) {label}"), &db_got, &w_db, ch);
    } else {
        assert_eq!(db_got, db0, "{label}: dbias changed without a bias");
    }
}

/// The conv backward's shapes: `((batch, seqlen, channels, kernel), bias, col, ld)`; x and dx are
/// columns `col..col + channels` of `[rows, ld]` matrices. The kernels take float4 accesses when
/// channels, ld and col are multiples of 4 (the pointers 16-byte aligned), else floats; k = 4 is
/// compiled for, other k take the general path. A thread walks a segment of 64 steps in tiles of
/// 8, a block 4 segments (256 steps) of one sequence: the lengths below cross those edges.
type ConvCase = ((usize, usize, usize, usize), bool, usize, usize);
const CONV_BWD_SHAPES: &[ConvCase] = &[
    // k = 4, float4: lengths around the tile (8), segment (64) and block (256) edges.
    ((2, 37, 136, 4), true, 0, 272),
    ((3, 8, 64, 4), false, 64, 128),
    ((2, 9, 32, 4), true, 0, 32),
    ((2, 64, 32, 4), true, 0, 64),
    ((2, 65, 32, 4), false, 32, 64),
    ((2, 256, 16, 4), true, 0, 16),
    ((2, 300, 136, 4), true, 0, 136),
    ((2, 100, 300, 4), true, 0, 600),
    ((1, 5000, 24, 4), true, 0, 48),
    // k = 4: seqlen < k and seqlen = 1, float4 and float.
    ((3, 1, 64, 4), true, 0, 64),
    ((2, 2, 16, 4), true, 0, 32),
    ((3, 3, 64, 4), false, 4, 72),
    ((1, 1, 5, 4), true, 0, 5),
    ((2, 3, 6, 4), true, 0, 6),
    // k = 4, float: channels not a multiple of 4; x/dx unaligned (col 1 or 2, ld a multiple of
    // 4); ld not a multiple of 4 (col 0, channels a multiple of 4).
    ((3, 7, 37, 4), true, 0, 74),
    ((3, 7, 37, 4), false, 37, 74),
    ((4, 17, 130, 4), false, 130, 260),
    ((2, 65, 64, 4), false, 1, 72),
    ((2, 70, 64, 4), true, 2, 136),
    ((3, 33, 32, 4), true, 0, 34),
    // More than one block of channels (32 threads × 4), the last one partial.
    ((2, 45, 1028, 4), true, 0, 2056),
    ((2, 80, 1540, 4), false, 1540, 3080),
    // Other k (the general path), float4 and float, bias or not.
    ((2, 5, 16, 1), true, 3, 20),
    ((2, 20, 16, 1), false, 0, 16),
    ((2, 130, 64, 3), false, 0, 64),
    ((2, 70, 40, 3), true, 0, 80),
    ((2, 70, 40, 2), false, 0, 40),
    ((3, 9, 21, 2), true, 0, 21),
    ((5, 3, 20, 5), true, 0, 20),
    ((2, 300, 12, 5), true, 12, 24),
    ((2, 4, 8, 5), false, 0, 8),
    ((1, 3, 8, 6), true, 0, 8),
    ((3, 41, 33, 9), true, 0, 33),
    ((2, 40, 8, 17), true, 0, 8),
    ((1, 12, 9, 17), false, 0, 9),
];

#[test]
fn conv_backward_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(104);
    for &(shape, bias, off, ld) in CONV_BWD_SHAPES {
        check_conv_backward(&g, &mut r, shape, bias, off, ld);
    }
}

/// The conv backward's weight gradient is a sum over every step of the batch: the kernels add it
/// in a fixed order (no atomics), so two runs on the same inputs agree to the bit.
#[test]
fn conv_backward_is_deterministic() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(105);
    for &((batch, seqlen, ch, k), col, ld) in
        &[((4, 1000, 136, 4), 0, 272), ((3, 700, 37, 4), 37, 74), ((2, 600, 64, 3), 0, 64)]
    {
        let rows = batch * seqlen;
        let (xg, wg, bg) =
            (up(&g, &r.vec(rows * ld, -2.0, 2.0)), up(&g, &r.vec(ch * k, -0.7, 0.7)), up(&g, &r.vec(ch, -0.5, 0.5)));
        let gg = up(&g, &r.vec(rows * ch, -1.0, 1.0));
        let run = || {
            let mut dx = up(&g, &vec![0.0; rows * ld]);
            let (mut dw, mut db) = (up(&g, &vec![0.0; ch * k]), up(&g, &vec![0.0; ch]));
            g.conv1d_silu_backward(
                View::cols(&xg, col, ld),
                batch,
                seqlen,
                ch,
                k,
                &wg,
                Some(&bg),
                &gg,
                ViewMut::cols(&mut dx, col, ld),
                &mut dw,
                Some(&mut db),
            )
            .unwrap();
            (g.to_vec(&dx).unwrap(), g.to_vec(&dw).unwrap(), g.to_vec(&db).unwrap())
        };
        let (first, second) = (run(), run());
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let label = format!("conv backward batch {batch} L {seqlen} ch {ch} k {k}");
        assert_eq!(bits(&first.0), bits(&second.0), "{label}: dx differs between runs");
        assert_eq!(bits(&first.1), bits(&second.1), "{label}: dweight differs between runs");
        assert_eq!(bits(&first.2), bits(&second.2), "{label}: dbias differs between runs");
    }
}
