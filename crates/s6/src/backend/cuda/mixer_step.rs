//! The fused single-token mixer step ([`Backend::mixer_step`], `kernels/mixer_step.cu`): for
//! decoding (`seqlen = 1`), conv1d + SiLU, `x_proj`, `dt_proj` and the selective-scan step with
//! `D` and the gate in three kernels instead of five: the conv (without its state update), the
//! `x_proj` product (the small-batch GEMV), and `s6_mixer_step_scan`, which does `dt_proj`, the
//! conv-state update and the scan step per channel (for large batches `dt_proj` is one more
//! product before it: see [`DT_PRODUCT_MIN_BATCH`]). (A first version also fused the conv into
//! `x_proj`: every block recomputed the conv, and on 1.4B it was slower than op by op.)
//! The environment variable `S6_FUSED_STEP=0` turns it off (the model then runs the ops one by
//! one), for side-by-side measurements; it is read once per process.
//!
//! [`Backend::mixer_step`]: crate::backend::Backend::mixer_step

use std::sync::OnceLock;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{driver_err, u32_of, Cuda, CudaBuf, MAX_D_STATE};
use crate::backend::{Backend, MixerStepArgs, MixerStepOut, View};
use crate::Result;

/// Channels per block of `s6_mixer_step_scan` (`S6_MS_CPB`) and lanes per channel (`S6_MS_G`).
const SCAN_CPB: usize = 32;
const SCAN_LANES: usize = 8;
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
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("S6_FUSED_STEP").map(|v| v.trim() != "0").unwrap_or(true))
}

impl Cuda {
    pub(super) fn mixer_step_dev(&self, a: &MixerStepArgs<'_, CudaBuf>, o: MixerStepOut<'_, CudaBuf>) -> Result<bool> {
        let (batch, di, n, k, r) = (a.batch, a.d_inner, a.d_state, a.d_conv, a.dt_rank);
        let width = r + 2 * n;
        let covered = fused_step_enabled()
            && batch > 0
            && batch <= 65535
            && di > 0
            && (1..=MAX_D_STATE).contains(&n)
            && (1..=MAX_D_CONV).contains(&k)
            && 4 * width <= MAX_SHARED;
        if !covered {
            return Ok(false);
        }
        let ldxz = 2 * di;
        let xz = self.ptr(a.xz, 0, batch * ldxz, "mixer step xz")?;
        let cw = self.ptr(a.conv_weight, 0, di * k, "mixer step conv weight")?;
        let cb = self.ptr_opt(a.conv_bias, di, "mixer step conv bias")?;
        let dtw = self.ptr(a.dt_proj, 0, di * r, "mixer step dt_proj")?;
        let dtb = self.ptr(a.dt_bias, 0, di, "mixer step dt bias")?;
        let ap = self.ptr(a.a, 0, di * n, "mixer step A")?;
        let dp = self.ptr(a.d, 0, di, "mixer step D")?;
        let up = self.ptr_mut(o.u, 0, batch * di, "mixer step u")?;
        let xdbl = self.ptr_mut(o.xdbl, 0, batch * width, "mixer step xdbl")?;
        let delta = self.ptr_mut(o.delta, 0, batch * di, "mixer step delta")?;
        let yp = self.ptr_mut(o.y, 0, batch * di, "mixer step y")?;
        let conv = self.ptr_mut(o.conv_state, 0, batch * (k - 1) * di, "mixer step conv state")?;
        let ssm = self.ptr_mut(o.ssm_state, 0, batch * di * n, "mixer step ssm state")?;
        let (ldxz, kk, ww, rr) =
            (u32_of("ld xz", ldxz)?, u32_of("d_conv", k)?, u32_of("width", width)?, u32_of("dt_rank", r)?);
        let (dd, nn, bb) = (u32_of("d_inner", di)?, u32_of("d_state", n)?, u32_of("batch", batch)?);

        // conv + SiLU → u: the op-by-op path's kernel, without its state update, which moves into
        // the scan kernel (the window is still read here).
        self.launch_conv_forward((xz, 2 * di), cw, cb, conv, up, (batch, 1, di, k))?;
        // x_proj as any product: the small-batch GEMV for few rows, under the chosen `Compute`.
        self.linear(View::full(&*o.u, di), batch, di, a.x_proj, width, None, &mut *o.xdbl)?;
        let dt_given = batch >= DT_PRODUCT_MIN_BATCH && batch * di * r * 4 >= DT_PRODUCT_MIN_BYTES;
        if dt_given {
            // dt without its bias into `delta`, as the op-by-op path writes it.
            self.linear(View::cols(&*o.xdbl, 0, width), batch, r, a.dt_proj, di, None, &mut *o.delta)?;
        }
        let dt_given = u32::from(dt_given);
        let cfg2 = LaunchConfig {
            grid_dim: (u32_of("blocks", di.div_ceil(SCAN_CPB))?, bb, 1),
            block_dim: ((SCAN_CPB * SCAN_LANES) as u32, 1, 1),
            shared_mem_bytes: u32_of("shared", 4 * width)?,
        };
        launch!(self, self.func("s6_mixer_step_scan")?, cfg2, "mixer step scan";
            xz, ldxz, up, xdbl, ww, rr, dtw, dtb, ap, dp, conv, kk, ssm, delta, yp, dd, nn, dt_given);
        Ok(true)
    }
}
