//! Decode on 256-bit vectors over packed weights (`quant::pack`): four weight rows against
//! one activation row, one block per step. Each activation block is loaded once for the
//! four rows, with the term its weights need (Q4_0's `8 * sum(y)`), and the four rows' f16
//! scales take one conversion, so a row costs little more than its own quants' unpacking
//! and multiply-adds; the packing makes the four rows one sequential stream.
//!
//! On Zen 3 (2 threads, tinyllama Q4_0 tg64) one-row dots over the file's layout gave 14.1
//! tok/s and this kernel over packed rows 22.3; the same kernel over four unpacked rows
//! gained nothing over one-row dots, as four short streams defeat the prefetcher.
//!
//! Each result is the one-row kernel's up to float summation order (one accumulator per
//! row here, two there). Products with packed weights take this kernel for every
//! activation row of row-exact batches too, so verification matches decode bit for bit.

use std::arch::x86_64::*;

use super::{
    bits, dot_ss_256, dot_us_256, hsum_ps, nibbles_256, Level, Packed, Rows4, VecDot4Packed,
};
use crate::quant::{blocks, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};

/// Four f16 values in one word, for one conversion.
#[inline(always)]
fn pack4(h: [[u8; 2]; 4]) -> i64 {
    (bits(h[0]) | bits(h[1]) << 16 | bits(h[2]) << 32 | bits(h[3]) << 48) as i64
}

/// `prep` loads an activation block once, with any term the weights need; `block` gives
/// one weight block's eight i32 sums against it; `wd` and `ad` are the f16 scales.
#[inline(always)]
unsafe fn rows4<W, A, P: Copy>(
    w: impl Rows4<W>,
    a: &[A],
    wd: impl Fn(&W) -> [u8; 2],
    ad: impl Fn(&A) -> [u8; 2],
    prep: impl Fn(&A) -> P,
    block: impl Fn(&W, P) -> __m256i,
) -> [f32; 4] {
    w.check(a.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, ab) in a.iter().enumerate() {
        let p = prep(ab);
        // SAFETY: `check` accepted `a.len()` blocks per row.
        let wb = [0, 1, 2, 3].map(|r| unsafe { w.get(r, i) });
        // Each product d_w * d_a rounds once, as in the one-row kernels.
        let dw = _mm_cvtph_ps(_mm_cvtsi64_si128(pack4(wb.map(&wd))));
        let da = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(ad(ab))));
        let d = _mm256_castps128_ps256(_mm_mul_ps(dw, da));
        for r in 0..4 {
            let s = _mm256_cvtepi32_ps(block(wb[r], p));
            let dr = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(r as i32));
            acc[r] = _mm256_fmadd_ps(dr, s, acc[r]);
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = hsum_ps(acc[r]);
    }
    out
}

/// Q4_0's nibbles stay unsigned (0..=15) against the activations; the -8 offset comes off
/// as `8 * sum(y)`, computed once per activation block rather than once per row as the
/// one-row kernel's sign trick is.
#[inline(always)]
unsafe fn q4_0_body<const VNNI: bool>(w: impl Rows4<BlockQ4_0>, a: &[BlockQ8_0]) -> [f32; 4] {
    rows4(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |ab| {
            let y = _mm256_loadu_si256(ab.qs.as_ptr().cast());
            let eight = _mm256_set1_epi8(8);
            if VNNI {
                (y, _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), eight, y))
            } else {
                (y, _mm256_maddubs_epi16(eight, y))
            }
        },
        |wb, (y, off)| {
            let q = nibbles_256(&wb.qs);
            if VNNI {
                let s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, y);
                _mm256_sub_epi32(s, off)
            } else {
                // |q * y pair sums| <= 2 * 15 * 127, and so is the difference.
                let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), off);
                _mm256_madd_epi16(p, _mm256_set1_epi16(1))
            }
        },
    )
}

#[inline(always)]
unsafe fn q8_0_body<const VNNI: bool>(w: impl Rows4<BlockQ8_0>, a: &[BlockQ8_0]) -> [f32; 4] {
    rows4(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |ab| _mm256_loadu_si256(ab.qs.as_ptr().cast()),
        |wb, y| dot_ss_256::<VNNI>(_mm256_loadu_si256(wb.qs.as_ptr().cast()), y),
    )
}

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

rows4_entries!(q4_0, q4_0_body, BlockQ4_0, BlockQ8_0);
rows4_entries!(q8_0, q8_0_body, BlockQ8_0, BlockQ8_0);
rows4_entries!(q4_1, q4_1_body, BlockQ4_1, BlockQ8_1);

/// The packed decode kernel of `t` at `level`, if these cover it.
pub(super) fn for_type(level: Level, t: crate::quant::GgmlType) -> Option<VecDot4Packed> {
    use crate::quant::GgmlType as T;
    match t {
        T::Q4_0 => q4_0(level),
        T::Q8_0 => q8_0(level),
        T::Q4_1 => q4_1(level),
        _ => None,
    }
}
