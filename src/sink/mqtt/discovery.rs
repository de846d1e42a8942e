//! Home Assistant MQTT discovery: each printer appears as a device with its entities,
//! without any YAML.
//!
//! Home Assistant listens on `<discovery prefix>/<component>/<object id>/config`; each
//! config (a JSON object) describes one entity: where its state is, where its commands
//! go, which device it belongs to. printvigil publishes one config per entity, retained,
//! with the entity's `unique_id` as object id (Home Assistant's advice), full key names
//! (the abbreviations are optional) and a `~` base topic (`"~/state"` reads
//! `printvigil/<host>/<printer>/state`).
//!
//! Per printer (device `printvigil_<host>_<printer>`, via the host's device):
//!
//! | entity | component | what |
//! |---|---|---|
//! | Failure score | `sensor` | the score against the print's own baseline (Obico's `normalized_p`; above 1: worse than usual) |
//! | Frame score | `sensor` (diagnostic) | the last frame's `p` |
//! | Failing | `binary_sensor` (`problem`) | on while the print's last decision is warn or pause |
//! | Watch state | `sensor` (`enum`) | offline / idle / printing / paused; the whole state as attributes |
//! | Print file | `sensor` | the file being printed |
//! | Last decision | `sensor` (`enum`) | none / ok / warn / pause; time and `p` as attributes |
//! | Last decision frame | `image` | the annotated JPEG of the latest warning or pause |
//! | Pause the print | `button` | pauses now, through the watch's own rules |
//! | Watching | `switch` | detection on/off for the current print |
//! | Snooze alerts | `number` (minutes) | holds notifications back; 0 ends the snooze |
//!
//! The host's device has `Outbox` (diagnostic: events waiting for the Obico server).
//! Every entity is available while `P/status` is `online` (the last will sets it
//! `offline`). A printer's published config topics are recorded, retained, on
//! `P/<printer>/ha`, so that a printer removed from the settings has its entities removed
//! (an empty retained config deletes an entity) at the next start.

use serde_json::{Value, json};

use super::topics::{CMD_PAUSE, CMD_SNOOZE, CMD_WATCHING, Topics};

/// One entity's discovery config.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: &'static str,
    pub unique_id: String,
    pub config: Value,
}

impl Entity {
    pub fn topic(&self, t: &Topics) -> String {
        t.discovery_config(self.component, &self.unique_id)
    }
}

fn origin() -> Value {
    json!({"name": "printvigil", "sw_version": env!("CARGO_PKG_VERSION")})
}

fn host_device(t: &Topics, host: &str) -> Value {
    json!({
        "identifiers": [t.host_device_id()],
        "name": format!("printvigil {host}"),
        "manufacturer": "printvigil",
        "model": "print watch host",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// A config with the keys every entity has.
fn base(t: &Topics, unique_id: String, name: &str, device: &Value, base_topic: &str) -> Value {
    json!({
        "~": base_topic,
        "name": name,
        "unique_id": unique_id,
        "availability_topic": t.status(),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": origin(),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

/// The entities of one printer (`slug` is its topic level, `name` its configured name).
pub fn printer_entities(t: &Topics, slug: &str, name: &str) -> Vec<Entity> {
    let device = json!({
        "identifiers": [t.device_id(slug)],
        "name": name,
        "manufacturer": "printvigil",
        "model": "print watch",
        "sw_version": env!("CARGO_PKG_VERSION"),
        "via_device": t.host_device_id(),
    });
    let base_topic = t.printer(slug);
    let e = |component: &'static str, key: &str, name: &str, extra: Value| {
        let unique_id = t.unique_id(slug, key);
        Entity { component, unique_id: unique_id.clone(), config: merge(base(t, unique_id, name, &device, &base_topic), extra) }
    };
    vec![
        e(
            "sensor",
            "failure_score",
            "Failure score",
            json!({
                "state_topic": "~/normalized_p",
                "state_class": "measurement",
                "suggested_display_precision": 2,
                "icon": "mdi:printer-3d-nozzle-alert",
            }),
        ),
        e(
            "sensor",
            "frame_p",
            "Frame score",
            json!({
                "state_topic": "~/p",
                "state_class": "measurement",
                "suggested_display_precision": 2,
                "entity_category": "diagnostic",
            }),
        ),
        e(
            "binary_sensor",
            "failing",
            "Failing",
            json!({
                "state_topic": "~/failing",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
            }),
        ),
        e(
            "sensor",
            "watch_state",
            "Watch state",
            json!({
                "state_topic": "~/phase",
                "device_class": "enum",
                "options": ["offline", "idle", "printing", "paused"],
                "json_attributes_topic": "~/state",
                "icon": "mdi:printer-3d",
            }),
        ),
        e(
            "sensor",
            "file",
            "Print file",
            json!({"state_topic": "~/file", "icon": "mdi:file-outline"}),
        ),
        e(
            "sensor",
            "last_decision",
            "Last decision",
            json!({
                "state_topic": "~/decision",
                "value_template": "{{ value_json.decision }}",
                "device_class": "enum",
                "options": ["none", "ok", "warn", "pause"],
                "json_attributes_topic": "~/decision",
                "icon": "mdi:eye-check-outline",
            }),
        ),
        e(
            "image",
            "frame",
            "Last decision frame",
            json!({"image_topic": "~/frame", "content_type": "image/jpeg"}),
        ),
        e(
            "button",
            "pause",
            "Pause the print",
            json!({
                "command_topic": format!("~/cmd/{CMD_PAUSE}"),
                "payload_press": "PAUSE",
                "icon": "mdi:pause-octagon",
            }),
        ),
        e(
            "switch",
            "watching",
            "Watching",
            json!({
                "command_topic": format!("~/cmd/{CMD_WATCHING}"),
                "state_topic": "~/watching",
                "payload_on": "ON",
                "payload_off": "OFF",
                "icon": "mdi:eye",
            }),
        ),
        e(
            "number",
            "snooze",
            "Snooze alerts",
            json!({
                "command_topic": format!("~/cmd/{CMD_SNOOZE}"),
                "state_topic": "~/snooze",
                "min": 0,
                "max": 1440,
                "step": 1,
                "mode": "box",
                "unit_of_measurement": "min",
                "icon": "mdi:bell-sleep",
            }),
        ),
    ]
}

/// The host's own entities.
pub fn host_entities(t: &Topics, host: &str) -> Vec<Entity> {
    let device = host_device(t, host);
    let unique_id = format!("{}_outbox", t.host_device_id());
    vec![Entity {
        component: "sensor",
        unique_id: unique_id.clone(),
        config: merge(
            base(t, unique_id, "Outbox", &device, &t.prefix),
            json!({
                "state_topic": "~/outbox",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:tray-full",
            }),
        ),
    }]
}

/// The record of a printer's discovery topics (`P/<printer>/ha`).
pub fn record(t: &Topics, entities: &[Entity]) -> Value {
    json!({"topics": entities.iter().map(|e| e.topic(t)).collect::<Vec<_>>()})
}

/// The topics a record lists (nothing from a payload that is not one).
pub fn recorded_topics(payload: &[u8], t: &Topics) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else { return Vec::new() };
    let prefix = format!("{}/", t.discovery);
    v["topics"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                // Only ever clear discovery topics of this host's entities.
                .filter(|s| s.starts_with(&prefix) && s.ends_with("/config") && s.contains(&format!("/printvigil_{}_", t.node)))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_have_unique_ids_and_one_device() {
        let t = Topics::new("printvigil/pi", "homeassistant");
        let es = printer_entities(&t, "voron", "Voron");
        let ids: std::collections::HashSet<_> = es.iter().map(|e| e.unique_id.clone()).collect();
        assert_eq!(ids.len(), es.len());
        for e in &es {
            assert_eq!(e.config["device"]["identifiers"][0], "printvigil_pi_voron");
            assert_eq!(e.config["unique_id"], e.unique_id.as_str());
            assert_eq!(e.topic(&t), format!("homeassistant/{}/{}/config", e.component, e.unique_id));
        }
        let rec = serde_json::to_vec(&record(&t, &es)).unwrap();
        assert_eq!(recorded_topics(&rec, &t).len(), es.len());
        assert!(recorded_topics(br#"{"topics":["homeassistant/sensor/other_device/config","x"]}"#, &t).is_empty());
        assert!(recorded_topics(b"garbage", &t).is_empty());
    }
}
