//! The paper's ablations of the Mamba block (Tables 1 and 7) against an independent float64
//! PyTorch reference written from the paper's equations (`scripts/make_ablation_fixtures.py`,
//! itself checked against HF `MambaForCausalLM` with every switch on). Per variant
//! (`fixtures/ablation-*`): the loss within 1e-5, every gradient within 1e-4 of its max, the
//! logits, and prefill + decode steps equal to one full forward. Then, for every variant built
//! from scratch: parameter counts, save → load round trips, and a few training steps.

use std::path::{Path, PathBuf};

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::config::{Ablation, InitConfig, MambaConfig};
use s6::formats::tensors::{SaveDType, TensorFile};
use s6::model::init::init_params;
use s6::model::save::save_hf;
use s6::model::{Logits, Mamba, Recompute};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("ablation-{name}"))
}

/// Largest absolute difference divided by the largest magnitude of `want`.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

fn check_variant(name: &str, ablation: Ablation) {
    let dir = fixture(name);
    let model = Mamba::load(Cpu, &dir).unwrap();
    assert_eq!(model.cfg.ablation, ablation, "{name}: config.json's s6_ablation");
    let exp = TensorFile::open(&dir.join("expected.safetensors")).unwrap();
    let (ids, shape) = exp.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (batch, seqlen) = (shape[0], shape[1]);
    let targets: Vec<u32> =
        exp.i64("targets").unwrap().0.iter().map(|&t| if t < 0 { u32::MAX } else { t as u32 }).collect();
    let v = model.cfg.vocab_size;

    // Loss and gradients.
    let mut g = model.zero_grads().unwrap();
    let (loss, count) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
    assert_eq!(count, targets.iter().filter(|&&t| t != u32::MAX).count());
    let want_loss = exp.f32("loss").unwrap().0[0] as f64;
    assert!((loss - want_loss).abs() <= 1e-5, "{name}: loss {loss} vs reference {want_loss}");
    let (eval_loss, _) = model.loss(&ids, &targets, batch, seqlen).unwrap();
    assert!((eval_loss - want_loss).abs() <= 1e-5, "{name}: evaluation loss {eval_loss} vs {want_loss}");
    let grads = g.params();
    let expected_names: Vec<&str> = exp.names().filter_map(|n| n.strip_prefix("grad.")).collect();
    assert_eq!(grads.len(), expected_names.len(), "{name}: parameter count vs the reference's");
    for (spec, buf) in grads {
        assert!(expected_names.contains(&spec.name.as_str()), "{name}: s6 has '{}', the reference not", spec.name);
        let (want, shape) = exp.f32(&format!("grad.{}", spec.name)).unwrap();
        assert_eq!(shape, spec.shape, "{name}: {}", spec.name);
        let err = rel_err(&Cpu.to_vec(buf).unwrap(), &want);
        assert!(err <= 1e-4, "{name}: grad of {} differs from the reference by {err:.2e} of its max", spec.name);
    }

    // Logits of one full forward.
    let mut state = model.new_state(batch).unwrap();
    let full = model.forward(&ids, batch, seqlen, &mut state, Logits::All).unwrap();
    let err = rel_err(&full, &exp.f32("logits").unwrap().0);
    assert!(err <= 1e-5, "{name}: logits differ from the reference by {err:.2e} of their max");

    // Prefill (in chunks of 3) then one decode step per token: the recurrent path.
    let split = 7;
    let prompt: Vec<u32> = (0..batch).flat_map(|b| ids[b * seqlen..][..split].to_vec()).collect();
    let mut state = model.new_state(batch).unwrap();
    let mut got = model.prefill(&prompt, batch, split, &mut state, 3).unwrap();
    for t in split..=seqlen {
        for b in 0..batch {
            let want = &full[(b * seqlen + t - 1) * v..][..v];
            let err = rel_err(&got[b * v..][..v], want);
            assert!(err <= 1e-5, "{name}: recurrent logits at position {} (seq {b}) off by {err:.2e}", t - 1);
        }
        if t == seqlen {
            break;
        }
        let next: Vec<u32> = (0..batch).map(|b| ids[b * seqlen + t]).collect();
        got = model.step(&next, &mut state).unwrap();
    }
}

#[test]
fn lti_matches_reference() {
    check_variant("lti", Ablation::LTI);
}

#[test]
fn no_gate_matches_reference() {
    check_variant("no-gate", Ablation { gate: false, ..Ablation::MAMBA });
}

#[test]
fn delta_only_matches_reference() {
    check_variant("delta-only", Ablation { selective_b: false, selective_c: false, ..Ablation::MAMBA });
}

#[test]
fn b_only_matches_reference() {
    check_variant("b-only", Ablation { selective_delta: false, selective_c: false, ..Ablation::MAMBA });
}

#[test]
fn c_only_matches_reference() {
    check_variant("c-only", Ablation { selective_delta: false, selective_b: false, ..Ablation::MAMBA });
}

/// Every combination of the four switches.
fn all_ablations() -> Vec<Ablation> {
    (0..16)
        .map(|m| Ablation {
            selective_delta: m & 1 != 0,
            selective_b: m & 2 != 0,
            selective_c: m & 4 != 0,
            gate: m & 8 != 0,
        })
        .collect()
}

#[test]
fn every_variant_from_scratch_counts_saves_loads_and_trains() {
    let root = std::env::temp_dir().join(format!("s6-ablations-test-{}", std::process::id()));
    for (k, ab) in all_ablations().into_iter().enumerate() {
        let mut cfg = MambaConfig::new(16, 2, 11);
        cfg.d_state = 4;
        cfg.ablation = ab;
        let init = InitConfig::default();
        let params = init_params(&cfg, &init, 7 + k as u64);
        let numel: usize = params.iter().map(|(s, _)| s.shape.iter().product::<usize>()).sum();
        assert_eq!(cfg.num_params(), numel, "{ab:?}: num_params");
        for (spec, values) in &params {
            if spec.name.ends_with("mixer.B") {
                assert!(values.iter().all(|&x| x == 1.0), "{ab:?}: B starts at ones");
            }
        }

        // Save and load back: same config, same tensors.
        let dir = root.join(format!("v{k}"));
        save_hf(&dir, &cfg, &init, &params, SaveDType::F32).unwrap();
        let mut model = Mamba::load(Cpu, &dir).unwrap();
        assert_eq!(model.cfg, cfg, "{ab:?}: config round trip");
        for ((spec, want), (got_spec, buf)) in params.iter().zip(model.params()) {
            assert_eq!(spec.name, got_spec.name);
            assert_eq!(&Cpu.to_vec(buf).unwrap(), want, "{ab:?}: {}", spec.name);
        }

        // A few plain gradient steps on one batch lower its loss.
        let (batch, seqlen) = (2, 24);
        let ids: Vec<u32> = (0..batch * seqlen).map(|i| ((i * 5 + i / 7) % 11) as u32).collect();
        let targets: Vec<u32> =
            (0..batch * seqlen).map(|i| if i % seqlen == seqlen - 1 { u32::MAX } else { ids[i + 1] }).collect();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..5 {
            let mut g = model.zero_grads().unwrap();
            let (loss, _) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            first.get_or_insert(loss);
            last = loss;
            let grads: Vec<Vec<f32>> = g.params().into_iter().map(|(_, b)| Cpu.to_vec(b).unwrap()).collect();
            for (p, gr) in model.params_mut().into_iter().zip(&grads) {
                p.iter_mut().zip(gr).for_each(|(p, g)| *p -= 0.05 * g);
            }
            model.refresh_derived().unwrap();
        }
        let first = first.unwrap();
        assert!(last < first, "{ab:?}: loss {first} → {last} after 5 gradient steps");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn ablated_checkpoint_with_wrong_tensors_is_rejected() {
    // An LTI config over a Mamba checkpoint: x_proj/dt_proj are unexpected, mixer.B missing.
    let dir = fixture("lti");
    let mut cfg = MambaConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.ablation = Ablation::MAMBA;
    let file = TensorFile::open_model_dir(&dir).unwrap();
    let e = Mamba::from_tensor_file(Cpu, cfg, &file).err().expect("a Mamba config cannot load LTI weights");
    assert!(e.to_string().contains("missing tensor"), "{e}");
}

/// The two [`Recompute`] modes run the same ops on the same inputs: identical loss and
/// gradients, bit for bit, for every ablation (batch > 1, odd length).
#[test]
fn recompute_modes_give_identical_gradients() {
    for ab in all_ablations() {
        let mut cfg = MambaConfig::new(12, 2, 29);
        cfg.ablation = ab;
        let params = init_params(&cfg, &InitConfig::default(), 5);
        let mut it = params.into_iter();
        let mut model = Mamba::from_params(Cpu, cfg, |_| Ok(it.next().unwrap().1)).unwrap();
        let (batch, seqlen) = (3, 11);
        let ids: Vec<u32> = (0..batch * seqlen).map(|i| (i * 7 % 29) as u32).collect();
        let targets: Vec<u32> = ids.iter().map(|&t| (t * 3 + 1) % 29).collect();
        let mut results = Vec::new();
        for r in [Recompute::Light, Recompute::Full, Recompute::None] {
            model.recompute = r;
            let mut g = model.zero_grads().unwrap();
            let (loss, _) = model.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            let grads: Vec<Vec<f32>> = g.params().into_iter().map(|(_, b)| Cpu.to_vec(b).unwrap()).collect();
            results.push((loss, grads));
        }
        for other in &results[1..] {
            assert_eq!(results[0].0.to_bits(), other.0.to_bits(), "{ab:?}: losses differ");
            assert!(results[0].1 == other.1, "{ab:?}: gradients differ between the recompute modes");
        }
        assert!(results[0].1.iter().flatten().any(|&v| v != 0.0), "{ab:?}: all gradients are zero");
    }
}
