//! `wick selftest --gpu`, plain decoding's pick on the device (`DeviceSpec::plain_pick`):
//! greedy picks against the host sampler's argmax on awkward rows (ties, NaN, signed
//! zeros, masked maxima), sampled picks against a host `Sampler` seeded alike over runs
//! of draws (the device must continue the host's random stream number for number), and
//! on stories260K whole generations picked on the device against the host path's tokens.

use anyhow::Result;

use super::selftest_sampled::{logits, settings};
use super::selftest_spec::{Rng, Tally};
use crate::backend::cuda::{can_sample, Cuda};
use crate::backend::{Backend, DeviceSpec};
use crate::gguf::GgufFile;
use crate::kv::KvSettings;
use crate::model::{Llama, DEFAULT_MODEL};
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
use crate::spec::{Decoder, Plain};
use crate::tokenizer::Tokenizer;

pub fn run(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    greedy_picks(g, rng, t)?;
    sampled_picks(g, rng, t)?;
    refusals(g, t)?;
    let embedded = GgufFile::from_static(DEFAULT_MODEL)?;
    generations(g, &embedded, t)
}

fn greedy() -> SamplerParams {
    SamplerParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        seed: 1,
        ..SamplerParams::default()
    }
}

fn upload(g: &Cuda, v: &[f32]) -> Result<crate::backend::cuda::DeviceMem> {
    let mut m = g.buffer(v.len())?;
    g.write(&mut m, v)?;
    Ok(m)
}

fn masked(row: &[f32], mask: &[u32]) -> Vec<f32> {
    let mut r = row.to_vec();
    for &m in mask {
        if let Some(l) = r.get_mut(m as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    r
}

/// The device's greedy pick against `Sampler::sample` at temperature 0, with and without a
/// mask (one that hides the maximum, so that a tie behind it decides).
fn greedy_picks(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    let mut host = Sampler::new(greedy(), 1);
    for vocab in [1, 7, 33, 1000, 32000, 49152, 50257] {
        let random = |rng: &mut Rng| (0..vocab).map(|_| rng.f32() * 10.0).collect::<Vec<_>>();
        let mut rows = super::selftest_spec::argmax_rows(rng, vocab);
        // The maximum masked, and two tokens tied just behind it.
        let mut behind = random(rng);
        let top = host.sample(&behind, &[]) as usize;
        let (a, b) = (rng.below(vocab), rng.below(vocab));
        if vocab > 2 && a != top && b != top {
            behind[a] = behind[top] - 0.5;
            behind[b] = behind[top] - 0.5;
        }
        rows.push(behind);
        let mut bad = Vec::new();
        for with_mask in [false, true] {
            let mask: Vec<u32> = if with_mask {
                // The maxima of the last row, a random token, and one past the vocabulary.
                let last = rows.last().expect("rows");
                vec![
                    host.sample(last, &[]),
                    rng.below(vocab) as u32,
                    vocab as u32 + 3,
                ]
            } else {
                Vec::new()
            };
            if !g.plain_setup(&greedy(), [1, 2, 3, 4], &mask, vocab)? {
                bad.push("setup refused greedy".to_string());
                continue;
            }
            for (r, row) in rows.iter().enumerate() {
                let got = g.plain_pick(&upload(g, row)?, vocab, 3 + r)?;
                let want = host.sample(&masked(row, &mask), &[]);
                if got != want {
                    bad.push(format!("row {r} mask {with_mask}: gpu {got} cpu {want}"));
                }
            }
        }
        t.check(
            &format!("plain greedy pick vocab {vocab}"),
            bad.is_empty(),
            format!("{} rows, masked and not {}", 2 * rows.len(), bad.join(", ")),
        );
    }
    Ok(())
}

/// Runs of sampled picks, each from new logits (all -inf now and then: no random number
/// drawn), against `Sampler::sample` of a sampler whose stream the device took over part
/// way; the device's stream must end where the host's does.
fn sampled_picks(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    let (mut draws, mut runs, mut bad) = (0, 0, Vec::new());
    for vocab in [1, 5, 512, 4000, 49152] {
        for p in settings() {
            if !can_sample(&p, vocab) {
                continue;
            }
            let params = SamplerParams {
                seed: rng.next_u64(),
                ..p
            };
            let mut host = Sampler::new(params.clone(), vocab);
            for _ in 0..rng.below(3) {
                host.uniform();
            }
            let mask: Vec<u32> = if rng.below(2) == 0 {
                (0..3).map(|_| rng.below(vocab) as u32).collect()
            } else {
                Vec::new()
            };
            if !g.plain_setup(&params, host.rng_state(), &mask, vocab)? {
                bad.push(format!("setup refused {params:?}"));
                continue;
            }
            runs += 1;
            for step in 0..40 {
                let kind = if rng.below(10) == 0 { 3 } else { rng.below(3) };
                let row = logits(rng, vocab, kind);
                let got = g.plain_pick(&upload(g, &row)?, vocab, step)?;
                let want = host.sample(&masked(&row, &mask), &[]);
                draws += 1;
                if got != want {
                    bad.push(format!(
                        "vocab {vocab} {params:?} step {step} kind {kind}: gpu {got} cpu {want}"
                    ));
                }
            }
            if g.plain_rng_state()? != host.rng_state() {
                bad.push(format!("vocab {vocab} {params:?}: the streams part"));
            }
        }
    }
    t.check(
        "plain sampled picks == Sampler::sample",
        bad.is_empty() && runs > 0,
        format!(
            "{runs} runs, {draws} draws {}",
            bad.first().map_or("", |s| s)
        ),
    );
    Ok(())
}

/// Settings the device cannot follow leave the host to sample.
fn refusals(g: &Cuda, t: &mut Tally) -> Result<()> {
    let penalized = SamplerParams {
        repeat_penalty: 1.1,
        ..greedy()
    };
    let wide = SamplerParams {
        temp: 1.0,
        top_k: 0,
        ..greedy()
    };
    let a = g.plain_setup(&penalized, [1; 4], &[], 512)?;
    let b = g.plain_setup(&wide, [1; 4], &[], 49152)?;
    t.check(
        "plain setup refuses what it cannot follow",
        !a && !b,
        format!("repeat penalty {a}, top-k 0 over 49152 tokens {b}"),
    );
    Ok(())
}

/// stories260K generations picked on the device against the host path on the same GPU:
/// greedy, greedy with the first greedy token masked, sampled (twice, and another seed),
/// and sampled in a small context that shifts; the prompt fed through the decoder or
/// beforehand, as `wick gen` does.
fn generations(g: &Cuda, file: &GgufFile, t: &mut Tally) -> Result<()> {
    let tok = Tokenizer::from_gguf(file)?;
    let prompt = tok.encode("Once upon a time", true, false)?;
    let turn = tok.encode(" The end. One day", false, false)?;
    let m = Llama::load(file, g)?;
    let v = m.config.vocab_size;
    let sampled = |seed: u64| SamplerParams {
        seed,
        temp: 0.8,
        repeat_penalty: 1.0,
        ..SamplerParams::default()
    };
    // (device, sampler, mask, context, shift, prefill through the decoder)
    let run = |device: bool,
               p: &SamplerParams,
               mask: &[u32],
               ctx: usize,
               shift: bool,
               through: bool|
     -> Result<(Vec<u32>, bool, usize)> {
        let mut s = Session::with_settings(&m, &KvSettings::new(ctx))?;
        if !through {
            s.prefill(&prompt)?;
        }
        let mut d = Plain::new(s, Sampler::new(p.clone(), v)).with_options(mask.to_vec(), shift);
        if !device {
            d = d.with_host_sampling();
        }
        if through {
            d.prefill(&prompt)?;
        }
        let mut out = Vec::new();
        generate(&mut d, 120, &mut out)?;
        if !shift {
            // A second turn, as chat takes one: back to a shared prefix, a new prompt, and
            // on. Greedy picks ran a token ahead of the first turn's end (spec::Plain).
            d.session_mut().rollback(prompt.len() + 5)?;
            d.prefill(&turn)?;
            generate(&mut d, 30, &mut out)?;
        }
        Ok((out, d.picks_on_device()?, d.shifts()))
    };
    let (first, _, _) = run(false, &greedy(), &[], 256, false, true)?;
    let hide = first.first().map_or(Vec::new(), |&x| vec![x]);
    // (label, sampler, mask, context, shift, prefill through the decoder)
    type Case<'c> = (&'static str, SamplerParams, &'c [u32], usize, bool, bool);
    let cases: [Case; 7] = [
        ("greedy", greedy(), &[], 256, false, true),
        ("greedy, masked", greedy(), &hide, 256, false, false),
        ("greedy, ctx 40", greedy(), &[], 40, false, true),
        ("greedy, shifting ctx 48", greedy(), &[], 48, true, false),
        ("sampled seed 7", sampled(7), &[], 256, false, false),
        ("sampled seed 8", sampled(8), &hide, 256, false, true),
        ("sampled, shifting ctx 48", sampled(9), &[], 48, true, true),
    ];
    let mut seven = Vec::new();
    for (label, p, mask, ctx, shift, through) in cases {
        let (dev, on, shifts) = run(true, &p, mask, ctx, shift, through)?;
        let (host, off, _) = run(false, &p, mask, ctx, shift, through)?;
        let (again, _, _) = run(true, &p, mask, ctx, shift, through)?;
        let masked_out = mask.iter().all(|m| !dev.contains(m));
        let shifted = !shift || shifts > 0;
        if label == "sampled seed 7" {
            seven = dev.clone();
        }
        if label == "sampled seed 8" && dev == seven {
            t.check(
                "stories260K plain seeds differ",
                false,
                "seeds 7 and 8 agree",
            );
        }
        t.check(
            &format!("stories260K plain on device, {label}"),
            on && !off
                && dev == host
                && dev == again
                && masked_out
                && shifted
                && dev.len() > ctx.min(120) / 2,
            format!(
                "on device {on}; {} tokens {} host path, {} on a second run; {shifts} shifts",
                dev.len(),
                if dev == host {
                    "as the"
                } else {
                    "DIFFER from the"
                },
                if dev == again {
                    "the same"
                } else {
                    "DIFFERENT"
                }
            ),
        );
    }
    Ok(())
}

/// Up to `n` tokens from `d` onto `out`, fewer when the context fills up.
fn generate(d: &mut impl Decoder, n: usize, out: &mut Vec<u32>) -> Result<()> {
    for _ in 0..n {
        match d.next()? {
            Some(x) => out.push(x),
            None => break,
        }
    }
    Ok(())
}
