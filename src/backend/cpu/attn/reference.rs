//! The scalar attention the blocked kernel replaced, kept as the reference its tests
//! compare against: one (row, head) at a time, every key and value decoded where it lies,
//! a stored score row and a plain softmax.

use super::super::ops::softmax;
use crate::backend::AttnShape;
use crate::kv::{decode, rotate, KvCache, KvType, MAX_HEAD_DIM};

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
