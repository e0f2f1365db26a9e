//! Authentication schemes (SPEC §4), checked on the raw body bytes before any parsing.
//!
//! Invariants: comparisons are constant-time (`Mac::verify_slice`, or `subtle` over SHA-256
//! digests for passwords and keys, so lengths leak nothing either); the expected signature is
//! never computed into a value that could be returned or logged, only compared; secrets live
//! in [`Secret`], whose `Debug` prints nothing of the value. The clock is a parameter, so
//! every scheme's timestamp rules are tested without waiting.

pub mod bearer;
pub mod oauth2;
pub mod spec;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The headers that may carry an `hmac-sha256` signature when a route names none.
pub const DEFAULT_SIGNATURE_HEADERS: [&str; 2] = ["x-cognigy-signature", "x-webhook-signature"];
/// The header of `hmac-sha256-timestamped` when a route names none.
pub const DEFAULT_TIMESTAMPED_HEADER: &str = "x-cognigy-signature";
/// Voice Gateway's (jambonz's) signature header.
pub const JAMBONZ_HEADER: &str = "jambonz-signature";
/// How far a signed timestamp may be from now, when a route does not say.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a request failed authentication; each maps to a SPEC §5 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing signature header")]
    MissingSignature,
    #[error("signature does not match")]
    InvalidSignature,
    #[error("signed timestamp outside the tolerance")]
    StaleTimestamp,
    #[error("signature already used")]
    ReplayedSignature,
    #[error("no bearer token")]
    MissingToken,
    #[error("bearer token not accepted")]
    InvalidToken,
    #[error("bearer token expired")]
    ExpiredToken,
    #[error("bearer token not valid yet")]
    PrematureToken,
    /// A JWT names a key id the route's JWKS does not hold (yet): refresh, then ask again;
    /// answered as `invalid_token` if it stays unknown.
    #[error("bearer token signed with an unknown key")]
    UnknownKey,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingSignature => "missing_signature",
            AuthError::InvalidSignature => "invalid_signature",
            AuthError::StaleTimestamp => "stale_timestamp",
            AuthError::ReplayedSignature => "replayed_signature",
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken | AuthError::UnknownKey => "invalid_token",
            AuthError::ExpiredToken => "expired_token",
            AuthError::PrematureToken => "token_not_yet_valid",
        }
    }
}

/// The header an api-key route reads unless it names another.
pub const API_KEY_HEADER: &str = "x-api-key";

/// A successful check: which secret matched and, for schemes that refuse replays, the
/// signature to spend when the event commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub secret: String,
    pub spend: Option<SpentSignature>,
}

pub use crate::event::SpentSignature;

pub use crate::secret::{resolve_secret_ref, Secret};

/// An `hmac-sha256` verifier: hex HMAC-SHA256 of the raw body, optional `sha256=` prefix, in
/// any of the configured headers, against every configured secret.
pub struct HmacVerifier {
    /// Keyed MAC states, prepared once so a request only clones them.
    keys: Vec<(String, HmacSha256)>,
    headers: Vec<HeaderName>,
}

impl fmt::Debug for HmacVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<_> = self.keys.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("HmacVerifier")
            .field("secrets", &labels)
            .field("headers", &self.headers)
            .finish()
    }
}

impl HmacVerifier {
    /// The labels of its secrets, in order (never the values).
    pub fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    pub fn new(secrets: &[Secret], headers: &[HeaderName]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| {
                // HMAC accepts keys of any length, so this cannot fail.
                #[allow(clippy::expect_used)]
                let mac = HmacSha256::new_from_slice(&s.value).expect("HMAC takes any key length");
                (s.label.clone(), mac)
            })
            .collect();
        Self {
            keys,
            headers: headers.to_vec(),
        }
    }

    /// Checks the request; on success returns the label of the secret that matched.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<&str, AuthError> {
        let mut seen = false;
        for name in &self.headers {
            for value in headers.get_all(name) {
                seen = true;
                let Some(sig) = decode_signature(value.as_bytes()) else {
                    continue;
                };
                for (label, key) in &self.keys {
                    let mut mac = key.clone();
                    mac.update(body);
                    if mac.verify_slice(&sig).is_ok() {
                        return Ok(label);
                    }
                }
            }
        }
        if seen {
            Err(AuthError::InvalidSignature)
        } else {
            Err(AuthError::MissingSignature)
        }
    }
}

/// Parses `[sha256=]<64 hex digits>` into the 32 signature bytes.
fn decode_signature(raw: &[u8]) -> Option<[u8; 32]> {
    let raw = raw.trim_ascii();
    let hex_part = if raw.len() > 7 && raw[..7].eq_ignore_ascii_case(b"sha256=") {
        &raw[7..]
    } else {
        raw
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Computes the `hmac-sha256` header value (lowercase hex) for a body; used by `sign`/`send`
/// and tests, never by the verifier.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// Which timestamped scheme a [`TimestampedVerifier`] speaks; they share the header format
/// `t=<unix seconds>,v1=<hex>` over `"<t>." + body` and differ in header and replay rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampedKind {
    /// `hmac-sha256-timestamped`: a signature is accepted once.
    Cognihook,
    /// `jambonz` (Voice Gateway): replays inside the tolerance are not tracked; jambonz does
    /// not retry, and repeats are answered through idempotency like any other duplicate.
    Jambonz,
}

/// `hmac-sha256-timestamped` and `jambonz`.
pub struct TimestampedVerifier {
    keys: Vec<(String, HmacSha256)>,
    header: HeaderName,
    tolerance: Duration,
    kind: TimestampedKind,
}

impl fmt::Debug for TimestampedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<_> = self.keys.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("TimestampedVerifier")
            .field("kind", &self.kind)
            .field("secrets", &labels)
            .field("header", &self.header)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// The parts of a `t=…,v1=…[,v1=…]` header; unknown keys (`v0`, future versions) are skipped.
fn parse_timestamped(raw: &[u8]) -> Option<(i64, Vec<[u8; 32]>)> {
    let raw = std::str::from_utf8(raw).ok()?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in raw.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "t" => t = Some(v.trim().parse::<i64>().ok()?),
            "v1" => {
                let mut out = [0u8; 32];
                if hex::decode_to_slice(v.trim(), &mut out).is_ok() {
                    sigs.push(out);
                }
            }
            _ => {}
        }
    }
    Some((t?, sigs))
}

impl TimestampedVerifier {
    /// The labels of its secrets, in order (never the values).
    pub fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    /// Which convention the verifier follows.
    pub fn kind(&self) -> TimestampedKind {
        self.kind
    }

    pub fn new(
        secrets: &[Secret],
        header: HeaderName,
        tolerance: Duration,
        kind: TimestampedKind,
    ) -> Self {
        let keys = secrets
            .iter()
            .map(|s| (s.label.clone(), new_mac(&s.value)))
            .collect();
        Self {
            keys,
            header,
            tolerance,
            kind,
        }
    }

    /// Checks the request at `now` (unix seconds). The signature is checked before the
    /// timestamp, so `stale_timestamp` is only ever said of a genuine, old signature.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, AuthError> {
        let mut seen = false;
        for value in headers.get_all(&self.header) {
            seen = true;
            let Some((t, sigs)) = parse_timestamped(value.as_bytes()) else {
                continue;
            };
            let stamp = t.to_string();
            for (label, key) in &self.keys {
                let mut mac = key.clone();
                mac.update(stamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                for sig in &sigs {
                    if mac.clone().verify_slice(sig).is_ok() {
                        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
                        if now.abs_diff(t) > tolerance.unsigned_abs() {
                            return Err(AuthError::StaleTimestamp);
                        }
                        let spend =
                            (self.kind == TimestampedKind::Cognihook).then(|| SpentSignature {
                                mac: *sig,
                                expires_at: t.saturating_add(tolerance),
                            });
                        return Ok(Verified {
                            secret: label.clone(),
                            spend,
                        });
                    }
                }
            }
        }
        Err(if seen {
            AuthError::InvalidSignature
        } else {
            AuthError::MissingSignature
        })
    }
}

/// Computes a `t=<t>,v1=<hex>` header value (for `sign`/`send`, the simulator and tests).
pub fn sign_timestamped(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` (`v1,<base64>` entries separated by spaces) over `"<id>.<ts>.<body>"`,
/// keyed with the base64 part of a `whsec_` secret.
pub struct StandardWebhooksVerifier {
    keys: Vec<(String, HmacSha256)>,
    tolerance: Duration,
}

impl fmt::Debug for StandardWebhooksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<_> = self.keys.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("StandardWebhooksVerifier")
            .field("secrets", &labels)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// A secret whose form does not suit its scheme; names the secret by label, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretFormError {
    #[error("secret {0} is not text")]
    NotText(String),
    #[error("secret {0} is not `whsec_` + base64")]
    NotWhsec(String),
    #[error("basic needs the secret as `user:password`")]
    NotUserPassword,
}

/// Decodes a `whsec_<base64>` secret into its key bytes; errors never include the value.
pub fn decode_whsec(secret: &Secret) -> Result<Vec<u8>, SecretFormError> {
    let text = std::str::from_utf8(&secret.value)
        .map_err(|_| SecretFormError::NotText(secret.label.clone()))?;
    // The prefix is optional, as in the reference libraries.
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SecretFormError::NotWhsec(secret.label.clone()))
}

impl StandardWebhooksVerifier {
    /// The labels of its secrets, in order (never the values).
    pub fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    /// `secrets` must already be decoded key bytes (see [`decode_whsec`]).
    pub fn new(secrets: &[Secret], tolerance: Duration) -> Self {
        let keys = secrets
            .iter()
            .map(|s| (s.label.clone(), new_mac(&s.value)))
            .collect();
        Self { keys, tolerance }
    }

    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, AuthError> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let (Some(id), Some(ts), Some(sigs)) = (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        ) else {
            return Err(AuthError::MissingSignature);
        };
        let t: i64 = ts.parse().map_err(|_| AuthError::InvalidSignature)?;
        let candidates: Vec<Vec<u8>> = sigs
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .collect();
        for (label, key) in &self.keys {
            let mut mac = key.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            for sig in &candidates {
                if mac.clone().verify_slice(sig).is_ok() {
                    if now.abs_diff(t) > self.tolerance.as_secs() {
                        return Err(AuthError::StaleTimestamp);
                    }
                    return Ok(Verified {
                        secret: label.clone(),
                        spend: None,
                    });
                }
            }
        }
        Err(AuthError::InvalidSignature)
    }
}

/// Computes a `webhook-signature` value (`v1,<base64>`) for key bytes.
pub fn sign_standard_webhooks(key: &[u8], id: &str, t: i64, body: &[u8]) -> String {
    let mut mac = new_mac(key);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Credentials compared as SHA-256 digests in constant time: `basic` (`user:password`) and
/// `api-key` (the key).
pub struct CredentialVerifier {
    /// (label, SHA-256 of the expected credential).
    expected: Vec<(String, [u8; 32])>,
    scheme: CredentialScheme,
    /// api-key: the header carrying the key (`X-API-Key` unless configured).
    header: HeaderName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialScheme {
    /// `Authorization: Basic base64(user:password)`.
    Basic,
    /// `X-API-Key: <key>` or `Authorization: ApiKey <key>`.
    ApiKey,
}

impl fmt::Debug for CredentialVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<_> = self.expected.iter().map(|(l, _)| l.as_str()).collect();
        f.debug_struct("CredentialVerifier")
            .field("scheme", &self.scheme)
            .field("secrets", &labels)
            .finish()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl CredentialVerifier {
    /// The labels of its secrets, in order (never the values).
    pub fn labels(&self) -> Vec<String> {
        self.expected.iter().map(|(l, _)| l.clone()).collect()
    }

    /// Basic auth for one username and any of `passwords`.
    pub fn basic(username: &str, passwords: &[Secret]) -> Self {
        let expected = passwords
            .iter()
            .map(|p| {
                let mut cred = Vec::with_capacity(username.len() + 1 + p.value.len());
                cred.extend_from_slice(username.as_bytes());
                cred.push(b':');
                cred.extend_from_slice(&p.value);
                (p.label.clone(), digest(&cred))
            })
            .collect();
        Self {
            expected,
            scheme: CredentialScheme::Basic,
            header: http::header::AUTHORIZATION,
        }
    }

    /// Any of `keys`, in `header` (unset = `X-API-Key`) or `Authorization: ApiKey`.
    pub fn api_key(keys: &[Secret], header: Option<HeaderName>) -> Self {
        let expected = keys
            .iter()
            .map(|k| (k.label.clone(), digest(&k.value)))
            .collect();
        Self {
            expected,
            scheme: CredentialScheme::ApiKey,
            header: header.unwrap_or(HeaderName::from_static(API_KEY_HEADER)),
        }
    }

    pub fn scheme(&self) -> CredentialScheme {
        self.scheme
    }

    /// The credential the request presents, if it presents one in this scheme's form.
    fn presented(&self, headers: &HeaderMap) -> Option<Vec<u8>> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let with_prefix = |prefix: &str| {
            authorization.and_then(|a| {
                let (p, rest) = a.split_once(' ')?;
                p.eq_ignore_ascii_case(prefix).then(|| rest.trim())
            })
        };
        match self.scheme {
            CredentialScheme::Basic => {
                let b64 = with_prefix("Basic")?;
                // Undecodable credentials are presented but wrong: an empty value never matches.
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default(),
                )
            }
            CredentialScheme::ApiKey => headers
                .get(&self.header)
                .map(|v| v.as_bytes().trim_ascii().to_vec())
                .or_else(|| with_prefix("ApiKey").map(|k| k.as_bytes().to_vec())),
        }
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<Verified, AuthError> {
        let presented = self.presented(headers).ok_or(AuthError::MissingSignature)?;
        matching_digest(&self.expected, &presented)
            .map(|label| Verified {
                secret: label.to_string(),
                spend: None,
            })
            .ok_or(AuthError::InvalidSignature)
    }
}

/// The label of the credential whose SHA-256 digest `presented` has, compared against every
/// one in constant time, so the time does not tell which matched (or whether one did).
pub(crate) fn matching_digest<'a>(
    expected: &'a [(String, [u8; 32])],
    presented: &[u8],
) -> Option<&'a str> {
    let got = digest(presented);
    let mut matched: Option<&str> = None;
    for (label, want) in expected {
        if bool::from(got.ct_eq(want)) && matched.is_none() {
            matched = Some(label);
        }
    }
    matched
}

/// The headers a client (`send`, `sign`, `simulate`) adds to authenticate a request in a
/// scheme. `secret` is the raw secret (`whsec_…` for standard-webhooks, `user:password` for
/// basic, the key for api-key); `id` is the `webhook-id` for standard-webhooks.
pub fn client_headers(
    scheme: crate::config::AuthScheme,
    secret: &str,
    body: &[u8],
    now: i64,
    id: &str,
) -> Result<Vec<(&'static str, String)>, SecretFormError> {
    use crate::config::AuthScheme as S;
    Ok(match scheme {
        S::HmacSha256 => vec![("x-cognigy-signature", sign_hex(secret.as_bytes(), body))],
        S::HmacSha256Timestamped => vec![(
            DEFAULT_TIMESTAMPED_HEADER,
            sign_timestamped(secret.as_bytes(), now, body),
        )],
        S::Jambonz => vec![(
            JAMBONZ_HEADER,
            sign_timestamped(secret.as_bytes(), now, body),
        )],
        S::StandardWebhooks => {
            let key = decode_whsec(&Secret {
                label: "the secret".into(),
                value: secret.as_bytes().to_vec(),
            })?;
            vec![
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", now.to_string()),
                (
                    "webhook-signature",
                    sign_standard_webhooks(&key, id, now, body),
                ),
            ]
        }
        S::Basic => {
            if !secret.contains(':') {
                return Err(SecretFormError::NotUserPassword);
            }
            vec![(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(secret)
                ),
            )]
        }
        S::ApiKey => vec![("x-api-key", secret.to_string())],
        S::Bearer | S::OAuth2 => vec![("authorization", format!("Bearer {secret}"))],
        S::None => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn verifier(secrets: &[&str]) -> HmacVerifier {
        let secrets: Vec<Secret> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| Secret {
                label: format!("s[{i}]"),
                value: s.as_bytes().to_vec(),
            })
            .collect();
        let headers: Vec<HeaderName> = DEFAULT_SIGNATURE_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        HmacVerifier::new(&secrets, &headers)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header value"));
        h
    }

    #[test]
    fn known_vector_matches() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_right_signature_in_either_header_with_or_without_prefix() {
        let v = verifier(&["k1"]);
        let body = br#"{"a":1}"#;
        let sig = sign_hex(b"k1", body);
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &sig), body),
            Ok("s[0]")
        );
        assert_eq!(
            v.verify(
                &headers("x-webhook-signature", &format!("sha256={sig}")),
                body
            ),
            Ok("s[0]")
        );
        assert_eq!(
            v.verify(&headers("x-webhook-signature", &sig.to_uppercase()), body),
            Ok("s[0]")
        );
    }

    #[test]
    fn reports_which_of_several_secrets_matched() {
        let v = verifier(&["old", "new"]);
        let body = b"{}";
        let sig = sign_hex(b"new", body);
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &sig), body),
            Ok("s[1]")
        );
    }

    #[test]
    fn rejects_missing_header() {
        let v = verifier(&["k"]);
        assert_eq!(
            v.verify(&HeaderMap::new(), b"{}"),
            Err(AuthError::MissingSignature)
        );
    }

    #[test]
    fn rejects_wrong_secret_tampered_body_and_garbage() {
        let v = verifier(&["k"]);
        let sig = sign_hex(b"other", b"{}");
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &sig), b"{}"),
            Err(AuthError::InvalidSignature)
        );
        let sig = sign_hex(b"k", b"{}");
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &sig), b"{} "),
            Err(AuthError::InvalidSignature)
        );
        for bad in ["", "zz", "sha256=", &sig[..63]] {
            assert_eq!(
                v.verify(&headers("x-cognigy-signature", bad), b"{}"),
                Err(AuthError::InvalidSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signature_over_every_single_bit_flip_is_rejected() {
        let v = verifier(&["k"]);
        let body = br#"{"sessionId":"s","userId":"u"}"#.to_vec();
        let sig = sign_hex(b"k", &body);
        let h = headers("x-cognigy-signature", &sig);
        for i in 0..body.len() * 8 {
            let mut b = body.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(v.verify(&h, &b), Err(AuthError::InvalidSignature));
        }
    }

    #[test]
    fn secret_refs_resolve_from_env_with_rotation_and_name_the_variable_when_missing() {
        let env = std::collections::BTreeMap::from([("S".to_string(), "a, b".to_string())]);
        let s = resolve_secret_ref("env:S", &env).expect("resolves");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].value, b"b");
        assert_eq!(s[1].label, "S[1]");
        let e = resolve_secret_ref("env:NOPE", &env).expect_err("missing");
        assert!(e.to_string().contains("NOPE"));
        let lit = resolve_secret_ref("plain", &env).expect("literal");
        assert_eq!(lit[0].label, "literal[0]");
        assert!(!format!("{:?}", lit[0]).contains("plain"));
    }

    fn secret(label: &str, value: &[u8]) -> Secret {
        Secret {
            label: label.to_string(),
            value: value.to_vec(),
        }
    }

    fn timestamped(kind: TimestampedKind) -> TimestampedVerifier {
        let header = match kind {
            TimestampedKind::Cognihook => DEFAULT_TIMESTAMPED_HEADER,
            TimestampedKind::Jambonz => JAMBONZ_HEADER,
        };
        TimestampedVerifier::new(
            &[secret("old", b"k-old"), secret("new", b"k-new")],
            HeaderName::from_static(header),
            DEFAULT_TOLERANCE,
            kind,
        )
    }

    const NOW: i64 = 1_764_000_000;

    #[test]
    fn timestamped_accepts_either_secret_and_spends_the_mac_until_the_tolerance_ends() {
        let v = timestamped(TimestampedKind::Cognihook);
        let body = br#"{"userId":"u","sessionId":"s"}"#;
        let h = sign_timestamped(b"k-new", NOW - 10, body);
        let ok = v
            .verify(&headers("x-cognigy-signature", &h), body, NOW)
            .expect("valid");
        assert_eq!(ok.secret, "new");
        let spend = ok.spend.expect("timestamped signatures are spent");
        assert_eq!(spend.expires_at, NOW - 10 + 300);
        assert_eq!(hex::encode(spend.mac), h.split("v1=").nth(1).expect("v1"));
    }

    #[test]
    fn timestamped_refusals_say_missing_invalid_or_stale() {
        let v = timestamped(TimestampedKind::Cognihook);
        let body = b"{}";
        assert_eq!(
            v.verify(&HeaderMap::new(), body, NOW),
            Err(AuthError::MissingSignature)
        );
        let wrong = sign_timestamped(b"nope", NOW, body);
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &wrong), body, NOW),
            Err(AuthError::InvalidSignature)
        );
        // The timestamp is covered: moving it breaks the signature.
        let good = sign_timestamped(b"k-old", NOW, body);
        let moved = good.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &moved), body, NOW),
            Err(AuthError::InvalidSignature)
        );
        for t in [NOW - 301, NOW + 301] {
            let old = sign_timestamped(b"k-old", t, body);
            assert_eq!(
                v.verify(&headers("x-cognigy-signature", &old), body, NOW),
                Err(AuthError::StaleTimestamp),
                "t = now {:+}",
                t - NOW
            );
        }
        let edge = sign_timestamped(b"k-old", NOW - 300, body);
        assert!(v
            .verify(&headers("x-cognigy-signature", &edge), body, NOW)
            .is_ok());
        for garbage in ["", "t=abc,v1=00", "v1=00", "t=1", "nonsense"] {
            assert_eq!(
                v.verify(&headers("x-cognigy-signature", garbage), body, NOW),
                Err(AuthError::InvalidSignature),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn timestamped_takes_any_of_several_v1_entries_and_ignores_other_versions() {
        let v = timestamped(TimestampedKind::Cognihook);
        let body = b"{}";
        let good = sign_timestamped(b"k-new", NOW, body);
        let sig = good.split("v1=").nth(1).expect("v1");
        let h = format!("t={NOW}, v0=abcd, v1={}, v1={sig}", "0".repeat(64));
        assert!(v
            .verify(&headers("x-cognigy-signature", &h), body, NOW)
            .is_ok());
    }

    #[test]
    fn jambonz_reads_its_own_header_and_spends_nothing() {
        let v = timestamped(TimestampedKind::Jambonz);
        let body = br#"{"call_sid":"c"}"#;
        let h = sign_timestamped(b"k-old", NOW, body);
        assert_eq!(
            v.verify(&headers("x-cognigy-signature", &h), body, NOW),
            Err(AuthError::MissingSignature)
        );
        let ok = v
            .verify(&headers("jambonz-signature", &h), body, NOW)
            .expect("valid");
        assert_eq!(ok.spend, None);
    }

    fn sw_headers(id: &str, t: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).expect("id"));
        h.insert("webhook-timestamp", HeaderValue::from_str(t).expect("t"));
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(sig).expect("sig"),
        );
        h
    }

    #[test]
    fn standard_webhooks_matches_the_published_test_vector() {
        // The test vector published with the Standard Webhooks reference libraries.
        let key =
            decode_whsec(&secret("sw", b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).expect("whsec");
        let (id, t, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign_standard_webhooks(&key, id, t, body), expected);
        let v = StandardWebhooksVerifier::new(&[secret("sw", &key)], DEFAULT_TOLERANCE);
        let h = sw_headers(id, "1614265330", &format!("v1,bm9wZQ== {expected}"));
        assert_eq!(
            v.verify(&h, body, t).map(|ok| ok.secret),
            Ok("sw".to_string())
        );
        assert_eq!(v.verify(&h, body, t + 301), Err(AuthError::StaleTimestamp));
        assert_eq!(
            v.verify(&h, br#"{"test": 2432232315}"#, t),
            Err(AuthError::InvalidSignature)
        );
        let other_id = sw_headers("msg_other", "1614265330", expected);
        assert_eq!(
            v.verify(&other_id, body, t),
            Err(AuthError::InvalidSignature)
        );
        let mut missing = h.clone();
        missing.remove("webhook-id");
        assert_eq!(
            v.verify(&missing, body, t),
            Err(AuthError::MissingSignature)
        );
        assert!(decode_whsec(&secret("bad", b"whsec_***")).is_err());
    }

    fn basic_header(user: &str, pass: &str) -> HeaderMap {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        headers("authorization", &format!("Basic {b64}"))
    }

    #[test]
    fn basic_checks_user_and_any_password() {
        let v =
            CredentialVerifier::basic("cognigy", &[secret("p0", b"pw-a"), secret("p1", b"pw-b")]);
        assert_eq!(
            v.verify(&basic_header("cognigy", "pw-b"))
                .map(|ok| ok.secret),
            Ok("p1".to_string())
        );
        assert_eq!(
            v.verify(&basic_header("someone", "pw-a")),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            v.verify(&basic_header("cognigy", "pw-c")),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            v.verify(&headers("authorization", "Basic !!!")),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            v.verify(&headers("authorization", "Bearer x")),
            Err(AuthError::MissingSignature)
        );
        assert_eq!(
            v.verify(&HeaderMap::new()),
            Err(AuthError::MissingSignature)
        );
    }

    #[test]
    fn api_key_in_either_header_form() {
        let v = CredentialVerifier::api_key(&[secret("k0", b"key-1")], None);
        assert!(v.verify(&headers("x-api-key", "key-1")).is_ok());
        assert!(v.verify(&headers("authorization", "ApiKey key-1")).is_ok());
        assert!(v.verify(&headers("authorization", "apikey  key-1")).is_ok());
        assert_eq!(
            v.verify(&headers("x-api-key", "key-2")),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            v.verify(&headers("x-api-key", "key-1x")),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            v.verify(&headers("authorization", "Basic a2V5LTE=")),
            Err(AuthError::MissingSignature)
        );
    }

    #[test]
    fn what_clients_send_verifies_in_every_scheme() {
        use crate::config::AuthScheme as S;
        let body = br#"{"userId":"u","sessionId":"s"}"#;
        let to_map = |hs: Vec<(&'static str, String)>| {
            let mut m = HeaderMap::new();
            for (k, v) in hs {
                m.insert(k, HeaderValue::from_str(&v).expect("value"));
            }
            m
        };
        let sign = |scheme, secret: &str| {
            to_map(client_headers(scheme, secret, body, NOW, "msg_x").expect("headers"))
        };
        let hmac = HmacVerifier::new(
            &[secret("h", b"k")],
            &[HeaderName::from_static("x-cognigy-signature")],
        );
        assert!(hmac.verify(&sign(S::HmacSha256, "k"), body).is_ok());
        let ts = TimestampedVerifier::new(
            &[secret("t", b"k")],
            HeaderName::from_static(DEFAULT_TIMESTAMPED_HEADER),
            DEFAULT_TOLERANCE,
            TimestampedKind::Cognihook,
        );
        assert!(ts
            .verify(&sign(S::HmacSha256Timestamped, "k"), body, NOW)
            .is_ok());
        let jz = TimestampedVerifier::new(
            &[secret("j", b"k")],
            HeaderName::from_static(JAMBONZ_HEADER),
            DEFAULT_TOLERANCE,
            TimestampedKind::Jambonz,
        );
        assert!(jz.verify(&sign(S::Jambonz, "k"), body, NOW).is_ok());
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = decode_whsec(&secret("w", whsec.as_bytes())).expect("key");
        let sw = StandardWebhooksVerifier::new(&[secret("w", &key)], DEFAULT_TOLERANCE);
        assert!(sw
            .verify(&sign(S::StandardWebhooks, whsec), body, NOW)
            .is_ok());
        let basic = CredentialVerifier::basic("user", &[secret("b", b"pw")]);
        assert!(basic.verify(&sign(S::Basic, "user:pw")).is_ok());
        assert!(client_headers(S::Basic, "no-colon", body, NOW, "x").is_err());
        let key = CredentialVerifier::api_key(&[secret("a", b"k")], None);
        assert!(key.verify(&sign(S::ApiKey, "k")).is_ok());
        assert!(client_headers(S::None, "", body, NOW, "x")
            .expect("none")
            .is_empty());
    }
}
