//! The events row's `INSERT` through SQLite's C interface, binding the record's strings
//! without a copy (`SQLITE_STATIC`): rusqlite binds every text and blob as
//! `SQLITE_TRANSIENT`, so SQLite first copies each value into memory of its own (a
//! `malloc`, a copy and a `free` per value, eight per row here) before it copies it again
//! into the row it writes. Measured under callgrind (`bench/callgrind.sh`, 20 s, 16
//! connections): the projector's instructions per request 21,381 → 19,746 (−7.6 %), all
//! 105,135 → 103,499 (−1.6 %) (bench/README.md, thirty-eighth session). The other statements
//! stay on rusqlite: the outbox rows' values are short, and the rest is rare.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};
use std::ptr;

use rusqlite::ffi;
use rusqlite::Connection;

use super::record::AcceptRecord;

const SQL: &str = "INSERT INTO events (event_id, correlation_id, route, session_id, event_type, \
                   state_version, simulated, received_at, committed_at, body, answer, \
                   answer_status, outbox_first, outbox_last) \
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// A prepared events `INSERT` on one connection, finalized when dropped. It must not outlive
/// the connection, which its lifetime ties it to.
pub(super) struct EventInsert<'c> {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    _conn: std::marker::PhantomData<&'c Connection>,
}

impl<'c> EventInsert<'c> {
    pub(super) fn new(conn: &'c Connection) -> rusqlite::Result<EventInsert<'c>> {
        // SAFETY: the handle is the connection's own, used on this thread while `conn` is
        // borrowed; the statement is finalized in `drop`, before the borrow ends.
        unsafe {
            let db = conn.handle();
            let mut stmt = ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v2(
                db,
                SQL.as_ptr().cast::<c_char>(),
                SQL.len() as c_int,
                &mut stmt,
                ptr::null_mut(),
            );
            check(db, rc)?;
            Ok(EventInsert {
                stmt,
                db,
                _conn: std::marker::PhantomData,
            })
        }
    }

    /// Writes the record's events row.
    pub(super) fn run(&mut self, a: &AcceptRecord) -> rusqlite::Result<()> {
        let first = a.rows.iter().map(|r| r.id).min();
        let last = a.rows.iter().map(|r| r.id).max();
        // SAFETY: every text and blob bound is borrowed from `a`, which outlives the step;
        // the statement is reset and its bindings cleared before this returns, so SQLite
        // keeps no pointer into `a` past this call.
        unsafe {
            let s = self.stmt;
            let rc = (|| {
                text(s, 1, &a.event_id)?;
                text(s, 2, &a.correlation_id)?;
                text(s, 3, &a.route)?;
                text(s, 4, &a.session_id)?;
                text(s, 5, &a.event_type)?;
                int(s, 6, a.state_version as i64)?;
                int(s, 7, i64::from(a.simulated))?;
                text(s, 8, &a.received_at)?;
                int(s, 9, a.at)?;
                text(s, 10, &a.body)?;
                blob(s, 11, &a.answer)?;
                int(s, 12, i64::from(a.status))?;
                opt_int(s, 13, first)?;
                opt_int(s, 14, last)?;
                match ffi::sqlite3_step(s) {
                    ffi::SQLITE_DONE => Ok(()),
                    rc => Err(rc),
                }
            })();
            ffi::sqlite3_reset(s);
            ffi::sqlite3_clear_bindings(s);
            match rc {
                Ok(()) => Ok(()),
                Err(rc) => check(self.db, rc),
            }
        }
    }
}

impl Drop for EventInsert<'_> {
    fn drop(&mut self) {
        // SAFETY: made by `sqlite3_prepare_v2` in `new`, finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

unsafe fn text(s: *mut ffi::sqlite3_stmt, i: c_int, v: &str) -> Result<(), c_int> {
    let rc = ffi::sqlite3_bind_text(
        s,
        i,
        v.as_ptr().cast::<c_char>(),
        c_int::try_from(v.len()).map_err(|_| ffi::SQLITE_TOOBIG)?,
        ffi::SQLITE_STATIC(),
    );
    ok(rc)
}

unsafe fn blob(s: *mut ffi::sqlite3_stmt, i: c_int, v: &[u8]) -> Result<(), c_int> {
    let rc = ffi::sqlite3_bind_blob(
        s,
        i,
        v.as_ptr().cast(),
        c_int::try_from(v.len()).map_err(|_| ffi::SQLITE_TOOBIG)?,
        ffi::SQLITE_STATIC(),
    );
    ok(rc)
}

unsafe fn int(s: *mut ffi::sqlite3_stmt, i: c_int, v: i64) -> Result<(), c_int> {
    ok(ffi::sqlite3_bind_int64(s, i, v))
}

unsafe fn opt_int(s: *mut ffi::sqlite3_stmt, i: c_int, v: Option<i64>) -> Result<(), c_int> {
    match v {
        Some(v) => int(s, i, v),
        None => ok(ffi::sqlite3_bind_null(s, i)),
    }
}

fn ok(rc: c_int) -> Result<(), c_int> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// The connection's error for `rc`, as rusqlite gives it.
unsafe fn check(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    let msg = ffi::sqlite3_errmsg(db);
    let msg = if msg.is_null() {
        None
    } else {
        Some(std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned())
    };
    let code = match ffi::sqlite3_extended_errcode(db) {
        0 => rc,
        c => c,
    };
    Err(rusqlite::Error::SqliteFailure(ffi::Error::new(code), msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::record::OutboxRow;

    fn record(id: &str, rows: &[i64]) -> AcceptRecord {
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

    /// A database of the store's schema, in memory.
    fn database() -> Connection {
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
        let mut insert = EventInsert::new(&conn).expect("prepared");
        let (with_rows, without) = (record("e1", &[12, 10, 11]), record("e2", &[]));
        let want = [
            expected(&with_rows, Some(10), Some(12)),
            expected(&without, None, None),
        ];
        insert.run(&with_rows).expect("written");
        insert.run(&without).expect("written");
        // The values were bound without a copy: the rows must not depend on the records.
        drop((with_rows, without));
        drop(insert);
        assert_eq!(read(&conn, "e1"), want[0]);
        assert_eq!(read(&conn, "e2"), want[1]);
    }

    #[test]
    fn a_refused_row_is_an_error_of_its_own_and_the_statement_goes_on() {
        let conn = database();
        let mut insert = EventInsert::new(&conn).expect("prepared");
        insert.run(&record("e1", &[])).expect("written");
        let mut again = record("e1", &[]);
        again.body = "another".into();
        match insert.run(&again) {
            Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
                assert_eq!(e.code, rusqlite::ErrorCode::ConstraintViolation);
                assert!(msg.contains("events.event_id"), "{msg}");
            }
            other => panic!("a second row for e1: {other:?}"),
        }
        insert
            .run(&record("e2", &[5]))
            .expect("the next one is written");
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
}
