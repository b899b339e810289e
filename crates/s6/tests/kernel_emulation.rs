//! The CUDA scan kernels' logic checked without a GPU: `scripts/emulate/scan_emu.cpp` compiles
//! `kernels/scan.cu` for the CPU (`scripts/emulate/cuda_emu.h`: a block's threads as OS threads
//! meeting at a barrier for `__syncthreads`) and runs every d_state-16 block shape, f32 and bf16
//! activations, gate, strides and segments against an f64 reference. Skipped, saying so, where
//! no C++20 compiler (`g++`) is found.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn scan_kernels_match_f64_reference_on_the_cpu() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = root.join("scripts/emulate/scan_emu.cpp");
    if Command::new("g++").arg("--version").output().is_err() {
        println!("skipped: no g++ to compile {}", source.display());
        return;
    }
    let exe = std::env::temp_dir().join(format!("s6_scan_emu_{}", std::process::id()));
    let build = Command::new("g++")
        .args(["-std=c++20", "-O2", "-pthread", "-Wno-unknown-pragmas", "-Wno-attributes", "-o"])
        .arg(&exe)
        .arg(&source)
        .output()
        .expect("running g++");
    assert!(
        build.status.success(),
        "g++ could not compile {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe).output().expect("running the scan emulation");
    let _ = std::fs::remove_file(&exe);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && out.contains("all passed"), "the emulated scan kernels failed:\n{out}");
    assert!(out.lines().filter(|l| l.starts_with("ok")).count() >= 27, "fewer cases than written:\n{out}");
}
