//! One error type for the edge, rendered as `{"error": {"code": "snake_case", "message": "..."}}`.
//! Internal errors are logged with their cause and answered without it.

use crate::auth::{AuthError, DispatcherError, Refusal};
use crate::recommendations::RecommendationError;
use crate::validate::InvalidInput;
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Longest error message sent, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// An error answer in the contract's shape: `status` with the body
/// `{"error": {"code": "<code>", "message": "<message>"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable, machine-readable code (for example `invalid_input`).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error of `status` with `code` and `message`.
    /// `message` is cut after [`MAX_MESSAGE_CHARS`] characters: values echoed into it are bounded by
    /// [`crate::validate::echo`], and this is the net for any that are not.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        Self { status, code, message }
    }
    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401 with `code`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 503 `database_unavailable`: the database cannot be reached (the client may retry).
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the database is unreachable; retry shortly")
    }
    /// 500 `internal`, with no detail (the caller logs it).
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        (self.status, body).into_response()
    }
}

impl From<InvalidInput> for ApiError {
    fn from(error: InvalidInput) -> Self {
        Self::bad_request("invalid_input", error.to_string())
    }
}

/// The stable code of an error status when nothing more specific is known (a rejection produced by the
/// framework or the transport rather than by a handler).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// Longest framework message carried over into `message`; axum's rejection texts are one short line.
const MAX_CARRIED_MESSAGE: usize = 1024;

/// Middleware: any error response that is not already JSON (axum's `text/plain` rejections, the empty
/// 405 of a route that lacks the method, a 413 from a body limit, a layer's timeout) is rewritten into
/// the contract's shape, keeping its status and headers (`Allow` on a 405) and its text as the message.
/// Handlers' own errors are `ApiError`s and pass through untouched.
pub async fn error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_CARRIED_MESSAGE)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_lowercase());
    let body = json!({ "error": { "code": code_for_status(status), "message": message } });
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// Errors that mean "the database is not there right now" (503) rather than a bug (500).
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300")
        }
        _ => false,
    }
}

impl From<crate::receipts::RecordError> for ApiError {
    fn from(error: crate::receipts::RecordError) -> Self {
        match error {
            crate::receipts::RecordError::Database(error) if !is_unavailable(&error) => {
                tracing::error!(%error, "database error storing receipts");
                Self::internal()
            }
            crate::receipts::RecordError::Refused(refusal) => refusal.into(),
            crate::receipts::RecordError::UnknownDispatcher => {
                Self::unauthorized("unknown_dispatcher", "the token's dispatcher does not exist")
            }
            error => {
                tracing::warn!(%error, "receipts unavailable");
                Self::unavailable()
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable()
        } else {
            tracing::error!(%error, "database error");
            Self::internal()
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Expired => Self::unauthorized("token_expired", error.to_string()),
            AuthError::MissingToken => Self::unauthorized("unauthorized", error.to_string()),
            AuthError::Invalid => Self::unauthorized("invalid_token", error.to_string()),
            other => {
                tracing::error!(error = %other, "token handling failed");
                Self::internal()
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TokensRevoked => Self::unauthorized("token_revoked", refusal.to_string()),
            Refusal::Disabled => Self::new(StatusCode::FORBIDDEN, "dispatcher_disabled", refusal.to_string()),
        }
    }
}

impl From<RecommendationError> for ApiError {
    fn from(error: RecommendationError) -> Self {
        match error {
            RecommendationError::Validation { .. } | RecommendationError::UnknownRegion(_) => {
                Self::bad_request("invalid_input", error.to_string())
            }
            RecommendationError::JobNotFound(_) => Self::not_found(error.to_string()),
            RecommendationError::Database(e) => e.into(),
            RecommendationError::Outbox(e) => {
                tracing::error!(error = %e, "outbox write failed");
                Self::internal()
            }
        }
    }
}

impl From<DispatcherError> for ApiError {
    fn from(error: DispatcherError) -> Self {
        match error {
            DispatcherError::NotFound(_) => Self::not_found(error.to_string()),
            DispatcherError::Database(e) => e.into(),
            other => Self::bad_request("invalid_input", other.to_string()),
        }
    }
}
