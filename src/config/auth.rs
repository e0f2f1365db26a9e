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
    /// The header carrying `t=…,v1=…` (hmac-sha256-timestamped; default X-Cognigy-Signature).
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
        }
    }
}
