//! The downlink: members notice → snapshot over HTTP → member cache → engine.
//!
//! Only the newest notice matters (they arrive through a watch, which coalesces them). A snapshot
//! is checked (store, version, schema) before anything changes; the cache replaces its whole
//! member set in one transaction and only then does the engine get the new index, so the gateway
//! uses either the old set or the new one, never a mixture. Member data is never logged.

use std::{sync::Arc, time::Duration};

use instore_protocol::{MemberSnapshot, SCHEMA_VERSION};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backoff, SyncError};
use crate::{
    cache::{CacheError, MemberCache, MemberIndex},
    engine::Control,
    metrics::Metrics,
};

/// A snapshot larger than this is refused rather than exhausting a small gateway's memory.
const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole request, body included: large stores on slow 4G links need minutes, not seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
enum SnapshotError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("snapshot exceeds {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge,
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("snapshot schema version {0} is newer than this build's")]
    Version(u32),
    #[error("snapshot is for store {0:?}")]
    WrongStore(String),
    #[error("snapshot version {got} is older than the announced {wanted}")]
    Stale { got: u64, wanted: u64 },
    #[error("member cache: {0}")]
    Cache(#[from] CacheError),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the engine has stopped")]
    EngineGone,
    #[error("cancelled")]
    Cancelled,
}

pub(super) fn http_client() -> Result<reqwest::Client, SyncError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

pub(super) fn snapshot_url(hq_url: &str, store_id: &str) -> Result<reqwest::Url, SyncError> {
    let bad = |reason: String| SyncError::HqUrl {
        url: hq_url.to_string(),
        reason,
    };
    let base = reqwest::Url::parse(hq_url).map_err(|e| bad(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("scheme must be http:// or https://".into()));
    }
    // store_id is a valid id ([A-Za-z0-9_-]), so it needs no escaping in a path.
    let path = format!(
        "{}/api/stores/{store_id}/members/snapshot",
        base.path().trim_end_matches('/')
    );
    let mut url = base;
    url.set_path(&path);
    Ok(url)
}

pub(super) struct Downlink {
    pub http: reqwest::Client,
    pub url: reqwest::Url,
    pub token: String,
    pub gateway_id: String,
    pub store_id: String,
    pub cache: MemberCache,
    pub engine: mpsc::Sender<Control>,
    pub metrics: Metrics,
    pub backoff: Backoff,
}

impl Downlink {
    pub(super) async fn run(
        mut self,
        mut notices: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) {
        loop {
            let wanted = *notices.borrow_and_update();
            if wanted > 0 {
                match self.catch_up(wanted, &cancel).await {
                    Ok(None) => {}
                    Ok(Some(version)) => {
                        self.backoff.reset();
                        self.metrics.member_snapshots_applied.inc();
                        info!(version, "sync: member snapshot applied");
                        continue;
                    }
                    Err(SnapshotError::Cancelled) => break,
                    Err(SnapshotError::EngineGone) => {
                        debug!("sync: engine gone; downlink stopping");
                        break;
                    }
                    Err(e) => {
                        self.metrics.member_snapshot_failures.inc();
                        let delay = self.backoff.next_delay();
                        warn!(
                            error = %e,
                            wanted,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            "sync: member snapshot failed"
                        );
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = notices.changed() => if changed.is_err() { break },
            }
        }
        debug!("sync: downlink stopped");
    }

    /// Takes and applies a snapshot if the cache is older than `wanted`; returns the version
    /// applied, or `None` when the cache was already current.
    async fn catch_up(
        &self,
        wanted: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, SnapshotError> {
        let cache = self.cache.clone();
        let have = tokio::task::spawn_blocking(move || cache.version()).await??;
        if have >= wanted {
            return Ok(None);
        }
        debug!(have, wanted, "sync: fetching a member snapshot");
        let snapshot = tokio::select! {
            () = cancel.cancelled() => return Err(SnapshotError::Cancelled),
            s = self.fetch() => s?,
        };
        if snapshot.v > SCHEMA_VERSION {
            return Err(SnapshotError::Version(snapshot.v));
        }
        if snapshot.store_id != self.store_id {
            return Err(SnapshotError::WrongStore(snapshot.store_id));
        }
        if snapshot.version < wanted {
            return Err(SnapshotError::Stale {
                got: snapshot.version,
                wanted,
            });
        }
        let version = snapshot.version;
        let cache = self.cache.clone();
        let index = tokio::task::spawn_blocking(move || {
            // One transaction: the cache holds the old set or the new one, never half.
            cache.replace_all(version, &snapshot.members)?;
            Ok::<_, CacheError>(MemberIndex::build(version, &snapshot.members))
        })
        .await??;
        tokio::select! {
            () = cancel.cancelled() => Err(SnapshotError::Cancelled),
            sent = self.engine.send(Control::Members(Arc::new(index))) => {
                sent.map_err(|_| SnapshotError::EngineGone)?;
                Ok(Some(version))
            }
        }
    }

    async fn fetch(&self) -> Result<MemberSnapshot, SnapshotError> {
        let mut response = self
            .http
            .get(self.url.clone())
            .bearer_auth(&self.token)
            .header("X-Instore-Gateway", &self.gateway_id)
            .send()
            .await?
            .error_for_status()?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_SNAPSHOT_BYTES as u64)
        {
            return Err(SnapshotError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_SNAPSHOT_BYTES {
                return Err(SnapshotError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_snapshot_url_keeps_a_base_path_and_ignores_a_trailing_slash() {
        let u = snapshot_url("http://hq:8090", "s-1").unwrap();
        assert_eq!(u.as_str(), "http://hq:8090/api/stores/s-1/members/snapshot");
        let u = snapshot_url("https://hq.example/instore/", "s-1").unwrap();
        assert_eq!(
            u.as_str(),
            "https://hq.example/instore/api/stores/s-1/members/snapshot"
        );
        assert!(snapshot_url("ftp://hq", "s").is_err());
    }
}
