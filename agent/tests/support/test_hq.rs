//! A small head office serving the member downlink protocol (`instore_protocol::changes`) from
//! an in-memory channel log the test controls: `GET …/changes?since=`, channel snapshot files
//! (zstd NDJSON, with `Range` / `If-Range`), `POST …/members/lookup`. It can slow a snapshot down,
//! cut it after some bytes, and records the requests it saw. The real head office is the lead's;
//! this one is only as smart as the agent's tests need.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use instore_protocol::{
    MemberRecord,
    changes::{
        Change, ChangeOp, ChangesResponse, ChannelChanges, Cursor, LookupRequest, LookupResponse,
        RemoveReason, SnapshotHeader, SnapshotLine, SnapshotRef,
    },
};
use sha2::{Digest, Sha256};

pub const HQ_TOKEN: &str = "gateway-token-for-tests";

/// A snapshot file as served.
#[derive(Clone)]
pub struct SnapshotFile {
    pub r: SnapshotRef,
    pub bytes: Arc<Vec<u8>>,
}

#[derive(Default)]
pub struct HqState {
    pub store: String,
    /// Subscribed channels and their logs.
    pub logs: BTreeMap<String, Vec<Change>>,
    /// Members each channel holds now, at their revision.
    pub holds: BTreeMap<String, BTreeMap<String, (u64, MemberRecord)>>,
    pub revs: HashMap<String, u64>,
    /// Snapshot offered to a cursor below the version (history pruned).
    pub pruned: BTreeMap<String, SnapshotFile>,
    pub max_changes: usize,
    /// Snapshot bodies stop after this many bytes per request (a cut link).
    pub cut_after: Option<u64>,
    /// Pause per 64 KiB of snapshot body.
    pub throttle: Option<Duration>,
    /// (path, Range header) of every request.
    pub requests: Vec<(String, Option<String>)>,
    pub lookups: HashMap<String, LookupResponse>,
    pub lookup_delay: Option<Duration>,
    pub bad_auth: usize,
}

impl HqState {
    fn head(&self, c: &str) -> u64 {
        self.logs.get(c).and_then(|l| l.last()).map_or_else(
            || self.pruned.get(c).map_or(0, |s| s.r.version),
            |x| x.version,
        )
    }

    fn push(&mut self, c: &str, op: ChangeOp) {
        let version = self.head(c) + 1;
        self.logs
            .entry(c.to_string())
            .or_default()
            .push(Change { version, op });
    }

    /// `channel` holds `member` (a new revision).
    pub fn upsert(&mut self, channel: &str, member: MemberRecord) {
        let rev = {
            let r = self.revs.entry(member.member_id.clone()).or_insert(0);
            *r += 1;
            *r
        };
        self.holds
            .entry(channel.to_string())
            .or_default()
            .insert(member.member_id.clone(), (rev, member.clone()));
        self.push(channel, ChangeOp::Upsert { rev, member });
    }

    /// The member leaves every channel (consent withdrawn or erased) or one (`left_channel`).
    pub fn remove(&mut self, channel: Option<&str>, member_id: &str, reason: RemoveReason) {
        let rev = {
            let r = self.revs.entry(member_id.to_string()).or_insert(0);
            *r += 1;
            *r
        };
        let channels: Vec<String> = self
            .holds
            .iter_mut()
            .filter(|(c, _)| channel.is_none_or(|x| x == c.as_str()))
            .filter_map(|(c, m)| m.remove(member_id).map(|_| c.clone()))
            .collect();
        for c in channels {
            self.push(
                &c,
                ChangeOp::Remove {
                    member_id: member_id.to_string(),
                    rev,
                    reason,
                },
            );
        }
    }

    /// Prunes `channel`'s history: a gateway below its head now gets a snapshot.
    pub fn prune(&mut self, channel: &str) {
        let version = self.head(channel);
        let members = self.holds.get(channel).cloned().unwrap_or_default();
        let mut ndjson = serde_json::to_string(&SnapshotHeader {
            v: 1,
            channel: channel.to_string(),
            version,
            members: members.len() as u64,
            created_ms: 0,
        })
        .unwrap();
        ndjson.push('\n');
        for (rev, m) in members.values() {
            ndjson.push_str(
                &serde_json::to_string(&SnapshotLine {
                    rev: *rev,
                    member: m.clone(),
                    keys: vec![],
                    keys_expire_ms: None,
                })
                .unwrap(),
            );
            ndjson.push('\n');
        }
        let bytes = zstd::encode_all(ndjson.as_bytes(), 3).unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        let path = format!(
            "/api/stores/{}/channels/{channel}/snapshots/{version}",
            self.store
        );
        self.pruned.insert(
            channel.to_string(),
            SnapshotFile {
                r: SnapshotRef {
                    path,
                    version,
                    sha256: sha,
                    bytes: bytes.len() as u64,
                    members: members.len() as u64,
                },
                bytes: Arc::new(bytes),
            },
        );
        if let Some(log) = self.logs.get_mut(channel) {
            log.clear();
        }
    }

    /// Who the store holds now: every channel's members, at their revision.
    pub fn truth(&self) -> BTreeMap<String, u64> {
        self.holds
            .values()
            .flatten()
            .map(|(id, (rev, _))| (id.clone(), *rev))
            .collect()
    }

    fn answer(&self, cursor: &Cursor) -> ChangesResponse {
        let mut budget = self.max_changes.max(1);
        let channels = self
            .logs
            .keys()
            .chain(self.pruned.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|c| {
                let from = cursor.version(c);
                let head = self.head(c);
                if let Some(s) = self.pruned.get(c)
                    && from < s.r.version
                {
                    return ChannelChanges {
                        channel: c.clone(),
                        from,
                        to: from,
                        head,
                        snapshot: Some(s.r.clone()),
                        changes: vec![],
                    };
                }
                let changes: Vec<Change> = self
                    .logs
                    .get(c)
                    .into_iter()
                    .flatten()
                    .filter(|x| x.version > from)
                    .take(budget)
                    .cloned()
                    .collect();
                budget -= changes.len().min(budget);
                ChannelChanges {
                    channel: c.clone(),
                    from,
                    to: changes.last().map_or(from, |x| x.version),
                    head,
                    snapshot: None,
                    changes,
                }
            })
            .collect();
        ChangesResponse {
            v: 1,
            campaigns: None,
            store_id: self.store.clone(),
            channels,
        }
    }
}

pub type Hq = Arc<Mutex<HqState>>;

pub struct TestHq {
    pub addr: SocketAddr,
    pub state: Hq,
}

impl TestHq {
    pub async fn start(store: &str) -> TestHq {
        let state: Hq = Arc::new(Mutex::new(HqState {
            store: store.to_string(),
            max_changes: instore_protocol::changes::MAX_CHANGES_PER_RESPONSE,
            ..HqState::default()
        }));
        let app = Router::new()
            .route("/api/stores/{store}/changes", get(changes))
            .route(
                "/api/stores/{store}/channels/{channel}/snapshots/{version}",
                get(snapshot),
            )
            .route("/api/stores/{store}/members/lookup", post(lookup))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestHq { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut HqState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

fn authorised(state: &mut HqState, store: &str, headers: &HeaderMap) -> bool {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {HQ_TOKEN}"))
        && headers.contains_key("x-instore-gateway")
        && store == state.store;
    if !ok {
        state.bad_auth += 1;
    }
    ok
}

async fn changes(
    State(hq): State<Hq>,
    Path(store): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = hq.lock().unwrap();
    s.requests.push(("changes".into(), None));
    if !authorised(&mut s, &store, &headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Ok(cursor) = Cursor::parse(q.get("since").map_or("", String::as_str)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    Json(s.answer(&cursor)).into_response()
}

async fn snapshot(
    State(hq): State<Hq>,
    Path((store, channel, _version)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let (file, cut, throttle) = {
        let mut s = hq.lock().unwrap();
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.requests.push((format!("snapshot {channel}"), range));
        if !authorised(&mut s, &store, &headers) {
            return StatusCode::FORBIDDEN.into_response();
        }
        let Some(f) = s.pruned.get(&channel).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        (f, s.cut_after, s.throttle)
    };
    let etag = format!("\"{}\"", file.r.sha256);
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| {
            headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) == Some(etag.as_str())
        })
        .filter(|n| *n < file.bytes.len());
    let from = start.unwrap_or(0);
    let total = file.bytes.len();
    let mut end = total;
    if let Some(cut) = cut {
        end = end.min(from + cut as usize);
    }
    let bytes = file.bytes.clone();
    let chunks = futures::stream::unfold(from, move |at| {
        let bytes = bytes.clone();
        async move {
            if at >= end {
                if end < total {
                    // The link drops: the client sees a short body.
                    return Some((Err(std::io::Error::other("cut")), usize::MAX));
                }
                return None;
            }
            if let Some(t) = throttle {
                tokio::time::sleep(t).await;
            }
            let next = (at + 64 * 1024).min(end);
            Some((Ok(Bytes::copy_from_slice(&bytes[at..next])), next))
        }
    });
    let mut resp = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CONTENT_LENGTH, total - from);
    resp = match start {
        Some(n) => resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {n}-{}/{total}", total - 1),
        ),
        None => resp.status(StatusCode::OK),
    };
    resp.body(Body::from_stream(chunks)).unwrap()
}

async fn lookup(
    State(hq): State<Hq>,
    Path(store): Path<String>,
    headers: HeaderMap,
    Json(req): Json<LookupRequest>,
) -> Response {
    let (found, delay) = {
        let mut s = hq.lock().unwrap();
        s.requests.push(("lookup".into(), None));
        if !authorised(&mut s, &store, &headers) {
            return StatusCode::FORBIDDEN.into_response();
        }
        let id = instore_protocol::qr::parse(&req.code).map(|c| c.member_id);
        (
            id.ok().and_then(|id| s.lookups.get(&id).cloned()),
            s.lookup_delay,
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match found {
        Some(f) => Json(f).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "unknown member"})),
        )
            .into_response(),
    }
}
