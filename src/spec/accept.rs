//! The acceptance rule of speculative sampling (Leviathan et al. 2023; Chen et al. 2023):
//! a drafted token `x ~ q` is kept with probability `min(1, p(x) / q(x))`; otherwise the
//! token is drawn from `normalize(max(0, p - q))`. Either way the token follows `p`
//! exactly. With one-hot `p` and `q` (greedy) it keeps `x` iff it is the target's argmax,
//! and otherwise replaces it with that argmax.

use crate::backend::{DraftCut, Verdict};
use crate::sample::{Probs, Sampler, SamplerParams};

/// Scratch for `judge`, allocated once for a vocabulary.
pub struct Judge {
    /// `q` spread over the vocabulary while a residual is built; zero between calls.
    dense: Vec<f32>,
    residual: Probs,
}

impl Judge {
    pub fn new(vocab: usize) -> Judge {
        Judge {
            dense: vec![0.0; vocab],
            residual: Probs::new(),
        }
    }

    /// `None` keeps the drafted token `x` (drawn from `q`); `Some(t)` rejects it for `t`.
    /// Randomness comes from `rng`, the target's sampler.
    pub fn judge(&mut self, p: &Probs, q: &Probs, x: u32, rng: &mut Sampler) -> Option<u32> {
        let (px, qx) = (p.get(x) as f64, q.get(x) as f64);
        if px >= qx {
            return None;
        }
        // `u < px / qx`, without dividing by a tiny q.
        if rng.uniform() * qx < px {
            return None;
        }
        for &(id, w) in q.items() {
            if let Some(d) = self.dense.get_mut(id as usize) {
                *d = w;
            }
        }
        let dense = &self.dense;
        self.residual.set_weights(p.items().iter().map(|&(id, w)| {
            let qw = dense.get(id as usize).copied().unwrap_or(0.0);
            (id, (w - qw).max(0.0))
        }));
        for &(id, _) in q.items() {
            if let Some(d) = self.dense.get_mut(id as usize) {
                *d = 0.0;
            }
        }
        // Empty only when rounding made p <= q everywhere, which the test above all but
        // rules out; p itself is then the right law.
        let t = if self.residual.items().is_empty() {
            rng.draw_from(p)
        } else {
            rng.draw_from(&self.residual)
        };
        Some(t)
    }
}

/// What [`crate::backend::DeviceSpec::judge`] decides, computed on the host by the
/// speculator's greedy rule: proposals are judged up to where `cut` ends the draft (the
/// first `i >= cut.min` with `top[i] < cut.p_min`), each kept while it is the target's
/// greedy pick from its row of `rows` (`proposals.len() + 1` rows of `vocab`), then the
/// target's pick after the kept ones. The reference the device's kernels are tested against.
pub fn judge_greedy(
    rows: &[f32],
    vocab: usize,
    proposals: &[u32],
    top: &[f32],
    cut: DraftCut,
) -> Verdict {
    let n = proposals.len();
    let valid = (cut.min..n).find(|&i| top[i] < cut.p_min).unwrap_or(n);
    let params = SamplerParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        ..SamplerParams::default()
    };
    let mut sampler = Sampler::new(params, vocab);
    let mut judge = Judge::new(vocab);
    let (mut p, mut q) = (Probs::new(), Probs::new());
    let mut accepted = 0;
    let next = loop {
        let row = &rows[accepted * vocab..(accepted + 1) * vocab];
        sampler.probs(row, &[], &mut p);
        if accepted == valid {
            break sampler.draw_from(&p);
        }
        let x = proposals[accepted];
        q.set_one_hot(x);
        match judge.judge(&p, &q, x, &mut sampler) {
            None => accepted += 1,
            Some(t) => break t,
        }
    };
    Verdict {
        valid,
        accepted,
        next,
        proposals: proposals.to_vec(),
    }
}

/// What [`crate::backend::DeviceSpec::judge_sampled`] decides, computed on the host by the
/// speculator's rule: proposals are judged up to where `cut` ends the draft (as in
/// [`judge_greedy`]), each kept or replaced by [`Judge::judge`] against the model's
/// distribution `p[i]` and the draft's `q[i]` (`None`: one-hot at the proposal), and a draft
/// kept whole is followed by a draw from `p[valid]`; random numbers come from `rng`. The
/// reference the device's acceptance kernel is tested against on the same numbers.
pub fn judge_sampled(
    p: &[Probs],
    q: Option<&[Probs]>,
    proposals: &[u32],
    top: &[f32],
    cut: DraftCut,
    rng: &mut Sampler,
) -> Verdict {
    let n = proposals.len();
    let valid = (cut.min..n).find(|&i| top[i] < cut.p_min).unwrap_or(n);
    let vocab = p
        .iter()
        .chain(q.unwrap_or_default())
        .flat_map(|r| r.items())
        .map(|&(id, _)| id as usize + 1)
        .chain(proposals.iter().map(|&x| x as usize + 1))
        .max()
        .unwrap_or(0);
    let mut judge = Judge::new(vocab);
    let mut one_hot = Probs::new();
    let mut accepted = 0;
    let next = loop {
        if accepted == valid {
            break rng.draw_from(&p[accepted]);
        }
        let x = proposals[accepted];
        let qi = match q {
            Some(q) => &q[accepted],
            None => {
                one_hot.set_one_hot(x);
                &one_hot
            }
        };
        match judge.judge(&p[accepted], qi, x, rng) {
            None => accepted += 1,
            Some(t) => break t,
        }
    };
    Verdict {
        valid,
        accepted,
        next,
        proposals: proposals.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SamplerParams;

    fn probs(w: &[f32]) -> Probs {
        let mut p = Probs::new();
        p.set_weights(w.iter().enumerate().map(|(i, &w)| (i as u32, w)));
        p
    }

    /// Draft from q, judge against p, many times: the kept tokens must follow p.
    #[test]
    fn kept_tokens_follow_the_target() {
        let p = probs(&[0.5, 0.3, 0.15, 0.05, 0.0]);
        let q = probs(&[0.1, 0.1, 0.2, 0.3, 0.3]);
        let params = SamplerParams {
            temp: 1.0,
            seed: 11,
            ..SamplerParams::default()
        };
        let mut rng = Sampler::new(params.clone(), 5);
        let mut drafter = Sampler::new(SamplerParams { seed: 12, ..params }, 5);
        let mut judge = Judge::new(5);
        const N: usize = 40_000;
        let mut counts = [0usize; 5];
        let mut kept = 0;
        for _ in 0..N {
            let x = drafter.draw_from(&q);
            let t = match judge.judge(&p, &q, x, &mut rng) {
                None => {
                    kept += 1;
                    x
                }
                Some(t) => t,
            };
            counts[t as usize] += 1;
        }
        assert_eq!(counts[4], 0, "{counts:?}");
        let chi2: f64 = (0..4)
            .map(|i| {
                let e = p.get(i) as f64 * N as f64;
                (counts[i as usize] as f64 - e).powi(2) / e
            })
            .sum();
        // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
        assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
        // Acceptance is sum(min(p, q)) = 0.1 + 0.1 + 0.15 + 0.05 = 0.4.
        let rate = kept as f64 / N as f64;
        assert!((rate - 0.4).abs() < 0.015, "acceptance {rate}");
        assert!(judge.dense.iter().all(|&d| d == 0.0));
    }

    #[test]
    fn judge_greedy_keeps_the_agreeing_prefix_up_to_the_cut() {
        // Three rows of 4: picks 2, 1 (a tie with 3, the lower id wins), 0.
        let rows = [
            0.0, 1.0, 5.0, 2.0, //
            0.0, 4.0, 1.0, 4.0, //
            9.0, 1.0, 1.0, 1.0,
        ];
        let sure = DraftCut { min: 0, p_min: 0.0 };
        let v = judge_greedy(&rows, 4, &[2, 1], &[1.0, 1.0], sure);
        assert_eq!((v.valid, v.accepted, v.next), (2, 2, 0));
        let v = judge_greedy(&rows, 4, &[2, 3], &[1.0, 1.0], sure);
        assert_eq!((v.valid, v.accepted, v.next), (2, 1, 1));
        let v = judge_greedy(&rows, 4, &[0, 1], &[1.0, 1.0], sure);
        assert_eq!((v.valid, v.accepted, v.next), (2, 0, 2));
        // The second proposal is unsure: only the first is judged.
        let cut = DraftCut { min: 1, p_min: 0.5 };
        let v = judge_greedy(&rows, 4, &[2, 1], &[0.1, 0.4], cut);
        assert_eq!((v.valid, v.accepted, v.next), (1, 1, 1));
        // Below draft_min nothing is cut.
        let v = judge_greedy(&rows, 4, &[2, 1], &[0.1, 0.9], cut);
        assert_eq!((v.valid, v.accepted, v.next), (2, 2, 0));
    }

    /// The host reference of the device's acceptance kernel: a draft drawn from p itself is
    /// kept whole (p >= q everywhere) and followed by a draw from the next row; a draft
    /// outside p's support is replaced at once by a token of p; the cut is honoured.
    #[test]
    fn judge_sampled_keeps_what_p_allows() {
        let params = SamplerParams {
            temp: 1.0,
            seed: 3,
            ..SamplerParams::default()
        };
        let mut rng = Sampler::new(params, 4);
        let p = [
            probs(&[0.6, 0.4, 0.0, 0.0]),
            probs(&[0.0, 0.5, 0.5, 0.0]),
            probs(&[0.0, 0.0, 0.0, 1.0]),
        ];
        let sure = DraftCut { min: 0, p_min: 0.0 };
        let v = judge_sampled(&p, Some(&p[..2]), &[1, 2], &[1.0, 1.0], sure, &mut rng);
        assert_eq!((v.valid, v.accepted, v.next), (2, 2, 3));
        // Token 3 is impossible under p[0]; one-hot q: the residual is p[0] itself.
        for _ in 0..20 {
            let v = judge_sampled(&p, None, &[3, 2], &[1.0, 1.0], sure, &mut rng);
            assert_eq!((v.valid, v.accepted), (2, 0));
            assert!(v.next < 2, "{v:?}");
        }
        // The second proposal is unsure: only the first is judged, the bonus from p[1].
        let cut = DraftCut { min: 1, p_min: 0.5 };
        let v = judge_sampled(&p, Some(&p[..2]), &[0, 2], &[1.0, 0.2], cut, &mut rng);
        assert_eq!((v.valid, v.accepted), (1, 1));
        assert!(v.next == 1 || v.next == 2, "{v:?}");
    }

    #[test]
    fn greedy_keeps_only_the_argmax() {
        let mut rng = Sampler::new(
            SamplerParams {
                temp: 0.0,
                ..SamplerParams::default()
            },
            4,
        );
        let mut judge = Judge::new(4);
        let (mut p, mut q) = (Probs::new(), Probs::new());
        p.set_one_hot(2);
        q.set_one_hot(2);
        assert_eq!(judge.judge(&p, &q, 2, &mut rng), None);
        q.set_one_hot(1);
        assert_eq!(judge.judge(&p, &q, 1, &mut rng), Some(2));
    }
}
