//! Authentication schemes (SPEC §4), checked on the raw body bytes before any parsing.
//!
//! Invariants: comparisons are constant-time (`Mac::verify_slice`); the expected signature is
//! never computed into a value that could be returned or logged, only compared; secrets live in
//! [`Secret`], whose `Debug` prints nothing of the value.

use std::fmt;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The headers that may carry an `hmac-sha256` signature when a route names none.
pub const DEFAULT_SIGNATURE_HEADERS: [&str; 2] = ["x-cognigy-signature", "x-webhook-signature"];

/// Why a request failed authentication; each maps to a SPEC §5 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing signature header")]
    MissingSignature,
    #[error("signature does not match")]
    InvalidSignature,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::MissingSignature => "missing_signature",
            AuthError::InvalidSignature => "invalid_signature",
        }
    }
}

/// A secret value with a printable label saying where it came from (never the value).
#[derive(Clone)]
pub struct Secret {
    pub label: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, ********)", self.label)
    }
}

/// Resolves a secret reference (`env:NAME`, `file:PATH` or a literal) into one or more secrets.
///
/// `env:` values are split on commas (several secrets during rotation); `file:` contents are
/// split into lines. Errors name the variable or file, never a value.
pub fn resolve_secret_ref(
    reference: &str,
    env: &dyn crate::config::EnvSource,
) -> Result<Vec<Secret>, String> {
    let (source, values): (String, Vec<String>) = if let Some(name) = reference.strip_prefix("env:")
    {
        let v = env
            .get(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        (
            name.to_string(),
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else if let Some(path) = reference.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("secret file {path} cannot be read: {e}"))?;
        (
            format!("file:{path}"),
            text.lines()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else {
        ("literal".to_string(), vec![reference.to_string()])
    };
    if values.is_empty() {
        return Err(format!("secret {source} is empty"));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Secret {
            label: format!("{source}[{i}]"),
            value: v.into_bytes(),
        })
        .collect())
}

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
        assert!(e.contains("NOPE"));
        let lit = resolve_secret_ref("plain", &env).expect("literal");
        assert_eq!(lit[0].label, "literal[0]");
        assert!(!format!("{:?}", lit[0]).contains("plain"));
    }
}
