//! The link's thread: open the port, greet the firmware, follow the print, reconnect.
//!
//! The serial port is blocking I/O, so each Marlin printer gets one plain thread (no Tokio
//! worker is ever blocked). The thread loops: [`open`](super::port::open) the port
//! (exclusively), run a session until it ends, wait (a backoff of 1 s doubling to 30 s that
//! restarts once a session succeeded), again. Every read waits at most
//! [`READ_TIMEOUT`](super::port::READ_TIMEOUT), so a quiet line costs ten wake-ups a
//! second and the thread notices a stop request or an action request within that time.
//!
//! A session:
//! 1. Waits for the boot banner (`start`): opening the port resets most boards. Without a
//!    banner it waits for [`BOOT_QUIET`] of silence first, because a bootloader that gets
//!    bytes while it waits may stay in the bootloader; a board that was not reset and keeps
//!    sending reports (lines only Marlin prints) is greeted at once.
//! 2. `M110 N0` until one is answered (within `boot_timeout_secs`), then `M115` for the
//!    firmware name and `Cap:` lines.
//! 3. Auto-reports where the firmware has them (`M155 S<n>`, `M27 S<n>`), else it polls
//!    `M27` every `status_interval_secs` and `M105` every third time. With auto-reports, a
//!    line silent for three intervals gets an `M105` keep-alive, so a mute firmware is
//!    noticed too.
//! 4. Lines go to the [`Tracker`]; its events are published, the status is updated.
//!    Actions (pause, resume, cancel) come from the async side through a channel and are
//!    sent between polls, one command in flight at a time ([`Sender`]).
//!
//! It ends when the port fails (unplugged: `Offline`, reported once per outage), when the
//! firmware stops answering (two commands in a row without `ok`), or when `Resend:` asks
//! for a line that cannot be resent. A `start` banner mid-session (the board reset) redoes
//! the handshake on the open port. A halted firmware (`kill() called`) gets no commands
//! until it boots again.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serialport::TTYPort;
use tracing::{debug, info, warn};

use super::line::{Line, LineBuffer};
use super::protocol::Sender;
use super::tracker::Tracker;
use super::{Act, Request, Shared, port};
use crate::printer::PrinterEvent;

/// Silence that counts as "booted" when no `start` banner comes.
pub const BOOT_QUIET: Duration = Duration::from_millis(2000);
/// How long one `M110 N0` of the handshake waits for its `ok`.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// Backoff between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Commands in a row without `ok` before the session is given up.
const MAX_TIMEOUTS: u32 = 2;

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The thread is asked to stop.
    Stop,
    /// Reconnect after a pause; the reason is reported (Offline) once.
    Fail(String),
}

/// A command waiting to be sent, and what to do with its `ok`.
#[derive(Debug)]
struct Queued {
    cmd: String,
    then: Then,
}

#[derive(Debug)]
enum Then {
    Nothing,
    /// The last command of an action: answer the caller.
    Reply(Act, Reply),
}

type Reply = Arc<Mutex<Option<tokio::sync::oneshot::Sender<Result<(), String>>>>>;

fn answer(reply: &Reply, r: Result<(), String>) {
    if let Some(tx) = reply.lock().ok().and_then(|mut g| g.take()) {
        let _ = tx.send(r);
    }
}

/// The thread's body.
pub(super) fn run(shared: Arc<Shared>, requests: mpsc::Receiver<Request>) {
    let mut tracker = Tracker::new();
    let mut backoff = BACKOFF_MIN;
    let mut offline: Option<String> = None;
    let mut rate_index = 0usize;
    let rates = shared.cfg.baud.rates();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let rate = rates[rate_index % rates.len()];
        let result = match port::open(&shared.cfg.port, rate) {
            Ok(p) => {
                let mut s = Session::new(&shared, p, &mut tracker, &requests);
                let r = s.run(rate, &mut offline);
                if s.handshake_done {
                    backoff = BACKOFF_MIN;
                }
                r
            }
            Err(e) => End::Fail(e.to_string()),
        };
        match result {
            End::Stop => break,
            End::Fail(reason) => {
                if reason.contains("no answer to M110") && rates.len() > 1 {
                    rate_index += 1;
                }
                refuse_waiting(&requests, &shared, &reason);
                tracker.on_offline(&reason);
                shared.publish(&tracker);
                if offline.is_none() {
                    warn!(printer = %shared.cfg.name, "{reason}");
                    shared.emit(PrinterEvent::Offline { reason: reason.clone() });
                } else if offline.as_deref() != Some(reason.as_str()) {
                    info!(printer = %shared.cfg.name, "still offline: {reason}");
                } else {
                    debug!(printer = %shared.cfg.name, "still offline: {reason}");
                }
                offline = Some(reason);
            }
        }
        if !sleep_unless_stopped(&shared, backoff, &requests) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    tracker.on_offline("printvigil stopped the link");
    shared.publish(&tracker);
}

/// Actions asked for while offline are refused at once.
fn refuse_waiting(requests: &mpsc::Receiver<Request>, shared: &Shared, reason: &str) {
    while let Ok(r) = requests.try_recv() {
        let _ = r.reply.send(Err(format!("printer `{}` is offline: {reason}", shared.cfg.name)));
    }
}

/// Sleeps `d` in short steps; false when asked to stop.
fn sleep_unless_stopped(shared: &Shared, d: Duration, requests: &mpsc::Receiver<Request>) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        refuse_waiting(requests, shared, "not connected");
        std::thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
    }
    !shared.stop.load(Ordering::Relaxed)
}

struct Session<'a> {
    shared: &'a Shared,
    port: TTYPort,
    lines: LineBuffer,
    sender: Sender,
    tracker: &'a mut Tracker,
    requests: &'a mpsc::Receiver<Request>,
    queue: VecDeque<Queued>,
    /// What the `ok` of the command in flight does.
    current: Option<Then>,
    handshake_done: bool,
    timeouts: u32,
    auto_sd: bool,
    auto_temp: bool,
    next_poll: Instant,
    polls: u64,
    /// When `M27 C` was last asked (it is asked again after a status interval).
    asked_file: Option<Instant>,
    garbage: u64,
    /// When the firmware last said anything: with auto-reports and no polls, a silence of
    /// three intervals sends a keep-alive (`M105`) so that a mute firmware is noticed.
    last_rx: Instant,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, port: TTYPort, tracker: &'a mut Tracker, requests: &'a mpsc::Receiver<Request>) -> Self {
        let timeout = Duration::from_secs(shared.cfg.command_timeout_secs);
        Session {
            shared,
            port,
            lines: LineBuffer::default(),
            sender: Sender::new(timeout),
            tracker,
            requests,
            queue: VecDeque::new(),
            current: None,
            handshake_done: false,
            timeouts: 0,
            auto_sd: false,
            auto_temp: false,
            next_poll: Instant::now(),
            polls: 0,
            asked_file: None,
            garbage: 0,
            last_rx: Instant::now(),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.status_interval_secs)
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Reads what is there (waits up to the read timeout) and returns the lines.
    fn read_lines(&mut self) -> Result<Vec<Line>, End> {
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        match self.port.read(&mut buf) {
            Ok(0) => return Err(End::Fail(format!("the serial port {} closed (printer unplugged or switched off?)", self.shared.cfg.port))),
            Ok(n) => {
                self.last_rx = Instant::now();
                self.lines.push(&buf[..n], |l| out.push(l));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(e) => {
                return Err(End::Fail(format!(
                    "the serial port {} failed ({e}): printer unplugged or switched off?",
                    self.shared.cfg.port
                )));
            }
        }
        Ok(out)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        debug!(printer = %self.shared.cfg.name, "send {}", String::from_utf8_lossy(bytes).trim_end());
        self.port
            .write_all(bytes)
            .and_then(|_| self.port.flush())
            .map_err(|e| End::Fail(format!("writing to the serial port {} failed ({e}): printer unplugged or switched off?", self.shared.cfg.port)))
    }

    /// The whole session; see the module documentation.
    fn run(&mut self, rate: u32, offline: &mut Option<String>) -> End {
        loop {
            if let Err(e) = self.handshake(rate) {
                return e;
            }
            self.handshake_done = true;
            self.tracker.on_online();
            if offline.take().is_some() {
                info!(printer = %self.shared.cfg.name, "printer back online");
                self.shared.emit(PrinterEvent::Online);
            }
            self.shared.publish(self.tracker);
            match self.follow() {
                End::Fail(r) if r == RESET => {
                    info!(printer = %self.shared.cfg.name, "the printer restarted; greeting it again");
                    self.handshake_done = false;
                }
                other => return other,
            }
        }
    }

    /// Boot wait, `M110 N0`, `M115`, auto-reports.
    fn handshake(&mut self, rate: u32) -> Result<(), End> {
        let boot_deadline = Instant::now() + Duration::from_secs(self.shared.cfg.boot_timeout_secs);
        // 1. The boot banner, or a quiet line.
        let mut last_byte = Instant::now();
        let mut started: Option<Instant> = None;
        // A board that was not reset (native USB) keeps talking (auto-reports): a line that
        // only Marlin prints shows that the firmware runs, no bootloader waits.
        let mut marlin_spoke = false;
        loop {
            if self.stopped() {
                return Err(End::Stop);
            }
            let lines = self.read_lines()?;
            if !lines.is_empty() {
                last_byte = Instant::now();
            }
            for l in &lines {
                if *l == Line::Start {
                    started = Some(Instant::now());
                }
                marlin_spoke |= !matches!(l, Line::Garbage | Line::Other(_));
                self.handle_line(l);
            }
            let now = Instant::now();
            let settled = match started {
                Some(at) => now.duration_since(at) >= Duration::from_millis(300) && now.duration_since(last_byte) >= Duration::from_millis(200),
                None if marlin_spoke => now.duration_since(last_byte) >= Duration::from_millis(200),
                None => now.duration_since(last_byte) >= BOOT_QUIET,
            };
            if settled || now >= boot_deadline {
                break;
            }
        }
        // 2. M110 N0 until answered.
        loop {
            let hello = self.sender.reset(Instant::now());
            self.write(&hello)?;
            let until = Instant::now() + HELLO_WAIT;
            while Instant::now() < until {
                if self.stopped() {
                    return Err(End::Stop);
                }
                for l in self.read_lines()? {
                    if matches!(l, Line::Ok { .. }) && self.sender.on_ok().is_some() {
                        return self.greet();
                    }
                    if let Line::Resend(_) = l {
                        // A garbled hello: send it again at once.
                        break;
                    }
                    self.handle_line(&l);
                }
            }
            if Instant::now() >= boot_deadline {
                return Err(End::Fail(format!(
                    "no answer to M110 from the printer on {} at {rate} baud within {} s; check that it is switched on and that `baud` matches its firmware (or use baud = \"auto\")",
                    self.shared.cfg.port, self.shared.cfg.boot_timeout_secs
                )));
            }
        }
    }

    /// `M115` and the auto-reports.
    fn greet(&mut self) -> Result<(), End> {
        self.tracker.clear_caps();
        self.exchange("M115")?;
        let caps: Vec<_> = {
            let mut c: Vec<_> = self.tracker.caps.iter().filter(|(_, v)| **v).map(|(k, _)| k.clone()).collect();
            c.sort();
            c
        };
        info!(
            printer = %self.shared.cfg.name,
            "connected on {}: {} (capabilities: {})",
            self.shared.cfg.port,
            self.tracker.firmware.as_deref().unwrap_or("firmware name not reported"),
            if caps.is_empty() { "none reported".into() } else { caps.join(" ") }
        );
        let secs = self.shared.cfg.status_interval_secs;
        self.auto_temp = self.tracker.cap("AUTOREPORT_TEMP");
        if self.auto_temp {
            self.exchange(&format!("M155 S{}", secs.max(2)))?;
        }
        self.auto_sd = self.tracker.cap("AUTOREPORT_SD_STATUS");
        if self.auto_sd {
            self.exchange(&format!("M27 S{secs}"))?;
        }
        // The first status right away (also with auto-reports: they start after a while).
        self.exchange("M27")?;
        self.next_poll = Instant::now() + self.interval();
        Ok(())
    }

    /// Sends one command and handles lines until its `ok` (handshake only).
    fn exchange(&mut self, cmd: &str) -> Result<(), End> {
        let bytes = self.sender.send(Instant::now(), cmd).ok_or_else(|| End::Fail("internal: a command is in flight".into()))?;
        self.write(&bytes)?;
        loop {
            if self.stopped() {
                return Err(End::Stop);
            }
            for l in self.read_lines()? {
                match l {
                    Line::Ok { .. } => {
                        self.handle_line(&l);
                        if self.sender.on_ok().is_some() {
                            return Ok(());
                        }
                    }
                    _ => self.protocol_line(&l)?,
                }
            }
            if let Some(f) = self.sender.timed_out(Instant::now()) {
                return Err(End::Fail(format!(
                    "the printer on {} does not answer `{}` (no `ok` within {} s)",
                    self.shared.cfg.port, f.cmd, self.shared.cfg.command_timeout_secs
                )));
            }
        }
    }

    /// Lines that concern the sender (`Resend`, busy, unknown command), then the tracker.
    fn protocol_line(&mut self, l: &Line) -> Result<(), End> {
        match l {
            Line::Resend(n) => {
                self.shared.counters.resends.fetch_add(1, Ordering::Relaxed);
                match self.sender.on_resend(Instant::now(), *n) {
                    Ok(Some(bytes)) => self.write(&bytes)?,
                    Ok(None) => {}
                    Err(e) => return Err(End::Fail(e)),
                }
            }
            Line::Busy(_) => self.sender.on_busy(Instant::now()),
            Line::UnknownCommand(c) => {
                debug!(printer = %self.shared.cfg.name, "the firmware does not know {c}");
                self.sender.on_unknown();
            }
            Line::LineError(e) => debug!(printer = %self.shared.cfg.name, "line error: {e}"),
            _ => {}
        }
        self.handle_line(l);
        Ok(())
    }

    /// Feeds the tracker; publishes events and the status.
    fn handle_line(&mut self, l: &Line) {
        match l {
            Line::Garbage => {
                self.garbage += 1;
                self.shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
                if self.garbage == 1 || self.garbage.is_power_of_two() {
                    debug!(printer = %self.shared.cfg.name, "{} garbled line(s) dropped (noise on the line, or a wrong baud rate)", self.garbage);
                }
                return;
            }
            Line::Other(t) => {
                if !t.is_empty() {
                    debug!(printer = %self.shared.cfg.name, "printer: {t}");
                }
                return;
            }
            Line::Error(e) => warn!(printer = %self.shared.cfg.name, "the printer reports an error: {e}"),
            Line::Action(super::line::HostAction::Notification(t)) => info!(printer = %self.shared.cfg.name, "printer: {t}"),
            _ => {}
        }
        let mut events = Vec::new();
        self.tracker.on_line(l, &mut events);
        for ev in events {
            self.shared.emit(ev);
        }
        self.shared.publish(self.tracker);
    }

    /// Follows the printer until the session ends.
    fn follow(&mut self) -> End {
        loop {
            if self.stopped() {
                return End::Stop;
            }
            let lines = match self.read_lines() {
                Ok(l) => l,
                Err(e) => return self.fail_current(e),
            };
            for l in lines {
                match &l {
                    Line::Ok { .. } => {
                        self.handle_line(&l);
                        if let Some(done) = self.sender.on_ok() {
                            self.timeouts = 0;
                            self.completed(&done.cmd, done.unknown);
                        }
                    }
                    Line::Start if self.handshake_done => {
                        self.handle_line(&l);
                        return self.fail_current(End::Fail(RESET.into()));
                    }
                    Line::Halted(_) => {
                        self.handle_line(&l);
                        // No `ok` will come: forget what is in flight and queued.
                        let _ = self.sender.timed_out(Instant::now() + Duration::from_secs(86_400));
                        self.fail_all("the printer halted");
                    }
                    _ => {
                        if let Err(e) = self.protocol_line(&l) {
                            return self.fail_current(e);
                        }
                    }
                }
            }
            let now = Instant::now();
            if let Some(f) = self.sender.timed_out(now) {
                self.timeouts += 1;
                self.shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "the printer on {} does not answer (no `ok` for `{}` within {} s)",
                    self.shared.cfg.port, f.cmd, self.shared.cfg.command_timeout_secs
                );
                if let Some(Then::Reply(_, reply)) = self.current.take() {
                    answer(&reply, Err(why.clone()));
                }
                if self.timeouts >= MAX_TIMEOUTS {
                    self.fail_all(&why);
                    return End::Fail(why);
                }
                warn!(printer = %self.shared.cfg.name, "{why}; trying on");
            }
            while let Ok(req) = self.requests.try_recv() {
                self.accept(req);
            }
            if self.tracker.halted() {
                continue;
            }
            self.schedule(now);
            if self.sender.idle()
                && let Some(q) = self.queue.pop_front()
            {
                let bytes = self.sender.send(now, &q.cmd).unwrap_or_default();
                self.current = Some(q.then);
                if let Err(e) = self.write(&bytes) {
                    return self.fail_current(e);
                }
            }
        }
    }

    fn fail_current(&mut self, e: End) -> End {
        let why = match &e {
            End::Fail(r) => r.clone(),
            End::Stop => "printvigil stopped the link".into(),
        };
        self.fail_all(&why);
        e
    }

    /// Answers every waiting action with an error; drops the queue.
    fn fail_all(&mut self, why: &str) {
        if let Some(Then::Reply(_, reply)) = self.current.take() {
            answer(&reply, Err(why.into()));
        }
        for q in self.queue.drain(..) {
            if let Then::Reply(_, reply) = q.then {
                answer(&reply, Err(why.into()));
            }
        }
    }

    /// Polls, and `M27 C` when the tracker needs the file.
    fn schedule(&mut self, now: Instant) {
        if self.tracker.wants_file()
            && self.asked_file.is_none_or(|at| now.duration_since(at) >= self.interval())
            && !self.queued("M27 C")
        {
            self.asked_file = Some(now);
            self.queue.push_back(Queued { cmd: "M27 C".into(), then: Then::Nothing });
        }
        if now >= self.next_poll {
            self.next_poll = now + self.interval();
            self.polls += 1;
            if !self.auto_sd && !self.queued("M27") {
                self.queue.push_back(Queued { cmd: "M27".into(), then: Then::Nothing });
            }
            let silent = now.duration_since(self.last_rx) >= self.interval() * 3;
            if ((!self.auto_temp && self.polls % 3 == 1) || silent) && !self.queued("M105") {
                self.queue.push_back(Queued { cmd: "M105".into(), then: Then::Nothing });
            }
        }
    }

    fn queued(&self, cmd: &str) -> bool {
        self.queue.iter().any(|q| q.cmd == cmd) || self.sender.in_flight().is_some_and(|f| f.cmd == cmd)
    }

    /// An action request: its commands go before the polls.
    fn accept(&mut self, req: Request) {
        let reply: Reply = Arc::new(Mutex::new(Some(req.reply)));
        let prusa = self.tracker.firmware.as_deref().is_some_and(|f| f.contains("Prusa"));
        let cmd = match req.act {
            Act::Pause if prusa => "M601",
            Act::Pause => "M25",
            Act::Resume if prusa => "M602",
            Act::Resume => "M24",
            Act::Cancel => {
                self.tracker.on_cancel_sent();
                "M524"
            }
        };
        info!(printer = %self.shared.cfg.name, "sending {cmd} ({:?})", req.act);
        self.queue.push_front(Queued { cmd: cmd.into(), then: Then::Reply(req.act, reply) });
    }

    /// The `ok` of `cmd` arrived.
    fn completed(&mut self, cmd: &str, unknown: bool) {
        let Some(then) = self.current.take() else { return };
        let Then::Reply(act, reply) = then else { return };
        let mut events = Vec::new();
        match (act, cmd, unknown) {
            (Act::Pause, "M601", true) => {
                self.queue.push_front(Queued { cmd: "M25".into(), then: Then::Reply(act, reply) });
                return;
            }
            (Act::Resume, "M602", true) => {
                self.queue.push_front(Queued { cmd: "M24".into(), then: Then::Reply(act, reply) });
                return;
            }
            (Act::Cancel, "M524", true) => {
                // The documented fallback for firmware without M524: pause the SD print,
                // rewind it, heaters and fan off. The file stays selected on the printer.
                warn!(printer = %self.shared.cfg.name, "the firmware has no M524: cancelling with M25, M26 S0, M104 S0, M140 S0, M107");
                for c in ["M25", "M26 S0", "M104 S0", "M140 S0"] {
                    self.queue.push_back(Queued { cmd: c.into(), then: Then::Nothing });
                }
                self.queue.push_back(Queued { cmd: "M107".into(), then: Then::Reply(Act::Cancel, reply) });
                return;
            }
            (_, _, true) => {
                answer(&reply, Err(format!("the firmware does not know {cmd}")));
                return;
            }
            (Act::Pause, _, false) => self.tracker.on_paused_by_us(&mut events),
            (Act::Resume, _, false) => self.tracker.on_resumed_by_us(&mut events),
            (Act::Cancel, "M107", false) => self.tracker.on_cancelled_by_fallback(&mut events),
            (Act::Cancel, _, false) => {
                // The next status report ends the print; ask for it now.
                self.queue.push_front(Queued { cmd: "M27".into(), then: Then::Nothing });
            }
        }
        for ev in events {
            self.shared.emit(ev);
        }
        self.shared.publish(self.tracker);
        answer(&reply, Ok(()));
    }
}

/// The reason a session ends when the board resets (redo the handshake at once).
const RESET: &str = "the printer restarted";

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<TTYPort>();
}
