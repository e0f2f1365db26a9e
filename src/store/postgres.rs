//! The PostgreSQL store (SPEC §8): the same interface and meanings as the embedded store, for
//! several replicas sharing one database.
//!
//! - Migrations run at start inside one transaction holding an advisory lock, so replicas
//!   starting together migrate once.
//! - Ingest: one writer task per process takes the acceptances queued (up to `max_batch`) and
//!   commits them in one transaction. Exactness across replicas comes from the database, not
//!   from the single writer: the idempotency record is claimed first with
//!   `INSERT … ON CONFLICT`, which waits for a concurrent transaction holding the same key and
//!   then sees its answer; the session's version is bumped by an upsert on its row, which
//!   serialises concurrent events of one session.
//! - Delivery: claims take due rows `FOR UPDATE SKIP LOCKED` and lease them; commits that add
//!   outbox rows `NOTIFY cognihook_outbox`, which wakes every replica's workers.
//! - Connection loss: every operation has a bounded wait for a connection and a bounded run
//!   time, and fails with `Unavailable` (ingest answers 503 with `Retry-After`); the pool makes
//!   new connections by itself when the database is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_conn::{PgTarget, PgTls};
use super::OpenError;
use crate::error::Cause;

use super::{
    AcceptOutcome, Acceptance, Attempt, Claimed, DeadLetter, DeadLetterFilter, Delivery, Journey,
    Settlement, SinkCounts, StoreError,
};
use crate::config::StoreConfig;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_ordered_sinks.sql"),
    include_str!("migrations/postgres/0003_forgotten_sessions.sql"),
    include_str!("migrations/postgres/0004_event_replica.sql"),
];
/// Advisory lock key for migrations ("cognihook" folded into 63 bits).
const MIGRATION_LOCK: i64 = 0x636f_676e_6968_6f6f;
/// The channel commits notify when they add outbox rows.
pub const NOTIFY_CHANNEL: &str = "cognihook_outbox";
/// Commit groups in flight at once per process. The database serialises what must be
/// serialised (one session's row, one idempotency key); groups of unrelated events overlap
/// their round trips.
const WRITERS: usize = 4;
/// Longest wait for a pooled connection, and for a new one.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Longest time one commit group or job may take before it counts as unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable(e)
}

/// A statement's failure while committing an event: `Refused` when the server turned down
/// something about this event (so it fails alone, see `run_writer`), `Unavailable` when the
/// cause is the connection or the server's state (SQLSTATE classes 08, 40, 53, 57, 58, XX,
/// or no SQLSTATE at all).
fn refused_or_unavailable(e: tokio_postgres::Error) -> StoreError {
    match e.code().map(|c| c.code().get(..2).unwrap_or("")) {
        None | Some("08" | "40" | "53" | "57" | "58" | "XX") => StoreError::unavailable(e),
        Some(_) => StoreError::Refused(Cause::new(e)),
    }
}

struct Settings {
    max_batch: usize,
    idempotency_window_ms: i64,
    session_ttl_ms: i64,
    retention_ms: i64,
}

type Reply = oneshot::Sender<Result<AcceptOutcome, StoreError>>;
/// What the writer task receives.
type Queued = (Box<Acceptance>, Reply);
/// The attempt a settlement records: (outcome, error, duration ms).
type Record<'a> = Option<(&'static str, Option<&'a str>, u64)>;

/// The PostgreSQL store of one process.
pub struct PgStore {
    pool: Pool,
    /// Taken (closed) by `close`, so the writer drains the queue and stops.
    queue: parking_lot::Mutex<Option<mpsc::Sender<Queued>>>,
    queue_depth: usize,
    writer_alive: Arc<AtomicBool>,
    writer: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    maintenance: tokio::task::JoinHandle<()>,
    /// Where the maintenance cycles' walk of the events is (shared with `maintain_now`).
    walk: Arc<tokio::sync::Mutex<Walk>>,
    /// The LISTEN loop (`listen`), stopped by `close`.
    listener: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    settings: Arc<Settings>,
    url: String,
    target: PgTarget,
}

/// Builds a pool for a parsed `store.url`, with TLS when its `sslmode` asks for it.
fn pool(target: &PgTarget, size: usize) -> Result<Pool, OpenError> {
    let manager = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match &target.tls {
        PgTls::Off => Manager::from_config(target.config.clone(), NoTls, manager),
        PgTls::On { client, .. } => Manager::from_config(
            target.config.clone(),
            MakeRustlsConnect::new((**client).clone()),
            manager,
        ),
    };
    Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(CONNECT_WAIT))
        .create_timeout(Some(CONNECT_WAIT))
        .recycle_timeout(Some(CONNECT_WAIT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(OpenError::failed("cannot build the PostgreSQL pool"))
}

/// Runs the migrations not yet applied, under the advisory lock.
async fn migrate(pool: &Pool) -> Result<(), OpenError> {
    let mut c = pool
        .get()
        .await
        .map_err(OpenError::failed("cannot connect to PostgreSQL"))?;
    let tx = c
        .transaction()
        .await
        .map_err(OpenError::failed("cannot start the migration"))?;
    let step = |what: &'static str| OpenError::failed(format!("migration: {what}"));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(step("lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cognihook_migrations \
         (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(step("bookkeeping table"))?;
    let done: i64 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM cognihook_migrations",
            &[],
        )
        .await
        .map_err(step("read version"))?
        .get(0);
    if done > MIGRATIONS.len() as i64 {
        return Err(OpenError::Refused(format!(
            "database has schema {done}, newer than this cognihook's {}: use the version \
             that wrote it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql).await.map_err(step("apply"))?;
        tx.execute(
            "INSERT INTO cognihook_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(i as i64 + 1), &crate::now_millis()],
        )
        .await
        .map_err(step("record"))?;
    }
    tx.commit().await.map_err(step("commit"))
}

/// How long `committed_since` waits for a dead run's database sessions to end.
const DEAD_SESSIONS_WAIT: Duration = Duration::from_secs(10);

/// The `application_name` of a replica's connections (at most 63 bytes are kept).
fn replica_application_name(replica: &str) -> String {
    let mut name = format!("cognihook {replica}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

impl PgStore {
    /// Connects, migrates, and starts the writer and maintenance tasks. Must run inside a
    /// Tokio runtime.
    pub async fn open(url: &str, config: &StoreConfig) -> Result<PgStore, OpenError> {
        let mut target = PgTarget::parse(url).map_err(OpenError::refused)?;
        // The connections name this replica, so that after a crash the next run can wait for
        // the dead run's transactions to end (see `committed_since`).
        if target.config.get_application_name().is_none() {
            target
                .config
                .application_name(replica_application_name(crate::replica_id()));
        }
        let pool = pool(&target, 16)?;
        migrate(&pool).await?;
        let settings = Arc::new(Settings {
            max_batch: config.max_batch.max(1),
            idempotency_window_ms: config.idempotency_window.as_millis() as i64,
            session_ttl_ms: config.session_ttl.as_millis() as i64,
            retention_ms: config.retention.as_millis() as i64,
        });
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let writer_alive = Arc::new(AtomicBool::new(true));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                tokio::spawn(run_writer(
                    pool.clone(),
                    rx.clone(),
                    settings.clone(),
                    writer_alive.clone(),
                ))
            })
            .collect();
        let writer = tokio::spawn(async move {
            for w in writers {
                let _ = w.await;
            }
        });
        let walk = Arc::new(tokio::sync::Mutex::new(Walk::default()));
        let maintenance = tokio::spawn(run_maintenance(
            pool.clone(),
            settings.clone(),
            walk.clone(),
        ));
        Ok(PgStore {
            pool,
            queue: parking_lot::Mutex::new(Some(tx)),
            queue_depth: config.queue_depth,
            writer_alive,
            writer: parking_lot::Mutex::new(Some(writer)),
            maintenance,
            walk,
            listener: parking_lot::Mutex::new(None),
            settings,
            url: url.to_string(),
            target,
        })
    }

    /// Runs one maintenance cycle now (one also runs every 30 s by itself).
    pub async fn maintain_now(&self) -> Result<(), StoreError> {
        let mut walk = self.walk.lock().await;
        maintain(&self.pool, &self.settings, &mut walk).await
    }

    /// The URL with any password masked, for logs.
    pub fn display_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://********@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    pub(super) async fn accept(&self, a: Acceptance) -> Result<AcceptOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.queue.lock().as_ref() {
            Some(q) => q.try_send((Box::new(a), tx)),
            None => return Err(StoreError::Closed),
        };
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(StoreError::Overloaded(self.queue_depth))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Closed),
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// A pooled connection, or `Unavailable` within [`CONNECT_WAIT`].
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::unavailable)
    }

    pub(super) async fn ready(&self) -> bool {
        if !self.writer_alive.load(Ordering::SeqCst) {
            return false;
        }
        let check = async {
            let c = self.client().await.ok()?;
            c.query_one("SELECT 1", &[]).await.ok()
        };
        matches!(tokio::time::timeout(CONNECT_WAIT, check).await, Ok(Some(_)))
    }

    pub(super) async fn claim(
        &self,
        sink: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let run = async {
            let c = self.client().await?;
            claim(
                &c,
                crate::now_millis(),
                sink,
                limit,
                lease.as_millis() as i64,
            )
            .await
            .map_err(unavailable)
        };
        bounded(run).await
    }

    pub(super) async fn configure_sinks(
        &self,
        sinks: Vec<(String, bool)>,
    ) -> Result<(), StoreError> {
        let run = async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(unavailable)?;
            for (sink, ordered) in &sinks {
                tx.execute(
                    "INSERT INTO sink_settings (sink, ordered) VALUES ($1, $2) \
                     ON CONFLICT (sink) DO UPDATE SET ordered = excluded.ordered",
                    &[sink, ordered],
                )
                .await
                .map_err(unavailable)?;
                tx.execute(
                    "UPDATE outbox SET ordered = $2 \
                     WHERE sink = $1 AND status IN ('pending', 'dead') AND ordered <> $2",
                    &[sink, ordered],
                )
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        };
        // Not bounded by OP_TIMEOUT: at start-up, after a sink was switched, this may mark a
        // whole backlog.
        run.await
    }

    pub(super) async fn settle_many(
        &self,
        items: Vec<(Claimed, Settlement)>,
    ) -> Result<Vec<bool>, StoreError> {
        let run = async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(unavailable)?;
            let now = crate::now_millis();
            let mut done = Vec::with_capacity(items.len());
            let mut notify = false;
            for (claim, s) in &items {
                let (held, added) = settle(&tx, now, claim, s).await.map_err(unavailable)?;
                notify |= added;
                done.push(held);
            }
            if notify {
                tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(done)
        };
        bounded(run).await
    }

    pub(super) async fn set_answer(
        &self,
        key: String,
        status: u16,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let run = async {
            let c = self.client().await?;
            let written = c
                .execute(
                    "UPDATE idempotency i SET status = $2, body = $3 WHERE key = $1 \
                     AND NOT EXISTS (SELECT 1 FROM events e JOIN forgotten_sessions f \
                       ON f.session_id = e.session_id AND f.at >= e.committed_at \
                       WHERE e.event_id = i.event_id)",
                    &[&key, &i64::from(status), &body.as_ref()],
                )
                .await
                .map_err(unavailable)?;
            if written == 0 {
                // The event's session was forgotten while its `respond` call was in flight:
                // the answer is kept emptied, as forgetting left the others.
                let row = c
                    .query_opt(
                        "SELECT e.event_id, e.session_id, e.state_version \
                         FROM idempotency i JOIN events e ON e.event_id = i.event_id \
                         WHERE i.key = $1",
                        &[&key],
                    )
                    .await
                    .map_err(unavailable)?;
                if let Some(row) = row {
                    let (event_id, session_id): (String, String) = (row.get(0), row.get(1));
                    let emptied = super::decide::Answer::forgotten(
                        &body,
                        &event_id,
                        &session_id,
                        row.get::<_, i64>(2) as u64,
                    );
                    c.execute(
                        "UPDATE idempotency SET status = $2, body = $3 WHERE key = $1",
                        &[&key, &i64::from(status), &emptied],
                    )
                    .await
                    .map_err(unavailable)?;
                }
            }
            Ok(())
        };
        bounded(run).await
    }

    pub(super) async fn journey(&self, id: &str) -> Result<Option<Journey>, StoreError> {
        let run = async {
            let c = self.client().await?;
            read_journey(&c, id).await.map_err(unavailable)
        };
        bounded(run).await
    }

    pub(super) async fn session_timeline(
        &self,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::TimelineEntry>, StoreError> {
        let limit = i64::try_from(limit.min(1000)).unwrap_or(1000);
        let run = async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT event_id, correlation_id, route, event_type, state_version, committed_at \
                     FROM events WHERE session_id = $1 \
                     ORDER BY committed_at DESC, state_version DESC LIMIT $2",
                    &[&session_id, &limit],
                )
                .await
                .map_err(unavailable)?;
            let mut entries: Vec<crate::store::TimelineEntry> = rows
                .iter()
                .map(|r| crate::store::TimelineEntry {
                    event_id: r.get(0),
                    correlation_id: r.get(1),
                    route: r.get(2),
                    event_type: r.get(3),
                    state_version: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                    committed_at: rfc3339_ms(r.get(5)),
                    deliveries: Vec::new(),
                    answer: None,
                })
                .collect();
            let ids: Vec<String> = entries.iter().map(|e| e.event_id.clone()).collect();
            let rows = c
                .query(
                    "SELECT event_id, sink, status FROM outbox WHERE event_id = ANY($1) ORDER BY id",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            for r in rows {
                let id: String = r.get(0);
                if let Some(e) = entries.iter_mut().find(|e| e.event_id == id) {
                    e.deliveries.push((r.get(1), r.get(2)));
                }
            }
            let rows = c
                .query(
                    "SELECT event_id, status, body FROM idempotency WHERE event_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            for r in rows {
                let id: String = r.get(0);
                if let Some(e) = entries.iter_mut().find(|e| e.event_id == id) {
                    let status: i64 = r.get(1);
                    let body: Vec<u8> = r.get(2);
                    e.answer = Some((u16::try_from(status).unwrap_or(0), Bytes::from(body)));
                }
            }
            Ok(entries)
        };
        bounded(run).await
    }

    pub(super) async fn dead_letters(
        &self,
        f: DeadLetterFilter,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError> {
        let run = async {
            let c = self.client().await?;
            let (cond, p) = filter_sql(&f);
            let refs = param_refs(&p);
            let total: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM outbox o WHERE {cond}"),
                    &refs,
                )
                .await
                .map_err(unavailable)?
                .get(0);
            let rows = c
                .query(
                    &format!(
                        "SELECT o.id, o.event_id, e.correlation_id, o.sink, o.route, \
                                o.failure_class, o.reason, o.attempts, o.last_error, o.dead_at \
                         FROM outbox o JOIN events e ON e.event_id = o.event_id \
                         WHERE {cond} ORDER BY o.dead_at DESC, o.id DESC LIMIT {}",
                        limit.min(10_000)
                    ),
                    &refs,
                )
                .await
                .map_err(unavailable)?;
            let items = rows
                .iter()
                .map(|r| DeadLetter {
                    id: r.get(0),
                    event_id: r.get(1),
                    correlation_id: r.get(2),
                    sink: r.get(3),
                    route: r.get(4),
                    class: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    reason: r.get::<_, Option<String>>(6).unwrap_or_default(),
                    attempts: r.get::<_, i64>(7).max(0) as u32,
                    last_error: r.get::<_, Option<String>>(8).unwrap_or_default(),
                    dead_lettered_at: rfc3339_ms(r.get::<_, Option<i64>>(9).unwrap_or(0)),
                })
                .collect();
            Ok((total.max(0) as u64, items))
        };
        bounded(run).await
    }

    pub(super) async fn replay(
        &self,
        f: DeadLetterFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let run = async {
            let mut c = self.client().await?;
            let (cond, p) = filter_sql(&f);
            let refs = param_refs(&p);
            if dry_run {
                let n: i64 = c
                    .query_one(
                        &format!("SELECT count(*) FROM outbox o WHERE {cond}"),
                        &refs,
                    )
                    .await
                    .map_err(unavailable)?
                    .get(0);
                return Ok(n.max(0) as u64);
            }
            let tx = c.transaction().await.map_err(unavailable)?;
            let now = crate::now_millis();
            let n = tx
                .execute(
                    &format!(
                        "WITH picked AS (SELECT o.id, o.attempts FROM outbox o WHERE {cond} \
                                         FOR UPDATE), \
                              requeued AS (UPDATE outbox SET status = 'pending', attempts = 0, \
                                  next_attempt_at = {now}, lease_until = NULL, \
                                  lease_owner = NULL, failure_class = NULL, reason = NULL, \
                                  dead_at = NULL, replays = replays + 1 \
                                FROM picked WHERE outbox.id = picked.id \
                                RETURNING outbox.id, picked.attempts) \
                         INSERT INTO delivery_attempts \
                             (outbox_id, attempt, at, outcome, error, duration_ms, replica) \
                         SELECT id, attempts, {now}, 'replayed', NULL, NULL, '{}' FROM requeued",
                        crate::replica_id().replace('\'', "''")
                    ),
                    &refs,
                )
                .await
                .map_err(unavailable)?;
            tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(n)
        };
        bounded(run).await
    }

    /// Events this replica's earlier run (`replica`) committed at or after `since_ms`.
    pub(super) async fn committed_since(
        &self,
        since_ms: i64,
        replica: &str,
    ) -> Result<Vec<super::CommittedEvent>, StoreError> {
        let from =
            ulid::Ulid::from_parts(since_ms.saturating_sub(60_000).max(0) as u64, 0).to_string();
        let run =
            async {
                let c = self.client().await?;
                // A run killed mid-commit leaves its COMMIT to the server: it may land after this
                // query and its event would never get a line. The server ends the dead run's
                // sessions once it notices the closed sockets (at the latest when a commit tries to
                // answer), so wait, bounded, until none is left.
                let name = replica_application_name(replica);
                let waited = std::time::Instant::now();
                loop {
                    let left: i64 = c
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                            &[&name],
                        )
                        .await
                        .map_err(unavailable)?
                        .get(0);
                    if left == 0 {
                        break;
                    }
                    if waited.elapsed() > DEAD_SESSIONS_WAIT {
                        tracing::warn!(sessions = left, replica,
                        "the last run's database sessions are still open; recovering its audit \
                         lines without waiting for them");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let rows = c
                    .query(
                        "SELECT event_id, correlation_id, route, session_id, event_type, \
                            state_version, simulated, committed_at \
                     FROM events WHERE event_id >= $1 AND committed_at >= $2 AND replica = $3 \
                     ORDER BY committed_at, event_id LIMIT $4",
                        &[&from, &since_ms, &replica, &(super::MAX_RECOVERED as i64)],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(rows
                    .iter()
                    .map(|r| super::CommittedEvent {
                        event_id: r.get(0),
                        correlation_id: r.get(1),
                        route: r.get(2),
                        session_id: r.get(3),
                        event_type: r.get(4),
                        state_version: r.get::<_, i64>(5).max(0) as u64,
                        simulated: r.get(6),
                        committed_at: r.get(7),
                    })
                    .collect())
            };
        bounded(run).await
    }

    /// Forgets a session in one transaction (see `Store::forget_session`); the session's row
    /// is locked first, so a commit of the same session waits and then starts at version 1.
    pub(super) async fn forget_session(
        &self,
        session_id: &str,
    ) -> Result<super::Forgotten, StoreError> {
        let run = async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(unavailable)?;
            let at = crate::now_millis();
            tx.execute(
                "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE",
                &[&session_id],
            )
            .await
            .map_err(unavailable)?;
            let forgotten = tx
                .query(
                    "UPDATE events SET body = jsonb_build_object('eventId', event_id, \
                       'route', route, 'correlationId', correlation_id, 'sessionId', session_id, \
                       'eventType', event_type, 'stateVersion', state_version, \
                       'receivedAt', received_at, 'forgotten', true)::text \
                     WHERE session_id = $1 RETURNING event_id, state_version",
                    &[&session_id],
                )
                .await
                .map_err(unavailable)?;
            let events = forgotten.len() as u64;
            // The answers kept for duplicates lose their `data` (the route's extracts, a
            // `respond` upstream's answer), as on the embedded store.
            let versions: std::collections::HashMap<String, i64> = forgotten
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect();
            let ids: Vec<&String> = versions.keys().collect();
            let answers = tx
                .query(
                    "SELECT key, event_id, body FROM idempotency WHERE event_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            for row in answers {
                let (key, event_id, body): (String, String, Vec<u8>) =
                    (row.get(0), row.get(1), row.get(2));
                let version = versions.get(&event_id).copied().unwrap_or_default();
                let emptied =
                    super::decide::Answer::forgotten(&body, &event_id, session_id, version as u64);
                tx.execute(
                    "UPDATE idempotency SET body = $2 WHERE key = $1",
                    &[&key, &emptied],
                )
                .await
                .map_err(unavailable)?;
            }
            let cancelled = tx
                .execute(
                    "UPDATE outbox SET status = 'forgotten', lease_until = NULL, \
                       lease_owner = NULL, result = NULL \
                     WHERE session_id = $1 AND status = 'pending'",
                    &[&session_id],
                )
                .await
                .map_err(unavailable)?;
            tx.execute(
                "UPDATE outbox SET status = 'forgotten', result = NULL \
                 WHERE session_id = $1 AND status = 'dead'",
                &[&session_id],
            )
            .await
            .map_err(unavailable)?;
            tx.execute("DELETE FROM sessions WHERE session_id = $1", &[&session_id])
                .await
                .map_err(unavailable)?;
            let (ev, ca) = (events as i64, cancelled as i64);
            tx.execute(
                "INSERT INTO forgotten_sessions (session_id, at, events, cancelled) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO UPDATE SET \
                 at = EXCLUDED.at, events = EXCLUDED.events, cancelled = EXCLUDED.cancelled",
                &[&session_id, &at, &ev, &ca],
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(super::Forgotten {
                session_id: session_id.to_string(),
                events,
                cancelled_deliveries: cancelled,
            })
        };
        bounded(run).await
    }

    pub(super) async fn purge(&self, f: DeadLetterFilter) -> Result<u64, StoreError> {
        let run = async {
            let mut c = self.client().await?;
            let (cond, p) = filter_sql(&f);
            let refs = param_refs(&p);
            let tx = c.transaction().await.map_err(unavailable)?;
            tx.execute(
                &format!(
                    "DELETE FROM delivery_attempts WHERE outbox_id IN \
                     (SELECT o.id FROM outbox o WHERE {cond})"
                ),
                &refs,
            )
            .await
            .map_err(unavailable)?;
            let n = tx
                .execute(
                    &format!(
                        "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE {cond})"
                    ),
                    &refs,
                )
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(n)
        };
        bounded(run).await
    }

    pub(super) async fn sink_counts(
        &self,
        sinks: Vec<String>,
    ) -> Result<Vec<SinkCounts>, StoreError> {
        let run = async {
            let c = self.client().await?;
            let now = crate::now_millis();
            let rows = c
                .query(
                    "SELECT sink, \
                            count(*) FILTER (WHERE status = 'pending'), \
                            min(created_at) FILTER (WHERE status = 'pending'), \
                            count(*) FILTER (WHERE status = 'dead') \
                     FROM outbox WHERE sink = ANY($1) AND status IN ('pending', 'dead') \
                     GROUP BY sink",
                    &[&sinks],
                )
                .await
                .map_err(unavailable)?;
            Ok(sinks
                .iter()
                .map(|s| {
                    let row = rows.iter().find(|r| r.get::<_, String>(0) == *s);
                    let pending = row.map_or(0, |r| r.get::<_, i64>(1));
                    let oldest = row.and_then(|r| r.get::<_, Option<i64>>(2));
                    let dead = row.map_or(0, |r| r.get::<_, i64>(3));
                    SinkCounts {
                        sink: s.clone(),
                        pending: pending.max(0) as u64,
                        oldest_pending_age_seconds: oldest
                            .map_or(0.0, |o| (now - o).max(0) as f64 / 1000.0),
                        dead_letters: dead.max(0) as u64,
                    }
                })
                .collect())
        };
        bounded(run).await
    }

    /// Listens for outbox notifications on a dedicated connection and calls `wake` for each;
    /// reconnects after a loss (waking once, in case notifications were missed). The loop is
    /// the store's (a second call replaces it) and ends with `close`.
    pub fn listen(self: &Arc<Self>, wake: impl Fn() + Send + Sync + 'static) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            loop {
                let listened = match &target.tls {
                    PgTls::Off => listen_once(&target.config, NoTls, &wake).await,
                    PgTls::On { client, .. } => {
                        let tls = MakeRustlsConnect::new((**client).clone());
                        listen_once(&target.config, tls, &wake).await
                    }
                };
                if let Err(e) = listened {
                    tracing::warn!(error = %e, "outbox notifications lost; reconnecting");
                }
                wake();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        if let Some(earlier) = self.listener.lock().replace(task) {
            earlier.abort();
        }
    }

    /// Whether the LISTEN loop runs (for tests).
    pub fn is_listening(&self) -> bool {
        self.listener
            .lock()
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Commits everything queued, then stops the writer.
    pub(super) async fn close(&self) {
        // Dropping the sender lets the writer commit what is queued, then end.
        drop(self.queue.lock().take());
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.maintenance.abort();
        if let Some(listener) = self.listener.lock().take() {
            listener.abort();
        }
    }
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: &(impl Fn() + Send + Sync),
) -> Result<(), Cause>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    use futures_util::StreamExt;
    let (client, mut conn) = config.connect(tls).await.map_err(Cause::new)?;
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    let statement = format!("LISTEN {NOTIFY_CHANNEL}");
    let listen = client.batch_execute(&statement);
    // The connection must be polled for LISTEN to complete.
    let mut listen = std::pin::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen => { r.map_err(Cause::new)?; break; }
            m = messages.next() => match m {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Cause::new(e)),
                None => return Err(Cause::new("connection closed")),
            }
        }
    }
    // A commit made before LISTEN took effect notified no one here: the workers' claim
    // before it may have run earlier still (at start, or before a reconnection), so they
    // look once now.
    wake();
    while let Some(m) = messages.next().await {
        match m {
            Ok(tokio_postgres::AsyncMessage::Notification(_)) => wake(),
            Ok(_) => {}
            Err(e) => return Err(Cause::new(e)),
        }
    }
    Err(Cause::new("connection closed"))
}

/// Runs a store operation with the operation time bound.
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::unavailable(format!(
            "PostgreSQL did not answer within {}",
            humantime::format_duration(OP_TIMEOUT)
        ))),
    }
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::format_rfc3339)
        .unwrap_or_default()
}

async fn run_writer(
    pool: Pool,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    s: Arc<Settings>,
    alive: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(s.max_batch);
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                break;
            };
            batch.push(first);
            while batch.len() < s.max_batch {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        // One lock order for every group (sessions, then keys; see `accept_one`) keeps
        // concurrent groups from deadlocking on each other's rows.
        batch.sort_by(|(a, _), (b, _)| {
            (&a.event.session_id, &a.idempotency_key)
                .cmp(&(&b.event.session_id, &b.idempotency_key))
        });
        let outcome = tokio::time::timeout(OP_TIMEOUT, commit_group(&pool, &mut batch, &s)).await;
        match outcome {
            Ok(Ok(results)) => {
                let size = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                for ((_, reply), mut r) in batch.drain(..).zip(results) {
                    if let Ok(AcceptOutcome::Committed { group, .. }) = &mut r {
                        *group = size;
                    }
                    let _ = reply.send(r);
                }
            }
            Ok(Err(StoreError::Refused(e))) if batch.len() > 1 => {
                // One event's data was turned down and took its group's transaction with it:
                // commit the events one by one, so only that one fails.
                tracing::warn!(error = %e, events = batch.len(),
                    "the database refused an event; committing its group one by one");
                let until = tokio::time::Instant::now() + OP_TIMEOUT;
                let mut results = Vec::with_capacity(batch.len());
                for i in 0..batch.len() {
                    let one =
                        tokio::time::timeout_at(until, commit_group(&pool, &mut batch[i..=i], &s))
                            .await;
                    results.push(match one {
                        Ok(Ok(mut r)) => r.pop().unwrap_or(Err(StoreError::Closed)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(StoreError::unavailable("PostgreSQL did not commit in time")),
                    });
                }
                for ((_, reply), r) in batch.drain(..).zip(results) {
                    let _ = reply.send(r);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, events = batch.len(), "commit group failed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(_) => {
                let e = StoreError::unavailable("PostgreSQL did not commit in time");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
}

async fn commit_group(
    pool: &Pool,
    batch: &mut [Queued],
    s: &Settings,
) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
    let mut c = pool.get().await.map_err(unavailable)?;
    let tx = c.transaction().await.map_err(unavailable)?;
    let now = crate::now_millis();
    let mut results = Vec::with_capacity(batch.len());
    let mut notify = false;
    for (a, _) in batch.iter_mut() {
        let r = accept_one(&tx, a, now, s).await;
        match r {
            Err(StoreError::ResponseTooLarge { size, limit }) => {
                results.push(Err(StoreError::ResponseTooLarge { size, limit }))
            }
            Err(e) => return Err(e),
            Ok(o) => {
                if matches!(o, AcceptOutcome::Committed { .. })
                    && (!a.sinks.is_empty() || a.respond.is_some())
                {
                    notify = true;
                }
                results.push(Ok(o));
            }
        }
    }
    if notify {
        tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(results)
}

async fn accept_one(
    tx: &deadpool_postgres::Transaction<'_>,
    a: &mut Acceptance,
    now: i64,
    s: &Settings,
) -> Result<AcceptOutcome, StoreError> {
    let db = refused_or_unavailable;
    if let Some(spend) = &a.spend {
        let st = tx
            .prepare_cached("SELECT expires_at FROM spent_signatures WHERE route = $1 AND mac = $2")
            .await
            .map_err(db)?;
        let live = tx
            .query_opt(&st, &[&a.event.route, &&spend.mac[..]])
            .await
            .map_err(db)?
            .is_some_and(|r| r.get::<_, i64>(0) >= now / 1000);
        if live {
            return Ok(AcceptOutcome::SignatureReplayed);
        }
    }
    // Refuse an oversized answer before writing anything.
    a.answer.check_size(a.max_response_bytes)?;
    // Serialise on the session first: every group takes these locks in session order (the
    // batch is sorted), and a duplicate's key belongs to the same session, so groups in this
    // and other replicas cannot wait on each other in a cycle.
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await
        .map_err(db)?;
    tx.execute(&lock, &[&a.event.session_id])
        .await
        .map_err(db)?;
    let spend = |a: &Acceptance| {
        a.spend
            .as_ref()
            .map(|sp| (a.event.route.clone(), sp.mac.to_vec(), sp.expires_at))
    };
    let spend_sql = "INSERT INTO spent_signatures (route, mac, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (route, mac) DO UPDATE SET expires_at = EXCLUDED.expires_at";
    // Claim the idempotency key (a live record means a duplicate; an expired one is taken
    // over). A concurrent transaction holding the key makes this wait for its outcome.
    let claim = tx
        .prepare_cached(
            "INSERT INTO idempotency (key, event_id, status, body, correlation_id, created_at) \
             VALUES ($1, $2, $3, ''::bytea, $4, $5) \
             ON CONFLICT (key) DO UPDATE SET event_id = EXCLUDED.event_id, \
                 status = EXCLUDED.status, body = EXCLUDED.body, \
                 correlation_id = EXCLUDED.correlation_id, created_at = EXCLUDED.created_at \
             WHERE idempotency.created_at < $6 \
             RETURNING key",
        )
        .await
        .map_err(db)?;
    let e = &mut a.event;
    let claimed = tx
        .query_opt(
            &claim,
            &[
                &a.idempotency_key,
                &e.event_id,
                &i64::from(a.status),
                &e.correlation_id,
                &now,
                &(now - s.idempotency_window_ms),
            ],
        )
        .await
        .map_err(db)?;
    if claimed.is_none() {
        let row = tx
            .query_one(
                "SELECT status, body, correlation_id FROM idempotency WHERE key = $1",
                &[&a.idempotency_key],
            )
            .await
            .map_err(db)?;
        if let Some((route, mac, exp)) = spend(a) {
            tx.execute(spend_sql, &[&route, &mac, &exp])
                .await
                .map_err(db)?;
        }
        return Ok(AcceptOutcome::Duplicate {
            status: u16::try_from(row.get::<_, i64>(0)).unwrap_or(200),
            body: Bytes::from(row.get::<_, Vec<u8>>(1)),
            correlation_id: row.get(2),
        });
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO sessions (session_id, state_version, first_seen, last_seen, \
                                   last_event_type, last_route) \
             VALUES ($1, 1, $2, $2, $3, $4) \
             ON CONFLICT (session_id) DO UPDATE SET \
                 state_version = CASE WHEN sessions.last_seen >= $5 \
                                      THEN sessions.state_version + 1 ELSE 1 END, \
                 first_seen = CASE WHEN sessions.last_seen >= $5 \
                                   THEN sessions.first_seen ELSE EXCLUDED.first_seen END, \
                 last_seen = EXCLUDED.last_seen, last_event_type = EXCLUDED.last_event_type, \
                 last_route = EXCLUDED.last_route \
             RETURNING state_version",
        )
        .await
        .map_err(db)?;
    let version: i64 = tx
        .query_one(
            &upsert,
            &[
                &e.session_id,
                &now,
                &e.event_type,
                &e.route,
                &(now - s.session_ttl_ms),
            ],
        )
        .await
        .map_err(db)?
        .get(0);
    e.state_version = version.max(0) as u64;
    let response = a.answer.render(e.state_version);
    let body = e.to_json();
    let body = if crate::seal::active() {
        crate::seal::seal(body).map_err(StoreError::unavailable)?
    } else {
        body
    };
    let insert_event = tx
        .prepare_cached(
            "INSERT INTO events (event_id, correlation_id, route, session_id, event_type, \
                                 state_version, simulated, received_at, committed_at, body, \
                                 replica) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await
        .map_err(db)?;
    let replica = crate::replica_id();
    tx.execute(
        &insert_event,
        &[
            &e.event_id,
            &e.correlation_id,
            &e.route,
            &e.session_id,
            &e.event_type,
            &version,
            &e.simulated,
            &e.received_at,
            &now,
            &body,
            &replica,
        ],
    )
    .await
    .map_err(db)?;
    let insert_row = tx
        .prepare_cached(
            "INSERT INTO outbox (event_id, sink, route, session_id, status, attempts, \
                                 next_attempt_at, created_at, ordered) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, \
                     COALESCE((SELECT ordered FROM sink_settings WHERE sink = $2), FALSE))",
        )
        .await
        .map_err(db)?;
    for sink in &a.sinks {
        tx.execute(
            &insert_row,
            &[&e.event_id, sink, &e.route, &e.session_id, &now],
        )
        .await
        .map_err(db)?;
    }
    let held = match &a.respond {
        Some(r) => {
            let token = ulid::Ulid::new().to_string();
            let respond_to = r.on_late.clone().unwrap_or_default();
            let id: i64 = tx
                .query_one(
                    "INSERT INTO outbox (event_id, sink, route, session_id, status, attempts, \
                                         next_attempt_at, created_at, lease_until, \
                                         lease_owner, respond_to, ordered) \
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $6, $7, $8, \
                             COALESCE((SELECT ordered FROM sink_settings WHERE sink = $2), \
                                      FALSE)) \
                     RETURNING id",
                    &[
                        &e.event_id,
                        &r.sink,
                        &e.route,
                        &e.session_id,
                        &now,
                        &(now + r.lease_ms),
                        &token,
                        &respond_to,
                    ],
                )
                .await
                .map_err(db)?
                .get(0);
            Some(Box::new(Claimed::held_for_request(
                e, r, id, token, &body, now,
            )))
        }
        None => None,
    };
    let answer = tx
        .prepare_cached("UPDATE idempotency SET body = $2 WHERE key = $1")
        .await
        .map_err(db)?;
    tx.execute(&answer, &[&a.idempotency_key, &&response[..]])
        .await
        .map_err(db)?;
    let state_version = e.state_version;
    if let Some((route, mac, exp)) = spend(a) {
        tx.execute(spend_sql, &[&route, &mac, &exp])
            .await
            .map_err(db)?;
    }
    Ok(AcceptOutcome::Committed {
        state_version,
        body: response,
        held,
        group: 1,
    })
}

async fn claim(
    c: &deadpool_postgres::Object,
    now: i64,
    sink: &str,
    limit: usize,
    lease_ms: i64,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let token = ulid::Ulid::new().to_string();
    let st = c
        .prepare_cached(
            "WITH due AS ( \
               SELECT o.id FROM outbox o \
               WHERE o.sink = $4 AND o.status = 'pending' AND o.next_attempt_at <= $1 \
                 AND (o.lease_until IS NULL OR o.lease_until < $1) \
                 AND (NOT o.ordered OR NOT EXISTS ( \
                   SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.session_id = o.session_id \
                     AND p.ordered AND p.status = 'pending' AND p.id < o.id)) \
               ORDER BY o.next_attempt_at, o.id LIMIT $5 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE outbox SET lease_until = $1 + $2, lease_owner = $3 \
             FROM due WHERE outbox.id = due.id \
             RETURNING outbox.id, outbox.event_id, outbox.attempts, outbox.respond_to, \
                       outbox.result, \
                       (SELECT correlation_id FROM events e WHERE e.event_id = outbox.event_id), \
                       (SELECT route FROM events e WHERE e.event_id = outbox.event_id), \
                       (SELECT session_id FROM events e WHERE e.event_id = outbox.event_id), \
                       (SELECT event_type FROM events e WHERE e.event_id = outbox.event_id), \
                       (SELECT body FROM events e WHERE e.event_id = outbox.event_id), \
                       outbox.created_at",
        )
        .await?;
    let rows = c
        .query(&st, &[&now, &lease_ms, &token, &sink, &(limit as i64)])
        .await?;
    let mut out: Vec<Claimed> = rows
        .iter()
        .filter_map(|r| {
            let event_id: String = r.get(1);
            let body = crate::store::opened_for_delivery(&event_id, r.get(9))?;
            Some((r, event_id, body))
        })
        .map(|(r, event_id, body)| Claimed {
            outbox_id: r.get(0),
            lease_token: token.clone(),
            sink: sink.to_string(),
            event_id,
            attempts: r.get::<_, i64>(2).max(0) as u32,
            respond_to: r.get(3),
            body: crate::store::with_result(body, r.get(4)),
            correlation_id: r.get(5),
            route: r.get(6),
            session_id: r.get(7),
            event_type: r.get(8),
            created_at_ms: r.get(10),
            lease_until_ms: now + lease_ms,
        })
        .collect();
    out.sort_unstable_by_key(|c| c.outbox_id);
    Ok(out)
}

/// Settles a claimed row if the claim still holds it and records the attempt. Returns
/// (held, whether an `on_late` row was added).
async fn settle(
    tx: &deadpool_postgres::Transaction<'_>,
    now: i64,
    claim: &Claimed,
    s: &Settlement,
) -> Result<(bool, bool), tokio_postgres::Error> {
    let attempt = i64::from(claim.attempts) + 1;
    let held = "id = $1 AND lease_owner = $2 AND status = 'pending'";
    let (changed, record): (u64, Record<'_>) = match s {
        Settlement::Delivered { duration_ms, .. } => (
            tx.execute(
                &format!(
                    "UPDATE outbox SET status = 'delivered', attempts = $3, lease_until = NULL, \
                     lease_owner = NULL, delivered_at = $4, last_error = NULL WHERE {held}"
                ),
                &[&claim.outbox_id, &claim.lease_token, &attempt, &now],
            )
            .await?,
            Some(("delivered", None, *duration_ms)),
        ),
        Settlement::Retry {
            at_ms,
            error,
            duration_ms,
        } => (
            tx.execute(
                &format!(
                    "UPDATE outbox SET attempts = $3, next_attempt_at = $4, lease_until = NULL, \
                     lease_owner = NULL, last_error = $5 WHERE {held}"
                ),
                &[&claim.outbox_id, &claim.lease_token, &attempt, at_ms, error],
            )
            .await?,
            Some(("retry", Some(error.as_str()), *duration_ms)),
        ),
        Settlement::Dead {
            reason,
            error,
            duration_ms,
        } => (
            tx.execute(
                &format!(
                    "UPDATE outbox SET status = 'dead', attempts = $3, lease_until = NULL, \
                     lease_owner = NULL, last_error = $4, failure_class = $5, reason = $6, \
                     dead_at = $7 WHERE {held}"
                ),
                &[
                    &claim.outbox_id,
                    &claim.lease_token,
                    &attempt,
                    error,
                    &reason.class(),
                    &reason.as_str(),
                    &now,
                ],
            )
            .await?,
            Some(("dead_lettered", Some(error.as_str()), *duration_ms)),
        ),
        Settlement::Release { at_ms } => (
            tx.execute(
                &format!(
                    "UPDATE outbox SET next_attempt_at = $3, lease_until = NULL, \
                     lease_owner = NULL WHERE {held}"
                ),
                &[&claim.outbox_id, &claim.lease_token, at_ms],
            )
            .await?,
            None,
        ),
    };
    let mut added = false;
    if changed == 1 {
        if let (
            Settlement::Delivered {
                result: Some(result),
                ..
            },
            Some(on_late),
        ) = (s, &claim.respond_to)
        {
            if !on_late.is_empty() {
                tx.execute(
                    "INSERT INTO outbox (event_id, sink, route, session_id, status, attempts, \
                                         next_attempt_at, created_at, result, ordered) \
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $6, \
                             COALESCE((SELECT ordered FROM sink_settings WHERE sink = $2), \
                                      FALSE))",
                    &[
                        &claim.event_id,
                        on_late,
                        &claim.route,
                        &claim.session_id,
                        &now,
                        result,
                    ],
                )
                .await?;
                added = true;
            }
        }
        if let Some((outcome, error, duration_ms)) = record {
            tx.execute(
                "INSERT INTO delivery_attempts \
                     (outbox_id, attempt, at, outcome, error, duration_ms, replica) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &claim.outbox_id,
                    &attempt,
                    &now,
                    &outcome,
                    &error,
                    &i64::try_from(duration_ms).unwrap_or(i64::MAX),
                    &crate::replica_id(),
                ],
            )
            .await?;
        }
    }
    Ok((changed == 1, added))
}

/// A dead-letter filter as a `WHERE` clause over `outbox o` and its parameters.
fn filter_sql(f: &DeadLetterFilter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = String::from("o.status = 'dead'");
    let mut p: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if !f.ids.is_empty() {
        p.push(Box::new(f.ids.clone()));
        sql.push_str(&format!(" AND o.id = ANY(${})", p.len()));
    }
    for (col, v) in [
        ("sink", f.sink.clone()),
        ("route", f.route.clone()),
        ("reason", f.reason.map(|r| r.as_str().to_string())),
    ] {
        if let Some(v) = v {
            p.push(Box::new(v));
            sql.push_str(&format!(" AND o.{col} = ${}", p.len()));
        }
    }
    if let Some(s) = f.since_ms {
        p.push(Box::new(s));
        sql.push_str(&format!(" AND o.dead_at >= ${}", p.len()));
    }
    if let Some(u) = f.until_ms {
        p.push(Box::new(u));
        sql.push_str(&format!(" AND o.dead_at < ${}", p.len()));
    }
    (sql, p)
}

fn param_refs(p: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

async fn read_journey(
    c: &deadpool_postgres::Object,
    id: &str,
) -> Result<Option<Journey>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "(SELECT event_id, body, committed_at FROM events WHERE event_id = $1) \
             UNION ALL \
             (SELECT event_id, body, committed_at FROM events WHERE correlation_id = $1 \
              ORDER BY committed_at DESC LIMIT 1) \
             LIMIT 1",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (event_id, body, committed_at): (String, String, i64) =
        (row.get(0), row.get(1), row.get(2));
    let event = crate::store::event_json(body);
    let rows = c
        .query(
            "SELECT o.id, o.sink, o.status, a.attempt, a.at, a.outcome, a.error, a.duration_ms, \
                    a.replica \
             FROM outbox o LEFT JOIN delivery_attempts a ON a.outbox_id = o.id \
             WHERE o.event_id = $1 ORDER BY o.id, a.id",
            &[&event_id],
        )
        .await?;
    let mut deliveries: Vec<(i64, Delivery)> = Vec::new();
    for r in &rows {
        let id: i64 = r.get(0);
        if deliveries.last().is_none_or(|(last, _)| *last != id) {
            deliveries.push((
                id,
                Delivery {
                    sink: r.get(1),
                    status: r.get(2),
                    attempts: Vec::new(),
                },
            ));
        }
        if let (Some(attempt), Some((_, d))) = (r.get::<_, Option<i64>>(3), deliveries.last_mut()) {
            d.attempts.push(Attempt {
                attempt: attempt.max(0) as u32,
                at: rfc3339_ms(r.get::<_, Option<i64>>(4).unwrap_or(0)),
                outcome: r.get::<_, Option<String>>(5).unwrap_or_default(),
                error: r.get(6),
                duration_ms: r.get::<_, Option<i64>>(7).map(|d| d.max(0) as u64),
                replica: r.get::<_, Option<String>>(8).unwrap_or_default(),
            });
        }
    }
    Ok(Some(Journey {
        event,
        committed_at: rfc3339_ms(committed_at),
        deliveries: deliveries.into_iter().map(|(_, d)| d).collect(),
    }))
}

/// Prunes what has expired, every 30 s (see [`maintain`]).
async fn run_maintenance(pool: Pool, s: Arc<Settings>, cursor: Arc<tokio::sync::Mutex<Walk>>) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    // A cycle that ran long is followed by a full interval, not by a burst of cycles.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let mut walk = cursor.lock().await;
        if let Err(e) = maintain(&pool, &s, &mut walk).await {
            tracing::warn!(error = %e, "store maintenance failed; will retry");
        }
    }
}

/// Rows a pruning statement deletes (or events it looks at, with their delivered rows) at a
/// time: each statement commits on its own, so a cycle holds no lock for long.
const PRUNE_BATCH: i64 = 5_000;

/// One cycle in this many walks the events from the first (an hour of 30 s cycles);
/// the others start where the previous cycle ended.
pub const FULL_CYCLE_EVERY: u32 = 120;

/// Where the events' walk goes on from, kept between cycles (as the embedded store's
/// `MaintenanceCursor`).
#[derive(Default)]
pub(crate) struct Walk {
    /// The last event id the previous cycle looked at: every event up to it had passed
    /// retention then and was deleted unless an outbox row that was not delivered kept it.
    /// Only one cycle in [`FULL_CYCLE_EVERY`] looks at those kept ones again (to find the
    /// ones whose rows have gone since); the others start after it, so a store with a
    /// million dead letters past retention does not read them all every 30 s.
    walked_to: String,
    cycles: u32,
}

/// One cycle of pruning, in batches until nothing expired is left: idempotency records past
/// the window, spent signatures past their tolerance, sessions idle past the TTL, and the
/// events past retention with their delivered rows and those rows' attempt records (an
/// event stays while it has an outbox row that was not delivered). Before, each statement
/// ran once per cycle with a limit of 5,000 rows, so a store taking more than ~170 events
/// a second grew without bound.
async fn maintain(pool: &Pool, s: &Settings, walk: &mut Walk) -> Result<(), StoreError> {
    let c = pool.get().await.map_err(StoreError::unavailable)?;
    let now = crate::now_millis();
    // Statements whose batches run until one deletes fewer than a batch.
    let batched: [(&str, i64); 2] = [
        (
            "DELETE FROM idempotency WHERE key IN \
             (SELECT key FROM idempotency WHERE created_at < $1 LIMIT $2)",
            now - s.idempotency_window_ms,
        ),
        (
            "DELETE FROM sessions WHERE session_id IN \
             (SELECT session_id FROM sessions WHERE last_seen < $1 LIMIT $2)",
            now - s.session_ttl_ms,
        ),
    ];
    for (sql, cutoff) in batched {
        let statement = c
            .prepare_cached(sql)
            .await
            .map_err(StoreError::unavailable)?;
        while c
            .execute(&statement, &[&cutoff, &PRUNE_BATCH])
            .await
            .map_err(StoreError::unavailable)?
            >= PRUNE_BATCH as u64
        {}
    }
    c.execute(
        "DELETE FROM spent_signatures WHERE expires_at < $1",
        &[&(now / 1000)],
    )
    .await
    .map_err(StoreError::unavailable)?;
    // The events past retention, walked by id in ranges of a batch: each range's delivered
    // rows (with their attempt records), then its events left without a row.
    let oldest_kept =
        ulid::Ulid::from_parts(u64::try_from(now - s.retention_ms).unwrap_or(0), 0).to_string();
    let mut after = if walk.cycles.is_multiple_of(FULL_CYCLE_EVERY) {
        String::new()
    } else {
        walk.walked_to.clone()
    };
    let range = c
        .prepare_cached(
            "SELECT count(*), max(event_id) FROM (SELECT event_id FROM events \
             WHERE event_id > $1 AND event_id < $2 ORDER BY event_id LIMIT $3) w",
        )
        .await
        .map_err(StoreError::unavailable)?;
    let delivered = c
        .prepare_cached(
            "WITH gone AS (DELETE FROM outbox WHERE event_id > $1 AND event_id <= $2 \
               AND status = 'delivered' RETURNING id) \
             DELETE FROM delivery_attempts WHERE outbox_id IN (SELECT id FROM gone)",
        )
        .await
        .map_err(StoreError::unavailable)?;
    let events = c
        .prepare_cached(
            "DELETE FROM events e WHERE event_id > $1 AND event_id <= $2 \
             AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.event_id)",
        )
        .await
        .map_err(StoreError::unavailable)?;
    loop {
        let row = c
            .query_one(&range, &[&after, &oldest_kept, &PRUNE_BATCH])
            .await
            .map_err(StoreError::unavailable)?;
        let (seen, last): (i64, Option<String>) = (row.get(0), row.get(1));
        let Some(last) = last else { break };
        c.execute(&delivered, &[&after, &last])
            .await
            .map_err(StoreError::unavailable)?;
        c.execute(&events, &[&after, &last])
            .await
            .map_err(StoreError::unavailable)?;
        after = last;
        if seen < PRUNE_BATCH {
            break;
        }
    }
    walk.walked_to = after;
    walk.cycles = walk.cycles.wrapping_add(1);
    Ok(())
}
