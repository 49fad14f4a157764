//! "My card", the member's side: a page head office serves (no build step; its QR encoder,
//! Kazuhiko Arase's MIT-licensed `qrcode-generator` 1.4.4 from npm, is vendored in
//! `card/qrcode.js`), and the three calls behind it:
//! - `POST /api/members/{id}/card-links` `{ttl_s?}` (admin): a single-use link for the member,
//!   `{code, path: "/card/#enrol=CODE", expires_ms}`;
//! - `POST /api/card/enrol` `{code, alg, public_key}`: the phone's browser made a
//!   non-extractable key pair; its public key is registered for the link's member and the link
//!   spent; the answer is the card's face (name and level) and the key id. Wrong codes are
//!   limited to [`MAX_CARD_FAILURES_PER_MINUTE`] for everyone together;
//! - `POST /api/card/face` `{code: "ISQ2:…"}`: a current code of a registered device (proof the
//!   caller holds the key) gets the card's face again, fresh. Every answer's `Date` header lets
//!   the page correct a wrong phone clock.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{ApiError, AppState, registry::json_body, require_admin};
use crate::{
    devices::{self, card},
    fanout::notifier::NoticeInput,
    now_ms,
};

/// Wrong link codes allowed per minute, from everyone together (120-bit codes: this only keeps
/// the database quiet).
pub const MAX_CARD_FAILURES_PER_MINUTE: u32 = 30;

const PAGE: &str = include_str!("card/index.html");
const QRCODE_JS: &str = include_str!("card/qrcode.js");
const SERVICE_WORKER: &str = include_str!("card/sw.js");
const MANIFEST: &str = include_str!("card/manifest.webmanifest");
const ICON: &str = include_str!("card/icon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The service worker keeps its own copy; browsers revalidate the rest.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn redirect() -> Redirect {
    Redirect::permanent("/card/")
}

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(super) async fn qrcode_js() -> Response {
    asset("text/javascript; charset=utf-8", QRCODE_JS)
}

pub(super) async fn service_worker() -> Response {
    asset("text/javascript; charset=utf-8", SERVICE_WORKER)
}

pub(super) async fn manifest() -> Response {
    asset("application/manifest+json", MANIFEST)
}

pub(super) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkRequest {
    #[serde(default)]
    ttl_s: Option<u64>,
}

pub(super) async fn create_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<LinkRequest>>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let ttl_s = body
        .and_then(|Json(b)| b.ttl_s)
        .unwrap_or(card::DEFAULT_TTL_S)
        .clamp(60, card::MAX_TTL_S);
    let now = now_ms();
    let expires_ms = now + (ttl_s * 1000) as i64;
    let member = id.clone();
    let code = state
        .store
        .call(move |db| card::create_link(db, &member, expires_ms, now))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no member {id:?}")))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "code": code,
            "path": format!("/card/#enrol={code}"),
            "expires_ms": expires_ms,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Enrolment {
    code: String,
    alg: String,
    public_key: String,
}

pub(super) async fn enrol(
    State(state): State<AppState>,
    body: Result<Json<Enrolment>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body, r#"{"code", "alg", "public_key"}"#)?;
    let now = now_ms();
    let limiter = state.card_limiter.clone();
    let limited = limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .limited(now, MAX_CARD_FAILURES_PER_MINUTE);
    if limited {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong card links; try again in a minute",
        ));
    }
    let settings = state.fanout.clone();
    let redeemed = state
        .store
        .call(move |db| {
            Ok(card::redeem(
                db,
                &req.code,
                &req.alg,
                &req.public_key,
                &settings,
                now,
            ))
        })
        .await??;
    let Some((device, face, touched)) = redeemed else {
        limiter.lock().unwrap_or_else(|p| p.into_inner()).fail(now);
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this card link is unknown, already used or expired; ask for a new one",
        ));
    };
    state.metrics.metrics.device_keys_registered.inc();
    tracing::info!(key_id = %device.key_id, "member card enrolled");
    if !touched.is_empty()
        && state
            .notices
            .send(NoticeInput::Heads(touched))
            .await
            .is_err()
    {
        tracing::warn!("notifier gone: stores learn of the card on their next poll");
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "key_id": device.key_id,
            "alg": device.alg,
            "card": face,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaceRequest {
    code: String,
}

pub(super) async fn face(
    State(state): State<AppState>,
    body: Result<Json<FaceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body, r#"{"code": "ISQ2:..."}"#)?;
    let refused = |e: instore_protocol::member_code::CodeError| {
        ApiError::new(StatusCode::FORBIDDEN, format!("{e}"))
    };
    let code = instore_protocol::member_code::parse(&req.code).map_err(refused)?;
    let now = now_ms();
    code.check_time(now).map_err(refused)?;
    let key_id = hex::encode(code.key_id);
    let found = state
        .store
        .call(move |db| devices::active_key(db, &key_id))
        .await?;
    let Some((member_id, alg, public_key)) = found else {
        return Err(refused(
            instore_protocol::member_code::CodeError::UnknownKey,
        ));
    };
    code.verify(alg, &public_key, now).map_err(refused)?;
    let face = state
        .store
        .call(move |db| card::face(db, &member_id))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such member"))?;
    Ok(Json(serde_json::json!({ "card": face })).into_response())
}
