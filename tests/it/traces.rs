//! OpenTelemetry traces against a loopback OTLP/HTTP receiver that decodes what the gateway
//! exports: the request span continues Cognigy's `traceparent`, its stages are its children,
//! a delivery is a trace of its own linked to it, a `respond` call is its child, receivers
//! see the attempt's `traceparent`, and sampling off exports nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::support::otlp_receiver::{OtlpReceiver, SeenSpan};
use crate::support::sink_server::{Reply, SinkServer};
use crate::support::{flow_body, set_routes, TestApp};

const T: Duration = Duration::from_secs(20);
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

/// The test environment plus the standard OTLP variables. The tests' configuration is built
/// without the environment layer, so each test lays them over it
/// (`TelemetryConfig::apply_env`, what `Config::load` does).
fn env_with(receiver: &OtlpReceiver, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = crate::support::env();
    env.insert(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        receiver.base_url.clone(),
    );
    env.insert("OTEL_SERVICE_NAME".into(), "cognihook-test".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    env
}

/// Flushes the exporter until `want` spans have arrived.
async fn spans(
    app: &TestApp,
    receiver: &OtlpReceiver,
    want: impl Fn(&[SeenSpan]) -> bool,
) -> Vec<SeenSpan> {
    let start = std::time::Instant::now();
    loop {
        app.flush_traces().await;
        let got = receiver.spans();
        if want(&got) {
            return got;
        }
        assert!(start.elapsed() < T, "spans so far: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn named<'a>(spans: &'a [SeenSpan], name: &str) -> &'a SeenSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_delivery_are_traced_linked_and_propagated() {
    let receiver = OtlpReceiver::start().await;
    let backend = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", backend.url("/events"));
    let env = env_with(&receiver, &[]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env, |c| {
        c.telemetry.apply_env(&env);
        crate::support::attach_sink(c, "backend", &table);
    })
    .await;
    let body = flow_body("s-trace", "corr-trace");
    let incoming = format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01");
    let r = app
        .post(
            "/webhook",
            &body,
            &[
                ("content-type", "application/json"),
                ("x-cognigy-signature", &crate::support::sign(&body)),
                ("traceparent", &incoming),
                ("tracestate", "vendor=abc"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let event_id = r.json()["data"]["eventId"].as_str().map(str::to_string);
    let got = backend.wait_for(1, T).await;
    let spans = spans(&app, &receiver, |s| {
        s.iter().any(|s| s.name == "deliver backend") && s.iter().any(|s| s.name == "POST /webhook")
    })
    .await;

    let request = named(&spans, "POST /webhook");
    assert_eq!(
        request.trace_id, INCOMING_TRACE,
        "continues Cognigy's trace"
    );
    assert_eq!(request.parent_span_id, INCOMING_SPAN);
    assert_eq!(request.kind, 2, "server");
    assert_eq!(request.service, "cognihook-test");
    let a = &request.attributes;
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["http.route"], "/webhook");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["cognihook.route"], "flow-events");
    assert_eq!(a["cognihook.correlation_id"], "corr-trace");
    assert_eq!(a["cognihook.session_id"], "s-trace");
    if let Some(id) = &event_id {
        assert_eq!(&a["cognihook.event_id"], id);
    }
    for stage in ["auth", "decode", "rules", "commit"] {
        let s = named(&spans, stage);
        assert_eq!(s.trace_id, request.trace_id, "{stage}");
        assert_eq!(
            s.parent_span_id, request.span_id,
            "{stage} is the request's child"
        );
    }
    let commit = named(&spans, "commit");
    assert!(
        commit.attributes["cognihook.commit.group_size"]
            .parse::<u32>()
            .is_ok_and(|n| n >= 1),
        "{commit:?}"
    );
    assert_eq!(commit.attributes["cognihook.outbox_rows"], "1");

    let deliver = named(&spans, "deliver backend");
    assert_ne!(deliver.trace_id, request.trace_id, "a trace of its own");
    assert!(deliver.parent_span_id.is_empty() || deliver.parent_span_id == "0000000000000000");
    assert_eq!(
        deliver.links,
        [(request.trace_id.clone(), request.span_id.clone())],
        "linked to the request span"
    );
    assert_eq!(deliver.kind, 3, "client");
    assert_eq!(deliver.attributes["cognihook.sink"], "backend");
    assert_eq!(deliver.attributes["cognihook.attempt"], "1");
    assert_eq!(deliver.attributes["cognihook.outcome"], "delivered");
    assert_eq!(deliver.attributes["cognihook.correlation_id"], "corr-trace");
    // The receiving backend sees the attempt's context.
    assert_eq!(
        got[0].headers["traceparent"],
        format!("00-{}-{}-01", deliver.trace_id, deliver.span_id).as_str()
    );
    // The event carries the request span's context (what the link is made from).
    assert_eq!(
        got[0].body["traceparent"],
        format!("00-{}-{}-01", request.trace_id, request.span_id)
    );
    // Never message text or secrets.
    for s in &spans {
        for v in s.attributes.values() {
            assert!(!v.contains("Check order status"), "{s:?}");
            assert!(!v.contains(crate::support::SECRET), "{s:?}");
        }
    }
    assert!(receiver
        .content_types()
        .iter()
        .all(|c| c == "application/x-protobuf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_attempt_is_recorded_with_its_class() {
    let receiver = OtlpReceiver::start().await;
    let backend = SinkServer::start().await;
    backend.script(1, Reply::Status(503));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 3, base_delay = \"10ms\", max_delay = \"20ms\" }}",
        backend.url("/events")
    );
    let env = env_with(&receiver, &[]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env, |c| {
        c.telemetry.apply_env(&env);
        crate::support::attach_sink(c, "backend", &table);
    })
    .await;
    let r = app
        .post_signed("/webhook", &flow_body("s-fail", "corr-fail"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    backend.wait_for(2, T).await;
    let spans = spans(&app, &receiver, |s| {
        s.iter().filter(|s| s.name == "deliver backend").count() == 2
    })
    .await;
    let mut attempts: Vec<&SeenSpan> = spans
        .iter()
        .filter(|s| s.name == "deliver backend")
        .collect();
    attempts.sort_by_key(|s| s.attributes["cognihook.attempt"].clone());
    assert_eq!(attempts[0].attributes["cognihook.outcome"], "retry");
    assert_eq!(attempts[0].attributes["error.type"], "transient");
    assert_eq!(attempts[0].status_code, 2, "error status");
    assert_eq!(attempts[1].attributes["cognihook.attempt"], "2");
    assert_eq!(attempts[1].attributes["cognihook.outcome"], "delivered");
    let request = named(&spans, "POST /webhook");
    for a in &attempts {
        assert_eq!(
            a.links,
            [(request.trace_id.clone(), request.span_id.clone())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_respond_call_is_the_request_spans_child_and_carries_its_context() {
    let receiver = OtlpReceiver::start().await;
    let upstream = SinkServer::start().await;
    upstream.set_fallback(Reply::Body(200, r#"{"orderStatus":"shipped"}"#));
    let routes = r#"
[[route]]
name = "orders"
path = "/orders"
payload = "cognigy-input"
auth = { scheme = "api-key", keys = ["k"] }
respond = { upstream = "orders-api", within = "3s" }
"#;
    let api = format!("kind = \"http\"\nurl = \"{}\"", upstream.url("/status"));
    let env = env_with(&receiver, &[]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env, |c| {
        c.telemetry.apply_env(&env);
        set_routes(c, routes);
        c.sinks
            .insert("orders-api".into(), toml::from_str(&api).unwrap());
    })
    .await;
    let body = serde_json::to_vec(&json!({
        "userId": "u1", "sessionId": "s-respond", "text": "where is my order",
        "traceId": "cognigy-trace-77"
    }))
    .unwrap();
    let r = app
        .post(
            "/orders",
            &body,
            &[("content-type", "application/json"), ("x-api-key", "k")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let got = upstream.wait_for(1, T).await;
    let spans = spans(&app, &receiver, |s| {
        s.iter().any(|s| s.name == "deliver orders-api")
            && s.iter().any(|s| s.name == "POST /orders")
    })
    .await;
    let request = named(&spans, "POST /orders");
    assert_eq!(request.attributes["cognigy.trace_id"], "cognigy-trace-77");
    let call = named(&spans, "deliver orders-api");
    assert_eq!(call.trace_id, request.trace_id, "the request's own call");
    assert_eq!(call.parent_span_id, request.span_id);
    assert!(call.links.is_empty());
    assert_eq!(
        got[0].headers["traceparent"],
        format!("00-{}-{}-01", call.trace_id, call.span_id).as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_off_exports_nothing() {
    let receiver = OtlpReceiver::start().await;
    let backend = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", backend.url("/events"));
    let env_off = env_with(&receiver, &[("OTEL_TRACES_SAMPLER", "always_off")]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env_off, |c| {
        c.telemetry.apply_env(&env_off);
        crate::support::attach_sink(c, "backend", &table);
    })
    .await;
    for i in 0..3 {
        let r = app
            .post_signed("/webhook", &flow_body("s-off", &format!("off-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let got = backend.wait_for(3, T).await;
    // Tracing is on (contexts still propagate, marked not sampled), but nothing is recorded.
    for r in &got {
        let tp = r.headers["traceparent"].to_str().unwrap();
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    }
    // Settled deliveries have ended their spans; a flush exports whatever was sampled.
    app.flush_traces().await;
    app.flush_traces().await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

/// Log lines written while a request is handled, captured in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

// One thread: the gateway's tasks run where the capturing subscriber is set.
#[tokio::test(flavor = "current_thread")]
async fn log_lines_of_a_traced_request_carry_its_trace_and_span_ids() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(cognihook::telemetry::json_logs(
        tracing_subscriber::EnvFilter::new("info"),
        captured.clone(),
    ));
    let receiver = OtlpReceiver::start().await;
    let env = env_with(&receiver, &[]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env, |c| {
        c.telemetry.apply_env(&env);
        // An answer this small cannot be sent: the request logs why, inside its span.
        c.routes[0].max_response_bytes = Some(16);
    })
    .await;
    let body = flow_body("s-log", "corr-log");
    let incoming = format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01");
    let r = app
        .post(
            "/webhook",
            &body,
            &[
                ("content-type", "application/json"),
                ("x-cognigy-signature", &crate::support::sign(&body)),
                ("traceparent", &incoming),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", r.body);
    let spans = spans(&app, &receiver, |s| {
        s.iter().any(|s| s.name == "POST /webhook")
    })
    .await;
    let request = named(&spans, "POST /webhook");
    assert_eq!(request.status_code, 2, "a 500 marks the span failed");
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|l: &serde_json::Value| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("event not accepted"))
        })
        .unwrap_or_else(|| panic!("no line about the refused event in:\n{text}"));
    assert_eq!(line["span"]["trace_id"], INCOMING_TRACE, "{line}");
    assert_eq!(line["span"]["span_id"], request.span_id.as_str(), "{line}");
}

fn broker(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("{var} is not set: this part of the test does not run");
            None
        }
    }
}

/// Each delivery's `traceparent` as its receiver saw it, checked against the attempt spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognigy_calls_and_broker_messages_carry_the_attempts_traceparent() {
    use crate::support::cognigy_emulator::{CognigyEmulator, URL_TOKEN};
    use futures_util::StreamExt as _;
    let receiver = OtlpReceiver::start().await;
    let cognigy = CognigyEmulator::start().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut sinks = vec![(
        "cognigy".to_string(),
        format!(
            "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"",
            cognigy.base_url()
        ),
    )];
    let redis_url = broker("COGNIHOOK_TEST_REDIS_URL");
    let stream = format!("cognihook-trace-{tag}");
    if let Some(url) = &redis_url {
        sinks.push((
            "redis".into(),
            format!("kind = \"redis\"\nurl = \"{url}\"\nstream = \"{stream}\""),
        ));
    }
    let nats_url = broker("COGNIHOOK_TEST_NATS_URL");
    let mut nats_stream = None;
    if let Some(url) = &nats_url {
        let client = async_nats::connect(url.as_str()).await.unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_NATS_URL={url} is set but NATS is unreachable: {e}")
        });
        let js = async_nats::jetstream::new(client);
        let s = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: format!("COGNIHOOK_TRACE_{tag}"),
                subjects: vec![format!("trace-{tag}.>")],
                ..Default::default()
            })
            .await
            .expect("create test stream");
        nats_stream = Some((js, s));
        sinks.push((
            "nats".into(),
            format!("kind = \"nats\"\nurl = \"{url}\"\nsubject = \"trace-{tag}.x\""),
        ));
    }
    let amqp_url = broker("COGNIHOOK_TEST_AMQP_URL");
    let mut amqp = None;
    if let Some(url) = &amqp_url {
        use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("COGNIHOOK_TEST_AMQP_URL={url} is set but RabbitMQ is unreachable: {e}")
            });
        let ch = conn.create_channel().await.unwrap();
        let (exchange, queue) = (format!("cht-trace-{tag}"), format!("cht-trace-q-{tag}"));
        let auto = ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        ch.exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            auto,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(queue.as_str().into(), q, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "traced".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        sinks.push((
            "amqp".into(),
            format!("kind = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\nrouting_key = \"traced\""),
        ));
        amqp = Some((conn, ch, queue));
    }
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    let routes = format!(
        "[[route]]\nname = \"traced\"\npath = \"/traced\"\npayload = \"cognigy-input\"\n\
         auth = {{ scheme = \"api-key\", keys = [\"k\"] }}\nsinks = {names:?}\n"
    );
    let env = env_with(&receiver, &[]);
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &env, |c| {
        c.telemetry.apply_env(&env);
        set_routes(c, &routes);
        for (name, table) in &sinks {
            c.sinks.insert(name.clone(), toml::from_str(table).unwrap());
        }
        c.delivery.poll_interval = Duration::from_millis(20);
    })
    .await;
    let body = serde_json::to_vec(&json!({
        "userId": "u1", "sessionId": "s-kinds", "URLToken": URL_TOKEN, "text": "hello"
    }))
    .unwrap();
    let r = app
        .post(
            "/traced",
            &body,
            &[("content-type", "application/json"), ("x-api-key", "k")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let spans = spans(&app, &receiver, |s| {
        names
            .iter()
            .all(|n| s.iter().any(|s| s.name == format!("deliver {n}")))
    })
    .await;
    let expected = |sink: &str| {
        let s = named(&spans, &format!("deliver {sink}"));
        assert_eq!(s.attributes["cognihook.outcome"], "delivered", "{s:?}");
        format!("00-{}-{}-01", s.trace_id, s.span_id)
    };
    let calls = cognigy.accepted();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].headers["traceparent"],
        expected("cognigy").as_str()
    );
    assert_eq!(named(&spans, "deliver cognigy").kind, 3, "client");
    if let Some(url) = &redis_url {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let field = entries[0]
            .1
            .iter()
            .find(|(k, _)| k == "traceparent")
            .map(|(_, v)| v.clone());
        assert_eq!(field, Some(expected("redis")));
        assert_eq!(named(&spans, "deliver redis").kind, 4, "producer");
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    if let Some((js, s)) = nats_stream {
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut msgs = consumer.fetch().max_messages(1).messages().await.unwrap();
        let m = msgs.next().await.expect("a message").unwrap();
        let h = m.headers.clone().unwrap_or_default();
        assert_eq!(
            h.get("traceparent").map(|v| v.to_string()),
            Some(expected("nats"))
        );
        js.delete_stream(format!("COGNIHOOK_TRACE_{tag}"))
            .await
            .unwrap();
    }
    if let Some((_conn, ch, queue)) = amqp {
        let m = ch
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a message");
        let headers = m.properties.headers().clone().unwrap_or_default();
        let tp = headers
            .inner()
            .get("traceparent")
            .and_then(|v| v.as_long_string())
            .map(|s| s.to_string());
        assert_eq!(tp, Some(expected("amqp")));
    }
}
