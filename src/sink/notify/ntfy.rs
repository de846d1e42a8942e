//! ntfy (ntfy.sh or a self-hosted server): push notifications to phones.
//!
//! One request per alert to the topic URL. With a frame the JPEG is the body of a `PUT`
//! and the text travels in headers (`Message`, `Title`, `Priority`, `Tags`, `Filename`),
//! as ntfy's "attach a local file" asks; without one the text is the body of a `POST`.
//! With `frame = "url"` the frame's link goes in `Attach`. Header values that are not
//! ASCII are sent RFC 2047-encoded (`=?UTF-8?B?...?=`), which ntfy decodes. Auth: an
//! access token (`token`, sent as `Bearer`), or `username` + `password` (Basic). ntfy
//! sends no `Retry-After`: a 429 is tried again after the usual growing wait.

use base64::Engine;

use super::alert::Alert;
use super::config::{AlertKind, NotifyConfig};
use super::deliver::{Frame, Service};

pub struct Ntfy {
    pub cfg: NotifyConfig,
}

/// A header value ntfy reads back as `text`: as it is when printable ASCII, else RFC 2047.
pub fn header_text(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.is_ascii() {
        clean
    } else {
        format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(clean.as_bytes()))
    }
}

/// The default priority of an alert: 5 for a pause, 4 for a warning or an offline printer.
pub fn priority(kind: AlertKind) -> u8 {
    match kind {
        AlertKind::Pause => 5,
        AlertKind::Warn | AlertKind::PrinterOffline => 4,
        _ => 3,
    }
}

fn tags(alert: &Alert) -> &'static str {
    match alert.event {
        "paused" | "cancelled" | "pause_failed" | "failure_detected" => "rotating_light,printer",
        "warning" => "warning,printer",
        "print_finished" => "white_check_mark,printer",
        "print_failed" => "x,printer",
        "printer_online" | "camera_back" => "green_circle,printer",
        _ => "red_circle,printer",
    }
}

impl Service for Ntfy {
    fn request(&self, http: &reqwest::Client, alert: &Alert, frame: Option<&Frame>, frame_url: Option<&str>) -> reqwest::RequestBuilder {
        let url = self.cfg.url();
        let prio = self.cfg.priority.unwrap_or_else(|| priority(alert.kind));
        let mut req = match frame {
            Some(f) => http
                .put(url)
                .header("Message", header_text(&alert.message(true)))
                .header("Filename", header_text(&f.name))
                .body(f.jpeg.clone()),
            None => http.post(url).body(alert.message(false)),
        };
        req = req.header("Title", header_text(&alert.title)).header("Priority", prio.to_string()).header("Tags", tags(alert));
        if let Some(u) = frame_url {
            req = req.header("Attach", u);
        }
        if let Some(t) = &self.cfg.token {
            req = req.bearer_auth(t.expose());
        } else if let (Some(u), Some(p)) = (&self.cfg.username, &self.cfg.password) {
            req = req.basic_auth(u, Some(p.expose()));
        }
        req
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_ascii_headers_are_rfc2047() {
        assert_eq!(super::header_text("plain text"), "plain text");
        assert_eq!(super::header_text("a\nb"), "a b");
        assert_eq!(super::header_text("Würfel"), "=?UTF-8?B?V8O8cmZlbA==?=");
    }
}
