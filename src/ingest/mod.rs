//! The pure part of the request path: authenticate the raw bytes, decode and validate the
//! payload, normalise it, apply the route's rules. No I/O happens here; `http::webhook` reads
//! the body, calls [`Route::prepare`], then commits through the store.

pub mod auth;
pub mod payload;
pub mod rules;

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{Config, EnvSource, RouteConfig};
use auth::bearer::{BearerVerifier, JwtVerifier};
use auth::spec::AuthSpec;
use auth::{
    AuthError, CredentialVerifier, HmacVerifier, Secret, SpentSignature, StandardWebhooksVerifier,
    TimestampedKind, TimestampedVerifier, Verified,
};
use payload::{BodyFormat, NormalisedEvent, PayloadDecoder, PayloadError};
use rules::{Rejection, RuleSet};

/// How a route authenticates.
#[derive(Debug)]
pub enum Authenticator {
    Hmac(HmacVerifier),
    /// `hmac-sha256-timestamped` and `jambonz`.
    Timestamped(TimestampedVerifier),
    StandardWebhooks(StandardWebhooksVerifier),
    /// `basic` and `api-key`.
    Credentials(CredentialVerifier),
    /// `bearer` and `oauth2`.
    Bearer(BearerVerifier),
    /// `scheme = "none"` with `allow_unauthenticated = true`.
    None,
}

impl Authenticator {
    /// The `WWW-Authenticate` challenge of a 401 (RFC 9110 §11.6.1 requires one): the HTTP
    /// scheme for credentials, else the route's signature scheme by its configuration name.
    pub fn challenge(&self) -> Option<&'static str> {
        use auth::{CredentialScheme, TimestampedKind};
        Some(match self {
            Authenticator::Credentials(v) => match v.scheme() {
                CredentialScheme::Basic => r#"Basic realm="cognihook", charset="UTF-8""#,
                CredentialScheme::ApiKey => r#"ApiKey realm="cognihook""#,
            },
            Authenticator::Hmac(_) => r#"hmac-sha256 realm="cognihook""#,
            Authenticator::Timestamped(v) => match v.kind() {
                TimestampedKind::Cognihook => r#"hmac-sha256-timestamped realm="cognihook""#,
                TimestampedKind::Jambonz => r#"jambonz realm="cognihook""#,
            },
            Authenticator::StandardWebhooks(_) => r#"standard-webhooks realm="cognihook""#,
            Authenticator::Bearer(_) => r#"Bearer realm="cognihook""#,
            Authenticator::None => return None,
        })
    }

    /// The `WWW-Authenticate` challenge of a 401 refusing `code` (RFC 6750 §3 for bearer
    /// routes: the error and what it means, except when no token was presented).
    pub fn challenge_for(&self, code: Option<&str>) -> Option<std::borrow::Cow<'static, str>> {
        let plain = self.challenge()?;
        let described = match (self, code) {
            (Authenticator::Bearer(_), Some("invalid_token")) => "the token is not accepted",
            (Authenticator::Bearer(_), Some("expired_token")) => "the token has expired",
            (Authenticator::Bearer(_), Some("token_not_yet_valid")) => "the token is not valid yet",
            _ => return Some(plain.into()),
        };
        Some(format!(r#"{plain}, error="invalid_token", error_description="{described}""#).into())
    }

    /// The labels of the route's secrets (its rotation set), never the values.
    pub fn secret_labels(&self) -> Vec<String> {
        match self {
            Authenticator::Hmac(v) => v.labels(),
            Authenticator::Timestamped(v) => v.labels(),
            Authenticator::StandardWebhooks(v) => v.labels(),
            Authenticator::Credentials(v) => v.labels(),
            Authenticator::Bearer(v) => v.labels(),
            Authenticator::None => Vec::new(),
        }
    }

    /// After [`AuthError::UnknownKey`]: fetches the route's JWKS again if its rate allows;
    /// true when verifying again may now succeed.
    pub async fn refresh_keys(&self) -> bool {
        match self {
            Authenticator::Bearer(v) => v.refresh().await,
            _ => false,
        }
    }

    /// Checks a request at `now` (unix seconds).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Option<Verified>, AuthError> {
        Ok(Some(match self {
            Authenticator::Hmac(v) => Verified {
                secret: v.verify(headers, body)?.to_string(),
                spend: None,
            },
            Authenticator::Timestamped(v) => v.verify(headers, body, now)?,
            Authenticator::StandardWebhooks(v) => v.verify(headers, body, now)?,
            Authenticator::Credentials(v) => v.verify(headers)?,
            Authenticator::Bearer(v) => v.verify(headers)?,
            Authenticator::None => return Ok(None),
        }))
    }
}

/// A route ready to serve: config resolved, secrets loaded, expressions compiled.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path: String,
    pub payload: PayloadDecoder,
    pub auth: Authenticator,
    pub rules: RuleSet,
    pub sinks: Vec<String>,
    /// Answer with a backend's result (SPEC §5.1).
    pub respond: Option<crate::config::RespondConfig>,
    /// Requests over it answer 429 (applied by the HTTP layer).
    pub rate_limit: Option<crate::config::RouteRateLimit>,
    /// `[privacy] redact`, applied after the rules.
    pub redaction: Arc<crate::event::Redaction>,
    /// Largest answer: the route's `max_response_bytes`, else 64 KiB for Cognigy payload
    /// kinds (Cognigy's flow context holds 65 kB by default), else `limits.max_response_bytes`.
    pub max_response_bytes: usize,
}

/// Why the pure part of the pipeline refused a request.
#[derive(Debug)]
pub enum Refusal {
    Auth(AuthError),
    Payload(PayloadError),
    /// A rule failed; carries the event's correlation id for the answer.
    Rule {
        rejection: Rejection,
        correlation_id: String,
    },
}

/// What the request carries besides its body.
pub struct RequestMeta<'a> {
    pub headers: &'a HeaderMap,
    pub simulated: bool,
    /// `X-Correlation-Id` of the request, if any.
    pub correlation_header: Option<&'a str>,
    pub transaction_id: &'a str,
    /// The request's one reading of the clock (Unix ms, `crate::now_millis`): signed
    /// timestamps are checked against it, and the event's id and `receivedAt` take it.
    pub now_ms: i64,
    /// How the body is encoded (from `Content-Type`).
    pub format: BodyFormat,
    /// What to decode when it is not the raw body (a multipart body's text parts, as a form);
    /// authentication always covers the raw body.
    pub fields: Option<&'a [u8]>,
}

/// An event that passed authentication, validation and rules, ready to commit.
#[derive(Debug)]
pub struct Prepared {
    pub event: NormalisedEvent,
    pub extracted: Map<String, Value>,
    /// Label of the secret that matched (for the signature metric); `None` when unauthenticated.
    pub secret: Option<String>,
    /// A signature that may be used only once; the store spends it with the commit.
    pub spend: Option<SpentSignature>,
}

/// When each stage of [`Route::prepare_marked`] ended (for the request's trace spans).
#[derive(Debug, Clone, Copy)]
pub struct StageMarks {
    pub start: std::time::SystemTime,
    pub auth: Option<std::time::SystemTime>,
    pub decode: Option<std::time::SystemTime>,
    pub rules: Option<std::time::SystemTime>,
}

impl StageMarks {
    pub fn start() -> StageMarks {
        StageMarks {
            start: std::time::SystemTime::now(),
            auth: None,
            decode: None,
            rules: None,
        }
    }
}

impl Route {
    /// Runs auth → decode → normalise → rules on a complete raw body.
    pub fn prepare(&self, body: &[u8], meta: &RequestMeta<'_>) -> Result<Prepared, Refusal> {
        self.prepare_marked(body, meta, None)
    }

    /// [`Route::prepare`], noting in `marks` when each stage ended (reached stages only).
    pub fn prepare_marked(
        &self,
        body: &[u8],
        meta: &RequestMeta<'_>,
        mut marks: Option<&mut StageMarks>,
    ) -> Result<Prepared, Refusal> {
        let mut mark = |stage: fn(&mut StageMarks) -> &mut Option<std::time::SystemTime>| {
            if let Some(m) = marks.as_deref_mut() {
                *stage(m) = Some(std::time::SystemTime::now());
            }
        };
        let verified = if meta.simulated {
            None
        } else {
            let v = self
                .auth
                .verify(meta.headers, body, meta.now_ms.div_euclid(1000));
            mark(|m| &mut m.auth);
            v.map_err(Refusal::Auth)?
        };
        let (secret, spend) = match verified {
            Some(v) => (Some(v.secret), v.spend),
            None => (None, None),
        };
        let d = self
            .payload
            .decode(meta.fields.unwrap_or(body), meta.format);
        mark(|m| &mut m.decode);
        let d = d.map_err(Refusal::Payload)?;
        let correlation_id = d
            .correlation_id
            .or_else(|| meta.correlation_header.map(str::to_string));
        let generated = correlation_id.is_none();
        let mut event = NormalisedEvent::new_at(
            meta.now_ms,
            &self.name,
            correlation_id.unwrap_or_default(),
            meta.transaction_id.to_string(),
            d.session_id,
            d.user_id,
            d.event_type,
            d.payload,
        );
        // An event that brings no correlation id gets its own id as one: the store then
        // finds it by that id without a correlation index entry (docs/choices.md).
        if generated {
            event.correlation_id = event.event_id.clone();
        }
        event.text = d.text;
        event.intent = d.intent;
        event.entities = d.entities;
        event.channel = d.channel;
        event.locale = d.locale;
        event.url_token = d.url_token;
        event.trace_id = d.trace_id;
        event.simulated = meta.simulated;
        let extracted = self.rules.evaluate(&event);
        mark(|m| &mut m.rules);
        let extracted = extracted.map_err(|rejection| Refusal::Rule {
            rejection,
            correlation_id: event.correlation_id.clone(),
        })?;
        if !self.redaction.is_empty() {
            self.redaction.apply(&mut event);
        }
        Ok(Prepared {
            event,
            extracted,
            secret,
            spend,
        })
    }
}

/// Longest `Idempotency-Key` / `webhook-id` value kept as it is (Stripe's bound).
const MAX_KEY_HEADER: usize = 255;

/// The idempotency key (SPEC §6): `Idempotency-Key`, else `webhook-id`, else SHA-256 of route
/// and raw body. Keys are scoped by route.
pub fn idempotency_key(route: &str, headers: &HeaderMap, body: &[u8]) -> String {
    // Built by hand: `format!` was ~2k instructions per request (bench/README.md, sixteenth
    // session), several times the copies themselves.
    let join = |parts: &[&str]| {
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            key.push_str(p);
        }
        key
    };
    for name in ["idempotency-key", "webhook-id"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if v.len() > MAX_KEY_HEADER {
                // Kept whole, a long key would make a store key past what an index takes; its
                // hash still tells repeats apart.
                let digest = hex::encode(Sha256::digest(v));
                return join(&[route, ":", name, ":sha256:", &digest]);
            }
            if !v.is_empty() {
                return join(&[route, ":", name, ":", v]);
            }
        }
    }
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0u8]);
    h.update(body);
    join(&[route, ":sha256:", &hex::encode(h.finalize())])
}

/// All routes of a configuration, built.
#[derive(Debug, Clone)]
pub struct Routes(pub Vec<Arc<Route>>);

impl Routes {
    /// Resolves secrets and compiles expressions for every route; returns every problem.
    pub fn build(config: &Config, env: &dyn EnvSource) -> Result<Routes, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        // Bad pointers are reported by `Config::validate`.
        let redaction =
            Arc::new(crate::event::Redaction::compile(&config.privacy.redact).unwrap_or_default());
        for r in &config.routes {
            match build_route(r, config, env, &redaction) {
                Ok(route) => out.push(Arc::new(route)),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(Routes(out))
        } else {
            Err(problems)
        }
    }
}

fn build_route(
    r: &RouteConfig,
    config: &Config,
    env: &dyn EnvSource,
    redaction: &Arc<crate::event::Redaction>,
) -> Result<Route, Vec<String>> {
    let at = format!("route `{}`", r.name);
    let mut problems = Vec::new();
    let auth = match AuthSpec::check(&r.auth, &at, r.allow_unauthenticated) {
        Ok(spec) => build_auth(&spec, env, &at, (&r.name, &config.oauth2), &mut problems),
        Err(mut p) => {
            problems.append(&mut p);
            Authenticator::None
        }
    };
    let payload = match PayloadDecoder::build(&r.payload) {
        Ok(p) => Some(p),
        Err(errs) => {
            problems.extend(errs.into_iter().map(|e| format!("{at}: {e}")));
            None
        }
    };
    let rules = match RuleSet::compile(&r.rules, &r.extract) {
        Ok(r) => r,
        Err(errs) => {
            problems.extend(errs.into_iter().map(|e| format!("{at}: {e}")));
            RuleSet::default()
        }
    };
    let Some(payload) = payload.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    let payload_kind = payload.kind();
    Ok(Route {
        name: r.name.clone(),
        path: r.path.clone(),
        payload,
        auth,
        rules,
        sinks: r.sinks.clone(),
        respond: r.respond.clone(),
        rate_limit: r.rate_limit,
        redaction: redaction.clone(),
        max_response_bytes: r.max_response_bytes.unwrap_or(
            if payload_kind == crate::config::PayloadKind::JsonSchema {
                config.limits.max_response_bytes
            } else {
                COGNIGY_ANSWER_BYTES.min(config.limits.max_response_bytes)
            },
        ),
    })
}

/// Default answer cap of routes of Cognigy payload kinds: Cognigy keeps a node's answer in
/// the flow context, 65 kB by default (cognigy/FACTS.md).
pub const COGNIGY_ANSWER_BYTES: usize = 65_536;

/// Resolves every secret reference in `refs`, recording problems under `what`.
fn resolve_all(
    refs: &[crate::secret::SecretRef],
    env: &dyn EnvSource,
    at: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> Vec<Secret> {
    let mut out = Vec::new();
    for s in refs {
        match s.resolve(env) {
            Ok(mut v) => out.append(&mut v),
            Err(e) => problems.push(format!("{at}: {what} `{s}`: {e}")),
        }
    }
    out
}

/// The verifier of a checked `auth` table; `own` is the route's name and `[oauth2]` (for
/// `oauth2` routes, whose tokens cognihook signs).
fn build_auth(
    spec: &AuthSpec,
    env: &dyn EnvSource,
    at: &str,
    own: (&str, &crate::config::OAuth2Config),
    problems: &mut Vec<String>,
) -> Authenticator {
    let (route, oauth2) = own;
    let mut resolve =
        |refs: &[crate::secret::SecretRef], what: &str| resolve_all(refs, env, at, what, problems);
    match spec {
        AuthSpec::None => Authenticator::None,
        AuthSpec::Hmac { secrets, headers } => {
            let secrets = resolve(secrets, "auth secret");
            let headers: Vec<HeaderName> = match headers {
                Some(h) => h.clone(),
                None => auth::DEFAULT_SIGNATURE_HEADERS
                    .iter()
                    .map(|h| HeaderName::from_static(h))
                    .collect(),
            };
            Authenticator::Hmac(HmacVerifier::new(&secrets, &headers))
        }
        AuthSpec::Timestamped {
            secrets,
            header,
            tolerance,
        } => {
            let secrets = resolve(secrets, "auth secret");
            let header = header
                .clone()
                .unwrap_or(HeaderName::from_static(auth::DEFAULT_TIMESTAMPED_HEADER));
            let tolerance = tolerance.unwrap_or(auth::DEFAULT_TOLERANCE);
            Authenticator::Timestamped(TimestampedVerifier::new(
                &secrets,
                header,
                tolerance,
                TimestampedKind::Cognihook,
            ))
        }
        AuthSpec::Jambonz { secrets, tolerance } => {
            let secrets = resolve(secrets, "auth secret");
            Authenticator::Timestamped(TimestampedVerifier::new(
                &secrets,
                HeaderName::from_static(auth::JAMBONZ_HEADER),
                tolerance.unwrap_or(auth::DEFAULT_TOLERANCE),
                TimestampedKind::Jambonz,
            ))
        }
        AuthSpec::StandardWebhooks { secrets, tolerance } => {
            let secrets = resolve(secrets, "auth secret");
            let keys: Vec<Secret> = secrets
                .iter()
                .filter_map(|s| match auth::decode_whsec(s) {
                    Ok(value) => Some(Secret {
                        label: s.label.clone(),
                        value,
                    }),
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        None
                    }
                })
                .collect();
            Authenticator::StandardWebhooks(StandardWebhooksVerifier::new(
                &keys,
                tolerance.unwrap_or(auth::DEFAULT_TOLERANCE),
            ))
        }
        AuthSpec::Basic { username, password } => {
            let passwords = resolve(std::slice::from_ref(password), "auth password");
            Authenticator::Credentials(CredentialVerifier::basic(username, &passwords))
        }
        AuthSpec::ApiKey { keys, header } => {
            let keys = resolve(keys, "auth key");
            Authenticator::Credentials(CredentialVerifier::api_key(&keys, header.clone()))
        }
        AuthSpec::Bearer { tokens } => {
            let tokens = resolve(tokens, "auth token");
            Authenticator::Bearer(BearerVerifier::tokens(&tokens))
        }
        AuthSpec::Jwt(jwt) => match JwtVerifier::public_keys(jwt) {
            Ok(v) => Authenticator::Bearer(BearerVerifier::Jwt(Box::new(v))),
            Err(e) => {
                problems.push(format!("{at}: auth.jwt: {e}"));
                Authenticator::None
            }
        },
        AuthSpec::OAuth2 => {
            // Problems with the keys are reported once, by the token endpoint's build.
            let keys = auth::oauth2::signing_keys(oauth2, env).unwrap_or_default();
            Authenticator::Bearer(BearerVerifier::Jwt(Box::new(JwtVerifier::own(
                &keys, route,
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn missing_secret_env_is_reported_for_each_route_by_name() {
        let errs = Routes::build(&Config::default(), &BTreeMap::<String, String>::new())
            .expect_err("no secret");
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e.contains("COGNIGY_WEBHOOK_SECRET")));
    }

    #[test]
    fn cognigy_kinds_cap_their_answers_at_64_kib_unless_the_route_says_otherwise() {
        let mut c = Config::from_toml(
            r#"
[[route]]
name = "cog"
path = "/cog"
payload = "cognigy-input"
auth = { scheme = "api-key", keys = ["k"] }

[[route]]
name = "own"
path = "/own"
payload = "nlu"
auth = { scheme = "api-key", keys = ["k"] }
max_response_bytes = 200000
"#,
        )
        .expect("parses");
        c.limits.max_response_bytes = 1 << 20;
        let routes = Routes::build(&c, &BTreeMap::<String, String>::new()).expect("builds");
        assert_eq!(routes.0[0].max_response_bytes, COGNIGY_ANSWER_BYTES);
        assert_eq!(routes.0[1].max_response_bytes, 200_000);
    }

    #[test]
    fn idempotency_key_prefers_header_then_webhook_id_then_body_hash() {
        let mut h = HeaderMap::new();
        let k_body = idempotency_key("r", &h, b"{}");
        assert!(k_body.starts_with("r:sha256:"));
        assert_ne!(k_body, idempotency_key("other", &h, b"{}"));
        assert_ne!(k_body, idempotency_key("r", &h, b"{ }"));
        h.insert("webhook-id", "msg_1".parse().expect("hv"));
        assert_eq!(idempotency_key("r", &h, b"{}"), "r:webhook-id:msg_1");
        h.insert("idempotency-key", "k-9".parse().expect("hv"));
        assert_eq!(idempotency_key("r", &h, b"{}"), "r:idempotency-key:k-9");
    }

    #[test]
    fn a_long_idempotency_key_is_kept_as_its_hash() {
        let key = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", v.parse().expect("hv"));
            idempotency_key("r", &h, b"{}")
        };
        let long = "k".repeat(4000);
        let k = key(&long);
        assert!(k.starts_with("r:idempotency-key:sha256:"), "{k}");
        assert!(k.len() < 100, "{k}");
        assert_eq!(k, key(&long), "a repeat finds the same key");
        assert_ne!(k, key(&"k".repeat(4001)));
        let edge = "k".repeat(255);
        assert_eq!(key(&edge), format!("r:idempotency-key:{edge}"));
    }
}
