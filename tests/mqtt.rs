//! The MQTT sink against a real broker (Debian's mosquitto, started here on 127.0.0.1
//! with password auth or TLS; tests/support/mosquitto.rs), mostly inside the real
//! `printvigil run` watching simulated printers whose cameras replay the bundled frames:
//! retained state and Home Assistant discovery as Home Assistant expects it (every
//! config's keys checked against the documented schema of its entity type, below), the
//! last will on SIGKILL, commands pausing a printer, the broker down and back, a wrong
//! password, TLS verified (a wrong CA, a wrong host name and a missing client
//! certificate refused; mutual TLS), and a printer removed from the config.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use printvigil::secret::Secret;
use printvigil::sink::mqtt::client::Link;
use printvigil::sink::mqtt::{Inputs, MqttConfig, MqttSink};
use printvigil::watch::view::Board;
use serde_json::Value;
use support::daemon::Daemon;
use support::mosquitto::{Mosquitto, Options, TlsOptions};
use support::mqtt_client::{Client, Got};
use support::recorder::Recorder;

const USER: &str = "printvigil";
const PASS: &str = "broker-pass-8d1f2e";
const PREFIX: &str = "printvigil/testhost";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// Home Assistant's documented discovery schema (home-assistant.io, source/_integrations/
// mqtt.markdown and <component>.mqtt.markdown): the keys each entity type takes, by full
// name and abbreviation, and the required ones. HA ignores unknown keys, so a typo would
// pass silently there: every key printvigil sends must be in these tables.

/// Keys every MQTT entity takes: (full name, abbreviation).
const COMMON: &[(&str, &str)] = &[
    ("~", "~"),
    ("availability", "avty"),
    ("availability_mode", "avty_mode"),
    ("availability_template", "avty_tpl"),
    ("availability_topic", "avty_t"),
    ("payload_available", "pl_avail"),
    ("payload_not_available", "pl_not_avail"),
    ("device", "dev"),
    ("enabled_by_default", "en"),
    ("encoding", "e"),
    ("entity_category", "ent_cat"),
    ("entity_picture", "ent_pic"),
    ("icon", "ic"),
    ("json_attributes_template", "json_attr_tpl"),
    ("json_attributes_topic", "json_attr_t"),
    ("name", "name"),
    ("object_id", "obj_id"),
    ("default_entity_id", "def_ent_id"),
    ("unique_id", "uniq_id"),
    ("qos", "qos"),
    ("origin", "o"),
    ("platform", "p"),
];

/// Per component: (required keys, other documented keys).
fn schema(component: &str) -> (&'static [&'static str], &'static [(&'static str, &'static str)]) {
    match component {
        "sensor" => (
            &["state_topic"],
            &[
                ("state_topic", "stat_t"),
                ("device_class", "dev_cla"),
                ("expire_after", "exp_aft"),
                ("force_update", "frc_upd"),
                ("last_reset_value_template", "lrst_val_tpl"),
                ("options", "ops"),
                ("state_class", "stat_cla"),
                ("suggested_display_precision", "sug_dsp_prc"),
                ("unit_of_measurement", "unit_of_meas"),
                ("value_template", "val_tpl"),
            ],
        ),
        "binary_sensor" => (
            &["state_topic"],
            &[
                ("state_topic", "stat_t"),
                ("device_class", "dev_cla"),
                ("expire_after", "exp_aft"),
                ("force_update", "frc_upd"),
                ("off_delay", "off_dly"),
                ("payload_on", "pl_on"),
                ("payload_off", "pl_off"),
                ("value_template", "val_tpl"),
            ],
        ),
        "image" => (
            &[],
            &[("image_topic", "img_t"), ("url_topic", "url_t"), ("content_type", "cont_type"), ("image_encoding", "img_e"), ("url_template", "url_tpl")],
        ),
        "button" => (
            &["command_topic"],
            &[("command_topic", "cmd_t"), ("command_template", "cmd_tpl"), ("device_class", "dev_cla"), ("payload_press", "pl_prs"), ("retain", "ret")],
        ),
        "switch" => (
            &["command_topic"],
            &[
                ("command_topic", "cmd_t"),
                ("command_template", "cmd_tpl"),
                ("device_class", "dev_cla"),
                ("optimistic", "opt"),
                ("payload_on", "pl_on"),
                ("payload_off", "pl_off"),
                ("retain", "ret"),
                ("state_off", "stat_off"),
                ("state_on", "stat_on"),
                ("state_topic", "stat_t"),
                ("value_template", "val_tpl"),
            ],
        ),
        "number" => (
            &["command_topic"],
            &[
                ("command_topic", "cmd_t"),
                ("command_template", "cmd_tpl"),
                ("device_class", "dev_cla"),
                ("max", "max"),
                ("min", "min"),
                ("mode", "mode"),
                ("optimistic", "opt"),
                ("payload_reset", "pl_rst"),
                ("retain", "ret"),
                ("state_topic", "stat_t"),
                ("step", "step"),
                ("unit_of_measurement", "unit_of_meas"),
                ("value_template", "val_tpl"),
            ],
        ),
        other => panic!("no schema table for component {other}"),
    }
}

const DEVICE_KEYS: &[(&str, &str)] = &[
    ("identifiers", "ids"),
    ("connections", "cns"),
    ("name", "name"),
    ("manufacturer", "mf"),
    ("model", "mdl"),
    ("model_id", "mdl_id"),
    ("sw_version", "sw"),
    ("hw_version", "hw"),
    ("serial_number", "sn"),
    ("suggested_area", "sa"),
    ("configuration_url", "cu"),
    ("via_device", "via_device"),
];
const ORIGIN_KEYS: &[(&str, &str)] = &[("name", "name"), ("sw_version", "sw"), ("support_url", "url")];

fn has(keys: &[(&str, &str)], k: &str) -> bool {
    keys.iter().any(|(full, abbr)| *full == k || *abbr == k)
}

fn get<'a>(cfg: &'a Value, full: &str, keys: &[(&str, &str)]) -> Option<&'a Value> {
    let abbr = keys.iter().find(|(f, _)| *f == full).map(|(_, a)| *a).unwrap_or(full);
    cfg.get(full).or_else(|| cfg.get(abbr))
}

/// A topic value with `~` expanded (at the start or the end, as HA does).
fn expand(cfg: &Value, topic: &str) -> String {
    let base = cfg.get("~").and_then(Value::as_str).unwrap_or("");
    if let Some(rest) = topic.strip_prefix('~') {
        format!("{base}{rest}")
    } else if let Some(rest) = topic.strip_suffix('~') {
        format!("{rest}{base}")
    } else {
        topic.to_string()
    }
}

/// Checks one discovery message as Home Assistant's schema does; returns its topics
/// (`*_topic` values, expanded).
fn validate_discovery(topic: &str, payload: &[u8]) -> (String, Value, Vec<String>) {
    let parts: Vec<&str> = topic.split('/').collect();
    let [disc, component, object_id, "config"] = parts[..] else { panic!("not a discovery topic: {topic}") };
    assert_eq!(disc, "homeassistant");
    assert!(object_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "object id {object_id:?} has characters HA refuses");
    let cfg: Value = serde_json::from_slice(payload).unwrap_or_else(|e| panic!("{topic}: not JSON ({e})"));
    let obj = cfg.as_object().unwrap_or_else(|| panic!("{topic}: the payload must be a JSON object"));
    let (required, specific) = schema(component);
    for k in obj.keys() {
        assert!(has(COMMON, k) || has(specific, k), "{topic}: key `{k}` is not in HA's documented schema for {component}");
    }
    for r in required {
        assert!(get(&cfg, r, specific).is_some(), "{topic}: required key `{r}` missing");
    }
    // unique_id: present, and the object id (HA's advice).
    let uid = get(&cfg, "unique_id", COMMON).and_then(Value::as_str).unwrap_or_else(|| panic!("{topic}: no unique_id"));
    assert_eq!(uid, object_id, "{topic}: object id = unique_id");
    // device: identifiers or connections; every key documented.
    let dev = get(&cfg, "device", COMMON).unwrap_or_else(|| panic!("{topic}: no device"));
    for k in dev.as_object().unwrap().keys() {
        assert!(has(DEVICE_KEYS, k), "{topic}: device key `{k}` is not documented");
    }
    assert!(get(dev, "identifiers", DEVICE_KEYS).is_some() || get(dev, "connections", DEVICE_KEYS).is_some(), "{topic}: device without identifiers");
    let origin = get(&cfg, "origin", COMMON).unwrap_or_else(|| panic!("{topic}: no origin"));
    for k in origin.as_object().unwrap().keys() {
        assert!(has(ORIGIN_KEYS, k), "{topic}: origin key `{k}` is not documented");
    }
    assert!(get(origin, "name", ORIGIN_KEYS).and_then(Value::as_str).is_some(), "{topic}: origin.name is required");
    assert!(
        !(get(&cfg, "availability", COMMON).is_some() && get(&cfg, "availability_topic", COMMON).is_some()),
        "{topic}: availability and availability_topic are exclusive"
    );
    // Per component rules from the docs.
    match component {
        "sensor" => {
            if let Some(cat) = get(&cfg, "entity_category", COMMON) {
                assert_eq!(cat, "diagnostic", "{topic}: a sensor's entity_category must be diagnostic");
            }
            if get(&cfg, "options", specific).is_some() {
                assert_eq!(get(&cfg, "device_class", specific).and_then(Value::as_str), Some("enum"), "{topic}: options needs device_class enum");
            }
            if let Some(sc) = get(&cfg, "state_class", specific) {
                assert!(["measurement", "total", "total_increasing"].contains(&sc.as_str().unwrap()), "{topic}: state_class {sc}");
            }
        }
        "image" => {
            let (img, url) = (get(&cfg, "image_topic", specific), get(&cfg, "url_topic", specific));
            assert!(img.is_some() != url.is_some(), "{topic}: exactly one of image_topic and url_topic");
            assert!(!(url.is_some() && get(&cfg, "content_type", specific).is_some()), "{topic}: content_type not with url_topic");
        }
        "number" => {
            let n = |k: &str, d: f64| get(&cfg, k, specific).map(|v| v.as_f64().unwrap()).unwrap_or(d);
            assert!(n("min", 1.0) < n("max", 100.0) && n("step", 1.0) >= 0.001, "{topic}: min/max/step");
            if let Some(m) = get(&cfg, "mode", specific) {
                assert!(["auto", "box", "slider"].contains(&m.as_str().unwrap()));
            }
        }
        "binary_sensor" | "switch" | "button" => {}
        _ => {}
    }
    let topics: Vec<String> = obj
        .iter()
        .filter(|(k, _)| k.ends_with("_topic") || k.ends_with("_t"))
        .filter_map(|(_, v)| v.as_str())
        .map(|t| expand(&cfg, t))
        .collect();
    (component.to_string(), cfg, topics)
}

// ---------------------------------------------------------------------------------------
// The daemon's setup

/// Camera folders: the bundled frames as a print that goes wrong, or one that stays healthy.
fn camera_dir(dir: &Path, failing: bool) -> PathBuf {
    let cam = dir.join(if failing { "cam-failing" } else { "cam-healthy" });
    std::fs::create_dir_all(&cam).unwrap();
    let frames = repo().join("models/frames");
    let mut n = 0;
    let mut put = |name: &str, times: usize| {
        for _ in 0..times {
            std::fs::copy(frames.join(name), cam.join(format!("{n:03}.jpg"))).unwrap();
            n += 1;
        }
    };
    if failing {
        for i in 0..6 {
            put(&format!("0{i}-healthy.jpg"), 6);
        }
        for i in 6..10 {
            put(&format!("0{i}-failing.jpg"), 3);
        }
    } else {
        put("02-healthy.jpg", 1);
    }
    cam
}

struct Printer<'a> {
    name: &'a str,
    failing: bool,
    start_after: f64,
}

fn write_config(dir: &Path, mqtt: &str, printers: &[Printer], extra: &str) -> PathBuf {
    let model = repo().join("models/demo.onnx");
    let mut text = format!(
        "state_dir = {:?}\n{extra}\n[detector]\nmodel = {model:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = 0.1\nallow_fast_cadence = true\ncooldown_secs = 30\n\
         [mqtt]\n{mqtt}\ntopic_prefix = {PREFIX:?}\nreconnect_max_secs = 1\n",
        dir.join("state")
    );
    for p in printers {
        let cam = camera_dir(dir, p.failing);
        text.push_str(&format!(
            "[[printers]]\nname = {:?}\nkind = \"simulated\"\nfile = \"benchy.gcode\"\nstart_after_secs = {}\nprint_secs = 3600\n\
             camera = {{ kind = \"files\", url = {cam:?} }}\n",
            p.name, p.start_after
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn mqtt_block(broker: &Mosquitto, user: Option<(&str, &str)>) -> String {
    let mut s = format!("url = {:?}\n", broker.url());
    if let Some((u, p)) = user {
        s.push_str(&format!("username = {u:?}\npassword = {p:?}\n"));
    }
    s
}

fn daemon(dir: &Path, config: &Path) -> Daemon {
    support::init_onnxruntime();
    Daemon::spawn(config, &dir.join("printvigil.log"), &[])
}

fn topic(printer: &str, leaf: &str) -> String {
    format!("{PREFIX}/{printer}/{leaf}")
}

/// The discovery configs a client got (non-empty ones), by topic.
fn discovery(c: &Client) -> BTreeMap<String, Got> {
    c.all().into_iter().filter(|g| g.topic.starts_with("homeassistant/") && !g.payload.is_empty()).map(|g| (g.topic.clone(), g)).collect()
}

const PRINTER_ENTITIES: usize = 10;

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_a_failing_print_paused_and_the_last_will_on_sigkill() {
    let broker = Mosquitto::start(Options::user(USER, PASS));
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sub = Client::connect(&broker, Some((USER, PASS)), &["#"]).await;
    let notify = format!("[[notify]]\nkind = \"webhook\"\nurl = {:?}\nevents = [\"pause\"]\n", rec.url("/hook"));
    let config = write_config(dir.path(), &mqtt_block(&broker, Some((USER, PASS))), &[Printer { name: "Voron 2.4", failing: true, start_after: 0.3 }], &notify);
    let mut d = daemon(dir.path(), &config);
    let events = topic("voron-2-4", "event");
    sub.wait_event(&events, "pause_confirmed", Duration::from_secs(90)).await;
    let frame = sub.wait("the decision frame", Duration::from_secs(10), |g| g.topic == topic("voron-2-4", "frame")).await;
    assert_eq!(&frame.payload[..2], &[0xFF, 0xD8], "the frame is a JPEG");

    // Events, in order, as non-retained JSON.
    let names: Vec<String> = sub.on(&events).iter().map(|g| g.json()["event"].as_str().unwrap().to_string()).collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("no {n} event: {names:?}"));
    assert!(pos("print_started") < pos("pause_requested") && pos("pause_requested") < pos("pause_confirmed"), "{names:?}");
    let started = sub.on(&events).into_iter().find(|g| g.json()["event"] == "print_started").unwrap().json();
    assert_eq!((started["printer"].as_str(), started["file"].as_str()), (Some("Voron 2.4"), Some("benchy.gcode")));

    // Discovery: every config valid by HA's schema, one device per printer, the topics
    // they name are published.
    let configs = discovery(&sub);
    assert_eq!(configs.len(), PRINTER_ENTITIES + 1, "{:?}", configs.keys().collect::<Vec<_>>());
    let mut components = Vec::new();
    let mut named_topics = HashSet::new();
    for (t, g) in &configs {
        let (component, cfg, topics) = validate_discovery(t, &g.payload);
        assert_eq!(get(&cfg, "availability_topic", COMMON).and_then(Value::as_str), Some(format!("{PREFIX}/status").as_str()));
        components.push(component);
        named_topics.extend(topics);
    }
    components.sort();
    assert_eq!(components, ["binary_sensor", "button", "image", "number", "sensor", "sensor", "sensor", "sensor", "sensor", "sensor", "switch"]);

    // A client that subscribes now gets the whole picture, retained.
    let late = Client::connect(&broker, Some((USER, PASS)), &[&format!("{PREFIX}/#"), "homeassistant/#"]).await;
    let wait_retained = |t: String| {
        let late = &late;
        async move { late.wait(&format!("retained {t}"), Duration::from_secs(5), |g| g.topic == t && g.retain).await }
    };
    assert_eq!(wait_retained(format!("{PREFIX}/status")).await.text(), "online");
    assert_eq!(wait_retained(topic("voron-2-4", "phase")).await.text(), "paused");
    assert_eq!(wait_retained(topic("voron-2-4", "failing")).await.text(), "ON");
    assert_eq!(wait_retained(topic("voron-2-4", "watching")).await.text(), "ON");
    assert_eq!(wait_retained(topic("voron-2-4", "file")).await.text(), "benchy.gcode");
    assert_eq!(wait_retained(topic("voron-2-4", "link")).await.text(), "online");
    let decision = wait_retained(topic("voron-2-4", "decision")).await.json();
    assert_eq!(decision["decision"], "pause");
    assert!(decision["at"].as_str().unwrap().ends_with('Z') && decision["p"].as_f64().unwrap() > 0.0, "{decision}");
    let p: f64 = wait_retained(topic("voron-2-4", "p")).await.text().parse().unwrap();
    let np: f64 = wait_retained(topic("voron-2-4", "normalized_p")).await.text().parse().unwrap();
    assert!(p > 0.0 && np > 0.0, "p={p} normalized_p={np}");
    let state = wait_retained(topic("voron-2-4", "state")).await.json();
    assert_eq!((state["phase"].as_str(), state["acted"].as_bool(), state["failing"].as_bool()), (Some("paused"), Some(true), Some(true)), "{state}");
    assert_eq!(wait_retained(topic("voron-2-4", "frame")).await.payload, frame.payload);
    for t in &named_topics {
        if !t.contains("/cmd/") {
            late.wait(&format!("a retained message on {t}, named by discovery"), Duration::from_secs(5), |g| &g.topic == t && g.retain).await;
        }
    }
    assert_eq!(discovery(&late).len(), PRINTER_ENTITIES + 1, "discovery configs are retained");

    // The notification: which printer, which file, what was seen and done, the frame.
    let hook = rec.wait("/hook", 1, Duration::from_secs(10)).await;
    let payload: Value = serde_json::from_slice(&hook[0].part("payload").unwrap().data).unwrap();
    let msg = payload["message"].as_str().unwrap();
    assert!(msg.starts_with("paused `benchy.gcode` on Voron 2.4: spaghetti detected, p=") && msg.ends_with("; frame attached"), "{msg}");
    assert_eq!(&hook[0].part("frame").unwrap().data[..2], &[0xFF, 0xD8]);

    // SIGKILL: the broker publishes the last will.
    sub.clear();
    d.kill();
    let will = sub.wait("the last will", Duration::from_secs(10), |g| g.topic == format!("{PREFIX}/status")).await;
    assert_eq!(will.text(), "offline");
    let after = Client::connect(&broker, Some((USER, PASS)), &[&format!("{PREFIX}/status")]).await;
    assert_eq!(after.wait("retained offline", Duration::from_secs(5), |g| g.retain).await.text(), "offline");
    let log = d.log_text();
    assert!(!log.contains(PASS), "the broker password is in the log");
    assert_eq!(log.matches("MQTT: connected to").count(), 1, "{}", d.tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_home_assistant_act_through_the_watch() {
    let broker = Mosquitto::start(Options::user(USER, PASS));
    let dir = tempfile::tempdir().unwrap();
    let cmd = |c: &str| topic("ender", &format!("cmd/{c}"));
    let sub = Client::connect(&broker, Some((USER, PASS)), &[&format!("{PREFIX}/#")]).await;
    // A retained command left on the broker is replayed at connect: it must not pause.
    sub.publish(&cmd("pause"), "PAUSE", true).await;
    let config = write_config(dir.path(), &mqtt_block(&broker, Some((USER, PASS))), &[Printer { name: "ender", failing: false, start_after: 0.2 }], "");
    let mut d = daemon(dir.path(), &config);
    let events = topic("ender", "event");
    let refused = sub.wait_event(&events, "command", Duration::from_secs(30)).await.json();
    assert_eq!(refused["ok"], false);
    assert!(refused["error"].as_str().unwrap().contains("retained"), "{refused}");
    sub.publish(&cmd("pause"), "", true).await;
    sub.wait("scored frames", Duration::from_secs(30), |g| g.topic == topic("ender", "state") && g.json()["frame"].as_u64() >= Some(3)).await;

    let answer = |what: &'static str, want: fn(&Value) -> bool| {
        let sub = &sub;
        let events = events.clone();
        async move {
            sub.wait(&format!("the answer to {what}"), Duration::from_secs(10), |g| {
                g.topic == events && serde_json::from_slice::<Value>(&g.payload).is_ok_and(|j| j["event"] == "command" && want(&j))
            })
            .await
            .json()
        }
    };
    sub.publish(&cmd("watching"), "OFF", false).await;
    answer("watching OFF", |j| j["command"] == "watching" && j["ok"] == true).await;
    sub.wait("watching OFF", Duration::from_secs(5), |g| g.topic == topic("ender", "watching") && g.text() == "OFF").await;
    sub.publish(&cmd("watching"), "ON", false).await;
    sub.wait("watching ON", Duration::from_secs(5), |g| g.topic == topic("ender", "watching") && g.text() == "ON").await;
    sub.publish(&cmd("snooze"), "30", false).await;
    sub.wait("snoozed 30 min", Duration::from_secs(5), |g| g.topic == topic("ender", "snooze") && g.text() == "30").await;
    answer("snooze", |j| j["command"] == "snooze" && j["ok"] == true).await;
    sub.publish(&cmd("watching"), "maybe", false).await;
    let bad = answer("a bad switch payload", |j| j["command"] == "watching" && j["ok"] == false).await;
    assert!(bad["error"].as_str().unwrap().contains("ON or OFF"), "{bad}");
    // The button: the pause goes through the watch's own path and the printer confirms it.
    sub.publish(&cmd("pause"), "PAUSE", false).await;
    sub.wait_event(&events, "pause_confirmed", Duration::from_secs(10)).await;
    sub.wait("phase paused", Duration::from_secs(5), |g| g.topic == topic("ender", "phase") && g.text() == "paused").await;
    let ok = answer("the button", |j| j["command"] == "pause" && j["ok"] == true).await;
    assert_eq!(ok["outcome"], "PauseRequested");
    sub.publish(&cmd("pause"), "PAUSE", false).await;
    answer("a second press", |j| j["command"] == "pause" && j["error"].as_str().is_some_and(|e| e.contains("nothing is printing"))).await;
    let log = d.log_text();
    assert_eq!(log.matches("print PAUSED by printvigil").count(), 1, "{}", d.tail(40));
    d.terminate(Duration::from_secs(15)).await;
    // A clean stop says goodbye itself (no last will needed).
    sub.wait("offline on a clean stop", Duration::from_secs(5), |g| g.topic == format!("{PREFIX}/status") && g.text() == "offline").await;
    assert!(d.log_text().contains("stopped"), "{}", d.tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_for_25_s_blocks_nothing_and_the_state_comes_back() {
    let mut broker = Mosquitto::start(Options::anonymous());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt_block(&broker, None), &[Printer { name: "prusa", failing: false, start_after: 0.2 }], "");
    let sub = Client::connect(&broker, None, &["#"]).await;
    let mut d = daemon(dir.path(), &config);
    sub.wait("printing", Duration::from_secs(30), |g| g.topic == topic("prusa", "phase") && g.text() == "printing").await;
    let before = d.wait_frame(5, Duration::from_secs(30)).await;
    drop(sub);

    // The broker is gone for 25 s (a real outage lasts minutes: the same code path, the
    // reconnect wait capped by reconnect_max_secs).
    let down_at = Instant::now();
    broker.kill();
    let outage = Duration::from_secs(25);
    while down_at.elapsed() < outage {
        d.assert_alive();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = d.last_frame().unwrap() - before;
    assert!(during >= 25, "frames kept being scored while the broker was down: {during} in {outage:?}");
    broker.start_again();
    let back = Instant::now();
    // Nothing retained survived the broker (no persistence): printvigil publishes it all again.
    let sub = Client::connect(&broker, None, &["#"]).await;
    sub.wait("status online again", Duration::from_secs(15), |g| g.topic == format!("{PREFIX}/status") && g.text() == "online").await;
    sub.wait("the state again", Duration::from_secs(5), |g| g.topic == topic("prusa", "phase") && g.text() == "printing").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while discovery(&sub).len() < PRINTER_ENTITIES + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(discovery(&sub).len(), PRINTER_ENTITIES + 1, "discovery published again");
    let republished = back.elapsed();
    let log = d.log_text();
    assert_eq!(log.matches("MQTT: connection to").count(), 1, "the loss is said once:\n{}", d.tail(40));
    assert!(log.matches("MQTT: cannot connect").count() <= 1, "retries are not each logged:\n{}", d.tail(40));
    assert!(log.contains("connected to 127.0.0.1") && log.contains("again (after"), "{}", d.tail(40));
    println!(
        "FIGURE mqtt outage: {:.0} s broker down, {during} frames scored meanwhile; broker back -> state and discovery republished in {:.2} s (reconnect_max_secs = 1)",
        outage.as_secs_f64(),
        republished.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_said_once_and_detection_goes_on() {
    let broker = Mosquitto::start(Options::user(USER, PASS));
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password-4411";
    let config = write_config(dir.path(), &mqtt_block(&broker, Some((USER, wrong))), &[Printer { name: "mk4", failing: false, start_after: 0.2 }], "");
    let mut d = daemon(dir.path(), &config);
    d.wait_line("refused the user name or password", Duration::from_secs(20)).await;
    d.wait_frame(20, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = d.log_text();
    assert_eq!(log.matches("refused the user name or password").count(), 1, "said once, not at every retry:\n{}", d.tail(30));
    assert!(!log.contains(wrong), "the password is in the log");
    let tries = broker.log().matches("not authorised").count() + broker.log().matches("bad user name or password").count();
    assert!(tries >= 2, "printvigil kept trying (broker log):\n{}", broker.log());
}

// ---------------------------------------------------------------------------------------
// TLS, in process: the sink alone (no watches), its link state read directly.

async fn link_of(cfg: &MqttConfig) -> (MqttSink, Link) {
    let (_tx, rx) = tokio::sync::broadcast::channel(4);
    let inputs = Inputs { board: Board::new(), events: rx, printers: vec![], mirror: None, host: "tls-test".into() };
    let sink = MqttSink::start(cfg, inputs).expect("the sink starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = sink.link();
        if l != Link::Connecting || Instant::now() > deadline {
            return (sink, l);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tls_cfg(broker: &Mosquitto, ca: Option<&Path>) -> MqttConfig {
    let mut c = MqttConfig::new(&broker.url());
    c.username = Some(USER.into());
    c.password = Some(Secret::new(PASS));
    c.ca_file = ca.map(Path::to_path_buf);
    c.topic_prefix = Some(PREFIX.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_and_mutual_tls_works() {
    let broker = Mosquitto::start(Options::user(USER, PASS).with_tls(TlsOptions::default()));
    let other = Mosquitto::start(Options::anonymous().with_tls(TlsOptions::default()));
    let wrong_name = Mosquitto::start(Options::user(USER, PASS).with_tls(TlsOptions { server_cn: "other.example".into(), server_sans: vec!["other.example".into()], require_client_cert: false }));
    let mtls = Mosquitto::start(Options::anonymous().with_tls(TlsOptions { require_client_cert: true, ..TlsOptions::default() }));
    let ca = broker.certs.as_ref().unwrap().ca_file.clone();

    // The right CA: connected, and the broker has the sink's status.
    let sub = Client::connect(&broker, Some((USER, PASS)), &[&format!("{PREFIX}/status")]).await;
    let (sink, link) = link_of(&tls_cfg(&broker, Some(&ca))).await;
    assert!(matches!(link, Link::Up(_)), "{link:?}\n{}", broker.log());
    assert_eq!(sub.wait("online over TLS", Duration::from_secs(5), |_| true).await.text(), "online");
    sink.stop(Duration::from_secs(2)).await;

    // Another CA, the system CAs, a certificate for another name: refused.
    let other_ca = other.certs.as_ref().unwrap().ca_file.clone();
    for (what, cfg, expect) in [
        ("a wrong CA", tls_cfg(&broker, Some(&other_ca)), "invalid peer certificate"),
        ("the system CAs", tls_cfg(&broker, None), "UnknownIssuer"),
        ("a certificate for another host", tls_cfg(&wrong_name, Some(&wrong_name.certs.as_ref().unwrap().ca_file)), "not valid for name"),
    ] {
        let (sink, link) = link_of(&cfg).await;
        match &link {
            Link::Down(why) => {
                assert!(why.contains("TLS") && why.contains(expect), "{what}: {why}");
                assert!(why.contains("mqtt.ca_file"), "{what}: the message points at the fix: {why}");
            }
            other => panic!("{what}: TLS must be refused, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!matches!(sink.link(), Link::Up(_)), "{what}");
        sink.stop(Duration::from_secs(1)).await;
    }

    // Mutual TLS: with the client certificate connected, without it refused.
    let certs = mtls.certs.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certs.write_client(dir.path());
    let mut cfg = MqttConfig::new(&mtls.url());
    cfg.ca_file = Some(certs.ca_file.clone());
    cfg.client_cert = Some(cert);
    cfg.client_key = Some(key);
    let (sink, link) = link_of(&cfg).await;
    assert!(matches!(link, Link::Up(_)), "mutual TLS: {link:?}\n{}", mtls.log());
    sink.stop(Duration::from_secs(2)).await;
    cfg.client_cert = None;
    cfg.client_key = None;
    let (sink, link) = link_of(&cfg).await;
    assert!(matches!(link, Link::Down(_)), "no client certificate must be refused: {link:?}");
    sink.stop(Duration::from_secs(1)).await;

    // A CA file that is not there: the sink does not start, and says which key.
    let e = MqttSink::start(&tls_cfg(&broker, Some(Path::new("/nonexistent/ca.pem"))), Inputs {
        board: Board::new(),
        events: tokio::sync::broadcast::channel(1).1,
        printers: vec![],
        mirror: None,
        host: "h".into(),
    })
    .err()
    .expect("refused");
    assert!(e.to_string().contains("mqtt.ca_file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printer_removed_from_the_config_has_its_entities_removed() {
    let broker = Mosquitto::start(Options::anonymous());
    let dir = tempfile::tempdir().unwrap();
    let mqtt = mqtt_block(&broker, None);
    let both = [Printer { name: "alpha", failing: false, start_after: 3600.0 }, Printer { name: "beta", failing: false, start_after: 3600.0 }];
    let config = write_config(dir.path(), &mqtt, &both, "");
    let sub = Client::connect(&broker, None, &["#"]).await;
    let mut d = daemon(dir.path(), &config);
    sub.wait("beta's record", Duration::from_secs(30), |g| g.topic == topic("beta", "ha") && !g.payload.is_empty()).await;
    sub.wait("beta's state", Duration::from_secs(10), |g| g.topic == topic("beta", "phase")).await;
    let beta_configs: Vec<String> = discovery(&sub).into_keys().filter(|t| t.contains("_beta_")).collect();
    assert_eq!(beta_configs.len(), PRINTER_ENTITIES);
    d.terminate(Duration::from_secs(15)).await;

    let config = write_config(dir.path(), &mqtt, &both[..1], "");
    sub.clear();
    let _d = daemon(dir.path(), &config);
    for t in &beta_configs {
        sub.wait(&format!("{t} cleared"), Duration::from_secs(20), |g| &g.topic == t && g.payload.is_empty()).await;
    }
    sub.wait("beta's record cleared", Duration::from_secs(5), |g| g.topic == topic("beta", "ha") && g.payload.is_empty()).await;
    // A client that subscribes now finds nothing of beta, and all of alpha.
    let late = Client::connect(&broker, None, &["#"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beta: Vec<String> = late.all().into_iter().filter(|g| g.topic.contains("beta")).map(|g| g.topic).collect();
    assert!(beta.is_empty(), "beta's retained topics remain: {beta:?}");
    assert_eq!(discovery(&late).len(), PRINTER_ENTITIES + 1, "alpha's entities and the host's stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_the_broker_takes_printvigil_without_touching_its_status() {
    let broker = Mosquitto::start(Options::user(USER, PASS));
    let dir = tempfile::tempdir().unwrap();
    let sub = Client::connect(&broker, Some((USER, PASS)), &[&format!("{PREFIX}/#")]).await;
    for (pass, want) in [(PASS, "ok    MQTT broker"), ("wrong-pass-77", "FAIL  MQTT broker")] {
        let config = write_config(dir.path(), &mqtt_block(&broker, Some((USER, pass))), &[Printer { name: "c", failing: false, start_after: 3600.0 }], "");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_printvigil"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .env_remove("PRINTVIGIL_CONFIG")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.contains("MQTT broker")).unwrap_or_else(|| panic!("no MQTT line:\n{stdout}"));
        assert!(line.starts_with(want), "{line}\n{stdout}");
        if pass != PASS {
            assert!(stdout.contains("refused the user name or password") && !stdout.contains(pass), "{stdout}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sub.all().is_empty(), "check published nothing (no status, no last will): {:?}", sub.all().iter().map(|g| g.topic.clone()).collect::<Vec<_>>());
}
