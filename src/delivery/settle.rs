//! Settling finished sends: each send queues its settlement, and whichever finds no commit
//! running commits everything queued (at most [`SETTLE_BATCH`] per commit), then records
//! the outcome in metrics and the audit log. A settlement that cannot be committed is tried
//! again while the claims' leases last.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sink::SinkRuntime;
use crate::store::{Claimed, Settlement, Store};
use crate::telemetry::audit::{Audit, AuditKind, AuditLine};

/// Settlements committed together at most: a PostgreSQL commit of a few thousand ran past
/// the database timeout, and its rows were sent again once their leases expired.
const SETTLE_BATCH: usize = 256;

/// A settlement that failed is tried again only while the earliest lease in it has at least
/// this long to run.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// A finished send whose settlement is not committed yet.
pub(super) struct Pending {
    pub(super) sink: Arc<SinkRuntime>,
    pub(super) claim: Claimed,
    pub(super) settlement: Settlement,
    pub(super) took: Duration,
}

/// Commits settlements for the worker and the `respond` calls.
pub(super) struct Settler {
    store: Store,
    audit: Audit,
    /// Settlements waiting to be committed.
    queue: Mutex<Vec<Pending>>,
    flushing: AtomicBool,
}

impl Settler {
    pub(super) fn new(store: Store, audit: Audit) -> Settler {
        Settler {
            store,
            audit,
            queue: Mutex::new(Vec::new()),
            flushing: AtomicBool::new(false),
        }
    }

    /// Queues a settlement; if no flush is running, commits everything queued (in one job,
    /// repeatedly, until the queue is empty). Concurrent sends thus share commits.
    pub(super) async fn settle(&self, p: Pending) {
        self.settle_all(vec![p]).await;
    }

    /// [`Settler::settle`] for the rows of one request (`batch`).
    pub(super) async fn settle_all(&self, ps: Vec<Pending>) {
        self.queue.lock().extend(ps);
        /// Clears the flag however the flush ends (even if its task is dropped mid-await).
        struct Flushing<'a>(&'a AtomicBool);
        impl Drop for Flushing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        loop {
            if self.flushing.swap(true, Ordering::SeqCst) {
                return; // the running flush will take it
            }
            let guard = Flushing(&self.flushing);
            let batch = std::mem::take(&mut *self.queue.lock());
            if !batch.is_empty() {
                self.flush(batch).await;
            }
            drop(guard);
            // Something queued after the batch was taken but before the flag dropped would
            // otherwise wait for the next send: look once more.
            if self.queue.lock().is_empty() {
                return;
            }
        }
    }

    /// Commits finished sends' settlements, at most [`SETTLE_BATCH`] per commit so that no
    /// commit grows past what the database answers in time.
    async fn flush(&self, batch: Vec<Pending>) {
        for chunk in batch.chunks(SETTLE_BATCH) {
            self.flush_chunk(chunk).await;
        }
    }

    /// One commit of settlements, tried again (with backoff) while the earliest lease in it
    /// still has [`SETTLE_MARGIN`] to run: a settlement that does not land is a delivery made
    /// twice once the lease expires.
    async fn flush_chunk(&self, chunk: &[Pending]) {
        // Built for each try (the store takes them), not cloned from a first copy.
        let items = || {
            chunk
                .iter()
                .map(|p| (p.claim.clone(), p.settlement.clone()))
                .collect::<Vec<_>>()
        };
        let expires = chunk
            .iter()
            .map(|p| p.claim.lease_until_ms)
            .min()
            .unwrap_or(0);
        let margin = SETTLE_MARGIN.as_millis() as i64;
        let mut backoff = Duration::from_millis(50);
        let mut tries = 1;
        loop {
            match self.store.settle_many(items()).await {
                Ok(done) => {
                    for (p, held) in chunk.iter().zip(done) {
                        if held {
                            self.record(&p.sink, &p.claim, &p.settlement, p.took);
                        } else {
                            tracing::warn!(sink = %p.sink.name, event_id = %p.claim.event_id,
                                "the claim no longer held the row when it was settled (its \
                                 lease ran out, or an earlier try of this settlement landed)");
                        }
                    }
                    return;
                }
                Err(e) => {
                    let left = expires - crate::now_millis() - margin;
                    if left <= backoff.as_millis() as i64 {
                        tracing::error!(error = %e, rows = chunk.len(), tries,
                            "cannot settle deliveries before their leases run out; they will \
                             be attempted again when the leases expire");
                        return;
                    }
                    tracing::warn!(error = %e, rows = chunk.len(), tries,
                        "cannot settle deliveries; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    tries += 1;
                }
            }
        }
    }

    fn record(&self, sink: &SinkRuntime, c: &Claimed, s: &Settlement, took: Duration) {
        let (kind, code) = match s {
            Settlement::Delivered { .. } => {
                sink.metrics.delivered.increment(1);
                let lag_ms = (crate::now_millis() - c.created_at_ms).max(0) as u64;
                sink.metrics.lag.record(lag_ms as f64 / 1000.0);
                sink.lags.lock().record(lag_ms);
                (AuditKind::DeliverySucceeded, None)
            }
            Settlement::Retry { .. } => {
                sink.metrics.retried.increment(1);
                (AuditKind::DeliveryFailed, Some("transient"))
            }
            Settlement::Dead { reason, .. } => {
                sink.metrics.dead_lettered.increment(1);
                sink.dead_lettered(*reason);
                (AuditKind::DeadLettered, Some(reason.as_str()))
            }
            Settlement::Release { .. } => return,
        };
        if let Settlement::Dead { reason, error, .. } = s {
            tracing::warn!(sink = %sink.name, event_id = %c.event_id, reason = reason.as_str(),
                error = %error, "delivery dead-lettered");
        }
        self.audit.write(&AuditLine {
            route: &c.route,
            correlation_id: &c.correlation_id,
            event_id: Some(&c.event_id),
            session_id: Some(&c.session_id),
            event_type: Some(&c.event_type),
            code,
            latency_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            sink: Some(&sink.name),
            attempt: Some(c.attempts + 1),
            ..AuditLine::new(kind)
        });
    }
}
