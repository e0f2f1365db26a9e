//! Operations endpoints (SPEC §9): health, readiness, metrics, stats, and the admin API.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
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
    let store = state.store.ready().await;
    let shutting_down = state.is_shutting_down();
    let ready = store && !shutting_down;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store { "ok" } else { "unreachable" },
        "shuttingDown": shutting_down,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, Bytes::from(body.to_string()), (!ready).then_some(1))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut r = state.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub async fn stats(State(state): State<AppState>) -> Response {
    let snap = state.stats.snapshot();
    let counts = state.store.counts().await.ok();
    let mut body = serde_json::to_value(&snap).unwrap_or_else(|_| json!({}));
    if let Some(o) = body.as_object_mut() {
        o.insert(
            "outbox_pending".into(),
            counts.map_or(serde_json::Value::Null, |c| c.outbox_pending.into()),
        );
        o.insert(
            "dead_letters".into(),
            counts.map_or(serde_json::Value::Null, |c| c.dead_letters.into()),
        );
    }
    json_response(StatusCode::OK, Bytes::from(body.to_string()), None)
}

/// Checks `Authorization: Bearer <token>` against the admin token in constant time.
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
