//! Model configuration: HF transformers `config.json` (`model_type: "mamba"`) and the original
//! state-spaces `config.json` (`d_model`, `n_layer`, `ssm_cfg`, ...), both read into [`MambaConfig`].
//!
//! Real configs contain non-standard JSON (`Infinity`, `NaN`), so they are parsed as JSON5.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Which published layout a checkpoint uses; decides tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// HF transformers `MambaForCausalLM`: `backbone.embeddings.weight`, `lm_head.weight` optional when tied.
    Hf,
    /// state-spaces/mamba `MambaLMHeadModel`: `backbone.embedding.weight`.
    Original,
}

/// The architecture of a Mamba-1 language model, whatever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct MambaConfig {
    /// Model width (`hidden_size`, `d_model`).
    pub d_model: usize,
    /// Number of Mamba blocks.
    pub n_layer: usize,
    /// Vocabulary size of the embedding and lm_head, padding included.
    pub vocab_size: usize,
    /// SSM state size N (`state_size`, `d_state`).
    pub d_state: usize,
    /// Inner width of the block (`intermediate_size`, `expand * d_model`).
    pub d_inner: usize,
    /// Depthwise conv kernel size (`conv_kernel`, `d_conv`).
    pub d_conv: usize,
    /// Rank of the Δ projection (`time_step_rank`, `dt_rank`).
    pub dt_rank: usize,
    /// Bias in in_proj and out_proj.
    pub use_bias: bool,
    /// Bias in the depthwise conv1d.
    pub use_conv_bias: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Whether lm_head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Residual stream kept in fp32 (always true in s6's f32 compute; recorded for round trips).
    pub residual_in_fp32: bool,
    /// Layout the checkpoint's tensor names follow.
    pub layout: Layout,
    /// Token ids of BOS/EOS/PAD when the config names them.
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Which parts of the block are input-dependent (the paper's ablations); [`Ablation::MAMBA`]
    /// for every published checkpoint.
    pub ablation: Ablation,
}

/// The paper's ablations of the Mamba block (Tables 1 and 7). A non-selective Δ is
/// `softplus(dt_bias)` (a learned per-channel parameter); a non-selective B or C is a learned
/// `[d_state]` vector shared by every position; without the gate, `y = C·h + D·u`.
/// Stored in `config.json` as `"s6_ablation"` only when it differs from Mamba.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ablation {
    pub selective_delta: bool,
    pub selective_b: bool,
    pub selective_c: bool,
    pub gate: bool,
}

impl Ablation {
    /// Mamba: Δ, B and C functions of the input, gated.
    pub const MAMBA: Ablation = Ablation { selective_delta: true, selective_b: true, selective_c: true, gate: true };
    /// The time-invariant (S4D-like) ablation: Δ, B, C learned parameters, gated block kept.
    pub const LTI: Ablation = Ablation { selective_delta: false, selective_b: false, selective_c: false, gate: true };

    /// Whether any of Δ, B, C is not a function of the input.
    pub fn is_mamba(&self) -> bool {
        *self == Ablation::MAMBA
    }
}

/// Columns of `x_proj`'s output `[δ | B | C]` under an [`Ablation`]: only the selective parts are
/// produced, in that order. The one place these offsets are computed (model, init, counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XProjCols {
    /// First column of the low-rank δ (`dt_rank` wide), when Δ is selective.
    pub dt: Option<usize>,
    /// First column of `B_t` (`d_state` wide), when B is selective.
    pub b: Option<usize>,
    /// First column of `C_t` (`d_state` wide), when C is selective.
    pub c: Option<usize>,
    /// Output width (rows of `x_proj.weight`); 0 when nothing is selective (no `x_proj`).
    pub width: usize,
}

impl Default for Ablation {
    fn default() -> Self {
        Ablation::MAMBA
    }
}

/// Paper-initialization hyperparameters (used by `s6 init` and training from scratch).
#[derive(Debug, Clone, PartialEq)]
pub struct InitConfig {
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
    pub dt_scale: f64,
    pub initializer_range: f64,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig { dt_min: 0.001, dt_max: 0.1, dt_init_floor: 1e-4, dt_scale: 1.0, initializer_range: 0.02 }
    }
}

impl MambaConfig {
    /// A config in HF layout with the defaults of `MambaConfig` in transformers.
    pub fn new(d_model: usize, n_layer: usize, vocab_size: usize) -> Self {
        MambaConfig {
            d_model,
            n_layer,
            vocab_size,
            d_state: 16,
            d_inner: 2 * d_model,
            d_conv: 4,
            dt_rank: d_model.div_ceil(16),
            use_bias: false,
            use_conv_bias: true,
            norm_eps: 1e-5,
            tie_embeddings: true,
            residual_in_fp32: true,
            layout: Layout::Hf,
            bos_token_id: Some(0),
            eos_token_id: Some(0),
            pad_token_id: Some(0),
            ablation: Ablation::MAMBA,
        }
    }

    /// The presets of the paper's model family (the state-spaces checkpoints, vocab padded to 50280).
    pub fn preset(name: &str) -> Result<Self> {
        let (d_model, n_layer) = match name {
            "mamba-130m" => (768, 24),
            "mamba-370m" => (1024, 48),
            "mamba-790m" => (1536, 48),
            "mamba-1.4b" => (2048, 48),
            "mamba-2.8b" => (2560, 64),
            other => {
                return Err(Error::input(format!("unknown preset '{other}'; expected one of {}", PRESETS.join(", "))))
            }
        };
        Ok(MambaConfig::new(d_model, n_layer, 50280))
    }

    /// Reads `config.json` in either layout.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = json5::from_str(text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| Error::config(path, "expected a JSON object at the top level"))?;
        if obj.contains_key("d_model") && !obj.contains_key("hidden_size") {
            parse_original(obj, path)
        } else {
            parse_hf(obj, path)
        }
    }

    /// Checks invariants every model path relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fields = [
            ("hidden_size", self.d_model),
            ("num_hidden_layers", self.n_layer),
            ("vocab_size", self.vocab_size),
            ("state_size", self.d_state),
            ("intermediate_size", self.d_inner),
            ("conv_kernel", self.d_conv),
            ("time_step_rank", self.dt_rank),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(Error::config(path, format!("field '{name}' must be positive, found 0")));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::config(path, format!("vocab_size {} is too large", self.vocab_size)));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::config(
                path,
                format!("layer_norm_epsilon must be finite and >= 0, found {}", self.norm_eps),
            ));
        }
        Ok(())
    }

    /// Number of parameters (lm_head counted only when untied).
    pub fn num_params(&self) -> usize {
        let (d, di, n, r, k) = (self.d_model, self.d_inner, self.d_state, self.dt_rank, self.d_conv);
        let bias = |b: bool, n: usize| if b { n } else { 0 };
        let ab = &self.ablation;
        let iw = self.in_proj_width();
        let per_layer = d // norm
            + iw * d + bias(self.use_bias, iw) // in_proj
            + di * k + bias(self.use_conv_bias, di) // conv1d
            + self.x_proj_cols().width * di // x_proj
            + bias(ab.selective_delta, di * r) + di // dt_proj weight, bias
            + di * n + di // A_log, D
            + bias(!ab.selective_b, n) + bias(!ab.selective_c, n) // shared B, C
            + d * di + bias(self.use_bias, d); // out_proj
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + self.n_layer * per_layer + d + head
    }

    /// Output width of `in_proj`: `[x, z]` (`2·d_inner`), or `x` alone without the gate.
    pub fn in_proj_width(&self) -> usize {
        if self.ablation.gate {
            2 * self.d_inner
        } else {
            self.d_inner
        }
    }

    /// Columns of `x_proj`'s output under this config's ablation.
    pub fn x_proj_cols(&self) -> XProjCols {
        let ab = &self.ablation;
        let mut width = 0;
        let mut take = |on: bool, w: usize| {
            on.then(|| {
                width += w;
                width - w
            })
        };
        let dt = take(ab.selective_delta, self.dt_rank);
        let b = take(ab.selective_b, self.d_state);
        let c = take(ab.selective_c, self.d_state);
        XProjCols { dt, b, c, width }
    }

    /// The config as HF `config.json` (what `save_pretrained` writes for `MambaConfig`).
    pub fn to_hf_json(&self, init: &InitConfig) -> Value {
        let mut v = serde_json::json!({
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.vocab_size,
            "state_size": self.d_state,
            "intermediate_size": self.d_inner,
            "expand": self.d_inner / self.d_model,
            "conv_kernel": self.d_conv,
            "time_step_rank": self.dt_rank,
            "use_bias": self.use_bias,
            "use_conv_bias": self.use_conv_bias,
            "layer_norm_epsilon": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "residual_in_fp32": self.residual_in_fp32,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "time_step_min": init.dt_min,
            "time_step_max": init.dt_max,
            "time_step_floor": init.dt_init_floor,
            "time_step_scale": init.dt_scale,
            "time_step_init_scheme": "random",
            "initializer_range": init.initializer_range,
            "rescale_prenorm_residual": false,
            "use_cache": true,
            "dtype": "float32",
        });
        if !self.ablation.is_mamba() {
            let a = &self.ablation;
            v["s6_ablation"] = serde_json::json!({
                "selective_delta": a.selective_delta,
                "selective_b": a.selective_b,
                "selective_c": a.selective_c,
                "gate": a.gate,
            });
        }
        v
    }
}

/// Names accepted by [`MambaConfig::preset`].
pub const PRESETS: [&str; 5] = ["mamba-130m", "mamba-370m", "mamba-790m", "mamba-1.4b", "mamba-2.8b"];

/// Typed access to JSON fields with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n as usize)),
                None => {
                    Err(Error::config(self.path, format!("field '{key}' must be a non-negative integer, found {v}")))
                }
            },
        }
    }
    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| Error::config(self.path, format!("missing required field '{key}'")))
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Error::config(self.path, format!("field '{key}' must be true or false, found {v}"))),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => {
                v.as_f64().ok_or_else(|| Error::config(self.path, format!("field '{key}' must be a number, found {v}")))
            }
        }
    }
    fn token_id(&self, key: &str) -> Option<u32> {
        // Some configs give lists or nulls here; only a single id is used.
        self.obj.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok())
    }
    /// `time_step_rank`/`dt_rank`: an integer or "auto" = ceil(d_model / 16).
    fn rank(&self, key: &str, d_model: usize) -> Result<usize> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(d_model.div_ceil(16)),
            Some(Value::String(s)) if s == "auto" => Ok(d_model.div_ceil(16)),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                Error::config(self.path, format!("field '{key}' must be an integer or \"auto\", found {v}"))
            }),
        }
    }
}

fn parse_hf(obj: &Map<String, Value>, path: &Path) -> Result<MambaConfig> {
    let f = Fields { obj, path };
    match obj.get("model_type").and_then(Value::as_str) {
        Some("mamba") => {}
        Some(other) => {
            return Err(Error::config(
                path,
                format!("model_type '{other}' is not supported; s6 reads Mamba-1 models (model_type \"mamba\")"),
            ))
        }
        None => {
            return Err(Error::config(
                path,
                "neither an HF config (no 'model_type') nor a state-spaces config (no 'd_model')",
            ))
        }
    }
    if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" && act != "swish" {
            return Err(Error::config(path, format!("hidden_act '{act}' is not supported (only silu)")));
        }
    }
    let d_model = f.usize_req("hidden_size")?;
    let expand = f.usize_opt("expand")?.unwrap_or(2);
    let d_inner = f.usize_opt("intermediate_size")?.unwrap_or(expand * d_model);
    let cfg = MambaConfig {
        d_model,
        n_layer: f.usize_req("num_hidden_layers")?,
        vocab_size: f.usize_req("vocab_size")?,
        d_state: f.usize_opt("state_size")?.unwrap_or(16),
        d_inner,
        d_conv: f.usize_opt("conv_kernel")?.unwrap_or(4),
        dt_rank: f.rank("time_step_rank", d_model)?,
        use_bias: f.bool_or("use_bias", false)?,
        use_conv_bias: f.bool_or("use_conv_bias", true)?,
        norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
        tie_embeddings: f.bool_or("tie_word_embeddings", true)?,
        residual_in_fp32: f.bool_or("residual_in_fp32", true)?,
        layout: Layout::Hf,
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
        ablation: parse_ablation(obj, path)?,
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// Reads the optional `"s6_ablation"` object (absent: Mamba).
fn parse_ablation(obj: &Map<String, Value>, path: &Path) -> Result<Ablation> {
    let m = match obj.get("s6_ablation") {
        None | Some(Value::Null) => return Ok(Ablation::MAMBA),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(Error::config(path, format!("field 's6_ablation' must be an object, found {v}"))),
    };
    const KEYS: [&str; 4] = ["selective_delta", "selective_b", "selective_c", "gate"];
    if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(Error::config(path, format!("s6_ablation: unknown field '{k}'; expected {}", KEYS.join(", "))));
    }
    let f = Fields { obj: m, path };
    Ok(Ablation {
        selective_delta: f.bool_or("selective_delta", true)?,
        selective_b: f.bool_or("selective_b", true)?,
        selective_c: f.bool_or("selective_c", true)?,
        gate: f.bool_or("gate", true)?,
    })
}

fn parse_original(obj: &Map<String, Value>, path: &Path) -> Result<MambaConfig> {
    let f = Fields { obj, path };
    if !f.bool_or("rms_norm", true)? {
        return Err(Error::config(
            path,
            "rms_norm false (LayerNorm) is not supported; s6 implements the RMSNorm Mamba of the published checkpoints",
        ));
    }
    let empty = Map::new();
    let ssm = match obj.get("ssm_cfg") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => return Err(Error::config(path, format!("field 'ssm_cfg' must be an object, found {v}"))),
    };
    if let Some(layer) = ssm.get("layer").and_then(Value::as_str) {
        if layer != "Mamba1" {
            return Err(Error::config(path, format!("ssm_cfg.layer '{layer}' is not supported (only Mamba1)")));
        }
    }
    let s = Fields { obj: ssm, path };
    let d_model = f.usize_req("d_model")?;
    let mut vocab_size = f.usize_req("vocab_size")?;
    let pad = f.usize_opt("pad_vocab_size_multiple")?.unwrap_or(8).max(1);
    // MambaLMHeadModel pads the vocabulary up to a multiple; the checkpoint's tensors have the padded size.
    vocab_size = vocab_size.div_ceil(pad) * pad;
    let expand = s.usize_opt("expand")?.unwrap_or(2);
    let cfg = MambaConfig {
        d_model,
        n_layer: f.usize_req("n_layer")?,
        vocab_size,
        d_state: s.usize_opt("d_state")?.unwrap_or(16),
        d_inner: expand * d_model,
        d_conv: s.usize_opt("d_conv")?.unwrap_or(4),
        dt_rank: s.rank("dt_rank", d_model)?,
        use_bias: s.bool_or("bias", false)?,
        use_conv_bias: s.bool_or("conv_bias", true)?,
        norm_eps: f.f64_or("norm_epsilon", 1e-5)?,
        tie_embeddings: f.bool_or("tie_embeddings", true)?,
        residual_in_fp32: f.bool_or("residual_in_fp32", true)?,
        layout: Layout::Original,
        bos_token_id: None,
        eos_token_id: Some(0),
        pad_token_id: None,
        ablation: Ablation::MAMBA,
    };
    cfg.validate(path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MambaConfig> {
        MambaConfig::from_json_str(s, Path::new("config.json"))
    }

    #[test]
    fn hf_config_with_defaults_and_auto_rank() {
        let c = parse(r#"{"model_type":"mamba","hidden_size":768,"num_hidden_layers":24,"vocab_size":50280,"time_step_rank":"auto"}"#).unwrap();
        assert_eq!((c.d_inner, c.dt_rank, c.d_state, c.d_conv), (1536, 48, 16, 4));
        assert!(c.tie_embeddings && c.use_conv_bias && !c.use_bias);
        assert_eq!(c.layout, Layout::Hf);
    }

    #[test]
    fn nonstandard_json_infinity_and_nan() {
        let c = parse(r#"{"model_type":"mamba","hidden_size":64,"num_hidden_layers":2,"vocab_size":100,"time_step_max":Infinity,"x":NaN,"y":-Infinity}"#).unwrap();
        assert_eq!(c.d_model, 64);
    }

    #[test]
    fn original_config_pads_vocab() {
        let c = parse(r#"{"d_model":768,"n_layer":24,"vocab_size":50277,"ssm_cfg":{},"rms_norm":true,"residual_in_fp32":true,"fused_add_norm":true,"pad_vocab_size_multiple":8}"#).unwrap();
        assert_eq!(c.vocab_size, 50280);
        assert_eq!(c.dt_rank, 48);
        assert_eq!(c.layout, Layout::Original);
    }

    #[test]
    fn unsupported_settings_are_errors() {
        let e = parse(r#"{"d_model":64,"n_layer":2,"vocab_size":10,"rms_norm":false}"#).unwrap_err();
        assert!(e.to_string().contains("rms_norm false"), "{e}");
        let e = parse(r#"{"model_type":"mamba2","hidden_size":64,"num_hidden_layers":2,"vocab_size":10}"#).unwrap_err();
        assert!(e.to_string().contains("mamba2"), "{e}");
        let e = parse(r#"{"model_type":"mamba","num_hidden_layers":2,"vocab_size":10}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e =
            parse(r#"{"model_type":"mamba","hidden_size":"big","num_hidden_layers":2,"vocab_size":10}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e = parse("{not json").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn ablation_round_trips_and_is_checked() {
        let mut c = MambaConfig::new(32, 2, 16);
        c.ablation = Ablation { selective_b: false, gate: false, ..Ablation::MAMBA };
        let text = c.to_hf_json(&InitConfig::default()).to_string();
        assert_eq!(parse(&text).unwrap().ablation, c.ablation);
        let plain = MambaConfig::new(32, 2, 16).to_hf_json(&InitConfig::default());
        assert!(plain.get("s6_ablation").is_none());
        let e = parse(r#"{"model_type":"mamba","hidden_size":8,"num_hidden_layers":1,"vocab_size":4,"s6_ablation":{"gated":false}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("gated"), "{e}");
    }

    #[test]
    fn preset_130m_param_count() {
        let c = MambaConfig::preset("mamba-130m").unwrap();
        // The state-spaces mamba-130m checkpoint has 129,135,360 parameters (tied embeddings).
        assert_eq!(c.num_params(), 129_135_360);
        assert!(MambaConfig::preset("mamba-9b").is_err());
    }
}
