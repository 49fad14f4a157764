//! Per-member facts in, computed member fields out: the whole of "head office computes the Data"
//! for one member, and the full pass over the member base.
//!
//! In: [`MemberFacts`] (activity history, category spend, referrals, the previous computed state),
//! today's date, the pyramid thresholds (or every member, for a full pass), the BG/NBD model if
//! one is fitted, and the config. Out: [`Computed`] per member (and [`FullPass`]). It must not
//! read a clock, a database or the network; every date comes in as `today`, and the same inputs
//! always give the same output.
//!
//! Definitions used throughout:
//! - an **activity day** is a day with a purchase or a store visit; days after `today` are
//!   ignored everywhere (a gateway's clock ahead of head office's must not count yet);
//! - the **window** is `today − window_days < day <= today`;
//! - `spend_12m_minor` is the window's purchase amounts net of returns; `purchases_12m` and
//!   `visits_12m` count the window's purchases and visits.

use std::{borrow::Cow, collections::HashMap};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{
    bgnbd::{self, BgNbdError, BgNbdParams, Customer, Fit, FitOptions},
    config::ComputeConfig,
    days,
    groups::{CategorySpend, groups},
    next_visit::{Method, next_visit_days},
    pyramid::{Level, PyramidThresholds, thresholds},
    stage::{Stage, StageFacts, stage},
    tier::{TierState, next_tier},
};

/// One day of a member's history (the caller sums purchases and visits per day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityDay {
    pub day: Date,
    /// Sum of the day's purchase amounts, returns negative (minor units).
    pub purchase_minor: i64,
    /// Sales that day (a return alone is not a purchase, only a negative amount).
    pub purchases: u32,
    /// Store visits that day (presence sessions).
    pub visits: u32,
}

impl ActivityDay {
    fn is_activity(&self) -> bool {
        self.purchases > 0 || self.visits > 0
    }
}

/// What the computation needs to know about one member.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberFacts {
    pub member_id: String,
    /// Who referred this member, if anyone (see [`purchasing_referrals`]).
    pub referred_by: Option<String>,
    /// Members this member referred who have made at least one purchase.
    pub purchasing_referrals: u32,
    /// Activity by day, sorted by day with one entry per day (anything else is sorted and merged
    /// first, at a cost).
    pub activity: Vec<ActivityDay>,
    /// Net spend per category over the window.
    pub category_spend_12m: Vec<CategorySpend>,
    /// What the last computation gave (`Computed::previous`), or what an import said.
    pub previous: Previous,
}

/// The part of the last result that the next computation builds on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Previous {
    pub level: Option<Level>,
    pub tier: Option<TierState>,
}

/// How the level moved since the previous computation (to count movement in the pyramid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelMove {
    /// No previous level.
    New,
    Same,
    Up,
    Down,
}

/// The computed member fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Computed {
    pub member_id: String,
    pub spend_12m_minor: i64,
    /// Purchase frequency in the window.
    pub purchases_12m: u64,
    pub visits_12m: u64,
    /// Last day with a store visit (whole history).
    pub last_visit: Option<Date>,
    /// Last day with a purchase (whole history).
    pub last_purchase: Option<Date>,
    /// Days since the last activity day.
    pub recency_days: Option<u32>,
    pub level: Level,
    pub level_move: LevelMove,
    /// `tier`, `tier_since`, `tier_qualifying`, `tier_below_since`.
    #[serde(flatten)]
    pub tier: TierState,
    pub stage: Stage,
    /// Preferred categories, strongest first.
    pub groups: Vec<String>,
    pub expected_next_visit: Option<Date>,
    pub overdue_days: u32,
    /// The first day the member is overdue on (one day overdue); see [`NextVisit::overdue_from`].
    #[serde(default)]
    pub overdue_from: Option<Date>,
    /// Which waiting times gave `expected_next_visit`.
    pub expectation: Option<Method>,
    /// BG/NBD P(alive), when a model is given and the member has activity.
    pub p_alive: Option<f64>,
    /// BG/NBD expected activity days in the next `[compute.model] horizon_days` (default 30).
    pub expected_purchases: Option<f64>,
}

impl Computed {
    /// What the next computation of this member needs from this one.
    pub fn previous(&self) -> Previous {
        Previous {
            level: Some(self.level),
            tier: Some(self.tier.clone()),
        }
    }
}

/// A full pass: the pyramid thresholds and every member's fields, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct FullPass {
    pub thresholds: PyramidThresholds,
    pub members: Vec<Computed>,
}

/// Every member against the whole base: thresholds from everyone's 12-month spend, then each
/// member as [`compute_member`] would level them.
pub fn compute_all(
    members: &[MemberFacts],
    today: Date,
    model: Option<&BgNbdParams>,
    cfg: &ComputeConfig,
) -> FullPass {
    let today_n = days::number(today);
    let spends: Vec<i64> = members
        .iter()
        .map(|m| window_spend(&m.activity, today_n, cfg.window_days))
        .collect();
    let thresholds = thresholds(&spends, &cfg.pyramid);
    let members = members
        .iter()
        .map(|m| compute_member(m, today, &thresholds, model, cfg))
        .collect();
    FullPass {
        thresholds,
        members,
    }
}

/// One member against the thresholds of the last full pass (e.g. when a purchase arrives).
pub fn compute_member(
    facts: &MemberFacts,
    today: Date,
    thresholds: &PyramidThresholds,
    model: Option<&BgNbdParams>,
    cfg: &ComputeConfig,
) -> Computed {
    let today_n = days::number(today);
    let history = normalized(&facts.activity);
    let window_start = today_n - i64::from(cfg.window_days); // exclusive
    let (mut spend, mut purchases_12m, mut visits_12m, mut purchases_ever) = (0_i64, 0, 0, 0);
    let (mut last_visit, mut last_purchase) = (None, None);
    let mut activity_days: Vec<i64> = Vec::with_capacity(history.len());
    for day in history.iter() {
        let n = days::number(day.day);
        if n > today_n {
            break;
        }
        if n > window_start {
            spend = spend.saturating_add(day.purchase_minor);
            purchases_12m += u64::from(day.purchases);
            visits_12m += u64::from(day.visits);
        }
        purchases_ever += u64::from(day.purchases);
        if day.visits > 0 {
            last_visit = Some(day.day);
        }
        if day.purchases > 0 {
            last_purchase = Some(day.day);
        }
        if day.is_activity() {
            activity_days.push(n);
        }
    }
    let recency = activity_days.last().map(|&last| today_n - last);

    let level = thresholds.level(spend);
    let level_move = match facts.previous.level {
        None => LevelMove::New,
        Some(prev) if prev == level => LevelMove::Same,
        Some(prev) if level.is_at_or_above(prev) => LevelMove::Up,
        Some(_) => LevelMove::Down,
    };
    let tier = next_tier(facts.previous.tier.as_ref(), level, today, &cfg.tiers);

    let customer = Customer::from_sorted_days(&activity_days, today_n);
    let (p_alive, expected_purchases) = match (model, customer) {
        (Some(model), Some(c)) => (
            model.p_alive(&c).ok(),
            model
                .expected_purchases(f64::from(cfg.model.horizon_days), &c)
                .ok(),
        ),
        _ => (None, None),
    };
    let next = next_visit_days(&activity_days, today_n, model, &cfg.next_visit);
    let stage = stage(
        &StageFacts {
            purchases_ever,
            purchases_12m,
            visits_12m,
            recency_days: recency,
            level,
            purchasing_referrals: facts.purchasing_referrals,
            p_alive,
        },
        &cfg.stage,
    );
    Computed {
        member_id: facts.member_id.clone(),
        spend_12m_minor: spend,
        purchases_12m,
        visits_12m,
        last_visit,
        last_purchase,
        recency_days: recency.map(|d| u32::try_from(d).unwrap_or(u32::MAX)),
        level,
        level_move,
        tier,
        stage,
        groups: groups(&facts.category_spend_12m, cfg.groups.min_share),
        expected_next_visit: next.expected,
        overdue_days: next.overdue_days,
        overdue_from: next.overdue_from,
        expectation: next.method,
        p_alive,
        expected_purchases,
    }
}

/// Fits the BG/NBD model over every member with activity up to `today` (time in days).
pub fn fit_model(
    members: &[MemberFacts],
    today: Date,
    cfg: &ComputeConfig,
) -> Result<Fit, BgNbdError> {
    let today_n = days::number(today);
    let customers: Vec<Customer> = members
        .iter()
        .filter_map(|m| {
            let history = normalized(&m.activity);
            let days: Vec<i64> = history
                .iter()
                .filter(|d| d.is_activity())
                .map(|d| days::number(d.day))
                .filter(|&n| n <= today_n)
                .collect();
            Customer::from_sorted_days(&days, today_n)
        })
        .collect();
    let needed = u64::from(cfg.model.min_customers);
    if (customers.len() as u64) < needed {
        return Err(BgNbdError::TooFewCustomers {
            customers: customers.len() as u64,
            needed,
        });
    }
    bgnbd::fit(
        &customers,
        &FitOptions {
            max_iterations: cfg.model.max_iterations,
        },
    )
}

/// For each referrer, how many of the members they referred have purchased by `today` (the
/// `purchasing_referrals` input). Self-referrals do not count.
pub fn purchasing_referrals(members: &[MemberFacts], today: Date) -> HashMap<String, u32> {
    let mut out: HashMap<String, u32> = HashMap::new();
    for m in members {
        let Some(referrer) = m.referred_by.as_deref() else {
            continue;
        };
        let bought = m.activity.iter().any(|d| d.purchases > 0 && d.day <= today);
        if bought && referrer != m.member_id {
            *out.entry(referrer.to_string()).or_default() += 1;
        }
    }
    out
}

/// The window's net spend, as [`compute_member`] sums it.
fn window_spend(activity: &[ActivityDay], today: i64, window_days: u32) -> i64 {
    let start = today - i64::from(window_days);
    activity
        .iter()
        .filter(|d| {
            let n = days::number(d.day);
            n > start && n <= today
        })
        .fold(0_i64, |sum, d| sum.saturating_add(d.purchase_minor))
}

/// The history sorted by day with one entry per day, borrowed when it already is.
fn normalized(activity: &[ActivityDay]) -> Cow<'_, [ActivityDay]> {
    if activity.windows(2).all(|w| w[0].day < w[1].day) {
        return Cow::Borrowed(activity);
    }
    let mut sorted = activity.to_vec();
    sorted.sort_by_key(|d| d.day);
    let mut merged: Vec<ActivityDay> = Vec::with_capacity(sorted.len());
    for d in sorted {
        match merged.last_mut() {
            Some(last) if last.day == d.day => {
                last.purchase_minor = last.purchase_minor.saturating_add(d.purchase_minor);
                last.purchases = last.purchases.saturating_add(d.purchases);
                last.visits = last.visits.saturating_add(d.visits);
            }
            _ => merged.push(d),
        }
    }
    Cow::Owned(merged)
}

#[cfg(test)]
mod tests;
