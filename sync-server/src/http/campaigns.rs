//! `PUT /api/campaigns/{id}?scope=...` (body: the rules TOML), `GET /api/campaigns`,
//! `DELETE /api/campaigns/{id}`: central campaigns, admin only (see `campaigns/`).

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, AppState, query_or_400, require_admin};
use crate::campaigns::{self, CampaignError};

#[derive(Debug, Deserialize)]
pub(super) struct PutQuery {
    #[serde(default = "chain")]
    scope: String,
}

fn chain() -> String {
    instore_protocol::changes::CHAIN_CHANNEL.to_string()
}

fn refused(e: CampaignError) -> ApiError {
    match e {
        CampaignError::Invalid(why) => ApiError::new(StatusCode::BAD_REQUEST, why),
        CampaignError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such campaign"),
        CampaignError::Store(e) => e.into(),
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A new version of campaign `id` for `scope` (default `chain`): the body is a rules file,
/// checked as a gateway checks its own; a bad rule is refused (400) with its name and line.
pub(super) async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PutQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let q = query_or_400(query, "?scope=chain|group:ID|store:ID")?;
    let toml = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the rules must be UTF-8 TOML"))?
        .to_string();
    let rules = campaigns::check(&id, &q.scope, &toml).map_err(refused)?;
    let (id2, scope) = (id.clone(), q.scope.clone());
    let now = now_ms();
    let version = state
        .store
        .call(move |db| Ok(campaigns::put(db, &id2, &scope, &toml, now)))
        .await?
        .map_err(refused)?;
    tracing::info!(campaign = %id, version, scope = %q.scope, rules = rules.len(), "campaign stored");
    announce(&state).await?;
    state.metrics.metrics.campaigns_stored.inc();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": id, "version": version, "scope": q.scope, "rules": rules,
        })),
    )
        .into_response())
}

/// Tells every store's gateways (their members notice) that campaigns moved, so they ask now
/// rather than at their next poll.
async fn announce(state: &AppState) -> Result<(), ApiError> {
    let counter = state.store.call(campaigns::counter_now).await?;
    // The notifier gone means head office is stopping; the gateways' polls still bring it.
    let _ = state
        .notices
        .send(crate::fanout::notifier::NoticeInput::Campaigns(counter))
        .await;
    Ok(())
}

/// Every campaign at its current version.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let rows = state.store.call(campaigns::list).await?;
    Ok(Json(rows).into_response())
}

/// Withdraws campaign `id`: its stores drop its rules with their next change response.
pub(super) async fn retire(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let id2 = id.clone();
    let now = now_ms();
    let version = state
        .store
        .call(move |db| Ok(campaigns::retire(db, &id2, now)))
        .await?
        .map_err(refused)?;
    tracing::info!(campaign = %id, version, "campaign withdrawn");
    announce(&state).await?;
    Ok(Json(serde_json::json!({ "id": id, "version": version, "retired": true })).into_response())
}
