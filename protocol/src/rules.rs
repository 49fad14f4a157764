//! Reaction rules as written: the TOML shape a store's rules file and a head-office campaign
//! share, and every check that can be made without a member in hand (triggers and the keys that
//! go with them, templates' placeholders, hours, consents, holdout share, webhook URLs). Head
//! office runs the same checks on a campaign the gateway runs on its file, so a rule refused at a
//! gateway is refused at head office first, with its name and line, and never reaches a store.
//!
//! The gateway's `react` turns a checked [`RuleSpec`] into the rule it evaluates.

use serde::Deserialize;

use crate::AlertPriority;

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

    pub fn planned(self) -> bool {
        matches!(self, Trigger::BirthdayWeek | Trigger::Overdue)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub on: Trigger,
    /// Member tier must be one of these (empty: any).
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Lifecycle stage must be one of these (empty: any).
    #[serde(default)]
    pub stages: Vec<String>,
    /// Member must carry at least one of these tags (empty: any).
    #[serde(default)]
    pub tags_any: Vec<String>,
    /// Member must carry all of these tags.
    #[serde(default)]
    pub tags_all: Vec<String>,
    /// Member must carry none of these tags.
    #[serde(default)]
    pub tags_none: Vec<String>,
    /// Member must belong to at least one of these groups (empty: any).
    #[serde(default)]
    pub groups: Vec<String>,
    /// A consent the member must have given ("presence" always holds for a tracked member).
    #[serde(default)]
    pub consent: Option<String>,
    /// Local time of day, `"10:00-18:00"` (may wrap midnight).
    #[serde(default)]
    pub hours: Option<String>,
    /// Zone must be one of these (empty: any).
    #[serde(default)]
    pub zones: Vec<String>,
    /// `on = "dwell"`: seconds in the zone.
    #[serde(default)]
    pub dwell_s: Option<u64>,
    /// `on = "overdue"`: days past head office's `overdue_after` date (at least 1) when the
    /// record has one; else days since the last visit (or, for a record without one, the last
    /// purchase).
    #[serde(default)]
    pub overdue_days: Option<u32>,
    /// `on = "birthday_week"`: days either side of the birthday (default 3: a week).
    #[serde(default)]
    pub birthday_days: Option<u32>,
    #[serde(default = "default_priority")]
    pub priority: AlertPriority,
    /// The clerk alert's text; without it the rule raises no clerk alert (actions only).
    #[serde(default)]
    pub message: Option<String>,
    /// The one thing the clerk is suggested to do for this member (template, shown on the
    /// alert's member card), e.g. "Offer {display_name} the autumn preview".
    #[serde(default)]
    pub suggest: Option<String>,
    #[serde(default)]
    pub mqtt: Option<MqttSpec>,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// The same rule reacts to the same member at most once per cooldown.
    #[serde(default = "default_cooldown_s")]
    pub cooldown_s: u64,
    /// Share of members (0 to 0.5) kept as this rule's control group: they get no alert and no
    /// action, a `held_out` event goes to head office instead, which measures the uplift.
    /// Which members is fixed by rule name and member id ([`crate::holdout`]).
    #[serde(default)]
    pub holdout: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSpec {
    /// Template, e.g. `"instore/store-001/greet/{zone}"`.
    pub topic: String,
    /// Template; default: the reaction as JSON (as the webhook body).
    #[serde(default)]
    pub payload: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

pub fn default_priority() -> AlertPriority {
    AlertPriority::Normal
}
pub fn default_cooldown_s() -> u64 {
    3600
}
pub fn default_timeout_ms() -> u64 {
    5000
}
pub fn default_retries() -> u32 {
    4
}
pub fn default_backoff_ms() -> u64 {
    500
}

/// One piece of a message template.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Text(String),
    Field(&'static str),
}

/// The placeholders a template may use, filled from the member and the zone.
pub const PLACEHOLDERS: [&str; 7] = [
    "display_name",
    "member_id",
    "tier",
    "stage",
    "tags",
    "zone",
    "last_purchase",
];

/// Splits a template into text and placeholders; an unknown or unclosed placeholder is refused.
pub fn parse_template(s: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in message {s:?}"))?;
        let name = &after[..close];
        let field = PLACEHOLDERS.iter().find(|f| **f == name).ok_or_else(|| {
            format!(
                "unknown placeholder {{{name}}} in message (known: {})",
                PLACEHOLDERS.join(", ")
            )
        })?;
        parts.push(TemplatePart::Field(field));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    if parts.is_empty() {
        return Err("message must not be empty".into());
    }
    Ok(parts)
}

/// `HH:MM-HH:MM`, start inclusive, end exclusive; a range whose end is before its start wraps
/// past midnight (`22:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursRange {
    start: u32,
    end: u32,
}

impl HoursRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time range like \"10:00-18:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("{s:?} is an empty time range"));
        }
        Ok(Self { start, end })
    }

    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Checks a rule's webhook URL: absolute, http or https.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("webhook url: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("webhook url must be http:// or https://".into());
    }
    Ok(())
}

/// Presence consent is implied (members without it are never indexed); marketing consent is the
/// record's flag. Rule loading refuses any other name, so no consent is ever assumed.
pub const CONSENTS: [&str; 2] = ["presence", "marketing"];

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

/// Every check of one rule that needs no member: what [`parse_rules`] asks of each.
pub fn check_rule(spec: &RuleSpec) -> Result<(), String> {
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
    if let Some(share) = spec.holdout {
        crate::holdout::check_share(share)?;
        if spec.message.is_none() {
            return Err(
                "holdout measures clerk alerts against a control group: the rule needs a message"
                    .into(),
            );
        }
    }
    if let Some(h) = spec.hours.as_deref() {
        HoursRange::parse(h)?;
    }
    if let Some(m) = spec.message.as_deref() {
        parse_template(m)?;
    }
    if let Some(s) = spec.suggest.as_deref() {
        if spec.message.is_none() {
            return Err("suggest is shown on the clerk alert: the rule needs a message".into());
        }
        parse_template(s)?;
    }
    if let Some(m) = &spec.mqtt {
        if m.topic.is_empty() || m.topic.contains(['+', '#']) {
            return Err(format!(
                "mqtt topic {:?} must be non-empty with no + or # wildcards",
                m.topic
            ));
        }
        parse_template(&m.topic)?;
        if let Some(p) = m.payload.as_deref() {
            parse_template(p)?;
        }
    }
    if let Some(w) = &spec.webhook {
        check_webhook_url(&w.url)?;
        if w.timeout_ms == 0 || w.retries > 20 {
            return Err("webhook timeout_ms must be above 0 and retries at most 20".into());
        }
    }
    Ok(())
}

/// A rules file (or campaign) read and checked: each rule with the line it starts on. Names
/// must be non-empty and unique.
pub fn parse_rules(text: &str, origin: &str) -> Result<Vec<(RuleSpec, usize)>, RulesError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse {
        path: origin.into(),
        message: e.to_string(),
    })?;
    let mut out: Vec<(RuleSpec, usize)> = Vec::with_capacity(file.rules.len());
    for spec in file.rules {
        let line = line_of_rule(text, &spec.name);
        let invalid = |reason: String| RulesError::Invalid {
            path: origin.into(),
            rule: spec.name.clone(),
            line,
            reason,
        };
        if spec.name.trim().is_empty() {
            return Err(invalid("name must not be empty".into()));
        }
        if out.iter().any(|(r, _)| r.name == spec.name) {
            return Err(invalid("two rules share this name".into()));
        }
        check_rule(&spec).map_err(invalid)?;
        out.push((spec, line));
    }
    Ok(out)
}

/// The line (from 1) of the rule's `name = "..."`, else of the first `name` key, else 1.
fn line_of_rule(text: &str, name: &str) -> usize {
    let quoted = format!("\"{name}\"");
    let key = |l: &str| {
        let t = l.trim_start();
        t.strip_prefix("name")
            .is_some_and(|r| r.trim_start().starts_with('='))
    };
    text.lines()
        .position(|l| key(l) && l.contains(&quoted))
        .or_else(|| text.lines().position(|l| l.contains(&quoted)))
        .or_else(|| text.lines().position(key))
        .map_or(1, |i| i + 1)
}
