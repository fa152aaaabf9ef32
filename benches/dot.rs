//! Matrix-vector products through each dot kernel at each SIMD level this CPU supports.
//!
//! `cargo bench --bench dot [-- FILTER]`: FILTER keeps the lines whose type or level name
//! contains it. Prints weight bytes streamed per second (one thread) and time per block
//! (per block and activation row for the 4x4 tiles, which dot four activation rows).

use std::hint::black_box;
use std::time::{Duration, Instant};

use wick::quant::simd::{kernels_at, supported_levels, Level};
use wick::quant::{scalar_kernels, GgmlType};

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

fn encode(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; t.bytes_for(x.len() as u64).unwrap() as usize];
    (scalar_kernels(t).unwrap().from_float)(x, &mut q);
    q
}

/// Runs `f` (one pass over `bytes` of weights) until `min` has passed; the best pass wins.
fn time(min: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    while start.elapsed() < min {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

fn report(label: &str, level: Level, bytes: usize, blocks: usize, d: Duration) {
    println!(
        "{label:<22} {:<11} {:>7.2} GB/s {:>8.3} ns/block",
        level.name(),
        bytes as f64 / d.as_secs_f64() / 1e9,
        d.as_nanos() as f64 / blocks as f64
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let min = Duration::from_millis(300);
    // Eight 1B-model FFN matrices (beyond a 32 MiB L3: memory), one (in a large L3), and
    // a 256-row slice (in L2).
    for (rows, cols) in [(8 * 5632usize, 2048usize), (5632, 2048), (256, 2048)] {
        println!("== {rows} x {cols}");
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ] {
            let at = scalar_kernels(t).unwrap().vec_dot_type;
            let w = encode(t, &values(rows * cols, 1));
            let a = encode(at, &values(cols, 2));
            let row_bytes = w.len() / rows;
            // Blocks of 32 elements for every type, so the columns compare.
            let blocks = rows * cols / 32;
            for level in supported_levels() {
                let label = format!("{t}");
                if !label.contains(&filter) && !level.name().contains(&filter) {
                    continue;
                }
                let k = kernels_at(level, t).unwrap();
                let dot = k.vec_dot.unwrap();
                let d = time(min, || {
                    for r in w.chunks_exact(row_bytes) {
                        black_box(dot(black_box(r), black_box(&a)));
                    }
                });
                report(&label, level, w.len(), blocks, d);
                if let Some(dot4) = k.vec_dot_4rows {
                    let d = time(min, || {
                        for r in w.chunks_exact(4 * row_bytes) {
                            let rs = [0, 1, 2, 3].map(|i| &r[i * row_bytes..(i + 1) * row_bytes]);
                            black_box(dot4(black_box(&rs), black_box(&a)));
                        }
                    });
                    report(&format!("{t} 4 rows"), level, w.len(), blocks, d);
                }
                if let Some(dot4) = k.packed_4rows {
                    // The layout products use where this kernel exists (`quant::Packed4`).
                    let packed = wick::quant::pack::layout(t, &w, row_bytes).unwrap();
                    let group = 4 * row_bytes * packed.len() / w.len();
                    let d = time(min, || {
                        for g in packed.chunks_exact(group) {
                            black_box(dot4(black_box(g), black_box(&a)));
                        }
                    });
                    report(&format!("{t} packed"), level, w.len(), blocks, d);
                }
                if let Some(tile) = k.gemm_4x4 {
                    // Four activation rows per pass: ns/block counts block dots, so it
                    // compares with the lines above.
                    let acts: Vec<Vec<u8>> =
                        (0..4).map(|j| encode(at, &values(cols, 10 + j))).collect();
                    let a = [0, 1, 2, 3].map(|j| &acts[j][..]);
                    let d = time(min, || {
                        for r in w.chunks_exact(4 * row_bytes) {
                            let rs = [0, 1, 2, 3].map(|i| &r[i * row_bytes..(i + 1) * row_bytes]);
                            black_box(tile(black_box(&rs), black_box(&a)));
                        }
                    });
                    report(&format!("{t} 4x4 tile"), level, 4 * w.len(), 4 * blocks, d);
                }
            }
        }
    }
    println!("== activation quantizer, 11008 values");
    let x = values(11008, 3);
    for t in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        for level in supported_levels() {
            if !t.to_string().contains(&filter) && !level.name().contains(&filter) {
                continue;
            }
            let k = kernels_at(level, t).unwrap();
            let mut out = vec![0u8; t.bytes_for(x.len() as u64).unwrap() as usize];
            let d = time(min, || (k.from_float)(black_box(&x), black_box(&mut out)));
            report(
                &format!("{t} from_float"),
                level,
                x.len() * 4,
                x.len() / 32,
                d,
            );
        }
    }
}
