//! The connection to the broker: connect, keep alive, reconnect with a growing wait.
//!
//! `rumqttc` splits a connection in two: an [`AsyncClient`] that hands requests over,
//! and an event loop that does the network work and must be polled all the time. The
//! event loop runs in its own task here ([`Driver`]); it reports the link's state on a
//! watch channel and passes incoming messages on (a bounded channel: a flood of incoming
//! messages is dropped, never queued without end).
//!
//! When the connection fails the task waits 1 s, then 2, 4, ... up to
//! `mqtt.reconnect_max_secs`, and tries again, forever: a broker that is down for hours
//! costs one log line when it goes and one when it comes back. The wait starts over
//! after a connection that held for a while. Each connection announces this host with a
//! retained `online` on `P/status` and leaves a last will that makes the broker publish a
//! retained `offline` there when the connection dies without a goodbye (a crash, a
//! SIGKILL, a cable pulled out).

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};

use super::config::{Broker, MAX_FRAME_BYTES};
use super::{MqttConfig, MqttError};

/// Where the link to the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Connected; the number goes up with each new connection.
    Up(u64),
    /// The last attempt failed, or the connection was lost; the reason says why.
    Down(String),
}

/// The largest incoming message accepted (commands and discovery records are small).
const MAX_INCOMING: usize = 1 << 20;
/// A connection that held this long resets the reconnect wait.
const STABLE: Duration = Duration::from_secs(30);

/// A connection's handles, for the sink.
pub struct Connection {
    pub client: AsyncClient,
    pub link: watch::Receiver<Link>,
    pub incoming: mpsc::Receiver<Publish>,
    pub driver: tokio::task::JoinHandle<()>,
}

/// Builds the MQTT options (credentials, TLS, the last will `offline` on `status_topic`
/// when given) and starts the driver task.
pub fn connect(cfg: &MqttConfig, client_id: &str, status_topic: Option<&str>, stop: watch::Receiver<bool>) -> Result<Connection, MqttError> {
    let broker = cfg.broker().map_err(|e| MqttError::Config(e.to_string()))?;
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(cfg.keepalive());
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_INCOMING, MAX_FRAME_BYTES + 64 * 1024);
    if let Some(topic) = status_topic {
        opts.set_last_will(LastWill::new(topic, "offline", QoS::AtLeastOnce, true));
    }
    if let Some((user, pass)) = cfg.credentials(&broker) {
        opts.set_credentials(user, pass.expose());
    }
    if broker.tls {
        let tls = super::tls::client_config(cfg).map_err(|e| MqttError::Tls(e.to_string()))?;
        opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    let (link_tx, link) = watch::channel(Link::Connecting);
    let (in_tx, incoming) = mpsc::channel(256);
    let driver = Driver { eventloop, broker, link: link_tx, incoming: in_tx, max_wait: cfg.reconnect_max() };
    let driver = tokio::spawn(driver.run(stop));
    Ok(Connection { client, link, incoming, driver })
}

struct Driver {
    eventloop: EventLoop,
    broker: Broker,
    link: watch::Sender<Link>,
    incoming: mpsc::Sender<Publish>,
    max_wait: Duration,
}

impl Driver {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut generation = 0;
        let mut failures: u32 = 0;
        let mut up_since: Option<Instant> = None;
        let mut down_since: Option<Instant> = None;
        let mut last_problem: Option<String> = None;
        let mut stopping = false;
        let where_ = format!("{}:{}", self.broker.host, self.broker.port);
        loop {
            let polled = tokio::select! {
                r = self.eventloop.poll() => r,
                _ = stop.changed(), if !stopping => {
                    // Keep polling so that the goodbye (offline, DISCONNECT) goes out; the
                    // sink ends this task when it is done or out of time.
                    stopping = true;
                    continue;
                }
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    generation += 1;
                    match down_since.take() {
                        Some(t) if last_problem.is_some() => tracing::info!(
                            "MQTT: connected to {where_} again (after {:.0} s)",
                            t.elapsed().as_secs_f64()
                        ),
                        _ => tracing::info!("MQTT: connected to {where_}"),
                    }
                    last_problem = None;
                    up_since = Some(Instant::now());
                    let _ = self.link.send(Link::Up(generation));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if self.incoming.try_send(p).is_err() {
                        tracing::debug!("MQTT: an incoming message was dropped (too many at once)");
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if stopping => {
                    let _ = self.link.send(Link::Down("stopped".into()));
                    return;
                }
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    if stopping {
                        return;
                    }
                    let problem = describe(&e, &where_);
                    if let Some(t) = up_since.take() {
                        if t.elapsed() >= STABLE {
                            failures = 0;
                        }
                        down_since = Some(Instant::now());
                        tracing::warn!("MQTT: connection to {where_} lost: {problem}; reconnecting (telemetry is queued, detection goes on)");
                    } else if last_problem.as_deref() != Some(problem.as_str()) {
                        down_since.get_or_insert_with(Instant::now);
                        if refused(&e) {
                            tracing::error!("MQTT: {problem}; trying again every {:.0} s", self.max_wait.as_secs_f64());
                        } else {
                            tracing::warn!("MQTT: cannot connect to {where_}: {problem}; trying again (detection goes on)");
                        }
                    } else {
                        tracing::debug!("MQTT: still cannot connect: {problem}");
                    }
                    last_problem = Some(problem.clone());
                    let _ = self.link.send(Link::Down(problem));
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_secs(1u64 << failures.min(12).saturating_sub(1)).min(self.max_wait);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed(), if !stopping => return,
                    }
                }
            }
        }
    }
}

/// The broker said no (credentials, authorisation, certificates): no point hurrying.
fn refused(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ConnectionRefused(_) | ConnectionError::Tls(_))
}

/// What went wrong, in words that point at the fix.
pub fn describe(e: &ConnectionError, where_: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            format!("the broker at {where_} refused the user name or password (check mqtt.username and mqtt.password)")
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => format!(
            "the broker at {where_} refused the user name or password, or does not let this client in: not authorized (check mqtt.username and mqtt.password, and the broker's access rules)"
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            format!("the broker at {where_} refused the client id (set mqtt.client_id)")
        }
        ConnectionError::ConnectionRefused(code) => format!("the broker at {where_} refused the connection ({code:?})"),
        ConnectionError::Tls(t) => format!(
            "TLS with {where_} failed: {t} (the broker's certificate must chain to mqtt.ca_file, or a system CA, and name the host of mqtt.url)"
        ),
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused at {where_} (is the broker running and listening there?)")
        }
        ConnectionError::Io(io) if io.to_string().contains("certificate") => {
            format!("TLS with {where_} failed: {io} (check mqtt.ca_file, mqtt.client_cert and the broker's certificate)")
        }
        ConnectionError::NetworkTimeout => format!("no answer from {where_} within 10 s"),
        other => other.to_string(),
    }
}
