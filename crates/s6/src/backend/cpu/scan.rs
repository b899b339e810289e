//! The fused selective scan on CPU.
//!
//! One task per (sequence, block of [`LANES`] channels): the block's `d_state × LANES` state lives
//! in a small array (L1), Δ = softplus(δ + bias) and Ā = exp(Δ·A) are computed on the fly, and only
//! `y` is written — the `(B, L, D, N)` tensors of the naive form never exist. SIMD runs across the
//! channels of a block (one register per state component), so `C·h` needs no horizontal sum.

use rayon::prelude::*;

use super::simd::{self, madd, Lanes, LANES};
use crate::backend::{ScanArgs, ScanDims};

/// Raw pointers of one scan call; tasks write disjoint channels of `y` and `state`.
struct Ptrs {
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
    state: *mut f32,
    y: *mut f32,
}
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// Runs the scan. Slices must have been bounds-checked by the caller (see `Cpu::selective_scan`).
pub fn selective_scan(args: &ScanArgs<'_, Vec<f32>>, state: &mut [f32], y: &mut [f32]) {
    let dims = args.dims;
    let p = Ptrs {
        u: args.u.as_ptr(),
        delta: args.delta.as_ptr(),
        delta_bias: args.delta_bias.as_ptr(),
        a: args.a.as_ptr(),
        b: args.b.buf[args.b.offset..].as_ptr(),
        b_ld: args.b.ld,
        c: args.c.buf[args.c.offset..].as_ptr(),
        c_ld: args.c.ld,
        d: args.d.as_ptr(),
        z: args.z.buf[args.z.offset..].as_ptr(),
        z_ld: args.z.ld,
        state: state.as_mut_ptr(),
        y: y.as_mut_ptr(),
    };
    let blocks = dims.d_inner.div_ceil(LANES);
    let fma = simd::has_avx2_fma();
    (0..dims.batch * blocks).into_par_iter().for_each(|task| {
        let (b, blk) = (task / blocks, task % blocks);
        // SAFETY: each task touches channels [blk*LANES, blk*LANES+width) of sequence b only.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if fma {
                return scan_block_avx2(&p, dims, b, blk);
            }
            let _ = fma;
            scan_block::<false>(&p, dims, b, blk)
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_block_avx2(p: &Ptrs, dims: ScanDims, b: usize, blk: usize) {
    scan_block::<true>(p, dims, b, blk)
}

#[inline(always)]
unsafe fn scan_block<const FMA: bool>(p: &Ptrs, dims: ScanDims, b: usize, blk: usize) {
    let ScanDims { seqlen, d_inner, d_state: n, .. } = dims;
    let c0 = blk * LANES;
    let width = LANES.min(d_inner - c0);
    // Per state component, one lane-array over the block's channels. Padding lanes stay zero.
    let mut a = vec![[0.0f32; LANES]; n];
    let mut h = vec![[0.0f32; LANES]; n];
    let mut bias: Lanes = [0.0; LANES];
    let mut dskip: Lanes = [0.0; LANES];
    for l in 0..width {
        let ch = c0 + l;
        for s in 0..n {
            a[s][l] = *p.a.add(ch * n + s);
            h[s][l] = *p.state.add((b * d_inner + ch) * n + s);
        }
        bias[l] = *p.delta_bias.add(ch);
        dskip[l] = *p.d.add(ch);
    }
    for t in 0..seqlen {
        let row = b * seqlen + t;
        let mut dt: Lanes = [0.0; LANES];
        let mut x: Lanes = [0.0; LANES];
        let mut z: Lanes = [0.0; LANES];
        if width == LANES {
            dt = *(p.delta.add(row * d_inner + c0) as *const Lanes);
            x = *(p.u.add(row * d_inner + c0) as *const Lanes);
            z = *(p.z.add(row * p.z_ld + c0) as *const Lanes);
        } else {
            for l in 0..width {
                dt[l] = *p.delta.add(row * d_inner + c0 + l);
                x[l] = *p.u.add(row * d_inner + c0 + l);
                z[l] = *p.z.add(row * p.z_ld + c0 + l);
            }
        }
        let mut dtx: Lanes = [0.0; LANES];
        let mut acc: Lanes = [0.0; LANES];
        for l in 0..LANES {
            dt[l] = simd::softplus::<FMA>(dt[l] + bias[l]);
            dtx[l] = dt[l] * x[l];
            acc[l] = dskip[l] * x[l];
        }
        let brow = p.b.add(row * p.b_ld);
        let crow = p.c.add(row * p.c_ld);
        for s in 0..n {
            let (bs, cs) = (*brow.add(s), *crow.add(s));
            let (hs, as_) = (&mut h[s], &a[s]);
            for l in 0..LANES {
                let decay = simd::exp::<FMA>(dt[l] * as_[l]);
                hs[l] = madd::<FMA>(decay, hs[l], dtx[l] * bs);
                acc[l] = madd::<FMA>(hs[l], cs, acc[l]);
            }
        }
        let yrow = p.y.add(row * d_inner + c0);
        for l in 0..width {
            *yrow.add(l) = acc[l] * simd::silu::<FMA>(z[l]);
        }
    }
    for l in 0..width {
        for s in 0..n {
            *p.state.add((b * d_inner + c0 + l) * n + s) = h[s][l];
        }
    }
}
