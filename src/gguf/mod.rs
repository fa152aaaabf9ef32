//! GGUF: the file format of ggml-based engines. A reader over a memory map, and a writer.

mod reader;
mod value;
mod writer;

pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT, MAGIC};
pub use value::{Abbrev, Value};
pub use writer::GgufWriter;

pub use value::tag;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (wick reads versions 2 and 3)")]
    Version(u32),
    #[error("GGUF file is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    #[error("tensor {tensor:?} has unknown type id {id}")]
    UnknownType { tensor: String, id: u32 },
    #[error("corrupt GGUF file: {0}")]
    Corrupt(String),
}
