//! ggml's original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and Q8_1
//! (activations only).
//!
//! Every struct mirrors the C layout byte for byte. Scales are kept as raw little-endian
//! f16 bytes so that each struct has alignment 1 and any byte slice can be viewed as blocks.

use half::f16;

use super::block::Block;

pub const QK: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    /// Element `j` in the low nibble of `qs[j]`, element `j + 16` in the high nibble.
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// Q4_0 plus a fifth bit per element: bit `j` of `qh` (little-endian u32) is the high bit
/// of element `j`.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

/// Q8_0 plus `s = d * sum(qs)`, which lets a Q4_1 dot fold in the weight's offset `m`
/// without a second pass over the activations.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

// SAFETY: plain bytes, alignment 1, every bit pattern valid.
unsafe impl Block for BlockQ4_0 {}
unsafe impl Block for BlockQ4_1 {}
unsafe impl Block for BlockQ5_0 {}
unsafe impl Block for BlockQ5_1 {}
unsafe impl Block for BlockQ8_0 {}
unsafe impl Block for BlockQ8_1 {}

#[inline]
pub(crate) fn h(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

#[inline]
pub(crate) fn to_h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Splits 16 packed bytes into 32 unsigned 4-bit values in element order.
#[inline]
fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for j in 0..16 {
        out[j] = qs[j] & 0x0f;
        out[j + 16] = qs[j] >> 4;
    }
    out
}

pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = h(b.d);
        for (q, y) in unpack_nibbles(&b.qs).iter().zip(o) {
            *y = (*q as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (h(b.d), h(b.m));
        for (q, y) in unpack_nibbles(&b.qs).iter().zip(o) {
            *y = *q as f32 * d + m;
        }
    }
}

/// The 32 unsigned 5-bit values of a Q5 block, in element order.
#[inline]
fn unpack_q5(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let hi = u32::from_le_bytes(qh);
    let mut out = unpack_nibbles(qs);
    for (j, v) in out.iter_mut().enumerate() {
        *v |= (((hi >> j) & 1) as u8) << 4;
    }
    out
}

/// The inverse of `unpack_q5`, for values already clamped to 0..=31.
#[inline]
fn pack_q5(q: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut hi = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
    }
    for (j, v) in q.iter().enumerate() {
        hi |= ((*v as u32 >> 4) & 1) << j;
    }
    (qs, hi.to_le_bytes())
}

pub fn dequantize_q5_0(blocks: &[BlockQ5_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = h(b.d);
        for (q, y) in unpack_q5(&b.qs, b.qh).iter().zip(o) {
            *y = (*q as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(blocks: &[BlockQ5_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (h(b.d), h(b.m));
        for (q, y) in unpack_q5(&b.qs, b.qh).iter().zip(o) {
            *y = *q as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = h(b.d);
        for (q, y) in b.qs.iter().zip(o) {
            *y = *q as f32 * d;
        }
    }
}

pub fn dequantize_q8_1(blocks: &[BlockQ8_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = h(b.d);
        for (q, y) in b.qs.iter().zip(o) {
            *y = *q as f32 * d;
        }
    }
}

/// Symmetric 8-bit quantization of one block, as ggml's reference: d = max|x| / 127.
/// Ties round to even, not away from zero as ggml's `roundf`: that is what SIMD
/// conversions do (llama.cpp's SIMD quantizers too), and it lets them match this exactly.
#[inline]
fn quantize_block_8bit(x: &[f32]) -> (f32, [i8; QK]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    (d, qs)
}

pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, qs) = quantize_block_8bit(xs);
        b.d = to_h(d);
        b.qs = qs;
    }
}

pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, qs) = quantize_block_8bit(xs);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        b.d = to_h(d);
        b.s = to_h(d * sum as f32);
        b.qs = qs;
    }
}

pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // ggml keeps the sign of the largest-magnitude value so that it maps to -8 exactly.
        let max = xs
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_h(d);
        for j in 0..QK / 2 {
            let lo = ((xs[j] * id + 8.5) as i32).min(15) as u8;
            let hi = ((xs[j + QK / 2] * id + 8.5) as i32).min(15) as u8;
            b.qs[j] = lo | (hi << 4);
        }
    }
}

pub fn quantize_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let min = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_h(d);
        b.m = to_h(min);
        for j in 0..QK / 2 {
            let lo = (((xs[j] - min) * id + 0.5) as i32).min(15) as u8;
            let hi = (((xs[j + QK / 2] - min) * id + 0.5) as i32).min(15) as u8;
            b.qs[j] = lo | (hi << 4);
        }
    }
}

pub fn quantize_q5_0(x: &[f32], out: &mut [BlockQ5_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // As Q4_0: the largest-magnitude value maps to -16 exactly.
        let max = xs
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK];
        for (l, v) in q.iter_mut().zip(xs) {
            *l = ((v * id + 16.5) as i8).min(31) as u8;
        }
        b.d = to_h(d);
        (b.qs, b.qh) = pack_q5(&q);
    }
}

pub fn quantize_q5_1(x: &[f32], out: &mut [BlockQ5_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let min = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK];
        for (l, v) in q.iter_mut().zip(xs) {
            // ggml does not clamp here: (v - min) * id + 0.5 stays below 32.
            *l = ((v - min) * id + 0.5) as u8;
        }
        b.d = to_h(d);
        b.m = to_h(min);
        (b.qs, b.qh) = pack_q5(&q);
    }
}

#[inline]
fn dot_i8(a: &[i8; QK], b: &[i8; QK]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack_nibbles(&wb.qs).map(|v| v as i8 - 8);
        acc += h(wb.d) * h(ab.d) * dot_i8(&q, &ab.qs) as f32;
    }
    acc
}

pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack_nibbles(&wb.qs).map(|v| v as i8);
        acc += h(wb.d) * h(ab.d) * dot_i8(&q, &ab.qs) as f32 + h(wb.m) * h(ab.s);
    }
    acc
}

pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack_q5(&wb.qs, wb.qh).map(|v| v as i8 - 16);
        acc += h(wb.d) * h(ab.d) * dot_i8(&q, &ab.qs) as f32;
    }
    acc
}

pub fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let q = unpack_q5(&wb.qs, wb.qh).map(|v| v as i8);
        acc += h(wb.d) * h(ab.d) * dot_i8(&q, &ab.qs) as f32 + h(wb.m) * h(ab.s);
    }
    acc
}

pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        acc += h(wb.d) * h(ab.d) * dot_i8(&wb.qs, &ab.qs) as f32;
    }
    acc
}
