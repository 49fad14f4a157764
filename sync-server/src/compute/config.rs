//! `[compute]` in head office's TOML: every parameter of the pyramid, tiers, stages, groups,
//! next-visit expectation and the BG/NBD model, with its default and why.
//!
//! In: TOML text (through serde) or [`ComputeConfig::default`]. Out: a config that
//! [`ComputeConfig::validate`] accepts or the key at fault with a reason. It reads no file itself;
//! `sync-server/examples/hq.toml` documents every key and is tested to equal the defaults.

use serde::{Deserialize, Serialize};

use super::pyramid::Level;

/// All parameters of the head-office computations. Every table and key is optional; a missing
/// one takes its default, an unknown one is refused (a typo must not fall back silently).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// Length of the trailing window for spend, purchases and visits, in days, today included:
    /// a day `d` counts when `today - window_days < d <= today`. 365: the brief's "trailing
    /// 12 months", and a year evens out seasons.
    pub window_days: u32,
    pub pyramid: PyramidCuts,
    pub tiers: TierConfig,
    pub stage: StageConfig,
    pub groups: GroupConfig,
    pub next_visit: NextVisitConfig,
    pub model: ModelConfig,
    /// Where the tier and stage stores see come from (see [`TierSource`]).
    pub tier_source: TierSource,
    /// The purchases' currency (ISO 4217, e.g. `EUR`); a purchase in another is refused with its
    /// line, since spends in two currencies cannot be added up. Unset: any currency is accepted
    /// and amounts are added as they are (a chain that trades in one currency).
    pub currency: Option<String>,
    /// UTC hour of the daily full recompute (pyramid cut points, BG/NBD fit, every member's
    /// fields); purchases and visits update their members within seconds in between.
    pub full_recompute_hour_utc: u8,
    /// A full recompute also runs when the number of members with purchases moved by more than
    /// this share since the last one (a first purchase import: cut points from an empty base
    /// would make every buyer `top2` until the next day) ...
    pub rerank_on_buyers_change: f64,
    /// ... but at most once per this many seconds, so a long import is not ranked over and over.
    pub rerank_min_interval_s: u32,
}

/// Where a member's tier and stage (as stores see them) come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TierSource {
    #[default]
    /// Computed for members with purchases at head office, as imported for the others: a chain
    /// that loads no purchases keeps its CRM's tiers, one that does gets them from spend.
    Auto,
    /// Always computed (a member without purchases is `rest`, tier `member`, stage `acquire`).
    Computed,
    /// Always as imported; head office still computes and reports the level.
    Import,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            tier_source: TierSource::Auto,
            currency: None,
            full_recompute_hour_utc: 3,
            rerank_on_buyers_change: 0.10,
            rerank_min_interval_s: 60,
            window_days: 365,
            pyramid: PyramidCuts::default(),
            tiers: TierConfig::default(),
            stage: StageConfig::default(),
            groups: GroupConfig::default(),
            next_visit: NextVisitConfig::default(),
            model: ModelConfig::default(),
        }
    }
}

/// Cumulative shares of the *whole member base* (zero-spenders included) that the pyramid's
/// bands reach down to: `top5 = 0.05` means the top 5% by 12-month spend are `top5` or better.
/// Defaults are the brief's pyramid: 2%, 5%, 10%, 15%, 20%, the rest. Shares are used to six
/// decimals (parts per million), so the band sizes are exact integers on every platform.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidCuts {
    pub top2: f64,
    pub top5: f64,
    pub top10: f64,
    pub top15: f64,
    pub top20: f64,
}

impl Default for PyramidCuts {
    fn default() -> Self {
        Self {
            top2: 0.02,
            top5: 0.05,
            top10: 0.10,
            top15: 0.15,
            top20: 0.20,
        }
    }
}

impl PyramidCuts {
    /// The five cut points from the top band down.
    pub fn shares(&self) -> [f64; 5] {
        [self.top2, self.top5, self.top10, self.top15, self.top20]
    }
}

/// How the pyramid level turns into the tier the stores see.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// Days the level must stay at or above a higher tier before the member is upgraded to it;
    /// 0 = at once. Default 0: the moment a member earns a tier (usually at the till) is the
    /// moment to greet them with it; the trailing 12-month window already smooths spend.
    pub qualification_days: u32,
    /// Days the level must stay below the member's tier before the tier falls (to what the level
    /// then gives). Default 90: a quarter, so a member who slips just below a moving cut point or
    /// has one slow season is not demoted and re-promoted within weeks.
    pub downgrade_grace_days: u32,
    pub names: TierNames,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            qualification_days: 0,
            downgrade_grace_days: 90,
            names: TierNames::default(),
        }
    }
}

/// Tier name per pyramid level. Several levels may share a name (default: `top15` and `top20`
/// are both `bronze`), but only neighbouring levels: the tiers must read as a ladder.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierNames {
    pub top2: String,
    pub top5: String,
    pub top10: String,
    pub top15: String,
    pub top20: String,
    pub rest: String,
}

impl Default for TierNames {
    fn default() -> Self {
        Self {
            top2: "platinum".into(),
            top5: "gold".into(),
            top10: "silver".into(),
            top15: "bronze".into(),
            top20: "bronze".into(),
            rest: "member".into(),
        }
    }
}

impl TierNames {
    /// The tier name of a level.
    pub fn of(&self, level: Level) -> &str {
        match level {
            Level::Top2 => &self.top2,
            Level::Top5 => &self.top5,
            Level::Top10 => &self.top10,
            Level::Top15 => &self.top15,
            Level::Top20 => &self.top20,
            Level::Rest => &self.rest,
        }
    }

    /// The distinct tier names from the best down (the default: platinum, gold, silver, bronze,
    /// member).
    pub fn ladder(&self) -> Vec<&str> {
        let mut ladder: Vec<&str> = Vec::with_capacity(Level::ALL.len());
        for level in Level::ALL {
            let name = self.of(level);
            if ladder.last() != Some(&name) {
                ladder.push(name);
            }
        }
        ladder
    }

    /// Position of a tier name on the ladder (0 = best), `None` for a name not configured.
    pub fn rank(&self, tier: &str) -> Option<usize> {
        self.ladder().iter().position(|t| *t == tier)
    }
}

/// Lifecycle stage rules (see [`super::stage`] for the table).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Purchases in the window that make a member `stick`. Default 2: the second purchase is the
    /// classic sign of a repeat customer.
    pub stick_min_purchases: u32,
    /// Or: store visits in the window that make a member with at least one purchase in the window
    /// `stick` (0 turns this path off). Default 4: coming back about once a season without
    /// buying each time is still a habit.
    pub stick_min_visits: u32,
    /// Lowest pyramid level that makes a sticking member `value`. Default `top20`: the top 20%,
    /// the Pareto "vital few" who carry most of the spend.
    pub value_min_level: Level,
    /// Referred members with at least one purchase that make a `stick` or `value` member
    /// `refer`. Default 1: one referral that bought is the behaviour the stage is about.
    pub refer_min_referrals: u32,
    /// Days without any activity (purchase or visit) after which a member who has purchased is
    /// `lapsed`. Default 365: nothing at all in the trailing year.
    pub lapse_days: u32,
    /// Or: BG/NBD probability of being still active below which a member is `lapsed` (when a
    /// model is available; 0 turns this path off). Default 0.1: nine in ten members with this
    /// history have left.
    pub lapse_p_alive: f64,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            stick_min_purchases: 2,
            stick_min_visits: 4,
            value_min_level: Level::Top20,
            refer_min_referrals: 1,
            lapse_days: 365,
            lapse_p_alive: 0.1,
        }
    }
}

/// Groups by category preference.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Minimum share of the member's positive 12-month category spend (net of returns) for the
    /// category to be one of the member's groups. Default 0.25: a quarter of the wallet is a
    /// preference, and at most four groups keep a clerk's card readable.
    pub min_share: f64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self { min_share: 0.25 }
    }
}

/// Expected next visit and overdue (see [`super::next_visit`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NextVisitConfig {
    /// Intervals between activity days a member needs for their own rhythm to be used (else the
    /// BG/NBD model). Default 4 (five activity days): with fewer, one odd gap decides the quantiles.
    pub min_intervals: u32,
    /// Only the most recent intervals count, so a member whose rhythm changed is judged by the new
    /// one. Default 20: long enough to be stable, short enough to follow a change within a year
    /// for a regular shopper.
    pub max_intervals: u32,
    /// Quantile of the interval that gives the expected next visit (after the last activity).
    /// Default 0.5, the median: half of the member's gaps were shorter.
    pub expected_quantile: f64,
    /// Quantile of the interval after which the member is overdue. Default 0.8: four in five of
    /// the member's own gaps were shorter, so "overdue" is unusual for *this* member, and an
    /// irregular shopper's wider spread makes them overdue later.
    pub overdue_quantile: f64,
    /// Days added to the overdue point, so that a perfectly regular shopper is not overdue the
    /// morning after their usual day. Default 2.
    pub slack_days: u32,
}

impl Default for NextVisitConfig {
    fn default() -> Self {
        Self {
            min_intervals: 4,
            max_intervals: 20,
            expected_quantile: 0.5,
            overdue_quantile: 0.8,
            slack_days: 2,
        }
    }
}

/// The BG/NBD model (see [`super::bgnbd`]), fitted over all members with activity, time in days.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Horizon of `expected_purchases`, in days. Default 30: a month is what a store plans for.
    pub horizon_days: u32,
    /// Members with activity needed to fit the model; with fewer, none is fitted and members
    /// without enough own history get no expectation. Default 100: four parameters need a crowd.
    pub min_customers: u32,
    /// Iteration cap of the optimiser. Default 500; the fit usually converges in under 100.
    pub max_iterations: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            horizon_days: 30,
            min_customers: 100,
            max_iterations: 500,
        }
    }
}

impl ComputeConfig {
    /// Semantic checks: the first key at fault (relative to `[compute]`, e.g. `pyramid.top5`) and
    /// why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.window_days == 0 {
            return Err(("window_days", "must be at least 1 day".into()));
        }
        if !self.rerank_on_buyers_change.is_finite() || self.rerank_on_buyers_change < 0.0 {
            return Err(("rerank_on_buyers_change", "must be a share >= 0".into()));
        }
        if self.full_recompute_hour_utc > 23 {
            return Err(("full_recompute_hour_utc", "must be an hour 0-23".into()));
        }
        if let Some(c) = &self.currency
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err((
                "currency",
                format!("{c:?} is not an ISO 4217 code like EUR"),
            ));
        }
        let keys = [
            "pyramid.top2",
            "pyramid.top5",
            "pyramid.top10",
            "pyramid.top15",
            "pyramid.top20",
        ];
        let mut previous = 0.0;
        for (key, share) in keys.into_iter().zip(self.pyramid.shares()) {
            if !(0.0..=1.0).contains(&share) {
                return Err((key, format!("{share} is not a share between 0 and 1")));
            }
            if share < previous {
                return Err((
                    key,
                    format!(
                        "{share} is below the band above it ({previous}); cut points go top down"
                    ),
                ));
            }
            previous = share;
        }
        self.validate_tier_names()?;
        let stage = &self.stage;
        if stage.stick_min_purchases == 0 {
            return Err((
                "stage.stick_min_purchases",
                "must be at least 1 (0 would make every member stick)".into(),
            ));
        }
        if stage.value_min_level == Level::Rest {
            return Err((
                "stage.value_min_level",
                "must be a pyramid band (top2..top20), not rest".into(),
            ));
        }
        if stage.refer_min_referrals == 0 {
            return Err(("stage.refer_min_referrals", "must be at least 1".into()));
        }
        if stage.lapse_days == 0 {
            return Err(("stage.lapse_days", "must be at least 1 day".into()));
        }
        if !(0.0..=1.0).contains(&stage.lapse_p_alive) {
            return Err((
                "stage.lapse_p_alive",
                format!(
                    "{} is not a probability between 0 and 1",
                    stage.lapse_p_alive
                ),
            ));
        }
        let share = self.groups.min_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err((
                "groups.min_share",
                format!("{share} is not a share in (0, 1]"),
            ));
        }
        let nv = &self.next_visit;
        if nv.min_intervals == 0 {
            return Err(("next_visit.min_intervals", "must be at least 1".into()));
        }
        if nv.max_intervals < nv.min_intervals {
            return Err((
                "next_visit.max_intervals",
                format!(
                    "{} is below next_visit.min_intervals ({})",
                    nv.max_intervals, nv.min_intervals
                ),
            ));
        }
        for (key, q) in [
            ("next_visit.expected_quantile", nv.expected_quantile),
            ("next_visit.overdue_quantile", nv.overdue_quantile),
        ] {
            // 1.0 would put the model's overdue point at infinity.
            if !(q > 0.0 && q < 1.0) {
                return Err((key, format!("{q} is not a quantile in (0, 1)")));
            }
        }
        if nv.overdue_quantile < nv.expected_quantile {
            return Err((
                "next_visit.overdue_quantile",
                "must not be below next_visit.expected_quantile (overdue before expected)".into(),
            ));
        }
        if self.model.horizon_days == 0 {
            return Err(("model.horizon_days", "must be at least 1 day".into()));
        }
        if self.model.min_customers < 2 {
            return Err((
                "model.min_customers",
                "must be at least 2 (one customer cannot show heterogeneity)".into(),
            ));
        }
        if self.model.max_iterations == 0 {
            return Err(("model.max_iterations", "must be at least 1".into()));
        }
        Ok(())
    }

    fn validate_tier_names(&self) -> Result<(), (&'static str, String)> {
        let names = &self.tiers.names;
        let keys = [
            "tiers.names.top2",
            "tiers.names.top5",
            "tiers.names.top10",
            "tiers.names.top15",
            "tiers.names.top20",
            "tiers.names.rest",
        ];
        for (i, (key, level)) in keys.into_iter().zip(Level::ALL).enumerate() {
            let name = names.of(level);
            if name.trim().is_empty() {
                return Err((key, "must not be empty".into()));
            }
            // A name may repeat only right below itself: otherwise "at or above tier X" has no
            // meaning.
            let repeats_further_up = i >= 2
                && names.of(Level::ALL[i - 1]) != name
                && Level::ALL[..i - 1].iter().any(|l| names.of(*l) == name);
            if repeats_further_up {
                return Err((
                    key,
                    format!(
                        "{name:?} is also the name of a level further up; only neighbouring levels may share a tier"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The `[compute]` table of a whole head-office config (its other tables are not ours).
    #[derive(Deserialize)]
    struct Wrapper {
        compute: ComputeConfig,
    }

    #[test]
    fn the_documented_example_parses_and_equals_the_defaults() {
        let text = include_str!("../../examples/hq.toml");
        let parsed: Wrapper = toml::from_str(text).unwrap();
        assert_eq!(parsed.compute, ComputeConfig::default());
    }

    #[test]
    fn the_defaults_validate() {
        assert_eq!(ComputeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn an_empty_compute_table_takes_every_default() {
        let parsed: Wrapper = toml::from_str("[compute]\n").unwrap();
        assert_eq!(parsed.compute, ComputeConfig::default());
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = toml::from_str::<Wrapper>("[compute.pyramid]\ntop3 = 0.03\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("top3"), "{err}");
    }

    #[test]
    fn the_default_ladder_has_five_tiers_with_bronze_shared() {
        let names = TierNames::default();
        assert_eq!(
            names.ladder(),
            ["platinum", "gold", "silver", "bronze", "member"]
        );
        assert_eq!(names.rank("bronze"), Some(3));
        assert_eq!(names.rank("diamond"), None);
    }

    fn invalid_key(edit: impl FnOnce(&mut ComputeConfig)) -> &'static str {
        let mut cfg = ComputeConfig::default();
        edit(&mut cfg);
        cfg.validate()
            .err()
            .map(|(key, _)| key)
            .unwrap_or("<valid>")
    }

    type Edit = Box<dyn FnOnce(&mut ComputeConfig)>;

    #[test]
    fn each_nonsense_value_is_refused_with_its_key() {
        let cases: [(&str, Edit); 14] = [
            ("window_days", Box::new(|c| c.window_days = 0)),
            ("pyramid.top2", Box::new(|c| c.pyramid.top2 = -0.1)),
            ("pyramid.top10", Box::new(|c| c.pyramid.top10 = 0.04)),
            ("pyramid.top20", Box::new(|c| c.pyramid.top20 = f64::NAN)),
            (
                "tiers.names.rest",
                Box::new(|c| c.tiers.names.rest = " ".into()),
            ),
            (
                "tiers.names.top10",
                Box::new(|c| c.tiers.names.top10 = "platinum".into()),
            ),
            (
                "stage.stick_min_purchases",
                Box::new(|c| c.stage.stick_min_purchases = 0),
            ),
            (
                "stage.value_min_level",
                Box::new(|c| c.stage.value_min_level = Level::Rest),
            ),
            (
                "stage.lapse_p_alive",
                Box::new(|c| c.stage.lapse_p_alive = 1.5),
            ),
            ("groups.min_share", Box::new(|c| c.groups.min_share = 0.0)),
            (
                "next_visit.max_intervals",
                Box::new(|c| c.next_visit.max_intervals = 2),
            ),
            (
                "next_visit.overdue_quantile",
                Box::new(|c| c.next_visit.overdue_quantile = 0.4),
            ),
            (
                "next_visit.expected_quantile",
                Box::new(|c| c.next_visit.expected_quantile = 1.0),
            ),
            (
                "model.min_customers",
                Box::new(|c| c.model.min_customers = 1),
            ),
        ];
        for (key, edit) in cases {
            assert_eq!(invalid_key(edit), key);
        }
    }

    #[test]
    fn equal_cut_points_are_allowed_as_an_empty_band() {
        assert_eq!(invalid_key(|c| c.pyramid.top15 = 0.20), "<valid>");
    }
}
