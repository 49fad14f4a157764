//! A member as the gateway uses it: what rules, clerk cards and presence read, in the form read
//! from `members.db` on a match (never all of them in memory).

use instore_protocol::{Consent, MemberRecord, member::LastPurchase};

/// Position of a member in `members.db` (its rowid, never reused: `AUTOINCREMENT`) and in the
/// in-memory index; 4 bytes so that the identifier tables stay small with a million members.
pub type Slot = u32;

/// The fields rules and clerk cards need.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Member {
    /// Where the record lives; a slot is never given to another member.
    pub slot: Slot,
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub stage: Option<String>,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    pub birthday: Option<String>,
    pub last_purchase: Option<LastPurchase>,
    /// `YYYY-MM-DD`; `None` when head office has not recorded one.
    pub last_visit: Option<String>,
    /// Presence always holds for an indexed member; the other consents gate rules.
    pub consent: Consent,
    /// Head office's pyramid band (`top2` … `rest`).
    pub level: Option<String>,
    pub visits_12m: Option<u32>,
    pub expected_next_visit: Option<String>,
    /// The member is overdue on every day after this date (head office computes it).
    pub overdue_after: Option<String>,
}

impl Member {
    pub fn from_record(slot: Slot, r: &MemberRecord) -> Self {
        Self {
            slot,
            member_id: r.member_id.clone(),
            display_name: r.display_name.clone(),
            tier: r.tier.clone(),
            stage: r.stage.clone(),
            tags: r.tags.clone(),
            groups: r.groups.clone(),
            birthday: r.birthday.clone(),
            last_purchase: r.last_purchase.clone(),
            last_visit: r.last_visit.clone(),
            consent: r.consent.clone(),
            level: r.level.clone(),
            visits_12m: r.visits_12m,
            expected_next_visit: r.expected_next_visit.clone(),
            overdue_after: r.overdue_after.clone(),
        }
    }
}
