//! The delivery worker: claims due outbox rows per sink, sends them concurrently (bounded per
//! sink), and settles each as delivered, retry-at-time or dead letter.
//!
//! Invariants: a row is marked delivered only after its sink said so; a send that is cut off
//! (shutdown past the grace period, crash) is never settled and comes due again when its lease
//! expires; an attempt skipped because the sink is paused or its circuit is open is not
//! claimed, so it does not count. The worker wakes when ingest commits rows for a sink
//! ([`Deliverer::wake`]) and polls as a fallback.

use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::{Admission, Breaker, CircuitState};
use super::lag::{LagSummary, LagWindow};
use super::pace::{Allowance, Load, Pacer};
use super::retry::Next;
use crate::config::SinkSpec;
use crate::rate::Bucket;
use crate::sinks::{Delivery, Sink, SinkError};
use crate::store::{Claimed, DeadReason, Settlement, Store};
use crate::telemetry::audit::{Audit, AuditKind, AuditLine};
use crate::telemetry::metrics::SinkMetrics;

/// Settlements committed together at most: a PostgreSQL commit of a few thousand ran past
/// the database timeout, and its rows were sent again once their leases expired.
const SETTLE_BATCH: usize = 256;

/// A settlement that failed is tried again only while the earliest lease in it has at least
/// this long to run.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// Deliveries whose lag `/admin/sinks` summarises, per sink.
const LAG_WINDOW: usize = 1024;

/// A configured sink with its client, limits and health.
pub struct SinkRuntime {
    pub name: String,
    pub config: SinkSpec,
    sink: Arc<dyn Sink>,
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    paused: AtomicBool,
    metrics: SinkMetrics,
    /// Rows claimed ahead of free send slots, so a finished send starts the next one without
    /// waiting for a claim to commit. Their leases cover two sends.
    buffer: Mutex<VecDeque<Claimed>>,
    /// The sink's `rate_limit`, if it has one.
    bucket: Option<Mutex<Bucket>>,
    /// A wake-up after the bucket refills is already scheduled.
    refill_timer: AtomicBool,
    lease_margin: Duration,
    /// The lags of the latest deliveries (for `/admin/sinks`).
    lags: Mutex<LagWindow>,
}

impl SinkRuntime {
    /// `lease_margin`: lease time beyond two sends' timeouts (`delivery.lease_margin`).
    pub fn new(config: SinkSpec, sink: Arc<dyn Sink>, lease_margin: Duration) -> SinkRuntime {
        let name = config.name.as_str();
        SinkRuntime {
            lease_margin,
            name: name.to_string(),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            breaker: Mutex::new(Breaker::new(config.breaker)),
            paused: AtomicBool::new(false),
            metrics: SinkMetrics::new(name),
            buffer: Mutex::new(VecDeque::new()),
            bucket: config
                .rate_limit
                .or_else(|| {
                    // Cognigy's shared SaaS takes 1,000 requests per 5 minutes per IP; a
                    // `cognigy` sink keeps to that unless told otherwise.
                    (config.kind() == crate::config::SinkKind::Cognigy).then_some(
                        crate::rate::RateLimit {
                            per: Duration::from_secs(300),
                            max: 1000,
                        },
                    )
                })
                .map(|r| Mutex::new(Bucket::new(r, Instant::now()))),
            refill_timer: AtomicBool::new(false),
            lags: Mutex::new(LagWindow::new(LAG_WINDOW)),
            sink,
            config,
        }
    }

    /// Percentiles of the latest deliveries' lag (acceptance to delivery).
    pub fn lag(&self) -> Option<LagSummary> {
        self.lags.lock().summary()
    }

    pub fn circuit(&self) -> CircuitState {
        self.breaker.lock().state(Instant::now())
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Sets the outbox gauges of this sink.
    pub fn observe(&self, counts: &crate::store::SinkCounts) {
        self.metrics.pending.set(counts.pending as f64);
        self.metrics
            .oldest_age
            .set(counts.oldest_pending_age_seconds);
        self.metrics.dead_letters.set(counts.dead_letters as f64);
        self.metrics.circuit.set(self.circuit().gauge());
    }

    /// Long enough for a row to wait in the buffer for one send and then be sent.
    pub fn lease(&self) -> Duration {
        self.config.timeout * 2 + self.lease_margin
    }

    fn take_buffered(&self, n: usize) -> Vec<Claimed> {
        let mut b = self.buffer.lock();
        let n = n.min(b.len());
        b.drain(..n).collect()
    }

    fn buffered(&self) -> usize {
        self.buffer.lock().len()
    }
}

/// The delivery workers of one process.
pub struct Deliverer {
    store: Store,
    sinks: Vec<Arc<SinkRuntime>>,
    wake: Notify,
    audit: Audit,
    tracker: TaskTracker,
    poll: Duration,
    jitter: Jitter,
    /// Settlements waiting to be committed; whichever send finds no flush running commits
    /// everything queued in one job (see `settle`).
    settlements: Mutex<Vec<Pending>>,
    flushing: AtomicBool,
    /// Webhook requests being handled now (see [`Deliverer::ingest_guard`]).
    ingest_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests in flight at once that make an arrival crowded (`delivery.busy.in_flight`).
    busy_in_flight: usize,
    /// Webhook requests that arrived, and those that found `busy_in_flight` already in
    /// flight (what the pacer reads saturation from).
    arrivals: AtomicU64,
    crowded: AtomicU64,
    /// Outbox rows ingest has committed since start (what the pacer's share is of).
    accepted: AtomicU64,
    /// Holds sends to a share of the acceptance rate while ingest is saturated.
    pacer: Mutex<Pacer>,
}

/// Counts one webhook request as in flight while it lives.
pub struct IngestGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for IngestGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A finished send whose settlement is not committed yet.
struct Pending {
    sink: Arc<SinkRuntime>,
    claim: Claimed,
    attempt: u32,
    settlement: Settlement,
    took: Duration,
}

/// Uniform draws in `[0, 1)` for full jitter (xorshift64; jitter needs spread, not secrecy).
struct Jitter(AtomicU64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(AtomicU64::new(seed | 1))
    }

    fn draw(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Deliverer {
    pub fn new(
        store: Store,
        sinks: Vec<Arc<SinkRuntime>>,
        audit: Audit,
        poll: Duration,
        busy: crate::config::BusyConfig,
    ) -> Arc<Deliverer> {
        let seed = RandomState::new().hash_one(std::process::id());
        let floor = sinks.iter().map(|s| s.config.concurrency.max(1)).sum();
        Arc::new(Deliverer {
            store,
            sinks,
            wake: Notify::new(),
            audit,
            tracker: TaskTracker::new(),
            poll,
            jitter: Jitter::new(seed),
            settlements: Mutex::new(Vec::new()),
            flushing: AtomicBool::new(false),
            ingest_in_flight: Arc::default(),
            busy_in_flight: busy.in_flight.max(1),
            arrivals: AtomicU64::new(0),
            crowded: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            // At least one round for every sink per interval, as if each had its slots free.
            pacer: Mutex::new(Pacer::new(busy.interval, busy.share, floor)),
        })
    }

    pub fn sinks(&self) -> &[Arc<SinkRuntime>] {
        &self.sinks
    }

    pub fn sink(&self, name: &str) -> Option<&Arc<SinkRuntime>> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Tells the worker that rows may be due (a replay, a resume).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ingest committed `rows` outbox rows: counts them for the pacer and wakes the worker.
    pub fn accepted(&self, rows: usize) {
        self.accepted.fetch_add(rows as u64, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Runs until `shutdown`, then stops claiming and waits up to `grace` for sends in flight.
    /// Marks a webhook request as in flight until the guard is dropped.
    pub fn ingest_guard(&self) -> IngestGuard {
        let n = self.ingest_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        if n >= self.busy_in_flight {
            self.crowded.fetch_add(1, Ordering::Relaxed);
        }
        IngestGuard(self.ingest_in_flight.clone())
    }

    /// What the run loop may start now (see [`Pacer`]): freely below saturation, a share of
    /// the acceptance rate while ingest is saturated.
    pub fn allowance(&self) -> Allowance {
        let load = Load {
            arrivals: self.arrivals.load(Ordering::Relaxed),
            crowded: self.crowded.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
        };
        self.pacer.lock().allowance(Instant::now(), load)
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let limit = match self.allowance() {
                Allowance::Free => None,
                Allowance::Sends(n) => Some(n),
                Allowance::Wait(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            let started = self.tick_limited(limit).await;
            if limit.is_some() {
                self.pacer.lock().started(started);
            }
            if started > 0 {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.tracker.len(),
                "deliveries still in flight after the grace period; their leases will expire \
                 and they will be attempted again"
            );
        }
    }

    /// Claims what is due for every sink that can take more and starts the sends. Returns how
    /// many sends it started.
    pub async fn tick(self: &Arc<Self>) -> usize {
        self.tick_limited(None).await
    }

    /// [`Deliverer::tick`], starting at most `limit` sends in all.
    pub async fn tick_limited(self: &Arc<Self>, limit: Option<usize>) -> usize {
        let mut started = 0;
        for sink in &self.sinks {
            let left = limit.map_or(usize::MAX, |l| l.saturating_sub(started));
            if left == 0 {
                break;
            }
            if sink.is_paused() {
                self.release_buffer(sink).await;
                continue;
            }
            let free = sink.permits.available_permits();
            if free == 0 {
                continue;
            }
            let admission = sink.breaker.lock().admit(Instant::now());
            let (mut take, probe) = match admission {
                Admission::Go => (free.min(left), false),
                Admission::Probe => (1, true),
                Admission::Wait(_) => {
                    // Nothing goes while the circuit is open; give claimed rows back, uncounted.
                    self.release_buffer(sink).await;
                    continue;
                }
            };
            if let Some(bucket) = &sink.bucket {
                let allowed = bucket.lock().available(Instant::now());
                if allowed == 0 {
                    // Over the rate limit: nothing is attempted (no attempt is used); the rows
                    // go back, and a timer wakes the worker when the next send is paid for.
                    if probe {
                        sink.breaker.lock().release_probe();
                    }
                    self.release_buffer(sink).await;
                    self.wake_after_refill(sink);
                    continue;
                }
                take = take.min(allowed);
            }
            if sink.buffered() < take {
                // Claim for the free slots plus one more round, in one commit.
                let want = take + if probe { 0 } else { sink.config.concurrency } - sink.buffered();
                match self.store.claim(&sink.name, want, sink.lease()).await {
                    Ok(rows) => {
                        sink.buffer.lock().extend(rows);
                    }
                    Err(e) => {
                        tracing::warn!(sink = %sink.name, error = %e, "claim failed; will retry")
                    }
                }
            }
            let rows = sink.take_buffered(take);
            if let Some(bucket) = &sink.bucket {
                bucket.lock().take(rows.len(), Instant::now());
            }
            if rows.is_empty() && probe {
                sink.breaker.lock().release_probe();
            }
            for c in rows {
                let Ok(permit) = sink.permits.clone().try_acquire_owned() else {
                    // A `respond` call took the slot since `free` was read: the row goes back
                    // to the buffer for the next round.
                    sink.buffer.lock().push_front(c);
                    break;
                };
                started += 1;
                let (this, sink) = (self.clone(), sink.clone());
                self.tracker
                    .spawn(async move { this.deliver(sink, c, permit).await });
            }
        }
        started
    }

    /// The first attempt at a `respond.upstream` row, made on behalf of the request that
    /// committed it (the row was inserted already claimed), as a tracked task. The answer is
    /// offered to the request through the returned channel; if the request has stopped
    /// waiting (the channel is closed), the answer goes to the row's `on_late` sink instead,
    /// in the settlement's transaction. A failure is settled like any attempt and retried by
    /// the workers. A paused sink, an open circuit or a sink whose `concurrency` slots are all
    /// taken is not called: the row is released to the workers at once.
    pub fn spawn_respond(self: &Arc<Self>, c: Claimed) -> oneshot::Receiver<bytes::Bytes> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        self.tracker.spawn(async move { this.respond(c, tx).await });
        rx
    }

    async fn respond(&self, c: Claimed, waiting: oneshot::Sender<bytes::Bytes>) {
        let Some(sink) = self.sink(&c.sink).cloned() else {
            return;
        };
        // The call takes one of the sink's `concurrency` slots like any send; with none free
        // the request does not wait for one (it answers 202) and the workers send the row.
        let permit = sink.permits.clone().try_acquire_owned().ok();
        let admission = if sink.is_paused() || permit.is_none() {
            Admission::Wait(Duration::ZERO)
        } else {
            sink.breaker.lock().admit(Instant::now())
        };
        if let Admission::Wait(_) = admission {
            let release = Settlement::Release {
                at_ms: crate::now_millis(),
            };
            if let Err(e) = self.store.settle(&c, release).await {
                tracing::warn!(sink = %sink.name, error = %e,
                    "cannot release the upstream row; it comes due when its lease expires");
            }
            self.wake.notify_one();
            return;
        }
        let attempt = c.attempts + 1;
        let (mut settlement, answer, took) = self.attempt(&sink, &c).await;
        drop(permit);
        if let (Settlement::Delivered { result, .. }, Some(answer)) = (&mut settlement, answer) {
            if waiting.send(answer).is_ok() {
                // The request answers with it; nothing goes to `on_late`.
                *result = None;
            }
        }
        self.settle(Pending {
            sink,
            claim: c,
            attempt,
            settlement,
            took,
        })
        .await;
        self.wake.notify_one();
    }

    /// Wakes the worker once the sink's bucket can pay for a send (sooner than the poll).
    fn wake_after_refill(self: &Arc<Self>, sink: &Arc<SinkRuntime>) {
        let Some(wait) = sink.bucket.as_ref().map(|b| b.lock().wait(Instant::now())) else {
            return;
        };
        if wait >= self.poll || sink.refill_timer.swap(true, Ordering::SeqCst) {
            return;
        }
        let (this, sink) = (self.clone(), sink.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            sink.refill_timer.store(false, Ordering::SeqCst);
            this.wake.notify_one();
        });
    }

    /// Gives the buffered rows of a sink back to the outbox, due now, without an attempt.
    async fn release_buffer(&self, sink: &SinkRuntime) {
        let rows = sink.take_buffered(usize::MAX);
        for c in rows {
            let release = Settlement::Release {
                at_ms: crate::now_millis(),
            };
            if let Err(e) = self.store.settle(&c, release).await {
                tracing::warn!(sink = %sink.name, error = %e,
                    "cannot release a claimed row; it comes due when its lease expires");
            }
        }
    }

    /// Makes one attempt at a claimed row: sends, feeds the breaker and metrics, and decides
    /// the settlement. Returns the settlement, the sink's answer and the time it took.
    async fn attempt(
        &self,
        sink: &SinkRuntime,
        c: &Claimed,
    ) -> (Settlement, Option<bytes::Bytes>, Duration) {
        let attempt = c.attempts + 1;
        let d = Delivery {
            event_id: &c.event_id,
            correlation_id: &c.correlation_id,
            route: &c.route,
            event_type: &c.event_type,
            session_id: &c.session_id,
            attempt,
            body: &c.body,
        };
        let start = Instant::now();
        // The sink enforces its timeout itself; this bound is a backstop for any that do not.
        let limit = sink.config.timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(limit, sink.sink.call(&d)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::transient(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))),
        };
        let took = start.elapsed();
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        sink.metrics.duration.record(took.as_secs_f64());
        // A permanent refusal of one event says nothing bad about the sink's health.
        let healthy = !matches!(result, Err(SinkError::Transient { .. }));
        {
            let mut b = sink.breaker.lock();
            b.record(Instant::now(), healthy);
            sink.metrics.circuit.set(b.state(Instant::now()).gauge());
        }
        let (settlement, answer) = match result {
            Ok(answer) => {
                // Only a `respond.upstream` row hands its answer on.
                let result = c.respond_to.as_ref().map(|_| {
                    answer.as_ref().map_or_else(
                        || "null".to_string(),
                        |b| String::from_utf8_lossy(b).into_owned(),
                    )
                });
                (
                    Settlement::Delivered {
                        duration_ms,
                        result,
                    },
                    answer,
                )
            }
            Err(SinkError::Permanent { message }) => (
                Settlement::Dead {
                    reason: DeadReason::Permanent,
                    error: message,
                    duration_ms,
                },
                None,
            ),
            Err(SinkError::Transient {
                message,
                retry_after,
            }) => (
                match sink
                    .config
                    .retry
                    .next(attempt, self.jitter.draw(), retry_after)
                {
                    Next::RetryAfter(delay) => Settlement::Retry {
                        at_ms: crate::now_millis()
                            + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
                        error: message,
                        duration_ms,
                    },
                    Next::GiveUp => Settlement::Dead {
                        reason: DeadReason::Exhausted,
                        error: message,
                        duration_ms,
                    },
                },
                None,
            ),
        };
        (settlement, answer, took)
    }

    async fn deliver(&self, sink: Arc<SinkRuntime>, c: Claimed, permit: OwnedSemaphorePermit) {
        let attempt = c.attempts + 1;
        let (settlement, _, took) = self.attempt(&sink, &c).await;
        if matches!(
            settlement,
            Settlement::Delivered {
                result: Some(_),
                ..
            }
        ) {
            // An `on_late` row is about to exist.
            self.wake.notify_one();
        }
        // The send slot is free once the sink has answered; the next buffered row can go
        // while this settlement commits.
        drop(permit);
        self.wake.notify_one();
        self.settle(Pending {
            sink,
            claim: c,
            attempt,
            settlement,
            took,
        })
        .await;
    }

    /// Queues a settlement; if no flush is running, commits everything queued (in one job,
    /// repeatedly, until the queue is empty). Concurrent sends thus share commits.
    async fn settle(&self, p: Pending) {
        self.settlements.lock().push(p);
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
            let batch = std::mem::take(&mut *self.settlements.lock());
            if !batch.is_empty() {
                self.flush(batch).await;
            }
            drop(guard);
            // Something queued after the batch was taken but before the flag dropped would
            // otherwise wait for the next send: look once more.
            if self.settlements.lock().is_empty() {
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
        let items: Vec<_> = chunk
            .iter()
            .map(|p| (p.claim.clone(), p.settlement.clone()))
            .collect();
        let expires = chunk
            .iter()
            .map(|p| p.claim.lease_until_ms)
            .min()
            .unwrap_or(0);
        let margin = SETTLE_MARGIN.as_millis() as i64;
        let mut backoff = Duration::from_millis(50);
        let mut tries = 1;
        loop {
            match self.store.settle_many(items.clone()).await {
                Ok(done) => {
                    for (p, held) in chunk.iter().zip(done) {
                        if held {
                            self.record(&p.sink, &p.claim, p.attempt, &p.settlement, p.took);
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

    fn record(
        &self,
        sink: &SinkRuntime,
        c: &Claimed,
        attempt: u32,
        s: &Settlement,
        took: Duration,
    ) {
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
                (AuditKind::DeadLettered, Some(reason.as_str()))
            }
            Settlement::Release { .. } => return,
        };
        if let Settlement::Dead { reason, error, .. } = s {
            tracing::warn!(sink = %sink.name, event_id = %c.event_id, reason = reason.as_str(),
                error = %error, "delivery dead-lettered");
        }
        self.audit.write(&AuditLine {
            ts: crate::now_rfc3339(),
            event: kind,
            route: &c.route,
            correlation_id: &c.correlation_id,
            transaction_id: "",
            event_id: Some(&c.event_id),
            session_id: Some(&c.session_id),
            event_type: Some(&c.event_type),
            status: 0,
            code,
            latency_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            state_version: None,
            simulated: false,
            sink: Some(&sink.name),
            attempt: Some(attempt),
            recovered: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_draws_are_in_range_and_spread() {
        let j = Jitter::new(12345);
        let draws: Vec<f64> = (0..10_000).map(|_| j.draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((4_500..5_500).contains(&low), "{low}");
    }

    struct Nothing;
    impl Sink for Nothing {
        fn send<'a>(&'a self, _: &'a Delivery<'a>) -> crate::sinks::SendFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn cognigy_sinks_keep_to_cognigys_saas_limit_unless_told_otherwise() {
        let runtime = |table: &str| {
            let table: crate::config::SinkConfig = toml::from_str(table).expect("table");
            let spec = table.check("s").expect("a valid table");
            SinkRuntime::new(spec, Arc::new(Nothing), Duration::from_secs(1))
        };
        let now = Instant::now();
        let cognigy =
            runtime("kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"https://e\"");
        let available = cognigy.bucket.as_ref().map(|b| b.lock().available(now));
        assert_eq!(available, Some(1000));
        let own = runtime(
            "kind = \"cognigy\"\nmode = \"notify\"\nendpoint_url = \"https://e\"\n\
             rate_limit = { per = \"1s\", max = 5 }",
        );
        let available = own.bucket.as_ref().map(|b| b.lock().available(now));
        assert_eq!(available, Some(5));
        let http = runtime("kind = \"http\"\nurl = \"http://x\"");
        assert!(http.bucket.is_none());
    }
}
