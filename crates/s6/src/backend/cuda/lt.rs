//! cuBLASLt with a measured algorithm for the forward bf16 products of few rows (decoding from 9
//! sequences: in_proj, x_proj, dt_proj, out_proj, the LM head), opted into with `S6_LT=1` or
//! [`set_lt`]. Session 11 (`scripts/gpu/lt_probe.cu`) timed, with cold weights, cuBLAS
//! `GemmEx`'s default algorithm against each algorithm cuBLASLt's heuristic returns: 1.24–1.41×
//! slower than the best for x_proj, dt_proj and 130M out_proj at 128 rows.
//!
//! Each product shape is tuned once, outside graph recording (the decoder runs a step eagerly
//! before it records one): up to [`CANDIDATES`] algorithms of the heuristic and `GemmEx`'s default
//! are each timed with CUDA events into scratch output, the L2 cache rewritten before every run
//! (decoding reads its weights cold), and the fastest kept; when `GemmEx` wins, the shape stays on
//! it. The results are fp32 accumulations of the same bf16 inputs, in another order than
//! `GemmEx`'s.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublaslt::{result as lt_result, sys as lt_sys};
use cudarc::driver::{sys as driver_sys, DevicePtr};

use super::{driver_err, Cuda, Switch, BLAS_WORKSPACE_BYTES};
use crate::{Error, Result};

/// The most rows (columns of the column-major output) of a product sent through cuBLASLt.
pub(super) const LT_MAX_ROWS: usize = 256;
/// Algorithms of the heuristic timed per shape.
const CANDIDATES: usize = 8;
/// Timed runs per candidate (after one untimed run).
const RUNS: usize = 5;
/// Bytes rewritten before each timed run, more than the L2 of a Hopper GPU (50 MB).
const FLUSH_BYTES: usize = 96 << 20;

static LT: Switch = Switch::new("S6_LT", false);

/// Whether bf16 products of 9 to `LT_MAX_ROWS` rows go through cuBLASLt with a tuned algorithm
/// (`S6_LT=1`, read once; off by default).
pub fn lt_enabled() -> bool {
    LT.on()
}

/// Turns the cuBLASLt path ([`lt_enabled`]) on or off for this process.
pub fn set_lt(on: bool) {
    LT.set(on);
}

fn lt_err(what: &'static str) -> impl Fn(lt_result::CublasError) -> Error {
    move |e| Error::Backend(format!("cuBLASLt {what}: {e:?}"))
}

/// One product's shape, as `gemm_bf16` takes it (column-major; `ta` / `tb`: A / B transposed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct LtShape {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// The descriptors of one shape and the algorithm chosen for it.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    c: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created by `LtPlan::new` (null where its creation failed), destroyed once here.
        unsafe {
            for layout in [self.c, self.b, self.a] {
                if !layout.is_null() {
                    let _ = lt_result::destroy_matrix_layout(layout);
                }
            }
            let _ = lt_result::destroy_matmul_desc(self.desc);
        }
    }
}

/// cuBLAS's operation code (`cublasOperation_t`, an `int32_t` in cuBLASLt's attributes).
fn op(t: bool) -> i32 {
    if t {
        CUBLAS_OP_T as i32
    } else {
        CUBLAS_OP_N as i32
    }
}

impl LtPlan {
    /// bf16 A and B, fp32 C = D, fp32 compute and scale; the algorithm still to be chosen.
    fn new(s: &LtShape) -> Result<Self> {
        use lt_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_32F};
        let desc = lt_result::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, CUDA_R_32F)
            .map_err(lt_err("matmul descriptor"))?;
        // Stored shapes: op(A) is m × k, op(B) is k × n.
        let (ar, ac) = if s.ta { (s.k, s.m) } else { (s.m, s.k) };
        let (br, bc) = if s.tb { (s.n, s.k) } else { (s.k, s.n) };
        let layout =
            |t, r: usize, c: usize, ld: usize| lt_result::create_matrix_layout(t, r as u64, c as u64, ld as i64);
        let mut plan = LtPlan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let (ta, tb) = (op(s.ta), op(s.tb));
        // SAFETY: the descriptor is live; each attribute is the type the library expects.
        unsafe {
            use lt_sys::cublasLtMatmulDescAttributes_t::{CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB};
            let size = std::mem::size_of::<i32>();
            lt_result::set_matmul_desc_attribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, (&ta as *const i32).cast(), size)
                .map_err(lt_err("transa"))?;
            lt_result::set_matmul_desc_attribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, (&tb as *const i32).cast(), size)
                .map_err(lt_err("transb"))?;
        }
        plan.a = layout(CUDA_R_16BF, ar, ac, s.lda).map_err(lt_err("layout of A"))?;
        plan.b = layout(CUDA_R_16BF, br, bc, s.ldb).map_err(lt_err("layout of B"))?;
        plan.c = layout(CUDA_R_32F, s.m, s.n, s.ldc).map_err(lt_err("layout of C"))?;
        Ok(plan)
    }
}

/// The backend's cuBLASLt handle and its tuned shapes (`None`: `GemmEx` was fastest).
pub(super) struct LtState {
    handle: lt_sys::cublasLtHandle_t,
    plans: HashMap<LtShape, Option<LtPlan>>,
}

// SAFETY: the handle and descriptors are used only under the backend's `Mutex<Option<LtState>>`.
unsafe impl Send for LtState {}

impl Drop for LtState {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `gemm_bf16_lt`, destroyed once here, after its plans.
        unsafe {
            let _ = lt_result::destroy_handle(self.handle);
        }
    }
}

impl Cuda {
    /// `C = A·B (+ C when beta = 1)` of shape `s` (as `gemm_bf16` takes it) through cuBLASLt, when the shape
    /// has (or now gets) a tuned algorithm that beat `GemmEx`. `Ok(false)`: `GemmEx` should run
    /// it (slower here, or not tuned yet while a graph is being recorded).
    ///
    /// # Safety
    /// The pointers hold the matrices the shape describes.
    pub(super) unsafe fn gemm_bf16_lt(&self, s: LtShape, a: u64, b: u64, beta: f32, c: u64) -> Result<bool> {
        // The heuristic assumes 256-byte aligned matrices (its default preference), as every
        // allocation is; anything else stays on GemmEx.
        if [a, b, c].iter().any(|p| !p.is_multiple_of(256)) {
            return Ok(false);
        }
        self.inner.ctx.bind_to_thread().map_err(driver_err("bind"))?;
        let mut guard = self.inner.lt.lock().map_err(|_| Error::Backend("cuBLASLt state poisoned".into()))?;
        if guard.as_ref().is_none_or(|st| !st.plans.contains_key(&s)) && self.capturing()? {
            return Ok(false);
        }
        if guard.is_none() {
            // cudarc panics on a library it cannot load: ask first.
            if !lt_sys::is_culib_present() {
                return Err(Error::Backend(
                    "S6_LT=1: the cuBLASLt library (libcublasLt) was not found on the library path".into(),
                ));
            }
            let handle = lt_result::create_handle().map_err(lt_err("handle"))?;
            *guard = Some(LtState { handle, plans: HashMap::new() });
        }
        let Some(st) = guard.as_mut() else { unreachable!("created above") };
        if !st.plans.contains_key(&s) {
            let plan = self.lt_tune(st.handle, &s, a, b)?;
            st.plans.insert(s, plan);
        }
        let Some(Some(plan)) = st.plans.get(&s) else { return Ok(false) };
        self.lt_matmul(st.handle, plan, &plan.algo, (a, b, c), beta)?;
        Ok(true)
    }

    /// `C = A·B + beta·C` of `plan`'s shape with algorithm `algo` (C is D), on the backend's stream
    /// with cuBLAS's workspace (the two libraries run one after the other on the one stream).
    ///
    /// # Safety
    /// The pointers hold the matrices `plan` describes.
    unsafe fn lt_matmul(
        &self,
        handle: lt_sys::cublasLtHandle_t,
        plan: &LtPlan,
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        (a, b, c): (u64, u64, u64),
        beta: f32,
    ) -> Result<()> {
        let stream = self.stream();
        let (ws, _ws) = self.inner.blas_workspace.device_ptr(stream);
        let alpha = 1.0f32;
        lt_result::matmul(
            handle,
            plan.desc,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            a as *const c_void,
            plan.a,
            b as *const c_void,
            plan.b,
            c as *const c_void,
            plan.c,
            c as *mut c_void,
            plan.c,
            algo,
            ws as *mut c_void,
            BLAS_WORKSPACE_BYTES,
            stream.cu_stream() as _,
        )
        .map_err(lt_err("matmul"))
    }

    /// Times `GemmEx`'s default and the heuristic's algorithms for `s` (module docs) and returns
    /// the plan of the fastest, or `None` when `GemmEx` was.
    unsafe fn lt_tune(&self, handle: lt_sys::cublasLtHandle_t, s: &LtShape, a: u64, b: u64) -> Result<Option<LtPlan>> {
        let mut plan = LtPlan::new(s)?;
        let pref = lt_result::create_matmul_pref().map_err(lt_err("preference"))?;
        let ws_max = BLAS_WORKSPACE_BYTES as u64;
        let found = lt_result::set_matmul_pref_attribute(
            pref,
            lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&ws_max as *const u64).cast(),
            std::mem::size_of::<u64>(),
        )
        .and_then(|()| {
            let mut results: [lt_sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] = std::mem::zeroed();
            let mut count = 0i32;
            lt_sys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.c,
                plan.c,
                pref,
                CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut count,
            )
            .result()?;
            Ok(results.into_iter().take(count.max(0) as usize).collect::<Vec<_>>())
        });
        let _ = lt_result::destroy_matmul_pref(pref);
        let candidates: Vec<_> = found
            .map_err(lt_err("heuristic"))?
            .into_iter()
            .filter(|r| {
                r.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= BLAS_WORKSPACE_BYTES
            })
            .map(|r| r.algo)
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let stream = self.stream();
        let out = stream.alloc_zeros::<f32>(s.ldc * s.n).map_err(driver_err("allocation"))?;
        let mut flush = stream.alloc_zeros::<u8>(FLUSH_BYTES).map_err(driver_err("allocation"))?;
        let (op_out, _o) = out.device_ptr(stream);
        // Candidate `None` is GemmEx's default.
        let run = |algo: Option<&lt_sys::cublasLtMatmulAlgo_t>| -> Result<()> {
            match algo {
                Some(algo) => self.lt_matmul(handle, &plan, algo, (a, b, op_out), 0.0),
                None => {
                    let t = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
                    let dims = (s.m, s.n, s.k);
                    self.gemm_bf16(t(s.ta), t(s.tb), dims, a, s.lda, b, s.ldb, 0.0, op_out, s.ldc)
                }
            }
        };
        let timing = Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut best: (f32, Option<usize>) = (f32::INFINITY, None);
        for (i, algo) in std::iter::once(None).chain(candidates.iter().map(Some)).enumerate() {
            let mut total = 0.0f32;
            let mut ok = true;
            for r in 0..=RUNS {
                stream.memset_zeros(&mut flush).map_err(driver_err("memset"))?;
                let start = stream.record_event(timing).map_err(driver_err("event"))?;
                if run(algo).is_err() {
                    ok = false;
                    break;
                }
                let end = stream.record_event(timing).map_err(driver_err("event"))?;
                let ms = start.elapsed_ms(&end).map_err(driver_err("event time"))?;
                if r > 0 {
                    total += ms;
                }
            }
            if ok && total < best.0 {
                best = (total, (i > 0).then(|| i - 1));
            }
        }
        stream.synchronize().map_err(driver_err("synchronize"))?;
        Ok(best.1.map(|i| {
            plan.algo = candidates[i];
            plan
        }))
    }
}
