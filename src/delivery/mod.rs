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
    let mut out = Vec::new();
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
            Ok(sink) => out.push(Arc::new(SinkRuntime::new(
                spec,
                sink,
                config.delivery.lease_margin,
            ))),
            Err(e) => problems.push(format!("sink `{name}`: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
