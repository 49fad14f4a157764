//! Member imports (`POST /api/members`, NDJSON): parse, upsert, place at the stores.
//!
//! In: NDJSON text. Out: upserted members marked for recomputation, and a report with every
//! skipped line and why. The compute stage picks marked members up within a second, computes
//! their fields and places them at the stores (one change per member, with its computed
//! fields, rather than one for the import and another for the computation). Imported in chunks,
//! one transaction each, so a million-member import never holds the database for minutes and
//! ingest's commits interleave with it; each chunk is whole or not at all.

use instore_protocol::parse_ndjson;
use serde::Serialize;

use crate::store::{Store, StoreError, members};

/// Members per transaction.
const CHUNK: usize = 2_000;

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
    /// The member-set version after the import.
    pub version: u64,
}

/// Parses and stores an NDJSON import.
pub async fn import(store: &Store, text: &str) -> Result<ImportReport, StoreError> {
    let (records, errors) = parse_ndjson(text);
    let skipped = errors
        .into_iter()
        .map(|e| SkippedLine {
            line: e.line,
            error: e.error.to_string(),
        })
        .collect();
    let mut version = store.call(members::version).await?;
    let imported = records.len();
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<_> = records.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        version = store
            .call(move |db| {
                let mut tx = db.transaction()?;
                let v = members::bump_version(&mut tx)?;
                for m in &chunk {
                    members::upsert(&mut tx, m, v)?;
                }
                tx.commit()?;
                Ok(v)
            })
            .await?;
    }
    Ok(ImportReport {
        imported,
        skipped,
        version,
    })
}
