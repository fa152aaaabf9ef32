//! Q5_K: Q4_K with a fifth bit per quant: `x = d * scale * q - dmin * min`, q in 0..=31.
//! 5.5 bits per weight.

use super::q4_k::{dequantize_k4, dot_k4, nibble, pack_nibbles, quantize_k4};
use super::search::Qkx2;
use super::{BlockQ8K, K_SCALE_SIZE, QK_K};
use crate::quant::block::Block;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    /// As Q4_K.
    pub scales: [u8; K_SCALE_SIZE],
    /// High bit of element `e` at bit `e / 32` of `qh[e % 32]`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, laid out as Q4_K's quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ5K {}

fn unpack(b: &BlockQ5K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let high = (b.qh[e % 32] >> (e / 32)) & 1;
        (nibble(&b.qs, e) | (high << 4)) as i8
    })
}

pub fn dequantize_q5_k(blocks: &[BlockQ5K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        dequantize_k4(b.d, b.dmin, &b.scales, &unpack(b), o);
    }
}

pub fn quantize_q5_k(x: &[f32], out: &mut [BlockQ5K]) {
    let search = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let k = quantize_k4(x, &search);
        b.d = k.d;
        b.dmin = k.dmin;
        b.scales = k.scales;
        b.qh = [0; QK_K / 8];
        for (e, &q) in k.l.iter().enumerate() {
            b.qh[e % 32] |= (q >> 4) << (e / 32);
        }
        b.qs = pack_nibbles(&k.l);
    }
}

pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(wb, ab)| dot_k4(wb.d, wb.dmin, &wb.scales, &unpack(wb), ab))
        .sum()
}
