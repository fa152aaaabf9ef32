//! x86-64 kernels for the K-quants (against Q8_K activations), the Q8_K quantizer, and
//! Q5_0 / Q5_1.
//!
//! One super-block per step on 256-bit vectors. The K-quants scale every 16 or 32 quants
//! separately, so the products stay in i16 lanes (`vpmaddubsw`) until `vpmaddwd` applies
//! the scales; `vpdpbusd` would leave i32 sums that need a 32-bit multiply per scale,
//! which costs more than it saves. The AVX-512 levels run the same bodies compiled with
//! AVX-512 enabled (EVEX encodings, 32 registers); the weight stream, not the arithmetic,
//! bounds these kernels.
//!
//! Quants are kept unsigned (offsets such as Q6_K's -32 come off afterwards through the
//! activations' 16-element sums), so `vpmaddubsw` sees u8 <= 63 against s8 in
//! -127..=127: a pair sums to at most 2 * 63 * 127, no saturation.

use std::arch::x86_64::*;

use super::{
    bits, dot_ss_256, dot_us_256, hsum_ps, lane_pair_f16, lane_pairs, nibbles_256, scale_product,
    transpose4, Dot,
};
use crate::quant::pack::BlockQ4Kx4;
use crate::quant::simd::Level;
use crate::quant::{
    blocks, blocks_mut, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType, Kernels, QK_K,
};

entry!(q2_k_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q2_k(blocks(w), blocks(a)));
entry!(q2_k_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q2_k(blocks(w), blocks(a)));
entry!(q3_k_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q3_k(blocks(w), blocks(a)));
entry!(q3_k_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q3_k(blocks(w), blocks(a)));
entry!(q4_k_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q4_k(blocks(w), blocks(a)));
entry!(q4_k_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q4_k(blocks(w), blocks(a)));
entry!(q5_k_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q5_k(blocks(w), blocks(a)));
entry!(q5_k_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q5_k(blocks(w), blocks(a)));
entry!(q6_k_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q6_k(blocks(w), blocks(a)));
entry!(q6_k_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q6_k(blocks(w), blocks(a)));
entry!(q5_0_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q5_0(blocks(w), blocks(a)));
entry!(q5_0_avxvnni: (w: &[u8], a: &[u8]) -> f32 = avxvnni_q5_0(blocks(w), blocks(a)));
entry!(q5_0_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q5_0(blocks(w), blocks(a)));
entry!(q5_1_avx2: (w: &[u8], a: &[u8]) -> f32 = avx2_q5_1(blocks(w), blocks(a)));
entry!(q5_1_avxvnni: (w: &[u8], a: &[u8]) -> f32 = avxvnni_q5_1(blocks(w), blocks(a)));
entry!(q5_1_avx512: (w: &[u8], a: &[u8]) -> f32 = avx512_q5_1(blocks(w), blocks(a)));
entry!(quantize_q8_k_avx2: (x: &[f32], o: &mut [u8]) -> () = avx2_quantize_q8_k(x, blocks_mut(o)));

/// Installs this module's kernels for `t`; false if it has none.
pub(super) fn overlay(level: Level, t: GgmlType, k: &mut Kernels) -> bool {
    use GgmlType as T;
    let wide = matches!(level, Level::Avx512 | Level::Avx512Vnni);
    let pick = |avx2: Dot, avx512: Dot| if wide { avx512 } else { avx2 };
    let dot = match t {
        T::Q2_K => pick(q2_k_avx2, q2_k_avx512),
        T::Q3_K => pick(q3_k_avx2, q3_k_avx512),
        T::Q4_K => pick(q4_k_avx2, q4_k_avx512),
        T::Q5_K => pick(q5_k_avx2, q5_k_avx512),
        T::Q6_K => pick(q6_k_avx2, q6_k_avx512),
        T::Q5_0 if level == Level::AvxVnni => q5_0_avxvnni,
        T::Q5_0 => pick(q5_0_avx2, q5_0_avx512),
        T::Q5_1 if level == Level::AvxVnni => q5_1_avxvnni,
        T::Q5_1 => pick(q5_1_avx2, q5_1_avx512),
        T::Q8_K => {
            // Activations only: a faster quantizer, still no dot.
            k.from_float = quantize_q8_k_avx2;
            return true;
        }
        _ => return false,
    };
    k.vec_dot = Some(dot);
    // Without AVX-512 VNNI's tiles, prefill and row-exact batches both take the one-row
    // bodies over four activation rows, which unpack each super-block once for all four.
    if matches!(level, Level::Avx2 | Level::AvxVnni) {
        match t {
            T::Q4_K => {
                k.gemm_4x4 = Some(q4_k_tile_avx2);
                k.vec_dot_4rows_n = Some(q4_k_rows_n_avx2);
                k.packed_4rows = Some(q4_kx4_dec);
                k.packed_4x4 = Some(q4_kx4_tile);
            }
            T::Q6_K => {
                k.gemm_4x4 = Some(q6_k_tile_avx2);
                k.vec_dot_4rows_n = Some(q6_k_rows_n_avx2);
            }
            _ => {}
        }
    }
    if level == Level::Avx512Vnni {
        match t {
            T::Q4_K => {
                k.gemm_4x4 = Some(q4_k_tile_avx512vnni);
                k.vec_dot_4rows_n = Some(q4_k_rows_n_avx512vnni);
            }
            T::Q6_K => {
                k.gemm_4x4 = Some(q6_k_tile_avx512vnni);
                k.vec_dot_4rows_n = Some(q6_k_rows_n_avx512vnni);
            }
            _ => {}
        }
    }
    true
}

/// Each body once with AVX2 and once with AVX-512 enabled.
macro_rules! k_dot {
    ($avx2:ident, $avx512:ident, $body:ident, $wt:ty) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2(w: &[$wt], a: &[BlockQ8K]) -> f32 {
            $body(w, a)
        }
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        unsafe fn $avx512(w: &[$wt], a: &[BlockQ8K]) -> f32 {
            $body(w, a)
        }
    };
}

k_dot!(avx2_q2_k, avx512_q2_k, q2_k_body, BlockQ2K);
k_dot!(avx2_q3_k, avx512_q3_k, q3_k_body, BlockQ3K);
k_dot!(avx2_q4_k, avx512_q4_k, q4_k_body, BlockQ4K);
k_dot!(avx2_q5_k, avx512_q5_k, q5_k_body, BlockQ5K);
k_dot!(avx2_q6_k, avx512_q6_k, q6_k_body, BlockQ6K);

// ---------------------------------------------------------------------------------------
// Shared pieces.

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn load_y(a: &BlockQ8K, offset: usize) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr().add(offset).cast())
}

/// `[d_w * d_a, m_w * d_a]` in lanes 0 and 1, from the weight's f16 scale and minimum
/// scale and the activations' f32 scale: the products the scalar code rounds.
#[inline(always)]
unsafe fn super_scales(d: [u8; 2], dmin: [u8; 2], a: &BlockQ8K) -> __m128 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((bits(d) | bits(dmin) << 16) as i32));
    _mm_mul_ps(v, _mm_set1_ps(a.d()))
}

/// The activations' sixteen 16-element sums as i16 lanes.
#[inline(always)]
unsafe fn bsums(a: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(a.bsums.as_ptr().cast())
}

/// Scales `i` and `i + 1` of sixteen signed bytes, each spread over eight i16 lanes of one
/// half: the factors for a vector of 32 quants that spans two 16-element sub-blocks.
#[inline(always)]
unsafe fn scale_pair(sc: __m128i, i: usize) -> __m256i {
    let lo = i as i64 * 0x0101_0101_0101_0101;
    let hi = (i as i64 + 1) * 0x0101_0101_0101_0101;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, _mm_set_epi64x(hi, lo)))
}

/// Eight i32 lanes of `sum(sc * q * y)` over one vector of 32 unsigned quants, whose two
/// halves belong to sub-blocks with the i16 scales in the halves of `sc`.
#[inline(always)]
unsafe fn dot_scaled(q: __m256i, y: __m256i, sc: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), sc)
}

// ---------------------------------------------------------------------------------------
// Sub-blocks of 16: Q2_K, Q3_K, Q6_K. Each 128-element half packs its quants so that
// byte `l` of a 32-byte run feeds elements `l`, `l + 32`, `l + 64`, `l + 96`: four vectors
// of 32 quants, each spanning two sub-blocks.

/// `sum_j sc[j] * dot(q_j, y_j)` over the eight sub-blocks of one half (scales `8 * half`..).
#[inline(always)]
unsafe fn half_16(q: [__m256i; 4], a: &BlockQ8K, half: usize, sc: __m128i) -> __m256i {
    let mut s = _mm256_setzero_si256();
    for (k, q) in q.into_iter().enumerate() {
        let y = load_y(a, 128 * half + 32 * k);
        s = _mm256_add_epi32(s, dot_scaled(q, y, scale_pair(sc, 8 * half + 2 * k)));
    }
    s
}

#[inline(always)]
unsafe fn q6_k_body(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let lo4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let d = super_scales(wb.d, [0; 2], ab);
        let sc = _mm_loadu_si128(wb.scales.as_ptr().cast());
        // The quants are stored as q + 32: the offset comes off as 32 * sum(sc * bsum).
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums(ab));
        let mut s = _mm256_slli_epi32::<5>(_mm256_sub_epi32(_mm256_setzero_si256(), offset));
        for half in 0..2 {
            let ql0 = load(wb.ql.as_ptr().add(64 * half));
            let ql1 = load(wb.ql.as_ptr().add(64 * half + 32));
            let qh = load(wb.qh.as_ptr().add(32 * half));
            // Masks before shifts, so no bits cross into the neighbouring byte.
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, lo4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, lo4),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), lo4),
                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), lo4),
                    _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xc0u8 as i8))),
                ),
            ];
            s = _mm256_add_epi32(s, half_16(q, ab, half, sc));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

/// The four 2-bit fields of each byte of `qb`, as four vectors of quants 0..=3.
#[inline(always)]
unsafe fn crumbs(qb: __m256i) -> [__m256i; 4] {
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(qb, m),
        _mm256_and_si256(_mm256_srli_epi16::<2>(qb), m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m),
        _mm256_and_si256(_mm256_srli_epi16::<6>(qb), m),
    ]
}

#[inline(always)]
unsafe fn q2_k_body(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let lo4 = _mm_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let d = super_scales(wb.d, wb.dmin, ab);
        let packed = _mm_loadu_si128(wb.scales.as_ptr().cast());
        let sc = _mm_and_si128(packed, lo4);
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(packed), lo4);
        let m = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bsums(ab));
        let mut s = _mm256_setzero_si256();
        for half in 0..2 {
            let q = crumbs(load(wb.qs.as_ptr().add(32 * half)));
            s = _mm256_add_epi32(s, half_16(q, ab, half, sc));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(d));
        acc = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(m), acc);
    }
    hsum_ps(acc)
}

/// Q3_K's sixteen 6-bit scales, as stored (0..=63, 32 meaning zero).
#[inline(always)]
fn q3_k_scales(s: &[u8; 12]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (lo, hi) = ((word(0) as u64) | (word(1) as u64) << 32, word(2) as u64);
    // Low nibbles of scales 0..8 then 8..16; the top bits of scale j sit at bits
    // 2 * (j / 4) of byte 8 + j % 4, i.e. four bytes of top bits per group of four scales.
    let nib = 0x0f0f_0f0f_0f0f_0f0f_u64;
    let tops = |shift: u32| (hi >> shift) & 0x0303_0303;
    let t0 = tops(0) | tops(2) << 32;
    let t1 = tops(4) | tops(6) << 32;
    let a = (lo & nib) | (t0 << 4);
    let b = ((lo >> 4) & nib) | (t1 << 4);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

#[inline(always)]
unsafe fn q3_k_body(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let d = super_scales(wb.d, [0; 2], ab);
        let stored = q3_k_scales(&wb.scales);
        let sc = _mm_sub_epi8(_mm_loadu_si128(stored.as_ptr().cast()), _mm_set1_epi8(32));
        // Quants taken as q + 4 (0..=7): the offset comes off as 4 * sum(sc * bsum).
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums(ab));
        let mut s = _mm256_slli_epi32::<2>(_mm256_sub_epi32(_mm256_setzero_si256(), offset));
        // High bit of vector k of half h at bit 4h + k: shifting the whole word right one
        // step at a time keeps each byte's own next bit at bit 0 for eight steps.
        let mut hm = load(wb.hmask.as_ptr());
        for half in 0..2 {
            let mut q = crumbs(load(wb.qs.as_ptr().add(32 * half)));
            for q in &mut q {
                let high = _mm256_slli_epi16::<2>(_mm256_and_si256(hm, one));
                *q = _mm256_or_si256(*q, high);
                hm = _mm256_srli_epi16::<1>(hm);
            }
            s = _mm256_add_epi32(s, half_16(q, ab, half, sc));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------
// Sub-blocks of 32: Q4_K, Q5_K. Each 64 elements take 32 bytes of nibbles, low nibbles
// first.

/// Scales 0..8 in bytes 0..8 and minimums 0..8 in bytes 8..16, unpacked from the 12-byte
/// layout `scale_min_k4` describes, four bytes at a time.
#[inline(always)]
fn scales_mins_k4(s: &[u8; 12]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    [
        a & LOW6,
        (c & LOW4) | ((a >> 6) & TOP2) << 4,
        b & LOW6,
        ((c >> 4) & LOW4) | ((b >> 6) & TOP2) << 4,
    ]
}

/// The scale and minimum part of a Q4_K/Q5_K super-block: (the scales as i16 in both
/// halves, the minimums' contribution `-dmin * d_a * sum(m_j * bsums_j)` as four f32).
#[inline(always)]
unsafe fn k4_header(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    a: &BlockQ8K,
) -> (__m128, __m256i, __m128) {
    let ds = super_scales(d, dmin, a);
    let [s0, s1, s2, s3] = scales_mins_k4(scales);
    let sm = _mm256_cvtepu8_epi16(_mm_set_epi32(s3 as i32, s2 as i32, s1 as i32, s0 as i32));
    let bs = bsums(a);
    // Pairs of 16-element sums: one per 32-element sub-block, in order.
    let bs32 = _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    );
    let m = _mm_madd_epi16(_mm256_extracti128_si256::<1>(sm), bs32);
    let dmin = _mm_shuffle_ps::<0b01_01_01_01>(ds, ds);
    let min_term = _mm_mul_ps(dmin, _mm_cvtepi32_ps(m));
    let sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
    (ds, sc, min_term)
}

/// i16 scale `j` of `sc` in every lane.
#[inline(always)]
unsafe fn scale_k4(sc: __m256i, j: usize) -> __m256i {
    let idx = (2 * j as i32) | (2 * j as i32 + 1) << 8;
    _mm256_shuffle_epi8(sc, _mm256_set1_epi16(idx as i16))
}

#[inline(always)]
unsafe fn q4_k_body(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let lo4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let (d, sc, m) = k4_header(wb.d, wb.dmin, &wb.scales, ab);
        mins = _mm_add_ps(mins, m);
        let mut s = _mm256_setzero_si256();
        for j in 0..4 {
            let qb = load(wb.qs.as_ptr().add(32 * j));
            let ql = _mm256_and_si256(qb, lo4);
            let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(qb), lo4);
            let pl = dot_scaled(ql, load_y(ab, 64 * j), scale_k4(sc, 2 * j));
            let ph = dot_scaled(qh, load_y(ab, 64 * j + 32), scale_k4(sc, 2 * j + 1));
            s = _mm256_add_epi32(s, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc) - hsum_128(mins)
}

#[inline(always)]
unsafe fn q5_k_body(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let lo4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let (d, sc, m) = k4_header(wb.d, wb.dmin, &wb.scales, ab);
        mins = _mm_add_ps(mins, m);
        // The fifth bit of sub-block j at bit j of each byte: as in Q3_K, shifting the
        // word one step at a time brings each byte's next bit to bit 0.
        let mut hb = load(wb.qh.as_ptr());
        let mut s = _mm256_setzero_si256();
        for j in 0..4 {
            let qb = load(wb.qs.as_ptr().add(32 * j));
            let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one));
            hb = _mm256_srli_epi16::<1>(hb);
            let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one));
            hb = _mm256_srli_epi16::<1>(hb);
            let ql = _mm256_or_si256(_mm256_and_si256(qb, lo4), hl);
            let qh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(qb), lo4), hh);
            let pl = dot_scaled(ql, load_y(ab, 64 * j), scale_k4(sc, 2 * j));
            let ph = dot_scaled(qh, load_y(ab, 64 * j + 32), scale_k4(sc, 2 * j + 1));
            s = _mm256_add_epi32(s, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc) - hsum_128(mins)
}

#[inline(always)]
unsafe fn hsum_128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

// ---------------------------------------------------------------------------------------
// Q5_0 and Q5_1: Q4_0 / Q4_1 with a fifth bit per element in a 32-bit mask.

/// 0xff in byte `j` where bit `j` of `mask` is set, else 0.
#[inline(always)]
unsafe fn bytes_from_bits(mask: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(mask));
    // Byte j takes mask byte j / 8, then every bit but j % 8 is forced on.
    let spread = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let v = _mm256_shuffle_epi8(v, spread);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(v, others), _mm256_set1_epi64x(-1))
}

#[inline(always)]
unsafe fn block_q5_0<const VNNI: bool>(w: &BlockQ5_0, a: &BlockQ8_0) -> (__m256, __m256) {
    // A clear fifth bit means q - 16 is negative: set its top four bits instead.
    let high = bytes_from_bits(w.qh);
    let x = _mm256_or_si256(
        nibbles_256(&w.qs),
        _mm256_andnot_si256(high, _mm256_set1_epi8(0xf0u8 as i8)),
    );
    let y = _mm256_loadu_si256(a.qs.as_ptr().cast());
    let s = _mm256_cvtepi32_ps(dot_ss_256::<VNNI>(x, y));
    (_mm256_broadcastss_ps(scale_product(w.d, a.d)), s)
}

/// A plain loop, not `avx2_blocks` with a closure: a closure defined here, outside any
/// `#[target_feature]` function, would not inherit the caller's features, and the
/// intrinsics inside it would become calls.
#[inline(always)]
unsafe fn q5_0_body<const VNNI: bool>(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut wp = w.chunks_exact(2);
    let mut ap = a.chunks_exact(2);
    for (wc, ac) in (&mut wp).zip(&mut ap) {
        let (d0, s0) = block_q5_0::<VNNI>(&wc[0], &ac[0]);
        let (d1, s1) = block_q5_0::<VNNI>(&wc[1], &ac[1]);
        acc0 = _mm256_fmadd_ps(d0, s0, acc0);
        acc1 = _mm256_fmadd_ps(d1, s1, acc1);
    }
    if let (Some(wb), Some(ab)) = (wp.remainder().first(), ap.remainder().first()) {
        let (d, s) = block_q5_0::<VNNI>(wb, ab);
        acc0 = _mm256_fmadd_ps(d, s, acc0);
    }
    hsum_ps(_mm256_add_ps(acc0, acc1))
}

/// As `block_q4_1`: (d_w * d_a broadcast, the i32 sums as f32, lane 1 = m_w * s_a).
#[inline(always)]
unsafe fn block_q5_1<const VNNI: bool>(w: &BlockQ5_1, a: &BlockQ8_1) -> (__m256, __m256, __m128) {
    let high = _mm256_and_si256(bytes_from_bits(w.qh), _mm256_set1_epi8(0x10));
    let q = _mm256_or_si256(nibbles_256(&w.qs), high);
    let y = _mm256_loadu_si256(a.qs.as_ptr().cast());
    let s = _mm256_cvtepi32_ps(dot_us_256::<VNNI>(q, y));
    let wh = bits(w.d) | bits(w.m) << 16;
    let ah = bits(a.d) | bits(a.s) << 16;
    let v = _mm_cvtph_ps(_mm_cvtsi64_si128((wh | ah << 32) as i64));
    let p = _mm_mul_ps(v, _mm_movehl_ps(v, v));
    (_mm256_broadcastss_ps(p), s, p)
}

#[inline(always)]
unsafe fn q5_1_body<const VNNI: bool>(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut ms = _mm_setzero_ps();
    let mut wp = w.chunks_exact(2);
    let mut ap = a.chunks_exact(2);
    for (wc, ac) in (&mut wp).zip(&mut ap) {
        let (d0, s0, p0) = block_q5_1::<VNNI>(&wc[0], &ac[0]);
        let (d1, s1, p1) = block_q5_1::<VNNI>(&wc[1], &ac[1]);
        acc0 = _mm256_fmadd_ps(d0, s0, acc0);
        acc1 = _mm256_fmadd_ps(d1, s1, acc1);
        ms = _mm_add_ps(ms, _mm_add_ps(p0, p1));
    }
    if let (Some(wb), Some(ab)) = (wp.remainder().first(), ap.remainder().first()) {
        let (d, s, p) = block_q5_1::<VNNI>(wb, ab);
        acc0 = _mm256_fmadd_ps(d, s, acc0);
        ms = _mm_add_ps(ms, p);
    }
    hsum_ps(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(ms))
}

macro_rules! q5_dot {
    ($avx2:ident, $avxvnni:ident, $avx512:ident, $body:ident, $wt:ty, $at:ty) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2(w: &[$wt], a: &[$at]) -> f32 {
            $body::<false>(w, a)
        }
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $avxvnni(w: &[$wt], a: &[$at]) -> f32 {
            $body::<true>(w, a)
        }
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        unsafe fn $avx512(w: &[$wt], a: &[$at]) -> f32 {
            $body::<false>(w, a)
        }
    };
}

q5_dot!(
    avx2_q5_0,
    avxvnni_q5_0,
    avx512_q5_0,
    q5_0_body,
    BlockQ5_0,
    BlockQ8_0
);
q5_dot!(
    avx2_q5_1,
    avxvnni_q5_1,
    avx512_q5_1,
    q5_1_body,
    BlockQ5_1,
    BlockQ8_1
);

// ---------------------------------------------------------------------------------------
// The Q8_K quantizer, byte-exact with the scalar one: the same signed maximum (the first
// of largest magnitude), the same f32 scale, products rounded to nearest-even.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    let sign = _mm256_set1_ps(-0.0);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let p = xs.as_ptr();
        // `max(|v|, m)` keeps `m` where v is NaN, as the scalar `>` comparison does.
        let mut m = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i))), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        if amax == 0.0 {
            b.d = [0; 4];
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for i in 0..QK_K / 8 {
            let v = _mm256_loadu_ps(p.add(8 * i));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_andnot_ps(sign, v),
                target,
            ));
            if hit != 0 {
                max = xs[8 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let q = b.qs.as_mut_ptr();
        for g in 0..QK_K / 32 {
            let mut v = [_mm256_setzero_si256(); 4];
            for (k, v) in v.iter_mut().enumerate() {
                let x = _mm256_mul_ps(_mm256_loadu_ps(p.add(32 * g + 8 * k)), is);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                *v = _mm256_cvtps_epi32(r);
            }
            // Saturating packs clamp at 127 as the scalar `min(127)` does; nothing falls
            // below -127, since |iscale * v| <= 127.
            let bq = _mm256_packs_epi16(
                _mm256_packs_epi32(v[0], v[1]),
                _mm256_packs_epi32(v[2], v[3]),
            );
            let bq = _mm256_permutevar8x32_epi32(bq, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(q.add(32 * g).cast(), bq);
            // Sums of 16 bytes: offset to unsigned, `vpsadbw` sums each 8, pairs add up.
            let u = _mm256_xor_si256(bq, _mm256_set1_epi8(-128));
            let sad = _mm256_sad_epu8(u, _mm256_setzero_si256());
            let pairs = _mm256_add_epi64(sad, _mm256_srli_si256::<8>(sad));
            let s0 = _mm256_extract_epi32::<0>(pairs) - 16 * 128;
            let s1 = _mm256_extract_epi32::<4>(pairs) - 16 * 128;
            b.bsums[2 * g] = (s0 as i16).to_le_bytes();
            b.bsums[2 * g + 1] = (s1 as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

// ---------------------------------------------------------------------------------------
// Tiles of four weight rows by four activation rows (see the tile section of x86.rs): each
// super-block is decoded once for the four tokens. A 512-bit vector holds 64 quants that
// `vpmaddubsw` pairs into i16, and `vpdpwssd` multiplies those pairs by the sub-block
// scales and accumulates in i32: the super-block's scaled sum stays integer, with one
// float multiply-add per super-block and token.

/// `_mm512_permutexvar_epi16` indices: output lane `j` takes i16 lane `first + j / per`.
#[inline(always)]
unsafe fn spread_idx(first: i16, per: usize) -> __m512i {
    let mut idx = [0i16; 32];
    for (j, v) in idx.iter_mut().enumerate() {
        *v = first + (j / per) as i16;
    }
    _mm512_loadu_si512(idx.as_ptr().cast())
}

/// Q4_K: vector `k` holds chunk `k`'s low nibbles (sub-block 2k) then its high nibbles
/// (sub-block 2k + 1), which lines up with 64 contiguous activation bytes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q4_k_tile(w: [&[BlockQ4K]; 4], a: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
    let lo4 = _mm512_set1_epi8(0x0f);
    let idx = [0, 1, 2, 3].map(|k| spread_idx(2 * k, 16));
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for i in 0..a[0].len() {
        // The activations' 16-element sums paired into one sum per 32-element sub-block.
        let bs = [0, 1, 2, 3].map(|t| {
            let b = bsums(&a[t][i]);
            _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b))
        });
        for r in 0..4 {
            let wb = &w[r][i];
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((bits(wb.d) | bits(wb.dmin) << 16) as i32));
            let d = _mm512_broadcastss_ps(dm);
            let dmin = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
            let [s0, s1, s2, s3] = scales_mins_k4(&wb.scales);
            let sm =
                _mm256_cvtepu8_epi16(_mm_set_epi32(s3 as i32, s2 as i32, s1 as i32, s0 as i32));
            let mins = _mm256_extracti128_si256::<1>(sm);
            let sm = _mm512_castsi256_si512(sm);
            let sc = idx.map(|ix| _mm512_permutexvar_epi16(ix, sm));
            let q = [0, 1, 2, 3].map(|k| {
                let v = _mm512_broadcast_i64x4(load(wb.qs.as_ptr().add(32 * k)));
                _mm512_and_si512(_mm512_mask_srli_epi16::<4>(v, 0xffff_0000, v), lo4)
            });
            for t in 0..4 {
                let ab = &a[t][i];
                let mut s = _mm512_setzero_si512();
                for k in 0..4 {
                    let y = _mm512_loadu_si512(ab.qs.as_ptr().add(64 * k).cast());
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(q[k], y), sc[k]);
                }
                let m = _mm512_cvtepi32_ps(_mm512_zextsi128_si512(_mm_madd_epi16(mins, bs[t])));
                let da = _mm512_set1_ps(ab.d());
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(s), acc[r][t]);
                acc[r][t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), m, acc[r][t]);
            }
        }
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_ps(v)))
}

/// Q6_K: per 128-element half, vector 0 holds elements 0..64 (low nibbles of `ql[0..64]`
/// with `qh` bits 0-1 / 2-3) and vector 1 elements 64..128 (high nibbles, bits 4-5 / 6-7).
/// Quants stay unsigned (0..=63); the -32 offset comes off through the activations'
/// 16-element sums, seeded into the accumulator by one more `vpdpwssd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512vnni_q6_k_tile(w: [&[BlockQ6K]; 4], a: [&[BlockQ8K]; 4]) -> [[f32; 4]; 4] {
    let lo4 = _mm512_set1_epi8(0x0f);
    // Per 256-bit half of a vector: which `qh` bits, and how far they shift into bits 4-5.
    let half = |lo: i8, hi: i8| _mm512_inserti64x4::<1>(_mm512_set1_epi8(lo), _mm256_set1_epi8(hi));
    let (mask0, mask1) = (half(0x03, 0x0c), half(0x30, 0xc0u8 as i8));
    let shl0 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let shr1 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2));
    let idx = [0, 1, 2, 3].map(|k| spread_idx(4 * k, 8));
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for i in 0..a[0].len() {
        for r in 0..4 {
            let wb = &w[r][i];
            let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                bits(wb.d) as i32
            ))));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.scales.as_ptr().cast()));
            // -32 * sc per 16-element sub-block, against the activations' sums.
            let off = _mm512_zextsi256_si512(_mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32)));
            let sc = idx.map(|ix| _mm512_permutexvar_epi16(ix, _mm512_castsi256_si512(sc16)));
            let mut q = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let l = _mm512_loadu_si512(wb.ql.as_ptr().add(64 * h).cast());
                let hb = _mm512_broadcast_i64x4(load(wb.qh.as_ptr().add(32 * h)));
                let h0 = _mm512_sllv_epi16(_mm512_and_si512(hb, mask0), shl0);
                let h1 = _mm512_srlv_epi16(_mm512_and_si512(hb, mask1), shr1);
                q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, lo4), h0);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(l), lo4);
                q[2 * h + 1] = _mm512_or_si512(hi, h1);
            }
            for t in 0..4 {
                let ab = &a[t][i];
                let bs = _mm512_zextsi256_si512(bsums(ab));
                let mut s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), bs, off);
                for k in 0..4 {
                    let y = _mm512_loadu_si512(ab.qs.as_ptr().add(64 * k).cast());
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(q[k], y), sc[k]);
                }
                let dd = _mm512_mul_ps(d, _mm512_set1_ps(ab.d()));
                acc[r][t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_ps(v)))
}

fn q4_k_tile_avx512vnni(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q4_k_tile(w.map(blocks::<BlockQ4K>), a.map(blocks::<BlockQ8K>)) }
}

fn q6_k_tile_avx512vnni(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    // SAFETY: installed only for Avx512Vnni, after `supported` detected it.
    unsafe { avx512vnni_q6_k_tile(w.map(blocks::<BlockQ6K>), a.map(blocks::<BlockQ8K>)) }
}

// ---------------------------------------------------------------------------------------
// Row-exact batches (`Kernels::vec_dot_4rows_n`): one weight row against up to four
// activation rows, each sum taking the float operations of `q4_k_body` / `q6_k_body` in
// their order, compiled with the same features as the AVX-512 `vec_dot`; the quants and
// sub-block scales are unpacked once per super-block for all activation rows. Integer
// sums may be regrouped: they are exact.

#[inline(always)]
unsafe fn q4_k_body_n<const T: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; T]) -> [f32; T] {
    let lo4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins = [_mm_setzero_ps(); T];
    for (i, wb) in w.iter().enumerate() {
        // `k4_header`'s weight side.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((bits(wb.d) | bits(wb.dmin) << 16) as i32));
        let [s0, s1, s2, s3] = scales_mins_k4(&wb.scales);
        let sm = _mm256_cvtepu8_epi16(_mm_set_epi32(s3 as i32, s2 as i32, s1 as i32, s0 as i32));
        let sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
        let mut q = [[_mm256_setzero_si256(); 2]; 4];
        let mut f = [[_mm256_setzero_si256(); 2]; 4];
        for j in 0..4 {
            let qb = load(wb.qs.as_ptr().add(32 * j));
            q[j] = [
                _mm256_and_si256(qb, lo4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(qb), lo4),
            ];
            f[j] = [scale_k4(sc, 2 * j), scale_k4(sc, 2 * j + 1)];
        }
        for t in 0..T {
            let ab = &a[t][i];
            let ds = _mm_mul_ps(dd, _mm_set1_ps(ab.d()));
            let bs = bsums(ab);
            let bs32 = _mm_hadd_epi16(
                _mm256_castsi256_si128(bs),
                _mm256_extracti128_si256::<1>(bs),
            );
            let m = _mm_madd_epi16(_mm256_extracti128_si256::<1>(sm), bs32);
            let dmin = _mm_shuffle_ps::<0b01_01_01_01>(ds, ds);
            mins[t] = _mm_add_ps(mins[t], _mm_mul_ps(dmin, _mm_cvtepi32_ps(m)));
            let mut s = _mm256_setzero_si256();
            for j in 0..4 {
                let pl = dot_scaled(q[j][0], load_y(ab, 64 * j), f[j][0]);
                let ph = dot_scaled(q[j][1], load_y(ab, 64 * j + 32), f[j][1]);
                s = _mm256_add_epi32(s, _mm256_add_epi32(pl, ph));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = hsum_ps(acc[t]) - hsum_128(mins[t]);
    }
    out
}

#[inline(always)]
unsafe fn q6_k_body_n<const T: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; T]) -> [f32; T] {
    let lo4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, wb) in w.iter().enumerate() {
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(bits(wb.d) as i32));
        let sc = _mm_loadu_si128(wb.scales.as_ptr().cast());
        let sc16 = _mm256_cvtepi8_epi16(sc);
        let mut q = [_mm256_setzero_si256(); 8];
        let mut f = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let ql0 = load(wb.ql.as_ptr().add(64 * half));
            let ql1 = load(wb.ql.as_ptr().add(64 * half + 32));
            let qh = load(wb.qh.as_ptr().add(32 * half));
            // As `q6_k_body`.
            q[4 * half] = _mm256_or_si256(
                _mm256_and_si256(ql0, lo4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
            );
            q[4 * half + 1] = _mm256_or_si256(
                _mm256_and_si256(ql1, lo4),
                _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c))),
            );
            q[4 * half + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), lo4),
                _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
            );
            q[4 * half + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), lo4),
                _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xc0u8 as i8))),
            );
            for k in 0..4 {
                f[4 * half + k] = scale_pair(sc, 8 * half + 2 * k);
            }
        }
        for t in 0..T {
            let ab = &a[t][i];
            let d = _mm_mul_ps(dd, _mm_set1_ps(ab.d()));
            let offset = _mm256_madd_epi16(sc16, bsums(ab));
            let mut s = _mm256_slli_epi32::<5>(_mm256_sub_epi32(_mm256_setzero_si256(), offset));
            for (k, (q, f)) in q.iter().zip(&f).enumerate() {
                s = _mm256_add_epi32(s, dot_scaled(*q, load_y(ab, 32 * k), *f));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = hsum_ps(acc[t]);
    }
    out
}

/// A `VecDot4N` over a one-row body generic in its activation rows: the weight rows one
/// at a time, the activation rows in groups of four, compiled with the features of the
/// `vec_dot` it must match bit for bit. `k_tile` makes a prefill tile of the same body,
/// for CPUs without AVX-512 VNNI's tiles.
macro_rules! k_rows_n {
    ($name:ident, $inner:ident, $body:ident, $wt:ty, $feat:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const T: usize>(w: &[$wt], a: [&[BlockQ8K]; T]) -> [f32; T] {
            $body(w, a)
        }
        fn $name(w: &[&[u8]; 4], a: &[&[u8]], out: &mut [[f32; 4]]) {
            assert_eq!(a.len(), out.len());
            for (a, out) in a.chunks(4).zip(out.chunks_mut(4)) {
                let at = |t: usize| blocks::<BlockQ8K>(a[t]);
                for r in 0..4 {
                    let wr = blocks::<$wt>(w[r]);
                    // SAFETY: installed only for levels with these features, after
                    // `supported` detected them.
                    let v: &[f32] = unsafe {
                        match a.len() {
                            1 => &$inner::<1>(wr, [at(0)]),
                            2 => &$inner::<2>(wr, [at(0), at(1)]),
                            3 => &$inner::<3>(wr, [at(0), at(1), at(2)]),
                            _ => &$inner::<4>(wr, [at(0), at(1), at(2), at(3)]),
                        }
                    };
                    for (o, v) in out.iter_mut().zip(v) {
                        o[r] = *v;
                    }
                }
            }
        }
    };
}

macro_rules! k_tile {
    ($tile:ident, $inner:ident, $wt:ty) => {
        fn $tile(w: &[&[u8]; 4], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
            let a = a.map(blocks::<BlockQ8K>);
            // SAFETY: installed only for levels with $inner's features, after `supported`
            // detected them.
            w.map(|w| unsafe { $inner::<4>(blocks::<$wt>(w), a) })
        }
    };
}

k_rows_n!(
    q4_k_rows_n_avx512vnni,
    q4_k_n,
    q4_k_body_n,
    BlockQ4K,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl"
);
k_rows_n!(
    q6_k_rows_n_avx512vnni,
    q6_k_n,
    q6_k_body_n,
    BlockQ6K,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl"
);
k_rows_n!(
    q4_k_rows_n_avx2,
    q4_k_n_avx2,
    q4_k_body_n,
    BlockQ4K,
    "avx2,fma,f16c"
);
k_rows_n!(
    q6_k_rows_n_avx2,
    q6_k_n_avx2,
    q6_k_body_n,
    BlockQ6K,
    "avx2,fma,f16c"
);
k_tile!(q4_k_tile_avx2, q4_k_n_avx2, BlockQ4K);
k_tile!(q6_k_tile_avx2, q6_k_n_avx2, BlockQ6K);

// ---------------------------------------------------------------------------------------
// Packed Q4_K (`BlockQ4Kx4`) on AVX2: the four rows side by side in 64-bit lanes, so the
// multiply-adds leave each row's sums in its own lane pair. A sub-block's four rounds of
// eight elements add up in i16 (at most 4 * 2 * 15 * 127) before one `vpmaddwd` applies
// the four rows' scales; the minimums' term takes two more per super-block. Each
// super-block then costs two float multiply-adds per activation row for all four rows.

/// `out[t][r]`: row `r` of the packed group against activation row `t`.
#[inline(always)]
unsafe fn q4_kx4_body<const T: usize>(w: &[BlockQ4Kx4], a: [&[BlockQ8K]; T]) -> [[f32; 4]; T] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "rows of unequal length"
    );
    let lo4 = _mm256_set1_epi8(0x0f);
    // Four scale bytes, each over the four i16 lanes of its row.
    let rep4 = _mm_set_epi8(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let bcast8 = |p: *const i8| _mm256_set1_epi64x(std::ptr::read_unaligned(p.cast::<i64>()));
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, wb) in w.iter().enumerate() {
        let (d, dmin) = (lane_pair_f16(&wb.d), lane_pair_f16(&wb.dmin));
        let mins01 = _mm256_cvtepu8_epi16(_mm_loadu_si128(wb.mn.as_ptr().cast()));
        let mins23 = _mm256_cvtepu8_epi16(_mm_loadu_si128(wb.mn.as_ptr().add(16).cast()));
        let mut s = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let scale = |j: usize| {
                let b = std::ptr::read_unaligned(wb.sc.as_ptr().add(4 * j).cast::<i32>());
                _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi32_si128(b), rep4))
            };
            let (scl, sch) = (scale(2 * c), scale(2 * c + 1));
            let mut pl = [_mm256_setzero_si256(); T];
            let mut ph = [_mm256_setzero_si256(); T];
            for p in 0..4 {
                let q = load(wb.qs.as_ptr().add(32 * (4 * c + p)));
                let ql = _mm256_and_si256(q, lo4);
                let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q), lo4);
                for t in 0..T {
                    let y = a[t][i].qs.as_ptr().add(64 * c + 8 * p);
                    pl[t] = _mm256_add_epi16(pl[t], _mm256_maddubs_epi16(ql, bcast8(y)));
                    ph[t] = _mm256_add_epi16(ph[t], _mm256_maddubs_epi16(qh, bcast8(y.add(32))));
                }
            }
            for t in 0..T {
                let v =
                    _mm256_add_epi32(_mm256_madd_epi16(pl[t], scl), _mm256_madd_epi16(ph[t], sch));
                s[t] = _mm256_add_epi32(s[t], v);
            }
        }
        for t in 0..T {
            let ab = &a[t][i];
            let bs = bsums(ab);
            // Sums of the eight 32-element sub-blocks, in both halves.
            let b = _mm_hadd_epi16(
                _mm256_castsi256_si128(bs),
                _mm256_extracti128_si256::<1>(bs),
            );
            let b = _mm256_broadcastsi128_si256(b);
            // [r0 r0 r2 r2 | r1 r1 r3 r3] -> lane pairs in row order.
            let m = _mm256_hadd_epi32(_mm256_madd_epi16(mins01, b), _mm256_madd_epi16(mins23, b));
            let m = _mm256_permute4x64_epi64::<0b11_01_10_00>(m);
            let da = _mm256_set1_ps(ab.d());
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(s[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(m), acc[t]);
        }
    }
    lane_pairs(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_kx4_avx2<const T: usize>(w: &[BlockQ4Kx4], a: [&[BlockQ8K]; T]) -> [[f32; 4]; T] {
    q4_kx4_body::<T>(w, a)
}

// SAFETY (both): installed only for AVX2 levels, after `supported` detected them.
fn q4_kx4_dec(w: &[u8], a: &[u8]) -> [f32; 4] {
    unsafe { q4_kx4_avx2::<1>(blocks(w), [blocks(a)])[0] }
}

fn q4_kx4_tile(w: &[u8], a: &[&[u8]; 4]) -> [[f32; 4]; 4] {
    transpose4(unsafe { q4_kx4_avx2::<4>(blocks(w), a.map(blocks::<BlockQ8K>)) })
}
