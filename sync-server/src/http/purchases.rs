//! `POST /api/purchases`: NDJSON purchases, streamed: the body is read in pieces and stored in
//! chunks as it arrives, so a file of millions of purchases never sits in memory. The admin
//! token is checked before the body is read.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures::StreamExt;

use super::{ApiError, AppState, require_admin};
use crate::ingest::purchases::{PurchaseReport, import_lines};

/// Lines stored per transaction.
const CHUNK_LINES: usize = 2_000;
/// Longest line accepted (a purchase with hundreds of items fits easily).
const MAX_LINE_BYTES: usize = 256 * 1024;

pub(super) async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let currency = state.compute.currency.clone();
    let mut report = PurchaseReport::default();
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut lines: Vec<(usize, String)> = Vec::with_capacity(CHUNK_LINES);
    let mut line_no = 0usize;
    let mut overlong = false;
    loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("body unreadable after line {line_no}: {e}"),
                ));
            }
            None => None,
        };
        let done = chunk.is_none();
        if let Some(c) = chunk {
            pending.extend_from_slice(&c);
        }
        // Every complete line (and, at the end, the last one without a newline).
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            line_no += 1;
            push_line(
                &pending[start..end],
                line_no,
                overlong,
                &mut lines,
                &mut report,
            );
            overlong = false;
            start = end + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            // Keep counting lines but drop this one's bytes: it is refused when it ends.
            overlong = true;
            pending.clear();
        }
        if done && (!pending.is_empty() || overlong) {
            line_no += 1;
            push_line(&pending, line_no, overlong, &mut lines, &mut report);
            pending.clear();
        }
        if lines.len() >= CHUNK_LINES || (done && !lines.is_empty()) {
            import_lines(
                &state.store,
                std::mem::take(&mut lines),
                currency.as_deref(),
                &mut report,
            )
            .await?;
        }
        if done {
            break;
        }
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

fn push_line(
    bytes: &[u8],
    no: usize,
    overlong: bool,
    lines: &mut Vec<(usize, String)>,
    report: &mut PurchaseReport,
) {
    if overlong {
        report.skip(no, format!("line longer than {MAX_LINE_BYTES} bytes"));
        return;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => lines.push((no, s.trim_end_matches('\r').to_string())),
        Err(e) => report.skip(no, format!("not UTF-8 (byte {})", e.valid_up_to())),
    }
}
