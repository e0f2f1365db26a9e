//! Every authentication scheme of SPEC §4 through the real server: accepted when right;
//! missing, wrong, stale and replayed credentials each answer 401 with their own code and
//! commit nothing.

use base64::Engine as _;
use http::StatusCode;

use crate::support::{count, flow_body, set_routes, unix_now, TestApp};
use cognihook::ingest::auth::{sign_standard_webhooks, sign_timestamped};

const ROUTES: &str = r#"
[[route]]
name = "ts"
path = "/ts"
payload = "flow-event"
auth = { scheme = "hmac-sha256-timestamped", secrets = ["ts-old", "ts-new"], tolerance = "2m" }

[[route]]
name = "sw"
path = "/sw"
payload = "flow-event"
auth = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }

[[route]]
name = "jz"
path = "/jz"
payload = "flow-event"
auth = { scheme = "jambonz", secrets = ["jz-secret"] }

[[route]]
name = "basic"
path = "/basic"
payload = "flow-event"
auth = { scheme = "basic", username = "cognigy", password = "pw-1" }

[[route]]
name = "key"
path = "/key"
payload = "flow-event"
auth = { scheme = "api-key", keys = ["key-1", "key-2"] }

[[route]]
name = "open"
path = "/open"
payload = "flow-event"
allow_unauthenticated = true
auth = { scheme = "none" }
"#;

async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| set_routes(c, ROUTES)).await
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn code(r: &crate::support::TestResponse) -> String {
    r.json()["code"].as_str().unwrap_or_default().to_string()
}

async fn events(app: &TestApp) -> i64 {
    count(&app.db().await, "SELECT count(*) FROM all_events")
}

#[tokio::test]
async fn timestamped_accepts_each_secret_and_refuses_missing_wrong_stale_and_replayed() {
    let app = spawn().await;
    let now = unix_now();
    let body = flow_body("s-ts", "c-ts-1");
    let good = sign_timestamped(b"ts-new", now, &body);
    let r = app
        .post("/ts", &body, &[JSON, ("x-cognigy-signature", &good)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The very same request again is a replay, not a duplicate: 401, no original answer.
    let r = app
        .post("/ts", &body, &[JSON, ("x-cognigy-signature", &good)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "replayed_signature");
    assert!(!String::from_utf8_lossy(&r.body).contains("Payload processed"));

    // Signed afresh (a Cognigy retry), the same body is an idempotent duplicate.
    let again = sign_timestamped(b"ts-old", now + 1, &body);
    let r = app
        .post("/ts", &body, &[JSON, ("x-cognigy-signature", &again)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));

    let other = flow_body("s-ts", "c-ts-2");
    let cases = [
        (None, "missing_signature"),
        (
            Some(sign_timestamped(b"wrong", now, &other)),
            "invalid_signature",
        ),
        (
            Some(sign_timestamped(b"ts-new", now - 130, &other)),
            "stale_timestamp",
        ),
        (
            Some(sign_timestamped(b"ts-new", now + 130, &other)),
            "stale_timestamp",
        ),
        (Some(format!("t={now},v1=zz")), "invalid_signature"),
    ];
    for (header, want) in cases {
        let mut headers = vec![JSON];
        if let Some(h) = &header {
            headers.push(("x-cognigy-signature", h));
        }
        let r = app.post("/ts", &other, &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(code(&r), want, "{header:?}");
    }
    assert_eq!(events(&app).await, 1);
}

#[tokio::test]
async fn a_spent_signature_stays_spent_across_a_restart() {
    let app = spawn().await;
    let body = flow_body("s-restart", "c-restart");
    let sig = sign_timestamped(b"ts-old", unix_now(), &body);
    let headers = [JSON, ("x-cognigy-signature", sig.as_str())];
    assert_eq!(
        app.post("/ts", &body, &headers).await.status,
        StatusCode::OK
    );
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir, |c| set_routes(c, ROUTES)).await;
    let r = app.post("/ts", &body, &headers).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "replayed_signature");
    assert_eq!(events(&app).await, 1);
}

#[tokio::test]
async fn standard_webhooks_headers_are_checked_and_webhook_id_is_the_idempotency_key() {
    let app = spawn().await;
    let key = base64::engine::general_purpose::STANDARD
        .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap();
    let now = unix_now();
    let body = flow_body("s-sw", "c-sw");
    let ts = now.to_string();
    let sig = sign_standard_webhooks(&key, "msg_1", now, &body);
    let headers = |id: &'static str, ts: String, sig: String| {
        vec![
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), ts),
            ("webhook-signature".to_string(), sig),
        ]
    };
    let post = |h: Vec<(String, String)>, body: Vec<u8>| {
        let app = &app;
        async move {
            let mut all: Vec<(&str, &str)> = vec![JSON];
            all.extend(h.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            app.post("/sw", &body, &all).await
        }
    };
    let r = post(headers("msg_1", ts.clone(), sig.clone()), body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = post(headers("msg_1", ts.clone(), sig.clone()), body.clone()).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"));

    let stale_ts = now - 301;
    let stale = sign_standard_webhooks(&key, "msg_2", stale_ts, &body);
    let r = post(headers("msg_2", stale_ts.to_string(), stale), body.clone()).await;
    assert_eq!(code(&r), "stale_timestamp");
    let r = post(headers("msg_3", ts.clone(), sig.clone()), body.clone()).await;
    assert_eq!(code(&r), "invalid_signature", "the id is signed");
    let r = app
        .post("/sw", &body, &[JSON, ("webhook-id", "msg_4")])
        .await;
    assert_eq!(code(&r), "missing_signature");
    assert_eq!(events(&app).await, 1);
}

#[tokio::test]
async fn jambonz_signature_header_is_checked() {
    let app = spawn().await;
    let now = unix_now();
    let body = flow_body("s-jz", "c-jz");
    let sig = sign_timestamped(b"jz-secret", now, &body);
    let r = app
        .post("/jz", &body, &[JSON, ("jambonz-signature", &sig)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .post("/jz", &body, &[JSON, ("x-cognigy-signature", &sig)])
        .await;
    assert_eq!(code(&r), "missing_signature");
    let wrong = sign_timestamped(b"other", now, &body);
    let r = app
        .post("/jz", &body, &[JSON, ("jambonz-signature", &wrong)])
        .await;
    assert_eq!(code(&r), "invalid_signature");
    let old = sign_timestamped(b"jz-secret", now - 600, &body);
    let r = app
        .post("/jz", &body, &[JSON, ("jambonz-signature", &old)])
        .await;
    assert_eq!(code(&r), "stale_timestamp");
}

#[tokio::test]
async fn basic_and_api_key_credentials() {
    let app = spawn().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = flow_body("s-cred", "c-cred-1");
    let ok = format!("Basic {}", b64("cognigy:pw-1"));
    let r = app
        .post("/basic", &body, &[JSON, ("authorization", &ok)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let bad = format!("Basic {}", b64("cognigy:pw-2"));
    let r = app
        .post("/basic", &body, &[JSON, ("authorization", &bad)])
        .await;
    assert_eq!(code(&r), "invalid_signature");
    let r = app.post("/basic", &body, &[JSON]).await;
    assert_eq!(code(&r), "missing_signature");

    let body = flow_body("s-cred", "c-cred-2");
    let r = app
        .post("/key", &body, &[JSON, ("x-api-key", "key-2")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = flow_body("s-cred", "c-cred-3");
    let r = app
        .post("/key", &body, &[JSON, ("authorization", "ApiKey key-1")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .post("/key", &body, &[JSON, ("x-api-key", "key-3")])
        .await;
    assert_eq!(code(&r), "invalid_signature");
    let r = app.post("/key", &body, &[JSON]).await;
    assert_eq!(code(&r), "missing_signature");
    assert!(!String::from_utf8_lossy(&r.body).contains("key-1"));
    assert_eq!(events(&app).await, 3);
}

#[tokio::test]
async fn none_needs_allow_unauthenticated() {
    let app = spawn().await;
    let r = app
        .post("/open", &flow_body("s-open", "c-open"), &[JSON])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let mut c = cognihook::config::Config::default();
    set_routes(
        &mut c,
        r#"
[[route]]
name = "open"
path = "/open"
payload = "flow-event"
auth = { scheme = "none" }
"#,
    );
    let problems = route_problems(&c);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("allow_unauthenticated = true")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn scheme_keys_that_do_not_apply_are_config_errors() {
    let mut c = cognihook::config::Config::default();
    set_routes(
        &mut c,
        r#"
[[route]]
name = "a"
path = "/a"
payload = "flow-event"
auth = { scheme = "api-key", keys = ["k"], secrets = ["s"], tolerance = "1m" }

[[route]]
name = "b"
path = "/b"
payload = "flow-event"
auth = { scheme = "basic", password = "p" }

[[route]]
name = "c"
path = "/c"
payload = "flow-event"
auth = { scheme = "hmac-sha256-timestamped" }
"#,
    );
    let problems = route_problems(&c).join("\n");
    for want in [
        "route `a`: auth.secrets does not apply to scheme api-key",
        "route `a`: auth.tolerance does not apply to scheme api-key",
        "route `b`: auth scheme basic needs a `username`",
        "route `c`: auth scheme hmac-sha256-timestamped needs `secrets`",
    ] {
        assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
    }
}

#[tokio::test]
async fn a_401_names_the_scheme_the_route_expects_in_www_authenticate() {
    let app = spawn().await;
    let body = flow_body("s-chal", "c-chal");
    for (path, challenge) in [
        ("/basic", r#"Basic realm="cognihook", charset="UTF-8""#),
        ("/key", r#"ApiKey realm="cognihook""#),
        ("/jz", r#"jambonz realm="cognihook""#),
        ("/ts", r#"hmac-sha256-timestamped realm="cognihook""#),
        ("/sw", r#"standard-webhooks realm="cognihook""#),
    ] {
        let r = app.post(path, &body, &[JSON]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            r.headers
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some(challenge),
            "{path}"
        );
    }
    let ok = app
        .post("/open", &flow_body("s-chal", "c-chal-open"), &[JSON])
        .await;
    assert!(ok.headers.get(http::header::WWW_AUTHENTICATE).is_none());
}

/// What building the routes finds wrong (an `auth` table's keys are checked there).
fn route_problems(c: &cognihook::config::Config) -> Vec<String> {
    let env = std::collections::BTreeMap::<String, String>::new();
    cognihook::ingest::Routes::build(c, &env)
        .err()
        .unwrap_or_default()
}
