//! The daemon's small HTTP server: Prometheus metrics ([`metrics`]) and a status page
//! ([`status`], its page in `page/`), a sink like the others: it reads the watches' views
//! on the [`Board`], follows the [`WatchEvent`] broadcast, and asks the scheduler and the
//! server mirror for their figures. Nothing here drives a printer.
//!
//! Access: bound to `127.0.0.1` by default. Another address needs `http.token` (an access
//! token, sent as `Authorization: Bearer <token>` or `?token=<token>`); when a token is set
//! it is required on every address, for everything but the page's own static files. The page's only controls are "resume watching" and
//! "snooze alerts" (never pause, resume or cancel), and they are refused without the
//! `X-Printvigil: 1` header, which a page of another site cannot send here (a
//! cross-origin request with a custom header needs a CORS answer this server never gives).

pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::{ConfigError, invalid};
use crate::secret::Secret;
use crate::server::Mirror;
use crate::watch::view::Board;
use crate::watch::{FrameScheduler, WatchEvent};

/// The default address: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8471";

/// The `[http]` settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve `/metrics` and the status page.
    pub enabled: bool,
    /// Address and port. Not a loopback address: `token` is required.
    pub bind: String,
    /// Access token (at least 16 characters); required for an address other than loopback.
    pub token: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { enabled: true, bind: DEFAULT_BIND.into(), token: None }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.addr().map_err(|_| {
            invalid("http.bind", &format!("{:?}", self.bind), "use an address and port, e.g. \"127.0.0.1:8471\"")
        })?;
        if let Some(t) = &self.token
            && t.expose().trim().len() < 16
        {
            return Err(invalid("http.token", "(hidden)", "use at least 16 random characters, e.g. from `openssl rand -hex 16`"));
        }
        if !addr.ip().is_loopback() && self.token.is_none() {
            return Err(invalid(
                "http.bind",
                &format!("{:?}", self.bind),
                "the status page and metrics are open to the network on this address: set `http.token` (e.g. from `openssl rand -hex 16`), or bind to 127.0.0.1",
            ));
        }
        Ok(())
    }

    pub fn addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.bind.trim().parse()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the status page and metrics cannot listen on {addr}: {source}; set `http.bind` to a free port, or `http.enabled = false`")]
    Bind { addr: String, source: std::io::Error },
}

/// What the handlers read.
pub struct Sources {
    pub board: Arc<Board>,
    pub scheduler: Arc<FrameScheduler>,
    pub mirror: Option<Arc<Mirror>>,
    /// Saved decision frames are under `<frames_root>/<printer>/`.
    pub frames_root: std::path::PathBuf,
    pub cadence: std::time::Duration,
}

struct App {
    sources: Sources,
    metrics: metrics::Metrics,
    status: status::Status,
    token: Option<Secret>,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds and serves until [`Server::stop`]. `events` is a receiver of the watches'
    /// broadcast, taken before the watches start.
    pub async fn start(cfg: &HttpConfig, sources: Sources, mut events: broadcast::Receiver<WatchEvent>) -> Result<Self, HttpError> {
        let bind = cfg.bind.trim().to_string();
        let listener =
            tokio::net::TcpListener::bind(&bind).await.map_err(|source| HttpError::Bind { addr: bind.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind { addr: bind.clone(), source })?;
        let app = Arc::new(App {
            sources,
            metrics: metrics::Metrics::new(),
            status: status::Status::default(),
            token: cfg.token.clone(),
        });
        let follow = app.clone();
        let follower = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        follow.metrics.observe(&ev);
                        follow.status.observe(&ev);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::debug!("status page: {n} watch events missed"),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let router = Router::new()
            .route("/", get(status::page))
            .route("/app.js", get(status::script))
            .route("/style.css", get(status::style))
            .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
            .route("/metrics", get(metrics_text))
            .route("/api/status", get(status::api_status))
            .route("/api/printers/{printer}/frame.jpg", get(status::latest_frame))
            .route("/api/printers/{printer}/frames/{file}", get(status::saved_frame))
            .route("/api/printers/{printer}/watching", post(status::resume_watching))
            .route("/api/printers/{printer}/snooze", post(status::snooze))
            .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
            .with_state(app);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("the status page stopped: {e}");
            }
        });
        tracing::info!("status page and metrics on http://{addr}/ (/metrics)");
        Ok(Server { addr, task, follower })
    }

    pub fn stop(&self) {
        self.task.abort();
        self.follower.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The token check, and the headers every answer gets.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // The page's own files hold no data: a browser loads them without the token (the page
    // passes it on to every request for data).
    let public = matches!(req.uri().path(), "/" | "/app.js" | "/style.css" | "/favicon.ico");
    if let Some(want) = &app.token
        && !public
        && !authorized(want, req.headers(), req.uri().query())
    {
        let mut r = (StatusCode::UNAUTHORIZED, "an access token is required: add ?token=... or Authorization: Bearer ...\n").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn authorized(want: &Secret, headers: &HeaderMap, query: Option<&str>) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = query.and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()));
    // Compared as digests: the time taken says nothing about how much of the token matched.
    let digest = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    let want = digest(want.expose());
    [bearer, from_query].into_iter().flatten().any(|got| digest(&got) == want)
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(&app.sources);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_address_needs_a_token() {
        let mut c = HttpConfig::default();
        assert!(c.validate().is_ok());
        c.bind = "0.0.0.0:8471".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.bind") && e.contains("http.token"), "{e}");
        c.token = Some(Secret::new("short"));
        assert!(c.validate().unwrap_err().to_string().contains("16"));
        c.token = Some(Secret::new("0123456789abcdef0123"));
        assert!(c.validate().is_ok());
        c.bind = "not an address".into();
        assert!(c.validate().unwrap_err().to_string().contains("http.bind"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
    }

    #[test]
    fn tokens_come_as_bearer_or_query() {
        let want = Secret::new("0123456789abcdef0123");
        let mut h = HeaderMap::new();
        assert!(!authorized(&want, &h, None));
        assert!(authorized(&want, &h, Some("a=1&token=0123456789abcdef0123")));
        assert!(!authorized(&want, &h, Some("token=0123456789abcdef012")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcdef0123"));
        assert!(authorized(&want, &h, None));
    }
}
