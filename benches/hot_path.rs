//! Micro-benchmarks of the request path's pure stages: signature check, payload decode,
//! rules, and the whole `Route::prepare`, on the seed payloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use cognihook::config::Config;
use cognihook::ingest::{auth, payload, RequestMeta, Routes};
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;

const SECRET: &str = "bench-secret";
const NLU: &[u8] = br#"{"sessionId":"3f1c8a52-3c1e-4c55-9d2e-1f0a9b7c6d5e","userId":"user-42","input":"Where is my order A-1001?","context":{"locale":"en-US","channel":"webchat","correlationId":"corr-1"},"intent":{"name":"order_status","confidence":0.94},"entities":[{"name":"orderId","value":"A-1001"}]}"#;
const FLOW: &[u8] = br#"{"sessionId":"sess-8f7d6e5c","userId":"usr-9a8b7c6d","message":"Check order status","eventType":"flow.execution","context":{"intent":"order_tracking","confidence":0.94},"timestamp":"2024-01-15T14:32:10Z","flowName":"OrderSupportFlow"}"#;

fn routes() -> Routes {
    let env = BTreeMap::from([("COGNIGY_WEBHOOK_SECRET".to_string(), SECRET.to_string())]);
    Routes::build(&Config::default(), &env).expect("routes")
}

fn headers(body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "x-cognigy-signature",
        auth::sign_hex(SECRET.as_bytes(), body).parse().expect("hv"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let routes = routes();
    let (flow_route, nlu_route) = (&routes.0[0], &routes.0[1]);
    let nlu_headers = headers(NLU);
    let flow_headers = headers(FLOW);

    c.bench_function("hmac_verify_nlu", |b| {
        let cognihook::ingest::Authenticator::Hmac(v) = &nlu_route.auth else {
            panic!("hmac route")
        };
        b.iter(|| v.verify(&nlu_headers, NLU).expect("valid"));
    });
    c.bench_function("serde_json_value_parse_nlu (reference)", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(NLU).expect("json"));
    });
    c.bench_function("decode_nlu", |b| {
        b.iter(|| payload::decode(cognihook::config::PayloadKind::Nlu, NLU).expect("valid"));
    });
    c.bench_function("decode_flow_event", |b| {
        b.iter(|| payload::decode(cognihook::config::PayloadKind::FlowEvent, FLOW).expect("valid"));
    });
    let meta = |h| RequestMeta {
        headers: h,
        simulated: false,
        correlation_header: None,
        transaction_id: "t",
        now: 0,
        format: cognihook::ingest::payload::BodyFormat::Json,
    };
    let prepared = nlu_route.prepare(NLU, &meta(&nlu_headers)).expect("valid");
    c.bench_function("rules_seed_nlu", |b| {
        b.iter(|| nlu_route.rules.evaluate(&prepared.event).expect("passes"));
    });
    c.bench_function("prepare_nlu (auth+decode+rules)", |b| {
        b.iter(|| nlu_route.prepare(NLU, &meta(&nlu_headers)).expect("valid"));
    });
    c.bench_function("prepare_flow_event (auth+decode)", |b| {
        b.iter(|| {
            flow_route
                .prepare(FLOW, &meta(&flow_headers))
                .expect("valid")
        });
    });
}

criterion_group!(benches, bench);

criterion_main!(benches);
