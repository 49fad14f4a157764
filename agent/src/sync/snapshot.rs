//! Channel snapshots: downloaded to a file under `data_dir/snapshots/`, streamed (never held in
//! memory), resumed after a cut or a restart with `Range: bytes=N-` and `If-Range: "<sha256>"`,
//! checked (size and SHA-256 of the file as served), then decompressed (zstd) and applied as a
//! stream in one transaction ([`MemberCache::apply_snapshot`]). The file is deleted once
//! applied; until then a SIGKILL leaves the old member set working and the next start resumes
//! the download (or, complete, re-checks and applies it).

use std::{
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use instore_protocol::changes::{ChangesResponse, SnapshotRef};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::downlink::{Downlink, DownlinkError, hq_join};
use crate::cache::SnapshotFormatError;

/// The largest zstd window accepted (2^24 = 16 MiB): a bound on the decoder's memory whatever
/// the file says. zstd levels 1-19 without `--long` stay within it.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Progress is logged at most this often (bytes downloaded).
const LOG_EVERY_BYTES: u64 = 16 * 1024 * 1024;
/// A whole snapshot download may take this long (slow 4G); resumed afterwards.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("download failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("head office answered {0}")]
    Status(reqwest::StatusCode),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot is {got} bytes, expected {want}")]
    Size { got: u64, want: u64 },
    #[error("snapshot SHA-256 does not match")]
    Sha256,
    #[error("snapshot reference is unusable: {0}")]
    Reference(String),
    #[error(transparent)]
    Format(#[from] SnapshotFormatError),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl SnapshotError {
    pub fn label(&self) -> &'static str {
        match self {
            SnapshotError::Http(_) | SnapshotError::Status(_) => "download",
            SnapshotError::Io(_) | SnapshotError::Join(_) => "file",
            SnapshotError::Size { .. } => "size",
            SnapshotError::Sha256 => "sha256",
            SnapshotError::Reference(_) => "reference",
            SnapshotError::Format(SnapshotFormatError::Cache(_)) => "apply",
            SnapshotError::Format(_) => "content",
        }
    }
}

/// Where snapshot files go.
#[derive(Debug, Clone)]
pub(crate) struct Snapshots {
    pub dir: PathBuf,
}

impl Snapshots {
    /// The file of one snapshot: named by channel, version and hash, so a resumed download never
    /// appends to another snapshot's bytes.
    fn file(&self, channel: &str, r: &SnapshotRef) -> PathBuf {
        let safe: String = channel
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!(
            "{safe}-{}-{}.zst",
            r.version,
            &r.sha256[..r.sha256.len().min(16)]
        ))
    }

    /// Deletes files of other snapshots of `channel` (superseded).
    fn remove_others(&self, channel_prefix: &str, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p != keep && name.starts_with(channel_prefix) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

fn valid_ref(r: &SnapshotRef) -> Result<(), SnapshotError> {
    if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SnapshotError::Reference(
            "sha256 is not 64 hex digits".into(),
        ));
    }
    if !r.path.starts_with('/') || r.path.contains("..") {
        return Err(SnapshotError::Reference(
            "path must be absolute below hq_url".into(),
        ));
    }
    Ok(())
}

/// Downloads and applies every snapshot a response offers for a channel the gateway is behind
/// on; returns how many were applied. Progress and failures are counted per reason.
pub(super) async fn apply_all(
    down: &Downlink,
    response: &ChangesResponse,
    cancel: &CancellationToken,
) -> Result<usize, DownlinkError> {
    let mut applied = 0;
    let held = {
        let cache = down.cache.clone();
        tokio::task::spawn_blocking(move || cache.channels()).await??
    };
    for entry in &response.channels {
        let Some(r) = &entry.snapshot else { continue };
        if held.get(&entry.channel).is_some_and(|v| *v >= r.version)
            || !instore_protocol::changes::valid_channel(&entry.channel)
        {
            continue;
        }
        let result = tokio::select! {
            () = cancel.cancelled() => return Err(DownlinkError::Cancelled),
            r = one(down, &entry.channel, r) => r,
        };
        match result {
            Ok(()) => applied += 1,
            Err(e) => {
                down.metrics
                    .member_snapshot_failures
                    .get_or_create(&vec![("reason", e.label())])
                    .inc();
                return Err(e.into());
            }
        }
    }
    Ok(applied)
}

async fn one(down: &Downlink, channel: &str, r: &SnapshotRef) -> Result<(), SnapshotError> {
    valid_ref(r)?;
    tokio::fs::create_dir_all(&down.snapshots.dir).await?;
    let path = down.snapshots.file(channel, r);
    let prefix = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .and_then(|n| n.split_once('-').map(|(c, _)| format!("{c}-")))
        .unwrap_or_default();
    down.snapshots.remove_others(&prefix, &path);
    download(down, r, &path).await?;
    if let Err(e) = verify(&path, r).await {
        // Whatever is on disk is not the snapshot: start over next time.
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    info!(
        channel,
        version = r.version,
        members = r.members,
        "sync: applying member snapshot"
    );
    let cache = down.cache.clone();
    let metrics = down.metrics.clone();
    let (channel_s, version, members) = (channel.to_string(), r.version, r.members);
    let file = path.clone();
    let stats = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file)?;
        let mut decoder = zstd::stream::read::Decoder::new(f)?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        let mut reader = BufReader::with_capacity(256 * 1024, decoder);
        let mut last = 0;
        let stats = cache.apply_snapshot(&channel_s, version, members, &mut reader, |n| {
            metrics.member_snapshot_members.inc_by(n - last);
            last = n;
            if n.is_multiple_of(100_000) {
                info!(channel = %channel_s, applied = n, of = members, "sync: snapshot apply progress");
            }
        })?;
        Ok::<_, SnapshotError>(stats)
    })
    .await??;
    let _ = tokio::fs::remove_file(&path).await;
    down.metrics.member_snapshots_applied.inc();
    info!(
        channel,
        version,
        removed = stats.removed,
        "sync: member snapshot applied"
    );
    Ok(())
}

/// Brings the file to the snapshot's full size, resuming what is there.
async fn download(down: &Downlink, r: &SnapshotRef, path: &Path) -> Result<(), SnapshotError> {
    let have = match tokio::fs::metadata(path).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if have == r.bytes {
        return Ok(());
    }
    let url =
        hq_join(&down.hq_url, &r.path).map_err(|e| SnapshotError::Reference(e.to_string()))?;
    let mut request = down.get(url).timeout(DOWNLOAD_TIMEOUT);
    let resume = have > 0 && have < r.bytes;
    if resume {
        request = request
            .header(reqwest::header::RANGE, format!("bytes={have}-"))
            .header(reqwest::header::IF_RANGE, format!("\"{}\"", r.sha256));
    }
    let mut response = request.send().await?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .await?;
    let mut at = match response.status() {
        reqwest::StatusCode::PARTIAL_CONTENT if resume => {
            info!(
                from = have,
                of = r.bytes,
                "sync: resuming a member snapshot download"
            );
            have
        }
        reqwest::StatusCode::OK => {
            // The whole file (no resume asked for, or the server's copy changed): start over.
            file.set_len(0).await?;
            0
        }
        s => return Err(SnapshotError::Status(s)),
    };
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(at)).await?;
    let mut logged = at;
    while let Some(chunk) = response.chunk().await? {
        if at + chunk.len() as u64 > r.bytes {
            return Err(SnapshotError::Size {
                got: at + chunk.len() as u64,
                want: r.bytes,
            });
        }
        file.write_all(&chunk).await?;
        at += chunk.len() as u64;
        down.metrics
            .member_snapshot_bytes
            .inc_by(chunk.len() as u64);
        if at - logged >= LOG_EVERY_BYTES {
            logged = at;
            info!(
                bytes = at,
                of = r.bytes,
                "sync: member snapshot download progress"
            );
        }
    }
    file.sync_all().await?;
    if at != r.bytes {
        warn!(
            bytes = at,
            of = r.bytes,
            "sync: member snapshot download cut short; will resume"
        );
        return Err(SnapshotError::Size {
            got: at,
            want: r.bytes,
        });
    }
    Ok(())
}

/// Size and SHA-256 of the file as served.
async fn verify(path: &Path, r: &SnapshotRef) -> Result<(), SnapshotError> {
    let path = path.to_path_buf();
    let (want_bytes, want_sha) = (r.bytes, r.sha256.to_ascii_lowercase());
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            n += k as u64;
            h.update(&buf[..k]);
        }
        if n != want_bytes {
            return Err(SnapshotError::Size {
                got: n,
                want: want_bytes,
            });
        }
        if hex::encode(h.finalize()) != want_sha {
            return Err(SnapshotError::Sha256);
        }
        Ok(())
    })
    .await?
}
