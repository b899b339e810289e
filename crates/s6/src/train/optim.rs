//! AdamW state, parameter groups and the learning-rate schedule.

use crate::backend::{AdamW, Backend};
use crate::Result;

/// Optimizer hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimConfig {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global-norm clipping threshold; 0 = off.
    pub grad_clip: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }
}

/// Learning-rate schedule after the linear warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Cosine,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            o => Err(crate::Error::input(format!("--lr-schedule '{o}': expected cosine or constant"))),
        }
    }
}

impl OptimConfig {
    /// Learning rate of 1-based `step` out of `total`: linear warmup from lr/warmup to lr, then
    /// cosine decay to `min_lr` at `total` (or constant).
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps as f32;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps.min(step)) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (self.min_lr as f64 + (self.lr - self.min_lr) as f64 * cos) as f32
            }
        }
    }
}

/// Whether weight decay applies to a parameter: not to A_log, D, norm weights or biases (as in
/// the official training recipes), nor to the ablations' shared SSM vectors `mixer.B` /
/// `mixer.C` (SSM parameters like A and D: decaying one `[d_state]` vector that every channel
/// reads would shrink the whole SSM path).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("A_log")
        || name.ends_with(".D")
        || name.ends_with("mixer.B")
        || name.ends_with("mixer.C")
        || name.contains("norm")
        || name.ends_with("bias"))
}

/// First and second moments per parameter, in parameter order.
pub struct AdamState<B: Backend> {
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
}

impl<B: Backend> AdamState<B> {
    pub fn zeros(be: &B, sizes: &[usize]) -> Result<Self> {
        Ok(AdamState {
            m: sizes.iter().map(|&n| be.zeros(n)).collect::<Result<_>>()?,
            v: sizes.iter().map(|&n| be.zeros(n)).collect::<Result<_>>()?,
        })
    }
}

/// Global L2 norm of a set of gradients (f64 accumulation, deterministic): one
/// [`Backend::sum_squares_many`], so a device backend reads back one value per call.
pub fn global_norm<B: Backend>(be: &B, grads: &[&B::Buf]) -> Result<f64> {
    Ok(be.sum_squares_many(grads)?.sqrt())
}

impl OptimConfig {
    /// The factor global-norm clipping applies to gradients of norm `norm` (1 when off or under).
    pub fn clip_scale(&self, norm: f64) -> f32 {
        if self.grad_clip > 0.0 && norm > self.grad_clip as f64 {
            (self.grad_clip as f64 / norm) as f32
        } else {
            1.0
        }
    }
}

/// One optimizer step over all parameters. `names[i]` decides weight decay for `params[i]`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<B: Backend>(
    be: &B,
    cfg: &OptimConfig,
    lr: f32,
    step: u64,
    grad_scale: f32,
    names: &[String],
    params: Vec<&mut B::Buf>,
    grads: &[&B::Buf],
    state: &mut AdamState<B>,
) -> Result<()> {
    let hps: Vec<AdamW> = names
        .iter()
        .take(params.len())
        .map(|name| AdamW {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: if decays(name) { cfg.weight_decay } else { 0.0 },
            step,
            grad_scale,
        })
        .collect();
    be.adamw_step_many(params, grads, &mut state.m, &mut state.v, &hps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let c = OptimConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, ..Default::default() };
        assert!((c.lr_at(1, 110) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-6);
        assert!((c.lr_at(60, 110) - 0.55).abs() < 1e-6);
        assert!((c.lr_at(110, 110) - 0.1).abs() < 1e-6);
        let k = OptimConfig { schedule: Schedule::Constant, ..c };
        assert_eq!(k.lr_at(100, 110), 1.0);
    }

    #[test]
    fn decay_groups() {
        assert!(decays("backbone.layers.0.mixer.in_proj.weight"));
        assert!(!decays("backbone.layers.0.mixer.B") && !decays("backbone.layers.1.mixer.C"));
        assert!(decays("backbone.embeddings.weight"));
        for n in [
            "backbone.layers.0.mixer.A_log",
            "backbone.layers.0.mixer.D",
            "backbone.layers.0.norm.weight",
            "backbone.norm_f.weight",
            "backbone.layers.0.mixer.dt_proj.bias",
            "backbone.layers.0.mixer.conv1d.bias",
        ] {
            assert!(!decays(n), "{n}");
        }
    }
}
