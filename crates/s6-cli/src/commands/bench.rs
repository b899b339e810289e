//! `s6 bench decode|prefill`: throughput beside the machine's measured limits.

use anyhow::{bail, Result};
use s6::backend::cpu::Cpu;
use s6::bench::{bench_decode, bench_prefill, measure_limits, random_model};
use s6::model::Mamba;

use super::{load_model, model_dir, parse_device, Device};

#[derive(clap::Args)]
pub struct Args {
    /// decode, prefill or train.
    what: String,
    /// Model directory or HF repo id (default: a random model of --preset).
    #[arg(long)]
    model: Option<String>,
    /// Preset for a random model when no --model is given.
    #[arg(long, default_value = "mamba-130m")]
    preset: String,
    /// A config.json for the random model instead of --preset.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Decode: tokens generated per sequence.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Prefill: prompt lengths, comma-separated.
    #[arg(long, default_value = "512,2048", value_delimiter = ',')]
    seqlen: Vec<usize>,
    /// Runs per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    let model: Mamba<Cpu> = match &a.model {
        Some(m) => load_model(&model_dir(m)?, &a.device)?,
        None => {
            if let Device::Cuda(i) = a.device {
                bail!("device cuda:{i} is not available: this build of s6 has no CUDA backend yet; use --device cpu");
            }
            match &a.config {
                Some(c) => {
                    let cfg = s6::config::MambaConfig::from_file(c)?;
                    let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 0);
                    let mut it = params.into_iter();
                    Mamba::from_params(Cpu, cfg, |_| Ok(it.next().map(|p| p.1).unwrap_or_default()))?
                }
                None => random_model(Cpu, &a.preset, 0)?,
            }
        }
    };
    let c = &model.cfg;
    eprintln!(
        "model: {} layers × d_model {}, {:.1}M parameters, backend {}",
        c.n_layer,
        c.d_model,
        c.num_params() as f64 / 1e6,
        s6::backend::Backend::name(&model.backend)
    );
    let limits = measure_limits();
    println!("limits: read bandwidth {:.1} GB/s, f32 GEMM {:.1} GFLOP/s", limits.read_gb_s, limits.gemm_gflop_s);
    match a.what.as_str() {
        "decode" => {
            for &b in &a.batch {
                let r = bench_decode(&model, b, a.tokens, a.repeats, &limits)?;
                println!(
                    "decode batch {:>3}: {:>8.1} tok/s   limit {:>8.1} tok/s ({:.0}%; {:.0} MB of weights per step)",
                    r.batch,
                    r.tok_per_s,
                    r.limit_tok_per_s,
                    100.0 * r.tok_per_s / r.limit_tok_per_s,
                    r.weight_bytes_per_step as f64 / 1e6
                );
            }
        }
        "prefill" => {
            for &b in &a.batch {
                for &l in &a.seqlen {
                    let r = bench_prefill(&model, b, l, a.repeats, &limits)?;
                    println!(
                        "prefill batch {:>3} × {:>5}: {:>8.1} tok/s   limit {:>8.1} tok/s ({:.0}%; {:.1} MFLOP/token)",
                        r.batch,
                        r.seqlen,
                        r.tok_per_s,
                        r.limit_tok_per_s,
                        100.0 * r.tok_per_s / r.limit_tok_per_s,
                        r.flop_per_token / 1e6
                    );
                }
            }
        }
        "train" => {
            for &b in &a.batch {
                for &l in &a.seqlen {
                    let tps = s6::train::bench_train_step(&model, b, l, a.repeats)?;
                    let flop = s6::train::train_flop_per_token(&model.cfg);
                    let limit = limits.gemm_gflop_s * 1e9 / flop;
                    println!(
                        "train batch {b:>3} × {l:>5}: {tps:>8.1} tok/s   GEMM limit {limit:>8.1} tok/s ({:.0}%; {:.1} MFLOP/token, {:.1} GFLOP/s)",
                        100.0 * tps / limit,
                        flop / 1e6,
                        tps * flop / 1e9
                    );
                }
            }
        }
        other => bail!("unknown benchmark '{other}'; expected decode, prefill or train"),
    }
    Ok(())
}
