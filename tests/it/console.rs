//! The console's security and pages over plain HTTP (the browser tests drive the same pages
//! in Chromium): sign-in, the session cookie, CSRF, the sign-in limit, pages that never show
//! a secret, and the operator's actions (pause, reveal, replay, purge, sign out).

use std::time::Duration;

use http::StatusCode;

use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{flow_body, read_audit, TestApp, ADMIN_TOKEN, SECRET};

const T: Duration = Duration::from_secs(20);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn text(r: &crate::support::TestResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Signs in; returns the `Cookie` header value.
async fn sign_in(app: &TestApp) -> String {
    let r = app
        .post(
            "/console/login",
            format!("token={ADMIN_TOKEN}").as_bytes(),
            &[FORM],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert_eq!(r.header("location"), Some("/console/"));
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    set.split(';').next().unwrap().to_string()
}

/// The CSRF token of the first form on a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 32].to_string()
}

async fn get(app: &TestApp, path: &str, cookie: &str) -> crate::support::TestResponse {
    app.get(path, &[("cookie", cookie)]).await
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: &str,
    body: &str,
) -> crate::support::TestResponse {
    app.post(path, body.as_bytes(), &[FORM, ("cookie", cookie)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_page_sends_to_the_sign_in_and_wrong_tokens_are_limited() {
    let app = TestApp::spawn().await;
    for path in [
        "/console/",
        "/console/events",
        "/console/dead-letters",
        "/console/sinks",
        "/console/configuration",
    ] {
        let r = app.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.header("location"), Some("/console/login"), "{path}");
        let r = get(&app, path, "cognihook_console=9999999999.00.forged").await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "a forged cookie: {path}");
    }
    let login = app.get("/console/login", &[]).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(text(&login).contains("name=\"token\""));
    assert_eq!(login.header("x-frame-options"), Some("DENY"));
    for _ in 0..5 {
        let r = app.post("/console/login", b"token=wrong", &[FORM]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.header("set-cookie").is_none());
        assert!(text(&r).contains("not the admin token"));
    }
    let r = app
        .post(
            "/console/login",
            format!("token={ADMIN_TOKEN}").as_bytes(),
            &[FORM],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right token waits"
    );
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_console_is_disabled() {
    let app = TestApp::spawn_with(|c| c.server.admin_token = None).await;
    for path in ["/console/", "/console/login"] {
        let r = app.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(text(&r).contains("COGNIHOOK_ADMIN_TOKEN"), "{path}");
    }
    let r = app.post("/console/login", b"token=anything", &[FORM]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_behind_tls_gets_a_secure_cookie() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/console/login",
            format!("token={ADMIN_TOKEN}").as_bytes(),
            &[FORM, ("x-forwarded-proto", "https")],
        )
        .await;
    assert!(r.header("set-cookie").expect("cookie").contains("; Secure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_csrf_token_and_pages_never_show_a_secret() {
    let backend = SinkServer::start().await;
    let table = format!(
        "kind = \"http\"\nurl = \"http://user:pw-in-url@{}/events?token=qs-secret\"\nsecret = \"sink-signing-secret\"\n\
         rate_limit = {{ per = \"1m\", max = 30 }}",
        backend.addr
    );
    let app = TestApp::spawn_with(|c| crate::support::attach_sink(c, "backend", &table)).await;
    let r = app
        .post_signed("/webhook", &flow_body("s-console", "corr-console"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = sign_in(&app).await;
    let mut pages = String::new();
    for path in [
        "/console/",
        "/console/events?q=corr-console",
        "/console/dead-letters",
        "/console/sinks",
        "/console/configuration",
    ] {
        let r = get(&app, path, &cookie).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", text(&r));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        pages.push_str(&text(&r));
    }
    for secret in [
        SECRET,
        "old-secret",
        ADMIN_TOKEN,
        "pw-in-url",
        "qs-secret",
        "sink-signing-secret",
    ] {
        assert!(!pages.contains(secret), "a page shows {secret}");
    }
    assert!(
        pages.contains("COGNIGY_WEBHOOK_SECRET[1]"),
        "the matched secret, by label"
    );

    let sinks = text(&get(&app, "/console/sinks", &cookie).await);
    assert!(
        sinks.contains(" of 30 per 1m left"),
        "the rate limit's state: {sinks}"
    );
    let token = csrf(&sinks);
    let r = post_form(&app, "/console/sinks/backend/pause", &cookie, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token");
    let r = post_form(
        &app,
        "/console/sinks/backend/pause",
        &cookie,
        "csrf=0123456789abcdef0123456789abcdef",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a wrong CSRF token");
    assert!(!app.deliverer().sink("backend").unwrap().is_paused());
    let r = post_form(
        &app,
        "/console/sinks/backend/pause",
        &cookie,
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(app.deliverer().sink("backend").unwrap().is_paused());
    let r = post_form(
        &app,
        "/console/sinks/backend/resume",
        &cookie,
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!app.deliverer().sink("backend").unwrap().is_paused());

    // Signed out, the same cookie is refused.
    let r = post_form(&app, "/console/logout", &cookie, &format!("csrf={token}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = get(&app, "/console/sinks", &cookie).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/console/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_found_its_text_revealed_on_request_and_dead_letters_replayed_after_a_count() {
    let backend = SinkServer::start().await;
    backend.set_fallback(Reply::Status(400));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 1 }}",
        backend.url("/events")
    );
    let app = TestApp::spawn_with(|c| crate::support::attach_sink(c, "backend", &table)).await;
    let r = app
        .post_signed("/webhook", &flow_body("s-dl", "corr-dl"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("a dead letter", T, || {
        app.deliverer().sink("backend").unwrap().dead_letters_made()[0].1 == 1
    })
    .await;
    let cookie = sign_in(&app).await;

    let overview = text(&get(&app, "/console/", &cookie).await);
    for want in [
        "<meta http-equiv=\"refresh\" content=\"5\">",
        "aria-label=\"requests/s\"",
        "aria-label=\"deliveries/s\"",
        "<td>flow-events</td>",
        "class=permanent\">permanent</a></td><td>1</td>",
        "<tr id=\"outcomes-backend\"><td>backend</td>",
    ] {
        assert!(overview.contains(want), "{want} in {overview}");
    }

    let row = overview
        .split("<tr id=\"outcomes-backend\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("the sink's outcomes");
    assert!(
        row.ends_with("<td>1</td><td>0</td><td>0</td>"),
        "one permanent dead letter kept: {row}"
    );
    let page = text(&get(&app, "/console/events?q=corr-dl", &cookie).await);
    assert!(page.contains("backend"), "the delivery is listed");
    assert!(page.contains("HTTP 400"), "with its error");
    assert!(!page.contains("Check order status"), "the text is hidden");
    let event_id = page
        .split("Event <code>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the event id")
        .to_string();
    let revealed = text(
        &post_form(
            &app,
            &format!("/console/events/{event_id}/reveal"),
            &cookie,
            &format!("csrf={}", csrf(&page)),
        )
        .await,
    );
    assert!(revealed.contains("Check order status"), "{revealed}");

    let sinks = text(&get(&app, "/console/sinks", &cookie).await);
    assert!(sinks.contains("HTTP 400"), "the last error: {sinks}");
    let recent = text(&get(&app, "/console/dead-letters?since=1h", &cookie).await);
    assert!(recent.contains("1 dead letter(s) match"), "{recent}");
    let older = text(&get(&app, "/console/dead-letters?until=1h", &cookie).await);
    assert!(older.contains("0 dead letter(s) match"), "{older}");
    let bad = text(&get(&app, "/console/dead-letters?since=yesterday-ish", &cookie).await);
    assert!(bad.contains("since:"), "{bad}");
    let refused = post_form(
        &app,
        "/console/dead-letters/replay",
        &cookie,
        &format!("csrf={}&since=yesterday-ish&confirm=yes", csrf(&recent)),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("Nothing was done"));
    let page = text(
        &get(
            &app,
            "/console/dead-letters?sink=backend&class=permanent",
            &cookie,
        )
        .await,
    );
    assert!(page.contains("1 dead letter(s) match"), "{page}");
    backend.set_fallback(Reply::Status(200));
    let form = format!("csrf={}&sink=backend&route=&class=permanent", csrf(&page));
    let dry = text(&post_form(&app, "/console/dead-letters/replay", &cookie, &form).await);
    assert!(dry.contains("This replays <strong>1</strong>"), "{dry}");
    assert_eq!(backend.received().len(), 1, "a dry run sends nothing");
    let done = text(
        &post_form(
            &app,
            "/console/dead-letters/replay",
            &cookie,
            &format!("{form}&confirm=yes"),
        )
        .await,
    );
    assert!(done.contains("Replayed 1 dead letter(s)"), "{done}");
    backend.wait_for(2, T).await;

    let path = app.audit_path.clone();
    let _dir = app.stop().await;
    let audit = read_audit(&path);
    assert!(
        audit
            .iter()
            .any(|l| l["event"] == "payload_revealed" && l["event_id"] == event_id.as_str()),
        "{audit:#?}"
    );
    assert!(audit.iter().any(|l| l["event"] == "replayed"));
}

/// The session of the timeline tests (the nlu payload wants a UUID).
const SESSION: &str = "6b1e1f2a-9c0d-4e3f-8a7b-1c2d3e4f5a6b";

/// A session's timeline: every accepted event with its `stateVersion` and deliveries.
async fn timeline_shows_the_session(app: &TestApp) {
    for i in 0..3 {
        let r = app
            .post_signed("/webhook", &flow_body(SESSION, &format!("tl-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = app
        .post_signed(
            "/webhook/cognigy",
            &crate::support::nlu_body(SESSION, "A-77", "tl-3"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .post_signed("/webhook", &flow_body("s-other", "tl-other"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = sign_in(app).await;
    let page = text(&get(app, &format!("/console/events?q={SESSION}"), &cookie).await);
    assert!(page.contains("<table id=\"timeline\">"), "{page}");
    let rows: Vec<&str> = page.split("<tr><td>").skip(1).collect();
    assert_eq!(rows.len(), 4, "{page}");
    for (row, (version, corr)) in
        rows.iter()
            .zip([(4, "tl-3"), (3, "tl-2"), (2, "tl-1"), (1, "tl-0")])
    {
        assert!(row.starts_with(&format!("{version}</td>")), "{row}");
        assert!(row.contains(corr), "{row}");
        assert!(row.contains("200 success"), "the answer: {row}");
    }
    assert!(
        rows[0].contains("extracted: orderId"),
        "the rules' outcome: {}",
        rows[0]
    );
    assert!(!rows[0].contains("A-77"), "names, not values");
    assert!(!page.contains("tl-other"));
    // An event's page links to its session.
    let event = text(&get(app, "/console/events?q=tl-1", &cookie).await);
    assert!(
        event.contains(&format!("href=\"/console/events?q={SESSION}\"")),
        "{event}"
    );
    assert!(event.contains("(stateVersion 2)"), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_finds_its_timeline_newest_first() {
    let app = TestApp::spawn().await;
    timeline_shows_the_session(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_session_id_finds_its_timeline_on_the_shared_store() {
    let Some(url) = crate::store_suite::fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let app = TestApp::spawn_with(|c| c.store.url = Some(url.into())).await;
    timeline_shows_the_session(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_replica_is_good_on_another_with_the_same_token() {
    let (a, b) = (TestApp::spawn().await, TestApp::spawn().await);
    let cookie = sign_in(&a).await;
    let r = get(&b, "/console/sinks", &cookie).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let other = TestApp::spawn_with(|c| c.server.admin_token = Some("another-token".into())).await;
    let r = get(&other, "/console/sinks", &cookie).await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "a different token, a different key"
    );
}
