//! Any header value and body, given to every verifier (bearer tokens and JWTs included), must give an answer and never a panic,
//! and must not verify (the key is not in the input). Layout: one byte choosing the verifier,
//! one byte N, N bytes of header value, the rest is the body.
#![no_main]

use std::time::Duration;

use cognihook::ingest::auth::bearer::{BearerVerifier, JwtVerifier};
use cognihook::ingest::auth::{
    CredentialVerifier, HmacVerifier, Secret, StandardWebhooksVerifier, TimestampedKind,
    TimestampedVerifier,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

fn key() -> Secret {
    Secret {
        label: "S[0]".into(),
        value: b"a key the fuzzer does not know".to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [choice, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n).min(rest.len());
    let (value, body) = rest.split_at(n);
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let name = HeaderName::from_static("x-cognigy-signature");
    let mut h = HeaderMap::new();
    for header in [
        "x-cognigy-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "authorization",
        "x-api-key",
    ] {
        h.insert(HeaderName::from_static(header), value.clone());
    }
    let keys = [key()];
    let verified = match choice % 7 {
        0 => HmacVerifier::new(&keys, &[name]).verify(&h, body).is_ok(),
        1 => TimestampedVerifier::new(
            &keys,
            name,
            Duration::from_secs(300),
            TimestampedKind::Cognihook,
        )
        .verify(&h, body, NOW)
        .is_ok(),
        2 => StandardWebhooksVerifier::new(&keys, Duration::from_secs(300))
            .verify(&h, body, NOW)
            .is_ok(),
        3 => CredentialVerifier::basic("cognigy", &keys)
            .verify(&h)
            .is_ok(),
        4 => CredentialVerifier::api_key(&keys, None).verify(&h).is_ok(),
        5 => BearerVerifier::tokens(&keys).verify(&h).is_ok(),
        // cognihook's own tokens (HS256 with the key): any `Bearer` value, JWT-shaped or not.
        _ => BearerVerifier::Jwt(Box::new(JwtVerifier::own(&keys, "route")))
            .verify(&h)
            .is_ok(),
    };
    assert!(!verified, "verified without the key");
});
