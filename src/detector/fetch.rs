//! `printvigil model fetch`: downloads Obico's production model. Resumable (HTTP Range on a
//! `.part` file kept beside the destination), size and sha256 verified, installed
//! atomically (rename after fsync). A short or wrong file is never installed. Bounded: no
//! more than [`MODEL_MAX_BYTES`] is written (refused up front when the server says its file
//! is larger), and an error page is read only up to [`ERROR_BODY_MAX`] bytes.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Obico's production model file name.
pub const MODEL_FILE: &str = "model-weights-5a6b1be1fa.onnx";
/// Its sha256.
pub const MODEL_SHA256: &str = "0a6ebd8e30dbf6a450c50f9c0a5406f04ba7eb1c99fd5996e888c78bb383b9aa";
/// Where it is published, then a mirror.
pub const MODEL_URLS: [&str; 2] = [
    "https://tsd-pub-static.s3.amazonaws.com/ml-models/model-weights-5a6b1be1fa.onnx",
    "https://www.obico.io/static_pub/ml-models/model-weights-5a6b1be1fa.onnx",
];

/// The largest file `model fetch` accepts: Obico's model is about 200 MB.
pub const MODEL_MAX_BYTES: u64 = 256 << 20;
/// How much of an error answer is read (for its first line in the message).
pub const ERROR_BODY_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} answered HTTP {status}{detail}; check the URL (or try again later)")]
    Http { url: String, status: u16, detail: String },
    #[error(
        "{url} sends more than {limit} bytes{declared}, larger than the model can be; nothing was kept: check the URL"
    )]
    TooLarge { url: String, limit: u64, declared: String },
    #[error("could not reach {url}: {reason}; check the network, then run the command again (it resumes)")]
    Network { url: String, reason: String },
    #[error("the download from {url} stopped after {received} of {expected} bytes; run the command again to resume")]
    Truncated { url: String, received: u64, expected: u64 },
    #[error("the file from {url} has sha256 {found}, expected {expected}; it was discarded. The server sent a different file: check the URL")]
    HashMismatch { url: String, expected: String, found: String },
    #[error("{url} answered a range request with the wrong range ({detail})")]
    BadRange { url: String, detail: String },
    #[error("cannot write {path}: {reason}; check the directory exists and is writable")]
    Io { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// The partial-download file kept beside `dest`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    dest.with_file_name(name)
}

/// sha256 of a file, hex.
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The destination already held the right file.
    AlreadyPresent,
    /// Downloaded (`resumed_from` bytes were already on disk).
    Downloaded { bytes: u64, resumed_from: u64 },
}

/// Fetches `url` into `dest`, verifying `sha256`. Tries each URL in turn; returns the last
/// error when none works.
pub async fn fetch(
    client: &reqwest::Client,
    urls: &[&str],
    sha256: &str,
    dest: &Path,
) -> Result<Fetched, FetchError> {
    fetch_at_most(client, urls, sha256, dest, MODEL_MAX_BYTES).await
}

/// [`fetch`], writing no more than `max_bytes`.
pub async fn fetch_at_most(
    client: &reqwest::Client,
    urls: &[&str],
    sha256: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Fetched, FetchError> {
    if dest.exists() && sha256_file(dest).await.map_err(io_err(dest))? == sha256 {
        return Ok(Fetched::AlreadyPresent);
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    }
    let mut last = None;
    for url in urls {
        match fetch_one(client, url, sha256, dest, max_bytes).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!("model fetch from {url} failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| FetchError::Network { url: String::new(), reason: "no URL given".into() }))
}

/// An error and its causes on one line: reqwest's own message leaves out why a request
/// failed ("connection refused", a DNS failure, a certificate problem).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        cur = c.source();
    }
    s
}

/// The start of an error answer, read up to [`ERROR_BODY_MAX`] bytes: `: <first line>`, or
/// nothing when it is empty or not text.
async fn error_detail(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while body.len() < ERROR_BODY_MAX {
        match stream.next().await {
            Some(Ok(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_MAX - body.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.is_empty() || line.contains('\u{FFFD}') {
        return String::new();
    }
    let shown: String = line.chars().take(200).collect();
    format!(" ({shown})")
}

async fn fetch_one(
    client: &reqwest::Client,
    url: &str,
    sha256: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Fetched, FetchError> {
    let part = part_path(dest);
    let mut offset = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    let net = |e: reqwest::Error| FetchError::Network { url: url.to_string(), reason: chain(&e) };
    let too_large = |declared: Option<u64>| FetchError::TooLarge {
        url: url.to_string(),
        limit: max_bytes,
        declared: declared.map(|n| format!(" (it says {n})")).unwrap_or_default(),
    };

    let mut req = client.get(url);
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    let resp = req.send().await.map_err(net)?;
    let status = resp.status().as_u16();
    let expected_total = match status {
        206 => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let (start, total) = parse_content_range(&range)
                .ok_or_else(|| FetchError::BadRange { url: url.into(), detail: format!("Content-Range `{range}`") })?;
            if start != offset {
                return Err(FetchError::BadRange {
                    url: url.into(),
                    detail: format!("asked from byte {offset}, got from {start}"),
                });
            }
            total
        }
        200 => {
            offset = 0; // the server ignored the range: start over
            resp.content_length()
        }
        416 if offset > 0 => {
            // Everything is already here (or the part is bad): verify it as it is.
            return finish(url, sha256, &part, dest, offset, offset).await;
        }
        _ => return Err(FetchError::Http { url: url.into(), status, detail: error_detail(resp).await }),
    };
    if let Some(total) = expected_total.filter(|&t| t > max_bytes) {
        return Err(too_large(Some(total)));
    }
    // What is on its way beyond the offset, when the server says (its own promise: never
    // more than it announced is written either).
    let cap = expected_total.unwrap_or(max_bytes).min(max_bytes);

    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(offset > 0)
        .truncate(offset == 0)
        .open(&part)
        .await
        .map_err(io_err(&part))?;
    let resumed_from = offset;
    let mut received = offset;
    let mut stream = resp.bytes_stream();
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if received + bytes.len() as u64 > cap {
                    drop(file);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(too_large(expected_total));
                }
                file.write_all(&bytes).await.map_err(io_err(&part))?;
                received += bytes.len() as u64;
            }
            Err(e) => {
                failure = Some(chain(&e));
                break;
            }
        }
    }
    file.flush().await.map_err(io_err(&part))?;
    file.sync_all().await.map_err(io_err(&part))?;
    drop(file);
    if let Some(total) = expected_total
        && received < total
    {
        return Err(FetchError::Truncated { url: url.into(), received, expected: total });
    }
    if let Some(reason) = failure {
        return Err(FetchError::Network { url: url.into(), reason });
    }
    finish(url, sha256, &part, dest, received, resumed_from).await
}

async fn finish(
    url: &str,
    sha256: &str,
    part: &Path,
    dest: &Path,
    bytes: u64,
    resumed_from: u64,
) -> Result<Fetched, FetchError> {
    let found = sha256_file(part).await.map_err(io_err(part))?;
    if found != sha256 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(FetchError::HashMismatch { url: url.into(), expected: sha256.into(), found });
    }
    tokio::fs::rename(part, dest).await.map_err(io_err(dest))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(Fetched::Downloaded { bytes, resumed_from })
}

/// `bytes START-END/TOTAL` -> (START, TOTAL if known).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes x-9/10"), None);
    }

    #[test]
    fn part_file_sits_beside_the_destination() {
        assert_eq!(part_path(Path::new("/a/b/m.onnx")), Path::new("/a/b/m.onnx.part"));
    }
}
