//! A local stand-in for Cognigy's Inject/Notify endpoints (cognigy/FACTS.md §2), strict about
//! what it accepts, so the `cognigy` sink is tested against the documented contract:
//!
//! - Endpoint service: `POST /inject/{URLToken}` and `POST /notify/{URLToken}`; the URLToken
//!   must be one the emulator knows (it is the credential); no API key.
//! - v2.0 API: `POST /new/v2.0/endpoint/inject|notify` with the API key as `X-API-Key`, as
//!   `?api_key=` or as `Authorization: Bearer`; inject requires `userId`, `sessionId`,
//!   `URLToken`, `text`, `data`; notify all but `sessionId`.
//! - JSON only (`Content-Type: application/json`), body at most 60 kB, `text` a string,
//!   `data` an object or `null` (Cognigy's own samples send `data: null`). Answers as Cognigy does: 200 with its plain-text message, 401 for a
//!   bad key, 404 for an unknown token, 400/413/415 for bad bodies, and 429 with
//!   `Retry-After` once a request budget is spent (its rate limit).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub const API_KEY: &str = "emulated-api-key";
pub const URL_TOKEN: &str = "4e5e2f01110c935fff81ec54bbce12c175b831d8105dc69face36a8983feec17";
pub const MAX_BODY: usize = 60 * 1024;

/// One call the emulator accepted.
#[derive(Debug, Clone)]
pub struct Call {
    /// `inject` or `notify`.
    pub mode: String,
    /// `endpoint` (Endpoint service) or `api-v2`.
    pub route: &'static str,
    pub body: Value,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Inner {
    accepted: Vec<Call>,
    /// Requests refused, as (status, reason).
    refused: Vec<(u16, String)>,
    /// Requests still allowed before answering 429 (None = unlimited).
    budget: Option<usize>,
}

pub struct CognigyEmulator {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Inner>>;

fn refuse(inner: &Shared, status: StatusCode, why: &str) -> Response {
    inner
        .lock()
        .unwrap()
        .refused
        .push((status.as_u16(), why.to_string()));
    (status, why.to_string()).into_response()
}

/// Checks a body against the documented fields; `required` lists what must be present.
fn check_body(
    raw: &[u8],
    headers: &HeaderMap,
    required: &[&str],
) -> Result<Value, (StatusCode, String)> {
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON only".into()));
    }
    if raw.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} bytes", raw.len()),
        ));
    }
    let body: Value = serde_json::from_slice(raw)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("not JSON: {e}")))?;
    for key in required {
        if body.get(key).is_none() {
            return Err((StatusCode::BAD_REQUEST, format!("{key} is required")));
        }
    }
    for key in ["userId", "sessionId", "URLToken", "text"] {
        if let Some(v) = body.get(key) {
            if !v.is_string() {
                return Err((StatusCode::BAD_REQUEST, format!("{key} must be a string")));
            }
        }
    }
    if body
        .get("data")
        .is_some_and(|d| !d.is_object() && !d.is_null())
    {
        return Err((StatusCode::BAD_REQUEST, "data must be an object".into()));
    }
    if body
        .get("userId")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err((StatusCode::BAD_REQUEST, "userId must not be empty".into()));
    }
    Ok(body)
}

fn accept(
    inner: &Shared,
    mode: &str,
    route: &'static str,
    raw: &[u8],
    headers: &HeaderMap,
) -> Response {
    let required: &[&str] = match (route, mode) {
        ("api-v2", "inject") => &["userId", "sessionId", "URLToken", "text", "data"],
        ("api-v2", _) => &["userId", "URLToken", "text", "data"],
        _ => &["userId", "sessionId"],
    };
    let body = match check_body(raw, headers, required) {
        Ok(b) => b,
        Err((status, why)) => return refuse(inner, status, &why),
    };
    {
        let mut g = inner.lock().unwrap();
        if let Some(left) = g.budget.as_mut() {
            if *left == 0 {
                drop(g);
                let mut r = refuse(inner, StatusCode::TOO_MANY_REQUESTS, "rate limit");
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                return r;
            }
            *left -= 1;
        }
        g.accepted.push(Call {
            mode: mode.to_string(),
            route,
            body,
            headers: headers.clone(),
        });
    }
    let text = if mode == "inject" {
        "Message was sent to AI for Flow processing"
    } else {
        "Sucessfully sent message to user"
    };
    (StatusCode::OK, text).into_response()
}

async fn endpoint(
    State(inner): State<Shared>,
    Path((mode, token)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if mode != "inject" && mode != "notify" {
        return refuse(&inner, StatusCode::NOT_FOUND, "no such route");
    }
    if token != URL_TOKEN {
        return refuse(&inner, StatusCode::NOT_FOUND, "unknown URLToken");
    }
    accept(&inner, &mode, "endpoint", &raw, &headers)
}

async fn api_v2(
    State(inner): State<Shared>,
    Path(mode): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if mode != "inject" && mode != "notify" {
        return refuse(&inner, StatusCode::NOT_FOUND, "no such route");
    }
    let header = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let presented = header
        .or(query.get("api_key").map(String::as_str))
        .or(bearer);
    if presented != Some(API_KEY) {
        return refuse(&inner, StatusCode::UNAUTHORIZED, "bad API key");
    }
    let token_ok = serde_json::from_slice::<Value>(&raw)
        .ok()
        .and_then(|b| {
            b.get("URLToken")
                .and_then(Value::as_str)
                .map(|t| t == URL_TOKEN)
        })
        .unwrap_or(true);
    if !token_ok {
        return refuse(&inner, StatusCode::NOT_FOUND, "unknown URLToken");
    }
    accept(&inner, &mode, "api-v2", &raw, &headers)
}

impl CognigyEmulator {
    pub async fn start() -> CognigyEmulator {
        let inner: Shared = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/new/v2.0/endpoint/{mode}", axum::routing::post(api_v2))
            .route("/{mode}/{token}", axum::routing::post(endpoint))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        CognigyEmulator { addr, inner, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> Vec<Call> {
        self.inner.lock().unwrap().accepted.clone()
    }

    pub fn refused(&self) -> Vec<(u16, String)> {
        self.inner.lock().unwrap().refused.clone()
    }

    /// After `n` more accepted calls, answer 429 with `Retry-After: 1`.
    pub fn set_budget(&self, n: Option<usize>) {
        self.inner.lock().unwrap().budget = n;
    }
}

impl Drop for CognigyEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
