//! Members: NDJSON import, one member's computed fields, erasure, the pyramid.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{ApiError, AppState, ndjson::NdjsonBody, require_admin, require_reader};
use crate::{
    compute::{Level, PyramidRow, run::compute_one},
    fanout::gateway_form,
    ingest, now_ms, params,
    store::db::Sql,
};

/// `POST /api/members`: the token is checked before a byte of the body is read, and the body
/// is then read as a stream and stored batch by batch, so its size is not limited by memory.
pub(super) async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let mut body = NdjsonBody::new(body);
    let mut import = ingest::members::MemberImport::begin(&state.store).await?;
    loop {
        let batch = body.next_batch(ingest::members::CHUNK).await?;
        if batch.is_empty() {
            break;
        }
        import.add(&state.store, batch).await?;
    }
    let report = import.finish();
    tracing::debug!(lines = body.lines_read(), "member import body read");
    tracing::info!(
        imported = report.imported,
        skipped = report.skipped_total,
        version = report.version,
        "members imported"
    );
    if report.imported > 0 {
        state.metrics.metrics.member_imports.inc();
        // The compute stage places the members at the stores, which the notifier then tells.
        state.poke.notify_one();
    }
    Ok(Json(report).into_response())
}

/// `DELETE /api/members/{id}`: erases the member at head office and at every store (see
/// [`crate::privacy::erase`]). Idempotent: erasing again reports `already_erased`.
pub(super) async fn erase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not a member id"));
    }
    let (erased, touched) = state
        .store
        .call(move |db| crate::privacy::erase::erase(db, &id, now_ms()))
        .await?;
    state.metrics.metrics.members_erased.inc();
    // Member ids are pseudonyms, but an erasure is logged without one all the same.
    tracing::info!(
        had_record = erased.had_record,
        channels = erased.channels,
        events = erased.events_anonymised,
        visits = erased.visits_anonymised,
        purchases = erased.purchases_anonymised,
        "member erased"
    );
    if !touched.is_empty()
        && state
            .notices
            .send(crate::fanout::notifier::NoticeInput::Heads(touched))
            .await
            .is_err()
    {
        tracing::warn!("notifier gone: stores learn of the erasure on their next poll");
    }
    Ok(Json(erased).into_response())
}

/// `GET /api/members/{id}`: what head office computes of a member, as of now.
#[derive(Debug, Serialize)]
struct MemberView {
    member_id: String,
    display_name: String,
    /// As stores see it (see `[compute] tier_source`).
    tier: String,
    stage: Option<String>,
    /// The tier the pyramid gives, and since when.
    computed_tier: String,
    tier_since: String,
    computed_stage: &'static str,
    level: &'static str,
    spend_12m_minor: i64,
    purchases_12m: u64,
    visits_12m: u64,
    last_visit: Option<String>,
    last_purchase: Option<String>,
    recency_days: Option<u32>,
    expected_next_visit: Option<String>,
    overdue_days: u32,
    expectation: Option<crate::compute::Method>,
    groups: Vec<String>,
    p_alive: Option<f64>,
    expected_purchases: Option<f64>,
    expected_purchases_days: u32,
    home_store: Option<String>,
    presence_consent: bool,
}

const HAS_PURCHASES: Sql = Sql::same("SELECT has_purchases FROM members WHERE member_id = ?1");

pub(super) async fn member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not a member id"));
    }
    let cfg = state.compute.clone();
    let fanout = state.fanout.clone();
    let view = state
        .store
        .call(move |db| {
            let mut tx = db.read_transaction()?;
            let Some((c, record)) = compute_one(&mut tx, &id, now_ms(), &cfg)? else {
                return Ok(None);
            };
            let has_purchases = tx
                .query_opt(&HAS_PURCHASES, params![&id])?
                .map(|r| r.bool(0))
                .transpose()?
                .unwrap_or(false);
            tx.commit()?;
            let derived = gateway_form::Derived {
                computed: Some(&c),
                has_purchases,
                last_purchase: None,
                devices: &[],
            };
            let (tier, stage) = gateway_form::tier_and_stage(&record, &derived, fanout.tier_source);
            Ok(Some(MemberView {
                member_id: record.member_id.clone(),
                display_name: record.display_name.clone(),
                tier,
                stage,
                computed_tier: c.tier.tier.clone(),
                tier_since: c.tier.tier_since.to_string(),
                computed_stage: c.stage.as_str(),
                level: c.level.as_str(),
                spend_12m_minor: c.spend_12m_minor,
                purchases_12m: c.purchases_12m,
                visits_12m: c.visits_12m,
                last_visit: c
                    .last_visit
                    .map(|d| d.to_string())
                    .or(record.last_visit.clone()),
                last_purchase: c.last_purchase.map(|d| d.to_string()),
                recency_days: c.recency_days,
                expected_next_visit: c.expected_next_visit.map(|d| d.to_string()),
                overdue_days: c.overdue_days,
                expectation: c.expectation,
                groups: c.groups.clone(),
                p_alive: c.p_alive,
                expected_purchases: c.expected_purchases,
                expected_purchases_days: cfg.model.horizon_days,
                home_store: record.home_store.clone(),
                presence_consent: record.consent.presence,
            }))
        })
        .await?;
    match view {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such member")),
    }
}

const PYRAMID: Sql = Sql::same(
    "SELECT level, COUNT(*), CAST(COALESCE(SUM(spend_12m), 0) AS BIGINT) FROM members
    GROUP BY level",
);

/// One level of `GET /api/pyramid`.
#[derive(Debug, Serialize)]
struct PyramidLevel {
    level: &'static str,
    members: u64,
    spend_12m_minor: i64,
    /// Share of the chain's 12-month spend, 0..1.
    share_of_spend: f64,
    /// Share of the member base, 0..1.
    share_of_members: f64,
    average_spend_minor: i64,
    /// Moves into this level from a lower one since the first of the (UTC) month.
    moved_up: u64,
    /// Moves into this level from a higher one since the first of the month.
    moved_down: u64,
}

/// `GET /api/pyramid`: heads and spend per level, best first, as of the last computation.
pub(super) async fn pyramid(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let since = crate::dashboard::views::month_start(crate::compute::run::today_of(
        jiff::Timestamp::now().as_millisecond(),
    ));
    let (rows, moves) = state
        .views
        .call(move |db| {
            let moves = crate::dashboard::views::level_moves(db, since)?;
            let mut pairs = Vec::new();
            for r in db.query(&PYRAMID, params![])? {
                let level = Level::parse(r.str(0)?).unwrap_or(Level::Rest);
                pairs.push(PyramidRow {
                    level,
                    members: r.u64(1)?,
                    spend_12m_minor: r.i64(2)?,
                });
            }
            Ok((pairs, moves))
        })
        .await?;
    let mut by_level: Vec<PyramidRow> = Level::ALL
        .into_iter()
        .map(|level| PyramidRow {
            level,
            members: 0,
            spend_12m_minor: 0,
        })
        .collect();
    for r in rows {
        if let Some(slot) = by_level.iter_mut().find(|x| x.level == r.level) {
            slot.members += r.members;
            slot.spend_12m_minor += r.spend_12m_minor;
        }
    }
    let total_spend: i64 = by_level.iter().map(|r| r.spend_12m_minor.max(0)).sum();
    let total_members: u64 = by_level.iter().map(|r| r.members).sum();
    let out: Vec<PyramidLevel> = by_level
        .into_iter()
        .map(|r| PyramidLevel {
            level: r.level.as_str(),
            members: r.members,
            spend_12m_minor: r.spend_12m_minor,
            share_of_spend: if total_spend > 0 {
                r.spend_12m_minor.max(0) as f64 / total_spend as f64
            } else {
                0.0
            },
            share_of_members: if total_members > 0 {
                r.members as f64 / total_members as f64
            } else {
                0.0
            },
            average_spend_minor: if r.members > 0 {
                r.spend_12m_minor / r.members as i64
            } else {
                0
            },
            moved_up: moves.get(&r.level).map_or(0, |m| m.0),
            moved_down: moves.get(&r.level).map_or(0, |m| m.1),
        })
        .collect();
    Ok(Json(out).into_response())
}
