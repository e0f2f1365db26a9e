//! Sinks against the real brokers on this machine. Each test runs when its variable is set
//! (`.ci/run` sets them all) and fails loudly when the variable is set but the broker is
//! unreachable: `COGNIHOOK_TEST_NATS_URL`, `COGNIHOOK_TEST_REDIS_URL`, `COGNIHOOK_TEST_AMQP_URL`.

use std::time::Duration;

use cognihook::config::Config;
use futures_util::StreamExt;
use serde_json::Value;

use crate::support::sink_server::wait_until;
use crate::support::{count, flow_body, TestApp};

const T: Duration = Duration::from_secs(30);

fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("{var} is not set: this broker test does not run");
            None
        }
    }
}

fn with_sink(c: &mut Config, table: &str) {
    crate::support::attach_sink(c, "broker", table);
}

const FAST: &str =
    "timeout = \"3s\"\nretry = { max_attempts = 3, base_delay = \"10ms\", max_delay = \"40ms\" }\n\
                    breaker = { failure_threshold = 1000 }";

async fn send(app: &TestApp, n: usize, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let corr = format!("{prefix}-{i}");
        let r = app
            .post_signed("/webhook", &flow_body(&format!("s-{prefix}"), &corr))
            .await;
        assert_eq!(r.status, http::StatusCode::OK);
        out.push(corr);
    }
    out
}

fn delivered(app: &TestApp) -> i64 {
    count(
        &app.db_now(),
        "SELECT count(*) FROM outbox WHERE status = 'delivered'",
    )
}

fn event_ids(app: &TestApp) -> std::collections::BTreeSet<String> {
    let db = app.db_now();
    let mut st = db.prepare("SELECT event_id FROM all_events").unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_receives_every_event_with_its_id_and_a_missing_stream_is_named() {
    let Some(url) = service("COGNIHOOK_TEST_NATS_URL") else {
        return;
    };
    let client = async_nats::connect(url.as_str()).await.unwrap_or_else(|e| {
        panic!("COGNIHOOK_TEST_NATS_URL={url} is set but NATS is unreachable: {e}")
    });
    let js = async_nats::jetstream::new(client);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let stream_name = format!("COGNIHOOK_TEST_{tag}");
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("cht-{tag}.>")],
            ..Default::default()
        })
        .await
        .expect("create test stream");

    let table = format!(
        "kind = \"nats\"\nurl = \"{url}\"\nsubject = \"cht-{tag}.{{route}}.{{eventType}}\"\n{FAST}"
    );
    let app = TestApp::spawn_with(|c| with_sink(c, &table)).await;
    send(&app, 5, "nats").await;
    wait_until("5 delivered to NATS", T, || delivered(&app) == 5).await;
    assert_eq!(stream.info().await.unwrap().state.messages, 5);

    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.fetch().max_messages(5).messages().await.unwrap();
    let ids = event_ids(&app);
    let mut seen = 0;
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        assert_eq!(
            m.subject.as_str(),
            format!("cht-{tag}.flow-events.flow.execution")
        );
        let h = m.headers.clone().unwrap_or_default();
        let id = h
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.to_string())
            .unwrap_or_else(|| panic!("no Nats-Msg-Id in {h:?}"));
        assert!(ids.contains(&id));
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["eventId"], id.as_str());
        seen += 1;
    }
    assert_eq!(seen, 5);
    let _ = app.stop().await;

    // A subject no stream captures: the error says so, and the event is dead-lettered.
    let table = format!("kind = \"nats\"\nurl = \"{url}\"\nsubject = \"nostream-{tag}.x\"\n{FAST}");
    let app = TestApp::spawn_with(|c| with_sink(c, &table)).await;
    send(&app, 1, "nostream").await;
    wait_until("dead letter", T, || {
        count(
            &app.db_now(),
            "SELECT count(*) FROM outbox WHERE status = 'dead'",
        ) == 1
    })
    .await;
    let err: String = app
        .db()
        .await
        .query_row("SELECT last_error FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert!(
        err.contains("no JetStream stream captures subject"),
        "{err}"
    );
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_receives_every_event_as_fields() {
    let Some(url) = service("COGNIHOOK_TEST_REDIS_URL") else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_REDIS_URL={url} is set but Redis is unreachable: {e}")
        });
    let stream = format!("cognihook-test-{}", uuid::Uuid::new_v4().simple());
    let table =
        format!("kind = \"redis\"\nurl = \"{url}\"\nstream = \"{stream}\"\nmaxlen = 1000\n{FAST}");
    let app = TestApp::spawn_with(|c| with_sink(c, &table)).await;
    send(&app, 6, "redis").await;
    wait_until("6 delivered to Redis", T, || delivered(&app) == 6).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), 6);
    let ids = event_ids(&app);
    for (_, fields) in &entries {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert!(ids.contains(&get("eventId")));
        assert_eq!(get("route"), "flow-events");
        let event: Value = serde_json::from_str(&get("event")).unwrap();
        assert_eq!(event["eventId"], get("eventId").as_str());
    }
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_wrong_password_reports_the_refusal_not_a_timeout() {
    let Some(url) = service("COGNIHOOK_TEST_REDIS_URL") else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_REDIS_URL={url} is set but Redis is unreachable: {e}")
        });
    // A user Redis does not know: the server refuses AUTH at once, and the dead letter names
    // that refusal (src/sinks/redis.rs counts the connections one send makes).
    let wrong = url.replacen("redis://", "redis://cognihook-nobody:wrong-pass@", 1);
    assert_ne!(wrong, url, "the test URL starts with redis://");
    let table = format!(
        "kind = \"redis\"\nurl = \"{wrong}\"\nstream = \"never\"\ntimeout = \"60s\"\n\
         retry = {{ max_attempts = 1 }}"
    );
    let app = TestApp::spawn_with(|c| with_sink(c, &table)).await;
    send(&app, 1, "redis-auth").await;
    let dead = || async {
        let dl = app.admin_get("/admin/dead-letters").await.json();
        dl["items"][0]["lastError"].as_str().map(str::to_string)
    };
    let deadline = std::time::Instant::now() + T;
    let error = loop {
        if let Some(e) = dead().await {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lower = error.to_lowercase();
    assert!(
        lower.contains("wrongpass") || lower.contains("auth"),
        "the refusal is named: {error}"
    );
    assert!(!lower.contains("timed out"), "{error}");
    assert!(
        !error.contains("wrong-pass"),
        "the password is masked: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_gets_persistent_confirmed_messages_and_the_sink_reconnects() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let Some(url) = service("COGNIHOOK_TEST_AMQP_URL") else {
        return;
    };
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_AMQP_URL={url} is set but RabbitMQ is unreachable: {e}")
        });
    let ch = conn.create_channel().await.unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("cognihook-test-{tag}");
    let queue = format!("cognihook-test-q-{tag}");
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "flow-events".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let table = format!(
        "kind = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\nrouting_key = \"{{route}}\"\n{FAST}"
    );
    let app = TestApp::spawn_with(|c| with_sink(c, &table)).await;
    send(&app, 3, "amqp").await;
    wait_until("3 delivered to RabbitMQ", T, || delivered(&app) == 3).await;

    // The broker drops every connection (as on a restart): the sink must connect again.
    let closed = std::process::Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "cognihook test: simulated broker restart",
        ])
        .output();
    match closed {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "this test closes the broker's connections with rabbitmqctl, which failed: {other:?}"
        ),
    }
    // Our own connection was closed too; open another.
    drop(ch);
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    send(&app, 3, "amqp-after").await;
    wait_until(
        "3 more delivered after the connection was closed",
        T,
        || delivered(&app) == 6,
    )
    .await;

    let ids = event_ids(&app);
    let mut got = 0;
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = m.properties.message_id().as_ref().unwrap().to_string();
        assert!(ids.contains(&id));
        assert_eq!(*m.properties.delivery_mode(), Some(2), "persistent");
        let body: Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(body["eventId"], id.as_str());
        got += 1;
    }
    assert_eq!(got, 6);
}
