//! Klipper's printer objects: which ones the link subscribes to, and how Moonraker's status
//! deltas merge into what the link remembers.
//!
//! After `printer.objects.subscribe` Moonraker sends `notify_status_update` with only the
//! fields that changed: `{"print_stats": {"state": "paused"}, "extruder": {...}}`. Merging
//! a delta sets each named field and leaves the others, so the merged status always holds
//! the latest value of every field. Merging is also where the link's memory is bounded:
//! only the subscribed objects and fields are kept (a peer cannot grow the map with names
//! of its own) and a value too big to be a real Klipper field is ignored, so whatever a
//! peer sends, the merged status stays a few kilobytes.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

/// Klipper's `TIMELAPSE_TAKE_FRAME` macro; its `is_paused` tells a camera park from a pause.
pub(super) const TIMELAPSE_MACRO: &str = "gcode_macro TIMELAPSE_TAKE_FRAME";
/// Heaters watched at most (extruders, bed, generic heaters).
const MAX_HEATERS: usize = 16;
/// A field value larger than this (string bytes plus 16 per JSON node) is not Klipper's.
const MAX_VALUE_COST: usize = 16 * 1024;

/// The objects and fields the link subscribes to.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Subscription {
    objects: HashMap<String, HashSet<String>>,
}

impl Default for Subscription {
    /// What the link subscribes to on a printer with one extruder and a bed.
    fn default() -> Self {
        let present = ["extruder", "heater_bed"].map(String::from);
        Self::for_objects(present.iter(), true)
    }
}

impl Subscription {
    const FIXED: [(&'static str, &'static [&'static str]); 5] = [
        ("print_stats", &["state", "filename", "message", "print_duration", "info"]),
        ("webhooks", &["state", "state_message"]),
        ("virtual_sdcard", &["progress", "is_active", "file_position"]),
        ("pause_resume", &["is_paused"]),
        (TIMELAPSE_MACRO, &["is_paused"]),
    ];

    /// The subscription for a printer whose `printer.objects.list` is `present`; `all_fixed`
    /// takes the fixed objects even when absent from the list.
    fn for_objects<'a>(present: impl Iterator<Item = &'a String>, all_fixed: bool) -> Subscription {
        let present: Vec<&String> = present.collect();
        let mut objects = HashMap::new();
        for (name, fields) in Self::FIXED {
            if all_fixed || present.iter().any(|p| p.as_str() == name) {
                objects.insert(name.to_string(), fields.iter().map(|f| f.to_string()).collect());
            }
        }
        let mut heaters: Vec<&String> = present
            .into_iter()
            .filter(|n| *n == "heater_bed" || n.starts_with("extruder") || n.starts_with("heater_generic "))
            .collect();
        heaters.sort();
        heaters.dedup();
        for h in heaters.into_iter().take(MAX_HEATERS) {
            objects.insert(h.clone(), ["temperature", "target"].map(String::from).into());
        }
        Subscription { objects }
    }

    /// The subscription for the objects Klipper lists (`printer.objects.list`'s answer).
    pub(super) fn from_list(list: &Value) -> Subscription {
        let present: Vec<String> = list
            .get("objects")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Self::for_objects(present.iter(), false)
    }

    /// The `objects` parameter of `printer.objects.subscribe`.
    pub(super) fn request(&self) -> Value {
        let mut objects = Map::new();
        for (name, fields) in &self.objects {
            let mut f: Vec<&String> = fields.iter().collect();
            f.sort();
            objects.insert(name.clone(), json!(f));
        }
        Value::Object(objects)
    }

    /// Merges `delta` (`{object: {field: value}}`) into `into`, keeping only subscribed
    /// fields with plausible values. True when it set `print_stats.state`.
    pub(super) fn merge(&self, into: &mut Map<String, Value>, delta: &Value) -> bool {
        let mut state = false;
        let Some(delta) = delta.as_object() else { return false };
        for (obj, fields) in delta {
            let (Some(wanted), Some(fields)) = (self.objects.get(obj), fields.as_object()) else { continue };
            for (k, v) in fields {
                if !wanted.contains(k) || cost(v, MAX_VALUE_COST) > MAX_VALUE_COST {
                    continue;
                }
                state |= obj == "print_stats" && k == "state";
                let entry = into.entry(obj.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(e) = entry {
                    e.insert(k.clone(), v.clone());
                }
            }
        }
        state
    }
}

/// A rough size of a JSON value, counted up to `budget` (then it stops).
fn cost(v: &Value, budget: usize) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += 16;
        match v {
            Value::String(s) => total += s.len(),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => {
                for (k, v) in o {
                    total += k.len();
                    stack.push(v);
                }
            }
            _ => {}
        }
        if total > budget {
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscribed_fields_with_plausible_values_are_kept() {
        let sub = Subscription::from_list(&json!({"objects": ["print_stats", "extruder", "fan"]}));
        let mut m = Map::new();
        let state = sub.merge(
            &mut m,
            &json!({
                "print_stats": {"state": "printing", "junk": 1},
                "extruder": {"temperature": 200.5, "target": "x".repeat(MAX_VALUE_COST + 1)},
                "fan": {"speed": 1.0},
                "made_up_object": {"state": 1},
                "virtual_sdcard": {"progress": 0.5}
            }),
        );
        assert!(state);
        assert_eq!(m, json!({"print_stats": {"state": "printing"}, "extruder": {"temperature": 200.5}}).as_object().unwrap().clone());
        assert!(!sub.merge(&mut m, &json!({"extruder": {"temperature": 201.0}})));
        assert_eq!(m["extruder"]["temperature"], json!(201.0));
    }

    #[test]
    fn heaters_are_capped() {
        let names: Vec<String> = (0..100).map(|i| format!("heater_generic h{i}")).collect();
        let sub = Subscription::from_list(&json!({ "objects": names }));
        assert_eq!(sub.objects.len(), MAX_HEATERS);
    }
}
