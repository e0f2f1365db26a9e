//! `POST /oauth/token`: the HTTP side of cognihook's own OAuth2 token endpoint (the grant
//! itself is `ingest::auth::oauth2`). Form-encoded request, JSON answer, never cached
//! (RFC 6749 §5.1); refusals as §5.2 names them.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;

use super::error::json_response;
use crate::ingest::auth::oauth2::{TokenAnswer, TokenError, TokenIssuer};

/// Largest token request read (a client-credentials form is a few hundred bytes).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A refused token request (RFC 6749 §5.2).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TokenRefusal {
    /// `invalid_request`, `invalid_client` (also with 429), `unsupported_grant_type` or
    /// `invalid_scope`.
    pub error: String,
    pub error_description: String,
}

/// A client-credentials token request (RFC 6749 §4.4.2); the client authenticates with HTTP
/// Basic or with `client_id` and `client_secret` in the form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TokenRequest {
    /// `client_credentials`.
    #[schema(pattern = "^client_credentials$", example = "client_credentials")]
    grant_type: String,
    /// Space-separated scopes (a subset of the client's; unset = all of them).
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[utoipa::path(post, path = "/oauth/token", tag = "oauth2",
    summary = "Issue an access token for `oauth2` routes (client credentials)",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A token (never cached)", body = TokenAnswer),
        (status = 400, description = "A malformed or refused request", body = TokenRefusal),
        (status = 401, description = "Client authentication failed", body = TokenRefusal,
            headers(("WWW-Authenticate" = String))),
        (status = 429, description = "Too many failed authentications of this client", body = TokenRefusal,
            headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
pub async fn token(issuer: Arc<TokenIssuer>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return refusal(&TokenError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let Some(form) = read_bounded(body).await else {
        return refusal(&TokenError::InvalidRequest(
            "the body is larger than 16 KiB or was not received",
        ));
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let unix = crate::now_millis() / 1000;
    match issuer.issue(authorization, &form, Instant::now(), unix) {
        Ok(answer) => {
            metrics::counter!(crate::telemetry::metrics::OAUTH2_TOKENS_TOTAL, "outcome" => "issued")
                .increment(1);
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            no_store(json_response(StatusCode::OK, Bytes::from(body), None))
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::metrics::OAUTH2_TOKENS_TOTAL, "outcome" => e.code())
                .increment(1);
            tracing::info!(error = e.code(), why = %e.description(), "token request refused");
            refusal(&e)
        }
    }
}

async fn read_bounded(body: Body) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_FORM_BYTES);
    limited.collect().await.ok().map(|c| c.to_bytes())
}

fn refusal(e: &TokenError) -> Response {
    let (status, retry_after) = match e {
        TokenError::InvalidClient => (StatusCode::UNAUTHORIZED, None),
        TokenError::TooManyAttempts(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            Some(u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX)),
        ),
        _ => (StatusCode::BAD_REQUEST, None),
    };
    let body = TokenRefusal {
        error: e.code().to_string(),
        error_description: e.description().to_string(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = json_response(status, Bytes::from(body), retry_after);
    if matches!(e, TokenError::InvalidClient) {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="cognihook", charset="UTF-8""#),
        );
    }
    no_store(r)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}
