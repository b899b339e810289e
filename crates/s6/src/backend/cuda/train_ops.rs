//! The training ops of the CUDA backend (kernels in `kernels/train.cu`): linear backward through
//! cuBLAS, RMSNorm and embedding backward, cross-entropy, sum of squares, fused AdamW, column sums,
//! and the attention-baseline ops (RoPE, causal attention forward and backward, SwiGLU).
//!
//! Every op checks its buffers' extents before it launches anything (`ptr`/`ptr_mut`) and
//! validates token ids and targets on the host, as the CPU backend does.

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

use super::{blas_err, driver_err, grid_1d, u32_of, Cuda, CudaBuf};
use crate::backend::{check_adamw_many, AdamW, AttnDims, Backend, Compute, View, ViewMut};
use crate::{Error, Result};

/// Rows per chunk of the column sums' first pass.
const COL_SUM_ROWS: usize = 256;

/// Rows per block of `s6_rmsnorm_bwd` (one f64 partial row of dweight each): 512 blocks for the
/// 32,768 rows of a 130M training step, a few per SM, while the partial rows stay ~1.5% of the
/// traffic. More rows per block when there would be over NORM_MAX_CHUNKS blocks.
const NORM_CHUNK_ROWS: usize = 64;
const NORM_MAX_CHUNKS: usize = 2048;
/// Warps per block of `s6_rmsnorm_bwd` (`S6_NORM_WARPS`): the rows reduced at once.
const NORM_WARPS: u32 = 8;
/// Dynamic shared memory `s6_rmsnorm_bwd` asks for at most: 48 KB (what a launch may ask without
/// opting in) less the kernel's static shared memory (the rows' r and coefficients) and a
/// margin; asking for the whole 48 KB fails the launch.
const NORM_MAX_SHARED_BYTES: usize = 47 * 1024;

/// Warps per block of the attention kernels (`S6_ATT_WARPS`) and their largest head size.
const ATT_WARPS: usize = 4;
const ATT_MAX_HEAD_DIM: usize = 128;

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Backend(format!("cuBLAS: {what} = {v} exceeds i32")))
}

/// Threads of `s6_cross_entropy` for rows of `vocab` values: about 16 values (4 float4 groups,
/// `S6_CE_UNROLL`) per thread, 128 to 1024.
fn ce_threads(vocab: usize) -> u32 {
    vocab.div_ceil(16).next_power_of_two().clamp(128, 1024) as u32
}

/// Lets `s6_cross_entropy` use all the shared memory a block may opt in to and returns the bytes
/// of dynamic shared memory it may then ask for (the row cache).
pub(super) fn enable_cross_entropy_row_cache(ctx: &CudaContext, func: &CudaFunction) -> Result<usize> {
    use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
    let optin = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(driver_err("shared memory limit"))?;
    let fixed = func
        .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        .map_err(driver_err("cross_entropy shared memory"))?;
    let dynamic = (optin - fixed).max(0);
    func.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic)
        .map_err(driver_err("cross_entropy shared memory"))?;
    Ok(dynamic as usize)
}

fn rows_cfg(rows: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig { grid_dim: (u32_of("rows", rows)?, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// Blocks (of 256 threads) of one tensor in `s6_sum_squares_many` for `n > 0` values.
fn sum_squares_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 1024)
}

/// u64 fields per tensor of the `s6_adamw_many` table (`S6_ADAMW_W` in `kernels/train.cu`).
const ADAMW_TAB_WIDTH: usize = 15;
/// The most blocks `s6_adamw_many` gives one tensor (they stride over larger ones).
const ADAMW_MAX_BLOCKS: usize = 2048;

/// The scalars of an AdamW step, computed on the host exactly as the CPU backend does:
/// `(lr / bc1, sqrt(bc2), 1 − lr·wd)`.
fn adamw_scalars(hp: &AdamW) -> (f32, f32, f32) {
    let step = hp.step as f64;
    let bc1 = 1.0 - (hp.beta1 as f64).powf(step);
    let bc2 = 1.0 - (hp.beta2 as f64).powf(step);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = (1.0 - hp.lr as f64 * hp.weight_decay as f64) as f32;
    (step_size, bc2_sqrt, decay)
}

fn check_attn(what: &str, dims: AttnDims) -> Result<()> {
    if dims.head_dim > ATT_MAX_HEAD_DIM {
        return Err(Error::Backend(format!(
            "CUDA {what}: head_dim {} is over the kernels' maximum of {ATT_MAX_HEAD_DIM}",
            dims.head_dim
        )));
    }
    Ok(())
}

fn attn_cfg(dims: AttnDims) -> Result<LaunchConfig> {
    let warps = dims.batch * dims.n_head * dims.seqlen;
    Ok(LaunchConfig {
        grid_dim: (u32_of("attention blocks", warps.div_ceil(ATT_WARPS))?, 1, 1),
        block_dim: (32 * ATT_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Cuda {
    /// `dst[j] += Σ_r src[r, j]`, f64 sums on the device (`src.ld = 0`: one row, `rows` times).
    fn col_sums(&self, src: View<'_, CudaBuf>, rows: usize, n: usize, dst: &mut CudaBuf, what: &str) -> Result<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let sp = self.ptr(src.buf, src.offset, Self::view_extent(src.ld, rows, n), what)?;
        let dp = self.ptr_mut(dst, 0, n, what)?;
        // Chunks of COL_SUM_ROWS rows (more when there would be over 65,535 chunks), one block
        // row each: enough blocks to fill the device even for the 768 columns of a norm weight.
        let chunk_rows = COL_SUM_ROWS.max(rows.div_ceil(65535));
        let chunks = rows.div_ceil(chunk_rows);
        // Every value is written by s6_col_sums_part before s6_col_sums_finish reads it.
        let part = self.scratch::<f64>(chunks * n)?;
        let (pp, _s) = part.device_ptr(self.stream());
        let cfg = LaunchConfig {
            grid_dim: (u32_of("columns", n.div_ceil(32))?, u32_of("chunks", chunks)?, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let (ld, r, nn) = (u32_of("ld", src.ld)?, u32_of("rows", rows)?, u32_of("n", n)?);
        let cr = u32_of("chunk rows", chunk_rows)?;
        launch!(self, self.func("s6_col_sums_part")?, cfg, what; sp, ld, r, nn, cr, pp);
        self.col_sums_finish(pp, chunks, n, dp, what)
    }

    /// `dst[j] += Σ_c part[c, j]` over `chunks` f64 partial rows of `n` columns, in chunk order
    /// (`s6_col_sums_finish`): the second pass of [`Cuda::col_sums`] and of the RMSNorm backward.
    fn col_sums_finish(&self, part: u64, chunks: usize, n: usize, dst: u64, what: &str) -> Result<()> {
        let (ch, nn) = (u32_of("chunks", chunks)?, u32_of("n", n)?);
        let cfg = LaunchConfig {
            grid_dim: (u32_of("columns", n.div_ceil(32))?, 1, 1),
            block_dim: (32, 16, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, self.func("s6_col_sums_finish")?, cfg, what; part, ch, nn, dst);
        Ok(())
    }

    /// Column sums into `dst` (exactly `n` values), the [`crate::backend::Backend::sum_rows`] op.
    pub(super) fn sum_rows_dev(&self, src: View<'_, CudaBuf>, rows: usize, n: usize, dst: &mut CudaBuf) -> Result<()> {
        if dst.len != n {
            return Err(Error::Backend(format!("CUDA sum_rows: destination has {} elements, not {n}", dst.len)));
        }
        self.col_sums(src, rows, n, dst, "sum_rows")
    }

    pub(super) fn linear_backward_dev(
        &self,
        x: View<'_, CudaBuf>,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        dy: &CudaBuf,
        dx: Option<(ViewMut<'_, CudaBuf>, bool)>,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
    ) -> Result<()> {
        // dx with `true`: accumulated (beta = 1), `Backend::linear_backward_add_dx`.
        let add_dx = dx.as_ref().is_some_and(|d| d.1);
        let wp = self.ptr(w, 0, n * k, "linear_backward weight")?;
        // Under bf16 products x and dy are read from bf16 copies that hold them where there are
        // such (buffers held in bf16 alone: the norm's and the scan's outputs, the head's
        // gradient; activation copies), the same bits as the cast they replace; their f32 values
        // are made current only where read.
        let copy = |v: &View<'_, CudaBuf>, cols| match self.compute() {
            Compute::Bf16 => self.act_bf16_source(v, rows, cols),
            _ => Ok(None),
        };
        let (dy16, x16) = (copy(&View::full(dy, n), n)?, copy(&x, k)?);
        let dyp = match dy16 {
            Some(_) => self.ptr_unread(dy, 0, rows * n, "linear_backward dy")?,
            None => self.ptr(dy, 0, rows * n, "linear_backward dy")?,
        };
        let x_extent = Self::view_extent(x.ld, rows, k);
        let xp = match x16 {
            Some(_) => self.ptr_unread(x.buf, x.offset, x_extent, "linear_backward x")?,
            None => self.ptr(x.buf, x.offset, x_extent, "linear_backward x")?,
        };
        let dwp = self.ptr_mut(dw, 0, n * k, "linear_backward dw")?;
        let dxp = match dx.map(|d| d.0) {
            Some(v) => {
                Some((self.ptr_mut(v.buf, v.offset, Self::view_extent(v.ld, rows, k), "linear_backward dx")?, v.ld))
            }
            None => None,
        };
        if let Some(db) = db {
            if db.len < n {
                return Err(Error::Backend(format!("CUDA linear_backward: db has {} elements, not {n}", db.len)));
            }
            self.col_sums(View::full(dy, n), rows, n, db, "linear_backward db")?;
        }
        if rows == 0 || k == 0 {
            return Ok(());
        }
        if n == 0 {
            // dx = dy · w over an empty inner dimension: zeros (nothing to add).
            if let (Some((p, ld)), false) = (dxp, add_dx) {
                let zero = self.zeros(rows * k)?;
                let z = self.ptr(&zero, 0, rows * k, "zeros")?;
                // Copy a zero [rows, k] matrix into the strided view with cuBLAS' sgeam-free path:
                // a GEMM with beta = 0 and k = 0 is not allowed, so use the generic 2D copy kernel.
                self.copy_strided(z, k, p, ld, rows, k)?;
            }
            return Ok(());
        }
        if self.compute() == Compute::Bf16 {
            use super::bf16::Bf16Input;
            let dy_in = dy16.map_or(Bf16Input::F32(dyp, n), Bf16Input::Bf16);
            let x_in = x16.map_or(Bf16Input::F32(xp, x.ld), Bf16Input::Bf16);
            return self.linear_backward_bf16(x_in, rows, k, w, n, dy_in, dxp.map(|(p, ld)| (p, ld, add_dx)), dwp);
        }
        self.inner.ctx.bind_to_thread().map_err(driver_err("bind"))?;
        let (one, zero) = (1.0f32, 0.0f32);
        let dx_beta = if add_dx { one } else { zero };
        let h = *self.inner.blas.handle();
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        if let Some((p, ld)) = dxp {
            // Column-major: dxᵀ [k × rows] = wᵀ [k × n] (w row-major [n, k] is col-major k × n, ld k)
            // · dyᵀ [n × rows] (dy row-major [rows, n]: col-major n × rows, ld n).
            // SAFETY: pointers bounds-checked above for these shapes and strides.
            unsafe {
                blas_result::sgemm(
                    h,
                    CUBLAS_OP_N,
                    CUBLAS_OP_N,
                    int("k", k)?,
                    int("rows", rows)?,
                    int("n", n)?,
                    &one,
                    wp as *const f32,
                    int("k", k)?,
                    dyp as *const f32,
                    int("n", n)?,
                    &dx_beta,
                    p as *mut f32,
                    int("ld dx", ld.max(k))?,
                )
                .map_err(blas_err)?;
            }
        }
        // dwᵀ [k × n] += xᵀ [k × rows] (x: col-major k × rows, ld x.ld) · dy [rows × n] (op T of
        // dy's col-major n × rows).
        // SAFETY: as above.
        unsafe {
            blas_result::sgemm(
                h,
                CUBLAS_OP_N,
                CUBLAS_OP_T,
                int("k", k)?,
                int("n", n)?,
                int("rows", rows)?,
                &one,
                xp as *const f32,
                int("ld x", x.ld.max(k))?,
                dyp as *const f32,
                int("n", n)?,
                &one,
                dwp as *mut f32,
                int("k", k)?,
            )
            .map_err(blas_err)?;
        }
        Ok(())
    }

    /// `dst[r, c] = src[r, c]` for strided matrices (device pointers), through cuBLAS sgeam.
    fn copy_strided(&self, src: u64, ld_src: usize, dst: u64, ld_dst: usize, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        self.inner.ctx.bind_to_thread().map_err(driver_err("bind"))?;
        let (one, zero) = (1.0f32, 0.0f32);
        use blas_sys::cublasOperation_t::CUBLAS_OP_N;
        // SAFETY: the callers bounds-checked both matrices; B is not read with beta = 0 but must
        // be a valid pointer, so it is the source again.
        unsafe {
            blas_sys::cublasSgeam(
                *self.inner.blas.handle(),
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                int("cols", cols)?,
                int("rows", rows)?,
                &one,
                src as *const f32,
                int("ld", ld_src.max(cols))?,
                &zero,
                src as *const f32,
                int("ld", ld_src.max(cols))?,
                dst as *mut f32,
                int("ld", ld_dst.max(cols))?,
            )
            .result()
            .map_err(blas_err)?;
        }
        Ok(())
    }

    pub(super) fn rmsnorm_backward_dev(
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
        let x = self.ptr(residual, 0, rows * dim, "rmsnorm_backward residual")?;
        let w = self.ptr(weight, 0, dim, "rmsnorm_backward weight")?;
        let dy = self.ptr(dout, 0, rows * dim, "rmsnorm_backward dout")?;
        let dr = self.ptr_mut(dresidual, 0, rows * dim, "rmsnorm_backward dresidual")?;
        // The sum rounded to bf16 beside it where the model allows a copy (the residual gradient:
        // the next block's out_proj backward products read it as their bf16 dy).
        let dr16 = self.act_bf16_target(dresidual)?;
        self.ptr_mut(dweight, 0, dim, "rmsnorm_backward dweight")?;
        if rows * dim == 0 {
            return Ok(());
        }
        // One block per chunk of rows writes the chunk's f64 dweight terms into part[chunk, dim];
        // s6_col_sums_finish adds the chunks in order (deterministic run to run).
        let chunk_rows = NORM_CHUNK_ROWS.max(rows.div_ceil(NORM_MAX_CHUNKS));
        let chunks = rows.div_ceil(chunk_rows);
        // s6_rmsnorm_bwd writes every value of its chunk's row before s6_col_sums_finish reads it.
        let part = self.scratch::<f64>(chunks * dim)?;
        let (pp, _s) = part.device_ptr(self.stream());
        // The per-column accumulators in shared memory when they fit the default 48 KB, else in
        // the block's own row of `part` (global memory, same order, same values).
        let acc_bytes = dim * std::mem::size_of::<f64>();
        let use_shared = acc_bytes <= NORM_MAX_SHARED_BYTES;
        let cfg = LaunchConfig {
            grid_dim: (u32_of("chunks", chunks)?, 1, 1),
            block_dim: (32 * NORM_WARPS, 1, 1),
            shared_mem_bytes: if use_shared { acc_bytes as u32 } else { 0 },
        };
        let (r, d, cr, sh) =
            (u32_of("rows", rows)?, u32_of("dim", dim)?, u32_of("chunk rows", chunk_rows)?, use_shared as u32);
        let dr16p = dr16.unwrap_or(0);
        launch!(self, self.func("s6_rmsnorm_bwd")?, cfg, "rmsnorm_backward"; x, w, dy, dr, dr16p, pp, r, d, cr, eps, sh);
        if dr16.is_some() {
            self.act_bf16_written(dresidual, rows * dim)?;
        }
        let dwp = self.ptr_mut(dweight, 0, dim, "rmsnorm_backward dweight")?;
        self.col_sums_finish(pp, chunks, dim, dwp, "rmsnorm_backward dweight")
    }

    pub(super) fn embedding_backward_dev(
        &self,
        ids: &[u32],
        dim: usize,
        dout: &CudaBuf,
        dtable: &mut CudaBuf,
    ) -> Result<()> {
        let rows = ids.len();
        self.ptr(dout, 0, rows * dim, "embedding_backward dout")?;
        if dim == 0 || rows == 0 {
            return Ok(());
        }
        let vocab = dtable.len / dim;
        // The ids present, where their rows start in `order`, and `order` (rows grouped by id in
        // input order, as on the CPU): [seg (nseg + 1), uid (nseg), order (rows)] in one upload.
        let (start, order) = crate::backend::rows_by_id(ids, vocab)?;
        let rows32 = u32_of("rows", rows)?;
        let uid: Vec<u32> = (0..vocab).filter(|&v| start[v + 1] > start[v]).map(|v| v as u32).collect();
        let nseg = uid.len();
        let mut packed: Vec<u32> = uid.iter().map(|&v| start[v as usize] as u32).collect();
        packed.push(rows32);
        packed.extend_from_slice(&uid);
        packed.extend(order.iter().map(|&i| i as u32));
        let packed_dev = self.upload_u32(&packed)?;
        let (pp, _s) = packed_dev.device_ptr(self.stream());
        let u32_bytes = std::mem::size_of::<u32>() as u64;
        let (sp, up, op) = (pp, pp + (nseg as u64 + 1) * u32_bytes, pp + (2 * nseg as u64 + 1) * u32_bytes);
        let dp = self.ptr(dout, 0, rows * dim, "embedding_backward dout")?;
        let tp = self.ptr_mut(dtable, 0, vocab * dim, "embedding_backward dtable")?;
        let (ns, d) = (u32_of("ids", nseg)?, u32_of("dim", dim)?);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(128), ns.min(65_535), 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, self.func("s6_embedding_bwd")?, cfg, "embedding_backward"; sp, up, op, dp, tp, ns, d);
        Ok(())
    }

    pub(super) fn cross_entropy_dev(
        &self,
        logits: &CudaBuf,
        rows: usize,
        vocab: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut CudaBuf,
    ) -> Result<(f64, usize)> {
        let lp = self.ptr(logits, 0, rows * vocab, "cross_entropy logits")?;
        // The gradient in bf16 alone where the model allows it (the head's backward products
        // read it as their bf16 input), else in f32.
        let d_at = self.act_out_alone(dlogits, rows * vocab, "cross_entropy dlogits")?;
        if targets.len() != rows {
            return Err(Error::Backend(format!("CUDA cross_entropy: {} targets for {rows} rows", targets.len())));
        }
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t != u32::MAX && t as usize >= vocab) {
            return Err(Error::input(format!("target token {t} (row {i}) is outside the vocabulary (size {vocab})")));
        }
        let counted = targets.iter().filter(|&&t| t != u32::MAX).count();
        if rows == 0 || vocab == 0 {
            return Ok((0.0, counted));
        }
        let t_dev = self.upload_u32(targets)?;
        let (tp, _s) = t_dev.device_ptr(self.stream());
        let losses = self.stream().alloc_zeros::<f64>(rows).map_err(driver_err("allocation"))?;
        let total = self.stream().alloc_zeros::<f64>(1).map_err(driver_err("allocation"))?;
        let (lsp, _s2) = losses.device_ptr(self.stream());
        let (totp, _s3) = total.device_ptr(self.stream());
        let v = u32_of("vocab", vocab)?;
        // The row in shared memory (read from DRAM once) when it fits what the kernel may use.
        let cache_bytes = (vocab + 3) * std::mem::size_of::<f32>();
        let cache_row = cache_bytes <= self.inner.ce_shared_bytes;
        let mut cfg = rows_cfg(rows, ce_threads(vocab))?;
        cfg.shared_mem_bytes = if cache_row { cache_bytes as u32 } else { 0 };
        let cr = cache_row as u32;
        let (name, dp) = d_at.b16.map_or(("s6_cross_entropy", d_at.f32), |p| ("s6_cross_entropy_d16", p));
        launch!(self, self.func(name)?, cfg, "cross_entropy"; lp, tp, dp, lsp, v, scale, cr);
        self.act_out_written(dlogits, &d_at, rows * vocab)?;
        let r = u32_of("rows", rows)?;
        launch!(self, self.func("s6_sum_f64")?, rows_cfg(1, 1024)?, "cross_entropy sum"; lsp, r, totp);
        let host = self.stream().clone_dtoh(&total).map_err(driver_err("download"))?;
        self.synchronize()?;
        Ok((host[0], counted))
    }

    /// [`crate::backend::Backend::sum_squares`]: the many-tensor path with one tensor (one
    /// readback), so that a tensor's sum is the same value whichever op asks.
    pub(super) fn sum_squares_dev(&self, buf: &CudaBuf) -> Result<f64> {
        Ok(self.sum_squares_each_dev(&[buf])?[0])
    }

    /// Device f64 array of `bufs.len() + 1` values: each buffer's sum of squares (block partials
    /// added in a fixed order), then their sum in order. Four launches whatever the number of buffers, nothing read back.
    fn sum_squares_totals(&self, bufs: &[&CudaBuf]) -> Result<CudaSlice<f64>> {
        let what = "sum_squares_many";
        let tensors = bufs.len();
        let mut tab: Vec<u64> = Vec::with_capacity(4 * tensors);
        let mut first = 0usize;
        for b in bufs {
            let n = b.len;
            let blocks = if n == 0 { 0 } else { sum_squares_blocks(n) };
            tab.extend([self.ptr(b, 0, n, what)?, n as u64, first as u64, blocks as u64]);
            first += blocks;
        }
        let nt = u32_of("tensors", tensors)?;
        let totals = self.stream().alloc_zeros::<f64>(tensors + 1).map_err(driver_err("allocation"))?;
        {
            let (tp, _s) = totals.device_ptr(self.stream());
            if first > 0 {
                let tab_d = self.stream().clone_htod(&tab).map_err(driver_err("upload"))?;
                let partial = self.stream().alloc_zeros::<f64>(first).map_err(driver_err("allocation"))?;
                let (tabp, _s1) = tab_d.device_ptr(self.stream());
                let (pp, _s2) = partial.device_ptr(self.stream());
                let cfg = LaunchConfig {
                    grid_dim: (u32_of("sum_squares blocks", first)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(self, self.func("s6_sum_squares_many")?, cfg, what; tabp, nt, pp);
                launch!(self, self.func("s6_sum_f64_many")?, rows_cfg(tensors, 1024)?, what; pp, tabp, tp);
            }
            let out = tp + 8 * tensors as u64;
            launch!(self, self.func("s6_sum_in_order")?, rows_cfg(1, 32)?, what; tp, nt, out);
        }
        Ok(totals)
    }

    /// [`crate::backend::Backend::sum_squares_each`]: one readback.
    pub(super) fn sum_squares_each_dev(&self, bufs: &[&CudaBuf]) -> Result<Vec<f64>> {
        if bufs.is_empty() {
            return Ok(Vec::new());
        }
        let totals = self.sum_squares_totals(bufs)?;
        let mut host = self.stream().clone_dtoh(&totals).map_err(driver_err("download"))?;
        self.synchronize()?;
        host.truncate(bufs.len());
        Ok(host)
    }

    /// [`crate::backend::Backend::sum_squares_many`]: one readback of one value.
    pub(super) fn sum_squares_many_dev(&self, bufs: &[&CudaBuf]) -> Result<f64> {
        let totals = self.sum_squares_totals(bufs)?;
        let host = self.stream().clone_dtoh(&totals.slice(bufs.len()..)).map_err(driver_err("download"))?;
        self.synchronize()?;
        Ok(host[0])
    }

    /// [`crate::backend::Backend::add_product`].
    pub(super) fn add_product_dev(&self, dst: &mut CudaBuf, x: &CudaBuf, y: &CudaBuf) -> Result<()> {
        let n = dst.len;
        if x.len != n || y.len != n {
            return Err(Error::Backend(format!("CUDA add_product of {} and {} elements into {n}", x.len, y.len)));
        }
        if n == 0 {
            return Ok(());
        }
        let xp = self.ptr(x, 0, n, "add_product x")?;
        let yp = self.ptr(y, 0, n, "add_product y")?;
        let dp = self.ptr_mut(dst, 0, n, "add_product dst")?;
        let nn = n as u64;
        launch!(self, self.func("s6_add_product")?, grid_1d(n), "add_product"; dp, xp, yp, nn);
        Ok(())
    }

    /// [`crate::backend::Backend::neg_exp`].
    pub(super) fn neg_exp_dev(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
        let n = src.len;
        if dst.len != n {
            return Err(Error::Backend(format!("CUDA neg_exp of {n} elements into {}", dst.len)));
        }
        if n == 0 {
            return Ok(());
        }
        let sp = self.ptr(src, 0, n, "neg_exp src")?;
        let dp = self.ptr_mut(dst, 0, n, "neg_exp dst")?;
        let nn = n as u64;
        launch!(self, self.func("s6_neg_exp")?, grid_1d(n), "neg_exp"; sp, dp, nn);
        Ok(())
    }

    pub(super) fn adamw_step_dev(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: &AdamW,
    ) -> Result<()> {
        let n = param.len;
        if grad.len != n || m.len != n || v.len != n {
            return Err(Error::Backend(format!(
                "CUDA adamw_step lengths differ: param {n}, grad {}, m {}, v {}",
                grad.len, m.len, v.len
            )));
        }
        if hp.step == 0 {
            return Err(Error::input("adamw_step: step counts from 1"));
        }
        if n == 0 {
            return Ok(());
        }
        let (step_size, bc2_sqrt, decay) = adamw_scalars(hp);
        let pp = self.ptr_mut(param, 0, n, "adamw param")?;
        let gp = self.ptr(grad, 0, n, "adamw grad")?;
        let mp = self.ptr_mut(m, 0, n, "adamw m")?;
        let vp = self.ptr_mut(v, 0, n, "adamw v")?;
        let nn = n as u64;
        let (b1, b2, eps, gs) = (hp.beta1, hp.beta2, hp.eps, hp.grad_scale);
        launch!(self, self.func("s6_adamw")?, grid_1d(n), "adamw_step"; pp, gp, mp, vp, nn, b1, b2, eps, gs, step_size, bc2_sqrt, decay);
        Ok(())
    }

    /// [`crate::backend::Backend::adamw_step_many`]: one launch of `s6_adamw_many` over a table of
    /// the tensors (pointers, sizes and scalars, uploaded per call).
    pub(super) fn adamw_step_many_dev(
        &self,
        params: Vec<&mut CudaBuf>,
        grads: &[&CudaBuf],
        m: &mut [CudaBuf],
        v: &mut [CudaBuf],
        hps: &[AdamW],
    ) -> Result<()> {
        check_adamw_many(self, &params, grads, m, v, hps)?;
        let mut tab: Vec<u64> = Vec::with_capacity(ADAMW_TAB_WIDTH * params.len());
        let mut first = 0usize;
        for ((((p, g), m), v), hp) in params.into_iter().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()).zip(hps) {
            let n = p.len;
            if n == 0 {
                continue;
            }
            let blocks = n.div_ceil(256).min(ADAMW_MAX_BLOCKS);
            let (step_size, bc2_sqrt, decay) = adamw_scalars(hp);
            tab.extend([n as u64, 0, first as u64, blocks as u64]);
            tab.extend([
                self.ptr_mut(p, 0, n, "adamw_many param")?,
                self.ptr(g, 0, n, "adamw_many grad")?,
                self.ptr_mut(m, 0, n, "adamw_many m")?,
                self.ptr_mut(v, 0, n, "adamw_many v")?,
            ]);
            let scalars = [hp.beta1, hp.beta2, hp.eps, hp.grad_scale, step_size, bc2_sqrt, decay];
            tab.extend(scalars.map(|x| x.to_bits() as u64));
            first += blocks;
        }
        if first == 0 {
            return Ok(());
        }
        let nt = u32_of("tensors", tab.len() / ADAMW_TAB_WIDTH)?;
        let tab_d = self.stream().clone_htod(&tab).map_err(driver_err("upload"))?;
        let (tabp, _s) = tab_d.device_ptr(self.stream());
        let cfg = LaunchConfig {
            grid_dim: (u32_of("adamw blocks", first)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, self.func("s6_adamw_many")?, cfg, "adamw_step_many"; tabp, nt);
        Ok(())
    }

    pub(super) fn rope_dev(
        &self,
        x: ViewMut<'_, CudaBuf>,
        dims: AttnDims,
        pos0: usize,
        theta: f32,
        inverse: bool,
    ) -> Result<()> {
        let (rows, w, dh) = (dims.rows(), dims.width(), dims.head_dim);
        if dh % 2 != 0 {
            return Err(Error::Backend(format!("CUDA rope needs an even head size, got {dh}")));
        }
        let xp = self.ptr_mut(x.buf, x.offset, Self::view_extent(x.ld, rows, w), "rope x")?;
        if rows == 0 || w == 0 {
            return Ok(());
        }
        // HF Llama's inverse frequencies in f32, as the CPU backend computes them.
        let inv_freq: Vec<f32> = (0..dh / 2)
            .map(|i| {
                let e = (2 * i) as f32 / dh as f32;
                1.0 / ((theta as f64).powf(e as f64) as f32)
            })
            .collect();
        let f = self.from_vec(inv_freq)?;
        let fp = self.ptr(&f, 0, dh / 2, "rope inv_freq")?;
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let (ld, r, l, h, d, p0) = (
            u32_of("ld", x.ld)?,
            u32_of("rows", rows)?,
            u32_of("seqlen", dims.seqlen)?,
            u32_of("n_head", dims.n_head)?,
            u32_of("head_dim", dh)?,
            u32_of("pos0", pos0)?,
        );
        launch!(self, self.func("s6_rope")?, grid_1d(rows * dims.n_head * (dh / 2)), "rope"; xp, ld, fp, r, l, h, d, p0, sign);
        Ok(())
    }

    pub(super) fn attention_dev(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, CudaBuf>,
        k: View<'_, CudaBuf>,
        v: View<'_, CudaBuf>,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
    ) -> Result<()> {
        check_attn("attention", dims)?;
        let (rows, w) = (dims.rows(), dims.width());
        let qp = self.ptr(q.buf, q.offset, Self::view_extent(q.ld, rows, w), "attention q")?;
        let kp = self.ptr(k.buf, k.offset, Self::view_extent(k.ld, rows, w), "attention k")?;
        let vp = self.ptr(v.buf, v.offset, Self::view_extent(v.ld, rows, w), "attention v")?;
        let op = self.ptr_mut(out, 0, rows * w, "attention out")?;
        let lp = self.ptr_mut(lse, 0, rows * dims.n_head, "attention lse")?;
        if rows == 0 || w == 0 {
            return Ok(());
        }
        let (ldq, ldk, ldv) = (u32_of("ld q", q.ld)?, u32_of("ld k", k.ld)?, u32_of("ld v", v.ld)?);
        let (b, l, h, d) = (
            u32_of("batch", dims.batch)?,
            u32_of("seqlen", dims.seqlen)?,
            u32_of("n_head", dims.n_head)?,
            u32_of("head_dim", dims.head_dim)?,
        );
        launch!(self, self.func("s6_attn_fwd")?, attn_cfg(dims)?, "attention"; qp, ldq, kp, ldk, vp, ldv, op, lp, b, l, h, d, scale);
        Ok(())
    }

    pub(super) fn attention_backward_dev(
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
        check_attn("attention_backward", dims)?;
        let (rows, w) = (dims.rows(), dims.width());
        let qp = self.ptr(q.buf, q.offset, Self::view_extent(q.ld, rows, w), "attention_backward q")?;
        let kp = self.ptr(k.buf, k.offset, Self::view_extent(k.ld, rows, w), "attention_backward k")?;
        let vp = self.ptr(v.buf, v.offset, Self::view_extent(v.ld, rows, w), "attention_backward v")?;
        let op = self.ptr(out, 0, rows * w, "attention_backward out")?;
        let lp = self.ptr(lse, 0, rows * dims.n_head, "attention_backward lse")?;
        let dop = self.ptr(dout, 0, rows * w, "attention_backward dout")?;
        let (lddq, lddk, lddv) = (dq.ld, dk.ld, dv.ld);
        let dqp = self.ptr_mut(dq.buf, dq.offset, Self::view_extent(lddq, rows, w), "attention_backward dq")?;
        let dkp = self.ptr_mut(dk.buf, dk.offset, Self::view_extent(lddk, rows, w), "attention_backward dk")?;
        let dvp = self.ptr_mut(dv.buf, dv.offset, Self::view_extent(lddv, rows, w), "attention_backward dv")?;
        if rows == 0 || w == 0 {
            return Ok(());
        }
        let mut delta = self.zeros(rows * dims.n_head)?;
        let dlp = self.ptr_mut(&mut delta, 0, rows * dims.n_head, "attention_backward delta")?;
        let (ldq, ldk, ldv) = (u32_of("ld q", q.ld)?, u32_of("ld k", k.ld)?, u32_of("ld v", v.ld)?);
        let (lddq, lddk, lddv) = (u32_of("ld dq", lddq)?, u32_of("ld dk", lddk)?, u32_of("ld dv", lddv)?);
        let (b, l, h, d) = (
            u32_of("batch", dims.batch)?,
            u32_of("seqlen", dims.seqlen)?,
            u32_of("n_head", dims.n_head)?,
            u32_of("head_dim", dims.head_dim)?,
        );
        let cfg = attn_cfg(dims)?;
        launch!(self, self.func("s6_attn_bwd_delta")?, cfg, "attention_backward delta"; op, dop, dlp, b, l, h, d);
        launch!(self, self.func("s6_attn_bwd_dq")?, cfg, "attention_backward dq";
            qp, ldq, kp, ldk, vp, ldv, dop, lp, dlp, dqp, lddq, b, l, h, d, scale);
        launch!(self, self.func("s6_attn_bwd_dkv")?, cfg, "attention_backward dk/dv";
            qp, ldq, kp, ldk, vp, ldv, dop, lp, dlp, dkp, lddk, dvp, lddv, b, l, h, d, scale);
        Ok(())
    }

    pub(super) fn swiglu_dev(
        &self,
        gate: View<'_, CudaBuf>,
        up: View<'_, CudaBuf>,
        rows: usize,
        cols: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let gp = self.ptr(gate.buf, gate.offset, Self::view_extent(gate.ld, rows, cols), "swiglu gate")?;
        let upp = self.ptr(up.buf, up.offset, Self::view_extent(up.ld, rows, cols), "swiglu up")?;
        let op = self.ptr_mut(out, 0, rows * cols, "swiglu out")?;
        if rows * cols == 0 {
            return Ok(());
        }
        let (ldg, ldu, r, c) =
            (u32_of("ld gate", gate.ld)?, u32_of("ld up", up.ld)?, u32_of("rows", rows)?, u32_of("cols", cols)?);
        launch!(self, self.func("s6_swiglu")?, grid_1d(rows * cols), "swiglu"; gp, ldg, upp, ldu, op, r, c);
        Ok(())
    }

    pub(super) fn swiglu_backward_dev(
        &self,
        gate: View<'_, CudaBuf>,
        up: View<'_, CudaBuf>,
        rows: usize,
        cols: usize,
        dout: &CudaBuf,
        dgate: ViewMut<'_, CudaBuf>,
        dup: ViewMut<'_, CudaBuf>,
    ) -> Result<()> {
        let gp = self.ptr(gate.buf, gate.offset, Self::view_extent(gate.ld, rows, cols), "swiglu_backward gate")?;
        let upp = self.ptr(up.buf, up.offset, Self::view_extent(up.ld, rows, cols), "swiglu_backward up")?;
        let dp = self.ptr(dout, 0, rows * cols, "swiglu_backward dout")?;
        let (lddg, lddu) = (dgate.ld, dup.ld);
        let dgp =
            self.ptr_mut(dgate.buf, dgate.offset, Self::view_extent(lddg, rows, cols), "swiglu_backward dgate")?;
        let dup_p = self.ptr_mut(dup.buf, dup.offset, Self::view_extent(lddu, rows, cols), "swiglu_backward dup")?;
        if rows * cols == 0 {
            return Ok(());
        }
        let (ldg, ldu, r, c) =
            (u32_of("ld gate", gate.ld)?, u32_of("ld up", up.ld)?, u32_of("rows", rows)?, u32_of("cols", cols)?);
        let (lddg, lddu) = (u32_of("ld dgate", lddg)?, u32_of("ld dup", lddu)?);
        launch!(self, self.func("s6_swiglu_bwd")?, grid_1d(rows * cols), "swiglu_backward";
            gp, ldg, upp, ldu, dp, dgp, lddg, dup_p, lddu, r, c);
        Ok(())
    }
}
