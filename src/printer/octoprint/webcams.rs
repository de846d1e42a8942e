//! The webcams OctoPrint knows, from `GET /api/settings`:
//!
//! - 1.9+: `webcam.webcams`, a map of webcam plugins' entries (`name`, `compat.snapshot`,
//!   `compat.stream`, `extras.stream`, `snapshotDisplay`, `flipH`, `flipV`, `rotate90`);
//! - the same webcams under `plugins.classicwebcam` (`snapshot`, `stream`, ...);
//! - older releases: `webcam.snapshotUrl` / `webcam.streamUrl` with the flips and
//!   `rotate90` next to them.
//!
//! Relative URLs (OctoPi's `/webcam/?action=stream`) are resolved against OctoPrint's
//! address. OctoPrint's `rotate90` turns the picture a quarter turn counter-clockwise,
//! which is 270 degrees clockwise in [`CameraInfo::rotation`]. Entries with the same URLs
//! are listed once; at most 16 cameras are kept.

use serde_json::Value;

use crate::printer::CameraInfo;

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for k in path {
        v = v.get(k)?;
    }
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

fn yes(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// The cameras in an `/api/settings` answer; `base` is OctoPrint's address.
pub(super) fn parse_settings(v: &Value, base: &url::Url) -> Vec<CameraInfo> {
    let abs = |u: Option<&str>| u.and_then(|u| base.join(u).ok()).map(|u| u.to_string());
    let cam = |name: &str, snap: Option<&str>, stream: Option<&str>, v: &Value| CameraInfo {
        name: name.chars().take(64).collect(),
        snapshot_url: abs(snap),
        stream_url: abs(stream),
        rotation: if yes(v, "rotate90") { 270 } else { 0 },
        flip_horizontal: yes(v, "flipH"),
        flip_vertical: yes(v, "flipV"),
        target_fps: None,
    };
    let mut cams: Vec<CameraInfo> = Vec::new();
    let webcam = v.get("webcam").unwrap_or(&Value::Null);
    if let Some(map) = webcam.get("webcams").and_then(Value::as_object) {
        for (key, w) in map {
            let name = text(w, &["name"]).unwrap_or(key);
            let snap = text(w, &["compat", "snapshot"]).or_else(|| text(w, &["snapshotDisplay"]));
            let stream = text(w, &["compat", "stream"]).or_else(|| text(w, &["extras", "stream"]));
            cams.push(cam(name, snap, stream, w));
        }
    }
    if let Some(w) = v.get("plugins").and_then(|p| p.get("classicwebcam")).filter(|w| w.is_object()) {
        cams.push(cam("classic", text(w, &["snapshot"]), text(w, &["stream"]), w));
    }
    if webcam.get("webcamEnabled").and_then(Value::as_bool) != Some(false) {
        cams.push(cam("webcam", text(webcam, &["snapshotUrl"]), text(webcam, &["streamUrl"]), webcam));
    }
    let mut out: Vec<CameraInfo> = Vec::new();
    for c in cams {
        if c.snapshot_url.is_none() && c.stream_url.is_none() {
            continue;
        }
        if out.iter().any(|o| o.snapshot_url == c.snapshot_url && o.stream_url == c.stream_url) {
            continue;
        }
        if out.len() < 16 {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn webcam_entries_resolve_relative_urls_and_rotate90_is_counter_clockwise() {
        let base = url::Url::parse("http://octopi.local:5000/").unwrap();
        let v = json!({
            "webcam": {
                "webcamEnabled": true,
                "webcams": {"classic": {"name": "classic", "flipH": true, "rotate90": true,
                    "compat": {"snapshot": "http://127.0.0.1:8080/?action=snapshot", "stream": "/webcam/?action=stream"}}},
                "snapshotUrl": "http://127.0.0.1:8080/?action=snapshot", "streamUrl": "/webcam/?action=stream"
            },
            "plugins": {"classicwebcam": {"snapshot": "http://127.0.0.1:8080/?action=snapshot", "stream": "/webcam/?action=stream"}}
        });
        let cams = parse_settings(&v, &base);
        assert_eq!(cams.len(), 1, "{cams:?}");
        assert_eq!(cams[0].stream_url.as_deref(), Some("http://octopi.local:5000/webcam/?action=stream"));
        assert_eq!(cams[0].rotation, 270);
        assert!(cams[0].flip_horizontal && !cams[0].flip_vertical);
        assert!(parse_settings(&json!({"webcam": 3}), &base).is_empty());
    }
}
