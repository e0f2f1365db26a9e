//! cognihook: a gateway between NICE Cognigy.AI and a team's own backends.
//!
//! # The two paths
//!
//! ```text
//! request path:  listener (http::serve: connection cap, http::conn watchdog for the header,
//!                idle and deadline clocks from the first byte; a POST to a route's literal
//!                path is dispatched by http::Direct, everything else by the axum router)
//!                → http::webhook::handle
//!                → http::admission (in-flight cap, deadline already spent, route rate limit:
//!                  refused before the body is read)
//!                → ingest::auth (raw bytes; a bearer JWT naming an unknown key refetches the
//!                  route's JWKS inline, rate-limited, then is checked once more)
//!                → ingest::payload (decode + validate → NormalisedEvent; a body already in
//!                  serde_json's own form (json::is_canonical) is read by ingest::payload::fast
//!                  without a JSON tree when its kind has a reader there, and is stored as it
//!                  came: event::Payload parses the tree only if a rule or redaction asks)
//!                → ingest::rules (CEL rules, extracts; the common shapes read straight off
//!                  the event by expr::direct, the rest by the CEL interpreter)
//!                → store::Store::accept_boxed (event, session state, idempotency record, one
//!                  outbox row per sink, decided by store::decide: committed together,
//!                  group-committed)
//!                → response (SPEC §5), audit line, metrics; raises load::IngestLoad and wakes
//!                  the delivery worker; a `respond` route calls delivery::respond
//! token path:    POST /oauth/token → http::oauth → ingest::auth::oauth2::TokenIssuer (client
//!                credentials; HS256 JWTs that `oauth2` routes verify in ingest::auth::bearer)
//! delivery path: delivery::worker::Deliverer::tick (paced by delivery::pace from load)
//!                → delivery::sink::SinkRuntime::admit (pause, slots, breaker, rate bucket)
//!                → Store::claim (due rows for the free slots and SinkRuntime::ahead, with a
//!                  lease; on the embedded store an unordered sink's newest rows come from
//!                  memory, store::sqlite::fresh, the rest from the database)
//!                → SinkRuntime::attempt → sinks::Sink::send (http, cognigy, nats, amqp,
//!                  redis, file), or with an http sink's `batch` SinkRuntime::take_sends →
//!                  attempt_batch → Sink::send_batch (one JSON array, settled per row); the
//!                  outcome classified by delivery::retry
//!                → delivery::settle (batched Store::settle_many: delivered | retry at T |
//!                  dead letter), then metrics and the audit line
//! traces:        telemetry::trace (off unless an OTLP endpoint is set): http::webhook opens
//!                the request span (continuing `traceparent`), ingest::Route::prepare_marked
//!                times auth/decode/rules, the commit is timed around Store::accept_boxed; each
//!                delivery attempt's span is made by delivery::worker::Deliverer and ended
//!                in SinkRuntime::attempt, linked to the request span through the event's
//!                `traceparent`; sinks send the attempt's `traceparent` on
//! API document:  http::openapi (`cognihook openapi`, docs/openapi.json): the fixed endpoints
//!                from `#[utoipa::path]` on their handlers, one operation per configured route
//!                from its settings (ingest::payload's `request_schema`, its auth scheme)
//! alert path:    alerts::Alerts::look_at (every alerts.interval) reads the store's readiness
//!                and outbox ages, each sink's circuit and dead letters, each route's
//!                refused credentials and matched secrets (telemetry::watch, which ingest
//!                only counts into) → alerts::monitor::Monitor (debounce) → an event of the
//!                route `_alerts` with one outbox row per target (sink `alert:NAME`, rendered
//!                by sinks::alert); a store outage is sent straight to the targets
//! ```
//!
//! Settings reach each component typed: `config` parses the file over `defaults.toml` and
//! checks cross-references; each component checks its own tables when it is built and gets
//! a per-kind value: `delivery::spec::SinkSpec::check` (with `sinks::spec::check` for the
//! kind's `Target`), `ingest::auth::spec::AuthSpec::check`, `ingest::payload::PayloadDecoder::build`
//! and `store::check` (the `[store]` URL). `app::Wiring::build` runs them all for `serve` and
//! `check-config`, and every problem is reported at once.
//!
//! # Who owns which background task
//!
//! - `app::App::run` owns the listeners (public and optional admin; `http::serve` owns one
//!   task per connection, drained on shutdown), the shutdown flag task, the delivery thread
//!   and the shutdown sequence: stop accepting and claiming, drain in-flight requests and
//!   sends within the grace period, then close the store and flush the audit log.
//! - The delivery thread (`cognihook-delivery`, started by `app`, niced) runs
//!   `delivery::worker::Deliverer::run` on a runtime of its own; the worker's tracker owns one
//!   task per send and per `respond` call; a rate-limited sink gets a one-shot timer task
//!   that wakes the worker when its bucket refills.
//! - `store::sqlite` (the embedded store) owns three OS threads: the *sequencer* (thread name
//!   `cognihook-writer`), which decides acceptances (keeping the recent sessions' versions
//!   in memory; each event's JSON comes written by the request's thread, its version put in) and commits them to the log with one fdatasync per group, and hands each group's outbox rows to the delivery path in memory
//!   (`store::sqlite::fresh`, bounded per sink); the *projector*, which holds the only database write connection and
//!   applies log records and the delivery path's jobs in large transactions (each event's
//!   row through SQLite's C interface without copying its values, up to 16 rows a statement
//!   prepared once for the connection, `store::sqlite::raw`; its body appended to a file beside
//!   the database, `store::sqlite::bodies`, the row keeping its place; an event with no `respond`
//!   row has no row: its whole record (packed: `store::sqlite::record`) goes there and one row of `event_runs` names the places
//!   of up to 64 such events, `store::sqlite::beside`); the sessions
//!   table written behind, each changed session once a second: `project::Behind`; the idempotency
//!   keys go to sorted runs beside the database, `store::sqlite::keys::runs`, written by the
//!   projector and merged by a thread of their own, `cognihook-keys-merge`; a store made
//!   before schema 14 also has an LSM tree there (generations written before schema 13 are
//!   read until they expire; an open removes it once it holds none), whose `fjall` keyspace
//!   runs one flush and one compaction thread; a store made since has none; a new key is usually known to
//!   be new from `keys::filter`, without a look-up in the runs; work that grows with the store
//!   reaches it in bounded pieces: pruning in passes of 2,000 events (`project::maintain`), a
//!   forget's (read 50,000 rows a statement) and a dead-letter replay's or purge's rows found by a read first and then
//!   changed a few hundred or thousand a job; each statement reads by rowid or by an index
//!   of the schema, and `store::sqlite::planner` reports one that has SQLite index a whole
//!   table for itself); and the *checkpointer*, which
//!   copies the WAL into the database file, flushes the keys and the bodies' files, removes
//!   the bodies' files retention has emptied, removes log segments all have made durable (or keeps one as the log's next segment) and zero-fills a spare
//!   segment when none is coming (`store::sqlite::log::Spare`). The checkpointer, the merge thread and the keyspace's threads run at
//!   `store.background_nice` (`priority`); the sequencer and the projector do not. The sequencer
//!   and the async workers ask for short time slices (`priority::shorten_slice`); the threads
//!   they start do not inherit them.
//!   A settlement's reply is awaited by a short task that logs a failure.
//! - `store::postgres` owns its writer tasks (commit groups), the maintenance task (expiry
//!   every 30 s, in statements of 5,000 rows until none is left; the events walked by id,
//!   5,000 at a time, from where the last cycle ended) and the LISTEN loop (`PgStore::listen`, wakes the workers on other
//!   replicas' commits); `close` ends all three.
//! - `app::App::run` also owns the alerts task (`alerts::Alerts::run`, when `[alerts]` has
//!   targets; a store alert's direct sends are short tasks of their own) and the metrics
//!   task: every `telemetry::metrics::UPKEEP_EVERY` it drains the histograms' recorded
//!   values into their buckets (the recorder holds each value until then), and every 10 s
//!   it samples the console overview's history (`http::console::Console::sample`).
//! - `telemetry::audit` owns one OS thread that drains buffered audit lines to their output
//!   and keeps the mark of how far they are written (`app` recovers lost lines from it at start).
//!
//! Nothing else runs in the background.
//!
//! # Layers
//!
//! Imports point one way: `cli` → `app` → `http`, `alerts`, `delivery` → `ingest`, `store`, `sinks` →
//! `config` → the leaves `error` (causes kept with errors), `event` (the normalised event),
//! `event_id` (event ids: ULIDs whose first 63 bits never repeat in a process, the embedded
//! store's rowids),
//! `secret` (secret references and values that print masked, and `EnvSource`), `expr` (CEL
//! over the event; `expr::direct` evaluates simple shapes without the CEL map), `rate` (token buckets, used by admission and by sinks), `duration`
//! (human durations in settings), `clock` (stored times and schedules: wall-clock time that
//! never runs backwards), `seal` (event bodies encrypted at rest, opened by the stores),
//! `priority` (thread niceness: delivery and the store's background threads; short time
//! slices for the async workers and the store's writer), `writeback` (appended files whose
//! write-back starts every 256 KiB, so the disk gets a stream and not bursts: the bodies'
//! files and the audit log), `json` (JSON
//! written by hand on the ingest path: the stored event, the audit line, the answer; byte for
//! byte what serde_json writes) and
//! `load` (ingest's load gauge: HTTP raises it, delivery reads it). Store and sinks never
//! import `ingest` or `delivery`; `config` imports only the leaves. `FastMap` (here) is the
//! hash map for maps a request touches.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod duration;
pub mod error;
pub mod event;
pub mod event_id;
pub mod expr;
pub mod http;
pub mod ingest;
pub mod json;
pub mod load;
pub mod priority;
pub mod rate;
pub mod seal;
pub mod secret;
pub mod sinks;
pub mod store;
pub mod telemetry;
pub mod writeback;

/// A hash map for the maps every request touches (the sequencer's hot answers and spent
/// signatures, the sessions the projector holds behind, the per-route metric handles):
/// foldhash instead of the standard SipHash, which was ~3 % of a request's instructions
/// (bench/README.md, twenty-second session). Seeded at random per process like the standard
/// one; its resistance to crafted collisions is weaker than SipHash's, and the keys are
/// only ever ones a signed request sent.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Current wall-clock time as an RFC 3339 string (UTC, millisecond precision):
/// [`rfc3339_at`] of a reading of `now_millis`.
pub fn now_rfc3339() -> String {
    rfc3339_at(clock::now_millis())
}

/// A reading of `now_millis` as an RFC 3339 string (UTC, millisecond precision).
///
/// A request formats two (the event's receipt, which its answer repeats, and the audit
/// line), mostly within one millisecond: each thread keeps the last millisecond it formatted
/// (bench/README.md, seventeenth session).
pub fn rfc3339_at(ms: i64) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms {
            *text = format_rfc3339(clock::at_millis(ms));
            *at = ms;
        }
        text.clone()
    })
}

/// Formats a timestamp as RFC 3339 in UTC with millisecond precision.
///
/// Written digit by digit: every request formats two or three of these, and through
/// `format!` they were 1.5 % of the gateway's CPU at full speed (bench/README.md, thirteenth
/// session).
pub fn format_rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Four digits cover every year a clock gives; any other is left to `format!`.
    let year = match u16::try_from(t.year()) {
        Ok(year) if year <= 9999 => year,
        _ => {
            return format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        }
    };
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u16| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u16::from(u8::from(t.month())));
    put(8, 2, u16::from(t.day()));
    put(11, 2, u16::from(t.hour()));
    put(14, 2, u16::from(t.minute()));
    put(17, 2, u16::from(t.second()));
    put(20, 3, t.millisecond());
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// A correlation id for a request that brought none: a UUID version 7, whose leading bits are
/// the time (ids that sort by time are cheaper in any index: the PostgreSQL store's B-tree
/// takes them at its end; bench/README.md, tenth session).
pub fn new_correlation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Current Unix time in milliseconds, from `clock` (never runs backwards).
pub fn now_millis() -> i64 {
    clock::now_millis()
}

/// This process's name in delivery attempts (`host:pid`), so admin views show which replica
/// made each attempt.
pub fn replica_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        format!("{host}:{}", std::process::id())
    })
}

/// An error followed by its causes, each once: some errors (a failed TLS handshake, a pool
/// that could not connect) say why only in their sources.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_formatted_time_follows_the_clock_from_one_millisecond_to_the_next() {
        let ms_of = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .expect("RFC 3339")
        };
        let before = super::now_millis();
        let first = super::now_rfc3339();
        let after = super::now_millis();
        let at = ms_of(&first);
        assert!(
            before <= at && at <= after,
            "{before} <= {first} <= {after}"
        );
        assert!(super::now_rfc3339() >= first);
        // Once the clock has moved on, the next reading is formatted anew.
        while super::now_millis() <= at {
            std::hint::spin_loop();
        }
        let next = super::now_rfc3339();
        assert!(ms_of(&next) > at, "{first} then {next}");
        assert_eq!(
            next,
            super::format_rfc3339(super::clock::at_millis(ms_of(&next)))
        );
    }

    #[test]
    fn generated_correlation_ids_are_uuid_v7_in_time_order() {
        let a = super::new_correlation_id();
        // A later millisecond: the id's leading bits are its time.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_correlation_id();
        for id in [&a, &b] {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 7, "{id}");
        }
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc_with_milliseconds() {
        use time::macros::datetime;
        for (t, want) in [
            (
                datetime!(2026-12-01 20:05:09.007 UTC),
                "2026-12-01T20:05:09.007Z",
            ),
            (
                datetime!(2026-12-01 23:59:59.999 -01:00),
                "2026-12-02T00:59:59.999Z",
            ),
            (
                datetime!(0001-01-01 00:00:00 UTC),
                "0001-01-01T00:00:00.000Z",
            ),
            (
                datetime!(9999-12-31 23:59:59.5 UTC),
                "9999-12-31T23:59:59.500Z",
            ),
        ] {
            assert_eq!(super::format_rfc3339(t), want);
            // The same instant as the time crate's own RFC 3339.
            let back =
                time::OffsetDateTime::parse(want, &time::format_description::well_known::Rfc3339)
                    .expect("parses");
            assert_eq!(back, t);
        }
    }
}
