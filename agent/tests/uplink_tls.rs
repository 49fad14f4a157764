#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The uplink over TLS with a client certificate, against Debian's Mosquitto started by the test
//! with `require_certificate true` and a password file without anonymous access (certificates
//! made with the `openssl` command line, passwords with `mosquitto_passwd`), and the real head
//! office on the same TLS listener (`mqtts://`) with its certificate and credentials.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use instore_agent::{
    cache::MemberCache,
    config::SyncConfig,
    metrics::Metrics,
    outbox::{NewEvent, Outbox},
};
use instore_protocol::EventBody;
use support::{
    hq::{Hq, WAIT, events_of},
    net::free_port,
    sync::{SyncTask, spawn_sync},
};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    // Extensions make version-3 certificates, the only version webpki accepts.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.push(format!("{name}.pem"));
        args.extend(["-extfile".to_string(), format!("{name}.ext")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &args);
    }
}

/// Debian's Mosquitto with a TLS listener that requires a client certificate and a password
/// (`users`: user name and password each).
struct Mosquitto {
    tls: u16,
    _broker: instore_testkit::mosquitto::Mosquitto,
}

async fn start_mosquitto(dir: &Path, users: &[(&str, &str)]) -> Mosquitto {
    let tls = free_port();
    let passwd = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let create = if i == 0 { "-c" } else { "" };
        let mut args = vec!["-b"];
        if !create.is_empty() {
            args.push(create);
        }
        args.extend([passwd.to_str().unwrap(), user, password]);
        let out = Command::new("mosquitto_passwd")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = dir.display();
    // The later `allow_anonymous` overrides the harness's: every client must log in.
    let broker = instore_testkit::mosquitto::Mosquitto::start_with(
        dir,
        &format!(
            "allow_anonymous false\npassword_file {d}/passwd\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
             keyfile {d}/server.key\nrequire_certificate true\n"
        ),
    )
    .await;
    instore_testkit::net::wait_tcp(tls, "mosquitto's TLS listener").await;
    Mosquitto {
        tls,
        _broker: broker,
    }
}

struct Gateway {
    outbox: Outbox,
    metrics: Metrics,
    sync: SyncTask,
    _dir: tempfile::TempDir,
}

fn start_gateway(
    hq: &Hq,
    id: &str,
    tls_port: u16,
    cert: Option<(PathBuf, PathBuf)>,
    ca: PathBuf,
) -> Gateway {
    let token =
        instore_protocol::token::gateway_token(support::hq::SECRET.as_bytes(), "s-1", id).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let outbox = Outbox::open(&dir.path().join("outbox.db"), metrics.clone()).unwrap();
    let cache = MemberCache::open(&dir.path().join("members.db")).unwrap();
    let (client_cert, client_key) = cert.map_or((None, None), |(c, k)| (Some(c), Some(k)));
    let cfg = SyncConfig {
        enabled: true,
        broker: format!("mqtts://127.0.0.1:{tls_port}"),
        hq_url: format!("http://{}", hq.http),
        batch_max_age_ms: 10,
        reconnect_min_ms: 50,
        reconnect_max_ms: 200,
        ca_file: Some(ca),
        client_cert,
        client_key,
        token,
        ..SyncConfig::default()
    };
    let sync = spawn_sync("s-1", id, cfg, &outbox, &cache, &metrics);
    Gateway {
        outbox,
        metrics,
        sync,
        _dir: dir,
    }
}

impl Gateway {
    async fn stop(self) {
        self.sync.stop(WAIT).await;
    }
}

fn events(n: u64) -> Vec<NewEvent> {
    (1..=n)
        .map(|i| NewEvent {
            at_ms: 1_700_000_000_000,
            body: EventBody::Footfall {
                interval_s: 60,
                unique_devices: i,
            },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_certificate_events_arrive_and_without_one_the_broker_refuses_the_gateway() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let t1 = instore_protocol::token::gateway_token(support::hq::SECRET.as_bytes(), "s-1", "gw-1")
        .unwrap();
    let t2 = instore_protocol::token::gateway_token(support::hq::SECRET.as_bytes(), "s-1", "gw-2")
        .unwrap();
    let broker = start_mosquitto(
        certs.path(),
        &[
            ("instore-sync", "hq-broker-pw"),
            ("gw-1", &t1),
            ("gw-2", &t2),
        ],
    )
    .await;
    let ca = certs.path().join("ca.pem");
    let hq = Hq::start(instore_sync::BrokerConfig {
        url: Some(format!("mqtts://127.0.0.1:{}", broker.tls)),
        username: Some("instore-sync".into()),
        password: Some("hq-broker-pw".into()),
        ca_file: Some(ca.clone()),
        client_cert: Some(certs.path().join("client.pem")),
        client_key: Some(certs.path().join("client.key")),
        ..instore_sync::BrokerConfig::default()
    })
    .await;
    assert_eq!(hq.get_json("/healthz").await["broker"], "external");

    let good = start_gateway(
        &hq,
        "gw-1",
        broker.tls,
        Some((
            certs.path().join("client.pem"),
            certs.path().join("client.key"),
        )),
        ca.clone(),
    );
    good.outbox.append(events(30)).await.unwrap();
    hq.wait_for(|v| v[0]["last_seq"] == 30, "/api/gateways")
        .await;
    assert_eq!(
        events_of(&hq, "gw-1").await,
        (1..=30).map(|n| (n, n)).collect::<Vec<_>>()
    );

    let refused = start_gateway(&hq, "gw-2", broker.tls, None, ca);
    refused.outbox.append(events(5)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused.metrics.mqtt_connect_failures.get() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusals counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused.metrics.mqtt_connected.get(), 0);
    assert_eq!(
        refused.outbox.depth().await.unwrap(),
        5,
        "its events wait in the outbox"
    );
    let gateways = hq.get_json("/api/gateways").await;
    assert_eq!(gateways.as_array().unwrap().len(), 1, "{gateways}");
    // Refused, counted, still running: it stops cleanly when asked.
    refused.stop().await;
    good.stop().await;
    hq.cancel.cancel();
}
