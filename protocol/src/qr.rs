//! Member QR codes: what a member's app shows at the till, signed with the member's day key so a
//! photo or screenshot of it stops working after two minutes.
//!
//! # Format (version 1)
//!
//! `ISQ1.<member_id>.<step>.<tag>`, for example `ISQ1.M1001.57600000.1f0c…` (about 40 characters:
//! a version-3 QR code).
//! - `step` = Unix seconds div 30, in decimal; the app shows a fresh code every step.
//! - `tag` = the first 10 bytes of
//!   `HMAC-SHA256(K_d, "instore-qr-v1" ‖ be32(step) ‖ member_id)`, 20 lowercase hex digits,
//!   where `K_d` is the member's day key (see [`crate::rotating`]) of the day holding `step`.
//! - `member_id` is taken as everything between the first and the last two dots, so it may itself
//!   contain dots.
//!
//! A gateway accepts a code when the tag verifies under the day key it holds for that day and
//! `|step − now_step| ≤` [`MAX_SKEW_STEPS`] (±2 minutes). Parsing never panics and costs nothing
//! beyond the input's length, which is capped at [`MAX_LEN`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::rotating::{DAY_SECS, DayKey};

pub const PREFIX: &str = "ISQ1";
/// Seconds per QR step.
pub const STEP_SECS: i64 = 30;
/// Steps either side of now that are still accepted.
pub const MAX_SKEW_STEPS: u32 = 4;
/// Bytes of HMAC output kept in the code.
pub const TAG_LEN: usize = 10;
/// Longest payload accepted: prefix, a 128-character member id, step and tag.
pub const MAX_LEN: usize = 4 + 1 + 128 + 1 + 10 + 1 + 2 * TAG_LEN;
const LABEL: &[u8] = b"instore-qr-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrPayload {
    pub member_id: String,
    pub step: u32,
    pub tag: [u8; TAG_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("QR payload of {0} bytes is longer than {MAX_LEN}")]
    TooLong(usize),
    #[error("not a member QR code (expected {PREFIX}.<member>.<step>.<tag>)")]
    Format,
    #[error("QR code has an empty or unprintable member id")]
    MemberId,
    #[error("QR code step is not a number")]
    Step,
    #[error("QR code tag is not {} hex digits", 2 * TAG_LEN)]
    Tag,
    #[error("QR code is for an unknown or non-consenting member")]
    UnknownMember,
    #[error("no day key for the QR code's day (gateway keys out of date?)")]
    NoKey,
    #[error("QR code signature does not verify")]
    BadSignature,
    #[error("QR code is {skew_s} s away from now (stale photo or wrong clock)")]
    Expired { skew_s: i64 },
}

/// The QR step of a Unix time in milliseconds.
pub fn step_of_ms(unix_ms: i64) -> u32 {
    unix_ms
        .div_euclid(1000 * STEP_SECS)
        .clamp(0, i64::from(u32::MAX)) as u32
}

fn mac(day_key: &DayKey, step: u32, member_id: &str) -> Hmac<Sha256> {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(day_key) else {
        unreachable!("HMAC takes keys of any length")
    };
    m.update(LABEL);
    m.update(&step.to_be_bytes());
    m.update(member_id.as_bytes());
    m
}

/// The payload a member's app shows at `unix_ms` (used by the app, tests and the demo).
pub fn sign(member_id: &str, day_key: &DayKey, unix_ms: i64) -> String {
    let step = step_of_ms(unix_ms);
    let full = mac(day_key, step, member_id).finalize().into_bytes();
    format!(
        "{PREFIX}.{member_id}.{step}.{}",
        hex::encode(&full[..TAG_LEN])
    )
}

/// Parses a scanned payload (surrounding whitespace, as scanners append a newline, is ignored).
pub fn parse(s: &str) -> Result<QrPayload, QrError> {
    let s = s.trim();
    if s.len() > MAX_LEN {
        return Err(QrError::TooLong(s.len()));
    }
    let rest = s
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(QrError::Format)?;
    let (rest, tag) = rest.rsplit_once('.').ok_or(QrError::Format)?;
    let (member_id, step) = rest.rsplit_once('.').ok_or(QrError::Format)?;
    if member_id.is_empty() || member_id.len() > 128 || member_id.chars().any(char::is_control) {
        return Err(QrError::MemberId);
    }
    if step.is_empty() || step.len() > 10 || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QrError::Step);
    }
    let step: u32 = step.parse().map_err(|_| QrError::Step)?;
    let mut out = [0u8; TAG_LEN];
    if tag.len() != 2 * TAG_LEN {
        return Err(QrError::Tag);
    }
    hex::decode_to_slice(tag, &mut out).map_err(|_| QrError::Tag)?;
    Ok(QrPayload {
        member_id: member_id.to_string(),
        step,
        tag: out,
    })
}

impl QrPayload {
    /// The UTC day whose key signs this code.
    pub fn day(&self) -> u32 {
        (i64::from(self.step) * STEP_SECS / DAY_SECS) as u32
    }

    /// Checks freshness, then the tag (in constant time) under `day_key` (the key of [`Self::day`]).
    pub fn verify(&self, day_key: &DayKey, now_ms: i64) -> Result<(), QrError> {
        let now = i64::from(step_of_ms(now_ms));
        let skew = i64::from(self.step) - now;
        if skew.unsigned_abs() > u64::from(MAX_SKEW_STEPS) {
            return Err(QrError::Expired {
                skew_s: skew * STEP_SECS,
            });
        }
        mac(day_key, self.step, &self.member_id)
            .verify_truncated_left(&self.tag)
            .map_err(|_| QrError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotating::day_key;

    const NOW: i64 = 20_000 * 86_400_000 + 3_600_000; // 2024-10-04T01:00:00Z

    fn key() -> DayKey {
        day_key(&std::array::from_fn(|i| i as u8), 20_000)
    }

    #[test]
    fn a_signed_code_parses_back_and_verifies() {
        let s = sign("M1001", &key(), NOW);
        assert!(s.len() <= 40, "{s} fits a small QR code");
        let p = parse(&format!("{s}\n")).unwrap();
        assert_eq!((p.member_id.as_str(), p.day()), ("M1001", 20_000));
        assert_eq!(p.verify(&key(), NOW + 10_000), Ok(()));
    }

    #[test]
    fn the_tag_matches_an_independent_computation() {
        // python: hmac.new(K, b"instore-qr-v1" + step.to_bytes(4,"big") + b"M1001", sha256)
        let s = sign("M1001", &key(), NOW);
        assert_eq!(s, format!("ISQ1.M1001.57600120.{QR_TAG}"));
    }

    #[test]
    fn a_photo_of_the_code_expires_after_two_minutes() {
        let p = parse(&sign("M1001", &key(), NOW)).unwrap();
        assert_eq!(p.verify(&key(), NOW + 120_000), Ok(()));
        assert!(matches!(
            p.verify(&key(), NOW + 180_000),
            Err(QrError::Expired { .. })
        ));
        assert!(matches!(
            p.verify(&key(), NOW - 180_000),
            Err(QrError::Expired { .. })
        ));
    }

    #[test]
    fn a_forged_or_altered_code_is_refused() {
        let s = sign("M1001", &key(), NOW);
        let other = sign("M1002", &key(), NOW);
        let forged = format!("ISQ1.M1002.{}", s.split_once("M1001.").unwrap().1);
        assert_eq!(
            parse(&forged).unwrap().verify(&key(), NOW),
            Err(QrError::BadSignature)
        );
        let wrong_key = day_key(&[9; 32], 20_000);
        assert_eq!(
            parse(&other).unwrap().verify(&wrong_key, NOW),
            Err(QrError::BadSignature)
        );
    }

    #[test]
    fn malformed_payloads_get_typed_errors() {
        assert_eq!(parse(""), Err(QrError::Format));
        assert_eq!(parse("https://example.com"), Err(QrError::Format));
        assert_eq!(parse("ISQ1.M1.123"), Err(QrError::Format));
        assert_eq!(parse("ISQ1..123.00"), Err(QrError::MemberId));
        assert_eq!(parse("ISQ1.M1.12x.00"), Err(QrError::Step));
        assert_eq!(parse("ISQ1.M1.99999999999.00"), Err(QrError::Step));
        assert_eq!(parse("ISQ1.M1.123.00"), Err(QrError::Tag));
        assert_eq!(
            parse(&format!("ISQ1.M1.123.{}", "zz".repeat(TAG_LEN))),
            Err(QrError::Tag)
        );
        assert!(matches!(parse(&"x".repeat(500)), Err(QrError::TooLong(_))));
        let dotted = parse(&sign("a.b", &key(), NOW)).unwrap();
        assert_eq!(dotted.member_id, "a.b");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_parses_or_errors_without_panicking(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }
    }

    const QR_TAG: &str = "07cdbe9689e3b08abc95";
}
