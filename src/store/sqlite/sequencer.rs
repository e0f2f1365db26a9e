//! The sequencer: the thread on the request path. It takes the acceptances queued by
//! requests, decides each one (replayed signature, duplicate, session version, answer size:
//! `store::decide`), appends the committed ones to the log, commits the log once for the
//! whole group (one `write`, one `fdatasync`), hands the records to the projector and only
//! then answers the requests.
//!
//! One thread decides every acceptance in order, so concurrent duplicates and concurrent
//! events of one session are serialised exactly: stateVersions are gap-free and a duplicate
//! always sees the original. What does not depend on the decision is done before, on the
//! request's thread: the event's JSON comes written but for its `stateVersion`'s digits
//! (`event::Unversioned`), which the sequencer puts in (a third of its instructions per
//! event, bench/README.md, sixty-second session).
//!
//! Decisions read the state the projector has not applied yet from the *hot* maps, and the
//! rest from the database. An entry leaves the hot maps only once the projector has committed
//! its record, so every state is in one place or the other; the hot maps hold at most what
//! the projector's queue holds (it is bounded: when the database falls behind, the sequencer
//! waits and requests are refused with 503 before they queue without bound).
//!
//! Session versions are the exception: the sequencer is their only writer (a forgotten
//! session goes through it too), so its own view stays true after the projector has applied
//! it, and the `SESSION_CACHE` most recently written sessions stay in memory. A conversation's
//! next event then needs no database read (a read was ~4 % of an event's instructions,
//! bench/README.md, fifteenth session). A session leaves the map, oldest write first, only
//! once the database holds its last write; an expired one stays exactly as expired as its row.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use bytes::Bytes;
use hashlink::LinkedHashMap;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::keys::Keys;
use super::log::LogWriter;
use super::project::ProjMsg;
use super::record::{AcceptRecord, Held, OutboxRow, Record, Spend};
use super::Shared;
use crate::store::decide::{signature_is_spent, Windows};
use crate::store::{AcceptOutcome, Acceptance, Claimed, StoreError};
use crate::FastMap;

/// Sessions whose versions stay in memory after the database has them (about 120 bytes
/// each by their layout, for ids of ~36 bytes: ~8 MiB when full; estimated, not measured). Past it, the least recently written applied session goes, and
/// its next event reads its row, as every session did before.
pub(super) const SESSION_CACHE: usize = 65_536;

/// The answer to an acceptance, and what is left of it once decided: handed back so that the
/// request's thread frees what it allocated (jemalloc frees a thread's own allocations on its
/// fast path; those of another thread cost two to three times as much, and their cache's
/// flushes ~1.7 % of the instructions: bench/README.md, fortieth session).
pub(super) type Reply = oneshot::Sender<(Result<AcceptOutcome, StoreError>, Box<Acceptance>)>;

pub(super) enum SeqMsg {
    /// An acceptance, with its event's JSON written by the request's thread (`None`: the
    /// sequencer writes it).
    Accept(Box<Acceptance>, Reply, Option<crate::event::Unversioned>),
    /// Replace the stored answer of an idempotency key.
    Answer {
        key: String,
        status: u16,
        body: Bytes,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Forget a session (its version starts again at 1).
    Forget {
        session_id: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close(oneshot::Sender<()>),
}

/// An answer kept for duplicates.
#[derive(Debug, Clone)]
struct HotAnswer {
    /// The event the key made (empty for a key kept in the database before the keys moved
    /// to `keys`).
    event_id: String,
    status: u16,
    body: Bytes,
    correlation_id: String,
    created_at: i64,
    lsn: u64,
}

#[derive(Debug, Clone, Copy)]
struct HotSession {
    version: u64,
    last_seen: i64,
    lsn: u64,
}

/// Which hot entry a log record wrote.
enum HotKey {
    Answer(String),
    Spent(String, Vec<u8>),
}

/// State written to the log and not yet applied to the database, and the recent sessions.
#[derive(Default)]
struct Hot {
    answers: FastMap<String, HotAnswer>,
    /// Every session written and not yet applied, and the most recently written applied
    /// ones (at most `SESSION_CACHE` of those), least recently written first.
    sessions: LinkedHashMap<String, HotSession>,
    spent: FastMap<(String, Vec<u8>), (i64, u64)>,
    /// The sessions forgotten in the current millisecond, with its reading: their next
    /// events are stamped a millisecond later (see `decide`).
    forgets: FastMap<String, i64>,
    /// Every answer and spent signature written, in log order, to be dropped once the
    /// database has it.
    written: VecDeque<(u64, HotKey)>,
}

impl Hot {
    /// Drops the entries whose records the database holds (unless a later record rewrote
    /// them), and the least recently written sessions past `cap` whose state it holds
    /// (`sessions_at`: the sessions table is written behind the rest).
    fn evict(&mut self, projected: u64, sessions_at: u64, cap: usize) {
        while self.sessions.len() > cap {
            // Written in log order (a write moves its session to the back), so when the
            // front is not applied yet, nothing behind it is.
            match self.sessions.front() {
                Some((_, s)) if s.lsn <= sessions_at.min(projected) => {
                    self.sessions.pop_front();
                }
                _ => break,
            }
        }
        while let Some((lsn, _)) = self.written.front() {
            if *lsn > projected {
                break;
            }
            let Some((lsn, key)) = self.written.pop_front() else {
                break;
            };
            match key {
                HotKey::Answer(k) => {
                    if self.answers.get(&k).is_some_and(|a| a.lsn == lsn) {
                        self.answers.remove(&k);
                    }
                }
                HotKey::Spent(route, mac) => {
                    let k = (route, mac);
                    if self.spent.get(&k).is_some_and(|(_, l)| *l == lsn) {
                        self.spent.remove(&k);
                    }
                }
            }
        }
    }
}

/// What an entry held before a group changed it, to put back if the group fails.
enum Undo {
    Answer(String, Option<HotAnswer>),
    Session(String, Option<HotSession>),
    Spent((String, Vec<u8>), Option<(i64, u64)>),
}

/// An item of the group being decided, with what will be answered after the commit.
enum Decided {
    Accept(Reply, Result<AcceptOutcome, StoreError>, Box<Acceptance>),
    Answer(oneshot::Sender<Result<(), StoreError>>),
}

pub(super) struct Sequencer {
    pub(super) log: LogWriter,
    /// Reads what the hot maps do not hold.
    pub(super) reader: Connection,
    pub(super) projector: SyncSender<ProjMsg>,
    pub(super) shared: Arc<Shared>,
    pub(super) windows: Windows,
    pub(super) max_batch: usize,
    /// The plaintext bodies of the group's events that have outbox rows, by log record: what
    /// their fresh rows deliver (the record may hold the body sealed).
    pub(super) plain: Vec<(u64, Bytes)>,
    /// Whether `reader` holds a read transaction: a group's lookups share one (begun by the
    /// first, ended before the group's commit), since beginning and ending a transaction (WAL
    /// read locks by `fcntl`, the pager's shared lock) cost more than the lookup itself. A
    /// snapshot kept past its group would miss what the projector applied since, after the
    /// hot maps dropped it (`a_repeat_after_the_idempotency_window_is_a_new_event` fails so).
    pub(super) reading: bool,
    /// The idempotency keys the database no longer holds (see `keys`).
    pub(super) keys: Arc<Keys>,
    /// Whether the database still holds keys written before they moved to `keys`.
    pub(super) legacy_keys: bool,
}

impl Sequencer {
    pub(super) fn run(mut self, rx: Receiver<SeqMsg>) {
        let mut hot = Hot::default();
        let mut group: Vec<Decided> = Vec::with_capacity(self.max_batch);
        let mut records: Vec<Record> = Vec::with_capacity(self.max_batch);
        let mut undo: Vec<Undo> = Vec::new();
        let mut written: Vec<(u64, HotKey)> = Vec::new();
        let mut encoded = Vec::with_capacity(4096);
        while let Ok(first) = rx.recv() {
            // The first message of a group woke this thread, which committed the one or two
            // that had come (half the groups at saturation on one core; the traces suggest
            // it took the core from the request thread that sent it at once). Handing the
            // core back first lets the request threads queue what they are already reading
            // into the same group: at saturation on one core, commit cycles 3,742 → 2,498
            // in two seconds and the gateway's p99 4.01–4.31 ms against 4.37–4.46 in four
            // alternating `bench/pairs.sh 2` batches each, req/s 0.71–0.80× of the reference
            // against 0.69–0.72× (bench/README.md, sixty-second session). Where no other
            // thread waits for this core it costs one system call per group.
            std::thread::yield_now();
            hot.evict(
                *self.shared.projected.borrow(),
                *self.shared.sessions_at.borrow(),
                SESSION_CACHE,
            );
            let now = crate::now_millis();
            hot.forgets.retain(|_, at| *at >= now);
            let mut close = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    SeqMsg::Accept(mut a, reply, json) => {
                        let r = self.decide(
                            &mut hot,
                            (&mut a, json),
                            now,
                            &mut records,
                            &mut undo,
                            &mut written,
                            &mut encoded,
                        );
                        group.push(Decided::Accept(reply, r, a));
                    }
                    SeqMsg::Answer {
                        key,
                        status,
                        body,
                        reply,
                    } => {
                        match self.answer(
                            &mut hot,
                            key,
                            status,
                            body,
                            &mut records,
                            &mut undo,
                            &mut written,
                            &mut encoded,
                        ) {
                            Ok(()) => group.push(Decided::Answer(reply)),
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    SeqMsg::Forget { session_id, reply } => {
                        let lsn = self.append(
                            Record::Forget {
                                session_id: session_id.clone(),
                                at: now,
                            },
                            &mut records,
                            &mut encoded,
                        );
                        // Version 0 until the database has forgotten the session too: the
                        // next event is version 1, whatever an older row still says.
                        let prev = hot.sessions.insert(
                            session_id.clone(),
                            HotSession {
                                version: 0,
                                last_seen: now,
                                lsn,
                            },
                        );
                        hot.forgets.insert(session_id.clone(), now);
                        undo.push(Undo::Session(session_id, prev));
                        group.push(Decided::Answer(reply));
                    }
                    SeqMsg::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if group.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            self.end_read();
            self.commit(&mut hot, &mut group, &mut records, &mut undo, &mut written);
            if let Some(done) = close {
                if let Err(e) = self.log.close() {
                    tracing::error!(error = %e, "cannot flush the store's log at shutdown");
                }
                let _ = done.send(());
                break;
            }
        }
    }

    /// Commits the group's records and answers every item: after the log is durable, or
    /// with the failure (every change of the group undone) if it could not be written.
    fn commit(
        &mut self,
        hot: &mut Hot,
        group: &mut Vec<Decided>,
        records: &mut Vec<Record>,
        undo: &mut Vec<Undo>,
        written: &mut Vec<(u64, HotKey)>,
    ) {
        let failure = if records.is_empty() {
            None
        } else {
            match self.log.commit() {
                Ok(()) => {
                    let last = self.log.next_lsn() - 1;
                    self.shared
                        .acked
                        .store(last, std::sync::atomic::Ordering::SeqCst);
                    hot.written.extend(written.drain(..));
                    undo.clear();
                    self.hand_on(records, last);
                    self.shared.log_health.recover();
                    None
                }
                Err(e) => {
                    for u in undo.drain(..).rev() {
                        match u {
                            Undo::Answer(k, prev) => restore(&mut hot.answers, k, prev),
                            Undo::Session(k, prev) => match prev {
                                Some(v) => {
                                    hot.sessions.insert(k, v);
                                }
                                None => {
                                    hot.sessions.remove(&k);
                                }
                            },
                            Undo::Spent(k, prev) => restore(&mut hot.spent, k, prev),
                        }
                    }
                    written.clear();
                    records.clear();
                    self.plain.clear();
                    let e = StoreError::unavailable(e);
                    self.shared.log_health.fail(&e);
                    Some(e)
                }
            }
        };
        let size = group
            .iter()
            .filter(|d| matches!(d, Decided::Accept(..)))
            .count();
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        for d in group.drain(..) {
            match (d, &failure) {
                (Decided::Accept(reply, _, a), Some(e)) => {
                    let _ = reply.send((Err(e.clone()), a));
                }
                (Decided::Accept(reply, mut r, a), None) => {
                    if let Ok(AcceptOutcome::Committed { group, .. }) = &mut r {
                        *group = size;
                    }
                    let _ = reply.send((r, a));
                }
                (Decided::Answer(reply), Some(e)) => {
                    let _ = reply.send(Err(e.clone()));
                }
                (Decided::Answer(reply), None) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Hands a committed group (its last record `last`) on: leases each `respond` row to its
    /// request, queues the other rows as fresh (see `fresh`), drops a forgotten session's
    /// fresh rows, and sends the records to the projector; only then may claims take the
    /// fresh rows (`handed`), so a settlement always reaches the projector after its row.
    fn hand_on(&mut self, records: &mut Vec<Record>, last: u64) {
        let first = last + 1 - records.len() as u64;
        // The claims are made before the lock is taken (claims wait on it), and only for
        // the sinks that have a queue.
        let queued = self.shared.fresh_sinks.lock().clone();
        let mut fresh: Vec<(u64, Claimed)> = Vec::new();
        let mut plain = self.plain.drain(..).peekable();
        for (lsn, r) in (first..).zip(records.iter()) {
            if let Record::Accept(a) = r {
                let body = match plain.peek() {
                    Some((l, _)) if *l == lsn => plain.next().map(|(_, b)| b),
                    _ => None,
                };
                if let Some(body) = body {
                    let rows = a.rows.iter();
                    for row in rows.filter(|r| r.held.is_none() && queued.contains(&r.sink)) {
                        fresh.push((lsn, fresh_claim(a, row.id, &row.sink, body.clone())));
                    }
                }
            }
        }
        drop(plain);
        {
            let mut leases = self.shared.leases.lock();
            let mut fresh = fresh.into_iter().peekable();
            for (lsn, r) in (first..).zip(records.iter()) {
                match r {
                    Record::Accept(a) => {
                        for row in &a.rows {
                            if let Some(h) = &row.held {
                                leases.lease(row.id, &h.token, h.lease_until);
                            }
                        }
                        // This record's claims come next, in row order.
                        while let Some((l, c)) = fresh.next_if(|(l, _)| *l == lsn) {
                            leases.fresh.push(l, c);
                        }
                    }
                    Record::Forget { session_id, .. } => leases.fresh.forget(session_id, lsn),
                    Record::Spend(_) | Record::Answer { .. } => {}
                }
            }
        }
        // The projector gets the records before anyone hears of them, so work that follows
        // an answer (a claim, a read) finds them applied.
        let msg = ProjMsg::Records(std::mem::take(records), last);
        let sent = match self.projector.try_send(msg) {
            Ok(()) => Ok(()),
            // A full queue: the projector may be pausing between rounds; end the pause.
            Err(TrySendError::Full(msg)) => {
                self.shared.wake_projector();
                self.projector.send(msg).map_err(|_| ())
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            tracing::error!("the store's projector has stopped");
        }
        self.shared
            .handed
            .store(last, std::sync::atomic::Ordering::SeqCst);
    }

    /// Appends a record to the log buffer and to the group; returns its number.
    fn append(&mut self, r: Record, records: &mut Vec<Record>, encoded: &mut Vec<u8>) -> u64 {
        encoded.clear();
        r.encode(encoded);
        let lsn = self.log.append(encoded);
        records.push(r);
        lsn
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        hot: &mut Hot,
        (a, json): (&mut Acceptance, Option<crate::event::Unversioned>),
        now: i64,
        records: &mut Vec<Record>,
        undo: &mut Vec<Undo>,
        written: &mut Vec<(u64, HotKey)>,
        encoded: &mut Vec<u8>,
    ) -> Result<AcceptOutcome, StoreError> {
        let unavailable = |e: rusqlite::Error| StoreError::unavailable(e);
        // A spent signature is refused before anything else, duplicates included: a replayed
        // request must not even learn the original answer.
        let spend = a.spend.take().map(|s| Spend {
            route: a.event.route.clone(),
            mac: s.mac.to_vec(),
            expires_at: s.expires_at,
        });
        if let Some(s) = &spend {
            let k = (s.route.clone(), s.mac.clone());
            let expires = match hot.spent.get(&k) {
                Some((expires, _)) => Some(*expires),
                None => self.read_spent(&k.0, &k.1).map_err(unavailable)?,
            };
            if expires.is_some_and(|e| signature_is_spent(e, now)) {
                return Ok(AcceptOutcome::SignatureReplayed);
            }
        }
        let existing = match hot.answers.get(&a.idempotency_key) {
            Some(h) => Some(h.clone()),
            None => self.read_answer(&a.idempotency_key).map_err(unavailable)?,
        };
        if let Some(h) = existing.filter(|h| self.windows.key_is_live(h.created_at, now)) {
            if let Some(s) = spend {
                let lsn = self.append(Record::Spend(s.clone()), records, encoded);
                note_spent(hot, s, lsn, undo, written);
            }
            return Ok(AcceptOutcome::Duplicate {
                status: h.status,
                body: h.body,
                correlation_id: h.correlation_id,
            });
        }
        a.answer.check_size(a.max_response_bytes)?;

        let e = &mut a.event;
        let previous = match hot.sessions.get(&e.session_id) {
            Some(s) => Some((s.version, s.last_seen)),
            None => self.read_session(&e.session_id).map_err(unavailable)?,
        };
        let version = self.windows.next_version(previous, now);
        e.state_version = version;
        // Stamped after a forget of its session in the same millisecond: what a forget finds
        // by time (`project::forget_scan`, `outbox::forgotten_event`: `committed_at <= at`)
        // is then exactly what came before it in the log.
        let at = hot
            .forgets
            .get(&e.session_id)
            .map_or(now, |&forgot| now.max(forgot + 1));
        let answer = a.answer.render(version);
        let mut body = match json {
            Some(json) => json.versioned(version),
            None => e.to_json(),
        };
        // What the log and the database keep ([privacy] encrypt_key); the request's own
        // `respond` call below uses the plaintext.
        let sealed = if crate::seal::active() {
            Some(crate::seal::seal(body.clone()).map_err(StoreError::unavailable)?)
        } else {
            None
        };

        let ids = &self.shared.next_outbox_id;
        let mut rows: Vec<OutboxRow> = a
            .sinks
            .iter()
            .map(|sink| OutboxRow {
                id: ids.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                sink: sink.clone(),
                held: None,
            })
            .collect();
        let held = a.respond.as_ref().map(|r| {
            let id = ids.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = ulid::Ulid::new().to_string();
            let respond_to = r.on_late.clone().unwrap_or_default();
            rows.push(OutboxRow {
                id,
                sink: r.sink.clone(),
                held: Some(Held {
                    lease_until: now + r.lease_ms,
                    token: token.clone(),
                    respond_to: respond_to.clone(),
                }),
            });
            Box::new(Claimed::held_for_request(e, r, id, token, &body, now))
        });
        let key = std::mem::take(&mut a.idempotency_key);
        // The event is dropped here: what the record keeps is moved out of it, not copied.
        let plain = !a.sinks.is_empty();
        let stored = match sealed {
            Some(sealed) => sealed,
            None if plain => body.clone(),
            None => std::mem::take(&mut body),
        };
        let session = e.session_id.clone();
        let event_id = e.event_id.clone();
        let correlation_id = e.correlation_id.clone();
        let record = AcceptRecord {
            at,
            event_id: std::mem::take(&mut e.event_id),
            correlation_id: std::mem::take(&mut e.correlation_id),
            route: std::mem::take(&mut e.route),
            session_id: std::mem::take(&mut e.session_id),
            event_type: std::mem::take(&mut e.event_type),
            state_version: version,
            simulated: e.simulated,
            received_at: std::mem::take(&mut e.received_at),
            body: stored,
            key: key.clone(),
            status: a.status,
            answer: answer.clone(),
            rows,
            spend: spend.clone(),
        };
        let lsn = self.append(Record::Accept(Box::new(record)), records, encoded);
        if plain {
            self.plain.push((lsn, Bytes::from(body)));
        }

        let prev = hot.sessions.insert(
            session.clone(),
            HotSession {
                version,
                last_seen: at,
                lsn,
            },
        );
        undo.push(Undo::Session(session, prev));
        let prev = hot.answers.insert(
            key.clone(),
            HotAnswer {
                event_id,
                status: a.status,
                body: answer.clone(),
                correlation_id,
                created_at: now,
                lsn,
            },
        );
        undo.push(Undo::Answer(key.clone(), prev));
        written.push((lsn, HotKey::Answer(key)));
        if let Some(s) = spend {
            note_spent(hot, s, lsn, undo, written);
        }
        Ok(AcceptOutcome::Committed {
            state_version: version,
            body: answer,
            held,
            group: 1,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        hot: &mut Hot,
        key: String,
        status: u16,
        body: Bytes,
        records: &mut Vec<Record>,
        undo: &mut Vec<Undo>,
        written: &mut Vec<(u64, HotKey)>,
        encoded: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let (existing, from_database) = match hot.answers.get(&key) {
            Some(h) => (Some(h.clone()), false),
            None => (
                self.read_answer(&key).map_err(StoreError::unavailable)?,
                true,
            ),
        };
        // A key pruned meanwhile has nothing to replace.
        let Some(existing) = existing else {
            return Ok(());
        };
        // Its session forgotten while its `respond` call was in flight: the answer is kept
        // emptied, here and (`outbox::set_event_answer`) in the database. (A forget still
        // in the log when this answer comes is applied before it there; duplicates meanwhile
        // get the hot answer until the projector has both, one round.)
        let forgotten = if from_database && !existing.event_id.is_empty() {
            self.begin_read().map_err(StoreError::unavailable)?;
            super::outbox::forgotten_event(&self.reader, &existing.event_id)
                .map_err(StoreError::unavailable)?
        } else {
            None
        };
        let body = match forgotten {
            Some((session_id, version)) => Bytes::from(crate::store::decide::Answer::forgotten(
                &body,
                &existing.event_id,
                &session_id,
                version,
            )),
            None => body,
        };
        let lsn = self.append(
            Record::Answer {
                key: key.clone(),
                event_id: Some(existing.event_id.clone()).filter(|id| !id.is_empty()),
                status,
                body: body.clone(),
            },
            records,
            encoded,
        );
        let prev = hot.answers.insert(
            key.clone(),
            HotAnswer {
                status,
                body,
                lsn,
                ..existing
            },
        );
        undo.push(Undo::Answer(key.clone(), prev));
        written.push((lsn, HotKey::Answer(key)));
        Ok(())
    }

    /// Begins the group's read transaction unless it is open. It starts after the group's
    /// eviction from the hot maps (`run`), so its snapshot holds every record evicted.
    fn begin_read(&mut self) -> rusqlite::Result<()> {
        if !self.reading {
            // A transaction left open by a failed end (below) is ended first: its snapshot
            // may be older than the eviction.
            if !self.reader.is_autocommit() {
                self.reader.prepare_cached("ROLLBACK")?.execute([])?;
            }
            self.reader.prepare_cached("BEGIN")?.execute([])?;
            self.reading = true;
        }
        Ok(())
    }

    /// Ends the group's read transaction, if one is open.
    fn end_read(&mut self) {
        if std::mem::take(&mut self.reading) && !self.reader.is_autocommit() {
            let ended = self
                .reader
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]));
            if let Err(e) = ended {
                // The next group's first lookup rolls it back (`begin_read`); until then it
                // only holds the WAL's checkpoints back.
                tracing::warn!(error = %e, "cannot end the sequencer's read transaction");
            }
        }
    }

    /// The stored answer for `key`: its entry in `keys` says which event it made and when,
    /// the event's row (since schema 9; before, `answers` by event id) what was answered. An
    /// answer outlives its key (`project::maintain`), so a live key always has one. Keys
    /// written before they moved to `keys` are looked up in the database after a miss.
    fn read_answer(&mut self, key: &str) -> rusqlite::Result<Option<HotAnswer>> {
        if let Some(k) = self.keys.get(key).map_err(super::keys::failed)? {
            self.begin_read()?;
            let found = self
                .reader
                .prepare_cached(concat!(
                    "SELECT answer_status, answer, correlation_id FROM events \
                         WHERE rowid = ",
                    event_row!("?1"),
                    " AND event_id = ?1 AND answer IS NOT NULL \
                         UNION ALL SELECT a.status, a.body, e.correlation_id FROM answers a \
                         LEFT JOIN events e ON e.rowid = ",
                    event_row!("a.event_id"),
                    " AND e.event_id = a.event_id \
                         WHERE a.event_id = ?1 LIMIT 1"
                ))?
                .query_row(params![k.event_id], |r| {
                    // Entries written before keys were hashed carry the correlation id; the
                    // event's row has it for the rest (the event's own id when it is gone).
                    let correlation_id = match &k.correlation_id {
                        Some(c) => c.clone(),
                        None => r
                            .get::<_, Option<String>>(2)?
                            .unwrap_or_else(|| k.event_id.clone()),
                    };
                    Ok(HotAnswer {
                        status: r.get(0)?,
                        body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                        event_id: k.event_id.clone(),
                        correlation_id,
                        created_at: k.created_at,
                        lsn: 0,
                    })
                })
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
            // An event without a row is kept beside the database (`beside`).
            return Ok(
                super::beside::read_id(&self.reader, &k.event_id)?.map(|a| HotAnswer {
                    status: a.status,
                    body: a.answer,
                    correlation_id: k.correlation_id.clone().unwrap_or(a.correlation_id),
                    event_id: a.event_id,
                    created_at: k.created_at,
                    lsn: 0,
                }),
            );
        }
        if !self.legacy_keys {
            return Ok(None);
        }
        self.begin_read()?;
        self.reader
            .prepare_cached(
                "SELECT a.status, a.body, i.correlation_id, i.created_at, i.event_id \
                 FROM idempotency i JOIN answers a ON a.event_id = i.event_id \
                 WHERE i.key = ?1",
            )?
            .query_row(params![key], |r| {
                Ok(HotAnswer {
                    status: r.get(0)?,
                    body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    correlation_id: r.get(2)?,
                    created_at: r.get(3)?,
                    event_id: r.get(4)?,
                    lsn: 0,
                })
            })
            .optional()
    }

    fn read_session(&mut self, session: &str) -> rusqlite::Result<Option<(u64, i64)>> {
        self.begin_read()?;
        self.reader
            .prepare_cached("SELECT state_version, last_seen FROM sessions WHERE session_id = ?1")?
            .query_row(params![session], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?))
            })
            .optional()
    }

    fn read_spent(&mut self, route: &str, mac: &[u8]) -> rusqlite::Result<Option<i64>> {
        self.begin_read()?;
        self.reader
            .prepare_cached(
                "SELECT expires_at FROM spent_signatures WHERE route = ?1 AND mac = ?2",
            )?
            .query_row(params![route, mac], |r| r.get(0))
            .optional()
    }
}

/// A fresh row's claim, before it is leased.
fn fresh_claim(a: &AcceptRecord, id: i64, sink: &str, body: Bytes) -> Claimed {
    Claimed {
        outbox_id: id,
        lease_token: String::new(),
        sink: sink.to_string(),
        event_id: a.event_id.clone(),
        correlation_id: a.correlation_id.clone(),
        route: a.route.clone(),
        session_id: a.session_id.clone(),
        event_type: a.event_type.clone(),
        attempts: 0,
        body,
        respond_to: None,
        created_at_ms: a.at,
        lease_until_ms: 0,
    }
}

fn note_spent(
    hot: &mut Hot,
    s: Spend,
    lsn: u64,
    undo: &mut Vec<Undo>,
    written: &mut Vec<(u64, HotKey)>,
) {
    let k = (s.route, s.mac);
    let prev = hot.spent.insert(k.clone(), (s.expires_at, lsn));
    undo.push(Undo::Spent(k.clone(), prev));
    written.push((lsn, HotKey::Spent(k.0, k.1)));
}

fn restore<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>, k: K, prev: Option<V>) {
    match prev {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(hot: &mut Hot, session: &str, version: u64, lsn: u64) {
        hot.sessions.insert(
            session.to_string(),
            HotSession {
                version,
                last_seen: 0,
                lsn,
            },
        );
    }

    fn held(hot: &Hot) -> Vec<(&str, u64)> {
        hot.sessions
            .iter()
            .map(|(k, s)| (k.as_str(), s.version))
            .collect()
    }

    #[test]
    fn applied_sessions_past_the_cap_go_least_recently_written_first() {
        let mut hot = Hot::default();
        write(&mut hot, "a", 1, 1);
        write(&mut hot, "b", 1, 2);
        write(&mut hot, "c", 1, 3);
        // `a` is written again: `b` is now the least recently written.
        write(&mut hot, "a", 2, 4);
        hot.evict(4, 4, 2);
        assert_eq!(held(&hot), vec![("c", 1), ("a", 2)]);
        hot.evict(4, 4, 3);
        assert_eq!(
            held(&hot),
            vec![("c", 1), ("a", 2)],
            "under the cap, all stay"
        );
    }

    #[test]
    fn a_session_the_database_does_not_hold_yet_stays_past_the_cap() {
        let mut hot = Hot::default();
        write(&mut hot, "a", 1, 1);
        write(&mut hot, "b", 1, 2);
        write(&mut hot, "c", 1, 3);
        // Only record 1 is applied: `b` and `c` are in memory only.
        hot.evict(1, 1, 0);
        assert_eq!(held(&hot), vec![("b", 1), ("c", 1)]);
        hot.evict(2, 2, 0);
        assert_eq!(held(&hot), vec![("c", 1)]);
        hot.evict(3, 3, 0);
        assert!(held(&hot).is_empty());
    }
}
