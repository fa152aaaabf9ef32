//! wick: run large language models from GGUF files.

pub mod gguf;
pub mod quant;
pub mod tokenizer;
