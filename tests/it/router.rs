//! Router tests without sockets: every SPEC §5 answer the ingest slice can produce, driven
//! through `oneshot` on the real router with a real temporary store.

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::{self, build_app, count, flow_body, nlu_body, sign};

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

async fn call(router: &axum::Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes: Bytes = body.collect().await.expect("body").to_bytes();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn post(path: &str, body: &[u8], headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::post(path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_vec())).expect("request")
}

fn signed(path: &str, body: &[u8]) -> Request<Body> {
    post(
        path,
        body,
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("x-cognigy-signature", &sign(body)),
        ],
    )
}

fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["status"], "error", "{}", a.body);
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(a.body["correlationId"].is_string(), "{}", a.body);
    assert!(a.body["transactionId"].is_string(), "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
}

#[tokio::test]
async fn nlu_success_answers_seed_shape_with_extract_and_state_version() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let session = "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e";
    let a = call(
        &r,
        signed("/webhook/cognigy", &nlu_body(session, "A-1", "corr-1")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "success");
    assert_eq!(a.body["message"], "Payload processed successfully");
    assert_eq!(a.body["correlationId"], "corr-1");
    assert_eq!(
        a.body["data"],
        json!({"processed": true, "stateVersion": 1, "orderId": "A-1"})
    );
    assert!(a.body["transactionId"]
        .as_str()
        .is_some_and(|t| uuid::Uuid::try_parse(t).is_ok()));
    assert!(a.body["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(a.headers["x-correlation-id"], "corr-1");
    // One reading of the clock: the answer's timestamp is the event's receivedAt, and its
    // id's time (a ULID's first 48 bits) is that millisecond.
    let req = Request::get("/admin/events/corr-1")
        .header("authorization", format!("Bearer {}", support::ADMIN_TOKEN))
        .body(Body::empty())
        .expect("req");
    let stored = call(&r, req).await.body;
    assert_eq!(
        stored["event"]["receivedAt"], a.body["timestamp"],
        "{stored}"
    );
    let received = time::OffsetDateTime::parse(
        a.body["timestamp"].as_str().expect("timestamp"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let id =
        ulid::Ulid::from_string(stored["event"]["eventId"].as_str().expect("id")).expect("a ULID");
    assert_eq!(
        i128::from(id.timestamp_ms()),
        received.unix_timestamp_nanos() / 1_000_000
    );
    let a = call(
        &r,
        signed("/webhook/cognigy", &nlu_body(session, "A-2", "corr-2")),
    )
    .await;
    assert_eq!(a.body["data"]["stateVersion"], 2);
}

#[tokio::test]
async fn flow_event_success_and_correlation_from_header_or_generated() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let body = serde_json::to_vec(
        &json!({"sessionId": "s1", "userId": "u", "eventType": "flow.execution"}),
    )
    .expect("json");
    let mut req = signed("/webhook", &body);
    req.headers_mut()
        .insert("x-correlation-id", "hdr-corr".parse().expect("hv"));
    let a = call(&r, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["correlationId"], "hdr-corr");
    assert_eq!(
        a.body["data"],
        json!({"processed": true, "stateVersion": 1})
    );

    let body = serde_json::to_vec(
        &json!({"sessionId": "s2", "userId": "u", "eventType": "flow.execution"}),
    )
    .expect("json");
    let a = call(&r, signed("/webhook", &body)).await;
    let generated = a.body["correlationId"].as_str().expect("generated id");
    assert!(!generated.is_empty());
    assert_eq!(a.headers["x-correlation-id"], generated);
    // The generated id is the event's own id (so the store needs no correlation entry).
    let req = Request::get(format!("/admin/events/{generated}"))
        .header("authorization", format!("Bearer {}", support::ADMIN_TOKEN))
        .body(Body::empty())
        .expect("req");
    let j = call(&r, req).await;
    assert_eq!(j.status, StatusCode::OK, "{}", j.body);
    assert_eq!(j.body["event"]["eventId"], generated);
    assert_eq!(j.body["event"]["correlationId"], generated);
}

#[tokio::test]
async fn auth_failures_answer_401_with_specific_codes_and_never_the_expected_signature() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let body = flow_body("s", "c");
    let json_ct = ("content-type", "application/json");

    let a = call(&r, post("/webhook", &body, &[json_ct])).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "missing_signature");
    assert_eq!(
        a.headers["www-authenticate"],
        r#"hmac-sha256 realm="cognihook""#
    );

    let wrong = cognihook::ingest::auth::sign_hex(b"not-the-secret", &body);
    let a = call(
        &r,
        post(
            "/webhook",
            &body,
            &[json_ct, ("x-webhook-signature", &wrong)],
        ),
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "invalid_signature");
    let expected = sign(&body);
    let text = a.body.to_string();
    assert!(
        !text.contains(&expected),
        "expected signature leaked: {text}"
    );
    assert!(!text.contains(&wrong), "given signature echoed: {text}");

    // The secret being rotated out still verifies.
    let old = cognihook::ingest::auth::sign_hex(b"old-secret", &body);
    let a = call(
        &r,
        post(
            "/webhook",
            &body,
            &[json_ct, ("x-webhook-signature", &format!("sha256={old}"))],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Nothing was stored for the refused requests.
    app.state().store.caught_up().await.expect("caught up");
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 1);
}

#[tokio::test]
async fn bad_bodies_answer_400_invalid_json_and_the_router_keeps_serving() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"sessionId\":\"\xff\xfe\"}".to_vec(), "UTF-8"),
        (b"[1,2,3]".to_vec(), "JSON object"),
        (b"42".to_vec(), "JSON object"),
        (b"{\"unterminated\":".to_vec(), "not valid JSON"),
        (deep.into_bytes(), "nested too deeply"),
        (Vec::new(), "empty"),
    ];
    for (body, want) in cases {
        let a = call(&r, signed("/webhook", &body)).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_json");
        assert!(
            a.body["message"].as_str().is_some_and(|m| m.contains(want)),
            "{want}: {}",
            a.body
        );
    }
    let a = call(&r, signed("/webhook", &flow_body("s", "c"))).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn invalid_payload_lists_every_failing_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let body = serde_json::to_vec(&json!({
        "sessionId": "nope", "userId": "", "context": {"locale": "en"},
        "intent": {"name": "x", "confidence": 2}, "entities": "orderId"
    }))
    .expect("json");
    let a = call(&r, signed("/webhook/cognigy", &body)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_payload");
    let fields: Vec<&str> = a.body["errors"]
        .as_array()
        .expect("errors[]")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    for f in [
        "sessionId",
        "userId",
        "input",
        "context.channel",
        "intent.confidence",
        "entities",
    ] {
        assert!(fields.contains(&f), "missing {f} in {fields:?}");
    }
    let session_err = a.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|e| e["field"] == "sessionId")
        .expect("sessionId error");
    assert_eq!(session_err["message"], "must be a UUID");
}

#[tokio::test]
async fn failed_rules_answer_422_with_the_rule_message_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let session = "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e";
    let mut low: Value = serde_json::from_slice(&nlu_body(session, "A-1", "c1")).expect("json");
    low["intent"]["confidence"] = json!(0.5);
    let a = call(
        &r,
        signed("/webhook/cognigy", &serde_json::to_vec(&low).expect("json")),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "rule_rejected");
    assert_eq!(
        a.body["message"],
        "Intent confidence below business threshold"
    );
    assert_eq!(a.body["correlationId"], "c1");

    let mut no_order = low.clone();
    no_order["intent"]["confidence"] = json!(0.9);
    no_order["entities"] = json!([]);
    let a = call(
        &r,
        signed(
            "/webhook/cognigy",
            &serde_json::to_vec(&no_order).expect("json"),
        ),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "rule_rejected");
    assert_eq!(a.body["message"], "Required entity orderId is missing");
    // No idempotency key was kept: the same request is judged again, not replayed.
    let again = call(
        &r,
        signed(
            "/webhook/cognigy",
            &serde_json::to_vec(&no_order).expect("json"),
        ),
    )
    .await;
    assert_error(&again, StatusCode::UNPROCESSABLE_ENTITY, "rule_rejected");
    assert!(again.headers.get("idempotent-replayed").is_none());

    app.state().store.caught_up().await.expect("caught up");
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 0);
}

#[tokio::test]
async fn wrong_content_type_is_415_and_oversized_body_is_413() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |c| c.limits.max_body_bytes = 64).await;
    let r = app.public_router();
    let body = flow_body("s", "c");
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let a = call(
            &r,
            post(
                "/webhook",
                &body,
                &[("content-type", ct), ("x-cognigy-signature", &sign(&body))],
            ),
        )
        .await;
        assert_error(
            &a,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let a = call(
        &r,
        post("/webhook", &body, &[("x-cognigy-signature", &sign(&body))]),
    )
    .await;
    assert_error(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let big = vec![b' '; 65];
    let a = call(&r, signed("/webhook", &big)).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn unknown_path_is_json_404_and_wrong_method_is_json_405() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let a = call(&r, Request::get("/nope").body(Body::empty()).expect("req")).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = call(
        &r,
        Request::get("/webhook").body(Body::empty()).expect("req"),
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = call(
        &r,
        Request::delete("/webhook/cognigy")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // /simulate does not exist unless the simulator is on.
    let a = call(
        &r,
        post(
            "/simulate",
            &flow_body("s", "c"),
            &[("content-type", "application/json")],
        ),
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn duplicate_gets_original_answer_with_replayed_header() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let body = flow_body("s-dup", "c-dup");
    let first = call(&r, signed("/webhook", &body)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = call(&r, signed("/webhook", &body)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["x-correlation-id"], "c-dup");

    // Same body under another Idempotency-Key is a new event.
    let mut req = signed("/webhook", &body);
    req.headers_mut()
        .insert("idempotency-key", "k-1".parse().expect("hv"));
    let third = call(&r, req).await;
    assert!(third.headers.get("idempotent-replayed").is_none());
    assert_eq!(third.body["data"]["stateVersion"], 2);
}

#[tokio::test]
async fn response_over_the_limit_is_500_internal_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |c| c.limits.max_response_bytes = 100).await;
    let r = app.public_router();
    let a = call(&r, signed("/webhook", &flow_body("s", "c"))).await;
    assert_error(&a, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    app.state().store.caught_up().await.expect("caught up");
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM sessions"), 0);
}

#[tokio::test]
async fn admin_api_needs_the_token_and_shows_the_journey() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    let ok = call(&r, signed("/webhook", &flow_body("s-adm", "corr-adm"))).await;
    assert_eq!(ok.status, StatusCode::OK);

    let get = |auth: Option<&str>, path: &str| {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(Body::empty()).expect("req")
    };
    let a = call(&r, get(None, "/admin/events/corr-adm")).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = call(&r, get(Some("Bearer wrong"), "/admin/events/corr-adm")).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    // Both refusals are counted, by reason.
    let resp = r
        .clone()
        .oneshot(get(None, "/metrics"))
        .await
        .expect("metrics");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let metrics = String::from_utf8_lossy(&bytes);
    for reason in ["missing_token", "wrong_token"] {
        let line = format!("cognihook_admin_auth_failures_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    let bearer = format!("Bearer {}", support::ADMIN_TOKEN);
    let a = call(&r, get(Some(&bearer), "/admin/events/corr-adm")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["event"]["correlationId"], "corr-adm");
    assert_eq!(a.body["event"]["stateVersion"], 1);
    assert_eq!(a.body["event"]["route"], "flow-events");
    assert_eq!(a.body["event"]["payload"]["flowName"], "OrderSupportFlow");
    assert_eq!(a.body["deliveries"], json!([]));
    let event_id = a.body["event"]["eventId"].as_str().expect("id").to_string();
    let a = call(&r, get(Some(&bearer), &format!("/admin/events/{event_id}"))).await;
    assert_eq!(a.body["event"]["correlationId"], "corr-adm");
    let a = call(&r, get(Some(&bearer), "/admin/events/unknown")).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    let dir2 = tempfile::tempdir().expect("tmp");
    let app2 = build_app(dir2.path(), |c| c.server.admin_token = None).await;
    let a = call(&app2.public_router(), get(Some(&bearer), "/admin/events/x")).await;
    assert_error(&a, StatusCode::FORBIDDEN, "admin_disabled");
}

#[tokio::test]
async fn health_stats_and_metrics_report_what_happened() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |_| {}).await;
    let r = app.public_router();
    assert_eq!(
        call(&r, signed("/webhook", &flow_body("s-m", "c-m")))
            .await
            .status,
        StatusCode::OK
    );
    let bad = call(
        &r,
        post("/webhook", b"{}", &[("content-type", "application/json")]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    // A rule's refusal is the route's intended answer: counted apart from errors.
    let mut low: Value = serde_json::from_slice(&nlu_body(
        "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5f",
        "A-1",
        "c-low",
    ))
    .expect("json");
    low["intent"]["confidence"] = json!(0.5);
    let rejected = call(
        &r,
        signed("/webhook/cognigy", &serde_json::to_vec(&low).expect("json")),
    )
    .await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);

    let h = call(
        &r,
        Request::get("/healthz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(h.status, StatusCode::OK);
    let ready = call(
        &r,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    let s = call(&r, Request::get("/stats").body(Body::empty()).expect("req")).await;
    assert_eq!(s.body["total_requests"], 3, "{}", s.body);
    assert_eq!(s.body["total_errors"], 1);
    assert_eq!(s.body["total_rejections"], 1);
    assert!(s.body["total_latency_ns"].as_u64().is_some_and(|n| n > 0));
    let rate = s.body["success_rate"].as_f64().expect("rate");
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(s.body["events_committed"], 1);
    assert!(s.body["latency_ms"]["p99"]
        .as_f64()
        .is_some_and(|p| p > 0.0));
    assert_eq!(s.body["outbox_pending"], 0);

    let resp = r
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
        .await
        .expect("metrics");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("b")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    for name in [
        "cognihook_requests_total{route=\"flow-events\",status=\"200\",code=\"\"}",
        "cognihook_requests_total{route=\"flow-events\",status=\"401\",code=\"missing_signature\"}",
        "cognihook_request_duration_seconds_bucket{route=\"flow-events\"",
        "cognihook_signature_checks_total{route=\"flow-events\",result=\"valid\",secret=\"COGNIGY_WEBHOOK_SECRET[1]\"}",
        "cognihook_signature_checks_total{route=\"flow-events\",result=\"missing\",secret=\"\"}",
        "cognihook_events_committed_total{route=\"flow-events\"}",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert!(!text.contains(support::SECRET), "metrics leak the secret");
}

#[tokio::test]
async fn simulator_skips_auth_and_marks_events_simulated() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = build_app(dir.path(), |c| c.server.simulator = true).await;
    let r = app.public_router();
    let ct = [("content-type", "application/json")];
    let a = call(&r, post("/simulate", &flow_body("s-sim", "c-sim"), &ct)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let session = "3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e";
    let a = call(
        &r,
        post(
            "/simulate/webhook/cognigy",
            &nlu_body(session, "A-9", "c-sim2"),
            &ct,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["data"]["orderId"], "A-9");
    // The simulator still validates and applies rules.
    let a = call(&r, post("/simulate", b"[]", &ct)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_json");
    // The real route still needs a signature.
    let a = call(&r, post("/webhook", &flow_body("s-sim", "c-x"), &ct)).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "missing_signature");

    app.state().store.caught_up().await.expect("caught up");
    let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, &dir.path().join("cognihook.db"))
        .expect("function");
    assert_eq!(
        count(&db, "SELECT count(*) FROM all_events WHERE simulated = 1"),
        2
    );
    let body: String = db
        .query_row(
            "SELECT body FROM all_events WHERE correlation_id = 'c-sim'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    let ev: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ev["simulated"], true);
}
