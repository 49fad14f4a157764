//! Logs on stderr (journald keeps them): `RUST_LOG` chooses what, `INSTORE_LOG_FORMAT=json`
//! gives one JSON object a line for a log shipper, colour only on a terminal.

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset or invalid
/// (head office quiets its embedded broker, which logs every connection at info).
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json_requested(std::env::var("INSTORE_LOG_FORMAT").ok().as_deref()) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn json_requested(format: Option<&str>) -> bool {
    format.is_some_and(|f| f.eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_only_when_asked_for() {
        assert!(super::json_requested(Some("json")));
        assert!(super::json_requested(Some("JSON")));
        assert!(!super::json_requested(Some("text")));
        assert!(!super::json_requested(None));
    }
}
