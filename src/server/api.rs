//! The Obico REST client: printers, `start_print`, `finish_print`, `predict`; response
//! parsing for both `predict` shapes and both validation-error shapes; the spec's meaning
//! of each 404; 401/403 handling (drop the token, fetch a new one once, then report).
//!
//! Only the API's own answer counts. A success is a 2xx whose body is JSON of the shape
//! the call expects; a refusal is a 4xx whose body is the API's JSON error (`{"detail":
//! ...}` or field errors). Anything else - an HTML page with a 200 (captive portal, a web
//! app at a wrong base path), a proxy's 400 page, an empty or oversized body - is
//! [`ApiError::NotTheApi`]: retried, never taken as delivered or refused, and its message
//! points at `server.url`.
//!
//! Each answer is judged by a pure function of the status and the body bytes
//! ([`parse_printer_answer`], [`parse_printer_list_answer`], [`parse_start_answer`],
//! [`parse_finish_answer`], [`parse_predict_answer`], and [`classify_answer`] under them),
//! so every answer a server can give is testable and fuzzable without a network.

use std::sync::Arc;

use serde_json::Value;

use crate::secret::Secret;
use crate::server::config::TokenHeader;
use crate::server::http::{MAX_ANSWER_BYTES, ReadError, read_capped};
use crate::server::oauth::{AuthError, TokenManager, describe_reqwest};

pub const NOT_PRINTING: &str = "Printer is not currently printing.";
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";
pub const NO_PRINTER: &str = "No Printer matches the given query.";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("could not reach the server ({0}); will retry")]
    Network(String),
    #[error("the server answered HTTP {status}{detail}; will retry")]
    Unavailable { status: u16, detail: String },
    #[error(
        "the answer from {url} is not the Obico API's ({found}, HTTP {status}); check that \
         server.url is the server's base URL (the API lives at <server.url>/api/v1/) and that \
         no login portal or proxy answers in its place; will retry"
    )]
    NotTheApi {
        url: String,
        status: u16,
        found: String,
    },
    #[error(
        "the server refused the token even after fetching a new one (HTTP {status}: {detail}); \
         check that server.client_id/server.client_secret belong to this server, \
         or run `printvigil login`"
    )]
    Unauthenticated { status: u16, detail: String },
    #[error(
        "the server refused server.token (HTTP {status}: {detail}): the token is wrong, expired \
         or revoked, and a configured token cannot be renewed; put a valid token in \
         server.token, or remove it to use client credentials (server.client_id and \
         server.client_secret) or `printvigil login`"
    )]
    StaticTokenRefused { status: u16, detail: String },
    #[error(
        "the server answered \"You do not have permission to perform this action.\": a token from \
         the client-credentials grant carries no user on a stock Obico server, so it cannot manage \
         printers. Two ways out: (1) link a user account with `printvigil login` (or put a \
         user-bound token in server.token), or (2) run a server that supports client-credentials \
         tokens for the printer API"
    )]
    NoPermission,
    #[error("the printer is not printing on the server")]
    NotPrinting,
    #[error(
        "printer {0} does not exist on the server or belongs to another user: fix server.printer_id, or remove it to register this printer anew"
    )]
    PrinterNotFound(i64),
    #[error("the server refused the request as invalid: {0}")]
    Validation(String),
    #[error("the server refused the request (HTTP {status}{detail})")]
    Rejected { status: u16, detail: String },
    #[error("the server's answer could not be understood: {0}")]
    BadResponse(String),
    #[error("{0}; will retry")]
    Local(String),
}

impl ApiError {
    /// Transient: retry with backoff. Everything else is a definite answer.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Auth(a) => a.is_transient(),
            ApiError::Network(_)
            | ApiError::Unavailable { .. }
            | ApiError::Local(_)
            | ApiError::NotTheApi { .. } => true,
            _ => false,
        }
    }

    /// A definite refusal of this one request, in the API's own JSON: the event can be
    /// dropped (with the reason logged). Authentication, permission and unknown-printer
    /// errors are not: they are fixed by configuration, and the events wait for it. Nor is
    /// an answer that is not the API's ([`ApiError::NotTheApi`]).
    pub fn is_definite_rejection(&self) -> bool {
        matches!(
            self,
            ApiError::Validation(_) | ApiError::Rejected { .. } | ApiError::BadResponse(_)
        )
    }

    /// An error that configuration (or `printvigil login`) must fix: every call fails the
    /// same way until then, so the mirror stops trying and probes slowly.
    pub fn needs_config(&self) -> bool {
        match self {
            ApiError::Auth(a) => !a.is_transient(),
            ApiError::NoPermission
            | ApiError::Unauthenticated { .. }
            | ApiError::StaticTokenRefused { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Printer {
    pub id: i64,
    pub name: String,
    pub printing: bool,
    /// File name of the open print, when the server says.
    pub current_filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub confidence: f64,
    /// As sent: `[xc, yc, w, h]` (real server) or the guide's `bbox`.
    pub bbox: Vec<f64>,
}

/// A `predict` answer, from either shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prediction {
    pub p: f64,
    pub detections: Vec<Detection>,
    pub ewm_mean: Option<f64>,
    pub rolling_mean_short: Option<f64>,
    pub rolling_mean_long: Option<f64>,
    pub normalized_p: Option<f64>,
}

fn f(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        Value::String(s) => s.trim().parse().ok().filter(|x: &f64| x.is_finite()),
        _ => None,
    }
}

/// Parses both shapes: real server `{"result": {"p", "temporal_stats", "detections":
/// [["failure", conf, [xc,yc,w,h]]]}}`, guide `{"result": {"p", "detections":
/// [{"confidence","bbox"}]}, "temporal_stats": {...}, "normalized_p"}`.
pub fn parse_prediction(body: &Value) -> Result<Prediction, ApiError> {
    let result = body
        .get("result")
        .filter(|r| r.is_object())
        .ok_or_else(|| ApiError::BadResponse("no `result` object in the predict answer".into()))?;
    let p = f(result.get("p")).ok_or_else(|| {
        ApiError::BadResponse("no number `result.p` in the predict answer".into())
    })?;
    let mut detections = Vec::new();
    if let Some(list) = result.get("detections").and_then(Value::as_array) {
        for d in list {
            let parsed = match d {
                Value::Array(a) => {
                    let conf = f(a.get(1));
                    let bbox = a
                        .get(2)
                        .and_then(Value::as_array)
                        .map(|b| b.iter().filter_map(|x| f(Some(x))).collect());
                    conf.map(|c| Detection {
                        confidence: c,
                        bbox: bbox.unwrap_or_default(),
                    })
                }
                Value::Object(_) => f(d.get("confidence")).map(|c| Detection {
                    confidence: c,
                    bbox: d
                        .get("bbox")
                        .and_then(Value::as_array)
                        .map(|b| b.iter().filter_map(|x| f(Some(x))).collect())
                        .unwrap_or_default(),
                }),
                _ => None,
            };
            if let Some(det) = parsed {
                detections.push(det);
            }
        }
    }
    let stats = result
        .get("temporal_stats")
        .or_else(|| body.get("temporal_stats"));
    let stat = |k: &str| f(stats.and_then(|s| s.get(k)));
    Ok(Prediction {
        p,
        detections,
        ewm_mean: stat("ewm_mean"),
        rolling_mean_short: stat("rolling_mean_short"),
        rolling_mean_long: stat("rolling_mean_long"),
        normalized_p: f(body.get("normalized_p")).or_else(|| f(result.get("normalized_p"))),
    })
}

/// `detail`, or validation errors in either shape (`{"f": "msg"}` / `{"f": ["msg"]}`), as text.
pub fn error_text(body: &Value) -> String {
    if let Some(d) = body.get("detail").and_then(Value::as_str) {
        return d.chars().take(500).collect();
    }
    let Some(obj) = body.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in obj {
        let msg = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        parts.push(format!("{k}: {msg}"));
    }
    parts.join("; ").chars().take(500).collect()
}

fn parse_printer(v: &Value) -> Result<Printer, ()> {
    let id = v
        .get("id")
        .and_then(|x| {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or(())?;
    Ok(Printer {
        id,
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        printing: v.get("current_print").is_some_and(|c| !c.is_null()),
        current_filename: v
            .get("current_print")
            .and_then(|c| c.get("filename"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// What a body that is not the API's looks like, in a few words (for the error message).
fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let t = text.trim_start();
    if t.is_empty() {
        return "an empty body".into();
    }
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.starts_with('<') {
        let title = lower
            .find("<title>")
            .map(|i| {
                let rest = &t[i + 7..];
                rest[..rest.find('<').unwrap_or(rest.len())].trim().to_string()
            })
            .filter(|s| !s.is_empty());
        return match title {
            Some(title) => format!(
                "an HTML page titled {:?}",
                title.chars().filter(|c| !c.is_control()).take(60).collect::<String>()
            ),
            None => "an HTML page".into(),
        };
    }
    if serde_json::from_slice::<Value>(body).is_ok() {
        return "JSON of another shape".into();
    }
    format!("{} bytes that are not JSON", body.len())
}

/// The API's error body: `{"detail": "..."}` or field errors (`{"f": "msg"}` or
/// `{"f": ["msg", ...]}`). Anything else is not an answer of the API's.
fn api_error_json(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    if obj.is_empty() {
        return None;
    }
    if obj.get("detail").is_some_and(Value::is_string) {
        return Some(v);
    }
    let fields_ok = obj.values().all(|x| match x {
        Value::String(_) => true,
        Value::Array(a) => !a.is_empty() && a.iter().all(Value::is_string),
        _ => false,
    });
    fields_ok.then_some(v)
}

/// Classifies an answer by its status and body bytes: `Ok` with the JSON for a 2xx whose
/// body is JSON (the caller checks its shape), else the error it means. Only the API's
/// own JSON error is a refusal; any other body is [`ApiError::NotTheApi`] (retried).
/// `url` is only used in messages. Pure: no network, never panics.
pub fn classify_answer(url: &str, status: u16, body: &[u8]) -> Result<Value, ApiError> {
    let not_api = || ApiError::NotTheApi {
        url: url.to_string(),
        status,
        found: describe_body(body),
    };
    if (200..=299).contains(&status) {
        return serde_json::from_slice(body).map_err(|_| not_api());
    }
    let json = api_error_json(body);
    let detail = json.as_ref().map(error_text).unwrap_or_default();
    let dd = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match status {
        408 | 425 | 429 | 500..=599 => Err(ApiError::Unavailable { status, detail: dd }),
        _ if json.is_none() => Err(not_api()),
        401 | 403 if detail == NO_PERMISSION => Err(ApiError::NoPermission),
        401 | 403 => Err(ApiError::Unauthenticated { status, detail }),
        404 if detail == NOT_PRINTING => Err(ApiError::NotPrinting),
        400 | 422 => Err(ApiError::Validation(detail)),
        400..=499 => Err(ApiError::Rejected { status, detail: dd }),
        _ => Err(not_api()),
    }
}

fn shape_error(url: &str, status: u16, what: &str) -> ApiError {
    ApiError::NotTheApi {
        url: url.to_string(),
        status,
        found: format!("JSON without {what}"),
    }
}

/// A 404 the API means as "no such printer" (or another user's): [`ApiError::PrinterNotFound`].
fn printer_404<T>(r: Result<T, ApiError>, id: i64) -> Result<T, ApiError> {
    match r {
        Err(ApiError::Rejected { status: 404, .. }) => Err(ApiError::PrinterNotFound(id)),
        other => other,
    }
}

/// The answer to `GET /api/v1/printers/{id}/` or `POST /api/v1/printers/`: a printer object.
/// `id`: the printer asked for (`None` for a create). Pure, never panics.
pub fn parse_printer_answer(
    url: &str,
    id: Option<i64>,
    status: u16,
    body: &[u8],
) -> Result<Printer, ApiError> {
    let r = classify_answer(url, status, body);
    let v = match id {
        Some(id) => printer_404(r, id)?,
        None => r?,
    };
    parse_printer(&v).map_err(|()| shape_error(url, status, "a printer's integer `id`"))
}

/// The answer to `GET /api/v1/printers/`: a list, or a paginated `{"results": [...]}`.
/// Pure, never panics.
pub fn parse_printer_list_answer(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<Vec<Printer>, ApiError> {
    let v = classify_answer(url, status, body)?;
    let list = v
        .as_array()
        .or_else(|| v.get("results").and_then(Value::as_array))
        .ok_or_else(|| shape_error(url, status, "a list of printers"))?;
    list.iter()
        .map(|p| parse_printer(p).map_err(|()| shape_error(url, status, "a printer's integer `id`")))
        .collect()
}

/// `start_print`/`finish_print` succeeded: `{"succeeded": true, "printer": {...}}` (the
/// real server), or at least a printer object with its id.
fn print_call_ok(url: &str, status: u16, v: &Value) -> Result<(), ApiError> {
    match v.get("succeeded") {
        Some(Value::Bool(true)) => Ok(()),
        Some(Value::Bool(false)) => Err(ApiError::Rejected {
            status,
            detail: ": the server answered \"succeeded\": false".into(),
        }),
        _ if v.get("printer").is_some_and(|p| p.get("id").is_some()) => Ok(()),
        _ => Err(shape_error(url, status, "`succeeded` or `printer`")),
    }
}

/// The answer to `POST /api/v1/printers/{id}/start_print/`. Pure, never panics.
pub fn parse_start_answer(url: &str, id: i64, status: u16, body: &[u8]) -> Result<(), ApiError> {
    let v = printer_404(classify_answer(url, status, body), id)?;
    print_call_ok(url, status, &v)
}

/// The answer to `POST /api/v1/printers/{id}/finish_print/`: `Ok(true)` closed the print,
/// `Ok(false)` when the server had none open (404 "not currently printing": already
/// finished, not an error). Pure, never panics.
pub fn parse_finish_answer(url: &str, id: i64, status: u16, body: &[u8]) -> Result<bool, ApiError> {
    match printer_404(classify_answer(url, status, body), id) {
        Ok(v) => print_call_ok(url, status, &v).map(|()| true),
        Err(ApiError::NotPrinting) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The answer to `POST /api/v1/printers/{id}/predict/`, either shape; `Err(NotPrinting)`
/// when the server has no open print. Pure, never panics.
pub fn parse_predict_answer(
    url: &str,
    id: i64,
    status: u16,
    body: &[u8],
) -> Result<Prediction, ApiError> {
    let v = printer_404(classify_answer(url, status, body), id)?;
    parse_prediction(&v).map_err(|e| match e {
        ApiError::BadResponse(what) => ApiError::NotTheApi {
            url: url.to_string(),
            status,
            found: what,
        },
        other => other,
    })
}

enum Body {
    None,
    Json(Value),
    Jpeg(Vec<u8>),
}

/// The REST client. Clone-cheap.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: url::Url,
    tokens: Arc<TokenManager>,
    header: TokenHeader,
}

impl ApiClient {
    pub fn new(
        http: reqwest::Client,
        base: url::Url,
        tokens: Arc<TokenManager>,
        header: TokenHeader,
    ) -> Self {
        Self {
            http,
            base,
            tokens,
            header,
        }
    }

    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.tokens
    }

    async fn send_once(
        &self,
        method: &reqwest::Method,
        url: &url::Url,
        body: &Body,
        token: &Secret,
        event_key: Option<&str>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let mut req = self.http.request(method.clone(), url.clone());
        req = match self.header {
            TokenHeader::Bearer => {
                req.header("Authorization", format!("Bearer {}", token.expose()))
            }
            TokenHeader::XApiKey => req.header("X-API-KEY", token.expose()),
        };
        if let Some(k) = event_key {
            // Ignored by the real server (it has no idempotency support); lets a test
            // server or a proxy recognise a re-sent event.
            req = req.header("Idempotency-Key", k);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Jpeg(bytes) => {
                let part = reqwest::multipart::Part::bytes(bytes.clone())
                    .file_name("frame.jpg")
                    .mime_str("image/jpeg")
                    .map_err(|e| ApiError::BadResponse(e.to_string()))?;
                req.multipart(reqwest::multipart::Form::new().part("img", part))
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Network(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        match read_capped(resp, MAX_ANSWER_BYTES).await {
            Ok(bytes) => Ok((status, bytes)),
            Err(ReadError::Network(e)) => Err(ApiError::Network(e)),
            Err(e @ ReadError::TooLarge { .. }) => Err(ApiError::NotTheApi {
                url: self.shown(url),
                status,
                found: e.to_string(),
            }),
        }
    }

    /// The URL for messages: the base and path, no query.
    fn shown(&self, url: &url::Url) -> String {
        let mut u = url.clone();
        u.set_query(None);
        u.to_string()
    }

    /// Sends with the current token; on 401/403 for authentication (the API's own JSON),
    /// drops the token, fetches a new one once and retries once. Returns the URL (for
    /// messages), the status and the body, for one of the `parse_*_answer` functions.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body,
        event_key: Option<&str>,
    ) -> Result<(String, u16, Vec<u8>), ApiError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ApiError::BadResponse(e.to_string()))?;
        let shown = self.shown(&url);
        let token = self.tokens.access_token().await?;
        let (status, bytes) = self
            .send_once(&method, &url, &body, &token, event_key)
            .await?;
        let refused = |status: u16, bytes: &[u8]| -> Option<ApiError> {
            match classify_answer(&shown, status, bytes) {
                Err(e @ ApiError::Unauthenticated { .. }) => Some(e),
                _ => None,
            }
        };
        let Some(first) = refused(status, &bytes) else {
            return Ok((shown, status, bytes));
        };
        if !self.tokens.invalidate(&token).await {
            return Err(match first {
                ApiError::Unauthenticated { status, detail } => {
                    ApiError::StaticTokenRefused { status, detail }
                }
                other => other,
            });
        }
        let token = self.tokens.access_token().await?;
        let (status, bytes) = self
            .send_once(&method, &url, &body, &token, event_key)
            .await?;
        Ok((shown, status, bytes))
    }

    pub async fn list_printers(&self) -> Result<Vec<Printer>, ApiError> {
        let (url, status, body) = self
            .call(reqwest::Method::GET, "api/v1/printers/", Body::None, None)
            .await?;
        parse_printer_list_answer(&url, status, &body)
    }

    pub async fn create_printer(&self, name: &str) -> Result<Printer, ApiError> {
        let (url, status, body) = self
            .call(
                reqwest::Method::POST,
                "api/v1/printers/",
                Body::Json(serde_json::json!({ "name": name })),
                None,
            )
            .await?;
        parse_printer_answer(&url, None, status, &body)
    }

    pub async fn get_printer(&self, id: i64) -> Result<Printer, ApiError> {
        let (url, status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("api/v1/printers/{id}/"),
                Body::None,
                None,
            )
            .await?;
        parse_printer_answer(&url, Some(id), status, &body)
    }

    pub async fn start_print(
        &self,
        id: i64,
        filename: &str,
        event_key: Option<&str>,
    ) -> Result<(), ApiError> {
        let (url, status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/start_print/"),
                Body::Json(serde_json::json!({ "filename": filename })),
                event_key,
            )
            .await?;
        parse_start_answer(&url, id, status, &body)
    }

    /// `Ok(false)` when the server had no open print (already finished: not an error).
    pub async fn finish_print(
        &self,
        id: i64,
        status: &str,
        event_key: Option<&str>,
    ) -> Result<bool, ApiError> {
        let (url, code, body) = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/finish_print/"),
                Body::Json(serde_json::json!({ "status": status })),
                event_key,
            )
            .await?;
        parse_finish_answer(&url, id, code, &body)
    }

    /// Uploads one JPEG. `Err(NotPrinting)` when the server has no open print.
    pub async fn predict(&self, id: i64, jpeg: Vec<u8>) -> Result<Prediction, ApiError> {
        let (url, status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/predict/"),
                Body::Jpeg(jpeg),
                None,
            )
            .await?;
        parse_predict_answer(&url, id, status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_predict_shapes() {
        let real = json!({"result": {"p": 0.42, "temporal_stats": {"ewm_mean": 0.1, "rolling_mean_short": 0.2, "rolling_mean_long": 0.3, "prediction_num": 5, "prediction_num_lifetime": 9},
            "detections": [["failure", 0.42, [10.0, 20.0, 5.0, 6.0]]]}});
        let p = parse_prediction(&real).unwrap();
        assert_eq!(p.p, 0.42);
        assert_eq!(
            p.detections,
            vec![Detection {
                confidence: 0.42,
                bbox: vec![10.0, 20.0, 5.0, 6.0]
            }]
        );
        assert_eq!((p.ewm_mean, p.rolling_mean_long), (Some(0.1), Some(0.3)));
        let guide = json!({"result": {"p": 0.0234, "detections": [{"confidence": 0.85, "bbox": [100, 150, 200, 250]}]},
            "temporal_stats": {"ewm_mean": 0.0312, "rolling_mean_short": 0.0289, "rolling_mean_long": 0.0245}, "normalized_p": 0.0156});
        let g = parse_prediction(&guide).unwrap();
        assert_eq!(g.detections[0].bbox, vec![100.0, 150.0, 200.0, 250.0]);
        assert_eq!((g.ewm_mean, g.normalized_p), (Some(0.0312), Some(0.0156)));
        assert!(parse_prediction(&json!({"result": {}})).is_err());
        assert!(parse_prediction(&json!("x")).is_err());
        assert!(
            parse_prediction(&json!({"result": {"p": 0.1, "detections": [null, [1], {"x": 1}]}}))
                .unwrap()
                .detections
                .is_empty()
        );
    }

    #[test]
    fn both_validation_shapes() {
        assert_eq!(
            error_text(&json!({"filename": "This field is required."})),
            "filename: This field is required."
        );
        assert_eq!(
            error_text(&json!({"name": ["This field is required."]})),
            "name: This field is required."
        );
        assert_eq!(error_text(&json!({"detail": NOT_PRINTING})), NOT_PRINTING);
        assert_eq!(error_text(&Value::Null), "");
    }

    fn c(status: u16, v: Value) -> Result<Value, ApiError> {
        classify_answer("http://x/api/v1/", status, v.to_string().as_bytes())
    }

    #[test]
    fn classification() {
        assert!(matches!(
            c(404, json!({"detail": NOT_PRINTING})),
            Err(ApiError::NotPrinting)
        ));
        assert!(matches!(
            c(404, json!({"detail": NO_PRINTER})),
            Err(ApiError::Rejected { status: 404, .. })
        ));
        assert!(c(503, Value::Null).unwrap_err().is_transient());
        assert!(c(429, Value::Null).unwrap_err().is_transient());
        assert!(c(400, json!({"filename": ["x"]})).unwrap_err().is_definite_rejection());
        assert!(c(400, json!({"filename": "This field is required."})).unwrap_err().is_definite_rejection());
        assert!(!ApiError::NoPermission.is_definite_rejection());
        assert!(matches!(c(403, json!({"detail": NO_PERMISSION})), Err(ApiError::NoPermission)));
    }

    /// Answers that are not the API's are retried, whatever their status, and say where
    /// to look.
    #[test]
    fn answers_that_are_not_the_api() {
        let page = b"<!DOCTYPE html><html><head><title>Hotel WiFi</title></head></html>";
        for status in [200u16, 201, 400, 401, 403, 404, 405, 302] {
            let e = classify_answer("http://x/api/v1/printers/", status, page).unwrap_err();
            assert!(matches!(e, ApiError::NotTheApi { .. }), "{status}: {e:?}");
            assert!(e.is_transient() && !e.is_definite_rejection(), "{status}");
            let msg = e.to_string();
            assert!(msg.contains("server.url") && msg.contains("Hotel WiFi"), "{msg}");
        }
        for body in [&b""[..], b"null", b"[1]", b"{\"a\": {\"b\": 1}}", b"{}"] {
            assert!(matches!(
                classify_answer("u", 400, body),
                Err(ApiError::NotTheApi { .. })
            ));
        }
        assert!(matches!(parse_start_answer("u", 1, 200, page), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(parse_start_answer("u", 1, 200, b"{}"), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(parse_finish_answer("u", 1, 200, b"[]"), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(parse_predict_answer("u", 1, 200, b"{\"x\": 1}"), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(parse_printer_answer("u", Some(1), 200, b"{\"name\": \"x\"}"), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(parse_printer_list_answer("u", 200, b"{\"x\": 1}"), Err(ApiError::NotTheApi { .. })));
        // The API's own answers.
        let ok = br#"{"succeeded": true, "printer": {"id": 3, "current_print": null}}"#;
        assert!(parse_start_answer("u", 3, 200, ok).is_ok());
        assert!(parse_finish_answer("u", 3, 200, ok).unwrap());
        let np = format!("{{\"detail\": \"{NOT_PRINTING}\"}}");
        assert!(!parse_finish_answer("u", 3, 404, np.as_bytes()).unwrap());
        let nf = format!("{{\"detail\": \"{NO_PRINTER}\"}}");
        assert!(matches!(parse_start_answer("u", 3, 404, nf.as_bytes()), Err(ApiError::PrinterNotFound(3))));
        assert!(matches!(parse_start_answer("u", 3, 404, page), Err(ApiError::NotTheApi { .. })));
        assert!(matches!(
            parse_start_answer("u", 3, 200, br#"{"succeeded": false}"#),
            Err(ApiError::Rejected { .. })
        ));
    }
}
