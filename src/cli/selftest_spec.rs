//! `wick selftest --gpu`, speculation: the device's greedy picks and verdicts against the
//! host's on random logits (ties, NaN, signed zeros included), verified rows against decode
//! steps bit for bit, and greedy speculative decoding on the GPU against plain greedy
//! decoding, token for token. Sampled speculation: `selftest_sampled`.

use std::fmt::Display;
use std::path::Path;

use anyhow::{Context, Result};

use crate::backend::cuda::Cuda;
use crate::backend::{Backend, DeviceSpec, DraftCut};
use crate::gguf::GgufFile;
use crate::model::{Llama, DEFAULT_MODEL};
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
use crate::spec::{judge_greedy, Decoder, Drafter, Plain, SpecParams, Speculator};
use crate::tokenizer::Tokenizer;

#[derive(Default)]
pub struct Tally {
    pub checks: usize,
    pub failures: usize,
}

impl Tally {
    pub(super) fn check(&mut self, name: &str, ok: bool, detail: impl Display) {
        self.checks += 1;
        if !ok {
            self.failures += 1;
        }
        eprintln!("{} {name:<44} {detail}", if ok { "ok  " } else { "FAIL" });
    }
}

pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, n).
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub(super) fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn greedy() -> SamplerParams {
    SamplerParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        seed: 1,
        ..SamplerParams::default()
    }
}

/// The host's greedy pick and its probability at temperature 1, NaN counted as impossible.
fn host_pick(row: &[f32]) -> (u32, f32) {
    let id = Sampler::new(greedy(), row.len()).sample(row, &[]);
    let max = row[id as usize];
    if max.is_nan() || max == f32::NEG_INFINITY {
        return (id, 0.0);
    }
    let total: f64 = row
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| ((l - max) as f64).exp())
        .sum();
    (id, (1.0 / total) as f32)
}

fn upload(g: &Cuda, v: &[f32]) -> Result<crate::backend::cuda::DeviceMem> {
    let mut m = g.buffer(v.len())?;
    g.write(&mut m, v)?;
    Ok(m)
}

pub fn run(g: &Cuda, seed: u64, t: &mut Tally) -> Result<()> {
    let mut rng = Rng(seed | 1);
    argmax(g, &mut rng, t)?;
    judge(g, &mut rng, t)?;
    super::selftest_sampled::run(g, &mut rng, t)?;
    super::selftest_plain::run(g, &mut rng, t)?;
    let embedded = GgufFile::from_static(DEFAULT_MODEL)?;
    models(g, &embedded, "stories260K", "Once upon a time", t)?;
    let draft = Path::new("models/smollm2-draft.gguf");
    match GgufFile::open(draft) {
        Ok(f) => models(g, &f, "smollm2-draft", "The capital of France is", t)?,
        Err(e) => t.check(
            "smollm2-draft speculation",
            false,
            format!(
                "{} is needed (run from the repository root): {e}",
                draft.display()
            ),
        ),
    }
    Ok(())
}

/// Logit rows that try an argmax: random, random with the maximum repeated three more
/// times, NaNs, all NaN, and -0 and +0 above negatives.
pub(super) fn argmax_rows(rng: &mut Rng, vocab: usize) -> Vec<Vec<f32>> {
    let random = |rng: &mut Rng| (0..vocab).map(|_| rng.f32() * 10.0).collect::<Vec<_>>();
    let mut rows = vec![random(rng)];
    let mut tied = random(rng);
    let (i, _) = host_pick(&tied);
    for _ in 0..3 {
        let j = rng.below(vocab);
        tied[j] = tied[i as usize];
    }
    rows.push(tied);
    let mut nans = random(rng);
    nans[0] = f32::NAN;
    for _ in 0..vocab / 10 {
        nans[rng.below(vocab)] = f32::NAN;
    }
    rows.push(nans);
    rows.push(vec![f32::NAN; vocab]);
    let mut zeros: Vec<f32> = (0..vocab).map(|_| -1.0 - rng.f32().abs()).collect();
    zeros[0] = -0.0;
    zeros[vocab - 1] = 0.0;
    rows.push(zeros);
    rows
}

/// The argmax kernel against the CPU sampler's greedy pick: random rows, the maximum
/// repeated (the lowest id must win), NaNs, all NaN, and -0 against +0 (+0 is larger).
fn argmax(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    for vocab in [1, 7, 33, 1000, 32000, 49152, 50257] {
        let rows = argmax_rows(rng, vocab);
        let flat: Vec<f32> = rows.concat();
        let x = upload(g, &flat)?;
        let (ids, top) = g.argmax_rows(&x, rows.len(), vocab)?;
        let mut bad = Vec::new();
        let mut worst = 0f32;
        for (r, row) in rows.iter().enumerate() {
            let (want, p) = host_pick(row);
            if ids[r] != want {
                bad.push(format!("row {r}: gpu {} cpu {want}", ids[r]));
            }
            let err = (top[r] - p).abs() / p.max(1e-30);
            if p > 0.0 {
                worst = worst.max(err);
            } else if top[r] != 0.0 {
                worst = f32::INFINITY;
            }
        }
        t.check(
            &format!("spec argmax vocab {vocab}"),
            bad.is_empty() && worst <= 1e-4,
            format!("top prob rel err {worst:.1e} {}", bad.join(", ")),
        );
    }
    Ok(())
}

/// The acceptance kernel against `judge_greedy`, the host's rule, on random rows, drafts
/// that agree for a while, ties against the draft, and random `--draft-p-min` cuts.
fn judge(g: &Cuda, rng: &mut Rng, t: &mut Tally) -> Result<()> {
    let mut failed = Vec::new();
    let trials = 300;
    let mut verdict = Default::default();
    let mut accepted = 0;
    for trial in 0..trials {
        let vocab = [5, 100, 4000, 49152][rng.below(4)];
        let n = rng.below(17);
        let mut rows: Vec<f32> = (0..(n + 1) * vocab).map(|_| rng.f32() * 5.0).collect();
        let agree = rng.below(n + 1);
        let mut proposals = Vec::with_capacity(n);
        for i in 0..n {
            let row = &mut rows[i * vocab..(i + 1) * vocab];
            let (best, _) = host_pick(row);
            let p = if i < agree {
                best
            } else if rng.below(3) == 0 && best as usize + 1 < vocab {
                // A tie the draft loses: its token has the same logit at a higher id.
                row[best as usize + 1] = row[best as usize];
                best + 1
            } else {
                rng.below(vocab) as u32
            };
            proposals.push(p);
        }
        let top: Vec<f32> = (0..n).map(|_| rng.f32().abs()).collect();
        let cut = DraftCut {
            min: rng.below(4),
            p_min: [0.0, 0.3, 0.7][rng.below(3)],
        };
        let want = judge_greedy(&rows, vocab, &proposals, &top, cut);
        let x = upload(g, &rows)?;
        g.set_proposals_with_top(&proposals, &top)?;
        g.judge(&x, vocab, n, cut, &mut verdict)?;
        accepted += want.accepted;
        if verdict != want {
            failed.push(format!("trial {trial}: gpu {verdict:?}, cpu {want:?}"));
        }
    }
    t.check(
        "spec judge vs judge_greedy",
        failed.is_empty(),
        format!(
            "{trials} trials, {accepted} proposals accepted {}",
            failed.first().map_or("", |s| s)
        ),
    );
    Ok(())
}

/// A model's verification rows against its decode steps, bit for bit (17 rows: past the
/// batch where products switch kernels), then greedy decoding with the model as its own
/// draft and with n-gram drafts on the device, against plain greedy decoding.
fn models(g: &Cuda, file: &GgufFile, name: &str, prompt: &str, t: &mut Tally) -> Result<()> {
    let tok = Tokenizer::from_gguf(file)?;
    let prompt = tok.encode(prompt, true, false)?;
    let target = Llama::load(file, g)?;
    let draft = Llama::load(file, g)?;
    let vocab = target.config.vocab_size;
    let ctx = 256;

    let extra: Vec<u32> = (0..17u32).map(|i| (i * 7919 + 13) % vocab as u32).collect();
    let mut a = Session::new(&target, ctx)?;
    a.prefill(&prompt)?;
    let mut want = Vec::new();
    for &x in &extra {
        want.extend_from_slice(a.step(x)?);
    }
    let mut b = Session::new(&target, ctx)?;
    b.reserve_rows(extra.len())?;
    b.prefill(&prompt)?;
    b.feed_all(&extra)?;
    let got: Vec<f32> = (0..extra.len())
        .flat_map(|i| b.row_logits(i).to_vec())
        .collect();
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    t.check(
        &format!("{name} verified rows == decode steps"),
        differ == 0,
        format!("{differ} of {} logits differ in some bit", want.len()),
    );

    let steps = 64;
    let plain = {
        let s = Session::new(&target, ctx)?;
        let mut d = Plain::new(s, Sampler::new(greedy(), vocab));
        generate(&mut d, &prompt, steps)?
    };
    let configs = [
        ("fixed k 6", 6, 6, 0.0),
        ("k <= 16, p-min 0.75", 16, 1, 0.75),
    ];
    for (label, draft_max, draft_min, p_min) in configs {
        for model_draft in [true, false] {
            let drafter = if model_draft {
                Drafter::Model {
                    session: Session::new(&draft, ctx)?,
                    sampler: Sampler::new(greedy(), vocab),
                }
            } else {
                Drafter::Ngram
            };
            let params = SpecParams {
                draft_max,
                draft_min,
                p_min,
            };
            let s = Session::new(&target, ctx)?;
            let mut spec =
                Speculator::new(s, Sampler::new(greedy(), vocab), drafter, params, vocab)?;
            let out = generate(&mut spec, &prompt, steps)?;
            let st = spec.stats();
            let same = out == plain;
            // The model drafting for itself must see every proposal accepted.
            let full = !model_draft || st.accepted == st.drafted;
            let kind = if model_draft { "self-draft" } else { "ngram" };
            t.check(
                &format!("{name} {kind} {label}"),
                same && full && spec.on_device(),
                format!(
                    "{} tokens{}; on device {}; {} drafted, {} accepted, {} verifications, {} plain steps",
                    out.len(),
                    if same { " as plain greedy" } else { " DIFFER from plain greedy" },
                    spec.on_device(),
                    st.drafted,
                    st.accepted,
                    st.verifications,
                    st.plain_steps
                ),
            );
        }
    }
    Ok(())
}

fn generate(d: &mut dyn Decoder, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    d.prefill(prompt).context("prefill")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match d.next()? {
            Some(t) => out.push(t),
            None => break,
        }
    }
    Ok(out)
}
