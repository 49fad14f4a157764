//! The downlink: per-channel member change streams from head office → `members.db` → the
//! engine's index, patched in place.
//!
//! When: on start, on every members notice whose heads are ahead of a channel held, and every
//! `changes_poll_s` (a lost notice delays a change, never loses it). What:
//! `GET {hq_url}/api/stores/{store}/changes?since=CURSOR` with the versions held; each response is
//! applied in one transaction ([`MemberCache::apply_response`]), then the engine patches its
//! index ([`Control::Patch`]) and answers, and only then is the next response asked for (while
//! any channel's `to` is below its `head`). The engine's reader truncates the write-ahead log
//! after a patch that removed members, so their old records are in no file. A channel entry that carries a snapshot is first
//! downloaded and applied (`snapshot.rs`), after which the engine reloads its whole index.
//! A channel entry whose `from` is not the version held (a gap, a replay) is ignored and asked
//! again. A head office that predates change streams answers 404: the gateway then takes its
//! whole-store snapshot into the legacy pseudo-channel, as before. Member data is never logged.

use std::{sync::Arc, time::Duration};

use instore_protocol::auth::MessageKey;
use instore_protocol::{
    MemberSnapshot, SCHEMA_VERSION,
    changes::{ChangesResponse, Cursor, Heads},
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backoff, SyncError, snapshot};
use crate::{
    cache::{ApplyStats, CacheError, LEGACY_CHANNEL, MemberCache, apply::is_pseudo},
    engine::Control,
    metrics::Metrics,
};

/// A legacy whole-store snapshot larger than this is refused (head offices that serve channel
/// snapshots stream them instead).
const MAX_LEGACY_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// A change response is at most [`instore_protocol::changes::MAX_CHANGES_PER_RESPONSE`] changes;
/// this bounds what a misbehaving head office can make the gateway buffer.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One change response, body included.
const CHANGES_TIMEOUT: Duration = Duration::from_secs(120);
/// Responses taken in one catch-up before yielding (5,000 changes each).
const MAX_RESPONSES_PER_CATCH_UP: usize = 10_000;
/// Gapped or malformed entries asked again this many times in a row before backing off.
const GAP_RETRIES: u32 = 3;

/// The newest members notice: the store's total version and each channel's head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Notice {
    pub version: u64,
    pub heads: Heads,
    /// Head office's campaign counter (0 from head offices without campaigns).
    pub campaigns: u64,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum DownlinkError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("head office answered {0}")]
    Status(reqwest::StatusCode),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed response: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("undecodable compressed response: {0}")]
    Decode(std::io::Error),
    #[error("response schema version {0} is newer than this build's")]
    Version(u32),
    #[error("response is for store {0:?}")]
    WrongStore(String),
    #[error("member cache: {0}")]
    Cache(#[from] CacheError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("channel entries keep arriving out of step: {0:?}")]
    Gaps(Vec<String>),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the engine has stopped")]
    EngineGone,
    #[error("cancelled")]
    Cancelled,
}

impl DownlinkError {
    /// A metric label for the cause.
    fn label(&self) -> &'static str {
        match self {
            DownlinkError::Http(e) if e.is_timeout() => "timeout",
            DownlinkError::Http(_) => "http",
            DownlinkError::Status(_) => "status",
            DownlinkError::TooLarge(_) => "too_large",
            DownlinkError::Malformed(_)
            | DownlinkError::Decode(_)
            | DownlinkError::Version(_)
            | DownlinkError::WrongStore(_) => "decode",
            DownlinkError::Cache(_) | DownlinkError::Join(_) => "cache",
            DownlinkError::Snapshot(_) => "snapshot",
            DownlinkError::Gaps(_) => "gaps",
            DownlinkError::EngineGone | DownlinkError::Cancelled => "stopped",
        }
    }
}

pub(super) fn http_client() -> Result<reqwest::Client, SyncError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?)
}

/// `hq_url` joined with `path` (which starts with `/`), keeping a base path.
pub(super) fn hq_join(hq_url: &str, path: &str) -> Result<reqwest::Url, SyncError> {
    let bad = |reason: String| SyncError::HqUrl {
        url: hq_url.to_string(),
        reason,
    };
    let base = reqwest::Url::parse(hq_url).map_err(|e| bad(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("scheme must be http:// or https://".into()));
    }
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    let mut url = base;
    url.set_path(&joined);
    Ok(url)
}

/// Reads a body chunk by chunk, refusing more than `max` bytes.
pub(super) async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, DownlinkError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(DownlinkError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(DownlinkError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A zstd body decompressed, refusing more than `max` bytes of output (a small compressed body
/// can expand to gigabytes).
fn decompress_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, DownlinkError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(body).map_err(DownlinkError::Decode)?;
    let mut out = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(DownlinkError::Decode)?;
    if out.len() > max {
        return Err(DownlinkError::TooLarge(max));
    }
    Ok(out)
}

pub(super) struct Downlink {
    pub http: reqwest::Client,
    pub hq_url: String,
    pub token: String,
    pub gateway_id: String,
    pub store_id: String,
    pub cache: MemberCache,
    pub snapshots: snapshot::Snapshots,
    pub engine: mpsc::Sender<Control>,
    pub metrics: Metrics,
    pub backoff: Backoff,
    pub poll: Duration,
    /// Where the store's notice key goes once head office hands it over (with every change
    /// response), for the connection task to check notices with.
    pub notice_key: watch::Sender<Option<MessageKey>>,
    /// `data_dir/campaigns.json`, and the tag of the set held (sent with every change request).
    pub campaigns_path: std::path::PathBuf,
    pub campaigns_tag: String,
    /// The notices' campaign counter at the last catch-up.
    pub campaigns_seen: u64,
}

impl Downlink {
    pub(super) async fn run(
        mut self,
        mut notices: watch::Receiver<Notice>,
        cancel: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(self.poll.max(Duration::from_secs(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: catch up on start.
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = poll.tick() => {}
                changed = notices.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let notice = notices.borrow_and_update().clone();
                    // Campaigns moved since the last catch-up: ask, even with no member change.
                    if notice.campaigns == self.campaigns_seen && !self.behind(&notice).await {
                        continue;
                    }
                }
            }
            loop {
                let wanted = notices.borrow().clone();
                match self.catch_up(&wanted, &cancel).await {
                    Ok(()) => {
                        self.backoff.reset();
                        self.campaigns_seen = wanted.campaigns;
                        break;
                    }
                    Err(DownlinkError::Cancelled) => return,
                    Err(DownlinkError::EngineGone) => {
                        debug!("sync: engine gone; downlink stopping");
                        return;
                    }
                    Err(e) => {
                        self.metrics
                            .member_change_failures
                            .get_or_create(&vec![("reason", e.label())])
                            .inc();
                        let delay = self.backoff.next_delay();
                        warn!(
                            error = %e,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            "sync: member changes failed"
                        );
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        debug!("sync: downlink stopped");
    }

    async fn channels(&self) -> Result<std::collections::BTreeMap<String, u64>, DownlinkError> {
        let cache = self.cache.clone();
        Ok(tokio::task::spawn_blocking(move || cache.channels()).await??)
    }

    /// Whether a notice says head office has more than the gateway holds.
    async fn behind(&self, notice: &Notice) -> bool {
        let Ok(held) = self.channels().await else {
            return true;
        };
        if notice.heads.is_empty() {
            // A head office that predates channels: only its total version.
            let have: u64 = held.values().sum();
            return notice.version > have;
        }
        notice
            .heads
            .iter()
            .any(|(c, head)| held.get(c).copied().unwrap_or(0) < *head)
            || held
                .keys()
                .any(|c| !is_pseudo(c) && !notice.heads.contains_key(c))
    }

    /// Asks for changes until every channel is at its head.
    async fn catch_up(
        &mut self,
        wanted: &Notice,
        cancel: &CancellationToken,
    ) -> Result<(), DownlinkError> {
        let mut gap_rounds = 0;
        for _ in 0..MAX_RESPONSES_PER_CATCH_UP {
            let held = self.channels().await?;
            let cursor = Cursor(held.into_iter().filter(|(c, _)| !is_pseudo(c)).collect());
            let response = tokio::select! {
                () = cancel.cancelled() => return Err(DownlinkError::Cancelled),
                r = self.fetch_changes(&cursor) => r?,
            };
            let Some(mut response) = response else {
                return self.legacy(wanted, cancel).await;
            };
            if let Some(set) = response.campaigns.take() {
                self.take_campaigns(set).await?;
            }
            let snapshots = snapshot::apply_all(self, &response, cancel).await?;
            let cache = self.cache.clone();
            let shared = Arc::new(response);
            let r = shared.clone();
            let (patch, stats) =
                tokio::task::spawn_blocking(move || cache.apply_response(&r)).await??;
            self.count(&stats);
            if snapshots > 0 {
                // The engine's new reader truncates the write-ahead log before it starts.
                self.reload().await?;
            } else if !patch.is_empty() {
                let (applied, done) = oneshot::channel();
                self.engine
                    .send(Control::Patch {
                        patch: Box::new(patch),
                        applied,
                    })
                    .await
                    .map_err(|_| DownlinkError::EngineGone)?;
                done.await.map_err(|_| DownlinkError::EngineGone)?;
            }
            let mut stuck = stats.gaps.clone();
            stuck.extend(stats.malformed.iter().cloned());
            if !stuck.is_empty() {
                gap_rounds += 1;
                if gap_rounds >= GAP_RETRIES {
                    return Err(DownlinkError::Gaps(stuck));
                }
            } else {
                gap_rounds = 0;
            }
            let more = snapshots > 0
                || shared
                    .channels
                    .iter()
                    .any(|c| c.snapshot.is_none() && c.to < c.head);
            if !more && stuck.is_empty() {
                let held = self.channels().await?;
                debug!(
                    channels = held.len(),
                    "sync: member channels at their heads"
                );
                return Ok(());
            }
        }
        Ok(())
    }

    /// A new campaign set: kept on disk first (a restart offline runs it), then handed to the
    /// engine, which rebuilds its rules from the store's file and the set.
    async fn take_campaigns(
        &mut self,
        set: instore_protocol::campaign::CampaignSet,
    ) -> Result<(), DownlinkError> {
        let path = self.campaigns_path.clone();
        let to_save = set.clone();
        let saved = tokio::task::spawn_blocking(move || super::campaigns::save(&path, &to_save))
            .await
            .map_err(|e| {
                DownlinkError::Cache(CacheError::Read {
                    what: "campaigns".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        if let Err(source) = saved {
            // Not fatal: the engine still takes the set; a restart asks head office again.
            warn!(error = %source, "sync: cannot keep the campaigns on disk");
        }
        info!(
            campaigns = set.campaigns.len(),
            tag = %set.tag,
            "sync: campaigns from head office"
        );
        self.campaigns_tag = set.tag.clone();
        self.metrics.campaign_sets_received.inc();
        self.engine
            .send(Control::Campaigns(Box::new(set)))
            .await
            .map_err(|_| DownlinkError::EngineGone)
    }

    fn count(&self, stats: &ApplyStats) {
        self.metrics.member_change_responses.inc();
        self.metrics.member_changes_applied.inc_by(stats.applied);
        for (kind, list) in [("gap", &stats.gaps), ("malformed", &stats.malformed)] {
            if !list.is_empty() {
                self.metrics
                    .member_change_gaps
                    .get_or_create(&vec![("kind", kind)])
                    .inc_by(list.len() as u64);
                warn!(kind, channels = ?list, "sync: channel entries ignored; asking again");
            }
        }
        if stats.invalid > 0 || stats.no_consent > 0 {
            warn!(
                invalid = stats.invalid,
                no_consent = stats.no_consent,
                "sync: member records refused"
            );
        }
        if !stats.dropped.is_empty() {
            info!(channels = ?stats.dropped, "sync: channels no longer subscribed, dropped");
        }
        debug!(
            applied = stats.applied,
            stale = stats.stale,
            removed = stats.removed,
            "sync: change response applied"
        );
    }

    /// Reloads the engine's whole index from the cache (after a snapshot).
    pub(super) async fn reload(&self) -> Result<(), DownlinkError> {
        let cache = self.cache.clone();
        let members = tokio::task::spawn_blocking(move || cache.members()).await??;
        self.engine
            .send(Control::Members(Box::new(members)))
            .await
            .map_err(|_| DownlinkError::EngineGone)
    }

    pub(super) fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .header("X-Instore-Gateway", &self.gateway_id)
    }

    /// `GET …/changes?since=CURSOR`; `None`: head office has no change streams (404).
    async fn fetch_changes(
        &self,
        cursor: &Cursor,
    ) -> Result<Option<ChangesResponse>, DownlinkError> {
        let mut url = hq_join(
            &self.hq_url,
            &format!("/api/stores/{}/changes", self.store_id),
        )
        .map_err(|e| {
            DownlinkError::Cache(CacheError::Read {
                what: "hq_url".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        url.query_pairs_mut()
            .append_pair("since", &cursor.to_string())
            .append_pair("campaigns", &self.campaigns_tag);
        // Compressed, a month of changes is about a tenth of the bytes over a store's uplink.
        let response = self
            .get(url)
            .header(reqwest::header::ACCEPT_ENCODING, "zstd")
            .timeout(CHANGES_TIMEOUT)
            .send()
            .await?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(DownlinkError::Status(s)),
        }
        if let Some(key) = response
            .headers()
            .get(instore_protocol::auth::NOTICE_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(MessageKey::from_hex)
        {
            self.notice_key.send_if_modified(|held| {
                let new = held.as_ref() != Some(&key);
                if new {
                    *held = Some(key);
                }
                new
            });
        }
        let zstd = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
        let body = read_bounded(response, MAX_RESPONSE_BYTES).await?;
        self.metrics.change_bytes_received.inc_by(body.len() as u64);
        let body = if zstd {
            decompress_bounded(&body, MAX_RESPONSE_BYTES)?
        } else {
            body
        };
        let r: ChangesResponse = serde_json::from_slice(&body)?;
        if r.v > SCHEMA_VERSION {
            return Err(DownlinkError::Version(r.v));
        }
        if r.store_id != self.store_id {
            return Err(DownlinkError::WrongStore(r.store_id));
        }
        Ok(Some(r))
    }

    /// A head office without change streams: its whole-store snapshot, when the notice (or a
    /// first start) says it is newer than the one held.
    async fn legacy(
        &self,
        wanted: &Notice,
        cancel: &CancellationToken,
    ) -> Result<(), DownlinkError> {
        let have = self.channels().await?.get(LEGACY_CHANNEL).copied();
        if have.is_some_and(|h| h >= wanted.version) {
            return Ok(());
        }
        let url = hq_join(
            &self.hq_url,
            &format!("/api/stores/{}/members/snapshot", self.store_id),
        )
        .map_err(|e| {
            DownlinkError::Cache(CacheError::Read {
                what: "hq_url".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        let fetch = async {
            let response = self
                .get(url)
                .timeout(Duration::from_secs(300))
                .send()
                .await?;
            if !response.status().is_success() {
                return Err(DownlinkError::Status(response.status()));
            }
            read_bounded(response, MAX_LEGACY_SNAPSHOT_BYTES).await
        };
        let body = tokio::select! {
            () = cancel.cancelled() => return Err(DownlinkError::Cancelled),
            b = fetch => b?,
        };
        let snapshot: MemberSnapshot = serde_json::from_slice(&body)?;
        drop(body);
        if snapshot.v > SCHEMA_VERSION {
            return Err(DownlinkError::Version(snapshot.v));
        }
        if snapshot.store_id != self.store_id {
            return Err(DownlinkError::WrongStore(snapshot.store_id));
        }
        let (version, n) = (snapshot.version, snapshot.members.len());
        let cache = self.cache.clone();
        let stats =
            tokio::task::spawn_blocking(move || cache.apply_legacy(version, &snapshot.members))
                .await??;
        self.metrics.member_snapshots_applied.inc();
        self.metrics.member_snapshot_members.inc_by(n as u64);
        info!(
            version,
            members = n,
            removed = stats.removed,
            "sync: legacy member snapshot applied"
        );
        // The engine's new reader truncates the write-ahead log before it starts reading.
        self.reload().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_compressed_body_expands_only_up_to_the_bound() {
        let json = br#"{"v":1}"#.repeat(1000);
        let z = zstd::bulk::compress(&json, 3).unwrap();
        assert_eq!(decompress_bounded(&z, json.len()).unwrap(), json);
        // A small body that would expand past the bound is refused, not buffered.
        let bomb = zstd::bulk::compress(&vec![0u8; 10_000_000], 3).unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            decompress_bounded(&bomb, 1_000_000),
            Err(DownlinkError::TooLarge(1_000_000))
        ));
        assert!(matches!(
            decompress_bounded(b"not zstd", 1_000),
            Err(DownlinkError::Decode(_))
        ));
    }

    #[test]
    fn head_office_paths_keep_a_base_path_and_ignore_a_trailing_slash() {
        let u = hq_join("http://hq:8090", "/api/stores/s-1/changes").unwrap();
        assert_eq!(u.as_str(), "http://hq:8090/api/stores/s-1/changes");
        let u = hq_join("https://hq.example/instore/", "/api/stores/s-1/changes").unwrap();
        assert_eq!(
            u.as_str(),
            "https://hq.example/instore/api/stores/s-1/changes"
        );
        assert!(hq_join("ftp://hq", "/x").is_err());
    }
}
