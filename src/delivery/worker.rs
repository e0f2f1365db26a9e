//! The delivery worker: the loop that claims due outbox rows per sink, starts their sends
//! (bounded per sink) and has them settled as delivered, retry-at-time or dead letter.
//!
//! Invariants: a row is marked delivered only after its sink said so; a send that is cut off
//! (shutdown past the grace period, crash) is never settled and comes due again when its lease
//! expires; an attempt skipped because the sink is paused or its circuit is open is not
//! claimed, so it does not count. The worker wakes when ingest commits rows for a sink
//! ([`Deliverer::wake`]) and polls as a fallback.
//!
//! Beside it: `sink` (one sink's slots, breaker, rate bucket and the admission decision over
//! them, and one attempt), `settle` (committing settlements in batches), `respond` (the
//! `respond.upstream` calls made for a waiting request), `pace` (holding back while ingest is
//! saturated, read from `crate::load`).

use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pace::{Allowance, Pacer};
use super::settle::{Pending, Settler};
use super::sink::{Gate, Outgoing, SinkRuntime};
use crate::load::IngestLoad;
use crate::store::{Claimed, Settlement, Store};
use crate::telemetry::audit::Audit;

/// The delivery workers of one process.
pub struct Deliverer {
    pub(super) store: Store,
    sinks: Vec<Arc<SinkRuntime>>,
    pub(super) wake: Notify,
    pub(super) tracker: TaskTracker,
    poll: Duration,
    pub(super) jitter: Jitter,
    pub(super) settler: Settler,
    /// Ingest's load, raised by HTTP (owned by `app`): what the pacer reads saturation from.
    load: Arc<IngestLoad>,
    /// Holds sends to a share of the acceptance rate while ingest is saturated.
    pacer: Mutex<Pacer>,
    /// Trace spans of attempts (set once by `app` when tracing is on).
    tracer: std::sync::OnceLock<crate::telemetry::trace::Tracer>,
}

/// Uniform draws in `[0, 1)` for full jitter (xorshift64; jitter needs spread, not secrecy).
pub(super) struct Jitter(AtomicU64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(AtomicU64::new(seed | 1))
    }

    pub(super) fn draw(&self) -> f64 {
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
        load: Arc<IngestLoad>,
    ) -> Arc<Deliverer> {
        let seed = RandomState::new().hash_one(std::process::id());
        let floor = sinks.iter().map(|s| s.config.concurrency.max(1)).sum();
        Arc::new(Deliverer {
            settler: Settler::new(store.clone(), audit),
            store,
            sinks,
            wake: Notify::new(),
            tracker: TaskTracker::new(),
            poll,
            jitter: Jitter::new(seed),
            load,
            // At least one round for every sink per interval, as if each had its slots free.
            pacer: Mutex::new(Pacer::new(busy.interval, busy.share, floor).with_cpus(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
            tracer: std::sync::OnceLock::new(),
        })
    }

    /// Records a span per attempt from now on.
    pub fn set_tracer(&self, tracer: crate::telemetry::trace::Tracer) {
        let _ = self.tracer.set(tracer);
    }

    /// The span of an attempt at `c`: under `parent` (a request's own `respond` call), else
    /// linked to the event's request span. `None` when tracing is off.
    pub(super) fn attempt_span(
        &self,
        sink: &SinkRuntime,
        c: &Claimed,
        parent: Option<&opentelemetry::Context>,
    ) -> Option<crate::telemetry::trace::Traced> {
        let tracer = self.tracer.get().filter(|t| t.is_on())?;
        tracer.attempt(
            &sink.name,
            sink.config.kind().name(),
            c.attempts + 1,
            parent,
            crate::event::traceparent_in(&c.body),
        )
    }

    /// The sink registry: every configured sink, in configuration order.
    pub fn sinks(&self) -> &[Arc<SinkRuntime>] {
        &self.sinks
    }

    pub fn sink(&self, name: &str) -> Option<&Arc<SinkRuntime>> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Tells the worker that rows may be due (new rows, a replay, a resume).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sets the CPUs the pacer's saturation test counts (by default the CPUs this process may
    /// run on); 0 leaves the CPU out, so crowding alone decides (tests drive it that way).
    pub fn set_busy_cpus(&self, cpus: usize) {
        self.pacer.lock().set_cpus(cpus);
    }

    /// What the run loop may start now (see [`Pacer`]): freely below saturation, a share of
    /// the acceptance rate while ingest is saturated.
    pub fn allowance(&self) -> Allowance {
        self.pacer
            .lock()
            .allowance(Instant::now(), self.load.read())
    }

    /// Runs until `shutdown`, then stops claiming and waits up to `grace` for sends in flight.
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

    /// [`Deliverer::tick`], starting at most `limit` sends (requests: a batch is one) in all.
    pub async fn tick_limited(self: &Arc<Self>, limit: Option<usize>) -> usize {
        let mut started = 0;
        for sink in &self.sinks {
            let left = limit.map_or(usize::MAX, |l| l.saturating_sub(started));
            if left == 0 {
                break;
            }
            match sink.admit(Instant::now(), left) {
                Gate::Go { take, probe } => started += self.start(sink, take, probe).await,
                Gate::Busy => {}
                Gate::Closed => self.release_buffer(sink).await,
                Gate::RateLimited { wait } => {
                    self.release_buffer(sink).await;
                    self.wake_after_refill(sink, wait);
                }
            }
        }
        started
    }

    /// Starts up to `take` sends of `sink` (each one event, or with `batch` up to `batch.max`)
    /// from its buffer, claiming first when the buffer holds fewer rows (for the free slots
    /// plus `SinkRuntime::ahead`: one more round of unbatched sends, more while the sink
    /// sends quickly, or one more batch, in one claim). Returns how many sends it started.
    async fn start(self: &Arc<Self>, sink: &Arc<SinkRuntime>, take: usize, probe: bool) -> usize {
        let per = sink.per_request();
        let wanted = take.saturating_mul(per);
        if sink.buffered() < wanted {
            let ahead = if probe { 0 } else { sink.ahead(Instant::now()) };
            let want = wanted + ahead - sink.buffered();
            match self.store.claim(&sink.name, want, sink.lease()).await {
                Ok(rows) => sink.buffer.lock().extend(rows),
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, "claim failed; will retry")
                }
            }
        }
        // Paused while the claim ran (it may have found rows committed after the pause): the
        // rows wait in the buffer, and the next round gives them back.
        if sink.is_paused() {
            if probe {
                sink.breaker.lock().release_probe();
            }
            return 0;
        }
        let sends = sink.take_sends(take);
        if let Some(bucket) = &sink.bucket {
            bucket.lock().take(sends.len(), Instant::now());
        }
        if sends.is_empty() && probe {
            sink.breaker.lock().release_probe();
        }
        let mut started = 0;
        let mut sends = sends.into_iter();
        while let Some(send) = sends.next() {
            let Ok(permit) = sink.permits.clone().try_acquire_owned() else {
                // A `respond` call took the slot since the sink was admitted: the rows go
                // back to the buffer for the next round.
                sink.unsend(std::iter::once(send).chain(sends));
                break;
            };
            started += 1;
            let (this, sink) = (self.clone(), sink.clone());
            match send {
                Outgoing::One(c) => self
                    .tracker
                    .spawn(async move { this.deliver(sink, *c, permit).await }),
                Outgoing::Batch(rows) => self
                    .tracker
                    .spawn(async move { this.deliver_batch(sink, rows, permit).await }),
            };
        }
        started
    }

    /// Wakes the worker once the sink's bucket can pay for a send (sooner than the poll).
    fn wake_after_refill(self: &Arc<Self>, sink: &Arc<SinkRuntime>, wait: Duration) {
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

    async fn deliver(&self, sink: Arc<SinkRuntime>, c: Claimed, permit: OwnedSemaphorePermit) {
        let span = self.attempt_span(&sink, &c, None);
        let (settlement, _, took) = sink.attempt(&c, self.jitter.draw(), span).await;
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
        self.settler
            .settle(Pending {
                sink,
                claim: c,
                settlement,
                took,
            })
            .await;
    }

    /// [`Deliverer::deliver`] for an array of events (`batch`): one request, a settlement
    /// per row.
    async fn deliver_batch(
        &self,
        sink: Arc<SinkRuntime>,
        rows: Vec<Claimed>,
        permit: OwnedSemaphorePermit,
    ) {
        let spans = rows
            .iter()
            .map(|c| self.attempt_span(&sink, c, None))
            .collect();
        let (settlements, took) = sink.attempt_batch(&rows, self.jitter.draw(), spans).await;
        drop(permit);
        self.wake.notify_one();
        let pending = rows
            .into_iter()
            .zip(settlements)
            .map(|(claim, settlement)| Pending {
                sink: sink.clone(),
                claim,
                settlement,
                took,
            })
            .collect();
        self.settler.settle_all(pending).await;
        // Rows of a refused batch are due again at once, each alone.
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::{Delivery, Sink};

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
            let spec = crate::delivery::spec::SinkSpec::check("s", &table).expect("a valid table");
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
