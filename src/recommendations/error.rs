//! What can go wrong in the recommendations domain.

use crate::outbox::OutboxError;
use uuid::Uuid;

/// Everything that can go wrong here. The HTTP layer maps `Validation` and `UnknownRegion` to 400,
/// `JobNotFound` to 404, and the rest to 5xx.
#[derive(Debug, thiserror::Error)]
pub enum RecommendationError {
    /// Malformed input; `field` is the JSON name (for example `requiredSkills`).
    #[error("invalid {field}: {message}")]
    Validation { field: &'static str, message: String },
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = RecommendationError> = std::result::Result<T, E>;

/// A [`RecommendationError::Validation`] of `field`.
pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> RecommendationError {
    RecommendationError::Validation { field, message: message.into() }
}
