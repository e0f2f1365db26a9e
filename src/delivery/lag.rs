//! Delivery lag: the time from an event's acceptance to its delivery, per sink. The
//! `cognihook_delivery_lag_seconds` histogram counts every delivery; this window keeps the
//! last few for `/admin/sinks`, which shows their percentiles without a metrics system.

use std::collections::VecDeque;

use serde::Serialize;

/// The lags of the most recent deliveries of one sink, in milliseconds.
#[derive(Debug)]
pub struct LagWindow {
    samples: VecDeque<u64>,
    capacity: usize,
}

/// Percentiles of a [`LagWindow`], in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LagSummary {
    /// Deliveries the figures are taken over.
    pub deliveries: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl LagWindow {
    pub fn new(capacity: usize) -> LagWindow {
        LagWindow {
            samples: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
        }
    }

    pub fn record(&mut self, lag_ms: u64) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(lag_ms);
    }

    /// `None` before the first delivery.
    pub fn summary(&self) -> Option<LagSummary> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest sample with at least p of them at or below it.
        let rank = |p: f64| {
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[i - 1] as f64 / 1000.0
        };
        Some(LagSummary {
            deliveries: sorted.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: rank(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_lags_and_reports_their_percentiles() {
        let mut w = LagWindow::new(100);
        assert_eq!(w.summary(), None);
        // 1,000 old deliveries of 60 s fall out of the window...
        for _ in 0..1000 {
            w.record(60_000);
        }
        // ...behind 100 new ones: 1 ms to 100 ms.
        for ms in 1..=100 {
            w.record(ms);
        }
        let s = w.summary().expect("summary");
        assert_eq!(s.deliveries, 100);
        assert_eq!(s.p50, 0.050);
        assert_eq!(s.p99, 0.099);
        assert_eq!(s.max, 0.100);
    }
}
