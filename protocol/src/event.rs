//! Events a gateway sends up, and what head office answers.
//!
//! Every event carries the gateway's sequence number, contiguous from 1 and never reused. Head
//! office stores each (gateway, seq) once and acknowledges the ranges it has *committed*; the
//! gateway deletes from its outbox only what is acknowledged.

use serde::{Deserialize, Serialize};

use crate::{DecodeError, MemberRecord, SCHEMA_VERSION, topics::valid_id};

/// One event with its place in the gateway's sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Wall-clock time at the gateway, milliseconds since the Unix epoch.
    pub at_ms: i64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened. Tagged by `type` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A member's visit started.
    Arrive {
        member_id: String,
        zone: String,
        visit_id: String,
    },
    /// A member's visit ended after `dwell_s` seconds.
    Depart {
        member_id: String,
        zone: String,
        visit_id: String,
        dwell_s: u64,
        /// Zones the visit passed through, in order of first entry.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        zones: Vec<String>,
    },
    /// A present member moved to another zone of the store.
    ZoneChange {
        member_id: String,
        visit_id: String,
        from: String,
        to: String,
    },
    /// A present member has been in `zone` for at least `dwell_s` seconds (one event per
    /// configured duration reached, not a heartbeat).
    Dwell {
        member_id: String,
        zone: String,
        visit_id: String,
        dwell_s: u64,
    },
    /// A member identified themselves with a QR code at a scanner.
    QrScanned {
        member_id: String,
        zone: String,
        /// A signed code's key id (hex) and step, `"<key_id>:<step>"`: head office flags the
        /// same code used at two stores. Absent for HMAC codes and from older gateways.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// A rule raised a clerk alert.
    AlertRaised {
        alert_id: String,
        rule: String,
        member_id: String,
        priority: AlertPriority,
        message: String,
        /// `id@version` of the head-office campaign whose rule raised it; absent for a rule of
        /// the store's own file (and from older gateways).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        campaign: Option<String>,
    },
    /// A rule would have reacted, but the member is in its holdout (control) group: nothing was
    /// shown or sent. Head office compares what these members bought with what the alerted ones
    /// did. `visit_id` is empty for a QR scan.
    HeldOut {
        rule: String,
        member_id: String,
        zone: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        visit_id: String,
        /// As for [`EventBody::AlertRaised`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        campaign: Option<String>,
    },
    /// A clerk took the alert ("I'm on it"). `by` is the paired tablet's label, never a member.
    AlertTaken {
        alert_id: String,
        rule: String,
        by: String,
    },
    /// What came of an alert, as the clerk recorded it.
    AlertOutcome {
        alert_id: String,
        rule: String,
        outcome: AlertOutcomeKind,
        by: String,
    },
    /// A clerk dismissed the alert without acting on it.
    AlertDismissed {
        alert_id: String,
        rule: String,
        by: String,
    },
    /// Nobody took or closed the alert before it went stale.
    AlertExpired { alert_id: String, rule: String },
    /// Anonymous footfall: distinct non-member devices heard in an interval (never their addresses).
    Footfall {
        interval_s: u64,
        unique_devices: u64,
    },
    /// The gateway started (after boot, crash or upgrade).
    GatewayStarted { version: String },
    /// A scanner's state changed (scanning, lost, recovered); health data, shed first.
    Scanner {
        adapter: String,
        state: ScannerState,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    /// The outbox hit its byte quota while offline and dropped these events, oldest of the
    /// lowest-value class first. Head office lists the range instead of reporting a gap.
    EventsShed {
        first_seq: u64,
        last_seq: u64,
        count: u64,
        /// The [`EventBody::kind`] names that were shed.
        kinds: Vec<String>,
    },
}

/// What a clerk recorded after acting on an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOutcomeKind {
    Purchased,
    NoSale,
    NotFound,
}

impl AlertOutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertOutcomeKind::Purchased => "purchased",
            AlertOutcomeKind::NoSale => "no_sale",
            AlertOutcomeKind::NotFound => "not_found",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScannerState {
    Scanning,
    /// No advert for longer than the watchdog allows; scanning is being restarted.
    Stalled,
    /// The adapter or bluetoothd went away.
    Lost,
    /// Scanning resumed after a stall or loss.
    Recovered,
}

/// Which events an outbox over its byte quota sheds first (lower first). Presence,
/// identification and alert lifecycle are what head office is for; health is the cheapest to lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShedClass {
    Health = 0,
    Footfall = 1,
    Presence = 2,
}

impl EventBody {
    /// Short name of the variant, as used in metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Arrive { .. } => "arrive",
            EventBody::Depart { .. } => "depart",
            EventBody::ZoneChange { .. } => "zone_change",
            EventBody::Dwell { .. } => "dwell",
            EventBody::QrScanned { .. } => "qr_scanned",
            EventBody::AlertRaised { .. } => "alert_raised",
            EventBody::HeldOut { .. } => "held_out",
            EventBody::AlertTaken { .. } => "alert_taken",
            EventBody::AlertOutcome { .. } => "alert_outcome",
            EventBody::AlertDismissed { .. } => "alert_dismissed",
            EventBody::AlertExpired { .. } => "alert_expired",
            EventBody::Footfall { .. } => "footfall",
            EventBody::GatewayStarted { .. } => "gateway_started",
            EventBody::Scanner { .. } => "scanner",
            EventBody::EventsShed { .. } => "events_shed",
        }
    }

    /// Shed order under the outbox byte quota. `EventsShed` itself is never shed (it is how
    /// shedding stays visible), so it ranks with presence.
    pub fn shed_class(&self) -> ShedClass {
        match self {
            EventBody::GatewayStarted { .. } | EventBody::Scanner { .. } => ShedClass::Health,
            EventBody::Footfall { .. } => ShedClass::Footfall,
            EventBody::Arrive { .. }
            | EventBody::Depart { .. }
            | EventBody::ZoneChange { .. }
            | EventBody::Dwell { .. }
            | EventBody::QrScanned { .. }
            | EventBody::AlertRaised { .. }
            | EventBody::HeldOut { .. }
            | EventBody::AlertTaken { .. }
            | EventBody::AlertOutcome { .. }
            | EventBody::AlertDismissed { .. }
            | EventBody::AlertExpired { .. }
            | EventBody::EventsShed { .. } => ShedClass::Presence,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertPriority {
    Low,
    Normal,
    High,
}

/// Events published together on [`crate::topics::events`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub v: u32,
    pub gateway_id: String,
    pub store_id: String,
    /// Set on the (event-less) batch a gateway sends first on every connection; head office
    /// answers with an [`Ack`] carrying a [`Welcome`]. On the events topic, not a topic of its
    /// own, so it is ordered after every batch an earlier process of the gateway published.
    /// Declared before `events`, which must stay the last field (the uplink splices events in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<Hello>,
    /// Events in the sender's outbox not yet acknowledged, when it built this batch (the
    /// dashboard's outbox depth); absent from older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<u64>,
    pub events: Vec<Event>,
}

/// Most boot ids one [`Hello`] may list.
pub const MAX_HELLO_BOOTS: usize = 4096;

/// "Before I send anything: what do you hold, and what did you hold when you first heard of these
/// boots?" `boot` is the sender's current boot (a random id drawn when its outbox opens); `boots`
/// are the other boots that still have events in its outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub boot: u64,
    #[serde(default)]
    pub boots: Vec<u64>,
}

/// Head office's answer to a [`Hello`]: for each boot named, `floor` is head office's high-water
/// mark when it *first* heard of that boot, fixed forever after. A gateway sends an event only
/// after such an answer, so an event of boot `b` numbered at or below `floor(b)` was never sent:
/// if head office holds that number, it holds a different event (the gateway's database was
/// rolled back), and the gateway renumbers the event above the high-water mark before sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub boot: u64,
    pub floors: Vec<BootFloor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFloor {
    pub boot: u64,
    pub floor: u64,
}

impl EventBatch {
    /// Decodes and checks a batch: ids well-formed, sequence numbers positive and strictly rising.
    /// One event this build cannot read refuses the whole batch; a receiver that must take a
    /// newer sender's batches uses [`RawEventBatch::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let batch: EventBatch = crate::decode(bytes)?;
        check_batch(
            batch.v,
            &batch.gateway_id,
            &batch.store_id,
            batch.hello.as_ref(),
            batch.events.iter().map(|e| e.seq),
        )?;
        Ok(batch)
    }
}

/// An [`EventBatch`] whose events' bodies are left as JSON, for a receiver that must not refuse a
/// newer gateway's batch because one event in it is of a type (or shape) it does not know:
/// refusing would make the gateway re-send the same batch forever and hold every later event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RawEventBatch {
    pub v: u32,
    pub gateway_id: String,
    pub store_id: String,
    #[serde(default)]
    pub hello: Option<Hello>,
    #[serde(default)]
    pub outbox: Option<u64>,
    pub events: Vec<RawEvent>,
}

/// One event with its body unread.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RawEvent {
    pub seq: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl RawEvent {
    /// The body, if this build knows its type and shape.
    pub fn body(&self) -> Result<EventBody, serde_json::Error> {
        serde_json::from_value(serde_json::Value::Object(self.body.clone()))
    }

    /// The body's `type`, as sent (may be anything: it is not checked against the known ones).
    pub fn type_name(&self) -> Option<&str> {
        self.body.get("type").and_then(serde_json::Value::as_str)
    }
}

impl RawEventBatch {
    /// Decodes and checks a batch as [`EventBatch::decode`] does, except for the events' bodies.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let batch: RawEventBatch = crate::decode(bytes)?;
        check_batch(
            batch.v,
            &batch.gateway_id,
            &batch.store_id,
            batch.hello.as_ref(),
            batch.events.iter().map(|e| e.seq),
        )?;
        Ok(batch)
    }
}

fn check_batch(
    v: u32,
    gateway_id: &str,
    store_id: &str,
    hello: Option<&Hello>,
    seqs: impl Iterator<Item = u64>,
) -> Result<(), DecodeError> {
    if v > SCHEMA_VERSION {
        return Err(DecodeError::Version(v));
    }
    if !valid_id(gateway_id) || !valid_id(store_id) {
        return Err(DecodeError::Invalid("gateway_id or store_id"));
    }
    if hello.is_some_and(|h| h.boots.len() > MAX_HELLO_BOOTS) {
        return Err(DecodeError::Invalid("hello lists too many boots"));
    }
    let mut prev = 0u64;
    for seq in seqs {
        if seq <= prev {
            return Err(DecodeError::Invalid(
                "sequence numbers must rise and start at 1",
            ));
        }
        prev = seq;
    }
    Ok(())
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// The highest sequence number a gateway ever issues: far beyond any real outbox (a million events
/// a day for ten billion years), and far enough below `i64::MAX` that head office's signed
/// columns and any arithmetic near a mark never overflow.
pub const SEQ_LIMIT: u64 = 1 << 62;

/// The furthest a gateway's numbers may jump ahead of what head office holds for it, and a
/// high-water mark ahead of what a gateway has issued. A real jump is a rolled-back outbox
/// catching up (at most the events it lost); anything beyond this is a forged or corrupt message,
/// which would otherwise push the numbering towards [`SEQ_LIMIT`] until the gateway could not
/// number events any more.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;

/// Head office → gateway, sent only after the events are committed at head office.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub v: u32,
    pub gateway_id: String,
    /// Ranges now durable at head office (including ones it already had: duplicates).
    pub ranges: Vec<SeqRange>,
    /// Highest sequence number head office has ever committed for this gateway. A gateway never
    /// issues a number at or below it, even if its own database was rolled back.
    pub high_water: u64,
    /// Present when this ack answers a [`Hello`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<Welcome>,
}

impl Ack {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let ack: Ack = crate::decode(bytes)?;
        if ack.v > SCHEMA_VERSION {
            return Err(DecodeError::Version(ack.v));
        }
        if ack.ranges.iter().any(|r| r.first == 0 || r.first > r.last) {
            return Err(DecodeError::Invalid("ack range"));
        }
        Ok(ack)
    }
}

/// Retained on [`crate::topics::status`]; the offline form is also the gateway's last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub v: u32,
    pub gateway_id: String,
    pub store_id: String,
    pub online: bool,
}

/// Retained on [`crate::topics::members`]: the store's member set is at `version`, and each of
/// its channels at its head (see [`crate::changes`]). `version` is the sum of the heads, which
/// rises with every change; gateways that predate channels read only it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersNotice {
    pub v: u32,
    pub store_id: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub heads: crate::changes::Heads,
    /// The chain's campaign counter: it rises with every campaign version head office stores
    /// ([`crate::campaign`]). A gateway that has not asked for changes since it last rose asks
    /// (with its campaign tag), so a new campaign reaches a store as fast as a member change.
    /// 0 (absent) from head offices without campaigns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub campaigns: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The whole member set of a store at a version, served by head office over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    pub v: u32,
    pub store_id: String,
    pub version: u64,
    pub members: Vec<MemberRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_json(seqs: &[u64]) -> Vec<u8> {
        let events: Vec<Event> = seqs
            .iter()
            .map(|&seq| Event {
                seq,
                at_ms: 1_700_000_000_000,
                body: EventBody::Arrive {
                    member_id: "M1".into(),
                    zone: "entrance".into(),
                    visit_id: "v1".into(),
                },
            })
            .collect();
        serde_json::to_vec(&EventBatch {
            v: SCHEMA_VERSION,
            gateway_id: "gw-1".into(),
            store_id: "s-1".into(),
            hello: None,
            outbox: None,
            events,
        })
        .unwrap()
    }

    #[test]
    fn a_raw_batch_keeps_an_unknown_event_and_reads_the_known_ones() {
        let json = br#"{"v":1,"gateway_id":"gw-1","store_id":"s-1","events":[
            {"seq":1,"at_ms":5,"type":"footfall","interval_s":60,"unique_devices":3},
            {"seq":2,"at_ms":6,"type":"from_the_future","answer":42},
            {"seq":3,"at_ms":7,"type":"arrive","member_id":"M1"}]}"#;
        assert!(
            EventBatch::decode(json).is_err(),
            "the strict decoder refuses it"
        );
        let b = RawEventBatch::decode(json).unwrap();
        assert_eq!(b.events.len(), 3);
        assert_eq!(
            b.events[0].body().unwrap(),
            EventBody::Footfall {
                interval_s: 60,
                unique_devices: 3
            }
        );
        assert_eq!(b.events[1].type_name(), Some("from_the_future"));
        assert!(b.events[1].body().is_err());
        assert_eq!(b.events[1].body["answer"], 42);
        assert!(b.events[2].body().is_err(), "a known type missing fields");
        // The batch-level checks still hold.
        let bad_seq = br#"{"v":1,"gateway_id":"gw-1","store_id":"s-1","events":[
            {"seq":2,"at_ms":5,"type":"x"},{"seq":2,"at_ms":6,"type":"y"}]}"#;
        assert!(matches!(
            RawEventBatch::decode(bad_seq),
            Err(DecodeError::Invalid(_))
        ));
        let future = br#"{"v":9,"gateway_id":"gw-1","store_id":"s-1","events":[]}"#;
        assert!(matches!(
            RawEventBatch::decode(future),
            Err(DecodeError::Version(9))
        ));
    }

    #[test]
    fn an_event_is_flat_json_tagged_by_type() {
        let e = Event {
            seq: 7,
            at_ms: 5,
            body: EventBody::Depart {
                member_id: "M1".into(),
                zone: "till".into(),
                visit_id: "v".into(),
                dwell_s: 30,
                zones: Vec::new(),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "depart");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["dwell_s"], 30);
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_well_formed_batch_decodes() {
        let b = EventBatch::decode(&batch_json(&[1, 2, 5])).unwrap();
        assert_eq!(b.events.len(), 3);
    }

    #[test]
    fn batches_with_bad_sequences_are_refused() {
        for seqs in [&[0u64][..], &[2, 2], &[3, 1]] {
            assert!(matches!(
                EventBatch::decode(&batch_json(seqs)),
                Err(DecodeError::Invalid(_))
            ));
        }
    }

    #[test]
    fn truncated_oversized_and_future_payloads_are_refused() {
        let full = batch_json(&[1]);
        assert!(matches!(
            EventBatch::decode(&full[..full.len() / 2]),
            Err(DecodeError::Malformed(_))
        ));
        let big = vec![b' '; crate::MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            EventBatch::decode(&big),
            Err(DecodeError::TooLarge(_))
        ));
        let future = String::from_utf8(full)
            .unwrap()
            .replace("\"v\":1", "\"v\":99");
        assert!(matches!(
            EventBatch::decode(future.as_bytes()),
            Err(DecodeError::Version(99))
        ));
    }

    #[test]
    fn acks_with_inverted_ranges_are_refused() {
        let bad = br#"{"v":1,"gateway_id":"g","ranges":[{"first":5,"last":2}],"high_water":5}"#;
        assert!(Ack::decode(bad).is_err());
        let good = br#"{"v":1,"gateway_id":"g","ranges":[{"first":1,"last":2}],"high_water":5}"#;
        assert_eq!(Ack::decode(good).unwrap().high_water, 5);
    }
}
