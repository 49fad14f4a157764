#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent's HTTP server over real TCP: auth, pairing, the JSON API, clerk actions recorded in a
//! real outbox, the SSE alert feed, the clerk page.

mod support;

use std::{sync::Arc, time::Duration};

use instore_agent::{
    alerts::{Alert, AlertHub, Lifecycle, MemberCard},
    config::MetricsAccess,
    metrics::Metrics,
    outbox::Outbox,
    pairing::{DEFAULT_TOKEN_TTL, Tablets},
    presence::PresentMember,
    web::{self, WebState},
};
use instore_protocol::{AlertOutcomeKind, AlertPriority, EventBody};
use reqwest::Method;
use support::{
    http::{issue_pairing, pairing_code, redeem_pairing},
    sse::SseReader,
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "admin-secret";
const WAIT: Duration = Duration::from_secs(5);

struct Server {
    base: String,
    hub: AlertHub,
    outbox: Outbox,
    tablets: Tablets,
    _dir: tempfile::TempDir,
    metrics: Metrics,
    presence: watch::Sender<Arc<Vec<PresentMember>>>,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(admin_token: &str) -> Server {
    start_with(admin_token, MetricsAccess::Local).await
}

/// This machine's address toward the LAN (the route a UDP "connect" picks; nothing is sent).
/// A client bound to it and connecting to 127.0.0.1 arrives with a peer address that is neither
/// loopback nor the server's own address: to the server it is another host on the LAN.
fn lan_ip() -> std::net::IpAddr {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.connect("192.0.2.1:9").unwrap();
    let ip = sock.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "these tests need a non-loopback IPv4 address to play a LAN client"
    );
    ip
}

/// A client that looks to the server like another host on the LAN (see [`lan_ip`]).
fn lan_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(lan_ip())
        .build()
        .unwrap()
}

async fn start_with(admin_token: &str, metrics_access: MetricsAccess) -> Server {
    let (metrics, registry) = Metrics::new();
    let hub = AlertHub::new(16);
    let (presence, presence_rx) = watch::channel(Arc::new(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.db"), metrics.clone()).unwrap();
    let tablets = Tablets::open(
        &dir.path().join("tablets.db"),
        "http://tablets.example",
        DEFAULT_TOKEN_TTL,
        metrics.clone(),
    )
    .unwrap();
    let state = WebState {
        store_id: "S1".into(),
        gateway_id: "G1".into(),
        admin_token: admin_token.into(),
        alerts: hub.clone(),
        lifecycle: Some(Lifecycle::new(hub.clone(), outbox.clone(), metrics.clone())),
        tablets: Some(tablets.clone()),
        presence: presence_rx,
        metrics: metrics.clone(),
        registry: Arc::new(registry),
        metrics_access,
        relay: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(web::serve(listener, state, cancel.clone()));
    Server {
        base,
        hub,
        outbox,
        tablets,
        _dir: dir,
        metrics,
        presence,
        cancel,
        task,
    }
}

fn alert(id: &str) -> Alert {
    Alert {
        id: id.into(),
        seq: 0,
        raised_at_ms: 1_700_000_000_000,
        rule: "vip_arrival".into(),
        campaign: None,
        priority: AlertPriority::High,
        message: "Greet Ms. Li".into(),
        zone: "entrance".into(),
        member: MemberCard {
            member_id: "M1001".into(),
            display_name: "Ms. Li".into(),
            tier: "platinum".into(),
            stage: Some("value".into()),
            tags: vec!["linen".into()],
            last_purchase: None,
            ..Default::default()
        },
    }
}

fn member() -> PresentMember {
    PresentMember {
        member_id: "M1001".into(),
        display_name: "Ms. Li".into(),
        tier: "platinum".into(),
        zone: "entrance".into(),
        since: 1_700_000_000_000,
        last_seen: 1_700_000_005_000,
        last_rssi: -60,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Who a request is sent as.
enum As<'a> {
    Nobody,
    Bearer(&'a str),
    /// A paired tablet's token in its cookie, as the browser sends it.
    Cookie(&'a str),
}

impl Server {
    /// `method path` on the server, sent as `who`; any transport failure fails the test.
    async fn call(&self, method: Method, path: &str, who: As<'_>) -> reqwest::Response {
        self.call_with(client(), method, path, who).await
    }

    /// [`Server::call`] from another host on the LAN.
    async fn call_lan(&self, method: Method, path: &str, who: As<'_>) -> reqwest::Response {
        self.call_with(lan_client(), method, path, who).await
    }

    async fn call_with(
        &self,
        client: reqwest::Client,
        method: Method,
        path: &str,
        who: As<'_>,
    ) -> reqwest::Response {
        let req = client.request(method, format!("{}{path}", self.base));
        let req = match who {
            As::Nobody => req,
            As::Bearer(t) => req.bearer_auth(t),
            As::Cookie(t) => req.header("cookie", format!("instore_tablet={t}")),
        };
        req.send().await.unwrap()
    }
}

#[tokio::test]
async fn member_data_is_refused_without_a_token_or_with_a_wrong_one() {
    let s = start(TOKEN).await;
    s.presence.send_replace(Arc::new(vec![member()]));
    s.hub.publish(alert("a1"));
    for path in ["/api/presence", "/api/alerts", "/api/alerts/stream"] {
        let none = s.call(Method::GET, path, As::Nobody).await;
        let wrong_bearer = s.call(Method::GET, path, As::Bearer("admin-secreT")).await;
        let wrong_query = s
            .call(Method::GET, &format!("{path}?token=nope"), As::Nobody)
            .await;
        for resp in [none, wrong_bearer, wrong_query] {
            assert_eq!(resp.status(), 401, "{path}");
            let body = resp.text().await.unwrap();
            assert_eq!(body, r#"{"error":"unauthorized"}"#);
            assert!(!body.contains("M1001") && !body.contains("Li"));
        }
    }
    assert_eq!(s.metrics.http_unauthorized.get(), 9);
}

#[tokio::test]
async fn an_empty_admin_token_refuses_even_an_empty_bearer() {
    let s = start("").await;
    let resp = client()
        .get(format!("{}/api/presence", s.base))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s
        .call(Method::GET, "/api/presence?token=", As::Nobody)
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn member_data_is_served_with_a_bearer_token_and_a_query_token_only_on_the_stream() {
    let s = start(TOKEN).await;
    let bearer = s
        .call(Method::GET, "/api/presence", As::Bearer(TOKEN))
        .await;
    assert_eq!(bearer.status(), 200);
    assert_eq!(bearer.headers()["cache-control"], "no-store");
    // The right token in a URL is ignored where a browser can send a header or cookie.
    for path in ["/api/alerts", "/api/presence", "/api/me"] {
        let query = s
            .call(Method::GET, &format!("{path}?token={TOKEN}"), As::Nobody)
            .await;
        assert_eq!(query.status(), 401, "{path}");
    }
    let stream = s
        .call(
            Method::GET,
            &format!("/api/alerts/stream?token={TOKEN}"),
            As::Nobody,
        )
        .await;
    assert_eq!(stream.status(), 200);
}

#[tokio::test]
async fn presence_lists_what_the_watch_channel_holds() {
    let s = start(TOKEN).await;
    let get = || async {
        s.call(Method::GET, "/api/presence", As::Bearer(TOKEN))
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(get().await, serde_json::json!([]));
    s.presence.send_replace(Arc::new(vec![member()]));
    let list = get().await;
    assert_eq!(list[0]["member_id"], "M1001");
    assert_eq!(list[0]["zone"], "entrance");
    assert_eq!(list[0]["since"], 1_700_000_000_000_i64);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn recent_alerts_are_listed_oldest_first_up_to_the_limit() {
    let s = start(TOKEN).await;
    for id in ["a1", "a2", "a3"] {
        s.hub.publish(alert(id));
    }
    let list: serde_json::Value = s
        .call(Method::GET, "/api/alerts?limit=2", As::Bearer(TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, ["a2", "a3"]);
    assert_eq!(list[1]["seq"], 3);
    assert_eq!(list[1]["member"]["display_name"], "Ms. Li");
}

#[tokio::test]
async fn health_needs_no_token_nor_do_metrics_from_this_host() {
    let s = start(TOKEN).await;
    let health: serde_json::Value = s
        .call(Method::GET, "/healthz", As::Nobody)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "store_id": "S1", "gateway_id": "G1"})
    );
    let metrics = s.call(Method::GET, "/metrics", As::Nobody).await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("instore_agent_sse_clients")
    );
}

#[tokio::test]
async fn from_the_lan_metrics_need_the_admin_token_and_the_admin_api_is_refused() {
    let s = start_with(TOKEN, MetricsAccess::Local).await;
    let anon = s.call_lan(Method::GET, "/metrics", As::Nobody).await;
    assert_eq!(anon.status(), 401);
    assert!(!anon.text().await.unwrap().contains("instore_agent"));
    let scraper = s.call_lan(Method::GET, "/metrics", As::Bearer(TOKEN)).await;
    assert_eq!(scraper.status(), 200);
    // A tablet token is not a scrape credential.
    let (_, tablet, _) = pair(&s, "till 1").await;
    let by_tablet = s
        .call_lan(Method::GET, "/metrics", As::Bearer(&tablet))
        .await;
    assert_eq!(by_tablet.status(), 401);
    // The admin API answers on the gateway only, even to the right token.
    for (method, path) in [
        (Method::GET, "/api/admin/tablets"),
        (Method::POST, "/api/admin/pairings"),
        (Method::DELETE, "/api/admin/tablets/t-1"),
    ] {
        let resp = s.call_lan(method.clone(), path, As::Bearer(TOKEN)).await;
        assert_eq!(resp.status(), 403, "{path}");
        assert!(resp.text().await.unwrap().contains("gateway itself"));
    }
    assert_eq!(s.tablets.list().len(), 1, "nothing revoked from the LAN");
    let local = s
        .call(Method::GET, "/api/admin/tablets", As::Bearer(TOKEN))
        .await;
    assert_eq!(local.status(), 200);
    // The rest of the API still serves the LAN: that is where the tablets are.
    let alerts = s
        .call_lan(Method::GET, "/api/alerts", As::Cookie(&tablet))
        .await;
    assert_eq!(alerts.status(), 200);
    let refused = |route: &'static str| {
        s.metrics
            .http_refused_remote
            .get_or_create(&vec![("route", route)])
            .get()
    };
    assert_eq!((refused("metrics"), refused("admin")), (2, 3));
}

#[tokio::test]
async fn metrics_can_require_the_token_everywhere_or_be_open() {
    let token_only = start_with(TOKEN, MetricsAccess::Token).await;
    let local_anon = token_only.call(Method::GET, "/metrics", As::Nobody).await;
    assert_eq!(local_anon.status(), 401);
    let local_token = token_only
        .call(Method::GET, "/metrics", As::Bearer(TOKEN))
        .await;
    assert_eq!(local_token.status(), 200);
    let open = start_with(TOKEN, MetricsAccess::Open).await;
    let lan_anon = open.call_lan(Method::GET, "/metrics", As::Nobody).await;
    assert_eq!(lan_anon.status(), 200);
}

#[tokio::test]
async fn a_guessing_client_on_the_lan_does_not_lock_out_a_tablet_pairing_elsewhere() {
    let s = start_with(TOKEN, MetricsAccess::Local).await;
    let guess = || async {
        lan_client()
            .post(format!("{}/api/pair", s.base))
            .json(&serde_json::json!({ "code": "AAAA-AAAA" }))
            .send()
            .await
            .unwrap()
            .status()
    };
    for _ in 0..12 {
        guess().await;
    }
    assert_eq!(guess().await, 429);
    // Another client (here: the loopback address) pairs with its code at once.
    let (_, token, _) = pair(&s, "till 4").await;
    assert_eq!(
        s.call(Method::GET, "/api/me", As::Bearer(&token))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_tablet_renews_its_token_and_the_old_one_dies_at_the_new_ones_first_use() {
    let s = start(TOKEN).await;
    let (id, old, _) = pair(&s, "till 5").await;
    let me: serde_json::Value = s
        .call(Method::GET, "/api/me", As::Cookie(&old))
        .await
        .json()
        .await
        .unwrap();
    let expires = me["token_expires_at_ms"].as_i64().unwrap();
    let renew_after = me["renew_after_ms"].as_i64().unwrap();
    let ttl = i64::try_from(DEFAULT_TOKEN_TTL.as_millis()).unwrap();
    assert_eq!(expires - renew_after, ttl / 2);
    assert_eq!(me["renew_due"], false);
    let resp = s
        .call(Method::POST, "/api/tablet/renew", As::Cookie(&old))
        .await;
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let new = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["tablet_id"], id.as_str());
    assert!(
        cookie.starts_with(&format!("instore_tablet={new};")),
        "{cookie}"
    );
    let status = |t: String| {
        let s = &s;
        async move {
            s.call(Method::GET, "/api/alerts", As::Cookie(&t))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(old.clone()).await,
        200,
        "old token until the new is used"
    );
    assert_eq!(status(new.clone()).await, 200);
    assert_eq!(status(old.clone()).await, 401);
    assert_eq!(status(new.clone()).await, 200);
    // The manager is not a tablet and has no token to renew.
    let admin = s
        .call(Method::POST, "/api/tablet/renew", As::Bearer(TOKEN))
        .await;
    assert_eq!(admin.status(), 400);
    let counted = |kind: &'static str| {
        s.metrics
            .tablet_tokens
            .get_or_create(&vec![("kind", kind)])
            .get()
    };
    assert_eq!((counted("renewed"), counted("switched")), (1, 1));
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let s = start(TOKEN).await;
    for path in ["/nope", "/api/nope"] {
        let resp = s.call(Method::GET, path, As::Bearer(TOKEN)).await;
        assert_eq!(resp.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn the_clerk_page_is_html_with_the_event_source_code() {
    let s = start(TOKEN).await;
    let resp = s.call(Method::GET, "/", As::Nobody).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("new EventSource(\"/api/alerts/stream\""));
    assert!(html.contains("/api/presence"));
    // The shell holds no member data; an unpaired browser gets only the pairing instructions.
    assert!(html.contains("This tablet is not paired"));
}

#[tokio::test]
async fn a_stream_client_receives_an_alert_published_after_it_connected() {
    let s = start(TOKEN).await;
    s.hub.publish(alert("old"));
    let resp = s
        .call(
            Method::GET,
            &format!("/api/alerts/stream?token={TOKEN}"),
            As::Nobody,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(s.metrics.sse_clients.get(), 1);
    let mut events = SseReader::new(resp);
    s.hub.publish(alert("new"));
    let (id, data) = events.next_alert().await;
    assert_eq!(id, 2);
    assert_eq!(data["id"], "new");
    assert_eq!(data["member"]["display_name"], "Ms. Li");
    drop(events);
    // The client count falls once the server notices the dropped connection.
    tokio::time::timeout(WAIT, async {
        while s.metrics.sse_clients.get() != 0 {
            s.hub.publish(alert("poke"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("sse_clients never went back to 0");
}

#[tokio::test]
async fn a_reconnecting_client_first_gets_what_it_missed() {
    let s = start(TOKEN).await;
    for id in ["a1", "a2", "a3"] {
        s.hub.publish(alert(id));
    }
    let resp = client()
        .get(format!("{}/api/alerts/stream", s.base))
        .bearer_auth(TOKEN)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(resp);
    assert_eq!(events.next_alert().await.0, 2);
    assert_eq!(events.next_alert().await.0, 3);
    s.hub.publish(alert("a4"));
    let (id, data) = events.next_alert().await;
    assert_eq!((id, data["id"].as_str()), (4, Some("a4")));
}

#[tokio::test]
async fn the_last_event_id_query_parameter_also_resumes() {
    let s = start(TOKEN).await;
    for id in ["a1", "a2"] {
        s.hub.publish(alert(id));
    }
    let resp = client()
        .get(format!(
            "{}/api/alerts/stream?token={TOKEN}&last_event_id=1",
            s.base
        ))
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(resp);
    assert_eq!(events.next_alert().await.1["id"], "a2");
}

#[tokio::test]
async fn the_stream_ends_and_the_server_stops_when_cancel_fires() {
    let s = start(TOKEN).await;
    let resp = s
        .call(
            Method::GET,
            &format!("/api/alerts/stream?token={TOKEN}"),
            As::Nobody,
        )
        .await;
    let mut events = SseReader::new(resp);
    s.cancel.cancel();
    assert!(
        events.next().await.is_none(),
        "stream still open after cancel"
    );
    let served = tokio::time::timeout(WAIT, s.task)
        .await
        .expect("server did not stop");
    served.unwrap().unwrap();
}

#[tokio::test]
async fn a_tablet_that_outlived_an_agent_restart_gets_the_whole_ring() {
    // The tablet last saw seq 40 from the previous agent process; this one has numbered only 2.
    let s = start(TOKEN).await;
    for id in ["a1", "a2"] {
        s.hub.publish(alert(id));
    }
    let resp = client()
        .get(format!("{}/api/alerts/stream?token={TOKEN}", s.base))
        .header("last-event-id", "40")
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(resp);
    assert_eq!(events.next_alert().await.0, 1);
    assert_eq!(events.next_alert().await.0, 2);
}

/// Pairs a tablet through the HTTP API, as `pair-tablet` and the pairing page do.
async fn pair(s: &Server, label: &str) -> (String, String, reqwest::Response) {
    let url = issue_pairing(&s.base, TOKEN, label).await;
    assert!(
        url.starts_with("http://tablets.example/pair?code="),
        "{url}"
    );
    let code = pairing_code(&url);
    let resp = redeem_pairing(&s.base, &code).await;
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("instore_tablet={token};")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let again = redeem_pairing(&s.base, &code).await;
    (body["tablet_id"].as_str().unwrap().to_owned(), token, again)
}

#[tokio::test]
async fn a_paired_tablet_reads_alerts_by_cookie_or_bearer_and_its_code_works_once() {
    let s = start(TOKEN).await;
    s.hub.publish(alert("a1"));
    let (_, token, again) = pair(&s, "till 2").await;
    assert_eq!(again.status(), 400, "a pairing code is single-use");
    let by_cookie = s.call(Method::GET, "/api/alerts", As::Cookie(&token)).await;
    assert_eq!(by_cookie.status(), 200);
    assert!(by_cookie.headers().contains_key("x-alert-cursor"));
    let list: serde_json::Value = by_cookie.json().await.unwrap();
    assert_eq!(list[0]["member"]["display_name"], "Ms. Li");
    let me: serde_json::Value = s
        .call(Method::GET, "/api/me", As::Bearer(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["label"], "till 2");
    assert_eq!(me["admin"], false);
    // A tablet is not the manager.
    let admin = s
        .call(Method::GET, "/api/admin/tablets", As::Bearer(&token))
        .await;
    assert_eq!(admin.status(), 403);
    assert_eq!(s.tablets.list().len(), 1);
}

#[tokio::test]
async fn wrong_pairing_codes_are_refused_then_rate_limited_and_counted() {
    let s = start(TOKEN).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = redeem_pairing(&s.base, "AAAA-AAAA").await;
        statuses.push(resp.status().as_u16());
        let body = resp.text().await.unwrap();
        assert!(!body.contains("token"), "{body}");
    }
    assert_eq!(statuses[..10], [400; 10]);
    assert_eq!(statuses[10..], [429; 2]);
    let metrics = s
        .call(Method::GET, "/metrics", As::Nobody)
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"instore_agent_pairing_attempts_total{result="bad_code"} 10"#));
    assert!(metrics.contains(r#"instore_agent_pairing_attempts_total{result="rate_limited"} 2"#));
}

#[tokio::test]
async fn taking_an_alert_twice_or_from_a_second_tablet_is_a_conflict_and_one_event() {
    let s = start(TOKEN).await;
    let (_, t1, _) = pair(&s, "till 1").await;
    let (_, t2, _) = pair(&s, "till 2").await;
    let stream = s
        .call(Method::GET, "/api/alerts/stream", As::Bearer(&t2))
        .await;
    let mut events = SseReader::new(stream);
    let id = s.hub.publish(alert("a1")).alert.id.clone();
    assert_eq!(events.next().await.unwrap().event.as_deref(), Some("alert"));

    let take = |token: String| {
        let url = format!("{}/api/alerts/{id}/take", s.base);
        async move { client().post(url).bearer_auth(token).send().await.unwrap() }
    };
    // Both tablets tap "I'm on it" at the same moment: exactly one wins.
    let (r1, r2) = tokio::join!(take(t1.clone()), take(t2.clone()));
    let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let winner = if r1.status() == 200 { &t1 } else { &t2 };
    let loser = if r1.status() == 200 { &t2 } else { &t1 };
    assert_eq!(take(winner.clone()).await.status(), 409, "taking twice");

    let ev = events.next().await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("alert_taken"));
    let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["status"], "taken");
    let winner_label = if winner == &t1 { "till 1" } else { "till 2" };
    assert_eq!(data["taken_by"], winner_label);

    let outcome = |token: &str, body: serde_json::Value| {
        client()
            .post(format!("{}/api/alerts/{id}/outcome", s.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        outcome(loser, serde_json::json!({"outcome": "purchased"}))
            .await
            .unwrap()
            .status(),
        409,
        "only the tablet that took it records the outcome"
    );
    assert_eq!(
        outcome(winner, serde_json::json!({"outcome": "bought"}))
            .await
            .unwrap()
            .status(),
        400
    );
    let done = outcome(winner, serde_json::json!({"outcome": "purchased"}))
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let ev = events.next().await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("alert_outcome"));

    let events: Vec<EventBody> = s
        .outbox
        .pending(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.body)
        .collect();
    assert_eq!(
        events,
        [
            EventBody::AlertTaken {
                alert_id: "a1".into(),
                rule: "vip_arrival".into(),
                by: winner_label.into()
            },
            EventBody::AlertOutcome {
                alert_id: "a1".into(),
                rule: "vip_arrival".into(),
                outcome: AlertOutcomeKind::Purchased,
                by: winner_label.into()
            }
        ]
    );
    let unknown = s
        .call(Method::POST, "/api/alerts/nope/dismiss", As::Bearer(&t1))
        .await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_revoked_tablet_loses_its_open_stream_and_its_next_request_at_once() {
    let s = start(TOKEN).await;
    let (id, token, _) = pair(&s, "till 3").await;
    let stream = s
        .call(Method::GET, "/api/alerts/stream", As::Cookie(&token))
        .await;
    assert_eq!(stream.status(), 200);
    let mut events = SseReader::new(stream);
    s.hub.publish(alert("a1"));
    assert!(events.next().await.is_some());

    let listed: serde_json::Value = s
        .call(Method::GET, "/api/admin/tablets", As::Bearer(TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["label"], "till 3");
    assert!(listed[0]["last_seen_ms"].as_i64().unwrap() > 0);

    let revoked = s
        .call(
            Method::DELETE,
            &format!("/api/admin/tablets/{id}"),
            As::Bearer(TOKEN),
        )
        .await;
    assert_eq!(revoked.status(), 204);
    assert!(
        events.next().await.is_none(),
        "stream still open after revoke"
    );
    let after = s.call(Method::GET, "/api/alerts", As::Cookie(&token)).await;
    assert_eq!(after.status(), 401);
    assert!(!after.text().await.unwrap().contains("Li"));
    let again = s
        .call(
            Method::DELETE,
            &format!("/api/admin/tablets/{id}"),
            As::Bearer(TOKEN),
        )
        .await;
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn dismissals_and_expiries_reach_every_stream_and_the_outbox() {
    let s = start(TOKEN).await;
    let (_, tablet, _) = pair(&s, "till 1").await;
    let resp = s
        .call(Method::GET, "/api/alerts/stream", As::Bearer(&tablet))
        .await;
    let mut events = SseReader::new(resp);
    s.hub.publish(alert("fresh"));
    let mut stale = alert("stale");
    stale.raised_at_ms = 1_000;
    s.hub.publish(stale);
    for _ in 0..2 {
        assert_eq!(events.next().await.unwrap().event.as_deref(), Some("alert"));
    }
    let dismissed = s
        .call(
            Method::POST,
            "/api/alerts/fresh/dismiss",
            As::Bearer(&tablet),
        )
        .await;
    assert_eq!(dismissed.status(), 200);
    let ev = events.next().await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("alert_dismissed"));
    let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (data["status"].as_str(), data["closed_by"].as_str()),
        (Some("dismissed"), Some("till 1"))
    );

    let lifecycle = Lifecycle::new(s.hub.clone(), s.outbox.clone(), s.metrics.clone());
    assert_eq!(lifecycle.expire_due(Duration::from_secs(60)).await, 1);
    let ev = events.next().await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("alert_expired"));
    assert!(ev.data.contains("\"id\":\"stale\""));
    // A closed alert cannot be taken any more.
    let late = s
        .call(Method::POST, "/api/alerts/stale/take", As::Bearer(&tablet))
        .await;
    assert_eq!(late.status(), 409);

    let kinds: Vec<&str> = s
        .outbox
        .pending(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.body.kind())
        .collect();
    assert_eq!(kinds, ["alert_dismissed", "alert_expired"]);
}
