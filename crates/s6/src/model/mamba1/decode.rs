//! Decoding with everything on the device: token ids ([`Backend::Ids`]), preallocated
//! activations, sampling ([`Backend::sample`]), and, where the backend records graphs
//! ([`Backend::capture`], CUDA), one decode step recorded once and replayed per token.
//!
//! A step is the model's own code ([`Mamba::layers_into`], the same as [`Mamba::forward`]) run
//! on buffers allocated once by [`Decoder::new`]: embedding of the device ids → layers → final
//! norm → lm_head → sampling, which writes the next ids over the ones just read. Only the sampled
//! ids (4 bytes per sequence) come back to the host, when [`Decoder::tokens`] asks for them.

use super::{LayerActs, Mamba, MambaState};
use crate::backend::{Backend, View};
use crate::generate::SamplingParams;
use crate::{Error, Result};

/// How a [`Decoder`] runs its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMode {
    /// After one step issued op by op, record a step as a graph when the backend can, and replay
    /// it for every later step. When recording fails the decoder goes on op by op and
    /// [`Decoder::fallback_reason`] says why.
    Graph,
    /// Every step issued op by op (same buffers, same results).
    Eager,
}

/// Everything a step reads or writes: fixed for the decoder's life, so fixed addresses.
struct StepBuffers<B: Backend> {
    state: MambaState<B>,
    residual: B::Buf,
    acts: LayerActs<B>,
    out: B::Buf,
    normed: B::Buf,
    logits: B::Buf,
    /// The last sampled token of each sequence: the next step's input.
    ids: B::Ids,
    /// `[batch, vocab]` seen-token flags (repetition penalty only; else one unused value).
    seen: B::Ids,
    /// `[batch]` draws so far (the counter of the counter-based RNG).
    draws: B::Ids,
    params: SamplingParams,
}

/// Batched decoding on the device: owns the state of `batch` sequences and their last sampled
/// tokens. Create it from a prefilled state and the prefill's last logits; each
/// [`Decoder::step`] advances every sequence by one token.
pub struct Decoder<'m, B: Backend> {
    model: &'m Mamba<B>,
    bufs: StepBuffers<B>,
    mode: DecodeMode,
    graph: Option<B::Graph>,
    /// Whether recording was tried (once).
    tried: bool,
    fallback: Option<String>,
}

fn run_step<B: Backend>(m: &Mamba<B>, b: &mut StepBuffers<B>) -> Result<()> {
    let be = &m.backend;
    let (n, d, v) = (b.state.batch, m.cfg.d_model, m.cfg.vocab_size);
    be.embedding_ids(&m.embedding, &b.ids, d, &mut b.residual)?;
    m.layers_into(n, 1, &mut b.state, &mut b.residual, &mut b.acts, &mut b.out, &mut b.normed)?;
    be.linear(View::full(&b.normed, d), n, d, m.head(), v, None, &mut b.logits)?;
    be.sample(&b.logits, v, &b.params, &mut b.seen, &mut b.draws, &mut b.ids)
}

impl<'m, B: Backend> Decoder<'m, B> {
    /// A decoder for the `state.batch` sequences of `state` (prefilled), whose next-token logits
    /// `[batch, vocab]` are `logits` (e.g. from [`Mamba::prefill`]). `histories[i]`: the tokens
    /// of sequence `i` so far, for the repetition penalty (ids outside the vocabulary are
    /// ignored). Sequence `i` samples with seed `params.seed + i`. The first tokens are sampled
    /// here: [`Decoder::tokens`] returns them.
    pub fn new(
        model: &'m Mamba<B>,
        state: MambaState<B>,
        logits: &B::Buf,
        histories: &[Vec<u32>],
        params: SamplingParams,
        mode: DecodeMode,
    ) -> Result<Self> {
        params.validate()?;
        let be = &model.backend;
        let c = &model.cfg;
        let (n, d, v) = (state.batch, c.d_model, c.vocab_size);
        if n == 0 {
            return Err(Error::input("decoder: no sequences"));
        }
        if histories.len() != n {
            return Err(Error::input(format!("decoder: {} histories for {n} sequences", histories.len())));
        }
        if state.conv.len() != c.n_layer || state.ssm.len() != c.n_layer {
            return Err(Error::input("decoder: the state does not belong to this model"));
        }
        if be.len(logits) != n * v {
            return Err(Error::input(format!("decoder: {} logits for {n} sequences of {v}", be.len(logits))));
        }
        let seen = if params.repetition_penalty != 1.0 {
            let mut flags = vec![0u32; n * v];
            for (i, h) in histories.iter().enumerate() {
                for &t in h.iter().filter(|&&t| (t as usize) < v) {
                    flags[i * v + t as usize] = 1;
                }
            }
            be.ids_from_slice(&flags)?
        } else {
            be.ids_from_slice(&[0])?
        };
        let mut bufs = StepBuffers {
            state,
            residual: be.zeros(n * d)?,
            acts: model.layer_buffers(n)?,
            out: be.zeros(n * d)?,
            normed: be.zeros(n * d)?,
            logits: be.zeros(n * v)?,
            ids: be.ids_from_slice(&vec![0; n])?,
            seen,
            draws: be.ids_from_slice(&vec![0; n])?,
            params,
        };
        be.sample(logits, v, &bufs.params, &mut bufs.seen, &mut bufs.draws, &mut bufs.ids)?;
        Ok(Decoder { model, bufs, mode, graph: None, tried: false, fallback: None })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.bufs.state.batch
    }

    /// The tokens sampled last, one per sequence: a copy of a few bytes to the host, which waits
    /// for the queued steps.
    pub fn tokens(&self) -> Result<Vec<u32>> {
        self.model.backend.ids_to_vec(&self.bufs.ids)
    }

    /// [`Decoder::tokens`] without the wait: queues a copy of the tokens sampled last to the
    /// host. Queue the next [`Decoder::step`], then read them with [`Decoder::finish_tokens`]:
    /// the device runs that step while the host handles these tokens (streams them, checks for
    /// the end), instead of waiting idle between steps.
    pub fn start_tokens(&self) -> Result<B::IdsRead> {
        self.model.backend.ids_read_start(&self.bufs.ids)
    }

    /// The tokens of a [`Decoder::start_tokens`] (waits for that copy, not for later steps).
    pub fn finish_tokens(&self, read: B::IdsRead) -> Result<Vec<u32>> {
        self.model.backend.ids_read_finish(read)
    }

    /// Feeds every sequence its last sampled token and samples the next one (queued on the
    /// device; [`Decoder::tokens`] reads the result).
    pub fn step(&mut self) -> Result<()> {
        let be = &self.model.backend;
        if let Some(g) = &self.graph {
            return be.replay(g);
        }
        run_step(self.model, &mut self.bufs)?;
        if self.mode == DecodeMode::Graph && !self.tried {
            // Recorded after one step issued op by op, so that libraries have done their
            // first-call setup (cuBLAS loads kernels) outside the recording.
            self.tried = true;
            let (m, bufs) = (self.model, &mut self.bufs);
            match be.capture(&mut || run_step(m, bufs)) {
                Ok(Some(g)) => self.graph = Some(g),
                Ok(None) => self.fallback = Some(format!("{} does not record graphs", be.name())),
                Err(e) => self.fallback = Some(e.to_string()),
            }
        }
        Ok(())
    }

    /// Whether steps replay a recorded graph.
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Why a [`DecodeMode::Graph`] decoder runs op by op (recording unsupported or failed).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The logits of the last step, `[batch, vocab]` (those the last tokens were sampled from;
    /// not the prefill's, before the first step).
    pub fn logits(&self) -> &B::Buf {
        &self.bufs.logits
    }

    /// The recurrent state after the steps so far (it has consumed every token except those
    /// [`Decoder::tokens`] returns).
    pub fn into_state(self) -> MambaState<B> {
        self.bufs.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::config::{InitConfig, MambaConfig};
    use crate::generate::{generate_tokens, Flow, GenerateOptions};

    fn tiny() -> Mamba<Cpu> {
        let cfg = MambaConfig::new(16, 2, 40);
        let params = crate::model::init::init_params(&cfg, &InitConfig::default(), 7);
        let mut it = params.into_iter();
        Mamba::from_params(Cpu, cfg, |_| Ok(it.next().map(|p| p.1).unwrap_or_default())).unwrap()
    }

    fn decode(m: &Mamba<Cpu>, prompts: &[Vec<u32>], n: usize, params: SamplingParams) -> (Vec<Vec<u32>>, bool) {
        let states: Vec<_> = prompts
            .iter()
            .map(|p| {
                let mut st = m.new_state(1).unwrap();
                let l = m.prefill(p, 1, p.len(), &mut st, 4).unwrap();
                (st, l)
            })
            .collect();
        let logits: Vec<f32> = states.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        let state = m.stack_states(&states.into_iter().map(|(s, _)| s).collect::<Vec<_>>()).unwrap();
        let mut dec = Decoder::new(m, state, &logits, prompts, params, DecodeMode::Graph).unwrap();
        let mut out = vec![Vec::new(); prompts.len()];
        for t in 0..n {
            if t > 0 {
                dec.step().unwrap();
            }
            for (o, tok) in out.iter_mut().zip(dec.tokens().unwrap()) {
                o.push(tok);
            }
        }
        let fell_back = dec.fallback_reason().is_some_and(|r| r.contains("does not record"));
        (out, fell_back && !dec.uses_graph())
    }

    #[test]
    fn decoder_on_cpu_equals_generate_tokens_greedy() {
        let m = tiny();
        let prompts = vec![vec![1u32, 5, 9, 3, 2, 7], vec![4], vec![39, 0, 12]];
        for rp in [1.0, 1.5] {
            let params = SamplingParams { temperature: 0.0, repetition_penalty: rp, ..Default::default() };
            let opts = GenerateOptions { max_tokens: 12, sampling: params.clone(), ..Default::default() };
            let want = generate_tokens(&m, &prompts, &opts, |_, _| Ok(Flow::Continue)).unwrap().0;
            let (got, fell_back) = decode(&m, &prompts, 12, params);
            assert_eq!(got, want, "repetition penalty {rp}");
            assert!(fell_back, "the CPU records no graph and must say so");
        }
    }

    #[test]
    fn decoder_sampling_is_seeded() {
        let m = tiny();
        let prompts = vec![vec![1u32, 2], vec![3]];
        let p = SamplingParams { temperature: 1.2, top_k: 10, seed: 5, ..Default::default() };
        let a = decode(&m, &prompts, 20, p.clone()).0;
        assert_eq!(decode(&m, &prompts, 20, p.clone()).0, a);
        assert_ne!(decode(&m, &prompts, 20, SamplingParams { seed: 6, ..p }).0, a);
    }

    #[test]
    fn decoder_rejects_mismatched_inputs() {
        let m = tiny();
        let st = m.new_state(2).unwrap();
        let logits = vec![0.0; 40];
        let err = Decoder::new(&m, st, &logits, &[vec![1], vec![2]], SamplingParams::default(), DecodeMode::Eager);
        assert!(err.is_err_and(|e| e.to_string().contains("logits")));
        let st = m.new_state(2).unwrap();
        let err = Decoder::new(&m, st, &vec![0.0; 80], &[vec![1]], SamplingParams::default(), DecodeMode::Eager);
        assert!(err.is_err_and(|e| e.to_string().contains("histories")));
    }
}
