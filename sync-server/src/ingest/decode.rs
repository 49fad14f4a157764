//! Turning an MQTT message into something to store, or a reason to refuse it. Pure: no I/O.
//!
//! A sealed message ([`instore_protocol::auth`]) must verify under the key of the gateway *and
//! store* it names, which head office derives from its secret: a gateway can speak only for
//! itself and only for the store its token was minted for. A plain message is let through to
//! the store stage, which refuses it from a gateway that has sealed before, or refused here
//! under `[auth] require_sealed`.

use instore_protocol::auth::{MessageKey, Opened};
use instore_protocol::{
    DecodeError, GatewayStatus, RawEventBatch, SCHEMA_VERSION, SeqRange,
    topics::{GatewayTopic, parse_gateway_topic, valid_id},
};

use instore_protocol::EventBody;

use crate::{
    registry::{Registry, Status},
    store::{HelloItem, IngestBatch, ShedReport, StoredEvent},
};

/// Why a payload was refused; the label of the `bad_payloads` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReason {
    TooLarge,
    Malformed,
    Version,
    Invalid,
    GatewayMismatch,
    UnknownTopic,
    /// Sealed, but the MAC is malformed or not the gateway's.
    BadMac,
    /// Plain, where only sealed messages are accepted.
    Unsigned,
    /// From a gateway the registry revoked.
    Revoked,
    /// Naming another store than the one the gateway is registered in.
    WrongStore,
}

impl BadReason {
    pub fn label(self) -> &'static str {
        match self {
            BadReason::TooLarge => "too_large",
            BadReason::Malformed => "malformed",
            BadReason::Version => "version",
            BadReason::Invalid => "invalid",
            BadReason::GatewayMismatch => "gateway_mismatch",
            BadReason::UnknownTopic => "unknown_topic",
            BadReason::BadMac => "bad_mac",
            BadReason::Unsigned => "unsigned",
            BadReason::Revoked => "revoked",
            BadReason::WrongStore => "wrong_store",
        }
    }
}

/// What head office checks seals with: the gateway registry (keys derive from its secret), and
/// whether plain messages are refused outright.
#[derive(Clone)]
pub struct MessageAuth {
    registry: Registry,
    pub require_sealed: bool,
}

impl std::fmt::Debug for MessageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageAuth")
            .field("require_sealed", &self.require_sealed)
            .finish_non_exhaustive()
    }
}

impl MessageAuth {
    pub fn new(registry: Registry, require_sealed: bool) -> Self {
        Self {
            registry,
            require_sealed,
        }
    }

    /// The key of `gateway_id` of `store_id` (its messages and head office's acks to it);
    /// `None` for a revoked gateway, another store than its own, or ids no token can be minted
    /// for.
    pub fn gateway_key(&self, store_id: &str, gateway_id: &str) -> Option<MessageKey> {
        self.registry.gateway_key(store_id, gateway_id)
    }

    /// The key of head office's notices to `store_id`.
    pub fn store_key(&self, store_id: &str) -> MessageKey {
        self.registry.store_key(store_id)
    }

    /// `None` if `opened` may be taken as the gateway's (`signed` tells which way), else why
    /// not.
    fn check(
        &self,
        opened: &Opened<'_>,
        topic: &str,
        store_id: &str,
        gateway_id: &str,
    ) -> Result<bool, Box<Decoded>> {
        let key = match self.registry.status(store_id, gateway_id) {
            Status::Revoked => {
                return Err(Box::new(bad(
                    Some(gateway_id),
                    BadReason::Revoked,
                    "gateway revoked",
                )));
            }
            Status::WrongStore => {
                return Err(Box::new(bad(
                    Some(gateway_id),
                    BadReason::WrongStore,
                    "not the store the gateway is registered in",
                )));
            }
            Status::Invalid => {
                return Err(Box::new(bad(
                    Some(gateway_id),
                    BadReason::Invalid,
                    "store_id",
                )));
            }
            status @ (Status::Active(_) | Status::Legacy(_)) => {
                if !opened.is_sealed() {
                    // A registered gateway runs a release that seals: plain is a forgery.
                    if self.require_sealed || matches!(status, Status::Active(_)) {
                        return Err(Box::new(bad(
                            Some(gateway_id),
                            BadReason::Unsigned,
                            "plain message from a gateway that must seal",
                        )));
                    }
                    return Ok(false);
                }
                match status.token() {
                    Some(t) => MessageKey::for_gateway(t),
                    None => {
                        return Err(Box::new(bad(
                            Some(gateway_id),
                            BadReason::Invalid,
                            "store_id",
                        )));
                    }
                }
            }
        };
        if opened.verify(&key, topic) {
            Ok(true)
        } else {
            Err(Box::new(bad(
                Some(gateway_id),
                BadReason::BadMac,
                "MAC is not this gateway's for this store",
            )))
        }
    }
}

/// The `type` an event is stored under when this head office cannot read its body (a newer
/// gateway's event type, or a known type in a shape it does not know); `body_json` keeps it as
/// sent, so a later release can still read it.
pub const UNREADABLE_KIND: &str = "unreadable";

/// What a message on one of head office's subscriptions turned out to be.
#[derive(Debug, Clone)]
pub enum Decoded {
    Batch(IngestBatch),
    /// A status and whether it was sealed.
    Status(GatewayStatus, bool),
    /// Refused. `gateway_id` is the topic's gateway when the topic parsed. `detail` never quotes
    /// the payload: it may be anything a hostile or broken client sent.
    Bad {
        gateway_id: Option<String>,
        reason: BadReason,
        detail: String,
    },
}

fn bad(gateway_id: Option<&str>, reason: BadReason, detail: impl Into<String>) -> Decoded {
    Decoded::Bad {
        gateway_id: gateway_id.map(str::to_string),
        reason,
        detail: detail.into(),
    }
}

fn from_decode_error(gw: &str, e: &DecodeError) -> Decoded {
    match e {
        DecodeError::TooLarge(n) => bad(Some(gw), BadReason::TooLarge, format!("{n} bytes")),
        // Position only: serde's message can echo fragments of the payload.
        DecodeError::Malformed(j) => bad(
            Some(gw),
            BadReason::Malformed,
            format!(
                "{:?} error at line {} column {}",
                j.classify(),
                j.line(),
                j.column()
            ),
        ),
        DecodeError::Version(v) => bad(Some(gw), BadReason::Version, format!("schema version {v}")),
        DecodeError::Invalid(what) => bad(Some(gw), BadReason::Invalid, *what),
    }
}

/// Decodes a message by its topic and checks its seal. Never panics, whatever the bytes.
pub fn decode(topic: &str, payload: &[u8], auth: &MessageAuth) -> Decoded {
    let (gw, is_batch) = match parse_gateway_topic(topic) {
        Some(GatewayTopic::Events(gw)) => (gw, true),
        Some(GatewayTopic::Status(gw)) => (gw, false),
        Some(GatewayTopic::Ack(gw)) => {
            return bad(Some(&gw), BadReason::UnknownTopic, "ack topic");
        }
        None => return bad(None, BadReason::UnknownTopic, "not a gateway topic"),
    };
    if payload.len() > instore_protocol::MAX_PAYLOAD_BYTES {
        return bad(
            Some(&gw),
            BadReason::TooLarge,
            format!("{} bytes", payload.len()),
        );
    }
    let opened = match instore_protocol::auth::open(payload) {
        Ok(o) => o,
        Err(e) => return bad(Some(&gw), BadReason::BadMac, e.to_string()),
    };
    let decoded = if is_batch {
        decode_batch(&gw, opened.message())
    } else {
        decode_status(&gw, opened.message())
    };
    match decoded {
        Decoded::Batch(mut b) => match auth.check(&opened, topic, &b.store_id, &gw) {
            Ok(signed) => {
                b.signed = signed;
                Decoded::Batch(b)
            }
            Err(refused) => *refused,
        },
        Decoded::Status(s, _) => match auth.check(&opened, topic, &s.store_id, &gw) {
            Ok(signed) => Decoded::Status(s, signed),
            Err(refused) => *refused,
        },
        refused @ Decoded::Bad { .. } => refused,
    }
}

fn decode_batch(gw: &str, payload: &[u8]) -> Decoded {
    // Bodies are read one by one: an event of a type this head office does not know (a newer
    // gateway) is stored as sent rather than refusing the batch, which the gateway would re-send
    // forever, holding back everything after it.
    let batch = match RawEventBatch::decode(payload) {
        Ok(b) => b,
        Err(e) => return from_decode_error(gw, &e),
    };
    if batch.gateway_id != gw {
        return bad(
            Some(gw),
            BadReason::GatewayMismatch,
            "batch gateway_id differs from its topic",
        );
    }
    let mut events = Vec::with_capacity(batch.events.len());
    let mut unreadable = 0u64;
    for e in &batch.events {
        // SQLite integers are signed: a sequence number past i64::MAX cannot be stored.
        let Ok(seq) = i64::try_from(e.seq) else {
            return bad(Some(gw), BadReason::Invalid, "sequence number too large");
        };
        let body = match e.body() {
            Ok(body) => body,
            Err(_) => {
                unreadable += 1;
                let body_json = match serde_json::to_string(&e.body) {
                    Ok(j) => j,
                    Err(_) => {
                        return bad(Some(gw), BadReason::Invalid, "event body not serialisable");
                    }
                };
                events.push(StoredEvent {
                    seq,
                    at_ms: e.at_ms,
                    kind: UNREADABLE_KIND,
                    body_json,
                    shed: None,
                    // Whatever it is, an opted-out or erased member's event keeps nothing.
                    presence: e
                        .body
                        .get("member_id")
                        .and_then(serde_json::Value::as_str)
                        .map(|m| super::visits::PresenceFact::Seen {
                            member_id: m.to_string(),
                        }),
                    code_use: None,
                });
                continue;
            }
        };
        let body_json = match serde_json::to_string(&body) {
            Ok(j) => j,
            Err(_) => return bad(Some(gw), BadReason::Invalid, "event body not serialisable"),
        };
        let shed = match &body {
            EventBody::EventsShed {
                first_seq,
                last_seq,
                count,
                kinds,
            } => {
                let (Ok(first), Ok(last), Ok(count)) = (
                    i64::try_from(*first_seq),
                    i64::try_from(*last_seq),
                    i64::try_from(*count),
                ) else {
                    return bad(Some(gw), BadReason::Invalid, "shed range too large");
                };
                if first < 1 || first > last {
                    return bad(Some(gw), BadReason::Invalid, "shed range inverted");
                }
                Some(ShedReport {
                    first_seq: first,
                    last_seq: last,
                    count,
                    kinds_json: serde_json::to_string(kinds).unwrap_or_else(|_| "[]".into()),
                })
            }
            _ => None,
        };
        events.push(StoredEvent {
            seq,
            at_ms: e.at_ms,
            kind: body.kind(),
            body_json,
            shed,
            presence: super::visits::fact(&body),
            code_use: match &body {
                EventBody::QrScanned { code: Some(c), .. } if valid_code_use(c) => Some(c.clone()),
                _ => None,
            },
        });
    }
    let hello = match &batch.hello {
        Some(h) => {
            let ids: Result<Vec<i64>, _> = std::iter::once(&h.boot)
                .chain(&h.boots)
                .map(|&b| i64::try_from(b))
                .collect();
            let Ok(ids) = ids else {
                return bad(Some(gw), BadReason::Invalid, "boot id too large");
            };
            Some(HelloItem {
                boot: ids[0],
                boots: ids[1..].to_vec(),
            })
        }
        None => None,
    };
    Decoded::Batch(IngestBatch {
        gateway_id: batch.gateway_id,
        store_id: batch.store_id,
        hello,
        events,
        signed: false,
        unreadable,
        // Past i64::MAX it is no depth a gateway has: dropped rather than stored wrong.
        outbox: batch.outbox.and_then(|d| i64::try_from(d).ok()),
    })
}

fn decode_status(gw: &str, payload: &[u8]) -> Decoded {
    let status: GatewayStatus = match instore_protocol::decode(payload) {
        Ok(s) => s,
        Err(e) => return from_decode_error(gw, &e),
    };
    if status.v > SCHEMA_VERSION {
        return bad(
            Some(gw),
            BadReason::Version,
            format!("schema version {}", status.v),
        );
    }
    if !valid_id(&status.store_id) {
        return bad(Some(gw), BadReason::Invalid, "store_id");
    }
    if status.gateway_id != gw {
        return bad(
            Some(gw),
            BadReason::GatewayMismatch,
            "status gateway_id differs from its topic",
        );
    }
    Decoded::Status(status, false)
}

/// The contiguous runs of a rising list of sequence numbers, as ack ranges.
pub fn contiguous_ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(s) => r.last = s,
            _ => out.push(SeqRange { first: s, last: s }),
        }
    }
    out
}

/// `<16 hex digits>:<step>`, as a gateway reports a signed code's use.
fn valid_code_use(c: &str) -> bool {
    c.split_once(':').is_some_and(|(kid, step)| {
        kid.len() == 16
            && kid.bytes().all(|b| b.is_ascii_hexdigit())
            && !step.is_empty()
            && step.len() <= 10
            && step.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use instore_protocol::topics;

    const SECRET: &[u8] = b"0123456789abcdef-secret";

    fn auth() -> MessageAuth {
        MessageAuth::new(Registry::new(SECRET), false)
    }

    fn decode(topic: &str, payload: &[u8]) -> Decoded {
        super::decode(topic, payload, &auth())
    }

    /// `message` sealed by gateway `gw` of store `store`, as its agent would.
    fn sealed(topic: &str, store: &str, gw: &str, message: &str) -> Vec<u8> {
        let compact =
            serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(message).unwrap())
                .unwrap();
        let key = auth().gateway_key(store, gw).unwrap();
        instore_protocol::auth::seal(&key, topic, &compact).unwrap()
    }

    const BATCH: &str = r#"{"v":1,"gateway_id":"g1","store_id":"s1","events":[
        {"seq":1,"at_ms":5,"type":"footfall","interval_s":60,"unique_devices":3},
        {"seq":2,"at_ms":6,"type":"gateway_started","version":"1"}]}"#;

    #[test]
    fn an_event_of_an_unknown_type_is_kept_as_sent_and_the_rest_of_the_batch_read() {
        let batch = r#"{"v":1,"gateway_id":"g1","store_id":"s1","events":[
            {"seq":1,"at_ms":5,"type":"footfall","interval_s":60,"unique_devices":3},
            {"seq":2,"at_ms":6,"type":"from_a_newer_gateway","member_id":"M7","x":[1,2]},
            {"seq":3,"at_ms":7,"type":"arrive","member_id":"M1","zone":"door","visit_id":"v"}]}"#;
        let Decoded::Batch(b) = decode(&topics::events("g1"), batch.as_bytes()) else {
            panic!("refused")
        };
        let kinds: Vec<_> = b.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["footfall", UNREADABLE_KIND, "arrive"]);
        assert_eq!(b.unreadable, 1);
        let raw: serde_json::Value = serde_json::from_str(&b.events[1].body_json).unwrap();
        assert_eq!(raw["type"], "from_a_newer_gateway");
        assert_eq!(raw["x"], serde_json::json!([1, 2]));
        // Named member: redacted like any other event if they opted out.
        assert_eq!(
            b.events[1].presence.as_ref().map(|f| f.member_id()),
            Some("M7")
        );
        assert!(b.events[2].presence.is_some());
    }

    #[test]
    fn a_good_batch_becomes_rows_with_their_type() {
        let Decoded::Batch(b) = decode(&topics::events("g1"), BATCH.as_bytes()) else {
            panic!("not a batch")
        };
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[0].kind, "footfall");
        assert!(b.events[1].body_json.contains("gateway_started"));
    }

    #[test]
    fn a_batch_on_another_gateways_topic_is_refused() {
        let d = decode(&topics::events("g2"), BATCH.as_bytes());
        assert!(matches!(
            d,
            Decoded::Bad { reason: BadReason::GatewayMismatch, gateway_id: Some(ref g), .. } if g == "g2"
        ));
    }

    #[test]
    fn a_truncated_batch_is_malformed_and_the_detail_quotes_nothing() {
        let d = decode(&topics::events("g1"), &BATCH.as_bytes()[..40]);
        let Decoded::Bad { reason, detail, .. } = d else {
            panic!("accepted")
        };
        assert_eq!(reason, BadReason::Malformed);
        assert!(!detail.contains("store_id"), "{detail}");
    }

    #[test]
    fn an_oversized_batch_is_refused_before_parsing() {
        let big = vec![b'{'; instore_protocol::MAX_PAYLOAD_BYTES + 1];
        let d = decode(&topics::events("g1"), &big);
        assert!(matches!(
            d,
            Decoded::Bad {
                reason: BadReason::TooLarge,
                ..
            }
        ));
    }

    #[test]
    fn a_status_must_name_its_topics_gateway() {
        let s = br#"{"v":1,"gateway_id":"g1","store_id":"s1","online":true}"#;
        assert!(matches!(
            decode(&topics::status("g1"), s),
            Decoded::Status(_, false)
        ));
        assert!(matches!(
            decode(&topics::status("g9"), s),
            Decoded::Bad {
                reason: BadReason::GatewayMismatch,
                ..
            }
        ));
    }

    #[test]
    fn a_sealed_batch_verifies_for_its_own_gateway_and_store_only() {
        let topic = topics::events("g1");
        let good = sealed(&topic, "s1", "g1", BATCH);
        let Decoded::Batch(b) = decode(&topic, &good) else {
            panic!("refused")
        };
        assert!(b.signed);
        assert_eq!(b.events.len(), 2);
        // Sealed by another gateway's key (or for another store), or moved to another topic.
        for (payload, on) in [
            (sealed(&topic, "s1", "g2", BATCH), topic.clone()),
            (sealed(&topic, "s2", "g1", BATCH), topic.clone()),
            (
                sealed(&topics::status("g1"), "s1", "g1", BATCH),
                topic.clone(),
            ),
        ] {
            assert!(
                matches!(
                    decode(&on, &payload),
                    Decoded::Bad {
                        reason: BadReason::BadMac,
                        ..
                    }
                ),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
        // The store named inside is what the MAC binds: a gateway cannot claim another store.
        let claims_s2 = BATCH.replace("\"s1\"", "\"s2\"");
        let forged = sealed(&topic, "s1", "g1", &claims_s2);
        assert!(matches!(
            decode(&topic, &forged),
            Decoded::Bad {
                reason: BadReason::BadMac,
                ..
            }
        ));
    }

    #[test]
    fn a_sealed_status_is_marked_and_plain_ones_are_refused_when_required() {
        let topic = topics::status("g1");
        let msg = r#"{"v":1,"gateway_id":"g1","store_id":"s1","online":true}"#;
        assert!(matches!(
            decode(&topic, &sealed(&topic, "s1", "g1", msg)),
            Decoded::Status(_, true)
        ));
        let strict = MessageAuth::new(Registry::new(SECRET), true);
        assert!(matches!(
            super::decode(&topic, msg.as_bytes(), &strict),
            Decoded::Bad {
                reason: BadReason::Unsigned,
                ..
            }
        ));
        let mut broken = sealed(&topic, "s1", "g1", msg);
        let n = broken.len();
        broken[n - 4] = b'X';
        assert!(matches!(
            decode(&topic, &broken),
            Decoded::Bad {
                reason: BadReason::BadMac,
                ..
            }
        ));
    }

    #[test]
    fn ack_ranges_are_the_contiguous_runs() {
        let r = contiguous_ranges([1, 2, 3, 7, 9, 10]);
        let pairs: Vec<_> = r.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(pairs, [(1, 3), (7, 7), (9, 10)]);
        assert!(contiguous_ranges([]).is_empty());
    }
}
