//! Text generation: prefill the prompts (chunked; those of equal length as one batch), then
//! decode all sequences together, one batched [`Mamba::step`] per token, sampling each sequence
//! with its own seeded [`Sampler`].
//! On a backend that records graphs (CUDA) the decode loop runs on the device instead
//! ([`crate::model::mamba1::Decoder`]): sampling there, one recorded step per token, only the
//! sampled ids copied back; greedy output is the same, seeded sampling draws other numbers.

pub mod sampler;

use std::time::Instant;

use crate::backend::Backend;
use crate::formats::tokenizer::{StreamDecoder, Tokenizer};
use crate::model::mamba1::{DecodeMode, Decoder};
use crate::model::{Mamba, MambaState};
use crate::{Error, Result};
pub use sampler::{Sampler, SamplingParams};

/// Options of a generation run.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens per sequence, at most.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when the generated text contains one of these (the stop string is not included).
    pub stop: Vec<String>,
    /// Stop a sequence at this token (the tokenizer's end-of-text), when given.
    pub eos: Option<u32>,
    /// Prompt tokens per prefill chunk: bounds prefill memory for long prompts.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            eos: None,
            prefill_chunk: 2048,
        }
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// The end-of-text token was sampled.
    Eos,
    /// A stop string appeared.
    Stop,
}

/// Throughput of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenStats {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Whether decoding replayed a recorded graph ([`crate::model::mamba1::Decoder`]).
    pub decode_graph: bool,
}

impl GenStats {
    pub fn prefill_tok_per_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    pub fn decode_tok_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_secs.max(1e-9)
    }
}

/// Whether a sequence goes on after a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Finish(FinishReason),
}

/// Token-level generation for a batch of prompts. `on_token(seq, token)` sees every sampled token
/// and may end its sequence; sequences also end at `opts.eos` and after `opts.max_tokens`.
/// Returns the generated tokens of each sequence.
pub fn generate_tokens<B: Backend>(
    model: &Mamba<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32) -> Result<Flow>,
) -> Result<(Vec<Vec<u32>>, Vec<FinishReason>, GenStats)> {
    if prompts.is_empty() {
        return Err(Error::input("no prompts given"));
    }
    if opts.max_tokens == 0 {
        return Err(Error::input("--max-tokens must be at least 1"));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::input(format!("prompt {} is empty (no tokens); give some text to continue", i + 1)));
        }
    }
    opts.sampling.validate()?;
    let be = &model.backend;
    let vocab = model.cfg.vocab_size;
    let n = prompts.len();
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|i| {
            Sampler::new(SamplingParams { seed: opts.sampling.seed.wrapping_add(i as u64), ..opts.sampling.clone() })
        })
        .collect::<Result<_>>()?;
    let mut stats = GenStats::default();

    // Prefill the prompts of each length together, as one batch (a state carries no padding, so
    // prompts of different lengths go in different batches), then decode them all as one batch.
    let t = Instant::now();
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut states: Vec<Option<MambaState<B>>> = (0..n).map(|_| None).collect();
    let mut first_logits = vec![0.0f32; n * vocab];
    for (&len, group) in &by_len {
        let ids: Vec<u32> = group.iter().flat_map(|&i| prompts[i].iter().copied()).collect();
        let mut st = model.new_state(group.len())?;
        let logits = be.to_vec(&model.prefill(&ids, group.len(), len, &mut st, opts.prefill_chunk)?)?;
        for ((&i, row), one) in group.iter().zip(logits.chunks_exact(vocab)).zip(model.unstack_state(st)?) {
            first_logits[i * vocab..(i + 1) * vocab].copy_from_slice(row);
            states[i] = Some(one);
        }
        stats.prefill_tokens += len * group.len();
    }
    let mut states: Vec<MambaState<B>> = states
        .into_iter()
        .map(|s| s.ok_or_else(|| Error::input("a prompt was not prefilled")))
        .collect::<Result<_>>()?;
    let mut state =
        if n == 1 { states.pop().ok_or_else(|| Error::input("no prompts"))? } else { model.stack_states(&states)? };
    stats.prefill_secs = t.elapsed().as_secs_f64();

    if be.records_graphs() {
        return decode_on_device(model, prompts, opts, state, &first_logits, stats, on_token);
    }

    let t = Instant::now();
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut finish: Vec<Option<FinishReason>> = vec![None; n];
    let mut logits = first_logits;
    loop {
        let mut next = vec![0u32; n];
        for i in 0..n {
            if finish[i].is_some() {
                continue; // finished sequences are still stepped (batch shape), their tokens ignored
            }
            let tok = samplers[i].sample(&logits[i * vocab..(i + 1) * vocab], &history[i])?;
            next[i] = tok;
            history[i].push(tok);
            finish[i] = accept_token(i, tok, &mut out[i], opts, &mut stats, &mut on_token)?;
        }
        if finish.iter().all(Option::is_some) {
            break;
        }
        logits = be.to_vec(&model.step(&next, &mut state)?)?;
    }
    stats.decode_secs = t.elapsed().as_secs_f64();
    let reasons = finish.into_iter().map(|f| f.unwrap_or(FinishReason::Length)).collect();
    Ok((out, reasons, stats))
}

/// Records sequence `seq`'s sampled token (appended to `out`, counted, shown to `on_token`) and
/// says whether the sequence ends with it (EOS, the callback's verdict, or `max_tokens`).
fn accept_token(
    seq: usize,
    tok: u32,
    out: &mut Vec<u32>,
    opts: &GenerateOptions,
    stats: &mut GenStats,
    on_token: &mut impl FnMut(usize, u32) -> Result<Flow>,
) -> Result<Option<FinishReason>> {
    out.push(tok);
    stats.decode_tokens += 1;
    let flow = if Some(tok) == opts.eos { Flow::Finish(FinishReason::Eos) } else { on_token(seq, tok)? };
    Ok(match flow {
        Flow::Finish(r) => Some(r),
        Flow::Continue if out.len() >= opts.max_tokens => Some(FinishReason::Length),
        Flow::Continue => None,
    })
}

/// The decode loop of [`generate_tokens`] on a backend that records graphs: tokens sampled on
/// the device ([`Decoder`]), one recorded step replayed per token, only the sampled ids copied
/// back. Same options, callbacks and stopping rules as the host loop.
fn decode_on_device<B: Backend>(
    model: &Mamba<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    state: MambaState<B>,
    first_logits: &[f32],
    mut stats: GenStats,
    mut on_token: impl FnMut(usize, u32) -> Result<Flow>,
) -> Result<(Vec<Vec<u32>>, Vec<FinishReason>, GenStats)> {
    let be = &model.backend;
    let n = prompts.len();
    let t = Instant::now();
    let logits = be.from_vec(first_logits.to_vec())?;
    let mut dec = Decoder::new(model, state, &logits, prompts, opts.sampling.clone(), DecodeMode::Graph)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut finish: Vec<Option<FinishReason>> = vec![None; n];
    let mut reported = false;
    let mut pending = Some(dec.start_tokens()?);
    while let Some(read) = pending.take() {
        // The next step is queued before this step's tokens are read, so the device works while
        // the host handles them; unless every sequence left ends at this token by length, the one
        // end known beforehand (then the loop ends here). When the sequences end otherwise (EOS,
        // the callback), that step's work is discarded.
        let last = (0..n).all(|i| finish[i].is_some() || out[i].len() + 1 >= opts.max_tokens);
        if !last {
            dec.step()?;
        }
        let next = dec.finish_tokens(read)?;
        if !last {
            pending = Some(dec.start_tokens()?);
        }
        for i in 0..n {
            if finish[i].is_some() {
                continue; // finished sequences are still stepped (batch shape), their tokens ignored
            }
            finish[i] = accept_token(i, next[i], &mut out[i], opts, &mut stats, &mut on_token)?;
        }
        if finish.iter().all(Option::is_some) {
            break;
        }
        if let Some(why) = dec.fallback_reason() {
            if !reported {
                eprintln!("s6: decoding without a CUDA graph (slower): {why}");
                reported = true;
            }
        }
    }
    stats.decode_secs = t.elapsed().as_secs_f64();
    stats.decode_graph = dec.uses_graph();
    let reasons = finish.into_iter().map(|f| f.unwrap_or(FinishReason::Length)).collect();
    Ok((out, reasons, stats))
}

/// A finished completion.
#[derive(Clone, Debug)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

/// Per-sequence text state: streaming detokenization and stop-string search.
struct TextSeq<'t> {
    decoder: StreamDecoder<'t>,
    text: String,
    emitted: usize,
}

/// Text generation: tokenizes prompts, generates, streams new text through `on_text(seq, text)`
/// as soon as it is final (never a partial UTF-8 character, never a piece of a stop string).
pub fn generate_text<B: Backend>(
    model: &Mamba<B>,
    tokenizer: &Tokenizer,
    prompts: &[String],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(usize, &str),
) -> Result<(Vec<Completion>, GenStats)> {
    let mut ids = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::input(format!("prompt {} is empty; give some text to continue", i + 1)));
        }
        let t = tokenizer.encode(p)?;
        if let Some(&bad) = t.iter().find(|&&id| id as usize >= model.cfg.vocab_size) {
            return Err(Error::input(format!(
                "prompt {}: token id {bad} is outside the vocabulary (size {}) of the model: the tokenizer ({}) does not match it",
                i + 1,
                model.cfg.vocab_size,
                tokenizer.describe()
            )));
        }
        ids.push(t);
    }
    let mut seqs: Vec<TextSeq> = (0..prompts.len())
        .map(|_| TextSeq { decoder: StreamDecoder::new(tokenizer), text: String::new(), emitted: 0 })
        .collect();
    let stops = &opts.stop;
    let (tokens, mut reasons, stats) = generate_tokens(model, &ids, opts, |i, tok| {
        let s = &mut seqs[i];
        let piece = s.decoder.push(tok)?;
        let search_from = s.text.len().saturating_sub(stops.iter().map(String::len).max().unwrap_or(0));
        s.text.push_str(&piece);
        if let Some(cut) = find_stop(&s.text, search_from, stops) {
            s.text.truncate(cut);
            emit(s, cut, i, &mut on_text);
            return Ok(Flow::Finish(FinishReason::Stop));
        }
        let safe = s.text.len() - held_back(&s.text, stops);
        emit(s, safe, i, &mut on_text);
        Ok(Flow::Continue)
    })?;
    let mut out = Vec::with_capacity(tokens.len());
    for (i, (toks, s)) in tokens.into_iter().zip(seqs.iter_mut()).enumerate() {
        if reasons[i] != FinishReason::Stop {
            let rest = s.decoder.finish()?;
            s.text.push_str(&rest);
            if let Some(cut) = find_stop(&s.text, 0, stops) {
                s.text.truncate(cut);
                reasons[i] = FinishReason::Stop;
            }
            let end = s.text.len();
            emit(s, end, i, &mut on_text);
        }
        out.push(Completion { tokens: toks, text: s.text.clone(), finish: reasons[i] });
    }
    Ok((out, stats))
}

fn emit(s: &mut TextSeq<'_>, upto: usize, i: usize, on_text: &mut impl FnMut(usize, &str)) {
    if upto > s.emitted {
        on_text(i, &s.text[s.emitted..upto]);
        s.emitted = upto;
    }
}

/// Byte offset of the earliest stop string starting at or after `from`.
fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    let from = (0..=from.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text[from..].find(s.as_str()).map(|p| p + from)).min()
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string: that text
/// may still turn into a stop, so it is not shown yet.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (k, _) in s.char_indices().skip(1) {
            if k > best && text.ends_with(&s[..k]) {
                best = k;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_helpers() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\nxyz", 0, &stops), Some(3));
        assert_eq!(find_stop("abcEN", 0, &stops), None);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
