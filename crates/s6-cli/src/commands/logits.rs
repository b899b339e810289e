//! `s6 logits`: token ids in, logits out, both as safetensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use s6::backend::{Backend, Compute};
use s6::formats::tensors::{write_safetensors, OutTensor, SaveDType, TensorFile};
use s6::model::{Logits, Mamba};

use super::{model_dir, on_device, parse_compute, parse_device, Device, OnDevice};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory or Hugging Face repo id.
    #[arg(long)]
    model: String,
    /// safetensors file with `input_ids` [batch, seqlen] (int64 or int32).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file; receives `logits` [batch, seqlen, vocab] f32.
    #[arg(long)]
    output: PathBuf,
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
    let (device, dtype) = (a.device.clone(), a.dtype);
    on_device(&device, dtype, a)
}

impl OnDevice for Args {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        logits_on(backend, &self)
    }
}

fn logits_on<B: Backend>(backend: B, a: &Args) -> Result<()> {
    let input = TensorFile::open(&a.input)?;
    if !input.contains("input_ids") {
        bail!("{}: no tensor 'input_ids' (found: {})", a.input.display(), input.names().collect::<Vec<_>>().join(", "));
    }
    let (ids, shape) = input.i64("input_ids")?;
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        bail!("{}: 'input_ids' must have shape [batch, seqlen] with both > 0, found {shape:?}", a.input.display());
    }
    let model = Mamba::load(backend, &model_dir(&a.model)?)?;
    let vocab = model.cfg.vocab_size;
    let mut tokens = Vec::with_capacity(ids.len());
    for (i, &t) in ids.iter().enumerate() {
        if t < 0 || t as u64 >= vocab as u64 {
            bail!(
                "{}: input_ids[{}][{}] = {t} is outside the vocabulary [0, {vocab})",
                a.input.display(),
                i / shape[1],
                i % shape[1]
            );
        }
        tokens.push(t as u32);
    }
    let (batch, seqlen) = (shape[0], shape[1]);
    let mut state = model.new_state(batch)?;
    let logits = model.forward(&tokens, batch, seqlen, &mut state, Logits::All)?;
    let values = model.backend.to_vec(&logits)?;
    let mut out = BTreeMap::new();
    out.insert("logits".to_string(), OutTensor::from_f32(&values, &[batch, seqlen, vocab], SaveDType::F32));
    write_safetensors(&a.output, &out, None)?;
    eprintln!("wrote logits [{batch}, {seqlen}, {vocab}] to {}", a.output.display());
    Ok(())
}
