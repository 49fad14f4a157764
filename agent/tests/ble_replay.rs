#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The replay source and the `[record]` recorder through the real `instore-agent` binary: a
//! recorded NDJSON advert log makes a member present, and a recording agent writes the adverts it
//! replays back out in the same format.

mod support;

use std::{process::Command, time::Duration};

use instore_agent::sources::sim::{SIM_UUID, ibeacon_payload, population};
use support::{bluez::Agent, net::free_port, wait::wait_for};

fn start(dir: &std::path::Path, source: &str, extra: &str) -> Agent {
    let port = free_port();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = \"data\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"t0ken\"\n\
             [[sources]]\n{source}\n[presence]\narrive_sightings = 2\ndepart_after_s = 60\n{extra}"
        ),
    )
    .unwrap();
    let members: String = population(5)
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join("members.ndjson"), members).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_instore-agent"))
        .args(["members", "import"])
        .arg(dir.join("members.ndjson"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // No D-Bus: only BLE sources use it.
    Agent::start_on(None, &cfg, port)
}

fn log_line(t: u64, rssi: i16) -> String {
    format!(
        "{{\"t_ms\":{t},\"address\":\"C0:1B:5E:00:64:03\",\"address_type\":\"random\",\"rssi\":{rssi},\"manufacturer_data\":{{\"004c\":\"{}\"}}}}\n",
        hex::encode(ibeacon_payload(&SIM_UUID, 100, 3, -59))
    )
}

#[test]
fn a_recorded_log_replays_a_member_into_presence_and_recording_writes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("capture.ndjson");
    let mut text = String::from("not json: counted and skipped\n");
    for i in 0..5 {
        text += &log_line(1_000 + i * 200, -55 - i as i16);
    }
    std::fs::write(&log, text).unwrap();
    let agent = start(
        dir.path(),
        "kind = \"replay\"\npath = \"capture.ndjson\"\nspeed = 0\nzone = \"till\"",
        "[record]\npath = \"recorded.ndjson\"\nwrite_raw_addresses = true\n",
    );
    wait_for("the replayed member", Duration::from_secs(30), || {
        let body = agent.get("/api/presence");
        body.contains("M000003") && body.contains("\"zone\":\"till\"")
    });
    assert_eq!(agent.metric("instore_agent_replay_malformed_total"), 1.0);
    assert_eq!(agent.metric("instore_agent_adverts_total"), 5.0);
    let recorded = dir.path().join("recorded.ndjson");
    wait_for("the recording", Duration::from_secs(30), || {
        std::fs::read_to_string(&recorded).is_ok_and(|t| t.lines().count() == 5)
    });
    let text = std::fs::read_to_string(&recorded).unwrap();
    // The recording is itself a replayable log of the same adverts.
    let again = instore_agent::sources::replay::parse_ndjson(&text);
    assert_eq!(again.malformed, 0);
    let rssi: Vec<i16> = again.adverts.iter().map(|(_, a)| a.rssi).collect();
    assert_eq!(rssi, vec![-55, -56, -57, -58, -59]);
    assert!(text.contains("C0:1B:5E:00:64:03"));
}

#[test]
fn recording_without_the_acknowledgement_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = \"data\"\n[record]\npath = \"r.ndjson\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_instore-agent"))
        .args(["check-config"])
        .arg(dir.path().join("agent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("write_raw_addresses"));
}
