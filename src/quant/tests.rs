use super::*;

/// A small seeded generator, so failures reproduce.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn roundtrip_rmse(t: GgmlType, x: &[f32]) -> f32 {
    let mut q = vec![0u8; t.bytes_for(x.len() as u64).unwrap() as usize];
    quantize_row(t, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(t, &q, &mut y).unwrap();
    let se: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
    (se / x.len() as f32).sqrt()
}

#[test]
fn round_trip_error_within_bounds() {
    // Inputs uniform in [-1, 1]. Bounds: half a quantization step, in RMS terms, with margin.
    let x = values(4096, 1);
    for (t, bound) in [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.005),
        (GgmlType::Q4_1, 0.04),
        (GgmlType::Q4_0, 0.08),
    ] {
        let e = roundtrip_rmse(t, &x);
        assert!(e <= bound, "{t}: rmse {e} > {bound}");
    }
}

#[test]
fn dot_matches_dequantized_reference() {
    for (t, n) in [
        (GgmlType::F32, 100),
        (GgmlType::F16, 77),
        (GgmlType::BF16, 64),
        (GgmlType::Q4_0, 256),
        (GgmlType::Q4_1, 256),
        (GgmlType::Q8_0, 96),
    ] {
        let w = values(n, 2);
        let x = values(n, 3);
        let mut q = vec![0u8; t.bytes_for(n as u64).unwrap() as usize];
        quantize_row(t, &w, &mut q).unwrap();
        let mut wd = vec![0f32; n];
        dequantize_row(t, &q, &mut wd).unwrap();
        let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
        let mut input = DotInput::default();
        input.prepare(t, &x, n).unwrap();
        let got = input.dot(t, &q, 0);
        // 8-bit activations add about 1/254 relative error per element.
        let scale: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        let tol = if vec_dot_type(t) == GgmlType::F32 {
            1e-5
        } else {
            0.01
        } * scale;
        assert!((got - exact).abs() <= tol, "{t}: {got} vs {exact}");
    }
}

#[test]
fn q4_0_layout_is_ggml() {
    // One block: d = 1.0 (f16 0x3c00), nibbles: element j low, element j+16 high.
    let mut b = vec![0x00, 0x3c];
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let mut y = [0f32; 32];
    dequantize_row(GgmlType::Q4_0, &b, &mut y).unwrap();
    assert_eq!(y[0], -8.0);
    assert_eq!(y[15], 7.0);
    assert_eq!(y[16], 7.0);
    assert_eq!(y[31], -8.0);
}

#[test]
fn wrong_lengths_are_errors() {
    let mut y = [0f32; 31];
    assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut y).is_err());
    assert!(dequantize_row(GgmlType::Q2_K, &[0u8; 84], &mut [0f32; 256]).is_err());
}

#[test]
fn dot4_matches_dot() {
    for t in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
        let n = 4096 + 96;
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|r| {
                let mut q = vec![0u8; t.bytes_for(n as u64).unwrap() as usize];
                quantize_row(t, &values(n, 10 + r), &mut q).unwrap();
                q
            })
            .collect();
        let x = values(n, 20);
        for precision in [Precision::Fast, Precision::Exact] {
            let mut input = DotInput::new(precision);
            input.prepare(t, &x, n).unwrap();
            let got = input.dot4(t, [&rows[0], &rows[1], &rows[2], &rows[3]], 0);
            for (r, w) in rows.iter().enumerate() {
                let want = input.dot(t, w, 0);
                assert!(
                    (got[r] - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{t} {r}"
                );
            }
        }
    }
}
