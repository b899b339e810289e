//! The hand-written backward of the whole model against PyTorch autograd: HF
//! `MambaForCausalLM(input_ids, labels=input_ids).loss.backward()` (fixtures'
//! `expected_grads.safetensors`): loss within 1e-5, every gradient within 1e-4 of its max.

use std::path::{Path, PathBuf};

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::formats::tensors::TensorFile;
use s6::model::{Mamba, Recompute};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// HF's causal-LM loss: position t predicts token t+1; the last position has no target.
fn shifted_targets(ids: &[u32], batch: usize, seqlen: usize) -> Vec<u32> {
    let mut t = vec![u32::MAX; ids.len()];
    for b in 0..batch {
        for i in 0..seqlen - 1 {
            t[b * seqlen + i] = ids[b * seqlen + i + 1];
        }
    }
    t
}

/// Checks every [`Recompute`] mode: what the backward recomputes must not change a gradient.
fn check_grads(name: &str) {
    for recompute in [Recompute::Light, Recompute::Full, Recompute::None] {
        check_grads_with(name, recompute);
    }
}

fn check_grads_with(name: &str, recompute: Recompute) {
    let dir = fixture(name);
    let mut model = Mamba::load(Cpu, &dir).unwrap();
    model.recompute = recompute;
    let name = &format!("{name} ({recompute:?})");
    let exp = TensorFile::open(&dir.join("expected_grads.safetensors")).unwrap();
    let (ids, shape) = exp.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (batch, seqlen) = (shape[0], shape[1]);
    let targets = shifted_targets(&ids, batch, seqlen);
    let mut g = model.zero_grads().unwrap();
    let (loss, count) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
    assert_eq!(count, batch * (seqlen - 1));
    let want_loss = exp.f32("loss").unwrap().0[0] as f64;
    assert!((loss - want_loss).abs() <= 1e-5, "{name}: loss {loss} vs HF {want_loss}");
    let grads = g.params();
    for (spec, buf) in grads {
        let got = Cpu.to_vec(buf).unwrap();
        let (want, shape) = exp.f32(&format!("grad.{}", spec.name)).unwrap();
        assert_eq!(shape, spec.shape, "{name}: {}", spec.name);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
        assert!(err <= 1e-4, "{name}: grad of {} differs from PyTorch by {err:.2e} of its max {scale:.2e}", spec.name);
    }
}

#[test]
fn tiny_tied() {
    check_grads("mamba-tiny");
}

#[test]
fn odd_untied_bias_conv3() {
    check_grads("mamba-odd");
}

#[test]
fn rank_auto_conv2_state4() {
    check_grads("mamba-rank-auto");
}

#[test]
fn accumulation_doubles_gradients() {
    let dir = fixture("mamba-tiny");
    let model = Mamba::load(Cpu, &dir).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 % 1000) as u32).collect();
    let targets = shifted_targets(&ids, 2, 10);
    let mut g1 = model.zero_grads().unwrap();
    model.loss_and_grads(&ids, &targets, 2, 10, 1.0, &mut g1).unwrap();
    let mut g2 = model.zero_grads().unwrap();
    model.loss_and_grads(&ids, &targets, 2, 10, 0.5, &mut g2).unwrap();
    model.loss_and_grads(&ids, &targets, 2, 10, 0.5, &mut g2).unwrap();
    for ((s, a), (_, b)) in g1.params().into_iter().zip(g2.params()) {
        let (a, b) = (Cpu.to_vec(a).unwrap(), Cpu.to_vec(b).unwrap());
        let scale = a.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale;
        assert!(err < 1e-5, "{}: {err}", s.name);
    }
}
