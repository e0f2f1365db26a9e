//! Events kept beside the database, without an events row (schema 17, issue 10; schema 19
//! for events with outbox rows): every event with no `respond` row held for its request
//! whose body would go beside the database (`Bodies::append`'s rule) is kept here
//! (`project`'s `put_beside`; `keep_beside`).
//!
//! # Why
//! An events row costs the projector ~9k instructions (its statement's binding, the seek from
//! the table's root, the record, the page's insert: 58 % of the projector's work, ~10 % of an
//! event's), and its ~400 bytes are written twice more, to the WAL and by the checkpointer
//! into the database file, in page-sized pieces that hold the core while they are copied
//! (bench/README.md, forty-third and fifty-second sessions). Without them (a throwaway that
//! wrote no events rows), p99 at saturation fell from about 2× the durable reference's to
//! about 1.5× (fifty-third session).
//!
//! # Layout
//! An event kept here has its whole log record (`AcceptRecord::encode_beside`: every column
//! of its row, the body and the answer; no idempotency key, no signature) appended to the
//! bodies' files (`bodies`, the same files, the same durability, retention and erasure), and
//! one row of `event_runs` names the places of a run of such events:
//!
//! ```text
//! event_runs (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, places BLOB NOT NULL,
//!             outbox_first INTEGER, outbox_last INTEGER)
//! places: for each event, ascending: its rowid (i64), its place in the files (i64) and its
//!         session's tag (u32, `session_tag`), little-endian, 20 bytes an event
//! outbox_first, outbox_last: the lowest and highest id of its events' outbox rows (schema
//!         19; NULL when they have none), which may cover other events' rows too
//! ```
//!
//! One run row is one insert for up to [`RUN_EVENTS`] events. Runs never overlap: each
//! run's `first` is above every earlier run's `last` (an event whose rowid is not gets an
//! events row instead), so the run that may hold a rowid is the one with the greatest
//! `first` at or below it.
//!
//! # One place for each event
//! An event is in exactly one place: its events row, or an entry of a run. An event that
//! must change (an answer replaced, kept past its file by retention, forgotten) is first
//! *taken* out of its run ([`take`]) and written as an events row from its record, in the
//! same transaction; readers look for the row first, then in the runs ([`read`]).
//!
//! # Who reads and changes them
//! - Journeys (`read_journey`) and the answers of duplicates (the sequencer's `read_answer`):
//!   the row first, then [`read_id`].
//! - Timelines (`read_timeline`), the audit's recovery (`committed_since`) and an attached
//!   reader's correlation scan: the rows and a [`scan`] of the runs, merged by rowid.
//! - Opening the store: the ids' floor is raised past the runs' last rowid too, and
//!   recovery writes the log's record as the row of an event whose record a power cut lost
//!   ([`keep_record`]).
//! - A replaced answer and a forget give the event its row first ([`materialise`]) and
//!   erase its record; retention drops expired entries and gives rows to those an answer
//!   keeps before their files go ([`prune`]).
//! - An event's outbox rows stay in the `outbox` table, written with it (`write_rows`);
//!   an event's own rows never come later. A claim (`outbox::claims`) reads the event here
//!   when it has no row, and so do `EVENT_ROWS`'s callers (the bounds of its rows from its
//!   record) and the dead letters' list (its correlation id). Retention ([`prune`]) finds the
//!   rows of the events it drops through its run's span: it deletes the delivered ones of
//!   expired events and gives a row to every event that still has one.
//! - An event with a `respond` row keeps its row: its answer is replaced when the upstream
//!   answers and a late row may be added for it (`late`, which the events' retention joins).
//!
//! # What is left
//! - Natively, the saving is within this host's noise so far: under callgrind the
//!   projector's instructions per request fell 15,653 → 8,382 (all 94,181 → 86,869,
//!   −7.8 %); alternating runs at saturation did not tell the two apart (bench/README.md,
//!   fifty-third session).
//! - Events with a `respond` row keep their rows (above).
//! - `insert_event`'s check that an id is not stored twice does not look in the runs (a
//!   record is applied once: the positions commit with the rows).
//! - Most of this crate's unit tests read the events table directly, so their stores write
//!   rows unless a test asks (`KEEP_BESIDE`); the integration tests read `all_events` and
//!   run the gateway's setting.

use rusqlite::{params, Connection, OptionalExtension};

use std::sync::Arc;

use rusqlite::functions::FunctionFlags;

use super::bodies::Reader;
use super::record::{AcceptRecord, Record};

/// A run row names at most this many events.
pub(super) const RUN_EVENTS: usize = 64;

/// One event of a run: its rowid, its record's place in the bodies' files, and its session's
/// tag ([`session_tag`]), so that a session's events are found without reading the others'
/// records (a false match is read and dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) row: i64,
    pub(super) at: i64,
    pub(super) session: u32,
}

/// The tag of a session id in a run's entries: its CRC-32.
pub(super) fn session_tag(session_id: &str) -> u32 {
    crc32fast::hash(session_id.as_bytes())
}

/// Bytes an event takes in `places`: rowid (i64), place (i64), session tag (u32),
/// little-endian.
const ENTRY: usize = 20;

fn entry_at(places: &[u8], i: usize) -> Entry {
    let e = &places[i * ENTRY..(i + 1) * ENTRY];
    Entry {
        row: i64::from_le_bytes(e[..8].try_into().expect("8 bytes")),
        at: i64::from_le_bytes(e[8..16].try_into().expect("8 bytes")),
        session: u32::from_le_bytes(e[16..].try_into().expect("4 bytes")),
    }
}

/// `entries`, ascending by rowid, as `places`.
fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.row.to_le_bytes());
        out.extend_from_slice(&e.at.to_le_bytes());
        out.extend_from_slice(&e.session.to_le_bytes());
    }
    out
}

/// The entries of `places`, or `None` when its length is not a whole number of entries.
pub(super) fn decode(places: &[u8]) -> Option<Vec<Entry>> {
    if !places.len().is_multiple_of(ENTRY) {
        return None;
    }
    Some(
        (0..places.len() / ENTRY)
            .map(|i| entry_at(places, i))
            .collect(),
    )
}

fn damaged_run(first: i64) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        2,
        rusqlite::types::Type::Blob,
        format!("event_runs row {first}: places are not whole entries").into(),
    )
}

/// The last rowid of the runs (0 when there is none): a new run must start above it.
pub(super) fn last(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT last FROM event_runs ORDER BY first DESC LIMIT 1")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

/// The lowest and highest outbox row id of a run's events (schema 19), `None` when none of
/// them has an outbox row. It may cover rows of other events too (ids are given out in
/// commit order, and events between a run's may have rows of their own): readers check
/// each row's event id.
pub(super) type Span = Option<(i64, i64)>;

/// `span` widened to cover `ids`.
pub(super) fn widen(span: Span, ids: impl Iterator<Item = i64>) -> Span {
    ids.fold(span, |s, id| match s {
        None => Some((id, id)),
        Some((lo, hi)) => Some((lo.min(id), hi.max(id))),
    })
}

/// Writes a run of `entries`, ascending, each rowid above [`last`], whose events' outbox
/// rows are within `span`.
pub(super) fn write_run(conn: &Connection, entries: &[Entry], span: Span) -> rusqlite::Result<()> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    debug_assert!(entries.windows(2).all(|w| w[0].row < w[1].row));
    conn.prepare_cached(
        "INSERT INTO event_runs (first, last, places, outbox_first, outbox_last) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        first.row,
        last.row,
        encode(entries),
        span.map(|s| s.0),
        span.map(|s| s.1)
    ])?;
    Ok(())
}

/// A run as its row holds it: `first`, its entries and its outbox rows' span.
type Run = (i64, Vec<Entry>, Span);

/// The span of a run row's `outbox_first` and `outbox_last` (columns `i` and `i + 1`).
fn span_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Span> {
    Ok(
        match (r.get::<_, Option<i64>>(i)?, r.get::<_, Option<i64>>(i + 1)?) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        },
    )
}

/// The run that may hold `row`.
fn run_of(conn: &Connection, row: i64) -> rusqlite::Result<Option<Run>> {
    let found: Option<(i64, i64, Vec<u8>, Span)> = conn
        .prepare_cached(
            "SELECT first, last, places, outbox_first, outbox_last FROM event_runs \
             WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
        )?
        .query_row([row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, span_at(r, 3)?))
        })
        .optional()?;
    match found {
        Some((first, last, places, span)) if last >= row => {
            let entries = decode(&places).ok_or_else(|| damaged_run(first))?;
            Ok(Some((first, entries, span)))
        }
        _ => Ok(None),
    }
}

/// The place of `row` among the entries of `places` (a run's), if it is one of them.
pub(super) fn place_in(places: &[u8], row: i64) -> Option<i64> {
    let (mut lo, mut hi) = (0, places.len() / ENTRY);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = entry_at(places, mid);
        match e.row.cmp(&row) {
            std::cmp::Ordering::Equal => return Some(e.at),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

/// The record of the event of `?1` (its rowid) if a run holds it, else NULL: the run with
/// the greatest `first` at or below it is the only one that may (`beside_record(places,
/// row)`, a function of every connection that reads bodies: `add_functions`).
const RECORD_OF: &str = "SELECT CASE WHEN last >= ?1 THEN beside_record(places, ?1) END \
     FROM (SELECT last, places FROM event_runs WHERE first <= ?1 ORDER BY first DESC LIMIT 1)";

/// The event of `row`, if a run holds it (read through `conn`'s `beside_record`).
pub(super) fn read(conn: &Connection, row: i64) -> rusqlite::Result<Option<AcceptRecord>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(RECORD_OF)?
        .query_row([row], |r| r.get(0))
        .optional()?
        .flatten();
    bytes.map(|b| decode_event(&b)).transpose()
}

/// The event of `id` if a run holds it: by its rowid (an id's number, `event_id::row_of`),
/// and only if the record there is that event's.
pub(super) fn read_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<AcceptRecord>> {
    let Some(row) = crate::event_id::row_of(id) else {
        return Ok(None);
    };
    Ok(read(conn, row)?.filter(|a| a.event_id == id))
}

/// An event's record as `beside_record` gives it.
pub(super) fn decode_event(bytes: &[u8]) -> rusqlite::Result<AcceptRecord> {
    let not_an_event = |why: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, why)
    };
    match Record::decode(bytes) {
        Ok(Record::Accept(a)) => Ok(*a),
        Ok(_) => Err(not_an_event(
            "an event's record beside the database holds another kind of record".into(),
        )),
        Err(e) => Err(not_an_event(
            format!("an event's record beside the database: {e}").into(),
        )),
    }
}

/// Registers on `conn`, reading through `reader`:
/// - `beside_record(places, row)`: the record of the event of `row` from the bodies' files
///   when `places` (a run's) names it, else NULL; an error when its record cannot be read
///   (see `bodies::Reader::read`);
/// - `beside_rows(places)`: the rowids a run names, as a JSON array (for `json_each`);
/// - `beside_field(places, row, column)`: one column of that event as its events row would
///   hold it (the last record read is kept, so a row's columns read it once).
///
/// The last two make the view `all_events` ([`VIEW`]): tools and tests read every event
/// there, rows and runs alike.
pub(super) fn add_function(conn: &Connection, reader: Arc<Reader>) -> rusqlite::Result<()> {
    let record = move |places: &[u8], row: i64| -> rusqlite::Result<Option<Vec<u8>>> {
        if !places.len().is_multiple_of(ENTRY) {
            return Err(rusqlite::Error::UserFunctionError(
                format!("event_runs: the run of row {row} is not whole entries").into(),
            ));
        }
        match place_in(places, row) {
            None => Ok(None),
            Some(at) => reader
                .read(at, row)
                .map(Some)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e))),
        }
    };
    let read = record.clone();
    conn.create_scalar_function(
        "beside_record",
        2,
        FunctionFlags::SQLITE_UTF8,
        move |ctx| -> rusqlite::Result<Option<Vec<u8>>> {
            read(ctx.get_raw(0).as_blob().unwrap_or(&[]), ctx.get(1)?)
        },
    )?;
    conn.create_scalar_function(
        "beside_rows",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| -> rusqlite::Result<String> {
            let places = ctx.get_raw(0).as_blob().unwrap_or(&[]);
            let rows: Vec<String> = decode(places)
                .unwrap_or_default()
                .iter()
                .map(|e| e.row.to_string())
                .collect();
            Ok(format!("[{}]", rows.join(",")))
        },
    )?;
    let last: parking_lot::Mutex<Option<(i64, AcceptRecord)>> = parking_lot::Mutex::new(None);
    conn.create_scalar_function(
        "beside_field",
        3,
        FunctionFlags::SQLITE_UTF8,
        move |ctx| -> rusqlite::Result<rusqlite::types::Value> {
            use rusqlite::types::Value;
            let row: i64 = ctx.get(1)?;
            let column: String = ctx.get(2)?;
            let mut last = last.lock();
            if last.as_ref().is_none_or(|(r, _)| *r != row) {
                let bytes = record(ctx.get_raw(0).as_blob().unwrap_or(&[]), row)?;
                *last = bytes
                    .map(|b| decode_event(&b))
                    .transpose()?
                    .map(|a| (row, a));
            }
            let Some((_, a)) = last.as_ref() else {
                return Ok(Value::Null);
            };
            Ok(match column.as_str() {
                "event_id" => Value::Text(a.event_id.clone()),
                "correlation_id" => Value::Text(a.correlation_id.clone()),
                "route" => Value::Text(a.route.clone()),
                "session_id" => Value::Text(a.session_id.clone()),
                "event_type" => Value::Text(a.event_type.clone()),
                "state_version" => Value::Integer(a.state_version as i64),
                "simulated" => Value::Integer(i64::from(a.simulated)),
                "received_at" => Value::Text(a.received_at.clone()),
                "committed_at" => Value::Integer(a.at),
                "body" => Value::Text(a.body.clone()),
                "answer" => Value::Blob(a.answer.to_vec()),
                "answer_status" => Value::Integer(i64::from(a.status)),
                other => {
                    return Err(rusqlite::Error::UserFunctionError(
                        format!("beside_field: no column {other}").into(),
                    ))
                }
            })
        },
    )
}

/// Every event, its row's or kept beside the database, with the events row's columns
/// (`row` its rowid, `body` its body wherever it is): for tools and tests, not the store's
/// own reads (each event beside is read from its file).
pub(super) const VIEW: &str = "CREATE TEMP VIEW IF NOT EXISTS all_events AS \
    SELECT rowid AS row, event_id, correlation_id, route, session_id, event_type, \
           state_version, simulated, received_at, committed_at, \
           event_body(body, body_at, rowid) AS body, answer, answer_status \
    FROM events \
    UNION ALL \
    SELECT j.value, beside_field(r.places, j.value, 'event_id'), \
           beside_field(r.places, j.value, 'correlation_id'), \
           beside_field(r.places, j.value, 'route'), \
           beside_field(r.places, j.value, 'session_id'), \
           beside_field(r.places, j.value, 'event_type'), \
           beside_field(r.places, j.value, 'state_version'), \
           beside_field(r.places, j.value, 'simulated'), \
           beside_field(r.places, j.value, 'received_at'), \
           beside_field(r.places, j.value, 'committed_at'), \
           beside_field(r.places, j.value, 'body'), \
           beside_field(r.places, j.value, 'answer'), \
           beside_field(r.places, j.value, 'answer_status') \
    FROM event_runs r, json_each(beside_rows(r.places)) j";

/// Takes the event of `row` out of its run (the run row rewritten without it, or deleted
/// when it was the last), and says where its record is: the caller writes its events row
/// in the same transaction.
pub(super) fn take(conn: &Connection, row: i64) -> rusqlite::Result<Option<i64>> {
    let Some((first, mut entries, span)) = run_of(conn, row)? else {
        return Ok(None);
    };
    let Ok(i) = entries.binary_search_by_key(&row, |e| e.row) else {
        return Ok(None);
    };
    let Entry { at, .. } = entries.remove(i);
    conn.prepare_cached("DELETE FROM event_runs WHERE first = ?1")?
        .execute([first])?;
    write_run(conn, &entries, span)?;
    Ok(Some(at))
}

/// The newest `limit` events of `session_id` kept here, newest first, with their rowids:
/// the runs read from the newest back, an entry's record read only when its session tag is
/// the session's. Like the events table without an index by session, a session whose
/// events are all old is found after every newer run is read (their places, not their
/// records).
pub(super) fn session_events(
    conn: &Connection,
    session_id: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, AcceptRecord)>> {
    session_events_where(conn, session_id, limit, |_| true)
}

/// [`session_events`], of those for which `keep` is true.
pub(super) fn session_events_where(
    conn: &Connection,
    session_id: &str,
    limit: usize,
    keep: impl Fn(&AcceptRecord) -> bool,
) -> rusqlite::Result<Vec<(i64, AcceptRecord)>> {
    let tag = session_tag(session_id);
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    let runs = "SELECT first, places FROM event_runs ORDER BY first DESC";
    scan(
        conn,
        runs,
        [],
        |e| e.session == tag,
        |row, a| {
            if a.session_id == session_id && keep(&a) {
                found.push((row, a));
            }
            found.len() < limit
        },
    )?;
    Ok(found)
}

/// Reads the runs `runs_sql` gives (`first`, `places`; its parameters `params`) in its
/// order, and in that order within each run (rowids descending when the runs are), the
/// record of each entry `wanted` lets through, handed to `visit` with its rowid until it
/// returns false.
fn scan(
    conn: &Connection,
    runs_sql: &str,
    params: impl rusqlite::Params,
    wanted: impl Fn(&Entry) -> bool,
    mut visit: impl FnMut(i64, AcceptRecord) -> bool,
) -> rusqlite::Result<()> {
    let newest_first = runs_sql.contains("DESC");
    let mut runs = conn.prepare_cached(runs_sql)?;
    let mut record = conn.prepare_cached("SELECT beside_record(?1, ?2)")?;
    let mut rows = runs.query(params)?;
    while let Some(r) = rows.next()? {
        let places: Vec<u8> = r.get(1)?;
        let mut entries = decode(&places).ok_or_else(|| damaged_run(r.get(0).unwrap_or(0)))?;
        if newest_first {
            entries.reverse();
        }
        for e in entries.iter().filter(|e| wanted(e)) {
            let bytes: Option<Vec<u8>> = record.query_row(params![places, e.row], |r| r.get(0))?;
            let Some(a) = bytes.map(|b| decode_event(&b)).transpose()? else {
                continue;
            };
            if !visit(e.row, a) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The events kept here from rowid `from_row` on committed at `since_ms` (Unix ms) or
/// later, in rowid order, at most `limit` (the audit's recovery: `committed_since`). Every
/// record from there on is read: a recovery reads the few seconds since the audit's mark.
pub(super) fn committed_since(
    conn: &Connection,
    from_row: i64,
    since_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<AcceptRecord>> {
    let runs = "SELECT first, places FROM event_runs WHERE first >= coalesce((SELECT first \
           FROM event_runs WHERE first <= ?1 ORDER BY first DESC LIMIT 1), ?1) \
         ORDER BY first";
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    scan(
        conn,
        runs,
        [from_row],
        |e| e.row >= from_row,
        |_, a| {
            if a.at >= since_ms {
                found.push(a);
            }
            found.len() < limit
        },
    )?;
    Ok(found)
}

/// The newest event kept here whose correlation id is `id`, with its rowid: every record
/// read, newest first (the fallback of an attached reader whose correlation index cannot
/// say: `scan_correlation`).
pub(super) fn newest_of_correlation(
    conn: &Connection,
    id: &str,
) -> rusqlite::Result<Option<(i64, String)>> {
    let runs = "SELECT first, places FROM event_runs ORDER BY first DESC";
    let mut found = None;
    scan(
        conn,
        runs,
        [],
        |_| true,
        |row, a| {
            if a.correlation_id == id {
                found = Some((row, a.event_id));
            }
            found.is_none()
        },
    )?;
    Ok(found)
}

/// Retention's pass over the runs (`project::maintain`), in its transaction: of the runs
/// that begin before `kept_until` (a rowid; at most `max_runs` of them), the events before
/// `expired` go, with their delivered outbox rows and those rows' attempts, unless an
/// outbox row of theirs is left (pending, or a dead letter); those, and the events from
/// `expired` to before `kept_until`, get rows, since the files their records are in may go
/// once the pass's cycle ends (they stay for the answer of a key still in its window, or
/// for their rows). Returns whether runs beginning before `kept_until` are left for
/// another pass.
pub(super) fn prune(
    conn: &Connection,
    expired: i64,
    kept_until: i64,
    max_runs: usize,
) -> rusqlite::Result<bool> {
    let runs: Vec<(i64, Vec<u8>, Span)> = conn
        .prepare_cached(
            "SELECT first, places, outbox_first, outbox_last FROM event_runs WHERE first < ?1 \
             ORDER BY first LIMIT ?2",
        )?
        .query_map(params![kept_until, max_runs as i64 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?, span_at(r, 2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let more = runs.len() > max_runs;
    for (first, places, span) in runs.into_iter().take(max_runs) {
        let entries = decode(&places).ok_or_else(|| damaged_run(first))?;
        conn.prepare_cached("DELETE FROM event_runs WHERE first = ?1")?
            .execute([first])?;
        let with_rows = match span {
            Some((lo, hi)) => expire_rows(conn, lo, hi, expired)?,
            None => std::collections::HashSet::new(),
        };
        let (kept, rest): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .filter(|e| e.row >= expired || with_rows.contains(&e.row))
            .partition(|e| e.row < kept_until);
        // The kept ones go through a run of their own, so that `materialise_row` finds them.
        write_run(conn, &kept, span)?;
        for e in &kept {
            materialise_row(conn, e.row)?;
        }
        write_run(conn, &rest, span)?;
    }
    Ok(more)
}

/// Deletes the delivered outbox rows with ids `lo..=hi` (a run's span) of the events before
/// rowid `expired`, with their attempts; returns the rowids of the events that still have a
/// row there. (Late rows, `respond`'s, belong to events that keep their events rows:
/// `project::put_beside`.)
fn expire_rows(
    conn: &Connection,
    lo: i64,
    hi: i64,
    expired: i64,
) -> rusqlite::Result<std::collections::HashSet<i64>> {
    let rows: Vec<(i64, String, bool)> = conn
        .prepare_cached(
            "SELECT id, event_id, status = 'delivered' FROM outbox WHERE id BETWEEN ?1 AND ?2",
        )?
        .query_map(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut left = std::collections::HashSet::new();
    let mut floor_kept = false;
    for (id, event_id, delivered) in rows {
        let Some(row) = crate::event_id::row_of(&event_id) else {
            continue;
        };
        if !(delivered && row < expired) {
            left.insert(row);
            continue;
        }
        if !floor_kept {
            super::outbox::keep_id_floor(conn)?;
            floor_kept = true;
        }
        conn.prepare_cached("DELETE FROM delivery_attempts WHERE outbox_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(left)
}

/// Writes the event of `id`, if a run holds it, as an events row (see [`materialise_row`]).
pub(super) fn materialise(conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    match (crate::event_id::row_of(id), read_id(conn, id)?) {
        (Some(row), Some(a)) => give_row(conn, row, &a),
        _ => Ok(None),
    }
}

/// Writes the event of `row`, if a run holds it, as an events row (its body in the row) and
/// takes it out of its run, in the caller's transaction: what must change an event kept
/// here (its answer replaced, its session forgotten) changes the row. Returns the record's
/// place, whose bytes stay in their file, named by nothing, until retention removes the
/// file (a forget erases them).
pub(super) fn materialise_row(conn: &Connection, row: i64) -> rusqlite::Result<Option<i64>> {
    match read(conn, row)? {
        Some(a) => give_row(conn, row, &a),
        None => Ok(None),
    }
}

/// Takes the event of `row` (read as `a`) out of its run and writes `a` as its row; the
/// record's place, or `None` when no run held it.
fn give_row(conn: &Connection, row: i64, a: &AcceptRecord) -> rusqlite::Result<Option<i64>> {
    let Some(at) = take(conn, row)? else {
        return Ok(None);
    };
    insert_row(conn, row, a)?;
    Ok(Some(at))
}

/// Writes `a` as the events row `row`, its body in the row.
fn insert_row(conn: &Connection, row: i64, a: &AcceptRecord) -> rusqlite::Result<()> {
    let (first, last) = super::outbox::rows_between(a);
    conn.prepare_cached(
        "INSERT INTO events (rowid, event_id, correlation_id, route, session_id, event_type, \
                             state_version, simulated, received_at, committed_at, body, \
                             answer, answer_status, outbox_first, outbox_last) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        row,
        a.event_id,
        a.correlation_id,
        a.route,
        a.session_id,
        a.event_type,
        a.state_version as i64,
        a.simulated,
        a.received_at,
        a.at,
        a.body,
        &a.answer[..],
        a.status,
        first,
        last
    ])?;
    Ok(())
}

/// Recovery's check of an event the log still holds (`project::keep_body`): if a run names
/// it but its record there is lost or damaged (a power cut before the checkpointer flushed
/// the files), the log's record `a` becomes its events row. Returns whether it did.
pub(super) fn keep_record(
    conn: &Connection,
    bodies: &super::bodies::Bodies,
    a: &AcceptRecord,
) -> rusqlite::Result<bool> {
    let Some(row) = crate::event_id::row_of(&a.event_id) else {
        return Ok(false);
    };
    let Some((_, entries, _)) = run_of(conn, row)? else {
        return Ok(false);
    };
    let Ok(i) = entries.binary_search_by_key(&row, |e| e.row) else {
        return Ok(false);
    };
    let intact = bodies
        .read(entries[i].at, row)
        .ok()
        .and_then(|b| decode_event(&b).ok())
        .is_some_and(|r| r.event_id == a.event_id && r.body == a.body);
    if intact {
        return Ok(false);
    }
    take(conn, row)?;
    insert_row(conn, row, a)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of session tag 7 at the given (rowid, place) pairs.
    fn entries(pairs: &[(i64, i64)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|&(row, at)| Entry {
                row,
                at,
                session: 7,
            })
            .collect()
    }

    fn database() -> Connection {
        super::super::raw::tests::database()
    }

    /// Where a run says `row` is, through `run_of` and `place_in`.
    fn place_of(conn: &Connection, row: i64) -> rusqlite::Result<Option<i64>> {
        Ok(run_of(conn, row)?.and_then(|(_, entries, _)| place_in(&encode(&entries), row)))
    }

    #[test]
    fn places_round_trip_and_a_torn_blob_is_refused() {
        let mut entries = entries(&[(5, 1 << 40), (9, (1 << 40) + 700), (i64::MAX, -1)]);
        entries[1].session = u32::MAX;
        assert_eq!(decode(&encode(&entries)), Some(entries));
        assert_eq!(decode(&[0u8; 21]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }

    #[test]
    fn a_rowid_is_found_in_the_run_that_holds_it_and_nowhere_else() {
        let conn = database();
        assert_eq!(last(&conn).expect("last"), 0);
        write_run(&conn, &entries(&[(10, 100), (12, 120), (15, 150)]), None).expect("run");
        write_run(&conn, &entries(&[(20, 200), (30, 300)]), None).expect("run");
        assert_eq!(last(&conn).expect("last"), 30);
        for (row, at) in [(10, Some(100)), (12, Some(120)), (15, Some(150))] {
            assert_eq!(place_of(&conn, row).expect("read"), at, "row {row}");
        }
        assert_eq!(place_of(&conn, 30).expect("read"), Some(300));
        // Before every run, a hole inside one, between two runs, after the last.
        for row in [1, 11, 16, 25, 31] {
            assert_eq!(place_of(&conn, row).expect("read"), None, "row {row}");
        }
    }

    #[test]
    fn taking_an_event_leaves_the_rest_of_its_run_and_the_last_one_takes_the_run() {
        let conn = database();
        write_run(&conn, &entries(&[(10, 100), (12, 120), (15, 150)]), None).expect("run");
        write_run(&conn, &entries(&[(20, 200)]), None).expect("run");
        assert_eq!(take(&conn, 12).expect("take"), Some(120));
        assert_eq!(take(&conn, 12).expect("again"), None);
        assert_eq!(place_of(&conn, 10).expect("read"), Some(100));
        assert_eq!(place_of(&conn, 15).expect("read"), Some(150));
        // The first one: the run's row starts at the next.
        assert_eq!(take(&conn, 10).expect("take"), Some(100));
        assert_eq!(place_of(&conn, 15).expect("read"), Some(150));
        assert_eq!(take(&conn, 20).expect("take"), Some(200));
        let runs: i64 = conn
            .query_row("SELECT count(*) FROM event_runs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(runs, 1, "the emptied run is gone");
        assert_eq!(last(&conn).expect("last"), 15);
    }

    #[test]
    fn a_run_row_whose_places_are_torn_is_an_error_not_a_miss() {
        let conn = database();
        conn.execute(
            "INSERT INTO event_runs (first, last, places) VALUES (1, 3, x'0102')",
            [],
        )
        .expect("row");
        assert!(place_of(&conn, 2).is_err());
    }

    /// A store's database on disk (its connections read the bodies' files), with the
    /// projector's statements keeping events beside it.
    fn store() -> (
        tempfile::TempDir,
        Connection,
        Arc<super::super::bodies::Bodies>,
    ) {
        use crate::config::SyncMode;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("store.db");
        let mut conn =
            super::super::open_connection(&path, SyncMode::Normal, false, 1024).expect("open");
        super::super::migrate(&mut conn, 0).expect("schema");
        let bodies =
            Arc::new(super::super::bodies::Bodies::open(&path, 86_400_000).expect("bodies"));
        (dir, conn, bodies)
    }

    fn written(conn: &Connection) -> Vec<String> {
        super::super::raw::tests::texts(conn, "SELECT event_id FROM events ORDER BY rowid")
    }

    #[test]
    fn events_without_a_held_row_are_kept_beside_and_read_back_whole() {
        use super::super::project::{apply_accepts_for_tests, Statements};
        let (_dir, conn, bodies) = store();
        let ids: Vec<String> = (0..RUN_EVENTS + 20)
            .map(|_| crate::event_id::new_event_id())
            .collect();
        // Every seventh has a `respond` row held for its request: it gets an events row.
        // Every fifth of the others has an outbox row of its own (id 1000 + i): it is kept
        // beside like those without one, its run naming its row.
        let records: Vec<AcceptRecord> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let rows: &[i64] = if i % 7 == 3 || i % 5 == 1 {
                    &[1000 + i as i64]
                } else {
                    &[]
                };
                let mut r = super::super::raw::tests::record(id, rows);
                if i % 7 == 3 {
                    r.rows[0].held = Some(super::super::record::Held {
                        lease_until: 5,
                        token: "t".into(),
                        respond_to: String::new(),
                    });
                }
                r.spend = Some(super::super::record::Spend {
                    route: "r".into(),
                    mac: vec![1, 2],
                    expires_at: 9,
                });
                r
            })
            .collect();
        let mut st = Statements::new(&conn);
        st.bodies = Some(bodies.clone());
        st.beside = true;
        apply_accepts_for_tests(&mut st, &records).expect("applied");
        drop(st);
        bodies.write_out().expect("written out");
        bodies.committed();
        let with_rows: Vec<String> = ids.iter().skip(3).step_by(7).cloned().collect();
        assert_eq!(
            written(&conn),
            with_rows,
            "only the events with a held row have rows"
        );
        let beside = ids.len() - with_rows.len();
        assert!(beside > RUN_EVENTS);
        // Each run's span covers its events' own rows: the first run's events are the first
        // RUN_EVENTS of those beside.
        let beside_at: Vec<usize> = (0..ids.len()).filter(|i| i % 7 != 3).collect();
        let spans: Vec<(i64, i64)> = beside_at
            .chunks(RUN_EVENTS)
            .map(|c| {
                let own: Vec<i64> = c
                    .iter()
                    .filter(|&&i| i % 5 == 1)
                    .map(|&i| 1000 + i as i64)
                    .collect();
                (own[0], own[own.len() - 1])
            })
            .collect();
        let runs: Vec<(i64, i64)> = conn
            .prepare("SELECT outbox_first, outbox_last FROM event_runs ORDER BY first")
            .expect("runs")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("runs")
            .collect::<rusqlite::Result<_>>()
            .expect("runs");
        assert_eq!(runs, spans, "{beside} events beside, {RUN_EVENTS} to a run");
        for (id, r) in ids.iter().zip(&records) {
            let found = read_id(&conn, id).expect("read");
            if with_rows.contains(id) {
                assert_eq!(found, None, "{id} has its row");
                continue;
            }
            let expected = AcceptRecord {
                key: String::new(),
                spend: None,
                ..r.clone()
            };
            assert_eq!(
                found,
                Some(expected),
                "{id}: every field but the key and signature"
            );
        }
        // Another id at the same number is not that event.
        let twin = format!("{}{}", &ids[0][..13], "Z".repeat(13));
        assert_eq!(read_id(&conn, &twin).expect("read"), None);
        // A later run starts above the last: an event whose number is not goes to a row.
        let mut st = Statements::new(&conn);
        st.bodies = Some(bodies.clone());
        st.beside = true;
        let earlier = ulid::Ulid::from_string(&ids[0])
            .expect("a ULID")
            .timestamp_ms()
            - 1;
        let late_id = ulid::Ulid::from_parts(earlier, 7).to_string();
        let late = super::super::raw::tests::record(&late_id, &[]);
        apply_accepts_for_tests(&mut st, &[late]).expect("applied");
        drop(st);
        assert!(written(&conn).contains(&late_id), "below the runs: a row");
    }

    #[test]
    fn a_journey_and_an_answer_replaced_find_an_event_kept_beside() {
        use super::super::project::{apply_accepts_for_tests, Statements};
        let (_dir, conn, bodies) = store();
        let id = crate::event_id::new_event_id();
        let mut st = Statements::new(&conn);
        st.bodies = Some(bodies.clone());
        st.beside = true;
        apply_accepts_for_tests(&mut st, &[super::super::raw::tests::record(&id, &[])])
            .expect("applied");
        drop(st);
        bodies.write_out().expect("written out");
        assert!(written(&conn).is_empty(), "kept beside");
        let journey = super::super::read_journey(&conn, &id)
            .expect("read")
            .expect("found");
        assert_eq!(journey.event["eventId"], id.as_str());
        assert_eq!(
            journey.committed_at,
            super::super::outbox::rfc3339_ms(1_700_000_000_123)
        );
        assert!(journey.deliveries.is_empty());
        // A `respond` upstream's answer: the event gets its row, with the answer there.
        let place = materialise(&conn, &id).expect("row").expect("was beside");
        assert_eq!(materialise(&conn, &id).expect("again"), None);
        let row = crate::event_id::row_of(&id).expect("a ULID");
        assert_eq!(
            place,
            bodies
                .read(place, row)
                .map(|_| place)
                .expect("still readable")
        );
        super::super::outbox::set_event_answer(&conn, &id, 200, b"{\"late\":1}").expect("set");
        assert_eq!(written(&conn), std::slice::from_ref(&id));
        assert_eq!(read_id(&conn, &id).expect("read"), None, "out of its run");
        let (status, answer, body): (i64, Vec<u8>, String) = conn
            .query_row(
                "SELECT answer_status, answer, event_body(body, body_at, rowid) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("row");
        assert_eq!((status, answer.as_slice()), (200, &b"{\"late\":1}"[..]));
        assert!(
            body.starts_with(&format!("{{\"eventId\":\"{id}\"")),
            "{body}"
        );
        let journey = super::super::read_journey(&conn, &id)
            .expect("read")
            .expect("found");
        assert_eq!(journey.event["eventId"], id.as_str(), "from its row now");
    }

    #[test]
    fn pruning_drops_the_expired_gives_the_kept_rows_and_leaves_the_rest_in_runs() {
        use super::super::project::{apply_accepts_for_tests, Statements};
        let (_dir, conn, bodies) = store();
        let ids: Vec<String> = (0..10).map(|_| crate::event_id::new_event_id()).collect();
        let records: Vec<AcceptRecord> = ids
            .iter()
            .map(|id| super::super::raw::tests::record(id, &[]))
            .collect();
        let mut st = Statements::new(&conn);
        st.bodies = Some(bodies.clone());
        st.beside = true;
        // Two runs: the first five events, then the rest.
        apply_accepts_for_tests(&mut st, &records[..5]).expect("applied");
        apply_accepts_for_tests(&mut st, &records[5..]).expect("applied");
        drop(st);
        bodies.write_out().expect("written out");
        let row = |i: usize| crate::event_id::row_of(&ids[i]).expect("a ULID");
        // One run a pass: the first run's events before 3 go, 3 and 4 get rows.
        assert!(
            prune(&conn, row(3), row(7), 1).expect("pass"),
            "the second run is left"
        );
        assert_eq!(written(&conn), [ids[3].clone(), ids[4].clone()]);
        assert!(
            !prune(&conn, row(3), row(7), 1).expect("pass"),
            "none left before 7"
        );
        assert_eq!(
            written(&conn),
            [3, 4, 5, 6].map(|i| ids[i].clone()),
            "5 and 6 have rows now"
        );
        for (i, id) in ids.iter().enumerate() {
            let beside = read_id(&conn, id).expect("read").is_some();
            assert_eq!(beside, i >= 7, "event {i} beside");
        }
        assert_eq!(last(&conn).expect("last"), row(9));
    }
}
