//! The paper's synthetic tasks (copying, selective copying, induction heads) and multi-query
//! associative recall: seeded generators with fresh data every step ([`data`]), training any
//! [`LanguageModel`] on them, and accuracy against sequence length, evaluated in linear time
//! and bounded memory for recurrent models (up to 2^20 tokens and beyond).
//!
//! [`run`] trains one [`Variant`] (Mamba, one of the paper's ablations, or the attention
//! baseline) and evaluates it at each requested length; [`plot`] draws accuracy against length.

pub mod data;
pub mod plot;

use std::path::PathBuf;
use std::time::Instant;

use crate::backend::Backend;
use crate::config::{Ablation, InitConfig, MambaConfig};
use crate::model::{init, LanguageModel, Mamba, Transformer, TransformerConfig};
use crate::train::optim::{adamw_update, global_norm, AdamState, OptimConfig, Schedule};
use crate::{Error, Result};
pub use data::{Task, TaskBatch, TaskRng, TaskSpec};

/// The model variants of the paper's synthetic-task tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Mamba: Δ, B, C functions of the input, gated block.
    S6,
    /// Time-invariant ablation: Δ, B, C learned parameters (S4D-like), gated block.
    Lti,
    /// Mamba without the `silu(z)` gate.
    NoGate,
    /// Only Δ selective (B, C parameters).
    DeltaOnly,
    /// Only B selective.
    BOnly,
    /// Only C selective.
    COnly,
    /// The RoPE multi-head attention Transformer baseline.
    Attention,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::S6,
        Variant::Lti,
        Variant::NoGate,
        Variant::DeltaOnly,
        Variant::BOnly,
        Variant::COnly,
        Variant::Attention,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::S6 => "s6",
            Variant::Lti => "lti",
            Variant::NoGate => "no-gate",
            Variant::DeltaOnly => "delta-only",
            Variant::BOnly => "b-only",
            Variant::COnly => "c-only",
            Variant::Attention => "attention",
        }
    }

    /// The Mamba block ablation, or `None` for attention.
    pub fn ablation(self) -> Option<Ablation> {
        let only = |d, b, c| Ablation { selective_delta: d, selective_b: b, selective_c: c, gate: true };
        match self {
            Variant::S6 => Some(Ablation::MAMBA),
            Variant::Lti => Some(Ablation::LTI),
            Variant::NoGate => Some(Ablation { gate: false, ..Ablation::MAMBA }),
            Variant::DeltaOnly => Some(only(true, false, false)),
            Variant::BOnly => Some(only(false, true, false)),
            Variant::COnly => Some(only(false, false, true)),
            Variant::Attention => None,
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Variant::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
            Error::input(format!("unknown variant '{s}'; expected one of {}", names.join(", ")))
        })
    }
}

/// Model size of a task run.
#[derive(Clone, Copy, Debug)]
pub struct ModelSize {
    pub layers: usize,
    pub d_model: usize,
    /// SSM state size N (Mamba variants).
    pub d_state: usize,
    /// Attention heads (attention baseline).
    pub heads: usize,
}

impl Default for ModelSize {
    /// The paper's synthetic-task models: 2 layers, D = 64, N = 16 (attention: 4 heads).
    fn default() -> Self {
        ModelSize { layers: 2, d_model: 64, d_state: 16, heads: 4 }
    }
}

/// Options of one task run (the `s6 task` flags).
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub spec: TaskSpec,
    pub size: ModelSize,
    /// Training sequence length.
    pub seq_len: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Report accuracy at the training length every this many steps (0 = never during training).
    pub eval_every: u64,
    /// Lengths to evaluate after training.
    pub eval_lengths: Vec<usize>,
    /// Samples per evaluated length (capped by `eval_tokens`).
    pub eval_samples: usize,
    /// At most this many tokens per evaluated length (fewer samples at long lengths, at least one).
    pub eval_tokens: usize,
    /// Skip a length whose predicted evaluation time exceeds this many seconds.
    pub eval_time_budget_s: f64,
    /// Start from the model saved in this directory (by `save_to`) instead of a fresh
    /// initialization; with `steps = 0`, evaluate it only. The optimizer starts afresh.
    pub load_from: Option<PathBuf>,
    /// Save the model into this directory at every `eval_every` step and after training.
    pub save_to: Option<PathBuf>,
}

impl TaskOptions {
    /// Defaults for a task: the paper's model size, learning rate 1e-3 with warmup and cosine
    /// decay, no weight decay (the paper's synthetic-task recipe), clipping at 1.
    pub fn new(task: Task, seq_len: usize) -> Self {
        TaskOptions {
            spec: TaskSpec::new(task),
            size: ModelSize::default(),
            seq_len,
            steps: 2000,
            batch_size: 32,
            optim: OptimConfig {
                lr: 1e-3,
                min_lr: 1e-4,
                warmup_steps: 100,
                schedule: Schedule::Cosine,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                grad_clip: 1.0,
            },
            seed: 0,
            eval_every: 0,
            eval_lengths: vec![seq_len],
            eval_samples: 256,
            eval_tokens: 1 << 22,
            eval_time_budget_s: 600.0,
            load_from: None,
            save_to: None,
        }
    }
}

/// Accuracy at one length.
#[derive(Clone, Debug)]
pub struct LengthResult {
    pub seq_len: usize,
    /// `None` when skipped.
    pub accuracy: Option<f64>,
    /// Samples evaluated and answers scored.
    pub samples: usize,
    pub answers: usize,
    pub seconds: f64,
    /// Why the length was skipped (out of memory, over the time budget).
    pub skipped: Option<String>,
}

/// The outcome of [`run`].
#[derive(Clone, Debug)]
pub struct TaskReport {
    pub task: Task,
    pub variant: Variant,
    pub train_seq_len: usize,
    pub steps: u64,
    pub params: usize,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub results: Vec<LengthResult>,
    /// How it was trained: samples per step, seed, optimizer and schedule, and the directory of
    /// the model it started from (if loaded).
    pub batch_size: usize,
    pub seed: u64,
    pub optim: OptimConfig,
    pub loaded_from: Option<PathBuf>,
}

impl TaskReport {
    /// `{"task", "variant", "train_seq_len", "steps", "results": [{"seq_len", "accuracy"}]}` plus
    /// details (`params`, `final_loss`, `train_seconds`, per length `samples`, `answers`,
    /// `seconds`, `skipped`; `training`: batch size, seed, optimizer, schedule, the loaded
    /// model's directory). A skipped length has `"accuracy": null`.
    pub fn to_json(&self) -> serde_json::Value {
        let results: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "seq_len": r.seq_len,
                    "accuracy": r.accuracy,
                    "samples": r.samples,
                    "answers": r.answers,
                    "seconds": r.seconds,
                });
                if let Some(s) = &r.skipped {
                    v["skipped"] = serde_json::Value::String(s.clone());
                }
                v
            })
            .collect();
        // An evaluation-only run (`--steps 0`) trained nothing: its optimizer settings would only
        // be the defaults, so it records the loaded model alone.
        let training = if self.steps == 0 {
            serde_json::json!({ "loaded_from": self.loaded_from.as_ref().map(|p| p.display().to_string()) })
        } else {
            self.training_json()
        };
        serde_json::json!({
            "task": self.task.name(),
            "variant": self.variant.name(),
            "train_seq_len": self.train_seq_len,
            "steps": self.steps,
            "params": self.params,
            "final_loss": self.final_loss,
            "train_seconds": self.train_seconds,
            "results": results,
            "training": training,
        })
    }

    /// The `training` object of a run that trained.
    fn training_json(&self) -> serde_json::Value {
        serde_json::json!({
            "batch_size": self.batch_size,
            "seed": self.seed,
            "lr": self.optim.lr,
            "lr_schedule": match self.optim.schedule {
                Schedule::Cosine => "cosine",
                Schedule::Constant => "constant",
            },
            "min_lr": self.optim.min_lr,
            "warmup_steps": self.optim.warmup_steps,
            "betas": [self.optim.beta1, self.optim.beta2],
            "weight_decay": self.optim.weight_decay,
            "grad_clip": self.optim.grad_clip,
            "loaded_from": self.loaded_from.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// The JSON of a set of runs: the object of [`TaskReport::to_json`] for one report, an array of
/// them for several.
pub fn reports_json(reports: &[TaskReport]) -> String {
    let value = match reports {
        [one] => one.to_json(),
        many => serde_json::Value::Array(many.iter().map(TaskReport::to_json).collect()),
    };
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Progress reported by [`run`].
#[derive(Clone, Debug)]
pub enum TaskEvent {
    Start {
        variant: Variant,
        params: usize,
    },
    Step {
        step: u64,
        steps: u64,
        loss: f64,
        tokens_per_s: f64,
    },
    /// Accuracy at the training length during training.
    Eval {
        step: u64,
        accuracy: f64,
    },
    Length(LengthResult),
}

/// Builds the model of `variant` (seeded initialization, or loaded from `opts.load_from`) and
/// runs [`train_and_evaluate`].
pub fn run<B: Backend>(
    backend: B,
    variant: Variant,
    opts: &TaskOptions,
    on_event: &mut dyn FnMut(TaskEvent),
) -> Result<TaskReport> {
    if let Some(dir) = &opts.load_from {
        return run_loaded(backend, variant, dir, opts, on_event);
    }
    let size = opts.size;
    if size.layers == 0 || size.d_model == 0 {
        return Err(Error::input("--layers and --d-model must be at least 1"));
    }
    match variant.ablation() {
        Some(ablation) => {
            let mut cfg = MambaConfig::new(size.d_model, size.layers, opts.spec.vocab);
            cfg.d_state = size.d_state;
            cfg.ablation = ablation;
            cfg.validate(std::path::Path::new("--d-model/--layers"))?;
            let params = init::init_params(&cfg, &InitConfig::default(), opts.seed);
            let mut it = params.into_iter();
            let model = Mamba::from_params(backend, cfg, |spec| match it.next() {
                Some((s, v)) if s.name == spec.name => Ok(v),
                _ => Err(Error::Backend(format!("no initial value for '{}'", spec.name))),
            })?;
            train_and_evaluate(model, variant, opts, on_event)
        }
        None => {
            if size.heads == 0 || !size.d_model.is_multiple_of(size.heads) {
                return Err(Error::input(format!(
                    "--heads {} must divide --d-model {} (attention variant)",
                    size.heads, size.d_model
                )));
            }
            let cfg = TransformerConfig::new(size.d_model, size.layers, size.heads, opts.spec.vocab);
            let model = Transformer::init(backend, cfg, opts.seed)?;
            train_and_evaluate(model, variant, opts, on_event)
        }
    }
}

/// [`run`] from a saved model: checks that it is a model of `variant` (the vocabulary is checked
/// by [`train_and_evaluate`]).
fn run_loaded<B: Backend>(
    backend: B,
    variant: Variant,
    dir: &std::path::Path,
    opts: &TaskOptions,
    on_event: &mut dyn FnMut(TaskEvent),
) -> Result<TaskReport> {
    let mismatch = |what: String| {
        Error::input(format!("--load {}: {what}; use the variant and task it was trained with", dir.display()))
    };
    match variant.ablation() {
        Some(ablation) => {
            let model = Mamba::load(backend, dir)?;
            if model.cfg.ablation != ablation {
                let found = Variant::ALL.iter().find(|v| v.ablation() == Some(model.cfg.ablation));
                let found = found.map_or("an unnamed ablation", |v| v.name());
                return Err(mismatch(format!("holds the {found} variant, not {}", variant.name())));
            }
            train_and_evaluate(model, variant, opts, on_event)
        }
        None => {
            let model = Transformer::load(backend, dir)?;
            train_and_evaluate(model, variant, opts, on_event)
        }
    }
}

/// Trains `model` on fresh samples of the task, then evaluates it at every length of
/// `opts.eval_lengths`.
pub fn train_and_evaluate<B: Backend, M: LanguageModel<B>>(
    mut model: M,
    variant: Variant,
    opts: &TaskOptions,
    on_event: &mut dyn FnMut(TaskEvent),
) -> Result<TaskReport> {
    if model.vocab_size() != opts.spec.vocab {
        let from = opts.load_from.as_ref().map_or(String::new(), |d| format!("--load {}: ", d.display()));
        return Err(Error::input(format!(
            "{from}vocabulary {} where this task has {}; use the variant and task it was trained with",
            model.vocab_size(),
            opts.spec.vocab
        )));
    }
    opts.spec.validate(opts.seq_len)?;
    for &l in &opts.eval_lengths {
        opts.spec.validate(l)?;
    }
    if opts.batch_size == 0 || (opts.steps == 0 && opts.load_from.is_none()) {
        return Err(Error::input("--batch-size and --steps must be at least 1 (--steps 0 only with --load)"));
    }
    let params: usize = model.param_specs().iter().map(|s| s.shape.iter().product::<usize>()).sum();
    on_event(TaskEvent::Start { variant, params });
    let t0 = Instant::now();
    let final_loss = train(&mut model, opts, on_event)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let results = evaluate(&model, opts, on_event)?;
    Ok(TaskReport {
        task: opts.spec.task,
        variant,
        train_seq_len: opts.seq_len,
        steps: opts.steps,
        params,
        final_loss,
        train_seconds,
        results,
        batch_size: opts.batch_size,
        seed: opts.seed,
        optim: opts.optim.clone(),
        loaded_from: opts.load_from.clone(),
    })
}

/// The training loop: a fresh batch every step (the data never repeats), AdamW with the
/// schedule of `opts.optim`, global-norm clipping. Returns the last step's loss.
pub fn train<B: Backend, M: LanguageModel<B>>(
    model: &mut M,
    opts: &TaskOptions,
    on_event: &mut dyn FnMut(TaskEvent),
) -> Result<f64> {
    let be = model.backend().clone();
    let specs = model.param_specs();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let sizes: Vec<usize> = specs.iter().map(|s| s.shape.iter().product()).collect();
    let mut adam = AdamState::zeros(&be, &sizes)?;
    let mut rng = TaskRng::new(opts.seed ^ 0x7A5C_0001);
    // A fixed held-out batch for progress reports, from its own stream.
    let probe = if opts.eval_every > 0 {
        Some(opts.spec.batch(&mut TaskRng::new(opts.seed ^ 0xE7A1), opts.batch_size.max(64), opts.seq_len)?)
    } else {
        None
    };
    let mut loss = f64::NAN;
    for step in 1..=opts.steps {
        let t = Instant::now();
        let batch = opts.spec.batch(&mut rng, opts.batch_size, opts.seq_len)?;
        let mut grads = model.zero_grads()?;
        let (l, _) = model.loss_and_grads(&batch.ids, &batch.targets, batch.batch, batch.seq_len, 1.0, &mut grads)?;
        let grad_refs = grads.params();
        let norm = global_norm(&be, &grad_refs)?;
        if !l.is_finite() || !norm.is_finite() {
            return Err(Error::input(format!(
                "training diverged at step {step}: loss {l}, gradient norm {norm} (try a lower --lr)"
            )));
        }
        let scale = opts.optim.clip_scale(norm);
        let lr = opts.optim.lr_at(step, opts.steps);
        adamw_update(&be, &opts.optim, lr, step, scale, &names, model.params_mut(), &grad_refs, &mut adam)?;
        model.refresh_derived()?;
        loss = l;
        let tokens = (opts.batch_size * opts.seq_len) as f64;
        on_event(TaskEvent::Step { step, steps: opts.steps, loss, tokens_per_s: tokens / t.elapsed().as_secs_f64() });
        if let Some(p) = &probe {
            if step % opts.eval_every == 0 || step == opts.steps {
                let (right, total) = score(model, p)?;
                on_event(TaskEvent::Eval { step, accuracy: right as f64 / total.max(1) as f64 });
            }
        }
        if let Some(dir) = &opts.save_to {
            if step == opts.steps || (opts.eval_every > 0 && step % opts.eval_every == 0) {
                model.save(dir)?;
            }
        }
    }
    Ok(loss)
}

/// Correct and total answers of `model` on a batch (argmax at the answer positions).
pub fn score<B: Backend, M: LanguageModel<B>>(model: &M, batch: &TaskBatch) -> Result<(usize, usize)> {
    let positions = batch.answer_positions();
    let v = model.vocab_size();
    let logits = model.logits_at(&batch.ids, batch.batch, batch.seq_len, &positions)?;
    let (mut right, mut total) = (0, 0);
    for b in 0..batch.batch {
        for (i, &p) in positions.iter().enumerate() {
            let target = batch.targets[b * batch.seq_len + p];
            if target == data::IGNORE {
                continue;
            }
            let row = &logits[(b * positions.len() + i) * v..][..v];
            let best = row.iter().enumerate().fold(0, |best, (j, &x)| if x > row[best] { j } else { best });
            total += 1;
            right += usize::from(best == target as usize);
        }
    }
    Ok((right, total))
}

/// Accuracy at every length of `opts.eval_lengths` on fresh samples (a stream separate from
/// training's). Lengths are evaluated in increasing order; a length is skipped, with the reason,
/// when the model reports it cannot fit it in memory or when the time predicted from the
/// previous lengths (by their measured growth) exceeds `opts.eval_time_budget_s`.
pub fn evaluate<B: Backend, M: LanguageModel<B>>(
    model: &M,
    opts: &TaskOptions,
    on_event: &mut dyn FnMut(TaskEvent),
) -> Result<Vec<LengthResult>> {
    let mut lengths = opts.eval_lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let mut results = Vec::new();
    // (length, seconds per sample) of the evaluated lengths, for the time prediction.
    let mut timings: Vec<(f64, f64)> = Vec::new();
    for &len in &lengths {
        let samples = opts.eval_samples.min(opts.eval_tokens / len).max(1);
        let mut rng = TaskRng::new(opts.seed ^ 0x5EED_E7A1 ^ (len as u64).rotate_left(17));
        let skip = |reason: String| LengthResult {
            seq_len: len,
            accuracy: None,
            samples,
            answers: 0,
            seconds: 0.0,
            skipped: Some(reason),
        };
        if let Some(predicted) = predict_seconds(&timings, len as f64).map(|s| s * samples as f64) {
            if predicted > opts.eval_time_budget_s {
                let r = skip(format!(
                    "predicted {predicted:.0} s from the shorter lengths, over the {:.0} s budget",
                    opts.eval_time_budget_s
                ));
                on_event(TaskEvent::Length(r.clone()));
                results.push(r);
                continue;
            }
        }
        let t = Instant::now();
        // Batches of up to 2^16 tokens: enough parallel work, bounded activations.
        let per_batch = ((1usize << 16) / len).clamp(1, samples);
        let (mut right, mut total, mut done) = (0, 0, 0);
        let mut failure = None;
        while done < samples {
            let nb = per_batch.min(samples - done);
            let batch = opts.spec.batch(&mut rng, nb, len)?;
            match score(model, &batch) {
                Ok((r, n)) => {
                    right += r;
                    total += n;
                }
                Err(e @ Error::OutOfMemory { .. }) => {
                    failure = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
            done += nb;
        }
        let seconds = t.elapsed().as_secs_f64();
        let r = match failure {
            Some(reason) => skip(reason),
            None => {
                timings.push((len as f64, seconds / samples as f64));
                LengthResult {
                    seq_len: len,
                    accuracy: Some(right as f64 / total.max(1) as f64),
                    samples,
                    answers: total,
                    seconds,
                    skipped: None,
                }
            }
        };
        on_event(TaskEvent::Length(r.clone()));
        results.push(r);
    }
    Ok(results)
}

/// Extrapolates the time per sample at length `len` from the latest two measurements with the
/// growth exponent they show (at least linear: a recurrent model is linear, attention
/// quadratic), or linearly from one.
fn predict_seconds(timings: &[(f64, f64)], len: f64) -> Option<f64> {
    let &(n1, s1) = timings.last()?;
    let exponent = match timings.len() {
        0 | 1 => 1.0,
        n => {
            let (n0, s0) = timings[n - 2];
            // Short runs are dominated by fixed costs; only trust the slope when both took a while.
            if s0 > 0.02 && n1 > n0 {
                ((s1 / s0).ln() / (n1 / n0).ln()).clamp(1.0, 3.0)
            } else {
                1.0
            }
        }
    };
    Some(s1 * (len / n1).powf(exponent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn tiny_opts(task: Task, seq_len: usize) -> TaskOptions {
        let mut o = TaskOptions::new(task, seq_len);
        o.size = ModelSize { layers: 1, d_model: 16, d_state: 4, heads: 2 };
        o.steps = 3;
        o.batch_size = 4;
        o.eval_samples = 8;
        o
    }

    #[test]
    fn time_prediction_follows_the_measured_growth() {
        assert_eq!(predict_seconds(&[], 10.0), None);
        // One point: linear.
        assert!((predict_seconds(&[(100.0, 1.0)], 400.0).unwrap() - 4.0).abs() < 1e-9);
        // Quadratic growth measured: quadratic extrapolation.
        let quad = [(100.0, 1.0), (200.0, 4.0)];
        assert!((predict_seconds(&quad, 400.0).unwrap() - 16.0).abs() < 1e-9);
        // Faster than linear is treated as linear (fixed costs at short lengths).
        let flat = [(100.0, 1.0), (200.0, 1.0)];
        assert!((predict_seconds(&flat, 400.0).unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_run_reports_every_length_and_the_json_fields() {
        let mut o = tiny_opts(Task::InductionHeads, 16);
        o.eval_lengths = vec![32, 16];
        o.eval_every = 2;
        let mut events = Vec::new();
        let r = run(Cpu, Variant::S6, &o, &mut |e| events.push(e)).unwrap();
        assert_eq!(r.results.iter().map(|x| x.seq_len).collect::<Vec<_>>(), vec![16, 32]);
        assert!(r.results.iter().all(|x| x.accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)) && x.answers == 8));
        assert!(r.final_loss.is_finite() && r.params > 0);
        let steps = events.iter().filter(|e| matches!(e, TaskEvent::Step { .. })).count();
        let evals = events.iter().filter(|e| matches!(e, TaskEvent::Eval { .. })).count();
        assert_eq!((steps, evals), (3, 2));
        let v: serde_json::Value = serde_json::from_str(&reports_json(std::slice::from_ref(&r))).unwrap();
        assert_eq!(v["task"], "induction-heads");
        assert_eq!(v["variant"], "s6");
        assert_eq!(v["train_seq_len"], 16);
        assert_eq!(v["steps"], 3);
        assert_eq!(v["results"][1]["seq_len"], 32);
        assert!(v["results"][0]["accuracy"].is_number());
        assert_eq!(v["training"]["batch_size"], 4);
        assert_eq!(v["training"]["lr_schedule"], "cosine");
        assert_eq!(v["training"]["loaded_from"], serde_json::Value::Null);
        let two: serde_json::Value = serde_json::from_str(&reports_json(&[r.clone(), r])).unwrap();
        assert_eq!(two.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_attention_baseline_runs_through_the_same_loop() {
        let mut o = tiny_opts(Task::InductionHeads, 16);
        o.eval_lengths = vec![16, 32];
        let r = run(Cpu, Variant::Attention, &o, &mut |_| {}).unwrap();
        assert_eq!(r.results.len(), 2);
        assert!(r.results.iter().all(|x| x.accuracy.is_some()));
        o.size.heads = 3;
        let e = run(Cpu, Variant::Attention, &o, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("--heads 3"), "{e}");
    }

    #[test]
    fn same_seed_same_run() {
        let o = tiny_opts(Task::SelectiveCopying, 40);
        let a = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
        let b = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
        assert_eq!(a.final_loss, b.final_loss);
        assert_eq!(a.results[0].accuracy, b.results[0].accuracy);
    }

    #[test]
    fn a_saved_model_loads_and_scores_the_same() {
        let dir = std::env::temp_dir().join(format!("s6-task-save-{}", std::process::id()));
        for (variant, other) in [(Variant::NoGate, Variant::S6), (Variant::Attention, Variant::Lti)] {
            let sub = dir.join(variant.name());
            let mut o = tiny_opts(Task::InductionHeads, 16);
            o.eval_samples = 32;
            o.save_to = Some(sub.clone());
            let trained = run(Cpu, variant, &o, &mut |_| {}).unwrap();
            let mut o = tiny_opts(Task::InductionHeads, 16);
            o.eval_samples = 32;
            o.steps = 0;
            o.load_from = Some(sub.clone());
            let loaded = run(Cpu, variant, &o, &mut |_| {}).unwrap();
            assert_eq!(trained.results[0].accuracy, loaded.results[0].accuracy, "{variant:?}");
            assert_eq!(trained.results[0].answers, 32);
            // The evaluation-only JSON names the loaded model and claims no optimizer settings.
            let v = loaded.to_json();
            assert_eq!(v["training"]["loaded_from"], sub.display().to_string());
            assert!(v["training"].get("lr").is_none(), "{v}");
            // A different variant, or another task's vocabulary, is refused by name.
            let e = run(Cpu, other, &o, &mut |_| {}).unwrap_err().to_string();
            assert!(e.contains(&sub.display().to_string()), "{e}");
            o.spec.vocab = 20;
            let e = run(Cpu, variant, &o, &mut |_| {}).unwrap_err().to_string();
            assert!(e.contains("vocabulary 16"), "{e}");
        }
        // Without --load, 0 steps is an error.
        let mut o = tiny_opts(Task::InductionHeads, 16);
        o.steps = 0;
        assert!(run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap_err().to_string().contains("--steps"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn lengths_over_the_time_budget_are_skipped_not_run() {
        let mut o = tiny_opts(Task::Copying, 40);
        o.eval_lengths = vec![40, 1 << 30];
        o.eval_time_budget_s = 1.0;
        let r = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
        assert!(r.results[0].accuracy.is_some());
        let skipped = &r.results[1];
        assert!(skipped.accuracy.is_none());
        assert!(skipped.skipped.as_deref().unwrap().contains("budget"), "{skipped:?}");
    }

    #[test]
    fn bad_sizes_are_errors_naming_the_value() {
        let o = tiny_opts(Task::SelectiveCopying, 10);
        let e = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("sequence length 10"), "{e}");
        let mut o = tiny_opts(Task::Copying, 40);
        o.eval_lengths = vec![5];
        let e = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("sequence length 5"), "{e}");
        assert!("lstm".parse::<Variant>().unwrap_err().to_string().contains("attention"));
    }

    /// Learning, not just running: a 1-layer Mamba solves a short fixed-delay copy.
    #[test]
    fn mamba_learns_a_short_copy() {
        let mut o = tiny_opts(Task::Copying, 12);
        o.spec.items = 4;
        o.size = ModelSize { layers: 1, d_model: 32, d_state: 8, heads: 2 };
        o.steps = 1200;
        o.batch_size = 16;
        o.optim.lr = 3e-3;
        o.optim.min_lr = 3e-4;
        o.optim.warmup_steps = 20;
        o.eval_samples = 128;
        let r = run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
        let acc = r.results[0].accuracy.unwrap();
        assert!(acc > 0.9, "accuracy {acc}, final loss {}", r.final_loss);
    }
}
