//! The product end to end: real `instore-sync` and `instore-agent` processes over loopback, a real
//! embedded broker, real SQLite files, processes stopped with SIGTERM and killed with SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Reads one SSE `alert` event's data from a streaming response.
async fn next_sse_alert(resp: &mut reqwest::Response, buf: &mut String) -> serde_json::Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if frame
                .lines()
                .any(|l| l.trim() == "event: alert" || l.trim() == "event:alert")
            {
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("an SSE frame within the deadline")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The agent's alert stream at `base`, as a clerk's tablet opens it, once the agent answers.
async fn alert_stream(base: &str) -> reqwest::Response {
    let client = reqwest::Client::new();
    eventually("the alert stream", WAIT, || {
        let c = client.clone();
        let url = format!("{base}/api/alerts/stream");
        async move {
            c.get(url)
                .bearer_auth("admin-test-token")
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_walking_in_alerts_a_clerk_and_every_event_reaches_head_office_once() {
    let dir = tempfile::tempdir().unwrap();
    let hq = start_hq(dir.path()).await;
    let report = hq.import_members(population_ndjson(50)).await;
    assert_eq!(report["imported"], 50);

    let agent_dir = dir.path().join("store");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let port = free_port();
    let cfg = agent_config(
        &agent_dir,
        &hq,
        "store-1",
        "gw-1",
        port,
        ALERT_ON_EVERY_ARRIVAL,
    );
    let mut agent = Proc::spawn(
        &bin("instore-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        agent_dir.join("agent.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // A clerk's tablet listens for alerts.
    let mut stream = alert_stream(&base).await;
    let mut buf = String::new();
    let alert = next_sse_alert(&mut stream, &mut buf).await;
    assert_eq!(alert["rule"], "any-arrival");
    let member_id = alert["member"]["member_id"].as_str().unwrap().to_string();
    assert!(member_id.starts_with('M'), "{alert}");

    // The member is listed as present, and unpaired clients see nothing.
    let present: Vec<serde_json::Value> = client
        .get(format!("{base}/api/presence"))
        .bearer_auth("admin-test-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!present.is_empty());
    assert!(
        present
            .iter()
            .all(|p| p["zone"] == "entrance" && p["since"].as_i64().unwrap() > 0)
    );
    let anonymous = client
        .get(format!("{base}/api/presence"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(!anonymous.text().await.unwrap().contains(&member_id));

    // Events reach head office.
    eventually("events at head office", WAIT, || async {
        hq.gateway("gw-1")
            .await
            .filter(|g| g["events_received"].as_u64() > Some(3))
    })
    .await;

    // SIGTERM: a clean stop within the deadline.
    agent.signal("TERM");
    let status = agent
        .wait_exit(Duration::from_secs(15))
        .expect("stopped within 15 s");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        agent.log_text()
    );

    // After a restart the agent drains what was left; head office holds 1..=last_seq exactly once.
    let mut agent = Proc::spawn(
        &bin("instore-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        agent_dir.join("agent.log"),
    );
    let g = eventually("a gap-free sequence at head office", WAIT, || async {
        hq.gateway("gw-1").await.filter(|g| {
            let last = g["last_seq"].as_u64().unwrap_or(0);
            last > 5
                && g["online"] == true
                && g["events_received"].as_u64() == Some(last)
                && g["gaps"].as_array().is_some_and(|a| a.is_empty())
        })
    })
    .await;
    assert_eq!(g["store"], "store-1");
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(15)).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_again_and_again_mid_stream_loses_and_doubles_nothing_at_head_office() {
    let dir = tempfile::tempdir().unwrap();
    let hq = start_hq(dir.path()).await;
    hq.import_members(population_ndjson(50)).await;
    let agent_dir = dir.path().join("store");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let port = free_port();
    let cfg = agent_config(
        &agent_dir,
        &hq,
        "store-k",
        "gw-k",
        port,
        ALERT_ON_EVERY_ARRIVAL,
    );
    let args = ["run", "--config", cfg.to_str().unwrap()];

    let mut last_seen = 0;
    for round in 0..5 {
        let mut agent = Proc::spawn(&bin("instore-agent"), &args, agent_dir.join("agent.log"));
        // Let it produce and send for a while, then pull the plug.
        let g = eventually("progress at head office", WAIT, || async {
            hq.gateway("gw-k")
                .await
                .filter(|g| g["last_seq"].as_u64().unwrap_or(0) > last_seen)
        })
        .await;
        last_seen = g["last_seq"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        agent.signal("KILL");
        agent.wait_exit(Duration::from_secs(5)).expect("killed");
    }

    // A final run drains everything the killed runs left in the outbox.
    let mut agent = Proc::spawn(&bin("instore-agent"), &args, agent_dir.join("agent.log"));
    let g = eventually("every event at head office exactly once", WAIT, || async {
        hq.gateway("gw-k").await.filter(|g| {
            let last = g["last_seq"].as_u64().unwrap_or(0);
            last > last_seen
                && g["events_received"].as_u64() == Some(last)
                && g["gaps"].as_array().is_some_and(|a| a.is_empty())
        })
    })
    .await;
    assert!(g["last_seq"].as_u64().unwrap() >= 6, "{g}");
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(15));
}

#[test]
fn the_demo_ends_with_a_json_line_where_everything_sent_arrived() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instore-demo"))
        .args(["demo", "--for", "25", "--stores", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    let sent = summary["events_sent"].as_u64().unwrap();
    assert!(sent > 0, "{summary}");
    assert_eq!(summary["events_at_hq"].as_u64(), Some(sent), "{summary}");
    assert!(summary["alerts"].as_u64().unwrap() > 0, "{summary}");
    // Head office ranked the population from the demo's purchases: 300 members, top 2 % = 6.
    assert_eq!(summary["pyramid"]["top2"], 6, "{summary}");
    let ranked: u64 = summary["pyramid"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(ranked, 300, "{summary}");
    assert!(stdout.contains("clerk page: http://127.0.0.1:"), "{stdout}");
}

/// Alerts on every arrival, and once more for platinum members, whose greeting differs.
const ARRIVAL_AND_PLATINUM: &str = r#"
[[rules]]
name = "any-arrival"
on = "arrive"
priority = "normal"
message = "{display_name} ({tier}) arrived"
cooldown_s = 3600

[[rules]]
name = "platinum-arrival"
on = "arrive"
tiers = ["platinum"]
priority = "high"
message = "Platinum: {display_name}"
cooldown_s = 3600
"#;

fn purchase_line(id: &str, member: &str, amount: i64, at: &str) -> String {
    format!(
        r#"{{"purchase_id":"{id}","member_id":"{member}","store_id":"store-1","at":"{at}","amount_minor":{amount},"currency":"EUR","items":[{{"sku":"S1","category":"linen","qty":1,"amount_minor":{amount}}}]}}"#
    )
}

/// The CIDR loop closed: a purchase booked at head office re-ranks the member, the new tier
/// travels down the store's change stream, and the running gateway's rules act on it at the
/// member's next arrival.
#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_at_head_office_changes_a_members_tier_on_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    // A re-rank as soon as the buyers change, so the test need not wait out the minute between.
    let hq = start_hq_configured(dir.path(), None, "[compute]\nrerank_min_interval_s = 0").await;
    let population = instore_agent::sources::sim::population(20);
    assert_eq!(
        hq.import_members(population_ndjson(20)).await["imported"],
        20
    );
    // The member under test: imported as a plain member, consenting, so the store tracks them.
    let target = population
        .iter()
        .find(|m| m.tier == "member" && m.consent.presence)
        .unwrap()
        .member_id
        .clone();
    // Everyone bought something; the target least of all. 20 members: top2 is one member.
    let now = jiff::Timestamp::now();
    let at = now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap()
        .to_string();
    let lines: Vec<String> = population
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let amount = if m.member_id == target {
                100
            } else {
                10_000 + i as i64 * 100
            };
            purchase_line(&format!("P{i}"), &m.member_id, amount, &at)
        })
        .collect();
    assert_eq!(
        hq.post("/api/purchases", lines.join("\n")).await["imported"],
        20
    );
    let path = format!("/api/members/{target}");
    let before = eventually("the target ranked as rest", WAIT, || async {
        hq.get(&path)
            .await
            .filter(|m| m["spend_12m_minor"] == 100 && m["level"] == "rest")
    })
    .await;
    assert_eq!(before["tier"], "member", "{before}");

    let agent_dir = dir.path().join("store");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let port = free_port();
    let mut setup = AgentSetup::new("store-1", "gw-1", port);
    setup.population = 20;
    // Short visits, so the target comes back soon after the promotion.
    setup.mean_dwell_s = 4.0;
    setup.depart_after_s = 2;
    let cfg = setup.write(&agent_dir, &hq, ARRIVAL_AND_PLATINUM, "agent.toml");
    let mut agent = Proc::spawn(
        &bin("instore-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        agent_dir.join("agent.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let mut stream = alert_stream(&base).await;
    let mut buf = String::new();
    // The gateway knows the target with the old tier: an arrival, no platinum greeting.
    loop {
        let alert = next_sse_alert(&mut stream, &mut buf).await;
        if alert["member"]["member_id"] != target.as_str() {
            continue;
        }
        assert_eq!(alert["rule"], "any-arrival", "{alert}");
        assert_eq!(alert["member"]["tier"], "member", "{alert}");
        break;
    }

    // The purchase that makes the target the chain's best customer.
    let big = purchase_line("P-big", &target, 5_000_000, &now.to_string());
    assert_eq!(hq.post("/api/purchases", big).await["imported"], 1);
    let after = eventually("the target promoted at head office", WAIT, || async {
        hq.get(&path).await.filter(|m| m["tier"] == "platinum")
    })
    .await;
    assert_eq!(after["level"], "top2", "{after}");

    // At the next arrival the gateway greets a platinum member.
    let greeted = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let alert = next_sse_alert(&mut stream, &mut buf).await;
            if alert["member"]["member_id"] == target.as_str() {
                break alert;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no alert for {target} after the promotion\n{}",
            agent.log_text()
        )
    });
    assert_eq!(greeted["rule"], "platinum-arrival", "{greeted}");
    assert_eq!(greeted["member"]["tier"], "platinum", "{greeted}");
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(15)).is_some());
}
