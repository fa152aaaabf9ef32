use super::*;
use crate::quant::{scalar_kernels, GgmlType};

/// xorshift, seeded, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-scale, scale).
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        // Blocks of differing magnitude, so the scales vary.
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let scale = [0.01, 1.0, 30.0, 0.5][(self.next() % 4) as usize];
            for _ in 0..32.min(n - v.len()) {
                v.push(self.f32(scale));
            }
        }
        v
    }
}

fn encode(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; t.bytes_for(x.len() as u64).unwrap() as usize];
    (scalar_kernels(t).unwrap().from_float)(x, &mut q);
    q
}

/// The byte range of each block that holds quants and sub-block scales: everything but
/// the f16 super-block scales, which random bytes could turn into NaN or infinity.
fn random_part(t: GgmlType) -> Option<std::ops::Range<usize>> {
    use GgmlType as T;
    let b = t.block_bytes();
    Some(match t {
        T::Q4_0 | T::Q8_0 | T::Q5_0 => 2..b,
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => 4..b,
        T::Q2_K => 0..b - 4,
        T::Q3_K | T::Q6_K => 0..b - 2,
        _ => return None,
    })
}

/// A weight row: quantized values, then (for quantized types) every quant and sub-block
/// scale byte randomized, so all nibbles, bytes (-128 included) and scales occur.
fn weight_row(t: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut q = encode(t, &rng.values(n));
    let Some(part) = random_part(t) else {
        return q;
    };
    for b in q.chunks_exact_mut(t.block_bytes()) {
        for byte in &mut b[part.clone()] {
            *byte = rng.next() as u8;
        }
    }
    q
}

/// Sum of |w_i * a_i|, the scale for the tolerance: summation order moves a float sum
/// by a few ulps of this, however much the terms cancel.
fn magnitude(t: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let at = scalar_kernels(t).unwrap().vec_dot_type;
    let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
    (scalar_kernels(t).unwrap().to_float)(w, &mut wf);
    (scalar_kernels(at).unwrap().to_float)(a, &mut af);
    wf.iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum()
}

const DOT_TYPES: [GgmlType; 13] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
];

fn lengths(t: GgmlType) -> Vec<usize> {
    if t.block_len() == 256 {
        return vec![256, 512, 768, 4096, 11008, 14336];
    }
    let mut n = vec![32, 64, 96, 160, 224, 256, 4096, 11008, 14336, 32 * 347];
    if t.block_len() == 1 {
        n.extend([1, 7, 77, 100, 1001, 4097]);
    }
    n
}

#[test]
fn levels_include_scalar_and_parse() {
    let levels = supported_levels();
    assert_eq!(levels[0], Level::Scalar);
    for l in levels {
        assert_eq!(Level::from_name(l.name()), Some(l));
    }
    eprintln!(
        "levels: {:?}, selected {:?}",
        supported_levels(),
        selected_level()
    );
}

#[test]
fn dots_match_scalar_at_every_level() {
    let mut rng = Rng::new(7);
    for t in DOT_TYPES {
        let reference = scalar_kernels(t).unwrap();
        let at = reference.vec_dot_type;
        for n in lengths(t) {
            let w = weight_row(t, n, &mut rng);
            let a = encode(at, &rng.values(n));
            let want = (reference.vec_dot.unwrap())(&w, &a);
            let tol = 1e-5 * magnitude(t, &w, &a, n) + 1e-30;
            for level in supported_levels() {
                let k = kernels_at(level, t).unwrap();
                let got = (k.vec_dot.unwrap())(&w, &a);
                assert!(
                    ((got - want) as f64).abs() <= tol,
                    "{t} n={n} {}: {got} vs scalar {want} (tol {tol})",
                    level.name()
                );
            }
        }
    }
}

#[test]
fn four_row_dots_match_scalar() {
    let mut rng = Rng::new(11);
    for t in DOT_TYPES {
        let reference = scalar_kernels(t).unwrap();
        for n in lengths(t) {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| weight_row(t, n, &mut rng)).collect();
            let a = encode(reference.vec_dot_type, &rng.values(n));
            for level in supported_levels() {
                let Some(f) = kernels_at(level, t).unwrap().vec_dot_4rows else {
                    continue;
                };
                let got = f(&[&rows[0], &rows[1], &rows[2], &rows[3]], &a);
                for (r, w) in rows.iter().enumerate() {
                    let want = (reference.vec_dot.unwrap())(w, &a);
                    let tol = 1e-5 * magnitude(t, w, &a, n) + 1e-30;
                    assert!(
                        ((got[r] - want) as f64).abs() <= tol,
                        "{t} n={n} {} row {r}: {} vs scalar {want}",
                        level.name(),
                        got[r]
                    );
                }
            }
        }
    }
}

/// Packed decode and tile kernels against the scalar dots of the rows they interleave.
#[test]
fn packed_dots_match_scalar() {
    let mut rng = Rng::new(29);
    let mut checked = 0;
    for t in DOT_TYPES {
        let reference = scalar_kernels(t).unwrap();
        for n in lengths(t) {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| weight_row(t, n, &mut rng)).collect();
            let packed = crate::quant::pack::layout(t, &rows.concat(), rows[0].len());
            let acts: Vec<Vec<u8>> = (0..4)
                .map(|_| encode(reference.vec_dot_type, &rng.values(n)))
                .collect();
            for level in supported_levels() {
                let k = kernels_at(level, t).unwrap();
                let Some(f) = k.packed_4rows else {
                    assert!(
                        k.packed_4x4.is_none(),
                        "{t}: a packed tile without a decode kernel"
                    );
                    continue;
                };
                let packed = packed
                    .as_deref()
                    .unwrap_or_else(|| panic!("{t}: a packed kernel without a layout"));
                let tile = k
                    .packed_4x4
                    .map(|g| g(packed, &[0, 1, 2, 3].map(|j| &acts[j][..])));
                for (j, a) in acts.iter().enumerate() {
                    let got = f(packed, a);
                    for (r, w) in rows.iter().enumerate() {
                        let want = (reference.vec_dot.unwrap())(w, a);
                        let tol = 1e-5 * magnitude(t, w, a, n) + 1e-30;
                        let mut gots = vec![got[r]];
                        gots.extend(tile.map(|v| v[r][j]));
                        for g in gots {
                            assert!(
                                ((g - want) as f64).abs() <= tol,
                                "{t} n={n} {} row {r} act {j}: {g} vs scalar {want}",
                                level.name()
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    // Every x86-64 CPU that runs CI has AVX2, and with it packed Q4_0 kernels.
    #[cfg(target_arch = "x86_64")]
    assert!(checked > 0 || !super::Level::Avx2.is_supported());
}

/// The row-exact batch kernel gives, for each activation row, the very bits of the
/// one-row decode path (`vec_dot_4rows`, else `vec_dot`): verified tokens must equal
/// decode steps.
#[test]
fn row_batches_match_one_row_dots_bit_for_bit() {
    let mut rng = Rng::new(17);
    let mut checked = 0;
    for t in DOT_TYPES {
        let reference = scalar_kernels(t).unwrap();
        let mut ns = lengths(t);
        ns.extend([t.block_len() * 3, t.block_len() * 18, t.block_len() * 177]);
        for n in ns {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| weight_row(t, n, &mut rng)).collect();
            let acts: Vec<Vec<u8>> = (0..6)
                .map(|_| encode(reference.vec_dot_type, &rng.values(n)))
                .collect();
            let w = [0, 1, 2, 3].map(|r| &rows[r][..]);
            for level in supported_levels() {
                let k = kernels_at(level, t).unwrap();
                let Some(f) = k.vec_dot_4rows_n else {
                    continue;
                };
                let one_row = |a: &[u8]| match k.vec_dot_4rows {
                    Some(f4) => f4(&w, a),
                    None => w.map(|w| (k.vec_dot.unwrap())(w, a)),
                };
                // 5 and 6 rows: a group of four, then a remainder.
                for m in 1..=acts.len() {
                    let a: Vec<&[u8]> = acts[..m].iter().map(|a| &a[..]).collect();
                    let mut got = vec![[f32::NAN; 4]; m];
                    f(&w, &a, &mut got);
                    for (j, g) in got.iter().enumerate() {
                        let want = one_row(a[j]);
                        assert_eq!(
                            g.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "{t} n={n} {} {m} rows, row {j}: {g:?} vs {want:?}",
                            level.name()
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} batches checked");
    // Every x86-64 CPU with AVX-512 VNNI has the Q4_0, Q4_1 and Q8_0 kernels: on such a
    // machine the test must have compared something.
    if supported_levels().contains(&Level::Avx512Vnni) {
        assert!(checked > 0);
    }
}

#[test]
fn tile_dots_match_scalar() {
    let mut rng = Rng::new(13);
    for t in DOT_TYPES {
        let reference = scalar_kernels(t).unwrap();
        // Odd block counts too, for the tail past the last block pair.
        let mut ns = lengths(t);
        ns.extend([t.block_len() * 3, t.block_len() * 177]);
        for n in ns {
            let rows: Vec<Vec<u8>> = (0..4).map(|_| weight_row(t, n, &mut rng)).collect();
            let acts: Vec<Vec<u8>> = (0..4)
                .map(|_| encode(reference.vec_dot_type, &rng.values(n)))
                .collect();
            for level in supported_levels() {
                let Some(f) = kernels_at(level, t).unwrap().gemm_4x4 else {
                    continue;
                };
                let w = [0, 1, 2, 3].map(|r| &rows[r][..]);
                let a = [0, 1, 2, 3].map(|j| &acts[j][..]);
                let got = f(&w, &a);
                for (r, j) in (0..16).map(|k| (k / 4, k % 4)) {
                    let want = (reference.vec_dot.unwrap())(w[r], a[j]);
                    let tol = 1e-5 * magnitude(t, w[r], a[j], n) + 1e-30;
                    assert!(
                        ((got[r][j] - want) as f64).abs() <= tol,
                        "{t} n={n} {} row {r} act {j}: {} vs scalar {want}",
                        level.name(),
                        got[r][j]
                    );
                }
            }
        }
    }
}

#[test]
fn quantizers_match_scalar_bytes() {
    let mut rng = Rng::new(5);
    let mut inputs: Vec<Vec<f32>> = [32, 64, 96, 256, 512, 4096, 11008, 14336]
        .iter()
        .map(|&n| rng.values(n))
        .collect();
    // A zero block, and exact ties: amax 127 makes d = 1, so k + 0.5 lands on a tie.
    inputs.push(vec![0.0; 256]);
    inputs.push(
        (0..512)
            .map(|i| match i % 32 {
                0 => 127.0,
                j => (j as f32 - 16.0) + 0.5,
            })
            .collect(),
    );
    // Q8_K keeps the sign of the first value of largest magnitude: ties of both signs.
    let mut ties = rng.values(512);
    ties[3] = -40.0;
    ties[200] = 40.0;
    ties[300] = 40.0;
    ties[400] = -40.0;
    inputs.push(ties);
    // Sums of 16 quants at the i16 extremes of a saturating byte.
    inputs.push((0..256).map(|i| if i < 128 { -1.0 } else { 1.0 }).collect());
    for t in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        for x in inputs.iter().filter(|x| x.len() % t.block_len() == 0) {
            let want = encode(t, x);
            for level in supported_levels() {
                let mut got = vec![0u8; want.len()];
                (kernels_at(level, t).unwrap().from_float)(x, &mut got);
                assert!(got == want, "{t} n={} {}", x.len(), level.name());
            }
        }
    }
}
