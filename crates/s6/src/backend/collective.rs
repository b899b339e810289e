//! Collectives for data parallelism: the sum of a set of buffers over the ranks (replicas) of one
//! training job, left on every rank.
//!
//! A job drives one model replica per device from one process. [`HostCollective`] sums through
//! host memory and works for any backend (CPU replicas, tests); on CUDA the NCCL collective
//! (`backend::cuda::nccl::Nccl`) all-reduces device to device.

use super::Backend;
use crate::{Error, Result};

/// Sums buffers over ranks, in place.
pub trait Collective<B: Backend>: Send + Sync {
    /// What does the reduction ("host", "nccl (2 ranks)").
    fn name(&self) -> String;
    /// Number of ranks this collective was set up for.
    fn world_size(&self) -> usize;
    /// For each tensor index `i`, replaces `bufs[r][i]` on every rank `r` by `Σ_r bufs[r][i]`.
    /// `backends[r]` owns rank `r`'s buffers; every rank lists the same tensors in the same order.
    fn all_reduce_sum(&self, backends: &[&B], bufs: Vec<Vec<&mut B::Buf>>) -> Result<()>;
}

/// Sums through the host: each rank's buffer is copied out, summed in rank order (f32, as a ring
/// all-reduce would), and the sum copied back to every rank. Any backend; the reference for NCCL.
#[derive(Clone, Copy, Debug)]
pub struct HostCollective {
    pub ranks: usize,
}

/// Checks the shape of an all-reduce call: one backend and one list per rank, equal lengths.
pub(crate) fn check_ranks<B: Backend>(world: usize, backends: &[&B], bufs: &[Vec<&mut B::Buf>]) -> Result<()> {
    if backends.len() != world || bufs.len() != world {
        return Err(Error::Backend(format!(
            "all-reduce over {world} ranks got {} backends and {} buffer lists",
            backends.len(),
            bufs.len()
        )));
    }
    let n = bufs[0].len();
    for (r, list) in bufs.iter().enumerate() {
        if list.len() != n {
            return Err(Error::Backend(format!("all-reduce: rank {r} has {} tensors, rank 0 has {n}", list.len())));
        }
        for (i, b) in list.iter().enumerate() {
            let (len, len0) = (backends[r].len(b), backends[0].len(bufs[0][i]));
            if len != len0 {
                return Err(Error::Backend(format!(
                    "all-reduce: tensor {i} has {len} elements on rank {r} but {len0} on rank 0"
                )));
            }
        }
    }
    Ok(())
}

impl<B: Backend> Collective<B> for HostCollective {
    fn name(&self) -> String {
        format!("host ({} rank{})", self.ranks, if self.ranks == 1 { "" } else { "s" })
    }
    fn world_size(&self) -> usize {
        self.ranks
    }
    fn all_reduce_sum(&self, backends: &[&B], mut bufs: Vec<Vec<&mut B::Buf>>) -> Result<()> {
        check_ranks(self.ranks, backends, &bufs)?;
        if self.ranks == 1 {
            return Ok(());
        }
        for i in 0..bufs[0].len() {
            let mut sum = backends[0].to_vec(bufs[0][i])?;
            for r in 1..self.ranks {
                for (s, v) in sum.iter_mut().zip(backends[r].to_vec(bufs[r][i])?) {
                    *s += v;
                }
            }
            for (be, list) in backends.iter().zip(bufs.iter_mut()) {
                *list[i] = be.from_vec(sum.clone())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn host_all_reduce_sums_on_every_rank() {
        let be = Cpu;
        let mut a = [be.from_vec(vec![1.0, 2.0]).unwrap(), be.from_vec(vec![5.0]).unwrap()];
        let mut b = [be.from_vec(vec![10.0, 20.0]).unwrap(), be.from_vec(vec![-1.0]).unwrap()];
        let c = HostCollective { ranks: 2 };
        let lists = vec![a.iter_mut().collect(), b.iter_mut().collect()];
        Collective::<Cpu>::all_reduce_sum(&c, &[&be, &be], lists).unwrap();
        for list in [&a, &b] {
            assert_eq!(be.to_vec(&list[0]).unwrap(), vec![11.0, 22.0]);
            assert_eq!(be.to_vec(&list[1]).unwrap(), vec![4.0]);
        }
        // Mismatched shapes are refused with the tensor and rank named.
        let mut d = [be.from_vec(vec![1.0]).unwrap(), be.from_vec(vec![5.0]).unwrap()];
        let lists = vec![a.iter_mut().collect(), d.iter_mut().collect()];
        let e = Collective::<Cpu>::all_reduce_sum(&c, &[&be, &be], lists).unwrap_err().to_string();
        assert!(e.contains("tensor 0") && e.contains("rank 1"), "{e}");
    }
}
