//! Property-based tests (proptest) of every payload decoder and signature verifier: any bytes
//! in give an answer and never a panic; a valid signature over any body verifies; any single
//! bit changed in the body or the signature fails. The same entry points are the `cargo fuzz`
//! targets in `fuzz/`.

use std::time::Duration;

use cognihook::config::{PayloadKind, PayloadSpec, PayloadTable};
use cognihook::ingest::auth::{
    sign_hex, sign_standard_webhooks, sign_timestamped, AuthError, CredentialVerifier,
    HmacVerifier, Secret, StandardWebhooksVerifier, TimestampedKind, TimestampedVerifier,
};
use cognihook::ingest::payload::{BodyFormat, PayloadDecoder};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

const KINDS: [PayloadKind; 4] = [
    PayloadKind::FlowEvent,
    PayloadKind::Nlu,
    PayloadKind::CognigyInput,
    PayloadKind::WebhookOutput,
];

fn secret(value: &[u8]) -> Secret {
    Secret {
        label: "S[0]".into(),
        value: value.to_vec(),
    }
}

fn schema_decoder() -> PayloadDecoder {
    let dir = std::env::temp_dir().join(format!("cognihook-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema = dir.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["conversation"],
            "properties": {"conversation": {"type": "object",
              "required": ["id", "user"],
              "properties": {"id": {"type": "string"}, "user": {"type": "string"}}}}}"#,
    )
    .expect("schema");
    let spec = PayloadSpec::Table(PayloadTable {
        kind: PayloadKind::JsonSchema,
        schema: Some(schema),
        pointers: [
            ("sessionId".to_string(), "/conversation/id".to_string()),
            ("userId".to_string(), "/conversation/user".to_string()),
            ("text".to_string(), "/text".to_string()),
        ]
        .into_iter()
        .collect(),
    });
    PayloadDecoder::build(&spec).expect("schema decoder")
}

/// JSON values that look like what the decoders read: objects with the field names they know,
/// holding any kind of value, nested a few levels.
fn json_like() -> impl Strategy<Value = serde_json::Value> {
    let keys = prop::sample::select(vec![
        "sessionId",
        "userId",
        "message",
        "text",
        "eventType",
        "correlationId",
        "timestamp",
        "context",
        "intent",
        "name",
        "confidence",
        "score",
        "entities",
        "value",
        "data",
        "input",
        "URLToken",
        "channel",
        "conversation",
        "id",
        "user",
        "traceId",
        "locale",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::vec((keys.clone(), inner), 0..8).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), v);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_get_an_answer_from_every_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for kind in KINDS {
            let d = PayloadDecoder::Builtin(kind);
            let _ = d.decode(&body, BodyFormat::Json);
            if d.accepts_form() {
                let _ = d.decode(&body, BodyFormat::Form);
            }
        }
        let _ = schema_decoder().decode(&body, BodyFormat::Json);
    }

    #[test]
    fn any_json_shaped_like_a_payload_gets_an_answer(value in json_like()) {
        let body = serde_json::to_vec(&value).expect("json");
        for kind in KINDS {
            if let Ok(d) = PayloadDecoder::Builtin(kind).decode(&body, BodyFormat::Json) {
                // What is accepted has the identifiers every event needs.
                prop_assert!(!d.session_id.is_empty());
            }
        }
        let _ = schema_decoder().decode(&body, BodyFormat::Json);
    }

    #[test]
    fn a_body_decodes_the_same_in_serde_jsons_form_and_spaced_out(value in json_like()) {
        // Compact, a body may take a kind's fast reader (ingest::payload::fast); spaced out it
        // always takes the general path: the two must agree, errors included.
        let compact = serde_json::to_vec(&value).expect("json");
        let spaced = serde_json::to_vec_pretty(&value).expect("json");
        for kind in KINDS {
            let d = PayloadDecoder::Builtin(kind);
            let a = format!("{:?}", d.decode(&compact, BodyFormat::Json));
            let b = format!("{:?}", d.decode(&spaced, BodyFormat::Json));
            prop_assert_eq!(a, b, "{:?}", kind);
        }
    }

    #[test]
    fn any_form_body_gets_an_answer(
        pairs in prop::collection::vec(("[a-zA-Z%+\\[\\]._]{0,12}", ".{0,20}"), 0..8)
    ) {
        let body: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let _ = PayloadDecoder::Builtin(PayloadKind::CognigyInput)
            .decode(body.as_bytes(), BodyFormat::Form);
    }

    #[test]
    fn hmac_verifies_any_body_and_refuses_any_single_bit_change(
        key in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 1..256),
        bit in any::<prop::sample::Index>(),
    ) {
        let v = HmacVerifier::new(&[secret(&key)], &[HeaderName::from_static("x-cognigy-signature")]);
        let sig = sign_hex(&key, &body);
        let h = headers(&[("x-cognigy-signature", sig.as_bytes())]);
        prop_assert_eq!(v.verify(&h, &body), Ok("S[0]"));
        let changed = flip(&body, bit.index(body.len() * 8));
        prop_assert_eq!(v.verify(&h, &changed), Err(AuthError::InvalidSignature));
        // A bit changed in the MAC (hex letters' case is not a change: `A` and `a` are the
        // same nibble).
        let mac = hex::decode(&sig).expect("hex");
        let bad = hex::encode(flip(&mac, bit.index(mac.len() * 8)));
        let h = headers(&[("x-cognigy-signature", bad.as_bytes())]);
        prop_assert_eq!(v.verify(&h, &body), Err(AuthError::InvalidSignature));
    }

    #[test]
    fn timestamped_verifies_any_body_and_refuses_any_single_bit_change(
        key in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 1..256),
        t in 1_000_000_000i64..4_000_000_000,
        bit in any::<prop::sample::Index>(),
    ) {
        for kind in [TimestampedKind::Cognihook, TimestampedKind::Jambonz] {
            let v = TimestampedVerifier::new(
                &[secret(&key)],
                HeaderName::from_static("x-sig"),
                Duration::from_secs(300),
                kind,
            );
            let sig = sign_timestamped(&key, t, &body);
            let h = headers(&[("x-sig", sig.as_bytes())]);
            prop_assert!(v.verify(&h, &body, t).is_ok());
            let changed = flip(&body, bit.index(body.len() * 8));
            prop_assert_eq!(v.verify(&h, &changed, t).err(), Some(AuthError::InvalidSignature));
            let mac = hex::decode(sig.rsplit("v1=").next().expect("v1")).expect("hex");
            let bad = format!("t={t},v1={}", hex::encode(flip(&mac, bit.index(mac.len() * 8))));
            let h = headers(&[("x-sig", bad.as_bytes())]);
            prop_assert_eq!(v.verify(&h, &body, t).err(), Some(AuthError::InvalidSignature));
        }
    }

    #[test]
    fn standard_webhooks_verifies_any_body_and_refuses_any_single_bit_change(
        key in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 1..256),
        id in "msg_[A-Za-z0-9]{1,20}",
        t in 1_000_000_000i64..4_000_000_000,
        bit in any::<prop::sample::Index>(),
    ) {
        let v = StandardWebhooksVerifier::new(&[secret(&key)], Duration::from_secs(300));
        let sig = sign_standard_webhooks(&key, &id, t, &body);
        let stamp = t.to_string();
        let h = headers(&[
            ("webhook-id", id.as_bytes()),
            ("webhook-timestamp", stamp.as_bytes()),
            ("webhook-signature", sig.as_bytes()),
        ]);
        prop_assert!(v.verify(&h, &body, t).is_ok());
        let changed = flip(&body, bit.index(body.len() * 8));
        prop_assert_eq!(v.verify(&h, &changed, t).err(), Some(AuthError::InvalidSignature));
    }

    #[test]
    fn verifiers_answer_any_header_bytes(
        value in prop::collection::vec(any::<u8>(), 0..200),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let key = secret(b"k");
        let hmac = HmacVerifier::new(
            std::slice::from_ref(&key),
            &[HeaderName::from_static("x-cognigy-signature")],
        );
        let ts = TimestampedVerifier::new(
            std::slice::from_ref(&key),
            HeaderName::from_static("x-cognigy-signature"),
            Duration::from_secs(300),
            TimestampedKind::Cognihook,
        );
        let sw = StandardWebhooksVerifier::new(std::slice::from_ref(&key), Duration::from_secs(300));
        let basic = CredentialVerifier::basic("cognigy", std::slice::from_ref(&key));
        let api = CredentialVerifier::api_key(std::slice::from_ref(&key), None);
        let h = headers(&[
            ("x-cognigy-signature", &value),
            ("webhook-id", &value),
            ("webhook-timestamp", &value),
            ("webhook-signature", &value),
            ("authorization", &value),
            ("x-api-key", &value),
        ]);
        prop_assert!(hmac.verify(&h, &body).is_err());
        let _ = ts.verify(&h, &body, 1_700_000_000);
        let _ = sw.verify(&h, &body, 1_700_000_000);
        let _ = basic.verify(&h);
        let _ = api.verify(&h);
    }
}
