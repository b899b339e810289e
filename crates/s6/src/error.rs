//! The one error type of the library. Every variant carries enough context (file, tensor, field,
//! value) for the message alone to tell the user what is wrong and what was expected.

use std::path::PathBuf;

/// Errors of the s6 library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read. (The I/O error is part of the message, not a separate
    /// `source`, so that reporters printing the cause chain do not print it twice.)
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A file exists but its contents are not what the format requires (truncated, corrupt, wrong dtype, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A model configuration is invalid or describes something s6 does not support.
    #[error("config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// A checkpoint's tensors do not match the architecture (missing, extra or mis-shaped tensor).
    #[error("weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    /// A tokenizer could not be found, loaded or applied.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Fetching a model from the Hugging Face Hub failed.
    #[error("hub: {0}")]
    Hub(String),
    /// An argument or input value is out of range (token id outside the vocabulary, empty prompt, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// A computation would need more memory than its budget allows; nothing was attempted.
    #[error("out of memory: {what} needs {needed_bytes} bytes, over the budget of {budget_bytes} bytes")]
    OutOfMemory { what: String, needed_bytes: u64, budget_bytes: u64 },
    /// The compute backend failed or is unavailable.
    #[error("backend: {0}")]
    Backend(String),
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}
