//! The CUDA scan kernels' logic checked without a GPU: `scripts/emulate/` compiles
//! `kernels/scan.cu` and `kernels/scan_backward.cu` for the CPU (`cuda_emu.h`: a block's threads
//! as OS threads meeting at a barrier for `__syncthreads`, libm for the SFU) and runs the
//! d_state-16 forward (both block shapes; f32 and bf16 activations; gate; strides; segments)
//! against an f64 reference (`scan_emu.cpp`), and the backward against finite differences of
//! that reference (`scan_bwd_emu.cpp`), and the conv and norm kernels of bf16 storage (prefill's,
//! and the conv backward's dx in training) against the f32 ones (`bf16_storage_emu.cpp`), and the one-kernel decoding step against an
//! f64 reference (`layer_step_emu.cpp`), and the large-batch decoding scan step
//! (`mixer_step_emu.cpp`). Skipped, saying so, where no `g++` is found.

use std::path::PathBuf;
use std::process::Command;

/// Compiles one harness with the extra `defines` (`-DNAME=VALUE`) and runs it; its output must say
/// "all passed" over at least `cases` lines starting with "ok".
fn run_harness(name: &str, defines: &[&str], cases: usize) {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../scripts/emulate/{name}.cpp"));
    if Command::new("g++").arg("--version").output().is_err() {
        println!("skipped: no g++ to compile {}", source.display());
        return;
    }
    let exe = std::env::temp_dir().join(format!("s6_{name}_{}_{}", defines.len(), std::process::id()));
    let build = Command::new("g++")
        .args(["-std=c++20", "-O2", "-pthread", "-Wno-unknown-pragmas", "-Wno-attributes"])
        .args(defines)
        .arg("-o")
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
    let run = Command::new(&exe).output().expect("running the emulation");
    let _ = std::fs::remove_file(&exe);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.contains("all passed"),
        "{name} {defines:?}: the emulated kernels failed:\n{out}"
    );
    let ok = out.lines().filter(|l| l.starts_with("ok")).count();
    assert!(ok >= cases, "{name} {defines:?}: {ok} cases passed, {cases} written:\n{out}");
}

#[test]
fn scan_forward_kernels_match_f64_reference_on_the_cpu() {
    run_harness("scan_emu", &[], 31);
}

#[test]
fn scan_backward_kernel_matches_finite_differences_on_the_cpu() {
    run_harness("scan_bwd_emu", &[], 105);
}

/// The backward's chunk loads with 64-bit offsets (`S6_SCAN_BWD_WIDE_ONLY`), which a GPU takes
/// only past 2^31 elements, where the emulation cannot go.
#[test]
fn scan_backward_wide_offsets_match_too() {
    run_harness("scan_bwd_emu", &["-DS6_SCAN_BWD_WIDE_ONLY"], 105);
}

/// The conv and RMSNorm kernels of prefill's bf16 storage (x, the block output read as bf16;
/// outputs written in bf16 alone), and the conv backward's dx written in bf16 alone, give the f32
/// kernels' bits on the same values, and the cast back to f32 widens exactly (`bf16_storage_emu.cpp`; the norms' warp shuffles emulated).
#[test]
fn bf16_storage_kernels_match_the_f32_ones_on_the_cpu() {
    run_harness("bf16_storage_emu", &[], 48);
}

/// The one-kernel decoding step of a block (`kernels/layer_step.cu`: four phases meeting at grid
/// barriers, every block of the grid running at once) against an f64 reference of the step, over
/// carried states, both entries and every tail past what a lane loads early
/// (`layer_step_emu.cpp`).
#[test]
fn layer_step_kernel_matches_f64_reference_on_the_cpu() {
    run_harness("layer_step_emu", &[], 23);
}

/// The large-batch decoding scan step at d_state 16 with dt given by a product for the batch
/// (`s6_mixer_step_scan_n16`) against an f64 reference over two carried steps, d_conv 2 to 5
/// (`mixer_step_emu.cpp`).
#[test]
fn mixer_step_scan_kernel_matches_f64_reference_on_the_cpu() {
    run_harness("mixer_step_emu", &[], 40);
}

/// The loops as they were before their operands were loaded a step ahead (`S6_SCAN_AHEAD=0`,
/// `S6_SCAN_BWD_AHEAD=0`: kept for side-by-side measurements), checked the same way.
#[test]
fn scan_kernels_without_the_look_ahead_match_too() {
    run_harness("scan_emu", &["-DS6_SCAN_AHEAD=0"], 31);
    run_harness("scan_bwd_emu", &["-DS6_SCAN_BWD_AHEAD=0"], 105);
}
