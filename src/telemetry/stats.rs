//! In-process request statistics for `/stats`: the seed's counters plus latency percentiles
//! from a fixed-bucket, lock-free histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds grow by 2^(1/4) (about 19 %) from 1 µs; 100 buckets reach past 30 s.
const BUCKETS: usize = 100;

/// Request counters and a latency histogram.
pub struct Stats {
    total_requests: AtomicU64,
    total_errors: AtomicU64,
    total_rejections: AtomicU64,
    total_latency_ns: AtomicU64,
    events_committed: AtomicU64,
    duplicates: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            total_requests: AtomicU64::new(0),
            total_errors: AtomicU64::new(0),
            total_rejections: AtomicU64::new(0),
            total_latency_ns: AtomicU64::new(0),
            events_committed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket_upper_ns(i: usize) -> f64 {
    1_000.0 * 2f64.powf(i as f64 / 4.0)
}

fn bucket_of(ns: u64) -> usize {
    if ns <= 1_000 {
        return 0;
    }
    let i = (4.0 * (ns as f64 / 1_000.0).log2()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// A snapshot for `/stats`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub total_requests: u64,
    pub total_errors: u64,
    /// Requests a route's rules refused (422 `rule_rejected`): answers the route meant to give,
    /// so neither errors nor failures of `success_rate`.
    pub total_rejections: u64,
    pub total_latency_ns: u64,
    pub success_rate: f64,
    pub latency_ms: Percentiles,
    pub events_committed: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// How a request was answered, for `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Success,
    /// A rule refused it (422): the route's intended answer.
    Rejected,
    Error,
}

impl Stats {
    /// Records one answered request.
    pub fn record(&self, latency: Duration, answered: Answered) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        self.total_latency_ns.fetch_add(ns, Ordering::Relaxed);
        match answered {
            Answered::Success => {}
            Answered::Rejected => {
                self.total_rejections.fetch_add(1, Ordering::Relaxed);
            }
            Answered::Error => {
                self.total_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn committed(&self) {
        self.events_committed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let pct = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (bucket_upper_ns(i) / 1e6 * 1000.0).round() / 1000.0;
                }
            }
            bucket_upper_ns(BUCKETS - 1) / 1e6
        };
        let requests = self.total_requests.load(Ordering::Relaxed);
        let errors = self.total_errors.load(Ordering::Relaxed);
        Snapshot {
            total_requests: requests,
            total_errors: errors,
            total_rejections: self.total_rejections.load(Ordering::Relaxed),
            total_latency_ns: self.total_latency_ns.load(Ordering::Relaxed),
            success_rate: if requests == 0 {
                1.0
            } else {
                (requests - errors) as f64 / requests as f64
            },
            latency_ms: Percentiles {
                p50: pct(0.50),
                p90: pct(0.90),
                p99: pct(0.99),
            },
            events_committed: self.events_committed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_land_in_the_right_bucket() {
        let s = Stats::default();
        for _ in 0..80 {
            s.record(Duration::from_millis(1), Answered::Success);
        }
        for _ in 0..10 {
            s.record(Duration::from_millis(1), Answered::Rejected);
        }
        for _ in 0..10 {
            s.record(Duration::from_millis(100), Answered::Error);
        }
        let snap = s.snapshot();
        assert_eq!(snap.total_requests, 100);
        assert_eq!(snap.total_errors, 10);
        assert_eq!(
            snap.total_rejections, 10,
            "rule rejections apart from errors"
        );
        assert!((snap.success_rate - 0.9).abs() < 1e-9);
        // Bucket bounds are within 19 % above the true value.
        assert!(
            snap.latency_ms.p50 >= 1.0 && snap.latency_ms.p50 < 1.19,
            "{snap:?}"
        );
        assert!(
            snap.latency_ms.p90 >= 1.0 && snap.latency_ms.p90 < 1.19,
            "{snap:?}"
        );
        assert!(
            snap.latency_ms.p99 >= 100.0 && snap.latency_ms.p99 < 119.0,
            "{snap:?}"
        );
        assert_eq!(snap.total_latency_ns, 90 * 1_000_000 + 10 * 100_000_000);
    }

    #[test]
    fn empty_stats_are_zero() {
        let snap = Stats::default().snapshot();
        assert_eq!(snap.latency_ms.p99, 0.0);
        assert_eq!(snap.success_rate, 1.0);
    }
}
