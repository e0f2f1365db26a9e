//! What SQLite's planner did that the store's statements are written never to make it do:
//! build an *automatic index*, an index of a whole table made for one execution of a
//! statement. Every statement here is written for an index the schema has (or a rowid
//! range); an automatic index means a statement reads a whole table each time it runs,
//! which a test's small tables never show and a production store's large ones do (the
//! pruning passes' did: bench/README.md, forty-seventh session).
//!
//! SQLite reports each one to its process-wide error log (`SQLITE_WARNING_AUTOINDEX`,
//! "automatic index on TABLE(COLUMNS)"), which the first connection the store opens
//! subscribes to. Each report is counted and logged as a warning (at most one line a minute);
//! in debug builds a store that saw one panics when it is dropped, so every store test in the
//! suite also checks that no statement it ran needed one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use parking_lot::Mutex;

use crate::telemetry::throttle::Throttle;

/// `SQLITE_WARNING_AUTOINDEX`: `SQLITE_WARNING | (1 << 8)`.
const WARNING_AUTOINDEX: i32 = rusqlite::ffi::SQLITE_WARNING | (1 << 8);

static SEEN: AtomicU64 = AtomicU64::new(0);
static FIRST: Mutex<String> = Mutex::new(String::new());
static LOGGED: Throttle = Throttle::new(Duration::from_secs(60));

/// Subscribes to SQLite's error log, once per process, before the first connection is
/// opened. When SQLite was initialised already (something else in the process opened a
/// connection first), it cannot be subscribed to any more, and automatic indexes go
/// unreported: said once at debug level.
#[allow(unsafe_code)]
pub(super) fn watch() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: called once, under `Once`, before this process's store opens any
        // connection; `report` calls no SQLite function and is thread-safe.
        if let Err(e) = unsafe { rusqlite::trace::config_log(Some(report)) } {
            tracing::debug!(error = %e, "SQLite's log cannot be watched for automatic indexes");
        }
    });
}

fn report(code: i32, message: &str) {
    if code != WARNING_AUTOINDEX {
        return;
    }
    #[cfg(test)]
    if message.contains(tests::PROBE) {
        tests::PROBED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if SEEN.fetch_add(1, Ordering::Relaxed) == 0 {
        *FIRST.lock() = message.to_owned();
    }
    if let Some(left_out) = LOGGED.check() {
        tracing::warn!(
            what = message,
            left_out,
            "a store statement had SQLite index a whole table for it: it reads the table \
             each time it runs (please report it)"
        );
    }
}

/// How many automatic indexes this process's statements were planned with, and the first
/// one's description.
pub(super) fn automatic_indexes() -> (u64, String) {
    (SEEN.load(Ordering::Relaxed), FIRST.lock().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;

    /// The table the test below makes SQLite index: counted apart, so that the stores other
    /// tests of the same process drop (under `cargo test`) do not see it.
    pub(super) const PROBE: &str = "planner_probe";
    pub(super) static PROBED: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn an_automatic_index_is_reported_by_the_log_the_first_connection_subscribes_to() {
        let dir = tempfile::tempdir().expect("tmp");
        let c =
            super::super::open_connection(&dir.path().join("p.db"), SyncMode::Normal, false, 64)
                .expect("open");
        c.execute_batch(&format!(
            "CREATE TABLE a (x INTEGER); CREATE TABLE {PROBE} (y INTEGER);
             INSERT INTO a VALUES (1), (2); INSERT INTO {PROBE} VALUES (1), (3);"
        ))
        .expect("tables");
        let before = PROBED.load(Ordering::Relaxed);
        // No index on y: the planner makes one for this execution.
        let n: i64 = c
            .query_row(
                &format!("SELECT count(*) FROM a JOIN {PROBE} p ON p.y = a.x"),
                [],
                |r| r.get(0),
            )
            .expect("join");
        assert_eq!(n, 1);
        assert_eq!(PROBED.load(Ordering::Relaxed), before + 1);
    }
}
