//! The projector: the thread that owns the database's write connection. It applies committed
//! log records (in log order) and the delivery path's jobs (claims, settlements, replays,
//! purges) in large transactions, records in the same transaction how far the log has been
//! applied (`log_position.projected_lsn`), and prunes what has expired (a bounded pass at a
//! time, `maintain`). Also here: the checkpointer thread, which copies the WAL into the
//! database file and removes the log segments the database has made durable.
//!
//! Nothing here is on a request's path: a request is answered once its record is in the log.
//! The database runs with `synchronous = NORMAL` (or `OFF` under `sync = "off"`): a commit
//! here reaches the operating system but is not flushed, which is why the log keeps every
//! record until the checkpointer has flushed the WAL past it.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::bodies::Bodies;
use super::keys::Keys;
use super::raw::Raw;
use super::record::{AcceptRecord, Record, Spend};
use super::{open_connection, Shared, WriterSettings};
use crate::store::{Claimed, Settlement, StoreError};
use crate::telemetry::throttle::Throttle;

/// Work for the write connection (claims, settlements, replays, purges), applied inside the
/// next transaction; its result is sent after the commit.
pub(super) type Job =
    Box<dyn FnOnce(&Connection, i64, &AtomicI64) -> rusqlite::Result<Box<dyn Any + Send>> + Send>;
pub(super) type JobReply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;

/// Run by the projector right after a job's transaction ends (committed or not), before
/// readers waiting for the job go on.
pub(super) type AfterJob = Box<dyn FnOnce() + Send>;

pub(super) enum ProjMsg {
    /// Records committed to the log, the last one numbered `last`.
    Records(Vec<Record>, u64),
    Job(Job, JobReply, Option<AfterJob>),
    /// Outcomes of deliveries (see `Settles`).
    Settle(Settles),
    /// Write the sessions held behind now (a read wants the database whole: `caught_up`).
    FlushSessions,
    /// Start a pruning cycle now instead of at the next `MAINTENANCE_EVERY` (tests: a cycle
    /// of several passes then goes on by itself while idle, which is what they check).
    Prune,
    Close(oneshot::Sender<()>),
}

/// Outcomes of deliveries to write, a job the projector can see into: a row delivered
/// before the projector has written it (a fresh row, `fresh`, taken while its record waited
/// in this queue) is written once, as delivered, in the transaction that writes its event,
/// instead of inserted pending (with an entry in the `outbox_due` index) and updated at once
/// (`outbox::settle`: the update was 12.4k of the 133k instructions a delivered event cost
/// the store, bench/README.md, twenty-sixth session). The outcome is in the same
/// transaction as the row either way, so recovery is unchanged: a crash before the commit
/// loses both, and the record brings the row back pending (the delivery is made again).
pub(super) struct Settles {
    pub(super) items: Vec<(Claimed, Settlement)>,
    pub(super) reply: JobReply,
    pub(super) after: AfterJob,
}

/// A job of a batch, in the order they were queued.
enum Work {
    Job(Job, JobReply, Option<AfterJob>),
    Settle(Settles),
}

/// A batch of jobs alone waits up to this long for more (see `run`)...
const JOB_LINGER: Duration = Duration::from_millis(2);

/// ...until it has this many.
const JOB_GATHER: usize = 32;

/// After a small round of records the projector pauses so that the next round is at least
/// `COMMIT_EVERY` later: fewer, bigger transactions write each shared page (the outbox's last
/// pages, the run rows of events kept beside the database, the hot sessions' leaves) once per
/// round instead of once per log group, and each commit's fixed cost is paid less often.
/// Nobody waits for the pause: a read that needs newer records, a job, a sequencer that finds
/// the queue full and `close` wake the projector (`Shared::wake_projector`), and the delivery
/// path takes new rows from the sequencer (`fresh`). What a round may hold is bounded by the
/// projector's queue (`PROJECTOR_QUEUE` groups), not by this pause.
///
/// How long: as long as it takes the ingest rate of the last round to bring `ROUND_RECORDS`,
/// between `COMMIT_EVERY` and `COMMIT_EVERY_MAX` (`round_pause`). A round takes the CPU for a
/// while on the core the requests share (at ~2.3 µs a record, a 50 ms round at full speed was
/// ~5 ms), and while it runs the scheduler gives it up to half the core, so every request in
/// flight waited together: the slowest 1 % of requests came in bursts of all 64 connections
/// at once, each after the projector had run 2–3 ms (`perf sched` against the audit log's
/// latencies). Rounds 10 ms apart at full speed gave `bench/pairs.sh 3` a gateway p99 of
/// 4.0–4.4 ms (four batches) against 4.8–5.2 with 50 ms (three), at the same req/s
/// (bench/README.md, fifty-sixth session). Below saturation the CPU is not short, and what
/// matters is the bytes each commit writes (its partly filled pages again, whole): at 5,000
/// req/s, with rounds 50 ms apart the projector wrote 2.6–2.7 KiB per event (two thirds of
/// its bytes go to the WAL) against 3.2–3.4 with 10 ms, and the disk was asked for 7.1–7.2
/// KiB per event against 7.9–9.2 (each `fdatasync` of the log, a flush of the device, waits
/// for all of it; fifty-seventh session).
const COMMIT_EVERY: Duration = Duration::from_millis(10);

/// The longest pause between rounds (see `COMMIT_EVERY`). Longer pauses once paid (15–25 %
/// less projector CPU with 10 ms against a round per group, 10–25 % less again with 50–100
/// ms, ninth and twenty-first sessions) while every event had its events row; most events
/// are now kept beside the database (`beside`).
const COMMIT_EVERY_MAX: Duration = Duration::from_millis(50);

/// The records a round is paced to hold (see `COMMIT_EVERY`): what 10 ms bring at ~40k
/// events a second, about 1 ms of the projector's CPU.
const ROUND_RECORDS: u32 = 400;

/// The pause after a round of `count` records that began `since` after the round before it:
/// the time the same rate takes to bring `ROUND_RECORDS`, within `COMMIT_EVERY` and
/// `COMMIT_EVERY_MAX`.
fn round_pause(count: usize, since: Duration) -> Duration {
    let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    since
        .checked_mul(ROUND_RECORDS)
        .map_or(COMMIT_EVERY_MAX, |t| t / count)
        .clamp(COMMIT_EVERY, COMMIT_EVERY_MAX)
}

/// While expired events are left to prune, the projector runs a maintenance pass this long
/// after the last (after a round, or idle; see `EVENTS_PER_PASS`): rounds may be closer
/// (`COMMIT_EVERY`), and a pass may hold the projector ~25 ms.
const PRUNE_PAUSE: Duration = Duration::from_millis(50);

/// A round of at least this many records does not pause (the projector is behind). Far
/// above what 10 ms bring at full speed on one core (~400 records at ~40k a second).
const PAUSE_BELOW: usize = 4_096;

/// Within a round the projector yields the CPU before each this many records (and sessions
/// written behind): a round is a few ms of CPU in one go, and on a busy core the request
/// threads and the sequencer (whose next `fdatasync` waits for them) would wait for its end.
/// A yield costs a system call and gives the CPU away only when another thread is ready.
/// Measured against no yield (`bench/cpu_ab.sh`, alternating, five pairs): 9 % more req/s
/// at saturation with less CPU per request and less iowait, and p99 at 5,000 req/s
/// (`bench/latency.sh`) lower in most runs (bench/README.md, twenty-second session).
/// How many: with rounds 10 ms apart (~400 records at full speed), every 128 records gave the
/// gateway a shorter tail in `bench/pairs.sh 3` (p99 3.9–4.0 ms in three batches against
/// 4.2–4.6 every 32; 5.3 every 8, 4.6–4.7 with no yield) but cost CPU: `bench/threads.sh`,
/// two alternating pairs, 33.0–33.9 µs a request against 30.6–32.1 (the sequencer +1 µs,
/// the async worker +1), and `bench/load.sh` 0.74× of the reference against 0.85× the
/// run before. Not kept (bench/README.md, fifty-sixth session).
const YIELD_EVERY: usize = 32;

/// The sessions table is written behind: the projector keeps the state of each session that
/// changed since its last write of them (`Behind`) and writes each session once, in key
/// order, after this long. A conversation's events come seconds apart, so most sessions are
/// written once per period instead of once per event: the per-event upsert was a fifth of
/// the projector's work (bench/README.md, twentieth and twenty-first sessions). The log keeps
/// the records until their sessions are written too (`sessions_lsn`, see `start_checkpointer`)
/// and the sequencer keeps the versions it has not seen written (`Shared::sessions_at`).
const SESSIONS_EVERY: Duration = Duration::from_secs(1);

/// ...or once this many sessions wait (a bound on the memory they take: ~150 bytes each).
const SESSIONS_HELD: usize = 16_384;

/// The state of one session waiting to be written (see `SESSIONS_EVERY`).
struct HeldSession {
    version: i64,
    /// When its version 1 came, if that happened while it waited.
    first_seen: Option<i64>,
    last_seen: i64,
    event_type: String,
    route: String,
}

/// The sessions changed since the projector last wrote them.
#[derive(Default)]
pub(super) struct Behind {
    sessions: crate::FastMap<String, HeldSession>,
    /// When the oldest of them came.
    since: Option<Instant>,
}

impl Behind {
    fn note(&mut self, a: &AcceptRecord) {
        let version = a.state_version as i64;
        // A session already held is updated in place: one lookup, and its strings keep
        // their buffers (most events are of a session already held: `SESSIONS_EVERY`).
        if let Some(held) = self.sessions.get_mut(&a.session_id) {
            held.version = version;
            if version == 1 {
                held.first_seen = Some(a.at);
            }
            held.last_seen = a.at;
            held.event_type.clone_from(&a.event_type);
            held.route.clone_from(&a.route);
            return;
        }
        let held = HeldSession {
            version,
            first_seen: (version == 1).then_some(a.at),
            last_seen: a.at,
            event_type: a.event_type.clone(),
            route: a.route.clone(),
        };
        self.sessions.insert(a.session_id.clone(), held);
        self.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.sessions.len() >= SESSIONS_HELD
            || self.since.is_some_and(|s| s.elapsed() >= SESSIONS_EVERY)
    }

    /// How long the projector may wait for messages before these are due.
    fn wait(&self, longest: Duration) -> Duration {
        match self.since {
            Some(s) => SESSIONS_EVERY.saturating_sub(s.elapsed()).min(longest),
            None => longest,
        }
    }

    /// Writes every held session (in key order: neighbours share pages).
    fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut ids: Vec<&String> = self.sessions.keys().collect();
        ids.sort_unstable();
        let mut update = conn.prepare_cached(
            "UPDATE sessions SET state_version = ?2, last_seen = ?3, last_event_type = ?4, \
               last_route = ?5 \
             WHERE session_id = ?1",
        )?;
        let mut upsert = conn.prepare_cached(
            "INSERT INTO sessions (session_id, state_version, first_seen, last_seen, \
                                   last_event_type, last_route) \
             VALUES (?1, ?2, coalesce(?6, ?3), ?3, ?4, ?5) \
             ON CONFLICT (session_id) DO UPDATE SET \
               state_version = ?2, first_seen = coalesce(?6, sessions.first_seen), \
               last_seen = ?3, last_event_type = ?4, last_route = ?5",
        )?;
        for (i, id) in ids.into_iter().enumerate() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                std::thread::yield_now();
            }
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            // A session that existed before it waited finds its row (an upsert that
            // conflicts seeks twice); a new one, or a row pruned meanwhile, takes the upsert.
            let updated = if s.first_seen.is_none() {
                update.execute(params![id, s.version, s.last_seen, s.event_type, s.route])?
            } else {
                0
            };
            if updated == 0 {
                upsert.execute(params![
                    id,
                    s.version,
                    s.last_seen,
                    s.event_type,
                    s.route,
                    s.first_seen
                ])?;
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.sessions.clear();
        self.since = None;
    }
}

/// How often the projector prunes expired rows when idle or between batches.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Records applied in one transaction at most (a bound on how long a batch holds the
/// database's write lock, not a target: under load batches are what has queued).
const MAX_BATCH_RECORDS: usize = 8_192;

/// The projector's loop. It stops when its channel closes or on `Close`.
pub(super) fn run(conn: Connection, rx: Receiver<ProjMsg>, shared: Arc<Shared>, s: WriterSettings) {
    let mut last_maintenance = Instant::now();
    let mut cursor = MaintenanceCursor::default();
    let mut pruning = false;
    // Records whose transaction failed, applied again first (they are committed in the log).
    let mut retry: Vec<(Vec<Record>, u64)> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut behind = Behind::default();
    // The events rows' inserts, kept from one transaction to the next (see `EventInserts`).
    let mut inserts = EventInserts::default();
    // When the last round with records began: with this round's count, the ingest rate
    // (`round_pause`).
    let mut last_round = Instant::now();
    loop {
        // Idle, the next maintenance pass is what the projector waits for: in a minute, or
        // after a round's time when the last pass left expired events to look at.
        let wait = behind.wait(if !retry.is_empty() {
            backoff
        } else if pruning {
            PRUNE_PAUSE
        } else {
            MAINTENANCE_EVERY
        });
        let first = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut records = std::mem::take(&mut retry);
        let mut jobs: Vec<Work> = Vec::new();
        let mut close = None;
        let mut count: usize = records.iter().map(|(r, _)| r.len()).sum();
        let mut next = first;
        let mut lingered = false;
        let mut prune = false;
        let mut flush = shared.sessions_wanted.swap(false, Ordering::SeqCst)
            || last_maintenance.elapsed() >= MAINTENANCE_EVERY;
        while let Some(msg) = next.take() {
            match msg {
                ProjMsg::Records(r, last) => {
                    count += r.len();
                    records.push((r, last));
                }
                ProjMsg::Job(job, reply, after) => jobs.push(Work::Job(job, reply, after)),
                ProjMsg::Settle(s) => jobs.push(Work::Settle(s)),
                ProjMsg::FlushSessions => flush = true,
                ProjMsg::Prune => prune = true,
                ProjMsg::Close(done) => {
                    close = Some(done);
                    flush = true;
                    break;
                }
            }
            if count < MAX_BATCH_RECORDS {
                next = rx.try_recv().ok();
                // Settlements come one flush at a time from many sends; a moment's pause lets
                // one commit take many of them (a commit's fixed cost is most of a small one).
                // A pause, not a wait on the channel: each message would wake a waiter.
                if next.is_none() && records.is_empty() && !lingered && jobs.len() < JOB_GATHER {
                    lingered = true;
                    std::thread::sleep(JOB_LINGER);
                    next = rx.try_recv().ok();
                }
            }
        }
        let now = Instant::now();
        let since = now.duration_since(last_round);
        if !records.is_empty() {
            last_round = now;
        }
        let round = (!records.is_empty() && count < PAUSE_BELOW).then_some(now);
        let flush = flush || behind.due();
        if !records.is_empty() || !jobs.is_empty() || (flush && !behind.sessions.is_empty()) {
            let batch = Batch {
                records: &records,
                jobs,
                behind: &mut behind,
                flush,
            };
            match apply_batch(&conn, &mut inserts, batch, &shared, &s) {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    shared.db_health.fail(&e);
                    retry = records;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let (Some(started), None) = (round, &close) {
            // Parked, not asleep on the channel: senders do not wake it (see COMMIT_EVERY).
            if let Some(rest) = round_pause(count, since).checked_sub(started.elapsed()) {
                std::thread::park_timeout(rest);
            }
        }
        if let Some(done) = close {
            if !retry.is_empty() {
                tracing::error!(
                    "the database could not take every committed record before shutdown; \
                     they stay in the log and are applied at the next start"
                );
            }
            let _ = done.send(());
            break;
        }
        if s.wal_restart_wanted.swap(false, Ordering::SeqCst) {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL restart failed; will retry");
            }
        }
        // A pass that left expired events to look at is followed by another `PRUNE_PAUSE`
        // after its start, at the end of a round or idle (see `EVENTS_PER_PASS`).
        if prune
            || (pruning && last_maintenance.elapsed() >= PRUNE_PAUSE)
            || last_maintenance.elapsed() >= MAINTENANCE_EVERY
        {
            let started = Instant::now();
            pruning = maintain(&conn, &s, &mut cursor);
            last_maintenance = started;
        }
    }
}

/// The events rows' inserts of the projector's connection (`Statements::events`), kept
/// across its transactions: prepared once per transaction they cost ~38k instructions
/// each time (the 16-row one several times that), paid per round.
#[derive(Default)]
struct EventInserts<'c>(Vec<Option<Raw<'c>>>);

/// What one transaction of the projector applies.
struct Batch<'a> {
    records: &'a [(Vec<Record>, u64)],
    jobs: Vec<Work>,
    behind: &'a mut Behind,
    /// Write the sessions held behind now, due or not.
    flush: bool,
}

/// One transaction: the records, then the jobs, then (when due) the sessions held behind;
/// answers the jobs after the commit and publishes how far the log is applied. On an error
/// nothing is committed, every job gets the error and the caller keeps the records for the
/// next attempt (the sessions they noted are noted again then).
fn apply_batch<'c>(
    conn: &'c Connection,
    inserts: &mut EventInserts<'c>,
    batch: Batch<'_>,
    shared: &Shared,
    s: &WriterSettings,
) -> Result<(), StoreError> {
    let keys = &*s.keys;
    let Batch {
        records,
        jobs,
        behind,
        flush,
    } = batch;
    let now = crate::now_millis();
    let last = records.last().map(|(_, last)| *last);
    let applied = last.unwrap_or_else(|| *shared.projected.borrow());
    let mut sessions_written = false;
    let mut afters = Vec::new();
    let delivered = delivered_with_rows(&jobs, records);
    // What each job does in the transaction: a closure, or outcomes to write.
    enum Todo {
        Run(Job),
        Settle(Vec<(Claimed, Settlement)>),
    }
    let (jobs, replies): (Vec<Todo>, Vec<JobReply>) = jobs
        .into_iter()
        .map(|w| match w {
            Work::Job(job, reply, after) => {
                afters.extend(after);
                (Todo::Run(job), reply)
            }
            Work::Settle(s) => {
                afters.push(s.after);
                (Todo::Settle(s.items), s.reply)
            }
        })
        .unzip();
    let mut results = Vec::with_capacity(jobs.len());
    let mut with_rows = 0;
    // A transaction on a shared borrow, so that the statements prepared on the connection
    // outlive it; it ends (rolled back, unless committed) when `tx` drops.
    let outcome =
        rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
            .and_then(|tx| {
                // The keys first, so that an `Answer` record finds the key its group wrote.
                if let Some(last) = last {
                    write_keys(keys, records.iter().flat_map(|(g, _)| g), last, now)?;
                }
                let mut statements = Statements::new(conn);
                statements.bodies = s.bodies.clone();
                statements.beside = s.beside;
                statements.events = std::mem::take(&mut inserts.0);
                statements.delivered = delivered;
                statements.now = now;
                // Runs of `Accept` records go together (their events rows by statements of
                // several rows); any other record is applied alone, in its place.
                let mut run: Vec<&AcceptRecord> = Vec::with_capacity(YIELD_EVERY);
                for r in records.iter().flat_map(|(g, _)| g) {
                    if let Record::Accept(a) = r {
                        run.push(a);
                        if run.len() < YIELD_EVERY {
                            continue;
                        }
                    } else if run.is_empty() {
                        apply_with(&mut statements, r, keys, Some(&mut *behind))?;
                        continue;
                    }
                    std::thread::yield_now();
                    apply_accepts(&mut statements, &run, behind)?;
                    run.clear();
                    if !matches!(r, Record::Accept(_)) {
                        apply_with(&mut statements, r, keys, Some(&mut *behind))?;
                    }
                }
                if !run.is_empty() {
                    std::thread::yield_now();
                    apply_accepts(&mut statements, &run, behind)?;
                }
                let delivered = std::mem::take(&mut statements.delivered);
                inserts.0 = std::mem::take(&mut statements.events);
                drop(statements);
                with_rows = delivered.values().filter(|d| d.written).count() as u64;
                for job in jobs {
                    let ids = &shared.next_outbox_id;
                    results.push(match job {
                        Todo::Run(job) => job(conn, now, ids)?,
                        Todo::Settle(items) => {
                            for (claim, s) in &items {
                                // Written with its row above, or settled here.
                                if !delivered.get(&claim.outbox_id).is_some_and(|d| d.written) {
                                    super::outbox::settle(conn, now, claim, s, ids)?;
                                }
                            }
                            Box::new(())
                        }
                    });
                }
                if (flush || behind.due()) && !behind.sessions.is_empty() {
                    behind.write(conn)?;
                    sessions_written = true;
                }
                let sessions_whole = sessions_written || behind.sessions.is_empty();
                if last.is_some() || sessions_written {
                    let sessions = sessions_whole.then_some(applied);
                    set_positions(conn, applied, sessions)?;
                }
                // The bodies the rows name are in their files before the rows are.
                if let Some(b) = &s.bodies {
                    b.write_out().map_err(failed_io)?;
                }
                tx.commit()
            });
    if let Some(b) = &s.bodies {
        if outcome.is_ok() {
            b.committed();
            if let Err(e) = b.erase_pending() {
                tracing::warn!(error = %e, "cannot overwrite forgotten events' bodies");
            }
        } else {
            b.discard();
            b.drop_erasures();
        }
    }
    let finished = replies.len() as u64;
    for after in afters {
        after();
    }
    match outcome {
        Ok(()) => {
            if sessions_written {
                behind.clear();
            }
            if let Some(last) = last {
                shared.projected.send_replace(last);
            }
            if behind.sessions.is_empty() {
                shared.sessions_at.send_replace(applied);
            }
            shared.jobs_done.send_modify(|d| *d += finished);
            shared
                .delivered_with_rows
                .fetch_add(with_rows, Ordering::Relaxed);
            shared.db_health.recover();
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
            Ok(())
        }
        Err(e) => {
            let e = StoreError::unavailable(e);
            if let Some(suppressed) = APPLY_FAILED.check() {
                tracing::error!(error = %e, suppressed,
                    records = records.iter().map(|(r, _)| r.len()).sum::<usize>(),
                    "cannot apply committed records to the database; they stay in the log and \
                     are retried");
            }
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            shared.jobs_done.send_modify(|d| *d += finished);
            Err(e)
        }
    }
}

/// Checks that `a`'s events row reads its body from beside the database (recovery, for a
/// record the database holds: see `bodies`, "Durability"); writes the body into the row
/// when its record there is lost or damaged (or, for an event kept there without a row, the
/// log's record as its row: `beside::keep_record`). Returns whether it did.
pub(super) fn keep_body(
    conn: &Connection,
    bodies: &Bodies,
    a: &AcceptRecord,
) -> rusqlite::Result<bool> {
    let found: Option<(i64, Option<i64>)> = conn
        .prepare_cached(concat!(
            "SELECT rowid, body_at FROM events WHERE rowid = ",
            event_row!("?1"),
            " AND event_id = ?1"
        ))?
        .query_row([&a.event_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, Some(at))) = found else {
        // No row: it may be kept beside the database (`beside`), its whole record lost.
        return match found {
            None => super::beside::keep_record(conn, bodies, a),
            Some(_) => Ok(false),
        };
    };
    if bodies.read(at, row).is_ok_and(|b| b == a.body.as_bytes()) {
        return Ok(false);
    }
    conn.prepare_cached("UPDATE events SET body = ?2, body_at = NULL WHERE rowid = ?1")?
        .execute(params![row, a.body])?;
    Ok(true)
}

/// An I/O failure of the bodies' files, as the transaction's error.
pub(super) fn failed_io(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

/// A delivered outcome that may be written with its row (see `Settles`).
pub(super) struct DeliveredNow {
    attempt: u32,
    duration_ms: u64,
    /// Its row was written in this transaction, as delivered.
    written: bool,
}

/// The delivered outcomes of `settles` that may be written with their rows if this batch's
/// records hold them: a row not leased to its request (`respond`), of a session no record of
/// the batch forgets (a forget cancels the session's pending rows; its outcome must stay what
/// it was before outcomes were written with rows).
fn delivered_with_rows(
    jobs: &[Work],
    records: &[(Vec<Record>, u64)],
) -> crate::FastMap<i64, DeliveredNow> {
    let mut out = crate::FastMap::default();
    if records.is_empty() {
        return out;
    }
    let forgotten: Vec<&str> = records
        .iter()
        .flat_map(|(g, _)| g)
        .filter_map(|r| match r {
            Record::Forget { session_id, .. } => Some(session_id.as_str()),
            _ => None,
        })
        .collect();
    let items = jobs.iter().flat_map(|w| match w {
        Work::Settle(s) => &s.items[..],
        Work::Job(..) => &[],
    });
    for (claim, s) in items {
        if let Settlement::Delivered { duration_ms, .. } = s {
            if claim.respond_to.is_none() && !forgotten.contains(&claim.session_id.as_str()) {
                out.insert(
                    claim.outbox_id,
                    DeliveredNow {
                        attempt: claim.attempts + 1,
                        duration_ms: *duration_ms,
                        written: false,
                    },
                );
            }
        }
    }
    out
}

/// Writes the idempotency keys and the correlation index's entries of `records` to `keys`,
/// with `last` as its position (see `keys`: a second projection of the log).
pub(super) fn write_keys<'a>(
    keys: &Keys,
    records: impl Iterator<Item = &'a Record> + Clone,
    last: u64,
    now: i64,
) -> rusqlite::Result<()> {
    // An event whose correlation id is its own id is found by that id: no entry.
    let correlations = records.clone().filter_map(|r| match r {
        Record::Accept(a) if a.correlation_id != a.event_id => {
            Some((a.correlation_id.as_str(), a.event_id.as_str()))
        }
        _ => None,
    });
    let entries = records.filter_map(|r| match r {
        Record::Accept(a) => Some((a.key.as_str(), a.event_id.as_str(), a.at)),
        _ => None,
    });
    keys.write(entries, correlations, last, now)
        .map_err(super::keys::failed)
}

/// Records how far the log has been applied (in the transaction that applied it), and how
/// far to the sessions table when `sessions` is given (written behind: `SESSIONS_EVERY`).
pub(super) fn set_positions(
    c: &Connection,
    lsn: u64,
    sessions: Option<u64>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE log_position SET projected_lsn = ?1, \
           sessions_lsn = coalesce(?2, sessions_lsn) WHERE id = 1",
    )?
    .execute(params![lsn as i64, sessions.map(|s| s as i64)])?;
    Ok(())
}

/// How far the log has been applied to the sessions table (at most `projected`).
pub(super) fn sessions_projected(c: &Connection) -> rusqlite::Result<u64> {
    position(c, "coalesce(sessions_lsn, projected_lsn)")
}

/// How far the log has been applied to this database.
pub(super) fn projected(c: &Connection) -> rusqlite::Result<u64> {
    position(c, "projected_lsn")
}

/// A position read from `log_position` (`column`: an expression of its columns); 0 when
/// there is none.
fn position(c: &Connection, column: &str) -> rusqlite::Result<u64> {
    let lsn: Option<i64> = c
        .query_row(
            &format!("SELECT {column} FROM log_position WHERE id = 1"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(lsn.unwrap_or(0).max(0) as u64)
}

/// Applies one record with statements kept for the records that follow (`Statements::new`
/// on the connection). Applying the records in log order from an empty database rebuilds
/// what the request path wrote; each is applied once (the projected position moves in the
/// same transaction).
pub(super) fn apply(st: &mut Statements<'_>, r: &Record, keys: &Keys) -> rusqlite::Result<()> {
    apply_with(st, r, keys, None)
}

/// Applies only what one record does to the sessions table (recovery: a record the database
/// has whose session was still held behind when the process stopped).
pub(super) fn apply_sessions(tx: &Connection, r: &Record) -> rusqlite::Result<()> {
    match r {
        Record::Accept(a) => write_session(&mut Statements::new(tx), a),
        Record::Forget { session_id, .. } => {
            tx.execute(
                "DELETE FROM sessions WHERE session_id = ?1",
                rusqlite::params![session_id],
            )?;
            Ok(())
        }
        Record::Spend(_) | Record::Answer { .. } => Ok(()),
    }
}

/// The statements that project an event, prepared once per transaction and kept for its
/// records: taken from the connection's statement cache and given back for each use, every
/// use hashed the statement's text twice and cleared its bindings (~2.6k instructions per
/// event, bench/README.md, fifteenth session).
pub(super) struct Statements<'c> {
    conn: &'c Connection,
    session: Option<CachedStatement<'c>>,
    session_update: Option<CachedStatement<'c>>,
    /// The events rows' inserts: `events[n - 1]` writes `n` rows (see `EVENT_CHUNK`).
    events: Vec<Option<Raw<'c>>>,
    row: Option<CachedStatement<'c>>,
    held_row: Option<CachedStatement<'c>>,
    delivered_row: Option<CachedStatement<'c>>,
    /// Whether each sink delivers in session order (`sink_settings`), as read at its first
    /// row: bound into each outbox row instead of a subquery per row. Only a job
    /// (`outbox::configure_sinks`) changes the table, and jobs run after the records, once
    /// these statements are dropped; recovery, which keeps them across its transactions, runs
    /// no jobs.
    ordered: crate::FastMap<String, bool>,
    /// Rows delivered already, written as such (see `Settles`), and the transaction's time.
    delivered: crate::FastMap<i64, DeliveredNow>,
    now: i64,
    /// Where events' bodies go beside the database (`bodies`); `None`: in their rows.
    pub(super) bodies: Option<Arc<Bodies>>,
    /// Whether events with no outbox row are kept beside the database without an events
    /// row (`beside`: only tests set it until every reader reads them there), and the last
    /// rowid of the runs once read in this transaction.
    pub(super) beside: bool,
    beside_last: Option<i64>,
}

impl<'c> Statements<'c> {
    pub(super) fn new(conn: &'c Connection) -> Statements<'c> {
        Statements {
            conn,
            session: None,
            session_update: None,
            events: Vec::new(),
            row: None,
            held_row: None,
            delivered_row: None,
            ordered: crate::FastMap::default(),
            delivered: crate::FastMap::default(),
            now: 0,
            bodies: None,
            beside: false,
            beside_last: None,
        }
    }

    /// Where `a`'s body goes for its events row `row`: a place in the bodies' files, or
    /// `None` for the row itself (see `bodies`).
    fn body_at(&self, a: &AcceptRecord, row: i64) -> Option<i64> {
        self.bodies.as_ref()?.append(row, a.body.as_bytes())
    }

    /// Whether `sink`'s rows are delivered in session order (false for a sink not recorded).
    fn ordered(&mut self, sink: &str) -> rusqlite::Result<bool> {
        if let Some(&o) = self.ordered.get(sink) {
            return Ok(o);
        }
        let o = self
            .conn
            .prepare_cached("SELECT ordered FROM sink_settings WHERE sink = ?1")?
            .query_row([sink], |r| r.get::<_, bool>(0))
            .optional()?
            .unwrap_or(false);
        self.ordered.insert(sink.to_string(), o);
        Ok(o)
    }

    /// The insert of `rows` events rows, prepared on its first use (see `raw`).
    fn event_insert(&mut self, rows: usize) -> rusqlite::Result<&mut Raw<'c>> {
        if self.events.len() < rows {
            self.events.resize_with(rows, || None);
        }
        let slot = &mut self.events[rows - 1];
        if slot.is_none() {
            *slot = Some(Raw::new(self.conn, &super::raw::events_insert_sql(rows))?);
        }
        slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }

    /// The statement in `slot`, prepared on its first use.
    fn take<'s>(
        conn: &'c Connection,
        slot: &'s mut Option<CachedStatement<'c>>,
        sql: &str,
    ) -> rusqlite::Result<&'s mut CachedStatement<'c>> {
        if slot.is_none() {
            *slot = Some(conn.prepare_cached(sql)?);
        }
        slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// Applies one record with the transaction's statements (see `apply`); with `behind`, its
/// session is held there instead of written (see `SESSIONS_EVERY`).
pub(super) fn apply_with(
    st: &mut Statements<'_>,
    r: &Record,
    keys: &Keys,
    behind: Option<&mut Behind>,
) -> rusqlite::Result<()> {
    let tx = st.conn;
    match r {
        Record::Accept(a) => {
            match behind {
                Some(b) => b.note(a),
                None => write_session(st, a)?,
            }
            apply_accept(st, a)
        }
        Record::Spend(s) => spend(tx, s),
        Record::Answer {
            key,
            event_id,
            status,
            body,
        } => {
            let event_id = match event_id {
                Some(id) => Some(id.clone()),
                // An older record: the key finds its event (`keys` holds it unless it was
                // written before the keys moved there).
                None => keys
                    .get(key)
                    .map_err(super::keys::failed)?
                    .map(|e| e.event_id),
            };
            match event_id {
                Some(id) => {
                    // An event kept beside the database gets its row first, and its record
                    // there is overwritten once this commits.
                    if let Some(place) = super::beside::materialise(tx, &id)? {
                        if let (Some(b), Some(row)) = (&st.bodies, crate::event_id::row_of(&id)) {
                            b.erase_later(place, row);
                        }
                    }
                    super::outbox::set_event_answer(tx, &id, *status, body)
                }
                None => super::outbox::set_answer(tx, key, *status, body),
            }
        }
        Record::Forget { session_id, at } => {
            if let Some(b) = behind {
                b.sessions.remove(session_id);
            }
            forget(tx, session_id, *at)
        }
    }
}

/// `forgotten_sessions.events` of a session forgotten whose events may still hold their
/// payloads: [`forget`] has run, [`forget_events`] and [`finish_forget`] have not.
pub(super) const FORGET_PENDING: i64 = -1;

/// Forgets a session (SPEC §12.3), the part applied with its log record: its pending rows and
/// dead letters become `forgotten` (never sent or replayed), its state is deleted (so its next
/// event is version 1), and `forgotten_sessions` records the time with the events' count
/// still [`FORGET_PENDING`]. The events themselves are emptied afterwards, off the
/// projector: sessions have no index in `events` (it would cost every commit), so finding
/// their rows reads the whole table, which on a large store would hold the projector, and
/// with it every acceptance, for seconds. The store's `forget_session` finds the rows on a
/// connection of its own and empties them through jobs ([`forget_events`],
/// [`finish_forget`]); a forget the process stopped in the middle of is finished when the
/// store opens again ([`finish_pending_forgets`]). The outbox is found by its partial indexes
/// (pending, dead). (The sequencer's hot answers are dropped once this record is applied,
/// before it decides again: `sequencer::Hot::evict`.)
fn forget(tx: &Connection, session_id: &str, at: i64) -> rusqlite::Result<()> {
    let cancelled = tx.execute(
        "UPDATE outbox SET status = 'forgotten', lease_until = NULL, lease_owner = NULL, \
           result = NULL \
         WHERE session_id = ?1 AND status = 'pending' AND created_at <= ?2",
        rusqlite::params![session_id, at],
    )?;
    tx.execute(
        "UPDATE outbox SET status = 'forgotten', result = NULL \
         WHERE session_id = ?1 AND status = 'dead' AND created_at <= ?2",
        rusqlite::params![session_id, at],
    )?;
    tx.execute(
        "DELETE FROM sessions WHERE session_id = ?1",
        rusqlite::params![session_id],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO forgotten_sessions (session_id, at, events, cancelled) \
         VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![session_id, at, FORGET_PENDING, cancelled as i64],
    )?;
    Ok(())
}

/// [`forget`], for tests that make the state a stop leaves in the middle of a forget.
#[cfg(test)]
pub(super) fn forget_for_test(tx: &Connection, session_id: &str, at: i64) -> rusqlite::Result<()> {
    forget(tx, session_id, at)
}

/// Rows of the events table a forget's scan reads with one statement. Between two, a scan
/// on a connection of its own (`SqliteStore::empty_forgotten`) holds no read transaction, so
/// checkpoints are not held back and the WAL does not grow with the scan's length (one
/// statement held them back for its whole length: about a second at 1.6 million rows under
/// load, bench/README.md, forty-ninth session).
pub(super) const FORGET_SCAN_ROWS: i64 = 50_000;

/// The rows of the events a forget at `at` empties: every event of the session committed
/// by then. Reads the whole events table, in rowid order, [`FORGET_SCAN_ROWS`] rows a
/// statement.
pub(super) fn forget_scan(c: &Connection, session_id: &str, at: i64) -> rusqlite::Result<Vec<i64>> {
    forget_scan_by(c, session_id, at, FORGET_SCAN_ROWS, |_| Ok(()))
}

/// [`forget_scan`], `per_read` rows a statement, calling `between` after each statement
/// but the last (tests). Needs no snapshot across statements: every event the forget
/// covers was applied before the scan began (the store waits until the projector has caught
/// up), and an event applied since has a later commit time (see `sequencer::Hot::forgets`),
/// so the rows read later can only add events outside the forget.
pub(super) fn forget_scan_by(
    c: &Connection,
    session_id: &str,
    at: i64,
    per_read: i64,
    mut between: impl FnMut(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<Vec<i64>> {
    let mut st = c.prepare(
        "SELECT rowid, session_id = ?1 AND committed_at <= ?2 FROM events \
         WHERE rowid >= ?3 ORDER BY rowid LIMIT ?4",
    )?;
    let mut found = Vec::new();
    // Moved events (ids that are no ULID) have negative rowids.
    let mut from = i64::MIN;
    loop {
        let (mut read, mut last) = (0, None);
        let mut rows = st.query(rusqlite::params![session_id, at, from, per_read])?;
        while let Some(r) = rows.next()? {
            let rowid: i64 = r.get(0)?;
            if r.get::<_, bool>(1)? {
                found.push(rowid);
            }
            (read, last) = (read + 1, Some(rowid));
        }
        // The statement ran to its end, which ended its read: until the next one, this
        // connection holds none.
        drop(rows);
        match last.and_then(|l| l.checked_add(1)) {
            Some(next) if read == per_read => from = next,
            _ => break,
        }
        between(c)?;
    }
    // And the session's events kept beside the database without a row (`beside`):
    // `forget_events` writes each one's row first.
    let beside = super::beside::session_events_where(c, session_id, usize::MAX, |a| a.at <= at)?;
    found.extend(beside.into_iter().map(|(row, _)| row));
    Ok(found)
}

/// What `forget_events` reads of a row: its id, version, answer and body's place.
type ForgetRow = (String, i64, Option<Vec<u8>>, Option<i64>);

/// Empties the events at `rows` (from [`forget_scan`]; each is checked again, so a row
/// emptied already or no longer the session's is harmless): each keeps its identifiers, times
/// and outcome but loses its payload, and the answers kept for its duplicates lose their
/// `data` (the route's extracts, a `respond` upstream's answer: `decide::Answer::forgotten`).
pub(super) fn forget_events(
    tx: &Connection,
    bodies: Option<&Bodies>,
    session_id: &str,
    at: i64,
    rows: &[i64],
) -> rusqlite::Result<()> {
    use crate::store::decide::Answer;
    let mut read = tx.prepare_cached(
        "SELECT event_id, state_version, answer, body_at FROM events \
         WHERE rowid = ?1 AND session_id = ?2 AND committed_at <= ?3",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE events SET body = json_object('eventId', event_id, 'route', route, \
           'correlationId', correlation_id, 'sessionId', session_id, 'eventType', event_type, \
           'stateVersion', state_version, 'receivedAt', received_at, 'forgotten', json('true')), \
           answer = ?2, body_at = NULL \
         WHERE rowid = ?1",
    )?;
    // Answers written before schema 9 are kept in a table of their own.
    let mut legacy = tx.prepare_cached("SELECT body FROM answers WHERE event_id = ?1")?;
    let mut legacy_update =
        tx.prepare_cached("UPDATE answers SET body = ?2 WHERE event_id = ?1")?;
    for &rowid in rows {
        // An event kept beside the database gets its row first, and its record there is
        // overwritten once this commits.
        if let Some(place) = super::beside::materialise_row(tx, rowid)? {
            if let Some(bodies) = bodies {
                bodies.erase_later(place, rowid);
            }
        }
        let found: Option<ForgetRow> = read
            .query_row(rusqlite::params![rowid, session_id, at], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((event_id, version, answer, body_at)) = found else {
            continue;
        };
        // The body's record beside the database is overwritten once this commits.
        if let (Some(bodies), Some(body_at)) = (bodies, body_at) {
            bodies.erase_later(body_at, rowid);
        }
        let version = version as u64;
        let answer = answer.map(|a| Answer::forgotten(&a, &event_id, session_id, version));
        update.execute(rusqlite::params![rowid, answer])?;
        let old: Option<Vec<u8>> = legacy.query_row([&event_id], |r| r.get(0)).optional()?;
        if let Some(old) = old {
            let emptied = Answer::forgotten(&old, &event_id, session_id, version);
            legacy_update.execute(rusqlite::params![event_id, emptied])?;
        }
    }
    Ok(())
}

/// Records how many events the forget at `at` emptied, which ends it (unless the session was
/// forgotten again since: that forget, at a later time, empties these rows too and counts).
pub(super) fn finish_forget(
    tx: &Connection,
    session_id: &str,
    at: i64,
    events: usize,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE forgotten_sessions SET events = ?3 \
         WHERE session_id = ?1 AND at = ?2 AND events = ?4",
        rusqlite::params![session_id, at, events as i64, FORGET_PENDING],
    )?;
    Ok(())
}

/// Finishes the forgets a process stopped in the middle of (opening the store, after the log's
/// records are applied, before anything else runs): each in one transaction. Returns how many.
pub(super) fn finish_pending_forgets(
    conn: &Connection,
    bodies: Option<&Bodies>,
) -> rusqlite::Result<usize> {
    let pending: Vec<(String, i64)> = conn
        .prepare("SELECT session_id, at FROM forgotten_sessions WHERE events = ?1")?
        .query_map([FORGET_PENDING], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (session_id, at) in &pending {
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        let rows = forget_scan(&tx, session_id, *at)?;
        let done = forget_events(&tx, bodies, session_id, *at, &rows)
            .and_then(|()| finish_forget(&tx, session_id, *at, rows.len()))
            .and_then(|()| tx.commit());
        if let Some(bodies) = bodies {
            if done.is_ok() {
                bodies.erase_pending().map_err(failed_io)?;
            } else {
                bodies.drop_erasures();
            }
        }
        done?;
    }
    Ok(pending.len())
}

fn spend(tx: &Connection, s: &Spend) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO spent_signatures (route, mac, expires_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![s.route, s.mac, s.expires_at])?;
    Ok(())
}

/// Writes an event's session state at once (recovery, and callers outside the projector).
fn write_session(st: &mut Statements<'_>, a: &AcceptRecord) -> rusqlite::Result<()> {
    let version = a.state_version as i64;
    let conn = st.conn;
    let session = params![a.session_id, version, a.at, a.event_type, a.route];
    // A session's later event finds its row (an insert that conflicts and then updates seeks
    // twice); the row may still have been pruned since the version was decided, and a first
    // event may find an expired row: both take the upsert.
    let updated = if version > 1 {
        Statements::take(
            conn,
            &mut st.session_update,
            "UPDATE sessions SET state_version = ?2, last_seen = ?3, last_event_type = ?4, \
               last_route = ?5 \
             WHERE session_id = ?1",
        )?
        .execute(session)?
    } else {
        0
    };
    if updated == 0 {
        Statements::take(
            conn,
            &mut st.session,
            "INSERT INTO sessions (session_id, state_version, first_seen, last_seen, \
                                   last_event_type, last_route) \
             VALUES (?1, ?2, ?3, ?3, ?4, ?5) \
             ON CONFLICT (session_id) DO UPDATE SET \
               state_version = ?2, \
               first_seen = CASE WHEN ?2 = 1 THEN ?3 ELSE sessions.first_seen END, \
               last_seen = ?3, last_event_type = ?4, last_route = ?5",
        )?
        .execute(session)?;
    }
    Ok(())
}

/// Writes an event's row, its outbox rows and its spent signature (its session is written by
/// the caller: at once or behind).
/// Writes `a`'s events row at the number in its id (schema 15; `crate::event_id`). An id
/// without one, or whose number another event has (ids made before schema 15 are random
/// after their time), gets the next negative rowid and an `events_moved` entry. The same id
/// twice is refused, as the index on the id refused it before.
fn insert_event(st: &mut Statements<'_>, a: &AcceptRecord) -> rusqlite::Result<()> {
    if let Some(row) = crate::event_id::row_of(&a.event_id) {
        let body_at = st.body_at(a, row);
        match super::raw::insert_event(st.event_insert(1)?, a, row, body_at) {
            Err(e) if taken_row(&e) => {
                let holder: String = st.conn.query_row(
                    "SELECT event_id FROM events WHERE rowid = ?1",
                    params![row],
                    |r| r.get(0),
                )?;
                if holder == a.event_id {
                    return Err(already_stored(&a.event_id));
                }
            }
            done => return done,
        }
    }
    let row: i64 = st.conn.query_row(
        "SELECT min(0, coalesce((SELECT min(rowid) FROM events), 0), \
                   coalesce((SELECT min(row) FROM events_moved), 0)) - 1",
        [],
        |r| r.get(0),
    )?;
    st.conn
        .prepare_cached("INSERT INTO events_moved (event_id, row) VALUES (?1, ?2)")?
        .execute(params![a.event_id, row])
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => already_stored(&a.event_id),
            _ => e,
        })?;
    // A moved event's body stays in its row (see `bodies`, "Which bodies go there").
    super::raw::insert_event(st.event_insert(1)?, a, row, None)
}

/// The error for an event id the table already holds (what the index on the id said before
/// schema 15, with the id).
fn already_stored(event_id: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
        Some(format!("event {event_id} is already in the store")),
    )
}

/// Whether `e` is an insert refused for its rowid.
pub(super) fn taken_row(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_ROWID)
}

/// At most this many events rows are written by one statement (`insert_events`).
/// Measured: see bench/README.md, forty-first session.
const EVENT_CHUNK: usize = 16;

/// Writes the events rows of `chunk` (at most `EVENT_CHUNK`) with one statement when every
/// id has its number. From a row the statement refuses for its rowid (a number another event
/// has, an id already stored), or for a chunk with an id without a number, the rows go one by
/// one as `insert_event`, which handles each case; any other failure is the chunk's.
fn insert_events(st: &mut Statements<'_>, chunk: &[&AcceptRecord]) -> rusqlite::Result<()> {
    let mut written = 0;
    if chunk.len() > 1 {
        let events: Option<Vec<(&AcceptRecord, i64, Option<i64>)>> = chunk
            .iter()
            .map(|a| crate::event_id::row_of(&a.event_id).map(|row| (*a, row, st.body_at(a, row))))
            .collect();
        if let Some(events) = events {
            match super::raw::insert_events(st.event_insert(events.len())?, &events) {
                Ok(()) => return Ok(()),
                // Only a refused row goes on: after any other failure SQLite may have rolled
                // the transaction back, and the rows that followed would be written outside
                // it.
                Err((n, e)) if taken_row(&e) => written = n,
                Err((_, e)) => return Err(e),
            }
        }
    }
    for a in &chunk[written.min(chunk.len())..] {
        insert_event(st, a)?;
    }
    Ok(())
}

/// Applies a run of consecutive `Accept` records (see `apply_with`): their events rows
/// first, `EVENT_CHUNK` to a statement, then each one's session and outbox rows.
fn apply_accepts(
    st: &mut Statements<'_>,
    run: &[&AcceptRecord],
    behind: &mut Behind,
) -> rusqlite::Result<()> {
    let rest;
    let rows = if st.beside {
        rest = put_beside(st, run)?;
        &rest[..]
    } else {
        run
    };
    for chunk in rows.chunks(EVENT_CHUNK) {
        insert_events(st, chunk)?;
    }
    for a in run {
        behind.note(a);
        write_rows(st, a)?;
    }
    Ok(())
}

/// Keeps the events of `run` that need no events row beside the database (`beside`): an
/// event with no `respond` row (held for its request; such a row may add a late row and
/// replace the answer), whose body would go to the bodies' files (`Bodies::append`'s rule)
/// and whose rowid is above every run's. Their records go to the bodies' files and their
/// places to run rows of up to `beside::RUN_EVENTS`, each with the span of its events'
/// outbox rows; returns the others, in order. Their outbox rows are written as every
/// event's are (`write_rows`).
fn put_beside<'a>(
    st: &mut Statements<'_>,
    run: &[&'a AcceptRecord],
) -> rusqlite::Result<Vec<&'a AcceptRecord>> {
    let Some(bodies) = st.bodies.clone() else {
        return Ok(run.to_vec());
    };
    let mut last = match st.beside_last {
        Some(last) => last,
        None => super::beside::last(st.conn)?,
    };
    let mut rest = Vec::new();
    let mut entries = Vec::with_capacity(run.len().min(super::beside::RUN_EVENTS));
    let mut record = Vec::with_capacity(2048);
    let mut span = None;
    for a in run {
        let placed = match crate::event_id::row_of(&a.event_id) {
            Some(row) if row > last && a.rows.iter().all(|r| r.held.is_none()) => {
                record.clear();
                a.encode_beside(&mut record);
                bodies.append(row, &record).map(|at| (row, at))
            }
            _ => None,
        };
        let Some((row, at)) = placed else {
            rest.push(*a);
            continue;
        };
        last = row;
        entries.push(super::beside::Entry {
            row,
            at,
            session: super::beside::session_tag(&a.session_id),
        });
        span = super::beside::widen(span, a.rows.iter().map(|r| r.id));
        if entries.len() == super::beside::RUN_EVENTS {
            super::beside::write_run(st.conn, &entries, span.take())?;
            entries.clear();
        }
    }
    super::beside::write_run(st.conn, &entries, span)?;
    st.beside_last = Some(last);
    Ok(rest)
}

/// `apply_accepts` for a test's records, their sessions noted nowhere.
#[cfg(test)]
pub(super) fn apply_accepts_for_tests(
    st: &mut Statements<'_>,
    records: &[AcceptRecord],
) -> rusqlite::Result<()> {
    let run: Vec<&AcceptRecord> = records.iter().collect();
    apply_accepts(st, &run, &mut Behind::default())
}

fn apply_accept(st: &mut Statements<'_>, a: &AcceptRecord) -> rusqlite::Result<()> {
    insert_event(st, a)?;
    write_rows(st, a)
}

/// Writes an accepted event's outbox rows and its spent signature.
fn write_rows(st: &mut Statements<'_>, a: &AcceptRecord) -> rusqlite::Result<()> {
    let conn = st.conn;
    for row in &a.rows {
        let now = st.now;
        let ordered = st.ordered(&row.sink)?;
        match (&row.held, st.delivered.get_mut(&row.id)) {
            // Delivered before it was written: written once, as delivered (its attempt in
            // the row, as `outbox::settle` keeps it; no entry in the due index).
            (None, Some(d)) => {
                d.written = true;
                let duration = i64::try_from(d.duration_ms).unwrap_or(i64::MAX);
                let stmt = Statements::take(
                    conn,
                    &mut st.delivered_row,
                    "INSERT INTO outbox (id, event_id, sink, route, session_id, attempts, \
                                         next_attempt_at, created_at, delivered_at, \
                                         delivered_ms, delivered_by, status, ordered) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, 'delivered', ?11)",
                )?;
                let attempt = d.attempt;
                insert_row(
                    stmt,
                    row,
                    a,
                    &[
                        &attempt,
                        &a.at,
                        &now,
                        &duration,
                        &crate::replica_id(),
                        &ordered,
                    ],
                )?;
            }
            (None, None) => {
                let stmt = Statements::take(
                    conn,
                    &mut st.row,
                    "INSERT INTO outbox (id, event_id, sink, route, session_id, \
                                         next_attempt_at, created_at, status, attempts, ordered) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'pending', 0, ?7)",
                )?;
                insert_row(stmt, row, a, &[&a.at, &ordered])?;
            }
            (Some(h), _) => {
                let stmt = Statements::take(
                    conn,
                    &mut st.held_row,
                    "INSERT INTO outbox (id, event_id, sink, route, session_id, \
                                         next_attempt_at, created_at, lease_until, \
                                         lease_owner, respond_to, status, attempts, ordered) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, 'pending', 0, ?10)",
                )?;
                insert_row(
                    stmt,
                    row,
                    a,
                    &[&a.at, &h.lease_until, &h.token, &h.respond_to, &ordered],
                )?;
            }
        }
    }
    // The key is in `keys` (written by the caller); the answer is in the event's row.
    if let Some(s) = &a.spend {
        spend(conn, s)?;
    }
    Ok(())
}

/// Runs one of the outbox row inserts of `apply_accept`: the row's id, event, sink, route
/// and session are its first five parameters, `rest` the statement's others in order.
fn insert_row(
    stmt: &mut CachedStatement<'_>,
    row: &super::record::OutboxRow,
    a: &AcceptRecord,
    rest: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    let head: [&dyn rusqlite::ToSql; 5] =
        [&row.id, &a.event_id, &row.sink, &a.route, &a.session_id];
    for (i, p) in head.iter().chain(rest).enumerate() {
        stmt.raw_bind_parameter(i + 1, p)?;
    }
    stmt.raw_execute()?;
    Ok(())
}

/// How much longer than its idempotency key an answer is kept (see `maintain`).
const ANSWER_MARGIN_MS: i64 = 3_600_000;

/// Sessions examined per maintenance pass; bounds how long one pass holds the writer.
const SESSION_PRUNE_CHUNK: i64 = 5_000;

/// Events a maintenance pass looks at, at most (expired or not): what bounds how long one
/// pass holds the projector, and so acceptances behind it. Deleting an event cost about
/// 12 µs (bench/README.md, forty-sixth session), so a pass deletes for ~25 ms at most. Once
/// retention is reached, every minute's pass has a minute of the ingest rate to delete (a
/// second's worth of work at 5,000 events a second), and after a long stop or a shorter
/// `retention` far more: the projector then runs a pass every `PRUNE_PAUSE` (after a round,
/// or idle) until the expired events are gone.
const EVENTS_PER_PASS: i64 = 2_000;

/// One cycle of pruning in this many starts from the first event; the others start where
/// the last cycle ended (see `MaintenanceCursor::walked_to`). With a cycle a minute, an event
/// kept past its time by an undelivered row or a dead letter goes within about an hour of
/// its last row's delivery or purge.
pub(super) const FULL_CYCLE_EVERY: u32 = 60;

/// Runs of events kept beside the database (`beside`, up to 64 events each) a pruning pass
/// looks at, at most: about as many events as `EVENTS_PER_PASS`.
const RUNS_PER_PASS: usize = 32;

/// Where the bounded scans go on from; each starts again after a full pass.
#[derive(Default)]
pub(super) struct MaintenanceCursor {
    session_after: String,
    /// The rowid the next pass's events start at (0: a new cycle).
    events_from: i64,
    /// Where the last cycle ended: every event before it had expired then, and was deleted
    /// unless an undelivered row or a dead letter kept it. A cycle starts there, and only
    /// one in `FULL_CYCLE_EVERY` starts from the first event (with the moved ones, which
    /// have negative rowids), to find the kept events whose rows have gone since. Before,
    /// every cycle looked at every kept event again: a sink's dead letters past retention
    /// were read every minute for as long as they stayed.
    walked_to: i64,
    /// Cycles ended since this cursor was made.
    cycles: u32,
    /// When everything but the events was last pruned: at the start of each cycle, and at
    /// least every `MAINTENANCE_EVERY` should a cycle never end (expired events coming
    /// faster than passes delete them), so that expired keys never pile up behind it.
    others_at: Option<Instant>,
}

#[cfg(test)]
impl MaintenanceCursor {
    /// A cursor in the middle of a cycle whose other pruning last ran `ago`.
    pub(super) fn mid_cycle(events_from: i64, ago: Duration) -> MaintenanceCursor {
        MaintenanceCursor {
            session_after: String::new(),
            events_from,
            others_at: Instant::now().checked_sub(ago),
            ..MaintenanceCursor::default()
        }
    }
}

/// Deletes the events before `?1` (an event id; `?2` its number) from rowid `?3` on that have
/// no outbox row left: by rowid (an id's number orders as the id does), a moved event by its
/// id (only with `?3` = 0, the first pass of a cycle).
pub(super) const EXPIRED_EVENTS: &str = "DELETE FROM events \
       WHERE ((rowid >= ?3 AND rowid < ?2) OR (?3 = 0 AND rowid < 0 AND event_id < ?1)) \
       AND NOT EXISTS (SELECT 1 FROM outbox o \
         WHERE o.id BETWEEN events.outbox_first AND events.outbox_last \
           AND o.event_id = events.event_id) \
       AND NOT EXISTS (SELECT 1 FROM outbox o \
         WHERE o.late = 1 AND o.event_id = events.event_id)";

/// Copies into their rows the bodies of the events from rowid `?1` to before `?2` that are
/// still beside the database (the events a pruning pass keeps; see `bodies`, "Retention").
/// Moved events (negative rowids) never have their body there.
pub(super) const KEPT_BODIES: &str = "UPDATE events \
       SET body = event_body(body, body_at, rowid), body_at = NULL \
       WHERE rowid >= ?1 AND rowid < ?2 AND body_at IS NOT NULL";

/// Prunes what has expired: idempotency records past the window, delivered outbox rows (with
/// their attempt records) and events past retention that have no undelivered outbox row (event
/// ids are ULIDs, so "older than" is an id range), and a bounded chunk of expired sessions.
/// The events are looked at `EVENTS_PER_PASS` at a time, from where the last pass stopped;
/// returns whether older events are left to look at (the caller runs another pass soon).
pub(super) fn maintain(
    conn: &Connection,
    s: &WriterSettings,
    cursor: &mut MaintenanceCursor,
) -> bool {
    maintain_by(conn, s, cursor, EVENTS_PER_PASS)
}

/// [`maintain`], `per_pass` events at a time.
pub(super) fn maintain_by(
    conn: &Connection,
    s: &WriterSettings,
    cursor: &mut MaintenanceCursor,
    per_pass: i64,
) -> bool {
    let now = crate::now_millis();
    let cutoff_ms = u64::try_from(now - s.retention_ms).unwrap_or(0);
    let oldest_kept = ulid::Ulid::from_parts(cutoff_ms, 0).to_string();
    let oldest_row = crate::event_id::row_of(&oldest_kept).unwrap_or(0);
    let cycle_start = cursor.events_from == 0;
    let from = if !cycle_start {
        cursor.events_from
    } else if cursor.cycles.is_multiple_of(FULL_CYCLE_EVERY) {
        0
    } else {
        cursor.walked_to
    };
    let key_cutoff = s.windows.idempotency_cutoff(now);
    // An answer goes by its event id's time, an hour after its key could have: a key is
    // written after its event id is made (moments later), so no live key loses its answer.
    // Since schema 9 the answer is in the event's row, so an event is kept that long even
    // past `retention`; before, in `answers`.
    let answer_cutoff = u64::try_from(key_cutoff.saturating_sub(ANSWER_MARGIN_MS)).unwrap_or(0);
    let answer_cutoff = ulid::Ulid::from_parts(answer_cutoff, 0).to_string();
    let events_cutoff = oldest_kept.as_str().min(answer_cutoff.as_str());
    // Where a cycle that ends now has looked at every event that may go.
    let walk_end = crate::event_id::row_of(events_cutoff)
        .unwrap_or(0)
        .min(oldest_row);
    let r = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
        let others = cycle_start
            || cursor
                .others_at
                .is_none_or(|t| t.elapsed() >= MAINTENANCE_EVERY);
        if others {
            s.keys
                .expire(key_cutoff, now - s.retention_ms, now)
                .map_err(super::keys::failed)?;
            // Keys written before they moved to `keys` expire here.
            conn.execute(
                "DELETE FROM idempotency WHERE created_at < ?1",
                params![key_cutoff],
            )?;
            conn.execute(
                "DELETE FROM answers WHERE event_id < ?1",
                params![answer_cutoff],
            )?;
            conn.execute(
                "DELETE FROM spent_signatures WHERE expires_at < ?1",
                params![now / 1000],
            )?;
        }
        // This pass's events end before the `per_pass`-th row from `from`, or at the cut-off.
        let next: Option<i64> = conn
            .query_row(
                "SELECT rowid FROM events WHERE rowid >= ?1 AND rowid < ?2 \
                 ORDER BY rowid LIMIT 1 OFFSET ?3",
                params![from, oldest_row, per_pass],
                |r| r.get(0),
            )
            .optional()?;
        let until = next.unwrap_or(oldest_row);
        // A delivered row's attempt records go with it.
        super::outbox::keep_id_floor(conn)?;
        conn.execute(
            &format!(
                "DELETE FROM delivery_attempts WHERE outbox_id IN ({})",
                super::outbox::DELIVERED_BEFORE
            ),
            params![oldest_kept, until, from],
        )?;
        conn.execute(
            &format!(
                "DELETE FROM outbox WHERE id IN ({})",
                super::outbox::DELIVERED_BEFORE
            ),
            params![oldest_kept, until, from],
        )?;
        // An event stays while any of its rows does (see `outbox::EVENT_ROWS`).
        let events_row = crate::event_id::row_of(events_cutoff)
            .unwrap_or(0)
            .min(until);
        conn.execute(EXPIRED_EVENTS, params![events_cutoff, events_row, from])?;
        // The bodies of the pass's events that stay (see `bodies`, "Retention"): every
        // event of the range, so that the passes of a cycle leave no gap between them.
        let mut runs_left = false;
        if s.bodies.is_some() {
            conn.prepare_cached(KEPT_BODIES)?
                .execute(params![from, until])?;
            // Events kept beside the database without a row (`beside`): the same, by time
            // alone (they have no outbox row), before the pass's end; the cycle does not
            // end while runs before it are left.
            runs_left = super::beside::prune(conn, events_row, until, RUNS_PER_PASS)?;
        }
        let next = next.or(runs_left.then_some(until));
        if from == 0 {
            conn.execute(
                "DELETE FROM events_moved \
                 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.rowid = events_moved.row)",
                [],
            )?;
        }
        let last: Option<String> = conn
            .query_row(
                "SELECT max(session_id) FROM (SELECT session_id FROM sessions \
                 WHERE session_id > ?1 ORDER BY session_id LIMIT ?2)",
                params![cursor.session_after, SESSION_PRUNE_CHUNK],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(last) = &last {
            conn.execute(
                "DELETE FROM sessions WHERE session_id > ?1 AND session_id <= ?2 \
                 AND last_seen < ?3",
                params![cursor.session_after, last, s.windows.session_cutoff(now)],
            )?;
        }
        conn.execute_batch("COMMIT")?;
        Ok((next, last, others, until))
    });
    match r {
        Ok((next, last, others, until)) => {
            if others {
                cursor.others_at = Some(Instant::now());
            }
            match last {
                Some(last) => cursor.session_after = last,
                None => cursor.session_after.clear(),
            }
            match next {
                Some(next) => cursor.events_from = next,
                None => {
                    cursor.events_from = 0;
                    cursor.walked_to = cursor.walked_to.max(walk_end);
                    cursor.cycles = cursor.cycles.wrapping_add(1);
                    // The passes' copies cover every event from where the cycle began (where
                    // the last one's copies ended, or the first event) up to this pass's
                    // end: each one before it has been deleted or has its body in its row,
                    // so a file last written before its time names no row. (`walked_to`
                    // can stay further back, while answers keep events past retention.)
                    if let Some(bodies) = &s.bodies {
                        if let Err(e) = bodies.condemn_before(until >> 15) {
                            tracing::warn!(error = %e, "cannot list the event bodies' files");
                        }
                    }
                }
            }
            next.is_some()
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::warn!(error = %e, "store maintenance failed; will retry");
            false
        }
    }
}

/// A batch the database keeps refusing (tried again every 2 s at most) is logged every 30 s.
static APPLY_FAILED: Throttle = Throttle::new(Duration::from_secs(30));

/// A failing checkpoint (every 100 ms) is logged once a minute.
static CHECKPOINT_FAILED: Throttle = Throttle::new(Duration::from_secs(60));

/// A failing spare segment (see `log::Spare`) is logged once a minute.
static SPARE_FAILED: Throttle = Throttle::new(Duration::from_secs(60));

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often the checkpointer looks for log segments it can remove.
const LOG_CLEANUP_EVERY: Duration = Duration::from_secs(1);

/// WAL size (in pages) past which the checkpointer makes the log start over: 64 MiB with a
/// new database's 16 KiB pages (the size the WAL is truncated to after it starts over,
/// `WAL_SIZE_LIMIT_BYTES`), 16 MiB with the 4 KiB pages of a database made before them.
const WAL_RESTART_FRAMES: i64 = 4096;

/// Starts the checkpointer thread; it stops (after a last checkpoint) when the flag is set.
///
/// Removing log segments: a segment may go once every record in it is durable in the
/// database (its sessions included: `sessions_at`) and in `keys`. The projector publishes
/// `projected` and `sessions_at` after each commit; the
/// checkpointer reads it (`p`), then flushes the WAL file itself (`fsync`). Every
/// transaction that committed before `p` was published is then on disk, in the WAL or
/// (copied by an earlier checkpoint, which flushes the database file before the WAL may
/// start over) in the database file. It then flushes the keys' journal, which holds every
/// batch written before `p` was published (the projector writes a round's keys before its
/// transaction commits). The records up to `p` are then no longer needed.
pub(super) fn start_checkpointer(
    path: &Path,
    log: super::log::Upkeep,
    sync: crate::config::SyncMode,
    restart_wanted: Arc<AtomicBool>,
    shared: Arc<Shared>,
    (keys, bodies): (Arc<Keys>, Arc<Bodies>),
    nice: u8,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>), super::OpenError> {
    let conn = open_connection(path, sync, false, super::CHECKPOINT_CACHE_KIB).map_err(
        super::OpenError::failed(format!(
            "cannot open store {} for checkpoints",
            path.display()
        )),
    )?;
    let wal_path = PathBuf::from(format!("{}-wal", path.display()));
    let super::log::Upkeep {
        dir: log_dir,
        spare,
    } = log;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("cognihook-checkpoint".into())
        .spawn(move || {
            crate::priority::lower_current_thread(nice, "store checkpointer");
            // Returns the WAL's size in frames after the checkpoint.
            let checkpoint = |mode: &str| -> Option<i64> {
                // Columns: busy, frames in the WAL, frames checkpointed.
                let r = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    r.get::<_, i64>(1)
                });
                match r {
                    Ok(frames) => Some(frames),
                    Err(e) => {
                        if let Some(suppressed) = CHECKPOINT_FAILED.check() {
                            tracing::warn!(error = %e, mode, suppressed,
                                "WAL checkpoint failed; will retry");
                        }
                        None
                    }
                }
            };
            let cleanup = |durable_mode: &str| {
                // The sessions table lags the rest (written behind): a segment stays until
                // its records' sessions are written too.
                let p = (*shared.projected.borrow()).min(*shared.sessions_at.borrow());
                // Bodies' files no row names since a commit before the WAL's flush below.
                let condemned = bodies.take_condemned();
                checkpoint(durable_mode)?;
                if sync != crate::config::SyncMode::Off {
                    if let Err(e) = std::fs::File::open(&wal_path).and_then(|f| f.sync_data()) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(error = %e, "cannot flush the WAL; log segments kept");
                            return None;
                        }
                    }
                }
                // The keys' batches up to `p` were written before `p` was published.
                if let Err(e) = keys.persist(sync) {
                    tracing::warn!(error = %e,
                        "cannot flush the idempotency keys; log segments kept");
                    return None;
                }
                // The bodies written before `p` was published (see `bodies`, "Durability").
                if let Err(e) = bodies.persist(sync) {
                    tracing::warn!(error = %e,
                        "cannot flush the event bodies' files; log segments kept");
                    return None;
                }
                if let Err(e) = bodies.remove(&condemned) {
                    tracing::warn!(error = %e, "cannot remove event bodies' files no event names");
                }
                match super::log::remove_through(&log_dir, p, spare.as_deref()) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot remove applied log segments");
                        None
                    }
                }
            };
            let mut last_cleanup = Instant::now();
            let mut filling = super::log::Filling::default();
            while !flag.load(Ordering::SeqCst) {
                std::thread::park_timeout(CHECKPOINT_EVERY);
                if let Some(spare) = &spare {
                    let segments = || super::log::segments(&log_dir).map_or(0, |s| s.len());
                    if let Err(e) = spare.prepare(&mut filling, segments) {
                        if let Some(suppressed) = SPARE_FAILED.check() {
                            tracing::warn!(error = %e, suppressed,
                                "cannot make a spare log segment; the log grows its segments \
                                 instead (slower flushes)");
                        }
                    }
                }
                if last_cleanup.elapsed() >= LOG_CLEANUP_EVERY {
                    last_cleanup = Instant::now();
                    let segments = super::log::segments(&log_dir).map_or(0, |s| s.len());
                    if segments > 1 || bodies.has_condemned() {
                        cleanup("PASSIVE");
                        continue;
                    }
                }
                // PASSIVE never blocks the writer, but under constant writes the WAL never
                // gets the idle moment it needs to start over; past a size, ask the writer to
                // restart it between two batches (it has no writer to wait for, and PASSIVE
                // has already copied nearly everything).
                if checkpoint("PASSIVE").is_some_and(|frames| frames > WAL_RESTART_FRAMES) {
                    restart_wanted.store(true, Ordering::SeqCst);
                }
            }
            // The projector has stopped: copy everything back, truncate the WAL, and drop the
            // segments that held only what is now in the database file.
            cleanup("TRUNCATE");
        })
        .map_err(super::OpenError::failed(
            "cannot start the store checkpointer",
        ))?;
    Ok((stop, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_paced_to_hold_round_records_between_the_shortest_and_longest_pause() {
        let ms = Duration::from_millis;
        // 40k events a second: 400 in 10 ms, the shortest pause.
        assert_eq!(round_pause(400, ms(10)), ms(10));
        // 20k a second: 200 came in 10 ms, so 20 ms bring 400.
        assert_eq!(round_pause(200, ms(10)), ms(20));
        // 5,000 a second: 80 ms would bring 400; the longest pause is 50.
        assert_eq!(round_pause(50, ms(10)), ms(50));
        // Faster than the round size asks: never under the shortest.
        assert_eq!(round_pause(4_000, ms(10)), ms(10));
        // After an idle minute, or a count of none: the longest.
        assert_eq!(round_pause(1, Duration::from_secs(60)), ms(50));
        assert_eq!(round_pause(0, ms(10)), ms(50));
        assert_eq!(round_pause(10, Duration::MAX), ms(50));
    }

    #[test]
    fn a_forgets_scan_finds_the_sessions_events_without_holding_back_checkpoints_between_reads() {
        use crate::config::SyncMode;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("store.db");
        let mut writer =
            super::super::open_connection(&path, SyncMode::Normal, false, 1024).expect("open");
        super::super::migrate(&mut writer, 0).expect("schema");
        // Refuse at once rather than wait for a reader: a checkpoint held back fails.
        writer
            .busy_timeout(std::time::Duration::ZERO)
            .expect("timeout");
        let at = 1_700_000_000_000;
        let mut expected = Vec::new();
        let write = |id: &str, session: &str, committed: i64| {
            let mut r = super::super::raw::tests::record(id, &[]);
            (r.session_id, r.at) = (session.to_string(), committed);
            insert_event(&mut Statements::new(&writer), &r).expect(id);
            writer
                .query_row("SELECT rowid FROM events WHERE event_id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
                .expect("row")
        };
        // A moved event (negative rowid) first, then ULIDs; every third not the session's,
        // every fifth committed after the forget.
        expected.push(write("not-a-ulid", "forgotten", at - 1));
        for i in 0..20 {
            let id = crate::event_id::new_event_id();
            let session = if i % 3 == 0 { "other" } else { "forgotten" };
            let committed = if i % 5 == 0 { at + 1 } else { at };
            let row = write(&id, session, committed);
            if session == "forgotten" && committed <= at {
                expected.push(row);
            }
        }
        let reader =
            super::super::open_connection(&path, SyncMode::Normal, true, 1024).expect("reader");
        let mut checkpoints = 0;
        let found = forget_scan_by(&reader, "forgotten", at, 4, |_| {
            // Another event (so the WAL has frames to copy), then a full checkpoint, which
            // needs every reader to be done with the WAL.
            write(&crate::event_id::new_event_id(), "other", at + 2);
            let (busy, log, copied): (i64, i64, i64) = writer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .expect("checkpoint");
            assert_eq!(
                (busy, log, copied),
                (0, 0, 0),
                "checkpoint {checkpoints}: a read held"
            );
            checkpoints += 1;
            Ok(())
        })
        .expect("scan");
        expected.sort_unstable();
        assert_eq!(found, expected);
        // 21 rows then one more per pause: 4 a read, the last one short.
        assert_eq!(checkpoints, 6);
    }

    #[test]
    fn an_event_id_is_written_once_at_its_number_or_moved_and_a_second_time_refused() {
        let conn = super::super::raw::tests::database();
        let mut st = Statements::new(&conn);
        let made = crate::event_id::new_event_id();
        let twin = format!("{}{}", &made[..13], "Z".repeat(13));
        let record = |id: &str| super::super::raw::tests::record(id, &[]);
        for id in [made.as_str(), twin.as_str(), "e1"] {
            insert_event(&mut st, &record(id)).expect(id);
        }
        for id in [made.as_str(), twin.as_str(), "e1"] {
            match insert_event(&mut st, &record(id)) {
                Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
                    assert_eq!(e.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY);
                    assert_eq!(msg, format!("event {id} is already in the store"));
                }
                other => panic!("{id} a second time: {other:?}"),
            }
        }
        drop(st);
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT event_id, rowid FROM events ORDER BY rowid DESC")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let number = crate::event_id::row_of(&made).expect("a ULID");
        assert_eq!(
            rows,
            [(made.clone(), number), (twin, -1), ("e1".to_string(), -2)],
            "each once, nothing of the refused ones"
        );
    }

    #[test]
    fn a_run_of_events_is_written_as_one_by_one_twins_and_ids_without_numbers_included() {
        let conn = super::super::raw::tests::database();
        let mut st = Statements::new(&conn);
        let record = |id: &str| super::super::raw::tests::record(id, &[]);
        let ids: Vec<String> = (0..EVENT_CHUNK + 3)
            .map(|_| crate::event_id::new_event_id())
            .collect();
        // A plain run: more than a statement's worth.
        let plain: Vec<AcceptRecord> = ids.iter().map(|id| record(id)).collect();
        let run: Vec<&AcceptRecord> = plain.iter().collect();
        let mut behind = Behind::default();
        apply_accepts(&mut st, &run, &mut behind).expect("written");
        // A run with a twin (another id at the number of one just written): the statement
        // stops there and the rest go one by one; a run with an id without a number goes
        // one by one.
        let made: Vec<String> = (0..3).map(|_| crate::event_id::new_event_id()).collect();
        let twin = format!("{}{}", &ids[0][..13], "Z".repeat(13));
        let mixed = [record(&made[0]), record(&twin), record(&made[1])];
        let run: Vec<&AcceptRecord> = mixed.iter().collect();
        apply_accepts(&mut st, &run, &mut behind).expect("written");
        let unnumbered = [record("e1"), record(&made[2])];
        let run: Vec<&AcceptRecord> = unnumbered.iter().collect();
        apply_accepts(&mut st, &run, &mut behind).expect("written");
        // A run holding an id already stored is refused as one by one refuses it.
        let again = [record(&crate::event_id::new_event_id()), record(&ids[3])];
        let run: Vec<&AcceptRecord> = again.iter().collect();
        match apply_accepts(&mut st, &run, &mut behind) {
            Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
                assert_eq!(e.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY);
                assert_eq!(msg, format!("event {} is already in the store", ids[3]));
            }
            other => panic!("{} a second time: {other:?}", ids[3]),
        }
        drop(st);
        let rows: crate::FastMap<String, i64> = conn
            .prepare("SELECT event_id, rowid FROM events")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let number = |id: &str| crate::event_id::row_of(id).expect("a ULID");
        // The refused run's first row is there: one by one writes it before the refusal
        // (the caller's transaction then rolls back, as it did before runs).
        assert_eq!(rows.len(), ids.len() + 6);
        for id in ids.iter().chain(&made) {
            assert_eq!(rows[id], number(id), "{id} at its number");
        }
        assert_eq!((rows[&twin], rows["e1"]), (-1, -2), "moved, in order");
        assert_eq!(behind.sessions.len(), 1, "every event's session noted");
    }

    #[test]
    fn a_run_refused_for_anything_but_its_rowid_is_not_written_one_by_one() {
        let conn = super::super::raw::tests::database();
        // A refusal of another kind than a rowid's, once (as an I/O error would be: after
        // one, SQLite may have rolled the transaction back, so the rows must not go on).
        conn.execute_batch(
            "CREATE TABLE tries (n INTEGER); INSERT INTO tries VALUES (0); \
             CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.correlation_id = 'corr-x' \
             BEGIN UPDATE tries SET n = n + 1; \
               SELECT RAISE(FAIL, 'refused') WHERE (SELECT n FROM tries) = 1; END;",
        )
        .expect("trigger");
        let mut st = Statements::new(&conn);
        let record = |id: &str| super::super::raw::tests::record(id, &[]);
        let ids: Vec<String> = (0..3).map(|_| crate::event_id::new_event_id()).collect();
        let mut run = [record(&ids[0]), record(&ids[1]), record(&ids[2])];
        run[1].correlation_id = "corr-x".into();
        let refs: Vec<&AcceptRecord> = run.iter().collect();
        match apply_accepts(&mut st, &refs, &mut Behind::default()) {
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => assert_eq!(msg, "refused"),
            other => panic!("the trigger's refusal: {other:?}"),
        }
        drop(st);
        let written: Vec<String> = conn
            .prepare("SELECT event_id FROM events")
            .expect("query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(written, [ids[0].clone()], "nothing after the refused row");
    }

    fn claim(id: i64, session: &str, respond_to: Option<&str>) -> Claimed {
        Claimed {
            respond_to: respond_to.map(str::to_string),
            ..super::super::fresh::tests::claim(id, session)
        }
    }

    fn settles(items: Vec<(Claimed, Settlement)>) -> Work {
        Work::Settle(Settles {
            items,
            reply: oneshot::channel().0,
            after: Box::new(|| {}),
        })
    }

    #[test]
    fn only_plain_deliveries_of_sessions_the_batch_does_not_forget_are_written_with_their_rows() {
        let delivered = || Settlement::Delivered {
            duration_ms: 1,
            result: None,
        };
        let jobs = vec![
            settles(vec![
                (claim(1, "kept", None), delivered()),
                (claim(2, "gone", None), delivered()),
                (claim(3, "kept", Some("")), delivered()),
            ]),
            settles(vec![(
                claim(4, "kept", None),
                Settlement::Release { at_ms: 0 },
            )]),
        ];
        let records = vec![(
            vec![Record::Forget {
                session_id: "gone".into(),
                at: 0,
            }],
            1,
        )];
        let mut ids: Vec<i64> = delivered_with_rows(&jobs, &records).into_keys().collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [1],
            "not a forgotten session's, a respond row, or a release"
        );
        assert!(
            delivered_with_rows(&jobs, &[]).is_empty(),
            "no records: every row is in the database already"
        );
    }
}
