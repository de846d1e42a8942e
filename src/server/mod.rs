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
}

struct Inner {
    cfg: ServerConfig,
    api: ApiClient,
    outbox: Outbox,
    notify: tokio::sync::Notify,
    frames: std::sync::Mutex<HashMap<String, Vec<u8>>>,
    gates: std::sync::Mutex<HashMap<String, UploadGate>>,
    ids: tokio::sync::Mutex<HashMap<String, i64>>,
    stats: Stats,
    printer_name: String,
}

/// The server mirror. Create with [`Mirror::open`], then [`Mirror::spawn`] inside a Tokio
/// runtime.
pub struct Mirror {
    inner: Arc<Inner>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
                stats: Stats::default(),
            }),
            task: std::sync::Mutex::new(None),
        })
    }

    /// Starts the background sender (idempotent).
    pub fn spawn(&self) {
        let mut t = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            *t = Some(tokio::spawn(run(self.inner.clone())));
        }
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

    /// Queues a print start (durably: committed when this returns). A repeated call for
    /// the same `job` is a no-op.
    /// Returns whether the event is new.
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
        let new = self
            .inner
            .outbox
            .enqueue(printer, kind, job, arg)?
            .is_some();
        if new {
            tracing::debug!(printer, job, "queued {} for the server", kind.as_str());
            self.inner.notify.notify_one();
        }
        Ok(new)
    }

    /// Offers a scored frame (a JPEG). Returns whether the upload policy took it; it is then
    /// sent when the printer's queue is empty, unless a newer frame replaces it first.
    /// Never blocks on the network.
    pub fn offer_frame(&self, printer: &str, jpeg: Vec<u8>, score: &FrameScore) -> bool {
        let s = &self.inner.stats;
        s.frames_offered.fetch_add(1, Ordering::Relaxed);
        let go = {
            let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
            gates
                .entry(printer.to_string())
                .or_insert_with(|| UploadGate::new(&self.inner.cfg))
                .decide(score, Instant::now())
        };
        if go {
            let old = self
                .inner
                .frames
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(printer.to_string(), jpeg);
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
            match self.inner.outbox.pending() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => tracing::error!("{e}"),
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's id of a local printer, registering it when needed.
    pub async fn server_id(&self, printer: &str) -> Result<i64, ApiError> {
        self.inner.server_id(printer).await
    }
}

impl Inner {
    fn backoff(&self, attempts: u32) -> Duration {
        backoff(
            attempts,
            Duration::from_millis(self.cfg.backoff_initial_ms),
            Duration::from_secs_f64(self.cfg.backoff_cap_secs),
        )
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
            printer = key,
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
        let r = match result {
            Ok(what) => {
                stats.events_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(printer = %ev.printer, job = %ev.job, "{kind}_print {what}");
                self.outbox.mark_sent(ev.id)
            }
            Err(e) if e.is_definite_rejection() => {
                stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(printer = %ev.printer, job = %ev.job, "dropped {kind}_print: {e}");
                self.outbox.mark_dropped(ev.id, &e.to_string())
            }
            Err(e) => {
                stats.send_failures.fetch_add(1, Ordering::Relaxed);
                if let ApiError::PrinterNotFound(_) = e {
                    self.forget(&ev.printer).await;
                }
                let attempts = ev.attempts.saturating_add(1);
                let wait = self.backoff(attempts);
                if attempts == 1 || attempts.is_multiple_of(10) || !e.is_transient() {
                    tracing::warn!(printer = %ev.printer, job = %ev.job, attempts, "{kind}_print not sent, retrying in {:.1}s: {e}", wait.as_secs_f64());
                }
                self.outbox.mark_retry(
                    ev.id,
                    attempts,
                    now_ms() + wait.as_millis() as i64,
                    &e.to_string(),
                )
            }
        };
        if let Err(e) = r {
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

    /// Uploads one frame; on a transient failure the frame goes back to its slot unless a
    /// newer one arrived. Returns the retry delay when there was a failure.
    async fn upload(&self, printer: &str, jpeg: Vec<u8>, attempts: u32) -> Option<Duration> {
        let quality = self.cfg.jpeg_quality;
        let raw = jpeg.clone();
        let shrunk =
            tokio::task::spawn_blocking(move || upload::shrink_to_fit(&raw, quality)).await;
        let body = match shrunk {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(printer, "frame not uploaded: {e}");
                self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                tracing::error!("frame resize task failed: {e}");
                return None;
            }
        };
        let id = match self.server_id(printer).await {
            Ok(id) => id,
            Err(e) => return Some(self.frame_failed(printer, jpeg, attempts, e)),
        };
        match self.api.predict(id, body).await {
            Ok(pred) => {
                self.stats.frames_uploaded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(printer, p = pred.p, "frame uploaded");
                None
            }
            Err(ApiError::NotPrinting) => {
                self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(printer, "frame not scored: the server has no open print");
                None
            }
            Err(e) => Some(self.frame_failed(printer, jpeg, attempts, e)),
        }
    }

    fn frame_failed(&self, printer: &str, jpeg: Vec<u8>, attempts: u32, e: ApiError) -> Duration {
        if e.is_transient() {
            let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
            frames.entry(printer.to_string()).or_insert(jpeg);
        } else {
            self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
        }
        if attempts <= 1 {
            tracing::warn!(printer, "frame upload failed: {e}");
        }
        self.backoff(attempts.saturating_add(1))
    }
}

async fn run(inner: Arc<Inner>) {
    let mut frame_retry: HashMap<String, (Instant, u32)> = HashMap::new();
    loop {
        let notified = inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let heads = match inner.outbox.heads() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let now = now_ms();
        let mut wake_ms: i64 = 60_000;
        let mut worked = false;
        let busy: HashSet<String> = heads.iter().map(|e| e.printer.clone()).collect();
        for ev in heads {
            if ev.next_attempt_ms > now {
                wake_ms = wake_ms.min(ev.next_attempt_ms - now);
                continue;
            }
            worked = true;
            inner.deliver(ev).await;
        }
        let ready: Vec<(String, Vec<u8>, u32)> = {
            let mut frames = inner.frames.lock().unwrap_or_else(|p| p.into_inner());
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
        for (printer, jpeg, attempts) in ready {
            worked = true;
            match inner.upload(&printer, jpeg, attempts).await {
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
