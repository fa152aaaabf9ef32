//! The fp8 KV cache: one e4m3 byte per value (the OCP "E4M3FN" format that CUDA's
//! `__nv_fp8_e4m3` uses: 4 exponent bits, 3 mantissa bits, no infinities, largest finite
//! value 448) and one scale per row.
//!
//! Row layout: the scale (f32, little-endian), then `kv_dim` bytes. A floating format keeps
//! the same relative precision (3 bits) at every size, so unlike Q8_0 it needs no scale per
//! block to protect small values from large ones: the scale only has to move the row into
//! e4m3's range, where values must stay under 448 and, to keep their 3 bits, above 2^-6.
//! One scale per row does that at 4 bytes a row (Q8_0 pays 2 per 32 values), and values
//! more than 2^14 below the row's largest matter nothing to a dot product. The scale is a
//! power of two, `2^(floor(log2 max) - 7)`, which puts the largest value in [128, 256):
//! scaling is then exact on both backends, so the CPU and the GPU (kernels/cuda/kv.cuh,
//! `fp8_scale`) store bit-identical rows, and nothing ever reaches the saturation at 448.

/// Bytes of a row of `kv_dim` values.
pub const fn row_bytes(kv_dim: usize) -> usize {
    4 + kv_dim
}

/// The scale of a row whose largest magnitude is `amax`, as f32 bits: 2^(E - 7) for
/// `amax` in [2^E, 2^(E+1)), never below the smallest normal f32 (so that its inverse is
/// finite too).
#[inline]
pub fn scale_bits(amax: f32) -> u32 {
    let e = (amax.to_bits() >> 23) & 0xff;
    e.saturating_sub(7).max(1) << 23
}

/// The inverse of a scale from [`scale_bits`], also exact.
#[inline]
pub fn inv_scale(bits: u32) -> f32 {
    f32::from_bits((254 - (bits >> 23)) << 23)
}

/// `x` in e4m3, rounded to nearest, ties to even, saturating at ±448, NaN to NaN: what
/// `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)` gives.
#[inline]
pub fn encode(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    if x.is_nan() {
        return 0x7f;
    }
    let a = x.abs();
    let v = if a >= 2f32.powi(-6) {
        let fe = (bits >> 23) & 0xff;
        if fe >= 127 + 9 {
            0x7e
        } else {
            let m = bits & 0x7f_ffff;
            let mut v = ((fe - 120) << 3) | (m >> 20);
            let rem = m & 0xf_ffff;
            if rem > 0x8_0000 || (rem == 0x8_0000 && v & 1 == 1) {
                v += 1;
            }
            v.min(0x7e)
        }
    } else {
        // Subnormals: multiples of 2^-9 (rounding up to 8 gives 2^-6, the smallest
        // normal, whose code is also 8).
        (a * 512.0).round_ties_even() as u32
    };
    sign | v as u8
}

const fn decode_bits(b: u8) -> u32 {
    let sign = ((b & 0x80) as u32) << 24;
    let e = ((b >> 3) & 0xf) as u32;
    let m = (b & 7) as u32;
    if e == 15 && m == 7 {
        return 0x7fc0_0000;
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // m * 2^-9: normalize the mantissa's leading bit into the implicit one.
        let lead = 31 - m.leading_zeros(); // 0..=2
        let frac = (m << (23 - lead)) & 0x7f_ffff;
        return sign | ((127 - 9 + lead) << 23) | frac;
    }
    sign | ((e + 120) << 23) | (m << 20)
}

const fn decode_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_bits(i as u8);
        i += 1;
    }
    t
}

/// Every e4m3 byte as f32 bits.
static DECODE: [u32; 256] = decode_table();

/// The value of an e4m3 byte.
#[inline]
pub fn decode(b: u8) -> f32 {
    f32::from_bits(DECODE[b as usize])
}

/// Stores `x` as a row: its scale, then its values.
pub fn encode_row(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bits = scale_bits(amax);
    let inv = inv_scale(bits);
    out[..4].copy_from_slice(&bits.to_le_bytes());
    for (o, v) in out[4..].iter_mut().zip(x) {
        *o = encode(v * inv);
    }
}

/// Values `off..off + out.len()` of a stored row.
#[inline]
pub fn decode_row(row: &[u8], off: usize, out: &mut [f32]) {
    let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
    for (y, &b) in out.iter_mut().zip(&row[4 + off..]) {
        *y = decode(b) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let x = decode(b);
            if b & 0x7f == 0x7f {
                assert!(x.is_nan());
                continue;
            }
            // Negative zero keeps its sign bit.
            assert_eq!(encode(x), b, "code {b:#04x} = {x}");
        }
        assert_eq!(decode(0x7e), 448.0);
        assert_eq!(decode(0x01), 2f32.powi(-9));
        assert_eq!(decode(0x08), 2f32.powi(-6));
        assert_eq!(decode(0x38), 1.0);
    }

    #[test]
    fn rounding_is_to_nearest_even_and_saturates() {
        // Between 1 (0x38) and 1.125 (0x39): the midpoint goes to the even code.
        assert_eq!(encode(1.0625), 0x38);
        assert_eq!(encode(1.0626), 0x39);
        assert_eq!(encode(1.1875), 0x3a); // midpoint of 0x39 and 0x3a: even
        assert_eq!(encode(-1.0626), 0xb9);
        assert_eq!(encode(1000.0), 0x7e);
        assert_eq!(encode(-1e30), 0xfe);
        assert_eq!(encode(f32::INFINITY), 0x7e);
        // Subnormal midpoints: 1.5 * 2^-9 goes up to 2 * 2^-9, 2.5 * 2^-9 down.
        assert_eq!(encode(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(encode(2.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(encode(2f32.powi(-11)), 0x00);
        // Just under the smallest normal rounds up to it.
        assert_eq!(encode(7.9 * 2f32.powi(-9)), 0x08);
        // Nearest, by brute force over a sweep.
        for i in 0..20000 {
            let x = (i as f32 - 10000.0) * 0.0231;
            let got = decode(encode(x));
            let best = (0..=255u8)
                .filter(|b| b & 0x7f != 0x7f)
                .map(|b| (decode(b) - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!((got - x).abs(), best, "{x}");
        }
    }

    #[test]
    fn rows_keep_three_bits_of_every_value() {
        let x: Vec<f32> = (0..100)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let mut row = vec![0u8; row_bytes(x.len())];
        encode_row(&x, &mut row);
        let mut back = vec![0f32; x.len()];
        decode_row(&row, 0, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() / 16.0 + 1e-6, "{a} -> {b}");
        }
        // The scale puts the largest value in [128, 256).
        let s = f32::from_le_bytes(row[..4].try_into().unwrap());
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((128.0..256.0).contains(&(amax / s)), "{amax} / {s}");
        // An all-zero row decodes to zeros.
        encode_row(&[0.0; 8], &mut row[..12]);
        decode_row(&row[..12], 0, &mut back[..8]);
        assert!(back[..8].iter().all(|&v| v == 0.0));
    }
}
