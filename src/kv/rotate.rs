//! The Walsh-Hadamard rotation of keys and values in a Q8_0 cache.
//!
//! A few channels of a head are much larger than the rest (outlier channels), and a Q8_0
//! block's one scale is set by its largest value: the outlier keeps its precision and
//! every other value of its block loses most of its bits. Rotating each row by an
//! orthogonal Hadamard transform before rounding spreads an outlier over all the values it
//! is mixed with, so a block's scale follows their common size instead. Attention rotates
//! the query the same way, and `q · k = (H q) · (H k) / n` holds exactly in exact
//! arithmetic, so scores change only by the (smaller) rounding of the rotated keys. Values
//! are stored rotated too: attention's output is a weighted sum of value rows, so it comes
//! out rotated and is turned back once per head. On SmolLM2 (tests/kv.rs) rotating keys
//! alone takes the largest logit change against f16 from 0.64 to 0.40 and keys and values
//! to 0.33, and only with both does greedy output stay with f16's up to a near-tie.
//!
//! The transform works on chunks of `n` values: the largest power of two that divides the
//! head (so a chunk never mixes two heads, whose dot products are separate) and at most 32
//! (so a chunk never leaves its Q8_0 block: each block is rotated and rounded on its own,
//! one warp per block on the GPU). Heads of 64 and 128 get chunks of 32; chunks of 64
//! measured no better.
//!
//! To keep every constant exact, the butterflies are unnormalized (`H H = n I`) and the
//! stored row takes the factor `1/n`, a power of two: the cache holds `H k / n`, a query is
//! rotated to `H q`, and a stored row comes back as `H (H k / n) = k`. CPU and GPU then do
//! the very same additions in the same order (kernels/cuda/kv.cuh, `kv_hadamard`).

use super::KvType;

/// The chunk the rows of a cache of `ty` are rotated in, for heads of `head_dim`; 1 when
/// they are stored as they are (f32 and f16 round every value alike; fp8 keeps a
/// relative precision per value, so an outlier costs its neighbours nothing, and rotating
/// fp8 rows measured no better).
pub fn chunk(ty: KvType, head_dim: usize) -> usize {
    match ty {
        KvType::Q8_0 if head_dim > 0 => 1 << head_dim.trailing_zeros().min(5),
        _ => 1,
    }
}

/// The unnormalized Walsh-Hadamard transform of every `n`-chunk of `x` (`n` a power of
/// two): stage by stage, pairs `i`, `i + m` (bit `m` of `i` clear) become their sum and
/// difference.
#[inline]
pub fn hadamard(x: &mut [f32], n: usize) {
    if n <= 1 {
        return;
    }
    for c in x.chunks_exact_mut(n) {
        let mut m = 1;
        while m < n {
            for i in 0..n {
                if i & m == 0 {
                    let (a, b) = (c[i], c[i + m]);
                    c[i] = a + b;
                    c[i + m] = a - b;
                }
            }
            m *= 2;
        }
    }
}

/// A key or value row as the cache holds it: `H k / n`.
#[inline]
pub fn to_cache(x: &mut [f32], n: usize) {
    if n <= 1 {
        return;
    }
    hadamard(x, n);
    let s = 1.0 / n as f32;
    x.iter_mut().for_each(|v| *v *= s);
}

/// A stored row back as it was: `H (H k / n) = k`; also attention's output over rotated
/// values.
#[inline]
pub fn from_cache(x: &mut [f32], n: usize) {
    hadamard(x, n);
}

/// A query as it meets the stored keys: `H q`.
#[inline]
pub fn query(x: &mut [f32], n: usize) {
    hadamard(x, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_products_survive_and_keys_come_back() {
        for n in [2usize, 8, 32] {
            let q: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let k: Vec<f32> = (0..64).map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0).collect();
            let (mut hq, mut hk) = (q.clone(), k.clone());
            query(&mut hq, n);
            to_cache(&mut hk, n);
            for c in 0..64 / n {
                let r = c * n..(c + 1) * n;
                let want: f32 = q[r.clone()]
                    .iter()
                    .zip(&k[r.clone()])
                    .map(|(a, b)| a * b)
                    .sum();
                let got: f32 = hq[r.clone()].iter().zip(&hk[r]).map(|(a, b)| a * b).sum();
                assert!(
                    (want - got).abs() < 1e-4,
                    "n {n} chunk {c}: {want} vs {got}"
                );
            }
            from_cache(&mut hk, n);
            assert_eq!(hk, k, "n {n}: small integers over powers of two are exact");
        }
    }

    #[test]
    fn an_outlier_is_spread_over_its_chunk() {
        let mut x = vec![0.01f32; 32];
        x[5] = 10.0;
        to_cache(&mut x, 32);
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max < 10.0 / 30.0, "{max}");
    }

    #[test]
    fn chunks_stay_inside_heads_and_blocks() {
        assert_eq!(chunk(KvType::Q8_0, 64), 32);
        assert_eq!(chunk(KvType::Q8_0, 128), 32);
        assert_eq!(chunk(KvType::Q8_0, 8), 8);
        assert_eq!(chunk(KvType::Q8_0, 80), 16);
        assert_eq!(chunk(KvType::F16, 64), 1);
    }
}
