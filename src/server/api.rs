//! The Obico REST client: printers, `start_print`, `finish_print`, `predict`; response
//! parsing for both `predict` shapes and both validation-error shapes; the spec's meaning
//! of each 404; 401/403 handling (drop the token, fetch a new one once, then report).

use std::sync::Arc;

use serde_json::Value;

use crate::secret::Secret;
use crate::server::config::TokenHeader;
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
        "the server refused the token even after fetching a new one (HTTP {status}: {detail}); \
         check that server.client_id/server.client_secret (or server.token) belong to this server, \
         or run `printvigil login`"
    )]
    Unauthenticated { status: u16, detail: String },
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
            ApiError::Network(_) | ApiError::Unavailable { .. } | ApiError::Local(_) => true,
            _ => false,
        }
    }

    /// A definite refusal of this one request: the event can be dropped (with the reason
    /// logged). Authentication, permission and unknown-printer errors are not: they are
    /// fixed by configuration, and the events wait for it.
    pub fn is_definite_rejection(&self) -> bool {
        matches!(
            self,
            ApiError::Validation(_) | ApiError::Rejected { .. } | ApiError::BadResponse(_)
        )
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

pub(crate) fn parse_printer(v: &Value) -> Result<Printer, ApiError> {
    let id = v
        .get("id")
        .and_then(|x| {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::BadResponse("printer without an integer `id`".into()))?;
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
        path: &str,
        body: &Body,
        token: &Secret,
        event_key: Option<&str>,
    ) -> Result<(u16, Value), ApiError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ApiError::BadResponse(e.to_string()))?;
        let mut req = self.http.request(method.clone(), url);
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
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Network(describe_reqwest(&e)))?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// Sends with the current token; on 401/403 for authentication, drops the token,
    /// fetches a new one once and retries once.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body,
        event_key: Option<&str>,
    ) -> Result<(u16, Value), ApiError> {
        let token = self.tokens.access_token().await?;
        let (status, json) = self
            .send_once(&method, path, &body, &token, event_key)
            .await?;
        if status != 401 && status != 403 {
            return classify(status, json);
        }
        if error_text(&json) == NO_PERMISSION {
            return Err(ApiError::NoPermission);
        }
        if !self.tokens.invalidate(&token).await {
            return Err(ApiError::Unauthenticated {
                status,
                detail: error_text(&json),
            });
        }
        let token = self.tokens.access_token().await?;
        let (status, json) = self
            .send_once(&method, path, &body, &token, event_key)
            .await?;
        if status == 401 || status == 403 {
            if error_text(&json) == NO_PERMISSION {
                return Err(ApiError::NoPermission);
            }
            return Err(ApiError::Unauthenticated {
                status,
                detail: error_text(&json),
            });
        }
        classify(status, json)
    }

    pub async fn list_printers(&self) -> Result<Vec<Printer>, ApiError> {
        let (_, v) = self
            .call(reqwest::Method::GET, "api/v1/printers/", Body::None, None)
            .await?;
        // A plain list, or a paginated `{"results": [...]}`.
        let list = v
            .as_array()
            .or_else(|| v.get("results").and_then(Value::as_array))
            .ok_or_else(|| ApiError::BadResponse("printer list is not a list".into()))?;
        list.iter().map(parse_printer).collect()
    }

    pub async fn create_printer(&self, name: &str) -> Result<Printer, ApiError> {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "api/v1/printers/",
                Body::Json(serde_json::json!({ "name": name })),
                None,
            )
            .await?;
        parse_printer(&v)
    }

    pub async fn get_printer(&self, id: i64) -> Result<Printer, ApiError> {
        let r = self
            .call(
                reqwest::Method::GET,
                &format!("api/v1/printers/{id}/"),
                Body::None,
                None,
            )
            .await;
        let (_, v) = printer_404(r, id)?;
        parse_printer(&v)
    }

    pub async fn start_print(
        &self,
        id: i64,
        filename: &str,
        event_key: Option<&str>,
    ) -> Result<(), ApiError> {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/start_print/"),
                Body::Json(serde_json::json!({ "filename": filename })),
                event_key,
            )
            .await;
        printer_404(r, id).map(|_| ())
    }

    /// `Ok(false)` when the server had no open print (already finished: not an error).
    pub async fn finish_print(
        &self,
        id: i64,
        status: &str,
        event_key: Option<&str>,
    ) -> Result<bool, ApiError> {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/finish_print/"),
                Body::Json(serde_json::json!({ "status": status })),
                event_key,
            )
            .await;
        match printer_404(r, id) {
            Ok(_) => Ok(true),
            Err(ApiError::NotPrinting) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads one JPEG. `Err(NotPrinting)` when the server has no open print.
    pub async fn predict(&self, id: i64, jpeg: Vec<u8>) -> Result<Prediction, ApiError> {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("api/v1/printers/{id}/predict/"),
                Body::Jpeg(jpeg),
                None,
            )
            .await;
        let (_, v) = printer_404(r, id)?;
        parse_prediction(&v)
    }
}

fn printer_404(r: Result<(u16, Value), ApiError>, id: i64) -> Result<(u16, Value), ApiError> {
    match r {
        Err(ApiError::Rejected { status: 404, .. }) => Err(ApiError::PrinterNotFound(id)),
        other => other,
    }
}

pub(crate) fn classify(status: u16, json: Value) -> Result<(u16, Value), ApiError> {
    let detail = error_text(&json);
    let dd = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match status {
        200..=299 => Ok((status, json)),
        404 if detail == NOT_PRINTING => Err(ApiError::NotPrinting),
        400 | 422 => Err(ApiError::Validation(if detail.is_empty() {
            format!("HTTP {status}")
        } else {
            detail
        })),
        408 | 425 | 429 | 500..=599 => Err(ApiError::Unavailable { status, detail: dd }),
        _ => Err(ApiError::Rejected { status, detail: dd }),
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

    #[test]
    fn classification() {
        assert!(matches!(
            classify(404, json!({"detail": NOT_PRINTING})),
            Err(ApiError::NotPrinting)
        ));
        assert!(matches!(
            classify(404, json!({"detail": NO_PRINTER})),
            Err(ApiError::Rejected { status: 404, .. })
        ));
        assert!(classify(503, Value::Null).unwrap_err().is_transient());
        assert!(classify(429, Value::Null).unwrap_err().is_transient());
        assert!(
            classify(400, json!({"filename": ["x"]}))
                .unwrap_err()
                .is_definite_rejection()
        );
        assert!(!ApiError::NoPermission.is_definite_rejection());
    }
}
