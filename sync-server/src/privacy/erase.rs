//! `DELETE /api/members/{id}`: a member erased from head office and every store.
//!
//! One transaction removes the member from every channel (the stores drop them on their next
//! change pull, reason `erased`), deletes their record and everything computed from it, writes
//! the tombstone and anonymises their visits and purchases. Their events are then found and
//! anonymised in chunks, outside that transaction, so a long event history does not hold the
//! database's write lock: events arriving meanwhile are already redacted at ingest by the
//! tombstone.

use std::collections::BTreeSet;

use instore_protocol::changes::RemoveReason;
use serde::Serialize;

use super::{ANONYMOUS, member_hash};
use crate::{
    params,
    store::{
        StoreError,
        channels::{self, MemberChange, Touched},
        db::{Db, Sql},
    },
};

/// Events rewritten per transaction.
const EVENT_CHUNK: usize = 1_000;

const INSERT_TOMBSTONE: Sql = Sql::same(
    "INSERT INTO erased_members (member_hash, erased_at_ms) VALUES (?1, ?2)
    ON CONFLICT (member_hash) DO NOTHING",
);
const DELETE_MEMBER: Sql = Sql::same("DELETE FROM members WHERE member_id = ?1");
const DELETE_DERIVED: [Sql; 6] = [
    Sql::same("DELETE FROM member_devices WHERE member_id = ?1"),
    Sql::same("DELETE FROM card_links WHERE member_id = ?1"),
    Sql::same("DELETE FROM member_days WHERE member_id = ?1"),
    Sql::same("DELETE FROM member_categories WHERE member_id = ?1"),
    Sql::same("DELETE FROM member_stores WHERE member_id = ?1"),
    Sql::same("DELETE FROM member_transitions WHERE member_id = ?1"),
];
const ANONYMISE_VISITS: Sql = Sql::same("UPDATE visits SET member_id = ?2 WHERE member_id = ?1");
const ANONYMISE_PURCHASES: Sql =
    Sql::same("UPDATE purchases SET member_id = ?2 WHERE member_id = ?1");
/// A coarse filter (it may match more, never less): every event naming a member serialises it
/// as `"member_id":"…"`. Each candidate is checked exactly before it is rewritten.
const CANDIDATE_EVENTS: Sql =
    Sql::same("SELECT gateway_id, seq, body_json FROM events WHERE body_json LIKE ?1 ESCAPE '\\'");
const REWRITE_EVENT: Sql =
    Sql::same("UPDATE events SET body_json = ?3 WHERE gateway_id = ?1 AND seq = ?2");

/// The answer to an erasure.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Erased {
    pub member_id: String,
    /// Head office held a record of the member.
    pub had_record: bool,
    /// The member had been erased before (the tombstone was there).
    pub already_erased: bool,
    /// Channels the member was removed from.
    pub channels: usize,
    pub visits_anonymised: u64,
    pub purchases_anonymised: u64,
    pub events_anonymised: u64,
}

/// Erases `member_id` (see the module docs). Returns what was done and the channel heads to
/// tell the stores about.
pub fn erase(db: &mut Db, member_id: &str, now_ms: i64) -> Result<(Erased, Touched), StoreError> {
    let mut out = Erased {
        member_id: member_id.to_owned(),
        ..Erased::default()
    };
    let mut touched = Touched::new();
    let mut tx = db.transaction()?;
    let inserted = tx.execute(&INSERT_TOMBSTONE, params![member_hash(member_id), now_ms])?;
    out.already_erased = inserted == 0;
    channels::place_member(
        &mut tx,
        &MemberChange {
            member_id,
            gateway: None,
            channels: &BTreeSet::new(),
            removal: RemoveReason::Erased,
            keys_changed: false,
            has_keys: false,
        },
        now_ms,
        &mut touched,
    )?;
    out.channels = touched.len();
    out.had_record = tx.execute(&DELETE_MEMBER, params![member_id])? > 0;
    for sql in &DELETE_DERIVED {
        tx.execute(sql, params![member_id])?;
    }
    out.visits_anonymised = tx.execute(&ANONYMISE_VISITS, params![member_id, ANONYMOUS])?;
    out.purchases_anonymised = tx.execute(&ANONYMISE_PURCHASES, params![member_id, ANONYMOUS])?;
    tx.commit()?;
    out.events_anonymised = anonymise_events(db, member_id)?;
    Ok((out, touched))
}

/// `LIKE` pattern for `"member_id":"<id>"` anywhere, with the id JSON-escaped (as the stored
/// body has it) and then LIKE-escaped.
fn like_pattern(member_id: &str) -> String {
    let json = serde_json::to_string(member_id).unwrap_or_default();
    let mut p = String::from("%\"member_id\":");
    for c in json.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The body with every `member_id` equal to `member_id` emptied and, where it did, the alert
/// `message` blanked (it greets the member by name). `None` if the body does not name them.
fn anonymised(body_json: &str, member_id: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(body_json).ok()?;
    if !scrub(&mut v, member_id) {
        return None;
    }
    serde_json::to_string(&v).ok()
}

fn scrub(v: &mut serde_json::Value, member_id: &str) -> bool {
    match v {
        serde_json::Value::Object(map) => {
            let named = map.get("member_id").and_then(|m| m.as_str()) == Some(member_id);
            if named {
                map.insert("member_id".into(), ANONYMOUS.into());
                if map.contains_key("message") {
                    map.insert("message".into(), "".into());
                }
                if map.contains_key("display_name") {
                    map.insert("display_name".into(), "".into());
                }
                // A signed code's key id would link the anonymised events to one phone.
                if map.contains_key("code") {
                    map.insert("code".into(), serde_json::Value::Null);
                }
            }
            let mut nested = false;
            for child in map.values_mut() {
                nested |= scrub(child, member_id);
            }
            named || nested
        }
        serde_json::Value::Array(items) => {
            // Every item, not up to the first that names the member.
            let mut any = false;
            for item in items {
                any |= scrub(item, member_id);
            }
            any
        }
        _ => false,
    }
}

fn anonymise_events(db: &mut Db, member_id: &str) -> Result<u64, StoreError> {
    let candidates = {
        let mut tx = db.read_transaction()?;
        let rows = tx.query(&CANDIDATE_EVENTS, params![like_pattern(member_id)])?;
        tx.commit()?;
        rows
    };
    let mut rewrites = Vec::new();
    for r in candidates {
        if let Some(body) = anonymised(r.str(2)?, member_id) {
            rewrites.push((r.string(0)?, r.i64(1)?, body));
        }
    }
    let mut done = 0;
    for chunk in rewrites.chunks(EVENT_CHUNK) {
        let mut tx = db.transaction()?;
        for (gateway, seq, body) in chunk {
            done += tx.execute(&REWRITE_EVENT, params![gateway, *seq, body])?;
        }
        tx.commit()?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_like_pattern_escapes_json_and_like_metacharacters() {
        assert_eq!(like_pattern("M1"), r#"%"member_id":"M1"%"#);
        assert_eq!(like_pattern("a_b%c"), r#"%"member_id":"a\_b\%c"%"#);
        // A quote is JSON-escaped to \" and the backslash then LIKE-escaped.
        assert_eq!(like_pattern("q\"x"), r#"%"member_id":"q\\"x"%"#);
    }

    #[test]
    fn only_the_named_members_events_are_rewritten_and_their_alert_text_blanked() {
        let alert = r#"{"type":"alert_raised","alert_id":"a1","rule":"vip","member_id":"M1","priority":"high","message":"Greet Ms. Li"}"#;
        let out: serde_json::Value =
            serde_json::from_str(&anonymised(alert, "M1").unwrap()).unwrap();
        assert_eq!(out["member_id"], "");
        assert_eq!(out["message"], "");
        assert_eq!(out["rule"], "vip");
        assert_eq!(out["alert_id"], "a1");
        // Another member's event is left alone.
        let other = r#"{"type":"arrive","member_id":"M10","zone":"z","visit_id":"v"}"#;
        assert_eq!(anonymised(other, "M1"), None);
        assert_eq!(anonymised("not json", "M1"), None);
        let nested = r#"{"type":"x","card":{"member_id":"M1","display_name":"Li"}}"#;
        let out: serde_json::Value =
            serde_json::from_str(&anonymised(nested, "M1").unwrap()).unwrap();
        assert_eq!(out["card"]["display_name"], "");
    }
}
