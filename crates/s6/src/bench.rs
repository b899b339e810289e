//! Throughput benchmarks of a model and the machine limits they are judged against.
//!
//! Decode is bound by reading the weights once per step, prefill by matrix-multiply FLOP/s; so
//! each report carries the *limit* implied by a measured machine ceiling ([`measure_limits`]),
//! and a result is read as a fraction of that limit rather than as a bare number. Measure the
//! limits and the model in the same process run: shared machines drift by ±15% between runs.
//!
//! Every timing is the best of several repeats (the minimum is the least noisy estimator of what
//! the code can do; means include other tenants' work).

use std::time::Instant;

use rayon::prelude::*;

use crate::backend::cpu::{simd, Cpu};
use crate::backend::{Backend, ScanArgs, ScanDims, ScanGrads, Strided, View, ViewMut};
use crate::generate::SamplingParams;
use crate::model::mamba1::{DecodeMode, Decoder};
use crate::model::Mamba;
use crate::{Error, Result};

/// Measured ceilings of the machine (see [`measure_limits`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Memory read bandwidth with all rayon threads, GB/s (10⁹ bytes).
    pub read_gb_s: f64,
    /// f32 GEMM throughput of the CPU backend's `linear` at a prefill-like shape, GFLOP/s.
    pub gemm_gflop_s: f64,
}

/// Bytes summed by the bandwidth probe: far beyond any last-level cache (this machine's L3 is
/// 300 MiB, shared), so the sum streams from DRAM.
const PROBE_BYTES: usize = 1 << 30;
/// GEMM probe shape `[rows, k] · [k, n]`: 512 tokens through a 768 → 1536 projection, the
/// shapes of a 130M-model prefill chunk.
const GEMM_SHAPE: (usize, usize, usize) = (512, 768, 1536);

/// Measures the read bandwidth (sum of a 1 GiB f32 array with all rayon threads, best of 5) and
/// the f32 GEMM rate (CPU backend `linear`, 512×768 by 768×1536, best of 10).
///
/// Takes about two seconds. When 1 GiB cannot be allocated the probe halves its size (down to
/// 64 MiB) rather than failing.
pub fn measure_limits() -> Limits {
    Limits { read_gb_s: measure_read_bandwidth(), gemm_gflop_s: measure_gemm() }
}

fn measure_read_bandwidth() -> f64 {
    let mut floats = PROBE_BYTES / 4;
    let mut data: Vec<f32> = Vec::new();
    while data.try_reserve_exact(floats).is_err() && floats > (16 << 20) {
        floats /= 2;
    }
    if data.capacity() < floats {
        return 0.0;
    }
    data.resize(floats, 0.0);
    // Touch every page from the threads that will read it, with values whose sum is exact.
    data.par_chunks_mut(1 << 16).for_each(|c| c.fill(1.0));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s = sum_parallel(&data);
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.min(dt);
    }
    (floats * 4) as f64 / best / 1e9
}

/// Sum with all threads; chunks of 1 MiB keep each thread's stream long enough for the hardware
/// prefetchers while letting a thread that lost its core to another tenant be covered by the rest.
fn sum_parallel(data: &[f32]) -> f32 {
    let fma = simd::has_avx2_fma();
    data.par_chunks(1 << 18)
        .map(|c| {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU supports avx2+fma (checked above).
                return unsafe { sum_avx2(c) };
            }
            let _ = fma;
            sum_lanes(c)
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(c: &[f32]) -> f32 {
    sum_lanes(c)
}

/// Eight independent 8-lane accumulators (enough loads in flight that the add latency does not
/// limit), reading four interleaved streams (the quarters of the chunk) with software prefetches
/// 4 KiB ahead: the same help the decode kernel gives itself (four weight rows at a time,
/// prefetched), so that the probe measures the memory rather than one stream's reach. A single
/// stream without prefetches read ~25% slower here.
#[inline(always)]
fn sum_lanes(c: &[f32]) -> f32 {
    const W: usize = 64;
    const STREAMS: usize = 4;
    const AHEAD: usize = 1024;
    let mut acc = [0.0f32; W];
    let part = c.len() / STREAMS / W * W;
    for i in (0..part).step_by(W) {
        for st in 0..STREAMS {
            let base = c.as_ptr().wrapping_add(st * part + i + AHEAD);
            for line in 0..W / 16 {
                simd::prefetch(base.wrapping_add(line * 16));
            }
            for (a, v) in acc.iter_mut().zip(&c[st * part + i..][..W]) {
                *a += v;
            }
        }
    }
    let rest: f32 = c[STREAMS * part..].iter().sum();
    acc.iter().sum::<f32>() + rest
}

fn measure_gemm() -> f64 {
    let (m, k, n) = GEMM_SHAPE;
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 251) as f32 - 125.0) * 1e-3).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 241) as f32 - 120.0) * 1e-3).collect();
    let mut out = vec![0.0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..12 {
        let t = Instant::now();
        if Cpu.linear(View::full(&x, k), m, k, &w, n, None, &mut out).is_err() {
            return 0.0;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// Result of [`bench_decode`].
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeReport {
    /// Sequences decoded together.
    pub batch: usize,
    /// Decode steps timed (each produces `batch` tokens).
    pub tokens: usize,
    /// Generated tokens per second over all sequences (best repeat).
    pub tok_per_s: f64,
    /// Parameter bytes one step reads: see [`decode_weight_bytes`].
    pub weight_bytes_per_step: usize,
    /// `read_gb_s / weight_bytes_per_step × batch`: the rate if a step cost only its weight reads.
    pub limit_tok_per_s: f64,
}

impl DecodeReport {
    /// The report of `tokens` decode steps of `batch` sequences that took `secs` (best repeat).
    fn from_timing<B: Backend>(model: &Mamba<B>, batch: usize, tokens: usize, secs: f64, limits: &Limits) -> Self {
        let weight_bytes_per_step = decode_weight_bytes(model, batch);
        DecodeReport {
            batch,
            tokens,
            tok_per_s: (batch * tokens) as f64 / secs,
            weight_bytes_per_step,
            limit_tok_per_s: limits.read_gb_s * 1e9 / weight_bytes_per_step as f64 * batch as f64,
        }
    }
}

/// Result of [`bench_prefill`].
#[derive(Clone, Debug, PartialEq)]
pub struct PrefillReport {
    /// Sequences prefilled together.
    pub batch: usize,
    /// Prompt length per sequence.
    pub seqlen: usize,
    /// Prompt tokens per second over all sequences (best repeat).
    pub tok_per_s: f64,
    /// FLOP per prompt token: see [`prefill_flop_per_token`].
    pub flop_per_token: f64,
    /// `gemm_gflop_s / flop_per_token`: the rate if all FLOP ran at the measured GEMM rate.
    pub limit_tok_per_s: f64,
}

/// Bytes of parameters read by one decode step of `batch` sequences: every parameter once,
/// the vocabulary matrix once as `lm_head` (tied or not), and of the embedding table only the
/// `batch` looked-up rows. State traffic (`batch × state_bytes_per_sequence`, read and written)
/// is not included: 2.8 MB per sequence for the 130M model, against 516 MB of weights.
pub fn decode_weight_bytes<B: Backend>(model: &Mamba<B>, batch: usize) -> usize {
    let c = &model.cfg;
    let table = c.vocab_size * c.d_model;
    // num_params counts the table once (tied) or table + head (untied); either way the table's
    // full read is the head's, and the embedding lookup adds `batch` rows.
    let untied_table = if c.tie_embeddings { 0 } else { table };
    // The products read their weights at the backend's width (bf16 copies under `--dtype bf16`
    // on CUDA); norms, conv, A, D and the embedding rows stay f32 (a small share).
    let matmul = c.num_params() - untied_table;
    let small = c.n_layer * (c.d_model + c.d_inner * (c.d_conv + c.d_state + 3));
    let wide = model.backend.matmul_weight_bytes();
    wide * matmul.saturating_sub(small) + 4 * (small.min(matmul) + batch * c.d_model)
}

/// FLOP per token of a prefill of `seqlen` tokens per sequence with last-position logits only:
///
/// - matmuls: `2 × (in_proj + x_proj + dt_proj + out_proj weights) × n_layer`;
/// - lm_head: `2 × vocab × d_model` once per sequence, so divided by `seqlen`;
/// - selective scan: 6 FLOP per (channel, state) per token (`Δ·A`, `Δu·B`, and two FMAs for
///   `h` and `C·h`), not counting the `exp`;
/// - conv: `2 × d_conv` per channel.
///
/// Element-wise work (norms, softplus, SiLU, gating) is not counted: it is O(d_inner) per token,
/// under 0.1% of the matmuls.
pub fn prefill_flop_per_token<B: Backend>(model: &Mamba<B>, seqlen: usize) -> f64 {
    let c = &model.cfg;
    let (d, di, n, r) = (c.d_model as f64, c.d_inner as f64, c.d_state as f64, c.dt_rank as f64);
    let matmul_params = 2.0 * di * d + (r + 2.0 * n) * di + di * r + d * di;
    let layers = c.n_layer as f64;
    let per_layer = 2.0 * matmul_params + 6.0 * di * n + 2.0 * c.d_conv as f64 * di;
    per_layer * layers + 2.0 * c.vocab_size as f64 * d / seqlen.max(1) as f64
}

/// Deterministic token ids in the vocabulary (SplitMix64); the work of a step does not depend on
/// the ids, only that they are valid.
fn token_ids(count: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab.max(1) as u64) as u32
        })
        .collect()
}

fn check_counts(what: &str, counts: &[(&str, usize)]) -> Result<()> {
    for &(name, v) in counts {
        if v == 0 {
            return Err(Error::input(format!("{what}: {name} must be at least 1")));
        }
    }
    Ok(())
}

/// Prompt tokens fed before timing decode, so that the conv window and SSM state are not zero.
const DECODE_PROMPT: usize = 16;

/// Prefills a short prompt (16 tokens) per sequence, then times `tokens` decode steps
/// ([`Mamba::step`]) at the given batch; best of `repeats`, each from a fresh prefilled state.
pub fn bench_decode<B: Backend>(
    model: &Mamba<B>,
    batch: usize,
    tokens: usize,
    repeats: usize,
    limits: &Limits,
) -> Result<DecodeReport> {
    check_counts("bench decode", &[("batch", batch), ("tokens", tokens), ("repeats", repeats)])?;
    let vocab = model.cfg.vocab_size;
    let prompt = token_ids(batch * DECODE_PROMPT, vocab, 1);
    let steps = token_ids(batch * tokens, vocab, 2);
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let mut state = model.new_state(batch)?;
        model.prefill(&prompt, batch, DECODE_PROMPT, &mut state, DECODE_PROMPT)?;
        let t = Instant::now();
        for ids in steps.chunks_exact(batch) {
            let logits = model.step(ids, &mut state)?;
            std::hint::black_box(&logits);
        }
        model.backend.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(DecodeReport::from_timing(model, batch, tokens, best, limits))
}

/// Result of [`bench_decode_device`]: the report and how the steps ran.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceDecodeReport {
    pub report: DecodeReport,
    /// Whether the steps replayed a recorded graph.
    pub graph: bool,
    /// Why not, when graphs were asked for and not used.
    pub fallback: Option<String>,
}

/// Like [`bench_decode`], but each step is a [`Decoder`] step: the sampled tokens are fed back on
/// the device (greedy sampling there), and the step is a replayed graph when `mode` is
/// [`DecodeMode::Graph`] and the backend records graphs. Every step's tokens are copied to the
/// host, as generation does (streaming, end-of-text checks): with `overlap`, as generation reads
/// them (the next step queued first: [`Decoder::start_tokens`]), else each step waited for
/// before the next is queued. One untimed step first (it records the graph).
pub fn bench_decode_device<B: Backend>(
    model: &Mamba<B>,
    batch: usize,
    tokens: usize,
    repeats: usize,
    limits: &Limits,
    mode: DecodeMode,
    overlap: bool,
) -> Result<DeviceDecodeReport> {
    check_counts("bench decode", &[("batch", batch), ("tokens", tokens), ("repeats", repeats)])?;
    let vocab = model.cfg.vocab_size;
    let prompt = token_ids(batch * DECODE_PROMPT, vocab, 1);
    let histories: Vec<Vec<u32>> = prompt.chunks_exact(DECODE_PROMPT).map(<[u32]>::to_vec).collect();
    let greedy = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
    let mut best = f64::INFINITY;
    let (mut graph, mut fallback) = (false, None);
    for _ in 0..repeats {
        let mut state = model.new_state(batch)?;
        let logits = model.prefill(&prompt, batch, DECODE_PROMPT, &mut state, DECODE_PROMPT)?;
        let mut dec = Decoder::new(model, state, &logits, &histories, greedy.clone(), mode)?;
        dec.step()?;
        std::hint::black_box(dec.tokens()?);
        let t = Instant::now();
        if overlap {
            let mut pending = dec.start_tokens()?;
            for _ in 0..tokens {
                dec.step()?;
                std::hint::black_box(dec.finish_tokens(pending)?);
                pending = dec.start_tokens()?;
            }
            std::hint::black_box(dec.finish_tokens(pending)?);
        } else {
            for _ in 0..tokens {
                dec.step()?;
                std::hint::black_box(dec.tokens()?);
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
        graph = dec.uses_graph();
        fallback = dec.fallback_reason().map(str::to_string);
    }
    let report = DecodeReport::from_timing(model, batch, tokens, best, limits);
    Ok(DeviceDecodeReport { report, graph, fallback })
}

/// One context length of [`bench_scaling`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingPoint {
    /// Tokens of context per sequence before decoding.
    pub context: usize,
    /// Seconds to prefill the context (chunked).
    pub prefill_s: f64,
    /// Seconds per decode step after it (every sequence advances one token).
    pub decode_s_per_step: f64,
    /// Bytes of recurrent state per sequence: what decoding carries, whatever the context.
    pub state_bytes: usize,
    /// The device pool's high-water mark over prefill and decode, weights included, when the
    /// backend can tell ([`Backend::peak_memory`]).
    pub peak_memory: Option<u64>,
}

/// How cost grows with the context: for each length in `contexts`, prefills that many random
/// tokens per sequence in chunks of `chunk` (bounded activations), then times `tokens` decode
/// steps of a [`Decoder`] (a replayed graph where the backend records graphs; greedy sampling on
/// the device). A linear-time model shows prefill time proportional to the context and the same
/// time per decode step and the same memory at every length. One run per length.
pub fn bench_scaling<B: Backend>(
    model: &Mamba<B>,
    batch: usize,
    contexts: &[usize],
    tokens: usize,
    chunk: usize,
) -> Result<Vec<ScalingPoint>> {
    check_counts("bench scaling", &[("batch", batch), ("tokens", tokens), ("chunk", chunk)])?;
    let be = &model.backend;
    let greedy = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
    let mut points = Vec::with_capacity(contexts.len());
    for &context in contexts {
        check_counts("bench scaling", &[("context length", context)])?;
        let ids = token_ids(batch * context, model.cfg.vocab_size, 4);
        be.synchronize()?;
        be.reset_peak_memory();
        let mut state = model.new_state(batch)?;
        let t = Instant::now();
        let logits = model.prefill(&ids, batch, context, &mut state, chunk)?;
        be.synchronize()?;
        let prefill_s = t.elapsed().as_secs_f64();
        let histories = vec![Vec::new(); batch];
        let mut dec = Decoder::new(model, state, &logits, &histories, greedy.clone(), DecodeMode::Graph)?;
        dec.step()?;
        std::hint::black_box(dec.tokens()?);
        let t = Instant::now();
        for _ in 0..tokens {
            dec.step()?;
        }
        std::hint::black_box(dec.tokens()?);
        let decode_s_per_step = t.elapsed().as_secs_f64() / tokens as f64;
        points.push(ScalingPoint {
            context,
            prefill_s,
            decode_s_per_step,
            state_bytes: model.state_bytes_per_sequence(),
            peak_memory: be.peak_memory(),
        });
    }
    Ok(points)
}

/// Times [`Mamba::prefill`] (one chunk, last-position logits only) of `seqlen` random tokens per
/// sequence from a fresh state; best of `repeats`.
pub fn bench_prefill<B: Backend>(
    model: &Mamba<B>,
    batch: usize,
    seqlen: usize,
    repeats: usize,
    limits: &Limits,
) -> Result<PrefillReport> {
    check_counts("bench prefill", &[("batch", batch), ("seqlen", seqlen), ("repeats", repeats)])?;
    let ids = token_ids(batch * seqlen, model.cfg.vocab_size, 3);
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let mut state = model.new_state(batch)?;
        let t = Instant::now();
        let logits = model.prefill(&ids, batch, seqlen, &mut state, seqlen)?;
        model.backend.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&logits);
    }
    let flop_per_token = prefill_flop_per_token(model, seqlen);
    Ok(PrefillReport {
        batch,
        seqlen,
        tok_per_s: (batch * seqlen) as f64 / best,
        flop_per_token,
        limit_tok_per_s: limits.gemm_gflop_s * 1e9 / flop_per_token,
    })
}

/// Measured ceilings of a device through its own ops, for backends other than the CPU's:
/// `read_gb_s` is the device-to-device copy bandwidth (`clone_buf` of 1 GiB, bytes read plus
/// bytes written, best of 10), `gemm_gflop_s` the rate of `linear` at 4096 × 4096 × 4096 (best
/// of 5). Each timing waits for the device ([`Backend::synchronize`]).
pub fn measure_device_limits<B: Backend>(be: &B) -> Result<Limits> {
    let n = (1usize << 30) / 4;
    let src = be.from_vec(random_values(n, 11, -1.0, 1.0))?;
    let mut best = f64::INFINITY;
    for _ in 0..11 {
        be.synchronize()?;
        let t = Instant::now();
        let copy = be.clone_buf(&src)?;
        be.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(copy);
    }
    let copy_gb_s = 2.0 * (4 * n) as f64 / best / 1e9;
    drop(src);
    let m = 4096;
    let x = be.from_vec(random_values(m * m, 12, -1.0, 1.0))?;
    let w = be.from_vec(random_values(m * m, 13, -1.0, 1.0))?;
    let mut out = be.zeros(m * m)?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        be.synchronize()?;
        let t = Instant::now();
        be.linear(View::full(&x, m), m, m, &w, m, None, &mut out)?;
        be.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(Limits { read_gb_s: copy_gb_s, gemm_gflop_s: 2.0 * (m * m * m) as f64 / best / 1e9 })
}

/// Deterministic values in `[lo, hi)` (SplitMix64).
fn random_values(count: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    use rayon::prelude::*;
    // SplitMix64: value i depends on i alone (the state after i + 1 steps is seed + (i + 1)·γ),
    // so the values are filled in parallel, the same as one after another (a 128 × 2048 × 4096
    // scan's inputs are 3.2 billion values).
    let value = |i: usize| {
        let mut z = seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        lo + (hi - lo) * (((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32)
    };
    let mut out = vec![0.0f32; count];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = value((c << 16) + j);
        }
    });
    out
}

/// Result of [`bench_scan`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScanReport {
    pub batch: usize,
    pub seqlen: usize,
    pub d_inner: usize,
    pub d_state: usize,
    /// Median time of one scan, milliseconds.
    pub ms: f64,
    /// Fewest bytes a scan must move: `u`, `Δ`, `z` read and `y` written (`[rows, d_inner]` f32
    /// each), `B` and `C` read (`[rows, d_state]` each), plus parameters and state.
    pub bytes: usize,
}

impl ScanReport {
    /// Achieved bandwidth over [`ScanReport::bytes`], GB/s.
    pub fn gb_s(&self) -> f64 {
        self.bytes as f64 / (self.ms * 1e-3) / 1e9
    }
}

/// Random inputs of the benchmarked scan (Δ softplus with bias, `D` skip, `z` gate, selective
/// `B`/`C` as columns of one matrix, as in the model), on a backend.
struct ScanInputs<B: Backend> {
    dims: ScanDims,
    u: B::Buf,
    delta: B::Buf,
    delta_bias: B::Buf,
    a: B::Buf,
    bc: B::Buf,
    d: B::Buf,
    z: B::Buf,
}

/// The host values of [`ScanInputs`]: `bc` is `[rows, 2·d_state]` (B then C in each row).
struct ScanValues {
    u: Vec<f32>,
    delta: Vec<f32>,
    delta_bias: Vec<f32>,
    a: Vec<f32>,
    bc: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
}

impl ScanValues {
    fn new(what: &str, batch: usize, seqlen: usize, di: usize, n: usize) -> Result<Self> {
        check_counts(what, &[("batch", batch), ("seqlen", seqlen), ("d_inner", di), ("d_state", n)])?;
        let rows = batch * seqlen;
        Ok(ScanValues {
            u: random_values(rows * di, 21, -2.0, 2.0),
            delta: random_values(rows * di, 22, -3.0, 0.0),
            delta_bias: random_values(di, 23, -3.0, -1.0),
            // S4D-real A = -(1..=N), as Mamba initializes it.
            a: (0..di * n).map(|i| -((i % n) as f32 + 1.0)).collect(),
            bc: random_values(rows * 2 * n, 24, -1.0, 1.0),
            d: random_values(di, 25, -1.0, 1.0),
            z: random_values(rows * di, 26, -3.0, 3.0),
        })
    }
}

impl<B: Backend> ScanInputs<B> {
    fn new(be: &B, what: &str, batch: usize, seqlen: usize, d_inner: usize, d_state: usize) -> Result<Self> {
        let v = ScanValues::new(what, batch, seqlen, d_inner, d_state)?;
        Ok(ScanInputs {
            dims: ScanDims { batch, seqlen, d_inner, d_state },
            u: be.from_vec(v.u)?,
            delta: be.from_vec(v.delta)?,
            delta_bias: be.from_vec(v.delta_bias)?,
            a: be.from_vec(v.a)?,
            bc: be.from_vec(v.bc)?,
            d: be.from_vec(v.d)?,
            z: be.from_vec(v.z)?,
        })
    }

    fn args(&self) -> ScanArgs<'_, B::Buf> {
        let n = self.dims.d_state;
        ScanArgs {
            dims: self.dims,
            u: &self.u,
            delta: &self.delta,
            delta_bias: &self.delta_bias,
            a: &self.a,
            b: View::cols(&self.bc, 0, 2 * n),
            c: View::cols(&self.bc, n, 2 * n),
            d: &self.d,
            z: Some(View::full(&self.z, self.dims.d_inner)),
        }
    }

    fn rows(&self) -> usize {
        self.dims.batch * self.dims.seqlen
    }
}

/// Median seconds per call of `run`: one warm-up call, then 5 rounds of `repeats` back-to-back
/// calls between two device synchronizations.
fn median_seconds<B: Backend>(be: &B, repeats: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    check_counts("bench", &[("repeats", repeats)])?;
    run()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        be.synchronize()?;
        let t = Instant::now();
        for _ in 0..repeats {
            run()?;
        }
        be.synchronize()?;
        times.push(t.elapsed().as_secs_f64() / repeats as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times the selective scan alone (Δ softplus with bias, `D` skip and `z` gate, as in the
/// model) on random inputs: `rounds` rounds of `repeats` back-to-back scans between two device
/// synchronizations, after one warm-up scan; the median round's time per scan is reported.
pub fn bench_scan<B: Backend>(
    be: &B,
    batch: usize,
    seqlen: usize,
    d_inner: usize,
    d_state: usize,
    repeats: usize,
) -> Result<ScanReport> {
    let inputs = ScanInputs::new(be, "bench scan", batch, seqlen, d_inner, d_state)?;
    let (rows, di, n) = (inputs.rows(), d_inner, d_state);
    let mut state = be.zeros(batch * di * n)?;
    let mut y = be.zeros(rows * di)?;
    let args = inputs.args();
    let secs = median_seconds(be, repeats, || be.selective_scan(&args, &mut state, &mut y))?;
    let bytes = 4 * (4 * rows * di + 2 * rows * n + 2 * batch * di * n + di * (n + 2));
    Ok(ScanReport { batch, seqlen, d_inner: di, d_state: n, ms: secs * 1e3, bytes })
}

/// [`bench_scan`] with bf16 activations on the CUDA backend
/// ([`Cuda::selective_scan_bf16`](crate::backend::cuda::Cuda::selective_scan_bf16)): the same
/// random values rounded to bf16 (B and C as two contiguous `[rows, d_state]` tensors), timed the
/// same way. `bytes` counts `u`, `Δ`, `z` read and `y` written in bf16 (2 bytes each), `B`, `C` in
/// bf16, the fp32 state read and written and the fp32 parameters.
#[cfg(feature = "cuda")]
pub fn bench_scan_bf16(
    be: &crate::backend::cuda::Cuda,
    batch: usize,
    seqlen: usize,
    d_inner: usize,
    d_state: usize,
    repeats: usize,
) -> Result<ScanReport> {
    use crate::backend::cuda::scan_bf16::ScanBf16Args;
    let v = ScanValues::new("bench scan", batch, seqlen, d_inner, d_state)?;
    let (rows, di, n) = (batch * seqlen, d_inner, d_state);
    let (bs, cs): (Vec<&[f32]>, Vec<&[f32]>) = v.bc.chunks_exact(2 * n).map(|r| r.split_at(n)).unzip();
    let (u, delta, z) = (be.bf16_tensor(&v.u)?, be.bf16_tensor(&v.delta)?, be.bf16_tensor(&v.z)?);
    let (b, c) = (be.bf16_tensor(&bs.concat())?, be.bf16_tensor(&cs.concat())?);
    let (delta_bias, a, d) = (be.from_vec(v.delta_bias)?, be.from_vec(v.a)?, be.from_vec(v.d)?);
    let mut state = be.zeros(batch * di * n)?;
    let mut y = be.bf16_zeros(rows * di)?;
    let args = ScanBf16Args {
        dims: ScanDims { batch, seqlen, d_inner, d_state },
        u: &u,
        delta: &delta,
        delta_bias: &delta_bias,
        a: &a,
        b: &b,
        c: &c,
        d: &d,
        z: Some(&z),
    };
    let secs = median_seconds(be, repeats, || be.selective_scan_bf16(&args, &mut state, &mut y))?;
    let bytes = 2 * (4 * rows * di + 2 * rows * n) + 4 * (2 * batch * di * n + di * (n + 2));
    Ok(ScanReport { batch, seqlen, d_inner: di, d_state: n, ms: secs * 1e3, bytes })
}

/// Times the selective-scan backward alone on the same random inputs as [`bench_scan`], the same
/// way. `bytes` counts the fewest bytes it must move: `u`, `Δ`, `z`, `dy` read and `du`, `dΔ`,
/// `dz` written (`[rows, d_inner]` f32 each), `B`, `C` read and `dB`, `dC` written
/// (`[rows, d_state]` each), plus parameters and their gradients (read and written).
pub fn bench_scan_backward<B: Backend>(
    be: &B,
    batch: usize,
    seqlen: usize,
    d_inner: usize,
    d_state: usize,
    repeats: usize,
) -> Result<ScanReport> {
    let inputs = ScanInputs::new(be, "bench scan backward", batch, seqlen, d_inner, d_state)?;
    let (rows, di, n) = (inputs.rows(), d_inner, d_state);
    let dy = be.from_vec(random_values(rows * di, 27, -1.0, 1.0))?;
    let args = inputs.args();
    let (mut du, mut ddelta, mut dz) = (be.zeros(rows * di)?, be.zeros(rows * di)?, be.zeros(rows * di)?);
    let mut dbc = be.zeros(rows * 2 * n)?;
    let (mut da, mut dd, mut dbias) = (be.zeros(di * n)?, be.zeros(di)?, be.zeros(di)?);
    let secs = median_seconds(be, repeats, || {
        let grads = ScanGrads {
            du: &mut du,
            ddelta: &mut ddelta,
            dbc: &mut dbc,
            db: Strided { offset: 0, ld: 2 * n },
            dc: Strided { offset: n, ld: 2 * n },
            dz: Some(ViewMut::full(&mut dz, di)),
            da: &mut da,
            dd: &mut dd,
            ddelta_bias: &mut dbias,
        };
        be.selective_scan_backward(&args, &dy, grads)
    })?;
    let bytes = 4 * (7 * rows * di + 4 * rows * n + 2 * di * (n + 4));
    Ok(ScanReport { batch, seqlen, d_inner: di, d_state: n, ms: secs * 1e3, bytes })
}

/// Builds a randomly initialized model of a preset (e.g. `"mamba-130m"`) on `backend`, with the
/// paper's initialization: the weights benchmarks run on (generated in parallel,
/// [`init_params_parallel`](crate::model::init::init_params_parallel)).
pub fn random_model<B: Backend>(backend: B, preset: &str, seed: u64) -> Result<Mamba<B>> {
    let cfg = crate::config::MambaConfig::preset(preset)?;
    let params = crate::model::init::init_params_parallel(&cfg, &crate::config::InitConfig::default(), seed);
    let mut it = params.into_iter();
    Mamba::from_params(backend, cfg, |spec| match it.next() {
        Some((s, v)) if s.name == spec.name => Ok(v),
        _ => Err(Error::Backend(format!("random_model: no initial value for '{}'", spec.name))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_in_parallel_are_the_sequential_splitmix() {
        // The sequence the benchmarks used before the values were filled in parallel.
        let (count, seed, lo, hi) = (200_003, 22u64, -3.0f32, 0.5f32);
        let mut s = seed;
        let want: Vec<u32> = (0..count)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (lo + (hi - lo) * (((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32)).to_bits()
            })
            .collect();
        let got: Vec<u32> = random_values(count, seed, lo, hi).into_iter().map(f32::to_bits).collect();
        assert!(got == want, "the parallel fill differs from the sequence");
        assert!(random_values(0, 1, 0.0, 1.0).is_empty());
    }
    use crate::config::MambaConfig;

    fn tiny() -> Mamba<Cpu> {
        let cfg = MambaConfig::new(16, 2, 40);
        let params = crate::model::init::init_params(&cfg, &crate::config::InitConfig::default(), 7);
        let mut it = params.into_iter();
        Mamba::from_params(Cpu, cfg, |_| Ok(it.next().map(|p| p.1).unwrap_or_default())).unwrap()
    }

    #[test]
    fn weight_bytes_of_130m_count_the_vocab_once() {
        let m = random_model(Cpu, "mamba-130m", 0).unwrap();
        let bytes = decode_weight_bytes(&m, 1);
        assert_eq!(bytes, 4 * (m.cfg.num_params() + 768));
        // 129.1M parameters → ~516 MB per decode step.
        assert!((515e6..518e6).contains(&(bytes as f64)), "{bytes}");
        // ~2 × 90M FLOP per token (TARGETS.md), plus the scan and a 512th of the head.
        let f = prefill_flop_per_token(&m, 512);
        assert!((1.80e8..1.90e8).contains(&f), "{f}");
    }

    #[test]
    fn bandwidth_probe_sums_everything() {
        // Lengths that are and are not multiples of the 4 × 64-float stride, and several chunks.
        for len in [0usize, 5, 256, 1000, (1 << 18) + 77, 3 << 18] {
            let data: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let want: f64 = data.iter().map(|&v| v as f64).sum();
            assert_eq!(sum_parallel(&data) as f64, want, "len {len}");
        }
    }

    #[test]
    fn reports_are_consistent_and_bad_counts_are_errors() {
        let m = tiny();
        let lim = Limits { read_gb_s: 10.0, gemm_gflop_s: 100.0 };
        let d = bench_decode(&m, 2, 3, 1, &lim).unwrap();
        assert_eq!((d.batch, d.tokens), (2, 3));
        assert!(d.tok_per_s > 0.0 && d.limit_tok_per_s > 0.0);
        let p = bench_prefill(&m, 1, 8, 2, &lim).unwrap();
        assert!(p.tok_per_s > 0.0 && p.flop_per_token > 0.0);
        assert!(bench_decode(&m, 0, 3, 1, &lim).is_err());
        let pts = bench_scaling(&m, 2, &[5, 40], 3, 16).unwrap();
        assert_eq!(pts.iter().map(|p| p.context).collect::<Vec<_>>(), [5, 40]);
        assert!(pts.iter().all(|p| p.prefill_s > 0.0 && p.decode_s_per_step > 0.0));
        assert_eq!(pts[0].state_bytes, pts[1].state_bytes);
        assert!(bench_scaling(&m, 1, &[0], 3, 16).is_err());
        assert!(bench_prefill(&m, 1, 8, 0, &lim).is_err());
    }
}
