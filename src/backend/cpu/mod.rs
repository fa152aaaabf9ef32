//! The CPU backend's operations: the reference implementation of each op of a forward pass.

use crate::kv::KvCache;
use crate::model::Tensor;
use crate::quant::DotInput;

/// `out = x / rms(x) * w`, with `w` a 1-D weight.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &Tensor, eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    w.dequantize_row(0, out);
    for (o, v) in out.iter_mut().zip(x) {
        *o *= v * scale;
    }
}

/// `out[r] = w[r] · x` for every row of `w`; `x` was prepared for `w`'s type.
pub fn matvec(out: &mut [f32], w: &Tensor, x: &DotInput) {
    debug_assert_eq!(out.len(), w.rows);
    for (r, o) in out.iter_mut().enumerate() {
        *o = x.dot(w.ty, w.row(r));
    }
}

/// Rotary position embedding, llama.cpp's "normal" mode: adjacent pairs `(x[2i], x[2i+1])`
/// of each head are rotated by `pos * inv_freq[i]`.
pub fn rope(x: &mut [f32], head_dim: usize, inv_freq: &[f32], pos: usize) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// The inverse frequencies of RoPE: `theta^(-2i / rope_dims)` for each rotated pair.
pub fn rope_inv_freq(rope_dims: usize, theta: f32) -> Vec<f32> {
    (0..rope_dims / 2)
        .map(|i| theta.powf(-2.0 * i as f32 / rope_dims as f32))
        .collect()
}

/// Causal attention of one query position over cached positions `0..=pos`, with grouped
/// query heads: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scores: &mut [f32],
) {
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let scores = &mut scores[..=pos];
    for h in 0..n_heads {
        let kv = (h / group) * head_dim;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        for (t, s) in scores.iter_mut().enumerate() {
            let k = &cache.key(layer, t)[kv..kv + head_dim];
            *s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        softmax(scores);
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        oh.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let v = &cache.value(layer, t)[kv..kv + head_dim];
            for (o, x) in oh.iter_mut().zip(v) {
                *o += p * x;
            }
        }
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

/// `x += y`: the residual connection.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
