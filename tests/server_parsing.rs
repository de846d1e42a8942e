//! No answer from a server can make the parsers panic.

use proptest::prelude::*;
use serde_json::Value;

use printvigil::server::api::{error_text, parse_prediction};
use printvigil::server::oauth::{TokenSource, parse_token_response};

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
