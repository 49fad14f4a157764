//! Remote receivers (`kind = "mqtt"`): small BLE nodes spread over the shop floor — ESP32s with
//! OpenMQTTGateway or ESPresense-style firmware, Raspberry Pis with Theengs Gateway — publish
//! what they hear to a broker on the store LAN; this source turns each report into a sighting in
//! the zone configured for its receiver.
//!
//! In: `BTtoMQTT` reports ([`report`]) on `topic` (default `home/+/BTtoMQTT/#`) of `broker`.
//! Out: [`Sighting`]s to the engine like any live source: a full channel drops the report and
//! counts it (`adverts_dropped`). Per receiver: its zone and an RSSI offset that calibrates it
//! against the others (`[[sources.receivers]]`; unlisted receivers land in the source's `zone`
//! with no offset). Malformed or oversized reports are counted by reason
//! (`remote_reports_refused{reason}`) and skipped. A receiver not heard for `watchdog_s` is
//! reported like a local adapter that stalls: a `Scanner` event (`adapter = "mqtt:<receiver>"`,
//! `stalled`, then `recovered`) and `remote_receivers_silent`. Reports are timed on arrival;
//! a receiver's own clock is never read. Addresses are never logged.

pub mod report;

use std::{collections::HashMap, sync::Arc, time::Duration};

use instore_protocol::ScannerState;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::SourceConfig,
    engine::Clock,
    metrics::Metrics,
    outbox::Outbox,
    sources::{Sighting, offer, scanner_event, silence::Silence},
};

/// Default topic filter: OpenMQTTGateway's and Theengs Gateway's.
pub const DEFAULT_TOPIC: &str = "home/+/BTtoMQTT/#";
/// How often silence is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// Where one receiver's sightings go.
#[derive(Debug, Clone)]
struct Placement {
    zone: Arc<str>,
    rssi_offset: i16,
}

/// A `kind = "mqtt"` source, ready to run.
#[derive(Debug, Clone)]
pub struct RemoteSource {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    topic: String,
    client_id: String,
    default: Placement,
    placements: HashMap<String, Placement>,
    silent_after_ms: u64,
}

impl RemoteSource {
    /// From a validated source config (`broker` is an `mqtt://host[:port]` URL there).
    pub fn from_source(cfg: &SourceConfig, index: usize) -> Option<Self> {
        let url = reqwest::Url::parse(cfg.broker.as_deref()?).ok()?;
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let placements = cfg
            .receivers
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    Placement {
                        zone: Arc::from(r.zone.as_deref().unwrap_or(&cfg.zone)),
                        rssi_offset: r.rssi_offset,
                    },
                )
            })
            .collect();
        Some(Self {
            port: url.port().unwrap_or(1883),
            host,
            credentials: cfg
                .username
                .clone()
                .map(|u| (u, cfg.password.clone().unwrap_or_default())),
            topic: cfg
                .topic
                .clone()
                .unwrap_or_else(|| DEFAULT_TOPIC.to_string()),
            client_id: format!("instore-receivers-{}-{index}", std::process::id()),
            default: Placement {
                zone: Arc::from(cfg.zone.as_str()),
                rssi_offset: cfg.rssi_offset,
            },
            placements,
            silent_after_ms: cfg.watchdog_s.max(1) * 1000,
        })
    }
}

/// Runs the source until `cancel`: connects (again after a loss), subscribes, turns reports
/// into sightings, watches for silent receivers.
pub async fn run(
    src: RemoteSource,
    clock: Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: Metrics,
    outbox: Option<Outbox>,
    cancel: CancellationToken,
) {
    let mut opts = MqttOptions::new(&src.client_id, &src.host, src.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(report::MAX_REPORT_BYTES + 1024, 4096);
    if let Some((u, p)) = &src.credentials {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let now = clock.now_ms();
    // Configured receivers must be heard: silence counts from the start.
    let mut receivers = Silence::default();
    for id in src.placements.keys() {
        receivers.expect(id.clone(), now);
    }
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut subscribed = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = check.tick() => {
                for id in receivers.check(clock.now_ms(), src.silent_after_ms) {
                    let detail = format!("no report for {} s", src.silent_after_ms / 1000);
                    tracing::warn!(receiver = %id, "remote receiver silent");
                    scanner_event(outbox.as_ref(), &format!("mqtt:{id}"), ScannerState::Stalled, &detail);
                }
                metrics
                    .remote_receivers_silent
                    .set(receivers.silent() as i64);
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    subscribed = false;
                    if let Err(e) = client.try_subscribe(&src.topic, QoS::AtMostOnce) {
                        tracing::warn!(error = %e, "remote receivers: subscribe failed");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !subscribed {
                        subscribed = true;
                        tracing::info!(topic = %src.topic, broker = %src.host, "remote receivers subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (id, mut advert) = match report::parse(&p.topic, &p.payload) {
                        Ok(r) => r,
                        Err(e) => {
                            metrics
                                .remote_reports_refused
                                .get_or_create(&vec![("reason", e.reason())])
                                .inc();
                            continue;
                        }
                    };
                    metrics.remote_reports.inc();
                    let place = src.placements.get(&id).unwrap_or(&src.default);
                    advert.rssi = advert.rssi.saturating_add(place.rssi_offset);
                    let now = clock.now_ms();
                    if receivers.heard(&id, now) {
                        tracing::info!(receiver = %id, "remote receiver heard again");
                        scanner_event(outbox.as_ref(), &format!("mqtt:{id}"), ScannerState::Recovered, "");
                    }
                    let sighting = Sighting { zone: place.zone.clone(), at_ms: now, advert };
                    if !offer(&tx, sighting, &metrics) {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.remote_broker_errors.inc();
                    tracing::warn!(error = %e, broker = %src.host, "remote receivers: broker connection lost; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(RECONNECT_AFTER) => {}
                    }
                }
            },
        }
    }
    let _ = client.try_disconnect();
}
