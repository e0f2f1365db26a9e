//! `amqp` sink: RabbitMQ publish with publisher confirms, persistent messages and
//! `message_id` = event id, to a configured exchange with a templated routing key. The
//! connection is made on first use and made again after the broker closes it (restart).
//! Publishes are mandatory: a message no queue takes is a failure, not a silent drop.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::spec::AmqpTarget;
use super::{render_template, Delivery, SendFuture, Sink, SinkError};

pub struct AmqpSink {
    url: String,
    exchange: String,
    routing_key: String,
    /// The live connection and its confirm-mode channel; replaced when it breaks.
    link: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpSink {
    pub fn new(target: &AmqpTarget) -> Result<AmqpSink, super::BuildError> {
        let url = target.url.expose().to_string();
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| super::BuildError::Setting(format!("url: {e}")))?;
        Ok(AmqpSink {
            url,
            exchange: target.exchange.clone(),
            routing_key: target
                .routing_key
                .clone()
                .unwrap_or_else(|| "{route}".into()),
            link: Mutex::new(None),
        })
    }

    fn redacted_url(&self) -> String {
        crate::secret::mask_url(&self.url)
    }

    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some((conn, ch)) = link.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *link = None;
        let fail = |what: &str, e: lapin::Error| {
            SinkError::transient(format!("AMQP {}: {what}: {e}", self.redacted_url()))
        };
        let conn = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| fail("cannot connect", e))?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| fail("cannot open a channel", e))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| fail("cannot enable publisher confirms", e))?;
        *link = Some((conn, ch.clone()));
        Ok(ch)
    }
}

impl Sink for AmqpSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let ch = self.channel().await?;
            let key = render_template(&self.routing_key, d);
            let mut props = BasicProperties::default()
                .with_message_id(d.event_id.into())
                .with_correlation_id(d.correlation_id.into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            if let Some(tp) = d.traceparent {
                let mut headers = lapin::types::FieldTable::default();
                headers.insert(
                    "traceparent".into(),
                    lapin::types::AMQPValue::LongString(tp.into()),
                );
                props = props.with_headers(headers);
            }
            let at = format!("AMQP exchange `{}` key `{key}`", self.exchange);
            let failed = |e: lapin::Error| {
                // A missing exchange closes the channel; the next attempt opens a new one.
                SinkError::transient(format!("{at}: {e}"))
            };
            let confirm = ch
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    d.body,
                    props,
                )
                .await
                .map_err(failed)?
                .await
                .map_err(failed)?;
            match confirm {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(_)) => Err(SinkError::transient(format!(
                    "{at}: no queue is bound for this routing key (message returned)"
                ))),
                Confirmation::Nack(_) => Err(SinkError::transient(format!(
                    "{at}: the broker refused the message (nack)"
                ))),
                Confirmation::NotRequested => Err(SinkError::transient(format!(
                    "{at}: publisher confirms are off on this channel"
                ))),
            }
        })
    }
}
