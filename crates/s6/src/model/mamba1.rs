//! The Mamba-1 language model (Gu & Dao, 2023): embedding → N × (RMSNorm → Mamba block, residual)
//! → RMSNorm → lm_head. Written once against [`Backend`]; the same code serves whole-sequence
//! forward, chunked prefill and recurrent decoding, because the scan and conv carry explicit state.
//!
//! Mamba block, per token row: `[x, z] = in_proj(h)`, `u = silu(conv1d(x))`,
//! `[δ, B, C] = x_proj(u)`, `Δ = softplus(dt_proj(δ) + b)`, selective scan over time with
//! `A = -exp(A_log)`, `y = (C·h + D·u) · silu(z)`, `out = out_proj(y)`.
//!
//! # Ablations (paper Tables 1 and 7), from [`MambaConfig::ablation`]
//!
//! The same code runs every variant; each switch removes parameters rather than zeroing them:
//! - `gate = false` ("no gate"): `y = C·h + D·u`. `in_proj` produces `x` only:
//!   `in_proj.weight` is `[d_inner, d_model]` (its bias `[d_inner]`).
//! - `selective_delta = false`: `Δ = softplus(b)` with `b` the learned per-channel
//!   `mixer.dt_proj.bias` (same initialization as Mamba's); no `dt_proj.weight`, no δ columns in
//!   `x_proj`.
//! - `selective_b = false`: `B` is a learned `[d_state]` vector `mixer.B` shared by every position
//!   and channel (a broadcast view, `ld = 0`, in the scan); no B columns in `x_proj`. Its gradient
//!   is the column sum of the scan's per-row `∂B_t` ([`Backend::sum_rows`]).
//! - `selective_c = false`: the same for `C` (`mixer.C`).
//!
//! `x_proj` keeps the columns of the selective parts in the order `[δ, B, C]`
//! ([`MambaConfig::x_proj_cols`]); with none of them (the time-invariant ablation, `LTI`) there is
//! no `x_proj` at all. Checkpoints of ablated models carry `"s6_ablation"` in config.json and load
//! back into s6 only.

use std::path::Path;

use crate::backend::{
    Backend, BlockStepArgs, BlockStepOut, MixerStepArgs, MixerStepOut, MixerWeights, ScanArgs, ScanDims, ScanGrads,
    Strided, View, ViewMut,
};
use crate::config::MambaConfig;
use crate::formats::tensors::TensorFile;
use crate::{Error, Result};

mod decode;
pub use decode::{DecodeMode, Decoder};

/// One Mamba block with its pre-norm. Field names follow the checkpoint names.
pub struct MambaLayer<B: Backend> {
    pub norm: B::Buf,
    /// `[in_proj_width, d_model]`: `[x; z]`, or `x` alone without the gate.
    pub in_proj: B::Buf,
    pub in_proj_bias: Option<B::Buf>,
    /// `[d_inner, d_conv]` (the checkpoint's `[d_inner, 1, d_conv]`).
    pub conv1d: B::Buf,
    pub conv1d_bias: Option<B::Buf>,
    /// `[x_proj_cols().width, d_inner]`; `None` when none of Δ, B, C is selective.
    pub x_proj: Option<B::Buf>,
    /// `[d_inner, dt_rank]`; `None` when Δ is not selective.
    pub dt_proj: Option<B::Buf>,
    pub dt_proj_bias: B::Buf,
    pub a_log: B::Buf,
    /// `-exp(A_log)`, derived once at load instead of at every step.
    pub a: B::Buf,
    /// The shared `[d_state]` B (`mixer.B`) when B is not selective.
    pub b: Option<B::Buf>,
    /// The shared `[d_state]` C (`mixer.C`) when C is not selective.
    pub c: Option<B::Buf>,
    pub d: B::Buf,
    pub out_proj: B::Buf,
    pub out_proj_bias: Option<B::Buf>,
}

/// The Mamba-1 causal language model.
pub struct Mamba<B: Backend> {
    pub cfg: MambaConfig,
    pub backend: B,
    pub embedding: B::Buf,
    pub layers: Vec<MambaLayer<B>>,
    pub norm_f: B::Buf,
    /// `None` when tied to the embedding.
    pub lm_head: Option<B::Buf>,
    /// What a training step keeps for its backward pass (not a parameter; [`Recompute::Light`]
    /// when built).
    pub recompute: Recompute,
}

/// What [`Mamba::loss_and_grads`] keeps of each layer's activations for the backward pass; the
/// rest is recomputed there, layer by layer, from what was kept (results are the same, bit for
/// bit: the same ops run on the same inputs). Nothing of size `d_inner × d_state` is ever kept
/// either way: the scan backward recomputes the states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Keep the residual stream, in_proj's output `xz`, x_proj's output `xdbl` and the scan
    /// output `y` (`d_model + 3·d_inner + dt_rank + 2·d_state` floats per token and layer);
    /// recompute the norm, the conv and dt_proj (a few percent of a step's FLOPs).
    #[default]
    Light,
    /// Keep only the residual stream, `xz` and `xdbl` (`d_model + 2·d_inner + dt_rank +
    /// 2·d_state` floats per token and layer) and also recompute `y` with a second scan forward
    /// per layer: the least memory, for a few percent more time.
    Full,
    /// Keep everything [`Recompute::Light`] keeps and also the norm's output, the conv's `u` and
    /// dt_proj's `Δ` (`2·d_model + 5·d_inner + dt_rank + 2·d_state` floats per token and layer,
    /// fewer where the backend holds some in bf16): the backward recomputes nothing but the
    /// scan's states. The most memory, the least time (the norm, the conv and dt_proj's product
    /// once per layer instead of twice).
    None,
}

impl std::str::FromStr for Recompute {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "light" => Ok(Recompute::Light),
            "full" => Ok(Recompute::Full),
            "none" => Ok(Recompute::None),
            o => Err(Error::input(format!("--recompute '{o}': expected light, full or none"))),
        }
    }
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[batch * seqlen, vocab]`.
    All,
    /// The last position of each sequence: `[batch, vocab]` (prefill and decode).
    Last,
}

/// Recurrent state of a batch of sequences, owned by the caller: per layer the conv window
/// `[batch, d_conv - 1, d_inner]` and the SSM state `[batch, d_inner, d_state]` (fp32).
/// Its size does not depend on the sequence length.
pub struct MambaState<B: Backend> {
    pub batch: usize,
    pub conv: Vec<B::Buf>,
    pub ssm: Vec<B::Buf>,
}

/// Activations of one layer: what a forward writes on its way through the block. Per token
/// `d_model + 5·d_inner + dt_rank + 2·d_state` floats (fewer for ablations); a training step
/// keeps only part of them per layer ([`Recompute`]). `delta` stays zero when Δ is not
/// selective (the scan then adds the bias only).
pub struct LayerActs<B: Backend> {
    pub normed: B::Buf,
    pub xz: B::Buf,
    pub u: B::Buf,
    pub xdbl: B::Buf,
    pub delta: B::Buf,
    pub y: B::Buf,
}

/// Which steps of [`Mamba::mixer_inner`] run (the conv and dt_proj always do).
#[derive(Clone, Copy)]
struct InnerSteps {
    /// x_proj's product (false: `acts.xdbl` was kept from the forward).
    x_proj: bool,
    /// The scan (false: the backward of [`Recompute::Light`] kept `acts.y`).
    scan: bool,
}

/// What the training forward keeps of one layer for the backward ([`Recompute`]).
struct Kept<B: Backend> {
    /// The residual stream after the add: the layer norm's input.
    residual: B::Buf,
    /// in_proj's output `[rows, 2·d_inner]`.
    xz: B::Buf,
    /// x_proj's output `[rows, dt_rank + 2·d_state]`: few floats per token, and keeping it
    /// spares the backward x_proj's product (a thin one that runs far from the GPU's peak).
    xdbl: B::Buf,
    /// The scan output; `None` under [`Recompute::Full`].
    y: Option<B::Buf>,
    /// The norm's output, the conv's `u` and dt_proj's `Δ`, under [`Recompute::None`] only.
    inner: Option<KeptInner<B>>,
}

/// What [`Recompute::None`] keeps beyond [`Kept`]'s other fields.
struct KeptInner<B: Backend> {
    normed: B::Buf,
    u: B::Buf,
    delta: B::Buf,
}

/// One parameter: HF name and shape.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The parameters of a config, in HF names, in checkpoint order. Ablations drop parameters and
/// add the shared `mixer.B` / `mixer.C` (after `A_log`), see the module docs.
pub fn param_specs(cfg: &MambaConfig) -> Vec<ParamSpec> {
    let (d, di, n, r, k) = (cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv);
    let (ab, iw, xw) = (cfg.ablation, cfg.in_proj_width(), cfg.x_proj_cols().width);
    let mut v = vec![ParamSpec { name: "backbone.embeddings.weight".into(), shape: vec![cfg.vocab_size, d] }];
    for i in 0..cfg.n_layer {
        let p = |s: &str, shape: Vec<usize>| ParamSpec { name: format!("backbone.layers.{i}.{s}"), shape };
        v.push(p("norm.weight", vec![d]));
        v.push(p("mixer.in_proj.weight", vec![iw, d]));
        if cfg.use_bias {
            v.push(p("mixer.in_proj.bias", vec![iw]));
        }
        v.push(p("mixer.conv1d.weight", vec![di, 1, k]));
        if cfg.use_conv_bias {
            v.push(p("mixer.conv1d.bias", vec![di]));
        }
        if xw > 0 {
            v.push(p("mixer.x_proj.weight", vec![xw, di]));
        }
        if ab.selective_delta {
            v.push(p("mixer.dt_proj.weight", vec![di, r]));
        }
        v.push(p("mixer.dt_proj.bias", vec![di]));
        v.push(p("mixer.A_log", vec![di, n]));
        if !ab.selective_b {
            v.push(p("mixer.B", vec![n]));
        }
        if !ab.selective_c {
            v.push(p("mixer.C", vec![n]));
        }
        v.push(p("mixer.D", vec![di]));
        v.push(p("mixer.out_proj.weight", vec![d, di]));
        if cfg.use_bias {
            v.push(p("mixer.out_proj.bias", vec![d]));
        }
    }
    v.push(ParamSpec { name: "backbone.norm_f.weight".into(), shape: vec![d] });
    if !cfg.tie_embeddings {
        v.push(ParamSpec { name: "lm_head.weight".into(), shape: vec![cfg.vocab_size, d] });
    }
    v
}

/// Checkpoint names that mean the same tensor in the other layout.
fn aliases(name: &str) -> &[&str] {
    match name {
        "backbone.embeddings.weight" => &["backbone.embeddings.weight", "backbone.embedding.weight"],
        _ => &[],
    }
}

impl<B: Backend> Mamba<B> {
    /// Builds the model from named host tensors; `get(name, shape)` returns the values of a
    /// parameter (in HF names) after checking its shape.
    pub fn from_params(
        backend: B,
        cfg: MambaConfig,
        mut get: impl FnMut(&ParamSpec) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let specs = param_specs(&cfg);
        let mut it = specs.iter();
        let mut next = |backend: &B| -> Result<B::Buf> {
            let spec = it.next().ok_or_else(|| Error::Backend("parameter list exhausted".into()))?;
            backend.from_vec(get(spec)?)
        };
        let embedding = next(&backend)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let ab = cfg.ablation;
        let has_x_proj = cfg.x_proj_cols().width > 0;
        for _ in 0..cfg.n_layer {
            let norm = next(&backend)?;
            let in_proj = next(&backend)?;
            let in_proj_bias = if cfg.use_bias { Some(next(&backend)?) } else { None };
            let conv1d = next(&backend)?;
            let conv1d_bias = if cfg.use_conv_bias { Some(next(&backend)?) } else { None };
            let x_proj = if has_x_proj { Some(next(&backend)?) } else { None };
            let dt_proj = if ab.selective_delta { Some(next(&backend)?) } else { None };
            let dt_proj_bias = next(&backend)?;
            let a_log = next(&backend)?;
            let mut a = backend.zeros(backend.len(&a_log))?;
            backend.neg_exp(&a_log, &mut a)?;
            let b = if ab.selective_b { None } else { Some(next(&backend)?) };
            let c = if ab.selective_c { None } else { Some(next(&backend)?) };
            let d = next(&backend)?;
            let out_proj = next(&backend)?;
            let out_proj_bias = if cfg.use_bias { Some(next(&backend)?) } else { None };
            layers.push(MambaLayer {
                norm,
                in_proj,
                in_proj_bias,
                conv1d,
                conv1d_bias,
                x_proj,
                dt_proj,
                dt_proj_bias,
                a_log,
                a,
                b,
                c,
                d,
                out_proj,
                out_proj_bias,
            });
        }
        let norm_f = next(&backend)?;
        let lm_head = if cfg.tie_embeddings { None } else { Some(next(&backend)?) };
        Ok(Mamba { cfg, backend, embedding, layers, norm_f, lm_head, recompute: Recompute::default() })
    }

    /// Loads a model directory (config.json + weights in either published layout).
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::config(&cfg_path, "not found: a model directory needs config.json"));
        }
        let cfg = MambaConfig::from_file(&cfg_path)?;
        let file = TensorFile::open_model_dir(dir)?;
        Self::from_tensor_file(backend, cfg, &file)
    }

    /// Writes `config.json` and `model.safetensors` (f32) into `dir` (created if needed), each
    /// atomically: loadable by [`Mamba::load`] and by transformers' `MambaForCausalLM` (the
    /// ablations' extra `s6_ablation` field aside).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut params = Vec::new();
        for (spec, buf) in self.params() {
            params.push((spec, self.backend.to_vec(buf)?));
        }
        crate::model::save::save_hf(
            dir,
            &self.cfg,
            &crate::config::InitConfig::default(),
            &params,
            crate::formats::tensors::SaveDType::F32,
        )
    }

    /// Builds the model from an opened checkpoint, checking names and shapes.
    pub fn from_tensor_file(backend: B, cfg: MambaConfig, file: &TensorFile) -> Result<Self> {
        let specs = param_specs(&cfg);
        let mut used: Vec<&str> = Vec::new();
        for spec in &specs {
            let names = aliases(&spec.name);
            let found = if names.is_empty() {
                Some(spec.name.as_str())
            } else {
                names.iter().copied().find(|n| file.contains(n))
            };
            match found {
                Some(n) if file.contains(n) => used.push(n),
                _ => {
                    return Err(Error::weights(
                        &file.source,
                        format!("missing tensor '{}' (expected shape {:?})", spec.name, spec.shape),
                    ))
                }
            }
        }
        // A tied checkpoint may still carry lm_head.weight (the state-spaces .bin files do).
        let tolerated = |n: &str| cfg.tie_embeddings && n == "lm_head.weight";
        let extra: Vec<&str> = file.names().filter(|n| !used.contains(n) && !tolerated(n)).collect();
        if !extra.is_empty() {
            return Err(Error::weights(
                &file.source,
                format!(
                    "unexpected tensor(s) for this config: {}",
                    extra.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut idx = 0;
        Self::from_params(backend, cfg, |spec| {
            let name = used[idx];
            idx += 1;
            let (values, shape) = file.f32(name)?;
            if shape != spec.shape {
                return Err(Error::weights(
                    &file.source,
                    format!("tensor '{name}' has shape {shape:?}, expected {:?}", spec.shape),
                ));
            }
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::weights(
                    &file.source,
                    format!("tensor '{name}' has a non-finite value at index {bad}"),
                ));
            }
            Ok(values)
        })
    }

    /// Named parameters (HF names), in checkpoint order, with shapes: for saving and training.
    pub fn params(&self) -> Vec<(ParamSpec, &B::Buf)> {
        let mut bufs: Vec<&B::Buf> = vec![&self.embedding];
        for l in &self.layers {
            bufs.push(&l.norm);
            bufs.push(&l.in_proj);
            bufs.extend(l.in_proj_bias.as_ref());
            bufs.push(&l.conv1d);
            bufs.extend(l.conv1d_bias.as_ref());
            bufs.extend(l.x_proj.as_ref());
            bufs.extend(l.dt_proj.as_ref());
            bufs.extend([&l.dt_proj_bias, &l.a_log]);
            bufs.extend(l.b.as_ref());
            bufs.extend(l.c.as_ref());
            bufs.extend([&l.d, &l.out_proj]);
            bufs.extend(l.out_proj_bias.as_ref());
        }
        bufs.push(&self.norm_f);
        bufs.extend(self.lm_head.as_ref());
        param_specs(&self.cfg).into_iter().zip(bufs).collect()
    }

    /// A zero state (fresh sequences) for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> Result<MambaState<B>> {
        let c = &self.cfg;
        let mut conv = Vec::with_capacity(c.n_layer);
        let mut ssm = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            conv.push(self.backend.zeros(batch * (c.d_conv - 1) * c.d_inner)?);
            ssm.push(self.backend.zeros(batch * c.d_inner * c.d_state)?);
        }
        Ok(MambaState { batch, conv, ssm })
    }

    /// Bytes of decoding state per sequence (constant in the sequence length).
    pub fn state_bytes_per_sequence(&self) -> usize {
        let c = &self.cfg;
        4 * c.n_layer * c.d_inner * (c.d_conv - 1 + c.d_state)
    }

    /// Runs `batch` sequences of `seqlen` tokens each (`ids` row-major `[batch, seqlen]`), starting
    /// from `state` and leaving the final state in it. Returns logits (see [`Logits`]).
    pub fn forward(
        &self,
        ids: &[u32],
        batch: usize,
        seqlen: usize,
        state: &mut MambaState<B>,
        which: Logits,
    ) -> Result<B::Buf> {
        self.check_ids(ids, batch, seqlen)?;
        if state.batch != batch {
            return Err(Error::input(format!("forward: state holds {} sequences, input has {batch}", state.batch)));
        }
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        let normed = self.hidden(ids, batch, seqlen, state)?;
        let v = self.cfg.vocab_size;
        match which {
            Logits::All => {
                let mut logits = be.zeros(rows * v)?;
                be.linear(View::full(&normed, d), rows, d, self.head(), v, None, &mut logits)?;
                Ok(logits)
            }
            Logits::Last => {
                let last: Vec<usize> = (0..batch).map(|b| b * seqlen + seqlen - 1).collect();
                self.logits_of_rows(&normed, &last)
            }
        }
    }

    /// Logits `[rows.len(), vocab]` of the given rows of the final normed hidden states.
    fn logits_of_rows(&self, normed: &B::Buf, rows: &[usize]) -> Result<B::Buf> {
        let be = &self.backend;
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let mut h = be.zeros(rows.len() * d)?;
        be.gather_rows(normed, rows, d, &mut h)?;
        let mut logits = be.zeros(rows.len() * v)?;
        be.linear(View::full(&h, d), rows.len(), d, self.head(), v, None, &mut logits)?;
        Ok(logits)
    }

    /// The final normed hidden states `[batch * seqlen, d_model]` (before lm_head).
    fn hidden(&self, ids: &[u32], batch: usize, seqlen: usize, state: &mut MambaState<B>) -> Result<B::Buf> {
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        let mut residual = be.zeros(rows * d)?;
        be.embedding(&self.embedding, ids, d, &mut residual)?;
        // One set of scratch buffers serves every layer.
        let mut acts = self.layer_buffers(rows)?;
        let mut out = be.zeros(rows * d)?;
        if seqlen > 1 {
            // Prefill: the norm's output, in_proj's, the conv's, Δ, the scan's and the block's
            // are read by bf16 products, by the scan (which takes bf16 u, Δ and z as the official
            // bf16 kernels do) or added to the f32 residual stream, so the backend may hold them
            // in bf16 alone. Not while decoding (one token per sequence, recorded into CUDA
            // graphs) and not in training (`loss_and_grads` keeps f32 activations for the
            // backward).
            for buf in [&mut acts.normed, &mut acts.xz, &mut acts.u, &mut acts.delta, &mut acts.y, &mut out] {
                be.allow_bf16_storage(buf);
            }
        }
        let mut normed = be.zeros(rows * d)?;
        self.layers_into(batch, seqlen, state, &mut residual, &mut acts, &mut out, &mut normed)?;
        Ok(normed)
    }

    /// Every layer and the final norm, in caller-provided buffers (no allocation): `residual`
    /// holds the embedded input `[batch * seqlen, d_model]` and is used as the residual stream;
    /// `acts` and `out` are scratch; `normed` receives the final normed hidden states.
    #[allow(clippy::too_many_arguments)]
    fn layers_into(
        &self,
        batch: usize,
        seqlen: usize,
        state: &mut MambaState<B>,
        residual: &mut B::Buf,
        acts: &mut LayerActs<B>,
        out: &mut B::Buf,
        normed: &mut B::Buf,
    ) -> Result<()> {
        let be = &self.backend;
        let (rows, d) = (batch * seqlen, self.cfg.d_model);
        // Whether `out` holds a block's output not yet added to the residual stream.
        let mut pending = false;
        for (i, l) in self.layers.iter().enumerate() {
            // Decoding: the backend may run the whole block, adding its output to the residual
            // itself (the same results). A backend that declines does so for every layer alike.
            if seqlen == 1 && !pending {
                if let Some(mixer) = self.mixer_weights(l, batch) {
                    let args = BlockStepArgs {
                        d_model: d,
                        norm: &l.norm,
                        eps: self.eps(),
                        in_proj: &l.in_proj,
                        in_proj_bias: l.in_proj_bias.as_ref(),
                        mixer,
                        out_proj: &l.out_proj,
                        out_proj_bias: l.out_proj_bias.as_ref(),
                        next_in_proj: self.layers.get(i + 1).map(|n| &n.in_proj),
                    };
                    let o = BlockStepOut {
                        residual: &mut *residual,
                        xz: &mut acts.xz,
                        mixer: MixerStepOut {
                            u: &mut acts.u,
                            xdbl: &mut acts.xdbl,
                            delta: &mut acts.delta,
                            y: &mut acts.y,
                            conv_state: &mut state.conv[i],
                            ssm_state: &mut state.ssm[i],
                        },
                    };
                    if be.block_step(&args, o)? {
                        continue;
                    }
                }
            }
            // The previous block's output joins the residual stream here, fused with the norm.
            let prev = if pending { Some(&*out) } else { None };
            be.add_rmsnorm(residual, prev, &l.norm, self.eps(), rows, d, &mut acts.normed)?;
            self.mixer_forward(l, batch, seqlen, acts, &mut state.conv[i], &mut state.ssm[i])?;
            let di = self.cfg.d_inner;
            be.linear(View::full(&acts.y, di), rows, di, &l.out_proj, d, l.out_proj_bias.as_ref(), out)?;
            pending = true;
        }
        let prev = if pending { Some(&*out) } else { None };
        be.add_rmsnorm(residual, prev, &self.norm_f, self.eps(), rows, d, normed)
    }

    /// The weights of a full Mamba block's mixer for the decoding fast paths; `None` for the
    /// ablations, which those paths do not cover.
    fn mixer_weights<'a>(&self, l: &'a MambaLayer<B>, batch: usize) -> Option<MixerWeights<'a, B::Buf>> {
        let c = &self.cfg;
        if c.ablation != crate::config::Ablation::MAMBA {
            return None;
        }
        let (x_proj, dt_proj) = (l.x_proj.as_ref()?, l.dt_proj.as_ref()?);
        Some(MixerWeights {
            batch,
            d_inner: c.d_inner,
            d_state: c.d_state,
            d_conv: c.d_conv,
            dt_rank: c.dt_rank,
            conv_weight: &l.conv1d,
            conv_bias: l.conv1d_bias.as_ref(),
            x_proj,
            dt_proj,
            dt_bias: &l.dt_proj_bias,
            a: &l.a,
            d: &l.d,
        })
    }

    /// Mean cross-entropy of `targets` (`u32::MAX` = ignored) without gradients, from a zero state:
    /// evaluation. Returns the mean loss and the number of counted targets.
    pub fn loss(&self, ids: &[u32], targets: &[u32], batch: usize, seqlen: usize) -> Result<(f64, usize)> {
        self.check_ids(ids, batch, seqlen)?;
        if targets.len() != ids.len() {
            return Err(Error::input(format!("{} targets for {} token ids", targets.len(), ids.len())));
        }
        let mut state = self.new_state(batch)?;
        let normed = self.hidden(ids, batch, seqlen, &mut state)?;
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
        self.lm_head.as_ref().unwrap_or(&self.embedding)
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

    fn layer_buffers(&self, rows: usize) -> Result<LayerActs<B>> {
        let c = &self.cfg;
        let be = &self.backend;
        let (d, di) = (c.d_model, c.d_inner);
        // normed, xz, u and y are written whole by the norm, in_proj, the conv and the scan;
        // xdbl and delta stay zero in the ablations without x_proj or dt_proj.
        Ok(LayerActs {
            normed: be.uninit(rows * d)?,
            xz: be.uninit(rows * c.in_proj_width())?,
            u: be.uninit(rows * di)?,
            xdbl: be.zeros(rows * c.x_proj_cols().width)?,
            delta: be.zeros(rows * di)?,
            y: be.uninit(rows * di)?,
        })
    }

    /// The Mamba block from the normed input (`acts.normed`) to the gated scan output (`acts.y`),
    /// filling the intermediate activations on the way.
    fn mixer_forward(
        &self,
        l: &MambaLayer<B>,
        batch: usize,
        seqlen: usize,
        acts: &mut LayerActs<B>,
        conv_state: &mut B::Buf,
        ssm_state: &mut B::Buf,
    ) -> Result<()> {
        let c = &self.cfg;
        let rows = batch * seqlen;
        let (d, iw) = (c.d_model, c.in_proj_width());
        self.backend.linear(
            View::full(&acts.normed, d),
            rows,
            d,
            &l.in_proj,
            iw,
            l.in_proj_bias.as_ref(),
            &mut acts.xz,
        )?;
        self.mixer_inner(l, batch, seqlen, acts, conv_state, ssm_state, InnerSteps { x_proj: true, scan: true })
    }

    /// The Mamba block from in_proj's output (`acts.xz`): conv → `acts.u`, x_proj → `acts.xdbl`
    /// (unless `steps.x_proj` is false: `acts.xdbl` already holds it), dt_proj → `acts.delta`,
    /// and, with `steps.scan`, the scan → `acts.y`. Also the training backward's recomputation
    /// ([`Recompute`]).
    #[allow(clippy::too_many_arguments)]
    fn mixer_inner(
        &self,
        l: &MambaLayer<B>,
        batch: usize,
        seqlen: usize,
        acts: &mut LayerActs<B>,
        conv_state: &mut B::Buf,
        ssm_state: &mut B::Buf,
        steps: InnerSteps,
    ) -> Result<()> {
        let InnerSteps { x_proj: run_x_proj, scan } = steps;
        let c = &self.cfg;
        let be = &self.backend;
        let rows = batch * seqlen;
        let (di, r, iw) = (c.d_inner, c.dt_rank, c.in_proj_width());
        let cols = c.x_proj_cols();
        // One token per sequence: the backend may fuse the rest of the block (a fast path with
        // the same outputs; `false` = not done here, go op by op).
        if scan && run_x_proj && seqlen == 1 {
            if let Some(mixer) = self.mixer_weights(l, batch) {
                let args = MixerStepArgs { mixer, xz: &acts.xz };
                let out = MixerStepOut {
                    u: &mut acts.u,
                    xdbl: &mut acts.xdbl,
                    delta: &mut acts.delta,
                    y: &mut acts.y,
                    conv_state: &mut *conv_state,
                    ssm_state: &mut *ssm_state,
                };
                if be.mixer_step(&args, out)? {
                    return Ok(());
                }
            }
        }
        let x = View::cols(&acts.xz, 0, iw);
        be.conv1d_silu(x, batch, seqlen, di, c.d_conv, &l.conv1d, l.conv1d_bias.as_ref(), conv_state, &mut acts.u)?;
        if let (Some(x_proj), true) = (&l.x_proj, run_x_proj) {
            be.linear(View::full(&acts.u, di), rows, di, x_proj, cols.width, None, &mut acts.xdbl)?;
        }
        // dt_proj's bias is applied inside the scan, fused with the softplus. Without a selective
        // Δ, `acts.delta` stays zero: Δ = softplus(bias).
        if let (Some(dt_proj), Some(c0)) = (&l.dt_proj, cols.dt) {
            be.linear(View::cols(&acts.xdbl, c0, cols.width), rows, r, dt_proj, di, None, &mut acts.delta)?;
        }
        if !scan {
            return Ok(());
        }
        let args = self.scan_args(l, batch, seqlen, [&acts.u, &acts.delta, &acts.xdbl, &acts.xz]);
        be.selective_scan(&args, ssm_state, &mut acts.y)
    }

    /// Scan inputs from a layer's activations `[u, delta, xdbl, xz]`: B and C are columns of
    /// `xdbl` when selective, the layer's shared vectors broadcast to every row otherwise; `z` is
    /// the second half of `xz` when gated.
    fn scan_args<'a>(
        &self,
        l: &'a MambaLayer<B>,
        batch: usize,
        seqlen: usize,
        acts: [&'a B::Buf; 4],
    ) -> ScanArgs<'a, B::Buf> {
        let [u, delta, xdbl, xz] = acts;
        let c = &self.cfg;
        let (di, n) = (c.d_inner, c.d_state);
        let cols = c.x_proj_cols();
        let pick = |col: Option<usize>, shared: &'a Option<B::Buf>| match (col, shared) {
            (Some(c0), _) => View::cols(xdbl, c0, cols.width),
            (None, Some(v)) => View::broadcast(v),
            // Unreachable for a model built by `from_params` (the config decides both).
            (None, None) => View::broadcast(xdbl),
        };
        ScanArgs {
            dims: ScanDims { batch, seqlen, d_inner: di, d_state: n },
            u,
            delta,
            delta_bias: &l.dt_proj_bias,
            a: &l.a,
            b: pick(cols.b, &l.b),
            c: pick(cols.c, &l.c),
            d: &l.d,
            z: c.ablation.gate.then(|| View::cols(xz, di, 2 * di)),
        }
    }

    /// Mutable parameter buffers in [`param_specs`] order (the order of [`Mamba::params`]).
    pub fn params_mut(&mut self) -> Vec<&mut B::Buf> {
        let mut bufs: Vec<&mut B::Buf> = vec![&mut self.embedding];
        for l in &mut self.layers {
            bufs.push(&mut l.norm);
            bufs.push(&mut l.in_proj);
            bufs.extend(l.in_proj_bias.as_mut());
            bufs.push(&mut l.conv1d);
            bufs.extend(l.conv1d_bias.as_mut());
            bufs.extend(l.x_proj.as_mut());
            bufs.extend(l.dt_proj.as_mut());
            bufs.extend([&mut l.dt_proj_bias, &mut l.a_log]);
            bufs.extend(l.b.as_mut());
            bufs.extend(l.c.as_mut());
            bufs.extend([&mut l.d, &mut l.out_proj]);
            bufs.extend(l.out_proj_bias.as_mut());
        }
        bufs.push(&mut self.norm_f);
        bufs.extend(self.lm_head.as_mut());
        bufs
    }

    /// Recomputes derived tensors (`A = -exp(A_log)`) after the parameters changed.
    pub fn refresh_derived(&mut self) -> Result<()> {
        // On the device, in place: no host round trip.
        for l in &mut self.layers {
            self.backend.neg_exp(&l.a_log, &mut l.a)?;
        }
        Ok(())
    }

    /// Gradient accumulators: a model-shaped set of zero buffers (the `a` field is scratch for ∂L/∂A).
    pub fn zero_grads(&self) -> Result<Mamba<B>> {
        let be = self.backend.clone();
        let specs = param_specs(&self.cfg);
        let mut g = Mamba::from_params(be.clone(), self.cfg.clone(), |spec| {
            let _ = &specs;
            Ok(vec![0.0; spec.shape.iter().product()])
        })?;
        for l in &mut g.layers {
            be.fill_zero(&mut l.a)?;
        }
        Ok(g)
    }

    /// Training step, forward and backward: mean next-token cross-entropy of `ids` (`[batch,
    /// seqlen]`) against `targets` (same shape, `u32::MAX` = ignored), from a zero state.
    /// Gradients of `grad_scale × mean loss` are *added* to `grads` (so micro-batches accumulate).
    /// Returns the mean loss and the number of counted targets.
    pub fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seqlen: usize,
        grad_scale: f32,
        g: &mut Mamba<B>,
    ) -> Result<(f64, usize)> {
        self.check_ids(ids, batch, seqlen)?;
        let c = &self.cfg;
        if targets.len() != ids.len() {
            return Err(Error::input(format!("{} targets for {} token ids", targets.len(), ids.len())));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t != u32::MAX && t as usize >= c.vocab_size) {
            return Err(Error::input(format!("target id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        let count = targets.iter().filter(|&&t| t != u32::MAX).count();
        if count == 0 {
            return Err(Error::input("no targets to train on (all ignored)"));
        }
        let be = &self.backend;
        let rows = batch * seqlen;
        let (d, di, n, r, v) = (c.d_model, c.d_inner, c.d_state, c.dt_rank, c.vocab_size);
        let (ab, iw, cols) = (c.ablation, c.in_proj_width(), c.x_proj_cols());
        let _keeping = super::KeepingActivations::new(be);
        let xw = cols.width;
        let eps = self.eps();

        // ---- forward, keeping each layer's activations ----
        let mut state = self.new_state(batch)?;
        let mut embedded = be.zeros(rows * d)?;
        be.embedding(&self.embedding, ids, d, &mut embedded)?;
        // Every layer runs in `work`; what `self.recompute` says to keep moves to `kept`.
        let mut work = self.layer_buffers(rows)?;
        // The norm's output (in_proj's input, forward and backward) and the scan's (out_proj's)
        // are read by bf16 products only: the backend may hold them in bf16 alone (the products
        // read the same bits, without a cast). The y that `Recompute::Light` keeps then gives up
        // its f32 storage (`release_f32`): it takes half the memory, not more.
        be.allow_bf16_storage(&mut work.normed);
        // u (the conv's output) is read in f32 by the scan and its backward, and as bf16 by
        // x_proj's forward and backward products: a bf16 copy beside it (rewritten per layer,
        // never kept) spares those products their casts.
        be.allow_bf16_copy(&mut work.u);
        be.allow_bf16_storage(&mut work.y);
        let mut kept: Vec<Kept<B>> = Vec::with_capacity(c.n_layer);
        let mut out = be.zeros(rows * d)?;
        for (i, l) in self.layers.iter().enumerate() {
            // Each block's input residual is kept: the first is the embedding itself, each later
            // one the previous one plus the previous block's output, summed into a new buffer.
            let kept_in = kept.last().map(|k| &k.residual);
            let prev = kept_in.map(|_| &out);
            let residual_in =
                super::add_rmsnorm_kept(be, &mut embedded, kept_in, prev, &l.norm, eps, rows, d, &mut work.normed)?;
            self.mixer_forward(l, batch, seqlen, &mut work, &mut state.conv[i], &mut state.ssm[i])?;
            be.linear(View::full(&work.y, di), rows, di, &l.out_proj, d, l.out_proj_bias.as_ref(), &mut out)?;
            let last = i + 1 == c.n_layer;
            let take = |buf: &mut B::Buf, len: usize| -> Result<B::Buf> {
                // The last layer's buffers stay in `work`, where its backward starts. The next
                // layer overwrites the fresh ones whole (in_proj, the scan).
                let fresh = if last { be.zeros(0)? } else { be.uninit(len)? };
                Ok(std::mem::replace(buf, fresh))
            };
            // A buffer read only by bf16 products until the backward: its fresh replacement may be
            // held in bf16 alone as it was, and the kept one gives up its f32 storage.
            let take_bf16 = |buf: &mut B::Buf, len: usize| -> Result<B::Buf> {
                let mut kept = take(buf, len)?;
                be.allow_bf16_storage(buf);
                be.release_f32(&mut kept)?;
                Ok(kept)
            };
            let xz = take(&mut work.xz, rows * iw)?;
            // xdbl is written whole by x_proj only where the layer has one; else it stays zero.
            let xdbl = if l.x_proj.is_none() { be.clone_buf(&work.xdbl)? } else { take(&mut work.xdbl, rows * xw)? };
            let y = match self.recompute {
                Recompute::Light | Recompute::None => Some(take_bf16(&mut work.y, rows * di)?),
                Recompute::Full => None,
            };
            let inner = if self.recompute == Recompute::None {
                // u's fresh buffer gets a bf16 copy as the one it replaces; Δ stays zero without
                // a dt_proj.
                let normed = take_bf16(&mut work.normed, rows * d)?;
                let u = take(&mut work.u, rows * di)?;
                be.allow_bf16_copy(&mut work.u);
                let delta =
                    if l.dt_proj.is_some() { take(&mut work.delta, rows * di)? } else { be.clone_buf(&work.delta)? };
                Some(KeptInner { normed, u, delta })
            } else {
                None
            };
            kept.push(Kept { residual: residual_in, xz, xdbl, y, inner });
        }
        let mut normed = be.zeros(rows * d)?;
        let (kept_in, norm_f) = (kept.last().map(|k| &k.residual), &self.norm_f);
        let prev = kept_in.map(|_| &out);
        let residual = super::add_rmsnorm_kept(be, &mut embedded, kept_in, prev, norm_f, eps, rows, d, &mut normed)?;

        // ---- lm_head + cross-entropy, in row chunks so that [rows, vocab] is never held whole ----
        let mut dnormed = be.zeros(rows * d)?;
        let scale = grad_scale / count as f32;
        let head = self.head();
        let dhead = match g.lm_head.as_mut() {
            Some(h) => h,
            None => &mut g.embedding,
        };
        let (loss_sum, _) =
            super::head_cross_entropy(be, &normed, rows, d, head, v, targets, scale, Some((dhead, &mut dnormed)))?;

        // ---- backward through the blocks, last to first ----
        let mut dres = be.zeros(rows * d)?;
        // Rewritten by every block's norm backward, read by the next one's out_proj backward
        // products (bf16) and norm backward (f32): a bf16 copy beside it spares the products a cast.
        be.allow_bf16_copy(&mut dres);
        be.rmsnorm_backward(&residual, &self.norm_f, eps, rows, d, &dnormed, &mut dres, &mut g.norm_f)?;
        let mut dy = be.zeros(rows * di)?;
        let mut du = be.zeros(rows * di)?;
        let mut ddelta = be.zeros(rows * di)?;
        // Read only by dt_proj's backward products (a bf16 input): it may be held in bf16 alone.
        be.allow_bf16_storage(&mut ddelta);
        // x_proj's output gradient `[rows, xw]`, then one `[rows, d_state]` scratch matrix per
        // non-selective B / C: the scan writes per-row ∂B_t, ∂C_t wherever they belong.
        let shared = usize::from(!ab.selective_b) + usize::from(!ab.selective_c);
        let mut dxdbl = be.zeros(rows * (xw + shared * n))?;
        let scratch_b = Strided { offset: rows * xw, ld: n };
        let scratch_c = Strided { offset: rows * xw + if ab.selective_b { 0 } else { rows * n }, ld: n };
        let at = |col: Option<usize>, scratch: Strided| match col {
            Some(c0) => Strided { offset: c0, ld: xw },
            None => scratch,
        };
        let mut dxz = be.zeros(rows * iw)?;
        // Read only by in_proj's backward products (a bf16 input), written in two parts (the
        // conv's dx, the scan's dz), each whole for every layer: it may be held in bf16 alone.
        be.allow_bf16_storage(&mut dxz);
        let mut dnorm_in = be.zeros(rows * d)?;
        while let Some(mut k) = kept.pop() {
            let i = kept.len();
            let (l, gl) = (&self.layers[i], &mut g.layers[i]);
            // Back in `work`: what was kept, then what was not, recomputed from it from a zero
            // state, as the forward ran (the forward's final states are no longer needed).
            std::mem::swap(&mut work.xz, &mut k.xz);
            std::mem::swap(&mut work.xdbl, &mut k.xdbl);
            if let Some(y) = k.y.as_mut() {
                std::mem::swap(&mut work.y, y);
            }
            if let Some(inner) = k.inner.as_mut() {
                std::mem::swap(&mut work.normed, &mut inner.normed);
                std::mem::swap(&mut work.u, &mut inner.u);
                std::mem::swap(&mut work.delta, &mut inner.delta);
            } else {
                be.add_rmsnorm(&mut k.residual, None, &l.norm, eps, rows, d, &mut work.normed)?;
                be.fill_zero(&mut state.conv[i])?;
                be.fill_zero(&mut state.ssm[i])?;
                let steps = InnerSteps { x_proj: false, scan: k.y.is_none() };
                self.mixer_inner(l, batch, seqlen, &mut work, &mut state.conv[i], &mut state.ssm[i], steps)?;
            }
            let acts = &work;
            // dres holds ∂L/∂(residual after this block), which is also ∂L/∂(block output).
            let y = View::full(&acts.y, di);
            be.linear_backward(
                y,
                rows,
                di,
                &l.out_proj,
                d,
                &dres,
                Some(ViewMut::full(&mut dy, di)),
                &mut gl.out_proj,
                gl.out_proj_bias.as_mut(),
            )?;
            let args = self.scan_args(l, batch, seqlen, [&acts.u, &acts.delta, &acts.xdbl, &acts.xz]);
            let (db_at, dc_at) = (at(cols.b, scratch_b), at(cols.c, scratch_c));
            let grads = ScanGrads {
                du: &mut du,
                ddelta: &mut ddelta,
                dbc: &mut dxdbl,
                db: db_at,
                dc: dc_at,
                dz: ab.gate.then(|| ViewMut::cols(&mut dxz, di, 2 * di)),
                da: &mut gl.a,
                dd: &mut gl.d,
                ddelta_bias: &mut gl.dt_proj_bias,
            };
            be.selective_scan_backward(&args, &dy, grads)?;
            // A shared B / C gets the sum over rows of the per-row gradients.
            for (col, at, g) in [(cols.b, db_at, gl.b.as_mut()), (cols.c, dc_at, gl.c.as_mut())] {
                if let (None, Some(g)) = (col, g) {
                    be.sum_rows(View { buf: &dxdbl, offset: at.offset, ld: at.ld }, rows, n, g)?;
                }
            }
            // Without a selective Δ, `ddelta` (written, per row) is unused: the bias got its sum.
            if let (Some(dt_proj), Some(gdt), Some(c0)) = (&l.dt_proj, gl.dt_proj.as_mut(), cols.dt) {
                let dt_in = View::cols(&acts.xdbl, c0, xw);
                let ddt_in = Some(ViewMut::cols(&mut dxdbl, c0, xw));
                be.linear_backward(dt_in, rows, r, dt_proj, di, &ddelta, ddt_in, gdt, None)?;
            }
            // u feeds x_proj and the scan: x_proj's part of ∂L/∂u is added to the scan's.
            if let (Some(x_proj), Some(gx)) = (&l.x_proj, gl.x_proj.as_mut()) {
                let u = View::full(&acts.u, di);
                be.linear_backward_add_dx(u, rows, di, x_proj, xw, &dxdbl, ViewMut::full(&mut du, di), gx, None)?;
            }
            let x = View::cols(&acts.xz, 0, iw);
            let dx = ViewMut::cols(&mut dxz, 0, iw);
            be.conv1d_silu_backward(
                x,
                batch,
                seqlen,
                di,
                c.d_conv,
                &l.conv1d,
                l.conv1d_bias.as_ref(),
                &du,
                dx,
                &mut gl.conv1d,
                gl.conv1d_bias.as_mut(),
            )?;
            let normed_in = View::full(&acts.normed, d);
            be.linear_backward(
                normed_in,
                rows,
                d,
                &l.in_proj,
                iw,
                &dxz,
                Some(ViewMut::full(&mut dnorm_in, d)),
                &mut gl.in_proj,
                gl.in_proj_bias.as_mut(),
            )?;
            // The norm's input is the residual before this block: its gradient joins the skip path in dres.
            be.rmsnorm_backward(&k.residual, &l.norm, eps, rows, d, &dnorm_in, &mut dres, &mut gl.norm)?;
        }
        be.embedding_backward(ids, d, &dres, &mut g.embedding)?;

        // ∂L/∂A_log = ∂L/∂A ⊙ A (A = -exp(A_log)); the scratch ∂L/∂A is consumed.
        for (l, gl) in self.layers.iter().zip(g.layers.iter_mut()) {
            be.add_product(&mut gl.a_log, &gl.a, &l.a)?;
            be.fill_zero(&mut gl.a)?;
        }
        Ok((loss_sum / count as f64, count))
    }

    /// Feeds a long prompt in chunks of `chunk` tokens (memory bounded by the chunk, not the
    /// prompt), leaving the final state in `state`; returns the last position's logits `[batch, vocab]`.
    pub fn prefill(
        &self,
        ids: &[u32],
        batch: usize,
        seqlen: usize,
        state: &mut MambaState<B>,
        chunk: usize,
    ) -> Result<B::Buf> {
        if seqlen == 0 {
            return Err(Error::input("prefill: empty prompt (no tokens)"));
        }
        let chunk = chunk.max(1);
        let mut t0 = 0;
        loop {
            let t1 = (t0 + chunk).min(seqlen);
            let part = time_slice(ids, batch, seqlen, t0..t1);
            let logits = self.forward(&part, batch, t1 - t0, state, Logits::Last)?;
            if t1 == seqlen {
                return Ok(logits);
            }
            t0 = t1;
        }
    }

    /// One decoding step: one token per sequence, state advanced in place; logits `[batch, vocab]`.
    pub fn step(&self, ids: &[u32], state: &mut MambaState<B>) -> Result<B::Buf> {
        self.forward(ids, ids.len(), 1, state, Logits::Last)
    }

    /// Concatenates single-sequence states into one batched state (prompts prefilled separately,
    /// then decoded together).
    /// The states of a batch, one per sequence, in order (the inverse of [`Mamba::stack_states`];
    /// through the host).
    pub fn unstack_state(&self, state: MambaState<B>) -> Result<Vec<MambaState<B>>> {
        if state.batch == 1 {
            return Ok(vec![state]);
        }
        let be = &self.backend;
        let b = state.batch;
        let mut out: Vec<MambaState<B>> =
            (0..b).map(|_| MambaState { batch: 1, conv: Vec::new(), ssm: Vec::new() }).collect();
        for (conv, ssm) in state.conv.iter().zip(&state.ssm) {
            let (c, s) = (be.to_vec(conv)?, be.to_vec(ssm)?);
            let (cn, sn) = (c.len() / b, s.len() / b);
            for (i, st) in out.iter_mut().enumerate() {
                st.conv.push(be.from_vec(c[i * cn..(i + 1) * cn].to_vec())?);
                st.ssm.push(be.from_vec(s[i * sn..(i + 1) * sn].to_vec())?);
            }
        }
        Ok(out)
    }

    pub fn stack_states(&self, states: &[MambaState<B>]) -> Result<MambaState<B>> {
        let be = &self.backend;
        let batch = states.iter().map(|s| s.batch).sum();
        let mut conv = Vec::new();
        let mut ssm = Vec::new();
        for i in 0..self.cfg.n_layer {
            let mut c = Vec::new();
            let mut s = Vec::new();
            for st in states {
                c.extend(be.to_vec(&st.conv[i])?);
                s.extend(be.to_vec(&st.ssm[i])?);
            }
            conv.push(be.from_vec(c)?);
            ssm.push(be.from_vec(s)?);
        }
        Ok(MambaState { batch, conv, ssm })
    }
}

/// Time steps `range` of each of `batch` sequences of `seqlen` ids, row-major.
fn time_slice(ids: &[u32], batch: usize, seqlen: usize, range: std::ops::Range<usize>) -> Vec<u32> {
    (0..batch).flat_map(|b| ids[b * seqlen + range.start..b * seqlen + range.end].iter().copied()).collect()
}

/// Tokens per chunk when [`LanguageModel::logits_at`] streams a long sequence: bounds the
/// activations (a few MB for small models) whatever the sequence length.
const STREAM_CHUNK: usize = 4096;

impl<B: Backend> super::LanguageModel<B> for Mamba<B> {
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
        Mamba::params(self).into_iter().map(|(_, b)| b).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut B::Buf> {
        Mamba::params_mut(self)
    }
    fn refresh_derived(&mut self) -> Result<()> {
        Mamba::refresh_derived(self)
    }
    fn zero_grads(&self) -> Result<Self> {
        Mamba::zero_grads(self)
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
        Mamba::loss_and_grads(self, ids, targets, batch, seqlen, grad_scale, grads)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        Mamba::save(self, dir)
    }

    /// Streams the sequences through the recurrent state in chunks of `STREAM_CHUNK` (4,096) tokens:
    /// linear time, memory independent of `seqlen`.
    fn logits_at(&self, ids: &[u32], batch: usize, seqlen: usize, positions: &[usize]) -> Result<Vec<f32>> {
        self.check_ids(ids, batch, seqlen)?;
        if let Some(&p) = positions.iter().find(|&&p| p >= seqlen) {
            return Err(Error::input(format!("logits_at: position {p} is outside the sequence (length {seqlen})")));
        }
        let v = self.cfg.vocab_size;
        let np = positions.len();
        let mut out = vec![0.0f32; batch * np * v];
        let mut state = self.new_state(batch)?;
        let mut t0 = 0;
        while t0 < seqlen {
            let t1 = (t0 + STREAM_CHUNK).min(seqlen);
            let len = t1 - t0;
            let part = time_slice(ids, batch, seqlen, t0..t1);
            let wanted: Vec<(usize, usize)> =
                positions.iter().enumerate().filter(|(_, &p)| (t0..t1).contains(&p)).map(|(i, &p)| (i, p)).collect();
            if wanted.is_empty() {
                // Only the state matters here: skip lm_head.
                self.hidden(&part, batch, len, &mut state)?;
            } else {
                let normed = self.hidden(&part, batch, len, &mut state)?;
                let rows: Vec<usize> =
                    (0..batch).flat_map(|b| wanted.iter().map(move |&(_, p)| b * len + p - t0)).collect();
                let host = self.backend.to_vec(&self.logits_of_rows(&normed, &rows)?)?;
                for b in 0..batch {
                    for (k, &(i, _)) in wanted.iter().enumerate() {
                        let src = &host[(b * wanted.len() + k) * v..][..v];
                        out[(b * np + i) * v..][..v].copy_from_slice(src);
                    }
                }
            }
            t0 = t1;
        }
        Ok(out)
    }
}
