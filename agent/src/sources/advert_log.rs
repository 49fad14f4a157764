//! One line of the NDJSON advert log (the format `[record]` writes and `replay` reads; see
//! `record.rs`), also what forwarded sightings carry (`relay/wire.rs`). Pure, so the fuzz
//! targets compile it on their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AddressType, Advert, parse_address};

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
        let address = parse_address(&self.address)
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
