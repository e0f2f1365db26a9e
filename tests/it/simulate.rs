//! `cognihook simulate` against the real gateway binary: a clean run exits 0 with a summary;
//! a run whose answers contradict it (the gateway has another secret) exits 1 and says why.

use std::time::Duration;

use crate::support::binary::{command, run, Server};
use crate::support::count;

const T: Duration = Duration::from_secs(60);
const CONFIG: &str = r#"
[[route]]
name = "nlu-orders"
path = "/webhook/cognigy"
payload = "nlu"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
rules = [
  { expr = "event.intent.score >= 0.75", message = "Intent confidence below business threshold" },
  { expr = "has(event.entities.orderId)", message = "Required entity orderId is missing" },
]

[[route]]
name = "cognigy-input"
path = "/cognigy/input"
payload = "cognigy-input"
auth = { scheme = "hmac-sha256-timestamped", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
"#;

fn simulate(dir: &std::path::Path, secret: &str, args: &[&str]) -> std::process::Output {
    let mut c = command(dir);
    c.env("COGNIGY_WEBHOOK_SECRET", secret)
        .args([
            "simulate",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--sessions",
            "6",
        ])
        .args(["--duplicates", "0.2", "--invalid", "0.2", "--seed", "7"])
        .args(args);
    run(c, T)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn simulated_conversations_on_two_routes_meet_every_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cognihook.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", "sim-secret")
        .arg("--config")
        .arg(&config);
    let mut server = Server::start(c);

    let url = format!("http://{}/webhook/cognigy", server.addr);
    let o = simulate(
        dir.path(),
        "sim-secret",
        &["--url", &url, "--payload", "nlu"],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("contradictions: 0"), "{out}");
    // The seed rules reject greetings (no orderId): 422 is a business answer, not a failure.
    assert!(out.contains("422:"), "{out}");
    assert!(out.contains("latency: p50"), "{out}");
    assert!(text(&o.stderr).contains("simulate:"), "a progress line");

    let url = format!("http://{}/cognigy/input", server.addr);
    let o = simulate(
        dir.path(),
        "sim-secret",
        &[
            "--url",
            &url,
            "--payload",
            "cognigy-input",
            "--form",
            "--scheme",
            "hmac-sha256-timestamped",
        ],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));

    server.terminate();
    server.wait(T);
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).unwrap();
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    // Per session, the committed stateVersions are exactly 1..N.
    let gaps = count(
        &db,
        "SELECT count(*) FROM (SELECT session_id, max(state_version) m, count(*) n \
         FROM all_events GROUP BY session_id) WHERE m != n",
    );
    assert_eq!(gaps, 0);
    assert!(count(&db, "SELECT count(*) FROM all_events") > 20);
}

#[test]
fn answers_that_contradict_the_simulator_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.env("COGNIGY_WEBHOOK_SECRET", "the-gateways-secret");
    let server = Server::start(c);
    let url = format!("http://{}/webhook", server.addr);
    let o = simulate(
        dir.path(),
        "another-secret",
        &["--url", &url, "--payload", "flow-event", "--duration", "1s"],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("valid request refused") && out.contains("401 invalid_signature"),
        "{out}"
    );

    let o = simulate(
        dir.path(),
        "x",
        &[
            "--url",
            "http://127.0.0.1:9/webhook",
            "--duration",
            "1s",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("no answer"), "{}", text(&o.stdout));
    let o = simulate(dir.path(), "x", &["--url", &url, "--rate", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn send_and_simulate_fetch_an_oauth2_token_and_speak_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cognihook.toml");
    std::fs::write(
        &config,
        r#"
[[route]]
name = "flows"
path = "/flows"
payload = "flow-event"
auth = { scheme = "oauth2" }

[[route]]
name = "tokens"
path = "/tokens"
payload = "flow-event"
auth = { scheme = "bearer", tokens = ["static-token-1"] }

[oauth2]
signing_key = "env:SIGNING_KEY"
[[oauth2.client]]
id = "cognigy"
secret = "env:CLIENT_SECRET"
routes = ["flows"]
"#,
    )
    .unwrap();
    let mut c = command(dir.path());
    c.env("SIGNING_KEY", "a-signing-key-of-at-least-32-bytes!!")
        .env("CLIENT_SECRET", "client-secret")
        .arg("--config")
        .arg(&config);
    let mut server = Server::start(c);

    let url = format!("http://{}/flows", server.addr);
    let mut send = command(dir.path());
    send.args(["send", "--example", "flow-event", "--url", &url])
        .args(["--scheme", "oauth2", "--secret", "cognigy:client-secret"]);
    let o = run(send, T);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("HTTP 200"),
        "{}",
        text(&o.stdout)
    );

    let mut send = command(dir.path());
    send.args(["send", "--example", "flow-event", "--url", &url])
        .args(["--scheme", "oauth2", "--secret", "cognigy:wrong"]);
    let o = run(send, T);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("invalid_client"),
        "{}",
        text(&o.stderr)
    );

    let o = simulate(
        dir.path(),
        "cognigy:client-secret",
        &[
            "--url",
            &url,
            "--payload",
            "flow-event",
            "--scheme",
            "oauth2",
        ],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("contradictions: 0"), "{out}");

    let url = format!("http://{}/tokens", server.addr);
    let o = simulate(
        dir.path(),
        "static-token-1",
        &[
            "--url",
            &url,
            "--payload",
            "flow-event",
            "--scheme",
            "bearer",
        ],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("401"),
        "wrong tokens were sent and refused: {out}"
    );
    server.terminate();
    server.wait(T);
}
