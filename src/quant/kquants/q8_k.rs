//! Q8_K: activations for dots with K-quants. 8-bit quants with an f32 scale, plus the sum
//! of each group of 16 quants, which lets a dot fold in the weights' per-sub-block minimums
//! without a second pass over the quants.

use super::search::nearest_int;
use super::QK_K;
use crate::quant::block::Block;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    /// f32, little-endian.
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    /// i16 little-endian sums of `qs[16 * j..16 * j + 16]`.
    pub bsums: [[u8; 2]; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ8K {}

impl BlockQ8K {
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

pub fn dequantize_q8_k(blocks: &[BlockQ8K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (q, y) in b.qs.iter().zip(o) {
            *y = d * *q as f32;
        }
    }
}

pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums stale here; zeros keep the output a function of the input.
            *b = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; QK_K / 16],
            };
            continue;
        }
        // -127, not -128: ggml's IQ dot kernels rely on quants staying within ±127.
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
