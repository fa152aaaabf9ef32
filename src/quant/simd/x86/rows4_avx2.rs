//! Kernels over packed weights (`quant::pack`) on 256-bit vectors: a group of four weight
//! rows against one activation row (decode) or four (prefill's tile).
//!
//! Q4_0 and Q8_0 (`lanes_body`) hold the four rows side by side in each vector's lanes, so
//! one conversion and one multiply-add per block and activation row serve all four rows.
//! Q4_1 is interleaved block by block: each activation block is loaded once for the four
//! rows, and their f16 scales and minimums take one conversion.
//!
//! On Zen 3 (2 threads, tinyllama Q4_0 tg64) one-row dots over the file's layout gave 14.1
//! tok/s and four-row dots over packed rows 22.3; the same four-row dots over unpacked rows
//! gained nothing over one-row dots, as four short streams defeat the prefetcher.
//!
//! Each result is the one-row kernel's up to float summation order. Products with packed
//! weights take the decode kernel for every activation row of row-exact batches too, so
//! verification matches decode bit for bit.

use std::arch::x86_64::*;

use super::{
    bits, dot_us_256, hsum_ps, lane_pair_f16, lane_pairs, nibbles_256, transpose4, Level, Packed,
    Rows4, VecDot4Packed,
};
use crate::quant::pack::{BlockQ4_0x4, BlockQ8_0x4};
use crate::quant::{blocks, BlockQ4_1, BlockQ8_0, BlockQ8_1, Gemm4x4Packed};

/// Four f16 values in one word, for one conversion.
#[inline(always)]
fn pack4(h: [[u8; 2]; 4]) -> i64 {
    (bits(h[0]) | bits(h[1]) << 16 | bits(h[2]) << 32 | bits(h[3]) << 48) as i64
}

/// A packed group's block against `T` activation rows, `out[t][r]`, for the layouts
/// whose 32-byte runs hold eight elements of each of the four rows side by side
/// (`BlockQ4_0x4`, `BlockQ8_0x4`). `unpack` gives a block's four runs as signed bytes and
/// the four rows' f16 scales; run `k` meets activation bytes `offsets[k]..+8`, broadcast to
/// the four rows' lanes. The vector's lane pairs are then the four rows, so a block costs
/// one conversion and one multiply-add per activation row for all four weight rows. With
/// `NARROW` (weights in -8..=7) the rounds add up in i16 before one widening: at most
/// 4 * 2 * 8 * 127.
#[inline(always)]
unsafe fn lanes_body<W, const VNNI: bool, const NARROW: bool, const T: usize>(
    w: &[W],
    a: [&[BlockQ8_0]; T],
    offsets: [usize; 4],
    unpack: impl Fn(&W) -> ([__m256i; 4], &[[u8; 2]; 4]),
) -> [[f32; 4]; T] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "rows of unequal length"
    );
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, wb) in w.iter().enumerate() {
        let (x, d) = unpack(wb);
        let dw = lane_pair_f16(d);
        let ax = x.map(|x| _mm256_abs_epi8(x));
        for t in 0..T {
            let ab = &a[t][i];
            let y = |k: usize| {
                let p = ab.qs.as_ptr().add(offsets[k]).cast::<i64>();
                _mm256_sign_epi8(_mm256_set1_epi64x(std::ptr::read_unaligned(p)), x[k])
            };
            let s = if VNNI {
                let mut s = _mm256_setzero_si256();
                for (k, ax) in ax.iter().enumerate() {
                    s = _mm256_dpbusd_avx_epi32(s, *ax, y(k));
                }
                s
            } else if NARROW {
                let mut p = _mm256_maddubs_epi16(ax[0], y(0));
                for (k, ax) in ax.iter().enumerate().skip(1) {
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(*ax, y(k)));
                }
                _mm256_madd_epi16(p, _mm256_set1_epi16(1))
            } else {
                let mut s = _mm256_setzero_si256();
                for (k, ax) in ax.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(*ax, y(k));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                }
                s
            };
            let da = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(ab.d)));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    lane_pairs(acc)
}

/// Q4_0's runs: low nibbles are elements 0..8 and 8..16, high ones 16..24 and 24..32.
#[inline(always)]
unsafe fn q4_0x4_body<const VNNI: bool, const T: usize>(
    w: &[BlockQ4_0x4],
    a: [&[BlockQ8_0]; T],
) -> [[f32; 4]; T] {
    lanes_body::<_, VNNI, true, T>(w, a, [0, 16, 8, 24], |wb| {
        let lo4 = _mm256_set1_epi8(0x0f);
        let qa = _mm256_loadu_si256(wb.qs.as_ptr().cast());
        let qb = _mm256_loadu_si256(wb.qs.as_ptr().add(32).cast());
        let x = [
            _mm256_and_si256(qa, lo4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(qa), lo4),
            _mm256_and_si256(qb, lo4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(qb), lo4),
        ]
        .map(|q| _mm256_sub_epi8(q, _mm256_set1_epi8(8)));
        (x, &wb.d)
    })
}

#[inline(always)]
unsafe fn q8_0x4_body<const VNNI: bool, const T: usize>(
    w: &[BlockQ8_0x4],
    a: [&[BlockQ8_0]; T],
) -> [[f32; 4]; T] {
    lanes_body::<_, VNNI, false, T>(w, a, [0, 8, 16, 24], |wb| {
        let x = [0, 1, 2, 3].map(|k| _mm256_loadu_si256(wb.qs.as_ptr().add(32 * k).cast()));
        (x, &wb.d)
    })
}

macro_rules! lanes_entries {
    ($pick:ident, $body:ident, $wt:ty) => {
        /// Packed kernels at `level`: decode, and prefill's tile.
        fn $pick(level: Level) -> Option<(VecDot4Packed, Gemm4x4Packed)> {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn plain<const T: usize>(w: &[$wt], a: [&[BlockQ8_0]; T]) -> [[f32; 4]; T] {
                $body::<false, T>(w, a)
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn vnni<const T: usize>(w: &[$wt], a: [&[BlockQ8_0]; T]) -> [[f32; 4]; T] {
                $body::<true, T>(w, a)
            }
            // SAFETY (all four): installed only for the level named in `match level`
            // below, after `supported` detected its features.
            fn plain_dec(w: &[u8], a: &[u8]) -> [f32; 4] {
                unsafe { plain::<1>(blocks(w), [blocks(a)])[0] }
            }
            fn vnni_dec(w: &[u8], a: &[u8]) -> [f32; 4] {
                unsafe { vnni::<1>(blocks(w), [blocks(a)])[0] }
            }
            fn plain_tile(w: &[u8], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
                transpose4(unsafe { plain::<4>(blocks(w), a.map(blocks::<BlockQ8_0>)) })
            }
            fn vnni_tile(w: &[u8], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
                transpose4(unsafe { vnni::<4>(blocks(w), a.map(blocks::<BlockQ8_0>)) })
            }
            match level {
                Level::Avx2 => Some((plain_dec, plain_tile)),
                Level::AvxVnni => Some((vnni_dec, vnni_tile)),
                _ => None,
            }
        }
    };
}

lanes_entries!(q4_0x4, q4_0x4_body, BlockQ4_0x4);
lanes_entries!(q8_0x4, q8_0x4_body, BlockQ8_0x4);

/// Q4_1 adds `m_w * s_a` per block: the four rows' minimums take one conversion with
/// their scales, and their products gather in one vector, a lane per row.
#[inline(always)]
unsafe fn q4_1_body<const VNNI: bool>(w: impl Rows4<BlockQ4_1>, a: &[BlockQ8_1]) -> [f32; 4] {
    w.check(a.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut ms = _mm_setzero_ps();
    for (i, ab) in a.iter().enumerate() {
        let y = _mm256_loadu_si256(ab.qs.as_ptr().cast());
        // SAFETY: `check` accepted `a.len()` blocks per row.
        let wb = [0, 1, 2, 3].map(|r| unsafe { w.get(r, i) });
        // [d_w x4 | m_w x4] times [d_a x4 | s_a x4].
        let wh = _mm256_cvtph_ps(_mm_set_epi64x(
            pack4(wb.map(|b| b.m)),
            pack4(wb.map(|b| b.d)),
        ));
        let half = |h: [u8; 2]| _mm_set1_epi16(i16::from_le_bytes(h));
        let av = _mm256_cvtph_ps(_mm_unpacklo_epi64(half(ab.d), half(ab.s)));
        let p = _mm256_mul_ps(wh, av);
        ms = _mm_add_ps(ms, _mm256_extractf128_ps::<1>(p));
        for r in 0..4 {
            let s = _mm256_cvtepi32_ps(dot_us_256::<VNNI>(nibbles_256(&wb[r].qs), y));
            let dr = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(r as i32));
            acc[r] = _mm256_fmadd_ps(dr, s, acc[r]);
        }
    }
    let mut m = [0f32; 4];
    _mm_storeu_ps(m.as_mut_ptr(), ms);
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = hsum_ps(acc[r]) + m[r];
    }
    out
}

macro_rules! rows4_entries {
    ($pick:ident, $body:ident, $wt:ty, $at:ty) => {
        fn $pick(level: Level) -> Option<VecDot4Packed> {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn plain(w: impl Rows4<$wt>, a: &[$at]) -> [f32; 4] {
                $body::<false>(w, a)
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn vnni(w: impl Rows4<$wt>, a: &[$at]) -> [f32; 4] {
                $body::<true>(w, a)
            }
            // SAFETY (both): installed only for the level named in `match level` below,
            // after `supported` detected its features.
            fn plain_packed(w: &[u8], a: &[u8]) -> [f32; 4] {
                unsafe { plain(Packed(blocks::<$wt>(w)), blocks(a)) }
            }
            fn vnni_packed(w: &[u8], a: &[u8]) -> [f32; 4] {
                unsafe { vnni(Packed(blocks::<$wt>(w)), blocks(a)) }
            }
            match level {
                Level::Avx2 => Some(plain_packed),
                Level::AvxVnni => Some(vnni_packed),
                _ => None,
            }
        }
    };
}

rows4_entries!(q4_1, q4_1_body, BlockQ4_1, BlockQ8_1);

/// The packed decode kernel of `t` at `level`, if these cover it, and the packed tile
/// where this file has its own (else the caller's block-interleaved tile applies).
pub(super) fn for_type(
    level: Level,
    t: crate::quant::GgmlType,
) -> Option<(VecDot4Packed, Option<Gemm4x4Packed>)> {
    use crate::quant::GgmlType as T;
    let no_tile = |f: Option<VecDot4Packed>| f.map(|f| (f, None));
    match t {
        T::Q4_0 => q4_0x4(level).map(|(d, g)| (d, Some(g))),
        T::Q8_0 => q8_0x4(level).map(|(d, g)| (d, Some(g))),
        T::Q4_1 => no_tile(q4_1(level)),
        _ => None,
    }
}
