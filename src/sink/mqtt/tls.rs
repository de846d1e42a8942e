//! TLS to the broker, verified by default.
//!
//! The broker's certificate must chain to the CA in `mqtt.ca_file` (PEM; all certificates
//! in it are trusted) or, without it, to one of the system's CAs; and it must name the
//! host of `mqtt.url` (rustls checks both, there is no switch to turn that off). A client
//! certificate and key (`client_cert`, `client_key`) make it mutual TLS, for brokers that
//! authenticate clients by certificate.
//!
//! The crypto provider is named here (aws-lc-rs, the one reqwest uses too) rather than
//! taken from a process-wide default, so it does not matter which providers other crates
//! bring into the build.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::MqttConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("mqtt.{key} = {path:?} cannot be read: {reason}")]
    File { key: &'static str, path: String, reason: String },
    #[error("the system's CA certificates cannot be loaded ({0}); set mqtt.ca_file to the broker's CA")]
    NoSystemRoots(String),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

fn file_err(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { key, path: path.display().to_string(), reason: reason.to_string() }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, path, format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
    }
    Ok(certs)
}

/// The rustls client configuration for `cfg` (which must be a TLS broker).
pub fn client_config(cfg: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for c in certs("ca_file", path)? {
                roots.add(c).map_err(|e| file_err("ca_file", path, format!("not a usable CA certificate ({e})")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system store may hold a certificate rustls cannot use; skip it.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                let why = found.errors.first().map(|e| e.to_string()).unwrap_or_else(|| "none found".into());
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs("client_cert", cert)?;
            let pem = std::fs::read(key).map_err(|e| file_err("client_key", key, e))?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| file_err("client_key", key, format!("no PEM private key in it ({e})")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_err("client_key", key, format!("does not go with client_cert ({e})")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
