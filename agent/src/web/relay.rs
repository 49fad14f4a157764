//! The store's gateways talking to each other (`relay/`): forwarded sightings in, the hub
//! state out, hand-back. Each message is sealed under the store's LAN key; this module only
//! carries bytes to and from [`crate::relay::Relay`].
//!
//! - `POST /api/relay/sightings` — a sealed batch; 200 `{accepted}`, 503 while this gateway
//!   is not acting as hub (a standby whose hub is up), 401 for a bad seal, 400 otherwise.
//!   404 without a `[hub] key`.
//! - `GET /api/relay/state` — this gateway's role, whether it acts, its peers; sealed when it
//!   has a key. Open to any origin (no credentials): the clerk page of one gateway reads its
//!   peers' before it moves a tablet there.
//! - `POST /api/relay/handback` — a sealed request of the hub's; answers with the state.

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use super::{AppState, error};
use crate::relay::{inbound::InboundError, wire};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/relay/sightings",
            post(sightings).layer(DefaultBodyLimit::max(wire::MAX_MESSAGE_BYTES)),
        )
        .route("/api/relay/state", get(state))
        .route(
            "/api/relay/handback",
            post(handback).layer(DefaultBodyLimit::max(64 * 1024)),
        )
}

async fn sightings(State(app): State<AppState>, body: Bytes) -> Response {
    let Some(inbound) = app.web.relay.as_ref().and_then(|r| r.inbound.as_ref()) else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway takes no forwarded sightings",
        );
    };
    match inbound.accept(&body) {
        Ok(n) => axum::Json(serde_json::json!({ "accepted": n })).into_response(),
        Err(InboundError::Passive) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not acting as the store's hub",
        ),
        Err(e @ InboundError::Wire(wire::WireError::BadSeal)) => {
            error(StatusCode::UNAUTHORIZED, &e.to_string())
        }
        Err(e @ InboundError::Replayed { .. }) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn sealed_state(app: &AppState) -> Response {
    let Some(relay) = &app.web.relay else {
        return error(StatusCode::NOT_FOUND, "no relay");
    };
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        relay.state_bytes(),
    )
        .into_response();
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

async fn state(State(app): State<AppState>) -> Response {
    sealed_state(&app)
}

async fn handback(State(app): State<AppState>, body: Bytes) -> Response {
    let Some(relay) = &app.web.relay else {
        return error(StatusCode::NOT_FOUND, "no relay");
    };
    match relay.hand_back(&body).await {
        Ok(()) => sealed_state(&app),
        Err(e) => {
            app.web
                .metrics
                .relay_refused
                .get_or_create(&vec![("reason", e.reason())])
                .inc();
            error(StatusCode::UNAUTHORIZED, &e.to_string())
        }
    }
}
