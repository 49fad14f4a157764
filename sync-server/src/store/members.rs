//! The member set: upserted by imports, versioned as a whole, read as snapshots.

use instore_protocol::MemberRecord;

use super::{
    StoreError,
    db::{Db, Tx},
    sql,
};
use crate::params;

/// What an import changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub imported: usize,
    /// The member-set version after the import (unchanged when nothing was imported).
    pub version: u64,
    /// Stores with a known gateway: they are told about the new version.
    pub stores: Vec<String>,
}

/// The current member-set version; 0 before the first import.
pub fn version(db: &mut Db) -> Result<u64, StoreError> {
    let mut tx = db.transaction()?;
    let v = version_in(&mut tx)?;
    tx.commit()?;
    Ok(v)
}

/// [`version`] inside a caller's transaction.
pub fn version_in(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    Ok(tx
        .query_opt(&sql::SELECT_META, params![sql::META_MEMBERS_VERSION])?
        .map(|r| r.u64(0))
        .transpose()?
        .unwrap_or(0))
}

/// Upserts one imported record (its columns too) and marks the member for recomputation. The
/// caller places the member afterwards (`fanout::place`) in the same transaction.
pub fn upsert(tx: &mut Tx<'_>, m: &MemberRecord, version: u64) -> Result<(), StoreError> {
    let json = serde_json::to_string(m)
        .map_err(|e| StoreError::Corrupt(format!("member {}: {e}", m.member_id)))?;
    let has_keys = m.identifiers.iter().any(|i| {
        matches!(
            i,
            instore_protocol::Identifier::RotatingSecret { .. }
                | instore_protocol::Identifier::EddystoneEidIdentity { .. }
        )
    });
    tx.execute(
        &sql::UPSERT_MEMBER,
        params![
            &m.member_id,
            json,
            version,
            m.consent.presence,
            &m.tier,
            m.stage.clone(),
            has_keys,
            m.referred_by.clone(),
            m.home_store.clone()
        ],
    )?;
    Ok(())
}

/// Bumps the member-set version (kept for the import's answer and for gateways that predate
/// channels) and returns it.
pub fn bump_version(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let v = version_in(tx)? + 1;
    tx.execute(&sql::UPSERT_META, params![sql::META_MEMBERS_VERSION, v])?;
    Ok(v)
}

/// Upserts `members` and bumps the version, all in one transaction, without placing them (the
/// storage tests' shortcut; head office imports through `ingest::members`).
pub fn import(db: &mut Db, members: &[MemberRecord]) -> Result<ImportOutcome, StoreError> {
    let mut tx = db.transaction()?;
    let mut v = version_in(&mut tx)?;
    if !members.is_empty() {
        v = bump_version(&mut tx)?;
        for m in members {
            upsert(&mut tx, m, v)?;
        }
    }
    let stores = super::queries::stores_in(&mut tx)?;
    tx.commit()?;
    Ok(ImportOutcome {
        imported: members.len(),
        version: v,
        stores,
    })
}

/// The whole member set and its version, read in one transaction so they agree.
pub fn snapshot(db: &mut Db) -> Result<(u64, Vec<MemberRecord>), StoreError> {
    let mut tx = db.transaction()?;
    let v = version_in(&mut tx)?;
    let mut members = Vec::new();
    tx.for_each(&sql::SELECT_MEMBERS, params![], |r| {
        members.push(
            serde_json::from_str::<MemberRecord>(r.str(0)?)
                .map_err(|e| StoreError::Corrupt(format!("member record: {e}")))?,
        );
        Ok(())
    })?;
    tx.commit()?;
    Ok((v, members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    fn member(id: &str, tier: &str) -> MemberRecord {
        serde_json::from_str(&format!(
            r#"{{"member_id":"{id}","display_name":"N","tier":"{tier}"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn each_import_bumps_the_version_and_upserts_by_member_id() {
        each_backend(|c| {
            assert_eq!(version(c).unwrap(), 0);
            let a = import(c, &[member("M1", "gold"), member("M2", "silver")]).unwrap();
            assert_eq!((a.imported, a.version), (2, 1));
            let b = import(c, &[member("M1", "platinum")]).unwrap();
            assert_eq!(b.version, 2);
            let (v, members) = snapshot(c).unwrap();
            assert_eq!(v, 2);
            assert_eq!(members.len(), 2);
            assert_eq!(members[0].tier, "platinum");
        });
    }

    #[test]
    fn an_empty_import_leaves_the_version_alone() {
        each_backend(|c| {
            import(c, &[member("M1", "gold")]).unwrap();
            assert_eq!(import(c, &[]).unwrap().version, 1);
        });
    }
}
