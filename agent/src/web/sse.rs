//! The live alert feed for clerk tablets, as Server-Sent Events.
//!
//! In: the [`AlertHub`]'s ring and broadcast. Out: one event per alert update — `alert` (raised),
//! `alert_taken`, `alert_outcome`, `alert_dismissed`, `alert_expired` — whose data is the alert as
//! it now stands and whose `id` is `epoch-seq`, so that a browser's automatic reconnect
//! (`Last-Event-ID`) resumes where it stopped, and an id from before an agent restart (another
//! epoch) gets everything the new process has. The feed never blocks the hub: a client too slow
//! for the broadcast lags, and then re-reads what it missed from the ring. It ends when the agent
//! shuts down, and a tablet's feed ends the moment the tablet is revoked.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::{Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, Uri},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{AppState, Principal, auth};
use crate::alerts::{AlertHub, Update};

/// Comments sent on an idle stream, so that proxies and tablets' network stacks do not drop it
/// and a dead tablet is noticed (the write fails) within this interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting after the stream drops.
const RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    last_event_id: Option<String>,
}

/// Counts a connected client for as long as its stream lives; dropped when the client goes away
/// (hyper drops the body) or the stream ends.
struct ClientGuard(Gauge);

impl ClientGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An event id a client says it has seen: `epoch-seq`, or a bare `seq` (older pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    epoch: Option<String>,
    seq: u64,
}

fn parse_seen(v: &str) -> Option<Seen> {
    let v = v.trim();
    match v.split_once('-') {
        Some((epoch, seq)) => Some(Seen {
            epoch: Some(epoch.to_owned()),
            seq: seq.parse().ok()?,
        }),
        None => Some(Seen {
            epoch: None,
            seq: v.parse().ok()?,
        }),
    }
}

/// The update a client has already seen: the `Last-Event-ID` header (set by a browser when it
/// reconnects) wins over the `last_event_id` query parameter (set by the clerk page after it
/// loaded the history). Unparseable values count as absent.
pub(crate) fn resume_point(headers: &HeaderMap, query_id: Option<&str>) -> Option<Seen> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_seen)
        .or_else(|| query_id.and_then(parse_seen))
}

/// Where in this hub's sequence to start for a client that has seen `seen`.
fn start_after(seen: Option<Seen>, epoch: &str, newest: u64) -> u64 {
    match seen {
        // A fresh client takes only live updates; the page reads the history from /api/alerts.
        None => newest,
        // Another process numbered that id: everything in this one's ring is new to the client.
        Some(Seen { epoch: Some(e), .. }) if e != epoch => 0,
        // A client that has seen more than this hub ever numbered was connected before the agent
        // restarted (a bare id from an older page): the whole ring is new to it.
        Some(Seen { seq, .. }) if seq > newest => 0,
        Some(Seen { seq, .. }) => seq,
    }
}

pub(crate) async fn alert_stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    // A tablet's stream ends when it is revoked; the admin's only at shutdown.
    let revoked = match &principal {
        Principal::Tablet(id) => match state.web.tablets.as_ref().and_then(|t| t.session(id)) {
            Some(session) => session,
            // Revoked between the token check and here.
            None => return auth::unauthorized(),
        },
        Principal::Admin => CancellationToken::new(),
    };
    // Parsed by hand so that a malformed query means "no resume point", not a 400.
    let query = Query::<StreamQuery>::try_from_uri(&uri).ok();
    let query_id = query.as_ref().and_then(|q| q.last_event_id.as_deref());
    let hub = state.web.alerts.clone();
    let since = start_after(
        resume_point(&headers, query_id),
        hub.epoch(),
        hub.newest_seq(),
    );
    // Subscribed here, before the response goes out, so that anything published after the client
    // sees the response headers reaches it.
    let (missed, rx) = hub.subscribe_since(since);
    tracing::debug!(since, missed = missed.len(), "alert stream opened");
    let feed = Feed {
        hub,
        rx,
        pending: missed.into(),
        last_seq: since,
        cancel: state.shutdown.clone(),
        revoked,
        _client: ClientGuard::new(state.web.metrics.sse_clients.clone()),
        sent_retry: false,
    };
    let sse = Sse::new(feed.into_stream()).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    // Reverse proxies (nginx) buffer responses unless told not to, which would hold alerts back.
    (
        [(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        sse,
    )
        .into_response()
}

struct Feed {
    hub: AlertHub,
    rx: broadcast::Receiver<Arc<Update>>,
    /// Updates read from the ring, to send before anything live.
    pending: VecDeque<Arc<Update>>,
    /// The newest sequence number sent (or already seen by the client); never sent twice.
    last_seq: u64,
    cancel: CancellationToken,
    /// The tablet's session: cancelled when it is revoked.
    revoked: CancellationToken,
    _client: ClientGuard,
    sent_retry: bool,
}

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures::stream::unfold(self, |mut feed| async move {
            let event = feed.next_event().await?;
            Some((Ok(event), feed))
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        if !self.sent_retry {
            self.sent_retry = true;
            return Some(Event::default().retry(RETRY).comment("instore alerts"));
        }
        loop {
            while let Some(alert) = self.pending.pop_front() {
                if alert.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = alert.seq;
                if let Some(event) = to_event(&alert) {
                    return Some(event);
                }
            }
            tokio::select! {
                // Shutdown first, so a busy hub cannot hold the server open.
                biased;
                () = self.cancel.cancelled() => return None,
                () = self.revoked.cancelled() => {
                    tracing::info!("alert stream closed: tablet revoked");
                    return None;
                }
                received = self.rx.recv() => match received {
                    Ok(alert) => self.pending.push_back(alert),
                    Err(RecvError::Lagged(skipped)) => {
                        // Re-sync from the ring rather than dropping the client. Alerts older
                        // than the ring are gone; the tablet still shows the newest.
                        let (missed, rx) = self.hub.subscribe_since(self.last_seq);
                        tracing::warn!(skipped, recovered = missed.len(), "alert stream lagged; re-synced from the ring");
                        self.rx = rx;
                        self.pending.extend(missed);
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn to_event(update: &Update) -> Option<Event> {
    match serde_json::to_string(update) {
        Ok(json) => Some(
            Event::default()
                .event(update.kind.as_str())
                .id(update.event_id())
                .data(json),
        ),
        Err(error) => {
            // Cannot happen for these plain structs; skip the update rather than end the stream.
            tracing::error!(%error, seq = update.seq, "alert update could not be serialized");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use instore_protocol::AlertPriority;

    use super::*;
    use crate::alerts::{Alert, MemberCard};

    fn alert(id: &str) -> Alert {
        Alert {
            id: id.into(),
            seq: 0,
            raised_at_ms: 0,
            rule: "r".into(),
            campaign: None,
            priority: AlertPriority::Normal,
            message: "m".into(),
            zone: "z".into(),
            member: MemberCard {
                member_id: "M".into(),
                display_name: "N".into(),
                tier: "gold".into(),
                stage: None,
                tags: vec![],
                last_purchase: None,
                ..Default::default()
            },
        }
    }

    fn feed(hub: &AlertHub, since: u64, gauge: &Gauge, cancel: &CancellationToken) -> Feed {
        let (missed, rx) = hub.subscribe_since(since);
        Feed {
            hub: hub.clone(),
            rx,
            pending: missed.into(),
            last_seq: since,
            cancel: cancel.clone(),
            revoked: CancellationToken::new(),
            _client: ClientGuard::new(gauge.clone()),
            sent_retry: true,
        }
    }

    #[tokio::test]
    async fn a_lagging_feed_resyncs_from_the_ring_instead_of_ending() {
        let hub = AlertHub::new(4);
        let gauge = Gauge::default();
        let cancel = CancellationToken::new();
        let mut feed = feed(&hub, 0, &gauge, &cancel);
        // Twenty alerts into a broadcast of four: the receiver lags; the update ring (four
        // updates per remembered alert) holds seq 5..=20.
        for i in 0..20 {
            hub.publish(alert(&i.to_string()));
        }
        let mut seqs = Vec::new();
        for _ in 0..16 {
            assert!(feed.next_event().await.is_some());
            seqs.push(feed.last_seq);
        }
        assert_eq!(seqs, (5..=20).collect::<Vec<u64>>());
        hub.publish(alert("live"));
        assert!(feed.next_event().await.is_some());
        assert_eq!(feed.last_seq, 21);
    }

    #[tokio::test]
    async fn the_feed_ends_on_cancel_and_stops_counting_its_client() {
        let hub = AlertHub::new(4);
        let gauge = Gauge::default();
        let cancel = CancellationToken::new();
        let stream = feed(&hub, 0, &gauge, &cancel).into_stream();
        assert_eq!(gauge.get(), 1);
        cancel.cancel();
        assert_eq!(stream.collect::<Vec<_>>().await.len(), 0);
        assert_eq!(gauge.get(), 0);
    }

    fn seq(v: Option<Seen>) -> Option<u64> {
        v.map(|s| s.seq)
    }

    #[test]
    fn the_last_event_id_header_wins_over_the_query_parameter() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, None), None);
        assert_eq!(seq(resume_point(&headers, Some("4"))), Some(4));
        assert_eq!(resume_point(&headers, Some("x")), None);
        headers.insert("last-event-id", HeaderValue::from_static("ab12-7"));
        assert_eq!(
            resume_point(&headers, Some("4")),
            Some(Seen {
                epoch: Some("ab12".into()),
                seq: 7
            })
        );
        headers.insert("last-event-id", HeaderValue::from_static("junk"));
        assert_eq!(seq(resume_point(&headers, Some("4"))), Some(4));
    }

    #[test]
    fn an_id_from_another_epoch_or_beyond_the_newest_restarts_from_the_ring() {
        let seen = |e: Option<&str>, seq| {
            Some(Seen {
                epoch: e.map(Into::into),
                seq,
            })
        };
        assert_eq!(start_after(None, "e1", 9), 9);
        assert_eq!(start_after(seen(Some("e1"), 4), "e1", 9), 4);
        assert_eq!(start_after(seen(Some("e0"), 4), "e1", 9), 0);
        assert_eq!(start_after(seen(None, 40), "e1", 9), 0);
        assert_eq!(start_after(seen(None, 4), "e1", 9), 4);
    }

    #[tokio::test]
    async fn a_revoked_tablets_feed_ends() {
        let hub = AlertHub::new(4);
        let gauge = Gauge::default();
        let mut f = feed(&hub, 0, &gauge, &CancellationToken::new());
        let revoked = CancellationToken::new();
        f.revoked = revoked.clone();
        revoked.cancel();
        assert!(f.next_event().await.is_none());
    }
}
