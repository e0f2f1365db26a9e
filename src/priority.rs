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

/// Sets the niceness of every thread of this process whose name is one of `names` (threads
/// a library starts, which take no hook). Returns how many were set.
pub fn lower_threads_named(names: &[&str], nice: u8, what: &str) -> usize {
    if nice == 0 {
        return 0;
    }
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        let mut set = 0;
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
                continue;
            };
            if !names.contains(&comm.trim_end()) {
                continue;
            }
            let Some(pid) = rustix::process::Pid::from_raw(tid) else {
                continue;
            };
            match rustix::process::setpriority_process(Some(pid), i32::from(nice)) {
                Ok(()) => set += 1,
                Err(e) => {
                    tracing::warn!(error = %e, nice, what, "cannot lower a thread's priority")
                }
            }
        }
        set
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (names, what);
        0
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
