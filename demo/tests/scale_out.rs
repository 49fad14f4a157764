//! Head office on two machines' worth of processes: two `instore-sync` instances sharing
//! Debian's Mosquitto (a shared subscription) and one PostgreSQL, ten simulated gateways in five
//! stores sending, one instance SIGKILLed mid-stream and started again.
//!
//! At the end head office — asked through either instance — holds every gateway's events
//! 1..=last exactly once with no gap, the agent's own outbox record agreeing; both instances
//! ingested; the once-only work's lease was held by exactly one instance and moved when its
//! holder died; and a member change imported through either instance reached every store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{path::PathBuf, time::Duration};

use instore_sync::store::testing::PgSchema;
use support::*;

const WAIT: Duration = Duration::from_secs(120);
const POPULATION: u32 = 400;
const STORES: usize = 5;
const GATEWAYS_PER_STORE: usize = 2;

struct Gateway {
    setup: AgentSetup,
    dir: PathBuf,
    /// Which instance's HTTP API the gateway fetches member changes from.
    hq: usize,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.setup.http_port)
    }

    async fn start(&self, hqs: &[Hq], setup: &AgentSetup, name: &str) -> Proc {
        let cfg = setup.write(&self.dir, &hqs[self.hq], ALERT_ON_EVERY_ARRIVAL, name);
        let p = Proc::spawn(
            &bin("instore-agent"),
            &["run", "--config", cfg.to_str().unwrap()],
            self.dir.join("agent.log"),
        );
        let url = self.url("/healthz");
        eventually(&format!("{}'s /healthz", setup.gateway), WAIT, || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        p
    }

    /// The display name of `member` in this gateway's member cache, if it holds the member.
    fn cached_name(&self, member: &str) -> Option<String> {
        let path = instore_agent::runtime::members_db(&self.dir.join("data"));
        let cache = instore_agent::cache::MemberCache::open(&path).ok()?;
        cache
            .load()
            .ok()?
            .into_iter()
            .find(|m| m.member_id == member)
            .map(|m| m.display_name)
    }
}

fn seq(g: &serde_json::Value, key: &str) -> u64 {
    g[key].as_u64().unwrap_or(0)
}

/// Head office's `last_seq` of each gateway in `ids`; `None` until it lists them all.
async fn marks(hq: &Hq, ids: &[String]) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(seq(&hq.gateway(id).await?, "last_seq"));
    }
    Some(out)
}

/// `Some` once every gateway is more than `by` past its mark in `from`.
async fn all_past(hq: &Hq, ids: &[String], from: &[u64], by: u64) -> Option<()> {
    let now = marks(hq, ids).await?;
    now.iter().zip(from).all(|(n, f)| *n > f + by).then_some(())
}

async fn lease_held(hq: &Hq) -> f64 {
    metric(&hq.metrics().await, "instore_sync_lease_held")
}

async fn ingested(hq: &Hq) -> f64 {
    metric(&hq.metrics().await, "instore_sync_events_received_total")
}

/// The member's record with a new display name, as one NDJSON line.
fn renamed(member: &str, name: &str) -> String {
    let mut m = instore_agent::sources::sim::population(POPULATION)
        .into_iter()
        .find(|m| m.member_id == member)
        .unwrap();
    // Consenting, with no home store and (`visited_days = 0`) no visit that counts: held by
    // every store.
    assert!(
        m.consent.presence && m.home_store.is_none() && m.stores.is_empty(),
        "{member} must be held chain-wide: {m:?}"
    );
    m.display_name = name.to_string();
    serde_json::to_string(&m).unwrap() + "\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_mid_stream_store_everything_once_and_share_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgSchema::new();
    let mosquitto = Mosquitto::start(dir.path()).await;
    // Both instances: the same broker, database, secret and token; their own data_dir and
    // (derived) MQTT client id.
    // Visits do not move members between stores here (`visited_days = 0`): every store keeps
    // the whole population, so every gateway keeps sending at the same pace.
    let extra = format!(
        "share_group = \"hq\"\n[database]\nurl = \"{}\"\n[membership]\nvisited_days = 0\n",
        pg.url()
    );
    let mut hqs = Vec::new();
    for name in ["hq-a", "hq-b"] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        hqs.push(start_hq_configured(&d, Some(&mosquitto.url()), &extra).await);
    }
    let imported = hqs[0].import_members(population_ndjson(POPULATION)).await;
    assert_eq!(imported["imported"], POPULATION, "{imported}");

    let mut gateways = Vec::new();
    for s in 0..STORES {
        for g in 0..GATEWAYS_PER_STORE {
            let mut setup =
                AgentSetup::new(&format!("store-{s}"), &format!("gw-{s}-{g}"), free_port());
            // Some 40 events a second across the ten gateways.
            setup.shoppers_per_minute = 90.0;
            setup.population = POPULATION;
            setup.mean_dwell_s = 4.0;
            setup.depart_after_s = 2;
            let d = dir.path().join(&setup.gateway);
            std::fs::create_dir_all(&d).unwrap();
            gateways.push(Gateway {
                setup,
                dir: d,
                hq: g,
            });
        }
    }
    let mut busy = Vec::new();
    for gw in &gateways {
        busy.push(gw.start(&hqs, &gw.setup, "agent.toml").await);
    }
    let ids: Vec<String> = gateways.iter().map(|g| g.setup.gateway.clone()).collect();
    let zero = vec![0; ids.len()];
    eventually("every gateway past seq 20", WAIT, || {
        all_past(&hqs[0], &ids, &zero, 20)
    })
    .await;

    // Exactly one instance runs the once-only work.
    let held = [lease_held(&hqs[0]).await, lease_held(&hqs[1]).await];
    assert_eq!(held.iter().sum::<f64>(), 1.0, "lease held by {held:?}");
    let holder = if held[0] == 1.0 { 0 } else { 1 };
    let other = 1 - holder;
    assert!(ingested(&hqs[0]).await > 0.0 && ingested(&hqs[1]).await > 0.0);

    // The holder dies mid-stream: the other takes the lease over and ingests alone.
    hqs[holder].stop("KILL");
    eventually("the lease taken over", WAIT, || async {
        (lease_held(&hqs[other]).await == 1.0).then_some(())
    })
    .await;
    let before = marks(&hqs[other], &ids).await.unwrap();
    eventually("every gateway moving on with one instance", WAIT, || {
        all_past(&hqs[other], &ids, &before, 20)
    })
    .await;
    hqs[holder].start_again().await;
    assert_eq!(
        lease_held(&hqs[holder]).await,
        0.0,
        "a restarted instance does not take a lease that is held"
    );
    eventually(
        "the restarted instance ingesting its share",
        WAIT,
        || async { (ingested(&hqs[holder]).await > 0.0).then_some(()) },
    )
    .await;

    // A member change through each instance reaches every store (both are held chain-wide).
    let changes = [
        ("M000001", "Renamed Through A"),
        ("M000002", "Renamed Through B"),
    ];
    for (i, (member, name)) in changes.iter().enumerate() {
        let r = hqs[i].import_members(renamed(member, name)).await;
        assert_eq!(r["imported"], 1, "{r}");
    }
    for gw in &gateways {
        for (member, name) in changes {
            eventually(
                &format!("{member} renamed at {}", gw.setup.gateway),
                WAIT,
                || async move { (gw.cached_name(member).as_deref() == Some(name)).then_some(()) },
            )
            .await;
        }
    }

    // Settle: stop the busy agents, drain each outbox with a quiet agent on the same data.
    for (p, gw) in busy.iter_mut().zip(&gateways) {
        p.signal("TERM");
        assert!(
            p.wait_exit(Duration::from_secs(20)).is_some(),
            "{} did not stop on SIGTERM",
            gw.setup.gateway
        );
    }
    let mut quiet = Vec::new();
    for gw in &gateways {
        let mut setup = gw.setup.clone();
        setup.shoppers_per_minute = 0.0001;
        quiet.push(gw.start(&hqs, &setup, "quiet.toml").await);
    }
    for gw in &gateways {
        eventually(
            &format!("{}'s outbox drained", gw.setup.gateway),
            WAIT,
            || async {
                let m = scrape(&gw.url("/metrics")).await;
                let connected = metric(&m, "instore_agent_mqtt_connected") == 1.0;
                let depth = metric(&m, "instore_agent_outbox_depth");
                let g = hqs[0].gateway(&gw.setup.gateway).await?;
                (connected && depth == 0.0 && seq(&g, "last_seq") == seq(&g, "events_received"))
                    .then_some(())
            },
        )
        .await;
    }
    for (p, gw) in quiet.iter_mut().zip(&gateways) {
        p.signal("TERM");
        assert!(
            p.wait_exit(Duration::from_secs(20)).is_some(),
            "{}'s quiet agent did not stop",
            gw.setup.gateway
        );
    }

    let (mut total, mut duplicates) = (0, 0);
    for gw in &gateways {
        let path = instore_agent::runtime::outbox_db(&gw.dir.join("data"));
        let (metrics, _registry) = instore_agent::metrics::Metrics::new();
        let outbox = instore_agent::outbox::Outbox::open(&path, metrics).unwrap();
        let stats = outbox.stats().await.unwrap();
        outbox.close().await;
        // Either instance answers, from the same database.
        let views = [
            hqs[0].gateway(&gw.setup.gateway).await.unwrap(),
            hqs[1].gateway(&gw.setup.gateway).await.unwrap(),
        ];
        let g = &views[0];
        let ctx = format!(
            "{}: agent issued 1..={}, {} unacknowledged; head office: {g}",
            gw.setup.gateway, stats.last_seq, stats.depth
        );
        assert!(stats.last_seq > 20, "{ctx}");
        assert_eq!(seq(g, "last_seq"), stats.last_seq, "{ctx}");
        assert_eq!(seq(g, "events_received"), stats.last_seq, "{ctx}");
        assert_eq!(g["gaps"], serde_json::json!([]), "{ctx}");
        assert_eq!(stats.depth, 0, "{ctx}");
        assert_eq!(g["store"], gw.setup.store.as_str(), "{ctx}");
        for key in ["last_seq", "events_received", "duplicates_dropped"] {
            assert_eq!(views[0][key], views[1][key], "{key}: {ctx}");
        }
        total += stats.last_seq;
        duplicates += seq(g, "duplicates_dropped");
    }
    let held = [lease_held(&hqs[0]).await, lease_held(&hqs[1]).await];
    assert_eq!(held.iter().sum::<f64>(), 1.0, "lease held by {held:?}");
    eprintln!(
        "scale-out: {total} events from {} gateways, each stored once; {duplicates} re-sent \
         events dropped as duplicates",
        gateways.len()
    );
}
