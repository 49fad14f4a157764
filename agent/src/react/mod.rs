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
//!
//! Where things are: `instore_protocol::rules` reads and checks a rules file (a bad rule is
//! refused with its name and line; head office checks campaigns with the same code); `spec.rs`
//! builds the checked rules; `eval.rs` matches one rule against one occasion and builds its actions; this file
//! chooses the one rule that reacts and keeps the memory (cooldowns, visits, dwell);
//! `limits.rs` is the store's alert bucket, `settings.rs` the `[react]` table, `calendar.rs`
//! local time, `template.rs` message placeholders, `actions.rs` the MQTT/webhook task.

pub mod actions;
pub mod calendar;
mod eval;
mod limits;
mod settings;
mod spec;
mod template;
#[cfg(test)]
mod tests;
pub mod watch;

use std::collections::{HashMap, HashSet};

use instore_protocol::{AlertPriority, campaign::Campaign, holdout};

pub use instore_protocol::rules::{RulesError, Trigger};

pub use self::{
    actions::{Action, ActionQueue, ActionSettings, Webhook},
    calendar::HoursRange,
    eval::days_past_overdue_after,
    settings::{ReactSettings, SettingsError},
    template::Template,
    watch::RulesWatch,
};
use self::{
    calendar::{LocalTime, ZoneClock},
    eval::actions_of,
    limits::TokenBucket,
    spec::{Rule, build_rule},
};
use crate::cache::Member;

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

/// A clerk alert a rule decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaction {
    pub rule: String,
    pub priority: AlertPriority,
    pub message: String,
    /// Days the member is overdue today by head office's `overdue_after` (the clerk card says
    /// "overdue N days"); `None` for a record without the date or not past it.
    pub overdue_days: Option<i64>,
    /// The rule's suggested action for this member, rendered.
    pub suggestion: Option<String>,
    /// `id@version` of the campaign the rule came from.
    pub campaign: Option<String>,
}

/// A rule that held the member out (its control group).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutBy {
    pub rule: String,
    pub campaign: Option<String>,
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
    /// The rule that would have alerted, had the member not been in its control group: nothing
    /// was shown or sent, and a `held_out` event records the occasion.
    pub held_out: Option<HeldOutBy>,
}

fn build_all(text: &str, origin: &str, campaign: Option<&str>) -> Result<Vec<Rule>, RulesError> {
    let specs = instore_protocol::rules::parse_rules(text, origin)?;
    let mut rules = Vec::with_capacity(specs.len());
    for (spec, line) in specs {
        let name = spec.name.clone();
        let rule = build_rule(spec, campaign.map(str::to_string)).map_err(|reason| {
            RulesError::Invalid {
                path: origin.into(),
                rule: name,
                line,
                reason,
            }
        })?;
        rules.push(rule);
    }
    Ok(rules)
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
    memory: Memory,
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
            memory: Memory::default(),
            arrived_on: HashMap::new(),
            today: i64::MIN,
            next_planned_ms: 0,
        }
    }
}

impl Rules {
    pub fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        Self::load_with(Some(path), &[]).map(|(rules, _)| rules)
    }

    /// The store's rules file (if any) and head office's campaigns, by the precedence of
    /// [`instore_protocol::campaign`]. A bad file is an error (the caller keeps the rules in
    /// force); a bad campaign (a gateway older than head office's checks) is left out and named
    /// in the second value, so one campaign cannot silence the store's own rules.
    pub fn load_with(
        path: Option<&std::path::Path>,
        campaigns: &[Campaign],
    ) -> Result<(Self, Vec<String>), RulesError> {
        let text = match path {
            Some(p) => Some((
                std::fs::read_to_string(p).map_err(|source| RulesError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
                p.display().to_string(),
            )),
            None => None,
        };
        Self::build(
            text.as_ref().map(|(t, o)| (t.as_str(), o.as_str())),
            campaigns,
        )
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        Self::build(Some((text, origin)), &[]).map(|(rules, _)| rules)
    }

    /// `local`: the rules file's text and where it came from.
    pub fn build(
        local: Option<(&str, &str)>,
        campaigns: &[Campaign],
    ) -> Result<(Self, Vec<String>), RulesError> {
        let mut rules = Vec::new();
        if let Some((text, origin)) = local {
            rules = build_all(text, origin, None)?;
        }
        let mut skipped = Vec::new();
        for c in campaigns {
            let label = c.label();
            match build_all(&c.rules, &format!("campaign {label}"), Some(&label)) {
                Ok(list) => {
                    for r in list {
                        // The store's file, then campaigns by id: the first of a name stays.
                        if !rules.iter().any(|x: &Rule| x.name == r.name) {
                            rules.push(r);
                        }
                    }
                }
                Err(e) => skipped.push(e.to_string()),
            }
        }
        // Highest priority first; file order, then campaigns, break ties (the sort is stable).
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok((
            Self {
                rules,
                ..Self::default()
            },
            skipped,
        ))
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
                self.memory.reacted_this_visit.remove(id);
            }
            Happening::Depart => {
                self.memory.reacted_this_visit.remove(id);
                self.memory.dwell_fired.retain(|(_, v)| v != o.visit_id);
            }
            Happening::Scheduled if self.memory.reacted_this_visit.contains(id) => {
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
            if dwell && self.memory.dwell_fired.contains(&visit_key) {
                continue;
            }
            let key = (rule.name.clone(), id.clone());
            if let Some(&at) = self.memory.last_fired.get(&key)
                && o.at_ms.saturating_sub(at) < rule.cooldown_ms
            {
                held.cooldown += 1;
                continue;
            }
            let quiet = self
                .settings
                .quiet_hours
                .is_some_and(|q| q.contains(local.minute));
            // Quiet hours come first: an occasion in them alerts neither group, so it is no
            // occasion of the comparison. The rate limit comes after: a held-out member takes no
            // token from the treated.
            if !quiet && holdout::held_out(&rule.name, id, rule.holdout) {
                self.memory.remember(key, visit_key, dwell, o);
                return Verdict {
                    held,
                    held_out: Some(HeldOutBy {
                        rule: rule.name.clone(),
                        campaign: rule.campaign.clone(),
                    }),
                    ..Verdict::default()
                };
            }
            let message = rule.message.as_ref().map(|t| t.render(o.member, o.zone));
            let mut alert = None;
            if let Some(message) = &message {
                if quiet {
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
                        suggestion: rule.suggest.as_ref().map(|t| t.render(o.member, o.zone)),
                        campaign: rule.campaign.clone(),
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
            self.memory.remember(key, visit_key, dwell, o);
            return Verdict {
                alert,
                actions,
                held,
                held_out: None,
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
        self.memory
            .last_fired
            .retain(|_, at| now_ms.saturating_sub(*at) < longest);
    }
}

/// What the rules remember per member (kept across reloads, by rule name).
#[derive(Debug, Default)]
struct Memory {
    /// (rule, member) → when the rule last reacted to the member.
    last_fired: HashMap<(String, String), u64>,
    /// (rule, visit) pairs a dwell rule already fired for.
    dwell_fired: HashSet<(String, String)>,
    /// Members who got a reaction during their current visit: the scheduled check leaves them be.
    reacted_this_visit: HashSet<String>,
}

impl Memory {
    /// A rule reacted (or held the member out, which counts the same): cooldown, dwell-once and
    /// the scheduled check's "already reacted this visit" start now.
    fn remember(
        &mut self,
        key: (String, String),
        visit_key: (String, String),
        dwell: bool,
        o: &Occasion,
    ) {
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
            self.reacted_this_visit.insert(o.member.member_id.clone());
        }
    }
}
