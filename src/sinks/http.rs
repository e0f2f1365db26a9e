//! `http` sink: POST the normalised event as JSON.
//!
//! Headers: `X-Cognihook-Event-Id`, `X-Correlation-Id`, `X-Cognihook-Attempt`, and with a
//! secret `X-Cognihook-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
//! With `batch`, a request carries a JSON array of events instead: `X-Cognihook-Batch-Size`,
//! `X-Cognihook-Attempt` (the highest attempt in it), the signature over the array's bytes,
//! and no per-event id headers (each element has its `eventId` and `correlationId`).
//! 2xx is success; 408, 429, 5xx, timeouts and connection errors are transient (with
//! `Retry-After` honoured); other statuses are permanent. Redirects are not followed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

use super::spec::HttpTarget;
use super::{CallFuture, Delivery, SendFuture, Sink, SinkError};
use crate::config::EnvSource;

pub struct HttpSink {
    client: reqwest::Client,
    /// Parsed once: parsing a URL per send cost ~5 % of a drain's CPU (perf).
    url: reqwest::Url,
    /// The URL as errors show it (credentials masked: see `secret::mask_url`).
    shown: String,
    secret: Option<Vec<u8>>,
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
        let client = client(timeout)?;
        let shown = crate::secret::mask_url(&url);
        let url = reqwest::Url::parse(&url)
            .map_err(|e| super::BuildError::Setting(format!("url {shown}: {e}")))?;
        Ok(HttpSink {
            client,
            shown,
            url,
            secret,
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
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
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

    /// Sends a request made by `post` or `post_batch` and classifies its answer.
    async fn execute(&self, req: reqwest::Request) -> Result<reqwest::Response, SinkError> {
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| request_error(&self.shown, e))?;
        classify(&self.shown, resp.status(), resp.headers())?;
        Ok(resp)
    }

    async fn post_batch(&self, batch: &[Delivery<'_>]) -> Result<(), SinkError> {
        let body = batch_body(batch);
        let mut req = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(BATCH_SIZE, HeaderValue::from(batch.len()));
        let attempt = batch.iter().map(|d| d.attempt).max().unwrap_or(1);
        h.insert(ATTEMPT, HeaderValue::from(attempt));
        if let Some(v) = batch.first().and_then(|d| d.traceparent).and_then(value) {
            h.insert(TRACEPARENT, v);
        }
        if let Some(v) = self.signature(&body) {
            h.insert(SIGNATURE, v);
        }
        *req.body_mut() = Some(body.into());
        self.execute(req).await.map(|_| ())
    }

    async fn post(&self, d: &Delivery<'_>) -> Result<reqwest::Response, SinkError> {
        // Built by hand rather than through RequestBuilder: no URL parse, no header-name
        // parse per send.
        let mut req = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
        *req.body_mut() = Some(d.body.to_vec().into());
        self.execute(req).await
    }
}

impl Sink for HttpSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move { self.post(d).await.map(|_| ()) })
    }

    fn send_batch<'a>(&'a self, batch: &'a [Delivery<'a>]) -> SendFuture<'a> {
        Box::pin(self.post_batch(batch))
    }

    fn call<'a>(&'a self, d: &'a Delivery<'a>) -> CallFuture<'a> {
        Box::pin(async move {
            let resp = self.post(d).await?;
            let body = resp.bytes().await.map_err(|e| {
                SinkError::transient(format!(
                    "POST {}: answer not read: {}",
                    self.shown,
                    e.without_url()
                ))
            })?;
            Ok(Some(body))
        })
    }
}

/// The HTTP client of a sink: its timeout for connecting and for the whole request, no
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
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
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
        let mut h = reqwest::header::HeaderMap::new();
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
