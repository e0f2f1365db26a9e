//! Circuit breaker per sink (SPEC §7): closed → open after consecutive failures (or a failure
//! ratio over a window) → half-open after a cool-down, letting one probe through → closed on
//! its success, open again on its failure. Pure: time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::config::BreakerConfig;

/// The breaker's state, as exposed in metrics (0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half-open",
            CircuitState::Open => "open",
        }
    }
}

/// A circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// Times the circuit opened (a failed probe opening it again counts too).
    opened: u64,
}

/// Whether an attempt may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Go,
    /// Half-open: this attempt is the one probe.
    Probe,
    /// Open (or a probe is already out): wait; try again at the earliest after this long.
    Wait(Duration),
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(config.window as usize),
            opened_at: None,
            probe_in_flight: false,
            opened: 0,
        }
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match self.opened_at {
            None => CircuitState::Closed,
            Some(at) if now.duration_since(at) >= self.config.cool_down => CircuitState::HalfOpen,
            Some(_) => CircuitState::Open,
        }
    }

    /// Asks to send one attempt now. A `Probe` must be answered with `record`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            CircuitState::Closed => Admission::Go,
            CircuitState::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Admission::Probe
            }
            CircuitState::HalfOpen => Admission::Wait(Duration::from_millis(100)),
            CircuitState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                Admission::Wait(
                    self.config
                        .cool_down
                        .saturating_sub(now.duration_since(opened)),
                )
            }
        }
    }

    /// Records an attempt's outcome (only failures that speak about the sink's health count:
    /// transient ones; a permanent rejection of one event says nothing about the sink).
    pub fn record(&mut self, now: Instant, success: bool) {
        self.probe_in_flight = false;
        if success {
            self.consecutive_failures = 0;
            self.opened_at = None;
        } else {
            self.consecutive_failures += 1;
        }
        if self.config.window > 0 {
            if self.recent.len() == self.config.window as usize {
                self.recent.pop_front();
            }
            self.recent.push_back(success);
        }
        if success {
            return;
        }
        let half_open = self.state(now) == CircuitState::HalfOpen;
        let by_count = self.consecutive_failures >= self.config.failure_threshold.max(1);
        let by_ratio = self.config.failure_ratio > 0.0
            && self.recent.len() == self.config.window as usize
            && self.recent.iter().filter(|ok| !**ok).count() as f64
                >= self.config.failure_ratio * f64::from(self.config.window);
        if half_open || by_count || by_ratio {
            if half_open || self.opened_at.is_none() {
                self.opened += 1;
            }
            self.opened_at = Some(now);
        }
    }

    /// Times the circuit has opened since the sink was built (the alerts see an opening
    /// between two looks by this count).
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Gives back a probe that was admitted but not sent (shutdown, pause).
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, Instant) {
        let config = BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
            ..BreakerConfig::default()
        };
        (Breaker::new(config), Instant::now())
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let (mut b, t) = breaker();
        b.record(t, false);
        b.record(t, false);
        assert_eq!(b.admit(t), Admission::Go);
        b.record(t, false);
        assert_eq!(b.state(t), CircuitState::Open);
        assert_eq!(b.admit(t), Admission::Wait(Duration::from_secs(30)));
        assert_eq!(
            b.admit(t + Duration::from_secs(10)),
            Admission::Wait(Duration::from_secs(20))
        );
    }

    #[test]
    fn openings_are_counted_once_each_a_failed_probe_included() {
        let (mut b, t) = breaker();
        assert_eq!(b.times_opened(), 0);
        for _ in 0..5 {
            b.record(t, false);
        }
        assert_eq!(
            b.times_opened(),
            1,
            "failures while open are no new opening"
        );
        let later = t + Duration::from_secs(30);
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(later, false);
        assert_eq!(b.times_opened(), 2, "the failed probe opened it again");
        let much_later = later + Duration::from_secs(30);
        assert_eq!(b.admit(much_later), Admission::Probe);
        b.record(much_later, true);
        assert_eq!(b.state(much_later), CircuitState::Closed);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn a_success_resets_the_count() {
        let (mut b, t) = breaker();
        b.record(t, false);
        b.record(t, false);
        b.record(t, true);
        b.record(t, false);
        b.record(t, false);
        assert_eq!(b.state(t), CircuitState::Closed);
    }

    #[test]
    fn half_open_lets_one_probe_and_closes_on_success() {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.record(t, false);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(
            matches!(b.admit(later), Admission::Wait(_)),
            "only one probe"
        );
        b.record(later, true);
        assert_eq!(b.state(later), CircuitState::Closed);
        assert_eq!(b.admit(later), Admission::Go);
    }

    #[test]
    fn failed_probe_opens_again_for_a_full_cool_down() {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.record(t, false);
        }
        let later = t + Duration::from_secs(31);
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(later, false);
        assert_eq!(b.state(later), CircuitState::Open);
        assert_eq!(b.admit(later), Admission::Wait(Duration::from_secs(30)));
    }

    #[test]
    fn opens_on_failure_ratio_when_configured() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 100,
            failure_ratio: 0.5,
            window: 4,
            ..BreakerConfig::default()
        });
        let t = Instant::now();
        b.record(t, false);
        b.record(t, true);
        b.record(t, false);
        assert_eq!(b.state(t), CircuitState::Closed, "window not full yet");
        b.record(t, true);
        b.record(t, false);
        assert_eq!(b.state(t), CircuitState::Open);
    }
}
