//! The operator artefacts in `deploy/`: every metric the Grafana dashboard and the Prometheus
//! rules read is one a running gateway exports, and the rules pass `promtool check rules`
//! (run when `COGNIHOOK_TEST_PROMTOOL` is set, as `.ci/run` does; skipped, and said so,
//! otherwise).

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;

use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{attach_sink, flow_body, TestApp};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// Every `cognihook_…` name in the text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cognihook_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_read_is_exported() {
    let used: BTreeSet<String> = ["grafana/cognihook.json", "prometheus/cognihook-rules.yml"]
        .iter()
        .flat_map(|f| metric_names(&std::fs::read_to_string(format!("{DEPLOY}/{f}")).unwrap()))
        .collect();
    assert!(used.len() >= 10, "{used:?}");

    // A gateway that has answered, refused, delivered and dead-lettered.
    let sink = SinkServer::start().await;
    sink.script(1, Reply::Status(200));
    sink.set_fallback(Reply::Status(400));
    let url = sink.url("/in");
    let app = TestApp::spawn_with(|c| {
        attach_sink(c, "web", &format!("kind = \"http\"\nurl = \"{url}\""));
        c.delivery.poll_interval = Duration::from_millis(20);
    })
    .await;
    for n in 0..2 {
        let r = app
            .post_signed("/webhook", &flow_body("s-deploy", &format!("c-{n}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = app
        .post("/webhook", b"{}", &[("content-type", "application/json")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    wait_until("one delivered, one dead", Duration::from_secs(20), || {
        sink.received().len() >= 2
    })
    .await;
    let exported = app.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&exported.body).to_string();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            !text.lines().any(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
        })
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let rules = format!("{DEPLOY}/prometheus/cognihook-rules.yml");
    let out = match std::process::Command::new("promtool")
        .args(["check", "rules", &rules])
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("COGNIHOOK_TEST_PROMTOOL").is_some() => {
            panic!("COGNIHOOK_TEST_PROMTOOL is set but promtool cannot run: {e}")
        }
        Err(e) => {
            eprintln!(
                "skipped: promtool cannot run ({e}); set COGNIHOOK_TEST_PROMTOOL to require it"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
