//! `s6 train`: train from scratch or fine-tune, with resumable checkpoints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use s6::backend::{Backend, Compute};
use s6::config::{InitConfig, MambaConfig};
use s6::formats::tensors::SaveDType;
use s6::formats::tokenizer::Tokenizer;
use s6::model::init::init_params;
use s6::model::Mamba;
use s6::train::optim::{OptimConfig, Schedule};
use s6::train::{data, train_data_parallel, Event, Replicas, TrainOptions};

use s6::backend::collective::Collective;

use super::{first_gpus, on_device, on_devices, parse_betas, parse_compute, parse_device, Device, OnDevice, OnDevices};

#[derive(clap::Args)]
pub struct Args {
    /// Training data: a text file (tokenized with the model's tokenizer, or as bytes) or a 1-D .npy array of token ids.
    #[arg(long)]
    data: PathBuf,
    /// Output directory for checkpoints, metrics and the loss plot.
    #[arg(long)]
    out: PathBuf,
    /// Start from a model directory (fine-tuning).
    #[arg(long, conflicts_with_all = ["preset", "config"])]
    init: Option<PathBuf>,
    /// Start from scratch with a preset architecture (mamba-130m, ...).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// Start from scratch with the architecture of a config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// From scratch, size flags: model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// From scratch: number of layers.
    #[arg(long, default_value_t = 4)]
    n_layer: usize,
    /// From scratch: vocabulary size (256 = bytes).
    #[arg(long, default_value_t = 256)]
    vocab_size: usize,
    /// From scratch: SSM state size N.
    #[arg(long, default_value_t = 16)]
    d_state: usize,
    /// From scratch: expansion factor (d_inner = expand × d_model).
    #[arg(long, default_value_t = 2)]
    expand: usize,
    /// tokenizer.json for text data (else the model's own, else bytes for vocab 256), or "bytes".
    #[arg(long)]
    tokenizer: Option<String>,
    /// Total optimizer steps (a resumed run continues up to this).
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f32,
    #[arg(long, default_value_t = 100)]
    warmup_steps: u64,
    /// cosine or constant.
    #[arg(long, default_value = "cosine")]
    lr_schedule: String,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,
    /// AdamW betas as B1,B2.
    #[arg(long, default_value = "0.9,0.95")]
    betas: String,
    #[arg(long, default_value_t = 1e-8)]
    eps: f32,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take windows in order instead of shuffled.
    #[arg(long)]
    no_shuffle: bool,
    /// Evaluate and checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 20)]
    eval_batches: usize,
    /// Fraction of the data (its end) held out for validation.
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// JSONL metrics file (one object per step; eval lines carry val_loss).
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Stop this invocation after this step (checkpointed), keeping the schedule of --steps; continue later with --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// dtype of the exported model.safetensors: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
    /// Also export the model of the lowest validation loss so far to OUT/best at each evaluation
    /// that improves on it (early stopping: the run goes on, the best model is kept). Needs
    /// --val-fraction.
    #[arg(long)]
    keep_best: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// How matrix products are computed: f32, or on CUDA tf32 (products on TF32 tensor cores) or
    /// bf16 (products with bf16 inputs, fp32 accumulation); weights and the residual stream stay
    /// fp32 in memory, a prompt's other activations are held in bf16 on CUDA (`S6_BF16_STORAGE=0`:
    /// fp32). fp16 is not implemented.
    #[arg(long, default_value = "f32", value_parser = parse_compute)]
    dtype: Compute,
    /// What a training step keeps for its backward pass: `light` keeps the residual stream,
    /// in_proj's output, x_proj's output and the scan output per layer and recomputes the rest; `full` also
    /// recomputes the scan output (least memory, a few percent slower); `none` also keeps the norm's
    /// output, the conv's and dt_proj's (most memory, fastest). Same results.
    #[arg(long, default_value = "light")]
    recompute: s6::model::Recompute,
    /// Data-parallel training over these devices, comma-separated (e.g. cuda:0,cuda:1): one model
    /// replica per device, each step's batch split evenly over them, gradients summed through
    /// NCCL (through the host for cpu devices). Replaces --device.
    #[arg(long, value_delimiter = ',', value_parser = parse_device, conflicts_with_all = ["device", "gpus"])]
    devices: Option<Vec<Device>>,
    /// Data-parallel training on the first N GPUs (cuda:0 .. cuda:N-1); see --devices.
    #[arg(long, conflicts_with = "device")]
    gpus: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!("--val-fraction must be in [0, 1), got {}", a.val_fraction);
    }
    let (b1, b2) = parse_betas(&a.betas)?;
    for (flag, v) in [
        ("--lr", a.lr),
        ("--min-lr", a.min_lr),
        ("--eps", a.eps),
        ("--weight-decay", a.weight_decay),
        ("--grad-clip", a.grad_clip),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("{flag} must be a finite number >= 0, got {v}");
        }
    }
    let schedule: Schedule = a.lr_schedule.parse()?;
    let save_dtype: SaveDType = a.save_dtype.parse()?;
    let devices = a.devices.clone().or(a.gpus.map(first_gpus));
    let job = Job { a, b1, b2, schedule, save_dtype };
    match devices {
        Some(list) => {
            let dtype = job.a.dtype;
            on_devices(&list, dtype, job)
        }
        None => {
            let (device, dtype) = (job.a.device.clone(), job.a.dtype);
            on_device(&device, dtype, job)
        }
    }
}

/// The run itself, on the backend `--device` names.
struct Job {
    a: Args,
    b1: f32,
    b2: f32,
    schedule: Schedule,
    save_dtype: SaveDType,
}

impl OnDevice for Job {
    fn run<B: Backend>(self, be: B) -> Result<()> {
        train_on(vec![be], None, self)
    }
}

impl OnDevices for Job {
    fn run<B: Backend>(self, backends: Vec<B>, collective: Box<dyn Collective<B>>) -> Result<()> {
        train_on(backends, Some(collective), self)
    }
}

/// Trains on `backends[0]`, or data-parallel over all of `backends` when a collective is given.
fn train_on<B: Backend>(backends: Vec<B>, collective: Option<Box<dyn Collective<B>>>, job: Job) -> Result<()> {
    let be = backends[0].clone();
    let Job { a, b1, b2, schedule, save_dtype } = job;
    // The model: resumed, fine-tuned, or fresh.
    let resume_dir = a.resume.then(|| a.out.clone());
    let (model, source_dir) = if let Some(dir) = resume_dir.as_ref().or(a.init.as_ref()) {
        if !dir.join("config.json").is_file() {
            bail!("{}: no config.json here to {}", dir.display(), if a.resume { "resume from" } else { "fine-tune" });
        }
        (Mamba::load(be.clone(), dir)?, Some(dir.clone()))
    } else {
        let cfg = match (&a.preset, &a.config) {
            (Some(p), _) => MambaConfig::preset(p)?,
            (None, Some(c)) => MambaConfig::from_file(c)?,
            (None, None) => {
                let mut c = MambaConfig::new(a.d_model, a.n_layer, a.vocab_size);
                c.d_state = a.d_state;
                c.d_inner = a.expand * a.d_model;
                c.validate(std::path::Path::new("(size flags)"))?;
                c
            }
        };
        let params = init_params(&cfg, &InitConfig::default(), a.seed);
        let mut it = params.into_iter();
        let m = Mamba::from_params(be.clone(), cfg, |_| Ok(it.next().map(|(_, v)| v).unwrap_or_default()))?;
        (m, None)
    };
    let vocab = model.cfg.vocab_size;
    // A .npy holds token ids already; text needs the model's tokenizer (or bytes).
    let tokens = if a.data.extension().is_some_and(|e| e == "npy") {
        data::read_npy_tokens(&a.data)?
    } else {
        let tokenizer = match (&a.tokenizer, &source_dir) {
            (Some(t), _) => Tokenizer::for_model(&a.out, Some(t), vocab)?,
            (None, Some(dir)) => Tokenizer::for_model(dir, None, vocab)?,
            (None, None) if vocab == 256 => Tokenizer::bytes(),
            (None, None) => {
                bail!(
                    "text data with a {vocab}-token vocabulary needs --tokenizer PATH (or --vocab-size 256 for bytes)"
                )
            }
        };
        data::load_tokens(&a.data, &tokenizer)?
    };
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("{}: token id {bad} is outside the model's vocabulary ({vocab})", a.data.display());
    }
    let n_val = (tokens.len() as f64 * a.val_fraction) as usize;
    let (train_tokens, val_tokens) = {
        let mut t = tokens;
        let v = t.split_off(t.len() - n_val);
        (t, v)
    };
    let opts = TrainOptions {
        out: a.out.clone(),
        steps: a.steps,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        grad_accum: a.grad_accum,
        optim: OptimConfig {
            lr: a.lr,
            min_lr: a.min_lr,
            warmup_steps: a.warmup_steps,
            schedule,
            weight_decay: a.weight_decay,
            beta1: b1,
            beta2: b2,
            eps: a.eps,
            grad_clip: a.grad_clip,
        },
        seed: a.seed,
        shuffle: !a.no_shuffle,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        metrics: a.metrics.clone(),
        save_dtype,
        stop_at: a.stop_at,
        recompute: a.recompute,
        keep_best: a.keep_best,
    };
    eprintln!(
        "training {:.2}M parameters on {} ({} tokens, {} held out) of {}; {} steps × {} × {} tokens",
        model.cfg.num_params() as f64 / 1e6,
        be.name(),
        train_tokens.len(),
        val_tokens.len(),
        a.data.display(),
        a.steps,
        a.batch_size * a.grad_accum,
        a.seq_len
    );
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let replicas = match collective {
        Some(c) => {
            eprintln!("data parallel over {} devices, gradients summed by {}", backends.len(), c.name());
            let r = Replicas::new(&model, backends, c)?;
            drop(model);
            r
        }
        None => Replicas::single(model),
    };
    let (_, summary) = train_data_parallel(replicas, train_tokens, val_tokens, &opts, a.resume, |ev| match ev {
        Event::Step { step, loss, lr, grad_norm, tokens_per_s, .. } => {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} |g| {grad_norm:.2} {tokens_per_s:.0} tok/s"));
        }
        Event::Eval { step, val_loss } => super::say(&bar, format!("step {step}: val_loss {val_loss:.4}")),
        Event::Checkpoint { .. } => {}
        Event::Best { step, val_loss, dir } => {
            super::say(&bar, format!("step {step}: best val_loss so far ({val_loss:.4}), model in {}", dir.display()))
        }
    })?;
    bar.finish();
    // Keep the tokenizer beside the checkpoint so `s6 generate --model OUT` finds it.
    if let Some(t) = a.tokenizer.as_deref().filter(|t| *t != "bytes") {
        let src = PathBuf::from(t);
        let src = if src.is_dir() { src.join("tokenizer.json") } else { src };
        std::fs::copy(&src, a.out.join("tokenizer.json")).with_context(|| format!("cannot copy {}", src.display()))?;
    } else if let Some(dir) = &source_dir {
        if dir.join("tokenizer.json").is_file() && dir != &a.out {
            std::fs::copy(dir.join("tokenizer.json"), a.out.join("tokenizer.json"))?;
        }
    }
    eprintln!(
        "done: steps {}..{}, final loss {:.4}{}, {:.0} tok/s; checkpoint in {}",
        summary.first_step,
        summary.last_step,
        summary.final_loss,
        summary
            .final_val_loss
            .map(|v| format!(", val_loss {v:.4} ({:.3} bits/token)", v / std::f64::consts::LN_2))
            .unwrap_or_default(),
        summary.tokens_per_s,
        a.out.display()
    );
    if let Some((step, v)) = summary.best {
        eprintln!("best: val_loss {v:.4} at step {step}, model in {}", a.out.join(s6::train::BEST_DIR).display());
    }
    Ok(())
}
