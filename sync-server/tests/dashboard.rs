//! The dashboard in Debian's chromium (headless, through chromedriver) against the real head
//! office loaded with a generated chain: members of three stores, a year of their purchases (a
//! third of them lapsed), then a second import that moves some members up the pyramid, and
//! today's visits, alerts and holdouts from the stores' gateways. Each view must show the
//! numbers its API returns; screenshots of each view, on a laptop and a tablet width, land in
//! `$CARGO_TARGET_DIR/instore-test/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ADMIN, FakeGateway, Hq, WAIT, embedded};
use fantoccini::{Client, Locator};
use instore_protocol::{AlertOutcomeKind, AlertPriority, Event, EventBody};
use instore_testkit::{
    browser::{browser, js, screenshots_dir, wait_js},
    hq::VIEWER,
    wait::eventually_some,
};
use serde_json::Value;

const DAY: i64 = 86_400_000;
const MEMBERS: usize = 240;
const STORES: [&str; 3] = ["store-a", "store-b", "store-c"];
const TIERS: [&str; 4] = ["member", "silver", "gold", "platinum"];

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn id(i: usize) -> String {
    format!("M{i:03}")
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// Members with a home store and a tier; one name needs CSV quoting, one would be a formula in
/// a spreadsheet and one would be markup in a careless page.
fn members() -> String {
    (0..MEMBERS)
        .map(|i| {
            let name = match i {
                // Lapsed (i % 3 == 0) and not among today's visitors (below 60): overdue.
                63 => "Li, \"Wei\"".to_string(),
                66 => "=HYPERLINK(\"x\")".to_string(),
                69 => "<b>Bold</b>".to_string(),
                _ => format!("Member {i}"),
            };
            serde_json::json!({
                "member_id": id(i),
                "display_name": name,
                "tier": TIERS[i % 4],
                "home_store": STORES[i % 3],
                "consent": {"presence": true},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// A year of purchases: member `i` buys every 14–42 days; one in three stopped 150 days ago
/// (overdue now). Returns the NDJSON and the total spend.
fn purchases(now: i64) -> (String, i64) {
    let mut out = String::new();
    let mut total = 0;
    for i in 0..MEMBERS {
        let every = 14 + (i % 5) as i64 * 7;
        let last = if i % 3 == 0 { 150 } else { 1 + (i % 7) as i64 };
        let amount = 1000 + (i * 37 % 50) as i64 * 500 + if i < 10 { 200_000 } else { 0 };
        let mut d = 360;
        let mut n = 0;
        while d >= last {
            let at = now - d * DAY;
            out += &format!(
                r#"{{"purchase_id":"P{i}-{n}","member_id":"{}","store_id":"{}","at":"{}","amount_minor":{amount},"currency":"EUR","items":[]}}"#,
                id(i),
                STORES[i % 3],
                rfc3339(at)
            );
            out.push('\n');
            total += amount;
            d -= every;
            n += 1;
        }
    }
    (out, total)
}

fn sum(v: &Value, key: &str) -> i64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l[key].as_i64().unwrap())
        .sum()
}

/// JavaScript's `toLocaleString("en-US")` of an integer.
fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The percentage a page cell shows ("12.3%"), as a share.
fn pct(text: &str) -> f64 {
    text.trim_end_matches('%').parse::<f64>().unwrap() / 100.0
}

async fn text(c: &Client, css: &str) -> String {
    let v = js(
        c,
        &format!(
            "var e = document.querySelector({}); return e ? e.textContent : null;",
            serde_json::to_string(css).unwrap()
        ),
    )
    .await;
    v.as_str()
        .unwrap_or_else(|| panic!("nothing at {css}"))
        .to_string()
}

async fn count(c: &Client, css: &str) -> u64 {
    js(
        c,
        &format!(
            "return document.querySelectorAll({}).length;",
            serde_json::to_string(css).unwrap()
        ),
    )
    .await
    .as_u64()
    .unwrap()
}

async fn section_shots(c: &Client, prefix: &str) {
    for section in ["pyramid", "pareto", "funnel", "overdue", "stores", "rules"] {
        let e = c.find(Locator::Css(&format!("#{section}"))).await.unwrap();
        let png = e.screenshot().await.unwrap();
        std::fs::write(
            screenshots_dir().join(format!("dashboard-{prefix}-{section}.png")),
            png,
        )
        .unwrap();
    }
}

async fn viewer_json(hq: &Hq, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(hq.url(path))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn every_view_shows_what_its_api_returns_for_a_generated_chain() {
    let hq = Hq::start_with(embedded(), common::Backend::Sqlite, |cfg| {
        cfg.compute.rerank_min_interval_s = 0;
        cfg.compute.currency = Some("EUR".into());
    })
    .await;
    let now = now_ms();
    hq.post_json("/api/members", members()).await;
    let (ndjson, total) = purchases(now);
    let r = hq.post_json("/api/purchases", ndjson).await;
    assert_eq!(r["skipped_total"], 0, "{r}");
    eventually_some("the pyramid holds every purchase", WAIT * 4, || async {
        let p = hq.get_json("/api/pyramid").await;
        (sum(&p, "spend_12m_minor") == total && sum(&p, "members") == MEMBERS as i64).then_some(())
    })
    .await;
    // Five members of the rest spend big this morning: they move up this month.
    let big: String = (200..205)
        .map(|i| {
            format!(
                r#"{{"purchase_id":"BIG{i}","member_id":"{}","store_id":"store-a","at":"{}","amount_minor":5000000,"currency":"EUR","items":[]}}"#,
                id(i),
                rfc3339(now - 3_600_000)
            ) + "\n"
        })
        .collect();
    hq.post_json("/api/purchases", big).await;
    eventually_some("members moved up", WAIT * 4, || async {
        let p = hq.get_json("/api/pyramid").await;
        (sum(&p, "moved_up") >= 5 && sum(&p, "spend_12m_minor") == total + 25_000_000).then_some(())
    })
    .await;

    // Today at the stores: a and b online, c's gateway offline.
    let at = now - 10 * 60_000;
    let mut next_alert = 0;
    for (s, store) in STORES.iter().enumerate() {
        let mut gw = FakeGateway::connect(&hq, &format!("gw-{s}"), store).await;
        gw.status(s != 2).await;
        let mut events = Vec::new();
        let mut push = |body: EventBody| {
            events.push(Event {
                seq: events.len() as u64 + 1,
                at_ms: at,
                body,
            })
        };
        for i in (s..60).step_by(3) {
            let visit = format!("v{i}");
            push(EventBody::Arrive {
                member_id: id(i),
                zone: "entrance".into(),
                visit_id: visit.clone(),
            });
            if i % 2 == 0 {
                push(EventBody::Depart {
                    member_id: id(i),
                    zone: "entrance".into(),
                    visit_id: visit,
                    dwell_s: 600 + i as u64 * 10,
                    zones: vec![],
                });
            }
            next_alert += 1;
            let alert_id = format!("al{next_alert}");
            if i % 5 == 0 {
                push(EventBody::HeldOut {
                    rule: "vip-arrival".into(),
                    member_id: id(i),
                    zone: "entrance".into(),
                    visit_id: format!("v{i}"),
                    campaign: None,
                });
            } else {
                push(EventBody::AlertRaised {
                    alert_id: alert_id.clone(),
                    rule: "vip-arrival".into(),
                    member_id: id(i),
                    priority: AlertPriority::High,
                    message: "Greet".into(),
                    campaign: None,
                });
                if i % 3 != 1 {
                    push(EventBody::AlertTaken {
                        alert_id: alert_id.clone(),
                        rule: "vip-arrival".into(),
                        by: "till".into(),
                    });
                    push(EventBody::AlertOutcome {
                        alert_id,
                        rule: "vip-arrival".into(),
                        outcome: if i % 2 == 0 {
                            AlertOutcomeKind::Purchased
                        } else {
                            AlertOutcomeKind::NoSale
                        },
                        by: "till".into(),
                    });
                }
            }
        }
        // As an agent does: the batch says how much is still waiting in its outbox.
        let mut batch = gw.batch(&[]);
        batch.events = events;
        batch.outbox = Some(100 + s as u64);
        gw.publish_raw(serde_json::to_vec(&batch).unwrap()).await;
        gw.next_ack().await;
    }
    let stores = eventually_some("the stores' day is in", WAIT * 4, || async {
        let s = viewer_json(&hq, "/api/dashboard/stores").await;
        let all = s["stores"].as_array()?;
        (all.len() == 3
            && all.iter().all(|x| x["visits_today"].as_u64() == Some(20))
            && all[0]["gateways_online"] == 1
            && all[2]["gateways_online"] == 0)
            .then_some(s)
    })
    .await;
    // Today's visitors are recomputed as back in: none of them is overdue any more.
    let overdue = eventually_some("today's visitors no longer overdue", WAIT * 4, || async {
        let o = viewer_json(&hq, "/api/dashboard/overdue").await;
        let listed = o["members"].as_array()?;
        (listed.len() as u64 == o["total"].as_u64()?
            && listed
                .iter()
                .all(|m| m["member_id"].as_str() >= Some("M060")))
        .then_some(o)
    })
    .await;
    let pyramid = viewer_json(&hq, "/api/pyramid").await;
    let pareto = viewer_json(&hq, "/api/dashboard/pareto").await;
    let funnel = viewer_json(&hq, "/api/dashboard/funnel").await;
    let report = viewer_json(&hq, "/api/rules/report").await;
    assert!(
        overdue["total"].as_u64().unwrap() > 0,
        "lapsed members are overdue: {overdue}"
    );

    // The viewer token reads and changes nothing.
    let refused = reqwest::Client::new()
        .post(hq.url("/api/members"))
        .bearer_auth(VIEWER)
        .body(members())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let anonymous = reqwest::get(hq.url("/api/dashboard/stores")).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // The CSV: every overdue member, quoted where needed, formulas defused.
    let csv = reqwest::Client::new()
        .get(hq.url("/api/dashboard/overdue?format=csv"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "member_id,display_name,tier,store_id,last_visit,expected_next_visit,overdue_days"
    );
    assert_eq!(lines.len() as u64 - 1, overdue["total"].as_u64().unwrap());
    assert!(
        csv.contains("M063,\"Li, \"\"Wei\"\"\",platinum,store-a,"),
        "{csv}"
    );
    assert!(csv.contains("M066,\"'=HYPERLINK(\"\"x\"\")\","), "{csv}");
    let one_store = viewer_json(&hq, "/api/dashboard/overdue?store=store-b&tier=silver").await;
    assert!(
        one_store["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["store_id"] == "store-b" && m["tier"] == "silver")
    );

    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = browser(profile.path()).await;
    // Without a token the page says how to open it.
    c.goto(&hq.url("/dashboard")).await.unwrap();
    wait_js(
        &c,
        "the 401 hint",
        "return document.getElementById('err').textContent.includes('#token=');",
    )
    .await;
    c.goto(&hq.url(&format!("/dashboard#token={VIEWER}")))
        .await
        .unwrap();
    c.refresh().await.unwrap();
    wait_js(
        &c,
        "every view drawn",
        "return Number(document.body.getAttribute('data-rounds')) >= 1;",
    )
    .await;
    assert_eq!(text(&c, "#err").await, "");

    // Pyramid: heads, share of spend and moves per level.
    for l in pyramid.as_array().unwrap() {
        let level = l["level"].as_str().unwrap();
        let cell = |k: &str| format!("#pyramid-table tr[data-level={level}] td[data-k={k}]");
        assert_eq!(
            text(&c, &cell("members")).await,
            int(l["members"].as_i64().unwrap())
        );
        let share = pct(&text(&c, &cell("share")).await);
        assert!(
            (share - l["share_of_spend"].as_f64().unwrap()).abs() < 0.0006,
            "{level}"
        );
        let up = l["moved_up"].as_i64().unwrap();
        let shown = text(&c, &cell("up")).await;
        assert_eq!(
            shown,
            if up > 0 {
                format!("▲ {}", int(up))
            } else {
                "–".into()
            }
        );
    }
    assert_eq!(count(&c, "#pyramid-chart polygon").await, 6);
    // Pareto: one vertex per point, and the top-20 % share read off the same points.
    let pts = js(
        &c,
        "return document.getElementById('pareto-line').getAttribute('points').trim().split(' ').length;",
    )
    .await;
    assert_eq!(
        pts.as_u64().unwrap() as usize,
        pareto.as_array().unwrap().len()
    );
    let top20 = text(&c, "#pareto-note").await;
    let p = pareto.as_array().unwrap();
    let at20 = p
        .windows(2)
        .find(|w| w[1]["members_share"].as_f64().unwrap() >= 0.2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let (am, bm) = (
                a["members_share"].as_f64().unwrap(),
                b["members_share"].as_f64().unwrap(),
            );
            let (as_, bs) = (
                a["spend_share"].as_f64().unwrap(),
                b["spend_share"].as_f64().unwrap(),
            );
            as_ + (0.2 - am) / (bm - am) * (bs - as_)
        })
        .unwrap();
    let shown = top20
        .split("bring ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert!((shown / 100.0 - at20).abs() < 0.0006, "{top20} vs {at20}");
    assert!(
        at20 > 0.2,
        "the best fifth spends more than a fifth: {at20}"
    );
    // Funnel: members per stage and this month's transitions.
    for st in funnel["stages"].as_array().unwrap() {
        let stage = st["stage"].as_str().unwrap();
        assert_eq!(
            text(&c, &format!("#funnel-chart text[data-stage={stage}]")).await,
            int(st["members"].as_i64().unwrap()),
            "{stage}"
        );
    }
    assert_eq!(
        sum(&funnel["stages"], "members"),
        MEMBERS as i64,
        "{funnel}"
    );
    assert_eq!(
        count(&c, "#funnel-moves tbody tr").await as usize,
        funnel["transitions"].as_array().unwrap().len()
    );
    // Overdue: the total, the list longest-overdue first.
    assert_eq!(
        js(
            &c,
            "return document.getElementById('overdue-note').getAttribute('data-total');"
        )
        .await,
        Value::String(overdue["total"].to_string())
    );
    let listed = overdue["members"].as_array().unwrap();
    assert_eq!(
        count(&c, "#overdue-table tbody tr").await as usize,
        listed.len()
    );
    let first = &listed[0];
    let m = first["member_id"].as_str().unwrap();
    assert_eq!(
        text(
            &c,
            &format!("#overdue-table tr[data-member={m}] td[data-k=days]")
        )
        .await,
        int(first["overdue_days"].as_i64().unwrap())
    );
    assert_eq!(
        text(
            &c,
            &format!("#overdue-table tr[data-member={m}] td[data-k=expected]")
        )
        .await,
        first["expected_next_visit"].as_str().unwrap()
    );
    // A name is text on the page, never markup.
    assert_eq!(
        text(&c, "#overdue-table tr[data-member=M069] td").await,
        "<b>Bold</b> (M069)"
    );
    assert_eq!(count(&c, "#overdue-table b").await, 0);
    // Stores: present, visits, alerts and health per store, and the fleet's totals.
    for s in stores["stores"].as_array().unwrap() {
        let store = s["store_id"].as_str().unwrap();
        let cell = |k: &str| format!(".store[data-store={store}] td[data-k={k}]");
        assert_eq!(
            text(&c, &cell("present")).await,
            int(s["present"].as_i64().unwrap())
        );
        assert_eq!(
            text(&c, &cell("visits_today")).await,
            int(s["visits_today"].as_i64().unwrap())
        );
        assert_eq!(
            text(&c, &cell("alerts")).await,
            format!(
                "{} / {} / {}",
                s["alerts_raised"], s["alerts_taken"], s["alerts_converted"]
            )
        );
        assert_eq!(
            text(&c, &cell("held_out")).await,
            int(s["held_out"].as_i64().unwrap())
        );
        assert_eq!(
            text(&c, &cell("outbox")).await,
            int(s["outbox_depth"].as_i64().unwrap())
        );
        let health = text(&c, &format!(".store[data-store={store}] [data-k=health]")).await;
        assert_eq!(
            health,
            format!("{}/{} online", s["gateways_online"], s["gateways"])
        );
    }
    assert_eq!(stores["stores"][0]["present"], 10, "{stores}");
    assert_eq!(stores["stores"][2]["outbox_depth"], 102, "{stores}");
    assert_eq!(
        text(&c, "#fleet b[data-k=alerts_raised]").await,
        int(sum(&stores["stores"], "alerts_raised"))
    );
    // Rules: alerted against held out, per store and for the chain, with the uplift.
    let vip = &report[0];
    assert_eq!(vip["rule"], "vip-arrival");
    let all = &vip["holdout"];
    let row = "#rules-table tr[data-rule=vip-arrival][data-store='all stores']";
    assert_eq!(
        text(&c, &format!("{row} td[data-k=alerted]")).await,
        int(all["alerted"]["occasions"].as_i64().unwrap())
    );
    assert_eq!(
        text(&c, &format!("{row} td[data-k=held_out]")).await,
        int(all["held_out"]["occasions"].as_i64().unwrap())
    );
    let u = &all["uplift"];
    let pts = |x: &Value| {
        let x = x.as_f64().unwrap() * 100.0;
        format!("{}{x:.1} pts", if x >= 0.0 { "+" } else { "" })
    };
    let shown = text(&c, &format!("{row} td[data-k=uplift]")).await;
    assert!(shown.starts_with(&pts(&u["uplift"])), "{shown} vs {u}");
    assert_eq!(
        count(&c, "#rules-table tr[data-rule=vip-arrival]").await as usize,
        1 + vip["stores"].as_array().unwrap().len()
    );

    section_shots(&c, "laptop").await;
    // A tablet in portrait: the sections stack, nothing needs a sideways scroll of the page.
    c.set_window_size(820, 1180).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = js(
        &c,
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1;",
    )
    .await;
    assert_eq!(
        overflow,
        Value::Bool(true),
        "the page scrolls sideways on a tablet"
    );
    section_shots(&c, "tablet").await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots_dir().join("dashboard-tablet.png"), png).unwrap();

    // The admin token opens it too.
    c.goto(&hq.url(&format!("/dashboard#token={ADMIN}")))
        .await
        .unwrap();
    c.refresh().await.unwrap();
    wait_js(
        &c,
        "drawn for the admin",
        "return Number(document.body.getAttribute('data-rounds')) >= 1;",
    )
    .await;
    c.close().await.unwrap();
    hq.stop().await;
}
