//! A sink as delivery runs it: its delivery settings (timeout, retry, breaker, concurrency,
//! order, rate) and its kind's [`Target`], checked once from the `[sink.NAME]` table.

use std::time::Duration;

use crate::config::{BreakerConfig, RetryPolicy, SinkConfig, SinkKind};
use crate::sinks::spec::Target;

/// A `[sink.NAME]` table checked for its kind (see [`SinkSpec::check`]).
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    /// Time one attempt may take.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// One event in flight per session, in acceptance order.
    pub ordered: bool,
    pub rate_limit: Option<crate::rate::RateLimit>,
    /// http: due events sent together as one JSON array per request.
    pub batch: Option<crate::config::BatchConfig>,
    /// Where events go, with exactly the settings of the kind.
    pub target: Target,
}

impl SinkSpec {
    /// Checks a `[sink.NAME]` table (the delivery settings here, the kind's keys in
    /// [`crate::sinks::spec::check`]) and converts it, or returns every problem found. The one
    /// place a sink's keys are checked: the runtime and the client check nothing again.
    pub fn check(name: &str, table: &SinkConfig) -> Result<SinkSpec, Vec<String>> {
        let at = format!("sink `{name}` ({})", table.kind.name());
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
        if table.concurrency == 0 {
            p.push(format!("{at}: concurrency must be at least 1"));
        }
        if table.timeout.is_zero() {
            p.push(format!("{at}: timeout must be greater than 0"));
        }
        if table.retry.max_attempts == 0 {
            p.push(format!("{at}: retry.max_attempts must be at least 1"));
        }
        if table.retry.base_delay > table.retry.max_delay {
            p.push(format!(
                "{at}: retry.base_delay is greater than retry.max_delay"
            ));
        }
        if let Some(r) = table.rate_limit {
            if r.max == 0 || r.per.is_zero() {
                p.push(format!("{at}: rate_limit needs max >= 1 and per > 0"));
            }
        }
        if !(0.0..=1.0).contains(&table.breaker.failure_ratio) {
            p.push(format!(
                "{at}: breaker.failure_ratio must be between 0 and 1"
            ));
        }
        let target = crate::sinks::spec::check(&at, table, &mut p);
        match target {
            Some(target) if p.is_empty() => Ok(SinkSpec {
                name: name.to_string(),
                timeout: table.timeout,
                retry: table.retry,
                breaker: table.breaker,
                concurrency: table.concurrency,
                ordered: table.ordered,
                rate_limit: table.rate_limit,
                batch: table.batch,
                target,
            }),
            _ => Err(p),
        }
    }

    pub fn kind(&self) -> SinkKind {
        match self.target {
            Target::Http(_) => SinkKind::Http,
            Target::File(_) => SinkKind::File,
            Target::Nats(_) => SinkKind::Nats,
            Target::Amqp(_) => SinkKind::Amqp,
            Target::Redis(_) => SinkKind::Redis,
            Target::Cognigy(_) => SinkKind::Cognigy,
            Target::Alert(_) => SinkKind::Alert,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
    [sink.n]
    kind = "cognigy"
    mode = "notify"
    endpoint_url = "https://e.example"
    text = '""'
    [sink.i]
    kind = "cognigy"
    mode = "inject"
    endpoint_url = "https://e.example"
    attachments = "[]"
    [sink.q]
    kind = "cognigy"
    [sink.b]
    kind = "http"
    url = "https://example.test/b"
    batch = { max = 0, max_bytes = 0 }
    [sink.nb]
    kind = "nats"
    url = "nats://127.0.0.1:4222"
    subject = "s"
    batch = { max = 10 }
    [[route]]
    name = "r"
    path = "/r"
    payload = "nlu"
    auth = { scheme = "hmac-sha256", secrets = ["lit"] }
    sinks = ["web", "missing", "web"]
    "#;
        let c = Config::from_toml(text).expect("parses");
        // Cross-references are the configuration's; each table's own keys are the sink's check.
        let mut p = c.validate();
        for (name, table) in &c.sinks {
            p.extend(SinkSpec::check(name, table).err().unwrap_or_default());
        }
        for want in [
            "sink `web` (http): url `ftp://nowhere` must be an absolute",
            "sink `web` (http): key `subject` does not apply",
            "sink `web` (http): concurrency must be at least 1",
            "sink `log` (file): `path` is required",
            "sink `q` (cognigy): `mode` is required",
            "sink `q` (cognigy): give exactly one of `endpoint_url`",
            "sink `n` (cognigy): notify shows `text` to the user and this one is always empty",
            "sink `i` (cognigy): `attachments` apply to mode notify only",
            "sink `missing` is not defined",
            "sink `web` listed twice",
            "sink `b` (http): batch.max must be 1..=1000, not 0",
            "sink `b` (http): batch.max_bytes must be greater than 0",
            "sink `nb` (nats): key `batch` does not apply to this kind",
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
        let spec = SinkSpec::check("web", &ok.sinks["web"]).expect("valid");
        assert_eq!(spec.retry.max_attempts, 5);
        match &spec.target {
            Target::Http(t) => assert_eq!(t.url.expose(), "https://example.test/x"),
            other => panic!("an http target, not {other:?}"),
        }
        assert_eq!(spec.kind(), SinkKind::Http);
        assert_eq!(ok.sinks["web"].retry.base_delay, Duration::from_secs(1));
        let bad = Config::from_toml(
            "[sink.web]\nkind = \"http\"\nurl = \"http://x\"\nretry = { tries = 5 }\n",
        );
        assert!(bad.is_err(), "unknown key inside retry");
    }
}
