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
//! [`Backend::block_step`]: crate::backend::Backend::block_step

use cudarc::driver::{LaunchConfig, PushKernelArg};

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
        let (d, di, n, k, r) = (a.d_model, m.d_inner, m.d_state, m.d_conv, m.dt_rank);
        let width = r + 2 * n;
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
        let iw = 2 * di;
        let res = self.ptr_mut(o.residual, 0, d, "layer step residual")?;
        let norm = self.ptr(a.norm, 0, d, "layer step norm weight")?;
        let w_in = self.weight_bf16(a.in_proj, iw * d, "layer step in_proj")?;
        let b_in = self.ptr_opt(a.in_proj_bias, iw, "layer step in_proj bias")?;
        let cw = self.ptr(m.conv_weight, 0, di * k, "layer step conv weight")?;
        let cb = self.ptr_opt(m.conv_bias, di, "layer step conv bias")?;
        let conv = self.ptr_mut(o.mixer.conv_state, 0, (k - 1) * di, "layer step conv state")?;
        let w_x = self.weight_bf16(m.x_proj, width * di, "layer step x_proj")?;
        let dtw = self.ptr(m.dt_proj, 0, di * r, "layer step dt_proj")?;
        let dtb = self.ptr(m.dt_bias, 0, di, "layer step dt bias")?;
        let ap = self.ptr(m.a, 0, di * n, "layer step A")?;
        let dp = self.ptr(m.d, 0, di, "layer step D")?;
        let ssm = self.ptr_mut(o.mixer.ssm_state, 0, di * n, "layer step ssm state")?;
        let w_out = self.weight_bf16(a.out_proj, d * di, "layer step out_proj")?;
        let b_out = self.ptr_opt(a.out_proj_bias, d, "layer step out_proj bias")?;
        let xz = self.ptr_mut(o.xz, 0, iw, "layer step xz")?;
        let up = self.ptr_mut(o.mixer.u, 0, di, "layer step u")?;
        let xdbl = self.ptr_mut(o.mixer.xdbl, 0, width, "layer step xdbl")?;
        let delta = self.ptr_mut(o.mixer.delta, 0, di, "layer step delta")?;
        let y = self.ptr_mut(o.mixer.y, 0, di, "layer step y")?;
        let bar = self.grid_barrier_ptr();
        let (dd, ddi, kk, rr, nn) = (
            u32_of("d_model", d)?,
            u32_of("d_inner", di)?,
            u32_of("d_conv", k)?,
            u32_of("dt_rank", r)?,
            u32_of("d_state", n)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (u32_of("blocks", blocks)?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: u32_of("shared", shared)?,
        };
        let eps = a.eps;
        launch!(self, func, cfg, "layer step";
            res, norm, eps, w_in, b_in, cw, cb, conv, w_x, dtw, dtb, ap, dp, ssm, w_out, b_out,
            xz, up, xdbl, delta, y, bar, dd, ddi, kk, rr, nn);
        Ok(true)
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
