//! wick: run large language models from GGUF files.

pub mod backend;
pub mod chat;
pub mod cli;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sample;
pub mod session;
pub mod spec;
pub mod synth;
pub mod tokenizer;
