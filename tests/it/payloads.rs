//! The Cognigy payload kinds through the real server: the shared samples as fixtures, JSON and
//! form-encoded, and a user schema with pointers; every kind normalises to the same event, so
//! rules and extracts work the same on each.

use http::StatusCode;

use crate::support::{count, set_routes, TestApp};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cognigy");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

const KEY: (&str, &str) = ("x-api-key", "k-1");
const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn routes(schema: &std::path::Path) -> String {
    format!(
        r#"
[[route]]
name = "input"
path = "/cognigy/input"
payload = "cognigy-input"
auth = {{ scheme = "api-key", keys = ["k-1"] }}
rules = [{{ expr = "event.intent.score >= 0.75", message = "Intent confidence below business threshold" }}]
extract = {{ city = "event.entities.city", token = "event.urlToken" }}

[[route]]
name = "output"
path = "/cognigy/output"
payload = "webhook-output"
auth = {{ scheme = "api-key", keys = ["k-1"] }}
extract = {{ said = "event.text" }}

[[route]]
name = "orders"
path = "/orders"
payload = {{ kind = "json-schema", schema = "{}", pointers = {{ sessionId = "/conversation/id", userId = "/conversation/user", text = "/message", entities = "/order" }} }}
auth = {{ scheme = "api-key", keys = ["k-1"] }}
rules = [{{ expr = "has(event.entities.orderId)", message = "Required entity orderId is missing" }}]
extract = {{ orderId = "event.entities.orderId" }}
"#,
        schema.display()
    )
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["conversation", "message"],
  "properties": {
    "conversation": {
      "type": "object",
      "required": ["id", "user"],
      "properties": { "id": {"type": "string"}, "user": {"type": "string"} }
    },
    "message": {"type": "string", "maxLength": 200},
    "order": {"type": "object", "properties": {"orderId": {"type": "string", "pattern": "^A-[0-9]+$"}}}
  }
}"#;

async fn spawn() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let text = routes(&schema);
    TestApp::spawn_in(dir, |c| set_routes(c, &text)).await
}

#[tokio::test]
async fn http_node_sample_as_json_and_as_form_gives_the_same_event() {
    let app = spawn().await;
    let r = app
        .post(
            "/cognigy/input",
            &fixture("http-request-node-body.rendered.json"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["data"]["city"], "Düsseldorf");
    assert!(j["data"]["token"].as_str().unwrap().starts_with("4e5e2f"));
    assert_eq!(j["data"]["stateVersion"], 1);

    let form = "userId=user123&sessionId=session123&text=Where+is+my+order+12345%3F\
        &intent=orderStatus&intentScore=0.87&URLToken=4e5e2f01\
        &slots=%7B%22city%22%3A%5B%7B%22keyphrase%22%3A%22D%C3%BCsseldorf%22%7D%5D%7D";
    let r = app
        .post("/cognigy/input", form.as_bytes(), &[FORM, KEY])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["city"], "Düsseldorf");
    assert_eq!(r.json()["data"]["stateVersion"], 2);

    let db = app.db().await;
    let stored: String = db
        .query_row(
            "SELECT body FROM all_events WHERE state_version = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let ev: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(ev["eventType"], "cognigy.input");
    assert_eq!(ev["intent"]["score"], 0.87);
    assert_eq!(ev["urlToken"], "4e5e2f01");
    assert_eq!(ev["locale"], serde_json::Value::Null);
}

#[tokio::test]
async fn cognigy_input_rules_and_errors() {
    let app = spawn().await;
    let low = br#"{"userId":"u","sessionId":"s","intent":"orderStatus","intentScore":"0.4"}"#;
    let r = app.post("/cognigy/input", low, &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post(
            "/cognigy/input",
            b"text=hello&intentScore=abc",
            &[FORM, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let j = r.json();
    assert_eq!(j["code"], "invalid_payload");
    let mut fields: Vec<_> = j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(fields, ["intentScore", "sessionId", "userId"]);
    let r = app
        .post(
            "/cognigy/input",
            b"userId=u",
            &[("content-type", "text/plain"), KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("application/x-www-form-urlencoded"));
    assert_eq!(count(&app.db().await, "SELECT count(*) FROM all_events"), 0);
}

#[tokio::test]
async fn webhook_output_sample_and_form_refused_on_other_kinds() {
    let app = spawn().await;
    let r = app
        .post(
            "/cognigy/output",
            &fixture("webhook-endpoint-output.json"),
            &[JSON, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["data"]["said"]
        .as_str()
        .unwrap()
        .starts_with("I'd be happy"));
    let r = app
        .post(
            "/cognigy/output",
            b"userId=u&sessionId=s&text=x",
            &[FORM, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn json_schema_route_validates_then_follows_its_pointers() {
    let app = spawn().await;
    let ok =
        br#"{"conversation":{"id":"c-1","user":"u-1"},"message":"hi","order":{"orderId":"A-7"}}"#;
    let r = app.post("/orders", ok, &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["orderId"], "A-7");
    let stored: String = app
        .db()
        .await
        .query_row("SELECT body FROM all_events", [], |r| r.get(0))
        .unwrap();
    let ev: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(ev["sessionId"], "c-1");
    assert_eq!(ev["userId"], "u-1");
    assert_eq!(ev["text"], "hi");

    let bad = br#"{"conversation":{"id":5},"order":{"orderId":"B"}}"#;
    let r = app.post("/orders", bad, &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let j = r.json();
    assert_eq!(j["code"], "invalid_payload");
    let fields: Vec<_> = j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect();
    for want in ["/", "/conversation", "/conversation/id", "/order/orderId"] {
        assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
    }
    let no_order = br#"{"conversation":{"id":"c-1","user":"u-1"},"message":"hi"}"#;
    let r = app.post("/orders", no_order, &[JSON, KEY]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn json_schema_config_problems_are_named() {
    let mut c = cognihook::config::Config::default();
    set_routes(
        &mut c,
        r#"
[[route]]
name = "a"
path = "/a"
payload = { kind = "json-schema", pointers = { userId = "user", colour = "/c" } }
auth = { scheme = "api-key", keys = ["k"] }

[[route]]
name = "b"
path = "/b"
payload = { kind = "nlu", schema = "x.json" }
auth = { scheme = "api-key", keys = ["k"] }
"#,
    );
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let problems = cognihook::ingest::Routes::build(&c, &crate::support::env())
        .expect_err("payload problems")
        .join("\n");
    for want in [
        "route `a`: payload kind json-schema needs `schema`",
        "route `a`: payload kind json-schema needs pointers.sessionId",
        "route `a`: payload.pointers.colour is not an event field",
        "route `a`: payload.pointers.userId = `user` is not a JSON pointer",
        "route `b`: payload.schema and payload.pointers apply only to kind json-schema",
    ] {
        assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
    }
    let err = cognihook::config::Config::from_toml(
        "[[route]]\nname='x'\npath='/x'\npayload={kind='json-schema', scheme='typo'}\nauth={scheme='none'}\n",
    )
    .expect_err("unknown key");
    assert!(format!("{err:?}").contains("scheme"), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"type": 12}"#).unwrap();
    let mut c = cognihook::config::Config::default();
    set_routes(
        &mut c,
        &format!(
            "[[route]]\nname='s'\npath='/s'\npayload={{kind='json-schema', schema='{}', pointers={{sessionId='/s', userId='/u'}}}}\nauth={{scheme='api-key', keys=['k']}}\n",
            broken.display()
        ),
    );
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let problems =
        cognihook::ingest::Routes::build(&c, &crate::support::env()).expect_err("bad schema");
    assert!(
        problems.join("\n").contains("is not a valid JSON Schema"),
        "{problems:?}"
    );
}

/// A `multipart/form-data` body as Cognigy's Form-Data payload type sends it: one part per
/// key; `file` adds a file part.
fn multipart(boundary: &str, fields: &[(&str, &str)], file: bool) -> Vec<u8> {
    let mut b = String::new();
    for (name, value) in fields {
        b.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    if file {
        b.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n\x01\x02\r\n"
        ));
    }
    b.push_str(&format!("--{boundary}--\r\n"));
    b.into_bytes()
}

#[tokio::test]
async fn form_data_text_parts_and_json_sent_as_a_form_are_decoded_on_cognigy_input() {
    let app = spawn().await;
    let fields = [
        ("userId", "user123"),
        ("sessionId", "session-mp"),
        ("text", "Where is my order?"),
        ("intent", "orderStatus"),
        ("intentScore", "0.9"),
        ("slots", r#"{"city":[{"keyphrase":"Köln"}]}"#),
    ];
    let mp = ("content-type", "multipart/form-data; boundary=XyZ-42");
    let r = app
        .post(
            "/cognigy/input",
            &multipart("XyZ-42", &fields, false),
            &[mp, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["city"], "Köln");
    assert_eq!(r.json()["data"]["stateVersion"], 1);

    // The node's "Text" payload type with JSON in it, under its default form header.
    let json_as_form = br#"  {"userId":"user123","sessionId":"session-mp","intent":"orderStatus","intentScore":0.9}"#;
    let r = app.post("/cognigy/input", json_as_form, &[FORM, KEY]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["stateVersion"], 2);

    // A file part is refused, and nothing is stored.
    let r = app
        .post(
            "/cognigy/input",
            &multipart("XyZ-42", &fields, true),
            &[mp, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{:?}", r.body);
    assert!(r.json()["message"].as_str().unwrap().contains("upload"));
    // Malformed: the closing delimiter never comes.
    let r = app
        .post(
            "/cognigy/input",
            b"--XyZ-42\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb",
            &[mp, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    // Other payload kinds take JSON only.
    let r = app
        .post(
            "/cognigy/output",
            &multipart("XyZ-42", &fields, false),
            &[mp, KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(count(&app.db().await, "SELECT count(*) FROM all_events"), 2);
}

#[tokio::test]
async fn a_form_data_body_over_the_limit_is_refused_before_its_parts_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let text = routes(&schema);
    let app = TestApp::spawn_in(dir, |c| {
        set_routes(c, &text);
        c.limits.max_body_bytes = 2048;
    })
    .await;
    let big = "x".repeat(4096);
    let body = multipart(
        "B",
        &[("userId", "u"), ("sessionId", "s"), ("text", &big)],
        false,
    );
    let r = app
        .post(
            "/cognigy/input",
            &body,
            &[("content-type", "multipart/form-data; boundary=B"), KEY],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn voice_gateway_call_status_webhooks_become_events_of_their_call() {
    let app = TestApp::spawn_with(|c| {
        set_routes(
            c,
            r#"
[[route]]
name = "calls"
path = "/vg/status"
payload = "vg-call-status"
auth = { scheme = "jambonz", secrets = ["vg-secret"] }
rules = [{ expr = "event.entities.call_status != 'failed'", message = "failed calls go elsewhere" }]
extract = { status = "event.entities.call_status", user = "event.userId" }
"#,
        )
    })
    .await;
    let body = fixture("vg-call-status-jambonz.json");
    let now = crate::support::unix_now();
    let sig = cognihook::ingest::auth::sign_timestamped(b"vg-secret", now, &body);
    let r = app
        .post("/vg/status", &body, &[JSON, ("jambonz-signature", &sig)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["status"], "completed");
    assert_eq!(
        r.json()["data"]["user"],
        "+441303763875",
        "an outbound call's user is the callee"
    );
    let (session, kind, trace): (String, String, String) = app
        .db()
        .await
        .query_row(
            "SELECT session_id, event_type, json_extract(body, '$.traceId') FROM all_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(session, "b5e39996-bd2f-4bda-b928-355147186a2a");
    assert_eq!(kind, "vg.call.completed");
    assert_eq!(trace, "654c5323d6f907233a1069136b8a330e");

    let failed = br#"{"call_sid":"c-2","call_status":"failed","direction":"inbound","from":"+49"}"#;
    let sig = cognihook::ingest::auth::sign_timestamped(b"vg-secret", now, failed);
    let r = app
        .post("/vg/status", failed, &[JSON, ("jambonz-signature", &sig)])
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = br#"{"call_status":"completed","sip_status":"OK"}"#;
    let sig = cognihook::ingest::auth::sign_timestamped(b"vg-secret", now, bad);
    let r = app
        .post("/vg/status", bad, &[JSON, ("jambonz-signature", &sig)])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let fields: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["call_sid", "sip_status"]);
}
