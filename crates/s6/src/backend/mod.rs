//! The backend boundary: the few operations the models need, implemented once per device.
//!
//! Models ([`crate::model`]) decide *what* runs in which order; a backend decides *how*. Buffers are
//! flat `f32` arrays owned by the backend (host memory on CPU, device memory on CUDA). Activations
//! are row-major `[rows, cols]` matrices whose rows are tokens, batch-major (`row = b * L + t`).
//! Operations that read a column range of a wider matrix take a [`View`] (offset + row stride), as
//! BLAS does, so that slicing `x`/`z` out of `in_proj`'s output or `Δ`/`B`/`C` out of `x_proj`'s
//! output costs no copy.

#![allow(clippy::too_many_arguments)]

pub mod collective;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(test)]
pub(crate) mod reference;
pub mod timed;

use crate::Result;

/// A column range of a row-major matrix held in a buffer: element `(r, c)` is
/// `buf[offset + r * ld + c]`.
///
/// `ld = 0` is allowed for views that are only read: every row is then the same `cols` values
/// (one row broadcast to all rows), which is how a non-selective `B` or `C` (a learned
/// `[d_state]` vector, the paper's ablations) enters the scan without being copied per token.
pub struct View<'a, T> {
    pub buf: &'a T,
    pub offset: usize,
    pub ld: usize,
}

// Manual impls: a view is a reference plus numbers, copyable whatever `T` is.
impl<T> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for View<'_, T> {}

impl<'a, T> View<'a, T> {
    /// A contiguous matrix with `cols` columns.
    pub fn full(buf: &'a T, cols: usize) -> Self {
        View { buf, offset: 0, ld: cols }
    }
    /// Columns `start..` of a matrix with row stride `ld`.
    pub fn cols(buf: &'a T, start: usize, ld: usize) -> Self {
        View { buf, offset: start, ld }
    }
    /// One row (the buffer's first values) read as every row of a matrix: `ld = 0`.
    pub fn broadcast(buf: &'a T) -> Self {
        View { buf, offset: 0, ld: 0 }
    }
}

/// A mutable column range of a row-major matrix (see [`View`]).
pub struct ViewMut<'a, T> {
    pub buf: &'a mut T,
    pub offset: usize,
    pub ld: usize,
}

impl<'a, T> ViewMut<'a, T> {
    /// A contiguous matrix with `cols` columns.
    pub fn full(buf: &'a mut T, cols: usize) -> Self {
        ViewMut { buf, offset: 0, ld: cols }
    }
    /// Columns `start..` of a matrix with row stride `ld`.
    pub fn cols(buf: &'a mut T, start: usize, ld: usize) -> Self {
        ViewMut { buf, offset: start, ld }
    }
}

/// Where a row-major matrix lies in a buffer: element `(r, c)` at `offset + r * ld + c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    pub offset: usize,
    pub ld: usize,
}

/// Gradients produced by [`Backend::selective_scan_backward`]. "Written" outputs are overwritten;
/// "accumulated" ones are added to (parameter gradients summed over a batch and over layers' calls).
pub struct ScanGrads<'a, Buf> {
    /// Written: `∂L/∂u`, `[rows, d_inner]`.
    pub du: &'a mut Buf,
    /// Written: `∂L/∂δ` for the raw Δ input (before bias and softplus), `[rows, d_inner]`.
    pub ddelta: &'a mut Buf,
    /// Holds the written per-row `∂L/∂B_t` and `∂L/∂C_t`, two `[rows, d_state]` matrices at the
    /// places `db` and `dc` say (one buffer, so that both can be columns of `x_proj`'s output
    /// gradient). When B (or C) is not selective, its matrix is scratch whose column sum is the
    /// gradient of the shared parameter ([`Backend::sum_rows`]).
    pub dbc: &'a mut Buf,
    /// Where `∂L/∂B_t` goes in `dbc`.
    pub db: Strided,
    /// Where `∂L/∂C_t` goes in `dbc`.
    pub dc: Strided,
    /// Written: `∂L/∂z`, `[rows, d_inner]` columns of a wider matrix; `None` for an ungated scan
    /// (then [`ScanArgs::z`] is `None` too).
    pub dz: Option<ViewMut<'a, Buf>>,
    /// Accumulated: `∂L/∂A`, `[d_inner, d_state]`.
    pub da: &'a mut Buf,
    /// Accumulated: `∂L/∂D`, `[d_inner]`.
    pub dd: &'a mut Buf,
    /// Accumulated: `∂L/∂(Δ bias)`, `[d_inner]`.
    pub ddelta_bias: &'a mut Buf,
}

/// How a device computes matrix products: the CLI's `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compute {
    /// fp32 weights and activations, fp32 products (bit-comparable across backends).
    #[default]
    F32,
    /// fp32 weights and activations, products on TF32 tensor cores (CUDA): inputs rounded to a
    /// 10-bit mantissa, fp32 accumulation. The scan, norms and softmax stay fp32.
    Tf32,
    /// fp32 weights, activations and optimizer state in memory (fp32 master weights); every matrix
    /// product (`linear`, `linear_backward`) rounds its two inputs to bf16 (round to nearest even,
    /// [`bf16_round`]) and accumulates in fp32 into an fp32 output, like PyTorch autocast's
    /// matmuls but with fp32 outputs (CUDA). The weights' bf16 copies are cached on the device and
    /// refreshed after the weights change. The scan, conv, norms, softmax and loss stay fp32.
    Bf16,
}

impl std::str::FromStr for Compute {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Compute::F32),
            "tf32" => Ok(Compute::Tf32),
            "bf16" => Ok(Compute::Bf16),
            "f16" | "fp16" => Err(crate::Error::input(format!(
                "--dtype {s}: fp16 is not implemented; use f32, or on CUDA tf32 (TF32 tensor-core matmuls) or bf16 \
                 (bf16 matmul inputs, fp32 accumulation and storage)"
            ))),
            o => Err(crate::Error::input(format!("--dtype '{o}': expected f32, tf32 or bf16"))),
        }
    }
}

/// `v` rounded to the nearest bf16 (8-bit mantissa; ties to even), returned as the f32 of the
/// same value: the rounding [`Compute::Bf16`] applies to the inputs of matrix products (the CUDA
/// kernel `s6_f32_to_bf16` does the same bit operations). NaN stays NaN; values past bf16's
/// largest finite round to infinity as in IEEE.
pub fn bf16_round(v: f32) -> f32 {
    let u = v.to_bits();
    if v.is_nan() {
        return f32::from_bits((u | 0x0040_0000) & 0xffff_0000);
    }
    let r = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    f32::from_bits(r & 0xffff_0000)
}

/// The rows of `ids` grouped by id, in input order within an id (a counting sort): the rows of
/// id `v` are `order[start[v]..start[v + 1]]`. Every backend's embedding backward adds an id's
/// rows in this order, so that their gradients agree bit for bit and do not vary from run to run.
/// An id not below `vocab` is an error naming it.
pub fn rows_by_id(ids: &[u32], vocab: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(crate::Error::input(format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    let mut start = vec![0usize; vocab + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        order[fill[id as usize]] = i;
        fill[id as usize] += 1;
    }
    Ok((start, order))
}

/// Shapes of one selective-scan call.
#[derive(Clone, Copy, Debug)]
pub struct ScanDims {
    pub batch: usize,
    pub seqlen: usize,
    pub d_inner: usize,
    pub d_state: usize,
}

/// Inputs of the fused selective scan (Mamba's S6 layer with its gate), all `[batch * seqlen, ·]`:
///
/// `Δ = softplus(delta + delta_bias)`, `Ā = exp(Δ·A)`, `h_t = Ā h_{t-1} + Δ·B_t·u_t`,
/// `y_t = (C_t · h_t + D·u_t) · silu(z_t)`, with the state `h` of shape `[batch, d_inner, d_state]`.
/// Without a gate (`z = None`, the paper's "no gate" ablation) `y_t = C_t · h_t + D·u_t`.
///
/// The ablations map onto the same arguments: a non-selective Δ is `delta = 0` with the learned
/// per-channel `delta_bias`; a non-selective `B` or `C` is a broadcast view
/// ([`View::broadcast`], `ld = 0`) of a learned `[d_state]` vector.
pub struct ScanArgs<'a, Buf> {
    pub dims: ScanDims,
    /// Input `u` (the conv output), contiguous `[rows, d_inner]`.
    pub u: &'a Buf,
    /// Raw Δ before bias and softplus, contiguous `[rows, d_inner]`.
    pub delta: &'a Buf,
    /// Δ bias `[d_inner]`.
    pub delta_bias: &'a Buf,
    /// `A = -exp(A_log)`, `[d_inner, d_state]`.
    pub a: &'a Buf,
    /// `B_t`, `[rows, d_state]` columns of a wider matrix (`ld = 0`: one row for every step).
    pub b: View<'a, Buf>,
    /// `C_t`, `[rows, d_state]` columns of a wider matrix (`ld = 0`: one row for every step).
    pub c: View<'a, Buf>,
    /// Skip connection `D`, `[d_inner]`.
    pub d: &'a Buf,
    /// Gate `z`, `[rows, d_inner]` columns of a wider matrix; `None`: no gate.
    pub z: Option<View<'a, Buf>>,
}

/// The weights and sizes of a full Mamba block's mixer (Δ, B, C selective, gated) between
/// `in_proj` and `out_proj`, for the decoding fast paths ([`Backend::mixer_step`],
/// [`Backend::block_step`]). Shapes as in [`crate::model::mamba1::MambaLayer`].
pub struct MixerWeights<'a, Buf> {
    pub batch: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub dt_rank: usize,
    /// `[d_inner, d_conv]`.
    pub conv_weight: &'a Buf,
    pub conv_bias: Option<&'a Buf>,
    /// `[dt_rank + 2·d_state, d_inner]`, output columns `[δ, B, C]`.
    pub x_proj: &'a Buf,
    /// `[d_inner, dt_rank]`.
    pub dt_proj: &'a Buf,
    /// Δ bias `[d_inner]`.
    pub dt_bias: &'a Buf,
    /// `A = -exp(A_log)`, `[d_inner, d_state]`.
    pub a: &'a Buf,
    /// `[d_inner]`.
    pub d: &'a Buf,
}

/// Inputs of [`Backend::mixer_step`]: one token per sequence (`seqlen = 1`) through the mixer,
/// from `in_proj`'s output.
pub struct MixerStepArgs<'a, Buf> {
    pub mixer: MixerWeights<'a, Buf>,
    /// `in_proj`'s output, contiguous `[batch, 2·d_inner]`: `x`, then the gate `z`.
    pub xz: &'a Buf,
}

/// Inputs of [`Backend::block_step`]: one token per sequence through a whole Mamba block.
pub struct BlockStepArgs<'a, Buf> {
    pub d_model: usize,
    /// The block's RMSNorm weight `[d_model]` and epsilon.
    pub norm: &'a Buf,
    pub eps: f32,
    /// `[2·d_inner, d_model]` and its optional bias.
    pub in_proj: &'a Buf,
    pub in_proj_bias: Option<&'a Buf>,
    pub mixer: MixerWeights<'a, Buf>,
    /// `[d_model, d_inner]` and its optional bias.
    pub out_proj: &'a Buf,
    pub out_proj_bias: Option<&'a Buf>,
    /// The next block's `in_proj`, when there is one: a hint (a backend may start reading it
    /// into a cache early); nothing of it is read for this step's results.
    pub next_in_proj: Option<&'a Buf>,
}

/// Outputs of [`Backend::block_step`].
pub struct BlockStepOut<'a, Buf> {
    /// Updated: the residual stream `[batch, d_model]`, to which the block's output is added.
    pub residual: &'a mut Buf,
    /// Written: `in_proj`'s output `[batch, 2·d_inner]`.
    pub xz: &'a mut Buf,
    /// Written and updated as by [`Backend::mixer_step`].
    pub mixer: MixerStepOut<'a, Buf>,
}

/// Outputs of [`Backend::mixer_step`]: exactly what the op-by-op path
/// (conv1d_silu → x_proj → dt_proj → selective_scan) writes.
pub struct MixerStepOut<'a, Buf> {
    /// Written: `u = silu(conv1d(x))`, `[batch, d_inner]`.
    pub u: &'a mut Buf,
    /// Written: `x_proj(u)`, `[batch, dt_rank + 2·d_state]`.
    pub xdbl: &'a mut Buf,
    /// Written: `dt_proj(δ)` without its bias, `[batch, d_inner]`.
    pub delta: &'a mut Buf,
    /// Written: the gated scan output, `[batch, d_inner]`.
    pub y: &'a mut Buf,
    /// Updated: the conv window `[batch, d_conv - 1, d_inner]`.
    pub conv_state: &'a mut Buf,
    /// Updated: the SSM state `[batch, d_inner, d_state]`.
    pub ssm_state: &'a mut Buf,
}

/// Hyperparameters of one AdamW update (see [`Backend::adamw_step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
    /// Multiplies the gradient before the update (1 / accumulation steps × clip factor).
    pub grad_scale: f32,
}

/// Shapes of one multi-head attention (or RoPE) call: `batch` sequences of `seqlen` tokens, each
/// token row holding `n_head` heads of `head_dim` columns (head `h` in columns
/// `h * head_dim .. (h + 1) * head_dim`), rows batch-major (`row = b * seqlen + t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub seqlen: usize,
    pub n_head: usize,
    pub head_dim: usize,
}

impl AttnDims {
    /// Token rows, `batch * seqlen`.
    pub fn rows(&self) -> usize {
        self.batch * self.seqlen
    }
    /// Columns of a token row, `n_head * head_dim`.
    pub fn width(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// Checks the arguments of [`Backend::adamw_step_many`] before anything is updated: the lists
/// have one entry per tensor, each tensor's four buffers have the same length, steps count from 1.
pub fn check_adamw_many<B: Backend>(
    be: &B,
    params: &[&mut B::Buf],
    grads: &[&B::Buf],
    m: &[B::Buf],
    v: &[B::Buf],
    hps: &[AdamW],
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n || hps.len() != n {
        return Err(crate::Error::Backend(format!(
            "adamw_step_many: {n} parameters but {} gradients, {} first moments, {} second moments, {} hyperparameter sets",
            grads.len(),
            m.len(),
            v.len(),
            hps.len()
        )));
    }
    for i in 0..n {
        let len = be.len(&*params[i]);
        let (g, mm, vv) = (be.len(grads[i]), be.len(&m[i]), be.len(&v[i]));
        if g != len || mm != len || vv != len {
            return Err(crate::Error::Backend(format!(
                "adamw_step_many: tensor {i}: lengths differ: param {len}, grad {g}, m {mm}, v {vv}"
            )));
        }
        if hps[i].step == 0 {
            return Err(crate::Error::input("adamw_step: step counts from 1"));
        }
    }
    Ok(())
}

/// The operations a device offers to the models.
///
/// Every op is checked against the f64 reference in `backend::reference` on random inputs.
pub trait Backend: Send + Sync + Clone {
    /// A flat buffer of `f32` on the device.
    type Buf: Send + Sync;
    /// A flat buffer of `u32` on the device: token ids, and the per-sequence sampling state of
    /// [`Backend::sample`] (seen-token masks, draw counters). Decoding keeps them on the device so
    /// that a step needs no host→device copy ([`Backend::embedding_ids`]).
    type Ids: Send + Sync;
    /// Device work recorded once and replayed ([`Backend::capture`]): a CUDA graph on CUDA.
    type Graph;
    /// `u32` values on their way to the host ([`Backend::ids_read_start`]).
    type IdsRead;

    /// Short description ("cpu (2 threads, avx2+fma)").
    fn name(&self) -> String;
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    /// A buffer of `n` floats whose contents are unspecified (zeros unless the backend can skip
    /// clearing it): only for outputs that an op overwrites whole before anything reads them.
    fn uninit(&self, n: usize) -> Result<Self::Buf> {
        self.zeros(n)
    }
    /// Moves host data to the device (no copy on CPU).
    #[allow(clippy::wrong_self_convention)]
    fn from_vec(&self, data: Vec<f32>) -> Result<Self::Buf>;
    /// Copies a buffer back to the host.
    fn to_vec(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Number of elements of a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;

    /// `out[i, :] = table[ids[i], :]`; ids were validated by the caller.
    fn embedding(&self, table: &Self::Buf, ids: &[u32], dim: usize, out: &mut Self::Buf) -> Result<()>;

    /// Moves `u32` values to the device (see [`Backend::Ids`]).
    fn ids_from_slice(&self, ids: &[u32]) -> Result<Self::Ids>;
    /// Copies `u32` values back to the host (waits for the queued work that writes them).
    fn ids_to_vec(&self, ids: &Self::Ids) -> Result<Vec<u32>>;
    /// Queues a copy of `ids` to the host behind the work queued so far and returns without
    /// waiting; [`Backend::ids_read_finish`] waits for that copy only. Work queued after this
    /// call, even work that overwrites `ids`, changes nothing read, and is not waited for:
    /// decoding queues the next step before it reads the tokens of this one, so the device is
    /// not idle while the host handles them.
    fn ids_read_start(&self, ids: &Self::Ids) -> Result<Self::IdsRead>;
    /// The values of a copy started by [`Backend::ids_read_start`] (waits for it).
    fn ids_read_finish(&self, read: Self::IdsRead) -> Result<Vec<u32>>;

    /// [`Backend::embedding`] with the ids already on the device: one row per id of `ids`.
    /// Ids must be in the table (the caller validated them, or [`Backend::sample`] wrote them);
    /// the device does not check them, nothing is copied from the host.
    fn embedding_ids(&self, table: &Self::Buf, ids: &Self::Ids, dim: usize, out: &mut Self::Buf) -> Result<()>;

    /// Picks the next token of each of `rows = len(out)` sequences from `logits` (`[rows, vocab]`)
    /// and writes it to `out`, all on the device, with the semantics of
    /// [`crate::generate::Sampler::sample`]: repetition penalty, then temperature (0 = argmax,
    /// ties to the lowest id), top-k, top-p, min-p (each a prefix of the tokens ordered by
    /// probability, ties to the lowest id), then a seeded draw.
    ///
    /// - `seen`: `[rows, vocab]`, 1 where a token is in the sequence's history (prompt and
    ///   generated), 0 elsewhere; read when `params.repetition_penalty != 1`, which also marks the
    ///   picked token in it (otherwise it may be empty).
    /// - `draws`: `[rows]`, the number of draws made so far per sequence; incremented. The draw
    ///   of row `r` is a counter-based random number of `(params.seed + r, draws[r])`: the same seed
    ///   gives the same tokens, whatever the device. The random numbers are not those of the CPU
    ///   [`crate::generate::Sampler`]; greedy picks and the filtered sets are the same.
    ///
    /// Unlike the host sampler this does not fail on NaN logits (they are never picked) or on
    /// all `-inf` rows (token 0 then).
    fn sample(
        &self,
        logits: &Self::Buf,
        vocab: usize,
        params: &crate::generate::SamplingParams,
        seen: &mut Self::Ids,
        draws: &mut Self::Ids,
        out: &mut Self::Ids,
    ) -> Result<()>;

    /// Records the device work `work` issues, without running it, as a [`Backend::Graph`] to be
    /// run by [`Backend::replay`]: every replay runs the same operations on the same buffers
    /// (same addresses) with the same arguments, so `work` must not allocate, free, or copy from
    /// the host. `Ok(None)`: this backend does not record (the default; the caller runs `work`
    /// itself each time). An error says why recording failed; the backend is usable afterwards.
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>> {
        let _ = work;
        Ok(None)
    }

    /// Whether [`Backend::capture`] records graphs here: decoding then keeps tokens and sampling
    /// on the device ([`crate::model::mamba1::Decoder`]) instead of sampling on the host.
    fn records_graphs(&self) -> bool {
        false
    }

    /// Runs a recorded graph once (queued, like every op).
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Err(crate::Error::Backend(format!("{}: no recorded graphs to replay", self.name())))
    }

    /// `out[rows, n] = x[rows, k] · wᵀ + bias` with `w` in PyTorch `Linear` layout `[n, k]`.
    fn linear(
        &self,
        x: View<'_, Self::Buf>,
        rows: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Fused residual add + RMSNorm over rows of width `dim`:
    /// `residual += delta` (when given), then `out = residual / rms(residual) * weight`.
    fn add_rmsnorm(
        &self,
        residual: &mut Self::Buf,
        delta: Option<&Self::Buf>,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// [`Backend::add_rmsnorm`] with the sum `residual + delta` written to `residual_out` (its
    /// first `rows * dim` values overwritten) and `residual` left as it was. Training keeps every
    /// block's input residual for the backward: the next block's sum then goes to a new buffer
    /// instead of a copy of the kept one being made.
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm_into(
        &self,
        residual: &Self::Buf,
        delta: Option<&Self::Buf>,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        dim: usize,
        residual_out: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Depthwise causal conv1d over time + SiLU, per sequence of a batch.
    ///
    /// `x`: `[batch * seqlen, channels]` (a column range), `weight`: `[channels, kernel]`,
    /// `state`: `[batch, kernel - 1, channels]`, the inputs preceding `t = 0` (zeros for a fresh
    /// sequence); on return it holds the last `kernel - 1` inputs. `out`: `[batch * seqlen, channels]`.
    fn conv1d_silu(
        &self,
        x: View<'_, Self::Buf>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        state: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// The fused selective scan (see [`ScanArgs`]). `state` (`[batch, d_inner, d_state]`) holds the
    /// initial state and receives the final one; `y`: `[batch * seqlen, d_inner]`.
    fn selective_scan(&self, args: &ScanArgs<'_, Self::Buf>, state: &mut Self::Buf, y: &mut Self::Buf) -> Result<()>;

    /// Optional fast path for decoding: conv1d + SiLU with the conv-state update, `x_proj`,
    /// `dt_proj` and one selective-scan step with `D` and the gate, for one token per sequence,
    /// fused into fewer device calls. `Ok(true)`: done, with the same outputs and state updates as
    /// [`Backend::conv1d_silu`], [`Backend::linear`] (twice) and [`Backend::selective_scan`] would
    /// give; `Ok(false)` (the default): nothing was done, the caller runs those ops one by one.
    fn mixer_step(&self, args: &MixerStepArgs<'_, Self::Buf>, out: MixerStepOut<'_, Self::Buf>) -> Result<bool> {
        let _ = (args, out);
        Ok(false)
    }

    /// Optional fast path for decoding, a whole block: `residual += out_proj(mixer(rmsnorm(residual)))`
    /// for one token per sequence, with the conv and SSM states updated, in fewer device calls
    /// than [`Backend::add_rmsnorm`], [`Backend::linear`], [`Backend::mixer_step`] and
    /// [`Backend::linear`] again. `Ok(true)`: done, with the same results as those ops (`xz` and
    /// the mixer's outputs written as they write them); `Ok(false)` (the default): nothing was
    /// done.
    fn block_step(&self, args: &BlockStepArgs<'_, Self::Buf>, out: BlockStepOut<'_, Self::Buf>) -> Result<bool> {
        let _ = (args, out);
        Ok(false)
    }

    // ----- backward ops (training). Zero initial conv/SSM state is assumed: training runs whole
    // sequences from their start. -----

    /// Backward of [`Backend::linear`]: `dx = dy · w` (written, when given), `dw += dyᵀ · x`,
    /// `db += Σ_rows dy` (when given). `dy`: `[rows, n]` contiguous.
    fn linear_backward(
        &self,
        x: View<'_, Self::Buf>,
        rows: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        dy: &Self::Buf,
        dx: Option<ViewMut<'_, Self::Buf>>,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// [`Backend::linear_backward`] with `dx += dy · w`: the input's gradient *added* to what `dx`
    /// holds (an input that also feeds another op: x_proj's input `u` feeds the scan), with no
    /// scratch buffer and no separate add (a GEMM with beta = 1).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_add_dx(
        &self,
        x: View<'_, Self::Buf>,
        rows: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        dy: &Self::Buf,
        dx: ViewMut<'_, Self::Buf>,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// Backward of the RMSNorm half of [`Backend::add_rmsnorm`]: `residual` is the residual after
    /// the add, `dout` the gradient of the normed output. `dresidual += ∂L/∂residual`,
    /// `dweight += ∂L/∂weight`.
    fn rmsnorm_backward(
        &self,
        residual: &Self::Buf,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        dim: usize,
        dout: &Self::Buf,
        dresidual: &mut Self::Buf,
        dweight: &mut Self::Buf,
    ) -> Result<()>;

    /// Backward of [`Backend::conv1d_silu`] from a zero initial state (recomputes the
    /// pre-activation): `dx` written, `dweight`/`dbias` accumulated. `dout`: `[rows, channels]`.
    fn conv1d_silu_backward(
        &self,
        x: View<'_, Self::Buf>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &Self::Buf,
        bias: Option<&Self::Buf>,
        dout: &Self::Buf,
        dx: ViewMut<'_, Self::Buf>,
        dweight: &mut Self::Buf,
        dbias: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// Backward of [`Backend::selective_scan`] from a zero initial state. Recomputes the states
    /// (from per-chunk checkpoints) instead of reading stored ones: memory per token does not
    /// grow with `d_state`. `dy`: `[rows, d_inner]`.
    fn selective_scan_backward(
        &self,
        args: &ScanArgs<'_, Self::Buf>,
        dy: &Self::Buf,
        grads: ScanGrads<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dtable[ids[i], :] += dout[i, :]`.
    fn embedding_backward(&self, ids: &[u32], dim: usize, dout: &Self::Buf, dtable: &mut Self::Buf) -> Result<()>;

    /// Softmax cross-entropy over rows of `logits` (`[rows, vocab]`). Targets equal to
    /// `u32::MAX` are ignored. Writes `dlogits = scale · (softmax − onehot)` (zero rows for
    /// ignored targets) and returns the *sum* of the row losses (f64) and the count of counted rows.
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut Self::Buf,
    ) -> Result<(f64, usize)>;

    /// Sum of squares of a buffer (f64 accumulation), for global-norm clipping.
    fn sum_squares(&self, buf: &Self::Buf) -> Result<f64>;

    /// Sums of squares of several buffers, one per buffer, in order: the values
    /// [`Backend::sum_squares`] returns for each (bitwise). A device backend reads them back
    /// together, once.
    fn sum_squares_each(&self, bufs: &[&Self::Buf]) -> Result<Vec<f64>> {
        bufs.iter().map(|b| self.sum_squares(b)).collect()
    }

    /// The sum of squares over several buffers, for the global gradient norm: the per-buffer sums
    /// of [`Backend::sum_squares`] added in order from 0 (bitwise the same as that loop). A device
    /// backend reduces on the device and reads back one value.
    fn sum_squares_many(&self, bufs: &[&Self::Buf]) -> Result<f64> {
        let mut total = 0.0;
        for b in bufs {
            total += self.sum_squares(b)?;
        }
        Ok(total)
    }

    /// `dst = -exp(src)` elementwise (same lengths): `A = -exp(A_log)`.
    fn neg_exp(&self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;

    /// `dst += x ⊙ y` elementwise (same lengths), the product rounded to f32 before the sum (no
    /// fused multiply-add, so that every backend gives the same bits): `∂A_log += ∂A ⊙ A`.
    fn add_product(&self, dst: &mut Self::Buf, x: &Self::Buf, y: &Self::Buf) -> Result<()>;

    /// One AdamW step with PyTorch semantics on one parameter tensor: `grad` is scaled by
    /// `grad_scale` first (clipping / accumulation); decoupled weight decay
    /// `p -= lr·wd·p`; bias-corrected moments with `step` counted from 1.
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
    ) -> Result<()>;

    /// [`Backend::adamw_step`] on many tensors: `params[i]` with `grads[i]`, `m[i]`, `v[i]` and
    /// `hps[i]`, every list the same length. Results are bitwise those of the per-tensor calls; a
    /// device backend updates all tensors in one launch. Checks every tensor before it updates any.
    fn adamw_step_many(
        &self,
        params: Vec<&mut Self::Buf>,
        grads: &[&Self::Buf],
        m: &mut [Self::Buf],
        v: &mut [Self::Buf],
        hps: &[AdamW],
    ) -> Result<()> {
        check_adamw_many(self, &params, grads, m, v, hps)?;
        for ((((p, g), m), v), hp) in params.into_iter().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()).zip(hps) {
            self.adamw_step(p, g, m, v, hp)?;
        }
        Ok(())
    }

    /// A copy of a buffer on the same device.
    fn clone_buf(&self, buf: &Self::Buf) -> Result<Self::Buf>;

    /// `dst += src` elementwise (same lengths).
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    /// Sets every element to zero.
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;

    /// `out[i, :] = src[rows[i], :]` for rows of width `dim`.
    fn gather_rows(&self, src: &Self::Buf, rows: &[usize], dim: usize, out: &mut Self::Buf) -> Result<()>;

    // ----- attention-model ops (the Transformer baseline, `model::attention`) -----

    /// Rotary position embedding in place, HF Llama convention (`rotate_half`, non-interleaved):
    /// in each head, column `i < head_dim / 2` pairs with column `i + head_dim / 2` and the pair is
    /// rotated by the angle `(pos0 + t) · θ^(−2i / head_dim)`, `t` the position in its sequence.
    /// `x`: `[batch * seqlen, n_head * head_dim]` columns of a wider matrix. `head_dim` must be even.
    fn rope(&self, x: ViewMut<'_, Self::Buf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()>;

    /// Backward of [`Backend::rope`] in place: the rotation is orthogonal, so the gradient is
    /// rotated by the opposite angles (the inverse rotation).
    fn rope_backward(&self, dx: ViewMut<'_, Self::Buf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()>;

    /// Causal multi-head attention per sequence: `out[t] = Σ_{s ≤ t} softmax_s(scale · q_t·k_s) v_s`
    /// for every head. `q`, `k`, `v`: `[rows, n_head * head_dim]` columns of wider matrices (e.g.
    /// a fused qkv buffer); `out`: contiguous `[rows, n_head * head_dim]`; `lse`: contiguous
    /// `[batch, n_head, seqlen]`, receives each row's logsumexp of `scale · q·k`, all the backward
    /// needs besides the inputs. Memory is linear in `seqlen`: no `seqlen × seqlen` matrix exists.
    fn attention(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, Self::Buf>,
        k: View<'_, Self::Buf>,
        v: View<'_, Self::Buf>,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
    ) -> Result<()>;

    /// Backward of [`Backend::attention`] (FlashAttention-2 style: the probabilities are
    /// recomputed from `lse`). `out` and `lse` are the forward's outputs, `dout` the gradient of
    /// `out` (contiguous). `dq`, `dk`, `dv` are written.
    fn attention_backward(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, Self::Buf>,
        k: View<'_, Self::Buf>,
        v: View<'_, Self::Buf>,
        out: &Self::Buf,
        lse: &Self::Buf,
        dout: &Self::Buf,
        dq: ViewMut<'_, Self::Buf>,
        dk: ViewMut<'_, Self::Buf>,
        dv: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// SwiGLU gating of a gated MLP: `out = silu(gate) · up` elementwise, `[rows, cols]`
    /// (`gate`, `up` columns of wider matrices, `out` contiguous).
    fn swiglu(
        &self,
        gate: View<'_, Self::Buf>,
        up: View<'_, Self::Buf>,
        rows: usize,
        cols: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Backward of [`Backend::swiglu`]: `dgate`, `dup` written. `dout` contiguous `[rows, cols]`.
    fn swiglu_backward(
        &self,
        gate: View<'_, Self::Buf>,
        up: View<'_, Self::Buf>,
        rows: usize,
        cols: usize,
        dout: &Self::Buf,
        dgate: ViewMut<'_, Self::Buf>,
        dup: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
    /// Column sums: `dst[j] += Σ_r src[r, j]` over `rows` rows of `n` columns (the gradient of a
    /// parameter broadcast to every row, e.g. a non-selective `B`). `dst` holds exactly `n`
    /// values. The default goes through the host; the sum is over rows in order, in f64.
    fn sum_rows(&self, src: View<'_, Self::Buf>, rows: usize, n: usize, dst: &mut Self::Buf) -> Result<()> {
        let host = self.to_vec(src.buf)?;
        if rows > 0 && host.len() < src.offset + (rows - 1) * src.ld + n {
            return Err(crate::Error::Backend(format!("sum_rows: source of {} elements is too short", host.len())));
        }
        if self.len(dst) != n {
            return Err(crate::Error::Backend(format!(
                "sum_rows: destination has {} elements, not {n}",
                self.len(dst)
            )));
        }
        let mut sum = vec![0.0f64; n];
        for r in 0..rows {
            for (s, v) in sum.iter_mut().zip(&host[src.offset + r * src.ld..][..n]) {
                *s += *v as f64;
            }
        }
        let add = self.from_vec(sum.into_iter().map(|v| v as f32).collect())?;
        self.add_assign(dst, &add)
    }

    /// Waits until all queued work is done (devices that run asynchronously, for timing); a no-op
    /// on the CPU.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Bytes a matrix product reads per weight element (4 for f32; 2 where products read bf16
    /// copies of the weights, [`Compute::Bf16`] on CUDA): for the decode benchmarks' bandwidth
    /// limit.
    fn matmul_weight_bytes(&self) -> usize {
        4
    }

    /// How many logits (`rows × vocab` floats) the language-model head computes at once in the
    /// loss (`model::head_cross_entropy`): a memory/overhead trade-off. 4M floats (16 MB, cache
    /// friendly) by default; devices with much memory and a per-call readback ask for more.
    fn logits_chunk_elems(&self) -> usize {
        1 << 22
    }

    /// The most device memory in use (bytes) since the last [`Backend::reset_peak_memory`], when
    /// the device can tell (`None` on the CPU).
    fn peak_memory(&self) -> Option<u64> {
        None
    }

    /// Starts a new [`Backend::peak_memory`] measurement.
    fn reset_peak_memory(&self) {}

    /// A hint: whether the forward passes that follow keep their activations for a backward pass
    /// (set by `loss_and_grads` for its duration). A backend may then choose less memory over
    /// more speed: the CUDA backend writes no bf16 copies of activations (`cuda::act_bf16_enabled`),
    /// which would live as long as the kept activations. Off until told; the default ignores it.
    fn set_keeping_activations(&self, keeping: bool) {
        let _ = keeping;
    }

    /// A hint on one activation or gradient buffer: every reader of its values takes them rounded to bf16 or
    /// can, so when the products run in bf16 the backend may hold them in bf16 alone (as the
    /// official kernels' bf16 models hold their activations). A reader that needs f32 still gets
    /// f32 values: the bf16 ones widened. The CUDA backend writes such buffers in bf16 alone from
    /// the kernels that can (`cuda::bf16_storage_enabled`); the default ignores the hint.
    fn allow_bf16_storage(&self, buf: &mut Self::Buf) {
        let _ = buf;
    }

    /// A hint on one activation buffer that a training step does not keep (it is rewritten
    /// layer by layer) and that bf16 products read besides f32 readers: the backend may write a
    /// bf16 copy beside its f32 values even while activations are kept for a backward pass
    /// ([`Backend::set_keeping_activations`]), since the copy lives no longer than one buffer.
    /// The CUDA backend does so under `cuda::bf16_storage_enabled`; the default ignores the hint.
    fn allow_bf16_copy(&self, buf: &mut Self::Buf) {
        let _ = buf;
    }

    /// A hint on a buffer just written and from now on read only by bf16 products until written
    /// again (what training keeps of the scan output and, under
    /// [`Recompute::None`](crate::model::Recompute), of the norm's output):
    /// where the backend holds its values in bf16 alone ([`Backend::allow_bf16_storage`]) it may
    /// free their f32 storage, allocating it again at the next write. An f32 read before that is
    /// an error. The CUDA backend does so; the default ignores the hint.
    fn release_f32(&self, buf: &mut Self::Buf) -> Result<()> {
        let _ = buf;
        Ok(())
    }
}

#[cfg(test)]
mod compute_tests {
    use super::{bf16_round, Compute};

    #[test]
    fn bf16_round_is_round_to_nearest_even() {
        // Exactly representable values stay.
        for v in [0.0f32, -0.0, 1.0, -2.5, 0.15625, 2f32.powi(127), f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(bf16_round(v).to_bits(), (v.to_bits() & 0xffff_0000), "{v}");
        }
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even mantissa (1).
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
        assert_eq!(bf16_round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above the halfway point rounds up, just below rounds down.
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7));
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8) - 2f32.powi(-20)), 1.0);
        assert_eq!(bf16_round(-(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), -(1.0 + 2f32.powi(-7)));
        // The largest finite f32 rounds past bf16's largest finite: infinity.
        assert_eq!(bf16_round(f32::MAX), f32::INFINITY);
        assert!(bf16_round(f32::NAN).is_nan());
        // Relative error at most half a bf16 ulp (2^-8 of the leading power of two) for normal values.
        let mut x = 1.0e-30f32;
        while x < 1.0e30 {
            let r = bf16_round(x * 1.2345);
            assert!(((r - x * 1.2345) / (x * 1.2345)).abs() <= 2f32.powi(-8), "{x}");
            x *= 3.7;
        }
    }

    #[test]
    fn dtype_parses_bf16_and_refuses_fp16() {
        assert_eq!("bf16".parse::<Compute>().unwrap(), Compute::Bf16);
        assert_eq!("tf32".parse::<Compute>().unwrap(), Compute::Tf32);
        let e = "fp16".parse::<Compute>().unwrap_err().to_string();
        assert!(e.contains("fp16 is not implemented"), "{e}");
        assert!("int8".parse::<Compute>().is_err());
    }
}
