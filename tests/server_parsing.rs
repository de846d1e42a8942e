//! No answer from a server can make the parsers panic.

use proptest::prelude::*;
use serde_json::Value;

use printvigil::server::api::{
    classify_answer, error_text, parse_finish_answer, parse_predict_answer, parse_prediction,
    parse_printer_answer, parse_printer_list_answer, parse_start_answer,
};
use printvigil::server::config::ClientAuth;
use printvigil::server::oauth::{TokenRequest, TokenSource, parse_token_answer, parse_token_response};

fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("result".to_string()),
        Just("p".to_string()),
        Just("detections".to_string()),
        Just("temporal_stats".to_string()),
        Just("normalized_p".to_string()),
        Just("access_token".to_string()),
        Just("expires_in".to_string()),
        Just("expiry".to_string()),
        Just("refresh_token".to_string()),
        Just("detail".to_string()),
        Just("confidence".to_string()),
        Just("bbox".to_string()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn parsers_never_panic(v in json(), now in any::<u64>()) {
        let _ = parse_prediction(&v);
        let _ = error_text(&v);
        if let Some(t) = parse_token_response(&v, now, TokenSource::ClientCredentials) {
            let _ = t.needs_renewal(now);
            prop_assert!(t.renew_at() <= t.expires_at);
        }
        let wrapped = serde_json::json!({ "result": v.clone(), "temporal_stats": v });
        let _ = parse_prediction(&wrapped);
    }
}

proptest! {
    /// Every answer a server can give, as bytes with any status: an answer or an error,
    /// never a panic; a body that is not JSON is never a success or a definite refusal.
    #[test]
    fn answers_from_bytes_never_panic(v in json(), status in 100u16..600, junk in prop::collection::vec(any::<u8>(), 0..64), raw in any::<bool>()) {
        let body = if raw { junk } else { serde_json::to_vec(&v).unwrap() };
        let _ = classify_answer("u", status, &body);
        let _ = parse_printer_answer("u", Some(1), status, &body);
        let _ = parse_printer_answer("u", None, status, &body);
        let _ = parse_printer_list_answer("u", status, &body);
        let _ = parse_start_answer("u", 1, status, &body);
        let _ = parse_finish_answer("u", 1, status, &body);
        let _ = parse_predict_answer("u", 1, status, &body);
        let req = TokenRequest { grant: "client_credentials", source: TokenSource::ClientCredentials, token_url: "u", client_auth: ClientAuth::Basic };
        let _ = parse_token_answer(&req, status, &body, 1_700_000_000);
        if serde_json::from_slice::<Value>(&body).is_err() {
            match parse_start_answer("u", 1, status, &body) {
                Ok(()) => prop_assert!(false, "not JSON, yet a success"),
                Err(e) => prop_assert!(!e.is_definite_rejection(), "not JSON, yet a refusal: {e}"),
            }
        }
    }
}
