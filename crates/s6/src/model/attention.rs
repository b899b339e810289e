//! The Transformer baseline: a Llama-architecture causal language model (RoPE multi-head
//! attention + SwiGLU MLP, pre-RMSNorm, no biases), with HF `LlamaForCausalLM` tensor names and
//! config, so that checkpoints move between s6 and transformers unchanged.
//!
//! embedding → N × (RMSNorm → attention, residual; RMSNorm → MLP, residual) → RMSNorm → lm_head,
//! where attention is `o_proj(softmax(rope(q)·rope(k)ᵀ / √head_dim, causal) · v)` per head and the
//! MLP is `down_proj(silu(gate_proj(x)) · up_proj(x))`.
//!
//! Written once against [`Backend`], like [`super::mamba1`]: a plain struct of named tensors, a
//! forward, and a hand-written backward in [`Transformer::loss_and_grads`] with each layer's
//! backward beside its forward. Attention is the flash-style kernel of the backend (memory linear
//! in the sequence length, time quadratic).
//!
//! # Positions and length extrapolation
//!
//! Positions enter only through the rotary embedding of q and k (no learned position table), so
//! the model accepts any sequence length: nothing is clamped or truncated, and
//! `max_position_embeddings` in the config is recorded (as the training length) but not enforced.
//! What the model has *learned* is another matter. Attention scores depend on the relative offset
//! `t − s` through rotations by `(t − s)·θ^(−2i/head_dim)`; beyond the training length the model
//! meets offsets it never saw, at which the slow (low-frequency) rotation pairs take angles
//! outside the range seen in training and the learned score patterns need not hold. Softmax
//! attention also spreads over more keys as the sequence grows. This is why, in the paper's
//! induction-heads test (Table 11: trained at length 256, evaluated up to 2^20), attention
//! baselines with RoPE are expected to solve the task near the training length and collapse
//! beyond it, while Mamba's recurrent state carries the answer to any length. s6 deliberately
//! adds no extrapolation tricks (no position interpolation, NTK scaling or attention-length
//! limits), so the baseline shows plain RoPE's behavior.
//!
//! Evaluation at long lengths is bounded by [`Transformer::memory_budget`]: the activations of
//! one forward grow linearly with `batch × seqlen`, and [`LanguageModel::logits_at`] refuses with
//! [`Error::OutOfMemory`] instead of trying when they would not fit. Time grows quadratically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Map, Value};

use super::init::InitRng;
use super::mamba1::{Logits, ParamSpec};
use super::LanguageModel;
use crate::backend::{AttnDims, Backend, View, ViewMut};
use crate::formats::tensors::{write_atomic, write_safetensors, OutTensor, SaveDType, TensorFile};
use crate::{Error, Result};

/// The architecture of a Llama-style Transformer. Read from and written to an HF
/// `LlamaForCausalLM` `config.json` (`model_type: "llama"`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    /// Model width (`hidden_size`).
    pub d_model: usize,
    /// Number of Transformer blocks (`num_hidden_layers`).
    pub n_layer: usize,
    /// Attention heads (`num_attention_heads`; `num_key_value_heads` is the same: no GQA).
    pub n_head: usize,
    /// Inner width of the SwiGLU MLP (`intermediate_size`).
    pub d_ff: usize,
    /// Vocabulary size of the embedding and lm_head.
    pub vocab_size: usize,
    /// RoPE base θ (`rope_theta`).
    pub rope_theta: f64,
    /// RMSNorm epsilon (`rms_norm_eps`).
    pub norm_eps: f64,
    /// Whether lm_head shares the embedding matrix (`tie_word_embeddings`).
    pub tie_embeddings: bool,
    /// `max_position_embeddings`: recorded (conventionally the training length), never enforced
    /// (see the module docs on extrapolation).
    pub max_position_embeddings: usize,
    /// Standard deviation of the normal initialization (`initializer_range`).
    pub initializer_range: f64,
}

impl TransformerConfig {
    /// A config with Llama's defaults: `d_ff` the multiple of 8 nearest above `8/3 · d_model`
    /// (a SwiGLU MLP with the parameters of a `4 · d_model` GELU MLP), θ = 10000, eps 1e-6,
    /// untied head, init std 0.02.
    pub fn new(d_model: usize, n_layer: usize, n_head: usize, vocab_size: usize) -> Self {
        TransformerConfig {
            d_model,
            n_layer,
            n_head,
            d_ff: (8 * d_model).div_ceil(3).div_ceil(8) * 8,
            vocab_size,
            rope_theta: 10000.0,
            norm_eps: 1e-6,
            tie_embeddings: false,
            max_position_embeddings: 2048,
            initializer_range: 0.02,
        }
    }

    /// Columns per head, `d_model / n_head`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head.max(1)
    }

    /// Checks that the sizes describe a model s6 can run; `path` is only used in messages.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::config(path, msg));
        if self.d_model == 0 || self.n_layer == 0 || self.n_head == 0 || self.d_ff == 0 || self.vocab_size == 0 {
            return bad(format!("sizes must be positive: {self:?}"));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.d_model, self.n_head
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head size {} must be even for rotary embeddings", self.head_dim()));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta must be a finite number above 1, got {}", self.rope_theta));
        }
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("rms_norm_eps must be finite and non-negative, got {}", self.norm_eps));
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        param_specs(self).iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }

    /// Reads an HF Llama `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses HF Llama config text; `path` is only used in messages. Features s6 does not
    /// implement (grouped-query attention, biases, RoPE scaling, other activations) are refused
    /// with a message naming the field, never silently ignored.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = json5::from_str(text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| Error::config(path, "expected a JSON object at the top level"))?;
        let uint = |key: &str| -> Result<usize> {
            obj.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::config(path, format!("missing or non-integer '{key}'")))
        };
        let float_or = |o: &Map<String, Value>, key: &str, default: f64| -> Result<f64> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| Error::config(path, format!("'{key}' is not a number: {v}"))),
            }
        };
        match obj.get("model_type").and_then(Value::as_str) {
            Some("llama") | None => {}
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("model_type '{other}' is not a Llama config (expected \"llama\")"),
                ))
            }
        }
        let n_head = uint("num_attention_heads")?;
        if let Some(kv) = obj.get("num_key_value_heads").filter(|v| !v.is_null()) {
            if kv.as_u64() != Some(n_head as u64) {
                return Err(Error::config(
                    path,
                    format!("num_key_value_heads {kv} differs from num_attention_heads {n_head}: grouped-query attention is not supported"),
                ));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if obj.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(Error::config(
                    path,
                    format!("'{key}: true' is not supported (s6's Transformer has no biases)"),
                ));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::config(path, format!("hidden_act '{act}' is not supported (expected \"silu\")")));
            }
        }
        if obj.get("pretraining_tp").and_then(Value::as_u64).is_some_and(|tp| tp != 1) {
            return Err(Error::config(path, "pretraining_tp other than 1 is not supported"));
        }
        // transformers 5 keeps θ in `rope_parameters`, earlier versions at the top level.
        let mut rope_theta = float_or(obj, "rope_theta", 10000.0)?;
        for key in ["rope_parameters", "rope_scaling"] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(rp)) => {
                    let kind =
                        rp.get("rope_type").or_else(|| rp.get("type")).and_then(Value::as_str).unwrap_or("default");
                    if kind != "default" {
                        return Err(Error::config(
                            path,
                            format!("{key}: rope_type '{kind}' is not supported (only \"default\")"),
                        ));
                    }
                    rope_theta = float_or(rp, "rope_theta", rope_theta)?;
                }
                Some(other) => return Err(Error::config(path, format!("'{key}' is not an object: {other}"))),
            }
        }
        let d_model = uint("hidden_size")?;
        if let Some(hd) = obj.get("head_dim").filter(|v| !v.is_null()) {
            if n_head > 0 && hd.as_u64() != Some((d_model / n_head) as u64) {
                return Err(Error::config(
                    path,
                    format!("head_dim {hd} differs from hidden_size / num_attention_heads"),
                ));
            }
        }
        let cfg = TransformerConfig {
            d_model,
            n_layer: uint("num_hidden_layers")?,
            n_head,
            d_ff: uint("intermediate_size")?,
            vocab_size: uint("vocab_size")?,
            rope_theta,
            norm_eps: float_or(obj, "rms_norm_eps", 1e-6)?,
            tie_embeddings: obj.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            max_position_embeddings: obj.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048)
                as usize,
            initializer_range: float_or(obj, "initializer_range", 0.02)?,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The config as HF `LlamaForCausalLM`'s `config.json`. θ is written both at the top level
    /// (transformers 4) and in `rope_parameters` (transformers 5).
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head,
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "initializer_range": self.initializer_range,
            "use_cache": true,
            "dtype": "float32",
        })
    }
}

/// The parameters of a config, in HF names, in the order of HF's `named_parameters()`.
pub fn param_specs(cfg: &TransformerConfig) -> Vec<ParamSpec> {
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut specs = vec![ParamSpec { name: "model.embed_tokens.weight".into(), shape: vec![v, d] }];
    for i in 0..cfg.n_layer {
        let p = |s: &str, shape: Vec<usize>| ParamSpec { name: format!("model.layers.{i}.{s}"), shape };
        specs.push(p("self_attn.q_proj.weight", vec![d, d]));
        specs.push(p("self_attn.k_proj.weight", vec![d, d]));
        specs.push(p("self_attn.v_proj.weight", vec![d, d]));
        specs.push(p("self_attn.o_proj.weight", vec![d, d]));
        specs.push(p("mlp.gate_proj.weight", vec![f, d]));
        specs.push(p("mlp.up_proj.weight", vec![f, d]));
        specs.push(p("mlp.down_proj.weight", vec![d, f]));
        specs.push(p("input_layernorm.weight", vec![d]));
        specs.push(p("post_attention_layernorm.weight", vec![d]));
    }
    specs.push(ParamSpec { name: "model.norm.weight".into(), shape: vec![d] });
    if !cfg.tie_embeddings {
        specs.push(ParamSpec { name: "lm_head.weight".into(), shape: vec![v, d] });
    }
    specs
}

/// One Transformer block. Field names follow the checkpoint names.
pub struct TransformerLayer<B: Backend> {
    pub q_proj: B::Buf,
    pub k_proj: B::Buf,
    pub v_proj: B::Buf,
    pub o_proj: B::Buf,
    pub gate_proj: B::Buf,
    pub up_proj: B::Buf,
    pub down_proj: B::Buf,
    pub input_layernorm: B::Buf,
    pub post_attention_layernorm: B::Buf,
}

/// The Transformer (Llama-architecture) causal language model.
pub struct Transformer<B: Backend> {
    pub cfg: TransformerConfig,
    pub backend: B,
    pub embed_tokens: B::Buf,
    pub layers: Vec<TransformerLayer<B>>,
    pub norm: B::Buf,
    /// `None` when tied to the embedding.
    pub lm_head: Option<B::Buf>,
    /// Bytes the activations of one forward may take in [`LanguageModel::logits_at`] (see
    /// [`Transformer::forward_bytes`]); above it, `logits_at` returns [`Error::OutOfMemory`]
    /// without trying. Default [`DEFAULT_MEMORY_BUDGET`].
    pub memory_budget: u64,
}

/// The default of [`Transformer::memory_budget`]: 4 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;

/// Activations of one layer, kept for the backward (training) or reused (inference).
struct LayerActs<B: Backend> {
    /// Residual stream before the input norm, after the previous block's add (training only).
    res_attn: Option<B::Buf>,
    normed_attn: B::Buf,
    /// q and k after RoPE, as the attention saw them.
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    /// Per (sequence, head, position) logsumexp of the attention scores.
    lse: B::Buf,
    /// Residual stream after the attention add, before the post-attention norm (training only).
    res_mlp: Option<B::Buf>,
    normed_mlp: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    h: B::Buf,
}

impl<B: Backend> Transformer<B> {
    /// A freshly initialized model, as HF initializes Llama: every linear and the embedding
    /// `N(0, initializer_range²)`, norm weights 1. Deterministic in `seed`.
    pub fn init(backend: B, cfg: TransformerConfig, seed: u64) -> Result<Self> {
        cfg.validate(Path::new("<init>"))?;
        let mut rng = InitRng::new(seed);
        let std = cfg.initializer_range as f32;
        Self::from_params(backend, cfg, |spec| {
            let n: usize = spec.shape.iter().product();
            Ok(if spec.name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.normal() * std).collect()
            })
        })
    }

    /// Builds the model from named host tensors: `get(spec)` returns a parameter's values (in
    /// [`param_specs`] order), already checked against its shape.
    pub fn from_params(
        backend: B,
        cfg: TransformerConfig,
        mut get: impl FnMut(&ParamSpec) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let specs = param_specs(&cfg);
        let mut it = specs.iter();
        let mut next = |backend: &B| -> Result<B::Buf> {
            let spec = it.next().ok_or_else(|| Error::Backend("parameter list exhausted".into()))?;
            let values = get(spec)?;
            let want: usize = spec.shape.iter().product();
            if values.len() != want {
                return Err(Error::Backend(format!("{}: {} values, expected {want}", spec.name, values.len())));
            }
            backend.from_vec(values)
        };
        let embed_tokens = next(&backend)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            layers.push(TransformerLayer {
                q_proj: next(&backend)?,
                k_proj: next(&backend)?,
                v_proj: next(&backend)?,
                o_proj: next(&backend)?,
                gate_proj: next(&backend)?,
                up_proj: next(&backend)?,
                down_proj: next(&backend)?,
                input_layernorm: next(&backend)?,
                post_attention_layernorm: next(&backend)?,
            });
        }
        let norm = next(&backend)?;
        let lm_head = if cfg.tie_embeddings { None } else { Some(next(&backend)?) };
        Ok(Transformer { cfg, backend, embed_tokens, layers, norm, lm_head, memory_budget: DEFAULT_MEMORY_BUDGET })
    }

    /// Loads a model directory: `config.json` (HF Llama) and `model.safetensors` (or shards).
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::config(&cfg_path, "not found: a model directory needs config.json"));
        }
        let cfg = TransformerConfig::from_file(&cfg_path)?;
        let file = TensorFile::open_model_dir(dir)?;
        Self::from_tensor_file(backend, cfg, &file)
    }

    /// Builds the model from an opened checkpoint, checking names, shapes and values.
    pub fn from_tensor_file(backend: B, cfg: TransformerConfig, file: &TensorFile) -> Result<Self> {
        let specs = param_specs(&cfg);
        if let Some(missing) = specs.iter().find(|s| !file.contains(&s.name)) {
            return Err(Error::weights(
                &file.source,
                format!("missing tensor '{}' (expected shape {:?})", missing.name, missing.shape),
            ));
        }
        // A tied checkpoint may still carry a copy of the head.
        let tolerated = |n: &str| cfg.tie_embeddings && n == "lm_head.weight";
        let extra: Vec<&str> = file.names().filter(|n| !specs.iter().any(|s| s.name == *n) && !tolerated(n)).collect();
        if !extra.is_empty() {
            return Err(Error::weights(
                &file.source,
                format!(
                    "unexpected tensor(s) for this config: {}",
                    extra.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Self::from_params(backend, cfg, |spec| {
            let (values, shape) = file.f32(&spec.name)?;
            if shape != spec.shape {
                return Err(Error::weights(
                    &file.source,
                    format!("tensor '{}' has shape {shape:?}, expected {:?}", spec.name, spec.shape),
                ));
            }
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::weights(
                    &file.source,
                    format!("tensor '{}' has a non-finite value at index {bad}", spec.name),
                ));
            }
            Ok(values)
        })
    }

    /// Writes `config.json` and `model.safetensors` (f32) into `dir` (created if needed), each
    /// atomically; loadable by [`Transformer::load`] and by transformers'
    /// `LlamaForCausalLM.from_pretrained`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut map = BTreeMap::new();
        for (spec, buf) in self.named_params() {
            let values = self.backend.to_vec(buf)?;
            map.insert(spec.name.clone(), OutTensor::from_f32(&values, &spec.shape, SaveDType::F32));
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&dir.join("model.safetensors"), &map, Some(meta))?;
        let text =
            serde_json::to_string_pretty(&self.cfg.to_hf_json()).map_err(|e| Error::format(dir, e.to_string()))?;
        write_atomic(&dir.join("config.json"), text.as_bytes())
    }

    /// Named parameters (HF names) with shapes, in [`param_specs`] order.
    pub fn named_params(&self) -> Vec<(ParamSpec, &B::Buf)> {
        param_specs(&self.cfg).into_iter().zip(self.param_bufs()).collect()
    }

    fn param_bufs(&self) -> Vec<&B::Buf> {
        let mut bufs = vec![&self.embed_tokens];
        for l in &self.layers {
            bufs.extend([&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]);
            bufs.extend([&l.input_layernorm, &l.post_attention_layernorm]);
        }
        bufs.push(&self.norm);
        bufs.extend(self.lm_head.as_ref());
        bufs
    }

    /// Mutable parameter buffers in [`param_specs`] order.
    pub fn params_mut(&mut self) -> Vec<&mut B::Buf> {
        let mut bufs = vec![&mut self.embed_tokens];
        for l in &mut self.layers {
            bufs.extend([
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
                &mut l.input_layernorm,
                &mut l.post_attention_layernorm,
            ]);
        }
        bufs.push(&mut self.norm);
        bufs.extend(self.lm_head.as_mut());
        bufs
    }

    /// Gradient accumulators: a model-shaped set of zero buffers.
    pub fn zero_grads(&self) -> Result<Self> {
        Self::from_params(self.backend.clone(), self.cfg.clone(), |spec| Ok(vec![0.0; spec.shape.iter().product()]))
    }

    /// Estimated peak bytes of one inference forward over `batch × seqlen` tokens (the reused
    /// per-layer activations, the residual stream, the ids, and the logits of `logit_rows` rows);
    /// what [`LanguageModel::logits_at`] compares with [`Transformer::memory_budget`]. Linear in
    /// `seqlen`: the attention kernel keeps only a logsumexp per (row, head), never `seqlen²`.
    pub fn forward_bytes(&self, batch: usize, seqlen: usize, logit_rows: usize) -> u64 {
        let c = &self.cfg;
        let tokens = (batch * seqlen) as u64;
        // residual, normed, q, k, v, att, attn out, MLP out: 8·d; gate, up, h: 3·d_ff; lse: n_head;
        // final norm output: d. Plus the token id.
        let floats_per_token = (9 * c.d_model + 3 * c.d_ff + c.n_head) as u64;
        tokens * (4 * floats_per_token + 4) + (logit_rows as u64) * (4 * c.vocab_size as u64 + 4 * c.d_model as u64)
    }

    /// Runs `batch` sequences of `seqlen` tokens each (`ids` row-major `[batch, seqlen]`) from
    /// their start; returns logits (see [`Logits`]).
    pub fn forward(&self, ids: &[u32], batch: usize, seqlen: usize, which: Logits) -> Result<B::Buf> {
        self.check_ids(ids, batch, seqlen)?;
        let normed = self.hidden(ids, batch, seqlen, None)?;
        let rows: Vec<usize> = match which {
            Logits::All => return self.head_logits(&normed, batch * seqlen),
            Logits::Last => (0..batch).map(|b| b * seqlen + seqlen - 1).collect(),
        };
        self.logits_of_rows(&normed, &rows)
    }

    /// Mean cross-entropy of `targets` (`u32::MAX` = ignored) without gradients: evaluation.
    /// Returns the mean loss and the number of counted targets.
    pub fn loss(&self, ids: &[u32], targets: &[u32], batch: usize, seqlen: usize) -> Result<(f64, usize)> {
        self.check_ids(ids, batch, seqlen)?;
        self.check_targets(ids, targets)?;
        let normed = self.hidden(ids, batch, seqlen, None)?;
        let (rows, d, v) = (batch * seqlen, self.cfg.d_model, self.cfg.vocab_size);
        let be = &self.backend;
        let (sum, count) = super::head_cross_entropy(be, &normed, rows, d, self.head(), v, targets, 0.0, None)?;
        Ok((sum / count.max(1) as f64, count))
    }

    fn eps(&self) -> f32 {
        self.cfg.norm_eps as f32
    }

    /// The output projection: lm_head, or the embedding when tied.
    fn head(&self) -> &B::Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    fn attn_dims(&self, batch: usize, seqlen: usize) -> AttnDims {
        AttnDims { batch, seqlen, n_head: self.cfg.n_head, head_dim: self.cfg.head_dim() }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.cfg.head_dim() as f32).sqrt()
    }

    fn check_ids(&self, ids: &[u32], batch: usize, seqlen: usize) -> Result<()> {
        if ids.len() != batch * seqlen {
            return Err(Error::input(format!("forward: {} token ids for batch {batch} × length {seqlen}", ids.len())));
        }
        if seqlen == 0 || batch == 0 {
            return Err(Error::input("forward: empty input (no tokens)"));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    fn check_targets(&self, ids: &[u32], targets: &[u32]) -> Result<()> {
        if targets.len() != ids.len() {
            return Err(Error::input(format!("{} targets for {} token ids", targets.len(), ids.len())));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t != u32::MAX && t as usize >= self.cfg.vocab_size) {
            return Err(Error::input(format!(
                "target id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    fn layer_buffers(&self, rows: usize) -> Result<LayerActs<B>> {
        let be = &self.backend;
        let (d, f) = (self.cfg.d_model, self.cfg.d_ff);
        Ok(LayerActs {
            res_attn: None,
            normed_attn: be.zeros(rows * d)?,
            q: be.zeros(rows * d)?,
            k: be.zeros(rows * d)?,
            v: be.zeros(rows * d)?,
            att: be.zeros(rows * d)?,
            lse: be.zeros(rows * self.cfg.n_head)?,
            res_mlp: None,
            normed_mlp: be.zeros(rows * d)?,
            gate: be.zeros(rows * f)?,
            up: be.zeros(rows * f)?,
            h: be.zeros(rows * f)?,
        })
    }

    /// Embedding and every block; returns the final normed hidden states `[rows, d_model]`.
    /// With `saved`, each layer's activations are kept there (training); otherwise one set of
    /// buffers serves every layer.
    fn hidden(&self, ids: &[u32], batch: usize, seqlen: usize, mut saved: Option<&mut Saved<B>>) -> Result<B::Buf> {
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        let eps = self.eps();
        // The residual stream. Training keeps it at every norm's input (after the add) for the
        // backward: there each sum goes to a new buffer, kept, which the next add reads (no copy);
        // `residual` then holds the embedding until the first block keeps it.
        let mut residual = be.zeros(rows * d)?;
        be.embedding(&self.embed_tokens, ids, d, &mut residual)?;
        let mut acts = self.layer_buffers(rows)?;
        let mut attn_out = be.zeros(rows * d)?;
        let mut mlp_out = be.zeros(rows * d)?;
        for (i, l) in self.layers.iter().enumerate() {
            if saved.is_some() && i > 0 {
                acts = self.layer_buffers(rows)?;
            }
            // The previous block's MLP output joins the residual stream here, fused with the norm.
            let prev = if i == 0 { None } else { Some(&mlp_out) };
            let w = &l.input_layernorm;
            match saved.as_deref() {
                None => be.add_rmsnorm(&mut residual, prev, w, eps, rows, d, &mut acts.normed_attn)?,
                Some(s) => {
                    let missing = || Error::Backend("missing kept residual".into());
                    let last = s.layers.last().map(|p| p.res_mlp.as_ref().ok_or_else(missing)).transpose()?;
                    let normed = &mut acts.normed_attn;
                    acts.res_attn =
                        Some(super::add_rmsnorm_kept(be, &mut residual, last, prev, w, eps, rows, d, normed)?);
                }
            }
            self.attention_forward(l, batch, seqlen, &mut acts, &mut attn_out)?;
            let w = &l.post_attention_layernorm;
            // (acts.res_attn is set only when the activations are saved.)
            match acts.res_attn.as_ref() {
                None => be.add_rmsnorm(&mut residual, Some(&attn_out), w, eps, rows, d, &mut acts.normed_mlp)?,
                Some(src) => {
                    let (delta, normed) = (Some(&attn_out), &mut acts.normed_mlp);
                    let kept = super::add_rmsnorm_kept(be, &mut residual, Some(src), delta, w, eps, rows, d, normed)?;
                    acts.res_mlp = Some(kept);
                }
            }
            self.mlp_forward(l, rows, &mut acts, &mut mlp_out)?;
            if let Some(s) = saved.as_deref_mut() {
                s.layers.push(std::mem::replace(&mut acts, LayerActs::empty(be)?));
            }
        }
        let mut normed = be.zeros(rows * d)?;
        match saved.as_deref() {
            None => be.add_rmsnorm(&mut residual, Some(&mlp_out), &self.norm, eps, rows, d, &mut normed)?,
            Some(s) => {
                let last = s.layers.last().and_then(|a| a.res_mlp.as_ref());
                let w = &self.norm;
                residual =
                    super::add_rmsnorm_kept(be, &mut residual, last, Some(&mlp_out), w, eps, rows, d, &mut normed)?;
            }
        }
        if let Some(s) = saved {
            s.final_residual = Some(residual);
        }
        Ok(normed)
    }

    /// Attention sublayer: `acts.normed_attn` → q, k, v (RoPE on q and k) → causal attention →
    /// `out = o_proj(att)`.
    fn attention_forward(
        &self,
        l: &TransformerLayer<B>,
        batch: usize,
        seqlen: usize,
        acts: &mut LayerActs<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        let dims = self.attn_dims(batch, seqlen);
        let theta = self.cfg.rope_theta as f32;
        let x = View::full(&acts.normed_attn, d);
        be.linear(x, rows, d, &l.q_proj, d, None, &mut acts.q)?;
        be.linear(x, rows, d, &l.k_proj, d, None, &mut acts.k)?;
        be.linear(x, rows, d, &l.v_proj, d, None, &mut acts.v)?;
        be.rope(ViewMut::full(&mut acts.q, d), dims, 0, theta)?;
        be.rope(ViewMut::full(&mut acts.k, d), dims, 0, theta)?;
        let (q, k, v) = (View::full(&acts.q, d), View::full(&acts.k, d), View::full(&acts.v, d));
        be.attention(dims, self.scale(), q, k, v, &mut acts.att, &mut acts.lse)?;
        be.linear(View::full(&acts.att, d), rows, d, &l.o_proj, d, None, out)
    }

    /// Backward of [`Transformer::attention_forward`]: `dout` is ∂L/∂out; writes ∂L/∂normed_attn
    /// into `dx`, accumulates the weight gradients into `gl`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        l: &TransformerLayer<B>,
        gl: &mut TransformerLayer<B>,
        acts: &LayerActs<B>,
        batch: usize,
        seqlen: usize,
        dout: &B::Buf,
        s: &mut Scratch<B>,
        dx: &mut B::Buf,
    ) -> Result<()> {
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        let dims = self.attn_dims(batch, seqlen);
        let theta = self.cfg.rope_theta as f32;
        let datt = ViewMut::full(&mut s.datt, d);
        be.linear_backward(View::full(&acts.att, d), rows, d, &l.o_proj, d, dout, Some(datt), &mut gl.o_proj, None)?;
        let (q, k, v) = (View::full(&acts.q, d), View::full(&acts.k, d), View::full(&acts.v, d));
        let (dq, dk, dv) = (ViewMut::full(&mut s.dq, d), ViewMut::full(&mut s.dk, d), ViewMut::full(&mut s.dv, d));
        be.attention_backward(dims, self.scale(), q, k, v, &acts.att, &acts.lse, &s.datt, dq, dk, dv)?;
        // q and k were rotated after the projections: their gradients rotate back.
        be.rope_backward(ViewMut::full(&mut s.dq, d), dims, 0, theta)?;
        be.rope_backward(ViewMut::full(&mut s.dk, d), dims, 0, theta)?;
        let x = View::full(&acts.normed_attn, d);
        // x feeds q, k and v: the three parts of its gradient summed in dx.
        be.linear_backward(x, rows, d, &l.q_proj, d, &s.dq, Some(ViewMut::full(dx, d)), &mut gl.q_proj, None)?;
        be.linear_backward_add_dx(x, rows, d, &l.k_proj, d, &s.dk, ViewMut::full(dx, d), &mut gl.k_proj, None)?;
        be.linear_backward_add_dx(x, rows, d, &l.v_proj, d, &s.dv, ViewMut::full(dx, d), &mut gl.v_proj, None)
    }

    /// MLP sublayer: `acts.normed_mlp` → `out = down(silu(gate(x)) · up(x))`.
    fn mlp_forward(
        &self,
        l: &TransformerLayer<B>,
        rows: usize,
        acts: &mut LayerActs<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let be = &self.backend;
        let (d, f) = (self.cfg.d_model, self.cfg.d_ff);
        let x = View::full(&acts.normed_mlp, d);
        be.linear(x, rows, d, &l.gate_proj, f, None, &mut acts.gate)?;
        be.linear(x, rows, d, &l.up_proj, f, None, &mut acts.up)?;
        be.swiglu(View::full(&acts.gate, f), View::full(&acts.up, f), rows, f, &mut acts.h)?;
        be.linear(View::full(&acts.h, f), rows, f, &l.down_proj, d, None, out)
    }

    /// Backward of [`Transformer::mlp_forward`]: writes ∂L/∂normed_mlp into `dx`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_backward(
        &self,
        l: &TransformerLayer<B>,
        gl: &mut TransformerLayer<B>,
        acts: &LayerActs<B>,
        rows: usize,
        dout: &B::Buf,
        s: &mut Scratch<B>,
        dx: &mut B::Buf,
    ) -> Result<()> {
        let be = &self.backend;
        let (d, f) = (self.cfg.d_model, self.cfg.d_ff);
        let dh = ViewMut::full(&mut s.dh, f);
        be.linear_backward(View::full(&acts.h, f), rows, f, &l.down_proj, d, dout, Some(dh), &mut gl.down_proj, None)?;
        let (dgate, dup) = (ViewMut::full(&mut s.dgate, f), ViewMut::full(&mut s.dup, f));
        be.swiglu_backward(View::full(&acts.gate, f), View::full(&acts.up, f), rows, f, &s.dh, dgate, dup)?;
        let x = View::full(&acts.normed_mlp, d);
        be.linear_backward(x, rows, d, &l.gate_proj, f, &s.dgate, Some(ViewMut::full(dx, d)), &mut gl.gate_proj, None)?;
        be.linear_backward_add_dx(x, rows, d, &l.up_proj, f, &s.dup, ViewMut::full(dx, d), &mut gl.up_proj, None)
    }

    /// lm_head over every row of `normed`: `[rows, vocab]`.
    fn head_logits(&self, normed: &B::Buf, rows: usize) -> Result<B::Buf> {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let mut logits = self.backend.zeros(rows * v)?;
        self.backend.linear(View::full(normed, d), rows, d, self.head(), v, None, &mut logits)?;
        Ok(logits)
    }

    /// lm_head over the given rows of `normed`: `[rows.len(), vocab]`.
    fn logits_of_rows(&self, normed: &B::Buf, rows: &[usize]) -> Result<B::Buf> {
        let be = &self.backend;
        let d = self.cfg.d_model;
        let mut h = be.zeros(rows.len() * d)?;
        be.gather_rows(normed, rows, d, &mut h)?;
        self.head_logits(&h, rows.len())
    }

    /// Training step, forward and backward: mean next-token cross-entropy of `ids` (`[batch,
    /// seqlen]`) against `targets` (same shape, `u32::MAX` = ignored). Gradients of
    /// `grad_scale × mean loss` are *added* to `g` (so micro-batches accumulate). Returns the
    /// mean loss and the number of counted targets.
    pub fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seqlen: usize,
        grad_scale: f32,
        g: &mut Transformer<B>,
    ) -> Result<(f64, usize)> {
        self.check_ids(ids, batch, seqlen)?;
        self.check_targets(ids, targets)?;
        if g.cfg != self.cfg {
            return Err(Error::input("loss_and_grads: the gradient model has a different config"));
        }
        let count = targets.iter().filter(|&&t| t != u32::MAX).count();
        if count == 0 {
            return Err(Error::input("no targets to train on (all ignored)"));
        }
        let be = &self.backend;
        let c = &self.cfg;
        let _keeping = super::KeepingActivations::new(be);
        let (rows, d, v) = (batch * seqlen, c.d_model, c.vocab_size);
        let eps = self.eps();

        // ---- forward, keeping each layer's activations (and, last, the final residual) ----
        let mut saved = Saved { layers: Vec::with_capacity(c.n_layer), final_residual: None };
        let normed = self.hidden(ids, batch, seqlen, Some(&mut saved))?;
        let final_res = saved.final_residual.take().ok_or_else(|| Error::Backend("missing final residual".into()))?;
        let saved = saved.layers;

        // ---- lm_head + cross-entropy, in row chunks so that [rows, vocab] is never held whole ----
        let mut dnormed = be.zeros(rows * d)?;
        let scale = grad_scale / count as f32;
        let head = self.head();
        let dhead = match g.lm_head.as_mut() {
            Some(h) => h,
            None => &mut g.embed_tokens,
        };
        let (loss_sum, _) =
            super::head_cross_entropy(be, &normed, rows, d, head, v, targets, scale, Some((dhead, &mut dnormed)))?;

        // ---- backward through the blocks, last to first ----
        // dres always holds ∂L/∂(the residual stream at the current point).
        let mut dres = be.zeros(rows * d)?;
        be.rmsnorm_backward(&final_res, &self.norm, eps, rows, d, &dnormed, &mut dres, &mut g.norm)?;
        let mut s = Scratch::new(be, rows, d, c.d_ff)?;
        let mut dnormed_in = be.zeros(rows * d)?;
        let missing = || Error::Backend("missing saved residual".into());
        for i in (0..c.n_layer).rev() {
            let (l, gl, acts) = (&self.layers[i], &mut g.layers[i], &saved[i]);
            // MLP: its output was added to the stream, so ∂L/∂mlp_out = dres.
            self.mlp_backward(l, gl, acts, rows, &dres, &mut s, &mut dnormed_in)?;
            let res_mlp = acts.res_mlp.as_ref().ok_or_else(missing)?;
            be.rmsnorm_backward(
                res_mlp,
                &l.post_attention_layernorm,
                eps,
                rows,
                d,
                &dnormed_in,
                &mut dres,
                &mut gl.post_attention_layernorm,
            )?;
            // Attention: likewise ∂L/∂attn_out = dres.
            self.attention_backward(l, gl, acts, batch, seqlen, &dres, &mut s, &mut dnormed_in)?;
            let res_attn = acts.res_attn.as_ref().ok_or_else(missing)?;
            be.rmsnorm_backward(
                res_attn,
                &l.input_layernorm,
                eps,
                rows,
                d,
                &dnormed_in,
                &mut dres,
                &mut gl.input_layernorm,
            )?;
        }
        be.embedding_backward(ids, d, &dres, &mut g.embed_tokens)?;
        Ok((loss_sum / count as f64, count))
    }
}

/// What the forward keeps for the backward.
struct Saved<B: Backend> {
    layers: Vec<LayerActs<B>>,
    /// The residual stream before the final norm.
    final_residual: Option<B::Buf>,
}

/// Gradient scratch buffers reused by every layer's backward.
struct Scratch<B: Backend> {
    datt: B::Buf,
    dq: B::Buf,
    dk: B::Buf,
    dv: B::Buf,
    dh: B::Buf,
    dgate: B::Buf,
    dup: B::Buf,
}

impl<B: Backend> Scratch<B> {
    fn new(be: &B, rows: usize, d: usize, f: usize) -> Result<Self> {
        Ok(Scratch {
            datt: be.zeros(rows * d)?,
            dq: be.zeros(rows * d)?,
            dk: be.zeros(rows * d)?,
            dv: be.zeros(rows * d)?,
            dh: be.zeros(rows * f)?,
            dgate: be.zeros(rows * f)?,
            dup: be.zeros(rows * f)?,
        })
    }
}

impl<B: Backend> LayerActs<B> {
    /// Zero-sized placeholders.
    fn empty(be: &B) -> Result<Self> {
        Ok(LayerActs {
            res_attn: None,
            normed_attn: be.zeros(0)?,
            q: be.zeros(0)?,
            k: be.zeros(0)?,
            v: be.zeros(0)?,
            att: be.zeros(0)?,
            lse: be.zeros(0)?,
            res_mlp: None,
            normed_mlp: be.zeros(0)?,
            gate: be.zeros(0)?,
            up: be.zeros(0)?,
            h: be.zeros(0)?,
        })
    }
}

impl<B: Backend> LanguageModel<B> for Transformer<B> {
    fn backend(&self) -> &B {
        &self.backend
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn param_specs(&self) -> Vec<ParamSpec> {
        param_specs(&self.cfg)
    }
    fn params(&self) -> Vec<&B::Buf> {
        self.param_bufs()
    }
    fn params_mut(&mut self) -> Vec<&mut B::Buf> {
        Transformer::params_mut(self)
    }
    /// Nothing is derived from the parameters.
    fn refresh_derived(&mut self) -> Result<()> {
        Ok(())
    }
    fn zero_grads(&self) -> Result<Self> {
        Transformer::zero_grads(self)
    }
    fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seqlen: usize,
        grad_scale: f32,
        grads: &mut Self,
    ) -> Result<(f64, usize)> {
        Transformer::loss_and_grads(self, ids, targets, batch, seqlen, grad_scale, grads)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        Transformer::save(self, dir)
    }

    /// Attention is not recurrent: this runs one full forward over the whole sequences (memory
    /// linear and time quadratic in `seqlen`). It first estimates the forward's memory with
    /// [`Transformer::forward_bytes`] and returns [`Error::OutOfMemory`], without computing
    /// anything, when that exceeds [`Transformer::memory_budget`] — the runtimes report such
    /// lengths as out of memory, as the paper's tables do for attention.
    fn logits_at(&self, ids: &[u32], batch: usize, seqlen: usize, positions: &[usize]) -> Result<Vec<f32>> {
        self.check_ids(ids, batch, seqlen)?;
        if let Some(&p) = positions.iter().find(|&&p| p >= seqlen) {
            return Err(Error::input(format!("logits_at: position {p} is outside the sequence (length {seqlen})")));
        }
        let needed = self.forward_bytes(batch, seqlen, batch * positions.len());
        if needed > self.memory_budget {
            return Err(Error::OutOfMemory {
                what: format!("attention forward over {batch} × {seqlen} tokens"),
                needed_bytes: needed,
                budget_bytes: self.memory_budget,
            });
        }
        let normed = self.hidden(ids, batch, seqlen, None)?;
        let rows: Vec<usize> = (0..batch).flat_map(|b| positions.iter().map(move |&p| b * seqlen + p)).collect();
        self.backend.to_vec(&self.logits_of_rows(&normed, &rows)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn tiny(tie: bool) -> Transformer<Cpu> {
        let mut cfg = TransformerConfig::new(24, 2, 3, 11);
        cfg.d_ff = 40;
        cfg.tie_embeddings = tie;
        cfg.initializer_range = 0.3;
        Transformer::init(Cpu, cfg, 5).unwrap()
    }

    fn ids(batch: usize, seqlen: usize) -> Vec<u32> {
        (0..batch * seqlen).map(|i| ((i * 7 + i / 5) % 11) as u32).collect()
    }

    #[test]
    fn config_round_trips_through_hf_json() {
        let mut cfg = TransformerConfig::new(64, 3, 4, 100);
        cfg.rope_theta = 500.0;
        cfg.tie_embeddings = true;
        let text = serde_json::to_string(&cfg.to_hf_json()).unwrap();
        assert_eq!(TransformerConfig::from_json_str(&text, Path::new("x")).unwrap(), cfg);
        assert_eq!(cfg.d_ff, 176);
        let gqa = text.replace("\"num_key_value_heads\":4", "\"num_key_value_heads\":2");
        let err = TransformerConfig::from_json_str(&gqa, Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("grouped-query"), "{err}");
        let scaled = text.replace("\"rope_type\":\"default\"", "\"rope_type\":\"linear\"");
        assert!(TransformerConfig::from_json_str(&scaled, Path::new("x")).is_err());
    }

    #[test]
    fn logits_at_matches_forward_and_refuses_over_budget() {
        let mut m = tiny(true);
        let (batch, seqlen) = (2, 75);
        let ids = ids(batch, seqlen);
        let all = Cpu.to_vec(&m.forward(&ids, batch, seqlen, Logits::All).unwrap()).unwrap();
        let positions = [seqlen - 1, 0, 40];
        let got = m.logits_at(&ids, batch, seqlen, &positions).unwrap();
        for b in 0..batch {
            for (i, &p) in positions.iter().enumerate() {
                let (x, y) = (&got[(b * 3 + i) * 11..][..11], &all[(b * seqlen + p) * 11..][..11]);
                assert!(x.iter().zip(y).all(|(x, y)| (x - y).abs() < 1e-5), "b {b} pos {p}: {x:?} vs {y:?}");
            }
        }
        let last = Cpu.to_vec(&m.forward(&ids, batch, seqlen, Logits::Last).unwrap()).unwrap();
        assert!(last[..11].iter().zip(&all[(seqlen - 1) * 11..]).all(|(x, y)| (x - y).abs() < 1e-5));
        m.memory_budget = m.forward_bytes(batch, seqlen, batch * 3) - 1;
        match m.logits_at(&ids, batch, seqlen, &positions) {
            Err(Error::OutOfMemory { needed_bytes, budget_bytes, .. }) => assert!(needed_bytes > budget_bytes),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        // Memory is linear in the length: 2^20 tokens of a small model fit the default budget.
        assert_eq!(m.forward_bytes(1, 2000, 0), 2 * m.forward_bytes(1, 1000, 0));
        assert!(m.forward_bytes(1, 1 << 20, 1) < DEFAULT_MEMORY_BUDGET);
    }

    /// Positions are not limited by `max_position_embeddings` (RoPE extrapolates; see the module docs).
    #[test]
    fn runs_beyond_max_position_embeddings() {
        let mut m = tiny(false);
        m.cfg.max_position_embeddings = 16;
        let (batch, seqlen) = (1, 100);
        let got = m.logits_at(&ids(batch, seqlen), batch, seqlen, &[99, 15]).unwrap();
        assert!(got.iter().all(|v| v.is_finite()));
        assert_ne!(got[..11], got[11..]);
    }

    #[test]
    fn attention_is_causal_through_the_model() {
        let m = tiny(false);
        let (batch, seqlen) = (1, 40);
        let mut ids = ids(batch, seqlen);
        let a = Cpu.to_vec(&m.forward(&ids, batch, seqlen, Logits::All).unwrap()).unwrap();
        ids[30] = (ids[30] + 1) % 11;
        let b = Cpu.to_vec(&m.forward(&ids, batch, seqlen, Logits::All).unwrap()).unwrap();
        assert_eq!(a[..30 * 11], b[..30 * 11]);
        assert_ne!(a[30 * 11..], b[30 * 11..]);
    }

    /// Gradients against central finite differences of the f32 loss on a few coordinates of
    /// every tensor (the HF fixture test checks every element against PyTorch).
    #[test]
    fn gradients_match_finite_differences() {
        for tie in [false, true] {
            let mut m = tiny(tie);
            let (batch, seqlen) = (2, 9);
            let ids = ids(batch, seqlen);
            let mut targets: Vec<u32> = ids.iter().map(|&i| (i * 3 + 1) % 11).collect();
            targets[4] = u32::MAX;
            let mut g = m.zero_grads().unwrap();
            let (loss, count) = m.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            assert_eq!(count, batch * seqlen - 1);
            let (eval, _) = m.loss(&ids, &targets, batch, seqlen).unwrap();
            assert!((loss - eval).abs() < 1e-6, "{loss} vs {eval}");
            let grads: Vec<Vec<f32>> = g.param_bufs().into_iter().cloned().collect();
            let specs = param_specs(&m.cfg);
            for (ti, spec) in specs.iter().enumerate() {
                let n = grads[ti].len();
                let scale = grads[ti].iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-3) as f64;
                for &i in &[0, n / 3, n - 1] {
                    let h = 1e-2f32;
                    let x0 = m.params_mut()[ti][i];
                    m.params_mut()[ti][i] = x0 + h;
                    let lp = m.loss(&ids, &targets, batch, seqlen).unwrap().0;
                    m.params_mut()[ti][i] = x0 - h;
                    let lm = m.loss(&ids, &targets, batch, seqlen).unwrap().0;
                    m.params_mut()[ti][i] = x0;
                    let fd = (lp - lm) / (2.0 * h as f64);
                    let err = (fd - grads[ti][i] as f64).abs();
                    assert!(
                        err < 2e-2 * scale + 2e-4,
                        "tie {tie}: {}[{i}]: analytic {} vs fd {fd}",
                        spec.name,
                        grads[ti][i]
                    );
                }
            }
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let m = tiny(false);
        let dir = std::env::temp_dir().join(format!("s6-attn-save-{}", std::process::id()));
        m.save(&dir).unwrap();
        let back = Transformer::load(Cpu, &dir).unwrap();
        assert_eq!(back.cfg, m.cfg);
        for ((s, a), (_, b)) in m.named_params().into_iter().zip(back.named_params()) {
            assert_eq!(a, b, "{}", s.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_is_seeded() {
        let cfg = TransformerConfig::new(16, 1, 2, 7);
        let a = Transformer::init(Cpu, cfg.clone(), 1).unwrap();
        let b = Transformer::init(Cpu, cfg.clone(), 1).unwrap();
        let c = Transformer::init(Cpu, cfg, 2).unwrap();
        assert_eq!(a.embed_tokens, b.embed_tokens);
        assert_ne!(a.embed_tokens, c.embed_tokens);
        assert!(a.layers[0].input_layernorm.iter().all(|&w| w == 1.0));
        let std = (a.layers[0].q_proj.iter().map(|v| v * v).sum::<f32>() / 256.0).sqrt();
        assert!((std - 0.02).abs() < 0.005, "{std}");
    }

    /// End to end through [`LanguageModel`] and AdamW: a 2-layer model learns to copy a random
    /// sequence (the second half repeats the first), which needs attention to look back by a
    /// fixed offset and read the token there. Loss on the copied half falls from ln 16 ≈ 2.77.
    #[test]
    fn learns_to_copy() {
        use crate::train::optim::{adamw_update, AdamState, OptimConfig};
        let mut cfg = TransformerConfig::new(32, 2, 2, 16);
        cfg.d_ff = 64;
        let mut m = Transformer::init(Cpu, cfg, 3).unwrap();
        let (batch, half) = (16, 8);
        let seqlen = 2 * half;
        let names: Vec<String> = LanguageModel::param_specs(&m).into_iter().map(|s| s.name).collect();
        let sizes: Vec<usize> = LanguageModel::params(&m).iter().map(|b| b.len()).collect();
        let mut state = AdamState::zeros(&Cpu, &sizes).unwrap();
        let opt = OptimConfig { lr: 3e-3, weight_decay: 0.0, ..Default::default() };
        let mut rng = InitRng::new(9);
        let mut last = f64::INFINITY;
        for step in 1..=200u64 {
            let mut ids = vec![0u32; batch * seqlen];
            let mut targets = vec![u32::MAX; batch * seqlen];
            for b in 0..batch {
                for t in 0..half {
                    let tok = (rng.unit() * 16.0) as u32 % 16;
                    ids[b * seqlen + t] = tok;
                    ids[b * seqlen + half + t] = tok;
                }
                // Position t predicts t + 1: the copied half's tokens (the first one is predictable too).
                for t in half - 1..seqlen - 1 {
                    targets[b * seqlen + t] = ids[b * seqlen + t + 1];
                }
            }
            let mut g = m.zero_grads().unwrap();
            let (loss, _) = LanguageModel::loss_and_grads(&m, &ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            let grads = LanguageModel::params(&g);
            adamw_update(&Cpu, &opt, opt.lr, step, 1.0, &names, LanguageModel::params_mut(&mut m), &grads, &mut state)
                .unwrap();
            last = loss;
            if step % 25 == 0 {
                eprintln!("step {step}: loss {loss:.3}");
            }
        }
        assert!(last < 1.0, "copy loss after 200 steps: {last}");
    }

    /// Timing of one training step at the induction-heads scale (`cargo test -p s6 --lib
    /// attention_training_step_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn attention_training_step_timing() {
        let cfg = TransformerConfig::new(64, 2, 4, 16);
        let m = Transformer::init(Cpu, cfg, 1).unwrap();
        for &(batch, seqlen) in &[(8, 256), (1, 4096)] {
            let ids = ids(batch, seqlen).iter().map(|&i| i % 16).collect::<Vec<_>>();
            let targets: Vec<u32> = ids.iter().map(|&i| (i + 1) % 16).collect();
            let mut g = m.zero_grads().unwrap();
            m.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            let n = 5;
            let t = std::time::Instant::now();
            for _ in 0..n {
                m.loss_and_grads(&ids, &targets, batch, seqlen, 1.0, &mut g).unwrap();
            }
            let step = t.elapsed().as_secs_f64() / n as f64;
            let t = std::time::Instant::now();
            for _ in 0..n {
                m.forward(&ids, batch, seqlen, Logits::Last).unwrap();
            }
            let fwd = t.elapsed().as_secs_f64() / n as f64;
            eprintln!(
                "d_model 64, 2 layers, 4 heads, d_ff {}, batch {batch} × {seqlen}: train step {:.1} ms, forward {:.1} ms ({} threads)",
                m.cfg.d_ff,
                step * 1e3,
                fwd * 1e3,
                rayon::current_num_threads()
            );
        }
    }
}
