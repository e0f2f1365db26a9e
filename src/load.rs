//! The ingest load gauge. HTTP raises it (each webhook request while it is handled, each
//! outbox row ingest commits); the delivery worker reads it, with the CPU time the process
//! has used, to tell whether ingest is saturated (`delivery::pace`). `app` owns the one instance and hands it to both, so neither
//! reaches into the other for it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counters of ingest since the process started (they only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Webhook requests that arrived.
    pub arrivals: u64,
    /// Those that found `busy_in_flight` requests already in flight.
    pub crowded: u64,
    /// Outbox rows ingest committed.
    pub accepted: u64,
    /// CPU time the whole process has used (nanoseconds).
    pub cpu_ns: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct IngestLoad {
    in_flight: Arc<AtomicUsize>,
    /// Requests in flight at once that make an arrival crowded (`delivery.busy.in_flight`).
    busy_in_flight: usize,
    arrivals: AtomicU64,
    crowded: AtomicU64,
    accepted: AtomicU64,
}

/// Counts one webhook request as in flight while it lives.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl IngestLoad {
    /// `busy_in_flight`: requests in flight at once from which an arrival counts as crowded.
    pub fn new(busy_in_flight: usize) -> IngestLoad {
        IngestLoad {
            in_flight: Arc::default(),
            busy_in_flight: busy_in_flight.max(1),
            arrivals: AtomicU64::new(0),
            crowded: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    /// Marks a webhook request as in flight until the guard is dropped.
    pub fn request(&self) -> InFlightGuard {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        if n >= self.busy_in_flight {
            self.crowded.fetch_add(1, Ordering::Relaxed);
        }
        InFlightGuard(self.in_flight.clone())
    }

    /// Ingest committed `rows` outbox rows.
    pub fn accepted(&self, rows: usize) {
        self.accepted.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> Load {
        Load {
            arrivals: self.arrivals.load(Ordering::Relaxed),
            crowded: self.crowded.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            cpu_ns: process_cpu_ns(),
        }
    }
}

/// CPU time this process has used (every thread), in nanoseconds.
fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_crowded_from_the_busy_count_on_and_guards_give_their_place_back() {
        let load = IngestLoad::new(2);
        let first = load.request();
        let second = load.request();
        assert_eq!(load.read().crowded, 1, "the second found two in flight");
        drop((first, second));
        let _third = load.request();
        load.accepted(5);
        let now = load.read();
        assert_eq!(
            (now.arrivals, now.crowded, now.accepted),
            (3, 1, 5),
            "{now:?}"
        );
        assert!(now.cpu_ns > 0, "the process has used some CPU");
    }
}
