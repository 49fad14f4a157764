//! AltBeacon frames (Radius Networks' open specification): manufacturer data under any company id,
//! `BE AC | beacon id (20) | reference RSSI (i8) | manufacturer reserved (1)`. A frame without
//! the reserved byte is accepted (android-beacon-library parses it; the byte carries nothing an
//! identification needs); shorter or longer frames are refused.
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
    /// The manufacturer-reserved byte; `None` when the frame leaves it out.
    pub reserved: Option<u8>,
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
    #[error("AltBeacon frame of {0} bytes, expected 24 (or 23 without the reserved byte)")]
    Length(usize),
}

/// Decodes manufacturer data (without the company id).
pub fn decode(data: &[u8]) -> Result<AltBeacon, AltBeaconError> {
    match data {
        [0xBE, 0xAC, rest @ ..] if rest.len() == 21 || rest.len() == 22 => {
            let mut id = [0u8; 20];
            id.copy_from_slice(&rest[..20]);
            Ok(AltBeacon {
                id,
                reference_rssi: rest[20] as i8,
                reserved: rest.get(21).copied(),
            })
        }
        [0xBE, 0xAC, ..] => Err(AltBeaconError::Length(data.len())),
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
    fn a_frame_without_its_reserved_byte_decodes_like_one_with_it() {
        let full =
            decode(&hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002c500").unwrap())
                .unwrap();
        let bare = decode(&hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002c5").unwrap())
            .unwrap();
        assert_eq!(
            (bare.id, bare.reference_rssi),
            (full.id, full.reference_rssi)
        );
        assert_eq!((full.reserved, bare.reserved), (Some(0), None));
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        assert_eq!(decode(&[]), Err(AltBeaconError::NotAltBeacon));
        assert_eq!(decode(&[0x02, 0x15]), Err(AltBeaconError::NotAltBeacon));
        assert_eq!(decode(&[0xBE, 0xAC, 1]), Err(AltBeaconError::Length(3)));
        let short = hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002").unwrap();
        assert_eq!(decode(&short), Err(AltBeaconError::Length(22)));
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
