//! `s6 train` end to end: resume gives the same losses as an uninterrupted run, a kill -9 at any
//! moment leaves a loadable checkpoint, divergence stops the run and keeps the last good
//! checkpoint, metrics carry the documented fields, fine-tuning starts from HF checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use s6::backend::cpu::Cpu;
use s6::model::Mamba;

struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("s6-train-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s6(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s6"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("cannot run s6")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "s6 failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// A small text corpus (bytes) written into the temp dir.
fn corpus(tmp: &TempDir) -> PathBuf {
    let p = tmp.join("data.txt");
    let text: String =
        (0..400).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog {}\n", i * 7 % 13)).collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// `(step, loss)` of every step line of a metrics file.
fn losses(path: &Path) -> Vec<(u64, f64)> {
    metric(path, "loss")
}

/// `(step, value of field)` of every line of a metrics file that has the field.
fn metric(path: &Path, field: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v.get("step")?.as_u64()?, v.get(field)?.as_f64()?))
        })
        .collect()
}

fn train_args<'a>(data: &'a str, out: &'a str, metrics: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--d-model",
        "32",
        "--n-layer",
        "2",
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--eval-every",
        "3",
        "--val-fraction",
        "0.1",
        "--warmup-steps",
        "2",
        "--metrics",
        metrics,
        "--seed",
        "11",
    ]
}

/// Sets the value following `flag` in an argument list.
fn set<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let i = args.iter().position(|a| *a == flag).expect("flag present") + 1;
    args[i] = value;
}

#[test]
fn resume_continues_bit_identically() {
    let tmp = TempDir::new("resume");
    let data = corpus(&tmp);
    let (d, a, b) = (data.to_str().unwrap(), tmp.join("a"), tmp.join("b"));
    let (ma, mb) = (tmp.join("a.jsonl"), tmp.join("b.jsonl"));
    ok(&s6(&train_args(d, a.to_str().unwrap(), ma.to_str().unwrap(), "9")));
    let mut first = train_args(d, b.to_str().unwrap(), mb.to_str().unwrap(), "9");
    first.extend(["--stop-at", "5"]);
    ok(&s6(&first));
    let mut args = train_args(d, b.to_str().unwrap(), mb.to_str().unwrap(), "9");
    args.push("--resume");
    ok(&s6(&args));
    let (la, lb) = (losses(&ma), losses(&mb));
    assert_eq!(la.len(), 9);
    assert_eq!(la, lb, "resumed run's losses differ from the uninterrupted run's");
    // The final checkpoints are the same model.
    let (x, y) =
        (std::fs::read(a.join("model.safetensors")).unwrap(), std::fs::read(b.join("model.safetensors")).unwrap());
    assert!(x == y, "final weights differ");
}

#[test]
fn metrics_have_the_documented_fields_and_loss_falls() {
    let tmp = TempDir::new("metrics");
    let data = corpus(&tmp);
    let (out, m) = (tmp.join("o"), tmp.join("m.jsonl"));
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), m.to_str().unwrap(), "30");
    args.extend(["--lr", "1e-2"]);
    ok(&s6(&args));
    let text = std::fs::read_to_string(&m).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 30);
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(steps.iter().all(|v| v.get(key).is_some()), "missing '{key}'");
    }
    assert!(lines.iter().filter(|v| v.get("val_loss").is_some()).count() >= 10);
    let l = losses(&m);
    assert!(l[29].1 < l[0].1 - 1.0, "loss did not fall: {} → {}", l[0].1, l[29].1);
    assert!(out.join("loss.svg").is_file() && out.join("config.json").is_file());
    // The checkpoint is an ordinary model directory.
    let model = Mamba::load(Cpu, &out).unwrap();
    assert_eq!(model.cfg.vocab_size, 256);
    let g = s6(&["generate", "--model", out.to_str().unwrap(), "--prompt", "line", "--max-tokens", "5", "--seed", "1"]);
    ok(&g);
}

#[test]
fn kill_at_any_moment_leaves_a_loadable_checkpoint() {
    let tmp = TempDir::new("kill");
    let data = corpus(&tmp);
    let out = tmp.join("o");
    let metrics = tmp.join("m.jsonl");
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), metrics.to_str().unwrap(), "100000");
    // Checkpoint after every step, so the kill lands inside writes often.
    set(&mut args, "--eval-every", "1");
    for (i, delay_ms) in [700u64, 1100, 1500, 1900].into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_s6"))
            .args(&args)
            .args(if i > 0 { vec!["--resume"] } else { vec![] })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(delay_ms) {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !out.join("training_state.safetensors").is_file() {
            continue; // killed before the first checkpoint: nothing to check yet
        }
        Mamba::load(Cpu, &out).unwrap_or_else(|e| panic!("checkpoint not loadable after kill {i}: {e}"));
        // And the run resumes from it.
        let mut resume = args.clone();
        set(&mut resume, "--steps", "1000000");
        let o = Command::new(env!("CARGO_BIN_EXE_s6"))
            .args(&resume)
            .arg("--resume")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut o = o;
        o.kill().unwrap();
        let out_status = o.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out_status.stderr);
        assert!(!err.contains("error"), "resume after kill {i} failed: {err}");
    }
    assert!(out.join("training_state.safetensors").is_file(), "no checkpoint was ever written");
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = TempDir::new("nan");
    let data = corpus(&tmp);
    let out = tmp.join("o");
    let metrics = tmp.join("m.jsonl");
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), metrics.to_str().unwrap(), "50");
    args.extend(["--lr", "1e30", "--grad-clip", "0", "--lr-schedule", "constant"]);
    set(&mut args, "--eval-every", "1");
    set(&mut args, "--warmup-steps", "0");
    let o = s6(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("diverged") && err.contains("last good checkpoint"), "{err}");
    assert!(!err.contains("panicked"));
    Mamba::load(Cpu, &out).expect("the last good checkpoint must stay loadable");
}

#[test]
fn fine_tune_hf_checkpoint_on_npy_tokens() {
    let tmp = TempDir::new("finetune");
    // A uint16 .npy of token ids inside mamba-tiny's vocabulary (1000).
    let n = 3000usize;
    let header = format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({n},), }}");
    let mut h = header;
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    for i in 0..n {
        bytes.extend(((i * 31 % 97) as u16).to_le_bytes());
    }
    let npy = tmp.join("tokens.npy");
    std::fs::write(&npy, bytes).unwrap();
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("../s6/tests/fixtures/mamba-odd");
    let out = tmp.join("ft");
    let m = tmp.join("m.jsonl");
    let o = s6(&[
        "train",
        "--init",
        init.to_str().unwrap(),
        "--data",
        npy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--seq-len",
        "24",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "0",
        "--no-shuffle",
        "--metrics",
        m.to_str().unwrap(),
        "--eval-every",
        "0",
    ]);
    ok(&o);
    let l = losses(&m);
    assert!(l[7].1 < l[0].1, "fine-tuning did not reduce the loss: {l:?}");
    let model = Mamba::load(Cpu, &out).unwrap();
    assert!(!model.cfg.tie_embeddings && model.cfg.d_model == 45);
}

/// `--device cuda`: where there is no GPU (or no CUDA in this build) the command says so and
/// fails; on a GPU, the same run as on the CPU gives the same loss curve (to 1e-3) and a
/// checkpoint the CPU loads and resumes from.
#[test]
fn device_cuda_trains_like_the_cpu_or_says_unavailable() {
    let tmp = TempDir::new("device_cuda");
    let data = corpus(&tmp);
    let (d, oc, og) = (data.to_str().unwrap(), tmp.join("cpu"), tmp.join("gpu"));
    let (mc, mg) = (tmp.join("mc.jsonl"), tmp.join("mg.jsonl"));
    let (oc_s, og_s, mc_s, mg_s) =
        (oc.to_str().unwrap(), og.to_str().unwrap(), mc.to_str().unwrap(), mg.to_str().unwrap());
    let mut gpu_args = train_args(d, og_s, mg_s, "12");
    gpu_args.extend(["--device", "cuda"]);
    let o = s6(&gpu_args);
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cuda:0") && err.contains("not available"), "unexpected failure:\n{err}");
        println!("skipped: no CUDA device ({})", err.trim());
        return;
    }
    ok(&s6(&train_args(d, oc_s, mc_s, "12")));
    let (lc, lg) = (losses(&mc), losses(&mg));
    assert_eq!(lc.len(), lg.len(), "steps logged");
    for ((s, c), (_, g)) in lc.iter().zip(&lg) {
        assert!((c - g).abs() <= 1e-3, "step {s}: GPU loss {g} vs CPU {c}");
    }
    // The GPU's checkpoint resumes on the CPU.
    let mut resume = train_args(d, og_s, mg_s, "14");
    resume.push("--resume");
    ok(&s6(&resume));
}

/// `--keep-best`: `OUT/best` holds the model of the evaluation with the lowest validation loss
/// (the same bytes as a run stopped at that step), also across `--resume`; without held-out
/// data it is refused. (A large constant rate makes the validation loss go up and down.)
#[test]
fn keep_best_exports_the_lowest_validation_loss() {
    let tmp = TempDir::new("keep-best");
    let data = corpus(&tmp);
    let d = data.to_str().unwrap();
    let run = |out: &str, metrics: &str, extra: &[&str]| {
        let mut args = train_args(d, out, metrics, "30");
        set(&mut args, "--eval-every", "2");
        args.extend(["--lr", "0.2", "--lr-schedule", "constant"]);
        args.extend(extra);
        s6(&args)
    };
    let (a, ma) = (tmp.join("a"), tmp.join("a.jsonl"));
    let o = run(a.to_str().unwrap(), ma.to_str().unwrap(), &["--keep-best"]);
    ok(&o);
    let evals = metric(&ma, "val_loss");
    assert_eq!(evals.len(), 15);
    let (best_step, best_loss) = evals.iter().fold((0, f64::INFINITY), |b, &(s, v)| if v < b.1 { (s, v) } else { b });
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("best: val_loss {best_loss:.4} at step {best_step}")),
        "no report of the best evaluation (step {best_step}, {best_loss}):\n{stderr}"
    );
    let best_model = std::fs::read(a.join("best/model.safetensors")).unwrap();
    assert!(a.join("best/config.json").is_file());

    // The same run stopped at the best step exports the same model.
    let (b, mb) = (tmp.join("b"), tmp.join("b.jsonl"));
    let stop = best_step.to_string();
    ok(&run(b.to_str().unwrap(), mb.to_str().unwrap(), &["--stop-at", &stop]));
    assert!(
        std::fs::read(b.join("model.safetensors")).unwrap() == best_model,
        "best/ is not the model of step {best_step}"
    );
    if best_step < 30 {
        assert!(std::fs::read(a.join("model.safetensors")).unwrap() != best_model, "best/ holds the final model");
    }

    // Interrupted and resumed, with the best so far carried in the training state.
    let (c, mc) = (tmp.join("c"), tmp.join("c.jsonl"));
    let cs = c.to_str().unwrap();
    ok(&run(cs, mc.to_str().unwrap(), &["--keep-best", "--stop-at", "20"]));
    let o = run(cs, mc.to_str().unwrap(), &["--keep-best", "--resume"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("best: val_loss {best_loss:.4} at step {best_step}")));
    assert!(std::fs::read(c.join("best/model.safetensors")).unwrap() == best_model, "resumed run's best/ differs");

    // No held-out data: refused, naming the flag to set.
    let (e, me) = (tmp.join("e"), tmp.join("e.jsonl"));
    let mut args = train_args(d, e.to_str().unwrap(), me.to_str().unwrap(), "4");
    set(&mut args, "--val-fraction", "0");
    args.push("--keep-best");
    let o = s6(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--val-fraction"), "{}", String::from_utf8_lossy(&o.stderr));
}
