//! Bearer authentication through the real server: static tokens, JWTs against a loopback
//! identity provider's JWKS (rotation, unknown key ids, expiry, audience, issuer, `alg`
//! attacks), PEM public keys, cognihook's own `/oauth/token` end to end, and `api-key` with
//! a header of the route's choosing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use ring::signature::KeyPair as _;
use serde_json::{json, Value};

use crate::support::{count, flow_body, set_routes, unix_now, TestApp, TestResponse};

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn code(r: &TestResponse) -> String {
    r.json()["code"].as_str().unwrap_or_default().to_string()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn events(app: &TestApp) -> i64 {
    count(&app.db().await, "SELECT count(*) FROM all_events")
}

/// A loopback identity provider serving a JWKS document it can be told to change, counting
/// the fetches.
struct Jwks {
    url: String,
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    async fn start(keys: Vec<Value>) -> Jwks {
        let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(d.lock().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Jwks { url, doc, fetches }
    }

    fn set(&self, keys: Vec<Value>) {
        *self.doc.lock() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A signing key of the test identity provider and its public JWK.
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn ed25519(kid: &'static str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        kid,
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": b64url(pair.public_key().as_ref())}),
    }
}

fn es256(kid: &'static str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    // Uncompressed point: 0x04 ‖ x ‖ y.
    let point = pair.public_key().as_ref();
    Signer {
        kid,
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..])}),
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn rs256() -> Signer {
    let pem = std::fs::read(fixture("rsa-private.pem")).unwrap();
    let jwk: Value =
        serde_json::from_slice(&std::fs::read(fixture("rsa-jwk.json")).unwrap()).unwrap();
    Signer {
        kid: "rsa-1",
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk,
    }
}

const ISS: &str = "https://idp.test/";
const AUD: &str = "cognihook-orders";

/// Claims valid now, with `change` applied.
fn claims(change: impl FnOnce(&mut Value)) -> Value {
    let now = unix_now();
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "bot", "iat": now, "exp": now + 600});
    change(&mut c);
    c
}

fn token(s: &Signer, claims: &Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.to_string());
    jsonwebtoken::encode(&h, claims, &s.key).unwrap()
}

async fn post_bearer(app: &TestApp, path: &str, token: &str, n: usize) -> TestResponse {
    let body = flow_body("s-bearer", &format!("c-{path}-{n}"));
    let auth = format!("Bearer {token}");
    app.post(path, &body, &[JSON, ("authorization", &auth)])
        .await
}

fn jwt_route(jwks: &str, min_interval: &str) -> String {
    format!(
        r#"
[[route]]
name = "jwt"
path = "/jwt"
payload = "flow-event"
auth = {{ scheme = "bearer", jwt = {{ jwks_url = "{jwks}", issuer = "{ISS}", audience = "{AUD}", jwks_min_interval = "{min_interval}" }} }}
"#
    )
}

#[tokio::test]
async fn static_tokens_accept_each_token_and_refuse_missing_and_wrong_with_a_bearer_challenge() {
    let app = TestApp::spawn_with(|c| {
        set_routes(
            c,
            r#"
[[route]]
name = "tok"
path = "/tok"
payload = "flow-event"
auth = { scheme = "bearer", tokens = ["tok-old", "tok-new"] }
"#,
        )
    })
    .await;
    for (n, t) in ["tok-old", "tok-new"].iter().enumerate() {
        let r = post_bearer(&app, "/tok", t, n).await;
        assert_eq!(r.status, StatusCode::OK, "{t}: {:?}", r.body);
    }
    let body = flow_body("s-bearer", "c-none");
    let r = app.post("/tok", &body, &[JSON]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "missing_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="cognihook""#)
    );
    let r = post_bearer(&app, "/tok", "tok-older", 9).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "invalid_token");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="cognihook", error="invalid_token""#),
        "{challenge}"
    );
    // Another scheme's credentials are not a bearer token.
    let r = app
        .post(
            "/tok",
            &body,
            &[JSON, ("authorization", "Basic dG9rLW5ldzo=")],
        )
        .await;
    assert_eq!(code(&r), "missing_token");
    assert_eq!(events(&app).await, 2);
}

#[tokio::test]
async fn a_rotated_jwks_key_is_fetched_when_a_token_names_it() {
    let first = ed25519("k1");
    let second = es256("k2");
    let idp = Jwks::start(vec![first.jwk.clone()]).await;
    let route = jwt_route(&idp.url, "0s");
    let app = TestApp::spawn_with(|c| set_routes(c, &route)).await;

    let r = post_bearer(&app, "/jwt", &token(&first, &claims(|_| {})), 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(idp.fetches(), 1, "fetched on first use");
    let r = post_bearer(&app, "/jwt", &token(&first, &claims(|_| {})), 2).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(idp.fetches(), 1, "a known key is not fetched again");

    // The provider rotates: k2 joins, then k1 leaves.
    idp.set(vec![first.jwk.clone(), second.jwk.clone()]);
    let r = post_bearer(&app, "/jwt", &token(&second, &claims(|_| {})), 3).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(idp.fetches(), 2, "an unknown kid fetches the JWKS again");
    idp.set(vec![second.jwk.clone()]);
    let r = post_bearer(&app, "/jwt", &token(&second, &claims(|_| {})), 4).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(events(&app).await, 4);
}

#[tokio::test]
async fn an_unknown_kid_is_refused_and_refetches_are_rate_limited() {
    let known = ed25519("k1");
    let stranger = ed25519("k9");
    let idp = Jwks::start(vec![known.jwk.clone()]).await;
    let route = jwt_route(&idp.url, "1h");
    let app = TestApp::spawn_with(|c| set_routes(c, &route)).await;
    let r = post_bearer(&app, "/jwt", &token(&known, &claims(|_| {})), 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(idp.fetches(), 1);
    for n in 2..5 {
        let r = post_bearer(&app, "/jwt", &token(&stranger, &claims(|_| {})), n).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(code(&r), "invalid_token");
    }
    assert_eq!(
        idp.fetches(),
        1,
        "within jwks_min_interval the JWKS is not fetched again"
    );
    // A key the provider does hold but signed by someone else is refused too.
    let forged = ed25519("k1");
    let r = post_bearer(&app, "/jwt", &token(&forged, &claims(|_| {})), 9).await;
    assert_eq!(code(&r), "invalid_token");
    assert_eq!(events(&app).await, 1);
}

#[tokio::test]
async fn expired_premature_misaddressed_and_algorithm_attacks_are_refused_with_their_codes() {
    let rsa = rs256();
    let idp = Jwks::start(vec![rsa.jwk.clone()]).await;
    let route = jwt_route(&idp.url, "0s");
    let app = TestApp::spawn_with(|c| set_routes(c, &route)).await;
    let now = unix_now();
    let r = post_bearer(&app, "/jwt", &token(&rsa, &claims(|_| {})), 0).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "expired",
            claims(|c| c["exp"] = json!(now - 3600)),
            "expired_token",
        ),
        (
            "not yet valid",
            claims(|c| c["nbf"] = json!(now + 3600)),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            claims(|c| c["aud"] = json!("someone-else")),
            "invalid_token",
        ),
        (
            "wrong issuer",
            claims(|c| c["iss"] = json!("https://evil.test/")),
            "invalid_token",
        ),
        (
            "no exp",
            claims(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "invalid_token",
        ),
    ];
    for (n, (what, c, want)) in cases.into_iter().enumerate() {
        let r = post_bearer(&app, "/jwt", &token(&rsa, &c), n + 1).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(code(&r), want, "{what}");
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains(r#"error="invalid_token""#),
            "{what}"
        );
    }

    // alg "none": no signature at all.
    let head = b64url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let body = b64url(claims(|_| {}).to_string().as_bytes());
    let r = post_bearer(&app, "/jwt", &format!("{head}.{body}."), 10).await;
    assert_eq!(code(&r), "invalid_token", "alg none");

    // HS256 keyed with the provider's public key (the classic confusion).
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let confused =
        jsonwebtoken::encode(&h, &claims(|_| {}), &EncodingKey::from_secret(&public_pem)).unwrap();
    let r = post_bearer(&app, "/jwt", &confused, 11).await;
    assert_eq!(code(&r), "invalid_token", "HS256 with the public key");
    let r = post_bearer(&app, "/jwt", "not-a-jwt", 12).await;
    assert_eq!(code(&r), "invalid_token");
    assert_eq!(events(&app).await, 1);
}

#[tokio::test]
async fn pem_public_keys_verify_without_a_jwks() {
    let rsa = rs256();
    let routes = format!(
        r#"
[[route]]
name = "pem"
path = "/pem"
payload = "flow-event"
auth = {{ scheme = "bearer", jwt = {{ public_keys = ["{}"], issuer = "{ISS}", audience = "{AUD}" }} }}
"#,
        fixture("rsa-public.pem").display()
    );
    let app = TestApp::spawn_with(|c| set_routes(c, &routes)).await;
    let r = post_bearer(&app, "/pem", &token(&rsa, &claims(|_| {})), 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let other = ed25519("k1");
    let r = post_bearer(&app, "/pem", &token(&other, &claims(|_| {})), 2).await;
    assert_eq!(code(&r), "invalid_token");
}

const OAUTH: &str = r#"
[[route]]
name = "cognigy-a"
path = "/a"
payload = "flow-event"
auth = { scheme = "oauth2" }

[[route]]
name = "cognigy-b"
path = "/b"
payload = "flow-event"
auth = { scheme = "oauth2" }
"#;

/// A gateway whose `[oauth2]` signs with `signing_key`, or with the key derived from the
/// clients' secrets when it is `None`.
async fn oauth_app(limit: u32, signing_key: Option<&str>) -> TestApp {
    let key_line = signing_key.map_or(String::new(), |k| format!("signing_key = \"{k}\""));
    TestApp::spawn_with(|c| {
        set_routes(c, OAUTH);
        let extra = cognihook::config::Config::from_toml(&format!(
            r#"
[oauth2]
{key_line}
token_ttl = "10m"
failed_auth_limit = {{ max = {limit}, per = "1h" }}
[[oauth2.client]]
id = "bot-a"
secret = "secret-a"
scopes = ["events", "read"]
routes = ["cognigy-a"]
[[oauth2.client]]
id = "bot-b"
secret = "secret-b"
routes = ["cognigy-b"]
"#
        ))
        .expect("oauth2 table");
        c.oauth2 = extra.oauth2;
    })
    .await
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test]
async fn the_token_endpoint_issues_tokens_by_basic_and_by_form_and_routes_accept_only_their_own() {
    let app = oauth_app(10, Some("0123456789abcdef0123456789abcdef-signing")).await;
    let by_basic = app
        .post(
            "/oauth/token",
            b"grant_type=client_credentials",
            &[FORM, ("authorization", &basic("bot-a", "secret-a"))],
        )
        .await;
    assert_eq!(by_basic.status, StatusCode::OK, "{:?}", by_basic.body);
    assert_eq!(by_basic.header("cache-control"), Some("no-store"));
    let answer = by_basic.json();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 600);
    assert_eq!(answer["scope"], "events read");
    let token = answer["access_token"].as_str().unwrap().to_string();

    let by_form = app
        .post(
            "/oauth/token",
            b"grant_type=client_credentials&client_id=bot-a&client_secret=secret-a&scope=events",
            &[FORM],
        )
        .await;
    assert_eq!(by_form.status, StatusCode::OK, "{:?}", by_form.body);
    assert_eq!(by_form.json()["scope"], "events");
    let token2 = by_form.json()["access_token"].as_str().unwrap().to_string();

    assert_eq!(
        post_bearer(&app, "/a", &token, 1).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_bearer(&app, "/a", &token2, 2).await.status,
        StatusCode::OK
    );
    // Issued for cognigy-a only.
    let r = post_bearer(&app, "/b", &token, 3).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "invalid_token");
    // A token signed with another key is not one of ours.
    let mut forged_claims = claims(|c| {
        c["iss"] = json!("cognihook");
        c["aud"] = json!(["cognigy-a"]);
    });
    forged_claims["sub"] = json!("bot-a");
    let forged = jsonwebtoken::encode(
        &Header::default(),
        &forged_claims,
        &EncodingKey::from_secret(b"another-key-another-key-another-key"),
    )
    .unwrap();
    assert_eq!(
        code(&post_bearer(&app, "/a", &forged, 4).await),
        "invalid_token"
    );
    assert_eq!(events(&app).await, 2);
}

#[tokio::test]
async fn token_request_errors_follow_rfc_6749_and_failed_client_logins_are_rate_limited() {
    let app = oauth_app(3, None).await;
    let post = |body: &'static [u8], auth: Option<String>| {
        let app = &app;
        async move {
            let mut h = vec![FORM];
            let auth = auth.unwrap_or_default();
            if !auth.is_empty() {
                h.push(("authorization", auth.as_str()));
            }
            app.post("/oauth/token", body, &h).await
        }
    };
    let r = post(
        b"grant_type=password&username=x&password=y",
        Some(basic("bot-a", "secret-a")),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = post(b"client_id=bot-a&client_secret=secret-a", None).await;
    assert_eq!(r.json()["error"], "invalid_request");
    let r = post(
        b"grant_type=client_credentials&client_secret=secret-a",
        Some(basic("bot-a", "secret-a")),
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_request",
        "two client authentications"
    );
    let r = post(
        b"grant_type=client_credentials&scope=admin",
        Some(basic("bot-a", "secret-a")),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_scope");
    let r = app
        .post(
            "/oauth/token",
            br#"{"grant_type":"client_credentials"}"#,
            &[JSON],
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_request", "not a form");

    // Wrong secrets: 401 invalid_client (with a Basic challenge when Basic was tried) until
    // the client id's budget of failures is spent; then 429 even for the right secret.
    let r = post(
        b"grant_type=client_credentials",
        Some(basic("bot-a", "guess-1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .starts_with("Basic"));
    let r = post(
        b"grant_type=client_credentials&client_id=bot-a&client_secret=guess-2",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    let r = post(
        b"grant_type=client_credentials",
        Some(basic("bot-a", "guess-3")),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(
        b"grant_type=client_credentials",
        Some(basic("bot-a", "secret-a")),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert!(r.header("retry-after").is_some());
    // Unknown ids have their own budget and never learn whether an id exists.
    let r = post(b"grant_type=client_credentials", Some(basic("nobody", "x"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
}

#[tokio::test]
async fn api_key_reads_the_header_the_route_names() {
    let app = TestApp::spawn_with(|c| {
        set_routes(
            c,
            r#"
[[route]]
name = "k"
path = "/k"
payload = "flow-event"
auth = { scheme = "api-key", keys = ["key-1"], header = "X-My-Key" }
"#,
        )
    })
    .await;
    let body = flow_body("s-k", "c-k-1");
    let r = app.post("/k", &body, &[JSON, ("x-my-key", "key-1")]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = flow_body("s-k", "c-k-2");
    let r = app.post("/k", &body, &[JSON, ("x-api-key", "key-1")]).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the default header no longer counts"
    );
    let r = app
        .post("/k", &body, &[JSON, ("authorization", "ApiKey key-1")])
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "Authorization: ApiKey always works"
    );
}

#[test]
fn bearer_and_oauth2_setting_problems_are_each_named() {
    let c = cognihook::config::Config::from_toml(
        r#"
[[route]]
name = "neither"
path = "/n"
payload = "flow-event"
auth = { scheme = "bearer" }

[[route]]
name = "both"
path = "/b"
payload = "flow-event"
auth = { scheme = "bearer", tokens = ["t"], jwt = { issuer = "i", audience = "a", jwks_url = "http://idp/jwks" } }

[[route]]
name = "nokeys"
path = "/k"
payload = "flow-event"
auth = { scheme = "bearer", jwt = { issuer = "", audience = "a" } }

[[route]]
name = "orphan"
path = "/o"
payload = "flow-event"
auth = { scheme = "oauth2", tokens = ["t"] }

[[route]]
name = "hmac"
path = "/h"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["s"] }

[oauth2]
[[oauth2.client]]
id = "c"
secret = "s"
routes = ["hmac", "missing"]
"#,
    )
    .expect("parses");
    let mut problems = c.validate();
    problems.extend(
        cognihook::ingest::Routes::build(&c, &crate::support::env())
            .err()
            .unwrap_or_default(),
    );
    let all = problems.join("\n");
    for want in [
        "route `neither`: auth scheme bearer needs `tokens` (static tokens) or `jwt`",
        "route `both`: auth scheme bearer takes `tokens` or `jwt`, not both",
        "route `nokeys`: auth.jwt needs `jwks_url` or `public_keys`",
        "route `nokeys`: auth.jwt.issuer must not be empty",
        "route `orphan`: auth.tokens does not apply to scheme oauth2",
        "route `orphan`: auth scheme oauth2 but no [[oauth2.client]] lists it",
        "oauth2.client `c`: route `hmac` has auth scheme hmac-sha256, not oauth2",
        "oauth2.client `c`: route `missing` is not defined",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}
