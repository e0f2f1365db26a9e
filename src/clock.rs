//! The process's clock for stored times and schedules: wall-clock time (Unix milliseconds, for
//! people and for other replicas), except that it never runs backwards. When the system clock
//! is set back, this clock goes on from where it was at the pace of the monotonic clock until
//! the wall clock catches up, then follows the wall clock again. So a retry scheduled for
//! "in 5 s" is due 5 s later whatever is done to the system clock meanwhile, a lease expires
//! when it should, and an age (now − accepted) never reads 0 or less because of a jump. A
//! jump forward is followed at once (a retry may then be due early, never late).
//!
//! A leaf: it imports nothing of the crate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds added to the system clock's reading: 0, except in tests that set the clock
/// back or forward (`skew_wall_clock`).
static SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// The largest `wall − monotonic` (ns) any reading has seen: now is the monotonic clock plus
/// this, or the wall clock when it is ahead. `i64::MIN` before the first reading. One
/// atomic instead of a lock: every request reads the clock several times, from every thread
/// (bench/README.md, eighteenth session).
static OFFSET_NS: AtomicI64 = AtomicI64::new(i64::MIN);

/// The monotonic clock's origin.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// One reading: `wall_ns` is the system clock's, `mono_ns` the monotonic clock's (from
/// `origin`), `offset_ns` what the readings before saw. Returns the time in ms and the offset
/// to keep. While the wall clock runs forward, `wall − mono` stays the same or grows and the
/// reading is the wall clock's; set back, it falls below the offset kept, and the reading
/// goes on from the offset at the monotonic clock's pace until the wall clock catches up.
fn read(offset_ns: i64, wall_ns: i64, mono_ns: i64) -> (i64, i64) {
    let offset = offset_ns.max(wall_ns - mono_ns);
    ((mono_ns + offset).div_euclid(1_000_000), offset)
}

/// The system clock in Unix nanoseconds. Read through `SystemTime`, not
/// `time::OffsetDateTime::now_utc`, which also works out the calendar date of the reading:
/// half of this function's instructions, and every request reads the clock five or six
/// times (bench/README.md, twenty-third session).
fn system_nanos() -> i64 {
    let nanos = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    };
    nanos.saturating_add(SKEW_MS.load(Ordering::Relaxed) * 1_000_000)
}

/// Now, in Unix milliseconds (see the module's documentation).
pub fn now_millis() -> i64 {
    // The wall clock first: a thread held up between the two readings then sees an offset
    // too small, never too large (kept as the largest, one too large would put every later
    // reading ahead of the wall clock by the hold-up).
    let wall = system_nanos();
    let mono = origin().elapsed().as_nanos() as i64;
    let seen = wall - mono;
    let mut kept = OFFSET_NS.load(Ordering::Relaxed);
    if seen > kept {
        kept = OFFSET_NS.fetch_max(seen, Ordering::Relaxed);
    }
    read(kept, wall, mono).0
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

    const MS: i64 = 1_000_000;

    #[test]
    fn follows_the_wall_clock_while_it_runs_forward() {
        let (a, kept) = read(i64::MIN, 1_000_000 * MS, 5 * MS);
        assert_eq!(a, 1_000_000);
        let (b, _) = read(kept, 1_000_250 * MS, 255 * MS);
        assert_eq!(b, 1_000_250);
        // A jump forward is followed at once.
        let (c, _) = read(kept, 5_000_000 * MS, 305 * MS);
        assert_eq!(c, 5_000_000);
    }

    #[test]
    fn a_clock_set_back_is_ignored_until_the_wall_clock_catches_up() {
        let hour = 3_600_000;
        let (_, kept) = read(i64::MIN, 10 * hour * MS, 0);
        // One second later the wall clock is set back an hour: time goes on from 10h + 1 s.
        let (a, mut kept) = read(kept, (9 * hour + 1_000) * MS, 1_000 * MS);
        assert_eq!(a, 10 * hour + 1_000);
        // Readings keep pace with the monotonic clock exactly, however often they are taken.
        for s in 2..=60 {
            let wall = (9 * hour + s * 1_000) * MS;
            let (now, next) = read(kept, wall, s * 1_000 * MS);
            assert_eq!(now, 10 * hour + s * 1_000);
            kept = next;
        }
        // Once the wall clock is ahead again it is followed.
        let (b, _) = read(kept, (10 * hour + 3_700_500) * MS, 3_700_000 * MS);
        assert_eq!(b, 10 * hour + 3_700_500);
    }

    #[test]
    fn readings_never_go_backwards() {
        let mut kept = i64::MIN;
        let mut last = i64::MIN;
        let walls = [100, 200, 50, 60, 400, 10, 450, 451];
        for (i, wall) in walls.into_iter().enumerate() {
            let (now, next) = read(kept, wall * MS, i as i64 * 10 * MS);
            assert!(now >= last, "{now} after {last}");
            last = now;
            kept = next;
        }
    }

    #[test]
    fn the_process_clock_keeps_up_with_the_system_clock_and_never_leads_it() {
        let system = || time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        // From several threads at once, so that some are held up between the two clocks'
        // readings: a reading is never ahead of the system clock read after it.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let before = system();
                        let now = i128::from(now_millis());
                        let after = system();
                        assert!(before <= now && now <= after, "{before} {now} {after}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no reading out of line");
        }
    }
}
