//! Row-exact batches on AVX-512 VNNI: four weight rows against up to four activation rows,
//! where each activation row's four sums take the instructions, operands and order of the
//! one-row kernels (`avx512vnni_*_rows4`), so that they come out bit for bit as a decode
//! step's. Only the weight side (nibble unpacking, scale conversion) is done once per
//! block for all activation rows. Speculative verification runs its batch this way.
//!
//! Each float the one-row kernels round is rebuilt from the same operands: where they
//! multiply a weight scale by an activation scale taken from one joint f16 conversion,
//! here the two sides are converted apart (f16 to f32 is exact) and multiplied in the
//! same operand order, lane for lane.

use std::arch::x86_64::*;

use super::{
    avx2_blocks, avx2_q4_1_body, bits, block_q4_0, block_q8_0, blocks, dot_ss_512, dot_us_512,
    hsum_ps, load_2x32, nibbles_512, spread, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1,
};

/// Four f16 scales as two vectors: lanes 0-7 scale 0 and lanes 8-15 scale 1, then the
/// same for scales 2 and 3, as `spread` lays out a block pair's scale products.
#[inline(always)]
unsafe fn scales_spread(d: [[u8; 2]; 4]) -> [__m512; 2] {
    let h = bits(d[0]) | bits(d[1]) << 16 | bits(d[2]) << 32 | bits(d[3]) << 48;
    let v = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(h as i64)));
    [spread(v, 0, 1), spread(v, 2, 3)]
}

/// `out[t][r]`, as `avx512_rows4` computes row `r` against activation row `t`: `decode`
/// unpacks a weight block pair once, `prep` loads an activation pair (with any per-pair
/// term), and `pair` gives the pair's i32 sums from both.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_n<W, A, D: Copy, const R: usize, const T: usize>(
    w: [&[W]; R],
    a: [&[A]; T],
    wd: impl Fn(&W) -> [u8; 2],
    ad: impl Fn(&A) -> [u8; 2],
    decode: impl Fn(&W, &W) -> D,
    prep: impl Fn(&A, &A) -> (__m512i, __m512i),
    pair: impl Fn(D, __m512i, __m512i) -> __m512i,
    tail: impl Fn(&[W], &[A]) -> f32,
) -> [[f32; R]; T] {
    let n = a[0].len() / 4 * 4;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut i = 0;
    while i < n {
        let mut y = [[_mm512_setzero_si512(); 2]; T];
        let mut c = [[_mm512_setzero_si512(); 2]; T];
        let mut da = [[_mm512_setzero_ps(); 2]; T];
        for t in 0..T {
            let ac = &a[t][i..i + 4];
            let (y0, c0) = prep(&ac[0], &ac[1]);
            let (y1, c1) = prep(&ac[2], &ac[3]);
            y[t] = [y0, y1];
            c[t] = [c0, c1];
            da[t] = scales_spread([ad(&ac[0]), ad(&ac[1]), ad(&ac[2]), ad(&ac[3])]);
        }
        for r in 0..R {
            let wc = &w[r][i..i + 4];
            let q0 = decode(&wc[0], &wc[1]);
            let q1 = decode(&wc[2], &wc[3]);
            let dw = scales_spread([wd(&wc[0]), wd(&wc[1]), wd(&wc[2]), wd(&wc[3])]);
            for t in 0..T {
                let s0 = _mm512_cvtepi32_ps(pair(q0, y[t][0], c[t][0]));
                let s1 = _mm512_cvtepi32_ps(pair(q1, y[t][1], c[t][1]));
                let p0 = _mm512_mul_ps(dw[0], da[t][0]);
                let p1 = _mm512_mul_ps(dw[1], da[t][1]);
                acc[r][t] = _mm512_fmadd_ps(p0, s0, acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(p1, s1, acc[r][t]);
            }
        }
        i += 4;
    }
    let mut out = [[0f32; R]; T];
    for t in 0..T {
        for r in 0..R {
            out[t][r] = _mm512_reduce_add_ps(acc[r][t]) + tail(&w[r][n..], &a[t][n..]);
        }
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_rows_n<const T: usize>(w: [&[BlockQ4_0]; 4], a: [&[BlockQ8_0]; T]) -> [[f32; 4]; T] {
    rows_n(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |w0, w1| nibbles_512(&w0.qs, &w1.qs),
        |a0, a1| {
            let y = load_2x32(&a0.qs, &a1.qs);
            let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), y);
            (y, c)
        },
        |q, y, c| _mm512_sub_epi32(dot_us_512::<true>(q, y), c),
        |w, a| avx2_blocks!(w, a, block_q4_0::<false>),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_rows_n<const T: usize>(w: [&[BlockQ8_0]; 4], a: [&[BlockQ8_0]; T]) -> [[f32; 4]; T] {
    rows_n(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |w0, w1| load_2x32(&w0.qs, &w1.qs),
        |a0, a1| (load_2x32(&a0.qs, &a1.qs), _mm512_setzero_si512()),
        |x, y, _| dot_ss_512::<true>(x, y),
        |w, a| avx2_blocks!(w, a, block_q8_0::<false>),
    )
}

/// `[d, m, d, m]` per block of a Q4_1 (or `[d, s, d, s]` per Q8_1) block quad, converted:
/// their products give `avx512vnni_q4_1_rows4`'s `[d_w d_a, m_w s_a, ..]` lanes.
#[inline(always)]
unsafe fn q4_1_headers(h: [[[u8; 2]; 2]; 4]) -> __m512 {
    let q = |k: usize| {
        let x = bits(h[k][0]) | bits(h[k][1]) << 16;
        (x | x << 32) as i64
    };
    _mm512_cvtph_ps(_mm256_set_epi64x(q(3), q(2), q(1), q(0)))
}

/// As `avx512vnni_q4_1_rows4` per activation row. That kernel spreads each scale product
/// over a block's lanes; spreading both factors before the product gives the same lanes,
/// and takes the shuffles out of the loop over (weight row, activation row). All four
/// weight rows at once even for four activation rows: the accumulators spill, but less
/// time goes to that than to a second pass over the activations (measured).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_1_rows_n<const T: usize>(w: [&[BlockQ4_1]; 4], a: [&[BlockQ8_1]; T]) -> [[f32; 4]; T] {
    const R: usize = 4;
    let n = a[0].len() / 4 * 4;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut ms = [[_mm512_setzero_ps(); T]; R];
    let mut i = 0;
    while i < n {
        let mut y = [[_mm512_setzero_si512(); 2]; T];
        let mut ah = [[_mm512_setzero_ps(); 3]; T];
        for t in 0..T {
            let ac = &a[t][i..i + 4];
            y[t] = [
                load_2x32(&ac[0].qs, &ac[1].qs),
                load_2x32(&ac[2].qs, &ac[3].qs),
            ];
            let h = q4_1_headers([0, 1, 2, 3].map(|k| [ac[k].d, ac[k].s]));
            ah[t] = [h, spread(h, 0, 4), spread(h, 8, 12)];
        }
        for r in 0..R {
            let wc = &w[r][i..i + 4];
            let q0 = nibbles_512(&wc[0].qs, &wc[1].qs);
            let q1 = nibbles_512(&wc[2].qs, &wc[3].qs);
            let h = q4_1_headers([0, 1, 2, 3].map(|k| [wc[k].d, wc[k].m]));
            let (h0, h1) = (spread(h, 0, 4), spread(h, 8, 12));
            for t in 0..T {
                let p = _mm512_mul_ps(h, ah[t][0]);
                ms[r][t] = _mm512_mask_add_ps(ms[r][t], 0x2222, ms[r][t], p);
                let f0 = _mm512_cvtepi32_ps(dot_us_512::<true>(q0, y[t][0]));
                let f1 = _mm512_cvtepi32_ps(dot_us_512::<true>(q1, y[t][1]));
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(h0, ah[t][1]), f0, acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(h1, ah[t][2]), f1, acc[r][t]);
            }
        }
        i += 4;
    }
    let mut out = [[0f32; R]; T];
    for t in 0..T {
        for r in 0..R {
            out[t][r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][t], ms[r][t]))
                + avx2_q4_1_body::<false>(&w[r][n..], &a[t][n..]);
        }
    }
    out
}

/// A `VecDot4N` from a kernel generic over its number of activation rows `T`: activation
/// rows in groups of four, then the rest.
macro_rules! rows_n_entry {
    ($name:ident, $kernel:ident, $wt:ty, $at:ty) => {
        pub(super) fn $name(w: &[&[u8]; 4], a: &[&[u8]], out: &mut [[f32; 4]]) {
            assert_eq!(a.len(), out.len());
            let w = w.map(blocks::<$wt>);
            for (a, out) in a.chunks(4).zip(out.chunks_mut(4)) {
                let at = |t: usize| blocks::<$at>(a[t]);
                // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
                unsafe {
                    match a.len() {
                        1 => out.copy_from_slice(&$kernel::<1>(w, [at(0)])),
                        2 => out.copy_from_slice(&$kernel::<2>(w, [at(0), at(1)])),
                        3 => out.copy_from_slice(&$kernel::<3>(w, [at(0), at(1), at(2)])),
                        _ => out.copy_from_slice(&$kernel::<4>(w, [at(0), at(1), at(2), at(3)])),
                    }
                }
            }
        }
    };
}

rows_n_entry!(q4_0_rows_n_avx512vnni, q4_0_rows_n, BlockQ4_0, BlockQ8_0);
rows_n_entry!(q8_0_rows_n_avx512vnni, q8_0_rows_n, BlockQ8_0, BlockQ8_0);
rows_n_entry!(q4_1_rows_n_avx512vnni, q4_1_rows_n, BlockQ4_1, BlockQ8_1);
