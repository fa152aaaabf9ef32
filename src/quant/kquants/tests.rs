//! One hand-built block per K-quant type, with values worked out by hand from ggml's layout
//! (ggml-common.h and dequantize_row_* in ggml-quants.c): this pins the bit layout, where
//! round trips would only show self-consistency.

use super::*;

const F16_HALF: [u8; 2] = [0x00, 0x38];
const F16_ONE: [u8; 2] = [0x00, 0x3c];

fn bytes<T: crate::quant::Block>(b: &T) -> Vec<u8> {
    // SAFETY: Block types are plain bytes with no padding.
    unsafe { std::slice::from_raw_parts((b as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn dequantize(t: crate::quant::GgmlType, b: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; QK_K];
    crate::quant::dequantize_row(t, b, &mut y).unwrap();
    y
}

#[test]
fn q2_k_layout() {
    let mut b = BlockQ2K {
        scales: [0; 16],
        qs: [0; 64],
        d: F16_ONE,
        dmin: F16_HALF,
    };
    // Sub-block scale in the low nibble, minimum in the high nibble.
    b.scales[0] = 0x21; // scale 1, min 2
    b.scales[1] = 0x03; // scale 3, min 0
    b.scales[2] = 0x12; // scale 2, min 1
    b.scales[4] = 0x05;
    b.scales[8] = 0x71; // scale 1, min 7
                        // Byte 0 carries elements 0, 32, 64, 96 (sub-blocks 0, 2, 4, 6), two bits each.
    b.qs[0] = 0b11_10_01_00;
    b.qs[16] = 3; // element 16, sub-block 1
    b.qs[32] = 2; // element 128, sub-block 8
    let y = dequantize(crate::quant::GgmlType::Q2_K, &bytes(&b));
    assert_eq!(y[0], 1.0 * 1.0 * 0.0 - 0.5 * 2.0);
    assert_eq!(y[1], -1.0);
    assert_eq!(y[16], 3.0 * 3.0);
    assert_eq!(y[32], 2.0 * 1.0 - 0.5 * 1.0);
    assert_eq!(y[64], 5.0 * 2.0);
    assert_eq!(y[96], 0.0);
    assert_eq!(y[128], 1.0 * 2.0 - 0.5 * 7.0);
}

#[test]
fn q3_k_layout() {
    let mut b = BlockQ3K {
        hmask: [0; 32],
        qs: [0; 64],
        // Every 6-bit scale 32 (zero once 32 is subtracted): low nibbles 0, top bits 2.
        scales: [0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa],
        d: F16_ONE,
    };
    // Scale 0 = 33 (+1): low nibble in byte 0, top bits in byte 8 bits 0-1 (stay 2).
    b.scales[0] = 0x01;
    // Scale 8 = 30 (-2): low nibble 14 in byte 0's high nibble, top bits 1 at byte 8 bits 4-5.
    b.scales[0] |= 14 << 4;
    b.scales[8] = 0b10_01_10_10;
    // Scale 13 = 40 (+8): low nibble 8 in byte 5's high nibble, top bits 2 at byte 9 bits 6-7.
    b.scales[5] = 8 << 4;
    // Element 0: low bits 3, high bit set (bit 0 of hmask[0]): q = 3.
    b.qs[0] = 3;
    b.hmask[0] = 1;
    // Element 128 (sub-block 8): byte 32 bits 0-1 = 1, hmask[0] bit 4 clear: q = 1 - 4.
    b.qs[32] = 1;
    // Element 208 (sub-block 13): byte 48 bits 4-5 = 2, hmask[16] bit 6 set: q = 2.
    b.qs[48] = 2 << 4;
    b.hmask[16] = 1 << 6;
    let y = dequantize(crate::quant::GgmlType::Q3_K, &bytes(&b));
    assert_eq!(y[0], 3.0);
    assert_eq!(y[1], -4.0); // all bits clear: q = -4
    assert_eq!(y[16], 0.0); // scale 1 is zero
    assert_eq!(y[128], -2.0 * -3.0);
    assert_eq!(y[208], 8.0 * 2.0);
    assert_eq!(y[209], 8.0 * -4.0);
}

/// Scales (1, 37) and minimums (2, 19) for sub-blocks 0 and 5, all others zero.
fn k4_scales() -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    s[0] = 1; // scale 0
    s[4] = 2; // min 0
              // Scale 5 = 0b10_0101: low nibble 5 in byte 9, top bits 2 at byte 1 bits 6-7.
              // Min 5 = 0b01_0011: low nibble 3 in byte 9's high nibble, top bits 1 at byte 5 bits 6-7.
    s[9] = 0x35;
    s[1] = 2 << 6;
    s[5] = 1 << 6;
    s
}

#[test]
fn q4_k_layout() {
    let mut b = BlockQ4K {
        d: F16_ONE,
        dmin: F16_HALF,
        scales: k4_scales(),
        qs: [0; 128],
    };
    // Byte 0: element 0 in the low nibble, element 32 (sub-block 1) in the high nibble.
    b.qs[0] = 0x3f;
    // Element 160 (sub-block 5) is the high nibble of byte 64.
    b.qs[64] = 0x70;
    let y = dequantize(crate::quant::GgmlType::Q4_K, &bytes(&b));
    assert_eq!(y[0], 1.0 * 15.0 - 0.5 * 2.0);
    assert_eq!(y[1], -0.5 * 2.0);
    assert_eq!(y[32], 0.0);
    assert_eq!(y[128], 0.0);
    assert_eq!(y[160], 37.0 * 7.0 - 0.5 * 19.0);
    assert_eq!(y[161], -0.5 * 19.0);
}

#[test]
fn q5_k_layout() {
    let mut b = BlockQ5K {
        d: F16_ONE,
        dmin: F16_HALF,
        scales: k4_scales(),
        qh: [0; 32],
        qs: [0; 128],
    };
    b.qs[0] = 0x0f;
    b.qs[64] = 0x70;
    // The high bit of element 160 is bit 160 / 32 = 5 of qh[0]; of element 1, bit 0 of qh[1].
    b.qh[0] = 1 << 5;
    b.qh[1] = 1;
    let y = dequantize(crate::quant::GgmlType::Q5_K, &bytes(&b));
    assert_eq!(y[0], 15.0 - 1.0);
    assert_eq!(y[1], 16.0 - 1.0);
    assert_eq!(y[160], 37.0 * 23.0 - 0.5 * 19.0);
}

#[test]
fn q6_k_layout() {
    let mut b = BlockQ6K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [0; 16],
        d: F16_HALF,
    };
    b.scales[0] = -3;
    b.scales[13] = 7;
    // Element 0: low nibble of ql[0] = 5, bits 0-1 of qh[0] = 2: q = 5 + 32 - 32.
    b.ql[0] = 5;
    b.qh[0] = 2;
    // Element 208 = 128 + 64 + 16: high nibble of ql[64 + 16], bits 4-5 of qh[32 + 16].
    b.ql[80] = 0xa0;
    b.qh[48] = 1 << 4;
    let y = dequantize(crate::quant::GgmlType::Q6_K, &bytes(&b));
    assert_eq!(y[0], 0.5 * -3.0 * 5.0);
    assert_eq!(y[1], 0.5 * -3.0 * -32.0);
    assert_eq!(y[208], 0.5 * 7.0 * (10.0 + 16.0 - 32.0));
}

#[test]
fn block_sizes_match_ggml() {
    use crate::quant::GgmlType as T;
    for (t, size) in [
        (T::Q2_K, std::mem::size_of::<BlockQ2K>()),
        (T::Q3_K, std::mem::size_of::<BlockQ3K>()),
        (T::Q4_K, std::mem::size_of::<BlockQ4K>()),
        (T::Q5_K, std::mem::size_of::<BlockQ5K>()),
        (T::Q6_K, std::mem::size_of::<BlockQ6K>()),
        (T::Q8_K, std::mem::size_of::<BlockQ8K>()),
        (T::Q5_0, std::mem::size_of::<crate::quant::BlockQ5_0>()),
        (T::Q5_1, std::mem::size_of::<crate::quant::BlockQ5_1>()),
    ] {
        assert_eq!(t.block_bytes(), size, "{t}");
    }
}
