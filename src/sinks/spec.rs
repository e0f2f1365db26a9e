//! What each sink kind is built from: a `[sink.NAME]` table checked for its kind (the keys
//! the kind needs, none it does not, URLs and expressions that work), as one typed value per
//! kind. The clients receive a [`Target`] and check nothing again.

use std::path::PathBuf;

use crate::config::{CognigyMode, SinkConfig, SinkKind};
use crate::secret::{SecretRef, SecretUrl};

/// Checks `table`'s kind-specific keys and converts them into the kind's [`Target`]; adds
/// every problem to `p` (each prefixed with `at`).
pub fn check(at: &str, table: &SinkConfig, p: &mut Vec<String>) -> Option<Target> {
    let before = p.len();
    let given: [(&str, bool); 17] = [
        ("mode", table.mode.is_some()),
        ("endpoint_url", table.endpoint_url.is_some()),
        ("api", table.api.is_some()),
        ("text", table.text.is_some()),
        ("data", table.data.is_some()),
        ("url", table.url.is_some()),
        ("secret", table.secret.is_some()),
        ("path", table.path.is_some()),
        ("subject", table.subject.is_some()),
        ("exchange", table.exchange.is_some()),
        ("routing_key", table.routing_key.is_some()),
        ("stream", table.stream.is_some()),
        ("maxlen", table.maxlen.is_some()),
        ("attachments", table.attachments.is_some()),
        ("max_age", table.max_age.is_some()),
        ("headers", !table.headers.is_empty()),
        ("batch", table.batch.is_some()),
    ];
    let (required, optional): (&[&str], &[&str]) = match table.kind {
        SinkKind::Http => (&["url"], &["secret", "batch"]),
        SinkKind::File => (&["path"], &[]),
        SinkKind::Nats => (&["url", "subject"], &[]),
        SinkKind::Amqp => (&["url", "exchange"], &["routing_key"]),
        SinkKind::Redis => (&["url", "stream"], &["maxlen"]),
        SinkKind::Alert => (&[], &[]),
        SinkKind::Cognigy => (
            &["mode"],
            &[
                "endpoint_url",
                "api",
                "secret",
                "text",
                "data",
                "attachments",
                "max_age",
                "headers",
            ],
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
    if let (SinkKind::Http, Some(u)) = (table.kind, &table.url) {
        match u.expose().parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => p.push(format!(
                "{at}: url `{u}` must be an absolute http:// or https:// URL"
            )),
        }
    }
    if let Some(b) = table.batch {
        if b.max == 0 || b.max > 1000 {
            p.push(format!("{at}: batch.max must be 1..=1000, not {}", b.max));
        }
        if b.max_bytes == 0 {
            p.push(format!("{at}: batch.max_bytes must be greater than 0"));
        }
    }
    if table.kind == SinkKind::Cognigy {
        match (&table.endpoint_url, &table.api) {
            (Some(_), Some(_)) | (None, None) => p.push(format!(
                "{at}: give exactly one of `endpoint_url` (Endpoint-service route) and `api = \"v2\"`"
            )),
            (None, Some(api)) if api != "v2" => {
                p.push(format!("{at}: api `{api}` is not supported (only \"v2\")"))
            }
            _ => {}
        }
        if let Some(u) = &table.endpoint_url {
            match u.expose().parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => p.push(format!(
                    "{at}: endpoint_url `{u}` must be an absolute http:// or https:// URL"
                )),
            }
        }
        let blank = |t: &str| matches!(t.trim(), "" | "\"\"" | "''");
        if table.mode == Some(CognigyMode::Notify) && table.text.as_deref().is_some_and(blank) {
            p.push(format!(
                "{at}: notify shows `text` to the user and this one is always empty: give an \
                 expression, or leave `text` out to use the event's text"
            ));
        }
        if table.attachments.is_some() && table.mode == Some(CognigyMode::Inject) {
            p.push(format!("{at}: `attachments` apply to mode notify only"));
        }
        if table.max_age.is_some_and(|d| d.is_zero()) {
            p.push(format!("{at}: max_age must be greater than 0"));
        }
        for (name, value) in &table.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("{at}: headers: `{name}` is not a header name"));
            }
            if value.expose().is_empty() {
                p.push(format!("{at}: headers.{name} is empty"));
            }
        }
        for (key, expr) in [
            ("text", &table.text),
            ("data", &table.data),
            ("attachments", &table.attachments),
        ] {
            if let Some(e) = expr {
                if let Err(why) = crate::expr::EventExpr::compile(e) {
                    p.push(format!("{at}: {key} {why}"));
                }
            }
        }
    }
    if p.len() > before {
        return None;
    }
    let target = target(table);
    if target.is_none() {
        p.push(format!("{at}: incomplete table"));
    }
    target
}

/// The kind's target, when the keys it needs are there (checked in [`check`]).
fn target(table: &SinkConfig) -> Option<Target> {
    let url = || table.url.clone();
    Some(match table.kind {
        SinkKind::Http => Target::Http(HttpTarget {
            url: url()?,
            secret: table.secret.clone(),
        }),
        SinkKind::File => Target::File(FileTarget {
            path: table.path.clone()?,
        }),
        SinkKind::Nats => Target::Nats(NatsTarget {
            url: url()?,
            subject: table.subject.clone()?,
        }),
        SinkKind::Amqp => Target::Amqp(AmqpTarget {
            url: url()?,
            exchange: table.exchange.clone()?,
            routing_key: table.routing_key.clone(),
        }),
        SinkKind::Redis => Target::Redis(RedisTarget {
            url: url()?,
            stream: table.stream.clone()?,
            maxlen: table.maxlen,
        }),
        SinkKind::Alert => return None,
        SinkKind::Cognigy => Target::Cognigy(CognigyTarget {
            mode: table.mode?,
            api: match (&table.endpoint_url, table.api.as_deref()) {
                (Some(base), None) => CognigyApi::EndpointService {
                    base_url: base.expose().trim_end_matches('/').into(),
                },
                (None, Some("v2")) => CognigyApi::V2,
                _ => return None,
            },
            secret: table.secret.clone(),
            text: table.text.clone(),
            data: table.data.clone(),
            attachments: table.attachments.clone(),
            max_age: table.max_age,
            headers: table
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((http::HeaderName::from_bytes(n.as_bytes()).ok()?, v.clone()))
                })
                .collect(),
        }),
    })
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
    /// An alert target (`[alerts.target.NAME]`), not a sink table.
    Alert(AlertTarget),
}

/// Where alerts go: a Slack or Teams webhook, or any URL taking the alert as JSON.
#[derive(Debug, Clone)]
pub struct AlertTarget {
    pub format: crate::config::AlertFormat,
    /// The URL or a reference to it (a chat webhook's URL is its credential).
    pub url: SecretRef,
    /// Signs each alert like the http sink.
    pub secret: Option<SecretRef>,
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
    /// notify: CEL over the event for `attachments`.
    pub attachments: Option<String>,
    /// Deliveries older than this are dead-lettered as `expired`.
    pub max_age: Option<std::time::Duration>,
    /// Extra request headers (values are secret references).
    pub headers: Vec<(http::HeaderName, SecretRef)>,
}

impl CognigyTarget {
    /// The host (and port) the sink calls, for sharing one rate bucket among the sinks that
    /// call the same Cognigy (it counts per source address); `api_base` is
    /// `COGNIGY_API_BASE_URL`, which a v2 sink calls.
    pub fn host(&self, api_base: Option<&str>) -> Option<String> {
        let url = match &self.api {
            CognigyApi::EndpointService { base_url } => base_url.expose().to_string(),
            CognigyApi::V2 => api_base?.to_string(),
        };
        let uri = url.parse::<http::Uri>().ok()?;
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        Some(format!("{host}:{port}"))
    }
}

/// Which Cognigy API a `cognigy` sink calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CognigyApi {
    /// `{base_url}/{mode}/{URLToken}` (no trailing slash on `base_url`).
    EndpointService { base_url: SecretUrl },
    /// The v2.0 REST API at `COGNIGY_API_BASE_URL`, with `X-API-Key`.
    V2,
}
