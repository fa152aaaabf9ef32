//! How many tokens to draft next: the lookahead K adapts to the recent acceptance, and,
//! when allowed (`draft_min == 0`), speculation switches itself off while it is slower
//! per token than plain decoding, probing again rarely enough that probes cost at most
//! about 1 % of the time.
//!
//! - K starts at `min(4, draft_max)`. After a verification that accepted the whole draft K
//!   grows by 2, after one that rejected a token it shrinks by 1, always within
//!   `[max(draft_min, 1), draft_max]`. K does not grow to a length whose measured cost
//!   (if measured in the last `STALE` steps), with the running acceptance rate, promises
//!   fewer tokens per second than the current one. (`--draft-p-min` separately cuts a draft short where the drafter is unsure.)
//! - With `draft_min == 0`, the first `CALIBRATE` tokens are plain steps, timing the model
//!   alone (all but the first, which runs cold; the plain step of a speculative step whose
//!   draft came out empty keeps that timing fresh). Then speculation is probed with K = 1, the cheapest draft; a greedy draft model
//!   probes in the shadow of a plain step (`probing`, `probe_done`): its one proposal is
//!   compared with the token the plain step picks, and only agreement opens a run of
//!   verified drafts, so a probe that fails costs the draft's catch-up, not a verification
//!   of two. Every speculative
//!   step (drafting, verifying and any catch-up of the draft model included) updates a
//!   moving average of seconds per produced token; as soon as it is above plain
//!   decoding's, the following tokens are plain steps. How many: the time this run of
//!   speculation lost against plain decoding, divided by 1 % of a plain step (`BUDGET`),
//!   at least twice the previous back-off after a run that lost, and within
//!   `BACKOFF_MIN..=BACKOFF_MAX`; a run that paid overall resets it. So probing that does
//!   not pay costs about 1 % of the plain decoding time, falling as back-offs double.
//!   Draft choices then depend on timings, so a seed repeats the sampled text only with
//!   `draft_min >= 1`, which turns this off.

/// Plain steps timed before the first draft. A probe that fails costs about half a plain
/// step (the draft model catching up; also a batch of two where probes are verified);
/// replies of up to 32 tokens (one-line answers, most chat turns' short replies) see no
/// probe at all, and a longer one pays for at most one before it has 60 tokens. (With 3,
/// replies of ten tokens ran 6-10 % slower on the H100; with 16, those of 20-30 tokens
/// 3-4 %.)
const CALIBRATE: usize = 32;
/// The share of decoding time that probing which does not pay may cost.
const BUDGET: f64 = 0.01;
const BACKOFF_MIN: usize = 16;
const BACKOFF_MAX: usize = 1024;
/// How fast the acceptance estimate forgets (per verification).
const ACCEPT_DECAY: f64 = 0.9;
/// Speculative steps after which a draft length's measured cost is stale: K may grow to
/// it again, to measure it anew (one slow sample must not bar a length for good).
const STALE: usize = 32;

/// An exponential moving average.
#[derive(Clone, Copy, Debug, Default)]
struct Ema {
    value: Option<f64>,
}

impl Ema {
    fn add(&mut self, x: f64) {
        self.value = Some(match self.value {
            None => x,
            Some(v) => v + 0.25 * (x - v),
        });
    }
}

#[derive(Clone, Debug)]
pub struct Lookahead {
    min: usize,
    max: usize,
    k: usize,
    /// Seconds per plain step.
    plain: Ema,
    plain_samples: usize,
    /// Seconds per produced token of the current run of speculation.
    spec: Ema,
    /// The current run of speculation so far: seconds and produced tokens.
    run_secs: f64,
    run_tokens: usize,
    /// Plain steps left before the next probe.
    off_left: usize,
    /// The last back-off, 0 after a run that paid.
    backoff: usize,
    /// Seconds per speculative step by tokens drafted (index 0 to `max`), and the
    /// speculative step that last measured each.
    cost: Vec<Ema>,
    measured: Vec<usize>,
    steps: usize,
    /// Decayed counts of drafted and accepted tokens.
    drafted: f64,
    accepted: f64,
}

impl Lookahead {
    pub fn new(draft_min: usize, draft_max: usize) -> Lookahead {
        let min = draft_min.min(draft_max);
        // With switching off allowed, the first draft is a probe: the cheapest one.
        let start = if min == 0 { 1 } else { 4 };
        Lookahead {
            min,
            max: draft_max,
            k: start.clamp(min.max(1), draft_max.max(1)).min(draft_max),
            plain: Ema::default(),
            plain_samples: 0,
            spec: Ema::default(),
            run_secs: 0.0,
            run_tokens: 0,
            off_left: 0,
            backoff: 0,
            cost: vec![Ema::default(); draft_max + 1],
            measured: vec![0; draft_max + 1],
            steps: 0,
            drafted: 0.0,
            accepted: 0.0,
        }
    }

    fn may_switch_off(&self) -> bool {
        self.min == 0
    }

    fn floor(&self) -> usize {
        self.min.max(1).min(self.max)
    }

    /// Tokens to draft for the next step; 0 means a plain step.
    pub fn draft_len(&self) -> usize {
        if self.may_switch_off() && (self.off_left > 0 || self.plain_samples < CALIBRATE) {
            return 0;
        }
        self.k
    }

    /// A plain step (asked for by `draft_len() == 0`) took `secs`.
    pub fn plain_done(&mut self, secs: f64) {
        // The first decode step runs cold (caches, first-use allocations): not timed.
        if self.plain_samples > 0 {
            self.plain_timed(secs);
        }
        self.plain_samples += 1;
        self.off_left = self.off_left.saturating_sub(1);
    }

    /// The plain step of a speculative step whose draft came out empty took `secs`: it
    /// keeps the plain timing fresh while speculation is on.
    pub fn plain_timed(&mut self, secs: f64) {
        self.plain.add(secs);
    }

    /// A speculative step drafted `drafted` tokens, kept `accepted` of them, and produced
    /// `produced` tokens in `secs`, drafting included.
    pub fn step_done(&mut self, drafted: usize, accepted: usize, produced: usize, secs: f64) {
        self.steps += 1;
        if let Some(c) = self.cost.get_mut(drafted) {
            c.add(secs);
            self.measured[drafted] = self.steps;
        }
        if drafted > 0 {
            self.drafted = self.drafted * ACCEPT_DECAY + drafted as f64;
            self.accepted = self.accepted * ACCEPT_DECAY + accepted as f64;
            let k = if accepted == drafted {
                self.k + 2
            } else {
                self.k.saturating_sub(1)
            }
            .clamp(self.floor(), self.max);
            if k <= self.k || self.pays_more(k) {
                self.k = k;
            }
        }
        if !self.may_switch_off() {
            return;
        }
        self.spec.add(secs / produced.max(1) as f64);
        self.run_secs += secs;
        self.run_tokens += produced;
        let (Some(spec), Some(plain)) = (self.spec.value, self.plain.value) else {
            return;
        };
        if spec <= plain {
            return;
        }
        self.switch_off(plain);
    }

    /// Whether the next draft (`draft_len() > 0`) opens a run of speculation after plain
    /// steps: a probe. A greedy drafter may then probe in the shadow of a plain step
    /// (`probe_done`) rather than with a verification.
    pub fn probing(&self) -> bool {
        self.may_switch_off() && self.run_tokens == 0 && self.draft_len() > 0
    }

    /// A probe in the shadow of a plain step: the drafter proposed one token (or nothing,
    /// unsure), the model's plain step picked its own, and `agreed` says whether they were
    /// the same; `secs` is the whole step, drafting included. Agreement opens the run of
    /// speculation (the next step verifies a draft), disagreement ends it at once. Either
    /// way the step's time counts against the run, so a probe that fails costs what the
    /// draft's catch-up and pick cost, not a verification of two.
    pub fn probe_done(&mut self, agreed: bool, secs: f64) {
        self.run_secs += secs;
        self.run_tokens += 1;
        if !agreed {
            if let Some(plain) = self.plain.value {
                self.switch_off(plain);
            }
        }
    }

    /// Slower than plain decoding (`plain` seconds a step): plain steps for a while, then
    /// a probe with K = 1.
    fn switch_off(&mut self, plain: f64) {
        let lost = self.run_secs - self.run_tokens as f64 * plain;
        if lost <= 0.0 {
            self.backoff = 0;
            self.off_left = BACKOFF_MIN;
        } else {
            let budgeted = (lost / (BUDGET * plain)).round();
            let steps = if budgeted.is_finite() {
                budgeted.min(BACKOFF_MAX as f64) as usize
            } else {
                BACKOFF_MAX
            };
            self.backoff = steps.max(2 * self.backoff).clamp(BACKOFF_MIN, BACKOFF_MAX);
            self.off_left = self.backoff;
        }
        self.k = self.floor();
        self.spec = Ema::default();
        self.run_secs = 0.0;
        self.run_tokens = 0;
    }

    /// Whether drafting `k` tokens promises more tokens per second than the current K, by
    /// the measured cost of both and the running acceptance rate; true when either cost
    /// is unknown or stale, to find out.
    fn pays_more(&self, k: usize) -> bool {
        let (Some(now), Some(then)) = (self.cost[self.k].value, self.cost[k].value) else {
            return true;
        };
        if self.steps - self.measured[k] > STALE {
            return true;
        }
        let a = (self.accepted + 1.0) / (self.drafted + 2.0);
        // Expected tokens of a verification of `n` drafts: 1 + a + a² + … + aⁿ.
        let tokens = |n: usize| (0..=n).map(|i| a.powi(i as i32)).sum::<f64>();
        tokens(k) / then >= tokens(self.k) / now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_grows_on_full_acceptance_and_shrinks_on_rejection() {
        let mut l = Lookahead::new(1, 8);
        assert_eq!(l.draft_len(), 4);
        l.step_done(4, 4, 5, 1.0);
        assert_eq!(l.draft_len(), 6);
        l.step_done(6, 6, 7, 1.0);
        l.step_done(8, 8, 9, 1.0);
        assert_eq!(l.draft_len(), 8);
        for _ in 0..20 {
            l.step_done(l.draft_len(), 0, 1, 1.0);
        }
        assert_eq!(l.draft_len(), 1, "never below max(draft_min, 1)");
        // An empty draft (cut by p-min) says nothing about K.
        l.step_done(0, 0, 1, 1.0);
        assert_eq!(l.draft_len(), 1);
    }

    #[test]
    fn a_shadow_probe_opens_or_ends_a_run() {
        for agreed in [false, true] {
            let mut l = Lookahead::new(0, 4);
            for _ in 0..CALIBRATE {
                assert!(!l.probing());
                l.plain_done(1.0);
            }
            assert!(l.probing(), "the first draft after calibrating is a probe");
            l.probe_done(agreed, 1.5);
            if agreed {
                assert!(!l.probing(), "the run is open");
                assert_eq!(l.draft_len(), 1);
            } else {
                // Half a step lost, at 1 % of a step per plain step: 50 plain steps,
                // then the next probe.
                for _ in 0..50 {
                    assert_eq!(l.draft_len(), 0);
                    l.plain_done(1.0);
                }
                assert!(l.probing());
            }
        }
    }

    #[test]
    fn fixed_lookahead_when_min_equals_max() {
        let mut l = Lookahead::new(3, 3);
        for accepted in [0, 3, 1, 3, 3] {
            assert_eq!(l.draft_len(), 3);
            l.step_done(3, accepted, accepted + 1, 1.0);
        }
    }

    #[test]
    fn k_does_not_grow_where_the_measured_cost_does_not_pay() {
        for (cost6, want) in [(10.0, 4), (1.0, 6)] {
            let mut l = Lookahead::new(1, 8);
            l.step_done(6, 3, 4, cost6);
            l.step_done(3, 3, 4, 1.0);
            l.step_done(5, 2, 3, 1.0);
            assert_eq!(l.draft_len(), 4);
            // A full acceptance: K grows to 6 only if drafts of 6 cost no more than 4.
            l.step_done(4, 4, 5, 1.0);
            assert_eq!(l.draft_len(), want, "drafts of 6 cost {cost6} s");
        }
        // A cost measured long ago is tried again.
        let mut l = Lookahead::new(1, 8);
        l.step_done(6, 3, 4, 10.0);
        l.step_done(4, 2, 3, 1.0);
        l.k = 4;
        assert!(!l.pays_more(6));
        for _ in 0..STALE {
            l.step_done(4, 2, 3, 1.0);
        }
        l.k = 4;
        assert!(l.pays_more(6));
    }

    fn calibrate(l: &mut Lookahead) {
        for _ in 0..CALIBRATE {
            assert_eq!(l.draft_len(), 0);
            l.plain_done(1.0);
        }
    }

    /// Plain steps until the next probe.
    fn plain_until_probe(l: &mut Lookahead) -> usize {
        let mut n = 0;
        while l.draft_len() == 0 {
            l.plain_done(1.0);
            n += 1;
            assert!(n <= BACKOFF_MAX, "no probe after {n} plain steps");
        }
        n
    }

    #[test]
    fn probes_with_one_token_and_backs_off_by_the_time_lost() {
        let mut l = Lookahead::new(0, 8);
        calibrate(&mut l);
        assert_eq!(l.draft_len(), 1, "a probe drafts one token");
        // One token in 1.5 s: 0.5 s lost against plain's 1 s, which is 50 plain steps at 1 %.
        l.step_done(1, 0, 1, 1.5);
        assert_eq!(plain_until_probe(&mut l), 50);
        assert_eq!(l.draft_len(), 1);
        // A cheaper failure still backs off twice as long as the last one.
        l.step_done(0, 0, 1, 1.1);
        assert_eq!(plain_until_probe(&mut l), 100);
        // A dearer one by its loss: 3 s lost is 300 steps.
        l.step_done(1, 0, 1, 4.0);
        assert_eq!(plain_until_probe(&mut l), 300);
        // Never longer than BACKOFF_MAX.
        l.step_done(1, 0, 1, 100.0);
        assert_eq!(plain_until_probe(&mut l), BACKOFF_MAX);
    }

    #[test]
    fn probing_that_never_pays_costs_about_one_percent() {
        // Drafting one token costs 1.6 plain steps and is always rejected, as on a CPU
        // with a poor draft: over 5,000 tokens the probes lose at most 1 % of the time.
        let mut l = Lookahead::new(0, 16);
        let (mut secs, mut tokens) = (0.0, 0);
        while tokens < 5000 {
            let k = l.draft_len();
            if k == 0 {
                l.plain_done(1.0);
                secs += 1.0;
            } else {
                l.step_done(k, 0, 1, 0.6 + k as f64);
                secs += 0.6 + k as f64;
            }
            tokens += 1;
        }
        assert!(secs <= 1.01 * tokens as f64, "{secs} s for {tokens} tokens");
    }

    #[test]
    fn stays_on_while_it_pays_and_retries_soon_after_a_run_that_paid() {
        let mut l = Lookahead::new(0, 4);
        calibrate(&mut l);
        // Full acceptance at 0.5 s a token: K grows to the maximum and stays on.
        for _ in 0..20 {
            let k = l.draft_len();
            assert!(k > 0);
            l.step_done(k, k, k + 1, 0.5 * (k + 1) as f64);
        }
        assert_eq!(l.draft_len(), 4);
        // The text turns: drafts fail, slower than plain. The run as a whole paid, so the
        // next probe comes after BACKOFF_MIN plain steps.
        let mut slow = 0;
        while l.draft_len() > 0 {
            l.step_done(l.draft_len(), 0, 1, 3.0);
            slow += 1;
            assert!(slow < 10);
        }
        assert_eq!(plain_until_probe(&mut l), BACKOFF_MIN);
        assert_eq!(l.draft_len(), 1);
    }
}
