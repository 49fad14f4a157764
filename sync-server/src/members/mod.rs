//! Members: NDJSON imports, the versioned member set, store snapshots and notices.
//!
//! In: NDJSON text (`POST /api/members`). Out: upserted rows, a new member-set version, and a
//! retained [`instore_protocol::MembersNotice`] per store (see [`notifier`]).
//!
//! For now membership is chain-wide: every member goes to every store, so a store's snapshot is
//! the whole member set and one global version serves all stores. Per-store member sets (home
//! store, region) would add a store key to `members` and a version per store.

pub mod notifier;

use instore_protocol::{MemberSnapshot, SCHEMA_VERSION, parse_ndjson};
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

/// The member snapshot of `store_id` (chain-wide membership: the whole set).
pub async fn snapshot(store: &Store, store_id: &str) -> Result<MemberSnapshot, StoreError> {
    let (version, members) = store.call(members::snapshot).await?;
    Ok(MemberSnapshot {
        v: SCHEMA_VERSION,
        store_id: store_id.to_string(),
        version,
        members,
    })
}
