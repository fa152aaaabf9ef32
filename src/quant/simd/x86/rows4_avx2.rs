//! Kernels over packed weights (`quant::pack`) on 256-bit vectors: a group of four weight
//! rows against one activation row (decode) or four (prefill's tile).
//!
//! Q4_0, Q4_1 and Q8_0 (`lanes_body`) hold the four rows side by side in each vector's
//! lanes, so one conversion and one multiply-add per block and activation row serve all
//! four rows.
//!
//! On Zen 3 (2 threads, tinyllama Q4_0 tg64) one-row dots over the file's layout gave 14.1
//! tok/s and four-row dots over packed rows 22.3; the same four-row dots over unpacked rows
//! gained nothing over one-row dots, as four short streams defeat the prefetcher.
//!
//! Each result is the one-row kernel's up to float summation order. Products with packed
//! weights take the decode kernel for every activation row of row-exact batches too, so
//! verification matches decode bit for bit.

use std::arch::x86_64::*;

use super::{lane_pair_f16, lane_pairs, transpose4, Level, VecDot4Packed};
use crate::quant::pack::{BlockQ4_0x4, BlockQ4_1x4, BlockQ8_0x4};
use crate::quant::{blocks, BlockQ8_0, BlockQ8_1, Gemm4x4Packed};

/// An activation block as the lanes kernels read it: Q8_0's, or Q8_1's, whose `d * sum`
/// the minimum of Q4_1 weights meets.
trait Act {
    fn d(&self) -> [u8; 2];
    fn qs(&self) -> &[i8; 32];
    /// `d * sum(qs)`; read only by kernels for weights with minimums.
    fn s(&self) -> [u8; 2];
}

impl Act for BlockQ8_0 {
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    fn s(&self) -> [u8; 2] {
        [0; 2]
    }
}

impl Act for BlockQ8_1 {
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    fn s(&self) -> [u8; 2] {
        self.s
    }
}

/// What `lanes_body` needs of a packed block: its four runs of bytes, signed (Q4_0 less
/// its offset of 8, Q8_0) or unsigned (Q4_1's nibbles), the four rows' f16 scales, and
/// their f16 minimums where the type has them.
struct Lanes<'a> {
    x: [__m256i; 4],
    d: &'a [[u8; 2]; 4],
    m: Option<&'a [[u8; 2]; 4]>,
}

/// A packed group's block against `T` activation rows, `out[t][r]`, for the layouts
/// whose 32-byte runs hold eight elements of each of the four rows side by side
/// (`BlockQ4_0x4`, `BlockQ4_1x4`, `BlockQ8_0x4`). Run `k` meets activation bytes
/// `offsets[k]..+8`, broadcast to the four rows' lanes. The vector's lane pairs are then
/// the four rows, so a block costs one conversion and one multiply-add per activation row
/// for all four weight rows. Signed weights go through the sign trick (`|w|` times `y`
/// with `w`'s sign); unsigned ones multiply as they are. With `NARROW` (weights in -8..=7
/// or 0..=15) the rounds add up in i16 before one widening: at most 4 * 2 * 15 * 127.
/// Minimums add `m_w * s_a` per block, a lane per row.
#[inline(always)]
unsafe fn lanes_body<W, A: Act, const VNNI: bool, const NARROW: bool, const T: usize>(
    w: &[W],
    a: [&[A]; T],
    offsets: [usize; 4],
    signed: bool,
    unpack: impl Fn(&W) -> Lanes<'_>,
) -> [[f32; 4]; T] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "rows of unequal length"
    );
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins = [_mm_setzero_ps(); T];
    let mut has_min = false;
    for (i, wb) in w.iter().enumerate() {
        let Lanes { x, d, m } = unpack(wb);
        let dw = lane_pair_f16(d);
        let ax = if signed {
            x.map(|x| _mm256_abs_epi8(x))
        } else {
            x
        };
        let mw = m.map(|m| _mm_cvtph_ps(_mm_loadl_epi64(m.as_ptr().cast())));
        for t in 0..T {
            let ab = &a[t][i];
            let y = |k: usize| {
                let p = ab.qs().as_ptr().add(offsets[k]).cast::<i64>();
                let y = _mm256_set1_epi64x(std::ptr::read_unaligned(p));
                if signed {
                    _mm256_sign_epi8(y, x[k])
                } else {
                    y
                }
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
            let da = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(ab.d())));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(s), acc[t]);
            if let Some(mw) = mw {
                let sa = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(ab.s())));
                mins[t] = _mm_fmadd_ps(mw, sa, mins[t]);
                has_min = true;
            }
        }
    }
    let mut out = lane_pairs(acc);
    if has_min {
        for (o, m) in out.iter_mut().zip(mins) {
            let mut v = [0f32; 4];
            _mm_storeu_ps(v.as_mut_ptr(), m);
            for (o, v) in o.iter_mut().zip(v) {
                *o += v;
            }
        }
    }
    out
}

/// Q4_0's runs: low nibbles are elements 0..8 and 8..16, high ones 16..24 and 24..32.
#[inline(always)]
unsafe fn q4_0x4_body<const VNNI: bool, const T: usize>(
    w: &[BlockQ4_0x4],
    a: [&[BlockQ8_0]; T],
) -> [[f32; 4]; T] {
    lanes_body::<_, _, VNNI, true, T>(w, a, [0, 16, 8, 24], true, |wb| {
        let x = nibble_runs(&wb.qs).map(|q| _mm256_sub_epi8(q, _mm256_set1_epi8(8)));
        Lanes {
            x,
            d: &wb.d,
            m: None,
        }
    })
}

/// Q4_1's runs as Q4_0's, unsigned, with the minimums.
#[inline(always)]
unsafe fn q4_1x4_body<const VNNI: bool, const T: usize>(
    w: &[BlockQ4_1x4],
    a: [&[BlockQ8_1]; T],
) -> [[f32; 4]; T] {
    lanes_body::<_, _, VNNI, true, T>(w, a, [0, 16, 8, 24], false, |wb| Lanes {
        x: nibble_runs(&wb.qs),
        d: &wb.d,
        m: Some(&wb.m),
    })
}

/// The four runs of nibbles in a packed Q4 block's 64 bytes, as bytes 0..=15.
#[inline(always)]
unsafe fn nibble_runs(qs: &[u8; 64]) -> [__m256i; 4] {
    let lo4 = _mm256_set1_epi8(0x0f);
    let qa = _mm256_loadu_si256(qs.as_ptr().cast());
    let qb = _mm256_loadu_si256(qs.as_ptr().add(32).cast());
    [
        _mm256_and_si256(qa, lo4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(qa), lo4),
        _mm256_and_si256(qb, lo4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(qb), lo4),
    ]
}

#[inline(always)]
unsafe fn q8_0x4_body<const VNNI: bool, const T: usize>(
    w: &[BlockQ8_0x4],
    a: [&[BlockQ8_0]; T],
) -> [[f32; 4]; T] {
    lanes_body::<_, _, VNNI, false, T>(w, a, [0, 8, 16, 24], true, |wb| {
        let x = [0, 1, 2, 3].map(|k| _mm256_loadu_si256(wb.qs.as_ptr().add(32 * k).cast()));
        Lanes {
            x,
            d: &wb.d,
            m: None,
        }
    })
}

macro_rules! lanes_entries {
    ($pick:ident, $body:ident, $wt:ty, $at:ty) => {
        /// Packed kernels at `level`: decode, and prefill's tile.
        fn $pick(level: Level) -> Option<(VecDot4Packed, Gemm4x4Packed)> {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn plain<const T: usize>(w: &[$wt], a: [&[$at]; T]) -> [[f32; 4]; T] {
                $body::<false, T>(w, a)
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn vnni<const T: usize>(w: &[$wt], a: [&[$at]; T]) -> [[f32; 4]; T] {
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
                transpose4(unsafe { plain::<4>(blocks(w), a.map(blocks::<$at>)) })
            }
            fn vnni_tile(w: &[u8], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
                transpose4(unsafe { vnni::<4>(blocks(w), a.map(blocks::<$at>)) })
            }
            match level {
                Level::Avx2 => Some((plain_dec, plain_tile)),
                Level::AvxVnni => Some((vnni_dec, vnni_tile)),
                _ => None,
            }
        }
    };
}

lanes_entries!(q4_0x4, q4_0x4_body, BlockQ4_0x4, BlockQ8_0);
lanes_entries!(q4_1x4, q4_1x4_body, BlockQ4_1x4, BlockQ8_1);
lanes_entries!(q8_0x4, q8_0x4_body, BlockQ8_0x4, BlockQ8_0);

/// The packed decode kernel and tile of `t` at `level`, if these cover it.
pub(super) fn for_type(
    level: Level,
    t: crate::quant::GgmlType,
) -> Option<(VecDot4Packed, Gemm4x4Packed)> {
    use crate::quant::GgmlType as T;
    match t {
        T::Q4_0 => q4_0x4(level),
        T::Q4_1 => q4_1x4(level),
        T::Q8_0 => q8_0x4(level),
        _ => None,
    }
}
