//! Authenticated MQTT payloads: a MAC over the topic and the message, carried in the message.
//!
//! A sealed payload is the message's JSON object with one more member at its end,
//! `"auth":{"v":1,"mac":"<64 hex>"}`, so a reader that ignores unknown fields reads it as
//! before. The MAC is HMAC-SHA256 under the sender's key over `instore-mqtt-v1\n<topic>\n<the
//! object without the auth member>`: a payload moved to another topic, or changed in one byte,
//! fails. Keys:
//! - a gateway's messages (batches, status, its last will) and head office's acks to it: the
//!   gateway's [`MessageKey::for_gateway`], derived from its token, which only that gateway and
//!   head office hold;
//! - head office's notices to a store: [`MessageKey::for_store`], derived from head office's
//!   secret and handed to the store's gateways with their change responses (a gateway can forge
//!   at most a notice to its own store, which only makes it and its neighbours ask for changes).
//!
//! Nothing is encrypted (TLS keeps payloads from being read); this keeps them from being
//! forged, on any broker, ACLs or not. Replays of a whole payload on its own topic stay
//! possible: batches are idempotent, acks are clipped to what was sent, notices only prompt a
//! pull; a replayed status can mark a gateway offline until its next status.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The response header of `GET /api/stores/{store}/changes` that hands a store's gateways the
/// key of head office's notices to that store (hex).
pub const NOTICE_KEY_HEADER: &str = "x-instore-notice-key";

const TRAILER_HEAD: &[u8] = b",\"auth\":{\"v\":1,\"mac\":\"";
const TRAILER_TAIL: &[u8] = b"\"}}";
const MAC_HEX: usize = 64;
/// Bytes sealing adds to a message.
pub const SEAL_OVERHEAD: usize = TRAILER_HEAD.len() + MAC_HEX + TRAILER_TAIL.len() - 1;
const DOMAIN: &[u8] = b"instore-mqtt-v1\n";

/// A key for sealing and verifying payloads. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageKey([u8; 32]);

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(..)")
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail, and the fallback keeps it total.
    HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
}

impl MessageKey {
    /// The key of a gateway's messages and of head office's acks to it, from its token (see
    /// [`crate::token`]).
    pub fn for_gateway(token: &str) -> Self {
        let mut m = hmac(token.as_bytes());
        m.update(b"instore-mqtt-gateway-v1");
        Self(m.finalize().into_bytes().into())
    }

    /// The key of head office's notices to `store_id`, from head office's secret.
    pub fn for_store(secret: &[u8], store_id: &str) -> Self {
        let mut m = hmac(secret);
        m.update(b"instore-mqtt-store-v1:");
        m.update(store_id.as_bytes());
        Self(m.finalize().into_bytes().into())
    }

    /// The key a store's gateways seal what they send each other over the store LAN with
    /// (forwarded sightings, hub state, hand-back), from the store's shared `[hub] key`.
    pub fn for_store_lan(secret: &str, store_id: &str) -> Self {
        let mut m = hmac(secret.as_bytes());
        m.update(b"instore-lan-v1:");
        m.update(store_id.as_bytes());
        Self(m.finalize().into_bytes().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    fn mac(&self, topic: &str, message: &[u8]) -> HmacSha256 {
        let mut m = hmac(&self.0);
        m.update(DOMAIN);
        m.update(topic.as_bytes());
        m.update(b"\n");
        m.update(message);
        m
    }
}

/// Why a payload cannot be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("only a non-empty JSON object can be sealed")]
    NotAnObject,
    #[error("the payload's MAC is not 64 lowercase hex digits")]
    MalformedMac,
}

/// Seals `message` (a compact, non-empty JSON object, as serde_json writes it) for `topic`.
pub fn seal(key: &MessageKey, topic: &str, message: &[u8]) -> Result<Vec<u8>, AuthError> {
    if message.len() < 3 || message.first() != Some(&b'{') || message.last() != Some(&b'}') {
        return Err(AuthError::NotAnObject);
    }
    let mac = key.mac(topic, message).finalize().into_bytes();
    let mut out = Vec::with_capacity(message.len() + TRAILER_HEAD.len() + MAC_HEX + 3);
    out.extend_from_slice(&message[..message.len() - 1]);
    out.extend_from_slice(TRAILER_HEAD);
    out.extend_from_slice(hex::encode(mac).as_bytes());
    out.extend_from_slice(TRAILER_TAIL);
    Ok(out)
}

/// A payload taken apart: the message as it was before sealing, and its MAC if it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened<'a> {
    Sealed {
        message: Vec<u8>,
        mac: [u8; 32],
    },
    /// No `auth` member at the end: a sender that does not seal (an older release).
    Plain(&'a [u8]),
}

impl Opened<'_> {
    /// The message bytes to decode.
    pub fn message(&self) -> &[u8] {
        match self {
            Opened::Sealed { message, .. } => message,
            Opened::Plain(m) => m,
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, Opened::Sealed { .. })
    }

    /// Whether the MAC is `key`'s for `topic` (constant time); false for a plain payload.
    pub fn verify(&self, key: &MessageKey, topic: &str) -> bool {
        match self {
            Opened::Sealed { message, mac } => key.mac(topic, message).verify_slice(mac).is_ok(),
            Opened::Plain(_) => false,
        }
    }
}

/// Splits a payload into its message and MAC. Never panics, whatever the bytes.
pub fn open(payload: &[u8]) -> Result<Opened<'_>, AuthError> {
    let trailer = TRAILER_HEAD.len() + MAC_HEX + TRAILER_TAIL.len();
    if payload.len() < trailer + 1 || !payload.ends_with(TRAILER_TAIL) {
        return Ok(Opened::Plain(payload));
    }
    let start = payload.len() - trailer;
    if &payload[start..start + TRAILER_HEAD.len()] != TRAILER_HEAD {
        return Ok(Opened::Plain(payload));
    }
    let hex_at = start + TRAILER_HEAD.len();
    let digits = &payload[hex_at..hex_at + MAC_HEX];
    // Lowercase only, as sealed: one payload, one spelling.
    if !digits
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(AuthError::MalformedMac);
    }
    let mut mac = [0u8; 32];
    hex::decode_to_slice(&payload[hex_at..hex_at + MAC_HEX], &mut mac)
        .map_err(|_| AuthError::MalformedMac)?;
    let mut message = Vec::with_capacity(start + 1);
    message.extend_from_slice(&payload[..start]);
    message.push(b'}');
    Ok(Opened::Sealed { message, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = br#"{"v":1,"gateway_id":"g1","store_id":"s1","online":true}"#;

    fn key() -> MessageKey {
        MessageKey::for_gateway("a-gateway-token")
    }

    #[test]
    fn a_sealed_payload_is_the_same_json_plus_auth_and_verifies_on_its_topic_only() {
        let sealed = seal(&key(), "t/1", MSG).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(v["gateway_id"], "g1");
        assert_eq!(v["auth"]["v"], 1);
        let opened = open(&sealed).unwrap();
        assert_eq!(opened.message(), MSG);
        assert!(opened.verify(&key(), "t/1"));
        assert!(!opened.verify(&key(), "t/2"), "moved to another topic");
        assert!(!opened.verify(&MessageKey::for_gateway("other"), "t/1"));
    }

    #[test]
    fn one_changed_byte_anywhere_fails() {
        let sealed = seal(&key(), "t", MSG).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let ok = match open(&bad) {
                Ok(o) => o.verify(&key(), "t"),
                Err(_) => false,
            };
            assert!(!ok, "byte {i} changed and still verified");
        }
    }

    #[test]
    fn a_plain_payload_is_plain_and_never_verifies() {
        let opened = open(MSG).unwrap();
        assert_eq!(opened, Opened::Plain(MSG));
        assert!(!opened.verify(&key(), "t"));
        assert_eq!(open(b"").unwrap(), Opened::Plain(b""));
        assert_eq!(seal(&key(), "t", b"{}"), Err(AuthError::NotAnObject));
        assert_eq!(seal(&key(), "t", b"[1]"), Err(AuthError::NotAnObject));
    }

    #[test]
    fn a_trailer_with_a_bad_mac_is_an_error() {
        let mut sealed = seal(&key(), "t", MSG).unwrap();
        let n = sealed.len();
        sealed[n - 5] = b'z';
        assert_eq!(open(&sealed), Err(AuthError::MalformedMac));
    }

    #[test]
    fn test_vector() {
        // Checked against Python's hmac module, so another implementation (a broker plugin, a
        // field tool) can check itself against these.
        let k = MessageKey::for_gateway("0123456789abcdef");
        let sealed = seal(&k, "instore/v1/gateways/g1/status", br#"{"a":1}"#).unwrap();
        assert_eq!(
            String::from_utf8(sealed).unwrap(),
            r#"{"a":1,"auth":{"v":1,"mac":"e1d6d0c4c922cedcbdf5e12ab8b19859153f14f74af293cd8bf0e941c72ac53b"}}"#
        );
        assert_eq!(
            MessageKey::for_store(b"secret", "s1").to_hex(),
            "47b0603c55ec11fc816662589d95e0e17c2d12adc0b04ccdf754cccae80ca76f"
        );
    }
}
