//! A Mamba block's whole decoding step for one sequence in one kernel (`kernels/layer_step.cu`):
//! [`Backend::block_step`] at batch 1 with bf16 products, as one persistent grid whose four
//! phases (RMSNorm + in_proj + conv, x_proj, the scan step, out_proj + residual) meet at grid
//! barriers instead of kernel boundaries, each loading its weights before the barrier ahead of it.
//! At batch 1 decoding is a chain of small dependent kernels, each mostly start and drain
//! (docs/BENCHMARKS.md: ~13 µs per block at 130M on an H100 for 2.5 µs of weight reads); this
//! replaces four of them per block by one.
//!
//! The grid barrier needs every block resident at once. The grid is one block per SM (see
//! `blocks_per_sm`), and the kernel is used only where the occupancy calculator says a block fits
//! an SM (at most 128 registers and ~17 KB of shared memory for mamba-1.4b: a second block fits
//! beside it, which is where PDL starts the next kernel). Only one backend per device and process
//! launches it (`LayerStepClaim`, see [`Cuda::owns_layer_step`]); under MPS, processes sharing a
//! device could still hold each other's SMs. The barrier's counter pair lives in the backend
//! (`Inner::grid_barrier`) and is left ready for the next launch by every launch.
//!
//! It applies at batch 1 with `Compute::Bf16`, `d_model` and `d_inner` multiples of 8 and
//! `d_state` ≤ 64. Off by default: measured slower than the four kernels on an H100 (run 70: 130M
//! 2,165 against 2,980 tok/s, 1.4B 466 against 622; docs/BENCHMARKS.md, session 20: with one
//! block of 8 warps per SM its phases reach a third of the bandwidth, and its warps spend ~40% of
//! their cycles waiting at the barriers). `S6_LAYER_STEP=1` or [`set_layer_step`] turns it on
//! (else the four-kernel block step runs).
//!
//! **The same step in one thread-block cluster** (`S6_CLUSTER_STEP=8|16` or
//! [`set_cluster_step`]; off until measured): the grid is one cluster of 8 or 16 blocks of 512
//! threads (compute capability 9.0 and newer; 16 is a non-portable size, allowed per kernel
//! before its launch). Each block owns d_inner / 8 (or / 16) channels: in_proj's rows, the conv
//! and the scan step of its channels, and their columns of x_proj and out_proj, whose partial sums
//! the cluster adds through distributed shared memory after a cluster barrier; the last phase's
//! sums go straight into the residual, each block a share of it. No grid barrier, no claim on the
//! device (a cluster is scheduled whole or not at all). The layer's weights are read once, by 8 or
//! 16 SMs: whether that is fast enough is what `scripts/gpu/cluster_probe.cu` and run 98 measure
//! (docs/BENCHMARKS.md, session 25).
//!
//! [`Backend::block_step`]: crate::backend::Backend::block_step

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::{driver_err, u32_of, Compute, Cuda, CudaBuf, Switch};
use crate::backend::{BlockStepArgs, BlockStepOut};
use crate::Result;

/// Threads per block (`S6_LS_THREADS`).
const THREADS: u32 = 256;
/// In_proj rows of up to this many 16-byte vectors take the narrow entry (`s6_layer_step_b1`:
/// 4 rows per warp task, all loaded before the PDL wait), longer ones `s6_layer_step_b1_wide`.
const NARROW_MAX_VECTORS: usize = 128;
/// Dynamic shared memory the kernel may use without opting in (bytes).
const MAX_SHARED: usize = 48 << 10;

static LAYER_STEP: Switch = Switch::new("S6_LAYER_STEP", false);

/// Threads per block of the cluster step (its kernels' launch bounds).
const CLUSTER_THREADS: u32 = 512;

/// The blocks of the cluster step's one cluster (0: off); unset until first read.
static CLUSTER_STEP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The blocks of the cluster step's one cluster: 8 or 16, or 0 (the default until measured) for
/// off. `S6_CLUSTER_STEP=8|16` sets it per process (read once), [`set_cluster_step`] in code.
pub fn cluster_step_size() -> usize {
    match CLUSTER_STEP.load(Ordering::Relaxed) {
        usize::MAX => {
            let blocks = match super::forced_by_env("S6_CLUSTER_STEP", ["0", "8", "16"]) {
                Some(1) => 8,
                Some(2) => 16,
                _ => 0,
            };
            set_cluster_step(blocks);
            blocks
        }
        blocks => blocks,
    }
}

/// Runs the block step at batch 1 in one cluster of `blocks` blocks (8 or 16; anything else
/// turns it off) for this process.
pub fn set_cluster_step(blocks: usize) {
    CLUSTER_STEP.store(if blocks == 8 || blocks == 16 { blocks } else { 0 }, Ordering::Relaxed);
}

/// The arguments both layer-step kernels take (`S6_LS_PARAMS` but the grid barrier), as device
/// pointers and sizes: `dims` = [d_model, d_inner, d_conv, dt_rank, d_state].
struct LayerStepPtrs {
    res: u64,
    norm: u64,
    eps: f32,
    w_in: u64,
    b_in: u64,
    cw: u64,
    cb: u64,
    conv: u64,
    w_x: u64,
    dtw: u64,
    dtb: u64,
    ap: u64,
    dp: u64,
    ssm: u64,
    w_out: u64,
    b_out: u64,
    xz: u64,
    up: u64,
    xdbl: u64,
    delta: u64,
    y: u64,
    dims: [u32; 5],
}

/// The devices (ordinals) on which a backend of this process has claimed the layer step.
static CLAIMED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// The right of one backend (one stream) per device and process to launch the layer step. Its
/// grid spins at barriers holding half of every SM's registers; two such grids on two streams
/// still fit the device beside each other, but three could each hold part of the device and wait
/// for the rest, forever. So only the first backend of a device to launch it may (it claims the
/// device at its first launch); others run the four-kernel step. Released when that backend is
/// dropped.
pub(super) struct LayerStepClaim(usize);

impl LayerStepClaim {
    /// The claim for device `ordinal`, if no live backend of this process holds it.
    pub(super) fn take(ordinal: usize) -> Option<Self> {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if claimed.contains(&ordinal) {
            return None;
        }
        claimed.push(ordinal);
        Some(LayerStepClaim(ordinal))
    }
}

impl Drop for LayerStepClaim {
    fn drop(&mut self) {
        CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).retain(|&o| o != self.0);
    }
}

/// Blocks per SM of the grid: 1 by default (a second block fits an SM, and there PDL starts the
/// next kernel early); `S6_LAYER_STEP_BLOCKS_PER_SM=2` fills both slots, for measurements (capped
/// by the occupancy).
fn blocks_per_sm() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("S6_LAYER_STEP_BLOCKS_PER_SM")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(1)
    })
}

/// Whether the one-kernel block step is on (see the module documentation).
pub fn layer_step_enabled() -> bool {
    LAYER_STEP.on()
}

/// Turns the one-kernel block step on or off for this process.
pub fn set_layer_step(on: bool) {
    LAYER_STEP.set(on);
}

impl Cuda {
    /// Whether this backend launches the layer step on its device: claims the device for it if
    /// no other live backend of this process has (`LayerStepClaim`); decided once per backend.
    pub fn owns_layer_step(&self) -> bool {
        self.inner.layer_step_claim.get_or_init(|| LayerStepClaim::take(self.ordinal())).is_some()
    }

    /// The block step as one kernel, if it applies (batch 1, bf16 products, the sizes it takes, a
    /// block per SM resident): `Ok(false)` leaves the step to the caller, `block_step_dev`
    /// (mixer_step.rs), which has checked the sizes every fused step needs (d_state, d_conv,
    /// nonzero sizes).
    pub(super) fn layer_step_dev(
        &self,
        a: &BlockStepArgs<'_, CudaBuf>,
        o: &mut BlockStepOut<'_, CudaBuf>,
    ) -> Result<bool> {
        let m = &a.mixer;
        let (d, di, width) = (a.d_model, m.d_inner, m.dt_rank + 2 * m.d_state);
        let shared = 4 * (d.max(di).max(width) + 32);
        if !layer_step_enabled()
            || m.batch != 1
            || self.compute() != Compute::Bf16
            || d % 8 != 0
            || di % 8 != 0
            || shared > MAX_SHARED
        {
            return Ok(false);
        }
        if !self.owns_layer_step() {
            return Ok(false);
        }
        let wide = usize::from(d / 8 > NARROW_MAX_VECTORS);
        let name = ["s6_layer_step_b1", "s6_layer_step_b1_wide"][wide];
        let func = self.func(name)?;
        // Blocks of this kernel an SM holds at the largest shared memory it is launched with (so
        // also at less), asked once per entry.
        let per_sm = match self.inner.layer_step_per_sm[wide].get() {
            Some(&n) => n,
            None => {
                self.inner.ctx.bind_to_thread().map_err(driver_err("layer step occupancy"))?;
                let n = func
                    .occupancy_max_active_blocks_per_multiprocessor(THREADS, MAX_SHARED, None)
                    .map_err(driver_err("layer step occupancy"))?;
                *self.inner.layer_step_per_sm[wide].get_or_init(|| n)
            }
        };
        if per_sm == 0 {
            return Ok(false);
        }
        let blocks = self.inner.sm_count * blocks_per_sm().min(per_sm as usize);
        let p = self.layer_step_ptrs(a, o)?;
        let cfg = LaunchConfig {
            grid_dim: (u32_of("blocks", blocks)?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: u32_of("shared", shared)?,
        };
        let bar = self.grid_barrier_ptr();
        self.launch_layer_step(func, cfg, &p, bar, "layer step")?;
        Ok(true)
    }

    /// The block step in one thread-block cluster, if it applies (`S6_CLUSTER_STEP=8|16`, batch
    /// 1, bf16 products, clusters on the device, the sizes it takes): `Ok(false)` leaves the step
    /// to the caller, as [`Cuda::layer_step_dev`].
    pub(super) fn cluster_step_dev(
        &self,
        a: &BlockStepArgs<'_, CudaBuf>,
        o: &mut BlockStepOut<'_, CudaBuf>,
    ) -> Result<bool> {
        let m = &a.mixer;
        let (d, di) = (a.d_model, m.d_inner);
        let Some((cluster, shared)) = self.cluster_step_shape(m.batch, d, di, m.dt_rank + 2 * m.d_state) else {
            return Ok(false);
        };
        let wide = d / 8 > NARROW_MAX_VECTORS;
        let name = match (cluster, wide) {
            (8, false) => "s6_layer_step_cluster_b1_c8",
            (8, true) => "s6_layer_step_cluster_b1_c8_wide",
            (_, false) => "s6_layer_step_cluster_b1_c16",
            (_, true) => "s6_layer_step_cluster_b1_c16_wide",
        };
        let func = self.func(name)?;
        // Set outside graph recording (the decoder runs a step eagerly before it records one);
        // the attribute stays with the function.
        if cluster > 8 && !self.capturing()? {
            use cudarc::driver::sys::CUfunction_attribute;
            self.inner.ctx.bind_to_thread().map_err(driver_err("cluster step"))?;
            func.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
                .map_err(driver_err("cluster step: clusters of 16 blocks"))?;
        }
        let p = self.layer_step_ptrs(a, o)?;
        let cfg = LaunchConfig {
            grid_dim: (u32_of("blocks", cluster)?, 1, 1),
            block_dim: (CLUSTER_THREADS, 1, 1),
            shared_mem_bytes: u32_of("shared", shared)?,
        };
        // The kernel does not use the grid barrier: a null pointer.
        self.launch_layer_step(func, cfg, &p, 0, "cluster layer step")?;
        Ok(true)
    }

    /// Whether the cluster step runs a block step of these sizes (it is switched on, one
    /// sequence, bf16 products, clusters on the device, d_model and d_inner multiples of 8, its
    /// shared memory within the default limit), with what it needs to run it: (blocks of the
    /// cluster, bytes of dynamic shared memory). The block step also needs what
    /// `block_step_dev` checks (d_state up to 64, d_conv up to 16).
    fn cluster_step_shape(&self, batch: usize, d: usize, di: usize, width: usize) -> Option<(usize, usize)> {
        let cluster = cluster_step_size();
        let per_block = di.div_ceil(cluster.max(1)).div_ceil(8) * 8;
        let shared = 4 * (d.max(8) + 32 + 2 * per_block + 2 * width + d);
        let covered = cluster > 0
            && batch == 1
            && self.inner.clusters
            && self.compute() == Compute::Bf16
            && d.is_multiple_of(8)
            && di.is_multiple_of(8)
            && shared <= MAX_SHARED;
        covered.then_some((cluster, shared))
    }

    /// Whether, as switched now, a batch-1 block step of these sizes runs in one cluster
    /// ([`cluster_step_size`]): for tests and benchmarks to tell which kernel ran.
    pub fn cluster_step_covers(&self, d_model: usize, d_inner: usize, dt_rank: usize, d_state: usize) -> bool {
        self.cluster_step_shape(1, d_model, d_inner, dt_rank + 2 * d_state).is_some()
    }

    /// The device pointers both layer-step kernels take, bounds checked.
    fn layer_step_ptrs(
        &self,
        a: &BlockStepArgs<'_, CudaBuf>,
        o: &mut BlockStepOut<'_, CudaBuf>,
    ) -> Result<LayerStepPtrs> {
        let m = &a.mixer;
        let (d, di, n, k, r) = (a.d_model, m.d_inner, m.d_state, m.d_conv, m.dt_rank);
        let (width, iw) = (r + 2 * n, 2 * di);
        Ok(LayerStepPtrs {
            res: self.ptr_mut(o.residual, 0, d, "layer step residual")?,
            norm: self.ptr(a.norm, 0, d, "layer step norm weight")?,
            eps: a.eps,
            w_in: self.weight_bf16(a.in_proj, iw * d, "layer step in_proj")?,
            b_in: self.ptr_opt(a.in_proj_bias, iw, "layer step in_proj bias")?,
            cw: self.ptr(m.conv_weight, 0, di * k, "layer step conv weight")?,
            cb: self.ptr_opt(m.conv_bias, di, "layer step conv bias")?,
            conv: self.ptr_mut(o.mixer.conv_state, 0, (k - 1) * di, "layer step conv state")?,
            w_x: self.weight_bf16(m.x_proj, width * di, "layer step x_proj")?,
            dtw: self.ptr(m.dt_proj, 0, di * r, "layer step dt_proj")?,
            dtb: self.ptr(m.dt_bias, 0, di, "layer step dt bias")?,
            ap: self.ptr(m.a, 0, di * n, "layer step A")?,
            dp: self.ptr(m.d, 0, di, "layer step D")?,
            ssm: self.ptr_mut(o.mixer.ssm_state, 0, di * n, "layer step ssm state")?,
            w_out: self.weight_bf16(a.out_proj, d * di, "layer step out_proj")?,
            b_out: self.ptr_opt(a.out_proj_bias, d, "layer step out_proj bias")?,
            xz: self.ptr_mut(o.xz, 0, iw, "layer step xz")?,
            up: self.ptr_mut(o.mixer.u, 0, di, "layer step u")?,
            xdbl: self.ptr_mut(o.mixer.xdbl, 0, width, "layer step xdbl")?,
            delta: self.ptr_mut(o.mixer.delta, 0, di, "layer step delta")?,
            y: self.ptr_mut(o.mixer.y, 0, di, "layer step y")?,
            dims: [
                u32_of("d_model", d)?,
                u32_of("d_inner", di)?,
                u32_of("d_conv", k)?,
                u32_of("dt_rank", r)?,
                u32_of("d_state", n)?,
            ],
        })
    }

    /// Launches a layer-step kernel (`S6_LS_PARAMS`) with the grid barrier at `bar`.
    fn launch_layer_step(
        &self,
        func: &CudaFunction,
        cfg: LaunchConfig,
        p: &LayerStepPtrs,
        bar: u64,
        what: &str,
    ) -> Result<()> {
        let [dd, ddi, kk, rr, nn] = p.dims;
        launch!(self, func, cfg, what;
            p.res, p.norm, p.eps, p.w_in, p.b_in, p.cw, p.cb, p.conv, p.w_x, p.dtw, p.dtb, p.ap, p.dp, p.ssm,
            p.w_out, p.b_out, p.xz, p.up, p.xdbl, p.delta, p.y, bar, dd, ddi, kk, rr, nn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LayerStepClaim;

    #[test]
    fn one_claim_per_device_until_dropped() {
        // Ordinals no real device has, so that no backend of a parallel test holds them.
        let (a, b) = (1_000_001, 1_000_002);
        let first = LayerStepClaim::take(a).expect("a free device is claimed");
        assert!(LayerStepClaim::take(a).is_none(), "a second claim on the same device");
        let other = LayerStepClaim::take(b).expect("another device is claimed on its own");
        drop(first);
        assert!(LayerStepClaim::take(a).is_some(), "a dropped claim frees its device");
        drop(other);
    }
}
