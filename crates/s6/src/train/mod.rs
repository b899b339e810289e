//! Training: data windows, AdamW with warmup + cosine, global-norm clipping, gradient
//! accumulation, JSONL metrics, a loss plot, and atomic resumable checkpoints. Runs on any
//! [`Backend`] through the model's hand-written backward ([`Mamba::loss_and_grads`]).
//!
//! Checkpoint layout of `--out DIR`: `config.json` + `model.safetensors` (HF layout, loadable by
//! `s6 generate` and transformers) and `training_state.safetensors` (parameters, AdamW moments,
//! step; the one file a resume reads, written atomically, so it is always self-consistent). With
//! [`TrainOptions::keep_best`], `best/` holds the HF-layout model of the evaluation with the lowest
//! validation loss so far (early stopping without stopping), exported when it is reached.

pub mod data;
pub mod optim;
pub mod parallel;
pub mod plot;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::Backend;
use crate::config::InitConfig;
use crate::formats::tensors::{write_safetensors, OutTensor, SaveDType, TensorFile};
use crate::model::mamba1::param_specs;
use crate::model::save::save_hf;
use crate::model::{Mamba, Recompute};
use crate::{Error, Result};
use data::Batcher;
use optim::{adamw_update, AdamState, OptimConfig};
pub use parallel::Replicas;

/// Options of a training run (the CLI flags).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub out: PathBuf,
    /// Total optimizer steps of the whole run (a resumed run continues up to this).
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    pub shuffle: bool,
    /// Evaluate (and checkpoint) every this many steps; 0 = only at the end.
    pub eval_every: u64,
    /// Validation windows per evaluation.
    pub eval_batches: usize,
    pub metrics: Option<PathBuf>,
    pub save_dtype: SaveDType,
    /// End this invocation (with a checkpoint) after this step, though the schedule runs to
    /// `steps`: for time-limited jobs that `--resume` later.
    pub stop_at: Option<u64>,
    /// What each step keeps for its backward pass (memory against time; same results).
    pub recompute: Recompute,
    /// Export the model of the lowest validation loss so far into `out/best` at each evaluation
    /// that improves on it (needs validation data).
    pub keep_best: bool,
}

/// What the loop reports to its caller (progress display).
pub enum Event<'a> {
    Step {
        step: u64,
        total: u64,
        loss: f64,
        lr: f32,
        grad_norm: f64,
        tokens_per_s: f64,
    },
    Eval {
        step: u64,
        val_loss: f64,
    },
    Checkpoint {
        step: u64,
        dir: &'a Path,
    },
    /// A new lowest validation loss, its model exported to `dir` ([`TrainOptions::keep_best`]).
    Best {
        step: u64,
        val_loss: f64,
        dir: &'a Path,
    },
}

/// Summary of a finished run.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    pub first_step: u64,
    pub last_step: u64,
    pub final_loss: f64,
    pub final_val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    /// The evaluation with the lowest validation loss, `(step, val_loss)`, when
    /// [`TrainOptions::keep_best`] is set (over the whole run, resumed parts included).
    pub best: Option<(u64, f64)>,
}

const STATE_FILE: &str = "training_state.safetensors";
/// The subdirectory of `--out` that [`TrainOptions::keep_best`] exports to.
pub const BEST_DIR: &str = "best";

/// Runs (or resumes) training. `model` is the starting point (ignored on resume, where the
/// parameters come from the checkpoint). `val` holds validation tokens (may be empty).
pub fn train<B: Backend>(
    model: Mamba<B>,
    train_tokens: Vec<u32>,
    val_tokens: Vec<u32>,
    opts: &TrainOptions,
    resume: bool,
    on_event: impl FnMut(Event<'_>),
) -> Result<(Mamba<B>, TrainSummary)> {
    train_data_parallel(Replicas::single(model), train_tokens, val_tokens, opts, resume, on_event)
}

/// [`train`] over the ranks of `replicas` (see [`parallel`]): each step's global batch of
/// `opts.batch_size` sequences is split evenly over the ranks, gradients are summed over ranks,
/// and every rank applies the same update. Rank 0 evaluates and writes the checkpoints (the
/// single-device format: a run resumes on any number of devices). Returns rank 0's model.
pub fn train_data_parallel<B: Backend>(
    mut replicas: Replicas<B>,
    train_tokens: Vec<u32>,
    val_tokens: Vec<u32>,
    opts: &TrainOptions,
    resume: bool,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<(Mamba<B>, TrainSummary)> {
    let world = replicas.world_size();
    if !opts.batch_size.is_multiple_of(world) {
        return Err(Error::input(format!(
            "--batch-size {} cannot be split evenly over {world} devices: use a multiple of {world}",
            opts.batch_size
        )));
    }
    if opts.steps == 0 {
        return Err(Error::input("--steps must be at least 1"));
    }
    if opts.grad_accum == 0 {
        return Err(Error::input("--grad-accum must be at least 1"));
    }
    for m in replicas.models_mut() {
        m.recompute = opts.recompute;
    }
    let batcher = Batcher::new(train_tokens, opts.seq_len, opts.batch_size, opts.shuffle, opts.seed)?;
    let val = if val_tokens.len() > opts.seq_len {
        Some(Batcher::new(val_tokens, opts.seq_len, opts.batch_size, false, 0)?)
    } else {
        None
    };
    if opts.keep_best && val.is_none() {
        return Err(Error::input(format!(
            "--keep-best compares validation losses, and the held-out data is too short for one window of {} tokens: set --val-fraction (or a larger one)",
            opts.seq_len
        )));
    }
    let specs = param_specs(&replicas.rank0().cfg);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let sizes: Vec<usize> = specs.iter().map(|s| s.shape.iter().product()).collect();
    // One AdamW state per rank, next to that rank's parameters.
    let mut adams =
        replicas.models_mut().iter().map(|m| AdamState::zeros(&m.backend, &sizes)).collect::<Result<Vec<_>>>()?;
    let mut start = 0u64;
    let mut best: Option<(u64, f64)> = None;
    if resume {
        for (m, adam) in replicas.models_mut().iter_mut().zip(adams.iter_mut()) {
            start = load_state(&opts.out, m, adam)?;
        }
        best = load_best(&opts.out)?;
        if start >= opts.steps {
            return Err(Error::input(format!(
                "the checkpoint in {} is at step {start}; --steps {} leaves nothing to do",
                opts.out.display(),
                opts.steps
            )));
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut metrics = match &opts.metrics {
        Some(p) => {
            let f = std::fs::OpenOptions::new().create(true).append(resume).write(true).truncate(!resume).open(p);
            Some(f.map_err(|e| Error::io(p, e))?)
        }
        None => None,
    };
    let mut curve: Vec<(u64, f64)> = Vec::new();
    let mut val_curve: Vec<(u64, f64)> = Vec::new();
    let mut summary = TrainSummary { first_step: start + 1, ..Default::default() };
    let run_start = Instant::now();
    let mut run_tokens = 0usize;
    let tokens_per_step = opts.batch_size * opts.seq_len * opts.grad_accum;

    let end = opts.stop_at.map_or(opts.steps, |s| s.min(opts.steps));
    for step in start + 1..=end {
        let t0 = Instant::now();
        let lr = opts.optim.lr_at(step, opts.steps);
        let mut grads = replicas.zero_grads()?;
        let mut loss = 0.0;
        for micro in 0..opts.grad_accum {
            let (x, y) = batcher.batch((step - 1) * opts.grad_accum as u64 + micro as u64);
            let scale = 1.0 / opts.grad_accum as f32;
            let (l, _) = replicas.loss_and_grads(&x, &y, opts.batch_size, opts.seq_len, scale, &mut grads)?;
            loss += l / opts.grad_accum as f64;
        }
        // Through the collective also with one rank: `--gpus 1` runs the NCCL path.
        replicas.all_reduce(&mut grads)?;
        // Every rank now holds the same gradients: each computes the same norm and update.
        let mut grad_norm = 0.0;
        for ((m, g), adam) in replicas.models_mut().iter_mut().zip(&grads).zip(adams.iter_mut()) {
            let be = m.backend.clone();
            let grad_refs: Vec<&B::Buf> = g.params().into_iter().map(|(_, b)| b).collect();
            grad_norm = optim::global_norm(&be, &grad_refs)?;
            if !loss.is_finite() || !grad_norm.is_finite() {
                return Err(Error::input(format!(
                    "training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; the last good checkpoint in {} is kept (try a lower --lr or --grad-clip)",
                    opts.out.display()
                )));
            }
            let clip = opts.optim.clip_scale(grad_norm);
            adamw_update(&be, &opts.optim, lr, step, clip, &names, m.params_mut(), &grad_refs, adam)?;
            m.refresh_derived()?;
        }
        replicas.check_in_sync(step)?;
        let dt = t0.elapsed().as_secs_f64();
        run_tokens += tokens_per_step;
        let tps = tokens_per_step as f64 / dt.max(1e-9);
        curve.push((step, loss));
        summary.losses.push(loss);
        summary.final_loss = loss;
        if let Some(m) = metrics.as_mut() {
            let line =
                serde_json::json!({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps});
            writeln!(m, "{line}").map_err(|e| Error::io(opts.metrics.as_deref().unwrap_or(Path::new("")), e))?;
        }
        on_event(Event::Step { step, total: opts.steps, loss, lr, grad_norm, tokens_per_s: tps });

        let last = step == end;
        if last || (opts.eval_every > 0 && step % opts.eval_every == 0) {
            if let Some(v) = &val {
                let vl = eval_loss(replicas.rank0(), v, opts.eval_batches)?;
                summary.final_val_loss = Some(vl);
                val_curve.push((step, vl));
                if let Some(m) = metrics.as_mut() {
                    let line = serde_json::json!({"step": step, "val_loss": vl});
                    writeln!(m, "{line}")
                        .map_err(|e| Error::io(opts.metrics.as_deref().unwrap_or(Path::new("")), e))?;
                }
                on_event(Event::Eval { step, val_loss: vl });
                if opts.keep_best && best.is_none_or(|(_, b)| vl < b) {
                    let dir = opts.out.join(BEST_DIR);
                    let model = replicas.rank0();
                    save_hf(&dir, &model.cfg, &InitConfig::default(), &host_params(model)?, opts.save_dtype)?;
                    best = Some((step, vl));
                    on_event(Event::Best { step, val_loss: vl, dir: &dir });
                }
            }
            save_checkpoint(&opts.out, replicas.rank0(), &adams[0], step, opts.save_dtype, best)?;
            plot::loss_curve(&opts.out.join("loss.svg"), &curve, &val_curve)?;
            on_event(Event::Checkpoint { step, dir: &opts.out });
        }
    }
    summary.last_step = end;
    summary.best = best;
    summary.tokens_per_s = run_tokens as f64 / run_start.elapsed().as_secs_f64().max(1e-9);
    Ok((replicas.into_rank0(), summary))
}

/// Mean loss over up to `batches` consecutive validation batches (each window seen once).
pub fn eval_loss<B: Backend>(model: &Mamba<B>, val: &Batcher, batches: usize) -> Result<f64> {
    let (batch, seqlen) = (val.batch_size(), val.seq_len());
    let n = batches.max(1).min((val.windows() / batch).max(1));
    let (mut sum, mut count) = (0.0, 0usize);
    for s in 0..n {
        let (x, y) = val.batch(s as u64);
        let (l, c) = model.loss(&x, &y, batch, seqlen)?;
        sum += l * c as f64;
        count += c;
    }
    Ok(sum / count.max(1) as f64)
}

/// Training throughput of `model` at a batch shape: times `steps` forward+backward passes (no
/// optimizer, whose cost is per parameter, not per token) on random tokens after one warm-up;
/// returns tokens per second.
pub fn bench_train_step<B: Backend>(model: &Mamba<B>, batch: usize, seq_len: usize, steps: usize) -> Result<f64> {
    let v = model.cfg.vocab_size as u64;
    let ids: Vec<u32> = (0..(batch * seq_len) as u64).map(|i| (i.wrapping_mul(2_654_435_761) % v) as u32).collect();
    let targets: Vec<u32> = ids.iter().map(|&t| (t + 1) % v as u32).collect();
    let mut grads = model.zero_grads()?;
    model.loss_and_grads(&ids, &targets, batch, seq_len, 1.0, &mut grads)?;
    model.backend.synchronize()?;
    let t = Instant::now();
    for _ in 0..steps.max(1) {
        model.loss_and_grads(&ids, &targets, batch, seq_len, 1.0, &mut grads)?;
    }
    model.backend.synchronize()?;
    Ok((batch * seq_len * steps.max(1)) as f64 / t.elapsed().as_secs_f64())
}

/// Model FLOPs per trained token: 6 × the matmul parameters (forward 2, backward 4) plus the
/// lm_head, the standard "6N" estimate without the scan (which is O(d_inner·d_state) per token).
pub fn train_flop_per_token(cfg: &crate::config::MambaConfig) -> f64 {
    let (d, di, n, r) = (cfg.d_model as f64, cfg.d_inner as f64, cfg.d_state as f64, cfg.dt_rank as f64);
    let per_layer = 2.0 * di * d + (r + 2.0 * n) * di + di * r + d * di;
    6.0 * (cfg.n_layer as f64 * per_layer + cfg.vocab_size as f64 * d)
}

/// The model's parameters on the host, with their specs (what [`save_hf`] writes).
fn host_params<B: Backend>(model: &Mamba<B>) -> Result<Vec<(crate::model::mamba1::ParamSpec, Vec<f32>)>> {
    model.params().into_iter().map(|(spec, buf)| Ok((spec, model.backend.to_vec(buf)?))).collect()
}

/// Writes the HF-layout model and the training state (atomically, each file); `best` (the step
/// and validation loss of the model in `best/`) goes into the state's metadata.
pub fn save_checkpoint<B: Backend>(
    dir: &Path,
    model: &Mamba<B>,
    adam: &AdamState<B>,
    step: u64,
    dtype: SaveDType,
    best: Option<(u64, f64)>,
) -> Result<()> {
    let be = &model.backend;
    let params = host_params(model)?;
    let mut state = BTreeMap::new();
    for (i, (spec, values)) in params.iter().enumerate() {
        state.insert(format!("param.{}", spec.name), OutTensor::from_f32(values, &spec.shape, SaveDType::F32));
        state.insert(
            format!("adam_m.{}", spec.name),
            OutTensor::from_f32(&be.to_vec(&adam.m[i])?, &spec.shape, SaveDType::F32),
        );
        state.insert(
            format!("adam_v.{}", spec.name),
            OutTensor::from_f32(&be.to_vec(&adam.v[i])?, &spec.shape, SaveDType::F32),
        );
    }
    let mut meta =
        HashMap::from([("step".to_string(), step.to_string()), ("format".to_string(), "s6-train-v1".to_string())]);
    if let Some((s, v)) = best {
        meta.insert("best_step".to_string(), s.to_string());
        // Rust's shortest round-trip form: read back to the same f64.
        meta.insert("best_val_loss".to_string(), v.to_string());
    }
    // The state file first: a crash after it but before the export leaves a resumable run.
    write_safetensors(&dir.join(STATE_FILE), &state, Some(meta))?;
    save_hf(dir, &model.cfg, &InitConfig::default(), &params, dtype)
}

/// The metadata of the training-state file at `path` (its header only: the file is memory-mapped,
/// not read, since it holds every parameter and moment).
fn state_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a file we replace only by rename (write_atomic).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The best evaluation recorded in `dir`'s training state (`None` if none was kept).
fn load_best(dir: &Path) -> Result<Option<(u64, f64)>> {
    let path = dir.join(STATE_FILE);
    let m = state_metadata(&path)?;
    match (m.get("best_step"), m.get("best_val_loss")) {
        (Some(s), Some(v)) => {
            let bad = |what: &str, v: &str| Error::format(&path, format!("metadata '{what}' = '{v}' is not a number"));
            Ok(Some((s.parse().map_err(|_| bad("best_step", s))?, v.parse().map_err(|_| bad("best_val_loss", v))?)))
        }
        _ => Ok(None),
    }
}

/// Restores parameters and moments from `dir`; returns the step the checkpoint was taken at.
pub fn load_state<B: Backend>(dir: &Path, model: &mut Mamba<B>, adam: &mut AdamState<B>) -> Result<u64> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Err(Error::input(format!("--resume: no {STATE_FILE} in {}; nothing to resume", dir.display())));
    }
    let file = TensorFile::open(&path)?;
    let step: u64 = state_metadata(&path)?
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(&path, "no 'step' in the metadata"))?;
    let be = model.backend.clone();
    let specs = param_specs(&model.cfg);
    for (i, (spec, buf)) in specs.iter().zip(model.params_mut()).enumerate() {
        for (prefix, dst) in [("param", None), ("adam_m", Some(0)), ("adam_v", Some(1))] {
            let name = format!("{prefix}.{}", spec.name);
            let (v, shape) = file.f32(&name)?;
            if shape != spec.shape {
                return Err(Error::format(
                    &path,
                    format!("'{name}' has shape {shape:?}, the model expects {:?}", spec.shape),
                ));
            }
            let b = be.from_vec(v)?;
            match dst {
                None => *buf = be.clone_buf(&b)?,
                Some(0) => adam.m[i] = b,
                _ => adam.v[i] = b,
            }
        }
    }
    model.refresh_derived()?;
    Ok(step)
}
