//! Models: configuration from metadata, weights borrowed from the file, and forward passes.

mod config;
mod llama;
mod weights;

pub use config::{Config, SUPPORTED_ARCHS};
pub use llama::{Llama, Logits, State, MAX_BATCH};
pub use weights::Tensor;

/// stories260K, compiled into the binary so that `wick gen` works with no model file.
pub static DEFAULT_MODEL: &[u8] = include_bytes!("../../models/stories260K.gguf");
pub const DEFAULT_MODEL_NAME: &str = "stories260K (embedded)";
