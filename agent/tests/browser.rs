#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The clerk app in a real browser (Debian's chromium, headless, through chromedriver) against
//! the real `instore-agent` process with a simulated crowd of members: pairing with
//! `pair-tablet`, a live alert without reload, take and outcome, an agent restart the page rides
//! out and catches up after (renewing its token on the way, as it nears expiry), an unpaired
//! browser that sees no member data, and a revocation that locks the tablet out at once.
//!
//! Screenshots land in `$CARGO_TARGET_DIR/instore-test/screenshots/` (default `target/`).

mod support;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fantoccini::Client;
use serde_json::{Value, json};
use support::{
    browser::{browser, js, shot, wait_js},
    http::get_json,
    net::free_port,
    process::{AgentProcess, cli, import_members, run_command, write_agent_config},
    wait::{eventually, eventually_some},
};

const ADMIN: &str = "browser-test-admin";
const WAIT: Duration = Duration::from_secs(30);

/// The agent's config: a crowd of members arriving about every two seconds, every arrival an
/// alert, loopback HTTP on a fixed port (so a restart comes back where the page expects it).
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        r#"[[rules]]
name = "greet-member"
on = "arrive"
priority = "high"
message = "Greet {display_name} ({tier}) at the {zone}"
suggest = "Offer {display_name} the autumn preview"
"#,
    )
    .unwrap();
    let cfg = write_agent_config(
        dir,
        port,
        ADMIN,
        r#"[react]
rules = "rules.toml"

[[sources]]
kind = "sim"
zone = "entrance"
seed = 7
shoppers_per_minute = 30.0
member_share = 1.0
population = 200
mean_dwell_s = 20.0
"#,
    );
    // Head office's computed fields, as its change stream carries them: on every card.
    let members: String = instore_agent::sources::sim::population(200)
        .into_iter()
        .map(|mut m| {
            m.level = Some("top5".into());
            m.visits_12m = Some(7);
            m.last_visit = Some("2026-10-02".into());
            m.expected_next_visit = Some("2026-10-20".into());
            m.overdue_after = Some("2026-10-27".into());
            serde_json::to_string(&m).unwrap() + "\n"
        })
        .collect();
    let file = dir.join("members.ndjson");
    std::fs::write(&file, members).unwrap();
    import_members(&cfg, &file);
    cfg
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

struct Agent(AgentProcess);

impl Agent {
    async fn start(cfg: &Path, port: u16, log: &Path) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut run = run_command(cfg, "info");
        run.stdout(Stdio::null()).stderr(log);
        let agent = Agent(AgentProcess::spawn(run));
        let url = format!("http://127.0.0.1:{port}/healthz");
        eventually("agent healthz", WAIT, || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        agent
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(self) {
        self.0.stop();
    }
}

/// Alert ids on the page, in DOM order.
async fn card_ids(client: &Client) -> Vec<String> {
    let v = client
        .execute(
            "return Array.from(document.querySelectorAll('#alerts li.card')).map(l => l.dataset.id);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Waits for a card the page did not have in `known` and returns its id.
async fn new_card(client: &Client, what: &str, known: &HashSet<String>) -> String {
    let known: Vec<&String> = known.iter().collect();
    let script = format!(
        "const known = new Set({}); \
         const li = Array.from(document.querySelectorAll('#alerts li.card')) \
            .find(l => !known.has(l.dataset.id)); \
         return li ? li.dataset.id : null;",
        serde_json::to_string(&known).unwrap()
    );
    wait_js(client, what, &script)
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

async fn fetch_status(client: &Client, path: &str) -> u64 {
    client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status), () => done(0));",
            vec![json!(path)],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_paired_tablet_sees_takes_and_closes_alerts_live_and_rides_out_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let log = dir.path().join("agent.log");
    let agent = Agent::start(&cfg, port, &log).await;
    let base = format!("http://127.0.0.1:{port}");
    let (_driver, client) = browser(&dir.path().join("profile")).await;

    // Unpaired: the shell loads and shows how to pair; no member data, and the API refuses.
    client.goto(&format!("{base}/")).await.unwrap();
    wait_js(
        &client,
        "pairing instructions",
        "return !document.getElementById('unpaired').hidden;",
    )
    .await;
    // Alerts are being raised meanwhile; none may reach this browser.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(card_ids(&client).await.is_empty());
    assert_eq!(fetch_status(&client, "/api/alerts").await, 401);
    assert_eq!(fetch_status(&client, "/api/alerts/stream").await, 401);
    let html = client.source().await.unwrap();
    assert!(!html.contains("M000"), "member ids on an unpaired page");
    shot(&client, "01-unpaired").await;

    // Pair with the URL `pair-tablet` prints (the QR code encodes the same URL).
    let printed = cli(&cfg, &["pair-tablet", "--label", "till 2", "--ttl", "5m"]);
    assert!(
        printed.contains('█') || printed.contains('▀'),
        "no QR code printed"
    );
    let url = printed
        .lines()
        .find_map(|l| l.strip_prefix("Open on the tablet (or scan): "))
        .expect("pairing URL line")
        .trim()
        .to_owned();
    assert!(url.starts_with(&format!("{base}/pair?code=")), "{url}");
    client.goto(&url).await.unwrap();
    wait_js(
        &client,
        "clerk page after pairing",
        "return location.pathname === '/' && !document.getElementById('main').hidden \
                && document.getElementById('me').textContent.includes('till 2');",
    )
    .await;
    // The token is an HttpOnly cookie: page scripts cannot read it.
    let cookies = js(&client, "return document.cookie;").await;
    assert!(!cookies.as_str().unwrap().contains("instore_tablet"));
    js(&client, "window.__notReloaded = true;").await;

    // A member arrives (simulated): the alert appears without a reload, with the member card.
    let known: HashSet<String> = card_ids(&client).await.into_iter().collect();
    let id = new_card(&client, "a live alert", &known).await;
    let card = format!("document.querySelector('li.card[data-id=\"{id}\"]')");
    let text = js(&client, &format!("return {card}.textContent;")).await;
    let text = text.as_str().unwrap();
    assert!(text.contains("Greet "), "{text}");
    assert!(text.contains("Last purchase:"), "{text}");
    assert!(text.contains("top 5%"), "{text}");
    assert!(text.contains("7 visits in 12 months"), "{text}");
    assert!(text.contains("last visit 2026-10-02"), "{text}");
    assert!(
        text.contains("overdue ") && text.contains(" days"),
        "{text}"
    );
    // The rule's one suggested action, rendered for this member.
    let suggestion = js(
        &client,
        &format!("return {card}.querySelector('.suggest').textContent;"),
    )
    .await;
    let suggestion = suggestion.as_str().unwrap();
    assert!(
        suggestion.starts_with("Suggested: Offer ") && suggestion.ends_with(" the autumn preview"),
        "{suggestion}"
    );
    assert!(!suggestion.contains('{'), "{suggestion}");
    assert_eq!(
        js(&client, "return window.__notReloaded === true;").await,
        json!(true)
    );
    shot(&client, "02-live-alert").await;

    // Take it, then record the outcome.
    js(
        &client,
        &format!("{card}.querySelector('button.take').click();"),
    )
    .await;
    wait_js(
        &client,
        "taken",
        &format!("return {card}.dataset.status === 'taken' && {card}.textContent.includes('Taken by till 2');"),
    )
    .await;
    shot(&client, "03-taken").await;
    js(
        &client,
        &format!("{card}.querySelector('button.outcome-purchased').click();"),
    )
    .await;
    wait_js(
        &client,
        "closed",
        &format!("return {card}.dataset.status === 'closed';"),
    )
    .await;
    shot(&client, "04-purchased").await;
    let alerts: Value = get_json(&format!("{base}/api/alerts?limit=1000"), ADMIN).await;
    let ours = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(ours["status"], "closed");
    assert_eq!(ours["outcome"], "purchased");
    assert_eq!(ours["closed_by"], "till 2");

    // The agent restarts: the page shows it is offline, then reconnects by itself and shows
    // alerts raised by the new process, still without a reload.
    agent.stop();
    wait_js(
        &client,
        "offline banner",
        "return !document.getElementById('offline').hidden;",
    )
    .await;
    shot(&client, "05-offline").await;
    // While it is down, the tablet's token comes within an hour of expiring: past half its life,
    // so the page must renew it when it reconnects, and switch to the new one.
    let soon = now_ms() + 3_600_000;
    let conn = rusqlite::Connection::open(dir.path().join("data/tablets.db")).unwrap();
    assert_eq!(
        conn.execute("UPDATE tablets SET expires_ms = ?1", [soon])
            .unwrap(),
        1
    );
    drop(conn);
    let before: HashSet<String> = card_ids(&client).await.into_iter().collect();
    let agent = Agent::start(&cfg, port, &log).await;
    wait_js(
        &client,
        "back online",
        "return document.getElementById('offline').hidden;",
    )
    .await;
    let after_restart = new_card(&client, "an alert from the restarted agent", &before).await;
    let raised_by_new: Value = get_json(&format!("{base}/api/alerts?limit=1000"), ADMIN).await;
    assert!(
        raised_by_new
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == after_restart.as_str()),
        "the new card is from the restarted agent"
    );
    assert_eq!(
        js(&client, "return window.__notReloaded === true;").await,
        json!(true)
    );
    shot(&client, "06-caught-up-after-restart").await;
    // Renewed and switched: the token now runs a full lifetime again, and the page never knew
    // the token (it is an HttpOnly cookie the renewal replaced).
    let renewed = eventually_some(
        "the page renews the token and uses the new one",
        WAIT,
        || async {
            let list: Value = get_json(&format!("{base}/api/admin/tablets"), ADMIN).await;
            let expires = list[0]["expires_ms"].as_i64()?;
            (expires > now_ms() + 80 * 86_400_000).then_some(expires)
        },
    )
    .await;
    assert!(renewed > soon);
    assert_eq!(
        js(&client, "return window.__notReloaded === true;").await,
        json!(true)
    );

    // Revoked: the open stream is closed, the page falls back to the pairing instructions and
    // drops the member data it showed; the API refuses the cookie from now on.
    let list = cli(&cfg, &["tablets", "list"]);
    let tablet = list
        .lines()
        .find(|l| l.contains("till 2"))
        .and_then(|l| l.split_whitespace().next())
        .expect("tablet in list")
        .to_owned();
    cli(&cfg, &["tablets", "revoke", &tablet]);
    assert_eq!(fetch_status(&client, "/api/alerts").await, 401);
    wait_js(
        &client,
        "locked out after revoke",
        "return !document.getElementById('unpaired').hidden \
                && document.querySelectorAll('#alerts li.card').length === 0;",
    )
    .await;
    shot(&client, "07-revoked").await;

    client.close().await.unwrap();
    agent.stop();
}
