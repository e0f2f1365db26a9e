//! The embedded store: a log-structured write path in front of a SQLite database.
//!
//! ```text
//! request ──► sequencer thread ──► log (segment files; one write + fdatasync per group)
//!              decide: replay? duplicate? version?     │ answer the group's requests
//!              (hot maps, recent sessions,             ▼
//!               database reads)
//!                                           projector thread ──► keys (idempotency keys,
//!   delivery jobs (claim, settle, replay, purge) ──►   sorted runs: `keys`), then SQLite
//!                                                      (events with their answers,
//!                                                      sessions, outbox …), big transactions,
//!                                                      synchronous=NORMAL
//!                                           checkpointer thread: WAL → database file,
//!                                           flushes the keys and the bodies' files
//!                                           (`bodies`: events' bodies beside the
//!                                           database); removes log segments all made
//!                                           durable or keeps one as the spare the
//!                                           log writes into next (`log::Spare`)
//! ```
//!
//! The commit point is the log (see `log`): a request is answered once the record of its
//! event (event, session version, idempotency answer, outbox rows: `record::AcceptRecord`)
//! is flushed there with its group. The database is a projection of the log that the
//! delivery path, the admin API and the CLI read and the delivery path writes; it is brought
//! up to date off the request path, so an event costs an append, not four B-tree updates
//! and their pages.
//!
//! The delivery path does not wait for it either: the sequencer hands each group's outbox
//! rows of unordered sinks to the claims in memory (`fresh`, bounded per sink), and claims
//! read the database for the rest (retries, replays, ordered sinks, rows a full queue left
//! out, everything after a restart).
//!
//! # Recovery
//! The database records, in the transaction that applies them, how far the log has been
//! applied (`log_position.projected_lsn`); the idempotency keys (`keys`, a second projection)
//! record theirs in the batch that writes them. Opening the store reads the log from the
//! lower of the two positions and applies to each projection the records after its own (a
//! torn tail is cut off first: it was never acknowledged), so after any crash the database
//! holds exactly the acknowledged events, each once, and the keys hold every acknowledged
//! key: an event is acknowledged only after its record is in the log, a record is applied to
//! the database at most once (the position moves with it; a key written twice is the same
//! key), and a segment is removed only after the database and the keys have flushed every
//! record in it (see `project::start_checkpointer`). The events' bodies kept beside the
//! database (`bodies`) are flushed before that too, and opening the store checks the body
//! of each record the log still holds and the database has applied, writing one a power cut
//! lost into its row from the log. What the delivery path
//! wrote (claims, settlements) goes to the database only; losing the last of it to a power
//! cut (not to a crash of the process) means a delivery is made again, never lost.
//!
//! The events table has no index on the event id (schema 15): an event's rowid is the
//! number in the first 63 bits of its id (`crate::event_id`), which never repeats in this
//! process and, raised past the table's largest rowid when the store opens, never repeats
//! one the table holds. An id without a free number gets a negative rowid listed in
//! `events_moved` (`project::insert_event`); lookups go through `event_row!`.
//!
//! # Who sees what
//! Reads (journeys, dead letters, sink figures) wait until the database holds every record
//! acknowledged when the read began. A process that opens the store while a gateway serves
//! it (the CLI) is *attached*: it reads the database, finds the newest events in the log's
//! tail, finds a correlation id in the index's runs as the manifest on disk names them
//! (`keys::Keys::read_only_event_of`), and runs its writes (replays, purges) on the database
//! directly.

/// SQL for the rowid of the event whose id is `$id` (a parameter such as `"?1"` or a column):
/// its `events_moved` entry if it has one (usually none), else the number in its id
/// (`event_row`, `crate::event_id::row_of`). With `rowid = event_row!(…) AND event_id = …`
/// SQLite reads the one row by rowid (schema 15 has no index on the id).
macro_rules! event_row {
    ($id:literal) => {
        concat!(
            "coalesce((SELECT m.row FROM events_moved m WHERE m.event_id = ",
            $id,
            "), event_row(",
            $id,
            "))"
        )
    };
}

mod beside;
mod bodies;
mod fresh;
mod keys;
mod log;
mod outbox;
mod planner;
mod project;
mod raw;
mod record;
mod sequencer;

use parking_lot::Mutex;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use self::log::LogSync;
use self::project::{AfterJob, Job, ProjMsg};
use self::record::Record;
use self::sequencer::{SeqMsg, Sequencer};
use super::decide::Windows;
use super::{
    AcceptOutcome, Acceptance, Claimed, DeadLetter, DeadLetterFilter, Delivery, Journey, NotReady,
    OpenError, Settlement, SinkCounts, StoreError,
};
use crate::config::{StoreConfig, SyncMode};
use crate::error::Cause;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_spent_signatures.sql"),
    include_str!("../migrations/sqlite/0003_respond.sql"),
    include_str!("../migrations/sqlite/0004_ordered_sinks.sql"),
    include_str!("../migrations/sqlite/0005_log.sql"),
    include_str!("../migrations/sqlite/0006_forgotten_sessions.sql"),
    include_str!("../migrations/sqlite/0007_answers.sql"),
    include_str!("../migrations/sqlite/0008_answer_status.sql"),
    include_str!("../migrations/sqlite/0009_event_answers.sql"),
    include_str!("../migrations/sqlite/0010_sessions_position.sql"),
    include_str!("../migrations/sqlite/0011_lean_outbox.sql"),
    include_str!("../migrations/sqlite/0012_hashed_keys_mark.sql"),
    include_str!("../migrations/sqlite/0013_key_runs_mark.sql"),
    include_str!("../migrations/sqlite/0014_keys_without_tree_mark.sql"),
    include_str!("../migrations/sqlite/0015_events_by_id_number.sql"),
    include_str!("../migrations/sqlite/0016_bodies_beside.sql"),
    include_str!("../migrations/sqlite/0017_event_runs.sql"),
    include_str!("../migrations/sqlite/0018_packed_records.sql"),
    include_str!("../migrations/sqlite/0019_event_runs_outbox.sql"),
];

/// Sends `msg` to the sequencer, waiting for room when its queue is full (answers and
/// forgets wait like jobs; acceptances are shed instead, see `accept`).
async fn send_waiting(queue: &SyncSender<SeqMsg>, msg: SeqMsg) -> Result<(), StoreError> {
    match queue.try_send(msg) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(msg)) => {
            let queue = queue.clone();
            let sent = tokio::task::spawn_blocking(move || queue.send(msg).is_ok())
                .await
                .unwrap_or(false);
            if sent {
                Ok(())
            } else {
                Err(StoreError::Closed)
            }
        }
        Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
    }
}

/// Records applied per transaction while recovering.
const RECOVERY_BATCH: u64 = 10_000;

/// Messages the projector's queue holds (groups of records, jobs). When it is full the
/// sequencer waits, its own queue fills, and requests are refused with 503: this bounds the
/// records held in memory that the database does not have yet.
const PROJECTOR_QUEUE: usize = 64;

/// What a replay or a purge does to some dead letters (ids and attempts) in a projector job,
/// at a time: how many it changed.
type DeadLetterWork = fn(&Connection, i64, &[(i64, u32)]) -> rusqlite::Result<u64>;

/// Dead letters a replay or a purge handles per projector job (an update and an insert, or
/// two deletes, each).
const DEAD_LETTERS_PER_JOB: usize = 2_000;

/// Events a forget empties per projector job (each is a read and an update by rowid): a
/// session with many events does not hold the projector for one long transaction.
const FORGET_ROWS_PER_JOB: usize = 512;

/// While fresh rows fill every claim, how often a claim reads the database's due rows too.
const DATABASE_CLAIM_EVERY_MS: i64 = 100;

/// How long a read waits for the database to catch up with the log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// What a wait of at most `CATCH_UP_WAIT` for the projector came to: `what` names the part
/// of the database that stayed behind.
fn caught_up_within(
    waited: Result<Result<(), tokio::sync::watch::error::RecvError>, tokio::time::error::Elapsed>,
    what: &str,
) -> Result<(), StoreError> {
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(StoreError::Closed),
        Err(_) => Err(StoreError::unavailable(format!(
            "{what} is more than {}s behind the log",
            CATCH_UP_WAIT.as_secs()
        ))),
    }
}

/// Settings the projector needs.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    /// Set by the checkpointer when the WAL should start over (see `project`).
    wal_restart_wanted: Arc<AtomicBool>,
    windows: Windows,
    retention_ms: i64,
    /// The idempotency keys (see `keys`).
    keys: Arc<keys::Keys>,
    /// Where events' bodies go beside the database (`bodies`; `None` in some tests: in rows).
    bodies: Option<Arc<bodies::Bodies>>,
    /// Whether events with no outbox row are kept beside the database without an events row
    /// (`beside`): always, but in this crate's unit tests only those that ask
    /// (`KEEP_BESIDE`; most of them read the events table directly). The integration tests
    /// run the gateway's own setting.
    beside: bool,
}

#[cfg(test)]
thread_local! {
    /// Stores opened on this thread keep events beside the database (`beside`), as the
    /// gateway's do; without it, a unit test's store writes every event as a row.
    static KEEP_BESIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a store opened now keeps events beside the database (`WriterSettings::beside`).
fn keep_beside() -> bool {
    #[cfg(test)]
    return KEEP_BESIDE.with(std::cell::Cell::get);
    #[cfg(not(test))]
    true
}

/// Whether one part of the store can write, and why not when it cannot.
#[derive(Default)]
pub(crate) struct Health {
    failing: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Health {
    fn fail(&self, e: &StoreError) {
        *self.why.lock() = Some(e.to_string());
        self.failing.store(true, Ordering::SeqCst);
    }

    /// Cheap when nothing failed: this runs after every commit.
    fn recover(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            *self.why.lock() = None;
        }
    }

    fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::SeqCst) {
            return None;
        }
        self.why.lock().clone()
    }
}

/// State the store's threads share.
pub(crate) struct Shared {
    /// The last log record committed (its request may have been answered).
    acked: AtomicU64,
    /// The last log record the database holds.
    projected: watch::Sender<u64>,
    /// The last log record whose session the database holds too (the sessions table is
    /// written behind, `project::SESSIONS_EVERY`; never past `projected`).
    sessions_at: watch::Sender<u64>,
    /// A read asks the projector to write the sessions it holds behind (see `caught_up`).
    sessions_wanted: AtomicBool,
    /// The last log record handed to the projector (see `fresh`).
    handed: AtomicU64,
    /// The sinks that have a fresh queue (read by the sequencer once per group).
    fresh_sinks: Mutex<Arc<std::collections::HashSet<String>>>,
    /// The next outbox row id (given out by the store, so a request can hold its row before
    /// the database has it).
    next_outbox_id: AtomicI64,
    /// The log's writes (the sequencer) and the database's (the projector).
    log_health: Health,
    db_health: Health,
    /// Outbox rows claimed for delivery (see [`Leases`]).
    leases: Mutex<Leases>,
    /// Jobs handed to the projector, and jobs it has finished (committed or failed): a read
    /// waits for the jobs queued before it, so it sees the settlements made so far.
    jobs_submitted: AtomicU64,
    jobs_done: watch::Sender<u64>,
    /// Called once settlements are written (rows may have come due: a retry, an ordered
    /// session's next event).
    on_settled: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// The projector's thread, woken when someone cannot wait for its next round (see
    /// `project::COMMIT_EVERY`).
    projector_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Rows written once, already delivered (see `project::Settles`).
    delivered_with_rows: AtomicU64,
    /// The events' bodies beside the database (`bodies`), for jobs that forget events.
    bodies: std::sync::OnceLock<Arc<bodies::Bodies>>,
}

/// Delivery leases of the embedded store, kept in memory: one process serves the store, so a
/// lease never has to be seen by another (a restart voids them all). A claim takes due rows
/// the database shows pending that no lease here holds; a settlement checks the lease, ends
/// it at once for the caller, and keeps the row *settling* (held) until the projector has
/// written the outcome, so that no claim can read the row as pending in between. The
/// fresh rows (see `fresh`) share the lock: a row leaves its queue and is leased at once.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held: std::collections::HashMap<i64, Lease>,
    fresh: fresh::Fresh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    token: String,
    /// Unix ms; `i64::MAX` while the outcome is on its way to the database.
    until_ms: i64,
}

impl Leases {
    /// The rows no claim may take now: held by a live lease, or settling.
    fn taken(&self, now: i64) -> std::collections::HashSet<i64> {
        self.held
            .iter()
            .filter(|(_, l)| l.until_ms >= now)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn lease(&mut self, id: i64, token: &str, until_ms: i64) {
        self.held.insert(
            id,
            Lease {
                token: token.to_string(),
                until_ms,
            },
        );
    }

    /// Ends the claim's lease if it still holds the row, keeping the row settling.
    fn settle(&mut self, claim: &Claimed, now: i64) -> bool {
        match self.held.get_mut(&claim.outbox_id) {
            Some(l)
                if l.token == claim.lease_token && l.until_ms >= now && l.until_ms != i64::MAX =>
            {
                l.until_ms = i64::MAX;
                true
            }
            _ => false,
        }
    }

    /// The outcome of these rows is in the database (or failed to get there: the rows then
    /// come due again).
    fn release(&mut self, ids: &[i64]) {
        for id in ids {
            if self.held.get(id).is_some_and(|l| l.until_ms == i64::MAX) {
                self.held.remove(id);
            }
        }
    }
}

impl Shared {
    fn new(projected: u64, next_outbox_id: i64) -> Shared {
        Shared {
            acked: AtomicU64::new(projected),
            projected: watch::channel(projected).0,
            sessions_at: watch::channel(projected).0,
            sessions_wanted: AtomicBool::new(false),
            handed: AtomicU64::new(projected),
            fresh_sinks: Mutex::default(),
            next_outbox_id: AtomicI64::new(next_outbox_id),
            log_health: Health::default(),
            db_health: Health::default(),
            leases: Mutex::new(Leases::default()),
            jobs_submitted: AtomicU64::new(0),
            jobs_done: watch::channel(0).0,
            on_settled: Mutex::new(None),
            projector_thread: std::sync::OnceLock::new(),
            delivered_with_rows: AtomicU64::new(0),
            bodies: std::sync::OnceLock::new(),
        }
    }

    /// Ends the projector's pause between rounds, if it is in one.
    fn wake_projector(&self) {
        if let Some(t) = self.projector_thread.get() {
            t.unpark();
        }
    }

    /// Why the store cannot write, if it cannot.
    fn failure(&self) -> Option<String> {
        self.log_health
            .failure()
            .or_else(|| self.db_health.failure())
    }
}

/// The threads of a store this process owns.
struct Engine {
    queue: SyncSender<SeqMsg>,
    queue_depth: usize,
    projector: SyncSender<ProjMsg>,
    sequencer_thread: Mutex<Option<JoinHandle<()>>>,
    projector_thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    alive: Arc<AtomicBool>,
    /// The idempotency keys and the correlation index (see `keys`).
    keys: Arc<keys::Keys>,
}

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
    log_dir: PathBuf,
    /// The store's threads; `None` when another process serves the store (attached).
    engine: Option<Engine>,
    /// Attached: where writes (replays, purges) run.
    direct: Option<Arc<Mutex<Connection>>>,
    reader: Arc<Mutex<Connection>>,
    /// Where the outbox's figures are counted (`/stats`, `/metrics`, the console, the alerts:
    /// a count grows with the backlog, 40 ms at 655k pending rows). A serving store's is a
    /// connection of its own, so that a count never holds up the claims that read through
    /// `reader`; otherwise the same as `reader`.
    monitor: Arc<Mutex<Connection>>,
    shared: Arc<Shared>,
    /// Held while this process owns the store; released on close.
    lock: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("attached", &self.engine.is_none())
            .finish()
    }
}

/// In debug builds (the tests), a store whose process had a statement planned with an
/// automatic index panics when dropped (see `planner`).
impl Drop for SqliteStore {
    fn drop(&mut self) {
        if cfg!(debug_assertions) && !std::thread::panicking() {
            let (seen, first) = planner::automatic_indexes();
            assert_eq!(
                seen, 0,
                "a statement was planned with an automatic index: {first}"
            );
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable(e)
}

/// The database's own sync setting: the log is the commit point, so the database is only
/// flushed at checkpoints (`NORMAL`), or never under `sync = "off"`.
fn database_sync(sync: SyncMode) -> SyncMode {
    match sync {
        SyncMode::Off => SyncMode::Off,
        SyncMode::Full | SyncMode::Normal => SyncMode::Normal,
    }
}

fn log_sync(sync: SyncMode) -> LogSync {
    match sync {
        SyncMode::Full => LogSync::EveryCommit,
        SyncMode::Normal => LogSync::SegmentEnds,
        SyncMode::Off => LogSync::Never,
    }
}

/// Page cache of the projector's connection: the B-tree pages of sessions and the ends of
/// the tables it appends to on every event stay in memory. 256 pages of 16 KiB; 8 MiB
/// before: the caches fill within the first minute at full speed, and halving both this one
/// and `LOOKUP_CACHE_KIB` took SQLite's memory after that minute from 14.5 to 8.5 MiB and
/// the peak RSS from 62.9 and 57.8 to 56.2 and 54.7 MiB, at the same CPU per request
/// (bench/README.md, thirty-first session).
const WRITER_CACHE_KIB: i64 = 4 * 1024;

/// Page cache of the sequencer's reads (keys and sessions the hot maps no longer hold).
const LOOKUP_CACHE_KIB: i64 = 2 * 1024;

/// Page cache of connections that read now and then (admin, CLI).
const SMALL_CACHE_KIB: i64 = 1024;

/// Page cache of the connection that counts the outbox (`SqliteStore::sink_counts`).
const MONITOR_CACHE_KIB: i64 = 256;

/// Page cache of the checkpointer's connection, which only runs `PRAGMA wal_checkpoint`: a
/// checkpoint copies pages from the WAL to the database through a buffer of its own, not
/// through the cache. 16 pages; 1 MiB before: a share of the pool (below) that the projector
/// took over while deliveries ran (bench/README.md, thirty-second session).
pub(super) const CHECKPOINT_CACHE_KIB: i64 = 256;

// These sizes are shares of one pool, not separate caps: the bundled SQLite is built with
// `SQLITE_ENABLE_MEMORY_MANAGEMENT`, so every connection's pages sit in one group bounded by
// the sum of the sizes, and a connection that is at its own size recycles the group's least
// recently used page, whoever's it is. With deliveries running, the projector held nearly
// the whole sum (8.1 MiB of pages when the sum was 8 MiB, 7.0 of 7.25 now), the others little
// (bench/README.md, thirty-second session). Cutting the readers' shares to 256 KiB each
// saved 2.5 MiB with a sink but made deliveries at half the saturation rate lag more often
// (thirty-third session): the projector may need what it takes over.

/// The page size of a new database. The projector writes whole pages to the WAL (two writes
/// each, header and page) and the checkpointer copies them into the database: the events'
/// and the outbox's pages fill in order, so a larger page is fewer system calls for the same
/// bytes. From 4 to 16 KiB, per-thread CPU per request at saturation: projector −0.3 to
/// −0.9 µs, checkpointer −0.35 to −0.45 µs, with 1,000 and with 50,000 sessions taking
/// turns (bench/README.md, nineteenth session).
const PAGE_BYTES: i64 = 16 * 1024;

/// Opens a connection with the pragmas every connection needs and a page cache of
/// `cache_kib` KiB.
fn open_connection(
    path: &Path,
    sync: SyncMode,
    read_only: bool,
    cache_kib: i64,
) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    planner::watch();
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    add_functions(&conn)?;
    add_body_function(&conn, bodies::dir_of(path))?;
    if !read_only {
        // Before WAL is on: it applies only to a database not yet written (an existing one
        // keeps the size it was made with).
        conn.pragma_update(None, "page_size", PAGE_BYTES)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
            SyncMode::Off => "OFF",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Statement journals stay in memory; nothing temporary touches the disk.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(conn)
}

/// The SQL functions the store's statements use: `event_row(id)`, an event's rowid from its
/// id (schema 15; `event_row!`, `crate::event_id::row_of`).
fn add_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "event_row",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(ctx
                .get_raw(0)
                .as_str()
                .ok()
                .and_then(crate::event_id::row_of))
        },
    )
}

/// Gives `conn`, a connection of its own to the store's database at `db` (a tool, a test),
/// the function its events' bodies are read with: `event_body(body, body_at, rowid)` (see
/// `bodies`; `body` alone is empty for a body kept beside the database).
pub fn add_event_body_function(conn: &Connection, db: &Path) -> rusqlite::Result<()> {
    add_body_function(conn, bodies::dir_of(db))?;
    conn.execute_batch(beside::VIEW)
}

/// `event_body(body, body_at, rowid)`: an events row's body, from the row or, with a
/// `body_at`, from the store's bodies files (schema 16, `bodies`), read through a reader of
/// the connection's own; with it `beside_record(places, row)`, an event's record kept
/// beside the database without a row (schema 17, `beside`).
/// `event_body_or_null(…)` is the same but NULL, with an error logged, for a body that cannot
/// be read: a claim then leaves that one row alone instead of failing for all.
fn add_body_function(conn: &Connection, dir: PathBuf) -> rusqlite::Result<()> {
    let reader = bodies::Reader::new(dir);
    beside::add_function(conn, reader.clone())?;
    let read = move |ctx: &rusqlite::functions::Context<'_>| -> rusqlite::Result<String> {
        let at: Option<i64> = ctx.get(1)?;
        let Some(at) = at else {
            return ctx.get::<String>(0);
        };
        let row: i64 = ctx.get(2)?;
        let body = reader
            .read(at, row)
            .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
        String::from_utf8(body).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    };
    let or_null = read.clone();
    conn.create_scalar_function("event_body", 3, FunctionFlags::SQLITE_UTF8, read)?;
    conn.create_scalar_function(
        "event_body_or_null",
        3,
        FunctionFlags::SQLITE_UTF8,
        move |ctx| match or_null(ctx) {
            Ok(body) => Ok(Some(body)),
            Err(e) => {
                if let Some(suppressed) = UNREADABLE_BODY.check() {
                    tracing::error!(error = %e, suppressed,
                        "an event's body cannot be read beside the database, so it is not \
                         delivered (`suppressed`: more since the last line)");
                }
                Ok(None)
            }
        },
    )
}

/// An unreadable body beside the database is logged once a minute.
static UNREADABLE_BODY: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(Duration::from_secs(60));

/// Runs the migrations `done` (the store's `user_version`) leaves to run. The caller has
/// refused a store of a newer schema (`newer_schema`).
fn migrate(conn: &mut Connection, done: usize) -> rusqlite::Result<()> {
    if done > 0 && done < MIGRATIONS.len() {
        // An upgrade: some passes over existing rows (schema 8) take a while on a big store.
        tracing::info!(
            from = done,
            to = MIGRATIONS.len(),
            "upgrading the store's schema in place"
        );
    }
    add_functions(conn)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        // Schema 15 writes `events` anew: a store from before schema 13 gets its correlation
        // index back on the new table, for `move_correlation_index` to move.
        let correlations = i + 1 == 15 && correlation_index(&tx)?;
        tx.execute_batch(sql)?;
        if correlations {
            tx.execute_batch(
                "CREATE INDEX events_by_correlation ON events (correlation_id, committed_at)",
            )?;
        }
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Refuses a store whose schema is not this version's, for a process that cannot migrate
/// it: one attached beside the gateway that serves it, or one that only reads. Its queries
/// would otherwise fail one by one on columns the other version lacks.
fn check_schema(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let version = schema_version(conn, path)?;
    let ours = MIGRATIONS.len();
    if version < ours {
        return Err(OpenError::Refused(format!(
            "store {} has schema {version}, older than this cognihook's {ours}: a gateway of \
             an older version serves it, or none has opened it since the upgrade. Start this \
             version's gateway (`cognihook serve`), which upgrades the store in place when it \
             opens it, and run this again; or use the older version's command",
            path.display()
        )));
    }
    if version > ours {
        return Err(newer_schema(path, version));
    }
    Ok(())
}

/// The store's schema version (`PRAGMA user_version`: how many migrations ran).
fn schema_version(conn: &Connection, path: &Path) -> Result<usize, OpenError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(OpenError::failed(format!(
            "cannot read store {}",
            path.display()
        )))
}

/// Why a store a later version wrote is not opened, by any opener (it may hold what this
/// version cannot read, and would not upgrade in place).
fn newer_schema(path: &Path, version: usize) -> OpenError {
    OpenError::Refused(format!(
        "store {} has schema {version}, newer than this cognihook's {}: use the version \
         that wrote it",
        path.display(),
        MIGRATIONS.len()
    ))
}

/// The log directory beside a database file: `cognihook.db` → `cognihook.log/`.
fn log_dir_of(path: &Path) -> PathBuf {
    path.with_extension("log")
}

/// Applies the log's records after the database's position to the database, and those
/// after the keys' position to the keys (opening an owned store; see `keys`, "Recovery").
/// Keys that never had a position (just made: a new store, one written before the keys left
/// the database, whose keys stay there, or one whose keys directory was deleted) start at the
/// database's position, recorded and flushed at once.
fn recover(
    conn: &Connection,
    log_dir: &Path,
    sync: SyncMode,
    keys: &keys::Keys,
    bodies: &Arc<bodies::Bodies>,
) -> Result<log::LogWriter, log::LogError> {
    let db_at = project::projected(conn)
        .map_err(|e| log::LogError::record("cannot read the store's position", e))?;
    // The sessions table is written behind the rest (`project::SESSIONS_EVERY`): the
    // records between its position and the database's have only their sessions applied.
    let sessions_at = project::sessions_projected(conn)
        .map_err(|e| log::LogError::record("cannot read the store's position", e))?
        .min(db_at);
    let now = crate::now_millis();
    let keys_at = keys
        .applied()
        .map_err(|e| log::LogError::record("cannot read the idempotency keys' position", e))?;
    let keys_at = match keys_at {
        Some(at) => at,
        None => {
            project::write_keys(keys, std::iter::empty(), db_at, now)
                .and_then(|()| keys.persist(sync).map_err(keys::failed))
                .map_err(|e| log::LogError::record("cannot start the idempotency keys", e))?;
            db_at
        }
    };
    tracing::debug!(
        database = db_at,
        sessions = sessions_at,
        keys = keys_at,
        "log positions at open"
    );
    let mut in_tx = 0u64;
    let mut last = db_at;
    // Records whose keys are not written yet, and the last of them.
    let mut pending: Vec<Record> = Vec::new();
    let mut pending_last = keys_at;
    let flush_keys = |pending: &mut Vec<Record>, last: u64| -> Result<(), log::LogError> {
        project::write_keys(keys, pending.iter(), last, now)
            .map_err(|e| log::LogError::record("cannot write the idempotency keys", e))?;
        pending.clear();
        Ok(())
    };
    let mut statements = project::Statements::new(conn);
    statements.bodies = Some(bodies.clone());
    // The records still in the log that the database holds: their bodies beside it may not
    // have reached the disk before a power cut (the checkpointer flushes them before it
    // removes a segment), so each is checked, and one lost is written into its row.
    let kept_from = log::segments(log_dir)
        .ok()
        .and_then(|s| s.first().map(|(first, _)| first.saturating_sub(1)))
        .unwrap_or(db_at)
        .min(db_at);
    let mut rewritten = 0u64;
    let mut apply = |lsn: u64, payload: &[u8]| -> Result<(), log::LogError> {
        let r = Record::decode(payload)
            .map_err(|e| log::LogError::record(format!("log record {lsn}"), e))?;
        if lsn <= db_at {
            if let Record::Accept(a) = &r {
                if project::keep_body(conn, bodies, a).map_err(|e| {
                    log::LogError::record(format!("cannot check the body of log record {lsn}"), e)
                })? {
                    rewritten += 1;
                }
            }
        }
        // An older `Answer` record finds its event by the key: the keys before it first.
        if matches!(r, Record::Answer { event_id: None, .. }) && pending_last > keys_at {
            flush_keys(&mut pending, pending_last)?;
        }
        if lsn > sessions_at {
            if in_tx == 0 {
                conn.execute_batch("BEGIN IMMEDIATE")
                    .map_err(|e| log::LogError::record("cannot begin applying the log", e))?;
            }
            let applied = if lsn > db_at {
                project::apply(&mut statements, &r, keys)
            } else {
                project::apply_sessions(conn, &r)
            };
            applied
                .map_err(|e| log::LogError::record(format!("cannot apply log record {lsn}"), e))?;
            in_tx += 1;
            last = lsn;
            if in_tx >= RECOVERY_BATCH {
                project::set_positions(conn, last.max(db_at), Some(last))
                    .and_then(|()| bodies.write_out().map_err(project::failed_io))
                    .and_then(|()| conn.execute_batch("COMMIT"))
                    .map_err(|e| log::LogError::record("cannot commit the applied records", e))?;
                bodies.committed();
                in_tx = 0;
            }
        }
        if lsn > keys_at {
            pending.push(r);
            pending_last = lsn;
            if pending.len() as u64 >= RECOVERY_BATCH {
                flush_keys(&mut pending, pending_last)?;
            }
        }
        Ok(())
    };
    let result = log::recover(
        log_dir,
        sessions_at.min(keys_at).min(kept_from),
        log_sync(sync),
        &mut apply,
    );
    let keys_done = if pending_last > keys_at && result.is_ok() {
        flush_keys(&mut pending, pending_last)
    } else {
        Ok(())
    };
    let finish = if in_tx > 0 {
        match (&result, &keys_done) {
            (Ok(_), Ok(())) => project::set_positions(conn, last.max(db_at), Some(last))
                .and_then(|()| bodies.write_out().map_err(project::failed_io))
                .and_then(|()| conn.execute_batch("COMMIT"))
                .inspect(|()| bodies.committed()),
            _ => conn.execute_batch("ROLLBACK"),
        }
    } else {
        Ok(())
    };
    let (writer, report) = result?;
    keys_done?;
    finish.map_err(|e| log::LogError::record("cannot apply the log", e))?;
    if let Some(dropped) = &report.dropped {
        tracing::warn!(dropped = %dropped, "the store's log had a torn tail; it was cut off");
    }
    if report.applied > 0 {
        tracing::info!(
            records = report.applied,
            "applied the log's records the database did not have yet"
        );
    }
    if rewritten > 0 {
        tracing::warn!(
            events = rewritten,
            "events' bodies beside the database were lost (a power cut before their flush); \
             written again from the log into their rows"
        );
    }
    Ok(writer)
}

/// Warns about a data directory or database that other users can read (payloads are in
/// them): made before this version, or by hand. New ones are created 0700 / 0600.
fn warn_if_readable_by_others(path: &Path, log_dir: &Path, keys_dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        for p in [dir, path, log_dir, keys_dir, &bodies::dir_of(path)] {
            if let Ok(meta) = std::fs::metadata(p) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %p.display(), mode = %format!("{mode:o}"),
                        "other users can read this part of the store (it holds payloads); \
                         chmod it to 700 (a directory) or 600 (a file)");
                }
            }
        }
    }
}

/// The first outbox id never given out: past every id in the table and every id it ever
/// held (rows deleted by retention or purges are not reused: see `outbox::keep_id_floor`).
fn next_outbox_id(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM outbox), 0), \
                    (SELECT outbox_id_floor FROM log_position)) + 1",
        [],
        |r| r.get(0),
    )
}

/// Where a store's files are; creates the data directory.
fn prepare_path(config: &StoreConfig) -> Result<PathBuf, OpenError> {
    let path = config.sqlite_path().map_err(OpenError::refused)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(OpenError::failed(format!(
            "cannot create data directory {}",
            dir.display()
        )))?;
    }
    Ok(path)
}

/// The lock a process holds on a store it owns (`<db>.lock`); `None` when another holds it.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, OpenError> {
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(OpenError::failed(format!(
            "cannot open {}",
            lock_path.display()
        )))?;
    Ok(lock.try_lock().is_ok().then_some(lock))
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store. When no other process serves it,
    /// this process owns it: the log is recovered and the store's threads start. Otherwise
    /// the store is attached (see the module doc) and cannot accept events.
    pub fn open(config: &StoreConfig) -> Result<SqliteStore, OpenError> {
        let path = prepare_path(config)?;
        match try_lock(&path)? {
            Some(lock) => SqliteStore::open_owned(config, path, lock),
            None => SqliteStore::open_attached(config, path),
        }
    }

    /// Opens the store for a gateway: it must own it (one gateway per embedded store;
    /// several replicas need PostgreSQL).
    pub fn open_for_serving(config: &StoreConfig) -> Result<SqliteStore, OpenError> {
        let path = prepare_path(config)?;
        match try_lock(&path)? {
            Some(lock) => SqliteStore::open_owned(config, path, lock),
            None => Err(OpenError::Refused(format!(
                "another cognihook is already serving {} (lock {} is held); the embedded store \
                 takes one gateway, use PostgreSQL for several",
                path.display(),
                path.with_extension("lock").display()
            ))),
        }
    }

    fn open_owned(
        config: &StoreConfig,
        path: PathBuf,
        lock: std::fs::File,
    ) -> Result<SqliteStore, OpenError> {
        let db_sync = database_sync(config.sync);
        let mut conn = open_connection(&path, db_sync, false, WRITER_CACHE_KIB).map_err(
            OpenError::failed(format!("cannot open store {}", path.display())),
        )?;
        let version = schema_version(&conn, &path)?;
        if version > MIGRATIONS.len() {
            return Err(newer_schema(&path, version));
        }
        migrate(&mut conn, version).map_err(OpenError::failed(format!(
            "cannot migrate store {}",
            path.display()
        )))?;
        let log_dir = log_dir_of(&path);
        let windows = Windows {
            idempotency_ms: millis(config.idempotency_window),
            session_ttl_ms: millis(config.session_ttl),
        };
        let keys_dir = keys::dir_of(&path);
        let now = crate::now_millis();
        // The keyspace's flush and compaction threads inherit the niceness of the thread that
        // opens it (the keyspace takes no hook to set them up).
        let keys = crate::priority::run_lowered(config.background_nice, "idempotency keys", || {
            keys::Keys::open(
                &keys_dir,
                windows.idempotency_ms,
                millis(config.retention),
                now,
            )
        })
        .map_err(OpenError::failed(
            "cannot start a thread to open the idempotency keys",
        ))?
        .map_err(OpenError::failed(format!(
            "cannot open the idempotency keys in {}",
            keys_dir.display()
        )))?;
        move_correlation_index(&conn, &keys, now).map_err(OpenError::failed(format!(
            "cannot move the correlation index of {} to {}",
            path.display(),
            keys_dir.display()
        )))?;
        let keys = Arc::new(keys);
        // Keys written before they moved to `keys` are read from the database until they
        // expire (the next start after that does not look there).
        let legacy_keys: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM idempotency)", [], |r| {
                r.get(0)
            })
            .map_err(OpenError::failed(format!(
                "cannot read store {}",
                path.display()
            )))?;
        let bodies = Arc::new(
            bodies::Bodies::open(&path, millis(config.retention)).map_err(OpenError::failed(
                format!(
                    "cannot open the event bodies in {}",
                    bodies::dir_of(&path).display()
                ),
            ))?,
        );
        let log =
            recover(&conn, &log_dir, config.sync, &keys, &bodies).map_err(OpenError::failed(
                format!("cannot recover store {} from its log", path.display()),
            ))?;
        // A forget whose events were not all emptied when the process stopped.
        let finished =
            project::finish_pending_forgets(&conn, Some(&bodies)).map_err(OpenError::failed(
                format!("cannot finish forgetting sessions in {}", path.display()),
            ))?;
        if finished > 0 {
            tracing::info!(
                sessions = finished,
                "finished forgetting sessions the previous process had begun to forget"
            );
        }
        warn_if_readable_by_others(&path, &log_dir, &keys_dir);
        // No other process can be sending: every lease left behind is void.
        let released = conn
            .execute(
                "UPDATE outbox SET lease_until = NULL, lease_owner = NULL \
                 WHERE lease_until IS NOT NULL AND status = 'pending'",
                [],
            )
            .map_err(OpenError::failed(format!(
                "cannot release old leases in {}",
                path.display()
            )))?;
        if released > 0 {
            tracing::info!(
                released,
                "released delivery leases left by the previous process"
            );
        }
        let projected = project::projected(&conn).map_err(OpenError::failed(format!(
            "cannot read store {}",
            path.display()
        )))?;
        let next_id = next_outbox_id(&conn).map_err(OpenError::failed(format!(
            "cannot read store {}",
            path.display()
        )))?;
        // Every event id made from now on has a number past every row's (`crate::event_id`).
        let top_row: Option<i64> = conn
            .query_row(
                "SELECT max(coalesce((SELECT max(rowid) FROM events), 0), \
                            coalesce((SELECT last FROM event_runs ORDER BY first DESC LIMIT 1), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(OpenError::failed(format!(
                "cannot read store {}",
                path.display()
            )))?;
        crate::event_id::raise_floor(top_row.unwrap_or(0));
        let shared = Arc::new(Shared::new(projected, next_id));
        let _ = shared.bodies.set(bodies.clone());
        // The checkpointer thread does this work instead (see `project`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES))
            .map_err(OpenError::failed(format!(
                "cannot configure store {}",
                path.display()
            )))?;
        let open_reader = |cache_kib| {
            open_connection(&path, db_sync, true, cache_kib).map_err(OpenError::failed(format!(
                "cannot open store {} for reading",
                path.display()
            )))
        };
        let reader = open_reader(SMALL_CACHE_KIB)?;
        // Its counts read an index from end to end, which a cache of any size cannot hold
        // for a large backlog: a small share of the pool (below) is enough.
        let monitor = open_reader(MONITOR_CACHE_KIB)?;
        let sequencer_reader = open_reader(LOOKUP_CACHE_KIB)?;
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let settings = WriterSettings {
            wal_restart_wanted: restart_wanted.clone(),
            windows,
            retention_ms: millis(config.retention),
            keys: keys.clone(),
            bodies: Some(bodies.clone()),
            beside: keep_beside(),
        };
        let checkpointer = project::start_checkpointer(
            &path,
            log.upkeep(),
            db_sync,
            restart_wanted,
            shared.clone(),
            (keys.clone(), bodies),
            config.background_nice,
        )?;
        let alive = Arc::new(AtomicBool::new(true));
        let (projector, projector_rx) = mpsc::sync_channel(PROJECTOR_QUEUE);
        let projector_thread = {
            let (shared, settings, alive) = (shared.clone(), settings.clone(), alive.clone());
            // Not lowered with the checkpointer: a starved projector fills its queue and the
            // sequencer, and so every request, waits on it (bench/README.md, thirteenth and
            // fourteenth sessions).
            std::thread::Builder::new()
                .name("cognihook-project".into())
                .spawn(move || {
                    project::run(conn, projector_rx, shared, settings);
                    alive.store(false, Ordering::SeqCst);
                })
                .map_err(OpenError::failed("cannot start the store projector"))?
        };
        let _ = shared
            .projector_thread
            .set(projector_thread.thread().clone());
        let (queue, rx) = mpsc::sync_channel(config.queue_depth);
        let sequencer = Sequencer {
            log,
            reader: sequencer_reader,
            projector: projector.clone(),
            shared: shared.clone(),
            windows: settings.windows,
            max_batch: config.max_batch,
            plain: Vec::new(),
            reading: false,
            keys: keys.clone(),
            legacy_keys,
        };
        let sequencer_thread = {
            let alive = alive.clone();
            std::thread::Builder::new()
                .name("cognihook-writer".into())
                .spawn(move || {
                    crate::priority::shorten_slice("the store writer");
                    sequencer.run(rx);
                    alive.store(false, Ordering::SeqCst);
                })
                .map_err(OpenError::failed("cannot start the store writer"))?
        };
        Ok(SqliteStore {
            path,
            log_dir,
            engine: Some(Engine {
                queue,
                queue_depth: config.queue_depth,
                projector,
                sequencer_thread: Mutex::new(Some(sequencer_thread)),
                projector_thread: Mutex::new(Some(projector_thread)),
                checkpointer: Mutex::new(Some(checkpointer)),
                alive,
                keys,
            }),
            direct: None,
            reader: Arc::new(Mutex::new(reader)),
            monitor: Arc::new(Mutex::new(monitor)),
            shared,
            lock: Mutex::new(Some(lock)),
        })
    }

    fn open_attached(config: &StoreConfig, path: PathBuf) -> Result<SqliteStore, OpenError> {
        let db_sync = database_sync(config.sync);
        let conn = open_connection(&path, db_sync, false, SMALL_CACHE_KIB).map_err(
            OpenError::failed(format!("cannot open store {}", path.display())),
        )?;
        check_schema(&conn, &path)?;
        let projected = project::projected(&conn).map_err(OpenError::failed(format!(
            "cannot read store {}",
            path.display()
        )))?;
        let reader = open_connection(&path, db_sync, true, SMALL_CACHE_KIB).map_err(
            OpenError::failed(format!("cannot open store {} for reading", path.display())),
        )?;
        let reader = Arc::new(Mutex::new(reader));
        // Attached stores write no bodies; a forget run here overwrites its events' ones.
        let bodies = bodies::Bodies::open(&path, millis(config.retention)).map_err(
            OpenError::failed(format!(
                "cannot open the event bodies in {}",
                bodies::dir_of(&path).display()
            )),
        )?;
        // Attached stores never insert outbox rows (they accept no events and settle
        // no deliveries), so the id counter is not used.
        let shared = Arc::new(Shared::new(projected, i64::MAX));
        let _ = shared.bodies.set(Arc::new(bodies));
        Ok(SqliteStore {
            log_dir: log_dir_of(&path),
            path,
            engine: None,
            direct: Some(Arc::new(Mutex::new(conn))),
            monitor: reader.clone(),
            reader,
            shared,
            lock: Mutex::new(None),
        })
    }

    /// Opens an existing store for reading only (CLI commands that print), without any thread
    /// and without writing: it can be read beside a running gateway, and what the gateway has
    /// acknowledged but not yet applied to the database is read from the log's tail.
    pub fn open_reading(config: &StoreConfig) -> Result<SqliteStore, OpenError> {
        let path = config.sqlite_path().map_err(OpenError::refused)?;
        if !path.exists() {
            return Err(OpenError::Refused(format!(
                "no store at {}",
                path.display()
            )));
        }
        let reader = open_connection(&path, config.sync, true, SMALL_CACHE_KIB).map_err(
            OpenError::failed(format!("cannot open store {}", path.display())),
        )?;
        check_schema(&reader, &path)?;
        let projected = project::projected(&reader).map_err(OpenError::failed(format!(
            "cannot read store {}",
            path.display()
        )))?;
        let reader = Arc::new(Mutex::new(reader));
        Ok(SqliteStore {
            log_dir: log_dir_of(&path),
            path,
            engine: None,
            direct: None,
            monitor: reader.clone(),
            reader,
            shared: Arc::new(Shared::new(projected, i64::MAX)),
            lock: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `keys` holds for an idempotency key (an owned store only).
    #[cfg(test)]
    fn key_entry(&self, key: &str) -> Option<keys::KeyEntry> {
        let engine = self.engine.as_ref()?;
        engine.keys.get(key).ok().flatten()
    }

    #[cfg(test)]
    pub(super) async fn accept(&self, a: Acceptance) -> Result<AcceptOutcome, StoreError> {
        self.accept_boxed(Box::new(a)).await
    }

    pub(super) async fn accept_boxed(
        &self,
        a: Box<Acceptance>,
    ) -> Result<AcceptOutcome, StoreError> {
        let Some(engine) = &self.engine else {
            return Err(StoreError::unavailable("another process serves this store"));
        };
        let (tx, rx) = oneshot::channel();
        // Written here, on the request's thread: the sequencer decides one event at a time.
        let json = a.event.to_json_unversioned();
        match engine.queue.try_send(SeqMsg::Accept(a, tx, Some(json))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded(engine.queue_depth)),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        // What is left of the acceptance is dropped here, on the thread that made it.
        rx.await
            .map_or(Err(StoreError::Closed), |(outcome, _spent)| outcome)
    }

    /// Runs `f` on the write connection inside the next transaction; answers after commit.
    async fn job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64, &AtomicI64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.engine.is_none() {
            return self.direct_job(f).await;
        }
        let rx = self.submit(f, None).await?;
        let any = rx.await.unwrap_or(Err(StoreError::Closed))?;
        any.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| unavailable("writer job returned an unexpected type"))
    }

    /// Queues `f` for the projector's next transaction; the receiver gets its result after
    /// the commit.
    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64, &AtomicI64) -> rusqlite::Result<T> + Send + 'static,
        after: Option<AfterJob>,
    ) -> Result<oneshot::Receiver<Result<Box<dyn Any + Send>, StoreError>>, StoreError> {
        let Some(engine) = &self.engine else {
            return Err(StoreError::Closed);
        };
        let (tx, rx) = oneshot::channel();
        let job: Job =
            Box::new(move |c, now, ids| f(c, now, ids).map(|v| Box::new(v) as Box<dyn Any + Send>));
        // A job (a settlement an ordered session waits for, a replay) does not wait for
        // the projector's pause between rounds of records.
        self.queue_job(engine, ProjMsg::Job(job, tx, after), true)
            .await?;
        Ok(rx)
    }

    /// Queues a job's message for the projector (`wake`: end its pause between rounds).
    async fn queue_job(&self, engine: &Engine, msg: ProjMsg, wake: bool) -> Result<(), StoreError> {
        // Jobs wait for room rather than being shed: they are the delivery path's own work.
        // The count goes up first, so a read never misses a job that is already queued.
        self.shared.jobs_submitted.fetch_add(1, Ordering::SeqCst);
        if wake {
            self.shared.wake_projector();
        }
        let sent = match engine.projector.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(msg)) => {
                let queue = engine.projector.clone();
                tokio::task::spawn_blocking(move || queue.send(msg).is_ok())
                    .await
                    .unwrap_or(false)
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            self.shared.jobs_submitted.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// An attached store's write: on its own connection, in one transaction.
    async fn direct_job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64, &AtomicI64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(conn) = self.direct.clone() else {
            return Err(StoreError::Closed);
        };
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let out = f(&tx, crate::now_millis(), &shared.next_outbox_id);
            let done = out.and_then(|out| tx.commit().map(|()| out));
            if let Some(bodies) = shared.bodies.get() {
                if done.is_ok() {
                    bodies.erase_pending().map_err(unavailable)?;
                } else {
                    bodies.drop_erasures();
                }
            }
            done.map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    /// Takes up to `limit` of the sink's fresh rows (see `fresh`) under one lease; with the
    /// record a database claim of the sink must wait for (`None`: the sink has no queue).
    fn take_fresh(
        &self,
        sink: &str,
        limit: usize,
        token: &str,
        until: i64,
    ) -> (Vec<Claimed>, Option<u64>) {
        let handed = self.shared.handed.load(Ordering::SeqCst);
        let mut leases = self.shared.leases.lock();
        let Some(q) = leases.fresh.sinks.get_mut(sink) else {
            return (Vec::new(), None);
        };
        let mut rows = q.take(limit, handed);
        let wait = q.db_wait;
        for c in &mut rows {
            leases.lease(c.outbox_id, token, until);
            c.lease_token = token.to_string();
            c.lease_until_ms = until;
        }
        (rows, Some(wait))
    }

    /// Claims due rows: the sink's fresh rows (in memory, see `fresh`) and rows the
    /// database shows due; reads only, and leases them in memory. While fresh rows are
    /// found, the database is read at most every [`DATABASE_CLAIM_EVERY_MS`], with a quarter
    /// of the claim kept for its rows, so retries and replays are not starved.
    pub(super) async fn claim(
        &self,
        sink: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let token = ulid::Ulid::new().to_string();
        let now = crate::now_millis();
        let until = now + millis(lease);
        let database_due = self
            .shared
            .leases
            .lock()
            .fresh
            .sinks
            .get(sink)
            .is_none_or(|q| now - q.last_database_claim >= DATABASE_CLAIM_EVERY_MS);
        let first = if database_due {
            limit - limit.div_ceil(4)
        } else {
            limit
        };
        let (mut out, db_wait) = self.take_fresh(sink, first, &token, until);
        // Fresh rows found: the database is read only when its turn has come (a query per
        // claim would cost more than the claim's rows are worth under load).
        if out.len() >= limit || (!out.is_empty() && !database_due) {
            return Ok(out);
        }
        // Rows committed before the claim are in the database first, unless they are fresh
        // rows: then only the records whose rows a full queue left out, or a forget, are
        // waited for (and when fresh rows were found, the database is read by a later
        // claim instead of waiting). Settlements on their way there are not waited for
        // (their rows are held in memory until written, and the workers are woken then:
        // see `on_settled`).
        let read_database = match db_wait {
            None => {
                self.wait_for_database(false).await?;
                true
            }
            Some(lsn) if lsn > *self.shared.projected.borrow() => {
                if out.is_empty() {
                    self.wait_until(lsn, 0).await?;
                }
                out.is_empty()
            }
            Some(_) => true,
        };
        if read_database {
            if let Some(q) = self.shared.leases.lock().fresh.sinks.get_mut(sink) {
                q.last_database_claim = now;
            }
            let more = self
                .claim_from_database(sink, limit - out.len(), &token, until)
                .await?;
            out.extend(more);
        }
        if out.len() < limit && db_wait.is_some() {
            let (more, _) = self.take_fresh(sink, limit - out.len(), &token, until);
            out.extend(more);
        }
        Ok(out)
    }

    /// Claims up to `limit` rows the database shows due, skipping the leased and the fresh.
    async fn claim_from_database(
        &self,
        sink: &str,
        limit: usize,
        token: &str,
        until: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (sink, token) = (sink.to_string(), token.to_string());
        let (reader, shared) = (self.reader.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || {
            let now = crate::now_millis();
            // The leased rows are read before the rows: a settlement that lands in between
            // is either still held here or already in what the query reads.
            let (taken, skip) = {
                let leases = shared.leases.lock();
                let skip = leases.fresh.sinks.get(&sink).map_or((1, 0), |q| q.range());
                (leases.taken(now), skip)
            };
            let conn = reader.lock();
            // One read transaction for the due rows and their events: each statement outside
            // one takes and drops its own, with its file locks, and finds SQLite's page cache
            // emptied whenever the projector has committed since (bench/README.md,
            // sixty-seventh session). Only read: dropped (rolled back) at the end.
            let conn = conn.unchecked_transaction().map_err(unavailable)?;
            let rows = outbox::due(&conn, now, &sink, limit, &taken, skip).map_err(unavailable)?;
            let mut leases = shared.leases.lock();
            // Another claim may have taken some since `taken` was read, and rows read may
            // have been queued fresh since.
            let fresh = leases.taken(now);
            let (lo, hi) = leases.fresh.sinks.get(&sink).map_or((1, 0), |q| q.range());
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|(id, ..)| !fresh.contains(id) && !(lo..=hi).contains(id))
                .collect();
            for (id, ..) in &rows {
                leases.lease(*id, &token, until);
            }
            drop(leases);
            outbox::claims(&conn, &sink, rows, &token, until).map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    pub(super) async fn configure_sinks(
        &self,
        sinks: Vec<(String, bool)>,
    ) -> Result<(), StoreError> {
        let recorded = sinks.clone();
        self.job(move |c, _, _| outbox::configure_sinks(c, &recorded))
            .await?;
        let mut leases = self.shared.leases.lock();
        leases.fresh.configure(&sinks);
        *self.shared.fresh_sinks.lock() = Arc::new(leases.fresh.sinks.keys().cloned().collect());
        Ok(())
    }

    pub(super) async fn set_answer(
        &self,
        key: String,
        status: u16,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let Some(engine) = &self.engine else {
            return self
                .direct_job(move |c, _, _| outbox::set_answer(c, &key, status, &body))
                .await;
        };
        let (reply, rx) = oneshot::channel();
        let msg = SeqMsg::Answer {
            key,
            status,
            body,
            reply,
        };
        // Like a job, the answer waits for room rather than being shed.
        send_waiting(&engine.queue, msg).await?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Forgets a session through the log (so the sequencer's own view of its version goes
    /// too), then reads what the projector did.
    pub(super) async fn forget_session(
        &self,
        session_id: String,
    ) -> Result<super::Forgotten, StoreError> {
        let Some(engine) = &self.engine else {
            return Err(StoreError::unavailable(
                "another process (the running gateway) owns this store: forget the session \
                 through it, with DELETE /admin/sessions/{id}",
            ));
        };
        // Settlements queued before this call land first, so a row delivered or
        // dead-lettered just now is recorded as such, not as forgotten.
        self.caught_up().await?;
        let (reply, rx) = oneshot::channel();
        let msg = SeqMsg::Forget {
            session_id: session_id.clone(),
            reply,
        };
        send_waiting(&engine.queue, msg).await?;
        rx.await.unwrap_or(Err(StoreError::Closed))?;
        // `read` waits until the database holds every record committed so far: the forget's
        // own part (`project::forget`) is applied.
        let s = session_id.clone();
        let (at, events, cancelled) = self
            .read(move |c| {
                c.query_row(
                    "SELECT at, events, cancelled FROM forgotten_sessions WHERE session_id = ?1",
                    [&s],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
            })
            .await?;
        let events = if events == project::FORGET_PENDING {
            self.empty_forgotten(&session_id, at).await?
        } else {
            events as u64
        };
        Ok(super::Forgotten {
            session_id,
            events,
            cancelled_deliveries: cancelled as u64,
        })
    }

    /// Empties the events of a session forgotten at `at` (see `project::forget`): finds their
    /// rows on a connection of its own (a read of the whole events table, which holds up
    /// neither the projector nor the reader that claims and reads share), then empties them
    /// through the projector, `FORGET_ROWS_PER_JOB` rows a job. Returns how many.
    async fn empty_forgotten(&self, session_id: &str, at: i64) -> Result<u64, StoreError> {
        let s = session_id.to_string();
        let rows = self
            .read_alone(move |c| project::forget_scan(c, &s, at))
            .await?;
        for chunk in rows.chunks(FORGET_ROWS_PER_JOB) {
            let (s, chunk) = (session_id.to_string(), chunk.to_vec());
            let bodies = self.shared.bodies.get().cloned();
            self.job(move |c, _, _| project::forget_events(c, bodies.as_deref(), &s, at, &chunk))
                .await?;
        }
        let (s, n) = (session_id.to_string(), rows.len());
        self.job(move |c, _, _| project::finish_forget(c, &s, at, n))
            .await?;
        Ok(n as u64)
    }

    /// Settles claims: checks and ends their leases at once, and writes the outcomes in the
    /// projector's next transaction without waiting for it (a crash before then means the
    /// deliveries are made again).
    pub(super) async fn settle_many(
        &self,
        items: Vec<(Claimed, Settlement)>,
    ) -> Result<Vec<bool>, StoreError> {
        if self.engine.is_none() {
            return self
                .direct_job(move |c, now, ids| {
                    items
                        .iter()
                        .map(|(claim, s)| outbox::settle(c, now, claim, s, ids))
                        .collect()
                })
                .await;
        }
        let now = crate::now_millis();
        let held: Vec<bool> = {
            let mut leases = self.shared.leases.lock();
            items.iter().map(|(c, _)| leases.settle(c, now)).collect()
        };
        let write: Vec<(Claimed, Settlement)> = items
            .into_iter()
            .zip(&held)
            .filter(|(_, h)| **h)
            .map(|(item, _)| item)
            .collect();
        if write.is_empty() {
            return Ok(held);
        }
        let ids: Vec<i64> = write.iter().map(|(c, _)| c.outbox_id).collect();
        let rows = ids.len();
        // Rows given back (a paused sink's buffer) are due now in the database only: the
        // next claim of their sink reads it, rather than waiting for its turn.
        let given_back: Vec<String> = write
            .iter()
            .filter(|(_, s)| matches!(s, Settlement::Release { .. }))
            .map(|(c, _)| c.sink.clone())
            .collect();
        // The rows stay settling until their outcomes are committed; then no claim can read
        // them as pending any more.
        let shared = self.shared.clone();
        let release: AfterJob = Box::new(move || {
            {
                let mut leases = shared.leases.lock();
                leases.release(&ids);
                for sink in &given_back {
                    if let Some(q) = leases.fresh.sinks.get_mut(sink) {
                        q.last_database_claim = 0;
                    }
                }
            }
            {
                let hook = shared.on_settled.lock();
                if let Some(f) = hook.as_ref() {
                    f();
                }
            }
        });
        let Some(engine) = &self.engine else {
            return Err(StoreError::Closed);
        };
        // Rows delivered to an unordered sink wait for the projector's next round: nobody
        // waits for their outcome (a read wakes it), and a row whose record is still queued
        // there is then written once, as delivered (`project::Settles`). Other outcomes (an
        // ordered session's next event waits for its settlement; a retry or a release; a
        // `respond` row's, whose `on_late` row is written with it) wake it.
        let wake = {
            let unordered = self.shared.fresh_sinks.lock().clone();
            !write.iter().all(|(c, s)| {
                matches!(s, Settlement::Delivered { .. })
                    && c.respond_to.is_none()
                    && unordered.contains(&c.sink)
            })
        };
        let (reply, rx) = oneshot::channel();
        let settles = project::Settles {
            items: write,
            reply,
            after: release,
        };
        self.queue_job(engine, ProjMsg::Settle(settles), wake)
            .await?;
        tokio::spawn(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(error = %e, rows,
                    "cannot write delivery outcomes; the rows come due again");
            }
        });
        Ok(held)
    }

    /// Re-queues the matching dead letters: found by a read, then re-queued
    /// `DEAD_LETTERS_PER_JOB` a projector job, so that replaying a long outage's dead letters
    /// does not hold acceptances back for the whole of it (not atomic: a stop in the middle
    /// leaves the rest dead, to be replayed again).
    pub(super) async fn replay(
        &self,
        f: DeadLetterFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        if dry_run {
            return self.read(move |c| outbox::count_dead(c, &f)).await;
        }
        self.by_dead_letter(f, DEAD_LETTERS_PER_JOB, |c, now, ids| {
            outbox::requeue(c, now, ids)
        })
        .await
    }

    /// Deletes the matching dead letters, `DEAD_LETTERS_PER_JOB` a projector job (as
    /// `replay`).
    pub(super) async fn purge(&self, f: DeadLetterFilter) -> Result<u64, StoreError> {
        self.by_dead_letter(f, DEAD_LETTERS_PER_JOB, |c, _, ids| {
            outbox::delete_dead(c, ids)
        })
        .await
    }

    /// Runs `each` on the matching dead letters' ids, `per_job` ids a projector job; returns
    /// the sum of what it returned.
    async fn by_dead_letter(
        &self,
        f: DeadLetterFilter,
        per_job: usize,
        each: DeadLetterWork,
    ) -> Result<u64, StoreError> {
        let ids = self.read_alone(move |c| outbox::dead_ids(c, &f)).await?;
        let mut n = 0;
        for chunk in ids.chunks(per_job.max(1)) {
            let chunk = chunk.to_vec();
            n += self.job(move |c, now, _| each(c, now, &chunk)).await?;
        }
        Ok(n)
    }

    pub(super) async fn dead_letters(
        &self,
        f: DeadLetterFilter,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError> {
        self.read(move |c| outbox::dead_letters(c, &f, limit)).await
    }

    pub(super) async fn session_timeline(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::TimelineEntry>, StoreError> {
        let session_id = session_id.to_string();
        self.read(move |c| read_timeline(c, &session_id, limit))
            .await
    }

    pub(super) async fn sink_counts(
        &self,
        sinks: Vec<String>,
    ) -> Result<Vec<SinkCounts>, StoreError> {
        self.read_on(&self.monitor, move |c| {
            outbox::sink_counts(c, crate::now_millis(), &sinks)
        })
        .await
    }

    /// Starts a pruning cycle now instead of at the next minute's (for tests: what expired
    /// is then pruned pass after pass while the store is idle).
    #[doc(hidden)]
    pub fn prune_now(&self) {
        if let Some(engine) = &self.engine {
            let _ = engine.projector.try_send(ProjMsg::Prune);
            self.shared.wake_projector();
        }
    }

    /// Waits until the database holds every record committed, and every job (settlements
    /// above all) queued, when this was called: what every read does first. The sessions the
    /// projector holds behind (`project::SESSIONS_EVERY`) are written too, so the database is
    /// whole: reads are rare next to events, and a read makes at most one extra write of them.
    pub async fn caught_up(&self) -> Result<(), StoreError> {
        self.wait_for_database(true).await?;
        let Some(engine) = &self.engine else {
            return Ok(());
        };
        let records = self.shared.acked.load(Ordering::SeqCst);
        if *self.shared.sessions_at.borrow() >= records {
            return Ok(());
        }
        // The flag is seen at the projector's next round if its queue is full now.
        self.shared.sessions_wanted.store(true, Ordering::SeqCst);
        let _ = engine.projector.try_send(ProjMsg::FlushSessions);
        self.shared.wake_projector();
        let mut written = self.shared.sessions_at.subscribe();
        let waited = tokio::time::timeout(CATCH_UP_WAIT, async {
            written.wait_for(|p| *p >= records).await.map(|_| ())
        })
        .await;
        caught_up_within(waited, "the sessions table")
    }

    /// Waits for the records committed so far and, with `jobs`, the jobs queued so far.
    async fn wait_for_database(&self, jobs: bool) -> Result<(), StoreError> {
        if self.engine.is_none() {
            return Ok(());
        }
        let records = self.shared.acked.load(Ordering::SeqCst);
        let jobs = if jobs {
            self.shared.jobs_submitted.load(Ordering::SeqCst)
        } else {
            0
        };
        self.wait_until(records, jobs).await
    }

    /// Waits until the database holds log record `records` and the projector has finished
    /// `jobs` jobs.
    async fn wait_until(&self, records: u64, jobs: u64) -> Result<(), StoreError> {
        if *self.shared.projected.borrow() < records || *self.shared.jobs_done.borrow() < jobs {
            self.shared.wake_projector();
        }
        let mut projected = self.shared.projected.subscribe();
        let mut done = self.shared.jobs_done.subscribe();
        let waited = tokio::time::timeout(CATCH_UP_WAIT, async {
            projected.wait_for(|p| *p >= records).await.map(|_| ())?;
            done.wait_for(|d| *d >= jobs).await.map(|_| ())
        })
        .await;
        caught_up_within(waited, "the database")
    }

    /// [`read`](Self::read) on a read connection of its own, opened for it: for a long read
    /// (a whole table, a long outage's dead letters), which would otherwise hold the shared
    /// reader, and the database claims that wait for it, as long as it lasts.
    async fn read_alone<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.caught_up().await?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path, SyncMode::Normal, true, SMALL_CACHE_KIB)?;
            f(&conn)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_on(&self.reader, f).await
    }

    /// [`Self::read`] on `conn` (`reader` or `monitor`).
    async fn read_on<T: Send + 'static>(
        &self,
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.caught_up().await?;
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock();
            f(&conn).map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    pub(super) async fn committed_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<super::CommittedEvent>, StoreError> {
        // Event ids are ULIDs (time first), and their numbers the rowids (schema 15): the
        // range starts a minute before `since_ms` (ids are made before their commit), and
        // commit times decide. A moved event (a negative rowid) is found by its id.
        let from =
            ulid::Ulid::from_parts(since_ms.saturating_sub(60_000).max(0) as u64, 0).to_string();
        let from_row = crate::event_id::row_of(&from).unwrap_or(0);
        self.read(move |c| {
            let mut st = c.prepare(COMMITTED_SINCE)?;
            let rows = st.query_map(
                rusqlite::params![from, since_ms, super::MAX_RECOVERED as i64, from_row],
                |r| {
                    Ok(super::CommittedEvent {
                        event_id: r.get(0)?,
                        correlation_id: r.get(1)?,
                        route: r.get(2)?,
                        session_id: r.get(3)?,
                        event_type: r.get(4)?,
                        state_version: r.get::<_, i64>(5)? as u64,
                        simulated: r.get::<_, i64>(6)? != 0,
                        committed_at: r.get(7)?,
                    })
                },
            )?;
            let mut events: Vec<super::CommittedEvent> = rows.collect::<rusqlite::Result<_>>()?;
            // And the events kept beside the database without a row (`beside`), in the same
            // order (at the limit, the ones with the lowest rowids: ids are made moments
            // before their commit).
            let beside = beside::committed_since(c, from_row, since_ms, super::MAX_RECOVERED)?;
            events.extend(beside.into_iter().map(|a| super::CommittedEvent {
                event_id: a.event_id,
                correlation_id: a.correlation_id,
                route: a.route,
                session_id: a.session_id,
                event_type: a.event_type,
                state_version: a.state_version,
                simulated: a.simulated,
                committed_at: a.at,
            }));
            events
                .sort_by(|x, y| (x.committed_at, &x.event_id).cmp(&(y.committed_at, &y.event_id)));
            events.truncate(super::MAX_RECOVERED);
            Ok(events)
        })
        .await
    }

    pub(super) async fn journey(&self, id: &str) -> Result<Option<Journey>, StoreError> {
        let id = id.to_string();
        if let Some(engine) = &self.engine {
            let keys = engine.keys.clone();
            return self
                .read(move |c| {
                    if let Some(j) = read_journey(c, &id)? {
                        return Ok(Some(j));
                    }
                    match keys.event_of(&id).map_err(keys::failed)? {
                        Some(event_id) => read_journey(c, &event_id),
                        None => Ok(None),
                    }
                })
                .await;
        }
        let log_dir = self.log_dir.clone();
        let keys_dir = keys::dir_of(&self.path);
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock();
            journey_with_tail(&conn, &log_dir, &keys_dir, &id)
        })
        .await
        .map_err(unavailable)?
    }

    /// How many outbox rows were written once, already delivered (their delivery was
    /// settled before the projector wrote them: `project::Settles`); for benchmarks.
    pub fn delivered_with_rows(&self) -> u64 {
        self.shared.delivered_with_rows.load(Ordering::Relaxed)
    }

    /// Calls `f` whenever settlements have been written (the delivery workers wake on it).
    pub fn on_settled(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.shared.on_settled.lock() = Some(Box::new(f));
    }

    /// Why the store cannot commit now, if it cannot (for `/readyz`).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Ready while the store's threads run, the log can be written and the database file
    /// answers a read; otherwise the cause. While the log's last write failed (a full disk,
    /// say), a probe file is written and synced beside it: once that works the store is ready
    /// again, so it recovers by itself when space returns even with no traffic to try. The
    /// check never waits behind the reader connection: a busy reader (a long admin query, a
    /// metrics scrape) is itself a database answering, and a probe must not time out behind
    /// it.
    pub(super) async fn readiness(&self) -> Result<(), NotReady> {
        if let Some(engine) = &self.engine {
            if !engine.alive.load(Ordering::SeqCst) {
                return Err(NotReady::Stopped);
            }
        }
        if let Some(why) = self.shared.log_health.failure() {
            let dir = self.log_dir.clone();
            let probe = tokio::task::spawn_blocking(move || probe_write(&dir))
                .await
                .unwrap_or_else(|e| Err(Cause::new(e)));
            match probe {
                Ok(()) => self.shared.log_health.recover(),
                Err(probe) => return Err(NotReady::LogFailing { why, probe }),
            }
        }
        if let Some(why) = self.shared.db_health.failure() {
            return Err(NotReady::DatabaseFailing(why));
        }
        let reader = self.reader.clone();
        let answers = tokio::task::spawn_blocking(move || match reader.try_lock() {
            // One page of the schema, from the file or its cache: quick.
            Some(conn) => conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok(),
            // Busy answering a query: it answers.
            None => true,
        })
        .await
        .unwrap_or(false);
        if answers {
            Ok(())
        } else {
            Err(NotReady::NoRead)
        }
    }

    /// Commits what is queued, applies it to the database, stops the threads and releases
    /// the store.
    pub(super) async fn close(&self) {
        if let Some(engine) = &self.engine {
            // The sequencer first (it flushes the log), then the projector (it applies what
            // the sequencer handed it), then the checkpointer (a last full checkpoint).
            let (tx, rx) = oneshot::channel();
            let queue = engine.queue.clone();
            let sent = tokio::task::spawn_blocking(move || queue.send(SeqMsg::Close(tx)).is_ok())
                .await
                .unwrap_or(false);
            if sent {
                let _ = rx.await;
            }
            join(&engine.sequencer_thread).await;
            let (tx, rx) = oneshot::channel();
            let projector = engine.projector.clone();
            self.shared.wake_projector();
            let sent =
                tokio::task::spawn_blocking(move || projector.send(ProjMsg::Close(tx)).is_ok())
                    .await
                    .unwrap_or(false);
            if sent {
                let _ = rx.await;
            }
            join(&engine.projector_thread).await;
            let checkpointer = engine.checkpointer.lock().take();
            if let Some((stop, h)) = checkpointer {
                stop.store(true, Ordering::SeqCst);
                h.thread().unpark();
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        }
        // Dropping the file releases the lock for the next gateway.
        self.lock.lock().take();
    }
}

/// Writes, syncs and removes a small file in `dir`: whether the disk takes writes now.
fn probe_write(dir: &Path) -> Result<(), Cause> {
    use std::io::Write as _;
    let path = dir.join(".probe");
    let written = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&path);
    written.map_err(Cause::new)
}

async fn join(handle: &Mutex<Option<JoinHandle<()>>>) {
    let h = handle.lock().take();
    if let Some(h) = h {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
}

/// Size the WAL file is truncated to after it starts over.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// A journey from the database or, for an event acknowledged and not yet applied there,
/// from the log's tail (its deliveries then all pending, with no attempt yet), for a process
/// attached to a store a gateway serves. A correlation id is looked up in the correlation
/// index on disk (`keys::Keys::read_only_event_of`) and in the log records after it, newest
/// first; when the index cannot say (a store with a tree) or changed while it was read,
/// every event is read instead (`scan_correlation`).
fn journey_with_tail(
    c: &Connection,
    log_dir: &Path,
    keys_dir: &Path,
    id: &str,
) -> Result<Option<Journey>, StoreError> {
    // The position first: whatever the database lacks after it is in the log.
    let after = project::projected(c).map_err(unavailable)?;
    if let Some(j) = read_journey(c, id).map_err(unavailable)? {
        return Ok(Some(j));
    }
    // The index cannot say when it cannot be read (its files changing faster than it is
    // read, or damaged: the gateway reports that itself); every event is read then.
    let indexed = keys::Keys::read_only_event_of(keys_dir, id).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot read the correlation index on disk");
        None
    });
    let from = match &indexed {
        Some((_, indexed_at)) => after.min(*indexed_at),
        None => {
            if let Some(j) = scan_correlation(c, id).map_err(unavailable)? {
                return Ok(Some(j));
            }
            after
        }
    };
    let mut found = newest_in_log(log_dir, from, id)?;
    if let Some((event_id, indexed_at)) = indexed {
        // The log after the index's position was read whole only if the index on disk did
        // not move meanwhile (the gateway removes segments once the index has them).
        if keys::Keys::read_only_applied(keys_dir).map_err(unavailable)? != Some(indexed_at) {
            if let Some(j) = scan_correlation(c, id).map_err(unavailable)? {
                return Ok(Some(j));
            }
            found = newest_in_log(log_dir, after, id)?;
        } else if found.is_none() {
            return match event_id {
                Some(event_id) => read_journey(c, &event_id).map_err(unavailable),
                None => Ok(None),
            };
        }
    }
    let Some(a) = found else {
        // Applied to the database while the log was read.
        return read_journey(c, id).map_err(unavailable);
    };
    if let Some(j) = read_journey(c, &a.event_id).map_err(unavailable)? {
        return Ok(Some(j));
    }
    let event: Value = serde_json::from_str(&a.body).unwrap_or(Value::String(a.body.clone()));
    Ok(Some(Journey {
        event,
        committed_at: outbox::rfc3339_ms(a.at),
        deliveries: a
            .rows
            .iter()
            .map(|r| Delivery {
                sink: r.sink.clone(),
                status: "pending".into(),
                attempts: Vec::new(),
            })
            .collect(),
    }))
}

/// The newest `Accept` record after `after` in the log whose event id or correlation id is
/// `id`.
fn newest_in_log(
    log_dir: &Path,
    after: u64,
    id: &str,
) -> Result<Option<Box<record::AcceptRecord>>, StoreError> {
    let mut found = None;
    log::read_after(log_dir, after, &mut |_, payload| {
        if let Ok(Record::Accept(a)) = Record::decode(payload) {
            if a.event_id == id || a.correlation_id == id {
                found = Some(a);
            }
        }
        Ok(())
    })
    .map_err(unavailable)?;
    Ok(found)
}

fn read_timeline(
    c: &Connection,
    session_id: &str,
    limit: usize,
) -> rusqlite::Result<Vec<crate::store::TimelineEntry>> {
    let limit = i64::try_from(limit.min(1000)).unwrap_or(1000);
    // Newest first: rows are numbered in the order the projector applies the log, which is
    // commit order. There is no index by session (it would take every event's insert to a
    // random page), so this reads back from the newest row and stops at the `limit`-th of
    // the session's: a session with recent events is found among the newest rows instead
    // of after reading the whole table (which ordering by version needed). A session whose
    // events are all old still reads back through every newer one.
    let mut st = c.prepare_cached(
        "SELECT event_id, correlation_id, route, event_type, state_version, committed_at, \
                rowid \
         FROM events WHERE session_id = ?1 ORDER BY rowid DESC LIMIT ?2",
    )?;
    let entry = |a: &record::AcceptRecord| crate::store::TimelineEntry {
        event_id: a.event_id.clone(),
        correlation_id: a.correlation_id.clone(),
        route: a.route.clone(),
        event_type: a.event_type.clone(),
        state_version: a.state_version,
        committed_at: outbox::rfc3339_ms(a.at),
        deliveries: Vec::new(),
        answer: None,
    };
    // (rowid, entry, whether its answer is still to be read: a row's is, a record's is not,
    // and the bounds of a record's outbox rows).
    type Found = (
        i64,
        crate::store::TimelineEntry,
        bool,
        (Option<i64>, Option<i64>),
    );
    let mut found: Vec<Found> = st
        .query_map(params![session_id, limit], |r| {
            Ok((
                r.get(6)?,
                crate::store::TimelineEntry {
                    event_id: r.get(0)?,
                    correlation_id: r.get(1)?,
                    route: r.get(2)?,
                    event_type: r.get(3)?,
                    state_version: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    committed_at: outbox::rfc3339_ms(r.get(5)?),
                    deliveries: Vec::new(),
                    answer: None,
                },
                true,
                (None, None),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    // The events kept beside the database without a row (`beside`), merged in rowid order.
    let limit = usize::try_from(limit).unwrap_or(1000);
    for (row, a) in beside::session_events(c, session_id, limit)? {
        let mut e = entry(&a);
        let between = outbox::rows_between(&a);
        e.answer = Some((a.status, a.answer));
        found.push((row, e, false, between));
    }
    found.sort_by_key(|(row, ..)| std::cmp::Reverse(*row));
    found.truncate(limit);
    // The rest by event id (both indexed), not by scanning the session's events again.
    let mut deliveries = c.prepare_cached(outbox::EVENT_ROWS)?;
    // In the event's row since schema 9, in `answers` before. (A status is missing only on
    // an answer of schema 7 whose key had gone by the upgrade.)
    let mut answer = c.prepare_cached(concat!(
        "SELECT answer_status, answer FROM events \
             WHERE rowid = ",
        event_row!("?1"),
        " AND event_id = ?1 AND answer IS NOT NULL \
             UNION ALL SELECT status, body FROM answers WHERE event_id = ?1 \
               AND status IS NOT NULL \
             LIMIT 1"
    ))?;
    let mut entries = Vec::with_capacity(found.len());
    for (_, mut e, from_row, (lo, hi)) in found {
        e.deliveries = deliveries
            .query_map(params![e.event_id, lo, hi], |r| Ok((r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if !from_row {
            entries.push(e);
            continue;
        }
        e.answer = answer
            .query_row(params![e.event_id], |r| {
                Ok((
                    u16::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    bytes::Bytes::from(r.get::<_, Vec<u8>>(1)?),
                ))
            })
            .optional()?;
        entries.push(e);
    }
    Ok(entries)
}

/// The newest event of a correlation id found by reading every event, newest first: for an
/// attached process when the correlation index on disk cannot say (a store that still has
/// its tree, which the serving gateway holds; see `journey_with_tail`).
fn scan_correlation(c: &Connection, id: &str) -> rusqlite::Result<Option<Journey>> {
    let in_rows: Option<(i64, String)> = c
        .query_row(
            "SELECT rowid, event_id FROM events WHERE correlation_id = ?1 \
             ORDER BY rowid DESC LIMIT 1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    // And among the events kept beside the database without a row (`beside`).
    let beside = beside::newest_of_correlation(c, id)?;
    match in_rows.into_iter().chain(beside).max() {
        Some((_, event_id)) => read_journey(c, &event_id),
        None => Ok(None),
    }
}

/// Moves the correlation index out of the database into `keys` (once: a database made
/// before the index moved holds it as `events_by_correlation`; a new one is made with it).
/// Its events are indexed in their commit order, and flushed, before the index is dropped:
/// a crash in between makes the next start do it again.
fn move_correlation_index(conn: &Connection, keys: &keys::Keys, now: i64) -> rusqlite::Result<()> {
    if !correlation_index(conn)? {
        return Ok(());
    }
    let (count, oldest): (i64, Option<i64>) =
        conn.query_row("SELECT count(*), min(committed_at) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if let Some(oldest) = oldest {
        tracing::info!(
            events = count,
            "moving the correlation index out of the database (once, after an upgrade)"
        );
        // Older than every generation the log writes to, so that those win.
        let started = oldest.min(now - 1);
        // A correlation's events in their commit order (the index's), so the last wins.
        let mut stmt = conn.prepare(
            "SELECT correlation_id, event_id FROM events ORDER BY correlation_id, committed_at",
        )?;
        let mut rows = stmt.query([])?;
        let mut chunk = Vec::with_capacity(BACKFILL_CHUNK);
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                chunk.push((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
            }
            if chunk.len() >= BACKFILL_CHUNK || (row.is_none() && !chunk.is_empty()) {
                keys.backfill_correlations(started, &chunk)
                    .map_err(keys::failed)?;
                chunk.clear();
            }
            if row.is_none() {
                break;
            }
        }
        keys.persist(crate::config::SyncMode::Full)
            .map_err(keys::failed)?;
    }
    conn.execute_batch("DROP INDEX events_by_correlation")
}

/// The events committed since `?2` (Unix ms), at most `?3`, from the id `?1` on (`?4` its
/// number): see `committed_since`.
const COMMITTED_SINCE: &str = "SELECT event_id, correlation_id, route, session_id, event_type, \
            state_version, simulated, committed_at \
     FROM events WHERE (rowid >= ?4 OR (rowid < 0 AND event_id >= ?1)) AND committed_at >= ?2 \
     ORDER BY committed_at, event_id LIMIT ?3";

/// Whether the database still holds the correlation index (made before schema 13).
fn correlation_index(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
                        WHERE type = 'index' AND name = 'events_by_correlation')",
        [],
        |r| r.get(0),
    )
}

/// Events indexed per batch when the correlation index moves (see `move_correlation_index`).
const BACKFILL_CHUNK: usize = 10_000;

/// An event's id, body and commit time, for `?1` its id.
const JOURNEY_EVENT: &str = concat!(
    "SELECT event_id, event_body(body, body_at, rowid), committed_at FROM events WHERE rowid = ",
    event_row!("?1"),
    " AND event_id = ?1"
);

fn read_journey(c: &Connection, id: &str) -> rusqlite::Result<Option<Journey>> {
    let row = c
        .query_row(JOURNEY_EVENT, params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    // An event without a row is kept beside the database (`beside`), with the bounds of its
    // outbox rows.
    let row = match row {
        Some((event_id, body, at)) => Some((event_id, body, at, (None, None))),
        None => beside::read_id(c, id)?.map(|a| {
            let between = outbox::rows_between(&a);
            (a.event_id, a.body, a.at, between)
        }),
    };
    let Some((event_id, body, committed_at, (lo, hi))) = row else {
        return Ok(None);
    };
    let event = crate::store::event_json(body);
    let mut stmt = c.prepare_cached(outbox::EVENT_ROWS)?;
    let rows = stmt
        .query_map(params![event_id, lo, hi], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for (id, sink, status) in rows {
        deliveries.push(Delivery {
            sink,
            status,
            attempts: outbox::attempts(c, id)?,
        });
    }
    Ok(Some(Journey {
        event,
        committed_at: outbox::rfc3339_ms(committed_at),
        deliveries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NormalisedEvent;
    use serde_json::json;

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig {
            data_dir: dir.to_path_buf(),
            ..StoreConfig::default()
        }
    }

    fn acceptance(key: &str, session: &str, sinks: &[&str]) -> Acceptance {
        Acceptance {
            idempotency_key: key.into(),
            event: NormalisedEvent::new(
                "flow-events",
                format!("corr-{key}"),
                "t".into(),
                session.into(),
                "u".into(),
                "flow.execution".into(),
                json!({"k": key}),
            ),
            answer: crate::store::decide::Answer::new(
                b"{\"status\":\"success\",\"data\":{\"processed\":true,\"stateVersion\":".to_vec(),
                b"}}".to_vec(),
            ),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            max_response_bytes: 1 << 20,
            spend: None,
            status: 200,
            respond: None,
        }
    }

    /// Claims one due row of `sink` and settles it delivered.
    fn deliver_one(rt: &tokio::runtime::Runtime, store: &SqliteStore, sink: &str) {
        let claimed = rt
            .block_on(store.claim(sink, 1, Duration::from_secs(60)))
            .expect("claim");
        let delivered = Settlement::Delivered {
            duration_ms: 1,
            result: None,
        };
        rt.block_on(store.settle_many(vec![(claimed[0].clone(), delivered)]))
            .expect("settle");
    }

    /// Maintenance settings with these windows (milliseconds; negative puts a cut-off in
    /// the future).
    fn maintenance(
        db: &Path,
        idempotency_ms: i64,
        session_ttl_ms: i64,
        retention_ms: i64,
    ) -> WriterSettings {
        let keys = keys::Keys::open(
            &keys::dir_of(db),
            86_400_000,
            86_400_000,
            crate::now_millis(),
        )
        .expect("keys");
        WriterSettings {
            wal_restart_wanted: Arc::new(AtomicBool::new(false)),
            windows: Windows {
                idempotency_ms,
                session_ttl_ms,
            },
            retention_ms,
            keys: Arc::new(keys),
            bodies: None,
            beside: false,
        }
    }

    /// Takes back what schema 11 added beside the outbox (whose new shape an older schema
    /// with no outbox rows cannot tell apart), for tests that go back to an older schema.
    /// Back past schemas 17, 15 and 11 (the events table stays without the index on the id:
    /// schema 15's rewrite copies it as it copies a table that has one).
    const BEFORE_SCHEMA_11: &str = "DROP TABLE events_moved; DROP TABLE event_runs; \
        ALTER TABLE events DROP COLUMN outbox_first; \
        ALTER TABLE events DROP COLUMN outbox_last; \
        ALTER TABLE log_position DROP COLUMN outbox_id_floor;";

    /// Opens a store in `dir`, lets `work` use it, closes it and returns its database's path.
    /// The steps of `sql`'s query plan (`EXPLAIN QUERY PLAN`'s detail column).
    fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect(sql);
        // Unbound parameters are NULL: the plan is the same.
        let mut rows = plan.raw_query();
        let mut steps: Vec<String> = Vec::new();
        while let Some(r) = rows.next().expect(sql) {
            steps.push(r.get(3).expect(sql));
        }
        steps
    }

    fn used_then_closed(
        dir: &Path,
        rt: &tokio::runtime::Runtime,
        work: impl FnOnce(&SqliteStore),
    ) -> PathBuf {
        let store = SqliteStore::open(&config(dir)).expect("open");
        work(&store);
        rt.block_on(store.close());
        store.path().to_path_buf()
    }

    /// A closed store of two events: `a` (no sink) and `f` (a pending row for `orders`).
    fn with_a_and_f(dir: &Path, rt: &tokio::runtime::Runtime) -> PathBuf {
        used_then_closed(dir, rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s-a", &[])))
                .expect("commit");
            rt.block_on(store.accept(acceptance("f", "s-f", &["orders"])))
                .expect("commit");
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn the_due_query_is_planned_once_not_at_every_claim() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        for i in 0..3 {
            let out = rt.block_on(store.accept(acceptance(&format!("k{i}"), "s1", &["a"])));
            assert!(
                matches!(out, Ok(AcceptOutcome::Committed { .. })),
                "{out:?}"
            );
        }
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(store.path()).expect("open");
        let held = std::collections::HashSet::new();
        // Every parameter bound anew at each claim, as the delivery path does.
        for (i, limit) in [1usize, 2, 3, 2].into_iter().enumerate() {
            let i = i as i64;
            let now = crate::now_millis() + i;
            let rows = outbox::due(&c, now, "a", limit, &held, (i + 1, i)).expect("due");
            assert_eq!(rows.len(), limit, "the limit holds");
        }
        let st = c.prepare_cached(outbox::DUE).expect("cached");
        assert_eq!(
            st.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "SQLite planned the due query again for new parameters"
        );
    }

    #[test]
    fn commit_writes_event_session_idempotency_and_one_outbox_row_per_sink() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        let out = rt.block_on(store.accept(acceptance("k1", "s1", &["a", "b"])));
        let Ok(AcceptOutcome::Committed {
            state_version,
            body,
            ..
        }) = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(state_version, 1);
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["data"]["stateVersion"], 1);
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(store.path()).expect("open");
        add_event_body_function(&c, store.path()).expect("function");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        assert_eq!(n("PRAGMA page_size"), PAGE_BYTES, "a new database's pages");
        let event_id: String = c
            .query_row("SELECT event_id FROM events", [], |r| r.get(0))
            .expect("event");
        assert_eq!(
            store.key_entry("k1").map(|k| k.event_id),
            Some(event_id.clone())
        );
        assert_eq!(
            n("SELECT count(*) FROM idempotency"),
            0,
            "keys are in `keys`, not the database"
        );
        assert_eq!(
            n("SELECT state_version FROM sessions WHERE session_id = 's1'"),
            1
        );
        assert_eq!(n("SELECT count(*) FROM outbox WHERE status = 'pending'"), 2);
        let stored: String = c
            .query_row(
                "SELECT event_body(body, body_at, rowid) FROM events",
                [],
                |r| r.get(0),
            )
            .expect("body");
        let stored: Value = serde_json::from_str(&stored).expect("json");
        assert_eq!(stored["stateVersion"], 1);
    }

    #[test]
    fn a_store_opened_for_reading_reads_beside_its_owner_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = SqliteStore::open_reading(&config(dir.path())).map(|_| ());
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| matches!(e, OpenError::Refused(m) if m.contains("no store at"))),
            "{missing:?}"
        );
        assert!(
            !dir.path().join("cognihook.db").exists(),
            "reading creates nothing"
        );
        let owner = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        rt.block_on(owner.accept(acceptance("k1", "s1", &["a"])))
            .expect("accept");
        let reading = SqliteStore::open_reading(&config(dir.path())).expect("open for reading");
        // Acknowledged by the owner: in the database or still in its log's tail, either way.
        let journey = rt
            .block_on(reading.journey("corr-k1"))
            .expect("journey")
            .expect("found");
        assert_eq!(journey.event["sessionId"], "s1");
        let refused = rt.block_on(reading.forget_session("s1".into()));
        assert!(
            refused.is_err(),
            "a reading store writes nothing: {refused:?}"
        );
        let still = rt.block_on(owner.journey("corr-k1")).expect("journey");
        assert!(still.is_some_and(|j| j.event["sessionId"] == "s1"));
    }

    #[test]
    fn an_attached_reader_finds_a_correlation_id_in_the_index_on_disk_and_the_log_after_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let with = |key: &str, correlation_id: &str| {
            let mut a = acceptance(key, "s1", &[]);
            a.event.correlation_id = correlation_id.into();
            a
        };
        let (older, only) = (with("k-older", "corr-x"), with("k-only", "corr-only"));
        let only_id = only.event.event_id.clone();
        // Closing writes the keys' runs and their manifest with the position.
        let path = used_then_closed(dir.path(), &rt, |store| {
            for a in [older, only] {
                rt.block_on(store.accept(a)).expect("accept");
            }
        });
        let applied = keys::Keys::read_only_applied(&keys::dir_of(&path)).expect("manifest");
        assert!(applied.is_some(), "the index on disk has a position");
        // A newer event of the same correlation id, in the log after that position.
        let owner = SqliteStore::open(&config(dir.path())).expect("open");
        let newer = with("k-newer", "corr-x");
        let newer_id = newer.event.event_id.clone();
        rt.block_on(owner.accept(newer)).expect("accept");
        // Reading every event would no longer find either correlation id.
        let sql = Connection::open(&owner.path).expect("sql");
        sql.busy_timeout(Duration::from_secs(10)).expect("timeout");
        sql.execute("UPDATE events SET correlation_id = 'moved'", [])
            .expect("update");
        let reading = SqliteStore::open_reading(&config(dir.path())).expect("open for reading");
        let found = |id: &str| {
            rt.block_on(reading.journey(id))
                .expect("journey")
                .map(|j| j.event["eventId"].as_str().unwrap_or_default().to_string())
        };
        assert_eq!(found("corr-only"), Some(only_id), "from the index's runs");
        assert_eq!(
            found("corr-x"),
            Some(newer_id),
            "the newest, from the log or the runs"
        );
        assert_eq!(found("corr-unknown"), None);
    }

    #[test]
    fn an_attached_reader_reads_every_event_when_the_index_on_disk_cannot_say() {
        reads_every_event_when_the_index_on_disk_cannot_say();
    }

    #[test]
    fn an_attached_reader_reads_every_event_kept_beside_when_the_index_on_disk_cannot_say() {
        KEEP_BESIDE.with(|k| k.set(true));
        reads_every_event_when_the_index_on_disk_cannot_say();
    }

    fn reads_every_event_when_the_index_on_disk_cannot_say() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let owner = SqliteStore::open(&config(dir.path())).expect("open");
        let a = acceptance("k1", "s1", &[]);
        let id = a.event.event_id.clone();
        rt.block_on(owner.accept(a)).expect("accept");
        rt.block_on(owner.caught_up()).expect("applied");
        // Without the hash secret on disk the runs cannot be searched (the owner has it in
        // memory); the reader falls back to the events table.
        std::fs::remove_file(keys::dir_of(&owner.path).join("secret")).expect("secret");
        let reading = SqliteStore::open_reading(&config(dir.path())).expect("open for reading");
        let journey = rt
            .block_on(reading.journey("corr-k1"))
            .expect("journey")
            .expect("found by reading the events");
        assert_eq!(journey.event["eventId"], id.as_str());
        assert!(rt
            .block_on(reading.journey("corr-unknown"))
            .expect("journey")
            .is_none());
    }

    #[test]
    fn a_store_of_another_schema_is_refused_by_attached_and_reading_opens_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tmp");
        let owner = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        rt.block_on(owner.accept(acceptance("k1", "s1", &["a"])))
            .expect("accept");
        let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
        let ours = MIGRATIONS.len();
        let refusals = |version: usize| {
            db.pragma_update(None, "user_version", version)
                .expect("user_version");
            // The owner holds the store, so `open` attaches.
            [
                SqliteStore::open(&config(dir.path())).map(|_| ()),
                SqliteStore::open_reading(&config(dir.path())).map(|_| ()),
            ]
        };
        // A gateway of the previous version serves the store.
        for refused in refusals(ours - 1) {
            assert!(
                refused.as_ref().is_err_and(|e| matches!(e, OpenError::Refused(m)
                    if m.contains(&format!("has schema {}, older than this cognihook's {ours}", ours - 1))
                        && m.contains("cognihook serve"))),
                "{refused:?}"
            );
        }
        for refused in refusals(ours + 1) {
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| matches!(e, OpenError::Refused(m)
                    if m.contains(&format!("has schema {}, newer", ours + 1)))),
                "{refused:?}"
            );
        }
        for opened in refusals(ours) {
            assert!(opened.is_ok(), "{opened:?}");
        }
        let reading = SqliteStore::open_reading(&config(dir.path())).expect("open for reading");
        let journey = rt.block_on(reading.journey("corr-k1")).expect("journey");
        assert!(journey.is_some_and(|j| j.event["sessionId"] == "s1"));
    }

    #[test]
    fn a_store_of_a_newer_schema_is_refused_by_its_gateway_with_what_to_do_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        rt.block_on(store.accept(acceptance("k1", "s1", &["a"])))
            .expect("accept");
        rt.block_on(store.close());
        drop(store);
        let newer = MIGRATIONS.len() + 1;
        let db = rusqlite::Connection::open(dir.path().join("cognihook.db")).expect("db");
        db.pragma_update(None, "user_version", newer)
            .expect("user_version");
        let refused = SqliteStore::open(&config(dir.path())).map(|_| ());
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| matches!(e, OpenError::Refused(m)
                if m.contains(&format!("has schema {newer}, newer than this cognihook's {}",
                    MIGRATIONS.len()))
                    && m.contains("use the version that wrote it"))),
            "{refused:?}"
        );
        let version: usize = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, newer, "the refused store is not written");
        let events: i64 = db
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("events");
        assert_eq!(events, 1);
    }

    #[test]
    fn duplicate_returns_original_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        let first = rt.block_on(store.accept(acceptance("k", "s", &["a"])));
        let Ok(AcceptOutcome::Committed { body, .. }) = first else {
            panic!("{first:?}")
        };
        let again = rt.block_on(store.accept(acceptance("k", "s", &["a"])));
        assert_eq!(
            again,
            Ok(AcceptOutcome::Duplicate {
                status: 200,
                body,
                correlation_id: "corr-k".into()
            })
        );
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(store.path()).expect("open");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        assert_eq!(n("SELECT count(*) FROM outbox"), 1);
        assert_eq!(n("SELECT state_version FROM sessions"), 1);
    }

    #[test]
    fn too_large_response_commits_nothing_and_the_group_goes_on() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(SqliteStore::open(&config(dir.path())).expect("open"));
        let rt = runtime();
        let mut big = acceptance("big", "s", &["a"]);
        big.max_response_bytes = 10;
        let (r1, r2) = rt.block_on(async {
            tokio::join!(
                store.accept(big),
                store.accept(acceptance("ok", "s", &["a"]))
            )
        });
        assert!(
            matches!(r1, Err(StoreError::ResponseTooLarge { .. })),
            "{r1:?}"
        );
        assert!(
            matches!(
                r2,
                Ok(AcceptOutcome::Committed {
                    state_version: 1,
                    ..
                })
            ),
            "{r2:?}"
        );
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(store.path()).expect("open");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        let event_id: String = c
            .query_row("SELECT event_id FROM events", [], |r| r.get(0))
            .expect("event");
        assert_eq!(store.key_entry("ok").map(|k| k.event_id), Some(event_id));
        assert_eq!(
            store.key_entry("big"),
            None,
            "the refused event left no key"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_threads_take_the_configured_niceness() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = StoreConfig {
            background_nice: 7,
            ..config(dir.path())
        };
        let store = SqliteStore::open(&config).expect("open");
        // Thread names are cut to 15 bytes by the kernel. A thread takes its name, and ours
        // lower themselves, as they start, which may be just after `open` returns.
        let settled = |name: &str, done: &dyn Fn(&[i32]) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut found = crate::priority::niceness_of(name);
            while !done(&found) && std::time::Instant::now() < deadline {
                std::thread::yield_now();
                found = crate::priority::niceness_of(name);
            }
            found
        };
        // (A store made since schema 14 has no key tree, so no flusher or compactor.)
        for name in ["cognihook-check", "cognihook-keys-"] {
            let found = settled(name, &|n| n.contains(&7));
            assert!(found.contains(&7), "{name}: {found:?}");
        }
        // The request path keeps its priority, and so does the projector it waits on.
        for name in ["cognihook-write", "cognihook-proje"] {
            let found = settled(name, &|n| !n.is_empty());
            assert!(
                !found.is_empty() && !found.contains(&7),
                "{name}: {found:?}"
            );
        }
        runtime().block_on(store.close());
    }

    #[test]
    fn journey_found_by_event_id_and_by_correlation_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(&config(dir.path())).expect("open"),
        ));
        let rt = runtime();
        let a = acceptance("k", "s", &["orders"]);
        let id = a.event.event_id.clone();
        rt.block_on(store.accept(a)).expect("commit");
        let by_id = rt
            .block_on(store.journey(&id))
            .expect("read")
            .expect("found");
        assert_eq!(by_id.event["eventId"], id.as_str());
        assert_eq!(by_id.deliveries.len(), 1);
        assert_eq!(by_id.deliveries[0].status, "pending");
        let by_corr = rt
            .block_on(store.journey("corr-k"))
            .expect("read")
            .expect("found");
        assert_eq!(by_corr.event["eventId"], id.as_str());
        assert!(rt.block_on(store.journey("nope")).expect("read").is_none());
        let counts = rt
            .block_on(store.sink_counts(&["orders".to_string()]))
            .expect("counts");
        assert_eq!(counts[0].pending, 1);
    }

    #[test]
    fn an_event_is_found_by_the_number_in_its_id_and_an_id_without_a_free_number_is_moved() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let made = acceptance("made", "s", &["orders"]);
        let made_id = made.event.event_id.clone();
        // Ids not made by this version: one sharing `made`'s number (an id made before
        // schema 15 is random after its time: 13 digits are the first 65 bits), one no ULID.
        let mut twin = acceptance("twin", "s", &["orders"]);
        let tail = if made_id.ends_with('0') { "1" } else { "0" };
        twin.event.event_id = format!("{}{}", &made_id[..13], tail.repeat(13));
        let twin_id = twin.event.event_id.clone();
        let mut text = acceptance("text", "s", &["orders"]);
        text.event.event_id = "not-a-ulid".into();
        // One more sharing it, without outbox rows: only its age keeps it.
        let mut lone = acceptance("lone", "s", &[]);
        let tail = if made_id.ends_with('2') { "3" } else { "2" };
        lone.event.event_id = format!("{}{}", &made_id[..13], tail.repeat(13));
        let ids = [made_id.clone(), twin_id.clone(), "not-a-ulid".to_string()];
        let path = used_then_closed(dir.path(), &rt, |store| {
            for a in [made, twin, text, lone] {
                rt.block_on(store.accept(a)).expect("commit");
            }
        });
        let conn = open_connection(&path, SyncMode::Full, false, 1024).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(
            n("SELECT count(*) FROM pragma_index_list('events')"),
            0,
            "no index"
        );
        let row_of = |id: &str| {
            conn.query_row("SELECT rowid FROM events WHERE event_id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .expect(id)
        };
        assert_eq!(Some(row_of(&made_id)), crate::event_id::row_of(&made_id));
        assert_eq!(
            (row_of(&twin_id), row_of("not-a-ulid")),
            (-1, -2),
            "the next negative rowids"
        );
        assert_eq!(n("SELECT count(*) FROM events_moved"), 3);
        // Every lookup by id reads one row by rowid, never the whole table, and no statement
        // has SQLite build an index of a whole table for itself each time it runs.
        for sql in [
            outbox::CLAIMED_EVENT,
            outbox::EVENT_ROWS,
            outbox::DELIVERED_BEFORE,
            project::EXPIRED_EVENTS,
            COMMITTED_SINCE,
            JOURNEY_EVENT,
        ] {
            let steps = query_plan(&conn, sql);
            assert!(
                !steps
                    .iter()
                    .any(|s| s.starts_with("SCAN e") || s.contains("AUTOMATIC")),
                "{sql}: {steps:?}"
            );
        }
        drop(conn);

        // Each is found by its id: its journey, and its claim (read from the database, the
        // store being opened again).
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(&config(dir.path())).expect("reopen"),
        ));
        for id in &ids {
            let j = rt.block_on(store.journey(id)).expect("read").expect(id);
            assert_eq!(j.event["eventId"], id.as_str());
            assert_eq!(j.deliveries.len(), 1, "{id}");
        }
        let claimed = rt
            .block_on(store.claim("orders", 10, Duration::from_secs(60)))
            .expect("claim");
        let mut got: Vec<(String, String)> = claimed
            .iter()
            .map(|c| (c.event_id.clone(), c.correlation_id.clone()))
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = ids
            .iter()
            .zip(["corr-made", "corr-twin", "corr-text"])
            .map(|(id, c)| (id.clone(), c.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want);
        let delivered = Settlement::Delivered {
            duration_ms: 1,
            result: None,
        };
        rt.block_on(
            store.settle_many(
                claimed
                    .into_iter()
                    .map(|c| (c, delivered.clone()))
                    .collect(),
            ),
        )
        .expect("settle");
        rt.block_on(store.close());

        // Delivered and young, all stay, with their rows: a moved event's negative rowid is
        // not its age.
        let conn = Connection::open(&path).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        let defaults = maintenance(&path, 86_400_000, 86_400_000, 86_400_000);
        project::maintain(&conn, &defaults, &mut project::MaintenanceCursor::default());
        drop(defaults);
        assert_eq!(n("SELECT count(*) FROM events"), 4);
        assert_eq!(n("SELECT count(*) FROM outbox"), 3);
        // Expired, the ULIDs go (by rowid and by id), and the moved one's entry with it;
        // the text id sorts after every ULID, as before schema 15.
        let expired = maintenance(&path, -7_200_000, -60_000, -60_000);
        project::maintain(&conn, &expired, &mut project::MaintenanceCursor::default());
        assert_eq!(
            n("SELECT count(*) FROM events WHERE event_id = 'not-a-ulid'"),
            1
        );
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        assert_eq!(
            n("SELECT count(*) FROM events_moved WHERE event_id = 'not-a-ulid'"),
            1
        );
        assert_eq!(n("SELECT count(*) FROM events_moved"), 1);
    }

    #[test]
    fn opening_a_store_puts_the_next_event_ids_number_past_every_row_it_holds() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        // An event whose id is an hour ahead (as after the clock was set back).
        let ahead = u64::try_from(crate::now_millis() + 3_600_000).expect("time");
        let mut a = acceptance("ahead", "s", &[]);
        a.event.event_id = ulid::Ulid::from_parts(ahead, 0).to_string();
        let top = crate::event_id::row_of(&a.event.event_id).expect("a ULID");
        used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(a)).expect("commit");
        });
        let next = crate::event_id::row_of(&crate::event_id::new_event_id()).expect("a ULID");
        assert!(next < top, "the clock has not reached it: {next} {top}");
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let next = crate::event_id::row_of(&crate::event_id::new_event_id()).expect("a ULID");
        assert!(next > top, "{next} {top}");
        rt.block_on(store.close());
    }

    #[test]
    fn an_upgrade_to_schema_15_numbers_every_event_and_moves_those_whose_number_is_taken() {
        let mut conn = Connection::open_in_memory().expect("database");
        migrate_to(&mut conn, 14);
        let made = crate::event_id::new_event_id();
        let twin = format!("{}{}", &made[..13], "Z".repeat(13));
        let ids = [
            made.as_str(),
            "e1",
            twin.as_str(),
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ];
        for (i, id) in ids.iter().enumerate() {
            conn.execute(
                "INSERT INTO events (event_id, correlation_id, route, session_id, event_type, \
                                     state_version, simulated, received_at, committed_at, \
                                     body) VALUES (?1, ?2, 'r', 's', 't', 1, 0, 'x', ?3, '{}')",
                params![id, format!("c{i}"), i as i64],
            )
            .expect("event");
        }
        migrate(&mut conn, 14).expect("schema 15");
        let rows: Vec<(String, i64, String)> = conn
            .prepare("SELECT event_id, rowid, correlation_id FROM events ORDER BY rowid")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let number = |id: &str| crate::event_id::row_of(id).expect(id);
        // The first with a number keeps it; the rest get negative rowids in the old order.
        let want = [
            (twin.clone(), -2, "c2".to_string()),
            ("e1".to_string(), -1, "c1".to_string()),
            (
                "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string(),
                number("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
                "c3".to_string(),
            ),
            (made.clone(), number(&made), "c0".to_string()),
        ];
        assert_eq!(rows, want);
        let moved: i64 = conn
            .query_row("SELECT count(*) FROM events_moved", [], |r| r.get(0))
            .expect("count");
        assert_eq!(moved, 2);
        for (id, _, correlation) in &want {
            let found: String = conn
                .query_row(
                    concat!(
                        "SELECT correlation_id FROM events WHERE rowid = ",
                        event_row!("?1"),
                        " AND event_id = ?1"
                    ),
                    [id],
                    |r| r.get(0),
                )
                .expect(id);
            assert_eq!(&found, correlation);
        }
    }

    /// Runs the first `version` migrations on `conn`.
    fn migrate_to(conn: &mut Connection, version: usize) {
        add_functions(conn).expect("functions");
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", version)
            .expect("version");
    }

    #[test]
    fn an_event_whose_correlation_id_is_its_own_id_is_found_by_it_without_an_index_entry() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let mut own = acceptance("own", "s", &[]);
        own.event.correlation_id = own.event.event_id.clone();
        let own_id = own.event.event_id.clone();
        let given = acceptance("given", "s", &[]);
        let given_id = given.event.event_id.clone();
        rt.block_on(store.accept(own)).expect("commit");
        rt.block_on(store.accept(given)).expect("commit");
        rt.block_on(store.caught_up()).expect("caught up");
        let keys = &store.engine.as_ref().expect("owns the store").keys;
        assert_eq!(
            keys.event_of(&own_id).expect("read"),
            None,
            "no correlation entry for an event's own id"
        );
        assert_eq!(
            keys.event_of("corr-given").expect("read"),
            Some(given_id),
            "a correlation id the caller gave has its entry"
        );
        let found = rt
            .block_on(store.journey(&own_id))
            .expect("read")
            .expect("found by its id");
        assert_eq!(found.event["correlationId"], own_id.as_str());
        rt.block_on(store.close());
    }

    #[test]
    fn the_oldest_pending_age_is_that_of_the_oldest_row_still_pending() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        for k in ["o1", "o2", "o3"] {
            rt.block_on(store.accept(acceptance(k, "s", &["a"])))
                .expect("commit");
        }
        // Age the rows: 300 s, 200 s and 100 s old, in the order they were written.
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(store.path()).expect("open");
        let now = crate::now_millis();
        for (n, age_s) in [(1, 300), (2, 200), (3, 100)] {
            c.execute(
                "UPDATE outbox SET created_at = ?1 WHERE id = (SELECT id FROM outbox ORDER BY id \
                 LIMIT 1 OFFSET ?2)",
                params![now - age_s * 1000, n - 1],
            )
            .expect("age");
        }
        let age = |store: &SqliteStore| {
            rt.block_on(store.sink_counts(vec!["a".into()]))
                .expect("counts")[0]
                .oldest_pending_age_seconds
        };
        let first = age(&store);
        assert!((300.0..330.0).contains(&first), "{first}");
        deliver_one(&rt, &store, "a");
        let next = age(&store);
        assert!((200.0..230.0).contains(&next), "{next}");
        rt.block_on(store.close());
    }

    #[test]
    fn the_outbox_is_counted_on_a_connection_of_its_own_while_the_reader_is_busy() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        for k in ["o1", "o2"] {
            rt.block_on(store.accept(acceptance(k, "s", &["a"])))
                .expect("commit");
        }
        // The reader claims and admin reads share, held as by a long query.
        let busy = store.reader.lock();
        let counts = rt
            .block_on(async {
                let counts = store.sink_counts(vec!["a".into()]);
                tokio::time::timeout(Duration::from_secs(30), counts).await
            })
            .expect("counted without waiting for the reader")
            .expect("counts");
        assert_eq!((counts[0].pending, counts[0].dead_letters), (2, 0));
        drop(busy);
        rt.block_on(store.close());
    }

    #[test]
    fn a_schema_3_database_upgrades_and_its_rows_follow_the_sinks_ordering() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = config(dir.path()).sqlite_path().expect("path");
        std::fs::create_dir_all(dir.path()).expect("dir");
        {
            let c = Connection::open(&path).expect("open");
            for sql in &MIGRATIONS[..3] {
                c.execute_batch(sql).expect("old schema");
            }
            c.pragma_update(None, "user_version", 3).expect("version");
            for (id, n) in [("01A", 1), ("01B", 2)] {
                c.execute(
                    "INSERT INTO events VALUES (?1, 'c', 'r', 's', 't', ?2, 0, 'x', 0, '{}')",
                    params![id, n],
                )
                .expect("event");
                c.execute(
                    "INSERT INTO outbox (event_id, sink, route, session_id, next_attempt_at, \
                                         created_at) VALUES (?1, 'a', 'r', 's', 0, 0)",
                    params![id],
                )
                .expect("row");
            }
        }
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("upgrade");
        let c = Connection::open(&path).expect("open");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("PRAGMA user_version"), MIGRATIONS.len() as i64);
        assert_eq!(
            n("PRAGMA page_size"),
            4096,
            "an existing database keeps its page size"
        );
        assert_eq!(
            n("SELECT count(*) FROM sqlite_master WHERE name = 'outbox_by_session'"),
            0
        );
        rt.block_on(store.configure_sinks(vec![("a".into(), true)]))
            .expect("configure");
        let claimed = rt
            .block_on(store.claim("a", 10, Duration::from_secs(60)))
            .expect("claim");
        let ids: Vec<_> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(
            ids,
            ["01A"],
            "the session's rows from before the upgrade go in order"
        );
        rt.block_on(store.close());
    }

    #[test]
    fn readiness_does_not_wait_behind_a_busy_reader() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        assert_eq!(rt.block_on(store.readiness()), Ok(()));
        // A long read holds the reader connection; the probe answers anyway (before this
        // check it waited for the lock, here for ever: the bound only turns a hang into a
        // failure).
        let held = store.reader.lock();
        let answered = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), store.readiness()).await
        });
        assert_eq!(answered, Ok(Ok(())));
        drop(held);
        rt.block_on(store.close());
    }

    #[test]
    fn readiness_names_a_failed_write_and_comes_back_once_the_disk_takes_writes() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        assert_eq!(rt.block_on(store.readiness()), Ok(()));
        // As after a commit that failed for a full disk.
        store.shared.log_health.fail(&StoreError::unavailable(
            "cannot write the store's log: No space left on device",
        ));
        // The log directory takes no write (the probe's file cannot be created: a directory
        // stands in its place): still not ready, and the answer says why.
        let probe = dir.path().join("cognihook.log").join(".probe");
        std::fs::create_dir(&probe).expect("block the probe");
        let why = rt.block_on(store.readiness()).expect_err("not ready");
        let why = why.to_string();
        assert!(why.contains("No space left on device"), "{why}");
        assert!(why.contains("probe write fails too"), "{why}");
        std::fs::remove_dir(&probe).expect("unblock");
        // Writes work again: ready, without any event having been tried.
        assert_eq!(rt.block_on(store.readiness()), Ok(()));
        assert_eq!(rt.block_on(store.readiness()), Ok(()));
        rt.block_on(store.close());
    }

    #[test]
    fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        {
            let store = SqliteStore::open(&config(dir.path())).expect("open");
            rt.block_on(store.accept(acceptance("k", "s", &[])))
                .expect("commit");
            rt.block_on(store.close());
        }
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let out = rt
            .block_on(store.accept(acceptance("k2", "s", &[])))
            .expect("commit");
        assert!(matches!(
            out,
            AcceptOutcome::Committed {
                state_version: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_repeat_after_the_idempotency_window_is_a_new_event() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = config(dir.path());
        cfg.idempotency_window = Duration::from_millis(50);
        let store = SqliteStore::open(&cfg).expect("open");
        let rt = runtime();
        rt.block_on(store.accept(acceptance("k", "s", &[])))
            .expect("commit");
        rt.block_on(store.caught_up()).expect("caught up");
        let first = store.key_entry("k").expect("the key");
        // The window passes (the clock is the condition).
        while crate::now_millis() <= first.created_at + 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = rt
            .block_on(store.accept(acceptance("k", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                out,
                AcceptOutcome::Committed {
                    state_version: 2,
                    ..
                }
            ),
            "{out:?}"
        );
        rt.block_on(store.caught_up()).expect("caught up");
        let second = store.key_entry("k").expect("the key");
        assert_ne!(
            second.event_id, first.event_id,
            "the key names the new event"
        );
    }

    #[test]
    fn expired_session_starts_again_at_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = config(dir.path());
        cfg.session_ttl = Duration::from_millis(1);
        let store = SqliteStore::open(&cfg).expect("open");
        let rt = runtime();
        rt.block_on(store.accept(acceptance("a", "s", &[])))
            .expect("commit");
        // The sequencer keeps the session's last write in memory (its row is not read
        // again), so the clock itself must pass the TTL: wait until it has.
        let written = crate::now_millis();
        while crate::now_millis() <= written + 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = rt
            .block_on(store.accept(acceptance("b", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                out,
                AcceptOutcome::Committed {
                    state_version: 1,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_session_row_pruned_after_its_version_was_decided_is_written_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        for key in ["a", "b"] {
            rt.block_on(store.accept(acceptance(key, "s", &[])))
                .expect("commit");
        }
        rt.block_on(store.caught_up()).expect("caught up");
        // As maintenance would have: the row goes while the sequencer still holds version 2.
        let c = Connection::open(store.path()).expect("open");
        c.execute("DELETE FROM sessions", []).expect("prune");
        let out = rt
            .block_on(store.accept(acceptance("c", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                out,
                AcceptOutcome::Committed {
                    state_version: 3,
                    ..
                }
            ),
            "{out:?}"
        );
        rt.block_on(store.caught_up()).expect("caught up");
        let version: i64 = c
            .query_row(
                "SELECT state_version FROM sessions WHERE session_id = 's'",
                [],
                |r| r.get(0),
            )
            .expect("the row is back");
        assert_eq!(version, 3);
        rt.block_on(store.close());
    }

    #[test]
    fn an_event_and_its_answer_outlive_the_idempotency_key_by_an_hour_even_past_retention() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s1", &[])))
                .expect("commit");
        });
        let conn = Connection::open(&path).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(
            n("SELECT count(*) FROM answers"),
            0,
            "the answer is in the row"
        );
        assert_eq!(
            n("SELECT count(*) FROM events WHERE answer IS NOT NULL AND answer_status = 200"),
            1
        );
        // Retention over and a window whose cut-off is a minute from now: the key has
        // expired; its event, which holds the answer, is kept an hour longer.
        let settings = |window_ms: i64| maintenance(&path, window_ms, 86_400_000, -60_000);
        let prune = |s: &WriterSettings| {
            project::maintain(&conn, s, &mut project::MaintenanceCursor::default());
        };
        let expired = settings(-60_000);
        assert!(expired.keys.get("a").expect("read").is_some());
        prune(&expired);
        assert_eq!(expired.keys.get("a").expect("read"), None, "the key went");
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        drop(expired);
        // Two hours from now: past the margin too.
        prune(&settings(-7_200_000));
        assert_eq!(n("SELECT count(*) FROM events"), 0);
    }

    #[test]
    fn events_kept_beside_the_database_answer_duplicates_journeys_and_timelines() {
        KEEP_BESIDE.with(|k| k.set(true));
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            for (key, session, sinks) in [
                ("b1", "sb", &[][..]),
                ("b2", "other", &[]),
                ("b3", "sb", &["orders"][..]),
                ("b4", "sb", &[]),
            ] {
                rt.block_on(store.accept(acceptance(key, session, sinks)))
                    .expect("commit");
            }
        });
        let db = Connection::open(&path).expect("db");
        let rows: Vec<String> = db
            .prepare("SELECT correlation_id FROM events")
            .expect("query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(
            rows.is_empty(),
            "the event with an outbox row is kept beside too (schema 19): {rows:?}"
        );
        add_event_body_function(&db, &path).expect("functions");
        let all: Vec<(i64, String, String, i64)> = db
            .prepare("SELECT row, correlation_id, body, state_version FROM all_events ORDER BY row")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let corr: Vec<&str> = all.iter().map(|(_, c, _, _)| c.as_str()).collect();
        assert_eq!(
            corr,
            ["corr-b1", "corr-b2", "corr-b3", "corr-b4"],
            "rows and runs"
        );
        for (row, c, body, version) in &all {
            let event: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
            assert_eq!(event["correlationId"], c.as_str());
            let id = event["eventId"].as_str().expect("an id");
            assert_eq!(crate::event_id::row_of(id), Some(*row));
            assert_eq!(event["stateVersion"], *version);
        }
        drop(db);
        // Reopened: nothing in memory, so every read goes to the store.
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let out = rt
            .block_on(store.accept(acceptance("b1", "elsewhere", &[])))
            .expect("duplicate");
        assert!(
            matches!(&out, AcceptOutcome::Duplicate { status: 200, correlation_id, .. }
                if correlation_id == "corr-b1"),
            "{out:?}"
        );
        // The audit's recovery finds them all, in commit order.
        let since = rt.block_on(store.committed_since(0)).expect("since");
        let corr: Vec<&str> = since.iter().map(|e| e.correlation_id.as_str()).collect();
        assert_eq!(corr, ["corr-b1", "corr-b2", "corr-b3", "corr-b4"]);
        assert_eq!(since[1].session_id, "other");
        let journey = rt
            .block_on(store.journey("corr-b4"))
            .expect("journey")
            .expect("found by correlation id");
        assert_eq!(
            journey.event["correlationId"], "corr-b4",
            "{}",
            journey.event
        );
        let timeline = rt
            .block_on(store.session_timeline("sb", 10))
            .expect("timeline");
        let keys: Vec<&str> = timeline.iter().map(|e| e.correlation_id.as_str()).collect();
        assert_eq!(
            keys,
            ["corr-b4", "corr-b3", "corr-b1"],
            "newest first, rows and runs"
        );
        assert_eq!(timeline[0].answer.as_ref().map(|a| a.0), Some(200));
        assert_eq!(
            timeline[1].deliveries,
            [("orders".to_string(), "pending".to_string())]
        );
        let two = rt
            .block_on(store.session_timeline("sb", 2))
            .expect("timeline");
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].correlation_id, "corr-b3");
        // A replaced answer moves the event to a row, where duplicates find it.
        rt.block_on(store.set_answer("b1".into(), 202, bytes::Bytes::from_static(b"{}")))
            .expect("answer");
        let out = rt
            .block_on(store.accept(acceptance("b1", "elsewhere", &[])))
            .expect("duplicate");
        assert!(
            matches!(&out, AcceptOutcome::Duplicate { status: 202, correlation_id, .. }
                if correlation_id == "corr-b1"),
            "{out:?}"
        );
        // Forgetting the session empties its events kept beside too, and erases their
        // records there; the other session's stays.
        rt.block_on(store.forget_session("sb".into()))
            .expect("forget");
        let journey = rt
            .block_on(store.journey("corr-b4"))
            .expect("journey")
            .expect("found");
        assert_eq!(journey.event["forgotten"], true, "{}", journey.event);
        assert_eq!(journey.event["payload"], serde_json::Value::Null);
        let kept = rt
            .block_on(store.journey("corr-b2"))
            .expect("journey")
            .expect("found");
        assert_eq!(kept.event["payload"]["k"], "b2", "{}", kept.event);
        rt.block_on(store.close());
        let db = Connection::open(&path).expect("db");
        let runs = raw::tests::texts(&db, "SELECT CAST(first AS TEXT) FROM event_runs");
        assert_eq!(runs.len(), 1, "b2's run is left");
        for entry in std::fs::read_dir(bodies::dir_of(&path)).expect("bodies") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("\"k\":\"b2\""),
                "the other session's record stays"
            );
            for gone in ["b1", "b4"] {
                assert!(
                    !text.contains(&format!("\"k\":\"{gone}\"")),
                    "{gone} erased"
                );
            }
        }
    }

    #[test]
    fn a_schema_8_answer_kept_in_answers_is_still_replayed_and_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("k8", "s8", &[])))
                .expect("commit");
        });
        // Back to what schema 8 wrote: the answer in `answers`, none in the event's row.
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "INSERT INTO answers (event_id, body, status) \
                       SELECT event_id, answer, 201 FROM events; \
                     ALTER TABLE events DROP COLUMN answer; \
                     ALTER TABLE events DROP COLUMN answer_status; \
                     ALTER TABLE log_position DROP COLUMN sessions_lsn; PRAGMA user_version = 8;",
                )
                .and_then(|()| c.execute_batch(BEFORE_SCHEMA_11))
            })
            .expect("schema 8");
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let out = rt
            .block_on(store.accept(acceptance("k8", "other", &[])))
            .expect("duplicate");
        assert!(
            matches!(&out, AcceptOutcome::Duplicate { status: 201, correlation_id, .. }
                if correlation_id == "corr-k8"),
            "{out:?}"
        );
        let timeline = rt
            .block_on(store.session_timeline("s8", 10))
            .expect("timeline");
        assert_eq!(timeline[0].answer.as_ref().map(|a| a.0), Some(201));
        // A new answer for the old key lands where readers find it.
        rt.block_on(store.set_answer("k8".into(), 202, bytes::Bytes::from_static(b"{}")))
            .expect("answer");
        let timeline = rt
            .block_on(store.session_timeline("s8", 10))
            .expect("timeline");
        assert_eq!(
            timeline[0].answer.clone(),
            Some((202, bytes::Bytes::from_static(b"{}")))
        );
        // Forgetting the session empties the answer kept there too.
        rt.block_on(store.forget_session("s8".into()))
            .expect("forget");
        let out = rt
            .block_on(store.accept(acceptance("k8", "other", &[])))
            .expect("duplicate");
        let AcceptOutcome::Duplicate { status, body, .. } = out else {
            panic!("{out:?}")
        };
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            (status, body),
            (
                202,
                serde_json::json!({"data": {"processed": true, "stateVersion": 1, "forgotten": true}})
            )
        );
        rt.block_on(store.close());
    }

    #[test]
    fn a_schema_7_answer_gets_its_status_at_upgrade_and_the_timeline_shows_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("k7", "s7", &["a"])))
                .expect("commit");
        });
        // Back to what schema 7 wrote: the key in the database, the status beside it only.
        std::fs::remove_dir_all(keys::dir_of(&path)).expect("no keys");
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "INSERT INTO idempotency (key, event_id, status, body, correlation_id, \
                                              created_at) \
                       SELECT 'k7', event_id, 200, x'', correlation_id, committed_at FROM events; \
                     INSERT INTO answers (event_id, body) SELECT event_id, answer FROM events; \
                     ALTER TABLE events DROP COLUMN answer; \
                     ALTER TABLE events DROP COLUMN answer_status; \
                     ALTER TABLE answers DROP COLUMN status; \
                     ALTER TABLE log_position DROP COLUMN sessions_lsn; PRAGMA user_version = 7;",
                )
                .and_then(|()| c.execute_batch(BEFORE_SCHEMA_11))
            })
            .expect("schema 7");
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let timeline = rt
            .block_on(store.session_timeline("s7", 10))
            .expect("timeline");
        assert_eq!(timeline.len(), 1);
        let (status, body) = timeline[0].answer.clone().expect("an answer");
        assert_eq!(status, 200);
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["data"]["stateVersion"], 1);
        assert_eq!(timeline[0].deliveries, vec![("a".into(), "pending".into())]);
        // The key kept in the database still finds its answer.
        let out = rt
            .block_on(store.accept(acceptance("k7", "other", &[])))
            .expect("duplicate");
        assert!(
            matches!(out, AcceptOutcome::Duplicate { status: 200, .. }),
            "{out:?}"
        );
        rt.block_on(store.close());
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }

    /// What a crash leaves while the store runs, after events with keys "a", "b" and "c"
    /// (made by `acceptance`) were applied: the database has every record and the log still
    /// holds them (its one segment is never removed). Returns the copy and its database.
    fn crash_image(
        rt: &tokio::runtime::Runtime,
        acceptance: impl Fn(&str) -> Acceptance,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let image = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        for key in ["a", "b", "c"] {
            rt.block_on(store.accept(acceptance(key))).expect("commit");
        }
        rt.block_on(store.caught_up()).expect("caught up");
        copy_dir(dir.path(), image.path());
        rt.block_on(store.close());
        let path = image.path().join("cognihook.db");
        (image, path)
    }

    #[test]
    fn keys_behind_the_database_are_written_again_from_the_log() {
        let rt = runtime();
        let (image, path) = crash_image(&rt, |key| acceptance(key, key, &[]));
        // ...and keys that lost what they had (a power cut before their journal was flushed).
        {
            let keys =
                keys::Keys::open(&keys::dir_of(&path), 86_400_000, 86_400_000, 0).expect("keys");
            let now = crate::now_millis() + 1;
            keys.expire(i64::MAX, i64::MAX, now).expect("forget");
            keys.write(std::iter::empty(), std::iter::empty(), 0, now)
                .expect("rewind");
            assert_eq!(keys.get("a").expect("read"), None);
            assert_eq!(keys.event_of("corr-a").expect("read"), None);
            keys.persist(SyncMode::Full).expect("persist");
        }
        let store = SqliteStore::open(&config(image.path())).expect("reopen");
        // The correlation index is written again too.
        let j = rt
            .block_on(store.journey("corr-b"))
            .expect("read")
            .expect("found by its correlation id");
        assert_eq!(j.event["correlationId"], "corr-b");
        for key in ["a", "b", "c"] {
            let out = rt
                .block_on(store.accept(acceptance(key, "other", &[])))
                .expect("accept");
            assert!(
                matches!(out, AcceptOutcome::Duplicate { .. }),
                "{key}: {out:?}"
            );
        }
        rt.block_on(store.close());
        let c = Connection::open(&path).expect("open");
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 3, "nothing applied twice to the database");
    }

    #[test]
    fn sessions_held_behind_at_a_crash_are_written_again_from_the_log() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tmp");
        let image = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        // Session "s": versions 1 and 2, forgotten, then version 1 again; session "t": 1.
        for (key, session) in [("a", "s"), ("b", "s")] {
            rt.block_on(store.accept(acceptance(key, session, &[])))
                .expect("commit");
        }
        rt.block_on(store.forget_session("s".into()))
            .expect("forget");
        for (key, session) in [("c", "s"), ("d", "t")] {
            rt.block_on(store.accept(acceptance(key, session, &[])))
                .expect("commit");
        }
        rt.block_on(store.caught_up()).expect("caught up");
        copy_dir(dir.path(), image.path());
        rt.block_on(store.close());
        // What a crash leaves when the projector still held every session behind: the
        // events applied, the sessions table without them and its position at the start.
        let path = image.path().join("cognihook.db");
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch("DELETE FROM sessions; UPDATE log_position SET sessions_lsn = 0;")
            })
            .expect("rewind the sessions");
        let store = SqliteStore::open(&config(image.path())).expect("reopen");
        let c = Connection::open(&path).expect("open");
        let sessions = || -> Vec<(String, i64)> {
            let mut q = c
                .prepare("SELECT session_id, state_version FROM sessions ORDER BY session_id")
                .expect("prepare");
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(sessions(), vec![("s".into(), 1), ("t".into(), 1)]);
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 4, "the events themselves are not applied again");
        let next = rt
            .block_on(store.accept(acceptance("e", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                next,
                AcceptOutcome::Committed {
                    state_version: 2,
                    ..
                }
            ),
            "{next:?}"
        );
        rt.block_on(store.close());
    }

    #[test]
    fn a_database_behind_the_keys_gets_the_records_again_and_duplicates_their_answers() {
        let rt = runtime();
        let (image, path) = crash_image(&rt, |key| acceptance(key, "s", &["out"]));
        // The database lost what the log and the keys have (its unflushed tail after a power
        // cut, say): back to before the first record.
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "DELETE FROM outbox; DELETE FROM answers; DELETE FROM events; \
                     DELETE FROM sessions; UPDATE log_position SET projected_lsn = 0;",
                )
            })
            .expect("rewind");
        let store = SqliteStore::open(&config(image.path())).expect("reopen");
        for (key, version) in [("a", 1), ("b", 2), ("c", 3)] {
            let out = rt
                .block_on(store.accept(acceptance(key, "other", &[])))
                .expect("accept");
            let AcceptOutcome::Duplicate {
                status,
                body,
                correlation_id,
            } = out
            else {
                panic!("{key}: {out:?}")
            };
            assert_eq!(status, 200);
            // From the event's row: the key's entry does not keep it.
            assert_eq!(correlation_id, format!("corr-{key}"));
            let body: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(body["data"]["stateVersion"], version, "{key}");
        }
        let next = rt
            .block_on(store.accept(acceptance("d", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                next,
                AcceptOutcome::Committed {
                    state_version: 4,
                    ..
                }
            ),
            "{next:?}"
        );
        rt.block_on(store.close());
        let c = Connection::open(&path).expect("open");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("SELECT count(*) FROM events"), 4);
        assert_eq!(n("SELECT count(*) FROM outbox"), 3);
    }

    #[test]
    fn a_deleted_keys_directory_starts_empty_at_the_databases_position() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s", &[])))
                .expect("commit");
        });
        std::fs::remove_dir_all(keys::dir_of(&path)).expect("delete the keys");
        // It opens (the log before the database's position is gone, and not needed)...
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        // ...and the key is forgotten, as docs/guarantees.md says: a repeat is a new event.
        let out = rt
            .block_on(store.accept(acceptance("a", "s", &[])))
            .expect("commit");
        assert!(
            matches!(
                out,
                AcceptOutcome::Committed {
                    state_version: 2,
                    ..
                }
            ),
            "{out:?}"
        );
        rt.block_on(store.close());
        // The position was recorded at once: the next open replays nothing twice.
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let out = rt
            .block_on(store.accept(acceptance("a", "s", &[])))
            .expect("duplicate");
        assert!(matches!(out, AcceptOutcome::Duplicate { .. }), "{out:?}");
        rt.block_on(store.close());
    }

    #[test]
    fn a_replaced_answer_is_what_duplicates_get_from_the_database() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("r", "s", &[])))
                .expect("commit");
            rt.block_on(store.set_answer("r".into(), 201, Bytes::from_static(b"{\"ok\":1}")))
                .expect("replace");
        });
        // Reopened: the hot maps are empty, so the duplicate reads the database.
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let out = rt
            .block_on(store.accept(acceptance("r", "other", &[])))
            .expect("duplicate");
        let AcceptOutcome::Duplicate { status, body, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!((status, &body[..]), (201, &b"{\"ok\":1}"[..]));
        rt.block_on(store.close());
    }

    #[test]
    fn maintenance_prunes_expired_rows_but_keeps_undelivered_events() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s1", &[])))
                .expect("commit");
            rt.block_on(store.accept(acceptance("b", "s2", &["orders"])))
                .expect("commit");
            rt.block_on(store.accept(acceptance("c", "s3", &["audit"])))
                .expect("commit");
            deliver_one(&rt, store, "audit");
        });
        let conn = Connection::open(&path).expect("open");
        // A row added to "a" after it was accepted (as an `on_late` row is), still pending,
        // and a delivered one of "c": only the first keeps its event.
        conn.execute_batch(
            "INSERT INTO outbox (id, event_id, sink, route, session_id, status, next_attempt_at, \
                                 created_at, result, late) \
               SELECT 100, event_id, 'late', route, session_id, 'pending', 0, 0, '{}', 1 \
               FROM events WHERE correlation_id = 'corr-a'; \
             INSERT INTO outbox (id, event_id, sink, route, session_id, status, next_attempt_at, \
                                 created_at, result, late) \
               SELECT 101, event_id, 'late', route, session_id, 'delivered', 0, 0, '{}', 1 \
               FROM events WHERE correlation_id = 'corr-c'; \
             INSERT INTO delivery_attempts (outbox_id, attempt, at, outcome, replica) \
               SELECT id, 1, 0, 'retry', 'r' FROM outbox WHERE sink = 'audit';",
        )
        .expect("late rows");
        // Negative windows put every cut-off in the future: everything has expired (the
        // idempotency window two hours ago: an answer outlives its key by an hour).
        let expired = maintenance(&path, -7_200_000, -60_000, -60_000);
        project::maintain(&conn, &expired, &mut project::MaintenanceCursor::default());
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(expired.keys.get("a").expect("read"), None);
        drop(expired);
        assert_eq!(n("SELECT count(*) FROM sessions"), 0);
        assert_eq!(
            n("SELECT count(*) FROM events WHERE correlation_id IN ('corr-a', 'corr-b')"),
            2,
            "the events with an undelivered row stay, a late one included"
        );
        assert_eq!(
            n("SELECT count(*) FROM events"),
            2,
            "the event whose rows were all delivered goes"
        );
        assert_eq!(
            n("SELECT count(*) FROM outbox WHERE status = 'pending'"),
            2,
            "the pending rows stay"
        );
        assert_eq!(
            n("SELECT count(*) FROM outbox"),
            2,
            "the delivered rows go, a late one included"
        );
        assert_eq!(
            n("SELECT count(*) FROM delivery_attempts"),
            0,
            "the delivered row's attempt record goes with it"
        );

        // Nothing expires under the default windows.
        let c2 = Connection::open(&path).expect("open");
        c2.execute(
            "INSERT INTO sessions VALUES ('s3', 1, 0, ?1, 't', 'r')",
            params![crate::now_millis()],
        )
        .expect("insert");
        let defaults = maintenance(&path, 86_400_000, 86_400_000, 86_400_000);
        project::maintain(&conn, &defaults, &mut project::MaintenanceCursor::default());
        assert_eq!(n("SELECT count(*) FROM sessions"), 1);
        assert_eq!(n("SELECT count(*) FROM events"), 2);
    }

    #[test]
    fn expired_events_are_pruned_a_bounded_pass_at_a_time_until_none_is_left() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            for k in ["a", "b", "c", "d", "e"] {
                rt.block_on(store.accept(acceptance(k, &format!("s-{k}"), &[])))
                    .expect("commit");
            }
            rt.block_on(store.accept(acceptance("f", "s-f", &["orders"])))
                .expect("commit");
        });
        let conn = Connection::open(&path).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        // Each pass reads a range of rowids, never the table from its start, and each event's
        // outbox rows by their id range: never an index of the whole outbox built for the pass.
        for sql in [project::EXPIRED_EVENTS, outbox::DELIVERED_BEFORE] {
            let steps = query_plan(&conn, sql);
            assert!(
                steps.iter().any(|s| s.contains("(rowid>? AND rowid<?)")),
                "{sql}: {steps:?}"
            );
            assert!(
                steps
                    .iter()
                    .any(|s| s == "SEARCH o USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)")
                    && !steps.iter().any(|s| s.contains("AUTOMATIC")),
                "{sql}: {steps:?}"
            );
        }
        let expired = maintenance(&path, -7_200_000, -60_000, -60_000);
        let mut cursor = project::MaintenanceCursor::default();
        let mut left = Vec::new();
        loop {
            let more = project::maintain_by(&conn, &expired, &mut cursor, 2);
            left.push((n("SELECT count(*) FROM events"), more));
            if !more {
                break;
            }
        }
        // Two events a pass; the last one's pending row keeps it.
        assert_eq!(left, [(4, true), (2, true), (1, false)]);
        assert_eq!(
            n("SELECT count(*) FROM events WHERE correlation_id = 'corr-f'"),
            1
        );
        // The next cycle starts where this one ended: nothing new to look at.
        assert!(!project::maintain_by(&conn, &expired, &mut cursor, 2));
        assert_eq!(n("SELECT count(*) FROM events"), 1);
        // No statement of a pass had SQLite index a whole table for it (see `planner`).
        assert_eq!(planner::automatic_indexes(), (0, String::new()));
    }

    #[test]
    fn a_cycle_starts_where_the_last_ended_and_one_in_sixty_looks_at_the_kept_events_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = with_a_and_f(dir.path(), &rt);
        let conn = Connection::open(&path).expect("open");
        let left = || -> Vec<String> {
            let mut q = conn
                .prepare("SELECT correlation_id FROM events ORDER BY rowid")
                .expect("events");
            q.query_map([], |r| r.get(0))
                .expect("events")
                .map(|r| r.expect("row"))
                .collect()
        };
        // Everything up to now has expired (retention 0; the answers' hour is taken back by
        // the idempotency window), and nothing after it.
        let until_now = maintenance(&path, -3_600_000, -60_000, 0);
        let mut cursor = project::MaintenanceCursor::default();
        // The first cycle starts from the first event: `a` goes, `f`'s pending row keeps it.
        assert!(!project::maintain_by(&conn, &until_now, &mut cursor, 2));
        assert_eq!(left(), ["corr-f"]);
        // `f`'s row is delivered, and a new event comes.
        conn.execute("UPDATE outbox SET status = 'delivered'", [])
            .expect("delivered");
        let at = crate::now_millis();
        while crate::now_millis() == at {
            std::hint::spin_loop();
        }
        used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("b", "s-b", &[])))
                .expect("commit");
        });
        let all = maintenance(&path, -7_200_000, -60_000, -60_000);
        // The next 59 cycles start where the last one ended: `b` goes, `f` is not looked at.
        for cycle in 2..=project::FULL_CYCLE_EVERY {
            assert!(!project::maintain_by(&conn, &all, &mut cursor, 2));
            assert_eq!(left(), ["corr-f"], "cycle {cycle}");
        }
        // The sixty-first starts from the first event again: `f` and its row go.
        assert!(!project::maintain_by(&conn, &all, &mut cursor, 2));
        assert!(left().is_empty());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .expect("outbox");
        assert_eq!(rows, 0);
    }

    #[test]
    fn a_cycle_of_passes_that_does_not_end_still_prunes_the_rest_every_minute() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s", &[])))
                .expect("commit");
        });
        let conn = Connection::open(&path).expect("open");
        let spent = || {
            conn.execute(
                "INSERT OR REPLACE INTO spent_signatures (route, mac, expires_at) \
                 VALUES ('r', 'm', 0)",
                [],
            )
            .expect("an expired signature");
        };
        let left = || {
            conn.query_row("SELECT count(*) FROM spent_signatures", [], |r| {
                r.get::<_, i64>(0)
            })
            .expect("count")
        };
        let defaults = maintenance(&path, 86_400_000, 86_400_000, 86_400_000);
        // In the middle of a cycle, the rest was pruned a moment ago: it waits.
        spent();
        let mut cursor = project::MaintenanceCursor::mid_cycle(1, Duration::from_secs(1));
        project::maintain_by(&conn, &defaults, &mut cursor, 2);
        assert_eq!(left(), 1);
        // ...a minute ago: it is pruned although the cycle has not ended.
        let mut cursor = project::MaintenanceCursor::mid_cycle(1, Duration::from_secs(61));
        project::maintain_by(&conn, &defaults, &mut cursor, 2);
        assert_eq!(left(), 0);
        // At the start of a cycle, always.
        spent();
        let mut cursor = project::MaintenanceCursor::mid_cycle(0, Duration::from_secs(1));
        project::maintain_by(&conn, &defaults, &mut cursor, 2);
        assert_eq!(left(), 0);
    }

    #[test]
    fn an_outbox_id_is_never_given_out_again_after_its_row_is_deleted() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            rt.block_on(store.accept(acceptance("a", "s1", &["x", "y"])))
                .expect("commit");
            deliver_one(&rt, store, "x");
            deliver_one(&rt, store, "y");
        });
        let conn = Connection::open(&path).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        let newest = n("SELECT max(id) FROM outbox");
        let expired = maintenance(&path, -7_200_000, -60_000, -60_000);
        project::maintain(&conn, &expired, &mut project::MaintenanceCursor::default());
        drop(expired);
        assert_eq!(n("SELECT count(*) FROM outbox"), 0, "both rows pruned");
        drop(conn);
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        rt.block_on(store.accept(acceptance("b", "s2", &["x"])))
            .expect("commit");
        rt.block_on(store.caught_up()).expect("caught up");
        let conn = Connection::open(&path).expect("open");
        let id: i64 = conn
            .query_row("SELECT id FROM outbox", [], |r| r.get(0))
            .expect("the new row");
        assert!(id > newest, "{id} after {newest}");
        // A purged dead letter's id, the newest, is not given out again either.
        let claimed = rt
            .block_on(store.claim("x", 1, Duration::from_secs(60)))
            .expect("claim");
        let dead = Settlement::Dead {
            reason: crate::store::DeadReason::Permanent,
            error: "HTTP 400".into(),
            duration_ms: 1,
        };
        rt.block_on(store.settle_many(vec![(claimed[0].clone(), dead)]))
            .expect("settle");
        let purged = rt
            .block_on(store.purge(DeadLetterFilter::default()))
            .expect("purge");
        assert_eq!(purged, 1);
        rt.block_on(store.close());
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        rt.block_on(store.accept(acceptance("c", "s3", &["x"])))
            .expect("commit");
        rt.block_on(store.caught_up()).expect("caught up");
        let next: i64 = conn
            .query_row("SELECT id FROM outbox", [], |r| r.get(0))
            .expect("the row after the purge");
        assert!(next > id, "{next} after the purged {id}");
        rt.block_on(store.close());
    }

    #[test]
    fn dead_letters_are_replayed_and_purged_a_bounded_number_per_job() {
        let (dir, store, rt) = with_sinks(vec![("x".into(), false)]);
        let kill = |n: usize| {
            let claimed = rt
                .block_on(store.claim("x", 10, Duration::from_secs(60)))
                .expect("claim");
            assert_eq!(claimed.len(), n);
            let dead = Settlement::Dead {
                reason: crate::store::DeadReason::Permanent,
                error: "HTTP 400".into(),
                duration_ms: 1,
            };
            rt.block_on(
                store.settle_many(claimed.into_iter().map(|c| (c, dead.clone())).collect()),
            )
            .expect("settle");
        };
        for k in ["a", "b", "c", "d", "e"] {
            rt.block_on(store.accept(acceptance(k, &format!("s-{k}"), &["x"])))
                .expect("commit");
        }
        kill(5);
        let all = DeadLetterFilter::default;
        let requeue: DeadLetterWork = outbox::requeue;
        let replayed = rt
            .block_on(store.by_dead_letter(all(), 2, requeue))
            .expect("replay");
        assert_eq!(replayed, 5, "three jobs of at most two");
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(dir.path().join("cognihook.db")).expect("open");
        let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        assert_eq!(n("SELECT count(*) FROM outbox WHERE status = 'pending'"), 5);
        assert_eq!(
            n("SELECT count(*) FROM delivery_attempts WHERE outcome = 'replayed'"),
            5
        );
        kill(5);
        let delete: DeadLetterWork = |c, _, ids| outbox::delete_dead(c, ids);
        let purged = rt
            .block_on(store.by_dead_letter(all(), 2, delete))
            .expect("purge");
        assert_eq!(purged, 5);
        rt.block_on(store.caught_up()).expect("caught up");
        assert_eq!(n("SELECT count(*) FROM outbox"), 0);
        assert_eq!(n("SELECT count(*) FROM delivery_attempts"), 0);
    }

    #[test]
    fn an_expired_lease_makes_the_row_due_again_and_the_old_claim_cannot_settle() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(&config(dir.path())).expect("open"),
        ));
        let rt = runtime();
        rt.block_on(store.accept(acceptance("k", "s", &["a"])))
            .expect("commit");
        let lease = Duration::from_secs(60);
        let first = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempts, 0);
        assert!(rt
            .block_on(store.claim("a", 10, lease))
            .expect("claim")
            .is_empty());
        // Let the lease run out, as when a send hangs past it (leases live in memory on the
        // embedded store: age this one there).
        let Store::Sqlite(sqlite) = &store else {
            unreachable!()
        };
        if let Some(l) = sqlite
            .shared
            .leases
            .lock()
            .held
            .get_mut(&first[0].outbox_id)
        {
            l.until_ms -= 120_000;
        }
        let second = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].lease_token, first[0].lease_token);
        let done = Settlement::Delivered {
            duration_ms: 1,
            result: None,
        };
        assert!(!rt
            .block_on(store.settle(&first[0], done.clone()))
            .expect("settle"));
        assert!(rt.block_on(store.settle(&second[0], done)).expect("settle"));
        rt.block_on(store.caught_up()).expect("caught up");
        let c = Connection::open(dir.path().join("cognihook.db")).expect("open");
        let status: String = c
            .query_row("SELECT status FROM outbox", [], |r| r.get(0))
            .expect("row");
        assert_eq!(status, "delivered");
    }

    #[test]
    fn ordered_claims_hold_back_later_events_of_a_session_until_earlier_ones_settle() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(&config(dir.path())).expect("open"),
        ));
        let rt = runtime();
        rt.block_on(store.configure_sinks(&[("a".to_string(), true)]))
            .expect("configure");
        for k in ["k1", "k2", "k3"] {
            rt.block_on(store.accept(acceptance(k, "same", &["a"])))
                .expect("commit");
        }
        rt.block_on(store.accept(acceptance("other", "s2", &["a"])))
            .expect("commit");
        let lease = Duration::from_secs(60);
        let claimed = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        let corr: Vec<&str> = claimed.iter().map(|c| c.correlation_id.as_str()).collect();
        assert_eq!(
            corr,
            ["corr-k1", "corr-other"],
            "one per session, the oldest"
        );
        // A retry keeps the session blocked; delivery releases the next one.
        let retry = Settlement::Retry {
            at_ms: 0,
            error: "x".into(),
            duration_ms: 1,
        };
        rt.block_on(store.settle(&claimed[0], retry))
            .expect("settle");
        rt.block_on(store.caught_up()).expect("caught up");
        let again = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].correlation_id, "corr-k1");
        assert_eq!(again[0].attempts, 1);
        rt.block_on(store.settle(
            &again[0],
            Settlement::Delivered {
                duration_ms: 1,
                result: None,
            },
        ))
        .expect("settle");
        rt.block_on(store.caught_up()).expect("caught up");
        let next = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(next[0].correlation_id, "corr-k2");
        // Switched to unordered, the sink's claims take everything due.
        rt.block_on(store.configure_sinks(&[("a".to_string(), false)]))
            .expect("configure");
        let all = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(all.len(), 1, "k3 (k2 and other are leased)");
    }

    /// A new store with these sinks configured (name, ordered), and a runtime.
    fn with_sinks(
        sinks: Vec<(String, bool)>,
    ) -> (tempfile::TempDir, SqliteStore, tokio::runtime::Runtime) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        let rt = runtime();
        rt.block_on(store.configure_sinks(sinks))
            .expect("configure");
        (dir, store, rt)
    }

    /// Holds the projector in a job until the returned sender is dropped or sent to; returns
    /// once the job runs (what comes after it waits in the projector's queue).
    fn hold_projector(rt: &tokio::runtime::Runtime, store: &SqliteStore) -> mpsc::Sender<()> {
        let (go, wait) = mpsc::channel::<()>();
        let (entered, running) = mpsc::channel::<()>();
        let rx = rt
            .block_on(store.submit(
                move |_, _, _| {
                    let _ = entered.send(());
                    let _ = wait.recv();
                    Ok(())
                },
                None,
            ))
            .expect("submit");
        drop(rx);
        running.recv().expect("the projector runs the job");
        go
    }

    fn delivered() -> Settlement {
        Settlement::Delivered {
            duration_ms: 1,
            result: None,
        }
    }

    #[test]
    fn fresh_rows_are_claimed_while_the_projector_is_behind_and_settled_once_each() {
        let (_dir, store, rt) = with_sinks(vec![("a".into(), false), ("o".into(), true)]);
        let go = hold_projector(&rt, &store);
        rt.block_on(store.accept(acceptance("k1", "s1", &["a"])))
            .expect("commit");
        assert!(*store.shared.projected.borrow() < store.shared.acked.load(Ordering::SeqCst));
        // The projector has not written the row; the claim finds it in memory at once.
        let lease = Duration::from_secs(60);
        let claimed = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(claimed.len(), 1);
        let c = &claimed[0];
        assert_eq!((c.correlation_id.as_str(), c.attempts), ("corr-k1", 0));
        let body: Value = serde_json::from_slice(&c.body).expect("json");
        assert_eq!(body["stateVersion"], 1);
        assert!(rt
            .block_on(store.claim("a", 10, lease))
            .expect("claim")
            .is_empty());
        assert!(
            rt.block_on(store.settle_many(vec![(c.clone(), delivered())]))
                .expect("settle")[0]
        );
        drop(go);
        rt.block_on(store.caught_up()).expect("caught up");
        let db = Connection::open(store.path()).expect("open");
        add_event_body_function(&db, store.path()).expect("function");
        let (status, attempts): (String, i64) = db
            .query_row("SELECT status, attempts FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("row");
        assert_eq!((status.as_str(), attempts), ("delivered", 1));
        let stored: String = db
            .query_row(
                "SELECT event_body(body, body_at, rowid) FROM events",
                [],
                |r| r.get(0),
            )
            .expect("event");
        assert_eq!(
            stored.as_bytes(),
            &c.body[..],
            "the event as the database holds it"
        );
        assert!(rt
            .block_on(store.claim("a", 10, lease))
            .expect("claim")
            .is_empty());
    }

    #[test]
    fn an_ordered_sink_has_no_fresh_rows_and_its_claims_wait_for_the_database() {
        let (_dir, store, rt) = with_sinks(vec![("o".into(), true)]);
        let go = hold_projector(&rt, &store);
        rt.block_on(store.accept(acceptance("k1", "s1", &["o"])))
            .expect("commit");
        assert!(store.shared.leases.lock().fresh.sinks.is_empty());
        // The claim cannot finish while the projector is held (a claim that did not wait
        // would answer at once, with nothing).
        let lease = Duration::from_secs(60);
        let early = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), store.claim("o", 10, lease)).await
        });
        assert!(early.is_err(), "{early:?}");
        go.send(()).expect("release");
        let rows = rt.block_on(store.claim("o", 10, lease)).expect("claim");
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_full_fresh_queue_leaves_rows_to_the_database_and_none_is_claimed_twice() {
        let (_dir, store, rt) = with_sinks(vec![("a".into(), false)]);
        store.shared.leases.lock().fresh.max_rows = 2;
        for k in ["k1", "k2", "k3", "k4", "k5"] {
            rt.block_on(store.accept(acceptance(k, k, &["a"])))
                .expect("commit");
        }
        let lease = Duration::from_secs(60);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            for c in rt.block_on(store.claim("a", 2, lease)).expect("claim") {
                assert!(
                    seen.insert(c.correlation_id.clone()),
                    "{} twice",
                    c.correlation_id
                );
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        // Once drained, the queue takes rows again.
        rt.block_on(store.accept(acceptance("k6", "k6", &["a"])))
            .expect("commit");
        let go = hold_projector(&rt, &store);
        let claimed = rt.block_on(store.claim("a", 2, lease)).expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].correlation_id, "corr-k6");
        drop(go);
    }

    /// The bodies of a session's events, by session, and whether each was emptied.
    fn forgotten_bodies(path: &Path) -> Vec<(String, bool)> {
        let c = Connection::open(path).expect("open");
        add_event_body_function(&c, path).expect("function");
        let mut q = c
            .prepare(
                "SELECT session_id, event_body(body, body_at, rowid) FROM events ORDER BY rowid",
            )
            .expect("prepare");
        q.query_map([], |r| {
            let body: String = r.get(1)?;
            Ok((r.get(0)?, body.contains("\"forgotten\":true")))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    #[test]
    fn a_forget_of_more_events_than_one_job_empties_them_all_and_counts_them() {
        let (dir, store, rt) = with_sinks(vec![]);
        let n = FORGET_ROWS_PER_JOB + 7;
        for i in 0..n {
            rt.block_on(store.accept(acceptance(&format!("k{i}"), "long", &[])))
                .expect("commit");
        }
        rt.block_on(store.accept(acceptance("other", "kept", &[])))
            .expect("commit");
        let forgotten = rt
            .block_on(store.forget_session("long".into()))
            .expect("forget");
        assert_eq!(forgotten.events, n as u64);
        let bodies = forgotten_bodies(&dir.path().join("cognihook.db"));
        assert_eq!(bodies.len(), n + 1);
        for (session, emptied) in bodies {
            assert_eq!(emptied, session == "long", "{session}");
        }
        let c = Connection::open(dir.path().join("cognihook.db")).expect("open");
        let counted: i64 = c
            .query_row(
                "SELECT events FROM forgotten_sessions WHERE session_id = 'long'",
                [],
                |r| r.get(0),
            )
            .expect("the forget's record");
        assert_eq!(counted, n as i64, "the forget is finished");
    }

    #[test]
    fn a_forget_the_process_stopped_before_its_events_were_emptied_ends_when_the_store_opens() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&config(dir.path())).expect("open");
        for (key, session) in [("a", "s"), ("b", "s"), ("c", "t")] {
            rt.block_on(store.accept(acceptance(key, session, &[])))
                .expect("commit");
        }
        rt.block_on(store.caught_up()).expect("caught up");
        rt.block_on(store.close());
        // What a stop leaves after the forget's record was applied (`project::forget`) and
        // before `forget_session` emptied the events.
        let path = dir.path().join("cognihook.db");
        Connection::open(&path)
            .and_then(|c| {
                let tx = rusqlite::Transaction::new_unchecked(
                    &c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                project::forget_for_test(&tx, "s", crate::now_millis())?;
                tx.commit()
            })
            .expect("the forget's own part");
        assert!(forgotten_bodies(&path).iter().all(|(_, emptied)| !emptied));
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        assert_eq!(
            forgotten_bodies(&path),
            vec![("s".into(), true), ("s".into(), true), ("t".into(), false)]
        );
        let events: i64 = Connection::open(&path)
            .expect("open")
            .query_row(
                "SELECT events FROM forgotten_sessions WHERE session_id = 's'",
                [],
                |r| r.get(0),
            )
            .expect("the forget's record");
        assert_eq!(events, 2);
        rt.block_on(store.close());
    }

    /// A forget finds what it empties by time (`committed_at <= at`): an event queued right
    /// behind it, decided in the same group or in the same millisecond, is stamped a
    /// millisecond later, so it is not taken for one that came before the forget.
    #[test]
    fn an_event_right_after_a_forget_is_not_taken_for_one_before_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let rt = runtime();
        let path = used_then_closed(dir.path(), &rt, |store| {
            let engine = store.engine.as_ref().expect("engine");
            for i in 0..20 {
                let session = format!("s{i}");
                rt.block_on(store.accept(acceptance(&format!("a{i}"), &session, &[])))
                    .expect("commit");
                // The forget and the next event queued back to back.
                let (forgot, forgot_rx) = oneshot::channel();
                let forget = SeqMsg::Forget {
                    session_id: session.clone(),
                    reply: forgot,
                };
                engine.queue.send(forget).expect("queued");
                let (next, next_rx) = oneshot::channel();
                let event = Box::new(acceptance(&format!("b{i}"), &session, &[]));
                engine
                    .queue
                    .send(SeqMsg::Accept(event, next, None))
                    .expect("queued");
                rt.block_on(forgot_rx).expect("reply").expect("forgotten");
                rt.block_on(next_rx).expect("reply").0.expect("commit");
            }
        });
        let conn = Connection::open(&path).expect("open");
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
        let before = |prefix: &str| {
            n(&format!(
                "SELECT count(*) FROM events e JOIN forgotten_sessions f \
                 ON f.session_id = e.session_id AND e.committed_at <= f.at \
                 WHERE e.correlation_id LIKE 'corr-{prefix}%'"
            ))
        };
        assert_eq!(before("a"), 20, "every event before its forget");
        assert_eq!(before("b"), 0, "no event after its forget");
        // The event after the forget came in the forget's own millisecond (in the same group,
        // nearly always: 20 of 20 here).
        let same_ms = n("SELECT count(*) FROM events e JOIN forgotten_sessions f \
             ON f.session_id = e.session_id AND e.committed_at = f.at + 1 \
             WHERE e.correlation_id LIKE 'corr-b%'");
        assert!(same_ms > 0, "the case this test is for never came up");
    }

    #[test]
    fn a_forgotten_sessions_fresh_rows_are_not_delivered() {
        let (_dir, store, rt) = with_sinks(vec![("a".into(), false)]);
        for k in ["k1", "k2"] {
            rt.block_on(store.accept(acceptance(k, "gone", &["a"])))
                .expect("commit");
        }
        rt.block_on(store.accept(acceptance("k3", "kept", &["a"])))
            .expect("commit");
        let forgotten = rt
            .block_on(store.forget_session("gone".into()))
            .expect("forget");
        assert_eq!(forgotten.cancelled_deliveries, 2);
        let claimed = rt
            .block_on(store.claim("a", 10, Duration::from_secs(60)))
            .expect("claim");
        let corr: Vec<&str> = claimed.iter().map(|c| c.correlation_id.as_str()).collect();
        assert_eq!(corr, ["corr-k3"]);
    }

    #[test]
    fn a_row_delivered_before_the_projector_writes_it_is_written_once_as_delivered() {
        let (_dir, store, rt) = with_sinks(vec![("a".into(), false)]);
        let go = hold_projector(&rt, &store);
        for k in ["k1", "k2"] {
            rt.block_on(store.accept(acceptance(k, "s1", &["a"])))
                .expect("commit");
        }
        let lease = Duration::from_secs(60);
        let claimed = rt.block_on(store.claim("a", 10, lease)).expect("claim");
        assert_eq!(claimed.len(), 2, "both rows from memory");
        let retry_at = crate::now_millis() + 3_600_000;
        let outcomes = vec![
            (
                claimed[0].clone(),
                Settlement::Delivered {
                    duration_ms: 7,
                    result: None,
                },
            ),
            (
                claimed[1].clone(),
                Settlement::Retry {
                    at_ms: retry_at,
                    error: "HTTP 503".into(),
                    duration_ms: 9,
                },
            ),
        ];
        assert_eq!(
            rt.block_on(store.settle_many(outcomes)).expect("settle"),
            [true, true]
        );
        // The records and the outcomes wait in the projector's queue together.
        drop(go);
        rt.block_on(store.caught_up()).expect("caught up");
        assert_eq!(
            store.delivered_with_rows(),
            1,
            "the delivered row is written once, with its outcome; the retried one is updated"
        );
        let db = Connection::open(store.path()).expect("open");
        let row = |id: i64| -> (String, i64, Option<i64>, Option<String>) {
            db.query_row(
                "SELECT status, attempts, delivered_ms, delivered_by FROM outbox WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("row")
        };
        assert_eq!(
            row(claimed[0].outbox_id),
            (
                "delivered".to_string(),
                1,
                Some(7),
                Some(crate::replica_id().to_string())
            )
        );
        assert_eq!(row(claimed[1].outbox_id), ("pending".into(), 1, None, None));
        let due: i64 = db
            .query_row(
                "SELECT count(*) FROM outbox INDEXED BY outbox_due WHERE sink = 'a' \
                 AND status = 'pending' AND next_attempt_at >= 0",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(due, 1, "only the retried row is in the due index");
        let history = |id: i64| -> Vec<(String, Option<u64>)> {
            rt.block_on(store.read(move |c| outbox::attempts(c, id)))
                .expect("attempts")
                .into_iter()
                .map(|a| (a.outcome, a.duration_ms))
                .collect()
        };
        assert_eq!(
            history(claimed[0].outbox_id),
            [("delivered".to_string(), Some(7))]
        );
        assert_eq!(
            history(claimed[1].outbox_id),
            [("retry".to_string(), Some(9))]
        );
        assert!(
            rt.block_on(store.claim("a", 10, lease))
                .expect("claim")
                .is_empty(),
            "nothing due: one row delivered, the other retried in an hour"
        );
    }

    use super::super::{Settlement, Store};

    /// The `k` of the payload of the event whose correlation id is `corr` (its journey),
    /// read by a store opened on `dir` and closed again.
    fn payload_key(rt: &tokio::runtime::Runtime, dir: &Path, corr: &str) -> Value {
        let store = SqliteStore::open(&config(dir)).expect("reopen");
        let j = rt
            .block_on(store.journey(corr))
            .expect("read")
            .expect("found");
        rt.block_on(store.close());
        j.event["payload"]["k"].clone()
    }

    /// Every file under `dir` whose bytes hold `needle`.
    fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                hits.extend(files_holding(&p, needle));
            } else if std::fs::read(&p)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
        hits
    }

    #[test]
    fn new_bodies_are_kept_beside_the_database_and_read_back_by_every_reader() {
        let rt = runtime();
        let (dir, store, _) = with_sinks(vec![]);
        rt.block_on(store.configure_sinks(vec![("a".into(), false)]))
            .expect("configure");
        // Held behind a job, so that the claim below reads the database, not `fresh`.
        rt.block_on(store.accept(acceptance("beside-1", "s", &["a"])))
            .expect("commit");
        rt.block_on(store.caught_up()).expect("caught up");
        let path = dir.path().join("cognihook.db");
        let c = Connection::open(&path).expect("open");
        add_event_body_function(&c, &path).expect("function");
        let (body, at, read): (String, Option<i64>, String) = c
            .query_row(
                "SELECT body, body_at, event_body(body, body_at, rowid) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("row");
        assert_eq!(body, "", "the row holds no body");
        assert!(at.is_some(), "it names its place");
        assert!(read.contains("beside-1"), "{read}");
        assert_eq!(files_holding(&bodies::dir_of(&path), b"beside-1").len(), 1);
        let j = rt
            .block_on(store.journey("corr-beside-1"))
            .expect("read")
            .expect("found");
        assert_eq!(j.event["payload"]["k"], "beside-1", "{:?}", j.event);
        rt.block_on(store.close());
        // A new process claims the row from the database and reads the body beside it.
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let claimed = rt
            .block_on(store.claim("a", 1, Duration::from_secs(60)))
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let sent: Value = serde_json::from_slice(&claimed[0].body).expect("json");
        assert_eq!(sent["payload"]["k"], "beside-1", "{sent}");
        rt.block_on(store.close());
    }

    #[test]
    fn a_forgotten_events_body_is_overwritten_beside_the_database_and_the_others_stay() {
        let rt = runtime();
        let (dir, store, _) = with_sinks(vec![]);
        for (key, session) in [("gone-MARKER-1", "gone"), ("kept-MARKER-2", "kept")] {
            rt.block_on(store.accept(acceptance(key, session, &[])))
                .expect("commit");
        }
        rt.block_on(store.caught_up()).expect("caught up");
        // The payloads (the ids, which a forgotten event keeps, hold the markers too).
        let (gone, kept) = (br#""k":"gone-MARKER-1""#, br#""k":"kept-MARKER-2""#);
        let beside = bodies::dir_of(store.path());
        assert_eq!(files_holding(&beside, gone).len(), 1);
        let forgotten = rt
            .block_on(store.forget_session("gone".into()))
            .expect("forget");
        assert_eq!(forgotten.events, 1);
        rt.block_on(store.close());
        assert!(files_holding(&beside, gone).is_empty());
        assert_eq!(files_holding(&beside, kept).len(), 1);
        // Nor does the database; the log keeps it until its segment goes (documented).
        let path = dir.path().join("cognihook.db");
        let left = files_holding(dir.path(), gone);
        assert!(
            left.iter().all(|p| p.starts_with(log_dir_of(&path))),
            "{left:?}"
        );
        assert_eq!(
            payload_key(&rt, dir.path(), "corr-kept-MARKER-2"),
            "kept-MARKER-2"
        );
    }

    /// What a power cut before the checkpointer's flush can leave of `crash_image`'s store:
    /// the database names places the bodies' files never got. Reopens it, checks that each
    /// event reads back whole, closes it and returns its database.
    fn reopened_after_losing_the_files(
        rt: &tokio::runtime::Runtime,
        image: &Path,
        path: &Path,
    ) -> Connection {
        for entry in std::fs::read_dir(bodies::dir_of(path)).expect("bodies") {
            std::fs::write(entry.expect("entry").path(), b"").expect("emptied");
        }
        let store = SqliteStore::open(&config(image)).expect("reopen");
        for key in ["a", "b", "c"] {
            let j = rt
                .block_on(store.journey(&format!("corr-{key}")))
                .expect("read")
                .expect("found");
            assert_eq!(j.event["payload"]["k"], key, "{:?}", j.event);
        }
        rt.block_on(store.close());
        Connection::open(path).expect("open")
    }

    #[test]
    fn an_event_kept_beside_whose_record_a_power_cut_lost_gets_its_row_from_the_log_at_open() {
        KEEP_BESIDE.with(|k| k.set(true));
        let rt = runtime();
        let (image, path) = crash_image(&rt, |key| acceptance(key, key, &[]));
        let runs: i64 = Connection::open(&path)
            .and_then(|c| c.query_row("SELECT count(*) FROM event_runs", [], |r| r.get(0)))
            .expect("runs");
        assert!(runs >= 1, "kept beside");
        let c = reopened_after_losing_the_files(&rt, image.path(), &path);
        assert_eq!(
            raw::tests::texts(&c, "SELECT correlation_id FROM events ORDER BY rowid"),
            ["corr-a", "corr-b", "corr-c"],
            "each lost record is a row"
        );
    }

    #[test]
    fn a_body_lost_beside_the_database_by_a_power_cut_is_written_into_its_row_at_open() {
        let rt = runtime();
        let (image, path) = crash_image(&rt, |key| acceptance(key, key, &[]));
        let c = reopened_after_losing_the_files(&rt, image.path(), &path);
        let in_rows: i64 = c
            .query_row(
                "SELECT count(*) FROM events WHERE body_at IS NULL AND body <> ''",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(in_rows, 3, "each lost body is in its row");
    }

    /// `with_a_and_f`'s store after a whole pruning cycle with retention's cut-off a minute
    /// ahead and the idempotency window `idempotency_ms`, its bodies beside the database
    /// (a new process's: the store's own file is not the one being written).
    fn pruned_with_bodies(
        rt: &tokio::runtime::Runtime,
        idempotency_ms: i64,
    ) -> (tempfile::TempDir, Connection, Arc<bodies::Bodies>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = with_a_and_f(dir.path(), rt);
        let conn = Connection::open(&path).expect("open");
        add_event_body_function(&conn, &path).expect("function");
        let beside = Arc::new(bodies::Bodies::open(&path, 86_400_000).expect("bodies"));
        let mut settings = maintenance(&path, idempotency_ms, -60_000, -60_000);
        settings.bodies = Some(beside.clone());
        let mut cursor = project::MaintenanceCursor::default();
        while project::maintain_by(&conn, &settings, &mut cursor, 1) {}
        (dir, conn, beside)
    }

    #[test]
    fn bodies_of_events_retention_keeps_go_into_their_rows_and_their_files_are_condemned() {
        let rt = runtime();
        let (dir, conn, beside) = pruned_with_bodies(&rt, -7_200_000);
        // `a` is gone; `f`'s pending row keeps it, with its body now in its row.
        let (corr, at, body): (String, Option<i64>, String) = conn
            .query_row(
                "SELECT correlation_id, body_at, body FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("the kept event");
        assert_eq!((corr.as_str(), at), ("corr-f", None));
        let event: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(event["payload"]["k"], "f");
        // The file the process wrote names no row: condemned, then removed.
        let gone = beside.take_condemned();
        assert_eq!(gone.len(), 1, "{gone:?}");
        beside.remove(&gone).expect("removed");
        assert_eq!(
            std::fs::read_dir(bodies::dir_of(&dir.path().join("cognihook.db")))
                .expect("dir")
                .count(),
            0
        );
        assert_eq!(payload_key(&rt, dir.path(), "corr-f"), "f");
    }

    #[test]
    fn a_claim_leaves_an_event_whose_body_cannot_be_read_and_takes_the_others() {
        claim_around_an_unreadable_event(false);
    }

    /// The same with the events kept beside the database (schema 19: their whole records
    /// there, read by the claim when the events have no row).
    #[test]
    fn a_claim_leaves_an_event_beside_whose_record_cannot_be_read_and_takes_the_others() {
        claim_around_an_unreadable_event(true);
    }

    fn claim_around_an_unreadable_event(kept_beside: bool) {
        KEEP_BESIDE.with(|k| k.set(kept_beside));
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tmp");
        // Two processes, so that the two bodies are in two files.
        for key in ["lost", "whole"] {
            let store = SqliteStore::open(&config(dir.path())).expect("open");
            rt.block_on(store.configure_sinks(vec![("a".into(), false)]))
                .expect("configure");
            rt.block_on(store.accept(acceptance(key, key, &["a"])))
                .expect("commit");
            rt.block_on(store.close());
        }
        let path = dir.path().join("cognihook.db");
        let rows: i64 = Connection::open(&path)
            .expect("db")
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(
            rows,
            if kept_beside { 0 } else { 2 },
            "where the events are"
        );
        // The log's records are long applied and its segments gone; the first file is lost.
        std::fs::remove_dir_all(log_dir_of(&path)).expect("log removed");
        let beside = bodies::dir_of(&path);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&beside)
            .expect("bodies")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        std::fs::write(&files[0], b"").expect("emptied");
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let claimed = rt
            .block_on(store.claim("a", 10, Duration::from_secs(60)))
            .expect("a claim does not fail for one body");
        let keys: Vec<String> = claimed
            .iter()
            .map(|c| {
                let v: Value = serde_json::from_slice(&c.body).expect("json");
                v["payload"]["k"].as_str().expect("k").to_string()
            })
            .collect();
        assert_eq!(keys, ["whole"]);
        // The journey says what is wrong instead.
        let e = rt
            .block_on(store.journey("corr-lost"))
            .expect_err("unreadable");
        assert!(e.to_string().contains(".bodies"), "{e}");
        rt.block_on(store.close());
    }

    /// An event past retention but inside its answer's time (the idempotency window and an
    /// hour) stays, with its body copied into its row, and its file goes at retention.
    #[test]
    fn a_file_goes_at_retention_while_answers_keep_its_events_longer() {
        let rt = runtime();
        let (_dir, conn, beside) = pruned_with_bodies(&rt, 86_400_000);
        let rows: Vec<(String, Option<i64>, String)> = conn
            .prepare("SELECT correlation_id, body_at, body FROM events ORDER BY rowid")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows.len(), 2, "the answers keep both events");
        for (corr, at, body) in &rows {
            assert_eq!(*at, None, "{corr}");
            let event: Value = serde_json::from_str(body).expect("json");
            assert_eq!(event["correlationId"], corr.as_str());
        }
        assert_eq!(beside.take_condemned().len(), 1);
    }

    /// The same two cycles with `a` (no outbox row) kept beside the database without a row:
    /// past its answer's time it goes with its run; inside it, it gets a row, and the file
    /// goes either way.
    #[test]
    fn events_kept_beside_go_with_retention_or_get_rows_while_their_answers_stay() {
        KEEP_BESIDE.with(|k| k.set(true));
        let rt = runtime();
        let (_dir, conn, beside) = pruned_with_bodies(&rt, -7_200_000);
        assert_eq!(
            raw::tests::texts(&conn, "SELECT correlation_id FROM events"),
            ["corr-f"]
        );
        let runs: i64 = conn
            .query_row("SELECT count(*) FROM event_runs", [], |r| r.get(0))
            .expect("runs");
        assert_eq!(runs, 0, "a's run is gone");
        assert_eq!(beside.take_condemned().len(), 1);
        let (dir, conn, beside) = pruned_with_bodies(&rt, 86_400_000);
        assert_eq!(
            raw::tests::texts(&conn, "SELECT correlation_id FROM events ORDER BY rowid"),
            ["corr-a", "corr-f"],
            "a's answer keeps it, in a row now"
        );
        let gone = beside.take_condemned();
        assert_eq!(gone.len(), 1);
        beside.remove(&gone).expect("removed");
        drop(conn);
        assert_eq!(payload_key(&rt, dir.path(), "corr-a"), "a");
    }

    /// Events with outbox rows kept beside the database (schema 19), past retention and
    /// their answers' time: one whose row was delivered goes with its row and the row's
    /// attempts; one whose row is pending gets an events row naming it, and is delivered
    /// and found as before.
    #[test]
    fn retention_takes_delivered_rows_of_events_beside_and_gives_pending_ones_rows() {
        KEEP_BESIDE.with(|k| k.set(true));
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tmp");
        let path = used_then_closed(dir.path(), &rt, |store| {
            for key in ["d", "p"] {
                rt.block_on(store.accept(acceptance(key, &format!("s-{key}"), &["orders"])))
                    .expect("commit");
            }
        });
        let conn = Connection::open(&path).expect("open");
        add_event_body_function(&conn, &path).expect("function");
        let n = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
        assert_eq!(n("SELECT count(*) FROM events"), 0, "both beside");
        assert_eq!(n("SELECT count(*) FROM outbox"), 2);
        // d's row (the first) delivered at its second attempt.
        conn.execute_batch(
            "UPDATE outbox SET status = 'delivered' WHERE id = (SELECT min(id) FROM outbox); \
             INSERT INTO delivery_attempts \
               (outbox_id, attempt, at, outcome, error, duration_ms, replica) \
               SELECT min(id), 1, 0, 'retry', 'refused', 3, 'r1' FROM outbox;",
        )
        .expect("delivered");
        let beside = Arc::new(bodies::Bodies::open(&path, 86_400_000).expect("bodies"));
        let mut settings = maintenance(&path, -7_200_000, -60_000, -60_000);
        settings.bodies = Some(beside.clone());
        let mut cursor = project::MaintenanceCursor::default();
        while project::maintain_by(&conn, &settings, &mut cursor, 1) {}
        assert_eq!(
            raw::tests::texts(&conn, "SELECT correlation_id FROM events"),
            ["corr-p"]
        );
        assert_eq!(n("SELECT count(*) FROM event_runs"), 0);
        assert_eq!(
            n("SELECT count(*) FROM delivery_attempts"),
            0,
            "d's attempt went"
        );
        assert_eq!(
            n(
                "SELECT count(*) FROM outbox o JOIN events e ON o.event_id = e.event_id \
               AND o.id = e.outbox_first AND o.id = e.outbox_last AND o.status = 'pending'"
            ),
            1,
            "p's row is named by p's events row; d's went"
        );
        assert_eq!(n("SELECT count(*) FROM outbox"), 1);
        drop(conn);
        let store = SqliteStore::open(&config(dir.path())).expect("reopen");
        let journey = rt
            .block_on(store.journey("corr-p"))
            .expect("journey")
            .expect("found");
        assert_eq!(journey.deliveries.len(), 1);
        assert_eq!(journey.deliveries[0].status, "pending");
        let claimed = rt
            .block_on(store.claim("orders", 10, Duration::from_secs(60)))
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].correlation_id, "corr-p");
        rt.block_on(store.close());
    }
}
