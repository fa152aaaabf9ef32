//! The speculative decoder: draft, verify in one batched pass, accept, roll back.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::accept::Judge;
use super::{ngram_draft, Decoder, Lookahead, SpecParams, SpecStats, NGRAM_WINDOW};
use crate::backend::{Backend, DraftCut, Verdict};
use crate::sample::{Probs, Sampler, SamplerParams};
use crate::session::Session;

/// Where drafts come from.
// Made once per generation, so the size of the model variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Drafter<'m, 'a, B: Backend<'a>> {
    /// A small model with the target's vocabulary, sampled with its own sampler (normally
    /// the target's settings; any settings keep the output exact, closer ones accept more).
    Model {
        session: Session<'m, 'a, B>,
        sampler: Sampler,
    },
    /// Prompt lookup: the continuation of the latest earlier occurrence of the context's
    /// last tokens.
    Ngram,
}

/// A target session and a drafter. Invariant between steps: the target has fed every
/// produced token but the last (`last`), which the next verification feeds first.
pub struct Speculator<'m, 'a, B: Backend<'a>> {
    target: Session<'m, 'a, B>,
    sampler: Sampler,
    drafter: Drafter<'m, 'a, B>,
    params: SpecParams,
    lookahead: Lookahead,
    stats: SpecStats,
    judge: Judge,
    /// Produced tokens not handed out yet.
    ready: VecDeque<u32>,
    last: Option<u32>,
    /// Whether a full context shifts (see `Session::shift`) rather than ending the text.
    shift: bool,
    shifts: usize,
    // Scratch, reused every step.
    batch: Vec<u32>,
    drafted: Vec<u32>,
    /// The distribution each drafted token was drawn from.
    q: Vec<Probs>,
    p: Probs,
    vocab: usize,
    /// Whether drafts are picked and judged on the device (see `advance_on_device`).
    on_device: bool,
    /// On the device: whether the model is sampled (`DeviceSpec::judge_sampled`), and the
    /// draft model too (`DeviceSpec::pick_sampled`).
    sampled: bool,
    sampled_draft: bool,
    /// Greedy on the device: plain steps pick there too (`DeviceSpec::plain_pick`), as
    /// plain decoding does, so that a step with speculation off costs what one of plain
    /// decoding costs.
    device_plain: bool,
    /// The last plain step's pick is staged as the next decode step's token.
    plain_staged: bool,
    verdict: Verdict,
}

impl<'m, 'a, B: Backend<'a>> Speculator<'m, 'a, B> {
    /// `sampler` samples the target; a model drafter brings its own.
    pub fn new(
        mut target: Session<'m, 'a, B>,
        sampler: Sampler,
        drafter: Drafter<'m, 'a, B>,
        params: SpecParams,
        vocab: usize,
    ) -> Result<Self> {
        if params.draft_max == 0 || params.draft_max + 1 > crate::model::MAX_BATCH {
            bail!(
                "--draft-max must be 1 to {}, not {}",
                crate::model::MAX_BATCH - 1,
                params.draft_max
            );
        }
        target.reserve_rows(params.draft_max + 1)?;
        let ctx = target.ctx();
        // Greedy picks on the device are the host's picks only without a repeat penalty;
        // WICK_SPEC_HOST=1 keeps them on the host, to compare.
        let draft_params = match &drafter {
            Drafter::Model { sampler, .. } => Some(sampler.params()),
            Drafter::Ngram => None,
        };
        let one_hot_draft = draft_params.is_none_or(plain_argmax);
        let device = target
            .backend()
            .device_spec()
            .filter(|_| std::env::var_os("WICK_SPEC_HOST").is_none());
        let greedy_on_device = device.is_some() && plain_argmax(sampler.params()) && one_hot_draft;
        // Sampled: where the device can sample the model (and a sampled draft model) as
        // the host would; a greedy or n-gram draft's proposals are one-hot there too.
        let sampled = match device {
            Some(spec) if !greedy_on_device && sampler.params().temp > 0.0 => {
                let draft = draft_params.filter(|p| !plain_argmax(p));
                (draft.is_some() || one_hot_draft)
                    && spec.sample_setup(sampler.params(), draft, vocab)?
            }
            _ => false,
        };
        let sampled_draft = sampled && !one_hot_draft;
        let on_device = greedy_on_device || sampled;
        let device_plain = match device {
            Some(spec) if greedy_on_device && !super::host_sampling_forced() => {
                spec.plain_setup(sampler.params(), sampler.rng_state(), &[], vocab)?
            }
            _ => false,
        };
        Ok(Speculator {
            target,
            sampler,
            drafter,
            lookahead: Lookahead::new(params.draft_min, params.draft_max),
            stats: SpecStats {
                on_device,
                ..SpecStats::default()
            },
            judge: Judge::new(vocab),
            ready: VecDeque::with_capacity(params.draft_max + 1),
            last: None,
            shift: false,
            shifts: 0,
            // The n-gram drafter copies the whole context here.
            batch: Vec::with_capacity(ctx.max(NGRAM_WINDOW) + 1),
            drafted: Vec::with_capacity(params.draft_max),
            q: (0..params.draft_max).map(|_| Probs::new()).collect(),
            p: Probs::new(),
            params,
            vocab,
            on_device,
            sampled,
            sampled_draft,
            device_plain,
            plain_staged: false,
            verdict: Verdict::default(),
        })
    }

    /// Shifts the context when it fills up instead of stopping, when `shift` is set. The
    /// model and the draft model shift independently, each when its own cache is full; a
    /// draft is only a guess, so its context need not match the model's.
    pub fn with_shift(mut self, shift: bool) -> Self {
        self.shift = shift;
        self
    }

    pub fn stats(&self) -> &SpecStats {
        &self.stats
    }

    /// Whether drafts are picked and judged on the device: on a backend with
    /// [`crate::backend::DeviceSpec`], greedy, or sampled with settings the device follows
    /// (see `DeviceSpec::sample_setup`).
    pub fn on_device(&self) -> bool {
        self.on_device
    }

    /// The model's session, for a caller that reuses its cache across prompts (chat turns):
    /// roll it back and prefill it, then `resume`.
    pub fn target(&self) -> &Session<'m, 'a, B> {
        &self.target
    }

    pub fn target_mut(&mut self) -> &mut Session<'m, 'a, B> {
        &mut self.target
    }

    /// Replaces the model's session, as a fresh start when its cache cannot be rolled back.
    pub fn set_target(&mut self, mut target: Session<'m, 'a, B>) -> Result<()> {
        target.reserve_rows(self.params.draft_max + 1)?;
        self.target = target;
        self.plain_staged = false;
        Ok(())
    }

    /// Starts generating after what the model's session holds now (its last feed must have
    /// been a prefill or a step): the first token comes from its logits, as without
    /// speculation, and a draft model catches up with the model's tokens.
    pub fn resume(&mut self) -> Result<()> {
        if let Drafter::Model { session, .. } = &mut self.drafter {
            catch_up(
                session,
                self.target.tokens(),
                None,
                self.shift,
                &mut self.batch,
                false,
            )?;
        }
        let t = self
            .sampler
            .sample(self.target.logits(), self.target.tokens());
        self.ready.clear();
        self.ready.push_back(t);
        self.last = Some(t);
        self.plain_staged = false;
        Ok(())
    }

    /// Like `Decoder::prefill`, but holds back the prompt's last token for the first
    /// verification, so that even the first generated token is drafted and verified.
    pub fn prefill_drafting(&mut self, prompt: &[u32]) -> Result<()> {
        let Some((&last, head)) = prompt.split_last() else {
            bail!("nothing to prefill");
        };
        if !head.is_empty() {
            self.target.prefill(head)?;
        }
        self.ready.clear();
        self.last = Some(last);
        self.plain_staged = false;
        Ok(())
    }

    /// A plain step where drafting (started at `t0`, ended at `t1`) proposed nothing: it
    /// counts for the lookahead as a step with no draft.
    fn undrafted_step(&mut self, last: u32, t0: Instant, t1: Instant) -> Result<bool> {
        self.plain_after_draft(last, t1)?;
        self.lookahead
            .step_done(0, 0, 1, t0.elapsed().as_secs_f64());
        Ok(true)
    }

    /// The plain step that follows drafting (which ended at `t1`), its token produced and
    /// its time keeping the lookahead's plain timing fresh.
    fn plain_after_draft(&mut self, last: u32, t1: Instant) -> Result<u32> {
        let t = self.plain_step(last)?;
        self.finish(&[], t);
        let plain = t1.elapsed().as_secs_f64();
        self.stats.plain_secs += plain;
        self.lookahead.plain_timed(plain);
        Ok(t)
    }

    /// One plain forward pass of the target for `last`, then a token from its logits.
    fn plain_step(&mut self, last: u32) -> Result<u32> {
        self.stats.plain_steps += 1;
        if self.device_plain {
            // Fed from where the last plain pick staged it, unless a speculative step (or
            // a context shift) came between.
            if std::mem::take(&mut self.plain_staged) {
                self.target.step_staged()?;
                self.target.settle_staged(&[last])?;
            } else {
                self.target.prefill_on_device(&[last])?;
            }
            let spec = self
                .target
                .backend()
                .device_spec()
                .context("no plain picks on this device")?;
            let t = spec.plain_pick(self.target.logits_buf(), self.vocab, self.target.len())?;
            self.plain_staged = true;
            return Ok(t);
        }
        self.target.step(last)?;
        Ok(self
            .sampler
            .sample(self.target.logits(), self.target.tokens()))
    }

    /// Drafts up to `k` tokens after the target's tokens and `last` into `self.drafted`
    /// (and, from a model, their distributions into `self.q`).
    fn draft(&mut self, last: u32, k: usize) -> Result<()> {
        self.drafted.clear();
        let ctx = self.target.tokens();
        match &mut self.drafter {
            Drafter::Ngram => {
                self.batch.clear();
                self.batch
                    .extend_from_slice(&ctx[ctx.len().saturating_sub(NGRAM_WINDOW - 1)..]);
                self.batch.push(last);
                ngram_draft(&self.batch, k, &mut self.drafted);
                for (q, &t) in self.q.iter_mut().zip(&self.drafted) {
                    q.set_one_hot(t);
                }
            }
            Drafter::Model { session, sampler } => {
                if !catch_up(session, ctx, Some(last), self.shift, &mut self.batch, false)? {
                    // The draft's context is full: no more drafts.
                    return Ok(());
                }
                self.stats.draft_forwards += 1;
                let greedy = sampler.params().temp <= 0.0;
                for i in 0..k {
                    let q = &mut self.q[i];
                    sampler.probs(session.logits(), session.tokens(), q);
                    let top = if greedy {
                        softmax_top(session.logits())
                    } else {
                        q.top().1
                    };
                    if i >= self.params.draft_min && top < self.params.p_min {
                        break;
                    }
                    let t = sampler.draw_from(q);
                    self.drafted.push(t);
                    if i + 1 == k || session.room() == 0 {
                        break;
                    }
                    session.step(t)?;
                    self.stats.draft_forwards += 1;
                }
            }
        }
        Ok(())
    }

    /// One speculative step: draft, verify, accept, roll back; produced tokens go to
    /// `ready`. Returns false when the context is full.
    fn advance(&mut self) -> Result<bool> {
        let Some(last) = self.last else {
            bail!("speculator: no prompt was fed");
        };
        if self.target.room() == 0 {
            if !self.shift {
                return Ok(false);
            }
            self.target.shift()?;
            self.shifts += 1;
            self.plain_staged = false;
        }
        let t0 = Instant::now();
        let k = self.lookahead.draft_len().min(self.target.room() - 1);
        if k > 0 {
            // Drafting and verifying stage their own tokens.
            self.plain_staged = false;
        }
        if k == 0 {
            let t = self.plain_step(last)?;
            self.finish(&[], t);
            let secs = t0.elapsed().as_secs_f64();
            self.stats.plain_secs += secs;
            self.lookahead.plain_done(secs);
            return Ok(true);
        }
        if self.lookahead.probing() && self.shadow_probes() {
            return self.shadow_probe(last, t0);
        }
        if self.on_device {
            return self.advance_on_device(last, k, t0);
        }
        self.draft(last, k)?;
        let t1 = Instant::now();
        self.stats.draft_secs += (t1 - t0).as_secs_f64();
        let n = self.drafted.len();
        if n == 0 {
            return self.undrafted_step(last, t0, t1);
        }

        let base = self.target.tokens().len();
        self.batch.clear();
        self.batch.push(last);
        self.batch.extend_from_slice(&self.drafted);
        self.target.feed_all(&self.batch)?;
        // Row i holds the target's prediction after `last` and i drafted tokens.
        let mut accepted = 0;
        let mut next = None;
        for i in 0..=n {
            let history = &self.target.tokens()[..base + 1 + i];
            self.sampler
                .probs(self.target.row_logits(i), history, &mut self.p);
            if i == n {
                // The whole draft stood: a bonus token from the target alone.
                next = Some(self.sampler.draw_from(&self.p));
                break;
            }
            let x = self.drafted[i];
            match self.judge.judge(&self.p, &self.q[i], x, &mut self.sampler) {
                None => accepted += 1,
                Some(t) => {
                    next = Some(t);
                    break;
                }
            }
        }
        let next = next.expect("the loop always ends with a token");
        self.target.rollback(base + 1 + accepted)?;
        let drafted = std::mem::take(&mut self.drafted);
        self.finish(&drafted[..accepted], next);
        self.drafted = drafted;

        self.stats.verifications += 1;
        self.stats.drafted += n;
        self.stats.accepted += accepted;
        self.stats.verify_secs += t1.elapsed().as_secs_f64();
        self.lookahead
            .step_done(n, accepted, accepted + 1, t0.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Whether probes run in the shadow of a plain step: with a draft model and greedy
    /// picks, where the proposal either is the plain step's token or is not.
    fn shadow_probes(&self) -> bool {
        matches!(self.drafter, Drafter::Model { .. })
            && plain_argmax(self.sampler.params())
            && (!self.on_device || self.device_plain)
    }

    /// A probe (`Lookahead::probe_done`): the draft model catches up and proposes one
    /// token, the model takes a plain step, and the lookahead learns whether the two
    /// agreed. The produced token is the plain step's, so the text is what plain decoding
    /// prints.
    fn shadow_probe(&mut self, last: u32, t0: Instant) -> Result<bool> {
        let proposal = if self.on_device {
            let Drafter::Model { session, .. } = &mut self.drafter else {
                bail!("a shadow probe needs a draft model");
            };
            let ctx = self.target.tokens();
            if catch_up(session, ctx, Some(last), self.shift, &mut self.batch, true)? {
                let spec = self
                    .target
                    .backend()
                    .device_spec()
                    .context("no speculation on this device")?;
                // Greedy (shadow_probes): the argmax, as `pick` would stage it.
                Some(spec.plain_pick(session.logits_buf(), self.vocab, session.len())?)
            } else {
                None
            }
        } else {
            self.draft(last, 1)?;
            self.drafted.first().copied()
        };
        self.stats.draft_forwards += usize::from(proposal.is_some());
        let t1 = Instant::now();
        self.stats.draft_secs += (t1 - t0).as_secs_f64();
        // The pick above staged the draft's token; the plain step feeds `last` itself.
        self.plain_staged = false;
        let t = self.plain_after_draft(last, t1)?;
        self.lookahead
            .probe_done(proposal == Some(t), t0.elapsed().as_secs_f64());
        Ok(true)
    }

    /// `advance` on a backend with [`crate::backend::DeviceSpec`], greedy or sampled: the
    /// draft model picks each token on the device, where it feeds the draft's next step
    /// and then the verification, and the device judges the verification; the host waits
    /// once, for the verdict. (An n-gram draft is made on the host and judged on the
    /// device, which spares copying every row of logits.) The device cannot stop drafting
    /// where `--draft-p-min` would; it drafts all `k`, and the verdict ignores proposals
    /// from the first unsure one on.
    fn advance_on_device(&mut self, last: u32, k: usize, t0: Instant) -> Result<bool> {
        let spec = self
            .target
            .backend()
            .device_spec()
            .context("no speculation on this device")?;
        let ctx = self.target.tokens();
        let (n, cut) = match &mut self.drafter {
            Drafter::Model { session, .. } => {
                if !catch_up(session, ctx, Some(last), self.shift, &mut self.batch, true)? {
                    (0, None)
                } else {
                    let n = k.min(session.room() + 1);
                    for i in 0..n {
                        if self.sampled_draft {
                            spec.pick_sampled(session.logits_buf(), self.vocab, i, session.len())?;
                        } else {
                            spec.pick(session.logits_buf(), self.vocab, i, session.len())?;
                        }
                        if i + 1 < n {
                            session.step_staged()?;
                        }
                    }
                    self.stats.draft_forwards += n;
                    let cut = DraftCut {
                        min: self.params.draft_min,
                        p_min: self.params.p_min,
                    };
                    (n, Some(cut))
                }
            }
            Drafter::Ngram => {
                self.batch.clear();
                self.batch
                    .extend_from_slice(&ctx[ctx.len().saturating_sub(NGRAM_WINDOW - 1)..]);
                self.batch.push(last);
                self.drafted.clear();
                ngram_draft(&self.batch, k, &mut self.drafted);
                spec.set_proposals(&self.drafted)?;
                let cut = DraftCut { min: 0, p_min: 0.0 };
                (self.drafted.len(), Some(cut))
            }
        };
        let t1 = Instant::now();
        self.stats.draft_secs += (t1 - t0).as_secs_f64();
        let Some(cut) = cut.filter(|_| n > 0) else {
            return self.undrafted_step(last, t0, t1);
        };

        let base = self.target.tokens().len();
        spec.stage_verify(self.target.len(), last, n)?;
        self.target.verify_staged(n + 1)?;
        let rows = self.target.rows_buf().context("no rows reserved")?;
        if self.sampled {
            spec.judge_sampled(rows, self.vocab, n, cut, &mut self.verdict)?;
        } else {
            spec.judge(rows, self.vocab, n, cut, &mut self.verdict)?;
        }
        let v = &self.verdict;
        self.batch.clear();
        self.batch.push(last);
        self.batch.extend_from_slice(&v.proposals);
        self.target.settle_staged(&self.batch)?;
        self.target.rollback(base + 1 + v.accepted)?;
        if let Drafter::Model { session, .. } = &mut self.drafter {
            session.settle_staged(&v.proposals[..n - 1])?;
        }
        let (valid, accepted, next) = (v.valid, v.accepted, v.next);
        self.drafted.clear();
        self.drafted.extend_from_slice(&v.proposals[..accepted]);
        let drafted = std::mem::take(&mut self.drafted);
        self.finish(&drafted, next);
        self.drafted = drafted;

        // Counted as a verification even where the first proposal was already unsure
        // (`valid == 0`): it cost drafting and a batched pass, not a plain step's time.
        self.stats.verifications += 1;
        self.stats.drafted += valid;
        self.stats.accepted += accepted;
        self.stats.verify_secs += t1.elapsed().as_secs_f64();
        // K follows what was drafted, cut or not, so that drafts the device makes in vain
        // (past where --draft-p-min cuts them) shrink it.
        self.lookahead
            .step_done(n, accepted, accepted + 1, t0.elapsed().as_secs_f64());
        Ok(true)
    }

    fn finish(&mut self, accepted: &[u32], next: u32) {
        self.ready.extend(accepted);
        self.ready.push_back(next);
        self.stats.produced += accepted.len() + 1;
        self.last = Some(next);
    }
}

impl<'a, B: Backend<'a>> Decoder for Speculator<'_, 'a, B> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.target.prefill(prompt)?;
        self.resume()
    }

    fn next(&mut self) -> Result<Option<u32>> {
        if self.ready.is_empty() && !self.advance()? {
            return Ok(None);
        }
        Ok(self.ready.pop_front())
    }

    fn spec_stats(&self) -> Option<&SpecStats> {
        Some(&self.stats)
    }

    fn shifts(&self) -> usize {
        self.shifts
    }
}

/// The longest catch-up of a draft model on the device that is computed row-exact: those
/// that follow a verification (at most 2 tokens) are; those after plain steps may not be.
const EXACT_CATCH_UP: usize = 16;

/// Brings a draft model's session to `history` followed by `last`: forgets its tokens past
/// their common prefix and feeds the rest in one pass, shifting its context when full if
/// `shift`. False when the rest does not fit: no draft this time. With `on_device`, the
/// logits after it stay on the device, and at least one token is fed, so that they are
/// the logits after `last`.
fn catch_up<'a, B: Backend<'a>>(
    session: &mut Session<'_, 'a, B>,
    history: &[u32],
    last: Option<u32>,
    shift: bool,
    batch: &mut Vec<u32>,
    on_device: bool,
) -> Result<bool> {
    let common = session
        .tokens()
        .iter()
        .zip(history)
        .take_while(|(a, b)| a == b)
        .count();
    if session.rollback(common).is_err() {
        // They part inside tokens that a context shift dropped (a chat turn that rewrote
        // the conversation): start over.
        session.rollback(0)?;
    }
    batch.clear();
    batch.extend_from_slice(&history[session.tokens().len()..]);
    batch.extend(last);
    if batch.is_empty() {
        if !on_device {
            return Ok(true);
        }
        // Feed the last token again for its logits.
        let Some((&t, _)) = session.tokens().split_last() else {
            return Ok(false);
        };
        if session.rollback(session.tokens().len() - 1).is_err() {
            return Ok(false);
        }
        batch.push(t);
    }
    while batch.len() > session.room() {
        if !shift || !session.can_shift() {
            return Ok(false);
        }
        session.shift()?;
    }
    if on_device && batch.len() > EXACT_CATCH_UP {
        // A long catch-up (after plain steps) in the fast batched kernels: the draft's
        // rounding only changes what it proposes, never the output.
        session.prefill_on_device(batch)?;
    } else if on_device {
        // Rows as decode steps compute them, as the model's verification does, so that a
        // draft that is the model itself agrees with it exactly.
        session.backend().set_row_exact(true);
        let fed = session.prefill_on_device(batch);
        session.backend().set_row_exact(false);
        fed?;
    } else {
        session.prefill(batch)?;
    }
    Ok(true)
}

/// Whether a sampler's pick is the plain argmax of the logits (greedy, no repeat penalty),
/// which the device computes as the host does.
fn plain_argmax(p: &SamplerParams) -> bool {
    p.temp <= 0.0 && !p.penalizes()
}

/// The probability of the most likely token at temperature 1: how sure a greedy drafter is.
fn softmax_top(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (1.0 / total) as f32
}
