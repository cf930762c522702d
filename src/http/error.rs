//! One error type for the edge, rendered as `{"error": {"code": "snake_case", "message": "..."}}`.
//! Internal errors are logged with their cause and answered without it.

use crate::auth::{AuthError, DispatcherError};
use crate::recommendations::RecommendationError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the database is unreachable; retry shortly")
    }
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
