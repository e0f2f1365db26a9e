//! Operations endpoints (SPEC §9): health, readiness, metrics, stats (the admin API is in
//! `admin`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::error::json_response;
use super::AppState;

pub async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        Bytes::from_static(b"{\"status\":\"ok\"}"),
        None,
    )
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.readiness().await;
    let audit = state.audit.health();
    let shutting_down = state.is_shutting_down();
    let ready = store.is_ok() && audit.is_ok() && !shutting_down;
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "audit": if audit.is_ok() { "ok" } else { "failing" },
        "shuttingDown": shutting_down,
    });
    let why = match (store, audit) {
        (Err(e), _) => Some(e.to_string()),
        (_, Err(e)) => Some(e.to_string()),
        _ => None,
    };
    if let Some(why) = why {
        body["cause"] = Value::String(why);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, Bytes::from(body.to_string()), (!ready).then_some(1))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    refresh_sink_gauges(&state).await;
    let mut r = state.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub async fn stats(State(state): State<AppState>) -> Response {
    let snap = state.stats.snapshot();
    let names: Vec<String> = state
        .deliverer
        .sinks()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    // Per-sink counts use the outbox's (sink, status) index; summed over configured sinks.
    let counts = state.store.sink_counts(&names).await.ok();
    let total = |f: fn(&crate::store::SinkCounts) -> u64| {
        counts.as_ref().map_or(serde_json::Value::Null, |c| {
            c.iter().map(f).sum::<u64>().into()
        })
    };
    let mut body = serde_json::to_value(&snap).unwrap_or_else(|_| json!({}));
    if let Some(o) = body.as_object_mut() {
        o.insert("outbox_pending".into(), total(|c| c.pending));
        o.insert("dead_letters".into(), total(|c| c.dead_letters));
    }
    json_response(StatusCode::OK, Bytes::from(body.to_string()), None)
}

/// Sets each sink's outbox and circuit gauges from the store (on every scrape).
async fn refresh_sink_gauges(state: &AppState) {
    let sinks = state.deliverer.sinks();
    if sinks.is_empty() {
        return;
    }
    let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    match state.store.sink_counts(&names).await {
        Ok(counts) => {
            for (s, c) in sinks.iter().zip(&counts) {
                s.observe(c);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read outbox figures for /metrics"),
    }
}
