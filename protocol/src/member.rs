//! The member record: the NDJSON import format (agent `members import`, head office
//! `POST /api/members`) and the element of a store's member snapshot.
//!
//! ```json
//! {"member_id":"M1001","display_name":"Ms. Li","tier":"platinum","stage":"value","tags":["linen"],
//!  "consent":{"presence":true,"marketing":false},"last_visit":"2026-10-02",
//!  "last_purchase":{"date":"2026-09-14","summary":"linen shirt"},
//!  "identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2},
//!                 {"kind":"eddystone_uid","namespace":"edd1ebeac04e5defa017","instance":"0000000004d2"},
//!                 {"kind":"mac","address":"C0:11:22:33:44:55"},
//!                 {"kind":"irk","irk":"ec0234a357c8ad05341010a60a397d9b"}]}
//! ```
//! Privacy-preserving kinds: `{"kind":"rotating_secret","secret":"<64 hex>"}` (see
//! [`crate::rotating`]) and `{"kind":"eddystone_eid_identity","identity_key":"<32 hex>",
//! "exponent":10}` (see [`crate::eddystone_eid`]) are accepted by head office only; gateways get
//! the short-lived keys derived from them (`rotating_day_key`, `eddystone_eid_temp`).
//! `consent.presence` defaults to `false`: a member imported without consent is never tracked.
//! `consent.marketing` (default `false`) is what rules with `consent = "marketing"` require.
//! `last_visit` and `last_purchase.date` are ISO dates (`YYYY-MM-DD`), checked on import; the
//! gateway's `overdue` trigger counts days from `last_visit`, or from `last_purchase.date` for a
//! record without one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub member_id: String,
    /// The name as the member wants to be greeted.
    pub display_name: String,
    pub tier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub consent: Consent,
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    /// `MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_purchase: Option<LastPurchase>,
    /// ISO date, `YYYY-MM-DD`, of the member's last visit to any store (head office's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_visit: Option<String>,

    // --- What head office's member-set policy reads (import fields) --------------------------
    /// The store the member belongs to; it holds the member (see head office's `[membership]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_store: Option<String>,
    /// Further stores that hold the member whatever the policy says (an explicit list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
    /// The member who referred this one (the `refer` lifecycle stage counts these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_by: Option<String>,
    /// ISO date the member joined the programme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,

    // --- Computed by head office and sent to stores (an import's values are ignored) ----------
    /// Pyramid band by trailing-12-month spend: `top2`, `top5`, `top10`, `top15`, `top20`, `rest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Visits to any store in the trailing 12 months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits_12m: Option<u32>,
    /// ISO date head office expects the member back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_next_visit: Option<String>,
    /// ISO date after which the member counts as overdue: on day D they are overdue by
    /// D − `overdue_after` days. Sent as a date, not a count, so it need not change daily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The member may be recognised and tracked in stores.
    #[serde(default)]
    pub presence: bool,
    /// The member may be approached with offers (rules with `consent = "marketing"`).
    #[serde(default)]
    pub marketing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPurchase {
    /// ISO date, `YYYY-MM-DD`.
    pub date: String,
    pub summary: String,
}

/// How a member's device can be recognised, as written in the import format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Identifier {
    Ibeacon {
        uuid: String,
        major: u16,
        minor: u16,
    },
    EddystoneUid {
        namespace: String,
        instance: String,
    },
    Mac {
        address: String,
    },
    Irk {
        irk: String,
    },
    /// The member app's long-term rotating-ID secret (64 hex). Head office accepts it in imports
    /// and never forwards it: snapshots carry [`Identifier::RotatingDayKey`]s derived from it.
    RotatingSecret {
        secret: String,
    },
    /// One day's key of a member's rotating IDs and QR codes (see [`crate::rotating`]).
    RotatingDayKey {
        day: u32,
        key: String,
    },
    /// An Eddystone-EID beacon's long-term identity key (32 hex) and rotation exponent. Head
    /// office accepts it in imports and never forwards it: snapshots carry
    /// [`Identifier::EddystoneEidTemp`] keys derived from it (see [`crate::eddystone_eid`]).
    EddystoneEidIdentity {
        identity_key: String,
        exponent: u8,
    },
    /// One epoch's (2^16 s) temporary key of an Eddystone-EID beacon.
    EddystoneEidTemp {
        epoch: u16,
        key: String,
        exponent: u8,
    },
    /// The public key of a member's device that signs their member codes
    /// ([`crate::member_code`]): `alg` `ES256` or `Ed25519`, the raw key in hex. Registered at
    /// head office (`POST /api/members/{id}/devices`), never taken from an import. A revoked
    /// key stays in the record with `revoked`, so a gateway can say why its codes fail.
    DeviceKey {
        alg: String,
        public_key: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        revoked: bool,
    },
}

/// The parsed, normalised form of an [`Identifier`]: what the gateway's index is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKey {
    Ibeacon {
        uuid: [u8; 16],
        major: u16,
        minor: u16,
    },
    EddystoneUid {
        namespace: [u8; 10],
        instance: [u8; 6],
    },
    Mac([u8; 6]),
    /// Identity resolving key, most significant byte first (as the Core specification writes it).
    Irk([u8; 16]),
    RotatingSecret([u8; 32]),
    RotatingDayKey {
        day: u32,
        key: [u8; 32],
    },
    EddystoneEidIdentity {
        identity_key: [u8; 16],
        exponent: u8,
    },
    EddystoneEidTemp {
        epoch: u16,
        key: [u8; 16],
        exponent: u8,
    },
    /// A device key by its id ([`crate::member_code::key_id`]).
    DeviceKey {
        key_id: [u8; crate::member_code::KEY_ID_LEN],
    },
}

pub const STAGES: [&str; 5] = ["acquire", "activate", "stick", "value", "refer"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("not a member record: {0}")]
    Json(String),
    #[error("member_id must be 1-128 printable characters")]
    MemberId,
    #[error("display_name must not be empty")]
    DisplayName,
    #[error("tier must not be empty")]
    Tier,
    #[error("unknown stage {0:?} (expected one of acquire, activate, stick, value, refer)")]
    Stage(String),
    #[error("birthday {0:?} is not MM-DD")]
    Birthday(String),
    #[error("{field} {value:?} is not a YYYY-MM-DD date")]
    Date { field: &'static str, value: String },
    #[error("store id {0:?} is not 1-64 characters of A-Z a-z 0-9 _ -")]
    Store(String),
    #[error("referred_by must be another member's id")]
    ReferredBy,
    #[error("identifier {index}: {reason}")]
    Identifier { index: usize, reason: String },
    #[error("identifier {index} is already used by member {other}")]
    DuplicateIdentifier { index: usize, other: String },
}

/// A line of an NDJSON import that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub error: MemberError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl Identifier {
    pub fn key(&self) -> Result<IdentifierKey, String> {
        match self {
            Identifier::Ibeacon { uuid, major, minor } => Ok(IdentifierKey::Ibeacon {
                uuid: parse_uuid(uuid)?,
                major: *major,
                minor: *minor,
            }),
            Identifier::EddystoneUid {
                namespace,
                instance,
            } => Ok(IdentifierKey::EddystoneUid {
                namespace: hex_array(namespace, "namespace")?,
                instance: hex_array(instance, "instance")?,
            }),
            Identifier::Mac { address } => Ok(IdentifierKey::Mac(parse_mac(address)?)),
            Identifier::Irk { irk } => Ok(IdentifierKey::Irk(hex_array(irk, "irk")?)),
            Identifier::RotatingSecret { secret } => {
                Ok(IdentifierKey::RotatingSecret(hex_array(secret, "secret")?))
            }
            Identifier::RotatingDayKey { day, key } => Ok(IdentifierKey::RotatingDayKey {
                day: *day,
                key: hex_array(key, "key")?,
            }),
            Identifier::EddystoneEidIdentity {
                identity_key,
                exponent,
            } => Ok(IdentifierKey::EddystoneEidIdentity {
                identity_key: hex_array(identity_key, "identity_key")?,
                exponent: eid_exponent(*exponent)?,
            }),
            Identifier::EddystoneEidTemp {
                epoch,
                key,
                exponent,
            } => Ok(IdentifierKey::EddystoneEidTemp {
                epoch: *epoch,
                key: hex_array(key, "key")?,
                exponent: eid_exponent(*exponent)?,
            }),
            Identifier::DeviceKey {
                alg, public_key, ..
            } => {
                let (_, raw) = device_key(alg, public_key)?;
                Ok(IdentifierKey::DeviceKey {
                    key_id: crate::member_code::key_id(&raw),
                })
            }
        }
    }
}

/// The algorithm and raw bytes of a [`Identifier::DeviceKey`], checked.
pub fn device_key(
    alg: &str,
    public_key: &str,
) -> Result<(crate::member_code::Algorithm, Vec<u8>), String> {
    let alg = crate::member_code::Algorithm::parse(alg)
        .ok_or_else(|| format!("alg {alg:?} is not ES256 or Ed25519"))?;
    let raw = hex::decode(public_key).map_err(|_| "public_key is not hex".to_string())?;
    crate::member_code::check_public_key(alg, &raw).map_err(|e| e.to_string())?;
    Ok((alg, raw))
}

impl MemberRecord {
    /// Checks every field and returns the identifiers in normalised form.
    pub fn validate(&self) -> Result<Vec<IdentifierKey>, MemberError> {
        let id = &self.member_id;
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            return Err(MemberError::MemberId);
        }
        if self.display_name.trim().is_empty() {
            return Err(MemberError::DisplayName);
        }
        if self.tier.trim().is_empty() {
            return Err(MemberError::Tier);
        }
        if let Some(stage) = &self.stage
            && !STAGES.contains(&stage.as_str())
        {
            return Err(MemberError::Stage(stage.clone()));
        }
        if let Some(b) = &self.birthday
            && !valid_birthday(b)
        {
            return Err(MemberError::Birthday(b.clone()));
        }
        if let Some(p) = &self.last_purchase
            && !valid_date(&p.date)
        {
            return Err(MemberError::Date {
                field: "last_purchase.date",
                value: p.date.clone(),
            });
        }
        for (field, value) in [
            ("last_visit", &self.last_visit),
            ("joined", &self.joined),
            ("expected_next_visit", &self.expected_next_visit),
            ("overdue_after", &self.overdue_after),
        ] {
            if let Some(v) = value
                && !valid_date(v)
            {
                return Err(MemberError::Date {
                    field,
                    value: v.clone(),
                });
            }
        }
        for store in self.home_store.iter().chain(&self.stores) {
            if !crate::topics::valid_id(store) {
                return Err(MemberError::Store(store.clone()));
            }
        }
        if let Some(r) = &self.referred_by
            && (r.is_empty() || r.len() > 128 || r.chars().any(char::is_control) || *r == *id)
        {
            return Err(MemberError::ReferredBy);
        }
        self.identifiers
            .iter()
            .enumerate()
            .map(|(index, i)| {
                i.key()
                    .map_err(|reason| MemberError::Identifier { index, reason })
            })
            .collect()
    }
}

/// Parses NDJSON member records. Blank lines are ignored; a line that fails to parse or validate,
/// or that claims an identifier an earlier line already holds, is reported and skipped.
pub fn parse_ndjson(text: &str) -> (Vec<MemberRecord>, Vec<LineError>) {
    let mut lines = MemberLines::default();
    let mut members = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match lines.parse(i + 1, line) {
            Some(Ok(m)) => members.push(m),
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    (members, errors)
}

/// [`parse_ndjson`] one line at a time, for imports read as a stream: it remembers which member
/// holds each identifier so far, so a later line claiming one is refused as in a whole file.
#[derive(Debug, Default)]
pub struct MemberLines {
    owners: HashMap<IdentifierKey, String>,
}

impl MemberLines {
    /// Line `line_no` of the file: `None` if blank, else the record or why it was refused.
    pub fn parse(&mut self, line_no: usize, line: &str) -> Option<Result<MemberRecord, LineError>> {
        if line.trim().is_empty() {
            return None;
        }
        let refused = |error| {
            Some(Err(LineError {
                line: line_no,
                error,
            }))
        };
        let result = serde_json::from_str::<MemberRecord>(line)
            .map_err(|e| MemberError::Json(e.to_string()))
            .and_then(|m| m.validate().map(|keys| (m, keys)));
        let (member, keys) = match result {
            Ok(ok) => ok,
            Err(error) => return refused(error),
        };
        let clash = keys.iter().enumerate().find_map(|(index, k)| {
            self.owners
                .get(k)
                .filter(|other| **other != member.member_id)
                .map(|other| MemberError::DuplicateIdentifier {
                    index,
                    other: other.clone(),
                })
        });
        if let Some(error) = clash {
            return refused(error);
        }
        for k in keys {
            self.owners.insert(k, member.member_id.clone());
        }
        Some(Ok(member))
    }
}

fn valid_birthday(s: &str) -> bool {
    let Some((m, d)) = s.split_once('-') else {
        return false;
    };
    let (Ok(m), Ok(d)) = (m.parse::<u8>(), d.parse::<u8>()) else {
        return false;
    };
    s.len() == 5 && (1..=12).contains(&m) && (1..=31).contains(&d)
}

/// `YYYY-MM-DD` with a real month and a day that month has (29 February only in leap years).
pub fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (
        s[0..4].parse::<u32>(),
        s[5..7].parse::<u32>(),
        s[8..10].parse::<u32>(),
    ) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

fn eid_exponent(k: u8) -> Result<u8, String> {
    use crate::eddystone_eid::{MAX_EXPONENT, MIN_EXPONENT};
    if (MIN_EXPONENT..=MAX_EXPONENT).contains(&k) {
        Ok(k)
    } else {
        Err(format!(
            "exponent {k} out of range {MIN_EXPONENT}..={MAX_EXPONENT} (EIDs rotating faster than \
             every {} s cost too much to precompute)",
            1u32 << MIN_EXPONENT
        ))
    }
}

fn hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(s).map_err(|_| format!("{what} is not hexadecimal"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{what} must be {} hex characters", N * 2))
}

/// Accepts `f7826da6-4fa2-4e98-8024-bc5b71e0893e` or the same 32 hex digits without hyphens.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let compact: String = s.chars().filter(|c| *c != '-').collect();
    if compact.len() != 32 || (s.len() != 32 && s.len() != 36) {
        return Err("uuid must be 32 hex digits, optionally hyphenated".into());
    }
    hex_array(&compact, "uuid")
}

/// Formats 16 bytes as a lowercase hyphenated UUID.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Accepts `C0:11:22:33:44:55` (or with `-`), most significant byte first.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err("address must be six colon-separated hex bytes".into());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| "address is not hexadecimal".to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIEF_EXAMPLE: &str = r#"{"member_id":"M1001","display_name":"Ms. Li","tier":"platinum","stage":"value","tags":["linen"],"consent":{"presence":true},"identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2},{"kind":"eddystone_uid","namespace":"edd1ebeac04e5defa017","instance":"0000000004d2"},{"kind":"mac","address":"C0:11:22:33:44:55"},{"kind":"irk","irk":"ec0234a357c8ad05341010a60a397d9b"}]}"#;

    #[test]
    fn the_brief_example_parses_into_four_keys() {
        let (members, errors) = parse_ndjson(BRIEF_EXAMPLE);
        assert!(errors.is_empty(), "{errors:?}");
        let keys = members[0].validate().unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(
            keys[0],
            IdentifierKey::Ibeacon {
                uuid: parse_uuid("f7826da64fa24e988024bc5b71e0893e").unwrap(),
                major: 1,
                minor: 2
            }
        );
        assert_eq!(
            keys[2],
            IdentifierKey::Mac([0xC0, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        let IdentifierKey::Irk(irk) = keys[3] else {
            panic!("not an irk")
        };
        assert_eq!(irk[0], 0xec, "most significant byte first");
        assert!(members[0].consent.presence);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_the_rest_imported() {
        let text = format!(
            "{BRIEF_EXAMPLE}\n\nnot json\n{}\n{}\n{}\n",
            r#"{"member_id":"M2","display_name":"A","tier":"gold","identifiers":[{"kind":"mac","address":"zz"}]}"#,
            r#"{"member_id":"M3","display_name":"B","tier":"gold","identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#,
            r#"{"member_id":"M4","display_name":"C","tier":"silver"}"#,
        );
        let (members, errors) = parse_ndjson(&text);
        let ids: Vec<_> = members.iter().map(|m| m.member_id.as_str()).collect();
        assert_eq!(ids, ["M1001", "M4"]);
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        assert!(matches!(
            errors[2].error,
            MemberError::DuplicateIdentifier { .. }
        ));
        assert!(!members[1].consent.presence, "consent defaults to no");
    }

    #[test]
    fn field_validation_names_the_problem() {
        let base: MemberRecord = serde_json::from_str(BRIEF_EXAMPLE).unwrap();
        let mut m = base.clone();
        m.stage = Some("loyal".into());
        assert_eq!(m.validate(), Err(MemberError::Stage("loyal".into())));
        let mut m = base.clone();
        m.birthday = Some("13-01".into());
        assert!(matches!(m.validate(), Err(MemberError::Birthday(_))));
        let mut m = base.clone();
        m.identifiers = vec![Identifier::Irk { irk: "ec02".into() }];
        assert!(matches!(
            m.validate(),
            Err(MemberError::Identifier { index: 0, .. })
        ));
        let mut m = base.clone();
        m.last_visit = Some("2026-02-30".into());
        assert!(matches!(
            m.validate(),
            Err(MemberError::Date {
                field: "last_visit",
                ..
            })
        ));
        let mut m = base.clone();
        m.last_purchase = Some(LastPurchase {
            date: "14/09/2026".into(),
            summary: "linen".into(),
        });
        assert!(matches!(
            m.validate(),
            Err(MemberError::Date {
                field: "last_purchase.date",
                ..
            })
        ));
        let mut m = base;
        m.member_id = String::new();
        assert_eq!(m.validate(), Err(MemberError::MemberId));
    }

    #[test]
    fn marketing_consent_and_last_visit_are_read_and_default_to_absent() {
        let line = r#"{"member_id":"M9","display_name":"A","tier":"gold","consent":{"presence":true,"marketing":true},"last_visit":"2024-02-29"}"#;
        let (members, errors) = parse_ndjson(line);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(members[0].consent.marketing);
        assert_eq!(members[0].last_visit.as_deref(), Some("2024-02-29"));
        let (members, _) = parse_ndjson(BRIEF_EXAMPLE);
        assert!(
            !members[0].consent.marketing,
            "marketing consent defaults to no"
        );
        assert_eq!(members[0].last_visit, None);
        let (_, errors) = parse_ndjson(&line.replace("2024-02-29", "2023-02-29"));
        assert_eq!(errors.len(), 1, "29 February only in leap years");
    }

    #[test]
    fn uuids_format_and_parse_back() {
        let u = parse_uuid("F7826DA6-4FA2-4E98-8024-BC5B71E0893E").unwrap();
        assert_eq!(format_uuid(&u), "f7826da6-4fa2-4e98-8024-bc5b71e0893e");
        assert!(parse_uuid("f7826da6-4fa2-4e98-8024-bc5b71e0893").is_err());
    }
}
