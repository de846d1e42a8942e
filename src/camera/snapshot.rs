//! A camera that answers one JPEG per HTTP GET (`?action=snapshot`).
//!
//! Every grab is bounded: the whole request (connect, answer, body) by the timeout, the
//! body by the size cap, read as it streams in (never more than the cap is held).

use std::time::SystemTime;

use futures_util::StreamExt;

use crate::secret::SecretUrl;

use super::{Camera, CameraConfig, CameraError, Frame, Grab, is_jpeg, sniff};

pub struct SnapshotCamera {
    name: String,
    url: SecretUrl,
    timeout_secs: f64,
    max_bytes: usize,
    client: reqwest::Client,
}

const EXPECTED: &str = "JPEG snapshot URL (for an MJPEG stream use kind = \"mjpeg\")";

impl SnapshotCamera {
    pub fn new(cfg: &CameraConfig) -> Result<Self, CameraError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout())
            .timeout(cfg.timeout())
            .build()
            .map_err(|e| CameraError::Config(format!("could not set up the HTTP client: {e}")))?;
        Ok(Self {
            name: cfg.display_name(),
            url: cfg.url.clone(),
            timeout_secs: cfg.timeout_secs,
            max_bytes: cfg.max_frame_bytes,
            client,
        })
    }

    async fn fetch(&self) -> Result<Frame, CameraError> {
        let url = &self.url;
        let net = |e: reqwest::Error| {
            if e.is_timeout() {
                CameraError::Timeout { url: url.clone(), secs: self.timeout_secs }
            } else {
                CameraError::Connect { url: url.clone(), reason: super::chain(&e) }
            }
        };
        let resp = self.client.get(url.expose()).send().await.map_err(net)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CameraError::HttpStatus { url: url.clone(), status: status.as_u16() });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if let Some(what) = refused_content_type(&content_type) {
            return Err(CameraError::NotJpeg { url: url.clone(), what, expected: EXPECTED });
        }
        let too_large = || CameraError::TooLarge { url: url.clone(), max: self.max_bytes };
        if resp.content_length().is_some_and(|n| n > self.max_bytes as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(net)?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !is_jpeg(&body) {
            return Err(CameraError::NotJpeg { url: url.clone(), what: sniff(&body), expected: EXPECTED });
        }
        Ok(Frame { jpeg: body, taken: SystemTime::now() })
    }
}

/// A Content-Type that cannot be a JPEG snapshot, described; `None` when it may be one
/// (image/jpeg, octet-stream, missing: the body is sniffed then).
fn refused_content_type(ct: &str) -> Option<String> {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let refused = essence.starts_with("text/")
        || essence.starts_with("multipart/")
        || essence.contains("json")
        || essence.contains("xml")
        || (essence.starts_with("image/") && !matches!(essence, "image/jpeg" | "image/jpg" | "image/pjpeg"));
    refused.then(|| format!("Content-Type {essence}"))
}

impl Camera for SnapshotCamera {
    fn name(&self) -> &str {
        &self.name
    }

    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            // The client's timeout covers the request; this also bounds a body that trickles.
            let limit = std::time::Duration::from_secs_f64(self.timeout_secs);
            match tokio::time::timeout(limit, self.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(CameraError::Timeout { url: self.url.clone(), secs: self.timeout_secs }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::refused_content_type;

    #[test]
    fn content_types() {
        assert_eq!(refused_content_type("image/jpeg"), None);
        assert_eq!(refused_content_type(""), None);
        assert_eq!(refused_content_type("application/octet-stream"), None);
        assert!(refused_content_type("text/html; charset=utf-8").unwrap().contains("text/html"));
        assert!(refused_content_type("image/png").is_some());
        assert!(refused_content_type("multipart/x-mixed-replace;boundary=x").is_some());
    }
}
