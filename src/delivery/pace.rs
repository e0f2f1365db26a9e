//! How fast the delivery workers may start sends while ingest is saturated (pure, with the
//! clock and the load counters passed in).
//!
//! The load is read once per `interval` from three counters that only grow: webhook requests
//! that arrived, those that arrived while at least `in_flight` requests were already being
//! handled (*crowded*), and outbox rows accepted. Ingest is saturated in an interval when at
//! least half its arrivals were crowded: a closed-loop load keeps every connection busy and
//! is crowded all the time, while a load below saturation is crowded only during a stall (an
//! fsync that took long), which must not throttle deliveries.
//!
//! Below saturation deliveries run freely. While saturated, the CPU the sends would take is
//! what Cognigy's answers are waiting for, so the next interval allows sends for `share` of
//! the rows accepted in the interval before, and never fewer than `floor` (deliveries never
//! stop, even while only bad requests arrive). The backlog this leaves drains at full speed
//! once ingest is below saturation.

use std::time::{Duration, Instant};

/// What the workers may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Send whatever is due.
    Free,
    /// Start at most this many sends now.
    Sends(usize),
    /// This interval's sends are spent; ask again after this long.
    Wait(Duration),
}

pub use crate::load::Load;

/// The pacing state of one process's workers.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    share: f64,
    floor: usize,
    /// Where the current interval began, and the counters then.
    since: Option<(Instant, Load)>,
    /// The last finished interval was saturated: this one's sends are budgeted.
    budget: Option<Budget>,
}

#[derive(Debug)]
struct Budget {
    sends: usize,
    started: usize,
}

impl Pacer {
    /// `interval` zero never holds back; `share` is clamped to (0, 1]; `floor` is the fewest
    /// sends an interval allows.
    pub fn new(interval: Duration, share: f64, floor: usize) -> Pacer {
        Pacer {
            interval,
            share: if share.is_finite() {
                share.clamp(f64::MIN_POSITIVE, 1.0)
            } else {
                1.0
            },
            floor: floor.max(1),
            since: None,
            budget: None,
        }
    }

    pub fn allowance(&mut self, now: Instant, load: Load) -> Allowance {
        if self.interval.is_zero() {
            return Allowance::Free;
        }
        let Some((start, before)) = self.since else {
            self.since = Some((now, load));
            return Allowance::Free;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= self.interval {
            let arrivals = load.arrivals.saturating_sub(before.arrivals);
            let crowded = load.crowded.saturating_sub(before.crowded);
            let saturated = arrivals > 0 && crowded.saturating_mul(2) >= arrivals;
            self.budget = saturated.then(|| {
                // Rows accepted per interval, over the time actually measured.
                let accepted = load.accepted.saturating_sub(before.accepted) as f64;
                let per_interval = accepted * self.interval.as_secs_f64() / elapsed.as_secs_f64();
                Budget {
                    sends: ((self.share * per_interval).ceil() as usize).max(self.floor),
                    started: 0,
                }
            });
            self.since = Some((now, load));
        }
        match &self.budget {
            None => Allowance::Free,
            Some(b) if b.started < b.sends => Allowance::Sends(b.sends - b.started),
            Some(_) => {
                let start = self.since.map_or(now, |(s, _)| s);
                Allowance::Wait(
                    self.interval
                        .saturating_sub(now.saturating_duration_since(start)),
                )
            }
        }
    }

    /// Counts sends started under the current interval's budget.
    pub fn started(&mut self, n: usize) {
        if let Some(b) = &mut self.budget {
            b.started += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn load(arrivals: u64, crowded: u64, accepted: u64) -> Load {
        Load {
            arrivals,
            crowded,
            accepted,
        }
    }

    #[test]
    fn below_saturation_deliveries_run_freely_even_through_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 4);
        assert_eq!(p.allowance(t0, load(0, 0, 0)), Allowance::Free);
        // 1,000 arrivals in 100 ms, 300 of them during a stall that crowded the gateway.
        assert_eq!(
            p.allowance(t0 + 100 * MS, load(1000, 300, 1000)),
            Allowance::Free
        );
        let mut off = Pacer::new(Duration::ZERO, 0.5, 4);
        assert_eq!(off.allowance(t0, load(0, 0, 0)), Allowance::Free);
        assert_eq!(
            off.allowance(t0 + 100 * MS, load(10, 10, 10)),
            Allowance::Free
        );
    }

    #[test]
    fn saturated_deliveries_get_their_share_of_the_acceptance_rate_per_interval() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 4);
        assert_eq!(p.allowance(t0, load(0, 0, 0)), Allowance::Free);
        // Every arrival crowded, 1,000 rows accepted: 500 sends for the next 100 ms.
        let l = load(1000, 1000, 1000);
        assert_eq!(p.allowance(t0 + 100 * MS, l), Allowance::Sends(500));
        p.started(300);
        assert_eq!(p.allowance(t0 + 120 * MS, l), Allowance::Sends(200));
        p.started(200);
        assert_eq!(p.allowance(t0 + 150 * MS, l), Allowance::Wait(50 * MS));
        // The next interval: 1,000 more rows.
        let l = load(2000, 2000, 2000);
        assert_eq!(p.allowance(t0 + 200 * MS, l), Allowance::Sends(500));
        // Back below saturation: free again.
        let l = load(2500, 2050, 2500);
        assert_eq!(p.allowance(t0 + 300 * MS, l), Allowance::Free);
    }

    #[test]
    fn a_full_share_keeps_pace_with_ingest() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 1.0, 1);
        let (mut accepted, mut sent) = (0u64, 0u64);
        for i in 0..=50u32 {
            let l = load(accepted, accepted, accepted);
            if let Allowance::Sends(n) = p.allowance(t0 + i * 100 * MS, l) {
                p.started(n);
                sent += n as u64;
            }
            accepted += 700;
        }
        // One interval behind at most.
        assert!(
            accepted - sent <= 2 * 700,
            "{accepted} accepted, {sent} sent"
        );
        assert!(sent >= 49 * 700, "{sent}");
    }

    #[test]
    fn deliveries_never_stop_even_when_nothing_is_accepted() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 8);
        p.allowance(t0, load(0, 0, 0));
        // A flood of requests that are all refused: crowded, no row accepted.
        assert_eq!(
            p.allowance(t0 + 100 * MS, load(500, 500, 0)),
            Allowance::Sends(8)
        );
        p.started(8);
        assert_eq!(
            p.allowance(t0 + 110 * MS, load(550, 550, 0)),
            Allowance::Wait(90 * MS)
        );
        assert_eq!(
            p.allowance(t0 + 200 * MS, load(1000, 1000, 0)),
            Allowance::Sends(8)
        );
    }

    #[test]
    fn the_rate_is_taken_over_the_time_measured() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 1.0, 1);
        p.allowance(t0, load(0, 0, 0));
        // Read 400 ms later (the workers were busy): 2,000 rows then are 500 per interval.
        assert_eq!(
            p.allowance(t0 + 400 * MS, load(2000, 2000, 2000)),
            Allowance::Sends(500)
        );
    }
}
