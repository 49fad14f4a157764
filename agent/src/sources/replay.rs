//! Replay source (`kind = "replay"`): feeds a recorded capture to the engine as if it were heard
//! now — for debugging a store's problem at a desk, and for tests.
//!
//! In: a file, recognised by its first bytes:
//! - a btsnoop capture (`btmon -w FILE`, or an HCI snoop log): HCI LE Advertising Report and LE
//!   Extended Advertising Report events → address, address type, RSSI, and the AD structures'
//!   manufacturer data (0xFF) and 16-bit service data (0x16). Datalinks: 2001 (btmon's monitor
//!   format), 1002 (H4), 1001 (unencapsulated HCI);
//! - otherwise the NDJSON advert log of [`super::record`].
//!
//! Out: sightings at the recorded pace divided by `speed` (0: as fast as the engine takes them).
//! Unlike a radio, a replay waits for the engine rather than dropping: every recorded advert is
//! processed. Only the advert timing is scaled: presence timers still run on the agent's clock.
//! Malformed lines and packets are counted (`replay_malformed`) and skipped.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Sighting,
    btsnoop::{BTSNOOP_MAGIC, Capture, parse_btsnoop},
    record::AdvertRecord,
};
use crate::{engine::Clock, metrics::Metrics};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unsupported btsnoop datalink {datalink} (want 1001, 1002 or 2001)")]
    Datalink { path: String, datalink: u32 },
}

/// Reads a capture file of either format.
pub fn load(path: &std::path::Path) -> Result<Capture, ReplayError> {
    let bytes = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.starts_with(BTSNOOP_MAGIC) {
        parse_btsnoop(&bytes).map_err(|datalink| ReplayError::Datalink {
            path: path.display().to_string(),
            datalink,
        })
    } else {
        Ok(parse_ndjson(&String::from_utf8_lossy(&bytes)))
    }
}

/// Parses the NDJSON advert log; times are made relative to the first line.
pub fn parse_ndjson(text: &str) -> Capture {
    let mut c = Capture::default();
    let mut t0 = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match AdvertRecord::parse_line(line) {
            Ok((t, a)) => {
                let t0 = *t0.get_or_insert(t);
                c.adverts.push((t.saturating_sub(t0), a));
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed replay line skipped");
                c.malformed += 1;
            }
        }
    }
    c
}

/// When a record `t_ms` into the capture is due, from the replay's start (None: at once).
pub fn due_after(t_ms: u64, speed: f64) -> Option<Duration> {
    (speed > 0.0).then(|| Duration::from_secs_f64(t_ms as f64 / 1000.0 / speed))
}

/// Replays `path` into the engine, then ends.
pub async fn run(
    path: PathBuf,
    speed: f64,
    zone: Arc<str>,
    clock: Clock,
    tx: mpsc::Sender<Sighting>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let shown = path.display().to_string();
    let capture = match tokio::task::spawn_blocking(move || load(&path)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "replay source cannot start");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "replay loader failed");
            return;
        }
    };
    metrics.replay_malformed.inc_by(capture.malformed);
    tracing::info!(path = %shown, adverts = capture.adverts.len(), malformed = capture.malformed, speed, "replay starting");
    let start = tokio::time::Instant::now();
    for (t_ms, advert) in capture.adverts {
        if let Some(after) = due_after(t_ms, speed) {
            let due = start + after;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        metrics.adverts.inc();
        let s = Sighting {
            zone: zone.clone(),
            at_ms: clock.now_ms(),
            advert,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = tx.send(s) => if r.is_err() { return },
        }
    }
    tracing::info!(path = %shown, "replay finished");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::AddressType;

    /// An iBeacon advert's AD structures: flags, then manufacturer data (Apple, iBeacon).
    fn ibeacon_ad() -> Vec<u8> {
        let mut ad = vec![0x02, 0x01, 0x06, 0x1a, 0xff, 0x4c, 0x00, 0x02, 0x15];
        ad.extend(1..=16u8); // proximity UUID
        ad.extend([0x00, 0x64, 0x00, 0x07, 0xc5]); // major 100, minor 7, tx -59
        ad
    }

    fn legacy_report(addr_type: u8, addr_le: [u8; 6], ad: &[u8], rssi: i8) -> Vec<u8> {
        let mut p = vec![0x02, 0x01, 0x00, addr_type];
        p.extend(addr_le);
        p.push(ad.len() as u8);
        p.extend(ad);
        p.push(rssi as u8);
        let mut ev = vec![0x3e, p.len() as u8];
        ev.extend(p);
        ev
    }

    fn extended_report(addr_le: [u8; 6], ad: &[u8], rssi: i8) -> Vec<u8> {
        let mut p = vec![0x0d, 0x01, 0x13, 0x00, 0x00];
        p.extend(addr_le);
        p.extend([0x01, 0x00, 0xff, 0x7f, rssi as u8, 0x00, 0x00, 0x00]);
        p.extend([0u8; 6]);
        p.push(ad.len() as u8);
        p.extend(ad);
        let mut ev = vec![0x3e, p.len() as u8];
        ev.extend(p);
        ev
    }

    fn btsnoop(datalink: u32, packets: &[(u32, i64, Vec<u8>)]) -> Vec<u8> {
        let mut f = BTSNOOP_MAGIC.to_vec();
        f.extend(1u32.to_be_bytes());
        f.extend(datalink.to_be_bytes());
        for (flags, ts, data) in packets {
            f.extend((data.len() as u32).to_be_bytes());
            f.extend((data.len() as u32).to_be_bytes());
            f.extend(flags.to_be_bytes());
            f.extend(0u32.to_be_bytes());
            f.extend(ts.to_be_bytes());
            f.extend(data);
        }
        f
    }

    const T0: i64 = 0x00dc_ddb3_0f2f_8000; // microseconds since year 0, as btsnoop counts

    #[test]
    fn a_btmon_capture_yields_legacy_and_extended_reports() {
        let service = [0x03, 0x16, 0xaa, 0xfe, 0x04, 0x16, 0x0f, 0x18, 0x64];
        let file = btsnoop(
            2001,
            &[
                // A command packet (opcode 2): not an event, ignored.
                (2, T0, vec![0x0b, 0x20, 0x01, 0x01]),
                (
                    3,
                    T0 + 1_000,
                    legacy_report(
                        0x01,
                        [0x55, 0x44, 0x33, 0x22, 0x11, 0xc0],
                        &ibeacon_ad(),
                        -61,
                    ),
                ),
                // Another event (command complete): no adverts, not malformed.
                (3, T0 + 2_000, vec![0x0e, 0x04, 0x01, 0x0b, 0x20, 0x00]),
                (
                    3,
                    T0 + 501_000,
                    extended_report([1, 2, 3, 4, 5, 6], &service, -70),
                ),
            ],
        );
        let c = parse_btsnoop(&file).unwrap();
        assert_eq!(c.malformed, 0);
        assert_eq!(c.adverts.len(), 2);
        let (t, a) = &c.adverts[0];
        assert_eq!(*t, 0);
        assert_eq!(a.address, [0xc0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(a.address_type, AddressType::Random);
        assert_eq!(a.rssi, -61);
        assert_eq!(a.manufacturer_data[0].0, 0x004c);
        assert_eq!(&a.manufacturer_data[0].1[..2], &[0x02, 0x15]);
        let (t, a) = &c.adverts[1];
        assert_eq!(*t, 500);
        assert_eq!(a.address, [6, 5, 4, 3, 2, 1]);
        assert_eq!(a.address_type, AddressType::Public);
        assert_eq!(a.service_data, vec![(0xfeaa, vec![]), (0x180f, vec![0x64])]);
    }

    #[test]
    fn h4_captures_read_too_and_bad_packets_are_counted() {
        let mut h4 = vec![0x04];
        h4.extend(legacy_report(0x00, [1, 2, 3, 4, 5, 6], &ibeacon_ad(), -50));
        // Report claims more AD bytes than the event holds.
        let mut bad = legacy_report(0x00, [1, 2, 3, 4, 5, 6], &ibeacon_ad(), -50);
        bad[12] = 0xf0;
        let mut bad_h4 = vec![0x04];
        bad_h4.extend(bad);
        let file = btsnoop(1002, &[(1, T0, h4), (1, T0 + 5, bad_h4)]);
        let c = parse_btsnoop(&file).unwrap();
        assert_eq!((c.adverts.len(), c.malformed), (1, 1));
        // A truncated file: the last record is cut short.
        let cut = &file[..file.len() - 3];
        assert_eq!(parse_btsnoop(cut).unwrap().malformed, 1);
        assert_eq!(parse_btsnoop(&btsnoop(9999, &[])), Err(9999));
    }

    #[test]
    fn an_advert_log_replays_with_bad_lines_skipped() {
        let text = concat!(
            "{\"t_ms\":1000,\"address\":\"C0:11:22:33:44:55\",\"address_type\":\"random\",\"rssi\":-61,\"manufacturer_data\":{\"004c\":\"0215\"}}\n",
            "# a comment\n",
            "garbage\n",
            "\n",
            "{\"t_ms\":1250,\"address\":\"C0:11:22:33:44:55\",\"address_type\":\"random\",\"rssi\":-64}\n",
        );
        let c = parse_ndjson(text);
        assert_eq!(c.malformed, 1);
        assert_eq!(c.adverts.len(), 2);
        assert_eq!(c.adverts[1].0, 250);
        assert_eq!(
            c.adverts[0].1.manufacturer_data,
            vec![(0x004c, vec![0x02, 0x15])]
        );
    }

    #[test]
    fn speed_scales_the_recorded_pace() {
        assert_eq!(due_after(10_000, 2.0), Some(Duration::from_secs(5)));
        assert_eq!(due_after(10_000, 1.0), Some(Duration::from_secs(10)));
        assert_eq!(due_after(10_000, 0.0), None);
    }

    #[tokio::test]
    async fn a_replay_delivers_every_advert_in_order_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.ndjson");
        let line = |t: u64, rssi: i16| {
            format!(
                "{{\"t_ms\":{t},\"address\":\"C0:11:22:33:44:55\",\"address_type\":\"random\",\"rssi\":{rssi}}}\n"
            )
        };
        let text: String = (0..100).map(|i| line(i * 1000, -40 - i as i16)).collect();
        std::fs::write(&path, text + "bad line\n").unwrap();
        // A channel smaller than the capture: the replay waits instead of dropping.
        let (tx, mut rx) = mpsc::channel(4);
        let (metrics, _) = Metrics::new();
        let task = tokio::spawn(run(
            path,
            0.0,
            Arc::from("till"),
            Clock::new(),
            tx,
            metrics.clone(),
            CancellationToken::new(),
        ));
        let mut got = Vec::new();
        while let Some(s) = rx.recv().await {
            assert_eq!(&*s.zone, "till");
            got.push(s.advert.rssi);
        }
        task.await.unwrap();
        assert_eq!(got, (0..100).map(|i| -40 - i as i16).collect::<Vec<_>>());
        assert_eq!(metrics.adverts.get(), 100);
        assert_eq!(metrics.replay_malformed.get(), 1);
    }
}
