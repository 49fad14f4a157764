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
    collections::BTreeMap,
    io::{BufWriter, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AddressType, Advert, Sighting};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertRecord {
    pub t_ms: u64,
    pub address: String,
    pub address_type: String,
    pub rssi: i16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manufacturer_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_data: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not an advert record: {0}")]
    Json(String),
    #[error("bad address {0:?} (want AA:BB:CC:DD:EE:FF)")]
    Address(String),
    #[error("bad address_type {0:?} (want public or random)")]
    AddressType(String),
    #[error("bad id {0:?} (want 4 hex digits)")]
    Id(String),
    #[error("bad hex data for {0}")]
    Hex(String),
}

impl AdvertRecord {
    pub fn from_advert(t_ms: u64, a: &Advert) -> Self {
        let hexmap = |v: &[(u16, Vec<u8>)]| {
            v.iter()
                .map(|(k, d)| (format!("{k:04x}"), hex::encode(d)))
                .collect()
        };
        Self {
            t_ms,
            address: a
                .address
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
            address_type: match a.address_type {
                AddressType::Public => "public",
                AddressType::Random => "random",
            }
            .into(),
            rssi: a.rssi,
            manufacturer_data: hexmap(&a.manufacturer_data),
            service_data: hexmap(&a.service_data),
        }
    }

    pub fn to_advert(&self) -> Result<Advert, RecordError> {
        let address = super::parse_address(&self.address)
            .ok_or_else(|| RecordError::Address(self.address.clone()))?;
        let address_type = match self.address_type.as_str() {
            "public" => AddressType::Public,
            "random" => AddressType::Random,
            other => return Err(RecordError::AddressType(other.into())),
        };
        let unhex = |m: &BTreeMap<String, String>| -> Result<Vec<(u16, Vec<u8>)>, RecordError> {
            m.iter()
                .map(|(k, v)| {
                    if k.len() != 4 {
                        return Err(RecordError::Id(k.clone()));
                    }
                    let id = u16::from_str_radix(k, 16).map_err(|_| RecordError::Id(k.clone()))?;
                    let d = hex::decode(v).map_err(|_| RecordError::Hex(k.clone()))?;
                    Ok((id, d))
                })
                .collect()
        };
        Ok(Advert {
            address,
            address_type,
            rssi: self.rssi,
            manufacturer_data: unhex(&self.manufacturer_data)?,
            service_data: unhex(&self.service_data)?,
        })
    }

    pub fn parse_line(line: &str) -> Result<(u64, Advert), RecordError> {
        let r: AdvertRecord =
            serde_json::from_str(line).map_err(|e| RecordError::Json(e.to_string()))?;
        Ok((r.t_ms, r.to_advert()?))
    }
}

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
