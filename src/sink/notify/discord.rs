//! Discord: a message in a channel through its webhook.
//!
//! `POST <webhook URL>?wait=true` (with `wait` Discord confirms the message was saved,
//! or says why not). The message is `content` (at most 2000 characters; mentions off,
//! so a file name cannot ping anyone) and an embed with the title; with a frame the body
//! is `multipart/form-data`: `payload_json` plus the JPEG as `files[0]`, shown in the
//! embed (`attachment://<name>`). The webhook URL holds its token and is never logged.
//! A 429 carries `retry_after` (seconds, fractional); a 404 means the webhook was
//! deleted, and the entry stops.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::alert::{Alert, clip};
use super::config::NotifyConfig;
use super::deliver::{Frame, Judged, Service, judge_http};

pub const MAX_CONTENT: usize = 2000;

pub struct Discord {
    pub cfg: NotifyConfig,
}

fn color(alert: &Alert) -> u32 {
    match alert.event {
        "paused" | "cancelled" | "pause_failed" | "failure_detected" | "print_failed" => 0xd9_30_25,
        "warning" | "printer_offline" | "camera_offline" => 0xe8_a3_17,
        _ => 0x2e_a0_43,
    }
}

impl Service for Discord {
    fn request(&self, http: &reqwest::Client, alert: &Alert, frame: Option<&Frame>, frame_url: Option<&str>) -> reqwest::RequestBuilder {
        let url = self.cfg.url();
        let url = if url.contains('?') { format!("{url}&wait=true") } else { format!("{url}?wait=true") };
        let mut embed = json!({"title": clip(&alert.title, 256), "color": color(alert)});
        let image = match (frame, frame_url) {
            (Some(f), _) => Some(format!("attachment://{}", f.name)),
            (None, Some(u)) => Some(u.to_string()),
            _ => None,
        };
        if let Some(i) = image {
            embed["image"] = json!({"url": i});
        }
        let mut payload = json!({
            "content": clip(&alert.message(frame.is_some()), MAX_CONTENT),
            "username": "printvigil",
            "allowed_mentions": {"parse": []},
            "embeds": [embed],
        });
        match frame {
            Some(f) => {
                payload["attachments"] = json!([{"id": 0, "filename": f.name}]);
                let form = reqwest::multipart::Form::new()
                    .part("payload_json", reqwest::multipart::Part::text(payload.to_string()).mime_str("application/json").expect("a valid MIME type"))
                    .part(
                        "files[0]",
                        reqwest::multipart::Part::bytes(f.jpeg.clone()).file_name(f.name.clone()).mime_str("image/jpeg").expect("a valid MIME type"),
                    );
                http.post(url).multipart(form)
            }
            None => http.post(url).json(&payload),
        }
    }

    fn judge(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Judged {
        if status == StatusCode::NOT_FOUND {
            return Judged::Gone("the Discord webhook answers 404: it was deleted; make a new one and set its URL".into());
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let after = v["retry_after"]
                .as_f64()
                .and_then(super::deliver::wait_secs)
                .or_else(|| super::deliver::retry_after(headers));
            return Judged::Retry { after, why: "Discord rate limit".into() };
        }
        match judge_http(status, headers, body) {
            Judged::Failed(why) if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
                Judged::Failed(format!("Discord refused the webhook ({why}): check its URL"))
            }
            other => other,
        }
    }
}
