//! The webhook handler: the request path from raw body to committed event and answer.
//!
//! Stages: `admit` (before the body: 503, 429) → `pipeline`: `receive` (content type 415,
//! body bounded while reading 413/408) → `Route::prepare` (401, 400, 422) → `submission` →
//! `commit` (`Store::accept`: 200, duplicate replay, 503) → `finish`: the one `Outcome`
//! becomes the answer, the stats, the metrics and the audit line together.
//! The whole handler runs inside the route's deadline; past it the answer is 503
//! `unavailable` (an acceptance already handed to the store may still commit; a retry of the
//! same request then gets the original answer as a duplicate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::admission::{retry_after_secs, RouteLimiter};
use super::conn::Arrival;
use super::error::{json_response, ApiError};
use super::AppState;
use crate::ingest::auth::AuthError;
use crate::ingest::payload::{BodyFormat, PayloadError};
use crate::ingest::{self, Refusal, RequestMeta, Route};
use crate::store::decide::Answer;
use crate::store::{AcceptOutcome, Acceptance, RespondHold, StoreError};
use crate::telemetry::audit::{AuditKind, AuditLine};
use crate::telemetry::metrics::{RouteMetrics, SignatureResult};
use crate::telemetry::throttle::Throttle;
use crate::telemetry::trace::Traced;
use crate::telemetry::watch::Signals;
use opentelemetry::KeyValue;

/// Failures that repeat per request are logged once per interval, with a count.
static LATE: Throttle = Throttle::new(Duration::from_secs(10));
static REFUSED: Throttle = Throttle::new(Duration::from_secs(10));
static SHED: Throttle = Throttle::new(Duration::from_secs(10));
static UNAVAILABLE: Throttle = Throttle::new(Duration::from_secs(10));

/// Longest `X-Correlation-Id` taken from a request; longer ones are replaced.
const MAX_CORRELATION_HEADER: usize = 200;

/// What the pipeline decided, before it becomes a response, metrics and an audit line.
struct Outcome {
    status: StatusCode,
    code: Option<&'static str>,
    body: Bytes,
    correlation_id: String,
    replayed: bool,
    retry_after: Option<u32>,
    kind: AuditKind,
    event: Option<EventFacts>,
}

struct EventFacts {
    event_id: Option<String>,
    session_id: String,
    event_type: String,
    state_version: Option<u64>,
}

/// One POST endpoint: a route, reached directly or through the simulator.
pub struct Endpoint {
    pub route: Arc<Route>,
    /// Reached through `/simulate…`: no authentication, events marked `simulated` (SPEC §10).
    pub simulated: bool,
    metrics: RouteMetrics,
    /// The route's `rate_limit` (never on the simulator).
    limiter: Option<RouteLimiter>,
}

impl Endpoint {
    /// `signals`: the routes' signals the alerts read (see `telemetry::watch`).
    pub fn new(route: Arc<Route>, simulated: bool, signals: &Signals) -> Endpoint {
        let watched = (!simulated).then(|| signals.route(&route.name, route.auth.secret_labels()));
        let metrics = RouteMetrics::new(&route.name, watched);
        let limiter = route
            .rate_limit
            .filter(|_| !simulated)
            .map(|l| RouteLimiter::new(l, Instant::now()));
        Endpoint {
            route,
            simulated,
            metrics,
            limiter,
        }
    }
}

/// Handles one webhook request on an endpoint.
pub async fn handle(state: AppState, ep: Arc<Endpoint>, req: Request<Body>) -> Response {
    let route = &ep.route;
    // The deadline counts from the request's first byte (SPEC §12.3); requests built without
    // a listener (tests driving the router) count from now.
    let arrival = req.extensions().get::<Arrival>().copied();
    let start = arrival
        .and_then(|a| a.first_byte)
        .unwrap_or_else(Instant::now);
    let transaction_id = uuid::Uuid::new_v4().to_string();
    let correlation_header = req
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_CORRELATION_HEADER)
        .map(str::to_string);
    let deadline = state.limits.deadline;
    let traced = state
        .tracer
        .request(&route.path, &route.name, req.headers());
    let admitted = state.in_flight.enter();
    if let Some(refusal) = admit(&state, &ep, admitted.is_some(), arrival, start, deadline) {
        let correlation_id = correlation_header.unwrap_or_else(crate::new_correlation_id);
        let outcome = error_outcome(refusal, correlation_id, &transaction_id, None);
        return finish(
            &state,
            &ep,
            &transaction_id,
            start,
            outcome,
            traced.as_ref(),
        );
    }
    // Log lines of this request carry its trace and span ids.
    let log_span = match &traced {
        Some(t) => tracing::info_span!("request", trace_id = %t.trace_id(), span_id = %t.span_id()),
        None => tracing::Span::none(),
    };
    let _in_flight = state.load.request();
    // Boxed: the pipeline's state is several KiB, and axum moves the handler's future (twice)
    // before polling it; boxed, those moves copy a pointer, not the state (bench/README.md,
    // twentieth session).
    let run = tracing::Instrument::instrument(
        Box::pin(pipeline(
            &state,
            &ep,
            req,
            &transaction_id,
            correlation_header.as_deref(),
            start,
            traced.as_ref(),
        )),
        log_span,
    );
    // Until the deadline's instant (`timeout_at`: no clock reading to work out what is left).
    // A deadline past what an `Instant` holds is as good as none (a year).
    let until = start
        .checked_add(deadline)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 86_400));
    let until = tokio::time::Instant::from_std(until);
    let outcome = match tokio::time::timeout_at(until, run).await {
        Ok(o) => o,
        Err(_) => {
            let correlation_id = correlation_header
                .clone()
                .unwrap_or_else(crate::new_correlation_id);
            if let Some(suppressed) = LATE.check() {
                tracing::warn!(route = %route.name, %correlation_id, suppressed,
                    "request passed its deadline (`suppressed`: more since the last line)");
            }
            error_outcome(
                ApiError::unavailable("the request could not be completed within the deadline"),
                correlation_id,
                &transaction_id,
                None,
            )
        }
    };
    finish(
        &state,
        &ep,
        &transaction_id,
        start,
        outcome,
        traced.as_ref(),
    )
}

/// Refuses a request before its body is read (see `admission`): too many in flight, already
/// past its deadline, or over the route's rate limit.
fn admit(
    state: &AppState,
    ep: &Endpoint,
    admitted: bool,
    arrival: Option<Arrival>,
    start: Instant,
    deadline: Duration,
) -> Option<ApiError> {
    if !admitted {
        if let Some(suppressed) = SHED.check() {
            tracing::warn!(route = %ep.route.name, max_in_flight = state.limits.max_in_flight,
                suppressed, "shedding load: max_in_flight requests are being handled \
                (`suppressed`: requests shed since the last line)");
        }
        return Some(ApiError::unavailable(
            "the gateway has too many requests in flight; retry shortly",
        ));
    }
    if start.elapsed() >= deadline {
        if let Some(suppressed) = LATE.check() {
            tracing::warn!(route = %ep.route.name, suppressed,
                "request waited past its deadline before it could be handled \
                (`suppressed`: more since the last line)");
        }
        return Some(ApiError::unavailable(
            "the request waited past its deadline before it could be handled; retry shortly",
        ));
    }
    let limiter = ep.limiter.as_ref()?;
    let client = arrival.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.peer.ip());
    let wait = limiter.check(client, Instant::now()).err()?;
    Some(ApiError::rate_limited(retry_after_secs(wait)))
}

/// The stages of one admitted request, each refusing with its own answer: receive the body
/// (content type, size, time), prepare the event (authenticate, decode, rules), build the
/// acceptance, commit it (and, on a `respond` route, wait for the upstream's answer).
async fn pipeline(
    state: &AppState,
    ep: &Endpoint,
    req: Request<Body>,
    transaction_id: &str,
    correlation_header: Option<&str>,
    started: Instant,
    traced: Option<&Traced>,
) -> Outcome {
    let fallback_correlation =
        || correlation_header.map_or_else(crate::new_correlation_id, str::to_string);
    let (parts, body) = req.into_parts();
    let (format, body, fields) = match receive(state, &ep.route, &parts.headers, body).await {
        Ok(received) => received,
        Err(e) => return error_outcome(e, fallback_correlation(), transaction_id, None),
    };
    // One reading for the whole request before its commit: the signature's age, the event's
    // id and `receivedAt`, the answer's `timestamp`, the secret's last match. Each reading is
    // two clock calls (`clock`), and a request took six (bench/README.md, fortieth session).
    let now_ms = crate::now_millis();
    let meta = RequestMeta {
        headers: &parts.headers,
        simulated: ep.simulated,
        correlation_header,
        transaction_id,
        now_ms,
        format,
        fields: fields.as_deref(),
    };
    let mut marks = traced.map(|_| ingest::StageMarks::start());
    let mut prepared = ep.route.prepare_marked(&body, &meta, marks.as_mut());
    if let Err(Refusal::Auth(AuthError::UnknownKey)) = prepared {
        // A JWT signed with a key the route's JWKS does not hold yet (rotation): fetch the
        // JWKS again, if its rate allows, and check once more.
        // Boxed: a rare path whose HTTP fetch would otherwise size every request's future.
        if Box::pin(ep.route.auth.refresh_keys()).await {
            prepared = ep.route.prepare_marked(&body, &meta, marks.as_mut());
        }
    }
    if let (Some(t), Some(m)) = (traced, marks) {
        stage_spans(t, &m);
    }
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(refusal) => {
            return refusal_outcome(ep, refusal, fallback_correlation(), transaction_id);
        }
    };
    ep.metrics
        .signature(SignatureResult::Valid, prepared.secret.as_deref(), now_ms);
    if let Some(t) = traced {
        let ev = &mut prepared.event;
        ev.traceparent = Some(t.traceparent());
        t.set([
            KeyValue::new("cognihook.event_id", ev.event_id.clone()),
            KeyValue::new("cognihook.correlation_id", ev.correlation_id.clone()),
            KeyValue::new("cognihook.session_id", ev.session_id.clone()),
            KeyValue::new("cognihook.event_type", ev.event_type.clone()),
        ]);
        if let Some(cognigy) = &ev.trace_id {
            t.set([KeyValue::new("cognigy.trace_id", cognigy.clone())]);
        }
    }
    let submission = submission(
        state,
        &ep.route,
        &parts.headers,
        &body,
        prepared,
        transaction_id,
    );
    commit(state, ep, submission, transaction_id, started, traced).await
}

/// The `auth`, `decode` and `rules` spans of a request, for the stages it reached.
fn stage_spans(t: &Traced, m: &ingest::StageMarks) {
    let mut from = m.start;
    for (name, end) in [("auth", m.auth), ("decode", m.decode), ("rules", m.rules)] {
        if let Some(end) = end {
            t.child(name, from, end, Vec::new());
            from = end;
        }
    }
}

/// The content type, then the body, bounded in size and time. A `multipart/form-data` body
/// (Cognigy's Form-Data payload type) also gives its text parts re-encoded as a form, which
/// is what is decoded; authentication still covers the raw bytes.
async fn receive(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
) -> Result<(BodyFormat, Bytes, Option<Vec<u8>>), ApiError> {
    let declared = check_content_type(headers, route.payload.accepts_form())?;
    let timeout = state.limits.body_read_timeout.min(state.limits.deadline);
    let body = read_body(body, headers, state.limits.max_body_bytes, timeout).await?;
    match declared {
        Declared::Json => Ok((BodyFormat::Json, body, None)),
        Declared::Form => Ok((BodyFormat::Form, body, None)),
        Declared::Multipart(boundary) => {
            let fields = Box::pin(multipart_as_form(body.clone(), boundary)).await?;
            Ok((BodyFormat::Form, body, Some(fields)))
        }
    }
}

/// The text parts of a `multipart/form-data` body, as `application/x-www-form-urlencoded`
/// (so both forms follow one set of conventions). A file part answers 415; a malformed body
/// 400. The body is already complete and within `max_body_bytes`.
async fn multipart_as_form(body: Bytes, boundary: String) -> Result<Vec<u8>, ApiError> {
    let malformed = |e: multer::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("multipart/form-data body cannot be read: {e}"),
        )
    };
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    while let Some(field) = parts.next_field().await.map_err(malformed)? {
        let text_part = field.file_name().is_none()
            && field
                .content_type()
                .is_none_or(|m| m.type_().as_str().eq_ignore_ascii_case("text"));
        let name = field.name().unwrap_or_default().to_string();
        if !text_part {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Form-Data part `{}` is a file; only text values are accepted",
                    name.chars().take(100).collect::<String>()
                ),
            ));
        }
        let value = field.text().await.map_err(malformed)?;
        pairs.push((name, value));
    }
    Ok(form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes())
}

/// What `commit` hands the store, and what it needs afterwards.
struct Submission {
    /// Boxed: moved several times on its way to the store, it is ~0.8 KiB.
    acceptance: Box<Acceptance>,
    /// The answer's status unless the store says otherwise (200, or 202 on a `respond` route).
    status: StatusCode,
    facts: EventFacts,
    correlation_id: String,
    /// A `respond` route's idempotency key (to store the upstream's answer under).
    answer_key: Option<String>,
}

/// Builds the acceptance of a prepared event: its answer (with `stateVersion` left for the
/// store), idempotency key, one outbox row per sink and, on a `respond` route, the upstream
/// row held for this request.
fn submission(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    body: &[u8],
    prepared: ingest::Prepared,
    transaction_id: &str,
) -> Submission {
    let ev = &prepared.event;
    let respond = route.respond.as_ref();
    let (status, status_word, message) = match respond {
        None => (StatusCode::OK, "success", "Payload processed successfully"),
        Some(_) => (
            StatusCode::ACCEPTED,
            "accepted",
            "Payload accepted; the backend's answer follows when it arrives",
        ),
    };
    let answer = success_answer(
        status_word,
        message,
        &ev.correlation_id,
        transaction_id,
        &ev.received_at,
        &prepared.extracted,
    );
    let facts = EventFacts {
        event_id: Some(ev.event_id.clone()),
        session_id: ev.session_id.clone(),
        event_type: ev.event_type.clone(),
        state_version: None,
    };
    let correlation_id = ev.correlation_id.clone();
    let idempotency_key = ingest::idempotency_key(&route.name, headers, body);
    let answer_key = respond.map(|_| idempotency_key.clone());
    let acceptance = Box::new(Acceptance {
        idempotency_key,
        event: prepared.event,
        answer,
        sinks: route.sinks.clone(),
        max_response_bytes: route.max_response_bytes,
        spend: prepared.spend,
        status: status.as_u16(),
        respond: respond.map(|r| RespondHold {
            sink: r.upstream.clone(),
            on_late: r.on_late.clone(),
            lease_ms: state.deliverer.sink(&r.upstream).map_or(60_000, |s| {
                i64::try_from(s.lease().as_millis()).unwrap_or(i64::MAX / 2)
            }),
        }),
    });
    Submission {
        acceptance,
        status,
        facts,
        correlation_id,
        answer_key,
    }
}

/// Commits the acceptance and turns what the store decided into the outcome: committed
/// (the delivery worker woken; a `respond` route waits for its upstream), a duplicate's
/// original answer, a replayed signature, or a refusal.
async fn commit(
    state: &AppState,
    ep: &Endpoint,
    s: Submission,
    transaction_id: &str,
    started: Instant,
    traced: Option<&Traced>,
) -> Outcome {
    let Submission {
        acceptance,
        status: answer_status,
        facts,
        correlation_id,
        answer_key,
    } = s;
    let rows = acceptance.sinks.len();
    let commit_start = traced.map(|_| std::time::SystemTime::now());
    let accepted = state.store.accept_boxed(acceptance).await;
    if let (Some(t), Some(from)) = (traced, commit_start) {
        let mut attributes = vec![KeyValue::new("cognihook.outbox_rows", rows as i64)];
        if let Ok(AcceptOutcome::Committed { group, .. }) = &accepted {
            attributes.push(KeyValue::new(
                "cognihook.commit.group_size",
                i64::from(*group),
            ));
        }
        t.child("commit", from, std::time::SystemTime::now(), attributes);
    }
    match accepted {
        Ok(AcceptOutcome::Committed {
            state_version,
            body,
            held,
            ..
        }) => {
            if rows > 0 {
                state.load.accepted(rows);
                state.deliverer.wake();
            }
            let (status, body) = match (held, ep.route.respond.as_ref(), answer_key) {
                (Some(claim), Some(r), Some(idempotency_key)) => {
                    let wait = upstream_wait(state, r.within, started);
                    let parent = traced.map(|t| t.context().clone());
                    // Boxed, as the other paths few requests take: every request's future
                    // is as large as its largest path, and is moved whole (measured:
                    // bench/README.md, fourteenth session).
                    Box::pin(await_upstream(
                        state,
                        &ep.route,
                        *claim,
                        wait,
                        body,
                        idempotency_key,
                        parent,
                    ))
                    .await
                }
                _ => (answer_status, body),
            };
            Outcome {
                status,
                code: None,
                body,
                correlation_id,
                replayed: false,
                retry_after: None,
                kind: AuditKind::WebhookProcessed,
                event: Some(EventFacts {
                    state_version: Some(state_version),
                    ..facts
                }),
            }
        }
        Ok(AcceptOutcome::Duplicate {
            status,
            body,
            correlation_id,
        }) => Outcome {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            code: None,
            body,
            correlation_id,
            replayed: true,
            retry_after: None,
            kind: AuditKind::WebhookDuplicate,
            event: Some(EventFacts {
                event_id: None,
                ..facts
            }),
        },
        Ok(AcceptOutcome::SignatureReplayed) => error_outcome(
            auth_refusal(ep, AuthError::ReplayedSignature),
            correlation_id,
            transaction_id,
            None,
        ),
        Err(e) => {
            let api = store_refusal(&ep.route, &correlation_id, &e);
            error_outcome(
                api,
                correlation_id,
                transaction_id,
                Some(EventFacts {
                    event_id: None,
                    ..facts
                }),
            )
        }
    }
}

/// The answer to an acceptance the store did not commit (logged once per interval).
fn store_refusal(route: &Route, correlation_id: &str, e: &StoreError) -> ApiError {
    match e {
        StoreError::ResponseTooLarge { .. } | StoreError::Refused(_) => {
            if let Some(suppressed) = REFUSED.check() {
                tracing::error!(route = %route.name, %correlation_id, error = %e,
                    suppressed, "event not accepted; nothing was committed");
            }
            ApiError::internal()
        }
        StoreError::Overloaded(_) => {
            if let Some(suppressed) = SHED.check() {
                tracing::warn!(route = %route.name, error = %e, suppressed,
                    "shedding load (`suppressed`: requests shed since the last line)");
            }
            ApiError::unavailable("the gateway is overloaded; retry shortly")
        }
        StoreError::Closed => ApiError::unavailable("the gateway is shutting down"),
        StoreError::Unavailable(_) => {
            if let Some(suppressed) = UNAVAILABLE.check() {
                tracing::error!(route = %route.name, %correlation_id, error = %e,
                    suppressed, "store unavailable; event not accepted \
                    (`suppressed`: more since the last line)");
            }
            ApiError::unavailable("the event store is unavailable; retry shortly")
        }
    }
}

/// The success answer (SPEC §5) with its `data.stateVersion` left for the store to fill:
/// `data` holds `processed`, `stateVersion` and the route's extracts, in that order. Its
/// `timestamp` is the event's `receivedAt` (the request's one clock reading). The embedded
/// store keeps this envelope as its words (`store::sqlite::record`'s packed records): other
/// words are kept whole.
fn success_answer(
    status: &str,
    message: &str,
    correlation_id: &str,
    transaction_id: &str,
    timestamp: &str,
    extracted: &serde_json::Map<String, Value>,
) -> Answer {
    let mut head = String::with_capacity(256);
    for (field, value) in [
        ("{\"status\":", status),
        (",\"message\":", message),
        (",\"correlationId\":", correlation_id),
        (",\"transactionId\":", transaction_id),
        (",\"timestamp\":", timestamp),
    ] {
        head.push_str(field);
        crate::json::string(&mut head, value);
    }
    head.push_str(",\"data\":{\"processed\":true,\"stateVersion\":");
    let mut tail = String::with_capacity(64);
    for (k, v) in extracted {
        tail.push(',');
        crate::json::string(&mut tail, k);
        tail.push(':');
        crate::json::value(&mut tail, v);
    }
    tail.push_str("}}");
    Answer::new(head.into_bytes(), tail.into_bytes())
}

/// How long the request may wait for its upstream: `respond.within`, but never past the
/// route's deadline less a margin for answering.
fn upstream_wait(state: &AppState, within: Duration, started: Instant) -> Duration {
    const ANSWER_MARGIN: Duration = Duration::from_millis(100);
    let left = state
        .limits
        .deadline
        .saturating_sub(started.elapsed())
        .saturating_sub(ANSWER_MARGIN);
    within.min(left)
}

/// Makes the upstream call of a `respond` route and waits up to `wait` for it. In time, the
/// upstream's JSON becomes `data` (over the gateway's own fields) in a 200 that also replaces
/// the stored answer for duplicates; otherwise the committed 202 goes out and the call goes
/// on in the background, its answer handed to `on_late`.
async fn await_upstream(
    state: &AppState,
    route: &Route,
    claim: crate::store::Claimed,
    wait: Duration,
    accepted: Bytes,
    idempotency_key: String,
    parent: Option<opentelemetry::Context>,
) -> (StatusCode, Bytes) {
    let mut call = state.deliverer.spawn_respond(claim, parent);
    let offer = match tokio::time::timeout(wait, &mut call).await {
        Ok(Ok(offer)) => offer,
        // The call failed; the workers retry it and `on_late` gets the answer.
        Ok(Err(_)) => return (StatusCode::ACCEPTED, accepted),
        Err(_) => {
            // Stop waiting. An answer sent just before the channel closed is still ours
            // (the task then does not hand it to `on_late`).
            call.close();
            match call.try_recv() {
                Ok(offer) => offer,
                Err(_) => return (StatusCode::ACCEPTED, accepted),
            }
        }
    };
    let Some(bytes) = merge_upstream(&accepted, &offer.answer) else {
        offer.decline();
        return (StatusCode::ACCEPTED, accepted);
    };
    if bytes.len() > route.max_response_bytes {
        // Cognigy keeps a node's answer in the flow context (65 kB by default): an answer
        // past the route's cap would be lost there, so it goes to `on_late` instead.
        tracing::warn!(route = %route.name, size = bytes.len(), limit = route.max_response_bytes,
            "upstream answer larger than the route's max_response_bytes; answering 202 and \
             handing it to on_late");
        offer.decline();
        return (StatusCode::ACCEPTED, accepted);
    }
    offer.take();
    let bytes = Bytes::from(bytes);
    if let Err(e) = state
        .store
        .set_answer(idempotency_key, 200, bytes.clone())
        .await
    {
        tracing::warn!(error = %e, "cannot store the upstream answer for duplicates");
    }
    (StatusCode::OK, bytes)
}

/// The committed answer with the upstream's JSON as its `data` (over the gateway's own
/// fields; a non-object answer becomes `data.result`), marked a success.
fn merge_upstream(accepted: &[u8], answer: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(accepted) else {
        return None;
    };
    let upstream = serde_json::from_slice::<Value>(answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(answer).into_owned()));
    if let Some(Value::Object(data)) = body.get_mut("data") {
        match upstream {
            Value::Object(fields) => data.extend(fields),
            other => {
                data.insert("result".into(), other);
            }
        }
    }
    body.insert("status".into(), "success".into());
    body.insert("message".into(), "Payload processed successfully".into());
    serde_json::to_vec(&body).ok()
}

/// What a request's `Content-Type` declares.
enum Declared {
    Json,
    Form,
    /// `multipart/form-data` with its boundary.
    Multipart(String),
}

/// The body format a request declares: JSON everywhere, form-encoded and multipart where the
/// payload kind takes forms (`cognigy-input`); anything else answers 415.
fn check_content_type(headers: &HeaderMap, form_allowed: bool) -> Result<Declared, ApiError> {
    let unsupported = |what: &str| {
        let wanted = if form_allowed {
            "application/json, application/x-www-form-urlencoded or multipart/form-data"
        } else {
            "application/json"
        };
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {wanted}, got {what}"),
        )
    };
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("none"));
    };
    let v = v.to_str().map_err(|_| unsupported("a non-ASCII value"))?;
    let essence = v.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(Declared::Json)
    } else if form_allowed && essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Declared::Form)
    } else if form_allowed && essence.eq_ignore_ascii_case("multipart/form-data") {
        multer::parse_boundary(v)
            .map(Declared::Multipart)
            .map_err(|_| unsupported("multipart/form-data without a boundary"))
    } else {
        Err(unsupported(&format!(
            "`{}`",
            v.chars().take(100).collect::<String>()
        )))
    }
}

/// Reads the body, refusing it as soon as it passes `limit` (never buffering past it).
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
        while let Some(frame) = body.frame().await {
            // Broken framing (a malformed chunk, a connection cut mid-body): the body was
            // never whole, so its JSON is not in question.
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_request",
                    format!("request body could not be read: {}", crate::with_causes(&e)),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "request body not received within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

fn refusal_outcome(
    ep: &Endpoint,
    refusal: Refusal,
    correlation_id: String,
    transaction_id: &str,
) -> Outcome {
    let mut correlation_id = correlation_id;
    let api = match refusal {
        Refusal::Auth(e) => auth_refusal(ep, e),
        Refusal::Payload(PayloadError::InvalidJson(msg)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", msg)
        }
        Refusal::Payload(PayloadError::Invalid(errors)) => {
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_payload",
                format!("{} field(s) failed validation", errors.len()),
            );
            e.errors = errors;
            e
        }
        Refusal::Rule {
            rejection,
            correlation_id: from_event,
        } => {
            correlation_id = from_event;
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rule_rejected",
                rejection.message,
            )
        }
    };
    error_outcome(api, correlation_id, transaction_id, None)
}

fn auth_refusal(ep: &Endpoint, e: AuthError) -> ApiError {
    let (result, message) = match e {
        AuthError::MissingSignature => (
            SignatureResult::Missing,
            "request carries no signature or credentials for this route",
        ),
        AuthError::InvalidSignature => (
            SignatureResult::Invalid,
            "signature or credentials do not match",
        ),
        AuthError::StaleTimestamp => (
            SignatureResult::Stale,
            "signed timestamp is outside the allowed tolerance",
        ),
        AuthError::ReplayedSignature => (
            SignatureResult::Replayed,
            "this signature has already been used",
        ),
        AuthError::MissingToken => (
            SignatureResult::Missing,
            "request carries no `Authorization: Bearer` token",
        ),
        AuthError::InvalidToken | AuthError::UnknownKey => (
            SignatureResult::Invalid,
            "the bearer token is not accepted (signature, issuer, audience or algorithm)",
        ),
        AuthError::ExpiredToken => (SignatureResult::Stale, "the bearer token has expired"),
        AuthError::PrematureToken => (
            SignatureResult::Stale,
            "the bearer token is not valid yet (nbf)",
        ),
    };
    ep.metrics.signature(result, None, crate::now_millis());
    ApiError::new(StatusCode::UNAUTHORIZED, e.code(), message)
}

fn error_outcome(
    e: ApiError,
    correlation_id: String,
    transaction_id: &str,
    event: Option<EventFacts>,
) -> Outcome {
    Outcome {
        status: e.status,
        code: Some(e.code),
        body: e.body(&correlation_id, transaction_id),
        correlation_id,
        replayed: false,
        retry_after: e.retry_after,
        kind: AuditKind::WebhookRejected,
        event,
    }
}

/// Answer headers, validated at compile time (a `&str` name is checked on every insert).
const CORRELATION_ID: http::HeaderName = http::HeaderName::from_static("x-correlation-id");
const IDEMPOTENT_REPLAYED: http::HeaderName = http::HeaderName::from_static("idempotent-replayed");

fn finish(
    state: &AppState,
    ep: &Endpoint,
    transaction_id: &str,
    start: Instant,
    o: Outcome,
    traced: Option<&Traced>,
) -> Response {
    let latency = start.elapsed();
    if let Some(t) = traced {
        t.set([
            KeyValue::new("http.response.status_code", i64::from(o.status.as_u16())),
            KeyValue::new("cognihook.correlation_id", o.correlation_id.clone()),
        ]);
        if let Some(code) = o.code {
            t.set([KeyValue::new("error.type", code)]);
        }
        if o.status.is_server_error() {
            t.fail(o.code.unwrap_or("error"));
        }
        t.end();
    }
    let status = o.status.as_u16();
    use crate::telemetry::stats::Answered;
    let answered = if o.status.is_success() {
        Answered::Success
    } else if o.status == StatusCode::UNPROCESSABLE_ENTITY {
        Answered::Rejected
    } else {
        Answered::Error
    };
    state.stats.record(latency, answered);
    ep.metrics
        .request(status, o.code.unwrap_or(""), latency.as_secs_f64());
    match o.kind {
        AuditKind::WebhookProcessed => {
            state.stats.committed();
            ep.metrics.committed();
        }
        AuditKind::WebhookDuplicate => {
            state.stats.duplicate();
            ep.metrics.duplicate();
        }
        _ => {}
    }
    let ev = o.event.as_ref();
    state.audit.write(&AuditLine {
        ts: crate::now_rfc3339(),
        event: o.kind,
        route: &ep.route.name,
        correlation_id: &o.correlation_id,
        transaction_id,
        event_id: ev.and_then(|e| e.event_id.as_deref()),
        session_id: ev.map(|e| e.session_id.as_str()),
        event_type: ev.map(|e| e.event_type.as_str()),
        status,
        code: o.code,
        latency_ms: (latency.as_secs_f64() * 1e6).round() / 1e3,
        state_version: ev.and_then(|e| e.state_version),
        simulated: ep.simulated,
        sink: None,
        attempt: None,
        recovered: false,
    });
    let mut r = json_response(o.status, o.body, o.retry_after);
    if let Ok(v) = HeaderValue::from_str(&crate::event::header_safe(&o.correlation_id)) {
        r.headers_mut().insert(CORRELATION_ID, v);
    }
    if o.replayed {
        r.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if o.status == StatusCode::UNAUTHORIZED {
        if let Some(c) = ep.route.auth.challenge_for(o.code) {
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
    }
    r
}
