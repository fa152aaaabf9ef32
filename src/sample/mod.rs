//! Picks the next token from a position's logits, with llama.cpp's sampling flags and
//! their meaning, applied in the order of llama.cpp's default sampler chain:
//!
//! repeat penalty → top-k → top-p → min-p → temperature → softmax → seeded draw.
//!
//! A temperature of zero or below means greedy decoding: the argmax after the repeat
//! penalty. The filters before the temperature see the raw (penalized) logits, exactly as
//! in llama.cpp, so `--top-p` and `--min-p` cut the same tokens whatever `--temp` is.

pub mod chi2;

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sampling settings, named and defaulted as llama.cpp's command-line flags.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// `--temp`: logits are divided by it; `<= 0` is greedy.
    pub temp: f32,
    /// `--top-k`: keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// `--top-p`: keep the most likely tokens whose probabilities sum to at least p; 1 keeps all.
    pub top_p: f32,
    /// `--min-p`: drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// `--repeat-penalty`: 1 is off.
    pub repeat_penalty: f32,
    /// `--repeat-last-n`: how many of the latest tokens the penalty looks at; 0 is off.
    pub repeat_last_n: usize,
    /// `--seed`.
    pub seed: u64,
}

impl SamplerParams {
    /// Whether the repeat penalty changes anything (it needs the history, which a device
    /// sampler does not have).
    pub fn penalizes(&self) -> bool {
        self.repeat_penalty != 1.0 && self.repeat_last_n > 0
    }
}

impl Default for SamplerParams {
    /// llama.cpp's defaults, with a fresh random seed (llama.cpp's default seed also means
    /// "random").
    fn default() -> Self {
        SamplerParams {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: random_seed(),
        }
    }
}

/// A seed from the clock mixed with the per-process random keys of std's `RandomState`,
/// which come from the OS; good enough to make runs differ, and needs no dependency.
fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.finish()
}

/// xoshiro256**: small, fast, and plenty for sampling (not for cryptography).
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        // SplitMix64 spreads any seed, zero included, over the state; xoshiro's state
        // must not be all zeros, and SplitMix64 never yields four zeros in a row.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One candidate token and its (penalized, later filtered) logit.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Orders candidates most likely first; equal logits by lower id first, so that the
/// result never depends on the unstable sort's whims.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// A token distribution after the sampler's transformations: the surviving tokens and
/// their probabilities, most likely first. Reused across calls, so it allocates only while
/// it grows to the largest support seen.
#[derive(Clone, Debug, Default)]
pub struct Probs {
    items: Vec<(u32, f32)>,
}

impl Probs {
    pub fn new() -> Probs {
        Probs::default()
    }

    /// (token, probability) pairs, most likely first; the probabilities sum to 1.
    pub fn items(&self) -> &[(u32, f32)] {
        &self.items
    }

    /// The most likely token and its probability.
    pub fn top(&self) -> (u32, f32) {
        self.items.first().copied().unwrap_or((0, 0.0))
    }

    /// The probability of `id` (0 outside the support). Linear in the support, which the
    /// filters keep small; callers that need many lookups spread it over a dense table.
    pub fn get(&self, id: u32) -> f32 {
        self.items
            .iter()
            .find(|&&(t, _)| t == id)
            .map_or(0.0, |&(_, p)| p)
    }

    /// Replaces the contents with `items`, normalized and sorted most likely first; zero
    /// weights are dropped. An all-zero input leaves it empty.
    pub fn set_weights(&mut self, items: impl Iterator<Item = (u32, f32)>) {
        self.items.clear();
        self.items.extend(items.filter(|&(_, w)| w > 0.0));
        let total: f64 = self.items.iter().map(|&(_, w)| w as f64).sum();
        for (_, w) in &mut self.items {
            *w = (*w as f64 / total) as f32;
        }
        self.items
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    }

    /// The distribution that puts all mass on `id`.
    pub fn set_one_hot(&mut self, id: u32) {
        self.items.clear();
        self.items.push((id, 1.0));
    }
}

pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    /// Reused for every token, so that sampling does not allocate.
    candidates: Vec<Candidate>,
    /// Marks tokens already penalized in this step: llama.cpp penalizes a token once,
    /// however often it occurs in the window. Always all false between calls.
    penalized: Vec<bool>,
}

impl Sampler {
    pub fn new(params: SamplerParams, vocab_size: usize) -> Sampler {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            candidates: Vec::with_capacity(vocab_size),
            penalized: vec![false; vocab_size],
        }
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Where the random stream stands (xoshiro256**'s state), for a device that continues
    /// it in the sampler's place.
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.s
    }

    /// Picks a token from the logits of one position. `history` is every token so far
    /// (prompt and generated); the repeat penalty looks at its last `repeat_last_n`.
    ///
    /// Panics if `logits` is empty: a model always has a vocabulary.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        match self.filter(logits, history) {
            Some(greedy) => greedy,
            None => self.draw(),
        }
    }

    /// Loads the candidates and applies the repeat penalty, then, unless greedy, top-k,
    /// top-p and min-p. Returns the argmax when greedy (temperature <= 0).
    fn filter(&mut self, logits: &[f32], history: &[u32]) -> Option<u32> {
        assert!(!logits.is_empty(), "sample: no logits");
        self.candidates.clear();
        // A NaN logit (from a broken model or kernel) must not win every comparison, so it
        // counts as impossible.
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
                id: i as u32,
                logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
            }));
        self.apply_repeat_penalty(history);
        if self.params.temp <= 0.0 {
            return Some(self.argmax());
        }
        self.apply_top_k();
        self.apply_top_p();
        self.apply_min_p();
        None
    }

    /// The distribution `sample` draws from, for speculative sampling, which needs the
    /// probabilities themselves: the same repeat penalty, filters and temperature. Greedy
    /// (temperature <= 0) gives all the mass to the argmax.
    pub fn probs(&mut self, logits: &[f32], history: &[u32], out: &mut Probs) {
        if let Some(greedy) = self.filter(logits, history) {
            out.set_one_hot(greedy);
            return;
        }
        let max = self.candidates[0].logit;
        if max == f32::NEG_INFINITY {
            out.set_one_hot(self.candidates[0].id);
            return;
        }
        let inv_t = 1.0 / self.params.temp as f64;
        out.items.clear();
        let mut total = 0.0f64;
        for c in &self.candidates {
            let w = ((c.logit - max) as f64 * inv_t).exp();
            total += w;
            out.items.push((c.id, w as f32));
        }
        // Candidates are sorted best first, so `out` already is.
        for (_, w) in &mut out.items {
            *w = (*w as f64 / total) as f32;
        }
    }

    /// One draw from `p` (greedy picks its top token).
    pub fn draw_from(&mut self, p: &Probs) -> u32 {
        if self.params.temp <= 0.0 {
            return p.top().0;
        }
        let mut r = self.rng.next_f64();
        for &(id, w) in &p.items {
            r -= w as f64;
            if r < 0.0 {
                return id;
            }
        }
        // Rounding can leave a sliver past the last probability.
        p.items.last().map_or(0, |&(id, _)| id)
    }

    /// Uniform in [0, 1), from the same seeded stream as the draws.
    pub fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Positive logits are divided by the penalty and the others multiplied, so either way
    /// the token becomes less likely (for a penalty above 1).
    fn apply_repeat_penalty(&mut self, history: &[u32]) {
        let penalty = self.params.repeat_penalty;
        if penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        // Only if the caller passes more logits than the vocabulary size it promised; a
        // one-time growth, after which sampling is allocation-free again.
        let n = self.candidates.len();
        if self.penalized.len() < n {
            self.penalized.resize(n, false);
        }
        // Candidates are still in id order here, so a token's index is its id.
        for &t in window {
            let i = t as usize;
            if i >= n || self.penalized[i] {
                continue;
            }
            self.penalized[i] = true;
            let l = &mut self.candidates[i].logit;
            *l = if *l <= 0.0 {
                *l * penalty
            } else {
                *l / penalty
            };
        }
        for &t in window {
            if let Some(p) = self.penalized.get_mut(t as usize) {
                *p = false;
            }
        }
    }

    fn argmax(&self) -> u32 {
        // `min_by` with the descending order keeps the first of equals: the lowest id.
        self.candidates
            .iter()
            .min_by(|a, b| by_logit_desc(a, b))
            .map_or(0, |c| c.id)
    }

    /// Keeps the k best and leaves the candidates sorted best first, which top-p needs.
    fn apply_top_k(&mut self) {
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            // Partition first: sorting only the k survivors is much cheaper than sorting
            // the whole vocabulary.
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
    }

    /// Keeps the shortest best-first prefix whose probability reaches `top_p` (at least one).
    fn apply_top_p(&mut self) {
        let p = self.params.top_p;
        if p >= 1.0 {
            return;
        }
        let max = self.candidates[0].logit;
        let total: f64 = self
            .candidates
            .iter()
            .map(|c| ((c.logit - max) as f64).exp())
            .sum();
        let mut cum = 0.0;
        for (i, c) in self.candidates.iter().enumerate() {
            cum += ((c.logit - max) as f64).exp() / total;
            if cum >= p as f64 {
                self.candidates.truncate(i + 1);
                return;
            }
        }
    }

    /// Drops tokens whose probability is below `min_p` times the best one's; in logits,
    /// those below `max + ln(min_p)`. Candidates are sorted, so that is a suffix.
    fn apply_min_p(&mut self) {
        let min_p = self.params.min_p;
        if min_p <= 0.0 {
            return;
        }
        let cut = self.candidates[0].logit + min_p.ln();
        let keep = self
            .candidates
            .iter()
            .position(|c| c.logit < cut)
            .unwrap_or(self.candidates.len())
            .max(1);
        self.candidates.truncate(keep);
    }

    /// Softmax at the temperature, then one draw. Candidates are sorted best first.
    fn draw(&mut self) -> u32 {
        let max = self.candidates[0].logit;
        if max == f32::NEG_INFINITY {
            // Every token is impossible; there is nothing to weigh, so be greedy.
            return self.candidates[0].id;
        }
        let inv_t = 1.0 / self.params.temp as f64;
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            // Reuse the logit slot for the unnormalized weight.
            let w = ((c.logit - max) as f64 * inv_t).exp();
            c.logit = w as f32;
            total += w;
        }
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= c.logit as f64;
            if r < 0.0 {
                return c.id;
            }
        }
        // Rounding can leave a sliver past the last weight; it belongs to the last token
        // with any weight.
        self.candidates
            .iter()
            .rev()
            .find(|c| c.logit > 0.0)
            .map_or(self.candidates[0].id, |c| c.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temp: f32) -> SamplerParams {
        SamplerParams {
            temp,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }

    const LOGITS: [f32; 8] = [0.5, 2.0, -1.0, 3.5, 3.0, 0.0, -4.0, 1.0];

    #[test]
    fn greedy_picks_argmax() {
        for temp in [0.0, -1.0] {
            let mut s = Sampler::new(params(temp), LOGITS.len());
            for _ in 0..10 {
                assert_eq!(s.sample(&LOGITS, &[]), 3);
            }
        }
    }

    #[test]
    fn greedy_ties_go_to_lowest_id() {
        let mut s = Sampler::new(params(0.0), 4);
        assert_eq!(s.sample(&[1.0, 5.0, 2.0, 5.0], &[]), 1);
        assert_eq!(s.sample(&[7.0, 7.0, 7.0, 7.0], &[]), 0);
    }

    #[test]
    fn top_k_1_is_greedy_at_any_temperature() {
        for temp in [0.1, 1.0, 5.0, 100.0] {
            let p = SamplerParams {
                top_k: 1,
                ..params(temp)
            };
            let mut s = Sampler::new(p, LOGITS.len());
            for _ in 0..200 {
                assert_eq!(s.sample(&LOGITS, &[]), 3, "temp {temp}");
            }
        }
    }

    fn softmax(l: &[f32]) -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = l.iter().map(|&x| ((x - m) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    fn counts(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits, &[]) as usize] += 1;
        }
        c
    }

    #[test]
    fn draws_follow_softmax_at_temperature_1() {
        let logits = [1.0, 2.0, 0.5, -0.5, 1.5];
        const N: usize = 20_000;
        let want = softmax(&logits);
        for seed in [1, 2, 3] {
            let mut s = Sampler::new(
                SamplerParams {
                    seed,
                    ..params(1.0)
                },
                5,
            );
            let got = counts(&mut s, &logits, N);
            let chi2: f64 = got
                .iter()
                .zip(&want)
                .map(|(&o, &p)| {
                    let e = p * N as f64;
                    (o as f64 - e).powi(2) / e
                })
                .sum();
            // 4 degrees of freedom: P(chi2 > 18.47) = 0.001.
            assert!(chi2 < 18.47, "seed {seed}: chi2 {chi2}, counts {got:?}");
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [1.0, 2.0, 0.0];
        let mut cold = Sampler::new(params(0.25), 3);
        let mut hot = Sampler::new(params(4.0), 3);
        let c = counts(&mut cold, &logits, 5000);
        let h = counts(&mut hot, &logits, 5000);
        assert!(c[1] > 4500, "{c:?}");
        assert!(h[1] < 2500 && h[2] > 1000, "{h:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03 (ids 0..4).
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = softmax(&logits);
        // p just above the first: the first two survive, never the others.
        let mut s = Sampler::new(
            SamplerParams {
                top_p: (p[0] + 0.01) as f32,
                ..params(1.0)
            },
            4,
        );
        let c = counts(&mut s, &logits, 5000);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!(c[0] > 0 && c[1] > 0, "{c:?}");
        // p below the first: only the best.
        let mut s = Sampler::new(
            SamplerParams {
                top_p: 0.5,
                ..params(1.0)
            },
            4,
        );
        assert_eq!(counts(&mut s, &logits, 1000)[0], 1000);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Relative to the best: ids 1, 2, 3 have e^-1 = 0.37, e^-2 = 0.14, e^-3 = 0.05.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(
            SamplerParams {
                min_p: 0.2,
                ..params(1.0)
            },
            4,
        );
        let c = counts(&mut s, &logits, 5000);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!(c[1] > 0, "{c:?}");
    }

    #[test]
    fn filters_use_logits_before_temperature() {
        // At a high temperature the tail would be likely, but top-k has already cut it.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(
            SamplerParams {
                top_k: 2,
                ..params(50.0)
            },
            4,
        );
        let c = counts(&mut s, &logits, 2000);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
    }

    #[test]
    fn repeat_penalty_demotes_repeated_tokens() {
        let p = SamplerParams {
            repeat_penalty: 2.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(p.clone(), 3);
        // 4.0 / 2 = 2.0 < 3.0: the repeated best token loses.
        assert_eq!(s.sample(&[4.0, 3.0, 0.0], &[0]), 1);
        // Negative logits are multiplied: -1 * 2 = -2 < -1.5.
        assert_eq!(s.sample(&[-1.0, -1.5, -9.0], &[0]), 1);
        // Penalized once however often it repeats: 4 / 2 = 2 > 1.9 still wins.
        assert_eq!(s.sample(&[4.0, 1.9, 0.0], &[0, 0, 0, 0]), 0);
        // Only the last `repeat_last_n` tokens count.
        let mut s = Sampler::new(
            SamplerParams {
                repeat_last_n: 2,
                ..p.clone()
            },
            3,
        );
        assert_eq!(s.sample(&[4.0, 3.0, 0.0], &[0, 2, 2]), 0);
        assert_eq!(s.sample(&[4.0, 3.0, 0.0], &[2, 0, 2]), 1);
        // Out-of-vocabulary ids in the history are ignored.
        assert_eq!(s.sample(&[4.0, 3.0, 0.0], &[u32::MAX, 7]), 0);
        // More logits than the vocabulary size given to `new`: still penalized.
        let mut s = Sampler::new(p.clone(), 1);
        assert_eq!(s.sample(&[0.0, 3.0, 2.0], &[1]), 2);
        // A penalty of 1 or a window of 0 is off.
        let mut s = Sampler::new(
            SamplerParams {
                repeat_last_n: 0,
                ..p
            },
            3,
        );
        assert_eq!(s.sample(&[4.0, 3.0, 0.0], &[0]), 0);
    }

    #[test]
    fn same_seed_same_sequence() {
        let p = SamplerParams {
            top_k: 0,
            ..SamplerParams {
                seed: 7,
                ..SamplerParams::default()
            }
        };
        let run = |p: &SamplerParams| {
            let mut s = Sampler::new(p.clone(), LOGITS.len());
            (0..100).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        assert_ne!(a, run(&SamplerParams { seed: 8, ..p }));
    }

    #[test]
    fn defaults_match_llama_cpp() {
        let d = SamplerParams::default();
        assert_eq!((d.temp, d.top_k, d.top_p, d.min_p), (0.8, 40, 0.95, 0.05));
        assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
    }

    #[test]
    fn probs_match_the_draws_of_sample() {
        let p = SamplerParams {
            top_k: 5,
            top_p: 0.9,
            min_p: 0.02,
            repeat_penalty: 1.3,
            ..params(0.7)
        };
        let history = [3, 4];
        let mut s = Sampler::new(p.clone(), LOGITS.len());
        let mut probs = Probs::new();
        s.probs(&LOGITS, &history, &mut probs);
        let sum: f32 = probs.items().iter().map(|x| x.1).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{probs:?}");
        const N: usize = 20_000;
        let mut got = vec![0usize; LOGITS.len()];
        for _ in 0..N {
            got[s.sample(&LOGITS, &history) as usize] += 1;
        }
        for (id, &c) in got.iter().enumerate() {
            let want = probs.get(id as u32) as f64 * N as f64;
            if want == 0.0 {
                assert_eq!(c, 0, "token {id} is outside the support: {probs:?}");
            } else {
                assert!(
                    (c as f64 - want).abs() < 5.0 * want.sqrt() + 5.0,
                    "{id}: {c} vs {want}"
                );
            }
        }
        // Greedy: all the mass on the penalized argmax.
        let mut g = Sampler::new(SamplerParams { temp: 0.0, ..p }, LOGITS.len());
        g.probs(&LOGITS, &[3], &mut probs);
        assert_eq!(probs.items(), &[(4, 1.0)]);
    }

    #[test]
    fn draw_from_follows_the_probabilities() {
        let mut probs = Probs::new();
        probs.set_weights([(7, 1.0), (2, 3.0), (5, 0.0)].into_iter());
        assert_eq!(probs.items(), &[(2, 0.75), (7, 0.25)]);
        let mut s = Sampler::new(params(1.0), 8);
        let n = 8000;
        let twos = (0..n).filter(|_| s.draw_from(&probs) == 2).count();
        assert!((twos as f64 / n as f64 - 0.75).abs() < 0.02, "{twos}");
    }

    #[test]
    fn odd_logits_do_not_break_sampling() {
        let mut s = Sampler::new(params(1.0), 3);
        let inf = f32::NEG_INFINITY;
        assert_eq!(s.sample(&[inf, inf, inf], &[]), 0);
        assert_eq!(s.sample(&[f32::NAN, inf, 1.0], &[]), 2);
        assert_eq!(s.sample(&[1.0], &[]), 0);
    }

    #[test]
    fn sampling_does_not_grow_buffers() {
        let mut s = Sampler::new(
            SamplerParams {
                top_k: 0,
                ..params(1.0)
            },
            LOGITS.len(),
        );
        let cap = s.candidates.capacity();
        let ptr = s.candidates.as_ptr();
        for _ in 0..100 {
            s.sample(&LOGITS, &[1, 2, 3]);
        }
        assert_eq!((s.candidates.capacity(), s.candidates.as_ptr()), (cap, ptr));
    }
}
