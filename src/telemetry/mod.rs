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
pub mod trace;
pub mod watch;

/// The log filter when `COGNIHOOK_LOG` is unset (see [`init_logging`]).
const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Installs the tracing subscriber for operational logs on stderr (stdout is the audit log).
/// `COGNIHOOK_LOG` is the filter (default `info`, with the libraries of the embedded store's
/// idempotency keys, `fjall` and `lsm_tree`, at `warn`: they log every partition they open at
/// `info`); `COGNIHOOK_LOG_FORMAT` is `json` or
/// `pretty` (also `text`); unset, logs are human-readable when stderr is a terminal and JSON
/// otherwise. Colour only on a terminal.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("COGNIHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let terminal = std::io::stderr().is_terminal();
    let pretty = match std::env::var("COGNIHOOK_LOG_FORMAT").as_deref() {
        Ok("pretty" | "text") => true,
        Ok("json") => false,
        _ => terminal,
    };
    // A second call (tests) finds a subscriber already set; that is fine.
    let _ = if pretty {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(terminal)
            .with_writer(std::io::stderr)
            .try_init()
    } else {
        // `try_init` also forwards the `log` records of dependencies, as the pretty branch does.
        tracing_subscriber::util::SubscriberInitExt::try_init(json_logs(filter, std::io::stderr))
            .map_err(Into::into)
    };
}

/// The JSON log format: one object per line, the event's fields at the top level and the
/// fields of the spans it happened in (a request's `trace_id` and `span_id` when tracing is
/// on) under `span` and `spans`.
pub fn json_logs<W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .finish()
}
