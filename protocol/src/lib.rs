//! The wire contract between store gateways and head office.
//!
//! Everything that crosses a process boundary is defined here once: MQTT topic names, the event
//! batch and its acknowledgement, gateway status, the member record (the NDJSON import format and
//! the snapshot the stores download) and gateway tokens. Agent and sync-server convert these into
//! their own domain types at the edge. This crate does no I/O and depends on serde and little else.

pub mod auth;
pub mod campaign;
pub mod changes;
pub mod eddystone_eid;
pub mod event;
pub mod holdout;
pub mod member;
pub mod member_code;
pub mod purchase;
pub mod qr;
pub mod rotating;
pub mod rules;
pub mod token;
pub mod topics;

pub use event::{
    Ack, AlertOutcomeKind, AlertPriority, BootFloor, Event, EventBatch, EventBody, GatewayStatus,
    Hello, MAX_HELLO_BOOTS, MAX_SEQ_JUMP, MemberSnapshot, MembersNotice, RawEvent, RawEventBatch,
    SEQ_LIMIT, ScannerState, SeqRange, ShedClass, Welcome,
};
pub use member::{
    Consent, Identifier, IdentifierKey, MemberError, MemberLines, MemberRecord, parse_ndjson,
};

/// Version of every JSON payload in this crate. A receiver refuses payloads with a newer major.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest MQTT payload either side sends or accepts. rumqttc's default is 10 KiB, which a batch of
/// events outgrows; both ends set their limits from this one number.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Errors decoding a payload from the wire.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported schema version {0} (this build speaks {SCHEMA_VERSION})")]
    Version(u32),
    #[error("invalid payload: {0}")]
    Invalid(&'static str),
}

/// Decodes a JSON payload with the size limit applied first, so a hostile payload costs nothing.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    Ok(serde_json::from_slice(bytes)?)
}
