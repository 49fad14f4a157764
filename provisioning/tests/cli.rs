//! The built `instore-provision` binary, run as a technician would, in a temporary folder.

// Test helpers outside `#[test]` functions are not covered by clippy.toml's allow-in-tests; a
// panic is the right failure in all of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use instore_protocol::token::verify_gateway_token;

fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_instore-provision"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("instore-provision runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A folder holding a fresh secret file; returns the folder, the file and the secret.
fn with_secret() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = provision(dir.path(), &["secret", "--out", "hq.secret"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.path().join("hq.secret");
    let secret = fs::read_to_string(&path).unwrap();
    (dir, path, secret)
}

fn gateway_args<'a>(store: &'a str, gateway: &'a str) -> Vec<&'a str> {
    vec![
        "gateway",
        "--store",
        store,
        "--gateway",
        gateway,
        "--secret-file",
        "hq.secret",
        "--broker",
        "mqtts://hq.example:8883",
        "--hq-url",
        "https://hq.example",
        "--zone",
        "fitting-rooms",
    ]
}

#[test]
fn a_new_secret_file_is_64_hex_characters_readable_only_by_its_owner() {
    let (_dir, path, secret) = with_secret();
    assert_eq!(secret.len(), 64, "{secret:?}");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn two_secrets_differ() {
    let dir = tempfile::tempdir().unwrap();
    let a = provision(dir.path(), &["secret"]);
    let b = provision(dir.path(), &["secret"]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(String::from_utf8_lossy(&a.stdout).trim().len(), 64);
    assert_ne!(a.stdout, b.stdout);
}

#[test]
fn a_gateway_config_parses_names_its_ids_and_carries_a_token_head_office_accepts() {
    let (dir, _, secret) = with_secret();
    let out = provision(dir.path(), &gateway_args("store-42", "gw_1"));
    assert!(out.status.success(), "{}", stderr(&out));

    let path = dir.path().join("agent.toml");
    assert_eq!(mode(&path), 0o600, "the config holds secrets");
    let cfg: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
    assert_eq!(cfg["store_id"].as_str(), Some("store-42"));
    assert_eq!(cfg["gateway_id"].as_str(), Some("gw_1"));
    assert_eq!(cfg["data_dir"].as_str(), Some("/var/lib/instore"));
    assert_eq!(cfg["http"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(cfg["http"]["admin_token"].as_str().unwrap().len(), 64);
    let source = &cfg["sources"].as_array().unwrap()[0];
    assert_eq!(source["kind"].as_str(), Some("ble"));
    assert_eq!(source["adapter"].as_str(), Some("hci0"));
    assert_eq!(source["zone"].as_str(), Some("fitting-rooms"));
    assert_eq!(cfg["sync"]["enabled"].as_bool(), Some(true));
    assert_eq!(
        cfg["sync"]["broker"].as_str(),
        Some("mqtts://hq.example:8883")
    );
    assert_eq!(cfg["sync"]["hq_url"].as_str(), Some("https://hq.example"));
    assert_eq!(
        cfg["react"]["rules"].as_str(),
        Some("/etc/instore/rules.toml")
    );
    assert_eq!(
        cfg["member_codes"]["legacy"].as_bool(),
        Some(false),
        "a new gateway takes signed member codes only"
    );

    // Head office verifies with its `[auth] gateway_secret` string's bytes.
    let token = cfg["sync"]["token"].as_str().unwrap();
    assert!(verify_gateway_token(
        secret.as_bytes(),
        "store-42",
        "gw_1",
        token
    ));
    assert!(!verify_gateway_token(
        secret.as_bytes(),
        "store-43",
        "gw_1",
        token
    ));
}

#[test]
fn each_gateway_gets_its_own_admin_token() {
    let (dir, _, _) = with_secret();
    let mut tokens = Vec::new();
    for gw in ["a", "b"] {
        let mut args = gateway_args("s1", gw);
        let out_name = format!("{gw}.toml");
        args.extend(["--out", &out_name]);
        let out = provision(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let cfg: toml::Table = fs::read_to_string(dir.path().join(&out_name))
            .unwrap()
            .parse()
            .unwrap();
        tokens.push(cfg["http"]["admin_token"].as_str().unwrap().to_string());
    }
    assert_ne!(tokens[0], tokens[1]);
}

#[test]
fn bad_ids_are_refused_with_a_clear_message_and_no_file() {
    let (dir, _, _) = with_secret();
    for (store, gateway, named) in [
        ("store/1", "gw1", "store id \"store/1\""),
        ("s1", "gw+", "gateway id \"gw+\""),
        ("s1", "", "gateway id \"\""),
    ] {
        let out = provision(dir.path(), &gateway_args(store, gateway));
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(&format!("invalid {named}")), "{err}");
        assert!(err.contains("A-Z a-z 0-9 _ -"), "{err}");
        assert!(!dir.path().join("agent.toml").exists());
    }
}

#[test]
fn a_broker_that_is_not_an_mqtt_url_is_refused() {
    let (dir, _, _) = with_secret();
    let mut args = gateway_args("s1", "g1");
    let broker = args.iter().position(|a| *a == "--broker").unwrap() + 1;
    args[broker] = "hq.example:1883";
    let out = provision(dir.path(), &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected mqtt://"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_or_short_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = provision(dir.path(), &gateway_args("s1", "g1"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reading the gateway secret from hq.secret"));

    fs::write(dir.path().join("hq.secret"), "short\n").unwrap();
    let out = provision(dir.path(), &gateway_args("s1", "g1"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 16"), "{}", stderr(&out));
}

#[test]
fn an_existing_file_is_kept_unless_forced() {
    let (dir, secret_path, secret) = with_secret();

    let out = provision(dir.path(), &["secret", "--out", "hq.secret"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&secret_path).unwrap(), secret);

    let config = dir.path().join("agent.toml");
    fs::write(&config, "# hand-edited\n").unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let out = provision(dir.path(), &gateway_args("s1", "g1"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&config).unwrap(), "# hand-edited\n");

    let mut forced = gateway_args("s1", "g1");
    forced.push("--force");
    let out = provision(dir.path(), &forced);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        fs::read_to_string(&config)
            .unwrap()
            .contains("gateway_id = \"g1\"")
    );
    assert_eq!(
        mode(&config),
        0o600,
        "a replaced file does not keep wider permissions"
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_gateway_can_be_enrolled_from_the_secret_head_office_generated_in_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hq-data");
    fs::create_dir(&data).unwrap();
    let secret = "f".repeat(64);
    fs::write(data.join("gateway_secret"), &secret).unwrap();
    let mut args: Vec<&str> = gateway_args("s7", "g7")
        .into_iter()
        .filter(|a| *a != "--secret-file" && *a != "hq.secret")
        .collect();
    args.extend(["--hq-data-dir", "hq-data"]);
    let out = provision(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg: toml::Table = fs::read_to_string(dir.path().join("agent.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let token = cfg["sync"]["token"].as_str().unwrap();
    assert!(verify_gateway_token(secret.as_bytes(), "s7", "g7", token));

    // Neither source given: clap names both options.
    let args: Vec<&str> = gateway_args("s7", "g7")
        .into_iter()
        .filter(|a| *a != "--secret-file" && *a != "hq.secret")
        .collect();
    let out = provision(dir.path(), &args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--secret-file"), "{}", stderr(&out));
}
