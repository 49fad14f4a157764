//! `POST /api/purchases`: NDJSON purchases, streamed: the body is read in pieces and stored in
//! chunks as it arrives, so a file of millions of purchases never sits in memory. The admin
//! token is checked before the body is read.

use super::{ApiError, AppState, ndjson::NdjsonBody, require_admin};
use crate::ingest::purchases::{PurchaseReport, import_lines};
use axum::{
    Json,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

/// Lines stored per transaction.
const CHUNK_LINES: usize = 2_000;

pub(super) async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let currency = state.compute.currency.clone();
    let mut report = PurchaseReport::default();
    let mut body = NdjsonBody::new(body);
    loop {
        let batch = body.next_batch(CHUNK_LINES).await?;
        if batch.is_empty() {
            break;
        }
        let mut lines = Vec::with_capacity(batch.len());
        for (no, line) in batch {
            match line {
                Ok(text) => lines.push((no, text)),
                Err(reason) => report.skip(no, reason),
            }
        }
        import_lines(&state.store, lines, currency.as_deref(), &mut report).await?;
    }
    let m = &state.metrics.metrics;
    m.purchases_imported.inc_by(report.imported);
    m.purchases_duplicate.inc_by(report.duplicates);
    m.purchases_refused.inc_by(report.skipped_total);
    if report.imported > 0 {
        state.poke.notify_one();
    }
    tracing::info!(
        imported = report.imported,
        duplicates = report.duplicates,
        unknown_members = report.unknown_members,
        refused = report.skipped_total,
        "purchases imported"
    );
    Ok(Json(report).into_response())
}
