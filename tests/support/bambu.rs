//! A simulated Bambu Lab printer for tests, against a real broker.
//!
//! A real printer is its own MQTT broker; here Debian's mosquitto plays the broker
//! ([`broker`]: TLS with a certificate made for the case, common name = the serial, user
//! `bblp` with the access code) and [`SimPrinter`] plays the firmware as a client of it,
//! the way a P1/A1 printer behaves on its report topic:
//!
//! - it subscribes to `device/<serial>/request` and publishes on `device/<serial>/report`;
//! - about once a second (`heartbeat`) a partial report (`"msg": 1`) with what changed,
//!   like the Wi-Fi level that changes all the time, and one right away on every change
//!   of state; the whole state (`"msg": 0`) only in answer to `pushall`;
//! - every report carries the printer's own `sequence_id` counter;
//! - `pause` / `resume` / `stop` (print commands with a `sequence_id`) are answered with an
//!   echo (`result: success`) and obeyed: `PAUSE`, `RUNNING`, `FAILED` with the
//!   "cancelled" error for a few seconds; or, in [`Commands::Refuse`], refused as a
//!   printer with Developer Mode off does (`err_code` 84033543); or, in
//!   [`Commands::Ignore`], silently dropped;
//! - a print runs `PREPARE` then `RUNNING`, its `mc_percent`/`layer_num` moving on at
//!   `percent_per_tick`, then `FINISH`; the test can pause it with the printer's own
//!   error (an error pause) or finish it at once.
//!
//! [`SimCamera`] is the printer's port-6000 camera: TLS with the broker's certificate (a
//! printer shows one certificate), the 80-byte access packet checked (a wrong code gets
//! the connection closed, as on the printer), then the bundled healthy or failing frames,
//! each behind a 16-byte header with its length, at a set rate. Broken modes send an
//! oversize header or a frame that is not a JPEG.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use super::mosquitto::{Mosquitto, Options, TlsOptions};

pub const SERIAL: &str = "01P00A391800123";
pub const CODE: &str = "pv7Xk2Qa";

/// A TLS broker as a Bambu printer runs it: certificate CN = `serial`, user `bblp` with
/// `code` (and `sim`, the simulated firmware's own login).
pub fn broker(serial: &str, code: &str) -> Mosquitto {
    let tls = TlsOptions { server_cn: serial.into(), ..TlsOptions::default() };
    // No Nagle delay on small messages, as on a printer's own broker.
    Mosquitto::start(Options::user("bblp", code).with_user("sim", "simpw").with_tls(tls).with_config_line("set_tcp_nodelay true"))
}

/// The SHA-256 fingerprint of the broker's certificate, as `printvigil setup` writes it.
pub fn fingerprint(m: &Mosquitto) -> String {
    printvigil::tlspin::Fingerprint::of(&m.certs.as_ref().unwrap().server_der).to_string()
}

/// What the simulated firmware does with pause/resume/stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commands {
    Obey,
    /// Developer Mode off: `result: failed`, `err_code` 84033543.
    Refuse,
    /// No answer, no change.
    Ignore,
}

/// The firmware's state.
#[derive(Debug, Clone)]
pub struct State {
    pub gcode_state: String,
    pub percent: u32,
    pub layer: u32,
    pub total_layers: u32,
    pub subtask_name: String,
    pub gcode_file: String,
    pub start_time: i64,
    pub print_error: u32,
    pub nozzle: f64,
    pub bed: f64,
    /// Percent per tick while RUNNING.
    pub percent_per_tick: u32,
    pub commands: Commands,
    /// Ticks left in PREPARE.
    prepare_ticks: u32,
    /// Ticks until `print_error` goes back to 0 after a stop.
    clear_error_ticks: u32,
    wifi: i32,
}

impl Default for State {
    fn default() -> Self {
        State {
            gcode_state: "IDLE".into(),
            percent: 0,
            layer: 0,
            total_layers: 0,
            subtask_name: String::new(),
            gcode_file: String::new(),
            start_time: 0,
            print_error: 0,
            nozzle: 24.5,
            bed: 23.0,
            percent_per_tick: 1,
            commands: Commands::Obey,
            prepare_ticks: 0,
            clear_error_ticks: 0,
            wifi: -50,
        }
    }
}

impl State {
    fn full(&self) -> Value {
        json!({
            "command": "push_status", "msg": 0,
            "gcode_state": self.gcode_state, "mc_percent": self.percent, "mc_remaining_time": 100 - self.percent.min(100),
            "layer_num": self.layer, "total_layer_num": self.total_layers,
            "subtask_name": self.subtask_name, "gcode_file": self.gcode_file,
            "task_id": "0", "subtask_id": "0", "project_id": "0", "profile_id": "0",
            "gcode_start_time": self.start_time.to_string(),
            "print_error": self.print_error, "mc_print_error_code": "0", "hms": [],
            "stg": [], "stg_cur": if self.gcode_state == "RUNNING" { 0 } else { 255 },
            "mc_print_stage": if self.gcode_state == "RUNNING" { "2" } else { "1" },
            "print_type": if self.gcode_state == "IDLE" { "idle" } else { "local" },
            "nozzle_temper": self.nozzle, "nozzle_target_temper": if self.gcode_state == "IDLE" { 0 } else { 220 },
            "bed_temper": self.bed, "bed_target_temper": if self.gcode_state == "IDLE" { 0 } else { 60 },
            "spd_lvl": 2, "spd_mag": 100, "wifi_signal": format!("{}dBm", self.wifi),
            "lights_report": [{"node": "chamber_light", "mode": "on"}],
            "ipcam": {"ipcam_dev": "1", "ipcam_record": "enable", "timelapse": "disable"},
        })
    }

    /// The fields a partial report of a state change carries.
    fn change(&self) -> Value {
        json!({
            "command": "push_status", "msg": 1,
            "gcode_state": self.gcode_state, "mc_percent": self.percent, "mc_remaining_time": 100 - self.percent.min(100),
            "layer_num": self.layer, "print_error": self.print_error,
        })
    }

    fn start(&mut self, name: &str) {
        self.gcode_state = "PREPARE".into();
        self.percent = 0;
        self.layer = 0;
        self.total_layers = 100;
        self.subtask_name = name.into();
        self.gcode_file = format!("{name}.gcode.3mf");
        self.start_time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        self.print_error = 0;
        self.prepare_ticks = 2;
    }

    /// One tick; true when the state changed.
    fn tick(&mut self) -> bool {
        if self.clear_error_ticks > 0 {
            self.clear_error_ticks -= 1;
            if self.clear_error_ticks == 0 {
                self.print_error = 0;
                return true;
            }
        }
        match self.gcode_state.as_str() {
            "PREPARE" => {
                self.prepare_ticks = self.prepare_ticks.saturating_sub(1);
                if self.prepare_ticks == 0 {
                    self.gcode_state = "RUNNING".into();
                    return true;
                }
                false
            }
            "RUNNING" if self.percent_per_tick > 0 => {
                self.percent = (self.percent + self.percent_per_tick).min(100);
                self.layer = self.percent * self.total_layers / 100;
                if self.percent >= 100 {
                    self.gcode_state = "FINISH".into();
                }
                true
            }
            _ => false,
        }
    }
}

enum Ctl {
    Start(String),
    Set(Box<dyn FnOnce(&mut State) + Send>),
    Raw(Vec<u8>),
}

/// Counts the tests look at.
#[derive(Debug, Default)]
pub struct Counters {
    pub pushalls: AtomicU64,
    pub commands: Mutex<Vec<Value>>,
    pub reports: AtomicU64,
}

/// The simulated firmware; see the module documentation.
pub struct SimPrinter {
    pub serial: String,
    state: Arc<Mutex<State>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    pub counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A rustls client config that trusts the broker's CA.
pub fn client_tls(m: &Mosquitto) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(m.certs.as_ref().unwrap().ca_der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl SimPrinter {
    /// Connects the firmware to the broker; `heartbeat`: the idle report interval, `tick`:
    /// how often a running print moves on.
    pub async fn start(broker: &Mosquitto, serial: &str, heartbeat: Duration, tick: Duration) -> SimPrinter {
        let mut opts = MqttOptions::new(format!("sim-{serial}"), "127.0.0.1", broker.port);
        opts.set_credentials("sim", "simpw");
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(client_tls(broker))));
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let request = format!("device/{serial}/request");
        let report = format!("device/{serial}/report");
        let (in_tx, mut incoming) = mpsc::unbounded_channel::<Vec<u8>>();
        let (connected_tx, mut connected) = mpsc::unbounded_channel::<()>();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel::<()>();
        let sub_client = client.clone();
        let req_topic = request.clone();
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe(req_topic.clone(), QoS::AtLeastOnce);
                        let _ = connected_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == req_topic => {
                        let _ = in_tx.send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    // The broker is down (restarting): the next poll reconnects.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let state = Arc::new(Mutex::new(State::default()));
        let counters = Arc::new(Counters::default());
        let (ctl_tx, mut ctl) = mpsc::unbounded_channel::<Ctl>();
        let st = state.clone();
        let cn = counters.clone();
        let logic = tokio::spawn(async move {
            let seq = AtomicU64::new(58_000);
            let publish = |body: Value| {
                let mut body = body;
                if body["print"]["command"] == "push_status" {
                    body["print"]["sequence_id"] = json!(seq.fetch_add(1, Ordering::Relaxed).to_string());
                    cn.reports.fetch_add(1, Ordering::Relaxed);
                }
                let _ = client.try_publish(report.clone(), QoS::AtMostOnce, false, body.to_string());
            };
            let mut ticks = tokio::time::interval(tick);
            let mut beats = tokio::time::interval(heartbeat);
            loop {
                tokio::select! {
                    Some(()) = connected.recv() => {}
                    Some(payload) = incoming.recv() => {
                        let Ok(v) = serde_json::from_slice::<Value>(&payload) else { continue };
                        if v["pushing"]["command"] == "pushall" {
                            cn.pushalls.fetch_add(1, Ordering::Relaxed);
                            let full = st.lock().unwrap().full();
                            publish(json!({"print": full}));
                            continue;
                        }
                        let cmd = v["print"]["command"].as_str().unwrap_or("").to_string();
                        if !matches!(cmd.as_str(), "pause" | "resume" | "stop") {
                            continue;
                        }
                        cn.commands.lock().unwrap().push(v.clone());
                        let seq_id = v["print"]["sequence_id"].clone();
                        let mode = st.lock().unwrap().commands;
                        match mode {
                            Commands::Ignore => {}
                            Commands::Refuse => publish(json!({"print": {"command": cmd, "sequence_id": seq_id,
                                "result": "failed", "reason": "mqtt message verify failed", "err_code": 84033543}})),
                            Commands::Obey => {
                                publish(json!({"print": {"command": cmd, "sequence_id": seq_id, "param": "", "result": "success"}}));
                                let change = {
                                    let mut s = st.lock().unwrap();
                                    let before = s.gcode_state.clone();
                                    match (cmd.as_str(), before.as_str()) {
                                        ("pause", "RUNNING" | "PREPARE") => s.gcode_state = "PAUSE".into(),
                                        ("resume", "PAUSE") => {
                                            s.gcode_state = "RUNNING".into();
                                            s.print_error = 0;
                                        }
                                        ("stop", "RUNNING" | "PAUSE" | "PREPARE") => {
                                            s.gcode_state = "FAILED".into();
                                            s.print_error = 0x0300_400C;
                                            s.clear_error_ticks = 10;
                                        }
                                        _ => {}
                                    }
                                    (s.gcode_state != before).then(|| s.change())
                                };
                                if let Some(c) = change {
                                    publish(json!({"print": c}));
                                }
                            }
                        }
                    }
                    Some(c) = ctl.recv() => {
                        let change = {
                            let mut s = st.lock().unwrap();
                            match c {
                                Ctl::Start(name) => {
                                    s.start(&name);
                                    // Everything that changed with the new job, in one diff.
                                    let mut c = s.change();
                                    for (k, v) in s.full().as_object().unwrap() {
                                        if ["subtask_name", "gcode_file", "gcode_start_time", "total_layer_num", "print_type", "nozzle_target_temper", "bed_target_temper"].contains(&k.as_str()) {
                                            c[k] = v.clone();
                                        }
                                    }
                                    Some(c)
                                }
                                Ctl::Set(f) => {
                                    f(&mut s);
                                    Some(s.change())
                                }
                                Ctl::Raw(bytes) => {
                                    let _ = client.try_publish(report.clone(), QoS::AtMostOnce, false, bytes);
                                    None
                                }
                            }
                        };
                        if let Some(c) = change {
                            publish(json!({"print": c}));
                        }
                    }
                    _ = ticks.tick() => {
                        let change = {
                            let mut s = st.lock().unwrap();
                            s.tick().then(|| s.change())
                        };
                        if let Some(c) = change {
                            publish(json!({"print": c}));
                        }
                    }
                    _ = beats.tick() => {
                        let wifi = {
                            let mut s = st.lock().unwrap();
                            s.wifi = if s.wifi == -50 { -51 } else { -50 };
                            s.nozzle += 0.03125;
                            json!({"command": "push_status", "msg": 1, "wifi_signal": format!("{}dBm", s.wifi), "nozzle_temper": s.nozzle})
                        };
                        publish(json!({"print": wifi}));
                    }
                }
            }
        });
        // A real printer is its own broker: it hears requests from the start.
        tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
            .await
            .expect("the simulated printer did not subscribe within 10 s");
        SimPrinter { serial: serial.into(), state, ctl: ctl_tx, counters, tasks: vec![pump, logic] }
    }

    /// Starts a print of plate `name` (PREPARE, then RUNNING).
    pub fn start_print(&self, name: &str) {
        let _ = self.ctl.send(Ctl::Start(name.into()));
    }

    /// Changes the state and reports the change (as a partial report).
    pub fn set(&self, f: impl FnOnce(&mut State) + Send + 'static) {
        let _ = self.ctl.send(Ctl::Set(Box::new(f)));
    }

    /// The printer pauses the print itself with `print_error` = `code`.
    pub fn error_pause(&self, code: u32) {
        self.set(move |s| {
            s.gcode_state = "PAUSE".into();
            s.print_error = code;
        });
    }

    /// Publishes raw bytes on the report topic.
    pub fn raw(&self, bytes: &[u8]) {
        let _ = self.ctl.send(Ctl::Raw(bytes.to_vec()));
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap().clone()
    }

    /// Waits until the firmware's state satisfies `ok`.
    pub async fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&State) -> bool) -> State {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let s = self.state();
            if ok(&s) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "the simulated printer never got {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn commands(&self) -> Vec<Value> {
        self.counters.commands.lock().unwrap().clone()
    }
}

impl Drop for SimPrinter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the simulated camera sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CamMode {
    /// The bundled healthy frames (p = 0 with the demo model).
    Healthy,
    /// The bundled failing frames.
    Failing,
    /// A header announcing 200 MiB.
    Oversize,
    /// A frame that is not a JPEG (a PNG signature).
    NotJpeg,
}

/// The bundled frames whose names contain `kind` (`healthy`, `failing`).
pub fn frames(kind: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/frames");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(kind))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// The printer's port-6000 camera; see the module documentation.
pub struct SimCamera {
    pub port: u16,
    mode: Arc<Mutex<CamMode>>,
    pub frames_sent: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    /// Connections closed because the access packet was wrong.
    pub refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SimCamera {
    /// Serves with the broker's certificate (the printer's), checking `code`, sending
    /// `fps` frames a second (0: as fast as the reader takes them).
    pub async fn start(broker: &Mosquitto, code: &str, mode: CamMode, fps: f64) -> SimCamera {
        use rustls::pki_types::pem::PemObject;
        let certs = broker.certs.as_ref().unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certs.server_der.clone().into()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let frames_sent = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (healthy, failing) = (Arc::new(frames("healthy")), Arc::new(frames("failing")));
        let code = code.to_string();
        let (m, sent, conns, refs) = (mode.clone(), frames_sent.clone(), connections.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                conns.fetch_add(1, Ordering::Relaxed);
                let (acceptor, m, sent, refs, code) = (acceptor.clone(), m.clone(), sent.clone(), refs.clone(), code.clone());
                let (healthy, failing) = (healthy.clone(), failing.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut auth = [0u8; 80];
                    if tls.read_exact(&mut auth).await.is_err() {
                        return;
                    }
                    let field = |b: &[u8]| b.split(|&c| c == 0).next().unwrap_or(b).to_vec();
                    let ok = auth[0..8] == [0x40, 0, 0, 0, 0, 0x30, 0, 0]
                        && field(&auth[16..48]) == b"bblp"
                        && field(&auth[48..80]) == code.as_bytes();
                    if !ok {
                        refs.fetch_add(1, Ordering::Relaxed);
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let mut i = 0usize;
                    loop {
                        let mode = *m.lock().unwrap();
                        let body: Vec<u8> = match mode {
                            CamMode::Healthy => healthy[i % healthy.len()].clone(),
                            CamMode::Failing => failing[i % failing.len()].clone(),
                            CamMode::Oversize => Vec::new(),
                            CamMode::NotJpeg => b"\x89PNG\r\n\x1a\n not a jpeg at all".to_vec(),
                        };
                        let len = if mode == CamMode::Oversize { 200u32 << 20 } else { body.len() as u32 };
                        let mut header = [0u8; 16];
                        header[0..4].copy_from_slice(&len.to_le_bytes());
                        header[8..12].copy_from_slice(&1u32.to_le_bytes());
                        if tls.write_all(&header).await.is_err() || tls.write_all(&body).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        if fps > 0.0 {
                            tokio::time::sleep(Duration::from_secs_f64(1.0 / fps)).await;
                        }
                    }
                });
            }
        });
        SimCamera { port, mode, frames_sent, connections, refused, task }
    }

    pub fn set(&self, mode: CamMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for SimCamera {
    fn drop(&mut self) {
        self.task.abort();
    }
}
