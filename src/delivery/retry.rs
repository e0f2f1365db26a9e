//! Retry policy (SPEC §7): exponential backoff with full jitter, pure and deterministic given
//! the random draw.

use std::time::Duration;

pub use crate::config::RetryPolicy;

/// Longest `Retry-After` honoured; a sink asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// No attempts left: dead-letter.
    GiveUp,
}

impl RetryPolicy {
    /// The delay ceiling before attempt `attempt + 1`, after `attempt` failed attempts (≥ 1):
    /// `min(max_delay, base_delay · 2^(attempt−1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        self.base_delay
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Decides after `attempts` failed attempts. `draw` is uniform in `[0, 1)` (full jitter:
    /// the delay is uniform in `[0, ceiling]`); a sink's `Retry-After` is a floor.
    pub fn next(&self, attempts: u32, draw: f64, retry_after: Option<Duration>) -> Next {
        if attempts >= self.max_attempts {
            return Next::GiveUp;
        }
        let jittered = self.ceiling(attempts).mul_f64(draw.clamp(0.0, 1.0));
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(MAX_RETRY_AFTER));
        Next::RetryAfter(jittered.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_base_and_stops_at_max() {
        let p = RetryPolicy::default();
        let c: Vec<u64> = (1..=6).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(c, [1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(p.ceiling(1000), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let p = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        for attempt in 1..20 {
            for i in 0..=100 {
                let draw = f64::from(i) / 100.0;
                match p.next(attempt, draw, None) {
                    Next::RetryAfter(d) => assert!(d <= p.ceiling(attempt), "{attempt} {draw}"),
                    Next::GiveUp => panic!("attempts left"),
                }
            }
        }
        assert_eq!(p.next(3, 0.0, None), Next::RetryAfter(Duration::ZERO));
        assert_eq!(
            p.next(3, 0.5, None),
            Next::RetryAfter(Duration::from_secs(2))
        );
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let p = RetryPolicy::default();
        assert!(matches!(p.next(2, 0.5, None), Next::RetryAfter(_)));
        assert_eq!(p.next(3, 0.5, None), Next::GiveUp);
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next(1, 0.1, Some(Duration::from_secs(30))),
            Next::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.next(1, 1.0, Some(Duration::from_millis(10))),
            Next::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            p.next(1, 0.0, Some(Duration::from_secs(86_400))),
            Next::RetryAfter(MAX_RETRY_AFTER)
        );
    }
}
