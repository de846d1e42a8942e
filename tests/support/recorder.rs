//! A local HTTP endpoint that records every request it gets (method, path and query,
//! headers, body, and the parts of a multipart body) and answers as the test scripts:
//! the notification tests point webhook, ntfy, Telegram and Discord entries at it.
//!
//! Answers come from a script per path prefix (status, headers, body), one per request,
//! then the default: 200 with `{"ok":true,"result":{"message_id":1}}` (Telegram's
//! shape; the other services ignore the body).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl Part {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub parts: Vec<Part>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {}", self.uri, String::from_utf8_lossy(&self.body)))
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16, body: &str) -> Answer {
        Answer { status, headers: Vec::new(), body: body.into() }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Answer {
        self.headers.push((k.into(), v.into()));
        self
    }
}

#[derive(Default)]
struct Inner {
    got: Vec<Recorded>,
    scripts: Vec<(String, VecDeque<Answer>)>,
}

pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, req: Request<Body>) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let method: Method = parts.method.clone();
    let uri: Uri = parts.uri.clone();
    let headers = parts.headers.clone();
    let body: Bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let mut mparts = Vec::new();
    let is_multipart = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/"));
    if is_multipart {
        let rebuilt = Request::from_parts(parts, Body::from(body.clone()));
        if let Ok(mut mp) = Multipart::from_request(rebuilt, &()).await {
            while let Ok(Some(field)) = mp.next_field().await {
                let name = field.name().unwrap_or_default().to_string();
                let file_name = field.file_name().map(str::to_string);
                let content_type = field.content_type().map(str::to_string);
                let data = field.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                mparts.push(Part { name, file_name, content_type, data });
            }
        }
    }
    let path_q = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let mut inner = inner.lock().unwrap();
    inner.got.push(Recorded { method: method.to_string(), uri: path_q.clone(), headers, body: body.to_vec(), parts: mparts, at });
    let answer = inner
        .scripts
        .iter_mut()
        .find(|(prefix, q)| path_q.starts_with(prefix.as_str()) && !q.is_empty())
        .and_then(|(_, q)| q.pop_front());
    let a = answer.unwrap_or_else(|| Answer::status(200, r#"{"ok":true,"result":{"message_id":1}}"#));
    let mut resp = (StatusCode::from_u16(a.status).unwrap(), a.body).into_response();
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (k, v) in a.headers {
        resp.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    resp
}

impl Recorder {
    pub async fn start() -> Recorder {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { inner, addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests whose path starts with `prefix` with `answers`, in order.
    pub fn script(&self, prefix: &str, answers: Vec<Answer>) {
        self.inner.lock().unwrap().scripts.push((prefix.into(), answers.into()));
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().got.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn to(&self, prefix: &str) -> Vec<Recorded> {
        self.all().into_iter().filter(|r| r.uri.starts_with(prefix)).collect()
    }

    /// Waits until `n` requests to `prefix` arrived; returns them.
    pub async fn wait(&self, prefix: &str, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.to(prefix);
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                let all: Vec<String> = self.all().iter().map(|r| format!("{} {}", r.method, r.uri)).collect();
                panic!("timed out after {limit:?} waiting for {n} request(s) to {prefix}; got {}: {all:?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
