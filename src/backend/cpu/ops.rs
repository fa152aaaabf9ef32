//! Single-threaded building blocks of the CPU ops.

use super::AttnShape;
use crate::kv::{decode, rotate, KvCache, KvType, MAX_HEAD_DIM};
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
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// Rotates every RoPE pair of `x` (one token's heads) by a further `by` positions, which
/// may be negative: rotations compose, so a key stored at position `p` becomes the key
/// at `p + by`.
pub fn rope_by(x: &mut [f32], head_dim: usize, inv_freq: &[f32], by: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (sin, cos) = (by * f).sin_cos();
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

/// A dot product with eight partial sums: a plain `sum()` of products must add in order,
/// which keeps the compiler from using vector registers.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One query head at `pos` over the cached positions its layer's layout keeps live. Query
/// head `h` reads KV head `h / (n_heads / n_kv_heads)` (grouped-query attention). Keys
/// and values are read where they lie, in the cache's type.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    out: &mut [f32],
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    pos: usize,
    h: usize,
    s: AttnShape,
    scores: &mut [f32],
) {
    let kv = (h / (s.n_heads / s.n_kv_heads)) * s.head_dim;
    let scale = 1.0 / (s.head_dim as f32).sqrt();
    let (sinks, rest) = cache.layout(layer).live(pos);
    let ty = cache.layout(layer).ty;
    let n = sinks.len() + rest.len();
    let positions = || sinks.clone().chain(rest.clone());
    let scores = &mut scores[..n];
    let mut buf = [0f32; MAX_HEAD_DIM];
    let buf = &mut buf[..s.head_dim];
    // Rotated keys meet the query rotated alike; rotated values give the output rotated,
    // which is turned back at the end (see kv::rotate).
    let rot = rotate::chunk(ty, s.head_dim);
    let mut qr = [0f32; MAX_HEAD_DIM];
    let qr = &mut qr[..s.head_dim];
    qr.copy_from_slice(q);
    rotate::query(qr, rot);
    let q = &*qr;
    for (t, sc) in positions().zip(scores.iter_mut()) {
        let (k, _) = cache.rows(layer, t);
        *sc = row_dot(ty, k, kv, q, buf) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (t, &p) in positions().zip(scores.iter()) {
        let (_, v) = cache.rows(layer, t);
        row_axpy(ty, v, kv, p, out, buf);
    }
    rotate::from_cache(out, rot);
}

/// `q · row[off..off + q.len()]` for a stored row, decoded into `buf` first: measured
/// faster than dotting Q8_0 blocks in place (the decode loop and the f32 dot each stay in
/// vector registers).
#[inline]
fn row_dot(ty: KvType, row: &[u8], off: usize, q: &[f32], buf: &mut [f32]) -> f32 {
    decode(ty, row, off, buf);
    dot(q, buf)
}

/// `out += p * row[off..off + out.len()]` for a stored row; `buf` is scratch.
#[inline]
fn row_axpy(ty: KvType, row: &[u8], off: usize, p: f32, out: &mut [f32], buf: &mut [f32]) {
    decode(ty, row, off, buf);
    for (o, x) in out.iter_mut().zip(buf.iter()) {
        *o += p * x;
    }
}
