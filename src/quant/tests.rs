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

/// Roughly standard normal values (Box-Muller over `values`), seeded.
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let u = values(n + 1, seed);
    (0..n)
        .map(|i| {
            let u1 = (u[i] * 0.5 + 0.5).max(1e-7);
            let u2 = u[i + 1] * 0.5 + 0.5;
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
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

/// Round-trip RMSE relative to the data's standard deviation, on uniform and on Gaussian
/// data (65536 values each). Measured (uniform, Gaussian): Q5_0 0.0312 0.0425,
/// Q5_1 0.0295 0.0380, Q2_K 0.2316 0.2975, Q3_K 0.1245 0.1506, Q4_K 0.0544 0.0712,
/// Q5_K 0.0276 0.0363, Q6_K 0.0133 0.0176, Q8_K 0.0039 0.0069. These sit where the step
/// sizes predict (Q5_0 on uniform data: step 1/16, RMSE step/sqrt(12), 0.0313 of the std);
/// `round_trip_within_llama_cpp_thresholds` compares with llama.cpp's own bounds.
/// The bounds are the measurements plus 5%.
#[test]
fn round_trip_error_of_new_types() {
    let uniform = values(1 << 16, 11);
    let normal = gaussian(1 << 16, 12);
    let std = |x: &[f32]| {
        let m = x.iter().sum::<f32>() / x.len() as f32;
        (x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / x.len() as f32).sqrt()
    };
    for (t, bound_uniform, bound_normal) in [
        (GgmlType::Q5_0, 0.0328, 0.0447),
        (GgmlType::Q5_1, 0.0310, 0.0399),
        (GgmlType::Q2_K, 0.244, 0.313),
        (GgmlType::Q3_K, 0.131, 0.159),
        (GgmlType::Q4_K, 0.0572, 0.0748),
        (GgmlType::Q5_K, 0.0291, 0.0381),
        (GgmlType::Q6_K, 0.0140, 0.0185),
        (GgmlType::Q8_K, 0.0042, 0.0073),
    ] {
        let eu = roundtrip_rmse(t, &uniform) / std(&uniform);
        let en = roundtrip_rmse(t, &normal) / std(&normal);
        eprintln!("{t}: relative rmse uniform {eu:.5} gaussian {en:.5}");
        assert!(
            eu <= bound_uniform,
            "{t}: uniform relative rmse {eu} > {bound_uniform}"
        );
        assert!(
            en <= bound_normal,
            "{t}: gaussian relative rmse {en} > {bound_normal}"
        );
    }
}

/// llama.cpp's own check (tests/test-quantize-fns.cpp): data `0.1 + 2 cos(i)`, 4096
/// values, error `sqrt(sum of squared errors) / n`, against its thresholds: 0.0075 for
/// Q2_K, 0.004 for Q3_K, 0.002 for the others. Measured: Q5_0 0.00059, Q5_1 0.00056,
/// Q2_K 0.00467, Q3_K 0.00251, Q4_K 0.00098, Q5_K 0.00053, Q6_K 0.00026.
#[test]
fn round_trip_within_llama_cpp_thresholds() {
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    for (t, max) in [
        (GgmlType::Q5_0, 0.002),
        (GgmlType::Q5_1, 0.002),
        (GgmlType::Q2_K, 0.0075),
        (GgmlType::Q3_K, 0.004),
        (GgmlType::Q4_K, 0.002),
        (GgmlType::Q5_K, 0.002),
        (GgmlType::Q6_K, 0.002),
    ] {
        let e = roundtrip_rmse(t, &x) * (n as f32).sqrt() / n as f32;
        eprintln!("{t}: llama.cpp metric {e:.6} (threshold {max})");
        assert!(e <= max, "{t}: {e} > {max}");
    }
}

#[test]
fn dot_matches_dequantized_reference() {
    for (t, n) in [
        (GgmlType::Q5_0, 256),
        (GgmlType::Q5_1, 256),
        (GgmlType::Q2_K, 512),
        (GgmlType::Q3_K, 512),
        (GgmlType::Q4_K, 512),
        (GgmlType::Q5_K, 512),
        (GgmlType::Q6_K, 512),
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
    assert!(dequantize_row(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]).is_err());
    assert!(quantize_tensor(GgmlType::Q4_K, &[0f32; 512], 128).is_err());
    assert!(quantize_tensor(GgmlType::Q4_K, &[0f32; 700], 256).is_err());
}

#[test]
fn quantize_tensor_quantizes_each_row() {
    let (rows, cols) = (3, 512);
    let x = gaussian(rows * cols, 5);
    let q = quantize_tensor(GgmlType::Q4_K, &x, cols).unwrap();
    let row_bytes = 2 * 144;
    assert_eq!(q.len(), rows * row_bytes);
    for (xr, qr) in x.chunks(cols).zip(q.chunks(row_bytes)) {
        let mut one = vec![0u8; row_bytes];
        quantize_row(GgmlType::Q4_K, xr, &mut one).unwrap();
        assert_eq!(one, qr);
    }
}

#[test]
fn q8_k_sums_and_scale() {
    let x = gaussian(512, 7);
    let q = quantize_tensor(GgmlType::Q8_K, &x, 512).unwrap();
    let blocks: &[BlockQ8K] = as_blocks(&q).unwrap();
    for (b, xs) in blocks.iter().zip(x.chunks(QK_K)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        // d carries the sign of the largest-magnitude value, as in ggml.
        let d = f32::from_le_bytes(b.d);
        assert!(
            (d.abs() - amax / 127.0).abs() <= 1e-6 * amax,
            "{d} vs {amax}"
        );
        assert!(b.qs.iter().any(|&q| q.abs() == 127));
        for (j, s) in b.bsums.iter().enumerate() {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(i16::from_le_bytes(*s) as i32, sum);
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Vectors from implementations independent of wick (see
/// tests/fixtures/gen_kquant_vectors.py): gguf-py's numpy dequantization of random blocks of
/// every new type and its Q5_0/Q5_1 quantization, and ggml's own `quantize_row_*_ref` for
/// the K-quants and Q8_K. All must match bit for bit.
#[test]
fn matches_reference_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kquant_vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let field = |case: &serde_json::Value, k: &str| hex(case[k].as_str().unwrap());
    let floats = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let ty =
        |case: &serde_json::Value| GgmlType::from_name(case["type"].as_str().unwrap()).unwrap();
    let mut checked = Vec::new();
    for case in v["dequantize"].as_array().unwrap() {
        let t = ty(case);
        let want = floats(field(case, "f32"));
        let mut got = vec![0f32; want.len()];
        dequantize_row(t, &field(case, "bytes"), &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{t} element {i}: {g} vs {w}");
        }
        checked.push(format!("dequantize {t}"));
    }
    for case in v["quantize"].as_array().unwrap() {
        let t = ty(case);
        let x = floats(field(case, "f32"));
        let want = field(case, "bytes");
        let mut got = vec![0u8; want.len()];
        quantize_row(t, &x, &mut got).unwrap();
        let bb = t.block_bytes();
        for (i, (g, w)) in got.chunks(bb).zip(want.chunks(bb)).enumerate() {
            assert_eq!(g, w, "{t} quantization, block {i}");
        }
        checked.push(format!("quantize {t}"));
    }
    assert_eq!(checked.len(), 15, "{checked:?}");
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
