//! # s6 — Mamba in Rust
//!
//! The selective state space model (S6) of Gu & Dao, *Mamba: Linear-Time Sequence Modeling with
//! Selective State Spaces*, for inference and training from Rust.
//!
//! Layers, imports pointing down only:
//! - [`generate`]: sampling, sessions, the decode loop (runtime);
//! - [`model`]: the Mamba-1 language model and the Transformer baseline, written once against
//!   [`backend::Backend`];
//! - [`backend`]: the ops the models need, implemented per device (CPU now, CUDA later);
//! - [`formats`] and [`config`]: files on disk, knowing nothing of backends.

pub mod backend;
pub mod bench;
pub mod config;
pub mod error;
pub mod formats;
pub mod generate;
pub mod hub;
pub mod model;
pub mod tasks;
pub mod train;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::{Error, Result};
