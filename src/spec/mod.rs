//! Speculative decoding: a cheap drafter proposes a few tokens, the model verifies them all
//! in one batched forward pass, and the longest acceptable prefix is kept. The output
//! follows the model alone exactly: greedy picks the same tokens, and sampling follows the
//! same distribution (standard speculative sampling).
//!
//! Generation asks a [`Decoder`] for one token at a time; [`Plain`] runs one forward pass
//! per token, [`Speculator`] hands out the tokens of each verified draft.

mod accept;
mod lookahead;
mod ngram;
mod speculator;
mod vocab;

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::sample::Sampler;
use crate::session::Session;

pub use accept::{judge_greedy, judge_sampled};
pub use lookahead::Lookahead;
pub use ngram::{ngram_draft, NGRAM_WINDOW};
pub use speculator::{Drafter, Speculator};
pub use vocab::check_vocab;

/// Where generation gets its tokens.
pub trait Decoder {
    /// Feeds the prompt; the first `next` picks from the logits after it.
    fn prefill(&mut self, prompt: &[u32]) -> Result<()>;
    /// The next token, or `None` when the context is full.
    fn next(&mut self) -> Result<Option<u32>>;
    /// Draft and acceptance counts, for a speculative decoder.
    fn spec_stats(&self) -> Option<&SpecStats> {
        None
    }
    /// Context shifts so far.
    fn shifts(&self) -> usize {
        0
    }
    /// Whether plain decoding picks its tokens on the device (see [`Plain`]).
    fn device_picks(&self) -> bool {
        false
    }
}

/// Set to 1, plain decoding samples on the host even where the device could (A/B runs).
pub const SAMPLE_HOST_ENV: &str = "WICK_SAMPLE_HOST";

/// Whether `SAMPLE_HOST_ENV` asks for host sampling.
pub fn host_sampling_forced() -> bool {
    std::env::var(SAMPLE_HOST_ENV).is_ok_and(|v| v == "1")
}

/// Set to 0, device picks wait for each token before queuing the next step (A/B runs).
pub const AHEAD_ENV: &str = "WICK_AHEAD";

/// One forward pass per token. On a backend with [`crate::backend::DeviceSpec`] whose
/// device follows the sampler's settings, each token is picked on the device from logits
/// that never leave it, and only its id is copied back (`DeviceSpec::plain_pick`); the
/// device continues the sampler's random stream, so the text is the host's.
///
/// Greedy device picks run one token ahead: the step that feeds a token, and the pick after
/// it, are queued before the host waits for that token's id, so the device never idles
/// while the host prints a token and queues the next step. The session then holds every
/// token handed out, where otherwise the last one is held back until the next call (so the
/// token that ends a generation costs a forward pass; `resume` drops the pick after it).
pub struct Plain<'m, 'a, B: Backend<'a>> {
    session: Session<'m, 'a, B>,
    sampler: Sampler,
    /// The last token handed out, fed lazily by the next call so that the last token of a
    /// generation costs no forward pass.
    pending: Option<u32>,
    /// Tokens never to sample (--ignore-eos masks the end-of-generation tokens).
    mask: Vec<u32>,
    /// Whether a full context shifts (see `Session::shift`) rather than ending the text.
    shift: bool,
    shifts: usize,
    /// The logits with the mask applied, reused every step.
    masked: Vec<f32>,
    /// Whether tokens are picked on the device, decided at the first pick.
    on_device: Option<bool>,
    /// Whether the device staged `pending` as the next step's token at the next position.
    staged: bool,
    /// Whether the last token handed out is already fed, and the pick after it queued.
    ahead: bool,
    /// Whether greedy device picks may run ahead (`AHEAD_ENV`), decided at the first pick.
    may_run_ahead: bool,
}

impl<'m, 'a, B: Backend<'a>> Plain<'m, 'a, B> {
    pub fn new(session: Session<'m, 'a, B>, sampler: Sampler) -> Self {
        Plain {
            session,
            sampler,
            pending: None,
            mask: Vec::new(),
            shift: false,
            shifts: 0,
            masked: Vec::new(),
            on_device: None,
            staged: false,
            ahead: false,
            may_run_ahead: false,
        }
    }

    /// Masks `mask` out of every choice, and shifts the context when it fills up instead
    /// of stopping, when `shift` is set.
    pub fn with_options(mut self, mask: Vec<u32>, shift: bool) -> Self {
        self.mask = mask;
        self.shift = shift;
        self
    }

    /// Samples on the host even where the device could pick (as `WICK_SAMPLE_HOST=1` does).
    pub fn with_host_sampling(mut self) -> Self {
        self.on_device = Some(false);
        self
    }

    /// The session, for a caller that reuses its cache across prompts (chat turns): roll it
    /// back and prefill it, then `resume`.
    pub fn session(&self) -> &Session<'m, 'a, B> {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session<'m, 'a, B> {
        &mut self.session
    }

    /// Starts generating after what the session holds now: the next token comes from the
    /// logits of its last prefill or step.
    pub fn resume(&mut self) {
        self.pending = None;
        self.staged = false;
        if std::mem::take(&mut self.ahead) {
            if let Some(ds) = self.session.backend().device_spec() {
                ds.plain_forget();
            }
        }
    }

    /// Whether tokens are picked on the device: decided once, setting the device up to
    /// continue the sampler (the host sampler is not used after that).
    pub fn picks_on_device(&mut self) -> Result<bool> {
        if let Some(d) = self.on_device {
            return Ok(d);
        }
        let forced_host = host_sampling_forced();
        let d = match self.session.backend().device_spec() {
            Some(ds) if !forced_host => ds.plain_setup(
                self.sampler.params(),
                self.sampler.rng_state(),
                &self.mask,
                self.session.vocab(),
            )?,
            _ => false,
        };
        self.on_device = Some(d);
        self.may_run_ahead = d
            && !std::env::var(AHEAD_ENV).is_ok_and(|v| v == "0")
            && self
                .session
                .backend()
                .device_spec()
                .is_some_and(|ds| ds.plain_ahead());
        Ok(d)
    }

    /// Feeds the token handed out last, if it was held back; false when the context is full
    /// and may not shift.
    fn feed_pending(&mut self, on_device: bool) -> Result<bool> {
        let Some(t) = self.pending.take() else {
            return Ok(true);
        };
        let mut staged = std::mem::take(&mut self.staged);
        if self.session.room() == 0 {
            if !self.shift {
                return Ok(false);
            }
            self.session.shift()?;
            self.shifts += 1;
            staged = false;
        }
        self.feed(t, staged, on_device)?;
        Ok(true)
    }

    /// `next` with greedy device picks running one token ahead (see [`Plain`]).
    fn next_ahead(&mut self) -> Result<Option<u32>> {
        let ds = self
            .session
            .backend()
            .device_spec()
            .context("device picks without a device")?;
        let vocab = self.session.vocab();
        if !self.ahead {
            if !self.feed_pending(true)? {
                return Ok(None);
            }
            ds.plain_queue(self.session.logits_buf(), vocab, self.session.len())?;
        }
        // The token being picked is staged at the next position: its step is queued before
        // the host knows it, unless the context is full (a shift, or the end, is the host's).
        let go = self.session.room() > 0;
        if go {
            self.session.step_staged()?;
            ds.plain_queue(self.session.logits_buf(), vocab, self.session.len())?;
        }
        let t = ds.plain_take()?;
        if go {
            self.session.settle_staged(&[t])?;
        } else {
            self.pending = Some(t);
            self.staged = true;
        }
        self.ahead = go;
        Ok(Some(t))
    }

    /// Feeds the token handed out last: from where the device staged it, or from the host.
    fn feed(&mut self, t: u32, staged: bool, on_device: bool) -> Result<()> {
        if !on_device {
            self.session.step(t)?;
        } else if staged {
            self.session.step_staged()?;
            self.session.settle_staged(&[t])?;
        } else {
            // A context shift moved the position the pick staged (or nothing was staged).
            self.session.prefill_on_device(&[t])?;
        }
        Ok(())
    }
}

impl<'a, B: Backend<'a>> Decoder for Plain<'_, 'a, B> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        if self.picks_on_device()? {
            self.session.prefill_on_device(prompt)?;
        } else {
            self.session.prefill(prompt)?;
        }
        self.resume();
        Ok(())
    }

    fn next(&mut self) -> Result<Option<u32>> {
        let on_device = self.picks_on_device()?;
        if self.may_run_ahead {
            return self.next_ahead();
        }
        if !self.feed_pending(on_device)? {
            return Ok(None);
        }
        if on_device {
            let s = &self.session;
            let ds = s
                .backend()
                .device_spec()
                .context("device picks without a device")?;
            let t = ds.plain_pick(s.logits_buf(), s.vocab(), s.len())?;
            self.pending = Some(t);
            self.staged = true;
            return Ok(Some(t));
        }
        let logits = self.session.logits();
        let t = if self.mask.is_empty() {
            self.sampler.sample(logits, self.session.tokens())
        } else {
            self.masked.clear();
            self.masked.extend_from_slice(logits);
            for &m in &self.mask {
                if let Some(l) = self.masked.get_mut(m as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            self.sampler.sample(&self.masked, self.session.tokens())
        };
        self.pending = Some(t);
        Ok(Some(t))
    }

    fn shifts(&self) -> usize {
        self.shifts
    }

    fn device_picks(&self) -> bool {
        self.on_device == Some(true)
    }
}

/// Lookahead settings: how many tokens a draft may hold.
#[derive(Clone, Debug)]
pub struct SpecParams {
    /// Most tokens drafted per verification.
    pub draft_max: usize,
    /// Fewest tokens drafted per verification before `p_min` may stop the draft. 0 also
    /// lets speculation switch itself off while it does not pay (see `Lookahead`).
    pub draft_min: usize,
    /// Stop drafting when the draft's most likely token is less likely than this.
    pub p_min: f32,
}

impl Default for SpecParams {
    fn default() -> Self {
        SpecParams {
            draft_max: 16,
            draft_min: 0,
            p_min: 0.75,
        }
    }
}

/// What speculation did, for `--stats`.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Batched verifications of a draft.
    pub verifications: usize,
    /// One-token forward passes of the model, when there was no draft.
    pub plain_steps: usize,
    /// Tokens drafted, and how many of them the model accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Forward passes of the draft model.
    pub draft_forwards: usize,
    /// Tokens produced by verifications and plain steps.
    pub produced: usize,
    /// Seconds spent drafting, verifying, and in plain steps.
    pub draft_secs: f64,
    pub verify_secs: f64,
    pub plain_secs: f64,
    /// Whether drafts were judged on the device: drafting is then only queued, and its time
    /// falls in `verify_secs`.
    pub on_device: bool,
}

impl SpecStats {
    /// Fraction of drafted tokens accepted.
    pub fn acceptance(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Drafted tokens accepted per verification.
    pub fn accepted_per_verification(&self) -> f64 {
        ratio(self.accepted, self.verifications)
    }

    /// Tokens produced per forward pass of the model.
    pub fn tokens_per_target_forward(&self) -> f64 {
        ratio(self.produced, self.verifications + self.plain_steps)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
