//! The Mamba-1 model against HF transformers' outputs (fixtures made by `scripts/make_fixtures.py`,
//! see `tests/fixtures/README.md`): logits within 1e-4 of the reference relative to max |logit|,
//! greedy continuations equal; plus the recurrent paths against the full forward.

use std::path::{Path, PathBuf};

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::formats::tensors::TensorFile;
use s6::generate::{generate_tokens, Flow, GenerateOptions, SamplingParams};
use s6::model::{Logits, Mamba};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `[rows, cols]` i64 tensor as u32 rows.
fn id_rows(file: &TensorFile, name: &str) -> Vec<Vec<u32>> {
    let (v, shape) = file.i64(name).unwrap();
    v.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max) / scale
}

/// Full-sequence logits and greedy decoding against the fixture's expectations.
fn check_against_hf(model_dir: &Path, expected_dir: &Path) {
    let model = Mamba::load(Cpu, model_dir).unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let exp = TensorFile::open(&expected_dir.join("expected.safetensors")).unwrap();
    let ids = id_rows(&exp, "input_ids");
    let (want, shape) = exp.f32("logits").unwrap();
    let (batch, seqlen) = (ids.len(), ids[0].len());
    assert_eq!(shape, vec![batch, seqlen, model.cfg.vocab_size]);
    let flat: Vec<u32> = ids.concat();
    let mut state = model.new_state(batch).unwrap();
    let logits = Cpu.to_vec(&model.forward(&flat, batch, seqlen, &mut state, Logits::All).unwrap()).unwrap();
    let err = max_rel_err(&logits, &want);
    assert!(err <= 1e-4, "{}: logits differ from HF by {err:.2e} (relative to max |logit|)", model_dir.display());

    let prompts = id_rows(&exp, "greedy_prompt");
    let greedy = id_rows(&exp, "greedy");
    let opts = GenerateOptions {
        max_tokens: greedy[0].len(),
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        ..Default::default()
    };
    let (out, _, _) = generate_tokens(&model, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap();
    assert_eq!(out, greedy, "{}: greedy continuation differs from HF", model_dir.display());
}

#[test]
fn hf_layout_tiny() {
    check_against_hf(&fixture("mamba-tiny"), &fixture("mamba-tiny"));
}

#[test]
fn original_layout_pytorch_bin() {
    check_against_hf(&fixture("mamba-tiny-original"), &fixture("mamba-tiny"));
}

#[test]
fn odd_sizes_bias_untied_conv3() {
    // d_model 45, expand 3, conv_kernel 3, state 8, use_bias, no conv bias, untied lm_head, rank 5.
    check_against_hf(&fixture("mamba-odd"), &fixture("mamba-odd"));
}

#[test]
fn bf16_weights() {
    check_against_hf(&fixture("mamba-bf16"), &fixture("mamba-bf16"));
}

#[test]
fn auto_rank_small_state_conv2() {
    check_against_hf(&fixture("mamba-rank-auto"), &fixture("mamba-rank-auto"));
}

#[test]
fn sharded_safetensors() {
    check_against_hf(&fixture("mamba-sharded"), &fixture("mamba-sharded"));
}

#[test]
fn prefill_then_steps_equals_full_forward() {
    for name in ["mamba-tiny", "mamba-odd", "mamba-rank-auto"] {
        let model = Mamba::load(Cpu, &fixture(name)).unwrap();
        let exp = TensorFile::open(&fixture(name).join("expected.safetensors")).unwrap();
        let ids = id_rows(&exp, "input_ids");
        let (batch, seqlen) = (ids.len(), ids[0].len());
        let v = model.cfg.vocab_size;
        let mut st = model.new_state(batch).unwrap();
        let full = Cpu.to_vec(&model.forward(&ids.concat(), batch, seqlen, &mut st, Logits::All).unwrap()).unwrap();
        // Prefill 10 tokens in chunks of 4, then one step per token, all sequences together.
        let split = 10;
        let mut state = model.new_state(batch).unwrap();
        let head: Vec<u32> = ids.iter().flat_map(|r| r[..split].iter().copied()).collect();
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); batch];
        let last = Cpu.to_vec(&model.prefill(&head, batch, split, &mut state, 4).unwrap()).unwrap();
        for b in 0..batch {
            got[b].extend(&last[b * v..(b + 1) * v]);
        }
        for t in split..seqlen {
            let step: Vec<u32> = ids.iter().map(|r| r[t]).collect();
            let l = Cpu.to_vec(&model.step(&step, &mut state).unwrap()).unwrap();
            for b in 0..batch {
                got[b].extend(&l[b * v..(b + 1) * v]);
            }
        }
        for b in 0..batch {
            let want = &full[(b * seqlen + split - 1) * v..(b + 1) * seqlen * v];
            let err = max_rel_err(&got[b], want);
            assert!(err <= 1e-5, "{name}: prefill+steps differ from the full forward by {err:.2e}");
        }
        // The final states agree too.
        for i in 0..model.cfg.n_layer {
            let (a, b) = (Cpu.to_vec(&st.ssm[i]).unwrap(), Cpu.to_vec(&state.ssm[i]).unwrap());
            let err = max_rel_err(&b, &a);
            assert!(err <= 1e-5, "{name}: layer {i} SSM state differs by {err:.2e}");
            let err = max_rel_err(&Cpu.to_vec(&state.conv[i]).unwrap(), &Cpu.to_vec(&st.conv[i]).unwrap());
            assert!(err <= 1e-5, "{name}: layer {i} conv state differs by {err:.2e}");
        }
    }
}

#[test]
fn batch_of_different_sequences_equals_each_alone() {
    let model = Mamba::load(Cpu, &fixture("mamba-odd")).unwrap();
    let exp = TensorFile::open(&fixture("mamba-odd").join("expected.safetensors")).unwrap();
    let ids = id_rows(&exp, "input_ids");
    let (batch, seqlen) = (ids.len(), ids[0].len());
    let mut st = model.new_state(batch).unwrap();
    let together = Cpu.to_vec(&model.forward(&ids.concat(), batch, seqlen, &mut st, Logits::All).unwrap()).unwrap();
    let n = seqlen * model.cfg.vocab_size;
    for (b, row) in ids.iter().enumerate() {
        let mut s1 = model.new_state(1).unwrap();
        let alone = Cpu.to_vec(&model.forward(row, 1, seqlen, &mut s1, Logits::All).unwrap()).unwrap();
        assert!(max_rel_err(&together[b * n..(b + 1) * n], &alone) <= 1e-6);
    }
    // Generation: prompts decoded as one batch equal each decoded alone; prompts 0 and 3 (and 1
    // and 4) have the same length and are prefilled together.
    let prompts = vec![
        ids[0][..5].to_vec(),
        ids[1][..11].to_vec(),
        ids[0][3..4].to_vec(),
        ids[1][2..7].to_vec(),
        ids[0][..11].to_vec(),
    ];
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams { temperature: 0.8, top_k: 50, seed: 7, ..Default::default() },
        ..Default::default()
    };
    let (batched, _, _) = generate_tokens(&model, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let o = GenerateOptions {
            sampling: SamplingParams { seed: 7 + i as u64, ..opts.sampling.clone() },
            ..opts.clone()
        };
        let (alone, _, _) = generate_tokens(&model, std::slice::from_ref(p), &o, |_, _| Ok(Flow::Continue)).unwrap();
        assert_eq!(batched[i], alone[0], "prompt {i}");
    }
}
