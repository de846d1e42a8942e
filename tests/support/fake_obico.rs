//! A fake Obico server for the tests: OAuth token endpoint (client credentials, refresh,
//! authorization code + PKCE, revocation, both client-auth styles), the printer views with
//! the real server's 403/404 details, both `predict` shapes, and injectable faults (down,
//! 500s, slow). Every accepted call is recorded in order.
#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

pub const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";
pub const NOT_PRINTING: &str = "Printer is not currently printing.";
pub const NO_PRINTER: &str = "No Printer matches the given query.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Real,
    Guide,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub client_secret: String,
    pub accept_basic: bool,
    pub accept_form: bool,
    /// The application may use the client-credentials grant.
    pub allow_client_credentials: bool,
    /// Stock server: client-credentials tokens have no user, printer views answer 403.
    pub stock: bool,
    pub expires_in: u64,
    pub issue_refresh: bool,
    pub shape: Shape,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client_id: "printvigil-test".into(),
            client_secret: "s3cr3t-client-value".into(),
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
    refresh: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub id: i64,
    pub name: String,
    pub user: u32,
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
    /// Filename of a start, status of a finish.
    pub arg: String,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub grants: HashMap<String, u32>,
    pub auth_failures: u32,
    pub faults_served: u32,
    pub revocations: u32,
}

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

type Shared = Arc<Mutex<Inner>>;

pub struct FakeObico {
    pub addr: SocketAddr,
    state: Shared,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The self-signed certificate (PEM) of a TLS server, for `localhost`.
    pub cert_pem: Option<String>,
}

/// TLS over a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails here: wait for the next one.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn detail(status: StatusCode, d: &str) -> Response {
    (status, axum::Json(json!({ "detail": d }))).into_response()
}

fn oauth_err(status: StatusCode, e: &str) -> Response {
    (status, axum::Json(json!({ "error": e }))).into_response()
}

impl FakeObico {
    pub async fn start(settings: Settings) -> Arc<Self> {
        Self::start_with(settings, false).await
    }

    /// The same server over TLS, with a fresh self-signed certificate for `localhost`.
    pub async fn start_tls(settings: Settings) -> Arc<Self> {
        Self::start_with(settings, true).await
    }

    async fn start_with(settings: Settings, tls: bool) -> Arc<Self> {
        let state: Shared = Arc::new(Mutex::new(Inner {
            settings,
            next_id: 1,
            next_print: 100,
            ..Default::default()
        }));
        let (acceptor, cert_pem) = if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
                ck.signing_key.serialize_der().into(),
            );
            let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            (
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                Some(ck.cert.pem()),
            )
        } else {
            (None, None)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Arc::new(Self {
            addr,
            state,
            task: Mutex::new(None),
            tls: acceptor,
            cert_pem,
        });
        me.serve(listener);
        me
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = router(self.state.clone());
        let t = match self.tls.clone() {
            Some(acceptor) => tokio::spawn(async move {
                let _ = axum::serve(
                    TlsListener {
                        tcp: listener,
                        acceptor,
                    },
                    app,
                )
                .await;
            }),
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        };
        *self.task.lock().unwrap() = Some(t);
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// Down: new connections are refused, requests on open connections answer 503.
    pub async fn set_down(&self, down: bool) {
        self.state.lock().unwrap().faults.down = down;
        if down {
            let task = self.task.lock().unwrap().take();
            if let Some(t) = task {
                t.abort();
                let _ = t.await;
            }
        } else if self.task.lock().unwrap().is_none() {
            let mut tries = 0;
            let listener = loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("rebinding {}: {e}", self.addr),
                }
            };
            self.serve(listener);
        }
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    pub fn set_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.state.lock().unwrap().settings);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn grants(&self, grant: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .counters
            .grants
            .get(grant)
            .copied()
            .unwrap_or(0)
    }

    pub fn faults_served(&self) -> u32 {
        self.state.lock().unwrap().counters.faults_served
    }

    pub fn auth_failures(&self) -> u32 {
        self.state.lock().unwrap().counters.auth_failures
    }

    pub fn printers(&self) -> Vec<Printer> {
        self.state.lock().unwrap().printers.clone()
    }

    /// Revokes every access and refresh token (the user or admin did).
    pub fn revoke_all(&self) {
        let mut s = self.state.lock().unwrap();
        for t in s.tokens.values_mut() {
            t.revoked = true;
        }
        s.refresh.clear();
    }

    /// Adds a printer as if made by someone else (or by an earlier, crashed run).
    pub fn add_printer(&self, name: &str, user: u32) -> i64 {
        let mut s = self.state.lock().unwrap();
        let id = s.next_id;
        s.next_id += 1;
        s.printers.push(Printer {
            id,
            name: name.into(),
            user,
            current_print: None,
        });
        id
    }

    /// Deletes a printer (the user did, on the server).
    pub fn remove_printer(&self, id: i64) {
        self.state.lock().unwrap().printers.retain(|p| p.id != id);
    }

    pub fn live_tokens(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .tokens
            .values()
            .filter(|t| !t.revoked)
            .count()
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
    let (down, slow, fail, late) = {
        let mut s = st.lock().unwrap();
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
        if is_api && s.faults.fail_every > 0 && n % s.faults.fail_every == 0 {
            fail = true;
        }
        let (down, slow, late) = (
            s.faults.down,
            s.faults.slow.filter(|_| is_api),
            s.faults.late.filter(|_| is_api),
        );
        if down || slow.is_some() || fail || late.is_some() {
            s.counters.faults_served += 1;
        }
        (down, slow, fail, late)
    };
    if down {
        return detail(StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
        return detail(StatusCode::GATEWAY_TIMEOUT, "slow");
    }
    if fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "<h1>Server Error (500)</h1>",
        )
            .into_response();
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
        let dec = |x: &str| {
            url::form_urlencoded::parse(format!("a={x}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return dec(id) == set.client_id && dec(secret) == set.client_secret;
    }
    set.accept_form
        && form.get("client_id") == Some(&set.client_id)
        && form.get("client_secret") == Some(&set.client_secret)
}

fn rand_tok(s: &mut Inner, prefix: &str) -> String {
    s.seq += 1;
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}-{}-{}", s.seq, hex::encode(b))
}

fn issue(s: &mut Inner, user: Option<u32>) -> Value {
    let access = rand_tok(s, "acc");
    let expires_in = s.settings.expires_in;
    let refresh = s.settings.issue_refresh.then(|| rand_tok(s, "ref"));
    if let Some(r) = &refresh {
        s.refresh.insert(r.clone(), user);
    }
    s.tokens.insert(
        access.clone(),
        Tok {
            user,
            expires_at: now().saturating_add(expires_in),
            revoked: false,
            refresh: refresh.clone(),
        },
    );
    let mut v = json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "read write"});
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
    }
    v
}

async fn token(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
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
            let got = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if got != challenge || form.get("redirect_uri") != Some(&redirect) {
                return oauth_err(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            *s.counters.grants.entry(grant).or_default() += 1;
            axum::Json(issue(&mut s, Some(user))).into_response()
        }
        _ => oauth_err(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn revoke(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
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

async fn authorize(State(st): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = st.lock().unwrap();
    if q.get("client_id") != Some(&s.settings.client_id)
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let code = rand_tok(&mut s, "code");
    s.codes.insert(
        code.clone(),
        (
            q.get("code_challenge").cloned().unwrap_or_default(),
            redirect.clone(),
            1,
        ),
    );
    let mut u = url::Url::parse(&redirect).unwrap();
    u.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map(String::as_str).unwrap_or(""));
    Redirect::to(u.as_str()).into_response()
}

/// The user behind the request, or the 403 the real server answers.
fn user_of(s: &mut Inner, headers: &HeaderMap) -> Result<u32, Response> {
    let tok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    let t = tok
        .and_then(|t| s.tokens.get(&t).cloned())
        .filter(|t| !t.revoked && t.expires_at > now());
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

fn find(s: &mut Inner, id: i64, user: u32) -> Result<usize, Response> {
    s.printers
        .iter()
        .position(|p| p.id == id && p.user == user)
        .ok_or_else(|| detail(StatusCode::NOT_FOUND, NO_PRINTER))
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn list_printers(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    axum::Json(Value::Array(
        s.printers
            .iter()
            .filter(|p| p.user == user)
            .map(printer_json)
            .collect(),
    ))
    .into_response()
}

async fn create_printer(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut s = st.lock().unwrap();
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"name": ["This field is required."]})),
        )
            .into_response();
    };
    let id = s.next_id;
    s.next_id += 1;
    let p = Printer {
        id,
        name: name.into(),
        user,
        current_print: None,
    };
    let out = printer_json(&p);
    s.printers.push(p);
    s.calls.push(Call {
        kind: "create".into(),
        printer: id,
        key: key(&headers),
        arg: name.into(),
    });
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

async fn get_printer(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut s = st.lock().unwrap();
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match find(&mut s, id, user) {
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
    let mut s = st.lock().unwrap();
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let i = match find(&mut s, id, user) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(filename) = v
        .get("filename")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"filename": "This field is required."})),
        )
            .into_response();
    };
    // A print already open is closed by the server.
    let pid = s.next_print;
    s.next_print += 1;
    s.printers[i].current_print = Some((pid, filename.clone()));
    s.calls.push(Call {
        kind: "start".into(),
        printer: id,
        key: key(&headers),
        arg: filename,
    });
    axum::Json(json!({"succeeded": true, "printer": printer_json(&s.printers[i])})).into_response()
}

async fn finish_print(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = st.lock().unwrap();
    let user = match user_of(&mut s, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let i = match find(&mut s, id, user) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("success")
        .to_string();
    if s.printers[i].current_print.is_none() {
        s.calls.push(Call {
            kind: "finish_not_printing".into(),
            printer: id,
            key: key(&headers),
            arg: status,
        });
        return detail(StatusCode::NOT_FOUND, NOT_PRINTING);
    }
    s.printers[i].current_print = None;
    s.calls.push(Call {
        kind: "finish".into(),
        printer: id,
        key: key(&headers),
        arg: status,
    });
    axum::Json(json!({"succeeded": true, "printer": printer_json(&s.printers[i])})).into_response()
}

async fn predict(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    mut mp: Multipart,
) -> Response {
    {
        let mut s = st.lock().unwrap();
        let user = match user_of(&mut s, &headers) {
            Ok(u) => u,
            Err(r) => return r,
        };
        let i = match find(&mut s, id, user) {
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
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"img": ["No file was submitted."]})),
        )
            .into_response();
    };
    let mut s = st.lock().unwrap();
    s.calls.push(Call {
        kind: "predict".into(),
        printer: id,
        key: None,
        arg: img.len().to_string(),
    });
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

/// Checks a record of calls against the expected prints: per printer, `start job` then
/// `finish job` for each job in order. Returns (lost, duplicated, order violations).
pub fn audit(calls: &[Call], printer: i64, jobs: &[String]) -> (usize, usize, usize) {
    let events: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.printer == printer
                && (c.kind == "start" || c.kind == "finish" || c.kind == "finish_not_printing")
        })
        .collect();
    let mut expected = Vec::new();
    for j in jobs {
        expected.push(format!("{}/start/{j}", "default"));
        expected.push(format!("{}/finish/{j}", "default"));
    }
    let keys: Vec<String> = events.iter().filter_map(|c| c.key.clone()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for k in &keys {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let lost = expected
        .iter()
        .filter(|k| !seen.contains_key(k.as_str()))
        .count();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    // Order: the first delivery of each event must follow the expected sequence.
    let mut first: Vec<&str> = Vec::new();
    for k in &keys {
        if !first.contains(&k.as_str()) {
            first.push(k);
        }
    }
    let pos: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut violations = 0;
    let mut last = None;
    for k in &first {
        match pos.get(k) {
            Some(&p) => {
                if last.is_some_and(|l| p < l) {
                    violations += 1;
                }
                last = Some(p);
            }
            None => violations += 1,
        }
    }
    // A finish the server saw first with no open print means its start was lost or
    // reordered (a repeated finish is counted as a duplicate above).
    let mut delivered: Vec<&str> = Vec::new();
    for c in &events {
        let k = c.key.as_deref().unwrap_or("");
        if c.kind == "finish_not_printing" && !delivered.contains(&k) {
            violations += 1;
        }
        delivered.push(k);
    }
    (lost, duplicated, violations)
}
