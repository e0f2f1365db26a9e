//! The load benchmark's references: a bare hyper server that only verifies the HMAC of the raw
//! body and parses the JSON, then answers a small JSON body. No store, no rules, no audit.
//!
//! Run: `cargo run --release --example bare_baseline -- 127.0.0.1:8090 [MODE]` with
//! `COGNIGY_WEBHOOK_SECRET` set (see `bench/load.sh`). Modes:
//! - none: verify and parse, store nothing;
//! - `durable PATH`: also append each verified body (length-prefixed) to the file PATH and
//!   answer only after the `fdatasync` of the group it was written in. One thread owns the
//!   file; it writes everything queued while the previous sync ran, syncs once, then answers
//!   the group: the floor of what a durable acknowledgement costs;
//! - `durable-ring PATH`: the same, but PATH is made first at `RING_BYTES` of written zeros
//!   (and flushed), then overwritten in place from its start, going round when full. Each
//!   `fdatasync` then carries only data: appending to a growing file also commits its new
//!   size (and, with ext4, its new blocks) through the filesystem's journal. The gateway's
//!   log writes into segments made ahead the same way (`src/store/sqlite/log.rs`). In one
//!   `bench/load.sh` run on a slow disk it answered 1.27× the appending mode's req/s, with as
//!   long a tail (bench/README.md, fifty-seventh session);
//!
//!   In both durable modes, `BARE_ROUNDS=NS/MS` adds a thread that every MS milliseconds
//!   keeps the core busy NS nanoseconds for each record written since (work done behind the
//!   log in rounds, as the gateway's projector), and `BARE_BURSTS=US/MS` one that keeps it
//!   busy US microseconds every MS milliseconds (a checkpoint, a merge). At `2600/10` the
//!   reference's p99 rose to 1.5–1.7× its plain runs', at `2600/1` it stayed at 1.0–1.2×
//!   (bench/README.md, sixty-first session);
//! - `accept-all`: answer 200 to every POST without checking anything (the load benchmark's
//!   HTTP sink). It also notes each delivery's lag, from the time in its
//!   `X-Cognihook-Event-Id` (a ULID, stamped when the gateway received the event) to its
//!   arrival here; `GET /lag` answers `{"count", "p50", "p99", "max"}` (milliseconds) of the
//!   deliveries since the last `GET /lag` (`bench/delivery_lag.sh`). A batch (an http sink's
//!   `batch`: `X-Cognihook-Batch-Size` and a JSON array) counts each of its events.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// What the server does with a verified body.
#[derive(Clone)]
enum Mode {
    Bare,
    /// Hand the body to the log thread and wait for its group's sync.
    Durable(mpsc::Sender<(Bytes, tokio::sync::oneshot::Sender<()>)>),
    AcceptAll(Arc<Mutex<Vec<u64>>>),
}

async fn handle(
    key: Hmac<Sha256>,
    mode: Mode,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Mode::AcceptAll(lags) = &mode {
        if req.method() == hyper::Method::GET && req.uri().path() == "/lag" {
            let mut taken = std::mem::take(&mut *lags.lock().unwrap_or_else(|p| p.into_inner()));
            taken.sort_unstable();
            let at = |p: f64| {
                let i = ((p * taken.len() as f64).ceil() as usize).clamp(1, taken.len().max(1));
                taken.get(i - 1).copied().unwrap_or(0)
            };
            let body = format!(
                "{{\"count\":{},\"p50\":{},\"p99\":{},\"max\":{}}}",
                taken.len(),
                at(0.50),
                at(0.99),
                at(1.0)
            );
            return Ok(Response::new(Full::new(Bytes::from(body))));
        }
        let batched = req.headers().contains_key("x-cognihook-batch-size");
        let mut received: Vec<u64> = req
            .headers()
            .get("x-cognihook-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|id| ulid::Ulid::from_string(id).ok())
            .map(|u| u.timestamp_ms())
            .into_iter()
            .collect();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        if let (true, Ok(body)) = (batched, &body) {
            // An array of events (an http sink's `batch`): each element's `eventId`.
            received.extend(event_ids(body).map(|u| u.timestamp_ms()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        lags.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(received.into_iter().map(|at| now.saturating_sub(at)));
        return Ok(answer(StatusCode::OK, "received"));
    }
    let sig = req
        .headers()
        .get("x-cognigy-signature")
        .and_then(|v| hex::decode(v.as_bytes()).ok());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "unreadable")),
    };
    let mut mac = key;
    mac.update(&body);
    if sig.is_none_or(|s| mac.verify_slice(&s).is_err()) {
        return Ok(answer(StatusCode::UNAUTHORIZED, "invalid_signature"));
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => {}
        _ => return Ok(answer(StatusCode::BAD_REQUEST, "invalid_json")),
    }
    if let Mode::Durable(log) = mode {
        let (done, synced) = tokio::sync::oneshot::channel();
        if log.send((body, done)).is_err() || synced.await.is_err() {
            return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        }
    }
    Ok(answer(StatusCode::OK, "success"))
}

/// The ULIDs after every `"eventId":"` in `body`, found without parsing the JSON (the
/// receiver must stay cheap beside the gateway it measures).
fn event_ids(body: &[u8]) -> impl Iterator<Item = ulid::Ulid> + '_ {
    const KEY: &[u8] = b"\"eventId\":\"";
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let found = body[at..].windows(KEY.len()).position(|w| w == KEY)?;
        let start = at + found + KEY.len();
        at = start;
        let id = body.get(start..start + 26)?;
        if let Some(u) = std::str::from_utf8(id)
            .ok()
            .and_then(|s| ulid::Ulid::from_string(s).ok())
        {
            return Some(u);
        }
    })
}

/// The size of `durable-ring`'s file: a few seconds of bodies at full speed.
const RING_BYTES: u64 = 64 << 20;

/// Where the log thread writes.
enum LogFile {
    /// At the end of a growing file (`durable`).
    Append(std::fs::File),
    /// In place in a file of zeros (`durable-ring`), `at` the next write's offset.
    Ring { file: std::fs::File, at: u64 },
}

impl LogFile {
    /// Makes `durable-ring`'s file: `RING_BYTES` of zeros, flushed with its directory entry.
    fn ring(path: &str) -> std::io::Result<LogFile> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RING_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        let dir = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        Ok(LogFile::Ring { file, at: 0 })
    }

    /// Writes one group's bytes and flushes them.
    fn write_synced(&mut self, buf: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self {
            LogFile::Append(file) => file.write_all(buf).and_then(|()| file.sync_data()),
            LogFile::Ring { file, at } => {
                if *at + buf.len() as u64 > RING_BYTES {
                    *at = 0;
                }
                file.write_all_at(buf, *at)?;
                *at += buf.len() as u64;
                file.sync_data()
            }
        }
    }
}

/// Records the log thread has written, for `BARE_ROUNDS`'s thread.
static RECORDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Keeps the core busy for `d` (work that takes the CPU and nothing else).
fn spin(d: Duration) {
    let from = std::time::Instant::now();
    while from.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// `A/B` from the environment variable `name` (two whole numbers), if set.
fn pair(name: &str) -> std::io::Result<Option<(u64, u64)>> {
    let Ok(v) = std::env::var(name) else {
        return Ok(None);
    };
    let parsed = v
        .split_once('/')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((a, b)) if b > 0 => Ok(Some((a, b))),
        _ => Err(std::io::Error::other(format!(
            "{name} must be two whole numbers A/B, B above 0, not {v:?}"
        ))),
    }
}

/// Starts the durable modes' background threads that `BARE_ROUNDS` and `BARE_BURSTS` ask
/// for (see the module's documentation); none by default.
fn start_background() -> std::io::Result<()> {
    if let Some((ns, ms)) = pair("BARE_ROUNDS")? {
        std::thread::Builder::new()
            .name("bare-rounds".into())
            .spawn(move || {
                let mut seen = 0;
                loop {
                    std::thread::sleep(Duration::from_millis(ms));
                    let now = RECORDS.load(std::sync::atomic::Ordering::Relaxed);
                    spin(Duration::from_nanos(
                        now.saturating_sub(seen).saturating_mul(ns),
                    ));
                    seen = now;
                }
            })?;
    }
    if let Some((us, ms)) = pair("BARE_BURSTS")? {
        std::thread::Builder::new()
            .name("bare-bursts".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(ms));
                spin(Duration::from_micros(us));
            })?;
    }
    Ok(())
}

/// The log thread: append every queued body, one `fdatasync`, then answer them all.
fn run_log(mut file: LogFile, rx: mpsc::Receiver<(Bytes, tokio::sync::oneshot::Sender<()>)>) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((body, done)) = next.take() {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&body);
            waiting.push(done);
            RECORDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        if file.write_synced(&buf).is_err() {
            eprintln!("bare baseline: cannot write the log");
            return;
        }
        buf.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

fn answer(status: StatusCode, what: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{{\"status\":\"{what}\"}}"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address: {e}")))?;
    let mode = match std::env::args().nth(2).as_deref() {
        None => Mode::Bare,
        Some("accept-all") => Mode::AcceptAll(Arc::default()),
        Some(mode @ ("durable" | "durable-ring")) => {
            let path = std::env::args()
                .nth(3)
                .ok_or_else(|| std::io::Error::other(format!("{mode} needs a file path")))?;
            let file = if mode == "durable" {
                LogFile::Append(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                )
            } else {
                LogFile::ring(&path)?
            };
            let (tx, rx) = mpsc::channel();
            // Named, so that a trace tells it from the runtime's threads (bench/tail.sh).
            std::thread::Builder::new()
                .name("bare-log".into())
                .spawn(move || run_log(file, rx))?;
            start_background()?;
            Mode::Durable(tx)
        }
        Some(other) => return Err(std::io::Error::other(format!("unknown mode {other}"))),
    };
    let secret = std::env::var("COGNIGY_WEBHOOK_SECRET").unwrap_or_default();
    let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bare baseline listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let key = key.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(key.clone(), mode.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
