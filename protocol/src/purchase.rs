//! The purchase record: head office's `POST /api/purchases` and `instore-sync purchases import`
//! (NDJSON, one purchase per line; the CLI also reads CSV and sends this form).
//!
//! ```json
//! {"purchase_id":"P1","member_id":"M1001","store_id":"store-001","at":"2026-11-02T15:04:00Z",
//!  "amount_minor":12900,"currency":"EUR",
//!  "items":[{"sku":"S1","category":"linen","qty":1,"amount_minor":12900}]}
//! ```
//! `amount_minor` is in the currency's minor unit (cents) and negative for a return. Imports are
//! idempotent by `purchase_id`: a purchase sent again is counted as a duplicate and changes
//! nothing. `at` is an RFC 3339 time with an offset (`Z` or `+01:00`).

use serde::{Deserialize, Serialize};

use crate::topics::valid_id;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRecord {
    pub purchase_id: String,
    pub member_id: String,
    pub store_id: String,
    /// RFC 3339.
    pub at: String,
    pub amount_minor: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    #[serde(default)]
    pub items: Vec<PurchaseItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Negative for a returned item.
    #[serde(default = "one")]
    pub qty: i32,
    pub amount_minor: i64,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurchaseError {
    #[error("not a purchase record: {0}")]
    Json(String),
    #[error("{field} must be 1-128 printable characters")]
    Id { field: &'static str },
    #[error("store_id {0:?} is not 1-64 characters of A-Z a-z 0-9 _ -")]
    Store(String),
    #[error("at {0:?} is not an RFC 3339 time with an offset (e.g. 2026-11-02T15:04:00Z)")]
    At(String),
    #[error("currency {0:?} is not an ISO 4217 code like EUR")]
    Currency(String),
    #[error("item {index}: {reason}")]
    Item { index: usize, reason: String },
    #[error("more than {MAX_ITEMS} items")]
    TooManyItems,
}

/// Items one purchase may carry.
pub const MAX_ITEMS: usize = 500;

fn valid_text_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

impl PurchaseRecord {
    /// Checks every field; returns the time as Unix milliseconds.
    pub fn validate(&self) -> Result<i64, PurchaseError> {
        if !valid_text_id(&self.purchase_id) {
            return Err(PurchaseError::Id {
                field: "purchase_id",
            });
        }
        if !valid_text_id(&self.member_id) {
            return Err(PurchaseError::Id { field: "member_id" });
        }
        if !valid_id(&self.store_id) {
            return Err(PurchaseError::Store(self.store_id.clone()));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(PurchaseError::Currency(self.currency.clone()));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(PurchaseError::TooManyItems);
        }
        for (index, item) in self.items.iter().enumerate() {
            let bad = |reason: &str| PurchaseError::Item {
                index,
                reason: reason.to_string(),
            };
            if item.qty == 0 {
                return Err(bad("qty must not be 0"));
            }
            if item.sku.as_deref().is_some_and(|s| !valid_text_id(s)) {
                return Err(bad("sku must be 1-128 printable characters"));
            }
            if item.category.as_deref().is_some_and(|s| !valid_text_id(s)) {
                return Err(bad("category must be 1-128 printable characters"));
            }
        }
        parse_rfc3339_ms(&self.at).ok_or_else(|| PurchaseError::At(self.at.clone()))
    }
}

/// Parses one NDJSON line into a checked purchase and its time (Unix ms).
pub fn parse_line(line: &str) -> Result<(PurchaseRecord, i64), PurchaseError> {
    let p: PurchaseRecord =
        serde_json::from_str(line).map_err(|e| PurchaseError::Json(e.to_string()))?;
    let at = p.validate()?;
    Ok((p, at))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` → Unix milliseconds. Hand-written rather than a
/// date library: this crate stays free of heavy dependencies, and the form is fixed.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        let frac = &s[start..end.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
        i = end;
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_s;
    Some(secs * 1000 + ms)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"purchase_id":"P1","member_id":"M1001","store_id":"store-001","at":"2026-11-02T15:04:00Z","amount_minor":12900,"currency":"EUR","items":[{"sku":"S1","category":"linen","qty":1,"amount_minor":12900}]}"#;

    #[test]
    fn the_briefs_example_parses_to_its_time() {
        let (p, at) = parse_line(LINE).unwrap();
        assert_eq!(p.items[0].category.as_deref(), Some("linen"));
        // 2026-11-02T15:04:00Z
        assert_eq!(at, 1_793_631_840_000);
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions_parse_and_nonsense_does_not() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.25Z"), Some(250));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:00:00-00:30"),
            Some(1_709_209_800_000)
        );
        for bad in [
            "2026-11-02",
            "2026-11-02T15:04:00",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-02T25:00:00Z",
            "2026-11-02T15:04:00+0100",
            "2026-11-02T15:04:00Zjunk",
            "２０26-11-02T15:04:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn returns_are_allowed_and_bad_fields_are_named() {
        let ret = LINE.replace("12900,\"currency", "-12900,\"currency");
        assert_eq!(parse_line(&ret).unwrap().0.amount_minor, -12900);
        let e = parse_line(&LINE.replace("EUR", "eur")).unwrap_err();
        assert!(e.to_string().contains("currency"), "{e}");
        let e = parse_line(&LINE.replace("store-001", "store/1")).unwrap_err();
        assert!(e.to_string().contains("store_id"), "{e}");
        let e = parse_line(&LINE.replace("\"qty\":1", "\"qty\":0")).unwrap_err();
        assert!(e.to_string().contains("item 0"), "{e}");
        let e = parse_line(&LINE.replace("\"P1\"", "\"\"")).unwrap_err();
        assert!(e.to_string().contains("purchase_id"), "{e}");
        assert!(matches!(parse_line("{"), Err(PurchaseError::Json(_))));
    }
}
