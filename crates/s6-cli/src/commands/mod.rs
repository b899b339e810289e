//! One module per subcommand.

pub mod bench;
pub mod generate;
pub mod info;
pub mod init;
pub mod logits;
pub mod task;
pub mod train;

use std::path::PathBuf;

use anyhow::{bail, Result};
use s6::backend::collective::{Collective, HostCollective};
use s6::backend::cpu::Cpu;
use s6::backend::{Backend, Compute};

/// `--device`: where the model runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Device::Cuda(i)),
            _ => Err(format!("unknown device '{s}'; expected cpu, cuda or cuda:N")),
        },
    }
}

/// Resolves `--model` (a local directory or an HF repo id) to a directory.
pub fn model_dir(model: &str) -> Result<PathBuf> {
    Ok(s6::hub::resolve_model(model)?)
}

/// The model bundled with the source tree (`models/shakespeare-mamba`), used when `--model` is
/// not given: a byte-level Mamba trained on Tiny Shakespeare by `s6 train` (see its README).
pub fn bundled_model() -> Result<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/shakespeare-mamba"));
    if !dir.join("config.json").is_file() {
        bail!(
            "no --model given and the bundled model is not at {} (it ships with the s6 source tree); pass --model DIR or an HF repo id",
            dir.display()
        );
    }
    Ok(dir)
}

/// A command body written once for any backend; [`on_device`] runs it on the one `--device` names.
pub trait OnDevice {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

/// Opens the backend of `device`, set to compute matrix products as `compute` says, and runs
/// `job` on it.
pub fn on_device(device: &Device, compute: Compute, job: impl OnDevice) -> Result<()> {
    match device {
        Device::Cpu => {
            cpu_compute(compute)?;
            job.run(Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let backend = s6::backend::cuda::Cuda::new(*i)
                .map_err(|e| anyhow::anyhow!("device cuda:{i} is not available: {e}; use --device cpu"))?;
            backend.set_compute(compute)?;
            job.run(backend)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(i) => bail!(
            "device cuda:{i} is not available: this s6 was built without CUDA support (rebuild with `cargo build --release -p s6-cli --features cuda`); use --device cpu"
        ),
    }
}

/// The CPU computes in f32 only.
fn cpu_compute(compute: Compute) -> Result<()> {
    if compute != Compute::F32 {
        bail!(
            "--dtype {} is a CUDA option (TF32 or bf16 tensor-core products); the CPU computes in f32: use --dtype f32",
            format!("{compute:?}").to_lowercase()
        );
    }
    Ok(())
}

/// `--dtype`: f32, tf32 or bf16.
pub fn parse_compute(s: &str) -> Result<Compute, String> {
    s.parse().map_err(|e: s6::Error| e.to_string())
}

/// A command body written once for any backend that runs on several devices of one kind (data
/// parallelism); [`on_devices`] opens them and the collective that joins them.
pub trait OnDevices {
    fn run<B: Backend>(self, backends: Vec<B>, collective: Box<dyn Collective<B>>) -> Result<()>;
}

/// Opens every device of `devices` (all CPU or all CUDA) and runs `job` on them: CPU ranks are
/// joined through the host, CUDA ranks through NCCL.
pub fn on_devices(devices: &[Device], compute: Compute, job: impl OnDevices) -> Result<()> {
    if devices.is_empty() {
        bail!("--devices: no device given");
    }
    if devices.iter().all(|d| *d == Device::Cpu) {
        cpu_compute(compute)?;
        return job.run(vec![Cpu; devices.len()], Box::new(HostCollective { ranks: devices.len() }));
    }
    let ordinals: Vec<usize> = devices
        .iter()
        .map(|d| match d {
            Device::Cuda(i) => Ok(*i),
            Device::Cpu => bail!("--devices mixes cpu and cuda devices: give devices of one kind"),
        })
        .collect::<Result<_>>()?;
    #[cfg(feature = "cuda")]
    {
        use s6::backend::cuda::{nccl::Nccl, Cuda};
        let gpus = ordinals
            .iter()
            .map(|&i| Cuda::new(i).map_err(|e| anyhow::anyhow!("device cuda:{i} is not available: {e}")))
            .collect::<Result<Vec<_>>>()?;
        for g in &gpus {
            g.set_compute(compute)?;
        }
        let nccl = Nccl::new(&gpus)?;
        job.run(gpus, Box::new(nccl))
    }
    #[cfg(not(feature = "cuda"))]
    bail!(
        "devices {ordinals:?} are CUDA devices, but this s6 was built without CUDA support (rebuild with `cargo build --release -p s6-cli --features cuda`)"
    )
}

/// `--gpus N` as a device list: `cuda:0 .. cuda:N-1`.
pub fn first_gpus(n: usize) -> Vec<Device> {
    (0..n).map(Device::Cuda).collect()
}

/// A line above a progress bar, or on stderr when the bar is hidden (stderr is not a terminal).
pub fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Parses `--betas B1,B2` (each in [0, 1)).
pub fn parse_betas(s: &str) -> anyhow::Result<(f32, f32)> {
    match s.split_once(',').map(|(x, y)| (x.trim().parse::<f32>(), y.trim().parse::<f32>())) {
        Some((Ok(x), Ok(y))) if (0.0..1.0).contains(&x) && (0.0..1.0).contains(&y) => Ok((x, y)),
        _ => anyhow::bail!("--betas must be two numbers in [0, 1) like 0.9,0.95, got '{s}'"),
    }
}
