//! Telemetry: operational logs (tracing, on stderr), Prometheus metrics (names in
//! [`metrics`]), the audit log (one JSON line per outcome, [`audit`]) and the in-process
//! request statistics behind `/stats` ([`stats`]) and the per-route signals the alerts read
//! ([`watch`]).
//!
//! Invariant: no log line, metric label or audit line carries message text, entity values,
//! signatures or secrets.

pub mod audit;
pub mod metrics;
pub mod stats;
pub mod throttle;
pub mod watch;

/// Installs the tracing subscriber for operational logs on stderr (stdout is the audit log).
/// `COGNIHOOK_LOG` is the filter (default `info`); `COGNIHOOK_LOG_FORMAT` is `json` or
/// `pretty` (also `text`); unset, logs are human-readable when stderr is a terminal and JSON
/// otherwise. Colour only on a terminal.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("COGNIHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let pretty = match std::env::var("COGNIHOOK_LOG_FORMAT").as_deref() {
        Ok("pretty" | "text") => true,
        Ok("json") => false,
        _ => terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    // A second call (tests) finds a subscriber already set; that is fine.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
