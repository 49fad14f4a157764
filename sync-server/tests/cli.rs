//! The `instore-sync` binary as an operator runs it: exit codes, `check-config`, `run` with
//! SIGTERM, and `members import` against the running server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_instore-sync");

fn write_config(dir: &std::path::Path, http: u16, mqtt: u16) -> std::path::PathBuf {
    let path = dir.join("hq.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[api]\ntoken = \"cli-admin\"\n\
             [auth]\ngateway_secret = \"0123456789abcdef\"\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_config_exits_2_naming_the_key_and_line_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "data_dir = \"d\"\n[http]\nlisten = \"127.0.0.1:1\"\n[api]\ntoken = \"t\"\n[auth]\n\
         gateway_secret = \"short\"\n[broker]\nlisten = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.gateway_secret") && err.contains("line 7"),
        "{err}"
    );
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hq.toml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(example)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_serves_imports_members_from_the_cli_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = write_config(dir.path(), http, free_port());
    let mut server = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.path().join("data/hq.sqlite").exists(),
        "data_dir is relative to the config"
    );

    let members = dir.path().join("members.ndjson");
    std::fs::write(
        &members,
        "{\"member_id\":\"M1\",\"display_name\":\"A\",\"tier\":\"gold\"}\nnot json\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["members", "import"])
        .arg(&members)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["imported"], 1);
    assert_eq!(report["skipped"][0]["line"], 2);

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn members_import_fails_with_exit_1_when_no_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port());
    let members = dir.path().join("m.ndjson");
    std::fs::write(&members, "").unwrap();
    let out = Command::new(BIN)
        .args(["members", "import"])
        .arg(&members)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Status code of a plain HTTP/1.1 GET on loopback with extra header lines.
fn http_status(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_briefs_minimal_config_starts_and_generates_a_gateway_secret_that_tokens_are_minted_from() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = dir.path().join("hq.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[api]\ntoken = \"t\"\n\
             [broker]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log_path = dir.path().join("stderr.log");
    let mut server = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secret_path = dir.path().join("data/gateway_secret");
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert_eq!(secret.len(), 64);
    let mode = std::fs::metadata(&secret_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("data/gateway_secret") && log.contains("generated"),
        "{log}"
    );

    // A token minted from the generated file reads that store's snapshot; one from another
    // secret does not.
    let token = instore_protocol::token::gateway_token(secret.as_bytes(), "s1", "g1").unwrap();
    let path = "/api/stores/s1/members/snapshot";
    let auth = format!("Bearer {token}");
    let ok = [
        ("Authorization", auth.as_str()),
        ("X-Instore-Gateway", "g1"),
    ];
    assert_eq!(http_status(http, path, &ok), 200);
    let other =
        instore_protocol::token::gateway_token(b"another-secret-0123456789", "s1", "g1").unwrap();
    let auth = format!("Bearer {other}");
    let bad = [
        ("Authorization", auth.as_str()),
        ("X-Instore-Gateway", "g1"),
    ];
    assert_eq!(http_status(http, path, &bad), 401);

    server.kill().unwrap();
    server.wait().unwrap();
    // A restart reuses the file rather than minting a new secret (which would cut every
    // enrolled gateway off).
    let mut again = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&secret_path).unwrap(), secret);
    assert_eq!(http_status(http, path, &ok), 200);
    again.kill().unwrap();
    again.wait().unwrap();
}

#[test]
fn purchases_import_streams_csv_and_ndjson_files_and_names_refused_lines() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = write_config(dir.path(), http, free_port());
    let mut server = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |file: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["purchases", "import"])
            .arg(file)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let csv = dir.path().join("pos-export.csv");
    std::fs::write(
        &csv,
        "purchase_id,member_id,store_id,at,amount_minor,currency,sku,category,qty,item_amount_minor\n\
         P1,M1,s1,2026-11-02T15:04:00Z,1000,EUR,S1,linen,1,900\n\
         P1,M1,s1,2026-11-02T15:04:00Z,1000,EUR,S2,socks,1,100\n\
         P2,M2,s1,yesterday,500,EUR,S1,linen,1,500\n\
         P3,M2,s1,2026-11-02T16:00:00Z,lots,EUR,S1,linen,1,500\n\
         P4,M3,s1,2026-11-02T17:00:00Z,200,EUR,S9,shoes,1,200\n",
    )
    .unwrap();
    let r = run(&csv);
    assert_eq!(r["imported"], 2, "{r}");
    let lines: Vec<u64> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [4, 5], "{r}");
    assert!(
        r["skipped"][0]["error"]
            .as_str()
            .unwrap()
            .contains("RFC 3339")
    );

    let ndjson = dir.path().join("more.ndjson");
    std::fs::write(
        &ndjson,
        "{\"purchase_id\":\"P1\",\"member_id\":\"M1\",\"store_id\":\"s1\",\"at\":\"2026-11-02T15:04:00Z\",\"amount_minor\":1000,\"currency\":\"EUR\"}\n\
         \n\
         {\"purchase_id\":\"P9\"}\n\
         {\"purchase_id\":\"P5\",\"member_id\":\"M1\",\"store_id\":\"s1\",\"at\":\"2026-11-03T09:00:00+01:00\",\"amount_minor\":-100,\"currency\":\"EUR\"}\n",
    )
    .unwrap();
    let r = run(&ndjson);
    assert_eq!(
        (r["imported"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["skipped"][0]["line"], 3, "{r}");
    server.kill().unwrap();
    server.wait().unwrap();
}
