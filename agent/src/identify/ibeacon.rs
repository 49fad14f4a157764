//! iBeacon frames: Apple manufacturer data `02 15 | uuid(16) | major(2) | minor(2) | tx power(1)`,
//! big-endian, 23 bytes after the company id. Longer frames are read for their first 23 bytes, as
//! Home Assistant's ibeacon-ble does: some beacons (Jaalee) append a battery byte. Shorter ones
//! are refused.

use instore_protocol::IdentifierKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IBeacon {
    pub uuid: [u8; 16],
    pub major: u16,
    pub minor: u16,
    /// Calibrated RSSI at 1 m, dBm.
    pub tx_power: i8,
}

impl IBeacon {
    pub fn key(&self) -> IdentifierKey {
        IdentifierKey::Ibeacon {
            uuid: self.uuid,
            major: self.major,
            minor: self.minor,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IBeaconError {
    #[error("not an iBeacon frame (type/length bytes {0:#04x} {1:#04x})")]
    NotIBeacon(u8, u8),
    #[error("iBeacon frame of {0} bytes, expected at least 23")]
    Length(usize),
}

/// Decodes Apple manufacturer data (without the company id).
pub fn decode(data: &[u8]) -> Result<IBeacon, IBeaconError> {
    match data {
        [0x02, 0x15, rest @ ..] => {
            let rest: &[u8; 21] = rest
                .get(..21)
                .and_then(|r| r.try_into().ok())
                .ok_or(IBeaconError::Length(data.len()))?;
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&rest[..16]);
            Ok(IBeacon {
                uuid,
                major: u16::from_be_bytes([rest[16], rest[17]]),
                minor: u16::from_be_bytes([rest[18], rest[19]]),
                tx_power: rest[20] as i8,
            })
        }
        [a, b, ..] => Err(IBeaconError::NotIBeacon(*a, *b)),
        _ => Err(IBeaconError::Length(data.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_from_a_real_beacon_decodes() {
        // Kontakt.io beacon, uuid f7826da6-4fa2-4e98-8024-bc5b71e0893e, major 1, minor 2, -59 dBm.
        let frame = hex::decode("0215f7826da64fa24e988024bc5b71e0893e00010002c5").unwrap();
        let b = decode(&frame).unwrap();
        assert_eq!((b.major, b.minor, b.tx_power), (1, 2, -59));
        assert_eq!(b.uuid[0], 0xf7);
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        assert_eq!(decode(&[]), Err(IBeaconError::Length(0)));
        assert_eq!(decode(&[0x02]), Err(IBeaconError::Length(1)));
        assert_eq!(
            decode(&[0x10, 0x05, 1]),
            Err(IBeaconError::NotIBeacon(0x10, 0x05))
        );
        assert_eq!(decode(&[0x02, 0x15, 0, 0]), Err(IBeaconError::Length(4)));
        let short = hex::decode("0215f7826da64fa24e988024bc5b71e0893e00010002").unwrap();
        assert_eq!(decode(&short), Err(IBeaconError::Length(22)));
    }

    #[test]
    fn a_frame_with_trailing_bytes_is_read_for_its_first_23() {
        // Jaalee: the iBeacon frame followed by a battery byte (24 bytes after the company id).
        let spec = hex::decode("0215f7826da64fa24e988024bc5b71e0893e00010002c5").unwrap();
        let mut jaalee = spec.clone();
        jaalee.push(0x64);
        assert_eq!(decode(&jaalee), decode(&spec));
        assert_eq!(decode(&jaalee).unwrap().tx_power, -59);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error_without_panicking(data in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = decode(&data);
        }
    }
}
