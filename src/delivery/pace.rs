//! How fast the delivery workers may start sends while ingest is saturated (pure, with the
//! clock and the load counters passed in).
//!
//! The load is read once per `interval` from counters that only grow: webhook requests that
//! arrived, those that arrived while at least `in_flight` requests were already being handled
//! (*crowded*), outbox rows accepted, and the CPU time the process used. Ingest is saturated
//! in an interval when at least half its arrivals were crowded *and* the process kept its
//! CPUs at least [`BUSY_CPU`] busy: a closed-loop load keeps every connection busy and the
//! CPU full, while a load below saturation is crowded only by waits that leave the CPU idle
//! (each request waiting for its group's fdatasync: at half of saturation, more than 16
//! requests can wait at once), which must not throttle deliveries. Deliveries use what CPU
//! ingest leaves; only when none is left do they yield to ingest.
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

/// The share of its CPUs a process must have used in an interval for it to be saturated.
pub const BUSY_CPU: f64 = 0.9;

/// The pacing state of one process's workers.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    share: f64,
    floor: usize,
    /// CPUs the process may use; 0: the CPU test is left out (crowding alone decides).
    cpus: usize,
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
            cpus: 0,
            since: None,
            budget: None,
        }
    }

    /// Saturated needs the CPU busy too: at least [`BUSY_CPU`] of `cpus` CPUs used.
    pub fn with_cpus(mut self, cpus: usize) -> Pacer {
        self.set_cpus(cpus);
        self
    }

    /// See [`Pacer::with_cpus`]; 0 leaves the CPU test out.
    pub fn set_cpus(&mut self, cpus: usize) {
        self.cpus = cpus;
    }

    /// Whether the process kept its CPUs busy over `elapsed` (always, without a CPU count).
    fn cpu_busy(&self, used_ns: u64, elapsed: Duration) -> bool {
        self.cpus == 0 || used_ns as f64 >= BUSY_CPU * self.cpus as f64 * elapsed.as_nanos() as f64
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
            let used = load.cpu_ns.saturating_sub(before.cpu_ns);
            let saturated = arrivals > 0
                && crowded.saturating_mul(2) >= arrivals
                && self.cpu_busy(used, elapsed);
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
            cpu_ns: 0,
        }
    }

    #[test]
    fn crowding_with_idle_cpu_is_waiting_not_saturation() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MS, 0.5, 4).with_cpus(1);
        let at = |arrivals, cpu_ms: u64| Load {
            cpu_ns: cpu_ms * 1_000_000,
            ..load(arrivals, arrivals, arrivals)
        };
        assert_eq!(p.allowance(t0, at(0, 0)), Allowance::Free);
        // Every arrival crowded (waiting for fsyncs), but 60 ms of CPU in 100 ms on one CPU.
        assert_eq!(p.allowance(t0 + 100 * MS, at(1000, 60)), Allowance::Free);
        // The CPU full (95 ms in 100 ms) and crowded: saturated.
        assert_eq!(
            p.allowance(t0 + 200 * MS, at(2000, 155)),
            Allowance::Sends(500)
        );
        // Two CPUs: 95 ms in 100 ms is half of them: not saturated.
        let mut two = Pacer::new(100 * MS, 0.5, 4).with_cpus(2);
        assert_eq!(two.allowance(t0, at(0, 0)), Allowance::Free);
        assert_eq!(two.allowance(t0 + 100 * MS, at(1000, 95)), Allowance::Free);
        assert_eq!(
            two.allowance(t0 + 200 * MS, at(2000, 95 + 185)),
            Allowance::Sends(500)
        );
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
