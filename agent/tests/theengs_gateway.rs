#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A real Theengs Gateway (PyPI `TheengsGateway` 1.8.0, in the venv `scripts/setup` makes)
//! on the BlueZ stand-in, publishing `BTtoMQTT` with advertisement data on to Debian's
//! Mosquitto, feeding the agent's `mqtt` source (in-process, synced to the real head office):
//! a member's beacon makes them present in the zone configured for that receiver.
//!
//! Theengs is told `-pt home/entrance-pi/BTtoMQTT`, so the receiver id the agent reads off the
//! topic is `entrance-pi`; `-padv 1` keeps the raw `manufacturerdata` the agent decodes; one
//! long scan (`-sd 3600 -tb 0`), as its default 7 s scans with 5 s gaps drop adverts; `-s
//! active`, as passive scanning needs BlueZ's AdvertisementMonitor, which the stand-in lacks.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{
    beacon::{ibeacon_data, member_json},
    bluez::{self, Bluez, Bus},
    hq::{Hq, agent_synced_to, embedded},
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(60);

/// The venv's python, or why there is none (then the test fails under CI, skips elsewhere).
fn theengs_python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/gateway-venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import TheengsGateway"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = "Theengs Gateway is not installed (scripts/setup-theengs-gateway installs it)";
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

struct Theengs(Child, PathBuf);

impl Drop for Theengs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("Theengs Gateway's log:\n{log}");
        }
    }
}

fn start_theengs(py: &Path, bus: &Bus, dir: &Path, port: u16) -> Theengs {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = std::fs::File::create(dir.join("theengs.log")).unwrap();
    let port = port.to_string();
    let conf = dir.join("theengsgw.conf");
    let child = Command::new(py)
        .args(["-m", "TheengsGateway", "-c"])
        .arg(&conf)
        .args(["-H", "127.0.0.1", "-P", &port, "-a", "hci0", "-s", "active"])
        .args(["-D", "0", "-padv", "1", "-pa", "1"])
        .args([
            "-pt",
            "home/entrance-pi/BTtoMQTT",
            "-Lt",
            "home/entrance-pi/LWT",
        ])
        .args(["-sd", "3600", "-tb", "0"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Theengs(child, dir.join("theengs.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_beacon_heard_by_theengs_gateway_is_present_in_that_receivers_zone() {
    if !bluez::available() {
        return;
    }
    let Some(py) = theengs_python() else {
        return;
    };
    let mut bus = Bus::start();
    bus.start_bluez();
    let bz = Bluez::new(&bus);
    bz.add_adapter("hci0");
    let lan_dir = tempfile::tempdir().unwrap();
    let lan = instore_testkit::mosquitto::Mosquitto::start(lan_dir.path()).await;

    let hq = Hq::start(embedded()).await;
    hq.post_json("/api/members", member_json("M1", "Ms. Li", 2))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_synced_to(
        dir.path(),
        &hq,
        &format!(
            "[[sources]]\nkind = \"mqtt\"\nbroker = \"{}\"\nzone = \"floor\"\n\
             [[sources.receivers]]\nid = \"entrance-pi\"\nzone = \"entrance\"\n",
            lan.url()
        ),
    )
    .await;
    let m = agent.metrics.clone();
    eventually("the member at the gateway", WAIT, || async {
        m.members_cached.get() == 1
    })
    .await;

    let theengs = start_theengs(&py, &bus, lan_dir.path(), lan.port);
    // Theengs connects to the broker, then starts discovery on the stand-in's adapter.
    eventually("Theengs Gateway scanning", WAIT, || async {
        bz.discovering("hci0")
    })
    .await;
    // bleak logs a traceback for the stand-in's new device (its mistyped empty data), once;
    // from the fix on, it reads every change.
    let phone = bz.add_device("hci0", "C0:FF:EE:00:00:02");
    bz.fix_advertising_types(&phone);
    bz.set_address_type(&phone, "random");
    let data = ibeacon_data(2);
    let hqr = &hq;
    eventually("an arrival at the entrance", WAIT, || async {
        bz.advertise(&phone, 0x004c, &data, -60);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = hqr.get_json("/api/events?gateway=gw-1&limit=1000").await;
        v.as_array().unwrap().iter().any(|e| {
            e["type"] == "arrive"
                && e["body"]["member_id"] == "M1"
                && e["body"]["zone"] == "entrance"
        })
    })
    .await;
    assert!(
        m.remote_reports.get() >= 2,
        "Theengs' reports reached the agent"
    );
    assert_eq!(m.members_present.get(), 1);
    drop(theengs);

    agent.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
