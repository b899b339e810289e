//! Data-parallel training: one model replica per device, driven from one process.
//!
//! Every step, the global batch of the deterministic loader ([`super::data::Batcher`]) is split
//! by rank into contiguous shards of sequences; each rank runs forward and backward on its shard
//! (ranks run concurrently, one thread each), the gradients are summed over ranks by a
//! [`Collective`] (NCCL on CUDA, the host elsewhere), and every rank then applies the same AdamW
//! update to its own copy of the parameters. Each rank's gradient is scaled by its share of the
//! counted targets, so the summed gradient is the gradient of the global batch's mean loss: N
//! ranks train the same model as one device with the same global batch, up to float rounding.
//! After every step the replicas' parameters are compared (a fingerprint per rank) and a
//! mismatch stops the run. Checkpoints are written once, from rank 0, in the single-device
//! format, so a run can resume on any number of devices.

use crate::backend::collective::{Collective, HostCollective};
use crate::backend::Backend;
use crate::model::Mamba;
use crate::{Error, Result};

/// The replicas of one model and the collective that joins them.
pub struct Replicas<B: Backend> {
    models: Vec<Mamba<B>>,
    collective: Box<dyn Collective<B>>,
}

/// A copy of `model`'s parameters on another backend (device).
pub fn replicate<B: Backend>(model: &Mamba<B>, backend: B) -> Result<Mamba<B>> {
    let src = &model.backend;
    let mut values = model.params().into_iter().map(|(_, b)| src.to_vec(b));
    Mamba::from_params(backend, model.cfg.clone(), |spec| {
        values.next().unwrap_or_else(|| Err(Error::Backend(format!("replicate: no values for {}", spec.name))))
    })
}

impl<B: Backend> Replicas<B> {
    /// One rank: plain single-device training through the same code path.
    pub fn single(model: Mamba<B>) -> Self {
        Replicas { models: vec![model], collective: Box::new(HostCollective { ranks: 1 }) }
    }

    /// `model` copied to each of `backends` (rank `r` on `backends[r]`), joined by `collective`,
    /// which must have been set up for as many ranks.
    pub fn new(model: &Mamba<B>, backends: Vec<B>, collective: Box<dyn Collective<B>>) -> Result<Self> {
        if backends.is_empty() || backends.len() != collective.world_size() {
            return Err(Error::input(format!(
                "data parallelism: {} devices given for a collective of {} ranks",
                backends.len(),
                collective.world_size()
            )));
        }
        let models = backends.into_iter().map(|be| replicate(model, be)).collect::<Result<Vec<_>>>()?;
        Ok(Replicas { models, collective })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.models.len()
    }

    /// The collective's description ("nccl (2 ranks)").
    pub fn collective_name(&self) -> String {
        self.collective.name()
    }

    /// Rank 0's model (the one that is evaluated and checkpointed).
    pub fn rank0(&self) -> &Mamba<B> {
        &self.models[0]
    }

    /// All ranks' models, mutable (the optimizer updates each).
    pub fn models_mut(&mut self) -> &mut [Mamba<B>] {
        &mut self.models
    }

    /// Gives back rank 0's model.
    pub fn into_rank0(self) -> Mamba<B> {
        self.models.into_iter().next().expect("a job has at least one rank")
    }

    /// Zeroed gradient buffers for every rank.
    pub fn zero_grads(&self) -> Result<Vec<Mamba<B>>> {
        self.models.iter().map(|m| m.zero_grads()).collect()
    }

    /// Forward and backward of one global batch (`batch` sequences of `seqlen`), split by rank:
    /// adds to `grads[r]` rank `r`'s share of the gradient of `scale × the global mean loss`
    /// (not yet summed over ranks: see [`Replicas::all_reduce`]). Returns the global mean loss
    /// and the number of counted targets.
    pub fn loss_and_grads(
        &self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seqlen: usize,
        scale: f32,
        grads: &mut [Mamba<B>],
    ) -> Result<(f64, usize)> {
        let world = self.world_size();
        if !batch.is_multiple_of(world) {
            return Err(Error::input(format!(
                "--batch-size {batch} cannot be split evenly over {world} devices: use a multiple of {world}"
            )));
        }
        if world == 1 {
            return self.models[0].loss_and_grads(ids, targets, batch, seqlen, scale, &mut grads[0]);
        }
        let rows = batch / world * seqlen;
        let counts: Vec<usize> = targets.chunks(rows).map(|t| t.iter().filter(|&&y| y != u32::MAX).count()).collect();
        let total: usize = counts.iter().sum();
        let results: Vec<Result<(f64, usize)>> = std::thread::scope(|s| {
            let jobs: Vec<_> = self
                .models
                .iter()
                .zip(grads.iter_mut())
                .enumerate()
                .map(|(r, (m, g))| {
                    let (x, y) = (&ids[r * rows..(r + 1) * rows], &targets[r * rows..(r + 1) * rows]);
                    // This rank's share of the global mean: its targets over all targets.
                    let share = if total == 0 { 0.0 } else { counts[r] as f32 / total as f32 };
                    s.spawn(move || m.loss_and_grads(x, y, batch / world, seqlen, scale * share, g))
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|_| Err(Error::Backend("a training rank panicked".into()))))
                .collect()
        });
        let (mut sum, mut count) = (0.0, 0usize);
        for res in results {
            let (mean, c) = res?;
            sum += mean * c as f64;
            count += c;
        }
        Ok((if count == 0 { 0.0 } else { sum / count as f64 }, count))
    }

    /// Sums every gradient over ranks, leaving the sum on each rank.
    pub fn all_reduce(&self, grads: &mut [Mamba<B>]) -> Result<()> {
        let backends: Vec<&B> = self.models.iter().map(|m| &m.backend).collect();
        let lists = grads.iter_mut().map(|g| g.params_mut()).collect();
        self.collective.all_reduce_sum(&backends, lists)
    }

    /// Checks that every rank holds the same parameters (bitwise equal sums of squares per
    /// tensor: the ranks run the same deterministic update on the same gradients).
    pub fn check_in_sync(&self, step: u64) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        // One readback per rank (sum_squares_each), not one per tensor.
        let fingerprint = |m: &Mamba<B>| -> Result<Vec<f64>> {
            let bufs: Vec<&B::Buf> = m.params().into_iter().map(|(_, b)| b).collect();
            m.backend.sum_squares_each(&bufs)
        };
        let want = fingerprint(&self.models[0])?;
        for (r, m) in self.models.iter().enumerate().skip(1) {
            let got = fingerprint(m)?;
            if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                let name = &m.params()[i].0.name;
                return Err(Error::Backend(format!(
                    "data parallelism: after step {step}, rank {r}'s {name} differs from rank 0's (sum of squares {} vs {})",
                    got[i], want[i]
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::config::{InitConfig, MambaConfig};
    use crate::model::init::init_params;
    use crate::train::optim::OptimConfig;
    use crate::train::{train, train_data_parallel, TrainOptions};

    fn tiny_model() -> Mamba<Cpu> {
        let cfg = MambaConfig::new(16, 2, 23);
        let mut it = init_params(&cfg, &InitConfig::default(), 11).into_iter();
        Mamba::from_params(Cpu, cfg, |_| Ok(it.next().unwrap().1)).unwrap()
    }

    fn opts(name: &str, steps: u64) -> TrainOptions {
        TrainOptions {
            out: std::env::temp_dir().join(format!("s6-dp-test-{}-{name}", std::process::id())),
            steps,
            batch_size: 4,
            seq_len: 12,
            grad_accum: 2,
            optim: OptimConfig { lr: 3e-3, warmup_steps: 5, ..Default::default() },
            seed: 5,
            shuffle: true,
            eval_every: 0,
            eval_batches: 1,
            metrics: None,
            save_dtype: crate::formats::tensors::SaveDType::F32,
            stop_at: None,
            recompute: crate::model::Recompute::Light,
            keep_best: false,
        }
    }

    fn tokens() -> Vec<u32> {
        let mut rng = crate::testutil::Rand::new(3);
        (0..3000).map(|i| if i % 5 == 0 { (rng.next_u64() % 23) as u32 } else { (i % 7) as u32 }).collect()
    }

    /// Two ranks with the same global batch train the same model as one rank, over 100 steps.
    #[test]
    fn two_ranks_equal_one_rank() {
        let steps = 100;
        let o1 = opts("one", steps);
        let (m1, s1) = train(tiny_model(), tokens(), vec![], &o1, false, |_| {}).unwrap();
        let o2 = opts("two", steps);
        let reps = Replicas::new(&tiny_model(), vec![Cpu, Cpu], Box::new(HostCollective { ranks: 2 })).unwrap();
        let (m2, s2) = train_data_parallel(reps, tokens(), vec![], &o2, false, |_| {}).unwrap();
        assert_eq!(s1.losses.len(), s2.losses.len());
        for (i, (a, b)) in s1.losses.iter().zip(&s2.losses).enumerate() {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "step {}: loss {a} on one rank, {b} on two", i + 1);
        }
        assert!(s1.losses[steps as usize - 1] < s1.losses[0] - 0.5, "the model did not learn: {:?}", s1.losses);
        for ((spec, p1), (_, p2)) in m1.params().into_iter().zip(m2.params()) {
            let (a, b) = (Cpu.to_vec(p1).unwrap(), Cpu.to_vec(p2).unwrap());
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 2e-3 * scale, "{}: {x} vs {y}", spec.name);
            }
        }
        // The checkpoint written by rank 0 resumes on one rank.
        let mut more = opts("two", steps + 3);
        more.out = o2.out.clone();
        let (_, s3) = train(tiny_model(), tokens(), vec![], &more, true, |_| {}).unwrap();
        assert_eq!(s3.first_step, steps + 1);
        for o in [o1, o2] {
            let _ = std::fs::remove_dir_all(o.out);
        }
    }

    /// The summed gradient of the shards is the gradient of the global batch's mean loss, also
    /// when the shards count different numbers of targets (ignored ones).
    #[test]
    fn summed_shard_gradients_equal_the_global_gradient() {
        let (batch, seqlen) = (4, 9);
        let ids: Vec<u32> = (0..batch * seqlen).map(|i| ((i * 7 + 3) % 23) as u32).collect();
        let mut targets: Vec<u32> = ids.iter().map(|&t| (t + 1) % 23).collect();
        targets[2] = u32::MAX; // rank 0's shard counts fewer targets
        targets[5] = u32::MAX;
        let model = tiny_model();
        let mut want = model.zero_grads().unwrap();
        let (loss1, n1) = model.loss_and_grads(&ids, &targets, batch, seqlen, 0.5, &mut want).unwrap();
        let reps = Replicas::new(&model, vec![Cpu, Cpu], Box::new(HostCollective { ranks: 2 })).unwrap();
        let mut grads = reps.zero_grads().unwrap();
        let (loss2, n2) = reps.loss_and_grads(&ids, &targets, batch, seqlen, 0.5, &mut grads).unwrap();
        reps.all_reduce(&mut grads).unwrap();
        assert_eq!(n1, n2);
        assert!((loss1 - loss2).abs() < 1e-6, "{loss1} vs {loss2}");
        for g in &grads {
            for ((spec, a), (_, b)) in want.params().into_iter().zip(g.params()) {
                let (a, b) = (Cpu.to_vec(a).unwrap(), Cpu.to_vec(b).unwrap());
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-4 * scale, "{}: {x} vs {y}", spec.name);
                }
            }
        }
    }

    #[test]
    fn uneven_batch_and_rank_mismatch_are_refused() {
        let reps = Replicas::new(&tiny_model(), vec![Cpu, Cpu, Cpu], Box::new(HostCollective { ranks: 3 })).unwrap();
        let e = train_data_parallel(reps, tokens(), vec![], &opts("uneven", 2), false, |_| {}).err().unwrap();
        assert!(e.to_string().contains("--batch-size 4") && e.to_string().contains("3 devices"), "{e}");
        let e = Replicas::new(&tiny_model(), vec![Cpu], Box::new(HostCollective { ranks: 2 })).err().unwrap();
        assert!(e.to_string().contains("1 devices given for a collective of 2 ranks"), "{e}");
    }
}
