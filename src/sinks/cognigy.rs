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
        Ok(CognigySink {
            client: client(timeout)?,
            mode,
            target,
            text: compile(&config.text, "text")?,
            data: compile(&config.data, "data")?,
        })
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
            None => String::new(),
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

    #[test]
    fn endpoint_service_route_and_default_body() {
        let (url, body) = sink("").request(&event(Some("tok"))).unwrap();
        assert_eq!(url, "https://endpoint.example/notify/tok");
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["userId"], "u-1");
        assert_eq!(b["sessionId"], "s-1");
        assert_eq!(b["URLToken"], "tok");
        assert_eq!(b["text"], "");
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
