//! `s6`: run, inspect, initialize and benchmark Mamba models. A thin layer over the `s6` library:
//! argument parsing, progress and printing only.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "s6", version, about = "Mamba (selective state space models) in Rust", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (or a batch of prompts), streaming it as it is produced.
    // `--temperature -1` must reach the range check (and its message), not fail as an unknown flag.
    #[command(allow_negative_numbers = true)]
    Generate(commands::generate::Args),
    /// Compute logits for token ids from a safetensors file (parity checks against PyTorch).
    #[command(allow_negative_numbers = true)]
    Logits(commands::logits::Args),
    /// Describe a model: architecture, parameters, dtypes, memory, tokenizer.
    #[command(allow_negative_numbers = true)]
    Info(commands::info::Args),
    /// Benchmark decode, prefill or training throughput beside the machine's measured limits.
    #[command(allow_negative_numbers = true)]
    Bench(commands::bench::Args),
    /// Train a model from scratch or fine-tune one, with resumable checkpoints.
    // Negative values (`--lr -1`) must reach the range checks and their messages.
    #[command(allow_negative_numbers = true)]
    Train(Box<commands::train::Args>),
    /// Create a randomly initialized model (the paper's initialization) in HF layout.
    #[command(allow_negative_numbers = true)]
    Init(commands::init::Args),
    /// Train and test a model on one of the paper's synthetic tasks, across sequence lengths.
    #[command(allow_negative_numbers = true)]
    Task(Box<commands::task::Args>),
    /// Three-minute demo: Mamba solves selective copying, the time-invariant ablation cannot.
    #[command(allow_negative_numbers = true)]
    Demo(commands::task::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Init(a) => commands::init::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Train(a) => commands::train::run(*a),
        Command::Task(a) => commands::task::run(*a),
        Command::Demo(a) => commands::task::demo(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
