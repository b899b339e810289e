//! Models, each a plain struct of named tensors written once against [`crate::backend::Backend`].
//!
//! [`LanguageModel`] is what the runtimes that train and evaluate *any* model (synthetic tasks,
//! language-model baselines) see: Mamba-1 with its ablations and the attention baseline implement it.

pub mod attention;
pub mod init;
pub mod mamba1;
pub mod save;

pub use attention::{Transformer, TransformerConfig};
pub use mamba1::{Logits, Mamba, MambaState, Recompute};

use crate::backend::{Backend, View, ViewMut};
use crate::Result;

/// The language-model head and its loss, shared by every model: `logits = normed · headᵀ` and
/// softmax cross-entropy against `targets` (`u32::MAX` = ignored), in chunks of rows so that the
/// `[rows, vocab]` logits are never held whole (at most [`Backend::logits_chunk_elems`] at once). With `grads = Some((dhead, dnormed))` it also
/// adds `∂(scale · Σ losses)/∂head` to `dhead` and writes `∂/∂normed` into `dnormed`.
/// Returns the sum of the row losses and the number of counted rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_cross_entropy<B: Backend>(
    be: &B,
    normed: &B::Buf,
    rows: usize,
    d: usize,
    head: &B::Buf,
    vocab: usize,
    targets: &[u32],
    scale: f32,
    mut grads: Option<(&mut B::Buf, &mut B::Buf)>,
) -> Result<(f64, usize)> {
    let chunk = (be.logits_chunk_elems() / vocab.max(1)).max(1);
    // Whole multiples of 128 rows where that is possible: the products' inner dimension in the
    // head's weight gradient (an odd one costs the GPU's fastest product kernels).
    let chunk = if chunk >= 256 { chunk / 128 * 128 } else { chunk };
    let (mut sum, mut count, mut r0) = (0.0, 0, 0);
    // One pair of chunk buffers for all full chunks (both are overwritten whole by each chunk);
    // a shorter last chunk gets its own.
    let mut bufs: Option<(usize, B::Buf, B::Buf)> = None;
    while r0 < rows {
        let nr = chunk.min(rows - r0);
        let x = View { buf: normed, offset: r0 * d, ld: d };
        if bufs.as_ref().is_none_or(|b| b.0 != nr) {
            let mut dlogits = be.zeros(nr * vocab)?;
            // Read only by the head's backward products: it may be held in bf16 alone, their input.
            be.allow_bf16_storage(&mut dlogits);
            bufs = Some((nr, be.zeros(nr * vocab)?, dlogits));
        }
        let Some((_, logits, dlogits)) = bufs.as_mut() else { unreachable!("allocated above") };
        be.linear(x, nr, d, head, vocab, None, logits)?;
        let (s, c) = be.cross_entropy(logits, nr, vocab, &targets[r0..r0 + nr], scale, dlogits)?;
        sum += s;
        count += c;
        if let Some((dhead, dnormed)) = grads.as_mut() {
            let dx = ViewMut { buf: &mut **dnormed, offset: r0 * d, ld: d };
            be.linear_backward(x, nr, d, head, vocab, dlogits, Some(dx), dhead, None)?;
        }
        r0 += nr;
    }
    Ok((sum, count))
}

/// A training forward's fused add + RMSNorm where the residual stream is kept for the backward,
/// without a copy: the sum of `last` (the last kept residual) and `delta` goes to a new buffer,
/// returned to be kept, and `last` is left as it was; with nothing kept yet, `stream` (the
/// embedding) takes the sum in place and is returned itself (a zero-length buffer left behind).
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rmsnorm_kept<B: Backend>(
    be: &B,
    stream: &mut B::Buf,
    last: Option<&B::Buf>,
    delta: Option<&B::Buf>,
    weight: &B::Buf,
    eps: f32,
    rows: usize,
    dim: usize,
    out: &mut B::Buf,
) -> Result<B::Buf> {
    match last {
        None => {
            be.add_rmsnorm(stream, delta, weight, eps, rows, dim, out)?;
            Ok(std::mem::replace(stream, be.zeros(0)?))
        }
        Some(src) => {
            let mut sum = be.uninit(rows * dim)?;
            be.add_rmsnorm_into(src, delta, weight, eps, rows, dim, &mut sum, out)?;
            Ok(sum)
        }
    }
}

/// A causal language model that can be trained and evaluated through one interface.
pub trait LanguageModel<B: Backend>: Sized + Send + Sync {
    /// The backend the parameters live on.
    fn backend(&self) -> &B;
    /// Vocabulary size (rows of the embedding, columns of the logits).
    fn vocab_size(&self) -> usize;
    /// Parameter names and shapes, in the order of [`LanguageModel::params`]. The names decide
    /// the weight-decay group (see [`crate::train::optim::decays`]).
    fn param_specs(&self) -> Vec<mamba1::ParamSpec>;
    /// The trainable parameter buffers.
    fn params(&self) -> Vec<&B::Buf>;
    /// The trainable parameter buffers, mutable, same order.
    fn params_mut(&mut self) -> Vec<&mut B::Buf>;
    /// Recomputes tensors derived from parameters after an optimizer step.
    fn refresh_derived(&mut self) -> Result<()>;
    /// A model-shaped set of zero buffers to accumulate gradients into.
    fn zero_grads(&self) -> Result<Self>;
    /// Forward and backward from a zero state: mean cross-entropy of `targets` (`[batch, seqlen]`,
    /// `u32::MAX` = ignored); gradients of `grad_scale × mean loss` are added to `grads`.
    /// Returns the mean loss and the number of counted targets.
    fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seqlen: usize,
        grad_scale: f32,
        grads: &mut Self,
    ) -> Result<(f64, usize)>;
    /// Logits at the given positions of each sequence (`ids`: `[batch, seqlen]`), from a zero
    /// state: `[batch, positions.len(), vocab]` on the host. Recurrent models stream through
    /// the sequence in bounded memory (any length); models whose memory grows faster than
    /// linearly return [`crate::Error::OutOfMemory`] when the sequence does not fit their memory
    /// budget, without trying.
    fn logits_at(&self, ids: &[u32], batch: usize, seqlen: usize, positions: &[usize]) -> Result<Vec<f32>>;
    /// Writes the model as a loadable directory (`config.json` + `model.safetensors`, f32, each
    /// file atomically).
    fn save(&self, dir: &std::path::Path) -> Result<()>;
}

/// [`Backend::set_keeping_activations`] on for as long as it lives: a training step's forward and
/// backward (off again when the step returns, early or not).
pub(crate) struct KeepingActivations<'a, B: Backend>(&'a B);

impl<'a, B: Backend> KeepingActivations<'a, B> {
    pub(crate) fn new(backend: &'a B) -> Self {
        backend.set_keeping_activations(true);
        Self(backend)
    }
}

impl<B: Backend> Drop for KeepingActivations<'_, B> {
    fn drop(&mut self) {
        self.0.set_keeping_activations(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::config::MambaConfig;

    #[test]
    fn mamba_logits_at_streams_like_one_forward() {
        let cfg = MambaConfig::new(16, 2, 11);
        let params = init::init_params(&cfg, &crate::config::InitConfig::default(), 3);
        let mut it = params.into_iter();
        let m = Mamba::from_params(Cpu, cfg, |_| Ok(it.next().unwrap().1)).unwrap();
        // Longer than one streaming chunk, so the state is carried across chunks.
        let (batch, seqlen) = (2, 4096 + 300);
        let ids: Vec<u32> = (0..batch * seqlen).map(|i| ((i * 7 + i / 13) % 11) as u32).collect();
        let positions = [seqlen - 1, 5, 4096, 4095];
        let got = m.logits_at(&ids, batch, seqlen, &positions).unwrap();
        let mut state = m.new_state(batch).unwrap();
        let all = m.forward(&ids, batch, seqlen, &mut state, Logits::All).unwrap();
        for b in 0..batch {
            for (i, &p) in positions.iter().enumerate() {
                let want = &all[(b * seqlen + p) * 11..][..11];
                let have = &got[(b * positions.len() + i) * 11..][..11];
                for (x, y) in want.iter().zip(have) {
                    assert!((x - y).abs() < 1e-4, "b {b} pos {p}: {x} vs {y}");
                }
            }
        }
        assert!(m.logits_at(&ids, batch, seqlen, &[seqlen]).is_err());
    }

    /// Three chunks of the CPU's 4M-logit budget (two full, one shorter, reusing buffers) against
    /// an f64 reference of the loss and both gradients, with ignored targets in every chunk.
    #[test]
    fn head_cross_entropy_in_chunks_matches_reference() {
        let (rows, d, vocab) = (2500usize, 8usize, 4096usize);
        assert!(rows * vocab > 2 * Cpu.logits_chunk_elems());
        let mut r = crate::testutil::Rand::new(9);
        let normed = r.vec(rows * d, 1.0);
        let head = r.vec(vocab * d, 1.0);
        let targets: Vec<u32> =
            (0..rows).map(|i| if i % 97 == 5 { u32::MAX } else { (r.next_u64() % vocab as u64) as u32 }).collect();
        let scale = 0.5f32;
        let (mut dhead, mut dnormed) = (vec![0.0f32; vocab * d], vec![0.0f32; rows * d]);
        let (sum, count) =
            head_cross_entropy(&Cpu, &normed, rows, d, &head, vocab, &targets, scale, Some((&mut dhead, &mut dnormed)))
                .unwrap();
        let (mut want_sum, mut want_count) = (0.0f64, 0usize);
        let mut want_dhead = vec![0.0f64; vocab * d];
        let mut want_dnormed = vec![0.0f64; rows * d];
        for (i, &t) in targets.iter().enumerate() {
            if t == u32::MAX {
                continue;
            }
            let x = &normed[i * d..][..d];
            let logits: Vec<f64> = (0..vocab)
                .map(|v| x.iter().zip(&head[v * d..][..d]).map(|(a, b)| *a as f64 * *b as f64).sum())
                .collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            want_sum += m + z.ln() - logits[t as usize];
            want_count += 1;
            for v in 0..vocab {
                let g = scale as f64 * ((logits[v] - m).exp() / z - if v == t as usize { 1.0 } else { 0.0 });
                for j in 0..d {
                    want_dhead[v * d + j] += g * x[j] as f64;
                    want_dnormed[i * d + j] += g * head[v * d + j] as f64;
                }
            }
        }
        assert_eq!(count, want_count);
        assert!((sum - want_sum).abs() <= 1e-6 * want_sum.abs(), "loss sum {sum} vs {want_sum}");
        for (what, got, want) in [("dhead", &dhead, &want_dhead), ("dnormed", &dnormed, &want_dnormed)] {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = got.iter().zip(want.iter()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(err <= 1e-4 * scale, "{what}: max error {err:.3e} of {scale:.3e}");
        }
    }
}
