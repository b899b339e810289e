//! Fused residual add + RMSNorm on CPU, one task per row.

use rayon::prelude::*;

/// `residual += delta`; `out = residual * rsqrt(mean(residual²) + eps) * weight`.
pub fn add_rmsnorm(residual: &mut [f32], delta: Option<&[f32]>, weight: &[f32], eps: f32, dim: usize, out: &mut [f32]) {
    let rows = residual.par_chunks_mut(dim).zip(out.par_chunks_mut(dim));
    rows.enumerate().for_each(|(r, (res, o))| {
        if let Some(delta) = delta {
            for (x, d) in res.iter_mut().zip(&delta[r * dim..][..dim]) {
                *x += d;
            }
        }
        // Sum of squares in f64: one pass, no cancellation issues for long rows.
        let ss: f64 = res.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = (1.0 / (ss / dim as f64 + eps as f64).sqrt()) as f32;
        for ((o, &x), &w) in o.iter_mut().zip(res.iter()).zip(weight) {
            *o = x * inv * w;
        }
    });
}
