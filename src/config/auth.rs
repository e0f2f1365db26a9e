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

    /// Checks this table for its scheme and converts it into what the route's verifier is
    /// built from, or returns every problem (named under `at`). The one place an `auth`
    /// table's keys are checked (called when the route is built, `ingest::Routes::build`).
    pub fn check(&self, at: &str, allow_unauthenticated: bool) -> Result<AuthSpec, Vec<String>> {
        let p = self.problems(at, allow_unauthenticated);
        if !p.is_empty() {
            return Err(p);
        }
        let secrets = self.secrets.clone();
        let header = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).ok();
        Ok(match self.scheme {
            AuthScheme::None => AuthSpec::None,
            AuthScheme::HmacSha256 => AuthSpec::Hmac {
                secrets,
                headers: self
                    .headers
                    .as_ref()
                    .map(|h| h.iter().filter_map(|n| header(n)).collect()),
            },
            AuthScheme::HmacSha256Timestamped => AuthSpec::Timestamped {
                secrets,
                header: self.header.as_deref().and_then(header),
                tolerance: self.tolerance,
            },
            AuthScheme::Jambonz => AuthSpec::Jambonz {
                secrets,
                tolerance: self.tolerance,
            },
            AuthScheme::StandardWebhooks => AuthSpec::StandardWebhooks {
                secrets,
                tolerance: self.tolerance,
            },
            AuthScheme::Basic => AuthSpec::Basic {
                username: self.username.clone().unwrap_or_default(),
                password: self.password.clone().unwrap_or_else(|| "".into()),
            },
            AuthScheme::ApiKey => AuthSpec::ApiKey {
                keys: self.keys.clone(),
            },
        })
    }

    /// Problems with the keys of this table for its scheme.
    fn problems(&self, at: &str, allow_unauthenticated: bool) -> Vec<String> {
        let scheme = self.scheme.name();
        let mut p = Vec::new();
        let needs_secrets = matches!(
            self.scheme,
            AuthScheme::HmacSha256
                | AuthScheme::HmacSha256Timestamped
                | AuthScheme::StandardWebhooks
                | AuthScheme::Jambonz
        );
        if needs_secrets && self.secrets.is_empty() {
            p.push(format!("{at}: auth scheme {scheme} needs `secrets`"));
        }
        let mut not_for = |key: &str, present: bool| {
            if present {
                p.push(format!(
                    "{at}: auth.{key} does not apply to scheme {scheme}"
                ));
            }
        };
        not_for("secrets", !needs_secrets && !self.secrets.is_empty());
        not_for(
            "headers",
            self.scheme != AuthScheme::HmacSha256 && self.headers.is_some(),
        );
        not_for(
            "header",
            self.scheme != AuthScheme::HmacSha256Timestamped && self.header.is_some(),
        );
        not_for(
            "tolerance",
            !matches!(
                self.scheme,
                AuthScheme::HmacSha256Timestamped
                    | AuthScheme::StandardWebhooks
                    | AuthScheme::Jambonz
            ) && self.tolerance.is_some(),
        );
        not_for(
            "username",
            self.scheme != AuthScheme::Basic && self.username.is_some(),
        );
        not_for(
            "password",
            self.scheme != AuthScheme::Basic && self.password.is_some(),
        );
        not_for(
            "keys",
            self.scheme != AuthScheme::ApiKey && !self.keys.is_empty(),
        );
        let header_ok = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        if let Some(h) = &self.headers {
            if h.is_empty() {
                p.push(format!("{at}: auth.headers must not be empty"));
            }
            for name in h.iter().filter(|n| !header_ok(n)) {
                p.push(format!("{at}: auth.headers: `{name}` is not a header name"));
            }
        }
        if let Some(name) = self.header.as_deref().filter(|n| !header_ok(n)) {
            p.push(format!("{at}: auth.header: `{name}` is not a header name"));
        }
        if self.tolerance.is_some_and(|t| t.is_zero()) {
            p.push(format!("{at}: auth.tolerance must be greater than 0"));
        }
        match self.scheme {
            AuthScheme::Basic => {
                if self
                    .username
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || u.contains(':'))
                {
                    p.push(format!(
                        "{at}: auth scheme basic needs a `username` (not empty, no `:`)"
                    ));
                }
                if self.password.is_none() {
                    p.push(format!("{at}: auth scheme basic needs a `password`"));
                }
            }
            AuthScheme::ApiKey if self.keys.is_empty() => {
                p.push(format!("{at}: auth scheme api-key needs `keys`"));
            }
            AuthScheme::None if !allow_unauthenticated => {
                p.push(format!(
                    "{at}: auth scheme `none` requires allow_unauthenticated = true on the route"
                ));
            }
            _ => {}
        }
        p
    }
}

/// A route's `auth` table checked for its scheme (see [`AuthConfig::check`]): each scheme
/// with exactly its settings. Secrets are still references (`env:`, `file:` or a literal),
/// resolved when the verifier is built.
#[derive(Debug, Clone)]
pub enum AuthSpec {
    /// `none` (the route allows unauthenticated requests).
    None,
    /// `hmac-sha256`: the signature in one of `headers` (unset = the defaults).
    Hmac {
        secrets: Vec<SecretRef>,
        headers: Option<Vec<http::HeaderName>>,
    },
    /// `hmac-sha256-timestamped`: `t=…,v1=…` in `header` (unset = the default).
    Timestamped {
        secrets: Vec<SecretRef>,
        header: Option<http::HeaderName>,
        tolerance: Option<Duration>,
    },
    /// `jambonz`: jambonz's signature header.
    Jambonz {
        secrets: Vec<SecretRef>,
        tolerance: Option<Duration>,
    },
    /// `standard-webhooks`: `whsec_` keys.
    StandardWebhooks {
        secrets: Vec<SecretRef>,
        tolerance: Option<Duration>,
    },
    /// `basic`: one user name; the password reference may hold several (rotation).
    Basic {
        username: String,
        password: SecretRef,
    },
    /// `api-key`: references of the accepted keys.
    ApiKey { keys: Vec<SecretRef> },
}
