//! A data directory written by the previous version (schema 4, no log) is upgraded in place
//! (through schema 8, which keeps every answer apart from the idempotency keys, status included).
//!
//! `tests/fixtures/store/schema4.db` was made by cognihook before the log-structured store
//! (commit b16cd8e): three events on `/webhook` with `Idempotency-Key: fx-key-1..3`, sessions
//! `s1` (two events) and `s2` (one), each sent to two http sinks that could not be reached:
//! `dead` (one attempt, so every row is a dead letter) and `waiting` (retried in an hour, so
//! every row is pending).

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::support::*;

/// The fixture in a fresh data directory.
fn old_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/store/schema4.db"
        ),
        dir.path().join("cognihook.db"),
    )
    .unwrap();
    dir
}

/// Windows long enough that the fixtures' records (made from 2026-11-30 on) stay live, and a sink
/// (never reached: its rows stay pending) so that new events write outbox rows.
fn config(c: &mut cognihook::config::Config) {
    c.store.idempotency_window = Duration::from_secs(3650 * 86_400);
    c.store.session_ttl = Duration::from_secs(3650 * 86_400);
    // The fixtures' events are not pruned as the years pass either.
    c.store.retention = Duration::from_secs(3650 * 86_400);
    attach_sink(
        c,
        "later",
        "kind = \"http\"\nurl = \"http://127.0.0.1:1/in\"\n\
         retry = { max_attempts = 5, base_delay = \"1h\", max_delay = \"1h\" }\n",
    );
}

fn flow(session: &str, correlation: &str) -> Vec<u8> {
    flow_body(session, correlation)
}

/// A new request that carries the fixture's first key, `fx-key-1`.
async fn repeat_of_fx_key_1(app: &TestApp) -> TestResponse {
    let body = flow("s1", "fx-1-again");
    app.post(
        "/webhook",
        &body,
        &[
            ("x-cognigy-signature", &sign(&body)),
            ("idempotency-key", "fx-key-1"),
            ("content-type", "application/json"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_4_data_directory_is_upgraded_in_place_and_keeps_every_promise() {
    let app = TestApp::spawn_in(old_data_dir(), config).await;

    // The old events and their deliveries are all there.
    let j = app.admin_get("/admin/events/fx-1").await;
    assert_eq!(j.status, StatusCode::OK, "{:?}", j.body);
    let j = j.json();
    assert_eq!(j["event"]["sessionId"], "s1");
    assert_eq!(j["event"]["stateVersion"], 1);
    let mut statuses: Vec<(String, String)> = j["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["sink"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            ("dead".to_string(), "dead".to_string()),
            ("waiting".to_string(), "pending".to_string())
        ]
    );
    let dl = app.admin_get("/admin/dead-letters").await.json();
    assert_eq!(dl["total"], 3);

    // A repeat of an old request is answered with the old answer.
    let dup = repeat_of_fx_key_1(&app).await;
    assert_eq!(dup.status, StatusCode::OK, "{:?}", dup.body);
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "fx-1");
    assert_eq!(dup.json()["data"]["stateVersion"], 1);

    // Old sessions count on.
    let next = app.post_signed("/webhook", &flow("s1", "fx-4")).await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    assert_eq!(next.json()["data"]["stateVersion"], 3);

    // The correlation index moved out of the database with every old event, and a new event
    // of an old correlation id is the one found by it.
    let again = app.post_signed("/webhook", &flow("s2", "fx-2")).await;
    assert_eq!(again.json()["data"]["stateVersion"], 2);
    let j: Value = app.admin_get("/admin/events/fx-2").await.json();
    assert_eq!(
        j["event"]["sessionId"], "s2",
        "the newest event of fx-2: {j}"
    );
    let j: Value = app.admin_get("/admin/events/fx-3").await.json();
    assert_eq!(j["event"]["sessionId"], "s2");
    assert_eq!(j["event"]["stateVersion"], 1);

    // And after a restart on the upgraded directory, the old and the new are kept.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    let again = app.post_signed("/webhook", &flow("s2", "fx-5")).await;
    assert_eq!(again.json()["data"]["stateVersion"], 3);
    let j: Value = app.admin_get("/admin/events/fx-1").await.json();
    assert_eq!(j["event"]["stateVersion"], 1);
    let next = app.post_signed("/webhook", &flow("s1", "fx-6")).await;
    assert_eq!(next.json()["data"]["stateVersion"], 4);
    let j: Value = app.admin_get("/admin/events/fx-4").await.json();
    assert_eq!(j["event"]["stateVersion"], 3);
    // Duplicates read their answer from the database now (a restart emptied the hot maps):
    // an old key's from `answers` (schema 8 moved the old ones there) as well as a new
    // key's from its event's row (schema 9).
    let dup = repeat_of_fx_key_1(&app).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "fx-1");
    let dup = app.post_signed("/webhook", &flow("s1", "fx-4")).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "fx-4");
    assert_eq!(dup.json()["data"]["stateVersion"], 3);
    let db = app.db().await;
    // Rows and events kept beside the database (`all_events`).
    assert_eq!(count(&db, "SELECT count(*) FROM all_events"), 7);
    assert_eq!(count(&db, "PRAGMA user_version"), 19, "every migration ran");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'events_by_correlation'"
        ),
        0,
        "the correlation index left the database"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM all_events e WHERE coalesce(e.answer_status, \
               (SELECT a.status FROM answers a WHERE a.event_id = e.event_id)) = 200"
        ),
        7,
        "every answer is kept with its status: a new event's in its row (schema 9), an old \
         one's by its event id in `answers` (schema 8 moved them there)"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM all_events WHERE answer IS NULL"),
        count(&db, "SELECT count(*) FROM answers"),
        "the old events' answers stay where they were"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idempotency WHERE length(body) > 0"
        ),
        0,
        "no key keeps an answer beside it"
    );
    // The old rows are found from their events (schema 11): the journey lists both sinks.
    let j: Value = app.admin_get("/admin/events/fx-1").await.json();
    let mut sinks: Vec<_> = j["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| format!("{}:{}", d["sink"].as_str().unwrap_or(""), d["status"]))
        .collect();
    sinks.sort();
    assert_eq!(sinks, ["dead:\"dead\"", "waiting:\"pending\""], "{j}");
    // Outbox ids go on after the old ones (1..6), never reusing one.
    assert_eq!(
        count(&db, "SELECT min(id) FROM outbox WHERE sink = 'later'"),
        7
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE sink = 'later'"),
        4
    );
    drop(app);
}

/// `tests/fixtures/store/hashless-keys/` was made by cognihook before idempotency keys were
/// hashed (commit 068e762): two events on `/webhook` with `Idempotency-Key: kx-key-1..2`,
/// correlation ids `kx-1..2`, sessions `ks1` and `ks2`, then a clean stop. Its key store holds
/// a generation of keys as given (`keys_…`) and one of correlation ids as given (`corr_…`), in
/// the journal only; the journal (32 MiB, sparse, 486 bytes used) is cut to 4 KiB.
fn hashless_keys_dir() -> tempfile::TempDir {
    fixture_dir("hashless-keys")
}

/// A copy of the fixture directory `tests/fixtures/store/NAME`.
fn fixture_dir(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("fixture dir");
        for entry in std::fs::read_dir(from).expect("fixture") {
            let entry = entry.expect("fixture entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("fixture entry").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("fixture file");
            }
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/store/{name}")),
        dir.path(),
    );
    dir
}

/// A new request that carries a fixture's key `{p}x-key-N` (session `{p}sN`), `p` being `k`
/// or `h`.
async fn repeat_of_fixture_key(app: &TestApp, p: &str, n: u32) -> TestResponse {
    let body = flow(&format!("{p}s{n}"), &format!("{p}x-{n}-again"));
    app.post(
        "/webhook",
        &body,
        &[
            ("x-cognigy-signature", &sign(&body)),
            ("idempotency-key", &format!("{p}x-key-{n}")),
            ("content-type", "application/json"),
        ],
    )
    .await
}

/// The two events of a fixture whose keys, correlation ids and sessions start with `p`
/// (`{p}x-key-n`, `{p}x-n`, `{p}sn`; see `repeat_of_fixture_key`): each key's repeat gets
/// the first answer, and each event is found by its correlation id with its text and its
/// pending row for `later`.
async fn fixture_events_answer(app: &TestApp, p: &str) {
    for n in [1, 2] {
        let dup = repeat_of_fixture_key(app, p, n).await;
        assert_eq!(dup.status, StatusCode::OK, "{:?}", dup.body);
        assert_eq!(
            dup.header("idempotent-replayed"),
            Some("true"),
            "{p}x-key-{n}"
        );
        assert_eq!(dup.json()["correlationId"], format!("{p}x-{n}"));
        let j: Value = app
            .admin_get(&format!("/admin/events/{p}x-{n}"))
            .await
            .json();
        assert_eq!(j["event"]["sessionId"], format!("{p}s{n}"), "{j}");
        assert_eq!(j["event"]["text"], "Check order status", "{j}");
        assert_eq!(j["deliveries"][0]["status"], "pending", "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_version_before_hashed_keys_still_find_their_first_answers() {
    let app = TestApp::spawn_in(hashless_keys_dir(), config).await;
    for n in [1, 2] {
        let dup = repeat_of_fixture_key(&app, "k", n).await;
        assert_eq!(dup.status, StatusCode::OK, "{:?}", dup.body);
        assert_eq!(
            dup.header("idempotent-replayed"),
            Some("true"),
            "kx-key-{n}"
        );
        assert_eq!(dup.json()["correlationId"], format!("kx-{n}"));
        assert_eq!(dup.json()["data"]["stateVersion"], 1);
    }
    // The correlation index of that version finds the events too.
    let j: Value = app.admin_get("/admin/events/kx-2").await.json();
    assert_eq!(j["event"]["sessionId"], "ks2", "{j}");
    // A new key is kept hashed, and is a duplicate in its turn, after a restart too (the
    // answer comes from the event's row then: the hot maps start empty).
    let new = app.post_signed("/webhook", &flow("ks1", "kx-3")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    let dup = app.post_signed("/webhook", &flow("ks1", "kx-3")).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "kx-3");
    assert_eq!(dup.json()["data"]["stateVersion"], 2);
    let dup = repeat_of_fixture_key(&app, "k", 2).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "kx-2");
    let j: Value = app.admin_get("/admin/events/kx-3").await.json();
    assert_eq!(j["event"]["stateVersion"], 2, "{j}");
    // Marked with schema 13, so a build from before the keys' runs (or before hashed keys),
    // which would not read them, refuses the store instead of taking repeats for new events.
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19);
}

/// `tests/fixtures/store/hashed-keys/` was made by cognihook of schema 12 (commit ec6d400,
/// the last before the key store's runs): two events on `/webhook` with `Idempotency-Key:
/// hx-key-1..2`, correlation ids `hx-1..2`, sessions `hs1` and `hs2`, then a clean stop. Its key
/// store holds the keys and correlation ids by hash in the LSM tree (`kh_…`, `ch_…`), in the
/// journal only; the journal (32 MiB, sparse, 483 bytes used) is cut to 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_12_is_upgraded_in_place_and_its_tree_keys_still_answer() {
    let app = TestApp::spawn_in(fixture_dir("hashed-keys"), config).await;
    for n in [1, 2] {
        let dup = repeat_of_fixture_key(&app, "h", n).await;
        assert_eq!(dup.status, StatusCode::OK, "{:?}", dup.body);
        assert_eq!(
            dup.header("idempotent-replayed"),
            Some("true"),
            "hx-key-{n}"
        );
        assert_eq!(dup.json()["correlationId"], format!("hx-{n}"));
        assert_eq!(dup.json()["data"]["stateVersion"], 1);
    }
    let j: Value = app.admin_get("/admin/events/hx-2").await.json();
    assert_eq!(j["event"]["sessionId"], "hs2", "{j}");
    // New keys and correlation ids go to runs, and are found after a restart too.
    let new = app.post_signed("/webhook", &flow("hs1", "hx-3")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let dir = app.stop().await;
    assert!(
        dir.path().join("cognihook.keys/runs/MANIFEST").exists(),
        "the runs' manifest is written"
    );
    // Schema 14: the tree's hash secret is copied to a file; the tree, which still holds
    // generations, stays.
    let secret = std::fs::read(dir.path().join("cognihook.keys/secret")).expect("secret");
    assert_eq!(secret.len(), 16);
    assert!(
        dir.path().join("cognihook.keys/version").exists(),
        "the tree"
    );
    let app = TestApp::spawn_in(dir, config).await;
    let dup = app.post_signed("/webhook", &flow("hs1", "hx-3")).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["data"]["stateVersion"], 2);
    let dup = repeat_of_fixture_key(&app, "h", 1).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"), "hx-key-1");
    assert_eq!(dup.json()["correlationId"], "hx-1");
    let j: Value = app.admin_get("/admin/events/hx-3").await.json();
    assert_eq!(j["event"]["stateVersion"], 2, "{j}");
    let j: Value = app.admin_get("/admin/events/hx-1").await.json();
    assert_eq!(j["event"]["sessionId"], "hs1", "{j}");
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19);
}

/// `tests/fixtures/store/schema14/` was made by cognihook of schema 14 (commit 3da0783, the
/// last whose events table had an index on the event id): two events on `/webhook` with
/// `Idempotency-Key: nx-key-1..2`, correlation ids `nx-1..2`, sessions `ns1` and `ns2`, each
/// with a pending row for the sink `later` (as `config` attaches it), then a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_14_numbers_its_event_rows_and_finds_every_event_by_either_id() {
    let app = TestApp::spawn_in(fixture_dir("schema14"), config).await;
    for n in [1, 2] {
        let dup = repeat_of_fixture_key(&app, "n", n).await;
        assert_eq!(dup.status, StatusCode::OK, "{:?}", dup.body);
        assert_eq!(
            dup.header("idempotent-replayed"),
            Some("true"),
            "nx-key-{n}"
        );
        assert_eq!(dup.json()["correlationId"], format!("nx-{n}"));
        let by_correlation: Value = app.admin_get(&format!("/admin/events/nx-{n}")).await.json();
        assert_eq!(by_correlation["event"]["sessionId"], format!("ns{n}"));
        assert_eq!(by_correlation["deliveries"][0]["status"], "pending");
        let id = by_correlation["event"]["eventId"]
            .as_str()
            .expect("an event id")
            .to_string();
        let by_id: Value = app.admin_get(&format!("/admin/events/{id}")).await.json();
        // The event and its row, not the row's attempts: the fixture's retry is long due, so
        // the delivery worker may try again between the two reads.
        assert_eq!(by_id["event"], by_correlation["event"]);
        assert_eq!(by_id["deliveries"][0]["sink"], "later", "{by_id}");
    }
    // New events go on after them, and everything is found after a restart.
    let new = app.post_signed("/webhook", &flow("ns1", "nx-3")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pragma_index_list('events')"),
        0,
        "no index on the event id"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM events_moved"), 0);
    drop(db);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    let dup = app.post_signed("/webhook", &flow("ns1", "nx-3")).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["data"]["stateVersion"], 2);
    for n in [1, 2, 3] {
        let j: Value = app.admin_get(&format!("/admin/events/nx-{n}")).await.json();
        assert_eq!(j["deliveries"][0]["status"], "pending", "nx-{n}: {j}");
    }
    let db = app.db().await;
    let rows: Vec<(String, i64)> = db
        .prepare("SELECT event_id, row FROM all_events ORDER BY row")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 3);
    for (id, row) in rows {
        assert_eq!(Some(row), cognihook::event_id::row_of(&id), "{id}");
    }
}

/// `tests/fixtures/store/schema15/` was made by cognihook of schema 15 (commit 4b54834, the
/// last that kept every body in its events row): two events on `/webhook` with
/// `Idempotency-Key: px-key-1..2`, correlation ids `px-1..2`, sessions `ps1` and `ps2`, each
/// with a pending row for the sink `later`, then a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_15_keeps_its_bodies_in_their_rows_and_new_ones_go_beside() {
    let app = TestApp::spawn_in(fixture_dir("schema15"), config).await;
    fixture_events_answer(&app, "p").await;
    let new = app.post_signed("/webhook", &flow("ps1", "px-3")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19);
    // The old rows keep their bodies; the new event is kept beside the database (schema
    // 19: with its outbox row too).
    let placed: Vec<(String, bool, String)> = db
        .prepare(
            "SELECT correlation_id, body_at IS NOT NULL AND body = '', \
                    event_body(body, body_at, rowid) FROM events ORDER BY correlation_id",
        )
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let beside: Vec<(&str, bool)> = placed.iter().map(|(c, b, _)| (c.as_str(), *b)).collect();
    assert_eq!(beside, [("px-1", false), ("px-2", false)]);
    let new_body: String = db
        .query_row(
            "SELECT body FROM all_events WHERE correlation_id = 'px-3'",
            [],
            |r| r.get(0),
        )
        .expect("px-3 beside");
    let placed = placed
        .into_iter()
        .chain([("px-3".to_string(), true, new_body)]);
    for (corr, _, body) in placed {
        let event: Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(event["correlationId"], corr, "{event}");
    }
    drop(db);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    for n in [1, 2, 3] {
        let j: Value = app.admin_get(&format!("/admin/events/px-{n}")).await.json();
        assert_eq!(j["event"]["text"], "Check order status", "px-{n}: {j}");
        assert_eq!(j["deliveries"][0]["status"], "pending", "px-{n}: {j}");
    }
}

/// `tests/fixtures/store/schema16/` was made by cognihook of schema 16 (commit 3cfd79c, the
/// last before `event_runs`): two events on `/webhook` with `Idempotency-Key: qx-key-1..2`,
/// correlation ids `qx-1..2`, sessions `qs1` and `qs2`, their bodies beside the database,
/// each with a pending row for the sink `later` (one attempt made), then a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_16_gains_the_event_runs_and_keeps_every_event_readable() {
    let app = TestApp::spawn_in(fixture_dir("schema16"), config).await;
    fixture_events_answer(&app, "q").await;
    let new = app.post_signed("/webhook", &flow("qs1", "qx-3")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19);
    // The new event, with its outbox row, is kept beside the database (schema 19).
    assert_eq!(count(&db, "SELECT count(*) FROM event_runs"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 2);
    drop(db);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    for n in [1, 2, 3] {
        let j: Value = app.admin_get(&format!("/admin/events/qx-{n}")).await.json();
        assert_eq!(j["event"]["text"], "Check order status", "qx-{n}: {j}");
        assert_eq!(j["deliveries"][0]["status"], "pending", "qx-{n}: {j}");
    }
}

/// `tests/fixtures/store/schema18/` was made by cognihook of schema 18 (commit f166bb1, the
/// last before events with outbox rows were kept beside the database): first, with no sink,
/// one event on `/webhook` (`Idempotency-Key: rx-key-3`, correlation id `rx-3`, session
/// `rs3`), kept beside the database in a run; then, with the sink `later` attached, two
/// more (`rx-key-1..2`, `rx-1..2`, `rs1..2`), each with an events row and a pending row for
/// `later` (one attempt made); a clean stop after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_18_keeps_its_rows_and_runs_and_new_events_with_rows_go_beside() {
    let app = TestApp::spawn_in(fixture_dir("schema18"), config).await;
    fixture_events_answer(&app, "r").await;
    let dup = repeat_of_fixture_key(&app, "r", 3).await;
    assert_eq!(dup.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup.json()["correlationId"], "rx-3");
    let j: Value = app.admin_get("/admin/events/rx-3").await.json();
    assert_eq!(j["event"]["sessionId"], "rs3", "{j}");
    assert_eq!(j["deliveries"], serde_json::json!([]), "{j}");
    let new = app.post_signed("/webhook", &flow("rs1", "rx-4")).await;
    assert_eq!(new.status, StatusCode::OK, "{:?}", new.body);
    assert_eq!(new.json()["data"]["stateVersion"], 2);
    let db = app.db().await;
    assert_eq!(count(&db, "PRAGMA user_version"), 19, "every migration ran");
    assert_eq!(
        count(&db, "SELECT count(*) FROM events"),
        2,
        "the fixture's rows"
    );
    // The fixture's run names no outbox row; the new one names the new event's.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM event_runs WHERE outbox_first IS NULL AND outbox_last IS NULL"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM event_runs r JOIN outbox o \
             ON o.id = r.outbox_first AND o.id = r.outbox_last AND o.sink = 'later'"
        ),
        1
    );
    drop(db);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, config).await;
    for n in [1, 2, 4] {
        let j: Value = app.admin_get(&format!("/admin/events/rx-{n}")).await.json();
        assert_eq!(j["event"]["text"], "Check order status", "rx-{n}: {j}");
        assert_eq!(j["deliveries"][0]["sink"], "later", "rx-{n}: {j}");
        assert_eq!(j["deliveries"][0]["status"], "pending", "rx-{n}: {j}");
    }
    let timeline = app
        .store()
        .session_timeline("rs1", 10)
        .await
        .expect("timeline");
    let seen: Vec<_> = timeline
        .iter()
        .map(|e| (e.correlation_id.as_str(), e.deliveries.clone()))
        .collect();
    let later = vec![("later".to_string(), "pending".to_string())];
    assert_eq!(seen, [("rx-4", later.clone()), ("rx-1", later)]);
}
