//! Tokenizers: HF `tokenizer.json` and byte-level.
