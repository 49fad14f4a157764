//! The gateway registry over HTTP (see [`crate::registry`]):
//! - `POST /api/gateways/enrolments` `{store_id, gateway_id, ttl_s?}` (admin): a one-time code;
//! - `POST /api/enrol` `{code}` (the code is the credential; failures rate-limited): the
//!   gateway's token, for the config `instore-provision enrol` writes;
//! - `GET /api/gateways/registry` (admin): every registered gateway, without credentials;
//! - `POST /api/gateways/{id}/revoke`, `POST /api/gateways/{id}/rotate` (admin): refused at once
//!   on HTTP and MQTT; a rotation answers with the new token.

use std::sync::{Arc, Mutex};

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use instore_protocol::topics::valid_id;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, require_admin};
use crate::{now_ms, registry::db};

/// Enrolment codes live this long unless asked otherwise, and a week at most.
const DEFAULT_CODE_TTL_S: u64 = 86_400;
const MAX_CODE_TTL_S: u64 = 7 * 86_400;
/// Code alphabet: no 0/O, 1/I/L, so a code read aloud or typed survives; 12 characters carry 59
/// bits.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 12;
/// Wrong codes allowed per minute, from everyone together: at this rate a day of guessing
/// tries 43,200 of 2^59 codes.
pub const MAX_ENROL_FAILURES_PER_MINUTE: u32 = 30;

/// Wrong enrolment codes, from everyone together.
pub type SharedLimiter = Arc<Mutex<instore_daemon::limit::Window>>;

fn new_code() -> String {
    let raw: String = (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rand::random_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    format!("{}-{}-{}", &raw[..4], &raw[4..8], &raw[8..])
}

pub(super) fn json_body<T>(
    body: Result<Json<T>, JsonRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {expected}: {}", e.body_text()),
        )
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct EnrolmentRequest {
    store_id: String,
    gateway_id: String,
    #[serde(default)]
    ttl_s: Option<u64>,
}

#[derive(Debug, Serialize)]
struct IssuedEnrolment {
    code: String,
    store_id: String,
    gateway_id: String,
    expires_at_ms: i64,
}

pub(super) async fn issue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<EnrolmentRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let req = json_body(
        body,
        r#"{"store_id": "...", "gateway_id": "...", "ttl_s": N}"#,
    )?;
    if !valid_id(&req.store_id) || !valid_id(&req.gateway_id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "store_id and gateway_id must be 1-64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    let ttl_s = req
        .ttl_s
        .unwrap_or(DEFAULT_CODE_TTL_S)
        .clamp(60, MAX_CODE_TTL_S);
    let now = now_ms();
    let expires_at_ms = now + i64::try_from(ttl_s).unwrap_or(0) * 1000;
    let code = new_code();
    let (c, s, g) = (code.clone(), req.store_id.clone(), req.gateway_id.clone());
    state
        .store
        .call(move |d| db::create_code(d, &c, &s, &g, now, expires_at_ms))
        .await?;
    tracing::info!(store = %req.store_id, gateway = %req.gateway_id, ttl_s, "enrolment code issued");
    Ok(Json(IssuedEnrolment {
        code,
        store_id: req.store_id,
        gateway_id: req.gateway_id,
        expires_at_ms,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct RedeemRequest {
    code: String,
}

/// What a gateway receives once enrolled. The token is shown this once.
#[derive(Debug, Serialize)]
struct Enrolled {
    store_id: String,
    gateway_id: String,
    generation: u32,
    token: String,
}

pub(super) async fn redeem(
    State(state): State<AppState>,
    body: Result<Json<RedeemRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body, r#"{"code": "..."}"#)?;
    let now = now_ms();
    let limited = state
        .enrol_limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .limited(now, MAX_ENROL_FAILURES_PER_MINUTE);
    if limited {
        state
            .metrics
            .metrics
            .enrolments
            .get_or_create(&vec![("result", "rate_limited")])
            .inc();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong enrolment codes; try again in a minute",
        ));
    }
    let code = req.code;
    let entry = state.store.call(move |d| db::redeem(d, &code, now)).await?;
    let Some(entry) = entry else {
        state
            .enrol_limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail(now);
        state
            .metrics
            .metrics
            .enrolments
            .get_or_create(&vec![("result", "bad_code")])
            .inc();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown, used or expired enrolment code",
        ));
    };
    let Some(token) = state
        .registry
        .token_at(&entry.store_id, &entry.gateway_id, entry.generation)
    else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no token"));
    };
    state.registry.put(entry.clone());
    state
        .metrics
        .metrics
        .enrolments
        .get_or_create(&vec![("result", "ok")])
        .inc();
    tracing::info!(
        store = %entry.store_id,
        gateway = %entry.gateway_id,
        generation = entry.generation,
        "gateway enrolled"
    );
    Ok(Json(Enrolled {
        store_id: entry.store_id,
        gateway_id: entry.gateway_id,
        generation: entry.generation,
        token,
    })
    .into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let entries = state.store.call(db::load_all).await?;
    Ok(Json(entries).into_response())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "not a gateway id"))
    }
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    check_id(&id)?;
    let gw = id.clone();
    let entry = state
        .store
        .call(move |d| db::revoke(d, &gw, now_ms()))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such gateway"))?;
    state.registry.put(entry.clone());
    state.metrics.metrics.gateways_revoked.inc();
    tracing::warn!(gateway = %id, store = %entry.store_id, "gateway revoked");
    Ok(Json(entry).into_response())
}

#[derive(Debug, Serialize)]
struct Rotated {
    #[serde(flatten)]
    entry: crate::registry::Entry,
    token: String,
}

pub(super) async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    check_id(&id)?;
    let gw = id.clone();
    let entry = state
        .store
        .call(move |d| db::rotate(d, &gw))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no registered, unrevoked gateway of that id (enrol it first)",
            )
        })?;
    let token = state
        .registry
        .token_at(&entry.store_id, &entry.gateway_id, entry.generation)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no token"))?;
    state.registry.put(entry.clone());
    tracing::info!(gateway = %id, generation = entry.generation, "gateway token rotated");
    Ok(Json(Rotated { entry, token }).into_response())
}
