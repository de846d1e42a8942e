//! The link's task: connect, follow the reports, carry out actions, and when the
//! connection fails, say why once and try again.
//!
//! One connection ([`connection`]) is: TCP, TLS with the pinned certificate, MQTT
//! `CONNECT` as `bblp` with the access code, `SUBSCRIBE device/<serial>/report`, and a
//! `pushall` for the full state. Reports are merged and handed to the tracker; the first
//! one makes the connection healthy. A connection that brings no report for
//! `report_timeout_secs` is taken as stalled (some firmware stops publishing and keeps the
//! socket open) and opened again. rumqttc's event loop runs in its own small task
//! (`pump`), so its poll is never cancelled halfway.
//!
//! **Troubles** ([`Trouble`], from [`classify`]) are states: each is logged once, with
//! what to do, when it begins (a repeat is logged at debug), and the recovery is logged
//! with the number of failed attempts. The waits between attempts:
//! - a wrong access code or a certificate that is not the pinned one: [`SLOW_RETRY`]
//!   (nothing changes until a person acts, and a printer should not be hammered with bad
//!   logins);
//! - refused connections (the printer is on, LAN-only mode is off), no answer (switched
//!   off, asleep, wrong address), a dropped or stalled connection: from [`BACKOFF_START`]
//!   doubling to [`BACKOFF_CAP`], back to the start only after a connection that brought
//!   reports for [`HEALTHY_AFTER`]. Three short-lived connections in a row make the link
//!   *flapping*: its reconnects and Online/Offline events go to the debug log until a
//!   connection lasts.
//!
//! **Actions** (one at a time): `{"print": {"command": "pause", "param": "",
//! "sequence_id": "<n>"}}` at QoS 1, as BambuStudio sends them. The printer's answer (an
//! echo with `result`) is matched by the `sequence_id`: a refusal is an error at once
//! (with the Developer Mode fix for unsigned commands); otherwise the reports that follow
//! confirm it through the common path ([`LinkChannels::act`](crate::printer::channels::LinkChannels::act)).
//! No answer and no change within `action_timeout_secs` is [`PrinterError::Ignored`], with
//! the most likely reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::report::{ERR_BAD_SIGNATURE, ERR_NOT_SIGNED, MAX_REPORT, Message, Report, parse_message};
use super::tracker::{Note, Tracker};
use super::{Request, Shared, USER, command};
use crate::printer::channels::Act;
use crate::printer::{PrinterError, PrinterState};
use crate::tlspin::{self, Seen, Trust};

/// The first wait after a failure.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between attempts (a printer switched off for the night).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The wait after a refused access code or certificate.
pub const SLOW_RETRY: Duration = Duration::from_secs(60);
/// A connection must bring reports this long to reset the backoff (a printer that accepts,
/// reports and drops is retried ever more slowly, not every second).
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Short-lived connections in a row from which on the link counts as flapping: its
/// Online/Offline events and reconnects go to the debug log.
const FLAPPING_AFTER: u32 = 3;
/// MQTT keepalive (the printer does not enforce it; it keeps NAT and the socket honest).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Partial reports but no full one this long after a `pushall`: ask again (BambuStudio's
/// floor between two is 3 s; P1 printers lag when asked often).
const PUSHALL_AGAIN: Duration = Duration::from_secs(10);
/// Largest request printvigil publishes.
const MAX_OUTGOING: usize = 64 * 1024;

/// Why a connection failed or ended; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The printer refused the access code (CONNACK "bad user name or password" / "not
    /// authorised").
    WrongCode,
    /// The certificate shown is not the pinned one (its fingerprint).
    WrongCertificate(String),
    /// The port refuses connections: the printer is on but does not offer local MQTT.
    Refused(String),
    /// No answer: switched off, asleep, not on the network, or a wrong address.
    Unreachable(String),
    /// The TLS handshake failed otherwise.
    Tls(String),
    /// Connected, but no report came within the report timeout.
    Silent,
    /// The connection ended (the printer or the network dropped it).
    Lost(String),
}

impl Trouble {
    /// Same kind of trouble (the details may differ).
    fn same_kind(&self, other: &Trouble) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    fn slow(&self) -> bool {
        matches!(self, Trouble::WrongCode | Trouble::WrongCertificate(_))
    }

    /// The message for the log and the `Offline` event, with what to do.
    pub fn message(&self, cfg: &super::BambuConfig, ever_reported: bool) -> String {
        let at = format!("{}:{}", cfg.host, cfg.port);
        match self {
            Trouble::WrongCode => format!(
                "the printer at {at} refused the access code: set access_code of printer `{}` to the code on the printer's screen (Settings > Network / WLAN; it changes when LAN-only mode is switched on or off). Retrying every {} s",
                cfg.name,
                SLOW_RETRY.as_secs()
            ),
            Trouble::WrongCertificate(seen) => format!(
                "the device at {at} shows a certificate with SHA-256 fingerprint {seen}, not the one pinned for printer `{}`: not connecting. If the printer was replaced or a firmware update changed its certificate, run `printvigil setup bambu {}` to confirm the new one; otherwise something else answers at this address. Retrying every {} s",
                cfg.name,
                cfg.host,
                SLOW_RETRY.as_secs()
            ),
            Trouble::Refused(why) => format!(
                "{at} refuses connections ({why}): the printer is on the network but does not accept local MQTT. Turn on LAN-only mode (and Developer Mode, for pause/stop) on the printer's screen, and check host and port. Retrying"
            ),
            Trouble::Unreachable(why) => format!(
                "the printer at {at} does not answer ({why}): it is switched off, asleep or not on the network, or host is wrong. Retrying"
            ),
            Trouble::Tls(why) => format!("TLS with {at} failed ({why}); is this a Bambu Lab printer's MQTT port? Retrying"),
            Trouble::Silent if ever_reported => format!(
                "the printer at {at} stopped reporting for {} s although connected; reconnecting",
                cfg.report_timeout_secs
            ),
            Trouble::Silent => format!(
                "connected to {at}, but no report came for {} s: check serial of printer `{}` ({:?}): it must be this printer's serial number (Settings > Device on its screen; `printvigil setup bambu {}` reads it from the printer's certificate). Retrying",
                cfg.report_timeout_secs, cfg.name, cfg.serial, cfg.host
            ),
            Trouble::Lost(why) if ever_reported => format!("the connection to the printer at {at} was lost ({why}); reconnecting"),
            Trouble::Lost(why) => format!(
                "the printer at {at} closed the connection before any report ({why}): check serial of printer `{}` ({:?}), it must be this printer's (a wrong one makes the printer hang up). Retrying",
                cfg.name, cfg.serial
            ),
        }
    }
}

/// Classifies a connection error. `seen`/`trust`: the certificate the handshake saw and
/// what was pinned (a refused pin shows up as a TLS error).
pub fn classify(e: &ConnectionError, seen: Option<tlspin::Fingerprint>, trust: Trust) -> Trouble {
    if let (Trust::Pinned(pin), Some(seen)) = (trust, seen)
        && pin != seen
    {
        return Trouble::WrongCertificate(seen.to_string());
    }
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized) => {
            Trouble::WrongCode
        }
        ConnectionError::ConnectionRefused(code) => Trouble::Lost(format!("MQTT connection refused: {code:?}")),
        ConnectionError::NetworkTimeout => Trouble::Unreachable("no answer within the connect timeout".into()),
        ConnectionError::Io(io) => classify_io(io),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => {
            if seen.is_none() && io.kind() != std::io::ErrorKind::InvalidData {
                classify_io(io)
            } else {
                Trouble::Tls(io.to_string())
            }
        }
        ConnectionError::Tls(t) => Trouble::Tls(t.to_string()),
        other => Trouble::Lost(other.to_string()),
    }
}

fn classify_io(io: &std::io::Error) -> Trouble {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => Trouble::Refused("connection refused".into()),
        K::TimedOut | K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            Trouble::Unreachable(io.to_string())
        }
        // Name resolution failed.
        K::Other | K::NotFound | K::InvalidInput if io.to_string().contains("lookup") || io.to_string().contains("resolve") => {
            Trouble::Unreachable(io.to_string())
        }
        _ => Trouble::Lost(io.to_string()),
    }
}

/// One log line per change of trouble; see the module documentation.
struct Health {
    /// Flapping: only the first failure of a kind and the recovery after it are logged.
    quiet: bool,
    current: Option<Trouble>,
    failures: u32,
    since: Option<SystemTime>,
    ever_connected: bool,
    ever_reported: bool,
}

impl Health {
    fn failed(&mut self, name: &str, t: &Trouble, msg: &str) {
        if self.failures == 0 {
            self.since = Some(SystemTime::now());
        }
        self.failures += 1;
        match &self.current {
            Some(c) if c.same_kind(t) => debug!(printer = %name, "again: {msg}"),
            _ if self.quiet => debug!(printer = %name, "{msg}"),
            _ => warn!(printer = %name, "{msg}"),
        }
        self.current = Some(t.clone());
    }

    fn healthy(&mut self, name: &str, at: &str) {
        match (self.ever_connected, self.failures) {
            _ if self.quiet => debug!(printer = %name, "connected to the printer at {at} again (the connection flaps)"),
            (false, 0) => info!(printer = %name, "connected to the printer at {at}"),
            (_, 0) => info!(printer = %name, "connected to the printer at {at} again"),
            (_, n) => info!(
                printer = %name,
                "connected to the printer at {at} again ({n} failed attempt(s) since {})",
                self.since.map(|s| humantime::format_rfc3339_seconds(s).to_string()).unwrap_or_default()
            ),
        }
        self.ever_connected = true;
        self.ever_reported = true;
        self.failures = 0;
        self.current = None;
        self.since = None;
    }
}

/// An action waiting for its confirmation.
struct Pending {
    act: Act,
    seq: String,
    reply: tokio::sync::oneshot::Sender<Result<(), PrinterError>>,
    deadline: Instant,
}

/// Sequence ids of printvigil's own commands: a range of their own (BambuStudio uses
/// 20000-30000, others small numbers), so the printer's echo is told apart.
static SEQUENCE: AtomicU64 = AtomicU64::new(1_000_000_000);

fn next_sequence() -> String {
    SEQUENCE.fetch_add(1, Ordering::Relaxed).to_string()
}

/// What the session task keeps across connections.
struct Session {
    shared: Arc<Shared>,
    tracker: Tracker,
    report: Report,
    pending: Option<Pending>,
    health: Health,
}

impl Session {
    fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    fn offline(&mut self, reason: &str) {
        let tracker = &mut self.tracker;
        self.shared.apply(|ev, st| tracker.offline(reason, ev, st));
    }

    /// Answers the pending action once the state shows it done, or when its time is up
    /// without an answer (the echo is handled in [`Session::on_ack`]).
    fn settle(&mut self) {
        let state = self.tracker.state();
        let Some(p) = &self.pending else { return };
        let result = if p.act.done(state) {
            Ok(())
        } else if Instant::now() >= p.deadline {
            Err(PrinterError::Ignored {
                printer: self.shared.cfg.name.clone(),
                action: command(p.act).to_string(),
                timeout: Duration::from_secs(self.shared.cfg.action_timeout_secs),
                hint: "no answer and no change of state. Current firmware obeys other programs only in LAN-only mode with Developer Mode on: turn both on in the printer's settings (network / general) and check that the printer shows no dialog waiting for a tap".into(),
            })
        } else {
            return;
        };
        if let Some(p) = self.pending.take() {
            match &result {
                Ok(()) => debug!(printer = %self.name(), "{} shown by the printer's state", command(p.act)),
                Err(e) => warn!(printer = %self.name(), "{e}"),
            }
            let _ = p.reply.send(result);
        }
    }

    fn on_ack(&mut self, ack: super::report::Ack) {
        let Some(p) = &mut self.pending else { return };
        if ack.sequence_id != p.seq {
            return;
        }
        match ack.ok {
            Some(false) => {
                let why = match ack.err_code {
                    Some(ERR_NOT_SIGNED | ERR_BAD_SIGNATURE) => format!(
                        "the printer accepts only signed commands (err_code {:#010X}{}): Developer Mode is off. Turn on LAN-only mode and then Developer Mode in the printer's settings; printvigil keeps watching meanwhile, but cannot pause or stop",
                        ack.err_code.unwrap_or(0),
                        ack.reason.as_deref().map(|r| format!(", \"{r}\"")).unwrap_or_default()
                    ),
                    code => format!(
                        "the printer answered {}{}",
                        ack.reason.as_deref().map(|r| format!("\"{r}\"")).unwrap_or_else(|| "failure".into()),
                        code.map(|c| format!(" (err_code {c:#010X})")).unwrap_or_default()
                    ),
                };
                let p = self.pending.take().expect("checked above");
                let e = PrinterError::Refused { printer: self.shared.cfg.name.clone(), action: command(p.act).into(), message: why };
                warn!(printer = %self.shared.cfg.name, "{e}");
                let _ = p.reply.send(Err(e));
            }
            // Accepted: the reports that follow confirm it (LinkChannels::act waits).
            Some(true) => {
                let p = self.pending.take().expect("checked above");
                debug!(printer = %self.shared.cfg.name, "{} accepted by the printer", command(p.act));
                let _ = p.reply.send(Ok(()));
            }
            // An echo without a result says nothing yet.
            None => {}
        }
    }

    fn on_request(&mut self, client: Option<&AsyncClient>, req: Request) {
        let printer = self.shared.cfg.name.clone();
        let action = command(req.act);
        if self.pending.is_some() {
            let _ = req.reply.send(Err(PrinterError::Refused {
                printer,
                action: action.into(),
                message: "another action is still waiting for the printer's confirmation".into(),
            }));
            return;
        }
        let Some(client) = client else {
            let _ = req.reply.send(Err(PrinterError::NotConnected { printer }));
            return;
        };
        let seq = next_sequence();
        let body = json!({"print": {"sequence_id": seq, "command": action, "param": ""}});
        let topic = format!("device/{}/request", self.shared.cfg.serial);
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body.to_string()) {
            let _ = req.reply.send(Err(PrinterError::Refused { printer, action: action.into(), message: format!("could not send it ({e})") }));
            return;
        }
        info!(printer = %self.name(), "sent {action} (sequence_id {seq})");
        if req.act == Act::Cancel {
            self.tracker.on_cancel_sent();
        }
        let deadline = Instant::now() + Duration::from_secs(self.shared.cfg.action_timeout_secs);
        self.pending = Some(Pending { act: req.act, seq, reply: req.reply, deadline });
    }

    /// Handles one message; returns whether the printer's state is known (a full report
    /// was merged).
    fn on_report(&mut self, payload: &[u8]) -> bool {
        match parse_message(payload) {
            Ok(Message::Status(print)) => {
                self.report.merge(print);
                let view = self.report.view();
                let known = view.state.is_some();
                let tracker = &mut self.tracker;
                self.shared.apply(|ev, st| tracker.observe(&view, ev, st));
                for note in self.tracker.take_notes() {
                    match note {
                        Note::ErrorPause(text) => warn!(printer = %self.name(), "{text}"),
                        Note::SignedCommands => warn!(
                            printer = %self.name(),
                            "the printer reports that it accepts only signed commands (Developer Mode off): printvigil watches, but pause and stop will be refused. Turn on LAN-only mode and Developer Mode in the printer's settings"
                        ),
                    }
                }
                known
            }
            Ok(Message::Ack(ack)) => {
                self.on_ack(ack);
                true
            }
            Ok(Message::Other) => true,
            Err(why) => {
                debug!(printer = %self.name(), "a message on the report topic was ignored: {why}");
                true
            }
        }
    }
}

/// The link's task: connections until the link stops.
pub(super) async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>) {
    let cfg = shared.cfg.clone();
    let mut s = Session {
        tracker: Tracker::new(&cfg.serial),
        report: Report::default(),
        pending: None,
        health: Health { quiet: false, current: None, failures: 0, since: None, ever_connected: false, ever_reported: false },
        shared,
    };
    let (tls, seen) = tlspin::client_config(cfg.trust());
    let mut backoff = BACKOFF_START;
    let mut short_lived = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let end = connection(&mut s, &tls, &seen, &mut requests, &mut stop).await;
        let Some((trouble, reporting_since)) = end else { return };
        match reporting_since.map(|t| t.elapsed()) {
            Some(d) if d >= HEALTHY_AFTER => {
                backoff = BACKOFF_START;
                short_lived = 0;
            }
            Some(_) => short_lived += 1,
            None => {}
        }
        s.health.quiet = short_lived >= FLAPPING_AFTER;
        s.shared.out.set_quiet(s.health.quiet);
        let msg = trouble.message(&cfg, s.health.ever_reported);
        s.health.failed(&cfg.name, &trouble, &msg);
        s.offline(&msg);
        let wait = if trouble.slow() { SLOW_RETRY } else { backoff };
        if !trouble.slow() {
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
        let until = Instant::now() + wait;
        loop {
            s.settle();
            let tick = s.pending.as_ref().map(|p| p.deadline).unwrap_or(until).min(until);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(tick) => {
                    if Instant::now() >= until {
                        break;
                    }
                }
                r = requests.recv() => match r {
                    Some(req) => s.on_request(None, req),
                    None => return,
                },
            }
        }
    }
}

/// Asks for the full state (as BambuStudio does); false when it could not be queued.
fn pushall(client: &AsyncClient, serial: &str) -> bool {
    let body = json!({"pushing": {"sequence_id": next_sequence(), "command": "pushall", "version": 1, "push_target": 1}});
    client.try_publish(format!("device/{serial}/request"), QoS::AtLeastOnce, false, body.to_string()).is_ok()
}

/// One connection; `None` when the link stops, else why it ended and since when it
/// brought reports (if it did).
async fn connection(
    s: &mut Session,
    tls: &Arc<rustls::ClientConfig>,
    seen: &Seen,
    requests: &mut mpsc::Receiver<Request>,
    stop: &mut watch::Receiver<bool>,
) -> Option<(Trouble, Option<Instant>)> {
    let cfg = s.shared.cfg.clone();
    let client_id = format!("printvigil-{}-{:08x}", s.shared.instance, fastrand::u32(..));
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_credentials(USER, cfg.code());
    opts.set_keep_alive(KEEPALIVE);
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_REPORT, MAX_OUTGOING);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(cfg.connect_timeout_secs);
    // Commands are small and go at once (no 40 ms wait for an ACK).
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    seen.clear();
    // The event loop in its own task: its poll is never cancelled halfway.
    let (tx, mut events) = mpsc::channel(64);
    let pump = tokio::spawn(async move {
        loop {
            let r = eventloop.poll().await;
            let end = r.is_err();
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _pump = Abort(pump);

    let at = format!("{}:{}", cfg.host, cfg.port);
    let silence = Duration::from_secs(cfg.report_timeout_secs);
    let mut connected = false;
    let mut healthy: Option<Instant> = None;
    let mut pushall_at = Instant::now();
    // Before CONNACK the event loop's own connect timeout applies.
    let mut quiet_until = Instant::now() + Duration::from_secs(cfg.connect_timeout_secs) + silence;
    loop {
        s.settle();
        let tick = s.pending.as_ref().map(|p| p.deadline).unwrap_or(quiet_until).min(quiet_until);
        tokio::select! {
            _ = stop.changed() => {
                let _ = client.try_disconnect();
                return None;
            }
            r = requests.recv() => match r {
                Some(req) => s.on_request(connected.then_some(&client), req),
                None => return None,
            },
            _ = tokio::time::sleep_until(tick) => {
                if Instant::now() >= quiet_until {
                    return Some((Trouble::Silent, healthy));
                }
            }
            ev = events.recv() => match ev {
                None => return Some((Trouble::Lost("the MQTT client stopped".into()), healthy)),
                Some(Err(e)) => {
                    let trouble = classify(&e, seen.fingerprint(), cfg.trust());
                    return Some((trouble, healthy));
                }
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    debug!(printer = %cfg.name, "MQTT connected to {at}");
                    connected = true;
                    s.report.clear();
                    let report = format!("device/{}/report", cfg.serial);
                    if client.try_subscribe(report, QoS::AtMostOnce).is_err() || !pushall(&client, &cfg.serial) {
                        return Some((Trouble::Lost("could not queue the subscription".into()), healthy));
                    }
                    pushall_at = Instant::now();
                    quiet_until = Instant::now() + silence;
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    quiet_until = Instant::now() + silence;
                    if !s.on_report(&p.payload) && pushall_at.elapsed() >= PUSHALL_AGAIN {
                        debug!(printer = %cfg.name, "no full report since the pushall: asking again");
                        pushall(&client, &cfg.serial);
                        pushall_at = Instant::now();
                    }
                    if healthy.is_none() && s.tracker.state() != PrinterState::Offline {
                        healthy = Some(Instant::now());
                        s.health.healthy(&cfg.name, &at);
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_troubles_with_what_to_do() {
        let pin = tlspin::Fingerprint([1; 32]);
        let other = tlspin::Fingerprint([2; 32]);
        let io = |k: std::io::ErrorKind| ConnectionError::Io(std::io::Error::from(k));
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        assert_eq!(classify(&refused, Some(pin), Trust::Pinned(pin)), Trouble::WrongCode);
        let tls_fail = ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate")));
        assert!(matches!(classify(&tls_fail, Some(other), Trust::Pinned(pin)), Trouble::WrongCertificate(f) if f.starts_with("02:02")));
        assert!(matches!(classify(&io(std::io::ErrorKind::ConnectionRefused), None, Trust::Any), Trouble::Refused(_)));
        assert!(matches!(classify(&io(std::io::ErrorKind::HostUnreachable), None, Trust::Any), Trouble::Unreachable(_)));
        assert!(matches!(classify(&ConnectionError::NetworkTimeout, None, Trust::Any), Trouble::Unreachable(_)));
        assert!(matches!(classify(&io(std::io::ErrorKind::ConnectionReset), None, Trust::Any), Trouble::Lost(_)));

        let cfg = super::super::BambuConfig::new("p1s", "192.168.1.50", "01P00A1", "12345678", Trust::Any);
        let m = Trouble::WrongCode.message(&cfg, false);
        assert!(m.contains("access_code") && m.contains("Settings") && !m.contains("12345678"), "{m}");
        assert!(Trouble::Refused("x".into()).message(&cfg, false).contains("LAN-only mode"));
        assert!(Trouble::Unreachable("x".into()).message(&cfg, false).contains("switched off"));
        assert!(Trouble::Silent.message(&cfg, false).contains("serial"));
        assert!(Trouble::WrongCertificate("AB".into()).message(&cfg, false).contains("printvigil setup bambu 192.168.1.50"));
    }
}
