//! cognihook's own OAuth2 token endpoint (`POST /oauth/token`): the client-credentials grant
//! (RFC 6749 §4.4), so the OAuth2 option of Cognigy's HTTP Request node works against
//! cognihook alone. Tokens are HS256 JWTs signed with `[oauth2] signing_key` (any replica with
//! the key verifies them, see `bearer::JwtVerifier::own`), audience the routes the client may
//! call.
//!
//! Invariants: client secrets are compared as SHA-256 digests in constant time, against every
//! configured secret; a client id whose failed authentications exceed `failed_auth_limit` is
//! refused (429) until its bucket refills, even with the right secret, and unknown ids share
//! one bucket, so memory is bounded by the configured clients. Pure: the clock is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::bearer::OWN_ISSUER;
use crate::config::OAuth2Config;
use crate::rate::{Bucket, RateLimit};
use crate::secret::{EnvSource, Secret};

/// A token request refused, as RFC 6749 §5.2 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed: a missing or repeated parameter, two client authentications, a bad body.
    InvalidRequest(&'static str),
    /// Unknown client, wrong secret or no client authentication (401 with a Basic challenge).
    InvalidClient,
    UnsupportedGrantType,
    /// A scope the client may not ask for.
    InvalidScope,
    /// Too many failed authentications of this client id; retry after this long.
    TooManyAttempts(Duration),
}

impl TokenError {
    /// The `error` value of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::InvalidClient | TokenError::TooManyAttempts(_) => "invalid_client",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::InvalidScope => "invalid_scope",
        }
    }

    /// The `error_description` of the answer.
    pub fn description(&self) -> String {
        match self {
            TokenError::InvalidRequest(why) => (*why).to_string(),
            TokenError::InvalidClient => "client authentication failed".into(),
            TokenError::UnsupportedGrantType => {
                "only grant_type=client_credentials is supported".into()
            }
            TokenError::InvalidScope => "a requested scope is not granted to this client".into(),
            TokenError::TooManyAttempts(wait) => format!(
                "too many failed authentications of this client; retry in {} s",
                wait.as_secs().max(1)
            ),
        }
    }
}

/// An issued token, as the endpoint answers it (RFC 6749 §5.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'static str,
    sub: &'a str,
    aud: &'a [String],
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
}

struct Client {
    secrets: Vec<[u8; 32]>,
    scopes: Vec<String>,
    routes: Vec<String>,
}

/// The token endpoint's state: clients, signing key, failure buckets.
pub struct TokenIssuer {
    clients: HashMap<String, Client>,
    key: EncodingKey,
    ttl: Duration,
    limit: RateLimit,
    /// Failure buckets by client id (`""` for every unknown id).
    failures: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.clients.keys().collect();
        ids.sort();
        f.debug_struct("TokenIssuer")
            .field("clients", &ids)
            .finish()
    }
}

impl TokenIssuer {
    /// The issuer of `[oauth2]`, or `None` when no client is configured; every secret that
    /// does not resolve is a problem.
    pub fn build(
        config: &OAuth2Config,
        env: &dyn EnvSource,
    ) -> Result<Option<TokenIssuer>, Vec<String>> {
        if config.clients.is_empty() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let signing = signing_keys(config, env).unwrap_or_else(|mut p| {
            problems.append(&mut p);
            Vec::new()
        });
        let mut clients = HashMap::new();
        for c in &config.clients {
            match c.secret.resolve(env) {
                Ok(secrets) => {
                    clients.insert(
                        c.id.clone(),
                        Client {
                            secrets: secrets
                                .iter()
                                .map(|s| Sha256::digest(&s.value).into())
                                .collect(),
                            scopes: c.scopes.clone(),
                            routes: c.routes.clone(),
                        },
                    );
                }
                Err(e) => problems.push(format!("oauth2.client `{}`: secret: {e}", c.id)),
            }
        }
        problems.dedup();
        match signing.first() {
            Some(key) if problems.is_empty() => Ok(Some(TokenIssuer {
                clients,
                key: EncodingKey::from_secret(&key.value),
                ttl: config.token_ttl,
                limit: config.failed_auth_limit,
                failures: Mutex::new(HashMap::new()),
            })),
            _ => Err(problems),
        }
    }

    /// Answers a token request: `authorization` is the request's `Authorization` header,
    /// `form` its `application/x-www-form-urlencoded` body; `now` for the failure buckets,
    /// `unix` (seconds) for the token's times.
    pub fn issue(
        &self,
        authorization: Option<&str>,
        form: &[u8],
        now: Instant,
        unix: i64,
    ) -> Result<TokenAnswer, TokenError> {
        let mut params: HashMap<String, String> = HashMap::new();
        for (k, v) in form_urlencoded::parse(form) {
            if params.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err(TokenError::InvalidRequest(
                    "a parameter is given more than once",
                ));
            }
        }
        match params.get("grant_type").map(String::as_str) {
            None => return Err(TokenError::InvalidRequest("grant_type is missing")),
            Some("client_credentials") => {}
            Some(_) => return Err(TokenError::UnsupportedGrantType),
        }
        let basic = basic_credentials(authorization)?;
        let in_form = params.contains_key("client_secret");
        let (id, secret) = match basic {
            Some(_) if in_form => {
                return Err(TokenError::InvalidRequest(
                    "use one client authentication: HTTP Basic or form fields, not both",
                ))
            }
            Some((id, secret)) => (id, secret),
            None => match (params.get("client_id"), params.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return Err(TokenError::InvalidClient),
            },
        };
        let client = self.authenticate(&id, &secret, now)?;
        let scope = match params.get("scope") {
            None => client.scopes.join(" "),
            Some(asked) => {
                let asked: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
                if asked
                    .iter()
                    .any(|s| !client.scopes.iter().any(|have| have == s))
                {
                    return Err(TokenError::InvalidScope);
                }
                asked.join(" ")
            }
        };
        let ttl = self.ttl.as_secs().max(1);
        let claims = Claims {
            iss: OWN_ISSUER,
            sub: &id,
            aud: &client.routes,
            iat: unix,
            exp: unix + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            jti: ulid::Ulid::new().to_string(),
            scope: &scope,
        };
        let access_token = jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .map_err(|_| TokenError::InvalidRequest("the token could not be signed"))?;
        Ok(TokenAnswer {
            access_token,
            token_type: "Bearer",
            expires_in: ttl,
            scope,
        })
    }

    fn authenticate(&self, id: &str, secret: &str, now: Instant) -> Result<&Client, TokenError> {
        let client = self.clients.get(id);
        let bucket_key = if client.is_some() { id } else { "" };
        let mut failures = self.failures.lock();
        if let Some(b) = failures.get_mut(bucket_key) {
            if b.available(now) == 0 {
                return Err(TokenError::TooManyAttempts(b.wait(now)));
            }
        }
        let got: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let matched = client.is_some_and(|c| {
            c.secrets
                .iter()
                .fold(false, |m, want| m | bool::from(got.ct_eq(want)))
        });
        match client {
            Some(c) if matched => Ok(c),
            _ => {
                failures
                    .entry(bucket_key.to_string())
                    .or_insert_with(|| Bucket::new(self.limit, now))
                    .take(1, now);
                // Full buckets are forgotten, so the map holds only recent failures.
                failures.retain(|_, b| !b.is_full(now));
                Err(TokenError::InvalidClient)
            }
        }
    }
}

/// The keys that sign (the first) and verify (all) cognihook's tokens: `signing_key`'s values,
/// or, when it is unset, one key derived from every client's id and secrets (HMAC-SHA256), so
/// replicas with the same configuration agree without a further setting. Changing a client
/// secret then ends the tokens issued before; a `signing_key` avoids that.
pub fn signing_keys(
    config: &OAuth2Config,
    env: &dyn EnvSource,
) -> Result<Vec<Secret>, Vec<String>> {
    if let Some(reference) = &config.signing_key {
        let keys = reference
            .resolve(env)
            .map_err(|e| vec![format!("oauth2.signing_key: {e}")])?;
        if keys.iter().any(|k| k.value.len() < 32) {
            return Err(vec![
                "oauth2.signing_key: each key must be at least 32 bytes".into(),
            ]);
        }
        return Ok(keys);
    }
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"cognihook oauth2 signing key v1")
        .expect("HMAC takes any key length");
    let mut clients: Vec<_> = config.clients.iter().collect();
    clients.sort_by(|a, b| a.id.cmp(&b.id));
    let mut problems = Vec::new();
    for c in clients {
        match c.secret.resolve(env) {
            Ok(secrets) => {
                for part in std::iter::once(c.id.as_bytes().to_vec())
                    .chain(secrets.into_iter().map(|s| s.value))
                {
                    mac.update(&(part.len() as u64).to_be_bytes());
                    mac.update(&part);
                }
            }
            Err(e) => problems.push(format!("oauth2.client `{}`: secret: {e}", c.id)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(vec![Secret {
        label: "derived".into(),
        value: mac.finalize().into_bytes().to_vec(),
    }])
}

/// The client id and secret of an `Authorization: Basic` header (each form-urlencoded, RFC
/// 6749 §2.3.1), if the request carries one.
fn basic_credentials(authorization: Option<&str>) -> Result<Option<(String, String)>, TokenError> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let Some((scheme, b64)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let bad = || TokenError::InvalidClient;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(secret: &str) -> OAuth2Config {
        let text =
            format!("[[oauth2.client]]\nid = \"c\"\nsecret = \"{secret}\"\nroutes = [\"r\"]\n");
        crate::config::Config::from_toml(&text)
            .expect("parses")
            .oauth2
    }

    #[test]
    fn the_derived_key_is_the_same_for_the_same_clients_and_changes_with_a_secret() {
        let env = BTreeMap::<String, String>::new();
        let a = signing_keys(&config("s1"), &env).expect("derived");
        let again = signing_keys(&config("s1"), &env).expect("derived");
        let other = signing_keys(&config("s2"), &env).expect("derived");
        assert_eq!(a[0].value, again[0].value, "replicas agree");
        assert_ne!(a[0].value, other[0].value);
        assert_eq!(a[0].value.len(), 32);
    }
}
