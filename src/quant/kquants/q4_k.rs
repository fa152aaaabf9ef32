//! Q4_K: 4-bit quants, 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit minimum:
//! `x = d * scale * q - dmin * min`. 4.5 bits per weight.

use super::search::{make_qkx2_quants, nearest_int, Qkx2};
use super::{dot_i8, pack_scale_min_k4, scale_min_k4, BlockQ8K, K_SCALE_SIZE, QK_K};
use crate::quant::block::Block;
use crate::quant::legacy::{h, to_h};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    /// See `scale_min_k4`.
    pub scales: [u8; K_SCALE_SIZE],
    /// Each 64 elements take 32 bytes: the first 32 in the low nibbles, the next 32 in the
    /// high nibbles.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ4K {}

/// The 4-bit part of element `e` of Q4_K/Q5_K quants.
#[inline]
pub(super) fn nibble(qs: &[u8; QK_K / 2], e: usize) -> u8 {
    (qs[(e / 64) * 32 + e % 32] >> (4 * ((e / 32) % 2))) & 0x0f
}

/// The packing of `nibble`, for values already clamped to 0..=15.
pub(super) fn pack_nibbles(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    std::array::from_fn(|i| {
        let e = (i / 32) * 64 + i % 32;
        (l[e] & 0x0f) | ((l[e + 32] & 0x0f) << 4)
    })
}

fn unpack(b: &BlockQ4K) -> [i8; QK_K] {
    std::array::from_fn(|e| nibble(&b.qs, e) as i8)
}

/// Dequantizes 256 unsigned quants with the Q4_K/Q5_K scales and minimums.
pub(super) fn dequantize_k4(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; K_SCALE_SIZE],
    q: &[i8; QK_K],
    out: &mut [f32],
) {
    let (d, min) = (h(d), h(dmin));
    for (j, (o, q)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        for (y, &q) in o.iter_mut().zip(q) {
            *y = d1 * q as f32 - m1;
        }
    }
}

pub fn dequantize_q4_k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        dequantize_k4(b.d, b.dmin, &b.scales, &unpack(b), o);
    }
}

/// The super-block header Q4_K and Q5_K share, and the quants chosen against it.
pub(super) struct K4Header {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub l: [u8; QK_K],
}

/// The shared part of ggml's Q4_K and Q5_K reference quantizers: a scale and minimum per
/// sub-block of 32 (errors weighted by the sub-block's RMS plus |x|), the scales and
/// minimums quantized to 6 bits, then every value requantized against what was stored.
pub(super) fn quantize_k4(x: &[f32], search: &Qkx2) -> K4Header {
    let nmax = search.nmax;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(search, xs, &weights, &mut l[32 * j..32 * j + 32]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml truncates to u8 before clamping; kept for identical bytes on odd inputs.
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let hdr_scales = pack_scale_min_k4(&ls, &lm);
    let d = to_h(max_scale / 63.0);
    let dmin = to_h(max_min / 63.0);

    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &hdr_scales);
        let dj = h(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = h(dmin) * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    K4Header {
        d,
        dmin,
        scales: hdr_scales,
        l,
    }
}

pub fn quantize_q4_k(x: &[f32], out: &mut [BlockQ4K]) {
    let search = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let k = quantize_k4(x, &search);
        b.d = k.d;
        b.dmin = k.dmin;
        b.scales = k.scales;
        b.qs = pack_nibbles(&k.l);
    }
}

/// The dot of 256 unsigned quants under Q4_K/Q5_K scales with one Q8_K block: integer sums
/// per sub-block; the minimums meet the activations' 16-element sums.
pub(super) fn dot_k4(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; K_SCALE_SIZE],
    q: &[i8; QK_K],
    a: &BlockQ8K,
) -> f32 {
    let (mut isum, mut summs) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let r = 32 * j..32 * j + 32;
        isum += sc as i32 * dot_i8(&q[r.clone()], &a.qs[r]);
        summs += m as i32 * (a.bsum(2 * j) + a.bsum(2 * j + 1));
    }
    h(d) * a.d() * isum as f32 - h(dmin) * a.d() * summs as f32
}

pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(wb, ab)| dot_k4(wb.d, wb.dmin, &wb.scales, &unpack(wb), ab))
        .sum()
}
