//! Scanned member codes of members this store does not hold: `POST
//! {hq_url}/api/stores/{store}/members/lookup` with the code, answered within a bounded time.
//!
//! In: [`QrLookup`]s from the engine (bounded queue; full → the engine refuses the scan as
//! `busy`). Out: [`Control::QrLookedUp`] with head office's member and keys (200) or a refusal
//! reason: `not_found` (404), `timeout`, `offline` (no connection), `error` (anything else). The
//! engine checks the code with the returned keys itself. Codes are never logged.

use std::time::Duration;

use instore_protocol::changes::{LookupRequest, LookupResponse};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::downlink::{hq_join, read_bounded};
use crate::engine::{Control, LookupResult, QrLookup};

/// Queued lookups at most (a queue of scans waiting is a queue of customers waiting).
pub const LOOKUP_QUEUE: usize = 16;
/// A lookup answer is one member.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

pub(super) struct Lookups {
    pub http: reqwest::Client,
    pub url: reqwest::Url,
    pub token: String,
    pub gateway_id: String,
    pub timeout: Duration,
    pub engine: mpsc::Sender<Control>,
}

impl Lookups {
    pub(super) fn url(hq_url: &str, store_id: &str) -> Result<reqwest::Url, super::SyncError> {
        hq_join(hq_url, &format!("/api/stores/{store_id}/members/lookup"))
    }

    pub(super) async fn run(self, mut rx: mpsc::Receiver<QrLookup>, cancel: CancellationToken) {
        loop {
            let lookup = tokio::select! {
                () = cancel.cancelled() => break,
                l = rx.recv() => match l { Some(l) => l, None => break },
            };
            let result = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.ask(&lookup.payload) => r,
            };
            debug!(result = ?std::mem::discriminant(&result), "sync: QR lookup answered");
            let msg = Control::QrLookedUp {
                lookup: Box::new(lookup),
                result,
            };
            if self.engine.send(msg).await.is_err() {
                break;
            }
        }
    }

    async fn ask(&self, code: &str) -> LookupResult {
        let request = self
            .http
            .post(self.url.clone())
            .bearer_auth(&self.token)
            .header("X-Instore-Gateway", &self.gateway_id)
            .timeout(self.timeout)
            .json(&LookupRequest {
                code: code.to_string(),
            });
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return LookupResult::Refused("timeout"),
            Err(e) if e.is_connect() => return LookupResult::Refused("offline"),
            Err(_) => return LookupResult::Refused("error"),
        };
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return LookupResult::Refused("not_found"),
            _ => return LookupResult::Refused("error"),
        }
        let body = match tokio::time::timeout(
            self.timeout,
            read_bounded(response, MAX_ANSWER_BYTES),
        )
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return LookupResult::Refused("error"),
            Err(_) => return LookupResult::Refused("timeout"),
        };
        match serde_json::from_slice::<LookupResponse>(&body) {
            Ok(found) => LookupResult::Found(Box::new(found)),
            Err(_) => LookupResult::Refused("error"),
        }
    }
}
