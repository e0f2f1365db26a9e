//! Admission of webhook requests (SPEC §12.3), decided before the body is read so that a
//! refusal costs far less than serving:
//!
//! 1. at most `[limits] max_in_flight` requests are admitted and not yet answered; one more is
//!    answered 503 `unavailable` with `Retry-After` at once;
//! 2. a request that already waited past its deadline (counted from its first byte) is
//!    answered 503 at once: Cognigy has given up on it, serving it would only delay others;
//! 3. a route's `rate_limit` answers 429 `rate_limited` with `Retry-After` (the seconds until
//!    its bucket could pay for one more request).
//!
//! `by = "ip"` gives each client address its own bucket (IPv6 clients by their /64, which one
//! host can fill with addresses). At most [`MAX_CLIENTS`] buckets are kept per route: full
//! buckets (clients quiet for a whole `per`) are forgotten, and past the cap new addresses
//! share one overflow bucket, so memory stays bounded whatever the clients do.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{RateBy, RouteRateLimit};
use crate::rate::Bucket;

/// Client buckets kept per route before new addresses share the overflow bucket.
pub const MAX_CLIENTS: usize = 65_536;

/// Requests admitted and not yet answered.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One admitted request; dropping it (with the answer) frees its place.
pub struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn new(max: usize) -> InFlight {
        InFlight {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Admits one more request, or `None` when `max` are already in flight.
    pub fn enter(&self) -> Option<Admitted<'_>> {
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(&self.count))
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A route's rate limit and its buckets.
#[derive(Debug)]
pub struct RouteLimiter {
    config: RouteRateLimit,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    /// `by = "route"`: the only bucket; `by = "ip"`: shared by addresses past the cap.
    shared: Bucket,
    clients: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

impl RouteLimiter {
    pub fn new(config: RouteRateLimit, now: Instant) -> RouteLimiter {
        RouteLimiter {
            config,
            buckets: Mutex::new(Buckets {
                shared: Bucket::new(config.limit(), now),
                clients: HashMap::new(),
                last_sweep: now,
            }),
        }
    }

    /// Pays for one request from `client`, or says how long until it could be paid for.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock();
        if self.config.by == RateBy::Route {
            return b.shared.try_take(now);
        }
        let key = client_key(client);
        if let Some(bucket) = b.clients.get_mut(&key) {
            return bucket.try_take(now);
        }
        if b.clients.len() >= MAX_CLIENTS
            && now.duration_since(b.last_sweep) >= Duration::from_secs(1)
        {
            b.last_sweep = now;
            b.clients.retain(|_, bucket| !bucket.is_full(now));
        }
        if b.clients.len() >= MAX_CLIENTS {
            return b.shared.try_take(now);
        }
        let mut bucket = Bucket::new(self.config.limit(), now);
        let paid = bucket.try_take(now);
        b.clients.insert(key, bucket);
        paid
    }

    /// Client buckets held (for tests and the bound above).
    pub fn clients(&self) -> usize {
        self.buckets.lock().clients.len()
    }
}

/// IPv4 addresses as they are; IPv6 ones by their /64 (IPv4-mapped ones as IPv4).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_ms: u64, max: u32, by: RateBy, now: Instant) -> RouteLimiter {
        RouteLimiter::new(
            RouteRateLimit {
                per: Duration::from_millis(per_ms),
                max,
                by,
            },
            now,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn in_flight_admits_up_to_max_and_frees_a_place_with_each_answer() {
        let f = InFlight::new(2);
        let a = f.enter().expect("first");
        let b = f.enter().expect("second");
        assert!(f.enter().is_none(), "a third is refused");
        assert_eq!(f.current(), 2, "a refusal takes no place");
        drop(a);
        let c = f.enter().expect("a place came free");
        drop((b, c));
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn by_ip_each_client_has_its_own_budget() {
        let t0 = Instant::now();
        let l = limiter(1000, 2, RateBy::Ip, t0);
        assert!(l.check(ip("10.0.0.1"), t0).is_ok());
        assert!(l.check(ip("10.0.0.1"), t0).is_ok());
        let wait = l
            .check(ip("10.0.0.1"), t0)
            .expect_err("third in the same second");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        assert!(
            l.check(ip("10.0.0.2"), t0).is_ok(),
            "another client is not held"
        );
        assert!(l
            .check(ip("10.0.0.1"), t0 + Duration::from_millis(500))
            .is_ok());
    }

    #[test]
    fn by_route_every_client_shares_one_budget() {
        let t0 = Instant::now();
        let l = limiter(60_000, 2, RateBy::Route, t0);
        assert!(l.check(ip("10.0.0.1"), t0).is_ok());
        assert!(l.check(ip("10.0.0.2"), t0).is_ok());
        let wait = l.check(ip("10.0.0.3"), t0).expect_err("budget spent");
        assert_eq!(retry_after_secs(wait), 30);
        assert_eq!(l.clients(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let l = limiter(1000, 1, RateBy::Ip, t0);
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:ffff::9"), t0).is_err(),
            "same /64, same budget"
        );
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok());
        assert!(l.check(ip("192.0.2.7"), t0).is_ok());
        assert!(l.check(ip("::ffff:192.0.2.7"), t0).is_err());
    }

    #[test]
    fn client_buckets_stay_bounded_and_quiet_clients_are_forgotten() {
        let t0 = Instant::now();
        let l = limiter(1000, 1, RateBy::Ip, t0);
        let addr = |i: usize| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
        for i in 0..MAX_CLIENTS {
            assert!(l.check(addr(i), t0).is_ok());
        }
        // Past the cap, new addresses share the overflow bucket (one request per second).
        let late = MAX_CLIENTS;
        assert!(l.check(addr(late), t0).is_ok());
        assert!(l.check(addr(late + 1), t0).is_err());
        assert_eq!(l.clients(), MAX_CLIENTS);
        // A second later every bucket is full again: they are swept, new clients get theirs.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check(addr(late + 2), t1).is_ok());
        assert_eq!(l.clients(), 1);
    }
}
