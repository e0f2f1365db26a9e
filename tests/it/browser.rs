//! The console in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! on loopback. Runs when `COGNIHOOK_TEST_BROWSER` is set (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver` and sets it); fails loudly when it is set and the browser
//! cannot start. Screenshots of each page go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use serde_json::{json, Value};

use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{flow_body, TestApp, ADMIN_TOKEN};

const T: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("COGNIHOOK_TEST_BROWSER is set but {bin} cannot start: {e}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let addr = format!("127.0.0.1:{port}");
    wait_until("chromedriver to listen", T, || {
        std::net::TcpStream::connect(&addr).is_ok()
    })
    .await;
    driver
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chrome = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_BROWSER is set but Chromium does not start: {e}")
        })
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The page's JavaScript console: every entry at level SEVERE (errors), through chromedriver's
/// log endpoint.
async fn js_errors(driver: &Driver, c: &Client) -> Vec<Value> {
    let id = c.session_id().await.unwrap().expect("a session");
    let r = reqwest::Client::new()
        .post(format!("{}/session/{id}/se/log", driver.url))
        .header("content-type", "application/json")
        .body(json!({ "type": "browser" }).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["value"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn page(c: &Client) -> String {
    c.source().await.unwrap()
}

/// Waits until the page's source contains `text` (pages load after a click).
async fn wait_for_text(c: &Client, text: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let html = page(c).await;
        if html.contains(text) {
            return html;
        }
        assert!(start.elapsed() < T, "no {text:?} in {html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_finds_an_event_replays_its_dead_letter_pauses_a_sink_and_signs_out() {
    if std::env::var("COGNIHOOK_TEST_BROWSER").is_err() {
        eprintln!("COGNIHOOK_TEST_BROWSER is not set: the browser test does not run");
        return;
    }
    let backend = SinkServer::start().await;
    backend.script(1, Reply::Status(400));
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\nretry = {{ max_attempts = 1 }}",
        backend.url("/events")
    );
    let app = TestApp::spawn_with(|c| crate::support::attach_sink(c, "backend", &table)).await;
    let driver = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let base = format!("http://{}", app.addr);

    // Not signed in: the console sends to the sign-in.
    c.goto(&format!("{base}/console/sinks")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/login"));
    shot(&c, "login").await;
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    click(&c, "button[type=submit]").await;
    wait_for_text(&c, "not the admin token").await;
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    click(&c, "button[type=submit]").await;
    wait_for_text(&c, "<h1>Overview</h1>").await;

    // An event whose delivery is refused: a dead letter.
    let r = app
        .post_signed("/webhook", &flow_body("s-browser", "corr-browser"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let sink = app.deliverer().sink("backend").unwrap().clone();
    wait_until("a dead letter", T, || sink.dead_letters_made()[0].1 == 1).await;
    c.goto(&format!("{base}/console/")).await.unwrap();
    wait_for_text(&c, "<td>flow-events</td>").await;
    shot(&c, "overview").await;

    // Found by its correlation id; its journey shows the refused attempt; text on request.
    click(&c, "header a[href='/console/events']").await;
    let q = c
        .wait()
        .at_most(T)
        .for_element(Locator::Css("input[name=q]"))
        .await
        .unwrap();
    q.send_keys("corr-browser").await.unwrap();
    click(&c, "main form button[type=submit]").await;
    let journey = wait_for_text(&c, "Deliveries").await;
    assert!(journey.contains("HTTP 400"), "{journey}");
    assert!(!journey.contains("Check order status"));
    shot(&c, "journey").await;
    click(&c, "form[action$='/reveal'] button").await;
    wait_for_text(&c, "Check order status").await;

    // Replayed from the dead letters page, after a count; the backend now takes it.
    click(&c, "header a[href='/console/dead-letters']").await;
    wait_for_text(&c, "1 dead letter(s) match").await;
    shot(&c, "dead-letters").await;
    click(&c, "form[action='/console/dead-letters/replay'] > button").await;
    wait_for_text(&c, "This replays <strong>1</strong>").await;
    click(&c, "form[action='/console/dead-letters/replay'] button").await;
    wait_for_text(&c, "Replayed 1 dead letter(s)").await;
    backend.wait_for(2, T).await;
    assert_eq!(backend.received()[1].status, Some(200));

    // Paused and resumed.
    click(&c, "header a[href='/console/sinks']").await;
    wait_for_text(&c, "<td>running</td>").await;
    click(&c, "#sink-backend button").await;
    wait_for_text(&c, "<td>paused</td>").await;
    assert!(sink.is_paused());
    shot(&c, "sinks").await;
    click(&c, "#sink-backend button").await;
    wait_for_text(&c, "<td>running</td>").await;
    assert!(!sink.is_paused());

    click(&c, "header a[href='/console/configuration']").await;
    wait_for_text(&c, "Effective configuration").await;
    shot(&c, "configuration").await;

    // Signed out: refused.
    click(&c, "header form button").await;
    wait_for_text(&c, "name=\"token\"").await;
    c.goto(&format!("{base}/console/sinks")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/login"));

    // The one error expected: the wrong token's 401 answer.
    let errors: Vec<Value> = js_errors(&driver, &c)
        .await
        .into_iter()
        .filter(|e| {
            !e["message"].as_str().is_some_and(|m| {
                m.contains("/console/login - Failed to load resource") && m.contains("401")
            })
        })
        .collect();
    assert!(
        errors.is_empty(),
        "the page's console has errors: {errors:#?}"
    );
    c.close().await.unwrap();
}
