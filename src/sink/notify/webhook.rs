//! A generic webhook: the alert as JSON, POSTed to any URL (Home Assistant's webhook
//! trigger, Node-RED, n8n, a script of your own).
//!
//! Without a frame, or with `frame = "url"`, the body is the alert's JSON (see
//! [`Alert::json`]: `event`, `kind`, `printer`, `file`, `title`, `message`, `p`, `score`,
//! `host`, `at`, `frame_url`, `held_back`). With `frame = "attach"` and a frame, the body
//! is `multipart/form-data` with a `payload` part (that JSON, `application/json`) and a
//! `frame` part (the JPEG, with its file name). `headers` adds request headers, e.g. an
//! `Authorization` the receiver checks.

use super::alert::Alert;
use super::config::NotifyConfig;
use super::deliver::{Frame, Service};

pub struct Webhook {
    pub cfg: NotifyConfig,
}

impl Service for Webhook {
    fn request(&self, http: &reqwest::Client, alert: &Alert, frame: Option<&Frame>, frame_url: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = http.post(self.cfg.url());
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.expose());
        }
        match frame {
            Some(f) => {
                let payload = alert.json(true, frame_url).to_string();
                let form = reqwest::multipart::Form::new()
                    .part("payload", reqwest::multipart::Part::text(payload).mime_str("application/json").expect("a valid MIME type"))
                    .part(
                        "frame",
                        reqwest::multipart::Part::bytes(f.jpeg.clone()).file_name(f.name.clone()).mime_str("image/jpeg").expect("a valid MIME type"),
                    );
                req.multipart(form)
            }
            None => req.json(&alert.json(false, frame_url)),
        }
    }
}
