//! The audit log (SPEC §9.2): one JSON line per request outcome, written by a dedicated thread
//! to stdout or a file.
//!
//! Invariants: a line holds identifiers, codes and timings only, never message text, entity
//! values, signatures or secrets ([`AuditLine`] has no field that could carry them). Lines are
//! serialised on the caller's thread and written in order; [`Audit::flush`] returns once every
//! line handed in before it is written and flushed. When the writer falls behind by
//! `QUEUE_LINES` lines, callers wait (back-pressure) rather than drop audit lines.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};

use serde::Serialize;

const QUEUE_LINES: usize = 65_536;

/// The outcome an audit line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    WebhookProcessed,
    WebhookRejected,
    WebhookDuplicate,
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
}

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Option<SyncSender<Msg>>,
}

impl Audit {
    /// An audit log that writes nothing (`[audit] enabled = false`).
    pub fn disabled() -> Audit {
        Audit { tx: None }
    }

    /// Starts the writer thread on stdout, or on `path` (appending).
    pub fn start(path: Option<&Path>) -> std::io::Result<Audit> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("cognihook-audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    let mut waiting = Vec::new();
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Line(l) => {
                                let _ = out.write_all(&l);
                            }
                            Msg::Flush(done) => waiting.push(done),
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                    for w in waiting {
                        let _ = w.send(());
                    }
                }
                let _ = out.flush();
            })?;
        Ok(Audit { tx: Some(tx) })
    }

    /// Queues one line.
    pub fn write(&self, line: &AuditLine<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut buf = Vec::with_capacity(320);
        if serde_json::to_writer(&mut buf, line).is_ok() {
            buf.push(b'\n');
            let _ = tx.send(Msg::Line(buf));
        }
    }

    /// Waits until every line queued so far is written and flushed.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = mpsc::channel();
        if tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv();
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
}
