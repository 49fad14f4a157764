//! React: decides what a presence change, a QR scan or a planned check deserves.
//!
//! In: an [`Occasion`] — what happened (arrive, depart, dwell reached, QR scan, scheduled check)
//! to which member, in which zone, at which moment of the agent's monotonic clock. Out: a
//! [`Verdict`] with at most one rule's reaction — the highest-priority matching rule that is not
//! cooling down for this member — so one arrival never becomes three alerts: a clerk alert
//! and/or [`Action`]s (MQTT publish, webhook) for the action task. Also what was held back and
//! why (cooldown, quiet hours, the store's alert rate limit), for the metrics.
//!
//! Pure: no I/O; the rules file is parsed by [`Rules::parse`]; wall-clock time is the monotonic
//! time plus the origin the engine sets ([`Rules::set_wall_origin`]), in the store's local time:
//! the `[react] timezone` (IANA, daylight saving included; default the system's zone) or a fixed
//! `timezone_offset_min` (see [`calendar`]).
//!
//! The rules file (`[react] rules` in the agent config) is TOML; see `agent/examples/rules.toml`.

pub mod actions;
pub mod calendar;
mod limits;
mod template;
pub mod watch;

use std::collections::{HashMap, HashSet};

use instore_protocol::AlertPriority;
use serde::Deserialize;

pub use self::{
    actions::{Action, ActionQueue, ActionSettings, Webhook},
    calendar::HoursRange,
    template::Template,
    watch::RulesWatch,
};
use self::{
    calendar::{LocalTime, ZoneClock, days_to_birthday, parse_date},
    limits::TokenBucket,
};
use crate::{cache::Member, config::line_of_key};

/// What a rule reacts to (`on = "..."` in the rules file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Arrive,
    Depart,
    /// A present member has stayed in a zone for at least the rule's `dwell_s`.
    Dwell,
    /// A member scanned their QR code at a till or kiosk.
    QrScan,
    /// An arrival, the member's first of the local day.
    FirstVisitToday,
    /// Planned: on arrival, or on the schedule while present, within `birthday_days` of the
    /// member's birthday.
    BirthdayWeek,
    /// Planned: on arrival, or on the schedule while present, when the member's last purchase is
    /// at least `overdue_days` old.
    Overdue,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Arrive => "arrive",
            Trigger::Depart => "depart",
            Trigger::Dwell => "dwell",
            Trigger::QrScan => "qr_scan",
            Trigger::FirstVisitToday => "first_visit_today",
            Trigger::BirthdayWeek => "birthday_week",
            Trigger::Overdue => "overdue",
        }
    }

    fn planned(self) -> bool {
        matches!(self, Trigger::BirthdayWeek | Trigger::Overdue)
    }
}

/// What happened, as the engine tells the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happening {
    Arrive,
    Depart,
    /// The member has been in the zone this long (presence reports configured durations).
    Dwell {
        dwell_s: u64,
    },
    QrScan,
    /// The periodic check of planned triggers for a member who is present.
    Scheduled,
}

/// One thing that happened to a member, for [`Rules::react`].
#[derive(Debug, Clone, Copy)]
pub struct Occasion<'a> {
    pub what: Happening,
    pub member: &'a Member,
    pub zone: &'a str,
    /// The visit it belongs to ("" when unknown): a dwell rule fires once per visit.
    pub visit_id: &'a str,
    /// Agent monotonic milliseconds.
    pub at_ms: u64,
}

/// Store-wide settings from the agent config's `[react]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReactSettings {
    /// The store's time zone: local time of day and dates for `hours`, quiet hours and "today".
    pub zone: jiff::tz::TimeZone,
    /// No clerk alerts in this local time range.
    pub quiet_hours: Option<HoursRange>,
    /// At most this many clerk alerts per minute in the store (0: unlimited).
    pub alerts_per_minute: u32,
    /// Alerts allowed at once after a quiet spell (the token bucket's size).
    pub alert_burst: u32,
}

impl Default for ReactSettings {
    /// UTC, no quiet hours, no rate limit: what tests and a rules set without config start with.
    fn default() -> Self {
        Self {
            zone: jiff::tz::TimeZone::UTC,
            quiet_hours: None,
            alerts_per_minute: 0,
            alert_burst: 0,
        }
    }
}

/// A `[react]` setting that cannot be used, with the config key to blame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl ReactSettings {
    pub fn from_config(c: &crate::config::ReactConfig) -> Result<Self, SettingsError> {
        let bad = |key: &'static str| move |reason: String| SettingsError { key, reason };
        Ok(Self {
            zone: store_zone(c)?,
            quiet_hours: c
                .quiet_hours
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(HoursRange::parse)
                .transpose()
                .map_err(bad("quiet_hours"))?,
            alerts_per_minute: c.alerts_per_minute,
            alert_burst: c.alert_burst.unwrap_or(c.alerts_per_minute),
        })
    }
}

/// The zone named by `timezone`, or the fixed `timezone_offset_min`, or else the system's own
/// (`TZ`, `/etc/localtime`), or else UTC with a warning: a gateway without a configured zone
/// would otherwise run every rule's hours against the wrong clock without saying so.
fn store_zone(c: &crate::config::ReactConfig) -> Result<jiff::tz::TimeZone, SettingsError> {
    use jiff::tz::{Offset, TimeZone};
    match (c.timezone.as_deref(), c.timezone_offset_min) {
        (Some(_), Some(_)) => Err(SettingsError {
            key: "timezone_offset_min",
            reason: "set either timezone (an IANA name, following daylight saving time) or \
                     timezone_offset_min (fixed), not both"
                .into(),
        }),
        (Some(name), None) => TimeZone::get(name.trim()).map_err(|e| SettingsError {
            key: "timezone",
            reason: format!(
                "unknown time zone {name:?} (an IANA name like \"Europe/Berlin\", as in \
                 /usr/share/zoneinfo): {e}"
            ),
        }),
        (None, Some(min)) => {
            if !(-14 * 60..=14 * 60).contains(&min) {
                return Err(SettingsError {
                    key: "timezone_offset_min",
                    reason: "must be between -840 and 840".into(),
                });
            }
            Offset::from_seconds(min * 60)
                .map(TimeZone::fixed)
                .map_err(|e| SettingsError {
                    key: "timezone_offset_min",
                    reason: e.to_string(),
                })
        }
        (None, None) => Ok(TimeZone::try_system().unwrap_or_else(|e| {
            tracing::warn!(
                error = %e,
                "cannot tell the system's time zone: rules use UTC; set [react] timezone"
            );
            TimeZone::UTC
        })),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    on: Trigger,
    /// Member tier must be one of these (empty: any).
    #[serde(default)]
    tiers: Vec<String>,
    /// Lifecycle stage must be one of these (empty: any).
    #[serde(default)]
    stages: Vec<String>,
    /// Member must carry at least one of these tags (empty: any).
    #[serde(default)]
    tags_any: Vec<String>,
    /// Member must carry all of these tags.
    #[serde(default)]
    tags_all: Vec<String>,
    /// Member must carry none of these tags.
    #[serde(default)]
    tags_none: Vec<String>,
    /// Member must belong to at least one of these groups (empty: any).
    #[serde(default)]
    groups: Vec<String>,
    /// A consent the member must have given ("presence" always holds for a tracked member).
    #[serde(default)]
    consent: Option<String>,
    /// Local time of day, `"10:00-18:00"` (may wrap midnight).
    #[serde(default)]
    hours: Option<String>,
    /// Zone must be one of these (empty: any).
    #[serde(default)]
    zones: Vec<String>,
    /// `on = "dwell"`: seconds in the zone.
    #[serde(default)]
    dwell_s: Option<u64>,
    /// `on = "overdue"`: days past head office's `overdue_after` date (at least 1) when the
    /// record has one; else days since the last visit (or, for a record without one, the last
    /// purchase).
    #[serde(default)]
    overdue_days: Option<u32>,
    /// `on = "birthday_week"`: days either side of the birthday (default 3: a week).
    #[serde(default)]
    birthday_days: Option<u32>,
    #[serde(default = "default_priority")]
    priority: AlertPriority,
    /// The clerk alert's text; without it the rule raises no clerk alert (actions only).
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    mqtt: Option<MqttSpec>,
    #[serde(default)]
    webhook: Option<WebhookSpec>,
    /// The same rule reacts to the same member at most once per cooldown.
    #[serde(default = "default_cooldown_s")]
    cooldown_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttSpec {
    /// Template, e.g. `"instore/store-001/greet/{zone}"`.
    topic: String,
    /// Template; default: the reaction as JSON (as the webhook body).
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSpec {
    url: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_backoff_ms")]
    backoff_ms: u64,
}

fn default_priority() -> AlertPriority {
    AlertPriority::Normal
}
fn default_cooldown_s() -> u64 {
    3600
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_retries() -> u32 {
    4
}
fn default_backoff_ms() -> u64 {
    500
}

#[derive(Debug)]
struct MqttAction {
    topic: Template,
    payload: Option<Template>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    on: Trigger,
    tiers: Vec<String>,
    stages: Vec<String>,
    tags_any: Vec<String>,
    tags_all: Vec<String>,
    tags_none: Vec<String>,
    groups: Vec<String>,
    consent: Option<String>,
    hours: Option<HoursRange>,
    zones: Vec<String>,
    dwell_s: u64,
    overdue_days: i64,
    birthday_days: u32,
    priority: AlertPriority,
    message: Option<Template>,
    mqtt: Option<MqttAction>,
    webhook: Option<WebhookSpec>,
    cooldown_ms: u64,
}

impl Rule {
    fn matches(&self, o: &Occasion, local: LocalTime, first_today: bool) -> bool {
        let m = o.member;
        let triggered = match (self.on, o.what) {
            (Trigger::Arrive, Happening::Arrive)
            | (Trigger::Depart, Happening::Depart)
            | (Trigger::QrScan, Happening::QrScan) => true,
            (Trigger::Dwell, Happening::Dwell { dwell_s }) => dwell_s >= self.dwell_s,
            (Trigger::FirstVisitToday, Happening::Arrive) => first_today,
            (Trigger::BirthdayWeek, Happening::Arrive | Happening::Scheduled) => m
                .birthday
                .as_deref()
                .and_then(|b| days_to_birthday(b, local.day))
                .is_some_and(|d| d <= self.birthday_days),
            (Trigger::Overdue, Happening::Arrive | Happening::Scheduled) => {
                overdue_days(m, local.day).is_some_and(|d| d >= self.overdue_days)
            }
            _ => false,
        };
        let any_or = |set: &[String], v: &str| set.is_empty() || set.iter().any(|s| s == v);
        let has = |t: &String| m.tags.contains(t);
        triggered
            && any_or(&self.tiers, &m.tier)
            && (self.stages.is_empty()
                || m.stage.as_deref().is_some_and(|s| any_or(&self.stages, s)))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && self.tags_all.iter().all(has)
            && !self.tags_none.iter().any(has)
            && (self.groups.is_empty() || m.groups.iter().any(|g| self.groups.contains(g)))
            && self.consent.as_deref().is_none_or(|c| has_consent(m, c))
            && self.hours.is_none_or(|h| h.contains(local.minute))
            && any_or(&self.zones, o.zone)
    }
}

/// Presence consent is implied (members without it are never indexed); marketing consent is the
/// record's flag. Rule loading refuses any other name, so no consent is ever assumed.
const CONSENTS: [&str; 2] = ["presence", "marketing"];

fn has_consent(m: &Member, consent: &str) -> bool {
    match consent {
        "presence" => true,
        "marketing" => m.consent.marketing,
        _ => false,
    }
}

/// Days the member is overdue on local day `today`, as the `overdue` trigger compares them with
/// the rule's `overdue_days`: past head office's `overdue_after` when the record has it (0, never
/// overdue, on or before that date; the trigger needs at least one day), else days since the
/// last visit (or purchase), as before head office computed the date.
fn overdue_days(m: &Member, today: i64) -> Option<i64> {
    match days_past_overdue_after(m, today) {
        Some(0) => None,
        Some(d) => Some(d),
        None => last_seen(m).and_then(parse_date).map(|d| today - d),
    }
}

/// `today − overdue_after`, 0 if not past; `None` without the date.
pub fn days_past_overdue_after(m: &Member, today: i64) -> Option<i64> {
    m.overdue_after
        .as_deref()
        .and_then(parse_date)
        .map(|d| (today - d).max(0))
}

/// The date `overdue` counts from: the last visit, else the last purchase. Head office's
/// `last_visit` is the better measure (a member who comes in without buying is not overdue), but
/// older exports carry only purchases.
fn last_seen(m: &Member) -> Option<&str> {
    m.last_visit
        .as_deref()
        .or(m.last_purchase.as_ref().map(|p| p.date.as_str()))
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: rule {rule:?} (line {line}): {reason}")]
    Invalid {
        path: String,
        rule: String,
        line: usize,
        reason: String,
    },
}

/// A clerk alert a rule decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaction {
    pub rule: String,
    pub priority: AlertPriority,
    pub message: String,
    /// Days the member is overdue today by head office's `overdue_after` (the clerk card says
    /// "overdue N days"); `None` for a record without the date or not past it.
    pub overdue_days: Option<i64>,
}

/// Matching rules held back, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// The rule already reacted to this member within its cooldown.
    pub cooldown: u32,
    /// A clerk alert fell in the store's quiet hours.
    pub quiet_hours: u32,
    /// A clerk alert exceeded the store's alert rate limit.
    pub rate_limit: u32,
}

impl Held {
    pub fn total(&self) -> u32 {
        self.cooldown + self.quiet_hours + self.rate_limit
    }
}

/// What the rules decided for one occasion.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub alert: Option<Reaction>,
    pub actions: Vec<Action>,
    pub held: Held,
}

/// Per-member memories are capped so a flood of ids cannot grow them without bound; past the cap
/// the oldest knowledge is dropped (worst case: a second "first visit today" alert, still subject
/// to cooldowns and the rate limit).
const MEMORY_CAP: usize = 100_000;
/// How often planned triggers are checked for members present.
pub const PLANNED_EVERY_MS: u64 = 60_000;

/// The rule set plus its memory (cooldowns, visits seen today, dwell rules fired this visit, the
/// rate limit's bucket). Reloading keeps the memory (keyed by rule name), so a reload does not
/// re-alert everyone present.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    settings: ReactSettings,
    /// `settings.zone` with the offset in force remembered until its next transition.
    clock: ZoneClock,
    bucket: TokenBucket,
    /// Unix ms at monotonic 0.
    wall_at_zero_ms: i64,
    last_fired: HashMap<(String, String), u64>,
    /// (rule, visit) pairs a dwell rule already fired for.
    dwell_fired: HashSet<(String, String)>,
    /// Members who got a reaction during their current visit: the scheduled check leaves them be.
    reacted_this_visit: HashSet<String>,
    /// Member → local day of their last arrival.
    arrived_on: HashMap<String, i64>,
    today: i64,
    next_planned_ms: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            settings: ReactSettings::default(),
            clock: ZoneClock::new(jiff::tz::TimeZone::UTC),
            bucket: TokenBucket::new(0, 0),
            wall_at_zero_ms: 0,
            last_fired: HashMap::new(),
            dwell_fired: HashSet::new(),
            reacted_this_visit: HashSet::new(),
            arrived_on: HashMap::new(),
            today: i64::MIN,
            next_planned_ms: 0,
        }
    }
}

impl Rules {
    pub fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for spec in file.rules {
            let line = text
                .lines()
                .position(|l| l.contains(&format!("\"{}\"", spec.name)))
                .map_or_else(|| line_of_key(text, "name"), |i| i + 1);
            let name = spec.name.clone();
            let invalid = |reason: String| RulesError::Invalid {
                path: origin.into(),
                rule: name.clone(),
                line,
                reason,
            };
            if spec.name.trim().is_empty() {
                return Err(invalid("name must not be empty".into()));
            }
            if rules.iter().any(|r: &Rule| r.name == spec.name) {
                return Err(invalid("two rules share this name".into()));
            }
            let rule = build_rule(spec).map_err(invalid)?;
            rules.push(rule);
        }
        // Highest priority first; file order breaks ties (the sort is stable).
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(Self {
            rules,
            ..Self::default()
        })
    }

    /// Replaces the rules, keeping settings and memory.
    pub fn replace(&mut self, new: Rules) {
        self.rules = new.rules;
    }

    pub fn set_settings(&mut self, settings: ReactSettings) {
        self.bucket = TokenBucket::new(settings.alerts_per_minute, settings.alert_burst);
        if self.clock.zone() != &settings.zone {
            let zone = &settings.zone;
            let name = zone
                .iana_name()
                .map(str::to_string)
                .or_else(|| zone.to_fixed_offset().ok().map(|o| format!("UTC{o}")));
            tracing::info!(
                zone = name.as_deref().unwrap_or("unnamed (from /etc/localtime)"),
                "store time zone for rules' hours, quiet hours and \"today\""
            );
            self.clock = ZoneClock::new(zone.clone());
        }
        self.settings = settings;
    }

    /// Where monotonic 0 is on the wall clock (Unix ms), for local time of day and dates.
    pub fn set_wall_origin(&mut self, wall_at_zero_ms: i64) {
        self.wall_at_zero_ms = wall_at_zero_ms;
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The durations dwell rules ask for, ascending, for presence to report.
    pub fn dwell_thresholds(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self
            .rules
            .iter()
            .filter(|r| r.on == Trigger::Dwell)
            .map(|r| r.dwell_s)
            .collect();
        d.sort_unstable();
        d.dedup();
        d
    }

    /// Dwell rules that can never fire because presence reports no duration as long as theirs
    /// (`reported_s`: `[presence] dwell_s`).
    pub fn unreachable_dwell_rules(&self, reported_s: &[u64]) -> Vec<&str> {
        let longest = reported_s.iter().copied().max();
        self.rules
            .iter()
            .filter(|r| r.on == Trigger::Dwell && longest.is_none_or(|l| l < r.dwell_s))
            .map(|r| r.name.as_str())
            .collect()
    }

    /// True (once per [`PLANNED_EVERY_MS`]) when planned triggers should be checked for the
    /// members present, and there are planned rules to check.
    pub fn planned_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_planned_ms || !self.rules.iter().any(|r| r.on.planned()) {
            return false;
        }
        self.next_planned_ms = now_ms + PLANNED_EVERY_MS;
        true
    }

    fn local(&mut self, at_ms: u64) -> LocalTime {
        let wall = self.wall_at_zero_ms.saturating_add(at_ms as i64);
        self.clock.local(wall)
    }

    /// The reaction to one occasion: the first rule (highest priority first) that matches and is
    /// not cooling down for this member. A cooling-down rule is skipped and the next may react.
    /// The chosen rule's clerk alert is withheld in quiet hours or beyond the rate limit; its
    /// other actions still go. If nothing is left, no lower rule is tried: one occasion, at most
    /// one rule.
    pub fn react(&mut self, o: &Occasion) -> Verdict {
        let local = self.local(o.at_ms);
        if local.day != self.today {
            // A new local day: yesterday's arrivals no longer make today's visit a repeat.
            self.today = local.day;
            self.arrived_on.retain(|_, d| *d == local.day);
        }
        let id = &o.member.member_id;
        let mut first_today = false;
        match o.what {
            Happening::Arrive => {
                first_today = self.arrived_on.get(id) != Some(&local.day);
                if self.arrived_on.len() >= MEMORY_CAP {
                    self.arrived_on.clear();
                }
                self.arrived_on.insert(id.clone(), local.day);
                self.reacted_this_visit.remove(id);
            }
            Happening::Depart => {
                self.reacted_this_visit.remove(id);
                self.dwell_fired.retain(|(_, v)| v != o.visit_id);
            }
            Happening::Scheduled if self.reacted_this_visit.contains(id) => {
                return Verdict::default();
            }
            _ => {}
        }
        let dwell = matches!(o.what, Happening::Dwell { .. });
        let mut held = Held::default();
        for rule in &self.rules {
            if !rule.matches(o, local, first_today) {
                continue;
            }
            let visit_key = (rule.name.clone(), o.visit_id.to_string());
            if dwell && self.dwell_fired.contains(&visit_key) {
                continue;
            }
            let key = (rule.name.clone(), id.clone());
            if let Some(&at) = self.last_fired.get(&key)
                && o.at_ms.saturating_sub(at) < rule.cooldown_ms
            {
                held.cooldown += 1;
                continue;
            }
            let message = rule.message.as_ref().map(|t| t.render(o.member, o.zone));
            let mut alert = None;
            if let Some(message) = &message {
                if self
                    .settings
                    .quiet_hours
                    .is_some_and(|q| q.contains(local.minute))
                {
                    held.quiet_hours += 1;
                } else if !self.bucket.take(o.at_ms) {
                    held.rate_limit += 1;
                } else {
                    alert = Some(Reaction {
                        rule: rule.name.clone(),
                        priority: rule.priority,
                        message: message.clone(),
                        overdue_days: days_past_overdue_after(o.member, local.day)
                            .filter(|d| *d > 0),
                    });
                }
            }
            let wall = self.wall_at_zero_ms.saturating_add(o.at_ms as i64);
            let actions = actions_of(rule, o, wall, message.as_deref());
            if alert.is_none() && actions.is_empty() {
                return Verdict {
                    held,
                    ..Verdict::default()
                };
            }
            self.last_fired.insert(key, o.at_ms);
            if dwell {
                if self.dwell_fired.len() >= MEMORY_CAP {
                    self.dwell_fired.clear();
                }
                self.dwell_fired.insert(visit_key);
            }
            if o.what != Happening::Depart {
                if self.reacted_this_visit.len() >= MEMORY_CAP {
                    self.reacted_this_visit.clear();
                }
                self.reacted_this_visit.insert(id.clone());
            }
            return Verdict {
                alert,
                actions,
                held,
            };
        }
        Verdict {
            held,
            ..Verdict::default()
        }
    }

    /// Forgets cooldowns that have run out, so memory stays bounded by recent visitors.
    pub fn prune(&mut self, now_ms: u64) {
        let longest = self.rules.iter().map(|r| r.cooldown_ms).max().unwrap_or(0);
        self.last_fired
            .retain(|_, at| now_ms.saturating_sub(*at) < longest);
    }
}

fn build_rule(spec: RuleSpec) -> Result<Rule, String> {
    let on = spec.on;
    let only_for = |set: bool, key: &str, trigger: Trigger| {
        if set && on != trigger {
            Err(format!(
                "{key} only applies to on = \"{}\"",
                trigger.as_str()
            ))
        } else {
            Ok(())
        }
    };
    only_for(spec.dwell_s.is_some(), "dwell_s", Trigger::Dwell)?;
    only_for(
        spec.overdue_days.is_some(),
        "overdue_days",
        Trigger::Overdue,
    )?;
    only_for(
        spec.birthday_days.is_some(),
        "birthday_days",
        Trigger::BirthdayWeek,
    )?;
    if on == Trigger::Dwell && spec.dwell_s.is_none() {
        return Err("a dwell rule needs dwell_s (seconds in the zone)".into());
    }
    if on == Trigger::Overdue && spec.overdue_days.is_none() {
        return Err("an overdue rule needs overdue_days".into());
    }
    if spec.message.is_none() && spec.mqtt.is_none() && spec.webhook.is_none() {
        return Err("a rule needs a message (clerk alert), mqtt or webhook".into());
    }
    if spec.birthday_days.is_some_and(|d| d > 183) {
        return Err("birthday_days must be at most 183".into());
    }
    if let Some(c) = spec.consent.as_deref()
        && !CONSENTS.contains(&c)
    {
        return Err(format!(
            "unknown consent {c:?} (the member record has \"presence\" and \"marketing\")"
        ));
    }
    let hours = spec.hours.as_deref().map(HoursRange::parse).transpose()?;
    let message = spec.message.as_deref().map(Template::parse).transpose()?;
    let mqtt = match spec.mqtt {
        Some(m) => {
            if m.topic.is_empty() || m.topic.contains(['+', '#']) {
                return Err(format!(
                    "mqtt topic {:?} must be non-empty with no + or # wildcards",
                    m.topic
                ));
            }
            Some(MqttAction {
                topic: Template::parse(&m.topic)?,
                payload: m.payload.as_deref().map(Template::parse).transpose()?,
            })
        }
        None => None,
    };
    if let Some(w) = &spec.webhook {
        actions::check_webhook_url(&w.url)?;
        if w.timeout_ms == 0 || w.retries > 20 {
            return Err("webhook timeout_ms must be above 0 and retries at most 20".into());
        }
    }
    Ok(Rule {
        name: spec.name,
        on,
        tiers: spec.tiers,
        stages: spec.stages,
        tags_any: spec.tags_any,
        tags_all: spec.tags_all,
        tags_none: spec.tags_none,
        groups: spec.groups,
        consent: spec.consent,
        hours,
        zones: spec.zones,
        dwell_s: spec.dwell_s.unwrap_or(0),
        overdue_days: i64::from(spec.overdue_days.unwrap_or(0)),
        birthday_days: spec.birthday_days.unwrap_or(3),
        priority: spec.priority,
        message,
        mqtt,
        webhook: spec.webhook,
        cooldown_ms: spec.cooldown_s.saturating_mul(1000),
    })
}

/// The reaction as JSON: the webhook body and the default MQTT payload.
fn reaction_json(
    rule: &Rule,
    o: &Occasion,
    wall_ms: i64,
    id: &str,
    message: Option<&str>,
) -> Vec<u8> {
    let m = o.member;
    serde_json::json!({
        "id": id,
        "rule": rule.name,
        "trigger": rule.on.as_str(),
        "member_id": m.member_id,
        "display_name": m.display_name,
        "tier": m.tier,
        "stage": m.stage,
        "tags": m.tags,
        "zone": o.zone,
        "at_ms": wall_ms,
        "message": message,
    })
    .to_string()
    .into_bytes()
}

fn actions_of(rule: &Rule, o: &Occasion, wall_ms: i64, message: Option<&str>) -> Vec<Action> {
    if rule.mqtt.is_none() && rule.webhook.is_none() {
        return Vec::new();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut out = Vec::new();
    if let Some(m) = &rule.mqtt {
        out.push(Action::Mqtt {
            rule: rule.name.clone(),
            topic: m.topic.render(o.member, o.zone),
            payload: match &m.payload {
                Some(t) => t.render(o.member, o.zone).into_bytes(),
                None => reaction_json(rule, o, wall_ms, &id, message),
            },
        });
    }
    if let Some(w) = &rule.webhook {
        out.push(Action::Webhook(Webhook {
            rule: rule.name.clone(),
            url: w.url.clone(),
            key: id.clone(),
            body: reaction_json(rule, o, wall_ms, &id, message),
            timeout_ms: w.timeout_ms,
            retries: w.retries,
            backoff_ms: w.backoff_ms,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use instore_protocol::member::LastPurchase;

    use super::{calendar::days_from_civil, *};

    const RULES: &str = r#"
[[rules]]
name = "vip-arrival"
on = "arrive"
tiers = ["platinum", "gold"]
priority = "high"
message = "{display_name} ({tier}) is at the {zone}"
cooldown_s = 600

[[rules]]
name = "linen-fan"
on = "arrive"
tags_any = ["linen"]
message = "{display_name} likes {tags}"
cooldown_s = 600
"#;

    fn member(tier: &str, tags: &[&str]) -> Member {
        Member {
            member_id: "M1".into(),
            display_name: "Ms. Li".into(),
            tier: tier.into(),
            stage: Some("value".into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            groups: vec![],
            birthday: None,
            last_purchase: None,
            last_visit: None,
            consent: Default::default(),
            ..Default::default()
        }
    }

    /// Unix ms of a local (UTC) date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> u64 {
        (days_from_civil(y, mo, d) * 86_400_000 + (h * 60 + mi) * 60_000) as u64
    }

    fn occ<'a>(what: Happening, m: &'a Member, zone: &'a str, at_ms: u64) -> Occasion<'a> {
        Occasion {
            what,
            member: m,
            zone,
            visit_id: "v1",
            at_ms,
        }
    }

    fn fired(r: &mut Rules, what: Happening, m: &Member, zone: &str, at_ms: u64) -> Option<String> {
        let v = r.react(&occ(what, m, zone, at_ms));
        v.alert
            .map(|a| a.rule)
            .or_else(|| v.actions.first().map(|a| format!("action:{}", a.kind())))
    }

    fn fixed_zone(min: i32) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(min * 60).unwrap())
    }

    /// Unix ms of a Berlin wall-clock time, from the tz database: the tests name their zone and
    /// never read the machine's.
    fn berlin(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond() as u64
    }

    fn in_berlin(r: &mut Rules, quiet_hours: Option<&str>) {
        r.set_settings(ReactSettings {
            zone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            quiet_hours: quiet_hours.map(|q| HoursRange::parse(q).unwrap()),
            ..Default::default()
        });
    }

    fn one(rule: &str) -> Rules {
        Rules::parse(&format!("[[rules]]\nname = \"r\"\n{rule}"), "t").unwrap()
    }

    #[test]
    fn a_gold_member_arriving_gets_one_alert_from_the_highest_priority_rule() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let m = member("gold", &["linen"]);
        let v = r.react(&occ(Happening::Arrive, &m, "entrance", 0));
        let reaction = v.alert.unwrap();
        assert_eq!(reaction.rule, "vip-arrival");
        assert_eq!(reaction.message, "Ms. Li (gold) is at the entrance");
        assert_eq!(reaction.priority, AlertPriority::High);
        assert!(v.actions.is_empty());
    }

    #[test]
    fn conditions_on_tier_tags_and_trigger_are_honoured() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let (bronze, gold) = (member("bronze", &[]), member("gold", &[]));
        assert_eq!(fired(&mut r, Happening::Arrive, &bronze, "e", 0), None);
        assert_eq!(fired(&mut r, Happening::Depart, &gold, "e", 0), None);
        let linen = member("bronze", &["linen"]);
        let v = r.react(&occ(Happening::Arrive, &linen, "till", 0));
        assert_eq!(v.alert.unwrap().message, "Ms. Li likes linen");
    }

    #[test]
    fn each_trigger_fires_only_on_its_own_happening() {
        let m = member("gold", &[]);
        for (on, what) in [
            ("arrive", Happening::Arrive),
            ("depart", Happening::Depart),
            ("qr_scan", Happening::QrScan),
        ] {
            let mut r = one(&format!("on = \"{on}\"\nmessage = \"hi\"\n"));
            for other in [
                Happening::Arrive,
                Happening::Depart,
                Happening::QrScan,
                Happening::Scheduled,
                Happening::Dwell { dwell_s: 9999 },
            ] {
                let got = fired(&mut r, other, &m, "e", 0);
                assert_eq!(got.is_some(), other == what, "{on} on {other:?}");
            }
        }
    }

    #[test]
    fn a_dwell_rule_fires_once_per_visit_when_its_duration_is_reached() {
        let mut r = one(
            "on = \"dwell\"\ndwell_s = 300\nzones = [\"fitting-rooms\"]\nmessage = \"m\"\ncooldown_s = 0\n",
        );
        let m = member("gold", &[]);
        let dwell = |s| Happening::Dwell { dwell_s: s };
        assert_eq!(fired(&mut r, dwell(120), &m, "fitting-rooms", 1), None);
        assert_eq!(fired(&mut r, dwell(300), &m, "entrance", 2), None, "zone");
        assert!(fired(&mut r, dwell(300), &m, "fitting-rooms", 3).is_some());
        assert_eq!(
            fired(&mut r, dwell(900), &m, "fitting-rooms", 4),
            None,
            "once per visit, even with no cooldown"
        );
        // The visit ends; the next visit may fire again.
        assert_eq!(
            fired(&mut r, Happening::Depart, &m, "fitting-rooms", 5),
            None
        );
        assert!(fired(&mut r, dwell(600), &m, "fitting-rooms", 6).is_some());
        assert_eq!(r.dwell_thresholds(), [300]);
        assert_eq!(r.unreachable_dwell_rules(&[60, 600]), Vec::<&str>::new());
        assert_eq!(r.unreachable_dwell_rules(&[60, 120]), ["r"]);
    }

    #[test]
    fn first_visit_today_fires_on_the_first_arrival_of_each_local_day() {
        let mut r = one("on = \"first_visit_today\"\nmessage = \"welcome\"\ncooldown_s = 0\n");
        r.set_settings(ReactSettings {
            zone: fixed_zone(120),
            ..Default::default()
        });
        let m = member("silver", &[]);
        let morning = at(2026, 11, 23, 8, 0);
        assert!(fired(&mut r, Happening::Arrive, &m, "e", morning).is_some());
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", morning + 3_600_000),
            None
        );
        // 21:59 UTC is 23:59 local: still today. 22:01 UTC is tomorrow, local.
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 21, 59)),
            None
        );
        assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 22, 1)).is_some());
        assert_eq!(
            fired(&mut r, Happening::Depart, &m, "e", at(2026, 11, 23, 22, 2)),
            None
        );
    }

    #[test]
    fn birthday_week_fires_on_arrival_or_on_the_schedule_within_the_window() {
        let mut r =
            one("on = \"birthday_week\"\nmessage = \"happy birthday\"\ncooldown_s = 86400\n");
        let mut m = member("silver", &[]);
        m.birthday = Some("11-26".into());
        assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)).is_some());
        let mut r = one("on = \"birthday_week\"\nmessage = \"happy birthday\"\n");
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 19, 10, 0)),
            None
        );
        assert!(
            fired(
                &mut r,
                Happening::Scheduled,
                &m,
                "e",
                at(2026, 11, 29, 10, 0)
            )
            .is_some()
        );
        m.birthday = None;
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 26, 10, 0)),
            None
        );
        assert!(r.planned_due(0));
        assert!(!r.planned_due(PLANNED_EVERY_MS - 1));
        assert!(r.planned_due(PLANNED_EVERY_MS));
    }

    #[test]
    fn overdue_fires_when_the_last_purchase_is_old_enough() {
        let mut r = one("on = \"overdue\"\noverdue_days = 60\nmessage = \"long time no see\"\n");
        let mut m = member("gold", &[]);
        m.last_purchase = Some(LastPurchase {
            date: "2026-09-24".into(),
            summary: "linen shirt".into(),
        });
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 22, 10, 0)),
            None
        );
        assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)).is_some());
        m.last_purchase = None;
        m.member_id = "M2".into();
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 10, 0)),
            None
        );
    }

    #[test]
    fn overdue_counts_from_the_last_visit_when_the_record_has_one() {
        let mut r = one("on = \"overdue\"\noverdue_days = 60\nmessage = \"m\"\ncooldown_s = 0\n");
        let mut m = member("gold", &[]);
        // Bought long ago but came in last month: not overdue.
        m.last_purchase = Some(LastPurchase {
            date: "2026-01-10".into(),
            summary: "coat".into(),
        });
        m.last_visit = Some("2026-10-30".into());
        let day = at(2026, 11, 23, 10, 0);
        assert_eq!(fired(&mut r, Happening::Scheduled, &m, "e", day), None);
        // Visited long ago, bought recently elsewhere (online): the visit decides.
        m.last_purchase = Some(LastPurchase {
            date: "2026-11-20".into(),
            summary: "scarf".into(),
        });
        m.last_visit = Some("2026-09-24".into());
        assert!(fired(&mut r, Happening::Scheduled, &m, "e", day).is_some());
        // No visit recorded: the purchase date stands in.
        m.last_visit = None;
        m.member_id = "M2".into();
        assert_eq!(fired(&mut r, Happening::Scheduled, &m, "e", day), None);
    }

    #[test]
    fn overdue_counts_days_past_head_offices_overdue_after_when_the_record_has_it() {
        let mut r = one("on = \"overdue\"\noverdue_days = 3\nmessage = \"m\"\ncooldown_s = 0\n");
        let mut m = member("gold", &[]);
        // Last visit long ago, but head office expects them only later: not overdue yet.
        m.last_visit = Some("2026-01-01".into());
        m.overdue_after = Some("2026-11-21".into());
        assert_eq!(
            fired(
                &mut r,
                Happening::Scheduled,
                &m,
                "e",
                at(2026, 11, 23, 10, 0)
            ),
            None
        );
        let v = r.react(&occ(Happening::Scheduled, &m, "e", at(2026, 11, 24, 10, 0)));
        let alert = v.alert.expect("three days past overdue_after");
        assert_eq!(
            alert.overdue_days,
            Some(3),
            "the clerk card says overdue 3 days"
        );
        // overdue_days = 0 still needs the date to be past.
        let mut r = one("on = \"overdue\"\noverdue_days = 0\nmessage = \"m\"\ncooldown_s = 0\n");
        m.member_id = "M2".into();
        assert_eq!(
            fired(
                &mut r,
                Happening::Scheduled,
                &m,
                "e",
                at(2026, 11, 21, 10, 0)
            ),
            None
        );
        assert!(
            fired(
                &mut r,
                Happening::Scheduled,
                &m,
                "e",
                at(2026, 11, 22, 10, 0)
            )
            .is_some()
        );
        assert_eq!(
            days_past_overdue_after(&m, parse_date("2026-11-01").unwrap()),
            Some(0)
        );
    }

    #[test]
    fn the_schedule_leaves_alone_members_who_already_got_a_reaction_this_visit() {
        let rules = "[[rules]]\nname = \"hello\"\non = \"arrive\"\nmessage = \"hi\"\npriority = \"high\"\n\
                     [[rules]]\nname = \"bday\"\non = \"birthday_week\"\nmessage = \"bday\"\n";
        let mut r = Rules::parse(rules, "t").unwrap();
        let mut m = member("gold", &[]);
        m.birthday = Some("11-23".into());
        let t = at(2026, 11, 23, 10, 0);
        assert_eq!(
            fired(&mut r, Happening::Arrive, &m, "e", t).as_deref(),
            Some("hello")
        );
        assert_eq!(
            fired(&mut r, Happening::Scheduled, &m, "e", t + 60_000),
            None
        );
        // Next visit (after a depart), the scheduled check may speak.
        fired(&mut r, Happening::Depart, &m, "e", t + 120_000);
        assert_eq!(
            fired(&mut r, Happening::Scheduled, &m, "e", t + 180_000).as_deref(),
            Some("bday")
        );
    }

    /// A condition, a change that satisfies it, and one that does not.
    type Case = (&'static str, fn(&mut Member), fn(&mut Member));

    #[test]
    fn conditions_on_stage_tags_groups_consent_hours_and_zone_are_honoured() {
        let cases: &[Case] = &[
            (
                "stages = [\"stick\"]",
                |m| m.stage = Some("stick".into()),
                |m| m.stage = None,
            ),
            (
                "tags_all = [\"a\", \"b\"]",
                |m| m.tags = vec!["a".into(), "b".into(), "c".into()],
                |m| m.tags = vec!["a".into()],
            ),
            (
                "tags_none = [\"staff\"]",
                |m| m.tags = vec![],
                |m| m.tags = vec!["staff".into()],
            ),
            (
                "groups = [\"vip-club\"]",
                |m| m.groups = vec!["vip-club".into()],
                |m| m.groups = vec!["other".into()],
            ),
            (
                "consent = \"marketing\"",
                |m| m.consent.marketing = true,
                // The old tag convention no longer stands in for the record's flag.
                |m| {
                    m.consent.marketing = false;
                    m.tags = vec!["consent:marketing".into()];
                },
            ),
        ];
        for (cond, yes, no) in cases {
            let mut r = one(&format!(
                "on = \"arrive\"\n{cond}\nmessage = \"m\"\ncooldown_s = 0\n"
            ));
            let mut m = member("gold", &[]);
            yes(&mut m);
            assert!(
                fired(&mut r, Happening::Arrive, &m, "e", 0).is_some(),
                "{cond} yes"
            );
            no(&mut m);
            assert_eq!(
                fired(&mut r, Happening::Arrive, &m, "e", 0),
                None,
                "{cond} no"
            );
        }
        let mut r = one(
            "on = \"arrive\"\nconsent = \"presence\"\nhours = \"10:00-18:00\"\nzones = [\"till\"]\nmessage = \"m\"\ncooldown_s = 0\n",
        );
        let m = member("gold", &[]);
        assert!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "till",
                at(2026, 11, 23, 10, 0)
            )
            .is_some()
        );
        assert_eq!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "till",
                at(2026, 11, 23, 18, 0)
            ),
            None
        );
        assert_eq!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "door",
                at(2026, 11, 23, 12, 0)
            ),
            None
        );
        // Hours are local: at UTC-5, 16:00 UTC is 11:00.
        r.set_settings(ReactSettings {
            zone: fixed_zone(-300),
            ..Default::default()
        });
        assert!(
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "till",
                at(2026, 11, 23, 20, 0)
            )
            .is_some()
        );
    }

    #[test]
    fn rule_hours_follow_berlin_local_time_on_both_sides_of_each_dst_change() {
        let mut r = one("on = \"arrive\"\nhours = \"09:00-18:00\"\nmessage = \"m\"\n");
        in_berlin(&mut r, None);
        // 2026-03-29: CET (UTC+1) → CEST (UTC+2). 2026-10-25: back to CET. A fixed offset would
        // be an hour off on one side of each change: 09:30 CEST is 08:30 at UTC+1.
        let mut n = 0;
        let mut arrive = |r: &mut Rules, at_ms: u64| {
            n += 1;
            let mut m = member("gold", &[]);
            m.member_id = format!("M{n}");
            fired(r, Happening::Arrive, &m, "e", at_ms)
        };
        for (mo, d) in [(3, 28), (3, 30), (10, 24), (10, 26)] {
            assert!(
                arrive(&mut r, berlin(2026, mo, d, 9, 30)).is_some(),
                "09:30 on {mo}-{d}"
            );
            assert!(
                arrive(&mut r, berlin(2026, mo, d, 17, 59)).is_some(),
                "17:59 on {mo}-{d}"
            );
            assert_eq!(arrive(&mut r, berlin(2026, mo, d, 8, 59)), None, "{mo}-{d}");
            assert_eq!(arrive(&mut r, berlin(2026, mo, d, 18, 0)), None, "{mo}-{d}");
        }
    }

    #[test]
    fn quiet_hours_follow_berlin_local_time_across_the_dst_changes() {
        let mut r = one("on = \"arrive\"\nmessage = \"m\"\ncooldown_s = 0\n");
        in_berlin(&mut r, Some("22:00-07:00"));
        let m = member("gold", &[]);
        let quiet = |r: &mut Rules, at_ms: u64| {
            let v = r.react(&occ(Happening::Arrive, &m, "e", at_ms));
            assert_eq!(v.alert.is_none(), v.held.quiet_hours == 1);
            v.held.quiet_hours == 1
        };
        for (mo, d) in [(3, 28), (3, 30), (10, 24), (10, 26)] {
            assert!(
                quiet(&mut r, berlin(2026, mo, d, 6, 59)),
                "06:59 on {mo}-{d}"
            );
            assert!(
                !quiet(&mut r, berlin(2026, mo, d, 7, 0)),
                "07:00 on {mo}-{d}"
            );
            assert!(
                !quiet(&mut r, berlin(2026, mo, d, 21, 59)),
                "21:59 on {mo}-{d}"
            );
            assert!(
                quiet(&mut r, berlin(2026, mo, d, 22, 0)),
                "22:00 on {mo}-{d}"
            );
        }
        // The nights of the changes themselves: 03:30 CEST (01:30 UTC) on 29 March, and the
        // repeated 02:30 hour on 25 October (00:30 and 01:30 UTC), are all quiet; 07:00 is not.
        let spring = at(2026, 3, 29, 1, 30);
        assert!(quiet(&mut r, spring));
        assert!(!quiet(&mut r, berlin(2026, 3, 29, 7, 0)));
        assert!(quiet(&mut r, at(2026, 10, 25, 0, 30)));
        assert!(quiet(&mut r, at(2026, 10, 25, 1, 30)));
        assert!(quiet(&mut r, berlin(2026, 10, 25, 6, 59)));
        assert!(!quiet(&mut r, berlin(2026, 10, 25, 7, 0)));
    }

    #[test]
    fn first_visit_today_resets_at_berlin_midnight_in_summer_and_winter_time() {
        let mut r = one("on = \"first_visit_today\"\nmessage = \"welcome\"\ncooldown_s = 0\n");
        in_berlin(&mut r, None);
        let m = member("silver", &[]);
        // Midnights either side of the autumn change (UTC+2, then UTC+1) and the spring change.
        // A fixed offset would put one of each pair an hour early or late.
        for (mo, d, next) in [(10, 24, 25), (10, 25, 26), (3, 28, 29), (3, 29, 30)] {
            fired(
                &mut r,
                Happening::Arrive,
                &m,
                "e",
                berlin(2026, mo, d, 22, 30),
            );
            assert_eq!(
                fired(
                    &mut r,
                    Happening::Arrive,
                    &m,
                    "e",
                    berlin(2026, mo, d, 23, 59)
                ),
                None,
                "again before midnight on {mo}-{d}"
            );
            assert!(
                fired(
                    &mut r,
                    Happening::Arrive,
                    &m,
                    "e",
                    berlin(2026, mo, next, 0, 1)
                )
                .is_some(),
                "first after midnight into {mo}-{next}"
            );
            assert_eq!(
                fired(
                    &mut r,
                    Happening::Arrive,
                    &m,
                    "e",
                    berlin(2026, mo, next, 8, 0)
                ),
                None,
                "again in the morning of {mo}-{next}"
            );
        }
    }

    #[test]
    fn zone_settings_name_the_key_at_fault() {
        let cfg = |tz: Option<&str>, off: Option<i32>| crate::config::ReactConfig {
            timezone: tz.map(str::to_string),
            timezone_offset_min: off,
            ..Default::default()
        };
        let zone = |c| ReactSettings::from_config(&c).map(|s| s.zone);
        assert_eq!(
            zone(cfg(Some("America/New_York"), None))
                .unwrap()
                .iana_name(),
            Some("America/New_York")
        );
        assert_eq!(zone(cfg(None, Some(-300))).unwrap(), fixed_zone(-300));
        let err = zone(cfg(Some("Mars/Olympus_Mons"), None)).unwrap_err();
        assert!(
            err.key == "timezone" && err.reason.contains("Mars/Olympus_Mons"),
            "{err}"
        );
        assert_eq!(
            zone(cfg(None, Some(900))).unwrap_err().key,
            "timezone_offset_min"
        );
        assert_eq!(
            zone(cfg(Some("UTC"), Some(0))).unwrap_err().key,
            "timezone_offset_min"
        );
    }

    #[test]
    fn the_cooldown_holds_back_a_repeat_then_lets_it_through() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let m = member("gold", &[]);
        assert!(fired(&mut r, Happening::Arrive, &m, "e", 0).is_some());
        let v = r.react(&occ(Happening::Arrive, &m, "e", 599_999));
        assert_eq!((v.alert, v.held.cooldown), (None, 1));
        assert!(fired(&mut r, Happening::Arrive, &m, "e", 600_000).is_some());
    }

    #[test]
    fn quiet_hours_withhold_clerk_alerts_but_not_webhooks() {
        let rules = "[[rules]]\nname = \"a\"\non = \"arrive\"\nmessage = \"m\"\ncooldown_s = 0\n\
                     [[rules]]\nname = \"crm\"\non = \"depart\"\nmessage = \"m\"\nwebhook = { url = \"http://127.0.0.1:9/h\" }\n";
        let mut r = Rules::parse(rules, "t").unwrap();
        r.set_settings(ReactSettings {
            quiet_hours: Some(HoursRange::parse("22:00-07:00").unwrap()),
            ..Default::default()
        });
        let m = member("gold", &[]);
        let v = r.react(&occ(Happening::Arrive, &m, "e", at(2026, 11, 23, 6, 59)));
        assert_eq!((v.alert, v.held.quiet_hours), (None, 1));
        assert!(fired(&mut r, Happening::Arrive, &m, "e", at(2026, 11, 23, 7, 0)).is_some());
        let v = r.react(&occ(Happening::Depart, &m, "e", at(2026, 11, 23, 23, 0)));
        assert_eq!(v.alert, None);
        assert_eq!(v.actions.len(), 1);
        assert_eq!(v.held.quiet_hours, 1);
    }

    #[test]
    fn the_store_rate_limit_withholds_alerts_beyond_the_bucket() {
        let mut r = one("on = \"arrive\"\nmessage = \"m\"\n");
        r.set_settings(ReactSettings {
            alerts_per_minute: 2,
            alert_burst: 2,
            ..Default::default()
        });
        let mut got = Vec::new();
        for i in 0..4 {
            let mut m = member("gold", &[]);
            m.member_id = format!("M{i}");
            let v = r.react(&occ(Happening::Arrive, &m, "e", 1000));
            got.push((v.alert.is_some(), v.held.rate_limit));
        }
        assert_eq!(got, [(true, 0), (true, 0), (false, 1), (false, 1)]);
        let mut m = member("gold", &[]);
        m.member_id = "M9".into();
        assert!(fired(&mut r, Happening::Arrive, &m, "e", 31_000).is_some());
    }

    #[test]
    fn actions_carry_templates_and_one_idempotency_key() {
        let mut r = one(
            "on = \"qr_scan\"\nmqtt = { topic = \"instore/s1/greet/{zone}\", payload = \"{member_id}@{zone}\" }\n\
             webhook = { url = \"https://crm.example/hook\", retries = 2 }\n",
        );
        let m = member("gold", &[]);
        let v = r.react(&occ(Happening::QrScan, &m, "till", 5));
        assert_eq!(v.alert, None, "no message: no clerk alert");
        let [Action::Mqtt { topic, payload, .. }, Action::Webhook(w)] = &v.actions[..] else {
            panic!("{:?}", v.actions)
        };
        assert_eq!(topic, "instore/s1/greet/till");
        assert_eq!(payload, b"M1@till");
        let body: serde_json::Value = serde_json::from_slice(&w.body).unwrap();
        assert_eq!(body["id"], w.key.as_str());
        assert_eq!(body["trigger"], "qr_scan");
        assert_eq!(body["zone"], "till");
        assert_eq!((w.retries, w.timeout_ms), (2, 5000));
    }

    #[test]
    fn a_reload_keeps_cooldowns() {
        let mut r = Rules::parse(RULES, "t").unwrap();
        let m = member("gold", &[]);
        assert!(fired(&mut r, Happening::Arrive, &m, "e", 0).is_some());
        r.replace(Rules::parse(RULES, "t").unwrap());
        assert!(fired(&mut r, Happening::Arrive, &m, "e", 1000).is_none());
    }

    #[test]
    fn a_bad_rules_file_names_the_rule_and_line() {
        let bad = RULES.replace("{display_name} likes", "{nickname} likes");
        let err = Rules::parse(&bad, "rules.toml").unwrap_err().to_string();
        assert!(
            err.contains("linen-fan") && err.contains("line 11") && err.contains("nickname"),
            "{err}"
        );
        let err = Rules::parse(
            "[[rules]]\nname = \"x\"\non = \"teleport\"\nmessage = \"\"\n",
            "r",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3"), "{err}");
        for (body, why) in [
            ("on = \"dwell\"\nmessage = \"m\"", "needs dwell_s"),
            (
                "on = \"arrive\"\ndwell_s = 5\nmessage = \"m\"",
                "only applies",
            ),
            ("on = \"overdue\"\nmessage = \"m\"", "overdue_days"),
            (
                "on = \"arrive\"\nconsent = \"newsletter\"\nmessage = \"m\"",
                "unknown consent",
            ),
            ("on = \"arrive\"", "needs a message"),
            (
                "on = \"arrive\"\nhours = \"9-5\"\nmessage = \"m\"",
                "time range",
            ),
            ("on = \"arrive\"\nmqtt = { topic = \"a/+/b\" }", "wildcards"),
            ("on = \"arrive\"\nwebhook = { url = \"ftp://x\" }", "http"),
        ] {
            let err = Rules::parse(&format!("\n[[rules]]\nname = \"x\"\n{body}\n"), "r")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why) && err.contains("line 3"), "{body}: {err}");
        }
    }

    #[test]
    fn the_shipped_rules_alert_on_platinum_and_gold_arrivals() {
        let mut r = Rules::parse(include_str!("../../examples/rules.toml"), "rules.toml").unwrap();
        for (tier, alerts) in [("platinum", true), ("gold", true), ("silver", false)] {
            let m = Member {
                member_id: tier.into(),
                ..member(tier, &[])
            };
            let got = r.react(&occ(Happening::Arrive, &m, "entrance", 0)).alert;
            assert_eq!(got.is_some(), alerts, "{tier}");
        }
    }

    #[test]
    fn the_demo_rules_parse() {
        let r = Rules::parse(include_str!("../../../demo/demo-rules.toml"), "demo").unwrap();
        assert!(!r.is_empty());
    }

    proptest::proptest! {
        /// Over any sequence of arrivals of a few members, no rule reacts to a member twice within
        /// its cooldown, and clerk alerts never exceed the bucket: at most
        /// burst + per_minute × window / 1 min in any window.
        #[test]
        fn cooldowns_and_the_rate_limit_are_never_exceeded(
            steps in proptest::collection::vec((0u64..20_000, 0u8..6, proptest::bool::ANY), 1..300),
            per_minute in 1u32..20,
            burst in 1u32..5,
        ) {
            let mut r = Rules::parse(RULES, "t").unwrap();
            r.set_settings(ReactSettings { alerts_per_minute: per_minute, alert_burst: burst, ..Default::default() });
            let mut now = 0;
            let mut alerts: Vec<u64> = Vec::new();
            let mut by_rule_member: HashMap<(String, String), Vec<u64>> = HashMap::new();
            for (gap, who, linen) in steps {
                now += gap;
                let mut m = member(if who % 2 == 0 { "gold" } else { "bronze" }, if linen { &["linen"] } else { &[] });
                m.member_id = format!("M{who}");
                if let Some(a) = r.react(&occ(Happening::Arrive, &m, "e", now)).alert {
                    alerts.push(now);
                    by_rule_member.entry((a.rule, m.member_id)).or_default().push(now);
                }
            }
            for times in by_rule_member.values() {
                for w in times.windows(2) {
                    proptest::prop_assert!(w[1] - w[0] >= 600_000);
                }
            }
            for (i, &start) in alerts.iter().enumerate() {
                for (j, &end) in alerts.iter().enumerate().skip(i) {
                    let allowed = u64::from(burst) + u64::from(per_minute) * (end - start) / 60_000;
                    proptest::prop_assert!((j - i + 1) as u64 <= allowed, "{} alerts in {} ms", j - i + 1, end - start);
                }
            }
        }
    }
}
