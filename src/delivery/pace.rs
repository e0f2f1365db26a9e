//! How fast the delivery workers may start sends while ingest is saturated (pure, with the
//! clock passed in).
//!
//! Below saturation deliveries run freely. While ingest is saturated (`[delivery] busy`:
//! at least `in_flight` webhook requests in flight at once, seen within the last `interval`),
//! the CPU the sends would take is what Cognigy's answers are waiting for, so deliveries are
//! held to a share of the rate events are being accepted at: per `interval`, sends for
//! `share` of the outbox rows accepted in the interval before, and never fewer than `floor`
//! (so deliveries never stop, even while only bad requests arrive). The backlog this leaves
//! is drained at full speed once ingest is below saturation.

use std::time::{Duration, Instant};

/// What the workers may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Send whatever is due.
    Free,
    /// Start at most this many sends now.
    Sends(usize),
    /// This window's sends are spent; ask again after this long.
    Wait(Duration),
}

/// The pacing state of one process's workers.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    share: f64,
    floor: usize,
    /// When and at which acceptance count the rate was last read.
    last: Option<(Instant, u64)>,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    budget: usize,
    started: usize,
}

impl Pacer {
    /// `interval` zero never holds back; `share` is clamped to (0, 1]; `floor` is the fewest
    /// sends a window allows.
    pub fn new(interval: Duration, share: f64, floor: usize) -> Pacer {
        Pacer {
            interval,
            share: if share.is_finite() {
                share.clamp(f64::MIN_POSITIVE, 1.0)
            } else {
                1.0
            },
            floor: floor.max(1),
            last: None,
            window: None,
        }
    }

    /// `saturated`: ingest was saturated within the last interval; `accepted`: outbox rows
    /// accepted since the process started (a counter that only grows).
    pub fn allowance(&mut self, now: Instant, saturated: bool, accepted: u64) -> Allowance {
        if self.interval.is_zero() || !saturated {
            self.window = None;
            self.last = Some((now, accepted));
            return Allowance::Free;
        }
        let interval = self.interval;
        let open = self
            .window
            .as_ref()
            .is_some_and(|w| now.saturating_duration_since(w.start) < interval);
        if !open {
            // The rate rows were accepted at since the last reading, over at least one
            // interval (a reading just before saturation began says little).
            let (since, before) = self.last.unwrap_or((now, accepted));
            let elapsed = now.saturating_duration_since(since).max(interval);
            let rate = accepted.saturating_sub(before) as f64 / elapsed.as_secs_f64();
            let budget = (self.share * rate * interval.as_secs_f64()).ceil() as usize;
            self.window = Some(Window {
                start: now,
                budget: budget.max(self.floor),
                started: 0,
            });
            self.last = Some((now, accepted));
        }
        match &self.window {
            Some(w) if w.started < w.budget => Allowance::Sends(w.budget - w.started),
            Some(w) => {
                Allowance::Wait(interval.saturating_sub(now.saturating_duration_since(w.start)))
            }
            None => Allowance::Free,
        }
    }

    /// Counts sends started under the current window's allowance.
    pub fn started(&mut self, n: usize) {
        if let Some(w) = &mut self.window {
            w.started += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn below_saturation_deliveries_run_freely() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 4);
        assert_eq!(p.allowance(t0, false, 0), Allowance::Free);
        assert_eq!(p.allowance(t0 + 5 * MS, false, 1_000_000), Allowance::Free);
        let mut off = Pacer::new(Duration::ZERO, 0.5, 4);
        assert_eq!(off.allowance(t0, true, 10), Allowance::Free);
    }

    #[test]
    fn saturated_deliveries_get_their_share_of_the_acceptance_rate_per_window() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 4);
        assert_eq!(p.allowance(t0, false, 0), Allowance::Free);
        // 1,000 rows accepted in the 100 ms before saturation: 500 sends for the next 100 ms.
        assert_eq!(
            p.allowance(t0 + 100 * MS, true, 1_000),
            Allowance::Sends(500)
        );
        p.started(300);
        assert_eq!(
            p.allowance(t0 + 120 * MS, true, 1_200),
            Allowance::Sends(200)
        );
        p.started(200);
        assert_eq!(
            p.allowance(t0 + 150 * MS, true, 1_500),
            Allowance::Wait(50 * MS)
        );
        // The next window: 1,000 more rows in those 100 ms.
        assert_eq!(
            p.allowance(t0 + 200 * MS, true, 2_000),
            Allowance::Sends(500)
        );
    }

    #[test]
    fn a_full_share_keeps_pace_with_ingest() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 1.0, 1);
        let mut accepted = 0;
        let mut sent = 0;
        for i in 0..50u32 {
            accepted += 700;
            if let Allowance::Sends(n) = p.allowance(t0 + i * 100 * MS, true, accepted) {
                p.started(n);
                sent += n;
            }
        }
        // One window behind at most.
        assert!(
            accepted - sent as u64 <= 700,
            "{accepted} accepted, {sent} sent"
        );
    }

    #[test]
    fn deliveries_never_stop_even_when_nothing_is_accepted() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 8);
        assert_eq!(p.allowance(t0, true, 0), Allowance::Sends(8));
        p.started(8);
        assert_eq!(p.allowance(t0 + 10 * MS, true, 0), Allowance::Wait(90 * MS));
        assert_eq!(p.allowance(t0 + 100 * MS, true, 0), Allowance::Sends(8));
    }

    #[test]
    fn the_rate_is_read_over_at_least_one_interval() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 1.0, 1);
        assert_eq!(p.allowance(t0, false, 0), Allowance::Free);
        // Saturated 1 ms after the last reading, 50 rows later: 50 per 100 ms, not 5,000.
        assert_eq!(p.allowance(t0 + MS, true, 50), Allowance::Sends(50));
    }
}
