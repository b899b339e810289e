//! Seeded generators of the synthetic tasks. Every sample is a token sequence `s` of length
//! `seq_len + 1`; the model reads `s[..seq_len]` and is scored on the next-token predictions at
//! the *answer positions* only (`targets[t] = s[t + 1]` there, ignored elsewhere). Accuracy is the
//! fraction of answer tokens whose argmax prediction is right (teacher forcing: each answer is
//! predicted from the true previous answers, as in training).
//!
//! Token conventions (vocabulary 16 unless a task says otherwise): `0` is the noise / blank
//! token, `1` the separator (copying tasks) or the trigger (induction heads), `2..vocab` data.
//!
//! - **Copying** (fixed delay, solvable by time-invariant models): `k` data tokens, then blanks,
//!   then the separator at position `seq_len − k`, then the same `k` tokens. The delay between a
//!   token and its copy is always `seq_len − k`.
//! - **Selective copying** (paper §4.1.1): `k` data tokens at random distinct positions of a
//!   context of `seq_len − k` noise tokens, in order; then the separator and the `k` tokens in the
//!   order they appeared. Positions vary per sample: the model must select by content.
//! - **Induction heads** (paper §4.1.2): random tokens from `{0, 2, …, 15}`; the trigger `1`
//!   appears exactly twice: once at a random position followed by a token `x`, and as the last
//!   input. The single answer is `x`.
//! - **MQAR** (multi-query associative recall, Arora et al., *Zoology*): `n` key–value pairs at
//!   the start (keys from the lower half of `2..vocab`, values from the upper half, distinct
//!   keys), then noise with each key queried once at a random position, immediately followed by
//!   its value; answers are the values after the queried keys.

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::{Error, Result};

/// Ignored target.
pub const IGNORE: u32 = u32::MAX;
/// Noise / blank token.
pub const NOISE: u32 = 0;
/// Separator (copying tasks) or trigger (induction heads).
pub const MARK: u32 = 1;

/// One of the synthetic tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Copying,
    SelectiveCopying,
    InductionHeads,
    Mqar,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Copying, Task::SelectiveCopying, Task::InductionHeads, Task::Mqar];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Copying => "copying",
            Task::SelectiveCopying => "selective-copying",
            Task::InductionHeads => "induction-heads",
            Task::Mqar => "mqar",
        }
    }

    /// Default vocabulary size (the paper's 16; MQAR needs more distinct keys and values).
    pub fn default_vocab(self) -> usize {
        match self {
            Task::Mqar => 64,
            _ => 16,
        }
    }

    /// Default number of items: tokens to copy, or key–value pairs (0 for induction heads).
    pub fn default_items(self) -> usize {
        match self {
            Task::Copying | Task::SelectiveCopying => 16,
            Task::InductionHeads => 0,
            Task::Mqar => 8,
        }
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Task::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
            Error::input(format!("unknown task '{s}'; expected one of {}", names.join(", ")))
        })
    }
}

/// A task with its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    pub task: Task,
    pub vocab: usize,
    /// Tokens to copy (copying tasks) or key–value pairs (MQAR); unused by induction heads.
    pub items: usize,
}

/// A batch of samples: `ids` and `targets` row-major `[batch, seq_len]`.
#[derive(Clone, Debug)]
pub struct TaskBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
}

impl TaskBatch {
    /// Positions (within a sequence) that carry an answer in at least one sample.
    pub fn answer_positions(&self) -> Vec<usize> {
        (0..self.seq_len).filter(|&t| (0..self.batch).any(|b| self.targets[b * self.seq_len + t] != IGNORE)).collect()
    }
}

impl TaskSpec {
    /// A task with its default vocabulary and item count.
    pub fn new(task: Task) -> Self {
        TaskSpec { task, vocab: task.default_vocab(), items: task.default_items() }
    }

    /// The shortest sequence this task can be posed at.
    pub fn min_seq_len(&self) -> usize {
        match self.task {
            Task::Copying | Task::SelectiveCopying => 2 * self.items + 1,
            Task::InductionHeads => 4,
            Task::Mqar => 4 * self.items,
        }
    }

    /// Checks sizes; errors name the offending value.
    pub fn validate(&self, seq_len: usize) -> Result<()> {
        let data = self.vocab.saturating_sub(2);
        match self.task {
            Task::Copying | Task::SelectiveCopying | Task::InductionHeads if data < 2 => {
                return Err(Error::input(format!(
                    "{}: vocabulary {} leaves fewer than 2 data tokens",
                    self.task.name(),
                    self.vocab
                )))
            }
            Task::Mqar if data / 2 < self.items.max(1) || data - data / 2 < 2 => {
                return Err(Error::input(format!(
                    "mqar: vocabulary {} has {} possible keys for {} key-value pairs; use a larger --vocab",
                    self.vocab,
                    data / 2,
                    self.items
                )))
            }
            _ => {}
        }
        if matches!(self.task, Task::Copying | Task::SelectiveCopying | Task::Mqar) && self.items == 0 {
            return Err(Error::input(format!("{}: needs at least one item to copy or recall", self.task.name())));
        }
        if seq_len < self.min_seq_len() {
            return Err(Error::input(format!(
                "{}: sequence length {seq_len} is too short; it needs at least {} tokens{}",
                self.task.name(),
                self.min_seq_len(),
                match self.task {
                    Task::Copying | Task::SelectiveCopying => format!(" for {} tokens to copy", self.items),
                    Task::Mqar => format!(" for {} key-value pairs", self.items),
                    Task::InductionHeads => String::new(),
                }
            )));
        }
        Ok(())
    }

    /// `batch` fresh samples of length `seq_len` from `rng`.
    pub fn batch(&self, rng: &mut TaskRng, batch: usize, seq_len: usize) -> Result<TaskBatch> {
        self.validate(seq_len)?;
        let mut ids = Vec::with_capacity(batch * seq_len);
        let mut targets = Vec::with_capacity(batch * seq_len);
        let mut s = vec![NOISE; seq_len + 1];
        let mut answer = vec![false; seq_len];
        for _ in 0..batch {
            s.fill(NOISE);
            answer.fill(false);
            self.sample(rng, &mut s, &mut answer);
            ids.extend_from_slice(&s[..seq_len]);
            targets.extend((0..seq_len).map(|t| if answer[t] { s[t + 1] } else { IGNORE }));
        }
        Ok(TaskBatch { batch, seq_len, ids, targets })
    }

    /// Fills one sample `s` (length `seq_len + 1`, all noise on entry) and marks the input
    /// positions whose next token is an answer.
    fn sample(&self, rng: &mut TaskRng, s: &mut [u32], answer: &mut [bool]) {
        let len = answer.len();
        let data = |rng: &mut TaskRng| 2 + rng.below(self.vocab - 2) as u32;
        match self.task {
            Task::Copying | Task::SelectiveCopying => {
                let k = self.items;
                let sep = len - k;
                let tokens: Vec<u32> = (0..k).map(|_| data(rng)).collect();
                let positions = if self.task == Task::Copying { (0..k).collect() } else { rng.distinct_sorted(k, sep) };
                for (&p, &tok) in positions.iter().zip(&tokens) {
                    s[p] = tok;
                }
                s[sep] = MARK;
                s[sep + 1..].copy_from_slice(&tokens);
                answer[sep..].fill(true);
            }
            Task::InductionHeads => {
                // Ordinary tokens: every token but the trigger.
                for v in s.iter_mut() {
                    let r = rng.below(self.vocab - 1) as u32;
                    *v = if r >= MARK { r + 1 } else { r };
                }
                let first = rng.below(len - 2);
                s[first] = MARK;
                s[len - 1] = MARK;
                s[len] = s[first + 1];
                answer[len - 1] = true;
            }
            Task::Mqar => {
                let n = self.items;
                let data_tokens = self.vocab - 2;
                let half = data_tokens / 2;
                let keys = rng.distinct_sorted(n, half);
                let mut pairs: Vec<(u32, u32)> = keys
                    .iter()
                    .map(|&k| (2 + k as u32, 2 + half as u32 + rng.below(data_tokens - half) as u32))
                    .collect();
                rng.shuffle(&mut pairs);
                for (i, &(k, v)) in pairs.iter().enumerate() {
                    s[2 * i] = k;
                    s[2 * i + 1] = v;
                }
                // Queries: n non-overlapping (key, value) slots in the rest, in random order.
                let rest = len + 1 - 2 * n;
                let slots = rng.distinct_sorted(n, rest / 2);
                let mut order: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut order);
                for (&slot, &i) in slots.iter().zip(&order) {
                    let p = 2 * n + 2 * slot;
                    s[p] = pairs[i].0;
                    s[p + 1] = pairs[i].1;
                    answer[p] = true;
                }
            }
        }
    }
}

/// The generators' random source (seeded, reproducible).
pub struct TaskRng(Pcg64);

impl TaskRng {
    pub fn new(seed: u64) -> Self {
        TaskRng(Pcg64::seed_from_u64(seed))
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias for n ≪ 2^64 is negligible for task data.
        ((self.0.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// `k` distinct values of `0..n`, sorted (Floyd's algorithm; `k <= n`).
    pub fn distinct_sorted(&mut self, k: usize, n: usize) -> Vec<usize> {
        let mut chosen = std::collections::BTreeSet::new();
        for j in n - k..n {
            let t = self.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }
        chosen.into_iter().collect()
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(task: Task, len: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let b = TaskSpec::new(task).batch(&mut TaskRng::new(seed), 1, len).unwrap();
        (b.ids, b.targets)
    }

    #[test]
    fn copying_repeats_the_prefix_after_the_separator() {
        let (ids, tg) = one(Task::Copying, 40, 1);
        let k = 16;
        assert_eq!(ids[40 - k], MARK);
        assert!(ids[k..40 - k].iter().all(|&t| t == NOISE));
        let answers: Vec<u32> = tg.iter().copied().filter(|&t| t != IGNORE).collect();
        assert_eq!(answers, ids[..k].to_vec());
        assert!(tg[..40 - k].iter().all(|&t| t == IGNORE));
    }

    #[test]
    fn selective_copying_answers_are_the_data_tokens_in_order() {
        for seed in 0..20 {
            let len = 64;
            let (ids, tg) = one(Task::SelectiveCopying, len, seed);
            let sep = len - 16;
            assert_eq!(ids[sep], MARK);
            let data: Vec<u32> = ids[..sep].iter().copied().filter(|&t| t != NOISE).collect();
            assert_eq!(data.len(), 16, "seed {seed}");
            assert!(data.iter().all(|&t| (2..16).contains(&t)));
            let answers: Vec<u32> = tg.iter().copied().filter(|&t| t != IGNORE).collect();
            assert_eq!(answers, data);
            // Teacher forcing: the inputs after the separator are the previous answers.
            assert_eq!(ids[sep + 1..].to_vec(), data[..15].to_vec());
        }
        // Positions vary between samples.
        assert_ne!(one(Task::SelectiveCopying, 64, 1).0, one(Task::SelectiveCopying, 64, 2).0);
    }

    #[test]
    fn induction_heads_trigger_appears_twice_and_the_answer_follows_the_first() {
        for seed in 0..50 {
            let len = 30;
            let (ids, tg) = one(Task::InductionHeads, len, seed);
            let triggers: Vec<usize> = (0..len).filter(|&t| ids[t] == MARK).collect();
            assert_eq!(triggers.len(), 2, "seed {seed}: {ids:?}");
            assert_eq!(triggers[1], len - 1);
            assert_eq!(tg[len - 1], ids[triggers[0] + 1]);
            assert_ne!(tg[len - 1], MARK);
            assert_eq!(tg.iter().filter(|&&t| t != IGNORE).count(), 1);
        }
    }

    #[test]
    fn mqar_queries_each_key_once_with_its_value() {
        for seed in 0..20 {
            let len = 64;
            let (ids, tg) = one(Task::Mqar, len, seed);
            let n = 8;
            let pairs: std::collections::HashMap<u32, u32> = (0..n).map(|i| (ids[2 * i], ids[2 * i + 1])).collect();
            assert_eq!(pairs.len(), n, "distinct keys");
            let mut asked = 0;
            for t in 2 * n..len {
                if tg[t] != IGNORE {
                    assert_eq!(pairs[&ids[t]], tg[t]);
                    asked += 1;
                }
            }
            assert_eq!(asked, n);
            assert!(tg[..2 * n].iter().all(|&t| t == IGNORE));
        }
    }

    #[test]
    fn generators_are_seeded_and_sizes_are_checked() {
        for task in Task::ALL {
            assert_eq!(one(task, 80, 9), one(task, 80, 9));
        }
        let e = TaskSpec::new(Task::SelectiveCopying).batch(&mut TaskRng::new(0), 1, 20).unwrap_err();
        assert!(e.to_string().contains("at least 33"), "{e}");
        let e = TaskSpec { vocab: 10, ..TaskSpec::new(Task::Mqar) }.batch(&mut TaskRng::new(0), 1, 64).unwrap_err();
        assert!(e.to_string().contains("--vocab"), "{e}");
        assert!("nope".parse::<Task>().unwrap_err().to_string().contains("selective-copying"));
    }
}
