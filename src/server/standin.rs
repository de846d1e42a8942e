//! A stand-in Obico server, in process: what `printvigil demo` mirrors to, and the tests'
//! fake server.
//!
//! It speaks the parts of Obico's API printvigil uses, with the real server's answers:
//! the OAuth token endpoint (client credentials, refresh, authorization code + PKCE,
//! revocation, HTTP Basic and form client authentication), the printer views (list,
//! create, read) with the real 403/404 details, `start_print`, `finish_print`, and
//! `predict` in both answer shapes. Faults can be injected (down, 500s, slow, late
//! answers), and every accepted call is recorded in order ([`StandIn::calls`],
//! [`StandIn::received`]).
//!
//! It keeps everything in memory and is meant for loopback: [`StandIn::start_local`]
//! listens on `127.0.0.1` on a free port with a fresh client secret, and
//! [`StandIn::server_config`] gives the `[server]` settings that reach it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::secret::Secret;

/// The real server's `detail` for a request without valid credentials.
pub const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
/// The real server's `detail` for a token with no user (stock server, client credentials).
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";
/// The real server's `detail` for `finish_print` / `predict` without an open print.
pub const NOT_PRINTING: &str = "Printer is not currently printing.";
/// The real server's `detail` for an unknown printer id.
pub const NO_PRINTER: &str = "No Printer matches the given query.";

/// Why the stand-in server could not start or come back.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error(
        "the stand-in server could not listen on {addr} ({reason}); check that loopback networking works and the port is free"
    )]
    Bind { addr: String, reason: String },
}

/// The shape of `predict` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// What the real server sends.
    Real,
    /// What Obico's API guide documents.
    Guide,
}

/// How the stand-in behaves; change it while it runs with [`StandIn::set_settings`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub client_secret: Secret,
    /// Client authentication with HTTP Basic is accepted.
    pub accept_basic: bool,
    /// Client authentication with `client_id`/`client_secret` form fields is accepted.
    pub accept_form: bool,
    /// The application may use the client-credentials grant.
    pub allow_client_credentials: bool,
    /// Stock server: client-credentials tokens have no user, printer views answer 403.
    pub stock: bool,
    /// Lifetime of issued access tokens, seconds.
    pub expires_in: u64,
    /// Issue refresh tokens with access tokens.
    pub issue_refresh: bool,
    pub shape: Shape,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client_id: "printvigil-test".into(),
            client_secret: Secret::new("s3cr3t-client-value"),
            accept_basic: true,
            accept_form: true,
            allow_client_credentials: true,
            stock: false,
            expires_in: 3_153_600_000,
            issue_refresh: false,
            shape: Shape::Real,
        }
    }
}

#[derive(Debug, Clone)]
struct Tok {
    user: Option<u32>,
    expires_at: u64,
    revoked: bool,
}

/// A printer the stand-in knows.
#[derive(Debug, Clone)]
pub struct Printer {
    pub id: i64,
    pub name: String,
    pub user: u32,
    /// The open print: its id and file name.
    pub current_print: Option<(i64, String)>,
}

/// One accepted call, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// "create", "start", "finish", "finish_not_printing", "predict".
    pub kind: String,
    pub printer: i64,
    /// The `Idempotency-Key` header, if sent.
    pub key: Option<String>,
    /// Filename of a start, status of a finish, image size in bytes of a predict.
    pub arg: String,
}

/// How many calls of each kind the stand-in accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub printers_created: usize,
    pub starts: usize,
    pub finishes: usize,
    /// Finishes for a printer with no open print (answered 404, as the real server does).
    pub finishes_not_printing: usize,
    pub predicts: usize,
}

/// Counters of what was refused or injected.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Tokens granted, per grant type.
    pub grants: HashMap<String, u32>,
    /// API requests refused for missing, unknown, expired or revoked tokens.
    pub auth_failures: u32,
    /// Requests answered with an injected fault.
    pub faults_served: u32,
    pub revocations: u32,
}

/// Faults to inject; set them with [`StandIn::set_faults`].
#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub down: bool,
    /// Answer this many API requests with 500 before working again.
    pub fail_next: u32,
    /// Every Nth API request answers 500 (0 = never).
    pub fail_every: u32,
    /// Hold API requests this long without doing anything (client times out).
    pub slow: Option<Duration>,
    /// Process API requests, then hold the answer this long (the client times out after
    /// the server acted: the case that makes naive retries duplicate).
    pub late: Option<Duration>,
    /// Answer API requests with an HTML page and this status, without acting on them (a
    /// captive portal, a wrong base path served by a web app, a proxy's error page).
    pub html: Option<u16>,
    /// Answer every request (API and token endpoint) with a 200 whose body is this many
    /// bytes of HTML, streamed (the stand-in itself holds only one chunk).
    pub huge: Option<u64>,
}

#[derive(Default)]
struct Inner {
    settings: Settings,
    tokens: HashMap<String, Tok>,
    refresh: HashMap<String, Option<u32>>,
    codes: HashMap<String, (String, String, u32)>, // code -> (challenge, redirect_uri, user)
    printers: Vec<Printer>,
    next_id: i64,
    next_print: i64,
    seq: u64,
    calls: Vec<Call>,
    counters: Counters,
    faults: Faults,
    api_requests: u32,
}

impl Inner {
    fn record(&mut self, kind: &str, printer: i64, key: Option<String>, arg: String) {
        debug!(kind, printer, "stand-in server: call accepted");
        self.calls.push(Call { kind: kind.into(), printer, key, arg });
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent between statements; a panicked handler leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the stand-in's app on a bound listener and returns the serving task.
pub type Serve = Arc<dyn Fn(tokio::net::TcpListener, Router) -> tokio::task::JoinHandle<()> + Send + Sync>;

/// A way to serve other than plain HTTP (the tests wrap connections in TLS).
pub struct Transport {
    /// Serves the app; called again when the server comes back after [`StandIn::set_down`].
    pub serve: Serve,
    /// The base URL clients use for the bound address, e.g. `https://localhost:{port}`.
    pub url: fn(SocketAddr) -> String,
    /// The certificate clients must trust (PEM), when there is one.
    pub cert_pem: Option<String>,
}

impl Transport {
    /// Plain HTTP.
    pub fn http() -> Self {
        Self {
            serve: Arc::new(|listener, app| {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        debug!(error = %e, "stand-in server stopped");
                    }
                })
            }),
            url: |addr| format!("http://{addr}"),
            cert_pem: None,
        }
    }
}

/// The stand-in server; see the module documentation. Stops when dropped.
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate of a TLS stand-in (PEM), for clients to trust.
    pub cert_pem: Option<String>,
    state: Shared,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    serve: Serve,
    url: String,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn detail(status: StatusCode, d: &str) -> Response {
    (status, axum::Json(json!({ "detail": d }))).into_response()
}

fn oauth_err(status: StatusCode, e: &str) -> Response {
    (status, axum::Json(json!({ "error": e }))).into_response()
}

impl StandIn {
    /// Starts on `127.0.0.1` on a free port, plain HTTP.
    pub async fn start(settings: Settings) -> Result<Arc<Self>, StandInError> {
        Self::start_over(settings, Transport::http()).await
    }

    /// Starts on `127.0.0.1` on a free port with the default settings and a fresh client
    /// secret: the demo's server. [`StandIn::server_config`] reaches it.
    pub async fn start_local() -> Result<Arc<Self>, StandInError> {
        let mut secret = [0u8; 16];
        fill_random(&mut secret);
        let settings = Settings {
            client_id: "printvigil-demo".into(),
            client_secret: Secret::new(hex::encode(secret)),
            ..Settings::default()
        };
        Self::start(settings).await
    }

    /// Starts on `127.0.0.1` on a free port, serving through `transport`.
    pub async fn start_over(settings: Settings, transport: Transport) -> Result<Arc<Self>, StandInError> {
        let state: Shared =
            Arc::new(Mutex::new(Inner { settings, next_id: 1, next_print: 100, ..Default::default() }));
        let bind_err = |e: std::io::Error| StandInError::Bind { addr: "127.0.0.1:0".into(), reason: e.to_string() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let me = Arc::new(Self {
            addr,
            cert_pem: transport.cert_pem,
            state,
            task: Mutex::new(None),
            serve: transport.serve,
            url: (transport.url)(addr),
        });
        me.serve(listener);
        Ok(me)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let task = (self.serve)(listener, router(self.state.clone()));
        *lock(&self.task) = Some(task);
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The OAuth client id it accepts.
    pub fn client_id(&self) -> String {
        lock(&self.state).settings.client_id.clone()
    }

    /// The OAuth client secret it accepts.
    pub fn client_secret(&self) -> Secret {
        lock(&self.state).settings.client_secret.clone()
    }

    /// `[server]` settings that reach this server with its client credentials; the rest
    /// are defaults (change them as needed).
    pub fn server_config(&self) -> crate::server::ServerConfig {
        crate::server::ServerConfig {
            url: self.url(),
            client_id: Some(self.client_id()),
            client_secret: Some(self.client_secret()),
            ..Default::default()
        }
    }

    /// Stops serving (open connections are dropped). Also done on drop.
    pub async fn stop(&self) {
        let task = lock(&self.task).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Down: new connections are refused, requests on open connections answer 503. Back
    /// up: listens again on the same address.
    pub async fn set_down(&self, down: bool) -> Result<(), StandInError> {
        lock(&self.state).faults.down = down;
        if down {
            self.stop().await;
            return Ok(());
        }
        if lock(&self.task).is_some() {
            return Ok(());
        }
        // The port may take a moment to be free again.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(StandInError::Bind { addr: self.addr.to_string(), reason: e.to_string() });
                }
            }
        };
        self.serve(listener);
        Ok(())
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.state).faults);
    }

    pub fn set_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut lock(&self.state).settings);
    }

    /// Every accepted call, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// How many calls of each kind were accepted.
    pub fn received(&self) -> Received {
        let mut r = Received::default();
        for c in &lock(&self.state).calls {
            match c.kind.as_str() {
                "create" => r.printers_created += 1,
                "start" => r.starts += 1,
                "finish" => r.finishes += 1,
                "finish_not_printing" => r.finishes_not_printing += 1,
                "predict" => r.predicts += 1,
                _ => {}
            }
        }
        r
    }

    /// Tokens granted with `grant` (`client_credentials`, `refresh_token`,
    /// `authorization_code`).
    pub fn grants(&self, grant: &str) -> u32 {
        lock(&self.state).counters.grants.get(grant).copied().unwrap_or(0)
    }

    pub fn counters(&self) -> Counters {
        lock(&self.state).counters.clone()
    }

    pub fn faults_served(&self) -> u32 {
        lock(&self.state).counters.faults_served
    }

    pub fn auth_failures(&self) -> u32 {
        lock(&self.state).counters.auth_failures
    }

    pub fn printers(&self) -> Vec<Printer> {
        lock(&self.state).printers.clone()
    }

    /// Revokes every access and refresh token (the user or admin did).
    pub fn revoke_all(&self) {
        let mut s = lock(&self.state);
        for t in s.tokens.values_mut() {
            t.revoked = true;
        }
        s.refresh.clear();
    }

    /// Adds a printer as if made by someone else (or by an earlier, crashed run).
    pub fn add_printer(&self, name: &str, user: u32) -> i64 {
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        s.printers.push(Printer { id, name: name.into(), user, current_print: None });
        id
    }

    /// Deletes a printer (the user did, on the server).
    pub fn remove_printer(&self, id: i64) {
        lock(&self.state).printers.retain(|p| p.id != id);
    }

    /// Access tokens not revoked.
    pub fn live_tokens(&self) -> usize {
        lock(&self.state).tokens.values().filter(|t| !t.revoked).count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/o/token/", post(token))
        .route("/o/revoke_token/", post(revoke))
        .route("/o/authorize/", get(authorize))
        .route("/api/v1/printers/", get(list_printers).post(create_printer))
        .route("/api/v1/printers/{id}/", get(get_printer))
        .route("/api/v1/printers/{id}/start_print/", post(start_print))
        .route("/api/v1/printers/{id}/finish_print/", post(finish_print))
        .route("/api/v1/printers/{id}/predict/", post(predict))
        .layer(axum::middleware::from_fn_with_state(state.clone(), faults))
        .with_state(state)
}

async fn faults(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let (down, slow, fail, late, html, huge) = {
        let mut s = lock(&st);
        let is_api = req.uri().path().starts_with("/api/");
        if is_api {
            s.api_requests += 1;
        }
        let n = s.api_requests;
        let mut fail = false;
        if is_api && s.faults.fail_next > 0 {
            s.faults.fail_next -= 1;
            fail = true;
        }
        if is_api && s.faults.fail_every > 0 && n.is_multiple_of(s.faults.fail_every) {
            fail = true;
        }
        let (down, slow, late) =
            (s.faults.down, s.faults.slow.filter(|_| is_api), s.faults.late.filter(|_| is_api));
        let html = s.faults.html.filter(|_| is_api);
        let huge = s.faults.huge;
        if down || slow.is_some() || fail || late.is_some() || html.is_some() || huge.is_some() {
            s.counters.faults_served += 1;
        }
        (down, slow, fail, late, html, huge)
    };
    if down {
        return detail(StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
        return detail(StatusCode::GATEWAY_TIMEOUT, "slow");
    }
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "<h1>Server Error (500)</h1>").into_response();
    }
    if let Some(status) = html {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let page = "<!DOCTYPE html><html><head><title>Welcome</title></head><body><p>Sign in to use this network.</p></body></html>";
        return (status, [("content-type", "text/html; charset=utf-8")], page).into_response();
    }
    if let Some(total) = huge {
        const CHUNK: usize = 64 * 1024;
        let chunk = axum::body::Bytes::from(vec![b' '; CHUNK]);
        let mut left = total;
        let stream = futures_util::stream::iter(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            left -= n as u64;
            Some(Ok::<_, std::io::Error>(chunk.slice(..n)))
        }));
        return (StatusCode::OK, [("content-type", "text/html")], axum::body::Body::from_stream(stream)).into_response();
    }
    let resp = next.run(req).await;
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    resp
}

fn client_ok(s: &Inner, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let set = &s.settings;
    if let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if !set.accept_basic {
            return false;
        }
        let Some(b64) = h.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let raw = String::from_utf8_lossy(&raw).to_string();
        let Some((id, secret)) = raw.split_once(':') else {
            return false;
        };
        // RFC 6749 2.3.1: both are form-urlencoded before Basic encoding.
        let dec = |x: &str| {
            url::form_urlencoded::parse(format!("a={x}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return dec(id) == set.client_id && dec(secret) == set.client_secret.expose();
    }
    set.accept_form
        && form.get("client_id") == Some(&set.client_id)
        && form.get("client_secret").map(String::as_str) == Some(set.client_secret.expose())
}

/// Random bytes from the OS; a stand-in on loopback may fall back to a weaker source.
fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        buf.fill_with(|| fastrand::u8(..));
    }
}

fn rand_tok(s: &mut Inner, prefix: &str) -> String {
    s.seq += 1;
    let mut b = [0u8; 12];
    fill_random(&mut b);
    format!("{prefix}-{}-{}", s.seq, hex::encode(b))
}

fn issue(s: &mut Inner, user: Option<u32>) -> Value {
    let access = rand_tok(s, "acc");
    let expires_in = s.settings.expires_in;
    let refresh = s.settings.issue_refresh.then(|| rand_tok(s, "ref"));
    if let Some(r) = &refresh {
        s.refresh.insert(r.clone(), user);
    }
    s.tokens.insert(access.clone(), Tok { user, expires_at: now().saturating_add(expires_in), revoked: false });
    let mut v = json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "read write"});
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
    }
    v
}

async fn token(State(st): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut s = lock(&st);
    if !client_ok(&s, &headers, &form) {
        return oauth_err(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    match grant.as_str() {
        "client_credentials" => {
            if !s.settings.allow_client_credentials {
                return oauth_err(StatusCode::BAD_REQUEST, "unauthorized_client");
            }
            *s.counters.grants.entry(grant).or_default() += 1;
            let user = if s.settings.stock { None } else { Some(1) };
            axum::Json(issue(&mut s, user)).into_response()
        }
        "refresh_token" => {
            let r = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(user) = s.refresh.remove(&r) else {
                return oauth_err(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            *s.counters.grants.entry(grant).or_default() += 1;
            axum::Json(issue(&mut s, user)).into_response()
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect, user)) = s.codes.remove(&code) else {
                return oauth_err(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let got = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if got != challenge || form.get("redirect_uri") != Some(&redirect) {
                return oauth_err(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            *s.counters.grants.entry(grant).or_default() += 1;
            axum::Json(issue(&mut s, Some(user))).into_response()
        }
        _ => oauth_err(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn revoke(State(st): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut s = lock(&st);
    if !client_ok(&s, &headers, &form) {
        return oauth_err(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let t = form.get("token").cloned().unwrap_or_default();
    if let Some(tok) = s.tokens.get_mut(&t) {
        tok.revoked = true;
    }
    s.refresh.remove(&t);
    s.counters.revocations += 1;
    StatusCode::OK.into_response()
}

/// Authorizes at once as user 1 (no login page) and redirects with a code.
async fn authorize(State(st): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = lock(&st);
    if q.get("client_id") != Some(&s.settings.client_id)
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let Ok(mut u) = url::Url::parse(&redirect) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let code = rand_tok(&mut s, "code");
    s.codes.insert(code.clone(), (q.get("code_challenge").cloned().unwrap_or_default(), redirect, 1));
    u.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map(String::as_str).unwrap_or(""));
    Redirect::to(u.as_str()).into_response()
}

/// The user behind the request, or the 403 the real server answers.
#[allow(clippy::result_large_err, reason = "the error is the answer itself, made once per request")]
fn user_of(s: &mut Inner, headers: &HeaderMap) -> Result<u32, Response> {
    let tok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    let t = tok.and_then(|t| s.tokens.get(&t).cloned()).filter(|t| !t.revoked && t.expires_at > now());
    match t {
        None => {
            s.counters.auth_failures += 1;
            Err(detail(StatusCode::FORBIDDEN, NOT_AUTHENTICATED))
        }
        Some(Tok { user: None, .. }) => Err(detail(StatusCode::FORBIDDEN, NO_PERMISSION)),
        Some(Tok { user: Some(u), .. }) => Ok(u),
    }
}

fn printer_json(p: &Printer) -> Value {
    json!({
        "id": p.id, "name": p.name, "auth_token": format!("agent-{}", p.id),
        "current_print": p.current_print.as_ref().map(|(id, f)| json!({"id": id, "filename": f, "started_at": "2024-01-15T10:30:00Z"})),
        "action_on_failure": "PAUSE", "detective_sensitivity": 1.0, "retract_on_pause": 6.5, "lift_z_on_pause": 2.5,
        "tools_off_on_pause": true, "bed_off_on_pause": false,
    })
}

/// The index of the user's printer `id`, or the 404 the real server answers.
#[allow(clippy::result_large_err, reason = "the error is the answer itself, made once per request")]
fn find(s: &Inner, id: i64, user: u32) -> Result<usize, Response> {
    s.printers
        .iter()
        .position(|p| p.id == id && p.user == user)
        .ok_or_else(|| detail(StatusCode::NOT_FOUND, NO_PRINTER))
}

/// The user and their printer `id`'s index, or the real server's error answer.
#[allow(clippy::result_large_err, reason = "the error is the answer itself, made once per request")]
fn user_printer(s: &mut Inner, headers: &HeaderMap, id: i64) -> Result<usize, Response> {
    let user = user_of(s, headers)?;
    find(s, id, user)
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn required(field: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ field: ["This field is required."] }))).into_response()
}

async fn list_printers(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = lock(&st);
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    axum::Json(Value::Array(s.printers.iter().filter(|p| p.user == user).map(printer_json).collect()))
        .into_response()
}

async fn create_printer(State(st): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut s = lock(&st);
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = v.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return required("name");
    };
    let id = s.next_id;
    s.next_id += 1;
    let p = Printer { id, name: name.into(), user, current_print: None };
    let out = printer_json(&p);
    s.printers.push(p);
    s.record("create", id, key(&headers), name.into());
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

async fn get_printer(State(st): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let mut s = lock(&st);
    match user_printer(&mut s, &headers, id) {
        Ok(i) => axum::Json(printer_json(&s.printers[i])).into_response(),
        Err(r) => r,
    }
}

async fn start_print(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = lock(&st);
    let i = match user_printer(&mut s, &headers, id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(filename) = v.get("filename").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string)
    else {
        return required("filename");
    };
    // A print already open is closed by the server.
    let pid = s.next_print;
    s.next_print += 1;
    s.printers[i].current_print = Some((pid, filename.clone()));
    s.record("start", id, key(&headers), filename);
    axum::Json(json!({"succeeded": true, "printer": printer_json(&s.printers[i])})).into_response()
}

async fn finish_print(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = lock(&st);
    let i = match user_printer(&mut s, &headers, id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = v.get("status").and_then(Value::as_str).unwrap_or("success").to_string();
    if s.printers[i].current_print.is_none() {
        s.record("finish_not_printing", id, key(&headers), status);
        return detail(StatusCode::NOT_FOUND, NOT_PRINTING);
    }
    s.printers[i].current_print = None;
    s.record("finish", id, key(&headers), status);
    axum::Json(json!({"succeeded": true, "printer": printer_json(&s.printers[i])})).into_response()
}

async fn predict(State(st): State<Shared>, headers: HeaderMap, Path(id): Path<i64>, mut mp: Multipart) -> Response {
    {
        let mut s = lock(&st);
        let i = match user_printer(&mut s, &headers, id) {
            Ok(i) => i,
            Err(r) => return r,
        };
        if s.printers[i].current_print.is_none() {
            return detail(StatusCode::NOT_FOUND, NOT_PRINTING);
        }
    }
    let mut img = None;
    while let Ok(Some(field)) = mp.next_field().await {
        if field.name() == Some("img") {
            img = field.bytes().await.ok();
        }
    }
    let Some(img) = img.filter(|b| b.starts_with(&[0xFF, 0xD8])) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"img": ["No file was submitted."]}))).into_response();
    };
    let mut s = lock(&st);
    s.record("predict", id, None, img.len().to_string());
    let body = match s.settings.shape {
        Shape::Real => {
            json!({"result": {"p": 0.12, "temporal_stats": {"ewm_mean": 0.05, "rolling_mean_short": 0.04, "rolling_mean_long": 0.03, "prediction_num": 3, "prediction_num_lifetime": 9},
            "detections": [["failure", 0.12, [320.0, 240.0, 40.0, 30.0]]]}})
        }
        Shape::Guide => {
            json!({"result": {"p": 0.12, "detections": [{"confidence": 0.12, "bbox": [300, 225, 340, 255]}]},
            "temporal_stats": {"ewm_mean": 0.05, "rolling_mean_short": 0.04, "rolling_mean_long": 0.03}, "normalized_p": 0.02})
        }
    };
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::upload::{FrameScore, solid_jpeg};
    use crate::server::{FinishStatus, Mirror};

    #[tokio::test]
    async fn the_mirror_reaches_a_local_stand_in_and_it_counts_what_arrived() {
        let standin = StandIn::start_local().await.unwrap();
        assert!(standin.url().starts_with("http://127.0.0.1:"));
        assert_ne!(standin.client_secret().expose(), Settings::default().client_secret.expose(), "a fresh secret");
        let cfg = crate::server::ServerConfig {
            printer_name: Some("demo".into()),
            upload: crate::server::config::UploadMode::Always,
            upload_min_interval_secs: 0.0,
            backoff_initial_ms: 10,
            backoff_cap_secs: 0.1,
            ..standin.server_config()
        };
        cfg.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(&cfg, dir.path()).unwrap();
        mirror.spawn();
        let printer = crate::server::DEFAULT_PRINTER;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let wait = async |what: &str, done: &dyn Fn(Received) -> bool| {
            while !done(standin.received()) {
                assert!(tokio::time::Instant::now() < deadline, "no {what}: {:?}", standin.calls());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        mirror.start_print(printer, "job-1", "cube.gcode").unwrap();
        wait("start", &|r| r.starts == 1).await;
        assert!(mirror.offer_frame(printer, solid_jpeg(64, 48, [80, 80, 80]), &FrameScore::default()));
        wait("predict", &|r| r.predicts == 1).await;
        mirror.finish_print(printer, "job-1", FinishStatus::Success).unwrap();
        wait("finish", &|r| r.finishes == 1).await;
        let r = standin.received();
        assert_eq!(
            r,
            Received { printers_created: 1, starts: 1, finishes: 1, finishes_not_printing: 0, predicts: 1 }
        );
        assert_eq!(standin.printers()[0].name, "demo");
        drop(mirror);

        standin.stop().await;
        let refused = reqwest::get(format!("{}/api/v1/printers/", standin.url())).await;
        assert!(refused.is_err(), "stopped: nothing listens");
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }

    #[tokio::test]
    async fn outside_input_gets_answers_not_panics() {
        let standin = StandIn::start(Settings::default()).await.unwrap();
        let http = reqwest::Client::new();
        let url = standin.url();
        let r = http
            .get(format!("{url}/o/authorize/?client_id=printvigil-test&code_challenge_method=S256&redirect_uri=::"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http.get(format!("{url}/api/v1/printers/")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(standin.auth_failures(), 1);
        let r = http
            .post(format!("{url}/o/token/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("grant_type", "client_credentials"), ("client_id", "printvigil-test"), ("client_secret", "no")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{url}/o/token/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "printvigil-test"),
                ("client_secret", "s3cr3t-client-value"),
            ]))
            .send()
            .await
            .unwrap();
        let tok: Value = r.json().await.unwrap();
        let bearer = format!("Bearer {}", tok["access_token"].as_str().unwrap());
        let r = http
            .post(format!("{url}/api/v1/printers/"))
            .header("authorization", &bearer)
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http
            .post(format!("{url}/api/v1/printers/7/finish_print/"))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(standin.received(), Received::default());
        assert!(!format!("{:?}", Settings::default()).contains("s3cr3t"), "the secret stays out of Debug");
    }
}
