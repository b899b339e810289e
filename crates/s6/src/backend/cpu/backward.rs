//! CPU backward kernels (training).
//!
//! Same structure as the forward kernels: `#[inline(always)]` bodies generic over `const FMA: bool`
//! with an `avx2,fma` entry point chosen at run time per rayon task. Every reduction that crosses
//! tasks (column sums, weight gradients, `∂B`/`∂C`) goes through per-task partial sums that are
//! added in a fixed order afterwards: no atomics, no races, and results that do not depend on
//! scheduling.
//!
//! The selective-scan backward is fused like the forward: one task walks one sequence for a block
//! of [`LANES`] channels with the state in a small local array. It runs the recurrence forward once,
//! saving the state at the start of every chunk of [`scan_chunk`] steps, then walks the chunks in
//! reverse, recomputing each chunk's states (and decays) from its checkpoint into a `chunk × d_state × LANES`
//! buffer before stepping backward through it. Nothing of size `(L, D, N)` ever exists.

use rayon::prelude::*;

use super::simd::{self, madd, Lanes, LANES};
use super::{check_view, check_view_bcast, need, view_extent};
use crate::backend::{AdamW, ScanArgs, ScanDims, ScanGrads, Strided, View, ViewMut};
use crate::{Error, Result};

/// Steps between saved states in the scan backward at `d_state ≤ 16`: the reverse pass recomputes
/// at most this many states at a time. Larger states get shorter chunks ([`scan_chunk`]).
pub const SCAN_CHUNK: usize = 256;

/// Steps per chunk of the scan backward for state size `n`: the chunk's states and decays
/// (`2 · chunk · n · LANES` floats, 256 KiB at most) stay in the core's L2 cache. A sequence of at
/// most one chunk needs no forward pass to find checkpoints.
pub fn scan_chunk(n: usize) -> usize {
    (SCAN_CHUNK * 16 / n.max(16)).max(16)
}

/// Channels per task of the conv backward.
const CONV_CW: usize = 32;
const _: () = assert!(CONV_CW.is_multiple_of(LANES), "the conv backward works in whole SIMD lanes");

/// Rows per task of row-parallel reductions (rmsnorm weight gradient, bias column sums): fixed, so
/// that the summation order does not depend on the thread count.
const ROWS_PER_TASK: usize = 64;

fn check_view_mut(what: &str, v: &ViewMut<'_, Vec<f32>>, rows: usize, cols: usize) -> Result<()> {
    check_strided(what, v.buf.len(), Strided { offset: v.offset, ld: v.ld }, rows, cols)
}

/// Checks a written `rows × cols` matrix at `at` in a buffer of `len` elements (`ld ≥ cols`).
fn check_strided(what: &str, len: usize, at: Strided, rows: usize, cols: usize) -> Result<()> {
    if at.ld < cols {
        return Err(Error::Backend(format!("cpu: view '{what}' has row stride {} < {cols} columns", at.ld)));
    }
    need(what, len, view_extent(rows, cols, at.offset, at.ld))
}

/// A raw pointer shared by tasks that write disjoint elements through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Sum of the lanes, pairwise.
#[inline(always)]
fn hsum(v: &Lanes) -> f32 {
    let mut w = *v;
    let mut half = LANES / 2;
    while half > 0 {
        for i in 0..half {
            w[i] += w[i + half];
        }
        half /= 2;
    }
    w[0]
}

/// `sigmoid(x)` without overflow (`exp` saturates).
#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + simd::exp::<FMA>(-x))
}

/// Dot product accumulated in f64 (eight independent accumulators, so it vectorizes).
#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let mut s = hsum_f64(&acc);
    for (x, y) in ar.iter().zip(br) {
        s += *x as f64 * *y as f64;
    }
    s
}

#[inline(always)]
fn hsum_f64(v: &[f64; LANES]) -> f64 {
    let mut w = *v;
    let mut half = LANES / 2;
    while half > 0 {
        for i in 0..half {
            w[i] += w[i + half];
        }
        half /= 2;
    }
    w[0]
}

// ----------------------------------------------------------------------------------------------
// linear

/// `dx = dy · w` (written), `dw += dyᵀ · x`, `db += Σ_rows dy`.
/// `dx` is written, or with `add_dx` accumulated (`Backend::linear_backward_add_dx`).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: View<'_, Vec<f32>>,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    dy: &[f32],
    dx: Option<ViewMut<'_, Vec<f32>>>,
    add_dx: bool,
    dw: &mut [f32],
    db: Option<&mut Vec<f32>>,
) -> Result<()> {
    check_view("linear_backward x", &x, rows, k)?;
    need("linear_backward weight", w.len(), n * k)?;
    need("linear_backward dy", dy.len(), rows * n)?;
    need("linear_backward dw", dw.len(), n * k)?;
    if let Some(dx) = &dx {
        check_view_mut("linear_backward dx", dx, rows, k)?;
    }
    if let Some(db) = &db {
        need("linear_backward db", db.len(), n)?;
    }
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    if let Some(dx) = dx {
        if rows > 0 && k > 0 {
            let ld = dx.ld;
            let dst = &mut dx.buf[dx.offset..];
            if n == 0 {
                if !add_dx {
                    for r in 0..rows {
                        dst[r * ld..][..k].fill(0.0);
                    }
                }
            } else {
                // dst[rows, k] (row stride ld) = dy[rows, n] · w[n, k] (+ dst with add_dx).
                // SAFETY: extents checked above: dst holds rows×k at stride ld, dy rows×n, w n×k.
                unsafe {
                    gemm::gemm(
                        rows,
                        k,
                        n,
                        dst.as_mut_ptr(),
                        1,
                        ld as isize,
                        add_dx,
                        dy.as_ptr(),
                        1,
                        n as isize,
                        w.as_ptr(),
                        1,
                        k as isize,
                        if add_dx { 1.0 } else { 0.0 },
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
        }
    }
    if rows > 0 && n > 0 && k > 0 {
        // dw[n, k] += dyᵀ[n, rows] · x[rows, k].
        // SAFETY: extents checked above; dyᵀ is dy read with swapped strides.
        unsafe {
            gemm::gemm(
                n,
                k,
                rows,
                dw.as_mut_ptr(),
                1,
                k as isize,
                true,
                dy.as_ptr(),
                n as isize,
                1,
                x.buf[x.offset..].as_ptr(),
                1,
                x.ld as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    if let Some(db) = db {
        if rows > 0 && n > 0 {
            let parts: Vec<Vec<f32>> = dy[..rows * n]
                .par_chunks(ROWS_PER_TASK * n)
                .map(|chunk| {
                    let mut s = vec![0.0f32; n];
                    for row in chunk.chunks_exact(n) {
                        s.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    s
                })
                .collect();
            for part in &parts {
                db[..n].iter_mut().zip(part).for_each(|(d, p)| *d += p);
            }
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// rmsnorm

/// `dresidual += ∂L/∂residual`, `dweight += ∂L/∂weight` for `out = residual·r·weight`,
/// `r = rsqrt(mean(residual²) + eps)`.
pub fn rmsnorm_backward(
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    rows: usize,
    dim: usize,
    dout: &[f32],
    dresidual: &mut [f32],
    dweight: &mut [f32],
) -> Result<()> {
    need("rmsnorm_backward residual", residual.len(), rows * dim)?;
    need("rmsnorm_backward weight", weight.len(), dim)?;
    need("rmsnorm_backward dout", dout.len(), rows * dim)?;
    need("rmsnorm_backward dresidual", dresidual.len(), rows * dim)?;
    need("rmsnorm_backward dweight", dweight.len(), dim)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let fma = simd::has_avx2_fma();
    let weight = &weight[..dim];
    let parts: Vec<Vec<f32>> = dresidual[..rows * dim]
        .par_chunks_mut(ROWS_PER_TASK * dim)
        .enumerate()
        .map(|(task, dres)| {
            let start = task * ROWS_PER_TASK * dim;
            let x = &residual[start..][..dres.len()];
            let dy = &dout[start..][..dres.len()];
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU supports avx2+fma (checked above).
                return unsafe { rms_rows_avx2(x, dy, weight, eps, dres) };
            }
            let _ = fma;
            rms_rows::<false>(x, dy, weight, eps, dres)
        })
        .collect();
    for part in &parts {
        dweight[..dim].iter_mut().zip(part).for_each(|(d, p)| *d += p);
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rms_rows_avx2(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dres: &mut [f32]) -> Vec<f32> {
    rms_rows::<true>(x, dy, w, eps, dres)
}

/// Rows of one task; returns the task's partial weight gradient.
#[inline(always)]
fn rms_rows<const FMA: bool>(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dres: &mut [f32]) -> Vec<f32> {
    let dim = w.len();
    let mut dw = vec![0.0f32; dim];
    let mut dyw = vec![0.0f32; dim];
    for ((x, dy), dres) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dres.chunks_exact_mut(dim)) {
        let r = 1.0 / (dot_f64(x, x) / dim as f64 + eps as f64).sqrt();
        for ((o, &g), &wi) in dyw.iter_mut().zip(dy).zip(w) {
            *o = g * wi;
        }
        let mean = dot_f64(&dyw, x) / dim as f64;
        let (rf, coef) = (r as f32, (r * r * r * mean) as f32);
        for i in 0..dim {
            dres[i] += madd::<FMA>(rf, dyw[i], -(x[i] * coef));
            dw[i] = madd::<FMA>(dy[i] * x[i], rf, dw[i]);
        }
    }
    dw
}

// ----------------------------------------------------------------------------------------------
// conv1d + SiLU

struct ConvBwd<'a> {
    x: &'a [f32],
    x_ld: usize,
    batch: usize,
    seqlen: usize,
    channels: usize,
    kernel: usize,
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    dout: &'a [f32],
    dx: SendPtr,
    dx_ld: usize,
}

/// Backward of the depthwise causal conv1d + SiLU from a zero initial state: `dx` written,
/// `dweight` and `dbias` accumulated. One task per block of [`CONV_CW`] channels walks every
/// sequence backward in time, keeping the last `kernel` pre-activation gradients in a ring.
pub fn conv1d_silu_backward(
    x: View<'_, Vec<f32>>,
    batch: usize,
    seqlen: usize,
    channels: usize,
    kernel: usize,
    weight: &[f32],
    bias: Option<&Vec<f32>>,
    dout: &[f32],
    dx: ViewMut<'_, Vec<f32>>,
    dweight: &mut [f32],
    dbias: Option<&mut Vec<f32>>,
) -> Result<()> {
    if kernel == 0 {
        return Err(Error::Backend("cpu: conv kernel size 0".into()));
    }
    let rows = batch * seqlen;
    check_view("conv_backward x", &x, rows, channels)?;
    need("conv_backward weight", weight.len(), channels * kernel)?;
    if let Some(b) = bias {
        need("conv_backward bias", b.len(), channels)?;
    }
    need("conv_backward dout", dout.len(), rows * channels)?;
    check_view_mut("conv_backward dx", &dx, rows, channels)?;
    need("conv_backward dweight", dweight.len(), channels * kernel)?;
    if let Some(db) = &dbias {
        need("conv_backward dbias", db.len(), channels)?;
    }
    if rows == 0 || channels == 0 {
        return Ok(());
    }
    let args = ConvBwd {
        x: &x.buf[x.offset..],
        x_ld: x.ld,
        batch,
        seqlen,
        channels,
        kernel,
        weight,
        bias: bias.map(|b| &b[..channels]),
        dout,
        dx: SendPtr(dx.buf[dx.offset..].as_mut_ptr()),
        dx_ld: dx.ld,
    };
    let fma = simd::has_avx2_fma();
    let tasks = channels.div_ceil(CONV_CW);
    let parts: Vec<(Vec<Lanes32>, Lanes32)> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            // Gradients of a loss with few targets pass through the subnormal range.
            let _flush = simd::FlushSubnormals::new();
            // SAFETY: each task writes only its own channels of dx (extent checked above).
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if fma {
                    return conv_bwd_block_avx2(&args, task * CONV_CW);
                }
                let _ = fma;
                conv_bwd_block::<false>(&args, task * CONV_CW)
            }
        })
        .collect();
    let mut dbias = dbias;
    for (task, (dw, db)) in parts.iter().enumerate() {
        let c0 = task * CONV_CW;
        for c in 0..CONV_CW.min(channels - c0) {
            for (j, dwj) in dw.iter().enumerate() {
                dweight[(c0 + c) * kernel + j] += dwj[c];
            }
            if let Some(dbias) = dbias.as_deref_mut() {
                dbias[c0 + c] += db[c];
            }
        }
    }
    Ok(())
}

type Lanes32 = [f32; CONV_CW];

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_bwd_block_avx2(a: &ConvBwd<'_>, c0: usize) -> (Vec<Lanes32>, Lanes32) {
    conv_bwd_block::<true>(a, c0)
}

/// The first `cw` values of `src`, zero-padded to [`CONV_CW`].
#[inline(always)]
fn load32(src: &[f32], cw: usize) -> Lanes32 {
    if let Some(v) = src.first_chunk::<CONV_CW>() {
        if cw == CONV_CW {
            return *v;
        }
    }
    let mut v = [0.0f32; CONV_CW];
    v[..cw].copy_from_slice(&src[..cw]);
    v
}

/// Channels `c0..c0 + CONV_CW` (clipped); returns the block's `(dweight [kernel][CW], dbias [CW])`.
#[inline(always)]
unsafe fn conv_bwd_block<const FMA: bool>(a: &ConvBwd<'_>, c0: usize) -> (Vec<Lanes32>, Lanes32) {
    let (ch, k, l) = (a.channels, a.kernel, a.seqlen);
    let cw = CONV_CW.min(ch - c0);
    // Padding channels keep zero weights, inputs and gradients.
    let mut wt = vec![[0.0f32; CONV_CW]; k];
    for (j, wj) in wt.iter_mut().enumerate() {
        for (c, w) in wj.iter_mut().enumerate().take(cw) {
            *w = a.weight[(c0 + c) * k + j];
        }
    }
    let mut bias = [0.0f32; CONV_CW];
    if let Some(b) = a.bias {
        bias[..cw].copy_from_slice(&b[c0..c0 + cw]);
    }
    let mut ring = vec![[0.0f32; CONV_CW]; k];
    let mut xs = vec![[0.0f32; CONV_CW]; k];
    let mut dw = vec![[0.0f32; CONV_CW]; k];
    let mut db = [0.0f32; CONV_CW];
    for b in 0..a.batch {
        for t in (0..l).rev() {
            let row = b * l + t;
            // Taps: input row t + j - (k - 1), zero before the sequence start.
            let mut pre = bias;
            for (j, xj) in xs.iter_mut().enumerate() {
                *xj = match (t + j).checked_sub(k - 1) {
                    Some(tt) => load32(&a.x[(b * l + tt) * a.x_ld + c0..], cw),
                    None => [0.0; CONV_CW],
                };
                for c in 0..CONV_CW {
                    pre[c] = madd::<FMA>(wt[j][c], xj[c], pre[c]);
                }
            }
            let g = load32(&a.dout[row * ch + c0..], cw);
            let mut dp = [0.0f32; CONV_CW];
            // sigmoid(pre) eight lanes at a time (one scalar exp per channel dominated the step).
            let mut sg = [0.0f32; CONV_CW];
            for (sg8, pre8) in sg.chunks_exact_mut(LANES).zip(pre.chunks_exact(LANES)) {
                let e = simd::exp8::<FMA>(std::array::from_fn(|l| -pre8[l]));
                for l in 0..LANES {
                    sg8[l] = 1.0 / (1.0 + e[l]);
                }
            }
            for c in 0..CONV_CW {
                let s = sg[c];
                dp[c] = g[c] * s * madd::<FMA>(pre[c], 1.0 - s, 1.0);
                db[c] += dp[c];
            }
            for (dwj, xj) in dw.iter_mut().zip(&xs) {
                for c in 0..CONV_CW {
                    dwj[c] = madd::<FMA>(dp[c], xj[c], dwj[c]);
                }
            }
            ring[t % k] = dp;
            // dx[t] = Σ_j w[j]·dpre[t + (k-1) - j] over the steps still inside the sequence.
            let mut acc = [0.0f32; CONV_CW];
            for (j, wj) in wt.iter().enumerate() {
                let tt = t + (k - 1) - j;
                if tt < l {
                    let r = &ring[tt % k];
                    for c in 0..CONV_CW {
                        acc[c] = madd::<FMA>(wj[c], r[c], acc[c]);
                    }
                }
            }
            let dst = a.dx.0.add(row * a.dx_ld + c0);
            for (c, v) in acc.iter().enumerate().take(cw) {
                *dst.add(c) = *v;
            }
        }
    }
    (dw, db)
}

// ----------------------------------------------------------------------------------------------
// selective scan

/// Raw pointers of one scan-backward call; tasks write disjoint (row, channel) ranges of the
/// per-element outputs, and `∂B`/`∂C` and the parameter gradients `∂A`, `∂D`, `∂(Δ bias)` go
/// through per-task accumulators (tasks of different sequences share channels).
#[derive(Clone, Copy)]
struct ScanBwdPtrs {
    u: *const f32,
    delta: *const f32,
    delta_bias: *const f32,
    a: *const f32,
    b: *const f32,
    b_ld: usize,
    c: *const f32,
    c_ld: usize,
    d: *const f32,
    z: *const f32,
    z_ld: usize,
    dy: *const f32,
    du: *mut f32,
    ddelta: *mut f32,
    dz: *mut f32,
    dz_ld: usize,
    da: *mut f32,
    dd: *mut f32,
    ddelta_bias: *mut f32,
}
unsafe impl Send for ScanBwdPtrs {}
unsafe impl Sync for ScanBwdPtrs {}

impl ScanBwdPtrs {
    /// The same operands with the parameter gradients redirected (a method, so that closures
    /// capture the whole `Sync` struct rather than its raw-pointer fields).
    fn with_params(&self, da: *mut f32, dd: *mut f32, ddelta_bias: *mut f32) -> Self {
        ScanBwdPtrs { da, dd, ddelta_bias, ..*self }
    }
}

/// Per-task scratch, reused across the task's channel blocks.
struct ScanWork {
    /// Parameters `A` of the block, `[d_state]` lane arrays.
    a: Vec<Lanes>,
    /// Running state (forward pass) / running `∂h` (reverse pass), `[d_state]`.
    h: Vec<Lanes>,
    /// Accumulated `∂A`, `[d_state]`.
    da: Vec<Lanes>,
    /// State at the start of every chunk, `[chunks][d_state]`.
    ckpt: Vec<Lanes>,
    /// States of the current chunk: `hs[0]` is the state before its first step, `[CHUNK+1][d_state]`.
    hs: Vec<Lanes>,
    /// Decays `exp(Δ·A)` of the current chunk, `[CHUNK][d_state]`.
    decay: Vec<Lanes>,
    /// `Δ` of the current chunk, `[CHUNK]`.
    dt: Vec<Lanes>,
    /// One step's per-channel terms of `∂B` then `∂C`, `[2 · d_state]`, before they are summed
    /// over the block's channels (AVX2 path).
    dbc: Vec<Lanes>,
}

impl ScanWork {
    fn new(seqlen: usize, n: usize) -> Self {
        let z = [0.0f32; LANES];
        ScanWork {
            a: vec![z; n],
            h: vec![z; n],
            da: vec![z; n],
            ckpt: vec![z; seqlen.div_ceil(scan_chunk(n)) * n],
            hs: vec![z; (scan_chunk(n) + 1) * n],
            decay: vec![z; scan_chunk(n) * n],
            dt: vec![z; scan_chunk(n)],
            dbc: vec![z; 2 * n],
        }
    }
}

/// Backward of the fused selective scan from a zero initial state (see the module docs).
pub fn selective_scan_backward(
    args: &ScanArgs<'_, Vec<f32>>,
    dy: &[f32],
    grads: ScanGrads<'_, Vec<f32>>,
) -> Result<()> {
    selective_scan_backward_with(args, dy, grads, None, true)
}

/// [`selective_scan_backward`] with the number of channel groups per sequence (`None`: from the
/// thread count) and the FMA path (`true`: when the CPU has it) chosen; tests cover every choice.
pub fn selective_scan_backward_with(
    args: &ScanArgs<'_, Vec<f32>>,
    dy: &[f32],
    grads: ScanGrads<'_, Vec<f32>>,
    groups: Option<usize>,
    fma: bool,
) -> Result<()> {
    let dims = args.dims;
    let ScanDims { batch, seqlen, d_inner, d_state: n } = dims;
    let rows = batch * seqlen;
    need("scan_backward u", args.u.len(), rows * d_inner)?;
    need("scan_backward delta", args.delta.len(), rows * d_inner)?;
    need("scan_backward delta_bias", args.delta_bias.len(), d_inner)?;
    need("scan_backward A", args.a.len(), d_inner * n)?;
    need("scan_backward D", args.d.len(), d_inner)?;
    check_view_bcast("scan_backward B", &args.b, rows, n)?;
    check_view_bcast("scan_backward C", &args.c, rows, n)?;
    if let Some(z) = &args.z {
        check_view("scan_backward z", z, rows, d_inner)?;
    }
    if args.z.is_some() != grads.dz.is_some() {
        return Err(Error::Backend("cpu: scan_backward needs z and dz both given (gated) or both absent".into()));
    }
    need("scan_backward dy", dy.len(), rows * d_inner)?;
    need("scan_backward du", grads.du.len(), rows * d_inner)?;
    need("scan_backward ddelta", grads.ddelta.len(), rows * d_inner)?;
    check_strided("scan_backward dB", grads.dbc.len(), grads.db, rows, n)?;
    check_strided("scan_backward dC", grads.dbc.len(), grads.dc, rows, n)?;
    if let Some(dz) = &grads.dz {
        check_view_mut("scan_backward dz", dz, rows, d_inner)?;
    }
    need("scan_backward dA", grads.da.len(), d_inner * n)?;
    need("scan_backward dD", grads.dd.len(), d_inner)?;
    need("scan_backward ddelta_bias", grads.ddelta_bias.len(), d_inner)?;
    if rows == 0 {
        return Ok(());
    }
    let dbc = grads.dbc;
    if d_inner == 0 {
        for at in [grads.db, grads.dc] {
            for r in 0..rows {
                dbc[at.offset + r * at.ld..][..n].fill(0.0);
            }
        }
        return Ok(());
    }
    let gate = args.z.is_some();

    let (dz_ptr, dz_ld) = match grads.dz {
        Some(dz) => (dz.buf[dz.offset..].as_mut_ptr(), dz.ld),
        None => (std::ptr::null_mut(), 0),
    };
    let p = ScanBwdPtrs {
        u: args.u.as_ptr(),
        delta: args.delta.as_ptr(),
        delta_bias: args.delta_bias.as_ptr(),
        a: args.a.as_ptr(),
        b: args.b.buf[args.b.offset..].as_ptr(),
        b_ld: args.b.ld,
        c: args.c.buf[args.c.offset..].as_ptr(),
        c_ld: args.c.ld,
        d: args.d.as_ptr(),
        z: args.z.map_or(std::ptr::null(), |z| z.buf[z.offset..].as_ptr()),
        z_ld: args.z.map_or(0, |z| z.ld),
        dy: dy.as_ptr(),
        du: grads.du.as_mut_ptr(),
        ddelta: grads.ddelta.as_mut_ptr(),
        dz: dz_ptr,
        dz_ld,
        da: grads.da.as_mut_ptr(),
        dd: grads.dd.as_mut_ptr(),
        ddelta_bias: grads.ddelta_bias.as_mut_ptr(),
    };
    let blocks = d_inner.div_ceil(LANES);
    // Channel groups per sequence: about two tasks per thread in all, each with its own [L, 2N]
    // accumulator for ∂B/∂C.
    let groups = groups.unwrap_or_else(|| (2 * rayon::current_num_threads()).div_ceil(batch)).clamp(1, blocks);
    let fma = fma && simd::has_avx2_fma();
    // Tasks (b, g) and (b', g) cover the same channels: each accumulates ∂A, ∂D and ∂(Δ bias) of
    // its channels into its own buffers, added to the gradients below in task order. (Adding to
    // the shared gradients from the tasks raced when batch > 1: lost updates, and results that
    // changed from run to run.)
    let tasks: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * groups)
        .into_par_iter()
        .map(|task| {
            let _flush = simd::FlushSubnormals::new();
            let (b, g) = (task / groups, task % groups);
            let mut acc = vec![0.0f32; seqlen * 2 * n];
            let mut params = vec![0.0f32; d_inner * (n + 2)];
            let (pa, rest) = params.split_at_mut(d_inner * n);
            let (pd, pb) = rest.split_at_mut(d_inner);
            let tp = p.with_params(pa.as_mut_ptr(), pd.as_mut_ptr(), pb.as_mut_ptr());
            let mut work = ScanWork::new(seqlen, n);
            for blk in g * blocks / groups..(g + 1) * blocks / groups {
                // SAFETY: extents checked above; the task writes channels of its blocks of
                // sequence b only, and the parameter gradients into its own buffers.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        match gate {
                            true => scan_bwd_block_avx2::<true>(&tp, dims, b, blk, &mut work, &mut acc),
                            false => scan_bwd_block_avx2::<false>(&tp, dims, b, blk, &mut work, &mut acc),
                        }
                        continue;
                    }
                    let _ = fma;
                    match gate {
                        true => scan_bwd_block::<false, true>(&tp, dims, b, blk, &mut work, &mut acc),
                        false => scan_bwd_block::<false, false>(&tp, dims, b, blk, &mut work, &mut acc),
                    }
                }
            }
            (acc, params)
        })
        .collect();
    for (_, params) in &tasks {
        let (pa, rest) = params.split_at(d_inner * n);
        let (pd, pb) = rest.split_at(d_inner);
        grads.da[..d_inner * n].iter_mut().zip(pa).for_each(|(g, v)| *g += v);
        grads.dd[..d_inner].iter_mut().zip(pd).for_each(|(g, v)| *g += v);
        grads.ddelta_bias[..d_inner].iter_mut().zip(pb).for_each(|(g, v)| *g += v);
    }
    let accs: Vec<Vec<f32>> = tasks.into_iter().map(|(acc, _)| acc).collect();
    // ∂B/∂C: the groups' partial sums, added in group order; one matrix after the other (rows
    // of one matrix are disjoint, `ld ≥ n`).
    let w = 2 * n;
    if n > 0 {
        for (at, c0) in [(grads.db, 0), (grads.dc, n)] {
            dbc[at.offset..].par_chunks_mut(at.ld).take(rows).enumerate().for_each(|(row, dst)| {
                let (b, t) = (row / seqlen, row % seqlen);
                let dst = &mut dst[..n];
                dst.copy_from_slice(&accs[b * groups][t * w + c0..][..n]);
                for acc in &accs[b * groups + 1..(b + 1) * groups] {
                    dst.iter_mut().zip(&acc[t * w + c0..][..n]).for_each(|(d, a)| *d += a);
                }
            });
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_bwd_block_avx2<const GATE: bool>(
    p: &ScanBwdPtrs,
    dims: ScanDims,
    b: usize,
    blk: usize,
    work: &mut ScanWork,
    acc: &mut [f32],
) {
    scan_bwd_block::<true, GATE>(p, dims, b, blk, work, acc)
}

/// Loads `width` channels starting at `src` into a lane array (the rest zero).
#[inline(always)]
unsafe fn load_lanes(src: *const f32, width: usize) -> Lanes {
    if width == LANES {
        return (src as *const Lanes).read_unaligned();
    }
    let mut v = [0.0f32; LANES];
    for (l, v) in v.iter_mut().enumerate().take(width) {
        *v = *src.add(l);
    }
    v
}

#[inline(always)]
unsafe fn store_lanes(dst: *mut f32, v: &Lanes, width: usize) {
    for (l, v) in v.iter().enumerate().take(width) {
        *dst.add(l) = *v;
    }
}

/// `(Δ, u)` of one step of a block: `Δ = softplus(delta + bias)`.
#[inline(always)]
unsafe fn step_inputs<const FMA: bool>(p: &ScanBwdPtrs, at: usize, width: usize, bias: &Lanes) -> (Lanes, Lanes) {
    let raw = load_lanes(p.delta.add(at), width);
    let x = load_lanes(p.u.add(at), width);
    let dt = simd::softplus8::<FMA>(std::array::from_fn(|l| raw[l] + bias[l]));
    (dt, x)
}

/// One sequence `b`, channels `blk*LANES..` (clipped): adds the block's `∂B`/`∂C` to `acc`
/// (`[seqlen, 2·d_state]`), writes its `du`, `ddelta`, `dz` and accumulates `dA`, `dD`, `dbias`.
/// `GATE = false`: no gate (`y = C·h + D·u`), `z` is not read and no `dz` written. `B`/`C` rows
/// are read at `row · ld` (`ld = 0`: one row broadcast to every step).
#[inline(always)]
unsafe fn scan_bwd_block<const FMA: bool, const GATE: bool>(
    p: &ScanBwdPtrs,
    dims: ScanDims,
    b: usize,
    blk: usize,
    work: &mut ScanWork,
    acc: &mut [f32],
) {
    let ScanDims { seqlen, d_inner, d_state: n, .. } = dims;
    let c0 = blk * LANES;
    let width = LANES.min(d_inner - c0);
    let chunk = scan_chunk(n);
    let chunks = seqlen.div_ceil(chunk);
    let ScanWork { a, h, da, ckpt, hs, decay, dt: dts, dbc } = work;
    // Padding lanes: A = 0, bias = 0, D = 0 and zero inputs and gradients, so they stay inert.
    let mut bias: Lanes = [0.0; LANES];
    let mut dskip: Lanes = [0.0; LANES];
    for s in 0..n {
        a[s] = [0.0; LANES];
        h[s] = [0.0; LANES];
        da[s] = [0.0; LANES];
    }
    for l in 0..width {
        let ch = c0 + l;
        for (s, as_) in a.iter_mut().enumerate() {
            as_[l] = *p.a.add(ch * n + s);
        }
        bias[l] = *p.delta_bias.add(ch);
        dskip[l] = *p.d.add(ch);
    }

    // Forward: the state at the start of every chunk (the first is zero; nothing after the last
    // chunk's start is needed).
    for t in 0..(chunks - 1) * chunk {
        if t % chunk == 0 {
            ckpt[(t / chunk) * n..][..n].copy_from_slice(h);
        }
        let row = b * seqlen + t;
        let (dt, x) = step_inputs::<FMA>(p, row * d_inner + c0, width, &bias);
        let brow = p.b.add(row * p.b_ld);
        for (s, (hs_, as_)) in h.iter_mut().zip(a.iter()).enumerate() {
            let bs = *brow.add(s);
            let dec = simd::exp8::<FMA>(std::array::from_fn(|l| dt[l] * as_[l]));
            for l in 0..LANES {
                hs_[l] = madd::<FMA>(dec[l], hs_[l], dt[l] * x[l] * bs);
            }
        }
    }
    // The last chunk's start (with one chunk, the zero state).
    ckpt[(chunks - 1) * n..][..n].copy_from_slice(h);

    // Reverse, chunk by chunk; `h` now carries ∂L/∂h_t (times the decay of step t+1).
    let dh = h;
    for s in dh.iter_mut() {
        *s = [0.0; LANES];
    }
    let mut dd_acc: Lanes = [0.0; LANES];
    let mut dbias_acc: Lanes = [0.0; LANES];
    for ck in (0..chunks).rev() {
        let t0 = ck * chunk;
        let len = chunk.min(seqlen - t0);
        hs[..n].copy_from_slice(&ckpt[ck * n..][..n]);
        for i in 0..len {
            let row = b * seqlen + t0 + i;
            let (dt, x) = step_inputs::<FMA>(p, row * d_inner + c0, width, &bias);
            dts[i] = dt;
            let brow = p.b.add(row * p.b_ld);
            let (prev, cur) = hs[i * n..(i + 2) * n].split_at_mut(n);
            let decs = &mut decay[i * n..][..n];
            for s in 0..n {
                let bs = *brow.add(s);
                let dec = simd::exp8::<FMA>(std::array::from_fn(|l| dt[l] * a[s][l]));
                decs[s] = dec;
                for l in 0..LANES {
                    cur[s][l] = madd::<FMA>(dec[l], prev[s][l], dt[l] * x[l] * bs);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if FMA {
            let blk = BlockParams { b, c0, width, bias, dskip };
            let sums = (&mut dd_acc, &mut dbias_acc);
            reverse_chunk_avx2::<GATE>(p, dims, &blk, t0, len, (a, dh, da, hs, decay, dts, dbc), sums, acc);
            continue;
        }
        let _ = &dbc;
        for i in (0..len).rev() {
            let t = t0 + i;
            let row = b * seqlen + t;
            let dt = dts[i];
            let x = load_lanes(p.u.add(row * d_inner + c0), width);
            let raw = load_lanes(p.delta.add(row * d_inner + c0), width);
            let z = if GATE { load_lanes(p.z.add(row * p.z_ld + c0), width) } else { [0.0; LANES] };
            let g_y = load_lanes(p.dy.add(row * d_inner + c0), width);
            let brow = p.b.add(row * p.b_ld);
            let crow = p.c.add(row * p.c_ld);
            let prev = &hs[i * n..][..n];
            let cur = &hs[(i + 1) * n..][..n];
            let decs = &decay[i * n..][..n];

            // out = C·h + D·u; the gate's gradients.
            let mut out: Lanes = [0.0; LANES];
            if GATE {
                for l in 0..LANES {
                    out[l] = dskip[l] * x[l];
                }
                for (s, hc) in cur.iter().enumerate() {
                    let cs = *crow.add(s);
                    for l in 0..LANES {
                        out[l] = madd::<FMA>(hc[l], cs, out[l]);
                    }
                }
            }
            let mut g: Lanes = [0.0; LANES];
            let mut dz: Lanes = [0.0; LANES];
            let mut du: Lanes = [0.0; LANES];
            let mut dtu: Lanes = [0.0; LANES];
            for l in 0..LANES {
                if GATE {
                    let sg = sigmoid::<FMA>(z[l]);
                    let silu = z[l] * sg;
                    dz[l] = g_y[l] * out[l] * (sg * madd::<FMA>(z[l], 1.0 - sg, 1.0));
                    g[l] = g_y[l] * silu;
                } else {
                    g[l] = g_y[l];
                }
                dd_acc[l] = madd::<FMA>(g[l], x[l], dd_acc[l]);
                du[l] = g[l] * dskip[l];
                dtu[l] = dt[l] * x[l];
            }

            let arow = &mut acc[t * 2 * n..][..2 * n];
            let mut ddt: Lanes = [0.0; LANES];
            for s in 0..n {
                let (bs, cs) = (*brow.add(s), *crow.add(s));
                let (dhs_, hc, hp, dec, as_, das) = (&mut dh[s], &cur[s], &prev[s], &decs[s], &a[s], &mut da[s]);
                let mut pb: Lanes = [0.0; LANES];
                let mut pc: Lanes = [0.0; LANES];
                for l in 0..LANES {
                    // Total ∂L/∂h_t: through y_t, and through h_{t+1} (already times its decay).
                    let dhs = madd::<FMA>(g[l], cs, dhs_[l]);
                    pc[l] = g[l] * hc[l];
                    pb[l] = dhs * dtu[l];
                    du[l] = madd::<FMA>(dhs * dt[l], bs, du[l]);
                    // ∂L/∂(Δ·A) of this step's decay.
                    let q = dhs * hp[l] * dec[l];
                    das[l] = madd::<FMA>(q, dt[l], das[l]);
                    ddt[l] = madd::<FMA>(q, as_[l], madd::<FMA>(dhs * bs, x[l], ddt[l]));
                    dhs_[l] = dhs * dec[l];
                }
                arow[s] += hsum(&pb);
                arow[n + s] += hsum(&pc);
            }
            // Δ = softplus(raw + bias): ∂/∂raw = sigmoid(raw + bias), 1 past softplus's threshold.
            let mut ddelta: Lanes = [0.0; LANES];
            for l in 0..LANES {
                let v = raw[l] + bias[l];
                let sp = if v > 20.0 { 1.0 } else { sigmoid::<FMA>(v) };
                ddelta[l] = ddt[l] * sp;
                dbias_acc[l] += ddelta[l];
            }
            store_lanes(p.du.add(row * d_inner + c0), &du, width);
            store_lanes(p.ddelta.add(row * d_inner + c0), &ddelta, width);
            if GATE {
                store_lanes(p.dz.add(row * p.dz_ld + c0), &dz, width);
            }
        }
    }
    for l in 0..width {
        let ch = c0 + l;
        for (s, das) in da.iter().enumerate() {
            *p.da.add(ch * n + s) += das[l];
        }
        *p.dd.add(ch) += dd_acc[l];
        *p.ddelta_bias.add(ch) += dbias_acc[l];
    }
}

/// The constants of one (sequence, channel block) of the scan backward.
#[cfg(target_arch = "x86_64")]
struct BlockParams {
    b: usize,
    c0: usize,
    width: usize,
    bias: Lanes,
    dskip: Lanes,
}

/// The per-block buffers of [`ScanWork`] the reverse pass reads and writes: `A`, the running `∂h`,
/// the accumulated `∂A`, the chunk's states, decays and `Δ`, and one step's `∂B`/`∂C` terms.
#[cfg(target_arch = "x86_64")]
type ReverseBufs<'a> =
    (&'a [Lanes], &'a mut [Lanes], &'a mut [Lanes], &'a [Lanes], &'a [Lanes], &'a [Lanes], &'a mut [Lanes]);

/// `v[j]` summed over its lanes, for eight vectors at once: lane `j` of the result.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn lane_sums8(v: &[Lanes]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    macro_rules! l {
        ($j:expr) => {
            _mm256_loadu_ps(v[$j].as_ptr())
        };
    }
    // hadd works within 128-bit halves: after two rounds, half h of u0 holds the sums of half h
    // of v[0..4], u1 those of v[4..8].
    let u0 = _mm256_hadd_ps(_mm256_hadd_ps(l!(0), l!(1)), _mm256_hadd_ps(l!(2), l!(3)));
    let u1 = _mm256_hadd_ps(_mm256_hadd_ps(l!(4), l!(5)), _mm256_hadd_ps(l!(6), l!(7)));
    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
}

/// The reverse steps of one chunk, AVX2 + FMA: the generic loop of [`scan_bwd_block`] step for
/// step and operation for operation, in intrinsics (the compiler left that loop mostly scalar), except
/// that a step's `∂B`/`∂C` terms are summed over the block's channels eight states at a time
/// ([`lane_sums8`]) rather than one horizontal sum per state.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn reverse_chunk_avx2<const GATE: bool>(
    p: &ScanBwdPtrs,
    dims: ScanDims,
    blk: &BlockParams,
    t0: usize,
    len: usize,
    bufs: ReverseBufs<'_>,
    sums: (&mut Lanes, &mut Lanes),
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let ScanDims { seqlen, d_inner, d_state: n, .. } = dims;
    let (a, dh, da, hs, decay, dts, dbc) = bufs;
    let (dd_acc, dbias_acc) = sums;
    // Macros rather than closures: a closure does not get this function's target features, so
    // the intrinsics in it would not inline.
    macro_rules! ld {
        ($v:expr) => {
            _mm256_loadu_ps($v.as_ptr())
        };
    }
    macro_rules! st {
        ($dst:expr, $v:expr) => {
            _mm256_storeu_ps($dst.as_mut_ptr(), $v)
        };
    }
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(blk.width as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    macro_rules! load {
        ($ptr:expr) => {
            _mm256_maskload_ps($ptr, mask)
        };
    }
    let one = _mm256_set1_ps(1.0);
    macro_rules! sigmoid {
        ($x:expr) => {
            _mm256_div_ps(one, _mm256_add_ps(one, simd::x86::exp(_mm256_sub_ps(_mm256_setzero_ps(), $x))))
        };
    }
    let (bias, dskip) = (ld!(&blk.bias), ld!(&blk.dskip));
    let (mut vdd, mut vdbias) = (ld!(dd_acc), ld!(dbias_acc));
    for i in (0..len).rev() {
        let t = t0 + i;
        let row = blk.b * seqlen + t;
        let at = row * d_inner + blk.c0;
        let dt = ld!(&dts[i]);
        let x = load!(p.u.add(at));
        let raw = load!(p.delta.add(at));
        let g_y = load!(p.dy.add(at));
        let brow = p.b.add(row * p.b_ld);
        let crow = p.c.add(row * p.c_ld);
        let prev = &hs[i * n..][..n];
        let cur = &hs[(i + 1) * n..][..n];
        let decs = &decay[i * n..][..n];

        // out = C·h + D·u; the gate's gradients.
        let (g, dz) = if GATE {
            let z = load!(p.z.add(row * p.z_ld + blk.c0));
            let mut out = _mm256_mul_ps(dskip, x);
            for (s, hc) in cur.iter().enumerate() {
                out = _mm256_fmadd_ps(ld!(hc), _mm256_set1_ps(*crow.add(s)), out);
            }
            let sg = sigmoid!(z);
            let silu = _mm256_mul_ps(z, sg);
            let dsilu = _mm256_mul_ps(sg, _mm256_fmadd_ps(z, _mm256_sub_ps(one, sg), one));
            (_mm256_mul_ps(g_y, silu), _mm256_mul_ps(_mm256_mul_ps(g_y, out), dsilu))
        } else {
            (g_y, _mm256_setzero_ps())
        };
        vdd = _mm256_fmadd_ps(g, x, vdd);
        let mut du = _mm256_mul_ps(g, dskip);
        let dtu = _mm256_mul_ps(dt, x);

        let mut ddt = _mm256_setzero_ps();
        for s in 0..n {
            let (bs, cs) = (_mm256_set1_ps(*brow.add(s)), _mm256_set1_ps(*crow.add(s)));
            // Total ∂L/∂h_t: through y_t, and through h_{t+1} (already times its decay).
            let dhs = _mm256_fmadd_ps(g, cs, ld!(&dh[s]));
            let dec = ld!(&decs[s]);
            st!(&mut dbc[n + s], _mm256_mul_ps(g, ld!(&cur[s])));
            st!(&mut dbc[s], _mm256_mul_ps(dhs, dtu));
            du = _mm256_fmadd_ps(_mm256_mul_ps(dhs, dt), bs, du);
            // ∂L/∂(Δ·A) of this step's decay.
            let q = _mm256_mul_ps(_mm256_mul_ps(dhs, ld!(&prev[s])), dec);
            let da_s = _mm256_fmadd_ps(q, dt, ld!(&da[s]));
            st!(&mut da[s], da_s);
            ddt = _mm256_fmadd_ps(q, ld!(&a[s]), _mm256_fmadd_ps(_mm256_mul_ps(dhs, bs), x, ddt));
            st!(&mut dh[s], _mm256_mul_ps(dhs, dec));
        }
        let arow = &mut acc[t * 2 * n..][..2 * n];
        let whole = 2 * n / LANES * LANES;
        for j in (0..whole).step_by(LANES) {
            let dst = arow[j..].as_mut_ptr();
            _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), lane_sums8(&dbc[j..j + LANES])));
        }
        for j in whole..2 * n {
            arow[j] += hsum(&dbc[j]);
        }
        // Δ = softplus(raw + bias): ∂/∂raw = sigmoid(raw + bias), 1 past softplus's threshold.
        let v = _mm256_add_ps(raw, bias);
        let sp = _mm256_blendv_ps(sigmoid!(v), one, _mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_set1_ps(20.0)));
        let ddelta = _mm256_mul_ps(ddt, sp);
        vdbias = _mm256_add_ps(vdbias, ddelta);
        _mm256_maskstore_ps(p.du.add(at), mask, du);
        _mm256_maskstore_ps(p.ddelta.add(at), mask, ddelta);
        if GATE {
            _mm256_maskstore_ps(p.dz.add(row * p.dz_ld + blk.c0), mask, dz);
        }
    }
    st!(dd_acc, vdd);
    st!(dbias_acc, vdbias);
}

// ----------------------------------------------------------------------------------------------
// embedding, cross-entropy, AdamW

/// `dtable[ids[i], :] += dout[i, :]`. Rows of `dtable` are split among tasks; each adds the
/// gradients of its ids in the order they occur ([`rows_by_id`](crate::backend::rows_by_id)), so
/// duplicates add up without races.
pub fn embedding_backward(ids: &[u32], dim: usize, dout: &[f32], dtable: &mut [f32]) -> Result<()> {
    need("embedding_backward dout", dout.len(), ids.len() * dim)?;
    if dim == 0 || ids.is_empty() {
        return Ok(());
    }
    let vocab = dtable.len() / dim;
    let (start, order) = crate::backend::rows_by_id(ids, vocab)?;
    dtable[..vocab * dim].par_chunks_mut(dim).with_min_len(64).enumerate().for_each(|(v, row)| {
        for &i in &order[start[v]..start[v + 1]] {
            row.iter_mut().zip(&dout[i * dim..][..dim]).for_each(|(d, g)| *d += g);
        }
    });
    Ok(())
}

/// Softmax cross-entropy per row: writes `dlogits = scale·(softmax − onehot)` (zero rows for
/// ignored targets, `u32::MAX`) and returns the sum of the counted rows' losses and their count.
/// The log-sum-exp subtracts the row maximum and sums the exponentials in f64.
pub fn cross_entropy(
    logits: &[f32],
    rows: usize,
    vocab: usize,
    targets: &[u32],
    scale: f32,
    dlogits: &mut [f32],
) -> Result<(f64, usize)> {
    need("cross_entropy logits", logits.len(), rows * vocab)?;
    need("cross_entropy dlogits", dlogits.len(), rows * vocab)?;
    if targets.len() != rows {
        return Err(Error::Backend(format!("cpu: cross_entropy has {} targets for {rows} rows", targets.len())));
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t != u32::MAX && t as usize >= vocab) {
        return Err(Error::input(format!("target token {t} (row {i}) is outside the vocabulary (size {vocab})")));
    }
    let counted = targets.iter().filter(|&&t| t != u32::MAX).count();
    if rows == 0 || vocab == 0 {
        return Ok((0.0, counted));
    }
    let fma = simd::has_avx2_fma();
    let losses: Vec<f64> = dlogits[..rows * vocab]
        .par_chunks_mut(vocab)
        .zip(logits[..rows * vocab].par_chunks(vocab))
        .zip(targets.par_iter())
        .map(|((d, x), &t)| {
            if t == u32::MAX {
                d.fill(0.0);
                return 0.0;
            }
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU supports avx2+fma (checked above).
                return unsafe { ce_row_avx2(x, t as usize, scale, d) };
            }
            let _ = fma;
            ce_row::<false>(x, t as usize, scale, d)
        })
        .collect();
    Ok((losses.iter().sum(), counted))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn ce_row_avx2(x: &[f32], t: usize, scale: f32, d: &mut [f32]) -> f64 {
    ce_row::<true>(x, t, scale, d)
}

/// One row: returns its loss `logsumexp(x) − x[t]`.
#[inline(always)]
fn ce_row<const FMA: bool>(x: &[f32], t: usize, scale: f32, d: &mut [f32]) -> f64 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let xc = x.chunks_exact(LANES);
    let mut m = xc.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in xc {
        for l in 0..LANES {
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    for v in mx {
        m = if v > m { v } else { m };
    }
    // exp(x - m) into d, summed in f64.
    let mut acc = [0.0f64; LANES];
    let (dc, xc) = (d.chunks_exact_mut(LANES), x.chunks_exact(LANES));
    let rem = xc.remainder().len();
    for (dc, xc) in dc.zip(xc) {
        for l in 0..LANES {
            let e = simd::exp::<FMA>(xc[l] - m);
            dc[l] = e;
            acc[l] += e as f64;
        }
    }
    let mut sum = hsum_f64(&acc);
    let tail = x.len() - rem;
    for i in tail..x.len() {
        let e = simd::exp::<FMA>(x[i] - m);
        d[i] = e;
        sum += e as f64;
    }
    let f = (scale as f64 / sum) as f32;
    for v in d.iter_mut() {
        *v *= f;
    }
    d[t] -= scale;
    m as f64 + sum.ln() - x[t] as f64
}

/// One AdamW step with PyTorch's semantics (see [`crate::backend::Backend::adamw_step`]).
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamW) -> Result<()> {
    let n = param.len();
    if grad.len() != n || m.len() != n || v.len() != n {
        return Err(Error::Backend(format!(
            "cpu: adamw_step lengths differ: param {n}, grad {}, m {}, v {}",
            grad.len(),
            m.len(),
            v.len()
        )));
    }
    if hp.step == 0 {
        return Err(Error::input("adamw_step: step counts from 1"));
    }
    let step = hp.step as f64;
    let bc1 = 1.0 - (hp.beta1 as f64).powf(step);
    let bc2 = 1.0 - (hp.beta2 as f64).powf(step);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = (1.0 - hp.lr as f64 * hp.weight_decay as f64) as f32;
    let (b1, b2, eps, gs) = (hp.beta1, hp.beta2, hp.eps, hp.grad_scale);
    let (c1, c2) = (1.0 - b1, 1.0 - b2);
    const CHUNK: usize = 1 << 14;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * gs;
                m[i] = b1 * m[i] + c1 * g;
                v[i] = b2 * v[i] + c2 * (g * g);
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] = p[i] * decay - step_size * (m[i] / denom);
            }
        });
    Ok(())
}
