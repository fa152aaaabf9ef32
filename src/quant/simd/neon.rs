//! aarch64 kernels: Advanced SIMD, 16 bytes per vector, and `sdot` where the CPU has the
//! dotprod extension. Compile-checked on x86-64 hosts; the tests run where aarch64 does.

use std::arch::aarch64::*;

use super::super::kquants::scale_min_k4;
use super::super::legacy::{h, to_h};
use super::super::{
    blocks, blocks_mut, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
    GgmlType, Kernels, QK,
};
use super::Level;

pub(super) fn supported(level: Level) -> bool {
    let neon = std::arch::is_aarch64_feature_detected!("neon");
    match level {
        Level::Scalar => true,
        Level::Neon => neon,
        Level::NeonDotprod => neon && std::arch::is_aarch64_feature_detected!("dotprod"),
        _ => false,
    }
}

type Dot = fn(&[u8], &[u8]) -> f32;

macro_rules! entry {
    ($name:ident: ($($arg:ident: $ty:ty),*) -> $ret:ty = $inner:expr) => {
        fn $name($($arg: $ty),*) -> $ret {
            // SAFETY: `overlay` installs this function only for a level whose features
            // `supported` detected on this CPU.
            unsafe { $inner }
        }
    };
}

entry!(q4_0_neon: (w: &[u8], a: &[u8]) -> f32 = neon_q4_0(blocks(w), blocks(a)));
entry!(q4_0_dotprod: (w: &[u8], a: &[u8]) -> f32 = dotprod_q4_0(blocks(w), blocks(a)));
entry!(q4_1_neon: (w: &[u8], a: &[u8]) -> f32 = neon_q4_1(blocks(w), blocks(a)));
entry!(q4_1_dotprod: (w: &[u8], a: &[u8]) -> f32 = dotprod_q4_1(blocks(w), blocks(a)));
entry!(q8_0_neon: (w: &[u8], a: &[u8]) -> f32 = neon_q8_0(blocks(w), blocks(a)));
entry!(q8_0_dotprod: (w: &[u8], a: &[u8]) -> f32 = dotprod_q8_0(blocks(w), blocks(a)));
entry!(q4_k_neon: (w: &[u8], a: &[u8]) -> f32 = neon_q4_k(blocks(w), blocks(a)));
entry!(q4_k_dotprod: (w: &[u8], a: &[u8]) -> f32 = dotprod_q4_k(blocks(w), blocks(a)));
entry!(q6_k_neon: (w: &[u8], a: &[u8]) -> f32 = neon_q6_k(blocks(w), blocks(a)));
entry!(q6_k_dotprod: (w: &[u8], a: &[u8]) -> f32 = dotprod_q6_k(blocks(w), blocks(a)));
entry!(f32_neon: (w: &[u8], a: &[u8]) -> f32 = neon_f32(w, a));
entry!(f16_neon: (w: &[u8], a: &[u8]) -> f32 = neon_f16(w, a));
entry!(bf16_neon: (w: &[u8], a: &[u8]) -> f32 = neon_bf16(w, a));
entry!(quantize_q8_0_neon: (x: &[f32], o: &mut [u8]) -> () = neon_quantize_q8_0(x, blocks_mut(o)));
entry!(quantize_q8_1_neon: (x: &[f32], o: &mut [u8]) -> () = neon_quantize_q8_1(x, blocks_mut(o)));

pub(super) fn overlay(level: Level, t: GgmlType, k: &mut Kernels) {
    use GgmlType as T;
    let sdot = level == Level::NeonDotprod;
    let pick = |plain: Dot, dot: Dot| if sdot { dot } else { plain };
    match t {
        T::Q4_0 => k.vec_dot = Some(pick(q4_0_neon, q4_0_dotprod)),
        T::Q4_1 => k.vec_dot = Some(pick(q4_1_neon, q4_1_dotprod)),
        T::Q8_0 => {
            k.vec_dot = Some(pick(q8_0_neon, q8_0_dotprod));
            k.from_float = quantize_q8_0_neon;
        }
        T::Q8_1 => k.from_float = quantize_q8_1_neon,
        T::Q4_K => k.vec_dot = Some(pick(q4_k_neon, q4_k_dotprod)),
        T::Q6_K => k.vec_dot = Some(pick(q6_k_neon, q6_k_dotprod)),
        T::F32 => k.vec_dot = Some(f32_neon),
        T::F16 => k.vec_dot = Some(f16_neon),
        T::BF16 => k.vec_dot = Some(bf16_neon),
        _ => {}
    }
}

/// `acc` plus four i32 sums of four byte products each.
#[inline(always)]
unsafe fn dot_i8<const SDOT: bool>(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    if SDOT {
        let mut acc = acc;
        // SAFETY (of the asm): `sdot` only reads its registers and writes `acc`; the
        // calling function enables `dotprod`.
        std::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) x,
            in(vreg) y,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    } else {
        // Widening products; a pair of them fits i16 since one side is never -128.
        let p = vmull_s8(vget_low_s8(x), vget_low_s8(y));
        let p = vmlal_high_s8(p, x, y);
        vpadalq_s16(acc, p)
    }
}

#[inline(always)]
unsafe fn load_q8(qs: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16)))
}

/// Low nibbles (elements 0..16) and high nibbles (16..32) of a Q4 block.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = vld1q_u8(qs.as_ptr());
    let lo = vandq_u8(q, vdupq_n_u8(0x0f));
    let hi = vshrq_n_u8::<4>(q);
    (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
}

// Plain loops rather than closures: a closure would not inherit the caller's `dotprod`.

#[inline(always)]
unsafe fn q4_0_body<const SDOT: bool>(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (wb, ab) in w.iter().zip(a) {
        let (lo, hi) = nibbles(&wb.qs);
        let eight = vdupq_n_s8(8);
        let (y0, y1) = load_q8(&ab.qs);
        let s = dot_i8::<SDOT>(vdupq_n_s32(0), vsubq_s8(lo, eight), y0);
        let s = dot_i8::<SDOT>(s, vsubq_s8(hi, eight), y1);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h(wb.d) * h(ab.d));
    }
    vaddvq_f32(acc)
}

#[inline(always)]
unsafe fn q8_0_body<const SDOT: bool>(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (wb, ab) in w.iter().zip(a) {
        let (x0, x1) = load_q8(&wb.qs);
        let (y0, y1) = load_q8(&ab.qs);
        let s = dot_i8::<SDOT>(vdupq_n_s32(0), x0, y0);
        let s = dot_i8::<SDOT>(s, x1, y1);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h(wb.d) * h(ab.d));
    }
    vaddvq_f32(acc)
}

#[inline(always)]
unsafe fn q4_1_body<const SDOT: bool>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut ms = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let (lo, hi) = nibbles(&wb.qs);
        let (y0, y1) = load_q8(&ab.qs);
        let s = dot_i8::<SDOT>(vdupq_n_s32(0), lo, y0);
        let s = dot_i8::<SDOT>(s, hi, y1);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h(wb.d) * h(ab.d));
        ms += h(wb.m) * h(ab.s);
    }
    vaddvq_f32(acc) + ms
}

macro_rules! neon_dot {
    ($plain:ident, $sdot:ident, $body:ident, $wt:ty, $at:ty) => {
        #[target_feature(enable = "neon")]
        unsafe fn $plain(w: &[$wt], a: &[$at]) -> f32 {
            $body::<false>(w, a)
        }
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $sdot(w: &[$wt], a: &[$at]) -> f32 {
            $body::<true>(w, a)
        }
    };
}

neon_dot!(neon_q4_0, dotprod_q4_0, q4_0_body, BlockQ4_0, BlockQ8_0);
neon_dot!(neon_q4_1, dotprod_q4_1, q4_1_body, BlockQ4_1, BlockQ8_1);
neon_dot!(neon_q8_0, dotprod_q8_0, q8_0_body, BlockQ8_0, BlockQ8_0);
neon_dot!(neon_q4_k, dotprod_q4_k, q4_k_body, BlockQ4K, BlockQ8K);
neon_dot!(neon_q6_k, dotprod_q6_k, q6_k_body, BlockQ6K, BlockQ8K);

// K-quants: each sub-block's integer dot (four i32 lanes) takes its scale with one
// multiply-accumulate; the super-block scales apply once per 256 elements.

#[inline(always)]
unsafe fn q4_k_body<const SDOT: bool>(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut mins = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let mut isum = vdupq_n_s32(0);
        let mut summs = 0i32;
        for j in 0..4 {
            let q = wb.qs.as_ptr().add(32 * j);
            let (q0, q1) = (vld1q_u8(q), vld1q_u8(q.add(16)));
            let y = ab.qs.as_ptr().add(64 * j);
            let (lo0, lo1) = (
                vandq_u8(q0, vdupq_n_u8(0x0f)),
                vandq_u8(q1, vdupq_n_u8(0x0f)),
            );
            let (hi0, hi1) = (vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1));
            let s = vdupq_n_s32(0);
            let sl = dot_i8::<SDOT>(s, vreinterpretq_s8_u8(lo0), vld1q_s8(y));
            let sl = dot_i8::<SDOT>(sl, vreinterpretq_s8_u8(lo1), vld1q_s8(y.add(16)));
            let sh = dot_i8::<SDOT>(s, vreinterpretq_s8_u8(hi0), vld1q_s8(y.add(32)));
            let sh = dot_i8::<SDOT>(sh, vreinterpretq_s8_u8(hi1), vld1q_s8(y.add(48)));
            let (sc0, m0) = scale_min_k4(2 * j, &wb.scales);
            let (sc1, m1) = scale_min_k4(2 * j + 1, &wb.scales);
            isum = vmlaq_n_s32(isum, sl, sc0 as i32);
            isum = vmlaq_n_s32(isum, sh, sc1 as i32);
            summs += m0 as i32 * (ab.bsum(4 * j) + ab.bsum(4 * j + 1));
            summs += m1 as i32 * (ab.bsum(4 * j + 2) + ab.bsum(4 * j + 3));
        }
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), h(wb.d) * ab.d());
        mins += h(wb.dmin) * ab.d() * summs as f32;
    }
    vaddvq_f32(acc) - mins
}

#[inline(always)]
unsafe fn q6_k_body<const SDOT: bool>(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let (lo4, two) = (vdupq_n_u8(0x0f), vdupq_n_u8(3));
    let off = vdupq_n_s8(32);
    for (wb, ab) in w.iter().zip(a) {
        let mut isum = vdupq_n_s32(0);
        for half in 0..2 {
            for c in 0..2 {
                // Sixteen bytes of each run feed elements l, l + 32, l + 64, l + 96 of
                // this half (l in 16c..16c + 16).
                let ql0 = vld1q_u8(wb.ql.as_ptr().add(64 * half + 16 * c));
                let ql1 = vld1q_u8(wb.ql.as_ptr().add(64 * half + 32 + 16 * c));
                let qh = vld1q_u8(wb.qh.as_ptr().add(32 * half + 16 * c));
                let q = [
                    vorrq_u8(vandq_u8(ql0, lo4), vshlq_n_u8::<4>(vandq_u8(qh, two))),
                    vorrq_u8(
                        vandq_u8(ql1, lo4),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), two)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), two)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                ];
                for (k, q) in q.into_iter().enumerate() {
                    let e = 128 * half + 32 * k + 16 * c;
                    let x = vsubq_s8(vreinterpretq_s8_u8(q), off);
                    let s = dot_i8::<SDOT>(vdupq_n_s32(0), x, vld1q_s8(ab.qs.as_ptr().add(e)));
                    isum = vmlaq_n_s32(isum, s, wb.scales[e / 16] as i32);
                }
            }
        }
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), h(wb.d) * ab.d());
    }
    vaddvq_f32(acc)
}

/// Four accumulators of four lanes over 16 elements per step, then the scalar tail.
#[inline(always)]
unsafe fn float_dot(
    w: &[u8],
    a: &[u8],
    elt: usize,
    load: impl Fn(*const u8) -> float32x4_t,
    tail: fn(&[u8], &[u8]) -> f32,
) -> f32 {
    let step = 16 * elt;
    let n = w.len().min(a.len()) / step * step;
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let mut i = 0;
    while i < n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + k * 4 * elt;
            *acc = vfmaq_f32(*acc, load(wp.add(o)), load(ap.add(o)));
        }
        i += step;
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(s) + tail(&w[n..], &a[n..])
}

/// f16 to f32 by bit manipulation (Rust's f16 vector types are not stable): the exponent
/// and mantissa shift into f32 position, and a multiply by 2^112 rebiases the exponent,
/// subnormals included; infinities and NaNs get the f32 all-ones exponent.
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    let x = vmovl_u16(vld1_u16(p.cast()));
    let sign = vshlq_n_u32::<16>(vandq_u32(x, vdupq_n_u32(0x8000)));
    let em = vshlq_n_u32::<13>(vandq_u32(x, vdupq_n_u32(0x7fff)));
    let scaled = vmulq_f32(
        vreinterpretq_f32_u32(em),
        vdupq_n_f32(f32::from_bits(0x7780_0000)),
    );
    let special = vcgeq_u32(em, vdupq_n_u32(0x7c00 << 13));
    let bits = vbslq_u32(
        special,
        vorrq_u32(em, vdupq_n_u32(0x7f80_0000)),
        vreinterpretq_u32_f32(scaled),
    );
    vreinterpretq_f32_u32(vorrq_u32(bits, sign))
}

#[inline(always)]
unsafe fn bf16x4(p: *const u8) -> float32x4_t {
    vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast())))
}

use super::super::float::{vec_dot_bf16, vec_dot_f16, vec_dot_f32};

#[target_feature(enable = "neon")]
unsafe fn neon_f32(w: &[u8], a: &[u8]) -> f32 {
    float_dot(w, a, 4, |p| vld1q_f32(p.cast()), vec_dot_f32)
}

#[target_feature(enable = "neon")]
unsafe fn neon_f16(w: &[u8], a: &[u8]) -> f32 {
    float_dot(w, a, 2, |p| f16x4(p), vec_dot_f16)
}

#[target_feature(enable = "neon")]
unsafe fn neon_bf16(w: &[u8], a: &[u8]) -> f32 {
    float_dot(w, a, 2, |p| bf16x4(p), vec_dot_bf16)
}

/// As the scalar quantizer: same d and 1/d, `vcvtnq` rounds ties to even as it does.
#[inline(always)]
unsafe fn quantize_block(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let p = x.as_ptr();
    let v = [0, 4, 8, 12, 16, 20, 24, 28].map(|o| vld1q_f32(p.add(o)));
    let mut m = vabsq_f32(v[0]);
    for v in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*v));
    }
    let d = vmaxvq_f32(m) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = v.map(|v| vcvtnq_s32_f32(vmulq_n_f32(v, id)));
    let mut sum = vdupq_n_s32(0);
    for (j, pair) in q.chunks_exact(2).enumerate() {
        sum = vaddq_s32(sum, vaddq_s32(pair[0], pair[1]));
        let q16 = vcombine_s16(vqmovn_s32(pair[0]), vqmovn_s32(pair[1]));
        vst1_s8(qs.as_mut_ptr().add(j * 8), vqmovn_s16(q16));
    }
    (d, vaddvq_s32(sum))
}

#[target_feature(enable = "neon")]
unsafe fn neon_quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, _) = quantize_block(xs, &mut b.qs);
        b.d = to_h(d);
    }
}

#[target_feature(enable = "neon")]
unsafe fn neon_quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, s) = quantize_block(xs, &mut b.qs);
        b.d = to_h(d);
        b.s = to_h(d * s as f32);
    }
}
