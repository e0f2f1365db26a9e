//! The admin API (SPEC §9, §12.3): events, dead letters, sessions, sinks. Every route is
//! behind [`require_admin`], a layer that checks the bearer token once for all of them;
//! handlers return `Result<_, ApiError>` and answer errors through `?`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{json_response, ApiError, ErrorBody};
use super::AppState;
use crate::store::{DeadLetterFilter, Journey, StoreError};

/// Repeated refusals of admin requests are logged once per interval, with a count.
static ADMIN_REFUSED: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// The layer in front of every `/admin/*` route: without a configured token the API is
/// disabled (403 `admin_disabled`); a missing or wrong bearer token is 403 `forbidden`,
/// counted in `cognihook_admin_auth_failures_total{reason}` and logged, once per interval,
/// with the caller's address, the path and how many were left out.
pub async fn require_admin(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = &state.admin_token_hash else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled; set COGNIHOOK_ADMIN_TOKEN to enable it",
        )
        .into_response();
    };
    let header = req.headers().get(header::AUTHORIZATION);
    let given = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Hashing both sides makes the comparison constant-time regardless of length.
    let given_hash: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if bool::from(given_hash.ct_eq(expected)) {
        return next.run(req).await;
    }
    let reason = if header.is_some() {
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
        let peer = req
            .extensions()
            .get::<super::conn::Arrival>()
            .map(|a| a.peer.to_string());
        tracing::warn!(
            peer = peer.as_deref().unwrap_or("unknown"),
            path = req.uri().path(),
            reason,
            suppressed,
            "admin request refused: missing or wrong bearer token (`suppressed`: more \
             refusals since the last line)"
        );
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "missing or wrong admin bearer token",
    )
    .into_response()
}

/// The answers every admin route can give besides its own (for the API document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AdminRefusal<'a> {
    #[response(
        status = 403,
        description = "`admin_disabled` (no admin token configured) or `forbidden` (missing or wrong bearer token)"
    )]
    Forbidden(ErrorBody<'a>),
    /// The store is unavailable
    #[response(status = 503, headers(("Retry-After" = u32, description = "Seconds")))]
    Unavailable(ErrorBody<'a>),
}

fn json_ok(v: &impl serde::Serialize) -> Response {
    json_response(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        None,
    )
}

/// A store failure behind an admin request: logged, answered 503.
fn store_unavailable(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "admin store operation failed");
    ApiError::unavailable("the event store is unavailable")
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", message)
}

/// `GET /admin/events/{id}`: an event's journey by event id or correlation id.
#[utoipa::path(get, path = "/admin/events/{id}", tag = "admin", security(("admin" = [])),
    summary = "An event and its deliveries, by event id or correlation id",
    params(("id" = String, Path, description = "Event id (ULID) or correlation id")),
    responses(
        (status = 200, description = "The event's journey", body = Journey),
        (status = 404, description = "No such event", body = ErrorBody),
        AdminRefusal,
    ))]
pub async fn event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let journey = state
        .store
        .journey(&id)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| not_found("no event with this event id or correlation id"))?;
    Ok(json_ok(&journey))
}

/// Query of `GET /admin/dead-letters`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this sink's.
    sink: Option<String>,
    /// Only this route's.
    route: Option<String>,
    /// `permanent`, `exhausted` or `expired` (empty: any).
    #[param(pattern = "^(permanent|exhausted|expired)?$")]
    reason: Option<String>,
    /// Dead-lettered at or after: RFC 3339, or an age such as `1h` (that long ago).
    since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age.
    until: Option<String>,
    /// Most items returned (default 100).
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// `GET /admin/dead-letters`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// Dead letters matching the filter.
    pub total: u64,
    /// The newest of them, at most `limit`.
    pub items: Vec<crate::store::DeadLetter>,
}

fn filter_from(
    sink: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<DeadLetterFilter, ApiError> {
    let reason = match reason.as_deref() {
        None | Some("") => None,
        Some("permanent") => Some(crate::store::DeadReason::Permanent),
        Some("exhausted") => Some(crate::store::DeadReason::Exhausted),
        Some("expired") => Some(crate::store::DeadReason::Expired),
        Some(other) => {
            return Err(bad_request(format!(
                "reason `{other}`: expected permanent, exhausted or expired"
            )))
        }
    };
    let time = |v: Option<&str>, name: &str| -> Result<Option<i64>, ApiError> {
        v.filter(|s| !s.is_empty())
            .map(|s| {
                crate::store::parse_time_bound(s).map_err(|e| bad_request(format!("{name}: {e}")))
            })
            .transpose()
    };
    Ok(DeadLetterFilter {
        ids: Vec::new(),
        sink: sink.filter(|s| !s.is_empty()),
        route: route.filter(|s| !s.is_empty()),
        reason,
        since_ms: time(since, "since")?,
        until_ms: time(until, "until")?,
    })
}

/// `GET /admin/dead-letters`: filtered, newest first.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", security(("admin" = [])),
    summary = "Dead letters, newest first",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "Matching dead letters", body = DeadLetterPage),
        (status = 400, description = "A bad filter (`invalid_payload`)", body = ErrorBody),
        AdminRefusal,
    ))]
pub async fn dead_letters(
    State(state): State<AppState>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let filter = filter_from(
        q.sink,
        q.route,
        q.reason,
        q.since.as_deref(),
        q.until.as_deref(),
    )?;
    let (total, items) = state
        .store
        .dead_letters(&filter, q.limit.unwrap_or(100))
        .await
        .map_err(store_unavailable)?;
    Ok(json_ok(&DeadLetterPage { total, items }))
}

/// Body of `POST /admin/dead-letters/replay`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Dead letters by id; with a filter too, both must match.
    #[serde(default)]
    ids: Vec<i64>,
    /// Only this sink's.
    sink: Option<String>,
    /// Only this route's.
    route: Option<String>,
    /// `permanent`, `exhausted` or `expired` (empty: any).
    #[schema(pattern = "^(permanent|exhausted|expired)?$")]
    reason: Option<String>,
    /// Dead-lettered at or after: RFC 3339, or an age such as `1h`.
    since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age.
    until: Option<String>,
    /// Count what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/dead-letters/replay`'s body: `replayed`, or `would_replay` for a dry run.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReplayAnswer {
    /// Dead letters made pending again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// What a replay would make pending (dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_replay: Option<u64>,
}

/// `POST /admin/dead-letters/replay`: by ids or filter, or a dry-run count.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin", security(("admin" = [])),
    summary = "Replay dead letters by id or filter (none: all)",
    request_body(content = Option<ReplayRequest>, description = "No body replays every dead letter"),
    responses(
        (status = 200, description = "How many were (or would be) replayed", body = ReplayAnswer),
        (status = 400, description = "Not JSON, an unknown key (`invalid_json`) or a bad filter (`invalid_payload`)", body = ErrorBody),
        AdminRefusal,
    ))]
pub async fn replay(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let mut filter = filter_from(
        req.sink,
        req.route,
        req.reason,
        req.since.as_deref(),
        req.until.as_deref(),
    )?;
    filter.ids = req.ids;
    let n = state
        .store
        .replay(&filter, req.dry_run)
        .await
        .map_err(store_unavailable)?;
    if req.dry_run {
        return Ok(json_ok(&ReplayAnswer {
            replayed: None,
            would_replay: Some(n),
        }));
    }
    if n > 0 {
        audit_replay(&state, n);
        state.deliverer.wake();
    }
    Ok(json_ok(&ReplayAnswer {
        replayed: Some(n),
        would_replay: None,
    }))
}

fn audit_replay(state: &AppState, n: u64) {
    tracing::info!(replayed = n, "dead letters replayed");
    state
        .audit
        .write(&crate::telemetry::audit::AuditLine::replayed(n));
}

/// `DELETE /admin/dead-letters/{id}`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

/// `DELETE /admin/dead-letters/{id}`.
#[utoipa::path(delete, path = "/admin/dead-letters/{id}", tag = "admin", security(("admin" = [])),
    summary = "Purge one dead letter",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "Purged", body = Deleted),
        (status = 400, description = "The id is not an integer (`invalid_payload`)", body = ErrorBody),
        (status = 404, description = "No dead letter with this id", body = ErrorBody),
        AdminRefusal,
    ))]
pub async fn purge(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad_request("the dead letter id must be an integer"))?;
    let filter = DeadLetterFilter {
        ids: vec![id],
        ..Default::default()
    };
    match state
        .store
        .purge(&filter)
        .await
        .map_err(store_unavailable)?
    {
        0 => Err(not_found("no dead letter with this id")),
        n => Ok(json_ok(&Deleted { deleted: n })),
    }
}

/// `DELETE /admin/sessions/{id}`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionForgotten {
    pub session_id: String,
    /// Events deleted.
    pub events: u64,
    /// Pending deliveries cancelled.
    pub cancelled_deliveries: u64,
}

/// `DELETE /admin/sessions/{id}` (SPEC §12.3).
#[utoipa::path(delete, path = "/admin/sessions/{id}", tag = "admin", security(("admin" = [])),
    summary = "Forget a conversation: its session state, events and pending deliveries",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "Forgotten (also when nothing was stored)", body = SessionForgotten),
        AdminRefusal,
    ))]
pub async fn forget_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = state
        .store
        .forget_session(&id)
        .await
        .map_err(store_unavailable)?;
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
    Ok(json_ok(&SessionForgotten {
        session_id: f.session_id,
        events: f.events,
        cancelled_deliveries: f.cancelled_deliveries,
    }))
}

/// One sink in `GET /admin/sinks`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub name: String,
    /// `http`, `cognigy`, `nats`, `amqp`, `redis`, `file` or `alert`.
    pub kind: String,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    pub paused: bool,
    pub pending: u64,
    pub oldest_pending_age_seconds: f64,
    pub dead_letters: u64,
    /// Acceptance → delivered, in seconds, over this process's recent deliveries (null before the first).
    pub lag_seconds: Option<crate::delivery::lag::LagSummary>,
}

/// `GET /admin/sinks`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SinkList {
    pub sinks: Vec<SinkStatus>,
}

/// `GET /admin/sinks`: each sink's state, outbox counts and delivery lag.
#[utoipa::path(get, path = "/admin/sinks", tag = "admin", security(("admin" = [])),
    summary = "Each sink's state, outbox figures and delivery lag",
    responses(
        (status = 200, description = "The sinks", body = SinkList),
        AdminRefusal,
    ))]
pub async fn sinks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let sinks = state.deliverer.sinks();
    let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    let counts = state
        .store
        .sink_counts(&names)
        .await
        .map_err(store_unavailable)?;
    let items: Vec<_> = sinks
        .iter()
        .zip(&counts)
        .map(|(s, c)| {
            s.observe(c);
            SinkStatus {
                name: s.name.clone(),
                kind: s.config.kind().name().to_string(),
                circuit: s.circuit().name().to_string(),
                paused: s.is_paused(),
                pending: c.pending,
                oldest_pending_age_seconds: c.oldest_pending_age_seconds,
                dead_letters: c.dead_letters,
                lag_seconds: s.lag(),
            }
        })
        .collect();
    Ok(json_ok(&SinkList { sinks: items }))
}

/// `POST /admin/sinks/{name}/{action}`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SinkPaused {
    pub name: String,
    pub paused: bool,
}

/// `POST /admin/sinks/{name}/pause|resume`.
#[utoipa::path(post, path = "/admin/sinks/{name}/{action}", tag = "admin", security(("admin" = [])),
    summary = "Pause or resume a sink's deliveries",
    params(
        ("name" = String, Path, description = "The sink's name"),
        ("action" = String, Path, description = "`pause` or `resume`", pattern = "^(pause|resume)$"),
    ),
    responses(
        (status = 200, description = "The sink's state now", body = SinkPaused),
        (status = 404, description = "No such sink, or an action other than pause and resume", body = ErrorBody),
        AdminRefusal,
    ))]
pub async fn sink_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let sink = state
        .deliverer
        .sink(&name)
        .ok_or_else(|| not_found(format!("no sink named `{name}`")))?;
    match action.as_str() {
        "pause" => sink.set_paused(true),
        "resume" => {
            sink.set_paused(false);
            state.deliverer.wake();
        }
        _ => return Err(ApiError::not_found()),
    }
    tracing::info!(sink = %name, paused = sink.is_paused(), "sink {action}d by the admin API");
    Ok(json_ok(&SinkPaused {
        paused: sink.is_paused(),
        name,
    }))
}
