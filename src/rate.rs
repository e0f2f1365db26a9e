//! Rate limits of sinks (SPEC §7 `rate_limit = { per = "5m", max = 1000 }`) and of routes
//! (SPEC §12.3), as token buckets: a bucket holds at most `max` tokens and refills at
//! `max / per`. A send the bucket cannot pay for is not started, so it costs no retry attempt;
//! a request it cannot pay for is answered 429. Pure: time is passed in.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `rate_limit` of a sink (and the `per` and `max` of a route's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(with = "crate::duration::duration_str")]
    pub per: Duration,
    pub max: u32,
}

/// The bucket of one sink.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        let capacity = f64::from(limit.max);
        Bucket {
            capacity,
            per_second: capacity / limit.per.as_secs_f64().max(f64::MIN_POSITIVE),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Whole sends the bucket can pay for now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    /// Pays for `n` sends (never below empty).
    pub fn take(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// Pays for one request if it can; otherwise says how long until it could.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }

    /// Full again: the bucket is indistinguishable from a new one and can be forgotten.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// How long until one more send can be paid for.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cognigy_saas_limit_allows_a_burst_of_1000_then_one_per_300ms() {
        let t0 = Instant::now();
        let limit = RateLimit {
            per: Duration::from_secs(300),
            max: 1000,
        };
        let mut b = Bucket::new(limit, t0);
        assert_eq!(b.available(t0), 1000);
        b.take(1000, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.wait(t0), Duration::from_millis(300));
        assert_eq!(b.available(t0 + Duration::from_millis(299)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(300)), 1);
        assert_eq!(b.available(t0 + Duration::from_secs(30)), 100);
        // Never more than the burst, however long it rested.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 1000);
    }

    #[test]
    fn in_any_window_of_per_at_most_twice_max_go_out() {
        // A token bucket's worst case over one `per` window is a full burst plus one
        // window's refill; check it by sending whenever allowed, in 10 ms steps.
        let t0 = Instant::now();
        let limit = RateLimit {
            per: Duration::from_secs(1),
            max: 10,
        };
        let mut b = Bucket::new(limit, t0);
        let mut sent = Vec::new();
        for step in 0..300u64 {
            let now = t0 + Duration::from_millis(step * 10);
            let n = b.available(now);
            b.take(n, now);
            sent.extend(std::iter::repeat_n(step * 10, n));
        }
        for (i, &start) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&t| t < start + 1000).count();
            assert!(
                in_window <= 20,
                "{in_window} sends in the second from {start} ms"
            );
        }
        assert_eq!(sent.len(), 10 + 29, "burst plus refill over 2.99 s");
    }
}
