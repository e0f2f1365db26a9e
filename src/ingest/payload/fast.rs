//! Readers of the built-in kinds `nlu`, `flow-event` and `cognigy-input` that take their fields straight from
//! the body's text, into typed fields borrowed from it, without the JSON tree the general
//! path builds (a map per object, a string per key and value, all dropped again): that tree
//! was about a sixth of a request's instructions (bench/README.md, eighteenth session). The
//! body is then stored as it came, so only a body in serde_json's own form comes here
//! (`json::is_canonical`), and the tree is parsed later only if something asks for it
//! (`event::Payload`).
//!
//! These readers accept only what is valid, and say nothing about what is not: for any body
//! they do not take (`None`), the caller goes the general way, whose checks give the
//! field-by-field errors. So each reader must take a body only where the general path would
//! accept it and produce the same `Decoded`; `tests::the_fast_readers_agree_with_the_general_path`
//! holds them to that over a generated corpus.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::cognigy::{slot_entity, MAX_TEXT_CHARS, OPTIONAL_STRINGS};
use super::{Decoded, MAX_ID_CHARS, MAX_MESSAGE_CHARS};
use crate::config::PayloadKind;
use crate::event::{Intent, Payload};

/// `text`'s fields as `kind` reads them, when the kind has a reader here and the body is
/// valid for it; `text` is canonical JSON (`json::is_canonical`).
pub(super) fn decode(kind: PayloadKind, text: &str) -> Option<Decoded> {
    // A derived struct would read an array too; the general path takes objects only.
    if !text.starts_with('{') {
        return None;
    }
    match kind {
        PayloadKind::Nlu => nlu(text),
        PayloadKind::FlowEvent => flow_event(text),
        PayloadKind::CognigyInput => cognigy_input(text),
        _ => None,
    }
}

/// A string, borrowed from the body unless it had escapes.
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Any value, kept when it is a string (`flow-event`'s context fields: anything else there
/// is ignored, not refused).
#[derive(Debug, Default)]
struct StrOrAny<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for StrOrAny<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrOrAny<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E>(self, s: String) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(Some(Cow::Owned(s))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(None))
            }
            fn visit_unit<E>(self) -> Result<StrOrAny<'a>, E> {
                Ok(StrOrAny(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<StrOrAny<'a>, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StrOrAny(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrOrAny<'a>, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StrOrAny(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A struct read from a JSON object only (a derived one would read an array as well, which
/// the general path refuses).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(a)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn owned(t: Option<Text<'_>>) -> Option<String> {
    t.map(|t| t.0.into_owned())
}

fn chars_at_most(s: &str, max: usize) -> bool {
    s.len() <= max || s.chars().count() <= max
}

/// A required identifier of `flow-event` and `cognigy-input`: not empty, at most
/// `MAX_ID_CHARS` characters.
fn id(t: Option<Text<'_>>) -> Option<Text<'_>> {
    t.filter(|s| !s.0.is_empty() && chars_at_most(&s.0, MAX_ID_CHARS))
}

/// `nlu`: the fields `super::nlu` reads, every one required.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NluBody<'a> {
    #[serde(borrow)]
    session_id: Option<Text<'a>>,
    #[serde(borrow)]
    user_id: Option<Text<'a>>,
    #[serde(borrow)]
    input: Option<Text<'a>>,
    #[serde(borrow)]
    context: Option<Obj<NluContext<'a>>>,
    #[serde(borrow)]
    intent: Option<Obj<NluIntent<'a>>>,
    #[serde(borrow)]
    entities: Option<Vec<Obj<NluEntity<'a>>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NluContext<'a> {
    #[serde(borrow)]
    locale: Option<Text<'a>>,
    #[serde(borrow)]
    channel: Option<Text<'a>>,
    #[serde(borrow)]
    correlation_id: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct NluIntent<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    confidence: Option<f64>,
}

#[derive(Deserialize)]
struct NluEntity<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    value: Text<'a>,
}

fn nlu(text: &str) -> Option<Decoded> {
    let b: NluBody = serde_json::from_str(text).ok()?;
    let session_id = b.session_id.filter(|s| !s.0.is_empty())?;
    uuid::Uuid::try_parse(&session_id.0).ok()?;
    let user_id = b.user_id.filter(|s| !s.0.is_empty())?;
    let input = b.input.filter(|s| !s.0.is_empty())?;
    let context = b.context?.0;
    let (locale, channel) = (context.locale?, context.channel?);
    let intent = b.intent?.0;
    let name = intent.name?;
    let score = intent.confidence.filter(|x| (0.0..=1.0).contains(x))?;
    let mut entities = Map::new();
    for Obj(e) in b.entities? {
        entities.insert(e.name.0.into_owned(), Value::String(e.value.0.into_owned()));
    }
    Some(Decoded {
        session_id: session_id.0.into_owned(),
        user_id: user_id.0.into_owned(),
        event_type: "nlu.input".into(),
        text: Some(input.0.into_owned()),
        intent: Some(Intent {
            name: name.0.into_owned(),
            score,
        }),
        entities,
        channel: Some(channel.0.into_owned()),
        locale: Some(locale.0.into_owned()),
        correlation_id: owned(context.correlation_id),
        url_token: None,
        trace_id: None,
        payload: Payload::from_canonical_text(text.into()),
    })
}

/// `flow-event`: the fields `super::flow_event` reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlowBody<'a> {
    #[serde(borrow)]
    session_id: Option<Text<'a>>,
    #[serde(borrow)]
    user_id: Option<Text<'a>>,
    #[serde(borrow)]
    event_type: Option<Text<'a>>,
    #[serde(borrow)]
    action_name: Option<Text<'a>>,
    #[serde(borrow)]
    message: Option<Text<'a>>,
    #[serde(borrow)]
    context: Option<Obj<FlowContext<'a>>>,
    #[serde(borrow)]
    correlation_id: Option<Text<'a>>,
    #[serde(borrow)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    flow_name: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlowContext<'a> {
    #[serde(borrow, default)]
    channel: StrOrAny<'a>,
    #[serde(borrow, default)]
    locale: StrOrAny<'a>,
    #[serde(borrow, default)]
    correlation_id: StrOrAny<'a>,
}

fn flow_event(text: &str) -> Option<Decoded> {
    let b: FlowBody = serde_json::from_str(text).ok()?;
    let session_id = id(b.session_id)?;
    let user_id = id(b.user_id)?;
    let event_type = b.event_type?;
    match &*event_type.0 {
        "flow.execution" => {}
        "external.action.trigger" => {
            b.action_name.as_ref()?;
        }
        _ => return None,
    }
    // The optional strings: absent or null, or not empty.
    for t in [
        &b.action_name,
        &b.correlation_id,
        &b.timestamp,
        &b.flow_name,
    ] {
        if t.as_ref().is_some_and(|t| t.0.is_empty()) {
            return None;
        }
    }
    if let Some(ts) = &b.timestamp {
        time::OffsetDateTime::parse(&ts.0, &time::format_description::well_known::Rfc3339).ok()?;
    }
    if b.message
        .as_ref()
        .is_some_and(|m| !chars_at_most(&m.0, MAX_MESSAGE_CHARS))
    {
        return None;
    }
    let (channel, locale, context_correlation) = match b.context {
        Some(Obj(c)) => (c.channel.0, c.locale.0, c.correlation_id.0),
        None => (None, None, None),
    };
    Some(Decoded {
        session_id: session_id.0.into_owned(),
        user_id: user_id.0.into_owned(),
        event_type: event_type.0.into_owned(),
        text: owned(b.message),
        intent: None,
        entities: Map::new(),
        channel: channel.map(Cow::into_owned),
        locale: locale.map(Cow::into_owned),
        correlation_id: owned(b.correlation_id).or(context_correlation.map(Cow::into_owned)),
        url_token: None,
        trace_id: None,
        payload: Payload::from_canonical_text(text.into()),
    })
}

/// `cognigy-input`: the fields `super::cognigy::input` reads, with its leniency (an empty
/// optional string is absent; the score may be a numeric string).
#[derive(Deserialize)]
struct CognigyInput<'a> {
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<Text<'a>>,
    #[serde(rename = "userId", borrow)]
    user_id: Option<Text<'a>>,
    #[serde(borrow)]
    text: Option<Text<'a>>,
    /// Read only to check that it is an object when present.
    #[serde(rename = "data")]
    _data: Option<Obj<IgnoredAny>>,
    #[serde(rename = "URLToken", borrow)]
    url_token: Option<Text<'a>>,
    #[serde(rename = "traceId", borrow)]
    trace_id: Option<Text<'a>>,
    #[serde(rename = "inputId", borrow)]
    input_id: Option<Text<'a>>,
    #[serde(borrow)]
    channel: Option<Text<'a>>,
    #[serde(borrow)]
    language: Option<Text<'a>>,
    #[serde(rename = "flowName", borrow)]
    flow_name: Option<Text<'a>>,
    #[serde(rename = "correlationId", borrow)]
    correlation_id: Option<Text<'a>>,
    #[serde(borrow)]
    intent: Option<Text<'a>>,
    #[serde(rename = "intentScore", borrow)]
    intent_score: Option<Score<'a>>,
    slots: Option<Obj<Map<String, Value>>>,
}

/// `intentScore`: a number, or a string holding one.
enum Score<'a> {
    Number(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Score<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Score<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_f64<E>(self, x: f64) -> Result<Score<'a>, E> {
                Ok(Score::Number(x))
            }
            fn visit_i64<E>(self, x: i64) -> Result<Score<'a>, E> {
                Ok(Score::Number(x as f64))
            }
            fn visit_u64<E>(self, x: u64) -> Result<Score<'a>, E> {
                Ok(Score::Number(x as f64))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Score<'a>, E> {
                Ok(Score::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Score<'a>, E> {
                Ok(Score::Text(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An optional string where `""` is absent; `Err` past `max` characters.
fn lenient(t: Option<Text<'_>>, max: usize) -> Result<Option<Text<'_>>, ()> {
    match t {
        Some(t) if t.0.is_empty() => Ok(None),
        Some(t) if !chars_at_most(&t.0, max) => Err(()),
        t => Ok(t),
    }
}

fn cognigy_input(text: &str) -> Option<Decoded> {
    let b: CognigyInput = serde_json::from_str(text).ok()?;
    let session_id = id(b.session_id)?;
    let user_id = id(b.user_id)?;
    let said = lenient(b.text, MAX_TEXT_CHARS).ok()?;
    let max = |key: &str| {
        OPTIONAL_STRINGS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| *m)
    };
    let url_token = lenient(b.url_token, max("URLToken")?).ok()?;
    let trace_id = lenient(b.trace_id, max("traceId")?).ok()?;
    let input_id = lenient(b.input_id, max("inputId")?).ok()?;
    let channel = lenient(b.channel, max("channel")?).ok()?;
    let language = lenient(b.language, max("language")?).ok()?;
    lenient(b.flow_name, max("flowName")?).ok()?;
    let correlation = lenient(b.correlation_id, max("correlationId")?).ok()?;
    let intent = lenient(b.intent, max("intent")?).ok()?;
    let score = match b.intent_score {
        None => None,
        Some(Score::Text(s)) if s.trim().is_empty() => None,
        Some(Score::Text(s)) => Some(s.trim().parse::<f64>().ok()?),
        Some(Score::Number(x)) => Some(x),
    };
    if score.is_some_and(|x| !(x.is_finite() && (0.0..=1.0).contains(&x))) {
        return None;
    }
    let mut entities = Map::new();
    if let Some(Obj(slots)) = b.slots {
        for (name, matches) in slots {
            let Value::Array(m) = matches else {
                return None;
            };
            if let Some(v) = slot_entity(&m) {
                entities.insert(name, v);
            }
        }
    }
    Some(Decoded {
        session_id: session_id.0.into_owned(),
        user_id: user_id.0.into_owned(),
        event_type: "cognigy.input".into(),
        text: owned(said),
        // An intent without a score scores 0, as on the general path.
        intent: intent.map(|name| Intent {
            name: name.0.into_owned(),
            score: score.unwrap_or(0.0),
        }),
        entities,
        channel: owned(channel),
        locale: owned(language),
        correlation_id: owned(correlation),
        url_token: owned(url_token),
        trace_id: owned(trace_id.or(input_id)),
        payload: Payload::from_canonical_text(text.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode_value, Decoded};
    use super::*;
    use serde_json::json;

    /// The fields of a `Decoded`, for comparing two.
    fn fields(d: &Decoded) -> String {
        format!(
            "{:?}",
            (
                &d.session_id,
                &d.user_id,
                &d.event_type,
                &d.text,
                &d.intent,
                &d.entities,
                (
                    &d.channel,
                    &d.locale,
                    &d.correlation_id,
                    &d.url_token,
                    &d.trace_id
                ),
                &*d.payload,
            )
        )
    }

    fn nlu_body() -> Value {
        json!({
            "sessionId": "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e",
            "userId": "user-1",
            "input": "where is \"my\" order A-1",
            "context": {"locale": "en-US", "channel": "webchat", "correlationId": "c-1"},
            "intent": {"name": "order_status", "confidence": 0.94},
            "entities": [{"name": "orderId", "value": "A-1"}, {"name": "x", "value": "y"}],
            "extra": {"deep": [1, {"a": null}]}
        })
    }

    fn flow_body() -> Value {
        json!({
            "sessionId": "sess-1",
            "userId": "usr-1",
            "message": "Check order status",
            "eventType": "flow.execution",
            "context": {"intent": "order_tracking", "channel": "voice", "locale": 3},
            "timestamp": "2024-01-15T14:32:10Z",
            "flowName": "OrderSupportFlow",
            "correlationId": "c-9",
            "actionName": "notify"
        })
    }

    fn cognigy_input_body() -> Value {
        json!({
            "sessionId": "s-1", "userId": "u-1", "text": "where is A-1", "data": {"orderId": "A-1"},
            "URLToken": "tok", "traceId": "", "inputId": "in-1", "channel": "webchat",
            "language": "en-US", "flowName": "Main", "correlationId": "c-1",
            "intent": "order_status", "intentScore": " 0.8 ",
            "slots": {"ORDER": [{"keyphrase": "A-1"}], "DATE": [{"start": 1, "end": 2}], "X": []}
        })
    }

    /// Values a field is set to in the corpus: each type, the edge cases of the checks.
    fn variants() -> Vec<Option<Value>> {
        let long = "é".repeat(257);
        [
            json!(null),
            json!(""),
            json!("x"),
            json!("3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e"),
            json!("flow.execution"),
            json!("external.action.trigger"),
            json!("2024-01-15T14:32:10+02:00"),
            json!("yesterday"),
            json!(long),
            json!("tab\there"),
            json!(0),
            json!(1),
            json!(0.5),
            json!(1.5),
            json!(-0.25),
            json!(true),
            json!([]),
            json!([{"name": "n", "value": "v"}, {"name": "n", "value": "w"}]),
            json!([{"name": "n", "value": 1}]),
            json!(["n"]),
            json!({}),
            json!({"locale": "de", "channel": "", "correlationId": "c"}),
            json!({"locale": "de", "channel": null}),
            json!({"locale": 1, "channel": "x", "correlationId": 2}),
            json!({"name": "i", "confidence": 1}),
            json!({"name": "i", "confidence": "0.5"}),
            json!({"name": null, "confidence": 0.5}),
            json!(" 0.25 "),
            json!("1e-1"),
            json!("inf"),
            json!("é".repeat(70)),
            json!({"A": [{"value": 3}], "B": [{"keyphrase": 1, "value": "v"}]}),
            json!({"A": "not a list"}),
        ]
        .into_iter()
        .map(Some)
        .chain([None])
        .collect()
    }

    /// For every body made from `base` by setting (or removing) one field, or two: where
    /// the fast reader takes the body, the general path takes it too and decodes the same.
    fn agree(kind: PayloadKind, base: &Value, fast: fn(&str) -> Option<Decoded>) -> usize {
        let keys: Vec<String> = base.as_object().expect("object").keys().cloned().collect();
        let variants = variants();
        let mut bodies = vec![base.clone()];
        for (i, k) in keys.iter().enumerate() {
            for v in &variants {
                let mut b = base.clone();
                match v {
                    Some(v) => b[k] = v.clone(),
                    None => {
                        b.as_object_mut().expect("object").shift_remove(k);
                    }
                }
                bodies.push(b.clone());
                // And a second field changed with it.
                let other = &keys[(i + 1) % keys.len()];
                for w in variants.iter().step_by(5) {
                    let mut c = b.clone();
                    match w {
                        Some(w) => c[other] = w.clone(),
                        None => {
                            c.as_object_mut().expect("object").shift_remove(other);
                        }
                    }
                    bodies.push(c);
                }
            }
        }
        let mut taken = 0;
        for body in bodies {
            let text = serde_json::to_string(&body).expect("json");
            let general = decode_value(kind, body.clone());
            match (fast(&text), general) {
                (Some(f), Ok(g)) => {
                    taken += 1;
                    assert_eq!(fields(&f), fields(&g), "{text}");
                    assert_eq!(f.payload.text(), Some(text.as_str()));
                }
                (Some(_), Err(e)) => panic!("fast took {text}, general refused it: {e:?}"),
                (None, Ok(_)) => panic!("fast left {text}, which the general path takes"),
                (None, Err(_)) => {}
            }
        }
        taken
    }

    #[test]
    fn the_fast_readers_agree_with_the_general_path() {
        assert!(agree(PayloadKind::Nlu, &nlu_body(), nlu) > 20);
        assert!(agree(PayloadKind::FlowEvent, &flow_body(), flow_event) > 50);
        let mut trigger = flow_body();
        trigger["eventType"] = json!("external.action.trigger");
        assert!(agree(PayloadKind::FlowEvent, &trigger, flow_event) > 50);
        assert!(
            agree(
                PayloadKind::CognigyInput,
                &cognigy_input_body(),
                cognigy_input
            ) > 100
        );
    }

    #[test]
    fn escaped_strings_are_read_as_their_text() {
        let text =
            r#"{"sessionId":"s\"1","userId":"u\\1","eventType":"flow.execution","message":"a\nb"}"#;
        let d = flow_event(text).expect("valid");
        assert_eq!(d.session_id, "s\"1");
        assert_eq!(d.user_id, "u\\1");
        assert_eq!(d.text.as_deref(), Some("a\nb"));
        assert_eq!(d.payload["message"], "a\nb");
    }
}
