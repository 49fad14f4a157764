//! Uplift: did reacting to members make them buy more than the members a rule held out?
//!
//! In: per group (treated = the rule reacted, control = held out) the eligible occasions, how
//! many were followed by a purchase within the report's window, and the revenue of those
//! purchases. Out: both conversion rates, their difference (the uplift) with a 95 % confidence
//! interval, and revenue per occasion.
//!
//! The interval is Newcombe's hybrid score interval for a difference of independent proportions
//! (Newcombe 1998, method 10), built from each group's Wilson score interval. Unlike the Wald
//! interval (p₁−p₂ ± 1.96·√…) it stays inside [−1, 1] and keeps close to its nominal coverage
//! with the small control groups a store-level report has, and it is defined when a group
//! converted none or all of its occasions.

use serde::Serialize;

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// One group's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounts {
    /// Eligible occasions (a rule matched a member who was not cooling down).
    pub occasions: u64,
    /// Occasions followed by a purchase within the window.
    pub converted: u64,
    /// Revenue of those purchases, in cents.
    pub revenue_cents: i64,
}

impl GroupCounts {
    pub fn rate(&self) -> Option<f64> {
        (self.occasions > 0)
            .then(|| self.converted.min(self.occasions) as f64 / self.occasions as f64)
    }

    pub fn revenue_per_occasion_cents(&self) -> Option<f64> {
        (self.occasions > 0).then(|| self.revenue_cents as f64 / self.occasions as f64)
    }
}

/// The comparison of a treated and a control group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Uplift {
    pub rate_treated: f64,
    pub rate_control: f64,
    /// `rate_treated − rate_control`.
    pub uplift: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Revenue per occasion, treated minus control, in cents.
    pub revenue_uplift_cents: f64,
}

/// Wilson's score interval for `x` successes in `n` trials (n > 0).
pub fn wilson(x: u64, n: u64) -> (f64, f64) {
    let (n, p) = (n as f64, x.min(n) as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = p + z2 / (2.0 * n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - half) / denom).max(0.0),
        ((centre + half) / denom).min(1.0),
    )
}

/// The uplift of `treated` over `control`; `None` while either group has no occasion.
pub fn uplift(treated: GroupCounts, control: GroupCounts) -> Option<Uplift> {
    let (p1, p2) = (treated.rate()?, control.rate()?);
    let (l1, u1) = wilson(treated.converted, treated.occasions);
    let (l2, u2) = wilson(control.converted, control.occasions);
    let d = p1 - p2;
    Some(Uplift {
        rate_treated: p1,
        rate_control: p2,
        uplift: d,
        ci_low: d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        ci_high: d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
        revenue_uplift_cents: treated.revenue_per_occasion_cents()?
            - control.revenue_per_occasion_cents()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(occasions: u64, converted: u64) -> GroupCounts {
        GroupCounts {
            occasions,
            converted,
            revenue_cents: 0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-5
    }

    /// Newcombe (1998), "Interval estimation for the difference between independent
    /// proportions", Table II, method 10: (a) 56/70 − 48/80: 0.0524 to 0.3339; (b) 9/10 − 3/10:
    /// 0.1705 to 0.8090; (e), with zeros, 0/10 − 0/20: −0.1611 to 0.2775 (whose upper end is
    /// Wilson's upper limit for 0/10).
    #[test]
    fn the_interval_matches_newcombes_published_examples() {
        let u = uplift(g(70, 56), g(80, 48)).unwrap();
        assert!(close(u.uplift, 0.2), "{u:?}");
        assert!(close(u.ci_low, 0.0524) && close(u.ci_high, 0.3339), "{u:?}");
        let u = uplift(g(10, 9), g(10, 3)).unwrap();
        assert!(close(u.ci_low, 0.1705) && close(u.ci_high, 0.8090), "{u:?}");
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && close(hi, 0.2775), "{lo} {hi}");
        let u = uplift(g(10, 0), g(20, 0)).unwrap();
        assert!(
            close(u.ci_low, -0.1611) && close(u.ci_high, 0.2775),
            "{u:?}"
        );
    }

    /// A synthetic chain with a known effect: treated members buy with p = 0.30, held-out ones
    /// with p = 0.20 (true uplift 0.10). Over 2,000 seeded replications of 400 treated and 100
    /// held-out occasions (a store-sized control group), the interval covers the true uplift in
    /// about 95 % of them; on one large data set it excludes 0 and brackets 0.10.
    #[test]
    fn on_a_synthetic_data_set_the_interval_covers_the_known_effect() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = move || {
            // xorshift64*: enough for a fixed, reproducible sample.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut draw = |n: u64, p: f64| (0..n).filter(|_| uniform() < p).count() as u64;
        let reps = 2_000;
        let mut covered = 0;
        for _ in 0..reps {
            let u = uplift(g(400, draw(400, 0.30)), g(100, draw(100, 0.20))).unwrap();
            if u.ci_low <= 0.10 && 0.10 <= u.ci_high {
                covered += 1;
            }
        }
        let coverage = f64::from(covered) / f64::from(reps);
        // 2,000 replications: a 95 % procedure lands within ±1.5 points with high probability.
        assert!((0.935..=0.965).contains(&coverage), "coverage {coverage}");
        let u = uplift(g(50_000, draw(50_000, 0.30)), g(10_000, draw(10_000, 0.20))).unwrap();
        assert!(
            u.ci_low > 0.0 && u.ci_low < 0.10 && 0.10 < u.ci_high,
            "{u:?}"
        );
        assert!((u.uplift - 0.10).abs() < 0.02, "{u:?}");
    }

    #[test]
    fn revenue_per_occasion_and_empty_groups() {
        let t = GroupCounts {
            occasions: 4,
            converted: 2,
            revenue_cents: 10_000,
        };
        let c = GroupCounts {
            occasions: 2,
            converted: 1,
            revenue_cents: 1_000,
        };
        let u = uplift(t, c).unwrap();
        assert_eq!(u.revenue_uplift_cents, 2_500.0 - 500.0);
        assert!(uplift(t, GroupCounts::default()).is_none());
        assert!(uplift(GroupCounts::default(), c).is_none());
        // More conversions than occasions (bad input) is read as all of them, never above 1.
        assert_eq!(g(3, 9).rate(), Some(1.0));
    }
}
