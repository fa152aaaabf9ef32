//! How many tokens to draft next: the lookahead K adapts to the recent acceptance, and,
//! when allowed (`draft_min == 0`), speculation switches itself off while it is slower
//! per token than plain decoding.
//!
//! - K starts at `min(4, draft_max)`. After a verification that accepted the whole draft K
//!   grows by 2, after one that rejected a token it shrinks by 1, always within
//!   `[max(draft_min, 1), draft_max]`. (`--draft-p-min` separately cuts a draft short
//!   where the drafter is unsure.)
//! - With `draft_min == 0`, the first `CALIBRATE` tokens are plain steps, timing the
//!   model alone. Then each window of `PROBE` speculative steps is compared with it, by
//!   moving averages of seconds per produced token; if speculation was slower, the next
//!   `backoff` tokens are plain steps (32, doubling after each failed window up to 1024,
//!   reset by a window that pays). Draft choices then depend on timings, so a seed repeats
//!   the sampled text only with `draft_min >= 1`, which turns this off.

/// Plain steps timed before the first draft.
const CALIBRATE: usize = 3;
/// Speculative steps between two comparisons with plain decoding.
const PROBE: usize = 4;
const BACKOFF_MIN: usize = 32;
const BACKOFF_MAX: usize = 1024;

/// An exponential moving average of seconds per token.
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
    plain: Ema,
    plain_samples: usize,
    spec: Ema,
    window: usize,
    off_left: usize,
    backoff: usize,
}

impl Lookahead {
    pub fn new(draft_min: usize, draft_max: usize) -> Lookahead {
        let min = draft_min.min(draft_max);
        Lookahead {
            min,
            max: draft_max,
            k: 4.clamp(min.max(1), draft_max.max(1)).min(draft_max),
            plain: Ema::default(),
            plain_samples: 0,
            spec: Ema::default(),
            window: 0,
            off_left: 0,
            backoff: BACKOFF_MIN,
        }
    }

    fn may_switch_off(&self) -> bool {
        self.min == 0
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
        self.plain.add(secs);
        self.plain_samples += 1;
        self.off_left = self.off_left.saturating_sub(1);
    }

    /// A speculative step drafted `drafted` tokens, kept `accepted` of them, and produced
    /// `produced` tokens in `secs`, drafting included.
    pub fn step_done(&mut self, drafted: usize, accepted: usize, produced: usize, secs: f64) {
        if drafted > 0 {
            let floor = self.min.max(1);
            self.k = if accepted == drafted {
                self.k + 2
            } else {
                self.k.saturating_sub(1)
            }
            .clamp(floor.min(self.max), self.max);
        }
        if !self.may_switch_off() {
            return;
        }
        self.spec.add(secs / produced.max(1) as f64);
        self.window += 1;
        if self.window < PROBE {
            return;
        }
        self.window = 0;
        let (Some(spec), Some(plain)) = (self.spec.value, self.plain.value) else {
            return;
        };
        if spec > plain {
            self.off_left = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            self.spec = Ema::default();
        } else {
            self.backoff = BACKOFF_MIN;
        }
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
    fn fixed_lookahead_when_min_equals_max() {
        let mut l = Lookahead::new(3, 3);
        for accepted in [0, 3, 1, 3, 3] {
            assert_eq!(l.draft_len(), 3);
            l.step_done(3, accepted, accepted + 1, 1.0);
        }
    }

    #[test]
    fn switches_off_while_slower_than_plain() {
        let mut l = Lookahead::new(0, 4);
        for _ in 0..CALIBRATE {
            assert_eq!(l.draft_len(), 0);
            l.plain_done(1.0);
        }
        assert!(l.draft_len() > 0);
        // Two tokens in 3 s: 1.5 s a token, slower than plain's 1 s.
        for _ in 0..PROBE {
            l.step_done(2, 1, 2, 3.0);
        }
        assert_eq!(l.draft_len(), 0);
        for _ in 0..BACKOFF_MIN {
            assert_eq!(l.draft_len(), 0);
            l.plain_done(1.0);
        }
        // Probing again; this time it pays, and stays on.
        for _ in 0..3 * PROBE {
            assert!(l.draft_len() > 0);
            l.step_done(4, 4, 5, 2.0);
        }
        assert!(l.draft_len() > 0);
    }
}
