//! `wick selftest --gpu`: every CUDA op against the CPU reference op, on random inputs drawn
//! fresh each run, at several sizes including odd ones, with outputs poisoned first. With
//! `-m MODEL`, a whole model instead: greedy decoding on both backends, step by step.

use std::path::PathBuf;

use clap::Args;

use super::Failure;

#[derive(Args)]
pub struct SelftestArgs {
    /// Test the CUDA backend against the CPU backend.
    #[arg(long)]
    gpu: bool,
    /// Seed for the random inputs (default: drawn from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Instead of single ops, run this model greedily on the GPU and the CPU and compare
    /// their choices at every step (both fed the CPU's token), reporting the logit gap
    /// wherever they part.
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Greedy steps for -m.
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// The prompt for -m.
    #[arg(long, default_value = "The quick brown fox")]
    prompt: String,
    /// f32 activations on both backends (default: both round them to 8 bits).
    #[arg(long)]
    exact: bool,
    /// After the checks, time the matrix products and attention kernels of a llama3-8b
    /// decode step, every kernel variant (several minutes).
    #[arg(long)]
    timings: bool,
}

pub fn run(a: SelftestArgs) -> Result<(), Failure> {
    if !a.gpu {
        return Err(Failure::Usage(anyhow::anyhow!(
            "nothing to test: pass --gpu to check the CUDA backend against the CPU"
        )));
    }
    #[cfg(feature = "cuda")]
    {
        let seed = a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        match &a.model {
            Some(m) => gpu::compare_model(m, a.steps, &a.prompt, a.exact),
            None => gpu::run(seed, a.timings),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (a.seed, a.model, a.steps, a.prompt, a.exact, a.timings);
        Err(super::no_cuda())
    }
}

#[cfg(feature = "cuda")]
#[path = "selftest_decode.rs"]
mod decode;

#[cfg(feature = "cuda")]
mod gpu {
    use anyhow::{ensure, Result};

    use super::Failure;
    use crate::backend::cpu::Cpu;
    use crate::backend::cuda::{Cuda, DeviceMem, DeviceWeight, MV_VARIANTS};
    use crate::backend::{AttnShape, Backend};
    use crate::cli::FailWith;
    use crate::kv::{KvLayout, KvSettings, KvType};
    use crate::model::Tensor;
    use crate::quant::{self, GgmlType, Precision};

    pub(super) struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        pub(super) fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    pub(super) struct Report {
        failures: usize,
        lines: usize,
    }

    impl Report {
        pub(super) fn check(&mut self, name: &str, got: &[f32], want: &[f32], bound: f64) {
            self.check_scaled(name, got, want, want, bound)
        }

        /// Error relative to `scale`: for sums, the sum of the terms' magnitudes, so that
        /// a result that cancels to near zero does not inflate the relative error.
        fn check_scaled(
            &mut self,
            name: &str,
            got: &[f32],
            want: &[f32],
            scale: &[f32],
            bound: f64,
        ) {
            let mut num = 0f64;
            let mut den = 0f64;
            let mut bad = 0usize;
            for ((g, w), m) in got.iter().zip(want).zip(scale) {
                if !g.is_finite() {
                    bad += 1;
                }
                num += ((g - w) as f64).powi(2);
                den += (*m as f64).powi(2);
            }
            let rel = (num / den.max(1e-30)).sqrt();
            let ok = bad == 0 && rel <= bound;
            if !ok {
                self.failures += 1;
            }
            self.lines += 1;
            eprintln!(
                "{} {name:<44} rel err {rel:.2e} (bound {bound:.0e}){}",
                if ok { "ok  " } else { "FAIL" },
                if bad > 0 {
                    format!(", {bad} values unwritten or not finite")
                } else {
                    String::new()
                }
            );
        }

        /// A bit-for-bit check: `differ` of `of` values differ.
        fn check_bits(&mut self, name: &str, what: &str, differ: usize, of: usize) {
            self.lines += 1;
            if differ > 0 {
                self.failures += 1;
            }
            eprintln!(
                "{} {name:<44} {what}: {differ} of {of} values differ",
                if differ > 0 { "FAIL" } else { "ok  " },
            );
        }
    }

    /// How many values of `a` and `b` differ in their bits.
    fn differing(a: &[f32], b: &[f32]) -> usize {
        a.iter()
            .zip(b)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count()
    }

    pub(super) fn upload(g: &Cuda, v: &[f32]) -> Result<DeviceMem> {
        let mut m = g.buffer(v.len())?;
        g.write(&mut m, v)?;
        Ok(m)
    }

    pub(super) fn download(g: &Cuda, m: &DeviceMem, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0f32; n];
        g.read(m, &mut v)?;
        Ok(v)
    }

    fn quantized(t: GgmlType, w: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; t.bytes_for(w.len() as u64).unwrap_or(0) as usize];
        quant::quantize_row(t, w, &mut q).expect("sizes match");
        q
    }

    /// For every product of weight row `r` (of the `rows` x `cols` matrix `q` of type `t`)
    /// with activation row `b` of `x`, `f(weight row, activation row)`, laid out `nb` x
    /// `rows`. Rows are spread over threads: the largest products checked have billions
    /// of terms.
    fn per_product(
        t: GgmlType,
        q: &[u8],
        x: &[f32],
        (nb, rows, cols): (usize, usize, usize),
        f: impl Fn(&[f32], &[f32]) -> f32 + Sync,
    ) -> Vec<f32> {
        let mut wd = vec![0f32; rows * cols];
        quant::dequantize_row(t, q, &mut wd).expect("sizes match");
        let mut out = vec![0f32; nb * rows];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = rows.div_ceil(threads).max(1);
        let f = &f;
        std::thread::scope(|s| {
            // Each thread owns a range of weight rows, laid out [row][batch] and
            // transposed after.
            let parts: Vec<_> = wd
                .chunks(per * cols)
                .map(|w| {
                    s.spawn(move || {
                        let mut part = Vec::with_capacity(w.len() / cols * nb);
                        for wr in w.chunks(cols) {
                            for xr in x.chunks(cols).take(nb) {
                                part.push(f(wr, xr));
                            }
                        }
                        part
                    })
                })
                .collect();
            let mut r0 = 0;
            for p in parts {
                let part: Vec<f32> = p.join().expect("product thread");
                for (i, m) in part.chunks(nb).enumerate() {
                    for (b, &v) in m.iter().enumerate() {
                        out[b * rows + r0 + i] = v;
                    }
                }
                r0 += part.len() / nb;
            }
        });
        out
    }

    /// The magnitude of each product's summed terms, sum |w[r][i] * x[b][i]|: the scale
    /// of a product's float rounding that a sum cancelling to near zero does not shrink.
    fn term_magnitudes(t: GgmlType, q: &[u8], x: &[f32], shape: (usize, usize, usize)) -> Vec<f32> {
        per_product(t, q, x, shape, |w, x| {
            w.iter().zip(x).map(|(a, c)| (a * c).abs()).sum()
        })
    }

    /// The standard deviation of each product's error when its activations are rounded to
    /// int8 blocks of 32 (step d = the block's largest magnitude / 127, an error uniform in
    /// ±d/2): sqrt(sum over i of w[r][i]² d(i)² / 12).
    fn int8_noise(t: GgmlType, q: &[u8], x: &[f32], shape: (usize, usize, usize)) -> Vec<f32> {
        per_product(t, q, x, shape, |w, x| {
            let var: f64 = w
                .chunks(32)
                .zip(x.chunks(32))
                .map(|(w, x)| {
                    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    let w2: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
                    w2 * d * d / 12.0
                })
                .sum();
            var.sqrt() as f32
        })
    }

    /// Greedy decoding of a whole model on both backends. At every step each picks its
    /// argmax; where they differ, the CPU's logits say how close the two tokens were, and
    /// both go on with the CPU's token so that every later step is compared too. A pick
    /// that differs is explained by rounding when the CPU's gap between the two tokens is
    /// under 1e-3, or under the largest difference between the two backends' logits seen
    /// in the run (the GPU keeps its KV cache in f16, the CPU in f32); otherwise it fails.
    pub fn compare_model(
        path: &std::path::Path,
        steps: usize,
        prompt: &str,
        exact: bool,
    ) -> Result<(), Failure> {
        use crate::model::Llama;
        use crate::session::Session;
        const MAX_GAP: f32 = 1e-3;
        let precision = if exact {
            Precision::Exact
        } else {
            Precision::Fast
        };
        let (file, _) = super::super::load::open_model(Some(path))?;
        let tok = crate::tokenizer::Tokenizer::from_gguf(&file).file()?;
        let tokens = tok.encode(prompt, true, false).usage()?;
        let cpu = Llama::load(
            &file,
            Cpu::new(crate::backend::cpu::default_threads(), precision),
        )
        .file()?;
        let gpu = Llama::load(&file, Cuda::new(0).file()?.with_precision(precision)).file()?;
        let ctx = tokens.len() + steps + 1;
        let mut cs = Session::new(&cpu, ctx).generation()?;
        let mut gs = Session::new(&gpu, ctx).generation()?;
        let mut cl = cs.prefill(&tokens).generation()?.to_vec();
        let mut gl = gs.prefill(&tokens).generation()?.to_vec();
        let argmax = |l: &[f32]| {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        };
        let mut gaps = Vec::new();
        let mut max_diff = 0f32;
        for step in 0..steps {
            let (c, g) = (argmax(&cl), argmax(&gl));
            let diff = cl
                .iter()
                .zip(&gl)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            max_diff = max_diff.max(diff);
            if c != g {
                let gap = cl[c] - cl[g];
                gaps.push(gap);
                eprintln!(
                    "step {step}: cpu picks {c} ({:.5}), gpu picks {g} ({:.5}); cpu logit gap {gap:.2e}, gpu {:.2e}",
                    cl[c],
                    gl[g],
                    gl[g] - gl[c]
                );
            }
            cl.copy_from_slice(cs.step(c as u32).generation()?);
            gl.copy_from_slice(gs.step(c as u32).generation()?);
        }
        let noise = max_diff.max(MAX_GAP);
        let beyond = gaps.iter().filter(|&&g| g > noise).count();
        eprintln!(
            "selftest -m: {steps} greedy steps ({}), {} picks differ, {beyond} of them with a cpu logit gap over {noise:.3e} (the largest logit difference between the backends, at least {MAX_GAP:e})",
            if exact { "exact" } else { "int8 activations" },
            gaps.len()
        );
        if beyond > 0 {
            return Err(Failure::Generation(anyhow::anyhow!(
                "{beyond} greedy picks differ by more than rounding"
            )));
        }
        println!(
            "{steps} steps, {} near-tie differences, 0 failed",
            gaps.len()
        );
        Ok(())
    }

    pub fn run(seed: u64, timings: bool) -> Result<(), Failure> {
        // Exact: f32 activations, the CPU reference's math. Fast: activations rounded to
        // int8 for small batches, what gen and bench run.
        let g = Cuda::new(0).file()?.with_precision(Precision::Exact);
        let gf = Cuda::new(0).file()?;

        eprintln!(
            "selftest: {} ({:.1} GiB), seed {seed}",
            g.name,
            g.total_mem as f64 / (1u64 << 30) as f64
        );
        let cpu = Cpu::new(2, Precision::Exact);
        let mut rng = Rng(seed | 1);
        let mut r = Report {
            failures: 0,
            lines: 0,
        };
        ops(&g, &cpu, &mut rng, &mut r).generation()?;
        fast_matmuls(&gf, &cpu, &mut rng, &mut r).generation()?;
        let mut spec = crate::cli::selftest_spec::Tally::default();
        crate::cli::selftest_spec::run(&gf, seed, &mut spec).generation()?;
        r.lines += spec.checks;
        r.failures += spec.failures;
        if timings {
            time_kernels(&gf, &mut rng).generation()?;
        }
        eprintln!("selftest: {} checks, {} failed", r.lines, r.failures);
        if r.failures > 0 {
            return Err(Failure::Generation(anyhow::anyhow!(
                "{} GPU ops disagree with the CPU",
                r.failures
            )));
        }
        println!("{} passed, 0 failed", r.lines);
        Ok(())
    }

    /// Times the matrix products of llama3-8b's decode step (and the FFN shape for batches):
    /// weight bytes read per second. Up to 16 rows, the streaming matrix-vector kernel
    /// (the default, shape chosen by size) against the direct one (WICK_MV=old), and the
    /// cost of the batch relative to one row; WICK_MV_SHAPES=1 adds the streaming kernel's
    /// fixed shapes (WICK_MV=2..5).
    fn time_kernels(g: &Cuda, rng: &mut Rng) -> Result<()> {
        const MV: &[usize] = &[1, 2, 4, 8, 16];
        let shapes: &[(GgmlType, usize, usize, &[usize])] = &[
            (
                GgmlType::Q4_0,
                14336,
                4096,
                &[1, 2, 4, 8, 16, 32, 64, 128, 512],
            ),
            (GgmlType::Q4_0, 4096, 14336, &[1, 2, 4, 8, 16, 64, 128, 512]),
            (GgmlType::Q4_0, 4096, 4096, &[1, 2, 4, 8, 16, 64, 512]),
            (GgmlType::Q4_0, 1024, 4096, &[1, 2, 4, 8, 16, 64, 512]),
            (GgmlType::Q6_K, 128256, 4096, MV),
            (GgmlType::Q4_1, 14336, 4096, &[1, 64, 512]),
            (GgmlType::Q8_0, 14336, 4096, &[1, 2, 4, 8, 16, 64, 128, 512]),
            (GgmlType::Q4_K, 14336, 4096, &[1, 2, 4, 8, 16, 64, 128, 512]),
            (GgmlType::Q6_K, 14336, 4096, &[1, 2, 4, 8, 16, 64, 128, 512]),
            (GgmlType::Q8_0, 4096, 14336, &[128, 512]),
            (GgmlType::Q4_K, 4096, 14336, &[128, 512]),
            (GgmlType::Q6_K, 4096, 14336, &[128, 512]),
        ];
        let all_shapes = std::env::var_os("WICK_MV_SHAPES").is_some();
        for &(t, rows, cols, batches) in shapes {
            if !crate::backend::cuda::supports(t) {
                continue;
            }
            let w = rng.vec(rows * cols);
            let q = quantized(t, &w);
            let dw = <Cuda as Backend>::weight(
                g,
                Tensor {
                    ty: t,
                    rows,
                    cols,
                    data: &q,
                },
            )?;
            // Batch 1's time per matrix-vector variant, for the batch cost ratio.
            let mut single = [0f64; 8];
            for &nb in batches {
                let dx = upload(g, &rng.vec(nb * cols))?;
                let mut dy = g.buffer(nb * rows)?;
                // Up to 16 rows, the matrix-vector kernels; above, the tensor-core kernels
                // (set_gemm_variant: the default, then the others).
                let variants: &[i32] = match nb {
                    ..=16 if all_shapes => &MV_VARIANTS,
                    ..=16 => &MV_VARIANTS[..2],
                    17..=64 => &[0, 1, 4],
                    _ => &[0, 3, 6, 2, 5],
                };
                for &variant in variants {
                    if nb <= 16 {
                        crate::backend::cuda::set_matvec_variant(variant);
                    } else {
                        crate::backend::cuda::set_gemm_variant(variant);
                    }
                    // Timed as a recorded graph of launches, as a decode step runs, so
                    // that host launch costs stay out of the figure.
                    let reps = 20;
                    let mut graph = None;
                    g.run_step(&mut graph, &mut || {
                        for _ in 0..reps {
                            g.matmul(&dx, nb, &[&dw], &mut [&mut dy])?;
                        }
                        Ok(())
                    })?;
                    g.sync()?;
                    let replays = 5;
                    let start = std::time::Instant::now();
                    for _ in 0..replays {
                        g.run_step(&mut graph, &mut || Ok(()))?;
                    }
                    g.sync()?;
                    let secs = start.elapsed().as_secs_f64() / (reps * replays) as f64;
                    let (kernel, ratio) = if nb <= 16 {
                        let v = variant as usize;
                        if nb == 1 {
                            single[v] = secs;
                        }
                        let name = match variant {
                            0 => "mv new",
                            1 => "mv old",
                            2 => "mv R1S8",
                            3 => "mv R2S4",
                            4 => "mv R4S4",
                            _ => "mv R1S4",
                        };
                        let ratio = if single[v] > 0.0 {
                            format!(", {:5.2}x batch 1", secs / single[v])
                        } else {
                            String::new()
                        };
                        (name.to_string(), ratio)
                    } else {
                        (format!("gemm {variant}"), String::new())
                    };
                    eprintln!(
                        "time matmul {t} {rows}x{cols} batch {nb:>3} {kernel:<7}: {:8.1} us, {:7.1} GB/s of weights, {:6.2} TFLOP/s{ratio}",
                        secs * 1e6,
                        q.len() as f64 / secs / 1e9,
                        2.0 * (rows * cols * nb) as f64 / secs / 1e12
                    );
                }
                crate::backend::cuda::set_matvec_variant(0);
                crate::backend::cuda::set_gemm_variant(0);
            }
        }
        attention_timings(g, rng)?;
        super::decode::timings(g, rng)
    }

    /// Times attention of llama3-8b's shape (32 heads, 8 KV heads of 128) over a cache of
    /// 512 positions, as prefill's last batch and as a verification batch, with the tiled
    /// kernel (variant 0) and the single-row one (variant 1).
    fn attention_timings(g: &Cuda, rng: &mut Rng) -> Result<()> {
        let s = AttnShape {
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            rope_dims: 128,
            rope_theta: 500000.0,
        };
        let (qd, kd) = (s.q_dim(), s.kv_dim());
        for ty in [KvType::F16, KvType::Q8_0, KvType::Fp8] {
            let settings = KvSettings {
                ty,
                ..KvSettings::new(512)
            };
            let layouts = [KvLayout::new(&settings, None)];
            let mut kv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            for start in (0..512).step_by(64) {
                let (mut q, mut k) = (upload(g, &rng.vec(64 * qd))?, upload(g, &rng.vec(64 * kd))?);
                let v = upload(g, &rng.vec(64 * kd))?;
                g.begin_forward(&[0; 64], start)?;
                g.rope_store(&mut q, &mut k, &v, &mut kv, 0, start, 64, s)?;
            }
            for (pos, rows) in [(448, 64), (504, 8)] {
                let q = upload(g, &rng.vec(rows * qd))?;
                let mut out = g.buffer(rows * qd)?;
                g.begin_forward(&vec![0; rows], pos)?;
                for variant in [0, 1] {
                    crate::backend::cuda::set_attention_variant(variant);
                    let reps = 20;
                    let mut graph = None;
                    g.run_step(&mut graph, &mut || {
                        for _ in 0..reps {
                            g.attention(&q, &kv, 0, pos, rows, s, &mut out)?;
                        }
                        Ok(())
                    })?;
                    g.sync()?;
                    let replays = 5;
                    let start = std::time::Instant::now();
                    for _ in 0..replays {
                        g.run_step(&mut graph, &mut || Ok(()))?;
                    }
                    g.sync()?;
                    let secs = start.elapsed().as_secs_f64() / (reps * replays) as f64;
                    // Multiply-adds of Q K and P V over the keys each row sees.
                    let flops = (0..rows)
                        .map(|b| 4.0 * (pos + b + 1) as f64 * (s.n_heads * s.head_dim) as f64)
                        .sum::<f64>();
                    eprintln!(
                        "time attention {} 32/8x128 pos {pos} rows {rows:>2} kernel {variant}: {:8.1} us, {:6.2} TFLOP/s",
                        ty.name(),
                        secs * 1e6,
                        flops / secs / 1e12
                    );
                }
                crate::backend::cuda::set_attention_variant(0);
            }
        }
        Ok(())
    }

    /// The int8-activation products: the matrix-vector kernel (batches up to 16) and the
    /// tensor-core kernels (64 tokens per block up to 64, the f16 kernel above, its
    /// rounding of q * d and of weights to f16 well inside the int8 noise; each batch above
    /// 16 also through the other kernels, set_gemm_variant: the 128-token int8 ones from 17
    /// tokens, the 64-token one above 64, wide2 with both unrolls), at odd row counts, batches that
    /// are not multiples of 8 or of a token tile, and rows whose last 256 values are a
    /// partial stage. Against the exact CPU product, the error is the rounding of
    /// activations to int8 blocks of 32: random, with a standard deviation per product
    /// that `int8_noise` computes from the weights and the blocks' steps. The check is the
    /// error's RMS over the outputs in units of that noise, at most `NOISE_BOUND`: a sum
    /// that is wrong by one block of 32 terms is some 20 noise units off, while a bound
    /// relative to the outputs' size failed now and then on products of one to five
    /// values, whose size varies a lot from draw to draw. (A kernel that does not round,
    /// as some shapes' paths do not, has an error of about 0 units.)
    fn fast_matmuls(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        // Error RMS in units of the int8 rounding noise: a one-output product is one
        // normal draw, over 5 in about 1 of 2 million draws.
        const NOISE_BOUND: f64 = 5.0;
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for (rows, cols, nb) in [
                (1usize, 256usize, 1usize),
                // Rows that are not whole K-quant super-blocks or pairs of blocks.
                (5, 576, 1),
                (6, 320, 4),
                (9, 96, 2),
                (3, 1088, 7),
                (7, 512, 2),
                (333, 512, 3),
                (4096, 4096, 1),
                (129, 2048, 5),
                (1000, 4096, 8),
                (257, 1536, 11),
                (64, 14336, 16),
                (333, 512, 17),
                (7, 768, 19),
                (77, 416, 20),
                (257, 1536, 24),
                (129, 2048, 33),
                (1000, 4096, 64),
                (4096, 14336, 64),
                (333, 512, 65),
                (77, 416, 130),
                (129, 2048, 129),
                (257, 1536, 300),
                (64, 14336, 100),
                (1000, 4096, 512),
            ] {
                if !cols.is_multiple_of(t.block_len()) {
                    continue;
                }
                let w = rng.vec(rows * cols);
                let q = quantized(t, &w);
                let tensor = Tensor {
                    ty: t,
                    rows,
                    cols,
                    data: &q,
                };
                let x = rng.vec(nb * cols);
                let noise = int8_noise(t, &q, &x, (nb, rows, cols));
                let dw = <Cuda as Backend>::weight(g, tensor)?;
                let dx = upload(g, &x)?;
                let base = rng.vec(nb * rows);
                let mut want_set = base.clone();
                cpu.matmul(
                    &x,
                    nb,
                    &[&<Cpu as Backend>::weight(cpu, tensor)?],
                    &mut [&mut want_set],
                )?;
                let mut want_add = base.clone();
                cpu.matmul_add(
                    &x,
                    nb,
                    &<Cpu as Backend>::weight(cpu, tensor)?,
                    &mut want_add,
                )?;
                // Up to 16 rows every matrix-vector kernel (set_matvec_variant), above the
                // tensor-core kernels (set_gemm_variant).
                let variants: &[i32] = match nb {
                    ..=16 => &MV_VARIANTS,
                    17..=64 => &[0, 1, 4],
                    _ => &[0, 3, 6, 2, 5],
                };
                for &variant in variants {
                    if nb <= 16 {
                        crate::backend::cuda::set_matvec_variant(variant);
                    } else {
                        crate::backend::cuda::set_gemm_variant(variant);
                    }
                    for accumulate in [false, true] {
                        let mut dy = upload(g, &base)?;
                        if accumulate {
                            g.matmul_add(&dx, nb, &dw, &mut dy)?;
                        } else {
                            g.poison(&mut dy)?;
                            g.matmul(&dx, nb, &[&dw], &mut [&mut dy])?;
                        }
                        let got = download(g, &dy, nb * rows)?;
                        let (op, want) = if accumulate {
                            ("matmul_add", &want_add)
                        } else {
                            ("matmul", &want_set)
                        };
                        let name = format!(
                            "int8 {op} {t} {rows}x{cols} batch {nb} kernels {variant} (/ noise)"
                        );
                        r.check_scaled(&name, &got, want, &noise, NOISE_BOUND);
                        if nb > 1 && nb <= 16 && !accumulate {
                            rows_alone(g, &dx, &dw, nb, rows, cols, &got, &name, r)?;
                        }
                    }
                }
                crate::backend::cuda::set_matvec_variant(0);
                crate::backend::cuda::set_gemm_variant(0);
            }
        }
        fused_chains(g, cpu, rng, r)
    }

    /// Checks that each row of a matrix-vector batch (`got`, nb x rows) is bitwise the
    /// product of that row alone, under the variant set now: verification in the
    /// speculative decoder relies on it.
    #[allow(clippy::too_many_arguments)]
    fn rows_alone(
        g: &Cuda,
        dx: &DeviceMem,
        dw: &DeviceWeight,
        nb: usize,
        rows: usize,
        cols: usize,
        got: &[f32],
        name: &str,
        r: &mut Report,
    ) -> Result<()> {
        let x = download(g, dx, nb * cols)?;
        let mut differ = 0;
        for b in 0..nb {
            let one = upload(g, &x[b * cols..(b + 1) * cols])?;
            let mut dy = g.buffer(rows)?;
            g.matmul(&one, 1, &[dw], &mut [&mut dy])?;
            let alone = download(g, &dy, rows)?;
            differ += differing(&alone, &got[b * rows..(b + 1) * rows]);
        }
        r.check_bits(name, "rows as computed alone", differ, nb * rows);
        Ok(())
    }

    /// RMSNorm then three products in one launch (two of one type, one of another), and
    /// SwiGLU then the down projection: the int8 activations come from the first op of
    /// each pair instead of a rounding launch of their own.
    fn fused_chains(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        let (rows, dim, ffn) = (3, 512, 1536);
        let weight = |t: GgmlType, n_rows: usize, cols: usize, rng: &mut Rng| {
            quantized(t, &rng.vec(n_rows * cols))
        };
        let norm: Vec<u8> = rng.vec(dim).iter().flat_map(|v| v.to_le_bytes()).collect();
        let norm_t = Tensor {
            ty: GgmlType::F32,
            rows: 1,
            cols: dim,
            data: &norm,
        };
        let shapes = [
            (GgmlType::Q4_K, 512),
            (GgmlType::Q4_K, 128),
            (GgmlType::Q6_K, 128),
        ];
        let data: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&(t, n)| weight(t, n, dim, rng))
            .collect();
        let tensors: Vec<Tensor> = shapes
            .iter()
            .zip(&data)
            .map(|(&(ty, n), d)| Tensor {
                ty,
                rows: n,
                cols: dim,
                data: d,
            })
            .collect();
        let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v * 4.0).collect();
        let dn = <Cuda as Backend>::weight(g, norm_t)?;
        let dws = tensors
            .iter()
            .map(|t| <Cuda as Backend>::weight(g, *t))
            .collect::<Result<Vec<_>>>()?;
        let dx = upload(g, &x)?;
        let mut dxb = g.buffer(rows * dim)?;
        g.rmsnorm(&dx, &dn, 1e-5, rows, &mut dxb)?;
        let mut douts = shapes
            .iter()
            .map(|&(_, n)| g.buffer(rows * n))
            .collect::<Result<Vec<_>>>()?;
        for o in douts.iter_mut() {
            g.poison(o)?;
        }
        {
            let ws: Vec<&_> = dws.iter().collect();
            let mut outs: Vec<&mut DeviceMem> = douts.iter_mut().collect();
            g.matmul(&dxb, rows, &ws, &mut outs)?;
        }
        let mut xb = vec![0f32; rows * dim];
        cpu.rmsnorm(
            &x,
            &<Cpu as Backend>::weight(cpu, norm_t)?,
            1e-5,
            rows,
            &mut xb,
        )?;
        for ((t, d), &(ty, n)) in tensors.iter().zip(&douts).zip(&shapes) {
            let mut want = vec![f32::NAN; rows * n];
            cpu.matmul(
                &xb,
                rows,
                &[&<Cpu as Backend>::weight(cpu, *t)?],
                &mut [&mut want],
            )?;
            r.check(
                &format!("int8 rmsnorm then matmul {ty} {n}x{dim} of 3"),
                &download(g, d, rows * n)?,
                &want,
                2e-2,
            );
        }

        let down_q = weight(GgmlType::Q4_0, dim, ffn, rng);
        let down = Tensor {
            ty: GgmlType::Q4_0,
            rows: dim,
            cols: ffn,
            data: &down_q,
        };
        let (gate, up) = (rng.vec(rows * ffn), rng.vec(rows * ffn));
        let base = rng.vec(rows * dim);
        let dd = <Cuda as Backend>::weight(g, down)?;
        let (mut dg, du, mut dy) = (upload(g, &gate)?, upload(g, &up)?, upload(g, &base)?);
        g.swiglu(&mut dg, &du, rows * ffn)?;
        g.matmul_add(&dg, rows, &dd, &mut dy)?;
        let mut hg = gate.clone();
        cpu.swiglu(&mut hg, &up, rows * ffn)?;
        let mut want = base.clone();
        cpu.matmul_add(&hg, rows, &<Cpu as Backend>::weight(cpu, down)?, &mut want)?;
        r.check(
            "int8 swiglu then matmul_add Q4_0",
            &download(g, &dy, rows * dim)?,
            &want,
            2e-2,
        );
        folded_norm(g, cpu, rng, r)?;
        swiglu_epilogue(g, cpu, rng, r)
    }

    /// Gate and up with SwiGLU in their epilogue (`matmul_swiglu`), over a folded norm's
    /// output as decode runs it, then the down product over SwiGLU's int8 output: against
    /// the CPU, bit for bit against the separate launches (`matmul` then `swiglu`), and
    /// every batch row bit for bit against the row alone.
    fn swiglu_epilogue(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        // (gate/up type, width, input width, batch rows, the type of the product before,
        // whose norm is folded unless it is a K-quant). Q2_K has no matrix-vector kernel.
        let cases = [
            (GgmlType::Q4_0, 14336, 4096, 1, GgmlType::Q4_0),
            (GgmlType::Q4_0, 1536, 512, 3, GgmlType::Q4_0),
            (GgmlType::Q4_1, 512, 256, 16, GgmlType::Q4_0),
            (GgmlType::Q5_0, 768, 512, 5, GgmlType::Q4_K),
            (GgmlType::Q5_1, 256, 768, 2, GgmlType::Q4_0),
            (GgmlType::Q4_K, 1024, 512, 1, GgmlType::Q4_K),
            (GgmlType::Q4_K, 512, 256, 3, GgmlType::Q4_0),
            (GgmlType::Q5_K, 512, 256, 4, GgmlType::Q4_K),
            (GgmlType::Q6_K, 256, 512, 2, GgmlType::Q6_K),
            (GgmlType::Q8_0, 512, 256, 1, GgmlType::Q8_0),
            (GgmlType::Q2_K, 256, 256, 1, GgmlType::Q4_0),
        ];
        for (ty, ffn, dim, nb, tp) in cases {
            let t = |ty, rows, cols, data| Tensor {
                ty,
                rows,
                cols,
                data,
            };
            let oq = quantized(tp, &rng.vec(dim * dim));
            let norm: Vec<u8> = rng.vec(dim).iter().flat_map(|v| v.to_le_bytes()).collect();
            let (gq, uq) = (
                quantized(ty, &rng.vec(ffn * dim)),
                quantized(ty, &rng.vec(ffn * dim)),
            );
            let dq = quantized(GgmlType::Q4_0, &rng.vec(dim * ffn));
            let tensors = [
                t(tp, dim, dim, &oq[..]),
                t(GgmlType::F32, 1, dim, &norm[..]),
                t(ty, ffn, dim, &gq[..]),
                t(ty, ffn, dim, &uq[..]),
                t(GgmlType::Q4_0, dim, ffn, &dq[..]),
            ];
            let y = rng.vec(nb * dim);
            let x: Vec<f32> = rng.vec(nb * dim).iter().map(|v| v * 4.0).collect();
            let dw = tensors
                .iter()
                .map(|t| <Cuda as Backend>::weight(g, *t))
                .collect::<Result<Vec<_>>>()?;
            // Rows b0..b0 + n, the epilogue or separate launches: SwiGLU's output, the down
            // product's (added to the residual), and whether the epilogue ran.
            let run = |b0: usize, n: usize, fused: bool| -> Result<(Vec<f32>, Vec<f32>, bool)> {
                let dy = upload(g, &y[b0 * dim..(b0 + n) * dim])?;
                let mut dx = upload(g, &x[b0 * dim..(b0 + n) * dim])?;
                let mut dxb = g.buffer(n * dim)?;
                let (mut dg, mut du) = (g.buffer(n * ffn)?, g.buffer(n * ffn)?);
                g.poison(&mut dg)?;
                g.poison(&mut du)?;
                g.matmul_add_norm(&dy, n, &dw[0], &mut dx, &dw[1], 1e-5, &mut dxb)?;
                let epilogue = if fused {
                    g.matmul_swiglu(&dxb, n, &dw[2], &dw[3], ffn, &mut dg, &mut du)?;
                    g.swiglu_fused()
                } else {
                    g.matmul(&dxb, n, &[&dw[2], &dw[3]], &mut [&mut dg, &mut du])?;
                    g.swiglu(&mut dg, &du, n * ffn)?;
                    false
                };
                g.matmul_add(&dg, n, &dw[4], &mut dx)?;
                Ok((
                    download(g, &dg, n * ffn)?,
                    download(g, &dx, n * dim)?,
                    epilogue,
                ))
            };
            let (gh, gx, fused) = run(0, nb, true)?;
            let name = format!(
                "{} {ty} {ffn}x{dim} x{nb} after {tp}",
                if fused {
                    "swiglu epilogue"
                } else {
                    "separate swiglu"
                }
            );
            let cw = tensors
                .iter()
                .map(|t| <Cpu as Backend>::weight(cpu, *t))
                .collect::<Result<Vec<_>>>()?;
            let (mut wx, mut wxb) = (x.clone(), vec![0f32; nb * dim]);
            let (mut wg, mut wu) = (vec![0f32; nb * ffn], vec![0f32; nb * ffn]);
            cpu.matmul_add(&y, nb, &cw[0], &mut wx)?;
            cpu.rmsnorm(&wx, &cw[1], 1e-5, nb, &mut wxb)?;
            cpu.matmul(&wxb, nb, &[&cw[2], &cw[3]], &mut [&mut wg, &mut wu])?;
            cpu.swiglu(&mut wg, &wu, nb * ffn)?;
            r.check(&format!("{name}: swiglu"), &gh, &wg, 2e-2);
            let (sh, sx, _) = run(0, nb, false)?;
            r.check_bits(
                &name,
                "against separate launches",
                differing(&gh, &sh) + differing(&gx, &sx),
                nb * (ffn + dim),
            );
            if nb > 1 {
                let mut differ = 0;
                for b in 0..nb {
                    let (ah, ax, _) = run(b, 1, true)?;
                    differ += differing(&ah, &gh[b * ffn..(b + 1) * ffn])
                        + differing(&ax, &gx[b * dim..(b + 1) * dim]);
                }
                r.check_bits(&name, "rows against rows alone", differ, nb * (ffn + dim));
            }
        }
        Ok(())
    }

    /// A projection with its residual and the next RMSNorm as one op (`matmul_add_norm`),
    /// then a product over the norm's output: on Hopper the norm is folded into the first
    /// product's epilogue and the second product's scales. Checked against the CPU, every
    /// batch row bit for bit against the row alone (speculative verification relies on
    /// it), and the norm's f32 output, which the folded path writes only when read.
    fn folded_norm(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        // (producer type, norm width = producer rows, producer cols, consumer, its rows,
        // batch rows). Q2_K has no matrix-vector kernel: its product reads the f32 output.
        // K-quant producers keep the separate norm.
        let cases = [
            (GgmlType::Q4_0, 4096, 14336, GgmlType::Q4_0, 1536, 1),
            (GgmlType::Q4_0, 512, 1536, GgmlType::Q4_K, 768, 1),
            (GgmlType::Q8_0, 768, 2816, GgmlType::Q8_0, 96, 3),
            (GgmlType::Q4_1, 256, 4096, GgmlType::Q6_K, 256, 16),
            (GgmlType::Q5_0, 512, 512, GgmlType::Q4_1, 160, 5),
            (GgmlType::Q5_1, 512, 768, GgmlType::Q2_K, 256, 2),
            (GgmlType::Q6_K, 256, 4096, GgmlType::Q6_K, 256, 3),
        ];
        for (tp, dim, cols, tc, crows, nb) in cases {
            let wq = quantized(tp, &rng.vec(dim * cols));
            let cq = quantized(tc, &rng.vec(crows * dim));
            let norm: Vec<u8> = rng.vec(dim).iter().flat_map(|v| v.to_le_bytes()).collect();
            let t = |ty, rows, cols, data| Tensor {
                ty,
                rows,
                cols,
                data,
            };
            let tensors = [
                t(tp, dim, cols, &wq[..]),
                t(GgmlType::F32, 1, dim, &norm[..]),
                t(tc, crows, dim, &cq[..]),
            ];
            let y = rng.vec(nb * cols);
            let x: Vec<f32> = rng.vec(nb * dim).iter().map(|v| v * 4.0).collect();
            let dw = tensors
                .iter()
                .map(|t| <Cuda as Backend>::weight(g, *t))
                .collect::<Result<Vec<_>>>()?;
            // Rows b0..b0 + n: the residual, the consumer's output, the norm's output, and
            // whether the norm was folded.
            struct Run {
                x: Vec<f32>,
                z: Vec<f32>,
                xb: Vec<f32>,
                folded: bool,
            }
            let run = |b0: usize, n: usize| -> Result<Run> {
                let dy = upload(g, &y[b0 * cols..(b0 + n) * cols])?;
                let mut dx = upload(g, &x[b0 * dim..(b0 + n) * dim])?;
                let (mut dxb, mut dz) = (g.buffer(n * dim)?, g.buffer(n * crows)?);
                g.poison(&mut dxb)?;
                g.poison(&mut dz)?;
                g.matmul_add_norm(&dy, n, &dw[0], &mut dx, &dw[1], 1e-5, &mut dxb)?;
                let folded = g.norm_folded();
                g.matmul(&dxb, n, &[&dw[2]], &mut [&mut dz])?;
                Ok(Run {
                    x: download(g, &dx, n * dim)?,
                    z: download(g, &dz, n * crows)?,
                    xb: download(g, &dxb, n * dim)?,
                    folded,
                })
            };
            let Run {
                x: gx,
                z: gz,
                xb: gxb,
                folded,
            } = run(0, nb)?;
            let name = format!(
                "{} norm {tp} {dim}x{cols} then {tc} x{nb}",
                if folded { "folded" } else { "separate" }
            );
            let cw = tensors
                .iter()
                .map(|t| <Cpu as Backend>::weight(cpu, *t))
                .collect::<Result<Vec<_>>>()?;
            let (mut wx, mut wxb, mut wz) =
                (x.clone(), vec![0f32; nb * dim], vec![0f32; nb * crows]);
            cpu.matmul_add(&y, nb, &cw[0], &mut wx)?;
            cpu.rmsnorm(&wx, &cw[1], 1e-5, nb, &mut wxb)?;
            cpu.matmul(&wxb, nb, &[&cw[2]], &mut [&mut wz])?;
            // What the product added, so the residual does not hide its error.
            let added = |v: &[f32]| -> Vec<f32> { v.iter().zip(&x).map(|(a, b)| a - b).collect() };
            r.check(&format!("{name}: residual"), &added(&gx), &added(&wx), 2e-2);
            r.check(&format!("{name}: next product"), &gz, &wz, 2e-2);
            // The norm of the GPU's own residual: the two residuals differ by the int8
            // rounding of the product's input already.
            let mut nxb = vec![0f32; nb * dim];
            cpu.rmsnorm(&gx, &cw[1], 1e-5, nb, &mut nxb)?;
            r.check(&format!("{name}: norm read back"), &gxb, &nxb, 1e-5);
            if nb > 1 {
                let mut differ = 0;
                for b in 0..nb {
                    let alone = run(b, 1)?;
                    let (ax, az) = (alone.x, alone.z);
                    differ += differing(&ax, &gx[b * dim..(b + 1) * dim])
                        + differing(&az, &gz[b * crows..(b + 1) * crows]);
                }
                r.check_bits(&name, "rows against rows alone", differ, nb * (dim + crows));
            }
        }
        Ok(())
    }

    fn ops(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        let types: Vec<GgmlType> = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ]
        .into_iter()
        .filter(|&t| crate::backend::cuda::supports(t))
        .collect();

        // Matrix products, plain and accumulating, at odd and real sizes.
        for &t in &types {
            let sizes = [
                (1, 256, 1),
                (7, 256, 3),
                (333, 512, 1),
                (4096, 4096, 1),
                (129, 2048, 13),
                (1024, 11008, 64),
            ];
            // Float rows need not be whole blocks (stories260K's FFN is 172 wide).
            let float = matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
            let odd: &[(usize, usize, usize)] = if float {
                &[(64, 172, 5), (3, 4, 2)]
            } else {
                &[]
            };
            for &(rows, cols, nb) in sizes.iter().chain(odd) {
                let w = rng.vec(rows * cols);
                let q = quantized(t, &w);
                let tensor = Tensor {
                    ty: t,
                    rows,
                    cols,
                    data: &q,
                };
                let x = rng.vec(nb * cols);
                let dw = <Cuda as Backend>::weight(g, tensor)?;
                let dx = upload(g, &x)?;
                let mut dy = g.buffer(nb * rows)?;
                g.poison(&mut dy)?;
                g.matmul(&dx, nb, &[&dw], &mut [&mut dy])?;
                let mut want = vec![f32::NAN; nb * rows];
                cpu.matmul(
                    &x,
                    nb,
                    &[&<Cpu as Backend>::weight(cpu, tensor)?],
                    &mut [&mut want],
                )?;
                let mag = term_magnitudes(t, &q, &x, (nb, rows, cols));
                r.check_scaled(
                    &format!("matmul {t} {rows}x{cols} batch {nb}"),
                    &download(g, &dy, nb * rows)?,
                    &want,
                    &mag,
                    1e-5,
                );

                let base = rng.vec(nb * rows);
                let mut dy = upload(g, &base)?;
                g.matmul_add(&dx, nb, &dw, &mut dy)?;
                let mut want = base.clone();
                cpu.matmul_add(&x, nb, &<Cpu as Backend>::weight(cpu, tensor)?, &mut want)?;
                let mag: Vec<f32> = mag.iter().zip(&base).map(|(m, b)| m + b.abs()).collect();
                r.check_scaled(
                    &format!("matmul_add {t} {rows}x{cols} batch {nb}"),
                    &download(g, &dy, nb * rows)?,
                    &want,
                    &mag,
                    1e-5,
                );
            }
            // Embedding lookup of odd token ids.
            let (vocab, dim) = (37, 256);
            let table = quantized(t, &rng.vec(vocab * dim));
            let tensor = Tensor {
                ty: t,
                rows: vocab,
                cols: dim,
                data: &table,
            };
            let tokens = [0u32, 36, 5, 5, 17];
            let dt = <Cuda as Backend>::weight(g, tensor)?;
            let mut dx = g.buffer(tokens.len() * dim)?;
            g.poison(&mut dx)?;
            g.begin_forward(&tokens, 0)?;
            g.embed(&dt, &tokens, &mut dx)?;
            let mut want = vec![f32::NAN; tokens.len() * dim];
            cpu.embed(&<Cpu as Backend>::weight(cpu, tensor)?, &tokens, &mut want)?;
            r.check(
                &format!("embed {t}"),
                &download(g, &dx, want.len())?,
                &want,
                1e-6,
            );
        }

        // RMSNorm.
        for (rows, cols) in [(1, 64), (3, 576), (5, 4096)] {
            let x: Vec<f32> = rng.vec(rows * cols).iter().map(|v| v * 10.0).collect();
            let wv = rng.vec(cols);
            let wb: Vec<u8> = wv.iter().flat_map(|v| v.to_le_bytes()).collect();
            let tensor = Tensor {
                ty: GgmlType::F32,
                rows: 1,
                cols,
                data: &wb,
            };
            let dw = <Cuda as Backend>::weight(g, tensor)?;
            let dx = upload(g, &x)?;
            let mut dout = g.buffer(rows * cols)?;
            g.poison(&mut dout)?;
            g.rmsnorm(&dx, &dw, 1e-5, rows, &mut dout)?;
            let mut want = vec![f32::NAN; rows * cols];
            cpu.rmsnorm(
                &x,
                &<Cpu as Backend>::weight(cpu, tensor)?,
                1e-5,
                rows,
                &mut want,
            )?;
            r.check(
                &format!("rmsnorm {rows}x{cols}"),
                &download(g, &dout, want.len())?,
                &want,
                1e-5,
            );
        }

        // SwiGLU.
        for n in [1, 1000, 14336 * 3] {
            let (a, b) = (rng.vec(n), rng.vec(n));
            let mut dg = upload(g, &a)?;
            let du = upload(g, &b)?;
            g.swiglu(&mut dg, &du, n)?;
            let mut want = a.clone();
            cpu.swiglu(&mut want, &b, n)?;
            r.check(&format!("swiglu {n}"), &download(g, &dg, n)?, &want, 1e-5);
        }

        // RoPE with the cache write, then attention, over a prefix already in the cache.
        // Batches of several rows take the tiled kernel: its query tiles of 16 (row, head)
        // pairs split rows of 3 heads, leave rows over, and see fewer keys in early rows.
        for (n_heads, n_kv, head_dim, rope_dims, pos0, n, cap) in [
            (8, 4, 64, 64, 0, 5, 64),
            (9, 3, 64, 64, 17, 1, 64),
            (32, 8, 128, 128, 300, 7, 512),
            (4, 4, 64, 32, 60, 3, 64),
            (8, 4, 8, 8, 40, 2, 64),
            (32, 8, 128, 128, 448, 64, 512),
            (8, 4, 8, 8, 40, 17, 64),
            (9, 3, 64, 64, 100, 33, 256),
            (16, 2, 256, 256, 70, 9, 128),
            (6, 6, 96, 96, 5, 11, 64),
        ] {
            let s = AttnShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim,
                rope_dims,
                rope_theta: 10000.0,
            };
            let (qd, kd) = (s.q_dim(), s.kv_dim());
            let layouts = [KvLayout::new(&KvSettings::new(cap), None)];
            let mut ckv = <Cpu as Backend>::kv_cache(cpu, &layouts, kd)?;
            let mut gkv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            // Fill positions 0..pos0 + n through the op itself, in chunks, as a prefill would.
            let mut start = 0;
            while start < pos0 + n {
                let len = if start < pos0 {
                    (pos0 - start).min(64)
                } else {
                    n
                };
                let (q, k, v) = (rng.vec(len * qd), rng.vec(len * kd), rng.vec(len * kd));
                let (mut cq, mut ck) = (q.clone(), k.clone());
                cpu.rope_store(&mut cq, &mut ck, &v, &mut ckv, 0, start, len, s)?;
                let (mut dq, mut dk, dv) = (upload(g, &q)?, upload(g, &k)?, upload(g, &v)?);
                g.begin_forward(&vec![0; len], start)?;
                g.rope_store(&mut dq, &mut dk, &dv, &mut gkv, 0, start, len, s)?;
                // Every chunk checks attention (the prefix ones are batches too), the last
                // one RoPE as well.
                let mut want = vec![f32::NAN; len * qd];
                cpu.attention(&cq, &ckv, 0, start, len, s, &mut want)?;
                let mut dout = g.buffer(len * qd)?;
                g.poison(&mut dout)?;
                g.attention(&dq, &gkv, 0, start, len, s, &mut dout)?;
                // Both caches hold f16 (the default); keys rotated on either side may
                // round to neighbouring f16 values.
                r.check(
                    &format!("attention {n_heads}/{n_kv}x{head_dim} pos {start} rows {len}"),
                    &download(g, &dout, len * qd)?,
                    &want,
                    2e-3,
                );
                if start >= pos0 {
                    r.check(
                        &format!("rope q {n_heads}/{n_kv}x{head_dim} pos {start}"),
                        &download(g, &dq, len * qd)?,
                        &cq,
                        1e-5,
                    );
                    r.check(
                        &format!("rope k {n_heads}/{n_kv}x{head_dim} pos {start}"),
                        &download(g, &dk, len * kd)?,
                        &ck,
                        1e-5,
                    );
                }
                start += len;
            }
        }

        fused_rope_attention(g, cpu, rng, r)?;
        quantized_attention(g, cpu, rng, r)?;
        kv_layouts(g, cpu, rng, r)?;
        super::decode::long_contexts(g, cpu, rng, r)?;
        g.sync()?;
        ensure!(r.lines > 0, "no checks ran");
        Ok(())
    }

    /// Every stored row of `kv_save`'s output, decoded to f32 (Q8_0 rows stay in their
    /// Hadamard rotation, which both backends apply alike).
    fn decode_rows(ty: KvType, kv_dim: usize, saved: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; saved.len() / ty.row_bytes(kv_dim) * kv_dim];
        for (row, o) in saved
            .chunks_exact(ty.row_bytes(kv_dim))
            .zip(out.chunks_exact_mut(kv_dim))
        {
            crate::kv::decode(ty, row, 0, o);
        }
        out
    }

    /// Bounds of the quantized caches, GPU against CPU. Both store the same rows (the same
    /// Hadamard additions for Q8_0 rows, the same power-of-two fp8 scales), but RoPE on the
    /// two backends differs in the last bit, which moves a value across a rounding boundary
    /// now and then: by one Q8_0 step (1/127 of its block's largest value) or one fp8 step
    /// (1/16 to 1/8 of the value). Attention also rounds Q, K, V and P to f16 in the tiled
    /// kernel (2e-3 on its own, as for an f16 cache).
    pub(super) fn kv_bounds(ty: KvType) -> (f64, f64) {
        // (stored rows, attention)
        match ty {
            KvType::Q8_0 => (5e-3, 1e-2),
            KvType::Fp8 => (1e-2, 2e-2),
            _ => (1e-3, 2e-3),
        }
    }

    /// Q8_0 and fp8 caches at the head shapes of real models (64, 96, 128, 256) and odd
    /// ones (8: Q8_0 blocks and Hadamard chunks span several heads): RoPE and the cache
    /// write, then attention of single rows and of batches with both kernels (the tiled
    /// one, and the single-row one with WICK_ATT=1's switch), and the stored rows.
    fn quantized_attention(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        for ty in [KvType::Q8_0, KvType::Fp8] {
            let (row_bound, att_bound) = kv_bounds(ty);
            for (n_heads, n_kv, head_dim, rope_dims, pos0, n, cap) in [
                (9, 3, 64, 64, 17, 1, 64),
                (32, 8, 128, 128, 300, 7, 512),
                (4, 4, 64, 32, 60, 3, 64),
                (8, 4, 8, 8, 40, 17, 64),
                (9, 3, 64, 64, 100, 33, 256),
                (16, 2, 256, 256, 70, 9, 128),
                (6, 6, 96, 96, 5, 11, 64),
                (32, 8, 128, 128, 448, 64, 512),
            ] {
                let s = AttnShape {
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim,
                    rope_dims,
                    rope_theta: 10000.0,
                };
                let (qd, kd) = (s.q_dim(), s.kv_dim());
                let settings = KvSettings {
                    ty,
                    ..KvSettings::new(cap)
                };
                let layouts = [KvLayout::new(&settings, None)];
                let mut ckv = <Cpu as Backend>::kv_cache(cpu, &layouts, kd)?;
                let mut gkv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
                let name = format!("{} {n_heads}/{n_kv}x{head_dim}", ty.name());
                let mut start = 0;
                while start < pos0 + n {
                    let len = if start < pos0 {
                        (pos0 - start).min(64)
                    } else {
                        n
                    };
                    // Keys with a few large channels, as real models have (the case the
                    // Q8_0 rotation is for): every 16th value ten times the others.
                    let mut k = rng.vec(len * kd);
                    for x in k.iter_mut().step_by(16) {
                        *x *= 10.0;
                    }
                    let (q, v) = (rng.vec(len * qd), rng.vec(len * kd));
                    let (mut cq, mut ck) = (q.clone(), k.clone());
                    cpu.rope_store(&mut cq, &mut ck, &v, &mut ckv, 0, start, len, s)?;
                    let (mut dq, mut dk, dv) = (upload(g, &q)?, upload(g, &k)?, upload(g, &v)?);
                    g.begin_forward(&vec![0; len], start)?;
                    g.rope_store(&mut dq, &mut dk, &dv, &mut gkv, 0, start, len, s)?;
                    let mut want = vec![f32::NAN; len * qd];
                    cpu.attention(&cq, &ckv, 0, start, len, s, &mut want)?;
                    for variant in if len > 1 { vec![0, 1] } else { vec![0] } {
                        let kernel = if len == 1 || variant == 1 {
                            "single-row"
                        } else {
                            "tiled"
                        };
                        crate::backend::cuda::set_attention_variant(variant);
                        let mut dout = g.buffer(len * qd)?;
                        g.poison(&mut dout)?;
                        let done = g.attention(&dq, &gkv, 0, start, len, s, &mut dout);
                        crate::backend::cuda::set_attention_variant(0);
                        done?;
                        r.check(
                            &format!("attention {name} pos {start} rows {len} {kernel}"),
                            &download(g, &dout, len * qd)?,
                            &want,
                            att_bound,
                        );
                    }
                    start += len;
                }
                let (mut crows, mut grows) = (Vec::new(), Vec::new());
                cpu.kv_save(&ckv, start, &mut crows)?;
                g.kv_save(&gkv, start, &mut grows)?;
                ensure!(
                    crows.len() == grows.len(),
                    "kv store {name}: the GPU saved {} bytes, the CPU {}",
                    grows.len(),
                    crows.len()
                );
                r.check(
                    &format!("kv store {name} rows 0..{start}"),
                    &decode_rows(ty, kd, &grows),
                    &decode_rows(ty, kd, &crows),
                    row_bound,
                );
            }
        }
        Ok(())
    }

    /// RoPE and attention of a single row as one op (`rope_attention`), which the GPU
    /// fuses into one kernel, against the two ops over a copy of the same cache: the same
    /// bits in the output and in the stored rows; and the output against the CPU's.
    fn fused_rope_attention(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        for (n_heads, n_kv, head_dim, rope_dims, pos, window) in [
            (32, 8, 128, 128, 0, None),
            (32, 8, 128, 128, 70, None),
            (20, 4, 64, 32, 130, None),
            (32, 8, 128, 128, 90, Some(24)),
        ] {
            let s = AttnShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim,
                rope_dims,
                rope_theta: 10000.0,
            };
            let (qd, kd) = (s.q_dim(), s.kv_dim());
            let settings = KvSettings {
                ctx: 256,
                keep: 4,
                ty: KvType::F16,
                window,
            };
            let layouts = [KvLayout::new(&settings, None)];
            let mut ckv = <Cpu as Backend>::kv_cache(cpu, &layouts, kd)?;
            let mut plain = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            let mut fused = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            let name = format!(
                "rope+attention fused {n_heads}/{n_kv}x{head_dim} rope {rope_dims} pos {pos}{}",
                window.map_or(String::new(), |w| format!(" window {w}"))
            );
            ensure!(
                g.fuses_rope(&fused, 0, 1, s),
                "{name}: the GPU does not fuse this shape"
            );
            // The same prefix in all three caches, in chunks.
            let mut start = 0;
            while start <= pos {
                let len = if start < pos {
                    (pos - start).min(16)
                } else {
                    1
                };
                let (q, k, v) = (rng.vec(len * qd), rng.vec(len * kd), rng.vec(len * kd));
                let (mut cq, mut ck) = (q.clone(), k.clone());
                let mut want = vec![f32::NAN; len * qd];
                cpu.rope_attention(&mut cq, &mut ck, &v, &mut ckv, 0, start, len, s, &mut want)?;
                g.begin_forward(&vec![0; len], start)?;
                let mut outs = Vec::new();
                for (kv, one_op) in [(&mut plain, false), (&mut fused, true)] {
                    let (mut dq, mut dk, dv) = (upload(g, &q)?, upload(g, &k)?, upload(g, &v)?);
                    let mut out = g.buffer(len * qd)?;
                    g.poison(&mut out)?;
                    if one_op {
                        g.rope_attention(&mut dq, &mut dk, &dv, kv, 0, start, len, s, &mut out)?;
                    } else {
                        g.rope_store(&mut dq, &mut dk, &dv, kv, 0, start, len, s)?;
                        g.attention(&dq, kv, 0, start, len, s, &mut out)?;
                    }
                    outs.push(download(g, &out, len * qd)?);
                }
                if start == pos {
                    r.check(&name, &outs[1], &outs[0], 0.0);
                    r.check(&format!("{name} against the CPU"), &outs[1], &want, 2e-3);
                }
                start += len;
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            g.kv_save(&plain, pos + 1, &mut a)?;
            g.kv_save(&fused, pos + 1, &mut b)?;
            r.check(
                &format!("{name} stored rows"),
                &decode_rows(KvType::F16, kd, &b),
                &decode_rows(KvType::F16, kd, &a),
                0.0,
            );
        }
        Ok(())
    }

    /// The cache layouts of src/kv/layout.rs, f16, Q8_0 and fp8: a full-attention layer
    /// through several context shifts (sinks kept, keys re-rotated), and a sliding window
    /// whose ring wraps, in batches up to MAX_BATCH; the stored rows after it all; then a
    /// save and load of the GPU cache.
    fn kv_layouts(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
        for ty in [KvType::F16, KvType::Q8_0, KvType::Fp8] {
            let (row_bound, att_bound) = kv_bounds(ty);
            // 32 heads take the one-block-per-head kernel, fused with RoPE for single rows.
            for (n_heads, n_kv, head_dim, rope_dims) in [
                (8, 2, 64, 64),
                (4, 4, 32, 16),
                (8, 4, 8, 8),
                (32, 8, 128, 128),
            ] {
                let s = AttnShape {
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim,
                    rope_dims,
                    rope_theta: 10000.0,
                };
                let (qd, kd) = (s.q_dim(), s.kv_dim());
                for window in [None, Some(20)] {
                    let settings = KvSettings {
                        ctx: if window.is_some() { 1000 } else { 96 },
                        keep: 4,
                        ty,
                        window,
                    };
                    let layouts = [KvLayout::new(&settings, None)];
                    let mut ckv = <Cpu as Backend>::kv_cache(cpu, &layouts, kd)?;
                    let mut gkv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
                    let name = format!(
                        "kv {} {n_heads}/{n_kv}x{head_dim} {}",
                        ty.name(),
                        window.map_or("shifts".to_string(), |w| format!("window {w}"))
                    );
                    let (mut len, mut shifts) = (0usize, 0);
                    let mut worst = (Vec::new(), Vec::new());
                    for batch in [1usize, 64, 7, 1, 33, 64, 2, 1, 50, 64, 1, 1, 30, 64, 9] {
                        if window.is_none() && len + batch > settings.ctx {
                            let d = (len - 4) / 2;
                            cpu.kv_shift(&mut ckv, 4, d, len, s)?;
                            g.kv_shift(&mut gkv, 4, d, len, s)?;
                            len -= d;
                            shifts += 1;
                        }
                        let batch = batch.min(settings.ctx - len);
                        let (q, k, v) = (
                            rng.vec(batch * qd),
                            rng.vec(batch * kd),
                            rng.vec(batch * kd),
                        );
                        let (mut cq, mut ck) = (q.clone(), k.clone());
                        let mut want = vec![f32::NAN; batch * qd];
                        cpu.rope_attention(
                            &mut cq, &mut ck, &v, &mut ckv, 0, len, batch, s, &mut want,
                        )?;
                        let (mut dq, mut dk, dv) = (upload(g, &q)?, upload(g, &k)?, upload(g, &v)?);
                        g.begin_forward(&vec![0; batch], len)?;
                        let mut dout = g.buffer(batch * qd)?;
                        g.poison(&mut dout)?;
                        g.rope_attention(
                            &mut dq, &mut dk, &dv, &mut gkv, 0, len, batch, s, &mut dout,
                        )?;
                        worst.0.extend(download(g, &dout, batch * qd)?);
                        worst.1.extend(want);
                        len += batch;
                    }
                    ensure!(window.is_some() || shifts >= 2, "the test did not shift");
                    r.check(&name, &worst.0, &worst.1, att_bound);
                    // What the store and the shifts left: every row still stored, decoded.
                    // Each shift re-rounds the keys, so allow twice a single store's error.
                    let (mut crows, mut grows) = (Vec::new(), Vec::new());
                    cpu.kv_save(&ckv, len, &mut crows)?;
                    g.kv_save(&gkv, len, &mut grows)?;
                    ensure!(
                        crows.len() == grows.len(),
                        "{name}: the GPU saved {} bytes, the CPU {}",
                        grows.len(),
                        crows.len()
                    );
                    r.check(
                        &format!("{name} stored rows"),
                        &decode_rows(ty, kd, &grows),
                        &decode_rows(ty, kd, &crows),
                        2.0 * row_bound,
                    );

                    // A save and load on the GPU gives the same attention.
                    let mut saved = Vec::new();
                    g.kv_save(&gkv, len, &mut saved)?;
                    let mut gkv2 = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
                    // (After shifts too: the rows go back by position, whatever the offset.)
                    g.kv_load(&mut gkv2, len, &saved)?;
                    let q = upload(g, &rng.vec(qd))?;
                    g.begin_forward(&[0], len - 1)?;
                    let (mut a, mut b) = (g.buffer(qd)?, g.buffer(qd)?);
                    g.attention(&q, &gkv, 0, len - 1, 1, s, &mut a)?;
                    g.attention(&q, &gkv2, 0, len - 1, 1, s, &mut b)?;
                    r.check(
                        &format!("{name} save/load"),
                        &download(g, &b, qd)?,
                        &download(g, &a, qd)?,
                        1e-6,
                    );
                }
            }
        }
        Ok(())
    }
}
