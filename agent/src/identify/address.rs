//! What kind of BLE device address an advert came from (Bluetooth Core, Vol 6, Part B, 1.3).
//!
//! A public address and a static random address stay with a device, so a member's device can be
//! imported by address. A resolvable private address (RPA) changes every ~15 minutes and only the
//! device's IRK links it to the device; a non-resolvable private address links to nothing.

use crate::sources::AddressType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Public,
    /// Random, top two bits `11`.
    StaticRandom,
    /// Random, top two bits `01`: `prand (24 bits) ‖ hash (24 bits)`.
    ResolvablePrivate,
    /// Random, top two bits `00`.
    NonResolvablePrivate,
    /// Random, top two bits `10`: reserved by the specification; treated as unidentifiable.
    Reserved,
}

impl AddressKind {
    /// Whether the address identifies a device by itself.
    pub fn is_stable(self) -> bool {
        matches!(self, AddressKind::Public | AddressKind::StaticRandom)
    }
}

/// Classifies `address` (most significant byte first) by its type and, for random addresses, the
/// two most significant bits.
pub fn classify(address: &[u8; 6], address_type: AddressType) -> AddressKind {
    match address_type {
        AddressType::Public => AddressKind::Public,
        AddressType::Random => match address[0] >> 6 {
            0b11 => AddressKind::StaticRandom,
            0b01 => AddressKind::ResolvablePrivate,
            0b00 => AddressKind::NonResolvablePrivate,
            _ => AddressKind::Reserved,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_addresses_are_classified_by_their_top_two_bits() {
        let kind = |b0: u8| classify(&[b0, 1, 2, 3, 4, 5], AddressType::Random);
        assert_eq!(kind(0xC0), AddressKind::StaticRandom);
        assert_eq!(kind(0xFF), AddressKind::StaticRandom);
        assert_eq!(kind(0x70), AddressKind::ResolvablePrivate);
        assert_eq!(kind(0x3F), AddressKind::NonResolvablePrivate);
        assert_eq!(kind(0x80), AddressKind::Reserved);
        assert_eq!(
            classify(&[0x70, 1, 2, 3, 4, 5], AddressType::Public),
            AddressKind::Public,
            "a public address has no type bits"
        );
        assert!(AddressKind::StaticRandom.is_stable());
        assert!(!AddressKind::ResolvablePrivate.is_stable());
    }
}
