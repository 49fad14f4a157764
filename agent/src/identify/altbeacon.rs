//! AltBeacon frames (Radius Networks' open specification): manufacturer data under any company id,
//! `BE AC | beacon id (20) | reference RSSI (i8) | manufacturer reserved (1)`.
//!
//! The 20-byte beacon id is conventionally a 16-byte UUID, a 2-byte major and a 2-byte minor —
//! many beacons send the same id as an iBeacon — so a member's `ibeacon` identifier matches an
//! AltBeacon with the same UUID, major and minor.

/// The beacon code that marks an AltBeacon.
pub const BEACON_CODE: [u8; 2] = [0xBE, 0xAC];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AltBeacon {
    pub id: [u8; 20],
    /// Average RSSI at 1 m, dBm.
    pub reference_rssi: i8,
    pub reserved: u8,
}

impl AltBeacon {
    pub fn uuid(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        u.copy_from_slice(&self.id[..16]);
        u
    }

    pub fn major(&self) -> u16 {
        u16::from_be_bytes([self.id[16], self.id[17]])
    }

    pub fn minor(&self) -> u16 {
        u16::from_be_bytes([self.id[18], self.id[19]])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AltBeaconError {
    #[error("not an AltBeacon (beacon code missing)")]
    NotAltBeacon,
    #[error("AltBeacon frame of {0} bytes, expected 24")]
    Length(usize),
}

/// Decodes manufacturer data (without the company id).
pub fn decode(data: &[u8]) -> Result<AltBeacon, AltBeaconError> {
    match data {
        [0xBE, 0xAC, rest @ ..] => {
            let rest: &[u8; 22] = rest
                .try_into()
                .map_err(|_| AltBeaconError::Length(data.len()))?;
            let mut id = [0u8; 20];
            id.copy_from_slice(&rest[..20]);
            Ok(AltBeacon {
                id,
                reference_rssi: rest[20] as i8,
                reserved: rest[21],
            })
        }
        _ => Err(AltBeaconError::NotAltBeacon),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_altbeacon_decodes_into_uuid_major_minor() {
        let frame = hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002c500").unwrap();
        let b = decode(&frame).unwrap();
        assert_eq!((b.major(), b.minor(), b.reference_rssi), (1, 2, -59));
        assert_eq!(b.uuid()[..2], [0xf7, 0x82]);
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        assert_eq!(decode(&[]), Err(AltBeaconError::NotAltBeacon));
        assert_eq!(decode(&[0x02, 0x15]), Err(AltBeaconError::NotAltBeacon));
        assert_eq!(decode(&[0xBE, 0xAC, 1]), Err(AltBeaconError::Length(3)));
        assert_eq!(
            decode(&[0xBE, 0xAC].repeat(13)),
            Err(AltBeaconError::Length(26))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error_without_panicking(data in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = decode(&data);
        }
    }
}
