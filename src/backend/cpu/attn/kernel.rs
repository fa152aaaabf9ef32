//! The inner loops of blocked attention, for up to four queries of one row (which share
//! its mask) against one tile of keys and values: scores, the online-softmax update and
//! the weighted sum of the tile's values.
//!
//! Every score is one chain of fused multiply-adds over the head and every output value
//! one chain over the tile's positions, in the same order whatever the number of queries
//! in a call, and positions outside the mask add exact zeros. A query's result so depends
//! on nothing but its own inputs, which is what keeps batched rows bit-identical to
//! one-row steps (`Backend::set_row_exact`).

/// Positions per tile. Tiles sit on a fixed grid of positions (multiples of `TILE`), so a
/// query meets the same tiles whichever batch it is in.
pub const TILE: usize = 64;

/// Which loops run: picked once per call from the CPU and the head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Off x86-64 only the portable kernel exists.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Isa {
    /// Heads of a multiple of 8 values on an AVX-512 CPU (a last half vector is masked).
    Avx512,
    /// AVX2 and FMA: explicit 256-bit loops for heads of a multiple of 8 values, else the
    /// portable loops compiled for these features.
    Avx2,
    Portable,
}

impl Isa {
    pub fn detect(head_dim: usize) -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("fma");
            if fma && is_x86_feature_detected!("avx512f") && head_dim.is_multiple_of(8) {
                return Isa::Avx512;
            }
            if fma && is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        let _ = head_dim;
        Isa::Portable
    }
}

/// The running state of the queries of one call, each `hd` values: `q` scaled by
/// `log2(e) / sqrt(hd)` (scores come out in base 2), `acc` the unnormalized output, `m`
/// the largest score so far and `l` the sum of `2^(score - m)`.
pub struct Queries<'a> {
    pub q: &'a [f32],
    pub acc: &'a mut [f32],
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
}

/// One tile for `qs.m.len()` (1 to 4) queries: `kt` holds the tile's keys transposed
/// (`hd` rows of `TILE`), `v` its values (`TILE` rows of `hd`), `mask` bit `j` whether
/// position `j` of the tile is live for these queries (not zero). `p` is scratch.
pub fn tile(isa: Isa, qs: Queries, kt: &[f32], v: &[f32], hd: usize, mask: u64, p: &mut [f32]) {
    let nq = qs.m.len();
    debug_assert!((1..=4).contains(&nq) && mask != 0);
    assert!(
        qs.q.len() >= nq * hd
            && qs.acc.len() >= nq * hd
            && qs.l.len() >= nq
            && kt.len() >= hd * TILE
            && v.len() >= TILE * hd
            && p.len() >= 4 * TILE
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX-512F and FMA and a head of whole half vectors;
        // the lengths were checked above.
        Isa::Avx512 => unsafe {
            match nq {
                4 => avx512::tile::<4>(qs, kt, v, hd, mask, p),
                3 => avx512::tile::<3>(qs, kt, v, hd, mask, p),
                2 => avx512::tile::<2>(qs, kt, v, hd, mask, p),
                _ => avx512::tile::<1>(qs, kt, v, hd, mask, p),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA; the lengths were checked above.
        Isa::Avx2 if hd.is_multiple_of(8) => unsafe {
            match nq {
                4 => avx2::tile::<4>(qs, kt, v, hd, mask, p),
                3 => avx2::tile::<3>(qs, kt, v, hd, mask, p),
                2 => avx2::tile::<2>(qs, kt, v, hd, mask, p),
                _ => avx2::tile::<1>(qs, kt, v, hd, mask, p),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA.
        Isa::Avx2 => unsafe { portable_avx2(qs, kt, v, hd, mask, p) },
        _ => portable(qs, kt, v, hd, mask, p),
    }
}

const C: [f32; 8] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
    0.000_015_252_734,
];

/// `2^x` for `x <= 0`: `2^n` times a degree-7 polynomial of the rest (Taylor's, within
/// 1e-8 relative on [-1/2, 1/2]); 0 below -127, and so for `-inf`.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let x = x.max(-127.0);
    let n = x.round_ties_even();
    let f = x - n;
    let mut y = C[7];
    for c in C[..7].iter().rev() {
        y = y.mul_add(f, *c);
    }
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn portable_avx2(qs: Queries, kt: &[f32], v: &[f32], hd: usize, mask: u64, p: &mut [f32]) {
    portable(qs, kt, v, hd, mask, p)
}

#[inline(always)]
fn portable(qs: Queries, kt: &[f32], v: &[f32], hd: usize, mask: u64, p: &mut [f32]) {
    let nq = qs.m.len();
    let live = |j: usize| (mask >> j) & 1 == 1;
    for i in 0..nq {
        let mut s = [0f32; TILE];
        for (d, &qd) in qs.q[i * hd..(i + 1) * hd].iter().enumerate() {
            let k = &kt[d * TILE..(d + 1) * TILE];
            for (s, &k) in s.iter_mut().zip(k) {
                *s = qd.mul_add(k, *s);
            }
        }
        let top = (0..TILE)
            .filter(|&j| live(j))
            .fold(f32::NEG_INFINITY, |m, j| m.max(s[j]));
        let m = qs.m[i].max(top);
        let alpha = exp2(qs.m[i] - m);
        let pi = &mut p[i * TILE..(i + 1) * TILE];
        let mut sum = 0.0;
        for j in 0..TILE {
            pi[j] = if live(j) { exp2(s[j] - m) } else { 0.0 };
            sum += pi[j];
        }
        qs.l[i] = qs.l[i] * alpha + sum;
        qs.m[i] = m;
        if alpha != 1.0 {
            qs.acc[i * hd..(i + 1) * hd]
                .iter_mut()
                .for_each(|a| *a *= alpha);
        }
    }
    let (lo, hi) = (
        mask.trailing_zeros() as usize,
        TILE - mask.leading_zeros() as usize,
    );
    for j in lo..hi {
        let vj = &v[j * hd..(j + 1) * hd];
        for i in 0..nq {
            let pij = p[i * TILE + j];
            for (a, &x) in qs.acc[i * hd..(i + 1) * hd].iter_mut().zip(vj) {
                *a = pij.mul_add(x, *a);
            }
        }
    }
}

/// The AVX-512 kernel's steps on 256-bit vectors, for CPUs without AVX-512. Left to the
/// compiler, the portable loops ran `exp2` one value at a time and the weighted sum four
/// lanes wide (stories260K prefill on Zen 3: 7,700 tok/s, half in attention).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Queries, C, TILE};

    /// `exp2` of eight values, the scalar function's steps.
    #[inline(always)]
    unsafe fn exp2(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-127.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm256_sub_ps(x, n);
        let mut y = _mm256_set1_ps(C[7]);
        for c in C[..7].iter().rev() {
            y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(*c));
        }
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
    }

    /// All ones in lane `l` where bit `l` of `bits` is set.
    #[inline(always)]
    unsafe fn lane_mask(bits: u8) -> __m256 {
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let b = _mm256_and_si256(_mm256_set1_epi32(bits as i32), sel);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel))
    }

    #[inline(always)]
    unsafe fn reduce(v: __m256, f: impl Fn(__m128, __m128) -> __m128) -> f32 {
        let x = f(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let x = f(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(f(x, _mm_movehdup_ps(x)))
    }

    /// # Safety
    /// AVX2 and FMA, `hd` a multiple of 8, and the lengths `super::tile` checks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const NQ: usize>(
        qs: Queries,
        kt: &[f32],
        v: &[f32],
        hd: usize,
        mask: u64,
        p: &mut [f32],
    ) {
        let (q, kt, v, p) = (qs.q.as_ptr(), kt.as_ptr(), v.as_ptr(), p.as_mut_ptr());
        let acc = qs.acc.as_mut_ptr();
        let lanes = |c: usize| lane_mask((mask >> (8 * c)) as u8);
        for i in 0..NQ {
            // Scores: the tile's 64 positions in eight registers, one query at a time.
            let mut s = [_mm256_setzero_ps(); 8];
            for d in 0..hd {
                let k = kt.add(d * TILE);
                let qd = _mm256_set1_ps(*q.add(i * hd + d));
                for (c, s) in s.iter_mut().enumerate() {
                    *s = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k.add(8 * c)), *s);
                }
            }
            let mut top = _mm256_set1_ps(f32::NEG_INFINITY);
            for (c, &s) in s.iter().enumerate() {
                top = _mm256_max_ps(top, _mm256_blendv_ps(top, s, lanes(c)));
            }
            let m = qs.m[i].max(reduce(top, |a, b| _mm_max_ps(a, b)));
            let alpha = super::exp2(qs.m[i] - m);
            let mv = _mm256_set1_ps(m);
            let mut sum = _mm256_setzero_ps();
            for (c, &s) in s.iter().enumerate() {
                let e = _mm256_and_ps(exp2(_mm256_sub_ps(s, mv)), lanes(c));
                _mm256_storeu_ps(p.add(i * TILE + 8 * c), e);
                sum = _mm256_add_ps(sum, e);
            }
            qs.l[i] = qs.l[i] * alpha + reduce(sum, |a, b| _mm_add_ps(a, b));
            qs.m[i] = m;
            if alpha != 1.0 {
                let a = _mm256_set1_ps(alpha);
                for d in (0..hd).step_by(8) {
                    let x = acc.add(i * hd + d);
                    _mm256_storeu_ps(x, _mm256_mul_ps(_mm256_loadu_ps(x), a));
                }
            }
        }
        let (lo, hi) = (
            mask.trailing_zeros() as usize,
            TILE - mask.leading_zeros() as usize,
        );
        let mut d = 0;
        while d + 16 <= hd {
            pv::<NQ, 2>(acc, p, v, hd, d, lo, hi);
            d += 16;
        }
        if d < hd {
            pv::<NQ, 1>(acc, p, v, hd, d, lo, hi);
        }
    }

    /// `acc[i][d0..d0 + 8 W] += p[i][j] * v[j][d0..]` for `j` in `lo..hi`, in registers.
    #[inline(always)]
    unsafe fn pv<const NQ: usize, const W: usize>(
        acc: *mut f32,
        p: *const f32,
        v: *const f32,
        hd: usize,
        d0: usize,
        lo: usize,
        hi: usize,
    ) {
        let mut a = [[_mm256_setzero_ps(); W]; NQ];
        for (i, a) in a.iter_mut().enumerate() {
            for (w, a) in a.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(acc.add(i * hd + d0 + 8 * w));
            }
        }
        for j in lo..hi {
            let row = v.add(j * hd + d0);
            let mut x = [_mm256_setzero_ps(); W];
            for (w, x) in x.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(row.add(8 * w));
            }
            for (i, a) in a.iter_mut().enumerate() {
                let pij = _mm256_set1_ps(*p.add(i * TILE + j));
                for w in 0..W {
                    a[w] = _mm256_fmadd_ps(pij, x[w], a[w]);
                }
            }
        }
        for (i, a) in a.iter().enumerate() {
            for (w, a) in a.iter().enumerate() {
                _mm256_storeu_ps(acc.add(i * hd + d0 + 8 * w), *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Queries, C, TILE};

    /// `exp2` of sixteen values, the same steps.
    #[inline(always)]
    unsafe fn exp2(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-127.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm512_sub_ps(x, n);
        let mut y = _mm512_set1_ps(C[7]);
        for c in C[..7].iter().rev() {
            y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(*c));
        }
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
    }

    /// # Safety
    /// AVX-512F and FMA, `hd` a multiple of 8, and the lengths `super::tile` checks.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn tile<const NQ: usize>(
        qs: Queries,
        kt: &[f32],
        v: &[f32],
        hd: usize,
        mask: u64,
        p: &mut [f32],
    ) {
        let (q, kt, v, p) = (qs.q.as_ptr(), kt.as_ptr(), v.as_ptr(), p.as_mut_ptr());
        let acc = qs.acc.as_mut_ptr();
        // Scores: the tile's 64 positions in four registers per query.
        let mut s = [[_mm512_setzero_ps(); 4]; NQ];
        for d in 0..hd {
            let k = kt.add(d * TILE);
            let k = [
                _mm512_loadu_ps(k),
                _mm512_loadu_ps(k.add(16)),
                _mm512_loadu_ps(k.add(32)),
                _mm512_loadu_ps(k.add(48)),
            ];
            for (i, s) in s.iter_mut().enumerate() {
                let qd = _mm512_set1_ps(*q.add(i * hd + d));
                for c in 0..4 {
                    s[c] = _mm512_fmadd_ps(qd, k[c], s[c]);
                }
            }
        }
        let lanes = |c: usize| (mask >> (16 * c)) as u16;
        for (i, s) in s.iter().enumerate() {
            let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
            for (c, &s) in s.iter().enumerate() {
                top = _mm512_mask_max_ps(top, lanes(c), top, s);
            }
            let m = qs.m[i].max(_mm512_reduce_max_ps(top));
            let alpha = super::exp2(qs.m[i] - m);
            let mv = _mm512_set1_ps(m);
            let mut sum = _mm512_setzero_ps();
            for (c, &s) in s.iter().enumerate() {
                let e = _mm512_maskz_mov_ps(lanes(c), exp2(_mm512_sub_ps(s, mv)));
                _mm512_storeu_ps(p.add(i * TILE + 16 * c), e);
                sum = _mm512_add_ps(sum, e);
            }
            qs.l[i] = qs.l[i] * alpha + _mm512_reduce_add_ps(sum);
            qs.m[i] = m;
            if alpha != 1.0 {
                let a = _mm512_set1_ps(alpha);
                for d in (0..hd).step_by(16) {
                    let x = acc.add(i * hd + d);
                    let k = lanes_from(hd - d);
                    _mm512_mask_storeu_ps(x, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x), a));
                }
            }
        }
        let (lo, hi) = (
            mask.trailing_zeros() as usize,
            TILE - mask.leading_zeros() as usize,
        );
        let mut d = 0;
        while d + 64 <= hd {
            pv::<NQ, 4>(acc, p, v, hd, d, lo, hi, !0);
            d += 64;
        }
        while d < hd {
            pv::<NQ, 1>(acc, p, v, hd, d, lo, hi, lanes_from(hd - d));
            d += 16;
        }
    }

    /// The lanes of a vector that hold the `left` values still to go (all 16, or the 8 of
    /// a head's last half vector).
    #[inline(always)]
    fn lanes_from(left: usize) -> __mmask16 {
        if left >= 16 {
            !0
        } else {
            (1u16 << left) - 1
        }
    }

    /// `acc[i][d0..d0 + 16 W] += p[i][j] * v[j][d0..]` for `j` in `lo..hi`, in registers;
    /// only the lanes of `k` in each vector (masked loads read nothing past a head's end).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn pv<const NQ: usize, const W: usize>(
        acc: *mut f32,
        p: *const f32,
        v: *const f32,
        hd: usize,
        d0: usize,
        lo: usize,
        hi: usize,
        k: __mmask16,
    ) {
        let mut a = [[_mm512_setzero_ps(); W]; NQ];
        for (i, a) in a.iter_mut().enumerate() {
            for (w, a) in a.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(k, acc.add(i * hd + d0 + 16 * w));
            }
        }
        for j in lo..hi {
            let row = v.add(j * hd + d0);
            let mut x = [_mm512_setzero_ps(); W];
            for (w, x) in x.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(k, row.add(16 * w));
            }
            for (i, a) in a.iter_mut().enumerate() {
                let pij = _mm512_set1_ps(*p.add(i * TILE + j));
                for w in 0..W {
                    a[w] = _mm512_fmadd_ps(pij, x[w], a[w]);
                }
            }
        }
        for (i, a) in a.iter().enumerate() {
            for (w, a) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(acc.add(i * hd + d0 + 16 * w), k, *a);
            }
        }
    }
}
