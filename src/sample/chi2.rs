//! The chi-square distribution's tail, for tests of sampling: whether counts of drawn
//! tokens are plausible under the distribution they should follow.

/// P(X > x) for X chi-square with `df` degrees of freedom: the regularized upper incomplete
/// gamma function Q(df/2, x/2), by its series below a + 1 and its continued fraction above.
pub fn chi2_sf(x: f64, df: usize) -> f64 {
    let (a, x) = (df as f64 / 2.0, x / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let ln_pre = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        while term.abs() > sum.abs() * 1e-15 {
            n += 1.0;
            term *= x / n;
            sum += term;
        }
        1.0 - sum * ln_pre.exp()
    } else {
        // Lentz's method on the continued fraction of Q.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        ln_pre.exp() * h
    }
}

/// Pearson's test of `counts` (of each token) against the probabilities `p` (of each
/// token): cells expected at least 5 times count alone, the rest pooled into one. Returns
/// the statistic, the number of cells, and the p-value.
pub fn goodness_of_fit(counts: &[usize], p: &[f64]) -> (f64, usize, f64) {
    let n: usize = counts.iter().sum();
    let (mut chi2, mut cells) = (0.0, 0);
    let (mut rest_o, mut rest_e) = (0.0, 0.0);
    for (&o, &q) in counts.iter().zip(p) {
        let e = q * n as f64;
        if e >= 5.0 {
            chi2 += (o as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            rest_o += o as f64;
            rest_e += e;
        }
    }
    if rest_e > 0.0 {
        chi2 += (rest_o - rest_e).powi(2) / rest_e;
        cells += 1;
    }
    (chi2, cells, chi2_sf(chi2, cells.max(2) - 1))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let s = C[0] + (1..9).map(|i| C[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodness_of_fit_pools_rare_cells() {
        // Expected 50, 30, 15, 3, 2: the last two are pooled (expected 5, seen 5).
        let p = [0.5, 0.3, 0.15, 0.03, 0.02];
        let (chi2, cells, pv) = goodness_of_fit(&[50, 30, 15, 4, 1], &p);
        assert_eq!((chi2, cells), (0.0, 4));
        assert!((pv - 1.0).abs() < 1e-12);
        // A count far off: rejected.
        let (_, _, pv) = goodness_of_fit(&[80, 10, 5, 4, 1], &p);
        assert!(pv < 1e-6, "{pv}");
    }

    #[test]
    fn chi2_sf_matches_tables() {
        for (x, df, want) in [
            (3.841, 1, 0.05),
            (6.635, 1, 0.01),
            (18.307, 10, 0.05),
            (2.558, 10, 0.99),
            (124.342, 100, 0.05),
            (0.0, 3, 1.0),
        ] {
            let got = chi2_sf(x, df);
            assert!(
                (got - want).abs() < 2e-4,
                "chi2 {x} df {df}: {got} vs {want}"
            );
        }
    }
}
