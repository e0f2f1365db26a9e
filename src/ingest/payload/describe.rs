//! What each payload kind accepts, as a JSON Schema (draft 2020-12, the dialect of OpenAPI
//! 3.1) for the API document (`http::openapi`). The decoders in this module's siblings are
//! the truth; these schemas say the same in the document's language and are never looser
//! about a field's type than the decoder is strict (a `null` counts as absent everywhere, so
//! optional fields allow it). Checks the decoder makes beyond a schema (an `actionName` for
//! `external.action.trigger` aside, which `if`/`then` expresses) are in the descriptions.
//! `describe::tests` decodes each schema's examples.

use serde_json::{json, Value};

use super::{PayloadDecoder, MAX_ID_CHARS, MAX_MESSAGE_CHARS};
use crate::config::PayloadKind;

/// Control and bidirectional-control characters, which no identifier may hold.
const NO_CONTROLS: &str =
    "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u202A-\\u202E\\u2066-\\u2069]*$";

impl PayloadDecoder {
    /// The request body's schema.
    pub fn request_schema(&self) -> Value {
        match self {
            PayloadDecoder::Builtin(kind) => builtin(*kind),
            PayloadDecoder::Schema(s) => {
                let mut doc = s.document().clone();
                // `$schema` names the draft; OpenAPI 3.1 uses 2020-12 already.
                if let Some(o) = doc.as_object_mut() {
                    o.remove("$schema");
                }
                doc
            }
        }
    }

    /// The media types a request body may have.
    pub fn media_types(&self) -> &'static [&'static str] {
        if self.accepts_form() {
            &[
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ]
        } else {
            &["application/json"]
        }
    }
}

/// A conversation identifier: non-empty, at most 256 characters, no control characters.
fn id(description: &str) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_CHARS,
        "pattern": NO_CONTROLS,
        "description": description,
    })
}

/// An optional identifier (`null` = absent).
fn optional_id(description: &str) -> Value {
    let mut v = id(description);
    v["type"] = json!(["string", "null"]);
    v
}

/// An optional string of at most `max` characters (`null` = absent).
fn optional_str(max: usize, description: &str) -> Value {
    json!({"type": ["string", "null"], "maxLength": max, "description": description})
}

fn builtin(kind: PayloadKind) -> Value {
    match kind {
        PayloadKind::FlowEvent => flow_event(),
        PayloadKind::Nlu => nlu(),
        PayloadKind::CognigyInput => cognigy_input(),
        PayloadKind::WebhookOutput => webhook_output(),
        PayloadKind::VgCallStatus => vg_call_status(),
        // Built only from a schema file (`PayloadDecoder::Schema`).
        PayloadKind::JsonSchema => json!({"type": "object"}),
    }
}

fn flow_event() -> Value {
    json!({
        "title": "flow-event",
        "description": "A Cognigy flow event (payload kind `flow-event`).",
        "type": "object",
        "required": ["sessionId", "userId", "eventType"],
        "properties": {
            "sessionId": id("The conversation's session."),
            "userId": id("The user."),
            "eventType": {"enum": ["flow.execution", "external.action.trigger"]},
            "actionName": {"type": ["string", "null"], "minLength": 1,
                "description": "Required when eventType is external.action.trigger."},
            "message": optional_str(MAX_MESSAGE_CHARS, "The user's message."),
            "context": {"type": ["object", "null"],
                "description": "Free context; `channel`, `locale` and `correlationId` strings are read."},
            "correlationId": optional_id("Correlates the event across systems."),
            "timestamp": {"type": ["string", "null"], "format": "date-time",
                "description": "RFC 3339."},
            "flowName": {"type": ["string", "null"], "minLength": 1},
        },
        "if": {"properties": {"eventType": {"const": "external.action.trigger"}}},
        "then": {"required": ["actionName"], "properties": {"actionName": {"type": "string"}}},
        "examples": [{
            "sessionId": "sess-8f7d6e5c",
            "userId": "user-42",
            "eventType": "flow.execution",
            "message": "Check order status",
            "timestamp": "2024-01-15T14:32:10Z",
            "flowName": "OrderSupportFlow",
        }],
    })
}

fn nlu() -> Value {
    let string = json!({"type": "string"});
    json!({
        "title": "nlu",
        "description": "An NLU result (payload kind `nlu`); `entities` become an object keyed by name.",
        "type": "object",
        "required": ["sessionId", "userId", "input", "context", "intent", "entities"],
        "properties": {
            "sessionId": {"type": "string", "format": "uuid"},
            "userId": id("The user."),
            "input": {"type": "string", "minLength": 1, "description": "The user's input."},
            "context": {
                "type": "object",
                "required": ["locale", "channel"],
                "properties": {
                    "locale": string,
                    "channel": string,
                    "correlationId": {"type": ["string", "null"], "maxLength": MAX_ID_CHARS,
                        "pattern": NO_CONTROLS},
                },
            },
            "intent": {
                "type": "object",
                "required": ["name", "confidence"],
                "properties": {
                    "name": string,
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
            "entities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "value"],
                    "properties": {"name": string, "value": string},
                },
            },
        },
        "examples": [{
            "sessionId": "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e",
            "userId": "user-42",
            "input": "Where is my order A-1001?",
            "context": {"locale": "en-US", "channel": "webchat", "correlationId": "corr-1"},
            "intent": {"name": "order_status", "confidence": 0.94},
            "entities": [{"name": "orderId", "value": "A-1001"}],
        }],
    })
}

fn cognigy_input() -> Value {
    let mut properties = json!({
        "sessionId": id("The conversation's session."),
        "userId": id("The user."),
        "text": optional_str(MAX_MESSAGE_CHARS, "The user's text; empty counts as absent."),
        "data": {"type": ["object", "null"], "description": "In a form: JSON text, or data[key]=value pairs."},
        "intentScore": {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "description": "A number in [0, 1] as text; empty = absent."},
                {"type": "null"},
            ],
        },
        "slots": {"type": ["object", "null"], "additionalProperties": {"type": "array"},
            "description": "Each slot's first match becomes an entity (its keyphrase, else its value)."},
    });
    for (key, max) in super::cognigy::OPTIONAL_STRINGS {
        properties[key] = optional_str(max, "Empty counts as absent.");
    }
    json!({
        "title": "cognigy-input",
        "description": "The body of a Cognigy HTTP Request node (payload kind `cognigy-input`): \
            JSON, a form, or text parts of multipart/form-data.",
        "type": "object",
        "required": ["sessionId", "userId"],
        "properties": properties,
        "examples": [{
            "sessionId": "session-1",
            "userId": "user-42",
            "text": "I want to cancel order A-17",
            "intent": "cancel_order",
            "intentScore": 0.91,
            "slots": {"orderId": [{"keyphrase": "A-17"}]},
            "channel": "webchat",
            "language": "en-US",
        }],
    })
}

fn webhook_output() -> Value {
    let output = json!({
        "text": {"type": ["string", "null"]},
        "data": {"type": ["object", "null"]},
        "traceId": optional_str(256, ""),
        "source": optional_str(64, ""),
        "disableSensitiveLogging": {"type": ["boolean", "null"]},
    });
    json!({
        "title": "webhook-output",
        "description": "What a Cognigy Webhook Endpoint posts (payload kind `webhook-output`): the \
            output under `AIOutput`, or (without one) at the top level; it needs `text` or `data`.",
        "type": "object",
        "required": ["sessionId", "userId"],
        "properties": {
            "sessionId": id("The conversation's session."),
            "userId": id("The user."),
            "AIOutput": {"type": ["object", "null"], "properties": output},
        },
        // The top level's output fields are read only when there is no `AIOutput` object.
        "if": {"required": ["AIOutput"], "properties": {"AIOutput": {"type": "object"}}},
        "then": {},
        "else": {"properties": output},
        "examples": [{
            "sessionId": "session-1",
            "userId": "user-42",
            "AIOutput": {"text": "Your order A-17 is on its way.", "source": "bot"},
        }],
    })
}

fn vg_call_status() -> Value {
    json!({
        "title": "vg-call-status",
        "description": "A Voice Gateway (jambonz) call-status webhook (payload kind `vg-call-status`).",
        "type": "object",
        "required": ["call_sid", "call_status"],
        "properties": {
            "call_sid": id("The call: the event's session."),
            "call_status": {"type": "string", "minLength": 1, "maxLength": 64,
                "pattern": "^[A-Za-z0-9_-]+$"},
            "direction": optional_str(32, "inbound or outbound"),
            "from": optional_str(MAX_ID_CHARS, "The caller."),
            "to": optional_str(MAX_ID_CHARS, "The callee."),
            "call_id": optional_str(MAX_ID_CHARS, "The SIP Call-ID."),
            "sip_status": {"type": ["integer", "null"], "minimum": 0},
            "sip_reason": optional_str(256, ""),
            "trace_id": optional_str(256, ""),
        },
        "examples": [{
            "call_sid": "b6f48929-8e86-4d62-ae3b-64fb574d91f6",
            "call_status": "completed",
            "direction": "inbound",
            "from": "+15085551212",
            "to": "+15083728299",
            "sip_status": 200,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::payload::BodyFormat;

    const KINDS: [PayloadKind; 5] = [
        PayloadKind::FlowEvent,
        PayloadKind::Nlu,
        PayloadKind::CognigyInput,
        PayloadKind::WebhookOutput,
        PayloadKind::VgCallStatus,
    ];

    #[test]
    fn every_schema_compiles_and_its_examples_decode() {
        for kind in KINDS {
            let decoder = PayloadDecoder::Builtin(kind);
            let schema = decoder.request_schema();
            let validator = jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{kind:?}: schema does not compile: {e}"));
            let examples = schema["examples"].as_array().expect("examples");
            assert!(!examples.is_empty(), "{kind:?} has no example");
            for ex in examples {
                assert!(
                    validator.is_valid(ex),
                    "{kind:?}: its example breaks its schema"
                );
                let body = serde_json::to_vec(ex).expect("serialise");
                decoder
                    .decode(&body, BodyFormat::Json)
                    .unwrap_or_else(|e| panic!("{kind:?}: the decoder refuses its example: {e:?}"));
            }
        }
    }

    #[test]
    fn a_body_the_decoder_refuses_for_a_type_breaks_the_schema_too() {
        // (kind, body the decoder refuses): the schema must say no to each as well.
        let cases = [
            (
                PayloadKind::FlowEvent,
                json!({"sessionId": "s", "userId": "u", "eventType": "other"}),
            ),
            (
                PayloadKind::FlowEvent,
                json!({"sessionId": "s", "userId": "u", "eventType": "external.action.trigger"}),
            ),
            (
                PayloadKind::FlowEvent,
                json!({"sessionId": "s\u{0007}", "userId": "u", "eventType": "flow.execution"}),
            ),
            (
                PayloadKind::FlowEvent,
                json!({"sessionId": "s", "userId": "u\u{202E}", "eventType": "flow.execution"}),
            ),
            (
                PayloadKind::FlowEvent,
                json!({"sessionId": "s", "userId": "u", "eventType": "flow.execution", "context": 3}),
            ),
            (PayloadKind::Nlu, json!({"sessionId": "not-a-uuid"})),
            (
                PayloadKind::CognigyInput,
                json!({"sessionId": "s", "userId": "u", "slots": {"x": 1}}),
            ),
            (
                PayloadKind::CognigyInput,
                json!({"sessionId": "s", "userId": "u", "intentScore": true}),
            ),
            (
                PayloadKind::VgCallStatus,
                json!({"call_sid": "c", "call_status": "not a word"}),
            ),
            (
                PayloadKind::VgCallStatus,
                json!({"call_sid": "c", "call_status": "ok", "sip_status": "200"}),
            ),
            (
                PayloadKind::WebhookOutput,
                json!({"sessionId": "s", "userId": "u", "AIOutput": []}),
            ),
        ];
        for (kind, body) in cases {
            let decoder = PayloadDecoder::Builtin(kind);
            let bytes = serde_json::to_vec(&body).expect("serialise");
            assert!(
                decoder.decode(&bytes, BodyFormat::Json).is_err(),
                "{kind:?}: the decoder accepts {body}"
            );
            let validator =
                jsonschema::draft202012::new(&decoder.request_schema()).expect("compiles");
            assert!(
                !validator.is_valid(&body),
                "{kind:?}: the schema accepts {body}"
            );
        }
    }
}
