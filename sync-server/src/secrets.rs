//! Secrets head office generates for itself when the config does not carry them, so that the
//! brief's minimal config (no `[auth]`) starts a fleet that is secure by default.
//!
//! In: the config and `data_dir`. Out: the gateway secret, read from `data_dir/gateway_secret` or
//! created there (mode 0600) on first start. `instore-provision gateway --hq-data-dir DIR` reads
//! the same file, so the technician's tool and head office agree without copying the secret into
//! a config by hand.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::{TryRngCore, rngs::OsRng};

use crate::config::{HqConfig, MIN_SECRET_LEN};

/// File name of the generated gateway secret inside `data_dir`.
pub const GATEWAY_SECRET_FILE: &str = "gateway_secret";

/// 256 bits from the operating system, as 64 hex characters.
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {len} characters; `auth.gateway_secret` needs at least {MIN_SECRET_LEN}")]
    TooShort { path: PathBuf, len: usize },
    #[error("cannot read the operating system's random number generator: {0}")]
    Random(String),
}

/// Where the gateway secret comes from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Config,
    File(PathBuf),
    Generated(PathBuf),
}

/// The gateway secret: `[auth] gateway_secret` when set, else the file in `data_dir`, created on
/// first use.
pub fn gateway_secret(cfg: &HqConfig) -> Result<(String, SecretSource), SecretError> {
    if let Some(s) = &cfg.auth.gateway_secret {
        return Ok((s.clone(), SecretSource::Config));
    }
    let path = cfg.data_dir.join(GATEWAY_SECRET_FILE);
    match read(&path)? {
        Some(s) => Ok((s, SecretSource::File(path))),
        None => {
            let fresh = random_hex()?;
            // Another instance sharing data_dir may have won the race: its secret is the one.
            if create(&path, &fresh)? {
                Ok((fresh, SecretSource::Generated(path)))
            } else {
                let s = read(&path)?.ok_or_else(|| SecretError::Io {
                    action: "read",
                    path: path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?;
                Ok((s, SecretSource::File(path)))
            }
        }
    }
}

/// Reads a secret file; `None` when it does not exist. Surrounding whitespace is not part of it.
pub fn read(path: &Path) -> Result<Option<String>, SecretError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let s = text.trim();
            if s.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    path: path.to_path_buf(),
                    len: s.len(),
                });
            }
            Ok(Some(s.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the secret to a temporary file, syncs it, then links it into place: the file appears
/// whole or not at all, and an existing one is never replaced. `false` when one already existed.
fn create(path: &Path, secret: &str) -> Result<bool, SecretError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| SecretError::Io {
            action,
            path: p,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let written = file
        .write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp));
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io("create", path)(e)),
    });
    let _ = fs::remove_file(&tmp);
    let created = linked?;
    if created {
        // The umask cannot widen a mode given at creation, but say so explicitly for readers.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    }
    Ok(created)
}

pub(crate) fn random_hex() -> Result<String, SecretError> {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, secret: Option<&str>) -> HqConfig {
        let mut cfg = HqConfig::parse(
            "data_dir = \"d\"\n[http]\nlisten = \"127.0.0.1:1\"\n[api]\ntoken = \"t\"\n\
             [broker]\nlisten = \"127.0.0.1:2\"\n",
            "t",
        )
        .unwrap();
        cfg.data_dir = dir.join("data");
        cfg.auth.gateway_secret = secret.map(str::to_string);
        cfg
    }

    #[test]
    fn an_absent_secret_is_generated_once_with_mode_0600_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), None);
        let (first, source) = gateway_secret(&cfg).unwrap();
        let path = cfg.data_dir.join(GATEWAY_SECRET_FILE);
        assert_eq!(source, SecretSource::Generated(path.clone()));
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, source) = gateway_secret(&cfg).unwrap();
        assert_eq!(second, first);
        assert_eq!(source, SecretSource::File(path));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&cfg.data_dir).unwrap().count(), 1);
    }

    #[test]
    fn a_secret_in_the_config_wins_and_no_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Some("0123456789abcdef-configured"));
        let (s, source) = gateway_secret(&cfg).unwrap();
        assert_eq!(
            (s.as_str(), source),
            ("0123456789abcdef-configured", SecretSource::Config)
        );
        assert!(!cfg.data_dir.join(GATEWAY_SECRET_FILE).exists());
    }

    #[test]
    fn a_truncated_secret_file_is_refused_rather_than_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), None);
        fs::create_dir_all(&cfg.data_dir).unwrap();
        let path = cfg.data_dir.join(GATEWAY_SECRET_FILE);
        fs::write(&path, "short\n").unwrap();
        let err = gateway_secret(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("auth.gateway_secret") && err.contains("5 characters"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "short\n");
    }
}
