//! Several head-office instances side by side (`[broker] share_group`): what makes them one head
//! office.
//!
//! - **Ingest** needs nothing here: the broker spreads batches over the instances (a shared
//!   subscription, see `ingest::mqtt`), every instance stores into the same PostgreSQL, and the
//!   state that answers a gateway (high-water marks, boots, floors) lives there. An instance
//!   acknowledges a batch after its own commit; delivery rests on the gateway's outbox and
//!   idempotent ingest, never on the broker handing a lost instance's messages to another.
//! - **Once-only work** (compute passes, key re-issue) runs where the [`lease`] is held.
//! - **Notices** are published by every instance from the heads in the database, which only grow
//!   ([`crate::fanout::notifier`]): instances converge on the same retained notice.
//!
//! Each instance also needs its own MQTT client id, derived here when the config leaves the
//! default.

pub mod lease;

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::PathBuf,
};

use rand::{TryRngCore, rngs::OsRng};

use crate::config::{DEFAULT_CLIENT_ID, HqConfig};

/// File in `data_dir` holding this instance's id (`<8 hex>`), made on first start.
pub const INSTANCE_ID_FILE: &str = "instance_id";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold an instance id (8 hex digits): delete it to make a new one")]
    BadInstanceId { path: PathBuf },
    #[error("cannot read the operating system's random number generator: {0}")]
    Random(String),
}

/// The MQTT client id of this instance: `[broker] client_id` as configured; with a share group
/// and the default id, `instore-sync-<instance id>` so that instances do not throw each other
/// off (a broker closes the older connection of a client id that connects twice).
pub fn client_id(cfg: &HqConfig) -> Result<String, ClusterError> {
    if cfg.broker.share_group.is_none() || cfg.broker.client_id != DEFAULT_CLIENT_ID {
        return Ok(cfg.broker.client_id.clone());
    }
    Ok(format!("{DEFAULT_CLIENT_ID}-{}", instance_id(cfg)?))
}

/// This instance's id, read from `data_dir` or made there. Stable across restarts, so that the
/// broker's logs and ACLs name the same instance the same way.
fn instance_id(cfg: &HqConfig) -> Result<String, ClusterError> {
    let path = cfg.data_dir.join(INSTANCE_ID_FILE);
    let io = |action, source| ClusterError::Io {
        action,
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_ascii_lowercase());
            }
            return Err(ClusterError::BadInstanceId { path });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", e)),
    }
    fs::create_dir_all(&cfg.data_dir).map_err(|e| io("create the folder of", e))?;
    let mut bytes = [0u8; 4];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ClusterError::Random(e.to_string()))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io("create", e))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write", e))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, group: Option<&str>, client_id: &str) -> HqConfig {
        let text = format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntoken = \"t\"\n\
             [auth]\ngateway_secret = \"0123456789abcdef\"\n[broker]\nurl = \"mqtt://mq\"\n\
             client_id = {client_id:?}\n{}\n[database]\nurl = \"postgres://pg/x\"\n",
            dir.display(),
            group
                .map(|g| format!("share_group = {g:?}"))
                .unwrap_or_default(),
        );
        HqConfig::parse(&text, "t").unwrap()
    }

    #[test]
    fn a_shared_instance_derives_a_client_id_of_its_own_and_keeps_it() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let id_a = client_id(&cfg(a.path(), Some("hq"), DEFAULT_CLIENT_ID)).unwrap();
        let id_b = client_id(&cfg(b.path(), Some("hq"), DEFAULT_CLIENT_ID)).unwrap();
        assert!(
            id_a.starts_with("instore-sync-") && id_a.len() == 21,
            "{id_a}"
        );
        assert_ne!(id_a, id_b);
        assert_eq!(
            client_id(&cfg(a.path(), Some("hq"), DEFAULT_CLIENT_ID)).unwrap(),
            id_a,
            "stable across restarts"
        );
    }

    #[test]
    fn a_configured_client_id_and_a_lone_instance_keep_theirs() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            client_id(&cfg(d.path(), Some("hq"), "hq-east")).unwrap(),
            "hq-east"
        );
        assert_eq!(
            client_id(&cfg(d.path(), None, DEFAULT_CLIENT_ID)).unwrap(),
            DEFAULT_CLIENT_ID
        );
        assert!(!d.path().join(INSTANCE_ID_FILE).exists());
    }

    #[test]
    fn a_damaged_instance_id_is_refused_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(INSTANCE_ID_FILE), "zz").unwrap();
        let err = client_id(&cfg(d.path(), Some("hq"), DEFAULT_CLIENT_ID)).unwrap_err();
        assert!(matches!(err, ClusterError::BadInstanceId { .. }), "{err}");
    }
}
