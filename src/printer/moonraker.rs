//! Klipper through Moonraker: websocket JSON-RPC.
//!
//! The link runs one task per printer. Each connection does Moonraker's whole sequence:
//! identify as an agent, wait for Klippy `ready` (polling `server.info` every 2 s), list
//! and subscribe the printer objects, read the cameras and the job history; it redoes the
//! ready part after every Klippy disconnect or shutdown and all of it after every
//! reconnect (capped backoff with jitter). What the link remembers (the print it reported,
//! the newest history entry it has seen) lives outside the connection, so a reconnect
//! re-attaches to the same print and reports what happened while it was away, in order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tracing::{debug, error, info, warn};

use super::{
    CameraInfo, JobId, JobOutcome, PrinterError, PrinterEvent, PrinterLink, PrinterState, PrinterStatus,
    Temperature,
};
use crate::config::{ConfigError, invalid};
use crate::secret::Secret;

/// Sent to Moonraker when identifying.
const CLIENT_URL: &str = "https://github.com/printvigil/printvigil";
const READY_POLL: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(15);
/// Retry interval after a 401: a configuration problem, so no hurry.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(60);
/// History entries read when catching up after a reconnect.
const HISTORY_LIMIT: u64 = 50;

/// `kind = "moonraker"`: a Klipper printer behind Moonraker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoonrakerConfig {
    /// A short name, unique among the printers.
    pub name: String,
    /// Moonraker's address.
    #[serde(default = "default_url")]
    pub url: String,
    /// Moonraker's API key, when Moonraker does not trust printvigil's address.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// How the API key is sent: `header` (`X-Api-Key` on the websocket upgrade) or
    /// `oneshot_token` (a one-shot token fetched over HTTP, then `?token=`).
    #[serde(default)]
    pub api_key_via: ApiKeyVia,
    /// Seconds to wait for an answer to a request; a connection is also checked every
    /// three times this long, and redone when it stalled.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds to wait for the printer to confirm pause, resume or cancel.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// The camera to watch; default: the first camera Moonraker lists (its webcam settings).
    #[serde(default)]
    pub camera: Option<crate::camera::CameraConfig>,
    /// What to do with a failing print on this printer (default: `watch.action_on_failure`).
    #[serde(default)]
    pub action_on_failure: Option<crate::watch::Action>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyVia {
    #[default]
    Header,
    OneshotToken,
}

fn default_url() -> String {
    "http://127.0.0.1:7125".into()
}
fn default_request_timeout() -> u64 {
    10
}
fn default_action_timeout() -> u64 {
    60
}

impl MoonrakerConfig {
    /// A configuration with defaults for everything but the name and address.
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            api_key: None,
            api_key_via: ApiKeyVia::Header,
            request_timeout_secs: default_request_timeout(),
            action_timeout_secs: default_action_timeout(),
            camera: None,
            action_on_failure: None,
        }
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                &format!("{e}; write Moonraker's address like \"http://127.0.0.1:7125\""),
            )
        })?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(invalid(
                &format!("{key}.url"),
                &format!("{:?}", self.url),
                "use Moonraker's plain http:// address and port, e.g. \"http://127.0.0.1:7125\" (https is not supported yet)",
            ));
        }
        if !super::nonblank(&self.api_key) {
            return Err(invalid(
                &format!("{key}.api_key"),
                "(blank)",
                "remove api_key when Moonraker trusts this host, or set it to Moonraker's API key (a blank key makes Moonraker revoke trust)",
            ));
        }
        for (k, v) in [
            ("request_timeout_secs", self.request_timeout_secs),
            ("action_timeout_secs", self.action_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(invalid(&format!("{key}.{k}"), &v.to_string(), "use 1 to 3600 seconds"));
            }
        }
        Ok(())
    }

    fn base(&self) -> url::Url {
        url::Url::parse(&self.url).unwrap_or_else(|_| url::Url::parse(&default_url()).unwrap())
    }
}

// ---------------------------------------------------------------------------------------
// The link

/// The Moonraker link; see the module documentation.
pub struct MoonrakerLink {
    shared: Arc<Shared>,
    first_events: Mutex<Option<broadcast::Receiver<PrinterEvent>>>,
    stop_tx: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    cfg: MoonrakerConfig,
    client_name: String,
    events: broadcast::Sender<PrinterEvent>,
    status: watch::Sender<PrinterStatus>,
    cameras: watch::Sender<Vec<CameraInfo>>,
    rpc: Mutex<Option<Rpc>>,
}

impl Shared {
    fn emit(&self, ev: PrinterEvent) {
        info!(printer = %self.cfg.name, event = ?ev, "printer event");
        let _ = self.events.send(ev);
    }
    fn current_rpc(&self) -> Option<Rpc> {
        self.rpc.lock().ok().and_then(|g| g.clone())
    }
    fn set_rpc(&self, rpc: Option<Rpc>) {
        if let Ok(mut g) = self.rpc.lock() {
            *g = rpc;
        }
    }
}

impl MoonrakerLink {
    /// Starts the link's task (needs a Tokio runtime). `instance` makes the client name
    /// unique per printvigil instance: Moonraker allows one agent per client name.
    pub fn start(cfg: MoonrakerConfig, instance: &str) -> Arc<dyn PrinterLink> {
        Self::start_concrete(cfg, instance)
    }

    /// Like [`MoonrakerLink::start`], returning the concrete type.
    pub fn start_concrete(cfg: MoonrakerConfig, instance: &str) -> Arc<MoonrakerLink> {
        let (events, first) = broadcast::channel(1024);
        let client_name = format!("printvigil-{instance}-{}", cfg.name);
        let shared = Arc::new(Shared {
            cfg,
            client_name,
            events,
            status: watch::channel(PrinterStatus::default()).0,
            cameras: watch::channel(Vec::new()).0,
            rpc: Mutex::new(None),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), stop_rx));
        Arc::new(MoonrakerLink {
            shared,
            first_events: Mutex::new(Some(first)),
            stop_tx,
            task: Mutex::new(Some(task)),
        })
    }

    fn printer(&self) -> String {
        self.shared.cfg.name.clone()
    }

    async fn action(
        &self,
        action: &str,
        method: &str,
        allowed: &[PrinterState],
        done: fn(PrinterState) -> bool,
    ) -> Result<(), PrinterError> {
        let state = self.shared.status.borrow().state;
        if !allowed.contains(&state) {
            return Err(PrinterError::WrongState {
                printer: self.printer(),
                action: action.into(),
                state,
            });
        }
        let rpc = self
            .shared
            .current_rpc()
            .ok_or_else(|| PrinterError::NotConnected { printer: self.printer() })?;
        let timeout = Duration::from_secs(self.shared.cfg.action_timeout_secs);
        let mut rx = self.shared.status.subscribe();
        rpc.call_timeout(method, json!({}), timeout).await.map_err(|e| match e {
            CallError::Rpc { message, .. } => {
                PrinterError::Refused { printer: self.printer(), action: action.into(), message }
            }
            other => other.into_printer_error(&self.shared.cfg.name, method),
        })?;
        match tokio::time::timeout(timeout, rx.wait_for(|s| done(s.state))).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(PrinterError::NotConfirmed {
                printer: self.printer(),
                action: action.into(),
                timeout,
                state: self.shared.status.borrow().state,
            }),
        }
    }
}

impl Drop for MoonrakerLink {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

#[async_trait::async_trait]
impl PrinterLink for MoonrakerLink {
    fn name(&self) -> &str {
        &self.shared.cfg.name
    }
    fn events(&self) -> broadcast::Receiver<PrinterEvent> {
        match self.first_events.lock().ok().and_then(|mut g| g.take()) {
            Some(rx) => rx,
            None => self.shared.events.subscribe(),
        }
    }
    fn status(&self) -> watch::Receiver<PrinterStatus> {
        self.shared.status.subscribe()
    }
    fn cameras(&self) -> watch::Receiver<Vec<CameraInfo>> {
        self.shared.cameras.subscribe()
    }
    async fn pause(&self) -> Result<(), PrinterError> {
        self.action("pause", "printer.print.pause", &[PrinterState::Printing], |s| {
            s == PrinterState::Paused
        })
        .await
    }
    async fn resume(&self) -> Result<(), PrinterError> {
        self.action("resume", "printer.print.resume", &[PrinterState::Paused], |s| {
            s == PrinterState::Printing
        })
        .await
    }
    async fn cancel(&self) -> Result<(), PrinterError> {
        self.action(
            "cancel",
            "printer.print.cancel",
            &[PrinterState::Printing, PrinterState::Paused],
            |s| !matches!(s, PrinterState::Printing | PrinterState::Paused),
        )
        .await
    }
    async fn stop(&self) {
        let _ = self.stop_tx.send(true);
        let task = self.task.lock().ok().and_then(|mut g| g.take());
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(5), task).await.is_err()
        {
            warn!(printer = %self.shared.cfg.name, "link task did not stop in 5 s");
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON-RPC over the websocket

#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Closed,
    Rpc { code: i64, message: String },
}

impl CallError {
    fn into_printer_error(self, printer: &str, method: &str) -> PrinterError {
        match self {
            CallError::Timeout(timeout) => {
                PrinterError::Timeout { printer: printer.into(), method: method.into(), timeout }
            }
            CallError::Closed => PrinterError::Closed { printer: printer.into(), method: method.into() },
            CallError::Rpc { message, .. } => {
                PrinterError::Refused { printer: printer.into(), action: method.into(), message }
            }
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(t) => write!(f, "no answer within {t:?}"),
            CallError::Closed => write!(f, "connection closed"),
            CallError::Rpc { code, message } => write!(f, "{message} (code {code})"),
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, CallError>>>>>;

#[derive(Clone)]
struct Rpc {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
}

/// Removes a request's pending entry however the call ends (answer, timeout, drop).
struct PendingGuard {
    pending: Pending,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl Rpc {
    async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_timeout(method, params, self.timeout).await
    }

    async fn call_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().map_err(|_| CallError::Closed)?.insert(id, tx);
        let _guard = PendingGuard { pending: self.pending.clone(), id };
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.out.send(Message::text(msg.to_string())).map_err(|_| CallError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Err(_)) => Err(CallError::Closed),
            Ok(Ok(r)) => r,
        }
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// The task: connect, session, backoff

enum ConnectError {
    Unauthorized(String),
    Other(String),
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tracker = Tracker::default();
    let mut backoff = BACKOFF_START;
    let mut told_unauthorized = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let attempt = match connect(&shared).await {
            Ok(ws) => {
                let end = session(&shared, ws, &mut tracker, &mut stop).await;
                shared.set_rpc(None);
                if end.stopped {
                    break;
                }
                if end.was_ready {
                    backoff = BACKOFF_START;
                    told_unauthorized = false;
                }
                if end.unauthorized {
                    Err(ConnectError::Unauthorized("JSON-RPC error 401 on the websocket".into()))
                } else {
                    tracker
                        .offline(&shared, &format!("lost the connection to Moonraker: {}", end.reason));
                    Ok(backoff)
                }
            }
            Err(e) => Err(e),
        };
        let wait = match attempt {
            Ok(wait) => wait,
            Err(ConnectError::Unauthorized(detail)) => {
                if !told_unauthorized {
                    error!(
                        printer = %shared.cfg.name,
                        url = %shared.cfg.url,
                        "Moonraker refused printvigil (401 Unauthorized: {detail}). Fix: set `api_key` for this printer to Moonraker's API key (shown by Mainsail/Fluidd under the API key settings, or `GET /access/api_key` from a trusted host), or add printvigil's address to Moonraker's [authorization] trusted_clients. Retrying every {}s.",
                        UNAUTHORIZED_RETRY.as_secs()
                    );
                    told_unauthorized = true;
                }
                tracker.offline(
                    &shared,
                    "Moonraker refused the connection (401): the API key is missing or wrong; set `api_key` for this printer",
                );
                UNAUTHORIZED_RETRY
            }
            Err(ConnectError::Other(reason)) => {
                debug!(printer = %shared.cfg.name, %reason, "cannot reach Moonraker");
                tracker.offline(
                    &shared,
                    &format!("cannot reach Moonraker at {}: {reason}", shared.cfg.url),
                );
                backoff
            }
        };
        backoff = (backoff * 2).min(BACKOFF_CAP);
        let jitter = wait.mul_f64(0.75 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = stop.changed() => {}
        }
    }
    shared.set_rpc(None);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shared: &Shared) -> Result<Ws, ConnectError> {
    let cfg = &shared.cfg;
    let base = cfg.base();
    let mut ws_url = base.clone();
    let _ = ws_url.set_scheme(if base.scheme() == "https" { "wss" } else { "ws" });
    ws_url.set_path("/websocket");
    let key = cfg.api_key.as_ref().filter(|k| !k.is_empty());
    if let (Some(key), ApiKeyVia::OneshotToken) = (key, cfg.api_key_via) {
        let token = oneshot_token(&base, key, Duration::from_secs(cfg.request_timeout_secs)).await?;
        ws_url.query_pairs_mut().append_pair("token", &token);
    }
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad websocket address: {e}")))?;
    if let (Some(key), ApiKeyVia::Header) = (key, cfg.api_key_via) {
        let value = key.expose().parse().map_err(|_| {
            ConnectError::Other("the API key contains characters a header cannot carry".into())
        })?;
        request.headers_mut().insert("X-Api-Key", value);
    }
    let timeout = Duration::from_secs(cfg.request_timeout_secs);
    match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err(ConnectError::Other(format!("no websocket handshake within {timeout:?}"))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) if matches!(resp.status().as_u16(), 401 | 403) => {
            Err(ConnectError::Unauthorized(format!("HTTP {}", resp.status())))
        }
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}

async fn oneshot_token(
    base: &url::Url,
    key: &Secret,
    timeout: Duration,
) -> Result<String, ConnectError> {
    let mut url = base.clone();
    url.set_path("/access/oneshot_token");
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let resp = client.get(url).header("X-Api-Key", key.expose()).send().await.map_err(|e| {
        ConnectError::Other(format!("one-shot token request failed: {}", e.without_url()))
    })?;
    let status = resp.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(ConnectError::Unauthorized(format!("HTTP {status} on /access/oneshot_token")));
    }
    if !status.is_success() {
        return Err(ConnectError::Other(format!("one-shot token request: HTTP {status}")));
    }
    let body: Value = resp
        .json()
        .await
        .map_err(|e| ConnectError::Other(format!("one-shot token answer unreadable: {e}")))?;
    body.get("result")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConnectError::Other("one-shot token answer has no `result`".into()))
}

struct SessionEnd {
    reason: String,
    unauthorized: bool,
    was_ready: bool,
    stopped: bool,
}

async fn session(
    shared: &Arc<Shared>,
    ws: Ws,
    tracker: &mut Tracker,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (notif_tx, mut notif_rx) = mpsc::unbounded_channel::<(String, Value)>();
    let rpc = Rpc {
        out: out_tx,
        pending: Arc::new(Mutex::new(HashMap::new())),
        next_id: Arc::new(AtomicU64::new(1)),
        timeout: Duration::from_secs(shared.cfg.request_timeout_secs),
    };
    let printer = shared.cfg.name.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let pending = rpc.pending.clone();
    let reader = tokio::spawn(async move {
        let mut garbage = 0u64;
        let reason = loop {
            match stream.next().await {
                None => break "closed by Moonraker".to_string(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(Message::Text(t))) => {
                    if let Err(why) = dispatch(t.as_str(), &pending, &notif_tx) {
                        garbage += 1;
                        if garbage <= 5 || garbage.is_power_of_two() {
                            warn!(printer = %printer, count = garbage, "ignored a message from Moonraker: {why}");
                        }
                    }
                }
                Some(Ok(Message::Close(_))) => break "closed by Moonraker".to_string(),
                Some(Ok(_)) => {}
            }
        };
        // Nobody will answer the requests still waiting: fail them now.
        if let Ok(mut p) = pending.lock() {
            p.clear();
        }
        reason
    });

    let mut s = Session { shared: shared.clone(), rpc: rpc.clone(), ready: false, was_ready: false };
    let outcome = s.drive(tracker, &mut notif_rx, stop, reader).await;
    let _ = rpc.out.send(Message::Close(None));
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    let unauthorized = outcome.0 == UNAUTHORIZED;
    SessionEnd { reason: outcome.0, unauthorized, was_ready: s.was_ready, stopped: outcome.1 }
}

/// Routes one text frame: answers to their waiting request, notifications to the session.
fn dispatch(
    text: &str,
    pending: &Pending,
    notif: &mpsc::UnboundedSender<(String, Value)>,
) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    if let Some(method) = obj.get("method").and_then(Value::as_str) {
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        let _ = notif.send((method.to_string(), params));
        return Ok(());
    }
    let id = obj
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("neither a notification nor an answer with a numeric id")?;
    let result = if let Some(err) = obj.get("error") {
        let msg = err.get("message").and_then(Value::as_str).unwrap_or("unknown error");
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
        Err(CallError::Rpc { code, message: msg.to_string() })
    } else {
        Ok(obj.get("result").cloned().unwrap_or(Value::Null))
    };
    let tx = pending.lock().ok().and_then(|mut p| p.remove(&id));
    match tx {
        Some(tx) => {
            let _ = tx.send(result);
            Ok(())
        }
        None => Err(format!("an answer to request {id}, which is no longer waiting")),
    }
}

struct Session {
    shared: Arc<Shared>,
    rpc: Rpc,
    ready: bool,
    was_ready: bool,
}

impl Session {
    /// Runs until the connection ends (reason, stopped?).
    async fn drive(
        &mut self,
        tracker: &mut Tracker,
        notif_rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
        stop: &mut watch::Receiver<bool>,
        mut reader: tokio::task::JoinHandle<String>,
    ) -> (String, bool) {
        match self.identify().await {
            Ok(()) => {}
            Err(CallError::Rpc { code, message }) if is_auth_error(code, &message) => {
                return (UNAUTHORIZED.into(), false);
            }
            Err(CallError::Rpc { message, .. }) if message.contains("already registered") => {
                // Our previous connection still holds the agent name: it stalled and
                // Moonraker has not noticed yet (its pings time out after ~30 s). Watching
                // the printer matters more than the agent role: carry on without it.
                warn!(
                    printer = %self.shared.cfg.name,
                    client = %self.shared.client_name,
                    "Moonraker still holds this client name from an earlier connection ({message}); continuing without the agent role until the next reconnect. If this repeats, another printvigil instance uses the same instance name."
                );
            }
            Err(e) => return (format!("identify failed: {e}"), false),
        }
        self.shared.set_rpc(Some(self.rpc.clone()));
        let mut poll = tokio::time::interval(READY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While ready, a cheap request every three request timeouts notices a connection
        // that stalled without closing (a half-open TCP connection never ends on its own).
        let mut liveness = tokio::time::interval(self.rpc.timeout * 3);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.reset();
        loop {
            tokio::select! {
                r = &mut reader => {
                    return (r.unwrap_or_else(|e| e.to_string()), false);
                }
                _ = stop.changed() => return ("stopped".into(), true),
                n = notif_rx.recv() => {
                    let Some((method, params)) = n else { return ("closed".into(), false) };
                    if let Err(e) = self.notification(tracker, &method, params).await {
                        warn!(printer = %self.shared.cfg.name, "handling {method}: {e}");
                    }
                }
                _ = liveness.tick(), if self.ready => {
                    if let Err(e @ (CallError::Timeout(_) | CallError::Closed)) =
                        self.rpc.call("server.info", json!({})).await
                    {
                        return (format!("Moonraker stopped answering ({e})"), false);
                    }
                }
                _ = poll.tick(), if !self.ready => {
                    match self.check_ready(tracker).await {
                        Ok(()) => {}
                        Err(CallError::Closed) => return ("closed".into(), false),
                        Err(CallError::Rpc { code, message }) if is_auth_error(code, &message) => {
                            return (UNAUTHORIZED.into(), false);
                        }
                        Err(e) => warn!(printer = %self.shared.cfg.name, "waiting for Klipper: {e}"),
                    }
                }
            }
        }
    }

    async fn identify(&self) -> Result<(), CallError> {
        let mut params = json!({
            "client_name": self.shared.client_name,
            "version": env!("CARGO_PKG_VERSION"),
            "type": "agent",
            "url": CLIENT_URL,
        });
        if let Some(key) = self.shared.cfg.api_key.as_ref().filter(|k| !k.is_empty()) {
            params["api_key"] = Value::String(key.expose().to_string());
        }
        self.rpc.call("server.connection.identify", params).await.map(|_| ())
    }

    async fn check_ready(&mut self, tracker: &mut Tracker) -> Result<(), CallError> {
        let info = self.rpc.call("server.info", json!({})).await?;
        let state = info.get("klippy_state").and_then(Value::as_str).unwrap_or("unknown").to_string();
        match state.as_str() {
            "ready" => self.on_ready(tracker).await,
            "shutdown" | "error" => {
                let msg =
                    self.state_message().await.unwrap_or_else(|| format!("Klipper is in {state} state"));
                tracker.halted(&self.shared, &msg);
                Ok(())
            }
            other => {
                tracker.offline(
                    &self.shared,
                    &format!("Klipper is not ready (Moonraker reports `{other}`)"),
                );
                Ok(())
            }
        }
    }

    async fn state_message(&self) -> Option<String> {
        let info = self.rpc.call("printer.info", json!({})).await.ok()?;
        info.get("state_message").and_then(Value::as_str).map(|s| s.trim().to_string())
    }

    /// The part of the sequence after Klippy is ready: objects, subscription, cameras,
    /// history.
    async fn on_ready(&mut self, tracker: &mut Tracker) -> Result<(), CallError> {
        let list = self.rpc.call("printer.objects.list", json!({})).await?;
        let present: HashSet<String> = list
            .get("objects")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let mut objects = Map::new();
        let wanted: [(&str, Value); 5] = [
            ("print_stats", json!(["state", "filename", "message", "print_duration", "info"])),
            ("webhooks", json!(["state", "state_message"])),
            ("virtual_sdcard", json!(["progress", "is_active", "file_position"])),
            ("pause_resume", json!(["is_paused"])),
            (TIMELAPSE_MACRO, json!(["is_paused"])),
        ];
        for (name, fields) in wanted {
            if present.contains(name) {
                objects.insert(name.into(), fields);
            }
        }
        for name in &present {
            if name == "heater_bed"
                || name.starts_with("extruder")
                || name.starts_with("heater_generic ")
            {
                objects.insert(name.clone(), json!(["temperature", "target"]));
            }
        }
        let sub = self.rpc.call("printer.objects.subscribe", json!({"objects": objects})).await?;
        self.ready = true;
        self.was_ready = true;
        tracker.online(&self.shared);
        self.read_cameras().await;
        let status = sub.get("status").cloned().unwrap_or(Value::Null);
        tracker.replace_status(status);
        self.process_status(tracker, true).await;
        Ok(())
    }

    async fn notification(
        &mut self,
        tracker: &mut Tracker,
        method: &str,
        params: Value,
    ) -> Result<(), CallError> {
        match method {
            "notify_status_update" => {
                if !self.ready {
                    return Ok(());
                }
                if let Some(delta) = params.get(0) {
                    tracker.merge_status(delta);
                    self.process_status(tracker, false).await;
                }
            }
            "notify_klippy_ready" if !self.ready => self.check_ready(tracker).await?,
            "notify_klippy_disconnected" => {
                self.ready = false;
                tracker.offline(&self.shared, "Klipper disconnected from Moonraker");
            }
            "notify_klippy_shutdown" => {
                self.ready = false;
                let msg = self.state_message().await.unwrap_or_else(|| "Klipper shut down".into());
                tracker.halted(&self.shared, &msg);
            }
            "notify_history_changed" => {
                let p = params.get(0).cloned().unwrap_or(Value::Null);
                if let Some(job) = p.get("job").and_then(HistJob::parse) {
                    tracker.history_job(&self.shared, &job, true);
                }
            }
            "notify_webcams_changed" => self.read_cameras().await,
            _ => {}
        }
        Ok(())
    }

    async fn read_cameras(&self) {
        match self.rpc.call("server.webcams.list", json!({})).await {
            Ok(v) => {
                let cams = parse_webcams(&v, &self.shared.cfg.base());
                self.shared.cameras.send_if_modified(|c| {
                    if *c != cams {
                        *c = cams;
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) => warn!(printer = %self.shared.cfg.name, "cannot read the camera list: {e}"),
        }
    }

    async fn history(&self) -> Result<Vec<HistJob>, CallError> {
        let v = self
            .rpc
            .call("server.history.list", json!({"limit": HISTORY_LIMIT, "order": "desc"}))
            .await?;
        let mut jobs: Vec<HistJob> = v
            .get("jobs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(HistJob::parse).collect())
            .unwrap_or_default();
        jobs.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
        Ok(jobs)
    }

    /// Derives events from the merged status; `resync` after (re)subscribing.
    async fn process_status(&mut self, tracker: &mut Tracker, resync: bool) {
        let state = tracker.print_state();
        let prev = tracker.last_state.clone();
        let changed = prev.as_deref() != state.as_deref();
        // Starts and ends come from the job history (it carries the job's identity); read
        // it when a print state change may mean one, and after every (re)subscription.
        let job_edge = changed
            && (matches!(state.as_deref(), Some("printing"))
                || matches!(prev.as_deref(), Some("printing" | "paused")));
        if job_edge {
            tracker.orphan_end(&self.shared, prev.as_deref(), state.as_deref());
        }
        if resync || job_edge {
            match self.history().await {
                Ok(jobs) => tracker.catch_up(&self.shared, &jobs, state.as_deref()),
                Err(e) => warn!(printer = %self.shared.cfg.name, "cannot read the job history: {e}"),
            }
        }
        tracker.pause_edges(&self.shared, prev.as_deref(), state.as_deref());
        tracker.last_state = state;
        tracker.publish(&self.shared);
    }
}

/// Moonraker answers a missing or wrong key with code 401, or (on identify) with
/// "Unauthorized" / "Invalid API Key" under a generic code.
fn is_auth_error(code: i64, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == 401 || m.contains("unauthorized") || m.contains("api key")
}

/// The session end reason for a 401 from Moonraker.
const UNAUTHORIZED: &str = "unauthorized";

const TIMELAPSE_MACRO: &str = "gcode_macro TIMELAPSE_TAKE_FRAME";

// ---------------------------------------------------------------------------------------
// What the link remembers across connections

#[derive(Debug, Clone, PartialEq)]
struct HistJob {
    job_id: String,
    filename: String,
    status: String,
    start_time: f64,
}

impl HistJob {
    fn parse(v: &Value) -> Option<HistJob> {
        Some(HistJob {
            job_id: v.get("job_id")?.as_str()?.to_string(),
            filename: v.get("filename").and_then(Value::as_str).unwrap_or("").to_string(),
            status: v.get("status").and_then(Value::as_str).unwrap_or("").to_string(),
            start_time: v.get("start_time").and_then(Value::as_f64).unwrap_or(0.0),
        })
    }
    fn id(&self) -> JobId {
        JobId(format!("{}@{:.0}", self.job_id, self.start_time))
    }
    fn outcome(&self) -> Option<JobOutcome> {
        match self.status.as_str() {
            "in_progress" | "" => None,
            "completed" => Some(JobOutcome::Completed),
            "cancelled" => Some(JobOutcome::Cancelled),
            "klippy_shutdown" => Some(JobOutcome::Failed(
                "the printer halted during the print (emergency stop or firmware error; Moonraker: klippy_shutdown)".into(),
            )),
            "klippy_disconnect" => Some(JobOutcome::Failed(
                "the printer's firmware restarted or disconnected during the print (Moonraker: klippy_disconnect)".into(),
            )),
            "interrupted" | "server_exit" => Some(JobOutcome::Failed(format!(
                "the printer's host software stopped during the print (Moonraker: {})",
                self.status
            ))),
            "error" => Some(JobOutcome::Failed("the print stopped on an error (Moonraker: error)".into())),
            other => Some(JobOutcome::Failed(format!("the print ended as `{other}`"))),
        }
    }
}

#[derive(Default)]
struct Tracker {
    /// Merged subscription status: object -> field -> value.
    status: Map<String, Value>,
    last_state: Option<String>,
    /// The print reported as started and not yet as finished.
    current: Option<(JobId, String)>,
    started: HashSet<JobId>,
    finished: HashSet<JobId>,
    /// Newest history start time already accounted for; `None` until the first sync.
    horizon: Option<f64>,
    /// The printer paused for a timelapse frame: neither the pause nor its resume count.
    parked: bool,
    /// The current print goes on although the history closed its entry (Moonraker
    /// restarted during the print: `interrupted`, `server_exit`); its end comes from
    /// `print_stats`.
    orphan: bool,
    /// Last online/offline/halted report, to report each change once.
    reported: Option<Availability>,
}

#[derive(Debug, Clone, PartialEq)]
enum Availability {
    Online,
    Offline,
    Halted,
}

impl Tracker {
    fn online(&mut self, shared: &Shared) {
        if self.reported != Some(Availability::Online) {
            self.reported = Some(Availability::Online);
            shared.emit(PrinterEvent::Online);
        }
        shared.status.send_modify(|s| s.message = None);
    }

    fn offline(&mut self, shared: &Shared, reason: &str) {
        if !matches!(self.reported, Some(Availability::Offline)) {
            self.reported = Some(Availability::Offline);
            shared.emit(PrinterEvent::Offline { reason: reason.into() });
        }
        shared.status.send_modify(|s| {
            s.state = PrinterState::Offline;
            s.message = Some(reason.into());
        });
    }

    fn halted(&mut self, shared: &Shared, message: &str) {
        if self.reported != Some(Availability::Halted) {
            self.reported = Some(Availability::Halted);
            shared.emit(PrinterEvent::Halted { message: message.into() });
        }
        shared.status.send_modify(|s| {
            s.state = PrinterState::Error;
            s.message = Some(message.into());
        });
    }

    fn replace_status(&mut self, status: Value) {
        self.status = match status {
            Value::Object(m) => m,
            _ => Map::new(),
        };
    }

    fn merge_status(&mut self, delta: &Value) {
        let Some(delta) = delta.as_object() else { return };
        for (obj, fields) in delta {
            let entry = self.status.entry(obj.clone()).or_insert_with(|| Value::Object(Map::new()));
            match (entry.as_object_mut(), fields.as_object()) {
                (Some(e), Some(f)) => {
                    for (k, v) in f {
                        e.insert(k.clone(), v.clone());
                    }
                }
                _ => *entry = fields.clone(),
            }
        }
    }

    fn field(&self, obj: &str, field: &str) -> Option<&Value> {
        self.status.get(obj)?.get(field)
    }

    fn print_state(&self) -> Option<String> {
        self.field("print_stats", "state").and_then(Value::as_str).map(str::to_owned)
    }

    fn timelapse_parked(&self) -> bool {
        self.field(TIMELAPSE_MACRO, "is_paused").and_then(Value::as_bool).unwrap_or(false)
    }

    fn pause_edges(&mut self, shared: &Shared, prev: Option<&str>, now: Option<&str>) {
        let job = self.current.as_ref().map(|(j, _)| j.clone());
        match (prev, now) {
            (Some("printing"), Some("paused")) => {
                if self.timelapse_parked() {
                    debug!(printer = %shared.cfg.name, "timelapse park, not a pause");
                    self.parked = true;
                } else {
                    shared.emit(PrinterEvent::Paused { job });
                }
            }
            (Some("paused"), Some("printing")) => {
                if std::mem::take(&mut self.parked) {
                    debug!(printer = %shared.cfg.name, "timelapse park over");
                } else {
                    shared.emit(PrinterEvent::Resumed { job });
                }
            }
            (_, Some("printing" | "paused")) => {}
            _ => self.parked = false,
        }
    }

    /// Reports, in order, what the history shows beyond what was already reported.
    fn catch_up(&mut self, shared: &Shared, jobs: &[HistJob], state: Option<&str>) {
        let Some(horizon) = self.horizon else {
            // First sync of this link: older prints are not news; a print still running is
            // attached to, not started.
            let attach = jobs.last().filter(|last| {
                (last.outcome().is_none() || self.lost_track(last))
                    && matches!(state, Some("printing" | "paused"))
            });
            let attach_id = attach.map(HistJob::id);
            for j in jobs {
                self.started.insert(j.id());
                // Older entries, even one still marked in progress, are not news: only the
                // print attached to will have its end reported.
                if Some(j.id()) != attach_id {
                    self.finished.insert(j.id());
                }
            }
            self.horizon = Some(jobs.last().map(|j| j.start_time).unwrap_or(0.0));
            if let Some(last) = attach {
                self.orphan = self.lost_track(last);
                let file = self.job_file(last);
                self.current = Some((last.id(), file.clone()));
                shared.emit(PrinterEvent::Attached {
                    job: last.id(),
                    file,
                    paused: state == Some("paused"),
                });
            }
            return;
        };
        for (i, j) in jobs.iter().enumerate() {
            let known = self.started.contains(&j.id());
            if j.start_time >= horizon || known {
                self.history_job(shared, j, i + 1 == jobs.len());
            }
        }
    }

    /// One history entry, from a notification or a history read.
    /// `latest`: the newest entry of the history.
    fn history_job(&mut self, shared: &Shared, job: &HistJob, latest: bool) {
        if self.horizon.is_none() {
            // Not synced yet: the first history read will account for it.
            return;
        }
        let id = job.id();
        let running_on = latest && self.lost_track(job);
        let file = self.job_file(job);
        if self.started.insert(id.clone()) {
            shared.emit(PrinterEvent::PrintStarted { job: id.clone(), file: file.clone() });
            if job.outcome().is_none() || running_on {
                self.current = Some((id.clone(), file.clone()));
            }
        }
        if running_on && self.current.as_ref().is_some_and(|(c, _)| *c == id) {
            // Moonraker lost track of the print, Klipper did not: it goes on.
            self.orphan = true;
            self.horizon = Some(self.horizon.unwrap_or(0.0).max(job.start_time));
            return;
        }
        if let Some(outcome) = job.outcome()
            && self.finished.insert(id.clone())
        {
            if self.current.as_ref().is_some_and(|(c, _)| *c == id) {
                self.current = None;
            }
            shared.emit(PrinterEvent::Finished { job: id, file, outcome });
        }
        self.horizon = Some(self.horizon.unwrap_or(0.0).max(job.start_time));
    }

    /// The job's file name. Moonraker can record a print that starts right after Klipper
    /// becomes ready without its file name; Klipper's `print_stats` still has it then.
    fn job_file(&self, job: &HistJob) -> String {
        if !job.filename.is_empty() {
            return job.filename.clone();
        }
        self.field("print_stats", "filename")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .unwrap_or("")
            .to_string()
    }

    /// The history entry was closed because Moonraker stopped (not the print), and Klipper
    /// is still printing that file.
    fn lost_track(&self, job: &HistJob) -> bool {
        matches!(job.status.as_str(), "interrupted" | "server_exit")
            && matches!(self.print_state().as_deref(), Some("printing" | "paused"))
            && self.field("print_stats", "filename").and_then(Value::as_str)
                == Some(job.filename.as_str())
    }

    /// The end of a print whose history entry was closed early, from `print_stats`.
    fn orphan_end(&mut self, shared: &Shared, prev: Option<&str>, now: Option<&str>) {
        if !self.orphan
            || !matches!(prev, Some("printing" | "paused"))
            || matches!(now, Some("printing" | "paused"))
        {
            return;
        }
        self.orphan = false;
        let Some((job, file)) = self.current.take() else { return };
        let outcome = match now {
            Some("complete") => JobOutcome::Completed,
            Some("error") => JobOutcome::Failed(
                self.field("print_stats", "message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("error")
                    .to_string(),
            ),
            _ => JobOutcome::Cancelled,
        };
        if self.finished.insert(job.clone()) {
            shared.emit(PrinterEvent::Finished { job, file, outcome });
        }
    }

    fn publish(&self, shared: &Shared) {
        let state = match self.print_state().as_deref() {
            Some("printing") => PrinterState::Printing,
            Some("paused") => PrinterState::Paused,
            Some("error") => PrinterState::Error,
            _ => PrinterState::Idle,
        };
        let file = self
            .field("print_stats", "filename")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .map(str::to_owned);
        let progress = self.field("virtual_sdcard", "progress").and_then(Value::as_f64);
        let mut temperatures: Vec<Temperature> = self
            .status
            .iter()
            .filter_map(|(name, v)| {
                let actual = v.get("temperature")?.as_f64()?;
                let target = v.get("target").and_then(Value::as_f64).unwrap_or(0.0);
                Some(Temperature { name: name.clone(), actual, target })
            })
            .collect();
        temperatures.sort_by(|a, b| a.name.cmp(&b.name));
        let job = self.current.as_ref().map(|(j, _)| j.clone());
        let message = self
            .field("print_stats", "message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        let new = PrinterStatus { state, file, job, progress, temperatures, message };
        shared.status.send_if_modified(|s| {
            if *s != new {
                *s = new;
                true
            } else {
                false
            }
        });
    }
}

/// Cameras from `server.webcams.list`; relative URLs are relative to the host's web
/// server (port 80 of Moonraker's host).
fn parse_webcams(v: &Value, base: &url::Url) -> Vec<CameraInfo> {
    let mut web = base.clone();
    let _ = web.set_port(None);
    web.set_path("/");
    let abs = |u: Option<&str>| -> Option<String> {
        let u = u?.trim();
        if u.is_empty() {
            return None;
        }
        web.join(u).ok().map(|u| u.to_string())
    };
    v.get("webcams")
        .and_then(Value::as_array)
        .map(|cams| {
            cams.iter()
                .filter(|c| c.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|c| {
                    Some(CameraInfo {
                        name: c.get("name")?.as_str()?.to_string(),
                        snapshot_url: abs(c.get("snapshot_url").and_then(Value::as_str)),
                        stream_url: abs(c.get("stream_url").and_then(Value::as_str)),
                        rotation: match c.get("rotation").and_then(Value::as_u64).unwrap_or(0) {
                            r @ (90 | 180 | 270) => r as u16,
                            _ => 0,
                        },
                        flip_horizontal: c
                            .get("flip_horizontal")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        flip_vertical: c.get("flip_vertical").and_then(Value::as_bool).unwrap_or(false),
                        target_fps: c
                            .get("target_fps")
                            .and_then(Value::as_u64)
                            .map(|f| f.min(1000) as u32),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The fuzzing entry (`crate::fuzzing`).
pub(crate) mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            cfg: MoonrakerConfig::new("t", "http://127.0.0.1:7125"),
            client_name: "x".into(),
            events: broadcast::channel(64).0,
            status: watch::channel(PrinterStatus::default()).0,
            cameras: watch::channel(Vec::new()).0,
            rpc: Mutex::new(None),
        })
    }

    fn job(id: &str, status: &str, t: f64) -> HistJob {
        HistJob {
            job_id: id.into(),
            filename: format!("{id}.gcode"),
            status: status.into(),
            start_time: t,
        }
    }

    fn drain(rx: &mut broadcast::Receiver<PrinterEvent>) -> Vec<PrinterEvent> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[test]
    fn first_sync_attaches_and_catch_up_reports_missed_prints_in_order() {
        let sh = shared();
        let mut rx = sh.events.subscribe();
        let mut t = Tracker::default();
        t.catch_up(&sh, &[job("1", "completed", 1.0), job("2", "in_progress", 2.0)], Some("printing"));
        let ev = drain(&mut rx);
        assert!(matches!(&ev[..], [PrinterEvent::Attached { paused: false, .. }]), "{ev:?}");
        // Link down: job 2 finished, job 3 ran and finished, job 4 running.
        let jobs = [
            job("1", "completed", 1.0),
            job("2", "completed", 2.0),
            job("3", "cancelled", 3.0),
            job("4", "in_progress", 4.0),
        ];
        t.catch_up(&sh, &jobs, Some("printing"));
        let ev = drain(&mut rx);
        let names: Vec<String> = ev
            .iter()
            .map(|e| match e {
                PrinterEvent::PrintStarted { file, .. } => format!("start {file}"),
                PrinterEvent::Finished { file, outcome, .. } => format!("end {file} {outcome:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["end 2.gcode Completed", "start 3.gcode", "end 3.gcode Cancelled", "start 4.gcode"]
        );
        // The same history again reports nothing.
        t.catch_up(&sh, &jobs, Some("printing"));
        t.history_job(&sh, &jobs[3], false);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_history_entry_without_a_file_name_takes_print_stats_one() {
        let sh = shared();
        let mut rx = sh.events.subscribe();
        let mut t = Tracker::default();
        t.catch_up(&sh, &[job("1", "completed", 1.0)], Some("standby"));
        t.replace_status(json!({"print_stats": {"state": "complete", "filename": "benchy.gcode"}}));
        let nameless = HistJob { filename: String::new(), ..job("2", "completed", 2.0) };
        t.history_job(&sh, &nameless, true);
        let files: Vec<String> = drain(&mut rx)
            .into_iter()
            .filter_map(|e| match e {
                PrinterEvent::PrintStarted { file, .. } | PrinterEvent::Finished { file, .. } => Some(file),
                _ => None,
            })
            .collect();
        assert_eq!(files, ["benchy.gcode", "benchy.gcode"]);
    }

    #[test]
    fn print_that_outlives_a_moonraker_restart_ends_from_print_stats() {
        let sh = shared();
        let mut rx = sh.events.subscribe();
        let mut t = Tracker::default();
        t.replace_status(json!({"print_stats": {"state": "printing", "filename": "1.gcode"}}));
        t.catch_up(&sh, &[job("1", "in_progress", 1.0)], Some("printing"));
        assert!(matches!(&drain(&mut rx)[..], [PrinterEvent::Attached { .. }]));
        // Moonraker restarted: it marked the job interrupted; Klipper still prints it.
        t.catch_up(&sh, &[job("1", "interrupted", 1.0)], Some("printing"));
        assert!(drain(&mut rx).is_empty(), "an interrupted entry of a running print is not an end");
        t.merge_status(&json!({"print_stats": {"state": "complete"}}));
        t.orphan_end(&sh, Some("printing"), Some("complete"));
        t.catch_up(&sh, &[job("1", "interrupted", 1.0)], Some("complete"));
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [PrinterEvent::Finished { outcome: JobOutcome::Completed, .. }]),
            "{ev:?}"
        );
        // An interrupted entry for a print that is over is a failed print.
        t.catch_up(&sh, &[job("1", "interrupted", 1.0), job("2", "interrupted", 2.0)], Some("standby"));
        let ev = drain(&mut rx);
        assert!(
            matches!(
                &ev[..],
                [
                    PrinterEvent::PrintStarted { .. },
                    PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }
                ]
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn a_stale_entry_seen_at_first_sync_is_never_reported() {
        let sh = shared();
        let mut rx = sh.events.subscribe();
        let mut t = Tracker::default();
        // History still says in progress but Klipper is idle: nothing to attach to.
        t.catch_up(&sh, &[job("1", "in_progress", 1.0)], Some("standby"));
        t.history_job(&sh, &job("1", "cancelled", 1.0), true);
        assert!(drain(&mut rx).is_empty());
        assert!(t.current.is_none());
    }

    proptest::proptest! {
        /// Nothing Moonraker sends can panic the link.
        #[test]
        fn arbitrary_input_never_panics(text in ".{0,200}", a in 0u8..6, b in 0u8..6) {
            let sh = shared();
            let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
            let (tx, _rx) = mpsc::unbounded_channel();
            let _ = dispatch(&text, &pending, &tx);
            let values = [
                json!(null), json!(text), json!({"print_stats": text}),
                json!({"print_stats": {"state": text, "filename": 3}}),
                json!({"extruder": {"temperature": "hot", "target": []}}),
                json!({TIMELAPSE_MACRO: {"is_paused": text}}),
            ];
            let mut t = Tracker::default();
            t.replace_status(values[a as usize].clone());
            t.merge_status(&values[b as usize]);
            let states = ["printing", "paused", "complete", "standby", "error", ""];
            t.orphan = true;
            t.orphan_end(&sh, Some(states[a as usize]), Some(states[b as usize]));
            t.pause_edges(&sh, Some(states[a as usize]), t.print_state().as_deref());
            t.publish(&sh);
            let _ = HistJob::parse(&values[a as usize]);
            let _ = parse_webcams(&json!({"webcams": [values[b as usize].clone()]}), &url::Url::parse("http://h:1").unwrap());
        }
    }

    #[test]
    fn timelapse_park_is_not_a_pause() {
        let sh = shared();
        let mut rx = sh.events.subscribe();
        let mut t = Tracker::default();
        t.merge_status(&json!({TIMELAPSE_MACRO: {"is_paused": true}}));
        t.pause_edges(&sh, Some("printing"), Some("paused"));
        t.merge_status(&json!({TIMELAPSE_MACRO: {"is_paused": false}}));
        t.pause_edges(&sh, Some("paused"), Some("printing"));
        assert!(drain(&mut rx).is_empty());
        t.pause_edges(&sh, Some("printing"), Some("paused"));
        t.pause_edges(&sh, Some("paused"), Some("printing"));
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [PrinterEvent::Paused { .. }, PrinterEvent::Resumed { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn garbage_from_moonraker_is_rejected_not_fatal() {
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (tx, _rx) = mpsc::unbounded_channel();
        for text in [
            "",
            "nonsense",
            "[1,2]",
            "{\"id\": \"x\"}",
            "{\"id\": 99, \"result\": 1}",
            "{\"jsonrpc\":\"2.0\"}",
        ] {
            assert!(dispatch(text, &pending, &tx).is_err(), "{text}");
        }
        assert!(dispatch("{\"method\":\"notify_x\",\"params\":[]}", &pending, &tx).is_ok());
    }

    #[tokio::test]
    async fn timed_out_requests_leave_no_pending_entry() {
        let (out, _keep) = mpsc::unbounded_channel();
        let rpc = Rpc {
            out,
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(1)),
            timeout: Duration::from_millis(20),
        };
        let r = rpc.call("server.info", json!({})).await;
        assert!(matches!(r, Err(CallError::Timeout(_))));
        assert_eq!(rpc.pending_len(), 0);
        // A call dropped mid-way (its future cancelled) also leaves nothing behind.
        let fut = rpc.call_timeout("server.info", json!({}), Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
        assert_eq!(rpc.pending_len(), 0);
    }

    #[test]
    fn webcam_urls_are_made_absolute() {
        let v = json!({"webcams": [
            {"name": "cam", "enabled": true, "snapshot_url": "/webcam/?action=snapshot",
             "stream_url": "http://10.0.0.5:8080/stream", "rotation": 90,
             "flip_horizontal": true, "flip_vertical": false, "target_fps": 15},
            {"name": "off", "enabled": false},
            {"no_name": 1}
        ]});
        let cams = parse_webcams(&v, &url::Url::parse("http://192.168.1.9:7125").unwrap());
        assert_eq!(cams.len(), 1);
        assert_eq!(cams[0].snapshot_url.as_deref(), Some("http://192.168.1.9/webcam/?action=snapshot"));
        assert_eq!(cams[0].stream_url.as_deref(), Some("http://10.0.0.5:8080/stream"));
        assert_eq!(
            (cams[0].rotation, cams[0].flip_horizontal, cams[0].target_fps),
            (90, true, Some(15))
        );
    }
}
