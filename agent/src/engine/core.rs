use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use instore_protocol::{EventBody, changes::LookupResponse};

use crate::{
    alerts::{Alert, MemberCard},
    cache::{
        IndexPatch, Member, MemberIndex, Members, RECORD_CACHE, RecordRead, Records, WindowKeys,
    },
    identify::{
        Identify,
        member_code::{CodeOutcome, MemberCodes},
        qr::{QrOutcome, identify_qr, verify_lookup},
    },
    metrics::Metrics,
    presence::{Presence, PresenceChange, PresentMember},
    react::{Action, Happening, Occasion, Rules},
    sources::Sighting,
};

/// A scanned member code whose member the gateway does not hold: head office is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct QrLookup {
    pub zone: Arc<str>,
    pub payload: String,
    /// Monotonic milliseconds of the scan.
    pub at_ms: u64,
    pub member_id: String,
}

/// Head office's answer to a [`QrLookup`].
#[derive(Debug, Clone, PartialEq)]
pub enum LookupResult {
    Found(Box<LookupResponse>),
    /// Refused, with a reason label (`not_found`, `offline`, `timeout`, `busy`, `error`).
    Refused(&'static str),
}

/// Looked-up members kept for their visit, at most.
const VISITORS_MAX: usize = 256;
/// How long a looked-up member is kept (wall ms).
const VISITOR_KEEP_MS: i64 = 4 * 3_600_000;

#[derive(Debug)]
struct Visitor {
    member: Arc<Member>,
    response: LookupResponse,
    until_wall_ms: i64,
}

/// What the core asks the shell to do. Times are the agent's monotonic milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Event {
        at_ms: u64,
        body: EventBody,
    },
    /// An alert and its `alert_raised` event: the alert goes to the clerks only after the event
    /// is committed.
    Alert {
        at_ms: u64,
        body: EventBody,
        alert: Box<Alert>,
    },
    /// A reaction's MQTT publish or webhook, for the action task once the round commits.
    Action(Box<Action>),
    /// Ask head office about a scanned code's member (answer: [`Core::on_lookup`]).
    Lookup(Box<QrLookup>),
}

const FOOTFALL_INTERVAL_MS: u64 = 60_000;
const SALT_LIFETIME_MS: u64 = 24 * 3_600_000;
/// Distinct strangers remembered per interval; past this they are still counted, not stored.
const FOOTFALL_CAP: usize = 50_000;

/// Anonymous footfall: distinct non-member devices per minute, remembered only as keyed hashes
/// whose key lives in memory and is replaced daily, so no address can be recovered or linked
/// across days. Only the count leaves this struct; the hashes are dropped every interval.
///
/// The key is SipHash's (`RandomState`) plus a 128-bit salt drawn afresh from the OS-seeded
/// generator at each rotation: successive `RandomState`s of one thread differ by one in a key
/// word, so without the salt yesterday's key would follow from today's in a memory dump.
#[derive(Debug)]
struct Footfall {
    key: RandomState,
    salt: [u8; 16],
    key_since_ms: u64,
    interval_start_ms: u64,
    seen: HashSet<u64>,
    overflow: u64,
}

impl Footfall {
    fn new(now_ms: u64) -> Self {
        Self {
            key: RandomState::new(),
            salt: rand::random(),
            key_since_ms: now_ms,
            interval_start_ms: now_ms,
            seen: HashSet::new(),
            overflow: 0,
        }
    }

    fn digest(&self, address: &[u8; 6]) -> u64 {
        self.key.hash_one((&self.salt, address))
    }

    fn observe(&mut self, address: &[u8; 6]) {
        let h = self.digest(address);
        if self.seen.len() < FOOTFALL_CAP {
            self.seen.insert(h);
        } else if !self.seen.contains(&h) {
            self.overflow += 1;
        }
    }

    fn tick(&mut self, now_ms: u64) -> Option<EventBody> {
        if now_ms.saturating_sub(self.interval_start_ms) < FOOTFALL_INTERVAL_MS {
            return None;
        }
        let unique = self.seen.len() as u64 + self.overflow;
        self.seen.clear();
        self.overflow = 0;
        self.interval_start_ms = now_ms;
        if now_ms.saturating_sub(self.key_since_ms) >= SALT_LIFETIME_MS {
            self.key = RandomState::new();
            self.salt = rand::random();
            self.key_since_ms = now_ms;
        }
        (unique > 0).then_some(EventBody::Footfall {
            interval_s: FOOTFALL_INTERVAL_MS / 1000,
            unique_devices: unique,
        })
    }
}

/// Identify → presence → react, as one piece of state with no I/O.
#[derive(Debug)]
pub struct Core {
    index: MemberIndex,
    /// Records of matched members: a bounded cache in front of `members.db` (or memory).
    records: Records,
    keys: Arc<dyn WindowKeys>,
    /// Members head office answered a lookup for, kept for their visit.
    visitors: HashMap<String, Visitor>,
    presence: Presence,
    rules: Rules,
    metrics: Metrics,
    footfall: Footfall,
    presence_changed: bool,
    /// RPA cache and rotating-ID tables derived from `index`.
    identify: Identify,
    /// Reused buffer for one sighting's presence changes.
    changes: Vec<PresenceChange>,
    /// Signed member codes: the check and the codes seen in this store.
    codes: MemberCodes,
}

impl Core {
    pub fn new(members: Members, presence: Presence, rules: Rules, metrics: Metrics) -> Self {
        let Members {
            index,
            records,
            keys,
        } = members;
        metrics.members_cached.set(index.len() as i64);
        let identify = Identify::default().with_metrics(&metrics);
        Self {
            index,
            records: Records::new(records, RECORD_CACHE),
            keys,
            visitors: HashMap::new(),
            presence,
            rules,
            metrics,
            footfall: Footfall::new(0),
            identify,
            presence_changed: true,
            changes: Vec::new(),
            codes: MemberCodes::default(),
        }
    }

    /// Whether the HMAC member codes of before signed codes are still accepted
    /// (`[member_codes] legacy`).
    pub fn with_legacy_codes(mut self, legacy: bool) -> Self {
        self.codes.legacy = legacy;
        self
    }

    fn count_code(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .member_codes
            .get_or_create(&vec![("kind", kind), ("result", result)])
            .inc();
    }

    /// The record of the member in `slot` (memory, else disk), counted.
    fn record(&mut self, slot: crate::cache::Slot) -> Option<Arc<Member>> {
        let (m, read) = self.records.get(slot);
        match read {
            RecordRead::Cached => {}
            RecordRead::Disk => {
                self.metrics.member_record_reads.inc();
            }
            RecordRead::Missing | RecordRead::Failed => {
                self.metrics.member_record_failures.inc();
            }
        }
        m
    }

    pub fn on_sighting(&mut self, s: &Sighting, out: &mut Vec<Output>) {
        let member = self
            .identify
            .identify(&s.advert, &self.index, s.at_ms)
            .and_then(|slot| self.record(slot));
        match member {
            Some(member) => {
                self.metrics.identified.inc();
                let mut changes = std::mem::take(&mut self.changes);
                self.presence
                    .observe(&member, &s.zone, s.advert.rssi, s.at_ms, &mut changes);
                for change in changes.drain(..) {
                    self.apply(change, out);
                }
                self.changes = changes;
            }
            None => {
                self.metrics.strangers.inc();
                self.footfall.observe(&s.advert.address);
            }
        }
    }

    /// Waits until the per-window ID tables for `now_ms` are built and swapped in (benchmarks and
    /// tests; the engine task never waits, it swaps tables in on its tick).
    pub fn prepare_id_tables_and_wait(&mut self, now_ms: u64) {
        self.identify
            .prepare_and_wait(&self.index, &self.keys, now_ms);
    }

    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        // Swaps in per-window ID tables built off this task; never builds one here.
        self.identify.prepare(&self.index, &self.keys, now_ms);
        for change in self.presence.tick(now_ms) {
            self.apply(change, out);
        }
        // Last seen and last RSSI move with every advert: refresh the view once a tick, not per
        // advert, while anyone is present.
        if self.presence.present_count() > 0 {
            self.presence_changed = true;
        }
        if let Some(body) = self.footfall.tick(now_ms) {
            out.push(Output::Event {
                at_ms: now_ms,
                body,
            });
        }
        self.rules.prune(now_ms);
        if self.rules.planned_due(now_ms) {
            self.check_planned(now_ms, out);
        }
    }

    /// Planned triggers (birthday week, overdue) for the members present now.
    fn check_planned(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        for (member, zone) in self.presence.present_members() {
            let occasion = Occasion {
                what: Happening::Scheduled,
                member: &member,
                zone: &zone,
                visit_id: "",
                at_ms: now_ms,
            };
            self.react(&occasion, out);
        }
    }

    /// A scanner read `payload` in `zone`: a member's QR code, or counted and dropped. A valid
    /// code of a member not held here becomes an [`Output::Lookup`] (unless head office already
    /// answered for the member during their visit).
    pub fn on_qr(
        &mut self,
        zone: &str,
        payload: &str,
        at_ms: u64,
        wall_ms: i64,
        out: &mut Vec<Output>,
    ) {
        if instore_protocol::member_code::is_signed_code(payload) {
            match self
                .codes
                .check(payload, zone, self.records.source(), wall_ms)
            {
                CodeOutcome::Member(slot, code_id) => match self.record(slot) {
                    Some(member) => {
                        self.count_code("signed", "identified");
                        self.qr_identified(&member, zone, Some(code_id), at_ms, out);
                    }
                    None => {
                        self.count_code("signed", "refused");
                        self.qr_refused(zone, "unknown_member".into());
                    }
                },
                // The first scan already identified and reacted: nothing happens twice.
                CodeOutcome::Duplicate(_) => self.count_code("signed", "duplicate"),
                CodeOutcome::Refused(reason) => {
                    self.count_code("signed", "refused");
                    self.qr_refused(zone, reason.to_string());
                }
            }
            return;
        }
        if instore_protocol::qr::parse(payload).is_ok() {
            if !self.codes.legacy {
                self.count_code("legacy", "refused");
                self.qr_refused(zone, "legacy_code".into());
                return;
            }
            // How many still arrive: the HMAC check below counts its own refusals.
            self.count_code("legacy", "arrived");
        }
        match identify_qr(payload, &self.index, self.records.source(), wall_ms) {
            QrOutcome::Member(slot) => match self.record(slot) {
                Some(member) => self.qr_identified(&member, zone, None, at_ms, out),
                None => self.qr_refused(zone, "unknown_member".into()),
            },
            QrOutcome::Refused(e) => self.qr_refused(zone, error_label(&e)),
            QrOutcome::NotHeld { member_id } => {
                self.visitors.retain(|_, v| v.until_wall_ms > wall_ms);
                if let Some(v) = self.visitors.get(&member_id) {
                    match verify_lookup(payload, &v.response, wall_ms) {
                        Ok(()) => {
                            let member = v.member.clone();
                            self.qr_identified(&member, zone, None, at_ms, out);
                        }
                        Err(e) => self.qr_refused(zone, error_label(&e)),
                    }
                    return;
                }
                out.push(Output::Lookup(Box::new(QrLookup {
                    zone: Arc::from(zone),
                    payload: payload.to_string(),
                    at_ms,
                    member_id,
                })));
            }
        }
    }

    /// Head office answered a [`QrLookup`]: the code is checked with the keys it returned, as
    /// for a member held here; a refusal is counted by its reason.
    pub fn on_lookup(
        &mut self,
        lookup: &QrLookup,
        result: LookupResult,
        wall_ms: i64,
        out: &mut Vec<Output>,
    ) {
        let found = match result {
            LookupResult::Found(found) => found,
            LookupResult::Refused(reason) => {
                self.metrics
                    .qr_lookups
                    .get_or_create(&vec![("result", reason)])
                    .inc();
                self.qr_refused(&lookup.zone, format!("lookup_{reason}"));
                return;
            }
        };
        if let Err(e) = verify_lookup(&lookup.payload, &found, wall_ms) {
            self.metrics
                .qr_lookups
                .get_or_create(&vec![("result", "refused")])
                .inc();
            self.qr_refused(&lookup.zone, error_label(&e));
            return;
        }
        self.metrics
            .qr_lookups
            .get_or_create(&vec![("result", "found")])
            .inc();
        let member = Arc::new(Member::from_record(0, &found.member));
        if self.visitors.len() >= VISITORS_MAX {
            self.visitors.retain(|_, v| v.until_wall_ms > wall_ms);
            if self.visitors.len() >= VISITORS_MAX {
                self.visitors.clear();
            }
        }
        self.visitors.insert(
            found.member.member_id.clone(),
            Visitor {
                member: member.clone(),
                response: *found,
                until_wall_ms: wall_ms + VISITOR_KEEP_MS,
            },
        );
        self.qr_identified(&member, &lookup.zone, None, lookup.at_ms, out);
    }

    fn qr_refused(&mut self, zone: &str, label: String) {
        // Never the payload: a member's code is a credential.
        tracing::info!(zone, error = %label, "QR code rejected");
        self.metrics
            .qr_rejected
            .get_or_create(&vec![("error", label)])
            .inc();
    }

    fn qr_identified(
        &mut self,
        member: &Member,
        zone: &str,
        code: Option<String>,
        at_ms: u64,
        out: &mut Vec<Output>,
    ) {
        self.metrics.identified.inc();
        out.push(Output::Event {
            at_ms,
            body: EventBody::QrScanned {
                member_id: member.member_id.clone(),
                zone: zone.to_string(),
                code,
            },
        });
        let occasion = Occasion {
            what: Happening::QrScan,
            member,
            zone,
            visit_id: "",
            at_ms,
        };
        self.react(&occasion, out);
    }

    /// Where monotonic 0 is on the wall clock, for the rules' local time.
    pub fn set_wall_origin(&mut self, wall_at_zero_ms: i64) {
        self.rules.set_wall_origin(wall_at_zero_ms);
    }

    pub fn rules_len(&self) -> usize {
        self.rules.len()
    }

    /// Asks the rules about one occasion; at most one rule's alert and actions come out.
    fn react(&mut self, occasion: &Occasion, out: &mut Vec<Output>) {
        let verdict = self.rules.react(occasion);
        let held = verdict.held;
        self.metrics
            .alerts_suppressed
            .inc_by(u64::from(held.total()));
        for (reason, n) in [
            ("cooldown", held.cooldown),
            ("quiet_hours", held.quiet_hours),
            ("rate_limit", held.rate_limit),
        ] {
            if n > 0 {
                self.metrics
                    .reactions_held
                    .get_or_create(&vec![("reason", reason)])
                    .inc_by(u64::from(n));
            }
        }
        if let Some(held) = verdict.held_out {
            self.metrics
                .reactions_held
                .get_or_create(&vec![("reason", "holdout")])
                .inc();
            out.push(Output::Event {
                at_ms: occasion.at_ms,
                body: EventBody::HeldOut {
                    rule: held.rule,
                    member_id: occasion.member.member_id.clone(),
                    zone: occasion.zone.to_string(),
                    visit_id: occasion.visit_id.to_string(),
                    campaign: held.campaign,
                },
            });
        }
        if let Some(r) = verdict.alert {
            out.push(alert_output(
                occasion.member,
                occasion.zone,
                occasion.at_ms,
                r,
            ));
        }
        out.extend(
            verdict
                .actions
                .into_iter()
                .map(|a| Output::Action(Box::new(a))),
        );
    }

    /// Swaps in a whole new member set (start, a snapshot, a local import); members no longer
    /// in it stop being tracked at once.
    pub fn set_members(&mut self, members: Members, now_ms: u64, out: &mut Vec<Output>) {
        let Members {
            index,
            records,
            keys,
        } = members;
        self.index = index;
        self.keys = keys;
        self.records.replace_source(records);
        self.metrics.members_cached.set(self.index.len() as i64);
        // Start building the new index's per-window ID tables now rather than at the next tick.
        self.identify.prepare(&self.index, &self.keys, now_ms);
        self.forget_departed(now_ms, out);
    }

    /// Applies one change response in place: the index is patched between two sightings, so
    /// identification sees the state before or after the response, never half of it.
    pub fn apply_patch(&mut self, patch: &IndexPatch, now_ms: u64, out: &mut Vec<Output>) {
        self.index.apply(patch);
        self.records
            .invalidate(patch.touched(), patch.gone().next().is_some());
        self.metrics.members_cached.set(self.index.len() as i64);
        self.identify.prepare(&self.index, &self.keys, now_ms);
        self.forget_departed(now_ms, out);
    }

    /// Members that left the set depart at once and stop being tracked.
    fn forget_departed(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let index = &self.index;
        let changes = self
            .presence
            .forget_unless(|m| index.is_live(m.slot), now_ms);
        for change in changes {
            self.apply(change, out);
        }
    }

    /// The member index (benchmarks, tests).
    pub fn index(&self) -> &MemberIndex {
        &self.index
    }

    /// Records cached in memory now.
    pub fn records_cached(&self) -> usize {
        self.records.cached()
    }

    pub fn replace_rules(&mut self, rules: Rules) {
        self.rules.replace(rules);
    }

    /// Whether the set of present members changed since the last call.
    pub fn take_presence_changed(&mut self) -> bool {
        std::mem::take(&mut self.presence_changed)
    }

    pub fn present(&self, wall: impl Fn(u64) -> i64) -> Vec<PresentMember> {
        self.presence.present(wall)
    }

    fn apply(&mut self, change: PresenceChange, out: &mut Vec<Output>) {
        self.presence_changed = true;
        let (what, member, zone, at_ms, body, visit_id) = match change {
            PresenceChange::Arrive {
                member,
                zone,
                visit_id,
                at_ms,
            } => {
                let body = EventBody::Arrive {
                    member_id: member.member_id.clone(),
                    zone: zone.to_string(),
                    visit_id: visit_id.clone(),
                };
                (Happening::Arrive, member, zone, at_ms, body, visit_id)
            }
            PresenceChange::Depart {
                member,
                zone,
                visit_id,
                at_ms,
                dwell_ms,
                zones,
            } => {
                let body = EventBody::Depart {
                    member_id: member.member_id.clone(),
                    zone: zone.to_string(),
                    visit_id: visit_id.clone(),
                    dwell_s: dwell_ms / 1000,
                    zones: zones.iter().map(|z| z.to_string()).collect(),
                };
                (Happening::Depart, member, zone, at_ms, body, visit_id)
            }
            PresenceChange::Dwell {
                member,
                zone,
                visit_id,
                dwell_ms,
                at_ms,
            } => {
                let dwell_s = dwell_ms / 1000;
                let body = EventBody::Dwell {
                    member_id: member.member_id.clone(),
                    zone: zone.to_string(),
                    visit_id: visit_id.clone(),
                    dwell_s,
                };
                (
                    Happening::Dwell { dwell_s },
                    member,
                    zone,
                    at_ms,
                    body,
                    visit_id,
                )
            }
            PresenceChange::ZoneChange {
                member,
                visit_id,
                from,
                to,
                at_ms,
            } => {
                // No rule reacts to a zone change itself: the dwell that may follow says more.
                let body = EventBody::ZoneChange {
                    member_id: member.member_id.clone(),
                    visit_id,
                    from: from.to_string(),
                    to: to.to_string(),
                };
                self.metrics
                    .presence_events
                    .get_or_create(&vec![("kind", body.kind())])
                    .inc();
                out.push(Output::Event { at_ms, body });
                return;
            }
        };
        self.metrics
            .presence_events
            .get_or_create(&vec![("kind", body.kind())])
            .inc();
        out.push(Output::Event { at_ms, body });
        let occasion = Occasion {
            what,
            member: &member,
            zone: &zone,
            visit_id: &visit_id,
            at_ms,
        };
        self.react(&occasion, out);
    }
}

/// `Expired { skew_s: 40 }` → `expired`: the error's variant, a small fixed set of labels.
fn error_label(e: &impl std::fmt::Debug) -> String {
    let debug = format!("{e:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn alert_output(member: &Member, zone: &str, at_ms: u64, r: crate::react::Reaction) -> Output {
    let id = uuid::Uuid::new_v4().to_string();
    let body = EventBody::AlertRaised {
        alert_id: id.clone(),
        rule: r.rule.clone(),
        member_id: member.member_id.clone(),
        priority: r.priority,
        message: r.message.clone(),
        campaign: r.campaign.clone(),
    };
    let alert = Alert {
        id,
        seq: 0,
        raised_at_ms: 0,
        rule: r.rule,
        campaign: r.campaign,
        priority: r.priority,
        message: r.message,
        zone: zone.to_string(),
        member: MemberCard {
            member_id: member.member_id.clone(),
            display_name: member.display_name.clone(),
            tier: member.tier.clone(),
            stage: member.stage.clone(),
            tags: member.tags.clone(),
            last_purchase: member.last_purchase.clone(),
            level: member.level.clone(),
            visits_12m: member.visits_12m,
            last_visit: member.last_visit.clone(),
            expected_next_visit: member.expected_next_visit.clone(),
            overdue_days: r.overdue_days,
            suggestion: r.suggestion,
        },
    };
    Output::Alert {
        at_ms,
        body,
        alert: Box::new(alert),
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
