//! The Transformer baseline against HF transformers' `LlamaForCausalLM` (fixtures made by
//! `scripts/make_llama_fixture.py`, see `tests/fixtures/README.md`): logits within 1e-4 of the
//! reference relative to max |logit|, loss within 1e-5, every parameter gradient within 1e-4 of
//! its tensor's max; plus saving in HF layout and loading back.

use std::path::{Path, PathBuf};

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::formats::tensors::TensorFile;
use s6::model::{LanguageModel, Logits, Transformer};

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

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max) / scale
}

fn check_against_hf(name: &str) {
    let dir = fixture(name);
    let model = Transformer::load(Cpu, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp = TensorFile::open(&dir.join("expected.safetensors")).unwrap();
    let (ids, shape) = exp.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (batch, seqlen) = (shape[0], shape[1]);

    // Logits at every position.
    let (want, wshape) = exp.f32("logits").unwrap();
    assert_eq!(wshape, vec![batch, seqlen, model.cfg.vocab_size]);
    let logits = Cpu.to_vec(&model.forward(&ids, batch, seqlen, Logits::All).unwrap()).unwrap();
    let err = max_rel_err(&logits, &want);
    eprintln!("{name}: logits max error {err:.2e} of max |logit|");
    assert!(err <= 1e-4, "{name}: logits differ from HF by {err:.2e} of max |logit|");

    // Loss and every gradient.
    let targets = shifted_targets(&ids, batch, seqlen);
    let mut g = model.zero_grads().unwrap();
    let (loss, count) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
    assert_eq!(count, batch * (seqlen - 1));
    let want_loss = exp.f32("loss").unwrap().0[0] as f64;
    eprintln!("{name}: loss {loss} vs HF {want_loss}");
    assert!((loss - want_loss).abs() <= 1e-5, "{name}: loss {loss} vs HF {want_loss}");
    let mut checked = 0;
    let mut worst = 0.0f32;
    for (spec, buf) in g.named_params() {
        let got = Cpu.to_vec(buf).unwrap();
        let (want, shape) = exp.f32(&format!("grad.{}", spec.name)).unwrap();
        assert_eq!(shape, spec.shape, "{name}: {}", spec.name);
        let err = max_rel_err(&got, &want);
        worst = worst.max(err);
        assert!(err <= 1e-4, "{name}: grad of {} differs from PyTorch by {err:.2e} of its max", spec.name);
        checked += 1;
    }
    eprintln!("{name}: worst gradient error {worst:.2e} of its tensor's max");
    let in_fixture = exp.names().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(checked, in_fixture, "{name}: every gradient of the fixture is checked");
}

#[test]
fn llama_tiny_untied() {
    check_against_hf("llama-tiny");
}

#[test]
fn llama_tiny_tied() {
    check_against_hf("llama-tiny-tied");
}

#[test]
fn save_load_round_trip_keeps_outputs() {
    let model = Transformer::load(Cpu, &fixture("llama-tiny")).unwrap();
    let dir = std::env::temp_dir().join(format!("s6-llama-roundtrip-{}", std::process::id()));
    model.save(&dir).unwrap();
    // For checking by hand that transformers loads what s6 writes.
    if let Some(keep) = std::env::var_os("S6_KEEP_SAVED_LLAMA") {
        model.save(Path::new(&keep)).unwrap();
    }
    let back = Transformer::load(Cpu, &dir).unwrap();
    assert_eq!(back.cfg, model.cfg);
    let ids: Vec<u32> = (0..30).map(|i| (i * 5 % 16) as u32).collect();
    let a = model.logits_at(&ids, 2, 15, &[14, 3]).unwrap();
    let b = back.logits_at(&ids, 2, 15, &[14, 3]).unwrap();
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}
