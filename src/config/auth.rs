//! A route's `auth` table (SPEC §4): the schemes and their keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::opt_duration_str;
use crate::secret::SecretRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthScheme {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha256-timestamped")]
    HmacSha256Timestamped,
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    #[serde(rename = "jambonz")]
    Jambonz,
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "api-key")]
    ApiKey,
    /// `Authorization: Bearer`: static tokens, or JWTs checked against public keys.
    #[serde(rename = "bearer")]
    Bearer,
    /// `Authorization: Bearer` with a token from cognihook's own `POST /oauth/token`.
    #[serde(rename = "oauth2")]
    OAuth2,
    #[serde(rename = "none")]
    None,
}

impl AuthScheme {
    pub fn name(self) -> &'static str {
        match self {
            AuthScheme::HmacSha256 => "hmac-sha256",
            AuthScheme::HmacSha256Timestamped => "hmac-sha256-timestamped",
            AuthScheme::StandardWebhooks => "standard-webhooks",
            AuthScheme::Jambonz => "jambonz",
            AuthScheme::Basic => "basic",
            AuthScheme::ApiKey => "api-key",
            AuthScheme::Bearer => "bearer",
            AuthScheme::OAuth2 => "oauth2",
            AuthScheme::None => "none",
        }
    }
}

/// A route's `auth` table (SPEC §4). Which keys apply depends on the scheme; `validate`
/// names any that do not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    pub scheme: AuthScheme,
    /// Secret references: `env:NAME` (comma-separated values allowed), `file:PATH` (one per
    /// line) or a literal. hmac-sha256, hmac-sha256-timestamped, standard-webhooks, jambonz.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    /// Headers that may carry the signature (hmac-sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// The header carrying `t=…,v1=…` (hmac-sha256-timestamped; default X-Cognigy-Signature),
    /// or the key (api-key; default `X-API-Key`, and `Authorization: ApiKey` always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// How far a signed timestamp may be from now (timestamped schemes; default 5m).
    #[serde(
        default,
        with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub tolerance: Option<Duration>,
    /// basic: the user name Cognigy sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// basic: a secret reference (several values allowed during rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// api-key: secret references of the accepted keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SecretRef>,
    /// bearer: secret references of the accepted static tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<SecretRef>,
    /// bearer: verify JWTs instead of static tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// `auth.jwt` of a `bearer` route: where the public keys come from and what the claims must
/// say. Tokens are accepted signed with RS256, ES256 or EdDSA only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The identity provider's JWKS document; fetched on first use and again when a token
    /// names a key id it does not hold (at most once per `jwks_min_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM files of public keys (RSA, EC P-256 or Ed25519), instead of or beside the JWKS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<std::path::PathBuf>,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// An `aud` a token must carry.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "super::duration_str")]
    pub leeway: Duration,
    /// Least time between two JWKS fetches caused by unknown key ids.
    #[serde(default = "default_jwks_min_interval", with = "super::duration_str")]
    pub jwks_min_interval: Duration,
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_jwks_min_interval() -> Duration {
    Duration::from_secs(30)
}

/// `[oauth2]`: cognihook's own client-credentials token endpoint (`POST /oauth/token`), on
/// when at least one client is configured. Tokens are HS256 JWTs signed with `signing_key`,
/// so every replica with the same key accepts them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Secret reference of the signing key (at least 32 bytes; several values during
    /// rotation: the first signs, all verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SecretRef>,
    /// Lifetime of an issued token.
    #[serde(with = "super::duration_str")]
    pub token_ttl: Duration,
    /// Failed client authentications allowed per client id; past it the endpoint answers 429
    /// until the bucket refills, even to the right secret.
    pub failed_auth_limit: crate::rate::RateLimit,
    #[serde(default, rename = "client", skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<OAuth2Client>,
}

impl Default for OAuth2Config {
    /// From the built-in defaults (`defaults.toml`).
    fn default() -> Self {
        super::Config::builtin().oauth2.clone()
    }
}

/// One `[[oauth2.client]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Client {
    pub id: String,
    /// Secret reference of the client secret (several values during rotation).
    pub secret: SecretRef,
    /// Scopes the client may ask for (all of them when it asks for none).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Routes (by name, `scheme = "oauth2"`) its tokens are accepted on.
    pub routes: Vec<String>,
}

impl AuthConfig {
    /// An `auth` table with only the scheme and secrets set.
    pub fn with_secrets(scheme: AuthScheme, secrets: Vec<String>) -> AuthConfig {
        AuthConfig {
            scheme,
            secrets: secrets.into_iter().map(SecretRef::from).collect(),
            headers: None,
            header: None,
            tolerance: None,
            username: None,
            password: None,
            keys: Vec::new(),
            tokens: Vec::new(),
            jwt: None,
        }
    }
}
