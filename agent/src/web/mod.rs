//! The agent's HTTP face: health, metrics, the member-data API and the clerk page.
//!
//! In: read-only views of the rest of the agent — the [`AlertHub`](crate::alerts::AlertHub), the
//! presence snapshot (a `watch` channel the engine publishes), the metrics registry. Out: HTTP
//! responses and a Server-Sent Events feed of alerts to clerk tablets. This module changes no
//! agent state and accepts no request bodies; it is the only module that imports axum.
//!
//! Routes:
//! - `GET /healthz`, `GET /metrics` — open, for monitoring.
//! - `GET /` — the clerk page (one static HTML file; it holds no data until it has a token).
//! - `GET /api/presence`, `GET /api/alerts?limit=N`, `GET /api/alerts/stream` — member data, behind
//!   a bearer token (see [`auth`]).

pub mod auth;
mod sse;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{alerts::Alert, presence::PresentMember};
pub use auth::{AdminToken, Authorizer, Principal, TokenCheck, TokenDigest};

/// What the web server reads from the rest of the agent.
#[derive(Clone)]
pub struct WebState {
    pub store_id: String,
    pub gateway_id: String,
    /// `[http] admin_token`; empty disables it.
    pub admin_token: String,
    pub alerts: crate::alerts::AlertHub,
    pub presence: watch::Receiver<Arc<Vec<PresentMember>>>,
    pub metrics: crate::metrics::Metrics,
    pub registry: Arc<prometheus_client::registry::Registry>,
}

impl std::fmt::Debug for WebState {
    // By hand, so the admin token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("store_id", &self.store_id)
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    web: WebState,
    auth: Arc<Authorizer>,
    /// Ends the SSE streams, which would otherwise hold graceful shutdown open forever.
    shutdown: CancellationToken,
}

/// The clerk page: static, self-contained, compiled in so the gateway serves it with no files on disk.
const CLERK_PAGE: &str = include_str!("assets/clerk.html");

/// `GET /api/alerts` without `limit`.
const DEFAULT_ALERT_LIMIT: usize = 50;
/// Upper bound on `limit`; the hub's ring is smaller anyway.
const MAX_ALERT_LIMIT: usize = 1000;

/// Serves until `cancel` fires, then stops accepting, ends the alert streams and waits for
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let auth = Authorizer::admin_only(&state.admin_token);
    serve_with(listener, state, auth, cancel).await
}

/// [`serve`] with a caller-built [`Authorizer`] (for example one that also knows paired tablets).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: WebState,
    auth: Authorizer,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if state.admin_token.is_empty() {
        tracing::warn!("[http] admin_token is empty: the member-data API refuses every request");
    }
    tracing::info!(%addr, "http listening");
    let app = router_with(state, auth, cancel.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    tracing::info!("http stopped");
    Ok(())
}

/// The routes with the admin token as the only credential. Alert streams from this router end
/// only when their clients go away; [`serve`] ties them to its cancel token.
pub fn router(state: WebState) -> Router {
    let auth = Authorizer::admin_only(&state.admin_token);
    router_with(state, auth, CancellationToken::new())
}

/// The routes, authorizing with `auth`; alert streams end when `shutdown` fires.
pub fn router_with(state: WebState, auth: Authorizer, shutdown: CancellationToken) -> Router {
    let app = AppState {
        web: state,
        auth: Arc::new(auth),
        shutdown,
    };
    let api = Router::new()
        .route("/api/presence", get(presence))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/stream", get(sse::alert_stream))
        // route_layer: unknown /api paths are a 404, not a 401.
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ))
        // Member data must not linger in a browser or proxy cache.
        .layer(middleware::map_response(no_store));
    Router::new()
        .route("/", get(clerk_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .with_state(app)
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn healthz(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "store_id": state.web.store_id,
        "gateway_id": state.web.gateway_id,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = crate::metrics::render(&state.web.registry);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

async fn presence(State(state): State<AppState>) -> Response {
    // Clone the Arc and release the watch lock before serializing, so the engine's next publish
    // never waits on a slow response.
    let members = state.web.presence.borrow().clone();
    Json(members.as_slice()).into_response()
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    limit: Option<usize>,
}

async fn alerts(State(state): State<AppState>, Query(q): Query<AlertsQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_ALERT_LIMIT).min(MAX_ALERT_LIMIT);
    let recent = state.web.alerts.recent(limit);
    let body: Vec<&Alert> = recent.iter().map(|a| a.as_ref()).collect();
    Json(body).into_response()
}

async fn clerk_page() -> Response {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // The page is inline by design (one file, no framework), so scripts and styles are
            // allowed inline only; it talks to this origin alone.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                     frame-ancestors 'none'",
                ),
            ),
            // The token arrives in the URL fragment; never leak the page URL elsewhere.
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        Html(CLERK_PAGE),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not found"})),
    )
        .into_response()
}
