//! Resolving a model argument (local dir or Hugging Face repo id) to a local directory.
