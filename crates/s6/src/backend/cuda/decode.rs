//! Decoding without host round trips on CUDA: token ids in device memory ([`CudaIds`]), the
//! sampling kernel (`kernels/sample.cu`, compiled on first use, apart from the model kernels), and
//! CUDA graph capture and replay of the backend's one stream.
//!
//! Graph capture needs a stream other than the legacy default stream and a cuBLAS workspace set
//! by the caller (so that cuBLAS does not allocate while recording): [`super::Cuda::new`] provides
//! both.

use std::sync::OnceLock;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::{driver_err, grid_1d, u32_of, Cuda, CudaBuf};
use crate::generate::SamplingParams;
use crate::{Error, Result};

const SAMPLE_SOURCE: &str = include_str!("kernels/sample.cu");
/// Threads per block of `s6_sample` (`S6_SAMPLE_THREADS` in the kernel).
const SAMPLE_THREADS: u32 = 1024;

/// A flat `u32` buffer in device memory (`len` values; the allocation holds at least one).
pub struct CudaIds {
    data: CudaSlice<u32>,
    len: usize,
}

impl CudaIds {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Ids on their way to the host ([`Backend::ids_read_start`](crate::backend::Backend)): a
/// page-locked buffer the copy writes and an event recorded behind the copy. (The buffer's own
/// event is not recorded: the backend turns cudarc's event tracking off.) Dropped unread, the
/// buffer is freed once the copy is done.
pub struct CudaIdsRead {
    host: PinnedIds,
    len: usize,
}

/// A page-locked id buffer and the event that marks the end of the copy into it (reused).
pub(super) struct PinnedIds {
    buf: cudarc::driver::PinnedHostSlice<u32>,
    done: cudarc::driver::CudaEvent,
}

impl Drop for PinnedIds {
    fn drop(&mut self) {
        // A copy may still be writing the buffer: wait for it before the buffer is freed.
        let _ = self.done.synchronize();
    }
}

/// The decoding kernels of one context.
pub(super) struct DecodeKernels {
    sample: CudaFunction,
}

/// The lazily compiled decoding kernels (`Err`: why they are unavailable).
pub(super) type DecodeSlot = OnceLock<std::result::Result<DecodeKernels, String>>;

/// PTX of the sampling kernel for one architecture, compiled once per process.
pub(super) fn sample_ptx(arch: &str) -> Result<String> {
    static SOURCE: OnceLock<String> = OnceLock::new();
    let source = SOURCE.get_or_init(|| [super::PRELUDE_SOURCE, SAMPLE_SOURCE].concat());
    super::compile_cached("the sampling kernel", source, arch)
}

fn load_kernels(be: &Cuda) -> Result<DecodeKernels> {
    let module = be
        .inner
        .ctx
        .load_module(Ptx::from_src(sample_ptx(&be.inner.arch)?))
        .map_err(driver_err("loading the sampling kernel"))?;
    let sample = module.load_function("s6_sample").map_err(driver_err("s6_sample"))?;
    Ok(DecodeKernels { sample })
}

impl Cuda {
    fn decode_kernels(&self) -> Result<&DecodeKernels> {
        self.inner
            .decode
            .get_or_init(|| load_kernels(self).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Backend(e.clone()))
    }

    fn ids_ptr(&self, ids: &CudaIds, needed: usize, what: &str) -> Result<u64> {
        if needed > ids.len {
            return Err(Error::Backend(format!("CUDA {what}: buffer of {} ids, {needed} needed", ids.len)));
        }
        let (p, _sync) = ids.data.device_ptr(self.stream());
        Ok(p)
    }

    fn ids_ptr_mut(&self, ids: &mut CudaIds, needed: usize, what: &str) -> Result<u64> {
        if needed > ids.len {
            return Err(Error::Backend(format!("CUDA {what}: buffer of {} ids, {needed} needed", ids.len)));
        }
        let stream = self.stream().clone();
        let (p, _sync) = ids.data.device_ptr_mut(&stream);
        Ok(p)
    }

    pub(super) fn ids_from_slice_impl(&self, ids: &[u32]) -> Result<CudaIds> {
        let data = if ids.is_empty() {
            self.stream().alloc_zeros::<u32>(1).map_err(driver_err("allocation"))?
        } else {
            self.stream().clone_htod(ids).map_err(driver_err("upload"))?
        };
        Ok(CudaIds { data, len: ids.len() })
    }

    pub(super) fn ids_to_vec_impl(&self, ids: &CudaIds) -> Result<Vec<u32>> {
        if ids.len == 0 {
            return Ok(Vec::new());
        }
        let mut v = self.stream().clone_dtoh(&ids.data).map_err(driver_err("download"))?;
        self.synchronize()?;
        v.truncate(ids.len);
        Ok(v)
    }

    pub(super) fn ids_read_start_impl(&self, ids: &CudaIds) -> Result<CudaIdsRead> {
        let need = ids.data.len();
        let pooled = {
            let mut pool =
                self.inner.pinned_ids.lock().map_err(|_| Error::Backend("pinned id buffers: lock".into()))?;
            pool.iter().position(|h| h.buf.len() >= need).map(|i| pool.swap_remove(i))
        };
        let mut host = match pooled {
            Some(h) => h,
            None => PinnedIds {
                // SAFETY: plain page-locked memory (no flags: the host reads it), written by the
                // copy below before anything reads it.
                buf: unsafe { self.inner.ctx.alloc_pinned_with_flags::<u32>(need, 0) }
                    .map_err(driver_err("page-locked allocation"))?,
                done: self.inner.ctx.new_event(None).map_err(driver_err("event"))?,
            },
        };
        // Queued on the stream, then the event behind it.
        self.stream().memcpy_dtoh(&ids.data, &mut host.buf).map_err(driver_err("download"))?;
        host.done.record(self.stream()).map_err(driver_err("event record"))?;
        Ok(CudaIdsRead { host, len: ids.len })
    }

    pub(super) fn ids_read_finish_impl(&self, read: CudaIdsRead) -> Result<Vec<u32>> {
        let CudaIdsRead { host, len } = read;
        // Waits for the copy only, not for work queued after it.
        host.done.synchronize().map_err(driver_err("download"))?;
        let v = host.buf.as_slice().map_err(driver_err("download"))?[..len].to_vec();
        if let Ok(mut pool) = self.inner.pinned_ids.lock() {
            // A few buffers are enough: decoding has one read in flight.
            if pool.len() < 4 {
                pool.push(host);
            }
        }
        Ok(v)
    }

    pub(super) fn embedding_ids_impl(
        &self,
        table: &CudaBuf,
        ids: &CudaIds,
        dim: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let rows = ids.len;
        if rows * dim == 0 {
            return Ok(());
        }
        let ip = self.ids_ptr(ids, rows, "embedding ids")?;
        let t = self.ptr(table, 0, table.len, "embedding table")?;
        let o = self.ptr_mut(out, 0, rows * dim, "embedding out")?;
        let (r, d) = (u32_of("rows", rows)?, u32_of("dim", dim)?);
        let func = self.func("s6_embedding")?;
        let mut b = self.stream().launch_builder(func);
        b.arg(&t).arg(&ip).arg(&o).arg(&r).arg(&d);
        // SAFETY: matches s6_embedding(const float*, const unsigned*, float*, unsigned, unsigned);
        // pointers bounds-checked above (ids are in the table: the caller's contract).
        unsafe { b.launch(grid_1d(rows * dim)) }.map_err(driver_err("embedding"))?;
        Ok(())
    }

    pub(super) fn sample_impl(
        &self,
        logits: &CudaBuf,
        vocab: usize,
        params: &SamplingParams,
        seen: &mut CudaIds,
        draws: &mut CudaIds,
        out: &mut CudaIds,
    ) -> Result<()> {
        params.validate()?;
        let rows = out.len;
        if rows == 0 {
            return Ok(());
        }
        if vocab == 0 {
            return Err(Error::input("cannot sample from empty logits"));
        }
        let lp = self.ptr(logits, 0, rows * vocab, "sample logits")?;
        let penalty = params.repetition_penalty != 1.0;
        let sp = if penalty { self.ids_ptr_mut(seen, rows * vocab, "sample seen-token mask")? } else { 0u64 };
        let dp = self.ids_ptr_mut(draws, rows, "sample draw counters")?;
        let op = self.ids_ptr_mut(out, rows, "sample out")?;
        let v = u32_of("vocab", vocab)?;
        let top_k = u32::try_from(params.top_k).unwrap_or(u32::MAX);
        let (t, p, m, rp, seed) =
            (params.temperature, params.top_p, params.min_p, params.repetition_penalty, params.seed);
        let cfg = LaunchConfig {
            grid_dim: (u32_of("rows", rows)?, 1, 1),
            block_dim: (SAMPLE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = &self.decode_kernels()?.sample;
        let mut b = self.stream().launch_builder(func);
        b.arg(&lp).arg(&v).arg(&t).arg(&top_k).arg(&p).arg(&m).arg(&rp).arg(&seed).arg(&sp).arg(&dp).arg(&op);
        // SAFETY: matches s6_sample's signature in kernels/sample.cu; pointers bounds-checked
        // above (seen is null exactly when the kernel does not read it).
        unsafe { b.launch(cfg) }.map_err(driver_err("sample"))?;
        Ok(())
    }

    pub(super) fn capture_impl(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<CudaGraph>> {
        let stream = self.stream();
        // Thread-local: other threads' CUDA calls (other models, tests) do not break the capture.
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("begin graph capture"))?;
        // Activation copies written before the recording do not serve its products, nor those
        // written in it the products after it (bf16.rs).
        self.next_shadow_epoch();
        let recorded = work();
        self.next_shadow_epoch();
        // Always end the capture, also after an error, so that the stream is usable again.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        let graph = match (recorded, ended) {
            (Err(e), _) => return Err(Error::Backend(format!("CUDA graph capture: recording failed: {e}"))),
            (Ok(()), Err(e)) => return Err(Error::Backend(format!("CUDA graph capture: {e}"))),
            (Ok(()), Ok(None)) => return Err(Error::Backend("CUDA graph capture: no graph was recorded".into())),
            (Ok(()), Ok(Some(g))) => g,
        };
        graph.upload().map_err(driver_err("graph upload"))?;
        Ok(Some(graph))
    }

    pub(super) fn replay_impl(&self, graph: &CudaGraph) -> Result<()> {
        graph.launch().map_err(driver_err("graph launch"))
    }
}
