//! Enrolment through head office's registry, with the built `instore-provision` against a real
//! head office: the admin asks for a code, the technician's `enrol` turns it into a working
//! agent config without ever holding the fleet secret, and `gateways` lists, rotates and
//! revokes with effect at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use instore_testkit::hq::{ADMIN, Hq, embedded};

mod common;

use common::{provision, text};

#[tokio::test(flavor = "multi_thread")]
async fn a_code_becomes_a_working_config_and_rotation_and_revocation_apply_at_once() {
    let hq = Hq::start(embedded()).await;
    let base = hq.url("");
    let dir = tempfile::tempdir().unwrap();
    let out = provision(
        dir.path(),
        &[
            "enrolment",
            "--hq-url",
            &base,
            "--token",
            ADMIN,
            "--store",
            "s1",
            "--gateway",
            "g1",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let code = text(&out.stdout);
    assert_eq!(code.len(), 14, "{code}");

    let out = provision(
        dir.path(),
        &[
            "enrol",
            "--hq-url",
            &base,
            "--code",
            &code.to_lowercase(),
            "--broker",
            &hq.mqtt_url(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cfg: toml::Table = std::fs::read_to_string(dir.path().join("agent.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cfg["store_id"].as_str(), Some("s1"));
    assert_eq!(cfg["gateway_id"].as_str(), Some("g1"));
    let token = cfg["sync"]["token"].as_str().unwrap().to_owned();
    assert_eq!(hq.pull_status("s1", "g1", &token).await, 200);
    // The code is spent.
    let again = provision(
        dir.path(),
        &[
            "enrol",
            "--hq-url",
            &base,
            "--code",
            &code,
            "--broker",
            &hq.mqtt_url(),
            "--out",
            "b.toml",
        ],
    )
    .await;
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("used or expired"),
        "{}",
        text(&again.stderr)
    );

    let admin = ["--hq-url", base.as_str(), "--token", ADMIN];
    let list = provision(dir.path(), &[&["gateways"][..], &admin, &["list"]].concat()).await;
    assert!(text(&list.stdout).contains("g1"), "{}", text(&list.stdout));
    let rotated = provision(
        dir.path(),
        &[&["gateways"][..], &admin, &["rotate", "g1"]].concat(),
    )
    .await;
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new = text(&rotated.stdout);
    assert_eq!(hq.pull_status("s1", "g1", &token).await, 401);
    assert_eq!(hq.pull_status("s1", "g1", &new).await, 200);
    let revoked = provision(
        dir.path(),
        &[&["gateways"][..], &admin, &["revoke", "g1"]].concat(),
    )
    .await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert_eq!(hq.pull_status("s1", "g1", &new).await, 401);
    hq.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_to_another_machine_is_refused_before_the_code_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    for (hq_url, broker) in [
        ("http://hq.example:8090", "mqtts://hq.example:8883"),
        ("https://hq.example", "mqtt://10.1.2.3:1883"),
    ] {
        let out = provision(
            dir.path(),
            &[
                "enrol",
                "--hq-url",
                hq_url,
                "--code",
                "AAAA-BBBB-CCCC",
                "--broker",
                broker,
            ],
        )
        .await;
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("--insecure") && err.contains("plaintext"),
            "{err}"
        );
        assert!(!dir.path().join("agent.toml").exists());
    }
}
