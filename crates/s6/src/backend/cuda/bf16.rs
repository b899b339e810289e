//! [`Compute::Bf16`](crate::backend::Compute::Bf16) products: fp32 in memory, bf16 inputs (round
//! to nearest even, `kernels/bf16.cu`), fp32 accumulation and fp32 outputs.
//!
//! - Weights: each weight buffer gets a bf16 copy on first use (`CudaBuf`'s shadow), re-cast into
//!   the same allocation on the first use after the buffer was written (an optimizer step), so
//!   that CUDA graphs holding its address stay valid.
//! - Activations: cast per product into contiguous bf16 scratch owned by the backend (grow-only;
//!   outgrown allocations live as long as the backend, since a recorded graph may read them). With
//!   [`act_bf16_enabled`] the norm, the conv, the scan and the large-batch scan step write their outputs in
//!   bf16 too, into a copy kept with the buffer (as a weight's), and a product whose whole input
//!   is such a copy, written in the same graph-recording epoch, reads it instead of casting.
//! - `linear` with at most [`GEMV_MAX_ROWS`] rows: `s6_gemv_bf16_r{rows}` (half the weight bytes
//!   of the fp32 kernel; x is rounded to bf16 in registers, no cast launch); more rows, and
//!   `linear_backward`: cuBLAS `GemmEx`, bf16 A and B, fp32 C, `CUBLAS_COMPUTE_32F` (or, opted
//!   into, the tensor-core kernel of `mma.rs` for few columns or a short k, and cuBLASLt with a
//!   tuned algorithm, `lt.rs`, for `linear` of up to 256 rows).
//!
//! While a CUDA graph is being recorded nothing may be allocated: a shadow or scratch slot that
//! would have to be created or grown then is an error (the decoder runs a step eagerly before it
//! records one, which creates them). A stale shadow found while recording is re-cast inside the
//! graph and stays marked stale, so eager calls after the recording cast it again.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::MutexGuard;

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{sys as driver_sys, CudaSlice, DevicePtr, PushKernelArg};

use super::{blas_err, driver_err, grid_1d, ActCopy, Bf16Scratch, Cuda, CudaBuf, Shadow, GEMV_MAX_ROWS};
use crate::backend::{Compute, View};
use crate::{Error, Result};

/// Whether the kernels that write a bf16 product's input (the norm, the conv, the scan, the
/// large-batch scan step) may also write it rounded to bf16, so that the product needs no cast:
/// `S6_ACT_BF16=1` always, `S6_ACT_BF16=0` never, and by default (unset) except while the forward
/// keeps its activations for a backward pass ([`Backend::set_keeping_activations`]: training),
/// since a copy costs 2 bytes per value for as long as its buffer lives (training keeps a scan
/// output per layer). Read once per process; [`set_act_bf16`] forces it for tests and benchmarks.
/// On an H100 the copies made 1.4B prefill 12% faster and decoding no slower (docs/BENCHMARKS.md,
/// session 12).
///
/// [`Backend::set_keeping_activations`]: crate::backend::Backend::set_keeping_activations
pub fn act_bf16_enabled() -> bool {
    act_bf16_mode() != ACT_OFF
}

/// Forces the bf16 activation copies ([`act_bf16_enabled`]) on or off for this process, training
/// included (for tests and benchmarks).
pub fn set_act_bf16(on: bool) {
    ACT_BF16.store(if on { ACT_ON } else { ACT_OFF }, Ordering::Relaxed);
}

/// Undoes [`set_act_bf16`]: the copies follow `S6_ACT_BF16` (or its default) again.
pub fn reset_act_bf16() {
    ACT_BF16.store(UNSET, Ordering::Relaxed);
}

fn act_bf16_mode() -> u8 {
    let v = ACT_BF16.load(Ordering::Relaxed);
    if v != UNSET {
        return v;
    }
    let mode = match std::env::var("S6_ACT_BF16").as_deref().map(str::trim) {
        Ok("1") => ACT_ON,
        Ok("0") => ACT_OFF,
        _ => ACT_AUTO,
    };
    ACT_BF16.store(mode, Ordering::Relaxed);
    mode
}

/// Whether prefill's activations that the model allows bf16 storage
/// ([`Backend::allow_bf16_storage`](crate::backend::Backend::allow_bf16_storage): the norm's,
/// in_proj's, the conv's, Δ, the scan's and out_proj's outputs) are written in bf16 alone where
/// the kernels can: `S6_BF16_STORAGE`, on by default (`0` turns it off). Only with bf16 products
/// and unless the copies are forced off (`S6_ACT_BF16=0`). On an H100, 1.4B prefill of 128 × 2048
/// tokens: 1.842 → 1.716 s (docs/BENCHMARKS.md, run 68).
pub fn bf16_storage_enabled() -> bool {
    BF16_STORAGE.on()
}

/// Turns [`bf16_storage_enabled`] on or off for this process (tests, benchmarks).
pub fn set_bf16_storage(on: bool) {
    BF16_STORAGE.set(on);
}

static BF16_STORAGE: super::Switch = super::Switch::new("S6_BF16_STORAGE", true);

/// The same for a training step (activations kept for the backward): the buffers the model
/// allows bf16 storage there (the norm's and the scan's outputs, the scan backward's dΔ,
/// in_proj's output gradient, the head's gradient) in bf16 alone, and a bf16 copy beside those it
/// allows one ([`Backend::allow_bf16_copy`](crate::backend::Backend::allow_bf16_copy): u, the
/// residual gradient).
/// On by default (`S6_BF16_STORAGE_TRAIN=0` turns it off): 130M training at batch 16 × 2048
/// 179,357 → 198,544 tok/s on an H100 (run 70), with no bit of the loss or of any gradient
/// changed (`bf16_storage_changes_no_bit_of_training`).
pub fn bf16_storage_train_enabled() -> bool {
    BF16_STORAGE_TRAIN.on()
}

/// Turns [`bf16_storage_train_enabled`] on or off for this process (tests, benchmarks).
pub fn set_bf16_storage_train(on: bool) {
    BF16_STORAGE_TRAIN.set(on);
}

static BF16_STORAGE_TRAIN: super::Switch = super::Switch::new("S6_BF16_STORAGE_TRAIN", true);

/// An input of `linear_backward`'s bf16 products (`x` or `dy`): f32 values to cast (device
/// pointer and row stride), or a contiguous bf16 copy that holds them already (a buffer held in
/// bf16 alone, or an activation copy).
#[derive(Clone, Copy)]
pub(super) enum Bf16Input {
    F32(u64, usize),
    Bf16(u64),
}

/// An output's device pointers ([`Cuda::act_out`]): `f32` (null when the values are held in bf16
/// alone) and the bf16 copy, if the kernel is to write one.
pub(super) struct ActOut {
    pub f32: u64,
    pub b16: Option<u64>,
    only16: bool,
}

/// [`act_bf16_enabled`]'s setting: one of the `ACT_*` values, `UNSET` until read.
static ACT_BF16: AtomicU8 = AtomicU8::new(UNSET);
const ACT_OFF: u8 = 0;
const ACT_ON: u8 = 1;
/// On except while activations are kept for a backward pass.
const ACT_AUTO: u8 = 2;
const UNSET: u8 = u8::MAX;

/// Scratch slot of `x` and of `dy` (and `mma.rs`'s `SLOT_SPLITS`).
const SLOT_X: usize = 0;
const SLOT_DY: usize = 1;

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Backend(format!("cuBLAS: {what} = {v} exceeds i32")))
}

impl Cuda {
    /// Whether the stream is being recorded into a CUDA graph.
    pub(super) fn capturing(&self) -> Result<bool> {
        let status = self.stream().capture_status().map_err(driver_err("capture status"))?;
        Ok(status != driver_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    pub(super) fn lock_bf16(&self) -> Result<MutexGuard<'_, Bf16Scratch>> {
        self.inner.bf16.lock().map_err(|_| Error::Backend("CUDA bf16 scratch poisoned".into()))
    }

    /// `dst[r * cols + c] = bf16(src[r * ld + c])` (device pointers, bounds checked by the caller).
    fn cast_bf16(&self, src: u64, ld: usize, rows: usize, cols: usize, dst: u64) -> Result<()> {
        if rows * cols == 0 {
            return Ok(());
        }
        let (ld, r, c) = (ld as u64, rows as u64, cols as u64);
        launch!(self, self.func("s6_cast_bf16")?, grid_1d(rows * cols), "cast to bf16"; src, ld, r, c, dst);
        Ok(())
    }

    /// Device pointer of the bf16 copy of weight `w` (its first `needed` values are bounds
    /// checked), created or re-cast first when missing or stale.
    pub(super) fn weight_bf16(&self, w: &CudaBuf, needed: usize, what: &str) -> Result<u64> {
        let src = self.ptr(w, 0, needed, what)?;
        let mut guard = w.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 weight copy poisoned".into()))?;
        // The capture status is asked only when there is something to create or cast: a valid
        // copy (every product of a decode step, every product between optimizer steps) costs
        // no driver call.
        if guard.is_none() {
            if self.capturing()? {
                return Err(Error::Backend(format!(
                    "CUDA {what}: the bf16 copy of a weight would be allocated while a CUDA graph is recorded; \
                     run the step once outside the graph first"
                )));
            }
            let data = self.stream().alloc_zeros::<u16>(w.len.max(1)).map_err(driver_err("allocation"))?;
            *guard = Some(Shadow { data, valid: false, act: None });
        }
        let Some(shadow) = guard.as_mut() else { unreachable!("created above") };
        let (sp, _s) = shadow.data.device_ptr(self.stream());
        if !shadow.valid || shadow.act.is_some() {
            shadow.act = None;
            self.cast_bf16(src, w.len, 1, w.len, sp)?;
            // Cast inside a graph: done only when the graph is replayed, so still stale for eager
            // calls.
            shadow.valid = !self.capturing()?;
        }
        Ok(sp)
    }

    /// For a kernel about to write `buf` (its f32 pointer already taken with `ptr_mut`, which
    /// marked any copy stale) that can also write the values rounded to bf16: the device pointer
    /// of `buf`'s bf16 copy, created when missing. `None` (the kernel then writes f32 only) unless
    /// the products are bf16 and activation copies are on now ([`act_bf16_enabled`]), or when the copy
    /// would have to be allocated while a graph is recorded.
    pub(super) fn act_bf16_target(&self, buf: &CudaBuf) -> Result<Option<u64>> {
        // In training (activations kept) only for the buffers the model allows a copy there
        // (`Backend::allow_bf16_copy`: not kept, so the copy lives no longer than one buffer).
        let copy_in_training = buf.bf16_copy.load(Ordering::Relaxed) && bf16_storage_train_enabled();
        let on = match act_bf16_mode() {
            ACT_ON => true,
            ACT_OFF => false,
            _ => !self.inner.keeping_activations.load(Ordering::Relaxed) || copy_in_training,
        };
        if self.compute() != Compute::Bf16 || !on || buf.len == 0 {
            return Ok(None);
        }
        if buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?.is_none()
            && self.capturing()?
        {
            return Ok(None);
        }
        self.bf16_copy_ptr(buf).map(Some)
    }

    /// The device pointer of `buf`'s bf16 copy (all `buf.len` values), allocated when missing.
    fn bf16_copy_ptr(&self, buf: &CudaBuf) -> Result<u64> {
        let mut guard = buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?;
        if guard.is_none() {
            let data = self.stream().alloc_zeros::<u16>(buf.len).map_err(driver_err("allocation"))?;
            *guard = Some(Shadow { data, valid: false, act: None });
        }
        let Some(shadow) = guard.as_ref() else { unreachable!("created above") };
        let (p, _s) = shadow.data.device_ptr(self.stream());
        Ok(p)
    }

    /// For a kernel about to write `buf` that can write its values in bf16 alone: the device
    /// pointer of `buf`'s bf16 copy (created when missing) when the model allows the buffer bf16
    /// storage ([`Backend::allow_bf16_storage`](crate::backend::Backend::allow_bf16_storage)),
    /// the products are bf16, [`bf16_storage_enabled`], copies are not forced off
    /// (`S6_ACT_BF16=0`) and no graph is recorded (a recording would have to track which replays
    /// left the f32 values stale); `None` otherwise (the kernel writes f32). Unlike the copies
    /// of [`Cuda::act_bf16_target`] this holds in training too: a buffer held in bf16 alone takes
    /// less memory, not more. The kernel then writes no f32 value and the caller reports it with
    /// [`Cuda::bf16_only_written`].
    pub(super) fn bf16_only_target(&self, buf: &CudaBuf) -> Result<Option<u64>> {
        let switch = match self.inner.keeping_activations.load(Ordering::Relaxed) {
            true => bf16_storage_train_enabled(),
            false => bf16_storage_enabled(),
        };
        let allowed = buf.bf16_storage.load(Ordering::Relaxed) && switch;
        if !allowed || act_bf16_mode() == ACT_OFF || self.compute() != Compute::Bf16 || buf.len == 0 {
            return Ok(None);
        }
        if self.capturing()? {
            return Ok(None);
        }
        self.bf16_copy_ptr(buf).map(Some)
    }

    /// [`Cuda::act_out_alone`] for a kernel that writes only a part of `buf`, `extent` values
    /// from `offset` (a column view: the scan backward's dz and the conv backward's dx, the two
    /// halves of dxz); `b16` points at the part. In bf16 alone the copy must hold the rest: where
    /// the f32 values are current (the first such write), they are cast into it first, so that a
    /// buffer whose parts are all written so is cast once, not per write. Report the launch with
    /// [`Cuda::act_out_written`] over the whole buffer (`buf.len`).
    pub(super) fn act_out_part(&self, buf: &mut CudaBuf, offset: usize, extent: usize, what: &str) -> Result<ActOut> {
        let Some(p) = self.bf16_only_target(buf)? else {
            return Ok(ActOut { f32: self.ptr_mut(buf, offset, extent, what)?, b16: None, only16: false });
        };
        self.ptr_unread(buf, offset, extent, what)?;
        if !(buf.f32_stale.load(Ordering::Relaxed) && self.copy_holds_all(buf)?) {
            // (A copy holding only the first values: those made current in f32 first.)
            self.fresh(buf, what)?;
            let (src, _s) = buf.data.device_ptr(self.stream());
            self.cast_bf16(src, buf.len, 1, buf.len, p)?;
            self.bf16_only_written(buf, buf.len)?;
        }
        Ok(ActOut { f32: 0, b16: Some(p + 2 * offset as u64), only16: true })
    }

    /// After a kernel that got `bf16_only_target(buf)` wrote `buf`'s first `len` values in bf16
    /// alone: the copy holds them, the f32 values are stale until an f32 reader needs them.
    pub(super) fn bf16_only_written(&self, buf: &CudaBuf, len: usize) -> Result<()> {
        self.act_bf16_written(buf, len)?;
        buf.f32_stale.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `buf`'s bf16 copy holds all of its values, written by a kernel in this recording
    /// epoch.
    fn copy_holds_all(&self, buf: &CudaBuf) -> Result<bool> {
        let guard = buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?;
        Ok(guard
            .as_ref()
            .is_some_and(|s| s.valid && s.act.is_some_and(|a| a.epoch == self.shadow_epoch() && a.len >= buf.len)))
    }

    /// [`Backend::release_f32`](crate::backend::Backend::release_f32): frees `buf`'s f32 storage
    /// where its values are held in bf16 alone (a kernel wrote the copy, whole, and nothing
    /// since); a no-op otherwise, and while a CUDA graph is recorded.
    pub(super) fn release_f32_dev(&self, buf: &mut CudaBuf) -> Result<()> {
        if buf.f32_released || !buf.f32_stale.load(Ordering::Relaxed) || buf.len == 0 || self.capturing()? {
            return Ok(());
        }
        if self.copy_holds_all(buf)? {
            // The old allocation is freed in stream order: no kernel before this point reads
            // stale f32 values, and later ones get a new allocation (`restore_f32`).
            buf.data = self.stream().alloc_zeros::<f32>(1).map_err(driver_err("allocation"))?;
            buf.f32_released = true;
        }
        Ok(())
    }

    /// Allocates `buf`'s f32 storage again where [`Cuda::release_f32_dev`] freed it, before a
    /// write (the values stay held by the bf16 copy, and stale in f32, until then).
    pub(super) fn restore_f32(&self, buf: &mut CudaBuf) -> Result<()> {
        if buf.f32_released {
            buf.data = self.stream().alloc_zeros::<f32>(buf.len).map_err(driver_err("allocation"))?;
            buf.f32_released = false;
        }
        Ok(())
    }

    /// `buf`'s device slice for a write of all of it (its f32 storage allocated again if released).
    pub(super) fn writable<'b>(&self, buf: &'b mut CudaBuf) -> Result<&'b mut CudaSlice<f32>> {
        self.restore_f32(buf)?;
        Ok(buf.data_mut())
    }

    /// Makes `buf`'s f32 values current where a kernel wrote only its bf16 copy
    /// ([`Cuda::bf16_only_written`]): casts the copy's values back (rounded to bf16, as the
    /// writer left them). A no-op for every other buffer.
    pub(super) fn fresh(&self, buf: &CudaBuf, what: &str) -> Result<()> {
        if !buf.f32_stale.load(Ordering::Relaxed) {
            return Ok(());
        }
        if buf.f32_released {
            return Err(Error::Backend(format!(
                "CUDA {what}: a buffer held in bf16 alone, its f32 storage released, is read as f32"
            )));
        }
        if self.capturing()? {
            return Err(Error::Backend(format!(
                "CUDA {what}: a buffer held only in bf16 is read as f32 while a CUDA graph is recorded"
            )));
        }
        let guard = buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?;
        let Some((src, len)) = guard.as_ref().and_then(|s| s.act.map(|a| (s.data.device_ptr(self.stream()).0, a.len)))
        else {
            return Err(Error::Backend(format!("CUDA {what}: a buffer held only in bf16 lost its bf16 copy")));
        };
        let (dst, _s) = buf.data.device_ptr(self.stream());
        let n = len as u64;
        launch!(self, self.func("s6_uncast_bf16")?, grid_1d(len), "cast back to f32"; src, n, dst);
        buf.f32_stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The bf16 copy of the view `x` (`rows × cols`) where `x`'s buffer is held in bf16 alone (its
    /// f32 values stale: a reader with a bf16 variant takes this); `None` otherwise, and the reader
    /// takes the f32 values (through `ptr`, which makes them current).
    pub(super) fn held_bf16(&self, x: &View<'_, CudaBuf>, rows: usize, cols: usize) -> Result<Option<u64>> {
        if !x.buf.f32_stale.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.act_bf16_view(x, rows, cols)
    }

    /// Where a kernel that can also write its output in bf16 writes `buf`'s first `len` values:
    /// with `bf16_ok` (the kernel has the bf16 variant), in bf16 alone where the buffer may be
    /// held so ([`Cuda::bf16_only_target`]; `f32` is then null), else in f32 plus the bf16 copy
    /// for the next product where copies are on ([`Cuda::act_bf16_target`]); without it, f32
    /// alone. Report the launch with [`Cuda::act_out_written`].
    pub(super) fn act_out(&self, buf: &mut CudaBuf, len: usize, bf16_ok: bool, what: &str) -> Result<ActOut> {
        self.act_out_with(buf, len, bf16_ok, bf16_ok, what)
    }

    /// [`Cuda::act_out`] for a kernel that writes one output, f32 or bf16 (the cross-entropy's
    /// gradient, the scan backward's dΔ): in bf16 alone where the buffer may be held so, else
    /// in f32 with no copy (`b16` is then `None`).
    pub(super) fn act_out_alone(&self, buf: &mut CudaBuf, len: usize, what: &str) -> Result<ActOut> {
        self.act_out_with(buf, len, true, false, what)
    }

    fn act_out_with(&self, buf: &mut CudaBuf, len: usize, alone_ok: bool, copy_ok: bool, what: &str) -> Result<ActOut> {
        let only16 = if alone_ok { self.bf16_only_target(buf)? } else { None };
        if let Some(p) = only16 {
            self.ptr_unread(buf, 0, len, what)?;
            return Ok(ActOut { f32: 0, b16: Some(p), only16: true });
        }
        let f32 = self.ptr_mut(buf, 0, len, what)?;
        let b16 = if copy_ok { self.act_bf16_target(buf)? } else { None };
        Ok(ActOut { f32, b16, only16: false })
    }

    /// After the kernel given `out` (from [`Cuda::act_out`]) wrote `buf`'s first `len` values.
    pub(super) fn act_out_written(&self, buf: &CudaBuf, out: &ActOut, len: usize) -> Result<()> {
        match (out.only16, out.b16) {
            (true, _) => self.bf16_only_written(buf, len),
            (false, Some(_)) => self.act_bf16_written(buf, len),
            (false, None) => Ok(()),
        }
    }

    /// The bf16 copy of the view `x` (`rows × cols`, row stride `x.ld`) at the view's offset, when
    /// one written in this epoch covers it; else `None` (the reader takes the f32 values).
    pub(super) fn act_bf16_view(&self, x: &View<'_, CudaBuf>, rows: usize, cols: usize) -> Result<Option<u64>> {
        if rows * cols == 0 {
            return Ok(None);
        }
        let guard = x.buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?;
        let Some(shadow) = guard.as_ref() else { return Ok(None) };
        let covers = match shadow.act {
            Some(a) => a.epoch == self.shadow_epoch() && a.len >= x.offset + Self::view_extent(x.ld, rows, cols),
            None => false,
        };
        if !shadow.valid || !covers {
            return Ok(None);
        }
        let (p, _s) = shadow.data.device_ptr(self.stream());
        Ok(Some(p + 2 * x.offset as u64))
    }

    /// After a kernel that got `act_bf16_target(buf)` was launched: the copy holds `buf`'s first
    /// `len` values rounded, for products issued in this recording epoch.
    pub(super) fn act_bf16_written(&self, buf: &CudaBuf, len: usize) -> Result<()> {
        let mut guard = buf.shadow.lock().map_err(|_| Error::Backend("CUDA bf16 copy poisoned".into()))?;
        if let Some(shadow) = guard.as_mut() {
            shadow.valid = true;
            shadow.act = Some(ActCopy { epoch: self.shadow_epoch(), len });
        }
        Ok(())
    }

    /// The bf16 copy of the product input `x` (`rows × k`), when one written for this epoch
    /// covers it whole and contiguous; else `None` (the product casts `x`).
    pub(super) fn act_bf16_source(&self, x: &View<'_, CudaBuf>, rows: usize, k: usize) -> Result<Option<u64>> {
        if !act_bf16_enabled() || x.offset != 0 || x.ld != k {
            return Ok(None);
        }
        self.act_bf16_view(x, rows, k)
    }

    /// The current graph-recording epoch (`Inner::shadow_epoch`).
    fn shadow_epoch(&self) -> u64 {
        self.inner.shadow_epoch.load(Ordering::Relaxed)
    }

    /// A recording begins or ends: activation copies written before serve no product after.
    pub(super) fn next_shadow_epoch(&self) {
        self.inner.shadow_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Casts `rows × cols` of `x` (row stride `ld`, device pointer bounds checked by the caller)
    /// into scratch slot `slot` as a contiguous bf16 matrix; returns its device pointer.
    fn cast_to_scratch(
        &self,
        scratch: &mut Bf16Scratch,
        slot: usize,
        x: u64,
        ld: usize,
        rows: usize,
        cols: usize,
    ) -> Result<u64> {
        let p = self.scratch_slot(scratch, slot, rows * cols)?;
        self.cast_bf16(x, ld, rows, cols, p)?;
        Ok(p)
    }

    /// The device pointer of scratch slot `slot`, grown first to hold at least `elems` 16-bit
    /// values (an error while a CUDA graph is recorded).
    pub(super) fn scratch_slot(&self, scratch: &mut Bf16Scratch, slot: usize, elems: usize) -> Result<u64> {
        let have = scratch.slots[slot].as_ref().map_or(0, |s| s.len());
        if have < elems {
            if self.capturing()? {
                return Err(Error::Backend(
                    "CUDA bf16 product: its activation scratch would grow while a CUDA graph is recorded; \
                     run the step once outside the graph first"
                        .into(),
                ));
            }
            let size = elems.max(have + have / 2);
            let fresh = self.stream().alloc_zeros::<u16>(size).map_err(driver_err("allocation"))?;
            if let Some(old) = scratch.slots[slot].replace(fresh) {
                scratch.retired.push(old);
            }
        }
        let Some(buf) = scratch.slots[slot].as_ref() else { unreachable!("allocated above") };
        let (p, _s) = buf.device_ptr(self.stream());
        Ok(p)
    }

    /// `C = A·B + beta·C` in cuBLAS's column-major terms with bf16 `A` and `B`, fp32 `C`, fp32
    /// accumulation. Pointers must be valid for the shapes and strides given.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_bf16(
        &self,
        ta: blas_sys::cublasOperation_t,
        tb: blas_sys::cublasOperation_t,
        (m, n, k): (usize, usize, usize),
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        ldc: usize,
    ) -> Result<()> {
        self.gemm_bf16_into(ta, tb, (m, n, k), a, lda, b, ldb, beta, (c, false), ldc)
    }

    /// [`Cuda::gemm_bf16`] with `C` in bf16 when `c16` (rounded from the fp32 accumulators).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_bf16_into(
        &self,
        ta: blas_sys::cublasOperation_t,
        tb: blas_sys::cublasOperation_t,
        (m, n, k): (usize, usize, usize),
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        (c, c16): (u64, bool),
        ldc: usize,
    ) -> Result<()> {
        self.inner.ctx.bind_to_thread().map_err(driver_err("bind"))?;
        let alpha = 1.0f32;
        use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
        blas_result::gemm_ex(
            *self.inner.blas.handle(),
            ta,
            tb,
            int("m", m)?,
            int("n", n)?,
            int("k", k)?,
            (&alpha as *const f32).cast::<c_void>(),
            a as *const c_void,
            CUDA_R_16BF,
            int("lda", lda)?,
            b as *const c_void,
            CUDA_R_16BF,
            int("ldb", ldb)?,
            (&beta as *const f32).cast::<c_void>(),
            c as *mut c_void,
            if c16 { CUDA_R_16BF } else { CUDA_R_32F },
            int("ldc", ldc)?,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err)
    }

    /// `linear` under `Compute::Bf16` (`rows, k, n > 0`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_bf16(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        bias: Option<&CudaBuf>,
        out: &mut CudaBuf,
        gemv: bool,
    ) -> Result<()> {
        debug_assert!(rows > 0 && k > 0 && n > 0);
        // x's address only: its f32 values are made current below where a path reads them (a
        // bf16 copy may hold them alone).
        let xp = self.ptr_unread(x.buf, x.offset, Self::view_extent(x.ld, rows, k), "linear x")?;
        let bp = self.ptr_opt(bias, n, "linear bias")?;
        let wp = self.weight_bf16(w, n * k, "linear weight")?;
        if gemv && rows <= GEMV_MAX_ROWS {
            // x stays f32 and is rounded in registers.
            self.fresh(x.buf, "linear x")?;
            let o = self.ptr_mut(out, 0, rows * n, "linear out")?;
            return self.launch_gemv(1, (xp, x.ld), wp, (rows, k, n), bp, o, super::GemvMode::Write);
        }
        let mut scratch = self.lock_bf16()?;
        if self.mma_covers((xp, x.ld), wp, (rows, k, n)) {
            // Few columns or a short k at a few hundred rows: the tensor-core kernel (mma.rs).
            self.fresh(x.buf, "linear x")?;
            let o = self.ptr_mut(out, 0, rows * n, "linear out")?;
            let beta = self.bias_beta(o, bp, rows, n)?;
            return self.linear_mma(&mut scratch, (xp, x.ld), wp, (rows, k, n), (o, n), beta != 0.0);
        }
        let xs = match self.act_bf16_source(&x, rows, k)? {
            Some(p) => p,
            None => {
                self.fresh(x.buf, "linear x")?;
                self.cast_to_scratch(&mut scratch, SLOT_X, xp, x.ld, rows, k)?
            }
        };
        let lt = rows <= super::lt::LT_MAX_ROWS && super::lt::lt_enabled();
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        // Without a bias and cuBLASLt, the product may be written in bf16 alone (bf16.rs).
        if let (None, false, Some(o16)) = (bias, lt, self.bf16_only_target(out)?) {
            self.ptr_unread(out, 0, rows * n, "linear out")?;
            // SAFETY: as below; the copy holds out.len ≥ rows·n values.
            unsafe {
                self.gemm_bf16_into(CUBLAS_OP_T, CUBLAS_OP_N, (n, rows, k), wp, k, xs, k, 0.0, (o16, true), n)?;
            }
            return self.bf16_only_written(out, rows * n);
        }
        let o = self.ptr_mut(out, 0, rows * n, "linear out")?;
        let beta = self.bias_beta(o, bp, rows, n)?;
        // Column-major: outᵀ [n × rows] = W (col-major k × n, op T) · xᵀ (k × rows, ld k).
        // SAFETY: the weight copy holds w.len ≥ n·k values, the scratch rows·k, out rows·n.
        unsafe {
            // Few rows (decoding), opted into: cuBLASLt with a tuned algorithm (lt.rs).
            if lt {
                let s = super::lt::LtShape { ta: true, tb: false, m: n, n: rows, k, lda: k, ldb: k, ldc: n };
                if self.gemm_bf16_lt(s, wp, xs, beta, o)? {
                    return Ok(());
                }
            }
            self.gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, (n, rows, k), wp, k, xs, k, beta, o, n)
        }
    }

    /// The products of `linear_backward` under `Compute::Bf16` (`rows, k, n > 0`; pointers bounds
    /// checked by the caller): `dx = dy·W` (written through its row stride) when asked, and
    /// `dW += dyᵀ·x`, both with bf16 inputs and fp32 accumulation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_backward_bf16(
        &self,
        x: Bf16Input,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        dy: Bf16Input,
        dx: Option<(u64, usize, bool)>,
        dwp: u64,
    ) -> Result<()> {
        let mut scratch = self.lock_bf16()?;
        let dys = match dy {
            Bf16Input::F32(p, ld) => self.cast_to_scratch(&mut scratch, SLOT_DY, p, ld, rows, n)?,
            Bf16Input::Bf16(p) => p,
        };
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        if let Some((p, ld, add)) = dx {
            let wp = self.weight_bf16(w, n * k, "linear_backward weight")?;
            // dxᵀ [k × rows] = W (col-major k × n, ld k) · dyᵀ (n × rows, ld n) (+ dxᵀ with `add`).
            // SAFETY: shapes as bounds checked by the caller; scratch and copy sized above.
            let beta = if add { 1.0 } else { 0.0 };
            unsafe { self.gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, (k, rows, n), wp, k, dys, n, beta, p, ld.max(k))? };
        }
        let xs = match x {
            Bf16Input::F32(p, ld) => self.cast_to_scratch(&mut scratch, SLOT_X, p, ld, rows, k)?,
            Bf16Input::Bf16(p) => p,
        };
        // dWᵀ [k × n] += xᵀ (k × rows, ld k) · dy (op T of dyᵀ, n × rows, ld n).
        // SAFETY: as above.
        unsafe { self.gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, (k, n, rows), xs, k, dys, n, 1.0, dwp, k) }
    }
}
