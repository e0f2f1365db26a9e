//! CEL expressions over the normalised event: the conversion of an event into CEL values,
//! and [`EventExpr`], one expression over the event's JSON form (config checks them, sinks
//! evaluate them). A leaf beside `event`; the rules of a route (`ingest::rules`) build on it.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::event::NormalisedEvent;

pub(crate) mod direct;

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

/// The event's top-level fields, in the order of its JSON form (SPEC §3.6).
const FIELDS: [&str; 18] = [
    "eventId",
    "route",
    "correlationId",
    "transactionId",
    "receivedAt",
    "sessionId",
    "userId",
    "eventType",
    "text",
    "intent",
    "entities",
    "channel",
    "locale",
    "urlToken",
    "traceId",
    "stateVersion",
    "simulated",
    "payload",
];

/// The top-level fields of the event that a set of expressions may read, so that an
/// evaluation converts only those (the conversion, not the evaluation, was most of a rule's
/// cost). Found from the expressions' text, erring on the side of more: a field is kept when
/// its name occurs anywhere in an expression (`event.intent`, `event["intent"]`, a string
/// that happens to contain it), and every field is kept when an expression uses `event` other
/// than as `event.NAME` or `event['NAME']` (passed whole, indexed by a computed key, a
/// method or macro called on it).
#[derive(Clone, Default)]
pub(crate) struct EventFields {
    /// Which of `FIELDS` to convert, each with its CEL key (built once).
    keys: Vec<(usize, Key)>,
}

impl std::fmt::Debug for EventFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(i, _)| FIELDS[*i]))
            .finish()
    }
}

impl EventFields {
    /// Every field (what `has(event.x)` and friends see when nothing is known).
    pub(crate) fn all() -> EventFields {
        EventFields::of(|_| true)
    }

    /// The fields that `exprs` may read.
    pub(crate) fn read_by<'a>(exprs: impl IntoIterator<Item = &'a str> + Clone) -> EventFields {
        if exprs.clone().into_iter().any(uses_event_whole) {
            return EventFields::all();
        }
        EventFields::of(|name| exprs.clone().into_iter().any(|e| e.contains(name)))
    }

    fn of(keep: impl Fn(&str) -> bool) -> EventFields {
        let keys = FIELDS
            .iter()
            .enumerate()
            .filter(|(_, name)| keep(name))
            .map(|(i, name)| (i, Key::String(Arc::new((*name).to_string()))))
            .collect();
        EventFields { keys }
    }
}

/// Whether `expr` uses the identifier `event` other than to select one named field.
fn uses_event_whole(expr: &str) -> bool {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let skip_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut from = 0;
    while let Some(at) = expr[from..].find("event").map(|i| i + from) {
        from = at + "event".len();
        let bounded_left = at == 0 || !(ident(b[at - 1]) || b[at - 1] == b'.');
        let bounded_right = from == b.len() || !ident(b[from]);
        if !bounded_left || !bounded_right {
            continue;
        }
        let i = skip_space(from);
        match b.get(i) {
            Some(b'.') => {
                let start = skip_space(i + 1);
                let mut end = start;
                while end < b.len() && ident(b[end]) {
                    end += 1;
                }
                // A call on the event itself (`event.size()`, a macro such as
                // `event.exists(…)`) reads the whole map; a field is never called.
                let called = b.get(skip_space(end)) == Some(&b'(');
                if start == end || called {
                    return true;
                }
            }
            Some(b'[') => {
                // Only a literal key names its field.
                if !matches!(b.get(skip_space(i + 1)), Some(b'\'' | b'"')) {
                    return true;
                }
            }
            _ => return true,
        }
    }
    false
}

/// The normalised event as a CEL map of the given fields, built field by field (cheaper
/// than a generic serde conversion). Field names and presence match the event's JSON form
/// (SPEC §3.6).
pub(crate) fn event_value(e: &NormalisedEvent, fields: &EventFields) -> CelValue {
    let mut m: HashMap<Key, CelValue> = HashMap::with_capacity(fields.keys.len());
    for (i, key) in &fields.keys {
        if let Some(v) = field(e, *i) {
            m.insert(key.clone(), v.to_cel());
        }
    }
    map(m)
}

/// One part of the event, borrowed: what an expression reads before it becomes a CEL value
/// (`View::to_cel`). `event_value` and `direct` both see the event through it, so a rule
/// evaluated directly reads exactly what it would read from the converted event.
#[derive(Clone, Copy)]
pub(crate) enum View<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Intent(&'a crate::event::Intent),
    Object(&'a Map<String, Value>),
    Json(&'a Value),
}

/// The event's top-level field `FIELDS[i]`; `None` when the event's JSON form leaves it out.
pub(crate) fn field(e: &NormalisedEvent, i: usize) -> Option<View<'_>> {
    fn opt(v: &Option<String>) -> Option<View<'_>> {
        v.as_deref().map(View::Text)
    }
    match *FIELDS.get(i)? {
        "eventId" => Some(View::Text(&e.event_id)),
        "route" => Some(View::Text(&e.route)),
        "correlationId" => Some(View::Text(&e.correlation_id)),
        "transactionId" => Some(View::Text(&e.transaction_id)),
        "receivedAt" => Some(View::Text(&e.received_at)),
        "sessionId" => Some(View::Text(&e.session_id)),
        "userId" => Some(View::Text(&e.user_id)),
        "eventType" => Some(View::Text(&e.event_type)),
        "text" => opt(&e.text),
        "channel" => opt(&e.channel),
        "locale" => opt(&e.locale),
        "urlToken" => opt(&e.url_token),
        "traceId" => opt(&e.trace_id),
        "intent" => e.intent.as_ref().map(View::Intent),
        "entities" => Some(View::Object(&e.entities)),
        "stateVersion" => Some(View::Int(
            i64::try_from(e.state_version).unwrap_or(i64::MAX),
        )),
        "simulated" => Some(View::Bool(e.simulated)),
        "payload" => Some(View::Json(&e.payload)),
        _ => None,
    }
}

/// Where `FIELDS` holds `name`.
pub(crate) fn field_index(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| *f == name)
}

impl<'a> View<'a> {
    /// The member `name` of a map (CEL's `a.name`); `None` where CEL fails with "no such
    /// key" (not a map, or no such member).
    pub(crate) fn member(self, name: &str) -> Option<View<'a>> {
        match self {
            View::Object(m) | View::Json(Value::Object(m)) => m.get(name).map(View::Json),
            View::Intent(i) => match name {
                "name" => Some(View::Text(&i.name)),
                "score" => Some(View::Float(i.score)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a map has the member `name` (CEL's `has(a.name)`: false for what is not a
    /// map).
    pub(crate) fn has(self, name: &str) -> bool {
        match self {
            View::Object(m) | View::Json(Value::Object(m)) => m.contains_key(name),
            View::Intent(_) => matches!(name, "name" | "score"),
            _ => false,
        }
    }

    /// As a CEL value.
    pub(crate) fn to_cel(self) -> CelValue {
        match self {
            View::Text(s) => text(s),
            View::Int(i) => CelValue::Int(i),
            View::Float(f) => CelValue::Float(f),
            View::Bool(b) => CelValue::Bool(b),
            View::Intent(i) => {
                let mut im: HashMap<Key, CelValue> = HashMap::with_capacity(2);
                im.insert(Key::String(Arc::new("name".into())), text(&i.name));
                im.insert(
                    Key::String(Arc::new("score".into())),
                    CelValue::Float(i.score),
                );
                map(im)
            }
            View::Object(o) => json_object(o),
            View::Json(v) => json_value(v),
        }
    }
}
/// A CEL map of `m` as it is (`CelValue::from` would hash every key again).
fn map(m: HashMap<Key, CelValue>) -> CelValue {
    CelValue::Map(CelMap { map: Arc::new(m) })
}

fn json_object(o: &Map<String, Value>) -> CelValue {
    let m: HashMap<Key, CelValue> = o
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_value(v)))
        .collect();
    map(m)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(exprs: &[&str]) -> Vec<&'static str> {
        let f = EventFields::read_by(exprs.iter().copied());
        f.keys.iter().map(|(i, _)| FIELDS[*i]).collect()
    }

    #[test]
    fn only_the_fields_the_expressions_name_are_converted() {
        let seed = [
            "event.intent.score >= 0.75",
            "has(event.entities.orderId)",
            "event.entities.orderId",
        ];
        assert_eq!(fields(&seed), ["intent", "entities"]);
        assert_eq!(fields(&["event['channel'] == 'voice'"]), ["channel"]);
        assert_eq!(fields(&["event . payload.x > 1"]), ["payload"]);
        assert!(fields(&["true"]).is_empty());
    }

    #[test]
    fn an_expression_that_uses_the_whole_event_gets_every_field() {
        for e in [
            "size(event) > 3",
            "event.exists(k, k == 'text')",
            "event.all(k, k != 'x')",
            "event.size() > 3",
            "event[k] == 1",
            "event == {}",
            "event",
        ] {
            assert_eq!(fields(&[e]).len(), FIELDS.len(), "{e}");
        }
        // `event` inside another name is not the variable.
        assert_eq!(fields(&["myevent.x == 1 || has(event.text)"]), ["text"]);
    }

    #[test]
    fn a_value_with_only_some_fields_evaluates_like_the_whole() {
        let mut e = NormalisedEvent::new(
            "r",
            "c".into(),
            "t".into(),
            "s".into(),
            "u".into(),
            "nlu.input".into(),
            serde_json::json!({"a": 1}),
        );
        e.text = Some("hi".into());
        for expr in [
            "event.text == 'hi'",
            "has(event.text) && !has(event.channel)",
        ] {
            let program = Program::compile(expr).expect("compiles");
            for f in [EventFields::read_by([expr]), EventFields::all()] {
                let got = with_event(event_value(&e, &f), |ctx| program.execute(ctx));
                assert_eq!(got, Ok(CelValue::Bool(true)), "{expr} with {f:?}");
            }
        }
    }
}
