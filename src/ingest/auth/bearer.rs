//! `Authorization: Bearer` (RFC 6750): static tokens, JWTs checked against an identity
//! provider's public keys (`bearer` with `jwt`), and the tokens cognihook's own `/oauth/token`
//! issues (`oauth2`).
//!
//! Invariants: a JWT is accepted only with an algorithm the route allows (RS256, ES256 and
//! EdDSA for an identity provider's keys, HS256 only for cognihook's own signing key), so
//! `alg: none` and a public key used as an HMAC secret are refused; a key from a JWKS is used
//! only for its own algorithm family, symmetric JWKS keys never; static tokens are compared
//! as SHA-256 digests in constant time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::{AuthError, Verified};
use crate::error::Cause;
use crate::secret::Secret;

/// The issuer cognihook's own tokens carry (`iss`).
pub const OWN_ISSUER: &str = "cognihook";

/// Algorithms accepted from an identity provider's keys.
const PUBLIC_KEY_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Time a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The token of an `Authorization: Bearer <token>` header, if the request carries one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A `bearer` or `oauth2` route's verifier.
pub enum BearerVerifier {
    /// Static tokens: (label, SHA-256 of the token).
    Static(Vec<(String, [u8; 32])>),
    Jwt(Box<JwtVerifier>),
}

impl fmt::Debug for BearerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BearerVerifier::Static(t) => {
                let labels: Vec<_> = t.iter().map(|(l, _)| l.as_str()).collect();
                f.debug_tuple("Static").field(&labels).finish()
            }
            BearerVerifier::Jwt(j) => f
                .debug_struct("Jwt")
                .field("issuer", &j.issuer)
                .field("audience", &j.audience)
                .field("jwks", &j.jwks.as_ref().map(|k| &k.url))
                .finish(),
        }
    }
}

impl BearerVerifier {
    /// The labels of its static tokens (a JWKS rotates its keys itself: none).
    pub fn labels(&self) -> Vec<String> {
        match self {
            BearerVerifier::Static(t) => t.iter().map(|(l, _)| l.clone()).collect(),
            BearerVerifier::Jwt(_) => Vec::new(),
        }
    }

    pub fn tokens(tokens: &[Secret]) -> BearerVerifier {
        BearerVerifier::Static(
            tokens
                .iter()
                .map(|t| (t.label.clone(), Sha256::digest(&t.value).into()))
                .collect(),
        )
    }

    /// Checks the request's bearer token. A JWT naming a key id the JWKS does not hold
    /// answers [`AuthError::UnknownKey`]: the caller may [`BearerVerifier::refresh`] and ask
    /// again.
    pub fn verify(&self, headers: &HeaderMap) -> Result<Verified, AuthError> {
        let token = bearer_token(headers).ok_or(AuthError::MissingToken)?;
        match self {
            BearerVerifier::Static(expected) => super::matching_digest(expected, token.as_bytes())
                .map(|label| Verified {
                    secret: label.to_string(),
                    spend: None,
                })
                .ok_or(AuthError::InvalidToken),
            BearerVerifier::Jwt(j) => j.verify(token),
        }
    }

    /// Fetches the JWKS again after an unknown key id, unless one was fetched within the
    /// route's `jwks_min_interval`; true when the keys may have changed since the caller
    /// looked (fetched now, or by a request that was fetching meanwhile).
    pub async fn refresh(&self) -> bool {
        match self {
            BearerVerifier::Jwt(j) => match &j.jwks {
                Some(jwks) => jwks.refresh().await,
                None => false,
            },
            BearerVerifier::Static(_) => false,
        }
    }
}

/// One verification key and the only algorithm it is used with.
struct Key {
    label: String,
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies JWTs: signature with one of the keys, `iss`, `aud`, `exp` (required) and `nbf`.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    leeway: Duration,
    algorithms: &'static [Algorithm],
    /// Keys from the configuration (PEM files, or cognihook's own signing keys).
    fixed: Vec<Key>,
    jwks: Option<Jwks>,
}

/// Why a JWT verifier cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public key file {path} cannot be read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("public key file {0} holds no RSA, EC P-256 or Ed25519 public key in PEM form")]
    NotAKey(String),
    #[error("jwks_url `{0}` must be an absolute http:// or https:// URL")]
    BadUrl(String),
    #[error("the HTTP client for the JWKS cannot be built: {0}")]
    Client(#[source] reqwest::Error),
}

impl JwtVerifier {
    /// A verifier of an identity provider's tokens (RS256, ES256, EdDSA): keys from PEM
    /// files and, when `jwks_url` is set, from its JWKS (fetched on first use).
    pub fn public_keys(config: &crate::config::JwtConfig) -> Result<JwtVerifier, KeyError> {
        let mut fixed = Vec::new();
        for path in &config.public_keys {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| KeyError::Unreadable {
                path: shown.clone(),
                source,
            })?;
            let (alg, key) = pem_key(&pem).ok_or_else(|| KeyError::NotAKey(shown.clone()))?;
            fixed.push(Key {
                label: format!("file:{shown}"),
                kid: None,
                alg,
                key,
            });
        }
        let jwks = match &config.jwks_url {
            None => None,
            Some(url) => Some(Jwks::new(url, config.jwks_min_interval)?),
        };
        Ok(JwtVerifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            algorithms: PUBLIC_KEY_ALGORITHMS,
            fixed,
            jwks,
        })
    }

    /// A verifier of the tokens cognihook's `/oauth/token` issues for `route` (HS256 with any
    /// of the signing keys).
    pub fn own(signing_keys: &[Secret], route: &str) -> JwtVerifier {
        JwtVerifier {
            issuer: OWN_ISSUER.to_string(),
            audience: route.to_string(),
            leeway: Duration::from_secs(5),
            algorithms: &[Algorithm::HS256],
            fixed: signing_keys
                .iter()
                .map(|s| Key {
                    label: format!("oauth2.signing_key {}", s.label),
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(&s.value),
                })
                .collect(),
            jwks: None,
        }
    }

    fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken);
        }
        let fetched = self.jwks.as_ref().map(|j| j.keys.read().clone());
        let fits = |k: &&Key| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        };
        let candidates: Vec<&Key> = self
            .fixed
            .iter()
            .chain(fetched.iter().flat_map(|s| s.iter()))
            .filter(fits)
            .collect();
        if candidates.is_empty() {
            return Err(if self.jwks.is_some() {
                AuthError::UnknownKey
            } else {
                AuthError::InvalidToken
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let mut refusal = AuthError::InvalidToken;
        for key in candidates {
            use jsonwebtoken::errors::ErrorKind;
            match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, &validation) {
                Ok(_) => {
                    return Ok(Verified {
                        secret: key.label.clone(),
                        spend: None,
                    })
                }
                Err(e) => match e.kind() {
                    // Another key may have signed it.
                    ErrorKind::InvalidSignature => {}
                    ErrorKind::ExpiredSignature => return Err(AuthError::ExpiredToken),
                    ErrorKind::ImmatureSignature => return Err(AuthError::PrematureToken),
                    _ => refusal = AuthError::InvalidToken,
                },
            }
        }
        Err(refusal)
    }
}

/// The algorithm and key of a PEM public key: RSA → RS256, EC (P-256) → ES256, Ed25519 →
/// EdDSA.
fn pem_key(pem: &[u8]) -> Option<(Algorithm, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, k));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|k| (Algorithm::EdDSA, k))
}

/// Why a JWKS fetch gave no keys.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("{0}")]
    Request(Cause),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    NotJwks(serde_json::Error),
}

/// An identity provider's JWKS, cached; fetched again on an unknown key id, at most once per
/// `min_interval`.
struct Jwks {
    url: String,
    client: reqwest::Client,
    min_interval: Duration,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last fetch started (successful or not).
    last: Mutex<Option<Instant>>,
    /// Counts completed fetches, so a request that waited for another's fetch knows it.
    fetches: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn new(url: &str, min_interval: Duration) -> Result<Jwks, KeyError> {
        match url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => return Err(KeyError::BadUrl(crate::secret::mask_url(url))),
        }
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(KeyError::Client)?;
        Ok(Jwks {
            url: url.to_string(),
            client,
            min_interval,
            keys: RwLock::new(Arc::new(Vec::new())),
            last: Mutex::new(None),
            fetches: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    async fn refresh(&self) -> bool {
        let seen = self.fetches.load(Ordering::Acquire);
        let _one_at_a_time = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) != seen {
            return true;
        }
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < self.min_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let fetched = self.fetch().await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %crate::secret::mask_url(&self.url), keys = keys.len(),
                    "JWKS fetched");
                *self.keys.write() = Arc::new(keys);
                true
            }
            Err(e) => {
                tracing::warn!(url = %crate::secret::mask_url(&self.url), error = %e,
                    "JWKS fetch failed; keeping the keys held");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, JwksError> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| JwksError::Request(Cause::new(e)))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Request(Cause::new(e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(JwksError::NotJwks)?;
        Ok(set
            .keys
            .iter()
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|k| {
                let alg = match &k.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                        Algorithm::EdDSA
                    }
                    // Symmetric keys and other curves: never.
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(k).ok()?;
                let kid = k.common.key_id.clone();
                Some(Key {
                    label: format!("jwks:{}", kid.as_deref().unwrap_or("-")),
                    kid,
                    alg,
                    key,
                })
            })
            .collect())
    }
}
