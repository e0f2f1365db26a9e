//! Test support: an in-process gateway on port 0 with a temporary store, a signing HTTP
//! client, and a handle on the real binary.

#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod binary;
pub mod cognigy_emulator;
pub mod otlp_receiver;
pub mod sink_server;
pub mod tcp_proxy;
pub mod tls_front;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use cognihook::app::{App, Wiring};
use cognihook::config::Config;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-1";
pub const ADMIN_TOKEN: &str = "admin-token-xyz";

pub fn sign(body: &[u8]) -> String {
    cognihook::ingest::auth::sign_hex(SECRET.as_bytes(), body)
}

/// The environment the in-process gateway resolves secrets from.
pub fn env() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "COGNIGY_WEBHOOK_SECRET".to_string(),
        format!("old-secret,{SECRET}"),
    )])
}

/// A valid `nlu` body (seed 004) for a session.
pub fn nlu_body(session: &str, order: &str, correlation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "sessionId": session,
        "userId": "user-1",
        "input": format!("where is my order {order}"),
        "context": {"locale": "en-US", "channel": "webchat", "correlationId": correlation},
        "intent": {"name": "order_status", "confidence": 0.94},
        "entities": [{"name": "orderId", "value": order}]
    }))
    .unwrap()
}

/// A valid `flow-event` body (seed 000).
pub fn flow_body(session: &str, correlation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "sessionId": session,
        "userId": "usr-1",
        "message": "Check order status",
        "eventType": "flow.execution",
        "correlationId": correlation,
        "timestamp": "2024-01-15T14:32:10Z",
        "flowName": "OrderSupportFlow"
    }))
    .unwrap()
}

/// A gateway running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub audit_path: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    deliverer: std::sync::Arc<cognihook::delivery::worker::Deliverer>,
    load: std::sync::Arc<cognihook::load::IngestLoad>,
    store: cognihook::store::Store,
    alerts: Option<std::sync::Arc<cognihook::alerts::Alerts>>,
    tracer: cognihook::telemetry::trace::Tracer,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response, body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The configuration tests start from: default routes, loopback port 0, temp store.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_token = Some(ADMIN_TOKEN.into());
    c.store.data_dir = dir.to_path_buf();
    c.audit.path = Some(dir.join("audit.jsonl"));
    c
}

/// Builds (without running) a gateway from a test configuration.
pub async fn build_app(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> App {
    build_app_env(dir, &env(), tweak).await
}

/// Builds a gateway resolving secrets and settings from `env`.
pub async fn build_app_env(
    dir: &std::path::Path,
    env: &BTreeMap<String, String>,
    tweak: impl FnOnce(&mut Config),
) -> App {
    let mut c = test_config(dir);
    tweak(&mut c);
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let wiring = Wiring::build(&c, env).expect("wiring builds");
    App::build(c, wiring).await.expect("app builds")
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_in(tempfile::tempdir().unwrap(), tweak).await
    }

    /// Starts a gateway on an existing data directory (a restart).
    pub async fn spawn_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_env(dir, &env(), tweak).await
    }

    /// Starts a gateway whose environment is `env` (instead of [`env`]).
    pub async fn spawn_env(
        dir: tempfile::TempDir,
        env: &BTreeMap<String, String>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let app = build_app_env(dir.path(), env, tweak).await;
        let addr = app.local_addr().unwrap();
        let deliverer = app.deliverer().clone();
        let load = app.state().load.clone();
        let store = app.state().store.clone();
        let alerts = app.alerts().cloned();
        let tracer = app.state().tracer.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            app.run(token).await.unwrap();
        });
        TestApp {
            addr,
            audit_path: dir.path().join("audit.jsonl"),
            dir,
            shutdown,
            task,
            deliverer,
            load,
            store,
            alerts,
            tracer,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Exports the spans that have ended (a no-op with tracing off).
    pub async fn flush_traces(&self) {
        let tracer = self.tracer.clone();
        tokio::task::spawn_blocking(move || tracer.flush())
            .await
            .unwrap();
    }

    /// The gateway's store.
    pub fn store(&self) -> &cognihook::store::Store {
        &self.store
    }

    /// The alerts (the configuration must have an alert target).
    pub fn alerts(&self) -> &std::sync::Arc<cognihook::alerts::Alerts> {
        self.alerts.as_ref().expect("[alerts] has a target")
    }

    pub fn deliverer(&self) -> &std::sync::Arc<cognihook::delivery::worker::Deliverer> {
        &self.deliverer
    }

    /// Ingest's load gauge (what HTTP raises and the delivery worker reads).
    pub fn load(&self) -> &std::sync::Arc<cognihook::load::IngestLoad> {
        &self.load
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(&self, req: Request<Full<Bytes>>) -> TestResponse {
        let resp = self.client.request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    pub async fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> TestResponse {
        let mut req = Request::post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await
    }

    /// POSTs JSON signed with the test secret.
    pub async fn post_signed(&self, path: &str, body: &[u8]) -> TestResponse {
        let sig = sign(body);
        self.post(
            path,
            body,
            &[
                ("content-type", "application/json"),
                ("x-cognigy-signature", &sig),
            ],
        )
        .await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        let mut req = Request::get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.request(req.body(Full::new(Bytes::new())).unwrap())
            .await
    }

    /// Stops the gateway the way a signal would, and waits for it.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.dir
    }

    pub async fn admin_get(&self, path: &str) -> TestResponse {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        self.get(path, &[("authorization", &bearer)]).await
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> TestResponse {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let body = serde_json::to_vec(body).unwrap();
        self.post(
            path,
            &body,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
        )
        .await
    }

    /// Opens the store file for direct checks, once it holds every acknowledged event.
    pub async fn db(&self) -> rusqlite::Connection {
        self.store.caught_up().await.unwrap();
        self.db_now()
    }

    /// Opens the store file as it is now, for checks that poll until a condition holds.
    /// Its events' bodies are read with `event_body(body, body_at, rowid)`.
    pub fn db_now(&self) -> rusqlite::Connection {
        let path = self.dir.path().join("cognihook.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        cognihook::store::sqlite::add_event_body_function(&conn, &path).unwrap();
        conn
    }
}

/// Adds the sink table `table` (TOML) as `name` and attaches it to the `flow-events` route;
/// the worker polls every 20 ms.
pub fn attach_sink(c: &mut Config, name: &str, table: &str) {
    let sink: cognihook::config::SinkConfig = toml::from_str(table).expect("sink table");
    c.sinks.insert(name.into(), sink);
    c.routes[0].sinks = vec![name.into()];
    c.delivery.poll_interval = std::time::Duration::from_millis(20);
}

/// Reads audit lines from a file (after `stop`, which flushes the audit log).
pub fn read_audit(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// Counts rows with a query returning one integer.
pub fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Replaces the configuration's routes with the `[[route]]` tables of a TOML snippet.
pub fn set_routes(c: &mut Config, toml_routes: &str) {
    let parsed = Config::from_toml(toml_routes).expect("route tables");
    c.routes = parsed.routes;
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
