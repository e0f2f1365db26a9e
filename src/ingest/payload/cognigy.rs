//! What real Cognigy sends (cognigy/FACTS.md §1.1, §1.2): the body of an HTTP Request node
//! (`cognigy-input`, JSON or form-encoded) and the POST of a Webhook Endpoint
//! (`webhook-output`).
//!
//! Leniency, because CognigyScript is stringly typed and drops keys whose variable is unset:
//! missing optional keys are normal, an empty string in an optional field counts as absent,
//! and numbers may arrive as numeric strings. Bounds are Cognigy's own (transformer return
//! rules): ids ≤ 256 characters, text ≤ 10,000.

use serde_json::{Map, Value};

use super::{json_type, Decoded, FieldError, Fields, Intent, PayloadError, MAX_ID_CHARS};

/// Longest `text` Cognigy accepts from a transformer.
pub(super) const MAX_TEXT_CHARS: usize = 10_000;
/// Optional string fields of `cognigy-input` besides the ids and text: (key, max chars).
pub(super) const OPTIONAL_STRINGS: [(&str, usize); 8] = [
    ("URLToken", 256),
    ("traceId", 256),
    ("inputId", 256),
    ("channel", 256),
    ("language", 64),
    ("flowName", 256),
    ("correlationId", 256),
    ("intent", 256),
];

impl<'a> Fields<'a> {
    /// An optional string where `""` means "not set" (CognigyScript renders unset as empty).
    fn lenient_str(&mut self, key: &str, max_chars: usize) -> Option<&'a str> {
        match self.obj.get(key) {
            Some(Value::String(s)) if s.is_empty() => None,
            _ => self.optional_str(key, Some(max_chars)),
        }
    }

    /// An optional number in `range`, given as a number or a numeric string.
    fn lenient_number(&mut self, key: &str, range: std::ops::RangeInclusive<f64>) -> Option<f64> {
        let parsed = match self.obj.get(key) {
            None | Some(Value::Null) => return None,
            Some(Value::String(s)) if s.trim().is_empty() => return None,
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!("must be a number, not {}", json_type(other)),
                ));
                return None;
            }
        };
        match parsed {
            Some(x) if x.is_finite() && range.contains(&x) => Some(x),
            _ => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!(
                        "must be a number between {} and {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }
}

/// The entity value of one slot: its first match's `keyphrase`, else its `value`, else the
/// match itself (`slots.DATE[0]` is an object with `start`/`end`).
pub(super) fn slot_entity(matches: &[Value]) -> Option<Value> {
    let first = matches.first()?;
    Some(
        first
            .get("keyphrase")
            .filter(|v| v.is_string())
            .or_else(|| first.get("value"))
            .unwrap_or(first)
            .clone(),
    )
}

fn object_of(payload: &Value) -> Result<&Map<String, Value>, PayloadError> {
    payload
        .as_object()
        .ok_or_else(|| PayloadError::InvalidJson("body must be a JSON object".into()))
}

/// `cognigy-input`: `{userId, sessionId, text?, data?, intent?, intentScore?, slots?, …}`.
pub(super) fn input(payload: Value) -> Result<Decoded, PayloadError> {
    let obj = object_of(&payload)?;
    let mut f = Fields {
        obj,
        prefix: "",
        errors: Vec::new(),
    };
    let session_id = f.required_str("sessionId", Some(MAX_ID_CHARS));
    let user_id = f.required_str("userId", Some(MAX_ID_CHARS));
    let text = f.lenient_str("text", MAX_TEXT_CHARS);
    f.object("data", false);
    let mut strings = [None; OPTIONAL_STRINGS.len()];
    for (slot, (key, max)) in strings.iter_mut().zip(OPTIONAL_STRINGS) {
        *slot = f.lenient_str(key, max);
    }
    let [url_token, trace_id, input_id, channel, language, _flow, correlation, intent_name] =
        strings;
    let score = f.lenient_number("intentScore", 0.0..=1.0);
    let mut entities = Map::new();
    if let Some(slots) = f.object("slots", false) {
        for (name, matches) in slots {
            match matches {
                Value::Array(m) => {
                    if let Some(v) = slot_entity(m) {
                        entities.insert(name.clone(), v);
                    }
                }
                other => f.errors.push(FieldError::new(
                    format!("slots.{name}"),
                    format!("must be an array of matches, not {}", json_type(other)),
                )),
            }
        }
    }
    if !f.errors.is_empty() {
        return Err(PayloadError::Invalid(f.errors));
    }
    let mut d = Decoded::new(
        session_id.unwrap_or_default(),
        user_id.unwrap_or_default(),
        "cognigy.input",
        Value::Null,
    );
    d.text = text.map(str::to_string);
    // An intent without a score scores 0: a confidence rule then rejects it rather than
    // passing an intent nobody scored.
    d.intent = intent_name.map(|name| Intent {
        name: name.to_string(),
        score: score.unwrap_or(0.0),
    });
    d.entities = entities;
    d.channel = channel.map(str::to_string);
    d.locale = language.map(str::to_string);
    d.url_token = url_token.map(str::to_string);
    d.trace_id = trace_id.or(input_id).map(str::to_string);
    d.correlation_id = correlation.map(str::to_string);
    d.payload = payload.into();
    Ok(d)
}

/// `webhook-output`: `{userId, sessionId, AIOutput: {text, data, traceId, …}}`, or the output
/// fields at the top level (the docs disagree on where they sit; both are accepted).
pub(super) fn output(payload: Value) -> Result<Decoded, PayloadError> {
    let obj = object_of(&payload)?;
    let mut f = Fields {
        obj,
        prefix: "",
        errors: Vec::new(),
    };
    let session_id = f.required_str("sessionId", Some(MAX_ID_CHARS));
    let user_id = f.required_str("userId", Some(MAX_ID_CHARS));
    let nested = f.object("AIOutput", false);
    let mut o = Fields {
        obj: nested.unwrap_or(obj),
        prefix: if nested.is_some() { "AIOutput." } else { "" },
        errors: Vec::new(),
    };
    let text = o.lenient_str("text", usize::MAX);
    let data = o.object("data", false);
    let trace_id = o.lenient_str("traceId", 256);
    o.optional_str("source", Some(64));
    if let Some(v) = o.obj.get("disableSensitiveLogging") {
        if !v.is_boolean() && !v.is_null() {
            o.errors.push(FieldError::new(
                o.path("disableSensitiveLogging"),
                format!("must be a boolean, not {}", json_type(v)),
            ));
        }
    }
    if text.is_none() && data.is_none() && o.errors.is_empty() {
        o.errors.push(FieldError::new(
            "AIOutput",
            "an output needs `text` or `data` (under AIOutput or at the top level)",
        ));
    }
    f.errors.append(&mut o.errors);
    if !f.errors.is_empty() {
        return Err(PayloadError::Invalid(f.errors));
    }
    let mut d = Decoded::new(
        session_id.unwrap_or_default(),
        user_id.unwrap_or_default(),
        "cognigy.output",
        Value::Null,
    );
    d.text = text.map(str::to_string);
    d.trace_id = trace_id.map(str::to_string);
    d.payload = payload.into();
    Ok(d)
}

/// A Voice Gateway (jambonz) call-status webhook (cognigy/FACTS.md, sample
/// `vg-call-status-jambonz.json`): `call_sid` (the session), `call_status` and optional
/// `direction`, `from`, `to`, `call_id`, `sip_status`, `sip_reason`, `trace_id`. The user is
/// the caller on an inbound call and the callee on an outbound one (else the call itself);
/// the event type is `vg.call.<call_status>`, and the call's facts are its entities.
pub(super) fn call_status(payload: Value) -> Result<Decoded, PayloadError> {
    let obj = object_of(&payload)?;
    let mut f = Fields {
        obj,
        prefix: "",
        errors: Vec::new(),
    };
    let call_sid = f.required_str("call_sid", Some(MAX_ID_CHARS));
    let status = f.required_str("call_status", Some(64));
    let direction = f.optional_str("direction", Some(32));
    let from = f.optional_str("from", Some(MAX_ID_CHARS));
    let to = f.optional_str("to", Some(MAX_ID_CHARS));
    f.optional_str("call_id", Some(MAX_ID_CHARS));
    f.optional_str("sip_reason", Some(256));
    let trace_id = f.optional_str("trace_id", Some(256));
    if let Some(v) = obj.get("sip_status") {
        if !v.is_u64() && !v.is_null() {
            f.errors.push(FieldError::new(
                "sip_status",
                format!("must be a number, not {}", json_type(v)),
            ));
        }
    }
    if let Some(s) = status {
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            f.errors.push(FieldError::new(
                "call_status",
                "must be a word such as `completed` or `in-progress`",
            ));
        }
    }
    if !f.errors.is_empty() {
        return Err(PayloadError::Invalid(f.errors));
    }
    let call_sid = call_sid.unwrap_or_default();
    let user = match direction {
        Some("outbound") => to,
        _ => from,
    }
    .unwrap_or(call_sid);
    let mut d = Decoded::new(
        call_sid,
        user,
        &format!("vg.call.{}", status.unwrap_or_default()),
        Value::Null,
    );
    d.channel = Some("voice".into());
    d.trace_id = trace_id.map(str::to_string);
    for key in [
        "call_status",
        "direction",
        "from",
        "to",
        "call_id",
        "sip_status",
        "sip_reason",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            d.entities.insert(key.to_string(), v.clone());
        }
    }
    d.payload = payload.into();
    Ok(d)
}

/// Keys whose form value is JSON text when the designer passes an object through a form
/// (`data`, `slots`), and `name[key]` pairs folded into `name`.
const OBJECT_KEYS: [&str; 2] = ["data", "slots"];

/// Turns an `application/x-www-form-urlencoded` body into the JSON object the kinds read:
/// every value a string, except `data`/`slots` given as JSON text and `data[key]=…` pairs,
/// which become objects. A repeated key keeps its last value.
pub(super) fn parse_form(body: &[u8]) -> Result<Value, PayloadError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(PayloadError::InvalidJson(format!(
            "form body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let mut obj = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        if let Some((outer, inner)) = key
            .strip_suffix(']')
            .and_then(|k| k.split_once('['))
            .filter(|(o, i)| !o.is_empty() && !i.is_empty() && !i.contains('['))
        {
            let entry = obj
                .entry(outer.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => {
                    m.insert(inner.to_string(), Value::String(value.into_owned()));
                }
                _ => {
                    return Err(PayloadError::InvalidJson(format!(
                        "form field `{outer}` is given both as a value and as `{outer}[…]`"
                    )))
                }
            }
            continue;
        }
        let v = if OBJECT_KEYS.contains(&key.as_ref()) && value.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(&value).map_err(|e| {
                PayloadError::InvalidJson(format!("form field `{key}` is not valid JSON: {e}"))
            })?
        } else {
            Value::String(value.into_owned())
        };
        obj.insert(key.into_owned(), v);
    }
    if obj.is_empty() {
        return Err(PayloadError::InvalidJson("form body is empty".into()));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::super::{BodyFormat, PayloadDecoder};
    use super::*;
    use crate::config::PayloadKind;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cognigy");

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(format!("{SAMPLES}/{name}")).expect("sample")
    }

    fn decode(kind: PayloadKind, body: &[u8], format: BodyFormat) -> Result<Decoded, PayloadError> {
        PayloadDecoder::Builtin(kind).decode(body, format)
    }

    fn fields(r: Result<Decoded, PayloadError>) -> Vec<String> {
        match r {
            Err(PayloadError::Invalid(e)) => e.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid_payload, got {other:?}"),
        }
    }

    #[test]
    fn http_node_sample_normalises_intent_slots_token_and_locale() {
        let d = decode(
            PayloadKind::CognigyInput,
            &sample("http-request-node-body.rendered.json"),
            BodyFormat::Json,
        )
        .expect("valid");
        assert_eq!(d.session_id, "session123");
        assert_eq!(d.event_type, "cognigy.input");
        assert_eq!(
            d.intent,
            Some(Intent {
                name: "orderStatus".into(),
                score: 0.87
            })
        );
        assert_eq!(d.entities["city"], "Düsseldorf");
        assert_eq!(d.locale.as_deref(), Some("en-US"));
        assert_eq!(d.channel.as_deref(), Some("webhook"));
        assert!(d
            .url_token
            .as_deref()
            .is_some_and(|t| t.starts_with("4e5e2f")));
        assert!(d
            .trace_id
            .as_deref()
            .is_some_and(|t| t.starts_with("endpoint-")));
    }

    #[test]
    fn the_other_cognigy_input_samples_decode() {
        for name in [
            "rest-endpoint-request.json",
            "transformer-handover-event.json",
            "inject-api-v2-request.json",
            "endpoint-service-notify-request.json",
        ] {
            let d = decode(PayloadKind::CognigyInput, &sample(name), BodyFormat::Json)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!d.user_id.is_empty(), "{name}");
            assert!(!d.session_id.is_empty(), "{name}");
        }
    }

    #[test]
    fn missing_optional_keys_and_empty_strings_are_normal() {
        let d = decode(
            PayloadKind::CognigyInput,
            br#"{"userId":"u","sessionId":"s","intent":"","URLToken":"","text":""}"#,
            BodyFormat::Json,
        )
        .expect("valid");
        assert_eq!(d.intent, None);
        assert_eq!(d.url_token, None);
        assert_eq!(d.text, None);
    }

    #[test]
    fn numeric_strings_count_as_numbers_and_bad_fields_are_all_listed() {
        let d = decode(
            PayloadKind::CognigyInput,
            br#"{"userId":"u","sessionId":"s","intent":"i","intentScore":" 0.5 "}"#,
            BodyFormat::Json,
        )
        .expect("valid");
        assert_eq!(d.intent.map(|i| i.score), Some(0.5));
        let long = "x".repeat(257);
        let body = serde_json::json!({
            "userId": 7, "sessionId": long, "intentScore": "high", "slots": {"a": "b"},
            "data": [1], "text": "t".repeat(10_001)
        });
        let mut got = fields(decode(
            PayloadKind::CognigyInput,
            body.to_string().as_bytes(),
            BodyFormat::Json,
        ));
        got.sort();
        assert_eq!(
            got,
            [
                "data",
                "intentScore",
                "sessionId",
                "slots.a",
                "text",
                "userId"
            ]
        );
    }

    #[test]
    fn form_bodies_decode_like_json() {
        let body = b"userId=user123&sessionId=session123&text=Where+is+my+order%3F\
            &intent=orderStatus&intentScore=0.87&URLToken=tok\
            &slots=%7B%22city%22%3A%5B%7B%22keyphrase%22%3A%22Bonn%22%7D%5D%7D\
            &data%5BorderId%5D=A-1";
        let d = decode(PayloadKind::CognigyInput, body, BodyFormat::Form).expect("valid");
        assert_eq!(d.text.as_deref(), Some("Where is my order?"));
        assert_eq!(d.intent.as_ref().map(|i| i.score), Some(0.87));
        assert_eq!(d.entities["city"], "Bonn");
        assert_eq!(d.payload["data"]["orderId"], "A-1");
        assert_eq!(
            fields(decode(
                PayloadKind::CognigyInput,
                b"text=hi",
                BodyFormat::Form
            )),
            ["sessionId", "userId"]
        );
        assert!(matches!(
            decode(PayloadKind::CognigyInput, b"data=%7Bbad", BodyFormat::Form),
            Err(PayloadError::InvalidJson(_))
        ));
        assert!(matches!(
            decode(PayloadKind::CognigyInput, b"", BodyFormat::Form),
            Err(PayloadError::InvalidJson(_))
        ));
    }

    #[test]
    fn webhook_output_sample_and_top_level_variant() {
        let d = decode(
            PayloadKind::WebhookOutput,
            &sample("webhook-endpoint-output.json"),
            BodyFormat::Json,
        )
        .expect("valid");
        assert_eq!(d.event_type, "cognigy.output");
        assert!(d
            .text
            .as_deref()
            .is_some_and(|t| t.starts_with("I'd be happy")));
        assert!(d.trace_id.is_some());
        let d = decode(
            PayloadKind::WebhookOutput,
            br#"{"userId":"u","sessionId":"s","data":{"k":1}}"#,
            BodyFormat::Json,
        )
        .expect("data alone is an output");
        assert_eq!(d.text, None);
        assert_eq!(
            fields(decode(
                PayloadKind::WebhookOutput,
                br#"{"userId":"u","sessionId":"s","AIOutput":{"source":"bot"}}"#,
                BodyFormat::Json,
            )),
            ["AIOutput"]
        );
        assert_eq!(
            fields(decode(
                PayloadKind::WebhookOutput,
                br#"{"sessionId":"s","AIOutput":{"text":5}}"#,
                BodyFormat::Json,
            )),
            ["userId", "AIOutput.text"]
        );
    }
}
