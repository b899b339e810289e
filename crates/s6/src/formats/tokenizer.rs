//! Tokenizers: HF `tokenizer.json` and byte-level.
//!
//! The Mamba checkpoints of `state-spaces/*` use the GPT-NeoX-20B BPE tokenizer but do not ship
//! it, so a model directory may lack `tokenizer.json`; [`Tokenizer::for_model`] holds the rules
//! for finding one. Byte-level models (vocabulary 256) need no file at all.

use std::path::Path;

use crate::{Error, Result};

/// Names tried, in order, by [`Tokenizer::eos_token_id`] for HF tokenizers.
const EOS_CANDIDATES: [&str; 4] = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"];

/// Vocabulary size of the byte-level tokenizer: one token per byte value.
const BYTE_VOCAB: usize = 256;

/// A text tokenizer: either a Hugging Face `tokenizer.json` or the byte-level identity mapping.
pub struct Tokenizer {
    kind: Kind,
    /// File name shown by [`Tokenizer::describe`] (`"tokenizer.json"`, `"gpt-neox-20b.json"`).
    source: String,
}

enum Kind {
    Hf(Box<tokenizers::Tokenizer>),
    Bytes,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HF tokenizer's own Debug dumps the whole vocabulary; the summary is what is useful.
        f.debug_tuple("Tokenizer").field(&self.describe()).finish()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        // Read the file ourselves so a missing file gives an I/O error naming the path, rather
        // than the tokenizers crate's bare "No such file or directory".
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tok = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: not a valid tokenizer.json: {e}", path.display())))?;
        let source =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        Ok(Tokenizer { kind: Kind::Hf(Box::new(tok)), source })
    }

    /// The byte-level tokenizer: token id = byte value of the UTF-8 text (vocabulary 256).
    pub fn bytes() -> Self {
        Tokenizer { kind: Kind::Bytes, source: "bytes".to_string() }
    }

    /// Finds the tokenizer for the model in `dir`.
    ///
    /// In order: `explicit` (the `--tokenizer` argument: the word `bytes`, a `tokenizer.json`
    /// file, or a directory holding one) wins; else `<dir>/tokenizer.json`; else the byte
    /// tokenizer if the model's `vocab_size` is 256; else an error telling the user what to pass.
    pub fn for_model(dir: &Path, explicit: Option<&str>, vocab_size: usize) -> Result<Self> {
        if let Some(arg) = explicit {
            if arg == "bytes" {
                return Ok(Self::bytes());
            }
            let path = Path::new(arg);
            if path.is_dir() {
                let file = path.join("tokenizer.json");
                if !file.is_file() {
                    return Err(Error::Tokenizer(format!("--tokenizer {arg}: directory has no tokenizer.json")));
                }
                return Self::from_file(&file);
            }
            return Self::from_file(path);
        }
        let file = dir.join("tokenizer.json");
        if file.is_file() {
            return Self::from_file(&file);
        }
        if vocab_size == BYTE_VOCAB {
            return Ok(Self::bytes());
        }
        Err(Error::Tokenizer(format!(
            "no tokenizer.json in {}; pass --tokenizer PATH (a tokenizer.json, e.g. the \
             GPT-NeoX-20B one the Mamba checkpoints use) or --tokenizer bytes",
            dir.display()
        )))
    }

    /// Encodes `text` to token ids, adding no special tokens (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Hf(tok) => {
                let enc = tok.encode(text, false).map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
                Ok(enc.get_ids().to_vec())
            }
            Kind::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// Decodes token ids to text. Special tokens are kept; byte sequences that are not valid
    /// UTF-8 become U+FFFD.
    ///
    /// HF tokenizers decode ids outside their vocabulary to nothing, as Python `transformers`
    /// does: checkpoints pad the embedding past the tokenizer's vocabulary (GPT-NeoX: 50277
    /// tokens, Mamba: 50280 rows), and a sampled padding id must not abort a stream. The byte
    /// tokenizer rejects ids above 255, which only a model/tokenizer mismatch produces.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.kind {
            Kind::Hf(tok) => tok.decode(ids, false).map_err(|e| Error::Tokenizer(format!("decoding failed: {e}"))),
            Kind::Bytes => Ok(String::from_utf8_lossy(&to_bytes(ids)?).into_owned()),
        }
    }

    /// Number of token ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Hf(tok) => tok.get_vocab_size(true),
            Kind::Bytes => BYTE_VOCAB,
        }
    }

    /// The end-of-text token (`<|endoftext|>` for GPT-NeoX; also `</s>`, `<|end_of_text|>` or
    /// `<eos>` if present); `None` for the byte tokenizer, which has no special tokens.
    pub fn eos_token_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Hf(tok) => EOS_CANDIDATES.iter().find_map(|t| tok.token_to_id(t)),
            Kind::Bytes => None,
        }
    }

    /// One-line summary for logs, e.g. `tokenizer.json (BPE, 50277 tokens)` or `bytes (256)`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Hf(tok) => {
                let model = match tok.get_model() {
                    tokenizers::ModelWrapper::BPE(_) => "BPE",
                    tokenizers::ModelWrapper::WordPiece(_) => "WordPiece",
                    tokenizers::ModelWrapper::WordLevel(_) => "WordLevel",
                    tokenizers::ModelWrapper::Unigram(_) => "Unigram",
                };
                format!("{} ({model}, {} tokens)", self.source, tok.get_vocab_size(true))
            }
            Kind::Bytes => format!("bytes ({BYTE_VOCAB})"),
        }
    }
}

/// Byte tokenizer ids to bytes; ids above 255 are an error rather than silently truncated.
fn to_bytes(ids: &[u32]) -> Result<Vec<u8>> {
    ids.iter()
        .map(|&id| {
            u8::try_from(id).map_err(|_| {
                Error::Tokenizer(format!("token id {id} is outside the byte tokenizer's vocabulary (256 tokens)"))
            })
        })
        .collect()
}

/// After this many tokens held back for ending in U+FFFD, emit anyway: a genuinely incomplete
/// UTF-8 sequence spans at most 4 bytes (so at most 4 tokens), and a model that really generated
/// U+FFFD must not stall the stream until [`StreamDecoder::finish`].
const MAX_HELD_TOKENS: usize = 8;

/// Incremental detokenizer for streaming output: push token ids, get back the newly completed
/// text. Concatenating every [`push`](Self::push) result and the [`finish`](Self::finish) result
/// gives the full decode of all ids (lossily for the trailing incomplete bytes, if any).
///
/// Never splits a multi-byte UTF-8 character, or a BPE byte-fallback sequence, across outputs.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    state: StreamState,
}

enum StreamState {
    /// Byte tokenizer: exact UTF-8 handling on the pending bytes.
    Bytes { pending: Vec<u8> },
    /// HF tokenizer: decode a window of ids and emit the new suffix. Decoding a window rather
    /// than single tokens keeps context the decoder needs (e.g. SentencePiece strips a leading
    /// space only at the start of a decode), and holding back text that ends in U+FFFD keeps
    /// partial byte sequences together.
    Hf {
        ids: Vec<u32>,
        /// Start of the context window: ids before it are fully emitted and forgotten.
        prefix_offset: usize,
        /// Ids in `prefix_offset..read_offset` are emitted; ids from `read_offset` on are not.
        read_offset: usize,
    },
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pushed yet.
    pub fn new(tok: &'a Tokenizer) -> Self {
        let state = match tok.kind {
            Kind::Bytes => StreamState::Bytes { pending: Vec::new() },
            Kind::Hf(_) => StreamState::Hf { ids: Vec::new(), prefix_offset: 0, read_offset: 0 },
        };
        StreamDecoder { tok, state }
    }

    /// Adds one token; returns the text completed by it (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        match &mut self.state {
            StreamState::Bytes { pending } => {
                pending.extend(to_bytes(&[id])?);
                Ok(take_complete_utf8(pending))
            }
            StreamState::Hf { ids, prefix_offset, read_offset } => {
                ids.push(id);
                let prefix = self.tok.decode(&ids[*prefix_offset..*read_offset])?;
                let text = self.tok.decode(&ids[*prefix_offset..])?;
                let held = ids.len() - *read_offset;
                if text.len() <= prefix.len() || (text.ends_with('\u{FFFD}') && held < MAX_HELD_TOKENS) {
                    return Ok(String::new());
                }
                let new = suffix_after(&prefix, &text);
                // Keep the just-emitted tokens as context for the next window, drop the rest.
                ids.drain(..*read_offset);
                *prefix_offset = 0;
                *read_offset = ids.len();
                Ok(new)
            }
        }
    }

    /// Returns whatever is still held back (an incomplete character comes out as U+FFFD) and
    /// resets the decoder for a new stream.
    pub fn finish(&mut self) -> Result<String> {
        match &mut self.state {
            StreamState::Bytes { pending } => {
                let rest = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                Ok(rest)
            }
            StreamState::Hf { ids, prefix_offset, read_offset } => {
                let prefix = self.tok.decode(&ids[*prefix_offset..*read_offset])?;
                let text = self.tok.decode(&ids[*prefix_offset..])?;
                let rest = if text.len() > prefix.len() { suffix_after(&prefix, &text) } else { String::new() };
                ids.clear();
                *prefix_offset = 0;
                *read_offset = 0;
                Ok(rest)
            }
        }
    }
}

/// The part of `text` after `prefix`. Decoders normally only append, so `text` starts with
/// `prefix`; should one rewrite earlier text, emit from the first difference rather than fail.
fn suffix_after(prefix: &str, text: &str) -> String {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common = prefix
        .char_indices()
        .zip(text.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(prefix.len().min(text.len()));
    text.get(common..).unwrap_or_default().to_string()
}

/// Removes and returns the longest prefix of `pending` that is valid UTF-8, with invalid bytes
/// replaced by U+FFFD; keeps only a trailing incomplete (but so far valid) sequence.
fn take_complete_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&pending[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // `valid` bytes were just checked to be UTF-8.
                out.push_str(&String::from_utf8_lossy(&pending[start..start + valid]));
                start += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += n;
                    }
                    // Incomplete sequence at the end: wait for more bytes.
                    None => break,
                }
            }
        }
    }
    pending.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn neox_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/gpt-neox-20b.json")
    }

    fn neox() -> Tokenizer {
        Tokenizer::from_file(&neox_path()).unwrap()
    }

    /// A fresh empty directory under the system temp dir, unique per test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("s6-tokenizer-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
        let mut dec = StreamDecoder::new(tok);
        let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        pieces.push(dec.finish().unwrap());
        let joined = pieces.concat();
        (pieces, joined)
    }

    const MULTIBYTE: &str = "héllo 世界 🎉";

    #[test]
    fn neox_encodes_hello_world() {
        let tok = neox();
        let ids = tok.encode("Hello world!").unwrap();
        assert_eq!(ids, vec![12092, 1533, 2]);
        assert_eq!(tok.decode(&ids).unwrap(), "Hello world!");
    }

    #[test]
    fn neox_metadata() {
        let tok = neox();
        assert_eq!(tok.vocab_size(), 50277);
        assert_eq!(tok.eos_token_id(), Some(0));
        assert_eq!(tok.describe(), "gpt-neox-20b.json (BPE, 50277 tokens)");
    }

    #[test]
    fn neox_roundtrips_multibyte() {
        let tok = neox();
        let ids = tok.encode(MULTIBYTE).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), MULTIBYTE);
    }

    #[test]
    fn neox_decode_skips_out_of_vocab_ids() {
        let tok = neox();
        assert_eq!(tok.decode(&[12092, 50277, 50279, 1533]).unwrap(), "Hello world");
        let (_, joined) = stream_all(&tok, &[12092, 50278, 1533]);
        assert_eq!(joined, "Hello world");
    }

    #[test]
    fn neox_streaming_equals_full_decode() {
        let tok = neox();
        let ids = tok.encode(MULTIBYTE).unwrap();
        // The emoji and CJK characters are split across byte-level tokens, so some pushes
        // must hold back text; none may emit a replacement character.
        let (pieces, joined) = stream_all(&tok, &ids);
        assert_eq!(joined, MULTIBYTE);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(pieces.iter().any(|p| p.is_empty()), "{pieces:?}");
    }

    #[test]
    fn neox_streaming_long_text() {
        let tok = neox();
        let text = "The quick brown fox, naïve café — 日本語のテキスト.\n\n  Indented  code();\t🎉🎉 end";
        let ids = tok.encode(text).unwrap();
        assert_eq!(stream_all(&tok, &ids).1, text);
    }

    #[test]
    fn bytes_roundtrip_and_metadata() {
        let tok = Tokenizer::bytes();
        let ids = tok.encode("Hi é").unwrap();
        assert_eq!(ids, vec![72, 105, 32, 0xC3, 0xA9]);
        assert_eq!(tok.decode(&ids).unwrap(), "Hi é");
        assert_eq!(tok.vocab_size(), 256);
        assert_eq!(tok.eos_token_id(), None);
        assert_eq!(tok.describe(), "bytes (256)");
    }

    #[test]
    fn bytes_decode_is_lossy_and_rejects_big_ids() {
        let tok = Tokenizer::bytes();
        assert_eq!(tok.decode(&[b'a' as u32, 0xFF, b'b' as u32]).unwrap(), "a\u{FFFD}b");
        assert!(tok.decode(&[256]).is_err());
    }

    #[test]
    fn bytes_streaming_equals_full_decode() {
        let tok = Tokenizer::bytes();
        let ids = tok.encode(MULTIBYTE).unwrap();
        let (pieces, joined) = stream_all(&tok, &ids);
        assert_eq!(joined, MULTIBYTE);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // Each character comes out whole, on the push of its last byte.
        let nonempty: Vec<&String> = pieces.iter().filter(|p| !p.is_empty()).collect();
        assert_eq!(nonempty.len(), MULTIBYTE.chars().count());
    }

    #[test]
    fn bytes_streaming_invalid_and_truncated() {
        let tok = Tokenizer::bytes();
        let mut dec = StreamDecoder::new(&tok);
        // An invalid byte is replaced at once; a truncated 3-byte sequence is held to finish().
        assert_eq!(dec.push(0xFF).unwrap(), "\u{FFFD}");
        assert_eq!(dec.push(b'x' as u32).unwrap(), "x");
        assert_eq!(dec.push(0xE4).unwrap(), "");
        assert_eq!(dec.push(0xB8).unwrap(), "");
        assert_eq!(dec.finish().unwrap(), "\u{FFFD}");
        // finish() reset the decoder.
        assert_eq!(dec.push(b'y' as u32).unwrap(), "y");
    }

    #[test]
    fn missing_file_error_names_path() {
        let path = Path::new("/nonexistent/dir/tokenizer.json");
        let err = Tokenizer::from_file(path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/dir/tokenizer.json"), "{err}");
    }

    #[test]
    fn invalid_file_error_names_path() {
        let dir = temp_dir("invalid");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not a valid tokenizer.json"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn for_model_fallback_rules() {
        let empty = temp_dir("empty");
        let with_tok = temp_dir("with-tok");
        std::fs::copy(neox_path(), with_tok.join("tokenizer.json")).unwrap();
        let neox_arg = neox_path().display().to_string();

        // The model dir's tokenizer.json.
        let t = Tokenizer::for_model(&with_tok, None, 50280).unwrap();
        assert_eq!(t.describe(), "tokenizer.json (BPE, 50277 tokens)");
        // Explicit beats the model dir: "bytes", a file, a directory holding tokenizer.json.
        let t = Tokenizer::for_model(&with_tok, Some("bytes"), 50280).unwrap();
        assert_eq!(t.describe(), "bytes (256)");
        let t = Tokenizer::for_model(&empty, Some(&neox_arg), 50280).unwrap();
        assert_eq!(t.vocab_size(), 50277);
        let t = Tokenizer::for_model(&empty, Some(with_tok.to_str().unwrap()), 50280).unwrap();
        assert_eq!(t.vocab_size(), 50277);
        // Nothing found: bytes for a byte model, else an error saying what to pass.
        let t = Tokenizer::for_model(&empty, None, 256).unwrap();
        assert_eq!(t.describe(), "bytes (256)");
        let err = Tokenizer::for_model(&empty, None, 50280).unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("no tokenizer.json in {}", empty.display())), "{msg}");
        assert!(msg.contains("--tokenizer PATH") && msg.contains("--tokenizer bytes"), "{msg}");
        // An explicit path that does not exist is an error, not a silent fallback.
        let missing = empty.join("missing.json");
        assert!(Tokenizer::for_model(&empty, Some(missing.to_str().unwrap()), 256).is_err());
        assert!(Tokenizer::for_model(&empty, Some(empty.to_str().unwrap()), 256).is_err());

        std::fs::remove_dir_all(empty).unwrap();
        std::fs::remove_dir_all(with_tok).unwrap();
    }
}
