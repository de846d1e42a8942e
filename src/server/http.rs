//! The HTTP plumbing every server call shares: the client (rustls, the configured
//! timeouts, an extra CA from `server.ca_file`), and reading an answer's body with a size
//! cap.
//!
//! Nothing that answers in the server's place is trusted to send a small body: a captive
//! portal, a proxy or a broken server can stream without end. [`read_capped`] reads the
//! body chunk by chunk as it arrives and stops at the cap, so memory stays bounded by the
//! cap whatever is sent (a `Content-Length` over the cap is refused before any read).

use std::time::Duration;

use super::{MirrorError, ServerConfig};

/// The most read of one answer from the server (API or token endpoint). Obico's answers
/// are a few kilobytes; a printer list of hundreds of printers stays far below this.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The HTTP client every server call uses: rustls, the configured timeout.
pub fn http_client(cfg: &ServerConfig) -> Result<reqwest::Client, MirrorError> {
    let timeout = Duration::from_secs_f64(cfg.request_timeout_secs);
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            MirrorError::Http(format!(
                "server.ca_file = {:?} cannot be read ({e}): fix the path or remove the key",
                path.display().to_string()
            ))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            MirrorError::Http(format!(
                "server.ca_file = {:?} holds no usable PEM certificate ({e}): give the CA certificate in PEM form",
                path.display().to_string()
            ))
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("printvigil/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| MirrorError::Http(e.to_string()))
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is larger than the cap: it was not read past it.
    #[error("an answer of more than {} KiB", .cap / 1024)]
    TooLarge { cap: usize },
    /// The connection failed or timed out mid-body.
    #[error("{0}")]
    Network(String),
}

/// Reads an answer's body, at most `cap` bytes, as it streams in.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge { cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ReadError::Network(super::oauth::describe_reqwest(&e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
