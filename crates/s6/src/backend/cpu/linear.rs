//! `out = x · wᵀ + bias` on CPU. Many rows go to the `gemm` crate; a few rows (decode) go to a
//! hand-written kernel that streams each weight row once for all input rows, since a batch-1
//! matvec is bound by reading the weights and `gemm` reaches only half the bandwidth there.

use rayon::prelude::*;

use super::simd::{self, madd, Lanes, LANES};

/// Up to this many rows use the streaming kernel.
pub const SMALL_ROWS: usize = 8;

/// `x`: rows of width `k` at stride `x_ld`; `w`: `[n, k]`; `out`: `[rows, n]` contiguous.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    x_ld: usize,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if rows == 0 || n == 0 {
        return;
    }
    if rows <= SMALL_ROWS {
        small_rows(x, x_ld, rows, k, w, n, out);
    } else {
        // SAFETY: the caller checked that x holds rows×k at stride x_ld, w holds n×k and out rows×n.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                x_ld as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
    }
    if let Some(bias) = bias {
        out.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
    }
}

/// Output columns per task: enough work to amortize scheduling, small enough to balance.
const COLS_PER_TASK: usize = 64;

fn small_rows(x: &[f32], x_ld: usize, rows: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let fma = simd::has_avx2_fma();
    let tasks = n.div_ceil(COLS_PER_TASK);
    let results: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let cols = task * COLS_PER_TASK..((task + 1) * COLS_PER_TASK).min(n);
            let mut part = vec![0.0f32; rows * cols.len()];
            for (jj, j) in cols.clone().enumerate() {
                let wrow = &w[j * k..][..k];
                for r in 0..rows {
                    let xrow = &x[r * x_ld..][..k];
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        // SAFETY: avx2+fma present.
                        part[r * cols.len() + jj] = unsafe { dot_avx2(xrow, wrow) };
                        continue;
                    }
                    part[r * cols.len() + jj] = dot::<false>(xrow, wrow);
                }
            }
            part
        })
        .collect();
    for (task, part) in results.iter().enumerate() {
        let c0 = task * COLS_PER_TASK;
        let width = part.len() / rows;
        for r in 0..rows {
            out[r * n + c0..][..width].copy_from_slice(&part[r * width..][..width]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot::<true>(a, b)
}

/// Dot product with four independent lane accumulators (32 floats in flight) for ILP.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 4 * LANES;
    let mut acc = [[0.0f32; LANES]; 4];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (ca, cb) in ac.zip(bc) {
        for q in 0..4 {
            let (xa, xb): (&Lanes, &Lanes) = (
                ca[q * LANES..][..LANES].try_into().unwrap_or(&[0.0; LANES]),
                cb[q * LANES..][..LANES].try_into().unwrap_or(&[0.0; LANES]),
            );
            for l in 0..LANES {
                acc[q][l] = madd::<FMA>(xa[l], xb[l], acc[q][l]);
            }
        }
    }
    let mut s = 0.0f32;
    for l in 0..LANES {
        s += (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    for (x, y) in ar.iter().zip(br) {
        s = madd::<FMA>(*x, *y, s);
    }
    s
}
