//! Member QR codes scanned at a till or fitting room: payload text in, the member out.
//!
//! The payload format and its signature are specified in [`instore_protocol::qr`]; this module
//! looks the member up in the [`MemberIndex`] and checks the code with the day key the gateway
//! holds for the code's day. Pure: no I/O, time passed in.

use std::sync::Arc;

pub use instore_protocol::qr::QrError;

use crate::cache::{Member, MemberIndex};

/// The consenting member whose fresh, correctly signed code `payload` is.
pub fn identify_qr(
    payload: &str,
    index: &MemberIndex,
    wall_ms: i64,
) -> Result<Arc<Member>, QrError> {
    let code = instore_protocol::qr::parse(payload)?;
    let slot = index
        .slot_of(&code.member_id)
        .ok_or(QrError::UnknownMember)?;
    let key = index.day_key(slot, code.day()).ok_or(QrError::NoKey)?;
    code.verify(key, wall_ms)?;
    index.at(slot).cloned().ok_or(QrError::UnknownMember)
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

    fn index() -> MemberIndex {
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
        MemberIndex::build(1, &records)
    }

    #[test]
    fn a_fresh_code_identifies_its_member() {
        let code = sign("M1", &day_key(&secret(), 20_000), NOW);
        let m = identify_qr(&code, &index(), NOW + 5_000).unwrap();
        assert_eq!(m.member_id, "M1");
    }

    #[test]
    fn a_stale_photo_a_forgery_or_a_stranger_is_refused() {
        let idx = index();
        let code = sign("M1", &day_key(&secret(), 20_000), NOW);
        assert!(matches!(
            identify_qr(&code, &idx, NOW + 600_000),
            Err(QrError::Expired { .. })
        ));
        let forged = sign("M1", &day_key(&[8; 32], 20_000), NOW);
        assert_eq!(identify_qr(&forged, &idx, NOW), Err(QrError::BadSignature));
        let no_consent = sign("M2", &day_key(&secret(), 20_000), NOW);
        assert_eq!(
            identify_qr(&no_consent, &idx, NOW),
            Err(QrError::UnknownMember)
        );
        let yesterday = NOW - 86_400_000;
        let old = sign("M1", &day_key(&secret(), 19_999), yesterday);
        assert_eq!(identify_qr(&old, &idx, yesterday), Err(QrError::NoKey));
        assert_eq!(identify_qr("hello", &idx, NOW), Err(QrError::Format));
    }
}
