//! What a gateway may hold of a member: the record as stores see it, and the member's short-lived
//! keys. Pure: no I/O.
//!
//! In: the record as imported, head office's computed fields, and the tier source. Out: a
//! [`MemberRecord`] without long-term secrets, short-lived keys or head-office-only fields
//! (home store, explicit stores, referrer, join date), with the computed tier, stage, groups,
//! level, visits, last visit, expected next visit and overdue date; and, separately, the day keys
//! and Eddystone-EID temporary keys of now (they travel as their own `keys` changes, so that a
//! new day never changes the record).
//!
//! A member's long-term rotating secret never leaves head office: in its place go the keys of
//! today and tomorrow (UTC, see [`instore_protocol::rotating`]), so a stolen gateway recognises
//! members for at most 48 hours. An Eddystone-EID identity key likewise becomes the temporary
//! keys of the current and next 2^16 s epoch (see [`instore_protocol::eddystone_eid`]). Keys an
//! import carried are dropped: only head office decides which days a gateway gets.

use instore_protocol::{
    Identifier, MemberRecord,
    eddystone_eid::{EPOCH_SECS, shipped_epochs, temporary_key},
    member::LastPurchase,
    rotating::{DAY_SECS, day_key, shipped_days},
};

use crate::compute::{Computed, config::TierSource};

/// Head office's view of a member beyond the imported record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Derived<'a> {
    pub computed: Option<&'a Computed>,
    /// Whether head office holds any purchase of the member (for [`TierSource::Auto`]).
    pub has_purchases: bool,
    /// Date and summary of the latest purchase head office holds.
    pub last_purchase: Option<&'a LastPurchase>,
    /// The member's registered device keys, revoked ones marked ([`crate::devices`]): they reach the
    /// stores as [`Identifier::DeviceKey`]s. Any an import carried are dropped.
    pub devices: &'a [Identifier],
}

/// The tier and stage stores see.
pub fn tier_and_stage(
    record: &MemberRecord,
    derived: &Derived<'_>,
    source: TierSource,
) -> (String, Option<String>) {
    let use_computed = match source {
        TierSource::Computed => true,
        TierSource::Import => false,
        TierSource::Auto => derived.has_purchases,
    };
    match derived.computed {
        Some(c) if use_computed => (c.tier.tier.clone(), Some(c.stage.as_str().to_string())),
        _ => (record.tier.clone(), record.stage.clone()),
    }
}

/// The record a gateway holds.
pub fn gateway_record(
    record: &MemberRecord,
    derived: &Derived<'_>,
    source: TierSource,
) -> MemberRecord {
    let (tier, stage) = tier_and_stage(record, derived, source);
    let mut out = MemberRecord {
        member_id: record.member_id.clone(),
        display_name: record.display_name.clone(),
        tier,
        stage,
        tags: record.tags.clone(),
        groups: record.groups.clone(),
        consent: record.consent.clone(),
        identifiers: record
            .identifiers
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    Identifier::Ibeacon { .. }
                        | Identifier::EddystoneUid { .. }
                        | Identifier::Mac { .. }
                        | Identifier::Irk { .. }
                )
            })
            .cloned()
            .chain(derived.devices.iter().cloned())
            .collect(),
        birthday: record.birthday.clone(),
        last_purchase: derived
            .last_purchase
            .cloned()
            .or_else(|| record.last_purchase.clone()),
        last_visit: record.last_visit.clone(),
        ..Default::default()
    };
    if let Some(c) = derived.computed {
        if !c.groups.is_empty() {
            out.groups = c.groups.clone();
        }
        out.level = Some(c.level.as_str().to_string());
        out.visits_12m = Some(u32::try_from(c.visits_12m).unwrap_or(u32::MAX));
        // The later of the import's and the visits': a CRM may know of visits before ours.
        if let Some(v) = c.last_visit.map(|d| d.to_string())
            && out.last_visit.as_ref().is_none_or(|old| v > *old)
        {
            out.last_visit = Some(v);
        }
        out.expected_next_visit = c.expected_next_visit.map(|d| d.to_string());
        // Overdue by D − overdue_after days on day D: the day before the first overdue day.
        out.overdue_after = c
            .overdue_from
            .and_then(|d| d.yesterday().ok())
            .map(|d| d.to_string());
    }
    out
}

/// Whether the record carries a long-term key gateways get short-lived keys from.
pub fn has_long_term_keys(record: &MemberRecord) -> bool {
    record.identifiers.iter().any(|i| {
        matches!(
            i,
            Identifier::RotatingSecret { .. } | Identifier::EddystoneEidIdentity { .. }
        )
    })
}

/// The member's short-lived keys at `now_ms` and when the last of them stops mattering; empty
/// (and `None`) for a member without long-term keys.
pub fn short_lived_keys(record: &MemberRecord, now_ms: i64) -> (Vec<Identifier>, Option<i64>) {
    let mut keys = Vec::new();
    let mut expires: Option<i64> = None;
    for id in &record.identifiers {
        match id {
            Identifier::RotatingSecret { secret } => {
                let Ok(Ok(secret)) = hex::decode(secret).map(<[u8; 32]>::try_from) else {
                    continue;
                };
                for day in shipped_days(now_ms) {
                    keys.push(Identifier::RotatingDayKey {
                        day,
                        key: hex::encode(day_key(&secret, day)),
                    });
                    let end = (i64::from(day) + 1) * DAY_SECS * 1000;
                    expires = Some(expires.map_or(end, |e| e.max(end)));
                }
            }
            Identifier::EddystoneEidIdentity {
                identity_key,
                exponent,
            } => {
                let Ok(Ok(ik)) = hex::decode(identity_key).map(<[u8; 16]>::try_from) else {
                    continue;
                };
                for epoch in shipped_epochs(now_ms) {
                    keys.push(Identifier::EddystoneEidTemp {
                        epoch,
                        key: hex::encode(temporary_key(&ik, epoch)),
                        exponent: *exponent,
                    });
                    let end = (i64::from(epoch) + 1) * EPOCH_SECS * 1000;
                    expires = Some(expires.map_or(end, |e| e.max(end)));
                }
            }
            _ => {}
        }
    }
    (keys, expires)
}

#[cfg(test)]
mod tests {
    use instore_protocol::parse_ndjson;

    use super::*;

    fn record(line: &str) -> MemberRecord {
        let (mut records, errors) = parse_ndjson(line);
        assert!(errors.is_empty(), "{errors:?}");
        records.remove(0)
    }

    #[test]
    fn a_rotating_secret_becomes_two_day_keys_and_never_reaches_the_record() {
        let secret = hex::encode([3u8; 32]);
        let r = record(&format!(
            r#"{{"member_id":"M1","display_name":"A","tier":"gold","home_store":"s1","referred_by":"M0","identifiers":[{{"kind":"mac","address":"C0:11:22:33:44:55"}},{{"kind":"rotating_secret","secret":"{secret}"}},{{"kind":"rotating_day_key","day":1,"key":"{secret}"}}]}}"#
        ));
        let out = gateway_record(&r, &Derived::default(), TierSource::Auto);
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains(&secret), "{json}");
        assert!(
            !json.contains("home_store") && !json.contains("referred_by"),
            "{json}"
        );
        assert_eq!(out.identifiers.len(), 1);
        let now = 20_000 * 86_400_000 + 5;
        let (keys, expires) = short_lived_keys(&r, now);
        assert_eq!(
            keys,
            [20_000u32, 20_001]
                .map(|day| Identifier::RotatingDayKey {
                    day,
                    key: hex::encode(day_key(&[3; 32], day))
                })
                .to_vec()
        );
        assert_eq!(expires, Some(20_002 * 86_400_000));
        assert!(has_long_term_keys(&r));
    }

    #[test]
    fn an_eid_identity_key_becomes_two_epochs_of_temporary_keys() {
        let ik = hex::encode([9u8; 16]);
        let r = record(&format!(
            r#"{{"member_id":"M1","display_name":"A","tier":"gold","identifiers":[{{"kind":"eddystone_eid_identity","identity_key":"{ik}","exponent":10}}]}}"#
        ));
        // Unix second 1,700,000,000 lies in epoch 25,939.
        let (keys, _) = short_lived_keys(&r, 1_700_000_000_000);
        assert_eq!(
            keys,
            [25_939u16, 25_940]
                .map(|epoch| Identifier::EddystoneEidTemp {
                    epoch,
                    key: hex::encode(temporary_key(&[9; 16], epoch)),
                    exponent: 10,
                })
                .to_vec()
        );
        let out = gateway_record(&r, &Derived::default(), TierSource::Auto);
        assert!(out.identifiers.is_empty());
    }

    #[test]
    fn auto_uses_the_computed_tier_only_for_members_with_purchases() {
        let r =
            record(r#"{"member_id":"M1","display_name":"A","tier":"platinum","stage":"value"}"#);
        let computed: Computed = serde_json::from_value(serde_json::json!({
            "member_id": "M1", "spend_12m_minor": 0, "purchases_12m": 0, "visits_12m": 3,
            "last_visit": "2026-11-02", "last_purchase": null, "recency_days": 3,
            "level": "rest", "level_move": "same", "tier": "member", "tier_since": "2026-01-01",
            "stage": "acquire", "groups": [], "expected_next_visit": "2026-11-20",
            "overdue_days": 0, "overdue_from": "2026-11-25", "expectation": "personal",
            "p_alive": null, "expected_purchases": null
        }))
        .unwrap();
        let mut d = Derived {
            computed: Some(&computed),
            ..Default::default()
        };
        let out = gateway_record(&r, &d, TierSource::Auto);
        assert_eq!(
            (out.tier.as_str(), out.stage.as_deref()),
            ("platinum", Some("value"))
        );
        assert_eq!(out.level.as_deref(), Some("rest"));
        assert_eq!(out.visits_12m, Some(3));
        assert_eq!(out.expected_next_visit.as_deref(), Some("2026-11-20"));
        assert_eq!(out.overdue_after.as_deref(), Some("2026-11-24"));
        d.has_purchases = true;
        let out = gateway_record(&r, &d, TierSource::Auto);
        assert_eq!(
            (out.tier.as_str(), out.stage.as_deref()),
            ("member", Some("acquire"))
        );
        let out = gateway_record(&r, &d, TierSource::Import);
        assert_eq!(out.tier, "platinum");
    }
}
