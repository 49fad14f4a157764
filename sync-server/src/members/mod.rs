//! Members: NDJSON imports, the versioned member set, store snapshots and notices.
//!
//! In: NDJSON text (`POST /api/members`). Out: upserted rows, a new member-set version, and a
//! retained [`instore_protocol::MembersNotice`] per store (see [`notifier`]). Snapshots carry
//! day keys for today and tomorrow (and Eddystone-EID temporary keys for this epoch and the
//! next), so [`day_keys`] re-issues the set each UTC day and each EID epoch.
//!
//! For now membership is chain-wide: every member goes to every store, so a store's snapshot is
//! the whole member set and one global version serves all stores. Per-store member sets (home
//! store, region) would add a store key to `members` and a version per store.

pub mod day_keys;
pub mod notifier;

use instore_protocol::{
    Identifier, MemberRecord, MemberSnapshot, SCHEMA_VERSION,
    eddystone_eid::{shipped_epochs, temporary_key},
    parse_ndjson,
    rotating::{day_key, shipped_days},
};
use serde::Serialize;

use crate::store::{Store, StoreError, members};

/// A skipped NDJSON line in an import response.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedLine {
    pub line: usize,
    pub error: String,
}

/// The JSON answer to `POST /api/members`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped: Vec<SkippedLine>,
    pub version: u64,
}

/// Parses and stores an NDJSON import; returns the report and the stores to notify.
pub async fn import(store: &Store, text: &str) -> Result<(ImportReport, Vec<String>), StoreError> {
    let (records, errors) = parse_ndjson(text);
    let skipped = errors
        .into_iter()
        .map(|e| SkippedLine {
            line: e.line,
            error: e.error.to_string(),
        })
        .collect();
    let outcome = store.call(move |c| members::import(c, &records)).await?;
    Ok((
        ImportReport {
            imported: outcome.imported,
            skipped,
            version: outcome.version,
        },
        outcome.stores,
    ))
}

/// The member snapshot of `store_id` (chain-wide membership: the whole set), with every rotating
/// secret replaced by the day keys gateways need now.
pub async fn snapshot(store: &Store, store_id: &str) -> Result<MemberSnapshot, StoreError> {
    let (version, members) = store.call(members::snapshot).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(MemberSnapshot {
        v: SCHEMA_VERSION,
        store_id: store_id.to_string(),
        version,
        members: for_gateways(members, now_ms),
    })
}

/// What a gateway may hold: a member's long-term rotating secret never leaves head office; in its
/// place go the keys of today and tomorrow (UTC, see [`instore_protocol::rotating`]), so a stolen
/// gateway recognises members for at most 48 hours. Day keys an import carried are dropped too:
/// only head office decides which days a gateway gets. An Eddystone-EID identity key likewise
/// becomes the temporary keys of the current and next 2^16 s epoch (see
/// [`instore_protocol::eddystone_eid`]).
pub fn for_gateways(mut members: Vec<MemberRecord>, now_ms: i64) -> Vec<MemberRecord> {
    for m in &mut members {
        let mut out = Vec::with_capacity(m.identifiers.len() + 1);
        for id in m.identifiers.drain(..) {
            match id {
                Identifier::RotatingSecret { secret } => {
                    let Ok(Ok(secret)) = hex::decode(&secret).map(<[u8; 32]>::try_from) else {
                        continue;
                    };
                    out.extend(shipped_days(now_ms).map(|day| Identifier::RotatingDayKey {
                        day,
                        key: hex::encode(day_key(&secret, day)),
                    }));
                }
                Identifier::EddystoneEidIdentity {
                    identity_key,
                    exponent,
                } => {
                    let Ok(Ok(ik)) = hex::decode(&identity_key).map(<[u8; 16]>::try_from) else {
                        continue;
                    };
                    out.extend(
                        shipped_epochs(now_ms).map(|epoch| Identifier::EddystoneEidTemp {
                            epoch,
                            key: hex::encode(temporary_key(&ik, epoch)),
                            exponent,
                        }),
                    );
                }
                Identifier::RotatingDayKey { .. } | Identifier::EddystoneEidTemp { .. } => {}
                other => out.push(other),
            }
        }
        m.identifiers = out;
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotating_secret_becomes_two_day_keys_and_is_never_forwarded() {
        let secret = hex::encode([3u8; 32]);
        let line = format!(
            r#"{{"member_id":"M1","display_name":"A","tier":"gold","identifiers":[{{"kind":"mac","address":"C0:11:22:33:44:55"}},{{"kind":"rotating_secret","secret":"{secret}"}},{{"kind":"rotating_day_key","day":1,"key":"{secret}"}}]}}"#
        );
        let (records, errors) = parse_ndjson(&line);
        assert!(errors.is_empty(), "{errors:?}");
        let now = 20_000 * 86_400_000 + 5;
        let out = for_gateways(records, now);
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains(&secret), "{json}");
        assert!(!json.contains("rotating_secret"));
        let ids = &out[0].identifiers;
        assert_eq!(ids.len(), 3);
        assert_eq!(
            ids[1],
            Identifier::RotatingDayKey {
                day: 20_000,
                key: hex::encode(day_key(&[3; 32], 20_000))
            }
        );
        assert!(matches!(
            ids[2],
            Identifier::RotatingDayKey { day: 20_001, .. }
        ));
    }

    #[test]
    fn an_eid_identity_key_becomes_two_epochs_of_temporary_keys_and_is_never_forwarded() {
        use instore_protocol::eddystone_eid::temporary_key;
        let ik = hex::encode([9u8; 16]);
        let line = format!(
            r#"{{"member_id":"M1","display_name":"A","tier":"gold","identifiers":[{{"kind":"eddystone_eid_identity","identity_key":"{ik}","exponent":10}},{{"kind":"eddystone_eid_temp","epoch":1,"key":"{ik}","exponent":10}}]}}"#
        );
        let (records, errors) = parse_ndjson(&line);
        assert!(errors.is_empty(), "{errors:?}");
        // Unix second 1,700,000,000 lies in epoch 25,939.
        let out = for_gateways(records, 1_700_000_000_000);
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains(&ik), "{json}");
        assert!(!json.contains("eddystone_eid_identity"));
        assert_eq!(
            out[0].identifiers,
            [25_939u16, 25_940]
                .map(|epoch| Identifier::EddystoneEidTemp {
                    epoch,
                    key: hex::encode(temporary_key(&[9; 16], epoch)),
                    exponent: 10,
                })
                .to_vec()
        );
    }

    #[test]
    fn an_eid_exponent_too_short_to_precompute_is_refused_at_import() {
        let line = format!(
            r#"{{"member_id":"M1","display_name":"A","tier":"gold","identifiers":[{{"kind":"eddystone_eid_identity","identity_key":"{}","exponent":3}}]}}"#,
            hex::encode([9u8; 16])
        );
        let (records, errors) = parse_ndjson(&line);
        assert!(records.is_empty());
        assert!(errors[0].to_string().contains("exponent 3"), "{errors:?}");
    }
}
