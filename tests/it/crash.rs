//! `kill -9` of the real binary at random moments under load, many times over on one data
//! directory (the embedded store). After every restart each acknowledged event must still be
//! there exactly once, with its outbox rows and the stateVersion it was answered with;
//! repeats of acknowledged requests get their original answers; and every session's versions
//! are exactly 1..N (events committed but never acknowledged may be there too: a crash can
//! take the answer and leave the commit, never the other way round); and the audit log holds
//! a `webhook_processed` line for every committed event (lines a kill took are written again
//! from the store at the next start, marked `recovered`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::binary::{command, Server};
use crate::support::sink_server::SinkServer;
use crate::support::{flow_body, sign, SECRET};

const CYCLES: usize = 24;
const WORKERS: usize = 8;
const SESSIONS: usize = 16;

/// Two sinks and no delivery: every event keeps exactly two pending outbox rows.
const CONFIG: &str = r#"
[delivery]
enabled = false

[sink.a]
kind = "http"
url = "http://127.0.0.1:1/a"

[sink.b]
kind = "http"
url = "http://127.0.0.1:1/b"

[[route]]
name = "flow-events"
path = "/webhook"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
sinks = ["a", "b"]
"#;

/// What a 200 answered.
#[derive(Debug, Clone)]
struct Acked {
    body: Vec<u8>,
    version: u64,
}

/// A small deterministic generator (xorshift64*), seeded per run and printed, so a failing
/// run can be repeated with `CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn post(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    body: &[u8],
) -> Option<(u16, serde_json::Value, bool)> {
    let r = client
        .post(format!("http://{addr}/webhook"))
        .header("content-type", "application/json")
        .header("x-cognigy-signature", sign(body))
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let json = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
    Some((status, json, replayed))
}

/// `cycles` lives of the gateway on one data directory: each starts it, checks that repeats of
/// earlier acknowledged requests get their original answers, loads it with `WORKERS` clients
/// and kills it with SIGKILL at a random moment. Acknowledged requests go into `acked`.
async fn run_cycles(
    cycles: usize,
    data: &std::path::Path,
    config: &std::path::Path,
    client: &reqwest::Client,
    acked: &Arc<Mutex<BTreeMap<String, Acked>>>,
    rng: &mut Rng,
) {
    let next = Arc::new(AtomicUsize::new(acked.lock().unwrap().len() * 2));
    for cycle in 0..cycles {
        let mut server = start(data, config);
        // Repeats of acknowledged requests (from any earlier life) get the original answer.
        let earlier: Vec<(String, Acked)> = {
            let a = acked.lock().unwrap();
            let all: Vec<_> = a.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (0..all.len().min(4))
                .map(|_| all[rng.below(all.len() as u64) as usize].clone())
                .collect()
        };
        for (corr, a) in earlier {
            let (status, json, replayed) = post(client, server.addr, &a.body)
                .await
                .unwrap_or_else(|| panic!("cycle {cycle}: no answer to the repeat of {corr}"));
            assert_eq!(status, 200, "cycle {cycle}: repeat of {corr}: {json}");
            assert!(replayed, "cycle {cycle}: {corr} committed twice: {json}");
            assert_eq!(
                json["data"]["stateVersion"], a.version,
                "cycle {cycle}: {corr}"
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let (client, acked, next, stop) =
                (client.clone(), acked.clone(), next.clone(), stop.clone());
            let addr = server.addr;
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let corr = format!("crash-{n}");
                    let body = flow_body(&format!("s-{}", n % SESSIONS), &corr);
                    // Anything but a fresh 200 (a 503 while shutting down, or a request cut
                    // off by the kill) is not acknowledged: either outcome is allowed then.
                    if let Some((200, json, false)) = post(&client, addr, &body).await {
                        let version = json["data"]["stateVersion"].as_u64().unwrap();
                        acked.lock().unwrap().insert(corr, Acked { body, version });
                    }
                }
            }));
        }
        let before = acked.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(20 + rng.below(230))).await;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &server.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(killed, "cycle {cycle}: kill -9 failed");
        let _ = server.wait(Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged before the kill",
            acked.lock().unwrap().len() - before
        );
    }
}

fn seeded_rng() -> Rng {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: CRASH_SEED={seed}");
    Rng(seed)
}

/// Log segments of 32 KiB instead of 64 MiB: every life rolls several, asks for spares,
/// zero-fills them and reuses applied ones, so kills land in all of that too.
const SEGMENT_BYTES: &str = "32768";

fn start(dir: &std::path::Path, config: &std::path::Path) -> Server {
    let mut c = command(dir);
    c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
        .env("COGNIHOOK_LOG_SEGMENT_BYTES", SEGMENT_BYTES)
        .arg("--config")
        .arg(config);
    Server::start(c)
}

/// The log rolled onto new segments many times over the lives (its newest segment starts far
/// past the first record), so the kills met segments made ahead and reused.
fn assert_segments_rolled(data: &std::path::Path) {
    let newest = std::fs::read_dir(data.join("cognihook.log"))
        .expect("the log directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".log")?.parse::<u64>().ok())
        .max()
        .expect("a segment");
    assert!(newest > 100, "the newest segment starts at record {newest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_under_load_loses_no_acknowledged_event_and_commits_none_twice() {
    let mut rng = seeded_rng();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cognihook.toml");
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(
        &config,
        format!("[audit]\npath = \"{}\"\n{CONFIG}", audit.display()),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();

    run_cycles(CYCLES, &data, &config, &client, &acked, &mut rng).await;

    // A clean start and stop, then the database must hold every acknowledged event.
    let mut server = start(&data, &config);
    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
    check_after_cycles(&data, &acked, CYCLES, 2, &audit);
    assert_segments_rolled(&data);
}

/// After `cycles` lives under load: the load ran, every acknowledged event is stored once with
/// one row per sink (`sinks`), sessions and the audit log agree. Returns the database.
fn check_after_cycles(
    data: &std::path::Path,
    acked: &Mutex<BTreeMap<String, Acked>>,
    cycles: usize,
    sinks: i64,
    audit: &std::path::Path,
) -> rusqlite::Connection {
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= cycles * 5,
        "only {} events were acknowledged: the load did not run",
        acked.len()
    );
    let db = rusqlite::Connection::open(data.join("cognihook.db")).unwrap();
    cognihook::store::sqlite::add_event_body_function(&db, &data.join("cognihook.db")).unwrap();
    check_acknowledged(&db, &acked, sinks);
    check_sessions_and_audit(&db, audit, cycles);
    db
}

/// Each acknowledged request is stored exactly once, with the version it was answered with, its
/// whole body (read beside the database, where it is kept) and one outbox row per sink.
fn check_acknowledged(db: &rusqlite::Connection, acked: &BTreeMap<String, Acked>, sinks: i64) {
    let mut by_corr = db
        .prepare(
            "SELECT e.state_version, count(*) OVER (), \
                    (SELECT count(*) FROM outbox o WHERE o.event_id = e.event_id), \
                    json_extract(e.body, '$.correlationId') \
             FROM all_events e WHERE e.correlation_id = ?1",
        )
        .unwrap();
    for (corr, a) in acked {
        let rows: Vec<(i64, i64, i64, String)> = by_corr
            .query_map([corr], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows.len(),
            1,
            "{corr}: acknowledged, stored {} times",
            rows.len()
        );
        let (version, _, outbox, ref body_corr) = rows[0];
        assert_eq!(body_corr, corr, "{corr}: its body reads back whole");
        assert_eq!(
            version as u64, a.version,
            "{corr}: stored with another version"
        );
        assert_eq!(outbox, sinks, "{corr}: one outbox row per sink");
    }
}

/// No event is stored twice, every session's versions are 1..N, and every committed event has
/// exactly one `webhook_processed` line in the audit log at `audit`.
fn check_sessions_and_audit(db: &rusqlite::Connection, audit: &std::path::Path, kills: usize) {
    let twice: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT correlation_id FROM all_events GROUP BY correlation_id \
             HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "an event was committed twice");
    let mut versions = db
        .prepare(
            "SELECT session_id, state_version FROM all_events ORDER BY session_id, state_version",
        )
        .unwrap();
    let mut sessions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in versions
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (s, v) = row.unwrap();
        sessions.entry(s).or_default().push(v);
    }
    for (s, v) in sessions {
        let expected: Vec<i64> = (1..=v.len() as i64).collect();
        assert_eq!(v, expected, "session {s}: versions are not 1..N");
    }

    // Every committed event has its audit line, exactly once.
    let (lines, recovered) = processed_lines(audit, kills);
    let ids = stored_event_ids(db);
    assert_every(
        &ids,
        |id| lines.contains_key(id),
        "committed events have no audit line",
    );
    let twice = lines.values().filter(|&&n| n > 1).count();
    assert_eq!(
        twice, 0,
        "the audit file is read back, so no line is written twice"
    );
    eprintln!(
        "audit: {} lines, {recovered} of them recovered",
        lines.len()
    );
}

/// The chaos test: as above, with delivery on and an http sink on loopback, so kills also
/// land in the middle of sends and settlements. After the last restart every event is
/// delivered (at least once: a kill between a send and its settlement sends it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_deliveries_in_flight_loses_nothing_and_delivers_every_event() {
    const CHAOS_CYCLES: usize = 12;
    let receiver = SinkServer::start().await;
    let mut rng = seeded_rng();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cognihook.toml");
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(
        &config,
        format!(
            r#"[audit]
path = "{audit}"

[delivery]
lease_margin = "1s"

[sink.backend]
kind = "http"
url = "{url}"
timeout = "1s"
retry = {{ max_attempts = 1000, base_delay = "10ms", max_delay = "100ms" }}
breaker = {{ failure_threshold = 100000 }}

[[route]]
name = "flow-events"
path = "/webhook"
payload = "flow-event"
auth = {{ scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }}
sinks = ["backend"]
"#,
            audit = audit.display(),
            url = receiver.url("/events"),
        ),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();
    run_cycles(CHAOS_CYCLES, &data, &config, &client, &acked, &mut rng).await;

    // The last life drains the outbox (leases of killed lives expire after ~3 s).
    let mut server = start(&data, &config);
    let stats = format!("http://{}/stats", server.addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client.get(&stats).send().await.unwrap();
        let s: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        if s["outbox_pending"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox did not drain: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));

    let db = check_after_cycles(&data, &acked, CHAOS_CYCLES, 1, &audit);
    let undelivered: i64 = db
        .query_row(
            "SELECT count(*) FROM outbox WHERE status <> 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(undelivered, 0, "every outbox row is delivered");
    let received: std::collections::BTreeSet<String> = receiver
        .received()
        .iter()
        .filter_map(|r| r.body["eventId"].as_str().map(str::to_string))
        .collect();
    let ids = stored_event_ids(&db);
    assert_every(
        &ids,
        |id| received.contains(id),
        "events never reached the receiver",
    );
    eprintln!(
        "chaos: {} events, {} requests received (resends after kills: {})",
        ids.len(),
        receiver.received().len(),
        receiver.received().len() - received.len()
    );
}

/// Every event id in the embedded store's database.
fn stored_event_ids(db: &rusqlite::Connection) -> Vec<String> {
    let mut st = db.prepare("SELECT event_id FROM all_events").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Fails naming how many of `ids` (and a few of them) `holds` is false for.
fn assert_every(ids: &[String], holds: impl Fn(&str) -> bool, what: &str) {
    let failing: Vec<&String> = ids.iter().filter(|id| !holds(id)).collect();
    assert!(
        failing.is_empty(),
        "{} of {} {what}, e.g. {:?}",
        failing.len(),
        ids.len(),
        &failing[..failing.len().min(5)]
    );
}

/// `webhook_processed` lines per event id in the audit file, and how many were recovered.
/// A kill in the middle of a write leaves a line cut short, which the next start ends (so
/// the lines after it stay whole): at most one per kill, and each the start of a line.
fn processed_lines(audit: &std::path::Path, kills: usize) -> (BTreeMap<String, usize>, usize) {
    let text = std::fs::read_to_string(audit).unwrap();
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut recovered = 0;
    let mut cut = 0;
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                assert!(
                    line.starts_with("{\"ts\":"),
                    "an audit line is not JSON ({e}): {line:?}"
                );
                cut += 1;
                continue;
            }
        };
        if v["event"] == "webhook_processed" {
            *lines
                .entry(v["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
            recovered += usize::from(v["recovered"] == true);
        }
    }
    assert!(cut <= kills, "{cut} lines cut short after {kills} kills");
    (lines, recovered)
}

/// Run when `COGNIHOOK_TEST_DATABASE_URL` is set (`scripts/test` filters them out otherwise).
mod postgres {
    use super::*;

    /// On PostgreSQL: after kills under load, the audit log holds exactly one `webhook_processed`
    /// line for every committed event (each life is another replica, `host:pid`; the mark names
    /// the one whose lines to recover).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn kill_9_on_postgres_loses_no_audit_line() {
        let Some(url) = crate::store_suite::fresh_pg_schema().await else {
            eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
            return;
        };
        let mut rng = seeded_rng();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("cognihook.toml");
        let audit = dir.path().join("audit.jsonl");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"{url}\"\n[audit]\npath = \"{}\"\n{CONFIG}",
                audit.display()
            ),
        )
        .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();
        run_cycles(8, &data, &config, &client, &acked, &mut rng).await;
        let mut server = start(&data, &config);
        server.terminate();
        assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
        assert!(acked.lock().unwrap().len() >= 8 * 5, "the load did not run");

        let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let ids: Vec<String> = pg
            .query("SELECT event_id FROM events", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (lines, recovered) = processed_lines(&audit, 8);
        assert_every(
            &ids,
            |id| lines.contains_key(id),
            "committed events have no audit line",
        );
        assert_eq!(
            lines.values().filter(|&&n| n > 1).count(),
            0,
            "a line twice"
        );
        eprintln!(
            "audit on PostgreSQL: {} lines, {recovered} recovered",
            lines.len()
        );
    }
}
