//! Random initialization with the paper's scheme (as in state-spaces/mamba `_init_weights` and
//! `Mamba.__init__`): S4D-real `A = -(1..=N)`, `D = 1`, Δ bias = softplus⁻¹ of a log-uniform
//! Δ in `[dt_min, dt_max]`, `dt_proj` weights uniform with std `dt_rank^-½ · dt_scale`, PyTorch's
//! default (Kaiming-uniform) linears and conv, embeddings `N(0, 0.02)`, `out_proj` rescaled by
//! `1/√n_layer` (prenorm residual rescaling), zero linear biases, unit norms.
//!
//! Ablations ([`crate::config::Ablation`]) initialize the parameters they keep as above (a
//! non-selective Δ is `softplus(dt_proj.bias)` with the same bias init, so its initial Δ range
//! is Mamba's). Their shared vectors follow S4D, the time-invariant model the ablation stands for:
//! `mixer.B = 1` (every state component driven by the input, the modes told apart by their
//! decays `A_n = -n` alone: the S4D-Real basis of exponentials) and `mixer.C ~ N(0, 1/N)` (random
//! readout mixing the N modes; the `1/√N` keeps `C·h` of the order of one mode whatever N, close
//! to the scale of a selective `C_t = x_proj(u)` at init).

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use super::mamba1::{param_specs, ParamSpec};
use crate::config::{InitConfig, MambaConfig};

/// Seeded random source for initialization.
pub struct InitRng(Pcg64);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        InitRng(Pcg64::seed_from_u64(seed))
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.unit()) as f32
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Initial values of one parameter.
pub fn init_param(spec: &ParamSpec, cfg: &MambaConfig, init: &InitConfig, rng: &mut InitRng) -> Vec<f32> {
    let numel: usize = spec.shape.iter().product();
    let name = spec.name.as_str();
    let kaiming = |rng: &mut InitRng, fan_in: usize| -> Vec<f32> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        (0..numel).map(|_| rng.uniform(-bound, bound)).collect()
    };
    if name.ends_with("embeddings.weight") {
        (0..numel).map(|_| rng.normal() * init.initializer_range as f32).collect()
    } else if name.ends_with("norm.weight")
        || name.ends_with("norm_f.weight")
        || name.ends_with("mixer.D")
        || name.ends_with("mixer.B")
    {
        // Unit norms and D; the shared B of the ablations (see the module docs).
        vec![1.0; numel]
    } else if name.ends_with("mixer.C") {
        let std = 1.0 / (cfg.d_state as f32).sqrt();
        (0..numel).map(|_| rng.normal() * std).collect()
    } else if name.ends_with("A_log") {
        let n = cfg.d_state;
        (0..numel).map(|i| ((i % n + 1) as f32).ln()).collect()
    } else if name.ends_with("dt_proj.weight") {
        let std = (cfg.dt_rank as f64).powf(-0.5) * init.dt_scale;
        (0..numel).map(|_| rng.uniform(-std, std)).collect()
    } else if name.ends_with("dt_proj.bias") {
        let (lo, hi) = (init.dt_min.ln(), init.dt_max.ln());
        (0..numel)
            .map(|_| {
                let dt = (lo + (hi - lo) * rng.unit()).exp().max(init.dt_init_floor);
                // Inverse of softplus: dt + log(-expm1(-dt)).
                (dt + (-(-dt).exp_m1()).ln()) as f32
            })
            .collect()
    } else if name.ends_with(".bias") && !name.contains("conv1d") {
        vec![0.0; numel]
    } else if name.ends_with("conv1d.weight") || name.ends_with("conv1d.bias") {
        // PyTorch's Conv1d default: both bounded by 1/sqrt(fan_in), fan_in = kernel size (depthwise).
        kaiming(rng, cfg.d_conv)
    } else if name.ends_with("out_proj.weight") {
        let scale = 1.0 / (cfg.n_layer as f32).sqrt();
        kaiming(rng, spec.shape[1]).into_iter().map(|v| v * scale).collect()
    } else {
        // in_proj, x_proj, lm_head: PyTorch Linear default.
        kaiming(rng, spec.shape[1])
    }
}

/// All parameters of a freshly initialized model, in [`param_specs`] order.
pub fn init_params(cfg: &MambaConfig, init: &InitConfig, seed: u64) -> Vec<(ParamSpec, Vec<f32>)> {
    let mut rng = InitRng::new(seed);
    param_specs(cfg)
        .into_iter()
        .map(|spec| {
            let v = init_param(&spec, cfg, init, &mut rng);
            (spec, v)
        })
        .collect()
}

/// The parameters of [`init_params`]'s distributions, each tensor from its own random stream
/// (seeded by `seed` and its index) and the tensors generated in parallel: for benchmarks, where
/// the one sequential stream took tens of seconds for a 1.4B model. Not the values of
/// [`init_params`] for the same seed.
pub fn init_params_parallel(cfg: &MambaConfig, init: &InitConfig, seed: u64) -> Vec<(ParamSpec, Vec<f32>)> {
    use rayon::prelude::*;
    param_specs(cfg)
        .into_par_iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut rng = InitRng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let v = init_param(&spec, cfg, init, &mut rng);
            (spec, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_init_has_the_sequential_init_distributions() {
        let cfg = MambaConfig::new(64, 3, 300);
        let init = InitConfig::default();
        let seq = init_params(&cfg, &init, 5);
        let par = init_params_parallel(&cfg, &init, 5);
        let values = |ps: &[(ParamSpec, Vec<f32>)]| ps.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(values(&par), values(&init_params_parallel(&cfg, &init, 5)), "not deterministic");
        assert_ne!(values(&par), values(&init_params_parallel(&cfg, &init, 6)), "the seed is not used");
        assert_eq!(seq.len(), par.len());
        let stats = |v: &[f32]| {
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt(), v.iter().fold(0f32, |m, x| m.max(x.abs())))
        };
        for ((s_spec, s), (p_spec, p)) in seq.iter().zip(&par) {
            assert_eq!((&s_spec.name, &s_spec.shape), (&p_spec.name, &p_spec.shape));
            assert_eq!(s.len(), p.len(), "{}", s_spec.name);
            let ((sm, ss, smax), (pm, ps, pmax)) = (stats(s), stats(p));
            if ss == 0.0 {
                assert_eq!(s, p, "{}: a constant tensor differs", s_spec.name);
            } else if s.len() >= 1000 {
                // The same distribution: spread within 10%, mean within a few standard errors,
                // and (for bounded ones) no value beyond the sequential init's bound.
                assert!((ps / ss - 1.0).abs() < 0.1, "{}: std {ps} against {ss}", s_spec.name);
                assert!((pm - sm).abs() < 5.0 * ss / (s.len() as f64).sqrt() + 1e-3 * ss, "{}: mean", s_spec.name);
                if !s_spec.name.contains("embeddings") {
                    assert!(pmax <= smax * 1.01, "{}: max {pmax} against {smax}", s_spec.name);
                }
            }
        }
    }
}
