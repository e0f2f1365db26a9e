//! One configured sink at run time: its client, send slots, circuit breaker, rate bucket,
//! pause switch and lag window. [`SinkRuntime::admit`] is the one decision whether it may
//! send now; `attempt` makes one send and classifies its outcome into a settlement.

use parking_lot::Mutex;
use std::collections::VecDeque;
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
}

fn dead_slot(reason: DeadReason) -> usize {
    match reason {
        DeadReason::Permanent => 0,
        DeadReason::Exhausted => 1,
        DeadReason::Expired => 2,
    }
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

    /// Long enough for a row to wait in the buffer for one send and then be sent.
    pub fn lease(&self) -> Duration {
        self.config.timeout * 2 + self.lease_margin
    }

    pub(super) fn take_buffered(&self, n: usize) -> Vec<Claimed> {
        let mut b = self.buffer.lock();
        let n = n.min(b.len());
        b.drain(..n).collect()
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
        // The sink enforces its timeout itself; this bound is a backstop for any that do not.
        let limit = self.config.timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(limit, self.sink.call(&d)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::transient(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))),
        };
        let took = start.elapsed();
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.metrics.duration.record(took.as_secs_f64());
        if let Err(e) = &result {
            *self.last_error.lock() = Some((crate::now_millis(), e.to_string()));
        }
        // A permanent refusal of one event says nothing bad about the sink's health.
        let healthy = !matches!(result, Err(SinkError::Transient { .. }));
        {
            let mut b = self.breaker.lock();
            b.record(Instant::now(), healthy);
            self.metrics.circuit.set(b.state(Instant::now()).gauge());
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
            Err(SinkError::Expired { message }) => (
                Settlement::Dead {
                    reason: DeadReason::Expired,
                    error: message,
                    duration_ms,
                },
                None,
            ),
            Err(SinkError::Transient {
                message,
                retry_after,
            }) => (
                match self.config.retry.next(attempt, jitter, retry_after) {
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
        if let Some(span) = span {
            let (outcome, class) = match &settlement {
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
        (settlement, answer, took)
    }
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
}
