//! The fused selective scan on CPU.
//!
//! One task per (sequence, group of 16 channels): the group's `d_state × 16` state lives in a
//! small array (L1), Δ = softplus(δ + bias) and Ā = exp(Δ·A) are computed on the fly, and only `y`
//! is written — the `(B, L, D, N)` tensors of the naive form never exist. SIMD runs across the
//! channels of a group (one register per state component and 8 channels), so `C·h` needs no
//! horizontal sum.

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

/// Channels per task, in [`BLOCKS`] lane-arrays: two independent recurrences per state component
/// interleave their `exp2` chains, which the out-of-order core alone did not overlap well.
const BLOCKS: usize = 2;
const CHANNELS: usize = BLOCKS * LANES;

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
        z: args.z.map_or(std::ptr::null(), |z| z.buf[z.offset..].as_ptr()),
        z_ld: args.z.map_or(0, |z| z.ld),
        state: state.as_mut_ptr(),
        y: y.as_mut_ptr(),
    };
    let groups = dims.d_inner.div_ceil(CHANNELS);
    let fma = simd::has_avx2_fma();
    // The gate is a compile-time choice: the gated loop is the same code as before the ablations.
    let gate = args.z.is_some();
    // SAFETY: each task touches channels [g*CHANNELS, g*CHANNELS+width) of sequence b only.
    let run = |task: usize| unsafe {
        // Decaying states pass through the subnormal range (see FlushSubnormals).
        let _flush = simd::FlushSubnormals::new();
        let (b, g) = (task / groups, task % groups);
        #[cfg(target_arch = "x86_64")]
        if fma {
            return match gate {
                true => scan_group_avx2::<true>(&p, dims, b, g),
                false => scan_group_avx2::<false>(&p, dims, b, g),
            };
        }
        let _ = fma;
        match gate {
            true => scan_group::<false, true>(&p, dims, b, g),
            false => scan_group::<false, false>(&p, dims, b, g),
        }
    };
    let tasks = dims.batch * groups;
    // A decode step (seqlen 1) of a small batch is ~1 µs of work per task: waking the pool
    // costs more than running it here.
    if dims.seqlen * tasks < SERIAL_STEPS {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Below this many (time step × task) units the scan runs on the calling thread.
const SERIAL_STEPS: usize = 64;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_group_avx2<const GATE: bool>(p: &Ptrs, dims: ScanDims, b: usize, g: usize) {
    scan_group::<true, GATE>(p, dims, b, g)
}

/// How many time steps ahead the scan prefetches its per-step inputs: enough to cover an L3
/// miss (~100 ns) with 16 × 16 decays of work per step.
const PREFETCH_ROWS: usize = 8;

/// State sizes up to this keep the group's state on the stack: Mamba-1 uses 16, and zeroing a
/// larger array per task would cost more than a decode step's scan of the group.
const STACK_STATE: usize = 16;

/// `CHANNELS` lanes of row `row` of a matrix at stride `ld`, starting at column `c0`; the lanes
/// past `width` are zero.
#[inline(always)]
unsafe fn load(ptr: *const f32, row: usize, ld: usize, c0: usize, width: usize) -> [Lanes; BLOCKS] {
    let src = ptr.add(row * ld + c0);
    if width == CHANNELS {
        return *(src as *const [Lanes; BLOCKS]);
    }
    let mut v = [[0.0f32; LANES]; BLOCKS];
    for i in 0..width {
        v[i / LANES][i % LANES] = *src.add(i);
    }
    v
}

/// One task. `GATE`: multiply by `silu(z)` (`false`: `y = C·h + D·u`, `z` is not read). `B` and
/// `C` rows are read at `row · ld`, so `ld = 0` broadcasts one row to every step.
#[inline(always)]
unsafe fn scan_group<const FMA: bool, const GATE: bool>(p: &Ptrs, dims: ScanDims, b: usize, g: usize) {
    let ScanDims { seqlen, d_inner, d_state: n, .. } = dims;
    let c0 = g * CHANNELS;
    let width = CHANNELS.min(d_inner - c0);
    // Per state component, BLOCKS lane-arrays over the group's channels. Padding lanes stay zero
    // (Δ·A = 0 there, so their decay is 1 and their state stays 0). The decays are computed as
    // 2^(Δ · A·log₂e): A is scaled once here instead of the exponent at every step.
    let mut a_stack = [[[0.0f32; LANES]; BLOCKS]; STACK_STATE];
    let mut h_stack = [[[0.0f32; LANES]; BLOCKS]; STACK_STATE];
    let (mut a_heap, mut h_heap) = (Vec::new(), Vec::new());
    let (a, h): (&mut [[Lanes; BLOCKS]], &mut [[Lanes; BLOCKS]]) = if n <= STACK_STATE {
        (&mut a_stack[..n], &mut h_stack[..n])
    } else {
        a_heap.resize(n, [[0.0f32; LANES]; BLOCKS]);
        h_heap.resize(n, [[0.0f32; LANES]; BLOCKS]);
        (&mut a_heap, &mut h_heap)
    };
    let mut bias = [[0.0f32; LANES]; BLOCKS];
    let mut dskip = [[0.0f32; LANES]; BLOCKS];
    let state = p.state.add((b * d_inner + c0) * n);
    // A and the state are channel-major ([channel][state]); the loop wants state-major lanes of
    // channels. 8×8 register transposes do that in ~1/3 of the scalar time, which matters for a
    // decode step, where this is half the work.
    #[cfg(target_arch = "x86_64")]
    let transposed = FMA && width == CHANNELS && n % LANES == 0;
    #[cfg(not(target_arch = "x86_64"))]
    let transposed = false;
    if transposed {
        #[cfg(target_arch = "x86_64")]
        {
            transpose_in::<true>(p.a.add(c0 * n), n, a);
            transpose_in::<false>(state, n, h);
        }
    }
    for i in 0..width {
        let (k, l, ch) = (i / LANES, i % LANES, c0 + i);
        if !transposed {
            for s in 0..n {
                a[s][k][l] = *p.a.add(ch * n + s) * std::f32::consts::LOG2_E;
                h[s][k][l] = *state.add(i * n + s);
            }
        }
        bias[k][l] = *p.delta_bias.add(ch);
        dskip[k][l] = *p.d.add(ch);
    }
    for t in 0..seqlen {
        let row = b * seqlen + t;
        // Rows are d_inner floats apart (6 KiB and more): every step of t touches new lines in
        // other pages, which the hardware prefetchers do not follow. Without these hints the
        // prefill scan waits on an L3 miss per input per step.
        if t + PREFETCH_ROWS < seqlen {
            let ahead = row + PREFETCH_ROWS;
            for off in [0, CHANNELS - 1] {
                simd::prefetch(p.delta.wrapping_add(ahead * d_inner + c0 + off));
                simd::prefetch(p.u.wrapping_add(ahead * d_inner + c0 + off));
                if GATE {
                    simd::prefetch(p.z.wrapping_add(ahead * p.z_ld + c0 + off));
                }
                simd::prefetch(p.y.wrapping_add(ahead * d_inner + c0 + off));
            }
        }
        let dt_raw = load(p.delta, row, d_inner, c0, width);
        let x = load(p.u, row, d_inner, c0, width);
        let z = if GATE { load(p.z, row, p.z_ld, c0, width) } else { [[0.0; LANES]; BLOCKS] };
        let mut dt = [[0.0f32; LANES]; BLOCKS];
        let mut dtx = [[0.0f32; LANES]; BLOCKS];
        let mut acc = [[0.0f32; LANES]; BLOCKS];
        for k in 0..BLOCKS {
            dt[k] = simd::softplus8::<FMA>(std::array::from_fn(|l| dt_raw[k][l] + bias[k][l]));
            for l in 0..LANES {
                dtx[k][l] = dt[k][l] * x[k][l];
                acc[k][l] = dskip[k][l] * x[k][l];
            }
        }
        let brow = p.b.add(row * p.b_ld);
        let crow = p.c.add(row * p.c_ld);
        for (s, (hs, as_)) in h.iter_mut().zip(a.iter()).enumerate() {
            let (bs, cs) = (*brow.add(s), *crow.add(s));
            for k in 0..BLOCKS {
                let decay = simd::exp2_decay8::<FMA>(std::array::from_fn(|l| dt[k][l] * as_[k][l]));
                for l in 0..LANES {
                    hs[k][l] = madd::<FMA>(decay[l], hs[k][l], dtx[k][l] * bs);
                    acc[k][l] = madd::<FMA>(hs[k][l], cs, acc[k][l]);
                }
            }
        }
        let yrow = p.y.add(row * d_inner + c0);
        for k in 0..BLOCKS {
            let lanes = LANES.min(width.saturating_sub(k * LANES));
            if GATE {
                let gate = simd::silu8::<FMA>(z[k]);
                for l in 0..lanes {
                    *yrow.add(k * LANES + l) = acc[k][l] * gate[l];
                }
            } else {
                for l in 0..lanes {
                    *yrow.add(k * LANES + l) = acc[k][l];
                }
            }
        }
    }
    if transposed {
        #[cfg(target_arch = "x86_64")]
        transpose_out(h, n, state);
        return;
    }
    for i in 0..width {
        for s in 0..n {
            *state.add(i * n + s) = h[s][i / LANES][i % LANES];
        }
    }
}

/// `dst[s][k][l] = src[(8k + l) · n + s]` (× log₂e when `SCALE`) for a full group, `n` a multiple
/// of 8. Only called from avx2+fma code.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_in<const SCALE: bool>(src: *const f32, n: usize, dst: &mut [[Lanes; BLOCKS]]) {
    use std::arch::x86_64::*;
    for k in 0..BLOCKS {
        for s0 in (0..n).step_by(LANES) {
            let rows = std::array::from_fn(|l| _mm256_loadu_ps(src.add((k * LANES + l) * n + s0)));
            let cols = simd::x86::transpose8(rows);
            for (j, &v) in cols.iter().enumerate() {
                let v = if SCALE { _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::LOG2_E)) } else { v };
                _mm256_storeu_ps(dst[s0 + j][k].as_mut_ptr(), v);
            }
        }
    }
}

/// The inverse of [`transpose_in`] (without scaling): `dst[(8k + l) · n + s] = src[s][k][l]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_out(src: &[[Lanes; BLOCKS]], n: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    for k in 0..BLOCKS {
        for s0 in (0..n).step_by(LANES) {
            let rows = std::array::from_fn(|j| _mm256_loadu_ps(src[s0 + j][k].as_ptr()));
            let cols = simd::x86::transpose8(rows);
            for (l, &v) in cols.iter().enumerate() {
                _mm256_storeu_ps(dst.add((k * LANES + l) * n + s0), v);
            }
        }
    }
}
