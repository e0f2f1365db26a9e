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

/// The normalised event (SPEC §3.6).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NormalisedEvent {
    pub event_id: String,
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
    pub payload: Value,
}

impl NormalisedEvent {
    /// A new event with a fresh ULID and receive time; the optional fields empty, not yet
    /// committed (`state_version` 0), not simulated.
    pub fn new(
        route: &str,
        correlation_id: String,
        transaction_id: String,
        session_id: String,
        user_id: String,
        event_type: String,
        payload: Value,
    ) -> NormalisedEvent {
        NormalisedEvent {
            event_id: ulid::Ulid::new().to_string(),
            route: route.to_string(),
            correlation_id,
            transaction_id,
            received_at: crate::now_rfc3339(),
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
            payload,
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
