#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Clerk alerts survive an agent restart: the real `instore-agent` process with a simulated crowd
//! and an arrival rule raises alerts; it is stopped (SIGTERM, or SIGKILL as a crash or power cut
//! would) and started again on the same data dir. The alerts are listed as they stood, tablets
//! keep acting on them, and an alert left open past its expiry while the agent was down gets one
//! `alert_expired` event in the outbox — not a second one after another restart.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use instore_agent::{metrics::Metrics, outbox::Outbox};
use instore_protocol::EventBody;
use serde_json::Value;
use support::{
    http::{issue_pairing, pairing_code, redeem_pairing},
    net::free_port,
    process::{AgentProcess, import_members, run_command, write_agent_config, write_sim_members},
};

const TOKEN: &str = "restart-admin-token";
const POPULATION: u32 = 60;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cfg: PathBuf,
    base: String,
}

fn setup(expire_after_s: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let port = free_port();
    std::fs::write(
        root.join("rules.toml"),
        "[[rules]]\nname = \"greet\"\non = \"arrive\"\nmessage = \"Greet {display_name}\"\n\
         cooldown_s = 3600\n",
    )
    .unwrap();
    let cfg = write_agent_config(
        &root,
        port,
        TOKEN,
        &format!(
            r#"[[sources]]
kind = "sim"
zone = "entrance"
seed = 11
shoppers_per_minute = 120.0
member_share = 1.0
population = {POPULATION}
mean_dwell_s = 60.0

[react]
rules = "rules.toml"

[alerts]
expire_after_s = {expire_after_s}

[sync]
enabled = false
"#
        ),
    );
    import_members(&cfg, &write_sim_members(&root, POPULATION));
    Setup {
        _dir: dir,
        root,
        cfg,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The agent process (killed on drop if the test fails before stopping it).
struct Agent(AgentProcess);

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

impl Agent {
    async fn start(s: &Setup, run: u32) -> Agent {
        let log = std::fs::File::create(s.root.join(format!("agent-{run}.log"))).unwrap();
        let mut cmd = run_command(&s.cfg, "info");
        cmd.stdout(Stdio::null()).stderr(log);
        let agent = Agent(AgentProcess::spawn(cmd));
        for _ in 0..600 {
            if let Ok(r) = client().get(format!("{}/healthz", s.base)).send().await
                && r.status().is_success()
            {
                return agent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent did not start; see agent-{run}.log");
    }

    fn stop(self, how: Stop) {
        match how {
            Stop::Term => self.0.stop(),
            Stop::Kill => {
                let mut p = self.0;
                p.0.kill().unwrap();
                p.0.wait().unwrap();
            }
        }
    }
}

async fn alerts(s: &Setup) -> Vec<Value> {
    let v: Value = client()
        .get(format!("{}/api/alerts?limit=1000", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.get("alerts")
        .cloned()
        .unwrap_or(v)
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("alert {id} not listed in {list:?}"))
}

/// Polls `/api/alerts` until `pick` chooses alerts.
async fn wait_for_alerts<T>(s: &Setup, pick: impl Fn(&[Value]) -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(t) = pick(&alerts(s).await) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the expected alerts never appeared");
}

async fn pair(s: &Setup, label: &str) -> String {
    let code = pairing_code(&issue_pairing(&s.base, TOKEN, label).await);
    let body: Value = redeem_pairing(&s.base, &code).await.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn step(s: &Setup, token: &str, id: &str, what: &str, body: Value) -> u16 {
    client()
        .post(format!("{}/api/alerts/{id}/{what}", s.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The outbox's lifecycle events for `id`, read from the file while no agent runs.
async fn events_of(data: &Path, id: &str) -> Vec<&'static str> {
    let outbox = Outbox::open(&data.join("outbox.db"), Metrics::default()).unwrap();
    let events = outbox.pending(0, 1_000_000).await.unwrap();
    outbox.close().await;
    events
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::AlertRaised { alert_id, .. } if alert_id == id => Some("raised"),
            EventBody::AlertTaken { alert_id, .. } if alert_id == id => Some("taken"),
            EventBody::AlertOutcome { alert_id, .. } if alert_id == id => Some("outcome"),
            EventBody::AlertDismissed { alert_id, .. } if alert_id == id => Some("dismissed"),
            EventBody::AlertExpired { alert_id, .. } if alert_id == id => Some("expired"),
            _ => None,
        })
        .collect()
}

async fn alerts_keep_their_state_and_can_be_acted_on_after(how: Stop) {
    let s = setup(3600);
    let agent = Agent::start(&s, 1).await;
    let till = pair(&s, "till 1").await;
    let (a, b) = wait_for_alerts(&s, |l| {
        let id = |i: usize| l.get(i)?["id"].as_str().map(str::to_owned);
        Some((id(0)?, id(1)?))
    })
    .await;
    assert_eq!(step(&s, &till, &a, "take", Value::Null).await, 200);
    agent.stop(how);

    let agent = Agent::start(&s, 2).await;
    let list = alerts(&s).await;
    let (la, lb) = (find(&list, &a), find(&list, &b));
    assert_eq!(la["status"], "taken", "{la}");
    assert_eq!(la["taken_by"], "till 1");
    assert_eq!(
        la["member"]["display_name"].as_str().map(str::is_empty),
        Some(false)
    );
    assert_eq!(lb["status"], "open", "{lb}");
    // The paired tablet's token outlived the restart, and it still owns the alert it took.
    let other = pair(&s, "till 2").await;
    assert_eq!(
        step(
            &s,
            &other,
            &a,
            "outcome",
            serde_json::json!({"outcome": "purchased"})
        )
        .await,
        409
    );
    assert_eq!(
        step(
            &s,
            &till,
            &a,
            "outcome",
            serde_json::json!({"outcome": "purchased"})
        )
        .await,
        200
    );
    assert_eq!(step(&s, &other, &b, "take", Value::Null).await, 200);
    assert_eq!(step(&s, &till, &b, "take", Value::Null).await, 409);
    agent.stop(how);

    let agent = Agent::start(&s, 3).await;
    let list = alerts(&s).await;
    assert_eq!(find(&list, &a)["status"], "closed");
    assert_eq!(find(&list, &a)["outcome"], "purchased");
    assert_eq!(find(&list, &b)["status"], "taken");
    assert_eq!(find(&list, &b)["taken_by"], "till 2");
    agent.stop(Stop::Term);
    assert_eq!(
        events_of(&s.root.join("data"), &a).await,
        ["raised", "taken", "outcome"]
    );
    assert_eq!(
        events_of(&s.root.join("data"), &b).await,
        ["raised", "taken"]
    );
}

#[tokio::test]
async fn alerts_keep_their_state_across_a_sigterm_restart() {
    alerts_keep_their_state_and_can_be_acted_on_after(Stop::Term).await;
}

#[tokio::test]
async fn alerts_keep_their_state_across_a_sigkill_restart() {
    alerts_keep_their_state_and_can_be_acted_on_after(Stop::Kill).await;
}

#[tokio::test]
async fn an_alert_that_ran_out_while_the_agent_was_down_expires_once() {
    const EXPIRE_S: u64 = 4;
    let s = setup(EXPIRE_S);
    let agent = Agent::start(&s, 1).await;
    // An alert raised under two seconds ago is still open when the agent dies right after.
    let id = wait_for_alerts(&s, |l| {
        let fresh = instore_agent::now_ms() - 2000;
        l.iter()
            .rev()
            .find(|a| a["status"] == "open" && a["raised_at_ms"].as_i64().unwrap_or(0) > fresh)
            .and_then(|a| a["id"].as_str().map(str::to_owned))
    })
    .await;
    agent.stop(Stop::Kill);
    assert_eq!(events_of(&s.root.join("data"), &id).await, ["raised"]);
    tokio::time::sleep(Duration::from_secs(EXPIRE_S + 1)).await;

    let agent = Agent::start(&s, 2).await;
    // Expired during start, before the HTTP server answered.
    assert_eq!(find(&alerts(&s).await, &id)["status"], "expired");
    let admin_take = step(&s, TOKEN, &id, "take", Value::Null).await;
    assert_eq!(admin_take, 409, "an expired alert cannot be taken");
    agent.stop(Stop::Kill);
    assert_eq!(
        events_of(&s.root.join("data"), &id).await,
        ["raised", "expired"]
    );

    let agent = Agent::start(&s, 3).await;
    assert_eq!(find(&alerts(&s).await, &id)["status"], "expired");
    agent.stop(Stop::Term);
    assert_eq!(
        events_of(&s.root.join("data"), &id).await,
        ["raised", "expired"],
        "a second restart does not expire it again"
    );
}
