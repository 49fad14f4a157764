//! The agent's HTTP face: health, metrics, the member-data API, clerk actions, pairing and the
//! clerk page.
//!
//! In: the [`AlertHub`](crate::alerts::AlertHub) and its [`Lifecycle`] (clerk actions become
//! outbox events there), the paired [`Tablets`], the presence snapshot (a `watch` channel the
//! engine publishes), the metrics registry. Out: HTTP responses and a Server-Sent Events feed of
//! alert updates to clerk tablets. It is the only module that imports axum; it decides nothing
//! about alerts or tokens itself.
//!
//! Routes:
//! - `GET /healthz` — open, for monitoring.
//! - `GET /metrics` — as `[http] metrics` says: by default from this host, or from elsewhere
//!   with the admin token as a bearer (it shows members present as they come and go).
//! - `GET /` — the clerk page; `GET /pair?code=…` — the pairing page. Static HTML with no data.
//! - `POST /api/pair` `{code}` — open but rate-limited per client: a pairing code for a tablet
//!   token (also set as an HttpOnly cookie).
//! - `GET /api/me`, `GET /api/presence`, `GET /api/alerts?limit=N`, `GET /api/alerts/stream`,
//!   `POST /api/alerts/{id}/take`, `…/outcome` `{outcome}`, `…/dismiss` — a paired tablet or the
//!   admin token (see [`auth`]); `POST /api/tablet/renew` — a paired tablet, for a new token.
//! - `POST /api/admin/pairings`, `GET /api/admin/tablets`, `DELETE /api/admin/tablets/{id}` — the
//!   admin token, from this host only (the `pair-tablet` and `tablets` commands run on the
//!   gateway; a token leaked on the LAN cannot pair tablets or revoke them).
//! - `/api/relay/…` — the store's other gateways, sealed under the store's LAN key ([`relay`]).

pub mod auth;
mod relay;
mod sse;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, FromRequestParts, Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::{delete, get, post},
};
use instore_protocol::AlertOutcomeKind;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    alerts::{Action, Actor, Lifecycle, LifecycleError, StepError, Update},
    config::MetricsAccess,
    pairing::{PairingError, Tablets},
    presence::PresentMember,
};
pub use auth::{AdminToken, Authorizer, Principal, TokenCheck, TokenDigest};

/// What the web server reads from the rest of the agent.
#[derive(Clone)]
pub struct WebState {
    pub store_id: String,
    pub gateway_id: String,
    /// `[http] admin_token`; empty disables it.
    pub admin_token: String,
    pub alerts: crate::alerts::AlertHub,
    /// Records clerk actions; without it (read-only tests) actions answer 503.
    pub lifecycle: Option<Lifecycle>,
    /// Paired tablets; without them only the admin token is accepted and pairing answers 404.
    pub tablets: Option<Tablets>,
    pub presence: watch::Receiver<Arc<Vec<PresentMember>>>,
    pub metrics: crate::metrics::Metrics,
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// `[http] metrics`.
    pub metrics_access: MetricsAccess,
    /// The store's other gateways (`[hub]`); `None` in tests of the web alone.
    pub relay: Option<crate::relay::Relay>,
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
/// Opened from the pairing QR code: redeems the code and goes on to the clerk page.
const PAIR_PAGE: &str = include_str!("assets/pair.html");

/// `GET /api/alerts` without `limit`.
const DEFAULT_ALERT_LIMIT: usize = 50;
/// Upper bound on `limit`; the hub's ring is smaller anyway.
const MAX_ALERT_LIMIT: usize = 1000;
/// Pairing codes live this long unless the admin asks otherwise, and at most a day.
const DEFAULT_CODE_TTL: Duration = Duration::from_secs(600);
const MAX_CODE_TTL: Duration = Duration::from_secs(86_400);
const MAX_LABEL_CHARS: usize = 64;

/// Serves until `cancel` fires, then stops accepting, ends the alert streams and waits for
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let auth = default_authorizer(&state);
    serve_with(listener, state, auth, cancel).await
}

/// The admin token plus the paired tablets, if any.
fn default_authorizer(state: &WebState) -> Authorizer {
    let auth = Authorizer::admin_only(&state.admin_token);
    match &state.tablets {
        Some(t) => auth.with(Arc::new(t.clone())),
        None => auth,
    }
}

/// [`serve`] with a caller-built [`Authorizer`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: WebState,
    auth: Authorizer,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if state.admin_token.is_empty() {
        tracing::warn!("[http] admin_token is empty: the admin API and pairing commands are off");
    }
    tracing::info!(%addr, "http listening");
    let app = router_with(state, auth, cancel.clone());
    // The peer address decides who may use the admin API and read metrics, and whose wrong
    // pairing codes count against whom.
    axum::serve(listener, app.into_make_service_with_connect_info::<Conn>())
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    tracing::info!("http stopped");
    Ok(())
}

/// The routes with the admin token and paired tablets as credentials. Alert streams from this
/// router end only when their clients go away (or are revoked); [`serve`] ties them to its
/// cancel token.
pub fn router(state: WebState) -> Router {
    let auth = default_authorizer(&state);
    router_with(state, auth, CancellationToken::new())
}

/// The routes, authorizing with `auth`; alert streams end when `shutdown` fires. Served without
/// the peer's address (no `ConnectInfo`), every request counts as coming from another host.
pub fn router_with(state: WebState, auth: Authorizer, shutdown: CancellationToken) -> Router {
    let app = AppState {
        web: state,
        auth: Arc::new(auth),
        shutdown,
    };
    let api = Router::new()
        .route("/api/me", get(me))
        .route("/api/presence", get(presence))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/stream", get(sse::alert_stream))
        .route("/api/alerts/{id}/take", post(take))
        .route("/api/alerts/{id}/outcome", post(outcome))
        .route("/api/alerts/{id}/dismiss", post(dismiss))
        .route("/api/tablet/renew", post(renew))
        // route_layer: unknown /api paths are a 404, not a 401.
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    let admin = Router::new()
        .route("/api/admin/pairings", post(issue_code))
        .route("/api/admin/tablets", get(list_tablets))
        .route("/api/admin/tablets/{id}", delete(revoke_tablet))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ))
        // The outer layer runs first: a request from the LAN is refused before its token is
        // even looked at, so the admin API offers nothing to guess against.
        .route_layer(middleware::from_fn_with_state(app.clone(), local_only));
    Router::new()
        .route("/", get(clerk_page))
        .route("/pair", get(pair_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/pair", post(redeem))
        .merge(api)
        .merge(admin)
        .merge(relay::routes())
        .fallback(not_found)
        // Member data and tokens must not linger in a browser or proxy cache.
        .layer(middleware::map_response(no_store))
        .with_state(app)
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "store_id": state.web.store_id,
        "gateway_id": state.web.gateway_id,
    }))
    .into_response()
}

/// A connection's two ends, recorded by [`serve`] for every request on it.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Conn
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            peer: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// Where a request came from, when the server was started with it ([`serve`] is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    ip: Option<IpAddr>,
    local_ip: Option<IpAddr>,
}

impl Peer {
    fn of(extensions: &axum::http::Extensions) -> Self {
        let conn = extensions.get::<ConnectInfo<Conn>>().map(|c| c.0);
        Self {
            ip: conn.map(|c| c.peer.ip().to_canonical()),
            local_ip: conn.and_then(|c| c.local).map(|a| a.ip().to_canonical()),
        }
    }

    /// This host: a loopback peer (also IPv4-mapped, on a dual-stack listener), or one whose
    /// address is the one it reached us on — a command on the gateway talking to an agent that
    /// listens on the LAN address only.
    pub(crate) fn is_local(self) -> bool {
        self.ip
            .is_some_and(|ip| ip.is_loopback() || Some(ip) == self.local_ip)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

fn refused_remote(state: &AppState, route: &'static str) {
    state
        .web
        .metrics
        .http_refused_remote
        .get_or_create(&vec![("route", route)])
        .inc();
}

/// Middleware for the admin API: this host only.
async fn local_only(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if Peer::of(req.extensions()).is_local() {
        return next.run(req).await;
    }
    refused_remote(&state, "admin");
    tracing::info!(
        path = req.uri().path(),
        "admin API request from another host refused"
    );
    error(
        StatusCode::FORBIDDEN,
        "the admin API answers on the gateway itself only (run the command there)",
    )
}

/// Whether the request carries the admin token as a bearer.
fn bearer_is_admin(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    auth::bearer_token(headers)
        .and_then(|t| state.auth.authorize(&t))
        .is_some_and(|p| p == Principal::Admin)
}

async fn metrics(
    State(state): State<AppState>,
    peer: Peer,
    headers: axum::http::HeaderMap,
) -> Response {
    let allowed = match state.web.metrics_access {
        MetricsAccess::Open => true,
        MetricsAccess::Local => peer.is_local() || bearer_is_admin(&state, &headers),
        MetricsAccess::Token => bearer_is_admin(&state, &headers),
    };
    if !allowed {
        if state.web.metrics_access == MetricsAccess::Local && !peer.is_local() {
            refused_remote(&state, "metrics");
        } else {
            state.web.metrics.http_unauthorized.inc();
        }
        return auth::unauthorized();
    }
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

/// Who the caller is, as the clerk page shows it ("paired as till 2").
fn actor(state: &AppState, principal: &Principal) -> Option<Actor> {
    match principal {
        Principal::Admin => Some(Actor {
            id: "admin".into(),
            label: "manager".into(),
            admin: true,
        }),
        Principal::Tablet(id) => {
            let label = state.web.tablets.as_ref()?.label(id)?;
            Some(Actor {
                id: id.clone(),
                label,
                admin: false,
            })
        }
    }
}

async fn me(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let Some(a) = actor(&state, &p) else {
        return auth::unauthorized();
    };
    let expiry = match &p {
        Principal::Tablet(id) => state.web.tablets.as_ref().and_then(|t| t.expiry(id)),
        _ => None,
    };
    Json(serde_json::json!({
        "id": a.id, "label": a.label, "admin": a.admin, "store_id": state.web.store_id,
        "token_expires_at_ms": expiry.map(|e| e.expires_at_ms),
        "renew_after_ms": expiry.map(|e| e.renew_after_ms),
        // Decided here, by this clock: a tablet's own clock may be off by days.
        "renew_due": expiry.is_some_and(|e| crate::now_ms() >= e.renew_after_ms),
    }))
    .into_response()
}

/// `POST /api/tablet/renew`: a new token for the calling tablet, also set as its cookie. The
/// old token works until the new one is first used.
async fn renew(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let Principal::Tablet(id) = &p else {
        return error(
            StatusCode::BAD_REQUEST,
            "only a paired tablet renews its token",
        );
    };
    let Some(tablets) = &state.web.tablets else {
        return error(StatusCode::NOT_FOUND, "pairing is not enabled");
    };
    match tablets.renew(id).await {
        Ok(renewed) => with_tablet_cookie(Json(&renewed).into_response(), &renewed.token),
        Err(PairingError::NotPaired) => auth::unauthorized(),
        Err(e) => {
            tracing::error!(error = %e, "token renewal failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "renewal failed")
        }
    }
}

fn with_tablet_cookie(mut resp: Response, token: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&auth::tablet_cookie(token)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
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
    let hub = &state.web.alerts;
    // Read before the list: a stream resumed from here may repeat an update, never miss one.
    let cursor = format!("{}-{}", hub.epoch(), hub.newest_seq());
    let recent = hub.recent(limit);
    let body: Vec<&Update> = recent.iter().map(|a| a.as_ref()).collect();
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cursor) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("x-alert-cursor"), v);
    }
    resp
}

async fn step(state: &AppState, principal: &Principal, id: &str, action: Action) -> Response {
    let Some(lifecycle) = &state.web.lifecycle else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "alert actions are not available",
        );
    };
    let Some(actor) = actor(state, principal) else {
        return auth::unauthorized();
    };
    match lifecycle.apply(id, action, &actor).await {
        Ok(update) => Json(&*update).into_response(),
        Err(LifecycleError::Step(StepError::NotFound)) => {
            error(StatusCode::NOT_FOUND, "no such alert (or too old)")
        }
        Err(LifecycleError::Step(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(LifecycleError::Outbox(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the step could not be recorded; try again",
        ),
    }
}

async fn take(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    step(&state, &p, &id, Action::Take).await
}

#[derive(Debug, Deserialize)]
struct OutcomeBody {
    outcome: AlertOutcomeKind,
}

async fn outcome(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Json<OutcomeBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => step(&state, &p, &id, Action::Outcome(b.outcome)).await,
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "body must be {\"outcome\": \"purchased\" | \"no_sale\" | \"not_found\"}",
        ),
    }
}

async fn dismiss(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    step(&state, &p, &id, Action::Dismiss).await
}

#[derive(Debug, Deserialize)]
struct RedeemBody {
    code: String,
}

async fn redeem(
    State(state): State<AppState>,
    peer: Peer,
    body: Result<Json<RedeemBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(tablets) = &state.web.tablets else {
        return error(StatusCode::NOT_FOUND, "pairing is not enabled");
    };
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "body must be {\"code\": \"…\"}");
    };
    match tablets.redeem(&body.code, peer.ip).await {
        Ok(paired) => with_tablet_cookie(Json(&paired).into_response(), &paired.token),
        Err(e @ PairingError::BadCode) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ PairingError::RateLimited) => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "pairing failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "pairing failed")
        }
    }
}

fn admin_tablets<'a>(
    state: &'a AppState,
    p: &Principal,
) -> Result<&'a Tablets, (StatusCode, &'static str)> {
    if *p != Principal::Admin {
        return Err((StatusCode::FORBIDDEN, "admin token required"));
    }
    state
        .web
        .tablets
        .as_ref()
        .ok_or((StatusCode::NOT_FOUND, "pairing is not enabled"))
}

#[derive(Debug, Deserialize)]
struct IssueBody {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

async fn issue_code(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    body: Option<Json<IssueBody>>,
) -> Response {
    let tablets = match admin_tablets(&state, &p) {
        Ok(t) => t,
        Err((status, msg)) => return error(status, msg),
    };
    let body = body.map(|Json(b)| b).unwrap_or(IssueBody {
        label: None,
        ttl_s: None,
    });
    let label: String = body
        .label
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or("tablet")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL_CHARS)
        .collect();
    let ttl = body
        .ttl_s
        .map_or(DEFAULT_CODE_TTL, Duration::from_secs)
        .min(MAX_CODE_TTL);
    Json(tablets.issue_code(&label, ttl)).into_response()
}

async fn list_tablets(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Response {
    match admin_tablets(&state, &p) {
        Ok(t) => Json(t.list()).into_response(),
        Err((status, msg)) => error(status, msg),
    }
}

async fn revoke_tablet(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let tablets = match admin_tablets(&state, &p) {
        Ok(t) => t,
        Err((status, msg)) => return error(status, msg),
    };
    match tablets.revoke(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such tablet"),
        Err(e) => {
            tracing::error!(error = %e, "revoking a tablet failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "revoking failed")
        }
    }
}

fn page(html: &'static str) -> Response {
    page_connecting(html, "")
}

/// A page that may also read the store's other gateways (`connect`: their origins, separated
/// by spaces), to move a tablet to the one acting as hub.
fn page_connecting(html: &'static str, connect: &str) -> Response {
    // The pages are inline by design (one file each, no framework), so scripts and styles are
    // allowed inline only; they talk to this origin (and the store's other gateways) alone.
    let csp = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'{connect}; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let csp = HeaderValue::from_str(&csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, csp),
            // The pairing code is in the URL; never leak the page URL elsewhere.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Html(html),
    )
        .into_response()
}

async fn clerk_page(State(state): State<AppState>) -> Response {
    let peers = state
        .web
        .relay
        .as_ref()
        .map(|r| r.peer_origins())
        .unwrap_or_default();
    let connect: String = peers.iter().map(|o| format!(" {o}")).collect();
    page_connecting(CLERK_PAGE, &connect)
}

async fn pair_page() -> Response {
    page(PAIR_PAGE)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, local: &str) -> Peer {
        let mut ext = axum::http::Extensions::new();
        ext.insert(ConnectInfo(Conn {
            peer: SocketAddr::new(ip.parse().unwrap(), 50_000),
            local: Some(SocketAddr::new(local.parse().unwrap(), 8080)),
        }));
        Peer::of(&ext)
    }

    #[test]
    fn this_host_is_loopback_or_the_address_it_was_reached_on() {
        assert!(peer("127.0.0.1", "127.0.0.1").is_local());
        assert!(peer("::1", "::1").is_local());
        assert!(peer("::ffff:127.0.0.1", "::ffff:127.0.0.1").is_local());
        // `instore-agent pair-tablet` against an agent listening on its LAN address only.
        assert!(peer("192.168.1.20", "192.168.1.20").is_local());
        assert!(peer("::ffff:192.168.1.20", "192.168.1.20").is_local());
        assert!(!peer("192.168.1.21", "192.168.1.20").is_local());
        assert!(!peer("192.168.1.21", "127.0.0.1").is_local());
        // Served without connection info (a router in a test): never local.
        assert!(!Peer::of(&axum::http::Extensions::new()).is_local());
    }
}
