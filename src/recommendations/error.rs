//! What can go wrong in the recommendations domain.

use crate::outbox::OutboxError;
use uuid::Uuid;

/// Everything that can go wrong here. The HTTP layer maps `Validation` and `UnknownRegion` to 400,
/// `JobNotFound` to 404, and the rest to 5xx.
#[derive(Debug, thiserror::Error)]
pub enum RecommendationError {
    /// Malformed input; `field` is the JSON name (for example `requiredSkills`).
    #[error("invalid {field}: {message}")]
    Validation {
        /// The JSON name of the field at fault.
        field: &'static str,
        /// What is wrong with it, for the caller.
        message: String,
    },
    /// No region has this key (a job names its region).
    #[error("unknown region {}", crate::validate::echo(.0))]
    UnknownRegion(String),
    /// No job has this id.
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    /// The `RecommendationReady` event was refused before the database (a region key that makes no
    /// group key, an oversized payload).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A query failed, or the database refused a write (the whole generation then rolled back).
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// This module's result: errors are [`RecommendationError`].
pub type Result<T, E = RecommendationError> = std::result::Result<T, E>;

/// A [`RecommendationError::Validation`] of `field`.
pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> RecommendationError {
    RecommendationError::Validation { field, message: message.into() }
}
