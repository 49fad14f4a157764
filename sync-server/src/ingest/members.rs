//! Member imports (`POST /api/members`, NDJSON): parse, upsert, place at the stores.
//!
//! In: NDJSON lines with their numbers, in batches as the request body arrives. Out: upserted
//! members marked for recomputation, and a report with every skipped line and why (the first
//! [`MAX_LISTED_ERRORS`]; the count is complete). The compute stage picks marked members up
//! within a second, computes their fields and places them at the stores (one change per member,
//! with its computed fields, rather than one for the import and another for the computation).
//! Each batch is one transaction, so a million-member import never holds the database for
//! minutes and ingest's commits interleave with it; a batch is whole or not at all, and the
//! file is never in memory at once — only which member holds which identifier, so that a later
//! line claiming another member's identifier is refused as it would be in one piece.

use instore_protocol::MemberLines;
use serde::Serialize;

pub use super::purchases::{MAX_LISTED_ERRORS, SkippedLine};
use crate::store::{Store, StoreError, members};

/// Members per transaction.
pub const CHUNK: usize = 2_000;

/// The JSON answer to `POST /api/members`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped_total: u64,
    /// The first [`MAX_LISTED_ERRORS`] skipped lines.
    pub skipped: Vec<SkippedLine>,
    /// The member-set version after the import.
    pub version: u64,
}

impl ImportReport {
    fn skip(&mut self, line: usize, error: String) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_LISTED_ERRORS {
            self.skipped.push(SkippedLine { line, error });
        }
    }
}

/// A line as the body reader hands it over: its text, or why it could not be read as text.
pub type RawLine = (usize, Result<String, String>);

/// An import in progress.
#[derive(Debug)]
pub struct MemberImport {
    lines: MemberLines,
    report: ImportReport,
}

impl MemberImport {
    pub async fn begin(store: &Store) -> Result<Self, StoreError> {
        let version = store.call(members::version).await?;
        Ok(Self {
            lines: MemberLines::default(),
            report: ImportReport {
                imported: 0,
                skipped_total: 0,
                skipped: Vec::new(),
                version,
            },
        })
    }

    /// Parses `batch` and stores its members in one transaction.
    pub async fn add(&mut self, store: &Store, batch: Vec<RawLine>) -> Result<(), StoreError> {
        let mut records = Vec::with_capacity(batch.len());
        for (no, line) in batch {
            let parsed = match line {
                Ok(text) => self.lines.parse(no, &text),
                Err(reason) => {
                    self.report.skip(no, reason);
                    continue;
                }
            };
            match parsed {
                Some(Ok(m)) => records.push(m),
                Some(Err(e)) => self.report.skip(e.line, e.error.to_string()),
                None => {}
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        self.report.version = store
            .call(move |db| {
                let mut tx = db.transaction()?;
                let v = members::bump_version(&mut tx)?;
                for m in &records {
                    members::upsert(&mut tx, m, v)?;
                }
                tx.commit()?;
                Ok(v)
            })
            .await?;
        self.report.imported += n;
        Ok(())
    }

    pub fn finish(self) -> ImportReport {
        self.report
    }
}

/// Parses and stores an NDJSON import held in memory (tests, tools).
pub async fn import(store: &Store, text: &str) -> Result<ImportReport, StoreError> {
    let mut import = MemberImport::begin(store).await?;
    let mut batch = Vec::with_capacity(CHUNK);
    for (i, line) in text.lines().enumerate() {
        batch.push((i + 1, Ok(line.to_owned())));
        if batch.len() == CHUNK {
            import.add(store, std::mem::take(&mut batch)).await?;
        }
    }
    import.add(store, batch).await?;
    Ok(import.finish())
}
