//! When a member should be back, and how many days overdue they are.
//!
//! In: the member's activity days (purchases and store visits both count), today, the BG/NBD
//! model if one was fitted, and the config. Out: [`NextVisit`]. It must not guess: without
//! enough own history and without a model there is no expectation (none, 0 days overdue).
//!
//! # The rule
//! Let `last` be the last activity day and `Q(q)` a quantile (linear interpolation between order
//! statistics, numpy's default) of the member's waiting times:
//! - **personal** — with at least `min_intervals` gaps between consecutive activity days (only
//!   the latest `max_intervals` are used): the member's own gaps.
//! - **model** — otherwise, when a model is given: the BG/NBD waiting time from the last activity
//!   of a member who is still active, `Q(q) = (α + t_x)((1 − q)^(−1/(r + x)) − 1)` (posterior
//!   Gamma(r + x, α + t_x) for the rate, see [`BgNbdParams::next_activity_quantile`]). It uses
//!   the history up to `last` only, so the expectation does not drift while the member is away,
//!   and the same two quantiles mean the same thing for both methods.
//!
//! Then `expected = last + max(1, round(Q(expected_quantile)))` and the member is overdue from
//! `due = last + max(1, ceil(Q(overdue_quantile))) + slack_days`: `overdue_days = today − due`
//! when positive, else 0. The model's quantiles can be unbounded (one activity, small `r`): past
//! 100 years there is no expectation rather than a date nobody can act on.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{
    bgnbd::{BgNbdParams, Customer},
    config::NextVisitConfig,
    days,
};

/// Which waiting times produced the expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The member's own intervals between activity days.
    Personal,
    /// The BG/NBD model fitted over all members.
    Model,
}

/// The expected next visit of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextVisit {
    pub expected: Option<Date>,
    /// Days past the overdue point; 0 when not overdue (or no expectation).
    pub overdue_days: u32,
    /// The first day on which the member counts as overdue (by one day): gateways get this date
    /// rather than `overdue_days`, which would change every day.
    pub overdue_from: Option<Date>,
    pub method: Option<Method>,
}

impl NextVisit {
    const NONE: NextVisit = NextVisit {
        expected: None,
        overdue_days: 0,
        overdue_from: None,
        method: None,
    };
}

/// Longest waiting time turned into a date (100 years).
const MAX_WAIT_DAYS: f64 = 36_525.0;

/// The next visit from activity dates (any order; duplicates and days after today ignored).
pub fn next_visit(
    activity: &[Date],
    today: Date,
    model: Option<&BgNbdParams>,
    cfg: &NextVisitConfig,
) -> NextVisit {
    let today_n = days::number(today);
    let mut numbers: Vec<i64> = activity
        .iter()
        .map(|d| days::number(*d))
        .filter(|&n| n <= today_n)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    next_visit_days(&numbers, today_n, model, cfg)
}

/// As [`next_visit`] from sorted distinct day numbers, all `<= today`.
pub(crate) fn next_visit_days(
    activity: &[i64],
    today: i64,
    model: Option<&BgNbdParams>,
    cfg: &NextVisitConfig,
) -> NextVisit {
    let Some(&last) = activity.last() else {
        return NextVisit::NONE;
    };
    let max_gaps = usize::try_from(cfg.max_intervals).unwrap_or(usize::MAX);
    let from = activity.len().saturating_sub(max_gaps.saturating_add(1));
    let mut gaps: Vec<f64> = activity[from..]
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64)
        .collect();
    let (method, expected_wait, overdue_wait) = if gaps.len() as u64 >= u64::from(cfg.min_intervals)
    {
        gaps.sort_unstable_by(f64::total_cmp);
        (
            Method::Personal,
            quantile(&gaps, cfg.expected_quantile),
            quantile(&gaps, cfg.overdue_quantile),
        )
    } else if let Some(model) = model {
        let Some(customer) = Customer::from_sorted_days(activity, today) else {
            return NextVisit::NONE;
        };
        let wait = |q| {
            model
                .next_activity_quantile(q, &customer)
                .unwrap_or(f64::NAN)
        };
        (
            Method::Model,
            wait(cfg.expected_quantile),
            wait(cfg.overdue_quantile),
        )
    } else {
        return NextVisit::NONE;
    };
    let Some(expected_wait) = whole_days(expected_wait.round()) else {
        return NextVisit::NONE;
    };
    let expected = days::date(last + expected_wait.max(1));
    let due =
        whole_days(overdue_wait.ceil()).map(|wait| last + wait.max(1) + i64::from(cfg.slack_days));
    let overdue_days = due.map_or(0, |due| {
        u32::try_from((today - due).max(0)).unwrap_or(u32::MAX)
    });
    NextVisit {
        method: expected.map(|_| method),
        expected,
        overdue_days,
        overdue_from: due.and_then(|due| days::date(due + 1)),
    }
}

/// A waiting time as whole days, `None` when not finite or beyond [`MAX_WAIT_DAYS`].
fn whole_days(wait: f64) -> Option<i64> {
    (wait.is_finite() && (0.0..=MAX_WAIT_DAYS).contains(&wait)).then_some(wait as i64)
}

/// Quantile `q` of sorted values, interpolating linearly between order statistics (numpy's
/// default, "type 7").
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(&first) = sorted.first() else {
        return f64::NAN;
    };
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let below = sorted.get(lo).copied().unwrap_or(first);
    let above = sorted.get(lo + 1).copied().unwrap_or(below);
    below + (h - lo as f64) * (above - below)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const START: i64 = 20_000; // 2024-10-04

    fn date(n: i64) -> Date {
        days::date(START + n).unwrap()
    }

    fn model() -> BgNbdParams {
        BgNbdParams::new(0.6, 25.0, 0.9, 3.0).unwrap()
    }

    fn at(history: &[i64], today: i64, model: Option<&BgNbdParams>) -> NextVisit {
        let dates: Vec<Date> = history.iter().map(|&n| date(n)).collect();
        next_visit(&dates, date(today), model, &NextVisitConfig::default())
    }

    #[test]
    fn a_regular_shopper_is_overdue_right_after_the_interval_plus_slack() {
        // Every 14 days, last on day 140: expected day 154, due day 154 + 2 slack.
        let history: Vec<i64> = (0..=10).map(|i| i * 14).collect();
        let on = |today| at(&history, today, Some(&model()));
        assert_eq!(on(150).expected, Some(date(154)));
        assert_eq!(on(150).method, Some(Method::Personal));
        assert_eq!(on(156).overdue_days, 0);
        assert_eq!(on(157).overdue_days, 1);
        assert_eq!(on(186).overdue_days, 30);
        // The date gateways count from is the same whatever day it is computed on.
        assert_eq!(on(150).overdue_from, Some(date(157)));
        assert_eq!(on(186).overdue_from, Some(date(157)));
    }

    #[test]
    fn an_irregular_shopper_with_the_same_median_is_overdue_later() {
        // Median gap 14 days as well, but the 80% quantile is 22.
        let gaps = [7, 21, 10, 18, 14, 30, 9, 14, 25];
        let mut history = vec![0];
        for g in gaps {
            history.push(history.last().unwrap() + g);
        }
        let last = *history.last().unwrap();
        let v = at(&history, last + 17, None);
        assert_eq!(v.expected, Some(date(last + 14)));
        assert_eq!(v.overdue_days, 0);
        // Sorted gaps 7 9 10 14 14 18 21 25 30: Q(0.8) = 21 + 0.4·4 = 22.6 → 23 (+2 slack).
        assert_eq!(at(&history, last + 25, None).overdue_days, 0);
        assert_eq!(at(&history, last + 26, None).overdue_days, 1);
        let regular: Vec<i64> = (0..=9).map(|i| i * 14).collect();
        assert_eq!(at(&regular, 9 * 14 + 26, None).overdue_days, 10);
    }

    #[test]
    fn a_new_member_with_two_activity_days_uses_the_model() {
        let v = at(&[0, 10], 12, Some(&model()));
        assert_eq!(v.method, Some(Method::Model));
        // x = 1, t_x = 10: median wait (25 + 10)(2^(1/1.6) − 1) = 18.98 → 19 days after day 10.
        assert_eq!(v.expected, Some(date(29)));
        assert_eq!(v.overdue_days, 0);
        // 80% wait: 35 · (5^(1/1.6) − 1) = 60.70 → 61, due day 10 + 61 + 2 = 73.
        assert_eq!(at(&[0, 10], 73, Some(&model())).overdue_days, 0);
        assert_eq!(at(&[0, 10], 74, Some(&model())).overdue_days, 1);
    }

    #[test]
    fn without_enough_history_and_without_a_model_there_is_no_expectation() {
        assert_eq!(at(&[0, 10, 20], 25, None), NextVisit::NONE);
    }

    #[test]
    fn a_member_without_activity_has_no_expectation_even_with_a_model() {
        assert_eq!(at(&[], 25, Some(&model())), NextVisit::NONE);
        assert_eq!(
            at(&[30], 25, Some(&model())),
            NextVisit::NONE,
            "only a future day"
        );
    }

    #[test]
    fn an_unbounded_model_wait_gives_no_expectation() {
        let tiny_r = BgNbdParams::new(0.01, 25.0, 0.9, 3.0).unwrap();
        assert_eq!(at(&[0], 5, Some(&tiny_r)), NextVisit::NONE);
    }

    #[test]
    fn only_the_latest_intervals_count() {
        // Monthly for years, then weekly for the latest 20 gaps: judged weekly.
        let mut history: Vec<i64> = (0..30).map(|i| i * 30).collect();
        let switch = *history.last().unwrap();
        history.extend((1..=20).map(|i| switch + i * 7));
        let last = *history.last().unwrap();
        assert_eq!(at(&history, last, None).expected, Some(date(last + 7)));
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[5.0], 0.9), 5.0);
        assert_eq!(quantile(&[1.0, 11.0], 0.8), 9.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
