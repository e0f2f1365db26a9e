//! Telemetry: operational logs (tracing, on stderr), Prometheus metrics (names in
//! [`metrics`]), the audit log (one JSON line per outcome, [`audit`]) and the in-process
//! request statistics behind `/stats` ([`stats`]).
//!
//! Invariant: no log line, metric label or audit line carries message text, entity values,
//! signatures or secrets.

pub mod audit;
pub mod metrics;
pub mod stats;
pub mod throttle;

/// Installs the tracing subscriber for operational logs on stderr (stdout is the audit log).
/// `COGNIHOOK_LOG` is the filter (default `info`); `COGNIHOOK_LOG_FORMAT` is `json` (default)
/// or `pretty`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COGNIHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let pretty = std::env::var("COGNIHOOK_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) finds a subscriber already set; that is fine.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
