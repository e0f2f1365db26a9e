//! The delivery path: outbox rows → worker (claim with lease) → sink.send → settle as
//! delivered, retry at a time, or dead letter. The retry policy and circuit breaker are pure.

pub mod breaker;
pub mod lag;
pub mod pace;
mod respond;
pub mod retry;
mod settle;
pub mod sink;
pub mod spec;
pub mod worker;

use std::sync::Arc;

use crate::config::{Config, EnvSource};
use sink::SinkRuntime;

/// Builds every configured sink's client; returns every problem.
pub fn build_sinks(
    config: &Config,
    env: &dyn EnvSource,
) -> Result<Vec<Arc<SinkRuntime>>, Vec<String>> {
    let mut out: Vec<SinkRuntime> = Vec::new();
    let mut problems = Vec::new();
    for (name, table) in &config.sinks {
        let spec = match spec::SinkSpec::check(name, table) {
            Ok(spec) => spec,
            Err(mut p) => {
                problems.append(&mut p);
                continue;
            }
        };
        match crate::sinks::build(&spec.target, spec.timeout, env) {
            Ok(sink) => out.push(SinkRuntime::new(spec, sink, config.delivery.lease_margin)),
            Err(e) => problems.push(format!("sink `{name}`: {e}")),
        }
    }
    share_cognigy_buckets(&mut out, env, &mut problems);
    if problems.is_empty() {
        Ok(out.into_iter().map(Arc::new).collect())
    } else {
        Err(problems)
    }
}

/// Cognigy rate-limits per source address: `cognigy` sinks that call the same host share
/// the first one's rate bucket (by name), so together they keep to one limit. Sinks that
/// share a host but set different `rate_limit`s are a configuration problem.
fn share_cognigy_buckets(
    sinks: &mut [SinkRuntime],
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) {
    use std::collections::BTreeMap;
    let api_base = env.get("COGNIGY_API_BASE_URL");
    let mut by_host: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..sinks.len() {
        let crate::sinks::spec::Target::Cognigy(t) = &sinks[i].config.target else {
            continue;
        };
        let Some(host) = t.host(api_base.as_deref()) else {
            continue;
        };
        match by_host.get(&host) {
            None => {
                by_host.insert(host, i);
            }
            Some(&first) => {
                let (a, b) = (&sinks[first], &sinks[i]);
                if a.config.rate_limit.is_some()
                    && b.config.rate_limit.is_some()
                    && a.config.rate_limit != b.config.rate_limit
                {
                    problems.push(format!(
                        "sinks `{}` and `{}` call the same Cognigy host ({host}), which counts \
                         requests per source address: give them the same rate_limit (they share it)",
                        a.name, b.name
                    ));
                }
                let shared = if a.config.rate_limit.is_none() && b.config.rate_limit.is_some() {
                    b.bucket.clone()
                } else {
                    a.bucket.clone()
                };
                sinks[first].bucket = shared.clone();
                sinks[i].bucket = shared;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(text: &str) -> Result<Vec<Arc<SinkRuntime>>, Vec<String>> {
        let config = Config::from_toml(text).expect("parses");
        build_sinks(
            &config,
            &std::collections::BTreeMap::<String, String>::new(),
        )
    }

    #[test]
    fn cognigy_sinks_calling_one_host_share_one_rate_bucket() {
        let built = sinks(
            r#"
[sink.a]
kind = "cognigy"
mode = "notify"
endpoint_url = "https://endpoint.example/"
[sink.b]
kind = "cognigy"
mode = "inject"
endpoint_url = "https://ENDPOINT.example:443/other"
[sink.c]
kind = "cognigy"
mode = "notify"
endpoint_url = "https://elsewhere.example/"
"#,
        )
        .expect("builds");
        let bucket = |n: &str| {
            built
                .iter()
                .find(|s| s.name == n)
                .and_then(|s| s.bucket.clone())
                .expect("a bucket")
        };
        assert!(
            Arc::ptr_eq(&bucket("a"), &bucket("b")),
            "same host, one bucket"
        );
        assert!(!Arc::ptr_eq(&bucket("a"), &bucket("c")));
        // What one spends, the other cannot.
        let now = std::time::Instant::now();
        let before = bucket("b").lock().available(now);
        bucket("a").lock().take(10, now);
        assert_eq!(bucket("b").lock().available(now), before - 10);

        let clash = sinks(
            r#"
[sink.a]
kind = "cognigy"
mode = "notify"
endpoint_url = "https://endpoint.example/"
rate_limit = { per = "1s", max = 5 }
[sink.b]
kind = "cognigy"
mode = "inject"
endpoint_url = "https://endpoint.example/"
rate_limit = { per = "1s", max = 9 }
"#,
        )
        .err()
        .unwrap_or_default();
        assert!(
            clash.iter().any(|p| p.contains("same Cognigy host")),
            "{clash:?}"
        );
    }
}
