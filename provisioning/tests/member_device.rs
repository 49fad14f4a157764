//! `instore-provision member-device` and `member-code` against a real head office: the device's
//! public key is registered for the member (and only the public key leaves the tool), the key
//! file is private, and the printed code verifies under the registered key and renders as a QR
//! code no larger than version 5.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use instore_protocol::member_code::{self, Algorithm, DeviceSigner};
use instore_testkit::hq::{ADMIN, Hq, embedded};

mod common;

use common::{provision, text};

#[tokio::test(flavor = "multi_thread")]
async fn a_device_made_by_the_tool_is_registered_and_its_codes_verify_and_render() {
    let hq = Hq::start(embedded()).await;
    hq.post_json(
        "/api/members",
        r#"{"member_id":"M1","display_name":"Ms. Li","tier":"gold","consent":{"presence":true}}"#,
    )
    .await;
    let base = hq.url("");
    let dir = tempfile::tempdir().unwrap();
    for alg in ["ES256", "Ed25519"] {
        let key = format!("{alg}.json");
        let out = provision(
            dir.path(),
            &[
                "member-device",
                "--member",
                "M1",
                "--hq-url",
                &base,
                "--token",
                ADMIN,
                "--alg",
                alg,
                "--out",
                &key,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mode = std::fs::metadata(dir.path().join(&key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");

        let at = 1_770_000_000_000i64;
        let out = provision(
            dir.path(),
            &[
                "member-code",
                "--key",
                &key,
                "--svg",
                "code.svg",
                "--png",
                "code.png",
                "--at-ms",
                &at.to_string(),
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let code = text(&out.stdout);
        let parsed = member_code::parse(&code).unwrap();
        // The key head office holds for the member is the one the code verifies under.
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(&key)).unwrap()).unwrap();
        let alg = Algorithm::parse(alg).unwrap();
        let device =
            DeviceSigner::from_pkcs8(alg, &hex::decode(file["pkcs8"].as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(parsed.verify(alg, &device.public_key(), at + 5_000), Ok(()));
        let listed = hq.get_json("/api/members/M1/devices").await;
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["key_id"] == hex::encode(parsed.key_id) && d["alg"] == alg.as_str()),
            "{listed}"
        );
        assert!(
            std::fs::read_to_string(dir.path().join("code.svg"))
                .unwrap()
                .contains("<svg")
        );
        assert_eq!(
            &std::fs::read(dir.path().join("code.png")).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n"
        );
    }
    // An unknown member: refused by head office, no key file left behind.
    let out = provision(
        dir.path(),
        &[
            "member-device",
            "--member",
            "NOBODY",
            "--hq-url",
            &base,
            "--token",
            ADMIN,
            "--out",
            "x.json",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    assert!(!dir.path().join("x.json").exists());
    hq.stop().await;
}
