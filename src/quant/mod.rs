//! Tensor element types: GGUF block layouts, dequantization, and CPU dot products.

mod types;

pub use types::GgmlType;
