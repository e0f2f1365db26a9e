//! Typed configuration: built-in defaults → TOML file → environment (SPEC §2).
//!
//! Invariants: unknown keys are errors; every problem found is reported at once
//! ([`ConfigErrors`] holds them all); secrets are only *references* here (`env:NAME`,
//! `file:PATH` or a literal) and are resolved when routes are built (`ingest::Routes::build`),
//! so commands that only need the store (`events show`) work without them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[sink.NAME]` tables.
    #[serde(rename = "sink", skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, SinkConfig>,
    pub delivery: DeliveryConfig,
    pub privacy: PrivacyConfig,
}

/// `[privacy]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// JSON pointers into the normalised event replaced by `"[redacted]"` before storage and
    /// delivery (see `event::Redaction`).
    pub redact: Vec<String>,
    /// Secret reference to the data key(s), base64 of 32 bytes each, comma-separated for
    /// rotation (the first seals, all open): event bodies are sealed at rest (`seal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt_key: Option<String>,
}

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
        }
    }
}

/// One `[sink.NAME]` table. Keys that do not apply to the kind are reported by `validate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// Time one attempt may take.
    #[serde(default = "default_sink_timeout", with = "duration_str")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry: crate::delivery::retry::RetryPolicy,
    #[serde(default)]
    pub breaker: crate::delivery::breaker::BreakerConfig,
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
    pub url: Option<String>,
    /// http: secret for the outgoing `X-Cognihook-Signature` (`env:`/`file:`/literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
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
    pub endpoint_url: Option<String>,
    /// cognigy: `"v2"` for the v2.0 API (`COGNIGY_API_BASE_URL`, `X-API-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// cognigy: CEL over the event for the message text (default: no text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// cognigy: CEL over the event for `data` (default: the event without its raw payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
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

/// `[delivery]`: the delivery workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Run the delivery workers in `serve`.
    pub enabled: bool,
    /// Poll for due rows at least this often (new events wake the workers at once).
    #[serde(with = "duration_str")]
    pub poll_interval: Duration,
    /// Niceness (0..=19) of the delivery thread. Above 0, the kernel favours ingest when both
    /// want the CPU: answers to Cognigy stay fast under load and deliveries catch up after.
    pub nice: u8,
    /// A claim's lease is two sends' timeouts plus this; after a crash, another worker takes
    /// the row over once the lease has run out.
    #[serde(with = "duration_str")]
    pub lease_margin: Duration,
    /// Delivery holds back while ingest is saturated.
    pub busy: BusyConfig,
}

/// `[delivery] busy = { in_flight, interval, share }`: while at least `in_flight` webhook
/// requests are being handled at once (seen within the last `interval`), ingest is saturated
/// and the workers start, per `interval`, sends for `share` of the rows accepted in the
/// interval before (and at least one round of every sink's `concurrency`): the answers
/// Cognigy waits for keep most of the CPU, deliveries keep going, and the backlog drains at
/// full speed once the load eases. `interval = "0s"` turns this off (see `delivery::pace`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusyConfig {
    pub in_flight: usize,
    #[serde(with = "duration_str")]
    pub interval: Duration,
    pub share: f64,
}

impl Default for BusyConfig {
    fn default() -> Self {
        Self {
            in_flight: 16,
            interval: Duration::from_millis(100),
            share: 0.5,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            nice: 10,
            lease_margin: Duration::from_secs(30),
            busy: BusyConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Public listener.
    pub listen: SocketAddr,
    /// Separate listener for `/metrics`, `/stats`, `/admin/*`; unset = public listener.
    pub admin_listen: Option<SocketAddr>,
    /// Adds `POST /simulate` and `POST /simulate/<route path>` (SPEC §10).
    pub simulator: bool,
    /// Allows the simulator on a non-loopback listener.
    pub simulator_allow_remote: bool,
    /// Time allowed to read a request's head, from the connection's start or the request's
    /// first byte; past it the connection is closed.
    #[serde(with = "duration_str")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request this long after its last answer is closed.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Open connections per listener; a connection over it is closed at once.
    pub max_connections: usize,
    /// Time allowed to drain in-flight requests on shutdown.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Bearer token for `/admin/*` (usually from `COGNIHOOK_ADMIN_TOKEN`); unset = admin disabled.
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    /// From request start to response.
    #[serde(with = "duration_str")]
    pub deadline: Duration,
    /// Time allowed to receive the body (answers 408); never more than `deadline`.
    #[serde(with = "duration_str")]
    pub body_read_timeout: Duration,
    /// Webhook requests admitted and not yet answered; one more answers 503 at once.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit (default; a 2xx means the event is on disk).
    Full,
    /// WAL without fsync per commit: an OS crash may lose the last commits.
    Normal,
    /// No fsync at all (benchmarks only).
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite://PATH`; unset = `DATA_DIR/cognihook.db`.
    pub url: Option<String>,
    /// Directory of the embedded store (from `COGNIHOOK_DATA_DIR`).
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    #[serde(with = "duration_str")]
    pub idempotency_window: Duration,
    #[serde(with = "duration_str")]
    pub session_ttl: Duration,
    #[serde(with = "duration_str")]
    pub retention: Duration,
    /// Most acceptances committed in one transaction.
    pub max_batch: usize,
    /// Acceptances waiting for the writer before ingest answers 503 `unavailable`.
    pub queue_depth: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// File to append audit lines to; unset = stdout.
    pub path: Option<PathBuf>,
}

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

    fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        let (schema, pointers) = match self {
            PayloadSpec::Name(_) => (None, None),
            PayloadSpec::Table(t) => (t.schema.as_ref(), Some(&t.pointers)),
        };
        let pointers = pointers.filter(|m| !m.is_empty());
        if self.kind() != PayloadKind::JsonSchema {
            if schema.is_some() || pointers.is_some() {
                p.push(format!(
                    "{at}: payload.schema and payload.pointers apply only to kind json-schema"
                ));
            }
            return p;
        }
        if schema.is_none() {
            p.push(format!(
                "{at}: payload kind json-schema needs `schema` (a file)"
            ));
        }
        let pointers = pointers.cloned().unwrap_or_default();
        for required in ["sessionId", "userId"] {
            if !pointers.contains_key(required) {
                p.push(format!(
                    "{at}: payload kind json-schema needs pointers.{required}"
                ));
            }
        }
        for (field, pointer) in &pointers {
            if !crate::event::POINTER_FIELDS.contains(&field.as_str()) {
                p.push(format!(
                    "{at}: payload.pointers.{field} is not an event field (one of {})",
                    crate::event::POINTER_FIELDS.join(", ")
                ));
            }
            if !pointer.is_empty() && !pointer.starts_with('/') {
                p.push(format!(
                    "{at}: payload.pointers.{field} = `{pointer}` is not a JSON pointer (starts with `/`)"
                ));
            }
        }
        p
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
    /// A user schema plus pointers.
    #[serde(rename = "json-schema")]
    JsonSchema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthScheme {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha256-timestamped")]
    HmacSha256Timestamped,
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    #[serde(rename = "jambonz")]
    Jambonz,
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "api-key")]
    ApiKey,
    #[serde(rename = "none")]
    None,
}

impl AuthScheme {
    pub fn name(self) -> &'static str {
        match self {
            AuthScheme::HmacSha256 => "hmac-sha256",
            AuthScheme::HmacSha256Timestamped => "hmac-sha256-timestamped",
            AuthScheme::StandardWebhooks => "standard-webhooks",
            AuthScheme::Jambonz => "jambonz",
            AuthScheme::Basic => "basic",
            AuthScheme::ApiKey => "api-key",
            AuthScheme::None => "none",
        }
    }
}

/// A route's `auth` table (SPEC §4). Which keys apply depends on the scheme; `validate`
/// names any that do not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    pub scheme: AuthScheme,
    /// Secret references: `env:NAME` (comma-separated values allowed), `file:PATH` (one per
    /// line) or a literal. hmac-sha256, hmac-sha256-timestamped, standard-webhooks, jambonz.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Headers that may carry the signature (hmac-sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// The header carrying `t=…,v1=…` (hmac-sha256-timestamped; default X-Cognigy-Signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// How far a signed timestamp may be from now (timestamped schemes; default 5m).
    #[serde(
        default,
        with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub tolerance: Option<Duration>,
    /// basic: the user name Cognigy sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// basic: a secret reference (several values allowed during rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// api-key: secret references of the accepted keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl AuthConfig {
    /// An `auth` table with only the scheme and secrets set.
    pub fn with_secrets(scheme: AuthScheme, secrets: Vec<String>) -> AuthConfig {
        AuthConfig {
            scheme,
            secrets,
            headers: None,
            header: None,
            tolerance: None,
            username: None,
            password: None,
            keys: Vec::new(),
        }
    }

    /// Problems with the keys of this table for its scheme.
    fn validate(&self, at: &str, allow_unauthenticated: bool) -> Vec<String> {
        let scheme = self.scheme.name();
        let mut p = Vec::new();
        let needs_secrets = matches!(
            self.scheme,
            AuthScheme::HmacSha256
                | AuthScheme::HmacSha256Timestamped
                | AuthScheme::StandardWebhooks
                | AuthScheme::Jambonz
        );
        if needs_secrets && self.secrets.is_empty() {
            p.push(format!("{at}: auth scheme {scheme} needs `secrets`"));
        }
        let mut not_for = |key: &str, present: bool| {
            if present {
                p.push(format!(
                    "{at}: auth.{key} does not apply to scheme {scheme}"
                ));
            }
        };
        not_for("secrets", !needs_secrets && !self.secrets.is_empty());
        not_for(
            "headers",
            self.scheme != AuthScheme::HmacSha256 && self.headers.is_some(),
        );
        not_for(
            "header",
            self.scheme != AuthScheme::HmacSha256Timestamped && self.header.is_some(),
        );
        not_for(
            "tolerance",
            !matches!(
                self.scheme,
                AuthScheme::HmacSha256Timestamped
                    | AuthScheme::StandardWebhooks
                    | AuthScheme::Jambonz
            ) && self.tolerance.is_some(),
        );
        not_for(
            "username",
            self.scheme != AuthScheme::Basic && self.username.is_some(),
        );
        not_for(
            "password",
            self.scheme != AuthScheme::Basic && self.password.is_some(),
        );
        not_for(
            "keys",
            self.scheme != AuthScheme::ApiKey && !self.keys.is_empty(),
        );
        let header_ok = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        if let Some(h) = &self.headers {
            if h.is_empty() {
                p.push(format!("{at}: auth.headers must not be empty"));
            }
            for name in h.iter().filter(|n| !header_ok(n)) {
                p.push(format!("{at}: auth.headers: `{name}` is not a header name"));
            }
        }
        if let Some(name) = self.header.as_deref().filter(|n| !header_ok(n)) {
            p.push(format!("{at}: auth.header: `{name}` is not a header name"));
        }
        if self.tolerance.is_some_and(|t| t.is_zero()) {
            p.push(format!("{at}: auth.tolerance must be greater than 0"));
        }
        match self.scheme {
            AuthScheme::Basic => {
                if self
                    .username
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || u.contains(':'))
                {
                    p.push(format!(
                        "{at}: auth scheme basic needs a `username` (not empty, no `:`)"
                    ));
                }
                if self.password.is_none() {
                    p.push(format!("{at}: auth scheme basic needs a `password`"));
                }
            }
            AuthScheme::ApiKey if self.keys.is_empty() => {
                p.push(format!("{at}: auth scheme api-key needs `keys`"));
            }
            AuthScheme::None if !allow_unauthenticated => {
                p.push(format!(
                    "{at}: auth scheme `none` requires allow_unauthenticated = true on the route"
                ));
            }
            _ => {}
        }
        p
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub expr: String,
    pub message: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: None,
            simulator: false,
            simulator_allow_remote: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
            admin_token: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_response_bytes: 1024 * 1024,
            deadline: Duration::from_secs(7),
            body_read_timeout: Duration::from_secs(10),
            max_in_flight: 4096,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("./data"),
            sync: SyncMode::Full,
            idempotency_window: Duration::from_secs(24 * 3600),
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_batch: 256,
            queue_depth: 8192,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            limits: LimitsConfig::default(),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            privacy: PrivacyConfig::default(),
            routes: default_routes(),
            sinks: BTreeMap::new(),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// The two seed routes of SPEC §3.
pub fn default_routes() -> Vec<RouteConfig> {
    let auth = AuthConfig::with_secrets(
        AuthScheme::HmacSha256,
        vec!["env:COGNIGY_WEBHOOK_SECRET".into()],
    );
    vec![
        RouteConfig {
            name: "flow-events".into(),
            path: "/webhook".into(),
            payload: PayloadSpec::Name(PayloadKind::FlowEvent),
            auth: auth.clone(),
            allow_unauthenticated: false,
            rules: vec![],
            extract: BTreeMap::new(),
            sinks: vec![],
            respond: None,
            rate_limit: None,
        },
        RouteConfig {
            name: "nlu-orders".into(),
            path: "/webhook/cognigy".into(),
            payload: PayloadSpec::Name(PayloadKind::Nlu),
            auth,
            allow_unauthenticated: false,
            rules: vec![
                RuleConfig {
                    expr: "event.intent.score >= 0.75".into(),
                    message: "Intent confidence below business threshold".into(),
                },
                RuleConfig {
                    expr: "has(event.entities.orderId)".into(),
                    message: "Required entity orderId is missing".into(),
                },
            ],
            extract: BTreeMap::from([("orderId".into(), "event.entities.orderId".into())]),
            sinks: vec![],
            respond: None,
            rate_limit: None,
        },
    ]
}

/// Where the environment layer reads from; a map so tests need not touch the process env.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl Config {
    /// Loads defaults → optional TOML file → environment, then validates.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
        match Self::load_report(file, env) {
            (Some(c), p) if p.is_empty() => Ok(c),
            (_, p) => Err(ConfigErrors(p)),
        }
    }

    /// Like [`Config::load`], but returns the configuration as far as it could be read
    /// together with every problem found, so callers can add their own checks to the list.
    pub fn load_report(file: Option<&Path>, env: &dyn EnvSource) -> (Option<Config>, Vec<String>) {
        let mut problems = Vec::new();
        let mut config = match file {
            Some(path) => {
                let parsed = std::fs::read_to_string(path)
                    .map_err(|e| vec![e.to_string()])
                    .and_then(|text| Self::parse_toml(&text));
                match parsed {
                    Ok((c, unknown)) => {
                        problems.extend(
                            unknown
                                .into_iter()
                                .map(|u| format!("{}: {u}", path.display())),
                        );
                        c
                    }
                    Err(p) => {
                        let p = p
                            .into_iter()
                            .map(|m| format!("{}: {m}", path.display()))
                            .collect();
                        return (None, p);
                    }
                }
            }
            None => Config::default(),
        };
        config.apply_env(env, &mut problems);
        problems.extend(config.validate());
        (Some(config), problems)
    }

    /// Parses a TOML document; unknown keys are errors, all reported at once.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        match Self::parse_toml(text) {
            Ok((c, unknown)) if unknown.is_empty() => Ok(c),
            Ok((_, unknown)) => Err(ConfigErrors(unknown)),
            Err(p) => Err(ConfigErrors(p)),
        }
    }

    /// Parses a TOML document, returning the config and every unknown key. A file without
    /// `[[route]]` keeps the built-in routes (the struct's serde default).
    fn parse_toml(text: &str) -> Result<(Config, Vec<String>), Vec<String>> {
        let de = toml::Deserializer::parse(text).map_err(|e| vec![e.to_string()])?;
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> = serde_ignored::deserialize(de, |path| {
            unknown.push(format!("unknown key `{path}`"));
        });
        match parsed {
            Ok(c) => Ok((c, unknown)),
            Err(e) => {
                unknown.push(e.to_string().trim_end().to_string());
                Err(unknown)
            }
        }
    }

    fn apply_env(&mut self, env: &dyn EnvSource, problems: &mut Vec<String>) {
        if let Some(v) = env.get("COGNIHOOK_LISTEN") {
            match v.parse() {
                Ok(a) => self.server.listen = a,
                Err(e) => problems.push(format!("COGNIHOOK_LISTEN `{v}`: {e}")),
            }
        }
        if let Some(v) = env.get("COGNIHOOK_ADMIN_LISTEN") {
            match v.parse() {
                Ok(a) => self.server.admin_listen = Some(a),
                Err(e) => problems.push(format!("COGNIHOOK_ADMIN_LISTEN `{v}`: {e}")),
            }
        }
        if let Some(v) = env.get("COGNIHOOK_DATA_DIR") {
            self.store.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("COGNIHOOK_DATABASE_URL") {
            self.store.url = Some(v);
        }
        if let Some(v) = env.get("COGNIHOOK_ADMIN_TOKEN") {
            self.server.admin_token = Some(v);
        }
    }

    /// Semantic checks; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(mut e) = crate::event::Redaction::compile(&self.privacy.redact) {
            p.append(&mut e);
        }
        if self.limits.max_body_bytes == 0 {
            p.push("limits.max_body_bytes must be greater than 0".into());
        }
        if self.limits.max_response_bytes == 0 {
            p.push("limits.max_response_bytes must be greater than 0".into());
        }
        if self.limits.deadline.is_zero() {
            p.push("limits.deadline must be greater than 0".into());
        }
        if self.limits.max_in_flight == 0 {
            p.push("limits.max_in_flight must be at least 1".into());
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections must be at least 1".into());
        }
        if self.server.header_read_timeout.is_zero() {
            p.push("server.header_read_timeout must be greater than 0".into());
        }
        if self.server.idle_timeout.is_zero() {
            p.push("server.idle_timeout must be greater than 0".into());
        }
        if self.store.max_batch == 0 {
            p.push("store.max_batch must be greater than 0".into());
        }
        if self.delivery.nice > 19 {
            p.push(format!(
                "delivery.nice must be 0..=19, not {}",
                self.delivery.nice
            ));
        }
        if self.store.queue_depth == 0 {
            p.push("store.queue_depth must be greater than 0".into());
        }
        let share = self.delivery.busy.share;
        if !(share > 0.0 && share <= 1.0) {
            p.push(format!(
                "delivery.busy.share must be more than 0 and at most 1, not {share}"
            ));
        }
        if let Err(e) = self.store.backend() {
            p.push(e);
        }
        if self.server.simulator
            && !self.server.simulator_allow_remote
            && !self.server.listen.ip().is_loopback()
        {
            p.push(format!(
                "server.simulator is on but the listener {} is not a loopback address; \
                 listen on 127.0.0.1 or set server.simulator_allow_remote = true",
                self.server.listen
            ));
        }
        if self.routes.is_empty() {
            p.push("no routes: define at least one [[route]]".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut paths = std::collections::HashSet::new();
        for r in &self.routes {
            let at = format!("route `{}`", r.name);
            if r.name.is_empty() {
                p.push("a route has an empty name".into());
            }
            if !names.insert(r.name.as_str()) {
                p.push(format!("{at}: name used by more than one route"));
            }
            if !r.path.starts_with('/') {
                p.push(format!("{at}: path `{}` must start with `/`", r.path));
            } else if r.path.contains(['{', '}', '*']) {
                p.push(format!("{at}: path `{}` must be literal", r.path));
            }
            if !paths.insert(r.path.as_str()) {
                p.push(format!(
                    "{at}: path `{}` used by more than one route",
                    r.path
                ));
            }
            if matches!(
                r.path.as_str(),
                "/healthz" | "/readyz" | "/metrics" | "/stats"
            ) || r.path.starts_with("/admin")
                || r.path.starts_with("/simulate")
            {
                p.push(format!("{at}: path `{}` is reserved", r.path));
            }
            p.extend(r.auth.validate(&at, r.allow_unauthenticated));
            p.extend(r.payload.validate(&at));
            if let Some(l) = r.rate_limit {
                if l.max == 0 || l.per.is_zero() {
                    p.push(format!("{at}: rate_limit needs max >= 1 and per > 0"));
                }
            }
            if let Some(resp) = &r.respond {
                match self.sinks.get(&resp.upstream) {
                    None => p.push(format!(
                        "{at}: respond.upstream `{}` is not defined (no [sink.{}] table)",
                        resp.upstream, resp.upstream
                    )),
                    Some(s) if s.kind != SinkKind::Http => p.push(format!(
                        "{at}: respond.upstream `{}` must be an http sink, not {}",
                        resp.upstream,
                        s.kind.name()
                    )),
                    Some(_) => {}
                }
                if r.sinks.contains(&resp.upstream) {
                    p.push(format!(
                        "{at}: respond.upstream `{}` is also in `sinks` (it would be called twice)",
                        resp.upstream
                    ));
                }
                if let Some(late) = &resp.on_late {
                    if !self.sinks.contains_key(late) {
                        p.push(format!(
                            "{at}: respond.on_late `{late}` is not defined (no [sink.{late}] table)"
                        ));
                    }
                    if late == &resp.upstream {
                        p.push(format!(
                            "{at}: respond.on_late must not be the upstream itself"
                        ));
                    }
                    if r.sinks.contains(late) {
                        p.push(format!(
                            "{at}: respond.on_late `{late}` is also in `sinks` (an event has one row per sink)"
                        ));
                    }
                }
                if resp.within.is_zero() || resp.within >= self.limits.deadline {
                    p.push(format!(
                        "{at}: respond.within must be greater than 0 and less than limits.deadline ({})",
                        humantime::format_duration(self.limits.deadline)
                    ));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for s in &r.sinks {
                if !self.sinks.contains_key(s) {
                    p.push(format!(
                        "{at}: sink `{s}` is not defined (no [sink.{s}] table)"
                    ));
                }
                if !seen.insert(s) {
                    p.push(format!("{at}: sink `{s}` listed twice"));
                }
            }
        }
        for (name, s) in &self.sinks {
            p.extend(s.validate(name));
        }
        p
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if c.server.admin_token.is_some() {
            c.server.admin_token = Some("********".into());
        }
        let mask = |s: &mut String| {
            if !(s.starts_with("env:") || s.starts_with("file:")) {
                *s = "********".into();
            }
        };
        for r in &mut c.routes {
            r.auth.secrets.iter_mut().for_each(mask);
            r.auth.keys.iter_mut().for_each(mask);
            r.auth.password.iter_mut().for_each(mask);
        }
        // Database, broker and sink URLs may carry credentials (postgres://user:pass@…,
        // ?token=…).
        let mask_url = |u: &mut String| *u = crate::secret::mask_url(u);
        c.store.url.iter_mut().for_each(mask_url);
        for s in c.sinks.values_mut() {
            s.secret.iter_mut().for_each(mask);
            s.url.iter_mut().for_each(mask_url);
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl SinkConfig {
    /// Problems with this sink's table.
    pub fn validate(&self, name: &str) -> Vec<String> {
        let at = format!("sink `{name}` ({})", self.kind.name());
        let mut p = Vec::new();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.push(format!(
                "sink `{name}`: names use letters, digits, `-` and `_`"
            ));
        }
        if self.concurrency == 0 {
            p.push(format!("{at}: concurrency must be at least 1"));
        }
        if self.timeout.is_zero() {
            p.push(format!("{at}: timeout must be greater than 0"));
        }
        if self.retry.max_attempts == 0 {
            p.push(format!("{at}: retry.max_attempts must be at least 1"));
        }
        if self.retry.base_delay > self.retry.max_delay {
            p.push(format!(
                "{at}: retry.base_delay is greater than retry.max_delay"
            ));
        }
        if let Some(r) = self.rate_limit {
            if r.max == 0 || r.per.is_zero() {
                p.push(format!("{at}: rate_limit needs max >= 1 and per > 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_ratio) {
            p.push(format!(
                "{at}: breaker.failure_ratio must be between 0 and 1"
            ));
        }
        let given: [(&str, bool); 13] = [
            ("mode", self.mode.is_some()),
            ("endpoint_url", self.endpoint_url.is_some()),
            ("api", self.api.is_some()),
            ("text", self.text.is_some()),
            ("data", self.data.is_some()),
            ("url", self.url.is_some()),
            ("secret", self.secret.is_some()),
            ("path", self.path.is_some()),
            ("subject", self.subject.is_some()),
            ("exchange", self.exchange.is_some()),
            ("routing_key", self.routing_key.is_some()),
            ("stream", self.stream.is_some()),
            ("maxlen", self.maxlen.is_some()),
        ];
        let (required, optional): (&[&str], &[&str]) = match self.kind {
            SinkKind::Http => (&["url"], &["secret"]),
            SinkKind::File => (&["path"], &[]),
            SinkKind::Nats => (&["url", "subject"], &[]),
            SinkKind::Amqp => (&["url", "exchange"], &["routing_key"]),
            SinkKind::Redis => (&["url", "stream"], &["maxlen"]),
            SinkKind::Cognigy => (
                &["mode"],
                &["endpoint_url", "api", "secret", "text", "data"],
            ),
        };
        for (key, present) in given {
            if present && !required.contains(&key) && !optional.contains(&key) {
                p.push(format!("{at}: key `{key}` does not apply to this kind"));
            }
        }
        for key in required {
            if !given.iter().any(|(k, present)| k == key && *present) {
                p.push(format!("{at}: `{key}` is required"));
            }
        }
        if let (SinkKind::Http, Some(u)) = (self.kind, &self.url) {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => p.push(format!(
                    "{at}: url `{u}` must be an absolute http:// or https:// URL"
                )),
            }
        }
        if self.kind == SinkKind::Cognigy {
            match (&self.endpoint_url, &self.api) {
                (Some(_), Some(_)) | (None, None) => p.push(format!(
                    "{at}: give exactly one of `endpoint_url` (Endpoint-service route) and `api = \"v2\"`"
                )),
                (None, Some(api)) if api != "v2" => {
                    p.push(format!("{at}: api `{api}` is not supported (only \"v2\")"))
                }
                _ => {}
            }
            if let Some(u) = &self.endpoint_url {
                match u.parse::<http::Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.host().is_some() => {}
                    _ => p.push(format!(
                        "{at}: endpoint_url `{u}` must be an absolute http:// or https:// URL"
                    )),
                }
            }
            for (key, expr) in [("text", &self.text), ("data", &self.data)] {
                if let Some(e) = expr {
                    if let Err(why) = crate::expr::EventExpr::compile(e) {
                        p.push(format!("{at}: {key} {why}"));
                    }
                }
            }
        }
        p
    }
}

/// Which store a configuration selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl StoreConfig {
    /// The backend: PostgreSQL for a `postgres://` URL, else the embedded SQLite file.
    pub fn backend(&self) -> Result<Backend, String> {
        match &self.url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                crate::store::pg_conn::PgTarget::parse(u)?;
                Ok(Backend::Postgres(u.clone()))
            }
            _ => self.sqlite_path().map(Backend::Sqlite),
        }
    }

    /// The SQLite database file this configuration selects.
    pub fn sqlite_path(&self) -> Result<PathBuf, String> {
        match &self.url {
            None => Ok(self.data_dir.join("cognihook.db")),
            Some(u) => {
                if let Some(path) = u.strip_prefix("sqlite://") {
                    if path.is_empty() {
                        Err("store.url `sqlite://` needs a path".into())
                    } else {
                        Ok(PathBuf::from(path))
                    }
                } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                    Err("store.url selects PostgreSQL, not an embedded SQLite file".into())
                } else {
                    Err(format!(
                        "store.url `{u}`: expected sqlite://PATH or postgres://…"
                    ))
                }
            }
        }
    }
}

/// The built-in default configuration as a commented TOML file that is itself a valid config.
/// A test checks that it parses to exactly [`Config::default`].
pub fn default_toml() -> String {
    r#"# cognihook built-in default configuration (cognihook check-config --print-default).
# Layers: these defaults -> this file (--config FILE or COGNIHOOK_CONFIG) -> environment.
# Unknown keys are errors. Durations are human strings ("10s", "500ms", "7days").

[server]
# Public listener (env COGNIHOOK_LISTEN).
listen = "0.0.0.0:8080"
# Separate listener for /metrics, /stats and /admin/* (env COGNIHOOK_ADMIN_LISTEN);
# unset = served on the public listener.
# admin_listen = "127.0.0.1:9090"
# Bearer token for /admin/* (env COGNIHOOK_ADMIN_TOKEN); unset = admin answers 403.
# admin_token = "..."
# POST /simulate and /simulate/<route path>: no authentication, events marked simulated.
simulator = false
# The simulator refuses a non-loopback listener unless this is true.
simulator_allow_remote = false
# A request's head must arrive within this (from the connection's start or the request's
# first byte), or the connection is closed.
header_read_timeout = "10s"
# A kept-alive connection idle this long after its last answer is closed.
idle_timeout = "60s"
# Open connections per listener; more are closed at once.
max_connections = 10000
# How long in-flight requests may take to finish after SIGINT/SIGTERM.
shutdown_grace = "10s"

[limits]
# Larger bodies answer 413; a body is never buffered past this.
max_body_bytes = 1048576
# A larger answer is never sent: 500 internal, nothing committed.
max_response_bytes = 1048576
# From the request's first byte to the response; Cognigy's HTTP node gives up at 8 s
# (dedicated/on-premises). A request that waited past it is answered 503 at once.
deadline = "7s"
# Body not received in time answers 408 (never later than the deadline).
body_read_timeout = "10s"
# Webhook requests admitted and not yet answered; one more answers 503 unavailable with
# Retry-After at once.
max_in_flight = 4096

[store]
# sqlite://PATH (env COGNIHOOK_DATABASE_URL); unset = <data_dir>/cognihook.db.
# url = "sqlite://data/cognihook.db"
# Directory of the embedded store (env COGNIHOOK_DATA_DIR).
data_dir = "./data"
# full: fsync every commit group (a 2xx means on disk) | normal | off
sync = "full"
idempotency_window = "1day"
session_ttl = "7days"
retention = "7days"
# Most events committed in one transaction.
max_batch = 256
# Events waiting for the writer before new requests get 503 unavailable.
queue_depth = 8192

[audit]
# One JSON line per request outcome.
enabled = true
# File to append to; unset = stdout.
# path = "audit.jsonl"

[privacy]
# JSON pointers into the normalised event, replaced by "[redacted]" after the rules ran and
# before the event is stored or delivered.
redact = []
# Secret reference to AES-256-GCM data keys (base64 of 32 bytes; comma-separated to rotate:
# the first seals, all open). Event bodies are then encrypted in the log and the database.
# encrypt_key = "env:COGNIHOOK_DATA_KEY"

[delivery]
# Run the delivery workers in serve.
enabled = true
# New events wake the workers at once; this is the fallback poll.
poll_interval = "1s"
# Niceness (0..=19) of the delivery thread: above 0, ingest wins the CPU under load and
# deliveries catch up afterwards (Linux only; ignored elsewhere).
nice = 10
# A claim's lease is 2 x the sink's timeout plus this; a crashed replica's rows are taken
# over when it runs out.
lease_margin = "30s"
# While at least in_flight requests are handled at once (ingest is saturated), sends per
# interval are held to share of the rows accepted (interval = "0s": never hold back):
# answers to Cognigy keep most of the CPU, deliveries keep going and catch up after.
busy = { in_flight = 16, interval = "100ms", share = 0.5 }

# Defining any [[route]] replaces both built-in routes below.
# Secrets: "env:NAME" (comma-separated value = several secrets), "file:PATH" (one per
# line) or a literal.

[[route]]
name = "flow-events"
path = "/webhook"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
# headers = ["X-Cognigy-Signature", "X-Webhook-Signature"] is the default for hmac-sha256.
rules = []
extract = {}
sinks = []
# Over it: 429 rate_limited with Retry-After. by = "ip" (each client) | "route" (everyone).
# rate_limit = { per = "1s", max = 200, by = "ip" }

[[route]]
name = "nlu-orders"
path = "/webhook/cognigy"
payload = "nlu"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
rules = [
  { expr = "event.intent.score >= 0.75", message = "Intent confidence below business threshold" },
  { expr = "has(event.entities.orderId)", message = "Required entity orderId is missing" },
]
extract = { orderId = "event.entities.orderId" }
sinks = []
"#
    .to_string()
}

/// Serde adapter for human-readable durations (`"10s"`, `"500ms"`).
pub mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
    }
}

/// Serde adapter for optional human-readable durations.
pub mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_config_serves_both_seed_routes() {
        let c = Config::load(None, &env(&[])).expect("default config is valid");
        let paths: Vec<_> = c.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/webhook", "/webhook/cognigy"]);
        assert_eq!(c.routes[1].rules.len(), 2);
        assert_eq!(c.store.sync, SyncMode::Full);
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let c = Config::load(
            None,
            &env(&[
                ("COGNIHOOK_LISTEN", "127.0.0.1:9999"),
                ("COGNIHOOK_DATA_DIR", "/tmp/x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(
            c.store.sqlite_path().expect("path"),
            PathBuf::from("/tmp/x/cognihook.db")
        );
    }

    #[test]
    fn reports_every_unknown_key_at_once() {
        let err = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n[limits]\nmax_bdy = 3\n[bogus]\nx = 1\n",
        )
        .expect_err("unknown keys");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.0.iter().any(|p| p.contains("server.lisen")), "{err}");
        assert!(err.0.iter().any(|p| p.contains("limits.max_bdy")), "{err}");
        assert!(err.0.iter().any(|p| p.contains("bogus")), "{err}");
    }

    #[test]
    fn a_postgres_url_with_unusable_tls_options_is_a_config_problem() {
        for (url, says) in [
            ("postgres://db/x?sslmode=prefer", "falls back to plain text"),
            (
                "postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "cannot be read",
            ),
        ] {
            let err = Config::load(None, &env(&[("COGNIHOOK_DATABASE_URL", url)])).expect_err(url);
            assert!(err.0.iter().any(|p| p.contains(says)), "{url}: {err}");
        }
    }

    #[test]
    fn reports_every_semantic_problem_at_once() {
        let text = r#"
[limits]
max_body_bytes = 0
[[route]]
name = "a"
path = "nope"
payload = "nlu"
auth = { scheme = "none" }
[[route]]
name = "a"
path = "/x"
payload = { kind = "flow-event" }
auth = { scheme = "hmac-sha256" }
"#;
        let c = Config::from_toml(text).expect("parses");
        let p = c.validate();
        assert!(p.iter().any(|m| m.contains("max_body_bytes")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("must start with `/`")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("allow_unauthenticated")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("more than one route")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs `secrets`")), "{p:?}");
    }

    #[test]
    fn durations_are_human_strings() {
        let c = Config::from_toml("[limits]\ndeadline = \"500ms\"\n").expect("parses");
        assert_eq!(c.limits.deadline, Duration::from_millis(500));
        let e = Config::from_toml("[limits]\ndeadline = \"soon\"\n").expect_err("bad");
        assert!(e.0[0].contains("invalid duration `soon`"), "{e}");
    }

    #[test]
    fn print_default_is_a_valid_config_equal_to_the_built_in_default() {
        let text = default_toml();
        let c = Config::from_toml(&text).expect("default TOML parses");
        assert!(c.validate().is_empty());
        let as_toml = |c: &Config| toml::to_string(c).expect("serialise");
        assert_eq!(as_toml(&c), as_toml(&Config::default()));
    }

    #[test]
    fn simulator_refuses_non_loopback_listener() {
        let mut c = Config::default();
        c.server.simulator = true;
        assert!(c
            .validate()
            .iter()
            .any(|p| p.contains("not a loopback address")));
        c.server.listen = "127.0.0.1:8080".parse().expect("addr");
        assert!(c.validate().is_empty());
        c.server.listen = "0.0.0.0:8080".parse().expect("addr");
        c.server.simulator_allow_remote = true;
        assert!(c.validate().is_empty());
    }

    #[test]
    fn file_routes_replace_builtin_ones() {
        let c = Config::from_toml(
            "[[route]]\nname = \"x\"\npath = \"/x\"\npayload = \"nlu\"\nauth = { scheme = \"hmac-sha256\", secrets = [\"lit\"] }\n",
        )
        .expect("parses");
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].name, "x");
    }

    #[test]
    fn sink_tables_are_checked_per_kind_and_routes_must_name_defined_sinks() {
        let text = r#"
[sink.web]
kind = "http"
url = "ftp://nowhere"
subject = "x"
concurrency = 0
[sink.log]
kind = "file"
[sink.q]
kind = "cognigy"
[[route]]
name = "r"
path = "/r"
payload = "nlu"
auth = { scheme = "hmac-sha256", secrets = ["lit"] }
sinks = ["web", "missing", "web"]
"#;
        let c = Config::from_toml(text).expect("parses");
        let p = c.validate();
        for want in [
            "sink `web` (http): url `ftp://nowhere` must be an absolute",
            "sink `web` (http): key `subject` does not apply",
            "sink `web` (http): concurrency must be at least 1",
            "sink `log` (file): `path` is required",
            "sink `q` (cognigy): `mode` is required",
            "sink `q` (cognigy): give exactly one of `endpoint_url`",
            "sink `missing` is not defined",
            "sink `web` listed twice",
        ] {
            assert!(
                p.iter().any(|m| m.contains(want)),
                "missing {want:?} in {p:?}"
            );
        }
        let ok = Config::from_toml(
            "[sink.web]\nkind = \"http\"\nurl = \"https://example.test/x\"\nretry = { max_attempts = 5 }\n",
        )
        .expect("parses");
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        assert_eq!(ok.sinks["web"].retry.max_attempts, 5);
        assert_eq!(ok.sinks["web"].retry.base_delay, Duration::from_secs(1));
        let bad = Config::from_toml(
            "[sink.web]\nkind = \"http\"\nurl = \"http://x\"\nretry = { tries = 5 }\n",
        );
        assert!(bad.is_err(), "unknown key inside retry");
    }

    #[test]
    fn masked_config_hides_literal_secrets_and_token() {
        let mut c = Config::default();
        c.routes[0].auth.secrets = vec!["supersecret".into(), "env:X".into()];
        c.server.admin_token = Some("tok123".into());
        let sink: SinkConfig = toml::from_str(
            "kind = \"http\"\nurl = \"http://user:pw123@host/x\"\nsecret = \"sinksecret\"",
        )
        .expect("sink");
        c.sinks.insert("s".into(), sink);
        c.store.url = Some("postgres://app:dbpass42@db:5432/cognihook".into());
        c.routes[1].auth = AuthConfig {
            password: Some("basicpw".into()),
            username: Some("u".into()),
            ..AuthConfig::with_secrets(AuthScheme::Basic, Vec::new())
        };
        let out = c.to_masked_toml();
        assert!(!out.contains("dbpass42"));
        assert!(out.contains("@db:5432/cognihook"));
        assert!(!out.contains("basicpw"));
        assert!(!out.contains("sinksecret"));
        assert!(!out.contains("pw123"));
        assert!(!out.contains("supersecret"));
        assert!(!out.contains("tok123"));
        assert!(out.contains("env:X"));
    }
}
