//! Who may read member data: bearer tokens checked in constant time.
//!
//! A request carries its token in `Authorization: Bearer …`, in the `instore_tablet` cookie a
//! paired tablet's browser got when it paired (HttpOnly, SameSite=Strict: page scripts never see
//! it, other sites cannot send it), or — on the alert stream only, because a browser's
//! `EventSource` cannot set headers — in a `?token=` query parameter. Elsewhere a query token is
//! ignored: URLs end up in proxy logs, browser history and `Referer` headers. An
//! [`Authorizer`] asks each of its [`TokenCheck`]s in turn: the admin token from the config, and
//! the paired tablets ([`crate::pairing::Tablets`]).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AppState;

/// Who a request was authorized as. Handlers find it in the request extensions, so that later
/// features (taking an alert, recording its outcome) can say who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// Holder of `[http] admin_token`.
    Admin,
    /// A paired tablet, by its pairing id.
    Tablet(String),
}

/// One source of valid tokens.
///
/// Called on every authenticated request from the async runtime, so it must answer from memory and
/// must not block. Compare with [`TokenDigest::matches`] so a wrong guess takes as long as a near
/// miss.
pub trait TokenCheck: Send + Sync + 'static {
    fn check(&self, token: &str) -> Option<Principal>;
}

/// SHA-256 of a token. Holding only the digest keeps the secret's length out of the comparison's
/// timing, and comparing fixed-size digests byte by byte without an early exit keeps its content
/// out.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality with the digest of `token`.
    pub fn matches(&self, token: &str) -> bool {
        let other = Self::of(token);
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

/// The `[http] admin_token`. An empty token in the config disables it rather than matching an
/// empty bearer.
#[derive(Debug, Clone)]
pub struct AdminToken(Option<TokenDigest>);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self((!token.is_empty()).then(|| TokenDigest::of(token)))
    }
}

impl TokenCheck for AdminToken {
    fn check(&self, token: &str) -> Option<Principal> {
        let digest = self.0.as_ref()?;
        digest.matches(token).then_some(Principal::Admin)
    }
}

/// Every way a request can be authorized, asked in order.
#[derive(Clone)]
pub struct Authorizer {
    checks: Vec<Arc<dyn TokenCheck>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Authorizer {
    /// Only the admin token (which may be empty, and then nothing is authorized).
    pub fn admin_only(admin_token: &str) -> Self {
        Self {
            checks: vec![Arc::new(AdminToken::new(admin_token))],
        }
    }

    /// Adds another source of tokens, such as paired tablets.
    #[must_use]
    pub fn with(mut self, check: Arc<dyn TokenCheck>) -> Self {
        self.checks.push(check);
        self
    }

    pub fn authorize(&self, token: &str) -> Option<Principal> {
        // An empty token never authorizes, whatever a check might think of it.
        if token.is_empty() {
            return None;
        }
        self.checks.iter().find_map(|c| c.check(token))
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The cookie a paired tablet's browser carries.
pub const TABLET_COOKIE: &str = "instore_tablet";

/// The `Set-Cookie` value handing a tablet its token. No `Secure`: the store LAN serves plain
/// HTTP; `SameSite=Strict` keeps other sites from riding on it, `HttpOnly` keeps it from scripts.
pub(crate) fn tablet_cookie(token: &str) -> String {
    format!("{TABLET_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000")
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == TABLET_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The one route that takes a `?token=` (an `EventSource` cannot send a header).
pub(crate) const QUERY_TOKEN_PATH: &str = "/api/alerts/stream";

/// The bearer token of an `Authorization` header, if that is what it holds.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The token a request presents: the bearer header first, then the tablet cookie, else — on
/// [`QUERY_TOKEN_PATH`] only — the `token` query parameter.
pub(crate) fn presented_token(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer_token(headers);
    }
    if let Some(token) = cookie_token(headers) {
        return Some(token);
    }
    if uri.path() != QUERY_TOKEN_PATH {
        return None;
    }
    // A malformed query string is treated as no token, which is then refused.
    Query::<TokenQuery>::try_from_uri(uri).ok()?.0.token
}

/// Middleware for every route that returns member data.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal =
        presented_token(req.headers(), req.uri()).and_then(|token| state.auth.authorize(&token));
    match principal {
        Some(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        None => {
            state.web.metrics.http_unauthorized.inc();
            // The path only: the query may hold the (wrong) token, which must not reach the logs.
            tracing::info!(
                path = req.uri().path(),
                "http request refused: missing or wrong token"
            );
            unauthorized()
        }
    }
}

pub(crate) fn unauthorized() -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "unauthorized"})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tablets;
    impl TokenCheck for Tablets {
        fn check(&self, token: &str) -> Option<Principal> {
            (token == "tab").then(|| Principal::Tablet("t1".into()))
        }
    }

    #[test]
    fn an_empty_admin_token_authorizes_nothing() {
        let auth = Authorizer::admin_only("");
        assert_eq!(auth.authorize(""), None);
        assert_eq!(auth.authorize("x"), None);
    }

    #[test]
    fn the_admin_token_authorizes_and_a_near_miss_does_not() {
        let auth = Authorizer::admin_only("s3cret");
        assert_eq!(auth.authorize("s3cret"), Some(Principal::Admin));
        assert_eq!(auth.authorize("s3cre"), None);
        assert_eq!(auth.authorize("s3cret "), None);
    }

    #[test]
    fn an_added_check_authorizes_its_own_tokens() {
        let auth = Authorizer::admin_only("").with(Arc::new(Tablets));
        assert_eq!(auth.authorize("tab"), Some(Principal::Tablet("t1".into())));
        assert_eq!(auth.authorize("other"), None);
    }

    #[test]
    fn a_query_token_counts_on_the_alert_stream_only() {
        let headers = HeaderMap::new();
        for path in [
            "/api/presence",
            "/api/alerts",
            "/api/admin/tablets",
            "/api/me",
        ] {
            let uri: axum::http::Uri = format!("{path}?token=q").parse().unwrap();
            assert_eq!(presented_token(&headers, &uri), None, "{path}");
        }
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_before_the_query() {
        let uri: axum::http::Uri = "/api/alerts/stream?token=q".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers, &uri).as_deref(), Some("q"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer h"));
        assert_eq!(presented_token(&headers, &uri).as_deref(), Some("h"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic h"));
        assert_eq!(presented_token(&headers, &uri), None);
    }

    #[test]
    fn the_tablet_cookie_is_found_among_others_and_beats_the_query() {
        let uri: axum::http::Uri = "/api/alerts/stream?token=q".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; instore_tablet=tok; b=2"),
        );
        assert_eq!(presented_token(&headers, &uri).as_deref(), Some("tok"));
        headers.insert(header::COOKIE, HeaderValue::from_static("instore_tablet="));
        assert_eq!(presented_token(&headers, &uri).as_deref(), Some("q"));
    }
}
