//! Privacy at head office: erasing a member, and deleting events past their retention age.
//!
//! In: `DELETE /api/members/{id}` ([`erase`]); the clock and `[privacy] events_days`
//! ([`retention`]). Out: a member gone from head office and from every store (a `remove` with
//! reason `erased` on each of their channels), their events, visits and purchases kept for the
//! counts but anonymised, and a tombstone holding only the SHA-256 of their id, so that events a
//! gateway sends before it hears of the erasure are stored without content; and events older
//! than the retention age deleted, oldest first, a bounded chunk per transaction.
//!
//! What stays: aggregate facts (an arrival happened at that store at that time, an alert of
//! that rule was raised and taken, a sale of that amount), with the member id emptied and alert
//! texts (which name the member) blanked. A member imported again after an erasure is a new
//! member: the tombstone no longer applies to them.

pub mod erase;
pub mod retention;

use sha2::{Digest, Sha256};

/// What an erased member's id becomes wherever a row is kept.
pub const ANONYMOUS: &str = "";

/// The tombstone key of a member id: hex SHA-256.
pub fn member_hash(member_id: &str) -> String {
    hex::encode(Sha256::digest(member_id.as_bytes()))
}
