//! Evaluation of one rule against one occasion: trigger, member conditions, consent, hours and
//! zone; and the actions (MQTT, webhook) a chosen rule sends, with their JSON body.

use super::{
    Happening, Occasion, Trigger,
    actions::{Action, Webhook},
    calendar::{LocalTime, days_to_birthday, parse_date},
    spec::Rule,
};
use crate::cache::Member;

impl Rule {
    pub(super) fn matches(&self, o: &Occasion, local: LocalTime, first_today: bool) -> bool {
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
pub(super) fn overdue_days(m: &Member, today: i64) -> Option<i64> {
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

pub(super) fn actions_of(
    rule: &Rule,
    o: &Occasion,
    wall_ms: i64,
    message: Option<&str>,
) -> Vec<Action> {
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
