//! The scheduler proper: the [`Queue`] behind a lock, and one worker thread per inference
//! session taking frames from it.
//!
//! A watch registers once ([`Scheduler::client`]) and then submits frames
//! ([`Client::submit`]), each answered by a [`Ticket`], a future that resolves to the
//! frame's score and its timings, or to why it was not scored: a newer frame of the same
//! printer replaced it ([`Unscored::Superseded`]), or the scheduler stopped. Dropping a
//! ticket withdraws its frame if it is still waiting. Workers are plain threads (scoring
//! is CPU-bound and blocking); each owns its scoring function (a detector session), so
//! sessions never share state.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::load::{Load, PrinterLoad, Tracker};
use super::queue::{Queue, SlotId};

/// How a watch marks a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Normal,
    /// The printer has just warned: score this frame before every normal one.
    Urgent,
}

/// A scored frame.
#[derive(Debug)]
pub struct Scored<O> {
    pub output: O,
    /// From the submission to the start of scoring (the frame's age at inference, less
    /// whatever happened before it was submitted).
    pub waited: Duration,
    /// The scoring itself.
    pub took: Duration,
    /// When scoring ended.
    pub done: Instant,
    /// The session (worker) that scored it.
    pub worker: usize,
}

/// Why a frame was not scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unscored {
    #[error("a newer frame of the same printer replaced it")]
    Superseded,
    #[error("the scheduler stopped")]
    Stopped,
    #[error("scoring panicked: {0}")]
    Panicked(String),
}

/// What a submitted frame carries to its worker.
struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<Scored<O>, Unscored>>,
    started: Arc<AtomicBool>,
}

struct State<I, O> {
    queue: Queue<Job<I, O>>,
    tracker: Tracker,
    stopped: bool,
}

struct Inner<I, O> {
    state: Mutex<State<I, O>>,
    ready: Condvar,
    workers: usize,
}

impl<I, O> Inner<I, O> {
    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A scoring function, one per worker (e.g. one detector session each).
pub type ScoreFn<I, O> = Box<dyn FnMut(&I) -> O + Send>;

/// See the module documentation.
pub struct Scheduler<I, O> {
    inner: Arc<Inner<I, O>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<I: Send + 'static, O: Send + 'static> Scheduler<I, O> {
    /// Starts one worker per scoring function. `cadence` is the interval at which each
    /// printer wants a frame scored: the load (and the stretch) is computed against it.
    pub fn new(scorers: Vec<ScoreFn<I, O>>, cadence: Duration) -> Arc<Self> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State { queue: Queue::new(), tracker: Tracker::new(cadence), stopped: false }),
            ready: Condvar::new(),
            workers: scorers.len().max(1),
        });
        let threads = scorers
            .into_iter()
            .enumerate()
            .map(|(n, scorer)| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("detector-{n}"))
                    .spawn(move || work(inner, n, scorer))
                    .expect("starting a detector thread")
            })
            .collect();
        Arc::new(Scheduler { inner, threads: Mutex::new(threads) })
    }

    /// A printer's place at the detector. Dropping the client takes its waiting frame out.
    pub fn client(self: &Arc<Self>, name: &str) -> Client<I, O> {
        let mut st = self.inner.lock();
        let id = st.queue.join();
        st.tracker.join(id, name);
        Client { inner: self.inner.clone(), id }
    }

    /// The load and each printer's figures, now.
    pub fn load(&self) -> Load {
        let st = self.inner.lock();
        st.tracker.load(Instant::now(), self.inner.workers, st.queue.len(), st.queue.oldest())
    }

    /// Each printer's figures.
    pub fn printers(&self) -> Vec<PrinterLoad> {
        self.inner.lock().tracker.printers()
    }

    /// Sessions (workers).
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Stops taking frames: the waiting ones resolve to [`Unscored::Stopped`], the frames
    /// being scored are finished and answered, then the workers end.
    pub fn stop(&self) {
        let drained = {
            let mut st = self.inner.lock();
            st.stopped = true;
            st.queue.drain()
        };
        for w in drained {
            let _ = w.item.reply.send(Err(Unscored::Stopped));
        }
        self.inner.ready.notify_all();
    }

    /// [`Scheduler::stop`], then waits up to `timeout` for the workers to end (a frame
    /// being scored is finished first). False when one was still busy.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.stop();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        tokio::time::timeout(timeout, joined).await.is_ok()
    }
}

impl<I, O> Drop for Scheduler<I, O> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.stopped = true;
        drop(st.queue.drain());
        drop(st);
        self.inner.ready.notify_all();
    }
}

fn work<I, O>(inner: Arc<Inner<I, O>>, worker: usize, mut score: ScoreFn<I, O>) {
    loop {
        let (id, waiting) = {
            let mut st = inner.lock();
            loop {
                if st.stopped {
                    return;
                }
                if let Some(next) = st.queue.take() {
                    break next;
                }
                st = inner.ready.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let job = waiting.item;
        if job.reply.is_closed() {
            // Nobody waits for this frame any more.
            continue;
        }
        job.started.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let waited = start.saturating_duration_since(waiting.submitted);
        inner.lock().tracker.started(id, start, waited);
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| score(&job.input)));
        let done = Instant::now();
        let took = done - start;
        inner.lock().tracker.done(id, done, took);
        let answer = match out {
            Ok(output) => Ok(Scored { output, waited, took, done, worker }),
            Err(p) => {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Unscored::Panicked(why))
            }
        };
        let _ = job.reply.send(answer);
    }
}

/// A printer's place at the detector; see [`Scheduler::client`].
pub struct Client<I, O> {
    inner: Arc<Inner<I, O>>,
    id: SlotId,
}

impl<I, O> Client<I, O> {
    /// Submits a frame; a frame of this printer still waiting is replaced (its ticket
    /// resolves to [`Unscored::Superseded`]).
    pub fn submit(&self, input: I, priority: Priority) -> Ticket<I, O> {
        let (reply, rx) = oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let job = Job { input, reply, started: started.clone() };
        let now = Instant::now();
        let mut st = self.inner.lock();
        if st.stopped {
            drop(st);
            let _ = job.reply.send(Err(Unscored::Stopped));
            return Ticket { rx, inner: self.inner.clone(), id: self.id, ticket: 0, started };
        }
        let urgent = priority == Priority::Urgent;
        let (ticket, replaced) = match st.queue.submit(self.id, job, urgent, now) {
            Ok(r) => r,
            Err(job) => {
                drop(st);
                let _ = job.reply.send(Err(Unscored::Stopped));
                return Ticket { rx, inner: self.inner.clone(), id: self.id, ticket: 0, started };
            }
        };
        st.tracker.submitted(self.id, now, replaced.is_some(), urgent);
        drop(st);
        self.inner.ready.notify_one();
        if let Some(old) = replaced {
            let _ = old.item.reply.send(Err(Unscored::Superseded));
        }
        Ticket { rx, inner: self.inner.clone(), id: self.id, ticket, started }
    }
}

impl<I, O> Drop for Client<I, O> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let left = st.queue.leave(self.id);
        st.tracker.leave(self.id);
        drop(st);
        drop(left);
    }
}

/// The answer to one submitted frame: a future of its score. Dropping it withdraws the
/// frame if it is still waiting.
pub struct Ticket<I, O> {
    rx: oneshot::Receiver<Result<Scored<O>, Unscored>>,
    inner: Arc<Inner<I, O>>,
    id: SlotId,
    ticket: u64,
    started: Arc<AtomicBool>,
}

impl<I, O> Ticket<I, O> {
    /// Whether a worker has begun scoring the frame (its answer is coming soon).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }
}

impl<I, O> Future for Ticket<I, O> {
    type Output = Result<Scored<O>, Unscored>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(Unscored::Stopped)))
    }
}

impl<I, O> Drop for Ticket<I, O> {
    fn drop(&mut self) {
        if self.ticket == 0 || self.started() {
            return;
        }
        let mut st = self.inner.lock();
        let gone = st.queue.withdraw(self.id, self.ticket);
        if gone.is_some() {
            st.tracker.withdrawn(self.id);
        }
        drop(st);
        drop(gone);
    }
}
