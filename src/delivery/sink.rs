//! One configured sink at run time: its client, send slots, circuit breaker, rate bucket,
//! pause switch and lag window. [`SinkRuntime::admit`] is the one decision whether it may
//! send now; `attempt` makes one send and classifies its outcome into a settlement.

use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::breaker::{Admission, Breaker, CircuitState};
use super::lag::{LagSummary, LagWindow};
use super::retry::Next;
use super::spec::SinkSpec;
use crate::rate::Bucket;
use crate::sinks::{Delivery, Sink, SinkError};
use crate::store::{Claimed, DeadReason, Settlement};
use crate::telemetry::metrics::SinkMetrics;

/// Deliveries whose lag `/admin/sinks` summarises, per sink.
const LAG_WINDOW: usize = 1024;

/// Rows marked to be sent alone (after a batch refusal) that a sink remembers at most; past
/// it, a row is batched again (and split again if that batch is refused too).
const ALONE_CAP: usize = 65_536;

/// An unbatched sink that finishes sends quickly claims about what it finishes in this
/// long beyond its free slots ([`SinkRuntime::ahead`]): a backlog is then read in fewer,
/// larger claims (each claim has a fixed cost on the store's side).
const AHEAD_WINDOW: Duration = Duration::from_millis(20);

/// The most rows an unbatched sink claims ahead of its free slots. Measured on a drain of
/// ~320k rows (bench/README.md, forty-fifth session): 256 drained 10-13 % faster than one
/// round of 32; 1,024 no faster than 256.
const MAX_AHEAD: usize = 256;

/// How fast a sink has been finishing sends, for [`SinkRuntime::ahead`].
struct Pace {
    /// When `finished` was last read.
    since: Instant,
    /// `finished` then.
    finished: u64,
    /// The rows to claim ahead until the next reading.
    ahead: usize,
}

/// One request the worker starts.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// One event as itself (sinks without `batch`, and `respond.upstream` rows, whose answer
    /// is the one event's).
    One(Box<Claimed>),
    /// Events as one JSON array (`batch`).
    Batch(Vec<Claimed>),
}

impl Outgoing {
    fn into_rows(self) -> Vec<Claimed> {
        match self {
            Outgoing::One(c) => vec![*c],
            Outgoing::Batch(rows) => rows,
        }
    }
}

/// What [`SinkRuntime::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Start up to `take` sends; `probe`: the one trial send of a half-open circuit.
    Go { take: usize, probe: bool },
    /// Every send slot is taken: the next finished send wakes the worker.
    Busy,
    /// Paused, or the circuit is open: nothing goes, claimed rows go back uncounted.
    Closed,
    /// Over the rate limit: nothing is attempted (no attempt is used) and claimed rows go
    /// back; a send is paid for after `wait`.
    RateLimited { wait: Duration },
}

/// A configured sink with its client, limits and health.
pub struct SinkRuntime {
    pub name: String,
    pub config: SinkSpec,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) breaker: Mutex<Breaker>,
    paused: AtomicBool,
    pub(super) metrics: SinkMetrics,
    /// Rows claimed ahead of free send slots, so a finished send starts the next one without
    /// waiting for a claim to commit. Their leases cover two sends.
    pub(super) buffer: Mutex<VecDeque<Claimed>>,
    /// The sink's `rate_limit`, if it has one; `cognigy` sinks calling the same host share
    /// one (see `delivery::build_sinks`).
    pub(super) bucket: Option<Arc<Mutex<Bucket>>>,
    /// A wake-up after the bucket refills is already scheduled.
    pub(super) refill_timer: AtomicBool,
    lease_margin: Duration,
    /// The lags of the latest deliveries (for `/admin/sinks`).
    pub(super) lags: Mutex<LagWindow>,
    /// Dead letters made by this process, by reason (permanent, exhausted, expired), for
    /// the alerts.
    dead: [AtomicU64; 3],
    /// The latest failed attempt's error and when (Unix ms), for the console.
    last_error: Mutex<Option<(i64, String)>>,
    /// Outbox rows of a refused batch, to be sent alone until delivered or dead-lettered.
    alone: Mutex<HashSet<i64>>,
    /// Sends finished (any outcome), for the claim-ahead's pace.
    finished: AtomicU64,
    pace: Mutex<Pace>,
}

fn dead_slot(reason: DeadReason) -> usize {
    match reason {
        DeadReason::Permanent => 0,
        DeadReason::Exhausted => 1,
        DeadReason::Expired => 2,
    }
}

/// The rows to claim ahead for a sink that finished `done` sends in `elapsed`: what it
/// finishes in [`AHEAD_WINDOW`] at that pace, at least `round`, at most [`MAX_AHEAD`] (or
/// `round` when that is more).
fn ahead_for(done: u64, elapsed: Duration, round: usize) -> usize {
    let secs = elapsed.as_secs_f64();
    let per_window = if secs > 0.0 {
        done as f64 * AHEAD_WINDOW.as_secs_f64() / secs
    } else {
        0.0
    };
    (per_window as usize).clamp(round, MAX_AHEAD.max(round))
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
                .map(|r| Arc::new(Mutex::new(Bucket::new(r, Instant::now())))),
            refill_timer: AtomicBool::new(false),
            lags: Mutex::new(LagWindow::new(LAG_WINDOW)),
            dead: Default::default(),
            last_error: Mutex::new(None),
            alone: Mutex::new(HashSet::new()),
            finished: AtomicU64::new(0),
            pace: Mutex::new(Pace {
                since: Instant::now(),
                finished: 0,
                ahead: config.concurrency.max(1),
            }),
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

    /// The sink's client (the alerts send a store alert with it directly).
    pub fn client(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// The latest failed attempt's error and when (Unix ms) on this replica.
    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error.lock().clone()
    }

    /// The rate limit and how many sends it allows now (`None`: no limit).
    pub fn rate_state(&self) -> Option<(usize, crate::rate::RateLimit)> {
        let bucket = self.bucket.as_ref()?;
        let limit = self.config.rate_limit.unwrap_or(crate::rate::RateLimit {
            per: Duration::from_secs(300),
            max: 1000,
        });
        Some((bucket.lock().available(Instant::now()), limit))
    }

    /// Times the circuit has opened since the start.
    pub fn times_opened(&self) -> u64 {
        self.breaker.lock().times_opened()
    }

    /// Counts a dead letter of this sink.
    pub(super) fn dead_lettered(&self, reason: DeadReason) {
        self.dead[dead_slot(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Dead letters this process made, per reason, since the start.
    pub fn dead_letters_made(&self) -> [(DeadReason, u64); 3] {
        [
            DeadReason::Permanent,
            DeadReason::Exhausted,
            DeadReason::Expired,
        ]
        .map(|r| (r, self.dead[dead_slot(r)].load(Ordering::Relaxed)))
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

    /// A claim's lease: a row may wait in the buffer and still be sent within it; a row
    /// whose lease could run out during its send is not sent ([`SinkRuntime::take_sends`]).
    pub fn lease(&self) -> Duration {
        self.config.timeout * 2 + self.lease_margin
    }

    /// How many rows to claim beyond the free send slots: one round of sends
    /// (`concurrency`), or one batch with `batch`; an unbatched sink that finishes sends
    /// quickly claims what it finished in the last [`AHEAD_WINDOW`] instead, up to
    /// [`MAX_AHEAD`]. A slow sink so holds no more than a round, and a fast one's rows wait
    /// in the buffer for a few milliseconds.
    pub(super) fn ahead(&self, now: Instant) -> usize {
        let round = self.config.concurrency.max(self.per_request());
        if self.config.batch.is_some() {
            // Its rows ahead would otherwise be `concurrency × max` events held in memory.
            return round;
        }
        let mut pace = self.pace.lock();
        let elapsed = now.saturating_duration_since(pace.since);
        if elapsed >= AHEAD_WINDOW {
            let finished = self.finished.load(Ordering::Relaxed);
            let done = finished.saturating_sub(pace.finished);
            pace.ahead = ahead_for(done, elapsed, round);
            pace.since = now;
            pace.finished = finished;
        }
        pace.ahead
    }

    /// Takes up to `n` rows from the front of the buffer that can still be sent (see
    /// [`SinkRuntime::keep_sendable`]).
    pub(super) fn take_buffered(&self, n: usize) -> Vec<Claimed> {
        let mut b = self.buffer.lock();
        self.keep_sendable(&mut b, crate::now_millis());
        let n = n.min(b.len());
        b.drain(..n).collect()
    }

    /// Drops from the buffer every row whose lease would run out before a send started now
    /// could end (at `now_ms` plus the sink's timeout): its settlement could no longer
    /// land, and once the lease ends another claim may take the row. Such a row is neither
    /// sent nor settled; it comes due again when its lease runs out.
    fn keep_sendable(&self, b: &mut VecDeque<Claimed>, now_ms: i64) {
        let timeout_ms = i64::try_from(self.config.timeout.as_millis()).unwrap_or(i64::MAX);
        let by = now_ms.saturating_add(timeout_ms);
        let before = b.len();
        b.retain(|c| c.lease_until_ms >= by);
        if b.len() < before {
            tracing::debug!(sink = %self.name, dropped = before - b.len(),
                "buffered rows whose lease cannot cover a send are left to come due again");
        }
    }

    /// Events one request carries at most (1 without `batch`).
    pub(super) fn per_request(&self) -> usize {
        self.config.batch.map_or(1, |b| b.max.max(1))
    }

    /// Takes up to `requests` sends of buffered rows, in buffer order: single events without `batch`; with it, arrays of the rows at the front, each
    /// up to `batch.max` events and `batch.max_bytes`, a `respond.upstream` row on its own
    /// (and not as an array), a row of a refused batch in an array of one.
    pub(super) fn take_sends(&self, requests: usize) -> Vec<Outgoing> {
        let Some(batch) = self.config.batch else {
            return self
                .take_buffered(requests)
                .into_iter()
                .map(|c| Outgoing::One(Box::new(c)))
                .collect();
        };
        let mut b = self.buffer.lock();
        self.keep_sendable(&mut b, crate::now_millis());
        let alone = self.alone.lock();
        let mut sends = Vec::new();
        while sends.len() < requests {
            let Some(first) = b.pop_front() else { break };
            if first.respond_to.is_some() {
                sends.push(Outgoing::One(Box::new(first)));
                continue;
            }
            let single = alone.contains(&first.outbox_id);
            let mut bytes = first.body.len() + 2;
            let mut group = vec![first];
            while !single && group.len() < batch.max {
                let fits = b.front().is_some_and(|next| {
                    next.respond_to.is_none()
                        && !alone.contains(&next.outbox_id)
                        && bytes + next.body.len() < batch.max_bytes
                });
                if !fits {
                    break;
                }
                let Some(next) = b.pop_front() else { break };
                bytes += next.body.len() + 1;
                group.push(next);
            }
            sends.push(Outgoing::Batch(group));
        }
        sends
    }

    /// Puts sends that could not start back at the front of the buffer, in order.
    pub(super) fn unsend(&self, sends: impl IntoIterator<Item = Outgoing>) {
        let rows: Vec<Claimed> = sends.into_iter().flat_map(Outgoing::into_rows).collect();
        let mut b = self.buffer.lock();
        for c in rows.into_iter().rev() {
            b.push_front(c);
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.buffer.lock().len()
    }

    /// Whether this sink may start sends now, and how many of the `left` the worker may
    /// still start: the one decision that weighs the pause switch, the free send slots, the
    /// circuit breaker and the rate bucket, in that order.
    pub(super) fn admit(&self, now: Instant, left: usize) -> Gate {
        if self.is_paused() {
            return Gate::Closed;
        }
        let free = self.permits.available_permits();
        if free == 0 {
            return Gate::Busy;
        }
        let (take, probe) = match self.breaker.lock().admit(now) {
            Admission::Go => (free.min(left), false),
            Admission::Probe => (1, true),
            Admission::Wait(_) => return Gate::Closed,
        };
        let Some(bucket) = &self.bucket else {
            return Gate::Go { take, probe };
        };
        let mut bucket = bucket.lock();
        match bucket.available(now) {
            0 => {
                if probe {
                    self.breaker.lock().release_probe();
                }
                Gate::RateLimited {
                    wait: bucket.wait(now),
                }
            }
            allowed => Gate::Go {
                take: take.min(allowed),
                probe,
            },
        }
    }

    /// Makes one attempt at a claimed row: sends, feeds the breaker and metrics, and decides
    /// the settlement (`jitter`: a uniform draw in `[0, 1)` for the retry delay). Returns the
    /// settlement, the sink's answer and the time it took.
    /// `span`: the attempt's trace span when tracing is on (ended here, with the outcome).
    pub(super) async fn attempt(
        &self,
        c: &Claimed,
        jitter: f64,
        span: Option<crate::telemetry::trace::Traced>,
    ) -> (Settlement, Option<bytes::Bytes>, Duration) {
        let attempt = c.attempts + 1;
        let traceparent = span.as_ref().map(|s| s.traceparent());
        let d = Delivery {
            traceparent: traceparent.as_deref(),
            event_id: &c.event_id,
            correlation_id: &c.correlation_id,
            route: &c.route,
            event_type: &c.event_type,
            session_id: &c.session_id,
            attempt,
            body: &c.body,
        };
        let start = Instant::now();
        let result = self.bounded(self.sink.call(&d)).await;
        let took = start.elapsed();
        let duration_ms = self.observe_outcome(took, result.as_ref().err());
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
            Err(e) => (self.failed(c, e, jitter, duration_ms), None),
        };
        if let Some(span) = span {
            end_span(span, c, &settlement);
        }
        (settlement, answer, took)
    }

    /// Makes one attempt at several claimed rows as one request (`batch`): the outcome is
    /// the batch's, each row settled by it with its own attempt count. A batch the sink
    /// refuses permanently says nothing about which event it objected to: its rows are
    /// retried at once, each alone (see [`SinkRuntime::send_alone`]), so that only the
    /// event it refuses is dead-lettered. `spans`: one per row when tracing is on.
    pub(super) async fn attempt_batch(
        &self,
        rows: &[Claimed],
        jitter: f64,
        spans: Vec<Option<crate::telemetry::trace::Traced>>,
    ) -> (Vec<Settlement>, Duration) {
        let traceparent = spans
            .first()
            .and_then(|s| s.as_ref())
            .map(|s| s.traceparent());
        let batch: Vec<Delivery<'_>> = rows
            .iter()
            .enumerate()
            .map(|(i, c)| Delivery {
                traceparent: if i == 0 { traceparent.as_deref() } else { None },
                event_id: &c.event_id,
                correlation_id: &c.correlation_id,
                route: &c.route,
                event_type: &c.event_type,
                session_id: &c.session_id,
                attempt: c.attempts + 1,
                body: &c.body,
            })
            .collect();
        let start = Instant::now();
        let result = self.bounded(self.sink.send_batch(&batch)).await;
        let took = start.elapsed();
        let duration_ms = self.observe_outcome(took, result.as_ref().err());
        let settlements: Vec<Settlement> = match result {
            Ok(()) => rows
                .iter()
                .map(|_| Settlement::Delivered {
                    duration_ms,
                    result: None,
                })
                .collect(),
            Err(SinkError::Permanent { message }) if rows.len() > 1 => {
                let mut alone = self.alone.lock();
                rows.iter()
                    .map(|c| {
                        if alone.len() < ALONE_CAP {
                            alone.insert(c.outbox_id);
                        }
                        Settlement::Retry {
                            at_ms: crate::now_millis(),
                            error: format!(
                                "{message} (a batch of {}; each event is sent alone next)",
                                rows.len()
                            ),
                            duration_ms,
                        }
                    })
                    .collect()
            }
            Err(e) => rows
                .iter()
                .map(|c| self.failed(c, e.clone(), jitter, duration_ms))
                .collect(),
        };
        if let [c] = rows {
            if !matches!(settlements.first(), Some(Settlement::Retry { .. })) {
                self.alone.lock().remove(&c.outbox_id);
            }
        }
        for ((span, c), s) in spans.into_iter().zip(rows).zip(&settlements) {
            if let Some(span) = span {
                end_span(span, c, s);
            }
        }
        (settlements, took)
    }

    /// Runs a send under the backstop bound: the sink enforces its timeout itself; this
    /// catches any that do not.
    async fn bounded<T>(
        &self,
        send: impl std::future::Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        let limit = self.config.timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, send).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::transient(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))),
        }
    }

    /// Feeds one request's outcome to the metrics, the last error and the breaker; returns
    /// its duration in ms.
    fn observe_outcome(&self, took: Duration, error: Option<&SinkError>) -> u64 {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.metrics.duration.record(took.as_secs_f64());
        if let Some(e) = error {
            *self.last_error.lock() = Some((crate::now_millis(), e.to_string()));
        }
        // A permanent refusal of one event says nothing bad about the sink's health.
        let healthy = !matches!(error, Some(SinkError::Transient { .. }));
        let mut b = self.breaker.lock();
        b.record(Instant::now(), healthy);
        self.metrics.circuit.set(b.state(Instant::now()).gauge());
        u64::try_from(took.as_millis()).unwrap_or(u64::MAX)
    }

    /// The settlement of a failed attempt at `c`: dead letter or retry by the policy.
    fn failed(&self, c: &Claimed, e: SinkError, jitter: f64, duration_ms: u64) -> Settlement {
        match e {
            SinkError::Permanent { message } => Settlement::Dead {
                reason: DeadReason::Permanent,
                error: message,
                duration_ms,
            },
            SinkError::Expired { message } => Settlement::Dead {
                reason: DeadReason::Expired,
                error: message,
                duration_ms,
            },
            SinkError::Transient {
                message,
                retry_after,
            } => match self.config.retry.next(c.attempts + 1, jitter, retry_after) {
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
        }
    }
}

/// Ends an attempt's span with the outcome of its row.
fn end_span(span: crate::telemetry::trace::Traced, c: &Claimed, settlement: &Settlement) {
    let (outcome, class) = match settlement {
        Settlement::Delivered { .. } => ("delivered", None),
        Settlement::Retry { .. } => ("retry", Some("transient")),
        Settlement::Dead { reason, .. } => ("dead_lettered", Some(reason.class())),
        Settlement::Release { .. } => ("released", None),
    };
    span.set([
        opentelemetry::KeyValue::new("cognihook.outcome", outcome),
        opentelemetry::KeyValue::new("cognihook.event_id", c.event_id.clone()),
        opentelemetry::KeyValue::new("cognihook.correlation_id", c.correlation_id.clone()),
        opentelemetry::KeyValue::new("cognihook.session_id", c.session_id.clone()),
        opentelemetry::KeyValue::new("cognihook.route", c.route.clone()),
    ]);
    if let Some(class) = class {
        span.set([opentelemetry::KeyValue::new("error.type", class)]);
        span.fail(format!("delivery failed ({class})"));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Sink for Nothing {
        fn send<'a>(&'a self, _: &'a Delivery<'a>) -> crate::sinks::SendFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    fn runtime(extra: &str) -> SinkRuntime {
        let table: crate::config::SinkConfig = toml::from_str(&format!(
            "kind = \"http\"\nurl = \"http://127.0.0.1:1/\"\nconcurrency = 2\n{extra}"
        ))
        .expect("table");
        let spec = SinkSpec::check("s", &table).expect("valid");
        SinkRuntime::new(spec, Arc::new(Nothing), Duration::from_secs(1))
    }

    #[test]
    fn admission_weighs_pause_slots_breaker_and_rate_in_that_order() {
        let now = Instant::now();
        let s = runtime("rate_limit = { per = \"1m\", max = 3 }\nbreaker = { failure_threshold = 1, cool_down = \"1m\" }");
        assert_eq!(
            s.admit(now, 10),
            Gate::Go {
                take: 2,
                probe: false
            },
            "the free slots"
        );
        assert_eq!(
            s.admit(now, 1),
            Gate::Go {
                take: 1,
                probe: false
            },
            "what is left"
        );
        s.set_paused(true);
        assert_eq!(s.admit(now, 10), Gate::Closed);
        s.set_paused(false);
        let held: Vec<_> = (0..2)
            .map(|_| s.permits.clone().try_acquire_owned().expect("slot"))
            .collect();
        assert_eq!(s.admit(now, 10), Gate::Busy);
        drop(held);
        s.bucket.as_ref().expect("bucket").lock().take(3, now);
        match s.admit(now, 10) {
            Gate::RateLimited { wait } => assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(20),
                "{wait:?}"
            ),
            other => panic!("rate limited, not {other:?}"),
        }
        s.breaker.lock().record(now, false);
        assert_eq!(s.admit(now, 10), Gate::Closed, "the circuit opened");
    }

    fn row(id: i64, body_len: usize, respond: bool) -> Claimed {
        Claimed {
            outbox_id: id,
            lease_token: String::new(),
            sink: "s".into(),
            event_id: format!("e{id}"),
            correlation_id: String::new(),
            route: String::new(),
            session_id: String::new(),
            event_type: String::new(),
            attempts: 0,
            body: bytes::Bytes::from(vec![b' '; body_len]),
            respond_to: respond.then(String::new),
            created_at_ms: 0,
            lease_until_ms: i64::MAX,
        }
    }

    fn shape(sends: &[Outgoing]) -> Vec<String> {
        sends
            .iter()
            .map(|s| match s {
                Outgoing::One(c) => format!("one {}", c.outbox_id),
                Outgoing::Batch(rows) => {
                    let ids: Vec<String> = rows.iter().map(|c| c.outbox_id.to_string()).collect();
                    format!("[{}]", ids.join(","))
                }
            })
            .collect()
    }

    #[test]
    fn batches_are_formed_in_buffer_order_within_count_and_bytes() {
        let plain = runtime("");
        plain
            .buffer
            .lock()
            .extend((1..=3).map(|i| row(i, 10, false)));
        assert_eq!(shape(&plain.take_sends(2)), ["one 1", "one 2"]);

        // Arrays of up to 3 events and 100 bytes ("[" + bodies joined by "," + "]").
        let s = runtime("batch = { max = 3, max_bytes = 100 }");
        assert_eq!(s.per_request(), 3);
        s.buffer.lock().extend([
            row(1, 10, false),
            row(2, 10, false),
            row(3, 10, false),
            row(4, 10, false),
            row(5, 60, false),
            row(6, 30, false),
            row(7, 10, true),
            row(8, 10, false),
            row(9, 200, false),
        ]);
        assert_eq!(
            shape(&s.take_sends(10)),
            ["[1,2,3]", "[4,5]", "[6]", "one 7", "[8]", "[9]"],
            "full by count, full by bytes, a respond row alone, an oversized event alone"
        );
        s.buffer.lock().extend((10..=15).map(|i| row(i, 1, false)));
        assert_eq!(shape(&s.take_sends(1)), ["[10,11,12]"], "one request");
        assert_eq!(shape(&s.take_sends(5)), ["[13,14,15]"]);
        s.alone.lock().insert(16);
        s.buffer.lock().extend((15..=18).map(|i| row(i, 1, false)));
        let sends = s.take_sends(5);
        assert_eq!(
            shape(&sends),
            ["[15]", "[16]", "[17,18]"],
            "a refused batch's row goes alone"
        );
        s.unsend(sends);
        let back: Vec<i64> = s.buffer.lock().iter().map(|c| c.outbox_id).collect();
        assert_eq!(back, [15, 16, 17, 18], "put back in order");
    }

    #[test]
    fn a_half_open_circuit_over_the_rate_limit_gives_its_probe_back() {
        let now = Instant::now();
        let s = runtime("rate_limit = { per = \"1m\", max = 1 }\nbreaker = { failure_threshold = 1, cool_down = \"1s\" }");
        s.breaker.lock().record(now, false);
        let later = now + Duration::from_secs(2);
        s.bucket.as_ref().expect("bucket").lock().take(1, later);
        assert!(matches!(s.admit(later, 10), Gate::RateLimited { .. }));
        // The probe was given back: once the bucket refills, the probe goes.
        let refilled = later + Duration::from_secs(61);
        assert_eq!(
            s.admit(refilled, 10),
            Gate::Go {
                take: 1,
                probe: true
            }
        );
    }

    #[test]
    fn a_fast_sink_claims_what_it_finishes_in_the_window_and_a_slow_one_a_round() {
        let window = AHEAD_WINDOW;
        assert_eq!(ahead_for(0, window, 32), 32, "idle: one round");
        assert_eq!(ahead_for(10, window * 10, 32), 32, "slow: one round");
        assert_eq!(
            ahead_for(100, window, 32),
            100,
            "what it finished in a window"
        );
        assert_eq!(ahead_for(200, window * 2, 32), 100, "at that pace");
        assert_eq!(
            ahead_for(30_000, Duration::from_secs(1), 32),
            MAX_AHEAD,
            "capped"
        );
        assert_eq!(ahead_for(30_000, window, 500), 500, "never below a round");
        assert_eq!(ahead_for(5, Duration::ZERO, 8), 8);

        let s = runtime("");
        let start = s.pace.lock().since;
        assert_eq!(s.ahead(start), 2, "before any send: one round");
        for _ in 0..40 {
            s.observe_outcome(Duration::from_millis(1), None);
        }
        assert_eq!(s.ahead(start + window / 2), 2, "read once a window");
        assert_eq!(s.ahead(start + window), 40, "40 sends in one window");
        assert_eq!(
            s.ahead(start + window * 3),
            2,
            "none since: one round again"
        );

        let batched = runtime("batch = { max = 50 }");
        for _ in 0..1000 {
            batched.observe_outcome(Duration::from_millis(1), None);
        }
        let since = batched.pace.lock().since;
        assert_eq!(
            batched.ahead(since + window),
            50,
            "a batching sink: one batch"
        );
    }

    #[test]
    fn a_buffered_row_whose_lease_cannot_cover_a_send_is_not_sent() {
        let now = crate::now_millis();
        let lease = |id: i64, until: i64| Claimed {
            lease_until_ms: until,
            ..row(id, 10, false)
        };
        for s in [
            runtime("timeout = \"10s\""),
            runtime("timeout = \"10s\"\nbatch = { max = 10 }"),
        ] {
            s.buffer.lock().extend([
                lease(1, now + 60_000),
                lease(2, now + 5_000),
                lease(3, now - 1),
                lease(4, now + 60_000),
            ]);
            let sent: Vec<i64> = s
                .take_sends(10)
                .into_iter()
                .flat_map(Outgoing::into_rows)
                .map(|c| c.outbox_id)
                .collect();
            assert_eq!(sent, [1, 4], "rows 2 and 3 would be sent past their lease");
            assert_eq!(s.buffered(), 0, "and are not kept either");
        }
    }
}
