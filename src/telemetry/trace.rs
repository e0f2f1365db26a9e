//! OpenTelemetry traces: one trace from Cognigy's request through the gateway to the team's
//! backend and back into Cognigy.
//!
//! - The request span (`POST <route path>`, kind server) continues an incoming W3C
//!   `traceparent`; `auth`, `decode`, `rules`, `commit` and the `respond` upstream call are
//!   its children. Its context travels with the event (`traceparent` in the normalised event).
//! - Each delivery attempt (`deliver <sink>`, kind producer/client) starts a trace of its own
//!   with a *link* to the request span (delivery may happen much later); a `respond` call made
//!   by the request itself is the request span's child instead.
//! - Outgoing requests and messages carry the attempt's `traceparent`.
//!
//! Off (no endpoint, or `OTEL_SDK_DISABLED`), a [`Tracer`] is `None` inside: no span is
//! built, no clock read, nothing allocated. Attributes never carry message text or secrets.
//! Export runs on the SDK's batch thread; its HTTP requests go through the gateway's own
//! client on the main runtime ([`ExportClient`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;

/// `[telemetry]` checked: where to export and how to sample.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The traces URL.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    sampler: SamplerChoice,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentOn,
    ParentOff,
    ParentRatio(f64),
}

impl TraceSettings {
    /// `None` when tracing is off; every problem at once otherwise.
    pub fn check(c: &TelemetryConfig) -> Result<Option<TraceSettings>, Vec<String>> {
        let endpoint = match (&c.traces_endpoint, &c.endpoint) {
            _ if c.disabled => return Ok(None),
            (Some(t), _) => t.trim().to_string(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let mut p = Vec::new();
        if !crate::config::is_web_url(&endpoint) {
            p.push(format!(
                "telemetry: the traces endpoint `{endpoint}` must be an absolute http:// or https:// URL"
            ));
        }
        let pairs = |what: &str, text: &str, p: &mut Vec<String>| -> Vec<(String, String)> {
            text.split(',')
                .filter(|s| !s.trim().is_empty())
                .filter_map(|item| match item.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        let decode = |s: &str| {
                            percent_encoding::percent_decode_str(s.trim())
                                .decode_utf8_lossy()
                                .into_owned()
                        };
                        Some((decode(k), decode(v)))
                    }
                    _ => {
                        p.push(format!(
                            "telemetry.{what}: `key=value` pairs separated by commas"
                        ));
                        None
                    }
                })
                .collect()
        };
        let headers = c
            .headers
            .as_ref()
            .map(|h| pairs("headers", h.expose(), &mut p))
            .unwrap_or_default();
        for (name, _) in &headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("telemetry.headers: `{name}` is not a header name"));
            }
        }
        let resource = c
            .resource_attributes
            .as_deref()
            .map(|r| pairs("resource_attributes", r, &mut p))
            .unwrap_or_default();
        let ratio = |p: &mut Vec<String>| match c.sampler_arg.as_deref().map(str::trim) {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    p.push(format!(
                        "telemetry.sampler_arg `{a}` must be a ratio between 0 and 1"
                    ));
                    1.0
                }
            },
        };
        let sampler = match c
            .sampler
            .as_deref()
            .map(str::trim)
            .unwrap_or("parentbased_always_on")
        {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::Ratio(ratio(&mut p)),
            "parentbased_always_on" => SamplerChoice::ParentOn,
            "parentbased_always_off" => SamplerChoice::ParentOff,
            "parentbased_traceidratio" => SamplerChoice::ParentRatio(ratio(&mut p)),
            other => {
                p.push(format!(
                    "telemetry.sampler `{other}` is not one of always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio"
                ));
                SamplerChoice::ParentOn
            }
        };
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Some(TraceSettings {
            endpoint,
            headers,
            service_name: c
                .service_name
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "cognihook".to_string()),
            resource,
            sampler,
        }))
    }

    fn sampler(&self) -> Sampler {
        match self.sampler {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerChoice::ParentOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerChoice::ParentRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the trace exporter: {0}")]
pub struct TraceStartError(String);

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The gateway's tracer: off (`Tracer::default()`) or exporting.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tracer(on)"
        } else {
            "Tracer(off)"
        })
    }
}

impl Tracer {
    /// Starts exporting to `settings`; must run inside the main runtime (export requests
    /// are sent from it).
    pub fn start(settings: &TraceSettings) -> Result<Tracer, TraceStartError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|e| TraceStartError(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("cognihook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TraceStartError(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ExportClient { client, handle })
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_headers(settings.headers.iter().cloned().collect())
            .build()
            .map_err(|e| TraceStartError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("service.instance.id", crate::replica_id()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(settings.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("cognihook");
        Ok(Tracer(Some(Arc::new(Inner { provider, tracer }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Exports what has ended (blocks; call from a blocking thread).
    pub fn flush(&self) {
        if let Some(i) = &self.0 {
            if let Err(e) = i.provider.force_flush() {
                tracing::warn!(error = %e, "traces could not be exported");
            }
        }
    }

    /// Exports what is left and stops (blocks; call from a blocking thread).
    pub fn shutdown(&self) {
        if let Some(i) = &self.0 {
            let _ = i.provider.shutdown();
        }
    }

    /// The span of one webhook request, continuing the caller's `traceparent`.
    pub fn request(
        &self,
        route_path: &str,
        route: &str,
        headers: &http::HeaderMap,
    ) -> Option<Traced> {
        let inner = self.0.as_ref()?;
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        let span = inner
            .tracer
            .span_builder(format!("POST {route_path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", route_path.to_string()),
                KeyValue::new("url.path", route_path.to_string()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("cognihook.route", route.to_string()),
            ])
            .start_with_context(&inner.tracer, &parent);
        Some(Traced {
            cx: parent.with_span(span),
            inner: inner.clone(),
        })
    }

    /// The span of one delivery attempt: the child of `parent` (a `respond` call made by
    /// the request), or a trace of its own linked to the event's request span.
    pub fn attempt(
        &self,
        sink: &str,
        kind: &'static str,
        attempt: u32,
        parent: Option<&Context>,
        event_traceparent: Option<&str>,
    ) -> Option<Traced> {
        let inner = self.0.as_ref()?;
        let mut builder = inner
            .tracer
            .span_builder(format!("deliver {sink}"))
            .with_kind(if kind == "nats" || kind == "amqp" || kind == "redis" {
                SpanKind::Producer
            } else {
                SpanKind::Client
            })
            .with_attributes([
                KeyValue::new("cognihook.sink", sink.to_string()),
                KeyValue::new("cognihook.sink.kind", kind),
                KeyValue::new("cognihook.attempt", i64::from(attempt)),
            ]);
        let cx = match parent {
            Some(p) => {
                let span = builder.start_with_context(&inner.tracer, p);
                p.with_span(span)
            }
            None => {
                if let Some(linked) = event_traceparent.and_then(parse_traceparent) {
                    builder = builder.with_links(vec![Link::with_context(linked)]);
                }
                let root = Context::new();
                let span = builder.start_with_context(&inner.tracer, &root);
                root.with_span(span)
            }
        };
        Some(Traced {
            cx,
            inner: inner.clone(),
        })
    }
}

/// A span being recorded, with its context (for children and for propagation).
#[derive(Clone)]
pub struct Traced {
    cx: Context,
    inner: Arc<Inner>,
}

impl Traced {
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The W3C `traceparent` of this span (what goes out with requests and messages).
    pub fn traceparent(&self) -> String {
        traceparent(&self.cx.span().span_context().clone())
    }

    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    pub fn span_id(&self) -> String {
        self.cx.span().span_context().span_id().to_string()
    }

    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// A child that already happened (`start` to `end`).
    pub fn child(
        &self,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        let mut span = self
            .inner
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.inner.tracer, &self.cx);
        span.end_with_timestamp(end);
    }

    /// Marks the span failed with `message` (no secret or message text in it).
    pub fn fail(&self, message: impl Into<String>) {
        self.cx.span().set_status(Status::error(message.into()));
    }

    pub fn end(&self) {
        self.cx.span().end();
    }
}

/// `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The span context of a `traceparent` value (version 00), if it is one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", http::HeaderValue::from_str(value).ok()?);
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(&headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The exporter's HTTP client: the gateway's reqwest client, each request run on the main
/// runtime (the SDK's batch thread only waits for it).
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

type ExportResult = Result<http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let task = self.handle.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let mut out = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                out = out.header(name, value);
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        Box::pin(async move { task.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_standard_variables_and_say_what_is_wrong() {
        let env: std::collections::BTreeMap<String, String> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc%3D,team=cx"),
            ("OTEL_SERVICE_NAME", "gw"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut c = TelemetryConfig::default();
        assert!(
            TraceSettings::check(&c).expect("fine").is_none(),
            "off by default"
        );
        c.apply_env(&env);
        let s = TraceSettings::check(&c).expect("valid").expect("on");
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(
            s.headers,
            [
                ("x-api-key".to_string(), "abc=".to_string()),
                ("team".to_string(), "cx".to_string())
            ]
        );
        assert_eq!(s.service_name, "gw");
        assert_eq!(s.sampler, SamplerChoice::ParentRatio(0.25));
        c.traces_endpoint = Some("http://other:4318/custom".into());
        assert_eq!(
            TraceSettings::check(&c)
                .expect("valid")
                .expect("on")
                .endpoint,
            "http://other:4318/custom",
            "the per-signal URL is used as given"
        );
        c.disabled = true;
        assert!(TraceSettings::check(&c).expect("fine").is_none());
        let bad = TelemetryConfig {
            endpoint: Some("collector".into()),
            sampler: Some("sometimes".into()),
            headers: Some("novalue".to_string().into()),
            ..TelemetryConfig::default()
        };
        let p = TraceSettings::check(&bad).expect_err("three problems");
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn traceparent_round_trips_and_garbage_is_no_context() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(value).expect("valid");
        assert_eq!(traceparent(&cx), value);
        assert!(parse_traceparent("00-000-1-01").is_none());
        assert!(parse_traceparent("not a traceparent").is_none());
    }
}
