//! `cognigy` sink: Inject or Notify an event's result into the Cognigy session it came from
//! (cognigy/FACTS.md §2).
//!
//! Two routes: the Endpoint service, `POST {endpoint_url}/{inject|notify}/{URLToken}` (no
//! API key; the URLToken is the credential), or the deprecated v2.0 API,
//! `POST {COGNIGY_API_BASE_URL}/new/v2.0/endpoint/{inject|notify}` with `X-API-Key`. Both get
//! `{userId, sessionId, URLToken, text, data}`; `data` defaults to the late upstream answer on
//! a `respond.on_late` delivery, else the event without its raw payload. An event without a URLToken, a body over
//! Cognigy's 60 kB API limit, or an expression that cannot be evaluated is a permanent
//! failure; the answer is classified as for the `http` sink.

use std::time::Duration;

use serde_json::{Map, Value};

use super::http::{classify, client, request_error};
use super::spec::{CognigyApi, CognigyTarget};
use super::{Delivery, SendFuture, Sink, SinkError};
use crate::config::{CognigyMode, EnvSource};
use crate::expr::EventExpr;

/// Largest JSON body the Cognigy REST API takes (cognigy/FACTS.md §2, "60 kB").
pub const MAX_BODY_BYTES: usize = 60 * 1024;

enum Target {
    /// `{base}/{mode}/{URLToken}`.
    EndpointService { base: String },
    /// `{base}/new/v2.0/endpoint/{mode}` with this key.
    ApiV2 { url: String, key: String },
}

pub struct CognigySink {
    client: reqwest::Client,
    mode: CognigyMode,
    target: Target,
    text: Option<EventExpr>,
    data: Option<EventExpr>,
    attachments: Option<EventExpr>,
    max_age: Option<Duration>,
    /// Extra headers, their values resolved.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl CognigySink {
    pub fn new(
        config: &CognigyTarget,
        timeout: Duration,
        env: &dyn EnvSource,
    ) -> Result<CognigySink, super::BuildError> {
        use super::BuildError::Setting;
        let mode = config.mode;
        let target = match &config.api {
            CognigyApi::EndpointService { base_url } => Target::EndpointService {
                base: base_url.expose().to_string(),
            },
            CognigyApi::V2 => {
                let base = env.get("COGNIGY_API_BASE_URL").ok_or_else(|| {
                    Setting(
                        "api = \"v2\" needs COGNIGY_API_BASE_URL (e.g. https://api-trial.cognigy.ai)"
                            .into(),
                    )
                })?;
                let key_ref = config
                    .secret
                    .clone()
                    .unwrap_or_else(|| "env:COGNIGY_API_KEY".into());
                let key = key_ref
                    .resolve(env)
                    .map_err(|e| Setting(format!("API key `{key_ref}`: {e}")))?
                    .into_iter()
                    .next()
                    .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                    .unwrap_or_default();
                Target::ApiV2 {
                    url: format!(
                        "{}/new/v2.0/endpoint/{}",
                        base.trim_end_matches('/'),
                        mode.name()
                    ),
                    key,
                }
            }
        };
        let compile = |e: &Option<String>, key: &str| {
            e.as_deref()
                .map(EventExpr::compile)
                .transpose()
                .map_err(|why| Setting(format!("{key} {why}")))
        };
        let mut headers = Vec::new();
        for (name, reference) in &config.headers {
            let value = reference
                .resolve(env)
                .map_err(|e| Setting(format!("headers.{name}: {e}")))?
                .into_iter()
                .next()
                .map(|s| s.value)
                .unwrap_or_default();
            let mut value = http::HeaderValue::from_bytes(&value)
                .map_err(|_| Setting(format!("headers.{name}: not a valid header value")))?;
            value.set_sensitive(true);
            headers.push((name.clone(), value));
        }
        Ok(CognigySink {
            client: client(timeout)?,
            mode,
            target,
            text: compile(&config.text, "text")?,
            data: compile(&config.data, "data")?,
            attachments: compile(&config.attachments, "attachments")?,
            max_age: config.max_age,
            headers,
        })
    }

    /// Refuses an event older than `max_age` (its age from the event id's time).
    fn check_age(&self, event_id: &str, now_ms: i64) -> Result<(), SinkError> {
        let Some(max_age) = self.max_age else {
            return Ok(());
        };
        let Ok(id) = ulid::Ulid::from_string(event_id) else {
            return Ok(());
        };
        let age_ms = now_ms.saturating_sub(i64::try_from(id.timestamp_ms()).unwrap_or(0));
        if age_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) {
            return Err(SinkError::Expired {
                message: format!(
                    "accepted {} ago, past max_age {}: Cognigy has likely closed the session",
                    humantime::format_duration(Duration::from_secs(
                        u64::try_from(age_ms / 1000).unwrap_or(0)
                    )),
                    humantime::format_duration(max_age)
                ),
            });
        }
        Ok(())
    }

    /// The URL and JSON body of one call, or why the event cannot be sent at all.
    fn request(&self, event_json: &[u8]) -> Result<(String, Vec<u8>), SinkError> {
        let event: Value = serde_json::from_slice(event_json)
            .map_err(|e| SinkError::permanent(format!("stored event is not JSON: {e}")))?;
        let field = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
        let token = field("urlToken");
        if token.is_empty() {
            return Err(SinkError::permanent(format!(
                "cannot {} into Cognigy: the event has no URLToken (send `URLToken` from the \
                 flow, e.g. \"{{{{input.URLToken}}}}\", on a cognigy-input route)",
                self.mode.name()
            )));
        }
        let text = match &self.text {
            Some(expr) => match expr
                .evaluate(&event)
                .map_err(|e| SinkError::permanent(e.to_string()))?
            {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            },
            // Notify shows a message to the user: by default the late answer's `text`, else
            // the event's own text. Inject needs none.
            None if self.mode == CognigyMode::Notify => event
                .pointer("/upstreamResult/text")
                .and_then(Value::as_str)
                .or_else(|| event.get("text").and_then(Value::as_str))
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        };
        if self.mode == CognigyMode::Notify && text.trim().is_empty() {
            return Err(SinkError::permanent(
                "notify needs a user-visible text and this event gives none: set the sink's \
                 `text` expression (e.g. text = '\"Your order is \" + event.upstreamResult.status')",
            ));
        }
        let attachments = match &self.attachments {
            Some(expr) => match expr
                .evaluate(&event)
                .map_err(|e| SinkError::permanent(e.to_string()))?
            {
                Value::Array(a) => Some(Value::Array(a)),
                Value::Null => None,
                other => {
                    return Err(SinkError::permanent(format!(
                        "attachments must evaluate to a list, got {other}"
                    )))
                }
            },
            None => None,
        };
        let data = match &self.data {
            Some(expr) => match expr
                .evaluate(&event)
                .map_err(|e| SinkError::permanent(e.to_string()))?
            {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                other => {
                    return Err(SinkError::permanent(format!(
                        "data must evaluate to an object, got {other}"
                    )))
                }
            },
            // On an `on_late` row, the late upstream answer; otherwise the event itself.
            None => match event.get("upstreamResult") {
                Some(Value::Object(m)) => m.clone(),
                Some(other) => Map::from_iter([("result".to_string(), other.clone())]),
                None => {
                    let mut m = event.as_object().cloned().unwrap_or_default();
                    m.remove("payload");
                    m
                }
            },
        };
        let mut body = Map::new();
        body.insert("userId".into(), field("userId").into());
        body.insert("sessionId".into(), field("sessionId").into());
        body.insert("URLToken".into(), token.into());
        body.insert("text".into(), text.into());
        body.insert("data".into(), Value::Object(data));
        if let Some(a) = attachments {
            body.insert("attachments".into(), a);
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| SinkError::permanent(format!("cannot encode the body: {e}")))?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(SinkError::permanent(format!(
                "{} body is {} bytes; Cognigy takes at most {MAX_BODY_BYTES}",
                self.mode.name(),
                bytes.len()
            )));
        }
        let url = match &self.target {
            Target::EndpointService { base } => format!("{base}/{}/{token}", self.mode.name()),
            Target::ApiV2 { url, .. } => url.clone(),
        };
        Ok((url, bytes))
    }
}

impl Sink for CognigySink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            self.check_age(d.event_id, crate::now_millis())?;
            let (url, body) = self.request(d.body)?;
            let mut req = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("x-cognihook-event-id", d.event_id)
                .header(
                    "x-correlation-id",
                    crate::event::header_safe(d.correlation_id).as_ref(),
                )
                .body(body);
            if let Target::ApiV2 { key, .. } = &self.target {
                req = req.header("x-api-key", key);
            }
            if let Some(tp) = d.traceparent {
                req = req.header("traceparent", tp);
            }
            for (name, value) in &self.headers {
                req = req.header(name, value);
            }
            // Log the route without the URLToken: it is the session's credential.
            let shown = match &self.target {
                Target::EndpointService { base } => format!("{base}/{}/…", self.mode.name()),
                Target::ApiV2 { url, .. } => url.clone(),
            };
            let resp = req
                .send()
                .await
                .map_err(|e| request_error(&crate::secret::mask_url(&shown), e))?;
            classify(
                &crate::secret::mask_url(&shown),
                resp.status(),
                resp.headers(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    fn sink(extra: &str) -> CognigySink {
        let table: crate::config::SinkConfig = toml::from_str(&format!(
            "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"https://endpoint.example/\"\n{extra}"
        ))
        .unwrap();
        let mut problems = Vec::new();
        let target = super::super::spec::check("c", &table, &mut problems);
        let Some(super::super::spec::Target::Cognigy(target)) = target else {
            panic!("a cognigy target: {problems:?}")
        };
        CognigySink::new(&target, table.timeout, &std::collections::BTreeMap::new()).unwrap()
    }

    fn event(token: Option<&str>) -> Vec<u8> {
        let mut e = serde_json::json!({
            "eventId": "01J", "route": "r", "sessionId": "s-1", "userId": "u-1",
            "eventType": "cognigy.input", "entities": {"orderId": "A-1"},
            "payload": {"raw": true}
        });
        if let Some(t) = token {
            e["urlToken"] = t.into();
        }
        serde_json::to_vec(&e).unwrap()
    }

    fn with(mut e: Vec<u8>, field: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&e).unwrap();
        v[field] = value;
        e = serde_json::to_vec(&v).unwrap();
        e
    }

    #[test]
    fn endpoint_service_route_and_default_body() {
        let ev = with(event(Some("tok")), "text", "where is my order".into());
        let (url, body) = sink("").request(&ev).unwrap();
        assert_eq!(url, "https://endpoint.example/notify/tok");
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["userId"], "u-1");
        assert_eq!(b["sessionId"], "s-1");
        assert_eq!(b["URLToken"], "tok");
        assert_eq!(
            b["text"], "where is my order",
            "notify's text defaults to the event's"
        );
        assert!(b.get("attachments").is_none());
        assert_eq!(b["data"]["entities"]["orderId"], "A-1");
        assert!(b["data"].get("payload").is_none(), "raw payload left out");
    }

    #[test]
    fn text_and_data_expressions() {
        let s = sink(
            "text = '\"Order \" + event.entities.orderId + \" shipped\"'\ndata = '{\"orderId\": event.entities.orderId}'",
        );
        let (_, body) = s.request(&event(Some("tok"))).unwrap();
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["text"], "Order A-1 shipped");
        assert_eq!(b["data"], serde_json::json!({"orderId": "A-1"}));
        let bad = sink("data = 'event.entities.orderId'");
        assert!(matches!(
            bad.request(&event(Some("tok"))),
            Err(SinkError::Permanent { .. })
        ));
    }

    #[test]
    fn notify_takes_the_late_answers_text_and_refuses_to_send_none() {
        let late = with(
            with(event(Some("tok")), "text", "the question".into()),
            "upstreamResult",
            serde_json::json!({"text": "It ships tomorrow", "eta": "2d"}),
        );
        let (_, body) = sink("").request(&late).unwrap();
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["text"], "It ships tomorrow");
        match sink("").request(&event(Some("tok"))) {
            Err(SinkError::Permanent { message }) => assert!(message.contains("`text`")),
            other => panic!("{other:?}"),
        }
        // Inject needs no text.
        let inject: crate::config::SinkConfig = toml::from_str(
            "kind = \"cognigy\"\nmode = \"inject\"\nendpoint_url = \"https://e.example\"\n",
        )
        .unwrap();
        let mut p = Vec::new();
        let Some(super::super::spec::Target::Cognigy(t)) =
            super::super::spec::check("i", &inject, &mut p)
        else {
            panic!("{p:?}")
        };
        let inject = CognigySink::new(&t, inject.timeout, &std::collections::BTreeMap::new())
            .expect("builds");
        let (url, body) = inject.request(&event(Some("tok"))).unwrap();
        assert!(url.ends_with("/inject/tok"));
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["text"], "");
    }

    #[test]
    fn attachments_headers_and_max_age() {
        let s = sink(
            "text = '\"hi\"'\nattachments = '[{\"type\": \"image\", \"url\": \"https://x/\" + event.entities.orderId}]'\n\
             max_age = \"30m\"\nheaders = { \"X-Webhook-Key\" = \"lit-key\" }",
        );
        let (_, body) = s.request(&event(Some("tok"))).unwrap();
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["attachments"][0]["url"], "https://x/A-1");
        assert_eq!(s.headers.len(), 1);
        assert_eq!(s.headers[0].0.as_str(), "x-webhook-key");
        assert_eq!(s.headers[0].1.as_bytes(), b"lit-key");
        let now = crate::now_millis();
        let fresh = ulid::Ulid::from_parts(u64::try_from(now - 60_000).unwrap(), 1).to_string();
        let stale =
            ulid::Ulid::from_parts(u64::try_from(now - 31 * 60_000).unwrap(), 1).to_string();
        assert_eq!(s.check_age(&fresh, now), Ok(()));
        assert!(matches!(
            s.check_age(&stale, now),
            Err(SinkError::Expired { .. })
        ));
    }

    #[test]
    fn missing_token_and_oversized_bodies_are_permanent() {
        match sink("").request(&event(None)) {
            Err(SinkError::Permanent { message }) => assert!(message.contains("URLToken")),
            other => panic!("{other:?}"),
        }
        let big = sink(&format!("text = '\"{}\"'", "x".repeat(MAX_BODY_BYTES)));
        match big.request(&event(Some("tok"))) {
            Err(SinkError::Permanent { message }) => assert!(message.contains("at most")),
            other => panic!("{other:?}"),
        }
    }
}
