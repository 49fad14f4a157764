//! What a store's gateways send each other over the LAN. Pure: values in, bytes out, and back,
//! with typed errors.
//!
//! Every message is a JSON object sealed with [`instore_protocol::auth`] under the store's LAN
//! key ([`MessageKey::for_store_lan`]) for its route (`relay/sightings`, `relay/state`,
//! `relay/handback`), so a message is good for one route only and a gateway without the key
//! can forge none. Each carries its sender's wall clock (`sent_ms`); one more than
//! [`MAX_SKEW_MS`] away from the reader's is refused, so a recorded message is worthless a
//! little later. Sightings also carry the sender's process (`boot`) and a number that grows
//! with each batch (`seq`): the hub refuses a batch not newer than the last of its boot.
//!
//! A sighting's time: `t_ms` on the sender's monotonic clock and the batch's `mono_ms` (the
//! same clock when it was sent) give its age, which the hub subtracts from its own clock on
//! arrival. A sender's clock is never compared with the hub's except for `sent_ms`' skew.

use instore_protocol::auth::{self, MessageKey};
use serde::{Deserialize, Serialize};

use crate::sources::{Advert, record::AdvertRecord};

pub const VERSION: u32 = 1;
/// Largest message read: a batch of 100 ms from a busy store is a few tens of KiB.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most sightings in one batch.
pub const MAX_SIGHTINGS: usize = 4096;
/// Oldest a sighting may be when it arrives; older ones are refused as stale.
pub const MAX_AGE_MS: u64 = 5_000;
/// How far a sender's wall clock may be from the reader's.
pub const MAX_SKEW_MS: u64 = 30_000;

pub const SIGHTINGS_ROUTE: &str = "relay/sightings";
pub const STATE_ROUTE: &str = "relay/state";
pub const HANDBACK_ROUTE: &str = "relay/handback";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSighting {
    pub zone: String,
    /// The advert; its `t_ms` is the sender's monotonic clock when it was heard.
    pub advert: AdvertRecord,
}

/// One forwarding round of one gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SightingBatch {
    pub v: u32,
    pub store_id: String,
    pub gateway_id: String,
    pub boot: String,
    pub seq: u64,
    pub sent_ms: u64,
    /// The sender's monotonic clock when it sent the batch.
    pub mono_ms: u64,
    pub sightings: Vec<WireSighting>,
}

/// What a gateway says of itself (`GET /api/relay/state`), sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubState {
    pub v: u32,
    pub store_id: String,
    pub gateway_id: String,
    /// `hub`, `receiver` or `standby`.
    pub role: String,
    /// Whether it is acting as the store's hub now.
    pub active: bool,
    pub sent_ms: u64,
    /// Where tablets may reach the other gateways that can act as hub.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// A hub, starting, asks a standby to step down (`POST /api/relay/handback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handback {
    pub v: u32,
    pub store_id: String,
    pub gateway_id: String,
    pub sent_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes, more than {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("not sealed, or not under this store's key")]
    BadSeal,
    #[error("not a message of this kind: {0}")]
    Json(String),
    #[error("version {0}, this gateway reads {VERSION}")]
    Version(u32),
    #[error("from store {0:?}, not this one")]
    WrongStore(String),
    #[error("sent {0} ms away from this gateway's clock")]
    Skew(i64),
    #[error("{0} sightings, more than {MAX_SIGHTINGS}")]
    TooMany(usize),
}

impl WireError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooLarge(_) | WireError::TooMany(_) => "too_large",
            WireError::BadSeal => "bad_seal",
            WireError::Json(_) | WireError::Version(_) => "malformed",
            WireError::WrongStore(_) => "wrong_store",
            WireError::Skew(_) => "clock",
        }
    }
}

/// `value` as a sealed JSON object for `route`.
pub fn seal<T: Serialize>(key: &MessageKey, route: &str, value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        // Our own structs always serialise to a non-empty object.
        Ok(json) => auth::seal(key, route, &json).unwrap_or(json),
        Err(_) => Vec::new(),
    }
}

/// The message of a sealed payload for `route`, checked against `key`.
pub fn open<T: serde::de::DeserializeOwned>(
    key: &MessageKey,
    route: &str,
    payload: &[u8],
) -> Result<T, WireError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(payload.len()));
    }
    let opened = auth::open(payload).map_err(|_| WireError::BadSeal)?;
    if !opened.verify(key, route) {
        return Err(WireError::BadSeal);
    }
    serde_json::from_slice(opened.message()).map_err(|e| WireError::Json(e.to_string()))
}

/// This gateway's wall clock, ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    crate::now_ms().max(0) as u64
}

/// Checks what every message carries: version, store, clock.
pub fn check_header(
    v: u32,
    store_id: &str,
    sent_ms: u64,
    own_store: &str,
    now_wall_ms: u64,
) -> Result<(), WireError> {
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    if store_id != own_store {
        return Err(WireError::WrongStore(store_id.to_string()));
    }
    let skew = sent_ms as i64 - now_wall_ms as i64;
    if skew.unsigned_abs() > MAX_SKEW_MS {
        return Err(WireError::Skew(skew));
    }
    Ok(())
}

/// Opens and checks a batch of forwarded sightings.
pub fn open_batch(
    key: &MessageKey,
    payload: &[u8],
    own_store: &str,
    now_wall_ms: u64,
) -> Result<SightingBatch, WireError> {
    let b: SightingBatch = open(key, SIGHTINGS_ROUTE, payload)?;
    check_header(b.v, &b.store_id, b.sent_ms, own_store, now_wall_ms)?;
    if b.sightings.len() > MAX_SIGHTINGS {
        return Err(WireError::TooMany(b.sightings.len()));
    }
    Ok(b)
}

/// A sighting of a batch, made local: the advert, its zone and how long ago it was heard.
/// `None` when its advert does not parse or it is too old (the caller counts it).
pub fn local_sighting(batch_mono_ms: u64, s: &WireSighting) -> Option<(String, u64, Advert)> {
    let age = batch_mono_ms.checked_sub(s.advert.t_ms)?;
    if age > MAX_AGE_MS || s.zone.is_empty() || s.zone.len() > 64 {
        return None;
    }
    let advert = s.advert.to_advert().ok()?;
    Some((s.zone.clone(), age, advert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::AddressType;

    fn key() -> MessageKey {
        MessageKey::for_store_lan("a store secret of length", "s1")
    }

    fn batch(sent_ms: u64) -> SightingBatch {
        let advert = Advert {
            address: [0xC0, 1, 2, 3, 4, 5],
            address_type: AddressType::Random,
            rssi: -61,
            manufacturer_data: vec![(0x004c, vec![2, 0x15, 1, 2])],
            service_data: vec![],
        };
        SightingBatch {
            v: VERSION,
            store_id: "s1".into(),
            gateway_id: "gw-2".into(),
            boot: "b1".into(),
            seq: 1,
            sent_ms,
            mono_ms: 10_500,
            sightings: vec![WireSighting {
                zone: "fitting-rooms".into(),
                advert: AdvertRecord::from_advert(10_000, &advert),
            }],
        }
    }

    #[test]
    fn a_sealed_batch_reads_back_and_its_sighting_is_aged() {
        let now = 1_700_000_000_000;
        let bytes = seal(&key(), SIGHTINGS_ROUTE, &batch(now));
        let b = open_batch(&key(), &bytes, "s1", now + 1_000).unwrap();
        assert_eq!(b, batch(now));
        let (zone, age, advert) = local_sighting(b.mono_ms, &b.sightings[0]).unwrap();
        assert_eq!((zone.as_str(), age), ("fitting-rooms", 500));
        assert_eq!(advert.rssi, -61);
        assert_eq!(advert.manufacturer_data[0].0, 0x004c);
    }

    #[test]
    fn forged_moved_stale_and_foreign_messages_are_refused() {
        let now = 1_700_000_000_000;
        let good = seal(&key(), SIGHTINGS_ROUTE, &batch(now));
        let other = MessageKey::for_store_lan("another store's secret", "s1");
        assert_eq!(
            open_batch(&other, &good, "s1", now),
            Err(WireError::BadSeal)
        );
        // The same message presented for another route: a state reply cannot be made of it.
        assert_eq!(
            open::<HubState>(&key(), STATE_ROUTE, &good),
            Err(WireError::BadSeal)
        );
        let mut tampered = good.clone();
        let at = tampered.iter().position(|&b| b == b'6').unwrap();
        tampered[at] = b'7';
        assert_eq!(
            open_batch(&key(), &tampered, "s1", now),
            Err(WireError::BadSeal)
        );
        let plain = serde_json::to_vec(&batch(now)).unwrap();
        assert_eq!(
            open_batch(&key(), &plain, "s1", now),
            Err(WireError::BadSeal)
        );
        assert!(matches!(
            open_batch(&key(), &good, "s1", now + MAX_SKEW_MS + 1),
            Err(WireError::Skew(_))
        ));
        assert_eq!(
            open_batch(&key(), &good, "s2", now),
            Err(WireError::WrongStore("s1".into()))
        );
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            open_batch(&key(), &big, "s1", now),
            Err(WireError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }

    #[test]
    fn old_future_and_broken_sightings_are_left_out() {
        let b = batch(0);
        let mut s = b.sightings[0].clone();
        assert!(local_sighting(10_000 + MAX_AGE_MS, &s).is_some());
        assert!(local_sighting(10_001 + MAX_AGE_MS, &s).is_none(), "too old");
        assert!(
            local_sighting(9_999, &s).is_none(),
            "heard after it was sent"
        );
        s.advert.address = "not an address".into();
        assert!(local_sighting(10_000, &s).is_none());
        s = b.sightings[0].clone();
        s.zone = String::new();
        assert!(local_sighting(10_000, &s).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let k = key();
        for bytes in [
            &b""[..],
            b"{}",
            b"null",
            b"{\"auth\":{\"v\":1,\"mac\":\"00\"}}",
            &[0xff; 300],
        ] {
            assert!(open_batch(&k, bytes, "s1", 0).is_err());
        }
    }
}
