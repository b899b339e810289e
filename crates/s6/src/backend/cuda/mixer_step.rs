//! The fused single-token mixer step ([`Backend::mixer_step`], `kernels/mixer_step.cu`): for
//! decoding (`seqlen = 1`), conv1d + SiLU, `x_proj`, `dt_proj` and the selective-scan step with
//! `D` and the gate in three kernels instead of five: the conv (without its state update), the
//! `x_proj` product (the small-batch GEMV), and `s6_mixer_step_scan`, which does `dt_proj`, the
//! conv-state update and the scan step per channel (for large batches `dt_proj` is one more
//! product before it: see `DT_PRODUCT_MIN_BATCH`). (A first version also fused the conv into
//! `x_proj`: every block recomputed the conv, and on 1.4B it was slower than op by op.)
//!
//! [`Backend::block_step`] goes further for 1 to [`GEMV_MAX_ROWS`] sequences: the block's RMSNorm
//! moves into in_proj's GEMV (every block of that kernel computes the row scales it needs), the
//! conv into the same kernel's epilogue (depthwise: the thread that writes column j of x has all
//! the conv of channel j needs), and the residual add into out_proj's GEMV, which adds its
//! product to the residual stream. Four kernels per block instead of six, each giving the same
//! bits as the kernels it replaces. At batch 1 with bf16 products and `S6_LAYER_STEP=1` the four
//! become one persistent kernel (`layer_step.rs`).
//!
//! [`Backend::block_step`] is on by default (on an H100, 130M bf16 at batch 1: 2,300 tok/s against
//! 1,950 without it, and the same at batch 8; docs/BENCHMARKS.md, session 8); `S6_BLOCK_STEP=0`
//! or [`set_block_step`] turns it off (the variable is read once per process; the setter is for
//! tests and benchmarks).
//!
//! For one sequence the scan step runs as `s6_mixer_step_scan_b1`, which loads its weights
//! (dt_proj's row, A, D, the bias) before waiting for the previous kernel (programmatic dependent
//! launch); with more sequences those registers, held by blocks resident ahead of their turn,
//! cost more than they save (docs/BENCHMARKS.md, session 9). Where dt_proj is one product for the
//! batch and d_state is 16, the scan step is `s6_mixer_step_scan_n16`: 4 lanes of 4 states per
//! channel, every load issued at once, no shared memory (1.4B at batch 128 on an H100: 67 → 30 µs
//! per layer, 21,500 → 28,700 tok/s; session 10).
//!
//! For one sequence under bf16 products on Hopper and newer, with `S6_XSCAN=1` (or
//! [`set_xscan`]), x_proj moves into the scan step too: `s6_mixer_step_xscan_b1_*` computes it
//! over clusters of 8 blocks, each block a slice of d_inner, their partial sums added through
//! distributed shared memory (`kernels/mixer_step.cu`), one kernel and its latency fewer per
//! layer. Its sums run in another order than the GEMV's (xdbl differs in the last bits).
//!
//! The environment variable `S6_FUSED_STEP=0` turns the mixer step and the block step off (the
//! model then runs the ops one by one), for side-by-side measurements; it is read once per
//! process.
//!
//! [`Backend::mixer_step`]: crate::backend::Backend::mixer_step
//! [`Backend::block_step`]: crate::backend::Backend::block_step

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{
    driver_err, gemv_enabled, u32_of, Compute, Cuda, CudaBuf, GemvMode, NormConv, Switch, GEMV_MAX_ROWS, MAX_D_STATE,
};
use crate::backend::{Backend, BlockStepArgs, BlockStepOut, MixerStepArgs, MixerStepOut, MixerWeights, View};
use crate::Result;

/// Threads per block of the scan-step kernel (`S6_MS_THREADS`; 8 lanes per channel).
const SCAN_THREADS: usize = 256;
/// Lanes per channel of `s6_mixer_step_scan` (`S6_MS_G`).
const SCAN_LANES: usize = 8;
/// Threads per block and lanes per channel of `s6_mixer_step_scan_n16` (`S6_MSW_THREADS`,
/// `S6_MSW_LANES`), the scan step for large batches at d_state 16.
const WIDE_THREADS: usize = 256;
const WIDE_LANES: usize = 4;
/// [`Backend::block_step`]'s setting (module documentation).
static BLOCK_STEP: Switch = Switch::new("S6_BLOCK_STEP", true);

/// x_proj fused into the batch-1 scan step over clusters (module documentation).
static XSCAN: Switch = Switch::new("S6_XSCAN", false);
/// Blocks per cluster of `s6_mixer_step_xscan_b1_*` (`S6_XS_CLUSTER`).
const XSCAN_CLUSTER: usize = 8;

/// Whether x_proj may be fused into the batch-1 scan step (module documentation).
pub fn xscan_enabled() -> bool {
    XSCAN.on()
}

/// Turns the fused x_proj of the batch-1 scan step on or off for this process.
pub fn set_xscan(on: bool) {
    XSCAN.set(on);
}

/// When the batch-1 scan step prefetches out_proj's weights into L2 for the kernel after it:
/// `S6_PREFETCH_NEXT=1` before its PDL wait, `2` after its own loads, `0` (the default until
/// measured) never. Read once per process.
fn prefetch_next_mode() -> u32 {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| super::forced_by_env("S6_PREFETCH_NEXT", ["0", "1", "2"]).unwrap_or(0) as u32)
}

/// The scan step kernels' `next*` arguments: the weights of the kernels after it (out_proj's,
/// then the next block's in_proj or nothing), device address and bytes, for the batch-1 step to
/// prefetch into L2 when `mode` ([`prefetch_next_mode`]) is not 0. All zeros: no prefetch.
#[derive(Clone, Copy, Default)]
struct NextPrefetch {
    ptr: u64,
    bytes: u64,
    ptr2: u64,
    bytes2: u64,
    mode: u32,
}

/// Whether [`Backend::block_step`] runs fused (see the module documentation).
pub fn block_step_enabled() -> bool {
    BLOCK_STEP.on()
}

/// Turns [`Backend::block_step`]'s fused path on or off for this process.
pub fn set_block_step(on: bool) {
    BLOCK_STEP.set(on);
}

/// `dt_proj` runs as one product for the whole batch before the scan kernel from
/// `DT_PRODUCT_MIN_BATCH` sequences on when the batch would otherwise read at least
/// `DT_PRODUCT_MIN_BYTES` of it: computed per channel inside the kernel, every sequence's blocks
/// read the whole `dt_proj` matrix again from L2 (268 MB per layer at 1.4B, batch 128: the
/// product took the step from 15,307 to 21,742 tok/s on an H100), while for a small matrix the
/// extra kernel costs more than it saves (130M, batch 16: 4.7 MB, 4% slower).
const DT_PRODUCT_MIN_BATCH: usize = 16;
const DT_PRODUCT_MIN_BYTES: usize = 8 << 20;
/// Dynamic shared memory the kernels may use without opting in (bytes).
const MAX_SHARED: usize = 48 << 10;
/// The longest conv kernel handled (Mamba uses 4).
pub const MAX_D_CONV: usize = 16;

/// Whether the fused step is on: not turned off by `S6_FUSED_STEP=0`.
pub fn fused_step_enabled() -> bool {
    static ON: Switch = Switch::new("S6_FUSED_STEP", true);
    ON.on()
}

impl Cuda {
    /// Whether the fused step covers a mixer of these sizes.
    fn mixer_step_covers(a: &MixerWeights<'_, CudaBuf>) -> bool {
        let width = a.dt_rank + 2 * a.d_state;
        fused_step_enabled()
            && a.batch > 0
            && a.batch <= 65535
            && a.d_inner > 0
            && (1..=MAX_D_STATE).contains(&a.d_state)
            && (1..=MAX_D_CONV).contains(&a.d_conv)
            && 4 * width <= MAX_SHARED
    }

    pub(super) fn mixer_step_dev(&self, a: &MixerStepArgs<'_, CudaBuf>, o: MixerStepOut<'_, CudaBuf>) -> Result<bool> {
        let m = &a.mixer;
        if !Self::mixer_step_covers(m) {
            return Ok(false);
        }
        let (batch, di, k) = (m.batch, m.d_inner, m.d_conv);
        let xz = self.ptr(a.xz, 0, batch * 2 * di, "mixer step xz")?;
        let cw = self.ptr(m.conv_weight, 0, di * k, "mixer step conv weight")?;
        let cb = self.ptr_opt(m.conv_bias, di, "mixer step conv bias")?;
        let conv = self.ptr(o.conv_state, 0, batch * (k - 1) * di, "mixer step conv state")?;
        let up = self.ptr_mut(o.u, 0, batch * di, "mixer step u")?;
        // conv + SiLU → u: the op-by-op path's kernel, without its state update, which moves into
        // the scan kernel (the window is still read here).
        let u16 = self.act_bf16_target(o.u)?;
        if self.launch_conv_forward((xz, 2 * di), cw, cb, conv, (up, u16), (batch, 1, di, k))? {
            self.act_bf16_written(o.u, batch * di)?;
        }
        self.mixer_step_rest(m, xz, o, NextPrefetch::default())?;
        Ok(true)
    }

    /// The fused step after the conv (`o.u` written): x_proj, dt_proj and the scan step, from
    /// in_proj's output at the device pointer `xz` (`[batch, 2·d_inner]`, bounds checked).
    fn mixer_step_rest(
        &self,
        m: &MixerWeights<'_, CudaBuf>,
        xz: u64,
        mut o: MixerStepOut<'_, CudaBuf>,
        next: NextPrefetch,
    ) -> Result<()> {
        let (batch, di, n, k, r) = (m.batch, m.d_inner, m.d_state, m.d_conv, m.dt_rank);
        let width = r + 2 * n;
        let dtw = self.ptr(m.dt_proj, 0, di * r, "mixer step dt_proj")?;
        let dtb = self.ptr(m.dt_bias, 0, di, "mixer step dt bias")?;
        let ap = self.ptr(m.a, 0, di * n, "mixer step A")?;
        let dp = self.ptr(m.d, 0, di, "mixer step D")?;
        let up = self.ptr(o.u, 0, batch * di, "mixer step u")?;
        let (ldxz, kk, ww, rr) =
            (u32_of("ld xz", 2 * di)?, u32_of("d_conv", k)?, u32_of("width", width)?, u32_of("dt_rank", r)?);
        let (dd, nn, bb) = (u32_of("d_inner", di)?, u32_of("d_state", n)?, u32_of("batch", batch)?);
        if let Some((entry, slice)) = self.xscan_entry(m) {
            // x_proj inside the scan step (one sequence): xdbl is its output, not read.
            let wx = self.weight_bf16(m.x_proj, width * di, "mixer step x_proj")?;
            let xdbl_out = self.ptr_mut(o.xdbl, 0, width, "mixer step xdbl")?;
            let [delta, yp, conv, ssm] = self.scan_step_outputs(&mut o, m)?;
            let cfg = LaunchConfig {
                grid_dim: (
                    u32_of("blocks", di.div_ceil(SCAN_THREADS / SCAN_LANES).div_ceil(XSCAN_CLUSTER) * XSCAN_CLUSTER)?,
                    1,
                    1,
                ),
                block_dim: (SCAN_THREADS as u32, 1, 1),
                shared_mem_bytes: u32_of("shared", 4 * (2 * width + slice))?,
            };
            let (no_xdbl, dt_given, pf) = (0u64, 0u32, self.prefetch_for(4 * di * (n + r)));
            launch!(self, self.func(entry)?, cfg, "mixer step scan with x_proj";
                xz, ldxz, up, no_xdbl, ww, rr, dtw, dtb, ap, dp, conv, kk, ssm, delta, yp, dd, nn, dt_given, pf,
                next.ptr, next.bytes, next.ptr2, next.bytes2, next.mode, wx, xdbl_out);
            return Ok(());
        }
        // x_proj as any product: the small-batch GEMV for few rows, under the chosen `Compute`.
        self.linear(View::full(&*o.u, di), batch, di, m.x_proj, width, None, &mut *o.xdbl)?;
        let dt_given = batch >= DT_PRODUCT_MIN_BATCH && batch * di * r * 4 >= DT_PRODUCT_MIN_BYTES;
        if dt_given {
            // dt without its bias into `delta`, as the op-by-op path writes it. (In fp32 on
            // x_proj's f32 output, without its cast to bf16, it was 5% slower at 1.4B, batch 16 and
            // 128, on an H100: run 87.)
            self.linear(View::cols(&*o.xdbl, 0, width), batch, r, m.dt_proj, di, None, &mut *o.delta)?;
        }
        let xdbl = self.ptr(o.xdbl, 0, batch * width, "mixer step xdbl")?;
        let [delta, yp, conv, ssm] = self.scan_step_outputs(&mut o, m)?;
        if dt_given && n == 16 {
            // Large batches, Mamba's d_state: 4 lanes of 4 states per channel, every load at once
            // (kernels/mixer_step.cu).
            let cfg = LaunchConfig {
                grid_dim: (u32_of("blocks", di.div_ceil(WIDE_THREADS / WIDE_LANES))?, bb, 1),
                block_dim: (WIDE_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // With bf16 activation copies (bf16.rs) y, out_proj's input, is written in bf16 too.
            if let Some(y16) = self.act_bf16_target(o.y)? {
                launch!(self, self.func("s6_mixer_step_scan_n16_b16")?, cfg, "mixer step scan";
                    xz, ldxz, up, xdbl, ww, rr, dtb, ap, dp, conv, kk, ssm, delta, yp, y16, dd);
                return self.act_bf16_written(o.y, batch * di);
            }
            launch!(self, self.func("s6_mixer_step_scan_n16")?, cfg, "mixer step scan";
                xz, ldxz, up, xdbl, ww, rr, dtb, ap, dp, conv, kk, ssm, delta, yp, dd);
            return Ok(());
        }
        let pf = self.prefetch_for(4 * di * (if dt_given { n } else { n + r }));
        let dt_given = u32::from(dt_given);
        let cfg2 = LaunchConfig {
            grid_dim: (u32_of("blocks", di.div_ceil(SCAN_THREADS / SCAN_LANES))?, bb, 1),
            block_dim: (SCAN_THREADS as u32, 1, 1),
            shared_mem_bytes: u32_of("shared", 4 * width)?,
        };
        // One sequence: the entry that loads its weights before the PDL wait (mixer_step.cu).
        let name = if batch == 1 { "s6_mixer_step_scan_b1" } else { "s6_mixer_step_scan" };
        launch!(self, self.func(name)?, cfg2, "mixer step scan";
            xz, ldxz, up, xdbl, ww, rr, dtw, dtb, ap, dp, conv, kk, ssm, delta, yp, dd, nn, dt_given, pf,
            next.ptr, next.bytes, next.ptr2, next.bytes2, next.mode);
        Ok(())
    }

    /// The scan step's outputs and states as device pointers, bounds checked: `[delta, y, conv
    /// state, ssm state]`.
    fn scan_step_outputs(&self, o: &mut MixerStepOut<'_, CudaBuf>, m: &MixerWeights<'_, CudaBuf>) -> Result<[u64; 4]> {
        let (batch, di, n, k) = (m.batch, m.d_inner, m.d_state, m.d_conv);
        Ok([
            self.ptr_mut(o.delta, 0, batch * di, "mixer step delta")?,
            self.ptr_mut(o.y, 0, batch * di, "mixer step y")?,
            self.ptr_mut(o.conv_state, 0, batch * (k - 1) * di, "mixer step conv state")?,
            self.ptr_mut(o.ssm_state, 0, batch * di * n, "mixer step ssm state")?,
        ])
    }

    /// Whether the device runs thread-block clusters (compute capability 9.0 and newer), which
    /// the batch-1 scan step with x_proj fused in needs.
    pub fn has_clusters(&self) -> bool {
        self.inner.clusters
    }

    /// The entry of `s6_mixer_step_xscan_b1` that covers this step, and its slice of d_inner
    /// per block, if it runs fused: one sequence, bf16 products, clusters on the device, d_inner
    /// a multiple of 8 up to 8,192 (the kernel's 16-byte weight vectors, at most 4 per lane and
    /// row), its shared memory within the default limit.
    fn xscan_entry(&self, m: &MixerWeights<'_, CudaBuf>) -> Option<(&'static str, usize)> {
        let (di, width) = (m.d_inner, m.dt_rank + 2 * m.d_state);
        let slice = di.div_ceil(XSCAN_CLUSTER).div_ceil(8) * 8;
        let covered = m.batch == 1
            && xscan_enabled()
            && self.inner.clusters
            && self.compute() == Compute::Bf16
            && di % 8 == 0
            && di <= 8192
            && 4 * (2 * width + slice) <= MAX_SHARED;
        let entry = match slice / 8 {
            ..=32 => "s6_mixer_step_xscan_b1_v1",
            33..=64 => "s6_mixer_step_xscan_b1_v2",
            _ => "s6_mixer_step_xscan_b1_v4",
        };
        covered.then_some((entry, slice))
    }

    pub(super) fn block_step_dev(
        &self,
        a: &BlockStepArgs<'_, CudaBuf>,
        mut o: BlockStepOut<'_, CudaBuf>,
    ) -> Result<bool> {
        let m = &a.mixer;
        let (batch, d, di, k) = (m.batch, a.d_model, m.d_inner, m.d_conv);
        if !block_step_enabled() || !Self::mixer_step_covers(m) || batch > GEMV_MAX_ROWS || !gemv_enabled() || d == 0 {
            return Ok(false);
        }
        // One sequence with bf16 products: the whole step as one kernel (layer_step.rs), in one
        // cluster or over the grid, where switched on.
        if self.cluster_step_dev(a, &mut o)? || self.layer_step_dev(a, &mut o)? {
            return Ok(true);
        }
        // f32 weights under F32 and Tf32 (the GEMV computes in plain fp32 either way, as `linear`
        // does for few rows), their bf16 copies under Bf16.
        let set = usize::from(self.compute() == Compute::Bf16);
        let weight = |w: &CudaBuf, len: usize, what: &str| {
            if set == 1 {
                self.weight_bf16(w, len, what)
            } else {
                self.ptr(w, 0, len, what)
            }
        };
        let iw = 2 * di;
        let res = self.ptr_mut(o.residual, 0, batch * d, "block step residual")?;
        let norm = self.ptr(a.norm, 0, d, "block step norm weight")?;
        let w_in = weight(a.in_proj, iw * d, "block step in_proj")?;
        let b_in = self.ptr_opt(a.in_proj_bias, iw, "block step in_proj bias")?;
        let w_out = weight(a.out_proj, d * di, "block step out_proj")?;
        let b_out = self.ptr_opt(a.out_proj_bias, d, "block step out_proj bias")?;
        let xz = self.ptr_mut(o.xz, 0, batch * iw, "block step xz")?;
        let nc = NormConv {
            norm,
            eps: a.eps,
            conv_w: self.ptr(m.conv_weight, 0, di * k, "block step conv weight")?,
            conv_b: self.ptr_opt(m.conv_bias, di, "block step conv bias")?,
            conv_state: self.ptr(o.mixer.conv_state, 0, batch * (k - 1) * di, "block step conv state")?,
            u: self.ptr_mut(o.mixer.u, 0, batch * di, "block step u")?,
            ch: u32_of("d_inner", di)?,
            kconv: u32_of("d_conv", k)?,
        };
        // RMSNorm → in_proj → xz, and conv + SiLU → u.
        self.launch_gemv(set, (res, d), w_in, (batch, d, iw), b_in, xz, GemvMode::NormConv(nc))?;
        let y = self.ptr(o.mixer.y, 0, batch * di, "block step y")?;
        // One sequence: the scan step may prefetch out_proj's weights, and the next block's
        // in_proj where both take at most a quarter of the L2 ([`prefetch_next_mode`]).
        let mut next = NextPrefetch::default();
        if batch == 1 && prefetch_next_mode() > 0 {
            let elem = if set == 1 { 2 } else { 4 };
            next = NextPrefetch { ptr: w_out, bytes: (d * di * elem) as u64, mode: prefetch_next_mode(), ..next };
            if let Some(w) = a.next_in_proj.filter(|_| (d * di + iw * d) * elem <= self.inner.l2_bytes / 4) {
                next.ptr2 = weight(w, iw * d, "next in_proj")?;
                next.bytes2 = (iw * d * elem) as u64;
            }
        }
        self.mixer_step_rest(m, xz, o.mixer, next)?;
        // residual += out_proj(y).
        self.launch_gemv(set, (y, di), w_out, (batch, di, d), b_out, res, GemvMode::Accumulate)?;
        Ok(true)
    }
}
