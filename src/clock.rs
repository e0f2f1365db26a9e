//! The process's clock for stored times and schedules: wall-clock time (Unix milliseconds, for
//! people and for other replicas), except that it never runs backwards. When the system clock
//! is set back, this clock goes on from where it was at the pace of the monotonic clock until
//! the wall clock catches up, then follows the wall clock again. So a retry scheduled for
//! "in 5 s" is due 5 s later whatever is done to the system clock meanwhile, a lease expires
//! when it should, and an age (now − accepted) never reads 0 or less because of a jump. A
//! jump forward is followed at once (a retry may then be due early, never late).
//!
//! A leaf: it imports nothing of the crate.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// Milliseconds added to the system clock's reading: 0, except in tests that set the clock
/// back or forward (`skew_wall_clock`).
static SKEW_MS: AtomicI64 = AtomicI64::new(0);

static CLOCK: Mutex<Option<Anchor>> = Mutex::new(None);

/// The last reading that followed the wall clock, and when (monotonic) it was taken.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    wall_ms: i64,
    at: Instant,
}

/// One reading: `wall_ms` is the system clock's, `at` the monotonic clock's. Returns the
/// time and the anchor to keep for the next reading.
fn read(anchor: Option<Anchor>, wall_ms: i64, at: Instant) -> (i64, Anchor) {
    let Some(a) = anchor else {
        return (wall_ms, Anchor { wall_ms, at });
    };
    let elapsed = at.saturating_duration_since(a.at).as_millis() as i64;
    let steady = a.wall_ms + elapsed;
    if wall_ms >= steady {
        (wall_ms, Anchor { wall_ms, at })
    } else {
        // The wall clock is behind where time has got to: it was set back. Keep the anchor,
        // so the steady reading advances exactly with the monotonic clock.
        (steady, a)
    }
}

fn system_millis() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    (nanos / 1_000_000) as i64 + SKEW_MS.load(Ordering::Relaxed)
}

/// Now, in Unix milliseconds (see the module's documentation).
pub fn now_millis() -> i64 {
    let wall = system_millis();
    let at = Instant::now();
    let mut guard = CLOCK.lock();
    let (now, anchor) = read(*guard, wall, at);
    *guard = Some(anchor);
    now
}

/// Now, as a date and time (the same clock as `now_millis`).
pub fn now() -> time::OffsetDateTime {
    at_millis(now_millis())
}

/// A reading of `now_millis` as a date and time.
pub fn at_millis(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
}

/// Moves this process's view of the system clock by `ms` (negative: back), as an operator's
/// or NTP's step would. For tests of clock jumps; nothing else calls it.
#[doc(hidden)]
pub fn skew_wall_clock(ms: i64) {
    SKEW_MS.fetch_add(ms, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn follows_the_wall_clock_while_it_runs_forward() {
        let t0 = Instant::now();
        let (a, anchor) = read(None, 1_000_000, t0);
        assert_eq!(a, 1_000_000);
        let (b, _) = read(Some(anchor), 1_000_250, t0 + Duration::from_millis(250));
        assert_eq!(b, 1_000_250);
        // A jump forward is followed at once.
        let (c, _) = read(Some(anchor), 5_000_000, t0 + Duration::from_millis(300));
        assert_eq!(c, 5_000_000);
    }

    #[test]
    fn a_clock_set_back_is_ignored_until_the_wall_clock_catches_up() {
        let t0 = Instant::now();
        let hour = 3_600_000;
        let (_, anchor) = read(None, 10 * hour, t0);
        // One second later the wall clock is set back an hour: time goes on from 10h + 1 s.
        let (a, anchor) = read(Some(anchor), 9 * hour + 1_000, t0 + Duration::from_secs(1));
        assert_eq!(a, 10 * hour + 1_000);
        // Readings keep pace with the monotonic clock exactly, however often they are taken.
        let mut anchor = anchor;
        for s in 2..=60 {
            let wall = 9 * hour + s * 1_000;
            let (now, next) = read(Some(anchor), wall, t0 + Duration::from_secs(s as u64));
            assert_eq!(now, 10 * hour + s * 1_000);
            anchor = next;
        }
        // Once the wall clock is ahead again it is followed.
        let at = t0 + Duration::from_secs(3_700);
        let (b, _) = read(Some(anchor), 10 * hour + 3_700_500, at);
        assert_eq!(b, 10 * hour + 3_700_500);
    }

    #[test]
    fn readings_never_go_backwards() {
        let t0 = Instant::now();
        let mut anchor = None;
        let mut last = i64::MIN;
        let walls = [100, 200, 50, 60, 400, 10, 450, 451];
        for (i, wall) in walls.into_iter().enumerate() {
            let (now, next) = read(anchor, wall, t0 + Duration::from_millis(i as u64 * 10));
            assert!(now >= last, "{now} after {last}");
            last = now;
            anchor = Some(next);
        }
    }
}
