use instore_protocol::{
    parse_ndjson,
    rotating::{day_key, frame, window_of_ms},
};

use super::*;
use crate::{
    cache::{MemoryMembers, WindowKeys},
    sources::{AddressType, sim},
};

/// An index with its records and keys in memory.
struct Fixture {
    index: MemberIndex,
    records: MemoryMembers,
    keys: Arc<dyn WindowKeys>,
}

fn build(records: &[instore_protocol::MemberRecord]) -> Fixture {
    let m = MemoryMembers::new(records);
    Fixture {
        index: m.index(1),
        keys: Arc::new(m.keys().clone()),
        records: m,
    }
}

/// 2024-10-04T01:00:00Z: day 20000, window 1,920,004.
const WALL: i64 = 20_000 * 86_400_000 + 3_600_000;
const SECRET: [u8; 32] = [5; 32];

fn index() -> Fixture {
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
    build(&records)
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

fn who(a: &Advert, idx: &Fixture) -> Option<String> {
    who_at(&mut Identify::new(WALL), a, idx, 0)
}

fn who_at(id: &mut Identify, a: &Advert, idx: &Fixture, at_ms: u64) -> Option<String> {
    id.identify(a, &idx.index, at_ms)
        .and_then(|s| idx.records.get(s))
        .map(|m| m.member_id.clone())
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

/// Frames peers accept (Home Assistant's ibeacon-ble, android-beacon-library): a Jaalee iBeacon
/// with its battery byte after the 23, an AltBeacon without its reserved byte. A frame one byte
/// short of the spec identifies nobody.
#[test]
fn lenient_frames_identify_the_member_and_short_ones_nobody() {
    let uuid =
        instore_protocol::member::parse_uuid("f7826da6-4fa2-4e98-8024-bc5b71e0893e").unwrap();
    let idx = index();
    let mut jaalee = sim::ibeacon_payload(&uuid, 1, 2, -59);
    jaalee.push(0x64);
    let a = advert(NRPA, AddressType::Random, vec![(COMPANY_APPLE, jaalee)]);
    assert_eq!(who(&a, &idx).as_deref(), Some("B"));
    let bare = hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002c5").unwrap();
    let a = advert(NRPA, AddressType::Random, vec![(0x0118, bare)]);
    assert_eq!(who(&a, &idx).as_deref(), Some("B"));
    let mut short = sim::ibeacon_payload(&uuid, 1, 2, -59);
    short.pop();
    let a = advert(NRPA, AddressType::Random, vec![(COMPANY_APPLE, short)]);
    assert_eq!(who(&a, &idx), None);
    let short_alt = hex::decode("beacf7826da64fa24e988024bc5b71e0893e00010002").unwrap();
    let a = advert(NRPA, AddressType::Random, vec![(0x0118, short_alt)]);
    assert_eq!(who(&a, &idx), None);
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

/// Like [`who_at`], after swapping in the per-window tables for `at_ms` (waiting for the builder
/// thread, as the engine's tick would a second later).
fn who_ready(id: &mut Identify, a: &Advert, idx: &Fixture, at_ms: u64) -> Option<String> {
    id.prepare_and_wait(&idx.index, &idx.keys, at_ms);
    who_at(id, a, idx, at_ms)
}

#[test]
fn a_rotating_id_identifies_the_member_in_its_window_and_one_either_side() {
    let idx = index();
    let mut id = Identify::new(WALL);
    let w = window_of_ms(WALL);
    for skew in [-1i64, 0, 1] {
        let a = rotating_advert((i64::from(w) + skew) as u32);
        assert_eq!(
            who_ready(&mut id, &a, &idx, 0).as_deref(),
            Some("R"),
            "skew {skew}"
        );
    }
    assert_eq!(
        who_ready(&mut id, &rotating_advert(w + 2), &idx, 0),
        None,
        "w+2 is built ahead but not accepted yet"
    );
    assert_eq!(who_ready(&mut id, &rotating_advert(w - 4), &idx, 0), None);
    // Half an hour later the old ID is stale and the new one works.
    let later = 30 * 60_000;
    assert_eq!(who_ready(&mut id, &rotating_advert(w), &idx, later), None);
    assert_eq!(
        who_ready(&mut id, &rotating_advert(w + 2), &idx, later).as_deref(),
        Some("R")
    );
}

#[test]
fn window_tables_are_built_off_the_caller_and_swapped_in_ahead_of_the_window() {
    let metrics = Metrics::default();
    let idx = index();
    let mut id = Identify::new(WALL).with_metrics(&metrics);
    let w = window_of_ms(WALL);
    // Identifying never builds: before any tick there is no table and the member is unknown.
    assert_eq!(who_at(&mut id, &rotating_advert(w), &idx, 0), None);
    assert_eq!(metrics.id_table_builds.get(), 0);
    id.prepare_and_wait(&idx.index, &idx.keys, 0);
    assert_eq!(id.tables().windows(), vec![w - 1, w, w + 1, w + 2]);
    assert_eq!(metrics.id_table_builds.get(), 4);
    let here = std::thread::current().id();
    assert!(id.tables().built_on().iter().all(|t| *t != here));
    // The tick at the start of the next window only swaps: w+2's table, built a window ahead,
    // answers at once, before anything new is built.
    let next = 15 * 60_000;
    id.prepare(&idx.index, &idx.keys, next);
    assert_eq!(
        who_at(&mut id, &rotating_advert(w + 2), &idx, next).as_deref(),
        Some("R")
    );
    assert_eq!(who_at(&mut id, &rotating_advert(w - 1), &idx, next), None);
    id.prepare_and_wait(&idx.index, &idx.keys, next);
    assert_eq!(id.tables().windows(), vec![w, w + 1, w + 2, w + 3]);
    assert_eq!(metrics.id_table_builds.get(), 5, "only w+3 was new");
    assert_eq!(metrics.id_table_inline_builds.get(), 0);
    assert_eq!(metrics.id_table_late.get(), 0);
    assert!(metrics.id_table_build_us.get() > 0);
}

#[test]
fn a_late_table_leaves_the_previous_ones_working_and_is_counted() {
    let metrics = Metrics::default();
    let idx = index();
    let mut id = Identify::new(WALL).with_metrics(&metrics);
    let w = window_of_ms(WALL);
    id.prepare_and_wait(&idx.index, &idx.keys, 0);
    // Jump two windows at once: w+2 was built ahead, the new current w+2 is fine, but nothing
    // covers w+3/w+4 yet; the tables held still answer for w+1 and w+2.
    let jump = 2 * 15 * 60_000;
    id.prepare(&idx.index, &idx.keys, jump);
    assert_eq!(
        who_at(&mut id, &rotating_advert(w + 1), &idx, jump).as_deref(),
        Some("R")
    );
    assert_eq!(metrics.id_table_late.get(), 0);
    // Three windows further, nothing held covers the new window until the builder delivers.
    let far = 6 * 15 * 60_000;
    id.prepare(&idx.index, &idx.keys, far);
    assert_eq!(metrics.id_table_late.get(), 1);
    id.prepare_and_wait(&idx.index, &idx.keys, far);
    assert_eq!(
        who_at(&mut id, &rotating_advert(w + 6), &idx, far).as_deref(),
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
    assert_eq!(
        who_ready(&mut id, &rotating_advert(w), &idx, day_after),
        None
    );
}

/// Identity key of member "Q"'s Eddystone-EID beacon; head office keeps it, the gateway gets
/// temporary keys.
const EID_IK: [u8; 16] = [0x42; 16];

/// The index a gateway builds from head office's snapshot of an import holding `EID_IK`.
fn eid_index(served_at_ms: i64) -> Fixture {
    let (records, errors) = parse_ndjson(&format!(
        r#"{{"member_id":"Q","display_name":"q","tier":"gold","consent":{{"presence":true}},"identifiers":[{{"kind":"eddystone_eid_identity","identity_key":"{}","exponent":10}}]}}"#,
        hex::encode(EID_IK)
    ));
    assert!(errors.is_empty(), "{errors:?}");
    // What head office does before shipping (sync-server members::for_gateways), by hand here.
    let shipped: Vec<_> = records
        .into_iter()
        .map(|mut r| {
            r.identifiers = instore_protocol::eddystone_eid::shipped_epochs(served_at_ms)
                .map(|epoch| instore_protocol::Identifier::EddystoneEidTemp {
                    epoch,
                    key: hex::encode(instore_protocol::eddystone_eid::temporary_key(
                        &EID_IK, epoch,
                    )),
                    exponent: 10,
                })
                .collect();
            r
        })
        .collect();
    build(&shipped)
}

fn eid_advert(unix_s: u32) -> Advert {
    use instore_protocol::eddystone_eid::{eid_from_identity, frame};
    let mut a = advert(NRPA, AddressType::Random, vec![]);
    a.service_data = vec![(
        eddystone::SERVICE_UUID,
        frame(&eid_from_identity(&EID_IK, 10, unix_s), -4).to_vec(),
    )];
    a
}

#[test]
fn an_eddystone_eid_resolves_to_its_member_and_a_stale_one_does_not() {
    let idx = eid_index(WALL);
    let mut id = Identify::new(WALL);
    let now_s = (WALL / 1000) as u32;
    assert_eq!(
        who_ready(&mut id, &eid_advert(now_s), &idx, 0).as_deref(),
        Some("Q")
    );
    // The beacon's clock ten minutes either way still matches (windows w-1..=w+1).
    assert_eq!(
        who_ready(&mut id, &eid_advert(now_s - 600), &idx, 0).as_deref(),
        Some("Q")
    );
    assert_eq!(
        who_ready(&mut id, &eid_advert(now_s + 600), &idx, 0).as_deref(),
        Some("Q")
    );
    // An EID from two hours ago (a recording replayed, a tracker's copy) identifies nobody.
    assert_eq!(who_ready(&mut id, &eid_advert(now_s - 7200), &idx, 0), None);
    // Nor does a beacon with another identity key.
    let mut other = eid_advert(now_s);
    other.service_data[0].1[2..].copy_from_slice(
        &instore_protocol::eddystone_eid::eid_from_identity(&[1; 16], 10, now_s),
    );
    assert_eq!(who_ready(&mut id, &other, &idx, 0), None);
}

#[test]
fn past_the_shipped_epochs_an_eid_identifies_nobody() {
    // Keys for this epoch and the next: two epochs (2 x 65,536 s) later the gateway has no key.
    let idx = eid_index(WALL);
    let later_ms = 2 * 65_536_000;
    let mut id = Identify::new(WALL);
    let then_s = ((WALL + later_ms as i64) / 1000) as u32;
    assert_eq!(
        who_ready(&mut id, &eid_advert(then_s), &idx, later_ms),
        None
    );
    // An hour in, still within the current epoch or the next: recognised.
    assert_eq!(
        who_ready(
            &mut id,
            &eid_advert(then_s - 2 * 65_536 + 3600),
            &idx,
            3_600_000
        )
        .as_deref(),
        Some("Q")
    );
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
    assert_eq!(who_at(&mut id, &a, &build(&records), 0), None);
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
            ..Default::default()
        })
        .collect();
    let idx = build(&records);
    assert_eq!(idx.index.len(), n as usize);
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
        idx.records.by_id("M50000").map(|m| m.tier.as_str()),
        Some("member")
    );
}
