//! Q3_K: 3-bit quants, 16 sub-blocks of 16, each with a signed 6-bit scale:
//! `x = d * (scale - 32) * (q - 4)`. 3.4375 bits per weight.

use super::search::{make_q3_quants, nearest_int};
use super::{dot_i8, pack_2bit, unpack_2bit, BlockQ8K, QK_K};
use crate::quant::block::Block;
use crate::quant::legacy::{h, to_h};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ3K {
    /// High bit of element `e` at bit `e / 32` of `hmask[e % 32]`; it is set for quants
    /// 4..=7, so a clear bit subtracts 4.
    pub hmask: [u8; QK_K / 8],
    /// Low two bits, see `pack_2bit`.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales: low nibbles of scales 0..8 and 8..16 in the low and high
    /// nibbles of bytes 0..8; top two bits of scale `j` at bits `2 * (j / 4)` of byte `8 + j % 4`.
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ3K {}

/// The sixteen scales, 0..=63 (the stored value, before subtracting 32).
fn unpack_scales(s: &[u8; 12]) -> [u8; 16] {
    std::array::from_fn(|j| {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        lo | (hi << 4)
    })
}

/// The quants, -4..=3.
fn unpack(b: &BlockQ3K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let high = b.hmask[e % 32] & (1 << (e / 32)) != 0;
        unpack_2bit(&b.qs, e) as i8 - if high { 0 } else { 4 }
    })
}

pub fn dequantize_q3_k(blocks: &[BlockQ3K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d_all = h(b.d);
        let q = unpack(b);
        let scales = unpack_scales(&b.scales);
        for ((o, q), &sc) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).zip(&scales) {
            let dl = d_all * (sc as i32 - 32) as f32;
            for (y, &q) in o.iter_mut().zip(q) {
                *y = dl * q as f32;
            }
        }
    }
}

pub fn quantize_q3_k(x: &[f32], out: &mut [BlockQ3K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        // The scale of largest magnitude, with its sign.
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }

        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let v = (nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
                if j < 8 {
                    b.scales[j] = v as u8 & 0x0f;
                } else {
                    b.scales[j - 8] |= (v as u8 & 0x0f) << 4;
                }
                b.scales[8 + j % 4] |= ((v >> 4) as u8) << (2 * (j / 4));
            }
            b.d = to_h(1.0 / iscale);
        } else {
            b.d = to_h(0.0);
        }

        // Requantize against the scales as stored.
        for (j, &sc) in unpack_scales(&b.scales).iter().enumerate() {
            let d = h(b.d) * (sc as i32 - 32) as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }

        b.hmask = [0; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (e, (&q, lo)) in l.iter().zip(&mut low).enumerate() {
            let mut q = q as u8;
            if q > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
                q -= 4;
            }
            *lo = q;
        }
        b.qs = pack_2bit(&low);
    }
}

pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack(wb);
        let mut isum = 0i32;
        for (j, &sc) in unpack_scales(&wb.scales).iter().enumerate() {
            let r = 16 * j..16 * j + 16;
            isum += (sc as i32 - 32) * dot_i8(&q[r.clone()], &ab.qs[r]);
        }
        acc += h(wb.d) * ab.d() * isum as f32;
    }
    acc
}
