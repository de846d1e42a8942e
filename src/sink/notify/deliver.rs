//! Delivery: one task per `[[notify]]` entry, tries with a growing wait, answers read
//! the way each service means them.
//!
//! A service ([`Service`]) builds the request for an alert and judges the answer:
//! sent; try again (5xx, 408, 429 and network errors; after the wait the service asks
//! for: `Retry-After`, Telegram's and Discord's `retry_after`, else 1 s, 2 s, 4 s, ...);
//! failed for good (another 4xx: a wrong token or URL, said once in the log); or gone (a
//! Discord webhook that answers 404 was deleted: the entry stops).
//!
//! Each entry has its own bounded queue: a slow or dead service delays only its own
//! messages, and when its queue is full new alerts for it are dropped and counted.
//! Request errors are logged without their URL (reqwest's messages include it, and
//! Telegram's and Discord's URLs carry the credential).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::sync::mpsc;

use super::alert::Alert;
use super::config::NotifyConfig;

/// The most read of a service's answer.
const MAX_ANSWER: usize = 64 * 1024;
/// The longest wait between two tries, whatever a service asks for.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Alerts waiting per entry.
pub const QUEUE: usize = 32;

/// How an answer is taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Judged {
    Sent,
    /// Try again, after the wait given when the service named one.
    Retry { after: Option<Duration>, why: String },
    /// Trying again would not help (a refused token, a bad request).
    Failed(String),
    /// The destination no longer exists: stop using this entry.
    Gone(String),
}

/// The frame as sent.
#[derive(Debug, Clone)]
pub struct Frame {
    pub jpeg: Vec<u8>,
    pub name: String,
}

/// One service: the request for an alert, and how its answers read.
pub trait Service: Send + Sync {
    /// The request; `frame` is the frame to upload (only when the entry attaches frames).
    fn request(&self, http: &reqwest::Client, alert: &Alert, frame: Option<&Frame>, frame_url: Option<&str>) -> reqwest::RequestBuilder;

    fn judge(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Judged {
        judge_http(status, headers, body)
    }
}

/// A wait in seconds a service asked for, capped at [`MAX_WAIT`] (none when it is not a
/// number of seconds: negative, NaN).
pub fn wait_secs(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(MAX_WAIT.as_secs_f64())))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these services).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    wait_secs(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<f64>().ok()?)
}

/// A short, printable piece of an answer's body for a log line.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Plain HTTP: 2xx sent; 408, 429 and 5xx again; other codes failed.
pub fn judge_http(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Judged {
    if status.is_success() {
        Judged::Sent
    } else if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        Judged::Retry { after: retry_after(headers), why: format!("HTTP {status}") }
    } else {
        Judged::Failed(format!("HTTP {status}: {}", snippet(body)))
    }
}

/// The wait before try `n + 1` (n >= 1) when the service named none: 1 s, 2 s, 4 s, ...
/// with a little jitter.
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_secs(1u64 << n.saturating_sub(1).min(8));
    base.mul_f64(1.0 + fastrand::f64() * 0.2).min(MAX_WAIT)
}

/// An alert on its way to one entry, with the frame read beforehand.
#[derive(Debug, Clone)]
pub struct Job {
    pub alert: Alert,
    pub frame: Option<Arc<Frame>>,
    pub frame_url: Option<String>,
}

/// What happened to one alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent { attempts: u32 },
    Failed(String),
    Gone(String),
}

/// Sends one alert with up to `cfg.attempts` tries.
pub async fn deliver(service: &dyn Service, http: &reqwest::Client, cfg: &NotifyConfig, job: &Job) -> Delivery {
    let mut last = String::new();
    for n in 1..=cfg.attempts {
        let req = service.request(http, &job.alert, job.frame.as_deref(), job.frame_url.as_deref()).timeout(cfg.timeout());
        let judged = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = crate::server::http::read_capped(resp, MAX_ANSWER).await.unwrap_or_default();
                service.judge(status, &headers, &body)
            }
            Err(e) => Judged::Retry { after: None, why: e.without_url().to_string() },
        };
        match judged {
            Judged::Sent => return Delivery::Sent { attempts: n },
            Judged::Failed(why) => return Delivery::Failed(why),
            Judged::Gone(why) => return Delivery::Gone(why),
            Judged::Retry { after, why } => {
                last = why;
                if n < cfg.attempts {
                    let wait = after.unwrap_or_else(|| backoff(n)).min(MAX_WAIT);
                    tracing::debug!("notify {}: try {n} failed ({last}); again in {:.1} s", cfg.label(), wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    Delivery::Failed(format!("{last} (after {} tries)", cfg.attempts))
}

/// An entry's task: takes alerts from its queue and delivers them one by one.
pub async fn run(service: Box<dyn Service>, http: reqwest::Client, cfg: NotifyConfig, mut jobs: mpsc::Receiver<Job>) {
    let label = cfg.label();
    let mut failing = false;
    while let Some(job) = jobs.recv().await {
        match deliver(service.as_ref(), &http, &cfg, &job).await {
            Delivery::Sent { attempts } => {
                if failing {
                    tracing::info!("notify {label}: messages go through again");
                    failing = false;
                }
                tracing::debug!("notify {label}: sent {} for {} ({attempts} tries)", job.alert.event, job.alert.printer);
            }
            Delivery::Failed(why) => {
                if !failing {
                    tracing::warn!("notify {label}: a {} alert for {} could not be sent: {why}", job.alert.event, job.alert.printer);
                    failing = true;
                } else {
                    tracing::debug!("notify {label}: still failing: {why}");
                }
            }
            Delivery::Gone(why) => {
                tracing::error!("notify {label}: {why}; no more messages go to this entry until printvigil restarts");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_by_status() {
        let mut h = HeaderMap::new();
        assert_eq!(judge_http(StatusCode::NO_CONTENT, &h, b""), Judged::Sent);
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            judge_http(StatusCode::TOO_MANY_REQUESTS, &h, b""),
            Judged::Retry { after: Some(Duration::from_secs(2)), why: "HTTP 429 Too Many Requests".into() }
        );
        assert!(matches!(judge_http(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b""), Judged::Retry { after: None, .. }));
        assert!(matches!(judge_http(StatusCode::UNAUTHORIZED, &h, b"{\"error\":\"x\"}"), Judged::Failed(m) if m.contains("401")));
        h.insert(reqwest::header::RETRY_AFTER, "1e300".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_WAIT), "a huge wait is capped, not a panic");
        assert_eq!(wait_secs(f64::NAN), None);
        assert_eq!(wait_secs(-1.0), None);
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(3) >= Duration::from_secs(4) && backoff(40) <= MAX_WAIT);
    }
}
