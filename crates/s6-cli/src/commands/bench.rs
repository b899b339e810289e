//! `s6 bench decode|prefill|train|scan|scaling`: throughput beside the machine's measured limits.

use anyhow::{bail, Result};
use s6::backend::{Backend, Compute};
use s6::bench::{
    bench_decode, bench_decode_device, bench_prefill, bench_scaling, bench_scan, bench_scan_backward,
    measure_device_limits, measure_limits, random_model, DecodeReport, ScanReport,
};
use s6::model::mamba1::DecodeMode;
use s6::model::Mamba;

use super::{model_dir, on_device, parse_compute, parse_device, Device, OnDevice};

#[derive(clap::Args)]
pub struct Args {
    /// decode, prefill, train, scan (the selective scan alone) or scaling (prefill of each
    /// --seqlen as context, then --tokens decode steps: time per step and memory against context).
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
    /// Decode and scaling: tokens generated per sequence.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Prefill, train and scaling: prompt (context) lengths, comma-separated.
    #[arg(long, default_value = "512,2048", value_delimiter = ',')]
    seqlen: Vec<usize>,
    /// Time every backend op on its own (synchronizing around each; no graphs) and print where
    /// the time went, products per shape, over a second run of the benchmark (the first warms
    /// up). Slows the run down; for finding what to optimize.
    #[arg(long)]
    profile: bool,
    /// Scaling: tokens per prefill chunk (bounds the activations whatever the context).
    #[arg(long, default_value_t = 8192)]
    chunk: usize,
    /// Runs per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Scan: batch size.
    #[arg(long, default_value_t = 4)]
    scan_batch: usize,
    /// Scan: channels (d_inner).
    #[arg(long, default_value_t = 2048)]
    scan_d_inner: usize,
    /// Scan: state size N.
    #[arg(long, default_value_t = 16)]
    scan_d_state: usize,
    /// Scan: sequence lengths, comma-separated.
    #[arg(long, default_value = "512,2048,8192,32768", value_delimiter = ',')]
    scan_seqlen: Vec<usize>,
    /// Scan: also time the backward (training) of each scan.
    #[arg(long)]
    backward: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// How matrix products are computed: f32, or on CUDA tf32 (products on TF32 tensor cores) or
    /// bf16 (products with bf16 inputs, fp32 accumulation); weights and the residual stream stay
    /// fp32 in memory, a prompt's other activations are held in bf16 on CUDA (`S6_BF16_STORAGE=0`:
    /// fp32). fp16 is not implemented. For `scan`, bf16 times the CUDA scan with bf16 activations (u, Δ, z, B, C in
    /// and y out; fp32 state and arithmetic).
    #[arg(long, default_value = "f32", value_parser = parse_compute)]
    dtype: Compute,
    /// What a training step keeps for its backward pass: `light` keeps the residual stream,
    /// in_proj's output, x_proj's output and the scan output per layer and recomputes the rest; `full` also
    /// recomputes the scan output (least memory, a few percent slower); `none` also keeps the norm's
    /// output, the conv's and dt_proj's (most memory, fastest). Same results.
    #[arg(long, default_value = "light")]
    recompute: s6::model::Recompute,
}

pub fn run(a: Args) -> Result<()> {
    if a.what == "scan" && a.dtype == Compute::Bf16 {
        return scan_bf16(&a);
    }
    let (device, dtype) = (a.device.clone(), a.dtype);
    on_device(&device, dtype, a)
}

impl OnDevice for Args {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        if !self.profile {
            return bench_on(backend, &self);
        }
        let timed = s6::backend::timed::Timed::new(backend);
        // A first pass warms up (the memory pool's first allocations, cuBLAS's first calls);
        // only the second is reported, so that the table shows steady-state costs.
        println!("profile: warm-up pass");
        bench_on(timed.clone(), &self)?;
        timed.reset();
        println!("profile: timed pass");
        bench_on(timed.clone(), &self)?;
        print_profile(&timed.report());
        Ok(())
    }
}

/// The `--profile` table: every op (products per shape), slowest in total first.
fn print_profile(rows: &[(String, s6::backend::timed::OpTime)]) {
    let total: f64 = rows.iter().map(|(_, t)| t.seconds).sum();
    println!("\nprofile (each op timed alone, waiting for the device before and after; total {total:.3} s):");
    println!("{:<44} {:>8} {:>10} {:>7} {:>12}", "op", "calls", "seconds", "share", "µs per call");
    for (name, t) in rows {
        println!(
            "{name:<44} {:>8} {:>10.4} {:>6.1}% {:>12.1}",
            t.calls,
            t.seconds,
            100.0 * t.seconds / total.max(1e-12),
            1e6 * t.seconds / t.calls.max(1) as f64
        );
    }
}

/// One line of `bench scan`: `what` (scan, scan backward, scan bf16), the shape, the time and the
/// achieved bandwidth over the fewest bytes (`moved`: how the bytes are counted).
fn print_scan(what: &str, r: &ScanReport, copy_gb_s: f64, moved: &str) {
    let (b, d, n, l) = (r.batch, r.d_inner, r.d_state, r.seqlen);
    println!(
        "{what} B={b} D={d} N={n} L={l:>6}: {:>9.4} ms  {:>7.1} GB/s ({:.0}% of {copy_gb_s:.0}; {:.1} MB {moved})",
        r.ms,
        r.gb_s(),
        100.0 * r.gb_s() / copy_gb_s,
        r.bytes as f64 / 1e6
    );
}

/// `bench scan --dtype bf16`: the CUDA scan with bf16 activations
/// (`s6::bench::bench_scan_bf16`, with the `cuda` feature), beside the device's copy bandwidth.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn scan_bf16(a: &Args) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(i) = a.device {
        let be = s6::backend::cuda::Cuda::new(i)
            .map_err(|e| anyhow::anyhow!("device cuda:{i} is not available: {e}; use --device cpu"))?;
        eprintln!("backend {}", be.name());
        let copy_gb_s = measure_device_limits(&be)?.read_gb_s;
        println!("limits: copy/read bandwidth {copy_gb_s:.1} GB/s");
        let (b, d, n) = (a.scan_batch, a.scan_d_inner, a.scan_d_state);
        for &l in &a.scan_seqlen {
            print_scan(
                "scan bf16",
                &s6::bench::bench_scan_bf16(&be, b, l, d, n, a.repeats.max(1))?,
                copy_gb_s,
                "moved",
            );
        }
        return Ok(());
    }
    bail!(
        "`bench scan --dtype bf16` times the CUDA scan with bf16 activations: use --device cuda (an s6 built with --features cuda)"
    )
}

/// The selective scan alone, beside the device's copy bandwidth.
fn scan_on<B: Backend>(be: &B, a: &Args, on_cpu: bool) -> Result<()> {
    eprintln!("backend {}", be.name());
    let copy_gb_s = if on_cpu { measure_limits().read_gb_s } else { measure_device_limits(be)?.read_gb_s };
    println!("limits: copy/read bandwidth {copy_gb_s:.1} GB/s");
    let (b, d, n) = (a.scan_batch, a.scan_d_inner, a.scan_d_state);
    for &l in &a.scan_seqlen {
        print_scan("scan", &bench_scan(be, b, l, d, n, a.repeats.max(1))?, copy_gb_s, "moved");
        if a.backward {
            let r = bench_scan_backward(be, b, l, d, n, a.repeats.max(1))?;
            print_scan("scan backward", &r, copy_gb_s, "moved at least");
        }
    }
    Ok(())
}

fn bench_on<B: Backend>(be: B, a: &Args) -> Result<()> {
    let on_cpu = matches!(a.device, Device::Cpu);
    if a.what == "scan" {
        return scan_on(&be, a, on_cpu);
    }
    let mut model: Mamba<B> = match &a.model {
        Some(m) => Mamba::load(be, &model_dir(m)?)?,
        None => match &a.config {
            Some(c) => {
                let cfg = s6::config::MambaConfig::from_file(c)?;
                let params = s6::model::init::init_params(&cfg, &s6::config::InitConfig::default(), 0);
                let mut it = params.into_iter();
                Mamba::from_params(be, cfg, |_| Ok(it.next().map(|p| p.1).unwrap_or_default()))?
            }
            None => random_model(be, &a.preset, 0)?,
        },
    };
    model.recompute = a.recompute;
    let c = &model.cfg;
    eprintln!(
        "model: {} layers × d_model {}, {:.1}M parameters, backend {}",
        c.n_layer,
        c.d_model,
        c.num_params() as f64 / 1e6,
        s6::backend::Backend::name(&model.backend)
    );
    let limits = if on_cpu { measure_limits() } else { measure_device_limits(&model.backend)? };
    let bw = if on_cpu { "read" } else { "device copy" };
    println!("limits: {bw} bandwidth {:.1} GB/s, f32 GEMM {:.1} GFLOP/s", limits.read_gb_s, limits.gemm_gflop_s);
    match a.what.as_str() {
        "decode" => {
            for &b in &a.batch {
                let r = bench_decode(&model, b, a.tokens, a.repeats, &limits)?;
                print_decode(&r, "");
                if model.backend.records_graphs() {
                    // Tokens fed back and sampled (greedy) on the device, op by op, then as a graph
                    // (the host reading each step's tokens while the next runs, as generation does),
                    // then as a graph waited for step by step (for comparison).
                    for (mode, overlap, label) in [
                        (DecodeMode::Eager, true, "device, eager"),
                        (DecodeMode::Graph, true, "device, graph"),
                        (DecodeMode::Graph, false, "device, graph, each step waited for"),
                    ] {
                        let d = bench_decode_device(&model, b, a.tokens, a.repeats, &limits, mode, overlap)?;
                        if let Some(why) = &d.fallback {
                            eprintln!("decode batch {b}: no CUDA graph, measured op by op: {why}");
                        }
                        print_decode(
                            &d.report,
                            if d.graph || mode == DecodeMode::Eager { label } else { "device, graph failed" },
                        );
                    }
                }
            }
        }
        "scaling" => {
            for &b in &a.batch {
                let pts = bench_scaling(&model, b, &a.seqlen, a.tokens, a.chunk)?;
                for p in pts {
                    let peak =
                        p.peak_memory.map(|m| format!("   peak memory {:.3} GB", m as f64 / 1e9)).unwrap_or_default();
                    println!(
                        "scaling batch {b:>3}, context {:>8}: prefill {:>9.3} s ({:>9.1} tok/s)   decode {:>8.3} ms/step   state {:.2} MB/sequence{peak}",
                        p.context,
                        p.prefill_s,
                        (b * p.context) as f64 / p.prefill_s,
                        p.decode_s_per_step * 1e3,
                        p.state_bytes as f64 / 1e6,
                    );
                }
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
                    model.backend.reset_peak_memory();
                    let tps = s6::train::bench_train_step(&model, b, l, a.repeats)?;
                    let flop = s6::train::train_flop_per_token(&model.cfg);
                    let limit = limits.gemm_gflop_s * 1e9 / flop;
                    // Peak memory of the device's pool during the steps (weights included), when
                    // the backend can tell.
                    let peak = model
                        .backend
                        .peak_memory()
                        .map(|p| format!(", peak device memory {:.2} GB", p as f64 / 1e9))
                        .unwrap_or_default();
                    println!(
                        "train batch {b:>3} × {l:>5}: {tps:>8.1} tok/s   GEMM limit {limit:>8.1} tok/s (MFU vs measured f32 GEMM {:.0}%; {:.1} MFLOP/token, {:.1} GFLOP/s{peak}; recompute {})",
                        100.0 * tps / limit,
                        flop / 1e6,
                        tps * flop / 1e9,
                        format!("{:?}", a.recompute).to_lowercase()
                    );
                }
            }
        }
        other => bail!("unknown benchmark '{other}'; expected decode, prefill, train, scan or scaling"),
    }
    Ok(())
}

/// One line of `s6 bench decode`; `how` names the decode path ("" for the host-sampled one).
fn print_decode(r: &DecodeReport, how: &str) {
    let how = if how.is_empty() { String::new() } else { format!(" ({how})") };
    println!(
        "decode batch {:>3}{how}: {:>8.1} tok/s   limit {:>8.1} tok/s ({:.0}%; {:.0} MB of weights per step)",
        r.batch,
        r.tok_per_s,
        r.limit_tok_per_s,
        100.0 * r.tok_per_s / r.limit_tok_per_s,
        r.weight_bytes_per_step as f64 / 1e6
    );
}
