//! `out = x · wᵀ + bias` on CPU. Many rows go to the `gemm` crate; a few rows (decode) go to a
//! hand-written kernel that streams each weight row once for all input rows, since a batch-1
//! matvec is bound by reading the weights and `gemm` reaches only half the bandwidth there.
//!
//! The small-rows kernel reads every weight from memory once: blocks of [`WB`] weight rows
//! against register tiles of up to [`XT`] input rows, each 8-float weight chunk loaded once per
//! tile and multiplied into every row of the tile. More than 3 rows sweep a block once per tile;
//! the sweeps after the first hit L1. The block's rows come from four separate runs of the
//! task's columns (four long sequential streams), and software prefetches keep DRAM streaming
//! ahead of the arithmetic: without them the kernel read at ~75% of the bandwidth probe's rate,
//! with them at 85-100%.

use rayon::prelude::*;

use super::simd::{self, madd, LANES};

/// Up to this many rows use the streaming kernel.
pub const SMALL_ROWS: usize = 8;
/// Weight rows per block: four independent read streams keep enough cache misses in flight for
/// one core to reach its share of the memory bandwidth, and four sums reduce into one `__m128`.
const WB: usize = 4;
/// Most input rows for [`WB`]-row blocks: 3 × 4 accumulators + 3 inputs + 1 weight chunk = the
/// 16 ymm registers of AVX2.
const XT: usize = 3;
/// Weight bytes per parallel task: large enough to amortize the task (~1 µs of scheduling
/// against ~15 µs of streaming at ~10 GB/s per core), small enough to balance two threads even
/// when one of them loses its core for a while.
const TASK_BYTES: usize = 128 << 10;
/// Below this many weight bytes the call runs on the calling thread: waking the pool costs more
/// than the work.
const SERIAL_BYTES: usize = 32 << 10;

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
        small_rows(x, x_ld, rows, k, w, n, bias, out);
        return;
    }
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
    if let Some(bias) = bias {
        out.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
    }
}

/// The output pointer shared by tasks; each writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Operands of one small-rows call (bounds already checked).
#[derive(Clone, Copy)]
struct Small<'a> {
    x: &'a [f32],
    x_ld: usize,
    rows: usize,
    k: usize,
    w: &'a [f32],
    n: usize,
    bias: Option<&'a [f32]>,
    out: OutPtr,
}

#[allow(clippy::too_many_arguments)]
fn small_rows(
    x: &[f32],
    x_ld: usize,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let s = Small { x, x_ld, rows, k, w, n, bias, out: OutPtr(out.as_mut_ptr()) };
    let fma = simd::has_avx2_fma();
    // SAFETY (both calls): columns [j0, j1) of out's `rows` rows are written by this task only;
    // out holds rows×n, w holds n×k, x holds rows×k at stride x_ld (checked by the caller).
    let run = move |j0: usize, j1: usize| unsafe {
        #[cfg(target_arch = "x86_64")]
        if fma {
            return cols_avx2(&s, j0, j1);
        }
        let _ = fma;
        cols_portable(&s, j0, j1)
    };
    let bytes = 4 * n * k;
    if bytes <= SERIAL_BYTES || rayon::current_num_threads() == 1 {
        return run(0, n);
    }
    // Tasks of about TASK_BYTES, as many as a multiple of the thread count, of equal size (a
    // multiple of WB columns): small matrices (x_proj, dt_proj) then split evenly over the threads
    // instead of leaving one thread a short last task.
    let threads = rayon::current_num_threads();
    let tasks = bytes.div_ceil(TASK_BYTES).next_multiple_of(threads);
    let per_task = n.div_ceil(tasks).next_multiple_of(WB);
    let tasks = n.div_ceil(per_task);
    (0..tasks).into_par_iter().for_each(|t| run(t * per_task, ((t + 1) * per_task).min(n)));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cols_avx2(s: &Small<'_>, j0: usize, j1: usize) {
    // Blocks of 4 weight rows against tiles of up to 3 input rows (all sums in registers). With
    // more than 3 rows the block is swept once per tile: the first sweep brings it from memory
    // (and prefetches ahead), the others re-read it from L1/L2 while DRAM keeps streaming the
    // prefetched lines.
    let tiles = s.rows.div_ceil(XT);
    // The task's columns split into WB equal runs, one per weight row of a block: block i takes
    // rows j0 + i, j0 + i + q, j0 + i + 2q, j0 + i + 3q. Each run is then one long sequential
    // stream, which the hardware prefetchers follow better than four rows side by side
    // (+5-15% bandwidth at k = 768 and k = 48, the same at k = 1536).
    let q = (j1 - j0) / WB;
    let ahead = s.k.max(PREFETCH_MIN);
    // Hint the start of each stream, which no earlier block did.
    for run in 0..WB {
        let start = s.w.as_ptr().add((j0 + run * q) * s.k);
        for line in (0..ahead.min(q * s.k)).step_by(16) {
            simd::prefetch(start.wrapping_add(line));
        }
    }
    for i in 0..q {
        let mut r0 = 0;
        for t in 0..tiles {
            // Tile sizes as even as possible: 8 rows = 3 + 3 + 2.
            let rows = s.rows / tiles + usize::from(t < s.rows % tiles);
            let first = t == 0;
            match rows {
                1 => avx2::block::<1, WB>(s, r0, j0 + i, q, ahead, first),
                2 => avx2::block::<2, WB>(s, r0, j0 + i, q, ahead, first),
                _ => avx2::block::<XT, WB>(s, r0, j0 + i, q, ahead, first),
            }
            r0 += rows;
        }
    }
    // Columns left over (fewer than WB): one at a time, all rows in one pass.
    for j in j0 + WB * q..j1 {
        match s.rows {
            1 => avx2::block::<1, 1>(s, 0, j, 1, ahead, true),
            2 => avx2::block::<2, 1>(s, 0, j, 1, ahead, true),
            3 => avx2::block::<3, 1>(s, 0, j, 1, ahead, true),
            4 => avx2::block::<4, 1>(s, 0, j, 1, ahead, true),
            5 => avx2::block::<5, 1>(s, 0, j, 1, ahead, true),
            6 => avx2::block::<6, 1>(s, 0, j, 1, ahead, true),
            7 => avx2::block::<7, 1>(s, 0, j, 1, ahead, true),
            _ => avx2::block::<8, 1>(s, 0, j, 1, ahead, true),
        }
    }
}

/// Least distance (in floats) a weight stream prefetches ahead: one row, but at least 4 KiB, so
/// that short rows (dt_proj's k = 48) still cover the DRAM latency.
const PREFETCH_MIN: usize = 1024;

/// Without AVX2: one dot product per (row, column), written for LLVM's baseline (SSE2) vectorizer.
unsafe fn cols_portable(s: &Small<'_>, j0: usize, j1: usize) {
    for j in j0..j1 {
        let wrow = &s.w[j * s.k..][..s.k];
        for r in 0..s.rows {
            let v = dot::<false>(&s.x[r * s.x_ld..][..s.k], wrow);
            *s.out.0.add(r * s.n + j) = v + s.bias.map_or(0.0, |b| b[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Small;

    /// Output columns `j, j + stride, …` (W of them) of input rows `r0..r0+R`. `prefetch`: hint
    /// each weight row's stream `ahead` floats on (done by the first sweep over a block). Inlined
    /// into the `avx2,fma` caller, so the intrinsics compile to VEX instructions.
    #[inline(always)]
    pub(super) unsafe fn block<const R: usize, const W: usize>(
        s: &Small<'_>,
        r0: usize,
        j: usize,
        stride: usize,
        ahead: usize,
        prefetch: bool,
    ) {
        let k = s.k;
        let w = s.w.as_ptr().add(j * k);
        let row = |q: usize| q * stride * k;
        let xs: [*const f32; R] = std::array::from_fn(|r| s.x.as_ptr().add((r0 + r) * s.x_ld));
        // Each weight row continues a sequential stream: the line `ahead` floats on is hinted at
        // the same offsets as this block's loads, so that DRAM keeps streaming whatever the
        // arithmetic per chunk. Prefetches never fault; the address is only computed (wrapping)
        // past the end of `w`, never dereferenced.
        let next = w.wrapping_add(ahead);
        let mut acc = [[_mm256_setzero_ps(); W]; R];
        let chunks = k / 8;
        for c in 0..chunks {
            let o = c * 8;
            // One hint per 64-byte line (every other 32-byte chunk) of each stream.
            if prefetch && c % 2 == 0 {
                for q in 0..W {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(row(q) + o) as *const i8);
                }
            }
            if W == 1 {
                // One weight chunk in a register, the inputs as memory operands of the FMAs.
                let wv = _mm256_loadu_ps(w.add(o));
                for r in 0..R {
                    acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[r].add(o)), wv, acc[r][0]);
                }
            } else {
                let xv: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(xs[r].add(o)));
                for q in 0..W {
                    let wv = _mm256_loadu_ps(w.add(row(q) + o));
                    for r in 0..R {
                        acc[r][q] = _mm256_fmadd_ps(xv[r], wv, acc[r][q]);
                    }
                }
            }
        }
        let tail = chunks * 8..k;
        for r in 0..R {
            let mut sums = [0.0f32; W];
            if W == 4 {
                // Horizontal sums of the four accumulators into one vector [s0, s1, s2, s3].
                let t0 = _mm256_hadd_ps(acc[r][0], acc[r][1]);
                let t1 = _mm256_hadd_ps(acc[r][2], acc[r][3]);
                let t2 = _mm256_hadd_ps(t0, t1);
                let v = _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps::<1>(t2));
                _mm_storeu_ps(sums.as_mut_ptr(), v);
            } else {
                for (q, sum) in sums.iter_mut().enumerate() {
                    let a = acc[r][q];
                    let v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                    let v = _mm_hadd_ps(v, v);
                    *sum = _mm_cvtss_f32(_mm_hadd_ps(v, v));
                }
            }
            for (q, sum) in sums.iter_mut().enumerate() {
                // k not a multiple of 8: the last k % 8 products, scalar.
                for i in tail.clone() {
                    *sum = (*xs[r].add(i)).mul_add(*w.add(row(q) + i), *sum);
                }
                *sum += s.bias.map_or(0.0, |b| b[j + q * stride]);
                *s.out.0.add((r0 + r) * s.n + j + q * stride) = *sum;
            }
        }
    }
}

/// Dot product with four independent lane accumulators (32 floats in flight) for ILP.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 4 * LANES;
    let mut acc = [0.0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (ca, cb) in ac.zip(bc) {
        for l in 0..W {
            acc[l] = madd::<FMA>(ca[l], cb[l], acc[l]);
        }
    }
    // Pairwise over the four groups, then across lanes.
    let mut total = 0.0f32;
    for l in 0..LANES {
        total += (acc[l] + acc[LANES + l]) + (acc[2 * LANES + l] + acc[3 * LANES + l]);
    }
    for (x, y) in ar.iter().zip(br) {
        total = madd::<FMA>(*x, *y, total);
    }
    total
}
