//! `redis` sink: XADD to a stream, with the event id, correlation id, route and event type as
//! fields beside the event JSON; optional approximate MAXLEN.

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Delivery, SendFuture, Sink, SinkError};
use crate::config::SinkConfig;

pub struct RedisSink {
    client: redis::Client,
    url: String,
    stream: String,
    maxlen: Option<u64>,
    /// Connected on first use; the manager reconnects by itself afterwards.
    conn: OnceCell<ConnectionManager>,
}

impl RedisSink {
    pub fn new(config: &SinkConfig) -> Result<RedisSink, String> {
        let url = config.url.clone().ok_or("`url` is required")?;
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("url `{url}`: {e}"))?;
        Ok(RedisSink {
            client,
            url,
            stream: config.stream.clone().ok_or("`stream` is required")?,
            maxlen: config.maxlen,
            conn: OnceCell::new(),
        })
    }
}

fn classify(url: &str, e: &redis::RedisError) -> SinkError {
    let message = format!("Redis {}: {e}", crate::secret::mask_url(url));
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        );
    if transient {
        SinkError::transient(message)
    } else {
        SinkError::permanent(message)
    }
}

impl Sink for RedisSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let conn = self
                .conn
                .get_or_try_init(|| async {
                    ConnectionManager::new(self.client.clone())
                        .await
                        .map_err(|e| classify(&self.url, &e))
                })
                .await?;
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.stream);
            if let Some(n) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*")
                .arg("eventId")
                .arg(d.event_id)
                .arg("correlationId")
                .arg(d.correlation_id)
                .arg("route")
                .arg(d.route)
                .arg("eventType")
                .arg(d.event_type)
                .arg("event")
                .arg(d.body);
            let _id: String = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| classify(&self.url, &e))?;
            Ok(())
        })
    }
}
