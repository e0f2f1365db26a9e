//! `[[route]]`: paths, payload kinds, rules, extracts, sinks, `respond`, rate limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::AuthConfig;
use super::duration_str;

/// One `[[route]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    pub payload: PayloadSpec,
    pub auth: AuthConfig,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub extract: BTreeMap<String, String>,
    #[serde(default)]
    pub sinks: Vec<String>,
    /// Answer with a backend's result, inside the deadline (SPEC §5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondConfig>,
    /// Requests over it answer 429 `rate_limited` (SPEC §12.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRateLimit>,
    /// Largest answer; unset: 65536 for Cognigy payload kinds, else
    /// `limits.max_response_bytes`. A `respond` answer over it answers 202 and goes to
    /// `on_late`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
}

/// A route's `rate_limit = { per, max, by }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    #[serde(with = "duration_str")]
    pub per: Duration,
    pub max: u32,
    /// One budget per client address (default) or one for the whole route.
    #[serde(default)]
    pub by: RateBy,
}

impl RouteRateLimit {
    pub fn limit(&self) -> crate::rate::RateLimit {
        crate::rate::RateLimit {
            per: self.per,
            max: self.max,
        }
    }
}

/// What a route's rate limit counts separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateBy {
    /// Each client IP address (the peer of the TCP connection) has its own budget.
    #[default]
    Ip,
    /// All clients share the route's budget.
    Route,
}

/// A route's `respond` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// The `http` sink whose answer becomes the response's `data`.
    pub upstream: String,
    /// How long the request waits for it before answering 202.
    #[serde(with = "duration_str")]
    pub within: Duration,
    /// The sink that gets a late answer (typically a `cognigy` sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_late: Option<String>,
}

/// `payload = "nlu"` or `payload = { kind = "nlu" }`; `json-schema` needs the table form
/// with `schema` and `pointers`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PayloadSpec {
    Name(PayloadKind),
    Table(PayloadTable),
}

/// The table form of a route's `payload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayloadTable {
    pub kind: PayloadKind,
    /// json-schema: the schema file (draft 2020-12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// json-schema: event field → JSON pointer into the body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pointers: BTreeMap<String, String>,
}

// A string or a table, with the table's own error messages (an untagged enum would only say
// that nothing matched).
impl<'de> Deserialize<'de> for PayloadSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PayloadSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a payload kind name or a { kind = … } table")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PayloadSpec, E> {
                PayloadKind::deserialize(serde::de::value::StrDeserializer::new(v))
                    .map(PayloadSpec::Name)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<PayloadSpec, A::Error> {
                PayloadTable::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(PayloadSpec::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl PayloadSpec {
    pub fn kind(&self) -> PayloadKind {
        match self {
            PayloadSpec::Name(k) => *k,
            PayloadSpec::Table(t) => t.kind,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadKind {
    #[serde(rename = "flow-event")]
    FlowEvent,
    #[serde(rename = "nlu")]
    Nlu,
    /// What a Cognigy HTTP Request node sends (JSON or form).
    #[serde(rename = "cognigy-input")]
    CognigyInput,
    /// What a Cognigy Webhook Endpoint POSTs.
    #[serde(rename = "webhook-output")]
    WebhookOutput,
    /// A Voice Gateway (jambonz) call-status webhook.
    #[serde(rename = "vg-call-status")]
    VgCallStatus,
    /// A user schema plus pointers.
    #[serde(rename = "json-schema")]
    JsonSchema,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub expr: String,
    pub message: String,
}
