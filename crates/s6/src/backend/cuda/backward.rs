//! Launches of the backward kernels of the selective scan (`kernels/scan_backward.cu`; the design
//! is described there), from a zero initial state, as the [`Backend`](crate::backend::Backend)
//! trait specifies for training (the conv's backward is in `conv.rs`).

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::{driver_err, grid_1d, u32_of, Cuda, CudaBuf, MAX_D_STATE};
use crate::backend::{ScanArgs, ScanGrads, ViewMut};
use crate::{Error, Result};

/// Threads per block of the scan backward kernels.
const SCAN_BWD_THREADS: u32 = 128;

/// A scan backward kernel: name, lanes per channel, chunk length.
type ScanBwdKernel = (&'static str, u32, usize);

/// The d_state-16 scan backward kernels (`kernels/scan_backward.cu`), by their `S6_SCAN_BWD` names.
const SCAN_BWD_N16: [(&str, ScanBwdKernel); 4] = [
    ("n16p", ("s6_scan_bwd_n16p", 8, 12)),
    ("n16r8", ("s6_scan_bwd_n16r8", 8, 8)),
    ("n16pm", ("s6_scan_bwd_n16pm", 8, 12)),
    ("n16m8", ("s6_scan_bwd_n16m8", 8, 8)),
];

/// The d_state-16 scan backward for `blocks` blocks of 16 channels on `sm_count` SMs. `n16r8`
/// (the chunk's states in registers, 3 blocks per SM) where the blocks fill the device at least
/// twice over at n16p's 4 per SM, else `n16p`: measured on an H100 (docs/BENCHMARKS.md, session
/// 14), n16r8 takes 13% less time at B = 16, D = 1536 (1,536 blocks), 11% less at B = 8, D = 4096,
/// and gives training 3.5–4.8% more tokens/s, but at B = 4, D = 2048 (512 blocks) n16p fits the
/// device in one wave and n16r8 needs two (3% more time). `S6_SCAN_BWD=n16p|n16r8|n16pm|n16m8`
/// forces one, for measurements (read once per process). `n16pm` and `n16m8` (session 26, not yet
/// measured) are n16p and n16r8 with each step's dB/dC partials summed over a warp's channels on
/// the tensor cores, a quarter of the shared-memory traffic for them (`kernels/scan_backward.cu`,
/// `s6b_quad_sum4`). (4 lanes of 4 states per channel, session 19, was slower than both everywhere
/// and was removed: docs/BENCHMARKS.md, session 20.)
fn scan_bwd_n16(blocks: usize, sm_count: usize) -> ScanBwdKernel {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| super::forced_by_env("S6_SCAN_BWD", SCAN_BWD_N16.iter().map(|(name, _)| *name)));
    let by_size = if blocks >= 8 * sm_count.max(1) { 1 } else { 0 }; // n16r8, n16p
    SCAN_BWD_N16[forced.unwrap_or(by_size)].1
}

/// The scan backward kernels' `bf16_out` flag bits (scan_backward.cu's S6B_*): dΔ written in bf16,
/// dz written in bf16, the chunk checkpoints given (n16r8 then skips its own forward pass).
const BWD_DDELTA_BF16: u32 = 1;
const BWD_DZ_BF16: u32 = 2;
const BWD_CKPT_GIVEN: u32 = 4;

/// Bytes of scan-backward scratch (chunk checkpoints, per-block dB/dC partials, per-sequence
/// parameter partials) one launch may use before the batch is split into slices. That scratch is
/// `~(D·L/chunk + blocks·L·2)·N` floats per sequence, linear in d_state: 0.8 GB at 130M's shape
/// (batch 16 × 2048) with N = 16, 4.8 GB with N = 64. By default the budget is what the same
/// batch needs at d_state 16 (or `SCAN_BWD_SCRATCH_FLOOR`, if more), so training memory stays flat
/// in N: d_state up to 16 never splits, and N = 64 runs in slices of that size. Set in MiB with
/// `S6_SCAN_BWD_SCRATCH_MB` (read once) to trade memory for speed, or by
/// [`set_scan_bwd_scratch_budget`] (tests).
///
/// The floor is measured (run 89, H100, 130M's shape at N = 64, bf16; one slice holds 302 MB of
/// scratch per sequence): a budget of 805 MB (N = 16's, 2 sequences a slice) 44,300 tok/s at
/// 19.89 GB; 1 GiB (3) 55,000 at 20.19 GB; 1.3 GB (4) 50,000; 2 GiB (6) 53,500 at 21.40 GB;
/// unsplit 63,900 at 26.64 GB (N = 16: 225,500 at 19.59 GB).
const SCAN_BWD_SCRATCH_FLOOR: usize = 1 << 30;
static SCAN_BWD_SCRATCH: super::Count = super::Count::new("S6_SCAN_BWD_SCRATCH_MB", 1 << 20);

/// Sets the scan backward's scratch budget in bytes for this process (0: the default or
/// `S6_SCAN_BWD_SCRATCH_MB`); for tests, which force the batch into slices.
pub fn set_scan_bwd_scratch_budget(bytes: usize) {
    SCAN_BWD_SCRATCH.set(bytes);
}

/// Scratch floats per sequence of the scan backward: chunk checkpoints (`d_inner · ⌈L / chunk⌉ ·
/// N`), per-block dB/dC partials (`blocks · L · 2N`), parameter partials (`d_inner · (N + 2)`).
fn scan_bwd_scratch_per_seq(di: usize, seqlen: usize, n: usize, chunk: usize, blocks: usize) -> usize {
    di * seqlen.div_ceil(chunk) * n + blocks * seqlen * 2 * n + di * (n + 2)
}

/// Sequences whose scratch fits the scan backward's budget at once: all of them, else as many as
/// fit (at least one). `bytes_n16`: what the batch's scratch would be at d_state 16 (the default
/// budget).
fn scan_bwd_fit(batch: usize, bytes_per_seq: usize, bytes_n16: usize) -> usize {
    let budget = SCAN_BWD_SCRATCH.get().unwrap_or(bytes_n16.max(SCAN_BWD_SCRATCH_FLOOR));
    (budget / bytes_per_seq.max(1)).clamp(1, batch.max(1))
}

/// Sequences per launch when the batch goes through in slices of at most `fit`: the count whose
/// launches take the fewest waves of blocks in all (`blocks_per_seq` blocks a sequence, `wave`
/// blocks resident on the device at once), the larger on a tie (fewer launches). A slice whose
/// grid spills a few blocks into another wave pays that whole wave: run 89 at 130M's shape and
/// d_state 64 (192 blocks a sequence, 5 resident per SM: 660 a wave on an H100), slices of 2 / 3 /
/// 4 / 5 / 6 sequences of 16 took 8 / 6 / 8 / 7 / 6 waves by this count and ran at 44,300 /
/// 55,000 / 50,000 / 53,200 / 53,500 tok/s.
fn scan_bwd_slice(batch: usize, fit: usize, blocks_per_seq: usize, wave: usize) -> usize {
    let (batch, fit, wave) = (batch.max(1), fit.clamp(1, batch.max(1)), wave.max(1));
    if fit >= batch {
        return batch;
    }
    let waves = |s: usize| {
        let launch = |seqs: usize| (seqs * blocks_per_seq).div_ceil(wave);
        (batch / s) * launch(s) + launch(batch % s)
    };
    (1..=fit).min_by_key(|&s| (waves(s), usize::MAX - s)).unwrap_or(1)
}

/// Whether `s6_scan_bwd_n16r8` gets its chunk checkpoints from `s6_scan_n16_ckpt8` (the forward
/// kernel's recurrence without outputs) and skips its own first pass: 7% less time at B = 16,
/// D = 1536 and +2.8% training tokens/s at 130M on an H100 (docs/BENCHMARKS.md, session 21).
/// `S6_SCAN_BWD_CKPT=0` turns it off, for measurements. n16p keeps its own pass: given the
/// checkpoints it took 8% longer at B = 4, D = 2048.
static SCAN_BWD_CKPT: super::Switch = super::Switch::new("S6_SCAN_BWD_CKPT", true);

impl Cuda {
    /// `(kernel, lanes per channel, chunk length)` of the scan backward for `d_state = n`, where
    /// the d_state-16 kernels would run `blocks16` blocks (batch · ⌈d_inner / 16⌉).
    fn scan_bwd_kernel(&self, n: usize, blocks16: usize) -> Result<(&cudarc::driver::CudaFunction, u32, usize)> {
        let (name, split, chunk) = match n {
            0..=4 => ("s6_scan_bwd_n4", 4, 16),
            5..=8 => ("s6_scan_bwd_n8", 8, 16),
            9..=16 => scan_bwd_n16(blocks16, self.inner.sm_count),
            17..=32 => ("s6_scan_bwd_n32", 16, 16),
            33..=MAX_D_STATE => ("s6_scan_bwd_n64", 16, 8),
            _ => {
                return Err(Error::Backend(format!(
                    "CUDA scan backward: d_state {n} is over the kernels' maximum of {MAX_D_STATE}"
                )))
            }
        };
        Ok((self.func(name)?, split, chunk))
    }

    /// [`Backend::selective_scan_backward`](crate::backend::Backend::selective_scan_backward).
    pub(super) fn scan_backward(
        &self,
        args: &ScanArgs<'_, CudaBuf>,
        dy: &CudaBuf,
        grads: ScanGrads<'_, CudaBuf>,
    ) -> Result<()> {
        let dims = args.dims;
        let (batch, seqlen, di, n) = (dims.batch, dims.seqlen, dims.d_inner, dims.d_state);
        let rows = batch * seqlen;
        if args.z.is_some() != grads.dz.is_some() {
            return Err(Error::Backend("CUDA scan backward: z and dz must be both given or both absent".into()));
        }
        let (func, split, chunk) = self.scan_bwd_kernel(n, batch * di.div_ceil(16))?;
        let ext = Self::view_extent;
        let u = self.ptr(args.u, 0, rows * di, "scan backward u")?;
        let dl = self.ptr(args.delta, 0, rows * di, "scan backward delta")?;
        let dbias = self.ptr(args.delta_bias, 0, di, "scan backward delta_bias")?;
        let a = self.ptr(args.a, 0, di * n, "scan backward A")?;
        let bm = self.ptr(args.b.buf, args.b.offset, ext(args.b.ld, rows, n), "scan backward B")?;
        let cm = self.ptr(args.c.buf, args.c.offset, ext(args.c.ld, rows, n), "scan backward C")?;
        let d = self.ptr(args.d, 0, di, "scan backward D")?;
        let (zp, ldz) = match args.z {
            Some(z) => (self.ptr(z.buf, z.offset, ext(z.ld, rows, di), "scan backward z")?, z.ld),
            None => (0u64, 0),
        };
        let dyp = self.ptr(dy, 0, rows * di, "scan backward dy")?;
        for (what, at) in [("dB", grads.db), ("dC", grads.dc)] {
            if at.ld < n {
                return Err(Error::Backend(format!("CUDA scan backward: {what} row stride {} < d_state {n}", at.ld)));
            }
        }
        let dbp = self.ptr_mut(grads.dbc, grads.db.offset, ext(grads.db.ld, rows, n), "scan backward dB")?;
        let dcp = self.ptr_mut(grads.dbc, grads.dc.offset, ext(grads.dc.ld, rows, n), "scan backward dC")?;
        let dup = self.ptr_mut(grads.du, 0, rows * di, "scan backward du")?;
        // dΔ in bf16 alone where the model allows it (dt_proj's backward products read it so).
        let dd_at = self.act_out_alone(grads.ddelta, rows * di, "scan backward ddelta")?;
        // The kernel's `bf16_out` flag word (scan_backward.cu).
        let (ddp, mut bf16_out) = dd_at.b16.map_or((dd_at.f32, 0u32), |p| (p, BWD_DDELTA_BF16));
        // dz is a part of dxz (in_proj's output gradient), read only by in_proj's backward
        // products: in bf16 alone where the model allows dxz so, the conv backward writing the
        // other part the same way (conv.rs).
        let (dzp, lddz, dz_out) = match grads.dz {
            Some(ViewMut { buf, offset, ld }) => {
                if ld < di {
                    return Err(Error::Backend(format!("CUDA scan backward: dz row stride {ld} < d_inner {di}")));
                }
                let at = self.act_out_part(buf, offset, ext(ld, rows, di), "scan backward dz")?;
                let p = match at.b16 {
                    Some(p16) => {
                        bf16_out |= BWD_DZ_BF16;
                        p16
                    }
                    None => at.f32,
                };
                let buf: &CudaBuf = buf;
                (p, ld, Some((buf, at)))
            }
            None => (0u64, 0, None),
        };
        let dap = self.ptr_mut(grads.da, 0, di * n, "scan backward dA")?;
        let ddp_skip = self.ptr_mut(grads.dd, 0, di, "scan backward dD")?;
        let dbiasp = self.ptr_mut(grads.ddelta_bias, 0, di, "scan backward ddelta_bias")?;
        if rows == 0 {
            return Ok(());
        }
        let cpb = (SCAN_BWD_THREADS / split) as usize;
        let nblk = di.div_ceil(cpb);
        let (r32, n32, nblk32) = (u32_of("rows", rows)?, u32_of("d_state", n)?, u32_of("channel blocks", nblk)?);
        let (ldb, ldc) = (u32_of("ld dB", grads.db.ld)?, u32_of("ld dC", grads.dc.ld)?);
        if di > 0 {
            let nck = seqlen.div_ceil(chunk);
            // The scratch grows with d_state (checkpoints of every chunk, per-block dB/dC partials):
            // sequences go through in slices whose scratch fits the budget, so that training
            // memory stays flat in N (scan_bwd_slice).
            let per_seq = scan_bwd_scratch_per_seq(di, seqlen, n, chunk, nblk);
            // At d_state 16: n16r8's chunks of 8 and 16 channels per block.
            let per_seq16 = scan_bwd_scratch_per_seq(di, seqlen, 16, 8, di.div_ceil(16));
            let f = std::mem::size_of::<f32>();
            let fit = scan_bwd_fit(batch, per_seq * f, batch * per_seq16 * f);
            let slice = if fit < batch {
                // Blocks of the kernel resident per SM (its static shared memory counted).
                self.inner.ctx.bind_to_thread().map_err(driver_err("scan backward occupancy"))?;
                let per_sm = func
                    .occupancy_max_active_blocks_per_multiprocessor(SCAN_BWD_THREADS, 0, None)
                    .map_err(driver_err("scan backward occupancy"))?;
                scan_bwd_slice(batch, fit, nblk, self.inner.sm_count * (per_sm as usize).max(1))
            } else {
                batch
            };
            let f = f as u64;
            let ckpt = self.scratch::<f32>(slice * di * nck * n)?;
            let pbc = self.scratch::<f32>(nblk * slice * seqlen * 2 * n)?;
            let pparam = self.scratch::<f32>(slice * di * (n + 2))?;
            let (ckp, _s1) = ckpt.device_ptr(self.stream());
            let (pbcp, _s2) = pbc.device_ptr(self.stream());
            let (ppp, _s3) = pparam.device_ptr(self.stream());
            let (ldb_in, ldc_in, ldz32) =
                (u32_of("ld B", args.b.ld)?, u32_of("ld C", args.c.ld)?, u32_of("ld z", ldz)?);
            let lddz32 = u32_of("ld dz", lddz)?;
            let (l, dd) = (u32_of("seqlen", seqlen)?, u32_of("d_inner", di)?);
            // n16r8: the checkpoints by the forward kernel's recurrence, and the backward without
            // its own forward pass (SCAN_BWD_CKPT).
            // (d_state 16 and chunks of 8: n16r8; the checkpoint kernel reads 16 states of B.)
            let ck_given = n == 16 && chunk == 8 && SCAN_BWD_CKPT.on();
            if ck_given {
                bf16_out |= BWD_CKPT_GIVEN;
            }
            // Byte offsets of a slice's first row in each row-major operand (element size, row stride).
            let es = |bit: u32| if bf16_out & bit != 0 { 2 } else { f };
            let (dd_es, dz_es) = (es(BWD_DDELTA_BF16), es(BWD_DZ_BF16));
            let at = |p: u64, es: u64, ld: usize, r0: usize| if p == 0 { 0 } else { p + es * (r0 * ld) as u64 };
            for b0 in (0..batch).step_by(slice) {
                let sb = slice.min(batch - b0);
                let (r0, srows) = (b0 * seqlen, sb * seqlen);
                let (u, dl, bm, cm) =
                    (at(u, f, di, r0), at(dl, f, di, r0), at(bm, f, args.b.ld, r0), at(cm, f, args.c.ld, r0));
                let (zp, dyp, dup) = (at(zp, f, ldz, r0), at(dyp, f, di, r0), at(dup, f, di, r0));
                let (ddp, dzp) = (at(ddp, dd_es, di, r0), at(dzp, dz_es, lddz, r0));
                let (dbp, dcp) = (at(dbp, f, grads.db.ld, r0), at(dcp, f, grads.dc.ld, r0));
                let sb32 = u32_of("batch", sb)?;
                if ck_given {
                    let cfg = LaunchConfig {
                        grid_dim: (u32_of("checkpoint blocks", di.div_ceil(32))?, sb32, 1),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    launch!(self, self.func("s6_scan_n16_ckpt8")?, cfg, "scan backward checkpoints";
                        u, dl, dbias, a, bm, ldb_in, ckp, l, dd);
                }
                let cfg = LaunchConfig {
                    grid_dim: (nblk32, sb32, 1),
                    block_dim: (SCAN_BWD_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(self, func, cfg, "selective_scan_backward";
                    u, dl, dbias, a, bm, ldb_in, cm, ldc_in, d, zp, ldz32, dyp, dup, ddp, bf16_out, dzp, lddz32, ckp, pbcp, ppp, l, dd, n32);
                launch!(self, self.func("s6_scan_bwd_reduce_params")?, grid_1d(di * (n + 2)), "scan backward dA/dD";
                    ppp, sb32, dd, n32, dap, ddp_skip, dbiasp);
                if n > 0 {
                    let sr32 = u32_of("rows", srows)?;
                    launch!(self, self.func("s6_scan_bwd_reduce_bc")?, grid_1d(srows * 2 * n), "scan backward dB/dC";
                        pbcp, nblk32, sr32, n32, dbp, ldb, dcp, ldc);
                }
            }
            self.act_out_written(grads.ddelta, &dd_at, rows * di)?;
            if let Some((buf, at)) = &dz_out {
                self.act_out_written(buf, at, buf.len)?;
            }
        } else if n > 0 {
            // No channels: dB and dC are zero (a sum over no blocks).
            let zero = 0u32;
            launch!(self, self.func("s6_scan_bwd_reduce_bc")?, grid_1d(rows * 2 * n), "scan backward dB/dC";
                dbp, zero, r32, n32, dbp, ldb, dcp, ldc);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::scan_bwd_slice;

    /// Run 89's shape (130M at d_state 64: 16 sequences of 192 blocks, 660 blocks a wave): the
    /// counts measured fastest where they fit, never one that spills into a near-empty wave.
    #[test]
    fn slices_fill_their_waves() {
        let pick = |fit| scan_bwd_slice(16, fit, 192, 660);
        assert_eq!([1, 2, 3, 4, 5, 6].map(pick), [1, 2, 3, 3, 3, 6]);
        assert_eq!(pick(16), 16);
        assert_eq!(pick(40), 16);
        // One block a sequence: every count takes one wave, so the largest that fits.
        assert_eq!(scan_bwd_slice(10, 7, 1, 132), 7);
        // Degenerate sizes stay at one sequence or more.
        assert_eq!(scan_bwd_slice(0, 0, 5, 0), 1);
        assert_eq!(scan_bwd_slice(8, 0, 5, 10), 1);
    }
}
