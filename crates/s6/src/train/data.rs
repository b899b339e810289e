//! Training data: a 1-D stream of token ids (a text file tokenized with the model's tokenizer or
//! as bytes, or a pre-tokenized `.npy` array), cut into windows of `seq_len + 1` tokens.
//!
//! Order: with `shuffle` off, sample `i` of step `s` (0-based) is the window starting at
//! `(s·B + i)·T` (modulo the token count); with it on, the non-overlapping windows of each epoch
//! are visited in a permutation drawn from the seed and the epoch. Either way, the batch of a step
//! is a pure function of (seed, step): resuming needs only the step.

use std::path::Path;

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::formats::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Reads a `.npy` file holding a 1-D array of token ids (uint16, int32, int64, uint32, uint8).
pub fn read_npy_tokens(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::format(path, format!("not a valid .npy token array: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes.get(hstart..hstart + hlen).ok_or_else(|| bad("truncated header"))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = &header[i + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr' in header"))?;
    let descr = descr.trim_start_matches(['\'', '"']).split(['\'', '"']).next().unwrap_or("").to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad("fortran_order arrays are not supported"));
    }
    let shape = field("shape").ok_or_else(|| bad("no 'shape' in header"))?;
    let dims: Vec<&str> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if dims.len() != 1 {
        return Err(bad(&format!("expected a 1-D array, found shape ({})", dims.join(", "))));
    }
    let n: usize = dims[0].parse().map_err(|_| bad("bad shape"))?;
    let data = &bytes[hstart + hlen..];
    let (size, conv): (usize, fn(&[u8]) -> i64) = match descr.as_str() {
        "<u2" | "|u2" => (2, |b| u16::from_le_bytes([b[0], b[1]]) as i64),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
        "<u4" => (4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
        "<i8" => (8, |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        "|u1" | "<u1" => (1, |b| b[0] as i64),
        other => return Err(bad(&format!("dtype '{other}' is not a token-id type (expected uint16, int32 or int64)"))),
    };
    if data.len() < n * size {
        return Err(bad(&format!("truncated: {n} elements need {} bytes, found {}", n * size, data.len())));
    }
    let mut out = Vec::with_capacity(n);
    for (i, c) in data[..n * size].chunks_exact(size).enumerate() {
        let v = conv(c);
        if v < 0 || v > u32::MAX as i64 {
            return Err(Error::format(path, format!("token id {v} at index {i} is negative or too large")));
        }
        out.push(v as u32);
    }
    Ok(out)
}

/// Loads training tokens: `.npy` arrays as they are; anything else as UTF-8 text tokenized by
/// `tokenizer`.
pub fn load_tokens(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        return read_npy_tokens(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    tokenizer.encode(&text)
}

/// Windows over a token stream.
pub struct Batcher {
    tokens: Vec<u32>,
    seq_len: usize,
    batch: usize,
    shuffle: bool,
    seed: u64,
}

impl Batcher {
    pub fn new(tokens: Vec<u32>, seq_len: usize, batch: usize, shuffle: bool, seed: u64) -> Result<Self> {
        if seq_len == 0 || batch == 0 {
            return Err(Error::input("--seq-len and --batch-size must be at least 1"));
        }
        if tokens.len() < seq_len + 1 {
            return Err(Error::input(format!(
                "the data has {} tokens; at least seq_len + 1 = {} are needed",
                tokens.len(),
                seq_len + 1
            )));
        }
        Ok(Batcher { tokens, seq_len, batch, shuffle, seed })
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Non-overlapping windows per epoch.
    pub fn windows(&self) -> usize {
        ((self.tokens.len() - 1) / self.seq_len).max(1)
    }

    /// Start offset of sample `i` of step `step` (both 0-based).
    fn start(&self, step: u64, i: usize) -> usize {
        let k = step as usize * self.batch + i;
        if !self.shuffle {
            return (k * self.seq_len) % self.tokens.len();
        }
        let w = self.windows();
        let (epoch, j) = (k / w, k % w);
        permutation_index(w, self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), j) * self.seq_len
    }

    /// Inputs and targets (`[batch, seq_len]` each) of a step.
    pub fn batch(&self, step: u64) -> (Vec<u32>, Vec<u32>) {
        let (t, n) = (self.seq_len, self.tokens.len());
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        for i in 0..self.batch {
            let s = self.start(step, i);
            for j in 0..t {
                inputs.push(self.tokens[(s + j) % n]);
                targets.push(self.tokens[(s + j + 1) % n]);
            }
        }
        (inputs, targets)
    }
}

/// Element `j` of a seeded permutation of `0..n` (a Fisher–Yates shuffle; cached per call site
/// would be faster, but n is the window count, small next to a training step).
fn permutation_index(n: usize, seed: u64, j: usize) -> usize {
    thread_local! {
        static CACHE: std::cell::RefCell<Option<(usize, u64, Vec<usize>)>> = const { std::cell::RefCell::new(None) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if !matches!(&*c, Some((cn, cs, _)) if *cn == n && *cs == seed) {
            let mut rng = Pcg64::seed_from_u64(seed);
            let mut p: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                let k = (rng.next_u64() % (i as u64 + 1)) as usize;
                p.swap(i, k);
            }
            *c = Some((n, seed, p));
        }
        c.as_ref().map_or(j, |(_, _, p)| p[j])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffled_windows_follow_the_formula() {
        let tokens: Vec<u32> = (0..100).collect();
        let b = Batcher::new(tokens, 8, 3, false, 0).unwrap();
        let (x, y) = b.batch(2);
        // Sample 1 of step 2 starts at (2·3 + 1)·8 = 56.
        assert_eq!(&x[8..16], &(56..64).collect::<Vec<u32>>()[..]);
        assert_eq!(&y[8..16], &(57..65).collect::<Vec<u32>>()[..]);
        // Wraps modulo the token count: step 4, sample 0 starts at 96.
        let (x, _) = b.batch(4);
        assert_eq!(&x[..8], &[96, 97, 98, 99, 0, 1, 2, 3]);
    }

    #[test]
    fn shuffled_order_is_a_permutation_and_deterministic() {
        let tokens: Vec<u32> = (0..1001).collect();
        let b = Batcher::new(tokens, 10, 4, true, 42).unwrap();
        let mut starts: Vec<usize> =
            (0..25).flat_map(|s| (0..4).map(move |i| (s, i))).map(|(s, i)| b.start(s, i)).collect();
        let again: Vec<usize> = (0..25).flat_map(|s| (0..4).map(move |i| (s, i))).map(|(s, i)| b.start(s, i)).collect();
        assert_eq!(starts, again);
        starts.sort();
        assert_eq!(starts, (0..100).map(|w| w * 10).collect::<Vec<_>>());
    }

    #[test]
    fn npy_reading() {
        let dir = std::env::temp_dir().join(format!("s6-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        for v in [5u16, 7, 65535] {
            bytes.extend(v.to_le_bytes());
        }
        let p = dir.join("t.npy");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_npy_tokens(&p).unwrap(), vec![5, 7, 65535]);
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_npy_tokens(&p).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_npy_tokens(&p).unwrap_err().to_string().contains("magic"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
