//! `model fetch` against a local HTTP server: a good file, a wrong hash, a truncated body,
//! a 404, a server that dies mid-transfer (then a resume), one that ignores ranges, one
//! that sends without end or announces a file larger than any model, an endless error page,
//! and no server at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use printvigil::detector::fetch::{FetchError, Fetched, fetch, part_path};

/// A body of `chunk`s repeated without end (as long as the client reads).
fn endless(chunk: &'static [u8]) -> Body {
    Body::from_stream(futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.to_vec())))
}
use sha2::Digest;

#[derive(Clone)]
struct Files {
    data: Arc<Vec<u8>>,
    requests: Arc<AtomicUsize>,
}

fn range_start(headers: &HeaderMap) -> Option<usize> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

/// A body that sends `bytes` and then fails, cutting the connection.
fn cut_after(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(bytes), Err(std::io::Error::other("server went away"))];
    Body::from_stream(futures_util::stream::iter(chunks))
}

async fn serve(State(f): State<Files>, UrlPath(mode): UrlPath<String>, headers: HeaderMap) -> Response {
    let n = f.requests.fetch_add(1, Ordering::SeqCst);
    let data = f.data.as_slice();
    let total = data.len();
    match mode.as_str() {
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "wrong" => data.iter().map(|b| b ^ 1).collect::<Vec<u8>>().into_response(),
        "truncated" => {
            (StatusCode::OK, [(header::CONTENT_LENGTH, total.to_string())], cut_after(data[..total / 3].to_vec()))
                .into_response()
        }
        "norange" => data.to_vec().into_response(),
        "endless" => Response::new(endless(&[7u8; 65536])),
        "huge-declared" => {
            let mut r = Response::new(cut_after(vec![7u8; 1 << 20]));
            r.headers_mut().insert(header::CONTENT_LENGTH, (300u64 << 20).into());
            r
        }
        "error-page" => {
            let mut r = Response::new(endless(b"<html><body>Service Unavailable: the mirror is down</body></html>\n"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        "flaky" | "good" => {
            let start = range_start(&headers).unwrap_or(0);
            if start >= total && start > 0 {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            let body = &data[start..];
            let status = if start > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
            let mut resp = if mode == "flaky" && n == 0 {
                // First request: half the file, then the server dies.
                let mut r = Response::new(cut_after(body[..body.len() / 2].to_vec()));
                r.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
                r
            } else {
                Response::new(Body::from(body.to_vec()))
            };
            *resp.status_mut() = status;
            if start > 0 {
                let range = format!("bytes {start}-{}/{total}", total - 1);
                resp.headers_mut().insert(header::CONTENT_RANGE, range.parse().unwrap());
            }
            resp
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

struct Server {
    base: String,
    sha: String,
    data: Arc<Vec<u8>>,
    requests: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn server() -> Server {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let files = Files { data: Arc::new(data), requests: Arc::new(AtomicUsize::new(0)) };
    let app = Router::new().route("/{mode}", axum::routing::get(serve)).with_state(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { base, sha, data: files.data, requests: files.requests, _task: task }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(20)).build().unwrap()
}

#[tokio::test]
async fn good_file_is_installed_verified_and_not_fetched_twice() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models/m.onnx");
    let url = format!("{}/good", s.base);
    let got = fetch(&client(), &[&url], &s.sha, &dest).await.unwrap();
    assert_eq!(got, Fetched::Downloaded { bytes: s.data.len() as u64, resumed_from: 0 });
    assert_eq!(std::fs::read(&dest).unwrap(), *s.data);
    assert!(!part_path(&dest).exists());
    let before = s.requests.load(Ordering::SeqCst);
    assert_eq!(fetch(&client(), &[&url], &s.sha, &dest).await.unwrap(), Fetched::AlreadyPresent);
    assert_eq!(s.requests.load(Ordering::SeqCst), before, "no download when the file is already right");
}

#[tokio::test]
async fn wrong_hash_is_refused_and_nothing_installed() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    let err = fetch(&client(), &[&format!("{}/wrong", s.base)], &s.sha, &dest).await.unwrap_err();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&s.sha));
    assert!(!dest.exists() && !part_path(&dest).exists(), "a wrong file is discarded");
}

#[tokio::test]
async fn truncated_body_is_refused_and_kept_for_resume() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    let err = fetch(&client(), &[&format!("{}/truncated", s.base)], &s.sha, &dest).await.unwrap_err();
    println!("{err}");
    assert!(matches!(err, FetchError::Truncated { .. } | FetchError::Network { .. }), "{err}");
    assert!(!dest.exists(), "a short file is never installed");
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && (kept as usize) < s.data.len());
}

#[tokio::test]
async fn not_found_says_so() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(&client(), &[&format!("{}/missing", s.base)], &s.sha, &dir.path().join("m.onnx"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Http { status: 404, .. }), "{err}");
}

#[tokio::test]
async fn server_gone_mid_transfer_then_resumed_from_where_it_stopped() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    let url = format!("{}/flaky", s.base);
    let err = fetch(&client(), &[&url], &s.sha, &dest).await.unwrap_err();
    println!("first attempt: {err}");
    assert!(err.to_string().contains("run the command again"), "{err}");
    let partial = std::fs::metadata(part_path(&dest)).unwrap().len();
    let got = fetch(&client(), &[&url], &s.sha, &dest).await.unwrap();
    assert_eq!(got, Fetched::Downloaded { bytes: s.data.len() as u64, resumed_from: partial });
    assert_eq!(std::fs::read(&dest).unwrap(), *s.data);
}

#[tokio::test]
async fn a_server_that_ignores_ranges_restarts_cleanly_and_mirrors_are_tried() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    std::fs::write(part_path(&dest), &s.data[..1000]).unwrap();
    let dead = "http://127.0.0.1:9/nothing-listens-here";
    let got = fetch(&client(), &[dead, &format!("{}/norange", s.base)], &s.sha, &dest).await.unwrap();
    assert_eq!(got, Fetched::Downloaded { bytes: s.data.len() as u64, resumed_from: 0 });
    assert_eq!(std::fs::read(&dest).unwrap(), *s.data);
}

#[tokio::test]
async fn a_network_failure_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}/model.onnx");
    let err = fetch(&client(), &[&url], "00", &dir.path().join("m.onnx")).await.unwrap_err().to_string();
    println!("FIGURE refused: {err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    let err = fetch(&client(), &["http://no-such-host.invalid/model.onnx"], "00", &dir.path().join("m.onnx"))
        .await
        .unwrap_err()
        .to_string();
    println!("FIGURE no such host: {err}");
    assert!(err.to_lowercase().contains("dns"), "{err}");
}

#[tokio::test]
async fn a_file_larger_than_any_model_is_refused_up_front() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    let err = fetch(&client(), &[&format!("{}/huge-declared", s.base)], &s.sha, &dest).await.unwrap_err();
    println!("FIGURE declared 300 MiB: {err}");
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(!dest.exists() && !part_path(&dest).exists(), "nothing written");
}

#[tokio::test]
async fn an_endless_download_stops_at_the_cap() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.onnx");
    let cap = 2u64 << 20;
    let err = printvigil::detector::fetch::fetch_at_most(&client(), &[&format!("{}/endless", s.base)], &s.sha, &dest, cap)
        .await
        .unwrap_err();
    println!("FIGURE endless body, cap {cap}: {err}");
    assert!(matches!(err, FetchError::TooLarge { limit, .. } if limit == cap), "{err}");
    assert!(!dest.exists() && !part_path(&dest).exists(), "nothing kept");
}

#[tokio::test]
async fn an_endless_error_page_is_read_only_in_part() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(&client(), &[&format!("{}/error-page", s.base)], &s.sha, &dir.path().join("m.onnx"))
        .await
        .unwrap_err();
    println!("FIGURE endless 503 page: {err}");
    assert!(matches!(err, FetchError::Http { status: 503, .. }), "{err}");
    assert!(err.to_string().contains("Service Unavailable: the mirror is down"), "{err}");
}
