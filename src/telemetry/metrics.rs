//! Metric names (SPEC §9.1) as constants, and the process-wide Prometheus recorder.

use parking_lot::Mutex;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "cognihook_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "cognihook_request_duration_seconds";
pub const SIGNATURE_CHECKS_TOTAL: &str = "cognihook_signature_checks_total";
pub const EVENTS_COMMITTED_TOTAL: &str = "cognihook_events_committed_total";
pub const DUPLICATES_TOTAL: &str = "cognihook_duplicates_total";
pub const DELIVERIES_TOTAL: &str = "cognihook_deliveries_total";
pub const DELIVERY_DURATION_SECONDS: &str = "cognihook_delivery_duration_seconds";
pub const DELIVERY_LAG_SECONDS: &str = "cognihook_delivery_lag_seconds";
pub const OUTBOX_PENDING: &str = "cognihook_outbox_pending";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "cognihook_outbox_oldest_age_seconds";
pub const DEAD_LETTERS: &str = "cognihook_dead_letters";
pub const CIRCUIT_STATE: &str = "cognihook_circuit_state";
pub const CONNECTIONS_OPEN: &str = "cognihook_connections_open";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "cognihook_connections_refused_total";
pub const CONNECTIONS_TIMED_OUT_TOTAL: &str = "cognihook_connections_timed_out_total";
pub const ADMIN_AUTH_FAILURES_TOTAL: &str = "cognihook_admin_auth_failures_total";
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "cognihook_audit_write_failures_total";
pub const AUDIT_LINES_DROPPED_TOTAL: &str = "cognihook_audit_lines_dropped_total";
pub const AUDIT_LINES_RECOVERED_TOTAL: &str = "cognihook_audit_lines_recovered_total";
pub const OAUTH2_TOKENS_TOTAL: &str = "cognihook_oauth2_tokens_total";

/// Request latency buckets, in seconds: fine below Cognigy's 8 s deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0,
];

/// Acceptance to delivery: milliseconds when deliveries keep pace, up to minutes when a
/// backlog builds (an alert on `outbox_age` or on this histogram's high buckets fires then).
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// How often `app::App::run` drains the histograms' recorded values into their buckets
/// (`PrometheusHandle::run_upkeep`). The recorder keeps every value recorded since the last
/// drain (8 bytes each, up to three per request with a sink), and only a drain or a render
/// frees them: with the console's sample every 10 s as the only render, they were a third
/// of a ~9 MB swing in the live heap at 27k req/s with a sink, and without any render they
/// would have grown with every request (jemalloc's heap profile; peak RSS 1.6–5.2 MiB lower
/// with the drain: bench/README.md, forty-second session). A drain is the same work a render
/// would do later, in smaller pieces.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION_SECONDS.to_string()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DELIVERY_DURATION_SECONDS.to_string()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DELIVERY_LAG_SECONDS.to_string()),
                        LAG_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            // Process-wide counters exist from the start at 0, so an alert on their increase
            // (deploy/prometheus) has a series to read before the first failure.
            for name in [
                AUDIT_WRITE_FAILURES_TOTAL,
                AUDIT_LINES_DROPPED_TOTAL,
                CONNECTIONS_REFUSED_TOTAL,
                CONNECTIONS_TIMED_OUT_TOTAL,
                ADMIN_AUTH_FAILURES_TOTAL,
            ] {
                metrics::counter!(name).increment(0);
            }
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Webhook requests answered, by route, status and code"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from request start to response, by route"
    );
    metrics::describe_counter!(
        SIGNATURE_CHECKS_TOTAL,
        "Signature checks by route, result and which secret matched"
    );
    metrics::describe_counter!(EVENTS_COMMITTED_TOTAL, "Events durably committed, by route");
    metrics::describe_counter!(
        OAUTH2_TOKENS_TOTAL,
        "Token requests at /oauth/token, by outcome (issued or the RFC 6749 error)"
    );
    metrics::describe_counter!(
        DUPLICATES_TOTAL,
        "Duplicate requests answered from the idempotency record"
    );
    metrics::describe_counter!(
        DELIVERIES_TOTAL,
        "Delivery attempts by sink and outcome (delivered, retried, dead_lettered)"
    );
    metrics::describe_histogram!(
        DELIVERY_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time one delivery attempt took, by sink"
    );
    metrics::describe_histogram!(
        DELIVERY_LAG_SECONDS,
        metrics::Unit::Seconds,
        "Time from an event's acceptance to its delivery, by sink"
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Open client connections, by listener");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at once because max_connections were open, by listener"
    );
    metrics::describe_counter!(
        CONNECTIONS_TIMED_OUT_TOTAL,
        "Connections closed by header_read_timeout (phase=head) or idle_timeout (phase=idle)"
    );
    metrics::describe_counter!(
        ADMIN_AUTH_FAILURES_TOTAL,
        "Admin requests refused for their bearer token, by reason (missing_token, wrong_token)"
    );
    metrics::describe_counter!(
        AUDIT_WRITE_FAILURES_TOTAL,
        "Writes of audit lines that failed (the lines are kept and tried again)"
    );
    metrics::describe_counter!(
        AUDIT_LINES_DROPPED_TOTAL,
        "Audit lines dropped because output kept failing past the buffer's bound"
    );
    metrics::describe_counter!(
        AUDIT_LINES_RECOVERED_TOTAL,
        "Audit lines of committed events written again from the store after a crash"
    );
    metrics::describe_gauge!(OUTBOX_PENDING, "Outbox rows not yet delivered, by sink");
    metrics::describe_gauge!(
        OUTBOX_OLDEST_AGE_SECONDS,
        "Age of the oldest undelivered outbox row, by sink"
    );
    metrics::describe_gauge!(DEAD_LETTERS, "Dead letters kept, by sink");
    metrics::describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state by sink: 0 closed, 1 half-open, 2 open"
    );
}

/// The metric handles of one route, resolved once so that a request allocates no labels and
/// looks nothing up in the registry except the first time a (status, code) pair is seen.
pub struct RouteMetrics {
    route: String,
    duration: metrics::Histogram,
    committed: metrics::Counter,
    duplicates: metrics::Counter,
    signature_missing: metrics::Counter,
    signature_invalid: metrics::Counter,
    signature_stale: metrics::Counter,
    signature_replayed: metrics::Counter,
    signature_valid: Mutex<crate::FastMap<String, metrics::Counter>>,
    requests: Mutex<crate::FastMap<(u16, &'static str), metrics::Counter>>,
    /// What the alerts read: refused credentials, and when each secret last matched.
    signals: Option<std::sync::Arc<super::watch::RouteSignals>>,
}

impl RouteMetrics {
    /// `signals`: where refusals and matched secrets are also counted for the alerts
    /// (none on the simulator, which authenticates nothing).
    pub fn new(
        route: &str,
        signals: Option<std::sync::Arc<super::watch::RouteSignals>>,
    ) -> RouteMetrics {
        let r = route.to_string();
        let sig = |result: &'static str| metrics::counter!(SIGNATURE_CHECKS_TOTAL, "route" => r.clone(), "result" => result, "secret" => "");
        RouteMetrics {
            duration: metrics::histogram!(REQUEST_DURATION_SECONDS, "route" => r.clone()),
            committed: metrics::counter!(EVENTS_COMMITTED_TOTAL, "route" => r.clone()),
            duplicates: metrics::counter!(DUPLICATES_TOTAL, "route" => r.clone()),
            signature_missing: sig("missing"),
            signature_invalid: sig("invalid"),
            signature_stale: sig("stale"),
            signature_replayed: sig("replayed"),
            signature_valid: Mutex::default(),
            requests: Mutex::default(),
            signals,
            route: r,
        }
    }

    /// One answered request.
    pub fn request(&self, status: u16, code: &'static str, seconds: f64) {
        self.duration.record(seconds);
        {
            let mut m = self.requests.lock();
            m.entry((status, code))
                .or_insert_with(|| {
                    metrics::counter!(REQUESTS_TOTAL, "route" => self.route.clone(),
                        "status" => status.to_string(), "code" => code)
                })
                .increment(1);
        }
    }

    pub fn committed(&self) {
        self.committed.increment(1);
    }

    pub fn duplicate(&self) {
        self.duplicates.increment(1);
    }

    /// A signature check at `now_ms` (Unix ms); `secret` is the label of the secret that
    /// matched, if any.
    pub fn signature(&self, result: SignatureResult, secret: Option<&str>, now_ms: i64) {
        if let Some(s) = &self.signals {
            match (result, secret) {
                (SignatureResult::Valid, Some(label)) => s.matched(label, now_ms),
                (SignatureResult::Valid, None) => {}
                _ => s.refused(),
            }
        }
        match (result, secret) {
            (SignatureResult::Valid, Some(label)) => {
                let mut m = self.signature_valid.lock();
                match m.get(label) {
                    Some(c) => c.increment(1),
                    None => {
                        let c = metrics::counter!(SIGNATURE_CHECKS_TOTAL,
                                "route" => self.route.clone(), "result" => "valid",
                                "secret" => label.to_string());
                        c.increment(1);
                        m.insert(label.to_string(), c);
                    }
                }
            }
            (SignatureResult::Valid, None) => {}
            (SignatureResult::Missing, _) => self.signature_missing.increment(1),
            (SignatureResult::Invalid, _) => self.signature_invalid.increment(1),
            (SignatureResult::Stale, _) => self.signature_stale.increment(1),
            (SignatureResult::Replayed, _) => self.signature_replayed.increment(1),
        }
    }
}

/// The `result` label of `cognihook_signature_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureResult {
    Valid,
    Missing,
    Invalid,
    Stale,
    Replayed,
}

/// The metric handles of one sink.
pub struct SinkMetrics {
    pub delivered: metrics::Counter,
    pub retried: metrics::Counter,
    pub dead_lettered: metrics::Counter,
    pub duration: metrics::Histogram,
    pub lag: metrics::Histogram,
    pub pending: metrics::Gauge,
    pub oldest_age: metrics::Gauge,
    pub dead_letters: metrics::Gauge,
    pub circuit: metrics::Gauge,
}

impl SinkMetrics {
    pub fn new(sink: &str) -> SinkMetrics {
        let s = sink.to_string();
        let outcome = |o: &'static str| metrics::counter!(DELIVERIES_TOTAL, "sink" => s.clone(), "outcome" => o);
        SinkMetrics {
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            duration: metrics::histogram!(DELIVERY_DURATION_SECONDS, "sink" => s.clone()),
            lag: metrics::histogram!(DELIVERY_LAG_SECONDS, "sink" => s.clone()),
            pending: metrics::gauge!(OUTBOX_PENDING, "sink" => s.clone()),
            oldest_age: metrics::gauge!(OUTBOX_OLDEST_AGE_SECONDS, "sink" => s.clone()),
            dead_letters: metrics::gauge!(DEAD_LETTERS, "sink" => s.clone()),
            circuit: metrics::gauge!(CIRCUIT_STATE, "sink" => s),
        }
    }
}
