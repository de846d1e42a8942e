//! The printer's reports: parsed, merged field by field, and read as a [`View`].
//!
//! A Bambu printer publishes JSON on `device/<serial>/report`, about once a second. The
//! `print` object with `"command": "push_status"` is its state. X1 printers send the whole
//! object every time; P1 and A1 printers send only what changed (`"msg": 1`), and the
//! whole object only in answer to `pushall` (sent after every connect). So the link keeps
//! one merged object ([`Report`]) and merges every report into it as BambuStudio does:
//! keys a report leaves out keep their values, nested objects merge key by key, numbers,
//! strings and lists are replaced, new keys are added. The merged object is bounded (depth,
//! keys), whatever the printer or a stranger on the broker sends.
//!
//! Other messages on the topic are the printer's answers to commands ([`Ack`]: the
//! command's `sequence_id`, `result`, `reason`, `err_code`) and things printvigil does not
//! use (`info`, `system`, `upgrade`, ...). Numbers may come as JSON numbers or as strings
//! of digits; both are read.

use serde_json::{Map, Value};

use crate::printer::Temperature;

/// Largest report accepted, in bytes (the largest real ones are ~12 KiB, one client saw
/// 64 KiB); larger MQTT packets end the connection.
pub const MAX_REPORT: usize = 1 << 20;
/// Deepest nesting merged; deeper values are replaced whole.
const MAX_DEPTH: usize = 8;
/// Most keys kept in the merged object (a full report has ~100 at its top level).
pub const MAX_KEYS: usize = 4096;

/// `print.gcode_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcodeState {
    Idle,
    Prepare,
    Slicing,
    Running,
    Pause,
    Finish,
    Failed,
    /// Anything else (`INIT`, `OFFLINE`, new firmware's words): not a print.
    Other(String),
}

impl GcodeState {
    fn parse(s: &str) -> GcodeState {
        match s.trim().to_ascii_uppercase().as_str() {
            "IDLE" => GcodeState::Idle,
            "PREPARE" => GcodeState::Prepare,
            "SLICING" => GcodeState::Slicing,
            "RUNNING" => GcodeState::Running,
            "PAUSE" => GcodeState::Pause,
            "FINISH" => GcodeState::Finish,
            "FAILED" => GcodeState::Failed,
            other => GcodeState::Other(other.chars().take(32).collect()),
        }
    }

    /// A print is under way (also while paused).
    pub fn active(&self) -> bool {
        matches!(self, GcodeState::Prepare | GcodeState::Slicing | GcodeState::Running | GcodeState::Pause)
    }
}

/// What one message on the report topic is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A state report (`print.command = "push_status"`): its `print` object.
    Status(Map<String, Value>),
    /// An answer to a command.
    Ack(Ack),
    /// Something printvigil does not use.
    Other,
}

/// The printer's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub command: String,
    pub sequence_id: String,
    /// `result` said success (`Some(true)`) or something else (`Some(false)`); a non-zero
    /// `err_code` is a failure too.
    pub ok: Option<bool>,
    pub reason: Option<String>,
    pub err_code: Option<i64>,
}

/// `err_code` of a command refused because it was not signed: the printer wants
/// authorised commands (Developer Mode off).
pub const ERR_NOT_SIGNED: i64 = 0x0502_4007;
/// `err_code` of a command with a malformed signature envelope.
pub const ERR_BAD_SIGNATURE: i64 = 0x0502_4009;

/// Parses one message from the report topic. `Err` for payloads that are not a JSON object.
pub fn parse_message(payload: &[u8]) -> Result<Message, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut top) = v else { return Err("not a JSON object".into()) };
    let Some(Value::Object(print)) = top.remove("print") else { return Ok(Message::Other) };
    let command = print.get("command").and_then(Value::as_str).unwrap_or("");
    if command == "push_status" {
        return Ok(Message::Status(print));
    }
    let err_code = print.get("err_code").and_then(int);
    let result = print.get("result").and_then(Value::as_str);
    if command.is_empty() && result.is_none() && err_code.is_none() {
        return Ok(Message::Other);
    }
    let ok = match (result, err_code) {
        (_, Some(c)) if c != 0 => Some(false),
        (Some(r), _) => Some(r.eq_ignore_ascii_case("success")),
        (None, _) => None,
    };
    Ok(Message::Ack(Ack {
        command: command.chars().take(64).collect(),
        sequence_id: print.get("sequence_id").map(text).unwrap_or_default(),
        ok,
        reason: print.get("reason").and_then(Value::as_str).filter(|s| !s.is_empty()).map(|s| s.chars().take(200).collect()),
        err_code,
    }))
}

/// An integer from a JSON number or a string of digits.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// A string value, or a number written as text; other values give "".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.chars().take(256).collect(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The merged state; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    print: Map<String, Value>,
    keys: usize,
}

fn count_map(m: &Map<String, Value>, depth: usize) -> usize {
    m.len() + m.values().map(|v| count_keys(v, depth + 1)).sum::<usize>()
}

/// Keys in a value, nested objects and lists included (all of them: the bound must hold
/// for what is kept, however deep).
fn count_keys(v: &Value, depth: usize) -> usize {
    match v {
        Value::Object(m) => count_map(m, depth),
        Value::Array(a) => a.len() + a.iter().map(|v| count_keys(v, depth + 1)).sum::<usize>(),
        _ => 0,
    }
}

fn merge_into(base: &mut Map<String, Value>, part: Map<String, Value>, depth: usize) {
    for (k, v) in part {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(p)) if depth + 1 < MAX_DEPTH => merge_into(b, p, depth + 1),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Report {
    /// Keys (and list items) in the merged state, nested ones included.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Forgets everything (a new connection: its `pushall` answer is the new base).
    pub fn clear(&mut self) {
        self.print.clear();
        self.keys = 0;
    }

    /// Merges a `print` object into the state. A report that would grow the state past
    /// its bound replaces it instead (the newest report wins).
    pub fn merge(&mut self, part: Map<String, Value>) {
        merge_into(&mut self.print, part.clone(), 0);
        self.keys = count_map(&self.print, 0);
        if self.keys > MAX_KEYS {
            self.print = part;
            self.keys = count_map(&self.print, 0);
            if self.keys > MAX_KEYS {
                self.print.retain(|_, v| !v.is_object() && !v.is_array());
                self.keys = count_map(&self.print, 0);
            }
        }
    }

    /// The fields printvigil uses, read from the merged state.
    pub fn view(&self) -> View {
        let p = &self.print;
        let get = |k: &str| p.get(k);
        let id = |k: &str| get(k).map(text).filter(|s| !s.is_empty() && s != "0" && s != "-1");
        let mut temperatures = Vec::new();
        for (name, actual, target) in [
            ("nozzle", "nozzle_temper", "nozzle_target_temper"),
            ("bed", "bed_temper", "bed_target_temper"),
            ("chamber", "chamber_temper", ""),
        ] {
            if let Some(a) = get(actual).and_then(float) {
                let t = get(target).and_then(float).unwrap_or(0.0);
                temperatures.push(Temperature { name: name.into(), actual: a, target: t });
            }
        }
        let fun = get("fun").and_then(Value::as_str).and_then(|f| u64::from_str_radix(f.trim(), 16).ok());
        View {
            state: get("gcode_state").and_then(Value::as_str).map(GcodeState::parse),
            percent: get("mc_percent").and_then(float).map(|p| p.clamp(0.0, 100.0)),
            remaining_minutes: get("mc_remaining_time").and_then(int),
            layer: get("layer_num").and_then(int),
            total_layers: get("total_layer_num").and_then(int),
            subtask_name: get("subtask_name").map(text).unwrap_or_default(),
            gcode_file: get("gcode_file").map(text).unwrap_or_default(),
            task_id: id("task_id"),
            subtask_id: id("subtask_id"),
            job_id: id("job_id"),
            start_time: get("gcode_start_time").and_then(int).filter(|t| *t > 0),
            print_error: get("print_error").and_then(int).map(|e| e as u32).unwrap_or(0),
            temperatures,
            signed_commands_required: fun.map(|f| f & 0x2000_0000 != 0),
        }
    }
}

/// The fields printvigil reads from the merged state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    /// `None` until a report with `gcode_state` came (a partial report before the
    /// `pushall` answer).
    pub state: Option<GcodeState>,
    /// `mc_percent`, 0..100.
    pub percent: Option<f64>,
    pub remaining_minutes: Option<i64>,
    pub layer: Option<i64>,
    pub total_layers: Option<i64>,
    pub subtask_name: String,
    pub gcode_file: String,
    /// The job's ids when the printer gives them (cloud prints; `"0"` for LAN prints
    /// reads as none).
    pub task_id: Option<String>,
    pub subtask_id: Option<String>,
    pub job_id: Option<String>,
    /// `gcode_start_time` (Unix seconds), when the printer reports one.
    pub start_time: Option<i64>,
    pub print_error: u32,
    pub temperatures: Vec<Temperature>,
    /// `print.fun` says commands must be signed (Developer Mode off); `None` when the
    /// printer does not report `fun` (A1, P1).
    pub signed_commands_required: Option<bool>,
}

impl View {
    /// The print's name: the plate's name, else the file's name.
    pub fn name(&self) -> String {
        let n = self.subtask_name.trim();
        if !n.is_empty() {
            return n.to_string();
        }
        let f = self.gcode_file.trim();
        f.rsplit('/').next().unwrap_or(f).to_string()
    }
}

/// `print_error` that the printer sets on a user's cancel (reset a few seconds later).
pub const ERROR_CANCELLED: u32 = 0x0300_400C;
/// `print_error` of a pause from the printer's own screen ("paused by user").
pub const ERROR_USER_PAUSE: u32 = 0x0300_8001;

/// A `print_error` as the printer's app shows it (`0300_8003`) with what it means, when
/// known.
pub fn error_text(code: u32) -> String {
    let id = format!("{:04X}_{:04X}", code >> 16, code & 0xFFFF);
    let meaning = match code {
        0x0300_8003 => Some("the printer's own AI monitoring detected spaghetti"),
        0x0300_8001 => Some("paused by the user"),
        0x0300_8000 => Some("paused for an unknown reason"),
        0x0300_8013 => Some("a pause command in the print file"),
        0x0300_400C => Some("the print was cancelled"),
        c if c & 0xFFFF == 0x8011 && (c >> 24) == 0x07 => Some("the filament ran out"),
        _ => None,
    };
    match meaning {
        Some(m) => format!("{id} ({m})"),
        None => id,
    }
}

/// Whether a pause with this `print_error` is the printer's own (an error, a runout, its
/// AI monitoring), not a person's or printvigil's.
pub fn is_error_pause(code: u32) -> bool {
    code != 0 && code != ERROR_USER_PAUSE && code != ERROR_CANCELLED
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> Map<String, Value> {
        match parse_message(json!({ "print": v }).to_string().as_bytes()).unwrap() {
            Message::Status(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_reports_merge_field_by_field() {
        let mut r = Report::default();
        r.merge(status(json!({"command": "push_status", "msg": 0, "gcode_state": "RUNNING", "mc_percent": 10,
            "subtask_name": "Benchy", "gcode_file": "/data/Metadata/plate_1.gcode", "task_id": "0", "subtask_id": "0",
            "gcode_start_time": "1700000000", "print_error": 0, "nozzle_temper": 220.5, "nozzle_target_temper": 220,
            "lights_report": [{"node": "chamber_light", "mode": "on"}], "ipcam": {"rtsp_url": "disable", "timelapse": "disable"}})));
        r.merge(status(json!({"command": "push_status", "msg": 1, "mc_percent": "11", "ipcam": {"timelapse": "enable"}})));
        let v = r.view();
        assert_eq!(v.state, Some(GcodeState::Running));
        assert_eq!(v.percent, Some(11.0));
        assert_eq!(v.name(), "Benchy");
        assert_eq!((v.task_id.clone(), v.start_time), (None, Some(1_700_000_000)));
        assert_eq!(v.temperatures[0], Temperature { name: "nozzle".into(), actual: 220.5, target: 220.0 });
        assert_eq!(r.print["ipcam"], json!({"rtsp_url": "disable", "timelapse": "enable"}), "nested objects merge");
        r.merge(status(json!({"command": "push_status", "msg": 1, "lights_report": []})));
        assert_eq!(r.print["lights_report"], json!([]), "lists are replaced");
        r.clear();
        assert_eq!(r.view().state, None);
    }

    #[test]
    fn acks_are_told_apart_from_reports() {
        let m = |v: Value| parse_message(v.to_string().as_bytes()).unwrap();
        let Message::Ack(a) = m(json!({"print": {"command": "pause", "sequence_id": "1000000001", "result": "SUCCESS", "param": ""}})) else { panic!() };
        assert_eq!((a.command.as_str(), a.sequence_id.as_str(), a.ok), ("pause", "1000000001", Some(true)));
        let Message::Ack(a) = m(json!({"print": {"command": "resume", "sequence_id": 2008, "err_code": 84033543}})) else { panic!() };
        assert_eq!((a.sequence_id.as_str(), a.ok, a.err_code), ("2008", Some(false), Some(ERR_NOT_SIGNED)));
        let Message::Ack(a) = m(json!({"print": {"command": "gcode_line", "result": "failed", "reason": "mqtt message verify failed", "err_code": 84033543, "sequence_id": "3"}})) else { panic!() };
        assert_eq!(a.reason.as_deref(), Some("mqtt message verify failed"));
        assert_eq!(m(json!({"info": {"command": "get_version"}})), Message::Other);
        assert_eq!(m(json!({"print": {"nozzle_temper": 20}})), Message::Other);
        assert!(parse_message(b"[1,2]").is_err());
        assert!(parse_message(b"\xff\xfe").is_err());
    }

    #[test]
    fn errors_read_as_the_app_shows_them() {
        assert_eq!(error_text(50364419), "0300_8003 (the printer's own AI monitoring detected spaghetti)");
        assert_eq!(error_text(0x0701_8011), "0701_8011 (the filament ran out)");
        assert_eq!(error_text(0x0500_C011), "0500_C011");
        assert!(is_error_pause(50364419) && !is_error_pause(0) && !is_error_pause(ERROR_USER_PAUSE));
    }

    #[test]
    fn the_merged_state_stays_bounded_whatever_comes() {
        let mut r = Report::default();
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "a": deep });
        }
        r.merge(status(json!({"command": "push_status", "gcode_state": "IDLE", "deep": deep})));
        for i in 0..50 {
            let big: Map<String, Value> = (0..200).map(|k| (format!("k{i}_{k}"), json!({"x": k}))).collect();
            let mut m = status(json!({"command": "push_status"}));
            m.insert(format!("o{i}"), Value::Object(big));
            r.merge(m);
            assert!(r.keys <= MAX_KEYS, "{}", r.keys);
        }
        let odd = status(json!({"command": "push_status", "gcode_state": 5, "mc_percent": "x", "print_error": [1], "fun": "zz"}));
        r.merge(odd);
        let v = r.view();
        assert_eq!((v.state, v.percent, v.print_error, v.signed_commands_required), (None, None, 0, None));
    }
}
