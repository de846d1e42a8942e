//! The printer's cameras, as Moonraker's webcam settings (`server.webcams.list`) describe
//! them: names, snapshot and stream URLs made absolute, rotation and flips.

use serde_json::Value;

use crate::printer::CameraInfo;

/// Cameras from `server.webcams.list`; relative URLs are relative to the host's web
/// server (port 80 of Moonraker's host).
pub fn parse_webcams(v: &Value, base: &url::Url) -> Vec<CameraInfo> {
    let mut web = base.clone();
    let _ = web.set_port(None);
    web.set_path("/");
    let abs = |u: Option<&str>| -> Option<String> {
        let u = u?.trim();
        if u.is_empty() {
            return None;
        }
        web.join(u).ok().map(|u| u.to_string())
    };
    v.get("webcams")
        .and_then(Value::as_array)
        .map(|cams| {
            cams.iter()
                .filter(|c| c.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|c| {
                    Some(CameraInfo {
                        name: c.get("name")?.as_str()?.to_string(),
                        snapshot_url: abs(c.get("snapshot_url").and_then(Value::as_str)),
                        stream_url: abs(c.get("stream_url").and_then(Value::as_str)),
                        rotation: match c.get("rotation").and_then(Value::as_u64).unwrap_or(0) {
                            r @ (90 | 180 | 270) => r as u16,
                            _ => 0,
                        },
                        flip_horizontal: c
                            .get("flip_horizontal")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        flip_vertical: c.get("flip_vertical").and_then(Value::as_bool).unwrap_or(false),
                        target_fps: c
                            .get("target_fps")
                            .and_then(Value::as_u64)
                            .map(|f| f.min(1000) as u32),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn webcam_urls_are_made_absolute() {
        let v = json!({"webcams": [
            {"name": "cam", "enabled": true, "snapshot_url": "/webcam/?action=snapshot",
             "stream_url": "http://10.0.0.5:8080/stream", "rotation": 90,
             "flip_horizontal": true, "flip_vertical": false, "target_fps": 15},
            {"name": "off", "enabled": false},
            {"no_name": 1}
        ]});
        let cams = parse_webcams(&v, &url::Url::parse("http://192.168.1.9:7125").unwrap());
        assert_eq!(cams.len(), 1);
        assert_eq!(cams[0].snapshot_url.as_deref(), Some("http://192.168.1.9/webcam/?action=snapshot"));
        assert_eq!(cams[0].stream_url.as_deref(), Some("http://10.0.0.5:8080/stream"));
        assert_eq!(
            (cams[0].rotation, cams[0].flip_horizontal, cams[0].target_fps),
            (90, true, Some(15))
        );
    }
}
