//! Weight rows to a panel's int8 values and f32 scales, per type. A panel row `m` of
//! block `b` lives at `q[(b * TILE + m) * block..]`, its scale at `scale[b * TILE + m]`;
//! for the folded K-quants (see `Format::folded`), its two digit rows at
//! `q[((2b + digit) * TILE + m) * 64..]`, its super-block scale at `scale[sb * TILE + m]`
//! and Q4_K's offsets at `min[(sb * TILE + m) * 8 + j]`.
//!
//! The loops are plain so that the compiler vectorizes them; `row` instantiates them
//! inside an AVX-512 function where the CPU has it (the K-quants use AVX-512BW directly).

use super::TILE;
use crate::quant::legacy::h;
use crate::quant::GgmlType;

/// Decodes weight rows of type `t` (at most `TILE`) into a panel. The rows advance
/// together, 256 values at a time, so the panel fills one stretch at a time.
pub(super) fn panel(t: GgmlType, rows: &[&[u8]], q: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::available() {
        // SAFETY: `available` implies AVX-512 and F16C (every AMX CPU has them).
        return unsafe { panel_avx512(t, rows, q, scale, min) };
    }
    panel_any::<false>(t, rows, q, scale, min)
}

/// `panel` without the vector decoders: the tests' reference for them.
#[cfg(test)]
pub(super) fn panel_portable(
    t: GgmlType,
    rows: &[&[u8]],
    q: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    panel_any::<false>(t, rows, q, scale, min)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn panel_avx512(
    t: GgmlType,
    rows: &[&[u8]],
    q: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    panel_any::<true>(t, rows, q, scale, min)
}

#[inline(always)]
fn panel_any<const F16C: bool>(
    t: GgmlType,
    rows: &[&[u8]],
    q: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    // Blocks (or super-blocks) per 256 values, and the bytes of one.
    let (per, bytes) = match t {
        GgmlType::Q4_K | GgmlType::Q6_K => (1, t.block_bytes()),
        _ => (8, t.block_bytes()),
    };
    let units = rows.first().map_or(0, |r| r.len() / bytes);
    for u0 in (0..units).step_by(per) {
        let u1 = (u0 + per).min(units);
        for (m, row) in rows.iter().enumerate() {
            row_any::<F16C>(t, &row[u0 * bytes..u1 * bytes], u0, m, q, scale, min);
        }
    }
}

/// An f16 scale; `F16C`: through the CPU's converter, which the `half` crate's runtime
/// check would keep out of the loop.
#[inline(always)]
fn half<const F16C: bool>(b: [u8; 2]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if F16C {
        use std::arch::x86_64::*;
        // SAFETY: instantiated with F16C only inside `row_avx512`, which enables f16c.
        return unsafe {
            _mm_cvtss_f32(_mm_cvtph_ps(
                _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
            ))
        };
    }
    h(b)
}

/// Decodes the units (blocks, or super-blocks for K-quants) in `row`, the first of which
/// is unit `u0` of its row, into panel row `m`.
#[inline(always)]
fn row_any<const F16C: bool>(
    t: GgmlType,
    row: &[u8],
    u0: usize,
    m: usize,
    q: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    use GgmlType as T;
    match t {
        T::Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate().map(|(b, x)| (b + u0, x)) {
                scale[b * TILE + m] = half::<F16C>([blk[0], blk[1]]);
                q[(b * TILE + m) * 32..][..32].copy_from_slice(&blk[2..34]);
            }
        }
        T::Q4_0 => {
            for (b, blk) in row.chunks_exact(18).enumerate().map(|(b, x)| (b + u0, x)) {
                scale[b * TILE + m] = half::<F16C>([blk[0], blk[1]]);
                nibbles(
                    blk[2..18].try_into().unwrap(),
                    (&mut q[(b * TILE + m) * 32..][..32]).try_into().unwrap(),
                    8,
                );
            }
        }
        T::Q4_1 => {
            for (b, blk) in row.chunks_exact(20).enumerate().map(|(b, x)| (b + u0, x)) {
                scale[b * TILE + m] = half::<F16C>([blk[0], blk[1]]);
                min[b * TILE + m] = half::<F16C>([blk[2], blk[3]]);
                nibbles(
                    blk[4..20].try_into().unwrap(),
                    (&mut q[(b * TILE + m) * 32..][..32]).try_into().unwrap(),
                    0,
                );
            }
        }
        T::Q4_K => {
            for (sb, blk) in row
                .chunks_exact(144)
                .enumerate()
                .map(|(sb, x)| (sb + u0, x))
            {
                let (d, dmin) = (
                    half::<F16C>([blk[0], blk[1]]),
                    half::<F16C>([blk[2], blk[3]]),
                );
                let (sc, mn) = scales_mins(blk[4..16].try_into().unwrap());
                let mins = &mut min[(sb * TILE + m) * 8..][..8];
                for (o, &mn) in mins.iter_mut().zip(&mn) {
                    *o = -dmin * mn as f32;
                }
                scale[sb * TILE + m] = d;
                for c in 0..4 {
                    // Sub-blocks 2c and 2c + 1 share 32 bytes: low nibbles, then high.
                    let src: &[u8; 32] = blk[16 + c * 32..][..32].try_into().unwrap();
                    let (hi, lo) = digits(q, sb * 4 + c, m);
                    q4k_chunk::<F16C>(src, [sc[2 * c], sc[2 * c + 1]], hi, lo);
                }
            }
        }
        T::Q6_K => {
            for (sb, blk) in row
                .chunks_exact(210)
                .enumerate()
                .map(|(sb, x)| (sb + u0, x))
            {
                scale[sb * TILE + m] = half::<F16C>([blk[208], blk[209]]);
                for c in 0..4 {
                    // Values 64c.. take their low bits from ql[64 * (c / 2)..][..64] and
                    // their high bits from qh[32 * (c / 2)..][..32], shifted by c % 2.
                    let (h, p) = (c / 2, c % 2);
                    let ql: &[u8; 64] = blk[h * 64..][..64].try_into().unwrap();
                    let qh: &[u8; 32] = blk[128 + h * 32..][..32].try_into().unwrap();
                    let sc: [u8; 4] = blk[192 + 4 * c..][..4].try_into().unwrap();
                    let (hi, lo) = digits(q, sb * 4 + c, m);
                    q6k_chunk::<F16C>(ql, qh, p == 1, sc.map(|x| x as i8), hi, lo);
                }
            }
        }
        _ => unreachable!("{t} has no AMX format"),
    }
}

/// 16 packed bytes to 32 values minus `offset`: element `j` in the low nibble of byte `j`,
/// element `j + 16` in the high nibble.
#[inline(always)]
fn nibbles(src: &[u8; 16], dst: &mut [u8; 32], offset: u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; the pointers cover 16 and 32 bytes.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().cast());
            let (mask, off) = (_mm_set1_epi8(0x0f), _mm_set1_epi8(offset as i8));
            let lo = _mm_sub_epi8(_mm_and_si128(v, mask), off);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), off);
            _mm_storeu_si128(dst.as_mut_ptr().cast(), lo);
            _mm_storeu_si128(dst.as_mut_ptr().add(16).cast(), hi);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (lo, hi) = dst.split_at_mut(16);
        for ((l, h), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(src) {
            *l = (s & 0x0f).wrapping_sub(offset);
            *h = (s >> 4).wrapping_sub(offset);
        }
    }
}

/// Q4_K's eight 6-bit scales and mins (see `scale_min_k4`), four at a time in 32-bit
/// words: the low four of each are 6 bits of one byte, the high four 4 bits of a shared
/// byte plus the top 2 bits of a low one's.
#[inline(always)]
pub(super) fn scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes(q[4 * i..4 * i + 4].try_into().unwrap());
    let (a, b, c) = (word(0), word(1), word(2));
    let low6 = 0x3f3f_3f3f;
    let (sc_lo, mn_lo) = (a & low6, b & low6);
    let sc_hi = (c & 0x0f0f_0f0f) | ((a >> 6) & 0x0303_0303) << 4;
    let mn_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 6) & 0x0303_0303) << 4;
    let join = |lo: u32, hi: u32| (lo as u64 | (hi as u64) << 32).to_le_bytes();
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// Panel row `m`'s two digit rows (hi, then lo) of 64-value block `b` of a folded type.
#[inline(always)]
fn digits(q: &mut [u8], b: usize, m: usize) -> (&mut [u8; 64], &mut [u8; 64]) {
    let at = b * 2 * TILE * 64 + m * 64;
    let (hi, lo) = q[at..at + TILE * 64 + 64].split_at_mut(TILE * 64);
    (
        (&mut hi[..64]).try_into().unwrap(),
        (&mut lo[..]).try_into().unwrap(),
    )
}

/// One weight `w = q * sc` (|w| <= 4096) as the digits `hi * 64 + lo`, `lo` in 0..64 and
/// `hi` in -64..=64: both fit int8, and the tiles' int32 sums recombine them exactly.
#[inline(always)]
fn split(w: i16) -> (u8, u8) {
    ((w >> 6) as i8 as u8, (w & 63) as u8)
}

/// A Q4_K block of 64 values (32 bytes: low nibbles with scale `sc[0]`, high nibbles
/// with `sc[1]`) as folded digits. `AVX512`: inside a function that enables AVX-512BW.
#[inline(always)]
fn q4k_chunk<const AVX512: bool>(
    src: &[u8; 32],
    sc: [u8; 2],
    hi: &mut [u8; 64],
    lo: &mut [u8; 64],
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: instantiated with AVX512 only inside `panel_avx512`.
        return unsafe { x86::q4k_chunk(src, sc, hi, lo) };
    }
    for i in 0..64 {
        let nib = (src[i % 32] >> (4 * (i / 32))) & 0x0f;
        (hi[i], lo[i]) = split(nib as i16 * sc[i / 32] as i16);
    }
}

/// A Q6_K block of 64 values as folded digits: low bits from `ql` (its high nibbles with
/// `shift`), high bits from `qh` (bits 4·shift.., then 4·shift + 2.. for the second 32),
/// scale `sc[i / 16]`.
#[inline(always)]
fn q6k_chunk<const AVX512: bool>(
    ql: &[u8; 64],
    qh: &[u8; 32],
    shift: bool,
    sc: [i8; 4],
    hi: &mut [u8; 64],
    lo: &mut [u8; 64],
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: instantiated with AVX512 only inside `panel_avx512`.
        return unsafe { x86::q6k_chunk(ql, qh, shift, sc, hi, lo) };
    }
    let s = 4 * shift as u32;
    for i in 0..64 {
        let v = ((ql[i] >> s) & 0x0f) | (((qh[i % 32] >> (s + 2 * (i / 32) as u32)) & 3) << 4);
        (hi[i], lo[i]) = split((v as i16 - 32) * sc[i / 16] as i16);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `w` (32 lanes of i16) as digits: the high ones to `hi`, the low ones to `lo`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn split32(w: __m512i, hi: *mut u8, lo: *mut u8) {
        let h = _mm512_cvtepi16_epi8(_mm512_srai_epi16(w, 6));
        let l = _mm512_cvtepi16_epi8(_mm512_and_si512(w, _mm512_set1_epi16(63)));
        _mm256_storeu_si256(hi.cast(), h);
        _mm256_storeu_si256(lo.cast(), l);
    }

    /// Two i16 scales, one per 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn scales(a: i16, b: i16) -> __m512i {
        _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn q4k_chunk(
        src: &[u8; 32],
        sc: [u8; 2],
        hi: &mut [u8; 64],
        lo: &mut [u8; 64],
    ) {
        let v = _mm256_loadu_si256(src.as_ptr().cast());
        let mask = _mm256_set1_epi8(0x0f);
        let l = _mm512_cvtepu8_epi16(_mm256_and_si256(v, mask));
        let h = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
        let (hp, lp) = (hi.as_mut_ptr(), lo.as_mut_ptr());
        split32(
            _mm512_mullo_epi16(l, _mm512_set1_epi16(sc[0] as i16)),
            hp,
            lp,
        );
        split32(
            _mm512_mullo_epi16(h, _mm512_set1_epi16(sc[1] as i16)),
            hp.add(32),
            lp.add(32),
        );
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn q6k_chunk(
        ql: &[u8; 64],
        qh: &[u8; 32],
        shift: bool,
        sc: [i8; 4],
        hi: &mut [u8; 64],
        lo: &mut [u8; 64],
    ) {
        let mut l = _mm512_loadu_si512(ql.as_ptr().cast());
        if shift {
            l = _mm512_srli_epi16(l, 4);
        }
        let l = _mm512_and_si512(l, _mm512_set1_epi8(0x0f));
        let h = _mm256_loadu_si256(qh.as_ptr().cast());
        let h = _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
        let s = 4 * shift as i16;
        let h = _mm512_srlv_epi16(h, scales(s, s + 2));
        let h = _mm512_slli_epi16(_mm512_and_si512(h, _mm512_set1_epi8(3)), 4);
        let q = _mm512_or_si512(l, h);
        let off = _mm512_set1_epi16(32);
        let q0 = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(q)), off);
        let q1 = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(q, 1)), off);
        let (hp, lp) = (hi.as_mut_ptr(), lo.as_mut_ptr());
        let w0 = _mm512_mullo_epi16(q0, scales(sc[0] as i16, sc[1] as i16));
        let w1 = _mm512_mullo_epi16(q1, scales(sc[2] as i16, sc[3] as i16));
        split32(w0, hp, lp);
        split32(w1, hp.add(32), lp.add(32));
    }
}
