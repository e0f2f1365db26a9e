//! The console's pages. Each reads what the admin API reads (the store, the delivery
//! workers, the in-process statistics), so on PostgreSQL every replica shows the shared
//! state; figures that are per process (circuits, latency) say so.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{esc, form_value, layout, page_response, redirect, Console, Session};
use crate::http::AppState;
use crate::store::{DeadLetterFilter, DeadReason};

fn csrf_field(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&s.csrf)
    )
}

fn unavailable(title: &str, here: &str, s: &Session, e: impl std::fmt::Display) -> Response {
    page_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &layout(
            title,
            Some((here, s)),
            &format!(
                "<p class=\"error\">The store is unavailable: {}</p>",
                esc(&e.to_string())
            ),
        ),
    )
}

/// `GET /console/`: what is happening now; the page reloads itself every 5 s.
pub(super) async fn overview(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Extension(console): Extension<Arc<Console>>,
) -> Response {
    use super::history::{chart, latency_quantile, rate, series, total};
    use crate::telemetry::metrics::{DELIVERIES_TOTAL, DUPLICATES_TOTAL, REQUESTS_TOTAL};
    console.sample(&state);
    let samples = console.history.samples();
    let now = crate::now_millis();
    let recent: Vec<_> = samples
        .iter()
        .filter(|x| now - x.at_ms <= 60_000)
        .cloned()
        .collect();
    let window: Vec<_> = samples
        .iter()
        .filter(|x| now - x.at_ms <= super::history::SPAN_MS)
        .cloned()
        .collect();
    let mut body = String::from(
        "<p class=\"muted\">This replica's traffic (rates over the last minute, the rest over the \
         last 15); the outbox and dead letters are the store's. The page reloads every 5 s.</p>",
    );
    let ms =
        |v: Option<f64>| v.map_or_else(|| "–".to_string(), |s| format!("≤ {:.1} ms", s * 1000.0));
    let _ = write!(
        body,
        "<p>Answer latency: p50 <strong id=\"p50\">{}</strong>, p99 <strong id=\"p99\">{}</strong></p>",
        ms(latency_quantile(&window, 0.5)),
        ms(latency_quantile(&window, 0.99))
    );
    body.push_str("<div style=\"display:flex;gap:1em;flex-wrap:wrap\">");
    body.push_str(&chart(
        "requests/s",
        &series(&window, REQUESTS_TOTAL, |_| true),
        now,
    ));
    body.push_str(&chart(
        "deliveries/s",
        &series(&window, DELIVERIES_TOTAL, |l| {
            l.get("outcome") == Some(&"delivered")
        }),
        now,
    ));
    body.push_str(&chart(
        "errors/s (4xx/5xx but 422)",
        &series(&window, REQUESTS_TOTAL, |l| {
            l.get("status")
                .is_some_and(|c| c.starts_with('4') || c.starts_with('5'))
                && l.get("status") != Some(&"422")
        }),
        now,
    ));
    body.push_str("</div><h2>Routes</h2><table><tr><th>route</th><th>accepted/s</th><th>rejected/s (422)</th>\
        <th>duplicates/s</th><th>errors/s</th></tr>");
    let mut routes: Vec<String> = window
        .last()
        .map(|x| {
            x.series
                .keys()
                .filter(|k| k.starts_with(REQUESTS_TOTAL))
                .filter_map(|k| {
                    super::history::labels(k)
                        .get("route")
                        .map(|r| r.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    routes.sort();
    routes.dedup();
    for route in &routes {
        let of =
            |l: &std::collections::BTreeMap<&str, &str>| l.get("route") == Some(&route.as_str());
        fn status<'a>(l: &std::collections::BTreeMap<&str, &'a str>) -> &'a str {
            l.get("status").copied().unwrap_or("")
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(route),
            rate(&recent, REQUESTS_TOTAL, |l| of(l)
                && status(l).starts_with('2')),
            rate(&recent, REQUESTS_TOTAL, |l| of(l) && status(l) == "422"),
            rate(&recent, DUPLICATES_TOTAL, of),
            rate(&recent, REQUESTS_TOTAL, |l| {
                of(l)
                    && (status(l).starts_with('4') || status(l).starts_with('5'))
                    && status(l) != "422"
            }),
        );
    }
    body.push_str("</table><h2>Errors by code</h2><table><tr><th>status</th><th>code</th><th>answers</th></tr>");
    if let (Some(a), Some(b)) = (window.first(), window.last()) {
        let mut codes: std::collections::BTreeMap<(String, String), f64> = Default::default();
        for k in b.series.keys().filter(|k| k.starts_with(REQUESTS_TOTAL)) {
            let l = super::history::labels(k);
            let code = l.get("code").copied().unwrap_or("");
            if code.is_empty() {
                continue;
            }
            let n = total(b, REQUESTS_TOTAL, |x| x == &l) - total(a, REQUESTS_TOTAL, |x| x == &l);
            if n > 0.0 {
                *codes
                    .entry((
                        l.get("status").copied().unwrap_or("").to_string(),
                        code.to_string(),
                    ))
                    .or_default() += n;
            }
        }
        for ((status, code), n) in codes {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(&status),
                esc(&code)
            );
        }
    }
    body.push_str("</table>");
    body.push_str(&sink_table(&state, &s, false).await);
    body.push_str(
        "<h2>Deliveries per sink</h2><table><tr><th>sink</th><th>delivered/s</th>\
         <th>retried/s (transient)</th><th>dead-lettered/s</th><th>dead letters kept: permanent</th>\
         <th>exhausted</th><th>expired</th></tr>",
    );
    for sink in state.deliverer.sinks() {
        let of = |l: &std::collections::BTreeMap<&str, &str>, o: &str| {
            l.get("sink") == Some(&sink.name.as_str()) && l.get("outcome") == Some(&o)
        };
        let mut kept = Vec::new();
        for reason in [
            DeadReason::Permanent,
            DeadReason::Exhausted,
            DeadReason::Expired,
        ] {
            let f = DeadLetterFilter {
                sink: Some(sink.name.clone()),
                reason: Some(reason),
                ..DeadLetterFilter::default()
            };
            kept.push(
                state
                    .store
                    .dead_letters(&f, 0)
                    .await
                    .map_or_else(|_| "?".to_string(), |(n, _)| n.to_string()),
            );
        }
        let _ = write!(
            body,
            "<tr id=\"outcomes-{}\"><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&sink.name),
            esc(&sink.name),
            rate(&recent, DELIVERIES_TOTAL, |l| of(l, "delivered")),
            rate(&recent, DELIVERIES_TOTAL, |l| of(l, "retried")),
            rate(&recent, DELIVERIES_TOTAL, |l| of(l, "dead_lettered")),
            kept[0],
            kept[1],
            kept[2],
        );
    }
    body.push_str(
        "</table><h2>Dead letters by class</h2><table><tr><th>class</th><th>kept</th></tr>",
    );
    for reason in [
        DeadReason::Permanent,
        DeadReason::Exhausted,
        DeadReason::Expired,
    ] {
        let f = DeadLetterFilter {
            reason: Some(reason),
            ..DeadLetterFilter::default()
        };
        let n = state
            .store
            .dead_letters(&f, 0)
            .await
            .map_or_else(|_| "?".to_string(), |(n, _)| n.to_string());
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/dead-letters?class={c}\">{c}</a></td><td>{n}</td></tr>",
            c = reason.as_str()
        );
    }
    body.push_str("</table>");
    let html = layout("Overview", Some(("/console/", &s)), &body).replace(
        "<meta charset=\"utf-8\">",
        "<meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">",
    );
    page_response(StatusCode::OK, &html)
}

/// The sinks with their outbox figures; with `actions`, pause/resume buttons.
async fn sink_table(state: &AppState, s: &Session, actions: bool) -> String {
    let sinks = state.deliverer.sinks();
    let names: Vec<String> = sinks.iter().map(|x| x.name.clone()).collect();
    let counts = state.store.sink_counts(&names).await;
    let mut out = String::from(
        "<h2>Sinks</h2><table><tr><th>sink</th><th>kind</th><th>target</th><th>state</th><th>circuit</th>\
         <th>pending</th><th>oldest pending</th><th>dead letters</th><th>lag p99</th><th>rate limit</th>\
         <th>last error</th>",
    );
    if actions {
        out.push_str("<th></th>");
    }
    out.push_str("</tr>");
    for sink in sinks {
        let c = counts
            .as_ref()
            .ok()
            .and_then(|cs| cs.iter().find(|c| c.sink == sink.name));
        let (pending, oldest, dead) = match c {
            Some(c) => (
                c.pending.to_string(),
                format!("{:.1} s", c.oldest_pending_age_seconds),
                c.dead_letters.to_string(),
            ),
            None => ("?".into(), "?".into(), "?".into()),
        };
        let lag = sink
            .lag()
            .map_or_else(|| "–".to_string(), |l| format!("{:.3} s", l.p99));
        let paused = sink.is_paused();
        let rate = sink.rate_state().map_or_else(
            || "–".to_string(),
            |(left, l)| {
                format!(
                    "{left} of {} per {} left",
                    l.max,
                    humantime::format_duration(l.per)
                )
            },
        );
        let last_error = sink.last_error().map_or_else(
            || "–".to_string(),
            |(at, e)| {
                let at =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                format!("{}: {}", crate::format_rfc3339(at), esc(&e))
            },
        );
        let _ = write!(
            out,
            "<tr id=\"sink-{name}\"><td>{name}</td><td>{kind}</td><td><code>{target}</code></td><td>{state}</td>\
             <td>{circuit}</td><td>{pending}</td><td>{oldest}</td><td>{dead}</td><td>{lag}</td><td>{rate}</td>\
             <td>{last_error}</td>",
            name = esc(&sink.name),
            kind = sink.config.kind().name(),
            target = esc(&target_shown(&sink.config.target)),
            state = if paused { "paused" } else { "running" },
            circuit = sink.circuit().name(),
        );
        if actions {
            let action = if paused { "resume" } else { "pause" };
            let _ = write!(
                out,
                "<td><form method=\"post\" action=\"/console/sinks/{}/{action}\">{}\
                 <button type=\"submit\">{}</button></form></td>",
                esc(&sink.name),
                csrf_field(s),
                if paused { "Resume" } else { "Pause" }
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    if let Err(e) = counts {
        let _ = write!(
            out,
            "<p class=\"error\">Outbox figures unavailable: {}</p>",
            esc(&e.to_string())
        );
    }
    out
}

/// Where a sink sends, credentials masked.
fn target_shown(t: &crate::sinks::spec::Target) -> String {
    use crate::sinks::spec::Target;
    match t {
        Target::Http(h) => h.url.to_string(),
        Target::File(f) => f.path.display().to_string(),
        Target::Nats(n) => format!("{} → {}", n.url, n.subject),
        Target::Amqp(a) => format!("{} → {}", a.url, a.exchange),
        Target::Redis(r) => format!("{} → {}", r.url, r.stream),
        Target::Cognigy(c) => format!("{:?}", c.mode).to_lowercase(),
        Target::Alert(a) => format!("{:?} alerts", a.format).to_lowercase(),
    }
}

/// `GET /console/sinks`.
pub(super) async fn sinks(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
) -> Response {
    let body = sink_table(&state, &s, true).await;
    page_response(
        StatusCode::OK,
        &layout("Sinks", Some(("/console/sinks", &s)), &body),
    )
}

/// `POST /console/sinks/{name}/pause|resume`.
pub(super) async fn sink_action(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(sink) = state.deliverer.sink(&name) else {
        return page_response(
            StatusCode::NOT_FOUND,
            &layout(
                "Sinks",
                Some(("/console/sinks", &s)),
                "<p class=\"error\">No such sink.</p>",
            ),
        );
    };
    match action.as_str() {
        "pause" => sink.set_paused(true),
        "resume" => {
            sink.set_paused(false);
            state.deliverer.wake();
        }
        _ => return redirect("/console/sinks"),
    }
    tracing::info!(sink = %name, action, "sink {action}d from the console");
    redirect("/console/sinks")
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct EventQuery {
    #[serde(default)]
    q: String,
}

/// A session's timeline: each event with its `stateVersion` and its deliveries' states.
async fn timeline(
    state: &AppState,
    session_id: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let entries = state.store.session_timeline(session_id, 100).await?;
    if entries.is_empty() {
        return Ok(None);
    }
    let mut out = format!(
        "<h2>Session <code>{}</code></h2><p class=\"muted\">Its latest {} accepted event(s), newest \
         first (refused requests change nothing and are not here).</p><table id=\"timeline\"><tr>\
         <th>stateVersion</th><th>committed</th><th>route</th><th>type</th><th>event</th><th>answer</th>\
         <th>deliveries</th></tr>",
        esc(session_id),
        entries.len()
    );
    for e in &entries {
        let deliveries: Vec<String> = e
            .deliveries
            .iter()
            .map(|(sink, status)| format!("{}: {}", esc(sink), esc(status)))
            .collect();
        // The rules' outcome is in the answer: the fields they extracted (names only; the
        // values are the event's and stay on its page, behind the reveal).
        let answer = match &e.answer {
            Some((status, body)) => {
                let v: Value = serde_json::from_slice(body).unwrap_or_default();
                let extracted: Vec<&str> = v["data"]
                    .as_object()
                    .map(|m| {
                        m.keys()
                            .map(String::as_str)
                            .filter(|k| !matches!(*k, "processed" | "stateVersion"))
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "{status} {}{}",
                    esc(v["status"].as_str().unwrap_or_default()),
                    if extracted.is_empty() {
                        String::new()
                    } else {
                        format!(", extracted: {}", esc(&extracted.join(", ")))
                    }
                )
            }
            None => "<span class=\"muted\">expired</span>".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/console/events?q={}\">{}</a></td><td>{answer}</td><td>{}</td></tr>",
            e.state_version,
            esc(&e.committed_at),
            esc(&e.route),
            esc(&e.event_type),
            esc(&e.event_id),
            esc(&e.correlation_id),
            if deliveries.is_empty() { "–".to_string() } else { deliveries.join(", ") }
        );
    }
    out.push_str("</table>");
    Ok(Some(out))
}

/// The personal fields of an event, hidden until the operator reveals them.
const PERSONAL: [&str; 3] = ["text", "payload", "entities"];

fn event_table(event: &Value, reveal: bool) -> String {
    let mut out = String::from("<table>");
    if let Some(map) = event.as_object() {
        for (k, v) in map {
            let shown = if PERSONAL.contains(&k.as_str()) && !reveal {
                "<span class=\"muted\">hidden</span>".to_string()
            } else {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string_pretty(other).unwrap_or_default(),
                };
                format!("<code>{}</code>", esc(&text))
            };
            let _ = write!(out, "<tr><th>{}</th><td>{shown}</td></tr>", esc(k));
        }
    }
    out.push_str("</table>");
    out
}

async fn journey_page(state: &AppState, s: &Session, q: &str, reveal: bool) -> Response {
    let mut body = format!(
        "<form method=\"get\" action=\"/console/events\"><label>Event or correlation id \
         <input name=\"q\" value=\"{}\" size=\"40\"></label> <button type=\"submit\">Find</button> \
         <span class=\"muted\">an event id, a correlation id or a session id</span></form>",
        esc(q)
    );
    if q.trim().is_empty() {
        return page_response(
            StatusCode::OK,
            &layout("Events", Some(("/console/events", s)), &body),
        );
    }
    let journey = match state.store.journey(q.trim()).await {
        Ok(j) => j,
        Err(e) => return unavailable("Events", "/console/events", s, e),
    };
    let Some(j) = journey else {
        match timeline(state, q.trim()).await {
            Ok(Some(t)) => {
                body.push_str(&t);
                return page_response(
                    StatusCode::OK,
                    &layout("Events", Some(("/console/events", s)), &body),
                );
            }
            Ok(None) => {}
            Err(e) => return unavailable("Events", "/console/events", s, e),
        }
        body.push_str("<p class=\"error\">No event with this id or correlation id, and no session with this id.</p>");
        return page_response(
            StatusCode::NOT_FOUND,
            &layout("Events", Some(("/console/events", s)), &body),
        );
    };
    let id = j.event["eventId"].as_str().unwrap_or_default().to_string();
    let _ = write!(
        body,
        "<h2>Event <code>{}</code></h2><p>committed {}, session <a href=\"/console/events?q={}\">{}</a> \
         (stateVersion {})</p>",
        esc(&id),
        esc(&j.committed_at),
        esc(j.event["sessionId"].as_str().unwrap_or_default()),
        esc(j.event["sessionId"].as_str().unwrap_or_default()),
        j.event["stateVersion"]
    );
    if !reveal {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/console/events/{}/reveal\">{}<button type=\"submit\">\
             Reveal message text and payload</button> <span class=\"muted\">(written to the audit log)</span></form>",
            esc(&id),
            csrf_field(s)
        );
    }
    body.push_str(&event_table(&j.event, reveal));
    body.push_str("<h2>Deliveries</h2>");
    if j.deliveries.is_empty() {
        body.push_str("<p class=\"muted\">No sink on this route.</p>");
    }
    for d in &j.deliveries {
        let _ = write!(
            body,
            "<h3>{} <span class=\"muted\">{}</span></h3><table><tr><th>#</th><th>at</th><th>outcome</th>\
             <th>duration</th><th>error</th></tr>",
            esc(&d.sink),
            esc(&d.status)
        );
        for a in &d.attempts {
            let v = serde_json::to_value(a).unwrap_or_default();
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                v["attempt"],
                esc(v["at"].as_str().unwrap_or_default()),
                esc(v["outcome"].as_str().unwrap_or_default()),
                v.get("durationMs")
                    .map_or(String::new(), |d| format!("{d} ms")),
                esc(v["error"].as_str().unwrap_or_default()),
            );
        }
        body.push_str("</table>");
    }
    page_response(
        StatusCode::OK,
        &layout("Events", Some(("/console/events", s)), &body),
    )
}

/// `GET /console/events?q=`: an event's journey by event id or correlation id.
pub(super) async fn events(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q.q).unwrap_or_default();
    journey_page(&state, &s, &q, false).await
}

/// `POST /console/events/{id}/reveal`: the same page with the personal fields shown; the
/// reveal is written to the audit log.
pub(super) async fn reveal(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    state
        .audit
        .write(&crate::telemetry::audit::AuditLine::revealed(&id));
    tracing::info!(event_id = %id, "event payload revealed in the console");
    journey_page(&state, &s, &id, true).await
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct DeadQuery {
    sink: Option<String>,
    route: Option<String>,
    class: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// A dead-letter filter from a form; a time bound that does not parse is left out and said.
fn filter_of(
    sink: Option<String>,
    route: Option<String>,
    class: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    problems: &mut Vec<String>,
) -> DeadLetterFilter {
    let some = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let mut bound = |v: Option<&str>, name: &str| {
        let v = v.map(str::trim).filter(|s| !s.is_empty())?;
        match crate::store::parse_time_bound(v) {
            Ok(ms) => Some(ms),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                None
            }
        }
    };
    let since_ms = bound(since, "since");
    let until_ms = bound(until, "until");
    DeadLetterFilter {
        since_ms,
        until_ms,
        sink: some(sink),
        route: some(route),
        reason: match class {
            Some("permanent") => Some(DeadReason::Permanent),
            Some("exhausted") => Some(DeadReason::Exhausted),
            Some("expired") => Some(DeadReason::Expired),
            _ => None,
        },
        ..DeadLetterFilter::default()
    }
}

fn ms_text(ms: Option<i64>) -> String {
    ms.map(|ms| {
        crate::format_rfc3339(
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        )
    })
    .unwrap_or_default()
}

fn filter_fields(f: &DeadLetterFilter) -> String {
    format!(
        "<input type=\"hidden\" name=\"sink\" value=\"{}\"><input type=\"hidden\" name=\"route\" value=\"{}\">\
         <input type=\"hidden\" name=\"class\" value=\"{}\"><input type=\"hidden\" name=\"since\" value=\"{}\">\
         <input type=\"hidden\" name=\"until\" value=\"{}\">",
        esc(f.sink.as_deref().unwrap_or_default()),
        esc(f.route.as_deref().unwrap_or_default()),
        f.reason.map_or("", DeadReason::as_str),
        esc(&ms_text(f.since_ms)),
        esc(&ms_text(f.until_ms)),
    )
}

/// `GET /console/dead-letters?sink=&route=&class=`.
pub(super) async fn dead_letters(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    query: Result<Query<DeadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let mut problems = Vec::new();
    let filter = filter_of(
        q.sink,
        q.route,
        q.class.as_deref(),
        q.since.as_deref(),
        q.until.as_deref(),
        &mut problems,
    );
    let (total, items) = match state.store.dead_letters(&filter, 200).await {
        Ok(r) => r,
        Err(e) => return unavailable("Dead letters", "/console/dead-letters", &s, e),
    };
    let sel = |v: &str| {
        if filter.reason.map(DeadReason::as_str) == Some(v) {
            " selected"
        } else {
            ""
        }
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/console/dead-letters\">\
         <label>Sink <input name=\"sink\" value=\"{}\"></label> <label>Route <input name=\"route\" value=\"{}\"></label> \
         <label>Class <select name=\"class\"><option value=\"\">any</option><option{}>permanent</option>\
         <option{}>exhausted</option><option{}>expired</option></select></label> \
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"1h or 2026-11-30T08:00:00Z\"></label> \
         <label>Until <input name=\"until\" value=\"{}\"></label> <button type=\"submit\">Filter</button></form>{}\
         <p>{total} dead letter(s) match.</p>",
        esc(filter.sink.as_deref().unwrap_or_default()),
        esc(filter.route.as_deref().unwrap_or_default()),
        sel("permanent"),
        sel("exhausted"),
        sel("expired"),
        esc(&ms_text(filter.since_ms)),
        esc(&ms_text(filter.until_ms)),
        problems
            .iter()
            .map(|p| format!("<p class=\"error\">{}</p>", esc(p)))
            .collect::<String>(),
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/dead-letters/replay\">{}{}\
         <table><tr><th><input type=\"checkbox\" disabled></th><th>id</th><th>sink</th><th>route</th><th>class</th>\
         <th>attempts</th><th>last error</th><th>at</th><th>event</th></tr>",
        csrf_field(&s),
        filter_fields(&filter)
    );
    for d in &items {
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{id}\"></td><td>{id}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/console/events?q={}\">{}</a></td></tr>",
            esc(&d.sink),
            esc(&d.route),
            esc(&d.class),
            d.attempts,
            esc(&d.last_error),
            esc(&d.dead_lettered_at),
            esc(&d.event_id),
            esc(&d.event_id),
            id = d.id,
        );
    }
    body.push_str(
        "</table><button type=\"submit\">Replay selected (or all matching)…</button></form>",
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/dead-letters/purge\">{}{}<button type=\"submit\">\
         Purge all matching…</button></form>",
        csrf_field(&s),
        filter_fields(&filter)
    );
    page_response(
        StatusCode::OK,
        &layout("Dead letters", Some(("/console/dead-letters", &s)), &body),
    )
}

/// The filter and selection a replay or purge form posted.
/// A filter whose time bound does not parse is refused: acting on all matching without the
/// bound would touch more than the operator chose.
fn posted(body: &[u8]) -> Result<(DeadLetterFilter, bool), String> {
    let class = form_value(body, "class");
    let (since, until) = (form_value(body, "since"), form_value(body, "until"));
    let mut problems = Vec::new();
    let mut f = filter_of(
        form_value(body, "sink"),
        form_value(body, "route"),
        class.as_deref(),
        since.as_deref(),
        until.as_deref(),
        &mut problems,
    );
    f.ids = form_urlencoded::parse(body)
        .filter(|(k, _)| k == "id")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((f, form_value(body, "confirm").as_deref() == Some("yes")))
}

fn confirm_page(s: &Session, action: &str, what: &str, n: u64, f: &DeadLetterFilter) -> Response {
    let ids: String = f
        .ids
        .iter()
        .map(|id| format!("<input type=\"hidden\" name=\"id\" value=\"{id}\">"))
        .collect();
    let body = format!(
        "<p id=\"dry-run\">{what} <strong>{n}</strong> dead letter(s).</p>\
         <form method=\"post\" action=\"/console/dead-letters/{action}\">{}{}{ids}\
         <input type=\"hidden\" name=\"confirm\" value=\"yes\"><button type=\"submit\">Confirm</button> \
         <a href=\"/console/dead-letters\">Cancel</a></form>",
        csrf_field(s),
        filter_fields(f)
    );
    page_response(
        StatusCode::OK,
        &layout("Dead letters", Some(("/console/dead-letters", s)), &body),
    )
}

fn done_page(s: &Session, what: &str) -> Response {
    let body = format!(
        "<p class=\"ok\" id=\"done\">{}</p><p><a href=\"/console/dead-letters\">Back</a></p>",
        esc(what)
    );
    page_response(
        StatusCode::OK,
        &layout("Dead letters", Some(("/console/dead-letters", s)), &body),
    )
}

fn refused_form(s: &Session, why: &str) -> Response {
    page_response(
        StatusCode::BAD_REQUEST,
        &layout(
            "Dead letters",
            Some(("/console/dead-letters", s)),
            &format!("<p class=\"error\">Nothing was done: {}</p>", esc(why)),
        ),
    )
}

/// `POST /console/dead-letters/replay`: first a dry-run count to confirm, then the replay.
pub(super) async fn replay(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Response {
    let (filter, confirmed) = match posted(&body) {
        Ok(p) => p,
        Err(why) => return refused_form(&s, &why),
    };
    match state.store.replay(&filter, !confirmed).await {
        Err(e) => unavailable("Dead letters", "/console/dead-letters", &s, e),
        Ok(n) if !confirmed => confirm_page(&s, "replay", "This replays", n, &filter),
        Ok(n) => {
            if n > 0 {
                state
                    .audit
                    .write(&crate::telemetry::audit::AuditLine::replayed(n));
                state.deliverer.wake();
            }
            tracing::info!(replayed = n, "dead letters replayed from the console");
            done_page(&s, &format!("Replayed {n} dead letter(s)."))
        }
    }
}

/// `POST /console/dead-letters/purge`: a count to confirm, then the purge.
pub(super) async fn purge(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Response {
    let (filter, confirmed) = match posted(&body) {
        Ok(p) => p,
        Err(why) => return refused_form(&s, &why),
    };
    if !confirmed {
        return match state.store.dead_letters(&filter, 0).await {
            Ok((total, _)) => confirm_page(&s, "purge", "This deletes, for good,", total, &filter),
            Err(e) => unavailable("Dead letters", "/console/dead-letters", &s, e),
        };
    }
    match state.store.purge(&filter).await {
        Ok(n) => {
            tracing::info!(purged = n, "dead letters purged from the console");
            done_page(&s, &format!("Purged {n} dead letter(s)."))
        }
        Err(e) => unavailable("Dead letters", "/console/dead-letters", &s, e),
    }
}

/// `GET /console/configuration`: the effective configuration (secrets masked) and which
/// secret of each rotation set matched lately.
pub(super) async fn configuration(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Extension(console): Extension<Arc<Console>>,
) -> Response {
    let mut body = String::from(
        "<h2>Secrets matched</h2><p class=\"muted\">Per route, when each secret last matched on this \
         replica since it started: a secret of a rotation set that has not matched for long while \
         another has can be removed.</p><table><tr><th>route</th><th>secret</th><th>last matched</th></tr>",
    );
    for (route, signals) in state.signals.routes() {
        for (label, at) in signals.secrets() {
            let when = at.map_or_else(
                || "not since the start".to_string(),
                |ms| {
                    crate::format_rfc3339(
                        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                    )
                },
            );
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&route),
                esc(&label),
                esc(&when)
            );
        }
    }
    let _ = write!(
        body,
        "</table><h2>Effective configuration</h2><pre>{}</pre>",
        esc(&console.config_text)
    );
    page_response(
        StatusCode::OK,
        &layout("Configuration", Some(("/console/configuration", &s)), &body),
    )
}
