#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The BLE source end to end through btleplug and BlueZ's D-Bus API: a private system bus,
//! python-dbusmock's bluez5 template as bluetoothd, and the real `instore-agent` binary.
//! Skipped (with a message) only when python3-dbusmock is not installed.

mod support;

use std::time::Duration;

use instore_agent::sources::sim::{SIM_UUID, ibeacon_payload, population};
use support::{
    bluez::{Agent, Bluez, Bus, available, import_members, write_config},
    net::free_port,
    wait::wait_for,
};

const MEMBER: &str = "M000003";
const MEMBER_ADDR: &str = "C0:1B:5E:00:64:03";
const LONG: Duration = Duration::from_secs(30);

fn member_ndjson() -> String {
    population(5)
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect()
}

fn beacon() -> Vec<u8> {
    ibeacon_payload(&SIM_UUID, 100, 3, -59)
}

fn present(agent: &Agent) -> bool {
    agent.get("/api/presence").contains(MEMBER)
}

/// A bus with the stand-in running and adapter hci0, and an agent scanning it.
fn setup(extra_source: &str) -> (Bus, Bluez, Agent) {
    let mut bus = Bus::start();
    bus.start_bluez();
    let bluez = Bluez::new(&bus);
    bluez.add_adapter("hci0");
    let dir = bus.dir.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = write_config(&dir, "hci0", port, extra_source);
    import_members(&cfg, &member_ndjson());
    let agent = Agent::start(&bus, &cfg, port);
    wait_for("the agent to start discovery", LONG, || {
        bluez.discovering("hci0")
    });
    (bus, bluez, agent)
}

/// Advertises until `done` holds (adverts are cheap; the engine needs a couple).
fn advertise_until(bluez: &Bluez, path: &str, what: &str, mut done: impl FnMut() -> bool) {
    let mut rssi = -60i16;
    wait_for(what, LONG, || {
        rssi = if rssi == -60 { -61 } else { -60 };
        bluez.advertise(path, 0x004c, &beacon(), rssi);
        done()
    });
}

#[test]
fn a_member_device_appears_in_presence_and_departs_when_quiet() {
    if !available() {
        return;
    }
    let (_bus, bluez, agent) = setup("");
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    bluez.set_address_type(&dev, "random");
    advertise_until(&bluez, &dev, "the member to be present", || present(&agent));
    let body = agent.get("/api/presence");
    assert!(body.contains("\"zone\":\"entrance\""), "{body}");
    // Quiet: depart_after_s = 3 on the agent's own clock, with nothing else heard.
    wait_for("the member to depart", LONG, || !present(&agent));
    assert!(agent.metric("instore_agent_adverts_total") >= 2.0);
}

#[test]
fn rssi_offset_is_applied_at_the_source() {
    if !available() {
        return;
    }
    let (_bus, bluez, agent) = setup("rssi_offset = -7");
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    advertise_until(&bluez, &dev, "the member to be present", || present(&agent));
    let body: serde_json::Value = serde_json::from_str(&agent.get("/api/presence")).unwrap();
    let rssi = body
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member_id"] == MEMBER)
        .unwrap()["last_rssi"]
        .as_i64()
        .unwrap();
    // Adverts at -60/-61 dBm (and the stand-in's initial -79), calibrated by -7 dB.
    assert!(
        (-86..=-66).contains(&rssi) && rssi != -60 && rssi != -61,
        "{body}"
    );
}

#[test]
fn scanning_resumes_after_the_adapter_is_removed_and_re_added() {
    if !available() {
        return;
    }
    let (_bus, bluez, agent) = setup("");
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    advertise_until(&bluez, &dev, "the member to be present", || present(&agent));

    bluez.remove_adapter("hci0");
    wait_for("the member to depart", LONG, || !present(&agent));
    std::thread::sleep(Duration::from_millis(500));
    bluez.add_adapter("hci0");
    wait_for("a reconnect", LONG, || {
        agent.metric("instore_agent_ble_reconnects_total") >= 1.0
    });
    let before = agent.metric("instore_agent_adverts_total");
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    advertise_until(&bluez, &dev, "the member to be present again", || {
        present(&agent) && agent.metric("instore_agent_adverts_total") > before
    });
    // The loss and the recovery are events in the outbox, for head office to see.
    let states = scanner_states(&agent);
    assert!(
        states.starts_with(&["scanning".to_string(), "lost".to_string()])
            && states.contains(&"recovered".to_string()),
        "{states:?}"
    );
}

/// The `state` of every scanner event in the agent's outbox, in order (sync is off: nothing is
/// acknowledged away).
fn scanner_states(agent: &Agent) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        agent.dir.join("data/outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db.prepare("SELECT body FROM outbox ORDER BY seq").unwrap();
    let bodies: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    bodies
        .iter()
        .filter_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).ok()?;
            (v.get("adapter").is_some() && v.get("state").is_some())
                .then(|| v["state"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn the_watchdog_restarts_a_silent_scan_and_adverts_flow_again() {
    if !available() {
        return;
    }
    let (_bus, bluez, agent) = setup("watchdog_s = 1");
    // Nothing advertises: the watchdog fires and restarts discovery.
    wait_for("a watchdog restart", LONG, || {
        agent.metric("instore_agent_ble_watchdog_restarts_total") >= 1.0
    });
    wait_for("discovery to be restarted", LONG, || {
        bluez.discovering("hci0")
    });
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    advertise_until(&bluez, &dev, "the member to be present", || present(&agent));
    let states = scanner_states(&agent);
    assert!(
        states.contains(&"stalled".to_string()) && states.contains(&"recovered".to_string()),
        "{states:?}"
    );
}

#[test]
fn scanning_resumes_after_bluetoothd_restarts() {
    if !available() {
        return;
    }
    let (mut bus, _bluez, agent) = setup("");
    bus.stop_bluez();
    std::thread::sleep(Duration::from_millis(500));
    bus.start_bluez();
    let bluez = Bluez::new(&bus);
    bluez.add_adapter("hci0");
    wait_for("a reconnect", LONG, || {
        agent.metric("instore_agent_ble_reconnects_total") >= 1.0
    });
    let dev = bluez.add_device("hci0", MEMBER_ADDR);
    advertise_until(&bluez, &dev, "the member to be present", || present(&agent));
}

#[test]
fn a_missing_adapter_stops_startup_with_its_name() {
    if !available() {
        return;
    }
    let mut bus = Bus::start();
    bus.start_bluez();
    Bluez::new(&bus).add_adapter("hci0");
    let dir = bus.dir.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(&dir, "hci7", free_port(), "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instore-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"hci7\" not found") && err.contains("hci0"),
        "{err}"
    );
}
