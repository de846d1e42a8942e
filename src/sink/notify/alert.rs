//! An alert: one thing a person should hear about, in words.
//!
//! Every message says which printer, which file, what was seen and what was done, e.g.
//! "paused `benchy.gcode` on voron: spaghetti detected, p=1.90; frame attached". The
//! services ([`super::webhook`], [`super::ntfy`], [`super::telegram`],
//! [`super::discord`]) differ only in how they carry the same [`Alert`].

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::config::AlertKind;

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    /// What happened, for machines: `warning`, `paused`, `cancelled`, `failure_detected`,
    /// `pause_failed`, `print_finished`, `print_failed`, `printer_offline`,
    /// `printer_online`, `camera_offline`, `camera_back`.
    pub event: &'static str,
    pub printer: String,
    pub file: Option<String>,
    /// A short headline ("voron: print paused").
    pub title: String,
    /// The sentence, without the note about the frame.
    pub text: String,
    /// The frame's `p` and the print's normalised score, for failure alerts.
    pub p: Option<f64>,
    pub score: Option<f64>,
    /// The annotated decision frame, when there is one.
    pub frame: Option<PathBuf>,
    pub at: SystemTime,
    /// This host's name.
    pub host: String,
    /// Earlier alerts the rate limit held back (said in the message).
    pub held_back: u64,
}

/// `benchy.gcode`, or "the print" without a name.
pub fn file_words(file: Option<&str>) -> String {
    match file {
        Some(f) if !f.is_empty() => format!("`{f}`"),
        _ => "the print".into(),
    }
}

/// What the detector saw, in words.
pub fn seen(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("spaghetti detected, p={p:.2}"),
        None => "failure signs".into(),
    }
}

impl Alert {
    /// The message as sent: the sentence, the frame note, the rate limit note.
    pub fn message(&self, frame_attached: bool) -> String {
        let mut s = self.text.clone();
        if frame_attached {
            s.push_str("; frame attached");
        }
        if self.held_back > 0 {
            s.push_str(&format!(" ({} earlier alert(s) for this printer held back by the rate limit)", self.held_back));
        }
        s
    }

    /// The alert as JSON (the webhook's body; `frame_url` when the frame goes as a link).
    pub fn json(&self, frame_attached: bool, frame_url: Option<&str>) -> Value {
        json!({
            "event": self.event,
            "kind": self.kind.as_str(),
            "printer": self.printer,
            "file": self.file,
            "title": self.title,
            "message": self.message(frame_attached),
            "p": self.p,
            "score": self.score,
            "host": self.host,
            "at": humantime::format_rfc3339_millis(self.at).to_string(),
            "frame": frame_attached.then_some("frame.jpg"),
            "frame_url": frame_url,
            "held_back": self.held_back,
        })
    }

    /// The frame's file name in uploads.
    pub fn frame_name(&self) -> String {
        self.frame
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "frame.jpg".into())
    }
}

/// Cuts a text to at most `max` characters (chars, not bytes), marking the cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_what_was_seen_and_done() {
        let a = Alert {
            kind: AlertKind::Pause,
            event: "paused",
            printer: "voron".into(),
            file: Some("benchy.gcode".into()),
            title: "voron: print paused".into(),
            text: format!("paused {} on voron: {}", file_words(Some("benchy.gcode")), seen(Some(1.9))),
            p: Some(1.9),
            score: Some(3.0),
            frame: Some("/x/20261206-voron-pause.jpg".into()),
            at: SystemTime::now(),
            host: "pi".into(),
            held_back: 0,
        };
        assert_eq!(a.message(true), "paused `benchy.gcode` on voron: spaghetti detected, p=1.90; frame attached");
        assert_eq!(a.frame_name(), "20261206-voron-pause.jpg");
        let j = a.json(false, Some("https://pi/frames/x.jpg"));
        assert_eq!(j["frame_url"], "https://pi/frames/x.jpg");
        assert_eq!(j["frame"], Value::Null);
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("ab", 4), "ab");
    }
}
