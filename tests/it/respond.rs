//! Answers from a backend inside Cognigy's deadline (SPEC §5.1): an upstream that answers in
//! time gives a 200 with its JSON as `data`; a slow or failing one gives a 202 before the
//! deadline, and its answer, when it comes, is delivered to `on_late` (here a `cognigy`
//! sink, against the Cognigy emulator) like any other delivery.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::cognigy_emulator::{CognigyEmulator, URL_TOKEN};
use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{count, set_routes, TestApp};

const T: Duration = Duration::from_secs(20);
const KEY: (&str, &str) = ("x-api-key", "k");
const JSON: (&str, &str) = ("content-type", "application/json");
const STATUS: &str = r#"{"orderStatus":"shipped","eta":"tomorrow"}"#;

async fn spawn(
    upstream: &SinkServer,
    cognigy: &CognigyEmulator,
    within: &str,
    deadline: Duration,
) -> TestApp {
    spawn_limited(upstream, cognigy, within, deadline, 8).await
}

async fn spawn_limited(
    upstream: &SinkServer,
    cognigy: &CognigyEmulator,
    within: &str,
    deadline: Duration,
    concurrency: usize,
) -> TestApp {
    spawn_capped(upstream, cognigy, within, deadline, concurrency, "").await
}

/// `extra` is added to the route's table (e.g. `max_response_bytes = 1024`).
async fn spawn_capped(
    upstream: &SinkServer,
    cognigy: &CognigyEmulator,
    within: &str,
    deadline: Duration,
    concurrency: usize,
    extra: &str,
) -> TestApp {
    let routes = format!(
        r#"
[[route]]
name = "orders"
path = "/orders"
payload = "cognigy-input"
auth = {{ scheme = "api-key", keys = ["k"] }}
extract = {{ city = "event.entities.city" }}
respond = {{ upstream = "orders-api", within = "{within}", on_late = "cognigy" }}
{extra}
"#
    );
    let api = format!(
        "kind = \"http\"\nurl = \"{}\"\ntimeout = \"5s\"\nconcurrency = {concurrency}\n\
         retry = {{ max_attempts = 4, base_delay = \"10ms\", max_delay = \"40ms\" }}",
        upstream.url("/status")
    );
    let late = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"\n\
         text = '\"Your order is \" + event.upstreamResult.orderStatus'",
        cognigy.base_url()
    );
    TestApp::spawn_with(|c| {
        set_routes(c, &routes);
        c.limits.deadline = deadline;
        c.server.shutdown_grace = Duration::from_millis(200);
        c.sinks
            .insert("orders-api".into(), toml::from_str(&api).unwrap());
        c.sinks
            .insert("cognigy".into(), toml::from_str(&late).unwrap());
        c.delivery.poll_interval = Duration::from_millis(20);
    })
    .await
}

fn input(session: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "userId": "user123", "sessionId": session, "URLToken": URL_TOKEN,
        "text": "where is my order", "slots": {"city": [{"keyphrase": "Bonn"}]}
    }))
    .unwrap()
}

fn rows(app: &TestApp, sink: &str, status: &str) -> i64 {
    count(
        &app.db_now(),
        &format!("SELECT count(*) FROM outbox WHERE sink = '{sink}' AND status = '{status}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_in_time_answers_200_with_its_json_as_data() {
    let upstream = SinkServer::start().await;
    upstream.set_fallback(Reply::Body(200, STATUS));
    let cognigy = CognigyEmulator::start().await;
    let app = spawn(&upstream, &cognigy, "3s", Duration::from_secs(7)).await;

    let r = app.post("/orders", &input("s-fast"), &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["status"], "success");
    assert_eq!(j["data"]["orderStatus"], "shipped");
    assert_eq!(j["data"]["city"], "Bonn", "the route's own extracts stay");
    assert_eq!(j["data"]["stateVersion"], 1);
    let sent: Value = upstream.received()[0].body.clone();
    assert_eq!(
        sent["sessionId"], "s-fast",
        "the upstream gets the normalised event"
    );

    wait_until("upstream row delivered", T, || {
        rows(&app, "orders-api", "delivered") == 1
    })
    .await;
    assert_eq!(
        count(
            &app.db().await,
            "SELECT count(*) FROM outbox WHERE sink = 'cognigy'"
        ),
        0
    );
    // A duplicate gets the upstream's answer, not the provisional 202.
    let again = app.post("/orders", &input("s-fast"), &[JSON, KEY]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["data"]["orderStatus"], "shipped");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_a_202_and_its_late_answer_is_notified_into_the_session() {
    let upstream = SinkServer::start().await;
    upstream.set_fallback(Reply::GatedBody(STATUS));
    let cognigy = CognigyEmulator::start().await;
    let app = spawn(&upstream, &cognigy, "200ms", Duration::from_secs(7)).await;

    let r = app.post("/orders", &input("s-slow"), &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["status"], "accepted");
    assert_eq!(j["data"]["stateVersion"], 1);
    let event_id: String = app
        .db()
        .await
        .query_row("SELECT event_id FROM all_events", [], |r| r.get(0))
        .unwrap();
    // The upstream is still holding the call; nothing has gone to Cognigy yet.
    assert_eq!(upstream.received().len(), 1);
    assert!(upstream.received()[0].answered.is_none());
    assert!(cognigy.accepted().is_empty());

    upstream.open_gate(1);
    wait_until("the late answer notified", T, || {
        cognigy.accepted().len() == 1
    })
    .await;
    let call = &cognigy.accepted()[0];
    assert_eq!(call.body["text"], "Your order is shipped");
    assert_eq!(
        call.body["data"],
        serde_json::from_str::<Value>(STATUS).unwrap()
    );
    assert_eq!(call.body["sessionId"], "s-slow");
    wait_until("both rows delivered", T, || {
        rows(&app, "orders-api", "delivered") == 1 && rows(&app, "cognigy", "delivered") == 1
    })
    .await;

    let journey = app
        .admin_get(&format!("/admin/events/{event_id}"))
        .await
        .json();
    let sinks: Vec<_> = journey["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["sink"].as_str().unwrap().to_string(), d["status"].clone()))
        .collect();
    assert!(
        sinks.contains(&("orders-api".into(), "delivered".into())),
        "{journey}"
    );
    assert!(
        sinks.contains(&("cognigy".into(), "delivered".into())),
        "{journey}"
    );
    // The request was answered 202; a duplicate gets that answer again.
    let again = app.post("/orders", &input("s-slow"), &[JSON, KEY]).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_retried_and_its_answer_still_reaches_on_late() {
    let upstream = SinkServer::start().await;
    upstream.script(2, Reply::Status(503));
    upstream.set_fallback(Reply::Body(200, STATUS));
    let cognigy = CognigyEmulator::start().await;
    let app = spawn(&upstream, &cognigy, "2s", Duration::from_secs(7)).await;

    let r = app.post("/orders", &input("s-fail"), &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_until("notified after retries", T, || {
        cognigy.accepted().len() == 1
    })
    .await;
    assert_eq!(cognigy.accepted()[0].body["data"]["orderStatus"], "shipped");
    let attempts = count(
        &app.db().await,
        "SELECT attempts FROM outbox WHERE sink = 'orders-api'",
    );
    assert_eq!(attempts, 3);
    assert_eq!(upstream.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_never_outlives_the_deadline() {
    let upstream = SinkServer::start().await;
    upstream.set_fallback(Reply::GatedBody(STATUS));
    let cognigy = CognigyEmulator::start().await;
    // within is nearly the whole deadline; the request still answers 202, not 503.
    let app = spawn(&upstream, &cognigy, "950ms", Duration::from_secs(1)).await;
    let r = app
        .post("/orders", &input("s-deadline"), &[JSON, KEY])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    upstream.open_gate(1);

    let mut c = cognihook::config::Config::default();
    set_routes(
        &mut c,
        r#"
[[route]]
name = "r"
path = "/r"
payload = "cognigy-input"
auth = { scheme = "api-key", keys = ["k"] }
sinks = ["api", "late"]
respond = { upstream = "api", within = "8s", on_late = "nowhere" }

[[route]]
name = "r2"
path = "/r2"
payload = "cognigy-input"
auth = { scheme = "api-key", keys = ["k"] }
sinks = ["late"]
respond = { upstream = "api", within = "1s", on_late = "late" }
"#,
    );
    c.sinks.insert(
        "api".into(),
        toml::from_str("kind = \"file\"\npath = \"x.jsonl\"").unwrap(),
    );
    c.sinks.insert(
        "late".into(),
        toml::from_str("kind = \"file\"\npath = \"y.jsonl\"").unwrap(),
    );
    let problems = c.validate().join("\n");
    for want in [
        "respond.upstream `api` must be an http sink, not file",
        "respond.upstream `api` is also in `sinks`",
        "respond.on_late `nowhere` is not defined",
        "respond.within must be greater than 0 and less than limits.deadline (7s)",
        "route `r2`: respond.on_late `late` is also in `sinks`",
    ] {
        assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inline_call_keeps_to_the_upstreams_concurrency() {
    let upstream = SinkServer::start().await;
    upstream.set_fallback(Reply::GatedBody(STATUS));
    let cognigy = CognigyEmulator::start().await;
    let app = std::sync::Arc::new(
        spawn_limited(&upstream, &cognigy, "5s", Duration::from_secs(7), 1).await,
    );

    // The first request's call holds the upstream's only slot.
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/orders", &input("s-c1"), &[JSON, KEY]).await })
    };
    wait_until("the first call in flight", T, || {
        upstream.received().len() == 1
    })
    .await;
    // The second does not wait for a slot: 202 at once, its call left to the workers, which
    // keep to the same slot.
    let second = app.post("/orders", &input("s-c2"), &[JSON, KEY]).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{:?}", second.body);
    assert_eq!(upstream.received().len(), 1, "no second call in parallel");

    upstream.open_gate(2);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    wait_until("both upstream rows delivered", T, || {
        rows(&app, "orders-api", "delivered") == 2
    })
    .await;
    let calls = upstream.received();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].arrived >= calls[0].answered.expect("answered"),
        "the workers' call started only after the first one ended"
    );
    wait_until("the late answer notified", T, || {
        cognigy.accepted().len() == 1
    })
    .await;
    assert_eq!(cognigy.accepted()[0].body["sessionId"], "s-c2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_routes_cap_answers_202_and_goes_to_on_late() {
    let upstream = SinkServer::start().await;
    let big: &'static str = Box::leak(
        format!(
            r#"{{"orderStatus":"shipped","history":"{}"}}"#,
            "x".repeat(2000)
        )
        .into_boxed_str(),
    );
    upstream.set_fallback(Reply::Body(200, big));
    let cognigy = CognigyEmulator::start().await;
    let app = spawn_capped(
        &upstream,
        &cognigy,
        "3s",
        Duration::from_secs(7),
        8,
        "max_response_bytes = 1024",
    )
    .await;
    let r = app.post("/orders", &input("s-big"), &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert!(r.body.len() <= 1024);
    wait_until("the answer notified instead", T, || {
        cognigy.accepted().len() == 1
    })
    .await;
    let call = &cognigy.accepted()[0];
    assert_eq!(call.body["text"], "Your order is shipped");
    assert_eq!(
        call.body["data"]["history"].as_str().map(str::len),
        Some(2000)
    );
    assert_eq!(upstream.received().len(), 1, "the upstream is called once");
}
