//! The normalised event (SPEC §3.6), what rules see, the store keeps and sinks receive, and
//! the few facts about a request that travel with it to the store. A leaf: it imports nothing
//! of the crate, so config, ingest, store and sinks can all use it.

use serde::Serialize;
use serde_json::{Map, Value};

/// `intent` of the normalised event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intent {
    pub name: String,
    pub score: f64,
}

/// The normalised event (SPEC §3.6). Stored as [`NormalisedEvent::to_json`] writes it: a
/// field added here goes there too, and into its test with a value set.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NormalisedEvent {
    pub event_id: String,
    /// The W3C `traceparent` of the request span that accepted the event, when tracing is
    /// on: delivery spans link to it. Serialised early, before any field a sender controls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub route: String,
    pub correlation_id: String,
    pub transaction_id: String,
    pub received_at: String,
    pub session_id: String,
    pub user_id: String,
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    pub entities: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The session's interaction count after this event; set when the event is committed.
    pub state_version: u64,
    pub simulated: bool,
    pub payload: Payload,
}

/// The event's `payload`: the request's body as a JSON tree, and its text when the body
/// already was what serde_json writes for that tree (`json::is_canonical`). Either may come
/// first: a decoder that reads its fields without the tree (`ingest::payload`) leaves the
/// text alone, and the tree is parsed from it only when something looks at it (a rule on
/// `event.payload`, redaction). The stored event copies the
/// text when there is one (bench/README.md, eighteenth session). Changing the tree (through
/// `&mut`) forgets the text.
#[derive(Clone, Default)]
pub struct Payload {
    tree: std::sync::OnceLock<Value>,
    text: Option<Box<str>>,
}

impl Payload {
    /// A payload known by its text only. The caller has checked that `text` is JSON as
    /// serde_json writes it (`json::is_canonical` of text a parser accepted).
    pub fn from_canonical_text(text: Box<str>) -> Payload {
        Payload {
            tree: std::sync::OnceLock::new(),
            text: Some(text),
        }
    }

    /// Adds the text of the tree already held (the same check as
    /// [`Payload::from_canonical_text`]).
    pub fn set_canonical_text(&mut self, text: Box<str>) {
        self.text = Some(text);
    }

    /// The text, when known.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Appends the payload as JSON: its text when known, else its tree written out.
    pub fn write_json(&self, out: &mut String) {
        match &self.text {
            Some(text) => out.push_str(text),
            None => crate::json::value(out, self),
        }
    }
}

impl From<Value> for Payload {
    fn from(tree: Value) -> Payload {
        Payload {
            tree: std::sync::OnceLock::from(tree),
            text: None,
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.tree.get_or_init(|| {
            // A canonical text always parses; `Null` only for a payload made empty.
            self.text
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null)
        })
    }
}

impl std::ops::DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut Value {
        let _ = &**self;
        self.text = None;
        self.tree.get_mut().expect("the tree was just made")
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// The `traceparent` an event body carries (see [`NormalisedEvent::traceparent`]): the
/// first `"traceparent":"…"` key in it, which is the event's own (a sender's strings cannot
/// hold an unescaped quote, and the field comes before any map a sender fills).
pub fn traceparent_in(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"traceparent\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = body.get(at..)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// An event's JSON without its `stateVersion`'s digits ([`NormalisedEvent::to_json_unversioned`]).
#[derive(Debug, Clone)]
pub struct Unversioned {
    text: String,
    /// Where the digits go.
    at: usize,
}

impl Unversioned {
    /// The JSON with `version` in its place: [`NormalisedEvent::to_json`] of the event with
    /// that version.
    pub fn versioned(mut self, version: u64) -> String {
        self.text
            .insert_str(self.at, itoa::Buffer::new().format(version));
        self.text
    }
}

impl NormalisedEvent {
    /// The event as compact JSON: what `serde_json::to_string` gives for it, written by hand
    /// (`json`; every stored event is written once, on the commit path).
    pub fn to_json(&self) -> String {
        self.to_json_unversioned().versioned(self.state_version)
    }

    /// [`NormalisedEvent::to_json`] but for the `stateVersion`'s digits, which
    /// [`Unversioned::versioned`] puts in: the event's JSON is written on the request's own
    /// thread, before the store decides its version (`store::sqlite`'s sequencer, which
    /// decides every event in turn, then only puts the digits in).
    pub fn to_json_unversioned(&self) -> Unversioned {
        use crate::json::{float, object, string};
        // The fields take a few hundred bytes; the payload, when its text is known, its own
        // length (one allocation instead of growing by doubling).
        let mut out = String::with_capacity(512 + self.payload.text().map_or(0, str::len));
        // The embedded store reads the fields up to `eventType` back from this opening
        // (`store::sqlite::record`'s packed records): another order only leaves its records
        // unpacked. Each field after the first as one piece, `,"name":` (three pushes and a test of
        // the length before were ~80 instructions a field, 16 fields: bench/README.md,
        // fortieth session).
        out.push_str("{\"eventId\":");
        string(&mut out, &self.event_id);
        if let Some(t) = &self.traceparent {
            out.push_str(",\"traceparent\":");
            string(&mut out, t);
        }
        for (field, v) in [
            (",\"route\":", &self.route),
            (",\"correlationId\":", &self.correlation_id),
            (",\"transactionId\":", &self.transaction_id),
            (",\"receivedAt\":", &self.received_at),
            (",\"sessionId\":", &self.session_id),
            (",\"userId\":", &self.user_id),
            (",\"eventType\":", &self.event_type),
        ] {
            out.push_str(field);
            string(&mut out, v);
        }
        if let Some(t) = &self.text {
            out.push_str(",\"text\":");
            string(&mut out, t);
        }
        if let Some(i) = &self.intent {
            out.push_str(",\"intent\":{\"name\":");
            string(&mut out, &i.name);
            out.push_str(",\"score\":");
            float(&mut out, i.score);
            out.push('}');
        }
        out.push_str(",\"entities\":");
        object(&mut out, &self.entities);
        for (field, v) in [
            (",\"channel\":", &self.channel),
            (",\"locale\":", &self.locale),
            (",\"urlToken\":", &self.url_token),
            (",\"traceId\":", &self.trace_id),
        ] {
            if let Some(v) = v {
                out.push_str(field);
                string(&mut out, v);
            }
        }
        out.push_str(",\"stateVersion\":");
        let at = out.len();
        out.push_str(if self.simulated {
            ",\"simulated\":true,\"payload\":"
        } else {
            ",\"simulated\":false,\"payload\":"
        });
        self.payload.write_json(&mut out);
        out.push('}');
        Unversioned { text: out, at }
    }

    /// A new event received now: [`NormalisedEvent::new_at`] with a reading of the clock.
    pub fn new(
        route: &str,
        correlation_id: String,
        transaction_id: String,
        session_id: String,
        user_id: String,
        event_type: String,
        payload: impl Into<Payload>,
    ) -> NormalisedEvent {
        NormalisedEvent::new_at(
            crate::now_millis(),
            route,
            correlation_id,
            transaction_id,
            session_id,
            user_id,
            event_type,
            payload,
        )
    }

    /// A new event received at `now_ms` (Unix ms, `crate::now_millis`): its id
    /// (`event_id::new_event_id_at`) and `receivedAt` from that reading; the optional fields
    /// empty, not yet committed (`state_version` 0), not simulated.
    #[allow(clippy::too_many_arguments)]
    pub fn new_at(
        now_ms: i64,
        route: &str,
        correlation_id: String,
        transaction_id: String,
        session_id: String,
        user_id: String,
        event_type: String,
        payload: impl Into<Payload>,
    ) -> NormalisedEvent {
        NormalisedEvent {
            event_id: crate::event_id::new_event_id_at(now_ms),
            traceparent: None,
            route: route.to_string(),
            correlation_id,
            transaction_id,
            received_at: crate::rfc3339_at(now_ms),
            session_id,
            user_id,
            event_type,
            text: None,
            intent: None,
            entities: Map::new(),
            channel: None,
            locale: None,
            url_token: None,
            trace_id: None,
            state_version: 0,
            simulated: false,
            payload: payload.into(),
        }
    }
}

/// A signature that may be used once: the MAC (which covers the timestamp) and the unix time
/// (seconds) after which it would be refused as stale anyway, so the record can go. The
/// store spends it with the event it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentSignature {
    pub mac: [u8; 32],
    pub expires_at: i64,
}

/// The event fields a `json-schema` route's pointers may name; `sessionId` and `userId` are
/// required.
pub const POINTER_FIELDS: [&str; 12] = [
    "sessionId",
    "userId",
    "eventType",
    "text",
    "intent",
    "intentScore",
    "entities",
    "channel",
    "locale",
    "urlToken",
    "traceId",
    "correlationId",
];

/// Whether `c` changes the direction of the text around it (Unicode's explicit bidirectional
/// formatting characters and marks). An identifier holding one can display as another
/// identifier (a "Trojan Source" spoof in logs and consoles), so identifiers refuse them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// An identifier as it may be put in an HTTP header (`X-Correlation-Id` of answers and of
/// deliveries): unchanged when it is printable ASCII without `%`; otherwise every byte
/// outside printable ASCII, and `%`, as `%XX` (its UTF-8 bytes), so a header never carries
/// raw non-ASCII bytes and the original can be recovered by percent-decoding. The body
/// always carries the identifier as it was sent.
pub fn header_safe(id: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
    if id.bytes().all(plain) {
        return std::borrow::Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() * 3);
    for b in id.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// `[privacy] redact`: JSON pointers into the normalised event (SPEC §3.6) whose values are
/// replaced by `"[redacted]"` after the rules ran and before the event is stored or delivered.
/// Identifiers the store and the journey need (`eventId`, `route`, `sessionId`,
/// `correlationId`, `transactionId`, `eventType`, `receivedAt`, `stateVersion`, `simulated`)
/// cannot be redacted. A pointer that matches nothing in an event changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    /// Each pointer as its unescaped reference tokens.
    pointers: Vec<Vec<String>>,
}

/// Top-level fields a pointer may start with.
const REDACTABLE: [&str; 9] = [
    "userId", "text", "intent", "entities", "channel", "locale", "urlToken", "traceId", "payload",
];

impl Redaction {
    /// Parses the pointers; every bad one is reported.
    pub fn compile(pointers: &[String]) -> Result<Redaction, Vec<String>> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for p in pointers {
            match parse_pointer(p) {
                Ok(tokens) => out.push(tokens),
                Err(e) => problems.push(format!("privacy.redact: `{p}`: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Redaction { pointers: out })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pointers.is_empty()
    }

    /// Replaces every value the pointers name in `ev` by `"[redacted]"`.
    pub fn apply(&self, ev: &mut NormalisedEvent) {
        for tokens in &self.pointers {
            let (first, rest) = (tokens[0].as_str(), &tokens[1..]);
            let redact_string = |s: &mut String| *s = REDACTED.to_string();
            let redact_option = |s: &mut Option<String>| {
                if let Some(s) = s {
                    *s = REDACTED.to_string();
                }
            };
            match first {
                "userId" => redact_string(&mut ev.user_id),
                "text" => redact_option(&mut ev.text),
                "channel" => redact_option(&mut ev.channel),
                "locale" => redact_option(&mut ev.locale),
                "urlToken" => redact_option(&mut ev.url_token),
                "traceId" => redact_option(&mut ev.trace_id),
                "intent" => {
                    if let Some(intent) = &mut ev.intent {
                        // The name is the only text in an intent; its score stays.
                        if rest.is_empty() || rest == ["name"] {
                            intent.name = REDACTED.to_string();
                        }
                    }
                }
                "entities" => {
                    if rest.is_empty() {
                        for v in ev.entities.values_mut() {
                            *v = Value::String(REDACTED.to_string());
                        }
                    } else if let Some(v) = ev.entities.get_mut(&rest[0]) {
                        redact_value(v, &rest[1..]);
                    }
                }
                "payload" => redact_value(&mut ev.payload, rest),
                _ => {}
            }
        }
    }
}

/// Replaces the value at `tokens` under `v` (all of `v` when empty), if it exists.
fn redact_value(v: &mut Value, tokens: &[String]) {
    let mut at = v;
    for t in tokens {
        let next = match at {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return,
        }
    }
    *at = Value::String(REDACTED.to_string());
}

/// Why a `[privacy] redact` pointer is refused.
#[derive(Debug, thiserror::Error)]
enum PointerError {
    #[error("a JSON pointer starts with `/`")]
    NoSlash,
    #[error("`~` must be followed by 0 or 1 (RFC 6901)")]
    BadEscape,
    #[error("`{0}` cannot be redacted; pointers start with one of {list}", list = REDACTABLE.join(", "))]
    NotRedactable(String),
    #[error("`{0}` is a string: nothing below it")]
    BelowString(String),
    #[error("only `/intent` or `/intent/name` (the score is not personal)")]
    IntentScore,
}

/// RFC 6901: `/a/b~1c` → `["a", "b/c"]`; the first token must be a redactable field.
fn parse_pointer(p: &str) -> Result<Vec<String>, PointerError> {
    let Some(body) = p.strip_prefix('/') else {
        return Err(PointerError::NoSlash);
    };
    let mut tokens = Vec::new();
    for raw in body.split('/') {
        let mut t = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => t.push('~'),
                    Some('1') => t.push('/'),
                    _ => return Err(PointerError::BadEscape),
                }
            } else {
                t.push(c);
            }
        }
        tokens.push(t);
    }
    if !REDACTABLE.contains(&tokens[0].as_str()) {
        return Err(PointerError::NotRedactable(tokens.swap_remove(0)));
    }
    let scalar = ["userId", "text", "channel", "locale", "urlToken", "traceId"];
    if scalar.contains(&tokens[0].as_str()) && tokens.len() > 1 {
        return Err(PointerError::BelowString(tokens.swap_remove(0)));
    }
    if tokens[0] == "intent" && !(tokens.len() == 1 || tokens[1..] == ["name".to_string()]) {
        return Err(PointerError::IntentScore);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_keeps_plain_ascii_and_percent_encodes_the_rest() {
        assert!(matches!(
            header_safe("order-42 ok"),
            std::borrow::Cow::Borrowed("order-42 ok")
        ));
        assert_eq!(header_safe("café"), "caf%C3%A9");
        assert_eq!(header_safe("50%"), "50%25");
        assert_eq!(header_safe("a\u{202E}b"), "a%E2%80%AEb");
        for id in ["café", "50%", "日本"] {
            assert!(http_header_value_ok(&header_safe(id)), "{id}");
        }
    }

    fn http_header_value_ok(v: &str) -> bool {
        v.bytes().all(|b| (0x20..0x7f).contains(&b))
    }

    fn event() -> NormalisedEvent {
        let mut ev = NormalisedEvent::new(
            "r",
            "c".into(),
            "t".into(),
            "s".into(),
            "u-1".into(),
            "nlu.input".into(),
            serde_json::json!({"input": "my card is 4111", "data": {"phone": "+4412", "keep": 1},
                               "list": ["a", "b"]}),
        );
        ev.text = Some("my card is 4111".into());
        ev.intent = Some(Intent {
            name: "pay".into(),
            score: 0.9,
        });
        ev.entities.insert("card".into(), serde_json::json!("4111"));
        ev.entities
            .insert("orderId".into(), serde_json::json!("A-1"));
        ev
    }

    #[test]
    fn the_hand_written_json_is_what_serde_json_writes() {
        let mut ev = event();
        assert_eq!(ev.to_json(), serde_json::to_string(&ev).expect("json"));
        // Every optional field set, strings that need escaping, a score JSON cannot hold.
        ev.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        ev.channel = Some("voice\u{1}".into());
        ev.locale = Some("de-DE".into());
        ev.url_token = Some("tok\"en".into());
        ev.trace_id = Some("trace\\id".into());
        ev.user_id = "ü\n😀".into();
        ev.state_version = u64::MAX;
        ev.simulated = true;
        ev.intent = Some(Intent {
            name: "x".into(),
            score: f64::NAN,
        });
        ev.payload = serde_json::json!([null, -3, 2.5e-10, {"k\t": []}]).into();
        assert_eq!(ev.to_json(), serde_json::to_string(&ev).expect("json"));
        // Every optional field unset.
        ev.traceparent = None;
        ev.text = None;
        ev.intent = None;
        ev.channel = None;
        ev.locale = None;
        ev.url_token = None;
        ev.trace_id = None;
        ev.entities.clear();
        ev.payload = serde_json::Value::Null.into();
        assert_eq!(ev.to_json(), serde_json::to_string(&ev).expect("json"));
    }

    /// The request's thread writes the JSON before the store decides the version; the
    /// digits put in afterwards give what serde_json writes for the event with that version.
    #[test]
    fn json_written_before_the_version_is_decided_is_the_events_json_with_it() {
        let mut ev = event();
        for simulated in [false, true] {
            ev.simulated = simulated;
            ev.state_version = 0;
            let unversioned = ev.to_json_unversioned();
            for version in [1, 9, 10, 4_294_967_296, u64::MAX] {
                ev.state_version = version;
                assert_eq!(
                    unversioned.clone().versioned(version),
                    serde_json::to_string(&ev).expect("json"),
                    "version {version}, simulated {simulated}"
                );
            }
        }
    }

    #[test]
    fn redaction_replaces_what_the_pointers_name_and_nothing_else() {
        let pointers = [
            "/text",
            "/payload/input",
            "/payload/data/phone",
            "/payload/list/1",
            "/entities/card",
            "/payload/absent/deeper",
        ]
        .map(String::from);
        let r = Redaction::compile(&pointers).expect("valid");
        let mut ev = event();
        r.apply(&mut ev);
        assert_eq!(ev.text.as_deref(), Some(REDACTED));
        assert_eq!(ev.payload["input"], REDACTED);
        assert_eq!(ev.payload["data"]["phone"], REDACTED);
        assert_eq!(ev.payload["data"]["keep"], 1);
        assert_eq!(ev.payload["list"], serde_json::json!(["a", REDACTED]));
        assert_eq!(ev.entities["card"], REDACTED);
        assert_eq!(ev.entities["orderId"], "A-1");
        assert_eq!(ev.user_id, "u-1");
        assert_eq!(ev.session_id, "s");
        assert!(ev.payload.get("absent").is_none(), "nothing is created");
    }

    #[test]
    fn a_payload_known_by_its_text_is_copied_parsed_on_demand_and_forgotten_when_changed() {
        let mut ev = event();
        let written = ev.to_json();
        let text = serde_json::to_string(&*ev.payload).expect("json");
        // The text alone: the same stored bytes, and the tree when asked for.
        ev.payload = Payload::from_canonical_text(text.clone().into());
        assert_eq!(ev.to_json(), written, "the same bytes either way");
        assert_eq!(ev.payload["data"]["phone"], "+4412");
        assert_eq!(ev.to_json(), written);
        // The tree and a text that is not the tree's: the text is what is copied.
        ev.payload.set_canonical_text(r#"{"from":"text"}"#.into());
        assert!(ev.to_json().ends_with(r#""payload":{"from":"text"}}"#));
        // Changing the tree (redaction) forgets the text.
        let r = Redaction::compile(&["/payload/input".to_string()]).expect("valid");
        r.apply(&mut ev);
        assert_eq!(ev.payload.text(), None);
        let stored: serde_json::Value = serde_json::from_str(&ev.to_json()).expect("json");
        assert_eq!(stored["payload"]["input"], REDACTED);
        assert_eq!(stored["payload"]["data"]["keep"], 1);
        // Redacting a payload known only by its text.
        ev.payload = Payload::from_canonical_text(text.into());
        r.apply(&mut ev);
        assert_eq!(ev.payload["input"], REDACTED);
        assert_eq!(ev.to_json(), serde_json::to_string(&ev).expect("json"));
    }

    #[test]
    fn redaction_refuses_identifiers_and_bad_pointers_all_at_once() {
        let bad = [
            "text",
            "/sessionId",
            "/text/x",
            "/intent/score",
            "/payload/a~2",
        ]
        .map(String::from);
        let problems = Redaction::compile(&bad).expect_err("all bad");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            problems[1].contains("`sessionId` cannot be redacted"),
            "{problems:?}"
        );
        let ok = Redaction::compile(&["/payload/a~1b~0c".to_string()]).expect("escapes");
        let mut ev = event();
        ev.payload = serde_json::json!({"a/b~c": "x"}).into();
        ok.apply(&mut ev);
        assert_eq!(ev.payload["a/b~c"], REDACTED);
    }

    #[test]
    fn bidi_controls_are_recognised_and_ordinary_letters_are_not() {
        for c in ['\u{202E}', '\u{2066}', '\u{200F}', '\u{061C}'] {
            assert!(is_bidi_control(c), "{c:?}");
        }
        for c in ['a', 'é', 'ש', '\u{200B}'] {
            assert!(!is_bidi_control(c), "{c:?}");
        }
    }
}
