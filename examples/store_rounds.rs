//! The embedded store's whole cycle for one sink, without HTTP: each round accepts 64 events
//! concurrently (one sink each), claims them and settles them delivered, as the delivery path
//! does. `bench/store_callgrind.sh` runs it under valgrind to count the instructions per
//! event of the sequencer and the projector, deliveries included (a real delivery cannot
//! run under valgrind, so `bench/callgrind.sh` measures the request path with delivery off).
//!
//! usage: store_rounds [ROUNDS]   (default 100; `sync = "off"`: instructions, not fsyncs)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cognihook::config::{StoreConfig, SyncMode};
use cognihook::ingest::payload::NormalisedEvent;
use cognihook::store::{decide::Answer, sqlite::SqliteStore, Acceptance, Settlement, Store};
use serde_json::json;

fn acceptance(i: u64) -> Acceptance {
    let key = ulid::Ulid::new().to_string();
    let session = format!("sess-{}", i % 1000);
    Acceptance {
        idempotency_key: format!("rounds:{key}"),
        event: NormalisedEvent::new(
            "flow-events",
            format!("corr-{key}"),
            uuid::Uuid::new_v4().to_string(),
            session.clone(),
            "usr-1".into(),
            "flow.execution".into(),
            json!({"sessionId": session, "userId": "usr-1", "message": "Check order status",
                "eventType": "flow.execution"}),
        ),
        answer: Answer::new(br#"{"data":{"stateVersion":"#.to_vec(), b"}}".to_vec()),
        sinks: vec!["backend".into()],
        max_response_bytes: 1 << 20,
        spend: None,
        status: 200,
        respond: None,
    }
}

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .map_or(100, |a| a.parse().expect("ROUNDS is a number"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        sync: SyncMode::Off,
        ..StoreConfig::default()
    };
    let sqlite = Arc::new(SqliteStore::open(&config).unwrap());
    let store = Store::Sqlite(sqlite.clone());
    let (mut accepted, mut delivered) = (0u64, 0usize);
    rt.block_on(async {
        for _ in 0..rounds {
            let mut tasks = Vec::with_capacity(64);
            for _ in 0..64 {
                accepted += 1;
                let (s, a) = (store.clone(), acceptance(accepted));
                tasks.push(tokio::spawn(async move { s.accept(a).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            loop {
                let claimed = store
                    .claim("backend", 64, Duration::from_secs(60))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                delivered += claimed.len();
                let outcomes = claimed
                    .into_iter()
                    .map(|c| {
                        let s = Settlement::Delivered {
                            duration_ms: 2,
                            result: None,
                        };
                        (c, s)
                    })
                    .collect();
                store.settle_many(outcomes).await.unwrap();
            }
        }
        store.caught_up().await.unwrap();
    });
    rt.block_on(store.close());
    println!(
        "accepted {accepted} delivered {delivered} (written once, delivered: {})",
        sqlite.delivered_with_rows()
    );
}
