//! The HTTP error type and its mapping to SPEC §5: status, code and a JSON body on every path.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use crate::ingest::payload::FieldError;

/// An error answer. `message` is safe to show the caller: it never holds a secret or an
/// expected signature.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub errors: Vec<FieldError>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(1);
        e
    }

    /// 429: the route's `rate_limit` is spent; `retry_after` seconds until it is not.
    pub fn rate_limited(retry_after: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this route's rate limit is reached; retry after the time in Retry-After",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 500 with an opaque message; the reason goes to the logs only.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the gateway logs",
        )
    }

    /// The JSON body, carrying the request's correlation and transaction ids.
    pub fn body(&self, correlation_id: &str, transaction_id: &str) -> Bytes {
        let body = ErrorBody {
            status: "error",
            code: self.code,
            message: &self.message,
            correlation_id,
            transaction_id,
            errors: &self.errors,
        };
        Bytes::from(
            serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"status\":\"error\"}".to_vec()),
        )
    }

    /// A complete response (for paths outside the webhook pipeline).
    pub fn into_response_with_ids(self, correlation_id: &str, transaction_id: &str) -> Response {
        let body = self.body(correlation_id, transaction_id);
        json_response(self.status, body, self.retry_after)
    }
}

/// An error answer's body (SPEC §5), on every path of the public and admin listeners.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody<'a> {
    /// Always `error`.
    #[schema(value_type = String, example = "error")]
    pub status: &'static str,
    /// A stable code, e.g. `invalid_payload`, `invalid_signature`, `rule_rejected`.
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: &'a str,
    pub correlation_id: &'a str,
    pub transaction_id: &'a str,
    /// Every failing field (400 `invalid_payload`).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    pub errors: &'a [FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = uuid::Uuid::new_v4().to_string();
        self.into_response_with_ids(&id, &id)
    }
}

/// A JSON response with an optional `Retry-After`.
pub fn json_response(status: StatusCode, body: Bytes, retry_after: Option<u32>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}
