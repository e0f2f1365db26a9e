//! Log lines for failures that repeat (a shed request, a write to a full disk) are summarised:
//! the first line of an interval is written with the count of those left out since the last
//! one, never one line per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One kind of repeated log line.
#[derive(Debug)]
pub struct Throttle {
    every_ms: u64,
    /// When the last line was written (ms since the process's first check; 0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 keeps 0 free for "never".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now (`n` lines were left out since the last
    /// one); `None` when this one is left out (and counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(mono_ms())
    }

    fn check_at(&self, now: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.check_at(1), Some(0));
        for ms in 2..1000 {
            assert_eq!(t.check_at(ms), None);
        }
        assert_eq!(t.check_at(10_000), None);
        assert_eq!(t.check_at(10_001), Some(999));
        assert_eq!(t.check_at(10_002), None);
        assert_eq!(t.check_at(60_000), Some(1));
    }
}
