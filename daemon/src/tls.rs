//! TLS to an MQTT broker (`mqtts://`), the same for a gateway's uplink and head office's link:
//! rustls with the aws-lc-rs provider rumqttc and reqwest already pull in, trust roots from a
//! PEM file or else the operating system, and a client certificate when one is configured.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file is unreadable or holds nothing usable; `key` is the config key.
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    /// No trust roots: the system has none and no `ca_file` was given.
    #[error("no CA certificates to check the broker with ({reason}); set ca_file")]
    Roots { reason: String },
}

/// Where the client's trust and identity come from (each a PEM file).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// CA certificates the broker's certificate must chain to; `None`: the system's roots.
    pub ca_file: Option<&'a Path>,
    /// Client certificate (chain) and its key, for brokers that authenticate by certificate.
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

fn file_err(key: &'static str, path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    let path = path.display().to_string();
    move |e| TlsError::File {
        key,
        path: path.clone(),
        reason: e.to_string(),
    }
}

/// The rustls client configuration for `files`.
pub fn client_config(files: TlsFiles<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = files.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(file_err("ca_file", ca))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(file_err("ca_file", ca))?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::File {
                key: "ca_file",
                path: ca.display().to_string(),
                reason: "no usable CA certificate in the file".into(),
            });
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let reason = found
                .errors
                .first()
                .map_or_else(|| "no certificates found".to_string(), ToString::to_string);
            return Err(TlsError::Roots { reason });
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Roots {
        reason: e.to_string(),
    })?
    .with_root_certificates(roots);
    match (files.client_cert, files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(file_err("client_cert", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(file_err("client_cert", cert))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(file_err("client_key", key))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::File {
                    key: "client_cert",
                    path: cert.display().to_string(),
                    reason: e.to_string(),
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = std::env::temp_dir().join(format!("instore-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(TlsFiles {
            ca_file: Some(&path),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, TlsError::File { key: "ca_file", .. }),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = client_config(TlsFiles {
            ca_file: Some(&missing),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
