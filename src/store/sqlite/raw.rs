//! The events row's insert through SQLite's C interface, binding the record's strings
//! without a copy (`SQLITE_STATIC`): rusqlite binds every text and blob as
//! `SQLITE_TRANSIENT`, so SQLite first copies each value into memory of its own before it
//! copies it again into the row it writes; for the event's body (a kilobyte or more) that is
//! a `malloc`, a copy and a `free` per row. Measured under callgrind (`bench/callgrind.sh`, 20 s, 16
//! connections): the projector's instructions per request 21,381 → 19,746 (−7.6 %), all
//! 105,135 → 103,499 (−1.6 %) (bench/README.md, thirty-eighth session). The other statements
//! stay on rusqlite: the outbox rows bound this way measured the same as through rusqlite
//! (projector 35,217 against 35,103 instructions per request with one sink; SQLite keeps a
//! short value's copy in a buffer it reuses), and the rest is rare.
//!
//! A run of events is written by statements of several rows (`insert_events`, up to
//! `project::EVENT_CHUNK`), prepared once for the projector's connection, as `INSERT OR
//! FAIL` (no statement journal): a statement's start and end are paid once per 16 rows.
//! Each row still searches its place from the root (SQLite's cursor forgets its position
//! after an insert). Measured: −0.5 % instructions per request (bench/README.md,
//! forty-first session).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};
use std::ptr;

use rusqlite::ffi;
use rusqlite::Connection;

use super::record::AcceptRecord;

/// A value to bind, borrowed for the one `Raw::execute` call that binds it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Text(&'a str),
    Blob(&'a [u8]),
    Int(i64),
    Null,
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int)
    }
}

/// A prepared statement on one connection, finalized when dropped; its lifetime ties it to
/// the connection. Only `execute` binds, and it resets the statement and clears the bindings
/// before it returns, so SQLite never holds a pointer into a value past the call that lent
/// it.
pub(super) struct Raw<'c> {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    /// Rows the last `execute` changed, a failed one included (see `insert_events`).
    changed: u64,
    _conn: std::marker::PhantomData<&'c Connection>,
}

impl<'c> Raw<'c> {
    pub(super) fn new(conn: &'c Connection, sql: &str) -> rusqlite::Result<Raw<'c>> {
        let len = c_int::try_from(sql.len()).map_err(|_| too_big())?;
        // SAFETY: the handle is the connection's own, used on this thread while `conn` is
        // borrowed (a `Raw` holds raw pointers, so it is neither `Send` nor `Sync`); the
        // statement is finalized in `drop`, before the borrow ends.
        unsafe {
            let db = conn.handle();
            let mut stmt = ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                ptr::null_mut(),
            );
            check(db, rc)?;
            if stmt.is_null() {
                // Only whitespace or a comment: nothing to run.
                return Err(rusqlite::Error::InvalidQuery);
            }
            Ok(Raw {
                stmt,
                db,
                changed: 0,
                _conn: std::marker::PhantomData,
            })
        }
    }

    /// Binds `values` to parameters 1, 2, … and runs the statement once, to its end (an
    /// `INSERT`, `UPDATE` or `DELETE`: rows it would return are not read).
    pub(super) fn execute(&mut self, values: &[Value<'_>]) -> rusqlite::Result<()> {
        self.run(values.iter().copied())
    }

    fn run<'v>(&mut self, values: impl Iterator<Item = Value<'v>>) -> rusqlite::Result<()> {
        let s = self.stmt;
        // SAFETY: `s` is this statement's, alive until `drop`. Every pointer bound is into a
        // value the caller lent for this call; the statement is reset and its bindings
        // cleared before the call returns, whatever happened, so none outlives the loan.
        unsafe {
            let mut rc = ffi::SQLITE_OK;
            for (i, v) in values.enumerate() {
                let Ok(i) = c_int::try_from(i + 1) else {
                    rc = ffi::SQLITE_RANGE;
                    break;
                };
                rc = bind(s, i, v);
                if rc != ffi::SQLITE_OK {
                    break;
                }
            }
            self.changed = 0;
            if rc == ffi::SQLITE_OK {
                rc = match ffi::sqlite3_step(s) {
                    ffi::SQLITE_DONE | ffi::SQLITE_ROW => ffi::SQLITE_OK,
                    e => e,
                };
                self.changed = u64::try_from(ffi::sqlite3_changes64(self.db)).unwrap_or(0);
            }
            // The error is read before the reset, which may leave the connection's error
            // state to another code.
            let outcome = check(self.db, rc);
            ffi::sqlite3_reset(s);
            ffi::sqlite3_clear_bindings(s);
            outcome
        }
    }
}

impl Drop for Raw<'_> {
    fn drop(&mut self) {
        // SAFETY: made by `sqlite3_prepare_v2` in `new`, finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

/// Binds one value without a copy (`SQLITE_STATIC`): the caller keeps it alive and
/// unchanged until the statement is reset or rebound.
unsafe fn bind(s: *mut ffi::sqlite3_stmt, i: c_int, v: Value<'_>) -> c_int {
    match v {
        Value::Text(t) => match c_int::try_from(t.len()) {
            Ok(len) => {
                ffi::sqlite3_bind_text(s, i, t.as_ptr().cast::<c_char>(), len, ffi::SQLITE_STATIC())
            }
            Err(_) => ffi::SQLITE_TOOBIG,
        },
        Value::Blob(b) => match c_int::try_from(b.len()) {
            Ok(len) => ffi::sqlite3_bind_blob(s, i, b.as_ptr().cast(), len, ffi::SQLITE_STATIC()),
            Err(_) => ffi::SQLITE_TOOBIG,
        },
        Value::Int(n) => ffi::sqlite3_bind_int64(s, i, n),
        Value::Null => ffi::sqlite3_bind_null(s, i),
    }
}

fn too_big() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
}

/// The connection's error for `rc` (none for `SQLITE_OK`), as rusqlite gives it.
unsafe fn check(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    // The connection's last error is this one only when its primary code is `rc`'s: a
    // code this module made itself (a value over `c_int`) never reached the connection,
    // whose message would then be an older error's.
    let extended = ffi::sqlite3_extended_errcode(db);
    if extended & 0xff != rc & 0xff {
        return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
    }
    let msg = ffi::sqlite3_errmsg(db);
    let msg = if msg.is_null() {
        None
    } else {
        Some(std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned())
    };
    Err(rusqlite::Error::SqliteFailure(
        ffi::Error::new(extended),
        msg,
    ))
}

/// The events row's columns, in the order `event_values` gives their values.
/// `OR FAIL`: a refused row ends the statement and keeps the rows before it, so a statement
/// of several rows needs no statement journal (with the default `ABORT` SQLite saves every
/// page the statement changes, to undo it: the table's last page, 16 KiB, per statement).
const EVENT_COLUMNS: &str =
    "INSERT OR FAIL INTO events (event_id, correlation_id, route, session_id, \
     event_type, state_version, simulated, received_at, committed_at, body, answer, \
     answer_status, outbox_first, outbox_last, rowid, body_at) VALUES ";

/// How many values an events row binds.
const EVENT_VALUES: usize = 16;

/// The insert of `rows` events rows in one statement (see `insert_events`).
pub(super) fn events_insert_sql(rows: usize) -> String {
    let one = format!("({})", vec!["?"; EVENT_VALUES].join(","));
    let mut sql = String::with_capacity(EVENT_COLUMNS.len() + rows * (one.len() + 1));
    sql.push_str(EVENT_COLUMNS);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&one);
    }
    sql
}

/// The values of `a`'s events row at the rowid `row`, in `EVENT_COLUMNS`' order: its body,
/// or with `body_at` (its place in the bodies' files, `super::bodies`) an empty one.
fn event_values(a: &AcceptRecord, row: i64, body_at: Option<i64>) -> [Value<'_>; EVENT_VALUES] {
    let first = a.rows.iter().map(|r| r.id).min();
    let last = a.rows.iter().map(|r| r.id).max();
    [
        Value::Text(&a.event_id),
        Value::Text(&a.correlation_id),
        Value::Text(&a.route),
        Value::Text(&a.session_id),
        Value::Text(&a.event_type),
        Value::Int(a.state_version as i64),
        Value::Int(i64::from(a.simulated)),
        Value::Text(&a.received_at),
        Value::Int(a.at),
        Value::Text(if body_at.is_some() { "" } else { &a.body }),
        Value::Blob(&a.answer),
        Value::Int(i64::from(a.status)),
        first.into(),
        last.into(),
        Value::Int(row),
        body_at.into(),
    ]
}

/// Writes the events row of `a` at the rowid `row` (its body at `body_at`, or in the row)
/// with `insert` (`events_insert_sql(1)`).
pub(super) fn insert_event(
    insert: &mut Raw<'_>,
    a: &AcceptRecord,
    row: i64,
    body_at: Option<i64>,
) -> rusqlite::Result<()> {
    insert.execute(&event_values(a, row, body_at))
}

/// Writes the events rows of `events` (each with its rowid and its body's place) with one
/// statement, `insert`
/// being `events_insert_sql(events.len())`: a statement's start and end, and its reading of
/// the parameters' slots, are paid once for the rows. When a row is refused, the rows before
/// it are written and the rest are not: the error comes with how many were written.
pub(super) fn insert_events(
    insert: &mut Raw<'_>,
    events: &[(&AcceptRecord, i64, Option<i64>)],
) -> Result<(), (usize, rusqlite::Error)> {
    insert
        .run(
            events
                .iter()
                .flat_map(|(a, row, body_at)| event_values(a, *row, *body_at)),
        )
        .map_err(|e| (usize::try_from(insert.changed).unwrap_or(0), e))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::sqlite::record::OutboxRow;

    pub(in crate::store::sqlite) fn record(id: &str, rows: &[i64]) -> AcceptRecord {
        AcceptRecord {
            at: 1_700_000_000_123,
            event_id: id.into(),
            correlation_id: format!("corr-{id}"),
            route: "/webhook/cognigy".into(),
            session_id: "sess-é".into(),
            event_type: "message".into(),
            state_version: 7,
            simulated: true,
            received_at: "2026-12-04T19:00:00.123Z".into(),
            body: format!("{{\"eventId\":\"{id}\",\"text\":\"{}\"}}", "x".repeat(5000)),
            key: format!("key-{id}"),
            status: 201,
            answer: bytes::Bytes::from_static(b"{\"ok\":true}\0binary"),
            rows: rows
                .iter()
                .map(|&id| OutboxRow {
                    id,
                    sink: "backend".into(),
                    held: None,
                })
                .collect(),
            spend: None,
        }
    }

    /// The first column of every row `sql` reads, as text.
    pub(in crate::store::sqlite) fn texts(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(sql)
            .expect("query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// A database of the store's schema, in memory.
    pub(in crate::store::sqlite) fn database() -> Connection {
        let mut conn = Connection::open_in_memory().expect("database");
        super::super::migrate(&mut conn, 0).expect("schema");
        conn
    }

    /// An events row: its text columns, its numbers, and body, answer and rows.
    type Row = (
        [String; 6],
        (i64, bool, i64, i64),
        (String, Vec<u8>, Option<i64>, Option<i64>),
    );

    fn read(conn: &Connection, id: &str) -> Row {
        conn.query_row(
            "SELECT event_id, correlation_id, route, session_id, event_type, received_at, \
                    state_version, simulated, committed_at, answer_status, \
                    body, answer, outbox_first, outbox_last FROM events WHERE event_id = ?1",
            [id],
            |r| {
                Ok((
                    [
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ],
                    (r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?),
                    (r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?),
                ))
            },
        )
        .expect("the row")
    }

    fn expected(a: &AcceptRecord, first: Option<i64>, last: Option<i64>) -> Row {
        (
            [
                a.event_id.clone(),
                a.correlation_id.clone(),
                a.route.clone(),
                a.session_id.clone(),
                a.event_type.clone(),
                a.received_at.clone(),
            ],
            (
                a.state_version as i64,
                a.simulated,
                a.at,
                i64::from(a.status),
            ),
            (a.body.clone(), a.answer.to_vec(), first, last),
        )
    }

    #[test]
    fn the_row_holds_every_value_of_the_record_after_the_record_is_gone() {
        let conn = database();
        let mut insert = Raw::new(&conn, &events_insert_sql(1)).expect("prepared");
        let (with_rows, without) = (record("e1", &[12, 10, 11]), record("e2", &[]));
        let want = [
            expected(&with_rows, Some(10), Some(12)),
            expected(&without, None, None),
        ];
        insert_event(&mut insert, &with_rows, 1, None).expect("written");
        insert_event(&mut insert, &without, 2, None).expect("written");
        // The values were bound without a copy: the rows must not depend on the records.
        drop((with_rows, without));
        drop(insert);
        assert_eq!(read(&conn, "e1"), want[0]);
        assert_eq!(read(&conn, "e2"), want[1]);
    }

    #[test]
    fn a_refused_row_is_an_error_of_its_own_and_the_statement_goes_on() {
        let conn = database();
        let mut insert = Raw::new(&conn, &events_insert_sql(1)).expect("prepared");
        insert_event(&mut insert, &record("e1", &[]), 1, None).expect("written");
        let mut again = record("e1", &[]);
        again.body = "another".into();
        match insert_event(&mut insert, &again, 1, None) {
            Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
                assert_eq!(e.extended_code, ffi::SQLITE_CONSTRAINT_ROWID, "{e:?}");
                assert!(msg.contains("events.rowid"), "{msg}");
            }
            other => panic!("a second row at rowid 1: {other:?}"),
        }
        insert_event(&mut insert, &record("e2", &[5]), 2, None).expect("the next one is written");
        let bodies: i64 = conn
            .query_row(
                "SELECT count(*) FROM events WHERE body = 'another'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(bodies, 0, "nothing of the refused row");
        assert_eq!(read(&conn, "e2").2 .2, Some(5));
    }

    #[test]
    fn rows_written_by_one_statement_are_the_rows_written_one_by_one() {
        let conn = database();
        let records = [
            record("e1", &[12, 10, 11]),
            record("e2", &[]),
            record("e3", &[7]),
        ];
        let want: Vec<Row> = [(Some(10), Some(12)), (None, None), (Some(7), Some(7))]
            .iter()
            .zip(&records)
            .map(|((first, last), a)| expected(a, *first, *last))
            .collect();
        // Out of rowid order too: each row lands at its own.
        let events = [
            (&records[0], 5, None),
            (&records[1], 3, None),
            (&records[2], 9, None),
        ];
        let mut insert = Raw::new(&conn, &events_insert_sql(events.len())).expect("prepared");
        insert_events(&mut insert, &events).expect("written");
        drop(records);
        drop(insert);
        for (id, row, want) in [
            ("e1", 5, &want[0]),
            ("e2", 3, &want[1]),
            ("e3", 9, &want[2]),
        ] {
            assert_eq!(&read(&conn, id), want);
            let rowid: i64 = conn
                .query_row("SELECT rowid FROM events WHERE event_id = ?1", [id], |r| {
                    r.get(0)
                })
                .expect("rowid");
            assert_eq!(rowid, row, "{id}");
        }
    }

    #[test]
    fn a_refused_row_keeps_the_rows_before_it_and_says_how_many() {
        let conn = database();
        let mut one = Raw::new(&conn, &events_insert_sql(1)).expect("prepared");
        insert_event(&mut one, &record("e1", &[]), 4, None).expect("written");
        let (a, b, c) = (record("e2", &[]), record("e3", &[]), record("e4", &[]));
        let mut three = Raw::new(&conn, &events_insert_sql(3)).expect("prepared");
        match insert_events(&mut three, &[(&a, 3, None), (&b, 4, None), (&c, 5, None)]) {
            Err((written, e)) => {
                assert!(super::super::project::taken_row(&e), "{e:?}");
                assert_eq!(written, 1);
            }
            Ok(()) => panic!("a second row at rowid 4"),
        }
        let ids = texts(&conn, "SELECT event_id FROM events ORDER BY rowid");
        assert_eq!(
            ids,
            ["e2", "e1"],
            "the row before the refused one, none after it"
        );
        let (d, e) = (record("e5", &[]), record("e6", &[]));
        insert_events(&mut three, &[(&b, 5, None), (&d, 6, None), (&e, 7, None)])
            .expect("the next call starts clean");
    }

    #[test]
    fn a_value_that_cannot_be_bound_is_an_error_and_the_next_execute_starts_clean() {
        let conn = Connection::open_in_memory().expect("database");
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER)")
            .expect("table");
        let mut insert = Raw::new(&conn, "INSERT INTO t VALUES (?1, ?2)").expect("prepared");
        let three = [Value::Text("x"), Value::Int(1), Value::Int(2)];
        match insert.execute(&three) {
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                assert_eq!(e.extended_code, ffi::SQLITE_RANGE, "{e:?}");
            }
            other => panic!("three values for two parameters: {other:?}"),
        }
        // Nothing of the failed call is left bound: `b` is NULL, not 1.
        insert.execute(&[Value::Text("y")]).expect("written");
        insert
            .execute(&[Value::Text("z"), Value::Null])
            .expect("written");
        let rows: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT a, b FROM t ORDER BY a")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows, [("y".to_string(), None), ("z".to_string(), None)]);
    }
}
