//! The delivery path's SQL on the embedded store: claim, settle, dead letters, replay, purge,
//! per-sink counts and attempt history. Every function that writes runs on the projector thread
//! inside its transaction (see the parent module); reads run on the reader connection.

use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::store::decide::Answer;
use crate::store::{Attempt, Claimed, DeadLetter, DeadLetterFilter, Settlement, SinkCounts};

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub(super) fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::format_rfc3339)
        .unwrap_or_default()
}

/// The query of [`due`]. Its limit is `?3 + 0`, not `?3`: SQLite (3.47 on) reads a bare
/// bound LIMIT's value when it plans the statement and then plans it again whenever that
/// parameter is bound anew, so every claim parsed the query again, about half the
/// query's cost in a drain (perf, bench/README.md, forty-fifth session). An expression is
/// not read; the plan is the same.
pub(super) const DUE: &str =
    "SELECT o.id, o.event_id, o.attempts, o.respond_to, o.result, o.created_at \
             FROM outbox o \
             WHERE o.sink = ?1 AND o.status = 'pending' AND o.next_attempt_at <= ?2 \
               AND (o.lease_until IS NULL OR o.lease_until < ?2) \
               AND (o.id < ?4 OR o.id > ?5) \
               AND (o.ordered = 0 OR NOT EXISTS ( \
                 SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.session_id = o.session_id \
                   AND p.ordered = 1 AND p.status = 'pending' AND p.id < o.id)) \
             ORDER BY o.next_attempt_at, o.id LIMIT ?3 + 0";

/// Due rows of one sink not held by anyone (see `Store::claim`), oldest due first, skipping
/// `held` (rows leased in memory, see the parent module) and the ids `skip.0..=skip.1` (the
/// sink's fresh rows, see `fresh`): at most `limit`. Reads only. The order is the
/// `outbox_due` index's own (sink, next_attempt_at, rowid; pending rows only), so the query
/// walks the index and stops instead of sorting every due row of a backlog.
pub(super) fn due(
    c: &Connection,
    now: i64,
    sink: &str,
    limit: usize,
    held: &std::collections::HashSet<i64>,
    skip: (i64, i64),
) -> rusqlite::Result<Vec<DueRow>> {
    let mut rows: Vec<DueRow> = c
        .prepare_cached(DUE)?
        .query_map(
            params![sink, now, (limit + held.len()) as i64, skip.0, skip.1],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?
        .filter(|r| r.as_ref().map_or(true, |(id, ..)| !held.contains(id)))
        .take(limit)
        .collect::<rusqlite::Result<_>>()?;
    rows.sort_unstable_by_key(|(id, ..)| *id);
    Ok(rows)
}

/// The claims of due rows (see [`due`]), with their events, under one lease.
pub(super) fn claims(
    c: &Connection,
    sink: &str,
    rows: Vec<DueRow>,
    token: &str,
    lease_until_ms: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut event = c.prepare_cached(CLAIMED_EVENT)?;
    let mut out = Vec::with_capacity(rows.len());
    for (outbox_id, event_id, attempts, respond_to, result, created_at_ms) in rows {
        let row = event
            .query_row(params![event_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .optional()?;
        // An event without a row is kept beside the database (`beside`).
        let row = match row {
            Some(row) => Some(row),
            None => beside_claimed(c, &event_id),
        };
        // Retention keeps the event while its outbox row exists (`project::maintain`); a
        // body that cannot be read beside the database was logged by `event_body_or_null`
        // or `beside_claimed`.
        let Some((correlation_id, route, session_id, event_type, Some(body))) = row else {
            continue;
        };
        let Some(body) = crate::store::opened_for_delivery(&event_id, body) else {
            continue;
        };
        out.push(Claimed {
            outbox_id,
            lease_token: token.to_string(),
            sink: sink.to_string(),
            event_id,
            correlation_id,
            route,
            session_id,
            event_type,
            attempts,
            body: crate::store::with_result(body, result),
            respond_to,
            created_at_ms,
            lease_until_ms,
        });
    }
    Ok(out)
}

/// What a claim sends of an event kept beside the database (`beside::read_id`), as
/// [`CLAIMED_EVENT`] reads a row's; a record that cannot be read is logged and its row left
/// alone, like a body `event_body_or_null` cannot read.
fn beside_claimed(c: &Connection, event_id: &str) -> Option<ClaimedEvent> {
    match super::beside::read_id(c, event_id) {
        Ok(a) => a.map(|a| {
            (
                a.correlation_id,
                a.route,
                a.session_id,
                a.event_type,
                Some(a.body),
            )
        }),
        Err(e) => {
            tracing::error!(event_id, error = %e, "an event kept beside the database could not be read for its delivery");
            None
        }
    }
}

/// What a claim reads of its event: correlation id, route, session id, event type, body.
type ClaimedEvent = (String, String, String, String, Option<String>);

/// Records which configured sinks deliver in session order, and marks their undelivered rows
/// (pending, and dead letters a replay may bring back) to match: a sink may have been switched
/// since they were written. Sinks no longer configured keep their rows as they are.
pub(super) fn configure_sinks(c: &Connection, sinks: &[(String, bool)]) -> rusqlite::Result<()> {
    let mut record = c.prepare_cached(
        "INSERT INTO sink_settings (sink, ordered) VALUES (?1, ?2) \
         ON CONFLICT (sink) DO UPDATE SET ordered = excluded.ordered",
    )?;
    // One statement per status: each walks its own partial index.
    let mut mark_pending = c.prepare_cached(
        "UPDATE outbox SET ordered = ?2 WHERE sink = ?1 AND status = 'pending' AND ordered <> ?2",
    )?;
    let mut mark_dead = c.prepare_cached(
        "UPDATE outbox SET ordered = ?2 WHERE sink = ?1 AND status = 'dead' AND ordered <> ?2",
    )?;
    for (sink, ordered) in sinks {
        record.execute(params![sink, ordered])?;
        mark_pending.execute(params![sink, ordered])?;
        mark_dead.execute(params![sink, ordered])?;
    }
    Ok(())
}

/// What a claim sends of an event, for `?1` its id.
pub(super) const CLAIMED_EVENT: &str = concat!(
    "SELECT correlation_id, route, session_id, event_type, \
            event_body_or_null(body, body_at, rowid) FROM events WHERE rowid = ",
    event_row!("?1"),
    " AND event_id = ?1"
);

/// One event's outbox rows (id, sink, status), oldest first, for `?1` its id: the rows it was
/// accepted with, by id between the bounds its row keeps (schema 11 has no index by event)
/// or, for an event kept beside the database (`beside`), between `?2` and `?3`, the bounds
/// of its record's rows (NULL for an event with a row), and the rows added later (`late`,
/// indexed).
pub(super) const EVENT_ROWS: &str = concat!(
    "SELECT o.id, o.sink, o.status FROM events e \
       JOIN outbox o ON o.id BETWEEN e.outbox_first AND e.outbox_last AND o.event_id = e.event_id \
     WHERE e.rowid = ",
    event_row!("?1"),
    " AND e.event_id = ?1 \
     UNION ALL SELECT id, sink, status FROM outbox WHERE id BETWEEN ?2 AND ?3 AND event_id = ?1 \
     UNION ALL SELECT id, sink, status FROM outbox WHERE late = 1 AND event_id = ?1 \
     ORDER BY 1"
);

/// The bounds of `a`'s outbox rows: as [`EVENT_ROWS`] takes them for an event kept beside
/// the database, and as an events row keeps them (`outbox_first`, `outbox_last`).
pub(super) fn rows_between(a: &super::record::AcceptRecord) -> (Option<i64>, Option<i64>) {
    (
        a.rows.iter().map(|r| r.id).min(),
        a.rows.iter().map(|r| r.id).max(),
    )
}

/// The ids of the delivered rows of the events before `?1` (an event id; `?2` its number,
/// `event_id::row_of`) from rowid `?3` on: what retention deletes (a pass of
/// `project::maintain`). Found from the events, as [`EVENT_ROWS`] finds one event's: by rowid,
/// and a moved event (a negative rowid) by its id, in the first pass of a cycle (`?3` = 0).
///
/// Each event's rows are read by their id range. Written as `o.status = 'delivered'`, the
/// planner instead built an automatic index over the whole outbox on `status` at every
/// execution: a scan of the table twice a pass, ~12 µs per event looked at with 427k rows,
/// and growing with the table (bench/README.md, forty-seventh session). The unary `+` keeps
/// `status` and `event_id` out of any index, and `CROSS JOIN` keeps the events outside.
pub(super) const DELIVERED_BEFORE: &str = "SELECT o.id FROM events e \
       CROSS JOIN outbox o ON o.id BETWEEN e.outbox_first AND e.outbox_last \
         AND +o.event_id = e.event_id \
     WHERE ((e.rowid >= ?3 AND e.rowid < ?2) OR (?3 = 0 AND e.rowid < 0 AND e.event_id < ?1)) \
       AND +o.status = 'delivered' \
     UNION ALL SELECT id FROM outbox WHERE late = 1 AND event_id < ?1 AND status = 'delivered'";

/// Raises the floor of the ids the store gives out to the highest id in the table: run
/// before deleting rows, so that an id is never given out twice (ids name dead letters and
/// their attempts).
pub(super) fn keep_id_floor(c: &Connection) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE log_position SET outbox_id_floor = \
           max(outbox_id_floor, coalesce((SELECT max(id) FROM outbox), 0))",
    )?
    .execute([])?;
    Ok(())
}

/// A due row before its event is read: id, event id, attempts, respond_to, result,
/// created_at.
pub(super) type DueRow = (i64, String, u32, Option<String>, Option<String>, i64);

/// Settles a claimed row; records the attempt. The caller has checked the claim (leases are
/// kept in memory); a row inserted already leased to its request must still carry that
/// lease, and a row settled meanwhile (no longer pending) is left alone. Returns whether the
/// row was settled.
pub(super) fn settle(
    c: &Connection,
    now: i64,
    claim: &Claimed,
    s: &Settlement,
    ids: &AtomicI64,
) -> rusqlite::Result<bool> {
    let attempt = claim.attempts + 1;
    // The statements are constants: `format!` per settled row cost an allocation and a
    // formatting pass each (a batch of deliveries settles every row).
    macro_rules! held {
        () => {
            "id = ?1 AND status = 'pending' AND (lease_owner IS NULL OR lease_owner = ?2)"
        };
    }
    // (outcome, error, duration) of the attempt to record, if it was one.
    type Record<'a> = Option<(&'static str, Option<&'a str>, u64)>;
    let (changed, record): (usize, Record<'_>) = match s {
        // The delivered attempt is kept in the row (schema 11), not in `delivery_attempts`:
        // most rows are delivered at the first attempt, and then have no record there at all.
        Settlement::Delivered { duration_ms, .. } => (
            c.prepare_cached(concat!(
                "UPDATE outbox SET status = 'delivered', attempts = ?3, lease_until = NULL, \
                 lease_owner = NULL, delivered_at = ?4, last_error = NULL, delivered_ms = ?5, \
                 delivered_by = ?6 WHERE ",
                held!()
            ))?
            .execute(params![
                claim.outbox_id,
                claim.lease_token,
                attempt,
                now,
                i64::try_from(*duration_ms).unwrap_or(i64::MAX),
                crate::replica_id()
            ])?,
            None,
        ),
        Settlement::Retry {
            at_ms,
            error,
            duration_ms,
        } => (
            c.prepare_cached(concat!(
                "UPDATE outbox SET attempts = ?3, next_attempt_at = ?4, lease_until = NULL, \
                 lease_owner = NULL, last_error = ?5 WHERE ",
                held!()
            ))?
            .execute(params![
                claim.outbox_id,
                claim.lease_token,
                attempt,
                at_ms,
                error
            ])?,
            Some(("retry", Some(error.as_str()), *duration_ms)),
        ),
        Settlement::Dead {
            reason,
            error,
            duration_ms,
        } => (
            c.prepare_cached(concat!(
                "UPDATE outbox SET status = 'dead', attempts = ?3, lease_until = NULL, \
                 lease_owner = NULL, last_error = ?4, failure_class = ?5, reason = ?6, \
                 dead_at = ?7 WHERE ",
                held!()
            ))?
            .execute(params![
                claim.outbox_id,
                claim.lease_token,
                attempt,
                error,
                reason.class(),
                reason.as_str(),
                now
            ])?,
            Some(("dead_lettered", Some(error.as_str()), *duration_ms)),
        ),
        Settlement::Release { at_ms } => (
            c.prepare_cached(concat!(
                "UPDATE outbox SET next_attempt_at = ?3, lease_until = NULL, lease_owner = NULL \
                 WHERE ",
                held!()
            ))?
            .execute(params![claim.outbox_id, claim.lease_token, at_ms])?,
            None,
        ),
    };
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
                // Ids come from the store's counter: the request path gives them out too.
                c.prepare_cached(
                    "INSERT INTO outbox (id, event_id, sink, route, session_id, status, \
                                         attempts, next_attempt_at, created_at, result, ordered, \
                                         late) \
                     VALUES (?7, ?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?6, \
                             coalesce((SELECT ordered FROM sink_settings WHERE sink = ?2), 0), 1)",
                )?
                .execute(params![
                    claim.event_id,
                    on_late,
                    claim.route,
                    claim.session_id,
                    now,
                    result,
                    ids.fetch_add(1, Ordering::SeqCst)
                ])?;
            }
        }
        if let Some((outcome, error, duration_ms)) = record {
            c.prepare_cached(
                "INSERT INTO delivery_attempts (outbox_id, attempt, at, outcome, error, duration_ms, replica) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                claim.outbox_id,
                attempt,
                now,
                outcome,
                error,
                i64::try_from(duration_ms).unwrap_or(i64::MAX),
                crate::replica_id()
            ])?;
        }
    }
    Ok(changed == 1)
}

/// `WHERE` clause and parameters selecting dead letters by a filter.
fn filter_sql(f: &DeadLetterFilter) -> (String, Vec<SqlValue>) {
    let mut sql = String::from("o.status = 'dead'");
    let mut p: Vec<SqlValue> = Vec::new();
    if !f.ids.is_empty() {
        sql.push_str(" AND o.id IN (");
        for (i, id) in f.ids.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('?');
            p.push(SqlValue::Integer(*id));
        }
        sql.push(')');
    }
    let mut text = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            sql.push_str(&format!(" AND o.{col} = ?"));
            p.push(SqlValue::Text(v.clone()));
        }
    };
    text("sink", &f.sink);
    text("route", &f.route);
    text("reason", &f.reason.map(|r| r.as_str().to_string()));
    if let Some(s) = f.since_ms {
        sql.push_str(" AND o.dead_at >= ?");
        p.push(SqlValue::Integer(s));
    }
    if let Some(u) = f.until_ms {
        sql.push_str(" AND o.dead_at < ?");
        p.push(SqlValue::Integer(u));
    }
    (sql, p)
}

pub(super) fn dead_letters(
    c: &Connection,
    f: &DeadLetterFilter,
    limit: usize,
) -> rusqlite::Result<(u64, Vec<DeadLetter>)> {
    let (cond, p) = filter_sql(f);
    let total: i64 = c.query_row(
        &format!("SELECT count(*) FROM outbox o WHERE {cond}"),
        params_from_iter(p.iter()),
        |r| r.get(0),
    )?;
    // An event without a row is kept beside the database (`beside`): its correlation id is
    // read from its record.
    let mut stmt = c.prepare(&format!(
        "SELECT o.id, o.event_id, e.correlation_id, o.sink, o.route, o.failure_class, o.reason, \
                o.attempts, o.last_error, o.dead_at \
         FROM outbox o LEFT JOIN events e ON e.rowid = {} AND e.event_id = o.event_id \
         WHERE {cond} ORDER BY o.dead_at DESC, o.id DESC LIMIT {}",
        event_row!("o.event_id"),
        limit.min(10_000)
    ))?;
    let items = stmt
        .query_map(params_from_iter(p.iter()), |r| {
            let event_id: String = r.get(1)?;
            let correlation_id = match r.get::<_, Option<String>>(2)? {
                Some(id) => id,
                None => super::beside::read_id(c, &event_id)?
                    .map(|a| a.correlation_id)
                    .unwrap_or_default(),
            };
            Ok(DeadLetter {
                id: r.get(0)?,
                event_id,
                correlation_id,
                sink: r.get(3)?,
                route: r.get(4)?,
                class: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                reason: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                attempts: r.get(7)?,
                last_error: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                dead_lettered_at: rfc3339_ms(r.get::<_, Option<i64>>(9)?.unwrap_or(0)),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((total.max(0) as u64, items))
}

/// The matching dead letters, with their attempts: what a replay or a purge then works
/// through by id ([`requeue`], [`delete_dead`]), a bounded number per projector job.
pub(super) fn dead_ids(c: &Connection, f: &DeadLetterFilter) -> rusqlite::Result<Vec<(i64, u32)>> {
    let (cond, p) = filter_sql(f);
    c.prepare(&format!(
        "SELECT o.id, o.attempts FROM outbox o WHERE {cond} ORDER BY o.id"
    ))?
    .query_map(params_from_iter(p.iter()), |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Counts the matching dead letters (a replay's dry run).
pub(super) fn count_dead(c: &Connection, f: &DeadLetterFilter) -> rusqlite::Result<u64> {
    let (cond, p) = filter_sql(f);
    let n: i64 = c.query_row(
        &format!("SELECT count(*) FROM outbox o WHERE {cond}"),
        params_from_iter(p.iter()),
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Re-queues the dead letters among `ids` (from [`dead_ids`]; a row no longer dead is left
/// alone); each replay is recorded in the attempt history. Returns how many.
pub(super) fn requeue(c: &Connection, now: i64, ids: &[(i64, u32)]) -> rusqlite::Result<u64> {
    let mut requeue = c.prepare_cached(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, \
         lease_until = NULL, lease_owner = NULL, failure_class = NULL, reason = NULL, \
         dead_at = NULL, replays = replays + 1 WHERE id = ?1 AND status = 'dead'",
    )?;
    let mut record = c.prepare_cached(
        "INSERT INTO delivery_attempts (outbox_id, attempt, at, outcome, error, duration_ms, replica) \
         VALUES (?1, ?2, ?3, 'replayed', NULL, NULL, ?4)",
    )?;
    let mut n = 0;
    for &(id, attempts) in ids {
        if requeue.execute(params![id, now])? == 1 {
            record.execute(params![id, attempts, now, crate::replica_id()])?;
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes the dead letters among `ids` (from [`dead_ids`]; a row no longer dead is left
/// alone) with their attempt records. Returns how many.
pub(super) fn delete_dead(c: &Connection, ids: &[(i64, u32)]) -> rusqlite::Result<u64> {
    keep_id_floor(c)?;
    let mut attempts = c.prepare_cached(
        "DELETE FROM delivery_attempts WHERE outbox_id = ?1 \
                          AND EXISTS (SELECT 1 FROM outbox WHERE id = ?1 AND status = 'dead')",
    )?;
    let mut row = c.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND status = 'dead'")?;
    let mut n = 0;
    for &(id, _) in ids {
        attempts.execute(params![id])?;
        n += row.execute(params![id])? as u64;
    }
    Ok(n)
}

pub(super) fn sink_counts(
    c: &Connection,
    now: i64,
    sinks: &[String],
) -> rusqlite::Result<Vec<SinkCounts>> {
    // count and min(id) come from the outbox_due index alone (the dead count from
    // outbox_dead); the oldest row is the one with the lowest id (ids and creation times rise
    // together: one writer stamps both), so only that row is read, however long the backlog.
    let mut pending = c.prepare_cached(
        "SELECT n, (SELECT created_at FROM outbox WHERE id = oldest) FROM \
           (SELECT count(*) AS n, min(id) AS oldest FROM outbox \
            WHERE sink = ?1 AND status = 'pending')",
    )?;
    let mut dead =
        c.prepare_cached("SELECT count(*) FROM outbox WHERE sink = ?1 AND status = 'dead'")?;
    let mut out = Vec::with_capacity(sinks.len());
    for s in sinks {
        let (n, oldest): (i64, Option<i64>) =
            pending.query_row(params![s], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let d: i64 = dead.query_row(params![s], |r| r.get(0))?;
        out.push(SinkCounts {
            sink: s.clone(),
            pending: n.max(0) as u64,
            oldest_pending_age_seconds: oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1000.0),
            dead_letters: d.max(0) as u64,
        });
    }
    Ok(out)
}

/// Every attempt of one outbox row, oldest first: the records in `delivery_attempts`, then
/// the delivered attempt kept in the row itself (schema 11; a row delivered before has its
/// record in the table and no `delivered_by`).
pub(super) fn attempts(c: &Connection, outbox_id: i64) -> rusqlite::Result<Vec<Attempt>> {
    c.prepare_cached(
        "SELECT attempt, at, outcome, error, duration_ms, replica FROM ( \
           SELECT id AS k, attempt, at, outcome, error, duration_ms, replica \
           FROM delivery_attempts WHERE outbox_id = ?1 \
           UNION ALL \
           SELECT 9223372036854775807, attempts, delivered_at, 'delivered', NULL, \
                  delivered_ms, delivered_by \
           FROM outbox WHERE id = ?1 AND status = 'delivered' AND delivered_by IS NOT NULL) \
         ORDER BY k",
    )?
    .query_map(params![outbox_id], |r| {
        Ok(Attempt {
            attempt: r.get(0)?,
            at: rfc3339_ms(r.get(1)?),
            outcome: r.get(2)?,
            error: r.get(3)?,
            duration_ms: r.get::<_, Option<i64>>(4)?.map(|d| d.max(0) as u64),
            replica: r.get(5)?,
        })
    })?
    .collect()
}

/// Replaces the answer duplicates of the event's request get (a `respond` route's upstream
/// answered in time): in the event's row (schema 9), or in `answers` for an event written
/// before (schema 8), where readers look after the row. An event kept beside the database
/// must have been given its row first (`beside::materialise`).
pub(super) fn set_event_answer(
    c: &Connection,
    event_id: &str,
    status: u16,
    body: &[u8],
) -> rusqlite::Result<()> {
    // An answer that comes after its event's session was forgotten (a `respond` upstream's,
    // in flight then) is kept emptied, as forgetting left the others.
    let emptied = forgotten_event(c, event_id)?
        .map(|(session_id, version)| Answer::forgotten(body, event_id, &session_id, version));
    let body = emptied.as_deref().unwrap_or(body);
    let in_row = c
        .prepare_cached(concat!(
            "UPDATE events SET answer = ?2, answer_status = ?3 WHERE rowid = ",
            event_row!("?1"),
            " AND event_id = ?1 AND answer IS NOT NULL"
        ))?
        .execute(params![event_id, body, status])?;
    if in_row == 0 {
        c.prepare_cached(
            "INSERT OR REPLACE INTO answers (event_id, body, status) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![event_id, body, status])?;
    }
    Ok(())
}

/// The session and version of an event whose session was forgotten after it was committed.
pub(super) fn forgotten_event(
    c: &Connection,
    event_id: &str,
) -> rusqlite::Result<Option<(String, u64)>> {
    c.prepare_cached(concat!(
        "SELECT e.session_id, e.state_version FROM events e \
         JOIN forgotten_sessions f ON f.session_id = e.session_id AND f.at >= e.committed_at \
         WHERE e.rowid = ",
        event_row!("?1"),
        " AND e.event_id = ?1"
    ))?
    .query_row(params![event_id], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })
    .optional()
}

/// [`set_event_answer`] for a key kept in the database (written before the keys moved to
/// `keys`); a key not there changes nothing.
pub(super) fn set_answer(
    c: &Connection,
    key: &str,
    status: u16,
    body: &[u8],
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO answers (event_id, body, status) \
         SELECT event_id, ?2, ?3 FROM idempotency WHERE key = ?1",
    )?
    .execute(params![key, body, status])?;
    Ok(())
}
