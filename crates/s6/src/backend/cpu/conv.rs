//! Depthwise causal conv1d + SiLU on CPU: one task per output row (token), vectorized over
//! channels; the taps before `t = 0` come from the carried conv state.

use rayon::prelude::*;

use super::simd::{self, madd};

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
    out.par_chunks_mut(ch).enumerate().for_each(|(row, o)| {
        let (b, t) = (row / l, row % l);
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU supports avx2+fma (checked above).
            return unsafe { conv_row_avx2(args, &wt, state_ro, b, t, o) };
        }
        conv_row::<false>(args, &wt, state_ro, b, t, o)
    });
    // New state: the last k-1 inputs of each sequence (from the old state when seqlen < k-1).
    let mut new_state = vec![0.0f32; state.len()];
    for b in 0..args.batch {
        for j in 0..k - 1 {
            let t = l as isize - (k as isize - 1) + j as isize;
            let dst = &mut new_state[(b * (k - 1) + j) * ch..][..ch];
            dst.copy_from_slice(input_row(args, state, b, t));
        }
    }
    state.copy_from_slice(&new_state);
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
    for v in o.iter_mut() {
        *v = simd::silu::<FMA>(*v);
    }
}
