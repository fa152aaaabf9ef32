//! The CPU backend: the reference implementation of each op of a forward pass, with the
//! heavy ones (matrix products, attention) split over a persistent thread pool.

pub mod pool;

use crate::kv::KvCache;
use crate::model::Tensor;
use crate::quant::DotInput;
use pool::{split, SharedMut, ThreadPool};

/// Weight rows each thread takes at a time, so kernels see whole groups.
const ROW_STEP: usize = 4;
/// Weight rows kept hot in L1 while every activation row passes over them.
const ROW_TILE: usize = 16;

pub struct Cpu {
    pool: ThreadPool,
}

impl Cpu {
    pub fn new(n_threads: usize) -> Cpu {
        Cpu {
            pool: ThreadPool::new(n_threads),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// `out[b][r] = w[r] · x[b]` for every weight row `r` and prepared activation row `b`;
    /// `out` is `x.rows()` rows of `w.rows` values. Threads split the weight rows.
    pub fn matmul(&self, out: &mut [f32], w: &Tensor, x: &DotInput) {
        let (n_rows, n_b) = (w.rows, x.rows());
        assert_eq!(out.len(), n_rows * n_b);
        let out = SharedMut::new(out);
        let t = self.pool.n_threads();
        self.pool.run(|i| {
            let mine = split(n_rows, i, t, ROW_STEP);
            let mut r0 = mine.start;
            while r0 < mine.end {
                let r1 = (r0 + ROW_TILE).min(mine.end);
                for b in 0..n_b {
                    // SAFETY: rows r0..r1 belong to this thread alone.
                    let o = unsafe { out.slice(b * n_rows + r0, r1 - r0) };
                    for (r, v) in (r0..r1).zip(o) {
                        *v = x.dot(w.ty, w.row(r), b);
                    }
                }
                r0 = r1;
            }
        });
    }

    /// Causal attention for `n_b` query rows at positions `pos0..pos0 + n_b`, each over
    /// cached positions `0..=pos`. Threads split the (row, head) pairs. `scores` holds
    /// `n_threads` scratch rows of at least `pos0 + n_b` values.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        out: &mut [f32],
        q: &[f32],
        cache: &KvCache,
        layer: usize,
        pos0: usize,
        shape: AttnShape,
        scores: &mut [f32],
    ) {
        let dim = shape.n_heads * shape.head_dim;
        let n_b = q.len() / dim;
        let stride = scores.len() / self.pool.n_threads();
        assert!(stride >= pos0 + n_b);
        let out = SharedMut::new(out);
        let scores = SharedMut::new(scores);
        let t = self.pool.n_threads();
        let jobs = n_b * shape.n_heads;
        self.pool.run(|i| {
            // SAFETY: each thread has its own scratch row.
            let sc = unsafe { scores.slice(i * stride, stride) };
            for job in split(jobs, i, t, 1) {
                let (b, h) = (job / shape.n_heads, job % shape.n_heads);
                let off = b * dim + h * shape.head_dim;
                // SAFETY: each (row, head) pair is one job, owned by one thread.
                let o = unsafe { out.slice(off, shape.head_dim) };
                attend_head(
                    o,
                    &q[off..off + shape.head_dim],
                    cache,
                    layer,
                    pos0 + b,
                    h,
                    shape,
                    sc,
                );
            }
        });
    }
}

#[derive(Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// One query head at `pos` over cached positions `0..=pos`. Query head `h` reads KV head
/// `h / (n_heads / n_kv_heads)` (grouped-query attention).
#[allow(clippy::too_many_arguments)]
fn attend_head(
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
    let scores = &mut scores[..=pos];
    for (t, sc) in scores.iter_mut().enumerate() {
        let k = &cache.key(layer, t)[kv..kv + s.head_dim];
        *sc = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let v = &cache.value(layer, t)[kv..kv + s.head_dim];
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
}

/// `out = x / rms(x) * w`, row by row, with `w` a 1-D weight of one row's length.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &Tensor, eps: f32) {
    let n = w.cols;
    for (o, xr) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        w.dequantize_row(0, o);
        for (a, v) in o.iter_mut().zip(xr) {
            *a *= v * scale;
        }
    }
}

/// Rotary position embedding, llama.cpp's "normal" mode: adjacent pairs `(x[2i], x[2i+1])`
/// of each head are rotated by `pos * inv_freq[i]`. `x` is one token's heads.
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

/// Physical cores where the OS tells them apart from SMT siblings, else logical CPUs.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical {
        let p = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        match std::fs::read_to_string(p) {
            Ok(s) => {
                cores.insert(s.trim().to_string());
            }
            Err(_) => return logical,
        }
    }
    cores.len().max(1)
}
