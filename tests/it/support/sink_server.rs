//! A real HTTP server on loopback standing in for a team's backend: it records every request
//! and answers from a script (fail N times, 4xx, 429 with Retry-After, or hold requests until
//! the test opens a gate).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::sync::Semaphore;

/// How the server answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answer this status at once.
    Status(u16),
    /// 429 with `Retry-After: N` seconds.
    TooManyRequests(u64),
    /// Hold the request until the test opens the gate, then answer 200.
    Gated,
    /// Answer this status with this JSON body.
    Body(u16, &'static str),
    /// Hold the request until the test opens the gate, then answer 200 with this body.
    GatedBody(&'static str),
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub arrived: Instant,
    pub answered: Option<Instant>,
    /// The status answered, once answered.
    pub status: Option<u16>,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    fallback: Option<Reply>,
    received: Vec<Received>,
}

pub struct SinkServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<Inner>>, Arc<Semaphore>);

async fn handle(
    State((inner, gate)): State<Shared>,
    headers: HeaderMap,
    raw: Bytes,
) -> impl IntoResponse {
    let reply;
    let index;
    {
        let mut g = inner.lock().unwrap();
        reply = g
            .script
            .pop_front()
            .or(g.fallback)
            .unwrap_or(Reply::Status(200));
        index = g.received.len();
        g.received.push(Received {
            arrived: Instant::now(),
            answered: None,
            status: None,
            headers: headers.clone(),
            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
            raw: raw.clone(),
        });
    }
    let mut out_headers = HeaderMap::new();
    let mut answer = "{}";
    let status = match reply {
        Reply::Status(s) => s,
        Reply::TooManyRequests(secs) => {
            out_headers.insert("retry-after", secs.to_string().parse().unwrap());
            429
        }
        Reply::Gated => {
            gate.acquire().await.unwrap().forget();
            200
        }
        Reply::Body(s, body) => {
            answer = body;
            s
        }
        Reply::GatedBody(body) => {
            gate.acquire().await.unwrap().forget();
            answer = body;
            200
        }
    };
    {
        let mut g = inner.lock().unwrap();
        g.received[index].answered = Some(Instant::now());
        g.received[index].status = Some(status);
    }
    (StatusCode::from_u16(status).unwrap(), out_headers, answer)
}

impl SinkServer {
    pub async fn start() -> SinkServer {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> SinkServer {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let gate = Arc::new(Semaphore::new(0));
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state((inner.clone(), gate.clone()));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SinkServer {
            addr,
            inner,
            gate,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next `n` requests get `reply`, then the fallback again.
    pub fn script(&self, n: usize, reply: Reply) {
        let mut g = self.inner.lock().unwrap();
        for _ in 0..n {
            g.script.push_back(reply);
        }
    }

    /// What requests get once the script is used up (default 200).
    pub fn set_fallback(&self, reply: Reply) {
        self.inner.lock().unwrap().fallback = Some(reply);
    }

    /// Lets `n` gated requests answer.
    pub fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(
                start.elapsed() < timeout,
                "sink got {} of {n} requests within {timeout:?}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for SinkServer {
    /// The server stops with its handle (its task would otherwise outlive the test's use).
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns true, failing after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
