//! Payload kinds (SPEC §3): decode the raw body once, check every field rule, and normalise
//! into the one event shape rules see and sinks receive (SPEC §3.6).
//!
//! Invariant: validation lists every failing field, never only the first.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{PayloadKind, PayloadSpec};

mod cognigy;
mod describe;
mod fast;
mod schema;

pub use crate::event::{Intent, NormalisedEvent, Payload};
pub use schema::SchemaDecoder;

/// Longest `sessionId` / `userId` accepted by `flow-event` (Cognigy's own bound).
const MAX_ID_CHARS: usize = 256;
/// Longest `message` accepted by `flow-event`.
const MAX_MESSAGE_CHARS: usize = 10_000;

/// One failing field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a body was not accepted as a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Not decodable at all (SPEC `invalid_json`).
    InvalidJson(String),
    /// Decoded, but fields break the kind's rules (SPEC `invalid_payload`).
    Invalid(Vec<FieldError>),
}

/// What the payload itself says, before the request adds ids and times.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub session_id: String,
    pub user_id: String,
    pub event_type: String,
    pub text: Option<String>,
    pub intent: Option<Intent>,
    pub entities: Map<String, Value>,
    pub channel: Option<String>,
    pub locale: Option<String>,
    pub correlation_id: Option<String>,
    pub url_token: Option<String>,
    pub trace_id: Option<String>,
    pub payload: Payload,
}

impl Decoded {
    /// What every kind fills in; the optional parts start empty.
    fn new(session_id: &str, user_id: &str, event_type: &str, payload: Value) -> Decoded {
        Decoded {
            session_id: session_id.to_string(),
            user_id: user_id.to_string(),
            event_type: event_type.to_string(),
            text: None,
            intent: None,
            entities: Map::new(),
            channel: None,
            locale: None,
            correlation_id: None,
            url_token: None,
            trace_id: None,
            payload: payload.into(),
        }
    }
}

/// How the body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    /// `application/x-www-form-urlencoded` (Cognigy's HTTP Request node default).
    Form,
}

/// Why a route's `payload` setting builds no decoder.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("payload.schema and payload.pointers apply only to kind json-schema")]
    NotSchemaKind,
    #[error("payload kind json-schema needs `schema` (a JSON Schema file)")]
    NoSchema,
    #[error("payload kind json-schema needs pointers.{0}")]
    NoPointer(&'static str),
    #[error("payload.pointers.{0} is not an event field (one of {list})",
        list = crate::event::POINTER_FIELDS.join(", "))]
    NotAField(String),
    #[error("payload.pointers.{field} = `{pointer}` is not a JSON pointer (starts with `/`)")]
    NotAPointer { field: String, pointer: String },
    #[error("schema file {path} cannot be read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("schema file {path} is not JSON: {source}")]
    NotJson {
        path: String,
        source: serde_json::Error,
    },
    #[error("schema file {path} is not a valid JSON Schema: {reason}")]
    NotASchema { path: String, reason: String },
}

/// A route's payload decoder: a built-in kind, or a user schema with pointers.
#[derive(Debug)]
pub enum PayloadDecoder {
    Builtin(PayloadKind),
    Schema(Box<SchemaDecoder>),
}

impl PayloadDecoder {
    /// Builds the decoder of a route's `payload` setting (checks the pointers, reads and
    /// compiles a schema file); every problem is reported.
    pub fn build(spec: &PayloadSpec) -> Result<PayloadDecoder, Vec<SpecError>> {
        match (spec.kind(), spec) {
            (PayloadKind::JsonSchema, _) => Ok(PayloadDecoder::Schema(Box::new(
                SchemaDecoder::build(spec)?,
            ))),
            (_, PayloadSpec::Table(t)) if t.schema.is_some() || !t.pointers.is_empty() => {
                Err(vec![SpecError::NotSchemaKind])
            }
            (kind, _) => Ok(PayloadDecoder::Builtin(kind)),
        }
    }

    pub fn kind(&self) -> PayloadKind {
        match self {
            PayloadDecoder::Builtin(k) => *k,
            PayloadDecoder::Schema(_) => PayloadKind::JsonSchema,
        }
    }

    /// Whether form-encoded bodies are accepted (only `cognigy-input`).
    pub fn accepts_form(&self) -> bool {
        self.kind() == PayloadKind::CognigyInput
    }

    /// Decodes, validates and normalises a body.
    pub fn decode(&self, body: &[u8], format: BodyFormat) -> Result<Decoded, PayloadError> {
        let json = match format {
            BodyFormat::Json => true,
            // A JSON object sent with the HTTP node's default form header (its "Text" payload
            // type holding JSON): no form starts with `{`.
            BodyFormat::Form => body.trim_ascii_start().starts_with(b"{"),
        };
        // A body in serde_json's own form is stored as it came (`event::Payload`), and the
        // built-in kinds with a reader of their own (`fast`) take their fields from it
        // without building its tree; anything that reader does not accept goes the whole way
        // below, which says what is wrong.
        let text = if json && crate::json::is_canonical(body) {
            std::str::from_utf8(body).ok()
        } else {
            None
        };
        if let (Some(text), PayloadDecoder::Builtin(kind)) = (text, self) {
            if let Some(d) = fast::decode(*kind, text) {
                return check_ids(d);
            }
        }
        let value = if json {
            parse_object(body)?
        } else {
            cognigy::parse_form(body)?
        };
        let mut decoded = match self {
            PayloadDecoder::Builtin(kind) => decode_value(*kind, value),
            PayloadDecoder::Schema(s) => s.decode(value),
        }?;
        // Every kind keeps the parsed body as the payload, unchanged.
        if let Some(text) = text {
            decoded.payload.set_canonical_text(text.into());
        }
        check_ids(decoded)
    }
}

/// Decodes and validates a raw JSON body as a built-in kind.
pub fn decode(kind: PayloadKind, body: &[u8]) -> Result<Decoded, PayloadError> {
    check_ids(decode_value(kind, parse_object(body)?)?)
}

/// The identifiers every kind yields become keys and index entries in the store: at most
/// `MAX_ID_CHARS` characters and no control characters (PostgreSQL refuses a NUL in text,
/// and a B-tree entry past ~2.7 kB), whichever kind or schema they came from.
fn check_ids(d: Decoded) -> Result<Decoded, PayloadError> {
    let mut errors = Vec::new();
    let ids = [
        ("sessionId", Some(d.session_id.as_str())),
        ("userId", Some(d.user_id.as_str())),
        ("eventType", Some(d.event_type.as_str())),
        ("correlationId", d.correlation_id.as_deref()),
    ];
    for (field, value) in ids {
        let Some(v) = value else { continue };
        // Printable ASCII, as ids mostly are, holds neither kind of control character and
        // has as many characters as bytes: one pass instead of three.
        if v.len() <= MAX_ID_CHARS && v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            continue;
        }
        if v.chars().any(char::is_control) {
            errors.push(FieldError::new(
                field,
                "must not contain control characters",
            ));
        } else if v.chars().any(crate::event::is_bidi_control) {
            errors.push(FieldError::new(
                field,
                "must not contain bidirectional control characters (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C)",
            ));
        } else if v.chars().count() > MAX_ID_CHARS {
            errors.push(FieldError::new(
                field,
                format!("must be at most {MAX_ID_CHARS} characters"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(d)
    } else {
        Err(PayloadError::Invalid(errors))
    }
}

fn decode_value(kind: PayloadKind, value: Value) -> Result<Decoded, PayloadError> {
    match kind {
        PayloadKind::FlowEvent => flow_event(value),
        PayloadKind::Nlu => nlu(value),
        PayloadKind::CognigyInput => cognigy::input(value),
        PayloadKind::WebhookOutput => cognigy::output(value),
        PayloadKind::VgCallStatus => cognigy::call_status(value),
        PayloadKind::JsonSchema => Err(PayloadError::InvalidJson(
            "json-schema routes decode through their schema".into(),
        )),
    }
}

/// Parses JSON that must be an object; UTF-8 and nesting depth are checked by the parser
/// (serde_json refuses more than 128 levels).
fn parse_object(body: &[u8]) -> Result<Value, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::InvalidJson("body is empty".into()));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        PayloadError::InvalidJson(format!(
            "body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    // From the checked text: serde_json then copies its strings without checking their
    // UTF-8 again (from bytes it did, 1 % of a request's instructions).
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let msg = if e.to_string().contains("recursion limit") {
            "body is nested too deeply".to_string()
        } else {
            format!("body is not valid JSON: {e}")
        };
        PayloadError::InvalidJson(msg)
    })?;
    if !value.is_object() {
        return Err(PayloadError::InvalidJson(format!(
            "body must be a JSON object, not {}",
            json_type(&value)
        )));
    }
    Ok(value)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Collects field errors while reading an object.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'static str,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value of `key`. A payload's objects are small: comparing a few keys is cheaper
    /// than hashing one with the map's SipHash, which every lookup did.
    fn get(&self, key: &str) -> Option<&'a Value> {
        const SCAN: usize = 12;
        if self.obj.len() <= SCAN {
            self.obj
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v)
        } else {
            self.obj.get(key)
        }
    }

    fn required_str(&mut self, key: &str, max_chars: Option<usize>) -> Option<&'a str> {
        match self.get(key) {
            None | Some(Value::Null) => {
                self.errors
                    .push(FieldError::new(self.path(key), "is required"));
                None
            }
            Some(Value::String(s)) if s.is_empty() => {
                self.errors
                    .push(FieldError::new(self.path(key), "must not be empty"));
                None
            }
            Some(Value::String(s)) => {
                if let Some(max) = max_chars {
                    if s.chars().count() > max {
                        self.errors.push(FieldError::new(
                            self.path(key),
                            format!("must be at most {max} characters"),
                        ));
                        return None;
                    }
                }
                Some(s.as_str())
            }
            Some(other) => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!("must be a string, not {}", json_type(other)),
                ));
                None
            }
        }
    }

    fn optional_str(&mut self, key: &str, max_chars: Option<usize>) -> Option<&'a str> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(_) => self.required_str(key, max_chars),
        }
    }

    fn optional_any_str(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!("must be a string, not {}", json_type(other)),
                ));
                None
            }
        }
    }

    fn object(&mut self, key: &str, required: bool) -> Option<&'a Map<String, Value>> {
        match self.get(key) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.errors
                    .push(FieldError::new(self.path(key), "is required"));
                None
            }
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                self.errors.push(FieldError::new(
                    self.path(key),
                    format!("must be an object, not {}", json_type(other)),
                ));
                None
            }
        }
    }
}

fn flow_event(payload: Value) -> Result<Decoded, PayloadError> {
    let Value::Object(obj) = &payload else {
        return Err(PayloadError::InvalidJson(
            "body must be a JSON object".into(),
        ));
    };
    let mut f = Fields {
        obj,
        prefix: "",
        errors: Vec::new(),
    };
    let session_id = f.required_str("sessionId", Some(MAX_ID_CHARS));
    let user_id = f.required_str("userId", Some(MAX_ID_CHARS));
    let event_type = f.required_str("eventType", None);
    if let Some(t) = event_type {
        match t {
            "flow.execution" => {}
            "external.action.trigger" => {
                f.required_str("actionName", None);
            }
            _ => f.errors.push(FieldError::new(
                "eventType",
                "must be one of flow.execution, external.action.trigger",
            )),
        }
    }
    if event_type != Some("external.action.trigger") {
        f.optional_str("actionName", None);
    }
    let message = f.optional_any_str("message");
    if let Some(m) = message {
        if m.chars().count() > MAX_MESSAGE_CHARS {
            f.errors.push(FieldError::new(
                "message",
                format!("must be at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
    }
    let context = f.object("context", false);
    let correlation = f.optional_str("correlationId", None);
    if let Some(ts) = f.optional_str("timestamp", None) {
        if time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_err()
        {
            f.errors.push(FieldError::new(
                "timestamp",
                "must be an RFC 3339 date-time (e.g. 2024-01-15T14:32:10Z)",
            ));
        }
    }
    f.optional_str("flowName", None);
    if !f.errors.is_empty() {
        return Err(PayloadError::Invalid(f.errors));
    }
    let ctx_str = |k: &str| {
        context
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Decoded {
        session_id: session_id.unwrap_or_default().to_string(),
        user_id: user_id.unwrap_or_default().to_string(),
        event_type: event_type.unwrap_or_default().to_string(),
        text: message.map(str::to_string),
        intent: None,
        entities: Map::new(),
        channel: ctx_str("channel"),
        locale: ctx_str("locale"),
        correlation_id: correlation
            .map(str::to_string)
            .or_else(|| ctx_str("correlationId")),
        url_token: None,
        trace_id: None,
        payload: payload.into(),
    })
}

fn nlu(payload: Value) -> Result<Decoded, PayloadError> {
    let Value::Object(obj) = &payload else {
        return Err(PayloadError::InvalidJson(
            "body must be a JSON object".into(),
        ));
    };
    let mut f = Fields {
        obj,
        prefix: "",
        errors: Vec::new(),
    };
    let session_id = f.required_str("sessionId", None);
    if let Some(s) = session_id {
        if uuid::Uuid::try_parse(s).is_err() {
            f.errors
                .push(FieldError::new("sessionId", "must be a UUID"));
        }
    }
    let user_id = f.required_str("userId", None);
    let input = f.required_str("input", None);

    let mut errors = std::mem::take(&mut f.errors);
    let (mut locale, mut channel, mut correlation) = (None, None, None);
    if let Some(ctx) = f.object("context", true) {
        let mut c = Fields {
            obj: ctx,
            prefix: "context.",
            errors: Vec::new(),
        };
        locale = c.required_any("locale");
        channel = c.required_any("channel");
        correlation = c.optional_any_str("correlationId");
        errors.append(&mut c.errors);
    }
    let mut intent = None;
    if let Some(i) = f.object("intent", true) {
        let mut c = Fields {
            obj: i,
            prefix: "intent.",
            errors: Vec::new(),
        };
        let name = c.required_any("name");
        let score = match i.get("confidence") {
            None | Some(Value::Null) => {
                c.errors
                    .push(FieldError::new("intent.confidence", "is required"));
                None
            }
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => Some(x),
                _ => {
                    c.errors.push(FieldError::new(
                        "intent.confidence",
                        "must be a number between 0 and 1",
                    ));
                    None
                }
            },
            Some(other) => {
                c.errors.push(FieldError::new(
                    "intent.confidence",
                    format!("must be a number, not {}", json_type(other)),
                ));
                None
            }
        };
        if let (Some(name), Some(score)) = (name, score) {
            intent = Some(Intent {
                name: name.to_string(),
                score,
            });
        }
        errors.append(&mut c.errors);
    }
    let mut entities = Map::new();
    match obj.get("entities") {
        None | Some(Value::Null) => f.errors.push(FieldError::new("entities", "is required")),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(e) = item else {
                    f.errors.push(FieldError::new(
                        format!("entities[{i}]"),
                        format!("must be an object, not {}", json_type(item)),
                    ));
                    continue;
                };
                let name = e.get("name").and_then(Value::as_str);
                let value = e.get("value").and_then(Value::as_str);
                if name.is_none() {
                    f.errors.push(FieldError::new(
                        format!("entities[{i}].name"),
                        "must be a string",
                    ));
                }
                if value.is_none() {
                    f.errors.push(FieldError::new(
                        format!("entities[{i}].value"),
                        "must be a string",
                    ));
                }
                if let (Some(n), Some(v)) = (name, value) {
                    entities.insert(n.to_string(), Value::String(v.to_string()));
                }
            }
        }
        Some(other) => f.errors.push(FieldError::new(
            "entities",
            format!("must be an array, not {}", json_type(other)),
        )),
    }
    errors.append(&mut f.errors);
    if !errors.is_empty() {
        return Err(PayloadError::Invalid(errors));
    }
    Ok(Decoded {
        session_id: session_id.unwrap_or_default().to_string(),
        user_id: user_id.unwrap_or_default().to_string(),
        event_type: "nlu.input".into(),
        text: input.map(str::to_string),
        intent,
        entities,
        channel: channel.map(str::to_string),
        locale: locale.map(str::to_string),
        correlation_id: correlation.map(str::to_string),
        url_token: None,
        trace_id: None,
        payload: payload.into(),
    })
}

impl<'a> Fields<'a> {
    /// A required string that may be empty (zod's `z.string()`).
    fn required_any(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key) {
            None | Some(Value::Null) => {
                self.errors
                    .push(FieldError::new(self.path(key), "is required"));
                None
            }
            Some(_) => self.optional_any_str(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(err: PayloadError) -> Vec<String> {
        match err {
            PayloadError::Invalid(e) => e.into_iter().map(|f| f.field).collect(),
            other => panic!("expected invalid_payload, got {other:?}"),
        }
    }

    fn nlu_body() -> Value {
        json!({
            "sessionId": "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e",
            "userId": "user-1",
            "input": "where is my order A-1",
            "context": {"locale": "en-US", "channel": "webchat", "correlationId": "c-1"},
            "intent": {"name": "order_status", "confidence": 0.94},
            "entities": [{"name": "orderId", "value": "A-1"}]
        })
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).expect("serialise")
    }

    #[test]
    fn fields_are_found_in_small_and_large_objects_alike() {
        // Small objects are searched key by key, large ones through the map's index.
        for extra in [0, 5, 40] {
            let mut body = json!({});
            for i in 0..extra {
                body[format!("x{i}")] = json!(i);
            }
            for (k, v) in nlu_body().as_object().expect("object") {
                body[k] = v.clone();
            }
            let d = decode(PayloadKind::Nlu, &bytes(&body)).expect("decodes");
            assert_eq!(d.user_id, "user-1", "{extra} extra keys");
            assert_eq!(d.session_id, "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e");
            body["userId"] = json!(7);
            assert_eq!(
                fields(decode(PayloadKind::Nlu, &bytes(&body)).expect_err("invalid")),
                ["userId"],
                "{extra} extra keys"
            );
        }
    }

    #[test]
    fn identifiers_with_control_characters_or_past_256_characters_are_refused() {
        let mut body = nlu_body();
        body["userId"] = json!("user\u{0}1");
        body["context"]["correlationId"] = json!("c".repeat(257));
        let err = decode(PayloadKind::Nlu, &bytes(&body)).expect_err("invalid");
        let PayloadError::Invalid(errors) = err else {
            panic!("expected invalid_payload");
        };
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("userId", "must not contain control characters"),
                ("correlationId", "must be at most 256 characters"),
            ]
        );
        // A line break is a control character too; 256 characters are fine.
        let mut body = nlu_body();
        body["userId"] = json!("u".repeat(256));
        body["context"]["correlationId"] = json!("c-1\n");
        assert_eq!(
            fields(decode(PayloadKind::Nlu, &bytes(&body)).expect_err("x")),
            ["correlationId"]
        );
        // A right-to-left override can make one id display as another; other non-ASCII
        // letters are fine.
        let mut body = nlu_body();
        body["context"]["correlationId"] = json!("order-\u{202E}24");
        assert_eq!(
            fields(decode(PayloadKind::Nlu, &bytes(&body)).expect_err("bidi")),
            ["correlationId"]
        );
        body["context"]["correlationId"] = json!("commande-été");
        decode(PayloadKind::Nlu, &bytes(&body)).expect("non-ASCII letters are accepted");
    }

    #[test]
    fn nlu_normalises_intent_entities_and_context() {
        let d = decode(PayloadKind::Nlu, &bytes(&nlu_body())).expect("valid");
        assert_eq!(d.event_type, "nlu.input");
        assert_eq!(
            d.intent,
            Some(Intent {
                name: "order_status".into(),
                score: 0.94
            })
        );
        assert_eq!(d.entities["orderId"], "A-1");
        assert_eq!(d.locale.as_deref(), Some("en-US"));
        assert_eq!(d.channel.as_deref(), Some("webchat"));
        assert_eq!(d.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(d.text.as_deref(), Some("where is my order A-1"));
    }

    #[test]
    fn nlu_lists_every_failing_field() {
        let body = json!({
            "sessionId": "not-a-uuid",
            "userId": "",
            "context": {"locale": 5},
            "intent": {"name": "x", "confidence": 1.5},
            "entities": [{"name": "orderId"}, 3]
        });
        let f = fields(decode(PayloadKind::Nlu, &bytes(&body)).expect_err("invalid"));
        for want in [
            "sessionId",
            "userId",
            "input",
            "context.locale",
            "context.channel",
            "intent.confidence",
            "entities[0].value",
            "entities[1]",
        ] {
            assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
        }
    }

    #[test]
    fn flow_event_requires_action_name_for_external_trigger() {
        let body = json!({"sessionId": "s", "userId": "u", "eventType": "external.action.trigger"});
        let f = fields(decode(PayloadKind::FlowEvent, &bytes(&body)).expect_err("invalid"));
        assert_eq!(f, ["actionName"]);
        let body = json!({"sessionId": "s", "userId": "u", "eventType": "external.action.trigger", "actionName": "CheckInventory"});
        decode(PayloadKind::FlowEvent, &bytes(&body)).expect("valid");
    }

    #[test]
    fn flow_event_checks_types_lengths_and_timestamp() {
        let body = json!({
            "sessionId": "s".repeat(257),
            "eventType": "flow.other",
            "message": "m".repeat(10_001),
            "context": [],
            "timestamp": "yesterday",
            "flowName": 3
        });
        let f = fields(decode(PayloadKind::FlowEvent, &bytes(&body)).expect_err("invalid"));
        for want in [
            "sessionId",
            "userId",
            "eventType",
            "message",
            "context",
            "timestamp",
            "flowName",
        ] {
            assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
        }
    }

    #[test]
    fn flow_event_takes_correlation_from_payload_then_context() {
        let body = json!({"sessionId": "s", "userId": "u", "eventType": "flow.execution",
            "context": {"correlationId": "ctx", "channel": "voice"}, "timestamp": "2024-01-15T14:32:10+01:00"});
        let d = decode(PayloadKind::FlowEvent, &bytes(&body)).expect("valid");
        assert_eq!(d.correlation_id.as_deref(), Some("ctx"));
        assert_eq!(d.channel.as_deref(), Some("voice"));
        let mut body = body;
        body["correlationId"] = json!("top");
        let d = decode(PayloadKind::FlowEvent, &bytes(&body)).expect("valid");
        assert_eq!(d.correlation_id.as_deref(), Some("top"));
    }

    #[test]
    fn a_body_in_serde_jsons_own_form_is_kept_as_the_payloads_text() {
        let decoder = PayloadDecoder::Builtin(PayloadKind::Nlu);
        let compact = bytes(&nlu_body());
        let d = decoder.decode(&compact, BodyFormat::Json).expect("valid");
        assert_eq!(d.payload.text().map(str::as_bytes), Some(&compact[..]));
        // The HTTP node's form header with a JSON text: the same.
        let d = decoder.decode(&compact, BodyFormat::Form).expect("valid");
        assert!(d.payload.text().is_some());
        // Spaced out: the tree is written again.
        let pretty = serde_json::to_vec_pretty(&nlu_body()).expect("json");
        let d = decoder.decode(&pretty, BodyFormat::Json).expect("valid");
        assert_eq!(d.payload, nlu_body());
        assert!(d.payload.text().is_none());
    }

    #[test]
    fn undecodable_bodies_are_invalid_json_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty"),
            (b"{\"a\":\xff}", "UTF-8"),
            (b"[1,2]", "JSON object"),
            (b"{\"a\":", "not valid JSON"),
            (b"\"str\"", "JSON object"),
        ];
        for (body, want) in cases {
            match decode(PayloadKind::FlowEvent, body) {
                Err(PayloadError::InvalidJson(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        match decode(PayloadKind::Nlu, deep.as_bytes()) {
            Err(PayloadError::InvalidJson(m)) => assert!(m.contains("nested too deeply"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
