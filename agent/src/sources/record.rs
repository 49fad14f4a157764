//! The NDJSON advert log: the format the replay source reads and `[record]` writes.
//!
//! One JSON object per line:
//! `{"t_ms":1200,"address":"C0:11:22:33:44:55","address_type":"random","rssi":-61,
//!   "manufacturer_data":{"004c":"0215…"},"service_data":{"feaa":"00e2…"}}`
//! - `t_ms`: milliseconds on any monotonic clock (only differences matter on replay);
//! - `address`: most significant byte first; `address_type`: `public` or `random`;
//! - `manufacturer_data`: company id (4 hex digits) → the bytes after the company id, hex;
//! - `service_data`: 16-bit service UUID (4 hex digits) → data, hex. Both may be omitted.
//!
//! Recording (`[record] path`, off by default) puts the raw address of every phone in range on
//! disk — members or not — so the config refuses it unless `write_raw_addresses = true`. It is for
//! reproducing a store's problem at a desk, never for normal operation.
//!
//! In: sightings from every source (when recording). Out: the same sightings to the engine
//! (dropped and counted when the engine is behind, like a source), one line per advert to disk.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use tokio::sync::mpsc;

use super::Sighting;
pub use super::advert_log::{AdvertRecord, RecordError};
use crate::metrics::Metrics;

/// Opens the record file (appending) and returns the sender the sources should use: every
/// sighting is written, then forwarded to `engine`. Runs on a blocking thread of its own; ends
/// when every source has dropped its sender.
pub fn spawn_recorder(
    path: &Path,
    engine: mpsc::Sender<Sighting>,
    metrics: Metrics,
    tracker: &tokio_util::task::TaskTracker,
) -> std::io::Result<mpsc::Sender<Sighting>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    tracing::warn!(
        path = %path.display(),
        "recording every advert with raw Bluetooth addresses (debugging only; delete the file after use)"
    );
    let (tx, mut rx) = mpsc::channel::<Sighting>(engine.max_capacity());
    tracker.spawn_blocking(move || {
        let mut out = BufWriter::new(file);
        let mut failed = false;
        while let Some(s) = rx.blocking_recv() {
            if !failed {
                let rec = AdvertRecord::from_advert(s.at_ms, &s.advert);
                let line = serde_json::to_string(&rec).unwrap_or_default();
                if let Err(e) = writeln!(out, "{line}").and_then(|()| {
                    // Flush when idle so the file is useful while the agent runs.
                    if rx.is_empty() { out.flush() } else { Ok(()) }
                }) {
                    tracing::error!(error = %e, "advert recording failed; recording stopped");
                    failed = true;
                }
            }
            match engine.try_send(s) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.adverts_dropped.inc();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        let _ = out.flush();
    });
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{AddressType, Advert};

    #[test]
    fn a_recorded_advert_reads_back_identically() {
        let a = Advert {
            address: [0xc0, 0x11, 0x22, 0x33, 0x44, 0x55],
            address_type: AddressType::Random,
            rssi: -61,
            manufacturer_data: vec![(0x004c, vec![0x02, 0x15, 0xab])],
            service_data: vec![(0xfeaa, vec![0x00, 0xee])],
        };
        let line = serde_json::to_string(&AdvertRecord::from_advert(1200, &a)).unwrap();
        assert_eq!(
            line,
            r#"{"t_ms":1200,"address":"C0:11:22:33:44:55","address_type":"random","rssi":-61,"manufacturer_data":{"004c":"0215ab"},"service_data":{"feaa":"00ee"}}"#
        );
        assert_eq!(AdvertRecord::parse_line(&line).unwrap(), (1200, a));
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let ok = r#"{"t_ms":1,"address":"C0:11:22:33:44:55","address_type":"public","rssi":-61}"#;
        assert!(AdvertRecord::parse_line(ok).is_ok());
        for (line, want) in [
            ("not json", "not an advert record"),
            (
                r#"{"t_ms":1,"address":"C0:11:22","address_type":"public","rssi":-61}"#,
                "bad address",
            ),
            (
                r#"{"t_ms":1,"address":"C0:11:22:33:44:55","address_type":"rpa","rssi":-61}"#,
                "bad address_type",
            ),
            (
                r#"{"t_ms":1,"address":"C0:11:22:33:44:55","address_type":"public","rssi":-61,"manufacturer_data":{"4c":"00"}}"#,
                "bad id",
            ),
            (
                r#"{"t_ms":1,"address":"C0:11:22:33:44:55","address_type":"public","rssi":-61,"service_data":{"feaa":"0g"}}"#,
                "bad hex",
            ),
            (
                r#"{"t_ms":-1,"address":"C0:11:22:33:44:55","address_type":"public","rssi":-61}"#,
                "not an advert record",
            ),
        ] {
            let err = AdvertRecord::parse_line(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn recording_is_refused_unless_raw_addresses_are_acknowledged() {
        let base = "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = \"/tmp/x\"\n[record]\npath = \"a.ndjson\"\n";
        let err = crate::config::AgentConfig::parse(base, "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write_raw_addresses"), "{err}");
        let ok = format!("{base}write_raw_addresses = true\n");
        assert!(crate::config::AgentConfig::parse(&ok, "a.toml").is_ok());
    }
}
