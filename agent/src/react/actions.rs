//! Reaction actions beyond the clerk alert: MQTT publishes and webhooks.
//!
//! In: [`Action`]s offered by the engine after the round's events are committed, through a bounded
//! queue ([`ActionQueue::offer`] never waits: a full queue drops the action and counts it). Out:
//! MQTT publishes (QoS 1) on the action broker, and HTTP POSTs of JSON with an `Idempotency-Key`
//! header that stays the same across retries, so a receiver that saw a delivery whose response
//! was lost can recognise the retry. Webhooks retry with jittered exponential backoff and a
//! per-attempt timeout, a few at a time; nothing here can slow the engine.
//!
//! Only this module and `sync/` talk to rumqttc and reqwest.

use std::{sync::Arc, time::Duration};

use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::metrics::Metrics;

/// Webhook deliveries in flight at once; more wait in the queue (and overflow it, counted).
const WEBHOOK_CONCURRENCY: usize = 8;
const MAX_BACKOFF_MS: u64 = 30_000;

/// One thing a reaction asks the outside world to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Mqtt {
        rule: String,
        topic: String,
        payload: Vec<u8>,
    },
    Webhook(Webhook),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub rule: String,
    pub url: String,
    /// Sent as `Idempotency-Key`; identical on every attempt of this delivery.
    pub key: String,
    /// JSON.
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    /// Attempts after the first.
    pub retries: u32,
    pub backoff_ms: u64,
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Mqtt { .. } => "mqtt",
            Action::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("react mqtt_broker {0:?}: {1}")]
    Broker(String, String),
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// What the action task needs from the agent config.
#[derive(Debug, Clone)]
pub struct ActionSettings {
    /// `mqtt://host:port` for MQTT actions; `None`: MQTT actions fail (counted).
    pub mqtt_broker: Option<String>,
    pub mqtt_client_id: String,
    pub queue: usize,
}

/// The engine's end of the action queue.
#[derive(Debug, Clone)]
pub struct ActionQueue {
    tx: Option<mpsc::Sender<Action>>,
    metrics: Metrics,
}

impl ActionQueue {
    /// A queue with no task behind it: every action is dropped and counted.
    pub fn disabled(metrics: Metrics) -> Self {
        Self { tx: None, metrics }
    }

    /// Hands an action to the action task without waiting.
    pub fn offer(&self, action: Action) {
        let kind = action.kind();
        let Some(tx) = &self.tx else {
            count(&self.metrics, kind, "dropped");
            return;
        };
        if tx.try_send(action).is_err() {
            count(&self.metrics, kind, "dropped");
            tracing::warn!(kind, "action queue full or closed: action dropped");
        }
    }
}

fn count(metrics: &Metrics, kind: &'static str, result: &'static str) {
    metrics
        .reaction_actions
        .get_or_create(&vec![("kind", kind), ("result", result)])
        .inc();
}

/// Starts the action task (and the MQTT connection, when a broker is configured).
pub fn spawn(
    settings: ActionSettings,
    metrics: Metrics,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<ActionQueue, ActionError> {
    let mqtt = match &settings.mqtt_broker {
        Some(url) => {
            let (client, eventloop) = AsyncClient::new(
                mqtt_options(url, &settings.mqtt_client_id)?,
                settings.queue.max(10),
            );
            tracker.spawn(drive_mqtt(eventloop, metrics.clone(), cancel.clone()));
            Some(client)
        }
        None => None,
    };
    let http = reqwest::Client::builder().build()?;
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    // Webhooks get their own queue, so a slow receiver's retries never hold up MQTT actions.
    let (webhooks_tx, webhooks_rx) = mpsc::channel(settings.queue.max(1));
    tracker.spawn(post_webhooks(
        webhooks_rx,
        http,
        metrics.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(serve(rx, mqtt, webhooks_tx, metrics.clone(), cancel));
    Ok(ActionQueue {
        tx: Some(tx),
        metrics,
    })
}

fn mqtt_options(url: &str, client_id: &str) -> Result<MqttOptions, ActionError> {
    let bad = |why: &str| ActionError::Broker(url.to_string(), why.to_string());
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "mqtt" {
        return Err(bad("must be an mqtt://host:port URL"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("has no host"))?;
    let mut o = MqttOptions::new(client_id, host, parsed.port().unwrap_or(1883));
    o.set_keep_alive(Duration::from_secs(30));
    Ok(o)
}

async fn serve(
    mut rx: mpsc::Receiver<Action>,
    mqtt: Option<AsyncClient>,
    webhooks: mpsc::Sender<Webhook>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        let action = tokio::select! {
            _ = cancel.cancelled() => break,
            a = rx.recv() => match a { Some(a) => a, None => break },
        };
        match action {
            Action::Mqtt {
                rule,
                topic,
                payload,
            } => {
                let Some(client) = &mqtt else {
                    count(&metrics, "mqtt", "failed");
                    tracing::warn!(%rule, "MQTT action but no [react] mqtt_broker configured");
                    continue;
                };
                // try_publish: a stalled connection fills rumqttc's request queue, and then we
                // count a failure rather than wait.
                match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                    Ok(()) => count(&metrics, "mqtt", "sent"),
                    Err(e) => {
                        count(&metrics, "mqtt", "failed");
                        tracing::warn!(%rule, error = %e, "MQTT action not published");
                    }
                }
            }
            Action::Webhook(w) => {
                if webhooks.try_send(w).is_err() {
                    count(&metrics, "webhook", "dropped");
                    tracing::warn!("webhook queue full: webhook dropped");
                }
            }
        }
    }
    if let Some(client) = mqtt {
        let _ = client.try_disconnect();
    }
    tracing::debug!("action task stopped");
}

/// Posts queued webhooks, [`WEBHOOK_CONCURRENCY`] at a time.
async fn post_webhooks(
    mut rx: mpsc::Receiver<Webhook>,
    http: reqwest::Client,
    metrics: Metrics,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(WEBHOOK_CONCURRENCY));
    loop {
        let w = tokio::select! {
            _ = cancel.cancelled() => break,
            w = rx.recv() => match w { Some(w) => w, None => break },
        };
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (http, metrics, cancel) = (http.clone(), metrics.clone(), cancel.clone());
        tracker.spawn(async move {
            deliver(&http, &w, &metrics, &cancel).await;
            drop(permit);
        });
    }
}

/// Keeps the action broker connection alive; rumqttc reconnects on the next poll.
async fn drive_mqtt(
    mut eventloop: rumqttc::EventLoop,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut delay_ms = 500;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => count(&metrics, "mqtt", "acked"),
                Ok(Event::Incoming(Packet::ConnAck(_))) => delay_ms = 500,
                Ok(_) => {}
                Err(e) => {
                    count(&metrics, "mqtt", "connection_error");
                    tracing::warn!(error = %e, "action broker connection failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                    }
                    delay_ms = (delay_ms * 2).min(MAX_BACKOFF_MS);
                }
            }
        }
    }
}

/// "Equal jitter": half the exponential delay, plus a random share of the other half, so
/// retries from many gateways after one outage spread out instead of arriving together.
pub fn backoff_delay(base_ms: u64, attempt: u32) -> Duration {
    let d = base_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(MAX_BACKOFF_MS);
    Duration::from_millis(d / 2 + rand::rng().random_range(0..=d / 2))
}

/// Posts one webhook, retrying failures that may be transient (network errors, timeouts, 5xx,
/// 408, 429). Other 4xx answers are final: the receiver refused this payload.
async fn deliver(
    http: &reqwest::Client,
    w: &Webhook,
    metrics: &Metrics,
    cancel: &CancellationToken,
) {
    for attempt in 0..=w.retries {
        let result = http
            .post(&w.url)
            .timeout(Duration::from_millis(w.timeout_ms))
            .header("Idempotency-Key", &w.key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(w.body.clone())
            .send()
            .await;
        let why = match result {
            Ok(r) if r.status().is_success() => {
                count(metrics, "webhook", "sent");
                return;
            }
            Ok(r) => {
                let s = r.status();
                if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 {
                    count(metrics, "webhook", "failed");
                    tracing::warn!(rule = %w.rule, status = s.as_u16(), "webhook refused");
                    return;
                }
                format!("HTTP {s}")
            }
            Err(e) => e.to_string(),
        };
        if attempt == w.retries {
            count(metrics, "webhook", "failed");
            tracing::warn!(rule = %w.rule, attempts = attempt + 1, error = %why, "webhook failed");
            return;
        }
        count(metrics, "webhook", "retried");
        tracing::debug!(rule = %w.rule, attempt, error = %why, "webhook attempt failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => {
                count(metrics, "webhook", "dropped");
                return;
            }
            _ = tokio::time::sleep(backoff_delay(w.backoff_ms, attempt)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_ceiling() {
        for attempt in 0..4 {
            let d = backoff_delay(100, attempt).as_millis() as u64;
            let full = 100 << attempt;
            assert!((full / 2..=full).contains(&d), "{attempt}: {d}");
        }
        assert!(backoff_delay(100, 30).as_millis() as u64 <= MAX_BACKOFF_MS);
    }

    #[test]
    fn action_broker_urls_must_be_mqtt() {
        assert!(mqtt_options("mqtt://127.0.0.1:1999", "c").is_ok());
        assert!(mqtt_options("http://x", "c").is_err());
        assert!(mqtt_options("nonsense", "c").is_err());
    }

    #[test]
    fn a_queue_without_a_task_drops_and_counts() {
        let m = Metrics::default();
        let q = ActionQueue::disabled(m.clone());
        q.offer(Action::Mqtt {
            rule: "r".into(),
            topic: "t".into(),
            payload: vec![],
        });
        let n = m
            .reaction_actions
            .get_or_create(&vec![("kind", "mqtt"), ("result", "dropped")])
            .get();
        assert_eq!(n, 1);
    }
}
