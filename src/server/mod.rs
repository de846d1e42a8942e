//! The server mirror: what the watch loop calls to tell an Obico-compatible server about
//! prints and frames. [`Mirror::start_print`], [`Mirror::finish_print`] and
//! [`Mirror::offer_frame`] never wait for the network: events are committed to the durable
//! outbox and a background task sends them; frames wait in a one-per-printer slot (the
//! newest replaces the older), so detection and local decisions go on whatever the server
//! does.
//!
//! Delivery semantics: in order per printer, at least once, with duplicates avoided by
//! reconciliation. The real server has no idempotency key (we send an `Idempotency-Key`
//! header anyway; it is ignored), so: before a send, the event is committed as "in
//! flight"; it is marked sent only after the server's 2xx. An event found in flight (the
//! process died mid-send, or the last answer was lost to a timeout) is not simply re-sent:
//! the printer's state is read first (`GET /api/v1/printers/{id}/`). A start whose file is
//! the open print, or a finish whose printer has no open print, has arrived and is marked
//! sent. This relies on per-printer order (the previous finish was confirmed before this
//! start was sent) and on nothing else opening or closing prints on that printer
//! meanwhile. Without it, a re-sent `start_print` would make the server close the print it
//! just opened and open another (an empty extra print); a re-sent `finish_print` is
//! harmless (404 "not currently printing", treated as done).

pub mod api;
pub mod check;
pub mod config;
pub mod http;
pub mod login;
pub mod oauth;
pub mod outbox;
pub mod standin;
pub mod upload;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use config::ServerConfig;
pub use http::http_client;

use api::{ApiClient, ApiError};
use outbox::{EventKind, Outbox, OutboxError, backoff, now_ms};
use upload::{FrameScore, UploadGate};

/// The local printer key used when a host watches one printer.
pub const DEFAULT_PRINTER: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "no [server] section in the configuration: add one with at least `url` (see config/printvigil.toml)"
    )]
    NotConfigured,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
}

/// How a print ended, as the server knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishStatus {
    Success,
    Cancelled,
}

impl FinishStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishStatus::Success => "success",
            FinishStatus::Cancelled => "cancelled",
        }
    }
}

pub fn token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("server-token.json")
}

pub fn outbox_file(state_dir: &Path) -> PathBuf {
    state_dir.join("server-outbox.sqlite3")
}

/// Builds the token manager and API client for a config (also used by `login`, `check`).
pub fn client_for(cfg: &ServerConfig, state_dir: &Path) -> Result<ApiClient, MirrorError> {
    cfg.validate()?;
    let http = http_client(cfg)?;
    let tokens = Arc::new(oauth::TokenManager::new(
        cfg,
        http.clone(),
        Some(token_file(state_dir)),
    )?);
    Ok(ApiClient::new(
        http,
        cfg.base_url()?,
        tokens,
        cfg.token_header,
    ))
}

/// The host's name (the default printer name).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        "printvigil".into()
    } else {
        name
    }
}

/// Counters, for logs, `check` and the tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub events_sent: AtomicU64,
    pub events_dropped: AtomicU64,
    pub send_failures: AtomicU64,
    pub frames_offered: AtomicU64,
    pub frames_replaced: AtomicU64,
    pub frames_uploaded: AtomicU64,
    pub frames_discarded: AtomicU64,
    /// Events that could not be written to the outbox (full disk) and wait in memory.
    pub events_held: AtomicU64,
}

/// The most events kept in memory while the outbox cannot be written (a full disk). A
/// print makes two; this is hundreds of prints.
const MAX_HELD: usize = 1000;

/// An event that could not be written to the outbox yet.
#[derive(Debug, Clone, PartialEq)]
struct HeldEvent {
    printer: String,
    kind: EventKind,
    job: String,
    arg: String,
}

/// Events waiting in memory for the outbox to take them, in order, and why.
#[derive(Debug, Default)]
struct Held {
    events: std::collections::VecDeque<HeldEvent>,
    error: String,
}

/// A frame waiting for upload, and when it was offered.
struct HeldFrame {
    jpeg: Vec<u8>,
    offered_ms: i64,
}

/// The server refuses every call until the configuration is fixed (a token without a
/// user, refused credentials): the mirror stops sending and probes slowly.
#[derive(Debug, Clone)]
struct Blocked {
    message: String,
    short: String,
}

struct Inner {
    cfg: ServerConfig,
    api: ApiClient,
    outbox: Outbox,
    notify: tokio::sync::Notify,
    frames: std::sync::Mutex<HashMap<String, HeldFrame>>,
    gates: std::sync::Mutex<HashMap<String, UploadGate>>,
    ids: tokio::sync::Mutex<HashMap<String, i64>>,
    held: std::sync::Mutex<Held>,
    blocked: std::sync::Mutex<Option<Blocked>>,
    labels: std::sync::Mutex<HashMap<String, String>>,
    stats: Stats,
    printer_name: String,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server mirror. Create with [`Mirror::open`], then [`Mirror::spawn`] inside a Tokio
/// runtime.
pub struct Mirror {
    inner: Arc<Inner>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

impl Mirror {
    pub fn open(cfg: &ServerConfig, state_dir: &Path) -> Result<Self, MirrorError> {
        let api = client_for(cfg, state_dir)?;
        let outbox = Outbox::open(&outbox_file(state_dir))?;
        let pending = outbox.pending()?;
        if pending > 0 {
            // After a restart or reboot, try at once rather than at the old backoff time.
            outbox.retry_now()?;
            tracing::info!(
                "{pending} print event(s) from before the restart are waiting to be sent"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                printer_name: cfg
                    .printer_name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(hostname),
                cfg: cfg.clone(),
                api,
                outbox,
                notify: tokio::sync::Notify::new(),
                frames: Default::default(),
                gates: Default::default(),
                ids: Default::default(),
                held: Default::default(),
                blocked: Default::default(),
                labels: Default::default(),
                stats: Stats::default(),
            }),
            task: std::sync::Mutex::new(None),
        })
    }

    /// Starts the background sender (idempotent). It first probes the server once, so a
    /// configuration the server refuses is reported at start, not at the first print.
    pub fn spawn(&self) {
        let mut t = lock(&self.task);
        if t.is_none() {
            *t = Some(tokio::spawn(run(self.inner.clone())));
        }
    }

    /// Names a local printer key in log lines (the watch's printer name for the key
    /// [`DEFAULT_PRINTER`]).
    pub fn set_label(&self, key: &str, name: &str) {
        lock(&self.inner.labels).insert(key.to_string(), name.to_string());
    }

    pub fn api(&self) -> &ApiClient {
        &self.inner.api
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// JPEG quality for frames shrunk before upload (`server.jpeg_quality`).
    pub fn upload_quality(&self) -> u8 {
        self.inner.cfg.jpeg_quality
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// What is wrong with the mirror now, in a few words for the service's STATUS line
    /// (`None` when nothing is): events held in memory because the outbox cannot be
    /// written, or a server that refuses the configuration.
    pub fn health(&self) -> Option<String> {
        let mut out = Vec::new();
        {
            let held = lock(&self.inner.held);
            if !held.events.is_empty() {
                out.push(format!(
                    "server outbox stuck, {} event(s) held in memory: {}",
                    held.events.len(),
                    held.error
                ));
            }
        }
        if let Some(b) = lock(&self.inner.blocked).as_ref() {
            out.push(b.short.clone());
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    /// Queues a print start (durably: committed when this returns, or held in memory in
    /// order while the outbox cannot be written). A repeated call for the same `job` is a
    /// no-op. Returns whether the event is new.
    pub fn start_print(
        &self,
        printer: &str,
        job: &str,
        filename: &str,
    ) -> Result<bool, MirrorError> {
        self.queue(printer, EventKind::Start, job, filename)
    }

    /// Queues a print end (durably). Sent only after this printer's earlier events.
    pub fn finish_print(
        &self,
        printer: &str,
        job: &str,
        status: FinishStatus,
    ) -> Result<bool, MirrorError> {
        self.queue(printer, EventKind::Finish, job, status.as_str())
    }

    fn queue(
        &self,
        printer: &str,
        kind: EventKind,
        job: &str,
        arg: &str,
    ) -> Result<bool, MirrorError> {
        let inner = &self.inner;
        let ev = HeldEvent {
            printer: printer.into(),
            kind,
            job: job.into(),
            arg: arg.into(),
        };
        // Held events go first: a new one waits behind them to keep the order.
        let mut held = lock(&inner.held);
        if held.events.is_empty() {
            match inner.outbox.enqueue(printer, kind, job, arg) {
                Ok(id) => {
                    let new = id.is_some();
                    if new {
                        tracing::debug!(printer = %inner.label(printer), job, "queued {} for the server", kind.as_str());
                        inner.notify.notify_one();
                    }
                    return Ok(new);
                }
                Err(e) => {
                    tracing::error!(
                        "print events cannot be written to the outbox ({e}); they are kept in memory \
                         (up to {MAX_HELD}) and written, in order, as soon as there is room"
                    );
                    held.error = e.to_string();
                }
            }
        } else if held
            .events
            .iter()
            .any(|h| h.printer == ev.printer && h.kind == kind && h.job == ev.job)
        {
            return Ok(false);
        }
        if held.events.len() >= MAX_HELD {
            tracing::error!(
                printer = %inner.label(printer), job,
                "{}_print lost: {MAX_HELD} events already wait in memory for the outbox ({})",
                kind.as_str(),
                held.error
            );
            return Err(MirrorError::Outbox(OutboxError::Full(MAX_HELD)));
        }
        held.events.push_back(ev);
        inner.stats.events_held.fetch_add(1, Ordering::Relaxed);
        inner.notify.notify_one();
        Ok(true)
    }

    /// Offers a scored frame (a JPEG). Returns whether the upload policy took it; it is then
    /// sent when the printer's queue is empty, unless a newer frame replaces it first. A
    /// frame offered before a finish is sent before it (or dropped with a log line).
    /// Never blocks on the network.
    pub fn offer_frame(&self, printer: &str, jpeg: Vec<u8>, score: &FrameScore) -> bool {
        let s = &self.inner.stats;
        s.frames_offered.fetch_add(1, Ordering::Relaxed);
        let go = {
            let mut gates = lock(&self.inner.gates);
            gates
                .entry(printer.to_string())
                .or_insert_with(|| UploadGate::new(&self.inner.cfg))
                .decide(score, Instant::now())
        };
        if go {
            let old = lock(&self.inner.frames).insert(
                printer.to_string(),
                HeldFrame {
                    jpeg,
                    offered_ms: now_ms(),
                },
            );
            if old.is_some() {
                s.frames_replaced.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.notify.notify_one();
        }
        go
    }

    /// Waits until every queued event is sent or dropped (true), or the timeout passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let held = lock(&self.inner.held).events.len();
            match self.inner.outbox.pending() {
                Ok(0) if held == 0 => return true,
                Ok(_) => {}
                Err(e) => tracing::error!("{e}"),
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events not yet sent: in the outbox, and held in memory.
    pub fn pending(&self) -> Result<u64, MirrorError> {
        let held = lock(&self.inner.held).events.len() as u64;
        Ok(self.inner.outbox.pending()? + held)
    }

    /// The server's id of a local printer, registering it when needed.
    pub async fn server_id(&self, printer: &str) -> Result<i64, ApiError> {
        self.inner.server_id(printer).await
    }
}

/// Why a frame did not reach the server.
enum FrameError {
    /// The frame itself cannot be sent (not a usable JPEG): dropped.
    Unusable(String),
    /// The server has no open print for it: dropped.
    NotPrinting,
    Api(ApiError),
}

impl Inner {
    fn backoff(&self, attempts: u32) -> Duration {
        backoff(
            attempts,
            Duration::from_millis(self.cfg.backoff_initial_ms),
            Duration::from_secs_f64(self.cfg.backoff_cap_secs),
        )
    }

    /// How often a refusing server is probed again (the backoff cap: 5 min by default).
    fn probe_every(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.backoff_cap_secs.max(0.05))
    }

    /// The printer's name for log lines.
    fn label(&self, key: &str) -> String {
        lock(&self.labels)
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }

    fn is_blocked(&self) -> bool {
        lock(&self.blocked).is_some()
    }

    /// Records that the server refuses the configuration: one ERROR per change of reason.
    fn block(&self, e: &ApiError) {
        let message = e.to_string();
        let mut b = lock(&self.blocked);
        if b.as_ref().is_some_and(|b| b.message == message) {
            return;
        }
        let short = match e {
            ApiError::NoPermission => {
                "server refuses the token: it has no user (run `printvigil login`)".to_string()
            }
            _ => "server refuses the credentials (see the log)".to_string(),
        };
        tracing::error!(
            "{message}. Print events are kept and sent once this is fixed (the server is asked again every {:.0} s)",
            self.probe_every().as_secs_f64()
        );
        *b = Some(Blocked { message, short });
    }

    fn unblock(&self) {
        if lock(&self.blocked).take().is_some() {
            tracing::info!("the server accepts the credentials now; sending the queued events");
            if let Err(e) = self.outbox.retry_now() {
                tracing::error!("{e}");
            }
        }
    }

    /// Asks the server once whether it accepts the configuration (a read-only call).
    /// Returns whether it does.
    async fn probe(&self, first: bool) -> bool {
        match self.api.list_printers().await {
            Ok(_) => {
                self.unblock();
                true
            }
            Err(e) if e.needs_config() => {
                self.block(&e);
                false
            }
            Err(e) => {
                if first {
                    tracing::warn!("the server could not be checked at start: {e}");
                }
                // Says nothing about the configuration: the state stays as it was.
                !self.is_blocked()
            }
        }
    }

    /// Writes the events held in memory to the outbox, in order, while it takes them.
    fn write_held(&self) {
        let mut held = lock(&self.held);
        if held.events.is_empty() {
            return;
        }
        let mut written = 0;
        while let Some(ev) = held.events.front() {
            match self.outbox.enqueue(&ev.printer, ev.kind, &ev.job, &ev.arg) {
                Ok(_) => {
                    held.events.pop_front();
                    written += 1;
                }
                Err(e) => {
                    held.error = e.to_string();
                    break;
                }
            }
        }
        if held.events.is_empty() {
            tracing::info!("the outbox can be written again: {written} held event(s) are queued for the server");
            held.error.clear();
        }
    }

    async fn server_id(&self, key: &str) -> Result<i64, ApiError> {
        let mut ids = self.ids.lock().await;
        if let Some(id) = ids.get(key) {
            return Ok(*id);
        }
        if key == DEFAULT_PRINTER
            && let Some(id) = self.cfg.printer_id
        {
            ids.insert(key.to_string(), id);
            return Ok(id);
        }
        let local = |e: OutboxError| ApiError::Local(e.to_string());
        let reg = self.outbox.registration(key).map_err(local)?;
        if let Some((_, Some(id))) = reg {
            ids.insert(key.to_string(), id);
            return Ok(id);
        }
        let name = match reg {
            Some((name, None)) => name,
            _ if key == DEFAULT_PRINTER => self.printer_name.clone(),
            _ => format!("{} {key}", self.printer_name),
        };
        // Intent first: a crash after the create call finds the printer by name on retry.
        self.outbox.record_intent(key, &name).map_err(local)?;
        let existing = self
            .api
            .list_printers()
            .await?
            .into_iter()
            .filter(|p| p.name == name)
            .max_by_key(|p| p.id);
        let printer = match existing {
            Some(p) => {
                tracing::info!(
                    "printer {name:?} is already on the server (id {}); using it",
                    p.id
                );
                p
            }
            None => {
                let p = self.api.create_printer(&name).await?;
                tracing::info!("registered printer {name:?} on the server (id {})", p.id);
                p
            }
        };
        self.outbox
            .set_server_id(key, &name, printer.id)
            .map_err(local)?;
        ids.insert(key.to_string(), printer.id);
        Ok(printer.id)
    }

    /// The server does not know the printer (deleted, or another account's token): an
    /// auto-registered printer is registered again on the next attempt.
    async fn forget(&self, key: &str) {
        tracing::warn!(
            printer = %self.label(key),
            "the server no longer knows this printer; it will be registered again"
        );
        self.ids.lock().await.remove(key);
        if !(key == DEFAULT_PRINTER && self.cfg.printer_id.is_some())
            && let Err(e) = self.outbox.forget_server_id(key)
        {
            tracing::error!("{e}");
        }
    }

    async fn deliver(&self, ev: outbox::Event) {
        let key = format!("{}/{}/{}", ev.printer, ev.kind.as_str(), ev.job);
        let result = match self.server_id(&ev.printer).await {
            // A registration problem is never the event's fault: it waits, whatever the error.
            Err(e) if e.is_definite_rejection() => Err(ApiError::Local(format!(
                "registering the printer failed: {e}"
            ))),
            Err(e) => Err(e),
            Ok(id) => match self.reconcile(id, &ev).await {
                Err(e) => Err(e),
                Ok(true) => {
                    Ok("had already arrived (found on the server after an interrupted send)")
                }
                Ok(false) => match ev.kind {
                    EventKind::Start => self
                        .api
                        .start_print(id, &ev.arg, Some(&key))
                        .await
                        .map(|_| "sent"),
                    EventKind::Finish => {
                        self.api
                            .finish_print(id, &ev.arg, Some(&key))
                            .await
                            .map(|open| {
                                if open {
                                    "sent"
                                } else {
                                    "done (the server had already closed the print)"
                                }
                            })
                    }
                },
            },
        };
        let kind = ev.kind.as_str();
        let stats = &self.stats;
        let printer = self.label(&ev.printer);
        let r = match result {
            Ok(what) => {
                stats.events_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(printer = %printer, job = %ev.job, "{kind}_print {what}");
                self.outbox.mark_sent(ev.id)
            }
            Err(e) if e.is_definite_rejection() => {
                stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(printer = %printer, job = %ev.job, "dropped {kind}_print: the server refused it ({e})");
                self.outbox.mark_dropped(ev.id, &e.to_string())
            }
            Err(e) => {
                if let ApiError::PrinterNotFound(_) = e {
                    self.forget(&ev.printer).await;
                }
                return self.failed(&ev, e);
            }
        };
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    }

    /// An event could not be sent this time: it waits (backoff), with the reason kept.
    fn failed(&self, ev: &outbox::Event, e: ApiError) {
        self.stats.send_failures.fetch_add(1, Ordering::Relaxed);
        let attempts = ev.attempts.saturating_add(1);
        let wait = self.backoff(attempts);
        if e.needs_config() {
            // Said once, by `block`; the probe decides when to try again.
            self.block(&e);
        } else if attempts == 1 || attempts.is_multiple_of(10) || !e.is_transient() {
            let kind = ev.kind.as_str();
            tracing::warn!(printer = %self.label(&ev.printer), job = %ev.job, attempts, "{kind}_print not sent, retrying in {:.1}s: {e}", wait.as_secs_f64());
        }
        if let Err(e) = self.outbox.mark_retry(
            ev.id,
            attempts,
            now_ms() + wait.as_millis() as i64,
            &e.to_string(),
        ) {
            tracing::error!("{e}");
        }
    }

    /// For an event whose last send was interrupted: has it already arrived? Marks the event
    /// in flight otherwise (committed before the send).
    async fn reconcile(&self, id: i64, ev: &outbox::Event) -> Result<bool, ApiError> {
        if ev.in_flight {
            let p = self.api.get_printer(id).await?;
            let arrived = match ev.kind {
                EventKind::Start => p.current_filename.as_deref() == Some(ev.arg.as_str()),
                EventKind::Finish => !p.printing,
            };
            if arrived {
                return Ok(true);
            }
        } else {
            self.outbox
                .mark_in_flight(ev.id)
                .map_err(|e| ApiError::Local(e.to_string()))?;
        }
        Ok(false)
    }

    /// Shrinks (when needed) and posts one frame.
    async fn post_frame(&self, printer: &str, jpeg: &[u8]) -> Result<(), FrameError> {
        let quality = self.cfg.jpeg_quality;
        let raw = jpeg.to_vec();
        let shrunk =
            tokio::task::spawn_blocking(move || upload::shrink_to_fit(&raw, quality)).await;
        let body = match shrunk {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(FrameError::Unusable(e.to_string())),
            Err(e) => return Err(FrameError::Unusable(format!("frame resize task failed: {e}"))),
        };
        let id = self.server_id(printer).await.map_err(FrameError::Api)?;
        match self.api.predict(id, body).await {
            Ok(pred) => {
                self.stats.frames_uploaded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(printer = %self.label(printer), p = pred.p, "frame uploaded");
                Ok(())
            }
            Err(ApiError::NotPrinting) => Err(FrameError::NotPrinting),
            Err(e) => Err(FrameError::Api(e)),
        }
    }

    /// Uploads one frame; on a transient failure the frame goes back to its slot unless a
    /// newer one arrived. Returns the retry delay when there was a failure.
    async fn upload(&self, printer: &str, frame: HeldFrame, attempts: u32) -> Option<Duration> {
        match self.post_frame(printer, &frame.jpeg).await {
            Ok(()) => None,
            Err(FrameError::Unusable(e)) => {
                tracing::warn!(printer = %self.label(printer), "frame not uploaded: {e}");
                self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(FrameError::NotPrinting) => {
                self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(printer = %self.label(printer), "frame not scored: the server has no open print");
                None
            }
            Err(FrameError::Api(e)) => Some(self.frame_failed(printer, frame, attempts, e)),
        }
    }

    fn frame_failed(&self, printer: &str, frame: HeldFrame, attempts: u32, e: ApiError) -> Duration {
        if e.needs_config() {
            self.block(&e);
            self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
        } else if e.is_transient() {
            lock(&self.frames).entry(printer.to_string()).or_insert(frame);
        } else {
            self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
        }
        if attempts == 0 && !e.needs_config() {
            tracing::warn!(printer = %self.label(printer), "frame upload failed: {e}");
        }
        self.backoff(attempts.saturating_add(1))
    }

    /// Before a finish is sent: the frame of its print still waiting goes first. Returns
    /// the error that makes the finish wait too (the server cannot be reached, or the
    /// answer is not the API's: the finish would fail the same way).
    async fn frame_before_finish(&self, ev: &outbox::Event) -> Result<(), ApiError> {
        let frame = {
            let mut frames = lock(&self.frames);
            match frames.get(&ev.printer) {
                Some(f) if f.offered_ms <= ev.created_ms => frames.remove(&ev.printer),
                _ => None,
            }
        };
        let Some(frame) = frame else { return Ok(()) };
        let printer = self.label(&ev.printer);
        let why = match self.post_frame(&ev.printer, &frame.jpeg).await {
            Ok(()) => return Ok(()),
            Err(FrameError::NotPrinting) => "the server has no open print".to_string(),
            Err(FrameError::Unusable(e)) => e,
            Err(FrameError::Api(e))
                if e.needs_config()
                    || matches!(e, ApiError::Network(_) | ApiError::NotTheApi { .. }) =>
            {
                // Put back (unless a newer frame came): it goes when the finish can.
                lock(&self.frames).entry(ev.printer.clone()).or_insert(frame);
                return Err(e);
            }
            Err(FrameError::Api(e)) => e.to_string(),
        };
        self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(printer = %printer, job = %ev.job, "the last frame of the print was dropped ({why}); sending its finish_print");
        Ok(())
    }
}

async fn run(inner: Arc<Inner>) {
    let mut frame_retry: HashMap<String, (Instant, u32)> = HashMap::new();
    inner.probe(true).await;
    let mut last_probe = Instant::now();
    loop {
        let notified = inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        inner.write_held();
        let mut wake_ms: i64 = 60_000;
        let held_printers: HashSet<String> = {
            let held = lock(&inner.held);
            if !held.events.is_empty() {
                wake_ms = 1000;
            }
            held.events.iter().map(|e| e.printer.clone()).collect()
        };
        if inner.is_blocked() {
            let every = inner.probe_every();
            if last_probe.elapsed() >= every {
                inner.probe(false).await;
                last_probe = Instant::now();
            }
            let reason = lock(&inner.blocked).as_ref().map(|b| b.message.clone());
            if let Some(reason) = reason {
                // Said where `check` can see it.
                if let Err(e) = inner.outbox.note_waiting(&reason) {
                    tracing::debug!("{e}");
                }
                // Frames cannot be scored meanwhile; events wait in the outbox.
                let n = lock(&inner.frames).drain().count();
                inner.stats.frames_discarded.fetch_add(n as u64, Ordering::Relaxed);
                let left = every.saturating_sub(last_probe.elapsed());
                wake_ms = wake_ms.min(left.as_millis() as i64 + 1);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(wake_ms.max(1) as u64)) => {}
                }
                continue;
            }
        }
        let heads = match inner.outbox.heads() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let now = now_ms();
        let mut worked = false;
        let mut busy: HashSet<String> = heads.iter().map(|e| e.printer.clone()).collect();
        busy.extend(held_printers);
        for ev in heads {
            if ev.next_attempt_ms > now {
                wake_ms = wake_ms.min(ev.next_attempt_ms - now);
                continue;
            }
            worked = true;
            if ev.kind == EventKind::Finish
                && let Err(e) = inner.frame_before_finish(&ev).await
            {
                inner.failed(&ev, e);
                continue;
            }
            inner.deliver(ev).await;
        }
        if inner.is_blocked() {
            continue;
        }
        let ready: Vec<(String, HeldFrame, u32)> = {
            let mut frames = lock(&inner.frames);
            let t = Instant::now();
            let keys: Vec<String> = frames
                .keys()
                .filter(|k| !busy.contains(*k))
                .cloned()
                .collect();
            let mut out = Vec::new();
            for k in keys {
                match frame_retry.get(&k) {
                    Some((at, _)) if *at > t => {
                        wake_ms = wake_ms.min(at.duration_since(t).as_millis() as i64 + 1)
                    }
                    _ => {
                        let attempts = frame_retry.get(&k).map(|r| r.1).unwrap_or(0);
                        if let Some(f) = frames.remove(&k) {
                            out.push((k, f, attempts));
                        }
                    }
                }
            }
            out
        };
        for (printer, frame, attempts) in ready {
            worked = true;
            match inner.upload(&printer, frame, attempts).await {
                None => {
                    frame_retry.remove(&printer);
                }
                Some(wait) => {
                    frame_retry
                        .insert(printer, (Instant::now() + wait, attempts.saturating_add(1)));
                }
            }
        }
        if worked {
            continue;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_millis(wake_ms.max(1) as u64)) => {}
        }
    }
}
