//! `wick selftest --gpu`, sampled speculation: the device's sampling distributions against
//! `Sampler::probs` on awkward logits, its draft draws and acceptance kernel against the
//! host's on the same random numbers, and on stories260K the first sampled token of
//! speculation on the device, over many draws, against the model's exact distribution
//! (chi-square), with a deliberately mismatched draft.

use anyhow::Result;

use super::selftest_spec::{Rng, Tally};
use crate::backend::cuda::Cuda;
use crate::backend::{Backend, DeviceSpec, DraftCut, Verdict};
use crate::gguf::GgufFile;
use crate::model::{Llama, DEFAULT_MODEL};
use crate::sample::chi2::goodness_of_fit;
use crate::sample::{Probs, Sampler, SamplerParams};
use crate::session::Session;
use crate::spec::{judge_sampled, Decoder, Drafter, SpecParams, Speculator};
use crate::tokenizer::Tokenizer;

pub fn run(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    distributions(g, rng, t)?;
    picks(g, rng, t)?;
    acceptance(g, rng, t)?;
    let embedded = GgufFile::from_static(DEFAULT_MODEL)?;
    first_token_law(g, &embedded, t)?;
    deterministic(g, &embedded, t)
}

fn params(top_k: usize, top_p: f32, min_p: f32, temp: f32) -> SamplerParams {
    SamplerParams {
        temp,
        top_k,
        top_p,
        min_p,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1,
    }
}

/// Sampler settings the device must follow: the defaults, every token, a tight top-k, a
/// wide one with top-p, min-p alone, and the widest top-k the device keeps.
pub(super) fn settings() -> Vec<SamplerParams> {
    vec![
        params(40, 0.95, 0.05, 0.8),
        params(0, 1.0, 0.0, 1.0),
        params(3, 1.0, 0.0, 0.5),
        params(1000, 0.9, 0.0, 1.3),
        params(0, 0.5, 0.2, 0.7),
        params(1024, 1.0, 0.01, 1.0),
    ]
}

/// Random logits of one of several kinds: spread, few distinct values (ties at every
/// cut), NaN and -inf sprinkled with signed zeros, all -inf.
pub(super) fn logits(rng: &mut Rng, vocab: usize, kind: usize) -> Vec<f32> {
    let mut l: Vec<f32> = (0..vocab).map(|_| rng.f32() * 6.0).collect();
    match kind {
        1 => l.iter_mut().for_each(|x| *x = (*x * 0.5).round()),
        2 => {
            for _ in 0..vocab / 5 + 1 {
                l[rng.below(vocab)] = f32::NAN;
                l[rng.below(vocab)] = f32::NEG_INFINITY;
            }
            l[rng.below(vocab)] = 0.0;
            l[rng.below(vocab)] = -0.0;
        }
        3 => l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
        _ => {}
    }
    l
}

fn upload(g: &Cuda, v: &[f32]) -> Result<crate::backend::cuda::DeviceMem> {
    let mut m = g.buffer(v.len())?;
    g.write(&mut m, v)?;
    Ok(m)
}

/// Whether the device's candidates are the host's, in the same order, with probabilities
/// within `tol`; the largest difference.
fn same_dist(gpu: &[(u32, f32)], cpu: &Probs, tol: f32) -> (bool, f32) {
    let items = cpu.items();
    if gpu.len() != items.len() {
        return (false, f32::INFINITY);
    }
    let mut worst = 0f32;
    for (a, b) in gpu.iter().zip(items) {
        if a.0 != b.0 {
            return (false, f32::INFINITY);
        }
        worst = worst.max((a.1 - b.1).abs());
    }
    (worst <= tol, worst)
}

/// The device's sampling distribution (top-k, top-p, min-p, temperature) against
/// `Sampler::probs`, row by row.
fn distributions(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    for vocab in [1, 5, 512, 4000, 49152] {
        let (mut rows, mut bad, mut worst) = (0, Vec::new(), 0f32);
        for p in settings() {
            if !crate::backend::cuda::can_sample(&p, vocab) {
                continue;
            }
            let x: Vec<Vec<f32>> = (0..4).map(|kind| logits(rng, vocab, kind)).collect();
            let gpu = g.sample_rows(&upload(g, &x.concat())?, x.len(), vocab, &p)?;
            let mut host = Sampler::new(p.clone(), vocab);
            let mut want = Probs::new();
            for (kind, (row, got)) in x.iter().zip(&gpu).enumerate() {
                host.probs(row, &[], &mut want);
                let (ok, w) = same_dist(got, &want, 1e-6);
                rows += 1;
                worst = worst.max(w);
                if !ok {
                    bad.push(format!(
                        "k {} p {} min-p {} t {} kind {kind}: {} vs {} candidates",
                        p.top_k,
                        p.top_p,
                        p.min_p,
                        p.temp,
                        got.len(),
                        want.items().len()
                    ));
                }
            }
        }
        t.check(
            &format!("sampled distribution vocab {vocab}"),
            bad.is_empty(),
            format!(
                "{rows} rows as Sampler::probs, prob err {worst:.1e} {}",
                bad.first().map_or("", |s| s)
            ),
        );
    }
    Ok(())
}

/// Sampled draft tokens against the host's draws from the same distribution with the same
/// random numbers, and the draft's distributions kept for judging.
fn picks(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    let (mut picks, mut bad) = (0, Vec::new());
    for vocab in [5, 512, 4000, 49152] {
        for p in settings() {
            if !crate::backend::cuda::can_sample(&p, vocab) {
                continue;
            }
            let kind = rng.below(3);
            let row = logits(rng, vocab, kind);
            let x = upload(g, &row)?;
            let seed = rng.next_u64();
            if !g.sample_setup(&p, Some(&p), vocab)? {
                bad.push(format!("setup refused {p:?}"));
                continue;
            }
            g.seed_sampling(0, seed)?;
            let n = 4;
            for i in 0..n {
                g.pick_sampled(&x, vocab, i, 7 + i)?;
            }
            let (ids, top, q) = g.sampled_draft(n, vocab)?;
            let mut host = Sampler::new(SamplerParams { seed, ..p.clone() }, vocab);
            let mut want = Probs::new();
            host.probs(&row, &[], &mut want);
            let dense: Vec<f32> = (0..vocab as u32).map(|id| want.get(id)).collect();
            for i in 0..n {
                picks += 1;
                let w = host.draw_from(&want);
                let q_ok = q[i * vocab..(i + 1) * vocab]
                    .iter()
                    .zip(&dense)
                    .all(|(a, b)| (a - b).abs() <= 1e-6);
                if ids[i] != w || (top[i] - want.top().1).abs() > 1e-6 || !q_ok {
                    bad.push(format!(
                        "vocab {vocab} {p:?} pick {i}: gpu {} cpu {w}, q row {}",
                        ids[i],
                        if q_ok { "ok" } else { "differs" }
                    ));
                }
            }
        }
    }
    t.check(
        "sampled draft picks == host draws",
        bad.is_empty(),
        format!("{picks} picks {}", bad.first().map_or("", |s| s)),
    );
    Ok(())
}

/// The acceptance kernel against `judge_sampled` (the host's `Judge`), on the same
/// distributions and the same stream of random numbers, carried across trials: drafts from
/// near and far distributions, one-hot drafts, proposals outside p's support, random cuts.
fn acceptance(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    let seed = rng.next_u64();
    g.seed_sampling(seed, 0)?;
    let mut host = Sampler::new(
        SamplerParams {
            seed,
            ..params(0, 1.0, 0.0, 1.0)
        },
        1,
    );
    let (mut kept, mut rejected, mut bonus) = (0, 0, 0);
    let mut failed = Vec::new();
    let mut verdict = Verdict::default();
    let trials = 300;
    let all = settings();
    for trial in 0..trials {
        let vocab = [5, 100, 512, 4000][rng.below(4)];
        let tp = &all[rng.below(all.len())];
        let dp = &all[rng.below(all.len())];
        if !crate::backend::cuda::can_sample(tp, vocab) {
            continue;
        }
        let one_hot = rng.below(4) == 0;
        let n = rng.below(9);
        let mut target = Sampler::new(tp.clone(), vocab);
        let mut drafter = Sampler::new(
            SamplerParams {
                seed: rng.next_u64(),
                ..dp.clone()
            },
            vocab,
        );
        let (mut p, mut q) = (Vec::new(), Vec::new());
        let mut proposals = Vec::new();
        for i in 0..=n {
            let kind = if rng.below(4) == 0 { 2 } else { 0 };
            let mut row = logits(rng, vocab, kind);
            let mut pi = Probs::new();
            target.probs(&row, &[], &mut pi);
            p.push(pi);
            if i == n {
                break;
            }
            // Near the model half the time, so that whole drafts are kept too.
            if rng.below(2) == 0 {
                row.iter_mut().for_each(|x| *x += rng.f32() * 0.3);
            } else {
                row = logits(rng, vocab, 0);
            }
            let mut qi = Probs::new();
            drafter.probs(&row, &[], &mut qi);
            let mut x = drafter.draw_from(&qi);
            if one_hot {
                if rng.below(4) == 0 {
                    x = rng.below(vocab) as u32;
                }
                qi.set_one_hot(x);
            }
            proposals.push(x);
            q.push(qi);
        }
        let top: Vec<f32> = (0..n).map(|_| rng.f32().abs()).collect();
        let cut = DraftCut {
            min: rng.below(4),
            p_min: [0.0, 0.3, 0.7][rng.below(3)],
        };
        let qs = (!one_hot).then_some(&q[..]);
        let want = judge_sampled(&p, qs, &proposals, &top, cut, &mut host);
        g.accept_sampled(&p, qs, vocab, &proposals, &top, cut, &mut verdict)?;
        kept += want.accepted;
        if want.accepted < want.valid {
            rejected += 1;
        } else {
            bonus += 1;
        }
        if verdict != want {
            failed.push(format!("trial {trial}: gpu {verdict:?}, cpu {want:?}"));
        }
    }
    t.check(
        "sampled acceptance vs judge_sampled",
        failed.is_empty() && kept > 0 && rejected > 0 && bonus > 0,
        format!(
            "{trials} trials: {kept} proposals kept, {rejected} rejections, {bonus} bonus draws {}",
            failed.first().map_or("", |s| s)
        ),
    );
    Ok(())
}

/// The first sampled token of speculation on the device, drawn many times, against the
/// model's exact distribution there (issue 6's test, on the GPU). The draft is the same tiny
/// model sampled at another temperature and cut-off, so most drafts are wrong and both the
/// acceptance test and the residual draw run.
fn first_token_law(g: &Cuda, file: &GgufFile, t: &mut Tally) -> Result<()> {
    let tok = Tokenizer::from_gguf(file)?;
    let prompt = tok.encode("Once upon a time, there was a", true, false)?;
    let m = Llama::load(file, g)?;
    let v = m.config.vocab_size;
    let target = params(0, 1.0, 0.0, 1.0);
    let mut s = Session::new(&m, 64)?;
    let logits = s.prefill(&prompt)?.to_vec();
    let mut p = Probs::new();
    Sampler::new(target.clone(), v).probs(&logits, &prompt, &mut p);
    let want: Vec<f64> = (0..v as u32).map(|id| p.get(id) as f64).collect();

    let drafts = [
        ("hotter draft", params(0, 1.0, 0.0, 2.5)),
        ("colder top-3 draft", params(3, 1.0, 0.0, 0.5)),
        // One-hot proposals: the residual is p without the proposal.
        ("greedy draft", params(0, 1.0, 0.0, 0.0)),
    ];
    const N: usize = 4000;
    for (label, dp) in drafts {
        let drafter = Drafter::Model {
            session: Session::new(&m, 64)?,
            sampler: Sampler::new(SamplerParams { seed: 77, ..dp }, v),
        };
        let sampler = Sampler::new(
            SamplerParams {
                seed: 78,
                ..target.clone()
            },
            v,
        );
        let fixed = SpecParams {
            draft_max: 2,
            draft_min: 2,
            p_min: 0.0,
        };
        let mut spec = Speculator::new(Session::new(&m, 64)?, sampler, drafter, fixed, v)?;
        let mut counts = vec![0usize; v];
        // One speculator throughout: each draw continues the device's random streams,
        // which makes the draws independent as fresh seeds would.
        for _ in 0..N {
            spec.target_mut().rollback(0)?;
            spec.prefill_drafting(&prompt)?;
            let tk = spec.next()?.unwrap_or(0);
            counts[tk as usize] += 1;
        }
        let st = spec.stats();
        let (chi2, cells, pv) = goodness_of_fit(&counts, &want);
        let both = st.accepted > st.drafted / 20 && st.accepted < st.drafted * 19 / 20;
        t.check(
            &format!("sampled spec first token, {label}"),
            spec.on_device() && cells >= 5 && pv > 0.01 && both,
            format!(
                "on device {}; {N} draws, chi2 {chi2:.1} over {cells} cells, p = {pv:.3}; {} of {} drafted kept",
                spec.on_device(),
                st.accepted,
                st.drafted
            ),
        );
    }
    Ok(())
}

/// Sampled speculation on the device twice with the same seeds gives the same text, and
/// runs on the device with the default sampler settings.
fn deterministic(g: &Cuda, file: &GgufFile, t: &mut Tally) -> Result<()> {
    let tok = Tokenizer::from_gguf(file)?;
    let prompt = tok.encode("Once upon a time", true, false)?;
    let m = Llama::load(file, g)?;
    let v = m.config.vocab_size;
    let run = |seed: u64| -> Result<(Vec<u32>, bool, usize)> {
        let p = SamplerParams {
            seed,
            ..params(40, 0.95, 0.05, 0.8)
        };
        let drafter = Drafter::Model {
            session: Session::new(&m, 256)?,
            sampler: Sampler::new(
                SamplerParams {
                    seed: seed ^ 1,
                    ..p.clone()
                },
                v,
            ),
        };
        let mut spec = Speculator::new(
            Session::new(&m, 256)?,
            Sampler::new(p, v),
            drafter,
            SpecParams::default(),
            v,
        )?;
        spec.prefill(&prompt)?;
        let mut out = Vec::new();
        for _ in 0..96 {
            match spec.next()? {
                Some(x) => out.push(x),
                None => break,
            }
        }
        Ok((out, spec.on_device(), spec.stats().verifications))
    };
    let (a, on_a, ver) = run(5)?;
    let (b, _, _) = run(5)?;
    let (c, _, _) = run(6)?;
    t.check(
        "sampled spec same seed, same tokens",
        on_a && a == b && a != c && ver > 0,
        format!(
            "on device {on_a}; {} tokens, {ver} verifications; seed 5 twice {}, seed 6 {}",
            a.len(),
            if a == b { "equal" } else { "DIFFER" },
            if a == c { "the SAME" } else { "differs" }
        ),
    );
    Ok(())
}
