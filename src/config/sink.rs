//! `[sink.NAME]` tables: where accepted events go.

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

/// One `[sink.NAME]` table as written. Keys that do not apply to the kind are reported by
/// [`SinkConfig::check`], which turns it into a [`SinkSpec`].
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

impl SinkConfig {
    /// Checks this table for its kind and converts it into what the sink's client is built
    /// from, or returns every problem found. The one place a sink's keys are checked: the
    /// clients receive a [`SinkSpec`] and check nothing again.
    pub fn check(&self, name: &str) -> Result<SinkSpec, Vec<String>> {
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
            match u.expose().parse::<http::Uri>() {
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
                match u.expose().parse::<http::Uri>() {
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
        if !p.is_empty() {
            return Err(p);
        }
        self.target()
            .map(|target| SinkSpec {
                name: name.to_string(),
                timeout: self.timeout,
                retry: self.retry,
                breaker: self.breaker,
                concurrency: self.concurrency,
                ordered: self.ordered,
                rate_limit: self.rate_limit,
                target,
            })
            .ok_or_else(|| vec![format!("{at}: incomplete table")])
    }

    /// The kind's target, when the keys it needs are there (checked above).
    fn target(&self) -> Option<Target> {
        let url = || self.url.clone();
        Some(match self.kind {
            SinkKind::Http => Target::Http(HttpTarget {
                url: url()?,
                secret: self.secret.clone(),
            }),
            SinkKind::File => Target::File(FileTarget {
                path: self.path.clone()?,
            }),
            SinkKind::Nats => Target::Nats(NatsTarget {
                url: url()?,
                subject: self.subject.clone()?,
            }),
            SinkKind::Amqp => Target::Amqp(AmqpTarget {
                url: url()?,
                exchange: self.exchange.clone()?,
                routing_key: self.routing_key.clone(),
            }),
            SinkKind::Redis => Target::Redis(RedisTarget {
                url: url()?,
                stream: self.stream.clone()?,
                maxlen: self.maxlen,
            }),
            SinkKind::Cognigy => Target::Cognigy(CognigyTarget {
                mode: self.mode?,
                api: match (&self.endpoint_url, self.api.as_deref()) {
                    (Some(base), None) => CognigyApi::EndpointService {
                        base_url: base.expose().trim_end_matches('/').into(),
                    },
                    (None, Some("v2")) => CognigyApi::V2,
                    _ => return None,
                },
                secret: self.secret.clone(),
                text: self.text.clone(),
                data: self.data.clone(),
            }),
        })
    }
}

/// A `[sink.NAME]` table checked for its kind (see [`SinkConfig::check`]).
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    /// Time one attempt may take.
    pub timeout: Duration,
    pub retry: crate::delivery::retry::RetryPolicy,
    pub breaker: crate::delivery::breaker::BreakerConfig,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// One event in flight per session, in acceptance order.
    pub ordered: bool,
    pub rate_limit: Option<crate::rate::RateLimit>,
    /// Where events go, with exactly the settings of the kind.
    pub target: Target,
}

impl SinkSpec {
    pub fn kind(&self) -> SinkKind {
        match self.target {
            Target::Http(_) => SinkKind::Http,
            Target::File(_) => SinkKind::File,
            Target::Nats(_) => SinkKind::Nats,
            Target::Amqp(_) => SinkKind::Amqp,
            Target::Redis(_) => SinkKind::Redis,
            Target::Cognigy(_) => SinkKind::Cognigy,
        }
    }
}

/// Where a sink sends, per kind (SPEC §7).
#[derive(Debug, Clone)]
pub enum Target {
    Http(HttpTarget),
    File(FileTarget),
    Nats(NatsTarget),
    Amqp(AmqpTarget),
    Redis(RedisTarget),
    Cognigy(CognigyTarget),
}

/// `kind = "http"`: POST each event to `url`.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// An absolute http:// or https:// URL.
    pub url: SecretUrl,
    /// Secret reference for the outgoing `X-Cognihook-Signature`.
    pub secret: Option<SecretRef>,
}

/// `kind = "file"`: append each event as a JSON line.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub path: PathBuf,
}

/// `kind = "nats"`: publish to JetStream.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: SecretUrl,
    /// Template with `{route}` and `{eventType}`.
    pub subject: String,
}

/// `kind = "amqp"`: publish to an exchange with publisher confirms.
#[derive(Debug, Clone)]
pub struct AmqpTarget {
    pub url: SecretUrl,
    pub exchange: String,
    /// Template with `{route}` and `{eventType}`; unset = the route's name.
    pub routing_key: Option<String>,
}

/// `kind = "redis"`: XADD to a stream.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub url: SecretUrl,
    pub stream: String,
    /// Approximate MAXLEN of the stream.
    pub maxlen: Option<u64>,
}

/// `kind = "cognigy"`: inject into the Flow or notify the user (cognigy/FACTS.md §2).
#[derive(Debug, Clone)]
pub struct CognigyTarget {
    pub mode: CognigyMode,
    pub api: CognigyApi,
    /// v2: secret reference of the API key (default `env:COGNIGY_API_KEY`).
    pub secret: Option<SecretRef>,
    /// CEL over the event for the message text.
    pub text: Option<String>,
    /// CEL over the event for `data`.
    pub data: Option<String>,
}

/// Which Cognigy API a `cognigy` sink calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CognigyApi {
    /// `{base_url}/{mode}/{URLToken}` (no trailing slash on `base_url`).
    EndpointService { base_url: SecretUrl },
    /// The v2.0 REST API at `COGNIGY_API_BASE_URL`, with `X-API-Key`.
    V2,
}
