//! The store: where accepted events, session state, idempotency records and outbox rows live.
//!
//! Invariant (SPEC §6): [`Store::accept`] returns `Committed` only after the event, the
//! session-state change, the idempotency record and one outbox row per sink are committed in
//! one transaction and (with `sync = "full"`) flushed to disk. A duplicate changes nothing and
//! gets the original answer back. `Store` is an enum over backends: the embedded store
//! (`sqlite`: a log with a SQLite projection) and PostgreSQL (`postgres`). The decisions an
//! acceptance makes live in `decide`, which both call.

pub mod decide;
pub mod pg_conn;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Backend, StoreConfig};
use crate::event::NormalisedEvent;

/// One event to commit.
#[derive(Debug)]
pub struct Acceptance {
    pub idempotency_key: String,
    /// The event; its `state_version` is set by the store.
    pub event: NormalisedEvent,
    /// The success body to answer with, rendered with the session's `stateVersion`; the
    /// store keeps the result for duplicates.
    pub answer: decide::Answer,
    /// One outbox row is written per sink.
    pub sinks: Vec<String>,
    /// A response larger than this is refused (nothing is committed).
    pub max_response_bytes: usize,
    /// A signature to spend with this event; one already spent refuses the event.
    pub spend: Option<crate::event::SpentSignature>,
    /// The status stored with the answer for duplicates (200, or 202 on a `respond` route
    /// until the upstream's answer replaces it).
    pub status: u16,
    /// A `respond.upstream` row, inserted already claimed by this process so the request can
    /// make the first attempt itself.
    pub respond: Option<RespondHold>,
}

/// The upstream row of a `respond` route (SPEC §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespondHold {
    pub sink: String,
    /// Where a late result goes; `None` = nowhere (it is only recorded).
    pub on_late: Option<String>,
    /// How long the request's own claim on the row lasts.
    pub lease_ms: i64,
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Committed now; `body` is the response to send. `held` is the `respond.upstream` row,
    /// claimed for the request.
    Committed {
        state_version: u64,
        body: Bytes,
        held: Option<Box<Claimed>>,
        /// Acceptances committed in the same group (with one flush), this one included.
        group: u32,
    },
    /// Seen before inside the idempotency window: the original answer, nothing changed.
    Duplicate {
        status: u16,
        body: Bytes,
        correlation_id: String,
    },
    /// The request's signature was already used (a replay): nothing changed.
    SignatureReplayed,
}

pub use crate::error::Cause;

/// Why `accept` could not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store is overloaded: {0} acceptances are waiting")]
    Overloaded(usize),
    #[error("store is unavailable: {0}")]
    Unavailable(#[source] Cause),
    #[error("store is closed")]
    Closed,
    #[error("response of {size} bytes exceeds limits.max_response_bytes ({limit})")]
    ResponseTooLarge { size: usize, limit: usize },
    /// The database turned down this event's data (PostgreSQL); the events committed with it
    /// are committed without it.
    #[error("the database refused the event: {0}")]
    Refused(#[source] Cause),
}

/// Why a store could not be opened: refused as it stands (the message says why and what to
/// do), or failed while doing something, with the error that stopped it kept as the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Refused(String),
    #[error("{doing}: {source}")]
    Failed {
        doing: String,
        #[source]
        source: Cause,
    },
}

/// Checks `[store]` as opening the store would (a `postgres://` URL's options, the CA file
/// it names) without opening it: `serve` and `check-config` report it with the rest.
pub fn check(config: &StoreConfig) -> Result<Backend, StoreSettingError> {
    let backend = config.backend()?;
    if let Backend::Postgres(url) = &backend {
        pg_conn::PgTarget::parse(url)?;
    }
    Ok(backend)
}

/// Why `[store]` selects no store that can open.
#[derive(Debug, thiserror::Error)]
pub enum StoreSettingError {
    #[error(transparent)]
    Url(#[from] crate::config::StoreUrlError),
    #[error(transparent)]
    Postgres(#[from] pg_conn::UrlError),
}

/// Why the store cannot take events now (`/readyz`'s `cause`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the store's threads have stopped")]
    Stopped,
    /// The log's last write failed (the recorded reason) and a probe write fails too.
    #[error("{why} (a probe write fails too: {probe})")]
    LogFailing { why: String, probe: Cause },
    /// The database's last write failed (the recorded reason).
    #[error("{0}")]
    DatabaseFailing(String),
    #[error("the database does not answer a read")]
    NoRead,
    #[error("PostgreSQL does not answer, or the commit task has stopped")]
    Postgres,
}

impl OpenError {
    /// Refuses with the message of a typed error that says why and what to do.
    pub fn refused(e: impl std::fmt::Display) -> OpenError {
        OpenError::Refused(e.to_string())
    }

    /// Maps an error met while `doing` something into `Failed`.
    pub fn failed<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        doing: impl Into<String>,
    ) -> impl FnOnce(E) -> OpenError {
        let doing = doing.into();
        move |e| OpenError::Failed {
            doing,
            source: Cause::new(e),
        }
    }
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> String {
        e.to_string()
    }
}

impl StoreError {
    /// `Unavailable`, caused by `e` (an error, kept with its causes, or a message).
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Unavailable(Cause::new(e))
    }
}

/// An event and what happened to it, for `events show` and `/admin/events/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Journey {
    /// The normalised event as stored.
    #[schema(value_type = Object)]
    pub event: Value,
    #[serde(rename = "committedAt")]
    pub committed_at: String,
    pub deliveries: Vec<Delivery>,
}

/// One event of a session's timeline (newest first), for the console.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub event_id: String,
    pub correlation_id: String,
    pub route: String,
    pub event_type: String,
    pub state_version: u64,
    pub committed_at: String,
    /// (sink, status) of each of its outbox rows.
    pub deliveries: Vec<(String, String)>,
    /// The answer given (status and body), while it is kept: the idempotency window (on the
    /// embedded store up to an hour longer, see docs/scale-out.md).
    pub answer: Option<(u16, Bytes)>,
}

/// The delivery of one event to one sink.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub sink: String,
    pub status: String,
    pub attempts: Vec<Attempt>,
}

/// One attempt (or replay) in a delivery's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub at: String,
    /// `delivered`, `retry`, `dead_lettered` or `replayed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Which gateway process made the attempt (`host:pid`).
    pub replica: String,
}

/// An outbox row claimed for delivery, with what the sink needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub outbox_id: i64,
    /// Identifies this claim; a settlement applies only while the claim still holds the row.
    pub lease_token: String,
    pub sink: String,
    pub event_id: String,
    pub correlation_id: String,
    pub route: String,
    pub session_id: String,
    pub event_type: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The normalised event as JSON; on an `on_late` row it also carries `upstreamResult`.
    pub body: Bytes,
    /// On a `respond.upstream` row: the `on_late` sink (`Some("")` when there is none).
    pub respond_to: Option<String>,
    /// When the row was written (Unix ms): the event's acceptance, or for an `on_late` row
    /// the upstream's answer. Delivery lag is measured from it.
    pub created_at_ms: i64,
    /// When this claim's lease runs out (Unix ms); a settlement must land before it.
    pub lease_until_ms: i64,
}

impl Claimed {
    /// The `respond.upstream` row an acceptance inserts at `now` already claimed for its
    /// request (both backends): no attempt yet, `respond_to` = the `on_late` sink or "".
    pub(crate) fn held_for_request(
        e: &NormalisedEvent,
        hold: &RespondHold,
        outbox_id: i64,
        lease_token: String,
        body: &str,
        now: i64,
    ) -> Claimed {
        Claimed {
            outbox_id,
            lease_token,
            sink: hold.sink.clone(),
            event_id: e.event_id.clone(),
            correlation_id: e.correlation_id.clone(),
            route: e.route.clone(),
            session_id: e.session_id.clone(),
            event_type: e.event_type.clone(),
            attempts: 0,
            body: Bytes::from(body.to_string()),
            respond_to: Some(hold.on_late.clone().unwrap_or_default()),
            created_at_ms: now,
            lease_until_ms: now + hold.lease_ms,
        }
    }
}

/// Why a delivery was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadReason {
    /// The sink refused the event (4xx, broker rejection): retrying cannot help.
    Permanent,
    /// Transient failures until the retry policy gave up.
    Exhausted,
    /// Older than the sink's `max_age`: not sent (Cognigy has closed the session).
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
            DeadReason::Expired => "expired",
        }
    }

    /// The failure class of the last error.
    pub fn class(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "transient",
            DeadReason::Expired => "expired",
        }
    }
}

/// How a claimed row is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The sink took the event. On a `respond.upstream` row whose request did not wait for
    /// it, `result` is the upstream's answer, handed on to the row's `on_late` sink in the
    /// same transaction.
    Delivered {
        duration_ms: u64,
        result: Option<String>,
    },
    /// A transient failure: try again at `at_ms` (Unix ms).
    Retry {
        at_ms: i64,
        error: String,
        duration_ms: u64,
    },
    /// Give up: the row becomes a dead letter.
    Dead {
        reason: DeadReason,
        error: String,
        duration_ms: u64,
    },
    /// Not attempted (circuit open, paused, shutting down): due again at `at_ms`, no attempt
    /// counted.
    Release { at_ms: i64 },
}

/// Which dead letters an operation applies to. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub ids: Vec<i64>,
    pub sink: Option<String>,
    pub route: Option<String>,
    pub reason: Option<DeadReason>,
    /// Dead-lettered at or after (Unix ms).
    #[serde(skip)]
    pub since_ms: Option<i64>,
    /// Dead-lettered before (Unix ms).
    #[serde(skip)]
    pub until_ms: Option<i64>,
}

/// A dead letter (SPEC §9 admin shape).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: String,
    pub correlation_id: String,
    pub sink: String,
    pub route: String,
    pub class: String,
    pub reason: String,
    pub attempts: u32,
    pub last_error: String,
    pub dead_lettered_at: String,
}

/// Delivery figures of one sink.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkCounts {
    pub sink: String,
    pub pending: u64,
    pub oldest_pending_age_seconds: f64,
    pub dead_letters: u64,
}

/// A committed event as the audit log's recovery writes it again (see `Store::committed_since`).
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub event_id: String,
    pub correlation_id: String,
    pub route: String,
    pub session_id: String,
    pub event_type: String,
    pub state_version: u64,
    pub simulated: bool,
    /// Unix ms.
    pub committed_at: i64,
}

/// What forgetting a session did (`DELETE /admin/sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forgotten {
    pub session_id: String,
    /// Events whose payloads were removed.
    pub events: u64,
    /// Undelivered outbox rows that will not be delivered.
    pub cancelled_deliveries: u64,
}

/// Most events `committed_since` returns (a crash loses far fewer audit lines than this).
pub const MAX_RECOVERED: usize = 1_000_000;

static UNOPENED: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(std::time::Duration::from_secs(60));

/// A stored event body as the journey shows it: opened when sealed, as JSON.
pub(crate) fn event_json(stored: String) -> Value {
    match crate::seal::open(stored) {
        Ok(body) => serde_json::from_str(&body).unwrap_or(Value::String(body)),
        Err(e) => serde_json::json!({ "sealed": true, "error": e.to_string() }),
    }
}

/// A stored event body opened for a delivery; `None` (the row is not claimed: its lease runs
/// out and it is tried again) when it cannot be opened, which is logged: never a sealed body
/// sent to a sink.
pub(crate) fn opened_for_delivery(event_id: &str, stored: String) -> Option<String> {
    match crate::seal::open(stored) {
        Ok(body) => Some(body),
        Err(e) => {
            if let Some(suppressed) = UNOPENED.check() {
                tracing::error!(event_id, error = %e, suppressed,
                    "an event's body cannot be opened, so it is not delivered; check \
                     [privacy] encrypt_key (`suppressed`: more since the last line)");
            }
            None
        }
    }
}

/// The body an `on_late` row delivers: its event with the upstream's answer added as
/// `upstreamResult` (kept as text if it is not JSON). Both backends use it.
pub(crate) fn with_result(body: String, result: Option<String>) -> Bytes {
    let Some(result) = result else {
        return Bytes::from(body);
    };
    let Ok(Value::Object(mut event)) = serde_json::from_str(&body) else {
        return Bytes::from(body);
    };
    let value = serde_json::from_str(&result).unwrap_or(Value::String(result));
    event.insert("upstreamResult".into(), value);
    Bytes::from(serde_json::to_vec(&event).unwrap_or_else(|_| body.into_bytes()))
}

/// The store, whichever backend it is.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

/// What a process opens the store for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A gateway: it must own the embedded store (one gateway per file); created if new.
    Serving,
    /// A command that changes stored data (replay, purge, forget): an existing store, owned,
    /// or attached beside the gateway that serves it.
    Changing,
    /// A command that only reads: an existing store; nothing is written.
    Reading,
}

impl Store {
    /// Opens the store `config` selects (the embedded SQLite file, or PostgreSQL for a
    /// `postgres://` URL) for `purpose`: the one place the gateway and the CLI choose the
    /// backend.
    pub async fn open(
        config: &crate::config::StoreConfig,
        purpose: Purpose,
    ) -> Result<Store, OpenError> {
        use crate::config::Backend;
        match check(config).map_err(OpenError::refused)? {
            Backend::Sqlite(path) => {
                if purpose != Purpose::Serving && !path.exists() {
                    return Err(OpenError::Refused(format!(
                        "no store at {}",
                        path.display()
                    )));
                }
                let config = config.clone();
                let store = tokio::task::spawn_blocking(move || match purpose {
                    Purpose::Serving => sqlite::SqliteStore::open_for_serving(&config),
                    Purpose::Changing => sqlite::SqliteStore::open(&config),
                    Purpose::Reading => sqlite::SqliteStore::open_reading(&config),
                })
                .await
                .map_err(OpenError::failed("the store's start-up task failed"))??;
                Ok(Store::Sqlite(Arc::new(store)))
            }
            Backend::Postgres(url) => Ok(Store::Postgres(Arc::new(
                postgres::PgStore::open(&url, config).await?,
            ))),
        }
    }

    /// Commits one event (grouped with concurrent ones).
    pub async fn accept(&self, a: Acceptance) -> Result<AcceptOutcome, StoreError> {
        self.accept_boxed(Box::new(a)).await
    }

    /// [`Store::accept`] of an acceptance already boxed: the request path's, which would
    /// otherwise copy its ~0.8 KiB at each move between the futures that carry it
    /// (bench/README.md, twentieth session).
    pub async fn accept_boxed(&self, a: Box<Acceptance>) -> Result<AcceptOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.accept_boxed(a).await,
            // Boxed: its future is several times the embedded store's, and a request's
            // future, moved whole, is as large as the largest (bench/README.md, fourteenth
            // session).
            Store::Postgres(s) => Box::pin(s.accept(*a)).await,
        }
    }

    /// An event's journey by event id or correlation id (the newest event with it).
    pub async fn journey(&self, id: &str) -> Result<Option<Journey>, StoreError> {
        match self {
            Store::Sqlite(s) => s.journey(id).await,
            Store::Postgres(s) => s.journey(id).await,
        }
    }

    /// A session's latest `limit` events, newest first, with their deliveries' states. Reads
    /// the events table without an index on the session (none is kept: it would cost every
    /// commit), so it is for an operator's look, not a hot path.
    pub async fn session_timeline(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.session_timeline(session_id, limit).await,
            Store::Postgres(s) => s.session_timeline(session_id, limit).await,
        }
    }

    /// Waits until reads see every event acknowledged so far (the embedded store applies its
    /// log to the database off the request path; PostgreSQL reads its commits at once).
    pub async fn caught_up(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.caught_up().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Events committed at or after `since_ms` (Unix ms), oldest first, at most
    /// `MAX_RECOVERED`: what the audit log writes again after a crash. On PostgreSQL, where
    /// other replicas commit too and write their own audit logs, only those `replica`
    /// committed (the embedded store has one writer and ignores it).
    pub async fn committed_since(
        &self,
        since_ms: i64,
        replica: &str,
    ) -> Result<Vec<CommittedEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.committed_since(since_ms).await,
            Store::Postgres(p) => p.committed_since(since_ms, replica).await,
        }
    }

    /// Forgets a session (SPEC §12.3): its state (the next event is version 1), its events'
    /// payloads (their ids, times and outcomes stay), its undelivered deliveries and its dead
    /// letters (both become `forgotten`). Forgetting an unknown session does nothing.
    pub async fn forget_session(&self, session_id: &str) -> Result<Forgotten, StoreError> {
        match self {
            Store::Sqlite(s) => s.forget_session(session_id.to_string()).await,
            Store::Postgres(p) => p.forget_session(session_id).await,
        }
    }

    /// True when the store answers a query and its writer is running.
    pub async fn ready(&self) -> bool {
        self.readiness().await.is_ok()
    }

    /// Whether the store can take events now, and why not when it cannot (for `/readyz`).
    pub async fn readiness(&self) -> Result<(), NotReady> {
        match self {
            Store::Sqlite(s) => s.readiness().await,
            Store::Postgres(s) => {
                if s.ready().await {
                    Ok(())
                } else {
                    Err(NotReady::Postgres)
                }
            }
        }
    }

    /// Claims up to `limit` due rows of `sink` for `lease`. On a sink recorded as ordered (see
    /// `configure_sinks`), a row is due only when no earlier row of the same session is still
    /// pending for that sink. The embedded store does not wait for settlements still on their
    /// way to its database: a row one brings due is claimable once it is written (the store
    /// wakes the workers then; [`Store::caught_up`] waits for it).
    pub async fn claim(
        &self,
        sink: &str,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim(sink, limit, lease).await,
            Store::Postgres(s) => s.claim(sink, limit, lease).await,
        }
    }

    /// Records each configured sink as ordered (`true`) or not. Rows written from then on
    /// carry the setting, and the sink's undelivered rows are brought in line with it; only
    /// rows of ordered sinks enter the per-session index their claims read. The gateway calls
    /// this when it starts, before it accepts events.
    pub async fn configure_sinks(&self, sinks: &[(String, bool)]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.configure_sinks(sinks.to_vec()).await,
            Store::Postgres(s) => s.configure_sinks(sinks.to_vec()).await,
        }
    }

    /// Settles a claimed row; returns false when the claim no longer held it (lease lost).
    pub async fn settle(&self, claim: &Claimed, s: Settlement) -> Result<bool, StoreError> {
        let done = self.settle_many(vec![(claim.clone(), s)]).await?;
        Ok(done.first().copied().unwrap_or(false))
    }

    /// Replaces the stored answer of an idempotency key (status and body).
    pub async fn set_answer(
        &self,
        key: String,
        status: u16,
        body: Bytes,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(st) => st.set_answer(key, status, body).await,
            Store::Postgres(st) => st.set_answer(key, status, body).await,
        }
    }

    /// Settles several claimed rows in one commit; one flag per row, as `settle` returns.
    pub async fn settle_many(
        &self,
        items: Vec<(Claimed, Settlement)>,
    ) -> Result<Vec<bool>, StoreError> {
        match self {
            Store::Sqlite(st) => st.settle_many(items).await,
            Store::Postgres(st) => st.settle_many(items).await,
        }
    }

    /// Dead letters matching the filter, newest first: (total matching, first `limit`).
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError> {
        match self {
            Store::Sqlite(s) => s.dead_letters(filter.clone(), limit).await,
            Store::Postgres(s) => s.dead_letters(filter.clone(), limit).await,
        }
    }

    /// Puts matching dead letters back in the outbox (or, with `dry_run`, counts them).
    pub async fn replay(
        &self,
        filter: &DeadLetterFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.replay(filter.clone(), dry_run).await,
            Store::Postgres(s) => s.replay(filter.clone(), dry_run).await,
        }
    }

    /// Deletes matching dead letters.
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge(filter.clone()).await,
            Store::Postgres(s) => s.purge(filter.clone()).await,
        }
    }

    /// Pending, oldest pending age and dead letters for each named sink.
    pub async fn sink_counts(&self, sinks: &[String]) -> Result<Vec<SinkCounts>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sink_counts(sinks.to_vec()).await,
            Store::Postgres(s) => s.sink_counts(sinks.to_vec()).await,
        }
    }

    /// Commits everything queued, then stops the writer.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// Parses a time bound for dead-letter filters: an RFC 3339 timestamp, or a duration meaning
/// "that long ago" (`"2h"`). Returns Unix milliseconds.
pub fn parse_time_bound(s: &str) -> Result<i64, TimeBoundError> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(crate::now_millis() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        Err(_) => Err(TimeBoundError(s.to_string())),
    }
}

/// A time bound that is neither an RFC 3339 time nor a duration.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an RFC 3339 time nor a duration such as 2h")]
pub struct TimeBoundError(String);

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says what went wrong only in its source, as PostgreSQL's do.
    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Vague(#[source] std::io::Error);

    #[test]
    fn store_errors_keep_their_causes_and_show_them() {
        let e = StoreError::unavailable(Vague(std::io::Error::other("disk quota exceeded")));
        assert_eq!(
            e.to_string(),
            "store is unavailable: db error: disk quota exceeded"
        );
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert!(cause.to_string().starts_with("db error"), "{cause}");
        let root = cause.source().expect("and its own cause");
        assert_eq!(root.to_string(), "disk quota exceeded");
        assert_eq!(
            crate::with_causes(&e),
            "store is unavailable: db error: disk quota exceeded",
            "printed with its causes, each once"
        );
        assert_eq!(
            e.clone(),
            e,
            "clones compare equal (one failed group answers many)"
        );
    }
}
