//! The member set: upserted by imports, versioned as a whole, read as snapshots.

use instore_protocol::MemberRecord;
use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, sql};

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
pub fn version(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<i64> = conn
        .query_row(sql::SELECT_META, params![sql::META_MEMBERS_VERSION], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Upserts `members` and bumps the version, all in one transaction.
pub fn import(
    conn: &mut Connection,
    members: &[MemberRecord],
) -> Result<ImportOutcome, StoreError> {
    let tx = conn.transaction()?;
    let mut v = version(&tx)?;
    if !members.is_empty() {
        v += 1;
        let version_i64 = v as i64;
        {
            let mut upsert = tx.prepare_cached(sql::UPSERT_MEMBER)?;
            for m in members {
                let json = serde_json::to_string(m)
                    .map_err(|e| StoreError::Corrupt(format!("member {}: {e}", m.member_id)))?;
                upsert.execute(params![m.member_id, json, version_i64])?;
            }
        }
        tx.execute(
            sql::UPSERT_META,
            params![sql::META_MEMBERS_VERSION, version_i64],
        )?;
    }
    let stores = super::queries::stores(&tx)?;
    tx.commit()?;
    Ok(ImportOutcome {
        imported: members.len(),
        version: v,
        stores,
    })
}

/// The whole member set and its version, read in one transaction so they agree.
pub fn snapshot(conn: &mut Connection) -> Result<(u64, Vec<MemberRecord>), StoreError> {
    let tx = conn.transaction()?;
    let v = version(&tx)?;
    let members = {
        let mut stmt = tx.prepare_cached(sql::SELECT_MEMBERS)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.iter()
            .map(|json| {
                serde_json::from_str::<MemberRecord>(json)
                    .map_err(|e| StoreError::Corrupt(format!("member record: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    tx.commit()?;
    Ok((v, members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_connection;

    fn member(id: &str, tier: &str) -> MemberRecord {
        serde_json::from_str(&format!(
            r#"{{"member_id":"{id}","display_name":"N","tier":"{tier}"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn each_import_bumps_the_version_and_upserts_by_member_id() {
        let mut c = test_connection();
        assert_eq!(version(&c).unwrap(), 0);
        let a = import(&mut c, &[member("M1", "gold"), member("M2", "silver")]).unwrap();
        assert_eq!((a.imported, a.version), (2, 1));
        let b = import(&mut c, &[member("M1", "platinum")]).unwrap();
        assert_eq!(b.version, 2);
        let (v, members) = snapshot(&mut c).unwrap();
        assert_eq!(v, 2);
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].tier, "platinum");
    }

    #[test]
    fn an_empty_import_leaves_the_version_alone() {
        let mut c = test_connection();
        import(&mut c, &[member("M1", "gold")]).unwrap();
        assert_eq!(import(&mut c, &[]).unwrap().version, 1);
    }
}
