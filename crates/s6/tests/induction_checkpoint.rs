//! The bundled induction-heads checkpoint (`models/induction-heads-s6`: `s6 task` with the paper's
//! recipe, see docs/RESULTS.md) still loads and still answers far beyond its training length of
//! 256. A regression test of `--load`, the task generator, and the evaluation that streams long
//! sequences through the recurrent state, together.

use std::path::Path;

use s6::backend::cpu::Cpu;
use s6::tasks::{self, Task, TaskOptions, Variant};

#[test]
fn bundled_induction_heads_model_answers_at_64x_its_training_length() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/induction-heads-s6");
    let mut o = TaskOptions::new(Task::InductionHeads, 256);
    o.steps = 0;
    o.load_from = Some(dir);
    o.eval_lengths = vec![256, 1 << 14];
    o.eval_samples = 16;
    let r = tasks::run(Cpu, Variant::S6, &o, &mut |_| {}).unwrap();
    assert_eq!(r.results.len(), 2);
    for l in &r.results {
        assert_eq!((l.accuracy, l.answers), (Some(1.0), 16), "length {}", l.seq_len);
    }
    // The checkpoint is the S6 variant: loading it as another is refused.
    assert!(tasks::run(Cpu, Variant::Lti, &o, &mut |_| {}).is_err());
}
