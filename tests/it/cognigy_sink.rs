//! The `cognigy` sink against a local Cognigy emulator that checks routes, auth, body fields
//! and sizes as documented: Endpoint-service notify/inject, the v2.0 API with its key, the
//! permanent failure for events without a URLToken, and the per-sink rate limit that makes
//! sends wait without using retry attempts.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::support::cognigy_emulator::{CognigyEmulator, API_KEY, URL_TOKEN};
use crate::support::sink_server::wait_until;
use crate::support::{count, env, set_routes, TestApp};

const T: Duration = Duration::from_secs(20);
const KEY: (&str, &str) = ("x-api-key", "k");
const JSON: (&str, &str) = ("content-type", "application/json");

fn route(sinks: &str) -> String {
    format!(
        r#"
[[route]]
name = "orders"
path = "/orders"
payload = "cognigy-input"
auth = {{ scheme = "api-key", keys = ["k"] }}
sinks = [{sinks}]
"#
    )
}

/// The test route, sending to one sink `cognigy` made of `table`, with quick polling.
fn with_cognigy_sink(c: &mut cognihook::config::Config, table: &str) {
    set_routes(c, &route("\"cognigy\""));
    c.sinks
        .insert("cognigy".into(), toml::from_str(table).unwrap());
    c.delivery.poll_interval = Duration::from_millis(20);
}

fn input(session: &str, token: Option<&str>, order: &str) -> Vec<u8> {
    let mut b = json!({
        "userId": "user123", "sessionId": session, "text": format!("where is {order}"),
        "data": {"orderId": order}
    });
    if let Some(t) = token {
        b["URLToken"] = t.into();
    }
    serde_json::to_vec(&b).unwrap()
}

fn rows(app: &TestApp, status: &str) -> i64 {
    count(
        &app.db_now(),
        &format!("SELECT count(*) FROM outbox WHERE status = '{status}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_through_the_endpoint_service_with_text_and_data_from_the_event() {
    let cognigy = CognigyEmulator::start().await;
    let table = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"\n\
         text = '\"Order \" + event.payload.data.orderId + \" has shipped\"'\n\
         data = '{{\"orderId\": event.payload.data.orderId}}'",
        cognigy.base_url()
    );
    let app = TestApp::spawn_with(|c| {
        with_cognigy_sink(c, &table);
    })
    .await;
    let r = app
        .post(
            "/orders",
            &input("s-1", Some(URL_TOKEN), "A-1"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_until("one notify", T, || cognigy.accepted().len() == 1).await;
    let call = &cognigy.accepted()[0];
    assert_eq!((call.mode.as_str(), call.route), ("notify", "endpoint"));
    assert_eq!(
        call.body,
        json!({"userId": "user123", "sessionId": "s-1", "URLToken": URL_TOKEN,
               "text": "Order A-1 has shipped", "data": {"orderId": "A-1"}})
    );
    assert!(call.headers.get("x-api-key").is_none());
    wait_until("delivered", T, || rows(&app, "delivered") == 1).await;
    assert!(cognigy.refused().is_empty(), "{:?}", cognigy.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_through_the_v2_api_with_its_key_and_the_default_body() {
    let cognigy = CognigyEmulator::start().await;
    let mut environment = env();
    environment.insert("COGNIGY_API_BASE_URL".into(), cognigy.base_url());
    environment.insert("COGNIGY_API_KEY".into(), API_KEY.into());
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &environment, |c| {
        set_routes(c, &route("\"cognigy\""));
        c.sinks.insert(
            "cognigy".into(),
            toml::from_str("kind = \"cognigy\"\nmode = \"inject\"\napi = \"v2\"").unwrap(),
        );
        c.delivery.poll_interval = Duration::from_millis(20);
    })
    .await;
    let r = app
        .post(
            "/orders",
            &input("s-2", Some(URL_TOKEN), "A-2"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("one inject", T, || cognigy.accepted().len() == 1).await;
    let call = &cognigy.accepted()[0];
    assert_eq!((call.mode.as_str(), call.route), ("inject", "api-v2"));
    assert_eq!(call.headers["x-api-key"], API_KEY);
    assert_eq!(call.body["text"], "");
    assert_eq!(call.body["data"]["eventType"], "cognigy.input");
    assert_eq!(call.body["data"]["urlToken"], URL_TOKEN);
    assert!(call.body["data"].get("payload").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_urltoken_is_dead_lettered_at_once_and_a_wrong_key_is_permanent() {
    let cognigy = CognigyEmulator::start().await;
    let mut environment = env();
    environment.insert("COGNIGY_API_BASE_URL".into(), cognigy.base_url());
    environment.insert("COGNIGY_API_KEY".into(), "wrong-key".into());
    let table = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"",
        cognigy.base_url()
    );
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &environment, |c| {
        set_routes(c, &route("\"notify\", \"v2\""));
        c.sinks
            .insert("notify".into(), toml::from_str(&table).unwrap());
        c.sinks.insert(
            "v2".into(),
            toml::from_str("kind = \"cognigy\"\nmode = \"notify\"\napi = \"v2\"").unwrap(),
        );
        c.delivery.poll_interval = Duration::from_millis(20);
    })
    .await;
    let r = app
        .post("/orders", &input("s-3", None, "A-3"), &[JSON, KEY])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("both dead", T, || rows(&app, "dead") == 2).await;
    let db = app.db().await;
    let (attempts, error): (i64, String) = db
        .query_row(
            "SELECT attempts, last_error FROM outbox WHERE sink = 'notify'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(attempts, 1);
    assert!(error.contains("no URLToken"), "{error}");
    // Neither call went out: both routes need the URLToken.
    assert!(cognigy.accepted().is_empty());
    assert!(cognigy.refused().is_empty());

    let r = app
        .post(
            "/orders",
            &input("s-3", Some(URL_TOKEN), "A-4"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("the notify delivered, the v2 one dead", T, || {
        rows(&app, "dead") == 3 && rows(&app, "delivered") == 1
    })
    .await;
    let error: String = db
        .query_row(
            "SELECT last_error FROM outbox WHERE sink = 'v2' AND status = 'dead' \
             ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(
        !error.contains(URL_TOKEN),
        "the URLToken is not logged: {error}"
    );
    assert_eq!(cognigy.refused(), [(401, "bad API key".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_sends_back_without_using_attempts() {
    let cognigy = CognigyEmulator::start().await;
    let table = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"\n\
         rate_limit = {{ per = \"1h\", max = 2 }}",
        cognigy.base_url()
    );
    let app = TestApp::spawn_with(|c| {
        with_cognigy_sink(c, &table);
    })
    .await;
    for i in 0..5 {
        let r = app
            .post(
                "/orders",
                &input(&format!("s-rl-{i}"), Some(URL_TOKEN), &format!("A-{i}")),
                &[JSON, KEY],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    wait_until("two delivered", T, || rows(&app, "delivered") == 2).await;
    // Drive the worker further: the bucket is empty for the next half hour, so nothing more
    // goes out and nothing is counted as an attempt.
    for _ in 0..5 {
        app.deliverer().tick().await;
    }
    assert_eq!(cognigy.accepted().len(), 2);
    let db = app.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE status = 'pending'"),
        3
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts > 0"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognigys_429_is_retried_after_its_retry_after() {
    let cognigy = CognigyEmulator::start().await;
    cognigy.set_budget(Some(0));
    let table = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"\n\
         retry = {{ max_attempts = 3, base_delay = \"10ms\", max_delay = \"2s\" }}",
        cognigy.base_url()
    );
    let app = TestApp::spawn_with(|c| {
        with_cognigy_sink(c, &table);
    })
    .await;
    let r = app
        .post(
            "/orders",
            &input("s-429", Some(URL_TOKEN), "A-9"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("a 429", T, || !cognigy.refused().is_empty()).await;
    cognigy.set_budget(None);
    wait_until("delivered", T, || rows(&app, "delivered") == 1).await;
    let attempts = count(&app.db().await, "SELECT attempts FROM outbox");
    assert_eq!(attempts, 2);
    assert_eq!(cognigy.refused(), [(429, "rate limit".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_takes_what_cognigy_takes_data_null_and_each_form_of_the_v2_key() {
    let cognigy = CognigyEmulator::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/new/v2.0/endpoint/notify", cognigy.base_url());
    let body =
        json!({"userId": "u", "URLToken": URL_TOKEN, "text": "hi", "data": null}).to_string();
    let send = |req: reqwest::RequestBuilder| {
        let body = body.clone();
        async move {
            req.header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        send(client.post(&url).header("x-api-key", API_KEY)).await,
        200
    );
    assert_eq!(
        send(client.post(format!("{url}?api_key={API_KEY}"))).await,
        200
    );
    assert_eq!(send(client.post(&url).bearer_auth(API_KEY)).await, 200);
    assert_eq!(send(client.post(&url).bearer_auth("wrong")).await, 401);
    assert_eq!(send(client.post(&url)).await, 401);
    assert_eq!(cognigy.accepted().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_sends_the_events_text_headers_and_attachments() {
    let cognigy = CognigyEmulator::start().await;
    let table = format!(
        "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"{}\"\n\
         headers = {{ \"X-Webhook-Key\" = \"env:HOOK_KEY\" }}\n\
         attachments = '[{{\"type\": \"link\", \"url\": \"https://shop.example/\" + event.payload.data.orderId}}]'",
        cognigy.base_url()
    );
    let mut environment = env();
    environment.insert("HOOK_KEY".into(), "endpoint-key-1".into());
    let app = TestApp::spawn_env(tempfile::tempdir().unwrap(), &environment, |c| {
        with_cognigy_sink(c, &table);
    })
    .await;
    let r = app
        .post(
            "/orders",
            &input("s-h", Some(URL_TOKEN), "A-7"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_until("one notify", T, || cognigy.accepted().len() == 1).await;
    let call = &cognigy.accepted()[0];
    assert_eq!(
        call.body["text"], "where is A-7",
        "the event's text by default"
    );
    assert_eq!(
        call.body["attachments"][0]["url"],
        "https://shop.example/A-7"
    );
    assert_eq!(
        call.headers
            .get("x-webhook-key")
            .and_then(|v| v.to_str().ok()),
        Some("endpoint-key-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_older_than_max_age_is_dead_lettered_as_expired_and_not_sent() {
    let cognigy = CognigyEmulator::start().await;
    let table = format!(
        "kind = \"cognigy\"\nmode = \"inject\"\nendpoint_url = \"{}\"\nmax_age = \"1ms\"",
        cognigy.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(dir, |c| {
        with_cognigy_sink(c, &table);
        c.delivery.enabled = false;
    })
    .await;
    let r = app
        .post(
            "/orders",
            &input("s-old", Some(URL_TOKEN), "A-9"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The event outlives max_age while delivery is off (a restart takes far longer than
    // 1 ms), then a gateway with delivery on runs.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, |c| {
        with_cognigy_sink(c, &table);
    })
    .await;
    wait_until("dead-lettered", T, || rows(&app, "dead") == 1).await;
    let dead = app
        .admin_get("/admin/dead-letters?reason=expired")
        .await
        .json();
    assert_eq!(dead["total"], 1, "{dead}");
    assert_eq!(dead["items"][0]["reason"], "expired");
    assert!(
        cognigy.accepted().is_empty(),
        "an expired delivery is never sent"
    );
}
