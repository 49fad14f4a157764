//! A member with an iBeacon and the phone that carries it, for tests that play a source
//! through an agent's sighting queue.

use std::{sync::Arc, time::Duration};

use instore_agent::sources::{AddressType, Advert, Sighting};

/// The iBeacon UUID of the test members.
pub const UUID: &str = "f7826da6-4fa2-4e98-8024-bc5b71e0893e";

/// A member with presence consent and the iBeacon (major 1, `minor`), as an import line.
pub fn member_json(id: &str, name: &str, minor: u16) -> String {
    format!(
        r#"{{"member_id":"{id}","display_name":"{name}","tier":"gold","consent":{{"presence":true}},"identifiers":[{{"kind":"ibeacon","uuid":"{UUID}","major":1,"minor":{minor}}}]}}"#
    )
}

/// The iBeacon manufacturer data (after Apple's company id) of major 1, `minor`.
pub fn ibeacon_data(minor: u16) -> Vec<u8> {
    let mut data = hex::decode("0215f7826da64fa24e988024bc5b71e0893e0001").unwrap();
    data.extend_from_slice(&minor.to_be_bytes());
    data.push(0xc5);
    data
}

/// The advert of the phone carrying the beacon of `minor`.
pub fn ibeacon(minor: u16, rssi: i16) -> Advert {
    Advert {
        address: [0xC0, 0xFF, 0xEE, 0, (minor >> 8) as u8, minor as u8],
        address_type: AddressType::Random,
        rssi,
        manufacturer_data: vec![(0x004c, ibeacon_data(minor))],
        service_data: vec![],
    }
}

/// Plays the beacon of `minor` into `agent`'s sources, heard in `zone`, five times a second,
/// until the task is aborted.
pub fn keep_hearing(
    agent: &instore_agent::runtime::Agent,
    zone: &str,
    minor: u16,
    rssi: i16,
) -> tokio::task::JoinHandle<()> {
    let (input, clock) = agent.sighting_input();
    let zone: Arc<str> = Arc::from(zone);
    tokio::spawn(async move {
        loop {
            let _ = input.try_send(Sighting {
                zone: zone.clone(),
                at_ms: clock.now_ms(),
                advert: ibeacon(minor, rssi),
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
