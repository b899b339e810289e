//! Depthwise causal conv1d + SiLU on CPU: one task per output row (token), vectorized over
//! channels; the taps before `t = 0` come from the carried conv state.

use rayon::prelude::*;

use super::simd::{self, madd, Lanes, LANES};

pub struct ConvArgs<'a> {
    /// Input rows (column range already applied): element (r, c) at `x[r * x_ld + c]`.
    pub x: &'a [f32],
    pub x_ld: usize,
    pub batch: usize,
    pub seqlen: usize,
    pub channels: usize,
    pub kernel: usize,
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// Up to this many output elements (rows × channels) the conv runs on the calling thread: a
/// decode step's conv is a few µs of work, less than waking the pool.
const SERIAL_ELEMS: usize = 16 << 10;

/// `state`: `[batch, kernel-1, channels]` in/out; `out`: `[batch*seqlen, channels]`.
pub fn conv1d_silu(args: &ConvArgs<'_>, state: &mut [f32], out: &mut [f32]) {
    let (ch, k, l) = (args.channels, args.kernel, args.seqlen);
    let fma = simd::has_avx2_fma();
    // Transposed weights [kernel, channels] make every tap a contiguous vector op.
    let mut wt = vec![0.0f32; k * ch];
    for c in 0..ch {
        for j in 0..k {
            wt[j * ch + c] = args.weight[c * k + j];
        }
    }
    let state_ro: &[f32] = state;
    let row = |(row, o): (usize, &mut [f32])| {
        let (b, t) = (row / l, row % l);
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU supports avx2+fma (checked above).
            return unsafe { conv_row_avx2(args, &wt, state_ro, b, t, o) };
        }
        conv_row::<false>(args, &wt, state_ro, b, t, o)
    };
    if out.len() <= SERIAL_ELEMS {
        out.chunks_mut(ch).enumerate().for_each(row);
    } else {
        out.par_chunks_mut(ch).enumerate().for_each(row);
    }
    // New state: the last k-1 inputs of each sequence, in place. Slot j takes input t = l-(k-1)+j;
    // for t < 0 that is old slot j + l, which lies ahead of every slot written so far.
    for b in 0..args.batch {
        let base = b * (k - 1) * ch;
        for j in 0..k - 1 {
            let t = l as isize - (k as isize - 1) + j as isize;
            if t < 0 {
                let src = base + (j + l) * ch;
                state.copy_within(src..src + ch, base + j * ch);
            } else {
                let row = &args.x[(b * l + t as usize) * args.x_ld..][..ch];
                state[base + j * ch..][..ch].copy_from_slice(row);
            }
        }
    }
}

/// Row `t` of sequence `b` of the input padded on the left with the state (t may be negative).
#[inline(always)]
fn input_row<'a>(args: &ConvArgs<'a>, state: &'a [f32], b: usize, t: isize) -> &'a [f32] {
    let (ch, k) = (args.channels, args.kernel);
    if t < 0 {
        &state[(b * (k - 1) + (t + k as isize - 1) as usize) * ch..][..ch]
    } else {
        &args.x[(b * args.seqlen + t as usize) * args.x_ld..][..ch]
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_row_avx2(args: &ConvArgs<'_>, wt: &[f32], state: &[f32], b: usize, t: usize, o: &mut [f32]) {
    conv_row::<true>(args, wt, state, b, t, o)
}

#[inline(always)]
fn conv_row<const FMA: bool>(args: &ConvArgs<'_>, wt: &[f32], state: &[f32], b: usize, t: usize, o: &mut [f32]) {
    let (ch, k) = (args.channels, args.kernel);
    match args.bias {
        Some(bias) => o.copy_from_slice(bias),
        None => o.fill(0.0),
    }
    for j in 0..k {
        let src = input_row(args, state, b, t as isize + j as isize - (k as isize - 1));
        let w = &wt[j * ch..][..ch];
        for ((o, &x), &w) in o.iter_mut().zip(src).zip(w) {
            *o = madd::<FMA>(w, x, *o);
        }
    }
    silu_row::<FMA>(o);
}

#[inline(always)]
fn silu_row<const FMA: bool>(o: &mut [f32]) {
    let mut chunks = o.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let v: &mut Lanes = c.try_into().unwrap_or_else(|_| unreachable!());
        *v = simd::silu8::<FMA>(*v);
    }
    for v in chunks.into_remainder() {
        *v = simd::silu::<FMA>(*v);
    }
}
