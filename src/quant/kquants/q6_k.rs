//! Q6_K: 6-bit quants, 16 sub-blocks of 16, each with a signed 8-bit scale:
//! `x = d * scale * (q - 32)`. 6.5625 bits per weight.

use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::{dot_i8, BlockQ8K, QK_K};
use crate::quant::block::Block;
use crate::quant::legacy::{h, to_h};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low four bits. Within each 128-element half, byte `l` (0..32) holds elements `l`
    /// and `l + 64` in its low and high nibbles, byte `l + 32` elements `l + 32` and `l + 96`.
    pub ql: [u8; QK_K / 2],
    /// High two bits. Within each half, byte `l` holds elements `l`, `l + 32`, `l + 64`,
    /// `l + 96`, lowest bits first.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ6K {}

/// Where element `e`'s bits live: (index into `ql`, its shift, index into `qh`, its shift).
#[inline]
fn position(e: usize) -> (usize, usize, usize, usize) {
    let (half, r) = (e / 128, e % 128);
    let (quarter, l) = (r / 32, r % 32);
    (
        half * 64 + (quarter % 2) * 32 + l,
        4 * (quarter / 2),
        half * 32 + l,
        2 * quarter,
    )
}

/// The quants, -32..=31.
fn unpack(b: &BlockQ6K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (il, sl, ih, sh) = position(e);
        let q = ((b.ql[il] >> sl) & 0x0f) | (((b.qh[ih] >> sh) & 3) << 4);
        q as i8 - 32
    })
}

pub fn dequantize_q6_k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = h(b.d);
        let q = unpack(b);
        for ((o, q), &sc) in o
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&b.scales)
        {
            let dl = d * sc as f32;
            for (y, &q) in o.iter_mut().zip(q) {
                *y = dl * q as f32;
            }
        }
    }
}

pub fn quantize_q6_k(x: &[f32], out: &mut [BlockQ6K]) {
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        // The scale of largest magnitude, with its sign.
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_qx_quants(32, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > max_abs_scale {
                max_abs_scale = scales[j].abs();
                max_scale = scales[j];
            }
        }

        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: to_h(0.0),
            };
            continue;
        }

        let iscale = -128.0 / max_scale;
        b.d = to_h(1.0 / iscale);
        for (s, &v) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v).min(127) as i8;
        }

        // Requantize against the scales as stored.
        for j in 0..QK_K / 16 {
            let d = h(b.d) * b.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }

        b.ql = [0; QK_K / 2];
        b.qh = [0; QK_K / 4];
        for (e, &q) in l.iter().enumerate() {
            let (il, sl, ih, sh) = position(e);
            let q = q as u8;
            b.ql[il] |= (q & 0x0f) << sl;
            b.qh[ih] |= (q >> 4) << sh;
        }
    }
}

pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack(wb);
        let mut isum = 0i32;
        for (j, &sc) in wb.scales.iter().enumerate() {
            let r = 16 * j..16 * j + 16;
            isum += sc as i32 * dot_i8(&q[r.clone()], &ab.qs[r]);
        }
        acc += h(wb.d) * ab.d() * isum as f32;
    }
    acc
}
