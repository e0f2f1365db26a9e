//! The store's behaviour, one suite run on both backends: the embedded SQLite store always,
//! and PostgreSQL when `COGNIHOOK_TEST_DATABASE_URL` is set (each test in a schema of its
//! own; set but unreachable fails the test).

use std::sync::Arc;
use std::time::Duration;

use cognihook::config::StoreConfig;
use cognihook::ingest::auth::SpentSignature;
use cognihook::ingest::payload::NormalisedEvent;
use cognihook::store::decide::Answer;
use cognihook::store::postgres::PgStore;
use cognihook::store::sqlite::SqliteStore;
use cognihook::store::{
    AcceptOutcome, Acceptance, DeadLetterFilter, DeadReason, RespondHold, Settlement, Store,
};
use serde_json::json;

/// A store to test, and what keeps it alive (a temporary directory).
struct Backend {
    name: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL of a fresh schema, or `None` when the variable is unset.
pub async fn fresh_pg_schema() -> Option<String> {
    let base = std::env::var("COGNIHOOK_TEST_DATABASE_URL").ok()?;
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("COGNIHOOK_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}")
        });
    let task = tokio::spawn(conn);
    let schema = format!("cgh_{}", ulid::Ulid::new().to_string().to_lowercase());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    drop(client);
    let _ = task.await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

/// The embedded store in a temporary directory.
async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let sqlite = SqliteStore::open(&config).expect("sqlite");
    Backend {
        name: "sqlite",
        store: Store::Sqlite(Arc::new(sqlite)),
        _dir: Some(dir),
    }
}

/// PostgreSQL in a fresh schema, or `None` when `COGNIHOOK_TEST_DATABASE_URL` is unset.
async fn postgres() -> Option<Backend> {
    let url = fresh_pg_schema().await?;
    let pg = PgStore::open(&url, &StoreConfig::default())
        .await
        .expect("postgres store");
    Some(Backend {
        name: "postgres",
        store: Store::Postgres(Arc::new(pg)),
        _dir: None,
    })
}

/// Runs each case on both backends, as `sqlite::<case>` and `postgres::<case>`: the
/// PostgreSQL ones are filtered out by `scripts/test`, and so reported as skipped, when the
/// variable is unset.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(b) = super::postgres().await else {
                        eprintln!("skipped: COGNIHOOK_TEST_DATABASE_URL is not set");
                        return;
                    };
                    super::$case(b).await;
                }
            )*
        }
    };
}

on_both_backends!(
    commits_count_session_versions_and_duplicates_change_nothing,
    concurrent_events_and_duplicates_behave_as_one_process_would,
    a_spent_signature_refuses_the_second_request,
    claims_lease_rows_and_settlements_record_every_attempt,
    ordered_claims_take_one_event_per_session_in_order,
    sink_counts_see_pending_rows_and_dead_letters_but_not_delivered_rows,
    a_sink_switched_to_ordered_holds_back_rows_written_before_the_switch,
    an_expired_lease_frees_the_row_and_the_old_claim_cannot_settle,
    a_respond_row_is_held_for_the_request_and_a_late_answer_queues_on_late,
    an_oversized_answer_commits_nothing_and_its_group_goes_on,
    a_forgotten_session_loses_state_payloads_and_pending_deliveries_and_starts_again,
    an_upstream_answer_that_comes_after_its_session_was_forgotten_is_not_kept_or_handed_on,
    a_session_timeline_lists_its_newest_events_first_also_after_it_starts_again,
);

pub fn acceptance(key: &str, session: &str, sinks: &[&str]) -> Acceptance {
    Acceptance {
        idempotency_key: key.into(),
        event: NormalisedEvent::new(
            "flow-events",
            format!("corr-{key}"),
            "t".into(),
            session.into(),
            "u".into(),
            "flow.execution".into(),
            json!({"k": key}),
        ),
        answer: Answer::new(
            b"{\"status\":\"success\",\"data\":{\"processed\":true,\"stateVersion\":".to_vec(),
            b"}}".to_vec(),
        ),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        max_response_bytes: 1 << 20,
        spend: None,
        status: 200,
        respond: None,
    }
}

fn version(o: &AcceptOutcome) -> u64 {
    match o {
        AcceptOutcome::Committed { state_version, .. } => *state_version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

const LEASE: Duration = Duration::from_secs(60);

async fn commits_count_session_versions_and_duplicates_change_nothing(b: Backend) {
    let s = &b.store;
    let first = s.accept(acceptance("a", "s1", &["x"])).await.unwrap();
    assert_eq!(version(&first), 1, "{}", b.name);
    assert_eq!(
        version(&s.accept(acceptance("b", "s1", &["x"])).await.unwrap()),
        2
    );
    match s.accept(acceptance("a", "s1", &["x"])).await.unwrap() {
        AcceptOutcome::Duplicate { status, body, .. } => {
            assert_eq!(status, 200);
            let AcceptOutcome::Committed { body: original, .. } = &first else {
                unreachable!()
            };
            assert_eq!(&body, original, "{}", b.name);
        }
        other => panic!("{}: {other:?}", b.name),
    }
    // The duplicate neither bumped the session nor queued a row.
    assert_eq!(
        version(&s.accept(acceptance("c", "s1", &[])).await.unwrap()),
        3
    );
    let counts = s.sink_counts(&["x".into()]).await.unwrap();
    assert_eq!(counts[0].pending, 2, "{}", b.name);
    s.close().await;
}

async fn concurrent_events_and_duplicates_behave_as_one_process_would(b: Backend) {
    let s = Arc::new(b.store.clone());
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = s.clone();
        // Keys 0..10 each sent three times, all on one session.
        tasks.push(tokio::spawn(async move {
            s.accept(acceptance(&format!("k{}", i % 10), "shared", &["x"]))
                .await
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap() {
            AcceptOutcome::Committed { state_version, .. } => versions.push(state_version),
            AcceptOutcome::Duplicate { .. } => duplicates += 1,
            other => panic!("{other:?}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=10).collect::<Vec<u64>>(), "{}", b.name);
    assert_eq!(duplicates, 20, "{}", b.name);
    s.close().await;
}

async fn a_spent_signature_refuses_the_second_request(b: Backend) {
    let s = &b.store;
    let spend = SpentSignature {
        mac: [7; 32],
        expires_at: cognihook::now_millis() / 1000 + 300,
    };
    let mut a = acceptance("sig-1", "s", &[]);
    a.spend = Some(spend.clone());
    assert_eq!(version(&s.accept(a).await.unwrap()), 1);
    let mut again = acceptance("sig-2", "s", &[]);
    again.spend = Some(spend);
    assert_eq!(
        s.accept(again).await.unwrap(),
        AcceptOutcome::SignatureReplayed,
        "{}",
        b.name
    );
    s.close().await;
}

async fn claims_lease_rows_and_settlements_record_every_attempt(b: Backend) {
    let s = &b.store;
    for k in ["a", "b", "c"] {
        s.accept(acceptance(k, &format!("s-{k}"), &["x"]))
            .await
            .unwrap();
    }
    let claimed = s.claim("x", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3, "{}", b.name);
    assert!(s.claim("x", 10, LEASE).await.unwrap().is_empty(), "leased");
    let delivered = Settlement::Delivered {
        duration_ms: 3,
        result: None,
    };
    let retry = Settlement::Retry {
        at_ms: cognihook::now_millis() - 1,
        error: "HTTP 503".into(),
        duration_ms: 4,
    };
    let dead = Settlement::Dead {
        reason: DeadReason::Permanent,
        error: "HTTP 400".into(),
        duration_ms: 5,
    };
    let held = s
        .settle_many(vec![
            (claimed[0].clone(), delivered),
            (claimed[1].clone(), retry),
            (claimed[2].clone(), dead),
        ])
        .await
        .unwrap();
    assert_eq!(held, [true, true, true]);
    // A settlement may still be on its way to the database (the embedded store writes it
    // after answering); what it brings due is claimable once it is written.
    s.caught_up().await.unwrap();
    let again = s.claim("x", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "only the retried row is due");
    assert_eq!(again[0].attempts, 1);
    let (total, items) = s
        .dead_letters(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(total, 1, "{}", b.name);
    assert_eq!(items[0].last_error, "HTTP 400");
    assert_eq!(items[0].reason, "permanent");

    let journey = s.journey(&claimed[2].event_id).await.unwrap().unwrap();
    assert_eq!(journey.deliveries[0].status, "dead");
    assert_eq!(journey.deliveries[0].attempts[0].outcome, "dead_lettered");
    assert!(!journey.deliveries[0].attempts[0].replica.is_empty());
    // A delivered attempt is in the history like any other (the embedded store keeps it in
    // the row, not beside it).
    let journey = s.journey(&claimed[0].event_id).await.unwrap().unwrap();
    assert_eq!(journey.deliveries[0].status, "delivered", "{}", b.name);
    let a = &journey.deliveries[0].attempts;
    assert_eq!(a.len(), 1, "{}: {a:?}", b.name);
    assert_eq!(
        (a[0].attempt, a[0].outcome.as_str(), a[0].duration_ms),
        (1, "delivered", Some(3)),
        "{}",
        b.name
    );
    assert!(!a[0].replica.is_empty() && !a[0].at.is_empty(), "{a:?}");
    // By correlation id too.
    assert!(s.journey("corr-c").await.unwrap().is_some());

    let filter = DeadLetterFilter {
        sink: Some("x".into()),
        ..DeadLetterFilter::default()
    };
    assert_eq!(s.replay(&filter, true).await.unwrap(), 1, "dry run counts");
    assert_eq!(s.replay(&filter, false).await.unwrap(), 1);
    let journey = s.journey(&claimed[2].event_id).await.unwrap().unwrap();
    let outcomes: Vec<_> = journey.deliveries[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["dead_lettered", "replayed"], "{}", b.name);
    let replayed = s.claim("x", 10, LEASE).await.unwrap();
    assert_eq!(
        replayed.len(),
        1,
        "{}: the replayed row is due again",
        b.name
    );
    assert_eq!(replayed[0].event_id, claimed[2].event_id);
    for c in replayed.iter().chain(&again) {
        let dead = Settlement::Dead {
            reason: DeadReason::Exhausted,
            error: "gone".into(),
            duration_ms: 1,
        };
        assert!(s.settle(c, dead).await.unwrap());
    }
    assert_eq!(s.purge(&DeadLetterFilter::default()).await.unwrap(), 2);
    assert_eq!(
        s.dead_letters(&DeadLetterFilter::default(), 10)
            .await
            .unwrap()
            .0,
        0
    );
    s.close().await;
}

async fn ordered_claims_take_one_event_per_session_in_order(b: Backend) {
    let s = &b.store;
    s.configure_sinks(&[("x".into(), true)]).await.unwrap();
    for k in ["1", "2", "3"] {
        s.accept(acceptance(&format!("o{k}"), "same", &["x"]))
            .await
            .unwrap();
    }
    s.accept(acceptance("other", "different", &["x"]))
        .await
        .unwrap();
    let first = s.claim("x", 10, LEASE).await.unwrap();
    let keys: Vec<_> = first.iter().map(|c| c.correlation_id.clone()).collect();
    assert_eq!(keys, ["corr-o1", "corr-other"], "{}", b.name);
    let delivered = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    s.settle(&first[0], delivered).await.unwrap();
    s.caught_up().await.unwrap();
    let next = s.claim("x", 10, LEASE).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].correlation_id, "corr-o2", "{}", b.name);
    s.close().await;
}

async fn sink_counts_see_pending_rows_and_dead_letters_but_not_delivered_rows(b: Backend) {
    let s = &b.store;
    for k in ["1", "2", "3", "4"] {
        s.accept(acceptance(&format!("cnt{k}"), &format!("s{k}"), &["x"]))
            .await
            .unwrap();
    }
    deliver_one_dead_letter_one(&b, "x").await;
    let counts = s.sink_counts(&["x".into(), "idle".into()]).await.unwrap();
    assert_eq!(
        (counts[0].pending, counts[0].dead_letters),
        (2, 1),
        "{}",
        b.name
    );
    assert!(counts[0].oldest_pending_age_seconds < 60.0, "{}", b.name);
    assert_eq!(
        (counts[1].pending, counts[1].dead_letters),
        (0, 0),
        "{}",
        b.name
    );
    assert_eq!(counts[1].oldest_pending_age_seconds, 0.0, "{}", b.name);
    s.close().await;
}

async fn a_sink_switched_to_ordered_holds_back_rows_written_before_the_switch(b: Backend) {
    let s = &b.store;
    s.configure_sinks(&[("x".into(), false)]).await.unwrap();
    for k in ["1", "2"] {
        s.accept(acceptance(&format!("sw{k}"), "same", &["x"]))
            .await
            .unwrap();
    }
    s.configure_sinks(&[("x".into(), true)]).await.unwrap();
    let first = s.claim("x", 10, LEASE).await.unwrap();
    let keys: Vec<_> = first.iter().map(|c| c.correlation_id.clone()).collect();
    assert_eq!(keys, ["corr-sw1"], "{}", b.name);
    s.close().await;
}

async fn an_expired_lease_frees_the_row_and_the_old_claim_cannot_settle(b: Backend) {
    let s = &b.store;
    s.accept(acceptance("k", "s", &["x"])).await.unwrap();
    let short = Duration::from_millis(1);
    let first = s.claim("x", 10, short).await.unwrap();
    assert_eq!(first.len(), 1);
    // Wait until the lease has passed (a condition, not a guess).
    let mut again = Vec::new();
    for _ in 0..200 {
        again = s.claim("x", 10, LEASE).await.unwrap();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(again.len(), 1, "{}", b.name);
    let delivered = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    assert!(
        !s.settle(&first[0], delivered.clone()).await.unwrap(),
        "stale claim"
    );
    assert!(s.settle(&again[0], delivered).await.unwrap());
    s.close().await;
}

async fn a_respond_row_is_held_for_the_request_and_a_late_answer_queues_on_late(b: Backend) {
    let s = &b.store;
    let mut a = acceptance("r", "s", &[]);
    a.status = 202;
    a.respond = Some(RespondHold {
        sink: "api".into(),
        on_late: Some("late".into()),
        lease_ms: 60_000,
    });
    let AcceptOutcome::Committed {
        held: Some(held), ..
    } = s.accept(a).await.unwrap()
    else {
        panic!("{}: no held row", b.name);
    };
    assert!(s.claim("api", 10, LEASE).await.unwrap().is_empty(), "held");
    let late = Settlement::Delivered {
        duration_ms: 9,
        result: Some(r#"{"orderStatus":"shipped"}"#.into()),
    };
    assert!(s.settle(&held, late).await.unwrap());
    s.caught_up().await.unwrap();
    let rows = s.claim("late", 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 1, "{}", b.name);
    let body: serde_json::Value = serde_json::from_slice(&rows[0].body).unwrap();
    assert_eq!(body["upstreamResult"]["orderStatus"], "shipped");
    // The stored answer for duplicates is replaced when the upstream answered in time.
    s.set_answer("r".into(), 200, bytes::Bytes::from_static(b"{\"ok\":1}"))
        .await
        .unwrap();
    match s.accept(acceptance("r", "s", &[])).await.unwrap() {
        AcceptOutcome::Duplicate { status, body, .. } => {
            assert_eq!(status, 200);
            assert_eq!(&body[..], b"{\"ok\":1}");
        }
        other => panic!("{}: {other:?}", b.name),
    }
    s.close().await;
}

/// A `respond` call in flight when its session is forgotten: the upstream's answer neither
/// becomes what duplicates get nor reaches `on_late`.
async fn an_upstream_answer_that_comes_after_its_session_was_forgotten_is_not_kept_or_handed_on(
    b: Backend,
) {
    let s = &b.store;
    let hold = |key: &str| {
        let mut a = acceptance(key, "s-late", &[]);
        a.status = 202;
        a.respond = Some(RespondHold {
            sink: "api".into(),
            on_late: Some("late".into()),
            lease_ms: 60_000,
        });
        a
    };
    let held: Vec<_> = {
        let mut held = Vec::new();
        for key in ["in-time", "late"] {
            let AcceptOutcome::Committed { held: Some(h), .. } = s.accept(hold(key)).await.unwrap()
            else {
                panic!("{}: no held row", b.name);
            };
            held.push(h);
        }
        held
    };
    s.forget_session("s-late").await.unwrap();
    // In time: the request stores the upstream's answer for duplicates...
    let upstream =
        br#"{"status":"success","data":{"processed":true,"stateVersion":1,"name":"Ada"}}"#;
    s.set_answer("in-time".into(), 200, bytes::Bytes::from_static(upstream))
        .await
        .unwrap();
    match s.accept(hold("in-time")).await.unwrap() {
        AcceptOutcome::Duplicate { status, body, .. } => {
            assert_eq!(status, 200, "{}", b.name);
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"status": "success",
                    "data": {"processed": true, "stateVersion": 1, "forgotten": true}}),
                "{}: kept emptied",
                b.name
            );
        }
        other => panic!("{}: {other:?}", b.name),
    }
    // ...late: the answer would go to `on_late`.
    let late = Settlement::Delivered {
        duration_ms: 9,
        result: Some(r#"{"name":"Ada"}"#.into()),
    };
    let _ = s.settle(&held[1], late).await.unwrap();
    s.caught_up().await.unwrap();
    assert!(
        s.claim("late", 10, LEASE).await.unwrap().is_empty(),
        "{}: nothing handed on",
        b.name
    );
    s.close().await;
}

async fn an_oversized_answer_commits_nothing_and_its_group_goes_on(b: Backend) {
    let s = Arc::new(b.store.clone());
    let mut big = acceptance("big", "s", &["x"]);
    big.max_response_bytes = 10;
    let (a, c) = tokio::join!(s.accept(big), s.accept(acceptance("small", "s", &["x"])));
    assert!(
        matches!(
            a,
            Err(cognihook::store::StoreError::ResponseTooLarge { .. })
        ),
        "{}: {a:?}",
        b.name
    );
    assert_eq!(
        version(&c.unwrap()),
        1,
        "{}: the refused one took no version",
        b.name
    );
    assert_eq!(s.sink_counts(&["x".into()]).await.unwrap()[0].pending, 1);
    s.close().await;
}

async fn a_forgotten_session_loses_state_payloads_and_pending_deliveries_and_starts_again(
    b: Backend,
) {
    let s = &b.store;
    // The first event's answer holds an extract of its payload, as a route's answers do.
    let mut first = acceptance("f1", "s-forget", &["x"]);
    first.answer = Answer::new(
        b"{\"status\":\"success\",\"data\":{\"processed\":true,\"stateVersion\":".to_vec(),
        b",\"extract\":\"secret-of-f1\"}}".to_vec(),
    );
    let first_id = first.event.event_id.clone();
    s.accept(first).await.unwrap();
    for k in ["f2", "f3"] {
        s.accept(acceptance(k, "s-forget", &["x"])).await.unwrap();
    }
    s.accept(acceptance("keep", "s-keep", &["x"]))
        .await
        .unwrap();
    // One of the session's rows is delivered, one dead-lettered, one still pending.
    deliver_one_dead_letter_one(&b, "x").await;

    let f = s.forget_session("s-forget").await.unwrap();
    assert_eq!(f.events, 3, "{}", b.name);
    assert_eq!(f.cancelled_deliveries, 1, "{}: the pending row", b.name);
    // The journey keeps ids and outcomes, not the payload.
    let j = s.journey("corr-f1").await.unwrap().expect("journey");
    let event = serde_json::to_value(&j).unwrap();
    let text = event.to_string();
    assert!(
        !text.contains("\"k\":\"f1\""),
        "{}: payload kept: {text}",
        b.name
    );
    assert!(text.contains("s-forget"), "{}: ids kept: {text}", b.name);
    // The answer kept for its duplicates loses the extract, keeps its status and envelope,
    // and says so.
    let forgotten_answer = serde_json::json!({
        "status": "success",
        "data": {"processed": true, "stateVersion": 1, "forgotten": true}
    });
    let timeline = s.session_timeline("s-forget", 10).await.unwrap();
    let entry = timeline
        .iter()
        .find(|e| e.event_id == first_id)
        .expect("in the timeline");
    let (status, body) = entry.answer.clone().expect("the answer is kept, emptied");
    assert_eq!(status, 200, "{}", b.name);
    let kept: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(kept, forgotten_answer, "{}: the timeline's answer", b.name);
    match s
        .accept(acceptance("f1", "s-forget", &["x"]))
        .await
        .unwrap()
    {
        AcceptOutcome::Duplicate { status, body, .. } => {
            assert_eq!(status, 200, "{}", b.name);
            let replayed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                replayed, forgotten_answer,
                "{}: a duplicate's answer",
                b.name
            );
        }
        other => panic!(
            "{}: a repeat inside the window is a duplicate: {other:?}",
            b.name
        ),
    }
    // No dead letter and nothing pending is left of it; the other session is untouched.
    let counts = s.sink_counts(&["x".into()]).await.unwrap();
    assert_eq!(
        (counts[0].pending, counts[0].dead_letters),
        (1, 0),
        "{}: only s-keep's row",
        b.name
    );
    assert!(
        s.claim("x", 10, LEASE).await.unwrap().len() == 1,
        "{}",
        b.name
    );
    let kept = s.journey("corr-keep").await.unwrap().expect("journey");
    assert!(serde_json::to_value(&kept)
        .unwrap()
        .to_string()
        .contains("\"k\":\"keep\""));
    // It starts again at version 1; forgetting an unknown session does nothing.
    assert_eq!(
        version(&s.accept(acceptance("f4", "s-forget", &[])).await.unwrap()),
        1,
        "{}",
        b.name
    );
    let none = s.forget_session("never-seen").await.unwrap();
    assert_eq!((none.events, none.cancelled_deliveries), (0, 0));
    s.close().await;
}

/// The timeline is newest first by commit, not by version: after a session starts again
/// (forgotten, or expired), its new events come before the old ones with higher versions.
async fn a_session_timeline_lists_its_newest_events_first_also_after_it_starts_again(b: Backend) {
    let s = &b.store;
    let mut ids = Vec::new();
    for k in ["t1", "t2", "t3"] {
        let a = acceptance(k, "s-time", &[]);
        ids.push(a.event.event_id.clone());
        version(&s.accept(a).await.unwrap());
        // Another session's events in between are not in it.
        s.accept(acceptance(&format!("o-{k}"), "s-other", &[]))
            .await
            .unwrap();
    }
    s.forget_session("s-time").await.unwrap();
    // PostgreSQL orders by commit time (ms), then by version: the new event's commit must
    // fall in a later millisecond than the old ones' for it to come first there.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let a = acceptance("t4", "s-time", &[]);
    ids.push(a.event.event_id.clone());
    assert_eq!(
        version(&s.accept(a).await.unwrap()),
        1,
        "{}: started again",
        b.name
    );
    ids.reverse();

    let all = s.session_timeline("s-time", 10).await.unwrap();
    let seen: Vec<(&str, u64)> = all
        .iter()
        .map(|e| (e.event_id.as_str(), e.state_version))
        .collect();
    let want: Vec<(&str, u64)> = ids.iter().map(String::as_str).zip([1, 3, 2, 1]).collect();
    assert_eq!(seen, want, "{}", b.name);
    // A page of two is the newest two: the new event, then the old session's last.
    let page = s.session_timeline("s-time", 2).await.unwrap();
    let page: Vec<&str> = page.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(page, [ids[0].as_str(), ids[1].as_str()], "{}", b.name);
    assert!(s
        .session_timeline("never-seen", 10)
        .await
        .unwrap()
        .is_empty());
    s.close().await;
}

/// Claims two due rows of `sink`: the first is settled delivered, the second dead-lettered
/// (permanent).
async fn deliver_one_dead_letter_one(b: &Backend, sink: &str) {
    let s = &b.store;
    let claimed = s.claim(sink, 2, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2, "{}", b.name);
    let delivered = Settlement::Delivered {
        duration_ms: 1,
        result: None,
    };
    let dead = Settlement::Dead {
        reason: DeadReason::Permanent,
        error: "HTTP 400".into(),
        duration_ms: 1,
    };
    assert!(s.settle(&claimed[0], delivered).await.unwrap());
    assert!(s.settle(&claimed[1], dead).await.unwrap());
}

/// The embedded store prunes pass after pass while idle: 10,000 expired events, 2,000 a
/// pass, are all gone once one cycle has started, with nothing else written (the next
/// cycle would start a minute later, so without the idle passes 8,000 would stay a minute
/// per pass). Its clock moves three hours on: each event's answer is kept an hour past its
/// key, whatever `retention` says.
///
/// Each test runs in a process of its own (cargo-nextest), so moving this process's view of
/// the system clock touches no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_embedded_store_prunes_pass_after_pass_until_nothing_expired_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Duration::from_millis(1);
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        idempotency_window: tiny,
        session_ttl: tiny,
        retention: tiny,
        ..StoreConfig::default()
    };
    let sqlite = Arc::new(SqliteStore::open(&config).expect("sqlite"));
    let store = Store::Sqlite(sqlite.clone());
    for chunk in 0..20 {
        let accepts = (0..500).map(|i| {
            let n = chunk * 500 + i;
            store.accept(acceptance(&format!("k{n}"), &format!("s{n}"), &[]))
        });
        for r in futures_util::future::join_all(accepts).await {
            r.expect("commit");
        }
    }
    store.caught_up().await.unwrap();
    let db = rusqlite::Connection::open(sqlite.path()).expect("db");
    cognihook::store::sqlite::add_event_body_function(&db, sqlite.path()).unwrap();
    let events = || {
        db.query_row("SELECT count(*) FROM all_events", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("count")
    };
    assert_eq!(events(), 10_000);
    cognihook::clock::skew_wall_clock(3 * 3_600_000);
    sqlite.prune_now();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while events() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} events left 40 s after the cycle started",
            events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
}
