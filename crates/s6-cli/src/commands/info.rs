//! `s6 info`.

use std::collections::BTreeMap;

use anyhow::Result;
use s6::config::{Layout, MambaConfig};
use s6::formats::tensors::TensorFile;
use s6::formats::tokenizer::Tokenizer;

use super::model_dir;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory or Hugging Face repo id.
    #[arg(long)]
    model: String,
    /// tokenizer.json to report when the model directory has none.
    #[arg(long)]
    tokenizer: Option<String>,
}

fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

pub fn run(a: Args) -> Result<()> {
    let dir = model_dir(&a.model)?;
    let cfg = MambaConfig::from_file(&dir.join("config.json"))?;
    let file = TensorFile::open_model_dir(&dir)?;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut file_bytes = 0usize;
    for name in file.names() {
        if let Some((dt, shape)) = file.info(name) {
            *dtypes.entry(dt.to_string()).or_default() += 1;
            file_bytes += shape.iter().product::<usize>() * dt.size();
        }
    }
    let params = cfg.num_params();
    let state = 4 * cfg.n_layer * cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state);
    println!("model:        {}", dir.display());
    println!(
        "architecture: Mamba-1 (selective SSM), {} layout",
        if cfg.layout == Layout::Hf { "HF transformers" } else { "state-spaces" }
    );
    println!("layers:       {}", cfg.n_layer);
    println!(
        "d_model:      {}  (d_inner {}, d_state {}, d_conv {}, dt_rank {})",
        cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
    );
    println!("vocab:        {}", cfg.vocab_size);
    println!("biases:       in/out_proj {}, conv1d {}", cfg.use_bias, cfg.use_conv_bias);
    println!("lm_head:      {}", if cfg.tie_embeddings { "tied to the embedding" } else { "separate" });
    println!("parameters:   {params} ({:.1}M)", params as f64 / 1e6);
    let dt: Vec<String> = dtypes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    println!("weights:      {} on disk ({}), {}", human(file_bytes as f64), dt.join(", "), file.source.display());
    println!(
        "memory:       {} as f32 weights; decode state {} per sequence (constant in length)",
        human(params as f64 * 4.0),
        human(state as f64)
    );
    match Tokenizer::for_model(&dir, a.tokenizer.as_deref(), cfg.vocab_size) {
        Ok(t) => println!("tokenizer:    {}", t.describe()),
        Err(e) => println!("tokenizer:    none ({e})"),
    }
    Ok(())
}
