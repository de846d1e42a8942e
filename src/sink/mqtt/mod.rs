//! The MQTT sink: every printer's state, events and latest decision frame on a broker,
//! Home Assistant discovery, and commands back.
//!
//! The broker is a fleet's backbone: one broker, any number of printvigil hosts, each
//! under its own topic prefix ([`topics`] has the tree). The sink reads what the watches
//! publish (each printer's [`PrinterView`] on the [`Board`], the [`WatchEvent`]
//! broadcast) and never the other way round: it runs in its own tasks, puts messages on a
//! bounded [`queue`] that drops the oldest telemetry when full, and the watch loop never
//! waits for it. A broker that is down, slow or refusing costs log lines, not detection.
//!
//! - [`config`]: the `[mqtt]` settings.
//! - [`tls`]: the verified TLS setup (CA file or system CAs, client certificate).
//! - [`client`]: the connection task (keepalive, last will, reconnect with backoff).
//! - [`queue`]: the bounded publishing queue.
//! - [`topics`]: the topic names.
//! - [`telemetry`]: views and events as messages.
//! - [`discovery`]: Home Assistant discovery configs.
//! - [`commands`]: command messages as watch commands.
//!
//! On every (re)connect the whole state is published again (availability `online`,
//! discovery, every printer's retained topics, the latest frame), so a broker that
//! restarted without persistence, or lost retained messages, is whole again within
//! moments. Home Assistant's birth message (`online` on `homeassistant/status`) triggers
//! the same for discovery.

pub mod client;
pub mod commands;
pub mod config;
pub mod discovery;
pub mod queue;
pub mod telemetry;
pub mod tls;
pub mod topics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{broadcast, watch};

pub use config::MqttConfig;
use client::Link;
use queue::{Message, Queue};
use topics::{Incoming, Topics};

use crate::server::Mirror;
use crate::watch::WatchEvent;
use crate::watch::view::{Board, PrinterView, WatchPhase};

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
}

/// How often the outbox depth is read and the snooze countdown refreshed.
const TICK: Duration = Duration::from_secs(15);

/// What the sink reads.
pub struct Inputs {
    pub board: Arc<Board>,
    pub events: broadcast::Receiver<WatchEvent>,
    /// The configured printers' names (their watches register on the board as they start).
    pub printers: Vec<String>,
    /// The server mirror, for the outbox depth.
    pub mirror: Option<Arc<Mirror>>,
    /// This host's name (the default topic prefix and the Home Assistant host device).
    pub host: String,
}

/// A running MQTT sink.
pub struct MqttSink {
    stop: watch::Sender<bool>,
    producer: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    link: watch::Receiver<Link>,
    client: AsyncClient,
    queue: Arc<Queue>,
    topics: Topics,
}

impl MqttSink {
    /// Starts the sink's tasks. Fails only on settings that cannot work (a CA file that
    /// cannot be read); a broker that cannot be reached is retried in the background.
    pub fn start(cfg: &MqttConfig, inputs: Inputs) -> Result<MqttSink, MqttError> {
        let topics = Topics::new(&cfg.prefix(&inputs.host), &cfg.discovery_prefix);
        let (stop, stop_rx) = watch::channel(false);
        let conn = client::connect(cfg, &cfg.client_id_for(&inputs.host), Some(&topics.status()), stop_rx.clone())?;
        let queue = Arc::new(Queue::new(cfg.queue));
        let printers: Vec<(String, String)> =
            inputs.printers.iter().map(|n| (n.clone(), topics::slug(n))).collect();
        let dirty = crate::sink::views::follow(&inputs.board, &inputs.printers, &stop_rx);
        let producer = Producer {
            cfg: cfg.clone(),
            client: conn.client.clone(),
            topics: topics.clone(),
            host: inputs.host.clone(),
            board: inputs.board,
            mirror: inputs.mirror,
            printers,
            queue: queue.clone(),
            dirty,
            published: HashMap::new(),
            phases: HashMap::new(),
            frames: HashMap::new(),
            outbox: None,
            epoch: (Instant::now(), SystemTime::now()),
            dropped_reported: false,
        };
        let producer = tokio::spawn(producer.run(inputs.events, conn.link.clone(), conn.incoming, stop_rx.clone()));
        let sender = tokio::spawn(send(conn.client.clone(), queue.clone(), conn.link.clone()));
        Ok(MqttSink { stop, producer, sender, driver: conn.driver, link: conn.link, client: conn.client, queue, topics })
    }

    /// The link to the broker now.
    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Says goodbye (a retained `offline`, then DISCONNECT, so the broker does not publish
    /// the last will) within `budget`, and ends the tasks.
    pub async fn stop(self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout_at(deadline, self.producer).await;
        if matches!(*self.link.borrow(), Link::Up(_)) {
            self.queue.push(Message::retained(self.topics.status(), "offline"));
            while !self.queue.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = self.client.try_disconnect();
        }
        let abort = self.driver.abort_handle();
        if tokio::time::timeout_at(deadline, self.driver).await.is_err() {
            abort.abort();
        }
        self.sender.abort();
    }
}

/// Hands queued messages to the client while the broker is connected.
async fn send(client: AsyncClient, queue: Arc<Queue>, mut link: watch::Receiver<Link>) {
    loop {
        queue.ready().await;
        if !matches!(*link.borrow_and_update(), Link::Up(_)) {
            if link.changed().await.is_err() {
                return;
            }
            continue;
        }
        while let Some(m) = queue.pop() {
            let qos = if m.reliable { QoS::AtLeastOnce } else { QoS::AtMostOnce };
            match client.try_publish(m.topic.clone(), qos, m.retain, m.payload.clone()) {
                Ok(()) => {}
                Err(rumqttc::ClientError::TryRequest(_)) => {
                    // The connection's own channel is full: wait for it to drain.
                    queue.push_front(m);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

struct Producer {
    cfg: MqttConfig,
    client: AsyncClient,
    topics: Topics,
    host: String,
    board: Arc<Board>,
    mirror: Option<Arc<Mirror>>,
    /// (name, slug)
    printers: Vec<(String, String)>,
    queue: Arc<Queue>,
    dirty: Arc<crate::sink::views::Changed>,
    /// What was last queued per retained topic: unchanged state is not sent again.
    published: HashMap<String, Vec<u8>>,
    /// Each printer's last phase, for the link's offline/online events.
    phases: HashMap<String, WatchPhase>,
    /// Each printer's last frame published.
    frames: HashMap<String, PathBuf>,
    outbox: Option<u64>,
    /// A monotonic instant and the wall-clock time it was, to date watch events.
    epoch: (Instant, SystemTime),
    dropped_reported: bool,
}

impl Producer {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<WatchEvent>,
        mut link: watch::Receiver<Link>,
        mut incoming: tokio::sync::mpsc::Receiver<rumqttc::Publish>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let mut rediscover: Option<tokio::time::Instant> = None;
        self.read_outbox().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.dirty.wait() => {
                    for name in self.dirty.take() {
                        self.printer_changed(&name).await;
                    }
                }
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(&ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::debug!("MQTT: {n} watch events missed"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = link.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let up = matches!(*link.borrow_and_update(), Link::Up(_));
                    if up {
                        self.on_connected().await;
                    }
                }
                Some(msg) = incoming.recv() => {
                    if self.on_incoming(&msg) {
                        // Home Assistant (re)started: discovery again after a short random
                        // delay, as its documentation asks (many devices answer at once).
                        let delay = Duration::from_millis(fastrand::u64(200..2000));
                        rediscover = Some(tokio::time::Instant::now() + delay);
                    }
                }
                _ = tokio::time::sleep_until(rediscover.unwrap_or_else(tokio::time::Instant::now)), if rediscover.is_some() => {
                    rediscover = None;
                    self.publish_discovery();
                    // Retained states are replayed by the broker; republish them anyway in
                    // case they were lost.
                    self.published.clear();
                    self.publish_all_states().await;
                }
                _ = tick.tick() => {
                    self.read_outbox().await;
                    for (name, _) in self.printers.clone() {
                        self.printer_changed(&name).await;
                    }
                }
            }
            let dropped = self.queue.take_dropped();
            if dropped > 0 && !self.dropped_reported {
                tracing::warn!("MQTT: the publishing queue is full (the broker is not taking messages); dropping the oldest telemetry");
                self.dropped_reported = true;
            } else if dropped == 0 && self.dropped_reported && self.queue.is_empty() {
                self.dropped_reported = false;
            }
        }
    }

    fn slug_of(&self, name: &str) -> Option<&str> {
        self.printers.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_str())
    }

    fn name_of(&self, slug: &str) -> Option<&str> {
        self.printers.iter().find(|(_, s)| s == slug).map(|(n, _)| n.as_str())
    }

    /// Queues a retained message unless the same payload was queued last for its topic.
    fn retained(&mut self, msg: Message) {
        if self.published.get(&msg.topic) == Some(&msg.payload) {
            return;
        }
        self.published.insert(msg.topic.clone(), msg.payload.clone());
        self.queue.push(msg);
    }

    fn event(&self, slug: &str, body: serde_json::Value) {
        self.queue.push(Message::event(self.topics.leaf(slug, "event"), body.to_string()));
    }

    async fn read_outbox(&mut self) {
        // No server mirror: nothing is ever waiting.
        let n = match self.mirror.clone() {
            Some(m) => tokio::task::spawn_blocking(move || m.outbox().pending().ok()).await.ok().flatten(),
            None => Some(0),
        };
        if n != self.outbox {
            self.outbox = n;
            if let Some(n) = n {
                self.retained(Message::retained(self.topics.outbox(), n.to_string()));
            }
        }
    }

    fn view(&self, name: &str) -> Option<PrinterView> {
        self.board.view(name).map(|rx| rx.borrow().clone())
    }

    async fn printer_changed(&mut self, name: &str) {
        let Some(slug) = self.slug_of(name).map(str::to_string) else { return };
        let Some(v) = self.view(name) else { return };
        let now = SystemTime::now();
        for m in telemetry::view_messages(&self.topics, &slug, &v, self.outbox, now) {
            self.retained(m);
        }
        // The printer link going and coming back, as events.
        let before = self.phases.insert(name.to_string(), v.phase);
        match (before, v.phase) {
            (Some(b), WatchPhase::Offline) if b != WatchPhase::Offline => {
                self.event(&slug, telemetry::derived_event(name, "printer_offline", serde_json::json!({"reason": v.offline_reason}), now));
            }
            (Some(WatchPhase::Offline), p) if p != WatchPhase::Offline => {
                self.event(&slug, telemetry::derived_event(name, "printer_online", serde_json::json!({}), now));
            }
            _ => {}
        }
        if self.cfg.frames
            && let Some(path) = v.last_frame
            && self.frames.get(name) != Some(&path)
        {
            self.frames.insert(name.to_string(), path.clone());
            self.publish_frame(&slug, &path).await;
        }
    }

    async fn publish_frame(&mut self, slug: &str, path: &std::path::Path) {
        let max = config::MAX_FRAME_BYTES as u64;
        match tokio::fs::metadata(path).await {
            Ok(m) if m.len() > max => {
                tracing::info!("MQTT: frame {} is over {} MiB; not published", path.display(), max >> 20);
                return;
            }
            Err(e) => {
                tracing::debug!("MQTT: frame {} cannot be read: {e}", path.display());
                return;
            }
            Ok(_) => {}
        }
        match tokio::fs::read(path).await {
            Ok(jpeg) => {
                // Frames are large: not kept in the dedupe map.
                self.queue.push(Message { topic: self.topics.leaf(slug, "frame"), payload: jpeg, retain: true, reliable: false });
            }
            Err(e) => tracing::debug!("MQTT: frame {} cannot be read: {e}", path.display()),
        }
    }

    fn on_event(&mut self, ev: &WatchEvent) {
        let (mono, wall) = self.epoch;
        let since = |t: Instant| Instant::now().saturating_duration_since(t);
        let at = |t: Instant| if t >= mono { wall + (t - mono) } else { wall.checked_sub(mono - t).unwrap_or(wall) };
        let now = match ev {
            WatchEvent::Acted { done, .. } => at(*done),
            _ => SystemTime::now(),
        };
        if let Some((printer, body)) = telemetry::event_json(ev, now, since)
            && let Some(slug) = self.slug_of(&printer).map(str::to_string)
        {
            self.event(&slug, body);
        }
    }

    async fn on_connected(&mut self) {
        let subs: Vec<_> = self
            .topics
            .subscriptions()
            .into_iter()
            .chain(self.cfg.discovery.then(|| self.topics.ha_status()))
            .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce))
            .collect();
        self.published.clear();
        self.frames.clear();
        // The subscription goes straight to the connection, ahead of the queue.
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.subscribe_many(subs).await;
        });
        self.queue.push(Message::retained(self.topics.status(), "online"));
        self.published.insert(self.topics.status(), b"online".to_vec());
        self.publish_discovery();
        if let Some(n) = self.outbox {
            self.retained(Message::retained(self.topics.outbox(), n.to_string()));
        }
        self.publish_all_states().await;
    }

    async fn publish_all_states(&mut self) {
        for (name, _) in self.printers.clone() {
            self.printer_changed(&name).await;
        }
    }

    fn publish_discovery(&mut self) {
        if !self.cfg.discovery {
            return;
        }
        for e in discovery::host_entities(&self.topics, &self.host) {
            self.queue.push(Message::retained(e.topic(&self.topics), e.config.to_string()));
        }
        for (name, slug) in self.printers.clone() {
            let entities = discovery::printer_entities(&self.topics, &slug, &name);
            for e in &entities {
                self.queue.push(Message::retained(e.topic(&self.topics), e.config.to_string()));
            }
            let record = discovery::record(&self.topics, &entities).to_string();
            self.queue.push(Message::retained(self.topics.leaf(&slug, "ha"), record));
        }
    }

    /// Handles an incoming message; true when Home Assistant announced itself.
    fn on_incoming(&mut self, msg: &rumqttc::Publish) -> bool {
        match self.topics.parse(&msg.topic) {
            Incoming::HaStatus => msg.payload.as_ref() == b"online",
            Incoming::Command { printer, cmd } => {
                self.on_command(printer, cmd, &msg.payload, msg.retain);
                false
            }
            Incoming::Record { printer } => {
                self.on_record(printer, &msg.payload);
                false
            }
            Incoming::Other => false,
        }
    }

    fn on_command(&mut self, slug: &str, leaf: &str, payload: &[u8], retained: bool) {
        let Some(name) = self.name_of(slug).map(str::to_string) else {
            tracing::debug!("MQTT: a command for unknown printer `{slug}` ignored");
            return;
        };
        let slug = slug.to_string();
        let command = match commands::parse(leaf, payload, retained) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(printer = name, "MQTT: command on cmd/{leaf} not taken: {e}");
                self.event(&slug, telemetry::derived_event(&name, "command", serde_json::json!({"command": leaf, "ok": false, "error": e.to_string()}), SystemTime::now()));
                return;
            }
        };
        tracing::info!(printer = name, "MQTT: command {command:?}");
        let board = self.board.clone();
        let queue = self.queue.clone();
        let topic = self.topics.leaf(&slug, "event");
        tokio::spawn(async move {
            let what = commands::name(&command);
            let result = board.command(&name, command).await;
            let body = match &result {
                Ok(outcome) => serde_json::json!({"command": what, "ok": true, "outcome": format!("{outcome:?}")}),
                Err(e) => serde_json::json!({"command": what, "ok": false, "error": e.to_string()}),
            };
            queue.push(Message::event(topic, telemetry::derived_event(&name, "command", body, SystemTime::now()).to_string()));
        });
    }

    /// A printer's record of its discovery topics: clears what is no longer published
    /// (a printer removed from the settings: everything of it).
    fn on_record(&mut self, slug: &str, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let recorded = discovery::recorded_topics(payload, &self.topics);
        let current: Vec<String> = match self.name_of(slug) {
            Some(name) if self.cfg.discovery => {
                discovery::printer_entities(&self.topics, slug, name).iter().map(|e| e.topic(&self.topics)).collect()
            }
            _ => Vec::new(),
        };
        let stale: Vec<&String> = recorded.iter().filter(|t| !current.contains(t)).collect();
        for t in &stale {
            self.queue.push(Message::retained((*t).clone(), Vec::new()));
        }
        if self.name_of(slug).is_none() {
            tracing::info!("MQTT: printer `{slug}` is no longer configured: its Home Assistant entities and retained topics are removed");
            for leaf in topics::STATE_LEAVES {
                self.queue.push(Message::retained(self.topics.leaf(slug, leaf), Vec::new()));
            }
        } else if !self.cfg.discovery {
            self.queue.push(Message::retained(self.topics.leaf(slug, "ha"), Vec::new()));
        } else if !stale.is_empty() {
            tracing::info!("MQTT: {} old Home Assistant entities of `{slug}` removed", stale.len());
        }
    }
}
