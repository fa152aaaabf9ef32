//! Tensor element types: GGUF block layouts, dequantization, and CPU dot products.
//!
//! A matrix product works as in ggml: activations are first converted to the weight type's
//! "dot type" (8-bit blocks for quantized weights, the weight's own float type otherwise),
//! then each weight row is dotted with each converted activation row, using integer
//! multiply-adds inside each block. The kernels for each type live in one table, chosen
//! once per process from the CPU's features.

pub mod amx;
mod block;
pub mod encode;
mod float;
mod kquants;
mod legacy;
pub mod mix;
pub mod pack;
pub mod simd;
mod types;

use std::sync::OnceLock;

pub use block::{as_blocks, as_blocks_mut, Block};
pub use kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
pub use pack::Packed4;
pub use types::GgmlType;

/// Dot product of a weight row with an activation row, as raw block bytes.
pub type VecDot = fn(&[u8], &[u8]) -> f32;
/// Dot products of four weight rows with one activation row.
pub type VecDot4 = fn(&[&[u8]; 4], &[u8]) -> [f32; 4];
/// Dot products of four weight rows with four activation rows: `out[r][t] = w[r] · a[t]`.
pub type Gemm4x4 = fn(&[&[u8]; 4], &[&[u8]; 4]) -> [[f32; 4]; 4];
/// Four weight rows against a few activation rows: `out[t][r] = w[r] · a[t]`, with
/// `out.len() == a.len()`.
pub type VecDot4N = fn(&[&[u8]; 4], &[&[u8]], &mut [[f32; 4]]);
/// A packed group of four weight rows (`pack`) dotted with one activation row.
pub type VecDot4Packed = fn(&[u8], &[u8]) -> [f32; 4];
/// A packed group of four weight rows by four activation rows, as `Gemm4x4`.
pub type Gemm4x4Packed = fn(&[u8], &[&[u8]; 4]) -> [[f32; 4]; 4];

/// The CPU kernels of one type. All take raw little-endian GGUF bytes.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Decodes a whole number of blocks to f32.
    pub to_float: fn(&[u8], &mut [f32]),
    /// Encodes f32 values to whole blocks (the reference quantizer).
    pub from_float: fn(&[f32], &mut [u8]),
    /// The type activations are converted to before a dot with a row of this type.
    pub vec_dot_type: GgmlType,
    /// Dot product of a row of this type with a row of `vec_dot_type`, same element count.
    pub vec_dot: Option<VecDot>,
    /// Four weight rows dotted with one activation row, as four `vec_dot` calls would
    /// (up to float summation order), but loading each activation block once. Only where
    /// it beats four `vec_dot` calls.
    pub vec_dot_4rows: Option<VecDot4>,
    /// A tile of four weight rows by four activation rows, as sixteen `vec_dot` calls
    /// would (up to float summation order), decoding each weight block once for all four
    /// activation rows. For prefill, where many activation rows meet each weight row.
    pub gemm_4x4: Option<Gemm4x4>,
    /// Four weight rows against a few activation rows, each output bit for bit what
    /// `vec_dot_4rows` gives for its activation row (four `vec_dot`s where the type has
    /// no `vec_dot_4rows`), but decoding each weight block once for all activation rows.
    /// For row-exact batches (`Backend::set_row_exact`), where `gemm_4x4`'s rounding
    /// would not do.
    pub vec_dot_4rows_n: Option<VecDot4N>,
    /// Decode over weights packed four rows at a time (`pack`): where it exists, the CPU
    /// backend packs this type's matrices at their first product, and every product with
    /// them goes through it (one activation row at a time) or `packed_4x4`.
    pub packed_4rows: Option<VecDot4Packed>,
    /// Prefill's tile over packed weights; without it, packed weights take
    /// `packed_4rows` per activation row.
    pub packed_4x4: Option<Gemm4x4Packed>,
}

fn blocks<T: Block>(bytes: &[u8]) -> &[T] {
    as_blocks(bytes).expect("whole blocks")
}

fn blocks_mut<T: Block>(bytes: &mut [u8]) -> &mut [T] {
    as_blocks_mut(bytes).expect("whole blocks")
}

/// The portable kernels, which every SIMD kernel is tested against.
pub fn scalar_kernels(t: GgmlType) -> Option<Kernels> {
    use GgmlType as T;
    let k = |to_float, from_float, vec_dot_type, vec_dot| {
        Some(Kernels {
            to_float,
            from_float,
            vec_dot_type,
            vec_dot,
            vec_dot_4rows: None,
            gemm_4x4: None,
            vec_dot_4rows_n: None,
            packed_4rows: None,
            packed_4x4: None,
        })
    };
    match t {
        T::F32 => k(
            float::dequantize_f32,
            float::quantize_f32,
            T::F32,
            Some(float::vec_dot_f32),
        ),
        T::F16 => k(
            float::dequantize_f16,
            float::quantize_f16,
            T::F16,
            Some(float::vec_dot_f16),
        ),
        T::BF16 => k(
            float::dequantize_bf16,
            float::quantize_bf16,
            T::BF16,
            Some(float::vec_dot_bf16),
        ),
        T::Q4_0 => k(
            |s, o| legacy::dequantize_q4_0(blocks(s), o),
            |x, o| legacy::quantize_q4_0(x, blocks_mut(o)),
            T::Q8_0,
            Some(|w, a| legacy::vec_dot_q4_0_q8_0(blocks(w), blocks(a))),
        ),
        T::Q4_1 => k(
            |s, o| legacy::dequantize_q4_1(blocks(s), o),
            |x, o| legacy::quantize_q4_1(x, blocks_mut(o)),
            T::Q8_1,
            Some(|w, a| legacy::vec_dot_q4_1_q8_1(blocks(w), blocks(a))),
        ),
        T::Q5_0 => k(
            |s, o| legacy::dequantize_q5_0(blocks(s), o),
            |x, o| legacy::quantize_q5_0(x, blocks_mut(o)),
            T::Q8_0,
            Some(|w, a| legacy::vec_dot_q5_0_q8_0(blocks(w), blocks(a))),
        ),
        T::Q5_1 => k(
            |s, o| legacy::dequantize_q5_1(blocks(s), o),
            |x, o| legacy::quantize_q5_1(x, blocks_mut(o)),
            T::Q8_1,
            Some(|w, a| legacy::vec_dot_q5_1_q8_1(blocks(w), blocks(a))),
        ),
        T::Q8_0 => k(
            |s, o| legacy::dequantize_q8_0(blocks(s), o),
            |x, o| legacy::quantize_q8_0(x, blocks_mut(o)),
            T::Q8_0,
            Some(|w, a| legacy::vec_dot_q8_0_q8_0(blocks(w), blocks(a))),
        ),
        // Activations only: no dot of its own.
        T::Q8_1 => k(
            |s, o| legacy::dequantize_q8_1(blocks(s), o),
            |x, o| legacy::quantize_q8_1(x, blocks_mut(o)),
            T::Q8_1,
            None,
        ),
        T::Q2_K => k(
            |s, o| kquants::dequantize_q2_k(blocks(s), o),
            |x, o| kquants::quantize_q2_k(x, blocks_mut(o)),
            T::Q8_K,
            Some(|w, a| kquants::vec_dot_q2_k_q8_k(blocks(w), blocks(a))),
        ),
        T::Q3_K => k(
            |s, o| kquants::dequantize_q3_k(blocks(s), o),
            |x, o| kquants::quantize_q3_k(x, blocks_mut(o)),
            T::Q8_K,
            Some(|w, a| kquants::vec_dot_q3_k_q8_k(blocks(w), blocks(a))),
        ),
        T::Q4_K => k(
            |s, o| kquants::dequantize_q4_k(blocks(s), o),
            |x, o| kquants::quantize_q4_k(x, blocks_mut(o)),
            T::Q8_K,
            Some(|w, a| kquants::vec_dot_q4_k_q8_k(blocks(w), blocks(a))),
        ),
        T::Q5_K => k(
            |s, o| kquants::dequantize_q5_k(blocks(s), o),
            |x, o| kquants::quantize_q5_k(x, blocks_mut(o)),
            T::Q8_K,
            Some(|w, a| kquants::vec_dot_q5_k_q8_k(blocks(w), blocks(a))),
        ),
        T::Q6_K => k(
            |s, o| kquants::dequantize_q6_k(blocks(s), o),
            |x, o| kquants::quantize_q6_k(x, blocks_mut(o)),
            T::Q8_K,
            Some(|w, a| kquants::vec_dot_q6_k_q8_k(blocks(w), blocks(a))),
        ),
        // Activations only, as Q8_1.
        T::Q8_K => k(
            |s, o| kquants::dequantize_q8_k(blocks(s), o),
            |x, o| kquants::quantize_q8_k(x, blocks_mut(o)),
            T::Q8_K,
            None,
        ),
        _ => None,
    }
}

/// Table index: dense, from the GGUF id.
fn slot(t: GgmlType) -> usize {
    t.id() as usize
}

const SLOTS: usize = 40;

/// The best kernels for this CPU (or those `WICK_SIMD` forces: see `simd`), or `None` for a
/// type wick cannot compute with.
pub fn kernels(t: GgmlType) -> Option<&'static Kernels> {
    static TABLE: OnceLock<Vec<Option<Kernels>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let level = simd::selected_level();
        (0..SLOTS as u32)
            .map(|id| GgmlType::from_id(id).and_then(|t| simd::kernels_at(level, t)))
            .collect()
    });
    table.get(slot(t)).and_then(|k| k.as_ref())
}

/// The types wick can use as weights.
pub fn is_supported(t: GgmlType) -> bool {
    kernels(t).is_some_and(|k| k.vec_dot.is_some())
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("tensor type {0} is not supported by wick")]
    Unsupported(GgmlType),
    #[error("{n} values do not fill whole {t} blocks")]
    Length { t: GgmlType, n: usize },
}

fn checked(t: GgmlType, n: usize, bytes: usize) -> Result<&'static Kernels, QuantError> {
    let k = kernels(t).ok_or(QuantError::Unsupported(t))?;
    if t.bytes_for(n as u64) != Some(bytes as u64) {
        return Err(QuantError::Length { t, n });
    }
    Ok(k)
}

/// Decodes `out.len()` values of type `t` from `src`.
pub fn dequantize_row(t: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    (checked(t, out.len(), src.len())?.to_float)(src, out);
    Ok(())
}

/// Encodes `x` as type `t` into `out`, which must be exactly the right size.
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    (checked(t, x.len(), out.len())?.from_float)(x, out);
    Ok(())
}

/// Encodes a row-major matrix of `x.len() / cols` rows as type `t`, row by row. Each row
/// must fill whole blocks: a GGUF tensor's rows start on block boundaries.
pub fn quantize_tensor(t: GgmlType, x: &[f32], cols: usize) -> Result<Vec<u8>, QuantError> {
    let k = kernels(t).ok_or(QuantError::Unsupported(t))?;
    let row_bytes = t
        .bytes_for(cols as u64)
        .filter(|_| cols > 0)
        .ok_or(QuantError::Length { t, n: cols })? as usize;
    if !x.len().is_multiple_of(cols) {
        return Err(QuantError::Length { t, n: x.len() });
    }
    let mut out = vec![0u8; x.len() / cols * row_bytes];
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
        (k.from_float)(xr, or);
    }
    Ok(out)
}

/// The format activations take for dots with weights of type `t`.
pub fn vec_dot_type(t: GgmlType) -> GgmlType {
    kernels(t).map_or(GgmlType::F32, |k| k.vec_dot_type)
}

/// The dot product of a row of any supported type with f32 values, dequantizing one block
/// at a time on the stack: the exact path, with no rounding of the activations.
pub fn vec_dot_exact(t: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    let k = kernels(t).expect("checked at load");
    let (bl, bb) = (t.block_len(), t.block_bytes());
    // Float types have one-element "blocks": decode them 64 at a time.
    let per = if bl == 1 { 64 } else { 1 };
    let mut buf = [0f32; 256];
    let mut acc = 0f32;
    for (wc, xc) in w.chunks(bb * per).zip(x.chunks(bl * per)) {
        let d = &mut buf[..xc.len()];
        (k.to_float)(wc, d);
        acc += d.iter().zip(xc).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}

/// How activations meet weights in a matrix product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// As llama.cpp: activations rounded to the weight type's dot type (8-bit blocks for
    /// quantized weights), integer multiply-adds inside each block.
    #[default]
    Fast,
    /// Activations stay f32 and weights are dequantized exactly: slower, but the same math
    /// as an exact reference forward pass.
    Exact,
}

/// Rows of activations converted for dots with one weight type. It keeps its buffer, so
/// converting the next batch allocates nothing once it has grown to size.
#[derive(Default)]
pub struct DotInput {
    precision: Precision,
    ty: Option<GgmlType>,
    cols: usize,
    row_bytes: usize,
    rows: usize,
    bytes: Vec<u8>,
    /// The rows as given, for the exact path.
    f32s: Vec<f32>,
    /// The rows interleaved for AMX tiles, and the weight type they are packed for.
    amx: amx::Acts,
    amx_for: Option<GgmlType>,
}

impl DotInput {
    pub fn new(precision: Precision) -> DotInput {
        DotInput {
            precision,
            ..DotInput::default()
        }
    }

    /// Converts the rows of `x` (each `cols` long) for dots with weights of `weight_type`.
    pub fn prepare(
        &mut self,
        weight_type: GgmlType,
        x: &[f32],
        cols: usize,
    ) -> Result<(), QuantError> {
        let t = self.input_type(weight_type);
        let k = kernels(t).ok_or(QuantError::Unsupported(t))?;
        let row_bytes = t
            .bytes_for(cols as u64)
            .ok_or(QuantError::Length { t, n: cols })? as usize;
        let rows = x.len() / cols;
        if self.precision == Precision::Exact {
            self.f32s.clear();
            self.f32s.extend_from_slice(x);
        } else {
            self.bytes.resize(rows * row_bytes, 0);
            for (xr, br) in x
                .chunks_exact(cols)
                .zip(self.bytes.chunks_exact_mut(row_bytes))
            {
                (k.from_float)(xr, br);
            }
        }
        self.cols = cols;
        self.ty = Some(t);
        self.row_bytes = row_bytes;
        self.rows = rows;
        self.amx_for = None;
        if self.precision == Precision::Fast
            && rows >= amx::MIN_ROWS
            && amx::format(weight_type).is_some()
            && amx::enabled()
        {
            self.amx
                .pack(weight_type, &self.bytes, row_bytes, rows, cols);
            self.amx_for = Some(weight_type);
        }
        Ok(())
    }

    /// The rows packed for AMX tile products with weights of type `t`, where the CPU has
    /// them, the batch is large enough and the type has a tile format.
    pub fn amx(&self, t: GgmlType) -> Option<&amx::Acts> {
        (self.amx_for == Some(t)).then_some(&self.amx)
    }

    fn input_type(&self, weight_type: GgmlType) -> GgmlType {
        match self.precision {
            Precision::Fast => vec_dot_type(weight_type),
            Precision::Exact => GgmlType::F32,
        }
    }

    /// True if the rows were prepared for weights of type `t`.
    pub fn ready_for(&self, t: GgmlType) -> bool {
        self.ty == Some(self.input_type(t))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// The dot product of one weight row of type `t` with prepared row `i`.
    pub fn dot(&self, t: GgmlType, w_row: &[u8], i: usize) -> f32 {
        assert!(self.ready_for(t), "activations prepared for another type");
        if self.precision == Precision::Exact {
            return vec_dot_exact(t, w_row, &self.f32s[i * self.cols..(i + 1) * self.cols]);
        }
        let f = kernels(t).and_then(|k| k.vec_dot).expect("checked at load");
        f(w_row, self.row(i))
    }

    /// The dot products of four weight rows of type `t` with prepared row `i`: one
    /// `vec_dot_4rows` call where the type has one (activations loaded once for all four),
    /// else four `dot`s.
    pub fn dot4(&self, t: GgmlType, w_rows: [&[u8]; 4], i: usize) -> [f32; 4] {
        if self.precision == Precision::Fast {
            if let Some(f) = kernels(t).and_then(|k| k.vec_dot_4rows) {
                assert!(self.ready_for(t), "activations prepared for another type");
                return f(&w_rows, self.row(i));
            }
        }
        w_rows.map(|w| self.dot(t, w, i))
    }

    /// True if `dot4_rows` has a kernel for type `t` that shares the weight decode between
    /// activation rows, rather than falling back to `dot4` per row.
    pub fn has_rows_n(&self, t: GgmlType) -> bool {
        self.precision == Precision::Fast && kernels(t).is_some_and(|k| k.vec_dot_4rows_n.is_some())
    }

    /// `out[j]`: `dot4(t, w_rows, i + j)`, bit for bit, for each `j < out.len()`; one
    /// `vec_dot_4rows_n` call per four activation rows where the type has one.
    pub fn dot4_rows(&self, t: GgmlType, w_rows: [&[u8]; 4], i: usize, out: &mut [[f32; 4]]) {
        if self.precision == Precision::Fast {
            if let Some(f) = kernels(t).and_then(|k| k.vec_dot_4rows_n) {
                assert!(self.ready_for(t), "activations prepared for another type");
                for (c, o) in out.chunks_mut(4).enumerate() {
                    let b = i + 4 * c;
                    let a: [&[u8]; 4] =
                        std::array::from_fn(|j| if j < o.len() { self.row(b + j) } else { &[] });
                    f(&w_rows, &a[..o.len()], o);
                }
                return;
            }
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot4(t, w_rows, i + j);
        }
    }

    /// Rows `4g..4g + 4` of a packed weight of type `t` dotted with prepared row `i`.
    pub fn dot4_packed(&self, t: GgmlType, w: &Packed4, g: usize, i: usize) -> [f32; 4] {
        assert!(self.ready_for(t), "activations prepared for another type");
        let f = kernels(t)
            .and_then(|k| k.packed_4rows)
            .expect("packed only with a kernel");
        f(w.group(g), self.row(i))
    }

    /// True if `dot4x4_packed` has a tile for type `t`; else packed weights take
    /// `dot4_packed` per activation row.
    pub fn has_packed_tile(&self, t: GgmlType) -> bool {
        kernels(t).is_some_and(|k| k.packed_4x4.is_some())
    }

    /// `out[r][j]`: row `4g + r` of a packed weight dotted with prepared row `i + j`.
    pub fn dot4x4_packed(&self, t: GgmlType, w: &Packed4, g: usize, i: usize) -> [[f32; 4]; 4] {
        assert!(self.ready_for(t), "activations prepared for another type");
        let f = kernels(t)
            .and_then(|k| k.packed_4x4)
            .expect("checked by has_packed_tile");
        let a = [0, 1, 2, 3].map(|j| self.row(i + j));
        f(w.group(g), &a)
    }

    /// True if `dot4x4` has a tile kernel for type `t`, rather than falling back to dots.
    pub fn has_tile(&self, t: GgmlType) -> bool {
        self.precision == Precision::Fast && kernels(t).is_some_and(|k| k.gemm_4x4.is_some())
    }

    /// `out[r][j]`: weight row `w_rows[r]` of type `t` dotted with prepared row `i + j`,
    /// one `gemm_4x4` call where the type has one, else four `dot4`s.
    pub fn dot4x4(&self, t: GgmlType, w_rows: [&[u8]; 4], i: usize) -> [[f32; 4]; 4] {
        if self.precision == Precision::Fast {
            if let Some(f) = kernels(t).and_then(|k| k.gemm_4x4) {
                assert!(self.ready_for(t), "activations prepared for another type");
                let a = [0, 1, 2, 3].map(|j| self.row(i + j));
                return f(&w_rows, &a);
            }
        }
        let cols = [0, 1, 2, 3].map(|j| self.dot4(t, w_rows, i + j));
        [0, 1, 2, 3].map(|r| cols.map(|c| c[r]))
    }
}

#[cfg(test)]
mod tests;
