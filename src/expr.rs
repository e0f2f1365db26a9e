//! CEL expressions over the normalised event: the conversion of an event into CEL values,
//! and [`EventExpr`], one expression over the event's JSON form (config checks them, sinks
//! evaluate them). A leaf beside `event`; the rules of a route (`ingest::rules`) build on it.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::event::NormalisedEvent;

thread_local! {
    /// The standard CEL functions, built once per thread; each evaluation adds `event` in a
    /// child scope.
    static ROOT: Context<'static> = Context::default();
}

/// Runs `f` with a context in which `event` is bound to `value`.
pub(crate) fn with_event<R>(value: CelValue, f: impl FnOnce(&Context<'_>) -> R) -> R {
    ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_from_value("event", value);
        f(&ctx)
    })
}

/// One expression over the event in its JSON form, as sinks hold it (a `cognigy` sink's
/// `text` and `data`).
pub struct EventExpr {
    expr: String,
    program: Program,
}

impl std::fmt::Debug for EventExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EventExpr").field(&self.expr).finish()
    }
}

/// Why an expression does not compile or evaluate; the message quotes the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("`{expr}` does not compile: {why}")]
    Compile { expr: String, why: String },
    #[error("`{expr}` failed: {why}")]
    Evaluate { expr: String, why: String },
}

impl EventExpr {
    pub fn compile(expr: &str) -> Result<EventExpr, ExprError> {
        Program::compile(expr)
            .map(|program| EventExpr {
                expr: expr.to_string(),
                program,
            })
            .map_err(|e| ExprError::Compile {
                expr: expr.to_string(),
                why: one_line(&e.to_string()),
            })
    }

    /// Evaluates with `event` bound to the given JSON; the result as JSON.
    pub fn evaluate(&self, event: &Value) -> Result<Value, ExprError> {
        let failed = |why: String| ExprError::Evaluate {
            expr: self.expr.clone(),
            why,
        };
        with_event(json_value(event), |ctx| {
            let v = self
                .program
                .execute(ctx)
                .map_err(|e| failed(one_line(&e.to_string())))?;
            v.json()
                .map_err(|e| failed(format!("gave no JSON value: {e:?}")))
        })
    }
}

fn text(s: &str) -> CelValue {
    CelValue::String(Arc::new(s.to_string()))
}

/// The normalised event as a CEL map, built field by field (cheaper than a generic serde
/// conversion). Field names and presence match the event's JSON form (SPEC §3.6).
pub(crate) fn event_value(e: &NormalisedEvent, with_payload: bool) -> CelValue {
    let mut m: HashMap<Key, CelValue> = HashMap::with_capacity(20);
    let mut put = |k: &str, v: CelValue| {
        m.insert(Key::String(Arc::new(k.to_string())), v);
    };
    put("eventId", text(&e.event_id));
    put("route", text(&e.route));
    put("correlationId", text(&e.correlation_id));
    put("transactionId", text(&e.transaction_id));
    put("receivedAt", text(&e.received_at));
    put("sessionId", text(&e.session_id));
    put("userId", text(&e.user_id));
    put("eventType", text(&e.event_type));
    let optional = [
        ("text", &e.text),
        ("channel", &e.channel),
        ("locale", &e.locale),
        ("urlToken", &e.url_token),
        ("traceId", &e.trace_id),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            put(k, text(v));
        }
    }
    if let Some(i) = &e.intent {
        let mut im: HashMap<Key, CelValue> = HashMap::with_capacity(2);
        im.insert(Key::String(Arc::new("name".into())), text(&i.name));
        im.insert(
            Key::String(Arc::new("score".into())),
            CelValue::Float(i.score),
        );
        put("intent", CelValue::from(im));
    }
    put("entities", json_object(&e.entities));
    put(
        "stateVersion",
        CelValue::Int(i64::try_from(e.state_version).unwrap_or(i64::MAX)),
    );
    put("simulated", CelValue::Bool(e.simulated));
    if with_payload {
        put("payload", json_value(&e.payload));
    }
    CelValue::from(m)
}

fn json_object(o: &Map<String, Value>) -> CelValue {
    let m: HashMap<Key, CelValue> = o
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_value(v)))
        .collect();
    CelValue::from(m)
}

fn json_value(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(CelValue::Int)
            .or_else(|| n.as_u64().map(CelValue::UInt))
            .unwrap_or_else(|| CelValue::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => text(s),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(json_value).collect())),
        Value::Object(o) => json_object(o),
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
