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
