//! Several gateway processes on one PostgreSQL database (when `COGNIHOOK_TEST_DATABASE_URL`
//! is set): traffic spread across three replicas with duplicates sent to other replicas and
//! sessions shared between them; one replica SIGKILLed mid-load. Every acknowledged event is
//! delivered at least once, duplicates commit once, and each session's stateVersions are
//! exactly 1..N.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store_suite::fresh_pg_schema;
use crate::support::binary::{command, run, Server};
use crate::support::sink_server::{wait_until, Reply, SinkServer};
use crate::support::{flow_body, sign, SECRET};

const T: Duration = Duration::from_secs(60);
const REQUESTS: usize = 240;
const SESSIONS: usize = 12;

fn config(sink_url: &str) -> String {
    format!(
        r#"
[delivery]
poll_interval = "100ms"
lease_margin = "1s"

[sink.backend]
kind = "http"
url = "{sink_url}"
timeout = "1s"
concurrency = 4
retry = {{ max_attempts = 20, base_delay = "20ms", max_delay = "200ms" }}

[[route]]
name = "flow-events"
path = "/webhook"
payload = "flow-event"
auth = {{ scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }}
sinks = ["backend"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_killed_mid_load_lose_nothing_and_double_nothing() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let sink = SinkServer::start().await;
    // Deliveries are held until after the kill, so the killed replica dies with claimed rows
    // in flight; the survivors must take them over when the leases run out.
    sink.set_fallback(Reply::Gated);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cognihook.toml");
    std::fs::write(&file, config(&sink.url("/events"))).unwrap();
    let mut replicas: Vec<Server> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("r{i}"));
            let mut c = command(&data);
            c.env("COGNIGY_WEBHOOK_SECRET", SECRET)
                .env("COGNIHOOK_DATABASE_URL", &url)
                .arg("--config")
                .arg(&file);
            Server::start(c)
        })
        .collect();
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // correlation id -> acknowledged (a 200 from some replica)
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..4usize {
        let (client, acked, addrs) = (client.clone(), acked.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            for n in (worker..REQUESTS).step_by(4) {
                let corr = format!("rep-{n}");
                let body = flow_body(&format!("shared-{}", n % SESSIONS), &corr);
                // Every fifth request is sent again to the next replica (a Cognigy retry
                // landing elsewhere behind the load balancer).
                let targets = if n % 5 == 0 { vec![n, n + 1] } else { vec![n] };
                for t in targets {
                    let addr = addrs[t % addrs.len()];
                    let r = client
                        .post(format!("http://{addr}/webhook"))
                        .header("content-type", "application/json")
                        .header("x-cognigy-signature", sign(&body))
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().as_u16() == 200 {
                            acked.lock().unwrap().insert(corr.clone());
                        }
                    }
                }
            }
        }));
    }
    // Kill replica 1 once a third of the traffic is acknowledged.
    wait_until("a third acknowledged", T, || {
        acked.lock().unwrap().len() >= REQUESTS / 3
    })
    .await;
    let victim = replicas[1].pid();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    sink.set_fallback(Reply::Status(200));
    sink.open_gate(100_000);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > REQUESTS / 2, "{} acknowledged", acked.len());

    // Every acknowledged event is delivered at least once, settled as such by a live replica
    // (the survivors take over the killed replica's leases when they run out).
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut undelivered = usize::MAX;
    for _ in 0..300 {
        let rows = db
            .query(
                "SELECT e.correlation_id FROM outbox o JOIN events e USING (event_id) \
                 WHERE o.status = 'delivered'",
                &[],
            )
            .await
            .unwrap();
        let done: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        undelivered = acked.difference(&done).count();
        if undelivered == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(undelivered, 0, "acknowledged events not delivered");
    let received: BTreeSet<String> = sink
        .received()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("x-correlation-id")?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .collect();
    assert!(acked.is_subset(&received));

    // One event per correlation id, versions 1..N per session.
    let rows = db
        .query(
            "SELECT correlation_id, session_id, state_version FROM events",
            &[],
        )
        .await
        .unwrap();
    let mut per_corr: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_session: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        *per_corr.entry(r.get(0)).or_default() += 1;
        per_session.entry(r.get(1)).or_default().push(r.get(2));
    }
    assert!(
        per_corr.values().all(|&n| n == 1),
        "a duplicate committed twice"
    );
    for (session, mut versions) in per_session {
        versions.sort_unstable();
        let want: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, want, "session {session}");
    }
    for corr in &acked {
        assert!(
            per_corr.contains_key(corr),
            "{corr} acknowledged but not stored"
        );
    }
    // Attempts name the replica that made them; more than one replica delivered.
    let replicas_seen: i64 = db
        .query_one("SELECT count(DISTINCT replica) FROM delivery_attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        replicas_seen >= 2,
        "{replicas_seen} replica(s) made attempts"
    );

    // The CLI reads the same journeys from PostgreSQL.
    let any = acked.iter().next().unwrap().clone();
    let mut c = command(dir.path());
    c.env("COGNIHOOK_DATABASE_URL", &url)
        .args(["events", "show", &any]);
    let o = run(c, T);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("\"delivered\"") && out.contains("\"replica\""),
        "{out}"
    );

    for (i, r) in replicas.iter_mut().enumerate() {
        if i != 1 {
            r.terminate();
            assert_eq!(r.wait(T), Some(0));
        }
    }
}
