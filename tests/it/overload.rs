//! Defences against abusive load on a real loopback socket (SPEC §12.3): the connection cap,
//! the head and idle timeouts, `max_in_flight`, the deadline from the first byte and route
//! rate limits. Each refusal is cheap (no body read, nothing stored) and says why.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{count, flow_body, set_routes, sign, TestApp, ADMIN_TOKEN};

/// Reads until the server closes the connection (or 10 s pass); returns what came.
async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Some(out),
        // A reset is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(out),
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => None,
    }
}

/// The status and JSON body of the first answer in `raw`.
fn parse_answer(raw: &[u8]) -> (u16, Value, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, body, head.to_ascii_lowercase())
}

fn signed_request(body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-cognigy-signature: {}\r\ncontent-length: {}\r\n{extra}\r\n",
        sign(body),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_connection_over_max_connections_is_closed_at_once_and_counted() {
    let app = TestApp::spawn_with(|c| c.server.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // The first two are open: one of them is served.
    held[0]
        .write_all(&signed_request(&flow_body("s1", "c1"), ""))
        .await
        .unwrap();
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let _ = third
        .write_all(&signed_request(
            &flow_body("s2", "c2"),
            "connection: close\r\n",
        ))
        .await;
    let got = read_until_closed(&mut third)
        .await
        .expect("the third connection is closed, not left waiting");
    assert!(
        got.is_empty(),
        "nothing is answered over the cap: {:?}",
        String::from_utf8_lossy(&got)
    );
    let mut buf = vec![0u8; 4096];
    let n = held[0].read(&mut buf).await.unwrap();
    assert_eq!(
        parse_answer(&buf[..n]).0,
        200,
        "a held connection is served"
    );

    // Closing them frees their places for new clients (a connection made before the server
    // has noticed is closed at once, like the third: try again).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let get = format!(
            "GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
             connection: close\r\n\r\n"
        );
        let _ = s.write_all(get.as_bytes()).await;
        let got = read_until_closed(&mut s).await.unwrap_or_default();
        if !got.is_empty() {
            break String::from_utf8_lossy(&got).to_string();
        }
        assert!(Instant::now() < deadline, "no place came free");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        metric(
            &metrics,
            "cognihook_connections_refused_total{listener=\"public\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(count(&app.db().await, "SELECT count(*) FROM all_events"), 1);
}

#[tokio::test]
async fn a_request_head_not_complete_within_header_read_timeout_closes_the_connection() {
    let app =
        TestApp::spawn_with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    // Slowloris: a head that never ends.
    s.write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("closed within the timeout");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let m = String::from_utf8_lossy(&app.admin_get("/metrics").await.body).to_string();
    assert!(
        metric(
            &m,
            "cognihook_connections_timed_out_total{listener=\"public\",phase=\"head\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_lives_past_the_header_timeout_and_closes_after_idle_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.server.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    s.write_all(&signed_request(&flow_body("s1", "c1"), ""))
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(parse_answer(&buf[..n]).0, 200);
    // Idle for longer than the head timeout: the connection is still usable.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(&signed_request(&flow_body("s1", "c2"), ""))
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(parse_answer(&buf[..n]).0, 200, "served after 600 ms idle");
    // Then idle past idle_timeout: closed.
    let got = read_until_closed(&mut s).await.expect("closed when idle");
    assert!(got.is_empty());
    let m = String::from_utf8_lossy(&app.admin_get("/metrics").await.body).to_string();
    assert!(
        metric(
            &m,
            "cognihook_connections_timed_out_total{listener=\"public\",phase=\"idle\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn over_max_in_flight_a_request_is_answered_503_at_once_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_in_flight = 1;
        c.limits.body_read_timeout = Duration::from_secs(30);
        c.limits.deadline = Duration::from_secs(30);
    })
    .await;
    // One request admitted and held: its body is not all sent yet.
    let body = flow_body("held", "c-held");
    let raw = signed_request(&body, "");
    let cut = raw.len() - 5;
    let mut held = TcpStream::connect(app.addr).await.unwrap();
    held.write_all(&raw[..cut]).await.unwrap();
    // Once it is admitted, the next request is refused for as long as it is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    let refused = loop {
        i += 1;
        let r = app
            .post_signed("/webhook", &flow_body("probe", &format!("probe{i}")))
            .await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        assert!(
            Instant::now() < deadline,
            "the held request was never admitted"
        );
    };
    assert_eq!(refused.json()["code"], "unavailable");
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("too many requests in flight"),
        "{:?}",
        refused.json()
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // The held request completes; then there is room again.
    held.write_all(&raw[cut..]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = held.read(&mut buf).await.unwrap();
    assert_eq!(parse_answer(&buf[..n]).0, 200);
    let again = app.post_signed("/webhook", &flow_body("s3", "c3")).await;
    assert_eq!(again.status, StatusCode::OK);
    let db = app.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM all_events WHERE session_id IN ('held', 's3')"
        ),
        2
    );
    let refused_id = format!("probe{i}");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM all_events WHERE correlation_id = '{refused_id}'")
        ),
        0,
        "a refused request stores nothing"
    );
}

#[tokio::test]
async fn the_deadline_counts_from_the_first_byte_so_a_slow_head_is_answered_503_at_once() {
    let app = TestApp::spawn_with(|c| {
        c.limits.deadline = Duration::from_millis(500);
        c.server.header_read_timeout = Duration::from_secs(10);
    })
    .await;
    let raw = signed_request(&flow_body("slow", "c-slow"), "connection: close\r\n");
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(&raw[..10]).await.unwrap();
    // The rest of the head comes after the deadline has passed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(&raw[10..]).await.unwrap();
    let got = read_until_closed(&mut s).await.expect("answered");
    let (status, body, head) = parse_answer(&got);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("waited past its deadline"),
        "{body}"
    );
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(count(&app.db().await, "SELECT count(*) FROM all_events"), 0);
}

const LIMITED_ROUTES: &str = r#"
[[route]]
name = "per-client"
path = "/webhook"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
rate_limit = { per = "60s", max = 2, by = "ip" }

[[route]]
name = "shared"
path = "/shared"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
rate_limit = { per = "60s", max = 1, by = "route" }
"#;

#[tokio::test]
async fn over_a_routes_rate_limit_requests_get_429_with_retry_after_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|c| {
        c.server.simulator = true;
        set_routes(c, LIMITED_ROUTES);
    })
    .await;
    for i in 0..2 {
        let r = app
            .post_signed("/webhook", &flow_body("s", &format!("ok{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    }
    let r = app.post_signed("/webhook", &flow_body("s", "over")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["code"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Another route has its own limit; the simulator is never limited.
    assert_eq!(
        app.post_signed("/shared", &flow_body("t", "sh1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post_signed("/shared", &flow_body("t", "sh2"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let sim = app
        .post(
            "/simulate/webhook",
            &flow_body("sim", "sim1"),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(sim.status, StatusCode::OK, "{:?}", sim.json());
    let db = app.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM all_events WHERE correlation_id IN ('over', 'sh2')"
        ),
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 4);
}
