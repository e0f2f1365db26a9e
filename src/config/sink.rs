//! `[sink.NAME]` tables: where accepted events go.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration_str;
use crate::secret::{SecretRef, SecretUrl};

/// Sink kinds (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Http,
    Nats,
    Amqp,
    Redis,
    Cognigy,
    File,
    /// An `[alerts.target.NAME]` (built by `crate::alerts`, never written as a sink table).
    #[serde(skip)]
    Alert,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Http => "http",
            SinkKind::Nats => "nats",
            SinkKind::Amqp => "amqp",
            SinkKind::Redis => "redis",
            SinkKind::Cognigy => "cognigy",
            SinkKind::File => "file",
            SinkKind::Alert => "alert",
        }
    }
}

/// One `[sink.NAME]` table as written. Keys that do not apply to the kind are reported by
/// `delivery::spec::SinkSpec::check`, which turns it into what the sink is built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// Time one attempt may take.
    #[serde(default = "default_sink_timeout", with = "duration_str")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry: super::RetryPolicy,
    #[serde(default)]
    pub breaker: super::BreakerConfig,
    /// Attempts in flight at once.
    #[serde(default = "default_sink_concurrency")]
    pub concurrency: usize,
    /// One event in flight per session, in acceptance order.
    #[serde(default)]
    pub ordered: bool,
    /// At most `max` sends per `per`; sends over the limit wait without using an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::rate::RateLimit>,
    /// http: target URL; nats/amqp/redis: broker URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// http: secret for the outgoing `X-Cognihook-Signature` (`env:`/`file:`/literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// file: the JSON-lines file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// nats: subject template (`{route}`, `{eventType}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// amqp: exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// amqp: routing key template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// redis: stream key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// redis: approximate MAXLEN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<u64>,
    /// cognigy: `inject` (into the Flow) or `notify` (straight to the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CognigyMode>,
    /// cognigy: the Endpoint base URL; calls go to `{endpoint_url}/{mode}/{URLToken}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<SecretUrl>,
    /// cognigy: `"v2"` for the v2.0 API (`COGNIGY_API_BASE_URL`, `X-API-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// cognigy: CEL over the event for the message text (default: no text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// cognigy: CEL over the event for `data` (default: the event without its raw payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// cognigy notify: CEL over the event for `attachments` (a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<String>,
    /// cognigy: a delivery older than this (from acceptance) is dead-lettered as `expired`
    /// instead of sent into a session Cognigy has closed.
    #[serde(
        default,
        with = "super::opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// cognigy: extra request headers; values are secret references (e.g. Cognigy's
    /// `X-Webhook-Key = "env:K"` for endpoints that require it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, SecretRef>,
    /// http: send due events together, as one JSON array per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
}

/// `batch = { max = 50 }` on an `http` sink: events already due go out together, up to `max`
/// per request and `max_bytes` of array; no event waits for a batch to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Events per request at most (1 sends arrays of one).
    pub max: usize,
    /// The array's size in bytes at most; an event larger than this goes alone.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
}

fn default_batch_bytes() -> usize {
    1 << 20
}

/// What a `cognigy` sink does with an event (cognigy/FACTS.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CognigyMode {
    Inject,
    Notify,
}

impl CognigyMode {
    pub fn name(self) -> &'static str {
        match self {
            CognigyMode::Inject => "inject",
            CognigyMode::Notify => "notify",
        }
    }
}

fn default_sink_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_sink_concurrency() -> usize {
    8
}
