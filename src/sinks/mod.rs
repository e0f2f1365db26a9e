//! Sinks: where accepted events go. `trait Sink` plus one file per kind.
//!
//! The whole retry contract is [`SinkError`]: `Transient` failures are retried with backoff,
//! `Permanent` ones dead-letter at once. A sink never retries by itself.

pub mod amqp;
pub mod cognigy;
pub mod file;
pub mod http;
pub mod nats;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EnvSource, SinkConfig, SinkKind};

/// One delivery attempt of one event.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub event_id: &'a str,
    pub correlation_id: &'a str,
    pub route: &'a str,
    pub event_type: &'a str,
    pub session_id: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The normalised event (SPEC §3.6) as JSON.
    pub body: &'a [u8],
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: connect errors, timeouts, 408, 429, 5xx, broker unavailable.
    #[error("{message}")]
    Transient {
        message: String,
        /// The sink asked to wait at least this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: other 4xx, rejected by the broker, invalid target.
    #[error("{message}")]
    Permanent { message: String },
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError::Permanent {
            message: message.into(),
        }
    }
}

/// The future a sink returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// The future of a call whose answer matters (`respond.upstream`).
pub type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, SinkError>> + Send + 'a>>;

/// A destination for events.
pub trait Sink: Send + Sync {
    /// Sends one event; must not retry by itself.
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a>;

    /// Sends one event and returns what the destination answered, for sinks that have an
    /// answer (`http`); the others answer nothing.
    fn call<'a>(&'a self, d: &'a Delivery<'a>) -> CallFuture<'a> {
        Box::pin(async move { self.send(d).await.map(|()| None) })
    }
}

/// Builds the client of a configured sink.
pub fn build(
    name: &str,
    config: &SinkConfig,
    env: &dyn EnvSource,
) -> Result<Arc<dyn Sink>, String> {
    let at = |e: String| format!("sink `{name}`: {e}");
    let sink: Arc<dyn Sink> = match config.kind {
        SinkKind::Http => Arc::new(http::HttpSink::new(config, env).map_err(at)?),
        SinkKind::File => Arc::new(file::FileSink::new(config).map_err(at)?),
        SinkKind::Nats => Arc::new(nats::NatsSink::new(config).map_err(at)?),
        SinkKind::Redis => Arc::new(redis::RedisSink::new(config).map_err(at)?),
        SinkKind::Amqp => Arc::new(amqp::AmqpSink::new(config).map_err(at)?),
        SinkKind::Cognigy => Arc::new(cognigy::CognigySink::new(config, env).map_err(at)?),
    };
    Ok(sink)
}

/// Fills `{route}` and `{eventType}` in a subject or routing-key template.
pub fn render_template(template: &str, d: &Delivery<'_>) -> String {
    template
        .replace("{route}", d.route)
        .replace("{eventType}", d.event_type)
}
