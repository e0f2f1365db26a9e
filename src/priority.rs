//! Thread priorities: background work ranked below the request path. Linux schedules
//! threads, so a thread's niceness leaves the rest of the process alone. Failure only costs
//! the preference, so it is logged, not fatal; elsewhere than Linux nothing is done.
//!
//! A leaf: it imports nothing of the crate.

/// Sets the calling thread's niceness to `nice` (0 leaves it as it is). `what` names the
/// thread in the warning if the system refuses.
pub fn lower_current_thread(nice: u8, what: &str) {
    if nice == 0 {
        return;
    }
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
