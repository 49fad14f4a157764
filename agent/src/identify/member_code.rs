//! Signed member codes ([`instore_protocol::member_code`], `ISQ2:`) scanned at a till: payload
//! in, the member out, each code at most once in this store.
//!
//! A code is checked against the public key of the device it names (a `device_key` identifier
//! head office put in the member's record), offline. This gateway holds no secret that makes a
//! code: its disk gives an attacker public keys only. Then the replay check: the first scan of a
//! code identifies; the same code again on the same scanner (zone) within [`DUPLICATE_MS`] is a
//! `duplicate` (a scanner that reads twice, a clerk who scans again): the first result stands
//! and nothing happens twice; anywhere else, or later, it is refused as `replayed`. Seen codes
//! are kept until they could no longer pass the time check, at most [`MAX_SEEN`]; when that many
//! valid codes are fresh at once, new ones are refused (`busy`) rather than forgetting one that
//! could then be replayed. Pure: time passed in.

use std::collections::HashMap;

use instore_protocol::member_code::{self, CodeError, KEY_ID_LEN, MAX_AGE_STEPS, STEP_SECS};

use crate::cache::{MemberSource, Slot};

/// A second scan of the same code by the same scanner within this is a duplicate, not a replay.
pub const DUPLICATE_MS: i64 = 10_000;
/// Codes remembered at most (every one a valid, fresh code: far beyond any till's rate).
pub const MAX_SEEN: usize = 4_096;
/// A code cannot pass the time check once its step is this far behind (plus a step of slack).
const FORGET_AFTER_MS: i64 = (MAX_AGE_STEPS + 2) * STEP_SECS * 1000;

/// What a scan of a signed code came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeOutcome {
    /// First scan of a valid code: this member, and the code's id (`key_id:step`, what head
    /// office compares across stores; not the code, which is a credential while it lives).
    Member(Slot, String),
    /// The same code again on the same scanner, seconds later: already handled.
    Duplicate(Slot),
    /// Refused, with the reason counted (`CodeError::reason`, or `busy`).
    Refused(&'static str),
}

#[derive(Debug, Clone)]
struct Seen {
    zone: String,
    first_ms: i64,
    slot: Slot,
}

/// The member-code check and its memory of codes seen in this store.
#[derive(Debug)]
pub struct MemberCodes {
    /// Whether today's HMAC codes ([`instore_protocol::qr`]) are still accepted.
    pub legacy: bool,
    seen: HashMap<([u8; KEY_ID_LEN], u32), Seen>,
}

impl Default for MemberCodes {
    fn default() -> Self {
        Self::new(true)
    }
}

impl MemberCodes {
    pub fn new(legacy: bool) -> Self {
        Self {
            legacy,
            seen: HashMap::new(),
        }
    }

    /// Codes remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Checks a scanned `payload` (an `ISQ2:` code) read in `zone` at `wall_ms`. Reads the
    /// device key from `source` (a scan is rare: disk is fine).
    pub fn check(
        &mut self,
        payload: &str,
        zone: &str,
        source: &mut dyn MemberSource,
        wall_ms: i64,
    ) -> CodeOutcome {
        match self.verify(payload, source, wall_ms) {
            Ok((key, slot)) => match self.admit(key, slot, zone, wall_ms) {
                CodeOutcome::Member(slot, _) => {
                    CodeOutcome::Member(slot, format!("{}:{}", hex::encode(key.0), key.1))
                }
                other => other,
            },
            Err(e) => CodeOutcome::Refused(e.reason()),
        }
    }

    fn verify(
        &self,
        payload: &str,
        source: &mut dyn MemberSource,
        wall_ms: i64,
    ) -> Result<(([u8; KEY_ID_LEN], u32), Slot), CodeError> {
        let code = member_code::parse(payload)?;
        // Cheap before the disk: a stale photo costs nothing.
        code.check_time(wall_ms)?;
        let device = match source.device_key(&code.key_id) {
            Ok(Some(d)) if d.revoked => return Err(CodeError::RevokedKey),
            Ok(Some(d)) => d,
            Ok(None) => return Err(CodeError::UnknownKey),
            Err(e) => {
                tracing::warn!(error = %e, "member code: device key lookup failed");
                return Err(CodeError::UnknownKey);
            }
        };
        code.verify(device.alg, &device.public_key, wall_ms)?;
        Ok(((code.key_id, code.step), device.slot))
    }

    fn admit(
        &mut self,
        key: ([u8; KEY_ID_LEN], u32),
        slot: Slot,
        zone: &str,
        wall_ms: i64,
    ) -> CodeOutcome {
        if let Some(seen) = self.seen.get(&key) {
            if seen.zone == zone && wall_ms - seen.first_ms <= DUPLICATE_MS {
                return CodeOutcome::Duplicate(seen.slot);
            }
            return CodeOutcome::Refused(CodeError::Replayed.reason());
        }
        if self.seen.len() >= MAX_SEEN {
            let horizon =
                i64::from(member_code::step_of_ms(wall_ms)) * STEP_SECS * 1000 - FORGET_AFTER_MS;
            self.seen
                .retain(|(_, step), _| i64::from(*step) * STEP_SECS * 1000 > horizon);
            if self.seen.len() >= MAX_SEEN {
                return CodeOutcome::Refused("busy");
            }
        }
        self.seen.insert(
            key,
            Seen {
                zone: zone.to_string(),
                first_ms: wall_ms,
                slot,
            },
        );
        CodeOutcome::Member(slot, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheError, DeviceKey, Member};
    use instore_protocol::{member_code::Algorithm, rotating::DayKey};

    // The vectors of protocol/src/member_code.rs.
    const PUBLIC: &str = "04f51b66ce01e5a7fffef999ae5affbadf12d994871806a01d0da3c1f04d5643ea3429a5063750016d6ad08c8fc06cd68c7fa668a99ca345a8bb503ab95f9ff1a3";
    const CODE: &str = "ISQ2:8E0YOU+IOY7HTH1KWG+HOR0O%N6/HH8.6ESB0DM*G9GEQM$U1+DLIO.:H B3POTU56IAJI*I1 3.78$ERD-T$SA9S4N343PJ/7QACER+ACI5L 616A$2";
    const NOW: i64 = 59_000_000 * 30_000 + 5_000;

    /// One member (slot 7) with the vector's device key, or none.
    struct OneDevice(bool);

    impl MemberSource for OneDevice {
        fn member(&mut self, _: Slot) -> Result<Option<Member>, CacheError> {
            Ok(None)
        }
        fn slot_of(&mut self, _: &str) -> Result<Option<Slot>, CacheError> {
            Ok(None)
        }
        fn day_key(&mut self, _: Slot, _: u32) -> Result<Option<DayKey>, CacheError> {
            Ok(None)
        }
        fn device_key(&mut self, id: &[u8; KEY_ID_LEN]) -> Result<Option<DeviceKey>, CacheError> {
            let public_key = hex::decode(PUBLIC).unwrap();
            Ok(
                (self.0 && member_code::key_id(&public_key) == *id).then_some(DeviceKey {
                    slot: 7,
                    alg: Algorithm::Es256,
                    public_key,
                    revoked: false,
                }),
            )
        }
    }

    #[test]
    fn a_code_identifies_once_then_is_a_duplicate_on_its_scanner_and_a_replay_elsewhere() {
        let mut c = MemberCodes::new(false);
        let src = &mut OneDevice(true);
        let id = format!("7ef1a8c12a87d60b:{}", 59_000_000);
        assert_eq!(c.check(CODE, "till", src, NOW), CodeOutcome::Member(7, id));
        assert_eq!(
            c.check(CODE, "till", src, NOW + 3_000),
            CodeOutcome::Duplicate(7)
        );
        assert_eq!(
            c.check(CODE, "fitting", src, NOW + 4_000),
            CodeOutcome::Refused("replayed")
        );
        assert_eq!(
            c.check(CODE, "till", src, NOW + DUPLICATE_MS + 1),
            CodeOutcome::Refused("replayed")
        );
    }

    #[test]
    fn unknown_tampered_stale_and_future_codes_are_refused_with_their_reasons() {
        let mut c = MemberCodes::new(false);
        assert_eq!(
            c.check(CODE, "till", &mut OneDevice(false), NOW),
            CodeOutcome::Refused("unknown_key")
        );
        let src = &mut OneDevice(true);
        let mut tampered = member_code::parse(CODE).unwrap();
        tampered.signature[0] ^= 0x40;
        let tampered = member_code::encode(&tampered.key_id, tampered.step, &tampered.signature);
        assert_eq!(
            c.check(&tampered, "till", src, NOW),
            CodeOutcome::Refused("bad_signature")
        );
        assert_eq!(
            c.check(CODE, "till", src, NOW + 120_000),
            CodeOutcome::Refused("expired")
        );
        assert_eq!(
            c.check(CODE, "till", src, NOW - 90_000),
            CodeOutcome::Refused("future")
        );
        assert_eq!(
            c.check("ISQ2:xx", "till", src, NOW),
            CodeOutcome::Refused("malformed")
        );
        assert_eq!(c.remembered(), 0, "refused codes are not remembered");
        // Refusals did not spend the code.
        assert!(matches!(
            c.check(CODE, "till", src, NOW),
            CodeOutcome::Member(7, _)
        ));
    }

    #[test]
    fn memory_is_bounded_and_forgets_only_codes_that_can_no_longer_pass() {
        let mut c = MemberCodes::new(false);
        let step = member_code::step_of_ms(NOW);
        for i in 0..MAX_SEEN {
            let key = ((i as u64).to_be_bytes(), step - 10);
            c.admit(key, 1, "till", NOW - 300_000);
        }
        // All stale: a new code makes room.
        assert!(matches!(
            c.admit(([9; 8], step), 2, "till", NOW),
            CodeOutcome::Member(2, _)
        ));
        assert_eq!(c.remembered(), 1);
        for i in 0..MAX_SEEN - 1 {
            c.admit(((i as u64).to_be_bytes(), step), 1, "till", NOW);
        }
        // All fresh: refused rather than forgetting one that could be replayed.
        assert_eq!(
            c.admit(([8; 8], step), 3, "till", NOW),
            CodeOutcome::Refused("busy")
        );
        assert_eq!(c.remembered(), MAX_SEEN);
    }
}
