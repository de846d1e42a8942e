//! `[server]` settings: where the Obico-compatible server is, how to authenticate, what to
//! upload, and the retry/timeout knobs (the fault tests compress time through them).

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};
use crate::secret::Secret;

/// How the OAuth client authenticates at the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields in the request body.
    Form,
}

/// The header that carries a token on resource calls.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `X-API-KEY: <token>`.
    XApiKey,
}

/// Which frames are sent to the server's `predict` endpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UploadMode {
    /// Every scored frame (the detector scores about every 10 s).
    Always,
    /// Frames whose local score crosses `upload_threshold`, frames on warn/pause, plus one
    /// frame every `upload_every_minutes`.
    #[default]
    Suspicious,
    /// No frames leave the host; prints are still mirrored.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Base URL of the server, e.g. `https://app.obico.io`.
    pub url: String,
    /// Allow plain `http://` to a host other than loopback (tokens then travel in clear).
    pub allow_insecure_http: bool,
    /// Extra CA certificates (PEM) to trust besides the system's, for a self-hosted server
    /// with its own CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// OAuth client id (client-credentials grant, `printvigil login`).
    pub client_id: Option<String>,
    /// OAuth client secret.
    pub client_secret: Option<Secret>,
    /// Client authentication at the token endpoint: `basic` (default) or `form`.
    pub client_auth: ClientAuth,
    /// Scope requested with new tokens.
    pub scope: String,
    /// A user-bound token made on the server (used instead of OAuth when set).
    pub token: Option<Secret>,
    /// Header for resource calls: `bearer` (default) or `x_api_key`.
    pub token_header: TokenHeader,
    /// Printer id on the server; unset: the printer is created once and its id kept.
    pub printer_id: Option<i64>,
    /// Name used when creating the printer; unset: the host name.
    pub printer_name: Option<String>,
    /// `always`, `suspicious` (default) or `never`.
    pub upload: UploadMode,
    /// `suspicious` mode: upload when local p or the smoothed score reaches this.
    pub upload_threshold: f64,
    /// `suspicious` mode: also one frame every this many minutes (0 = none).
    pub upload_every_minutes: u64,
    /// Never upload more often than this per printer (the server's smoothing assumes 10 s).
    pub upload_min_interval_secs: f64,
    /// JPEG quality of uploaded frames (frames are shrunk to fit 1280x960).
    pub jpeg_quality: u8,
    /// Timeout of one HTTP request, seconds.
    pub request_timeout_secs: f64,
    /// First retry delay after a failed send, milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, seconds; also how often a server that refuses the credentials
    /// (e.g. a token without a user) is asked again.
    pub backoff_cap_secs: f64,
    /// Loopback port for `printvigil login`'s redirect; 0 = any free port.
    pub login_port: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            allow_insecure_http: false,
            ca_file: None,
            client_id: None,
            client_secret: None,
            client_auth: ClientAuth::Basic,
            scope: "read write".into(),
            token: None,
            token_header: TokenHeader::Bearer,
            printer_id: None,
            printer_name: None,
            upload: UploadMode::Suspicious,
            upload_threshold: 0.4,
            upload_every_minutes: 5,
            upload_min_interval_secs: 10.0,
            jpeg_quality: 80,
            request_timeout_secs: 30.0,
            backoff_initial_ms: 1000,
            backoff_cap_secs: 300.0,
            login_port: 0,
        }
    }
}

impl ServerConfig {
    /// Checks every key; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            invalid(
                "server.url",
                &format!("{:?}", self.url),
                &format!("give the server's base URL such as \"https://app.obico.io\" ({e})"),
            )
        })?;
        match url.scheme() {
            "https" => {}
            "http" => {
                if !is_loopback(&url) && !self.allow_insecure_http {
                    return Err(invalid(
                        "server.url",
                        &format!("{:?}", self.url),
                        "plain http sends tokens in clear: use https://, or set \
                         server.allow_insecure_http = true if you accept that",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "server.url",
                    &format!("{:?}", self.url),
                    &format!("scheme {other:?} is not supported: use https://"),
                ));
            }
        }
        if url.host_str().is_none() {
            return Err(invalid(
                "server.url",
                &format!("{:?}", self.url),
                "the URL needs a host",
            ));
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(invalid(
                "server.client_id",
                "\"\"",
                "remove the key or give the id",
            ));
        }
        if self.client_id.is_some() != self.client_secret.is_some() {
            return Err(invalid(
                "server.client_secret",
                if self.client_secret.is_some() {
                    "(set)"
                } else {
                    "(unset)"
                },
                "set both server.client_id and server.client_secret, or neither",
            ));
        }
        if self.token.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(invalid(
                "server.token",
                "\"\"",
                "remove the key or give the token",
            ));
        }
        if !(self.upload_threshold.is_finite() && (0.0..=10.0).contains(&self.upload_threshold)) {
            return Err(invalid(
                "server.upload_threshold",
                &self.upload_threshold.to_string(),
                "use a score between 0 and 1, e.g. 0.4",
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(invalid(
                "server.jpeg_quality",
                &self.jpeg_quality.to_string(),
                "use a JPEG quality between 1 and 100, e.g. 80",
            ));
        }
        for (key, v) in [
            ("server.request_timeout_secs", self.request_timeout_secs),
            ("server.backoff_cap_secs", self.backoff_cap_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(invalid(
                    key,
                    &v.to_string(),
                    "use a positive number of seconds, at most 86400",
                ));
            }
        }
        if !(self.upload_min_interval_secs.is_finite() && self.upload_min_interval_secs >= 0.0) {
            return Err(invalid(
                "server.upload_min_interval_secs",
                &self.upload_min_interval_secs.to_string(),
                "use 0 or a positive number of seconds (10 matches the server's smoothing)",
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > 3_600_000 {
            return Err(invalid(
                "server.backoff_initial_ms",
                &self.backoff_initial_ms.to_string(),
                "use a delay between 1 and 3600000 ms, e.g. 1000",
            ));
        }
        Ok(())
    }

    /// The parsed base URL (call after [`ServerConfig::validate`]).
    pub fn base_url(&self) -> Result<url::Url, ConfigError> {
        let mut u = url::Url::parse(&self.url)
            .map_err(|e| invalid("server.url", &format!("{:?}", self.url), &e.to_string()))?;
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        Ok(u)
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ServerConfig {
        ServerConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn https_ok_http_loopback_ok_http_remote_refused() {
        assert!(cfg("https://app.obico.io").validate().is_ok());
        assert!(cfg("http://127.0.0.1:3334").validate().is_ok());
        assert!(cfg("http://localhost:3334").validate().is_ok());
        assert!(cfg("http://[::1]:3334").validate().is_ok());
        let e = cfg("http://obico.lan").validate().unwrap_err().to_string();
        assert!(
            e.contains("server.url") && e.contains("allow_insecure_http"),
            "{e}"
        );
        let mut c = cfg("http://obico.lan");
        c.allow_insecure_http = true;
        assert!(c.validate().is_ok());
        assert!(cfg("ftp://x").validate().is_err());
        assert!(
            cfg("")
                .validate()
                .unwrap_err()
                .to_string()
                .contains("server.url")
        );
    }

    #[test]
    fn secret_without_id_is_named() {
        let mut c = cfg("https://x.org");
        c.client_secret = Some(Secret::new("s"));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.client_secret"), "{e}");
    }

    #[test]
    fn base_url_gets_trailing_slash() {
        assert_eq!(
            cfg("https://x.org/obico").base_url().unwrap().as_str(),
            "https://x.org/obico/"
        );
    }
}
