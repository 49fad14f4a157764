//! Head office's TOML configuration: parsed, defaulted and validated in one place.
//!
//! `instore-sync check-config FILE` runs [`HqConfig::load`] and prints its error, which names the
//! key and its line. Every key is documented in `sync-server/examples/hq.toml`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Client id of head office's MQTT session. Fixed so that the broker keeps the persistent
/// session (and its queued QoS 1 batches) across head-office restarts.
pub const DEFAULT_CLIENT_ID: &str = "instore-sync";

/// Longest accepted `[broker] share_group`.
pub const MAX_SHARE_GROUP_LEN: usize = 64;

/// Shortest accepted `[auth] gateway_secret`: gateway tokens are only as strong as this secret.
pub const MIN_SECRET_LEN: usize = 16;

use instore_daemon::config::TopLevel;
pub use instore_daemon::config::{ConfigError, line_of_key};

/// The config's top-level keys, tables included, for errors about a missing one.
const TOP: TopLevel = TopLevel {
    keys: &[
        "data_dir",
        "http",
        "api",
        "auth",
        "broker",
        "database",
        "compute",
        "membership",
        "privacy",
    ],
    tables: &[
        "http",
        "api",
        "auth",
        "broker",
        "database",
        "compute",
        "membership",
        "privacy",
    ],
};

/// The whole head-office configuration (`instore-sync run --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqConfig {
    /// Folder of the SQLite database (`hq.sqlite`). Created if missing.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub api: ApiConfig,
    /// Optional: the brief's minimal config has no `[auth]`; see [`AuthConfig::gateway_secret`].
    #[serde(default)]
    pub auth: AuthConfig,
    pub broker: BrokerConfig,
    /// Optional: SQLite in `data_dir` when absent.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Pyramid, tiers, stages, groups, next visit, BG/NBD (`sync-server/examples/hq.toml`).
    #[serde(default)]
    pub compute: crate::compute::ComputeConfig,
    /// Which stores hold which members.
    #[serde(default)]
    pub membership: crate::fanout::MembershipConfig,
    /// How long head office keeps what gateways send.
    #[serde(default)]
    pub privacy: PrivacyConfig,
}

/// `[privacy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Events (arrivals, alerts, ...) older than this many days are deleted; 0 keeps them
    /// forever. Visits, purchases and computed fields are kept: the 12-month figures need them.
    #[serde(default = "default_events_days")]
    pub events_days: u32,
}

fn default_events_days() -> u32 {
    400
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            events_days: default_events_days(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL instead of SQLite: `postgres://user[:password]@host[:port]/database`
    /// (libpq URL; `?options=-csearch_path%3Dschema` to use a schema). Absent: `data_dir/hq.sqlite`.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API, dashboard, `/healthz` and `/metrics`. Port 0 picks a free port
    /// (see [`crate::HeadOffice::http_addr`]).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Admin bearer token: full access to the API.
    pub token: String,
    /// Read-only bearer token for the dashboard (`/dashboard`) and the read-only API it uses
    /// (pyramid, funnel, overdue with names, stores, rules report, gateways): for the people who
    /// run the chain, who should not import, erase or enrol. Absent: only the admin token reads.
    #[serde(default)]
    pub viewer_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret behind gateway tokens (`instore_protocol::token`). When absent, head office
    /// uses `data_dir/gateway_secret`, generating it (mode 0600) on first start
    /// ([`crate::secrets`]).
    #[serde(default)]
    pub gateway_secret: Option<String>,
    /// Refuse MQTT messages that are not sealed ([`instore_protocol::auth`]). Off by default so
    /// that gateways of an older release keep working; a gateway that has sealed once is held
    /// to it either way. Turn on once every gateway runs a release that seals.
    #[serde(default)]
    pub require_sealed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the embedded broker (rumqttd) on this address. Exclusive with `url`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Connect to an external broker, `mqtt://host:port`. Exclusive with `listen`.
    #[serde(default)]
    pub url: Option<String>,
    /// MQTT client id of head office's persistent session. With `share_group` and the default
    /// id, each instance derives its own (`instore-sync-<8 hex>`, kept in `data_dir/instance_id`),
    /// since the broker would otherwise hand one session back and forth between instances.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Several head-office instances share the gateways' batches: each subscribes to the gateway
    /// topics as `$share/<share_group>/...`. Needs `url` (an external broker), `[database] url`
    /// (PostgreSQL, where every instance finds the same state) and `[auth] gateway_secret` (one
    /// secret for every instance). See `sync-server/SCALE-OUT.md`.
    #[serde(default)]
    pub share_group: Option<String>,
    /// User name head office presents to an external broker that authenticates clients
    /// (`instore-provision mosquitto` makes it `instore-sync`). Unset: none.
    #[serde(default)]
    pub username: Option<String>,
    /// Its password (`instore-provision mosquitto` writes it to `hq_password`).
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA certificates an `mqtts://` broker's certificate must chain to. Unset: the
    /// operating system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that authenticate head office by certificate;
    /// needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Let clients without credentials connect to the embedded broker. Off: only gateways with
    /// their token (user name = gateway id) and head office itself may connect. For a chain
    /// whose gateways predate tokens, until each has one.
    #[serde(default)]
    pub allow_anonymous: bool,
}

fn default_client_id() -> String {
    DEFAULT_CLIENT_ID.to_string()
}

/// Neither `listen` nor `url` set: what a config builds on (it must then set one of them).
impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            url: None,
            client_id: default_client_id(),
            share_group: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            allow_anonymous: false,
        }
    }
}

/// Where head office's MQTT client connects, derived from [`BrokerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEndpoint {
    /// Start rumqttd in-process on this address, then connect to it.
    Embedded(SocketAddr),
    /// An external broker.
    External(MqttUrl),
}

/// An external broker's address: `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS, port 8883 by default.
    pub tls: bool,
}

impl BrokerConfig {
    /// TLS keys that cannot apply: `(key, reason)`.
    fn tls_problem(&self) -> Option<(&'static str, &'static str)> {
        let tls = self
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("mqtts://"));
        let tls_keys = self.ca_file.is_some() || self.client_cert.is_some();
        if tls_keys && !tls {
            let key = if self.ca_file.is_some() {
                "ca_file"
            } else {
                "client_cert"
            };
            return Some((key, "needs an mqtts:// url"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Some(("client_cert", "client_cert and client_key go together"));
        }
        if self.allow_anonymous && self.listen.is_none() {
            return Some((
                "allow_anonymous",
                "applies to the embedded broker (`listen`) only; an external broker has its own \
                 settings",
            ));
        }
        None
    }

    /// Resolves `listen` / `url` into an endpoint; the error names the key at fault.
    pub fn endpoint(&self) -> Result<BrokerEndpoint, (&'static str, String)> {
        match (&self.listen, &self.url) {
            (Some(addr), None) => Ok(BrokerEndpoint::Embedded(*addr)),
            (None, Some(url)) => parse_mqtt_url(url)
                .map(BrokerEndpoint::External)
                .map_err(|reason| ("url", reason)),
            (Some(_), Some(_)) => Err((
                "listen",
                "set either `listen` (embedded broker) or `url` (external broker), not both".into(),
            )),
            (None, None) => Err((
                "broker",
                "set `listen` (embedded broker) or `url` (external broker)".into(),
            )),
        }
    }
}

/// Parses `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (8883).
pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let default_port = if tls { 8883 } else { 1883 };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "{url:?} must be mqtt://host:port (credentials go in username and password)"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // A bracketed IPv6 literal without a port, e.g. mqtt://[::1]
        Some((_, p)) if p.ends_with(']') => (rest, default_port),
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number 0-65535"))?,
        ),
        None => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(MqttUrl {
        host: host.to_string(),
        port,
        tls,
    })
}

impl HqConfig {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved against
    /// the file's folder, so a unit file and a shell see the same config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = instore_daemon::config::read(path)?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        instore_daemon::config::resolve(base, &mut cfg.data_dir);
        for file in [
            &mut cfg.broker.ca_file,
            &mut cfg.broker.client_cert,
            &mut cfg.broker.client_key,
        ]
        .into_iter()
        .flatten()
        {
            instore_daemon::config::resolve(base, file);
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: HqConfig = instore_daemon::config::parse(text, origin, TOP)?;
        cfg.check().map_err(|(table, key, reason)| {
            let full = qualified(table, &key);
            // `compute.pyramid.top5` sits in `[compute.pyramid]` as `top5`.
            let line = match full.rsplit_once('.') {
                Some((t, k)) if table.is_some() => line_of_key(text, Some(t), k),
                _ => line_of_key(text, table, &key),
            };
            ConfigError::Invalid {
                path: origin.to_string(),
                key: full,
                line,
                reason,
            }
        })?;
        Ok(cfg)
    }

    /// Validates a config built in code (the demo, tests). Errors carry line 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(table, key, reason)| ConfigError::Invalid {
                path: "<in-process config>".into(),
                key: qualified(table, &key),
                line: 0,
                reason,
            })
    }

    /// The semantic checks: `(table, key, reason)` of the first problem.
    fn check(&self) -> Result<(), (Option<&'static str>, String, String)> {
        if self.data_dir.as_os_str().is_empty() {
            return Err((None, "data_dir".into(), "must not be empty".into()));
        }
        if self.api.token.trim().is_empty() {
            return Err((Some("api"), "token".into(), "must not be empty".into()));
        }
        if let Some(v) = &self.api.viewer_token {
            if v.trim().len() < 16 {
                return Err((
                    Some("api"),
                    "viewer_token".into(),
                    "must be at least 16 characters (it opens member names)".into(),
                ));
            }
            if v.trim() == self.api.token.trim() {
                return Err((
                    Some("api"),
                    "viewer_token".into(),
                    "must differ from the admin token".into(),
                ));
            }
        }
        if self
            .auth
            .gateway_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_LEN)
        {
            return Err((
                Some("auth"),
                "gateway_secret".into(),
                format!("must be at least {MIN_SECRET_LEN} characters"),
            ));
        }
        if self.broker.client_id.is_empty() || self.broker.client_id.len() > 23 {
            // MQTT 3.1.1 only promises client ids of 1-23 characters to work on every broker.
            return Err((
                Some("broker"),
                "client_id".into(),
                "must be 1-23 characters".into(),
            ));
        }
        if self.broker.password.is_some() && self.broker.username.is_none() {
            return Err((Some("broker"), "password".into(), "needs a username".into()));
        }
        if let Some((key, reason)) = self.broker.tls_problem() {
            return Err((Some("broker"), key.into(), reason.into()));
        }
        if let Some((key, reason)) = self.cluster_problem() {
            return Err((Some(key.0), key.1.into(), reason));
        }
        if let Err((key, reason)) = self.compute.validate() {
            return Err((Some("compute"), key.to_string(), reason));
        }
        if let Err((key, reason)) = self.membership.validate() {
            return Err((Some("membership"), key, reason));
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err((
                Some("database"),
                "url".into(),
                "must be a postgres:// URL (leave it out for SQLite in data_dir)".into(),
            ));
        }
        match self.broker.endpoint() {
            Ok(_) => Ok(()),
            // Neither key set: point at the table header itself.
            Err(("broker", reason)) => Err((None, "[broker]".into(), reason)),
            Err((key, reason)) => Err((Some("broker"), key.into(), reason)),
        }
    }

    /// With `[broker] share_group`: what several instances need to agree on, else `None`.
    fn cluster_problem(&self) -> Option<((&'static str, &'static str), String)> {
        let group = self.broker.share_group.as_deref()?;
        let key = ("broker", "share_group");
        if group.is_empty()
            || group.len() > MAX_SHARE_GROUP_LEN
            || !group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some((
                key,
                format!(
                    "must be 1-{MAX_SHARE_GROUP_LEN} characters of A-Z, a-z, 0-9, `-` and `_` \
                     (it becomes a topic level: `$share/<share_group>/...`)"
                ),
            ));
        }
        if self.broker.url.is_none() {
            return Some((
                key,
                "needs `url` (an external broker every instance connects to); the embedded \
                 broker lives inside one instance"
                    .into(),
            ));
        }
        if self.database.url.is_none() {
            return Some((
                key,
                "needs `[database] url` (PostgreSQL): every instance must see the same \
                 high-water marks, boots and members"
                    .into(),
            ));
        }
        if self.auth.gateway_secret.is_none() {
            return Some((
                key,
                "needs `[auth] gateway_secret`: a secret generated in each instance's data_dir \
                 would differ, and gateway tokens would work on one instance only"
                    .into(),
            ));
        }
        None
    }

    /// Path of the SQLite database inside `data_dir`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("hq.sqlite")
    }

    /// The database head office uses: `[database] url`, else SQLite in `data_dir`.
    pub fn database_location(&self) -> crate::store::Location {
        match &self.database.url {
            Some(url) => crate::store::Location::Postgres(url.clone()),
            None => crate::store::Location::Sqlite(self.database_path()),
        }
    }
}

fn qualified(table: Option<&str>, key: &str) -> String {
    match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"data_dir = "data"

[http]
listen = "127.0.0.1:8090"

[api]
token = "admin-token"

[auth]
gateway_secret = "0123456789abcdef0123"

[broker]
listen = "127.0.0.1:1883"
"#;

    #[test]
    fn the_shipped_example_is_valid() {
        let cfg = HqConfig::parse(include_str!("../examples/hq.toml"), "hq.toml").unwrap();
        assert!(matches!(
            cfg.broker.endpoint(),
            Ok(BrokerEndpoint::Embedded(_))
        ));
        // The documented [membership] is the built-in default.
        assert_eq!(cfg.membership, crate::fanout::MembershipConfig::default());
        assert_eq!(
            cfg.privacy.events_days,
            PrivacyConfig::default().events_days
        );
    }

    #[test]
    fn a_minimal_config_gets_the_default_client_id_and_retention() {
        let cfg = HqConfig::parse(VALID, "t").unwrap();
        assert_eq!(cfg.broker.client_id, "instore-sync");
        assert_eq!(cfg.http.listen.port(), 8090);
        assert_eq!(cfg.privacy.events_days, 400);
        let keep = HqConfig::parse(&format!("{VALID}[privacy]\nevents_days = 0\n"), "t").unwrap();
        assert_eq!(keep.privacy.events_days, 0);
        let creds = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "listen = \"127.0.0.1:1883\"\nusername = \"hq\"\npassword = \"pw\"",
        );
        let c = HqConfig::parse(&creds, "t").unwrap();
        assert_eq!(c.broker.username.as_deref(), Some("hq"));
        let no_user = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "listen = \"127.0.0.1:1883\"\npassword = \"pw\"",
        );
        let err = HqConfig::parse(&no_user, "t").unwrap_err().to_string();
        assert!(
            err.contains("password") && err.contains("username"),
            "{err}"
        );
        let err = HqConfig::parse(&format!("{VALID}[privacy]\nevents_dayz = 3\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("events_dayz"), "{err}");
    }

    #[test]
    fn relative_data_dirs_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.toml");
        std::fs::write(&path, VALID).unwrap();
        let cfg = HqConfig::load(&path).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
    }

    #[test]
    fn an_external_broker_url_is_split_into_host_and_port() {
        let text = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "url = \"mqtt://mq.example:1884\"",
        );
        let cfg = HqConfig::parse(&text, "t").unwrap();
        assert_eq!(
            cfg.broker.endpoint(),
            Ok(BrokerEndpoint::External(MqttUrl {
                host: "mq.example".into(),
                port: 1884,
                tls: false,
            }))
        );
        let tls = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "url = \"mqtts://mq.example\"\nca_file = \"ca.pem\"",
        );
        let cfg = HqConfig::parse(&tls, "t").unwrap();
        assert_eq!(
            cfg.broker.endpoint(),
            Ok(BrokerEndpoint::External(MqttUrl {
                host: "mq.example".into(),
                port: 8883,
                tls: true,
            }))
        );
    }

    #[test]
    fn tls_keys_without_mqtts_or_a_lone_client_cert_are_refused() {
        let plain = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "url = \"mqtt://mq.example\"\nca_file = \"ca.pem\"",
        );
        let err = HqConfig::parse(&plain, "t").unwrap_err().to_string();
        assert!(
            err.contains("broker.ca_file") && err.contains("mqtts"),
            "{err}"
        );
        let lone = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "url = \"mqtts://mq.example\"\nclient_cert = \"c.pem\"",
        );
        let err = HqConfig::parse(&lone, "t").unwrap_err().to_string();
        assert!(err.contains("client_key"), "{err}");
        let anon = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            "url = \"mqtt://mq.example\"\nallow_anonymous = true",
        );
        let err = HqConfig::parse(&anon, "t").unwrap_err().to_string();
        assert!(err.contains("allow_anonymous"), "{err}");
    }

    #[test]
    fn both_listen_and_url_are_refused_naming_the_broker_line() {
        let text = format!("{VALID}url = \"mqtt://x:1883\"\n");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains("broker.listen") && err.contains("line 13"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_broker_choice_is_refused() {
        let text = VALID.replace("listen = \"127.0.0.1:1883\"", "");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("[broker]") && err.contains("line 12"), "{err}");
    }

    #[test]
    fn a_short_gateway_secret_is_refused_with_its_line() {
        let text = VALID.replace("0123456789abcdef0123", "short");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains("auth.gateway_secret") && err.contains("line 10"),
            "{err}"
        );
    }

    #[test]
    fn a_non_mqtt_url_is_refused() {
        let text = VALID.replace("listen = \"127.0.0.1:1883\"", "url = \"http://x\"");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains("broker.url") && err.contains("line 13"),
            "{err}"
        );
    }

    #[test]
    fn a_type_error_names_the_line_and_key() {
        let text = VALID.replace("\"127.0.0.1:8090\"", "8090");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("line 4") && err.contains("listen"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_rather_than_ignored() {
        let text = format!("{VALID}lisen = \"typo\"\n");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    /// The brief's minimal config: `data_dir`, `[http] listen`, `[api] token`, `[broker] listen`.
    const MINIMAL: &str = "data_dir = \"d\"\n[http]\nlisten = \"127.0.0.1:1\"\n[api]\ntoken = \"t\"\n\
                           [broker]\nlisten = \"127.0.0.1:2\"\n";

    #[test]
    fn the_briefs_minimal_config_without_auth_is_accepted() {
        let cfg = HqConfig::parse(MINIMAL, "t").unwrap();
        assert_eq!(cfg.auth.gateway_secret, None);
    }

    #[test]
    fn a_missing_key_in_a_table_is_named_in_full_with_its_tables_line() {
        let text = MINIMAL.replace("token = \"t\"\n", "");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("`api.token` missing"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(!err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_missing_top_level_key_or_table_is_named() {
        let text = MINIMAL.replace("data_dir = \"d\"\n", "");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("`data_dir` missing"), "{err}");
        let text = MINIMAL.replace("[http]\nlisten = \"127.0.0.1:1\"\n", "");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains("`http` missing: add a `[http]` table"),
            "{err}"
        );
        assert!(!err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_bad_compute_key_is_named_with_its_line_in_its_subtable() {
        let text = format!("{VALID}\n[compute.pyramid]\ntop5 = 0.01\n");
        let err = HqConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains("compute.pyramid.top5") && err.contains("line 16"),
            "{err}"
        );
    }

    #[test]
    fn line_of_key_knows_which_table_a_key_is_in() {
        assert_eq!(line_of_key(VALID, Some("http"), "listen"), 4);
        assert_eq!(line_of_key(VALID, Some("broker"), "listen"), 13);
        assert_eq!(line_of_key(VALID, None, "data_dir"), 1);
        assert_eq!(line_of_key(VALID, Some("broker"), "url"), 0);
    }

    fn clustered(extra_broker: &str, database: bool) -> String {
        let text = VALID.replace(
            "listen = \"127.0.0.1:1883\"",
            &format!("url = \"mqtt://mq:1883\"\n{extra_broker}"),
        );
        if database {
            format!("{text}[database]\nurl = \"postgres://pg/hq\"\n")
        } else {
            text
        }
    }

    #[test]
    fn a_share_group_with_an_external_broker_and_postgres_is_accepted() {
        let cfg = HqConfig::parse(&clustered("share_group = \"hq\"", true), "t").unwrap();
        assert_eq!(cfg.broker.share_group.as_deref(), Some("hq"));
    }

    #[test]
    fn a_share_group_is_refused_without_what_every_instance_must_share() {
        let err = |text: &str| HqConfig::parse(text, "t").unwrap_err().to_string();
        let no_db = err(&clustered("share_group = \"hq\"", false));
        assert!(
            no_db.contains("broker.share_group") && no_db.contains("[database] url"),
            "{no_db}"
        );
        assert!(no_db.contains("line 14"), "{no_db}");
        let embedded =
            format!("{VALID}share_group = \"hq\"\n[database]\nurl = \"postgres://p/h\"\n");
        assert!(err(&embedded).contains("needs `url`"), "{}", err(&embedded));
        let no_secret = clustered("share_group = \"hq\"", true)
            .replace("gateway_secret = \"0123456789abcdef0123\"", "");
        assert!(
            err(&no_secret).contains("[auth] gateway_secret"),
            "{}",
            err(&no_secret)
        );
        for bad in ["", "a/b", "a+", "#", "x y", &"x".repeat(65)] {
            let text = clustered(&format!("share_group = {bad:?}"), true);
            assert!(
                err(&text).contains("must be 1-64 characters"),
                "{bad:?}: {}",
                err(&text)
            );
        }
    }

    #[test]
    fn mqtt_urls_parse_with_a_default_port() {
        let hp = |u: &str| parse_mqtt_url(u).map(|m| (m.host, m.port, m.tls));
        assert_eq!(hp("mqtt://h"), Ok(("h".into(), 1883, false)));
        assert_eq!(hp("mqtt://h:9/"), Ok(("h".into(), 9, false)));
        assert_eq!(hp("mqtt://[::1]:7"), Ok(("::1".into(), 7, false)));
        assert_eq!(hp("mqtts://h"), Ok(("h".into(), 8883, true)));
        assert!(parse_mqtt_url("tcp://h").is_err());
        assert!(parse_mqtt_url("mqtts://u:p@h").is_err());
        assert!(parse_mqtt_url("mqtt://h:x").is_err());
        assert!(parse_mqtt_url("mqtt://").is_err());
    }
}
