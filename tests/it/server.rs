//! The gateway on a real loopback socket: concurrency, streaming limits, timeouts, audit.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{count, flow_body, nlu_body, read_audit, sign, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_events_of_one_session_get_state_versions_1_to_40() {
    let app = TestApp::spawn().await;
    let session = "9b2e4c1a-7d3f-4e8a-b5c6-0a1b2c3d4e5f";
    let mut tasks = Vec::new();
    let app = std::sync::Arc::new(app);
    for i in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = nlu_body(session, &format!("A-{i}"), &format!("c-{i}"));
            app.post_signed("/webhook/cognigy", &body).await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        versions.push(r.json()["data"]["stateVersion"].as_u64().expect("version"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<u64>>());
    let db = app.db().await;
    assert_eq!(count(&db, "SELECT state_version FROM sessions"), 40);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT state_version) FROM all_events"),
        40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_once_and_all_get_the_same_answer() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let body = flow_body("s-concurrent-dup", "c-concurrent-dup");
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            app.post_signed("/webhook", &body).await
        }));
    }
    let mut bodies = Vec::new();
    let mut replayed = 0;
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK);
        if r.header("idempotent-replayed") == Some("true") {
            replayed += 1;
        }
        bodies.push(r.json());
    }
    assert_eq!(replayed, 24, "exactly one request commits");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "all answers equal");
    assert_eq!(bodies[0]["data"]["stateVersion"], 1);
    let db = app.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 1);
    assert_eq!(count(&db, "SELECT state_version FROM sessions"), 1);
}

/// Sends raw bytes and returns the status line and body of the answer.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, chunks: &[&[u8]]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    for c in chunks {
        // The server may answer (and close) before reading everything: ignore write errors.
        let _ = s.write_all(c).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Bodies of these answers are sent with a content-length, not chunked.
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn chunked_body_past_the_limit_is_refused_while_streaming() {
    let app = TestApp::spawn_with(|c| c.limits.max_body_bytes = 1024).await;
    let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
    let head = "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                x-cognigy-signature: 00\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let many: Vec<&[u8]> = std::iter::repeat_n(chunk.as_bytes(), 64).collect();
    let (status, body) = raw_exchange(app.addr, head, &many).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "payload_too_large");
    // Still healthy.
    let ok = app.post_signed("/webhook", &flow_body("s", "c")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_malformed_request_not_invalid_json() {
    let app = TestApp::spawn().await;
    let body = flow_body("s-chunk", "c-chunk");
    let sig = sign(&body);
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-cognigy-signature: {sig}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    // A chunk extension holding a bare line feed: the framing is broken, not the JSON.
    let chunk = [
        format!("{:x};ext\n", body.len()).into_bytes(),
        body.clone(),
        b"\r\n0\r\n\r\n".to_vec(),
    ]
    .concat();
    let (status, answer) = raw_exchange(app.addr, &head, &[&chunk]).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "malformed_request", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("chunk")),
        "{answer}"
    );
    let db = app.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 0);
}

#[tokio::test]
async fn body_not_received_in_time_is_408() {
    let app =
        TestApp::spawn_with(|c| c.limits.body_read_timeout = Duration::from_millis(300)).await;
    let head = "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 100\r\nconnection: close\r\n\r\n{\"sessionId\":";
    // Only part of the declared body is ever sent.
    let (status, body) = raw_exchange(app.addr, head, &[]).await;
    assert_eq!(status, 408);
    assert_eq!(body["code"], "request_timeout");
}

#[tokio::test]
async fn declared_length_past_the_limit_is_refused_before_reading() {
    let app = TestApp::spawn_with(|c| c.limits.max_body_bytes = 1024).await;
    let head = "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 999999999\r\nconnection: close\r\n\r\n";
    let (status, body) = raw_exchange(app.addr, head, &[]).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn audit_has_one_line_per_outcome_and_no_text_entities_or_signatures() {
    let app = TestApp::spawn().await;
    let audit_path = app.audit_path.clone();
    let session = "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e";
    let body = nlu_body(session, "SECRET-ORDER-77", "corr-audit");
    assert_eq!(
        app.post_signed("/webhook/cognigy", &body).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.post_signed("/webhook/cognigy", &body).await.status,
        StatusCode::OK
    );
    let bad = app
        .post(
            "/webhook",
            b"{}",
            &[
                ("content-type", "application/json"),
                ("x-cognigy-signature", "abcd"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let dir = app.stop().await;
    let lines = read_audit(&audit_path);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["event"], "webhook_processed");
    assert_eq!(lines[0]["route"], "nlu-orders");
    assert_eq!(lines[0]["correlation_id"], "corr-audit");
    assert_eq!(lines[0]["session_id"], session);
    assert_eq!(lines[0]["event_type"], "nlu.input");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["event_id"].is_string());
    assert!(lines[0]["transaction_id"].is_string());
    assert!(lines[0]["latency_ms"].is_number());
    assert!(lines[0]["ts"].is_string());
    assert_eq!(lines[1]["event"], "webhook_duplicate");
    assert_eq!(lines[2]["event"], "webhook_rejected");
    assert_eq!(lines[2]["code"], "invalid_signature");
    assert_eq!(lines[2]["status"], 401);
    let raw = std::fs::read_to_string(&audit_path).expect("audit");
    assert!(
        !raw.contains("SECRET-ORDER-77"),
        "entity value in audit log"
    );
    assert!(
        !raw.contains("where is my order"),
        "message text in audit log"
    );
    assert!(!raw.contains(&sign(&body)), "signature in audit log");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_database_holds_nothing_up_until_its_backlog_is_full_then_503_and_retries_lose_nothing(
) {
    // The database cannot be written while another connection holds its write lock; the log,
    // the commit point, can.
    let app = std::sync::Arc::new(
        TestApp::spawn_with(|c| {
            c.store.queue_depth = 1;
            c.limits.deadline = Duration::from_millis(1500);
        })
        .await,
    );
    let blocker = app.db_now();
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let mut bodies = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let b = flow_body(&format!("stuck-{i}"), &format!("stuck-{i}"));
        let r = app.post_signed("/webhook", &b).await;
        bodies.push(b);
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.json()["code"], "unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
            refused = Some(i);
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // What the database lacks is bounded: once that backlog is full, requests are refused.
    let refused = refused.expect("requests are refused once the backlog is full");
    assert!(refused >= 10, "only {refused} events were accepted");
    blocker.execute_batch("ROLLBACK").expect("release");
    // Cognigy (or the caller) retries: each event is there exactly once, whether it had
    // already committed behind the 503 (a replay) or commits now.
    // Like a caller honouring Retry-After, retry each until it is accepted (bounded).
    for b in &bodies {
        let start = std::time::Instant::now();
        loop {
            let r = app.post_signed("/webhook", b).await;
            if r.status == StatusCode::OK {
                break;
            }
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
            assert!(start.elapsed() < Duration::from_secs(15), "never accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let db = app.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM all_events"),
        bodies.len() as i64
    );
    assert_eq!(count(&db, "SELECT max(state_version) FROM sessions"), 1);
}

/// `/dev/full` refuses every write with ENOSPC, as a full disk does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_cannot_be_written_is_counted_and_makes_readyz_503() {
    if !std::path::Path::new("/dev/full").exists() {
        panic!("this test needs /dev/full (Linux)");
    }
    let app = TestApp::spawn_with(|c| c.audit.path = Some("/dev/full".into())).await;
    assert_eq!(app.get("/readyz", &[]).await.status, StatusCode::OK);
    let r = app
        .post_signed("/webhook", &flow_body("s-full", "c-full"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the event is committed: {:?}",
        r.body
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ready = app.get("/readyz", &[]).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            break ready;
        }
        assert!(std::time::Instant::now() < deadline, "readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let body = ready.json();
    assert_eq!(body["audit"], "failing", "{body}");
    assert!(
        body["cause"]
            .as_str()
            .is_some_and(|c| c.contains("audit") && c.contains("space")),
        "{body}"
    );
    let metrics = String::from_utf8_lossy(&app.get("/metrics", &[]).await.body).to_string();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("cognihook_audit_write_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(failures.is_some_and(|n| n >= 1.0), "{metrics}");
}

#[tokio::test]
async fn on_the_listener_only_a_post_to_a_route_s_exact_path_reaches_the_webhook() {
    // `http::serve` answers a POST to a route's literal path without the router; everything
    // else must still get the router's answers.
    let app = TestApp::spawn().await;
    let body = flow_body("s-direct", "c-direct");
    let r = app.post_signed("/webhook?source=test", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["stateVersion"], 1);
    let r = app.get("/webhook", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["code"], "method_not_allowed");
    for path in [
        "/webhook/",
        "/Webhook",
        "/webhook/cognigy/x",
        "/simulate/webhook",
    ] {
        let r = app.post_signed(path, &body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.json()["code"], "not_found", "{path}");
    }
}
