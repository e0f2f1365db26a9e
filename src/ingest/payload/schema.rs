//! `json-schema` payloads: a user's JSON Schema (draft 2020-12) validates the body, and JSON
//! pointers say where the normalised event's fields live in it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{json_type, Decoded, FieldError, Intent, PayloadError, SpecError, MAX_ID_CHARS};
use crate::config::PayloadSpec;

/// Reads and compiles a schema file.
fn compile(path: &Path) -> Result<(Value, jsonschema::Validator), SpecError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Unreadable {
        path: shown(),
        source,
    })?;
    let schema: Value = serde_json::from_str(&text).map_err(|source| SpecError::NotJson {
        path: shown(),
        source,
    })?;
    let validator = jsonschema::draft202012::new(&schema).map_err(|e| SpecError::NotASchema {
        path: shown(),
        reason: e.to_string(),
    })?;
    Ok((schema, validator))
}

/// Most schema errors reported for one body (a huge body against a strict schema could
/// otherwise produce an answer larger than Cognigy stores).
const MAX_SCHEMA_ERRORS: usize = 50;

/// A compiled schema plus its pointers.
pub struct SchemaDecoder {
    path: String,
    /// The schema as read (the API document shows it as the route's request body).
    document: Value,
    validator: jsonschema::Validator,
    pointers: BTreeMap<String, String>,
    correlation: Option<String>,
}

impl std::fmt::Debug for SchemaDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaDecoder")
            .field("schema", &self.path)
            .field("pointers", &self.pointers)
            .finish()
    }
}

impl SchemaDecoder {
    /// Checks the pointers, reads and compiles the schema file; every problem is reported.
    pub fn build(spec: &PayloadSpec) -> Result<SchemaDecoder, Vec<SpecError>> {
        let (schema, pointers) = match spec {
            PayloadSpec::Name(_) => (None, BTreeMap::new()),
            PayloadSpec::Table(t) => (t.schema.as_ref(), t.pointers.clone()),
        };
        let mut problems = Vec::new();
        for required in ["sessionId", "userId"] {
            if !pointers.contains_key(required) {
                problems.push(SpecError::NoPointer(required));
            }
        }
        for (field, pointer) in &pointers {
            if !crate::event::POINTER_FIELDS.contains(&field.as_str()) {
                problems.push(SpecError::NotAField(field.clone()));
            }
            if !pointer.is_empty() && !pointer.starts_with('/') {
                problems.push(SpecError::NotAPointer {
                    field: field.clone(),
                    pointer: pointer.clone(),
                });
            }
        }
        let validator = match schema {
            None => Err(SpecError::NoSchema),
            Some(path) => compile(path),
        };
        let (document, validator) = match validator {
            Ok(v) if problems.is_empty() => v,
            Ok(_) => return Err(problems),
            Err(e) => {
                problems.push(e);
                return Err(problems);
            }
        };
        let mut pointers = pointers;
        let correlation = pointers.remove("correlationId");
        Ok(SchemaDecoder {
            path: schema.map(|p| p.display().to_string()).unwrap_or_default(),
            document,
            validator,
            pointers,
            correlation,
        })
    }

    /// The route's schema as read from its file.
    pub fn document(&self) -> &Value {
        &self.document
    }

    pub(super) fn decode(&self, payload: Value) -> Result<Decoded, PayloadError> {
        let mut errors: Vec<FieldError> = self
            .validator
            .iter_errors(&payload)
            .take(MAX_SCHEMA_ERRORS)
            .map(|e| {
                let at = e.instance_path().as_str().to_string();
                FieldError::new(if at.is_empty() { "/".into() } else { at }, e.to_string())
            })
            .collect();
        if !errors.is_empty() {
            return Err(PayloadError::Invalid(errors));
        }
        let get = |field: &str| {
            self.pointers
                .get(field)
                .map(|p| (p.as_str(), payload.pointer(p)))
        };
        let mut string = |field: &str, required: bool, max: usize| -> Option<String> {
            match get(field) {
                None => None,
                Some((p, found)) => match found {
                    Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => {
                        Some(s.clone())
                    }
                    Some(Value::Number(n)) => Some(n.to_string()),
                    None | Some(Value::Null) if !required => None,
                    Some(Value::String(s)) if s.is_empty() && !required => None,
                    other => {
                        let why = match other {
                            None | Some(Value::Null) => "is required".to_string(),
                            Some(Value::String(s)) if s.is_empty() => "must not be empty".into(),
                            Some(Value::String(_)) => format!("must be at most {max} characters"),
                            Some(v) => format!("must be a string, not {}", json_type(v)),
                        };
                        errors.push(FieldError::new(p, format!("({field}) {why}")));
                        None
                    }
                },
            }
        };
        let session_id = string("sessionId", true, MAX_ID_CHARS);
        let user_id = string("userId", true, MAX_ID_CHARS);
        let event_type = string("eventType", false, 256);
        let text = string("text", false, usize::MAX);
        let intent = string("intent", false, 256);
        let channel = string("channel", false, 256);
        let locale = string("locale", false, 64);
        let url_token = string("urlToken", false, 256);
        let trace_id = string("traceId", false, 256);
        let score = match get("intentScore") {
            Some((_, Some(Value::Number(n)))) => n.as_f64(),
            Some((_, Some(Value::String(s)))) => s.trim().parse().ok(),
            _ => None,
        };
        let entities = match get("entities") {
            Some((_, Some(Value::Object(m)))) => m.clone(),
            Some((p, Some(other))) => {
                errors.push(FieldError::new(
                    p,
                    format!("(entities) must be an object, not {}", json_type(other)),
                ));
                Map::new()
            }
            _ => Map::new(),
        };
        if !errors.is_empty() {
            return Err(PayloadError::Invalid(errors));
        }
        let correlation = self
            .correlation
            .as_deref()
            .and_then(|p| payload.pointer(p))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut d = Decoded::new(
            session_id.as_deref().unwrap_or_default(),
            user_id.as_deref().unwrap_or_default(),
            event_type.as_deref().unwrap_or("json.event"),
            Value::Null,
        );
        d.text = text;
        d.intent = intent.map(|name| Intent {
            name,
            score: score.unwrap_or(0.0),
        });
        d.entities = entities;
        d.channel = channel;
        d.locale = locale;
        d.url_token = url_token;
        d.trace_id = trace_id;
        d.correlation_id = correlation;
        d.payload = payload.into();
        Ok(d)
    }
}
