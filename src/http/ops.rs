//! Operations endpoints (SPEC §9): health, readiness, metrics, stats (the admin API is in
//! `admin`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use super::error::json_response;
use super::AppState;

/// `GET /healthz`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok` or `unavailable`.
    pub store: String,
    /// `ok` or `failing`.
    pub audit: String,
    pub shutting_down: bool,
    /// Why the gateway is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// `GET /stats`'s body: the process's request figures and the outbox's (null when the store
/// cannot be read).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatsBody {
    #[serde(flatten)]
    pub requests: crate::telemetry::stats::Snapshot,
    /// Deliveries pending over all configured sinks.
    pub outbox_pending: Option<u64>,
    /// Dead letters over all configured sinks.
    pub dead_letters: Option<u64>,
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        Bytes::from_static(b"{\"status\":\"ok\"}"),
        None,
    )
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness: the store and the audit log work and the gateway is not shutting down",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (`cause` says why)", body = Readiness,
            headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.readiness().await;
    let audit = state.audit.health();
    let shutting_down = state.is_shutting_down();
    let ready = store.is_ok() && audit.is_ok() && !shutting_down;
    let cause = match (&store, &audit) {
        (Err(e), _) => Some(e.to_string()),
        (_, Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.into(),
        store: if store.is_ok() { "ok" } else { "unavailable" }.into(),
        audit: if audit.is_ok() { "ok" } else { "failing" }.into(),
        shutting_down,
        cause,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    json_response(status, Bytes::from(body), (!ready).then_some(1))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics (text exposition format 0.0.4)",
    responses((status = 200, description = "The metrics", content_type = "text/plain",
        body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    refresh_sink_gauges(&state).await;
    let mut r = state.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[utoipa::path(get, path = "/stats", tag = "operations",
    summary = "Request and delivery figures of this process",
    responses((status = 200, description = "The figures", body = StatsBody)))]
pub async fn stats(State(state): State<AppState>) -> Response {
    let names: Vec<String> = state
        .deliverer
        .sinks()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    // Per-sink counts use the outbox's (sink, status) index; summed over configured sinks.
    let counts = state.store.sink_counts(&names).await.ok();
    let total = |f: fn(&crate::store::SinkCounts) -> u64| {
        counts.as_ref().map(|c| c.iter().map(f).sum::<u64>())
    };
    let body = StatsBody {
        requests: state.stats.snapshot(),
        outbox_pending: total(|c| c.pending),
        dead_letters: total(|c| c.dead_letters),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    json_response(StatusCode::OK, Bytes::from(body), None)
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
