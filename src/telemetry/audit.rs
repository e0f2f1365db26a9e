//! The audit log (SPEC §9.2): one JSON line per request outcome, to stdout or a file.
//!
//! Invariants: a line holds identifiers, codes and timings only, never message text, entity
//! values, signatures or secrets ([`AuditLine`] has no field that could carry them). Lines are
//! serialised on the caller's thread into a shared buffer (no wake-up per line); a writer
//! thread drains it every `DRAIN_EVERY` or as soon as it holds `WAKE_BYTES`. Lines are written
//! in the order they were buffered. [`Audit::flush`] returns once every line buffered before
//! it is written and flushed. If output stalls and the buffer reaches `MAX_BUFFER_BYTES`,
//! callers write it out themselves (back-pressure) rather than drop audit lines.
//!
//! Failures and crashes: lines that cannot be written (a full disk, a closed stdout) stay
//! buffered and are tried again, up to `MAX_BUFFER_BYTES`; past that the oldest are dropped
//! and counted. Every failure is counted (`cognihook_audit_write_failures_total`), logged once
//! per interval, and makes `/readyz` answer 503 until a write succeeds. With a *mark file*
//! (`Audit::start`'s `mark`), the writer records how far lines are known to be written
//! ("written through" a time, or "clean" after a shutdown that wrote everything), so that
//! after a crash the lines of events committed since can be written again from the store
//! (`app` does it at start; see `previous_mark` and `recover`).

use parking_lot::{Condvar, Mutex};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::Cause;

/// Why audit lines cannot be written: the output failed, or the path did not open again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit lines cannot be written: {0}")]
    Write(Cause),
    #[error("cannot open the audit log {}: {source}", path.display())]
    Open { path: PathBuf, source: Cause },
}

const DRAIN_EVERY: Duration = Duration::from_millis(20);
const WAKE_BYTES: usize = 64 * 1024;
const MAX_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// What each of the two buffers (the one lines go to, the one being written) starts with: a
/// buffer drained at `WAKE_BYTES` never grows. A written buffer is kept for the next swap
/// unless a stall grew it past `KEEP_BYTES`.
const BUFFER_BYTES: usize = 2 * WAKE_BYTES;
const KEEP_BYTES: usize = 4 * WAKE_BYTES;
/// The mark file is rewritten at most this often (it costs a write and a rename).
const MARK_EVERY_MS: i64 = 100;
/// `MarkFile::written` while the mark must not move.
const MARK_HELD: i64 = i64::MAX;

static WRITE_FAILED: crate::telemetry::throttle::Throttle =
    crate::telemetry::throttle::Throttle::new(Duration::from_secs(10));

/// How far an earlier run's lines were known to be written (its mark file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// It stopped after writing every line.
    Clean,
    /// Every line buffered before this time (Unix ms, `crate::now_millis`) was written; lines
    /// after it may have been lost with the process.
    WrittenThrough(i64),
}

impl Mark {
    fn render(self) -> String {
        match self {
            Mark::Clean => "clean\n".to_string(),
            // With the replica that wrote it: on PostgreSQL the next run recovers only the
            // events that replica committed.
            Mark::WrittenThrough(ms) => format!("written-through {ms} {}\n", crate::replica_id()),
        }
    }

    fn parse(text: &str) -> Option<Mark> {
        let text = text.trim();
        if text == "clean" {
            return Some(Mark::Clean);
        }
        let mut words = text.strip_prefix("written-through ")?.split_whitespace();
        words.next()?.parse().ok().map(Mark::WrittenThrough)
    }
}

impl<'a> AuditLine<'a> {
    /// A line of `event`, stamped now, every other field empty: a call site sets only what
    /// its kind of outcome has (`AuditLine { route, ..AuditLine::new(kind) }`).
    pub fn new(event: AuditKind) -> AuditLine<'a> {
        AuditLine {
            ts: crate::now_rfc3339(),
            event,
            route: "",
            correlation_id: "",
            transaction_id: "",
            event_id: None,
            session_id: None,
            event_type: None,
            status: 0,
            code: None,
            latency_ms: 0.0,
            state_version: None,
            simulated: false,
            sink: None,
            attempt: None,
            recovered: false,
        }
    }

    /// Dead letters replayed by the admin API or the CLI; `state_version` holds how many.
    pub fn replayed(rows: u64) -> AuditLine<'a> {
        AuditLine {
            status: 200,
            state_version: Some(rows),
            ..AuditLine::new(AuditKind::Replayed)
        }
    }
}

impl<'a> AuditLine<'a> {
    /// An event's personal fields shown in the console.
    pub fn revealed(event_id: &'a str) -> AuditLine<'a> {
        AuditLine {
            event_id: Some(event_id),
            status: 200,
            ..AuditLine::new(AuditKind::PayloadRevealed)
        }
    }
}

/// The audit line of a forgotten session: its id, and in `state_version` how many events lost
/// their payloads.
pub fn session_forgotten(session_id: &str, events: u64) -> AuditLine<'_> {
    AuditLine {
        session_id: Some(session_id),
        status: 200,
        state_version: Some(events),
        ..AuditLine::new(AuditKind::SessionForgotten)
    }
}

/// Reads the mark an earlier run left at `path`: `None` when there is none (a first run, or
/// a version before marks) or it cannot be read.
pub fn previous_mark(path: &Path) -> Option<Mark> {
    Mark::parse(&std::fs::read_to_string(path).ok()?)
}

/// The replicas (`host:pid`) whose lines the mark at `path` covers, when it says: the one
/// that wrote it, and while a run has not yet written lines of its own, the earlier ones it
/// recovered for (see `Audit::release_mark`).
pub fn previous_replicas(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    match text.trim().strip_prefix("written-through ") {
        Some(rest) => rest
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    }
}

/// Event ids of the `webhook_processed` lines in the last 64 MiB of the audit file at `path`
/// (none when it does not exist).
pub fn processed_in_tail(path: &Path) -> std::io::Result<std::collections::HashSet<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024 * 1024;
    let mut ids = std::collections::HashSet::new();
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut text = Vec::new();
    f.read_to_end(&mut text)?;
    #[derive(serde::Deserialize)]
    struct Seen {
        event: String,
        event_id: Option<String>,
    }
    // The first line may be cut by the 64 MiB boundary and the last by the crash: skipped.
    for line in text.split(|&b| b == b'\n') {
        if let Ok(Seen {
            event,
            event_id: Some(id),
        }) = serde_json::from_slice::<Seen>(line)
        {
            if event == "webhook_processed" {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

struct MarkFile {
    path: std::path::PathBuf,
    /// When the mark was last written (Unix ms).
    written: std::sync::atomic::AtomicI64,
    /// When the lines behind the newest mark written were taken (Unix ms); held while a
    /// mark is written. The writer thread and `close` both drain and mark: a drain that took
    /// its lines before `close` must not write its mark over `close`'s `clean`.
    newest: parking_lot::Mutex<i64>,
}

impl MarkFile {
    fn new(path: std::path::PathBuf, written: i64) -> MarkFile {
        MarkFile {
            path,
            written: std::sync::atomic::AtomicI64::new(written),
            newest: parking_lot::Mutex::new(i64::MIN),
        }
    }

    /// Writes `mark` for the lines taken at `taken_at`, unless a mark for lines taken as late
    /// or later is there already (`clean` is always written).
    fn write(&self, mark: Mark, taken_at: i64) -> std::io::Result<()> {
        let mut newest = self.newest.lock();
        if mark != Mark::Clean && taken_at <= *newest {
            return Ok(());
        }
        *newest = taken_at;
        self.replace(&mark.render())
    }

    fn write_text(&self, text: &str) -> std::io::Result<()> {
        let _newest = self.newest.lock();
        self.replace(text)
    }

    fn replace(&self, text: &str) -> std::io::Result<()> {
        let tmp = self.path.with_extension("mark.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

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
    /// A session was forgotten (`DELETE /admin/sessions/{id}`, `cognihook sessions forget`).
    SessionForgotten,
    /// An operator revealed an event's message text and payload in the console.
    PayloadRevealed,
}

impl AuditKind {
    /// The name a line carries (what serde writes for it).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::WebhookProcessed => "webhook_processed",
            AuditKind::WebhookRejected => "webhook_rejected",
            AuditKind::WebhookDuplicate => "webhook_duplicate",
            AuditKind::DeliverySucceeded => "delivery_succeeded",
            AuditKind::DeliveryFailed => "delivery_failed",
            AuditKind::DeadLettered => "dead_lettered",
            AuditKind::Replayed => "replayed",
            AuditKind::SessionForgotten => "session_forgotten",
            AuditKind::PayloadRevealed => "payload_revealed",
        }
    }
}

/// One audit line. Optional fields are left out when unknown. Written as
/// [`AuditLine::to_line`] writes it: a field added here goes there too, and into its test.
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
    /// Written again from the store after a crash lost the original line (`ts` is then the
    /// commit time, `transaction_id` empty and `latency_ms` 0). Left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

impl AuditLine<'_> {
    /// The line as compact JSON and a newline.
    #[cfg(test)]
    fn to_line(&self) -> String {
        let mut out = String::new();
        self.write_into(&mut out);
        out
    }

    /// Appends the line as compact JSON and a newline: what `serde_json` writes for it,
    /// written by hand (`crate::json`; one line per request and per delivery attempt).
    fn write_into(&self, out: &mut String) {
        use crate::json::{float, string};
        out.push_str("{\"ts\":");
        string(out, &self.ts);
        out.push_str(",\"event\":\"");
        out.push_str(self.event.as_str());
        out.push('"');
        for (name, v) in [
            ("route", Some(self.route)),
            ("correlation_id", Some(self.correlation_id)),
            ("transaction_id", Some(self.transaction_id)),
            ("event_id", self.event_id),
            ("session_id", self.session_id),
            ("event_type", self.event_type),
        ] {
            if let Some(v) = v {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                string(out, v);
            }
        }
        out.push_str(",\"status\":");
        out.push_str(itoa::Buffer::new().format(self.status));
        if let Some(code) = self.code {
            out.push_str(",\"code\":");
            string(out, code);
        }
        out.push_str(",\"latency_ms\":");
        float(out, self.latency_ms);
        if let Some(v) = self.state_version {
            out.push_str(",\"state_version\":");
            out.push_str(itoa::Buffer::new().format(v));
        }
        out.push_str(",\"simulated\":");
        out.push_str(if self.simulated { "true" } else { "false" });
        if let Some(sink) = self.sink {
            out.push_str(",\"sink\":");
            string(out, sink);
        }
        if let Some(a) = self.attempt {
            out.push_str(",\"attempt\":");
            out.push_str(itoa::Buffer::new().format(a));
        }
        if self.recovered {
            out.push_str(",\"recovered\":true");
        }
        out.push_str("}\n");
    }
}

struct Shared {
    /// Lines not yet written.
    buf: Mutex<Vec<u8>>,
    /// The other buffer, empty: a drain swaps it in for `buf` and keeps the buffer it wrote
    /// (cleared) as the next one. Taken only with `out` held. A drain used to leave `buf`
    /// without capacity, and the lines after it grew it again by doubling: a `realloc` and
    /// copy into memory not touched for a while, every other request at callgrind's rate.
    /// With the swap (and each line written into a reused `String`), the gateway's misses of
    /// a simulated 1 MiB cache fell from ~96 to ~81 a request (bench/README.md, sixty-third
    /// session).
    spare: Mutex<Vec<u8>>,
    /// The output; held while a drained buffer is written, which keeps lines in order.
    out: Mutex<Box<dyn Write + Send>>,
    wake: Condvar,
    stop: AtomicBool,
    /// The file written to, if not stdout (reopened on request, for log rotation).
    path: Option<std::path::PathBuf>,
    mark: Option<MarkFile>,
    /// Why the last write failed, until one succeeds.
    failing: Mutex<Option<AuditError>>,
}

/// Opens `p` for appending, its write-back started as it fills (`crate::writeback`: the
/// file is never synced, so otherwise the kernel writes its pages back once they are 30 s
/// old, several seconds' lines at a time, ahead of the store's flushes). A file that does not end in a newline holds a line cut short (a
/// process killed in the middle of writing it): the line is ended first, so the next line
/// is not glued to it and stays whole. The cut line is left as it is (its event's line is
/// written again from the store when the start recovers lost lines: `processed_in_tail`
/// skips a line that does not parse).
fn open_append(p: &Path) -> std::io::Result<crate::writeback::Appender> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(p)?;
    if f.metadata()?.len() > 0 {
        let mut last = [0u8];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
            tracing::warn!(
                path = %p.display(),
                "the audit file ended in a line cut short (the last run stopped while writing \
                 it): the line was ended so that later lines stay whole"
            );
        }
    }
    crate::writeback::Appender::new(f)
}

impl Shared {
    /// Writes out everything buffered so far. On failure the lines go back to the front of
    /// the buffer (dropped and counted past `MAX_BUFFER_BYTES`); returns whether it wrote.
    fn drain(&self) -> bool {
        let mut out = self.out.lock();
        let taken_at = crate::now_millis();
        let mut spare = self.spare.lock();
        let mut data = {
            let mut b = self.buf.lock();
            if b.is_empty() {
                drop(b);
                drop(spare);
                drop(out);
                self.advance_mark(taken_at);
                return true;
            }
            std::mem::replace(&mut *b, std::mem::take(&mut *spare))
        };
        match out.write_all(&data).and_then(|()| out.flush()) {
            Ok(()) => {
                data.clear();
                if data.capacity() <= KEEP_BYTES {
                    *spare = data;
                }
                drop(spare);
                // Cleared with `out` held, so a failure recorded after this write stays.
                let recovered = self.failing.lock().take().is_some();
                drop(out);
                if recovered {
                    tracing::info!("audit lines are being written again");
                }
                self.advance_mark(taken_at);
                true
            }
            Err(e) => {
                // Put back, and the failure recorded, before `out` is let go: a drain waiting
                // for it (another thread's, or `flush`) then finds these lines in front of the
                // newer ones, writes them in order and, if it works, clears the failure.
                self.failed(&e, data, &mut spare);
                drop(spare);
                drop(out);
                false
            }
        }
    }

    /// Puts `data`, which could not be written, back in front of the buffer (unless that
    /// would pass `MAX_BUFFER_BYTES`: then its lines are dropped and counted) and records why.
    /// Called with `out` and `spare` held.
    fn failed(&self, e: &std::io::Error, data: Vec<u8>, spare: &mut Vec<u8>) {
        use crate::telemetry::metrics::{AUDIT_LINES_DROPPED_TOTAL, AUDIT_WRITE_FAILURES_TOTAL};
        metrics::counter!(AUDIT_WRITE_FAILURES_TOTAL).increment(1);
        *self.failing.lock() = Some(AuditError::Write(Cause::new(e.to_string())));
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        let dropped = {
            let mut b = self.buf.lock();
            if data.len() + b.len() <= MAX_BUFFER_BYTES {
                let mut newer = std::mem::replace(&mut *b, data);
                b.extend_from_slice(&newer);
                // The buffer the drain swapped in goes back to being the spare.
                newer.clear();
                if newer.capacity() <= KEEP_BYTES {
                    *spare = newer;
                }
                0
            } else {
                lines
            }
        };
        if dropped > 0 {
            metrics::counter!(AUDIT_LINES_DROPPED_TOTAL).increment(dropped as u64);
        }
        if let Some(suppressed) = WRITE_FAILED.check() {
            tracing::error!(error = %e, lines, dropped, suppressed,
                "audit lines could not be written; kept to try again unless `dropped` \
                 (`suppressed`: failed writes since the last line)");
        }
    }

    /// Records that every line buffered before `taken_at` is written (at most every
    /// `MARK_EVERY_MS`).
    fn advance_mark(&self, taken_at: i64) {
        let Some(m) = &self.mark else { return };
        let last = m.written.load(Ordering::Relaxed);
        if last == MARK_HELD || taken_at.saturating_sub(last) < MARK_EVERY_MS {
            return;
        }
        m.written.store(taken_at, Ordering::Relaxed);
        if let Err(e) = m.write(Mark::WrittenThrough(taken_at), taken_at) {
            tracing::debug!(error = %e, "the audit mark could not be written");
        }
    }

    /// Writes everything and, if that worked, marks the log clean.
    fn close(&self) {
        if self.drain() {
            let held = |m: &&MarkFile| m.written.load(Ordering::Relaxed) == MARK_HELD;
            if let Some(m) = self.mark.as_ref().filter(|m| !held(m)) {
                if let Err(e) = m.write(Mark::Clean, crate::now_millis()) {
                    tracing::warn!(error = %e, path = %m.path.display(),
                        "the audit mark could not be written");
                }
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

    /// Starts the writer thread on stdout, or on `path` (appending). With `mark`, records there
    /// how far lines are written (read it with `previous_mark` before starting).
    pub fn start(path: Option<&Path>, mark: Option<&Path>) -> std::io::Result<Audit> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(open_append(p)?),
            None => Box::new(std::io::stdout()),
        };
        Audit::start_on(out, path, mark)
    }

    fn start_on(
        out: Box<dyn Write + Send>,
        path: Option<&Path>,
        mark: Option<&Path>,
    ) -> std::io::Result<Audit> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(BUFFER_BYTES)),
            spare: Mutex::new(Vec::with_capacity(BUFFER_BYTES)),
            out: Mutex::new(out),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            path: path.map(Path::to_path_buf),
            // Held (not moved) until `release_mark`: the earlier run's mark must stay until the
            // lines it calls for have been recovered into this run's buffer.
            mark: mark.map(|p| MarkFile::new(p.to_path_buf(), MARK_HELD)),
            failing: Mutex::new(None),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cognihook-audit".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    let mut b = s.buf.lock();
                    s.wake.wait_for(&mut b, DRAIN_EVERY);
                    drop(b);
                    s.drain();
                }
                s.close();
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
        thread_local! {
            /// The line being written, reused: one allocation per thread, not per line.
            static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
        }
        let len = LINE.with_borrow_mut(|text| {
            text.clear();
            line.write_into(text);
            let len = {
                let mut b = s.buf.lock();
                b.extend_from_slice(text.as_bytes());
                b.len()
            };
            // A long line (ids are bounded, but not small) does not keep its size.
            if text.capacity() > 4096 {
                *text = String::with_capacity(512);
            }
            len
        });
        if len >= MAX_BUFFER_BYTES {
            s.drain();
        } else if len >= WAKE_BYTES {
            s.wake.notify_one();
        }
    }

    /// Writes what is buffered to the current file, then opens the file's path again (after
    /// `mv audit.jsonl audit.1`, later lines go to a new `audit.jsonl`: SIGHUP, for
    /// logrotate). On stdout, or when the path cannot be opened (the old file is kept), says so.
    pub fn reopen(&self) -> Result<(), AuditError> {
        let Some(Handle(s)) = self.shared.as_deref() else {
            return Ok(());
        };
        let Some(path) = &s.path else {
            return Ok(());
        };
        s.drain();
        let file = open_append(path).map_err(|e| AuditError::Open {
            path: path.to_path_buf(),
            source: Cause::new(e),
        })?;
        *s.out.lock() = Box::new(file);
        Ok(())
    }

    /// Writes and flushes every line buffered so far.
    pub fn flush(&self) {
        if let Some(Handle(s)) = self.shared.as_deref() {
            s.drain();
        }
    }

    /// Writes every line buffered so far and marks the log clean (shutdown).
    pub fn close(&self) {
        if let Some(Handle(s)) = self.shared.as_deref() {
            s.close();
        }
    }

    /// Lets the mark move on: call once the earlier run's lost lines (if any) are buffered,
    /// with the earlier mark's time and replicas when it was not clean.
    ///
    /// Until this run's first write moves it, the mark names this replica beside the earlier
    /// ones, from the earlier time (or now): a crash before then loses neither the recovered
    /// lines still buffered nor those of events this run commits meanwhile.
    pub fn release_mark(&self, earlier: Option<(i64, &[String])>) {
        let Some(m) = self.shared.as_deref().and_then(|Handle(s)| s.mark.as_ref()) else {
            return;
        };
        let (since, replicas) = earlier.unwrap_or((crate::now_millis(), &[]));
        let mut text = format!("written-through {since}");
        for r in replicas
            .iter()
            .map(String::as_str)
            .chain([crate::replica_id()])
        {
            text.push(' ');
            text.push_str(r);
        }
        text.push('\n');
        if let Err(e) = m.write_text(&text) {
            tracing::debug!(error = %e, "the audit mark could not be written");
        }
        m.written.store(i64::MIN / 2, Ordering::Relaxed);
    }

    /// Why lines cannot be written, while they cannot (`/readyz`).
    pub fn health(&self) -> Result<(), AuditError> {
        let Some(Handle(s)) = self.shared.as_deref() else {
            return Ok(());
        };
        s.failing.lock().clone().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_what_serde_json_writes_for_it() {
        let kinds = [
            AuditKind::WebhookProcessed,
            AuditKind::WebhookRejected,
            AuditKind::WebhookDuplicate,
            AuditKind::DeliverySucceeded,
            AuditKind::DeliveryFailed,
            AuditKind::DeadLettered,
            AuditKind::Replayed,
            AuditKind::SessionForgotten,
            AuditKind::PayloadRevealed,
        ];
        for (i, event) in kinds.into_iter().enumerate() {
            let all = i % 2 == 0;
            let line = AuditLine {
                ts: crate::now_rfc3339(),
                event,
                route: "r\"1",
                correlation_id: "c\u{1}",
                transaction_id: "",
                event_id: all.then_some("e"),
                session_id: all.then_some("sé"),
                event_type: all.then_some("nlu\\input"),
                status: 422,
                code: all.then_some("rule_rejected"),
                latency_ms: [0.0, 1.25, 12345.678, f64::NAN][i % 4],
                state_version: all.then_some(u64::MAX),
                simulated: all,
                sink: all.then_some("s\n"),
                attempt: all.then_some(u32::MAX),
                recovered: all,
            };
            let mut want = serde_json::to_string(&line).expect("json");
            want.push('\n');
            assert_eq!(line.to_line(), want, "{event:?}");
        }
    }

    #[test]
    fn lines_are_json_in_order_and_flushed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(Some(&path), None).expect("start");
        for i in 0..100u64 {
            audit.write(&line(i));
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
    fn a_line_cut_short_by_a_kill_is_ended_so_the_next_start_writes_whole_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let whole = "{\"ts\":\"t\",\"event\":\"webhook_processed\"}\n";
        let cut = "{\"ts\":\"t\",\"event\":\"webhook_pro";
        std::fs::write(&path, format!("{whole}{cut}")).expect("write");
        for _ in 0..2 {
            // The second start finds the file ending in a whole line: nothing is added.
            let audit = Audit::start(Some(&path), None).expect("start");
            audit.write(&line(1));
            audit.close();
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], cut, "the cut line is kept as it was");
        for line in [lines[0], lines[2], lines[3]] {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole line");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn reopening_after_a_rotation_writes_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(Some(&path), None).expect("start");
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
            recovered: false,
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

    /// An output that fails while `broken` is set, like a full disk.
    #[derive(Clone, Default)]
    struct Flaky {
        broken: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Flaky {
        /// The `state_version` of each line written, in order.
        fn versions(&self) -> Vec<u64> {
            let text = String::from_utf8(self.got.lock().clone()).expect("utf8");
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
                .map(|v| v["state_version"].as_u64().expect("version"))
                .collect()
        }
    }

    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("No space left on device"));
            }
            self.got.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(v: u64) -> AuditLine<'static> {
        AuditLine {
            ts: crate::now_rfc3339(),
            event: AuditKind::WebhookProcessed,
            route: "r",
            correlation_id: "c",
            transaction_id: "t",
            event_id: Some("e"),
            session_id: None,
            event_type: None,
            status: 200,
            code: None,
            latency_ms: 1.0,
            state_version: Some(v),
            simulated: false,
            sink: None,
            attempt: None,
            recovered: false,
        }
    }

    #[test]
    fn lines_that_cannot_be_written_are_kept_reported_and_written_once_output_works() {
        let out = Flaky::default();
        let audit = Audit::start_on(Box::new(out.clone()), None, None).expect("start");
        out.broken.store(true, Ordering::SeqCst);
        audit.write(&line(1));
        audit.write(&line(2));
        audit.flush();
        let why = audit.health().expect_err("failing");
        assert!(why.to_string().contains("No space left"), "{why}");
        assert!(out.got.lock().is_empty());
        out.broken.store(false, Ordering::SeqCst);
        audit.write(&line(3));
        audit.flush();
        audit.health().expect("healthy again");
        let versions = out.versions();
        assert_eq!(versions, [1, 2, 3], "kept, in order");
    }

    #[test]
    fn drains_swap_two_buffers_that_keep_their_room_and_the_lines_their_order() {
        let out = Flaky::default();
        let audit = Audit::start_on(Box::new(out.clone()), None, None).expect("start");
        let Some(Handle(s)) = audit.shared.as_deref() else {
            panic!("enabled")
        };
        for round in 0..5u64 {
            for i in 0..10 {
                audit.write(&line(round * 10 + i));
            }
            audit.flush();
            // The buffer lines go to after a drain is the one the drain before wrote, emptied:
            // it has room, so the next lines do not grow it from nothing.
            let b = s.buf.lock();
            assert!(b.is_empty(), "round {round}");
            assert!(
                b.capacity() >= BUFFER_BYTES,
                "round {round}: {}",
                b.capacity()
            );
        }
        let versions = out.versions();
        assert_eq!(versions, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_buffer_a_stall_grew_is_not_kept_after_it_is_written() {
        let out = Flaky::default();
        let audit = Audit::start_on(Box::new(out.clone()), None, None).expect("start");
        let Some(Handle(s)) = audit.shared.as_deref() else {
            panic!("enabled")
        };
        out.broken.store(true, Ordering::SeqCst);
        // More than `KEEP_BYTES` of lines while the output fails: they stay buffered.
        let mut n = 0u64;
        while s.buf.lock().len() <= KEEP_BYTES {
            audit.write(&line(n));
            n += 1;
        }
        out.broken.store(false, Ordering::SeqCst);
        audit.flush();
        assert!(s.spare.lock().capacity() <= KEEP_BYTES);
        let written = String::from_utf8(out.got.lock().clone()).expect("utf8");
        assert_eq!(written.lines().count() as u64, n);
    }

    #[test]
    fn the_mark_is_held_until_released_then_follows_writes_and_ends_clean() {
        let dir = tempfile::tempdir().expect("tmp");
        let mark = dir.path().join("audit-mark");
        std::fs::write(&mark, "written-through 5\n").expect("earlier mark");
        let out = Flaky::default();
        let audit = Audit::start_on(Box::new(out.clone()), None, Some(&mark)).expect("start");
        audit.write(&line(1));
        audit.flush();
        assert_eq!(
            previous_mark(&mark),
            Some(Mark::WrittenThrough(5)),
            "held: the earlier run's mark stays until its lines are recovered"
        );
        audit.release_mark(Some((5, &["a:1".to_string()])));
        assert_eq!(previous_mark(&mark), Some(Mark::WrittenThrough(5)));
        assert_eq!(
            previous_replicas(&mark),
            ["a:1", crate::replica_id()],
            "released: the earlier replica's time and name, and this replica's, until it writes"
        );
        let before = crate::now_millis();
        audit.write(&line(2));
        audit.flush();
        match previous_mark(&mark) {
            Some(Mark::WrittenThrough(t)) => assert!(t >= before, "{t} < {before}"),
            other => panic!("expected a written-through mark, got {other:?}"),
        }
        // While a line cannot be written the mark does not move past it.
        out.broken.store(true, Ordering::SeqCst);
        audit.write(&line(3));
        audit.flush();
        let stuck = previous_mark(&mark);
        std::thread::sleep(Duration::from_millis(MARK_EVERY_MS as u64 + 10));
        audit.flush();
        assert_eq!(previous_mark(&mark), stuck);
        out.broken.store(false, Ordering::SeqCst);
        audit.close();
        assert_eq!(previous_mark(&mark), Some(Mark::Clean));
    }

    #[test]
    fn a_drain_that_took_its_lines_before_close_does_not_mark_over_clean() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit-mark");
        let m = MarkFile::new(path.clone(), 0);
        m.write(Mark::WrittenThrough(100), 100).expect("mark");
        assert_eq!(previous_mark(&path), Some(Mark::WrittenThrough(100)));
        // `close` marks clean at 200; the writer thread's drain of lines taken at 150 (or at
        // 200, the same millisecond) finishes its mark only afterwards.
        m.write(Mark::Clean, 200).expect("clean");
        m.write(Mark::WrittenThrough(150), 150).expect("late mark");
        m.write(Mark::WrittenThrough(200), 200).expect("late mark");
        assert_eq!(previous_mark(&path), Some(Mark::Clean));
        // Lines taken after it move the mark on.
        m.write(Mark::WrittenThrough(201), 201).expect("mark");
        assert_eq!(previous_mark(&path), Some(Mark::WrittenThrough(201)));
    }

    #[test]
    fn the_tail_names_the_events_that_have_a_processed_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        assert!(processed_in_tail(&path)
            .expect("missing is empty")
            .is_empty());
        std::fs::write(
            &path,
            "{\"event\":\"webhook_processed\",\"event_id\":\"A\"}\n\
             {\"event\":\"delivery_succeeded\",\"event_id\":\"B\"}\n\
             {\"event\":\"webhook_processed\",\"event_id\":\"C\"}\n{\"event\":\"webh",
        )
        .expect("write");
        let ids = processed_in_tail(&path).expect("read");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains("A") && ids.contains("C"));
    }
}
