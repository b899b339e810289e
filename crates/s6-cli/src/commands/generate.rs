//! `s6 generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use s6::formats::tokenizer::Tokenizer;
use s6::generate::{generate_text, GenerateOptions, SamplingParams};

use s6::backend::{Backend, Compute};
use s6::model::Mamba;

use super::{model_dir, on_device, parse_compute, parse_device, Device, OnDevice};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory or Hugging Face repo id (e.g. state-spaces/mamba-130m-hf); default: the
    /// bundled byte-level Shakespeare model.
    #[arg(long)]
    model: Option<String>,
    /// Prompt text; repeat the flag for several prompts (decoded as one batch).
    #[arg(long)]
    prompt: Vec<String>,
    /// File with one prompt per line (empty lines skipped), decoded as one batch.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// tokenizer.json to use when the model directory has none, or "bytes".
    #[arg(long)]
    tokenizer: Option<String>,
    /// New tokens per prompt, at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalize tokens already present (1 = off; 1.1-1.3 typical).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed: the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at the end-of-text token.
    #[arg(long)]
    ignore_eos: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// How matrix products are computed: f32, or on CUDA tf32 (products on TF32 tensor cores) or
    /// bf16 (products with bf16 inputs, fp32 accumulation); weights and the residual stream stay
    /// fp32 in memory, a prompt's other activations are held in bf16 on CUDA (`S6_BF16_STORAGE=0`:
    /// fp32). fp16 is not implemented.
    #[arg(long, default_value = "f32", value_parser = parse_compute)]
    dtype: Compute,
}

pub fn run(a: Args) -> Result<()> {
    let mut prompts = a.prompt.clone();
    if let Some(path) = &a.prompts_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read --prompts-file {}", path.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    if prompts.is_empty() {
        bail!("no prompt given: pass --prompt TEXT or --prompts-file FILE");
    }
    if let Some(i) = prompts.iter().position(String::is_empty) {
        bail!("prompt {} is empty; give some text to continue", i + 1);
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    sampling.validate()?;
    let (device, dtype) = (a.device.clone(), a.dtype);
    on_device(&device, dtype, Generate { a, prompts, sampling })
}

/// The part of the command that runs on the chosen backend.
struct Generate {
    a: Args,
    prompts: Vec<String>,
    sampling: SamplingParams,
}

impl OnDevice for Generate {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let Generate { a, prompts, sampling } = self;
        generate_on(backend, &a, &prompts, sampling)
    }
}

fn generate_on<B: Backend>(backend: B, a: &Args, prompts: &[String], sampling: SamplingParams) -> Result<()> {
    let dir = match &a.model {
        Some(m) => model_dir(m)?,
        None => super::bundled_model()?,
    };
    let model = Mamba::load(backend, &dir)?;
    let tokenizer = Tokenizer::for_model(&dir, a.tokenizer.as_deref(), model.cfg.vocab_size)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        eos: if a.ignore_eos { None } else { tokenizer.eos_token_id() },
        ..Default::default()
    };

    let stream = prompts.len() == 1;
    let mut out = std::io::stdout().lock();
    if stream {
        write!(out, "{}", prompts[0])?;
        out.flush()?;
    }
    let (completions, stats) = generate_text(&model, &tokenizer, prompts, &opts, |_, text| {
        if stream {
            // A closed pipe (e.g. `| head`) must not abort generation with a panic.
            let _ = write!(out, "{text}");
            let _ = out.flush();
        }
    })?;
    if stream {
        writeln!(out)?;
    } else {
        for (i, (p, c)) in prompts.iter().zip(&completions).enumerate() {
            writeln!(out, "--- [{}] ---\n{p}{}", i + 1, c.text)?;
        }
    }
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tok/s); decode: {} tokens in {:.3} s ({:.1} tok/s, batch {})",
        stats.prefill_tokens,
        stats.prefill_secs,
        stats.prefill_tok_per_s(),
        stats.decode_tokens,
        stats.decode_secs,
        stats.decode_tok_per_s(),
        prompts.len()
    );
    Ok(())
}
