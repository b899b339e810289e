//! The backend boundary: the few operations the models need, implemented once per device.
//!
//! Models ([`crate::model`]) decide *what* runs in which order; a backend decides *how*. Buffers are
//! flat `f32` arrays owned by the backend (host memory on CPU, device memory on CUDA). Activations
//! are row-major `[rows, cols]` matrices whose rows are tokens, batch-major (`row = b * L + t`).
//! Operations that read a column range of a wider matrix take a [`View`] (offset + row stride), as
//! BLAS does, so that slicing `x`/`z` out of `in_proj`'s output or `Δ`/`B`/`C` out of `x_proj`'s
//! output costs no copy.

#![allow(clippy::too_many_arguments)]

pub mod cpu;
#[cfg(test)]
pub(crate) mod reference;

use crate::Result;

/// A column range of a row-major matrix held in a buffer: element `(r, c)` is
/// `buf[offset + r * ld + c]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    pub buf: &'a T,
    pub offset: usize,
    pub ld: usize,
}

impl<'a, T> View<'a, T> {
    /// A contiguous matrix with `cols` columns.
    pub fn full(buf: &'a T, cols: usize) -> Self {
        View { buf, offset: 0, ld: cols }
    }
    /// Columns `start..` of a matrix with row stride `ld`.
    pub fn cols(buf: &'a T, start: usize, ld: usize) -> Self {
        View { buf, offset: start, ld }
    }
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
    /// `B_t`, `[rows, d_state]` columns of a wider matrix.
    pub b: View<'a, Buf>,
    /// `C_t`, `[rows, d_state]` columns of a wider matrix.
    pub c: View<'a, Buf>,
    /// Skip connection `D`, `[d_inner]`.
    pub d: &'a Buf,
    /// Gate `z`, `[rows, d_inner]` columns of a wider matrix.
    pub z: View<'a, Buf>,
}

/// The operations a device offers to the models.
///
/// Every op is checked against the f64 reference in `backend::reference` on random inputs.
pub trait Backend: Send + Sync {
    /// A flat buffer of `f32` on the device.
    type Buf: Send + Sync;

    /// Short description ("cpu (2 threads, avx2+fma)").
    fn name(&self) -> String;
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    /// Moves host data to the device (no copy on CPU).
    fn from_vec(&self, data: Vec<f32>) -> Result<Self::Buf>;
    /// Copies a buffer back to the host.
    fn to_vec(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Number of elements of a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;

    /// `out[i, :] = table[ids[i], :]`; ids were validated by the caller.
    fn embedding(&self, table: &Self::Buf, ids: &[u32], dim: usize, out: &mut Self::Buf) -> Result<()>;

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

    /// `out[i, :] = src[rows[i], :]` for rows of width `dim`.
    fn gather_rows(&self, src: &Self::Buf, rows: &[usize], dim: usize, out: &mut Self::Buf) -> Result<()>;
}
