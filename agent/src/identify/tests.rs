use instore_protocol::{
    parse_ndjson,
    rotating::{day_key, frame, window_of_ms},
};

use super::*;
use crate::sources::{AddressType, sim};

/// 2024-10-04T01:00:00Z: day 20000, window 1,920,004.
const WALL: i64 = 20_000 * 86_400_000 + 3_600_000;
const SECRET: [u8; 32] = [5; 32];

fn index() -> MemberIndex {
    let day_keys: Vec<String> = (20_000..20_002)
        .map(|d| {
            format!(
                r#"{{"kind":"rotating_day_key","day":{d},"key":"{}"}}"#,
                hex::encode(day_key(&SECRET, d))
            )
        })
        .collect();
    let text = [
        r#"{"member_id":"B","display_name":"b","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"ibeacon","uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":2}]}"#.to_string(),
        r#"{"member_id":"P","display_name":"p","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#.to_string(),
        r#"{"member_id":"E","display_name":"e","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"eddystone_uid","namespace":"edd1ebeac04e5defa017","instance":"0000000004d2"}]}"#.to_string(),
        r#"{"member_id":"I","display_name":"i","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"irk","irk":"ec0234a357c8ad05341010a60a397d9b"}]}"#.to_string(),
        format!(
            r#"{{"member_id":"R","display_name":"r","tier":"gold","consent":{{"presence":true}},"identifiers":[{}]}}"#,
            day_keys.join(",")
        ),
    ]
    .join("\n");
    let (records, errors) = parse_ndjson(&text);
    assert!(errors.is_empty(), "{errors:?}");
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

const NRPA: [u8; 6] = [0x20, 0, 0, 0, 0, 1];

fn who(a: &Advert, idx: &MemberIndex) -> Option<String> {
    who_at(&mut Identify::new(WALL), a, idx, 0)
}

fn who_at(id: &mut Identify, a: &Advert, idx: &MemberIndex, at_ms: u64) -> Option<String> {
    match id.identify(a, idx, at_ms) {
        Identification::Member(m) => Some(m.member_id.clone()),
        Identification::Stranger => None,
    }
}

#[test]
fn a_members_ibeacon_identifies_the_member() {
    let uuid =
        instore_protocol::member::parse_uuid("f7826da6-4fa2-4e98-8024-bc5b71e0893e").unwrap();
    let a = advert(
        NRPA,
        AddressType::Random,
        vec![(COMPANY_APPLE, sim::ibeacon_payload(&uuid, 1, 2, -59))],
    );
    assert_eq!(who(&a, &index()).as_deref(), Some("B"));
}

#[test]
fn an_altbeacon_with_the_members_beacon_id_identifies_the_member() {
    let data = hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002c500").unwrap();
    let a = advert(NRPA, AddressType::Random, vec![(0x0118, data)]);
    assert_eq!(who(&a, &index()).as_deref(), Some("B"));
}

#[test]
fn an_eddystone_uid_identifies_the_member_and_url_or_tlm_frames_do_not() {
    let mut a = advert(NRPA, AddressType::Random, vec![]);
    a.service_data = vec![(
        0xFEAA,
        hex::decode("00ecedd1ebeac04e5defa0170000000004d20000").unwrap(),
    )];
    assert_eq!(who(&a, &index()).as_deref(), Some("E"));
    a.service_data = vec![(0xFEAA, hex::decode("10ec03676f6f2e676c2f616263").unwrap())];
    assert_eq!(who(&a, &index()), None);
}

#[test]
fn an_unknown_beacon_or_vendor_advert_is_a_stranger() {
    let a = advert(
        NRPA,
        AddressType::Random,
        vec![
            (COMPANY_APPLE, sim::ibeacon_payload(&[9u8; 16], 1, 2, -59)),
            (COMPANY_APPLE, vec![0x10, 0x05, 1, 2]),
            (0x0006, vec![1, 2, 3]),
            (0x0006, vec![0xBE, 0xAC, 3]),
        ],
    );
    assert_eq!(who(&a, &index()), None);
}

#[test]
fn a_stable_address_identifies_but_a_private_one_with_the_same_bits_does_not() {
    let addr = [0xC0, 0x11, 0x22, 0x33, 0x44, 0x55];
    let idx = index();
    assert_eq!(
        who(&advert(addr, AddressType::Public, vec![]), &idx).as_deref(),
        Some("P")
    );
    assert_eq!(
        who(&advert(addr, AddressType::Random, vec![]), &idx).as_deref(),
        Some("P")
    );
    let mut private = addr;
    private[0] = 0x40 | (addr[0] & 0x3f);
    assert_eq!(
        who(&advert(private, AddressType::Random, vec![]), &idx),
        None
    );
}

#[test]
fn an_rpa_resolves_through_the_members_irk_once_then_from_the_cache() {
    // The Core specification's sample: IRK ec02…7d9b, prand 708194 → hash 0dfbaa.
    let rpa = [0x70, 0x81, 0x94, 0x0d, 0xfb, 0xaa];
    let idx = index();
    let metrics = crate::metrics::Metrics::default();
    let mut id = Identify::new(WALL).with_metrics(&metrics);
    let a = advert(rpa, AddressType::Random, vec![]);
    assert_eq!(who_at(&mut id, &a, &idx, 0).as_deref(), Some("I"));
    let spent = id.rpa_aes_blocks;
    assert_eq!(who_at(&mut id, &a, &idx, 1_000).as_deref(), Some("I"));
    let stranger = advert([0x70, 0x81, 0x94, 0, 0, 1], AddressType::Random, vec![]);
    assert_eq!(who_at(&mut id, &stranger, &idx, 2_000), None);
    assert_eq!(who_at(&mut id, &stranger, &idx, 3_000), None);
    assert_eq!(id.rpa_aes_blocks, spent * 2, "one resolution per address");
    assert_eq!(
        (
            metrics.rpa_resolutions.get(),
            metrics.rpa_cache_hits.get(),
            metrics.rpa_resolved.get(),
            metrics.rpa_aes_blocks.get(),
        ),
        (2, 2, 1, spent * 2)
    );
    // prand's random part all ones: not an RPA, so no AES is spent on it.
    let invalid = advert([0x7f, 0xff, 0xff, 1, 2, 3], AddressType::Random, vec![]);
    assert_eq!(who_at(&mut id, &invalid, &idx, 4_000), None);
    assert_eq!(metrics.rpa_resolutions.get(), 2);
    // The same address read as public is not an RPA.
    assert_eq!(
        who_at(&mut id, &advert(rpa, AddressType::Public, vec![]), &idx, 0),
        None
    );
}

fn rotating_advert(window: u32) -> Advert {
    let key = day_key(&SECRET, instore_protocol::rotating::day_of_window(window));
    advert(
        NRPA,
        AddressType::Random,
        vec![(COMPANY_APPLE, frame(&key, window, -59).to_vec())],
    )
}

#[test]
fn a_rotating_id_identifies_the_member_in_its_window_and_one_either_side() {
    let idx = index();
    let mut id = Identify::new(WALL);
    let w = window_of_ms(WALL);
    for skew in [-1i64, 0, 1] {
        let a = rotating_advert((i64::from(w) + skew) as u32);
        assert_eq!(
            who_at(&mut id, &a, &idx, 0).as_deref(),
            Some("R"),
            "skew {skew}"
        );
    }
    assert_eq!(who_at(&mut id, &rotating_advert(w + 2), &idx, 0), None);
    assert_eq!(who_at(&mut id, &rotating_advert(w - 4), &idx, 0), None);
    // Half an hour later the old ID is stale and the new one works.
    let later = 30 * 60_000;
    assert_eq!(who_at(&mut id, &rotating_advert(w), &idx, later), None);
    assert_eq!(
        who_at(&mut id, &rotating_advert(w + 2), &idx, later).as_deref(),
        Some("R")
    );
}

#[test]
fn without_a_day_key_the_gateway_cannot_recognise_a_rotating_id() {
    // Keys were shipped for days 20000 and 20001: on day 20002 the member is a stranger.
    let idx = index();
    let day_after = 2 * 86_400_000;
    let mut id = Identify::new(WALL);
    let w = window_of_ms(WALL + day_after as i64);
    assert_eq!(who_at(&mut id, &rotating_advert(w), &idx, day_after), None);
}

#[test]
fn a_new_index_drops_what_was_derived_from_the_old_one() {
    let rpa = [0x70, 0x81, 0x94, 0x0d, 0xfb, 0xaa];
    let mut id = Identify::new(WALL);
    let a = advert(rpa, AddressType::Random, vec![]);
    assert_eq!(who_at(&mut id, &a, &index(), 0).as_deref(), Some("I"));
    let (records, _) = parse_ndjson(
        r#"{"member_id":"X","display_name":"x","tier":"gold","consent":{"presence":true},"identifiers":[{"kind":"irk","irk":"00000000000000000000000000000001"}]}"#,
    );
    assert_eq!(
        who_at(&mut id, &a, &MemberIndex::build(2, &records), 0),
        None
    );
}

#[test]
fn a_hundred_thousand_members_are_indexed_and_found() {
    // Built straight from records (no NDJSON), like a snapshot; the check is that every kind of
    // key is found and a stranger is not, at scale (a million is the benchmark: 15 s in a debug build).
    use instore_protocol::{Consent, Identifier, MemberRecord};
    let n: u32 = 100_000;
    let uuid = instore_protocol::member::format_uuid(&sim::SIM_UUID);
    let records: Vec<MemberRecord> = (0..n)
        .map(|i| MemberRecord {
            member_id: format!("M{i}"),
            display_name: "n".into(),
            tier: "member".into(),
            stage: None,
            tags: vec![],
            groups: vec![],
            consent: Consent {
                presence: true,
                marketing: false,
            },
            identifiers: vec![if i % 2 == 0 {
                Identifier::Ibeacon {
                    uuid: uuid.clone(),
                    major: (i >> 16) as u16,
                    minor: i as u16,
                }
            } else {
                let b = i.to_be_bytes();
                Identifier::Mac {
                    address: format!("C0:00:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3]),
                }
            }],
            birthday: None,
            last_purchase: None,
            last_visit: None,
        })
        .collect();
    let idx = MemberIndex::build(1, &records);
    assert_eq!(idx.len(), n as usize);
    let mut id = Identify::new(WALL);
    let beacon = advert(
        NRPA,
        AddressType::Random,
        vec![(
            COMPANY_APPLE,
            sim::ibeacon_payload(&sim::SIM_UUID, 1, 0x1234, -59),
        )],
    );
    let want = format!("M{}", (1u32 << 16) | 0x1234);
    assert_eq!(who_at(&mut id, &beacon, &idx, 0), Some(want));
    let b = 99_999u32.to_be_bytes();
    let mac = advert(
        [0xC0, 0, b[0], b[1], b[2], b[3]],
        AddressType::Random,
        vec![],
    );
    assert_eq!(who_at(&mut id, &mac, &idx, 0).as_deref(), Some("M99999"));
    let unknown = advert([0xC0, 1, 0, 0, 0, 1], AddressType::Random, vec![]);
    assert_eq!(who_at(&mut id, &unknown, &idx, 0), None);
    assert_eq!(
        idx.member("M50000").map(|m| m.tier.as_str()),
        Some("member")
    );
}
