use super::kernel::exp2;
use super::reference::attend_head;
use super::*;
use crate::kv::{KvLayout, KvSettings, KvType};

/// A small deterministic generator of values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}

const TYPES: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Fp8];

fn shape(head_dim: usize, n_kv_heads: usize, ratio: usize) -> AttnShape {
    AttnShape {
        n_heads: n_kv_heads * ratio,
        n_kv_heads,
        head_dim,
        rope_dims: head_dim,
        rope_theta: 10000.0,
    }
}

/// The layouts under test: full attention with sinks, windows of 5 and 37, and each
/// after a context shift (a ring displaced by an offset; a window with a floor).
fn layouts(ty: KvType) -> Vec<KvLayout> {
    let full = KvLayout::new(
        &KvSettings {
            ctx: 200,
            keep: 4,
            ty,
            window: None,
        },
        None,
    );
    let window = |w| {
        KvLayout::new(
            &KvSettings {
                ctx: 200,
                keep: 4,
                ty,
                window: Some(w),
            },
            None,
        )
    };
    let (w5, w37) = (window(5), window(37));
    vec![
        full,
        w5,
        w37,
        full.shifted(4, 80, 200),
        w37.shifted(0, 30, 100),
    ]
}

/// A one-layer cache with random keys and values stored at positions `0..len` in order,
/// so that a ring has overwritten its oldest.
fn filled(layout: KvLayout, s: AttnShape, len: usize, rng: &mut Rng) -> KvCache {
    let kd = s.kv_dim();
    let mut kv = KvCache::new(&[layout], kd).unwrap();
    for p in 0..len {
        kv.store(0, p, &rng.vec(kd), &rng.vec(kd), s.head_dim);
    }
    kv
}

fn reference(kv: &KvCache, q: &[f32], pos0: usize, rows: usize, s: AttnShape) -> Vec<f32> {
    let (qd, hd) = (s.q_dim(), s.head_dim);
    let mut out = vec![0f32; rows * qd];
    let mut scores = vec![0f32; kv.layout(0).capacity];
    for b in 0..rows {
        for h in 0..s.n_heads {
            let off = b * qd + h * hd;
            let o = &mut out[off..off + hd];
            attend_head(o, &q[off..off + hd], kv, 0, pos0 + b, h, s, &mut scores);
        }
    }
    out
}

fn blocked(
    threads: usize,
    kv: &KvCache,
    q: &[f32],
    pos0: usize,
    rows: usize,
    s: AttnShape,
) -> Vec<f32> {
    let pool = ThreadPool::new(threads);
    let mut scratch = Vec::new();
    let mut out = vec![f32::NAN; rows * s.q_dim()];
    attention(&pool, &mut scratch, q, kv, 0, pos0, rows, s, &mut out);
    out
}

/// Batches at the start, in the middle and at the end of the stored positions; every
/// one fits a window's slack.
const BATCHES: [(usize, usize); 4] = [(0, 1), (0, 37), (113, 29), (150, 1)];

#[test]
fn blocked_attention_matches_the_scalar_reference() {
    for hd in [8usize, 64, 80, 128] {
        // Q8_0 rows are whole blocks of 32.
        let n_kv = if hd == 8 { 4 } else { 2 };
        for ratio in [1usize, 3, 8] {
            let s = shape(hd, n_kv, ratio);
            for ty in TYPES {
                for (li, layout) in layouts(ty).into_iter().enumerate() {
                    for (pos0, rows) in BATCHES {
                        let mut rng = Rng((hd * 1000 + ratio * 100 + li * 10 + rows) as u64);
                        let kv = filled(layout, s, pos0 + rows, &mut rng);
                        let q = rng.vec(rows * s.q_dim());
                        let want = reference(&kv, &q, pos0, rows, s);
                        let got = blocked(2, &kv, &q, pos0, rows, s);
                        let worst = want
                            .iter()
                            .zip(&got)
                            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                        // Same inputs, another order of rounding: f32 noise only.
                        assert!(
                            worst <= 2e-6,
                            "hd {hd} ratio {ratio} {} layout {li} batch {pos0}+{rows}: {worst}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn batched_rows_are_bit_identical_to_one_row_calls() {
    let cases = [
        (64, 4, 8, KvType::F16),
        (8, 4, 3, KvType::Q8_0),
        (128, 2, 1, KvType::Fp8),
        (80, 2, 3, KvType::F32),
        (32, 1, 3, KvType::F16),
    ];
    for (hd, n_kv, ratio, ty) in cases {
        let s = shape(hd, n_kv, ratio);
        let qd = s.q_dim();
        for (li, layout) in layouts(ty).into_iter().enumerate() {
            let (pos0, rows) = (100, 61);
            let mut rng = Rng((hd + li) as u64);
            let kv = filled(layout, s, pos0 + rows, &mut rng);
            let q = rng.vec(rows * qd);
            let batch = blocked(2, &kv, &q, pos0, rows, s);
            for threads in [1, 3] {
                assert!(
                    blocked(threads, &kv, &q, pos0, rows, s)
                        .iter()
                        .zip(&batch)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "hd {hd} layout {li}: {threads} threads differ from 2"
                );
            }
            for b in 0..rows {
                let one = blocked(2, &kv, &q[b * qd..(b + 1) * qd], pos0 + b, 1, s);
                let same = one
                    .iter()
                    .zip(&batch[b * qd..(b + 1) * qd])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "hd {hd} {} layout {li} row {b}", ty.name());
            }
        }
    }
}

#[test]
fn exp2_is_accurate_and_underflows_to_zero() {
    for i in 0..=200_000 {
        let x = -(i as f32) * 0.000_63;
        let (got, want) = (exp2(x), x.exp2());
        assert!((got - want).abs() <= want * 3e-7, "2^{x}: {got} vs {want}");
    }
    assert_eq!(exp2(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp2(-200.0), 0.0);
    assert_eq!(exp2(0.0), 1.0);
}

#[test]
fn row_masks_cover_sinks_and_the_rest() {
    assert_eq!(row_mask((0..0, 0..64), 0), u64::MAX);
    assert_eq!(row_mask((0..4, 70..100), 64), !0u64 << 6 & (u64::MAX >> 28));
    assert_eq!(row_mask((0..4, 70..100), 0), 0b1111);
    assert_eq!(row_mask((0..4, 10..11), 128), 0);
}
