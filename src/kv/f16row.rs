//! f16 rows of the cache to f32, sixteen or eight values per instruction where the CPU
//! converts them itself. The `half` crate converts eight values per out-of-line call and
//! checks the CPU's features on each: for a head of 64 values that cost more than the
//! conversion (13 % of a long prefill, measured).

use half::f16;

/// `out[i] = bytes[2i..2i + 2]` as a little-endian f16, for every `i` of `out`.
#[inline]
pub fn decode(bytes: &[u8], out: &mut [f32]) {
    assert!(bytes.len() >= out.len() * 2);
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has AVX-512F and F16C; the lengths were checked.
            return unsafe { x86::avx512(bytes, out) };
        }
        if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has F16C; the lengths were checked.
            return unsafe { x86::f16c(bytes, out) };
        }
    }
    scalar(bytes, out);
}

fn scalar(bytes: &[u8], out: &mut [f32]) {
    for (c, y) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *y = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F (whose CPUs all have F16C), and `bytes` holds `2 * out.len()` bytes or more.
    #[target_feature(enable = "avx512f,avx,f16c")]
    pub unsafe fn avx512(bytes: &[u8], out: &mut [f32]) {
        let n = out.len();
        let (src, dst) = (bytes.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(src.add(2 * i).cast());
            _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        // A head of 8 values (stories260K) is one half vector.
        if i + 8 <= n {
            let h = _mm_loadu_si128(src.add(2 * i).cast());
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        super::scalar(&bytes[2 * i..], &mut out[i..]);
    }

    /// # Safety
    /// F16C and AVX, and `bytes` holds `2 * out.len()` bytes or more.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn f16c(bytes: &[u8], out: &mut [f32]) {
        let n = out.len();
        let (src, dst) = (bytes.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(src.add(2 * i).cast());
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        super::scalar(&bytes[2 * i..], &mut out[i..]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_length_converts_like_half() {
        let vals: Vec<f32> = (0..77)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173 + if i == 5 { 7e4 } else { 0.0 })
            .collect();
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        for n in [0, 1, 7, 8, 15, 16, 17, 33, 64, 77] {
            let mut got = vec![f32::NAN; n];
            super::decode(&bytes[..2 * n], &mut got);
            let mut want = vec![0f32; n];
            super::scalar(&bytes[..2 * n], &mut want);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "n {n}: {got:?} vs {want:?}");
        }
    }
}
