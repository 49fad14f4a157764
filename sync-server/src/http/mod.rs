//! Head office's HTTP API (axum): health, metrics, gateways, events, members, HQ page.
//!
//! In: requests. Out: JSON (errors too: `{"error": "..."}`), Prometheus text, one HTML page.
//! Handlers never panic on input: bad bodies and parameters are 400s, missing or wrong tokens
//! 401s, database trouble a logged 500. This module alone imports axum.

pub mod auth;
mod campaigns;
mod card;
mod changes;
mod devices;
mod members;
mod ndjson;
mod purchases;
pub mod registry;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use instore_protocol::{SCHEMA_VERSION, topics::valid_id};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    compute::ComputeConfig,
    fanout::{FanoutSettings, notifier::NoticeInput, snapshots::Snapshots},
    metrics::MetricsHandle,
    store::{Store, StoreError, queries},
};

/// Gap ranges listed per gateway in `/api/gateways`, at most.
const MAX_GAPS: usize = 100;
const DEFAULT_EVENTS_LIMIT: u32 = 100;
const MAX_EVENTS_LIMIT: u32 = 10_000;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    /// Its own connection and thread for the dashboard's long reads (see `dashboard/`).
    pub views: Store,
    pub metrics: MetricsHandle,
    pub admin_token: Arc<str>,
    /// `[api] viewer_token`: reads the dashboard's views, nothing else.
    pub viewer_token: Option<Arc<str>>,
    /// Which gateways may speak for which store (tokens, revocations, enrolment).
    pub registry: crate::registry::Registry,
    /// Wrong enrolment codes, for everyone together.
    pub enrol_limiter: registry::SharedLimiter,
    /// Wrong member card links, for everyone together.
    pub card_limiter: registry::SharedLimiter,
    /// Store notice keys, handed to a store's gateways with their change responses.
    pub message_auth: crate::ingest::decode::MessageAuth,
    pub notices: mpsc::Sender<NoticeInput>,
    pub fanout: Arc<FanoutSettings>,
    pub compute: Arc<ComputeConfig>,
    pub snapshots: Arc<Snapshots>,
    /// Wakes the compute stage after an import.
    pub poke: Arc<tokio::sync::Notify>,
    /// `"embedded"` or `"external"`, for `/healthz`.
    pub broker_kind: &'static str,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/gateways", get(gateways))
        .route("/api/gateways/enrolments", post(registry::issue))
        .route("/api/gateways/registry", get(registry::list))
        .route("/api/gateways/{id}/revoke", post(registry::revoke))
        .route("/api/gateways/{id}/rotate", post(registry::rotate))
        .route("/api/enrol", post(registry::redeem))
        .route("/api/events", get(events))
        .route("/api/rules/report", get(rules_report))
        .route("/api/campaigns", get(campaigns::list))
        .route(
            "/api/campaigns/{id}",
            axum::routing::put(campaigns::put).delete(campaigns::retire),
        )
        .route("/api/members", post(members::import))
        .route(
            "/api/members/{id}",
            get(members::member).delete(members::erase),
        )
        .route(
            "/api/members/{id}/devices",
            get(devices::list).post(devices::register),
        )
        .route(
            "/api/members/{id}/devices/{key_id}",
            axum::routing::delete(devices::revoke),
        )
        .route("/api/members/{id}/card-links", post(card::create_link))
        .route("/api/member-codes/flags", get(devices::flags))
        .route("/api/card/enrol", post(card::enrol))
        .route("/api/card/face", post(card::face))
        .route("/card", get(card::redirect))
        .route("/card/", get(card::page))
        .route("/card/qrcode.js", get(card::qrcode_js))
        .route("/card/sw.js", get(card::service_worker))
        .route("/card/manifest.webmanifest", get(card::manifest))
        .route("/card/icon.svg", get(card::icon))
        .route("/api/pyramid", get(members::pyramid))
        .route("/api/purchases", post(purchases::import))
        .route("/api/stores/{store}/changes", get(changes::changes))
        .route(
            "/api/stores/{store}/channels/{channel}/snapshots/{version}",
            get(changes::snapshot_file),
        )
        .route("/api/stores/{store}/members/lookup", post(changes::lookup))
        .route(
            "/api/stores/{store}/members/snapshot",
            get(changes::legacy_snapshot),
        )
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized(state: &AppState) -> Self {
        state.metrics.metrics.http_unauthorized.inc();
        Self::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The admin token, or the read-only viewer token when one is configured.
pub(crate) fn require_reader(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let viewer = state
        .viewer_token
        .as_deref()
        .is_some_and(|v| auth::is_admin(headers, v));
    if viewer || auth::is_admin(headers, &state.admin_token) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(state))
    }
}

/// A query string, or 400 saying what was `expected` and what was wrong.
pub(crate) fn query_or_400<T>(
    query: Result<Query<T>, QueryRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {expected}: {}", e.body_text()),
        )
    })
}

pub(crate) fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if auth::is_admin(headers, &state.admin_token) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(state))
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn healthz(State(state): State<AppState>) -> Response {
    let broker_connected = state.metrics.metrics.mqtt_connected.get() == 1;
    let db = state.store.call(queries::counts).await;
    let body = serde_json::json!({
        "status": if db.is_ok() { "ok" } else { "error" },
        "database": db.is_ok(),
        "broker": state.broker_kind,
        "broker_connected": broker_connected,
        "schema_version": SCHEMA_VERSION,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Gauges that mirror the database are read at scrape time rather than kept in step.
    match state.store.call(queries::counts).await {
        Ok(c) => {
            let m = &state.metrics.metrics;
            m.gateways_known.set(c.gateways_known);
            m.gateways_online.set(c.gateways_online);
            m.members.set(c.members);
            m.member_set_version.set(c.member_set_version);
            m.events_missing.set(c.events_missing);
            m.events_shed.set(c.events_shed);
        }
        Err(e) => tracing::warn!(error = %e, "cannot refresh metrics gauges"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn gateways(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let rows = state.store.call(|c| queries::gateways(c, MAX_GAPS)).await?;
    Ok(Json(rows).into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    gateway: String,
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: Option<u32>,
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "expected ?gateway=ID&after_seq=N&limit=M: {}",
                e.body_text()
            ),
        )
    })?;
    if !valid_id(&q.gateway) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "gateway is not a valid id",
        ));
    }
    let limit = q
        .limit
        .unwrap_or(DEFAULT_EVENTS_LIMIT)
        .clamp(1, MAX_EVENTS_LIMIT);
    let rows = state
        .store
        .call(move |c| queries::events_after(c, &q.gateway, q.after_seq, limit))
        .await?;
    Ok(Json(rows).into_response())
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    #[serde(default)]
    store: Option<String>,
    /// Days after an occasion in which a purchase counts for the holdout comparison.
    #[serde(default = "default_window_days")]
    window_days: u32,
}

fn default_window_days() -> u32 {
    7
}

/// Longest purchase window: past a quarter, a purchase says little about one greeting.
const MAX_WINDOW_DAYS: u32 = 90;

/// Per rule: raised, taken, converted (outcome purchased), no sale, not found, dismissed,
/// expired — the closed loop of clerk alerts, from the gateways' lifecycle events — and, per
/// store and overall, alerted against held-out members: purchases within `window_days` (default
/// 7) of the occasion, the uplift with its 95 % interval, revenue per occasion.
async fn rules_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_reader(&state, &headers)?;
    let q = query_or_400(query, "?store=ID&window_days=N (both optional)")?;
    if let Some(store) = &q.store
        && !valid_id(store)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "store is not a valid id",
        ));
    }
    if !(1..=MAX_WINDOW_DAYS).contains(&q.window_days) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("window_days must be 1 to {MAX_WINDOW_DAYS}"),
        ));
    }
    let rows = state
        .views
        .call(move |c| queries::rules_report(c, q.store.as_deref(), q.window_days))
        .await?;
    Ok(Json(rows).into_response())
}
