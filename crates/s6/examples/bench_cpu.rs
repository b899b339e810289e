//! Decode and prefill throughput of a random-weight mamba-130m on the CPU backend, with the
//! machine limits measured in the same run (see docs/BENCHMARKS.md).
//!
//! `cargo run --release -p s6 --example bench_cpu [rounds]`: every figure is the best over
//! `rounds` interleaved rounds (default 3), each itself a best of several repeats, so that a burst
//! of load from another tenant does not decide a number.

use s6::backend::cpu::Cpu;
use s6::backend::Backend;
use s6::bench::{self, Limits};

fn main() -> s6::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let model = bench::random_model(Cpu, "mamba-130m", 0)?;
    println!("backend: {}; model mamba-130m, {} parameters (f32)", Cpu.name(), model.cfg.num_params());
    let mut lim = Limits { read_gb_s: 0.0, gemm_gflop_s: 0.0 };
    let mut dec = [0.0f64; 2];
    let mut pre = [0.0f64; 2];
    let mut dec_rep = Vec::new();
    let mut pre_rep = Vec::new();
    for round in 0..rounds {
        let l = bench::measure_limits();
        lim.read_gb_s = lim.read_gb_s.max(l.read_gb_s);
        lim.gemm_gflop_s = lim.gemm_gflop_s.max(l.gemm_gflop_s);
        let d1 = bench::bench_decode(&model, 1, 32, 3, &lim)?;
        let d8 = bench::bench_decode(&model, 8, 16, 3, &lim)?;
        let p512 = bench::bench_prefill(&model, 1, 512, 3, &lim)?;
        let p2048 = bench::bench_prefill(&model, 1, 2048, 2, &lim)?;
        println!(
            "round {round}: read {:.1} GB/s, gemm {:.1} GFLOP/s | decode b1 {:.2} tok/s, b8 {:.2} tok/s | \
             prefill 512 {:.1} tok/s, 2048 {:.1} tok/s",
            l.read_gb_s, l.gemm_gflop_s, d1.tok_per_s, d8.tok_per_s, p512.tok_per_s, p2048.tok_per_s
        );
        dec = [dec[0].max(d1.tok_per_s), dec[1].max(d8.tok_per_s)];
        pre = [pre[0].max(p512.tok_per_s), pre[1].max(p2048.tok_per_s)];
        dec_rep = vec![d1, d8];
        pre_rep = vec![p512, p2048];
    }
    println!("\nbest of {rounds} rounds; limits: read {:.1} GB/s, gemm {:.1} GFLOP/s", lim.read_gb_s, lim.gemm_gflop_s);
    for (r, best) in dec_rep.iter().zip(dec) {
        let limit = lim.read_gb_s * 1e9 / r.weight_bytes_per_step as f64 * r.batch as f64;
        println!(
            "decode  batch {:>2}: {:>8.2} tok/s  limit {:>8.2} tok/s ({:.1} MB/step)  {:>5.1}% of limit",
            r.batch,
            best,
            limit,
            r.weight_bytes_per_step as f64 / 1e6,
            100.0 * best / limit
        );
    }
    for (r, best) in pre_rep.iter().zip(pre) {
        let limit = lim.gemm_gflop_s * 1e9 / r.flop_per_token;
        println!(
            "prefill {:>5} tok: {:>8.1} tok/s  limit {:>8.1} tok/s ({:.1} MFLOP/token)  {:>5.1}% of limit",
            r.seqlen,
            best,
            limit,
            r.flop_per_token / 1e6,
            100.0 * best / limit
        );
    }
    Ok(())
}
