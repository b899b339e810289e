//! Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k,
//! top-p (nucleus), min-p and a repetition penalty.

use std::cmp::Ordering;

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::{Error, Result};

/// How the next token is chosen. The defaults sample from the model's distribution unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns the filter off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to at least `top_p`;
    /// 1 turns the filter off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 turns the filter off.
    pub min_p: f32,
    /// CTRL-style penalty on tokens already in the history; 1 turns it off.
    pub repetition_penalty: f32,
    /// Seed of the random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks every value is in range; errors name the command-line flag and the value.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::input(format!("--temperature must be a finite number >= 0 (0 = greedy), got {t}")));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::input(format!("--top-p must be in (0, 1] (1 = off), got {p}")));
        }
        let m = self.min_p;
        if !(0.0..1.0).contains(&m) {
            return Err(Error::input(format!("--min-p must be in [0, 1) (0 = off), got {m}")));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::input(format!("--repetition-penalty must be a finite number > 0 (1 = off), got {r}")));
        }
        Ok(())
    }
}

/// Picks tokens according to [`SamplingParams`], with its own seeded RNG: the same seed and the
/// same sequence of calls give the same tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: Pcg64,
    // Scratch buffers reused across calls so sampling a 50k vocabulary does not allocate.
    weights: Vec<f32>,
    idx: Vec<u32>,
    hist: Vec<u32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("params", &self.params).finish_non_exhaustive()
    }
}

/// How many top tokens the nucleus search sorts first; grown 4x until they hold `top_p` of the
/// probability mass, so the usual peaked distribution never needs a full vocabulary sort.
const NUCLEUS_FIRST_K: usize = 64;

impl Sampler {
    /// A sampler with validated `params`, its RNG seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Pcg64::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, weights: Vec::new(), idx: Vec::new(), hist: Vec::new() })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry). `history` holds the tokens
    /// so far (prompt and generated) for the repetition penalty; ids outside the vocabulary in
    /// it are ignored.
    ///
    /// Order: repetition penalty (logit > 0 ? logit / p : logit * p, once per distinct token),
    /// then temperature (0 = argmax, ties to the lowest id), top-k, top-p, min-p, each filter
    /// seeing the distribution renormalised over the tokens the previous ones kept.
    /// Errors on empty logits, NaN, or when every logit is -inf.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let v = logits.len();
        if v == 0 {
            return Err(Error::input("cannot sample from empty logits"));
        }
        if u32::try_from(v).is_err() {
            return Err(Error::input(format!("vocabulary of {v} logits is too large")));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(Error::input(format!("logit of token {i} is NaN")));
        }
        let p = &self.params;

        // Penalised logits, later turned into weights in place.
        let w = &mut self.weights;
        w.clear();
        w.extend_from_slice(logits);
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty;
            self.hist.clear();
            self.hist.extend_from_slice(history);
            self.hist.sort_unstable();
            self.hist.dedup();
            for &t in &self.hist {
                if let Some(x) = w.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / rp } else { *x * rp };
                }
            }
        }

        let (imax, max) = argmax(w);
        if max == f32::NEG_INFINITY {
            return Err(Error::input("every logit is -inf: no token can be sampled"));
        }
        if p.temperature == 0.0 {
            return Ok(imax as u32);
        }

        // Unnormalised probabilities with the most likely token at exactly 1. Subtracting the
        // maximum before dividing by the temperature keeps tiny temperatures from overflowing.
        if max == f32::INFINITY {
            // The limit of the softmax: uniform over the +inf tokens.
            for x in w.iter_mut() {
                *x = if *x == f32::INFINITY { 1.0 } else { 0.0 };
            }
        } else {
            let inv_t = 1.0 / p.temperature;
            for x in w.iter_mut() {
                *x = ((*x - max) * inv_t).exp();
            }
        }
        let w = &self.weights;
        // Most likely first; ties to the lowest id so results do not depend on sort internals.
        let by_weight = |a: &u32, b: &u32| -> Ordering { w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b)) };

        // `idx` holds the candidate ids once a filter has run; until then every id is one.
        let idx = &mut self.idx;
        let mut all = true;
        if p.top_k > 0 && p.top_k < v {
            top_sorted(idx, v, p.top_k, by_weight);
            all = false;
        }
        if p.top_p < 1.0 {
            let target = f64::from(p.top_p) * if all { sum(w.iter().copied()) } else { sum_at(w, idx) };
            if all {
                // Sort a growing head of the vocabulary until it holds the nucleus: the nucleus
                // is a prefix of the sorted order, so any sorted prefix with mass >= target
                // contains it.
                let mut k = NUCLEUS_FIRST_K.min(v);
                loop {
                    top_sorted(idx, v, k, by_weight);
                    if k == v || sum_at(w, idx) >= target {
                        break;
                    }
                    k = k.saturating_mul(4).min(v);
                }
                all = false;
            }
            let mut cum = 0.0f64;
            if let Some(n) = idx.iter().position(|&i| {
                cum += f64::from(w[i as usize]);
                cum >= target
            }) {
                // Rounding can leave the target unreached; then everything stays.
                idx.truncate(n + 1);
            }
        }
        if p.min_p > 0.0 {
            // Weights are probabilities scaled so the most likely token has weight 1.
            let threshold = p.min_p;
            if all {
                idx.clear();
                idx.extend((0..v as u32).filter(|&i| w[i as usize] >= threshold));
                all = false;
            } else {
                idx.retain(|&i| w[i as usize] >= threshold);
            }
        }

        let u = uniform(&mut self.rng);
        let picked = if all {
            pick(u, (0..v as u32).map(|i| (i, w[i as usize])))
        } else {
            pick(u, idx.iter().map(|&i| (i, w[i as usize])))
        };
        // The most likely token survives every filter, so a candidate always exists.
        Ok(picked.unwrap_or(imax as u32))
    }
}

/// The seed of draw `draw` of a sequence seeded with `seed`: counter-based sampling
/// ([`sample_rows`], [`crate::backend::Backend::sample`]) derives every draw from the pair alone,
/// so the same seed gives the same tokens without a generator state to carry.
pub fn draw_seed(seed: u64, draw: u64) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    mix(mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(draw.wrapping_add(1)))) ^ 0xd1b5_4a32_d192_ed03)
}

/// The host implementation of [`crate::backend::Backend::sample`] (the CPU backend's): row `r`
/// of `logits` (`[out.len(), vocab]`) is sampled by a [`Sampler`] seeded with
/// `draw_seed(params.seed + r, draws[r])`, with the tokens marked in `seen` (`[rows, vocab]`,
/// read and updated only when the repetition penalty is on) as its history; `draws[r]` is
/// incremented.
pub fn sample_rows(
    logits: &[f32],
    vocab: usize,
    params: &SamplingParams,
    seen: &mut [u32],
    draws: &mut [u32],
    out: &mut [u32],
) -> Result<()> {
    params.validate()?;
    let rows = out.len();
    let penalty = params.repetition_penalty != 1.0;
    if logits.len() < rows * vocab || draws.len() < rows || (penalty && seen.len() < rows * vocab) {
        return Err(Error::input(format!(
            "sample: {rows} rows of {vocab} need {} logits, {rows} draw counters{}; got {}, {}, {}",
            rows * vocab,
            if penalty { format!(" and {} seen flags", rows * vocab) } else { String::new() },
            logits.len(),
            draws.len(),
            seen.len()
        )));
    }
    for r in 0..rows {
        let history: Vec<u32> = if penalty {
            (0..vocab as u32).filter(|&i| seen[r * vocab + i as usize] != 0).collect()
        } else {
            Vec::new()
        };
        let seed = draw_seed(params.seed.wrapping_add(r as u64), u64::from(draws[r]));
        let mut s = Sampler::new(SamplingParams { seed, ..params.clone() })?;
        let tok = s.sample(&logits[r * vocab..(r + 1) * vocab], &history)?;
        out[r] = tok;
        draws[r] = draws[r].wrapping_add(1);
        if penalty {
            seen[r * vocab + tok as usize] = 1;
        }
    }
    Ok(())
}

/// Index and value of the largest element; ties to the lowest index.
fn argmax(xs: &[f32]) -> (usize, f32) {
    let mut best = (0, xs[0]);
    for (i, &x) in xs.iter().enumerate().skip(1) {
        if x > best.1 {
            best = (i, x);
        }
    }
    best
}

/// Fills `idx` with the `k` first ids of `0..v` in `order`, sorted: O(v + k log k).
fn top_sorted(idx: &mut Vec<u32>, v: usize, k: usize, order: impl Fn(&u32, &u32) -> Ordering) {
    idx.clear();
    idx.extend(0..v as u32);
    if k < v {
        idx.select_nth_unstable_by(k - 1, &order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
}

fn sum(ws: impl Iterator<Item = f32>) -> f64 {
    ws.map(f64::from).sum()
}

fn sum_at(w: &[f32], idx: &[u32]) -> f64 {
    sum(idx.iter().map(|&i| w[i as usize]))
}

/// Draws from the candidates in proportion to their weights, given a uniform `u` in [0, 1).
/// A zero-weight candidate is never picked. `None` only if no candidate has positive weight.
fn pick(u: f64, cands: impl Iterator<Item = (u32, f32)> + Clone) -> Option<u32> {
    let total = sum(cands.clone().map(|(_, w)| w));
    let r = u * total;
    let mut cum = 0.0f64;
    let mut last_positive = None;
    for (i, w) in cands {
        if w > 0.0 {
            cum += f64::from(w);
            if cum > r {
                return Some(i);
            }
            last_positive = Some(i);
        }
    }
    // Only reached if rounding put `r` at or past the final cumulative sum.
    last_positive
}

/// A uniform f64 in [0, 1) from the top 53 bits of one RNG draw.
fn uniform(rng: &mut Pcg64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).unwrap()
    }

    fn log_probs(ps: &[f32]) -> Vec<f32> {
        ps.iter().map(|p| p.ln()).collect()
    }

    fn counts(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits, &[]).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn greedy_picks_argmax_lowest_on_ties() {
        let mut s = sampler(SamplingParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[1.0, 5.0, 5.0, 5.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -1e30, f32::NEG_INFINITY], &[]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32 * 0.01).collect();
        let mut greedy = sampler(SamplingParams { temperature: 0.0, ..Default::default() });
        let expected = greedy.sample(&logits, &[]).unwrap();
        let mut s = sampler(SamplingParams { top_k: 1, temperature: 1.5, ..Default::default() });
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, &[]).unwrap(), expected);
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let logits = log_probs(&[0.1, 0.2, 0.3, 0.25, 0.15]);
        let params = SamplingParams { seed: 42, top_p: 0.95, ..Default::default() };
        let run = |params: &SamplingParams| {
            let mut s = sampler(params.clone());
            (0..100).map(|_| s.sample(&logits, &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = run(&params);
        assert_eq!(a, run(&params));
        assert_ne!(a, run(&SamplingParams { seed: 43, ..params }));
    }

    #[test]
    fn sampling_frequencies_match_distribution() {
        let probs = [0.1, 0.2, 0.3, 0.4];
        let n = 20_000;
        let mut s = sampler(SamplingParams { seed: 7, ..Default::default() });
        let c = counts(&mut s, &log_probs(&probs), n);
        for (i, &p) in probs.iter().enumerate() {
            let f = c[i] as f32 / n as f32;
            assert!((f - p).abs() < 0.02, "token {i}: frequency {f}, expected {p} ({c:?})");
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = log_probs(&[0.25, 0.75]);
        let n = 20_000;
        // T = 0.5 squares the probabilities: 1/16 : 9/16 -> 0.1 : 0.9.
        let mut s = sampler(SamplingParams { temperature: 0.5, seed: 1, ..Default::default() });
        let f = counts(&mut s, &logits, n)[0] as f32 / n as f32;
        assert!((f - 0.1).abs() < 0.02, "{f}");
        // A huge temperature makes the distribution nearly uniform.
        let mut s = sampler(SamplingParams { temperature: 1e6, seed: 1, ..Default::default() });
        let f = counts(&mut s, &logits, n)[0] as f32 / n as f32;
        assert!((f - 0.5).abs() < 0.02, "{f}");
    }

    #[test]
    fn top_k_keeps_k_most_likely() {
        let probs = [0.05, 0.4, 0.1, 0.3, 0.15];
        let mut s = sampler(SamplingParams { top_k: 2, seed: 3, ..Default::default() });
        let c = counts(&mut s, &log_probs(&probs), 5000);
        assert_eq!((c[0], c[2], c[4]), (0, 0, 0), "{c:?}");
        // Renormalised over the two kept tokens: 0.4/0.7 and 0.3/0.7.
        let f = c[1] as f32 / 5000.0;
        assert!((f - 4.0 / 7.0).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn top_p_keeps_smallest_nucleus() {
        let probs = [0.05, 0.5, 0.15, 0.3];
        let mut s = sampler(SamplingParams { top_p: 0.75, seed: 5, ..Default::default() });
        let c = counts(&mut s, &log_probs(&probs), 5000);
        // 0.5 + 0.3 >= 0.75: tokens 1 and 3 stay, 2 and 0 never come.
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        assert!(c[1] > 0 && c[3] > 0, "{c:?}");
        // A tiny top_p keeps just the most likely token.
        let mut s = sampler(SamplingParams { top_p: 0.01, seed: 5, ..Default::default() });
        let c = counts(&mut s, &log_probs(&probs), 500);
        assert_eq!(c[1], 500, "{c:?}");
    }

    #[test]
    fn top_p_on_large_vocab_grows_search() {
        // A flat distribution over 10_000 tokens: the nucleus needs far more than the first 64.
        let v = 10_000;
        let logits: Vec<f32> = (0..v).map(|i| if i < 5000 { 0.0 } else { -1e4 }).collect();
        let mut s = sampler(SamplingParams { top_p: 0.9, seed: 9, ..Default::default() });
        let mut max_seen = 0;
        for _ in 0..2000 {
            let t = s.sample(&logits, &[]).unwrap();
            assert!(t < 4500, "token {t} outside the 90% nucleus");
            max_seen = max_seen.max(t);
        }
        assert!(max_seen > 4000, "{max_seen}");
    }

    #[test]
    fn top_k_then_top_p_renormalises() {
        // Top-2 leaves 0.4 and 0.3, i.e. 4/7 and 3/7; top_p 0.5 then keeps only the first.
        let probs = [0.05, 0.4, 0.1, 0.3, 0.15];
        let params = SamplingParams { top_k: 2, top_p: 0.5, seed: 4, ..Default::default() };
        let c = counts(&mut sampler(params), &log_probs(&probs), 1000);
        assert_eq!(c[1], 1000, "{c:?}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let probs = [0.5, 0.05, 0.3, 0.15];
        // Threshold 0.2 * 0.5 = 0.1: only token 1 goes.
        let mut s = sampler(SamplingParams { min_p: 0.2, seed: 11, ..Default::default() });
        let c = counts(&mut s, &log_probs(&probs), 5000);
        assert_eq!(c[1], 0, "{c:?}");
        assert!(c[0] > 0 && c[2] > 0 && c[3] > 0, "{c:?}");
        // Combined with top-k the threshold stays relative to the most likely token.
        let params = SamplingParams { top_k: 3, min_p: 0.5, seed: 11, ..Default::default() };
        let c = counts(&mut sampler(params), &log_probs(&probs), 5000);
        assert_eq!((c[1], c[3]), (0, 0), "{c:?}");
        assert!(c[0] > 0 && c[2] > 0, "{c:?}");
    }

    #[test]
    fn repetition_penalty_changes_argmax() {
        let greedy =
            |rp: f32| sampler(SamplingParams { temperature: 0.0, repetition_penalty: rp, ..Default::default() });
        // Positive logit divided: 2.0 -> 1.0 < 1.5.
        assert_eq!(greedy(2.0).sample(&[2.0, 1.5, -1.0], &[0]).unwrap(), 1);
        assert_eq!(greedy(1.0).sample(&[2.0, 1.5, -1.0], &[0]).unwrap(), 0);
        // Negative logit multiplied: -1.0 -> -2.0 < -1.5.
        assert_eq!(greedy(2.0).sample(&[-1.0, -1.5], &[0]).unwrap(), 1);
        // Applied once per distinct token: 4.0 -> 2.0 (not 0.5), still above 1.5.
        assert_eq!(greedy(2.0).sample(&[4.0, 1.5], &[0, 0, 0]).unwrap(), 0);
        // A penalty below 1 favours repeats; out-of-vocabulary history ids are ignored.
        assert_eq!(greedy(0.5).sample(&[2.0, 1.5], &[1, 99]).unwrap(), 1);
    }

    #[test]
    fn sample_rows_is_counter_based_and_marks_seen() {
        let logits = [2.0f32, 1.9, -1.0, 0.0, 0.5, 3.0];
        let greedy = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() };
        let (mut seen, mut draws, mut out) = (vec![0u32; 6], vec![0u32; 2], vec![9u32; 2]);
        sample_rows(&logits, 3, &greedy, &mut seen, &mut draws, &mut out).unwrap();
        assert_eq!((out.clone(), draws.clone()), (vec![0, 2], vec![1, 1]));
        assert_eq!(seen, vec![1, 0, 0, 0, 0, 1]);
        // Token 0 of row 0 is now penalised: 2.0 / 2 < 1.9.
        sample_rows(&logits, 3, &greedy, &mut seen, &mut draws, &mut out).unwrap();
        assert_eq!(out[0], 1);
        // The same (seed, row, draw) gives the same token; the draw counter moves it on.
        let p = SamplingParams { seed: 3, ..Default::default() };
        let flat: Vec<f32> = vec![0.0; 1000];
        let run = |d: u32| {
            let (mut s, mut dr, mut o) = (vec![], vec![d], vec![0]);
            sample_rows(&flat, 1000, &p, &mut s, &mut dr, &mut o).unwrap();
            o[0]
        };
        assert_eq!(run(4), run(4));
        assert!((0..8).map(run).collect::<std::collections::HashSet<_>>().len() > 1);
        assert_ne!(draw_seed(1, 0), draw_seed(1, 1));
        assert!(sample_rows(&logits, 3, &greedy, &mut [], &mut draws, &mut out).is_err());
    }

    #[test]
    fn bad_logits_are_errors() {
        let mut s = sampler(SamplingParams::default());
        assert!(s.sample(&[], &[]).is_err());
        let err = s.sample(&[0.0, f32::NAN], &[]).unwrap_err().to_string();
        assert!(err.contains("NaN") && err.contains('1'), "{err}");
        assert!(s.sample(&[f32::NEG_INFINITY; 3], &[]).is_err());
        let mut g = sampler(SamplingParams { temperature: 0.0, ..Default::default() });
        assert!(g.sample(&[f32::NEG_INFINITY; 3], &[]).is_err());
    }

    #[test]
    fn infinite_and_masked_logits() {
        let mut s = sampler(SamplingParams { seed: 2, ..Default::default() });
        let c = counts(&mut s, &[0.0, f32::INFINITY, 5.0, f32::INFINITY], 1000);
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        assert!(c[1] > 0 && c[3] > 0, "{c:?}");
        let c = counts(&mut s, &[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], 100);
        assert_eq!(c[1], 100, "{c:?}");
    }

    #[test]
    fn tiny_temperature_is_greedy() {
        let mut s = sampler(SamplingParams { temperature: 1e-6, ..Default::default() });
        assert_eq!(s.sample(&[1.0, 1.001, 0.5], &[]).unwrap(), 1);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (SamplingParams { temperature: -0.1, ..ok.clone() }, "--temperature", "-0.1"),
            (SamplingParams { temperature: f32::NAN, ..ok.clone() }, "--temperature", "NaN"),
            (SamplingParams { temperature: f32::INFINITY, ..ok.clone() }, "--temperature", "inf"),
            (SamplingParams { top_p: 0.0, ..ok.clone() }, "--top-p", "0"),
            (SamplingParams { top_p: 1.5, ..ok.clone() }, "--top-p", "1.5"),
            (SamplingParams { min_p: 1.0, ..ok.clone() }, "--min-p", "1"),
            (SamplingParams { min_p: -0.5, ..ok.clone() }, "--min-p", "-0.5"),
            (SamplingParams { repetition_penalty: 0.0, ..ok.clone() }, "--repetition-penalty", "0"),
            (SamplingParams { repetition_penalty: f32::INFINITY, ..ok.clone() }, "--repetition-penalty", "inf"),
        ];
        for (params, flag, value) in cases {
            let err = params.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(&format!("got {value}")), "{msg}");
            assert!(Sampler::new(params).is_err());
        }
        let edge = SamplingParams { temperature: 0.0, top_p: 1.0, min_p: 0.0, ..ok };
        assert!(edge.validate().is_ok());
    }
}
