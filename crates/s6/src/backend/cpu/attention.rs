//! Causal multi-head attention (flash-style), rotary embeddings and SwiGLU on CPU.
//!
//! Attention never holds a `seqlen × seqlen` matrix. Forward: one task per (sequence, head, block
//! of [`BR`] queries) walks the blocks of [`BC`] keys up to its diagonal with an online softmax (a
//! running max and sum per query row; the accumulated output is rescaled when the max grows) and
//! writes per row only the output and the logsumexp of its scores.
//!
//! Backward, as in FlashAttention-2: first `D_t = dO_t · O_t` per (row, head); then two passes
//! that recompute the probabilities `p = exp(scale·q·k − lse)` from the saved logsumexp. One task
//! per (sequence, head, key block) accumulates `dK` and `dV` over the queries that see its keys;
//! one task per (sequence, head, query block) accumulates `dQ` over the keys its queries see.
//! Every gradient element has exactly one writer: no atomics, and results do not depend on the
//! thread count, for the price of computing `q·k` and `dO·v` twice.
//!
//! Inner loops run along the [`BC`] keys of a block (K and V are transposed into a local
//! `head_dim × BC` tile), so they vectorize whatever the head size; the exponentials are the
//! 8-lane ones of [`super::simd`]. Each kernel body is generic over `const FMA: bool` with an
//! `avx2,fma` entry point chosen at run time, like the other CPU kernels.

use rayon::prelude::*;

use super::simd::{self, madd, Lanes, LANES};
use super::{check_view, need, view_extent};
use crate::backend::{AttnDims, View, ViewMut};
use crate::{Error, Result};

/// Query rows per attention task.
pub const BR: usize = 32;
/// Keys per block (a multiple of [`LANES`]).
pub const BC: usize = 64;

/// Below this many score entries (`rows × keys`, summed over heads) attention runs on the calling
/// thread: a decode-sized call costs less than waking the pool.
const SERIAL_SCORES: usize = 1 << 14;

/// Elementwise ops (RoPE, SwiGLU) up to this many elements run on the calling thread.
const SERIAL_ELEMS: usize = 16 << 10;

/// A read-only matrix: element `(r, c)` at `ptr[r * ld + c]` (view offset already applied).
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    ld: usize,
}

/// A matrix written through disjoint elements by concurrent tasks.
#[derive(Clone, Copy)]
struct MatMut {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: tasks only read through `Mat` and write disjoint elements through `MatMut`.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl Mat {
    fn of(v: &View<'_, Vec<f32>>) -> Mat {
        Mat { ptr: v.buf[v.offset..].as_ptr(), ld: v.ld }
    }
}

fn check_view_mut(what: &str, v: &ViewMut<'_, Vec<f32>>, rows: usize, cols: usize) -> Result<()> {
    if v.ld < cols {
        return Err(Error::Backend(format!("cpu: view '{what}' has row stride {} < {cols} columns", v.ld)));
    }
    need(what, v.buf.len(), view_extent(rows, cols, v.offset, v.ld))
}

fn mat_mut(v: ViewMut<'_, Vec<f32>>) -> MatMut {
    MatMut { ptr: v.buf[v.offset..].as_mut_ptr(), ld: v.ld }
}

impl MatMut {
    /// Columns `0..cols` of row `r`.
    ///
    /// # Safety
    /// The row must lie inside the checked view, and no other live slice may overlap it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, cols: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld), cols)
    }
}

fn check_dims(what: &str, dims: AttnDims) -> Result<()> {
    if dims.head_dim == 0 || dims.n_head == 0 {
        return Err(Error::Backend(format!("cpu: {what}: zero heads or head size ({dims:?})")));
    }
    Ok(())
}

/// Runs `f(task)` for `0..tasks`, on the pool unless the work is small.
fn for_tasks(tasks: usize, serial: bool, f: impl Fn(usize) + Send + Sync) {
    if serial {
        (0..tasks).for_each(f);
    } else {
        (0..tasks).into_par_iter().for_each(f);
    }
}

fn is_small(dims: AttnDims) -> bool {
    dims.batch * dims.n_head * dims.seqlen * dims.seqlen.min(BC) < SERIAL_SCORES
}

// ----------------------------------------------------------------------------------------------
// tiles

/// Keys `row0 .. row0 + nk` (head columns from `col0`) transposed into `tile[d * BC + j]`; the
/// columns `j >= nk` are zero.
#[inline(always)]
unsafe fn load_t(m: Mat, row0: usize, nk: usize, col0: usize, dh: usize, tile: &mut [f32]) {
    for j in 0..nk {
        let src = m.ptr.add((row0 + j) * m.ld + col0);
        for d in 0..dh {
            tile[d * BC + j] = *src.add(d);
        }
    }
    if nk < BC {
        for d in 0..dh {
            tile[d * BC + nk..(d + 1) * BC].fill(0.0);
        }
    }
}

/// Rows `row0 .. row0 + n` (head columns from `col0`) into `tile[j * dh + d]`, times `mul`.
#[inline(always)]
unsafe fn load_rows(m: Mat, row0: usize, n: usize, col0: usize, dh: usize, mul: f32, tile: &mut [f32]) {
    for j in 0..n {
        let src = m.ptr.add((row0 + j) * m.ld + col0);
        for d in 0..dh {
            tile[j * dh + d] = *src.add(d) * mul;
        }
    }
}

/// `s[j] = Σ_d x[d] · tile[d * BC + j]`: one row against a transposed block.
#[inline(always)]
fn row_times_tile<const FMA: bool>(x: &[f32], tile: &[f32], s: &mut [f32; BC]) {
    *s = [0.0; BC];
    for (d, &xd) in x.iter().enumerate() {
        let t = &tile[d * BC..][..BC];
        for j in 0..BC {
            s[j] = madd::<FMA>(xd, t[j], s[j]);
        }
    }
}

/// `s[j] = exp(s[j] - sub)` for `j < valid`, 0 beyond.
#[inline(always)]
fn exp_shifted<const FMA: bool>(s: &mut [f32; BC], sub: f32, valid: usize) {
    for c in 0..BC / LANES {
        let mut x: Lanes = [0.0; LANES];
        for l in 0..LANES {
            x[l] = s[c * LANES + l] - sub;
        }
        let e = simd::exp8::<FMA>(x);
        s[c * LANES..(c + 1) * LANES].copy_from_slice(&e);
    }
    s[valid..].fill(0.0);
}

/// Max of `s[..valid]` and `init`; sets `s[valid..]` to −∞. Lane-wise (vectorized), then across lanes.
#[inline(always)]
fn masked_max(s: &mut [f32; BC], valid: usize, init: f32) -> f32 {
    s[valid..].fill(f32::NEG_INFINITY);
    let mut m = [init; LANES];
    for c in 0..BC / LANES {
        for l in 0..LANES {
            let x = s[c * LANES + l];
            m[l] = if x > m[l] { x } else { m[l] };
        }
    }
    m.iter().fold(init, |a, &b| if b > a { b } else { a })
}

/// Sum of a block in [`LANES`] independent partial sums (a single running sum is a serial chain).
#[inline(always)]
fn block_sum(s: &[f32; BC]) -> f32 {
    let mut a = [0.0f32; LANES];
    for c in 0..BC / LANES {
        for l in 0..LANES {
            a[l] += s[c * LANES + l];
        }
    }
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// `acc += Σ_{j < n} w[j] · rows[j]` for rows of `acc.len()` columns in `rows[j * dh ..]`, four
/// rows per pass over `acc` (a quarter of the loads and stores of `acc`).
#[inline(always)]
fn add_weighted_rows<const FMA: bool>(acc: &mut [f32], w: &[f32], rows: &[f32], n: usize) {
    let dh = acc.len();
    let mut j = 0;
    // Zipped iterators: no bounds checks in the loops, so they vectorize.
    while j + 4 <= n {
        let (w0, w1, w2, w3) = (w[j], w[j + 1], w[j + 2], w[j + 3]);
        let mut it = rows[j * dh..(j + 4) * dh].chunks_exact(dh);
        let (r0, r1, r2, r3) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        for ((((a, &x0), &x1), &x2), &x3) in acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            let x = madd::<FMA>(w0, x0, *a);
            let x = madd::<FMA>(w1, x1, x);
            let x = madd::<FMA>(w2, x2, x);
            *a = madd::<FMA>(w3, x3, x);
        }
        j += 4;
    }
    while j < n {
        let wj = w[j];
        for (a, &x) in acc.iter_mut().zip(&rows[j * dh..(j + 1) * dh]) {
            *a = madd::<FMA>(wj, x, *a);
        }
        j += 1;
    }
}

// ----------------------------------------------------------------------------------------------
// forward

struct FwdArgs {
    dims: AttnDims,
    scale: f32,
    q: Mat,
    k: Mat,
    v: Mat,
    out: MatMut,
    lse: *mut f32,
}
unsafe impl Send for FwdArgs {}
unsafe impl Sync for FwdArgs {}

/// Causal attention forward (see [`crate::backend::Backend::attention`]).
pub fn attention(
    dims: AttnDims,
    scale: f32,
    q: View<'_, Vec<f32>>,
    k: View<'_, Vec<f32>>,
    v: View<'_, Vec<f32>>,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    check_dims("attention", dims)?;
    let (rows, w) = (dims.rows(), dims.width());
    check_view("attention q", &q, rows, w)?;
    check_view("attention k", &k, rows, w)?;
    check_view("attention v", &v, rows, w)?;
    need("attention out", out.len(), rows * w)?;
    need("attention lse", lse.len(), rows * dims.n_head)?;
    if rows == 0 {
        return Ok(());
    }
    let a = FwdArgs {
        dims,
        scale,
        q: Mat::of(&q),
        k: Mat::of(&k),
        v: Mat::of(&v),
        out: MatMut { ptr: out.as_mut_ptr(), ld: w },
        lse: lse.as_mut_ptr(),
    };
    let qblocks = dims.seqlen.div_ceil(BR);
    let fma = simd::has_avx2_fma();
    // Tasks in reverse block order: the last (most expensive) query blocks start first.
    // SAFETY: task (b, h, qb) writes rows of query block qb of sequence b, columns of head h only.
    let run = |task: usize| unsafe {
        let bh = task / qblocks;
        let qb = qblocks - 1 - task % qblocks;
        #[cfg(target_arch = "x86_64")]
        if fma {
            return fwd_task_avx2(&a, bh, qb);
        }
        let _ = fma;
        fwd_task::<false>(&a, bh, qb)
    };
    for_tasks(dims.batch * dims.n_head * qblocks, is_small(dims), run);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_task_avx2(a: &FwdArgs, bh: usize, qb: usize) {
    fwd_task::<true>(a, bh, qb)
}

#[inline(always)]
unsafe fn fwd_task<const FMA: bool>(a: &FwdArgs, bh: usize, qb: usize) {
    let AttnDims { seqlen: l, n_head, head_dim: dh, .. } = a.dims;
    let (b, h) = (bh / n_head, bh % n_head);
    let col0 = h * dh;
    let t0 = qb * BR;
    let nr = BR.min(l - t0);
    let base = b * l;
    let mut qs = vec![0.0f32; nr * dh];
    load_rows(a.q, base + t0, nr, col0, dh, a.scale, &mut qs);
    let mut acc = vec![0.0f32; nr * dh];
    let mut m = [f32::NEG_INFINITY; BR];
    let mut sum = [0.0f32; BR];
    let mut kt = vec![0.0f32; dh * BC];
    let mut vb = vec![0.0f32; BC * dh];
    let mut s = [0.0f32; BC];
    let last = t0 + nr - 1;
    for kb in 0..=last / BC {
        let k0 = kb * BC;
        let nk = BC.min(last + 1 - k0);
        load_t(a.k, base + k0, nk, col0, dh, &mut kt);
        load_rows(a.v, base + k0, nk, col0, dh, 1.0, &mut vb);
        for i in 0..nr {
            let t = t0 + i;
            if t < k0 {
                continue;
            }
            let valid = nk.min(t + 1 - k0);
            row_times_tile::<FMA>(&qs[i * dh..][..dh], &kt, &mut s);
            let mx = masked_max(&mut s, valid, m[i]);
            exp_shifted::<FMA>(&mut s, mx, valid);
            let corr = (m[i] - mx).exp();
            sum[i] = sum[i] * corr + block_sum(&s);
            let acc_i = &mut acc[i * dh..][..dh];
            if corr != 1.0 {
                acc_i.iter_mut().for_each(|x| *x *= corr);
            }
            add_weighted_rows::<FMA>(acc_i, &s, &vb, valid);
            m[i] = mx;
        }
    }
    for i in 0..nr {
        let inv = 1.0 / sum[i];
        let dst = a.out.ptr.add((base + t0 + i) * a.out.ld + col0);
        for d in 0..dh {
            *dst.add(d) = acc[i * dh + d] * inv;
        }
        *a.lse.add(bh * l + t0 + i) = m[i] + sum[i].ln();
    }
}

// ----------------------------------------------------------------------------------------------
// backward

struct BwdArgs {
    dims: AttnDims,
    scale: f32,
    q: Mat,
    k: Mat,
    v: Mat,
    dout: Mat,
    lse: *const f32,
    /// `D = rowsum(dO ∘ O)`, `[batch, n_head, seqlen]`.
    dvec: *const f32,
    dq: MatMut,
    dk: MatMut,
    dv: MatMut,
}
unsafe impl Send for BwdArgs {}
unsafe impl Sync for BwdArgs {}

/// Causal attention backward (see [`crate::backend::Backend::attention_backward`]).
pub fn attention_backward(
    dims: AttnDims,
    scale: f32,
    q: View<'_, Vec<f32>>,
    k: View<'_, Vec<f32>>,
    v: View<'_, Vec<f32>>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: ViewMut<'_, Vec<f32>>,
    dk: ViewMut<'_, Vec<f32>>,
    dv: ViewMut<'_, Vec<f32>>,
) -> Result<()> {
    check_dims("attention_backward", dims)?;
    let (rows, w, nh, dh, l) = (dims.rows(), dims.width(), dims.n_head, dims.head_dim, dims.seqlen);
    check_view("attention_backward q", &q, rows, w)?;
    check_view("attention_backward k", &k, rows, w)?;
    check_view("attention_backward v", &v, rows, w)?;
    need("attention_backward out", out.len(), rows * w)?;
    need("attention_backward lse", lse.len(), rows * nh)?;
    need("attention_backward dout", dout.len(), rows * w)?;
    check_view_mut("attention_backward dq", &dq, rows, w)?;
    check_view_mut("attention_backward dk", &dk, rows, w)?;
    check_view_mut("attention_backward dv", &dv, rows, w)?;
    if rows == 0 {
        return Ok(());
    }
    // D[b, h, t] = dO·O over the head's columns, in the layout of lse.
    let mut dvec = vec![0.0f32; rows * nh];
    let dseq = |(bh, dst): (usize, &mut [f32])| {
        let (b, h) = (bh / nh, bh % nh);
        for (t, d) in dst.iter_mut().enumerate() {
            let at = (b * l + t) * w + h * dh;
            *d = out[at..at + dh].iter().zip(&dout[at..at + dh]).map(|(x, y)| x * y).sum();
        }
    };
    if rows * w <= SERIAL_ELEMS {
        dvec.chunks_mut(l).enumerate().for_each(dseq);
    } else {
        dvec.par_chunks_mut(l).enumerate().for_each(dseq);
    }
    let a = BwdArgs {
        dims,
        scale,
        q: Mat::of(&q),
        k: Mat::of(&k),
        v: Mat::of(&v),
        dout: Mat { ptr: dout.as_ptr(), ld: w },
        lse: lse.as_ptr(),
        dvec: dvec.as_ptr(),
        dq: mat_mut(dq),
        dk: mat_mut(dk),
        dv: mat_mut(dv),
    };
    let fma = simd::has_avx2_fma();
    let serial = is_small(dims);
    let kblocks = l.div_ceil(BC);
    // SAFETY: task (b, h, kb) writes dK, dV rows of key block kb of sequence b, head h columns.
    let run_kv = |task: usize| unsafe {
        let (bh, kb) = (task / kblocks, task % kblocks);
        #[cfg(target_arch = "x86_64")]
        if fma {
            return bwd_kv_task_avx2(&a, bh, kb);
        }
        bwd_kv_task::<false>(&a, bh, kb)
    };
    for_tasks(dims.batch * nh * kblocks, serial, run_kv);
    let qblocks = l.div_ceil(BR);
    // SAFETY: task (b, h, qb) writes dQ rows of query block qb of sequence b, head h columns.
    let run_q = |task: usize| unsafe {
        let bh = task / qblocks;
        let qb = qblocks - 1 - task % qblocks;
        #[cfg(target_arch = "x86_64")]
        if fma {
            return bwd_q_task_avx2(&a, bh, qb);
        }
        bwd_q_task::<false>(&a, bh, qb)
    };
    for_tasks(dims.batch * nh * qblocks, serial, run_q);
    let _ = fma;
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_kv_task_avx2(a: &BwdArgs, bh: usize, kb: usize) {
    bwd_kv_task::<true>(a, bh, kb)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_q_task_avx2(a: &BwdArgs, bh: usize, qb: usize) {
    bwd_q_task::<true>(a, bh, qb)
}

/// Probabilities `p = exp(scale·q·k − lse)` of one query row against a key block, and
/// `ds = p ∘ (dO·v − D)`: the gradient of the scaled scores. Returns them in `s` and `ds`.
#[inline(always)]
fn probs_and_dscores<const FMA: bool>(
    qs: &[f32],
    g: &[f32],
    kt: &[f32],
    vt: &[f32],
    lse: f32,
    dt: f32,
    valid: usize,
    s: &mut [f32; BC],
    ds: &mut [f32; BC],
) {
    row_times_tile::<FMA>(qs, kt, s);
    exp_shifted::<FMA>(s, lse, valid);
    row_times_tile::<FMA>(g, vt, ds);
    for j in 0..BC {
        ds[j] = s[j] * (ds[j] - dt);
    }
}

/// `dK`, `dV` of one key block: sums over the queries at or after the block's first key.
#[inline(always)]
unsafe fn bwd_kv_task<const FMA: bool>(a: &BwdArgs, bh: usize, kb: usize) {
    let AttnDims { seqlen: l, n_head, head_dim: dh, .. } = a.dims;
    let (b, h) = (bh / n_head, bh % n_head);
    let (col0, base) = (h * dh, b * l);
    let k0 = kb * BC;
    let nk = BC.min(l - k0);
    let mut kt = vec![0.0f32; dh * BC];
    let mut vt = vec![0.0f32; dh * BC];
    load_t(a.k, base + k0, nk, col0, dh, &mut kt);
    load_t(a.v, base + k0, nk, col0, dh, &mut vt);
    let mut dkt = vec![0.0f32; dh * BC];
    let mut dvt = vec![0.0f32; dh * BC];
    // Two query rows per pass over the dK, dV tiles (half the tile loads and stores); a missing
    // second row contributes zeros.
    let mut qs = [vec![0.0f32; dh], vec![0.0f32; dh]];
    let mut g = [vec![0.0f32; dh], vec![0.0f32; dh]];
    let mut s = [[0.0f32; BC]; 2];
    let mut ds = [[0.0f32; BC]; 2];
    let mut t = k0;
    while t < l {
        for r in 0..2 {
            if t + r >= l {
                qs[r].fill(0.0);
                g[r].fill(0.0);
                s[r] = [0.0; BC];
                ds[r] = [0.0; BC];
                continue;
            }
            let tr = t + r;
            load_rows(a.q, base + tr, 1, col0, dh, a.scale, &mut qs[r]);
            load_rows(a.dout, base + tr, 1, col0, dh, 1.0, &mut g[r]);
            let valid = nk.min(tr + 1 - k0);
            let (lse, dt) = (*a.lse.add(bh * l + tr), *a.dvec.add(bh * l + tr));
            probs_and_dscores::<FMA>(&qs[r], &g[r], &kt, &vt, lse, dt, valid, &mut s[r], &mut ds[r]);
        }
        for d in 0..dh {
            let (g0, g1, q0, q1) = (g[0][d], g[1][d], qs[0][d], qs[1][d]);
            let (dvr, dkr) = (&mut dvt[d * BC..][..BC], &mut dkt[d * BC..][..BC]);
            for j in 0..BC {
                dvr[j] = madd::<FMA>(g1, s[1][j], madd::<FMA>(g0, s[0][j], dvr[j]));
                dkr[j] = madd::<FMA>(q1, ds[1][j], madd::<FMA>(q0, ds[0][j], dkr[j]));
            }
        }
        t += 2;
    }
    for j in 0..nk {
        let (dk, dv) = (a.dk.ptr.add((base + k0 + j) * a.dk.ld + col0), a.dv.ptr.add((base + k0 + j) * a.dv.ld + col0));
        for d in 0..dh {
            *dk.add(d) = dkt[d * BC + j];
            *dv.add(d) = dvt[d * BC + j];
        }
    }
}

/// `dQ` of one query block: sums over the keys its queries see.
#[inline(always)]
unsafe fn bwd_q_task<const FMA: bool>(a: &BwdArgs, bh: usize, qb: usize) {
    let AttnDims { seqlen: l, n_head, head_dim: dh, .. } = a.dims;
    let (b, h) = (bh / n_head, bh % n_head);
    let (col0, base) = (h * dh, b * l);
    let t0 = qb * BR;
    let nr = BR.min(l - t0);
    let mut qs = vec![0.0f32; nr * dh];
    let mut g = vec![0.0f32; nr * dh];
    load_rows(a.q, base + t0, nr, col0, dh, a.scale, &mut qs);
    load_rows(a.dout, base + t0, nr, col0, dh, 1.0, &mut g);
    let mut acc = vec![0.0f32; nr * dh];
    let mut kt = vec![0.0f32; dh * BC];
    let mut vt = vec![0.0f32; dh * BC];
    let mut kr = vec![0.0f32; BC * dh];
    let (mut s, mut ds) = ([0.0f32; BC], [0.0f32; BC]);
    let last = t0 + nr - 1;
    for kb in 0..=last / BC {
        let k0 = kb * BC;
        let nk = BC.min(last + 1 - k0);
        load_t(a.k, base + k0, nk, col0, dh, &mut kt);
        load_t(a.v, base + k0, nk, col0, dh, &mut vt);
        load_rows(a.k, base + k0, nk, col0, dh, 1.0, &mut kr);
        for i in 0..nr {
            let t = t0 + i;
            if t < k0 {
                continue;
            }
            let valid = nk.min(t + 1 - k0);
            let (lse, dt) = (*a.lse.add(bh * l + t), *a.dvec.add(bh * l + t));
            probs_and_dscores::<FMA>(
                &qs[i * dh..][..dh],
                &g[i * dh..][..dh],
                &kt,
                &vt,
                lse,
                dt,
                valid,
                &mut s,
                &mut ds,
            );
            add_weighted_rows::<FMA>(&mut acc[i * dh..][..dh], &ds, &kr, valid);
        }
    }
    for i in 0..nr {
        let dst = a.dq.ptr.add((base + t0 + i) * a.dq.ld + col0);
        for d in 0..dh {
            *dst.add(d) = acc[i * dh + d] * a.scale;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// RoPE

/// HF Llama's inverse frequencies, in f32 as HF computes them: `1 / θ^(2i / head_dim)`.
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0 / ((theta as f64).powf(e as f64) as f32)
        })
        .collect()
}

/// RoPE in place (`inverse`: rotation by the opposite angles, the backward). The angle of
/// position `p` and frequency `i` is the f32 product `p · inv_freq[i]`, as HF computes it, so a
/// checkpoint trained with HF sees the same rotations at every position; its sine and cosine are
/// evaluated in f64.
pub fn rope(x: ViewMut<'_, Vec<f32>>, dims: AttnDims, pos0: usize, theta: f32, inverse: bool) -> Result<()> {
    check_dims("rope", dims)?;
    let (rows, w, dh, l) = (dims.rows(), dims.width(), dims.head_dim, dims.seqlen);
    if dh % 2 != 0 {
        return Err(Error::Backend(format!("cpu: rope needs an even head size, got {dh}")));
    }
    check_view_mut("rope x", &x, rows, w)?;
    if rows == 0 {
        return Ok(());
    }
    let half = dh / 2;
    let inv_freq = rope_inv_freq(dh, theta);
    let ld = x.ld;
    let end = view_extent(rows, w, x.offset, ld);
    let data = &mut x.buf[x.offset..end];
    let sign = if inverse { -1.0f64 } else { 1.0 };
    let row = |cs: &mut Vec<f32>, (r, xr): (usize, &mut [f32])| {
        let p = (pos0 + r % l) as f32;
        for i in 0..half {
            let (s, c) = ((p * inv_freq[i]) as f64).sin_cos();
            cs[i] = c as f32;
            cs[half + i] = (sign * s) as f32;
        }
        let (cos, sin) = cs.split_at(half);
        for xh in xr[..w].chunks_exact_mut(dh) {
            let (x1, x2) = xh.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    };
    if rows * w <= SERIAL_ELEMS {
        let mut cs = vec![0.0f32; dh];
        data.chunks_mut(ld).enumerate().for_each(|item| row(&mut cs, item));
    } else {
        data.par_chunks_mut(ld).enumerate().for_each_init(|| vec![0.0f32; dh], row);
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// SwiGLU

/// `out = silu(gate) · up`.
pub fn swiglu(
    gate: View<'_, Vec<f32>>,
    up: View<'_, Vec<f32>>,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) -> Result<()> {
    check_view("swiglu gate", &gate, rows, cols)?;
    check_view("swiglu up", &up, rows, cols)?;
    need("swiglu out", out.len(), rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let fma = simd::has_avx2_fma();
    let row = |(r, o): (usize, &mut [f32])| {
        let g = &gate.buf[gate.offset + r * gate.ld..][..cols];
        let u = &up.buf[up.offset + r * up.ld..][..cols];
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU has avx2 and fma (checked at run time).
            return unsafe { swiglu_row_avx2(g, u, o) };
        }
        let _ = fma;
        swiglu_row::<false>(g, u, o)
    };
    let out = &mut out[..rows * cols];
    if rows * cols <= SERIAL_ELEMS {
        out.chunks_mut(cols).enumerate().for_each(row);
    } else {
        out.par_chunks_mut(cols).enumerate().for_each(row);
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_row_avx2(g: &[f32], u: &[f32], o: &mut [f32]) {
    swiglu_row::<true>(g, u, o)
}

/// `sigmoid` of 8 lanes, via `exp(-x)` (saturates to 0 and 1).
#[inline(always)]
fn sigmoid8<const FMA: bool>(x: Lanes) -> Lanes {
    let e = simd::exp8::<FMA>(x.map(|v| -v));
    let mut s = [0.0f32; LANES];
    for l in 0..LANES {
        s[l] = 1.0 / (1.0 + e[l]);
    }
    s
}

/// `(gate, up)` lanes of a row from column `c0`, zero-padded past the end.
#[inline(always)]
fn lanes_at(v: &[f32], c0: usize) -> Lanes {
    let mut x = [0.0f32; LANES];
    let n = LANES.min(v.len() - c0);
    x[..n].copy_from_slice(&v[c0..c0 + n]);
    x
}

#[inline(always)]
fn swiglu_row<const FMA: bool>(g: &[f32], u: &[f32], o: &mut [f32]) {
    for c0 in (0..g.len()).step_by(LANES) {
        let (gl, ul) = (lanes_at(g, c0), lanes_at(u, c0));
        let s = sigmoid8::<FMA>(gl);
        let n = LANES.min(g.len() - c0);
        for l in 0..n {
            o[c0 + l] = gl[l] * s[l] * ul[l];
        }
    }
}

/// `dgate = dout · up · silu'(gate)`, `dup = dout · silu(gate)`, both written.
pub fn swiglu_backward(
    gate: View<'_, Vec<f32>>,
    up: View<'_, Vec<f32>>,
    rows: usize,
    cols: usize,
    dout: &[f32],
    dgate: ViewMut<'_, Vec<f32>>,
    dup: ViewMut<'_, Vec<f32>>,
) -> Result<()> {
    check_view("swiglu_backward gate", &gate, rows, cols)?;
    check_view("swiglu_backward up", &up, rows, cols)?;
    need("swiglu_backward dout", dout.len(), rows * cols)?;
    check_view_mut("swiglu_backward dgate", &dgate, rows, cols)?;
    check_view_mut("swiglu_backward dup", &dup, rows, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (dg, du) = (mat_mut(dgate), mat_mut(dup));
    let fma = simd::has_avx2_fma();
    // SAFETY: task r writes row r of dgate and dup only; extents checked above.
    let row = |r: usize| unsafe {
        let g = &gate.buf[gate.offset + r * gate.ld..][..cols];
        let u = &up.buf[up.offset + r * up.ld..][..cols];
        let d = &dout[r * cols..][..cols];
        let (dgr, dur) = (dg.row(r, cols), du.row(r, cols));
        #[cfg(target_arch = "x86_64")]
        if fma {
            return swiglu_bwd_row_avx2(g, u, d, dgr, dur);
        }
        swiglu_bwd_row::<false>(g, u, d, dgr, dur)
    };
    let _ = fma;
    for_tasks(rows, rows * cols <= SERIAL_ELEMS, row);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_bwd_row_avx2(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    swiglu_bwd_row::<true>(g, u, d, dg, du)
}

#[inline(always)]
fn swiglu_bwd_row<const FMA: bool>(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for c0 in (0..g.len()).step_by(LANES) {
        let gl = lanes_at(g, c0);
        let s = sigmoid8::<FMA>(gl);
        let n = LANES.min(g.len() - c0);
        for l in 0..n {
            let (x, sg, dy) = (gl[l], s[l], d[c0 + l]);
            // silu'(x) = σ(x)·(1 + x·(1 − σ(x))).
            dg[c0 + l] = dy * u[c0 + l] * sg * (1.0 + x * (1.0 - sg));
            du[c0 + l] = dy * x * sg;
        }
    }
}
