//! The live alert feed for clerk tablets, as Server-Sent Events.
//!
//! In: the [`AlertHub`]'s ring and broadcast. Out: one `alert` event per alert, its `id` the hub
//! sequence number, so that a browser's automatic reconnect (`Last-Event-ID`) resumes where it
//! stopped. The feed never blocks the hub: a client too slow for the broadcast lags, and then
//! re-reads what it missed from the ring. It ends when the agent shuts down.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
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

use super::AppState;
use crate::alerts::{Alert, AlertHub};

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

/// The sequence number a client has already seen: the `Last-Event-ID` header (set by a browser
/// when it reconnects) wins over the `last_event_id` query parameter (set by the clerk page after
/// it loaded the history). Unparseable values count as absent.
pub(crate) fn resume_point(headers: &HeaderMap, query_id: Option<&str>) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| query_id.and_then(|v| v.trim().parse().ok()))
}

pub(crate) async fn alert_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    // Parsed by hand so that a malformed query means "no resume point", not a 400.
    let query = Query::<StreamQuery>::try_from_uri(&uri).ok();
    let query_id = query.as_ref().and_then(|q| q.last_event_id.as_deref());
    let hub = state.web.alerts.clone();
    let newest = hub.recent(1).first().map_or(0, |a| a.seq);
    let since = match resume_point(&headers, query_id) {
        // A client that has seen more than this hub ever numbered was connected before the agent
        // restarted (sequence numbers start again at 1): everything in the ring is new to it.
        Some(seen) if seen > newest => 0,
        Some(seen) => seen,
        // A fresh client takes only live alerts; the page reads the history from /api/alerts.
        None => newest,
    };
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
    rx: broadcast::Receiver<Arc<Alert>>,
    /// Alerts read from the ring, to send before anything live.
    pending: VecDeque<Arc<Alert>>,
    /// The newest sequence number sent (or already seen by the client); never sent twice.
    last_seq: u64,
    cancel: CancellationToken,
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

fn to_event(alert: &Alert) -> Option<Event> {
    match serde_json::to_string(alert) {
        Ok(json) => Some(
            Event::default()
                .event("alert")
                .id(alert.seq.to_string())
                .data(json),
        ),
        Err(error) => {
            // Cannot happen for these plain structs; skip the alert rather than end the stream.
            tracing::error!(%error, seq = alert.seq, "alert could not be serialized");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use instore_protocol::AlertPriority;

    use super::*;
    use crate::alerts::MemberCard;

    fn alert(id: &str) -> Alert {
        Alert {
            id: id.into(),
            seq: 0,
            raised_at_ms: 0,
            rule: "r".into(),
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
        // Ten alerts into a broadcast of four: the receiver lags; the ring holds seq 7..=10.
        for i in 0..10 {
            hub.publish(alert(&i.to_string()));
        }
        let mut seqs = Vec::new();
        for _ in 0..4 {
            assert!(feed.next_event().await.is_some());
            seqs.push(feed.last_seq);
        }
        assert_eq!(seqs, [7, 8, 9, 10]);
        hub.publish(alert("live"));
        assert!(feed.next_event().await.is_some());
        assert_eq!(feed.last_seq, 11);
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

    #[test]
    fn the_last_event_id_header_wins_over_the_query_parameter() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, None), None);
        assert_eq!(resume_point(&headers, Some("4")), Some(4));
        assert_eq!(resume_point(&headers, Some("x")), None);
        headers.insert("last-event-id", HeaderValue::from_static("7"));
        assert_eq!(resume_point(&headers, Some("4")), Some(7));
        headers.insert("last-event-id", HeaderValue::from_static("junk"));
        assert_eq!(resume_point(&headers, Some("4")), Some(4));
    }
}
