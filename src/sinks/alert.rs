//! The sink of an alert target: POSTs the alert an event carries (its `payload`, made by
//! `crate::alerts`) in the target's format: a Slack incoming-webhook message, a Teams
//! message with an Adaptive Card, or the alert itself as JSON (`webhook`). Signed like the
//! http sink when the target has a secret; classified like the http sink (2xx delivered;
//! 408, 429, 5xx and no answer retried; other statuses dead-lettered).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::spec::AlertTarget;
use super::{Delivery, SendFuture, Sink, SinkError};
use crate::config::{AlertFormat, EnvSource};

pub struct AlertSink {
    client: reqwest::Client,
    format: AlertFormat,
    url: String,
    /// How errors name the target: a chat webhook's URL is its credential, so only its host.
    shown: String,
    secret: Option<Vec<u8>>,
}

impl AlertSink {
    pub fn new(
        target: &AlertTarget,
        timeout: Duration,
        env: &dyn EnvSource,
    ) -> Result<AlertSink, super::BuildError> {
        let url = target
            .url
            .resolve(env)
            .map_err(|e| super::BuildError::Setting(format!("url `{}`: {e}", target.url)))?
            .into_iter()
            .next()
            .map(|s| String::from_utf8_lossy(&s.value).trim().to_string())
            .unwrap_or_default();
        if !crate::config::is_web_url(&url) {
            return Err(super::BuildError::Setting(format!(
                "url `{}` is not an absolute http:// or https:// URL",
                target.url
            )));
        }
        let secret = match &target.secret {
            Some(r) => r
                .resolve(env)
                .map_err(|e| super::BuildError::Setting(format!("secret `{r}`: {e}")))?
                .into_iter()
                .next()
                .map(|s| s.value),
            None => None,
        };
        let shown = match url.parse::<http::Uri>() {
            Ok(u) => format!(
                "{}://{}/…",
                u.scheme_str().unwrap_or("https"),
                u.host().unwrap_or("?")
            ),
            Err(_) => "the alert URL".into(),
        };
        Ok(AlertSink {
            client: super::http::client(timeout)?,
            format: target.format,
            url,
            shown,
            secret,
        })
    }
}

impl Sink for AlertSink {
    fn send<'a>(&'a self, d: &'a Delivery<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let event: Value = serde_json::from_slice(d.body)
                .map_err(|e| SinkError::permanent(format!("the alert is not JSON: {e}")))?;
            let alert = event.get("payload").unwrap_or(&Value::Null);
            let body = render(self.format, alert);
            let mut req = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("x-cognihook-event-id", d.event_id)
                .header("x-cognihook-attempt", d.attempt.to_string());
            if let Some(tp) = d.traceparent {
                req = req.header("traceparent", tp);
            }
            if let Some(secret) = &self.secret {
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                req = req.header(
                    "x-cognihook-signature",
                    super::http::outgoing_signature(secret, unix, &body),
                );
            }
            let resp = req
                .body(body)
                .send()
                .await
                .map_err(|e| super::http::request_error(&self.shown, e))?;
            super::http::classify(&self.shown, resp.status(), resp.headers())
        })
    }
}

/// The body a target of `format` receives for `alert`.
pub fn render(format: AlertFormat, alert: &Value) -> Vec<u8> {
    let body = match format {
        AlertFormat::Webhook => alert.clone(),
        AlertFormat::Slack => {
            let mut text = format!("*{}*\n{}", headline(alert), str_of(alert, "summary"));
            for (name, value) in facts(alert) {
                let _ = write!(text, "\n• {name}: {value}");
            }
            if let Some(link) = alert.get("link").and_then(Value::as_str) {
                let _ = write!(text, "\n<{link}|Open in the console>");
            }
            json!({ "text": text })
        }
        AlertFormat::Teams => {
            let content = vec![
                json!({ "type": "TextBlock", "text": headline(alert), "weight": "Bolder",
                        "size": "Medium", "wrap": true }),
                json!({ "type": "TextBlock", "text": str_of(alert, "summary"), "wrap": true }),
                json!({ "type": "FactSet", "facts": facts(alert).into_iter()
                    .map(|(title, value)| json!({ "title": title, "value": value }))
                    .collect::<Vec<_>>() }),
            ];
            let actions: Vec<Value> = alert
                .get("link")
                .and_then(Value::as_str)
                .map(|url| json!({ "type": "Action.OpenUrl", "title": "Open in the console", "url": url }))
                .into_iter()
                .collect();
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": content,
                        "actions": actions,
                    }
                }]
            })
        }
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `[FIRING] critical · circuit_open · sink crm`.
fn headline(alert: &Value) -> String {
    let mut line = format!(
        "[{}] {} · {}",
        str_of(alert, "status").to_uppercase(),
        str_of(alert, "severity"),
        str_of(alert, "kind")
    );
    if let Some(subject) = alert.get("subject").and_then(Value::as_object) {
        for (k, v) in subject {
            let _ = write!(line, " · {k} {}", v.as_str().unwrap_or_default());
        }
    }
    line
}

/// The figures, then the count and where it was seen, as (name, value) pairs.
fn facts(alert: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = alert
        .get("figures")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(n) = alert.get("count").and_then(Value::as_u64) {
        out.push(("count".into(), n.to_string()));
    }
    for key in ["at", "replica"] {
        if let Some(v) = alert.get(key).and_then(Value::as_str) {
            out.push((key.into(), v.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Value {
        json!({
            "kind": "circuit_open", "status": "firing", "severity": "critical",
            "subject": { "sink": "crm" }, "summary": "the circuit of sink `crm` opened",
            "figures": { "timesOpened": 2 }, "count": 2, "at": "2026-11-30T20:00:00.000Z",
            "replica": "h:1", "link": "https://gw.example/console/sinks"
        })
    }

    #[test]
    fn each_format_carries_the_kind_subject_figures_and_link() {
        let slack: Value =
            serde_json::from_slice(&render(AlertFormat::Slack, &alert())).expect("json");
        let text = slack["text"].as_str().expect("text");
        for want in [
            "[FIRING] critical · circuit_open · sink crm",
            "timesOpened: 2",
            "count: 2",
            "<https://gw.example/console/sinks|Open in the console>",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        let teams: Value =
            serde_json::from_slice(&render(AlertFormat::Teams, &alert())).expect("json");
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(
            card["body"][0]["text"],
            "[FIRING] critical · circuit_open · sink crm"
        );
        assert_eq!(
            card["actions"][0]["url"],
            "https://gw.example/console/sinks"
        );
        assert!(card["body"][2]["facts"]
            .as_array()
            .expect("facts")
            .contains(&json!({ "title": "timesOpened", "value": "2" })));
        let plain: Value =
            serde_json::from_slice(&render(AlertFormat::Webhook, &alert())).expect("json");
        assert_eq!(plain, alert());
    }
}
