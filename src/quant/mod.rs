//! Tensor element types: GGUF block layouts, dequantization, and CPU dot products.
//!
//! A matrix-vector product works as in ggml: the activation vector is first converted to
//! the "dot type" of the weight (8-bit blocks for quantized weights, plain f32 otherwise),
//! then each weight row is dotted with it using integer multiply-adds inside each block.

mod block;
mod float;
mod legacy;
mod types;

pub use block::{as_blocks, as_blocks_mut, Block};
pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
pub use types::GgmlType;

/// The types wick can compute with.
pub fn is_supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q8_0)
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("tensor type {0} is not supported by wick")]
    Unsupported(GgmlType),
    #[error("{n} values do not fill whole {t} blocks")]
    Length { t: GgmlType, n: usize },
}

fn check_len(t: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    if t.bytes_for(n as u64) != Some(bytes as u64) {
        return Err(QuantError::Length { t, n });
    }
    Ok(())
}

fn blocks<T: Block>(bytes: &[u8]) -> &[T] {
    as_blocks(bytes).expect("length checked by the caller")
}

fn blocks_mut<T: Block>(bytes: &mut [u8]) -> &mut [T] {
    as_blocks_mut(bytes).expect("length checked by the caller")
}

/// Decodes `out.len()` values of type `t` from `src`.
pub fn dequantize_row(t: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(t, out.len(), src.len())?;
    match t {
        GgmlType::F32 => float::dequantize_f32(src, out),
        GgmlType::F16 => float::dequantize_f16(src, out),
        GgmlType::BF16 => float::dequantize_bf16(src, out),
        GgmlType::Q4_0 => legacy::dequantize_q4_0(blocks(src), out),
        GgmlType::Q4_1 => legacy::dequantize_q4_1(blocks(src), out),
        GgmlType::Q8_0 => legacy::dequantize_q8_0(blocks(src), out),
        _ => return Err(QuantError::Unsupported(t)),
    }
    Ok(())
}

/// Encodes `x` as type `t` into `out`, which must be exactly the right size.
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_len(t, x.len(), out.len())?;
    match t {
        GgmlType::F32 => float::quantize_f32(x, out),
        GgmlType::F16 => float::quantize_f16(x, out),
        GgmlType::BF16 => float::quantize_bf16(x, out),
        GgmlType::Q4_0 => legacy::quantize_q4_0(x, blocks_mut(out)),
        GgmlType::Q4_1 => legacy::quantize_q4_1(x, blocks_mut(out)),
        GgmlType::Q8_0 => legacy::quantize_q8_0(x, blocks_mut(out)),
        GgmlType::Q8_1 => legacy::quantize_q8_1(x, blocks_mut(out)),
        _ => return Err(QuantError::Unsupported(t)),
    }
    Ok(())
}

/// The format activations take for dots with weights of type `t`.
pub fn vec_dot_type(t: GgmlType) -> GgmlType {
    match t {
        GgmlType::Q4_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 => GgmlType::Q8_1,
        _ => GgmlType::F32,
    }
}

/// An activation vector converted for dots with one weight type; it owns its buffer so
/// that converting again for the next token allocates nothing.
#[derive(Default)]
pub struct DotInput {
    ty: Option<GgmlType>,
    f32s: Vec<f32>,
    bytes: Vec<u8>,
}

impl DotInput {
    /// Converts `x` for dots with weights of type `weight_type`.
    pub fn prepare(&mut self, weight_type: GgmlType, x: &[f32]) -> Result<(), QuantError> {
        let t = vec_dot_type(weight_type);
        if t == GgmlType::F32 {
            self.f32s.clear();
            self.f32s.extend_from_slice(x);
        } else {
            let n = t
                .bytes_for(x.len() as u64)
                .ok_or(QuantError::Length { t, n: x.len() })? as usize;
            self.bytes.resize(n, 0);
            quantize_row(t, x, &mut self.bytes)?;
        }
        self.ty = Some(t);
        Ok(())
    }

    /// The dot product of one weight row of type `t` with the prepared activations.
    /// Panics if the activations were prepared for another weight type.
    pub fn dot(&self, t: GgmlType, row: &[u8]) -> f32 {
        assert_eq!(
            self.ty,
            Some(vec_dot_type(t)),
            "activations prepared for another type"
        );
        match t {
            GgmlType::F32 => float::vec_dot_f32(row, &self.f32s),
            GgmlType::F16 => float::vec_dot_f16(row, &self.f32s),
            GgmlType::BF16 => float::vec_dot_bf16(row, &self.f32s),
            GgmlType::Q4_0 => legacy::vec_dot_q4_0_q8_0(blocks(row), blocks(&self.bytes)),
            GgmlType::Q4_1 => legacy::vec_dot_q4_1_q8_1(blocks(row), blocks(&self.bytes)),
            GgmlType::Q8_0 => legacy::vec_dot_q8_0_q8_0(blocks(row), blocks(&self.bytes)),
            _ => panic!("vec_dot on unsupported type {t}"),
        }
    }
}

#[cfg(test)]
mod tests;
