//! What gateways fetch about members: their store's change streams, channel snapshots (with
//! HTTP ranges), lookups of members they do not hold, and the whole-set snapshot of gateways
//! that predate channels.
//!
//! Scope: a gateway token reads only its own store (`auth::may_read_store`), and only channels
//! its store subscribes to; the admin token reads any store.

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use instore_protocol::{
    Identifier, MemberRecord, SCHEMA_VERSION,
    changes::{
        ChangesResponse, ChannelChanges, Cursor, LookupRequest, LookupResponse,
        MAX_CHANGES_PER_RESPONSE, SnapshotRef, valid_channel,
    },
    qr,
    rotating::day_key,
    topics::valid_id,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, AppState, auth};
use crate::{
    fanout::{gateway_form, legacy, snapshots::SnapshotError, stream},
    now_ms, params,
    store::db::Sql,
};

fn store_scope(state: &AppState, headers: &HeaderMap, store: &str) -> Result<(), ApiError> {
    if !valid_id(store) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "store is not a valid id",
        ));
    }
    if !auth::may_read_store(headers, &state.admin_token, &state.registry, store) {
        return Err(ApiError::unauthorized(state));
    }
    Ok(())
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        tracing::error!(error = %e, "snapshot failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot error")
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ChangesQuery {
    #[serde(default)]
    since: String,
    #[serde(default)]
    limit: Option<usize>,
    /// The tag of the campaign set the gateway holds (`none` before its first); absent from
    /// gateways that predate campaigns, which get none.
    #[serde(default)]
    campaigns: Option<String>,
}

/// `GET /api/stores/{store}/changes?since=CURSOR[&limit=N][&campaigns=TAG]`.
pub(super) async fn changes(
    State(state): State<AppState>,
    Path(store): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    store_scope(&state, &headers, &store)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected ?since=CURSOR&limit=N: {}", e.body_text()),
        )
    })?;
    let cursor = Cursor::parse(&q.since)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    state.metrics.metrics.change_requests.inc();
    let subscriptions = state.fanout.membership.subscriptions(&store);
    let limit = q.limit.unwrap_or(MAX_CHANGES_PER_RESPONSE);
    let snapshot_after = state.fanout.membership.snapshot_after_changes;
    let held_campaigns = q.campaigns.clone();
    let (plans, campaigns) = state
        .store
        .call(move |db| {
            let campaigns = match held_campaigns {
                Some(held) => {
                    let set = crate::campaigns::live_for(db, &subscriptions)?;
                    (set.tag != held).then_some(set)
                }
                None => None,
            };
            let plans = stream::plan(db, &subscriptions, &cursor, limit, snapshot_after)?;
            Ok((plans, campaigns))
        })
        .await?;
    if campaigns.is_some() {
        state.metrics.metrics.campaign_sets_served.inc();
    }
    let mut channels = Vec::with_capacity(plans.len());
    for p in plans {
        match p {
            stream::ChannelPlan::Changes(c) => {
                state
                    .metrics
                    .metrics
                    .changes_served
                    .inc_by(c.changes.len() as u64);
                channels.push(c);
            }
            stream::ChannelPlan::Snapshot {
                channel,
                from,
                head,
                floor,
            } => {
                let meta = state
                    .snapshots
                    .ensure(&channel, head, floor, snapshot_after)
                    .await?;
                channels.push(ChannelChanges {
                    snapshot: Some(SnapshotRef {
                        path: format!(
                            "/api/stores/{store}/channels/{channel}/snapshots/{}",
                            meta.version
                        ),
                        version: meta.version,
                        sha256: meta.sha256,
                        bytes: meta.bytes,
                        members: meta.members,
                    }),
                    channel,
                    from,
                    to: from,
                    head,
                    changes: Vec::new(),
                });
            }
        }
    }
    let response = ChangesResponse {
        v: SCHEMA_VERSION,
        campaigns,
        store_id: store,
        channels,
    };
    let json = serde_json::to_vec(&response).map_err(|e| {
        tracing::error!(error = %e, "changes: cannot encode");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding error")
    })?;
    let (body, encoding) = encode_for(&headers, json);
    state
        .metrics
        .metrics
        .change_bytes_served
        .inc_by(body.len() as u64);
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        r.headers_mut().insert(header::CONTENT_ENCODING, e);
    }
    // The caller may read this store: it may also check the store's notices.
    if let Ok(v) = HeaderValue::from_str(&state.message_auth.store_key(&response.store_id).to_hex())
    {
        r.headers_mut()
            .insert(instore_protocol::auth::NOTICE_KEY_HEADER, v);
    }
    Ok(r)
}

/// Bodies below this go as they are: compressing them saves less than its headers cost.
const COMPRESS_FROM_BYTES: usize = 1024;

/// The body as the client accepts it: zstd when it says so (member changes are repetitive JSON,
/// about a tenth of their size compressed), else as it is. A gateway returning after a month
/// offline downloads tens of thousands of changes over a store's often thin uplink.
fn encode_for(headers: &HeaderMap, json: Vec<u8>) -> (Vec<u8>, Option<HeaderValue>) {
    if json.len() < COMPRESS_FROM_BYTES || !accepts(headers, "zstd") {
        return (json, None);
    }
    match zstd::bulk::compress(&json, 3) {
        Ok(z) => (z, Some(HeaderValue::from_static("zstd"))),
        Err(e) => {
            tracing::warn!(error = %e, "changes: zstd failed; sending uncompressed");
            (json, None)
        }
    }
}

/// Whether `Accept-Encoding` lists `coding` with a non-zero quality.
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case(coding) && !zero
        })
}

/// `Range: bytes=N-` or `bytes=N-M` → `(N, M)`; `None` when absent or not of that form.
fn parse_range(headers: &HeaderMap, len: u64) -> Option<(u64, u64)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

/// `GET /api/stores/{store}/channels/{channel}/snapshots/{version}`: the file, whole (200) or
/// from a `Range` (206, honoured only while `If-Range` names this file's ETag, if sent).
pub(super) async fn snapshot_file(
    State(state): State<AppState>,
    Path((store, channel, version)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    store_scope(&state, &headers, &store)?;
    if !valid_channel(&channel) || !state.fanout.membership.subscribes(&store, &channel) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the store does not subscribe to that channel",
        ));
    }
    let Some((path, meta)) = state.snapshots.find(&channel, version) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such snapshot (superseded: ask for changes again)",
        ));
    };
    let etag = format!("\"{}\"", meta.sha256);
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v == etag));
    let range = if if_range_ok {
        parse_range(&headers, meta.bytes)
    } else {
        None
    };
    if headers.contains_key(header::RANGE) && if_range_ok && range.is_none() {
        return Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{}", meta.bytes))],
        )
            .into_response());
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "cannot open a snapshot");
        ApiError::new(StatusCode::NOT_FOUND, "snapshot gone")
    })?;
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, meta.bytes),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot seek"))?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    state.metrics.metrics.snapshots_served.inc();
    state.metrics.metrics.snapshot_bytes_served.inc_by(len);
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/zstd")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", start + len - 1, meta.bytes),
        );
    }
    resp.body(body)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A lookup is one member code: a few hundred bytes at most.
const MAX_LOOKUP_BYTES: usize = 4096;

const SELECT_LOOKUP: Sql =
    Sql::same("SELECT record_json, gateway_json, rev FROM members WHERE member_id = ?1");

/// `POST /api/stores/{store}/members/lookup`: a member code scanned at a store that does not
/// hold the member. Answered only for a valid, current code of a member with presence consent.
pub(super) async fn lookup(
    State(state): State<AppState>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    store_scope(&state, &headers, &store)?;
    let body = axum::body::to_bytes(body, MAX_LOOKUP_BYTES)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "lookup body too large"))?;
    let metric = |reason: &'static str| {
        state
            .metrics
            .metrics
            .member_lookups
            .get_or_create(&vec![("result", reason)])
            .inc();
    };
    let req: LookupRequest = serde_json::from_slice(&body).map_err(|e| {
        metric("bad_request");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"code\":\"...\"}}: {e}"),
        )
    })?;
    let code = qr::parse(&req.code).map_err(|e| {
        metric("malformed");
        ApiError::new(StatusCode::NOT_FOUND, e.to_string())
    })?;
    let id = code.member_id.clone();
    let row = state
        .store
        .call(move |db| db.query_opt(&SELECT_LOOKUP, params![id]))
        .await?;
    let refuse = |reason: &'static str, e: qr::QrError| {
        metric(reason);
        ApiError::new(StatusCode::NOT_FOUND, e.to_string())
    };
    let Some(row) = row else {
        return Err(refuse("unknown_member", qr::QrError::UnknownMember));
    };
    let (Some(gateway), record) = (row.opt_string(1)?, row.str(0)?) else {
        return Err(refuse("unknown_member", qr::QrError::UnknownMember));
    };
    let record: MemberRecord = serde_json::from_str(record)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "member record"))?;
    let secret = record.identifiers.iter().find_map(|i| match i {
        Identifier::RotatingSecret { secret } => hex::decode(secret)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok()),
        _ => None,
    });
    let Some(secret) = secret else {
        return Err(refuse("no_key", qr::QrError::NoKey));
    };
    let now = now_ms();
    code.verify(&day_key(&secret, code.day()), now)
        .map_err(|e| refuse("refused", e))?;
    let member: MemberRecord = serde_json::from_str(&gateway)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "member record"))?;
    metric("found");
    Ok(Json(LookupResponse {
        rev: row.u64(2)?,
        member,
        keys: gateway_form::short_lived_keys(&record, now).0,
    })
    .into_response())
}

/// `GET /api/stores/{store}/members/snapshot` (gateways that predate channels; deprecated).
pub(super) async fn legacy_snapshot(
    State(state): State<AppState>,
    Path(store): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    store_scope(&state, &headers, &store)?;
    let subs = state.fanout.membership.subscriptions(&store);
    let id = store.clone();
    let snap = state
        .store
        .call(move |db| legacy::snapshot(db, &id, &subs, now_ms()))
        .await?;
    let mut resp = Json(snap).into_response();
    resp.headers_mut()
        .insert("deprecation", HeaderValue::from_static("true"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        h
    }

    #[test]
    fn zstd_only_when_the_client_accepts_it() {
        assert!(accepts(&with("zstd"), "zstd"));
        assert!(accepts(&with("gzip, ZSTD;q=0.5"), "zstd"));
        assert!(!accepts(&with("gzip, br"), "zstd"));
        assert!(!accepts(&with("zstd;q=0"), "zstd"));
        assert!(!accepts(&with("zstdx"), "zstd"));
        assert!(!accepts(&HeaderMap::new(), "zstd"));
    }

    #[test]
    fn small_bodies_go_plain_and_large_ones_round_trip() {
        let small = b"{}".to_vec();
        assert_eq!(encode_for(&with("zstd"), small.clone()), (small, None));
        let big = br#"{"member_id":"M1","tier":"gold"}"#.repeat(100);
        let (z, enc) = encode_for(&with("zstd"), big.clone());
        assert_eq!(enc, Some(HeaderValue::from_static("zstd")));
        assert!(z.len() < big.len() / 4);
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), big);
        assert_eq!(encode_for(&HeaderMap::new(), big.clone()), (big, None));
    }
}
