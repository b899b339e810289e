//! The bundled selective-copying checkpoint (`models/selective-copying-s6`: the paper's Table 1
//! setting, 16 data tokens at L = 4096, reached by `s6 task` with `--load` through a length
//! curriculum, see docs/RESULTS.md) still loads and still copies at the paper's length: a
//! regression test of `--load`, the selective-copying generator and the streamed evaluation.

use std::path::Path;

use s6::backend::cpu::Cpu;
use s6::tasks::{self, Task, TaskOptions, Variant};

#[test]
fn bundled_selective_copying_model_copies_16_tokens_at_4096() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/selective-copying-s6");
    let mut o = TaskOptions::new(Task::SelectiveCopying, 4096);
    o.steps = 0;
    o.load_from = Some(dir);
    o.eval_lengths = vec![4096];
    o.eval_samples = 16;
    let r = tasks::run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
    assert_eq!(r.results.len(), 1);
    let l = &r.results[0];
    // 16 sequences × 16 answers; chance is 1/14. The model scores 99.4% on 1,024 samples
    // (RESULTS.md); 90% leaves room for these 256 answers' sampling error.
    assert_eq!(l.answers, 256);
    let acc = l.accuracy.unwrap();
    assert!(acc >= 0.9, "accuracy {acc} at length 4096");
    // The checkpoint is the S6 variant: loading it as the time-invariant one is refused.
    assert!(tasks::run(Cpu, Variant::Lti, &o, &mut |_| {}).is_err());
}
