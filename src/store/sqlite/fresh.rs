//! Fresh rows: the outbox rows of the latest commits, handed from the sequencer to the
//! delivery path in memory, so a claim does not wait for the projector to write them to the
//! database first (under sustained load the projector runs seconds behind the log, and a
//! delivery's lag would be the projection's lag).
//!
//! # Why no row is sent twice or lost
//! - Only sinks recorded as unordered get a queue (`configure_sinks`): an ordered sink's next
//!   row depends on the settlements of earlier ones, which only the database knows.
//! - The sequencer pushes a commit's rows here (under the leases' lock) *before* it hands the
//!   records to the projector, so no claim can find them in the database first; and a claim
//!   takes a row from here only once its record has been handed to the projector (`handed`),
//!   so the settlement a delivery queues for the projector always lands after the row.
//! - A queue's rows are a contiguous run of its sink's row ids, `[front, back]`: a claim that
//!   reads the database skips that range, and checks it again (with the leases) under the lock
//!   before it leases what it read. A row taken from here is leased in the same lock.
//!   Rows taken leave from the front, so only two kinds of the sink's rows can sit inside the
//!   range without being queued: a `respond` row (leased to its request; given back late, it
//!   waits until the queue has moved past it) and a forgotten session's (cancelled).
//! - When a queue is full, the commit's rows for that sink are not queued: the database claim
//!   then waits until the projector has written that commit (`db_wait`), as every database
//!   claim did before, and the queue takes rows again once it has drained. A forgotten
//!   session's rows leave every queue, and database claims wait for the forget to be written.
//! - Nothing here is durable, and nothing needs to be: every row is in the log, and so in the
//!   database once projected; after a restart the database claims find them all.

use std::collections::{HashMap, VecDeque};

use crate::store::Claimed;

/// Rows a queue holds at most (per sink): beyond this, deliveries are behind anyway (held
/// back at saturation, or the sink is slow or down) and the database path serves them.
/// Keeping pace needs only what arrives while a claim is on its way (rate × a few ms).
pub(super) const MAX_ROWS: usize = 1024;

/// Body bytes a queue holds at most (per sink).
pub(super) const MAX_BYTES: usize = 1 << 20;

/// One sink's queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// (log record, the row's claim without its lease), in row id order.
    rows: VecDeque<(u64, Claimed)>,
    bytes: usize,
    /// Database claims wait until the database holds this record (0: nothing to wait for).
    pub(super) db_wait: u64,
    /// A row was left out since the queue last drained: nothing is queued until it drains.
    overflowed: bool,
    /// When a claim of this sink last read the database (Unix ms).
    pub(super) last_database_claim: i64,
}

impl Queue {
    /// Queues a committed row; false (and nothing queued) when the queue is full, or has
    /// overflowed and not drained since.
    pub(super) fn push(&mut self, lsn: u64, claim: Claimed, max_rows: usize) -> bool {
        if self.rows.is_empty() {
            self.overflowed = false;
        }
        let size = claim.body.len();
        if self.overflowed
            || self.rows.len() >= max_rows
            || (!self.rows.is_empty() && self.bytes + size > MAX_BYTES)
        {
            self.overflowed = true;
            self.db_wait = self.db_wait.max(lsn);
            return false;
        }
        self.bytes += size;
        self.rows.push_back((lsn, claim));
        true
    }

    /// Takes up to `limit` rows whose records are at most `handed`, oldest first.
    pub(super) fn take(&mut self, limit: usize, handed: u64) -> Vec<Claimed> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.rows.front() {
                Some((lsn, _)) if *lsn <= handed => {}
                _ => break,
            }
            if let Some((_, c)) = self.rows.pop_front() {
                self.bytes -= c.body.len();
                out.push(c);
            }
        }
        out
    }

    /// The ids a database claim must skip: `(front, back)`, or an empty range.
    pub(super) fn range(&self) -> (i64, i64) {
        match (self.rows.front(), self.rows.back()) {
            (Some((_, f)), Some((_, b))) => (f.outbox_id, b.outbox_id),
            _ => (1, 0),
        }
    }

    /// Drops a forgotten session's rows; database claims wait for the forget (record `lsn`).
    pub(super) fn forget(&mut self, session_id: &str, lsn: u64) {
        let before = self.rows.len();
        self.rows.retain(|(_, c)| c.session_id != session_id);
        if self.rows.len() != before {
            self.bytes = self.rows.iter().map(|(_, c)| c.body.len()).sum();
        }
        self.db_wait = self.db_wait.max(lsn);
    }
}

/// Every unordered sink's queue.
#[derive(Debug)]
pub(super) struct Fresh {
    pub(super) sinks: HashMap<String, Queue>,
    pub(super) max_rows: usize,
}

impl Default for Fresh {
    fn default() -> Fresh {
        Fresh {
            sinks: HashMap::new(),
            max_rows: MAX_ROWS,
        }
    }
}

impl Fresh {
    /// Gives a queue to each unordered sink and none to the ordered ones. A queue that goes
    /// away drops its rows: claims of that sink then wait for the whole log (`db_wait` is
    /// not needed: a sink without a queue always waits).
    pub(super) fn configure(&mut self, sinks: &[(String, bool)]) {
        for (sink, ordered) in sinks {
            if *ordered {
                self.sinks.remove(sink);
            } else {
                self.sinks.entry(sink.clone()).or_default();
            }
        }
    }

    /// Queues a committed row (of `claim.sink`) if its sink has a queue with room.
    pub(super) fn push(&mut self, lsn: u64, claim: Claimed) {
        let max_rows = self.max_rows;
        if let Some(q) = self.sinks.get_mut(&claim.sink) {
            q.push(lsn, claim, max_rows);
        }
    }

    pub(super) fn forget(&mut self, session_id: &str, lsn: u64) {
        for q in self.sinks.values_mut() {
            q.forget(session_id, lsn);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;

    /// A row of sink `a` as a claim finds it.
    pub(in crate::store::sqlite) fn claim(id: i64, session: &str) -> Claimed {
        Claimed {
            outbox_id: id,
            lease_token: String::new(),
            sink: "a".into(),
            event_id: format!("e{id}"),
            correlation_id: format!("c{id}"),
            route: "r".into(),
            session_id: session.into(),
            event_type: "t".into(),
            attempts: 0,
            body: Bytes::from(vec![b'x'; 10]),
            respond_to: None,
            created_at_ms: 0,
            lease_until_ms: 0,
        }
    }

    fn ids(rows: &[Claimed]) -> Vec<i64> {
        rows.iter().map(|c| c.outbox_id).collect()
    }

    #[test]
    fn rows_are_taken_in_order_only_once_their_record_is_handed_on() {
        let mut q = Queue::default();
        for (lsn, id) in [(1, 10), (2, 12), (3, 13)] {
            assert!(q.push(lsn, claim(id, "s"), 8));
        }
        assert_eq!(q.range(), (10, 13));
        assert!(
            q.take(10, 0).is_empty(),
            "nothing handed to the projector yet"
        );
        assert_eq!(ids(&q.take(10, 2)), [10, 12]);
        assert_eq!(q.range(), (13, 13));
        assert_eq!(ids(&q.take(10, 3)), [13]);
        assert_eq!(q.range(), (1, 0), "an empty queue skips nothing");
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn a_full_queue_leaves_rows_to_the_database_until_it_has_drained() {
        let mut q = Queue::default();
        assert!(q.push(1, claim(1, "s"), 2));
        assert!(q.push(2, claim(2, "s"), 2));
        assert!(!q.push(3, claim(3, "s"), 2), "full");
        assert_eq!(q.db_wait, 3, "database claims wait for the row left out");
        assert_eq!(ids(&q.take(1, 9)), [1]);
        // Room again, but a row is missing from the run: the queue stays closed (its range
        // must stay one contiguous run of the sink's rows) until it drains.
        assert!(!q.push(4, claim(4, "s"), 2));
        assert_eq!(q.db_wait, 4);
        assert_eq!(ids(&q.take(5, 9)), [2]);
        assert!(q.push(5, claim(5, "s"), 2), "drained: open again");
        assert_eq!(q.range(), (5, 5));
    }

    #[test]
    fn a_forgotten_session_leaves_the_queues_and_database_claims_wait_for_it() {
        let mut f = Fresh::default();
        f.configure(&[("a".into(), false), ("o".into(), true)]);
        assert!(!f.sinks.contains_key("o"), "ordered sinks have no queue");
        for (lsn, id, s) in [(1, 1, "x"), (2, 2, "y"), (3, 3, "x")] {
            f.push(lsn, claim(id, s));
            f.push(
                lsn,
                Claimed {
                    sink: "o".into(),
                    ..claim(id, s)
                },
            );
        }
        f.forget("x", 4);
        let q = f.sinks.get_mut("a").expect("queue");
        assert_eq!(q.db_wait, 4);
        assert_eq!(ids(&q.take(10, 9)), [2]);
    }
}
