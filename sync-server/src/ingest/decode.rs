//! Turning an MQTT message into something to store, or a reason to refuse it. Pure: no I/O.

use instore_protocol::{
    DecodeError, EventBatch, GatewayStatus, SCHEMA_VERSION, SeqRange,
    topics::{GatewayTopic, parse_gateway_topic, valid_id},
};

use instore_protocol::EventBody;

use crate::store::{HelloItem, IngestBatch, ShedReport, StoredEvent};

/// Why a payload was refused; the label of the `bad_payloads` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReason {
    TooLarge,
    Malformed,
    Version,
    Invalid,
    GatewayMismatch,
    UnknownTopic,
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
        }
    }
}

/// What a message on one of head office's subscriptions turned out to be.
#[derive(Debug, Clone)]
pub enum Decoded {
    Batch(IngestBatch),
    Status(GatewayStatus),
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

/// Decodes a message by its topic. Never panics, whatever the bytes.
pub fn decode(topic: &str, payload: &[u8]) -> Decoded {
    match parse_gateway_topic(topic) {
        Some(GatewayTopic::Events(gw)) => decode_batch(&gw, payload),
        Some(GatewayTopic::Status(gw)) => decode_status(&gw, payload),
        Some(GatewayTopic::Ack(gw)) => bad(Some(&gw), BadReason::UnknownTopic, "ack topic"),
        None => bad(None, BadReason::UnknownTopic, "not a gateway topic"),
    }
}

fn decode_batch(gw: &str, payload: &[u8]) -> Decoded {
    let batch = match EventBatch::decode(payload) {
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
    for e in &batch.events {
        // SQLite integers are signed: a sequence number past i64::MAX cannot be stored.
        let Ok(seq) = i64::try_from(e.seq) else {
            return bad(Some(gw), BadReason::Invalid, "sequence number too large");
        };
        let body_json = match serde_json::to_string(&e.body) {
            Ok(j) => j,
            Err(_) => return bad(Some(gw), BadReason::Invalid, "event body not serialisable"),
        };
        let shed = match &e.body {
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
            kind: e.body.kind(),
            body_json,
            shed,
            presence: super::visits::fact(&e.body),
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
    Decoded::Status(status)
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

#[cfg(test)]
mod tests {
    use super::*;
    use instore_protocol::topics;

    const BATCH: &str = r#"{"v":1,"gateway_id":"g1","store_id":"s1","events":[
        {"seq":1,"at_ms":5,"type":"footfall","interval_s":60,"unique_devices":3},
        {"seq":2,"at_ms":6,"type":"gateway_started","version":"1"}]}"#;

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
            Decoded::Status(_)
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
    fn ack_ranges_are_the_contiguous_runs() {
        let r = contiguous_ranges([1, 2, 3, 7, 9, 10]);
        let pairs: Vec<_> = r.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(pairs, [(1, 3), (7, 7), (9, 10)]);
        assert!(contiguous_ranges([]).is_empty());
    }
}
