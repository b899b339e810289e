//! Helpers shared by the CUDA test files (`tests/cuda*.rs`): the device or a "skipped" line, a
//! seeded generator, and fixture paths that work on a GPU machine running a prebuilt binary.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};

use s6::backend::cuda::Cuda;
use s6::backend::Backend;
use s6::config::MambaConfig;
use s6::formats::tensors::TensorFile;
use s6::model::mamba1::ParamSpec;
use s6::model::Mamba;

/// CUDA device 0, or `None` after printing "skipped: no CUDA device" when there is no GPU, driver
/// or toolkit library. Any other failure to open the device (a kernel NVRTC cannot compile, a
/// driver error) fails the test instead of hiding behind a skip.
pub fn gpu() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            let msg = e.to_string();
            let absent = ["CUDA is not available", "device(s) are visible", "device count"];
            assert!(absent.iter().any(|a| msg.contains(a)), "the CUDA device exists but cannot be used: {msg}");
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// SplitMix64 values in `[0, 1)`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
    /// `n` values in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
    /// An index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f32) as usize).min(n - 1)
    }
}

/// The fixtures beside the tests; when the test binary runs on another machine (the GPU machine
/// gets a prebuilt binary and a copy of the repository), `crates/s6/tests/fixtures` under the
/// current directory.
pub fn fixture(name: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.is_dir() { built } else { PathBuf::from("crates/s6/tests/fixtures") };
    dir.join(name)
}

/// The rows of an integer tensor of a fixture as token ids.
pub fn id_rows(file: &TensorFile, name: &str) -> Vec<Vec<u32>> {
    let (v, shape) = file.i64(name).unwrap();
    v.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
}

/// A Mamba built on `be` from host parameters (e.g. `init_params`), the same values on every
/// backend.
pub fn model_from<B: Backend>(be: B, cfg: &MambaConfig, params: &[(ParamSpec, Vec<f32>)]) -> Mamba<B> {
    let mut it = params.iter();
    Mamba::from_params(be, cfg.clone(), |_| Ok(it.next().map(|p| p.1.clone()).unwrap_or_default())).unwrap()
}
