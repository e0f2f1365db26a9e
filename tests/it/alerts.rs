//! `[alerts]` against a real receiver on loopback: each alert kind reaches the target through
//! the outbox (the store's own outage straight), signed, debounced, resolved once. Looks are
//! driven by the test (`Alerts::look_at`, the clock a parameter); the periodic look is an
//! hour away.

use std::time::Duration;

use cognihook::config::{AlertFormat, AlertTargetConfig, Config};
use http::StatusCode;
use serde_json::Value;

use crate::store_suite::fresh_pg_schema;
use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{flow_body, TestApp};

const T: Duration = Duration::from_secs(20);

/// One webhook target `hook` at `url`, signed, looks an hour apart, a console URL.
fn with_alerts(c: &mut Config, url: &str) {
    c.alerts.interval = Duration::from_secs(3600);
    c.alerts.window = Duration::from_secs(3600);
    c.alerts.console_url = Some("https://gw.example/console".into());
    c.alerts.targets.insert(
        "hook".into(),
        AlertTargetConfig {
            kind: AlertFormat::Webhook,
            url: url.to_string().into(),
            secret: Some("alert-secret".to_string().into()),
            timeout: Duration::from_secs(5),
        },
    );
}

/// The alerts the receiver got, as (kind, status, count).
fn got(receiver: &SinkServer) -> Vec<(String, String, u64)> {
    receiver
        .received()
        .iter()
        .map(|r| {
            (
                r.body["kind"].as_str().unwrap_or_default().to_string(),
                r.body["status"].as_str().unwrap_or_default().to_string(),
                r.body["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn brief(alerts: &[cognihook::alerts::Alert]) -> Vec<(&'static str, &'static str, u64)> {
    alerts
        .iter()
        .map(|a| (a.kind.name(), a.status.name(), a.count))
        .collect()
}

/// Looks at the gateway again (each look a millisecond after the last, from `from_ms`) until
/// a look says something, or `T` has passed; returns what it said.
async fn look_until_said(app: &TestApp, from_ms: i64) -> Vec<cognihook::alerts::Alert> {
    let start = std::time::Instant::now();
    let mut at = from_ms;
    loop {
        let said = app.alerts().look_at(at).await;
        if !said.is_empty() || start.elapsed() > T {
            return said;
        }
        at += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_and_dead_letter_alerts_reach_the_target_signed_debounced_and_resolved() {
    let receiver = SinkServer::start().await;
    let backend = SinkServer::start().await;
    // Two failures: each dead-lettered (one attempt), together they open the circuit; the
    // third event waits for the cool-down and its probe succeeds.
    backend.script(2, Reply::Status(500));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 1 }}\n\
         breaker = {{ failure_threshold = 2, cool_down = \"300ms\" }}",
        backend.url("/events")
    );
    let app = TestApp::spawn_with(|c| {
        crate::support::attach_sink(c, "backend", &table);
        with_alerts(c, &receiver.url("/alerts"));
    })
    .await;
    for i in 0..2 {
        let r = app
            .post_signed("/webhook", &flow_body("s-alert", &format!("fail-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let sink = app.deliverer().sink("backend").expect("sink").clone();
    wait_until("two dead letters", T, || {
        sink.dead_letters_made().iter().map(|(_, n)| n).sum::<u64>() == 2
    })
    .await;
    let now = cognihook::now_millis();
    let first = app.alerts().look_at(now).await;
    assert_eq!(
        brief(&first),
        [("circuit_open", "firing", 1), ("dead_letters", "firing", 2)]
    );
    let arrived = receiver.wait_for(2, T).await;
    for r in &arrived {
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers.contains_key("x-cognihook-event-id"));
        let sig = r.headers["x-cognihook-signature"].to_str().unwrap();
        let t: u64 = sig
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("t=");
        assert_eq!(
            sig,
            cognihook::sinks::http::outgoing_signature(b"alert-secret", t, &r.raw),
            "signed like the http sink"
        );
        assert_eq!(r.body["subject"]["sink"], "backend");
        assert!(r.body["replica"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let dead = arrived
        .iter()
        .find(|r| r.body["kind"] == "dead_letters")
        .expect("a dead_letters alert");
    assert_eq!(dead.body["subject"]["class"], "exhausted");
    assert_eq!(dead.body["count"], 2);
    assert_eq!(dead.body["severity"], "warning");
    assert_eq!(
        dead.body["link"],
        "https://gw.example/console/dead-letters?sink=backend&class=exhausted"
    );
    // Nothing new: the same look says nothing again.
    assert!(app.alerts().look_at(now + 1000).await.is_empty());

    // The third event goes through the probe: the circuit closes; said once.
    let r = app
        .post_signed("/webhook", &flow_body("s-alert", "ok"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    backend.wait_for(3, T).await;
    wait_until("the circuit closed", T, || {
        sink.circuit().name() == "closed"
    })
    .await;
    let resolved = app.alerts().look_at(now + 2000).await;
    assert_eq!(brief(&resolved), [("circuit_open", "resolved", 1)]);
    receiver.wait_for(3, T).await;
    assert!(app.alerts().look_at(now + 3000).await.is_empty());
    let mut each = got(&receiver);
    each.sort();
    assert_eq!(
        each,
        [
            ("circuit_open".to_string(), "firing".to_string(), 1),
            ("circuit_open".to_string(), "resolved".to_string(), 1),
            ("dead_letters".to_string(), "firing".to_string(), 2),
        ],
        "each alert once"
    );
    // Alerts are events of `_alerts`, delivered to the sink `alert:hook`.
    let listed = app.admin_get("/admin/sinks").await.json();
    let hook = listed["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alert:hook")
        .expect("the alert sink is listed")
        .clone();
    assert_eq!(hook["kind"], "alert");
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_age_refused_credentials_and_an_unused_secret_are_alerted() {
    let receiver = SinkServer::start().await;
    let backend = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", backend.url("/events"));
    let app = TestApp::spawn_with(|c| {
        crate::support::attach_sink(c, "backend", &table);
        with_alerts(c, &receiver.url("/alerts"));
        c.alerts.pending_age = Duration::from_millis(50);
        c.alerts.auth_failures.count = 3;
        c.alerts.secret_unused = Duration::from_millis(200);
    })
    .await;
    let started = cognihook::now_millis();
    let paused = app
        .admin_post("/admin/sinks/backend/pause", &Value::Null)
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{:?}", paused.body);
    // Signed with the second secret of the rotation set only.
    let r = app
        .post_signed("/webhook", &flow_body("s-age", "waits"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for i in 0..3 {
        let r = app
            .post(
                "/webhook",
                &flow_body("s-bad", &format!("bad-{i}")),
                &[
                    ("content-type", "application/json"),
                    ("x-cognigy-signature", "00"),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let names = vec!["backend".to_string()];
    let store = app.store();
    let mut age = 0.0;
    for _ in 0..2000 {
        age = store.sink_counts(&names).await.unwrap()[0].oldest_pending_age_seconds;
        if age > 0.05 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(age > 0.05, "the delivery waited {age}s");
    // 200 ms after the start (as the alerts count it), the first secret is unused while the
    // second one matched just now.
    let now = started + 200;
    let fired = app.alerts().look_at(now).await;
    let mut kinds = brief(&fired);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("auth_failures", "firing", 1),
            ("pending_age", "firing", 1),
            ("secret_unused", "firing", 1)
        ]
    );
    let arrived = receiver.wait_for(3, T).await;
    let by_kind = |k: &str| {
        arrived
            .iter()
            .find(|r| r.body["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} alert"))
            .body
            .clone()
    };
    let auth = by_kind("auth_failures");
    assert_eq!(auth["subject"]["route"], "flow-events");
    assert_eq!(auth["figures"]["refused"], 3);
    let secret = by_kind("secret_unused");
    assert_eq!(
        secret["subject"]["secret"], "COGNIGY_WEBHOOK_SECRET[0]",
        "the label, never the value"
    );
    assert!(!secret.to_string().contains("old-secret"));
    assert_eq!(secret["severity"], "info");
    let pending = by_kind("pending_age");
    assert_eq!(pending["subject"]["sink"], "backend");
    assert_eq!(pending["figures"]["pending"], 1);

    // The sink resumes and delivers: the pending alert resolves.
    app.admin_post("/admin/sinks/backend/resume", &Value::Null)
        .await;
    backend.wait_for(1, T).await;
    let resolved = look_until_said(&app, now + 10).await;
    assert_eq!(brief(&resolved), [("pending_age", "resolved", 1)]);
    receiver.wait_for(4, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_alerted_straight_to_the_target_and_its_end_too() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let (proxy, via_proxy) = crate::support::tcp_proxy::in_front_of_postgres(&url).await;
    let receiver = SinkServer::start().await;
    let app = TestApp::spawn_with(|c| {
        c.store.url = Some(via_proxy.into());
        with_alerts(c, &receiver.url("/alerts"));
    })
    .await;
    let now = cognihook::now_millis();
    assert!(app.alerts().look_at(now).await.is_empty());
    proxy.cut();
    let fired = look_until_said(&app, now + 1).await;
    assert_eq!(brief(&fired), [("store_unavailable", "firing", 1)]);
    assert_eq!(fired[0].severity, cognihook::alerts::Severity::Critical);
    let sent = receiver.wait_for(1, T).await;
    assert_eq!(sent[0].body["kind"], "store_unavailable");
    assert_eq!(sent[0].body["status"], "firing");
    // While it lasts, nothing more is said.
    assert!(app.alerts().look_at(now + 500).await.is_empty());
    proxy.restore();
    let back = look_until_said(&app, now + 1000).await;
    assert_eq!(brief(&back), [("store_unavailable", "resolved", 1)]);
    let sent = receiver.wait_for(2, T).await;
    assert_eq!(sent[1].body["status"], "resolved");
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_retried_and_the_configuration_names_bad_targets() {
    let receiver = SinkServer::start().await;
    receiver.script(1, Reply::Status(503));
    let backend = SinkServer::start().await;
    backend.set_fallback(Reply::Status(400));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 1 }}",
        backend.url("/events")
    );
    let app = TestApp::spawn_with(|c| {
        crate::support::attach_sink(c, "backend", &table);
        with_alerts(c, &receiver.url("/alerts"));
    })
    .await;
    let r = app.post_signed("/webhook", &flow_body("s-x", "x")).await;
    assert_eq!(r.status, StatusCode::OK);
    let sink = app.deliverer().sink("backend").expect("sink").clone();
    wait_until("a dead letter", T, || {
        sink.dead_letters_made().iter().map(|(_, n)| n).sum::<u64>() == 1
    })
    .await;
    let fired = app.alerts().look_at(cognihook::now_millis()).await;
    assert_eq!(brief(&fired), [("dead_letters", "firing", 1)]);
    // The first POST answers 503; the outbox tries again (base delay 2 s).
    let got = receiver.wait_for(2, T).await;
    assert_eq!(got[0].status, Some(503));
    assert_eq!(got[1].body["kind"], "dead_letters");
    assert_eq!(got[1].body["subject"]["class"], "permanent");
    assert_eq!(got[1].headers["x-cognihook-attempt"], "2");

    // check-config reports a target it cannot use, with the rest.
    let mut c = Config::default();
    with_alerts(&mut c, "ftp://nowhere");
    c.alerts.window = Duration::from_secs(1);
    let problems = c.validate();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("alerts.target `hook`: url must be")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("alerts.window must be at least")),
        "{problems:?}"
    );
    let env = std::collections::BTreeMap::new();
    let mut c = Config::default();
    with_alerts(&mut c, "env:NO_SUCH_ALERT_URL");
    let Err(problems) = cognihook::app::Wiring::build(&c, &env) else {
        panic!("a target whose URL is not set builds");
    };
    assert!(
        problems.iter().any(|p| p.contains("alerts.target `hook`")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_teams_targets_get_their_own_formats() {
    let slack = SinkServer::start().await;
    let teams = SinkServer::start().await;
    let backend = SinkServer::start().await;
    backend.set_fallback(Reply::Status(400));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 1 }}",
        backend.url("/events")
    );
    let app = TestApp::spawn_with(|c| {
        crate::support::attach_sink(c, "backend", &table);
        with_alerts(c, &slack.url("/unused"));
        c.alerts.targets.clear();
        for (name, kind, url) in [
            ("chat", AlertFormat::Slack, slack.url("/services/T/B/x")),
            ("team", AlertFormat::Teams, teams.url("/workflows/y")),
        ] {
            c.alerts.targets.insert(
                name.into(),
                AlertTargetConfig {
                    kind,
                    url: url.into(),
                    secret: None,
                    timeout: Duration::from_secs(5),
                },
            );
        }
    })
    .await;
    let r = app
        .post_signed("/webhook", &flow_body("s-fmt", "fmt"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let sink = app.deliverer().sink("backend").expect("sink").clone();
    wait_until("a dead letter", T, || {
        sink.dead_letters_made().iter().map(|(_, n)| n).sum::<u64>() == 1
    })
    .await;
    let fired = app.alerts().look_at(cognihook::now_millis()).await;
    assert_eq!(brief(&fired), [("dead_letters", "firing", 1)]);
    let s = slack.wait_for(1, T).await;
    let text = s[0].body["text"]
        .as_str()
        .expect("a Slack message has text");
    assert!(text.contains("[FIRING] warning · dead_letters"), "{text}");
    assert!(text.contains("<https://gw.example/console/dead-letters?sink=backend&class=permanent|Open in the console>"), "{text}");
    let t = teams.wait_for(1, T).await;
    let card = &t[0].body["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert!(card["content"]["body"][0]["text"]
        .as_str()
        .is_some_and(|h| h.contains("dead_letters")));
}
