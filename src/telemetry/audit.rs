//! The audit log (SPEC §9.2): one JSON line per request outcome, to stdout or a file.
//!
//! Invariants: a line holds identifiers, codes and timings only, never message text, entity
//! values, signatures or secrets ([`AuditLine`] has no field that could carry them). Lines are
//! serialised on the caller's thread into a shared buffer (no wake-up per line); a writer
//! thread drains it every `DRAIN_EVERY` or as soon as it holds `WAKE_BYTES`. Lines are written
//! in the order they were buffered. [`Audit::flush`] returns once every line buffered before
//! it is written and flushed. If output stalls and the buffer reaches `MAX_BUFFER_BYTES`,
//! callers write it out themselves (back-pressure) rather than drop audit lines.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

const DRAIN_EVERY: Duration = Duration::from_millis(20);
const WAKE_BYTES: usize = 64 * 1024;
const MAX_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The outcome an audit line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    WebhookProcessed,
    WebhookRejected,
    WebhookDuplicate,
    DeliverySucceeded,
    /// A failed attempt that will be retried.
    DeliveryFailed,
    DeadLettered,
    Replayed,
}

/// One audit line. Optional fields are left out when unknown.
#[derive(Debug, Clone, Serialize)]
pub struct AuditLine<'a> {
    pub ts: String,
    pub event: AuditKind,
    pub route: &'a str,
    pub correlation_id: &'a str,
    pub transaction_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<&'a str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u64>,
    pub simulated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

struct Shared {
    /// Lines not yet written.
    buf: Mutex<Vec<u8>>,
    /// The output; held while a drained buffer is written, which keeps lines in order.
    out: Mutex<Box<dyn Write + Send>>,
    wake: Condvar,
    stop: AtomicBool,
    /// The file written to, if not stdout (reopened on request, for log rotation).
    path: Option<std::path::PathBuf>,
}

fn open_append(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

impl Shared {
    /// Writes out everything buffered so far.
    fn drain(&self) {
        let Ok(mut out) = self.out.lock() else { return };
        let data = match self.buf.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(_) => return,
        };
        if !data.is_empty() {
            if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                tracing::error!(error = %e, bytes = data.len(), "audit lines could not be written");
            }
        }
    }
}

/// Handle to the audit log; cheap to clone. When the last clone is dropped, the writer
/// thread drains the buffer and stops.
#[derive(Clone)]
pub struct Audit {
    shared: Option<Arc<Handle>>,
}

/// Owned by the `Audit` clones only (the writer thread holds `Shared`), so its drop marks the
/// end of the log.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl Audit {
    /// An audit log that writes nothing (`[audit] enabled = false`).
    pub fn disabled() -> Audit {
        Audit { shared: None }
    }

    /// Starts the writer thread on stdout, or on `path` (appending).
    pub fn start(path: Option<&Path>) -> std::io::Result<Audit> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(open_append(p)?),
            None => Box::new(std::io::stdout()),
        };
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(WAKE_BYTES)),
            out: Mutex::new(out),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            path: path.map(Path::to_path_buf),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cognihook-audit".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    if let Ok(b) = s.buf.lock() {
                        let _ = s.wake.wait_timeout(b, DRAIN_EVERY);
                    }
                    s.drain();
                }
                s.drain();
            })?;
        Ok(Audit {
            shared: Some(Arc::new(Handle(shared))),
        })
    }

    /// Buffers one line.
    pub fn write(&self, line: &AuditLine<'_>) {
        let Some(Handle(s)) = self.shared.as_deref() else {
            return;
        };
        let mut buf = Vec::with_capacity(320);
        if serde_json::to_writer(&mut buf, line).is_err() {
            return;
        }
        buf.push(b'\n');
        let len = match s.buf.lock() {
            Ok(mut b) => {
                b.extend_from_slice(&buf);
                b.len()
            }
            Err(_) => return,
        };
        if len >= MAX_BUFFER_BYTES {
            s.drain();
        } else if len >= WAKE_BYTES {
            s.wake.notify_one();
        }
    }

    /// Writes what is buffered to the current file, then opens the file's path again (after
    /// `mv audit.jsonl audit.1`, later lines go to a new `audit.jsonl`: SIGHUP, for
    /// logrotate). On stdout, or when the path cannot be opened (the old file is kept), says so.
    pub fn reopen(&self) -> Result<(), String> {
        let Some(Handle(s)) = self.shared.as_deref() else {
            return Ok(());
        };
        let Some(path) = &s.path else {
            return Ok(());
        };
        s.drain();
        let file = open_append(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        let mut out = s
            .out
            .lock()
            .map_err(|_| "the audit log's lock is poisoned".to_string())?;
        *out = Box::new(file);
        Ok(())
    }

    /// Writes and flushes every line buffered so far.
    pub fn flush(&self) {
        if let Some(Handle(s)) = self.shared.as_deref() {
            s.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_in_order_and_flushed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(Some(&path)).expect("start");
        for i in 0..100u64 {
            audit.write(&AuditLine {
                ts: crate::now_rfc3339(),
                event: AuditKind::WebhookProcessed,
                route: "r",
                correlation_id: "c",
                transaction_id: "t",
                event_id: Some("e"),
                session_id: Some("s"),
                event_type: None,
                status: 200,
                code: None,
                latency_ms: 1.5,
                state_version: Some(i),
                simulated: false,
                sink: None,
                attempt: None,
            });
        }
        audit.flush();
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99]["state_version"], 99);
        assert_eq!(lines[0]["event"], "webhook_processed");
        assert!(lines[0].get("event_type").is_none());
    }

    #[test]
    fn reopening_after_a_rotation_writes_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(Some(&path)).expect("start");
        let line = |route| AuditLine {
            ts: crate::now_rfc3339(),
            event: AuditKind::WebhookProcessed,
            route,
            correlation_id: "c",
            transaction_id: "t",
            event_id: None,
            session_id: None,
            event_type: None,
            status: 200,
            code: None,
            latency_ms: 1.0,
            state_version: None,
            simulated: false,
            sink: None,
            attempt: None,
        };
        audit.write(&line("before"));
        audit.flush();
        let rotated = dir.path().join("audit.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        audit.write(&line("between"));
        audit.reopen().expect("reopen");
        audit.write(&line("after"));
        audit.flush();
        let old = std::fs::read_to_string(&rotated).expect("old");
        let new = std::fs::read_to_string(&path).expect("new");
        assert!(
            old.contains("\"before\"") && old.contains("\"between\""),
            "{old}"
        );
        assert!(
            new.contains("\"after\"") && !new.contains("before"),
            "{new}"
        );
    }
}
