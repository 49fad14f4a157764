//! Eddystone frames: service data of the 16-bit service UUID `0xFEAA`.
//!
//! UID (`0x00`): `tx power (i8) | namespace (10) | instance (6) | 2 reserved`, the reserved bytes
//! often omitted. EID (`0x30`): `tx power | ephemeral id (8)`. URL (`0x10`) and TLM (`0x20`) frames
//! identify nobody: they are recognised and reported as such, not as errors.

/// Eddystone's service UUID (16-bit).
pub const SERVICE_UUID: u16 = 0xFEAA;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eddystone {
    Uid {
        tx_power: i8,
        namespace: [u8; 10],
        instance: [u8; 6],
    },
    Eid {
        tx_power: i8,
        eid: [u8; 8],
    },
    /// A URL frame: carries a web address, not an identity.
    Url,
    /// Telemetry (battery, temperature): not an identity.
    Tlm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EddystoneError {
    #[error("empty Eddystone service data")]
    Empty,
    #[error("unknown Eddystone frame type {0:#04x}")]
    UnknownFrame(u8),
    #[error("Eddystone {frame} frame of {len} bytes")]
    Length { frame: &'static str, len: usize },
}

/// Decodes Eddystone service data (the bytes after the service UUID).
pub fn decode(data: &[u8]) -> Result<Eddystone, EddystoneError> {
    let len = data.len();
    match data {
        [] => Err(EddystoneError::Empty),
        [0x00, rest @ ..] => match rest {
            [tx, id @ ..] if id.len() == 16 || id.len() == 18 => {
                let mut namespace = [0u8; 10];
                let mut instance = [0u8; 6];
                namespace.copy_from_slice(&id[..10]);
                instance.copy_from_slice(&id[10..16]);
                Ok(Eddystone::Uid {
                    tx_power: *tx as i8,
                    namespace,
                    instance,
                })
            }
            _ => Err(EddystoneError::Length { frame: "UID", len }),
        },
        [0x30, tx, eid @ ..] if eid.len() == 8 => {
            let mut e = [0u8; 8];
            e.copy_from_slice(eid);
            Ok(Eddystone::Eid {
                tx_power: *tx as i8,
                eid: e,
            })
        }
        [0x30, ..] => Err(EddystoneError::Length { frame: "EID", len }),
        // URL: tx power, scheme, at least one byte of address; at most 17 bytes of URL.
        [0x10, _, _, ..] if len <= 20 => Ok(Eddystone::Url),
        [0x10, ..] => Err(EddystoneError::Length { frame: "URL", len }),
        // TLM: unencrypted (version 0) is 14 bytes, encrypted (version 1) 18.
        [0x20, 0x00, ..] if len == 14 => Ok(Eddystone::Tlm),
        [0x20, 0x01, ..] if len == 18 => Ok(Eddystone::Tlm),
        [0x20, ..] => Err(EddystoneError::Length { frame: "TLM", len }),
        [other, ..] => Err(EddystoneError::UnknownFrame(*other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_frame_decodes_with_or_without_its_reserved_bytes() {
        // Namespace edd1ebeac04e5defa017, instance 0000000004d2, -20 dBm at 0 m.
        let frame = hex::decode("00ecedd1ebeac04e5defa0170000000004d20000").unwrap();
        let want = Eddystone::Uid {
            tx_power: -20,
            namespace: hex::decode("edd1ebeac04e5defa017")
                .unwrap()
                .try_into()
                .unwrap(),
            instance: [0, 0, 0, 0, 0x04, 0xd2],
        };
        assert_eq!(decode(&frame), Ok(want));
        assert_eq!(decode(&frame[..18]), Ok(want));
    }

    #[test]
    fn an_eid_frame_decodes() {
        let frame = hex::decode("30f00102030405060708").unwrap();
        assert_eq!(
            decode(&frame),
            Ok(Eddystone::Eid {
                tx_power: -16,
                eid: [1, 2, 3, 4, 5, 6, 7, 8]
            })
        );
    }

    #[test]
    fn url_and_tlm_frames_are_recognised_not_errors() {
        // https://goo.gl/abc
        assert_eq!(
            decode(&hex::decode("10ec03676f6f2e676c2f616263").unwrap()),
            Ok(Eddystone::Url)
        );
        let tlm = hex::decode("20000bb8180000000100000002").unwrap();
        assert_eq!(decode(&[tlm.as_slice(), &[0]].concat()), Ok(Eddystone::Tlm));
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        assert_eq!(decode(&[]), Err(EddystoneError::Empty));
        assert_eq!(decode(&[0x50, 1]), Err(EddystoneError::UnknownFrame(0x50)));
        assert_eq!(
            decode(&[0x00, 1, 2]),
            Err(EddystoneError::Length {
                frame: "UID",
                len: 3
            })
        );
        assert_eq!(
            decode(&[0x30, 1, 2]),
            Err(EddystoneError::Length {
                frame: "EID",
                len: 3
            })
        );
        assert_eq!(
            decode(&[0x20, 0x00]),
            Err(EddystoneError::Length {
                frame: "TLM",
                len: 2
            })
        );
        assert!(decode(&[0x10; 30]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error_without_panicking(data in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = decode(&data);
        }
    }
}
