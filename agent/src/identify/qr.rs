//! Member QR codes scanned at a till or fitting room: payload text in, the member out.
//!
//! The payload format and its signature are specified in [`instore_protocol::qr`]; this module
//! looks the member up in the [`MemberIndex`] and checks the code with the day key the gateway
//! holds for the code's day. Pure: no I/O, time passed in.

pub use instore_protocol::qr::QrError;
use instore_protocol::{IdentifierKey, changes::LookupResponse};

use crate::cache::{MemberIndex, MemberSource, Slot};

/// Why a scanned code identified nobody: the code's own fault, or a member the gateway does not
/// hold (then head office may be asked, see [`verify_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrOutcome {
    Member(Slot),
    /// A well-formed code naming a member the gateway does not hold.
    NotHeld {
        member_id: String,
    },
    Refused(QrError),
}

/// The consenting member held here whose fresh, correctly signed code `payload` is. Reads the
/// member's slot and day key from `source` (a scan is rare: disk is fine).
pub fn identify_qr(
    payload: &str,
    index: &MemberIndex,
    source: &mut dyn MemberSource,
    wall_ms: i64,
) -> QrOutcome {
    let code = match instore_protocol::qr::parse(payload) {
        Ok(c) => c,
        Err(e) => return QrOutcome::Refused(e),
    };
    let slot = match source.slot_of(&code.member_id) {
        Ok(Some(s)) if index.is_live(s) => s,
        Ok(_) => {
            return QrOutcome::NotHeld {
                member_id: code.member_id,
            };
        }
        Err(e) => {
            tracing::warn!(error = %e, "QR: member lookup in the cache failed");
            return QrOutcome::Refused(QrError::UnknownMember);
        }
    };
    let key = match source.day_key(slot, code.day()) {
        Ok(Some(k)) => k,
        Ok(None) => return QrOutcome::Refused(QrError::NoKey),
        Err(e) => {
            tracing::warn!(error = %e, "QR: day key read failed");
            return QrOutcome::Refused(QrError::NoKey);
        }
    };
    match code.verify(&key, wall_ms) {
        Ok(()) => QrOutcome::Member(slot),
        Err(e) => QrOutcome::Refused(e),
    }
}

/// Checks a code against the member head office returned for it, with the keys it returned, as
/// for a member held here: head office's answer alone never identifies anyone.
pub fn verify_lookup(payload: &str, found: &LookupResponse, wall_ms: i64) -> Result<(), QrError> {
    let code = instore_protocol::qr::parse(payload)?;
    if code.member_id != found.member.member_id || !found.member.consent.presence {
        return Err(QrError::UnknownMember);
    }
    let key = found
        .keys
        .iter()
        .chain(&found.member.identifiers)
        .filter_map(|k| k.key().ok())
        .find_map(|k| match k {
            IdentifierKey::RotatingDayKey { day, key } if day == code.day() => Some(key),
            _ => None,
        })
        .ok_or(QrError::NoKey)?;
    code.verify(&key, wall_ms)
}

#[cfg(test)]
mod tests {
    use instore_protocol::{
        parse_ndjson,
        qr::sign,
        rotating::{day_key, shipped_days},
    };

    use super::*;

    const NOW: i64 = 20_000 * 86_400_000 + 3_600_000;

    fn secret() -> [u8; 32] {
        [7; 32]
    }

    fn members() -> crate::cache::Members {
        let keys: Vec<String> = shipped_days(NOW)
            .map(|d| {
                format!(
                    r#"{{"kind":"rotating_day_key","day":{d},"key":"{}"}}"#,
                    hex::encode(day_key(&secret(), d))
                )
            })
            .collect();
        let text = format!(
            r#"{{"member_id":"M1","display_name":"m","tier":"gold","consent":{{"presence":true}},"identifiers":[{}]}}
{{"member_id":"M2","display_name":"n","tier":"gold","consent":{{"presence":false}},"identifiers":[]}}"#,
            keys.join(",")
        );
        let (records, errors) = parse_ndjson(&text);
        assert!(errors.is_empty(), "{errors:?}");
        crate::cache::Members::in_memory(1, &records)
    }

    fn identify(code: &str, m: &mut crate::cache::Members, at: i64) -> Result<String, QrError> {
        match identify_qr(code, &m.index, &mut *m.records, at) {
            QrOutcome::Member(slot) => Ok(m.records.member(slot).unwrap().unwrap().member_id),
            QrOutcome::NotHeld { .. } => Err(QrError::UnknownMember),
            QrOutcome::Refused(e) => Err(e),
        }
    }

    #[test]
    fn a_fresh_code_identifies_its_member() {
        let code = sign("M1", &day_key(&secret(), 20_000), NOW);
        let m = identify(&code, &mut members(), NOW + 5_000).unwrap();
        assert_eq!(m, "M1");
    }

    #[test]
    fn a_stale_photo_a_forgery_or_a_stranger_is_refused() {
        let idx = &mut members();
        let code = sign("M1", &day_key(&secret(), 20_000), NOW);
        assert!(matches!(
            identify(&code, idx, NOW + 600_000),
            Err(QrError::Expired { .. })
        ));
        let forged = sign("M1", &day_key(&[8; 32], 20_000), NOW);
        assert_eq!(identify(&forged, idx, NOW), Err(QrError::BadSignature));
        let no_consent = sign("M2", &day_key(&secret(), 20_000), NOW);
        assert_eq!(identify(&no_consent, idx, NOW), Err(QrError::UnknownMember));
        let yesterday = NOW - 86_400_000;
        let old = sign("M1", &day_key(&secret(), 19_999), yesterday);
        assert_eq!(identify(&old, idx, yesterday), Err(QrError::NoKey));
        assert_eq!(identify("hello", idx, NOW), Err(QrError::Format));
    }
}
