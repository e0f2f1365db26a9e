//! Connection-level defences (SPEC §12.3): at most `max_connections` open per listener (one
//! more is closed at once, before any of its bytes are read), a request head must be complete
//! within `header_read_timeout` of the connection's start or of the request's first byte, and a
//! kept-alive connection idle for `idle_timeout` after its last answer is closed.
//!
//! Each connection has a [`Clock`] shared by its socket (which notes when bytes arrive), its
//! service (which notes when a request starts and is answered) and a watchdog (which closes
//! the connection when the phase it is in has lasted too long). The clock also gives every
//! request the moment its first byte was read ([`Arrival`]): the deadline counts from there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the listener knows about a request before the router sees it (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The client end of the TCP connection.
    pub peer: SocketAddr,
    /// When the request's first byte was read; `None` when it came pipelined behind another
    /// request (then the handler's start stands in).
    pub first_byte: Option<std::time::Instant>,
}

/// The per-listener limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnLimits {
    pub fn from_config(s: &crate::config::ServerConfig) -> ConnLimits {
        ConnLimits {
            max_connections: s.max_connections,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
        }
    }
}

/// The phase a connection is in (low two bits of [`Clock::phase`]).
const HEAD: u64 = 0;
const IDLE: u64 = 1;
const BUSY: u64 = 2;

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head took longer than `header_read_timeout`.
    Head,
    /// No request came within `idle_timeout` of the last answer.
    Idle,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Head => "head",
            Expired::Idle => "idle",
        }
    }
}

/// One connection's phase and when it began. Everything runs on the connection's own task;
/// the atomics only make the clock shareable, so relaxed ordering is enough.
#[derive(Debug)]
pub struct Clock {
    origin: Instant,
    /// Phase in the low two bits, microseconds since `origin` when it began above them.
    phase: AtomicU64,
    /// Microseconds since `origin` plus one of the current request's first byte; 0 = none.
    first_byte: AtomicU64,
}

impl Clock {
    /// A new connection waits for its first request head, from now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
            phase: AtomicU64::new(HEAD),
            first_byte: AtomicU64::new(0),
        }
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX >> 2)
    }

    fn at(&self, micros: u64) -> Instant {
        self.origin + Duration::from_micros(micros)
    }

    /// Bytes were read from the client.
    fn bytes_arrived(&self) {
        let phase = self.phase.load(Relaxed);
        if phase & 3 == BUSY {
            return;
        }
        let now = self.micros();
        if self.first_byte.load(Relaxed) == 0 {
            self.first_byte.store(now + 1, Relaxed);
        }
        if phase & 3 == IDLE {
            self.phase.store(now << 2 | HEAD, Relaxed);
        }
    }

    /// A request head is complete and goes to the router; returns its first byte's time.
    pub fn request_started(&self) -> Option<std::time::Instant> {
        self.phase.store(self.micros() << 2 | BUSY, Relaxed);
        match self.first_byte.swap(0, Relaxed) {
            0 => None,
            t => Some(self.at(t - 1).into_std()),
        }
    }

    /// The answer went to the connection; it is idle until the next request's first byte.
    pub fn answered(&self) {
        self.phase.store(self.micros() << 2 | IDLE, Relaxed);
    }

    /// Completes when the connection has spent longer in its current phase than allowed.
    pub async fn expired(&self, limits: &ConnLimits) -> Expired {
        loop {
            let phase = self.phase.load(Relaxed);
            let since = self.at(phase >> 2);
            let (limit, why) = match phase & 3 {
                HEAD => (limits.header_read_timeout, Expired::Head),
                IDLE => (limits.idle_timeout, Expired::Idle),
                _ => {
                    // A request is being handled (its deadline bounds it); look again later.
                    let later = limits.header_read_timeout.min(limits.idle_timeout);
                    tokio::time::sleep(later).await;
                    continue;
                }
            };
            let until = since + limit;
            if Instant::now() >= until {
                return why;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Open connections of one listener, and whether memory should be handed back to the system
/// once a burst of them has gone: the allocator keeps the pages a burst's buffers used
/// (10,000 connections left ~200 MiB resident for good), so when the count falls from above
/// `BURST` to `CALM` or fewer, `closed` says to trim.
#[derive(Default)]
pub struct Occupancy {
    open: std::sync::atomic::AtomicUsize,
    burst: std::sync::atomic::AtomicBool,
}

impl Occupancy {
    pub const BURST: usize = 256;
    pub const CALM: usize = 16;

    pub fn opened(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.open.fetch_add(1, Relaxed) + 1 > Self::BURST {
            self.burst.store(true, Relaxed);
        }
    }

    /// A connection ended; true when this ends a burst (once per burst).
    pub fn closed(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.open.fetch_sub(1, Relaxed).saturating_sub(1);
        now <= Self::CALM && self.burst.swap(false, Relaxed)
    }
}

/// Hands memory glibc's allocator holds but does not use back to the system (`malloc_trim`;
/// elsewhere nothing). Takes milliseconds on a large heap: call it off the request path. The
/// `cognihook` binary allocates with jemalloc, which needs no call: it returns freed pages on
/// its own within about 10 s (its dirty-page decay; after a 10,000-connection burst RSS was
/// 44.8 MiB 10 s later against 49.2 MiB with glibc and this call, bench/README.md); this
/// stays for programs that embed the library on glibc's allocator.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A socket that tells its connection's clock when bytes arrive.
pub struct Watched<T> {
    io: T,
    clock: std::sync::Arc<Clock>,
}

impl<T> Watched<T> {
    pub fn new(io: T, clock: std::sync::Arc<Clock>) -> Watched<T> {
        Watched { io, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn occupancy_asks_for_one_trim_when_a_burst_has_gone() {
        let o = super::Occupancy::default();
        for _ in 0..10 {
            o.opened();
        }
        assert!(!(0..10).any(|_| o.closed()), "no burst, no trim");
        for _ in 0..=super::Occupancy::BURST {
            o.opened();
        }
        let trims: Vec<usize> = (0..=super::Occupancy::BURST)
            .filter(|_| o.closed())
            .collect();
        assert_eq!(trims.len(), 1, "once per burst");
        assert_eq!(
            trims[0],
            super::Occupancy::BURST - super::Occupancy::CALM,
            "when the count reaches CALM"
        );
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(head_ms: u64, idle_ms: u64) -> ConnLimits {
        ConnLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(head_ms),
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_expires_after_the_header_timeout() {
        let clock = Clock::new();
        let t0 = Instant::now();
        assert_eq!(clock.expired(&limits(500, 60_000)).await, Expired::Head);
        assert!(t0.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_idle_timeout_not_the_header_timeout() {
        let clock = Clock::new();
        clock.request_started();
        clock.answered();
        let t0 = Instant::now();
        assert_eq!(clock.expired(&limits(500, 3_000)).await, Expired::Idle);
        assert!(t0.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_never_expires() {
        let clock = Clock::new();
        clock.request_started();
        let short = limits(100, 100);
        let watch = clock.expired(&short);
        tokio::pin!(watch);
        tokio::select! {
            _ = &mut watch => panic!("a busy connection expired"),
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        clock.answered();
        assert_eq!(watch.await, Expired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_an_answer_starts_the_head_timer_and_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let clock = std::sync::Arc::new(Clock::new());
        let mut socket = Watched::new(server, clock.clone());
        let (mut client, mut buf) = (client, [0u8; 8]);
        clock.request_started();
        clock.answered();
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"POST").await.expect("write");
        let n = socket.read(&mut buf).await.expect("read");
        assert_eq!(n, 4);
        let first = Instant::now();
        // Now the head timer runs (from the byte), not the idle one.
        let t0 = Instant::now();
        assert_eq!(clock.expired(&limits(500, 60_000)).await, Expired::Head);
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(clock.request_started(), Some(first.into_std()));
        // Taken once: a request pipelined behind it has no first byte of its own.
        assert_eq!(clock.request_started(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn body_bytes_do_not_move_the_next_requests_first_byte() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = std::sync::Arc::new(Clock::new());
        let mut socket = Watched::new(server, clock.clone());
        let mut buf = [0u8; 8];
        clock.request_started();
        client.write_all(b"body").await.expect("write");
        let n = socket.read(&mut buf).await.expect("read");
        assert_eq!(n, 4);
        clock.answered();
        assert_eq!(clock.request_started(), None);
    }
}
