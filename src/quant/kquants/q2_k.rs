//! Q2_K: 2-bit quants, 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit minimum:
//! `x = d * scale * q - dmin * min`. 2.625 bits per weight.

use super::search::{make_qkx2_quants, nearest_int, Qkx2};
use super::{dot_i8, pack_2bit, unpack_2bit, BlockQ8K, QK_K};
use crate::quant::block::Block;
use crate::quant::legacy::{h, to_h};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ2K {
    /// Per sub-block: scale in the low nibble, minimum in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// See `pack_2bit`.
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ2K {}

fn unpack(b: &BlockQ2K) -> [i8; QK_K] {
    std::array::from_fn(|e| unpack_2bit(&b.qs, e) as i8)
}

pub fn dequantize_q2_k(blocks: &[BlockQ2K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (h(b.d), h(b.dmin));
        let q = unpack(b);
        for ((o, q), &sc) in o
            .chunks_exact_mut(16)
            .zip(q.chunks_exact(16))
            .zip(&b.scales)
        {
            let dl = d * (sc & 0x0f) as f32;
            let ml = min * (sc >> 4) as f32;
            for (y, &q) in o.iter_mut().zip(q) {
                *y = dl * q as f32 - ml;
            }
        }
    }
}

pub fn quantize_q2_k(x: &[f32], out: &mut [BlockQ2K]) {
    const Q4SCALE: f32 = 15.0;
    let search = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut mins = [0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
            (scales[j], mins[j]) =
                make_qkx2_quants(&search, xs, &weights, &mut l[16 * j..16 * j + 16]);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        b.scales = [0; QK_K / 16];
        b.d = to_h(0.0);
        b.dmin = to_h(0.0);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &v) in b.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * v) as u8;
            }
            b.d = to_h(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &v) in b.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * v) << 4) as u8;
            }
            b.dmin = to_h(max_min / Q4SCALE);
        }

        // Requantize against the scales as stored (rounded to 4 bits and f16).
        for j in 0..QK_K / 16 {
            let d = h(b.d) * (b.scales[j] & 0x0f) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = h(b.dmin) * (b.scales[j] >> 4) as f32;
            for i in 16 * j..16 * j + 16 {
                l[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        b.qs = pack_2bit(&l);
    }
}

pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack(wb);
        let (mut isum, mut summs) = (0i32, 0i32);
        for (j, &sc) in wb.scales.iter().enumerate() {
            let r = 16 * j..16 * j + 16;
            isum += (sc & 0x0f) as i32 * dot_i8(&q[r.clone()], &ab.qs[r]);
            summs += (sc >> 4) as i32 * ab.bsum(j);
        }
        let dall = ab.d() * h(wb.d);
        let dmin = ab.d() * h(wb.dmin);
        acc += dall * isum as f32 - dmin * summs as f32;
    }
    acc
}
