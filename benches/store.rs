//! The store's commit path alone: 64 concurrent acceptances (one group-commit window's worth)
//! on a real embedded store, with `sync = "full"` and with `"off"`, to separate fsync cost
//! from CPU cost. The database is brought up to date off the commit path; its queue is
//! bounded, so over many iterations the figure is the rate both keep up with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cognihook::config::{StoreConfig, SyncMode};
use cognihook::ingest::payload::NormalisedEvent;
use cognihook::store::{decide::Answer, sqlite::SqliteStore, Acceptance, Store};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

fn acceptance(i: u64, sinks: usize) -> Acceptance {
    let key = ulid::Ulid::new().to_string();
    Acceptance {
        idempotency_key: format!("bench:{key}"),
        event: NormalisedEvent::new(
            "flow-events",
            format!("corr-{key}"),
            uuid::Uuid::new_v4().to_string(),
            format!("sess-{}", i % 1000),
            "usr-1".into(),
            "flow.execution".into(),
            json!({"sessionId": format!("sess-{}", i % 1000), "userId": "usr-1",
                "message": "Check order status", "eventType": "flow.execution",
                "timestamp": "2024-01-15T14:32:10Z", "flowName": "OrderSupportFlow"}),
        ),
        answer: Answer::new(
            br#"{"status":"success","message":"Payload processed successfully","correlationId":"c","transactionId":"t","timestamp":"2024-01-15T14:32:10Z","data":{"processed":true,"stateVersion":"#.to_vec(),
            b"}}".to_vec(),
        ),
        sinks: (0..sinks).map(|n| format!("sink{n}")).collect(),
        max_response_bytes: 1 << 20,
        spend: None,
        status: 200,
        respond: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store_accept_64_concurrent");
    g.throughput(Throughput::Elements(64));
    for (sync, sinks) in [
        (SyncMode::Full, 0),
        (SyncMode::Full, 1),
        (SyncMode::Off, 0),
        (SyncMode::Off, 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            sync,
            ..StoreConfig::default()
        };
        let store = Store::Sqlite(Arc::new(SqliteStore::open(&cfg).unwrap()));
        let mut i = 0u64;
        g.bench_function(format!("{sync:?}/{sinks}_sinks"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(64);
                    for _ in 0..64 {
                        i += 1;
                        let (s, a) = (store.clone(), acceptance(i, sinks));
                        tasks.push(tokio::spawn(async move { s.accept(a).await }));
                    }
                    for t in tasks {
                        t.await.unwrap().unwrap();
                    }
                })
            })
        });
        rt.block_on(store.close());
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
