//! Unquantized element types: F32, F16 and BF16, read from little-endian bytes.

use half::{bf16, f16};

#[inline]
fn f32_at(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

#[inline]
fn f16_at(c: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()
}

#[inline]
fn bf16_at(c: &[u8]) -> f32 {
    bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()
}

pub fn dequantize_f32(src: &[u8], out: &mut [f32]) {
    for (c, y) in src.chunks_exact(4).zip(out) {
        *y = f32_at(c);
    }
}

pub fn dequantize_f16(src: &[u8], out: &mut [f32]) {
    for (c, y) in src.chunks_exact(2).zip(out) {
        *y = f16_at(c);
    }
}

pub fn dequantize_bf16(src: &[u8], out: &mut [f32]) {
    for (c, y) in src.chunks_exact(2).zip(out) {
        *y = bf16_at(c);
    }
}

pub fn quantize_f32(x: &[f32], out: &mut [u8]) {
    for (v, c) in x.iter().zip(out.chunks_exact_mut(4)) {
        c.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn quantize_f16(x: &[f32], out: &mut [u8]) {
    for (v, c) in x.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

pub fn quantize_bf16(x: &[f32], out: &mut [u8]) {
    for (v, c) in x.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// Eight partial sums, so the compiler can keep them in one vector register.
#[inline]
fn dot_with(a: &[u8], b: &[u8], width: usize, load: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut ac = a.chunks_exact(width * 8);
    let mut bc = b.chunks_exact(width * 8);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for k in 0..8 {
            acc[k] += load(&x[k * width..]) * load(&y[k * width..]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ac
        .remainder()
        .chunks_exact(width)
        .zip(bc.remainder().chunks_exact(width))
    {
        tail += load(x) * load(y);
    }
    acc.iter().sum::<f32>() + tail
}

pub fn vec_dot_f32(w: &[u8], a: &[u8]) -> f32 {
    dot_with(w, a, 4, f32_at)
}

pub fn vec_dot_f16(w: &[u8], a: &[u8]) -> f32 {
    dot_with(w, a, 2, f16_at)
}

pub fn vec_dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    dot_with(w, a, 2, bf16_at)
}
