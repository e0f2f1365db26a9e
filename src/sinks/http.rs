//! `http` sink: POST the normalised event as JSON.
//!
//! Headers: `X-Cognihook-Event-Id`, `X-Correlation-Id`, `X-Cognihook-Attempt`, and with a
//! secret `X-Cognihook-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
//! With `batch`, a request carries a JSON array of events instead: `X-Cognihook-Batch-Size`,
//! `X-Cognihook-Attempt` (the highest attempt in it), the signature over the array's bytes,
//! and no per-event id headers (each element has its `eventId` and `correlationId`).
//! 2xx is success; 408, 429, 5xx, timeouts and connection errors are transient (with
//! `Retry-After` honoured); other statuses are permanent. Redirects are not followed.
//!
//! The sink sends through hyper-util's pooled client (TLS by rustls with the webpki roots),
//! not reqwest: reqwest wraps the same client, and its layers (URL to URI per request,
//! default headers, the redirect and timeout futures) cost about a third of a POST's CPU on
//! the client side, 11.2 against 7.6 µs on loopback (`examples/client_cost.rs`, bench/README.md,
//! twenty-eighth session). Environment proxies (`HTTP_PROXY`, `HTTPS_PROXY`) are not read:
//! the sink connects to its URL directly.
//!
//! A connection's reads and writes are driven by the runtime that opened it, and a pool
//! hands connections to whoever asks. The sink keeps two pools: one for the delivery
//! thread, which runs lowered (`delivery.nice`), and one for everyone else (a `respond`
//! route's first call, made on the request path), so that a request never waits for a
//! lowered thread to get the CPU to read its upstream's answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::Sha256;

use super::spec::HttpTarget;
use super::{CallFuture, Delivery, SendFuture, Sink, SinkError};
use crate::config::EnvSource;

type Pooled =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How much of an answer's body a plain send reads (so that its connection can be used
/// again); an answer longer than this closes its connection. `call` reads the whole body.
const DRAIN_BYTES: usize = 64 * 1024;

pub struct HttpSink {
    /// The pools of threads at their normal priority, and of lowered ones
    /// (`priority::is_lowered`).
    pools: [Pooled; 2],
    /// Parsed once: parsing a URL per send cost ~5 % of a drain's CPU (perf).
    uri: Uri,
    /// The URL as errors show it (credentials masked: see `secret::mask_url`).
    shown: String,
    secret: Option<Vec<u8>>,
    /// For connecting and for the whole exchange, the answer's body included.
    timeout: Duration,
}

impl HttpSink {
    pub fn new(
        target: &HttpTarget,
        timeout: Duration,
        env: &dyn EnvSource,
    ) -> Result<HttpSink, super::BuildError> {
        let url = target.url.expose().to_string();
        let secret = match &target.secret {
            Some(r) => {
                let s = r
                    .resolve(env)
                    .map_err(|e| super::BuildError::Setting(format!("secret `{r}`: {e}")))?;
                s.into_iter().next().map(|s| s.value)
            }
            None => None,
        };
        let pools = [pooled_client(timeout)?, pooled_client(timeout)?];
        let shown = crate::secret::mask_url(&url);
        let uri = url
            .parse::<Uri>()
            .map_err(|e| super::BuildError::Setting(format!("url {shown}: {e}")))?;
        Ok(HttpSink {
            pools,
            uri,
            shown,
            secret,
            timeout,
        })
    }
}

/// `t=<unix>,v1=<hex>` over `"<t>.<body>"`.
pub fn outgoing_signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Reads `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_to_unix(v)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_to_unix(v: &str) -> Option<u64> {
    let format = time::format_description::parse_borrowed::<1>(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
    )
    .ok()?;
    let t = time::PrimitiveDateTime::parse(v, &format)
        .ok()?
        .assume_utc();
    u64::try_from(t.unix_timestamp()).ok()
}

const EVENT_ID: HeaderName = HeaderName::from_static("x-cognihook-event-id");
const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const ATTEMPT: HeaderName = HeaderName::from_static("x-cognihook-attempt");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const SIGNATURE: HeaderName = HeaderName::from_static("x-cognihook-signature");
const BATCH_SIZE: HeaderName = HeaderName::from_static("x-cognihook-batch-size");

/// A header value from text the gateway made or checked (ids are header-safe by then); a
/// value that still cannot be one is left out rather than failing the send.
fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// The events' bodies (each already a JSON object) as one JSON array.
pub fn batch_body(batch: &[Delivery<'_>]) -> Vec<u8> {
    let len = batch.iter().map(|d| d.body.len() + 1).sum::<usize>() + 1;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, d) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(d.body);
    }
    body.push(b']');
    body
}

impl HttpSink {
    /// The signature header of `body`, when the sink has a secret.
    fn signature(&self, body: &[u8]) -> Option<HeaderValue> {
        let secret = self.secret.as_ref()?;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        value(&outgoing_signature(secret, unix, body))
    }

    /// A POST of `body` to the sink's URL with the headers every request carries.
    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("cognihook/", env!("CARGO_PKG_VERSION"))),
        );
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req
    }

    /// Sends `req` and classifies its answer; returns the answer's body, whole when `whole`,
    /// else at most `DRAIN_BYTES` of it, read only so that the connection can be used again
    /// (a body that fails or comes late then does not change the outcome).
    async fn execute(&self, req: Request<Full<Bytes>>, whole: bool) -> Result<Bytes, SinkError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || {
            SinkError::transient(format!(
                "POST {}: timed out after {:?}",
                self.shown, self.timeout
            ))
        };
        let pool = &self.pools[usize::from(crate::priority::is_lowered())];
        let resp = tokio::time::timeout_at(deadline, pool.request(req))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.failed(&e))?;
        let (parts, body) = resp.into_parts();
        classify(&self.shown, parts.status, &parts.headers)?;
        if whole {
            let read = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map_err(|_| timed_out())?;
            return read.map(|b| b.to_bytes()).map_err(|e| {
                SinkError::transient(format!(
                    "POST {}: answer not read: {}",
                    self.shown,
                    crate::with_causes(&e)
                ))
            });
        }
        let _ = tokio::time::timeout_at(deadline, Limited::new(body, DRAIN_BYTES).collect()).await;
        Ok(Bytes::new())
    }

    /// A request that got no answer: always transient.
    fn failed(&self, e: &hyper_util::client::legacy::Error) -> SinkError {
        let what = if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        SinkError::transient(format!(
            "POST {}: {what}: {}",
            self.shown,
            crate::with_causes(e)
        ))
    }

    async fn post_batch(&self, batch: &[Delivery<'_>]) -> Result<(), SinkError> {
        let body = batch_body(batch);
        let signature = self.signature(&body);
        let mut req = self.request(body.into());
        let h = req.headers_mut();
        h.insert(BATCH_SIZE, HeaderValue::from(batch.len()));
        let attempt = batch.iter().map(|d| d.attempt).max().unwrap_or(1);
        h.insert(ATTEMPT, HeaderValue::from(attempt));
        if let Some(v) = batch.first().and_then(|d| d.traceparent).and_then(value) {
            h.insert(TRACEPARENT, v);
        }
        if let Some(v) = signature {
            h.insert(SIGNATURE, v);
        }
        self.execute(req, false).await.map(|_| ())
    }

    async fn post(&self, d: &Delivery<'_>, whole: bool) -> Result<Bytes, SinkError> {
        let mut req = self.request(Bytes::copy_from_slice(d.body));
        let h = req.headers_mut();
        let mut put = |name: HeaderName, v: Option<HeaderValue>| {
            if let Some(v) = v {
                h.insert(name, v);
            }
        };
        put(EVENT_ID, value(d.event_id));
        put(
            CORRELATION_ID,
            value(crate::event::header_safe(d.correlation_id).as_ref()),
        );
        put(ATTEMPT, Some(HeaderValue::from(d.attempt)));
        put(TRACEPARENT, d.traceparent.and_then(value));
        put(SIGNATURE, self.signature(d.body));
        self.execute(req, whole).await
    }
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move { self.post(d, false).await.map(|_| ()) })
    }

    fn send_batch<'a>(&'a self, batch: &'a [Delivery<'a>]) -> SendFuture<'a> {
        Box::pin(self.post_batch(batch))
    }

    fn call<'a>(&'a self, d: &'a Delivery<'a>) -> CallFuture<'a> {
        Box::pin(async move { self.post(d, true).await.map(Some) })
    }
}

/// The pooled client of an http sink: `timeout` for connecting (the whole exchange is timed
/// by `HttpSink::execute`), HTTP/1.1, plain or TLS by the URL's scheme, idle connections
/// kept for 90 s (reqwest's default), nothing followed or retried but a request the pool
/// found its connection closed for before it was written.
fn pooled_client(timeout: Duration) -> Result<Pooled, super::BuildError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(timeout));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(super::BuildError::failed(
            "cannot set up TLS for the HTTP client",
        ))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(tls),
    )
}

/// The reqwest client of the alert and cognigy sinks: its timeout for connecting and for the whole request, no
/// redirects followed (a redirect is an answer, and a permanent one).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, super::BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Failed sends are retried by the delivery policy, not inside the client.
        .retry(reqwest::retry::never())
        .user_agent(concat!("cognihook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(super::BuildError::failed("cannot build the HTTP client"))
}

/// A request that got no answer: always transient. `shown` is the URL as it may be shown;
/// the error's own copy of the URL (which may carry credentials) is left out.
pub(crate) fn request_error(shown: &str, e: reqwest::Error) -> SinkError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    SinkError::transient(format!("POST {shown}: {what}: {}", crate::with_causes(&e)))
}

/// An answer's status as the retry contract sees it: 2xx delivered; 408, 429 and 5xx
/// transient (with `Retry-After`); anything else permanent.
pub(crate) fn classify(
    url: &str,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let message = format!("POST {url}: HTTP {}", status.as_u16());
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        Err(SinkError::Transient {
            message,
            retry_after: retry_after(headers),
        })
    } else {
        Err(SinkError::permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn sink(url: &str, timeout: Duration) -> HttpSink {
        let target = HttpTarget {
            url: crate::secret::SecretUrl::from(url),
            secret: None,
        };
        HttpSink::new(&target, timeout, &std::collections::BTreeMap::new()).expect("sink")
    }

    fn delivery(event_id: &str) -> Delivery<'_> {
        Delivery {
            event_id,
            correlation_id: "c-1",
            route: "r",
            event_type: "t",
            session_id: "s",
            attempt: 1,
            body: b"{\"eventId\":\"e\"}",
            traceparent: None,
        }
    }

    /// A loopback HTTP/1.1 server answering 200 with a short body; counts the connections
    /// it accepted and the event ids it received.
    async fn counting_server() -> (
        String,
        Arc<AtomicUsize>,
        Arc<parking_lot::Mutex<Vec<String>>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/in", listener.local_addr().expect("addr"));
        let (connections, ids) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let (c, seen): (_, Arc<parking_lot::Mutex<Vec<String>>>) =
            (connections.clone(), Arc::clone(&ids));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let id = req
                                .headers()
                                .get("x-cognihook-event-id")
                                .map(|v| v.to_str().unwrap_or("?").to_string());
                            seen.lock().push(id.unwrap_or_default());
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{\"ok\":true}"),
                            )))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (url, connections, ids)
    }

    #[tokio::test]
    async fn sends_read_their_answer_so_one_connection_serves_them_all() {
        let (url, connections, ids) = counting_server().await;
        let sink = sink(&url, Duration::from_secs(5));
        for id in ["e-1", "e-2", "e-3"] {
            sink.send(&delivery(id)).await.expect("delivered");
        }
        assert_eq!(*ids.lock(), ["e-1", "e-2", "e-3"]);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "kept alive and used again"
        );
        let answer = sink.call(&delivery("e-4")).await.expect("answered");
        assert_eq!(
            answer.as_deref(),
            Some(&b"{\"ok\":true}"[..]),
            "call returns the body"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lowered_thread_does_not_share_connections_with_the_others() {
        let (url, connections, _) = counting_server().await;
        let sink = Arc::new(sink(&url, Duration::from_secs(5)));
        sink.call(&delivery("e-1")).await.expect("answered");
        let lowered = sink.clone();
        // A thread of its own, joined off the test's runtime (which serves the answers).
        let thread = std::thread::spawn(move || {
            crate::priority::lower_current_thread(1, "test");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    for id in ["e-2", "e-3"] {
                        lowered.call(&delivery(id)).await.expect("answered");
                    }
                });
        });
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joined")
            .expect("lowered thread");
        sink.call(&delivery("e-4")).await.expect("answered");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "one connection per pool, each used again"
        );
    }

    #[tokio::test]
    async fn an_answer_later_than_the_timeout_is_a_transient_failure() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/in", listener.local_addr().expect("addr"));
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let err = sink(&url, Duration::from_millis(200))
            .send(&delivery("e-1"))
            .await
            .expect_err("no answer");
        held.abort();
        assert!(matches!(err, SinkError::Transient { .. }), "{err:?}");
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    }

    #[tokio::test]
    async fn https_checks_the_certificate_against_the_public_roots() {
        // A TLS server whose certificate (for localhost) no public root signed: the
        // handshake must fail on the client's side, so the request goes out over TLS.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let done = handshakes.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if acceptor.accept(stream).await.is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let err = sink(
            &format!("https://localhost:{port}/in"),
            Duration::from_secs(5),
        )
        .send(&delivery("e-1"))
        .await
        .expect_err("an unknown issuer is refused");
        server.abort();
        assert!(matches!(err, SinkError::Transient { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("connection failed") && text.contains("certificate"),
            "{text}"
        );
        assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = outgoing_signature(b"k", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, outgoing_signature(b"k", 1_700_000_001, b"{}"));
        assert_ne!(a, outgoing_signature(b"k", 1_700_000_000, b"{ }"));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().expect("hv"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        h.insert("retry-after", "soon".parse().expect("hv"));
        assert_eq!(retry_after(&h), None);
    }
}
