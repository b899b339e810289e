//! The CPU backend: host `Vec<f32>` buffers, `gemm` for matmuls, hand-written fused kernels
//! (AVX2 + FMA chosen at run time) for the scan, conv, norms and attention; threads through rayon.

// Kernels index fixed-width lane arrays in lockstep; index loops say that most plainly.
#![allow(clippy::needless_range_loop)]

mod attention;
mod backward;
mod conv;
mod linear;
mod norm;
mod scan;
pub mod simd;

use rayon::prelude::*;

use super::{AdamW, AttnDims, Backend, ScanArgs, ScanGrads, View, ViewMut};
use crate::{Error, Result};

/// The CPU backend. Threads come from rayon's global pool (`RAYON_NUM_THREADS`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu;

/// Checks that a buffer holds at least `need` elements; a violation is a bug in the caller, but
/// it is reported, never turned into out-of-bounds access.
fn need(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Backend(format!("cpu: buffer '{what}' has {have} elements, needs {need}")));
    }
    Ok(())
}

/// Elements a `rows × cols` view at stride `ld` reaches.
fn view_extent(rows: usize, cols: usize, offset: usize, ld: usize) -> usize {
    if rows == 0 {
        0
    } else {
        offset + (rows - 1) * ld + cols
    }
}

fn check_view(what: &str, v: &View<'_, Vec<f32>>, rows: usize, cols: usize) -> Result<()> {
    if v.ld < cols {
        return Err(Error::Backend(format!("cpu: view '{what}' has row stride {} < {cols} columns", v.ld)));
    }
    need(what, v.buf.len(), view_extent(rows, cols, v.offset, v.ld))
}

/// [`check_view`] for the read views whose kernels accept `ld = 0` (one row broadcast to every
/// row): the scan's `B` and `C`, and [`Backend::sum_rows`]'s source.
fn check_view_bcast(what: &str, v: &View<'_, Vec<f32>>, rows: usize, cols: usize) -> Result<()> {
    if v.ld == 0 {
        return need(what, v.buf.len(), view_extent(rows.min(1), cols, v.offset, 0));
    }
    check_view(what, v, rows, cols)
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;
    /// The CPU records nothing ([`Backend::capture`] returns `None`).
    type Graph = ();
    /// Ops run when called: a read is the values themselves.
    type IdsRead = Vec<u32>;

    fn ids_from_slice(&self, ids: &[u32]) -> Result<Vec<u32>> {
        Ok(ids.to_vec())
    }

    fn ids_to_vec(&self, ids: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(ids.clone())
    }

    fn ids_read_start(&self, ids: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(ids.clone())
    }

    fn ids_read_finish(&self, read: Vec<u32>) -> Result<Vec<u32>> {
        Ok(read)
    }

    fn embedding_ids(&self, table: &Vec<f32>, ids: &Vec<u32>, dim: usize, out: &mut Vec<f32>) -> Result<()> {
        self.embedding(table, ids, dim, out)
    }

    fn sample(
        &self,
        logits: &Vec<f32>,
        vocab: usize,
        params: &crate::generate::SamplingParams,
        seen: &mut Vec<u32>,
        draws: &mut Vec<u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        crate::generate::sampler::sample_rows(logits, vocab, params, seen, draws, out)
    }

    fn name(&self) -> String {
        let isa = if simd::has_avx2_fma() { "avx2+fma" } else { "portable" };
        format!("cpu ({} threads, {isa})", rayon::current_num_threads())
    }

    fn zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn from_vec(&self, data: Vec<f32>) -> Result<Vec<f32>> {
        Ok(data)
    }

    fn to_vec(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn embedding(&self, table: &Vec<f32>, ids: &[u32], dim: usize, out: &mut Vec<f32>) -> Result<()> {
        need("embedding out", out.len(), ids.len() * dim)?;
        let rows = table.len() / dim.max(1);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::input(format!("token id {bad} is outside the vocabulary (size {rows})")));
        }
        out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(o, &id)| {
            o.copy_from_slice(&table[id as usize * dim..][..dim]);
        });
        Ok(())
    }

    fn linear(
        &self,
        x: View<'_, Vec<f32>>,
        rows: usize,
        k: usize,
        w: &Vec<f32>,
        n: usize,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_view("linear x", &x, rows, k)?;
        need("linear weight", w.len(), n * k)?;
        need("linear out", out.len(), rows * n)?;
        if let Some(b) = bias {
            need("linear bias", b.len(), n)?;
        }
        linear::linear(&x.buf[x.offset..], x.ld, rows, k, w, n, bias.map(|b| &b[..n]), &mut out[..rows * n]);
        Ok(())
    }

    fn add_rmsnorm(
        &self,
        residual: &mut Vec<f32>,
        delta: Option<&Vec<f32>>,
        weight: &Vec<f32>,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        need("rmsnorm residual", residual.len(), rows * dim)?;
        need("rmsnorm weight", weight.len(), dim)?;
        need("rmsnorm out", out.len(), rows * dim)?;
        if let Some(d) = delta {
            need("rmsnorm delta", d.len(), rows * dim)?;
        }
        norm::add_rmsnorm(
            &mut residual[..rows * dim],
            delta.map(|d| &d[..rows * dim]),
            &weight[..dim],
            eps,
            dim,
            &mut out[..rows * dim],
        );
        Ok(())
    }

    fn add_rmsnorm_into(
        &self,
        residual: &Vec<f32>,
        delta: Option<&Vec<f32>>,
        weight: &Vec<f32>,
        eps: f32,
        rows: usize,
        dim: usize,
        residual_out: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        need("rmsnorm residual", residual.len(), rows * dim)?;
        need("rmsnorm residual out", residual_out.len(), rows * dim)?;
        // A copy, then the sum in place: on the CPU the copy is a small part of the norm's cost.
        residual_out[..rows * dim].copy_from_slice(&residual[..rows * dim]);
        self.add_rmsnorm(residual_out, delta, weight, eps, rows, dim, out)
    }

    fn conv1d_silu(
        &self,
        x: View<'_, Vec<f32>>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        state: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if kernel == 0 {
            return Err(Error::Backend("cpu: conv kernel size 0".into()));
        }
        let rows = batch * seqlen;
        check_view("conv x", &x, rows, channels)?;
        need("conv weight", weight.len(), channels * kernel)?;
        need("conv state", state.len(), batch * (kernel - 1) * channels)?;
        need("conv out", out.len(), rows * channels)?;
        if let Some(b) = bias {
            need("conv bias", b.len(), channels)?;
        }
        let args = conv::ConvArgs {
            x: &x.buf[x.offset..],
            x_ld: x.ld,
            batch,
            seqlen,
            channels,
            kernel,
            weight,
            bias: bias.map(|b| &b[..channels]),
        };
        let slen = batch * (kernel - 1) * channels;
        conv::conv1d_silu(&args, &mut state[..slen], &mut out[..rows * channels]);
        Ok(())
    }

    fn selective_scan(&self, args: &ScanArgs<'_, Vec<f32>>, state: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let dm = args.dims;
        let rows = dm.batch * dm.seqlen;
        need("scan u", args.u.len(), rows * dm.d_inner)?;
        need("scan delta", args.delta.len(), rows * dm.d_inner)?;
        need("scan delta_bias", args.delta_bias.len(), dm.d_inner)?;
        need("scan A", args.a.len(), dm.d_inner * dm.d_state)?;
        need("scan D", args.d.len(), dm.d_inner)?;
        check_view_bcast("scan B", &args.b, rows, dm.d_state)?;
        check_view_bcast("scan C", &args.c, rows, dm.d_state)?;
        if let Some(z) = &args.z {
            check_view("scan z", z, rows, dm.d_inner)?;
        }
        need("scan state", state.len(), dm.batch * dm.d_inner * dm.d_state)?;
        need("scan y", y.len(), rows * dm.d_inner)?;
        scan::selective_scan(args, state, y);
        Ok(())
    }

    fn linear_backward(
        &self,
        x: View<'_, Vec<f32>>,
        rows: usize,
        k: usize,
        w: &Vec<f32>,
        n: usize,
        dy: &Vec<f32>,
        dx: Option<ViewMut<'_, Vec<f32>>>,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        backward::linear_backward(x, rows, k, w, n, dy, dx, false, dw, db)
    }

    fn linear_backward_add_dx(
        &self,
        x: View<'_, Vec<f32>>,
        rows: usize,
        k: usize,
        w: &Vec<f32>,
        n: usize,
        dy: &Vec<f32>,
        dx: ViewMut<'_, Vec<f32>>,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        backward::linear_backward(x, rows, k, w, n, dy, Some(dx), true, dw, db)
    }

    fn rmsnorm_backward(
        &self,
        residual: &Vec<f32>,
        weight: &Vec<f32>,
        eps: f32,
        rows: usize,
        dim: usize,
        dout: &Vec<f32>,
        dresidual: &mut Vec<f32>,
        dweight: &mut Vec<f32>,
    ) -> Result<()> {
        backward::rmsnorm_backward(residual, weight, eps, rows, dim, dout, dresidual, dweight)
    }

    fn conv1d_silu_backward(
        &self,
        x: View<'_, Vec<f32>>,
        batch: usize,
        seqlen: usize,
        channels: usize,
        kernel: usize,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        dout: &Vec<f32>,
        dx: ViewMut<'_, Vec<f32>>,
        dweight: &mut Vec<f32>,
        dbias: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        backward::conv1d_silu_backward(x, batch, seqlen, channels, kernel, weight, bias, dout, dx, dweight, dbias)
    }

    fn selective_scan_backward(
        &self,
        args: &ScanArgs<'_, Vec<f32>>,
        dy: &Vec<f32>,
        grads: ScanGrads<'_, Vec<f32>>,
    ) -> Result<()> {
        backward::selective_scan_backward(args, dy, grads)
    }

    fn embedding_backward(&self, ids: &[u32], dim: usize, dout: &Vec<f32>, dtable: &mut Vec<f32>) -> Result<()> {
        backward::embedding_backward(ids, dim, dout, dtable)
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        vocab: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut Vec<f32>,
    ) -> Result<(f64, usize)> {
        backward::cross_entropy(logits, rows, vocab, targets, scale, dlogits)
    }

    fn sum_squares(&self, buf: &Vec<f32>) -> Result<f64> {
        // Partial sums per fixed chunk, added in order: rayon's own `sum` splits adaptively, which
        // would make the result (and so clipping, and resumed runs) depend on scheduling.
        let partials: Vec<f64> =
            buf.par_chunks(1 << 16).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
        Ok(partials.iter().sum())
    }

    fn neg_exp(&self, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        if dst.len() != src.len() {
            return Err(Error::Backend(format!("cpu: neg_exp of {} elements into {}", src.len(), dst.len())));
        }
        // The host `f32::exp`, as the models derived `A = -exp(A_log)` before this op existed.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = -s.exp());
        Ok(())
    }

    fn add_product(&self, dst: &mut Vec<f32>, x: &Vec<f32>, y: &Vec<f32>) -> Result<()> {
        if x.len() != dst.len() || y.len() != dst.len() {
            return Err(Error::Backend(format!(
                "cpu: add_product of {} and {} elements into {}",
                x.len(),
                y.len(),
                dst.len()
            )));
        }
        dst.iter_mut().zip(x.iter().zip(y)).for_each(|(d, (a, b))| *d += a * b);
        Ok(())
    }

    fn adamw_step(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: &AdamW,
    ) -> Result<()> {
        backward::adamw_step(param, grad, m, v, hp)
    }

    fn clone_buf(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        if dst.len() != src.len() {
            return Err(Error::Backend(format!("cpu: add_assign of {} elements into {}", src.len(), dst.len())));
        }
        dst.par_chunks_mut(1 << 14).zip(src.par_chunks(1 << 14)).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        });
        Ok(())
    }

    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }

    fn gather_rows(&self, src: &Vec<f32>, rows: &[usize], dim: usize, out: &mut Vec<f32>) -> Result<()> {
        need("gather out", out.len(), rows.len() * dim)?;
        for (i, &r) in rows.iter().enumerate() {
            need("gather src", src.len(), (r + 1) * dim)?;
            out[i * dim..][..dim].copy_from_slice(&src[r * dim..][..dim]);
        }
        Ok(())
    }

    fn rope(&self, x: ViewMut<'_, Vec<f32>>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        attention::rope(x, dims, pos0, theta, false)
    }

    fn rope_backward(&self, dx: ViewMut<'_, Vec<f32>>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        attention::rope(dx, dims, pos0, theta, true)
    }

    fn attention(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, Vec<f32>>,
        k: View<'_, Vec<f32>>,
        v: View<'_, Vec<f32>>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
    ) -> Result<()> {
        attention::attention(dims, scale, q, k, v, out, lse)
    }

    fn attention_backward(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, Vec<f32>>,
        k: View<'_, Vec<f32>>,
        v: View<'_, Vec<f32>>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        dq: ViewMut<'_, Vec<f32>>,
        dk: ViewMut<'_, Vec<f32>>,
        dv: ViewMut<'_, Vec<f32>>,
    ) -> Result<()> {
        attention::attention_backward(dims, scale, q, k, v, out, lse, dout, dq, dk, dv)
    }

    fn swiglu(
        &self,
        gate: View<'_, Vec<f32>>,
        up: View<'_, Vec<f32>>,
        rows: usize,
        cols: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::swiglu(gate, up, rows, cols, out)
    }

    fn swiglu_backward(
        &self,
        gate: View<'_, Vec<f32>>,
        up: View<'_, Vec<f32>>,
        rows: usize,
        cols: usize,
        dout: &Vec<f32>,
        dgate: ViewMut<'_, Vec<f32>>,
        dup: ViewMut<'_, Vec<f32>>,
    ) -> Result<()> {
        attention::swiglu_backward(gate, up, rows, cols, dout, dgate, dup)
    }

    fn sum_rows(&self, src: View<'_, Vec<f32>>, rows: usize, n: usize, dst: &mut Vec<f32>) -> Result<()> {
        check_view_bcast("sum_rows src", &src, rows, n)?;
        if dst.len() != n {
            return Err(Error::Backend(format!("cpu: sum_rows destination has {} elements, not {n}", dst.len())));
        }
        // Serial, rows in order, in f64: the matrices summed here are [tokens, d_state].
        let mut sum = vec![0.0f64; n];
        for r in 0..rows {
            for (s, v) in sum.iter_mut().zip(&src.buf[src.offset + r * src.ld..][..n]) {
                *s += *v as f64;
            }
        }
        dst.iter_mut().zip(&sum).for_each(|(d, s)| *d += *s as f32);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attention;
#[cfg(test)]
mod tests_backward;
