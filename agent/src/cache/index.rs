use std::{collections::HashMap, sync::Arc};

use instore_protocol::{IdentifierKey, MemberRecord, member::LastPurchase};

/// A member as the gateway uses it: the fields rules and clerk cards need.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub member_id: String,
    pub display_name: String,
    pub tier: String,
    pub stage: Option<String>,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    pub birthday: Option<String>,
    pub last_purchase: Option<LastPurchase>,
}

impl From<&MemberRecord> for Member {
    fn from(r: &MemberRecord) -> Self {
        Self {
            member_id: r.member_id.clone(),
            display_name: r.display_name.clone(),
            tier: r.tier.clone(),
            stage: r.stage.clone(),
            tags: r.tags.clone(),
            groups: r.groups.clone(),
            birthday: r.birthday.clone(),
            last_purchase: r.last_purchase.clone(),
        }
    }
}

/// Identifier → member in one hash lookup. Immutable: a new member set builds a new index, which
/// the engine swaps in whole, so identification never sees half an update.
#[derive(Debug, Default)]
pub struct MemberIndex {
    version: u64,
    by_key: HashMap<IdentifierKey, Arc<Member>>,
    irks: Vec<([u8; 16], Arc<Member>)>,
    by_id: HashMap<String, Arc<Member>>,
}

impl MemberIndex {
    /// Builds the index of consenting members. Records that fail validation are skipped (they were
    /// validated on the way in; this keeps a corrupted cache row from poisoning the index).
    pub fn build(version: u64, records: &[MemberRecord]) -> Self {
        let mut index = MemberIndex {
            version,
            ..Default::default()
        };
        for r in records {
            if !r.consent.presence {
                continue;
            }
            let Ok(keys) = r.validate() else { continue };
            let member = Arc::new(Member::from(r));
            index.by_id.insert(r.member_id.clone(), member.clone());
            for k in keys {
                match k {
                    IdentifierKey::Irk(irk) => index.irks.push((irk, member.clone())),
                    other => {
                        index.by_key.insert(other, member.clone());
                    }
                }
            }
        }
        index
    }

    pub fn lookup(&self, key: &IdentifierKey) -> Option<&Arc<Member>> {
        self.by_key.get(key)
    }

    /// Identity resolving keys of consenting members, for resolvable private addresses.
    /// The consenting member with this id.
    pub fn member(&self, member_id: &str) -> Option<&Arc<Member>> {
        self.by_id.get(member_id)
    }

    pub fn irks(&self) -> &[([u8; 16], Arc<Member>)] {
        &self.irks
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of consenting members indexed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use instore_protocol::{Consent, Identifier};

    use super::*;

    fn record(id: &str, minor: u16, consent: bool) -> MemberRecord {
        MemberRecord {
            member_id: id.into(),
            display_name: "N".into(),
            tier: "gold".into(),
            stage: None,
            tags: vec![],
            groups: vec![],
            consent: Consent { presence: consent },
            identifiers: vec![Identifier::Ibeacon {
                uuid: "f7826da6-4fa2-4e98-8024-bc5b71e0893e".into(),
                major: 1,
                minor,
            }],
            birthday: None,
            last_purchase: None,
        }
    }

    #[test]
    fn consenting_members_are_found_by_identifier() {
        let idx = MemberIndex::build(3, &[record("A", 1, true), record("B", 2, true)]);
        let key = record("B", 2, true).validate().unwrap()[0];
        assert_eq!(idx.lookup(&key).unwrap().member_id, "B");
        assert_eq!((idx.len(), idx.version()), (2, 3));
    }

    #[test]
    fn members_without_consent_are_not_indexed() {
        let idx = MemberIndex::build(1, &[record("A", 1, false)]);
        let key = record("A", 1, false).validate().unwrap()[0];
        assert!(idx.lookup(&key).is_none());
        assert!(idx.is_empty());
    }
}
