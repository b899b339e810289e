//! Models, each a plain struct of named tensors written once against [`crate::backend::Backend`].

pub mod init;
pub mod mamba1;
pub mod save;

pub use mamba1::{Logits, Mamba, MambaState};
