//! `wick selftest --gpu`, single-row attention (decode, and the rows of a verification):
//! the split kernel (kernels/cuda/attention_split.cuh) and the former one-block-per-head
//! kernel against the CPU at long contexts, after a context shift and in sliding windows
//! whose ring wraps; verification rows against decode steps bit for bit; and timings of
//! both kernels at decode shapes.

use anyhow::Result;

use super::gpu::{download, kv_bounds, upload, Report, Rng};
use crate::backend::cpu::Cpu;
use crate::backend::cuda::{set_attention_decode, Cuda};
use crate::backend::{AttnShape, Backend};
use crate::kv::{KvLayout, KvSettings, KvType};
use crate::model::MAX_BATCH;

fn shape(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnShape {
    AttnShape {
        n_heads,
        n_kv_heads,
        head_dim,
        rope_dims: head_dim,
        rope_theta: 10000.0,
    }
}

/// The splits WICK_ATT_DECODE asks for (a number), else 0: from the SM count.
fn env_splits() -> i32 {
    std::env::var("WICK_ATT_DECODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Decode steps at the last three positions of a long context, with both single-row
/// kernels, against the CPU; then the same three rows as one verification batch
/// (`set_row_exact`), which must give the decode steps' very bits.
pub(super) fn long_contexts(g: &Cuda, cpu: &Cpu, rng: &mut Rng, r: &mut Report) -> Result<()> {
    // (heads, KV heads, head size, tokens fed, window, context shifts)
    type Case = (usize, usize, usize, usize, Option<usize>, bool);
    let cases: &[Case] = &[
        (9, 3, 64, 1000, None, false),
        (9, 3, 64, 4000, None, false),
        (32, 8, 128, 4000, None, false),
        (8, 4, 8, 1000, None, false),
        (9, 3, 64, 1000, None, true),
        (9, 3, 64, 1000, Some(300), false),
        (8, 4, 8, 1000, Some(100), false),
    ];
    for ty in [KvType::F16, KvType::Q8_0, KvType::Fp8] {
        let (_, att_bound) = kv_bounds(ty);
        for &(n_heads, n_kv, head_dim, ctx, window, shift) in cases {
            let s = shape(n_heads, n_kv, head_dim);
            let (qd, kd) = (s.q_dim(), s.kv_dim());
            // With shifts, a cache of 600 positions drops half its content whenever full.
            let cap = if shift { 600 } else { ctx };
            let settings = KvSettings {
                ctx: cap,
                keep: 4,
                ty,
                window,
            };
            let layouts = [KvLayout::new(&settings, window)];
            let mut ckv = <Cpu as Backend>::kv_cache(cpu, &layouts, kd)?;
            let mut gkv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            let name = format!(
                "decode {} {n_heads}/{n_kv}x{head_dim} {ctx} tokens{}",
                ty.name(),
                match (window, shift) {
                    (Some(w), _) => format!(" window {w}"),
                    (None, true) => " shifted".to_string(),
                    _ => String::new(),
                }
            );
            let (mut len, mut fed) = (0, 0);
            while fed < ctx {
                if shift && len + MAX_BATCH > cap {
                    let d = (len - 4) / 2;
                    cpu.kv_shift(&mut ckv, 4, d, len, s)?;
                    g.kv_shift(&mut gkv, 4, d, len, s)?;
                    len -= d;
                }
                let batch = (ctx - fed).min(MAX_BATCH);
                let (q, k, v) = (
                    rng.vec(batch * qd),
                    rng.vec(batch * kd),
                    rng.vec(batch * kd),
                );
                let (mut cq, mut ck) = (q.clone(), k.clone());
                cpu.rope_store(&mut cq, &mut ck, &v, &mut ckv, 0, len, batch, s)?;
                let (mut dq, mut dk, dv) = (upload(g, &q)?, upload(g, &k)?, upload(g, &v)?);
                g.begin_forward(&vec![0; batch], len)?;
                g.rope_store(&mut dq, &mut dk, &dv, &mut gkv, 0, len, batch, s)?;
                len += batch;
                fed += batch;
            }
            let pos0 = len - 3;
            let q = rng.vec(3 * qd);
            let mut want = vec![f32::NAN; 3 * qd];
            cpu.attention(&q, &ckv, 0, pos0, 3, s, &mut want)?;
            let mut by_kernel = Vec::new();
            for old in [false, true] {
                // -1: the split kernel with its own slice count, whatever the head count.
                set_attention_decode(old, -1);
                let mut got = Vec::with_capacity(3 * qd);
                for b in 0..3 {
                    let dq = upload(g, &q[b * qd..(b + 1) * qd])?;
                    let mut out = g.buffer(qd)?;
                    g.poison(&mut out)?;
                    g.begin_forward(&[0], pos0 + b)?;
                    g.attention(&dq, &gkv, 0, pos0 + b, 1, s, &mut out)?;
                    got.extend(download(g, &out, qd)?);
                }
                let kernel = if old { "old" } else { "split" };
                r.check(&format!("{name} {kernel}"), &got, &want, att_bound);
                by_kernel.push(got);
            }
            set_attention_decode(false, -1);
            // A verification batch: each row as its decode step computed it.
            let dq = upload(g, &q)?;
            let mut out = g.buffer(3 * qd)?;
            g.poison(&mut out)?;
            g.begin_forward(&[0; 3], pos0)?;
            g.set_row_exact(true);
            let done = g.attention(&dq, &gkv, 0, pos0, 3, s, &mut out);
            g.set_row_exact(false);
            done?;
            r.check(
                &format!("{name} rows = steps"),
                &download(g, &out, 3 * qd)?,
                &by_kernel[0],
                0.0,
            );
        }
    }
    Ok(())
}

/// Times a decode step's attention at SmolLM2's shape (9 heads, 3 KV heads of 64) and
/// llama3-8b's (32, 8 of 128) over contexts of 256 to 8192 positions, with the former
/// kernel and the split one (WICK_ATT_DECODE=N sets its slices per KV head): KV bytes read
/// per second.
pub(super) fn timings(g: &Cuda, rng: &mut Rng) -> Result<()> {
    let splits = env_splits();
    for (label, n_heads, n_kv, head_dim) in [("9/3x64", 9, 3, 64), ("32/8x128", 32, 8, 128)] {
        let s = shape(n_heads, n_kv, head_dim);
        let (qd, kd) = (s.q_dim(), s.kv_dim());
        for ty in [KvType::F16, KvType::Q8_0] {
            let settings = KvSettings {
                ty,
                ..KvSettings::new(8192)
            };
            let layouts = [KvLayout::new(&settings, None)];
            let mut kv = <Cuda as Backend>::kv_cache(g, &layouts, kd)?;
            let mut len = 0;
            for ctx in [256, 1024, 4096, 8192] {
                while len < ctx {
                    let (mut q, mut k) = (
                        upload(g, &rng.vec(MAX_BATCH * qd))?,
                        upload(g, &rng.vec(MAX_BATCH * kd))?,
                    );
                    let v = upload(g, &rng.vec(MAX_BATCH * kd))?;
                    g.begin_forward(&[0; MAX_BATCH], len)?;
                    g.rope_store(&mut q, &mut k, &v, &mut kv, 0, len, MAX_BATCH, s)?;
                    len += MAX_BATCH;
                }
                let q = upload(g, &rng.vec(qd))?;
                let mut out = g.buffer(qd)?;
                g.begin_forward(&[0], ctx - 1)?;
                let mut us = [0f64; 2];
                for (i, old) in [true, false].into_iter().enumerate() {
                    set_attention_decode(old, if splits == 0 { -1 } else { splits });
                    // Recorded and replayed, as a decode step runs.
                    let reps = 20;
                    let mut graph = None;
                    g.run_step(&mut graph, &mut || {
                        for _ in 0..reps {
                            g.attention(&q, &kv, 0, ctx - 1, 1, s, &mut out)?;
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
                    us[i] = secs * 1e6;
                    let bytes = 2.0 * (ctx * ty.row_bytes(kd)) as f64;
                    eprintln!(
                        "time decode attention {} {label} ctx {ctx:>4} kernel {}: {:8.1} us, {:7.1} GB/s of KV",
                        ty.name(),
                        if old { "old  " } else { "split" },
                        secs * 1e6,
                        bytes / secs / 1e9
                    );
                }
                eprintln!(
                    "time decode attention {} {label} ctx {ctx:>4} split/old speed-up {:.2}x",
                    ty.name(),
                    us[0] / us[1]
                );
            }
        }
    }
    set_attention_decode(false, 0);
    Ok(())
}
