//! The selective scan with bf16 activations, for callers that hold their activations in bf16 (as
//! the official kernels' bf16 path does): `u`, `Δ`, `z`, `B`, `C` read as bf16 and `y` written as
//! bf16, while the state, `A`, `D`, the `Δ` bias and every operation stay fp32
//! (`kernels/bf16.cu`, `s6_scan_n16_bf16_*`, the vector scan of `kernels/scan.cu` instantiated for
//! bf16). d_state 16 only. The model itself keeps fp32 activations and uses
//! [`Backend::selective_scan`](crate::backend::Backend::selective_scan); `s6 bench scan --device
//! cuda --dtype bf16` times this one.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{driver_err, u32_of, Cuda, CudaBuf, ScanN16};
use crate::backend::{bf16_round, ScanArgs, ScanDims, View};
use crate::{Error, Result};

/// A device tensor of bf16 values (bit patterns: the upper 16 bits of an f32).
pub struct Bf16Tensor {
    data: CudaSlice<u16>,
    len: usize,
}

impl Bf16Tensor {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Inputs of [`Cuda::selective_scan_bf16`]: as [`ScanArgs`] with the
/// activations in bf16 and contiguous: `u`, `delta`, `z` `[batch·seqlen, d_inner]`, `b`, `c`
/// `[batch·seqlen, d_state]`; `delta_bias`, `d` `[d_inner]` and `a` `[d_inner, d_state]` in fp32.
pub struct ScanBf16Args<'a> {
    pub dims: ScanDims,
    pub u: &'a Bf16Tensor,
    pub delta: &'a Bf16Tensor,
    pub delta_bias: &'a CudaBuf,
    pub a: &'a CudaBuf,
    pub b: &'a Bf16Tensor,
    pub c: &'a Bf16Tensor,
    pub d: &'a CudaBuf,
    pub z: Option<&'a Bf16Tensor>,
}

/// The arguments of the d_state-16 vector scan entries (`kernels/scan.cu`, `S6_SCAN_VEC_PARAMS`):
/// device pointers, and the row strides of B, C and z in elements.
#[derive(Clone, Copy)]
struct N16Pointers {
    u: u64,
    dl: u64,
    db: u64,
    a: u64,
    bm: u64,
    ldb: usize,
    cm: u64,
    ldc: usize,
    d: u64,
    zp: u64,
    ldz: usize,
    sp: u64,
    yp: u64,
}

impl Cuda {
    /// Uploads `values` rounded to bf16 (nearest even).
    pub fn bf16_tensor(&self, values: &[f32]) -> Result<Bf16Tensor> {
        if values.is_empty() {
            return self.bf16_zeros(0);
        }
        let bits: Vec<u16> = values.iter().map(|&v| (bf16_round(v).to_bits() >> 16) as u16).collect();
        let data = self.stream().clone_htod(&bits).map_err(driver_err("upload"))?;
        Ok(Bf16Tensor { data, len: values.len() })
    }

    /// `len` zeros.
    pub fn bf16_zeros(&self, len: usize) -> Result<Bf16Tensor> {
        let data = self.stream().alloc_zeros::<u16>(len.max(1)).map_err(driver_err("allocation"))?;
        Ok(Bf16Tensor { data, len })
    }

    /// Downloads a bf16 tensor as f32 values (exact).
    pub fn bf16_to_vec(&self, t: &Bf16Tensor) -> Result<Vec<f32>> {
        if t.len == 0 {
            return Ok(Vec::new());
        }
        let bits = self.stream().clone_dtoh(&t.data).map_err(driver_err("download"))?;
        self.synchronize()?;
        Ok(bits[..t.len].iter().map(|&b| f32::from_bits(u32::from(b) << 16)).collect())
    }

    fn bf16_ptr(&self, t: &Bf16Tensor, needed: usize, what: &str) -> Result<u64> {
        if needed > t.len {
            return Err(Error::Backend(format!("CUDA {what}: bf16 tensor of {} values, {needed} needed", t.len)));
        }
        let (p, _sync) = t.data.device_ptr(self.stream());
        Ok(p)
    }

    /// The selective scan (as [`Backend::selective_scan`](crate::backend::Backend::selective_scan):
    /// Δ = softplus(delta + delta_bias), h_t = exp(Δ·A) h_{t-1} + Δ·B_t·u_t,
    /// y_t = (C_t·h_t + D·u_t)·silu(z_t)) with bf16 activations (module documentation). `state`
    /// `[batch, d_inner, 16]` fp32, read and written; `y` `[batch·seqlen, d_inner]` bf16.
    pub fn selective_scan_bf16(&self, args: &ScanBf16Args<'_>, state: &mut CudaBuf, y: &mut Bf16Tensor) -> Result<()> {
        let ScanDims { batch, seqlen, d_inner: di, d_state: n } = args.dims;
        if n != 16 {
            return Err(Error::Backend(format!("CUDA bf16 scan: d_state {n}; only 16 is implemented")));
        }
        let rows = batch * seqlen;
        if rows * di == 0 {
            return Ok(());
        }
        let u = self.bf16_ptr(args.u, rows * di, "bf16 scan u")?;
        let dl = self.bf16_ptr(args.delta, rows * di, "bf16 scan delta")?;
        let bm = self.bf16_ptr(args.b, rows * n, "bf16 scan B")?;
        let cm = self.bf16_ptr(args.c, rows * n, "bf16 scan C")?;
        let zp = match args.z {
            Some(z) => self.bf16_ptr(z, rows * di, "bf16 scan z")?,
            None => 0,
        };
        let db = self.ptr(args.delta_bias, 0, di, "bf16 scan delta_bias")?;
        let a = self.ptr(args.a, 0, di * n, "bf16 scan A")?;
        let d = self.ptr(args.d, 0, di, "bf16 scan D")?;
        let sp = self.ptr_mut(state, 0, batch * di * n, "bf16 scan state")?;
        if y.len < rows * di {
            return Err(Error::Backend(format!(
                "CUDA bf16 scan y: bf16 tensor of {} values, {} needed",
                y.len,
                rows * di
            )));
        }
        let stream = self.inner.stream.clone();
        let (yp, _sync) = y.data.device_ptr_mut(&stream);
        let k = super::scan_n16(batch * di, self.inner.sm_count);
        let p = N16Pointers { u, dl, db, a, bm, ldb: n, cm, ldc: n, d, zp, ldz: di, sp, yp };
        self.launch_scan_n16(k, (k.bf16, k.seg_bf16), &p, args.dims)
    }

    /// Launches the d_state-16 vector scan of shape `k` by the entry `main` (after the segments'
    /// first launch, `seg_first`, where the sequence is cut into segments: `scan_segments`), for
    /// entries whose parameters are `p`'s (device pointers bounds checked by the caller).
    fn launch_scan_n16(
        &self,
        k: &ScanN16,
        (main, seg_first): (&str, &str),
        p: &N16Pointers,
        dims: ScanDims,
    ) -> Result<()> {
        let ScanDims { batch, seqlen, d_inner: di, d_state: n } = dims;
        let N16Pointers { u, dl, db, a, bm, cm, d, zp, sp, yp, .. } = *p;
        let (ldb, ldc, ldz) = (u32_of("ld B", p.ldb)?, u32_of("ld C", p.ldc)?, u32_of("ld z", p.ldz)?);
        let (l, dd, nn) = (u32_of("seqlen", seqlen)?, u32_of("d_inner", di)?, u32_of("d_state", n)?);
        let mut cfg = LaunchConfig {
            grid_dim: (u32_of("blocks", di.div_ceil(k.cpb as usize))?, u32_of("batch", batch)?, 1),
            block_dim: (4 * k.cpb, 1, 1),
            shared_mem_bytes: 0,
        };
        let seg = self.scan_segments(k, batch, di, seqlen)?;
        if seg.count > 1 {
            cfg.grid_dim.2 = seg.count - 1;
            launch!(self, self.func(seg_first)?, cfg, "selective_scan segments";
                u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, seg.h, seg.sum, seg.len, l, dd, nn);
            cfg.grid_dim.2 = seg.count;
        }
        launch!(self, self.func(main)?, cfg, "selective_scan";
            u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, seg.h, seg.sum, seg.len, l, dd, nn);
        Ok(())
    }

    /// [`Backend::selective_scan`](crate::backend::Backend::selective_scan) of d_state 16 by the
    /// `x16` entries (`k`'s shape) where `u`, `Δ` and `z` are held in bf16 alone (their f32 values
    /// stale: prefill, `Backend::allow_bf16_storage`) and `y` may be: they read those three as
    /// bf16 (as `selective_scan_bf16` does) and B and C as f32, and write y in bf16 alone. `sp`:
    /// the state's device pointer, bounds checked. `false` (nothing launched) for any other case.
    pub(super) fn selective_scan_x16(
        &self,
        args: &ScanArgs<'_, CudaBuf>,
        k: &ScanN16,
        sp: u64,
        y: &mut CudaBuf,
    ) -> Result<bool> {
        let ScanDims { batch, seqlen, d_inner: di, d_state: n } = args.dims;
        let rows = batch * seqlen;
        let held16 = |v: &View<'_, CudaBuf>| self.held_bf16(v, rows, di);
        let (Some(u), Some(dl)) = (held16(&View::full(args.u, di))?, held16(&View::full(args.delta, di))?) else {
            return Ok(false);
        };
        let (zp, ldz) = match args.z {
            Some(z) => match held16(&z)? {
                Some(p) => (p, z.ld),
                None => return Ok(false),
            },
            None => (0, 0),
        };
        let Some(y16) = self.bf16_only_target(y)? else { return Ok(false) };
        self.ptr_unread(args.u, 0, rows * di, "scan u")?;
        self.ptr_unread(args.delta, 0, rows * di, "scan delta")?;
        if let Some(z) = &args.z {
            self.ptr_unread(z.buf, z.offset, Self::view_extent(z.ld, rows, di), "scan z")?;
        }
        self.ptr_unread(y, 0, rows * di, "scan y")?;
        let db = self.ptr(args.delta_bias, 0, di, "scan delta_bias")?;
        let a = self.ptr(args.a, 0, di * n, "scan A")?;
        let bm = self.ptr(args.b.buf, args.b.offset, Self::view_extent(args.b.ld, rows, n), "scan B")?;
        let cm = self.ptr(args.c.buf, args.c.offset, Self::view_extent(args.c.ld, rows, n), "scan C")?;
        let d = self.ptr(args.d, 0, di, "scan D")?;
        let p = N16Pointers { u, dl, db, a, bm, ldb: args.b.ld, cm, ldc: args.c.ld, d, zp, ldz, sp, yp: y16 };
        self.launch_scan_n16(k, (k.x16, k.seg_x16), &p, args.dims)?;
        self.bf16_only_written(y, rows * di)?;
        Ok(true)
    }
}
