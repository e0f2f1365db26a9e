//! Sinks: where accepted events go. `trait Sink` plus one file per kind.
//!
//! The whole retry contract is [`SinkError`]: `Transient` failures are retried with backoff,
//! `Permanent` ones dead-letter at once. A sink never retries by itself.

pub mod alert;
pub mod amqp;
pub mod cognigy;
pub mod file;
pub mod http;
pub mod nats;
pub mod redis;
pub mod spec;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::EnvSource;
use spec::Target;

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
    /// The attempt span's W3C `traceparent`, when tracing is on: sent as the `traceparent`
    /// header (http, cognigy, NATS, AMQP) or stream field (Redis).
    pub traceparent: Option<&'a str>,
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
    /// Too old to send (a `cognigy` sink's `max_age`): dead-lettered as `expired`, unsent.
    #[error("{message}")]
    Expired { message: String },
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

/// Why a sink's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting the client cannot use (the message names it).
    #[error("{0}")]
    Setting(String),
    /// Something failed while building, kept as the source.
    #[error("{doing}: {source}")]
    Failed {
        doing: String,
        #[source]
        source: crate::error::Cause,
    },
}

impl BuildError {
    /// Maps an error met while `doing` something into `Failed`.
    pub fn failed<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        doing: impl Into<String>,
    ) -> impl FnOnce(E) -> BuildError {
        let doing = doing.into();
        move |e| BuildError::Failed {
            doing,
            source: crate::error::Cause::new(e),
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

    /// Sends several events as one request (`batch` on an `http` sink); the outcome is the
    /// whole batch's. Kinds that have no batch form send them one by one and stop at the
    /// first failure.
    fn send_batch<'a>(&'a self, batch: &'a [Delivery<'a>]) -> SendFuture<'a> {
        Box::pin(async move {
            for d in batch {
                self.send(d).await?;
            }
            Ok(())
        })
    }
}

/// Builds the client of a configured sink; `timeout` bounds one attempt.
pub fn build(
    target: &Target,
    timeout: Duration,
    env: &dyn EnvSource,
) -> Result<Arc<dyn Sink>, BuildError> {
    let sink: Arc<dyn Sink> = match target {
        Target::Http(t) => Arc::new(http::HttpSink::new(t, timeout, env)?),
        Target::File(t) => Arc::new(file::FileSink::new(t)?),
        Target::Nats(t) => Arc::new(nats::NatsSink::new(t, timeout)),
        Target::Redis(t) => Arc::new(redis::RedisSink::new(t, timeout)?),
        Target::Amqp(t) => Arc::new(amqp::AmqpSink::new(t)?),
        Target::Cognigy(t) => Arc::new(cognigy::CognigySink::new(t, timeout, env)?),
        Target::Alert(t) => Arc::new(alert::AlertSink::new(t, timeout, env)?),
    };
    Ok(sink)
}

/// Fills `{route}` and `{eventType}` in a subject or routing-key template.
pub fn render_template(template: &str, d: &Delivery<'_>) -> String {
    template
        .replace("{route}", d.route)
        .replace("{eventType}", d.event_type)
}
