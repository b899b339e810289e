//! Data-parallel gradient sums over NCCL, one process driving several devices (one communicator
//! per device, created together by `ncclCommInitAll`).
//!
//! NCCL is loaded at run time like the other CUDA libraries: without `libnccl.so.2`,
//! [`Nccl::new`] returns an error naming it instead of panicking.

use cudarc::nccl::safe::{Comm, ReduceOp};
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};

use super::{Cuda, CudaBuf};
use crate::backend::collective::{check_ranks, Collective};
use crate::{Error, Result};

/// One NCCL communicator per rank; rank `r` is `devices[r]` of [`Nccl::new`].
pub struct Nccl {
    comms: Vec<Comm>,
}

// SAFETY: a communicator is used by one call at a time: every use goes through `&self` inside
// `all_reduce_sum`, which issues the whole group from one thread; NCCL communicators may be
// moved between threads.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

fn nccl_err(what: &str) -> impl Fn(nccl_result::NcclError) -> Error + '_ {
    move |e| Error::Backend(format!("NCCL {what}: {e:?}"))
}

impl Nccl {
    /// Communicators for `devices` (distinct GPUs; NCCL refuses two ranks on one device).
    pub fn new(devices: &[Cuda]) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { nccl_sys::is_culib_present() } {
            return Err(Error::Backend(
                "multi-device training needs NCCL (libnccl.so.2), which cannot be loaded: install it (e.g. the \
                 nvidia-nccl-cu13 wheel) and add its lib directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        if devices.is_empty() {
            return Err(Error::input("NCCL: no devices given"));
        }
        let mut ordinals: Vec<usize> = devices.iter().map(|d| d.ordinal()).collect();
        ordinals.sort_unstable();
        if ordinals.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::input(format!(
                "NCCL: each rank needs its own GPU, but the devices {:?} repeat one",
                devices.iter().map(|d| d.ordinal()).collect::<Vec<_>>()
            )));
        }
        let streams = devices.iter().map(|d| d.stream().clone()).collect();
        let comms = Comm::from_devices(streams).map_err(nccl_err("communicator setup (ncclCommInitAll)"))?;
        Ok(Nccl { comms })
    }
}

impl Collective<Cuda> for Nccl {
    fn name(&self) -> String {
        format!("nccl ({} rank{})", self.comms.len(), if self.comms.len() == 1 { "" } else { "s" })
    }
    fn world_size(&self) -> usize {
        self.comms.len()
    }
    /// One NCCL group holding every tensor's all-reduce on every rank: NCCL fuses small tensors,
    /// and one thread can drive all ranks without deadlock.
    fn all_reduce_sum(&self, backends: &[&Cuda], bufs: Vec<Vec<&mut CudaBuf>>) -> Result<()> {
        check_ranks(self.comms.len(), backends, &bufs)?;
        // Checked before the group: a rank left out of it would leave the others waiting.
        let held_bf16 = |b: &CudaBuf| b.f32_released || b.f32_stale.load(std::sync::atomic::Ordering::Relaxed);
        if bufs.iter().flatten().any(|b| held_bf16(b)) {
            return Err(Error::Backend("NCCL all-reduce of a buffer held in bf16 alone (its f32 values stale)".into()));
        }
        nccl_result::group_start().map_err(nccl_err("group start"))?;
        let mut outcome = Ok(());
        'ranks: for (comm, list) in self.comms.iter().zip(bufs) {
            for buf in list {
                if let Err(e) = comm.all_reduce_in_place(buf.data_mut(), &ReduceOp::Sum) {
                    outcome = Err(nccl_err("all-reduce")(e));
                    break 'ranks;
                }
            }
        }
        // The group is closed whatever happened inside it.
        let end = nccl_result::group_end().map_err(nccl_err("group end"));
        outcome.and(end).map(|_| ())
    }
}
