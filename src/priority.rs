//! Thread priorities: background work ranked below the request path, and the request path's
//! threads given short time slices. Linux schedules threads, so a thread's niceness or slice
//! leaves the rest of the process alone. Failure only costs the preference, so it is logged,
//! not fatal; elsewhere than Linux nothing is done.
//!
//! A leaf: it imports nothing of the crate.

thread_local! {
    static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread was lowered by [`lower_current_thread`]: an http sink keeps
/// the connections such a thread's runtime drives apart from the request path's (see
/// `sinks::http`).
pub fn is_lowered() -> bool {
    LOWERED.get()
}

/// Sets the calling thread's niceness to `nice` (0 leaves it as it is). `what` names the
/// thread in the warning if the system refuses.
pub fn lower_current_thread(nice: u8, what: &str) {
    if nice == 0 {
        return;
    }
    LOWERED.set(true);
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), i32::from(nice)) {
            tracing::warn!(error = %e, nice, what, "cannot lower a thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}

/// Runs `f` on a short-lived thread lowered to `nice` and returns its result: every thread
/// `f` starts inherits that niceness (Linux copies it to a new thread), which is how threads
/// a library starts, and that take no hook, are ranked. A thread names itself only once it
/// runs, so finding them afterwards by name would race with their start. With `nice` 0, `f`
/// runs on the calling thread. Fails only if the thread cannot be started.
pub fn run_lowered<T: Send>(
    nice: u8,
    what: &str,
    f: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    if nice == 0 {
        return Ok(f());
    }
    std::thread::scope(|scope| {
        let lowered = std::thread::Builder::new()
            .name(format!("lowered {what}"))
            .spawn_scoped(scope, move || {
                lower_current_thread(nice, what);
                f()
            });
        let handle = lowered?;
        Ok(handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// The time slice the request path's threads ask for: 100 µs, the shortest Linux grants.
pub const SHORT_SLICE_NS: u64 = 100_000;

/// Asks the scheduler for short time slices ([`SHORT_SLICE_NS`]) for the calling thread, keeping
/// its policy and niceness. Linux's fair scheduler (EEVDF, 6.12 and later) lets a waking thread
/// with a shorter slice than the running one's take the CPU at once, where with equal slices
/// it may wait for the running one's whole slice (the kernel's default: 1.4 ms on the
/// two-CPU benchmark machine, longer with more CPUs). The HTTP workers and the sequencer call
/// it: a request's work comes in small pieces between waits, and with a core shared with the
/// projector, the key tree's threads and the checkpointer, each piece waited its turn. At saturation on one core, p99 fell by a quarter
/// to a half with the same throughput (bench/README.md, twenty-fourth session).
/// Threads it starts afterwards get the default slice. Returns whether the kernel took it
/// (older kernels keep their own slices, and a thread under a real-time policy is left as it
/// is); `what` names the thread in the warning if the call fails (the first failure only).
pub fn shorten_slice(what: &str) -> bool {
    #[cfg(target_os = "linux")]
    match slice::shorten(SHORT_SLICE_NS) {
        Ok(taken) => taken,
        Err(e) => {
            // Once per process: the runtime starts a thread for blocking work whenever one is
            // needed, and a system that refuses the call (a seccomp filter) refuses it each time.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, what, "cannot shorten a thread's time slice (said once)");
            }
            false
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = what;
        false
    }
}

/// `sched_getattr`/`sched_setattr` on the calling thread (neither libc nor rustix wraps them).
#[cfg(target_os = "linux")]
mod slice {
    /// The kernel's `struct sched_attr`, its first version (48 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    const SIZE: u32 = 48;
    const _: () = assert!(std::mem::size_of::<SchedAttr>() == SIZE as usize);
    /// `SCHED_OTHER` and `SCHED_BATCH`: the fair policies whose slice can be set.
    const FAIR: [u32; 2] = [0, 3];
    /// `SCHED_FLAG_RESET_ON_FORK`: threads this one starts get the default slice. Without it
    /// they inherit the short one: the store's threads are started from an async worker, and
    /// the projector with a short slice cost throughput. The other flags ask for fields this
    /// version of the struct does not have.
    const RESET_ON_FORK: u64 = 1;

    /// Sets the calling thread's slice to `ns` if its policy is a fair one; whether the
    /// kernel reports it set afterwards (kernels before 6.12 ignore it).
    pub(super) fn shorten(ns: u64) -> std::io::Result<bool> {
        let mut attr = get()?;
        if !FAIR.contains(&attr.policy) {
            return Ok(false);
        }
        attr.size = SIZE;
        attr.flags = RESET_ON_FORK;
        attr.runtime = ns;
        set(&attr)?;
        Ok(get()?.runtime == ns)
    }

    #[allow(unsafe_code)]
    fn get() -> std::io::Result<SchedAttr> {
        let mut attr = SchedAttr::default();
        // SAFETY: the kernel writes at most SIZE bytes, the size given, into `attr`, a live
        // value of that size laid out as its `struct sched_attr`; pid 0 is this thread.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &mut attr as *mut SchedAttr,
                SIZE,
                0,
            )
        };
        if r == 0 {
            Ok(attr)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[allow(unsafe_code)]
    fn set(attr: &SchedAttr) -> std::io::Result<()> {
        // SAFETY: the kernel reads `attr.size` (SIZE) bytes from `attr`, a live value laid
        // out as its `struct sched_attr`, and keeps no pointer to it; pid 0 is this thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The niceness of this process's threads named `name` (for tests).
#[cfg(all(test, target_os = "linux"))]
pub fn niceness_of(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        // Field 19 of `stat`, counted after the command's closing parenthesis.
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some(n) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Whether this kernel lets a fair thread choose its slice (Linux 6.12 and later).
    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        (major, minor) >= (6, 12)
    }

    fn own_niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("niceness")
    }

    /// The slice the scheduler itself reports for the calling thread, in nanoseconds.
    fn own_slice() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").expect("sched");
        sched
            .lines()
            .find_map(|l| l.strip_prefix("se.slice"))
            .and_then(|l| l.trim_start_matches([' ', ':']).trim().parse().ok())
    }

    #[test]
    fn a_shortened_thread_gets_short_slices_where_the_kernel_has_them_and_the_threads_it_starts_do_not(
    ) {
        std::thread::spawn(|| {
            super::lower_current_thread(3, "test");
            let taken = super::shorten_slice("test");
            assert_eq!(taken, kernel_has_custom_slices());
            if taken {
                assert_eq!(own_slice(), Some(super::SHORT_SLICE_NS));
                // A thread it starts has the default slice, and its niceness.
                let (slice, nice) = std::thread::spawn(|| (own_slice(), own_niceness()))
                    .join()
                    .expect("the child thread");
                assert!(
                    slice.is_some_and(|s| s > super::SHORT_SLICE_NS),
                    "{slice:?}"
                );
                assert_eq!(nice, 3);
            }
            assert_eq!(own_niceness(), 3);
        })
        .join()
        .expect("the test thread");
    }
}
