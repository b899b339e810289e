//! bf16 products on the tensor cores for the shapes cuBLAS serves worst (`kernels/mma.cu`): a
//! few hundred rows times a weight with few output columns or a short inner dimension, such as
//! decoding's `x_proj` (`d_inner → dt_rank + 2·d_state`) and `dt_proj` (`dt_rank → d_inner`) at
//! large batches. There cuBLAS's `GemmEx` needs the activation cast to bf16 first, then splits k
//! over blocks and adds the splits in a kernel of its own; on an H100, 1.4B at 128 rows, x_proj
//! took 16 µs and dt_proj 10 µs with cold weights of 1.3 and 1.0 MB (`scripts/gpu/lt_probe.cu`,
//! cuBLASLt's best algorithm 13 and 8 µs). `s6_mma_bf16` reads the fp32 activation directly and
//! rounds it to bf16 in registers (the same values as the cast), accumulates in fp32, and adds
//! its splits of k in a fixed order, so results do not change from run to run.
//!
//! **Off by default**: measured on an H100 (docs/BENCHMARKS.md, session 11), decoding with it
//! was faster at some batches (1.4B at 16 sequences +3 to +6%) and slower at others (1.4B at 128
//! sequences: 28,600 → 26,200 tok/s with both products, no gain from x_proj alone), against
//! cuBLAS's in-graph times rather than the standalone ones above. With `S6_MMA_ROWS=N` (or
//! [`set_mma_max_rows`]) `linear` under [`Compute::Bf16`](crate::backend::Compute::Bf16) uses it
//! for more rows than the GEMV takes, up to `N`, when `n` or `k` is at most 256, `k` a multiple of
//! 16 and x's rows 8-byte aligned. `S6_MMA_WK` and `S6_MMA_SPW` set its warps per tile over k
//! and k-steps per warp (for measurements).

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{driver_err, grid_1d, u32_of, Bf16Scratch, Cuda};
use crate::Result;

/// Scratch slot (of [`Bf16Scratch`]) of the per-split partial products.
const SLOT_SPLITS: usize = 2;
/// Warps per block (`S6_MMA_WARPS`), each on a tile of `TILE × TILE` over its own k-steps.
const WARPS: usize = 8;
const TILE: usize = 32;
/// k-steps of 16 per warp at most where k is split (`S6_MMA_SPW`: the kernel loads that many
/// steps at once).
const MAX_SPW: usize = 4;
/// Tiles from which a product is not split over k: they fill the device on their own, and each
/// warp walks all of k in rounds of `MAX_SPW` steps (no partial products to add). Written after
/// session 11's last device call: not yet run on a GPU (`scripts/gpu/run50_mma_ncu.sh` runs its
/// test first).
const UNSPLIT_TILES: usize = 2048;
/// `n` or `k` at most this for the kernel to be used (beyond it cuBLAS's tiles fill the device).
const SMALL_DIM: usize = 256;

/// The most rows of a product the kernel takes; 0 (the default: off) or set by
/// [`set_mma_max_rows`] or `S6_MMA_ROWS` (read once, when first needed).
static MAX_ROWS: AtomicUsize = AtomicUsize::new(UNSET);
const UNSET: usize = usize::MAX;

fn max_rows() -> usize {
    let v = MAX_ROWS.load(Ordering::Relaxed);
    if v != UNSET {
        return v;
    }
    let rows = std::env::var("S6_MMA_ROWS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    set_mma_max_rows(rows);
    rows
}

/// Makes bf16 products use the tensor-core kernel for every product it covers with at most `rows`
/// rows (0: never, the default). `S6_MMA_ROWS` sets it per process.
pub fn set_mma_max_rows(rows: usize) {
    MAX_ROWS.store(rows.min(UNSET - 1), Ordering::Relaxed);
}

/// Warps per tile along k (`wk`) and k-steps per warp (`spw`): 8 warps of 2 steps (`S6_MMA_WK`,
/// 1, 2, 4 or 8, and `S6_MMA_SPW`, 1 to 4, for measurements; of the structures measured in session
/// 11 this was the fastest).
fn split_shape() -> (usize, usize) {
    static V: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok());
        let wk = var("S6_MMA_WK").filter(|w| w.is_power_of_two() && *w <= WARPS).unwrap_or(WARPS);
        (wk, var("S6_MMA_SPW").unwrap_or(2).clamp(1, MAX_SPW))
    })
}

impl Cuda {
    /// Whether [`Cuda::linear_mma`] takes this product: x at device pointer `xp` with row stride
    /// `ld`, the bf16 weight at `wp`.
    pub(super) fn mma_covers(&self, (xp, ld): (u64, usize), wp: u64, (rows, k, n): (usize, usize, usize)) -> bool {
        rows <= max_rows()
            && (n <= SMALL_DIM || k <= SMALL_DIM)
            && k.is_multiple_of(16)
            // One split per k-step at most fits the grid's z (65,535).
            && k / 16 <= 65535
            && ld.is_multiple_of(2)
            && xp.is_multiple_of(8)
            && wp.is_multiple_of(4)
            // Row tiles fit the grid's y (s6_mma_split_sum's grid covers any output that is split:
            // fewer than UNSPLIT_TILES tiles).
            && rows.div_ceil(TILE) <= 65535
    }

    /// `out = x · Wᵀ (+ out when accumulate)` by `s6_mma_bf16` (pointers bounds checked by the
    /// caller; [`Cuda::mma_covers`] true): `x` fp32 `[rows, k]` with row stride `ldx`, `W` bf16
    /// `[n, k]`, `out` fp32 `[rows, n]` with row stride `ldo`.
    pub(super) fn linear_mma(
        &self,
        scratch: &mut Bf16Scratch,
        (xp, ldx): (u64, usize),
        wp: u64,
        (rows, k, n): (usize, usize, usize),
        (o, ldo): (u64, usize),
        accumulate: bool,
    ) -> Result<()> {
        let steps = k / 16;
        // A block holds WARPS / wk column tiles of wk warps each; a split covers wk · spw steps
        // (all of k when the tiles alone fill the device).
        let (wk, mut spw) = split_shape();
        if rows.div_ceil(TILE) * n.div_ceil(TILE) >= UNSPLIT_TILES {
            spw = steps.div_ceil(wk).max(1);
        }
        let splits = steps.div_ceil(wk * spw).max(1);
        let part = if splits > 1 { self.scratch_slot(scratch, SLOT_SPLITS, 2 * splits * rows * n)? } else { 0 };
        let cfg = LaunchConfig {
            grid_dim: (
                u32_of("column tiles", n.div_ceil(TILE).div_ceil(WARPS / wk))?,
                u32_of("row tiles", rows.div_ceil(TILE))?,
                u32_of("splits", splits)?,
            ),
            block_dim: ((32 * WARPS) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ldx32, ldo32, r32) = (u32_of("ld x", ldx)?, u32_of("ld out", ldo)?, u32_of("rows", rows)?);
        let (n32, k32, acc) = (u32_of("n", n)?, u32_of("k", k)?, u32::from(accumulate));
        let (wk32, spw32) = (u32_of("warps per tile", wk)?, u32_of("steps", spw)?);
        launch!(self, self.func("s6_mma_bf16")?, cfg, "tensor-core product";
            xp, ldx32, wp, o, ldo32, part, r32, n32, k32, wk32, spw32, acc);
        if splits > 1 {
            let s32 = u32_of("splits", splits)?;
            launch!(self, self.func("s6_mma_split_sum")?, grid_1d(rows * n), "tensor-core product splits";
                part, s32, r32, n32, o, ldo32, acc);
        }
        Ok(())
    }
}
