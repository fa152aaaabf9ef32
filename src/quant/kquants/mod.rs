//! ggml's K-quants: 256-element super-blocks split into sub-blocks of 16 or 32, each with
//! its own scale (and, for Q2_K/Q4_K/Q5_K, minimum), the scales themselves quantized
//! against one f16 super-block scale. Q8_K is their activation format.
//!
//! Every struct mirrors ggml's C layout byte for byte (see `legacy` for why scales are
//! kept as raw bytes). The quantizers are ggml's reference quantizers (`quantize_row_*_ref`,
//! what `llama-quantize` runs without an importance matrix), with every float operation in
//! the same order, so that they produce the same bytes.

mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;
mod search;

pub use q2_k::{dequantize_q2_k, quantize_q2_k, vec_dot_q2_k_q8_k, BlockQ2K};
pub use q3_k::{dequantize_q3_k, quantize_q3_k, vec_dot_q3_k_q8_k, BlockQ3K};
pub use q4_k::{dequantize_q4_k, quantize_q4_k, vec_dot_q4_k_q8_k, BlockQ4K};
pub use q5_k::{dequantize_q5_k, quantize_q5_k, vec_dot_q5_k_q8_k, BlockQ5K};
pub use q6_k::{dequantize_q6_k, quantize_q6_k, vec_dot_q6_k_q8_k, BlockQ6K};
pub use q8_k::{dequantize_q8_k, quantize_q8_k, BlockQ8K};

/// Elements in a super-block.
pub const QK_K: usize = 256;

/// Bytes holding the eight 6-bit scales and eight 6-bit minimums of Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// Integer dot product of two runs of quants.
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Scale and minimum of sub-block `j` (0..8) of Q4_K/Q5_K. Bytes 0..4 hold the low six
/// bits of scales 0..4, bytes 4..8 those of minimums 0..4; scales and minimums 4..8 keep
/// their low four bits in the nibbles of bytes 8..12 and their top two bits in the spare
/// top bits of bytes 0..8.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of `scale_min_k4`, for values already clamped to 0..=63.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// Packs 2-bit values (0..=3) four to a byte as Q2_K and Q3_K store them: within each
/// 128-element half, byte `l` holds elements `l`, `l + 32`, `l + 64`, `l + 96`, low bits first.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for half in 0..2 {
        let (src, dst) = (&l[half * 128..], &mut qs[half * 32..]);
        for i in 0..32 {
            dst[i] = src[i] | (src[i + 32] << 2) | (src[i + 64] << 4) | (src[i + 96] << 6);
        }
    }
    qs
}

/// Element `e` of data packed by `pack_2bit`.
#[inline]
fn unpack_2bit(qs: &[u8; QK_K / 4], e: usize) -> u8 {
    (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3
}

#[cfg(test)]
mod tests;
