//! `nats` sink: JetStream publish to a subject templated by route and event type, waiting for
//! the stream's ack. `Nats-Msg-Id` is the event id, so the stream's duplicate window drops
//! redeliveries. Creates nothing: a subject no stream captures is reported as such.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::spec::NatsTarget;
use super::{render_template, Delivery, SendFuture, Sink, SinkError};

pub struct NatsSink {
    url: String,
    subject: String,
    timeout: Duration,
    /// Connected on first use; the client reconnects by itself afterwards.
    js: OnceCell<async_nats::jetstream::Context>,
}

impl NatsSink {
    /// Connects on first use.
    pub fn new(target: &NatsTarget, timeout: Duration) -> NatsSink {
        NatsSink {
            url: target.url.expose().to_string(),
            subject: target.subject.clone(),
            timeout,
            js: OnceCell::new(),
        }
    }

    async fn context(&self) -> Result<&async_nats::jetstream::Context, SinkError> {
        self.js
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(self.timeout)
                    .name("cognihook")
                    .connect(self.url.as_str())
                    .await
                    .map_err(|e| {
                        SinkError::transient(format!(
                            "NATS {}: cannot connect: {e}",
                            crate::secret::mask_url(&self.url)
                        ))
                    })?;
                let mut js = async_nats::jetstream::new(client);
                js.set_timeout(self.timeout);
                Ok(js)
            })
            .await
    }
}

impl Sink for NatsSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let js = self.context().await?;
            let subject = render_template(&self.subject, d);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, d.event_id);
            headers.insert(
                "X-Correlation-Id",
                crate::event::header_safe(d.correlation_id).as_ref(),
            );
            headers.insert("Content-Type", "application/json");
            if let Some(tp) = d.traceparent {
                headers.insert("traceparent", tp);
            }
            let classify = |kind: PublishErrorKind, e: &dyn std::fmt::Display| match kind {
                PublishErrorKind::StreamNotFound => SinkError::transient(format!(
                    "NATS: no JetStream stream captures subject `{subject}`; create one \
                     (cognihook creates no streams)"
                )),
                _ => SinkError::transient(format!("NATS publish to `{subject}`: {e}")),
            };
            let ack = js
                .publish_with_headers(subject.clone(), headers, Bytes::copy_from_slice(d.body))
                .await
                .map_err(|e| classify(e.kind(), &e))?;
            ack.await.map_err(|e| classify(e.kind(), &e))?;
            Ok(())
        })
    }
}
