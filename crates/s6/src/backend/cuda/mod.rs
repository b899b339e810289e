//! The CUDA backend (feature `cuda`): buffers in device memory, kernels written in CUDA C++
//! (`kernels/*.cu`) compiled by NVRTC at run time for the device's architecture, once per process,
//! and cuBLAS for the matrix products, except `linear` with at most [`GEMV_MAX_ROWS`] rows
//! (decoding), which runs a matrix-vector kernel of ours (`kernels/gemv.cu`); the environment
//! variable `S6_GEMV=0` sends those to cuBLAS too.
//!
//! Decoding (one token per sequence) runs the mixer between `in_proj` and `out_proj` as two fused
//! kernels ([`mixer_step`], `kernels/mixer_step.cu`); `S6_FUSED_STEP=0` turns that off.
//!
//! The CUDA libraries are loaded when a [`Cuda`] is created, not when the program starts: a build
//! with the feature runs on machines without a GPU, and [`Cuda::new`] then returns an error naming
//! the missing library or device. Everything runs in order on one stream; results are read back
//! by [`Backend::to_vec`], which waits for the stream.
//!
//! Training: the selective-scan backward runs in `backward.rs` (kernels in
//! `kernels/scan_backward.cu`), the conv1d + SiLU forward and backward in `conv.rs` (kernels in
//! `kernels/conv.cu`); the other backward ops, the optimizer and the attention-baseline ops
//! in `train_ops.rs` (kernels in `kernels/train.cu`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use super::{
    AdamW, AttnDims, Backend, BlockStepArgs, BlockStepOut, Compute, MixerStepArgs, MixerStepOut, ScanArgs, ScanGrads,
    View, ViewMut,
};
use crate::{Error, Result};

mod decode;
pub mod nccl;
pub use decode::CudaIds;

/// What every kernel module starts with (`S6_PDL_ENTRY`).
const PRELUDE_SOURCE: &str = include_str!("kernels/prelude.cu");

/// The kernels' sources, compiled together into one module.
const KERNEL_SOURCES: &[&str] = &[
    PRELUDE_SOURCE,
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/conv.cu"),
    include_str!("kernels/scan.cu"),
    include_str!("kernels/scan_backward.cu"),
    include_str!("kernels/train.cu"),
    include_str!("kernels/bf16.cu"),
    include_str!("kernels/gemv.cu"),
    include_str!("kernels/mixer_step.cu"),
    include_str!("kernels/layer_step.cu"),
    include_str!("kernels/mma.cu"),
];

/// Every kernel the module defines (looked up once when the backend is created).
const KERNELS: &[&str] = &[
    "s6_embedding",
    "s6_gather_rows",
    "s6_fill_bias",
    "s6_add_assign",
    "s6_add_rmsnorm",
    "s6_add_rmsnorm_b16",
    "s6_add_rmsnorm_warp",
    "s6_add_rmsnorm_warp_b16",
    "s6_add_rmsnorm_warp_d16",
    "s6_conv_state_update",
    "s6_conv_state_update_x16",
    // kernels/conv.cu (conv.rs: FWD_KERNELS, BWD_KERNELS)
    "s6_conv_fwd_k4_vec4",
    "s6_conv_fwd_k4_vec1",
    "s6_conv_fwd_vec4",
    "s6_conv_fwd_vec1",
    "s6_conv_step_k4_vec4",
    "s6_conv_step_k4_vec1",
    "s6_conv_fwd_k4_vec4_b16",
    "s6_conv_step_k4_vec4_b16",
    "s6_conv_fwd_k4_vec4_x16",
    "s6_conv_bwd_k4_vec4",
    "s6_conv_bwd_k4_vec1",
    "s6_conv_bwd_vec4",
    "s6_conv_bwd_vec1",
    "s6_conv_bwd_dw_reduce",
    "s6_scan_n4",
    "s6_scan_n8",
    "s6_scan_n16",
    "s6_scan_n32",
    "s6_scan_n64",
    "s6_scan_n16_v4c32",
    "s6_scan_n16_v4c32_b16",
    "s6_scan_n16_bf16_v4c32",
    "s6_scan_n16_seg_v4c32",
    "s6_scan_n16_seg_bf16_v4c32",
    "s6_scan_n16_x16_v4c32",
    "s6_scan_n16_seg_x16_v4c32",
    "s6_scan_n16_v4c16t64",
    "s6_scan_n16_v4c16t64_b16",
    "s6_scan_n16_bf16_v4c16t64",
    "s6_scan_n16_seg_v4c16t64",
    "s6_scan_n16_seg_bf16_v4c16t64",
    "s6_scan_n16_x16_v4c16t64",
    "s6_scan_n16_seg_x16_v4c16t64",
    // scan_backward.cu
    "s6_scan_n16_ckpt8",
    "s6_scan_bwd_n4",
    "s6_scan_bwd_n8",
    "s6_scan_bwd_n16p",
    "s6_scan_bwd_n16r8",
    "s6_scan_bwd_n16m8",
    "s6_scan_bwd_n16pm",
    "s6_scan_bwd_n32",
    "s6_scan_bwd_n64",
    "s6_scan_bwd_reduce_bc",
    "s6_scan_bwd_reduce_params",
    // kernels/train.cu
    "s6_col_sums_part",
    "s6_col_sums_finish",
    "s6_rmsnorm_bwd",
    "s6_embedding_bwd",
    "s6_cross_entropy",
    "s6_cross_entropy_d16",
    "s6_sum_f64",
    "s6_sum_squares_many",
    "s6_sum_f64_many",
    "s6_sum_in_order",
    "s6_neg_exp",
    "s6_add_product",
    "s6_adamw",
    "s6_adamw_many",
    "s6_rope",
    "s6_swiglu",
    "s6_swiglu_bwd",
    "s6_attn_fwd",
    "s6_attn_bwd_delta",
    "s6_attn_bwd_dq",
    "s6_attn_bwd_dkv",
    // kernels/gemv.cu: GEMV_KERNELS and GEMV_NORM_KERNELS, loaded with these.
    // kernels/bf16.cu
    "s6_cast_bf16",
    "s6_uncast_bf16",
    // kernels/mma.cu
    "s6_mma_bf16",
    "s6_mma_split_sum",
    // kernels/mixer_step.cu
    "s6_mixer_step_scan",
    "s6_mixer_step_scan_b1",
    "s6_mixer_step_scan_n16",
    "s6_mixer_step_scan_n16_b16",
    "s6_mixer_step_xscan_b1_v1",
    "s6_mixer_step_xscan_b1_v2",
    "s6_mixer_step_xscan_b1_v4",
    // kernels/layer_step.cu
    "s6_layer_step_b1",
    "s6_layer_step_b1_wide",
    "s6_layer_step_cluster_b1_c8",
    "s6_layer_step_cluster_b1_c16",
    "s6_layer_step_cluster_b1_c8_wide",
    "s6_layer_step_cluster_b1_c16_wide",
];

/// `linear` with at most this many rows runs the matrix-vector kernel `s6_gemv_r{rows}`
/// (`kernels/gemv.cu`) instead of cuBLAS: decoding with batch 1..8 is bound by reading the
/// weights, which the kernel streams once at close to full bandwidth, while cuBLAS's sgemm tiles
/// are built for many rows. Setting the environment variable `S6_GEMV=0` turns the kernel off
/// (every `linear` then uses cuBLAS), for side-by-side measurements; it is read once per process.
pub const GEMV_MAX_ROWS: usize = 8;

/// The matrix-vector kernels by weight type (f32, bf16) and rows (1..=8).
const GEMV_KERNELS: [[&str; GEMV_MAX_ROWS]; 2] = [
    ["s6_gemv_r1", "s6_gemv_r2", "s6_gemv_r3", "s6_gemv_r4", "s6_gemv_r5", "s6_gemv_r6", "s6_gemv_r7", "s6_gemv_r8"],
    [
        "s6_gemv_bf16_r1",
        "s6_gemv_bf16_r2",
        "s6_gemv_bf16_r3",
        "s6_gemv_bf16_r4",
        "s6_gemv_bf16_r5",
        "s6_gemv_bf16_r6",
        "s6_gemv_bf16_r7",
        "s6_gemv_bf16_r8",
    ],
];

/// The entries of `kernels/gemv.cu` with the RMSNorm prologue and the conv epilogue
/// ([`GemvMode::NormConv`]), indexed as [`GEMV_KERNELS`].
const GEMV_NORM_KERNELS: [[&str; GEMV_MAX_ROWS]; 2] = [
    [
        "s6_gemv_norm_r1",
        "s6_gemv_norm_r2",
        "s6_gemv_norm_r3",
        "s6_gemv_norm_r4",
        "s6_gemv_norm_r5",
        "s6_gemv_norm_r6",
        "s6_gemv_norm_r7",
        "s6_gemv_norm_r8",
    ],
    [
        "s6_gemv_bf16_norm_r1",
        "s6_gemv_bf16_norm_r2",
        "s6_gemv_bf16_norm_r3",
        "s6_gemv_bf16_norm_r4",
        "s6_gemv_bf16_norm_r5",
        "s6_gemv_bf16_norm_r6",
        "s6_gemv_bf16_norm_r7",
        "s6_gemv_bf16_norm_r8",
    ],
];

/// Warps per block of `s6_gemv_r*` (`S6_GEMV_WARPS` in the kernel).
const GEMV_WARPS: usize = 8;

/// Threads per row of `s6_add_rmsnorm`: the GEMV's block, whose RMSNorm prologue
/// ([`GemvMode::NormConv`]) must sum a row in the same order to give the same bits.
const RMSNORM_THREADS: u32 = 32 * GEMV_WARPS as u32;

/// What a GEMV launch does besides `out = x·Wᵀ + bias` (`kernels/gemv.cu`; device pointers bounds
/// checked by the caller).
enum GemvMode {
    /// Plain product.
    Write,
    /// `out += x·Wᵀ + bias`: the residual add of a decoding block.
    Accumulate,
    /// x is the residual stream, RMSNormed on the fly, and the columns below `conv.ch` also get
    /// the causal conv1d + SiLU of the step (in_proj of a decoding block).
    NormConv(NormConv),
}

/// The extra inputs of [`GemvMode::NormConv`]: the norm weight (`[k]`) and epsilon; the conv
/// weight `[ch, kconv]`, optional bias (0: none), state `[rows, kconv - 1, ch]` (read only) and
/// its output `u` `[rows, ch]`.
struct NormConv {
    norm: u64,
    eps: f32,
    conv_w: u64,
    conv_b: u64,
    conv_state: u64,
    u: u64,
    ch: u32,
    kconv: u32,
}

/// Which decoding kernels (the GEMV, the scan step) prefetch their weights into L2 before waiting
/// for the previous kernel (`s6_prefetch_l2` in `kernels/prelude.cu`), from `S6_PREFETCH`: `0`
/// none, `1` (or `all`) all, `small` (the default) those whose weights take at most an eighth of
/// the L2 ([`Cuda::prefetch_for`]). Measured on an H100 (docs/BENCHMARKS.md, sessions 8 and 9),
/// bf16, tok/s, none / small / all: 130M batch 1 2,294 / 2,463 / 2,459, batch 8 12,032 / 12,511 /
/// 12,533; 1.4B batch 1 486 / 502 / 461, batch 8 2,186 / 2,204 / 2,171 (at 1.4B a layer's
/// products, 50 MB, fill the 50 MB L2, and kernels resident ahead of their turn evict each
/// other's lines when all prefetch). Read once per process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prefetch {
    Off,
    Small,
    All,
}

fn prefetch_mode() -> Prefetch {
    static MODE: OnceLock<Prefetch> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("S6_PREFETCH").as_deref().map(str::trim) {
        Ok("1") | Ok("all") => Prefetch::All,
        Ok("0") | Ok("off") => Prefetch::Off,
        _ => Prefetch::Small,
    })
}

/// A process-wide on/off setting of the backend, for measurements: read once from the environment
/// variable `var` (unset: `default`; "0" turns off a setting that is on by default, "1" turns on
/// one that is off), unless [`Switch::set`] stored a value first (tests and benchmarks).
pub(crate) struct Switch {
    var: &'static str,
    default: bool,
    /// 0 or 1 once read or set; `u8::MAX` before.
    state: AtomicU8,
}

impl Switch {
    pub(crate) const fn new(var: &'static str, default: bool) -> Self {
        Switch { var, default, state: AtomicU8::new(u8::MAX) }
    }

    pub(crate) fn on(&self) -> bool {
        let v = self.state.load(Ordering::Relaxed);
        if v != u8::MAX {
            return v == 1;
        }
        let on = match std::env::var(self.var) {
            Ok(v) if self.default => v.trim() != "0",
            Ok(v) => v.trim() == "1",
            Err(_) => self.default,
        };
        self.set(on);
        on
    }

    pub(crate) fn set(&self, on: bool) {
        self.state.store(u8::from(on), Ordering::Relaxed);
    }
}

/// A process-wide count of the backend whose default the caller works out at each use: a value
/// stored by [`Count::set`] (tests), else the environment variable `var` (a positive integer, read
/// once, times `unit`), else `None`.
pub(crate) struct Count {
    var: &'static str,
    unit: usize,
    /// Stored by `set`; 0: none.
    stored: AtomicUsize,
    from_env: OnceLock<Option<usize>>,
}

impl Count {
    pub(crate) const fn new(var: &'static str, unit: usize) -> Self {
        Count { var, unit, stored: AtomicUsize::new(0), from_env: OnceLock::new() }
    }

    pub(crate) fn get(&self) -> Option<usize> {
        let v = self.stored.load(Ordering::Relaxed);
        if v > 0 {
            return Some(v);
        }
        *self.from_env.get_or_init(|| {
            let v = std::env::var(self.var).ok().and_then(|v| v.trim().parse::<usize>().ok());
            v.filter(|&v| v > 0).map(|v| v * self.unit)
        })
    }

    /// Stores `v` for this process (0: back to the environment or the caller's default).
    pub(crate) fn set(&self, v: usize) {
        self.stored.store(v, Ordering::Relaxed);
    }
}

/// Rows per block of `s6_add_rmsnorm_warp` (`S6_NORM_WARP_ROWS`), the longest row it holds in
/// registers (`128 * S6_NORM_WARP_V4`), and the fewest rows it is used for.
const NORM_WARP_ROWS: usize = 8;
const NORM_WARP_MAX_DIM: usize = 128 * 16;
const NORM_WARP_MIN_ROWS: usize = 1024;

/// Whether RMSNorm over [`NORM_WARP_MIN_ROWS`] rows or more uses the warp-per-row kernel
/// (`S6_NORM_WARP=0` turns it off).
fn norm_warp_enabled() -> bool {
    static ON: Switch = Switch::new("S6_NORM_WARP", true);
    ON.on()
}

/// Whether the matrix-vector kernel is on (`S6_GEMV=0` turns it off).
fn gemv_enabled() -> bool {
    static ON: Switch = Switch::new("S6_GEMV", true);
    ON.on()
}

/// The largest `d_state` the scan kernels hold in registers.
pub const MAX_D_STATE: usize = 64;

/// A flat `f32` buffer in device memory (`len` floats; the allocation holds at least one, since
/// the driver refuses empty ones).
///
/// Under [`Compute::Bf16`] a buffer used as the weight of a matrix product also carries a bf16
/// copy ("shadow"), created on first such use and re-cast, into the same allocation, on the
/// first use after any mutable access to the buffer (every mutable access goes through
/// `CudaBuf::data_mut`, which marks the copy stale).
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
    shadow: Mutex<Option<Shadow>>,
    /// The model allows the values to be held in bf16 only ([`Backend::allow_bf16_storage`]).
    bf16_storage: AtomicBool,
    /// The model allows a bf16 copy beside the f32 values in training ([`Backend::allow_bf16_copy`]).
    bf16_copy: AtomicBool,
    /// The f32 values are not written: the bf16 copy (`shadow`, an activation's) holds them. Any
    /// f32 access first casts the copy back (`Cuda::fresh`); set only by kernels that wrote the
    /// copy alone (bf16.rs, `bf16_only_target`).
    f32_stale: AtomicBool,
    /// The f32 storage was freed while the values are held in bf16 alone
    /// ([`Backend::release_f32`]): `data` is a one-value placeholder until a write allocates it
    /// again (`Cuda::restore_f32`); an f32 read is an error.
    f32_released: bool,
}

/// The bf16 copy of a buffer (`len` values, bit patterns), and whether it still equals the f32
/// values rounded. Its allocation never moves while the buffer lives, so CUDA graphs that read it
/// stay valid. A weight's copy (`act: None`) is cast from the whole buffer; an activation's
/// (`act: Some`, bf16.rs: `act_bf16_target`) was written by the kernel that wrote the values.
struct Shadow {
    data: CudaSlice<u16>,
    valid: bool,
    act: Option<ActCopy>,
}

/// What an activation's bf16 copy holds: the first `len` values, written by a kernel issued in the
/// graph-recording epoch `epoch` ([`Cuda`]'s `shadow_epoch`); it serves only products issued in
/// the same epoch, so that neither a recording nor an eager call after it trusts a copy that only
/// the other wrote.
#[derive(Clone, Copy)]
struct ActCopy {
    epoch: u64,
    len: usize,
}

impl CudaBuf {
    fn new(data: CudaSlice<f32>, len: usize) -> Self {
        CudaBuf {
            data,
            len,
            shadow: Mutex::new(None),
            bf16_storage: AtomicBool::new(false),
            bf16_copy: AtomicBool::new(false),
            f32_stale: AtomicBool::new(false),
            f32_released: false,
        }
    }

    /// The device slice for writing: marks the bf16 copy, if any, stale. The f32 values are then
    /// the buffer's: callers write it whole, or made it current first (`Cuda::ptr_mut`), and
    /// allocate released storage again first (`Cuda::writable`).
    fn data_mut(&mut self) -> &mut CudaSlice<f32> {
        debug_assert!(!self.f32_released, "the f32 storage of a CUDA buffer is written while released");
        let shadow = self.shadow.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shadow {
            s.valid = false;
        }
        *self.f32_stale.get_mut() = false;
        &mut self.data
    }
}

/// Contiguous bf16 copies of activations for [`Compute::Bf16`] products: slot 0 for `x`, slot 1
/// for `dy` (`linear_backward` needs both at once). Grow-only, and an outgrown allocation is kept
/// (in `retired`) as long as the backend lives: a recorded CUDA graph may still read it.
#[derive(Default)]
struct Bf16Scratch {
    slots: [Option<CudaSlice<u16>>; 3],
    retired: Vec<CudaSlice<u16>>,
}

/// One CUDA device: its context, one stream, a cuBLAS handle and the compiled kernels. Clones
/// share them.
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Dynamic shared memory `s6_cross_entropy` may use for its row cache (`train_ops.rs`).
    ce_shared_bytes: usize,
    name: String,
    arch: String,
    /// Streaming multiprocessors (the scan's segments fill them: [`scan_segment_count`]).
    sm_count: usize,
    /// The sampling kernel, compiled on first use (`decode.rs`).
    decode: decode::DecodeSlot,
    /// cuBLAS's workspace, ours so that cuBLAS never allocates while a graph is recorded.
    blas_workspace: CudaSlice<u8>,
    /// cuBLASLt's handle and tuned shapes, created on first use (`lt.rs`).
    lt: Mutex<Option<lt::LtState>>,
    /// Page-locked buffers of finished id reads, for the next ones (`decode.rs`).
    pinned_ids: Mutex<Vec<decode::PinnedIds>>,
    /// [`Compute`] as set by [`Cuda::set_compute`] (`compute_code`), shared by the clones.
    compute: AtomicU8,
    /// Activation scratch of the bf16 products; locked for the whole of one product.
    bf16: Mutex<Bf16Scratch>,
    /// Kernels launch with programmatic dependent launch ([`Cuda::pdl`]).
    pdl: bool,
    /// The device runs thread-block clusters (compute capability 9.0 and newer).
    clusters: bool,
    /// The device's L2 cache, bytes ([`Cuda::prefetch_for`]).
    l2_bytes: usize,
    /// Incremented when a CUDA graph recording begins and when it ends (activation copies, see
    /// [`ActCopy`]).
    shadow_epoch: std::sync::atomic::AtomicU64,
    /// [`Backend::set_keeping_activations`]'s hint: bf16 activation copies are then not written
    /// unless forced (bf16.rs).
    keeping_activations: std::sync::atomic::AtomicBool,
    /// The grid barrier's counter pair of the one-kernel block step (`layer_step.rs`), zeroed
    /// once and left ready for the next launch by every launch.
    grid_barrier: CudaSlice<u32>,
    /// Blocks per SM of the two layer-step entries (`layer_step.rs`), asked once.
    layer_step_per_sm: [OnceLock<u32>; 2],
    /// Whether this backend may launch the layer step (the first backend of its device to
    /// launch it), decided at its first launch.
    layer_step_claim: OnceLock<Option<layer_step::LayerStepClaim>>,
}

fn compute_code(c: Compute) -> u8 {
    match c {
        Compute::F32 => 0,
        Compute::Tf32 => 1,
        Compute::Bf16 => 2,
    }
}

/// Bytes of the cuBLAS workspace (NVIDIA recommends 32 MiB on Hopper).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// PTX of one set of kernel sources (`what` names it in errors and keys the cache) for one
/// architecture ("sm_90"), compiled by NVRTC once per process, and kept on disk between
/// processes ([`kernel_cache_dir`]): compiling every kernel takes seconds, every process.
fn compile_cached(what: &'static str, source: &str, arch: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, String), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().map_err(|_| Error::Backend("CUDA kernel cache poisoned".into()))?;
    if let Some(p) = map.get(&(what, arch.to_string())) {
        return Ok(p.clone());
    }
    let defines = kernel_defines();
    // The file's name is a hash of everything the PTX depends on: the sources, the options, the
    // architecture and NVRTC's version (a new toolkit may compile differently).
    let nvrtc_version = {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints; NVRTC is loaded (the caller checked it is present).
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        format!("{major}.{minor}")
    };
    let key = fnv1a64([source, &defines.join(" "), arch, &nvrtc_version, env!("CARGO_PKG_VERSION")]);
    let file = if COMPILE_CHECK.load(Ordering::Relaxed) { None } else { kernel_cache_dir() }
        .map(|d| d.join(format!("{arch}-{key:016x}.ptx")));
    if let Some(src) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        if src.contains(".entry") {
            map.insert((what, arch.to_string()), src.clone());
            return Ok(src);
        }
    }
    // NVRTC wants a &'static str for the architecture; one leak per compilation and process.
    let arch_static: &'static str = Box::leak(arch.to_string().into_boxed_str());
    let opts = CompileOptions { arch: Some(arch_static), options: defines, ..Default::default() };
    let ptx = compile_ptx_with_opts(source, opts)
        .map_err(|e| Error::Backend(format!("NVRTC could not compile {what} for {arch}: {e}")))?;
    let src = ptx.to_src();
    if let Some(f) = &file {
        // Best effort, written whole then renamed (a reader never sees half a file); a cache that
        // cannot be written only costs the next process a compilation.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let written = f.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &src).is_ok()
            && std::fs::rename(&tmp, f).is_ok();
        if !written {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    map.insert((what, arch.to_string()), src.clone());
    Ok(src)
}

/// Set by [`compile_all_kernels`], which checks the compiler's work: no cached PTX then.
static COMPILE_CHECK: AtomicBool = AtomicBool::new(false);

/// Where compiled kernels are kept between processes: `S6_KERNEL_CACHE` (a directory; empty or
/// `0` turns the cache off), else `$XDG_CACHE_HOME/s6/kernels`, else `~/.cache/s6/kernels`.
fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var_os("S6_KERNEL_CACHE") {
        Some(v) if v.is_empty() || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("s6").join("kernels")),
    }
}

/// FNV-1a over the parts (each followed by a 0 byte, so that the split between parts counts):
/// stable across builds and platforms, unlike std's hasher.
fn fnv1a64<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.as_bytes().iter().chain(&[0u8]) {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Compile-time settings of the small-batch GEMV (`kernels/gemv.cu`) from the environment, for
/// measurements: `S6_GEMV_BATCH` (1 to 8 weight vectors in flight per lane at batch 1; default
/// 1), `S6_GEMV_NC1` ([`gemv_nc1`]) and `S6_GEMV_NC24` ([`gemv_nc24`]); of the scan forward
/// (`kernels/scan.cu`), `S6_SCAN_AHEAD` (0 or 1: whether the recurrence loads a step's operands
/// one step ahead; default 1); of the scan backward, `S6_SCAN_BWD_AHEAD` (0 or 1: the same in
/// n16p's recompute and reverse walk; default 1). Read once per process,
/// like the kernels' compilation.
fn kernel_defines() -> Vec<String> {
    let mut defs = Vec::new();
    if let Some(n @ 1..=8) = std::env::var("S6_GEMV_BATCH").ok().and_then(|v| v.trim().parse::<u32>().ok()) {
        defs.push(format!("-DS6_GEMV_BATCH={n}"));
    }
    if let Some(n @ 0..=1) = std::env::var("S6_SCAN_AHEAD").ok().and_then(|v| v.trim().parse::<u32>().ok()) {
        defs.push(format!("-DS6_SCAN_AHEAD={n}"));
    }
    if let Some(n @ 0..=1) = std::env::var("S6_SCAN_BWD_AHEAD").ok().and_then(|v| v.trim().parse::<u32>().ok()) {
        defs.push(format!("-DS6_SCAN_BWD_AHEAD={n}"));
    }
    defs.push(format!("-DS6_GEMV_NC1={}", gemv_nc1()));
    defs.push(format!("-DS6_GEMV_NC24={}", gemv_nc24()));
    defs
}

/// Columns per warp group of the one-row GEMV (`S6_GEMV_NC1` = 1, 2 or 4; default 2, measured in
/// kernels/gemv.cu): the kernel is compiled with it and the grid sized by it.
fn gemv_nc1() -> usize {
    static NC: OnceLock<usize> = OnceLock::new();
    *NC.get_or_init(|| gemv_columns_from_env("S6_GEMV_NC1", 2))
}

/// Columns per warp group of the GEMV for 2 to 4 rows (`S6_GEMV_NC24` = 1, 2 or 4; default 2,
/// measured in kernels/gemv.cu): the kernels are compiled with it and the grid sized by it.
fn gemv_nc24() -> usize {
    static NC: OnceLock<usize> = OnceLock::new();
    *NC.get_or_init(|| gemv_columns_from_env("S6_GEMV_NC24", 2))
}

/// The environment variable `name` if it holds 1, 2 or 4, else `default`.
fn gemv_columns_from_env(name: &str, default: usize) -> usize {
    let n = std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok());
    n.filter(|n| matches!(n, 1 | 2 | 4)).unwrap_or(default)
}

/// PTX of the model kernels (`kernels/*.cu` but the sampling kernel) for one architecture.
fn ptx_for(arch: &str) -> Result<String> {
    compile_cached("the CUDA kernels", &KERNEL_SOURCES.concat(), arch)
}

/// Compiles every kernel source of the backend with NVRTC for `arch` (e.g. "sm_90") without a
/// GPU: NVRTC is a library of the CUDA toolkit and needs no device. For checking the `.cu` files
/// on machines that have NVRTC but no GPU (CI does, `.ci/run`); errors carry the compiler's log,
/// or name the kernels the backend loads that the compiled modules lack.
pub fn compile_all_kernels(arch: &str) -> Result<()> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Backend("NVRTC (libnvrtc.so) cannot be loaded".into()));
    }
    COMPILE_CHECK.store(true, Ordering::Relaxed);
    let ptx = ptx_for(arch)?;
    let sample = decode::sample_ptx(arch)?;
    // Every kernel the backend loads by name is an entry of the module it loads it from.
    let names = KERNELS.iter().chain(GEMV_KERNELS.iter().flatten()).chain(GEMV_NORM_KERNELS.iter().flatten());
    let missing: Vec<&str> = names.filter(|n| !ptx.contains(&format!(".entry {n}("))).copied().collect();
    if !missing.is_empty() || !sample.contains(".entry s6_sample(") {
        return Err(Error::Backend(format!(
            "NVRTC compiled the CUDA kernels for {arch}, but kernels the backend loads are missing from them: {}",
            if missing.is_empty() { "s6_sample".to_string() } else { missing.join(", ") }
        )));
    }
    Ok(())
}

/// Names of the CUDA libraries that cannot be loaded (dynamic loading: checked before any call,
/// because cudarc panics on a missing library).
fn missing_libraries() -> Vec<&'static str> {
    let mut missing = Vec::new();
    // SAFETY: these only try to dlopen the libraries.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("the NVIDIA driver library (libcuda.so): no NVIDIA driver is installed");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("NVRTC (libnvrtc.so, CUDA toolkit): add its lib directory to LD_LIBRARY_PATH");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            missing.push("cuBLAS (libcublas.so, CUDA toolkit): add its lib directory to LD_LIBRARY_PATH");
        }
    }
    missing
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Backend(format!("CUDA {what}: {e}"))
}

fn blas_err(e: cudarc::cublas::result::CublasError) -> Error {
    Error::Backend(format!("cuBLAS: {e:?}"))
}

/// Lets the device's default memory pool keep freed memory instead of returning it to the driver
/// at every synchronization: the models allocate their activations per call, and a warm pool
/// makes that cheap. Best effort: failure only costs speed.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    // SAFETY: plain driver calls on a valid device handle; the attribute value is a u64.
    unsafe {
        let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
        if sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let mut threshold: u64 = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool.assume_init(),
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

/// Grid for a grid-stride loop over `n` elements.
fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Backend(format!("CUDA: {what} = {v} does not fit the kernels' 32-bit sizes")))
}

impl Cuda {
    /// Opens device `ordinal` (0 for `--device cuda`), compiles the kernels (once per process and
    /// architecture) and creates a cuBLAS handle. Fails with a message naming what is missing when
    /// there is no driver, no toolkit library or no such device.
    pub fn new(ordinal: usize) -> Result<Self> {
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(Error::Backend(format!("CUDA is not available: cannot load {}", missing.join("; "))));
        }
        let count = CudaContext::device_count().map_err(driver_err("device count"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Backend(format!(
                "CUDA device cuda:{ordinal} requested, but {count} CUDA device(s) are visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("context creation"))?;
        // One stream: ordering is the stream's; no per-buffer events needed.
        // SAFETY: all work of this backend is issued on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream: only such streams can be captured
        // into CUDA graphs (decode.rs).
        let stream = ctx.new_stream().map_err(driver_err("stream creation"))?;
        keep_pool_memory(&ctx);
        let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let name = ctx.name().map_err(driver_err("device name"))?;
        let module =
            ctx.load_module(Ptx::from_src(ptx_for(&arch)?)).map_err(driver_err("loading the compiled kernels"))?;
        let mut funcs = HashMap::new();
        let gemv = GEMV_KERNELS.iter().chain(&GEMV_NORM_KERNELS).flatten();
        for &k in KERNELS.iter().chain(gemv) {
            funcs.insert(k, module.load_function(k).map_err(driver_err(k))?);
        }
        // Both cross-entropy entries (f32 and bf16 gradient) may take the row cache.
        let ce_shared_bytes = train_ops::enable_cross_entropy_row_cache(&ctx, &funcs["s6_cross_entropy"])?
            .min(train_ops::enable_cross_entropy_row_cache(&ctx, &funcs["s6_cross_entropy_d16"])?);
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err)?;
        // Plain fp32 products (no TF32): results comparable with the CPU backend.
        // SAFETY: a valid handle.
        unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
                .result()
                .map_err(blas_err)?;
        }
        let blas_workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES).map_err(driver_err("allocation"))?;
        {
            let (wp, _s) = blas_workspace.device_ptr(&stream);
            // SAFETY: a valid handle and a live allocation of that size, kept in `Inner` as long
            // as the handle.
            unsafe {
                blas_sys::cublasSetWorkspace_v2(*blas.handle(), wp as *mut std::ffi::c_void, BLAS_WORKSPACE_BYTES)
                    .result()
                    .map_err(blas_err)?;
            }
        }
        let decode = decode::DecodeSlot::new();
        let grid_barrier = stream.alloc_zeros::<u32>(2).map_err(driver_err("allocation"))?;
        let l2_bytes = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_err(driver_err("L2 cache size"))?
            .max(0) as usize;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("multiprocessor count"))?
            .max(1) as usize;
        Ok(Cuda {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                funcs,
                ce_shared_bytes,
                name,
                arch,
                sm_count,
                decode,
                blas_workspace,
                lt: Mutex::new(None),
                pinned_ids: Mutex::new(Vec::new()),
                compute: AtomicU8::new(compute_code(Compute::F32)),
                bf16: Mutex::new(Bf16Scratch::default()),
                pdl: major >= 9 && pdl_wanted(),
                clusters: major >= 9,
                shadow_epoch: std::sync::atomic::AtomicU64::new(0),
                keeping_activations: std::sync::atomic::AtomicBool::new(false),
                l2_bytes,
                grid_barrier,
                layer_step_per_sm: [OnceLock::new(), OnceLock::new()],
                layer_step_claim: OnceLock::new(),
            }),
        })
    }

    /// The `prefetch` argument of a decoding kernel whose weights take `bytes` ([`Prefetch`]).
    fn prefetch_for(&self, bytes: usize) -> u32 {
        u32::from(match prefetch_mode() {
            Prefetch::Off => false,
            Prefetch::All => true,
            Prefetch::Small => bytes.saturating_mul(8) <= self.inner.l2_bytes,
        })
    }

    /// The device address of the grid barrier's counter pair (`layer_step.rs`).
    fn grid_barrier_ptr(&self) -> u64 {
        let (p, _sync) = self.inner.grid_barrier.device_ptr(self.stream());
        p
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Whether `launch!` uses programmatic dependent launch: a kernel may then be scheduled
    /// while the previous one in the stream still runs (every kernel of ours opens with
    /// `S6_PDL_ENTRY()`, kernels/prelude.cu, which waits for the previous one before touching
    /// memory), so that the launch latency between the many small kernels of a decoding step
    /// overlaps the work. Hopper (sm_90) and newer.
    fn pdl(&self) -> bool {
        self.inner.pdl
    }

    /// `cuLaunchKernelEx` with the programmatic-stream-serialization attribute.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and types, and every pointer in them
    /// must be valid for what the kernel does with it.
    unsafe fn launch_pdl(
        &self,
        func: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut KernelArgs,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        self.inner.ctx.bind_to_thread()?;
        // SAFETY: a zeroed attribute is a valid plain-data value; the id and union field set
        // below are the ones the driver reads.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream().cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut ptrs = args.pointers();
        // SAFETY: the caller's contract; `config`, `attr`, `args` and `ptrs` outlive the call.
        unsafe { sys::cuLaunchKernelEx(&config, func.cu_function(), ptrs.as_mut_ptr(), std::ptr::null_mut()).result() }
    }

    /// Uninitialized device memory for `n` values (at least one), for scratch and outputs that
    /// the kernels write whole before anything reads them (no memset).
    fn scratch<T: cudarc::driver::DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller's kernels write the values before they are read (see each use).
        unsafe { self.stream().alloc::<T>(n.max(1)) }.map_err(driver_err("scratch allocation"))
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.inner.funcs.get(name).ok_or_else(|| Error::Backend(format!("CUDA kernel {name} not loaded")))
    }

    /// Device pointer of a buffer plus an element offset, checked against its length; the f32
    /// values are made current first where only a bf16 copy held them ([`Cuda::fresh`]).
    fn ptr(&self, buf: &CudaBuf, offset: usize, needed: usize, what: &str) -> Result<u64> {
        let p = self.ptr_unread(buf, offset, needed, what)?;
        self.fresh(buf, what)?;
        Ok(p)
    }

    /// [`Cuda::ptr`] for a kernel that will not read the f32 values behind it (it reads the bf16
    /// copy instead): no cast back.
    fn ptr_unread(&self, buf: &CudaBuf, offset: usize, needed: usize, what: &str) -> Result<u64> {
        if offset + needed > buf.len {
            return Err(Error::Backend(format!(
                "CUDA {what}: buffer of {} floats, access to {} needed",
                buf.len,
                offset + needed
            )));
        }
        let (p, _sync) = buf.data.device_ptr(self.stream());
        Ok(p + 4 * offset as u64)
    }

    /// [`Cuda::ptr`] of an optional buffer from its start; 0 (the kernels' "none") without one.
    fn ptr_opt(&self, buf: Option<&CudaBuf>, needed: usize, what: &str) -> Result<u64> {
        buf.map_or(Ok(0), |b| self.ptr(b, 0, needed, what))
    }

    fn ptr_mut(&self, buf: &mut CudaBuf, offset: usize, needed: usize, what: &str) -> Result<u64> {
        if offset + needed > buf.len {
            return Err(Error::Backend(format!(
                "CUDA {what}: buffer of {} floats, access to {} needed",
                buf.len,
                offset + needed
            )));
        }
        // A write of part of the buffer keeps the rest: the rest must be current.
        self.restore_f32(buf)?;
        self.fresh(buf, what)?;
        let stream = self.inner.stream.clone();
        let (p, _sync) = buf.data_mut().device_ptr_mut(&stream);
        Ok(p + 4 * offset as u64)
    }

    /// Elements a view touches for `rows` rows of `cols` columns.
    fn view_extent(ld: usize, rows: usize, cols: usize) -> usize {
        if rows == 0 {
            0
        } else {
            (rows - 1) * ld + cols
        }
    }

    fn upload_u32(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream().clone_htod(v).map_err(driver_err("upload"))
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream().synchronize().map_err(driver_err("synchronize"))
    }

    /// Reads (or, with `set`, writes) a u64 attribute of the device's default memory pool, where
    /// the buffers are allocated (stream-ordered allocation). `None` when the driver refuses.
    fn pool_attr(&self, attr: cudarc::driver::sys::CUmemPool_attribute, set: Option<u64>) -> Option<u64> {
        use cudarc::driver::sys;
        self.inner.ctx.bind_to_thread().ok()?;
        // SAFETY: plain driver calls on a valid device handle; these attributes are u64 values.
        unsafe {
            let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
            if sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), self.inner.ctx.cu_device())
                != sys::CUresult::CUDA_SUCCESS
            {
                return None;
            }
            let pool = pool.assume_init();
            let mut v: u64 = set.unwrap_or(0);
            let r = match set {
                Some(_) => sys::cuMemPoolSetAttribute(pool, attr, (&mut v as *mut u64).cast()),
                None => sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()),
            };
            (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
        }
    }

    /// Sets how matrix products are computed ([`Compute`]) by every clone of this backend:
    /// plain fp32 (the default), TF32 tensor cores, or bf16 inputs with fp32 accumulation
    /// ([`Compute::Bf16`]: cached bf16 copies of the weights, activations cast per product).
    pub fn set_compute(&self, compute: Compute) -> Result<()> {
        let mode = match compute {
            Compute::F32 | Compute::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            Compute::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: a valid handle; the mode applies to the calls issued after it.
        unsafe { blas_sys::cublasSetMathMode(*self.inner.blas.handle(), mode).result().map_err(blas_err)? };
        self.inner.compute.store(compute_code(compute), Ordering::SeqCst);
        Ok(())
    }

    /// How matrix products are computed now ([`Cuda::set_compute`]).
    pub fn compute(&self) -> Compute {
        match self.inner.compute.load(Ordering::SeqCst) {
            1 => Compute::Tf32,
            2 => Compute::Bf16,
            _ => Compute::F32,
        }
    }

    /// The device's ordinal (`N` of `cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.inner.ctx.ordinal()
    }

    /// The device's compute architecture, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.inner.arch
    }

    /// The segments of a d_state-16 scan with the kernels `k` ([`scan_segment_count`]; the
    /// segment length a multiple of 64 steps, whole chunks of every block shape) and their
    /// scratch.
    pub(crate) fn scan_segments(&self, k: &ScanN16, batch: usize, di: usize, seqlen: usize) -> Result<ScanSegments> {
        let channels = batch * di;
        let wanted = scan_segment_count(batch * di.div_ceil(k.cpb as usize), seqlen, self.inner.sm_count);
        let len = seqlen.div_ceil(wanted).next_multiple_of(64).min(seqlen.max(1));
        let count = seqlen.div_ceil(len).max(1);
        if count == 1 {
            return Ok(ScanSegments { count: 1, len: u32_of("seqlen", seqlen.max(1))?, h: 0, sum: 0, _scratch: None });
        }
        let entries = channels * (count - 1);
        // Written whole by the first launch (every channel, segments 0..count-1) before the
        // second reads it.
        let scratch = self.scratch::<f32>(entries * 17)?;
        let h = {
            let (h, _sync) = scratch.device_ptr(self.stream());
            h
        };
        Ok(ScanSegments {
            count: u32_of("scan segments", count)?,
            len: u32_of("scan segment length", len)?,
            h,
            sum: h + (entries * 16 * std::mem::size_of::<f32>()) as u64,
            _scratch: Some(scratch),
        })
    }

    /// The first structure's scan kernel for `n` states (d_state 16 has its own: [`scan_n16`]).
    fn scan_kernel(n: usize) -> Result<(&'static str, u32, u32)> {
        // (kernel, lanes per channel, channels per block)
        let (name, split, cpb) = match n {
            0 => return Err(Error::Backend("CUDA scan: d_state must be at least 1".into())),
            1..=4 => ("s6_scan_n4", 4, 32),
            5..=8 => ("s6_scan_n8", 4, 32),
            9..=16 => ("s6_scan_n16", 4, 32),
            17..=32 => ("s6_scan_n32", 4, 32),
            33..=MAX_D_STATE => ("s6_scan_n64", 4, 32),
            _ => {
                return Err(Error::Backend(format!(
                    "CUDA scan: d_state {n} is over the kernels' maximum of {MAX_D_STATE}"
                )))
            }
        };
        Ok((name, split, cpb))
    }
}

/// The d_state-16 forward scan kernels of one block shape (kernels/scan.cu, second structure: 4
/// lanes per channel, `4 · cpb` threads): the f32 entry, its variant that also writes y in bf16
/// (bf16.rs: activation copies), the entry with bf16 activations (scan_bf16.rs), and the two
/// segments' first launches ([`ScanSegments`]: f32 and bf16 activations).
pub(crate) struct ScanN16 {
    /// The shape's name (`S6_SCAN_N16`).
    pub name: &'static str,
    pub f32: &'static str,
    pub f32_with_copy: &'static str,
    pub bf16: &'static str,
    /// u, Δ, z and y in bf16, B and C in f32 (activations held in bf16 alone, bf16.rs).
    pub x16: &'static str,
    pub seg_f32: &'static str,
    pub seg_bf16: &'static str,
    pub seg_x16: &'static str,
    /// Channels per block.
    pub cpb: u32,
}

/// 32 channels per block and chunks of 32 steps; 16 per block and chunks of 64 ([`scan_n16`]
/// chooses).
const SCAN_N16: [ScanN16; 2] = [
    ScanN16 {
        name: "v4c32",
        f32: "s6_scan_n16_v4c32",
        f32_with_copy: "s6_scan_n16_v4c32_b16",
        bf16: "s6_scan_n16_bf16_v4c32",
        x16: "s6_scan_n16_x16_v4c32",
        seg_f32: "s6_scan_n16_seg_v4c32",
        seg_bf16: "s6_scan_n16_seg_bf16_v4c32",
        seg_x16: "s6_scan_n16_seg_x16_v4c32",
        cpb: 32,
    },
    ScanN16 {
        name: "v4c16t64",
        f32: "s6_scan_n16_v4c16t64",
        f32_with_copy: "s6_scan_n16_v4c16t64_b16",
        bf16: "s6_scan_n16_bf16_v4c16t64",
        x16: "s6_scan_n16_x16_v4c16t64",
        seg_f32: "s6_scan_n16_seg_v4c16t64",
        seg_bf16: "s6_scan_n16_seg_bf16_v4c16t64",
        seg_x16: "s6_scan_n16_seg_x16_v4c16t64",
        cpb: 16,
    },
];

/// How a d_state-16 scan's sequence is cut into segments that run side by side (kernels/scan.cu,
/// "Segments"): `count` segments of `len` steps (the last one shorter), and, with more than one,
/// the scratch of the first launch (16 states and one ΣΔ per channel and segment but the last).
pub(crate) struct ScanSegments {
    pub count: u32,
    pub len: u32,
    pub h: u64,
    pub sum: u64,
    _scratch: Option<CudaSlice<f32>>,
}

/// Segments are at least this many steps long (the first launch repeats most of a segment's
/// work, so short ones cost more than the parallelism gives).
const SCAN_SEGMENT_MIN_LEN: usize = 512;

static SCAN_SEGMENTS_FORCED: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Forces the number of segments of the d_state-16 scans (`Some(1)`: never cut; `None`: back to
/// `S6_SCAN_SEGMENTS` or the rule of `scan_segment_count`), for tests and measurements.
pub fn set_scan_segments(count: Option<usize>) {
    SCAN_SEGMENTS_FORCED.store(count.map_or(usize::MAX - 1, |c| c.max(1)), Ordering::Relaxed);
}

/// Segments for a d_state-16 scan of `blocks` blocks (of channels) over `seqlen` steps on `sms`
/// multiprocessors: only where the blocks do not cover the device once (a few long sequences),
/// enough to cover it, none shorter than [`SCAN_SEGMENT_MIN_LEN`]. With a block or more per
/// multiprocessor, segments measured slower on an H100 (docs/BENCHMARKS.md, session 13: B = 4,
/// D = 2048, 512 blocks: 0.267 ms with none, 0.386 with 4). `S6_SCAN_SEGMENTS=N` (read once) or
/// [`set_scan_segments`] force N (at most one per step).
pub(crate) fn scan_segment_count(blocks: usize, seqlen: usize, sms: usize) -> usize {
    let forced = match SCAN_SEGMENTS_FORCED.load(Ordering::Relaxed) {
        usize::MAX => {
            let env = std::env::var("S6_SCAN_SEGMENTS").ok().and_then(|v| v.trim().parse::<usize>().ok());
            let v = env.map_or(usize::MAX - 1, |c| c.max(1));
            SCAN_SEGMENTS_FORCED.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    };
    let count = if forced != usize::MAX - 1 {
        forced
    } else if blocks >= sms {
        1
    } else {
        sms.div_ceil(blocks.max(1)).min(seqlen / SCAN_SEGMENT_MIN_LEN)
    };
    count.clamp(1, seqlen.max(1))
}

/// The d_state-16 scan kernels for `channels` = batch · d_inner on a device of `sms`
/// multiprocessors: 16 channels per block with chunks of 64 while those blocks fit the device in
/// one wave ([`SCAN_NARROW_BLOCKS_PER_SM`] per multiprocessor), else 32 per block with chunks of
/// 32. `S6_SCAN_N16=NAME` (a [`ScanN16::name`]) forces one for every size, for measurements (read
/// once per process).
pub(crate) fn scan_n16(channels: usize, sms: usize) -> &'static ScanN16 {
    static FORCED: OnceLock<Option<usize>> = OnceLock::new();
    let forced = FORCED.get_or_init(|| forced_by_env("S6_SCAN_N16", SCAN_N16.iter().map(|k| k.name)));
    // Indices into SCAN_N16.
    const WIDE: usize = 0;
    const NARROW: usize = 1;
    let narrow_blocks = channels.div_ceil(SCAN_N16[NARROW].cpb as usize);
    let by_size = if narrow_blocks <= SCAN_NARROW_BLOCKS_PER_SM * sms { NARROW } else { WIDE };
    &SCAN_N16[forced.unwrap_or(by_size)]
}

/// Which of `names` the environment variable `var` holds (its index), for kernel choices forced
/// in measurements (`S6_SCAN_N16`, `S6_SCAN_BWD`); `None` if unset or none of them. The callers
/// read it once per process.
pub(crate) fn forced_by_env<'a>(var: &str, names: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    let v = std::env::var(var).ok()?;
    names.into_iter().position(|name| name == v.trim())
}

/// Blocks of the narrow d_state-16 scan shape (`v4c16t64`: 64 threads of ~220 registers) one
/// multiprocessor holds. Past one wave of them the wide shape (`v4c32`, 128 threads, 4 blocks per
/// multiprocessor) is faster: measured on an H100 (docs/BENCHMARKS.md, session 16, L = 2048, bf16,
/// with the recurrence's operands loaded a step ahead), 16 per block took 0.163 ms against 0.186
/// for 32 at 8,192 channels (512 blocks, under one wave of 528), but 0.294 against 0.228 at 8,704
/// (544 blocks), 0.306 against 0.249 at 12,288 and 0.475 against 0.406 at 24,576; at 8,448 (528
/// blocks, one wave exactly) 0.165 against 0.154. Before session 16 the threshold was 16,384
/// channels, and a third shape (64 channels per block, chunks of 16) ran from 131,072: it was
/// slower than 32 per block everywhere once 32 per block loaded a step ahead (8.44 against 7.87 ms
/// at 524,288 channels, 1.4B prefill's shape) and was removed.
const SCAN_NARROW_BLOCKS_PER_SM: usize = 4;

/// Launches a kernel of ours on the backend's stream: `launch!(self, func, cfg, what; args…)`,
/// every argument a plain value (pointers as `u64`). With programmatic dependent launch (see
/// [`Cuda::pdl`]) through `cuLaunchKernelEx`, else through cudarc's launch builder.
macro_rules! launch {
    ($self:expr, $func:expr, $cfg:expr, $what:expr; $($arg:expr),* $(,)?) => {{
        let func = $func;
        if $self.pdl() {
            let mut args = $crate::backend::cuda::KernelArgs::default();
            $( args.push(&$arg); )*
            // SAFETY: as below; `args` outlives the call, which copies the values.
            unsafe { $self.launch_pdl(func, $cfg, &mut args) }.map_err(driver_err($what))?;
        } else {
            let mut b = $self.stream().launch_builder(func);
            $( b.arg(&$arg); )*
            // SAFETY: argument types and counts match the kernel signatures in kernels/*.cu; every
            // pointer was bounds-checked against its buffer by `ptr`/`ptr_mut`.
            unsafe { b.launch($cfg) }.map_err(driver_err($what))?;
        }
    }};
}

/// The argument values of one kernel launch, each copied into the start of an 8-byte slot (our
/// kernels take pointers as `u64`, sizes as `u32`/`u64` and scalars as `f32`): one allocation
/// per launch, however many arguments. `cuLaunchKernelEx` reads the slots' addresses
/// ([`KernelArgs::pointers`]), taken once every argument is in.
#[derive(Default)]
pub(crate) struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    /// Appends a copy of `v` (at most 8 bytes).
    pub(crate) fn push<T: Copy + 'static>(&mut self, v: &T) {
        const { assert!(std::mem::size_of::<T>() <= 8, "kernel arguments are at most 8 bytes") };
        if self.slots.capacity() == 0 {
            self.slots.reserve(24);
        }
        let mut slot = 0u64;
        // SAFETY: T is Copy and at most 8 bytes; its bytes go to the start of the slot, where
        // the kernel reads a parameter of T's size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v as *const T).cast::<u8>(),
                (&mut slot as *mut u64).cast::<u8>(),
                std::mem::size_of::<T>(),
            )
        };
        self.slots.push(slot);
    }

    /// The address of every argument's slot, in order (valid while `self` is neither moved into
    /// nor pushed to).
    fn pointers(&mut self) -> Vec<*mut std::ffi::c_void> {
        self.slots.iter_mut().map(|s| (s as *mut u64).cast::<std::ffi::c_void>()).collect()
    }
}

/// Whether kernels launch with programmatic dependent launch where the device has it (compute
/// capability 9.0 and newer); `S6_PDL=0` turns it off, for side-by-side measurements.
fn pdl_wanted() -> bool {
    static ON: Switch = Switch::new("S6_PDL", true);
    ON.on()
}

impl Cuda {
    /// The fused residual add + RMSNorm at `r` (the residual; the sum goes back there when `ro`
    /// is 0, else to `ro`): the kernel chosen by the row count, the output in f32 and/or bf16.
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm_at(
        &self,
        r: u64,
        ro: u64,
        delta: Option<&CudaBuf>,
        weight: &CudaBuf,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        // delta's address; its f32 values are made current below unless read as bf16.
        let dp = match delta {
            Some(b) => self.ptr_unread(b, 0, rows * dim, "rmsnorm delta")?,
            None => 0,
        };
        let wp = self.ptr(weight, 0, dim, "rmsnorm weight")?;
        // The output in f32 and bf16, or in bf16 alone (bf16.rs: f32 pointer null).
        let out_at = self.act_out(out, rows * dim, true, "rmsnorm out")?;
        let (o, target) = (out_at.f32, out_at.b16);
        let d = u32_of("dim", dim)?;
        // Many rows (prefill, training): a warp per row (elementwise.cu). Fewer: a block per row,
        // whose sums the fused decoding block's norm repeats bit for bit, and which decodes
        // faster: with the warp kernel at 16–128 sequences 1.4B decoding was 4–6% slower (H100,
        // docs/BENCHMARKS.md, session 12), prefill 1.5% faster.
        let warp = rows >= NORM_WARP_MIN_ROWS
            && norm_warp_enabled()
            && dim.is_multiple_of(4)
            && dim <= NORM_WARP_MAX_DIM
            && [r, ro, dp, wp, o].iter().all(|p| p.is_multiple_of(16));
        // The block output held in bf16 alone (prefill) is read as bf16 by the warp kernel with a
        // bf16 output; every other path reads its f32 values.
        let d16 = match (delta, warp && target.is_some()) {
            (Some(b), true) => self.held_bf16(&View::full(b, dim), rows, dim)?,
            _ => None,
        };
        if let (Some(b), None) = (delta, d16) {
            self.fresh(b, "rmsnorm delta")?;
        }
        if warp {
            let cfg = LaunchConfig {
                grid_dim: (u32_of("norm blocks", rows.div_ceil(NORM_WARP_ROWS))?, 1, 1),
                block_dim: (32 * NORM_WARP_ROWS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let n = u32_of("rows", rows)?;
            match (target, d16) {
                (Some(o16), Some(d16)) => {
                    launch!(self, self.func("s6_add_rmsnorm_warp_d16")?, cfg, "add_rmsnorm"; r, ro, d16, wp, o, o16, n, d, eps)
                }
                (Some(o16), None) => {
                    launch!(self, self.func("s6_add_rmsnorm_warp_b16")?, cfg, "add_rmsnorm"; r, ro, dp, wp, o, o16, n, d, eps)
                }
                (None, _) => {
                    launch!(self, self.func("s6_add_rmsnorm_warp")?, cfg, "add_rmsnorm"; r, ro, dp, wp, o, n, d, eps)
                }
            }
            return self.act_out_written(out, &out_at, rows * dim);
        }
        let cfg = LaunchConfig {
            grid_dim: (u32_of("rows", rows)?, 1, 1),
            block_dim: (RMSNORM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // With bf16 activation copies (bf16.rs) the next product's input is written in bf16 too.
        match target {
            Some(o16) => {
                launch!(self, self.func("s6_add_rmsnorm_b16")?, cfg, "add_rmsnorm"; r, ro, dp, wp, o, o16, d, eps)
            }
            None => launch!(self, self.func("s6_add_rmsnorm")?, cfg, "add_rmsnorm"; r, ro, dp, wp, o, d, eps),
        }
        self.act_out_written(out, &out_at, rows * dim)
    }

    /// `linear` for `1..=GEMV_MAX_ROWS` rows and `k > 0` by `s6_gemv_r{rows}` (see
    /// [`GEMV_MAX_ROWS`]); plain fp32 FMA under `F32` and `Tf32` (`Bf16` has its own kernel,
    /// `bf16.rs`).
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        bias: Option<&CudaBuf>,
        out: &mut CudaBuf,
    ) -> Result<()> {
        debug_assert!((1..=GEMV_MAX_ROWS).contains(&rows) && k > 0 && n > 0);
        let xp = self.ptr(x.buf, x.offset, Self::view_extent(x.ld, rows, k), "linear x")?;
        let wp = self.ptr(w, 0, n * k, "linear weight")?;
        let bp = self.ptr_opt(bias, n, "linear bias")?;
        let o = self.ptr_mut(out, 0, rows * n, "linear out")?;
        // 16-byte loads need every row of x and w 16-byte aligned.
        self.launch_gemv(0, (xp, x.ld), wp, (rows, k, n), bp, o, GemvMode::Write)
    }

    /// The `beta` of a product written into `o` (`rows × n`, device pointer bounds checked by the
    /// caller) by cuBLAS: with a bias (`bp` non-zero) the rows are first filled with it and the
    /// product added (1), else written (0).
    fn bias_beta(&self, o: u64, bp: u64, rows: usize, n: usize) -> Result<f32> {
        if bp == 0 {
            return Ok(0.0);
        }
        let (r, nn) = (u32_of("rows", rows)?, u32_of("n", n)?);
        launch!(self, self.func("s6_fill_bias")?, grid_1d(rows * n), "bias"; o, bp, r, nn);
        Ok(1.0)
    }

    /// The load width (`vec`) of a GEMV of `set` (0: f32 weights, 1: bf16) over x (pointer, row
    /// stride), the weight and `k`, and the norm weight of [`GemvMode::NormConv`], whose float4
    /// loads go with x's: the widest whose alignment every pointer and row allows.
    fn gemv_vec(set: usize, (xp, ld): (u64, usize), wp: u64, k: usize, norm: Option<u64>) -> u32 {
        let x_vec = xp.is_multiple_of(16) && ld.is_multiple_of(4) && norm.is_none_or(|p| p.is_multiple_of(16));
        if set == 0 {
            return u32::from(x_vec && k.is_multiple_of(4) && wp.is_multiple_of(16));
        }
        // The bf16 copy is 256-byte aligned with rows k values apart.
        if x_vec && k.is_multiple_of(8) {
            2
        } else if x_vec && k.is_multiple_of(4) {
            1
        } else {
            0
        }
    }

    /// Launches `GEMV_KERNELS[set][rows - 1]` (`set` 0: f32 weights, 1: their bf16 copies), or
    /// its `GEMV_NORM_KERNELS` twin, on bounds-checked device pointers: x with row stride `ld`,
    /// the weight, the bias (0: none), the output, at the widest loads the pointers allow
    /// ([`Cuda::gemv_vec`]). The grid: columns per warp group as in the kernels' entry points,
    /// then the fewest warps per column (1, 2, 4 or 8) that still give about two blocks per SM on
    /// a large GPU.
    #[allow(clippy::too_many_arguments)]
    fn launch_gemv(
        &self,
        set: usize,
        (xp, ld): (u64, usize),
        wp: u64,
        (rows, k, n): (usize, usize, usize),
        bp: u64,
        o: u64,
        mode: GemvMode,
    ) -> Result<()> {
        let norm = match &mode {
            GemvMode::NormConv(c) => Some(c.norm),
            GemvMode::Write | GemvMode::Accumulate => None,
        };
        let vec = Self::gemv_vec(set, (xp, ld), wp, k, norm);
        let nc = match rows {
            1 => gemv_nc1(),
            2..=4 => gemv_nc24(),
            _ => 2,
        };
        let mut split = 1;
        while split < GEMV_WARPS && n.div_ceil(nc * GEMV_WARPS / split) < 264 {
            split *= 2;
        }
        let blocks = n.div_ceil(nc * GEMV_WARPS / split);
        let cfg = LaunchConfig {
            grid_dim: (u32_of("linear blocks", blocks)?, 1, 1),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ld, nn, kk, sp, pf) = (
            u32_of("ld", ld)?,
            u32_of("n", n)?,
            u32_of("k", k)?,
            split as u32,
            self.prefetch_for(n * k * if set == 1 { 2 } else { 4 }),
        );
        match mode {
            GemvMode::Write | GemvMode::Accumulate => {
                let acc = u32::from(matches!(mode, GemvMode::Accumulate));
                launch!(self, self.func(GEMV_KERNELS[set][rows - 1])?, cfg, "gemv"; xp, ld, wp, bp, o, nn, kk, sp, vec, pf, acc);
            }
            GemvMode::NormConv(c) => {
                let NormConv { norm, eps, conv_w, conv_b, conv_state, u, ch, kconv } = c;
                launch!(self, self.func(GEMV_NORM_KERNELS[set][rows - 1])?, cfg, "gemv (norm, conv)";
                    xp, ld, wp, bp, o, nn, kk, sp, vec, pf, norm, eps, conv_w, conv_b, conv_state, u, ch, kconv);
            }
        }
        Ok(())
    }
}

mod backward;
pub use backward::set_scan_bwd_scratch_budget;
mod bf16;
pub use bf16::{
    act_bf16_enabled, bf16_storage_enabled, bf16_storage_train_enabled, reset_act_bf16, set_act_bf16, set_bf16_storage,
    set_bf16_storage_train,
};
mod conv;
pub mod layer_step;
mod lt;
pub mod mixer_step;
pub use lt::{lt_enabled, set_lt};
mod mma;
pub use mma::set_mma_max_rows;
pub mod scan_bf16;
mod train_ops;

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Ids = CudaIds;
    type Graph = cudarc::driver::CudaGraph;
    type IdsRead = decode::CudaIdsRead;

    // Decoding ops: in decode.rs.
    fn ids_from_slice(&self, ids: &[u32]) -> Result<CudaIds> {
        self.ids_from_slice_impl(ids)
    }
    fn ids_to_vec(&self, ids: &CudaIds) -> Result<Vec<u32>> {
        self.ids_to_vec_impl(ids)
    }
    fn ids_read_start(&self, ids: &CudaIds) -> Result<decode::CudaIdsRead> {
        self.ids_read_start_impl(ids)
    }
    fn ids_read_finish(&self, read: decode::CudaIdsRead) -> Result<Vec<u32>> {
        self.ids_read_finish_impl(read)
    }
    fn embedding_ids(&self, table: &CudaBuf, ids: &CudaIds, dim: usize, out: &mut CudaBuf) -> Result<()> {
        self.embedding_ids_impl(table, ids, dim, out)
    }
    fn sample(
        &self,
        logits: &CudaBuf,
        vocab: usize,
        params: &crate::generate::SamplingParams,
        seen: &mut CudaIds,
        draws: &mut CudaIds,
        out: &mut CudaIds,
    ) -> Result<()> {
        self.sample_impl(logits, vocab, params, seen, draws, out)
    }
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>> {
        self.capture_impl(work)
    }
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        self.replay_impl(graph)
    }
    fn records_graphs(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        format!("cuda:{} ({}, {})", self.inner.ctx.ordinal(), self.inner.name, self.inner.arch)
    }

    fn zeros(&self, n: usize) -> Result<CudaBuf> {
        let data = self.stream().alloc_zeros::<f32>(n.max(1)).map_err(driver_err("allocation"))?;
        Ok(CudaBuf::new(data, n))
    }

    fn uninit(&self, n: usize) -> Result<CudaBuf> {
        // No memset (a training step allocates gigabytes): the trait's contract is that an op
        // writes the whole buffer before it is read, as for the kernels' scratch.
        Ok(CudaBuf::new(self.scratch(n)?, n))
    }

    fn from_vec(&self, data: Vec<f32>) -> Result<CudaBuf> {
        if data.is_empty() {
            return self.zeros(0);
        }
        let len = data.len();
        Ok(CudaBuf::new(self.stream().clone_htod(&data).map_err(driver_err("upload"))?, len))
    }

    fn to_vec(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        if buf.len == 0 {
            return Ok(Vec::new());
        }
        self.fresh(buf, "download")?;
        let v = self.stream().clone_dtoh(&buf.data).map_err(driver_err("download"))?;
        self.synchronize()?;
        Ok(v)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn synchronize(&self) -> Result<()> {
        Cuda::synchronize(self)
    }

    fn embedding(&self, table: &CudaBuf, ids: &[u32], dim: usize, out: &mut CudaBuf) -> Result<()> {
        let rows = ids.len();
        if rows * dim == 0 {
            return Ok(());
        }
        let ids_dev = self.upload_u32(ids)?;
        let (ids_p, _s) = ids_dev.device_ptr(self.stream());
        let t = self.ptr(table, 0, table.len, "embedding table")?;
        let o = self.ptr_mut(out, 0, rows * dim, "embedding out")?;
        let (r, d) = (u32_of("rows", rows)?, u32_of("dim", dim)?);
        launch!(self, self.func("s6_embedding")?, grid_1d(rows * dim), "embedding"; t, ids_p, o, r, d);
        Ok(())
    }

    fn linear(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        bias: Option<&CudaBuf>,
        out: &mut CudaBuf,
    ) -> Result<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        if k > 0 && self.compute() == Compute::Bf16 {
            return self.linear_bf16(x, rows, k, w, n, bias, out, gemv_enabled());
        }
        if k > 0 && rows <= GEMV_MAX_ROWS && gemv_enabled() {
            return self.gemv(x, rows, k, w, n, bias, out);
        }
        let o = self.ptr_mut(out, 0, rows * n, "linear out")?;
        let bp = self.ptr_opt(bias, n, "linear bias")?;
        let beta = self.bias_beta(o, bp, rows, n)?;
        if k == 0 {
            if bias.is_none() {
                self.stream()
                    .memset_zeros(&mut self.writable(out)?.slice_mut(0..rows * n))
                    .map_err(driver_err("memset"))?;
            }
            return Ok(());
        }
        let xp = self.ptr(x.buf, x.offset, Self::view_extent(x.ld, rows, k), "linear x")?;
        let wp = self.ptr(w, 0, n * k, "linear weight")?;
        let alpha: f32 = 1.0;
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| Error::Backend(format!("cuBLAS: {what} = {v} exceeds i32")))
        };
        // Column-major view: out^T [n × rows] = W [n × k] · x^T [k × rows].
        // W row-major [n, k] is column-major [k × n] (ld k): op T. x row-major with stride ld is
        // column-major [k × rows] (ld = x.ld): op N.
        self.inner.ctx.bind_to_thread().map_err(driver_err("bind"))?;
        // SAFETY: pointers were bounds-checked above for these shapes and strides.
        unsafe {
            blas_result::sgemm(
                *self.inner.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                int("n", n)?,
                int("rows", rows)?,
                int("k", k)?,
                &alpha,
                wp as *const f32,
                int("k", k)?,
                xp as *const f32,
                int("ld", x.ld.max(k))?,
                &beta,
                o as *mut f32,
                int("n", n)?,
            )
            .map_err(blas_err)?;
        }
        Ok(())
    }

    fn add_rmsnorm(
        &self,
        residual: &mut CudaBuf,
        delta: Option<&CudaBuf>,
        weight: &CudaBuf,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        if rows * dim == 0 {
            return Ok(());
        }
        let r = self.ptr_mut(residual, 0, rows * dim, "rmsnorm residual")?;
        self.add_rmsnorm_at(r, 0, delta, weight, eps, rows, dim, out)
    }

    fn add_rmsnorm_into(
        &self,
        residual: &CudaBuf,
        delta: Option<&CudaBuf>,
        weight: &CudaBuf,
        eps: f32,
        rows: usize,
        dim: usize,
        residual_out: &mut CudaBuf,
        out: &mut CudaBuf,
    ) -> Result<()> {
        if rows * dim == 0 {
            return Ok(());
        }
        let r = self.ptr(residual, 0, rows * dim, "rmsnorm residual")?;
        let ro = self.ptr_mut(residual_out, 0, rows * dim, "rmsnorm residual out")?;
        self.add_rmsnorm_at(r, ro, delta, weight, eps, rows, dim, out)
    }

    fn conv1d_silu(
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
        self.conv_forward(x, batch, seqlen, channels, kernel, weight, bias, state, out)
    }

    fn selective_scan(&self, args: &ScanArgs<'_, CudaBuf>, state: &mut CudaBuf, y: &mut CudaBuf) -> Result<()> {
        let dims = args.dims;
        let (batch, seqlen, di, n) = (dims.batch, dims.seqlen, dims.d_inner, dims.d_state);
        let rows = batch * seqlen;
        if batch * di == 0 {
            return Ok(());
        }
        let n16 = (n == 16).then(|| scan_n16(batch * di, self.inner.sm_count));
        let (name, split, cpb) = match n16 {
            Some(k) => (k.f32, 4, k.cpb),
            None => Self::scan_kernel(n)?,
        };
        let sp = self.ptr_mut(state, 0, batch * di * n, "scan state")?;
        if seqlen == 0 {
            return Ok(());
        }
        // Prefill with u, Δ and z held in bf16 alone and y allowed to be (bf16.rs): the x16
        // entries read them as bf16 and write y in bf16 alone. Else their f32 values are made
        // current and the f32 entries run.
        if let Some(k) = n16 {
            if self.selective_scan_x16(args, k, sp, y)? {
                return Ok(());
            }
        }
        let u = self.ptr(args.u, 0, rows * di, "scan u")?;
        let dl = self.ptr(args.delta, 0, rows * di, "scan delta")?;
        let db = self.ptr(args.delta_bias, 0, di, "scan delta_bias")?;
        let a = self.ptr(args.a, 0, di * n, "scan A")?;
        let bm = self.ptr(args.b.buf, args.b.offset, Self::view_extent(args.b.ld, rows, n), "scan B")?;
        let cm = self.ptr(args.c.buf, args.c.offset, Self::view_extent(args.c.ld, rows, n), "scan C")?;
        let d = self.ptr(args.d, 0, di, "scan D")?;
        // No gate: a null pointer (the kernels then use y = C·h + D·u).
        let (zp, ldz) = match args.z {
            Some(z) => (self.ptr(z.buf, z.offset, Self::view_extent(z.ld, rows, di), "scan z")?, z.ld),
            None => (0u64, 0),
        };
        // The kernels can also write y in bf16, out_proj's input (bf16.rs), or only there (y
        // null) where y may be held in bf16 alone.
        let y_at = self.act_out(y, rows * di, true, "scan y")?;
        let yp = y_at.f32;
        let (ldb, ldc, ldz) = (u32_of("ld B", args.b.ld)?, u32_of("ld C", args.c.ld)?, u32_of("ld z", ldz)?);
        let (l, dd, nn) = (u32_of("seqlen", seqlen)?, u32_of("d_inner", di)?, u32_of("d_state", n)?);
        let mut cfg = LaunchConfig {
            grid_dim: (u32_of("blocks", di.div_ceil(cpb as usize))?, u32_of("batch", batch)?, 1),
            block_dim: (cpb * split, 1, 1),
            shared_mem_bytes: 0,
        };
        let Some(k) = n16 else {
            let y16 = y_at.b16.unwrap_or(0);
            launch!(self, self.func(name)?, cfg, "selective_scan"; u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, y16, l, dd, nn);
            return self.act_out_written(y, &y_at, rows * di);
        };
        let seg = self.scan_segments(k, batch, di, seqlen)?;
        if seg.count > 1 {
            cfg.grid_dim.2 = seg.count - 1;
            launch!(self, self.func(k.seg_f32)?, cfg, "selective_scan segments";
                u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, seg.h, seg.sum, seg.len, l, dd, nn);
            cfg.grid_dim.2 = seg.count;
        }
        match y_at.b16 {
            Some(y16) => launch!(self, self.func(k.f32_with_copy)?, cfg, "selective_scan";
                u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, y16, seg.h, seg.sum, seg.len, l, dd, nn),
            None => launch!(self, self.func(k.f32)?, cfg, "selective_scan";
                u, dl, db, a, bm, ldb, cm, ldc, d, zp, ldz, sp, yp, seg.h, seg.sum, seg.len, l, dd, nn),
        }
        self.act_out_written(y, &y_at, rows * di)
    }

    fn mixer_step(&self, args: &MixerStepArgs<'_, CudaBuf>, out: MixerStepOut<'_, CudaBuf>) -> Result<bool> {
        self.mixer_step_dev(args, out)
    }
    fn block_step(&self, args: &BlockStepArgs<'_, CudaBuf>, out: BlockStepOut<'_, CudaBuf>) -> Result<bool> {
        self.block_step_dev(args, out)
    }

    fn linear_backward(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        dy: &CudaBuf,
        dx: Option<ViewMut<'_, CudaBuf>>,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
    ) -> Result<()> {
        self.linear_backward_dev(x, rows, k, w, n, dy, dx.map(|v| (v, false)), dw, db)
    }

    fn linear_backward_add_dx(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        dy: &CudaBuf,
        dx: ViewMut<'_, CudaBuf>,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
    ) -> Result<()> {
        self.linear_backward_dev(x, rows, k, w, n, dy, Some((dx, true)), dw, db)
    }

    fn rmsnorm_backward(
        &self,
        residual: &CudaBuf,
        weight: &CudaBuf,
        eps: f32,
        rows: usize,
        dim: usize,
        dout: &CudaBuf,
        dresidual: &mut CudaBuf,
        dweight: &mut CudaBuf,
    ) -> Result<()> {
        self.rmsnorm_backward_dev(residual, weight, eps, rows, dim, dout, dresidual, dweight)
    }

    fn conv1d_silu_backward(
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
        self.conv_backward(x, batch, seqlen, channels, kernel, weight, bias, dout, dx, dweight, dbias)
    }

    fn selective_scan_backward(
        &self,
        args: &ScanArgs<'_, CudaBuf>,
        dy: &CudaBuf,
        grads: ScanGrads<'_, CudaBuf>,
    ) -> Result<()> {
        self.scan_backward(args, dy, grads)
    }

    fn embedding_backward(&self, ids: &[u32], dim: usize, dout: &CudaBuf, dtable: &mut CudaBuf) -> Result<()> {
        self.embedding_backward_dev(ids, dim, dout, dtable)
    }

    fn cross_entropy(
        &self,
        logits: &CudaBuf,
        rows: usize,
        vocab: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut CudaBuf,
    ) -> Result<(f64, usize)> {
        self.cross_entropy_dev(logits, rows, vocab, targets, scale, dlogits)
    }

    fn sum_squares(&self, buf: &CudaBuf) -> Result<f64> {
        self.sum_squares_dev(buf)
    }

    fn sum_squares_each(&self, bufs: &[&CudaBuf]) -> Result<Vec<f64>> {
        self.sum_squares_each_dev(bufs)
    }

    fn sum_squares_many(&self, bufs: &[&CudaBuf]) -> Result<f64> {
        self.sum_squares_many_dev(bufs)
    }

    fn neg_exp(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
        self.neg_exp_dev(src, dst)
    }

    fn add_product(&self, dst: &mut CudaBuf, x: &CudaBuf, y: &CudaBuf) -> Result<()> {
        self.add_product_dev(dst, x, y)
    }

    fn adamw_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: &AdamW,
    ) -> Result<()> {
        self.adamw_step_dev(param, grad, m, v, hp)
    }

    fn adamw_step_many(
        &self,
        params: Vec<&mut CudaBuf>,
        grads: &[&CudaBuf],
        m: &mut [CudaBuf],
        v: &mut [CudaBuf],
        hps: &[AdamW],
    ) -> Result<()> {
        self.adamw_step_many_dev(params, grads, m, v, hps)
    }

    fn clone_buf(&self, buf: &CudaBuf) -> Result<CudaBuf> {
        if buf.len == 0 {
            return self.zeros(0);
        }
        self.fresh(buf, "copy")?;
        Ok(CudaBuf::new(self.stream().clone_dtod(&buf.data).map_err(driver_err("copy"))?, buf.len))
    }

    fn add_assign(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        let n = dst.len;
        if src.len != n {
            return Err(Error::Backend(format!("CUDA add_assign: lengths {n} and {} differ", src.len)));
        }
        if n == 0 {
            return Ok(());
        }
        let d = self.ptr_mut(dst, 0, n, "add dst")?;
        let s = self.ptr(src, 0, n, "add src")?;
        let nn = n as u64;
        launch!(self, self.func("s6_add_assign")?, grid_1d(n), "add_assign"; d, s, nn);
        Ok(())
    }

    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        if buf.len == 0 {
            return Ok(());
        }
        self.stream().memset_zeros(self.writable(buf)?).map_err(driver_err("memset"))
    }

    fn gather_rows(&self, src: &CudaBuf, rows: &[usize], dim: usize, out: &mut CudaBuf) -> Result<()> {
        if rows.is_empty() || dim == 0 {
            return Ok(());
        }
        let src_rows = src.len / dim;
        let idx: Vec<u32> = rows
            .iter()
            .map(|&r| {
                if r >= src_rows {
                    Err(Error::Backend(format!("CUDA gather_rows: row {r} of {src_rows}")))
                } else {
                    u32_of("row", r)
                }
            })
            .collect::<Result<_>>()?;
        let idx_dev = self.upload_u32(&idx)?;
        let (ip, _s) = idx_dev.device_ptr(self.stream());
        let s = self.ptr(src, 0, src.len, "gather src")?;
        let o = self.ptr_mut(out, 0, rows.len() * dim, "gather out")?;
        let (r, d) = (u32_of("rows", rows.len())?, u32_of("dim", dim)?);
        launch!(self, self.func("s6_gather_rows")?, grid_1d(rows.len() * dim), "gather_rows"; s, ip, o, r, d);
        Ok(())
    }
    fn rope(&self, x: ViewMut<'_, CudaBuf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        self.rope_dev(x, dims, pos0, theta, false)
    }

    fn rope_backward(&self, dx: ViewMut<'_, CudaBuf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        self.rope_dev(dx, dims, pos0, theta, true)
    }

    fn attention(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, CudaBuf>,
        k: View<'_, CudaBuf>,
        v: View<'_, CudaBuf>,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
    ) -> Result<()> {
        self.attention_dev(dims, scale, q, k, v, out, lse)
    }

    fn attention_backward(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, CudaBuf>,
        k: View<'_, CudaBuf>,
        v: View<'_, CudaBuf>,
        out: &CudaBuf,
        lse: &CudaBuf,
        dout: &CudaBuf,
        dq: ViewMut<'_, CudaBuf>,
        dk: ViewMut<'_, CudaBuf>,
        dv: ViewMut<'_, CudaBuf>,
    ) -> Result<()> {
        self.attention_backward_dev(dims, scale, q, k, v, out, lse, dout, dq, dk, dv)
    }

    fn swiglu(
        &self,
        gate: View<'_, CudaBuf>,
        up: View<'_, CudaBuf>,
        rows: usize,
        cols: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        self.swiglu_dev(gate, up, rows, cols, out)
    }

    fn swiglu_backward(
        &self,
        gate: View<'_, CudaBuf>,
        up: View<'_, CudaBuf>,
        rows: usize,
        cols: usize,
        dout: &CudaBuf,
        dgate: ViewMut<'_, CudaBuf>,
        dup: ViewMut<'_, CudaBuf>,
    ) -> Result<()> {
        self.swiglu_backward_dev(gate, up, rows, cols, dout, dgate, dup)
    }

    fn sum_rows(&self, src: View<'_, CudaBuf>, rows: usize, n: usize, dst: &mut CudaBuf) -> Result<()> {
        self.sum_rows_dev(src, rows, n, dst)
    }

    fn matmul_weight_bytes(&self) -> usize {
        if self.compute() == Compute::Bf16 {
            2
        } else {
            4
        }
    }

    fn logits_chunk_elems(&self) -> usize {
        // 128M floats (512 MB of logits plus as much of their gradient): few chunks, so few
        // cross-entropy readbacks, and the head's weight gradient (read and written whole by
        // every chunk) costs little beside the chunk's products.
        1 << 27
    }

    fn peak_memory(&self) -> Option<u64> {
        // 0: the buffers do not come from the default pool (no stream-ordered allocation).
        self.pool_attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, None).filter(|&v| v > 0)
    }

    fn reset_peak_memory(&self) {
        let _ = self.pool_attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0));
    }

    fn set_keeping_activations(&self, keeping: bool) {
        self.inner.keeping_activations.store(keeping, std::sync::atomic::Ordering::Relaxed);
    }

    fn allow_bf16_storage(&self, buf: &mut CudaBuf) {
        buf.bf16_storage.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn allow_bf16_copy(&self, buf: &mut CudaBuf) {
        buf.bf16_copy.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn release_f32(&self, buf: &mut CudaBuf) -> Result<()> {
        self.release_f32_dev(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::{forced_by_env, scan_n16, KernelArgs, Switch};

    /// The d_state-16 scan's block shape by size (when `S6_SCAN_N16` does not force one), and the
    /// environment reader behind the forced choices.
    #[test]
    fn scan_shapes_by_size_and_forced_names() {
        if std::env::var_os("S6_SCAN_N16").is_none() {
            // 132 multiprocessors (an H100 or H200): one wave of 16-channel blocks is 8,448 channels.
            let names: Vec<_> =
                [1, 8_192, 8_448, 8_449, 24_576, 524_288].iter().map(|&c| scan_n16(c, 132).name).collect();
            assert_eq!(names, ["v4c16t64", "v4c16t64", "v4c16t64", "v4c32", "v4c32", "v4c32"]);
        }
        // SAFETY: variables no other code reads, set before the only reads of them.
        unsafe { std::env::set_var("S6_TEST_FORCED_A", " b ") };
        assert_eq!(forced_by_env("S6_TEST_FORCED_A", ["a", "b"]), Some(1));
        assert_eq!(forced_by_env("S6_TEST_FORCED_A", ["a", "c"]), None);
        assert_eq!(forced_by_env("S6_TEST_FORCED_UNSET", ["a"]), None);
    }

    /// A setting's environment variable: unset gives the default; "0" turns off one that is on by
    /// default and nothing else does; "1" turns on one that is off; a setter wins over both.
    #[test]
    fn switches_read_their_variable_once_and_setters_win() {
        let cases = [
            ("S6_TEST_SWITCH_A", None, true, true),
            ("S6_TEST_SWITCH_B", Some("0"), true, false),
            ("S6_TEST_SWITCH_C", Some("yes"), true, true),
            ("S6_TEST_SWITCH_D", None, false, false),
            ("S6_TEST_SWITCH_E", Some(" 1 "), false, true),
            ("S6_TEST_SWITCH_F", Some("true"), false, false),
        ];
        for (var, value, default, want) in cases {
            if let Some(v) = value {
                // SAFETY: a variable no other code reads, set before the only read of it.
                unsafe { std::env::set_var(var, v) };
            }
            let s = Switch::new(var, default);
            assert_eq!(s.on(), want, "{var}={value:?}, default {default}");
            s.set(!want);
            assert_eq!(s.on(), !want, "{var}: the setter");
        }
    }

    /// The kernel reads each parameter at its slot's address with the parameter's size: every
    /// value must be there, whatever its type, in push order.
    #[test]
    fn kernel_args_hold_each_value_at_its_slot_address() {
        let mut a = KernelArgs::default();
        let (p, n, x, k) = (0x0123_4567_89ab_cdefu64, 4_000_000_000u32, -1.5f32, 7u64);
        a.push(&p);
        a.push(&n);
        a.push(&x);
        a.push(&k);
        let ptrs = a.pointers();
        assert_eq!(ptrs.len(), 4);
        // SAFETY: each pointer addresses a live 8-byte slot holding the pushed value's bytes.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u64), p);
            assert_eq!(*(ptrs[1] as *const u32), n);
            assert_eq!((*(ptrs[2] as *const f32)).to_bits(), x.to_bits());
            assert_eq!(*(ptrs[3] as *const u64), k);
        }
    }
}
