//! [`Timed`]: a backend that times every op of the backend it wraps, for finding where a model's
//! time goes (`s6 bench … --profile`). Each op waits for the device before and after it
//! ([`Backend::synchronize`]), so the times are per op and exact, and the run as a whole is
//! slower than without the wrapper (no overlap between ops, one round trip per op). Matrix
//! products are reported per shape; graphs are not recorded (decoding runs op by op).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{
    AdamW, AttnDims, Backend, BlockStepArgs, BlockStepOut, MixerStepArgs, MixerStepOut, ScanArgs, ScanGrads, View,
    ViewMut,
};
use crate::Result;

/// Calls and seconds of one op (or one product shape).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub seconds: f64,
}

/// A backend whose ops are timed one by one; clones share the tally.
#[derive(Clone)]
pub struct Timed<B: Backend> {
    inner: B,
    tally: Arc<Mutex<BTreeMap<String, OpTime>>>,
}

impl<B: Backend> Timed<B> {
    /// Wraps `inner`, with an empty tally.
    pub fn new(inner: B) -> Self {
        Timed { inner, tally: Arc::default() }
    }

    /// The backend that runs the ops.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Every op timed so far, slowest in total first.
    pub fn report(&self) -> Vec<(String, OpTime)> {
        let map = self.tally.lock().map(|m| m.clone()).unwrap_or_default();
        let mut rows: Vec<(String, OpTime)> = map.into_iter().collect();
        rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
        rows
    }

    /// Forgets what was timed (e.g. after a warm-up).
    pub fn reset(&self) {
        if let Ok(mut m) = self.tally.lock() {
            m.clear();
        }
    }

    fn time<T>(&self, name: impl FnOnce() -> String, op: impl FnOnce() -> Result<T>) -> Result<T> {
        self.inner.synchronize()?;
        let t = Instant::now();
        let out = op()?;
        self.inner.synchronize()?;
        let dt = t.elapsed().as_secs_f64();
        if let Ok(mut m) = self.tally.lock() {
            let e = m.entry(name()).or_default();
            e.calls += 1;
            e.seconds += dt;
        }
        Ok(out)
    }
}

fn named(s: &'static str) -> impl FnOnce() -> String {
    move || s.to_string()
}

impl<B: Backend> Backend for Timed<B> {
    type Buf = B::Buf;
    type Ids = B::Ids;
    type Graph = B::Graph;
    type IdsRead = B::IdsRead;

    fn name(&self) -> String {
        format!("{} (timed op by op)", self.inner.name())
    }
    fn zeros(&self, n: usize) -> Result<Self::Buf> {
        self.time(named("zeros"), || self.inner.zeros(n))
    }
    fn uninit(&self, n: usize) -> Result<Self::Buf> {
        self.time(named("uninit"), || self.inner.uninit(n))
    }
    fn from_vec(&self, data: Vec<f32>) -> Result<Self::Buf> {
        self.time(named("from_vec (upload)"), || self.inner.from_vec(data))
    }
    fn to_vec(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.time(named("to_vec (download)"), || self.inner.to_vec(buf))
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        self.inner.len(buf)
    }
    fn embedding(&self, table: &Self::Buf, ids: &[u32], dim: usize, out: &mut Self::Buf) -> Result<()> {
        self.time(named("embedding"), || self.inner.embedding(table, ids, dim, out))
    }
    fn ids_from_slice(&self, ids: &[u32]) -> Result<Self::Ids> {
        self.inner.ids_from_slice(ids)
    }
    fn ids_to_vec(&self, ids: &Self::Ids) -> Result<Vec<u32>> {
        self.inner.ids_to_vec(ids)
    }
    fn ids_read_start(&self, ids: &Self::Ids) -> Result<Self::IdsRead> {
        self.inner.ids_read_start(ids)
    }
    fn ids_read_finish(&self, read: Self::IdsRead) -> Result<Vec<u32>> {
        self.inner.ids_read_finish(read)
    }
    fn embedding_ids(&self, table: &Self::Buf, ids: &Self::Ids, dim: usize, out: &mut Self::Buf) -> Result<()> {
        self.time(named("embedding"), || self.inner.embedding_ids(table, ids, dim, out))
    }
    fn sample(
        &self,
        logits: &Self::Buf,
        vocab: usize,
        params: &crate::generate::SamplingParams,
        seen: &mut Self::Ids,
        draws: &mut Self::Ids,
        out: &mut Self::Ids,
    ) -> Result<()> {
        self.time(named("sample"), || self.inner.sample(logits, vocab, params, seen, draws, out))
    }
    fn linear(
        &self,
        x: View<'_, Self::Buf>,
        rows: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.time(|| format!("linear {rows}×{k}→{n}"), || self.inner.linear(x, rows, k, w, n, bias, out))
    }
    fn add_rmsnorm(
        &self,
        residual: &mut Self::Buf,
        delta: Option<&Self::Buf>,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.time(named("add_rmsnorm"), || self.inner.add_rmsnorm(residual, delta, weight, eps, rows, dim, out))
    }
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
    ) -> Result<()> {
        let inner = &self.inner;
        self.time(named("add_rmsnorm"), || {
            inner.add_rmsnorm_into(residual, delta, weight, eps, rows, dim, residual_out, out)
        })
    }
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
    ) -> Result<()> {
        self.time(named("conv1d_silu"), || {
            self.inner.conv1d_silu(x, batch, seqlen, channels, kernel, weight, bias, state, out)
        })
    }
    fn selective_scan(&self, args: &ScanArgs<'_, Self::Buf>, state: &mut Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.time(named("selective_scan"), || self.inner.selective_scan(args, state, y))
    }
    fn mixer_step(&self, args: &MixerStepArgs<'_, Self::Buf>, out: MixerStepOut<'_, Self::Buf>) -> Result<bool> {
        self.time(named("mixer_step (fused)"), || self.inner.mixer_step(args, out))
    }
    fn block_step(&self, args: &BlockStepArgs<'_, Self::Buf>, out: BlockStepOut<'_, Self::Buf>) -> Result<bool> {
        self.time(named("block_step (fused)"), || self.inner.block_step(args, out))
    }
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
    ) -> Result<()> {
        self.time(
            || format!("linear_backward {rows}×{k}→{n}"),
            || self.inner.linear_backward(x, rows, k, w, n, dy, dx, dw, db),
        )
    }
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
    ) -> Result<()> {
        self.time(named("rmsnorm_backward"), || {
            self.inner.rmsnorm_backward(residual, weight, eps, rows, dim, dout, dresidual, dweight)
        })
    }
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
    ) -> Result<()> {
        self.time(named("conv1d_silu_backward"), || {
            self.inner.conv1d_silu_backward(x, batch, seqlen, channels, kernel, weight, bias, dout, dx, dweight, dbias)
        })
    }
    fn selective_scan_backward(
        &self,
        args: &ScanArgs<'_, Self::Buf>,
        dy: &Self::Buf,
        grads: ScanGrads<'_, Self::Buf>,
    ) -> Result<()> {
        self.time(named("selective_scan_backward"), || self.inner.selective_scan_backward(args, dy, grads))
    }
    fn embedding_backward(&self, ids: &[u32], dim: usize, dout: &Self::Buf, dtable: &mut Self::Buf) -> Result<()> {
        self.time(named("embedding_backward"), || self.inner.embedding_backward(ids, dim, dout, dtable))
    }
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut Self::Buf,
    ) -> Result<(f64, usize)> {
        self.time(named("cross_entropy"), || self.inner.cross_entropy(logits, rows, vocab, targets, scale, dlogits))
    }
    fn sum_squares(&self, buf: &Self::Buf) -> Result<f64> {
        self.time(named("sum_squares"), || self.inner.sum_squares(buf))
    }
    fn sum_squares_each(&self, bufs: &[&Self::Buf]) -> Result<Vec<f64>> {
        self.time(named("sum_squares_each"), || self.inner.sum_squares_each(bufs))
    }
    fn sum_squares_many(&self, bufs: &[&Self::Buf]) -> Result<f64> {
        self.time(named("sum_squares_many"), || self.inner.sum_squares_many(bufs))
    }
    fn neg_exp(&self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()> {
        self.time(named("neg_exp"), || self.inner.neg_exp(src, dst))
    }
    fn add_product(&self, dst: &mut Self::Buf, x: &Self::Buf, y: &Self::Buf) -> Result<()> {
        self.time(named("add_product"), || self.inner.add_product(dst, x, y))
    }
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
    ) -> Result<()> {
        self.time(named("adamw_step"), || self.inner.adamw_step(param, grad, m, v, hp))
    }
    fn adamw_step_many(
        &self,
        params: Vec<&mut Self::Buf>,
        grads: &[&Self::Buf],
        m: &mut [Self::Buf],
        v: &mut [Self::Buf],
        hps: &[AdamW],
    ) -> Result<()> {
        self.time(named("adamw_step_many"), || self.inner.adamw_step_many(params, grads, m, v, hps))
    }
    fn clone_buf(&self, buf: &Self::Buf) -> Result<Self::Buf> {
        self.time(named("clone_buf"), || self.inner.clone_buf(buf))
    }
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()> {
        self.time(named("add_assign"), || self.inner.add_assign(dst, src))
    }
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()> {
        self.time(named("fill_zero"), || self.inner.fill_zero(buf))
    }
    fn gather_rows(&self, src: &Self::Buf, rows: &[usize], dim: usize, out: &mut Self::Buf) -> Result<()> {
        self.time(named("gather_rows"), || self.inner.gather_rows(src, rows, dim, out))
    }
    fn rope(&self, x: ViewMut<'_, Self::Buf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        self.time(named("rope"), || self.inner.rope(x, dims, pos0, theta))
    }
    fn rope_backward(&self, dx: ViewMut<'_, Self::Buf>, dims: AttnDims, pos0: usize, theta: f32) -> Result<()> {
        self.time(named("rope_backward"), || self.inner.rope_backward(dx, dims, pos0, theta))
    }
    fn attention(
        &self,
        dims: AttnDims,
        scale: f32,
        q: View<'_, Self::Buf>,
        k: View<'_, Self::Buf>,
        v: View<'_, Self::Buf>,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
    ) -> Result<()> {
        self.time(named("attention"), || self.inner.attention(dims, scale, q, k, v, out, lse))
    }
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
    ) -> Result<()> {
        self.time(named("attention_backward"), || {
            self.inner.attention_backward(dims, scale, q, k, v, out, lse, dout, dq, dk, dv)
        })
    }
    fn swiglu(
        &self,
        gate: View<'_, Self::Buf>,
        up: View<'_, Self::Buf>,
        rows: usize,
        cols: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.time(named("swiglu"), || self.inner.swiglu(gate, up, rows, cols, out))
    }
    fn swiglu_backward(
        &self,
        gate: View<'_, Self::Buf>,
        up: View<'_, Self::Buf>,
        rows: usize,
        cols: usize,
        dout: &Self::Buf,
        dgate: ViewMut<'_, Self::Buf>,
        dup: ViewMut<'_, Self::Buf>,
    ) -> Result<()> {
        self.time(named("swiglu_backward"), || self.inner.swiglu_backward(gate, up, rows, cols, dout, dgate, dup))
    }
    fn sum_rows(&self, src: View<'_, Self::Buf>, rows: usize, n: usize, dst: &mut Self::Buf) -> Result<()> {
        self.time(named("sum_rows"), || self.inner.sum_rows(src, rows, n, dst))
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn matmul_weight_bytes(&self) -> usize {
        self.inner.matmul_weight_bytes()
    }
    fn logits_chunk_elems(&self) -> usize {
        self.inner.logits_chunk_elems()
    }
    fn peak_memory(&self) -> Option<u64> {
        self.inner.peak_memory()
    }
    fn reset_peak_memory(&self) {
        self.inner.reset_peak_memory()
    }
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
    ) -> Result<()> {
        self.time(
            || format!("linear_backward (dx added) {rows}×{k}→{n}"),
            || self.inner.linear_backward_add_dx(x, rows, k, w, n, dy, dx, dw, db),
        )
    }
    fn set_keeping_activations(&self, keeping: bool) {
        self.inner.set_keeping_activations(keeping)
    }
    fn allow_bf16_storage(&self, buf: &mut Self::Buf) {
        self.inner.allow_bf16_storage(buf)
    }
    fn allow_bf16_copy(&self, buf: &mut Self::Buf) {
        self.inner.allow_bf16_copy(buf)
    }
    fn release_f32(&self, buf: &mut Self::Buf) -> Result<()> {
        self.inner.release_f32(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn ops_are_delegated_and_tallied_per_shape() {
        let t = Timed::new(Cpu);
        let x = t.from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let w = t.from_vec(vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]).unwrap();
        let mut out = t.zeros(4).unwrap();
        for _ in 0..3 {
            t.linear(View::full(&x, 3), 2, 3, &w, 2, None, &mut out).unwrap();
        }
        // The same values as the wrapped backend's.
        let mut want = Cpu.zeros(4).unwrap();
        Cpu.linear(View::full(&x, 3), 2, 3, &w, 2, None, &mut want).unwrap();
        assert_eq!(t.to_vec(&out).unwrap(), Cpu.to_vec(&want).unwrap());
        let rep = t.report();
        let lin = rep.iter().find(|(n, _)| n == "linear 2×3→2").expect("linear tallied by shape");
        assert_eq!(lin.1.calls, 3);
        assert!(rep.iter().any(|(n, s)| n == "zeros" && s.calls == 1));
        t.reset();
        assert!(t.report().is_empty());
    }
}
