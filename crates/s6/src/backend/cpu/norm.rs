//! Fused residual add + RMSNorm on CPU, one task per row.

use rayon::prelude::*;

/// Up to this many elements (a few rows) the norm runs on the calling thread: cheaper than
/// handing it to the pool.
const SERIAL_ELEMS: usize = 16 << 10;

/// `residual += delta`; `out = residual * rsqrt(mean(residual²) + eps) * weight`.
pub fn add_rmsnorm(residual: &mut [f32], delta: Option<&[f32]>, weight: &[f32], eps: f32, dim: usize, out: &mut [f32]) {
    let row = |(r, (res, o)): (usize, (&mut [f32], &mut [f32]))| {
        if let Some(delta) = delta {
            for (x, d) in res.iter_mut().zip(&delta[r * dim..][..dim]) {
                *x += d;
            }
        }
        let ss = sum_squares_f64(res);
        let inv = (1.0 / (ss / dim as f64 + eps as f64).sqrt()) as f32;
        for ((o, &x), &w) in o.iter_mut().zip(res.iter()).zip(weight) {
            *o = x * inv * w;
        }
    };
    if residual.len() <= SERIAL_ELEMS {
        residual.chunks_mut(dim).zip(out.chunks_mut(dim)).enumerate().for_each(row);
    } else {
        residual.par_chunks_mut(dim).zip(out.par_chunks_mut(dim)).enumerate().for_each(row);
    }
}

/// Sum of squares in f64 (no cancellation issues for long rows), over eight independent
/// accumulators: a single f64 running sum is a serial chain of adds that LLVM may not reorder,
/// four cycles per element.
#[inline]
fn sum_squares_f64(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += (x as f64) * (x as f64);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}
