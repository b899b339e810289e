//! Decoding on the GPU (`Decoder`: device token ids, the recorded CUDA graph, the sampling
//! kernel) against the CPU. Compiled only with the `cuda` feature; each test prints
//! "skipped: no CUDA device" and passes when no GPU (or driver) is present.
#![cfg(feature = "cuda")]

mod common;

use common::{fixture, gpu, id_rows, model_from, Rng};

use s6::backend::cpu::Cpu;
use s6::backend::cuda::Cuda;
use s6::backend::{
    Backend, BlockStepArgs, BlockStepOut, Compute, MixerStepArgs, MixerStepOut, MixerWeights, ScanArgs, ScanDims, View,
};
use s6::formats::tensors::TensorFile;
use s6::generate::{generate_tokens, FinishReason, Flow, GenerateOptions, SamplingParams};
use s6::model::mamba1::{DecodeMode, Decoder};
use s6::model::Mamba;

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..Default::default() }
}

/// A GPU [`Decoder`] for `prompts`, prefilled one by one (as `generate_tokens` does).
fn prefilled_decoder<'m>(
    model: &'m Mamba<Cuda>,
    prompts: &[Vec<u32>],
    params: SamplingParams,
    mode: DecodeMode,
) -> Decoder<'m, Cuda> {
    let be = &model.backend;
    let mut states = Vec::new();
    let mut logits = Vec::new();
    for p in prompts {
        let mut st = model.new_state(1).unwrap();
        logits.extend(be.to_vec(&model.prefill(p, 1, p.len(), &mut st, 16).unwrap()).unwrap());
        states.push(st);
    }
    let state = model.stack_states(&states).unwrap();
    let logits = be.from_vec(logits).unwrap();
    Decoder::new(model, state, &logits, prompts, params, mode).unwrap()
}

/// `tokens` new tokens per prompt with a GPU [`Decoder`] ([`prefilled_decoder`]), checking that
/// the graph was (or was not) used as asked.
fn decode_gpu(
    model: &Mamba<Cuda>,
    prompts: &[Vec<u32>],
    tokens: usize,
    params: SamplingParams,
    mode: DecodeMode,
) -> Vec<Vec<u32>> {
    let mut dec = prefilled_decoder(model, prompts, params, mode);
    let mut out = vec![Vec::new(); prompts.len()];
    for t in 0..tokens {
        if t > 0 {
            dec.step().unwrap();
        }
        for (o, tok) in out.iter_mut().zip(dec.tokens().unwrap()) {
            o.push(tok);
        }
    }
    if tokens > 2 {
        match mode {
            DecodeMode::Graph => {
                assert!(dec.uses_graph(), "CUDA graph not used: {:?}", dec.fallback_reason())
            }
            DecodeMode::Eager => assert!(!dec.uses_graph()),
        }
    }
    out
}

fn cpu_greedy(model: &Mamba<Cpu>, prompts: &[Vec<u32>], tokens: usize) -> Vec<Vec<u32>> {
    let opts = GenerateOptions { max_tokens: tokens, sampling: greedy(), ..Default::default() };
    generate_tokens(model, prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap().0
}

/// mamba-130m's block sizes (d_inner 1536, d_state 16), 2 layers and a vocabulary of `vocab`,
/// random weights from `seed`, on the CPU and on the GPU.
fn two_layer_models(g: &Cuda, vocab: usize, seed: u64) -> (Mamba<Cpu>, Mamba<Cuda>) {
    let mut cfg = s6::config::MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = vocab;
    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), seed);
    (model_from(Cpu, &cfg, &params), model_from(g.clone(), &cfg, &params))
}

#[test]
fn graph_greedy_equals_cpu_on_a_random_model() {
    let Some(g) = gpu() else { return };
    let (cpu, gpu) = two_layer_models(&g, 512, 11);
    let prompts: Vec<Vec<u32>> = vec![(0..300).map(|i| (i * 7 % 512) as u32).collect(), vec![5, 9, 200], vec![77]];
    for batch in [1, 3] {
        let p = &prompts[..batch];
        let want = cpu_greedy(&cpu, p, 40);
        for mode in [DecodeMode::Graph, DecodeMode::Eager] {
            let got = decode_gpu(&gpu, p, 40, greedy(), mode);
            assert_eq!(got, want, "batch {batch}, {mode:?}: GPU greedy decoding differs from the CPU");
        }
        // generate_tokens on CUDA takes the same device path.
        let opts = GenerateOptions { max_tokens: 40, sampling: greedy(), ..Default::default() };
        let (got, _, stats) = generate_tokens(&gpu, p, &opts, |_, _| Ok(Flow::Continue)).unwrap();
        assert_eq!(got, want, "batch {batch}: generate_tokens on CUDA differs from the CPU");
        assert!(stats.decode_graph, "generate_tokens on CUDA did not use a graph");
    }
}

/// Tokens read while the next step runs (`Decoder::start_tokens` / `finish_tokens`, as
/// `generate_tokens` reads them) are the tokens of their own step, not of the step queued after
/// the copy; and `generate_tokens` on CUDA, which queues a step ahead and discards it when
/// sequences end, ends them where the CPU does: by EOS, by the callback, by length, each at a
/// different token of a batch of three.
#[test]
fn overlapped_token_reads_and_early_ends_equal_cpu() {
    let Some(g) = gpu() else { return };
    let (cpu, gpu) = two_layer_models(&g, 300, 5);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 1, 4, 1, 5], vec![9, 2, 6], vec![5, 3, 5, 8]];
    let waited = decode_gpu(&gpu, &prompts, 30, greedy(), DecodeMode::Graph);
    // The same steps, each step's tokens read after the next step is queued.
    let mut dec = prefilled_decoder(&gpu, &prompts, greedy(), DecodeMode::Graph);
    let mut overlapped = vec![Vec::new(); prompts.len()];
    let mut pending = dec.start_tokens().unwrap();
    for _ in 0..30 {
        dec.step().unwrap();
        for (o, tok) in overlapped.iter_mut().zip(dec.finish_tokens(pending).unwrap()) {
            o.push(tok);
        }
        pending = dec.start_tokens().unwrap();
    }
    assert!(dec.uses_graph(), "CUDA graph not used: {:?}", dec.fallback_reason());
    assert_eq!(overlapped, waited, "tokens read during the next step differ from tokens read after their own");

    // Early ends: sequence 0 at the EOS id (its 7th greedy token), sequence 1 by the callback
    // after 4 tokens, sequence 2 by length (12).
    let eos = waited[0][6];
    let opts = GenerateOptions { max_tokens: 12, eos: Some(eos), sampling: greedy(), ..Default::default() };
    let ender = || {
        let mut seen = [0usize; 3];
        move |i: usize, _t: u32| -> s6::Result<Flow> {
            seen[i] += 1;
            Ok(if i == 1 && seen[i] == 4 { Flow::Finish(FinishReason::Stop) } else { Flow::Continue })
        }
    };
    let (want, want_why, _) = generate_tokens(&cpu, &prompts, &opts, ender()).unwrap();
    let (got, got_why, stats) = generate_tokens(&gpu, &prompts, &opts, ender()).unwrap();
    assert!(stats.decode_graph, "generate_tokens on CUDA did not use a graph");
    assert_eq!(got, want, "generate_tokens on CUDA ends sequences elsewhere than the CPU");
    assert_eq!(got_why, want_why);
    // Where the ends were set up: each sequence's greedy tokens up to its first EOS, at most 7,
    // 4 and 12 of them.
    let upto = |w: &[u32], most: usize| w.iter().position(|&t| t == eos).map_or(most, |p| (p + 1).min(most));
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(lens, [upto(&waited[0], 7), upto(&waited[1], 4), upto(&waited[2], 12)]);
}

/// Under `Compute::Bf16` (bf16 matrix-vector kernel for the decode steps, GemmEx for the
/// prefill), greedy decoding replayed from the CUDA graph equals eager decoding token for token:
/// the graph reads the same bf16 weight copies and activation scratch the eager steps use.
#[test]
fn bf16_graph_greedy_equals_eager() {
    let Some(g) = gpu() else { return };
    g.set_compute(s6::backend::Compute::Bf16).unwrap();
    let mut cfg = s6::config::MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 12);
    let gpu = model_from(g.clone(), &cfg, &params);
    let prompts: Vec<Vec<u32>> = vec![(0..300).map(|i| (i * 5 % 512) as u32).collect(), vec![5, 9, 200], vec![77]];
    for batch in [1, 3] {
        let p = &prompts[..batch];
        let eager = decode_gpu(&gpu, p, 40, greedy(), DecodeMode::Eager);
        let graph = decode_gpu(&gpu, p, 40, greedy(), DecodeMode::Graph);
        assert_eq!(graph, eager, "batch {batch}: bf16 graph decoding differs from bf16 eager decoding");
        // Once more after the graph: eager calls still see valid weight copies.
        let again = decode_gpu(&gpu, p, 40, greedy(), DecodeMode::Eager);
        assert_eq!(again, eager, "batch {batch}: bf16 eager decoding changed after a graph was recorded");
        let opts = GenerateOptions { max_tokens: 40, sampling: greedy(), ..Default::default() };
        let (got, _, stats) = generate_tokens(&gpu, p, &opts, |_, _| Ok(Flow::Continue)).unwrap();
        assert!(stats.decode_graph, "generate_tokens on CUDA did not use a graph");
        assert_eq!(got, eager, "batch {batch}: bf16 generate_tokens differs from bf16 eager decoding");
    }
}

/// bf16 activation copies (`S6_ACT_BF16=1`, `set_act_bf16`): the norm, the scan and the
/// large-batch scan step also write their outputs rounded to bf16, and the next product reads
/// that instead of casting them; the same rounding, so the same bits. Prefill logits (products of
/// 2 × 40 rows: cuBLAS) and greedy decoding of 32 sequences (cuBLAS products, and the scan step
/// `s6_mixer_step_scan_n16`: dt_proj is one product there), graph and eager, with copies on equal
/// those with copies off. (Without prefill's bf16 storage, which rounds the scan's inputs too:
/// `bf16_storage_prefill_follows_f32_activations`.)
#[test]
fn bf16_activation_copies_change_no_bit() {
    let Some(g) = gpu() else { return };
    let storage_before = s6::backend::cuda::bf16_storage_enabled();
    g.set_compute(Compute::Bf16).unwrap();
    // Off for this test, which compares the copies with their absence (storage needs them).
    s6::backend::cuda::set_bf16_storage(false);
    let mut cfg = s6::config::MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 13);
    let gpu = model_from(g.clone(), &cfg, &params);
    let ids: Vec<u32> = (0..80).map(|i| (i * 11 % 512) as u32).collect();
    let prompts: Vec<Vec<u32>> =
        (0..32).map(|i| (0..10 + i % 7).map(|t| ((t * 13 + i * 5) % 512) as u32).collect()).collect();
    let run = |on: bool| {
        s6::backend::cuda::set_act_bf16(on);
        let mut st = gpu.new_state(2).unwrap();
        let logits = g.to_vec(&gpu.prefill(&ids, 2, 40, &mut st, 40).unwrap()).unwrap();
        let graph = decode_gpu(&gpu, &prompts, 12, greedy(), DecodeMode::Graph);
        let eager = decode_gpu(&gpu, &prompts, 12, greedy(), DecodeMode::Eager);
        (logits, graph, eager)
    };
    let off = run(false);
    let on = run(true);
    let again = run(false);
    s6::backend::cuda::reset_act_bf16();
    s6::backend::cuda::set_bf16_storage(storage_before);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&on.0), bits(&off.0), "prefill logits differ with bf16 activation copies");
    assert_eq!(on.1, off.1, "graph decoding differs with bf16 activation copies");
    assert_eq!(on.2, off.2, "eager decoding differs with bf16 activation copies");
    assert_eq!(on.1, on.2, "with bf16 activation copies, graph and eager decoding differ");
    assert_eq!(bits(&again.0), bits(&off.0), "prefill logits changed after the copies were turned off");
}

#[test]
fn graph_greedy_equals_hf_fixtures() {
    let Some(g) = gpu() else { return };
    for name in ["mamba-tiny", "mamba-odd", "mamba-bf16", "mamba-rank-auto", "mamba-sharded"] {
        let dir = fixture(name);
        let model = Mamba::load(g.clone(), &dir).unwrap();
        let exp = TensorFile::open(&dir.join("expected.safetensors")).unwrap();
        let prompts = id_rows(&exp, "greedy_prompt");
        let want = id_rows(&exp, "greedy");
        let n = want[0].len();
        // Batch 1 (each prompt alone), 2, and 3 (the first prompt twice).
        for (i, p) in prompts.iter().enumerate() {
            let got = decode_gpu(&model, std::slice::from_ref(p), n, greedy(), DecodeMode::Graph);
            assert_eq!(got[0], want[i], "{name}: batch 1, prompt {i}: graph greedy differs from HF");
        }
        let got = decode_gpu(&model, &prompts, n, greedy(), DecodeMode::Graph);
        assert_eq!(got, want, "{name}: batch {}: graph greedy differs from HF", prompts.len());
        let three = vec![prompts[0].clone(), prompts[1].clone(), prompts[0].clone()];
        let got = decode_gpu(&model, &three, n, greedy(), DecodeMode::Graph);
        assert_eq!(got, vec![want[0].clone(), want[1].clone(), want[0].clone()], "{name}: batch 3");
    }
}

/// Runs the sampling kernel once over `rows` rows of `logits` with fresh draw counters.
fn sample_gpu(g: &Cuda, logits: &[f32], vocab: usize, params: &SamplingParams, seen: Option<&[u32]>) -> Vec<u32> {
    let rows = logits.len() / vocab;
    let l = g.from_vec(logits.to_vec()).unwrap();
    let mut seen = g.ids_from_slice(seen.unwrap_or(&[0])).unwrap();
    let mut draws = g.ids_from_slice(&vec![0; rows]).unwrap();
    let mut out = g.ids_from_slice(&vec![u32::MAX; rows]).unwrap();
    g.sample(&l, vocab, params, &mut seen, &mut draws, &mut out).unwrap();
    let d = g.ids_to_vec(&draws).unwrap();
    assert!(d.iter().all(|&c| c == 1), "draw counters not incremented: {d:?}");
    g.ids_to_vec(&out).unwrap()
}

/// The host's allowed set of one row: the CPU sampler's filters (penalty none), as id flags.
fn allowed(row: &[f32], p: &SamplingParams) -> Vec<bool> {
    let v = row.len();
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / p.temperature;
    let w: Vec<f32> = row.iter().map(|&x| ((x - max) * inv_t).exp()).collect();
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    let mut keep = if p.top_k > 0 && p.top_k < v { p.top_k } else { v };
    if p.top_p < 1.0 {
        let total: f64 = order[..keep].iter().map(|&i| f64::from(w[i])).sum();
        let target = f64::from(p.top_p) * total;
        let mut cum = 0.0;
        for (n, &i) in order[..keep].iter().enumerate() {
            cum += f64::from(w[i]);
            if cum >= target {
                keep = n + 1;
                break;
            }
        }
    }
    let mut ok = vec![false; v];
    for &i in &order[..keep] {
        ok[i] = w[i] >= p.min_p;
    }
    ok
}

#[test]
fn sampling_kernel_greedy_and_top_k_one_equal_cpu_argmax() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(3);
    for vocab in [1, 7, 1001, 50280] {
        let rows = 5;
        let mut logits = r.vec(rows * vocab, -8.0, 8.0);
        // Ties: the lowest id must win.
        if vocab > 10 {
            logits[vocab + 3] = 20.0;
            logits[vocab + 9] = 20.0;
        }
        let mut want = vec![0u32; rows];
        let (mut seen, mut draws) = (vec![0u32; 1], vec![0u32; rows]);
        s6::generate::sampler::sample_rows(&logits, vocab, &greedy(), &mut seen, &mut draws, &mut want).unwrap();
        assert_eq!(sample_gpu(&g, &logits, vocab, &greedy(), None), want, "vocab {vocab}: greedy");
        let k1 = SamplingParams { top_k: 1, temperature: 1.5, seed: 9, ..Default::default() };
        assert_eq!(sample_gpu(&g, &logits, vocab, &k1, None), want, "vocab {vocab}: top_k = 1");
        let tiny_p = SamplingParams { top_p: 1e-6, seed: 9, ..Default::default() };
        assert_eq!(sample_gpu(&g, &logits, vocab, &tiny_p, None), want, "vocab {vocab}: tiny top_p");
    }
}

#[test]
fn sampling_kernel_stays_in_the_filtered_sets() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(5);
    let vocab = 50280;
    // One logits row, repeated: each row draws with its own seed (seed + row).
    let row: Vec<f32> = r.vec(vocab, -6.0, 6.0).iter().map(|x| x * x.abs() * 0.5).collect();
    let rows = 256;
    let logits: Vec<f32> = (0..rows).flat_map(|_| row.iter().copied()).collect();
    let cases = [
        SamplingParams { top_k: 20, seed: 1, ..Default::default() },
        SamplingParams { top_p: 0.5, seed: 2, ..Default::default() },
        SamplingParams { top_p: 0.9, temperature: 0.7, seed: 3, ..Default::default() },
        SamplingParams { min_p: 0.05, seed: 4, ..Default::default() },
        SamplingParams { top_k: 50, top_p: 0.8, min_p: 0.02, temperature: 1.3, seed: 5, ..Default::default() },
        SamplingParams { seed: 6, ..Default::default() },
    ];
    for p in &cases {
        let ok = allowed(&row, p);
        let set = ok.iter().filter(|&&b| b).count();
        let got = sample_gpu(&g, &logits, vocab, p, None);
        let mut distinct: Vec<u32> = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        for &t in &got {
            assert!((t as usize) < vocab && ok[t as usize], "{p:?}: token {t} is outside the host's set of {set}");
        }
        if set > 4 {
            assert!(distinct.len() > 1, "{p:?}: {rows} draws from a set of {set} all gave {:?}", distinct);
        }
        // Same seed, same tokens; another seed, other tokens.
        assert_eq!(sample_gpu(&g, &logits, vocab, p, None), got, "{p:?}: same seed gave other tokens");
        if set > 4 {
            let other = SamplingParams { seed: p.seed + 1000, ..p.clone() };
            assert_ne!(sample_gpu(&g, &logits, vocab, &other, None), got, "{p:?}: another seed gave the same tokens");
        }
    }
}

#[test]
fn sampling_kernel_frequencies_match_the_distribution() {
    let Some(g) = gpu() else { return };
    let probs = [0.1f32, 0.2, 0.3, 0.4];
    let row: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let rows = 20_000;
    let logits: Vec<f32> = (0..rows).flat_map(|_| row.iter().copied()).collect();
    let got = sample_gpu(&g, &logits, 4, &SamplingParams { seed: 7, ..Default::default() }, None);
    for (i, &p) in probs.iter().enumerate() {
        let f = got.iter().filter(|&&t| t as usize == i).count() as f32 / rows as f32;
        assert!((f - p).abs() < 0.02, "token {i}: frequency {f}, expected {p}");
    }
}

#[test]
fn sampling_kernel_repetition_penalty() {
    let Some(g) = gpu() else { return };
    let rp = |r: f32| SamplingParams { temperature: 0.0, repetition_penalty: r, ..Default::default() };
    let logits = [2.0f32, 1.5, -1.0];
    // Token 0 seen: 2.0 / 2 = 1.0 < 1.5.
    assert_eq!(sample_gpu(&g, &logits, 3, &rp(2.0), Some(&[1, 0, 0])), vec![1]);
    assert_eq!(sample_gpu(&g, &logits, 3, &rp(1.0), Some(&[1, 0, 0])), vec![0]);
    // Negative logits are multiplied: -1.0 * 2 = -2.0 < -1.5.
    assert_eq!(sample_gpu(&g, &[-1.0, -1.5], 2, &rp(2.0), Some(&[1, 0])), vec![1]);
    // The picked token is marked as seen, so the next draw avoids it.
    let l = g.from_vec(vec![2.0, 1.9, -1.0]).unwrap();
    let mut seen = g.ids_from_slice(&[0, 0, 0]).unwrap();
    let mut draws = g.ids_from_slice(&[0]).unwrap();
    let mut out = g.ids_from_slice(&[9]).unwrap();
    g.sample(&l, 3, &rp(2.0), &mut seen, &mut draws, &mut out).unwrap();
    assert_eq!(g.ids_to_vec(&out).unwrap(), vec![0]);
    assert_eq!(g.ids_to_vec(&seen).unwrap(), vec![1, 0, 0], "picked token not marked as seen");
    g.sample(&l, 3, &rp(2.0), &mut seen, &mut draws, &mut out).unwrap();
    assert_eq!(g.ids_to_vec(&out).unwrap(), vec![1], "the penalty did not move the argmax");
}

#[test]
fn graph_sampling_is_seeded_and_penalty_is_kept_on_device() {
    let Some(g) = gpu() else { return };
    let mut cfg = s6::config::MambaConfig::preset("mamba-130m").unwrap();
    cfg.n_layer = 2;
    cfg.vocab_size = 512;
    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 12);
    let gpu = model_from(g.clone(), &cfg, &params);
    let prompts = vec![vec![1u32, 2, 3], vec![4, 5]];
    let p = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 17, ..Default::default() };
    let a = decode_gpu(&gpu, &prompts, 30, p.clone(), DecodeMode::Graph);
    assert_eq!(decode_gpu(&gpu, &prompts, 30, p.clone(), DecodeMode::Graph), a, "same seed, other tokens");
    assert_eq!(decode_gpu(&gpu, &prompts, 30, p.clone(), DecodeMode::Eager), a, "graph and eager differ");
    // Greedy with a repetition penalty equals the CPU (the history is kept by the kernel in the
    // seen-token mask across replays).
    let cpu = model_from(Cpu, &cfg, &params);
    let rp = SamplingParams { temperature: 0.0, repetition_penalty: 1.3, ..Default::default() };
    let opts = GenerateOptions { max_tokens: 30, sampling: rp.clone(), ..Default::default() };
    let want = generate_tokens(&cpu, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap().0;
    assert_eq!(decode_gpu(&gpu, &prompts, 30, rp, DecodeMode::Graph), want, "penalised greedy differs from CPU");
}

// ----- the fused single-token mixer step (`Backend::mixer_step`, cuda/mixer_step.rs) -----

/// Asserts `got ≈ want` elementwise (fp32 tolerances: different summation orders).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-3 + 5e-4 * w.abs() && g.is_finite(),
            "{what}[{i}]: GPU {g}, CPU {w} (difference {})",
            (g - w).abs()
        );
    }
}

/// Host values of one layer's mixer and of its state, uploaded to any backend.
struct MixerCase {
    batch: usize,
    di: usize,
    n: usize,
    k: usize,
    r: usize,
    conv_w: Vec<f32>,
    conv_b: Option<Vec<f32>>,
    x_proj: Vec<f32>,
    dt_proj: Vec<f32>,
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    conv_state: Vec<f32>,
    ssm_state: Vec<f32>,
}

impl MixerCase {
    fn random(rng: &mut Rng, batch: usize, di: usize, n: usize, k: usize, r: usize, conv_bias: bool) -> Self {
        let w = r + 2 * n;
        let sx = 1.0 / (di as f32).sqrt();
        let sd = 1.0 / (r as f32).sqrt();
        MixerCase {
            batch,
            di,
            n,
            k,
            r,
            conv_w: rng.vec(di * k, -0.6, 0.6),
            conv_b: conv_bias.then(|| rng.vec(di, -0.2, 0.2)),
            x_proj: rng.vec(w * di, -2.0 * sx, 2.0 * sx),
            dt_proj: rng.vec(di * r, -sd, sd),
            dt_bias: rng.vec(di, -5.0, 0.5),
            // A = -exp(A_log), A_log ~ log(1..n) (S4D-real), jittered.
            a: (0..di * n).map(|i| -((1 + i % n) as f32) * (0.8 + 0.4 * rng.next())).collect(),
            d: rng.vec(di, 0.5, 1.5),
            conv_state: rng.vec(batch * (k - 1) * di, -1.5, 1.5),
            ssm_state: rng.vec(batch * di * n, -1.0, 1.0),
        }
    }
}

/// One backend's buffers of a [`MixerCase`]: parameters, state and the step's outputs.
struct MixerBufs<B: Backend> {
    conv_w: B::Buf,
    conv_b: Option<B::Buf>,
    x_proj: B::Buf,
    dt_proj: B::Buf,
    dt_bias: B::Buf,
    a: B::Buf,
    d: B::Buf,
    conv_state: B::Buf,
    ssm_state: B::Buf,
    u: B::Buf,
    xdbl: B::Buf,
    delta: B::Buf,
    y: B::Buf,
}

impl<B: Backend> MixerBufs<B> {
    fn new(be: &B, c: &MixerCase) -> Self {
        let up = |v: &Vec<f32>| be.from_vec(v.clone()).unwrap();
        let rows = c.batch;
        MixerBufs {
            conv_w: up(&c.conv_w),
            conv_b: c.conv_b.as_ref().map(up),
            x_proj: up(&c.x_proj),
            dt_proj: up(&c.dt_proj),
            dt_bias: up(&c.dt_bias),
            a: up(&c.a),
            d: up(&c.d),
            conv_state: up(&c.conv_state),
            ssm_state: up(&c.ssm_state),
            // Garbage in the outputs: every value must be written.
            u: up(&vec![7.0; rows * c.di]),
            xdbl: up(&vec![7.0; rows * (c.r + 2 * c.n)]),
            delta: up(&vec![7.0; rows * c.di]),
            y: up(&vec![7.0; rows * c.di]),
        }
    }

    /// The weights (shared) and the step's outputs (lent), disjoint fields of `self`.
    fn split<'a>(&'a mut self, c: &MixerCase) -> (MixerWeights<'a, B::Buf>, MixerStepOut<'a, B::Buf>) {
        let weights = MixerWeights {
            batch: c.batch,
            d_inner: c.di,
            d_state: c.n,
            d_conv: c.k,
            dt_rank: c.r,
            conv_weight: &self.conv_w,
            conv_bias: self.conv_b.as_ref(),
            x_proj: &self.x_proj,
            dt_proj: &self.dt_proj,
            dt_bias: &self.dt_bias,
            a: &self.a,
            d: &self.d,
        };
        let out = MixerStepOut {
            u: &mut self.u,
            xdbl: &mut self.xdbl,
            delta: &mut self.delta,
            y: &mut self.y,
            conv_state: &mut self.conv_state,
            ssm_state: &mut self.ssm_state,
        };
        (weights, out)
    }

    /// One step of `xz` (`[batch, 2·d_inner]`): fused when `fused`, else the op-by-op path of
    /// `Mamba::mixer_forward` (conv1d_silu → x_proj → dt_proj → selective_scan).
    fn step(&mut self, be: &B, c: &MixerCase, xz: &B::Buf, fused: bool) {
        let (batch, di, n, k, r) = (c.batch, c.di, c.n, c.k, c.r);
        let w = r + 2 * n;
        if fused {
            let (mixer, out) = self.split(c);
            let args = MixerStepArgs { mixer, xz };
            assert!(be.mixer_step(&args, out).unwrap(), "{}: the fused step was not taken", be.name());
            return;
        }
        let x = View::cols(xz, 0, 2 * di);
        be.conv1d_silu(x, batch, 1, di, k, &self.conv_w, self.conv_b.as_ref(), &mut self.conv_state, &mut self.u)
            .unwrap();
        be.linear(View::full(&self.u, di), batch, di, &self.x_proj, w, None, &mut self.xdbl).unwrap();
        be.linear(View::cols(&self.xdbl, 0, w), batch, r, &self.dt_proj, di, None, &mut self.delta).unwrap();
        let args = ScanArgs {
            dims: ScanDims { batch, seqlen: 1, d_inner: di, d_state: n },
            u: &self.u,
            delta: &self.delta,
            delta_bias: &self.dt_bias,
            a: &self.a,
            b: View::cols(&self.xdbl, r, w),
            c: View::cols(&self.xdbl, r + n, w),
            d: &self.d,
            z: Some(View::cols(xz, di, 2 * di)),
        };
        be.selective_scan(&args, &mut self.ssm_state, &mut self.y).unwrap();
    }
}

#[test]
fn fused_mixer_step_equals_cpu_op_by_op() {
    let Some(g) = gpu() else { return };
    if !s6::backend::cuda::mixer_step::fused_step_enabled() {
        println!("skipped: S6_FUSED_STEP=0");
        return;
    }
    let mut rng = Rng(21);
    // (d_inner, d_state, d_conv, dt_rank, conv bias): mamba-130m's block; d_inner not a multiple
    // of 32 (nor of 4) with an odd d_state and dt_rank; d_state 64; a shorter conv, no bias.
    // The last number of each list is large enough for the batch to read at least 8 MB of
    // dt_proj: dt_proj then runs as one product before the scan kernel (mixer_step.rs), and at
    // d_state 16 the scan step is `s6_mixer_step_scan_n16` (d_inner not a multiple of its 64
    // channels per block; conv windows of 0, 2, 3 and 6 slots, more than its 4 lanes).
    type Shape = (usize, usize, usize, usize, bool, &'static [usize]);
    let shapes: [Shape; 7] = [
        (1536, 16, 4, 48, true, &[1, 3, 8, 20, 64]),
        (333, 5, 4, 7, true, &[1, 3, 8, 20]),
        (100, 64, 4, 9, true, &[1, 3, 8, 20]),
        (250, 16, 3, 13, false, &[1, 3, 8, 20, 700]),
        (64, 16, 1, 4, true, &[1, 3, 8, 20, 8200]),
        (1000, 16, 4, 80, true, &[32]),
        (300, 16, 7, 64, false, &[128]),
    ];
    for &(di, n, k, r, bias, batches) in &shapes {
        for &batch in batches {
            let case = MixerCase::random(&mut rng, batch, di, n, k, r, bias);
            let mut cpu = MixerBufs::new(&Cpu, &case);
            let mut gpu = MixerBufs::new(&g, &case);
            for step in 0..5 {
                let what = format!("d_inner {di}, d_state {n}, d_conv {k}, dt_rank {r}, batch {batch}, step {step}");
                let xz = rng.vec(batch * 2 * di, -2.0, 2.0);
                cpu.step(&Cpu, &case, &xz, false);
                gpu.step(&g, &case, &g.from_vec(xz.clone()).unwrap(), true);
                let pairs: [(&str, &Vec<f32>, &s6::backend::cuda::CudaBuf); 6] = [
                    ("u", &cpu.u, &gpu.u),
                    ("xdbl", &cpu.xdbl, &gpu.xdbl),
                    ("delta", &cpu.delta, &gpu.delta),
                    ("y", &cpu.y, &gpu.y),
                    ("conv state", &cpu.conv_state, &gpu.conv_state),
                    ("ssm state", &cpu.ssm_state, &gpu.ssm_state),
                ];
                for (name, want, got) in pairs {
                    assert_close(&g.to_vec(got).unwrap(), want, &format!("{what}: {name}"));
                }
            }
        }
    }
}

/// x_proj fused into the batch-1 scan step over clusters of blocks (`S6_XSCAN`, mixer_step.rs)
/// gives what the step with x_proj as a GEMV gives, up to the order of x_proj's sums: two GPU
/// copies of a layer's state stepped side by side under bf16 products, one each way.
#[test]
fn xscan_mixer_step_equals_the_gemv_step() {
    use s6::backend::cuda::mixer_step::{fused_step_enabled, set_xscan, xscan_enabled};
    let Some(g) = gpu() else { return };
    if !fused_step_enabled() {
        println!("skipped: S6_FUSED_STEP=0");
        return;
    }
    if !g.has_clusters() {
        println!("skipped: the device has no thread-block clusters");
        return;
    }
    let was = xscan_enabled();
    g.set_compute(Compute::Bf16).unwrap();
    let mut rng = Rng(33);
    // (d_inner, d_state, d_conv, dt_rank, conv bias): mamba-130m's, 1.4b's and 2.8b's blocks (one,
    // two and four weight vectors per lane and row); two clusters with an uneven and an empty
    // slice; d_state 8 with a shorter conv; two vectors per lane with a partial second one.
    let shapes: [(usize, usize, usize, usize, bool); 6] = [
        (1536, 16, 4, 48, true),
        (4096, 16, 4, 128, true),
        (5120, 16, 4, 160, true),
        (264, 16, 4, 48, false),
        (192, 8, 3, 20, true),
        (2056, 16, 4, 16, true),
    ];
    for &(di, n, k, r, bias) in &shapes {
        let case = MixerCase::random(&mut rng, 1, di, n, k, r, bias);
        let mut gemv = MixerBufs::new(&g, &case);
        let mut fused = MixerBufs::new(&g, &case);
        for step in 0..3 {
            let what = format!("d_inner {di}, d_state {n}, d_conv {k}, dt_rank {r}, step {step}");
            let xz = g.from_vec(rng.vec(2 * di, -2.0, 2.0)).unwrap();
            set_xscan(false);
            gemv.step(&g, &case, &xz, true);
            set_xscan(true);
            fused.step(&g, &case, &xz, true);
            let pairs = [
                ("u", &gemv.u, &fused.u),
                ("xdbl", &gemv.xdbl, &fused.xdbl),
                ("delta", &gemv.delta, &fused.delta),
                ("y", &gemv.y, &fused.y),
                ("conv state", &gemv.conv_state, &fused.conv_state),
                ("ssm state", &gemv.ssm_state, &fused.ssm_state),
            ];
            for (name, want, got) in pairs {
                let (want, got) = (g.to_vec(want).unwrap(), g.to_vec(got).unwrap());
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * scale && a.is_finite(),
                        "{what}: {name}[{i}]: fused {a}, GEMV {b} (largest value {scale})"
                    );
                }
            }
        }
    }
    set_xscan(was);
    g.set_compute(Compute::F32).unwrap();
}

// ----- the fused block step (`Backend::block_step`: RMSNorm in in_proj's GEMV, the conv in its
// epilogue, the residual add in out_proj's) -----

/// One decoding step of a whole block on the GPU, fused (`block_step`) or as the ops it replaces
/// (`add_rmsnorm`, `linear`, the fused `mixer_step`, `linear`, and the residual add).
#[allow(clippy::too_many_arguments)]
fn block_step_on(
    g: &Cuda,
    c: &MixerCase,
    bufs: &mut MixerBufs<Cuda>,
    d: usize,
    [norm, in_proj, out_proj]: [&s6::backend::cuda::CudaBuf; 3],
    biases: (Option<&s6::backend::cuda::CudaBuf>, Option<&s6::backend::cuda::CudaBuf>),
    residual: &mut s6::backend::cuda::CudaBuf,
    xz: &mut s6::backend::cuda::CudaBuf,
    fused: bool,
) {
    let (batch, di) = (c.batch, c.di);
    let eps = 1e-5;
    if fused {
        let (mixer, mixer_out) = bufs.split(c);
        let args = BlockStepArgs {
            d_model: d,
            norm,
            eps,
            in_proj,
            in_proj_bias: biases.0,
            mixer,
            out_proj,
            out_proj_bias: biases.1,
            next_in_proj: Some(in_proj),
        };
        let out = BlockStepOut { residual, xz, mixer: mixer_out };
        assert!(g.block_step(&args, out).unwrap(), "the fused block step was not taken");
        return;
    }
    let mut normed = g.from_vec(vec![0.0; batch * d]).unwrap();
    g.add_rmsnorm(residual, None, norm, eps, batch, d, &mut normed).unwrap();
    g.linear(View::full(&normed, d), batch, d, in_proj, 2 * di, biases.0, xz).unwrap();
    bufs.step(g, c, xz, true);
    let mut out = g.from_vec(vec![0.0; batch * d]).unwrap();
    g.linear(View::full(&bufs.y, di), batch, di, out_proj, d, biases.1, &mut out).unwrap();
    g.add_assign(residual, &out).unwrap();
}

/// A block's shape: (d_model, d_inner, d_state, d_conv, dt_rank, conv bias, projection biases).
type BlockShape = (usize, usize, usize, usize, usize, bool, bool);

/// What [`BlockCase::steps`] records after each step, by name.
const STEP_OUTPUTS: [&str; 8] = ["residual", "xz", "u", "xdbl", "delta", "y", "conv state", "ssm state"];

/// A random Mamba block on the GPU and the residual stream it starts from, for [`block_step_on`].
struct BlockCase {
    mixer: MixerCase,
    d: usize,
    norm: s6::backend::cuda::CudaBuf,
    in_proj: s6::backend::cuda::CudaBuf,
    out_proj: s6::backend::cuda::CudaBuf,
    biases: (Option<s6::backend::cuda::CudaBuf>, Option<s6::backend::cuda::CudaBuf>),
    residual0: Vec<f32>,
}

impl BlockCase {
    fn random(g: &Cuda, rng: &mut Rng, batch: usize, (d, di, n, k, r, conv_bias, proj_bias): BlockShape) -> Self {
        let mixer = MixerCase::random(rng, batch, di, n, k, r, conv_bias);
        let up = |v: Vec<f32>| g.from_vec(v).unwrap();
        let norm = up(rng.vec(d, 0.5, 1.5));
        let sd = 1.0 / (d as f32).sqrt();
        let si = 1.0 / (di as f32).sqrt();
        let in_proj = up(rng.vec(2 * di * d, -sd, sd));
        let out_proj = up(rng.vec(d * di, -si, si));
        let in_b = proj_bias.then(|| up(rng.vec(2 * di, -0.1, 0.1)));
        let out_b = proj_bias.then(|| up(rng.vec(d, -0.1, 0.1)));
        let residual0 = rng.vec(batch * d, -3.0, 3.0);
        BlockCase { mixer, d, norm, in_proj, out_proj, biases: (in_b, out_b), residual0 }
    }

    /// Three decoding steps from the same start, fused or as the ops the fused step replaces: every
    /// output and state ([`STEP_OUTPUTS`]) after each step.
    fn steps(&self, g: &Cuda, fused: bool) -> Vec<[Vec<f32>; 8]> {
        let (batch, di) = (self.mixer.batch, self.mixer.di);
        let mut bufs = MixerBufs::new(g, &self.mixer);
        let mut residual = g.from_vec(self.residual0.clone()).unwrap();
        let mut xz = g.from_vec(vec![7.0; batch * 2 * di]).unwrap();
        let mut steps = Vec::new();
        for _ in 0..3 {
            block_step_on(
                g,
                &self.mixer,
                &mut bufs,
                self.d,
                [&self.norm, &self.in_proj, &self.out_proj],
                (self.biases.0.as_ref(), self.biases.1.as_ref()),
                &mut residual,
                &mut xz,
                fused,
            );
            let v = |b: &s6::backend::cuda::CudaBuf| g.to_vec(b).unwrap();
            steps.push([
                v(&residual),
                v(&xz),
                v(&bufs.u),
                v(&bufs.xdbl),
                v(&bufs.delta),
                v(&bufs.y),
                v(&bufs.conv_state),
                v(&bufs.ssm_state),
            ]);
        }
        steps
    }
}

#[test]
fn fused_block_step_equals_the_ops_it_replaces_bitwise() {
    let Some(g) = gpu() else { return };
    if !s6::backend::cuda::mixer_step::fused_step_enabled() {
        println!("skipped: S6_FUSED_STEP=0");
        return;
    }
    s6::backend::cuda::mixer_step::set_block_step(true);
    // The one-kernel steps (batch 1, bf16) sum in another order: compared on their own below.
    let layer_step_before = s6::backend::cuda::layer_step::layer_step_enabled();
    let cluster_step_before = s6::backend::cuda::layer_step::cluster_step_size();
    s6::backend::cuda::layer_step::set_layer_step(false);
    s6::backend::cuda::layer_step::set_cluster_step(0);
    let mut rng = Rng(23);
    // mamba-130m's block; d_model 40 (k % 8 != 0: the bf16 kernel's 8-byte loads) and 37 (scalar
    // loads) with odd d_inner, d_state and dt_rank; a shorter conv without bias, with in/out_proj
    // biases.
    let shapes: [BlockShape; 4] = [
        (768, 1536, 16, 4, 48, true, false),
        (40, 101, 5, 4, 5, true, false),
        (37, 333, 16, 4, 7, true, true),
        (64, 250, 16, 3, 13, false, true),
    ];
    for compute in [Compute::F32, Compute::Bf16] {
        g.set_compute(compute).unwrap();
        for &shape in &shapes {
            for batch in [1, 3, 8] {
                let case = BlockCase::random(&g, &mut rng, batch, shape);
                let (want, got) = (case.steps(&g, false).pop().unwrap(), case.steps(&g, true).pop().unwrap());
                for (name, (want, got)) in STEP_OUTPUTS.iter().zip(want.iter().zip(&got)) {
                    let diff = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    assert!(
                        want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{compute:?}, block {shape:?}, batch {batch}: {name} differs from the unfused ops after 3 \
                         steps (largest difference {diff:e})"
                    );
                }
            }
        }
    }
    g.set_compute(Compute::F32).unwrap();
    s6::backend::cuda::layer_step::set_layer_step(layer_step_before);
    s6::backend::cuda::layer_step::set_cluster_step(cluster_step_before);
}

/// The blocks the one-kernel steps are tested on: mamba-130m's, 1.4b's and 2.8b's, blocks with
/// fewer channels than a cluster has blocks to share them (d_inner 48, 136), sizes past every
/// range a lane loads early (d_model 1040 and 2056, d_inner 4104), a conv longer than the
/// early-loaded taps, odd d_state and dt_rank, with and without biases.
const ONE_KERNEL_SHAPES: [BlockShape; 9] = [
    (768, 1536, 16, 4, 48, true, false),
    (2048, 4096, 16, 4, 128, true, false),
    (2560, 5120, 16, 4, 160, true, false),
    (64, 136, 16, 4, 5, true, true),
    (32, 48, 5, 3, 12, false, true),
    (64, 96, 16, 5, 7, true, false),
    (1040, 264, 16, 4, 48, true, false),
    (2056, 64, 64, 4, 4, true, true),
    (16, 4104, 16, 4, 3, true, false),
];

/// Every output and state of `got`'s steps within 2e-3 of the largest value of `want`'s (the
/// four-kernel step's), and finite: the same operations summed in another order.
fn assert_steps_close(want: &[[Vec<f32>; 8]], got: &[[Vec<f32>; 8]], what: &str) {
    for (step, (want, got)) in want.iter().zip(got).enumerate() {
        for (name, (want, got)) in STEP_OUTPUTS.iter().zip(want.iter().zip(got)) {
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(
                got.iter().all(|v| v.is_finite()) && diff <= 2e-3 * scale,
                "{what}, step {step}: {name} differs from the four-kernel step by {diff:e} (largest value {scale:e})"
            );
        }
    }
}

/// The one-kernel block step (`layer_step.rs`: batch 1, bf16 products) against the four-kernel
/// one it replaces, over three steps with the states carried: the same operations summed in
/// another order, so equal within fp32 rounding (and the odd bf16 rounding of an input that lands
/// on the other side of a rounding boundary), on [`ONE_KERNEL_SHAPES`]: both entries (in_proj
/// rows up to 1024 and longer).
#[test]
fn layer_step_kernel_equals_the_four_kernel_step() {
    let Some(g) = gpu() else { return };
    if !s6::backend::cuda::mixer_step::fused_step_enabled() {
        println!("skipped: S6_FUSED_STEP=0");
        return;
    }
    s6::backend::cuda::mixer_step::set_block_step(true);
    g.set_compute(Compute::Bf16).unwrap();
    let layer_step_before = s6::backend::cuda::layer_step::layer_step_enabled();
    let cluster_step_before = s6::backend::cuda::layer_step::cluster_step_size();
    s6::backend::cuda::layer_step::set_cluster_step(0);
    let mut rng = Rng(57);
    for &shape in &ONE_KERNEL_SHAPES {
        let case = BlockCase::random(&g, &mut rng, 1, shape);
        s6::backend::cuda::layer_step::set_layer_step(false);
        let four = case.steps(&g, true);
        s6::backend::cuda::layer_step::set_layer_step(true);
        let one = case.steps(&g, true);
        assert!(
            g.owns_layer_step(),
            "another backend of this process launches the layer step on this device (run the tests one at a time)"
        );
        assert_steps_close(&four, &one, &format!("block {shape:?}: the one-kernel step"));
    }
    s6::backend::cuda::layer_step::set_layer_step(layer_step_before);
    s6::backend::cuda::layer_step::set_cluster_step(cluster_step_before);
    g.set_compute(Compute::F32).unwrap();
}

/// The block step in one thread-block cluster (`S6_CLUSTER_STEP`, `layer_step.rs`: batch 1, bf16
/// products) against the four-kernel one, clusters of 8 and of 16 blocks, over three steps with
/// the states carried: x_proj's and out_proj's sums split over the blocks, so equal within fp32
/// rounding, on [`ONE_KERNEL_SHAPES`].
#[test]
fn cluster_step_kernel_equals_the_four_kernel_step() {
    let Some(g) = gpu() else { return };
    if !s6::backend::cuda::mixer_step::fused_step_enabled() {
        println!("skipped: S6_FUSED_STEP=0");
        return;
    }
    if !g.has_clusters() {
        println!("skipped: the device has no thread-block clusters (compute capability below 9.0)");
        return;
    }
    s6::backend::cuda::mixer_step::set_block_step(true);
    g.set_compute(Compute::Bf16).unwrap();
    let layer_step_before = s6::backend::cuda::layer_step::layer_step_enabled();
    let cluster_step_before = s6::backend::cuda::layer_step::cluster_step_size();
    s6::backend::cuda::layer_step::set_layer_step(false);
    let mut rng = Rng(58);
    for &shape in &ONE_KERNEL_SHAPES {
        let case = BlockCase::random(&g, &mut rng, 1, shape);
        s6::backend::cuda::layer_step::set_cluster_step(0);
        let four = case.steps(&g, true);
        for blocks in [8, 16] {
            s6::backend::cuda::layer_step::set_cluster_step(blocks);
            let (d, di, n, _, r, _, _) = shape;
            assert!(g.cluster_step_covers(d, di, r, n), "block {shape:?}: the cluster step does not run it");
            let one = case.steps(&g, true);
            assert_steps_close(&four, &one, &format!("block {shape:?}: the step in a cluster of {blocks}"));
        }
    }
    s6::backend::cuda::layer_step::set_layer_step(layer_step_before);
    s6::backend::cuda::layer_step::set_cluster_step(cluster_step_before);
    g.set_compute(Compute::F32).unwrap();
}

/// A small random Mamba with odd block sizes (d_inner not a multiple of 32, odd dt_rank and d_state).
fn odd_config(d_state: usize) -> s6::config::MambaConfig {
    let mut cfg = s6::config::MambaConfig::new(40, 2, 300);
    cfg.d_inner = 101;
    cfg.dt_rank = 5;
    cfg.d_state = d_state;
    cfg
}

#[test]
fn fused_step_model_logits_equal_cpu() {
    let Some(g) = gpu() else { return };
    // The mixer step (any batch), then the whole-block step (batches up to 8; the default, on
    // again after the loop).
    for block in [false, true] {
        s6::backend::cuda::mixer_step::set_block_step(block);
        fused_step_model_cases(&g, block);
    }
}

fn fused_step_model_cases(g: &Cuda, block: bool) {
    for d_state in [16, 5, 64] {
        let cfg = odd_config(d_state);
        let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 31);
        let cpu = model_from(Cpu, &cfg, &params);
        let gpu = model_from(g.clone(), &cfg, &params);
        for batch in [1, 3, 8, 20] {
            let mut rng = Rng(batch as u64);
            let mut sc = cpu.new_state(batch).unwrap();
            let mut sg = gpu.new_state(batch).unwrap();
            // A short prompt (seqlen > 1: the op-by-op path), then single tokens (the fused step).
            let prompt: Vec<u32> = (0..batch * 4).map(|_| rng.below(300) as u32).collect();
            let lc = cpu.forward(&prompt, batch, 4, &mut sc, s6::model::mamba1::Logits::Last).unwrap();
            let lg = gpu.forward(&prompt, batch, 4, &mut sg, s6::model::mamba1::Logits::Last).unwrap();
            assert_close(&g.to_vec(&lg).unwrap(), &lc, &format!("d_state {d_state}, batch {batch}: prompt"));
            for step in 0..6 {
                let ids: Vec<u32> = (0..batch).map(|_| rng.below(300) as u32).collect();
                let lc = cpu.step(&ids, &mut sc).unwrap();
                let lg = gpu.step(&ids, &mut sg).unwrap();
                let what = format!("block step {block}, d_state {d_state}, batch {batch}, step {step}");
                assert_close(&g.to_vec(&lg).unwrap(), &lc, &format!("{what}: logits"));
                for i in 0..cfg.n_layer {
                    assert_close(&g.to_vec(&sg.conv[i]).unwrap(), &sc.conv[i], &format!("{what}: conv state {i}"));
                    assert_close(&g.to_vec(&sg.ssm[i]).unwrap(), &sc.ssm[i], &format!("{what}: ssm state {i}"));
                }
            }
        }
    }
}

#[test]
fn fused_step_graph_greedy_equals_cpu_on_odd_models() {
    let Some(g) = gpu() else { return };
    for block in [false, true] {
        s6::backend::cuda::mixer_step::set_block_step(block);
        fused_step_graph_cases(&g, block);
    }
}

fn fused_step_graph_cases(g: &Cuda, block: bool) {
    for d_state in [16, 5] {
        let cfg = odd_config(d_state);
        let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 41);
        let cpu = model_from(Cpu, &cfg, &params);
        let gpu = model_from(g.clone(), &cfg, &params);
        let prompts: Vec<Vec<u32>> = vec![(0..50).map(|i| (i * 13 % 300) as u32).collect(), vec![5, 9, 200], vec![77]];
        for batch in [1, 3] {
            let p = &prompts[..batch];
            let want = cpu_greedy(&cpu, p, 30);
            let got = decode_gpu(&gpu, p, 30, greedy(), DecodeMode::Graph);
            assert_eq!(
                got, want,
                "block step {block}, d_state {d_state}, batch {batch}: graph greedy with the fused step differs from the CPU"
            );
        }
    }
}

/// Prefill under `Compute::Bf16` with its activations held in bf16 alone (`allow_bf16_storage`:
/// the norm, in_proj, the conv, dt_proj, the scan and out_proj write only bf16; the conv, the scan
/// and the next norm read bf16 x, u, Δ, z and the block output) against the same prefill with f32
/// activations, and both against the CPU:
/// close logits and states, but not the same bits (the scan's inputs are rounded: the path ran).
/// Then greedy decoding from that state: graph and eager equal, and the decoding buffers are not
/// held in bf16 (decoding equals decoding after an f32-activation prefill of the same state).
#[test]
fn bf16_storage_prefill_follows_f32_activations() {
    let Some(g) = gpu() else { return };
    let storage_before = s6::backend::cuda::bf16_storage_enabled();
    let (cpu, gpu) = two_layer_models(&g, 512, 17);
    g.set_compute(Compute::Bf16).unwrap();
    s6::backend::cuda::set_act_bf16(true);
    // 2 × 300 rows: the products go to cuBLAS (more rows than cuBLASLt's and the mma kernel's).
    let (batch, seqlen) = (2, 300);
    let ids: Vec<u32> = (0..batch * seqlen).map(|i| (i * 7 % 509) as u32).collect();
    let prefill_gpu = |storage: bool| {
        s6::backend::cuda::set_bf16_storage(storage);
        let mut st = gpu.new_state(batch).unwrap();
        let logits = g.to_vec(&gpu.prefill(&ids, batch, seqlen, &mut st, seqlen).unwrap()).unwrap();
        let states: Vec<Vec<f32>> = st.ssm.iter().chain(&st.conv).map(|b| g.to_vec(b).unwrap()).collect();
        (logits, states)
    };
    let (f32_logits, f32_states) = prefill_gpu(false);
    let (b16_logits, b16_states) = prefill_gpu(true);
    s6::backend::cuda::reset_act_bf16();
    let mut cst = cpu.new_state(batch).unwrap();
    let cpu_logits = cpu.prefill(&ids, batch, seqlen, &mut cst, seqlen).unwrap();
    let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= tol * scale, "{what}: worst difference {worst} over {tol} × {scale}");
        worst
    };
    close(&b16_logits, &cpu_logits, 0.03, "bf16-storage prefill logits against the CPU");
    close(&f32_logits, &cpu_logits, 0.03, "f32-activation prefill logits against the CPU");
    close(&b16_logits, &f32_logits, 0.03, "bf16-storage prefill logits against f32 activations");
    for (i, (a, b)) in b16_states.iter().zip(&f32_states).enumerate() {
        close(a, b, 0.03, &format!("state {i}"));
    }
    assert_ne!(b16_logits, f32_logits, "bf16 storage changed no logit: the bf16-only path did not run");
    // Decoding after a bf16-storage prefill: graph equals eager, with bf16 storage on.
    s6::backend::cuda::set_bf16_storage(true);
    let prompts: Vec<Vec<u32>> = vec![(0..600).map(|i| (i * 3 % 512) as u32).collect(), vec![4, 8, 15, 16, 23]];
    let graph = decode_gpu(&gpu, &prompts, 20, greedy(), DecodeMode::Graph);
    let eager = decode_gpu(&gpu, &prompts, 20, greedy(), DecodeMode::Eager);
    assert_eq!(graph, eager, "after a bf16-storage prefill, graph and eager decoding differ");
    s6::backend::cuda::set_bf16_storage(storage_before);
}

/// Runs `f` with bf16 products, activation copies and bf16 storage on, then puts the process-wide
/// switches back.
fn with_bf16_storage<R>(g: &Cuda, f: impl FnOnce() -> R) -> R {
    let storage_before = s6::backend::cuda::bf16_storage_enabled();
    g.set_compute(Compute::Bf16).unwrap();
    s6::backend::cuda::set_act_bf16(true);
    s6::backend::cuda::set_bf16_storage(true);
    let r = f();
    s6::backend::cuda::reset_act_bf16();
    s6::backend::cuda::set_bf16_storage(storage_before);
    r
}

/// A buffer held in bf16 alone is read as f32 through every reader: the norm writes only the
/// bf16 copy of a buffer allowed bf16 storage, and a download (and any f32 kernel after it) gets
/// those values widened: the f32 norm's output rounded to bf16, bit for bit.
#[test]
fn bf16_storage_buffers_read_back_as_rounded_f32() {
    let Some(g) = gpu() else { return };
    let (rows, dim) = (300, 768);
    let mut rng = Rng(99);
    let x: Vec<f32> = (0..rows * dim).map(|_| rng.next() * 4.0 - 2.0).collect();
    let w: Vec<f32> = (0..dim).map(|_| rng.next() + 0.5).collect();
    let wb = g.from_vec(w).unwrap();
    let norm = |allow: bool| {
        let mut res = g.from_vec(x.clone()).unwrap();
        let mut out = g.zeros(rows * dim).unwrap();
        if allow {
            g.allow_bf16_storage(&mut out);
        }
        g.add_rmsnorm(&mut res, None, &wb, 1e-5, rows, dim, &mut out).unwrap();
        // Read through a kernel too: out + 0 (add_assign reads the f32 values).
        let mut copy = g.zeros(rows * dim).unwrap();
        g.add_assign(&mut copy, &out).unwrap();
        (g.to_vec(&out).unwrap(), g.to_vec(&copy).unwrap())
    };
    let ((full, _), (held, through_kernel)) = with_bf16_storage(&g, || (norm(false), norm(true)));
    let rounded: Vec<u32> = full.iter().map(|v| s6::backend::bf16_round(*v).to_bits()).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&held), rounded, "a bf16-held buffer's download is not the f32 values rounded");
    assert_eq!(bits(&through_kernel), rounded, "a kernel read of a bf16-held buffer is not the values rounded");
    assert_ne!(bits(&full), rounded, "the f32 norm's output was already bf16: the test shows nothing");
}

/// `release_f32` on a buffer held in bf16 alone frees its f32 storage: a bf16 reader still gets
/// the values, an f32 read is a clear error (not a read of freed memory), and a write allocates
/// the storage again (a partial write keeps the rest, widened from bf16).
#[test]
fn released_f32_storage_is_restored_by_a_write() {
    let Some(g) = gpu() else { return };
    let (rows, dim, n) = (64, 256, 96);
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..rows * dim).map(|_| rng.next() * 4.0 - 2.0).collect();
    let w: Vec<f32> = (0..dim).map(|_| rng.next() + 0.5).collect();
    let lin: Vec<f32> = (0..n * dim).map(|_| rng.next() - 0.5).collect();
    let (wb, lb) = (g.from_vec(w).unwrap(), g.from_vec(lin).unwrap());
    let held_norm = || {
        let mut res = g.from_vec(x.clone()).unwrap();
        let mut out = g.zeros(rows * dim).unwrap();
        g.allow_bf16_storage(&mut out);
        g.add_rmsnorm(&mut res, None, &wb, 1e-5, rows, dim, &mut out).unwrap();
        out
    };
    let (held, before, after, err, restored, zeroed) = with_bf16_storage(&g, || {
        // The values held (an f32 read widens them, and makes them current in f32: on another
        // buffer).
        let held = g.to_vec(&held_norm()).unwrap();
        let mut out = held_norm();
        let mut before = g.zeros(rows * n).unwrap();
        g.linear(View::full(&out, dim), rows, dim, &lb, n, None, &mut before).unwrap();
        g.release_f32(&mut out).unwrap();
        // A bf16 product reads the held values: the same result.
        let mut after = g.zeros(rows * n).unwrap();
        g.linear(View::full(&out, dim), rows, dim, &lb, n, None, &mut after).unwrap();
        let err = g.to_vec(&out).expect_err("an f32 read of released storage succeeded");
        // A partial write (add_assign into the buffer reads and writes it whole through ptr_mut)
        // allocates the storage again and keeps the values.
        let zero = g.zeros(rows * dim).unwrap();
        g.add_assign(&mut out, &zero).unwrap();
        let restored = g.to_vec(&out).unwrap();
        g.fill_zero(&mut out).unwrap();
        let zeroed = g.to_vec(&out).unwrap();
        (held, before, after, err, restored, zeroed)
    });
    assert_eq!(g.to_vec(&after).unwrap(), g.to_vec(&before).unwrap(), "the product changed after the release");
    assert!(err.to_string().contains("released"), "unexpected error: {err}");
    assert_eq!(restored, held, "the values did not survive the release and a write");
    assert!(zeroed.iter().all(|&v| v == 0.0), "fill_zero of a released buffer left values");
}
