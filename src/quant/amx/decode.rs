//! Weight rows to a panel's int8 values and f32 scales, per type. A panel row `m` of
//! block `b` lives at `q[(b * TILE + m) * block..]`, its scale at `scale[b * TILE + m]`.
//!
//! The loops are plain so that the compiler vectorizes them; `row` instantiates them
//! inside an AVX-512 function where the CPU has it.

use super::TILE;
use crate::quant::kquants::scale_min_k4;
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
                let scales: &[u8; 12] = blk[4..16].try_into().unwrap();
                let qs = &blk[16..144];
                for j in 0..8 {
                    let b = sb * 8 + j;
                    let (sc, mn) = scale_min_k4(j, scales);
                    scale[b * TILE + m] = d * sc as f32;
                    min[b * TILE + m] = -dmin * mn as f32;
                    // Sub-blocks 2c and 2c + 1 share 32 bytes: low nibbles, then high.
                    let src: &[u8; 32] = qs[(j / 2) * 32..(j / 2) * 32 + 32].try_into().unwrap();
                    let dst: &mut [u8; 32] =
                        (&mut q[(b * TILE + m) * 32..][..32]).try_into().unwrap();
                    half_bytes(src, dst, j % 2 == 1);
                }
            }
        }
        T::Q6_K => {
            for (sb, blk) in row
                .chunks_exact(210)
                .enumerate()
                .map(|(sb, x)| (sb + u0, x))
            {
                let (ql, qh) = (&blk[..128], &blk[128..192]);
                let d = half::<F16C>([blk[208], blk[209]]);
                // Sub-block j (16 values) of half `j / 8`: quarter `(j % 8) / 2`, lanes
                // `16 * (j % 2)..` of that quarter's 32.
                for j in 0..16 {
                    let b = sb * 16 + j;
                    scale[b * TILE + m] = d * blk[192 + j] as i8 as f32;
                    let (half, quarter, l0) = (j / 8, (j % 8) / 2, 16 * (j % 2));
                    let lo = &ql[half * 64 + (quarter % 2) * 32 + l0..][..16];
                    let hi = &qh[half * 32 + l0..][..16];
                    let (sl, sh) = (4 * (quarter / 2) as u32, 2 * quarter as u32);
                    let dst = &mut q[(b * TILE + m) * 16..][..16];
                    for ((o, &l), &hb) in dst.iter_mut().zip(lo).zip(hi) {
                        let v = ((l >> sl) & 0x0f) | (((hb >> sh) & 3) << 4);
                        *o = (v as i8 - 32) as u8;
                    }
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

/// The low (or `high`) nibbles of 32 bytes.
#[inline(always)]
fn half_bytes(src: &[u8; 32], dst: &mut [u8; 32], high: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; the pointers cover 32 bytes.
        unsafe {
            let mask = _mm_set1_epi8(0x0f);
            for i in [0, 16] {
                let mut v = _mm_loadu_si128(src.as_ptr().add(i).cast());
                if high {
                    v = _mm_srli_epi16(v, 4);
                }
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), _mm_and_si128(v, mask));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (o, &s) in dst.iter_mut().zip(src) {
        *o = (s >> (4 * high as u32)) & 0x0f;
    }
}
