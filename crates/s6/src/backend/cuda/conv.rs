//! Launches of the causal depthwise conv1d + SiLU kernels (`kernels/conv.cu`; the design is
//! described there): the forward, for every sequence length (decoding's fused step in
//! `mixer_step.rs` launches it too), and the backward, from a zero initial state as the
//! [`Backend`](crate::backend::Backend) trait specifies for training.

use std::sync::OnceLock;

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::{driver_err, grid_1d, u32_of, Cuda, CudaBuf};
use crate::backend::{View, ViewMut};
use crate::{Error, Result};

/// Time steps per forward thread and per tile of a backward thread's walk (`S6_CONV_R`).
const CONV_STEPS: usize = 8;
/// Threads per forward block (the kernels' `__launch_bounds__`).
const FWD_THREADS: usize = 128;
/// The backward block: 32 threads over channels × `BWD_SEGMENTS` segments (`S6_CONV_BWD_BY`) of
/// `BWD_SEGMENT_STEPS` steps each (`S6_CONV_BWD_SEG`).
const BWD_SEGMENTS: usize = 4;
const BWD_SEGMENT_STEPS: usize = 8 * CONV_STEPS;
/// Block of `s6_conv_bwd_dw_reduce`: 32 sums × 8 threads over the partials.
const REDUCE_BLOCK: (u32, u32, u32) = (32, 8, 1);

/// The forward and backward kernels, `[kernel size 4 (compiled for it) | any][float4 | float]`.
const FWD_KERNELS: [[&str; 2]; 2] =
    [["s6_conv_fwd_k4_vec4", "s6_conv_fwd_k4_vec1"], ["s6_conv_fwd_vec4", "s6_conv_fwd_vec1"]];
const BWD_KERNELS: [[&str; 2]; 2] =
    [["s6_conv_bwd_k4_vec4", "s6_conv_bwd_k4_vec1"], ["s6_conv_bwd_vec4", "s6_conv_bwd_vec1"]];

/// From how many sequences a decoding conv step uses the float4 kernel (4 channels per thread);
/// fewer take one channel per thread. `S6_CONV_STEP_VEC4` (read once) sets it, for measurements.
fn conv_step_vec4_min_batch() -> usize {
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| std::env::var("S6_CONV_STEP_VEC4").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(16))
}

/// The kernel of `kernels` (`FWD_KERNELS` or `BWD_KERNELS`) for kernel size `k` and its channels
/// per thread: float4 accesses when the channel count and every row stride are multiples of 4
/// floats and every pointer is 16-byte aligned (then every row start is, and every thread's
/// weights), else floats. The weight and bias are whole buffers, so in practice only the strides
/// and the offsets of x, dx and out decide.
fn conv_kernel(
    kernels: &[[&'static str; 2]; 2],
    k: usize,
    ch: usize,
    strides: &[usize],
    ptrs: &[u64],
) -> (&'static str, usize) {
    let vec4 = ch.is_multiple_of(4)
        && strides.iter().all(|ld| ld.is_multiple_of(4))
        && ptrs.iter().all(|p| p.is_multiple_of(16));
    (kernels[usize::from(k != 4)][usize::from(!vec4)], if vec4 { 4 } else { 1 })
}

/// The forward kernels' grid: x over blocks of [`FWD_THREADS`] threads × `vec` channels, y over
/// tiles of `steps` steps, z over the sequences (the kernels stride past 65,535 in y and z).
fn fwd_config((batch, seqlen, ch): (usize, usize, usize), vec: usize, steps: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            u32_of("conv channel blocks", (ch / vec).div_ceil(FWD_THREADS))?,
            seqlen.div_ceil(steps).clamp(1, 65535) as u32,
            batch.clamp(1, 65535) as u32,
        ),
        block_dim: (FWD_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Cuda {
    /// [`Backend::conv1d_silu`](crate::backend::Backend::conv1d_silu): the conv, then the state
    /// update (a separate kernel: the conv reads the old state).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_forward(
        &self,
        x: View<'_, CudaBuf>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &CudaBuf,
        bias: Option<&CudaBuf>,
        state: &mut CudaBuf,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let rows = batch * seqlen;
        if rows * channels == 0 {
            return Ok(());
        }
        if kernel == 0 {
            return Err(Error::Backend("CUDA conv1d: kernel size 0".into()));
        }
        let xp = self.ptr_unread(x.buf, x.offset, Self::view_extent(x.ld, rows, channels), "conv1d x")?;
        let wp = self.ptr(weight, 0, channels * kernel, "conv1d weight")?;
        let bp = self.ptr_opt(bias, channels, "conv1d bias")?;
        let sp = self.ptr_mut(state, 0, batch * (kernel - 1) * channels, "conv1d state")?;
        let (ld, b, l, c, k) = (
            u32_of("ld", x.ld)?,
            u32_of("batch", batch)?,
            u32_of("seqlen", seqlen)?,
            u32_of("channels", channels)?,
            u32_of("kernel", kernel)?,
        );
        // x held in bf16 alone (in_proj's output in prefill, bf16.rs): read as bf16 by the float4
        // k = 4 kernel; any other shape makes x's f32 values current first.
        let x16 = self.held_bf16(&x, rows, channels)?;
        let only16 = self.bf16_only_target(out)?;
        let vec4 = conv_kernel(&FWD_KERNELS, kernel, channels, &[x.ld], &[xp, wp, bp, sp]).1 == 4;
        if let (Some(x16), Some(o16), 4, true, true) = (x16, only16, kernel, vec4, seqlen > 1) {
            self.ptr_unread(out, 0, rows * channels, "conv1d out")?;
            let cfg = fwd_config((batch, seqlen, channels), 4, CONV_STEPS)?;
            let o = 0u64;
            launch!(self, self.func("s6_conv_fwd_k4_vec4_x16")?, cfg, "conv1d_silu"; x16, ld, wp, bp, sp, o, o16, b, l, c, k);
            self.bf16_only_written(out, rows * channels)?;
            launch!(self, self.func("s6_conv_state_update_x16")?, grid_1d(batch * channels), "conv state"; x16, ld, sp, b, l, c, k);
            return Ok(());
        }
        self.fresh(x.buf, "conv1d x")?;
        let o = self.ptr_mut(out, 0, rows * channels, "conv1d out")?;
        // With bf16 activation copies, u's copy for x_proj (bf16.rs).
        let o16 = self.act_bf16_target(out)?;
        if self.launch_conv_forward((xp, x.ld), wp, bp, sp, (o, o16), (batch, seqlen, channels, kernel))? {
            self.act_bf16_written(out, rows * channels)?;
        }
        if kernel > 1 {
            launch!(self, self.func("s6_conv_state_update")?, grid_1d(batch * channels), "conv state"; xp, ld, sp, b, l, c, k);
        }
        Ok(())
    }

    /// The conv forward (without the state update) on bounds-checked device pointers: x with row
    /// stride `ldx`, the weight, the bias (0: none), the state `[batch, k-1, ch]` (the inputs
    /// before `t = 0`; 0: zeros) and the output `[batch * seqlen, ch]`; `out16`, when given, the
    /// bf16 copy of the output (bf16.rs: `act_bf16_target`). Returns whether that copy was written
    /// (only the k = 4, float4 kernels write one). Grid: x over blocks of 128 threads × 1 or 4
    /// channels, y over tiles of [`CONV_STEPS`] steps (one step when decoding), z over the
    /// sequences (the kernels stride past 65,535 in y and z).
    pub(super) fn launch_conv_forward(
        &self,
        (xp, ldx): (u64, usize),
        wp: u64,
        bp: u64,
        sp: u64,
        (op, out16): (u64, Option<u64>),
        (batch, seqlen, ch, k): (usize, usize, usize, usize),
    ) -> Result<bool> {
        let (name, vec) = conv_kernel(&FWD_KERNELS, k, ch, &[ldx], &[xp, wp, bp, sp, op]);
        let (name, vec, steps) = match (seqlen, k, vec) {
            // Decoding, few sequences: bound by latency, not bytes. One thread per channel spreads
            // the work over 4× more threads than float4 (130M batch 1 was 5% slower with the float4
            // tiles: 1,874 against 1,964 tok/s, H100).
            (1, 4, 4) if batch >= conv_step_vec4_min_batch() => ("s6_conv_step_k4_vec4", 4, 1),
            (1, 4, _) => ("s6_conv_step_k4_vec1", 1, 1),
            (1, _, _) => (FWD_KERNELS[1][1], 1, CONV_STEPS),
            _ => (name, vec, CONV_STEPS),
        };
        let cfg = fwd_config((batch, seqlen, ch), vec, steps)?;
        let (ld, b, l, c, kk) = (
            u32_of("ld", ldx)?,
            u32_of("batch", batch)?,
            u32_of("seqlen", seqlen)?,
            u32_of("channels", ch)?,
            u32_of("kernel", k)?,
        );
        if let (Some(o16), 4, 4) = (out16, k, vec) {
            let name = if seqlen == 1 { "s6_conv_step_k4_vec4_b16" } else { "s6_conv_fwd_k4_vec4_b16" };
            launch!(self, self.func(name)?, cfg, "conv1d_silu"; xp, ld, wp, bp, sp, op, o16, b, l, c, kk);
            return Ok(true);
        }
        launch!(self, self.func(name)?, cfg, "conv1d_silu"; xp, ld, wp, bp, sp, op, b, l, c, kk);
        Ok(false)
    }

    /// [`Backend::conv1d_silu_backward`](crate::backend::Backend::conv1d_silu_backward): one kernel
    /// for dx and the per-block partial sums of dweight/dbias, then their ordered reduction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_backward(
        &self,
        x: View<'_, CudaBuf>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &CudaBuf,
        bias: Option<&CudaBuf>,
        dout: &CudaBuf,
        dx: ViewMut<'_, CudaBuf>,
        dweight: &mut CudaBuf,
        dbias: Option<&mut CudaBuf>,
    ) -> Result<()> {
        if kernel == 0 {
            return Err(Error::Backend("CUDA conv1d backward: kernel size 0".into()));
        }
        if dx.ld < channels {
            return Err(Error::Backend(format!("CUDA conv1d backward: dx row stride {} < {channels} channels", dx.ld)));
        }
        let rows = batch * seqlen;
        let ext = Self::view_extent;
        let xp = self.ptr(x.buf, x.offset, ext(x.ld, rows, channels), "conv1d backward x")?;
        let wp = self.ptr(weight, 0, channels * kernel, "conv1d backward weight")?;
        let bp = self.ptr_opt(bias, channels, "conv1d backward bias")?;
        let gp = self.ptr(dout, 0, rows * channels, "conv1d backward dout")?;
        let ViewMut { buf: dx_buf, offset: dx_off, ld: lddx } = dx;
        let dx_extent = ext(lddx, rows, channels);
        // dx is a part of dxz (in_proj's output gradient), read only by in_proj's backward
        // products: in bf16 alone where the model allows dxz so (the scan backward writes the
        // other part the same way, backward.rs). dxp is the f32 address, for the alignment
        // checks (the bf16 one is aligned alike: 16-byte f32 rows give 8-byte bf16 ones).
        let dx_at = self.act_out_part(dx_buf, dx_off, dx_extent, "conv1d backward dx")?;
        let dxp = self.ptr_unread(dx_buf, dx_off, dx_extent, "conv1d backward dx")?;
        let dwp = self.ptr_mut(dweight, 0, channels * kernel, "conv1d backward dweight")?;
        let dbp = match dbias {
            Some(b) => self.ptr_mut(b, 0, channels, "conv1d backward dbias")?,
            None => 0u64,
        };
        if rows * channels == 0 {
            return Ok(());
        }
        let (name, vec) = conv_kernel(&BWD_KERNELS, kernel, channels, &[x.ld, lddx], &[xp, wp, bp, gp, dxp]);
        // One partial sum per sequence and block of segments: a few MB at training sizes.
        let nsb = seqlen.div_ceil(BWD_SEGMENTS * BWD_SEGMENT_STEPS);
        let np = batch * nsb;
        let part = self.scratch::<f32>(np * (kernel + 1) * channels)?;
        let (pp, _s) = part.device_ptr(self.stream());
        let cfg = LaunchConfig {
            grid_dim: (
                u32_of("conv channel blocks", (channels / vec).div_ceil(32))?,
                nsb.clamp(1, 65535) as u32,
                batch.clamp(1, 65535) as u32,
            ),
            block_dim: (32, BWD_SEGMENTS as u32, 1),
            shared_mem_bytes: 0,
        };
        let (ldx, lddx) = (u32_of("ld x", x.ld)?, u32_of("ld dx", lddx)?);
        let (b, l, c, k, nsb32) = (
            u32_of("batch", batch)?,
            u32_of("seqlen", seqlen)?,
            u32_of("channels", channels)?,
            u32_of("kernel", kernel)?,
            u32_of("segment blocks", nsb)?,
        );
        let (dx_out, dx_bf16) = dx_at.b16.map_or((dxp, 0u32), |p| (p, 1));
        launch!(self, self.func(name)?, cfg, "conv1d backward";
            xp, ldx, wp, bp, gp, dx_out, lddx, dx_bf16, pp, b, l, c, k, nsb32);
        self.act_out_written(dx_buf, &dx_at, dx_buf.len)?;
        let sums = channels * (kernel + 1);
        let cfg = LaunchConfig {
            grid_dim: (u32_of("conv dweight blocks", sums.div_ceil(REDUCE_BLOCK.0 as usize))?, 1, 1),
            block_dim: REDUCE_BLOCK,
            shared_mem_bytes: 0,
        };
        let np32 = u32_of("conv partial sums", np)?;
        launch!(self, self.func("s6_conv_bwd_dw_reduce")?, cfg, "conv1d backward dweight sum";
            pp, np32, c, k, dwp, dbp);
        Ok(())
    }
}
