//! Identify: who, if anyone, sent this advert.
//!
//! In: an [`Advert`] and the current [`MemberIndex`]. Out: the member, or "stranger". Pure and
//! allocation-free on the hot path: most adverts in a store are strangers' phones, so rejecting
//! them must cost one or two hash probes. Never stores or logs a stranger's address.

pub mod ibeacon;
pub mod qr;

use std::sync::Arc;

use instore_protocol::IdentifierKey;

use crate::{
    cache::{Member, MemberIndex},
    sources::{AddressType, Advert},
};

/// Apple's Bluetooth SIG company id, under which iBeacons are sent.
pub const COMPANY_APPLE: u16 = 0x004c;

#[derive(Debug, Clone, PartialEq)]
pub enum Identification {
    Member(Arc<Member>),
    Stranger,
}

/// Matches an advert against the member index: iBeacon frames first, then the device address when
/// it is stable (public or static random — a resolvable or non-resolvable private address changes
/// every few minutes and identifies nobody by itself).
pub fn identify(advert: &Advert, index: &MemberIndex) -> Identification {
    for (company, data) in &advert.manufacturer_data {
        if *company == COMPANY_APPLE
            && let Ok(b) = ibeacon::decode(data)
            && let Some(m) = index.lookup(&b.key())
        {
            return Identification::Member(m.clone());
        }
    }
    if is_stable_address(advert)
        && let Some(m) = index.lookup(&IdentifierKey::Mac(advert.address))
    {
        return Identification::Member(m.clone());
    }
    Identification::Stranger
}

/// Public addresses and static random addresses (top two bits `11`) stay with a device.
fn is_stable_address(a: &Advert) -> bool {
    match a.address_type {
        AddressType::Public => true,
        AddressType::Random => a.address[0] >> 6 == 0b11,
    }
}

#[cfg(test)]
mod tests {
    use instore_protocol::parse_ndjson;

    use super::*;
    use crate::sources::sim;

    fn index() -> MemberIndex {
        let (records, _) = parse_ndjson(
            r#"{"member_id":"B","display_name":"b","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2}]}
{"member_id":"P","display_name":"p","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#,
        );
        MemberIndex::build(1, &records)
    }

    fn advert(address: [u8; 6], address_type: AddressType, mfr: Vec<(u16, Vec<u8>)>) -> Advert {
        Advert {
            address,
            address_type,
            rssi: -60,
            manufacturer_data: mfr,
            service_data: vec![],
        }
    }

    #[test]
    fn a_members_ibeacon_identifies_the_member() {
        let uuid =
            instore_protocol::member::parse_uuid("f7826da6-4fa2-4e98-8024-bc5b71e0893e").unwrap();
        let a = advert(
            [0x40, 0, 0, 0, 0, 1],
            AddressType::Random,
            vec![(COMPANY_APPLE, sim::ibeacon_payload(&uuid, 1, 2, -59))],
        );
        assert!(matches!(identify(&a, &index()), Identification::Member(m) if m.member_id == "B"));
    }

    #[test]
    fn an_unknown_beacon_or_vendor_advert_is_a_stranger() {
        let uuid = [9u8; 16];
        let a = advert(
            [0x40, 0, 0, 0, 0, 1],
            AddressType::Random,
            vec![
                (COMPANY_APPLE, sim::ibeacon_payload(&uuid, 1, 2, -59)),
                (COMPANY_APPLE, vec![0x10, 0x05, 1, 2]),
                (0x0006, vec![1, 2, 3]),
            ],
        );
        assert_eq!(identify(&a, &index()), Identification::Stranger);
    }

    #[test]
    fn a_stable_address_identifies_but_a_private_one_with_the_same_bits_does_not() {
        let addr = [0xC0, 0x11, 0x22, 0x33, 0x44, 0x55];
        let public = advert(addr, AddressType::Public, vec![]);
        assert!(
            matches!(identify(&public, &index()), Identification::Member(m) if m.member_id == "P")
        );
        let static_random = advert(addr, AddressType::Random, vec![]);
        assert!(matches!(
            identify(&static_random, &index()),
            Identification::Member(_)
        ));
        let mut private = addr;
        private[0] = 0x40 | (addr[0] & 0x3f);
        let rpa = advert(private, AddressType::Random, vec![]);
        assert_eq!(identify(&rpa, &index()), Identification::Stranger);
    }
}
