//! Watched jobs (the console's stars): `GET /api/watches`, `PUT` and `DELETE /api/jobs/{id}/watch`. A job
//! is starred only by a dispatcher who may see it (the same checks as `GET /api/jobs/{id}`).

use super::extract::{CurrentDispatcher, Path};
use super::jobs::visible_job;
use super::{ApiError, AppState};
use crate::watches;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/watches", get(list_watches)).route("/jobs/{id}/watch", put(watch).delete(unwatch))
}

/// `{"jobIds": [...]}`: the caller's watched jobs in the regions they hold now.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Watches {
    job_ids: Vec<Uuid>,
}

async fn list_watches(State(state): State<AppState>, current: CurrentDispatcher) -> Result<Json<Watches>, ApiError> {
    let job_ids = watches::watched_jobs(&state.pool, &current.dispatcher.dispatcher_id, &current.regions()).await?;
    Ok(Json(Watches { job_ids }))
}

/// Stars the job (idempotent): 204, or 404/403 like `GET /api/jobs/{id}`.
async fn watch(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let job = visible_job(&state, &current, &id).await?;
    watches::watch(&state.pool, &current.dispatcher.dispatcher_id, job.id).await.map_err(|error| {
        // The job (or the dispatcher) went away between the check and the insert.
        if is_foreign_key_violation(&error) { ApiError::not_found(format!("no job {}", job.id)) } else { error.into() }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the star (idempotent): 204, or 404/403 like `GET /api/jobs/{id}`.
async fn unwatch(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let job = visible_job(&state, &current, &id).await?;
    watches::unwatch(&state.pool, &current.dispatcher.dispatcher_id, job.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}
