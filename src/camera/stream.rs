//! The machinery shared by cameras that read a continuous stream (MJPEG over HTTP, a Bambu
//! printer's TLS feed): a grab must return the **newest** frame, not one that waited in a
//! buffer, so the stream is read all the time by a background task and a grab only looks
//! at what that task last saw.
//!
//! Two sides meet in a tokio [`watch`] channel, which holds one value and wakes whoever
//! waits on it when the value changes:
//!
//! - [`Slot`] is the task's side. The task publishes each frame ([`Slot::frame`]) and each
//!   error ([`Slot::error`]); both are counted, so a reader can tell a frame or error it
//!   has already returned from a new one. [`Slot::keep_open`] runs the camera's own
//!   connection function over and over, with a growing pause after failures: a connection
//!   that gave frames and then ended is reopened quietly, one that gave none publishes why.
//! - [`Reader`] is the camera's side. It starts the task on the first grab (a camera
//!   built and never read opens no connection), aborts it when dropped, and
//!   [`Reader::grab`] returns the newest frame not returned before, else the newest error
//!   not returned before, else waits for either up to the timeout.
//!
//! Only the protocol differs between such cameras: each keeps its own connection code and
//! hands it to [`Slot::keep_open`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{CameraError, Frame};
use crate::secret::SecretUrl;

#[derive(Default)]
struct Shared {
    /// Counts frames; a grab returns a frame newer than the last it returned.
    seq: u64,
    frame: Option<Arc<Frame>>,
    /// Counts errors, and the newest one (cleared by the next frame).
    error_seq: u64,
    error: Option<CameraError>,
    /// Bytes the open connection sent while it gave no frame yet: a grab that times out
    /// while they flow reports a stream that is not what the camera expects, not a silent
    /// camera.
    unframed: usize,
}

/// Reconnect pauses: from `BACKOFF_MIN` (or half the timeout, if shorter) doubling up to
/// `BACKOFF_MAX`; back to the start once frames flow again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the background task publishes what it reads.
pub(super) struct Slot {
    tx: watch::Sender<Shared>,
    /// Whether the current connection gave a frame yet.
    got_frames: AtomicBool,
}

impl Slot {
    /// Publishes a frame (and clears the newest error).
    pub(super) fn frame(&self, jpeg: Vec<u8>) {
        self.got_frames.store(true, Ordering::Relaxed);
        let frame = Arc::new(Frame { jpeg, taken: SystemTime::now() });
        self.tx.send_modify(|s| {
            s.seq += 1;
            s.frame = Some(frame);
            s.error = None;
        });
    }

    /// Publishes an error; a grab that finds no new frame returns it.
    pub(super) fn error(&self, e: CameraError) {
        self.tx.send_modify(|s| {
            s.error_seq += 1;
            s.error = Some(e);
        });
    }

    /// Records the bytes the open connection sent without a frame (0: none, or frames
    /// came). A grab that times out while this is not 0 returns [`CameraError::NoFrames`].
    /// Wakes no grab.
    pub(super) fn unframed(&self, bytes: usize) {
        self.tx.send_if_modified(|s| {
            s.unframed = bytes;
            false
        });
    }

    /// Whether the current connection gave a frame yet.
    pub(super) fn got_frames(&self) -> bool {
        self.got_frames.load(Ordering::Relaxed)
    }

    /// Runs `connection` (one connection; it returns why it ended) again and again until
    /// the camera is dropped. A connection that gave frames is reopened quietly (unless it
    /// ended with [`CameraError::NoFrames`]); one that gave none publishes its error. The
    /// pause between connections grows after failures.
    pub(super) async fn keep_open<F>(&self, url: &SecretUrl, timeout: Duration, mut connection: impl FnMut() -> F)
    where
        F: Future<Output = CameraError>,
    {
        let first = BACKOFF_MIN.min(timeout / 2).max(Duration::from_millis(50));
        let mut backoff = first;
        loop {
            self.got_frames.store(false, Ordering::Relaxed);
            let e = connection().await;
            if self.tx.is_closed() {
                return;
            }
            self.unframed(0);
            if self.got_frames() && !matches!(e, CameraError::NoFrames { .. }) {
                // It worked until now (or it serves one picture per connection): reopen
                // quietly; a grab waits for the next frame rather than seeing an error.
                tracing::debug!(url = %url, error = %e, "camera stream interrupted; reopening");
                backoff = first;
            } else {
                tracing::debug!(url = %url, error = %e, "camera stream failed");
                self.error(e);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The camera's side: starts the task on the first grab, stops it when dropped.
pub(super) struct Reader {
    url: SecretUrl,
    timeout: Duration,
    rx: Option<watch::Receiver<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
    last_seq: u64,
    last_error_seq: u64,
}

impl Reader {
    /// `url` names the camera in errors; `timeout` is how long a grab waits.
    pub(super) fn new(url: SecretUrl, timeout: Duration) -> Self {
        Self { url, timeout, rx: None, task: None, last_seq: 0, last_error_seq: 0 }
    }

    fn start<F>(&mut self, task: impl FnOnce(Slot) -> F) -> watch::Receiver<Shared>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(rx) = &self.rx {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(Shared::default());
        self.task = Some(tokio::spawn(task(Slot { tx, got_frames: AtomicBool::new(false) })));
        self.rx = Some(rx.clone());
        rx
    }

    /// The newest frame not returned before; waits up to the timeout for one. An error the
    /// stream met since the last grab is returned at once when no new frame came. `task`
    /// makes the background task that reads the stream (called on the first grab only).
    pub(super) async fn grab<F>(&mut self, task: impl FnOnce(Slot) -> F) -> Result<Frame, CameraError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut rx = self.start(task);
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            {
                let s = rx.borrow_and_update();
                if s.seq > self.last_seq
                    && let Some(f) = &s.frame
                {
                    self.last_seq = s.seq;
                    self.last_error_seq = s.error_seq;
                    return Ok(Frame::clone(f));
                }
                if s.error_seq > self.last_error_seq
                    && let Some(e) = &s.error
                {
                    self.last_error_seq = s.error_seq;
                    return Err(e.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CameraError::StreamEnded { url: self.url.clone() }),
                Err(_) => {
                    // Bytes came and no frame in them: that is no silent camera.
                    let bytes = rx.borrow().unframed;
                    if bytes > 0 {
                        return Err(CameraError::NoFrames { url: self.url.clone(), bytes });
                    }
                    return Err(CameraError::Timeout { url: self.url.clone(), secs: self.timeout.as_secs_f64() });
                }
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
