use super::*;

const MINIMAL: &str = "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = \"/tmp/x\"\n";

#[test]
fn a_minimal_config_gets_defaults() {
    let c = AgentConfig::parse(MINIMAL, "t").unwrap();
    assert!(!c.sync.enabled);
    assert_eq!(c.http.listen.port(), 8080);
    assert_eq!(c.presence.depart_after_s, 60);
    assert!(
        c.member_codes.legacy,
        "a deployed config keeps accepting HMAC codes"
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../examples/agent.toml");
    let c = AgentConfig::parse(text, "agent.toml").unwrap();
    assert!(
        !c.member_codes.legacy,
        "new installs take signed codes only"
    );
}

#[test]
fn an_invalid_value_is_reported_with_key_and_line() {
    let text =
        format!("{MINIMAL}\n[sync]\nenabled = true\nbroker = \"tcp://x\"\nhq_url = \"http://h\"\n");
    let err = AgentConfig::parse(&text, "a.toml").unwrap_err().to_string();
    assert!(err.contains("`broker`") && err.contains("line 7"), "{err}");
}

#[test]
fn a_simulated_store_with_several_receivers_is_checked() {
    let sim = |extra: &str| format!("{MINIMAL}[[sources]]\nkind = \"sim\"\n{extra}");
    let c = AgentConfig::parse(
        &sim("zones = [\"entrance\", \"fitting-rooms\"]\n"),
        "a.toml",
    )
    .unwrap();
    assert_eq!(c.sources[0].zones, ["entrance", "fitting-rooms"]);
    assert_eq!(c.sources[0].zone_gap_db, 15.0);
    for (extra, key) in [
        ("zones = [\"a\", \"a\"]\n", "zones"),
        ("zones = [\"\"]\n", "zones"),
        (
            "zones = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]\n",
            "zones",
        ),
        ("zone_gap_db = 90.0\n", "zone_gap_db"),
    ] {
        let err = AgentConfig::parse(&sim(extra), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn http_access_keys_default_to_the_safe_side_and_are_checked() {
    let c = AgentConfig::parse(MINIMAL, "a.toml").unwrap();
    assert_eq!(c.http.metrics, MetricsAccess::Local);
    assert_eq!(c.http.tablet_token_ttl(), Duration::from_secs(90 * 86_400));
    let open = AgentConfig::parse(
        &format!("{MINIMAL}[http]\nmetrics = \"open\"\ntablet_token_days = 7\n"),
        "a.toml",
    )
    .unwrap();
    assert_eq!(open.http.metrics, MetricsAccess::Open);
    assert_eq!(open.http.tablet_token_days, 7);
    for (extra, key, line) in [
        ("[http]\ntablet_token_days = 0\n", "tablet_token_days", 5),
        ("[http]\nmetrics = \"token\"\n", "metrics", 5),
        ("[http]\nmetrics = \"lan\"\n", "metrics", 5),
    ] {
        let err = AgentConfig::parse(&format!("{MINIMAL}{extra}"), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(&format!("line {line}")),
            "{extra}: {err}"
        );
    }
}

#[test]
fn a_type_error_names_the_line_and_key() {
    let text = "store_id = \"s1\"\ngateway_id = \"g1\"\ndata_dir = 5\n";
    let err = AgentConfig::parse(text, "a.toml").unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("data_dir"), "{err}");
}

#[test]
fn unknown_keys_are_refused_rather_than_ignored() {
    let text = format!("{MINIMAL}stor_id = \"typo\"\n");
    let err = AgentConfig::parse(&text, "a.toml").unwrap_err().to_string();
    assert!(err.contains("stor_id"), "{err}");
}

#[test]
fn ids_that_would_break_topics_are_refused() {
    let text = "store_id = \"s/1\"\ngateway_id = \"g1\"\ndata_dir = \"/tmp\"\n";
    let err = AgentConfig::parse(text, "a.toml").unwrap_err().to_string();
    assert!(err.contains("store_id") && err.contains("line 1"), "{err}");
}

#[test]
fn react_limits_and_qr_sources_are_checked() {
    let ok = AgentConfig::parse(
        &format!("{MINIMAL}[react]\nquiet_hours = \"22:00-07:00\"\ntimezone_offset_min = 60\n"),
        "a.toml",
    )
    .unwrap();
    assert_eq!(ok.react.alerts_per_minute, 30);
    for (extra, key, line) in [
        ("[react]\nquiet_hours = \"late\"\n", "quiet_hours", 5),
        (
            "[react]\ntimezone_offset_min = 900\n",
            "timezone_offset_min",
            5,
        ),
        (
            "[react]\nquiet_hours = \"22:00-07:00\"\ntimezone = \"Europe/Berln\"\n",
            "timezone",
            6,
        ),
        (
            "[react]\ntimezone = \"Europe/Berlin\"\ntimezone_offset_min = 60\n",
            "timezone_offset_min",
            6,
        ),
        ("[react]\nmqtt_broker = \"tcp://x\"\n", "mqtt_broker", 5),
        ("[[sources]]\nkind = \"qr\"\n", "kind", 5),
    ] {
        let err = AgentConfig::parse(&format!("{MINIMAL}{extra}"), "a.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(&format!("line {line}")),
            "{extra}: {err}"
        );
    }
    let qr = AgentConfig::parse(
        &format!("{MINIMAL}[[sources]]\nkind = \"qr_serial\"\nlisten = \"0.0.0.0:7070\"\n"),
        "a.toml",
    )
    .unwrap();
    assert_eq!(qr.sources[0].kind, SourceKind::Qr);
}

#[test]
fn hub_roles_need_a_key_and_peers_and_default_to_a_lone_hub() {
    let c = AgentConfig::parse(MINIMAL, "t").unwrap();
    assert_eq!(c.hub.role, HubRole::Hub);
    assert!(c.hub.peers.is_empty() && c.hub.key.is_empty());
    let with = |hub: &str| AgentConfig::parse(&format!("{MINIMAL}[hub]\n{hub}"), "t");
    let err = |hub: &str| with(hub).unwrap_err().to_string();
    assert!(err("role = \"receiver\"\npeers = [\"http://10.0.0.2:8080\"]\n").contains("key"));
    assert!(
        err("role = \"receiver\"\nkey = \"short\"\npeers = [\"http://10.0.0.2:8080\"]\n")
            .contains("at least 16")
    );
    assert!(err("role = \"standby\"\nkey = \"0123456789abcdef\"\n").contains("peers"));
    assert!(
        err("role = \"receiver\"\nkey = \"0123456789abcdef\"\npeers = [\"10.0.0.2:8080\"]\n")
            .contains("not an http")
    );
    assert!(err("role = \"leader\"\n").contains("role"));
    assert!(err("key = \"0123456789abcdef\"\ntakeover_after_s = 1\n").contains("takeover_after_s"));
    let standby = with(
        "role = \"standby\"\nkey = \"0123456789abcdef\"\npeers = [\"http://10.0.0.2:8080\"]\n",
    )
    .unwrap();
    assert_eq!(standby.hub.role, HubRole::Standby);
    assert_eq!(standby.hub.takeover_after_s, 15);
    // A hub with a key and no peers takes forwarded sightings; without a key it needs none.
    assert!(with("key = \"0123456789abcdef\"\n").is_ok());
}
