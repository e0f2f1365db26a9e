//! Metric names (SPEC §9.1) as constants, and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "cognihook_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "cognihook_request_duration_seconds";
pub const SIGNATURE_CHECKS_TOTAL: &str = "cognihook_signature_checks_total";
pub const EVENTS_COMMITTED_TOTAL: &str = "cognihook_events_committed_total";
pub const DUPLICATES_TOTAL: &str = "cognihook_duplicates_total";
pub const OUTBOX_PENDING: &str = "cognihook_outbox_pending";
pub const DEAD_LETTERS: &str = "cognihook_dead_letters";

/// Request latency buckets, in seconds: fine below Cognigy's 8 s deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0,
];

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
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
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
        DUPLICATES_TOTAL,
        "Duplicate requests answered from the idempotency record"
    );
    metrics::describe_gauge!(OUTBOX_PENDING, "Outbox rows not yet delivered");
    metrics::describe_gauge!(DEAD_LETTERS, "Dead letters kept");
}
