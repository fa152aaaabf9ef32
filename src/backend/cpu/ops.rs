//! Single-threaded building blocks of the CPU ops.

use crate::model::Tensor;

/// `out = x / rms(x) * w` for one row, with `w` a 1-D weight of the row's length.
pub fn rmsnorm_row(out: &mut [f32], x: &[f32], w: &Tensor, eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    w.dequantize_row(0, out);
    for (a, v) in out.iter_mut().zip(x) {
        *a *= v * scale;
    }
}

/// Rotary position embedding, llama.cpp's "normal" mode: adjacent pairs `(x[2i], x[2i+1])`
/// of each head are rotated by `pos * inv_freq[i]`. `x` is one token's heads; pairs past
/// `inv_freq` are left alone.
pub fn rope(x: &mut [f32], head_dim: usize, inv_freq: &[f32], pos: usize) {
    let mut cs = [(0f32, 0f32); 256];
    let cs = &mut cs[..inv_freq.len()];
    rope_angles(inv_freq, pos as f32, cs);
    rope_with(x, head_dim, cs);
}

/// Rotates every RoPE pair of `x` (one token's heads) by a further `by` positions, which
/// may be negative: rotations compose, so a key stored at position `p` becomes the key
/// at `p + by`.
pub fn rope_by(x: &mut [f32], head_dim: usize, inv_freq: &[f32], by: f32) {
    let mut cs = [(0f32, 0f32); 256];
    let cs = &mut cs[..inv_freq.len()];
    rope_angles(inv_freq, by, cs);
    rope_with(x, head_dim, cs);
}

/// `(sin, cos)` of `pos * inv_freq[i]` for each pair: one token's angles, the same for
/// all its heads, so they are computed once per token rather than once per head.
pub fn rope_angles(inv_freq: &[f32], pos: f32, out: &mut [(f32, f32)]) {
    for (o, &f) in out.iter_mut().zip(inv_freq) {
        *o = (pos * f).sin_cos();
    }
}

/// Rotates the pairs of every head of `x` by the angles of [`rope_angles`].
pub fn rope_with(x: &mut [f32], head_dim: usize, angles: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(sin, cos)) in head.chunks_exact_mut(2).zip(angles) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// The inverse frequencies of RoPE: `theta^(-2i / rope_dims)` for each rotated pair.
pub fn rope_inv_freq(theta: f32, rope_dims: usize, out: &mut [f32]) {
    for (i, f) in out.iter_mut().enumerate() {
        *f = theta.powf(-2.0 * i as f32 / rope_dims as f32);
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
