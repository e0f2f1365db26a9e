//! `redis` sink: XADD to a stream, with the event id, correlation id, route and event type as
//! fields beside the event JSON; optional approximate MAXLEN.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::spec::RedisTarget;
use super::{Delivery, SendFuture, Sink, SinkError};

pub struct RedisSink {
    client: redis::Client,
    url: String,
    stream: String,
    maxlen: Option<u64>,
    timeout: Duration,
    /// Connected on first use; the manager reconnects by itself afterwards.
    conn: OnceCell<ConnectionManager>,
}

impl RedisSink {
    pub fn new(target: &RedisTarget, timeout: Duration) -> Result<RedisSink, super::BuildError> {
        let url = target.url.expose().to_string();
        let client = redis::Client::open(url.as_str()).map_err(super::BuildError::failed(
            format!("url `{}`", crate::secret::mask_url(&url)),
        ))?;
        Ok(RedisSink {
            client,
            url,
            stream: target.stream.clone(),
            maxlen: target.maxlen,
            timeout,
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
                    // One connection attempt per send, bounded by the sink's timeout: the
                    // delivery policy does the retrying, and an answer such as a refused
                    // AUTH comes back as itself instead of after the manager's own six
                    // retries as a timeout (holding a send slot all the while).
                    let config = ConnectionManagerConfig::new()
                        .set_number_of_retries(0)
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    ConnectionManager::new_with_config(self.client.clone(), config)
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
            if let Some(tp) = d.traceparent {
                cmd.arg("traceparent").arg(tp);
            }
            let _id: String = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| classify(&self.url, &e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback listener that answers every connection's first command with Redis's refusal
    /// of a wrong password, counting connections. (The real-Redis test in tests/it/brokers.rs
    /// checks the error text; this one counts how often one send connects.)
    async fn refusing_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // One refusal per command read (the client pipelines AUTH with
                    // CLIENT SETINFO; each command is a RESP array, `*N\r\n…`).
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let data = &buf[..n];
                        let commands = usize::from(data.first() == Some(&b'*'))
                            + data.windows(3).filter(|w| w == b"\r\n*").count();
                        for _ in 0..commands {
                            let refusal = b"-WRONGPASS invalid username-password pair\r\n";
                            if socket.write_all(refusal).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("redis://app:wrong@{addr}"), connections)
    }

    #[tokio::test]
    async fn a_refused_password_fails_the_send_with_one_connection_and_names_the_refusal() {
        let (url, connections) = refusing_server().await;
        let target = RedisTarget {
            url: url.into(),
            stream: "s".into(),
            maxlen: None,
        };
        let sink = RedisSink::new(&target, Duration::from_secs(30)).expect("sink");
        let d = Delivery {
            event_id: "e",
            correlation_id: "c",
            route: "r",
            event_type: "t",
            session_id: "s",
            attempt: 1,
            body: b"{}",
            traceparent: None,
        };
        let err = sink.send(&d).await.expect_err("refused");
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("authentication failed"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("wrong@"),
            "password masked: {err}"
        );
        // The delivery policy retries; the connection manager must not retry on its own
        // (it made 7 connections, with back-off, before this was fixed).
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }
}
