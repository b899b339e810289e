//! The bundled default model (`models/shakespeare-mamba`, what `s6 generate` uses without
//! `--model`) still loads and still predicts held-out Shakespeare: its README gives 1.4214
//! nats/byte over 40 batches of the held-out 10%; here 8 windows of 256 bytes from that part.

use std::path::Path;

use s6::backend::cpu::Cpu;
use s6::model::Mamba;

#[test]
fn bundled_shakespeare_model_predicts_held_out_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = root.join("../shared/data/text/tinyshakespeare.txt");
    let Ok(bytes) = std::fs::read(&text) else {
        eprintln!("skipped: {} is not there", text.display());
        return;
    };
    let model = Mamba::load(Cpu, &root.join("models/shakespeare-mamba")).unwrap();
    // The held-out part: the last 10% (`s6 train --val-fraction 0.1`).
    let held_out = &bytes[bytes.len() - bytes.len() / 10..];
    let (windows, len) = (8, 256);
    let stride = (held_out.len() - len - 1) / windows;
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for w in 0..windows {
        let s = &held_out[w * stride..w * stride + len + 1];
        ids.extend(s[..len].iter().map(|&b| u32::from(b)));
        targets.extend(s[1..].iter().map(|&b| u32::from(b)));
    }
    let (loss, count) = model.loss(&ids, &targets, windows, len).unwrap();
    assert_eq!(count, windows * len);
    eprintln!("held-out loss over {count} bytes: {loss:.4} nats/byte");
    // The current model scores 1.3323 here, the first bundled one (1.4659 over the 40 batches)
    // 1.3552.
    assert!(loss < 1.345, "held-out loss {loss:.4} nats/byte: the bundled model got worse");
}
