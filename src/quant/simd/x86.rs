//! x86-64 kernels: AVX2 (+ AVX-VNNI) on 256-bit vectors, one block per step; AVX-512
//! (+ VNNI, + BF16) on 512-bit vectors, two blocks per vector.
//!
//! Each kernel body is an `#[inline(always)]` function, generic over whether `vpdpbusd`
//! is available, and each `#[target_feature]` wrapper instantiates it for one level: the
//! intrinsics only inline where the wrapper enables their features.

use std::arch::x86_64::*;

use super::super::legacy::to_h;
use super::super::{
    blocks, blocks_mut, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Gemm4x4, GgmlType, Kernels,
    VecDot4Packed, QK,
};
use super::Level;

pub(super) fn supported(level: Level) -> bool {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    match level {
        Level::Scalar => true,
        Level::Avx2 => avx2,
        Level::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
        Level::Avx512 => avx512,
        Level::Avx512Vnni => avx512 && is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

/// Block `i` of each of four weight rows, with the length checked once up front.
trait Rows4<W> {
    fn check(&self, n: usize);
    /// # Safety
    /// `i` is below the `n` that `check` accepted.
    unsafe fn get(&self, r: usize, i: usize) -> &W;
}

impl<W> Rows4<W> for [&[W]; 4] {
    fn check(&self, n: usize) {
        assert!(self.iter().all(|r| r.len() == n), "rows of unequal length");
    }
    #[inline(always)]
    unsafe fn get(&self, r: usize, i: usize) -> &W {
        self[r].get_unchecked(i)
    }
}

/// Four rows' f16 values in lanes `2r` and `2r + 1` for row `r`: the scales of a packed
/// group, laid out as the packed kernels' sums are.
#[inline(always)]
unsafe fn lane_pair_f16(h: &[[u8; 2]; 4]) -> __m256 {
    let v = _mm_cvtph_ps(_mm_loadl_epi64(h.as_ptr().cast()));
    _mm256_permutevar8x32_ps(
        _mm256_castps128_ps256(v),
        _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0),
    )
}

/// `m[t][r]` as `[r][t]`: the packed kernels' `out[t][r]` in a tile's order.
fn transpose4(m: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    std::array::from_fn(|r| std::array::from_fn(|t| m[t][r]))
}

/// `out[t][r]`: the sum of lanes `2r` and `2r + 1` of `acc[t]`, where the packed kernels
/// leave four rows' sums a lane pair each.
#[inline(always)]
unsafe fn lane_pairs<const T: usize>(acc: [__m256; T]) -> [[f32; 4]; T] {
    let mut out = [[0f32; 4]; T];
    for (o, acc) in out.iter_mut().zip(acc) {
        let mut v = [0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), acc);
        for (r, o) in o.iter_mut().enumerate() {
            *o = v[2 * r] + v[2 * r + 1];
        }
    }
    out
}

type Dot = fn(&[u8], &[u8]) -> f32;
type Quantize = fn(&[f32], &mut [u8]);

/// Safe entry points, each wrapping one `#[target_feature]` function. They are only
/// reachable through `overlay`, which callers reach only for a supported level.
macro_rules! entry {
    ($name:ident: ($($arg:ident: $ty:ty),*) -> $ret:ty = $inner:expr) => {
        fn $name($($arg: $ty),*) -> $ret {
            // SAFETY: `overlay` installs this function only for a level whose features
            // `supported` detected on this CPU.
            unsafe { $inner }
        }
    };
}

mod kquants;
mod rows4_avx2;
mod rows_n;

entry!(q4_0_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q4_0(blocks(w), blocks(a)));
entry!(q4_0_avxvnni: (w: &[u8], a: &[u8]) -> f32 = avxvnni_q4_0(blocks(w), blocks(a)));
entry!(q4_0_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q4_0(blocks(w), blocks(a)));
entry!(q4_0_avx512vnni: (w: &[u8], a: &[u8]) -> f32 = avx512vnni_q4_0(blocks(w), blocks(a)));
entry!(q4_1_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q4_1(blocks(w), blocks(a)));
entry!(q4_1_avxvnni: (w: &[u8], a: &[u8]) -> f32 = avxvnni_q4_1(blocks(w), blocks(a)));
entry!(q4_1_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q4_1(blocks(w), blocks(a)));
entry!(q4_1_avx512vnni: (w: &[u8], a: &[u8]) -> f32 = avx512vnni_q4_1(blocks(w), blocks(a)));
entry!(q8_0_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q8_0(blocks(w), blocks(a)));
entry!(q8_0_avxvnni: (w: &[u8], a: &[u8]) -> f32 = avxvnni_q8_0(blocks(w), blocks(a)));
entry!(q8_0_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q8_0(blocks(w), blocks(a)));
entry!(q8_0_avx512vnni: (w: &[u8], a: &[u8]) -> f32 = avx512vnni_q8_0(blocks(w), blocks(a)));
entry!(f32_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_f32(w, a));
entry!(f32_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_f32(w, a));
entry!(f16_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_f16(w, a));
entry!(f16_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_f16(w, a));
entry!(bf16_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_bf16(w, a));
entry!(bf16_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_bf16(w, a));
entry!(bf16_avx512bf16: (w: &[u8], a: &[u8]) -> f32 = avx512bf16_bf16(w, a));
entry!(quantize_q8_0_avx2: (x: &[f32], o: &mut [u8]) -> () = avx2_quantize_q8_0(x, blocks_mut(o)));
entry!(quantize_q8_1_avx2: (x: &[f32], o: &mut [u8]) -> () = avx2_quantize_q8_1(x, blocks_mut(o)));

pub(super) fn overlay(level: Level, t: GgmlType, k: &mut Kernels) {
    use GgmlType as T;
    let wide = matches!(level, Level::Avx512 | Level::Avx512Vnni);
    let pick = |avx2: Dot, avxvnni: Dot, avx512: Dot, avx512vnni: Dot| match level {
        Level::AvxVnni => avxvnni,
        Level::Avx512 => avx512,
        Level::Avx512Vnni => avx512vnni,
        _ => avx2,
    };
    if kquants::overlay(level, t, k) {
        return;
    }
    let (dot, quantize): (Dot, Option<Quantize>) = match t {
        T::Q4_0 => (
            pick(q4_0_avx2, q4_0_avxvnni, q4_0_avx512, q4_0_avx512vnni),
            None,
        ),
        T::Q4_1 => (
            pick(q4_1_avx2, q4_1_avxvnni, q4_1_avx512, q4_1_avx512vnni),
            None,
        ),
        T::Q8_0 => (
            pick(q8_0_avx2, q8_0_avxvnni, q8_0_avx512, q8_0_avx512vnni),
            Some(quantize_q8_0_avx2),
        ),
        T::Q8_1 => {
            // Activations only: a better quantizer, still no dot.
            k.from_float = quantize_q8_1_avx2;
            return;
        }
        T::F32 => (if wide { f32_avx512 } else { f32_avx2 }, None),
        T::F16 => (if wide { f16_avx512 } else { f16_avx2 }, None),
        T::BF16 => (
            if level == Level::Avx512Vnni && is_x86_feature_detected!("avx512bf16") {
                bf16_avx512bf16
            } else if wide {
                bf16_avx512
            } else {
                bf16_avx2
            },
            None,
        ),
        _ => return,
    };
    k.vec_dot = Some(dot);
    if let Some(q) = quantize {
        k.from_float = q;
    }
    let packed = rows4_avx2::for_type(level, t);
    k.packed_4rows = packed.map(|p| p.0);
    k.packed_4x4 = packed.map(|p| p.1);
    match t {
        T::Q4_0 => k.gemm_4x4 = q4_0_tile_avx2(level),
        T::Q8_0 => k.gemm_4x4 = q8_0_tile_avx2(level),
        T::F32 if wide => k.gemm_4x4 = Some(f32_tile_avx512),
        T::F32 => k.gemm_4x4 = Some(f32_tile_avx2),
        T::F16 if wide => k.gemm_4x4 = Some(f16_tile_avx512),
        T::BF16 if wide => k.gemm_4x4 = Some(bf16_tile_avx512),
        _ => {}
    }
    if level == Level::Avx512Vnni {
        match t {
            T::Q4_0 => {
                k.vec_dot_4rows = Some(q4_0_4rows_avx512vnni);
                k.vec_dot_4rows_n = Some(rows_n::q4_0_rows_n_avx512vnni);
                k.gemm_4x4 = Some(q4_0_tile_avx512vnni);
            }
            T::Q8_0 => {
                k.vec_dot_4rows = Some(q8_0_4rows_avx512vnni);
                k.vec_dot_4rows_n = Some(rows_n::q8_0_rows_n_avx512vnni);
                k.gemm_4x4 = Some(q8_0_tile_avx512vnni);
            }
            T::Q4_1 => {
                k.vec_dot_4rows = Some(q4_1_4rows_avx512vnni);
                k.vec_dot_4rows_n = Some(rows_n::q4_1_rows_n_avx512vnni);
                k.gemm_4x4 = Some(q4_1_tile_avx512vnni);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared pieces.

#[inline(always)]
fn bits(d: [u8; 2]) -> u64 {
    u16::from_le_bytes(d) as u64
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Lane 0: the product of two f16 scales, rounded once, as the scalar code computes it.
#[inline(always)]
unsafe fn scale_product(wd: [u8; 2], ad: [u8; 2]) -> __m128 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((bits(wd) | bits(ad) << 16) as i32));
    _mm_mul_ss(v, _mm_movehdup_ps(v))
}

/// 32 nibbles of a Q4 block in element order: low nibbles, then high nibbles.
#[inline(always)]
unsafe fn nibbles_256(qs: &[u8; 16]) -> __m256i {
    let q = _mm_loadu_si128(qs.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Eight i32 sums of four products each, `u` unsigned and `s` signed bytes.
#[inline(always)]
unsafe fn dot_us_256<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    } else {
        // Pairs of u8 * s8 fit i16 unless both bytes are extreme: callers keep u <= 128
        // and s != -128, so the sum is at most 2 * 128 * 127 = 32512.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

/// As `dot_us_256` with both bytes signed: the sign moves onto `s`, which must not be
/// -128 (negating it would wrap).
#[inline(always)]
unsafe fn dot_ss_256<const VNNI: bool>(x: __m256i, s: __m256i) -> __m256i {
    dot_us_256::<VNNI>(_mm256_abs_epi8(x), _mm256_sign_epi8(s, x))
}

// ---------------------------------------------------------------------------------------
// AVX2: one 32-element block per 256-bit vector, two accumulators to hide FMA latency.

#[inline(always)]
unsafe fn block_q4_0<const VNNI: bool>(w: &BlockQ4_0, a: &BlockQ8_0) -> (__m256, __m256) {
    let q = _mm256_sub_epi8(nibbles_256(&w.qs), _mm256_set1_epi8(8));
    let y = _mm256_loadu_si256(a.qs.as_ptr().cast());
    let s = _mm256_cvtepi32_ps(dot_ss_256::<VNNI>(q, y));
    (_mm256_broadcastss_ps(scale_product(w.d, a.d)), s)
}

#[inline(always)]
unsafe fn block_q8_0<const VNNI: bool>(w: &BlockQ8_0, a: &BlockQ8_0) -> (__m256, __m256) {
    let x = _mm256_loadu_si256(w.qs.as_ptr().cast());
    let y = _mm256_loadu_si256(a.qs.as_ptr().cast());
    let s = _mm256_cvtepi32_ps(dot_ss_256::<VNNI>(x, y));
    (_mm256_broadcastss_ps(scale_product(w.d, a.d)), s)
}

/// Returns (d_w * d_a broadcast, the block's i32 sums as f32, lane 1 = m_w * s_a).
#[inline(always)]
unsafe fn block_q4_1<const VNNI: bool>(w: &BlockQ4_1, a: &BlockQ8_1) -> (__m256, __m256, __m128) {
    let q = nibbles_256(&w.qs);
    let y = _mm256_loadu_si256(a.qs.as_ptr().cast());
    let s = _mm256_cvtepi32_ps(dot_us_256::<VNNI>(q, y));
    // [d_w, m_w, d_a, s_a] in one conversion.
    let wh = bits(w.d) | bits(w.m) << 16;
    let ah = bits(a.d) | bits(a.s) << 16;
    let v = _mm_cvtph_ps(_mm_cvtsi64_si128((wh | ah << 32) as i64));
    let p = _mm_mul_ps(v, _mm_movehl_ps(v, v));
    (_mm256_broadcastss_ps(p), s, p)
}

macro_rules! avx2_dot {
    ($name:ident, $vnni_name:ident, $block:ident, $wt:ty, $at:ty) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[$wt], a: &[$at]) -> f32 {
            avx2_blocks!(w, a, $block::<false>)
        }
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $vnni_name(w: &[$wt], a: &[$at]) -> f32 {
            avx2_blocks!(w, a, $block::<true>)
        }
    };
}

/// Blocks of `w` and `a` through `$block` (a path to an inline block kernel), summed in
/// two accumulators. A macro, not a function taking a closure: a closure written outside
/// a `#[target_feature]` function (the AVX-512 bodies' tails) does not inherit the
/// caller's features, and the intrinsics inside it stayed calls.
macro_rules! avx2_blocks {
    ($w:expr, $a:expr, $block:path) => {{
        let (w, a) = ($w, $a);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut wp = w.chunks_exact(2);
        let mut ap = a.chunks_exact(2);
        for (wc, ac) in (&mut wp).zip(&mut ap) {
            let (d0, s0) = $block(&wc[0], &ac[0]);
            let (d1, s1) = $block(&wc[1], &ac[1]);
            acc0 = _mm256_fmadd_ps(d0, s0, acc0);
            acc1 = _mm256_fmadd_ps(d1, s1, acc1);
        }
        if let (Some(wb), Some(ab)) = (wp.remainder().first(), ap.remainder().first()) {
            let (d, s) = $block(wb, ab);
            acc0 = _mm256_fmadd_ps(d, s, acc0);
        }
        hsum_ps(_mm256_add_ps(acc0, acc1))
    }};
}
pub(super) use avx2_blocks;

avx2_dot!(avx2_q4_0, avxvnni_q4_0, block_q4_0, BlockQ4_0, BlockQ8_0);
avx2_dot!(avx2_q8_0, avxvnni_q8_0, block_q8_0, BlockQ8_0, BlockQ8_0);

#[inline(always)]
unsafe fn avx2_q4_1_body<const VNNI: bool>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut ms = _mm_setzero_ps();
    let mut wp = w.chunks_exact(2);
    let mut ap = a.chunks_exact(2);
    for (wc, ac) in (&mut wp).zip(&mut ap) {
        let (d0, s0, p0) = block_q4_1::<VNNI>(&wc[0], &ac[0]);
        let (d1, s1, p1) = block_q4_1::<VNNI>(&wc[1], &ac[1]);
        acc0 = _mm256_fmadd_ps(d0, s0, acc0);
        acc1 = _mm256_fmadd_ps(d1, s1, acc1);
        ms = _mm_add_ps(ms, _mm_add_ps(p0, p1));
    }
    if let (Some(wb), Some(ab)) = (wp.remainder().first(), ap.remainder().first()) {
        let (d, s, p) = block_q4_1::<VNNI>(wb, ab);
        acc0 = _mm256_fmadd_ps(d, s, acc0);
        ms = _mm_add_ps(ms, p);
    }
    hsum_ps(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(ms))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    avx2_q4_1_body::<false>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn avxvnni_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    avx2_q4_1_body::<true>(w, a)
}

// ---------------------------------------------------------------------------------------
// AVX-512: two blocks per 512-bit vector, four blocks per loop step.

/// The nibbles of two Q4 blocks, in element order, from loads and one masked shift: the
/// broadcasts fill 128-bit lanes [q0, q0, q1, q1], and lanes 1 and 3 keep the high half.
#[inline(always)]
unsafe fn nibbles_512(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
    let v = _mm512_broadcast_i32x4(_mm_loadu_si128(q0.as_ptr().cast()));
    let v = _mm512_mask_broadcast_i32x4(v, 0xff00, _mm_loadu_si128(q1.as_ptr().cast()));
    let v = _mm512_mask_srli_epi16::<4>(v, 0xff00_ff00, v);
    _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
}

#[inline(always)]
unsafe fn load_2x32(y0: &[i8; 32], y1: &[i8; 32]) -> __m512i {
    let lo = _mm512_castsi256_si512(_mm256_loadu_si256(y0.as_ptr().cast()));
    _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(y1.as_ptr().cast()))
}

/// Sixteen i32 sums of four products each, `u` unsigned (<= 128), `s` signed (!= -128).
#[inline(always)]
unsafe fn dot_us_512<const VNNI: bool>(u: __m512i, s: __m512i) -> __m512i {
    if VNNI {
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
    } else {
        _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
    }
}

/// Q4_0 nibbles `q` (0..=15) dotted with `s` as signed values `q - 8`: the offset comes
/// off as `8 * sum(s)`, since AVX-512 has no byte sign instruction for the abs/sign trick.
#[inline(always)]
unsafe fn dot_q4_0_512<const VNNI: bool>(q: __m512i, s: __m512i) -> __m512i {
    let eight = _mm512_set1_epi8(8);
    if VNNI {
        let z = _mm512_setzero_si512();
        _mm512_sub_epi32(
            _mm512_dpbusd_epi32(z, q, s),
            _mm512_dpbusd_epi32(z, eight, s),
        )
    } else {
        let p = _mm512_sub_epi16(_mm512_maddubs_epi16(q, s), _mm512_maddubs_epi16(eight, s));
        _mm512_madd_epi16(p, _mm512_set1_epi16(1))
    }
}

#[inline(always)]
unsafe fn dot_ss_512<const VNNI: bool>(x: __m512i, s: __m512i) -> __m512i {
    let neg = _mm512_movepi8_mask(x);
    let s = _mm512_mask_sub_epi8(s, neg, _mm512_setzero_si512(), s);
    dot_us_512::<VNNI>(_mm512_abs_epi8(x), s)
}

/// Scale products of four blocks, from one conversion: lanes 0, 2, 4, 6 hold
/// `d_w[i] * d_a[i]`.
#[inline(always)]
unsafe fn scales_4(wd: [[u8; 2]; 4], ad: [[u8; 2]; 4]) -> __m256 {
    let pair = |i: usize| bits(wd[i]) | bits(ad[i]) << 16;
    let lo = pair(0) | pair(1) << 32;
    let hi = pair(2) | pair(3) << 32;
    let v = _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64));
    _mm256_mul_ps(v, _mm256_movehdup_ps(v))
}

/// Spreads lanes `i` and `j` of `p` over the two halves of a 512-bit vector.
#[inline(always)]
unsafe fn spread(p: __m512, i: i32, j: i32) -> __m512 {
    let idx = _mm512_set_epi32(j, j, j, j, j, j, j, j, i, i, i, i, i, i, i, i);
    _mm512_permutexvar_ps(idx, p)
}

#[inline(always)]
unsafe fn avx512_q4_0_body<const VNNI: bool>(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut wq = w.chunks_exact(4);
    let mut aq = a.chunks_exact(4);
    for (wc, ac) in (&mut wq).zip(&mut aq) {
        let p = _mm512_castps256_ps512(scales_4(
            [wc[0].d, wc[1].d, wc[2].d, wc[3].d],
            [ac[0].d, ac[1].d, ac[2].d, ac[3].d],
        ));
        let s0 = dot_q4_0_512::<VNNI>(
            nibbles_512(&wc[0].qs, &wc[1].qs),
            load_2x32(&ac[0].qs, &ac[1].qs),
        );
        let s1 = dot_q4_0_512::<VNNI>(
            nibbles_512(&wc[2].qs, &wc[3].qs),
            load_2x32(&ac[2].qs, &ac[3].qs),
        );
        acc0 = _mm512_fmadd_ps(spread(p, 0, 2), _mm512_cvtepi32_ps(s0), acc0);
        acc1 = _mm512_fmadd_ps(spread(p, 4, 6), _mm512_cvtepi32_ps(s1), acc1);
    }
    let tail = avx2_blocks!(wq.remainder(), aq.remainder(), block_q4_0::<false>);
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail
}

#[inline(always)]
unsafe fn avx512_q8_0_body<const VNNI: bool>(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut wq = w.chunks_exact(4);
    let mut aq = a.chunks_exact(4);
    for (wc, ac) in (&mut wq).zip(&mut aq) {
        let p = _mm512_castps256_ps512(scales_4(
            [wc[0].d, wc[1].d, wc[2].d, wc[3].d],
            [ac[0].d, ac[1].d, ac[2].d, ac[3].d],
        ));
        let s0 = dot_ss_512::<VNNI>(
            load_2x32(&wc[0].qs, &wc[1].qs),
            load_2x32(&ac[0].qs, &ac[1].qs),
        );
        let s1 = dot_ss_512::<VNNI>(
            load_2x32(&wc[2].qs, &wc[3].qs),
            load_2x32(&ac[2].qs, &ac[3].qs),
        );
        acc0 = _mm512_fmadd_ps(spread(p, 0, 2), _mm512_cvtepi32_ps(s0), acc0);
        acc1 = _mm512_fmadd_ps(spread(p, 4, 6), _mm512_cvtepi32_ps(s1), acc1);
    }
    let tail = avx2_blocks!(wq.remainder(), aq.remainder(), block_q8_0::<false>);
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail
}

#[inline(always)]
unsafe fn avx512_q4_1_body<const VNNI: bool>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut ms = _mm512_setzero_ps();
    let mut wq = w.chunks_exact(4);
    let mut aq = a.chunks_exact(4);
    for (wc, ac) in (&mut wq).zip(&mut aq) {
        // Per block [d_w, m_w, d_a, s_a], then products [d_w d_a, m_w s_a, ..] by
        // swapping the halves of each group of four.
        let hdr = |i: usize| {
            let wh = bits(wc[i].d) | bits(wc[i].m) << 16;
            (wh | (bits(ac[i].d) | bits(ac[i].s) << 16) << 32) as i64
        };
        let v = _mm512_cvtph_ps(_mm256_set_epi64x(hdr(3), hdr(2), hdr(1), hdr(0)));
        let p = _mm512_mul_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
        ms = _mm512_mask_add_ps(ms, 0x2222, ms, p);
        let s0 = dot_us_512::<VNNI>(
            nibbles_512(&wc[0].qs, &wc[1].qs),
            load_2x32(&ac[0].qs, &ac[1].qs),
        );
        let s1 = dot_us_512::<VNNI>(
            nibbles_512(&wc[2].qs, &wc[3].qs),
            load_2x32(&ac[2].qs, &ac[3].qs),
        );
        acc0 = _mm512_fmadd_ps(spread(p, 0, 4), _mm512_cvtepi32_ps(s0), acc0);
        acc1 = _mm512_fmadd_ps(spread(p, 8, 12), _mm512_cvtepi32_ps(s1), acc1);
    }
    let tail = avx2_q4_1_body::<false>(wq.remainder(), aq.remainder());
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), ms)) + tail
}

macro_rules! avx512_dot {
    ($plain:ident, $vnni:ident, $body:ident, $wt:ty, $at:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        unsafe fn $plain(w: &[$wt], a: &[$at]) -> f32 {
            $body::<false>(w, a)
        }
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $vnni(w: &[$wt], a: &[$at]) -> f32 {
            $body::<true>(w, a)
        }
    };
}

avx512_dot!(
    avx512_q4_0,
    avx512vnni_q4_0,
    avx512_q4_0_body,
    BlockQ4_0,
    BlockQ8_0
);
avx512_dot!(
    avx512_q8_0,
    avx512vnni_q8_0,
    avx512_q8_0_body,
    BlockQ8_0,
    BlockQ8_0
);
avx512_dot!(
    avx512_q4_1,
    avx512vnni_q4_1,
    avx512_q4_1_body,
    BlockQ4_1,
    BlockQ8_1
);

// ---------------------------------------------------------------------------------------
// Four weight rows against one activation row: each activation pair is loaded (and, for
// Q4_0, its offset sum computed) once for four rows.

/// `prep` loads an activation pair once (with any per-pair term the weights need), and
/// `pair` dots two weight blocks with it.
#[inline(always)]
unsafe fn avx512_rows4<W, A>(
    w: [&[W]; 4],
    a: &[A],
    hdr: impl Fn(&W) -> [u8; 2],
    ahdr: impl Fn(&A) -> [u8; 2],
    pair: impl Fn(&W, &W, __m512i, __m512i) -> __m512i,
    prep: impl Fn(&A, &A) -> (__m512i, __m512i),
    tail: impl Fn(&[W], &[A]) -> f32,
) -> [f32; 4] {
    let n = a.len() / 4 * 4;
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < n {
        let ac = &a[i..i + 4];
        let (y0, c0) = prep(&ac[0], &ac[1]);
        let (y1, c1) = prep(&ac[2], &ac[3]);
        for r in 0..4 {
            let wc = &w[r][i..i + 4];
            let p = _mm512_castps256_ps512(scales_4(
                [hdr(&wc[0]), hdr(&wc[1]), hdr(&wc[2]), hdr(&wc[3])],
                [ahdr(&ac[0]), ahdr(&ac[1]), ahdr(&ac[2]), ahdr(&ac[3])],
            ));
            let s0 = _mm512_cvtepi32_ps(pair(&wc[0], &wc[1], y0, c0));
            let s1 = _mm512_cvtepi32_ps(pair(&wc[2], &wc[3], y1, c1));
            acc[r] = _mm512_fmadd_ps(spread(p, 0, 2), s0, acc[r]);
            acc[r] = _mm512_fmadd_ps(spread(p, 4, 6), s1, acc[r]);
        }
        i += 4;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(acc[r]) + tail(&w[r][n..], &a[n..]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q4_0_rows4(w: [&[BlockQ4_0]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
    avx512_rows4(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |w0, w1, y, c| _mm512_sub_epi32(dot_us_512::<true>(nibbles_512(&w0.qs, &w1.qs), y), c),
        |a0, a1| {
            let y = load_2x32(&a0.qs, &a1.qs);
            let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), y);
            (y, c)
        },
        |w, a| avx2_blocks!(w, a, block_q4_0::<false>),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q8_0_rows4(w: [&[BlockQ8_0]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
    avx512_rows4(
        w,
        a,
        |b| b.d,
        |b| b.d,
        |w0, w1, y, _| dot_ss_512::<true>(load_2x32(&w0.qs, &w1.qs), y),
        |a0, a1| (load_2x32(&a0.qs, &a1.qs), _mm512_setzero_si512()),
        |w, a| avx2_blocks!(w, a, block_q8_0::<false>),
    )
}

/// Four Q4_1 rows, as `avx512_q4_1_body` computes each (its offset term `m_w s_a`
/// included), loading each activation pair once. SmolLM2's decode is Q4_1.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q4_1_rows4(w: [&[BlockQ4_1]; 4], a: &[BlockQ8_1]) -> [f32; 4] {
    let n = a.len() / 4 * 4;
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut ms = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < n {
        let ac = &a[i..i + 4];
        let y0 = load_2x32(&ac[0].qs, &ac[1].qs);
        let y1 = load_2x32(&ac[2].qs, &ac[3].qs);
        let ah = |k: usize| bits(ac[k].d) | bits(ac[k].s) << 16;
        for r in 0..4 {
            let wc = &w[r][i..i + 4];
            let hdr = |k: usize| (bits(wc[k].d) | bits(wc[k].m) << 16 | ah(k) << 32) as i64;
            let v = _mm512_cvtph_ps(_mm256_set_epi64x(hdr(3), hdr(2), hdr(1), hdr(0)));
            let p = _mm512_mul_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
            ms[r] = _mm512_mask_add_ps(ms[r], 0x2222, ms[r], p);
            let s0 = dot_us_512::<true>(nibbles_512(&wc[0].qs, &wc[1].qs), y0);
            let s1 = dot_us_512::<true>(nibbles_512(&wc[2].qs, &wc[3].qs), y1);
            acc[r] = _mm512_fmadd_ps(spread(p, 0, 4), _mm512_cvtepi32_ps(s0), acc[r]);
            acc[r] = _mm512_fmadd_ps(spread(p, 8, 12), _mm512_cvtepi32_ps(s1), acc[r]);
        }
        i += 4;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], ms[r]))
            + avx2_q4_1_body::<false>(&w[r][n..], &a[n..]);
    }
    out
}

fn q4_1_4rows_avx512vnni(w: &[&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let w = w.map(blocks::<BlockQ4_1>);
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q4_1_rows4(w, blocks(a)) }
}

fn q4_0_4rows_avx512vnni(w: &[&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let w = w.map(blocks::<BlockQ4_0>);
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q4_0_rows4(w, blocks(a)) }
}

fn q8_0_4rows_avx512vnni(w: &[&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let w = w.map(blocks::<BlockQ8_0>);
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q8_0_rows4(w, blocks(a)) }
}

// ---------------------------------------------------------------------------------------
// Tiles: R weight rows against T activation rows. Prefill dots every weight row with many
// tokens; decoding a weight block (nibble unpack, scale conversion) costs as much as its
// multiply-adds, so each block pair is decoded once and dotted with all T tokens, the R*T
// sums staying in registers.
//
// `vpdpbusd` multiplies unsigned by signed bytes. For Q8_0 the activations take the
// unsigned side, offset by +128 (|y| <= 127, so y + 128 fits a byte), and the weights the
// signed side as they are (Q4_0 is the other way round: see `NIBBLES`). The offset adds
// 128 * sum(w) to each four-byte group, which depends on the weight row only: it is
// computed once per row and block pair and seeds the accumulation, rather than once per
// (row, token).

/// A weight block pair as the tile loop consumes it: signed bytes in element order, the
/// pair's `-128 * sum(w)` per four-byte group, and its scale (lanes 0-7 block 0, 8-15
/// block 1).
#[inline(always)]
unsafe fn tile_weights(w: __m512i, d0: [u8; 2], d1: [u8; 2]) -> (__m512i, __m512i, __m512) {
    let c = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), w);
    let neg = _mm512_sub_epi32(_mm512_setzero_si512(), c);
    (w, neg, scale_pair(d0, d1))
}

/// Two f16 scales spread over the two halves of a 512-bit vector: both converted in one
/// 128-bit instruction, then one permute.
#[inline(always)]
unsafe fn scale_pair(d0: [u8; 2], d1: [u8; 2]) -> __m512 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((bits(d0) | bits(d1) << 16) as i32));
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// `wpair` decodes two weight blocks (see `tile_weights`); `tail` dots the blocks past
/// the last whole pair of one row with one activation row. Returns `out[r][t]`.
///
/// With `NIBBLES` the weights are instead Q4_0's unsigned nibbles, which take the unsigned
/// side against the activations as they are; the -8 offset becomes `-8 * sum(y)`, which
/// depends on the token only, so it seeds the sums per token (`wpair`'s seed is unused).
/// That saves recentring each weight pair and its offset sum.
#[inline(always)]
unsafe fn avx512vnni_tile<W, const R: usize, const T: usize, const NIBBLES: bool>(
    w: [&[W]; R],
    a: [&[BlockQ8_0]; T],
    wpair: impl Fn(&W, &W) -> (__m512i, __m512i, __m512),
    tail: impl Fn(&[W], &[BlockQ8_0]) -> f32,
) -> [[f32; T]; R] {
    let nb = a[0].len();
    let n = nb / 2 * 2;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let flip = _mm512_set1_epi8(-128);
    let mut i = 0;
    while i < n {
        let mut y = [_mm512_setzero_si512(); T];
        let mut seed = [_mm512_setzero_si512(); T];
        let mut da = [_mm512_setzero_ps(); T];
        for t in 0..T {
            let (a0, a1) = (&a[t][i], &a[t][i + 1]);
            let v = load_2x32(&a0.qs, &a1.qs);
            if NIBBLES {
                y[t] = v;
                let neg = _mm512_sub_epi8(_mm512_setzero_si512(), v);
                seed[t] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), neg);
            } else {
                // XOR with 0x80 adds 128 to a signed byte, giving its unsigned offset form.
                y[t] = _mm512_xor_si512(v, flip);
            }
            da[t] = scale_pair(a0.d, a1.d);
        }
        for r in 0..R {
            let (q, neg, dw) = wpair(&w[r][i], &w[r][i + 1]);
            for t in 0..T {
                let s = if NIBBLES {
                    _mm512_dpbusd_epi32(seed[t], q, y[t])
                } else {
                    _mm512_dpbusd_epi32(neg, y[t], q)
                };
                let s = _mm512_cvtepi32_ps(s);
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da[t]), s, acc[r][t]);
            }
        }
        i += 2;
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]) + tail(&w[r][n..], &a[t][n..]);
        }
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q4_0_tile(w: [&[BlockQ4_0]; 4], a: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
    avx512vnni_tile::<_, 4, 4, true>(
        w,
        a,
        |w0, w1| {
            let q = nibbles_512(&w0.qs, &w1.qs);
            (q, _mm512_setzero_si512(), scale_pair(w0.d, w1.d))
        },
        |w, a| avx2_blocks!(w, a, block_q4_0::<false>),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q8_0_tile(w: [&[BlockQ8_0]; 4], a: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
    avx512vnni_tile::<_, 4, 4, false>(
        w,
        a,
        |w0, w1| tile_weights(load_2x32(&w0.qs, &w1.qs), w0.d, w1.d),
        |w, a| avx2_blocks!(w, a, block_q8_0::<false>),
    )
}

/// Q4_1 against Q8_1: unsigned nibbles meet signed activations directly, and each block
/// adds `m_w * s_a`, spread as `m_w / 8` over the block's eight lanes (exact: a power of
/// two) so that it rides in the same accumulator.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q4_1_tile(w: [&[BlockQ4_1]; 4], a: [&[BlockQ8_1]; 4]) -> [[f32; 4]; 4] {
    const R: usize = 4;
    const T: usize = 4;
    let nb = a[0].len();
    let n = nb / 2 * 2;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let eighth = _mm512_set1_ps(0.125);
    let mut i = 0;
    while i < n {
        let mut y = [_mm512_setzero_si512(); T];
        let mut da = [_mm512_setzero_ps(); T];
        let mut sa = [_mm512_setzero_ps(); T];
        for t in 0..T {
            let (a0, a1) = (&a[t][i], &a[t][i + 1]);
            y[t] = load_2x32(&a0.qs, &a1.qs);
            da[t] = scale_pair(a0.d, a1.d);
            sa[t] = scale_pair(a0.s, a1.s);
        }
        for r in 0..R {
            let (w0, w1) = (&w[r][i], &w[r][i + 1]);
            let q = nibbles_512(&w0.qs, &w1.qs);
            let dw = scale_pair(w0.d, w1.d);
            let mw = _mm512_mul_ps(scale_pair(w0.m, w1.m), eighth);
            for t in 0..T {
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y[t]));
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da[t]), s, acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(mw, sa[t], acc[r][t]);
            }
        }
        i += 2;
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let tail = avx2_q4_1_body::<false>(&w[r][n..], &a[t][n..]);
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]) + tail;
        }
    }
    out
}

fn q4_1_tile_avx512vnni(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q4_1_tile(w.map(blocks::<BlockQ4_1>), a.map(blocks::<BlockQ8_1>)) }
}

#[inline(always)]
unsafe fn broadcast_f16(d: [u8; 2]) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(d)))
}

/// The 256-bit tile for CPUs without AVX-512 VNNI: one block per step, the sign trick of
/// `dot_ss_256` (`|w|` is hoisted out of the token loop), scales converted once per block
/// and row or token. `wblock` gives a weight block's signed bytes and f16 scale.
#[inline(always)]
unsafe fn avx2_tile<W, const VNNI: bool>(
    w: impl Rows4<W>,
    a: [&[BlockQ8_0]; 4],
    wblock: impl Fn(&W) -> (__m256i, [u8; 2]),
) -> [[f32; 4]; 4] {
    let n = a[0].len();
    w.check(n);
    assert!(
        a.iter().all(|a| a.len() == n),
        "activation rows of unequal length"
    );
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    // `i` indexes four activation rows and the weight accessor alike.
    #[allow(clippy::needless_range_loop)]
    for i in 0..n {
        let mut y = [_mm256_setzero_si256(); 4];
        let mut da = [_mm256_setzero_ps(); 4];
        for (t, (y, da)) in y.iter_mut().zip(&mut da).enumerate() {
            *y = _mm256_loadu_si256(a[t][i].qs.as_ptr().cast());
            *da = broadcast_f16(a[t][i].d);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `check` accepted `n` blocks per row.
            let (x, d) = wblock(w.get(r, i));
            let dw = broadcast_f16(d);
            for t in 0..4 {
                let s = _mm256_cvtepi32_ps(dot_ss_256::<VNNI>(x, y[t]));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da[t]), s, acc[t]);
            }
        }
    }
    // Loops, not `map`: a closure would not inherit the target features (see `reduce16`).
    let mut out = [[0f32; 4]; 4];
    for r in 0..4 {
        for t in 0..4 {
            out[r][t] = hsum_ps(acc[r][t]);
        }
    }
    out
}

macro_rules! avx2_tiles {
    ($name:ident, $wt:ty, $wblock:expr) => {
        fn $name(level: Level) -> Option<Gemm4x4> {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn plain(w: [&[$wt]; 4], a: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
                avx2_tile::<_, false>(w, a, $wblock)
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn vnni(w: [&[$wt]; 4], a: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
                avx2_tile::<_, true>(w, a, $wblock)
            }
            fn plain_entry(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
                // SAFETY: installed only for levels with AVX2, FMA and F16C, after
                // `supported` detected them.
                unsafe { plain(w.map(blocks::<$wt>), a.map(blocks::<BlockQ8_0>)) }
            }
            fn vnni_entry(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
                // SAFETY: installed only for AvxVnni, after `supported` detected it.
                unsafe { vnni(w.map(blocks::<$wt>), a.map(blocks::<BlockQ8_0>)) }
            }
            match level {
                Level::Avx2 | Level::Avx512 => Some(plain_entry),
                Level::AvxVnni => Some(vnni_entry),
                _ => None,
            }
        }
    };
}

avx2_tiles!(q4_0_tile_avx2, BlockQ4_0, |w: &BlockQ4_0| (
    _mm256_sub_epi8(nibbles_256(&w.qs), _mm256_set1_epi8(8)),
    w.d
));
avx2_tiles!(q8_0_tile_avx2, BlockQ8_0, |w: &BlockQ8_0| (
    _mm256_loadu_si256(w.qs.as_ptr().cast()),
    w.d
));

fn q4_0_tile_avx512vnni(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q4_0_tile(w.map(blocks::<BlockQ4_0>), a.map(blocks::<BlockQ8_0>)) }
}

fn q8_0_tile_avx512vnni(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q8_0_tile(w.map(blocks::<BlockQ8_0>), a.map(blocks::<BlockQ8_0>)) }
}

// ---------------------------------------------------------------------------------------
// Float dots: four accumulators, then a scalar tail.

macro_rules! float_dot {
    ($name:ident, $feat:literal, $vec:ty, $zero:ident, $fma:ident, $width:expr, $elt:expr,
     $load:expr, $reduce:expr, $scalar:path) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(w: &[u8], a: &[u8]) -> f32 {
            const STEP: usize = $width * 4 * $elt;
            let n = w.len().min(a.len()) / STEP * STEP;
            let mut acc: [$vec; 4] = [$zero(); 4];
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            let mut i = 0;
            while i < n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let o = i + k * $width * $elt;
                    *acc = $fma($load(wp.add(o)), $load(ap.add(o)), *acc);
                }
                i += STEP;
            }
            let total = $reduce(acc);
            total + $scalar(&w[n..], &a[n..])
        }
    };
}

/// `gemm_4x4` for float rows (f32, f16 or bf16 on both sides, as their `vec_dot`): four
/// weight rows by four activation rows, sixteen accumulators in registers, so each loaded
/// vector serves four products and the sixteen horizontal sums share one shuffle tree. A
/// row's last partial vector is read through a mask. Prefill of float models (stories260K's
/// 64-wide rows above all) spent more in the per-dot horizontal sums than in the products.
macro_rules! float_tile {
    ($name:ident, $feat:literal, $elt:expr, $load:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
            let n = w.iter().chain(a).map(|r| r.len()).min().unwrap_or(0) / $elt;
            let (wp, ap) = (w.map(|r| r.as_ptr()), a.map(|r| r.as_ptr()));
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            let mut i = 0;
            while i < n {
                let k: __mmask16 = if n - i >= 16 { !0 } else { (1 << (n - i)) - 1 };
                let mut x = [_mm512_setzero_ps(); 4];
                for (x, p) in x.iter_mut().zip(ap) {
                    *x = $load(k, p.add(i * $elt));
                }
                for (acc, wp) in acc.iter_mut().zip(wp) {
                    let wv = $load(k, wp.add(i * $elt));
                    for (acc, x) in acc.iter_mut().zip(x) {
                        *acc = _mm512_fmadd_ps(wv, x, *acc);
                    }
                }
                i += 16;
            }
            let acc = std::mem::transmute::<[[__m512; 4]; 4], [__m512; 16]>(acc);
            let sums = std::mem::transmute::<__m512, [f32; 16]>(reduce16(acc));
            let mut out = [[0f32; 4]; 4];
            for (k, v) in sums.iter().enumerate() {
                out[k / 4][k % 4] = *v;
            }
            out
        }
    };
}

/// The horizontal sums of sixteen vectors, in their order: pairs of vectors, then pairs
/// of those, fold their lanes together until one vector holds the sixteen totals.
#[inline(always)]
unsafe fn reduce16(v: [__m512; 16]) -> __m512 {
    // Plain loops, no closures: a closure does not inherit the caller's target features,
    // and its intrinsics would not inline.
    // Each 128-bit lane of a pair's sum: [a, b, a, b] partial sums.
    let mut p = [_mm512_setzero_ps(); 8];
    for i in 0..8 {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        p[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    // [a, b, c, d] per 128-bit lane.
    let mut q = [_mm512_setzero_ps(); 4];
    for i in 0..4 {
        let (x, z) = (p[2 * i], p[2 * i + 1]);
        q[i] = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(x, z),
            _mm512_shuffle_ps::<0b11_10_11_10>(x, z),
        );
    }
    // Eight vectors' sums over two 128-bit lanes each, then all sixteen.
    let u = fold_lanes(q[0], q[1]);
    let t = fold_lanes(q[2], q[3]);
    fold_lanes(u, t)
}

#[inline(always)]
unsafe fn fold_lanes(y: __m512, w: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(y, w),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(y, w),
    )
}

#[inline(always)]
unsafe fn load_f32_masked(k: __mmask16, p: *const u8) -> __m512 {
    _mm512_maskz_loadu_ps(k, p.cast())
}

#[inline(always)]
unsafe fn load_f16_masked(k: __mmask16, p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p.cast()))
}

#[inline(always)]
unsafe fn load_bf16_masked(k: __mmask16, p: *const u8) -> __m512 {
    let v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p.cast()));
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
}

float_tile!(
    avx512_f32_tile,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    4,
    load_f32_masked
);
float_tile!(
    avx512_f16_tile,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    2,
    load_f16_masked
);
float_tile!(
    avx512_bf16_tile,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    2,
    load_bf16_masked
);
/// Lane `k`: the sum of the lanes of `v[k]`.
#[inline(always)]
unsafe fn sums8(v: [__m256; 8]) -> __m256 {
    // Statements, not `map`: a closure does not inherit the target features, and there the
    // intrinsics stayed calls (10 % of stories260K prefill).
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t2 = _mm256_hadd_ps(v[4], v[5]);
    let t3 = _mm256_hadd_ps(v[6], v[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(u0, u1),
        _mm256_permute2f128_ps::<0x31>(u0, u1),
    )
}

/// The F32 tile on 256-bit vectors, two weight rows at a time so the eight accumulators,
/// four activation vectors and the weight vector fit the sixteen registers; the last
/// partial vector through masked loads.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_f32_tile(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    let n = w.iter().chain(a).map(|r| r.len()).min().unwrap_or(0) / 4;
    let (wp, ap) = (
        w.map(|r| r.as_ptr().cast::<f32>()),
        a.map(|r| r.as_ptr().cast::<f32>()),
    );
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut out = [[0f32; 4]; 4];
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < n {
            let k = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i).min(8) as i32), lane);
            let mut x = [_mm256_setzero_ps(); 4];
            for (x, p) in x.iter_mut().zip(ap) {
                *x = _mm256_maskload_ps(p.add(i), k);
            }
            for r in 0..2 {
                let wv = _mm256_maskload_ps(wp[2 * half + r].add(i), k);
                for t in 0..4 {
                    acc[4 * r + t] = _mm256_fmadd_ps(wv, x[t], acc[4 * r + t]);
                }
            }
            i += 8;
        }
        let mut s = [0f32; 8];
        _mm256_storeu_ps(s.as_mut_ptr(), sums8(acc));
        for (k, v) in s.iter().enumerate() {
            out[2 * half + k / 4][k % 4] = *v;
        }
    }
    out
}

entry!(f32_tile_avx2: (w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] = avx2_f32_tile(w, a));
entry!(f32_tile_avx512: (w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] = avx512_f32_tile(w, a));
entry!(f16_tile_avx512: (w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] = avx512_f16_tile(w, a));
entry!(bf16_tile_avx512: (w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] = avx512_bf16_tile(w, a));

#[inline(always)]
unsafe fn reduce_256(a: [__m256; 4]) -> f32 {
    hsum_ps(_mm256_add_ps(
        _mm256_add_ps(a[0], a[1]),
        _mm256_add_ps(a[2], a[3]),
    ))
}

#[inline(always)]
unsafe fn reduce_512(a: [__m512; 4]) -> f32 {
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(a[0], a[1]),
        _mm512_add_ps(a[2], a[3]),
    ))
}

#[inline(always)]
unsafe fn bf16_256(p: *const u8) -> __m256 {
    let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v))
}

#[inline(always)]
unsafe fn bf16_512(p: *const u8) -> __m512 {
    let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
}

use super::super::float::{vec_dot_bf16, vec_dot_f16, vec_dot_f32};

float_dot!(
    avx2_f32,
    "avx2,fma,f16c",
    __m256,
    _mm256_setzero_ps,
    _mm256_fmadd_ps,
    8,
    4,
    |p: *const u8| _mm256_loadu_ps(p.cast()),
    reduce_256,
    vec_dot_f32
);
float_dot!(
    avx512_f32,
    "avx2,fma,f16c,avx512f",
    __m512,
    _mm512_setzero_ps,
    _mm512_fmadd_ps,
    16,
    4,
    |p: *const u8| _mm512_loadu_ps(p.cast()),
    reduce_512,
    vec_dot_f32
);
float_dot!(
    avx2_f16,
    "avx2,fma,f16c",
    __m256,
    _mm256_setzero_ps,
    _mm256_fmadd_ps,
    8,
    2,
    |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    reduce_256,
    vec_dot_f16
);
float_dot!(
    avx512_f16,
    "avx2,fma,f16c,avx512f",
    __m512,
    _mm512_setzero_ps,
    _mm512_fmadd_ps,
    16,
    2,
    |p: *const u8| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    reduce_512,
    vec_dot_f16
);
float_dot!(
    avx2_bf16,
    "avx2,fma,f16c",
    __m256,
    _mm256_setzero_ps,
    _mm256_fmadd_ps,
    8,
    2,
    |p: *const u8| bf16_256(p),
    reduce_256,
    vec_dot_bf16
);
float_dot!(
    avx512_bf16,
    "avx2,fma,f16c,avx512f",
    __m512,
    _mm512_setzero_ps,
    _mm512_fmadd_ps,
    16,
    2,
    |p: *const u8| bf16_512(p),
    reduce_512,
    vec_dot_bf16
);

/// `vdpbf16ps` multiplies bf16 pairs exactly and adds both into f32 lanes, 32 elements
/// per instruction. It flushes subnormals, which only moves results by ~1e-38.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn avx512bf16_bf16(w: &[u8], a: &[u8]) -> f32 {
    const STEP: usize = 64 * 4;
    let n = w.len().min(a.len()) / STEP * STEP;
    let mut acc = [_mm512_setzero_ps(); 4];
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let mut i = 0;
    while i < n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + k * 64;
            let x: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(o).cast()));
            let y: __m512bh = std::mem::transmute(_mm512_loadu_si512(ap.add(o).cast()));
            *acc = _mm512_dpbf16_ps(*acc, x, y);
        }
        i += STEP;
    }
    reduce_512(acc) + avx512_bf16(&w[n..], &a[n..])
}

// ---------------------------------------------------------------------------------------
// Activation quantizers: d and 1/d as the scalar code computes them, products rounded to
// nearest-even, so the bytes match the scalar quantizer exactly.

#[inline(always)]
unsafe fn quantize_block(x: &[f32]) -> (f32, __m256i, __m256i) {
    // No closures here: they would not inherit the caller's target features, and the
    // intrinsics inside would become out-of-line calls.
    let p = x.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for (q, v) in q.iter_mut().zip(v) {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, id),
        );
        *q = _mm256_cvtps_epi32(r);
    }
    // The two packs interleave 4-element groups across 128-bit lanes; the permute
    // restores element order.
    let b = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    (d, b, sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, q, _) = quantize_block(xs);
        b.d = to_h(d);
        _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, q, sum) = quantize_block(xs);
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
        b.d = to_h(d);
        b.s = to_h(d * s as f32);
        _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
    }
}
