//! The gateway on PostgreSQL (when `COGNIHOOK_TEST_DATABASE_URL` is set): the request and
//! delivery paths end to end, and the loss and return of the database.

use std::time::Duration;

use http::StatusCode;

use crate::store_suite::fresh_pg_schema;
use crate::support::sink_server::{wait_until, SinkServer};
use crate::support::tls_front::{Speaks, TlsFront};
use crate::support::{flow_body, TestApp};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_commit_and_deliver_on_postgres() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let sink = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", sink.url("/events"));
    let app = TestApp::spawn_with(|c| {
        c.store.url = Some(url.into());
        crate::support::attach_sink(c, "backend", &table);
    })
    .await;
    for i in 0..5 {
        let r = app
            .post_signed("/webhook", &flow_body("pg-session", &format!("pg-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["data"]["stateVersion"], i + 1);
    }
    let again = app
        .post_signed("/webhook", &flow_body("pg-session", "pg-0"))
        .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    wait_until("five deliveries", T, || sink.received().len() == 5).await;
    // The sink has answered; the settlement commits right after.
    let mut journey = serde_json::Value::Null;
    for _ in 0..200 {
        journey = app.admin_get("/admin/events/pg-3").await.json();
        if journey["deliveries"][0]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(journey["deliveries"][0]["status"], "delivered", "{journey}");
    assert!(journey["deliveries"][0]["attempts"][0]["replica"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_gives_503_with_retry_after_and_everything_recovers() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let (proxy, via_proxy) = crate::support::tcp_proxy::in_front_of_postgres(&url).await;
    let app = TestApp::spawn_with(|c| {
        c.store.url = Some(via_proxy.into());
        c.limits.deadline = Duration::from_secs(7);
    })
    .await;
    let ok = app
        .post_signed("/webhook", &flow_body("s-loss", "before"))
        .await;
    assert_eq!(ok.status, StatusCode::OK);

    proxy.cut();
    let r = app
        .post_signed("/webhook", &flow_body("s-loss", "during"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.json()["code"], "unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        app.get("/readyz", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.restore();
    // The same request, retried as Cognigy would, goes through once the database is back.
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        last = app
            .post_signed("/webhook", &flow_body("s-loss", "during"))
            .await
            .status;
        if last == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, StatusCode::OK);
    assert_eq!(app.get("/readyz", &[]).await.status, StatusCode::OK);
    let r = app
        .post_signed("/webhook", &flow_body("s-loss", "after"))
        .await;
    assert_eq!(r.json()["data"]["stateVersion"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let config = cognihook::config::StoreConfig::default();
    let opens = (0..4).map(|_| cognihook::store::postgres::PgStore::open(&url, &config));
    let stores = futures_util::future::join_all(opens).await;
    for s in &stores {
        assert!(s.is_ok(), "{:?}", s.as_ref().err());
    }
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT version), max(version) FROM cognihook_migrations",
            &[],
        )
        .await
        .unwrap();
    let (rows, versions, last): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(last >= 2, "every migration ran: {last}");
    assert_eq!(
        (rows, versions),
        (last, last),
        "each migration ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_a_newer_schema_is_refused_with_what_to_do() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let config = cognihook::config::StoreConfig::default();
    let store = cognihook::store::postgres::PgStore::open(&url, &config)
        .await
        .expect("open");
    drop(store);
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let ours: i64 = db
        .query_one("SELECT max(version) FROM cognihook_migrations", &[])
        .await
        .expect("version")
        .get(0);
    db.execute(
        "INSERT INTO cognihook_migrations (version, applied_at) VALUES ($1, 0)",
        &[&(ours + 1)],
    )
    .await
    .expect("a later version's migration");
    let refused = cognihook::store::postgres::PgStore::open(&url, &config)
        .await
        .map(|_| ());
    assert!(
        matches!(&refused, Err(cognihook::store::OpenError::Refused(m))
            if m.contains(&format!("schema {}, newer than this cognihook's {ours}", ours + 1))
                && m.contains("use the version that wrote it")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_replica_wakes_the_workers_of_another() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let sink = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", sink.url("/events"));
    // A takes requests and delivers nothing; B delivers and never polls: only a
    // notification from A's commit can make B deliver.
    let a = TestApp::spawn_with(|c| {
        c.store.url = Some(url.clone().into());
        crate::support::attach_sink(c, "backend", &table);
        c.delivery.enabled = false;
    })
    .await;
    let _b = TestApp::spawn_with(|c| {
        c.store.url = Some(url.clone().into());
        crate::support::attach_sink(c, "backend", &table);
        c.delivery.poll_interval = Duration::from_secs(3600);
    })
    .await;
    // B claims once when it starts; a first event, once delivered, shows B is past that
    // claim and waiting. After it, only a notification can make B deliver the second.
    let r = a
        .post_signed("/webhook", &flow_body("s-wake", "wake-0"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("the first event delivered", T, || {
        sink.received().len() == 1
    })
    .await;
    let r = a
        .post_signed("/webhook", &flow_body("s-wake", "wake-1"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("the second event delivered by B", T, || {
        sink.received().len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_claims_hold_a_session_back_across_replicas() {
    use cognihook::store::{Settlement, Store};
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let config = cognihook::config::StoreConfig::default();
    let open = || cognihook::store::postgres::PgStore::open(&url, &config);
    let one = Store::Postgres(std::sync::Arc::new(open().await.unwrap()));
    let two = Store::Postgres(std::sync::Arc::new(open().await.unwrap()));
    one.configure_sinks(&[("x".into(), true)]).await.unwrap();
    for k in ["1", "2"] {
        let mut a = crate::store_suite::acceptance(&format!("ord{k}"), "same", &["x"]);
        a.event.correlation_id = format!("ord{k}");
        one.accept(a).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let first = one.claim("x", 10, lease).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].correlation_id, "ord1");
    assert!(
        two.claim("x", 10, lease).await.unwrap().is_empty(),
        "the other replica may not take the session's next event"
    );
    let done = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    assert!(one.settle(&first[0], done).await.unwrap());
    let next = two.claim("x", 10, lease).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].correlation_id, "ord2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_prunes_what_expired_and_keeps_undelivered_events() {
    use cognihook::store::{Settlement, Store};
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let tiny = Duration::from_millis(1);
    let config = cognihook::config::StoreConfig {
        idempotency_window: tiny,
        session_ttl: tiny,
        retention: tiny,
        ..cognihook::config::StoreConfig::default()
    };
    let pg = std::sync::Arc::new(
        cognihook::store::postgres::PgStore::open(&url, &config)
            .await
            .unwrap(),
    );
    let store = Store::Postgres(pg.clone());
    store
        .accept(crate::store_suite::acceptance("done", "s1", &["x"]))
        .await
        .unwrap();
    store
        .accept(crate::store_suite::acceptance("waiting", "s2", &["y"]))
        .await
        .unwrap();
    let claimed = store.claim("x", 1, Duration::from_secs(60)).await.unwrap();
    let done = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    assert!(store.settle(&claimed[0], done).await.unwrap());
    // Let the 1 ms windows pass, then prune.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(5) {
        tokio::task::yield_now().await;
    }
    pg.maintain_now().await.unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(n("SELECT count(*) FROM idempotency").await, 0);
    assert_eq!(n("SELECT count(*) FROM sessions").await, 0);
    assert_eq!(
        n("SELECT count(*) FROM outbox").await,
        1,
        "the pending row stays"
    );
    assert_eq!(
        n("SELECT count(*) FROM delivery_attempts").await,
        0,
        "the delivered row's attempt record goes with it"
    );
    assert_eq!(
        n("SELECT count(*) FROM events").await,
        1,
        "the undelivered event stays"
    );
}

/// A PostgreSQL store on a fresh schema with default settings, and a plain client on the
/// same schema to fill and count its tables.
async fn pg_with_client() -> Option<(
    std::sync::Arc<cognihook::store::postgres::PgStore>,
    tokio_postgres::Client,
)> {
    let url = fresh_pg_schema().await?;
    let pg =
        cognihook::store::postgres::PgStore::open(&url, &cognihook::config::StoreConfig::default())
            .await
            .unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    Some((std::sync::Arc::new(pg), db))
}

/// Adds events `from..=to` with ids from 1970 (so past any retention), each with one outbox
/// row of `status` and an attempt record.
async fn old_events(db: &tokio_postgres::Client, from: i64, to: i64, status: &str) {
    db.execute(
        "INSERT INTO events (event_id, correlation_id, route, session_id, event_type, \
           state_version, simulated, received_at, committed_at, body) \
         SELECT '00' || lpad(i::text, 24, '0'), 'c' || i, 'r', 's', 't', 1, false, '', 0, '{}' \
         FROM generate_series($1::bigint, $2::bigint) i",
        &[&from, &to],
    )
    .await
    .unwrap();
    db.execute(
        "WITH rows AS (INSERT INTO outbox (event_id, sink, route, session_id, status, \
           next_attempt_at, created_at) \
         SELECT '00' || lpad(i::text, 24, '0'), 'x', 'r', 's', $3, 0, 0 \
         FROM generate_series($1::bigint, $2::bigint) i RETURNING id) \
         INSERT INTO delivery_attempts (outbox_id, attempt, at, outcome, replica) \
         SELECT id, 1, 0, 'delivered', 'test' FROM rows",
        &[&from, &to, &status],
    )
    .await
    .unwrap();
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// A cycle deleted at most 5,000 rows of each kind, once every 30 s: a store taking more
/// than ~170 events a second grew without bound. Now its batches run until none is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_cycle_prunes_everything_expired_however_many_batches_it_takes() {
    let Some((pg, db)) = pg_with_client().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    old_events(&db, 1, 12_000, "delivered").await;
    old_events(&db, 12_001, 12_010, "dead").await;
    db.batch_execute(
        "INSERT INTO idempotency (key, event_id, status, body, correlation_id, created_at) \
           SELECT 'k' || i, 'e', 202, '', 'c', 0 FROM generate_series(1, 12000) i; \
         INSERT INTO sessions (session_id, state_version, first_seen, last_seen, \
           last_event_type, last_route) \
           SELECT 's' || i, 1, 0, 0, 't', 'r' FROM generate_series(1, 12000) i",
    )
    .await
    .unwrap();
    pg.maintain_now().await.unwrap();
    assert_eq!(count(&db, "idempotency").await, 0);
    assert_eq!(count(&db, "sessions").await, 0);
    assert_eq!(count(&db, "outbox").await, 10, "the dead letters stay");
    assert_eq!(count(&db, "delivery_attempts").await, 10);
    assert_eq!(count(&db, "events").await, 10, "with their events");
}

/// A cycle starts its walk of the events where the last one ended, and one in
/// `FULL_CYCLE_EVERY` from the first: an event kept by its row is looked at again only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_cycle_starts_where_the_last_ended_and_one_in_a_hundred_and_twenty_from_the_first(
) {
    use cognihook::store::postgres::FULL_CYCLE_EVERY;
    let Some((pg, db)) = pg_with_client().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    old_events(&db, 1, 1, "pending").await;
    pg.maintain_now().await.unwrap();
    assert_eq!(count(&db, "events").await, 1, "kept by its pending row");
    db.execute("UPDATE outbox SET status = 'delivered'", &[])
        .await
        .unwrap();
    for cycle in 1..FULL_CYCLE_EVERY {
        // Each cycle still deletes what expired after the last one's end.
        let n = i64::from(cycle) + 1;
        old_events(&db, n, n, "delivered").await;
        pg.maintain_now().await.unwrap();
        assert_eq!(count(&db, "events").await, 1, "cycle {cycle}");
        assert_eq!(count(&db, "outbox").await, 1, "cycle {cycle}");
    }
    pg.maintain_now().await.unwrap();
    assert_eq!(count(&db, "events").await, 0, "the full cycle finds it");
    assert_eq!(count(&db, "outbox").await, 0);
    assert_eq!(count(&db, "delivery_attempts").await, 0);
}

/// The schema URL of `fresh_pg_schema`, pointed at `front` with `host` as the name TLS checks
/// (the connection itself goes to 127.0.0.1) and `tls` added to its options.
fn via_front(url: &str, front: &TlsFront, host: &str, tls: &str) -> String {
    let pg: tokio_postgres::Config = url.parse().unwrap();
    let user = pg.get_user().unwrap_or("postgres");
    let db = pg.get_dbname().unwrap_or("test");
    let options: String =
        form_urlencoded::byte_serialize(pg.get_options().unwrap_or("").as_bytes()).collect();
    format!(
        "postgres://{user}@{host}:{}/{db}?hostaddr=127.0.0.1&options={options}&{tls}",
        front.addr.port()
    )
}

async fn front_for_test() -> Option<(String, TlsFront)> {
    let url = fresh_pg_schema().await?;
    let pg: tokio_postgres::Config = url.parse().unwrap();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    Some((
        url,
        TlsFront::start(([127, 0, 0, 1], port).into(), Speaks::Postgres).await,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_store_verifies_the_server_and_works() {
    use cognihook::store::{Settlement, Store};
    let Some((url, front)) = front_for_test().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let tls = format!(
        "sslmode=verify-full&sslrootcert={}",
        front.ca_file.display()
    );
    let tls_url = via_front(&url, &front, "localhost", &tls);
    let config = cognihook::config::StoreConfig::default();
    let pg = std::sync::Arc::new(
        cognihook::store::postgres::PgStore::open(&tls_url, &config)
            .await
            .unwrap(),
    );
    assert!(front.handshakes() >= 1, "the store connected through TLS");
    let store = Store::Postgres(pg.clone());
    store
        .accept(crate::store_suite::acceptance("tls-1", "s-tls", &["x"]))
        .await
        .unwrap();
    let claimed = store.claim("x", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let done = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    assert!(store.settle(&claimed[0], done).await.unwrap());
    // The notification listener connects through TLS too.
    let before = front.handshakes();
    pg.listen(|| {});
    wait_until("the listener's TLS handshake", T, || {
        front.handshakes() > before
    })
    .await;
    assert!(pg.is_listening());
    store.close().await;
    assert!(!pg.is_listening(), "close ends the LISTEN loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_server_it_cannot_verify_and_verify_ca_skips_only_the_name() {
    let Some((url, front)) = front_for_test().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let config = cognihook::config::StoreConfig::default();
    let open = |u: String| {
        let config = config.clone();
        async move { cognihook::store::postgres::PgStore::open(&u, &config).await }
    };
    let ca = front.ca_file.display().to_string();

    // The front speaks TLS only: a plain connection gets nowhere.
    let plain = open(via_front(&url, &front, "localhost", "sslmode=disable")).await;
    assert!(
        plain.is_err(),
        "a plain connection must not reach the database"
    );

    // Trusting only the Mozilla roots, the test CA's certificate is refused.
    let e = open(via_front(&url, &front, "localhost", "sslmode=require"))
        .await
        .err()
        .expect("an unknown issuer must be refused");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // The certificate names `localhost`; reached as 127.0.0.1, verify-full refuses it...
    let by_ip = format!("sslmode=verify-full&sslrootcert={ca}");
    let e = open(via_front(&url, &front, "127.0.0.1", &by_ip))
        .await
        .err()
        .expect("a name mismatch must be refused");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // ...and verify-ca, which checks the chain only, takes it.
    let chain_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    let store = open(via_front(&url, &front, "127.0.0.1", &chain_only))
        .await
        .unwrap();
    cognihook::store::Store::Postgres(std::sync::Arc::new(store))
        .close()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_fails_alone_and_its_group_commits() {
    use cognihook::store::{AcceptOutcome, Store, StoreError};
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let pg =
        cognihook::store::postgres::PgStore::open(&url, &cognihook::config::StoreConfig::default())
            .await
            .unwrap();
    let store = Store::Postgres(std::sync::Arc::new(pg));
    // PostgreSQL refuses a NUL in text; the gateway's validation never lets one through, so
    // the store is given one directly, among events sent at the same moment.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let session = if i == 11 {
            "bad\u{0}session".to_string()
        } else {
            format!("good-{i}")
        };
        let a = crate::store_suite::acceptance(&format!("grp-{i}"), &session, &[]);
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.accept(a).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i == 11 {
            assert!(matches!(r, Err(StoreError::Refused(_))), "{r:?}");
        } else {
            assert!(
                matches!(r, Ok(AcceptOutcome::Committed { .. })),
                "event {i}: {r:?}"
            );
        }
    }
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = db
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 23);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_postgresql_cannot_store_are_refused_or_hashed_before_the_store() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let app = TestApp::spawn_with(|c| c.store.url = Some(url.into())).await;
    // A NUL in the session id: 400 naming the field, not a store failure.
    let r = app
        .post_signed("/webhook", &flow_body("bad\u{0}id", "c-nul"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.json()["code"], "invalid_payload");
    assert_eq!(r.json()["errors"][0]["field"], "sessionId");
    // An 8,000-character random Idempotency-Key (past what a B-tree entry takes, even
    // compressed) is kept as its hash, and its repeat is still a duplicate.
    let key: String = (0..250)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let body = flow_body("s-long-key", "c-long-key");
    let sig = crate::support::sign(&body);
    let headers = [
        ("content-type", "application/json"),
        ("x-cognigy-signature", sig.as_str()),
        ("idempotency-key", key.as_str()),
    ];
    let first = app.post("/webhook", &body, &headers).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let again = app.post("/webhook", &body, &headers).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

/// Rows with `status` in the test's schema (read directly, not through the gateway).
async fn pg_rows(url: &str, status: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM outbox WHERE status = $1", &[&status])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = task.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_the_database_cannot_take_are_retried_before_the_leases_run_out() {
    use crate::support::sink_server::Reply;
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let (proxy, via_proxy) = crate::support::tcp_proxy::in_front_of_postgres(&url).await;
    let sink = SinkServer::start().await;
    sink.set_fallback(Reply::Gated);
    // The sends wait at the gate until all five have arrived, which on a loaded machine
    // can take over a second (each event commits through the proxy first): a send that
    // timed out there would be sent again and never answered. So the timeout is long.
    let table = format!(
        "kind = \"http\"\nurl = \"{}\"\ntimeout = \"10s\"",
        sink.url("/events")
    );
    let app = TestApp::spawn_with(|c| {
        c.store.url = Some(via_proxy.into());
        crate::support::attach_sink(c, "backend", &table);
        // Leases of 2 x 10 s + 4 s: without retries, the rows would be sent again after
        // 24 s, inside the 30 s this test waits for them to settle.
        c.delivery.lease_margin = Duration::from_secs(4);
    })
    .await;
    for i in 0..5 {
        let r = app
            .post_signed("/webhook", &flow_body("pg-settle", &format!("settle-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // Every send is at the sink, held; then the database goes away and the sends finish.
    wait_until("five sends held", T, || sink.received().len() == 5).await;
    proxy.cut();
    sink.open_gate(5);
    wait_until("five answered", T, || {
        sink.received().iter().all(|r| r.answered.is_some())
    })
    .await;
    // Their settlements fail for a while...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pg_rows(&url, "delivered").await, 0);
    proxy.restore();
    // ...and land once it is back, long before the leases run out: nothing is sent twice.
    let deadline = std::time::Instant::now() + T;
    while pg_rows(&url, "delivered").await < 5 {
        assert!(std::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.received().len(), 5, "a delivery was made twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_encrypt_key_postgres_holds_sealed_bodies_and_delivers_plaintext() {
    let Some(url) = fresh_pg_schema().await else {
        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
        return;
    };
    let sink = SinkServer::start().await;
    let table = format!("kind = \"http\"\nurl = \"{}\"", sink.url("/events"));
    let pg_url = url.clone();
    let app = TestApp::spawn_with(|c| {
        c.store.url = Some(pg_url.into());
        c.privacy.encrypt_key = Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into());
        crate::support::attach_sink(c, "backend", &table);
    })
    .await;
    let body = flow_body("pg-sealed", "pg-sealed-1");
    let r = app.post_signed("/webhook", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    wait_until("one delivery", T, || sink.received().len() == 1).await;
    assert_eq!(sink.received()[0].body["text"], "Check order status");
    let j = app.admin_get("/admin/events/pg-sealed-1").await.json();
    assert_eq!(j["event"]["text"], "Check order status", "{j}");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let stored: String = client
        .query_one("SELECT body FROM events", &[])
        .await
        .expect("row")
        .get(0);
    assert!(stored.starts_with("enc1:"), "{stored}");
    assert!(!stored.contains("Check order status"));
}
