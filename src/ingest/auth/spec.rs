//! A route's `auth` table checked for its scheme: every key the scheme needs, none it does
//! not, header names that parse. The verifiers are built from an [`AuthSpec`] and check
//! nothing again.

use std::time::Duration;

use crate::config::{AuthConfig, AuthScheme, JwtConfig};
use crate::secret::SecretRef;

/// A route's `auth` table checked for its scheme (see [`AuthSpec::check`]): each scheme
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
    /// `api-key`: references of the accepted keys, in `header` (unset = `X-API-Key`) or
    /// `Authorization: ApiKey`.
    ApiKey {
        keys: Vec<SecretRef>,
        header: Option<http::HeaderName>,
    },
    /// `bearer` with static tokens.
    Bearer { tokens: Vec<SecretRef> },
    /// `bearer` with JWTs.
    Jwt(JwtConfig),
    /// `oauth2`: tokens from cognihook's own `/oauth/token`.
    OAuth2,
}

impl AuthSpec {
    /// Checks `table` for its scheme and converts it into what the route's verifier is built
    /// from, or returns every problem (named under `at`). The one place an `auth` table's
    /// keys are checked (called when the route is built, `ingest::Routes::build`).
    pub fn check(
        table: &AuthConfig,
        at: &str,
        allow_unauthenticated: bool,
    ) -> Result<AuthSpec, Vec<String>> {
        let p = problems(table, at, allow_unauthenticated);
        if !p.is_empty() {
            return Err(p);
        }
        let secrets = table.secrets.clone();
        let header = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).ok();
        Ok(match table.scheme {
            AuthScheme::None => AuthSpec::None,
            AuthScheme::HmacSha256 => AuthSpec::Hmac {
                secrets,
                headers: table
                    .headers
                    .as_ref()
                    .map(|h| h.iter().filter_map(|n| header(n)).collect()),
            },
            AuthScheme::HmacSha256Timestamped => AuthSpec::Timestamped {
                secrets,
                header: table.header.as_deref().and_then(header),
                tolerance: table.tolerance,
            },
            AuthScheme::Jambonz => AuthSpec::Jambonz {
                secrets,
                tolerance: table.tolerance,
            },
            AuthScheme::StandardWebhooks => AuthSpec::StandardWebhooks {
                secrets,
                tolerance: table.tolerance,
            },
            AuthScheme::Basic => AuthSpec::Basic {
                username: table.username.clone().unwrap_or_default(),
                password: table.password.clone().unwrap_or_else(|| "".into()),
            },
            AuthScheme::ApiKey => AuthSpec::ApiKey {
                keys: table.keys.clone(),
                header: table.header.as_deref().and_then(header),
            },
            AuthScheme::Bearer => match &table.jwt {
                Some(jwt) => AuthSpec::Jwt(jwt.clone()),
                None => AuthSpec::Bearer {
                    tokens: table.tokens.clone(),
                },
            },
            AuthScheme::OAuth2 => AuthSpec::OAuth2,
        })
    }
}

/// Problems with the keys of this table for its scheme.
fn problems(table: &AuthConfig, at: &str, allow_unauthenticated: bool) -> Vec<String> {
    let scheme = table.scheme.name();
    let mut p = Vec::new();
    let needs_secrets = matches!(
        table.scheme,
        AuthScheme::HmacSha256
            | AuthScheme::HmacSha256Timestamped
            | AuthScheme::StandardWebhooks
            | AuthScheme::Jambonz
    );
    if needs_secrets && table.secrets.is_empty() {
        p.push(format!("{at}: auth scheme {scheme} needs `secrets`"));
    }
    let mut not_for = |key: &str, present: bool| {
        if present {
            p.push(format!(
                "{at}: auth.{key} does not apply to scheme {scheme}"
            ));
        }
    };
    not_for("secrets", !needs_secrets && !table.secrets.is_empty());
    not_for(
        "headers",
        table.scheme != AuthScheme::HmacSha256 && table.headers.is_some(),
    );
    not_for(
        "header",
        !matches!(
            table.scheme,
            AuthScheme::HmacSha256Timestamped | AuthScheme::ApiKey
        ) && table.header.is_some(),
    );
    not_for(
        "tokens",
        table.scheme != AuthScheme::Bearer && !table.tokens.is_empty(),
    );
    not_for(
        "jwt",
        table.scheme != AuthScheme::Bearer && table.jwt.is_some(),
    );
    not_for(
        "tolerance",
        !matches!(
            table.scheme,
            AuthScheme::HmacSha256Timestamped | AuthScheme::StandardWebhooks | AuthScheme::Jambonz
        ) && table.tolerance.is_some(),
    );
    not_for(
        "username",
        table.scheme != AuthScheme::Basic && table.username.is_some(),
    );
    not_for(
        "password",
        table.scheme != AuthScheme::Basic && table.password.is_some(),
    );
    not_for(
        "keys",
        table.scheme != AuthScheme::ApiKey && !table.keys.is_empty(),
    );
    let header_ok = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).is_ok();
    if let Some(h) = &table.headers {
        if h.is_empty() {
            p.push(format!("{at}: auth.headers must not be empty"));
        }
        for name in h.iter().filter(|n| !header_ok(n)) {
            p.push(format!("{at}: auth.headers: `{name}` is not a header name"));
        }
    }
    if let Some(name) = table.header.as_deref().filter(|n| !header_ok(n)) {
        p.push(format!("{at}: auth.header: `{name}` is not a header name"));
    }
    if table.tolerance.is_some_and(|t| t.is_zero()) {
        p.push(format!("{at}: auth.tolerance must be greater than 0"));
    }
    match table.scheme {
        AuthScheme::Basic => {
            if table
                .username
                .as_deref()
                .is_none_or(|u| u.is_empty() || u.contains(':'))
            {
                p.push(format!(
                    "{at}: auth scheme basic needs a `username` (not empty, no `:`)"
                ));
            }
            if table.password.is_none() {
                p.push(format!("{at}: auth scheme basic needs a `password`"));
            }
        }
        AuthScheme::ApiKey if table.keys.is_empty() => {
            p.push(format!("{at}: auth scheme api-key needs `keys`"));
        }
        AuthScheme::Bearer => match &table.jwt {
            None if table.tokens.is_empty() => p.push(format!(
                "{at}: auth scheme bearer needs `tokens` (static tokens) or `jwt` (JWTs)"
            )),
            Some(_) if !table.tokens.is_empty() => p.push(format!(
                "{at}: auth scheme bearer takes `tokens` or `jwt`, not both"
            )),
            Some(jwt) => {
                if jwt.jwks_url.is_none() && jwt.public_keys.is_empty() {
                    p.push(format!(
                        "{at}: auth.jwt needs `jwks_url` or `public_keys` (PEM files)"
                    ));
                }
                if jwt.issuer.trim().is_empty() {
                    p.push(format!("{at}: auth.jwt.issuer must not be empty"));
                }
                if jwt.audience.trim().is_empty() {
                    p.push(format!("{at}: auth.jwt.audience must not be empty"));
                }
            }
            None => {}
        },
        AuthScheme::None if !allow_unauthenticated => {
            p.push(format!(
                "{at}: auth scheme `none` requires allow_unauthenticated = true on the route"
            ));
        }
        _ => {}
    }
    p
}
