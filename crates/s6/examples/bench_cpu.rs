//! Decode and prefill throughput of a random-weight mamba-130m on the CPU backend, with the
//! machine limits measured in the same run (see docs/BENCHMARKS.md).
//!
//! `cargo run --release -p s6 --example bench_cpu [rounds]`: each figure is the best over
//! `rounds` interleaved rounds (default 3), each itself a best of several repeats, so that a burst
//! of load from another tenant does not decide a number. The limits are the best of the rounds as
//! well, so every ratio compares best with best; the per-round lines show the spread.

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::bench::{self, DecodeReport, Limits, PrefillReport};

fn main() -> s6::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let model = bench::random_model(Cpu, "mamba-130m", 0)?;
    println!("backend: {}; model mamba-130m, {} parameters (f32)", Cpu.name(), model.cfg.num_params());
    let mut lim = Limits { read_gb_s: 0.0, gemm_gflop_s: 0.0 };
    let mut decode: Vec<DecodeReport> = Vec::new();
    let mut prefill: Vec<PrefillReport> = Vec::new();
    for round in 0..rounds {
        let l = bench::measure_limits();
        lim.read_gb_s = lim.read_gb_s.max(l.read_gb_s);
        lim.gemm_gflop_s = lim.gemm_gflop_s.max(l.gemm_gflop_s);
        let d = [bench::bench_decode(&model, 1, 32, 3, &l)?, bench::bench_decode(&model, 8, 16, 3, &l)?];
        let p = [bench::bench_prefill(&model, 1, 512, 3, &l)?, bench::bench_prefill(&model, 1, 2048, 2, &l)?];
        println!(
            "round {round}: read {:5.1} GB/s, gemm {:5.1} GFLOP/s | decode b1 {:6.2} ({:3.0}%), b8 {:6.2} tok/s \
             | prefill 512 {:6.1} ({:3.0}%), 2048 {:6.1} tok/s",
            l.read_gb_s,
            l.gemm_gflop_s,
            d[0].tok_per_s,
            100.0 * d[0].tok_per_s / d[0].limit_tok_per_s,
            d[1].tok_per_s,
            p[0].tok_per_s,
            100.0 * p[0].tok_per_s / p[0].limit_tok_per_s,
            p[1].tok_per_s
        );
        if decode.is_empty() {
            decode = d.to_vec();
            prefill = p.to_vec();
        } else {
            for (best, new) in decode.iter_mut().zip(d) {
                best.tok_per_s = best.tok_per_s.max(new.tok_per_s);
            }
            for (best, new) in prefill.iter_mut().zip(p) {
                best.tok_per_s = best.tok_per_s.max(new.tok_per_s);
            }
        }
    }
    println!("\nbest of {rounds} rounds; limits: read {:.1} GB/s, gemm {:.1} GFLOP/s", lim.read_gb_s, lim.gemm_gflop_s);
    for r in &decode {
        let limit = lim.read_gb_s * 1e9 / r.weight_bytes_per_step as f64 * r.batch as f64;
        println!(
            "decode  batch {:>2}:   {:>7.2} tok/s   limit {:>7.2} tok/s ({:.1} MB of weights per step)   {:>5.1}% of limit",
            r.batch,
            r.tok_per_s,
            limit,
            r.weight_bytes_per_step as f64 / 1e6,
            100.0 * r.tok_per_s / limit
        );
    }
    for r in &prefill {
        let limit = lim.gemm_gflop_s * 1e9 / r.flop_per_token;
        println!(
            "prefill {:>4} tokens: {:>7.1} tok/s   limit {:>7.1} tok/s ({:.1} MFLOP per token)   {:>5.1}% of limit",
            r.seqlen,
            r.tok_per_s,
            limit,
            r.flop_per_token / 1e6,
            100.0 * r.tok_per_s / limit
        );
    }
    Ok(())
}
