#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A standby hub against the real head office: the hub is the real `instore-agent` binary
//! (replaying a member's beacon as its own adapter), the standby in-process (hearing the same
//! member). While the hub is up the standby forwards and raises nothing. The hub is killed
//! with SIGKILL: the standby takes over after `takeover_after_s`, the member is present there
//! and a tablet paired with the standby gets the alert. What the takeover repeats is what
//! ARCHITECTURE.md says, exactly: a second visit (the hub's stays open at head office: it
//! never sent the departure) and the arrival's alert raised again (cooldowns are per gateway).
//! The hub restarted asks the standby to hand back; its first event ends its old visit at head
//! office, the standby's visit ends by silence, and the hub opens a third, with a third alert,
//! as any hub restart does.

mod support;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use support::{
    beacon::{ibeacon_data, keep_hearing, member_json},
    hq::{Hq, SECRET, embedded, gateway_listening},
    http::{issue_pairing, pairing_code, redeem_pairing},
    net::free_port,
    process::{AgentProcess, run_command},
    sse::SseReader,
    wait::eventually,
};

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "store-one-lan-secret";
const ADMIN: &str = "failover-admin";
const TAKEOVER_S: u64 = 4;
const DEPART_S: u64 = 5;

const RULES: &str = "[[rules]]\nname = \"greet\"\non = \"arrive\"\nmessage = \"Welcome {display_name}\"\ncooldown_s = 3600\n";

/// The member's beacon every 200 ms for `secs`, in the replay format.
fn write_beacon_log(path: &Path, secs: u64) {
    let beacon = hex::encode(ibeacon_data(2));
    let mut text = String::new();
    for i in 0..secs * 5 {
        text.push_str(&format!(
            r#"{{"t_ms":{},"address":"C0:FF:EE:00:00:02","address_type":"random","rssi":-60,"manufacturer_data":{{"004c":"{beacon}"}}}}"#,
            i * 200
        ));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn write_hub_config(dir: &Path, hq: &Hq, port: u16, standby_port: u16) -> std::path::PathBuf {
    let token = instore_protocol::token::gateway_token(SECRET.as_bytes(), "s1", "gw-1").unwrap();
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    write_beacon_log(&dir.join("beacon.ndjson"), 600);
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "store_id = \"s1\"\ngateway_id = \"gw-1\"\ndata_dir = \"data\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\n\
             [[sources]]\nkind = \"replay\"\npath = \"beacon.ndjson\"\nzone = \"entrance\"\n\
             [hub]\nkey = \"{KEY}\"\npeers = [\"http://127.0.0.1:{standby_port}\"]\n\
             [react]\nrules = \"rules.toml\"\n[presence]\ndepart_after_s = {DEPART_S}\n\
             [sync]\nenabled = true\nbroker = \"{}\"\nhq_url = \"http://{}\"\ntoken = \"{token}\"\n\
             changes_poll_s = 1\nbatch_max_age_ms = 50\n",
            hq.mqtt_url(),
            hq.http
        ),
    )
    .unwrap();
    cfg
}

fn start_hub(cfg: &Path, log: &str) -> AgentProcess {
    let dir = cfg.parent().unwrap();
    let out = std::fs::File::create(dir.join(log)).unwrap();
    let mut cmd = run_command(cfg, "info");
    cmd.stdout(Stdio::null()).stderr(out);
    AgentProcess::spawn(cmd)
}

async fn count(hq: &Hq, gateway: &str, kind: &str) -> usize {
    let v = hq
        .get_json(&format!("/api/events?gateway={gateway}&limit=1000"))
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind && e["body"]["member_id"] == "M1")
        .count()
}

async fn store_today(hq: &Hq) -> serde_json::Value {
    let v = hq.get_json("/api/dashboard/stores").await;
    v["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store_id"] == "s1")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_hub_repeating_exactly_what_is_documented() {
    let hq = Hq::start(embedded()).await;
    hq.post_json("/api/members", member_json("M1", "Ms. Li", 2))
        .await;
    let (hub_port, standby_port) = (free_port(), free_port());
    let hub_dir = tempfile::tempdir().unwrap();
    let hub_cfg = write_hub_config(hub_dir.path(), &hq, hub_port, standby_port);
    let hub_base = format!("http://127.0.0.1:{hub_port}");
    let mut hub = Some(start_hub(&hub_cfg, "hub-1.log"));
    let hqr = &hq;
    eventually("the hub's arrival and alert", WAIT, || async {
        count(hqr, "gw-1", "alert_raised").await == 1
    })
    .await;

    let standby_dir = tempfile::tempdir().unwrap();
    std::fs::write(standby_dir.path().join("rules.toml"), RULES).unwrap();
    let standby = gateway_listening(
        standby_dir.path(),
        &hq,
        "gw-2",
        &format!("127.0.0.1:{standby_port}"),
        &format!(
            "admin_token = \"{ADMIN}\"\n[hub]\nrole = \"standby\"\nkey = \"{KEY}\"\n\
             peers = [\"{hub_base}\"]\ntakeover_after_s = {TAKEOVER_S}\n\
             [react]\nrules = \"rules.toml\"\n[presence]\ndepart_after_s = {DEPART_S}\n"
        ),
        1,
    )
    .await;
    // The standby's own adapter is played here: it hears the member too, at the fitting rooms.
    let standby_base = format!("http://{}", standby.http_addr);
    let sm = standby.metrics.clone();
    eventually("the member at the standby", WAIT, || async {
        sm.members_cached.get() == 1
    })
    .await;
    let feeding = keep_hearing(&standby, "fitting-rooms", 2, -80);
    let code = pairing_code(&issue_pairing(&standby_base, ADMIN, "till").await);
    let paired: serde_json::Value = redeem_pairing(&standby_base, &code)
        .await
        .json()
        .await
        .unwrap();
    let token = paired["token"].as_str().unwrap().to_owned();
    let mut tablet = SseReader::new(
        reqwest::get(format!("{standby_base}/api/alerts/stream?token={token}"))
            .await
            .unwrap(),
    );

    // While the hub is up, the standby forwards and acts on nothing.
    eventually("the standby's sightings forwarded", WAIT, || async {
        sm.relay_batches
            .get_or_create(&vec![("result", "accepted")])
            .get()
            > 5
    })
    .await;
    assert_eq!(sm.relay_acting.get(), 0);
    assert_eq!(sm.members_present.get(), 0);
    assert_eq!(count(&hq, "gw-2", "arrive").await, 0);

    // SIGKILL: the standby takes over once the hub has been quiet for takeover_after_s.
    hub.take().unwrap().0.kill().unwrap();
    let killed = Instant::now();
    eventually("the standby acting", WAIT, || async {
        sm.relay_acting.get() == 1
    })
    .await;
    let took = killed.elapsed();
    // The hub's last answer came up to a check interval (1 s) before the kill.
    assert!(
        took >= Duration::from_secs(TAKEOVER_S - 2),
        "took over after {took:?}, well before takeover_after_s"
    );
    assert!(
        took <= Duration::from_secs(TAKEOVER_S + 5),
        "took over after {took:?}, long after takeover_after_s"
    );
    assert_eq!(
        sm.relay_takeovers
            .get_or_create(&vec![("kind", "took_over")])
            .get(),
        1
    );
    // The member's presence continues at the standby, and its tablet hears of them.
    eventually("the member present at the standby", WAIT, || async {
        sm.members_present.get() == 1
    })
    .await;
    let (_, alert) = tablet.next_alert().await;
    assert_eq!(alert["member"]["member_id"], "M1");

    // Exactly the documented repeats: one more arrival and one more alert, from the standby;
    // two visits, both open (the hub's never got its departure).
    eventually("the standby's events at head office", WAIT, || async {
        count(hqr, "gw-2", "alert_raised").await == 1
    })
    .await;
    assert_eq!(count(&hq, "gw-1", "arrive").await, 1);
    assert_eq!(count(&hq, "gw-2", "arrive").await, 1);
    assert_eq!(count(&hq, "gw-1", "alert_raised").await, 1);
    assert_eq!(count(&hq, "gw-1", "depart").await, 0);
    let today = store_today(&hq).await;
    assert_eq!(today["visits_today"], 2, "{today}");
    assert_eq!(today["present"], 2, "{today}");
    assert_eq!(today["alerts_raised"], 2, "{today}");

    // The hub comes back: it asks the standby to hand back before it acts.
    let _hub = start_hub(&hub_cfg, "hub-2.log");
    eventually("the standby handing back", WAIT, || async {
        sm.relay_acting.get() == 0
    })
    .await;
    assert_eq!(
        sm.relay_takeovers
            .get_or_create(&vec![("kind", "handed_back")])
            .get(),
        1
    );
    // The standby's visit ends by silence; the hub's new process opens a third with a third
    // alert, as any restart of a hub does.
    eventually(
        "the standby's departure and the hub's new arrival",
        WAIT,
        || async {
            count(hqr, "gw-2", "depart").await == 1 && count(hqr, "gw-1", "alert_raised").await == 2
        },
    )
    .await;
    assert_eq!(count(&hq, "gw-1", "arrive").await, 2);
    assert_eq!(count(&hq, "gw-2", "arrive").await, 1);
    assert_eq!(count(&hq, "gw-2", "alert_raised").await, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sm.relay_acting.get(), 0, "handed back for good");
    // The hub's first visit ended at its restart (its new process's first event), the
    // standby's by silence: only the hub's new one is open.
    let today = store_today(&hq).await;
    assert_eq!(today["visits_today"], 3, "{today}");
    assert_eq!(today["present"], 1, "{today}");

    feeding.abort();
    standby.shutdown(Duration::from_secs(5)).await;
    hq.stop().await;
}
