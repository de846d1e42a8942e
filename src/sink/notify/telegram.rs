//! Telegram: a bot writes to a chat.
//!
//! With a frame, `sendPhoto` as `multipart/form-data` (`chat_id`, `caption` cut to
//! Telegram's 1024 characters, the JPEG in `photo`); with `frame = "url"`, `sendPhoto`
//! with the link as `photo`; otherwise `sendMessage` (`text`, at most 4096 characters,
//! link previews off). The bot token is part of the request URL
//! (`https://api.telegram.org/bot<token>/<method>`), so the URL is never logged.
//!
//! Telegram answers `{"ok": true, ...}` or `{"ok": false, "error_code", "description",
//! "parameters": {"retry_after": N}}`; flood control (429) says how long to wait.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::alert::{Alert, clip};
use super::config::NotifyConfig;
use super::deliver::{Frame, Judged, Service, judge_http, snippet};

pub const MAX_CAPTION: usize = 1024;
pub const MAX_TEXT: usize = 4096;

pub struct Telegram {
    pub cfg: NotifyConfig,
}

impl Telegram {
    fn method(&self, name: &str) -> String {
        let token = self.cfg.token.as_ref().map(|t| t.expose()).unwrap_or_default();
        format!("{}/bot{token}/{name}", self.cfg.url())
    }

    fn chat(&self) -> String {
        self.cfg.chat_id.clone().unwrap_or_default().trim().to_string()
    }
}

impl Service for Telegram {
    fn request(&self, http: &reqwest::Client, alert: &Alert, frame: Option<&Frame>, frame_url: Option<&str>) -> reqwest::RequestBuilder {
        match (frame, frame_url) {
            (Some(f), _) => {
                let form = reqwest::multipart::Form::new()
                    .text("chat_id", self.chat())
                    .text("caption", clip(&alert.message(true), MAX_CAPTION))
                    .part(
                        "photo",
                        reqwest::multipart::Part::bytes(f.jpeg.clone()).file_name(f.name.clone()).mime_str("image/jpeg").expect("a valid MIME type"),
                    );
                http.post(self.method("sendPhoto")).multipart(form)
            }
            (None, Some(url)) => http.post(self.method("sendPhoto")).json(&json!({
                "chat_id": self.chat(),
                "photo": url,
                "caption": clip(&alert.message(false), MAX_CAPTION),
            })),
            (None, None) => http.post(self.method("sendMessage")).json(&json!({
                "chat_id": self.chat(),
                "text": clip(&alert.message(false), MAX_TEXT),
                "link_preview_options": {"is_disabled": true},
            })),
        }
    }

    fn judge(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Judged {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if v["ok"] == true && status.is_success() {
            return Judged::Sent;
        }
        let wait = v["parameters"]["retry_after"].as_f64().and_then(super::deliver::wait_secs);
        let why = v["description"].as_str().map(str::to_string).unwrap_or_else(|| snippet(body));
        if status == StatusCode::TOO_MANY_REQUESTS || wait.is_some() {
            return Judged::Retry { after: wait.or_else(|| super::deliver::retry_after(headers)), why: format!("Telegram: {why}") };
        }
        match judge_http(status, headers, body) {
            Judged::Sent => Judged::Failed(format!("Telegram answered without ok: {why}")),
            Judged::Failed(_) if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND => {
                Judged::Failed(format!("Telegram refused the bot token ({why}): check the token from BotFather"))
            }
            Judged::Failed(_) => Judged::Failed(format!("Telegram: {why}")),
            other => other,
        }
    }
}
