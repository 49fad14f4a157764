//! Member device keys over HTTP (see [`crate::devices`]), all admin:
//! - `POST /api/members/{id}/devices` `{alg: "ES256"|"Ed25519", public_key: "<raw key, hex>"}`:
//!   `201` with `{key_id, alg, registered_ms}` (`200` when the key was already registered);
//! - `GET /api/members/{id}/devices`: the member's keys, revoked ones included, without the keys;
//! - `DELETE /api/members/{id}/devices/{key_id}`: revoked at head office at once, at the stores
//!   with their next change;
//! - `GET /api/member-codes/flags`: codes used at a second store (see [`devices::uses`]).

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, AppState, registry::json_body, require_admin};
use crate::{
    devices::{self, DeviceError},
    fanout::notifier::NoticeInput,
    now_ms,
    store::channels::Touched,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    alg: String,
    public_key: String,
}

fn member_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not a member id"));
    }
    Ok(())
}

impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> Self {
        let status = match &e {
            DeviceError::NoMember(_) | DeviceError::NoKey => StatusCode::NOT_FOUND,
            DeviceError::BadKey(_) => StatusCode::BAD_REQUEST,
            DeviceError::TakenKey | DeviceError::RevokedKey | DeviceError::TooMany => {
                StatusCode::CONFLICT
            }
            DeviceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match e {
            DeviceError::Store(s) => ApiError::from(s),
            other => ApiError::new(status, other.to_string()),
        }
    }
}

async fn announce(state: &AppState, touched: Touched) {
    if !touched.is_empty()
        && state
            .notices
            .send(NoticeInput::Heads(touched))
            .await
            .is_err()
    {
        tracing::warn!("notifier gone: stores learn of the device key on their next poll");
    }
}

pub(super) async fn register(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    member_id(&id)?;
    let Registration { alg, public_key } =
        json_body(body, r#"{"alg": "ES256"|"Ed25519", "public_key": "<hex>"}"#)?;
    let settings = state.fanout.clone();
    let now = now_ms();
    let (device, created, touched) = state
        .store
        .call(move |db| {
            Ok(devices::register(
                db,
                &id,
                &alg,
                &public_key,
                &settings,
                now,
            ))
        })
        .await??;
    if created {
        state.metrics.metrics.device_keys_registered.inc();
        tracing::info!(key_id = %device.key_id, alg = %device.alg, "member device key registered");
    }
    announce(&state, touched).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(device)).into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    member_id(&id)?;
    let keys = state.store.call(move |db| devices::list(db, &id)).await?;
    Ok(Json(keys).into_response())
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    member_id(&id)?;
    let settings = state.fanout.clone();
    let now = now_ms();
    let touched = state
        .store
        .call(move |db| Ok(devices::revoke(db, &id, &key_id, &settings, now)))
        .await??;
    state.metrics.metrics.device_keys_revoked.inc();
    announce(&state, touched).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn flags(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let flags = state.store.call(devices::uses::list).await?;
    Ok(Json(flags).into_response())
}
