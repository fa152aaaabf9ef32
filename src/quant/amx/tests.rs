//! The tile products against the scalar `vec_dot` reference, at sizes that leave partial
//! panels (rows), partial tiles (tokens) and odd block counts (K).

use super::*;
use crate::quant::scalar_kernels;

/// Deterministic values in [-1, 1), with a few larger ones so that scales vary by block.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 37 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

struct Case {
    t: GgmlType,
    rows: usize,
    tokens: usize,
    cols: usize,
    w: Vec<u8>,
    a: Vec<u8>,
    rb: usize,
    arb: usize,
    /// `want[n][r]` from the scalar dot, and a bound on its rounding.
    want: Vec<Vec<(f32, f32)>>,
}

fn case(t: GgmlType, rows: usize, tokens: usize, cols: usize) -> Case {
    let k = scalar_kernels(t).unwrap();
    let at = k.vec_dot_type;
    let ak = scalar_kernels(at).unwrap();
    let (rb, arb) = (
        t.bytes_for(cols as u64).unwrap() as usize,
        at.bytes_for(cols as u64).unwrap() as usize,
    );
    let mut w = vec![0u8; rows * rb];
    for (r, o) in w.chunks_exact_mut(rb).enumerate() {
        (k.from_float)(&values(cols, 1 + r as u64), o);
    }
    let mut a = vec![0u8; tokens * arb];
    for (n, o) in a.chunks_exact_mut(arb).enumerate() {
        (ak.from_float)(&values(cols, 1000 + n as u64), o);
    }
    let dot = k.vec_dot.unwrap();
    let (mut wf, mut af) = (vec![0f32; cols], vec![0f32; cols]);
    let want = a
        .chunks_exact(arb)
        .map(|ar| {
            (ak.to_float)(ar, &mut af);
            w.chunks_exact(rb)
                .map(|wr| {
                    (k.to_float)(wr, &mut wf);
                    let mag: f32 = wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum();
                    (dot(wr, ar), 1e-5 * mag + 1e-6)
                })
                .collect()
        })
        .collect();
    Case {
        t,
        rows,
        tokens,
        cols,
        w,
        a,
        rb,
        arb,
        want,
    }
}

fn acts(c: &Case) -> Acts {
    let mut acts = Acts::default();
    acts.pack(c.t, &c.a, c.arb, c.tokens, c.cols);
    assert_eq!(acts.tiles(), c.tokens.div_ceil(TILE));
    acts
}

fn check(c: &Case, n: usize, r: usize, got: f32, factor: f32) {
    let (want, tol) = c.want[n][r];
    assert!(
        (got - factor * want).abs() <= factor * tol,
        "{} {}x{}x{}: row {r} token {n}: {got} against {}",
        c.t,
        c.rows,
        c.tokens,
        c.cols,
        factor * want
    );
}

const TYPES: [(GgmlType, usize); 5] = [
    (GgmlType::Q4_0, 32),
    (GgmlType::Q8_0, 32),
    (GgmlType::Q4_1, 32),
    (GgmlType::Q4_K, 256),
    (GgmlType::Q6_K, 256),
];

/// Block counts: one, odd, and even; rows and tokens: partial and whole tiles.
fn shapes(unit: usize) -> [(usize, usize, usize); 4] {
    [
        (37, 21, unit),
        (16, 16, 3 * unit),
        (5, 9, 2 * unit),
        (48, 35, 5 * unit),
    ]
}

#[test]
fn portable_product_matches_the_scalar_dot() {
    for (t, unit) in TYPES {
        for (rows, tokens, cols) in shapes(unit) {
            let c = case(t, rows, tokens, cols);
            let acts = acts(&c);
            let mut panel = Panel::default();
            let mut out = [[0f32; TILE]; TILE];
            for r0 in (0..rows).step_by(TILE) {
                let r1 = (r0 + TILE).min(rows);
                panel.load(t, &c.w, c.rb, cols, r0, r1);
                for tile in 0..acts.tiles() {
                    panel.multiply_portable(&acts, tile, &mut out);
                    for n in tile * TILE..(tile * TILE + TILE).min(tokens) {
                        for r in r0..r1 {
                            check(&c, n, r, out[r - r0][n - tile * TILE], 1.0);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn amx_product_matches_the_scalar_dot() {
    if !available() {
        // The portable test above checks the layouts; only the tiles themselves need the
        // hardware. Say so rather than pass quietly.
        eprintln!("AMX-INT8 is not available on this CPU: tile kernel not run");
        assert!(!enabled());
        return;
    }
    for (t, unit) in TYPES {
        let tiles = Tiles::configure(format(t).unwrap());
        for (rows, tokens, cols) in shapes(unit) {
            let c = case(t, rows, tokens, cols);
            let acts = acts(&c);
            let mut panel = Panel::default();
            // Token-major, as the backend's outputs; NaN shows any element left unwritten.
            let mut out = vec![f32::NAN; tokens * rows];
            for accumulate in [false, true] {
                for r0 in (0..rows).step_by(TILE) {
                    let r1 = (r0 + TILE).min(rows);
                    panel.load(t, &c.w, c.rb, cols, r0, r1);
                    for tile in 0..acts.tiles() {
                        let at = tile * TILE * rows + r0;
                        // SAFETY: the tile's tokens and the panel's rows are inside `out`.
                        unsafe {
                            let dst = out.as_mut_ptr().add(at);
                            panel.multiply(&tiles, &acts, tile, dst, rows, accumulate, &c.w);
                        }
                    }
                }
                let factor = if accumulate { 2.0 } else { 1.0 };
                for (n, o) in out.chunks_exact(rows).enumerate() {
                    for (r, &got) in o.iter().enumerate() {
                        check(&c, n, r, got, factor);
                    }
                }
            }
        }
    }
}

/// Folded panels hold each `q * sc` exactly as `hi * 64 + lo`, through the vector decoder
/// (where the CPU has it) and the portable one, on random blocks and on the extremes:
/// Q6_K's q = -32 and 31 with scale -128 (4096 and -3968), Q4_K's 15 with scale 63.
#[test]
fn folded_digits_recombine_exactly() {
    for t in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let k = scalar_kernels(t).unwrap();
        let f = format(t).unwrap();
        assert!(f.folded && f.block == 64, "{t}");
        let (bb, cols) = (t.block_bytes(), 512);
        let rb = bb * cols / 256;
        let mut data = vec![0u8; TILE * rb];
        let mut s = 0x1234_5678_9abc_def1u64;
        for x in data.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *x = (s >> 32) as u8;
        }
        // d = 1 and (Q4_K) dmin = 0, so that `to_float` gives the integers themselves.
        let one = [0x00, 0x3c];
        for (r, row) in data.chunks_exact_mut(rb).enumerate() {
            for blk in row.chunks_exact_mut(bb) {
                if t == GgmlType::Q4_K {
                    blk[..2].copy_from_slice(&one);
                    blk[2..4].fill(0);
                    if r == 0 {
                        blk[4..].fill(0xff);
                    }
                } else {
                    blk[208..].copy_from_slice(&one);
                    if r < 2 {
                        blk[..192].fill(if r == 0 { 0 } else { 0xff });
                        blk[192..208].fill(0x80);
                    }
                }
            }
        }
        let rows: Vec<&[u8]> = data.chunks_exact(rb).collect();
        for portable in [false, true] {
            let mut q = vec![0u8; cols / 64 * 2 * TILE * 64];
            let mut scale = vec![0f32; cols / 256 * TILE];
            let mut min = vec![0f32; cols / 32 * TILE];
            if portable {
                decode::panel_portable(t, &rows, &mut q, &mut scale, &mut min);
            } else {
                decode::panel(t, &rows, &mut q, &mut scale, &mut min);
            }
            let mut want = vec![0f32; cols];
            for (m, row) in rows.iter().enumerate() {
                (k.to_float)(row, &mut want);
                for (i, &w) in want.iter().enumerate() {
                    let (b, j) = (i / 64, i % 64);
                    let hi = q[(2 * b * TILE + m) * 64 + j] as i8 as i32;
                    let lo = q[((2 * b + 1) * TILE + m) * 64 + j] as i8 as i32;
                    assert!(
                        (0..64).contains(&lo),
                        "{t} row {m} value {i}: low digit {lo}"
                    );
                    let got = (hi * 64 + lo) as f32 * scale[i / 256 * TILE + m];
                    assert_eq!(got, w, "{t} row {m} value {i} (portable: {portable})");
                }
            }
        }
    }
}

#[test]
fn q4_k_scales_unpack_as_the_reference_does() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000 {
        let mut q = [0u8; 12];
        for x in q.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // All-ones blocks too: every 6-bit field at 63.
            *x = if i == 0 { 0xff } else { (s >> 24) as u8 };
        }
        let (sc, mn) = decode::scales_mins(&q);
        for j in 0..8 {
            assert_eq!(
                (sc[j], mn[j]),
                crate::quant::kquants::scale_min_k4(j, &q),
                "{q:?} {j}"
            );
        }
    }
}

#[test]
fn formats_cover_the_prefill_types() {
    for (t, unit) in TYPES {
        let f = format(t).unwrap();
        assert!(
            unit.is_multiple_of(f.block) && f.block.is_multiple_of(4),
            "{t}"
        );
        // Every AMX type is prepared as 8-bit blocks that `Acts::pack` reads.
        let dt = scalar_kernels(t).unwrap().vec_dot_type;
        assert!(
            matches!(dt, GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K),
            "{t}"
        );
    }
    assert_eq!(format(GgmlType::F32), None);
    assert_eq!(format(GgmlType::Q5_K), None);
}
