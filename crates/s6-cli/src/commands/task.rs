//! `s6 task` and `s6 demo`: the paper's synthetic tasks, training and length extrapolation.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use s6::backend::{Backend, Compute};
use s6::tasks::{self, plot, Task, TaskEvent, TaskOptions, TaskReport, Variant};

use super::{on_device, parse_betas, parse_compute, parse_device, say, Device, OnDevice};

#[derive(clap::Args)]
pub struct Args {
    /// copying | selective-copying | induction-heads | mqar
    task: String,
    /// Model variants, comma-separated: s6, lti, no-gate, delta-only, b-only, c-only, attention.
    /// Each is trained on the same data stream and evaluated on the same samples.
    #[arg(long, default_value = "s6")]
    variant: String,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// SSM state size N (Mamba variants).
    #[arg(long, default_value_t = 16)]
    d_state: usize,
    /// Attention heads (attention variant).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Training sequence length (default: 256, or 4 × the copy count for the copying tasks).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Training steps (0: evaluate a --load model only).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (after the linear warmup; see --lr-schedule).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// After the warmup: `cosine` decay to a tenth of --lr at the last step, or `constant` (the
    /// paper's synthetic-task recipe trains at a constant rate).
    #[arg(long, default_value = "cosine")]
    lr_schedule: String,
    #[arg(long, default_value_t = 100)]
    warmup_steps: u64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// AdamW betas as B1,B2 (PyTorch's Adam, which the paper used, has 0.9,0.999).
    #[arg(long, default_value = "0.9,0.98")]
    betas: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Vocabulary size (default 16; MQAR 64).
    #[arg(long)]
    vocab: Option<usize>,
    /// Tokens to copy (copying tasks, default 16) or key-value pairs (MQAR, default 8).
    #[arg(long)]
    items: Option<usize>,
    /// Lengths to test after training, comma-separated; `2^k` allowed (e.g. 2^6,2^8,2^20).
    /// Default: the training length.
    #[arg(long)]
    eval_lengths: Option<String>,
    /// Samples per tested length.
    #[arg(long, default_value_t = 256)]
    eval_samples: usize,
    /// At most this many tokens per tested length (fewer samples at long lengths, at least one).
    #[arg(long, default_value_t = 1 << 22)]
    eval_tokens: usize,
    /// Skip a length whose predicted evaluation time is over this many seconds.
    #[arg(long, default_value_t = 600.0)]
    eval_budget: f64,
    /// Print accuracy at the training length every this many steps (0 = off).
    #[arg(long, default_value_t = 250)]
    eval_every: u64,
    /// Save each trained model (config.json + model.safetensors) into this directory, at every
    /// --eval-every step and at the end; with several variants, into DIR/VARIANT.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Start from a model saved by --save (in DIR, or DIR/VARIANT with several variants)
    /// instead of a fresh one; `--steps 0` evaluates it only. The optimizer starts afresh.
    #[arg(long)]
    load: Option<PathBuf>,
    /// Write the results as JSON (one object; an array of objects for several variants).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to draw accuracy against length (SVG). Default: s6-TASK.svg in the current directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// How matrix products are computed: f32, or on CUDA tf32 (products on TF32 tensor cores) or
    /// bf16 (products with bf16 inputs, fp32 accumulation); weights and the residual stream stay
    /// fp32 in memory, a prompt's other activations are held in bf16 on CUDA (`S6_BF16_STORAGE=0`:
    /// fp32). fp16 is not implemented.
    #[arg(long, default_value = "f32", value_parser = parse_compute)]
    dtype: Compute,
}

/// Parses `64,128,2^10` into lengths.
fn parse_lengths(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let v = match p.strip_prefix("2^") {
                Some(e) => e.parse::<u32>().ok().filter(|&e| e < 48).map(|e| 1usize << e),
                None => p.parse::<usize>().ok(),
            };
            v.filter(|&v| v > 0)
                .with_context(|| format!("--eval-lengths: '{p}' is not a positive length (use e.g. 4096 or 2^12)"))
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let task: Task = a.task.parse()?;
    let variants: Vec<Variant> = a.variant.split(',').map(|v| v.trim().parse::<Variant>()).collect::<Result<_, _>>()?;
    if variants.is_empty() {
        bail!("--variant: no variant given");
    }
    let mut opts = TaskOptions::new(task, 256);
    if let Some(v) = a.vocab {
        opts.spec.vocab = v;
    }
    if let Some(k) = a.items {
        opts.spec.items = k;
    }
    opts.seq_len = a.seq_len.unwrap_or(match task {
        Task::Copying | Task::SelectiveCopying => 4 * opts.spec.items,
        _ => 256,
    });
    opts.size = tasks::ModelSize { layers: a.layers, d_model: a.d_model, d_state: a.d_state, heads: a.heads };
    opts.steps = a.steps;
    opts.batch_size = a.batch_size;
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be a positive number, found {}", a.lr);
    }
    opts.optim.lr = a.lr;
    opts.optim.min_lr = a.lr / 10.0;
    opts.optim.schedule = a.lr_schedule.parse()?;
    (opts.optim.beta1, opts.optim.beta2) = parse_betas(&a.betas)?;
    opts.optim.warmup_steps = a.warmup_steps.min(a.steps / 2);
    opts.optim.weight_decay = a.weight_decay;
    opts.seed = a.seed;
    opts.eval_every = a.eval_every;
    opts.eval_lengths = match &a.eval_lengths {
        Some(s) => parse_lengths(s)?,
        None => vec![opts.seq_len],
    };
    if opts.eval_lengths.is_empty() {
        bail!("--eval-lengths: no length given");
    }
    opts.eval_samples = a.eval_samples.max(1);
    opts.eval_tokens = a.eval_tokens.max(1);
    opts.eval_time_budget_s = a.eval_budget;
    opts.load_from = a.load.clone();
    opts.save_to = a.save.clone();
    let plot_path = a.plot.clone().unwrap_or_else(|| PathBuf::from(format!("s6-{}.svg", task.name())));
    run_variants(&opts, &variants, &a.device, a.dtype, a.json.as_deref(), &plot_path).map(|_| ())
}

/// Trains and evaluates each variant, printing progress and the results table, then writes the
/// plot and the JSON.
pub fn run_variants(
    opts: &TaskOptions,
    variants: &[Variant],
    device: &Device,
    dtype: Compute,
    json: Option<&std::path::Path>,
    plot_path: &std::path::Path,
) -> Result<Vec<TaskReport>> {
    let mut reports: Vec<TaskReport> = Vec::new();
    on_device(device, dtype, Variants { opts, variants, reports: &mut reports })?;
    print_table(&reports);
    plot::accuracy_vs_length(plot_path, &reports)?;
    eprintln!("plot: {}", plot_path.display());
    if let Some(path) = json {
        s6::formats::tensors::write_atomic(path, tasks::reports_json(&reports).as_bytes())?;
        eprintln!("results: {}", path.display());
    }
    Ok(reports)
}

/// Trains and evaluates each variant in turn on one backend.
struct Variants<'a> {
    opts: &'a TaskOptions,
    variants: &'a [Variant],
    reports: &'a mut Vec<TaskReport>,
}

impl OnDevice for Variants<'_> {
    fn run<B: Backend>(self, be: B) -> Result<()> {
        let Variants { opts, variants, reports } = self;
        eprintln!("device: {}", be.name());
        run_variants_on(&be, opts, variants, reports)
    }
}

fn run_variants_on<B: Backend>(
    be: &B,
    opts: &TaskOptions,
    variants: &[Variant],
    reports: &mut Vec<TaskReport>,
) -> Result<()> {
    let task = opts.spec.task;
    if opts.steps == 0 {
        eprintln!("{}: evaluating the loaded model (no training)", task.name());
    } else {
        eprintln!(
            "{}: train at length {} for {} steps of {} samples (vocab {}, {} items), {} layers × d_model {}",
            task.name(),
            opts.seq_len,
            opts.steps,
            opts.batch_size,
            opts.spec.vocab,
            opts.spec.items,
            opts.size.layers,
            opts.size.d_model
        );
    }
    for &variant in variants {
        // Several variants: each saves and loads in its own subdirectory.
        let per_variant = |dir: &Option<PathBuf>| match dir {
            Some(d) if variants.len() > 1 => Some(d.join(variant.name())),
            d => d.clone(),
        };
        let opts = &TaskOptions {
            load_from: per_variant(&opts.load_from),
            save_to: per_variant(&opts.save_to),
            ..opts.clone()
        };
        let bar = ProgressBar::new(opts.steps);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(variant.name());
        let report = tasks::run(be.clone(), variant, opts, &mut |ev| match ev {
            TaskEvent::Start { params, .. } => say(&bar, format!("{}: {params} parameters", variant.name())),
            TaskEvent::Step { step, loss, tokens_per_s, .. } => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4} {tokens_per_s:.0} tok/s"));
            }
            TaskEvent::Eval { step, accuracy } => say(
                &bar,
                format!("{} step {step}: accuracy {:.1}% at length {}", variant.name(), 100.0 * accuracy, opts.seq_len),
            ),
            TaskEvent::Length(r) => {
                bar.finish_and_clear();
                match (&r.accuracy, &r.skipped) {
                    (Some(acc), _) => eprintln!(
                        "{} length {}: {:.2}% of {} answers ({} samples, {:.1} s)",
                        variant.name(),
                        r.seq_len,
                        100.0 * acc,
                        r.answers,
                        r.samples,
                        r.seconds
                    ),
                    (None, Some(why)) => eprintln!("{} length {}: skipped ({why})", variant.name(), r.seq_len),
                    (None, None) => {}
                }
            }
        })?;
        bar.finish_and_clear();
        if opts.steps > 0 {
            eprintln!(
                "{}: trained in {:.1} s, final loss {:.4}",
                variant.name(),
                report.train_seconds,
                report.final_loss
            );
        }
        if let Some(dir) = &opts.save_to {
            eprintln!("{}: model saved in {}", variant.name(), dir.display());
        }
        reports.push(report);
    }
    Ok(())
}

/// Accuracy per length (rows) and variant (columns).
fn print_table(reports: &[TaskReport]) {
    let mut lengths: Vec<usize> = reports.iter().flat_map(|r| r.results.iter().map(|x| x.seq_len)).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut head = format!("{:>10}", "length");
    for r in reports {
        head += &format!(" {:>11}", r.variant.name());
    }
    println!("{head}");
    for l in lengths {
        let mut line = format!("{l:>10}");
        for r in reports {
            let cell = match r.results.iter().find(|x| x.seq_len == l) {
                Some(x) => match x.accuracy {
                    Some(a) => format!("{:.1}%", 100.0 * a),
                    None => "skipped".to_string(),
                },
                None => "-".to_string(),
            };
            line += &format!(" {cell:>11}");
        }
        println!("{line}");
    }
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Training steps per model (the default takes about 3 minutes on 2 CPU cores in total).
    #[arg(long, default_value_t = 1200)]
    steps: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to draw the accuracy plot (SVG).
    #[arg(long, default_value = "s6-demo.svg")]
    plot: PathBuf,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `s6 demo`: selective copying, Mamba (S6) against its time-invariant ablation, small enough
/// for a laptop: S6 selects the data tokens by content, the LTI model cannot.
pub fn demo(a: DemoArgs) -> Result<()> {
    // Sized to finish in about three minutes on 2 cores: 4 tokens among 28 noise positions.
    let mut opts = TaskOptions::new(Task::SelectiveCopying, 32);
    opts.spec.items = 4;
    opts.steps = a.steps;
    opts.seed = a.seed;
    opts.eval_every = 200;
    opts.optim.lr = 3e-3;
    opts.optim.min_lr = 3e-4;
    opts.optim.warmup_steps = (a.steps / 10).min(100);
    opts.eval_lengths = vec![32];
    opts.eval_samples = 512;
    eprintln!(
        "Selective copying: remember {} data tokens scattered among noise in a sequence of {}, then \
         repeat them after the separator. Mamba (s6) against the time-invariant ablation (lti).",
        opts.spec.items, opts.seq_len
    );
    let reports =
        run_variants(&opts, &[Variant::S6, Variant::Lti], &Device::Cpu, Compute::F32, a.json.as_deref(), &a.plot)?;
    let acc = |i: usize| reports[i].results.first().and_then(|r| r.accuracy).unwrap_or(0.0) * 100.0;
    println!(
        "\nMamba (input-dependent Δ, B, C): {:.1}%   time-invariant ablation: {:.1}%  (paper, L = 4096: 99.8% vs 56.4%)",
        acc(0),
        acc(1)
    );
    Ok(())
}
