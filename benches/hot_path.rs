//! Micro-benchmarks of the request path's pure stages: signature check, payload decode,
//! rules, and the whole `Route::prepare`, on the seed payloads and on real Cognigy shapes
//! (every auth scheme; `cognigy-input` as JSON and as a form).

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
        now_ms: 0,
        format: cognihook::ingest::payload::BodyFormat::Json,
        fields: None,
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

/// The HTTP Request node sample (`tests/fixtures/cognigy/`), as JSON and as a form.
const COGNIGY_JSON: &[u8] =
    include_bytes!("../tests/fixtures/cognigy/http-request-node-body.rendered.json");
const COGNIGY_FORM: &[u8] = b"userId=user123&sessionId=session123&URLToken=4e5e2f01110c935fff81ec54bbce12c175b831d8105dc69face36a8983feec17&text=Where+is+my+order+12345%3F&intent=orderStatus&intentScore=0.87&slots=%7B%22city%22%3A%5B%7B%22keyphrase%22%3A%22D%C3%BCsseldorf%22%7D%5D%7D&language=en-US&channel=webhook";

fn bench_cognigy(c: &mut Criterion) {
    use cognihook::config::{AuthScheme, PayloadKind};
    use cognihook::ingest::auth::{
        client_headers, CredentialVerifier, Secret, StandardWebhooksVerifier, TimestampedKind,
        TimestampedVerifier,
    };
    use cognihook::ingest::payload::{BodyFormat, PayloadDecoder};
    let now = 1_764_000_000;
    let secret = |v: &[u8]| Secret {
        label: "s".into(),
        value: v.to_vec(),
    };
    let to_map = |hs: Vec<(&'static str, String)>| {
        let mut m = HeaderMap::new();
        for (k, v) in hs {
            m.insert(k, v.parse().expect("hv"));
        }
        m
    };
    let body = COGNIGY_JSON;
    let ts = TimestampedVerifier::new(
        &[secret(b"k")],
        http::HeaderName::from_static(auth::DEFAULT_TIMESTAMPED_HEADER),
        auth::DEFAULT_TOLERANCE,
        TimestampedKind::Cognihook,
    );
    let ts_headers =
        to_map(client_headers(AuthScheme::HmacSha256Timestamped, "k", body, now, "").unwrap());
    c.bench_function("verify_hmac_sha256_timestamped", |b| {
        b.iter(|| ts.verify(&ts_headers, body, now).expect("valid"));
    });
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let key = auth::decode_whsec(&secret(whsec.as_bytes())).unwrap();
    let sw = StandardWebhooksVerifier::new(&[secret(&key)], auth::DEFAULT_TOLERANCE);
    let sw_headers =
        to_map(client_headers(AuthScheme::StandardWebhooks, whsec, body, now, "msg_1").unwrap());
    c.bench_function("verify_standard_webhooks", |b| {
        b.iter(|| sw.verify(&sw_headers, body, now).expect("valid"));
    });
    let basic = CredentialVerifier::basic("cognigy", &[secret(b"pw")]);
    let basic_headers =
        to_map(client_headers(AuthScheme::Basic, "cognigy:pw", body, now, "").unwrap());
    c.bench_function("verify_basic", |b| {
        b.iter(|| basic.verify(&basic_headers).expect("valid"));
    });
    let decoder = PayloadDecoder::Builtin(PayloadKind::CognigyInput);
    c.bench_function("decode_cognigy_input_json", |b| {
        b.iter(|| {
            decoder
                .decode(COGNIGY_JSON, BodyFormat::Json)
                .expect("valid")
        });
    });
    c.bench_function("decode_cognigy_input_form", |b| {
        b.iter(|| {
            decoder
                .decode(COGNIGY_FORM, BodyFormat::Form)
                .expect("valid")
        });
    });
}

criterion_group!(benches, bench, bench_cognigy);

criterion_main!(benches);
