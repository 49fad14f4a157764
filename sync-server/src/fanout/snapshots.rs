//! Channel snapshots: one file per channel and version, zstd-compressed NDJSON
//! ([`SnapshotHeader`] then one [`SnapshotLine`] per member), built once and served to every
//! store that needs it, resumable with HTTP ranges because the file never changes.
//!
//! In: a channel whose gateway is too far behind. Out: a [`SnapshotMeta`] naming a complete
//! file in `data_dir/snapshots/`, built if no usable one exists. A build streams members from its
//! own database connection (a consistent read; never the whole set in memory), compresses as it
//! goes and hashes the compressed bytes; the file appears under its final name only when
//! complete (rename), with its metadata beside it. One build per channel at a time: a second
//! request waits for the first build rather than starting another, so a gateway retrying does
//! not make head office build the same snapshot again.
//!
//! A snapshot is usable while the changes after it are still kept (its version ≥ the channel's
//! floor) and it is not more than `snapshot_after_changes` behind the head. Older files of a
//! channel are deleted an hour after a newer one exists (a download in flight may still need
//! one).

use std::{
    collections::HashMap,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use instore_protocol::{
    MemberRecord, SCHEMA_VERSION,
    changes::{SnapshotHeader, SnapshotLine},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gateway_form;
use crate::{
    params,
    store::{Location, StoreError, channels, db::Sql},
};

/// How long a superseded snapshot file stays for downloads in flight.
const KEEP_SUPERSEDED: Duration = Duration::from_secs(3600);
const ZSTD_LEVEL: i32 = 3;

const COUNT_CHANNEL_MEMBERS: Sql = Sql::same(
    "SELECT COUNT(*) FROM member_channels mc JOIN members m ON m.member_id = mc.member_id
    WHERE mc.channel = ?1 AND m.gateway_json IS NOT NULL",
);
const SELECT_CHANNEL_MEMBERS: Sql = Sql::same(
    "SELECT m.member_id, m.rev, m.gateway_json, m.record_json, m.has_keys
    FROM member_channels mc JOIN members m ON m.member_id = mc.member_id
    WHERE mc.channel = ?1 AND m.gateway_json IS NOT NULL ORDER BY mc.member_id",
);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot build task failed: {0}")]
    Join(String),
}

/// A complete snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub channel: String,
    pub version: u64,
    pub sha256: String,
    pub bytes: u64,
    pub members: u64,
}

/// The snapshot files of this head-office process.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    location: Location,
    /// One lock per channel: builds of a channel never run twice at once.
    building: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn file_stem(channel: &str, version: u64) -> String {
    // Channel names are `chain`, `group:<id>`, `store:<id>` with ids of [A-Za-z0-9_-].
    format!("{}-{version}", channel.replace(':', "_"))
}

impl Snapshots {
    pub fn new(data_dir: &Path, location: Location) -> Self {
        Self {
            dir: data_dir.join("snapshots"),
            location,
            building: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The file and metadata of `channel` at `version`, if it was built.
    pub fn find(&self, channel: &str, version: u64) -> Option<(PathBuf, SnapshotMeta)> {
        let stem = file_stem(channel, version);
        let meta = std::fs::read(self.dir.join(format!("{stem}.json"))).ok()?;
        let meta: SnapshotMeta = serde_json::from_slice(&meta).ok()?;
        let file = self.dir.join(format!("{stem}.ndjson.zst"));
        (meta.channel == channel && file.exists()).then_some((file, meta))
    }

    /// The newest complete snapshot of `channel`.
    fn newest(&self, channel: &str) -> Option<SnapshotMeta> {
        let prefix = format!("{}-", channel.replace(':', "_"));
        let entries = std::fs::read_dir(&self.dir).ok()?;
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let version: u64 = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                self.find(channel, version).map(|(_, m)| m)
            })
            .max_by_key(|m| m.version)
    }

    /// A usable snapshot of `channel` (see the module docs), built if there is none.
    pub async fn ensure(
        &self,
        channel: &str,
        head: u64,
        floor: u64,
        max_behind: u64,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let usable =
            |m: &SnapshotMeta| m.version >= floor && head.saturating_sub(m.version) <= max_behind;
        if let Some(m) = self.newest(channel).filter(usable) {
            return Ok(m);
        }
        let lock = {
            let mut map = self
                .building
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(channel.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Built by the request we waited for?
        if let Some(m) = self.newest(channel).filter(usable) {
            return Ok(m);
        }
        let dir = self.dir.clone();
        let location = self.location.clone();
        let name = channel.to_string();
        let meta =
            tokio::task::spawn_blocking(move || build(&dir, &location, &name, crate::now_ms()))
                .await
                .map_err(|e| SnapshotError::Join(e.to_string()))??;
        self.prune(channel, meta.version);
        Ok(meta)
    }

    /// Deletes files of `channel` older than `newest` that were superseded long enough ago.
    fn prune(&self, channel: &str, newest: u64) {
        let prefix = format!("{}-", channel.replace(':', "_"));
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let version = rest.split('.').next().and_then(|v| v.parse::<u64>().ok());
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > KEEP_SUPERSEDED);
            let partial = name.contains(".tmp");
            if version.is_some_and(|v| v < newest) && (old || partial) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A writer that hashes what passes through and counts it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Builds `channel`'s snapshot at its current head on a connection of its own.
pub fn build(
    dir: &Path,
    location: &Location,
    channel: &str,
    now_ms: i64,
) -> Result<SnapshotMeta, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut db = location.connect()?;
    let mut tx = db.read_transaction()?;
    if tx.backend() == crate::store::Backend::Postgres {
        // One view of the head and the members, whatever commits meanwhile.
        tx.batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
    }
    let (head, _) = channels::head_and_floor(&mut tx, channel)?;
    let members = tx
        .query_one(&COUNT_CHANNEL_MEMBERS, params![channel])?
        .u64(0)?;
    let stem = file_stem(channel, head);
    let tmp = dir.join(format!("{stem}.ndjson.zst.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let hashing = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut z = zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(io(&tmp))?;
    let header = SnapshotHeader {
        v: SCHEMA_VERSION,
        channel: channel.to_string(),
        version: head,
        members,
        created_ms: now_ms,
    };
    let mut line = serde_json::to_vec(&header)
        .map_err(|e| StoreError::Corrupt(format!("snapshot header: {e}")))?;
    line.push(b'\n');
    z.write_all(&line).map_err(io(&tmp))?;
    let mut written = 0u64;
    let mut write_err = None;
    tx.for_each(&SELECT_CHANNEL_MEMBERS, params![channel], |r| {
        let member_id = r.string(0)?;
        let member: MemberRecord = serde_json::from_str(r.str(2)?)
            .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
        let (keys, keys_expire_ms) = if r.bool(4)? {
            let record: MemberRecord = serde_json::from_str(r.str(3)?)
                .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
            gateway_form::short_lived_keys(&record, now_ms)
        } else {
            (Vec::new(), None)
        };
        let entry = SnapshotLine {
            rev: r.u64(1)?,
            member,
            keys,
            keys_expire_ms,
        };
        let mut line = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::Corrupt(format!("member {member_id}: {e}")))?;
        line.push(b'\n');
        if let Err(e) = z.write_all(&line) {
            write_err = Some(e);
            return Err(StoreError::Corrupt("snapshot write failed".into()));
        }
        written += 1;
        Ok(())
    })
    .map_err(|e| match write_err.take() {
        Some(source) => SnapshotError::Io {
            path: tmp.clone(),
            source,
        },
        None => e.into(),
    })?;
    tx.commit()?;
    let mut hashing = z.finish().map_err(io(&tmp))?;
    hashing.flush().map_err(io(&tmp))?;
    let Hashing { inner, hash, bytes } = hashing;
    let file = inner.into_inner().map_err(|e| SnapshotError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&tmp))?;
    let meta = SnapshotMeta {
        channel: channel.to_string(),
        version: head,
        sha256: hex::encode(hash.finalize()),
        bytes,
        members: written,
    };
    let final_path = dir.join(format!("{stem}.ndjson.zst"));
    std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    // The metadata last: a file without it is never served.
    let meta_path = dir.join(format!("{stem}.json"));
    let meta_tmp = dir.join(format!("{stem}.json.tmp-{}", std::process::id()));
    let json = serde_json::to_vec(&meta)
        .map_err(|e| StoreError::Corrupt(format!("snapshot meta: {e}")))?;
    std::fs::write(&meta_tmp, json).map_err(io(&meta_tmp))?;
    std::fs::rename(&meta_tmp, &meta_path).map_err(io(&meta_path))?;
    tracing::info!(
        channel,
        version = head,
        members = written,
        bytes,
        "channel snapshot built"
    );
    Ok(meta)
}
