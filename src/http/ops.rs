//! Operations endpoints (SPEC §9): health, readiness, metrics, stats, and the admin API.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{json_response, ApiError};
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
    if let Some(why) = store.err().or(audit.err()) {
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

/// Checks `Authorization: Bearer <token>` against the admin token in constant time.
/// Repeated refusals of admin requests are logged once per interval, with a count.
static ADMIN_REFUSED: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// Wraps the `/admin/*` routes: a request refused for its bearer token (403 while an admin
/// token is configured) is counted in `cognihook_admin_auth_failures_total{reason}` and
/// logged, once per interval, with the caller's address, the path and how many were left out.
pub async fn count_admin_refusals(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<super::conn::Arrival>()
        .map(|a| a.peer.to_string());
    let given = req.headers().contains_key(header::AUTHORIZATION);
    let path = req.uri().path().to_string();
    let answer = next.run(req).await;
    if answer.status() == StatusCode::FORBIDDEN && state.admin_token_hash.is_some() {
        let reason = if given {
            "wrong_token"
        } else {
            "missing_token"
        };
        metrics::counter!(
            crate::telemetry::metrics::ADMIN_AUTH_FAILURES_TOTAL,
            "reason" => reason
        )
        .increment(1);
        if let Some(suppressed) = ADMIN_REFUSED.check() {
            tracing::warn!(
                peer = peer.as_deref().unwrap_or("unknown"),
                path,
                reason,
                suppressed,
                "admin request refused: missing or wrong bearer token (`suppressed`: more \
                 refusals since the last line)"
            );
        }
    }
    answer
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token_hash else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled; set COGNIHOOK_ADMIN_TOKEN to enable it",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Hashing both sides makes the comparison constant-time regardless of length.
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if bool::from(given.ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "missing or wrong admin bearer token",
        ))
    }
}

pub async fn admin_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    match state.store.journey(&id).await {
        Ok(Some(j)) => json_response(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&j).unwrap_or_default()),
            None,
        ),
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no event with this event id or correlation id",
        )
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin read failed");
            ApiError::unavailable("the event store is unavailable").into_response()
        }
    }
}

fn json_ok(v: &impl serde::Serialize) -> Response {
    json_response(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        None,
    )
}

fn store_unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "admin store operation failed");
    ApiError::unavailable("the event store is unavailable").into_response()
}

/// Query of `GET /admin/dead-letters`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    sink: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn filter_from(
    sink: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<crate::store::DeadLetterFilter, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", m);
    let reason = match reason.as_deref() {
        None | Some("") => None,
        Some("permanent") => Some(crate::store::DeadReason::Permanent),
        Some("exhausted") => Some(crate::store::DeadReason::Exhausted),
        Some(other) => {
            return Err(bad(format!(
                "reason `{other}`: expected permanent or exhausted"
            )))
        }
    };
    let time = |v: Option<&str>, name: &str| -> Result<Option<i64>, ApiError> {
        v.filter(|s| !s.is_empty())
            .map(|s| crate::store::parse_time_bound(s).map_err(|e| bad(format!("{name}: {e}"))))
            .transpose()
    };
    Ok(crate::store::DeadLetterFilter {
        ids: Vec::new(),
        sink: sink.filter(|s| !s.is_empty()),
        route: route.filter(|s| !s.is_empty()),
        reason,
        since_ms: time(since, "since")?,
        until_ms: time(until, "until")?,
    })
}

pub async fn admin_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let q = match query {
        Ok(q) => q.0,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", e.body_text())
                .into_response()
        }
    };
    let filter = match filter_from(
        q.sink,
        q.route,
        q.reason,
        q.since.as_deref(),
        q.until.as_deref(),
    ) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match state
        .store
        .dead_letters(&filter, q.limit.unwrap_or(100))
        .await
    {
        Ok((total, items)) => json_ok(&json!({"total": total, "items": items})),
        Err(e) => store_unavailable(&e),
    }
}

/// Body of `POST /admin/dead-letters/replay`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    ids: Vec<i64>,
    sink: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

pub async fn admin_replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let req: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
                    .into_response()
            }
        }
    };
    let mut filter = match filter_from(
        req.sink,
        req.route,
        req.reason,
        req.since.as_deref(),
        req.until.as_deref(),
    ) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    filter.ids = req.ids;
    match state.store.replay(&filter, req.dry_run).await {
        Ok(n) if req.dry_run => json_ok(&json!({"would_replay": n})),
        Ok(n) => {
            if n > 0 {
                audit_replay(&state, n);
                state.deliverer.wake();
            }
            json_ok(&json!({"replayed": n}))
        }
        Err(e) => store_unavailable(&e),
    }
}

fn audit_replay(state: &AppState, n: u64) {
    tracing::info!(replayed = n, "dead letters replayed");
    state.audit.write(&crate::telemetry::audit::AuditLine {
        ts: crate::now_rfc3339(),
        event: crate::telemetry::audit::AuditKind::Replayed,
        route: "",
        correlation_id: "",
        transaction_id: "",
        event_id: None,
        session_id: None,
        event_type: None,
        status: 200,
        code: None,
        latency_ms: 0.0,
        state_version: Some(n),
        simulated: false,
        sink: None,
        attempt: None,
        recovered: false,
    });
}

pub async fn admin_purge(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let filter = crate::store::DeadLetterFilter {
        ids: vec![id],
        ..Default::default()
    };
    match state.store.purge(&filter).await {
        Ok(0) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no dead letter with this id",
        )
        .into_response(),
        Ok(n) => json_ok(&json!({"deleted": n})),
        Err(e) => store_unavailable(&e),
    }
}

/// `DELETE /admin/sessions/{id}` (SPEC §12.3).
pub async fn admin_forget_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    match state.store.forget_session(&id).await {
        Ok(f) => {
            tracing::info!(
                events = f.events,
                cancelled = f.cancelled_deliveries,
                "a session was forgotten"
            );
            state
                .audit
                .write(&crate::telemetry::audit::session_forgotten(
                    &f.session_id,
                    f.events,
                ));
            json_ok(&json!({
                "sessionId": f.session_id,
                "events": f.events,
                "cancelledDeliveries": f.cancelled_deliveries,
            }))
        }
        Err(e) => store_unavailable(&e),
    }
}

pub async fn admin_sinks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let sinks = state.deliverer.sinks();
    let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    let counts = match state.store.sink_counts(&names).await {
        Ok(c) => c,
        Err(e) => return store_unavailable(&e),
    };
    let items: Vec<_> = sinks
        .iter()
        .zip(&counts)
        .map(|(s, c)| {
            s.observe(c);
            json!({
                "name": s.name,
                "kind": s.config.kind().name(),
                "circuit": s.circuit().name(),
                "paused": s.is_paused(),
                "pending": c.pending,
                "oldestPendingAgeSeconds": c.oldest_pending_age_seconds,
                "deadLetters": c.dead_letters,
                "lagSeconds": s.lag(),
            })
        })
        .collect();
    json_ok(&json!({ "sinks": items }))
}

pub async fn admin_sink_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let Some(sink) = state.deliverer.sink(&name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no sink named `{name}`"),
        )
        .into_response();
    };
    match action.as_str() {
        "pause" => sink.set_paused(true),
        "resume" => {
            sink.set_paused(false);
            state.deliverer.wake();
        }
        _ => return ApiError::not_found().into_response(),
    }
    tracing::info!(sink = %name, paused = sink.is_paused(), "sink {action}d by the admin API");
    json_ok(&json!({"name": name, "paused": sink.is_paused()}))
}
