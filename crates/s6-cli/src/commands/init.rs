//! `s6 init`: a randomly initialized model in HF layout.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use s6::config::{InitConfig, MambaConfig, PRESETS};
use s6::formats::tensors::SaveDType;
use s6::model::init::init_params;
use s6::model::save::save_hf;

#[derive(clap::Args)]
pub struct Args {
    /// One of mamba-130m, mamba-370m, mamba-790m, mamba-1.4b, mamba-2.8b.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A config.json (HF or state-spaces layout) describing the architecture.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory (created; existing model files in it are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the initialization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight dtype on disk: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Copy this tokenizer.json into the model directory.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = match (&a.preset, &a.config) {
        (Some(p), None) => MambaConfig::preset(p)?,
        (None, Some(c)) => MambaConfig::from_file(c)?,
        _ => bail!("give --preset NAME ({}) or --config FILE", PRESETS.join(", ")),
    };
    let dtype: SaveDType = a.dtype.parse()?;
    let init = InitConfig::default();
    let params = init_params(&cfg, &init, a.seed);
    save_hf(&a.out, &cfg, &init, &params, dtype)?;
    if let Some(t) = &a.tokenizer {
        // Validate before copying: a broken tokenizer should fail here, not at generation time.
        s6::formats::tokenizer::Tokenizer::from_file(t)?;
        std::fs::copy(t, a.out.join("tokenizer.json")).with_context(|| format!("cannot copy {}", t.display()))?;
    }
    eprintln!(
        "initialized {} layers × d_model {} ({:.1}M parameters, {}) in {}",
        cfg.n_layer,
        cfg.d_model,
        cfg.num_params() as f64 / 1e6,
        a.dtype,
        a.out.display()
    );
    Ok(())
}
